//! Tests of the enrichment operator driven through the harness: lookups by key, version
//! range and residual conditions, versioned materializing, the gate and its spill, as-of
//! joins, the miss policies, and spec errors. Property tests are in `proptests`.

use super::reference::{TOMBSTONE_RETENTION_MS, TOMBSTONE_SWEEP_MS};
use super::*;
use crate::cdc::rows;
use crate::state::StateBackend;
use crate::testing::Harness;
use crate::time::Watermark;
use crate::types::{DataType, Field};

pub(super) fn s(v: &str) -> Value {
    Value::from(v)
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::String),
        Field::new("product", DataType::String),
        Field::new("version", DataType::String),
    ]))
}

/// cpe_match-like table: id, product, cve, version, start_including, end_excluding.
fn table_schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("product", DataType::String),
        Field::new("cve", DataType::String),
        Field::new("version", DataType::String),
        Field::new("version_start_including", DataType::String),
        Field::new("version_end_excluding", DataType::String),
    ])
}

pub(super) fn change_schema() -> SchemaRef {
    rows::change_schema(&table_schema())
}

pub(super) fn spec(mode: JoinMode, miss: MissPolicy, strategy: EnrichStrategy) -> EnrichSpec {
    EnrichSpec {
        table: "cpe".into(),
        primary_key: vec!["id".into()],
        key: vec![("product".into(), "product".into())],
        columns: Some(vec!["cve".into()]),
        distinct: Vec::new(),
        version_range: Some(VersionRangeSpec {
            version: "version".into(),
            exact: Some("version".into()),
            start_including: Some("version_start_including".into()),
            start_excluding: None,
            end_including: None,
            end_excluding: Some("version_end_excluding".into()),
            update: None,
        }),
        conditions: Vec::new(),
        mode,
        miss,
        strategy,
        state: StateBackend::Memory,
    }
}

pub(super) fn op(spec: EnrichSpec) -> EnrichOperator {
    EnrichOperator::new("enrich", spec, events_schema(), &change_schema()).unwrap()
}

fn harness(mode: JoinMode, miss: MissPolicy, strategy: EnrichStrategy) -> Harness<EnrichOperator> {
    Harness::new(op(spec(mode, miss, strategy)), 2)
}

/// One reference change: `(op, lsn, id, product, cve, version, start, end)`.
pub(super) type Ch<'a> = (
    &'a str,
    i64,
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);

fn opt(v: &str) -> Value {
    if v.is_empty() { Value::Null } else { s(v) }
}

pub(super) fn changes(list: &[(Ch<'_>, EventTime)]) -> Batch {
    let mut b = Batch::new(change_schema());
    for ((o, lsn, id, product, cve, version, start, end), t) in list {
        if *o == rows::SNAPSHOT_END {
            rows::push_snapshot_end(&mut b, *t);
            continue;
        }
        b.push_row(
            [
                s(o),
                Value::Int(*lsn),
                Value::Int(0),
                s(if *o == "r" { "true" } else { "false" }),
                Value::Null,
                Value::Int(*id),
                opt(product),
                opt(cve),
                opt(version),
                opt(start),
                opt(end),
            ],
            *t,
        );
    }
    b
}

pub(super) fn events(list: &[(&str, &str, &str, EventTime)]) -> Batch {
    let mut b = Batch::new(events_schema());
    for (h, p, v, t) in list {
        b.push_row([s(h), s(p), s(v)], *t);
    }
    b
}

fn cves(rows: &[(Vec<Value>, EventTime)]) -> Vec<(String, String, bool)> {
    rows.iter()
        .map(|(r, _)| {
            (
                r[0].as_str().unwrap().to_string(),
                r[3].as_str().unwrap_or("-").to_string(),
                r[4] == Value::Bool(true),
            )
        })
        .collect()
}

pub(super) const END: &str = rows::SNAPSHOT_END;

#[test]
fn lookup_finds_every_matching_row_by_key_and_version_range() {
    let mut h = harness(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    h.data(
        1,
        changes(&[
            (("r", 5, 1, "openssl", "CVE-A", "1.0.2k", "", ""), 0),
            (("r", 5, 2, "openssl", "CVE-B", "*", "1.0.0", "1.0.2l"), 0),
            (("r", 5, 3, "openssl", "CVE-C", "*", "1.1.0", "1.1.1"), 0),
            (("r", 5, 4, "openssh", "CVE-D", "7.4", "", ""), 0),
        ]),
    );
    h.data(
        0,
        events(&[
            ("h1", "openssl", "1.0.2k", 10),
            ("h2", "openssl", "1.1.1", 11),
            ("h3", "nginx", "1.0", 12),
        ]),
    );
    let out = cves(&h.take("main"));
    assert_eq!(
        out,
        vec![
            ("h1".into(), "CVE-A".into(), true),
            ("h1".into(), "CVE-B".into(), true),
            ("h2".into(), "-".into(), false),
            ("h3".into(), "-".into(), false),
        ]
    );
    let op = h.operator();
    assert_eq!(op.reference_rows(), 4);
    assert!(op.state_bytes() > 0);
}

#[test]
fn stale_replays_deletes_and_key_changes_are_applied_by_version() {
    let mut h = harness(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    h.data(
        1,
        changes(&[
            (("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 1),
            (("u", 20, 1, "openssl", "CVE-A2", "*", "", ""), 2),
            // A replay of the older version is ignored.
            (("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 3),
            // Primary-key change: delete id 1, create id 9, one LSN.
            (("d", 30, 1, "openssl", "", "", "", ""), 4),
            (("c", 30, 9, "openssh", "CVE-A2", "*", "", ""), 4),
        ]),
    );
    h.data(
        0,
        events(&[("h", "openssl", "1", 5), ("h", "openssh", "1", 5)]),
    );
    assert_eq!(
        cves(&h.take("main")),
        vec![
            ("h".into(), "-".into(), false),
            ("h".into(), "CVE-A2".into(), true)
        ]
    );
}

#[test]
fn tombstones_of_a_latest_only_table_are_kept_for_an_hour_then_forgotten() {
    let mut h = harness(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    h.data(
        1,
        changes(&[
            (("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 1_000),
            (("d", 20, 1, "openssl", "", "", "", ""), 2_000),
        ]),
    );
    h.watermark_all(2_000);
    // A replay of the insert, within the hour: ignored.
    h.data(
        1,
        changes(&[(("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 1_000)]),
    );
    assert_eq!(h.operator().reference_rows(), 0);
    assert_eq!(h.operator().table.key_count(), 1, "the tombstone is kept");
    h.watermark_all(2_000 + TOMBSTONE_RETENTION_MS + TOMBSTONE_SWEEP_MS);
    assert_eq!(
        h.operator().table.key_count(),
        0,
        "and forgotten after the hour"
    );
}

#[test]
fn gated_events_wait_for_the_snapshot_and_hold_the_watermark() {
    let mut h = harness(
        JoinMode::Lookup,
        MissPolicy::Emit,
        EnrichStrategy::Gated { max_buffered: 100 },
    );
    h.data(0, events(&[("h1", "openssl", "1.0.2k", 10)]));
    h.data(
        1,
        changes(&[(("r", 5, 1, "openssl", "CVE-A", "1.0.2k", "", ""), 0)]),
    );
    assert!(h.take("main").is_empty(), "the gate is shut");
    assert_eq!(h.operator().watermark_hold(), Some(9));
    assert!(!h.operator().gate_open());
    h.data(1, changes(&[((END, 0, 0, "", "", "", "", ""), 0)]));
    assert_eq!(
        cves(&h.take("main")),
        vec![("h1".into(), "CVE-A".into(), true)]
    );
    assert_eq!(h.operator().watermark_hold(), None);
}

#[test]
fn a_full_gate_spills_and_input_end_opens_it() {
    let mut h = harness(
        JoinMode::Lookup,
        MissPolicy::Emit,
        EnrichStrategy::Gated { max_buffered: 1 },
    );
    // Batches wait whole: the first fills the memory allowance, the second is spilled.
    h.data(0, events(&[("h1", "openssl", "1", 10)]));
    h.data(0, events(&[("h2", "openssl", "1", 11)]));
    assert!(
        h.take("main").is_empty(),
        "nothing goes through a shut gate"
    );
    assert_eq!(h.operator().spilled(), 1);
    // A checkpoint holds the spilled events too.
    let snap = h.barrier();
    let mut h = Harness::restore(
        op(spec(
            JoinMode::Lookup,
            MissPolicy::Emit,
            EnrichStrategy::Gated { max_buffered: 1 },
        )),
        &snap,
        2,
    );
    assert_eq!(h.operator().watermark_hold(), Some(9));
    h.data(
        1,
        changes(&[(("r", 5, 1, "openssl", "CVE-A", "*", "", ""), 0)]),
    );
    h.watermark_all(crate::time::watermark::END_OF_TIME);
    assert_eq!(
        cves(&h.take("main")),
        vec![
            ("h1".into(), "CVE-A".into(), true),
            ("h2".into(), "CVE-A".into(), true)
        ]
    );
}

#[test]
fn as_of_joins_the_version_valid_at_the_event_time() {
    let mut h = harness(
        JoinMode::AsOf { retention_ms: None },
        MissPolicy::Emit,
        EnrichStrategy::Gradual,
    );
    h.data(
        1,
        changes(&[
            (("r", 5, 1, "openssl", "CVE-OLD", "*", "", ""), 1_000),
            (("u", 10, 1, "openssl", "CVE-NEW", "*", "", ""), 100),
        ]),
    );
    h.data(
        0,
        events(&[("early", "openssl", "1", 50), ("late", "openssl", "1", 150)]),
    );
    assert!(h.take("main").is_empty(), "as-of waits for the watermark");
    // Events still to emit: the instance must not be forwarded as idle (its consumers would
    // move on and these would then be late), yet its watermark is not lowered (they are
    // ahead of it).
    assert_eq!(h.operator().watermark_hold(), Some(49));
    h.watermark(0, Watermark::EventTime(200));
    assert!(
        h.take("main").is_empty(),
        "the reference side has not passed"
    );
    h.watermark(1, Watermark::EventTime(200));
    assert_eq!(
        cves(&h.take("main")),
        vec![
            ("early".into(), "CVE-OLD".into(), true),
            ("late".into(), "CVE-NEW".into(), true)
        ]
    );
    assert_eq!(
        h.operator().watermark_hold(),
        None,
        "nothing waits any more"
    );
}

#[test]
fn misses_go_to_the_miss_port_or_are_held_until_the_row_or_the_timeout() {
    let mut h = harness(JoinMode::Lookup, MissPolicy::Port, EnrichStrategy::Gradual);
    h.data(0, events(&[("h", "nginx", "1", 5)]));
    assert!(h.take("main").is_empty());
    assert_eq!(h.take("miss").len(), 1);

    let mut h = harness(
        JoinMode::Lookup,
        MissPolicy::Hold { timeout_ms: 100 },
        EnrichStrategy::Gradual,
    );
    h.data(0, events(&[("a", "nginx", "1", 5), ("b", "redis", "1", 6)]));
    assert!(h.take("main").is_empty());
    assert_eq!(h.operator().watermark_hold(), Some(4));
    h.data(
        1,
        changes(&[(("c", 9, 1, "nginx", "CVE-N", "*", "", ""), 50)]),
    );
    assert_eq!(
        cves(&h.take("main")),
        vec![("a".into(), "CVE-N".into(), true)]
    );
    h.watermark_all(105);
    assert!(h.take("main").is_empty());
    h.watermark_all(106);
    assert_eq!(cves(&h.take("main")), vec![("b".into(), "-".into(), false)]);
    assert_eq!(h.operator().watermark_hold(), None);
}

#[test]
fn residual_conditions_filter_matches_and_key_the_memo() {
    let mut spec = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    spec.version_range = None;
    // Only rows whose `version` column is above the event's `version`.
    spec.conditions = vec![Condition {
        event: "version".into(),
        op: CmpOp::Lt,
        table: "version".into(),
    }];
    let mut h = Harness::new(op(spec), 2);
    h.data(
        1,
        changes(&[
            (("r", 5, 1, "openssl", "CVE-A", "2", "", ""), 0),
            (("r", 5, 2, "openssl", "CVE-B", "5", "", ""), 0),
        ]),
    );
    h.data(
        0,
        events(&[
            ("h1", "openssl", "1", 10),
            ("h2", "openssl", "3", 11),
            ("h3", "openssl", "1", 12),
            ("h4", "openssl", "9", 13),
        ]),
    );
    assert_eq!(
        cves(&h.take("main")),
        vec![
            ("h1".into(), "CVE-A".into(), true),
            ("h1".into(), "CVE-B".into(), true),
            ("h2".into(), "CVE-B".into(), true),
            ("h3".into(), "CVE-A".into(), true),
            ("h3".into(), "CVE-B".into(), true),
            ("h4".into(), "-".into(), false),
        ]
    );
    let mut bad = spec_for_conditions();
    bad.conditions[0].table = "id".into();
    let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
        .err()
        .unwrap();
    assert_eq!(e.field, "where[0]");
    assert!(e.message.contains("one type"), "{}", e.message);
}

#[test]
fn a_cve_with_several_matching_rules_is_emitted_once_with_distinct() {
    // Jenkins 1.302: one CVE with an LTS and a weekly rule that both admit it, and a
    // second CVE with one rule. Without `distinct` one row per rule, with it one per CVE
    // (the first rule in primary-key order), in lookup and as-of mode.
    let reference = changes(&[
        (("r", 5, 3, "jenkins", "CVE-A", "", "1.0", "2.0"), 0),
        (("r", 5, 1, "jenkins", "CVE-A", "1.302", "", ""), 0),
        (("r", 5, 2, "jenkins", "CVE-B", "*", "", ""), 0),
        (("r", 5, 4, "jenkins", "CVE-B", "", "3.0", ""), 0),
    ]);
    let probe = events(&[("h1", "jenkins", "1.302", 10), ("h2", "jenkins", "2.5", 11)]);
    for mode in [JoinMode::Lookup, JoinMode::AsOf { retention_ms: None }] {
        let mut spec = spec(mode, MissPolicy::Emit, EnrichStrategy::Gradual);
        spec.columns = Some(vec!["cve".into(), "version_start_including".into()]);
        let run = |spec: EnrichSpec| {
            let mut h = Harness::new(op(spec), 2);
            h.data(1, reference.clone());
            h.data(0, probe.clone());
            h.watermark_all(crate::time::watermark::END_OF_TIME);
            h.take("main")
                .into_iter()
                .map(|(r, _)| {
                    let v = |i: usize| r[i].as_str().unwrap_or("-").to_string();
                    (v(0), v(3), v(4))
                })
                .collect::<Vec<_>>()
        };
        let all = run(spec.clone());
        assert_eq!(all.len(), 4, "{all:?}");
        spec.distinct = vec!["cve".into()];
        assert_eq!(
            run(spec),
            vec![
                // CVE-A by its rule 1 (no start bound), not rule 3 (from 1.0).
                ("h1".into(), "CVE-A".into(), "-".into()),
                ("h1".into(), "CVE-B".into(), "-".into()),
                ("h2".into(), "CVE-B".into(), "-".into()),
            ]
        );
    }
    let mut bad = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    bad.distinct = vec!["cve".into(), "nope".into()];
    let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
        .err()
        .unwrap();
    assert_eq!(e.field, "distinct[1]");
    assert!(e.message.contains("`nope` is not a column of table `cpe`"));
}

#[test]
fn a_rule_with_a_cpe_update_admits_only_that_update() {
    // openssh `5.9p1` is NVD version `5.9` update `p1`: before the update was carried, the
    // rule matched the observed `5.9` and never `5.9p1`. `*` and `-` leave the bare version;
    // an end bound with an update ends at that update ("before 7.2p2": through `7.2p1`).
    let table = Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("product", DataType::String),
        Field::new("cve", DataType::String),
        Field::new("version", DataType::String),
        Field::new("update", DataType::String),
        Field::new("version_end_including", DataType::String),
    ]);
    let reference = rows::change_schema(&table);
    let mut spec = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    spec.version_range = Some(VersionRangeSpec {
        version: "version".into(),
        exact: Some("version".into()),
        start_including: None,
        start_excluding: None,
        end_including: Some("version_end_including".into()),
        end_excluding: None,
        update: Some("update".into()),
    });
    let op = EnrichOperator::new("e", spec, events_schema(), &reference).unwrap();
    let mut h = Harness::new(op, 2);
    let mut b = Batch::new(reference.clone());
    for (id, cve, version, update, end) in [
        (1, "CVE-P1", "5.9", "p1", None),
        (2, "CVE-ANY", "5.9", "*", None),
        (3, "CVE-NA", "5.9", "-", None),
        (4, "CVE-P2", "5.9", "p2", None),
        (5, "CVE-THRU-7.2P1", "*", "p1", Some("7.2")),
    ] {
        b.push_row(
            [
                s("r"),
                Value::Int(5),
                Value::Int(0),
                s("true"),
                Value::Null,
                Value::Int(id),
                s("openssh"),
                s(cve),
                s(version),
                s(update),
                end.map_or(Value::Null, s),
            ],
            0,
        );
    }
    h.data(1, b);
    h.data(
        0,
        events(&[
            ("a", "openssh", "5.9p1", 1),
            ("b", "openssh", "5.9", 2),
            ("c", "openssh", "5.9p2", 3),
            ("d", "openssh", "7.2p1", 4),
            ("e", "openssh", "7.2p2", 5),
        ]),
    );
    let found = |host: &str, cve: &str| (host.to_string(), cve.to_string(), true);
    assert_eq!(
        cves(&h.take("main")),
        vec![
            found("a", "CVE-P1"),
            found("a", "CVE-THRU-7.2P1"),
            found("b", "CVE-ANY"),
            found("b", "CVE-NA"),
            found("b", "CVE-THRU-7.2P1"),
            found("c", "CVE-P2"),
            found("c", "CVE-THRU-7.2P1"),
            found("d", "CVE-THRU-7.2P1"),
            ("e".into(), "-".into(), false),
        ]
    );
}

fn spec_for_conditions() -> EnrichSpec {
    let mut s = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    s.conditions = vec![Condition {
        event: "version".into(),
        op: CmpOp::Lt,
        table: "version".into(),
    }];
    s
}

#[test]
fn held_misses_on_a_primary_key_join_are_released_by_their_row() {
    // Joined by the primary key: the direct path, with no probe key built.
    let mut spec = spec(
        JoinMode::Lookup,
        MissPolicy::Hold { timeout_ms: 100 },
        EnrichStrategy::Gradual,
    );
    spec.key = vec![("version".into(), "cve".into())];
    spec.primary_key = vec!["cve".into()];
    spec.columns = Some(vec!["product".into()]);
    spec.version_range = None;
    let events = Arc::new(Schema::new(vec![
        Field::new("host", DataType::String),
        Field::new("version", DataType::String),
    ]));
    let op = EnrichOperator::new("e", spec, events.clone(), &change_schema()).unwrap();
    assert!(op.layout.direct);
    // Only the columns the join reads are stored, the primary key first: cve and
    // product, of six.
    assert_eq!(op.layout.stored, vec![2, 1]);
    let mut h = Harness::new(op, 2);
    let mut b = Batch::new(events);
    b.push_row([s("h1"), s("CVE-1")], 5);
    h.data(0, b);
    assert!(h.take("main").is_empty());
    h.data(
        1,
        changes(&[(("c", 9, 1, "openssl", "CVE-1", "", "", ""), 6)]),
    );
    let out = h.take("main");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0[2], s("openssl"));
    assert_eq!(h.operator().watermark_hold(), None);
}

#[test]
fn spec_errors_name_the_field() {
    let mut bad = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    bad.key = vec![("product".into(), "nope".into())];
    let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
        .err()
        .unwrap();
    assert_eq!(e.field, "key.product");
    let mut bad = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
    bad.columns = Some(vec!["version".into()]);
    let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
        .err()
        .unwrap();
    assert_eq!(e.field, "columns[0]");
    let e = EnrichOperator::new(
        "e",
        spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual),
        events_schema(),
        &events_schema(),
    )
    .err()
    .unwrap();
    assert_eq!(e.field, "inputs[1]");
}
