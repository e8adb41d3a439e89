//! The ClickHouse sink against a real ClickHouse 18.16 server started on loopback ports
//! (`testing::clickhouse_fixtures`), through the binary: the demo's change stream of vendor
//! recommendations (snapshot, inserts, updates and deletes) written to a table is, under `FINAL` without the
//! deleted keys, the same after SIGKILLs and restarts as after one uninterrupted run; the
//! server stopped for 10 seconds mid-run loses nothing; a table that cannot take a column
//! stops the run with a message naming the column; awkward values round-trip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use watershed::dataflow::Sink;
use watershed::sinks::clickhouse::client::ClickHouse;
use watershed::sinks::clickhouse::{ClickHouseSink, ClickHouseSinkSpec, VersionSource};
use watershed::testing::clickhouse_fixtures::{ClickHouseServer, WRITER_PASSWORD};
use watershed::types::{Batch, DataType, Field, Schema, Value};

fn demo_reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/reference")
}

/// The demo's `vendor_recommendation` change stream (its snapshot, then the demo's changes
/// paced at `rate` changes/s if given: inserts, updates and deletes) into table
/// `table` of `server`, checkpointing into `dir/checkpoints`.
fn pipeline(dir: &Path, server: &ClickHouseServer, table: &str, rate: Option<u32>) -> PathBuf {
    let rate = rate.map_or(String::new(), |r| format!(", rate: {r}"));
    let text = format!(
        "name: ch-{table}\ncheckpoint: {{interval: 200ms, dir: \"{ckpt}\"}}\nsources:\n  vulndb:\n    file: {{format: debezium, snapshot: [\"{r}/snapshot.jsonl\"], paths: [\"{r}/changes.jsonl\"]{rate}}}\n    tables:\n      vendor_recommendation:\n        key: [id]\n        columns: {{id: int, cve_id: string, source: string, recommendation: string, url: string}}\nsinks:\n  rules:\n    input: vulndb.vendor_recommendation\n    clickhouse: {{url: \"{url}\", user: writer, password: \"${{CH_PASSWORD}}\", table: {table}, key: [id], create_table: true, batch_rows: 500, batch_interval: 100ms, retry_for: 2m}}\n",
        ckpt = dir.join("checkpoints").display(),
        r = demo_reference().display(),
        url = server.url(),
    );
    let path = dir.join(format!("{table}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(pipeline: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watershed"));
    cmd.args(["run", "--log", "warn", "--metrics-addr", "off"])
        .arg(pipeline)
        .env("CH_PASSWORD", WRITER_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(pipeline: &Path) -> String {
    let out = run(pipeline).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run failed: {err}");
    err
}

/// The table's live rows under `FINAL`, sorted, with their versions.
fn live_rows(server: &ClickHouseServer, table: &str) -> Vec<String> {
    let text = server.sql(&format!(
        "SELECT * FROM default.{table} FINAL WHERE _deleted = 0 ORDER BY id FORMAT JSONEachRow"
    ));
    text.lines().map(String::from).collect()
}

#[test]
fn killed_runs_leave_the_same_rows_under_final_as_one_uninterrupted_run() {
    let server = ClickHouseServer::shared();
    let tmp = tempfile::tempdir().unwrap();
    let (once, crashed) = (tmp.path().join("once"), tmp.path().join("crashed"));
    std::fs::create_dir_all(&once).unwrap();
    std::fs::create_dir_all(&crashed).unwrap();
    run_to_end(&pipeline(&once, server, "rules_once", None));
    let expected = live_rows(server, "rules_once");
    assert!(expected.len() > 1700, "{} rows", expected.len());
    let deleted: u64 = server
        .sql("SELECT count() FROM default.rules_once FINAL WHERE _deleted = 1")
        .trim()
        .parse()
        .unwrap();
    assert!(deleted > 0, "the change stream deletes rows");

    let p = pipeline(&crashed, server, "rules_crashed", Some(20));
    let mut kills = 0;
    for attempt in 0..4u64 {
        let mut child = run(&p).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(700 + 300 * attempt));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "only {kills} runs were killed before the end");
    run_to_end(&pipeline(&crashed, server, "rules_crashed", None));
    assert_eq!(
        live_rows(server, "rules_crashed"),
        expected,
        "after {kills} kills"
    );
    // Replays wrote some rows twice; FINAL shows each key once.
    let total: u64 = server
        .sql("SELECT count() FROM default.rules_crashed")
        .trim()
        .parse()
        .unwrap();
    let keys: u64 = server
        .sql("SELECT uniqExact(id) FROM default.rules_crashed")
        .trim()
        .parse()
        .unwrap();
    assert!(total >= keys);
}

#[test]
fn a_server_away_for_ten_seconds_loses_nothing() {
    let server = ClickHouseServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let once = tmp.path().join("once");
    std::fs::create_dir_all(&once).unwrap();
    run_to_end(&pipeline(&once, &server, "away_once", None));
    let expected = live_rows(&server, "away_once");

    let away = tmp.path().join("away");
    std::fs::create_dir_all(&away).unwrap();
    let mut child = run(&pipeline(&away, &server, "away", Some(4)))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended too early"
    );
    server.stop();
    std::thread::sleep(Duration::from_secs(10));
    server.resume();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the run failed: {err}");
    assert!(
        err.contains("retrying"),
        "the sink said it was retrying: {err}"
    );
    assert!(!err.contains(WRITER_PASSWORD), "no password in the log");
    assert_eq!(live_rows(&server, "away"), expected);
}

#[test]
fn a_column_the_table_cannot_take_stops_the_run_naming_it() {
    let server = ClickHouseServer::shared();
    server.sql(
        "CREATE TABLE IF NOT EXISTS default.rules_wrong (id Int64, cve_id Int64, \
         _version UInt64, _deleted UInt8) ENGINE = ReplacingMergeTree(_version) ORDER BY id",
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), server, "rules_wrong", None);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("create_table: true", "create_table: false");
    std::fs::write(&p, text).unwrap();
    let out = run(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("column `cve_id`: the pipeline writes string values, the table has Int64"),
        "{err}"
    );
    let count = server.sql("SELECT count() FROM default.rules_wrong");
    assert_eq!(count.trim(), "0", "nothing written");

    // A table that does not exist, without create_table: a clear stop too.
    let p2 = pipeline(tmp.path(), server, "rules_missing", None);
    let text = std::fs::read_to_string(&p2)
        .unwrap()
        .replace("create_table: true", "create_table: false");
    std::fs::write(&p2, text).unwrap();
    let out = run(&p2).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no such table"), "{err}");
}

#[test]
fn awkward_values_round_trip() {
    let server = ClickHouseServer::shared();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("name", DataType::String),
        Field::new("score", DataType::Float),
        Field::new("at", DataType::Timestamp),
        Field::new("flag", DataType::Bool),
    ]));
    let rows = [
        vec![
            Value::Int(i64::MIN),
            Value::from(""),
            Value::Float(f64::NAN),
            Value::Timestamp(0),
            Value::Null,
        ],
        vec![
            Value::Int(i64::MAX),
            Value::from("\u{0}\u{1}\u{1f}\u{7f} \"\\/\n\r\t"),
            Value::Float(f64::INFINITY),
            Value::Timestamp(-1),
            Value::Bool(true),
        ],
        vec![
            Value::Int(-1),
            Value::from("🦀 中文 \u{2028}\u{2029} \u{feff}"),
            Value::Float(-1.5e-300),
            Value::Timestamp(253_402_300_799_999_999),
            Value::Bool(false),
        ],
    ];
    let mut batch = Batch::new(schema.clone());
    for (i, r) in rows.iter().enumerate() {
        batch.push_row(r.clone(), i as i64);
    }
    let mut sink = ClickHouseSink::new(ClickHouseSinkSpec {
        node: "awkward".into(),
        client: ClickHouse::new(&server.url(), None, None, Duration::from_secs(30)),
        database: "default".into(),
        table: "awkward".into(),
        schema: schema.clone(),
        columns: (0..5).collect(),
        key: vec![0],
        version: VersionSource::EventTime,
        create_table: true,
        batch_rows: 100,
        batch_bytes: 1 << 20,
        batch_interval: Duration::from_secs(1),
        retry_for: Duration::from_secs(5),
    });
    sink.recover(None).unwrap();
    sink.write(&batch).unwrap();
    sink.pre_commit(1).unwrap();
    sink.finish().unwrap();
    let text = server.sql(
        "SELECT toString(id), name, toString(score), at, flag FROM default.awkward FINAL \
         ORDER BY id FORMAT TabSeparated",
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "-9223372036854775808\t\tnan\t0\t\\N",
            "-1\t🦀 中文 \u{2028}\u{2029} \u{feff}\t-1.5e-300\t253402300799999999\t0",
            "9223372036854775807\t\\0\u{1}\u{1f}\u{7f} \"\\\\/\\n\\r\\t\tinf\t-1\t1",
        ]
    );
}

/// `examples/<name>` with what makes the demo's output depend on timing taken out (no
/// pacing, no idle release, an out-of-orderness bound over the generator's jitter) and
/// 20,000 observations; file sinks under `out`.
fn timing_free_demo(name: &str, out: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut text = std::fs::read_to_string(root.join(name)).unwrap();
    for (from, to) in [
        ("demo/", format!("{}/demo/", root.display())),
        ("watershed-out/", format!("{}/", out.display())),
        ("      rate: 14 ", "      # no pacing ".to_string()),
        ("    idle_timeout: 1s ", "    # ".to_string()),
        ("    idle_timeout: 500ms ", "    # ".to_string()),
        ("count: 60000", "count: 20000".to_string()),
        ("rate: 12000 ", "rate: 1000000 ".to_string()),
        (
            "max_out_of_orderness: 3s",
            "max_out_of_orderness: 10s".to_string(),
        ),
    ] {
        text = text.replace(from, &to);
    }
    text
}

/// The keys of a file sink's lines: the values of `columns`, as JSON text.
fn file_keys(path: &Path, columns: &[&str]) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            columns
                .iter()
                .map(|c| v[*c].to_string().trim_matches('"').to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn table_keys(
    server: &ClickHouseServer,
    table: &str,
    columns: &[&str],
) -> std::collections::BTreeSet<String> {
    let cols: Vec<String> = columns.iter().map(|c| format!("toString({c})")).collect();
    server
        .sql(&format!(
            "SELECT {} FROM default.{table} FINAL FORMAT TabSeparated",
            cols.join(", ")
        ))
        .lines()
        .map(|l| l.replace('\t', "|"))
        .collect()
}

#[test]
fn the_demo_fans_out_to_clickhouse_tables_holding_what_the_file_demo_writes() {
    let server = ClickHouseServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    let file_demo = tmp.path().join("demo.yaml");
    std::fs::write(&file_demo, timing_free_demo("demo.yaml", &files)).unwrap();
    run_to_end(&file_demo);
    let ch_demo = tmp.path().join("demo-clickhouse.yaml");
    std::fs::write(
        &ch_demo,
        timing_free_demo("demo-clickhouse.yaml", tmp.path()),
    )
    .unwrap();
    let out = run(&ch_demo)
        .env("CLICKHOUSE_URL", server.url())
        .env("CLICKHOUSE_USER", "writer")
        .env("CLICKHOUSE_PASSWORD", WRITER_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Timestamps of a created table are Int64 microseconds on 18.16: keys by id columns.
    let kev = file_keys(
        &files.join("kev_flags.jsonl"),
        &["observation_id", "cve_id"],
    );
    assert!(kev.len() > 1000, "{} KEV flags", kev.len());
    assert_eq!(
        table_keys(&server, "kev_flags", &["observation_id", "cve_id"]),
        kev
    );
    let advice = file_keys(
        &files.join("vendor_recommendations.jsonl"),
        &["cve_id", "source", "url", "host", "ts"],
    );
    let advice_rows: u64 = server
        .sql("SELECT count() FROM default.vendor_recommendations FINAL")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(advice_rows as usize, advice.len(), "vendor recommendations");
    let details = file_keys(
        &files.join("cve_details.jsonl"),
        &["cve_id", "window_start"],
    );
    let detail_rows: u64 = server
        .sql("SELECT count() FROM default.cve_details FINAL")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(detail_rows as usize, details.len(), "CVE details");
    let enriched: u64 = server
        .sql("SELECT count() FROM default.enriched_observations FINAL")
        .trim()
        .parse()
        .unwrap();
    let matched = std::fs::read_to_string(files.join("observations.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"cve_id\":null"))
        .count();
    assert_eq!(
        enriched as usize, matched,
        "enriched observations with a CVE"
    );
    let late_rows: u64 = server
        .sql("SELECT count() FROM default.late_observations FINAL")
        .trim()
        .parse()
        .unwrap();
    let late = file_keys(&files.join("late.jsonl"), &["observation_id", "cve_id"]);
    assert_eq!(late_rows as usize, late.len(), "late observations");
    let dead: u64 = server
        .sql("SELECT count() FROM default.dead_letters FINAL")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(dead, 0);

    // Reconcile runs the pipeline again (files and a counted generator: nothing outside is
    // read twice or written) and finds every table's keys; then one row deleted by hand.
    let reconcile = || {
        let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
            .arg("reconcile")
            .arg(&ch_demo)
            .env("CLICKHOUSE_URL", server.url())
            .env("CLICKHOUSE_USER", "writer")
            .env("CLICKHOUSE_PASSWORD", WRITER_PASSWORD)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, report) = reconcile();
    assert_eq!(code, 0, "{report}");
    for sink in [
        "enriched_observations",
        "cve_details",
        "kev_flags",
        "vendor_recommendations",
        "kev_exposure_per_minute",
        "late",
        "dead_letter",
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(sink)),
            "{sink} reconciled: {report}"
        );
    }
    let victim = server.sql("SELECT observation_id, cve_id FROM default.kev_flags FINAL LIMIT 1");
    let (obs, cve) = victim.trim().split_once('\t').unwrap();
    server.sql(&format!(
        "ALTER TABLE default.kev_flags DELETE WHERE observation_id = {obs} AND cve_id = '{cve}'"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server
        .sql(&format!(
            "SELECT count() FROM default.kev_flags WHERE observation_id = {obs}  AND cve_id = '{cve}'"
        ))
        .trim()
        != "0"
    {
        assert!(std::time::Instant::now() < deadline, "the delete never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, report) = reconcile();
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("missing: {obs}|{cve}")),
        "{report}"
    );
    assert!(report.contains("1 sink(s) drifted"), "{report}");
}

fn reconcile(pipeline: &Path, metrics: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["reconcile", "--ranges", "4", "--metrics-file"])
        .arg(metrics)
        .arg(pipeline)
        .env("CH_PASSWORD", WRITER_PASSWORD)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The `all` row of a sink in a reconcile report: expected, found, missing, extra, stale,
/// unmerged.
fn totals(report: &str, sink: &str) -> Vec<u64> {
    let line = report
        .lines()
        .find(|l| l.starts_with(sink) && l.split_whitespace().nth(1) == Some("all"))
        .unwrap_or_else(|| panic!("no totals of {sink} in:\n{report}"));
    line.split_whitespace()
        .skip(2)
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn reconcile_reports_exactly_the_drift_injected_by_hand() {
    let server = ClickHouseServer::shared();
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), server, "recon", None);
    run_to_end(&p);
    let metrics = tmp.path().join("reconcile.prom");
    let (code, report) = reconcile(&p, &metrics);
    assert_eq!(code, 0, "{report}");
    let t = totals(&report, "rules");
    assert!(
        t[0] > 1700 && t[0] == t[1] && t[2..5] == [0, 0, 0],
        "{report}"
    );
    let live = t[0];

    // Merge what the run wrote, then drift by hand: a row deleted, a duplicate of another
    // with an older version (hidden by FINAL, but not merged), a row of a key the source
    // never had, and a newer version of a third key that the source does not know.
    server.sql("OPTIMIZE TABLE default.recon FINAL");
    let ids: Vec<i64> = server
        .sql("SELECT id FROM default.recon FINAL WHERE _deleted = 0 ORDER BY id LIMIT 3")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    server.sql(&format!(
        "ALTER TABLE default.recon DELETE WHERE id = {}",
        ids[0]
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server
        .sql(&format!(
            "SELECT count() FROM default.recon WHERE id = {}",
            ids[0]
        ))
        .trim()
        != "0"
    {
        assert!(std::time::Instant::now() < deadline, "the delete never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.sql(&format!(
        "INSERT INTO default.recon (id, cve_id, _version, _deleted) VALUES ({}, 'CVE-0000-0000', 1, 0)",
        ids[1]
    ));
    server.sql(
        "INSERT INTO default.recon (id, cve_id, _version, _deleted) VALUES (999999999, 'CVE-0000-0001', 1, 0)",
    );
    server.sql(&format!(
        "INSERT INTO default.recon (id, cve_id, _version, _deleted) VALUES ({}, 'CVE-0000-0002', 18446744073709551615, 0)",
        ids[2]
    ));
    let (code, report) = reconcile(&p, &metrics);
    assert_eq!(code, 1, "drift exits with 1: {report}");
    // expected, found, missing, extra, stale, unmerged
    assert_eq!(
        totals(&report, "rules"),
        [live, live, 1, 1, 1, 2],
        "{report}"
    );
    assert!(report.contains(&format!("missing: {}", ids[0])), "{report}");
    assert!(report.contains("extra: 999999999"), "{report}");
    assert!(report.contains(&format!("stale: {}", ids[2])), "{report}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("watershed_reconcile_rows{sink=\"rules\",kind=\"missing\"} 1")
            && text.contains("watershed_reconcile_drift{sink=\"rules\"} 1"),
        "{text}"
    );
}

/// One change of a table `(id int, doc string, n int)`: op, lsn, id, doc, n, and the
/// unavailable columns (JSON).
pub(crate) type TestChange<'a> = (
    &'a str,
    i64,
    i64,
    Option<&'a str>,
    Option<i64>,
    Option<&'a str>,
);

/// Change rows of `TestChange`s.
pub(crate) fn change_batch(rows: &[TestChange<'_>]) -> Batch {
    let table = Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("doc", DataType::String),
        Field::new("n", DataType::Int),
    ]);
    let mut batch = Batch::new(watershed::cdc::rows::change_schema(&table));
    for (op, lsn, id, doc, n, unavailable) in rows {
        batch.push_row(
            [
                Value::from(*op),
                Value::Int(*lsn),
                Value::Int(0),
                Value::from("false"),
                unavailable.map_or(Value::Null, |u| Value::Json(u.into())),
                Value::Int(*id),
                doc.map_or(Value::Null, Value::from),
                n.map_or(Value::Null, Value::Int),
            ],
            *lsn,
        );
    }
    batch
}

#[test]
fn an_update_without_its_unchanged_toasted_value_keeps_the_table_s_and_deletes_need_only_the_key() {
    let server = ClickHouseServer::shared();
    let batch = change_batch(&[
        ("c", 10, 1, Some("a large document"), Some(1), None),
        ("c", 11, 2, Some("another"), Some(2), None),
    ]);
    let schema = batch.schema().clone();
    let spec = ClickHouseSinkSpec {
        node: "toast".into(),
        client: ClickHouse::new(&server.url(), None, None, Duration::from_secs(30)),
        database: "default".into(),
        table: "toast".into(),
        schema: schema.clone(),
        columns: (5..8).collect(),
        key: vec![5],
        version: VersionSource::Change,
        create_table: true,
        batch_rows: 100,
        batch_bytes: 1 << 20,
        batch_interval: Duration::from_secs(1),
        retry_for: Duration::from_secs(5),
    };
    let mut sink = ClickHouseSink::new(spec);
    sink.recover(None).unwrap();
    sink.write(&batch).unwrap();
    sink.pre_commit(1).unwrap();
    // `doc` unchanged and TOASTed: no value in the change; a delete with only its key.
    sink.write(&change_batch(&[
        ("u", 20, 1, None, Some(5), Some("[\"doc\"]")),
        ("d", 21, 2, None, None, None),
    ]))
    .unwrap();
    sink.pre_commit(2).unwrap();
    sink.finish().unwrap();
    let rows = server.sql(
        "SELECT id, doc, n, _deleted FROM (SELECT * FROM default.toast FINAL) ORDER BY id \
         FORMAT TabSeparated",
    );
    assert_eq!(rows, "1\ta large document\t5\t0\n2\t\\N\t\\N\t1\n");
}

/// On a current engine (ClickHouse 26 in chDB, behind a stand-in HTTP front: the transport
/// is not a real server's, the engine is): the created table drops deleted keys from `FINAL`
/// by itself (`ReplacingMergeTree(_version, _deleted)`), holds what 18.16 holds, and
/// reconciles.
#[test]
fn on_a_current_engine_deleted_keys_leave_final_and_the_table_reconciles() {
    use watershed::testing::clickhouse_fixtures::CurrentClickHouse;
    let current = CurrentClickHouse::shared();
    let debian = ClickHouseServer::shared();
    let tmp = tempfile::tempdir().unwrap();
    let old = pipeline(tmp.path(), debian, "recs_debian", None);
    run_to_end(&old);
    let text = std::fs::read_to_string(&old)
        .unwrap()
        .replace(&debian.url(), &current.url())
        .replace("user: writer, password: \"${CH_PASSWORD}\", ", "")
        .replace("recs_debian", "recs_current")
        .replace("ch-recs_debian", "ch-recs_current")
        .replace("/checkpoints", "/checkpoints-current");
    let new = tmp.path().join("current.yaml");
    std::fs::write(&new, text).unwrap();
    run_to_end(&new);
    let engine = current.sql(
        "SELECT engine_full FROM system.tables WHERE database = 'default' AND name = 'recs_current'",
    );
    assert!(
        engine.contains("ReplacingMergeTree(_version, _deleted)"),
        "{engine}"
    );
    let all_final: u64 = current
        .sql("SELECT count() FROM default.recs_current FINAL")
        .trim()
        .parse()
        .unwrap();
    let live_old = live_rows(debian, "recs_debian").len() as u64;
    assert_eq!(
        all_final, live_old,
        "FINAL alone leaves the deleted keys out"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .arg("reconcile")
        .arg(&new)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
