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
