//! `bench --case kafka`: the enrichment job of `job` read from and written to Kafka. A
//! broker (tansu, as the tests run it) on loopback gets the observations on one partition
//! and the reference table's Debezium snapshot, updates and deletes on its change topic.
//! The ceiling is a plain loop in this process: an rdkafka consumer reading the partition,
//! the `job` ceiling's borrowed parse and hash lookup (the table loaded from the files
//! first), an rdkafka producer writing each joined record — measured from the first record
//! to the last acknowledgement. The pipeline (`watershed run`: Kafka source, gated lookup
//! enrichment, Kafka sink) is sampled from its own counters between 20% and 80% of its
//! output, and stopped once every record is out: at-least-once, and exactly-once with a
//! checkpoint every second (its steady state includes the transactions committed inside the
//! window; its whole run, the last one too). Reported: events per CPU-second of each process
//! (steady and whole run), wall events per second, and the broker's CPU while each ran.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::job;
use super::report::cpu_seconds;
use super::sample::{process_cpu, sink_records};
use crate::testing::services::Broker;

/// What one measured run gave.
struct Rate {
    /// Steady state (the ceiling: its whole loop).
    per_cpu: f64,
    per_wall: f64,
    broker_cpu: f64,
    /// The whole run, start, load and last commit included (the pipelines).
    whole_per_cpu: f64,
}

/// Sends `value` to `topic` (to `partition`, or by the partitioner), waiting while the
/// producer's queue is full.
fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    value: &[u8],
) -> anyhow::Result<()> {
    loop {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, _))
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Sends every line of `path` to `topic` (partition 0), batched.
fn fill(broker: &str, topic: &str, path: &Path) -> anyhow::Result<u64> {
    fill_spread(broker, topic, path, 1)
}

/// Sends line `i` of `path` to partition `i % partitions` of `topic`, batched.
pub(super) fn fill_spread(
    broker: &str,
    topic: &str,
    path: &Path,
    partitions: i32,
) -> anyhow::Result<u64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut line = Vec::with_capacity(1024);
    let mut n = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let partition = (n % partitions.max(1) as u64) as i32;
        send(&producer, topic, Some(partition), line.trim_ascii_end())?;
        n += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(n)
}

/// The job's pipeline through the brokers at `brokers`: `checkpoint` (a `checkpoint:` line,
/// or nothing), the observation source's `group` settings, the Kafka sink's `sink` settings.
pub(super) fn job_yaml(
    pipeline: &str,
    brokers: &str,
    checkpoint: &str,
    group: &str,
    sink: &str,
) -> String {
    format!(
        r#"name: {pipeline}
parallelism: 1
{checkpoint}enrichment: {{strategy: gated}}
sources:
  obs:
    kafka: {{brokers: "{brokers}", topics: [obs], {group}}}
    schema: {schema}
    event_time: {{field: ts, max_out_of_orderness: 5s}}
  ref:
    kafka: {{brokers: "{brokers}", format: debezium, topic_prefix: bench}}
    tables:
      hosts:
        key: [host]
        columns: {{host: string, owner: string, criticality: int, site: string}}
operators:
  join:
    inputs: [obs, ref.hosts]
    enrich: {{key: {{host: host}}, columns: [owner, criticality, site], mode: lookup}}
sinks:
  out:
    input: join
    kafka: {{brokers: "{brokers}", {sink}, properties: {{linger.ms: 5}}}}
"#,
        schema = job::SCHEMA,
    )
}

/// The plain consumer → join → producer loop over `records` observations.
fn ceiling(
    broker: &Broker,
    records: u64,
    snapshot: &Path,
    stream: &Path,
    out_topic: &str,
) -> anyhow::Result<Rate> {
    let table = job::load_reference(snapshot, stream)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "bench-ceiling")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("obs", 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let (cpu0, wall0, broker0) = (cpu_seconds(), Instant::now(), process_cpu(broker.pid()));
    let mut buf = Vec::with_capacity(2048);
    let mut n = 0;
    while n < records {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        buf.clear();
        job::join_line(
            job::Mode::Lookup,
            &table,
            m.payload().unwrap_or_default(),
            &mut buf,
        )?;
        send(&producer, out_topic, None, &buf)?;
        producer.poll(Duration::ZERO);
        n += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    let cpu = cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    Ok(Rate {
        per_cpu: n as f64 / cpu,
        whole_per_cpu: n as f64 / cpu,
        per_wall: n as f64 / wall,
        broker_cpu: process_cpu(broker.pid())
            .zip(broker0)
            .map_or(f64::NAN, |(a, b)| (a - b) / cpu),
    })
}

/// The pipeline, sampled between 20% and 80% of its output, stopped when all is out;
/// `exactly_once`: with a checkpoint every second and the sink's transactions.
fn pipeline(
    broker: &Broker,
    records: u64,
    dir: &Path,
    round: usize,
    exactly_once: bool,
) -> anyhow::Result<Rate> {
    let (checkpoint, guarantee, name) = if exactly_once {
        (
            format!(
                "checkpoint: {{interval: 1s, dir: \"{}\"}}\n",
                dir.join(format!("kafka-checkpoints-{round}")).display()
            ),
            "exactly_once",
            format!("eo-{round}"),
        )
    } else {
        (String::new(), "at_least_once", format!("alo-{round}"))
    };
    let yaml = job_yaml(
        "bench-kafka",
        &broker.addr,
        &checkpoint,
        &format!("group: bench-{name}"),
        &format!("topic: out-{name}, guarantee: {guarantee}"),
    );
    let path = dir.join(format!("kafka-{name}.yaml"));
    std::fs::write(&path, yaml)?;
    let (mut child, port) = super::process::spawn_serving(
        &std::env::current_exe()?,
        &path,
        std::process::Stdio::null(),
    )?;
    let (low, high) = (records / 5, records * 4 / 5);
    let mut first: Option<(u64, f64, Instant, f64)> = None;
    let mut last = first;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let broker_cpu = process_cpu(broker.pid()).unwrap_or(f64::NAN);
        let (Some(cpu), Some(n)) = (process_cpu(child.id()), sink_records(port)) else {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the pipeline stopped early: {status}");
            }
            continue;
        };
        if n >= low && n <= high {
            let sample = Some((n, cpu, Instant::now(), broker_cpu));
            first = first.or(sample);
            last = sample;
        }
        if n >= records || Instant::now() > deadline {
            break;
        }
    }
    // SAFETY: signalling the child this bench started, then reaping it with its resource
    // use (the whole run's CPU, the last checkpoint and commit included).
    let whole_cpu = unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    match (first, last) {
        (Some((n0, c0, t0, b0)), Some((n1, c1, t1, b1))) if n1 > n0 && c1 > c0 => Ok(Rate {
            whole_per_cpu: records as f64 / whole_cpu,
            per_cpu: (n1 - n0) as f64 / (c1 - c0),
            per_wall: (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
            broker_cpu: (b1 - b0) / (c1 - c0),
        }),
        _ => anyhow::bail!("too few samples between 20% and 80% of the output"),
    }
}

pub(super) fn kafka_case(records: u64, rows: u64, rounds: usize, dir: &Path) -> anyhow::Result<()> {
    let snapshot = dir.join(format!("job-snapshot-{rows}.jsonl"));
    let stream = dir.join(format!("job-changes-{rows}.jsonl"));
    let events = dir.join(format!("job-events-{records}.jsonl"));
    job::write_reference(rows, records, &snapshot, &stream)?;
    job::write_events(records, rows, &events)?;
    let broker = Broker::start();
    broker.create_topic("obs", 1);
    broker.create_topic("bench.public.hosts", 1);
    fill(&broker.addr, "obs", &events)?;
    fill(&broker.addr, "bench.public.hosts", &snapshot)?;
    fill(&broker.addr, "bench.public.hosts", &stream)?;
    println!(
        "kafka: {records} observations, {rows} reference rows, broker tansu on {} (loopback), {rounds} rounds",
        broker.addr
    );
    println!(
        "{:<40} {:>14} {:>12} {:>16} {:>16}",
        "", "events/CPU-s", "events/s", "broker CPU/CPU-s", "whole run /CPU-s"
    );
    let mut ceilings = Vec::new();
    let mut pipelines = Vec::new();
    let mut transactional = Vec::new();
    for round in 0..rounds {
        let c = ceiling(
            &broker,
            records,
            &snapshot,
            &stream,
            &format!("ceiling-{round}"),
        )?;
        let p = pipeline(&broker, records, dir, round, false)?;
        let e = pipeline(&broker, records, dir, round, true)?;
        println!(
            "round {round}: ceiling {:>10.0} {:>12.0} | pipeline {:>10.0} {:>12.0} ({:.0}% of the ceiling) | exactly once {:>10.0} {:>12.0}",
            c.per_cpu,
            c.per_wall,
            p.per_cpu,
            p.per_wall,
            100.0 * p.per_cpu / c.per_cpu,
            e.per_cpu,
            e.per_wall
        );
        ceilings.push(c);
        pipelines.push(p);
        transactional.push(e);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |name: &str, rates: &[Rate]| {
        let mut cpu: Vec<f64> = rates.iter().map(|r| r.per_cpu).collect();
        let mut wall: Vec<f64> = rates.iter().map(|r| r.per_wall).collect();
        let mut b: Vec<f64> = rates.iter().map(|r| r.broker_cpu).collect();
        let mut whole: Vec<f64> = rates.iter().map(|r| r.whole_per_cpu).collect();
        let (cpu, wall, b, whole) = (
            median(&mut cpu),
            median(&mut wall),
            median(&mut b),
            median(&mut whole),
        );
        println!("{name:<40} {cpu:>14.0} {wall:>12.0} {b:>16.2} {whole:>16.0}");
        cpu
    };
    let c = row("ceiling: rdkafka consume→join→produce", &ceilings);
    let p = row("pipeline, parallelism 1, at_least_once", &pipelines);
    row("pipeline, exactly_once (checkpoint 1 s)", &transactional);
    println!(
        "pipeline at {:.0}% of the ceiling per CPU-second (median of {rounds})",
        100.0 * p / c
    );
    Ok(())
}
