//! `bench --case group`: the `kafka` case's enrichment job run by 1, 2, … instances of one
//! pipeline in one consumer group, all on this machine. The observations are spread over
//! `GROUP_PARTITIONS` partitions of `obs`; every instance reads the reference table's change
//! topic in full. The instances start together (their first rebalances are part of the run);
//! the run ends when the sinks together have written every observation. Reported per
//! instance count: wall events per second and events per CPU-second, both over the steady
//! part (between 20% and 80% of the output, summed over the instances' own counters and
//! CPU) and over the whole run (from the start to the last record out, table loads and
//! rebalances included), and the broker's CPU per CPU-second of the instances. The group's
//! session timeout is 6 s: tansu answers a new group's first join after about half of it
//! (23 s with librdkafka's default of 45 s, which would dwarf the run).

use std::path::Path;
use std::time::{Duration, Instant};

use super::kafka::{fill_spread, job_yaml};
use super::sample::{process_cpu, sink_records};
use crate::testing::services::Broker;

/// Partitions of the observation topic: enough for 3 instances to have 2 each.
const GROUP_PARTITIONS: i32 = 6;

/// One measured run of `k` instances.
struct Rate {
    per_wall: f64,
    per_cpu: f64,
    whole_per_wall: f64,
    whole_per_cpu: f64,
    broker_cpu: f64,
}

fn run_group(
    broker: &Broker,
    records: u64,
    dir: &Path,
    instances: usize,
    round: usize,
) -> anyhow::Result<Rate> {
    let name = format!("g{instances}-{round}");
    let yaml = job_yaml(
        "bench-group",
        &broker.addr,
        "",
        &format!("group: bench-{name}, properties: {{session.timeout.ms: 6000}}"),
        &format!("topic: out-{name}"),
    );
    let path = dir.join(format!("group-{name}.yaml"));
    std::fs::write(&path, yaml)?;
    let exe = std::env::current_exe()?;
    let (start, broker0) = (Instant::now(), process_cpu(broker.pid()));
    let mut children = Vec::new();
    for _ in 0..instances {
        children.push(super::process::spawn_serving(
            &exe,
            &path,
            std::process::Stdio::null(),
        )?);
    }
    let (low, high) = (records / 5, records * 4 / 5);
    let mut first: Option<(u64, f64, Instant)> = None;
    let mut last = first;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let end = loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut n = 0;
        let mut cpu = 0.0;
        let mut complete = true;
        for (child, port) in &mut children {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("an instance stopped early: {status}");
            }
            match (process_cpu(child.id()), sink_records(*port)) {
                (Some(c), Some(k)) => {
                    cpu += c;
                    n += k;
                }
                _ => complete = false,
            }
        }
        if !complete {
            continue;
        }
        if n >= low && n <= high {
            let sample = Some((n, cpu, Instant::now()));
            first = first.or(sample);
            last = sample;
        }
        if n >= records || Instant::now() > deadline {
            break (
                Instant::now(),
                cpu,
                process_cpu(broker.pid()).unwrap_or(f64::NAN),
            );
        }
    };
    for (child, _) in &mut children {
        // SAFETY: signalling a child this bench started.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (child, _) in &mut children {
        let _ = child.wait();
    }
    let (t_end, cpu_end, broker_end) = end;
    match (first, last) {
        (Some((n0, c0, t0)), Some((n1, c1, t1))) if n1 > n0 && c1 > c0 => Ok(Rate {
            per_wall: (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
            per_cpu: (n1 - n0) as f64 / (c1 - c0),
            whole_per_wall: records as f64 / (t_end - start).as_secs_f64(),
            whole_per_cpu: records as f64 / cpu_end,
            broker_cpu: broker0.map_or(f64::NAN, |b| (broker_end - b) / cpu_end),
        }),
        _ => anyhow::bail!("too few samples between 20% and 80% of the output"),
    }
}

pub(super) fn group_case(
    records: u64,
    rows: u64,
    counts: &[usize],
    rounds: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let snapshot = dir.join(format!("job-snapshot-{rows}.jsonl"));
    let stream = dir.join(format!("job-changes-{rows}.jsonl"));
    let events = dir.join(format!("job-events-{records}.jsonl"));
    super::job::write_reference(rows, records, &snapshot, &stream)?;
    super::job::write_events(records, rows, &events)?;
    let broker = Broker::start();
    broker.create_topic("obs", GROUP_PARTITIONS);
    broker.create_topic("bench.public.hosts", 1);
    fill_spread(&broker.addr, "obs", &events, GROUP_PARTITIONS)?;
    fill_spread(&broker.addr, "bench.public.hosts", &snapshot, 1)?;
    fill_spread(&broker.addr, "bench.public.hosts", &stream, 1)?;
    println!(
        "group: {records} observations on {GROUP_PARTITIONS} partitions, {rows} reference rows, broker tansu on {} (loopback), {rounds} rounds",
        broker.addr
    );
    println!(
        "{:<12} {:>12} {:>14} {:>14} {:>16} {:>16}",
        "instances",
        "events/s",
        "events/CPU-s",
        "whole events/s",
        "whole /CPU-s",
        "broker CPU/CPU-s"
    );
    for &k in counts {
        let mut rates = Vec::new();
        for round in 0..rounds {
            let r = run_group(&broker, records, dir, k, round)?;
            println!(
                "  round {round}, {k} instances: {:.0} events/s, {:.0} events/CPU-s (whole run {:.0}/s, {:.0}/CPU-s), broker {:.2} CPU/CPU-s",
                r.per_wall, r.per_cpu, r.whole_per_wall, r.whole_per_cpu, r.broker_cpu
            );
            rates.push(r);
        }
        let median = |f: fn(&Rate) -> f64| {
            let mut v: Vec<f64> = rates.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{k:<12} {:>12.0} {:>14.0} {:>14.0} {:>16.0} {:>16.2}",
            median(|r| r.per_wall),
            median(|r| r.per_cpu),
            median(|r| r.whole_per_wall),
            median(|r| r.whole_per_cpu),
            median(|r| r.broker_cpu)
        );
    }
    Ok(())
}
