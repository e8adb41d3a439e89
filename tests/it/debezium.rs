//! End to end with real Debezium: rows inserted, updated and deleted in PostgreSQL 15 reach
//! the enrichment state through Debezium 3.6.3's Postgres connector and a Kafka-protocol
//! broker (each a real server started by `watershed::testing::services`); observations on
//! Kafka are joined as of their event time, and the output must equal what an oracle
//! computes from the change history on the topic.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use watershed::testing::kafka_fixtures::read_topic;
use watershed::testing::services::{Broker, Debezium, Postgres, TestRecord};

const HOSTS: usize = 50;

/// One change of the `hosts` table as Debezium put it on the topic: (commit time, host,
/// owner after it, `None` for a delete). A snapshot read's (`op: r`) time is when the
/// snapshot was taken, but its row was there before: it counts as of the beginning of time.
type Change = (i64, String, Option<String>);

fn history(broker: &Broker) -> Vec<Change> {
    read_topic(&broker.addr, "dbz.public.hosts")
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(_, v)| {
            let e: serde_json::Value = serde_json::from_slice(&v).unwrap();
            let ts = match e["op"].as_str().unwrap() {
                "r" => i64::MIN,
                _ => e["source"]["ts_ms"].as_i64().unwrap(),
            };
            match e["op"].as_str().unwrap() {
                "d" => (ts, e["before"]["host"].as_str().unwrap().to_string(), None),
                _ => (
                    ts,
                    e["after"]["host"].as_str().unwrap().to_string(),
                    Some(e["after"]["owner"].as_str().unwrap().to_string()),
                ),
            }
        })
        .collect()
}

/// The owner of `host` as of `t` in `history`: its latest change at or before `t`.
fn owner_as_of(history: &[Change], host: &str, t: i64) -> Option<String> {
    history
        .iter()
        .filter(|(ts, h, _)| h == host && *ts <= t)
        .max_by_key(|(ts, ..)| *ts)
        .and_then(|(_, _, owner)| owner.clone())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{what}: {:?}", start.elapsed());
}

#[test]
fn postgres_changes_through_real_debezium_and_kafka_enrich_as_of_their_commit_time() {
    let pg = Postgres::start();
    let broker = Broker::start();
    pg.sql(
        "cdc",
        "CREATE TABLE hosts (host text PRIMARY KEY, owner text NOT NULL, zone text)",
    );
    let rows: Vec<String> = (0..HOSTS)
        .map(|h| format!("('h{h}', 'o{h}-v1', 'z{}')", h % 3))
        .collect();
    pg.sql(
        "cdc",
        &format!("INSERT INTO hosts VALUES {}", rows.join(",")),
    );
    let _debezium = Debezium::start(
        &format!(
            "name=watershed-e2e\n\
             connector.class=io.debezium.connector.postgresql.PostgresConnector\n\
             topic.prefix=dbz\n\
             database.hostname=127.0.0.1\ndatabase.port={}\ndatabase.user=cdc\n\
             database.password=cdc\ndatabase.dbname=cdc\n\
             plugin.name=pgoutput\nslot.name=watershed_e2e\npublication.name=watershed_e2e\n\
             publication.autocreate.mode=filtered\ntable.include.list=public.hosts\n\
             snapshot.mode=initial\nheartbeat.interval.ms=300\n\
             converter.schemas.enable=false\nkey.converter.schemas.enable=false\n\
             value.converter.schemas.enable=false\n",
            pg.port
        ),
        &broker.addr,
    );
    let count = || history(&broker).len();
    wait_for("the snapshot on the topic", Duration::from_secs(60), || {
        count() >= HOSTS
    });
    // Changes, each in its own transaction: 25 owners change, one host goes, one comes.
    for h in 0..25 {
        pg.sql(
            "cdc",
            &format!("UPDATE hosts SET owner = 'o{h}-v2' WHERE host = 'h{h}'"),
        );
    }
    pg.sql("cdc", "DELETE FROM hosts WHERE host = 'h49'");
    pg.sql("cdc", "INSERT INTO hosts VALUES ('h50', 'o50-v1', 'z0')");
    wait_for("the changes on the topic", Duration::from_secs(60), || {
        count() >= HOSTS + 27
    });
    let changes = history(&broker);

    // Observations of every host just before and just after each change of the stream, so
    // that each host is seen in every state it was in.
    let times: Vec<i64> = changes
        .iter()
        .filter(|c| c.0 != i64::MIN)
        .flat_map(|c| [c.0 - 1, c.0 + 1])
        .collect();
    let mut obs: Vec<(i64, String)> = Vec::new();
    for (i, t) in times.iter().enumerate() {
        for h in (0..=HOSTS).filter(|h| h % 9 == i % 9 || *h < 2 || *h >= HOSTS - 1) {
            obs.push((*t, format!("h{h}")));
        }
    }
    obs.sort();
    obs.dedup();
    broker.create_topic("obs", 2);
    let values: Vec<String> = obs
        .iter()
        .enumerate()
        .map(|(n, (ts, host))| format!(r#"{{"ts":{ts},"host":"{host}","n":{n}}}"#))
        .collect();
    let records: Vec<TestRecord<'_>> = values
        .iter()
        .enumerate()
        .map(|(n, v)| ((n % 2) as i32, None, Some(v.as_bytes())))
        .collect();
    broker.produce("obs", &records);
    wait_for("a heartbeat", Duration::from_secs(30), || {
        !read_topic(&broker.addr, "__debezium-heartbeat.dbz").is_empty()
    });

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: debezium-e2e
enrichment: {{strategy: gated}}
sources:
  ref:
    kafka: {{brokers: "{b}", format: debezium, topic_prefix: dbz}}
    tables:
      hosts:
        key: [host]
        columns: {{host: string, owner: string, zone: string}}
  obs:
    kafka: {{brokers: "{b}", topics: [obs]}}
    schema: {{ts: timestamp, host: string, n: int}}
    event_time: {{field: ts, max_out_of_orderness: 1s}}
operators:
  owners:
    inputs: [obs, ref.hosts]
    enrich:
      key: {{host: host}}
      columns: [owner]
      mode: as_of
sinks:
  out: {{input: owners, file: "{out}"}}
  dead: {{inputs: [obs.dead_letter, ref.dead_letter], file: "{dead}"}}
"#,
            b = broker.addr,
            out = out.display(),
            dead = dead.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["run", "--log", "warn", "--metrics-addr", "off"])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&out) < obs.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling the child this test started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let output = child.wait_with_output().unwrap();
    eprintln!("output: {} of {}", lines(&out), obs.len());
    let err = String::from_utf8_lossy(&output.stderr);

    let got: BTreeMap<i64, serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["n"].as_i64().unwrap(), v)
        })
        .collect();
    assert_eq!(got.len(), obs.len(), "every observation once:\n{err}");
    for (n, (ts, host)) in obs.iter().enumerate() {
        let v = &got[&(n as i64)];
        let want = owner_as_of(&changes, host, *ts);
        assert_eq!(
            v["owner"].as_str().map(String::from),
            want,
            "observation {n} of {host} at {ts}: {v}"
        );
    }
    let dead = std::fs::read_to_string(&dead).unwrap_or_default();
    assert!(dead.is_empty(), "dead letters: {dead}");
}

/// The same scripted history watched by real Debezium 3.6.3 and by the native source's
/// decoding: the typed change records must be equal, table by table — values of every type
/// the history uses, keys, before images, unchanged TOAST, key changes, REPLICA IDENTITY
/// FULL and truncates. The versions' commit part is Debezium's own (the end of the previous
/// commit it saw, or the change's LSN after a start) and is not compared; their WAL part (the
/// change's LSN) must be equal.
#[test]
fn the_native_source_decodes_a_history_as_debezium_does() {
    let ordinal = |line: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["version"]["ordinal"].as_u64().unwrap()
    };
    use std::sync::Arc;
    use watershed::cdc::stream::TableConfig;
    use watershed::cdc::{DebeziumDecoder, Decoded, TableId};
    use watershed::sources::postgres::changes::ChangeDecoder;
    use watershed::sources::postgres::wire::{
        ConnectOptions, Connection, Lsn, ReplicationMessage, TlsMode,
    };
    use watershed::types::{DataType, Field, Schema};

    let pg = Postgres::shared();
    let broker = Broker::shared();
    pg.sql("postgres", "CREATE DATABASE diff OWNER cdc");
    pg.sql(
        "diff",
        "CREATE TABLE dt (id int PRIMARY KEY, name text, amount numeric(10,2), \
           ratio double precision, flag boolean, day date, at timestamptz, local_at timestamp, \
           doc jsonb, big text);
         CREATE TABLE full_t (id int PRIMARY KEY, v text);
         ALTER TABLE full_t REPLICA IDENTITY FULL;
         CREATE TYPE mood AS ENUM ('calm', 'tense, very');
         CREATE TABLE ty (id int PRIMARY KEY, u uuid, b bytea, ints int[], tags text[], \
           flags boolean[], m mood, t time, nums numeric[], moods mood[], ratios float8[], \
           days date[], ats timestamptz[], docs jsonb[], reals real[], locals timestamp[], times time[]);
         CREATE PUBLICATION native_pub FOR TABLE dt, full_t, ty;",
    );
    let tables = || {
        let t =
            |fields: Vec<Field>| TableConfig::new(Arc::new(Schema::new(fields))).with_key(&["id"]);
        vec![
            (
                TableId::new("public", "dt"),
                t(vec![
                    Field::new("id", DataType::Int),
                    Field::new("name", DataType::String),
                    Field::new("amount", DataType::Decimal),
                    Field::new("ratio", DataType::Float),
                    Field::new("flag", DataType::Bool),
                    Field::new("day", DataType::Date),
                    Field::new("at", DataType::Timestamp),
                    Field::new("local_at", DataType::Timestamp),
                    Field::new("doc", DataType::Json),
                    Field::new("big", DataType::String),
                ]),
            ),
            (
                TableId::new("public", "full_t"),
                t(vec![
                    Field::new("id", DataType::Int),
                    Field::new("v", DataType::String),
                ]),
            ),
            (
                TableId::new("public", "ty"),
                t(vec![
                    Field::new("id", DataType::Int),
                    Field::new("u", DataType::String),
                    Field::new("b", DataType::Bytes),
                    Field::new("ints", DataType::Json),
                    Field::new("tags", DataType::Json),
                    Field::new("flags", DataType::Json),
                    Field::new("m", DataType::String),
                    Field::new("t", DataType::Int),
                    Field::new("nums", DataType::Json),
                    Field::new("moods", DataType::Json),
                    Field::new("ratios", DataType::Json),
                    Field::new("days", DataType::Json),
                    Field::new("ats", DataType::Json),
                    Field::new("docs", DataType::Json),
                    Field::new("reals", DataType::Json),
                    Field::new("locals", DataType::Json),
                    Field::new("times", DataType::Json),
                ]),
            ),
        ]
    };
    let options = ConnectOptions {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: "cdc".into(),
        password: None,
        database: "diff".into(),
        application_name: "differential".into(),
        connect_timeout: Duration::from_secs(10),
        tls: TlsMode::Prefer,
        ca_file: None,
    };
    let mut native = Connection::connect(&options, true).unwrap();
    let slot = native
        .query("CREATE_REPLICATION_SLOT native_diff LOGICAL pgoutput (SNAPSHOT 'nothing')")
        .unwrap();
    let start: Lsn = slot[0].get(0, "consistent_point").unwrap().parse().unwrap();

    let _debezium = Debezium::start(
        &format!(
            "name=watershed-diff\n\
             connector.class=io.debezium.connector.postgresql.PostgresConnector\n\
             topic.prefix=diff\n\
             database.hostname=127.0.0.1\ndatabase.port={}\ndatabase.user=cdc\n\
             database.password=cdc\ndatabase.dbname=diff\n\
             plugin.name=pgoutput\nslot.name=debezium_diff\npublication.name=debezium_diff\n\
             publication.autocreate.mode=filtered\ntable.include.list=public.dt,public.full_t,public.ty\n\
             snapshot.mode=initial\nheartbeat.interval.ms=300\nskipped.operations=none\n\
             decimal.handling.mode=string\n\
             converter.schemas.enable=false\nkey.converter.schemas.enable=false\n\
             value.converter.schemas.enable=false\n",
            pg.port
        ),
        &broker.addr,
    );
    // Streaming once it sends heartbeats.
    wait_for("Debezium streaming", Duration::from_secs(90), || {
        !read_topic(&broker.addr, "__debezium-heartbeat.diff").is_empty()
    });
    // The native source through the binary, writing each table as Debezium events.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("native-to-debezium.yaml");
    let sink = |table: &str| {
        format!(
            "  {table}_events:\n    input: refdb.{table}\n    kafka: {{brokers: \"{}\", topic: \
             native.public.{table}, format: debezium, table: public.{table}, key: [id]}}\n",
            broker.addr
        )
    };
    std::fs::write(
        &pipeline,
        format!(
            "name: native-to-debezium
sources:
  refdb:
    postgres: {{port: {}, user: cdc, database: diff, slot: native_events}}
    tables:
      dt:
        key: [id]
        columns: {{id: int, name: string, amount: decimal, ratio: float, flag: bool, day: date, \
           at: timestamp, local_at: timestamp, doc: json, big: string}}
      full_t: {{key: [id], columns: {{id: int, v: string}}}}
      ty:
        key: [id]
        columns: {{id: int, u: string, b: bytes, ints: json, tags: json, flags: json, m: string, \
           t: int, nums: json, moods: json, ratios: json, days: json, ats: json, docs: json, \
           reals: json, locals: json, times: json}}
sinks:
{}{}{}",
            pg.port,
            sink("dt"),
            sink("full_t"),
            sink("ty")
        ),
    )
    .unwrap();
    for table in ["dt", "full_t", "ty"] {
        broker.create_topic(&format!("native.public.{table}"), 1);
    }
    let native_run = crate::postgres::spawn(&pipeline);
    wait_for(
        "the native source streaming",
        Duration::from_secs(60),
        || {
            pg.sql(
            "diff",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'native_events' AND active",
        )
        .trim()
            == "1"
        },
    );
    let big = "string_agg(md5(i::text), '') FROM generate_series(1, 300) i";
    for statement in [
        format!(
            "INSERT INTO dt SELECT 1, 'one', 12.50, 0.25, true, '2026-01-02', \
             '2026-01-01 10:00:00.123456+02', '2026-01-01 10:00:00.5', \
             '{{\"b\": [1, 2], \"a\": null}}', {big}"
        ),
        "INSERT INTO dt VALUES (2, NULL, -0.01, 'NaN', false, '1999-12-31', \
         '1970-01-01 00:00:00+00', '2030-06-30 23:59:59', '[]', 'small')"
            .to_string(),
        "BEGIN; UPDATE dt SET name = 'uno', amount = amount + 1 WHERE id = 1; \
         INSERT INTO dt (id, name) VALUES (3, 'three'); COMMIT;"
            .to_string(),
        "UPDATE dt SET id = 4 WHERE id = 3".to_string(),
        "DELETE FROM dt WHERE id = 2".to_string(),
        "INSERT INTO full_t VALUES (1, 'a'), (2, 'b')".to_string(),
        "UPDATE full_t SET v = 'c' WHERE id = 1".to_string(),
        "DELETE FROM full_t WHERE id = 2".to_string(),
        "TRUNCATE full_t".to_string(),
        "UPDATE dt SET ratio = 1e-7, flag = NULL WHERE id = 1".to_string(),
        "INSERT INTO ty VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', \
         '{1,NULL,-3}', ARRAY['plain', 'with, comma', 'quote \"q\" and \\ slash', '', 'NULL', NULL, '{x}'], \
         '{t,f,NULL}', 'tense, very', '10:00:00.5', '{1.50,-0.001,NULL}', '{calm,\"tense, very\"}', \
         '{0.25,-1e-7,NaN}', '{2026-01-02,NULL}', '{\"2026-01-01 10:00:00.25+02\"}', \
         ARRAY['{\"a\": [1, 2.50]}'::jsonb, NULL], '{0.1,1e20,-Infinity}', \
         '{\"2026-01-01 10:00:00.25\",\"1969-12-31 23:59:59\"}', '{10:00:00.5,23:59:59}')"
            .to_string(),
        "INSERT INTO ty (id, ints, tags) VALUES (2, '{}', '{}')".to_string(),
        "UPDATE ty SET m = 'calm', ints = ints || 4, b = '' WHERE id = 1".to_string(),
        "DELETE FROM ty WHERE id = 2".to_string(),
    ] {
        pg.sql("diff", &statement);
    }
    // dt: 2 inserts, update + insert, key change (d + c), delete, update = 8;
    // full_t: 2 inserts, update, delete, truncate = 5; ty: 2 inserts, update, delete = 4.
    let want = 17;

    let debezium_lines = |prefix: &str| -> Vec<(String, String)> {
        let decoder = DebeziumDecoder::new(tables()).unwrap();
        let mut lines = Vec::new();
        for table in ["dt", "full_t", "ty"] {
            let topic = format!("{prefix}.public.{table}");
            for (_, value) in read_topic(&broker.addr, &topic) {
                if value.is_empty() {
                    continue;
                }
                let decoded = decoder.decode(&value).unwrap();
                if let Decoded::Change(c) = &decoded {
                    let mut out = Vec::new();
                    watershed::cdc::inspect::normalize(&decoded, &mut out);
                    lines.push((c.table.to_string(), String::from_utf8(out).unwrap()));
                }
            }
        }
        lines
    };
    wait_for("Debezium's changes", Duration::from_secs(60), || {
        debezium_lines("diff").len() >= want
    });
    let from_debezium = debezium_lines("diff");

    native
        .start_replication(&format!(
            "START_REPLICATION SLOT native_diff LOGICAL {start} \
             (proto_version '1', publication_names 'native_pub')"
        ))
        .unwrap();
    let mut decoder = ChangeDecoder::new(tables());
    let mut from_native: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while from_native.len() < want {
        assert!(Instant::now() < deadline, "native: {from_native:#?}");
        let Some(ReplicationMessage::XLogData { start, data, .. }) =
            native.recv_replication(Duration::from_millis(100)).unwrap()
        else {
            continue;
        };
        let mut decoded = Vec::new();
        decoder.decode(start, &data, &mut decoded).unwrap();
        for d in decoded {
            if let Decoded::Change(c) = &d
                && !c.table.table.is_empty()
            {
                let mut out = Vec::new();
                watershed::cdc::inspect::normalize(&d, &mut out);
                from_native.push((c.table.to_string(), String::from_utf8(out).unwrap()));
            }
        }
    }
    // The commit part of versions is each side's own; everything else must be equal. In
    // WAL order (a topic's partitions interleave it).
    let strip = |lines: Vec<(String, String)>| -> BTreeMap<String, Vec<String>> {
        let mut by_table: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for (table, line) in lines {
            let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v["version"]["commit_lsn"] = serde_json::Value::Null;
            let at = v["version"]["ordinal"].as_u64().unwrap();
            by_table.entry(table).or_default().push((at, v.to_string()));
        }
        by_table
            .into_iter()
            .map(|(t, mut lines)| {
                lines.sort();
                (t, lines.into_iter().map(|(_, l)| l).collect())
            })
            .collect()
    };
    // What the native source's run wrote as Debezium events reads back as exactly what the
    // native decoding gives, versions included.
    let deadline = Instant::now() + Duration::from_secs(60);
    while debezium_lines("native").len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = crate::postgres::stop(native_run);
    let mut written = debezium_lines("native");
    written.sort_by_key(|(t, l)| (t.clone(), ordinal(l)));
    // A table port's change rows carry no before image of an update (REPLICA IDENTITY
    // FULL's), so neither do the events written from them.
    let mut direct = from_native.clone();
    direct.sort_by_key(|(t, l)| (t.clone(), ordinal(l)));
    assert_eq!(written.len(), direct.len(), "{stderr}");
    for ((wt, w), (dt, d)) in written.iter().zip(&direct) {
        let w: serde_json::Value = serde_json::from_str(w).unwrap();
        let mut d: serde_json::Value = serde_json::from_str(d).unwrap();
        if d["op"] == "u" {
            d["before"] = serde_json::Value::Null;
        }
        assert_eq!(
            (wt, w),
            (dt, d),
            "written as Debezium events, then decoded directly"
        );
    }
    let (d, n) = (strip(from_debezium), strip(from_native));
    for table in ["public.dt", "public.full_t", "public.ty"] {
        let (d, n) = (&d[table], &n[table]);
        for (i, (a, b)) in d.iter().zip(n).enumerate() {
            assert_eq!(a, b, "{table} change {i}: Debezium, then native");
        }
        assert_eq!(d.len(), n.len(), "{table}: as many changes");
    }
}
