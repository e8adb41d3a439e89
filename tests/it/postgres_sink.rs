//! The Postgres sink against a real Postgres 15 (the test binary's shared server), through
//! the binary: the demo's change stream of vendor recommendations (snapshot, inserts, updates
//! and deletes) upserted into a table holds, after SIGKILLs and restarts, exactly the rows
//! and versions of one uninterrupted run, with the deleted keys as tombstones; a table the
//! upserts cannot use (no unique index on the key) stops the run naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use watershed::testing::postgres_fixtures::sink_options;
use watershed::testing::services::Postgres;

/// The demo's `vendor_recommendation` change stream (changes paced at `rate`/s if given)
/// upserted into `table` of database `sinks`.
fn pipeline(dir: &Path, pg: &Postgres, table: &str, rate: Option<u32>) -> PathBuf {
    let _ = sink_options(pg); // creates database `sinks`
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/reference");
    let rate = rate.map_or(String::new(), |r| format!(", rate: {r}"));
    let text = format!(
        "name: pg-{table}\ncheckpoint: {{interval: 200ms, dir: \"{ckpt}\"}}\nsources:\n  vulndb:\n    file: {{format: debezium, snapshot: [\"{r}/snapshot.jsonl\"], paths: [\"{r}/changes.jsonl\"]{rate}}}\n    tables:\n      vendor_recommendation:\n        key: [id]\n        columns: {{id: int, cve_id: string, source: string, recommendation: string, url: string}}\nsinks:\n  rules:\n    input: vulndb.vendor_recommendation\n    postgres: {{port: {port}, user: cdc, database: sinks, table: {table}, key: [id], create_table: true, batch_rows: 300}}\n",
        ckpt = dir.join("checkpoints").display(),
        r = reference.display(),
        port = pg.port,
    );
    let path = dir.join(format!("{table}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(pipeline: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watershed"));
    cmd.args(["run", "--log", "warn", "--metrics-addr", "off"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(pipeline: &Path) {
    let out = run(pipeline).output().unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rows(pg: &Postgres, table: &str) -> String {
    pg.sql("sinks", &format!("SELECT * FROM {table} ORDER BY id"))
}

#[test]
fn killed_runs_upsert_the_same_rows_and_versions_as_one_uninterrupted_run() {
    let pg = Postgres::shared();
    let tmp = tempfile::tempdir().unwrap();
    let (once, crashed) = (tmp.path().join("once"), tmp.path().join("crashed"));
    std::fs::create_dir_all(&once).unwrap();
    std::fs::create_dir_all(&crashed).unwrap();
    run_to_end(&pipeline(&once, pg, "recs_once", None));
    let expected = rows(pg, "recs_once");
    let live: usize = pg
        .sql("sinks", "SELECT count(*) FROM recs_once WHERE NOT _deleted")
        .trim()
        .parse()
        .unwrap();
    assert!(live > 1700, "{live} live rows");
    let tombstones: usize = pg
        .sql("sinks", "SELECT count(*) FROM recs_once WHERE _deleted")
        .trim()
        .parse()
        .unwrap();
    assert!(tombstones > 0, "deletes are tombstones");

    let p = pipeline(&crashed, pg, "recs_crashed", Some(20));
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
    run_to_end(&pipeline(&crashed, pg, "recs_crashed", None));
    assert!(
        rows(pg, "recs_crashed") == expected,
        "the same rows and versions after {kills} kills"
    );
}

#[test]
fn a_key_without_a_unique_index_stops_the_run_naming_it() {
    let pg = Postgres::shared();
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), pg, "recs_no_key", None);
    pg.sql(
        "sinks",
        "CREATE TABLE recs_no_key (id bigint, cve_id text, source text, recommendation text, \
         url text, _version bigint NOT NULL, _deleted boolean NOT NULL DEFAULT false); \
         ALTER TABLE recs_no_key OWNER TO cdc",
    );
    let out = run(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs a primary key or unique index on (id)"),
        "{err}"
    );
    let count = pg.sql("sinks", "SELECT count(*) FROM recs_no_key");
    assert_eq!(count.trim(), "0");
}

#[test]
fn reconcile_finds_rows_changed_by_hand_in_the_table() {
    let pg = Postgres::shared();
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), pg, "recs_recon", None);
    run_to_end(&p);
    let reconcile = || {
        let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
            .args(["reconcile", "--ranges", "3"])
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let totals = |report: &str| -> Vec<u64> {
        report
            .lines()
            .find(|l| l.starts_with("rules") && l.split_whitespace().nth(1) == Some("all"))
            .unwrap_or_else(|| panic!("{report}"))
            .split_whitespace()
            .skip(2)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let (code, report) = reconcile();
    assert_eq!(code, 0, "{report}");
    let live = totals(&report)[0];
    assert_eq!(totals(&report), [live, live, 0, 0, 0, 0]);
    let ids: Vec<i64> = pg
        .sql(
            "sinks",
            "SELECT id FROM recs_recon WHERE NOT _deleted ORDER BY id LIMIT 2",
        )
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    pg.sql(
        "sinks",
        &format!(
            "DELETE FROM recs_recon WHERE id = {}; \
             UPDATE recs_recon SET _version = 1 WHERE id = {}; \
             INSERT INTO recs_recon (id, _version) VALUES (999999999, 1)",
            ids[0], ids[1]
        ),
    );
    let (code, report) = reconcile();
    assert_eq!(code, 1, "{report}");
    assert_eq!(totals(&report), [live, live, 1, 1, 1, 0], "{report}");
}

#[test]
fn an_update_without_its_unchanged_toasted_value_keeps_the_table_s_and_deletes_need_only_the_key() {
    use watershed::dataflow::Sink;
    use watershed::sinks::keyed::VersionSource;
    use watershed::sinks::postgres::{PostgresSink, PostgresSinkSpec};
    let pg = Postgres::shared();
    let connect = sink_options(pg);
    // A table of the user's: NOT NULL columns, which a delete's key-only row cannot fill.
    pg.sql(
        "sinks",
        "CREATE TABLE toast (id bigint PRIMARY KEY, doc text NOT NULL, n bigint NOT NULL, \
         _version bigint NOT NULL, _deleted boolean NOT NULL DEFAULT false); \
         ALTER TABLE toast OWNER TO cdc",
    );
    let batch = crate::clickhouse::change_batch(&[
        ("c", 10, 1, Some("a large document"), Some(1), None),
        ("c", 11, 2, Some("another"), Some(2), None),
    ]);
    let mut sink = PostgresSink::new(PostgresSinkSpec {
        node: "toast".into(),
        connect,
        schema_name: "public".into(),
        table: "toast".into(),
        schema: batch.schema().clone(),
        columns: (5..8).collect(),
        key: vec![5],
        version: VersionSource::Change,
        create_table: false,
        batch_rows: 100,
        retry_for: Duration::from_secs(5),
    });
    sink.recover(None).unwrap();
    sink.write(&batch).unwrap();
    sink.pre_commit(1).unwrap();
    sink.write(&crate::clickhouse::change_batch(&[
        ("u", 20, 1, None, Some(5), Some("[\"doc\"]")),
        ("d", 21, 2, None, None, None),
    ]))
    .unwrap();
    sink.pre_commit(2).unwrap();
    sink.finish().unwrap();
    assert_eq!(
        pg.sql(
            "sinks",
            "SELECT id, doc, n, _deleted FROM toast ORDER BY id"
        ),
        "1|a large document|5|f\n2|another|2|t\n"
    );
}

/// The native Postgres source into ClickHouse: reconcile compares the source table's rows as
/// they are now with the ClickHouse table's under `FINAL` — drift in either is reported.
#[test]
fn reconcile_compares_a_postgres_table_with_its_clickhouse_copy() {
    use watershed::testing::clickhouse_fixtures::ClickHouseServer;
    let pg = Postgres::shared();
    let ch = ClickHouseServer::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE recon_src (id bigint PRIMARY KEY, v text); ALTER TABLE recon_src OWNER TO cdc; \
         INSERT INTO recon_src SELECT g, 'v' || g FROM generate_series(1, 500) g",
    );
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: recon-pg-ch\nsources:\n  refdb:\n    postgres: {{port: {port}, user: cdc, database: cdc, slot: recon_slot, until: caught_up}}\n    tables:\n      t:\n        table: public.recon_src\n        key: [id]\n        columns: {{id: int, v: string}}\nsinks:\n  copy:\n    input: refdb.t\n    clickhouse: {{url: \"{url}\", table: recon_copy, key: [id], create_table: true}}\n",
            port = pg.port,
            url = ch.url()
        ),
    )
    .unwrap();
    run_to_end(&pipeline);
    let reconcile = || {
        let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
            .arg("reconcile")
            .arg(&pipeline)
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
    assert!(report.contains("500"), "{report}");
    // A row gone from ClickHouse, and one the source deleted since (not streamed yet).
    ch.sql("ALTER TABLE default.recon_copy DELETE WHERE id = 7");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ch
        .sql("SELECT count() FROM default.recon_copy WHERE id = 7")
        .trim()
        != "0"
    {
        assert!(std::time::Instant::now() < deadline, "the delete never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.sql("cdc", "DELETE FROM recon_src WHERE id = 9");
    let (code, report) = reconcile();
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("missing: 7") && report.contains("extra: 9"),
        "{report}"
    );
    let line = report
        .lines()
        .find(|l| l.starts_with("copy"))
        .unwrap_or_else(|| panic!("{report}"));
    let n: Vec<&str> = line.split_whitespace().skip(2).collect();
    assert_eq!(n, ["499", "499", "1", "1", "0", "0"], "{report}");
    pg.sql("cdc", "SELECT pg_drop_replication_slot('recon_slot')");
}

#[test]
fn validate_connect_checks_the_sinks_tables_and_creates_nothing() {
    use watershed::testing::clickhouse_fixtures::ClickHouseServer;
    let pg = Postgres::shared();
    let ch = ClickHouseServer::shared();
    let _ = sink_options(pg);
    ch.sql(
        "CREATE TABLE IF NOT EXISTS default.vc_wrong (id Int64, cve_id Int64, _version UInt64, \
         _deleted UInt8) ENGINE = ReplacingMergeTree(_version) ORDER BY id",
    );
    let tmp = tempfile::tempdir().unwrap();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/reference");
    let pipeline = tmp.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "sources:\n  vulndb:\n    file: {{format: debezium, snapshot: [\"{r}/snapshot.jsonl\"]}}\n    tables:\n      vendor_recommendation:\n        key: [id]\n        columns: {{id: int, cve_id: string, source: string, recommendation: string, url: string}}\nsinks:\n  a:\n    input: vulndb.vendor_recommendation\n    clickhouse: {{url: \"{url}\", table: vc_wrong, key: [id]}}\n  b:\n    input: vulndb.vendor_recommendation\n    clickhouse: {{url: \"{url}\", table: vc_new, key: [id], create_table: true}}\n  c:\n    input: vulndb.vendor_recommendation\n    postgres: {{port: {port}, user: cdc, database: sinks, table: vc_new, key: [id], create_table: true}}\n  d:\n    input: vulndb.vendor_recommendation\n    postgres: {{port: 1, user: cdc, database: sinks, table: vc_new, key: [id], connect_timeout: 1s}}\n",
            r = reference.display(),
            url = ch.url(),
            port = pg.port,
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["validate", "--connect"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in [
        "ok   sink a: ClickHouse at",
        "FAIL sink a: table `default`.`vc_wrong`: column `cve_id`: the pipeline writes string values, the table has Int64",
        "ok   sink b: table default.vc_new does not exist yet: the sink creates it",
        "ok   sink c: Postgres at 127.0.0.1",
        "ok   sink c: table public.vc_new does not exist yet: the sink creates it",
        "FAIL sink d: Postgres at 127.0.0.1:1",
        "2 check(s) failed",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert_eq!(
        ch.sql("EXISTS TABLE default.vc_new").trim(),
        "0",
        "nothing created"
    );
    assert_eq!(
        pg.sql("sinks", "SELECT to_regclass('public.vc_new') IS NULL")
            .trim(),
        "t"
    );
}

#[test]
fn a_delete_before_its_insert_leaves_a_tombstone_the_older_insert_cannot_pass() {
    use watershed::dataflow::Sink;
    use watershed::sinks::keyed::VersionSource;
    use watershed::sinks::postgres::{PostgresSink, PostgresSinkSpec};
    let pg = Postgres::shared();
    let first = crate::clickhouse::change_batch(&[("d", 20, 3, None, None, None)]);
    let mut sink = PostgresSink::new(PostgresSinkSpec {
        node: "early".into(),
        connect: sink_options(pg),
        schema_name: "public".into(),
        table: "early_delete".into(),
        schema: first.schema().clone(),
        columns: (5..8).collect(),
        key: vec![5],
        version: VersionSource::Change,
        create_table: true,
        batch_rows: 100,
        retry_for: Duration::from_secs(5),
    });
    sink.recover(None).unwrap();
    sink.write(&first).unwrap();
    sink.pre_commit(1).unwrap();
    // The insert, older, arrives after the delete (another path of the pipeline).
    sink.write(&crate::clickhouse::change_batch(&[(
        "c",
        10,
        3,
        Some("late"),
        Some(1),
        None,
    )]))
    .unwrap();
    sink.pre_commit(2).unwrap();
    sink.finish().unwrap();
    assert_eq!(
        pg.sql("sinks", "SELECT id, doc, _deleted FROM early_delete"),
        "3||t\n"
    );
}
