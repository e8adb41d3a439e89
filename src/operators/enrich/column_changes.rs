//! Restores into an operator whose table or event columns changed since the snapshot: the
//! state is mapped by column name (reordered columns keep their values, a removed column is
//! dropped, an added one is null in restored rows with a WARN), never by position; a type
//! change or another primary key is refused, naming what changed. In memory and on disk,
//! for the table's rows (with their as-of history) and for the events the operator holds
//! (at the gate, waiting for the watermark, held as misses).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::tests::s;
use super::*;
use crate::cdc::rows;
use crate::dataflow::MAIN_PORT;
use crate::state::StateBackend;
use crate::state::disk::DiskOptions;
use crate::testing::Harness;
use crate::types::{DataType, Field};

type Cols<'a> = &'a [(&'a str, DataType)];

/// A change row: op, LSN, values by column name, event time.
type Change<'a> = (&'a str, i64, &'a [(&'a str, &'a str)], EventTime);

const STR: DataType = DataType::String;
const INT: DataType = DataType::Int;

fn schema(cols: Cols<'_>) -> Schema {
    Schema::new(cols.iter().map(|(n, t)| Field::new(n, *t)).collect())
}

/// An enrichment of events by table `cve` (primary key `cve_id`, joined on `cve_id`),
/// copying `columns` to the output.
#[derive(Clone)]
struct Setup<'a> {
    table: Cols<'a>,
    events: Cols<'a>,
    columns: &'a [&'a str],
    mode: JoinMode,
    miss: MissPolicy,
    strategy: EnrichStrategy,
    state: StateBackend,
}

impl Setup<'_> {
    fn spec(&self) -> EnrichSpec {
        EnrichSpec {
            table: "cve".into(),
            primary_key: vec!["cve_id".into()],
            key: vec![("cve_id".into(), "cve_id".into())],
            columns: Some(self.columns.iter().map(|c| c.to_string()).collect()),
            distinct: Vec::new(),
            version_range: None,
            conditions: Vec::new(),
            mode: self.mode,
            miss: self.miss,
            strategy: self.strategy,
            state: self.state.clone(),
        }
    }

    fn operator(&self) -> Result<EnrichOperator, SpecError> {
        EnrichOperator::new(
            "enrich",
            self.spec(),
            Arc::new(schema(self.events)),
            &rows::change_schema(&schema(self.table)),
        )
    }

    fn harness(&self) -> Harness<EnrichOperator> {
        Harness::new(self.operator().unwrap(), 2)
    }

    /// Restores `snapshot` into an operator of this setup, as a restart does.
    fn restore(&self, snapshot: &StateImage) -> Result<Harness<EnrichOperator>, StateError> {
        let mut op = self.operator().unwrap();
        op.restore(snapshot)?;
        Ok(Harness::new(op, 2))
    }

    /// Change rows of the table (`op` `r`, `c`, `u` or `d`, LSN, values by column name;
    /// the others null), and the snapshot's end with `end`.
    fn changes(&self, list: &[Change<'_>], end: bool) -> Batch {
        let table = schema(self.table);
        let mut b = Batch::new(rows::change_schema(&table));
        for (op, lsn, values, t) in list {
            let mut row = vec![
                s(op),
                Value::Int(*lsn),
                Value::Int(0),
                s(if *op == "r" { "true" } else { "false" }),
                Value::Null,
            ];
            row.extend(
                table
                    .fields
                    .iter()
                    .map(|f| by_name(values, &f.name, f.data_type)),
            );
            b.push_row(row, *t);
        }
        if end {
            rows::push_snapshot_end(&mut b, 0);
        }
        b
    }

    /// Events, values by column name (the others null).
    fn events(&self, list: &[(&[(&str, &str)], EventTime)]) -> Batch {
        let events = schema(self.events);
        let mut b = Batch::new(Arc::new(events.clone()));
        for (values, t) in list {
            let row: Vec<Value> = events
                .fields
                .iter()
                .map(|f| by_name(values, &f.name, f.data_type))
                .collect();
            b.push_row(row, *t);
        }
        b
    }
}

fn by_name(values: &[(&str, &str)], name: &str, t: DataType) -> Value {
    match values.iter().find(|(n, _)| *n == name) {
        None => Value::Null,
        Some((_, v)) if t == INT => Value::Int(v.parse().unwrap()),
        Some((_, v)) => s(v),
    }
}

/// The rows `h` emitted on its main port, each as column name -> value (nulls left out,
/// as text), in emission order.
fn emitted(h: &mut Harness<EnrichOperator>) -> Vec<BTreeMap<String, String>> {
    let schema = h.operator().ports()[0].schema.clone();
    h.take(MAIN_PORT)
        .into_iter()
        .map(|(row, _)| {
            schema
                .fields
                .iter()
                .zip(row)
                .filter(|(_, v)| !v.is_null())
                .map(|(f, v)| (f.name.to_string(), text(&v)))
                .collect()
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn row(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The table in memory and on disk (a cache of two keys, so that the rewrite of a
/// restored table goes through the store).
fn backends() -> Vec<StateBackend> {
    vec![
        StateBackend::Memory,
        StateBackend::Disk(DiskOptions {
            dir: None,
            cache_rows: 2,
        }),
    ]
}

/// What `f` logs at WARN or above, as text.
fn warnings<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let buf = buf.clone();
            move || buf.clone()
        })
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

const EVENTS: Cols<'static> = &[("host", STR), ("cve_id", STR)];

fn as_of() -> JoinMode {
    JoinMode::AsOf {
        retention_ms: Some(1_000_000),
    }
}

/// Three CVEs loaded by the snapshot, CVE-1 updated at 2000 and CVE-3 deleted at 2500.
fn load(setup: &Setup<'_>, h: &mut Harness<EnrichOperator>) {
    h.data(
        1,
        setup.changes(
            &[
                (
                    "r",
                    1,
                    &[("cve_id", "CVE-1"), ("severity", "LOW"), ("cwe", "CWE-79")],
                    0,
                ),
                (
                    "r",
                    2,
                    &[
                        ("cve_id", "CVE-2"),
                        ("severity", "HIGH"),
                        ("cwe", "CWE-327"),
                    ],
                    0,
                ),
                (
                    "r",
                    3,
                    &[
                        ("cve_id", "CVE-3"),
                        ("severity", "MEDIUM"),
                        ("cwe", "CWE-20"),
                    ],
                    0,
                ),
                (
                    "u",
                    10,
                    &[
                        ("cve_id", "CVE-1"),
                        ("severity", "CRITICAL"),
                        ("cwe", "CWE-89"),
                    ],
                    2000,
                ),
                ("d", 11, &[("cve_id", "CVE-3")], 2500),
            ],
            true,
        ),
    );
}

/// One event per CVE at 1000 (before the update and the delete) and at 3000 (after).
fn probe(setup: &Setup<'_>, h: &mut Harness<EnrichOperator>) -> Vec<BTreeMap<String, String>> {
    let mut list = Vec::new();
    for t in [1000, 3000] {
        for cve in ["CVE-1", "CVE-2", "CVE-3"] {
            list.push(([("host", "h"), ("cve_id", cve)], t));
        }
    }
    let list: Vec<(&[(&str, &str)], EventTime)> = list.iter().map(|(v, t)| (&v[..], *t)).collect();
    h.data(0, setup.events(&list));
    h.watermark_all(10_000);
    emitted(h)
}

/// Regression: a CDC table's columns reordered between runs restored the stored rows by
/// position (`severity: "CWE-327"`). They are mapped by name, with their as-of history.
#[test]
fn reordered_table_columns_are_restored_by_name() {
    for state in backends() {
        let before = Setup {
            table: &[("cve_id", STR), ("severity", STR), ("cwe", STR)],
            events: EVENTS,
            columns: &["severity", "cwe"],
            mode: as_of(),
            miss: MissPolicy::Emit,
            strategy: EnrichStrategy::Gradual,
            state: state.clone(),
        };
        let after = Setup {
            table: &[("cve_id", STR), ("cwe", STR), ("severity", STR)],
            ..before.clone()
        };
        let mut h = before.harness();
        load(&before, &mut h);
        let snapshot = h.barrier();
        let straight = probe(&before, &mut h);

        let mut h = after.restore(&snapshot).unwrap();
        let got = probe(&after, &mut h);
        assert_eq!(got, straight, "{state:?}");
        assert_eq!(
            got[1],
            row(&[
                ("host", "h"),
                ("cve_id", "CVE-2"),
                ("severity", "HIGH"),
                ("cwe", "CWE-327"),
                ("cve_matched", "true")
            ]),
            "{state:?}"
        );
        assert_eq!(
            got[3]["severity"], "CRITICAL",
            "{state:?}: the update at 2000"
        );
        assert!(!got[5].contains_key("severity"), "{state:?}: CVE-3 deleted");

        // The mapped state checkpoints and restores again into the new columns.
        let mut h = after.restore(&snapshot).unwrap();
        let again = h.barrier();
        let mut h = after.restore(&again).unwrap();
        assert_eq!(probe(&after, &mut h), straight, "{state:?}: restored twice");
    }
}

/// Regression: a column added to the table and used in the output panicked (index out of
/// bounds) after a restore. Restored rows have null there until they change, and the run
/// says so at WARN, naming the table and the column.
#[test]
fn an_added_column_is_null_in_restored_rows_until_they_change() {
    for state in backends() {
        let before = Setup {
            table: &[("cve_id", STR), ("severity", STR)],
            events: EVENTS,
            columns: &["severity"],
            mode: JoinMode::Lookup,
            miss: MissPolicy::Emit,
            strategy: EnrichStrategy::Gradual,
            state: state.clone(),
        };
        let after = Setup {
            table: &[("cve_id", STR), ("severity", STR), ("cwe", STR)],
            columns: &["severity", "cwe"],
            ..before.clone()
        };
        let mut h = before.harness();
        load(&before, &mut h);
        let snapshot = h.barrier();

        let (restored, logged) = warnings(|| after.restore(&snapshot));
        let mut h = restored.unwrap();
        let warning = logged
            .lines()
            .find(|l| l.contains("WARN") && l.contains("not in the checkpoint"))
            .unwrap_or_else(|| panic!("{state:?}: no warning:\n{logged}"));
        assert!(warning.contains("table=cve"), "{warning}");
        assert!(warning.contains("`cwe`"), "{warning}");
        assert!(warning.contains("until they change"), "{warning}");

        let ev = |cve| after.events(&[(&[("host", "h"), ("cve_id", cve)], 5000)]);
        h.data(0, ev("CVE-1"));
        assert_eq!(
            emitted(&mut h),
            vec![row(&[
                ("host", "h"),
                ("cve_id", "CVE-1"),
                ("severity", "CRITICAL"),
                ("cve_matched", "true")
            ])],
            "{state:?}: `cwe` null in the restored row"
        );
        h.data(
            1,
            after.changes(
                &[(
                    "u",
                    20,
                    &[
                        ("cve_id", "CVE-1"),
                        ("severity", "CRITICAL"),
                        ("cwe", "CWE-89"),
                    ],
                    4000,
                )],
                false,
            ),
        );
        h.data(0, ev("CVE-1"));
        h.data(0, ev("CVE-2"));
        let got = emitted(&mut h);
        assert_eq!(got[0]["cwe"], "CWE-89", "{state:?}: the row changed");
        assert!(!got[1].contains_key("cwe"), "{state:?}");
        assert_eq!(got[1]["severity"], "HIGH", "{state:?}");
    }
}

#[test]
fn a_removed_column_is_dropped_from_restored_rows() {
    for state in backends() {
        let before = Setup {
            table: &[("cve_id", STR), ("severity", STR), ("cwe", STR)],
            events: EVENTS,
            columns: &["severity", "cwe"],
            mode: as_of(),
            miss: MissPolicy::Emit,
            strategy: EnrichStrategy::Gradual,
            state: state.clone(),
        };
        let after = Setup {
            table: &[("cve_id", STR), ("cwe", STR)],
            columns: &["cwe"],
            ..before.clone()
        };
        let mut h = before.harness();
        load(&before, &mut h);
        let snapshot = h.barrier();
        let mut h = after.restore(&snapshot).unwrap();
        let cwes: Vec<Option<String>> = probe(&after, &mut h)
            .iter()
            .map(|r| r.get("cwe").cloned())
            .collect();
        let some = |v: &str| Some(v.to_string());
        assert_eq!(
            cwes,
            [
                some("CWE-79"),
                some("CWE-327"),
                some("CWE-20"),
                some("CWE-89"),
                some("CWE-327"),
                None
            ],
            "{state:?}"
        );
    }
}

#[test]
fn a_table_column_whose_type_changed_or_another_primary_key_is_refused() {
    for state in backends() {
        let before = Setup {
            table: &[("cve_id", STR), ("severity", STR), ("score", INT)],
            events: EVENTS,
            columns: &["severity", "score"],
            mode: JoinMode::Lookup,
            miss: MissPolicy::Emit,
            strategy: EnrichStrategy::Gradual,
            state: state.clone(),
        };
        let mut h = before.harness();
        load(&before, &mut h);
        let snapshot = h.barrier();

        let retyped = Setup {
            table: &[("cve_id", STR), ("severity", STR), ("score", STR)],
            ..before.clone()
        };
        let err = retyped
            .restore(&snapshot)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("table `cve`"), "{err}");
        assert!(
            err.contains("column `score` was int when the state was written and is string now"),
            "{err}"
        );

        let mut rekeyed = before.spec();
        rekeyed.primary_key = vec!["severity".into()];
        let mut op = EnrichOperator::new(
            "enrich",
            rekeyed,
            Arc::new(schema(EVENTS)),
            &rows::change_schema(&schema(before.table)),
        )
        .unwrap();
        let err = op.restore(&snapshot).expect_err("refused").to_string();
        assert!(
            err.contains("table `cve`: its primary key was `cve_id`")
                && err.contains("is `severity` now"),
            "{err}"
        );
    }
}

/// As-of events waiting for the watermark and held misses, restored into events whose
/// columns were reordered and gained one: mapped by name, the new column null.
#[test]
fn waiting_and_held_events_are_mapped_to_the_new_event_columns() {
    for state in backends() {
        let before = Setup {
            table: &[("cve_id", STR), ("severity", STR)],
            events: &[("host", STR), ("cve_id", STR), ("port", INT)],
            columns: &["severity"],
            mode: as_of(),
            miss: MissPolicy::Hold { timeout_ms: 60_000 },
            strategy: EnrichStrategy::Gradual,
            state: state.clone(),
        };
        let after = Setup {
            events: &[("cve_id", STR), ("site", STR), ("port", INT), ("host", STR)],
            ..before.clone()
        };
        let mut h = before.harness();
        h.data(
            1,
            before.changes(
                &[("r", 1, &[("cve_id", "CVE-1"), ("severity", "LOW")], 0)],
                true,
            ),
        );
        h.data(
            0,
            before.events(&[
                (&[("host", "a"), ("cve_id", "CVE-9"), ("port", "22")], 1000),
                (&[("host", "b"), ("cve_id", "CVE-1"), ("port", "443")], 3000),
            ]),
        );
        h.watermark_all(1500);
        assert!(emitted(&mut h).is_empty(), "CVE-9 held, CVE-1 waiting");
        let snapshot = h.barrier();

        let (restored, logged) = warnings(|| after.restore(&snapshot));
        let mut h = restored.unwrap();
        assert!(
            logged
                .lines()
                .any(|l| l.contains("WARN") && l.contains("`site`") && l.contains("events=2")),
            "{state:?}: {logged}"
        );
        // CVE-9's row releases the held miss; the watermark then joins the waiting event.
        h.data(
            1,
            after.changes(
                &[("c", 5, &[("cve_id", "CVE-9"), ("severity", "HIGH")], 500)],
                false,
            ),
        );
        h.watermark_all(4000);
        let expected = [
            row(&[
                ("host", "a"),
                ("cve_id", "CVE-9"),
                ("port", "22"),
                ("severity", "HIGH"),
                ("cve_matched", "true"),
            ]),
            row(&[
                ("host", "b"),
                ("cve_id", "CVE-1"),
                ("port", "443"),
                ("severity", "LOW"),
                ("cve_matched", "true"),
            ]),
        ];
        assert_eq!(emitted(&mut h), expected, "{state:?}");
    }
}

/// Events at the shut gate (in its sealed segments) restored into other event columns;
/// the next checkpoint holds them in the new columns.
#[test]
fn events_at_the_gate_are_mapped_to_the_new_event_columns() {
    let before = Setup {
        table: &[("cve_id", STR), ("severity", STR)],
        events: &[("host", STR), ("cve_id", STR), ("port", INT)],
        columns: &["severity"],
        mode: JoinMode::Lookup,
        miss: MissPolicy::Emit,
        strategy: EnrichStrategy::Gated { max_buffered: 1 },
        state: StateBackend::Memory,
    };
    let after = Setup {
        events: &[("port", INT), ("cve_id", STR), ("host", STR)],
        ..before.clone()
    };
    let mut h = before.harness();
    h.data(
        1,
        before.changes(
            &[("r", 1, &[("cve_id", "CVE-1"), ("severity", "LOW")], 0)],
            false,
        ),
    );
    h.data(
        0,
        before.events(&[(&[("host", "a"), ("cve_id", "CVE-1"), ("port", "22")], 1000)]),
    );
    h.barrier();
    h.data(
        0,
        before.events(&[(&[("host", "b"), ("cve_id", "CVE-1"), ("port", "443")], 2000)]),
    );
    let snapshot = h.barrier();

    let mut h = after.restore(&snapshot).unwrap();
    let again = h.barrier();
    let mut h = after.restore(&again).unwrap();
    h.data(1, after.changes(&[], true));
    let expected: Vec<_> = [("a", "22"), ("b", "443")]
        .iter()
        .map(|(host, port)| {
            row(&[
                ("port", port),
                ("cve_id", "CVE-1"),
                ("host", host),
                ("severity", "LOW"),
                ("cve_matched", "true"),
            ])
        })
        .collect();
    assert_eq!(emitted(&mut h), expected);
}

#[test]
fn an_event_column_whose_type_changed_is_refused_naming_it() {
    let before = Setup {
        table: &[("cve_id", STR), ("severity", STR)],
        events: &[("host", STR), ("cve_id", STR), ("port", INT)],
        columns: &["severity"],
        mode: as_of(),
        miss: MissPolicy::Emit,
        strategy: EnrichStrategy::Gradual,
        state: StateBackend::Memory,
    };
    let after = Setup {
        events: &[("host", STR), ("cve_id", STR), ("port", STR)],
        ..before.clone()
    };
    let mut h = before.harness();
    h.data(
        0,
        before.events(&[(&[("host", "a"), ("cve_id", "CVE-1"), ("port", "22")], 1000)]),
    );
    let err = after
        .restore(&h.barrier())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(
            "the events: column `port` was int when the state was written and is string now"
        ),
        "{err}"
    );
}
