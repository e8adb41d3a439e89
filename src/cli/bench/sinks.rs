//! `bench --case sinks`: rows per second from the demo pipeline into ClickHouse 18.16 and
//! Postgres 15 (started here on loopback, as the tests run them), at several batch sizes,
//! against the same rows into a file.
//!
//! The pipeline is `examples/demo.yaml` with its pacing taken out (the generator and the
//! change stream read as fast as they go) writing one stream — the observations that match a
//! CVE, with their KEV flags (`vulnerable.yes`, keyed by observation and CVE) — to one sink.
//! Each run is its own `watershed run` process; a run's CPU is the process's, the server's
//! CPU is read from `/proc` (Postgres: the postmaster with the backends it reaped). The rows
//! in the table are counted after each run and must equal the file's lines.

use std::path::Path;
use std::time::{Duration, Instant};

use super::process::run_pipeline;
use super::report::cpu_seconds;
use crate::testing::clickhouse_fixtures::ClickHouseServer;
use crate::testing::services::Postgres;

/// Columns written (those of `examples/demo-clickhouse.yaml`'s enriched observations).
const COLUMNS: &str = "[ts, observation_id, host, port, vendor, product, version, cve_id, cvss3_score, severity, kev_matched]";

/// CPU seconds of process `pid` and the children it has reaped.
fn server_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some(at) = stat.rfind(')') else {
        return f64::NAN;
    };
    let f: Vec<f64> = stat[at + 2..]
        .split_ascii_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<f64>() / ticks.max(1.0)
}

/// The demo without pacing, `observations` of them, its sinks replaced by `sink` (a sink
/// block's body, indented four spaces) on `vulnerable.yes`.
fn pipeline(observations: u64, sink: &str) -> anyhow::Result<String> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let text = std::fs::read_to_string(examples.join("demo.yaml"))?;
    let head = &text[..text
        .find("\nsinks:\n")
        .ok_or_else(|| anyhow::anyhow!("examples/demo.yaml has no sinks"))?];
    let mut head = head.replace("demo/", &format!("{}/demo/", examples.display()));
    for (from, to) in [
        ("      rate: 14 ", "      # no pacing "),
        ("rate: 12000 ", "rate: 10000000 "),
        ("count: 60000", &format!("count: {observations}")),
    ] {
        head = head.replace(from, to);
    }
    Ok(format!(
        "{head}\nsinks:\n  out:\n    input: vulnerable.yes\n    columns: {COLUMNS}\n{sink}"
    ))
}

struct Run {
    what: String,
    rows: u64,
    wall: f64,
    cpu: f64,
    server_cpu: f64,
}

fn timed(
    yaml: &str,
    dir: &Path,
    name: &str,
    server_pid: Option<u32>,
    count: impl Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<Run> {
    let (c0, s0) = (cpu_seconds(), server_pid.map_or(0.0, server_cpu));
    let t0 = Instant::now();
    run_pipeline(yaml, dir, name)?;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu, server) = (
        cpu_seconds() - c0,
        server_pid.map_or(f64::NAN, |p| server_cpu(p) - s0),
    );
    Ok(Run {
        what: name.to_string(),
        rows: count()?,
        wall,
        cpu,
        server_cpu: server,
    })
}

pub(super) fn sinks_case(observations: u64, dir: &Path) -> anyhow::Result<usize> {
    let mut runs = Vec::new();
    let file = dir.join("sinks-file.jsonl");
    let _ = std::fs::remove_file(&file);
    let yaml = pipeline(observations, &format!("    file: \"{}\"\n", file.display()))?;
    runs.push(timed(&yaml, dir, "file", None, || {
        Ok(std::fs::read_to_string(&file)?.lines().count() as u64)
    })?);
    let expected = runs[0].rows;

    let ch = ClickHouseServer::start();
    for batch in [1_000u64, 10_000, 100_000] {
        let table = format!("bench_{batch}");
        let yaml = pipeline(
            observations,
            &format!(
                "    clickhouse: {{url: \"{}\", table: {table}, key: [observation_id, cve_id], create_table: true, batch_rows: {batch}, batch_interval: 1s}}\n",
                ch.url()
            ),
        )?;
        let name = format!("clickhouse, batch_rows {batch}");
        runs.push(timed(&yaml, dir, &name, ch.pid(), || {
            Ok(ch
                .sql(&format!("SELECT count() FROM default.{table} FINAL"))
                .trim()
                .parse()?)
        })?);
    }
    drop(ch);

    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE bench OWNER cdc");
    for batch in [100u64, 1_000, 5_000] {
        let table = format!("bench_{batch}");
        let yaml = pipeline(
            observations,
            &format!(
                "    postgres: {{port: {}, user: cdc, database: bench, table: {table}, key: [observation_id, cve_id], create_table: true, batch_rows: {batch}}}\n",
                pg.port
            ),
        )?;
        let name = format!("postgres, batch_rows {batch}");
        runs.push(timed(&yaml, dir, &name, pg.pid(), || {
            Ok(pg
                .sql("bench", &format!("SELECT count(*) FROM {table}"))
                .trim()
                .parse()?)
        })?);
    }
    // Let the servers' last writes settle before they are dropped.
    std::thread::sleep(Duration::from_millis(100));

    println!(
        "\n## sinks: the demo's {observations} observations, unpaced; its vulnerable observations ({expected} rows) into one sink\n"
    );
    println!(
        "| sink | rows | rows/s (wall) | wall s | watershed CPU s | server CPU s | rows equal the file's |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let mut failures = 0;
    for r in &runs {
        let same = r.rows == expected;
        failures += usize::from(!same);
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.what,
            r.rows,
            r.rows as f64 / r.wall.max(1e-9),
            r.wall,
            r.cpu,
            if r.server_cpu.is_nan() {
                "—".to_string()
            } else {
                format!("{:.2}", r.server_cpu)
            },
            if same { "yes" } else { "NO" }
        );
    }
    Ok(failures)
}
