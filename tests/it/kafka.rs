//! Kafka end to end, through the binary and a real broker (tansu, started on a loopback port
//! by `watershed::testing::services`): observations and Debezium change events of a
//! reference table on topics → as-of enrichment → an exactly-once Kafka sink, killed with
//! SIGKILL at random moments and restarted from its checkpoints; per-partition event time
//! with a silent partition; the consumer group; bad records; a broker outage.
//!
//! tansu shows records of aborted transactions to `read_committed` readers (a known defect
//! of that broker). A kill that lands while a transaction is being sent leaves such records
//! before the same records sent again and committed: the exactly-once check accepts exactly
//! that shape (an aborted prefix of the transaction that follows it, from the one producer)
//! and nothing else, and says how many it set aside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use watershed::testing::contract::T0;
use watershed::testing::kafka_fixtures::read_topic;
use watershed::testing::services::{Broker, TestRecord};

const HOSTS: usize = 20;
const OBS: usize = 2_000;
const OBS_PARTITIONS: i32 = 4;
/// Hosts h0..h9 get a new owner at this time; h19 is deleted at `DELETED_AT`.
const UPDATED_AT: i64 = T0 + 30_000;
const DELETED_AT: i64 = T0 + 40_000;
const HEARTBEAT_AT: i64 = T0 + 7_200_000;
const SENTINEL_AT: i64 = T0 + 3_600_000;

fn change(op: &str, host: usize, owner: Option<&str>, ts: i64, lsn: u64, snapshot: &str) -> String {
    let row = |owner: &str| {
        format!(
            r#"{{"host":"h{host}","owner":"{owner}","zone":"z{}"}}"#,
            host % 3
        )
    };
    let (before, after) = match (op, owner) {
        ("d", _) => (row(""), "null".to_string()),
        (_, Some(o)) => ("null".to_string(), row(o)),
        _ => unreachable!(),
    };
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"version":"3.6.3","connector":"postgresql","name":"dbz","ts_ms":{ts},"snapshot":"{snapshot}","db":"cdc","schema":"public","table":"hosts","txId":{lsn},"lsn":{lsn},"sequence":"[null,\"{lsn}\"]"}},"op":"{op}","ts_ms":{ts}}}"#
    )
}

/// The reference table's topic: a snapshot of 20 hosts, 10 updates, a delete and its
/// tombstone; and the heartbeat topic.
fn fill_reference(broker: &Broker) {
    broker.create_topic("dbz.public.hosts", 1);
    broker.create_topic("__debezium-heartbeat.dbz", 1);
    let mut records: Vec<(String, Option<String>)> = Vec::new();
    for h in 0..HOSTS {
        let marker = if h + 1 == HOSTS { "last" } else { "true" };
        records.push((
            format!(r#"{{"host":"h{h}"}}"#),
            Some(change("r", h, Some(&format!("o{h}-v1")), T0, 100, marker)),
        ));
    }
    for h in 0..10 {
        let lsn = 200 + h as u64;
        records.push((
            format!(r#"{{"host":"h{h}"}}"#),
            Some(change(
                "u",
                h,
                Some(&format!("o{h}-v2")),
                UPDATED_AT,
                lsn,
                "false",
            )),
        ));
    }
    records.push((
        r#"{"host":"h19"}"#.into(),
        Some(change("d", 19, None, DELETED_AT, 300, "false")),
    ));
    records.push((r#"{"host":"h19"}"#.into(), None));
    let as_records: Vec<TestRecord<'_>> = records
        .iter()
        .map(|(k, v)| (0, Some(k.as_bytes()), v.as_ref().map(|v| v.as_bytes())))
        .collect();
    broker.produce("dbz.public.hosts", &as_records);
    let hb = format!(r#"{{"ts_ms":{HEARTBEAT_AT}}}"#);
    broker.produce(
        "__debezium-heartbeat.dbz",
        &[(0, Some(br#"{"serverName":"dbz"}"#), Some(hb.as_bytes()))],
    );
}

/// Observation `n`: (partition, time, host).
fn observation(n: usize) -> (i32, i64, usize) {
    let p = (n % OBS_PARTITIONS as usize) as i32;
    (p, T0 + 1_000 + n as i64 * 25 + 7, n % HOSTS)
}

/// The observations: 2,000 in time order over 4 partitions, then one sentinel per partition
/// an hour later (it carries every partition's watermark past the real ones).
fn fill_observations(broker: &Broker, topic: &str) -> Vec<(usize, i64, usize)> {
    broker.create_topic(topic, OBS_PARTITIONS);
    let mut all: Vec<(i32, usize, i64, usize)> = (0..OBS)
        .map(|n| {
            let (p, ts, h) = observation(n);
            (p, n, ts, h)
        })
        .collect();
    for p in 0..OBS_PARTITIONS {
        all.push((p, 100_000 + p as usize, SENTINEL_AT, 0));
    }
    let values: Vec<String> = all
        .iter()
        .map(|(_, n, ts, h)| format!(r#"{{"ts":{ts},"host":"h{h}","n":{n}}}"#))
        .collect();
    let records: Vec<TestRecord<'_>> = all
        .iter()
        .zip(&values)
        .map(|((p, ..), v)| (*p, None, Some(v.as_bytes())))
        .collect();
    broker.produce(topic, &records);
    all.into_iter().map(|(_, n, ts, h)| (n, ts, h)).collect()
}

/// What the enrichment must give for an observation: its host's owner as of its time.
fn expected_owner(ts: i64, host: usize) -> Option<String> {
    if host == 19 && ts >= DELETED_AT {
        None
    } else if host < 10 && ts >= UPDATED_AT {
        Some(format!("o{host}-v2"))
    } else {
        Some(format!("o{host}-v1"))
    }
}

fn pipeline(broker: &Broker, obs_topic: &str, out_topic: &str, dir: &Path) -> PathBuf {
    let b = &broker.addr;
    let text = format!(
        r#"name: kafka-e2e
enrichment: {{strategy: gated}}
checkpoint: {{interval: 300ms, dir: "{ckpt}"}}
sources:
  ref:
    kafka: {{brokers: "{b}", format: debezium, topic_prefix: dbz}}
    tables:
      hosts:
        key: [host]
        columns: {{host: string, owner: string, zone: string}}
  obs:
    kafka: {{brokers: "{b}", topics: [{obs_topic}]}}
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
  out:
    input: owners
    kafka: {{brokers: "{b}", topic: {out_topic}, key: [n], guarantee: exactly_once, properties: {{linger.ms: 5}}}}
  dead: {{inputs: [obs.dead_letter, ref.dead_letter], file: "{dead}"}}
"#,
        ckpt = dir.join("checkpoints").display(),
        dead = dir.join("dead.jsonl").display(),
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(pipeline: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["run", "--log", "warn", "--metrics-addr", "off"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signalling a child this test started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The output records (key `n` → value), in the topic's order, with aborted transactions
/// set aside (see the header): returns (records, how many were set aside).
fn committed_once(records: Vec<(Option<Vec<u8>>, Vec<u8>)>) -> (Vec<serde_json::Value>, usize) {
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut set_aside = 0;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let values: Vec<serde_json::Value> = records
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect();
    let mut i = 0;
    while i < values.len() {
        let n = values[i]["n"].to_string();
        if let Some(&first) = seen.get(&n) {
            // Records out[first..] must be an aborted attempt at exactly what follows.
            let aborted = &out[first..];
            let again = &values[i..(i + aborted.len()).min(values.len())];
            if aborted != again {
                let differ = aborted.iter().zip(again).position(|(a, b)| a != b);
                panic!(
                    "record n={n} appears twice, and not as an aborted transaction sent again: \
                     {} records from its first copy, {} after its second, first difference at \
                     {differ:?}",
                    aborted.len(),
                    again.len()
                );
            }
            set_aside += aborted.len();
            for v in aborted {
                seen.remove(&v["n"].to_string());
            }
            out.truncate(first);
            continue;
        }
        seen.insert(n, out.len());
        out.push(values[i].clone());
        i += 1;
    }
    (out, set_aside)
}

#[test]
fn kafka_to_as_of_enrichment_to_exactly_once_kafka_survives_kills_tansu_shows_aborted_records() {
    let broker = Broker::start();
    fill_reference(&broker);
    let observations = fill_observations(&broker, "obs");
    broker.create_topic("enriched", 1);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline(&broker, "obs", "enriched", dir.path());

    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut kills = 0;
    for _ in 0..10 {
        let child = start(&pipeline);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 1_500));
        signal(&child, libc::SIGKILL);
        let err = stderr_of(child);
        assert!(!err.contains("panicked"), "{err}");
        kills += 1;
    }
    // The last run: until every record is out, then a clean stop.
    let child = start(&pipeline);
    let want = observations.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (got, _) = committed_once(read_topic(&broker.addr, "enriched"));
        if got.len() >= want || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    signal(&child, libc::SIGTERM);
    let err = stderr_of(child);
    assert!(!err.contains("panicked"), "{err}");

    let (got, set_aside) = committed_once(read_topic(&broker.addr, "enriched"));
    eprintln!("{kills} kills; {set_aside} records of aborted transactions set aside");
    let mut by_n: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for v in got {
        let n = v["n"].as_i64().unwrap();
        assert!(by_n.insert(n, v.clone()).is_none(), "n={n} twice");
    }
    assert_eq!(by_n.len(), want, "every observation once: {err}");
    for (n, ts, host) in observations {
        let v = &by_n[&(n as i64)];
        let owner = v["owner"].as_str().map(String::from);
        assert_eq!(
            owner,
            expected_owner(ts, host),
            "observation {n} at {ts}: {v}"
        );
        assert_eq!(v["host"], format!("h{host}"));
    }
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "no dead letters expected: {dead}");
}
