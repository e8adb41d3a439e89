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
    let text = enrichment_yaml(
        broker,
        &format!("topics: [{obs_topic}]"),
        "",
        &dir.join("checkpoints"),
        &format!(
            r#"kafka: {{brokers: "{b}", topic: {out_topic}, key: [n], guarantee: exactly_once, properties: {{linger.ms: 5}}}}
  dead: {{inputs: [obs.dead_letter, ref.dead_letter], file: "{dead}"}}"#,
            dead = dir.join("dead.jsonl").display()
        ),
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The enrichment pipeline: observations (`obs_kafka`: the rest of their `kafka:` block,
/// `obs_more`: more settings of the source) joined as of their time with the hosts table,
/// written by the sink `out` (`sink`: its kind's block, e.g. `kafka: {…}`, and any sinks
/// after it).
fn enrichment_yaml(
    broker: &Broker,
    obs_kafka: &str,
    obs_more: &str,
    ckpt: &Path,
    sink: &str,
) -> String {
    let b = &broker.addr;
    format!(
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
    kafka: {{brokers: "{b}", {obs_kafka}}}
    schema: {{ts: timestamp, host: string, n: int}}
    event_time: {{field: ts, max_out_of_orderness: 1s}}{obs_more}
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
    {sink}
"#,
        ckpt = ckpt.display(),
    )
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

/// The enrichment job on a broker of its own: the reference table, the observations, the
/// output topic `enriched` and the pipeline file.
struct Job {
    broker: Broker,
    observations: Vec<(usize, i64, usize)>,
    dir: tempfile::TempDir,
    pipeline: PathBuf,
}

fn enrichment_job() -> Job {
    let broker = Broker::start();
    fill_reference(&broker);
    let observations = fill_observations(&broker, "obs");
    broker.create_topic("enriched", 1);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline(&broker, "obs", "enriched", dir.path());
    Job {
        broker,
        observations,
        dir,
        pipeline,
    }
}

/// Waits (at most `limit`) until `enriched` holds `want` records once committed.
fn wait_for_output(broker: &Broker, want: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while committed_once(read_topic(&broker.addr, "enriched")).0.len() < want
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn kafka_to_as_of_enrichment_to_exactly_once_kafka_survives_kills_tansu_shows_aborted_records() {
    let Job {
        broker,
        observations,
        dir,
        pipeline,
    } = enrichment_job();

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
    wait_for_output(&broker, want, Duration::from_secs(120));
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

// ---------------------------------------------------------------------------------------
// Per-partition event time: a silent partition, with and without an idle timeout
// ---------------------------------------------------------------------------------------

mod event_time {
    use std::sync::Arc;
    use std::time::Duration;

    use watershed::alerts::{AlertEvaluator, AlertKind, AlertRules};
    use watershed::dataflow::{Message, Operator, Source};
    use watershed::format::EventTimeSource;
    use watershed::format::json::JsonDecoder;
    use watershed::kafka::Client;
    use watershed::operators::window::{
        AggregateFn, AggregateSpec, WindowKind, WindowOperator, WindowSpec,
    };
    use watershed::runtime::plan::WatermarkSpec;
    use watershed::runtime::task::{BarrierAck, Emit, OperatorDriver, SourceDriver, SourceStep};
    use watershed::sources::kafka::{
        JsonRecords, KafkaSource, KafkaSourceSpec, MetadataColumns, Start, Topics,
    };
    use watershed::status::{
        InstanceStatus, Role, SourceExpectations, StatusRegistry, StatusReport,
    };
    use watershed::testing::contract::T0;
    use watershed::testing::kafka_fixtures::unique;
    use watershed::testing::services::{Broker, TestProducer, TestRecord};
    use watershed::types::{DataType, Field, Schema, Value};

    struct Outcome {
        /// (processing time, window end) of every window fired.
        fired: Vec<(i64, i64)>,
        alerts: Vec<(i64, AlertKind, String)>,
        report: StatusReport,
    }

    /// Every partition gets a record per second of event time for the first 10 seconds;
    /// then partitions 0–2 go on (`live`, produced while the run goes on) and partition 3 is
    /// silent.
    fn fill(broker: &Broker) -> String {
        let topic = unique("silent");
        broker.create_topic(&topic, 4);
        let producer = broker.producer();
        for s in 0..10 {
            live(&producer, &topic, s, 4);
        }
        topic
    }

    /// Second `s` of event time on partitions `0..partitions`.
    fn live(producer: &TestProducer, topic: &str, s: i64, partitions: i32) {
        let values: Vec<(i32, String)> = (0..partitions)
            .map(|p| (p, format!(r#"{{"ts":{},"n":{s}}}"#, T0 + s * 1000)))
            .collect();
        let records: Vec<TestRecord<'_>> = values
            .iter()
            .map(|(p, v)| (*p, None, Some(v.as_bytes())))
            .collect();
        producer.produce(topic, &records);
    }

    /// Reads the topic through the runtime's source driver into a 30 s tumbling count, on a
    /// manual clock (100 ms steps over 135 s, partition 3 silent for over two minutes of it;
    /// one second of event time produced on partitions 0–2 per second), evaluating the alert
    /// rules every second.
    fn simulate(broker: &Broker, topic: &str, idle_timeout: Option<Duration>) -> Outcome {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp),
            Field::new("n", DataType::Int),
        ]));
        let source = KafkaSource::new(
            KafkaSourceSpec {
                node: "obs".into(),
                client: Client::plain(&broker.addr),
                topics: Topics::Names(vec![topic.into()]),
                group: None,
                start: Start::Earliest,
                poll_interval: Duration::from_millis(10),
                metadata: MetadataColumns::default(),
                instance: 0,
                parallelism: 1,
                links: None,
            },
            JsonRecords(JsonDecoder::new(schema.clone(), EventTimeSource::Field(0))),
        )
        .unwrap();
        let registry = StatusRegistry::new("kafka-silent");
        let status = registry.register(InstanceStatus::new(
            "obs",
            0,
            Role::Source,
            source.partitions(),
            &["main".into(), "dead_letter".into()],
            T0,
        ));
        registry.expect_source(SourceExpectations {
            source: "obs".into(),
            expected_interval_ms: Some(30_000),
            idle_timeout_ms: idle_timeout.map(|d| d.as_millis() as i64),
        });
        let mut driver = SourceDriver::new(
            Box::new(source),
            &WatermarkSpec {
                max_ahead: None,
                max_out_of_orderness: Duration::from_secs(1),
                idle_timeout,
                expected_interval: Some(Duration::from_secs(30)),
            },
            64,
            status,
            T0,
        );
        let spec = WindowSpec {
            key: vec![],
            kind: WindowKind::Tumbling {
                size: Duration::from_secs(30),
            },
            allowed_lateness: Duration::ZERO,
            aggregates: vec![AggregateSpec {
                name: "events".into(),
                function: AggregateFn::Count,
                field: None,
            }],
        };
        let op = WindowOperator::new("per_30s", spec, schema).unwrap();
        let ports: Vec<String> = op.ports().iter().map(|p| p.name.clone()).collect();
        let wstatus = registry.register(InstanceStatus::new(
            "per_30s",
            0,
            Role::Operator,
            vec!["obs#0".into()],
            &ports,
            T0,
        ));
        let mut window = OperatorDriver::new(Box::new(op), vec![0], wstatus, T0);
        let mut evaluator = AlertEvaluator::new(AlertRules {
            watermark_lag_ms: None,
            watermark_stall_ms: Some(20_000),
            enrichment_gate_ms: None,
            checkpoint_age_ms: None,
            partition_unowned_ms: None,
        });
        let mut out = Outcome {
            fired: Vec::new(),
            alerts: Vec::new(),
            report: registry.snapshot(T0),
        };
        let producer = broker.producer();
        let mut now = T0;
        while now <= T0 + 135_000 {
            let mut pending: Vec<Message> = Vec::new();
            loop {
                let mut emit = |e: Emit| {
                    match e {
                        Emit::Port(0, b) => pending.push(Message::Data(b)),
                        Emit::Port(_, _) => {}
                        Emit::Control(m) => pending.push(m),
                    }
                    Ok(())
                };
                match driver.step(now, &mut emit).unwrap() {
                    SourceStep::Continue => continue,
                    SourceStep::WaitUntil(_) | SourceStep::Finished => break,
                }
            }
            for msg in pending {
                let mut emit = |e: Emit| {
                    if let Emit::Port(0, b) = e {
                        for (row, _) in b.rows() {
                            let Value::Timestamp(end) = row[1] else {
                                panic!("window_end")
                            };
                            out.fired.push((now, end / 1000));
                        }
                    }
                    Ok(())
                };
                window
                    .on_message(0, msg, now, &mut emit, &mut |_: BarrierAck| {})
                    .unwrap();
            }
            if (now - T0) % 1000 == 0 {
                for ev in evaluator.evaluate(&registry.snapshot(now)) {
                    if ev.firing {
                        out.alerts.push((now, ev.kind, ev.message));
                    }
                }
                let s = (now - T0) / 1000;
                if s >= 10 {
                    live(&producer, topic, s, 3);
                }
            }
            // The broker is real: give its fetches real time.
            std::thread::sleep(Duration::from_millis(3));
            now += 100;
        }
        out.report = registry.snapshot(now);
        out
    }

    #[test]
    fn a_silent_kafka_partition_is_released_by_its_idle_timeout() {
        let broker = Broker::shared();
        let topic = fill(broker);
        let out = simulate(broker, &topic, Some(Duration::from_secs(5)));
        let ends: Vec<i64> = out.fired.iter().map(|(_, e)| *e).collect();
        // Partition 3 turns idle 5 s after it was read to its end; the other three carry
        // event time on: each window fires once the live partitions pass its end.
        assert_eq!(
            ends,
            vec![T0 + 30_000, T0 + 60_000, T0 + 90_000, T0 + 120_000],
            "{:?}",
            out.fired
        );
        for (at, end) in &out.fired {
            assert!(*at <= end + 5_000, "window {end} fired late, at {at}");
        }
        assert!(
            out.alerts.iter().all(|a| a.1 != AlertKind::WatermarkStall),
            "{:?}",
            out.alerts
        );
    }

    #[test]
    fn a_silent_kafka_partition_without_idle_timeout_stalls_and_is_named() {
        let broker = Broker::shared();
        let topic = fill(broker);
        let out = simulate(broker, &topic, None);
        assert!(out.fired.is_empty(), "windows fired: {:?}", out.fired);
        let partition = format!("{topic}/3");
        let stall = out
            .alerts
            .iter()
            .find(|a| a.1 == AlertKind::WatermarkStall)
            .unwrap_or_else(|| {
                panic!(
                    "a watermark_stall alert: {:?}\n{}",
                    out.alerts,
                    watershed::cli::explain::render(&out.report)
                )
            });
        assert!(stall.2.contains(&partition), "{}", stall.2);
        assert!(stall.2.contains("no idle_timeout"), "{}", stall.2);
        let text = watershed::cli::explain::render(&out.report);
        assert!(
            text.contains(&format!("source `obs` partition `{partition}`")),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bad records, and a broker outage
// ---------------------------------------------------------------------------------------

/// Runs `pipeline` until `done` holds (checked every 200 ms, at most `limit`), then stops it
/// with SIGTERM and returns its stderr.
fn run_until(pipeline: &Path, limit: Duration, mut done: impl FnMut() -> bool) -> String {
    let child = start(pipeline);
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&child, libc::SIGTERM);
    let err = stderr_of(child);
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ten_thousand_mixed_records_every_bad_one_is_a_dead_letter_with_its_offset() {
    let broker = Broker::shared();
    let topic = watershed::testing::kafka_fixtures::unique("mixed");
    broker.create_topic(&topic, 2);
    let mut values: Vec<(i32, Option<Vec<u8>>, bool)> = Vec::new();
    for i in 0..10_000usize {
        let p = (i % 2) as i32;
        let (value, good): (Option<Vec<u8>>, bool) = match i % 10 {
            1 => (Some(br#"{"ts":17672256"#.to_vec()), false),
            3 => (
                Some(format!(r#"{{"ts":"yesterday","host":"h","n":{i}}}"#).into_bytes()),
                false,
            ),
            5 => (
                Some(format!(r#"{{"ts":{},"host":7,"n":{i}}}"#, T0 + i as i64).into_bytes()),
                false,
            ),
            7 => (
                Some(vec![0xff, 0xfe, 0x00, (i % 251) as u8, 0x80, b'{']),
                false,
            ),
            9 if i % 100 == 99 => (None, false),
            _ => (
                Some(format!(r#"{{"ts":{},"host":"h{i}","n":{i}}}"#, T0 + i as i64).into_bytes()),
                true,
            ),
        };
        values.push((p, value, good));
    }
    let records: Vec<TestRecord<'_>> = values
        .iter()
        .map(|(p, v, _)| (*p, None, v.as_deref()))
        .collect();
    broker.produce(&topic, &records);
    let good = values.iter().filter(|v| v.2).count();
    let bad = values.len() - good;

    let dir = tempfile::tempdir().unwrap();
    let (out, dead) = (dir.path().join("out.jsonl"), dir.path().join("dead.jsonl"));
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: mixed
sources:
  obs:
    kafka: {{brokers: "{}", topics: [{topic}]}}
    schema: {{ts: timestamp, host: string, n: int}}
    event_time: {{field: ts, max_out_of_orderness: 1h}}
sinks:
  out: {{input: obs, file: "{}"}}
  dead: {{input: obs.dead_letter, file: "{}"}}
"#,
            broker.addr,
            out.display(),
            dead.display()
        ),
    )
    .unwrap();
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let err = run_until(&pipeline, Duration::from_secs(60), || {
        count(&out) >= good && count(&dead) >= bad
    });
    let rows = lines(&out);
    let letters = lines(&dead);
    assert_eq!((rows.len(), letters.len()), (good, bad), "{err}");
    let mut ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort_unstable();
    let want: Vec<i64> = (0..10_000i64).filter(|i| values[*i as usize].2).collect();
    assert_eq!(ns, want);
    // Record i is offset i / 2 of partition i % 2.
    let mut positions: Vec<(String, String)> = letters
        .iter()
        .map(|d| {
            assert!(!d["reason"].as_str().unwrap().is_empty(), "{d}");
            (
                d["partition"].as_str().unwrap().to_string(),
                d["position"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    positions.sort();
    let mut expected: Vec<(String, String)> = (0..10_000usize)
        .filter(|&i| !values[i].2)
        .map(|i| (format!("{topic}/{}", i % 2), format!("offset {}", i / 2)))
        .collect();
    expected.sort();
    assert_eq!(positions, expected);
}

#[test]
fn a_broker_paused_for_ten_seconds_loses_and_doubles_nothing() {
    let Job {
        broker,
        observations,
        dir: _dir,
        pipeline,
    } = enrichment_job();
    let child = start(&pipeline);
    // Let it get going, then take the broker away for 10 s mid-run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_once(read_topic(&broker.addr, "enriched"))
        .0
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no output before the outage");
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.pause(true);
    std::thread::sleep(Duration::from_secs(10));
    broker.pause(false);
    wait_for_output(&broker, observations.len(), Duration::from_secs(120));
    signal(&child, libc::SIGTERM);
    let err = stderr_of(child);
    assert!(!err.contains("panicked"), "{err}");
    let (got, _) = committed_once(read_topic(&broker.addr, "enriched"));
    let mut ns: Vec<i64> = got.iter().map(|v| v["n"].as_i64().unwrap()).collect();
    ns.sort_unstable();
    let mut want_ns: Vec<i64> = observations.iter().map(|o| o.0 as i64).collect();
    want_ns.sort_unstable();
    assert_eq!(ns, want_ns, "{err}");
}

// ---------------------------------------------------------------------------------------
// The consumer group
// ---------------------------------------------------------------------------------------

/// The group's committed offsets of `topic`, by partition.
fn committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

#[test]
fn a_group_commits_offsets_once_checkpointed_and_a_run_without_a_checkpoint_resumes_there() {
    let broker = Broker::shared();
    let topic = watershed::testing::kafka_fixtures::unique("grouped");
    let group = watershed::testing::kafka_fixtures::unique("group");
    broker.create_topic(&topic, 3);
    let batch = |from: usize, to: usize| -> Vec<(i32, String)> {
        (from..to)
            .map(|i| {
                (
                    (i % 3) as i32,
                    format!(r#"{{"ts":{},"host":"h","n":{i}}}"#, T0 + i as i64),
                )
            })
            .collect()
    };
    let send = |values: &[(i32, String)]| {
        let records: Vec<TestRecord<'_>> = values
            .iter()
            .map(|(p, v)| (*p, None, Some(v.as_bytes())))
            .collect();
        broker.produce(&topic, &records);
    };
    send(&batch(0, 300));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, out: &Path, checkpoints: &Path| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"name: grouped
checkpoint: {{interval: 200ms, dir: "{}"}}
sources:
  obs:
    kafka:
      brokers: "{}"
      topics: [{topic}]
      group: {group}
      properties: {{session.timeout.ms: 6000}}
    schema: {{ts: timestamp, host: string, n: int}}
    event_time: {{field: ts}}
sinks:
  out: {{input: obs, file: "{}"}}
"#,
                checkpoints.display(),
                broker.addr,
                out.display()
            ),
        )
        .unwrap();
        path
    };
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let first_out = dir.path().join("first.jsonl");
    let first = write("first.yaml", &first_out, &dir.path().join("ck1"));
    let err = run_until(&first, Duration::from_secs(60), || {
        count(&first_out) >= 300 && committed(broker, &group, &topic, 3) == vec![100, 100, 100]
    });
    assert_eq!(count(&first_out), 300, "{err}");
    assert_eq!(
        committed(broker, &group, &topic, 3),
        vec![100, 100, 100],
        "{err}"
    );

    // More records; a run with a new checkpoint directory starts at the group's offsets.
    send(&batch(300, 360));
    let second_out = dir.path().join("second.jsonl");
    let second = write("second.yaml", &second_out, &dir.path().join("ck2"));
    let err = run_until(&second, Duration::from_secs(60), || {
        count(&second_out) >= 60 && committed(broker, &group, &topic, 3) == vec![120, 120, 120]
    });
    let mut ns: Vec<i64> = lines(&second_out)
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (300..360).collect::<Vec<i64>>(), "{err}");
}

// ---------------------------------------------------------------------------------------
// Settings: secrets and mistakes
// ---------------------------------------------------------------------------------------

#[test]
fn a_secret_from_the_environment_never_shows_in_validate_explain_or_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = watershed::testing::services::free_port();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: secret
sources:
  obs:
    kafka:
      brokers: "127.0.0.1:{port}"
      topics: [x]
      group: g
      properties: {{security.protocol: SASL_PLAINTEXT, sasl.mechanism: PLAIN, sasl.username: u, sasl.password: "${{KAFKA_PASSWORD}}"}}
    schema: {{ts: timestamp, n: int}}
    event_time: {{field: ts}}
sinks:
  out:
    input: obs
    kafka: {{brokers: "127.0.0.1:{port}", topic: y, properties: {{sasl.password: "${{KAFKA_PASSWORD}}"}}}}
"#
        ),
    )
    .unwrap();
    let secret = "s3cr3t-Pa55";
    let run = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
            .args(args)
            .arg(&pipeline)
            .env("KAFKA_PASSWORD", secret)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for args in [&["validate"][..], &["explain"][..]] {
        let text = run(args);
        assert!(!text.contains(secret), "{args:?}: {text}");
    }
    // A run against a broker that is not there, logging everything librdkafka says.
    let child = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["run", "--log", "trace", "--metrics-addr", "off"])
        .arg(&pipeline)
        .env("KAFKA_PASSWORD", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("broker unreachable"), "{text}");
    assert!(!text.contains(secret), "the secret is in the logs");
}

/// A window fed by a consumer group's partitions aggregates, in each process, only the rows
/// of the partitions that process owns: `validate` says so, naming the window, its key and
/// the source; a window fed by a source without a group is not warned about.
#[test]
fn validate_warns_of_a_keyed_window_behind_a_consumer_group() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |group: &str| {
        let path = dir.path().join(format!("w{}.yaml", group.len()));
        std::fs::write(
            &path,
            format!(
                r#"name: windows
sources:
  obs:
    kafka: {{brokers: "127.0.0.1:9092", topics: [obs]{group}}}
    schema: {{ts: timestamp, host: string, n: int}}
    event_time: {{field: ts, max_out_of_orderness: 1s}}
operators:
  per_host:
    inputs: [obs]
    window:
      key: [host]
      tumbling: 1m
      aggregates: {{events: count}}
sinks:
  out:
    input: per_host
    stdout: true
"#
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let grouped = pipeline(", group: g");
    assert!(
        grouped.contains(":9: operator `per_host` is keyed by [host] and reads source `obs`"),
        "{grouped}"
    );
    // explain says it beside the plan (no pipeline runs at the address: the plan only).
    let path = dir.path().join(format!("w{}.yaml", ", group: g".len()));
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["explain", "--addr", "127.0.0.1:9"])
        .arg(&path)
        .output()
        .unwrap();
    let explained =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        explained.contains("operator `per_host` is keyed by [host]")
            && explained.contains("scale-out: source obs reads in consumer group `g`"),
        "{explained}"
    );
    let alone = pipeline("");
    assert!(!alone.contains("is keyed by"), "{alone}");
}

#[test]
fn kafka_setting_mistakes_name_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        r#"name: mistakes
sources:
  obs:
    kafka:
      brokers: "127.0.0.1:9092"
      topics: [x]
      start: sideways
      properties: {group.id: mine, no.such.property: 1}
    schema: {ts: timestamp, n: int}
sinks:
  out:
    input: obs
    kafka: {brokers: "127.0.0.1:9092", topic: y, guarantee: exactly_once, key: [nope]}
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .arg("validate")
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for want in [
        ":7:",
        "sources.obs.kafka.start",
        "`sideways`",
        ":8:",
        "sources.obs.kafka.properties.group.id",
        "use `group`",
        "sources.obs.kafka.properties.no.such.property",
        ":13:",
        "sinks.out.kafka.guarantee",
        "checkpoint.dir",
        "sinks.out.kafka.key",
        "`nope`",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

/// Regression: with a topic per table, Debezium's `last` marker (on the last table's topic)
/// ended every table's snapshot when it was read, before the other topics were: a gated
/// enrichment opened on a table with none of its rows (seen on the demo: `cpe_match rows=0`).
/// Now `last` ends its own table, and the others once every topic has been read to its end.
#[test]
fn a_table_snapshot_ends_after_its_own_rows_whatever_topic_is_read_first() {
    let broker = Broker::shared();
    let prefix = watershed::testing::kafka_fixtures::unique("snap");
    let (big, small) = (
        format!("{prefix}.public.big"),
        format!("{prefix}.public.small"),
    );
    broker.create_topic(&big, 1);
    broker.create_topic(&small, 1);
    let row = |table: &str, id: usize, marker: &str| {
        format!(
            r#"{{"before":null,"after":{{"id":{id}}},"source":{{"version":"3.6.3","connector":"postgresql","name":"{prefix}","ts_ms":{T0},"snapshot":"{marker}","db":"d","schema":"public","table":"{table}","txId":1,"lsn":100,"sequence":"[null,\"100\"]"}},"op":"r","ts_ms":{T0}}}"#
        )
    };
    // The big table first, without a marker of its own (as a connector before 2.x writes
    // it); the small one last, its last row marked `last`.
    let big_rows: Vec<String> = (0..3_000).map(|i| row("big", i, "true")).collect();
    let small_rows: Vec<String> = (0..3)
        .map(|i| row("small", i, if i == 2 { "last" } else { "true" }))
        .collect();
    let as_records = |rows: &[String]| -> Vec<(i32, Option<Vec<u8>>, Vec<u8>)> {
        rows.iter()
            .map(|r| (0, None, r.as_bytes().to_vec()))
            .collect()
    };
    let send = |topic: &str, rows: &[String]| {
        let owned = as_records(rows);
        let records: Vec<TestRecord<'_>> = owned
            .iter()
            .map(|(p, k, v)| (*p, k.as_deref(), Some(v.as_slice())))
            .collect();
        broker.produce(topic, &records);
    };
    send(&big, &big_rows);
    send(&small, &small_rows);
    let dir = tempfile::tempdir().unwrap();
    let (out_big, out_small) = (dir.path().join("big.jsonl"), dir.path().join("small.jsonl"));
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: snapshots
sources:
  ref:
    kafka: {{brokers: "{}", format: debezium, topic_prefix: {prefix}}}
    tables:
      big: {{key: [id], columns: {{id: int}}}}
      small: {{key: [id], columns: {{id: int}}}}
sinks:
  big: {{input: ref.big, file: "{}"}}
  small: {{input: ref.small, file: "{}"}}
"#,
            broker.addr,
            out_big.display(),
            out_small.display()
        ),
    )
    .unwrap();
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let err = run_until(&pipeline, Duration::from_secs(60), || {
        count(&out_big) >= 3_001 && count(&out_small) >= 4
    });
    for (path, rows) in [(&out_big, 3_000), (&out_small, 3)] {
        let lines = lines(path);
        assert_eq!(lines.len(), rows + 1, "{}: {err}", path.display());
        let ends: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l["_op"] == "snapshot_end")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            ends,
            vec![rows],
            "{}: the snapshot ends after its rows",
            path.display()
        );
    }
}

/// A table port written as Debezium events (`format: debezium`) and read back as a change
/// stream gives the same change rows: Watershed can sit between CDC and Debezium consumers.
#[test]
fn a_table_written_as_debezium_events_reads_back_as_the_same_changes() {
    let broker = Broker::start();
    fill_reference(&broker);
    broker.create_topic("copy.public.hosts", 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let pipeline = dir.path().join("p.yaml");
    let table = "{key: [host], columns: {host: string, owner: string, zone: string}}";
    std::fs::write(
        &pipeline,
        format!(
            r#"name: passthrough
sources:
  ref:
    kafka: {{brokers: "{br}", format: debezium, topic_prefix: dbz}}
    tables: {{hosts: {table}}}
  copy:
    kafka: {{brokers: "{br}", format: debezium, topics: [copy.public.hosts]}}
    tables: {{hosts: {table}}}
sinks:
  to_copy:
    input: ref.hosts
    kafka: {{brokers: "{br}", topic: copy.public.hosts, format: debezium, table: public.hosts, key: [host]}}
  a: {{input: ref.hosts, file: "{}"}}
  b: {{input: copy.hosts, file: "{}"}}
"#,
            a.display(),
            b.display(),
            br = broker.addr,
        ),
    )
    .unwrap();
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    // 20 snapshot rows, the end of the snapshot, 10 updates, a delete.
    let err = run_until(&pipeline, Duration::from_secs(60), || {
        count(&a) >= 32 && count(&b) >= 32
    });
    let strip = |p: &Path| -> Vec<serde_json::Value> {
        lines(p)
            .into_iter()
            .map(|mut v| {
                // The last snapshot row's marker is `last` on the way in and
                // `last_in_data_collection` on the way back: one table per topic.
                v.as_object_mut().unwrap().remove("_snapshot");
                v
            })
            .collect()
    };
    let (a, b) = (strip(&a), strip(&b));
    assert_eq!(a.len(), 32, "{err}");
    assert_eq!(a, b, "{err}");
    assert!(b.iter().any(|v| v["_op"] == "snapshot_end"));
    assert!(b.iter().any(|v| v["_op"] == "d"));
}

/// The record's key, topic, partition, offset, timestamp and headers as columns; without an
/// event-time field, the record's timestamp is the event time.
#[test]
fn record_metadata_columns_and_the_record_timestamp_as_event_time() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = Broker::shared();
    let topic = watershed::testing::kafka_fixtures::unique("meta");
    broker.create_topic(&topic, 1);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "trace",
            value: Some("abc"),
        })
        .insert(Header {
            key: "bin",
            value: Some(&[0xffu8, 0x00][..]),
        });
    producer
        .send(
            BaseRecord::to(&topic)
                .key("k-1")
                .payload(r#"{"n":1}"#)
                .timestamp(T0 + 42)
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(
            BaseRecord::<str, str>::to(&topic)
                .payload(r#"{"n":2}"#)
                .timestamp(T0 + 43),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let minutes = dir.path().join("minutes.jsonl");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: meta
sources:
  obs:
    kafka:
      brokers: "{}"
      topics: [{topic}]
      metadata: {{key: k, topic: t, partition: p, offset: o, timestamp: at, headers: h}}
    schema: {{n: int, k: string, t: string, p: int, o: int, at: timestamp, h: json}}
operators:
  minutes:
    inputs: [obs]
    window: {{tumbling: 1m, aggregates: {{records: count}}}}
sinks:
  out: {{input: obs, file: "{}"}}
  per_minute: {{input: minutes, file: "{}"}}
"#,
            broker.addr,
            out.display(),
            minutes.display()
        ),
    )
    .unwrap();
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let err = run_until(&pipeline, Duration::from_secs(30), || count(&out) >= 2);
    let rows = lines(&out);
    assert_eq!(rows.len(), 2, "{err}");
    assert_eq!(rows[0]["k"], "k-1");
    assert_eq!(rows[0]["t"], topic.as_str());
    assert_eq!(
        (rows[0]["p"].as_i64(), rows[0]["o"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(rows[0]["at"], "2026-01-01T00:00:00.042Z");
    assert_eq!(
        rows[0]["h"],
        serde_json::json!({"trace": "abc", "bin": "/wA="})
    );
    assert_eq!(rows[1]["k"], serde_json::Value::Null);
    assert_eq!(rows[1]["h"], serde_json::Value::Null);
    assert_eq!(rows[1]["o"].as_i64(), Some(1));
    // Both records in the first minute of 2026 by their timestamps (the run drains at the
    // stop, firing the window).
    let windows = lines(&minutes);
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert_eq!(windows[0]["window_start"], "2026-01-01T00:00:00.000Z");
    assert_eq!(windows[0]["records"], 2);
}

/// `pattern` with a group: every topic whose name matches is read, others are not.
#[test]
fn a_topic_pattern_reads_every_matching_topic() {
    let broker = Broker::shared();
    let prefix = watershed::testing::kafka_fixtures::unique("pat").replace('-', "_");
    let group = watershed::testing::kafka_fixtures::unique("pattern-group");
    let send = |topic: &str, n: usize| {
        broker.create_topic(topic, 1);
        let v = format!(r#"{{"ts":{},"n":{n}}}"#, T0 + n as i64);
        broker.produce(topic, &[(0, None, Some(v.as_bytes()))]);
    };
    send(&format!("{prefix}.a"), 1);
    send(&format!("{prefix}.b"), 2);
    send(&format!("other_{prefix}.c"), 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pattern
sources:
  obs:
    kafka:
      brokers: "{}"
      pattern: "{prefix}\\..*"
      group: {group}
      properties: {{session.timeout.ms: 6000, topic.metadata.refresh.interval.ms: 1000}}
    schema: {{ts: timestamp, n: int}}
    event_time: {{field: ts}}
sinks:
  out: {{input: obs, file: "{}"}}
"#,
            broker.addr,
            out.display()
        ),
    )
    .unwrap();
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    // Once both matching topics are read, a second more: the third must not come.
    let mut both_at: Option<Instant> = None;
    let err = run_until(&pipeline, Duration::from_secs(60), || {
        count(&out) >= 2
            && both_at
                .get_or_insert_with(Instant::now)
                .elapsed()
                .as_secs_f64()
                >= 1.0
    });
    let mut ns: Vec<i64> = lines(&out)
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, vec![1, 2], "{err}");
}

// ---------------------------------------------------------------------------------------
// Scale-out: several processes in one consumer group
// ---------------------------------------------------------------------------------------

/// The enrichment pipeline of instance `name` in group `group`, with its own checkpoints and
/// an at-least-once sink: without the hand-over at a checkpoint, a partition that moves
/// mid-stream would be read again from an older committed offset (doubles).
fn group_pipeline(broker: &Broker, dir: &Path, name: &str, group: &str) -> PathBuf {
    group_pipeline_to(broker, dir, name, group, &group_kafka_sink(broker, ""))
}

/// The group pipeline's Kafka sink block, `more` added to its settings.
fn group_kafka_sink(broker: &Broker, more: &str) -> String {
    format!(
        r#"kafka: {{brokers: "{}", topic: enriched, key: [n]{more}, properties: {{linger.ms: 5}}}}"#,
        broker.addr
    )
}

/// An instance of the group pipeline whose sink `out` is `sink` (its kind's block).
fn group_pipeline_to(broker: &Broker, dir: &Path, name: &str, group: &str, sink: &str) -> PathBuf {
    let text = enrichment_yaml(
        broker,
        &format!("topics: [obs], group: {group}, properties: {{session.timeout.ms: 6000}}"),
        "\n    idle_timeout: 500ms",
        &dir.join(format!("checkpoints-{name}")),
        sink,
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `watershed run pipeline` logging (info) to `log`, with instance id `id` if given
/// and the endpoint at `metrics` (or `off`).
fn spawn_instance(
    pipeline: &Path,
    log: PathBuf,
    id: Option<&str>,
    metrics: &str,
) -> (Child, PathBuf) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watershed"));
    if let Some(id) = id {
        cmd.env("WATERSHED_INSTANCE_ID", id);
    }
    let child = cmd
        .args(["run", "--log", "info", "--metrics-addr", metrics])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

#[test]
fn three_instances_in_one_group_share_the_partitions_and_hand_each_over_at_a_checkpoint() {
    let broker = Broker::start();
    fill_reference(&broker);
    broker.create_topic("obs", OBS_PARTITIONS);
    broker.create_topic("enriched", 1);
    let dir = tempfile::tempdir().unwrap();
    let group = "scale-out";
    // The observations arrive over about 12 s while instances join: the partitions move
    // between instances mid-stream.
    let producer = produce_observations_in_waves(&broker);
    let start_instance = |name: &str| -> (Child, PathBuf) {
        spawn_instance(
            &group_pipeline(&broker, dir.path(), name, group),
            dir.path().join(format!("{name}.log")),
            None,
            "off",
        )
    };
    // The first instance reads every partition alone for a while; the second and third join
    // while records flow, so partitions it has read from move to them.
    let mut children = vec![start_instance("a")];
    output_reaches(&broker, 200);
    children.push(start_instance("b"));
    output_reaches(&broker, 800);
    children.push(start_instance("c"));
    producer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = OBS + OBS_PARTITIONS as usize;
    while read_topic(&broker.addr, "enriched").len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    // Give doubles, if any, a moment to show.
    std::thread::sleep(Duration::from_secs(2));
    let mut errs = String::new();
    let logs = stop_instances(children, &mut errs);
    let hand_overs: usize = logs
        .iter()
        .map(|l| l.lines().filter(|l| l.contains("handed over")).count())
        .sum();
    assert!(hand_overs > 0, "no partition was handed over\n{errs}");
    let (seen, doubled) = enriched_output(&broker);
    assert!(doubled.is_empty(), "doubled: {doubled:?}\n{errs}");
    every_observation_enriched(&seen, &errs);
}

/// Sends the observations in waves of 100 every 600 ms (about 12 s in all), then one
/// sentinel per partition, on a thread: instances join and leave while records flow.
fn produce_observations_in_waves(broker: &Broker) -> std::thread::JoinHandle<()> {
    let broker_addr = broker.addr.clone();
    std::thread::spawn(move || {
        let producer = watershed::testing::services::TestProducer::to(&broker_addr);
        let values: Vec<(i32, String)> = (0..OBS)
            .map(|n| {
                let (p, ts, h) = observation(n);
                (p, format!(r#"{{"ts":{ts},"host":"h{h}","n":{n}}}"#))
            })
            .collect();
        for wave in values.chunks(100) {
            let records: Vec<TestRecord<'_>> = wave
                .iter()
                .map(|(p, v)| (*p, None, Some(v.as_bytes())))
                .collect();
            producer.produce("obs", &records);
            std::thread::sleep(Duration::from_millis(600));
        }
        let sentinels: Vec<String> = (0..OBS_PARTITIONS)
            .map(|p| format!(r#"{{"ts":{SENTINEL_AT},"host":"h0","n":{}}}"#, 100_000 + p))
            .collect();
        let records: Vec<TestRecord<'_>> = sentinels
            .iter()
            .enumerate()
            .map(|(p, v)| (p as i32, None, Some(v.as_bytes())))
            .collect();
        producer.produce("obs", &records);
    })
}

/// Waits (at most 60 s) until `enriched` holds `n` committed records.
fn output_reaches(broker: &Broker, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_topic(&broker.addr, "enriched").len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops every instance with SIGTERM (each must stop within 60 s and must not panic) and
/// appends its log to `errs`; returns the logs.
fn stop_instances(children: Vec<(Child, PathBuf)>, errs: &mut String) -> Vec<String> {
    let mut logs = Vec::new();
    for (mut child, log) in children {
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopped = child.try_wait().unwrap().is_some();
        if !stopped {
            let _ = child.kill();
            let _ = child.wait();
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let handed = text.lines().filter(|l| l.contains("handed over")).count();
        errs.push_str(&format!("--- {} (hand-overs: {handed})\n", log.display()));
        for line in text.lines().filter(|l| !l.contains("checkpoint completed")) {
            errs.push_str(line);
            errs.push('\n');
        }
        assert!(
            stopped,
            "an instance did not stop on SIGTERM within 60 s\n{errs}"
        );
        assert!(!text.contains("panicked"), "{errs}");
        logs.push(text);
    }
    logs
}

/// The committed output by observation number, and the numbers seen more than once.
fn enriched_output(broker: &Broker) -> (BTreeMap<i64, serde_json::Value>, Vec<i64>) {
    let mut seen: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    let mut doubled = Vec::new();
    for (_, v) in read_topic(&broker.addr, "enriched") {
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let n = v["n"].as_i64().unwrap();
        if seen.insert(n, v).is_some() {
            doubled.push(n);
        }
    }
    (seen, doubled)
}

/// Waits (at most 120 s) until `group`'s committed offsets reach the end of every partition
/// of `obs` (every observation and sentinel consumed); returns those end offsets.
fn offsets_reach_the_end(broker: &Broker, group: &str) -> Vec<i64> {
    let per_partition = (OBS / OBS_PARTITIONS as usize + 1) as i64;
    let done = vec![per_partition; OBS_PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(broker, group, "obs", OBS_PARTITIONS) != done && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    done
}

/// Every observation is in the output, with the owner a single instance gives it.
fn every_observation_enriched(seen: &BTreeMap<i64, serde_json::Value>, errs: &str) {
    let missing: Vec<usize> = (0..OBS)
        .filter(|n| !seen.contains_key(&(*n as i64)))
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}\n{errs}");
    for n in 0..OBS {
        let (_, ts, h) = observation(n);
        let got = seen[&(n as i64)]["owner"].as_str().map(str::to_string);
        assert_eq!(got, expected_owner(ts, h), "observation {n}");
    }
}

#[test]
fn a_partition_handed_over_and_given_back_is_read_again() {
    let broker = Broker::shared();
    let topic = watershed::testing::kafka_fixtures::unique("returning");
    let group = watershed::testing::kafka_fixtures::unique("returning");
    broker.create_topic(&topic, 3);
    let send = |from: usize, to: usize| {
        let values: Vec<(i32, String)> = (from..to)
            .map(|i| {
                (
                    (i % 3) as i32,
                    format!(r#"{{"ts":{},"n":{i}}}"#, T0 + i as i64),
                )
            })
            .collect();
        let records: Vec<TestRecord<'_>> = values
            .iter()
            .map(|(p, v)| (*p, None, Some(v.as_bytes())))
            .collect();
        broker.produce(&topic, &records);
    };
    let dir = tempfile::tempdir().unwrap();
    let instance = |name: &str| -> (Child, PathBuf) {
        let out = dir.path().join(format!("{name}.jsonl"));
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                r#"name: returning
checkpoint: {{interval: 200ms, dir: "{}"}}
sources:
  obs:
    kafka: {{brokers: "{}", topics: [{topic}], group: {group}, properties: {{session.timeout.ms: 6000}}}}
    schema: {{ts: timestamp, n: int}}
    event_time: {{field: ts}}
sinks:
  out: {{input: obs, file: "{}"}}
"#,
                dir.path().join(format!("checkpoints-{name}")).display(),
                broker.addr,
                out.display()
            ),
        )
        .unwrap();
        (start(&path), out)
    };
    let numbers = |files: &[&Path]| -> std::collections::BTreeSet<i64> {
        files
            .iter()
            .flat_map(|f| lines(f))
            .map(|r| r["n"].as_i64().unwrap())
            .collect()
    };
    let wait_for = |files: &[&Path], n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while numbers(files).len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The first instance reads every partition; the second takes some of them over.
    send(0, 300);
    let (first, first_out) = instance("first");
    wait_for(&[&first_out], 300);
    let (second, second_out) = instance("second");
    std::thread::sleep(Duration::from_secs(8));
    send(300, 600);
    wait_for(&[&first_out, &second_out], 600);
    // The second stops: its partitions go back to the first, which must read them again.
    signal(&second, libc::SIGTERM);
    let err = stderr_of(second);
    assert!(!err.contains("panicked"), "{err}");
    send(600, 900);
    wait_for(&[&first_out, &second_out], 900);
    signal(&first, libc::SIGTERM);
    let first_err = stderr_of(first);
    assert!(
        !lines(&second_out).is_empty(),
        "the second instance read nothing: no partition moved\n{err}"
    );
    let missing: Vec<i64> = (0..900)
        .filter(|n| !numbers(&[&first_out, &second_out]).contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "missing: {missing:?}\n{first_err}\n{err}"
    );
    // After the second stopped, every partition is the first's again.
    let late: std::collections::BTreeSet<i64> = lines(&first_out)
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .filter(|n| *n >= 600)
        .collect();
    assert_eq!(late.len(), 300, "{first_err}");
}

/// Exactly-once output from instances that come, go and die: three instances share the
/// observations, one is SIGKILLed mid-stream and a fourth replaces it later with its instance
/// id (as a StatefulSet replaces a pod) and a checkpoint directory of its own. Under
/// `read_committed` every observation is in the output exactly once, enriched as a single
/// instance enriches it: the offsets of what each epoch read commit in the transaction that
/// holds what it wrote, so the killed instance's partitions are read again by their next
/// owners from exactly where its last committed transaction ended, and the group's offsets
/// reach the end of every partition through those transactions alone. tansu never times out
/// a transaction that a killed producer left open (Kafka aborts it after
/// `transaction.timeout.ms`), so the replacement's fencing is what aborts it here; and tansu
/// then shows that aborted transaction's records to `read_committed` readers, so a record of
/// a partition the killed instance owned may show twice (never one of another partition, and
/// never is one missing); and tansu describes no member's assignment, so who owns what
/// cannot be checked.
#[test]
fn exactly_once_output_from_three_instances_one_killed_and_replaced_tansu_shows_aborted_records_and_describes_no_assignments()
 {
    let broker = Broker::start();
    fill_reference(&broker);
    broker.create_topic("obs", OBS_PARTITIONS);
    broker.create_topic("enriched", 1);
    let dir = tempfile::tempdir().unwrap();
    let group = "scale-out-eo";
    let producer = produce_observations_in_waves(&broker);
    let start_instance = |name: &str, id: &str, metrics: &str| -> (Child, PathBuf) {
        let sink = group_kafka_sink(&broker, ", guarantee: exactly_once");
        spawn_instance(
            &group_pipeline_to(&broker, dir.path(), name, group, &sink),
            dir.path().join(format!("{name}.log")),
            Some(id),
            metrics,
        )
    };
    let mut children = vec![start_instance("a", "inst-a", "off")];
    output_reaches(&broker, 200);
    children.push(start_instance("b", "inst-b", "off"));
    let c_addr = format!("127.0.0.1:{}", watershed::testing::services::free_port());
    children.push(start_instance("c", "inst-c", &c_addr));
    output_reaches(&broker, 900);
    // The third instance sees the group: three members, its generation, who owns what.
    let c_addr: std::net::SocketAddr = c_addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut group_seen = None;
    let mut last = String::new();
    while Instant::now() < deadline {
        let report = watershed::http::get_local(c_addr, "/status")
            .ok()
            .and_then(|b| serde_json::from_str::<watershed::status::StatusReport>(&b).ok());
        if let Some(r) = &report
            && let Some(i) = r.instances.iter().find(|i| i.node == "obs")
        {
            last = format!("{:?} {:?}", i.stats, i.info);
        }
        if let Some(r) = report
            && let Some(i) = r.instances.iter().find(|i| i.node == "obs")
            && i.stat("group_members") == Some(3)
            && i.stat("group_generation").is_some()
        {
            group_seen = Some((r.clone(), i.clone()));
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (report, obs) = group_seen
        .unwrap_or_else(|| panic!("instance c never saw a stable group of three: {last}"));
    assert_eq!(report.instance_id.as_deref(), Some("inst-c"));
    assert!(
        obs.stat("group_generation").is_some_and(|g| g >= 1),
        "{obs:?}"
    );
    let member = obs.info("group_member_id").unwrap_or_default().to_string();
    assert!(!member.is_empty(), "{obs:?}");
    let members = obs.info("group_members").unwrap_or_default();
    assert!(members.contains(&member), "{members}");
    // tansu leaves the members' assignments out of DescribeGroups: who owns what is
    // unknown there, and that must never read as partitions without an owner.
    assert_eq!(obs.stat("group_partitions_unowned"), None, "{obs:?}");
    assert!(obs.info("group_assignments").is_some(), "{obs:?}");
    let explained = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["explain", "--addr", &c_addr.to_string()])
        .arg(dir.path().join("c.yaml"))
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&explained.stdout).to_string();
    assert!(
        explained.contains(&format!("consumer group `{group}`: member {member}"))
            && explained.contains("3 members")
            && explained.contains(&format!("source obs reads in consumer group `{group}`"))
            && explained.contains("its offsets commit in the transactions of sink out"),
        "{explained}"
    );
    // Mid-stream, with partitions of its own and transactions committing every 300 ms.
    let (mut killed, killed_log) = children.remove(1);
    signal(&killed, libc::SIGKILL);
    let _ = killed.wait();
    std::thread::sleep(Duration::from_secs(3));
    children.push(start_instance("d", "inst-b", "off"));
    producer.join().unwrap();
    // Every record consumed and its offset committed with the output that holds it: the
    // killed instance's partitions go to the others once its session expires.
    let done = offsets_reach_the_end(&broker, group);
    std::thread::sleep(Duration::from_secs(1));
    // What the killed instance owned when it died: only there can tansu show records of a
    // transaction it left open, which its replacement aborted.
    let killed_text = std::fs::read_to_string(&killed_log).unwrap_or_default();
    let mut killed_owned: Vec<i32> = Vec::new();
    for line in killed_text.lines() {
        let Some(p) = line
            .split("partition=obs/")
            .nth(1)
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if line.contains("partition assigned") {
            killed_owned.push(p);
        } else if line.contains("partition revoked") {
            killed_owned.retain(|&q| q != p);
        }
    }
    let mut errs = format!(
        "--- {} (SIGKILLed)\n{}",
        killed_log.display(),
        std::fs::read_to_string(&killed_log).unwrap_or_default()
    );
    stop_instances(children, &mut errs);
    let (seen, doubled) = enriched_output(&broker);
    // Kafka shows `read_committed` readers no record of an aborted transaction; tansu does.
    // A record seen twice must be one the killed instance read into the transaction it left
    // open: of a partition it owned when it died.
    let unexplained: Vec<i64> = doubled
        .iter()
        .copied()
        .filter(|&n| !killed_owned.contains(&observation(n as usize).0))
        .collect();
    assert!(
        unexplained.is_empty(),
        "doubled outside the killed instance's partitions {killed_owned:?}: {unexplained:?}\n{errs}"
    );
    every_observation_enriched(&seen, &errs);
    // The sources commit no offsets themselves: these came with the output transactions.
    assert_eq!(
        committed(&broker, group, "obs", OBS_PARTITIONS),
        done,
        "the group's committed offsets\n{errs}"
    );
}

/// At-least-once with an idempotent keyed sink across instances: three instances upsert the
/// enriched observations into one Postgres table keyed by `n`, one is SIGKILLed mid-stream and
/// a fourth joins later. Its partitions are read again from the group's committed offsets
/// (committed once each checkpoint is durable, after the upserts it covers), so some rows are
/// written twice, which the upsert makes harmless: the table ends with every observation once,
/// enriched as a single instance enriches it, and the offsets reach every partition's end.
#[test]
fn three_instances_upserting_into_postgres_one_killed_lose_nothing_and_keep_one_row_per_key() {
    let pg = watershed::testing::services::Postgres::shared();
    let _ = watershed::testing::postgres_fixtures::sink_options(pg); // database `sinks`
    let broker = Broker::start();
    fill_reference(&broker);
    broker.create_topic("obs", OBS_PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let group = "scale-out-upsert";
    let table = "enriched_group";
    let producer = produce_observations_in_waves(&broker);
    let sink = format!(
        "postgres: {{port: {}, user: cdc, database: sinks, table: {table}, key: [n], create_table: true}}",
        pg.port
    );
    let start_instance = |name: &str| -> (Child, PathBuf) {
        spawn_instance(
            &group_pipeline_to(&broker, dir.path(), name, group, &sink),
            dir.path().join(format!("{name}.log")),
            None,
            "off",
        )
    };
    // Rows in the table, once the first instance has created it.
    let rows = || -> usize {
        let exists = pg.sql(
            "sinks",
            &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'"),
        );
        if exists.trim() != "1" {
            return 0;
        }
        pg.sql("sinks", &format!("SELECT count(*) FROM {table}"))
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let rows_reach = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while rows() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut children = vec![start_instance("a")];
    rows_reach(200);
    children.push(start_instance("b"));
    children.push(start_instance("c"));
    rows_reach(900);
    let (mut killed, killed_log) = children.remove(1);
    signal(&killed, libc::SIGKILL);
    let _ = killed.wait();
    std::thread::sleep(Duration::from_secs(3));
    children.push(start_instance("d"));
    producer.join().unwrap();
    let done = offsets_reach_the_end(&broker, group);
    let mut errs = format!(
        "--- {} (SIGKILLed)\n{}",
        killed_log.display(),
        std::fs::read_to_string(&killed_log).unwrap_or_default()
    );
    stop_instances(children, &mut errs);
    let dump = pg.sql(
        "sinks",
        &format!("SELECT n, coalesce(owner, '-') FROM {table} ORDER BY n"),
    );
    let mut seen: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for line in dump.lines().filter(|l| !l.trim().is_empty()) {
        let (n, owner) = line.split_once('|').unwrap_or((line, "-"));
        let owner = owner.trim();
        let v = if owner == "-" {
            serde_json::json!({"owner": null})
        } else {
            serde_json::json!({ "owner": owner })
        };
        seen.insert(n.trim().parse().unwrap(), v);
    }
    every_observation_enriched(&seen, &errs);
    assert_eq!(
        committed(&broker, group, "obs", OBS_PARTITIONS),
        done,
        "the group's committed offsets\n{errs}"
    );
}
