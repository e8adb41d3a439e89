//! `bench --case postgres`: the native Postgres source against real Debezium 3.6.3 on one
//! database (Postgres 15 and the broker started here, on loopback, as the tests run them).
//!
//! A table of `--pg-rows` rows (an int8 key, text, numeric, timestamptz and a 100-character
//! payload) is read three ways, each measured from its first row to its last:
//! - the snapshot: the native source (in this process: its CPU is this process's) reading
//!   into change rows, with one snapshot worker and with two, against Debezium's initial snapshot (its JVM's CPU, from
//!   `/proc`; Debezium's output is JSON change events produced to a Kafka topic, which is
//!   how it is deployed, so producing is part of its cost);
//! - streaming: `--pg-changes` single-row updates committed in transactions of 1,000, read
//!   by each from its slot once committed (the catch-up rate);
//! - latency, native only: single-row updates committed at a fixed rate (half the measured
//!   streaming rate, at most 2,000/s) for 5 s, each timed from its commit timestamp (the
//!   database's clock, same machine) to the moment the source hands its change over.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::sample::process_cpu;
use crate::cdc::TableId;
use crate::cdc::stream::{CdcTable, TableConfig};
use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::sources::postgres::source::{PostgresSource, PostgresSpec};
use crate::sources::postgres::wire::{ConnectOptions, Connection, TlsMode};
use crate::testing::services::{Broker, Debezium, Postgres};
use crate::types::{DataType, Field, Schema, Value};

fn wall_ms() -> i64 {
    use crate::time::clock::Clock;
    crate::time::clock::SystemClock.now_ms()
}

fn options(port: u16) -> ConnectOptions {
    ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        user: "cdc".into(),
        password: None,
        database: "cdc".into(),
        application_name: "watershed bench".into(),
        connect_timeout: Duration::from_secs(10),
        tls: TlsMode::Disable,
        ca_file: None,
    }
}

fn source(
    pg: &Postgres,
    slot: &str,
    chunk_rows: usize,
    snapshot_workers: usize,
) -> anyhow::Result<PostgresSource> {
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("name", DataType::String),
        Field::new("score", DataType::Decimal),
        Field::new("updated", DataType::Timestamp),
        Field::new("payload", DataType::String),
    ]));
    let tables = vec![CdcTable {
        port: "rows".into(),
        id: TableId::new("public", "bench_rows"),
        config: TableConfig::new(schema).with_key(&["id"]),
    }];
    Ok(PostgresSource::new(PostgresSpec {
        publication: "bench_native".into(),
        chunk_rows,
        snapshot_workers,
        poll_interval: Duration::from_millis(1),
        heartbeat_interval: None,
        max_retained_wal: u64::MAX,
        ..PostgresSpec::new("bench", options(pg.port), slot, tables)
    })?)
}

/// One measured read: rows, wall seconds, CPU seconds.
struct Measured {
    rows: u64,
    wall: f64,
    cpu: f64,
}

impl Measured {
    fn line(&self, what: &str) -> String {
        format!(
            "| {what} | {} | {:.2} | {:.2} | {:.0} | {:.0} |",
            self.rows,
            self.wall,
            self.cpu,
            self.rows as f64 / self.cpu.max(1e-9),
            self.rows as f64 / self.wall.max(1e-9)
        )
    }
}

/// Reads change rows (data only: the snapshot end excluded) until `want` more arrived.
fn read_rows(
    s: &mut PostgresSource,
    out: &mut ReadBuffers,
    want: u64,
    mut each: impl FnMut(&[Value], i64),
) -> anyhow::Result<Measured> {
    let cpu = || process_cpu(std::process::id()).unwrap_or(0.0);
    let (wall0, cpu0) = (Instant::now(), cpu());
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while got < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {got} of {want} rows in 30 minutes"
        );
        if let ReadStatus::Data { .. } = s.read(out, 4096, wall_ms())? {
            // When the rows are handed over.
            let now = wall_ms();
            let batch = out.extra[0].take();
            for (row, _) in batch.rows() {
                if row[0].as_str() == Some(crate::cdc::rows::SNAPSHOT_END) {
                    continue;
                }
                got += 1;
                each(row, now);
            }
            out.records.take();
        }
    }
    Ok(Measured {
        rows: got,
        wall: wall0.elapsed().as_secs_f64(),
        cpu: cpu() - cpu0,
    })
}

/// Counts the records of `topic` (all partitions, from the start) as they arrive: the
/// test broker's high watermark is not exact for batches, so they are read.
struct TopicCount {
    consumer: BaseConsumer,
    n: u64,
}

impl TopicCount {
    fn new(broker: &Broker, topic: &str) -> anyhow::Result<TopicCount> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .set("group.id", "bench-count")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(TopicCount { consumer, n: 0 })
    }

    fn poll(&mut self) -> u64 {
        while let Some(m) = self.consumer.poll(Duration::from_millis(20)) {
            if m.is_ok() {
                self.n += 1;
            }
        }
        self.n
    }
}

/// Waits until `want` more records than `base` are on the topic; Debezium's CPU and the wall
/// time from the first record (or from now, `from_now`) to the last.
fn debezium_until(
    count: &mut TopicCount,
    pid: u32,
    base: u64,
    want: u64,
    from_now: bool,
) -> anyhow::Result<Measured> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut start: Option<(Instant, f64)> =
        from_now.then(|| (Instant::now(), process_cpu(pid).unwrap_or(0.0)));
    loop {
        let n = count.poll().saturating_sub(base);
        if start.is_none() && n > 0 {
            start = Some((Instant::now(), process_cpu(pid).unwrap_or(0.0)));
        }
        if n >= want {
            let (t0, c0) = start.unwrap_or((Instant::now(), 0.0));
            return Ok(Measured {
                rows: n,
                wall: t0.elapsed().as_secs_f64(),
                cpu: process_cpu(pid).unwrap_or(0.0) - c0,
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Debezium: {n} of {want} in 30 minutes"
        );
    }
}

/// Commits `changes` single-row updates, 1,000 per transaction.
fn update_rows(sql: &mut Connection, rows: u64, changes: u64) -> anyhow::Result<()> {
    let mut done = 0;
    while done < changes {
        let n = (changes - done).min(1000);
        // Rows spread over the table, each updated once per statement.
        sql.query(&format!(
            "UPDATE bench_rows SET score = score + 1, updated = clock_timestamp() \
             WHERE id IN (SELECT ((g * 7919) % {rows}) + 1 FROM generate_series({done}, {}) g)",
            done + n - 1
        ))?;
        done += n;
    }
    Ok(())
}

pub(super) fn postgres_case(rows: u64, changes: u64) -> anyhow::Result<()> {
    println!(
        "\n## postgres: the native source against Debezium 3.6.3, {rows} rows, {changes} changes\n"
    );
    let pg = Postgres::start();
    let broker = Broker::start();
    let mut sql = Connection::connect(&options(pg.port), false)?;
    sql.query(&format!(
        "CREATE TABLE bench_rows (id int8 PRIMARY KEY, name text, score numeric(10,2), \
         updated timestamptz, payload text);
         INSERT INTO bench_rows SELECT i, 'host-' || i, (i % 1000) / 10.0, \
         '2026-01-01'::timestamptz + i * interval '1 second', repeat(md5(i::text), 3) || 'xxxx' \
         FROM generate_series(1, {rows}) i;"
    ))?;
    sql.query("VACUUM ANALYZE bench_rows")?;
    println!("| reader | rows | wall s | CPU s | rows per CPU-second | rows per second |");
    println!("|---|---:|---:|---:|---:|---:|");

    // The native source's snapshot split over two workers (its slot dropped after), then
    // the source itself: snapshot, then the changes.
    {
        let mut two = source(&pg, "bench_native_2w", 10_000, 2)?;
        two.connect_ports(&[false, false, true]);
        let mut out = ReadBuffers::for_source(&two);
        let snap = read_rows(&mut two, &mut out, rows, |_, _| {})?;
        println!("{}", snap.line("native, snapshot, 2 workers"));
    }
    let drop_slot = "SELECT pg_drop_replication_slot('bench_native_2w')";
    let deadline = Instant::now() + Duration::from_secs(10);
    while sql.query(drop_slot).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut native = source(&pg, "bench_native", 10_000, 1)?;
    native.connect_ports(&[false, false, true]);
    let mut out = ReadBuffers::for_source(&native);
    let snap = read_rows(&mut native, &mut out, rows, |_, _| {})?;
    println!("{}", snap.line("native, snapshot"));
    // Streaming starts at the first read after the snapshot.
    let _ = native.read(&mut out, 1, wall_ms())?;
    out.extra[0].take();
    update_rows(&mut sql, rows, changes)?;
    let stream = read_rows(&mut native, &mut out, changes, |_, _| {})?;
    println!("{}", stream.line("native, streaming"));

    // Debezium on its own slot: the snapshot (the changes above are in the table already),
    // then the same number of changes.
    let mut count = TopicCount::new(&broker, "bench.public.bench_rows")?;
    let debezium = Debezium::start(
        &format!(
            "name=bench\nconnector.class=io.debezium.connector.postgresql.PostgresConnector\n\
             topic.prefix=bench\ndatabase.hostname=127.0.0.1\ndatabase.port={}\n\
             database.user=cdc\ndatabase.password=cdc\ndatabase.dbname=cdc\n\
             plugin.name=pgoutput\nslot.name=bench_debezium\npublication.name=bench_debezium\n\
             publication.autocreate.mode=filtered\ntable.include.list=public.bench_rows\n\
             snapshot.mode=initial\ndecimal.handling.mode=string\n\
             producer.batch.size=1048576\nproducer.linger.ms=20\n\
             producer.max.in.flight.requests.per.connection=5\n\
             converter.schemas.enable=false\nkey.converter.schemas.enable=false\n\
             value.converter.schemas.enable=false\n",
            pg.port
        ),
        &broker.addr,
    );
    let pid = debezium.pid();
    // From the engine's start (its JVM is up): the topic appears with the first records.
    let dsnap = debezium_until(&mut count, pid, 0, rows, true)?;
    println!("{}", dsnap.line("Debezium, snapshot (to Kafka)"));
    let base = count.poll();
    update_rows(&mut sql, rows, changes)?;
    let dstream = debezium_until(&mut count, pid, base, changes, true)?;
    println!("{}", dstream.line("Debezium, streaming (to Kafka)"));
    drop(debezium);
    println!(
        "\nnative / Debezium per CPU-second: snapshot {:.1}x, streaming {:.1}x",
        (snap.rows as f64 / snap.cpu) / (dsnap.rows as f64 / dsnap.cpu.max(1e-9)),
        (stream.rows as f64 / stream.cpu) / (dstream.rows as f64 / dstream.cpu.max(1e-9)),
    );

    // The changes made for Debezium reached the native slot too: read them first.
    read_rows(&mut native, &mut out, changes, |_, _| {})?;
    // Latency at half the native streaming rate (at most 2,000 commits a second).
    let rate = (stream.rows as f64 / stream.wall / 2.0).clamp(50.0, 2000.0);
    let n = (rate * 5.0) as u64;
    let port = pg.port;
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut c = Connection::connect(&options(port), false)?;
        let t0 = Instant::now();
        for i in 0..n {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            c.query(&format!(
                "UPDATE bench_rows SET updated = clock_timestamp() WHERE id = {}",
                i % rows + 1
            ))?;
        }
        Ok(())
    });
    let mut lat: Vec<i64> = Vec::with_capacity(n as usize);
    read_rows(&mut native, &mut out, n, |row, now| {
        // `updated` is set in the committing statement, just before the commit.
        if let Some(Value::Timestamp(us)) = row.get(5 + 3) {
            lat.push(now - us / 1000);
        }
    })?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    if !lat.is_empty() {
        println!(
            "\nnative, statement → change record at {rate:.0} commits/s ({} changes): p50 {} ms, p99 {} ms, max {} ms",
            lat.len(),
            pct(0.5),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
    Ok(())
}
