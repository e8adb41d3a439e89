//! The native PostgreSQL CDC path against a real Postgres 15 (`wal_level=logical`) started on
//! a free loopback port: connections and authentication, the replication protocol, and the
//! pgoutput messages of a scripted history.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use watershed::cdc::stream::{CdcTable, TableConfig};
use watershed::cdc::{Decoded, TableId};
use watershed::dataflow::{ReadBuffers, ReadStatus, Source};
use watershed::sources::postgres::changes::{ChangeDecoder, HEARTBEAT_PREFIX};
use watershed::sources::postgres::pgoutput::{self, Message, TupleValue};
use watershed::sources::postgres::source::{PostgresSource, PostgresSpec};
use watershed::sources::postgres::wire::{
    ConnectOptions, Connection, Lsn, PgError, ReplicationMessage, TlsMode,
};
use watershed::testing::services::Postgres;
use watershed::types::{DataType, Field, Schema};

fn options(pg: &Postgres, user: &str, password: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: user.into(),
        password: password.map(str::to_string),
        database: "cdc".into(),
        application_name: "watershed-test".into(),
        connect_timeout: Duration::from_secs(10),
        tls: TlsMode::Prefer,
        ca_file: None,
    }
}

#[test]
fn connects_with_scram_md5_and_trust_and_names_a_wrong_password() {
    let pg = Postgres::shared();
    let mut scram = Connection::connect(&options(pg, "scram_user", Some("scram-secret")), false)
        .expect("SCRAM-SHA-256");
    assert_eq!(scram.server_major_version(), Some(15));
    let r = scram
        .query("SELECT current_user, 1 + 1 AS two, NULL AS n")
        .unwrap();
    assert_eq!(r[0].get(0, "current_user"), Some("scram_user"));
    assert_eq!(r[0].get(0, "two"), Some("2"));
    assert_eq!(r[0].rows[0][2], None);
    let mut md5 =
        Connection::connect(&options(pg, "md5_user", Some("md5-secret")), false).expect("MD5");
    assert_eq!(md5.query("SELECT 1").unwrap()[0].tag, "SELECT 1");
    Connection::connect(&options(pg, "cdc", None), true).expect("trust, replication mode");

    let wrong = Connection::connect(&options(pg, "scram_user", Some("nope")), false)
        .err()
        .expect("a wrong password is refused");
    assert!(
        matches!(&wrong, PgError::Auth(m) if m.contains("authentication of user \"scram_user\" failed")),
        "{wrong}"
    );
    assert!(!wrong.to_string().contains("nope"));
    let none = Connection::connect(&options(pg, "md5_user", None), false)
        .err()
        .expect("no password");
    assert!(none.to_string().contains("none is set"), "{none}");

    // A failed query leaves the connection usable, and names the server's SQLSTATE.
    let e = scram.query("SELECT * FROM no_such_table").unwrap_err();
    assert_eq!(e.code(), Some("42P01"), "{e}");
    assert_eq!(
        scram.query("SELECT 2").unwrap()[0].rows,
        vec![vec![Some("2".into())]]
    );
}

/// A logical slot on `pgoutput`, then a scripted history; the stream gives every change, in
/// commit order, with its transaction's boundaries and its table's description.
#[test]
fn streams_the_pgoutput_messages_of_a_scripted_history() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE wire_cve (cve_id text PRIMARY KEY, score numeric(3,1), note text);
         CREATE TABLE wire_full (id int PRIMARY KEY, v text);
         ALTER TABLE wire_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION wire_pub FOR TABLE wire_cve, wire_full;",
    );
    let mut repl = Connection::connect(&options(pg, "cdc", None), true).unwrap();
    let system = repl.query("IDENTIFY_SYSTEM").unwrap();
    let xlogpos: Lsn = system[0].get(0, "xlogpos").unwrap().parse().unwrap();
    let slot = repl
        .query("CREATE_REPLICATION_SLOT wire_slot LOGICAL pgoutput (SNAPSHOT 'nothing')")
        .unwrap();
    let consistent: Lsn = slot[0].get(0, "consistent_point").unwrap().parse().unwrap();
    assert!(consistent >= xlogpos);

    // Each statement its own transaction unless grouped; the note is large and random
    // enough to be stored out of line (TOAST).
    for statement in [
        "INSERT INTO wire_cve SELECT 'CVE-1', 5.5, string_agg(md5(i::text), '') \
         FROM generate_series(1, 400) i",
        "BEGIN; INSERT INTO wire_cve VALUES ('CVE-2', 9.8, NULL); \
         UPDATE wire_cve SET score = 6.1 WHERE cve_id = 'CVE-1'; COMMIT;",
        "UPDATE wire_cve SET cve_id = 'CVE-3' WHERE cve_id = 'CVE-2'",
        "DELETE FROM wire_cve WHERE cve_id = 'CVE-3'",
        "INSERT INTO wire_full VALUES (1, 'a')",
        "UPDATE wire_full SET v = 'b' WHERE id = 1",
        "DELETE FROM wire_full WHERE id = 1",
        "SELECT pg_logical_emit_message(true, 'watershed', 'hello')",
        "TRUNCATE wire_full",
    ] {
        pg.sql("cdc", statement);
    }
    repl.start_replication(&format!(
        "START_REPLICATION SLOT wire_slot LOGICAL {consistent} \
         (proto_version '1', publication_names 'wire_pub', messages 'true')"
    ))
    .unwrap();

    let mut seen: Vec<String> = Vec::new();
    let mut decoder = ChangeDecoder::new([]);
    let mut decoded: Vec<Decoded> = Vec::new();
    let mut last_commit = Lsn(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut truncated = false;
    while !truncated {
        assert!(
            Instant::now() < deadline,
            "the history did not arrive: {seen:#?}"
        );
        let Some(msg) = repl.recv_replication(Duration::from_millis(200)).unwrap() else {
            continue;
        };
        let ReplicationMessage::XLogData { start, data, .. } = msg else {
            continue;
        };
        let m = pgoutput::decode(&data, false).unwrap();
        // Logical messages are the database's, not the publication's: other tests' sources
        // write heartbeats.
        if matches!(m, Message::LogicalMessage { prefix, .. } if prefix == HEARTBEAT_PREFIX) {
            continue;
        }
        decoder.decode(start, &data, &mut decoded).unwrap();
        let text = |t: &[TupleValue<'_>]| -> String {
            t.iter()
                .map(|v| match v {
                    TupleValue::Null => "null".to_string(),
                    TupleValue::UnchangedToast => "unchanged".to_string(),
                    TupleValue::Text(s) if s.len() > 20 => format!("{}…", &s[..3]),
                    TupleValue::Text(s) => s.to_string(),
                    TupleValue::Binary(_) => "binary".to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        seen.push(match m {
            Message::Begin { final_lsn, .. } => {
                assert!(final_lsn > last_commit);
                "begin".into()
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                // The commit's XLogData starts where the commit record ends.
                assert!(end_lsn > commit_lsn && start == end_lsn);
                last_commit = commit_lsn;
                "commit".into()
            }
            Message::Relation(r) => format!(
                "relation {}.{} {} key {:?}",
                r.namespace,
                r.name,
                r.replica_identity as char,
                r.columns
                    .iter()
                    .filter(|c| c.key)
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
            ),
            Message::Insert { new, .. } => format!("insert {}", text(&new)),
            Message::Update { old, new, .. } => format!(
                "update {}{}",
                old.map(|(k, t)| format!("{} {} -> ", k as char, text(&t)))
                    .unwrap_or_default(),
                text(&new)
            ),
            Message::Delete { old: (k, t), .. } => format!("delete {} {}", k as char, text(&t)),
            Message::LogicalMessage {
                prefix, content, ..
            } => format!("message {prefix} {}", String::from_utf8_lossy(content)),
            Message::Truncate { relations, .. } => {
                truncated = true;
                format!("truncate {}", relations.len())
            }
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "begin",
            "relation public.wire_cve d key [\"cve_id\"]",
            "insert CVE-1,5.5,c4c…",
            "commit",
            "begin",
            "insert CVE-2,9.8,null",
            // The TOASTed note did not change: it is not sent.
            "update CVE-1,6.1,unchanged",
            "commit",
            "begin",
            // A key change sends the old key.
            "update K CVE-2,null,null -> CVE-3,9.8,null",
            "commit",
            "begin",
            "delete K CVE-3,null,null",
            "commit",
            "begin",
            // REPLICA IDENTITY FULL: every column identifies the row.
            "relation public.wire_full f key [\"id\", \"v\"]",
            "insert 1,a",
            "commit",
            "begin",
            // REPLICA IDENTITY FULL: the whole old row.
            "update O 1,a -> 1,b",
            "commit",
            "begin",
            "delete O 1,b",
            "commit",
            "begin",
            "message watershed hello",
            "commit",
            "begin",
            "relation public.wire_full f key [\"id\", \"v\"]",
            "truncate 1",
        ]
    );
    // The same history as typed change records, as the Debezium path gives them: a key
    // change is a delete and a create, the unchanged TOASTed note is unavailable.
    let summary: Vec<String> = decoded
        .iter()
        .map(|d| match d {
            Decoded::Change(c) => format!(
                "{} {} {:?}{}",
                c.op.code(),
                c.table.table,
                c.key
                    .iter()
                    .map(|(_, v)| v
                        .as_str()
                        .map(str::to_string)
                        .or(v.as_i64().map(|i| i.to_string()))
                        .unwrap_or_default())
                    .collect::<Vec<_>>(),
                if c.unavailable.is_empty() {
                    String::new()
                } else {
                    format!(" unavailable {:?}", c.unavailable)
                }
            ),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "c wire_cve [\"CVE-1\"]",
            "c wire_cve [\"CVE-2\"]",
            "u wire_cve [\"CVE-1\"] unavailable [2]",
            "d wire_cve [\"CVE-2\"]",
            "c wire_cve [\"CVE-3\"]",
            "d wire_cve [\"CVE-3\"]",
            "c wire_full [\"1\", \"a\"]",
            "u wire_full [\"1\", \"b\"]",
            "d wire_full [\"1\", \"b\"]",
            "m  []",
            "t wire_full []",
        ]
    );
    let versions: Vec<(u64, u64)> = decoded
        .iter()
        .filter_map(|d| match d {
            Decoded::Change(c) => Some((c.version.commit_lsn, c.version.ordinal)),
            _ => None,
        })
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "commit order: {versions:?}"
    );
    // The server keeps the WAL after what is confirmed.
    repl.send_status(last_commit, last_commit, 0, false)
        .unwrap();
    drop(repl);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let confirmed = pg.sql(
            "cdc",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'wire_slot'",
        );
        if confirmed.trim().parse::<Lsn>().ok() == Some(last_commit) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed {confirmed}, sent {last_commit}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.sql("cdc", "SELECT pg_drop_replication_slot('wire_slot')");
}

/// The rows of table `hosts` as the pipeline's change rows say: each change applied when its
/// version is newer than the key's (a snapshot read only when the key has none at least as
/// new), as the enrichment's materializer does.
type Row = (String, String);

fn materialize(rows: &[serde_json::Value]) -> BTreeMap<String, Row> {
    let mut state: BTreeMap<String, ((i64, i64), Option<Row>)> = BTreeMap::new();
    for r in rows {
        let op = r["_op"].as_str().unwrap();
        if op == "snapshot_end" {
            continue;
        }
        let version = (r["_lsn"].as_i64().unwrap(), r["_ordinal"].as_i64().unwrap());
        let host = r["host"].as_str().unwrap().to_string();
        let value = match op {
            "d" => None,
            _ => Some((
                r["owner"].as_str().unwrap().to_string(),
                r["score"].to_string(),
            )),
        };
        if state.get(&host).is_none_or(|(v, _)| *v < version) {
            state.insert(host, (version, value));
        }
    }
    state
        .into_iter()
        .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
        .collect()
}

fn table_now(pg: &Postgres) -> BTreeMap<String, Row> {
    pg.sql(
        "cdc",
        "SELECT host || '|' || owner || '|' || score FROM pg_hosts ORDER BY host",
    )
    .lines()
    .map(|l| {
        let mut p = l.split('|');
        let host = p.next().unwrap().to_string();
        let owner = p.next().unwrap().to_string();
        let score = p.next().unwrap().to_string();
        (host, (owner, format!("\"{score}\"")))
    })
    .collect()
}

/// A table read by the native source through the binary: a snapshot in chunks, then
/// changes (update, insert, delete, key change, a multi-statement transaction); the run is
/// killed mid-stream, changes keep coming while it is down, and the restarted run resumes
/// from its checkpoint: the change rows materialize to the table as it is, no change twice.
#[test]
fn a_table_snapshot_then_changes_survive_a_kill_through_the_binary() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE pg_hosts (host text PRIMARY KEY, owner text NOT NULL, score numeric(4,1));
         INSERT INTO pg_hosts SELECT 'h' || lpad(i::text, 5, '0'), 'o' || i, (i % 100) / 10.0
         FROM generate_series(1, 2500) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hosts.jsonl");
    let pipeline = dir.path().join("pg.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: pg-e2e
checkpoint: {{interval: 500ms, dir: {ckpt}}}
sources:
  refdb:
    postgres:
      port: {port}
      user: scram_user
      password: ${{E2E_PG_PASSWORD}}
      database: cdc
      slot: e2e_slot
      chunk_rows: 1000
      heartbeat_interval: 1s
    tables:
      hosts:
        table: public.pg_hosts
        key: [host]
        columns: {{host: string, owner: string, score: decimal}}
sinks:
  out:
    input: refdb.hosts
    file: {out}
",
            ckpt = dir.path().join("ckpt").display(),
            port = pg.port,
            out = out.display(),
        ),
    )
    .unwrap();
    // The source's user may replicate and read the table; the publication is made for it.
    pg.sql(
        "cdc",
        "GRANT SELECT ON pg_hosts TO scram_user;
         CREATE PUBLICATION e2e_slot FOR TABLE pg_hosts;",
    );
    let start = || {
        run_command(&pipeline, &[])
            .env("E2E_PG_PASSWORD", "scram-secret")
            .spawn()
            .unwrap()
    };
    let rows = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let wait = |what: &str, done: &dyn Fn(&[serde_json::Value]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = rows();
            if done(&r) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}: {} rows",
                r.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let child = start();
    wait("the snapshot", &|r| {
        r.iter().any(|x| x["_op"] == "snapshot_end")
    });
    let r = rows();
    assert_eq!(r.iter().filter(|x| x["_op"] == "r").count(), 2500);
    let end = r.iter().position(|x| x["_op"] == "snapshot_end").unwrap();
    assert_eq!(end, 2500, "the snapshot ends after its rows");

    pg.sql(
        "cdc",
        "UPDATE pg_hosts SET owner = 'changed' WHERE host = 'h00001'",
    );
    pg.sql("cdc", "INSERT INTO pg_hosts VALUES ('h09999', 'new', 1.5)");
    pg.sql("cdc", "DELETE FROM pg_hosts WHERE host = 'h00002'");
    pg.sql(
        "cdc",
        "UPDATE pg_hosts SET host = 'h00003b' WHERE host = 'h00003'",
    );
    pg.sql(
        "cdc",
        "BEGIN; UPDATE pg_hosts SET score = score + 1 WHERE host <= 'h00100'; COMMIT;",
    );
    wait("the first changes", &|r| {
        r.iter().filter(|x| x["_op"] == "u").count() >= 100
    });
    // Killed; the checkpoint (every 500 ms) has what it has.
    std::thread::sleep(Duration::from_millis(1200));
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    pg.sql(
        "cdc",
        "UPDATE pg_hosts SET owner = 'while-down' WHERE host = 'h00004'",
    );
    pg.sql("cdc", "DELETE FROM pg_hosts WHERE host = 'h00005'");
    let child = start();
    wait("the changes made while it was down", &|r| {
        r.iter().any(|x| x["owner"] == "while-down")
            && r.iter().any(|x| x["_op"] == "d" && x["host"] == "h00005")
    });
    // A heartbeat moves the slot's confirmed LSN while nothing changes.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling a child this test started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let outcome = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("scram-secret"), "{stderr}");

    let r = rows();
    assert_eq!(
        r.iter().filter(|x| x["_op"] == "r").count(),
        2500,
        "the restarted run resumed streaming from its checkpoint, with no new snapshot"
    );
    eprintln!(
        "change rows: {} ({} updates, {} deletes, {} creates)",
        r.len(),
        r.iter().filter(|x| x["_op"] == "u").count(),
        r.iter().filter(|x| x["_op"] == "d").count(),
        r.iter().filter(|x| x["_op"] == "c").count()
    );
    assert_eq!(
        materialize(&r),
        table_now(pg),
        "the change rows give the table"
    );
    assert_no_change_twice(&r, &["_op", "_lsn", "_ordinal", "host"]);
    let confirmed = pg.sql(
        "cdc",
        "SELECT confirmed_flush_lsn > '0/0' FROM pg_replication_slots WHERE slot_name = 'e2e_slot'",
    );
    assert_eq!(confirmed.trim(), "t");
    pg.sql("cdc", "SELECT pg_drop_replication_slot('e2e_slot')");
}

/// Drops `source` (closing its replication connection) and then its slot.
fn drop_slot(pg: &Postgres, source: PostgresSource, slot: &str) {
    drop(source);
    std::thread::sleep(Duration::from_millis(200));
    let _ = pg.sql("cdc", &format!("SELECT pg_drop_replication_slot('{slot}')"));
}

fn source_on(pg: &Postgres, database: &str, user: &str, slot: &str, table: &str) -> PostgresSource {
    source_with(pg, database, user, slot, table, |_| {})
}

fn source_with(
    pg: &Postgres,
    database: &str,
    user: &str,
    slot: &str,
    table: &str,
    adjust: impl FnOnce(&mut PostgresSpec),
) -> PostgresSource {
    let mut spec = spec_on(pg, database, user, slot, table);
    adjust(&mut spec);
    PostgresSource::new(spec).unwrap()
}

fn spec_on(pg: &Postgres, database: &str, user: &str, slot: &str, table: &str) -> PostgresSpec {
    let password = match user {
        "scram_user" => Some("scram-secret"),
        "md5_user" => Some("md5-secret"),
        _ => None,
    };
    let connect = ConnectOptions {
        database: database.into(),
        ..options(pg, user, password)
    };
    let tables = vec![CdcTable {
        port: "t".into(),
        id: TableId::new("public", table),
        config: TableConfig::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("v", DataType::String),
        ])))
        .with_key(&["id"]),
    }];
    PostgresSpec {
        chunk_rows: 100,
        heartbeat_interval: None,
        ..PostgresSpec::new("refdb", connect, slot, tables)
    }
}

/// Reads until the source has streamed (its snapshot read), or fails with its error.
fn read_until_streaming(source: &mut PostgresSource) -> Result<(), String> {
    let mut out = ReadBuffers::for_source(&*source);
    source.connect_ports(&[true, true, true]);
    for _ in 0..100 {
        match source.read(&mut out, 100, 0).map_err(|e| e.to_string())? {
            ReadStatus::Pending { .. } => return Ok(()),
            _ => continue,
        }
    }
    Ok(())
}

/// Each operational mistake stops the source with a one-line explanation of what to do.
#[test]
fn operational_mistakes_are_explained() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE op_ok (id int PRIMARY KEY, v text);
         CREATE TABLE op_nokey (id int, v text);
         CREATE TABLE op_other (id int PRIMARY KEY, v text);
         CREATE PUBLICATION op_partial FOR TABLE op_other;
         GRANT SELECT ON op_ok TO md5_user;",
    );
    let fail = |mut s: PostgresSource| read_until_streaming(&mut s).unwrap_err();

    let e = fail(source_on(pg, "cdc", "cdc", "op_missing", "no_such_table"));
    assert!(
        e.contains("table public.no_such_table (port `t`) does not exist"),
        "{e}"
    );

    let e = fail(source_on(pg, "cdc", "cdc", "op_nokey", "op_nokey"));
    assert!(
        e.contains("has no primary key and no replica identity"),
        "{e}"
    );
    assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");

    let e = fail(source_on(pg, "cdc", "cdc", "op_partial", "op_ok"));
    assert!(
        e.contains("publication `op_partial` does not publish public.op_ok: ALTER PUBLICATION"),
        "{e}"
    );

    // A user who may not create the publication, then one without REPLICATION.
    let e = fail(source_on(pg, "cdc", "md5_user", "op_norepl", "op_ok"));
    assert!(
        e.contains("publication `op_norepl` does not exist and this user may not create it"),
        "{e}"
    );
    pg.sql("cdc", "CREATE PUBLICATION op_norepl FOR TABLE op_ok");
    let e = fail(source_on(pg, "cdc", "md5_user", "op_norepl", "op_ok"));
    assert!(e.contains("may not replicate"), "{e}");
    assert!(e.contains("ALTER ROLE md5_user REPLICATION"), "{e}");

    // A slot in use by another process.
    let mut first = source_on(pg, "cdc", "cdc", "op_busy", "op_ok");
    read_until_streaming(&mut first).unwrap();
    let e = fail(source_on(pg, "cdc", "cdc", "op_busy", "op_ok"));
    assert!(e.contains("is in use by another process"), "{e}");
    assert!(e.contains("slot of its own"), "{e}");

    // A restore whose slot was dropped underneath: the changes since are gone.
    let positions = first.positions();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg
        .sql(
            "cdc",
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'op_busy'",
        )
        .trim()
        == "t"
    {
        assert!(Instant::now() < deadline, "the slot stays active");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.sql("cdc", "SELECT pg_drop_replication_slot('op_busy')");
    let mut restored = source_on(pg, "cdc", "cdc", "op_busy", "op_ok");
    restored.seek(&positions).unwrap();
    let e = read_until_streaming(&mut restored).unwrap_err();
    assert!(
        e.contains("replication slot `op_busy` does not exist any more"),
        "{e}"
    );
    assert!(e.contains("--fresh-start"), "{e}");

    // A server without logical decoding.
    let replica = Postgres::start_with("wal_level=replica");
    replica.sql("cdc", "CREATE TABLE op_ok (id int PRIMARY KEY, v text)");
    let e = fail(source_on(&replica, "cdc", "cdc", "op_wal", "op_ok"));
    assert!(e.contains("wal_level is `replica`"), "{e}");
    assert!(e.contains("wal_level = logical"), "{e}");
}

/// A slot that keeps more WAL than `max_retained_wal` is a warning in `/status`.
#[test]
fn a_slot_retaining_too_much_wal_is_a_warning() {
    let pg = Postgres::shared();
    pg.sql("cdc", "CREATE TABLE lag_t (id int PRIMARY KEY, v text)");
    let mut s = source_with(pg, "cdc", "cdc", "lag_slot", "lag_t", |spec| {
        spec.max_retained_wal = 0;
        spec.status_interval = Duration::ZERO;
    });
    read_until_streaming(&mut s).unwrap();
    pg.sql(
        "cdc",
        "INSERT INTO lag_t SELECT i, md5(i::text) FROM generate_series(1, 1000) i",
    );
    let mut out = ReadBuffers::for_source(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.warnings().is_empty() {
        assert!(Instant::now() < deadline, "no warning");
        s.read(&mut out, 100, 1).unwrap();
    }
    let w = s.warnings().join("\n");
    assert!(w.contains("replication slot `lag_slot` retains"), "{w}");
    drop_slot(pg, s, "lag_slot");
}

/// A pipeline reading table `table` (`id int` key, `v text`) with the native source into
/// `dir/out.jsonl`, checkpointing every 200 ms.
fn id_v_pipeline(pg: &Postgres, dir: &Path, slot: &str, table: &str, chunk_rows: usize) -> PathBuf {
    let pipeline = dir.join(format!("{slot}.yaml"));
    std::fs::write(
        &pipeline,
        format!(
            "name: {slot}
checkpoint: {{interval: 200ms, dir: {ckpt}}}
sources:
  refdb:
    postgres: {{port: {port}, user: cdc, database: cdc, slot: {slot}, chunk_rows: {chunk_rows}}}
    tables:
      t:
        table: public.{table}
        key: [id]
        columns: {{id: int, v: string}}
sinks:
  out: {{input: refdb.t, file: {out}}}
",
            ckpt = dir.join("ckpt").display(),
            port = pg.port,
            out = dir.join("out.jsonl").display(),
        ),
    )
    .unwrap();
    pipeline
}

/// `watershed run PIPELINE`, quiet but for warnings, with these arguments added.
fn run_command(pipeline: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_watershed"));
    c.args(["run", "--log", "warn", "--metrics-addr", "off"])
        .arg(pipeline)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

pub(crate) fn spawn(pipeline: &Path) -> std::process::Child {
    run_command(pipeline, &[]).spawn().unwrap()
}

/// Every change row (snapshot reads and ends aside) is there once, identified by `columns`.
fn assert_no_change_twice(rows: &[serde_json::Value], columns: &[&str]) {
    let mut seen = std::collections::BTreeSet::new();
    for x in rows
        .iter()
        .filter(|x| x["_op"] != "r" && x["_op"] != "snapshot_end")
    {
        let id: Vec<String> = columns.iter().map(|c| x[*c].to_string()).collect();
        assert!(seen.insert(id.clone()), "a change twice: {id:?}");
    }
}

fn out_rows(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_rows(dir: &Path, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = out_rows(dir);
        if done(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {} rows",
            r.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The id → v of the change rows, applied by version as the materializer does.
fn id_v_state(rows: &[serde_json::Value]) -> BTreeMap<i64, String> {
    let mut state: BTreeMap<i64, ((i64, i64), Option<String>)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r["_op"] != "snapshot_end") {
        let version = (r["_lsn"].as_i64().unwrap(), r["_ordinal"].as_i64().unwrap());
        let id = r["id"].as_i64().unwrap();
        let v = (r["_op"] != "d").then(|| r["v"].as_str().unwrap_or("").to_string());
        if state.get(&id).is_none_or(|(w, _)| *w < version) {
            state.insert(id, (version, v));
        }
    }
    state
        .into_iter()
        .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
        .collect()
}

fn id_v_table(pg: &Postgres, table: &str) -> BTreeMap<i64, String> {
    pg.sql(
        "cdc",
        &format!("SELECT id || '|' || v FROM {table} ORDER BY id"),
    )
    .lines()
    .map(|l| {
        let (id, v) = l.split_once('|').unwrap();
        (id.parse().unwrap(), v.to_string())
    })
    .collect()
}

pub(crate) fn stop(child: std::process::Child) -> String {
    // SAFETY: signalling a child this test started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A run killed in the middle of a large table's snapshot (read by three workers) resumes
/// after the last chunk its checkpoint covers: every row is read once (the output of the killed run past its
/// checkpoint is rolled back by the transactional file sink), and streaming follows.
#[test]
fn a_snapshot_killed_half_way_resumes_from_its_last_chunk() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE snap_t (id int PRIMARY KEY, v text);
         INSERT INTO snap_t SELECT i, md5(i::text) FROM generate_series(1, 60000) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let pipeline = id_v_pipeline(pg, dir.path(), "snap_slot", "snap_t", 500);
    // Three workers read chunks ahead; they are handed on in key order.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let text = text.replace("chunk_rows: 500}", "chunk_rows: 500, snapshot_workers: 3}");
    std::fs::write(&pipeline, text).unwrap();
    // The process dies at its 60th chunk of 120, each chunk taking 10 ms or more: several
    // checkpoints (every 200 ms) are complete by then.
    let killed = run_command(&pipeline, &[])
        .env("WATERSHED_FAILPOINT", "postgres-snapshot-chunk:60")
        .env("WATERSHED_SLOW", "postgres-snapshot-chunk:10")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the failpoint ends the run");
    let before = out_rows(dir.path());
    assert!(
        !before.is_empty() && !before.iter().any(|r| r["_op"] == "snapshot_end"),
        "the killed run committed part of the snapshot ({} rows)",
        before.len()
    );
    // A change while it is down, to a row the killed run had already read.
    pg.sql("cdc", "UPDATE snap_t SET v = 'changed' WHERE id = 1");
    let child = spawn(&pipeline);
    wait_rows(dir.path(), "the change after the snapshot", |r| {
        r.iter().any(|x| x["v"] == "changed")
    });
    stop(child);
    let rows = out_rows(dir.path());
    let reads: Vec<i64> = rows
        .iter()
        .filter(|r| r["_op"] == "r")
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<i64> = reads.iter().copied().collect();
    assert_eq!(reads.len(), 60_000, "every row read once");
    assert_eq!(distinct.len(), 60_000);
    assert_eq!(
        rows.iter().filter(|r| r["_op"] == "snapshot_end").count(),
        1
    );
    assert_eq!(id_v_state(&rows), id_v_table(pg, "snap_t"));
}

/// The replication connection is cut (its backend terminated): the run restarts from its
/// last checkpoint by itself and goes on, losing and doubling nothing.
#[test]
fn a_lost_replication_connection_resumes_from_the_checkpoint() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE cut_t (id int PRIMARY KEY, v text);
         INSERT INTO cut_t SELECT i, 'v' || i FROM generate_series(1, 100) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let pipeline = id_v_pipeline(pg, dir.path(), "cut_slot", "cut_t", 1000);
    let child = spawn(&pipeline);
    wait_rows(dir.path(), "the snapshot", |r| {
        r.iter().any(|x| x["_op"] == "snapshot_end")
    });
    pg.sql("cdc", "UPDATE cut_t SET v = 'before-cut' WHERE id <= 10");
    wait_rows(dir.path(), "the first changes", |r| {
        r.iter().filter(|x| x["v"] == "before-cut").count() == 10
    });
    std::thread::sleep(Duration::from_millis(500));
    let killed = pg.sql(
        "cdc",
        "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
         WHERE slot_name = 'cut_slot' AND active",
    );
    assert_eq!(killed.trim(), "1");
    pg.sql("cdc", "UPDATE cut_t SET v = 'after-cut' WHERE id > 90");
    pg.sql("cdc", "DELETE FROM cut_t WHERE id = 50");
    wait_rows(dir.path(), "the changes after the cut", |r| {
        r.iter().filter(|x| x["v"] == "after-cut").count() >= 10
            && r.iter().any(|x| x["_op"] == "d")
    });
    let err = stop(child);
    assert!(err.contains("restart"), "the run restarted: {err}");
    let rows = out_rows(dir.path());
    assert_no_change_twice(&rows, &["_op", "_ordinal", "id"]);
    assert_eq!(id_v_state(&rows), id_v_table(pg, "cut_t"));
}

/// `watershed bootstrap` reads the tables' snapshot into a savepoint (creating the slot
/// first); a run from the savepoint streams every change made since, not the snapshot again.
#[test]
fn a_bootstrap_reads_the_snapshot_and_the_run_from_it_streams_what_came_after() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE boot_t (id int PRIMARY KEY, v text);
         INSERT INTO boot_t SELECT i, 'v' || i FROM generate_series(1, 500) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let pipeline = id_v_pipeline(pg, dir.path(), "boot_slot", "boot_t", 100);
    let savepoint = dir.path().join("savepoint");
    let boot = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["bootstrap", "--log", "warn"])
        .arg(&pipeline)
        .arg("--savepoint")
        .arg(&savepoint)
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    pg.sql("cdc", "UPDATE boot_t SET v = 'after' WHERE id <= 3");
    let child = run_command(
        &pipeline,
        &["--from-savepoint", savepoint.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    wait_rows(dir.path(), "the changes after the bootstrap", |r| {
        r.iter().filter(|x| x["v"] == "after").count() == 3
    });
    let err = stop(child);
    assert!(err.contains("restored from checkpoint"), "{err}");
    let rows = out_rows(dir.path());
    assert!(
        rows.iter().all(|r| r["_op"] == "u"),
        "only the changes: {rows:?}"
    );
}

/// TLS as libpq's sslmode: against a server with TLS (its certificate signed by a test
/// authority) every mode connects, and `verify-*` check the certificate; against one without,
/// `prefer` falls back to plain and `require` refuses. Replication runs over TLS too.
#[test]
fn tls_modes_as_libpq_has_them() {
    let (tls_pg, ca) = Postgres::start_with_tls();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let with = |pg: &Postgres, host: &str, tls: TlsMode, ca: Option<&Path>| ConnectOptions {
        host: host.into(),
        tls,
        ca_file: ca.map(Path::to_path_buf),
        ..options(pg, "scram_user", Some("scram-secret"))
    };
    let ssl_in_use = |c: &mut Connection| {
        c.query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .unwrap()[0]
            .rows[0][0]
            .clone()
            .unwrap()
    };
    for mode in [TlsMode::Prefer, TlsMode::Require] {
        let mut c = Connection::connect(&with(&tls_pg, "127.0.0.1", mode, None), false).unwrap();
        assert_eq!(ssl_in_use(&mut c), "true", "{mode:?}");
    }
    for host in ["127.0.0.1", "localhost"] {
        let mut c = Connection::connect(
            &with(&tls_pg, host, TlsMode::VerifyFull, Some(&ca_file)),
            false,
        )
        .unwrap();
        assert_eq!(ssl_in_use(&mut c), "true");
    }
    let mut plain =
        Connection::connect(&with(&tls_pg, "127.0.0.1", TlsMode::Disable, None), false).unwrap();
    assert_eq!(ssl_in_use(&mut plain), "false");
    // An authority that did not sign the server's certificate.
    let (other_ca, _, _) = watershed::testing::services::test_certificates();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, other_ca).unwrap();
    let e = Connection::connect(
        &with(&tls_pg, "127.0.0.1", TlsMode::VerifyCa, Some(&other)),
        false,
    )
    .err()
    .expect("an unknown authority is refused");
    assert!(e.to_string().contains("TLS with 127.0.0.1"), "{e}");
    // Replication over TLS.
    let mut repl = Connection::connect(
        &ConnectOptions {
            user: "cdc".into(),
            password: None,
            ..with(&tls_pg, "127.0.0.1", TlsMode::VerifyFull, Some(&ca_file))
        },
        true,
    )
    .unwrap();
    assert!(
        repl.query("IDENTIFY_SYSTEM").unwrap()[0]
            .get(0, "xlogpos")
            .is_some()
    );

    // A server without TLS: `prefer` connects plain, `require` is refused with a reason.
    let pg = Postgres::shared();
    let mut c = Connection::connect(&with(pg, "127.0.0.1", TlsMode::Prefer, None), false).unwrap();
    assert_eq!(ssl_in_use(&mut c), "false");
    let e = Connection::connect(&with(pg, "127.0.0.1", TlsMode::Require, None), false)
        .err()
        .expect("require without TLS is refused");
    assert!(e.to_string().contains("does not accept TLS"), "{e}");
}

/// A quiet table in a busy database: the server's keepalives move the source's position, and
/// with each durable checkpoint the slot's confirmed LSN, so the server can recycle the WAL
/// others write.
#[test]
fn a_quiet_slot_in_a_busy_database_lets_its_wal_go() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE quiet_t (id int PRIMARY KEY, v text);
         CREATE TABLE busy_t (id int, v text);",
    );
    let mut s = source_with(pg, "cdc", "cdc", "quiet_slot", "quiet_t", |spec| {
        spec.heartbeat_interval = None;
    });
    read_until_streaming(&mut s).unwrap();
    let confirmed = || -> Lsn {
        pg.sql(
            "cdc",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'quiet_slot'",
        )
        .trim()
        .parse()
        .unwrap()
    };
    let before = confirmed();
    // Another table's changes (not published) write WAL.
    pg.sql(
        "cdc",
        "INSERT INTO busy_t SELECT i, md5(i::text) FROM generate_series(1, 20000) i",
    );
    let written: Lsn = pg
        .sql("cdc", "SELECT pg_current_wal_lsn()")
        .trim()
        .parse()
        .unwrap();
    let mut out = ReadBuffers::for_source(&s);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut epoch = 0;
    while confirmed() < written {
        assert!(
            Instant::now() < deadline,
            "confirmed {} (from {before}), WAL written to {written}",
            confirmed()
        );
        s.read(&mut out, 100, 1).unwrap();
        epoch += 1;
        let positions = s.positions();
        s.checkpoint_complete(epoch, &positions).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(out.extra[0].is_empty(), "no change of the quiet table");
    drop_slot(pg, s, "quiet_slot");
}

/// A snapshot row and a streamed row with the same values give the same typed values: the
/// snapshot query's column types pick the same conversions (arrays, times) as pgoutput's
/// relation.
#[test]
fn snapshot_and_streaming_convert_arrays_and_times_alike() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TYPE arr_mood AS ENUM ('calm', 'tense, very');
         CREATE DOMAIN arr_meta AS jsonb;
         CREATE TABLE arr_t (id int PRIMARY KEY, ints int[], moods arr_mood[], at time, \
           days date[], ratios float8[], meta arr_meta);
         INSERT INTO arr_t VALUES (1, '{1,NULL,3}', '{calm,\"tense, very\"}', '10:00:00.5', \
           '{2026-01-02}', '{0.25,1e20,NaN}', '{}');",
    );
    let mut s = source_with(pg, "cdc", "cdc", "arr_slot", "arr_t", |spec| {
        spec.tables[0].config = TableConfig::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("ints", DataType::Json),
            Field::new("moods", DataType::Json),
            Field::new("at", DataType::Int),
            Field::new("days", DataType::Json),
            Field::new("ratios", DataType::Json),
            Field::new("meta", DataType::Json),
        ])))
        .with_key(&["id"]);
    });
    s.connect_ports(&[true, true, true]);
    let mut out = ReadBuffers::for_source(&s);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows: Vec<Vec<watershed::types::Value>> = Vec::new();
    let mut inserted = false;
    while rows.len() < 2 {
        assert!(Instant::now() < deadline, "rows: {rows:?}");
        if let ReadStatus::Pending { .. } = s.read(&mut out, 100, 1).unwrap()
            && !inserted
        {
            pg.sql(
                "cdc",
                "INSERT INTO arr_t SELECT 2, ints, moods, at, days, ratios, meta FROM arr_t",
            );
            inserted = true;
        }
        let id = out.extra[0].schema().index_of("id").unwrap();
        // Change rows only (not the snapshot's end marker).
        rows.extend(
            out.extra[0]
                .rows()
                .filter(|(r, _)| !r[id].is_null())
                .map(|(r, _)| r.to_vec()),
        );
        out.extra[0].clear();
    }
    let schema = s.extra_ports()[0].schema.clone();
    let column = |row: &[watershed::types::Value], name: &str| {
        row[schema.index_of(name).unwrap_or_else(|| panic!("{name}"))].clone()
    };
    use watershed::types::Value;
    assert_eq!(column(&rows[0], "ints"), Value::Json("[1,null,3]".into()));
    assert_eq!(
        column(&rows[0], "moods"),
        Value::Json("[\"calm\",\"tense, very\"]".into())
    );
    assert_eq!(column(&rows[0], "at"), Value::Int(36_000_500_000));
    assert_eq!(column(&rows[0], "days"), Value::Json("[20455]".into()));
    assert_eq!(
        column(&rows[0], "ratios"),
        Value::Json("[0.25,1.0E20,\"NaN\"]".into())
    );
    // A domain over jsonb is not an array, not even `{}`.
    assert_eq!(column(&rows[0], "meta"), Value::Json("{}".into()));
    for name in ["ints", "moods", "at", "days", "ratios", "meta"] {
        assert_eq!(column(&rows[0], name), column(&rows[1], name), "{name}");
    }
    drop_slot(pg, s, "arr_slot");
}

/// `validate --connect` finds each operational mistake before a run, with the same one-line
/// explanation, and creates nothing: no publication, no slot.
#[test]
fn validate_connect_explains_what_is_not_ready_and_creates_nothing() {
    use watershed::sources::postgres::checks::preflight;
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE pre_ok (id int PRIMARY KEY, v text);
         CREATE TABLE pre_nokey (id int, v text);
         CREATE TABLE pre_other (id int PRIMARY KEY, v text);
         CREATE TABLE pre_full (id int, v text);
         ALTER TABLE pre_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION pre_partial FOR TABLE pre_other;
         GRANT SELECT ON pre_ok TO md5_user;",
    );
    let failures = |spec: &PostgresSpec| -> Vec<String> {
        preflight(spec)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.line)
            .collect()
    };
    let exists = |what: &str, name: &str| -> bool {
        let sql = match what {
            "slot" => {
                format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'")
            }
            _ => format!("SELECT count(*) FROM pg_publication WHERE pubname = '{name}'"),
        };
        pg.sql("cdc", &sql).trim() == "1"
    };

    // Ready: every line is ok, and what the first run creates is still absent.
    let ready = preflight(&spec_on(pg, "cdc", "cdc", "pre_new", "pre_ok"));
    assert!(ready.iter().all(|c| c.ok), "{ready:#?}");
    let lines: Vec<&str> = ready.iter().map(|c| c.line.as_str()).collect();
    assert!(
        lines.contains(&"publication `pre_new` will be created by the first run"),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"replication slot `pre_new` will be created by the first run"),
        "{lines:?}"
    );
    assert!(!exists("slot", "pre_new") && !exists("publication", "pre_new"));

    let f = failures(&spec_on(pg, "cdc", "cdc", "pre_x", "pre_nokey"));
    assert!(
        f.len() == 1 && f[0].contains("REPLICA IDENTITY FULL"),
        "{f:?}"
    );
    let f = failures(&spec_on(pg, "cdc", "cdc", "pre_x", "no_such"));
    assert!(
        f.len() == 1 && f[0].contains("public.no_such (port `t`) does not exist"),
        "{f:?}"
    );
    // REPLICA IDENTITY FULL without a unique key: `id` may repeat.
    let f = failures(&spec_on(pg, "cdc", "cdc", "pre_x", "pre_full"));
    assert!(
        f.len() == 1
            && f[0].contains("the key [id] of table public.pre_full (port `t`) is neither"),
        "{f:?}"
    );
    let mut misspelt = spec_on(pg, "cdc", "cdc", "pre_x", "pre_ok");
    misspelt.tables[0].config = TableConfig::new(Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("value", DataType::String),
    ])))
    .with_key(&["id"]);
    let f = failures(&misspelt);
    assert!(
        f.len() == 1
            && f[0].contains("public.pre_ok has no column `value` (in `tables.t.columns`)"),
        "{f:?}"
    );
    let f = failures(&spec_on(pg, "cdc", "cdc", "pre_partial", "pre_ok"));
    assert!(
        f.len() == 1 && f[0].contains("ALTER PUBLICATION pre_partial ADD TABLE public.pre_ok"),
        "{f:?}"
    );

    // A user who may neither create the publication nor replicate: both said at once.
    let f = failures(&spec_on(pg, "cdc", "md5_user", "pre_md5", "pre_ok"));
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].contains("may not create it (no CREATE privilege on the database)"),
        "{f:?}"
    );
    assert!(f[1].contains("ALTER ROLE md5_user REPLICATION"), "{f:?}");

    // A slot another reader streams from.
    let mut reader = source_on(pg, "cdc", "cdc", "pre_busy", "pre_ok");
    read_until_streaming(&mut reader).unwrap();
    let f = failures(&spec_on(pg, "cdc", "cdc", "pre_busy", "pre_ok"));
    assert!(
        f.len() == 1 && f[0].contains("replication slot `pre_busy` is in use by process"),
        "{f:?}"
    );
    drop(reader);

    // A wrong password stops at the first line.
    let mut wrong = spec_on(pg, "cdc", "scram_user", "pre_x", "pre_ok");
    wrong.connect.password = Some("wrong".into());
    let checks = preflight(&wrong);
    assert!(checks.len() == 1 && !checks[0].ok, "{checks:?}");
    assert!(
        checks[0].line.contains("password authentication failed"),
        "{checks:?}"
    );

    // Through the binary: the lines, and exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = id_v_pipeline(pg, dir.path(), "pre_cli", "pre_nokey", 100);
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["validate", "--connect"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ok   source refdb: wal_level is logical"),
        "{text}"
    );
    assert!(
        text.contains("FAIL source refdb: postgres: table public.pre_nokey has no primary key"),
        "{text}"
    );
    assert!(text.contains("1 check(s) failed"), "{text}");
    std::thread::sleep(Duration::from_millis(200));
    let _ = pg.sql("cdc", "SELECT pg_drop_replication_slot('pre_busy')");
}

/// Several workers read a snapshot's chunks at once (a composite key, chunks of 7 rows): the
/// rows are handed on in key order, each once, the table's end after the last; a source
/// restored from a position taken half-way goes on from there; and the table changed during
/// the snapshot materializes to what it is afterwards.
#[test]
fn a_snapshot_over_several_workers_is_in_key_order_and_resumes_half_way() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE par_t (a int, b text, v text, PRIMARY KEY (a, b));
         INSERT INTO par_t SELECT i % 10, 'k' || i, md5(i::text) FROM generate_series(1, 200) i;",
    );
    let spec = |slot: &str| {
        let mut spec = spec_on(pg, "cdc", "cdc", slot, "par_t");
        spec.tables[0].config = TableConfig::new(Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int),
            Field::new("b", DataType::String),
            Field::new("v", DataType::String),
        ])))
        .with_key(&["a", "b"]);
        spec.chunk_rows = 7;
        spec.snapshot_workers = 3;
        spec
    };
    type Key = (i64, String);
    // Reads up to `reads` times (or until streaming), 5 records a read; the change rows
    // (op, key, v) and whether the snapshot ended.
    let read = |s: &mut PostgresSource, reads: usize| -> (Vec<(String, Key, String)>, bool) {
        let mut out = ReadBuffers::for_source(&*s);
        let mut rows = Vec::new();
        let mut ended = false;
        for _ in 0..reads {
            let status = s.read(&mut out, 5, 1).unwrap();
            for (r, _) in out.extra[0].rows() {
                let op = r[0].as_str().unwrap_or("").to_string();
                if op == "snapshot_end" {
                    ended = true;
                    continue;
                }
                let key = (r[5].as_i64().unwrap(), r[6].as_str().unwrap().to_string());
                rows.push((op, key, r[7].as_str().unwrap_or("").to_string()));
            }
            out.extra[0].clear();
            if ended && matches!(status, ReadStatus::Pending { .. }) {
                break;
            }
        }
        (rows, ended)
    };
    let mut first = PostgresSource::new(spec("par_slot")).unwrap();
    first.connect_ports(&[true, true, true]);
    let (head, ended) = read(&mut first, 13);
    assert!(
        !ended && (30..150).contains(&head.len()),
        "{} rows",
        head.len()
    );
    let positions = first.positions();
    // Changes during the snapshot: to rows read and not yet read.
    pg.sql(
        "cdc",
        "UPDATE par_t SET v = 'early' WHERE a = 0 AND b = 'k10';
         UPDATE par_t SET v = 'late' WHERE a = 9 AND b = 'k99';
         DELETE FROM par_t WHERE a = 5 AND b = 'k5';
         INSERT INTO par_t VALUES (4, 'new', 'inserted');",
    );
    let (tail_of_first, _) = read(&mut first, 500);
    drop(first);
    std::thread::sleep(Duration::from_millis(200));

    let mut restored = PostgresSource::new(spec("par_slot")).unwrap();
    restored.connect_ports(&[true, true, true]);
    restored.seek(&positions).unwrap();
    let (tail, ended) = read(&mut restored, 500);
    assert!(ended, "the snapshot ends");
    // The restored source hands on what the first did after the position, in key order.
    let reads = |rows: &[(String, Key, String)]| -> Vec<Key> {
        rows.iter()
            .filter(|r| r.0 == "r")
            .map(|r| r.1.clone())
            .collect()
    };
    assert_eq!(reads(&tail), reads(&tail_of_first));
    let all: Vec<Key> = reads(&head).into_iter().chain(reads(&tail)).collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted, "in key order, each once");
    assert_eq!(
        all.len(),
        200,
        "the 200 rows less the deleted one, plus the inserted one"
    );
    // Snapshot rows, then the streamed changes, applied: the table as it is now.
    let mut state: BTreeMap<Key, String> = BTreeMap::new();
    for (op, key, v) in head.iter().chain(&tail) {
        if op == "d" {
            state.remove(key);
        } else {
            state.insert(key.clone(), v.clone());
        }
    }
    let table: BTreeMap<Key, String> = pg
        .sql("cdc", "SELECT a || '|' || b || '|' || v FROM par_t")
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, '|');
            let a = p.next().unwrap().parse().unwrap();
            let b = p.next().unwrap().to_string();
            ((a, b), p.next().unwrap().to_string())
        })
        .collect();
    drop_slot(pg, restored, "par_slot");
    assert_eq!(state, table);
}

/// The demo's pipeline with its reference tables in Postgres (`examples/demo-postgres.yaml`,
/// the tables loaded by `scripts/demo_postgres.py` through psql, as a user runs them) writes
/// what the file demo writes, file by file, late rows included, and ends by itself.
#[test]
fn the_demo_from_postgres_equals_the_file_demo() {
    use std::io::Write;
    let pg = Postgres::shared();
    pg.sql("postgres", "CREATE DATABASE demo_pg OWNER cdc");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let port = pg.port.to_string();
    // Loaded twice: the second load (`--drop-first`) replaces the first.
    for args in [&[][..], &["--drop-first"][..]] {
        let sql = Command::new("python3")
            .arg(root.join("scripts/demo_postgres.py"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            sql.status.success(),
            "{}",
            String::from_utf8_lossy(&sql.stderr)
        );
        let mut psql = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "cdc", "-d", "demo_pg"])
            .args(["-v", "ON_ERROR_STOP=1", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        psql.stdin.take().unwrap().write_all(&sql.stdout).unwrap();
        let loaded = psql.wait_with_output().unwrap();
        assert!(
            loaded.status.success(),
            "{}",
            String::from_utf8_lossy(&loaded.stderr)
        );
    }

    // Both pipelines with a quarter of the observations over the same 20 minutes of event
    // time (the whole change history), to keep the test short.
    let pipelines = tempfile::tempdir().unwrap();
    let demo = root.join("examples/demo");
    let run = |pipeline: &str, dir: &Path| {
        let text = std::fs::read_to_string(root.join(pipeline)).unwrap();
        let text = text
            .replace("count: 60000", "count: 15000")
            .replace("interval: 20ms", "interval: 80ms")
            .replace("demo/", &format!("{}/", demo.display()));
        let copy = pipelines
            .path()
            .join(Path::new(pipeline).file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_watershed"));
        c.args(["run", "--log", "warn", "--metrics-addr", "off"])
            .arg(&copy)
            .current_dir(dir)
            .envs([
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", port.as_str()),
                ("PGUSER", "cdc"),
                ("PGPASSWORD", "unused-with-trust"),
                ("PGDATABASE", "demo_pg"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let files = tempfile::tempdir().unwrap();
    let done = run("examples/demo.yaml", files.path()).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out = |dir: &Path| -> BTreeMap<String, Vec<String>> {
        std::fs::read_dir(dir.join("watershed-out"))
            .map(|entries| {
                entries
                    .map(|e| {
                        let path = e.unwrap().path();
                        let mut lines: Vec<String> = std::fs::read_to_string(&path)
                            .unwrap_or_default()
                            .lines()
                            .map(str::to_string)
                            .collect();
                        lines.sort();
                        (
                            path.file_name().unwrap().to_string_lossy().into_owned(),
                            lines,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let want = out(files.path());
    assert!(
        want["observations.jsonl"].len() > 100_000,
        "the file demo ran"
    );

    // The Postgres run ends by itself too (`until: caught_up`).
    let from_pg = tempfile::tempdir().unwrap();
    let mut child = run("examples/demo-postgres.yaml", from_pg.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let stderr = stop(child);
            panic!("the Postgres run did not end: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(ended.status.success(), "{stderr}");
    let counts = |o: &BTreeMap<String, Vec<String>>| -> Vec<(String, usize)> {
        o.iter().map(|(f, l)| (f.clone(), l.len())).collect()
    };
    let got = out(from_pg.path());
    assert_eq!(counts(&got), counts(&want), "{stderr}");
    for (file, lines) in &want {
        let theirs = &got[file];
        let differing = lines.iter().zip(theirs).position(|(a, b)| a != b);
        assert!(
            differing.is_none(),
            "{file}: first difference (sorted), file demo then Postgres:\n{}\n{}",
            lines[differing.unwrap()],
            theirs[differing.unwrap()]
        );
    }
}

/// A bounded run (`until: caught_up`) reads what was committed before it began streaming and
/// nothing after, however its reads fall: a transaction committed later is not read, not
/// even in part, and the source ends.
#[test]
fn a_bounded_run_reads_what_was_committed_before_it_streamed_and_ends() {
    let pg = Postgres::shared();
    pg.sql(
        "cdc",
        "CREATE TABLE until_t (id int PRIMARY KEY, v text);
         INSERT INTO until_t SELECT i, 'snap' FROM generate_series(1, 250) i;",
    );
    let mut s = source_with(pg, "cdc", "cdc", "until_slot", "until_t", |spec| {
        spec.until_caught_up = true;
    });
    s.connect_ports(&[true, true, true]);
    let mut out = ReadBuffers::for_source(&s);
    let mut rows: Vec<(String, i64)> = Vec::new();
    let take = |out: &mut ReadBuffers, rows: &mut Vec<(String, i64)>| {
        for (r, _) in out.extra[0].rows() {
            if let (Some(op), Some(id)) = (r[0].as_str(), r[5].as_i64()) {
                rows.push((op.to_string(), id));
            }
        }
        out.extra[0].clear();
    };
    // The first read creates the slot and reads a chunk; a transaction then commits during
    // the snapshot (before streaming begins).
    s.read(&mut out, 100, 1).unwrap();
    take(&mut out, &mut rows);
    pg.sql(
        "cdc",
        "INSERT INTO until_t SELECT i, 'before' FROM generate_series(1001, 1005) i",
    );
    let mut later_written = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the bounded source did not end");
        let status = s.read(&mut out, 3, 1).unwrap();
        take(&mut out, &mut rows);
        if matches!(status, ReadStatus::Finished) {
            break;
        }
        if !later_written && rows.iter().any(|(op, _)| op == "c") {
            // Streaming has begun: this transaction is after the end.
            pg.sql(
                "cdc",
                "INSERT INTO until_t SELECT i, 'after' FROM generate_series(2001, 2010) i",
            );
            later_written = true;
        }
    }
    assert!(later_written);
    let created: Vec<i64> = rows
        .iter()
        .filter(|(op, _)| op == "c")
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(created, (1001..=1005).collect::<Vec<_>>(), "{rows:?}");
    // The snapshot's last chunk, read after that transaction, shows its rows too.
    assert_eq!(rows.iter().filter(|(op, _)| op == "r").count(), 255);
    assert!(
        !rows.iter().any(|(_, id)| *id > 2000),
        "nothing after the end"
    );
    drop_slot(pg, s, "until_slot");
}
