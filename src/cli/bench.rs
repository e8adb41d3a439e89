//! `watershed bench`: throughput of real pipelines (compiled from YAML, run by the runtime)
//! next to the raw ceiling measured in the same run — a plain loop that produces or parses
//! the same records, aggregates them the same way and writes the same output, with no
//! runtime around it. Prints events per CPU-second and per wall-second, the ratio to the
//! ceiling, and checks that the pipeline's output equals the loop's. Each pipeline runs as its own
//! `watershed run` process (CPU time from `getrusage` of the waited-for child), as a user runs it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;

use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::format::json::JsonEncoder;
use crate::sources::generator::{GeneratorSource, GeneratorSpec};
use crate::types::{DataType, Field, Schema, SchemaRef, Value};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Records per run of the file case (each about 600 bytes on disk).
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Records per run of the generator case (cheap records: more are needed for a stable
    /// measurement).
    #[arg(long, default_value_t = 10_000_000)]
    pub generator_records: u64,
    /// Parallelism values to run the pipelines at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub parallelism: Vec<usize>,
    /// Which benchmark: `generator`, `file`, `enrich`, `all` (those three), `lookup` (the
    /// reference table alone: one-by-one against batched lookups), `checkpoint` (the enrich
    /// case checkpointing every 10 s and every 1 s, and its restore) or `bootstrap` (the
    /// enrich case started from a bootstrapped savepoint instead of behind a gate).
    #[arg(long, default_value = "all")]
    pub case: String,
    /// Reference table sizes of the enrich case.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub reference_rows: Vec<u64>,
    /// Keep inputs and outputs here (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rounds of the enrich case: each round runs the plain, the enrichment and the
    /// twice-the-events pipelines one after the other; the table shows the median round, so
    /// that a slow spell of a shared machine weighs on one round and not on one column.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Where the checkpoint case keeps the reference table: `memory` or `disk` (the
    /// pipeline's `state.backend`).
    #[arg(long, default_value = "memory")]
    pub state: String,
}

const HOSTS: u32 = 1000;
const START: &str = "2026-01-01T00:00:00Z";
const START_MS: i64 = 1_767_225_600_000;
const WINDOW_MS: i64 = 60_000;

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    u
}

/// CPU time (user + system) so far of this process and of the pipeline runs it waited for,
/// in seconds.
fn cpu_seconds() -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            let u = rusage(who);
            tv(u.ru_utime) + tv(u.ru_stime)
        })
        .sum()
}

/// The peak resident memory of this process or of the largest pipeline run, in MB.
fn peak_rss_mb() -> f64 {
    let peak = rusage(libc::RUSAGE_SELF)
        .ru_maxrss
        .max(rusage(libc::RUSAGE_CHILDREN).ru_maxrss);
    peak as f64 / 1024.0
}

struct Measure {
    cpu: f64,
    wall: f64,
}

fn measure(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Measure> {
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    f()?;
    Ok(Measure {
        cpu: cpu_seconds() - c0,
        wall: t0.elapsed().as_secs_f64(),
    })
}

fn output_schema(with_bytes: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("host", DataType::String),
        Field::new("window_start", DataType::Timestamp),
        Field::new("window_end", DataType::Timestamp),
        Field::new("events", DataType::Int),
    ];
    if with_bytes {
        fields.push(Field::new("bytes", DataType::Int));
    }
    fields.push(Field::new("revision", DataType::Int));
    Arc::new(Schema::new(fields))
}

/// Writes the aggregated windows the way the window operator does.
fn write_windows(
    path: &Path,
    windows: HashMap<(Value, i64), (i64, i64)>,
    with_bytes: bool,
) -> anyhow::Result<()> {
    let encoder = JsonEncoder::new(output_schema(with_bytes));
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut buf = Vec::new();
    for ((host, start), (count, bytes)) in windows {
        buf.clear();
        let mut row = vec![
            host,
            Value::Timestamp(start * 1000),
            Value::Timestamp((start + WINDOW_MS) * 1000),
            Value::Int(count),
        ];
        if with_bytes {
            row.push(Value::Int(bytes));
        }
        row.push(Value::Int(0));
        encoder.encode_row(&row, &mut buf);
        buf.push(b'\n');
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(())
}

fn sorted_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

fn generator_spec(records: u64, partitions: u32) -> GeneratorSpec {
    GeneratorSpec {
        count: Some(records),
        hosts: HOSTS,
        skew: 0.5,
        jitter: std::time::Duration::from_secs(2),
        start_ms: Some(START_MS),
        interval: Some(std::time::Duration::from_millis(1)),
        partitions,
        ..GeneratorSpec::default()
    }
}

/// The ceiling for the generator case: generate, count per (host, minute), write.
fn generator_ceiling(records: u64, out: &Path) -> anyhow::Result<()> {
    let mut g = GeneratorSource::new("obs", generator_spec(records, 1), 0, 1);
    let mut bufs = ReadBuffers::for_source(&g);
    let mut windows: HashMap<(Value, i64), (i64, i64)> = HashMap::new();
    loop {
        match g.read(&mut bufs, 1024, 0)? {
            ReadStatus::Finished => break,
            _ => {
                for (row, t) in bufs.records.rows() {
                    let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
                    windows.entry((row[1].clone(), start)).or_insert((0, 0)).0 += 1;
                }
                bufs.records.clear();
            }
        }
    }
    write_windows(out, windows, false)
}

#[derive(Deserialize)]
struct Line<'a> {
    ts: &'a str,
    host: &'a str,
    #[allow(dead_code)]
    port: i64,
    #[allow(dead_code)]
    product: &'a str,
    bytes: i64,
}

/// The ceiling for the file case: read lines, parse the fields the pipeline reads with
/// serde, count and sum per (host, minute), write.
fn file_ceiling(inputs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut line = Vec::new();
    let mut windows: HashMap<(Value, i64), (i64, i64)> = HashMap::new();
    for input in inputs {
        let mut reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(input)?);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let rec: Line = serde_json::from_slice(line.trim_ascii_end())?;
            let t = chrono::DateTime::parse_from_rfc3339(rec.ts)?.timestamp_millis();
            let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
            let w = windows
                .entry((Value::from(rec.host), start))
                .or_insert((0, 0));
            w.0 += 1;
            w.1 += rec.bytes;
        }
    }
    write_windows(out, windows, true)
}

/// Input files of the file case: records alternate between them (one partition each).
const FILES: usize = 2;

fn input_files(dir: &Path) -> Vec<PathBuf> {
    (0..FILES)
        .map(|i| dir.join(format!("observations-{i}.jsonl")))
        .collect()
}

/// Writes `records` observation lines of about 600 bytes (fields the pipeline does not read
/// included, as in real scan data), alternating between the files.
fn write_input(records: u64, paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut g = GeneratorSource::new("obs", generator_spec(records, 1), 0, 1);
    let mut bufs = ReadBuffers::for_source(&g);
    let mut outs = paths
        .iter()
        .map(|p| Ok(BufWriter::new(std::fs::File::create(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let banner = "x".repeat(315);
    let mut next = 0;
    loop {
        match g.read(&mut bufs, 1024, 0)? {
            ReadStatus::Finished => break,
            _ => {
                for (row, t) in bufs.records.rows() {
                    let files = outs.len();
                    let out = &mut outs[next];
                    next = (next + 1) % files;
                    let ts = crate::cli::explain::format_time(t);
                    let host = row[1].as_str().unwrap_or_default();
                    let product = row[3].as_str().unwrap_or_default();
                    let version = row[4].as_str().unwrap_or_default();
                    writeln!(
                        out,
                        "{{\"ts\":\"{ts}\",\"host\":\"{host}\",\"port\":{},\"product\":\"{product}\",\
                         \"version\":\"{version}\",\"bytes\":{},\"os\":\"Linux 3.10 - 4.11\",\
                         \"cpe\":\"cpe:/a:{product}:{product}:{version}\",\"tags\":[\"tcp\",\"open\",\"syn-ack\"],\
                         \"scanner\":{{\"name\":\"nmap\",\"version\":\"7.80\",\"args\":\"-sV -O -T4\"}},\
                         \"banner\":\"{banner}\"}}",
                        row[2].as_i64().unwrap_or_default(),
                        row[5].as_i64().unwrap_or_default(),
                    )?;
                }
                bufs.records.clear();
            }
        }
    }
    for mut out in outs {
        out.flush()?;
    }
    Ok(())
}

/// Runs a pipeline the way a user does, as its own `watershed run` process, so that one
/// run's heap and threads do not weigh on the next one's numbers.
fn run_pipeline(yaml: &str, dir: &Path, name: &str) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    let p = path.display().to_string();
    watershed(&["run", "--log", "error", "--metrics-addr", "off", &p]).map(|_| ())
}

thread_local! {
    /// The peak resident memory of the last run `watershed` waited for, in MB, as the run's
    /// summary reports it (a child's `getrusage` would count this process's memory too).
    static LAST_RUN_PEAK_MB: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Runs this binary with `args` and waits; returns its stderr (the run's summary). Its peak
/// resident memory is in `LAST_RUN_PEAK_MB`.
fn watershed(args: &[&str]) -> anyhow::Result<String> {
    let run = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    anyhow::ensure!(
        run.status.success(),
        "`watershed {}` failed ({}): {stderr}",
        args.join(" "),
        run.status
    );
    let peak = stderr.lines().find_map(|l| {
        l.trim()
            .strip_prefix("peak resident memory ")?
            .strip_suffix(" MB")?
            .parse()
            .ok()
    });
    LAST_RUN_PEAK_MB.set(peak.unwrap_or(f64::NAN));
    Ok(stderr)
}

/// The enrich case's pipeline: the observation files looked up in the CDC table of
/// `reference` (gated), or passed straight through without one; `header` goes before the
/// sources (e.g. a `checkpoint:` block).
fn enrich_yaml(header: &str, events: &[&Path], reference: Option<&Path>, out: &Path) -> String {
    let paths: Vec<String> = events
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    let source = format!(
        "  obs:\n    file: {{paths: [{}]}}\n    schema: {{ts: timestamp, host: string, port: int, product: string, version: string, bytes: int}}\n    event_time: {{field: ts, max_out_of_orderness: 5s}}\n",
        paths.join(", ")
    );
    let Some(reference) = reference else {
        return format!(
            "name: bench-plain\nparallelism: 1\n{header}sources:\n{source}sinks:\n  out: {{input: obs, file: \"{}\"}}\n",
            out.display()
        );
    };
    format!(
        "name: bench-enrich\nparallelism: 1\nenrichment: {{strategy: gated}}\n{header}sources:\n{source}  ref:\n    file: {{format: debezium, snapshot: [\"{}\"]}}\n    tables:\n      hosts: {{key: [host], columns: {{host: string, owner: string, criticality: int, site: string}}}}\noperators:\n  enrich:\n    inputs: [obs, ref.hosts]\n    enrich: {{key: {{host: host}}}}\nsinks:\n  out: {{input: enrich, file: \"{}\"}}\n",
        reference.display(),
        out.display()
    )
}

fn report(name: &str, records: u64, ceiling: &Measure, runs: &[(usize, Measure, bool)]) {
    let per_cpu = |m: &Measure| records as f64 / m.cpu.max(1e-9);
    let per_wall = |m: &Measure| records as f64 / m.wall.max(1e-9);
    println!("\n## {name} ({records} records)");
    println!(
        "| run | events/CPU-s | events/wall-s | CPU s | wall s | vs ceiling (per CPU-s) | output equals ceiling |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| plain loop (ceiling) | {:.0} | {:.0} | {:.2} | {:.2} | 100% | — |",
        per_cpu(ceiling),
        per_wall(ceiling),
        ceiling.cpu,
        ceiling.wall
    );
    for (p, m, same) in runs {
        println!(
            "| pipeline, parallelism {p} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0}% | {} |",
            per_cpu(m),
            per_wall(m),
            m.cpu,
            m.wall,
            100.0 * per_cpu(m) / per_cpu(ceiling),
            if *same { "yes" } else { "NO" }
        );
    }
}

/// Runs the selected benchmarks and prints markdown tables.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // Without `--dir`, everything is written to a temporary directory removed at the end
    // (also on errors): the inputs take gigabytes.
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("watershed-bench-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let n = args.records;
    println!(
        "watershed bench: {} cores available, records {n}",
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    let mut failures = 0;
    if args.case == "all" || args.case == "generator" {
        let n = args.generator_records;
        let ceiling_out = dir.join("generator-ceiling.jsonl");
        let ceiling = measure(|| generator_ceiling(n, &ceiling_out))?;
        let expected = sorted_lines(&ceiling_out)?;
        let mut runs = Vec::new();
        for &p in &args.parallelism {
            let out = dir.join(format!("generator-p{p}.jsonl"));
            let yaml = format!(
                "name: bench-generator\nparallelism: {p}\nsources:\n  obs:\n    generator: {{count: {n}, hosts: {HOSTS}, skew: 0.5, jitter: 2s, start: \"{START}\", interval: 1ms, partitions: {p}}}\n    parallelism: {p}\n    event_time: {{max_out_of_orderness: 5s}}\noperators:\n  counts:\n    inputs: [obs]\n    window: {{key: [host], tumbling: 1m, aggregates: {{events: count}}}}\nsinks:\n  out: {{input: counts, file: \"{}\"}}\n",
                out.display()
            );
            let m = measure(|| run_pipeline(&yaml, &dir, &format!("generator-p{p}")))?;
            let same = sorted_lines(&out)? == expected;
            failures += usize::from(!same);
            runs.push((p, m, same));
        }
        report(
            "generator → keyed tumbling count (1 min, 1000 hosts) → file",
            n,
            &ceiling,
            &runs,
        );
    }
    if args.case == "all" || args.case == "file" {
        let inputs = input_files(&dir);
        write_input(n, &inputs)?;
        let size: u64 = inputs
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()))
            .sum::<std::io::Result<u64>>()?;
        println!(
            "\ninput: {} files like {} ({} bytes/line on average)",
            inputs.len(),
            inputs[0].display(),
            size / n.max(1)
        );
        let ceiling_out = dir.join("file-ceiling.jsonl");
        let ceiling = measure(|| file_ceiling(&inputs, &ceiling_out))?;
        let expected = sorted_lines(&ceiling_out)?;
        let mut runs = Vec::new();
        for &p in &args.parallelism {
            let out = dir.join(format!("file-p{p}.jsonl"));
            let yaml = format!(
                "name: bench-file\nparallelism: {p}\nsources:\n  obs:\n    file: {{paths: [\"{}\"]}}\n    parallelism: {p}\n    schema: {{ts: timestamp, host: string, port: int, product: string, bytes: int}}\n    event_time: {{field: ts, max_out_of_orderness: 5s}}\noperators:\n  counts:\n    inputs: [obs]\n    window: {{key: [host], tumbling: 1m, aggregates: {{events: count, bytes: sum(bytes)}}}}\nsinks:\n  out: {{input: counts, file: \"{}\"}}\n",
                dir.join("observations-*.jsonl").display(),
                out.display()
            );
            let m = measure(|| run_pipeline(&yaml, &dir, &format!("file-p{p}")))?;
            let same = sorted_lines(&out)? == expected;
            failures += usize::from(!same);
            runs.push((p, m, same));
        }
        report(
            "file (JSON lines) → keyed tumbling count+sum (1 min) → file",
            n,
            &ceiling,
            &runs,
        );
    }
    if args.case == "checkpoint" {
        for &rows in &args.reference_rows {
            failures += checkpoint_case(n, rows, &args.state, &dir)?;
        }
    }
    if args.case == "bootstrap" {
        for &rows in &args.reference_rows {
            failures += bootstrap_case(n, rows, &dir)?;
        }
    }
    if args.case == "lookup" {
        for &rows in &args.reference_rows {
            lookup_case(rows);
        }
    }
    if args.case == "all" || args.case == "enrich" {
        for &rows in &args.reference_rows {
            failures += enrich_case(n, rows, args.rounds.max(1), &dir)?;
        }
    }
    println!(
        "\npeak RSS of the whole bench process: {:.0} MB",
        peak_rss_mb()
    );
    if failures > 0 {
        anyhow::bail!("{failures} pipeline run(s) produced output different from the ceiling loop");
    }
    Ok(())
}

/// The reference row of host `i` in the enrich case: (host, owner, criticality, site).
fn reference_row(i: u64) -> (String, String, i64, String) {
    (
        host_name(i),
        format!("team-{}", i % 97),
        (i % 5) as i64,
        format!("dc-{}", i % 7),
    )
}

fn host_name(i: u64) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Writes the reference table as a Debezium snapshot (bare `r` envelopes, no schema).
fn write_reference(rows: u64, path: &Path) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for i in 0..rows {
        let (host, owner, criticality, site) = reference_row(i);
        let marker = if i + 1 == rows {
            "last"
        } else if i == 0 {
            "first"
        } else {
            "true"
        };
        writeln!(
            out,
            "{{\"before\":null,\"after\":{{\"host\":\"{host}\",\"owner\":\"{owner}\",\"criticality\":{criticality},\"site\":\"{site}\"}},\
             \"source\":{{\"version\":\"3.6.3.Final\",\"connector\":\"postgresql\",\"name\":\"bench\",\"ts_ms\":{START_MS},\"snapshot\":\"{marker}\",\
             \"db\":\"bench\",\"sequence\":\"[null,\\\"1000\\\"]\",\"schema\":\"public\",\"table\":\"hosts\",\"txId\":1,\"lsn\":1000,\"xmin\":null}},\
             \"transaction\":null,\"op\":\"r\",\"ts_ms\":{START_MS}}}"
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Writes `records` observation lines whose hosts spread over the whole reference table.
fn write_enrich_input(records: u64, hosts: u64, path: &Path) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let banner = "x".repeat(330);
    for i in 0..records {
        // SplitMix-style spread, so consecutive events hit unrelated rows.
        let h = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % (hosts + hosts / 10);
        let ts = crate::cli::explain::format_time(START_MS + i as i64);
        writeln!(
            out,
            "{{\"ts\":\"{ts}\",\"host\":\"{}\",\"port\":443,\"product\":\"openssl\",\"version\":\"1.0.2k\",\"bytes\":{},\
             \"os\":\"Linux 3.10 - 4.11\",\"cpe\":\"cpe:/a:openssl:openssl:1.0.2k\",\"tags\":[\"tcp\",\"open\",\"syn-ack\"],\
             \"scanner\":{{\"name\":\"nmap\",\"version\":\"7.80\",\"args\":\"-sV -O -T4\"}},\"banner\":\"{banner}\"}}",
            host_name(h),
            i % 1500
        )?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Deserialize)]
struct EnrichLine<'a> {
    ts: &'a str,
    host: &'a str,
    port: i64,
    product: &'a str,
    version: &'a str,
    bytes: i64,
}

/// The ceiling of the enrich case: load the table into a hash map, then parse each line,
/// look the host up and write the joined line.
fn enrich_ceiling(rows: u64, input: &Path, out: &Path) -> anyhow::Result<()> {
    let mut table: ahash::AHashMap<String, (String, i64, String)> = ahash::AHashMap::new();
    for i in 0..rows {
        let (host, owner, criticality, site) = reference_row(i);
        table.insert(host, (owner, criticality, site));
    }
    let encoder = JsonEncoder::new(enrich_output_schema());
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    let mut reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(input)?);
    let (mut line, mut buf) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let rec: EnrichLine = serde_json::from_slice(line.trim_ascii_end())?;
        let t = chrono::DateTime::parse_from_rfc3339(rec.ts)?.timestamp_millis();
        let found = table.get(rec.host);
        let row = [
            Value::Timestamp(t * 1000),
            Value::from(rec.host),
            Value::Int(rec.port),
            Value::from(rec.product),
            Value::from(rec.version),
            Value::Int(rec.bytes),
            found.map_or(Value::Null, |f| Value::from(f.0.as_str())),
            found.map_or(Value::Null, |f| Value::Int(f.1)),
            found.map_or(Value::Null, |f| Value::from(f.2.as_str())),
            Value::Bool(found.is_some()),
        ];
        buf.clear();
        encoder.encode_row(&row, &mut buf);
        buf.push(b'\n');
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(())
}

/// The observation columns the pipeline reads, then the table's and `hosts_matched`.
fn enrich_output_schema() -> SchemaRef {
    let mut fields = crate::sources::generator::observation_schema()
        .fields
        .clone();
    fields.extend([
        Field::new("owner", DataType::String),
        Field::new("criticality", DataType::Int),
        Field::new("site", DataType::String),
        Field::new("hosts_matched", DataType::Bool),
    ]);
    Arc::new(Schema::new(fields))
}

/// State bytes per reference row, the raw bytes of the rows' values and of the rows as JSON
/// (the change event's `after` object), measured on the operator itself.
fn reference_state_bytes(rows: u64) -> anyhow::Result<(f64, f64, f64)> {
    use crate::cdc::rows::change_schema;
    use crate::dataflow::Operator;
    use crate::operators::enrich::{
        EnrichOperator, EnrichSpec, EnrichStrategy, JoinMode, MissPolicy,
    };
    let table = Schema::new(vec![
        Field::new("host", DataType::String),
        Field::new("owner", DataType::String),
        Field::new("criticality", DataType::Int),
        Field::new("site", DataType::String),
    ]);
    let changes = change_schema(&table);
    let events = Arc::new(Schema::new(vec![Field::new("host", DataType::String)]));
    let spec = EnrichSpec {
        table: "hosts".into(),
        primary_key: vec!["host".into()],
        key: vec![("host".into(), "host".into())],
        columns: None,
        version_range: None,
        conditions: Vec::new(),
        mode: JoinMode::Lookup,
        miss: MissPolicy::Emit,
        strategy: EnrichStrategy::Gradual,
        state: crate::state::StateBackend::Memory,
    };
    let mut op = EnrichOperator::new("bench", spec, events, &changes)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let mut out = crate::dataflow::Output::new(op.ports());
    let mut raw = 0usize;
    let mut json = 0usize;
    let mut batch = crate::types::Batch::new(changes.clone());
    for i in 0..rows {
        let (host, owner, criticality, site) = reference_row(i);
        raw += host.len() + owner.len() + 8 + site.len();
        json += format!(
            "{{\"host\":\"{host}\",\"owner\":\"{owner}\",\"criticality\":{criticality},\"site\":\"{site}\"}}"
        )
        .len();
        batch.push_row(
            [
                Value::from("r"),
                Value::Int(1000),
                Value::Int(0),
                Value::from("true"),
                Value::Null,
                Value::from(host.as_str()),
                Value::from(owner.as_str()),
                Value::Int(criticality),
                Value::from(site.as_str()),
            ],
            START_MS,
        );
        if batch.len() == 1024 {
            op.process(1, batch.take(), &mut out);
        }
    }
    // The snapshot ends, as the change stream's `snapshot_end` row says.
    crate::cdc::rows::push_snapshot_end(&mut batch, START_MS);
    op.process(1, batch, &mut out);
    Ok((
        op.state_bytes() as f64 / rows as f64,
        raw as f64 / rows as f64,
        json as f64 / rows as f64,
    ))
}

/// The enrich case started live from a savepoint written by `watershed bootstrap`, against
/// the plain file → file pipeline and the gated start; returns the number of failed checks.
fn bootstrap_case(records: u64, rows: u64, dir: &Path) -> anyhow::Result<usize> {
    let reference = dir.join(format!("hosts-{rows}.jsonl"));
    let input = dir.join(format!("bootstrap-input-{rows}.jsonl"));
    write_reference(rows, &reference)?;
    write_enrich_input(records, rows, &input)?;
    let out = dir.join(format!("bootstrap-out-{rows}.jsonl"));
    let plain = enrich_yaml("", &[&input], None, &out);
    let enrich = enrich_yaml("", &[&input], Some(reference.as_path()), &out);
    let plain_m = measure(|| run_pipeline(&plain, dir, "bs-plain"))?;
    let gated = measure(|| run_pipeline(&enrich, dir, "bs-gated"))?;
    let expected = sorted_lines(&out)?;
    let savepoint = dir.join(format!("bootstrap-savepoint-{rows}"));
    let _ = std::fs::remove_dir_all(&savepoint);
    let (p, sp) = (
        dir.join("bs-gated.yaml").display().to_string(),
        savepoint.display().to_string(),
    );
    let boot = measure(|| {
        watershed(&["bootstrap", "--log", "error", &p, "--savepoint", &sp]).map(|_| ())
    })?;
    let live = measure(|| {
        watershed(&[
            "run",
            "--log",
            "error",
            "--metrics-addr",
            "off",
            &p,
            "--from-savepoint",
            &sp,
        ])
        .map(|_| ())
    })?;
    let same = sorted_lines(&out)? == expected;
    let _ = std::fs::remove_dir_all(&savepoint);
    for f in [&input, &reference, &out] {
        let _ = std::fs::remove_file(f);
    }
    let per_cpu = |m: &Measure| records as f64 / m.cpu.max(1e-9);
    println!(
        "\n## bootstrap: the enrich case ({rows}-row table, {records} events, parallelism 1) started from a bootstrapped savepoint"
    );
    println!(
        "| run | events/CPU-s | CPU s | wall s | over file → file | output equals the gated run's |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    println!(
        "| file → file (no enrichment) | {:.0} | {:.2} | {:.2} | — | — |",
        per_cpu(&plain_m),
        plain_m.cpu,
        plain_m.wall
    );
    println!(
        "| gated start (load the snapshot while events wait) | {:.0} | {:.2} | {:.2} | {:+.0}% | — |",
        per_cpu(&gated),
        gated.cpu,
        gated.wall,
        100.0 * (gated.cpu / plain_m.cpu - 1.0)
    );
    println!(
        "| `watershed bootstrap` (snapshot only) | — | {:.2} | {:.2} | — | — |",
        boot.cpu, boot.wall
    );
    println!(
        "| live run `--from-savepoint` | {:.0} | {:.2} | {:.2} | {:+.0}% | {} |",
        per_cpu(&live),
        live.cpu,
        live.wall,
        100.0 * (live.cpu / plain_m.cpu - 1.0),
        if same { "yes" } else { "NO" }
    );
    Ok(usize::from(!same))
}

/// The enrich case with checkpoints kept in a directory, every 10 s and every 1 s, against
/// the same pipeline without checkpoints; then the checkpoints' sizes and durations (from
/// their manifests) and the time a restart takes to restore the last one. Returns the
/// number of failed checks (outputs differing from the run without checkpoints).
fn checkpoint_case(records: u64, rows: u64, state: &str, dir: &Path) -> anyhow::Result<usize> {
    anyhow::ensure!(
        matches!(state, "memory" | "disk"),
        "--state is memory or disk, not `{state}`"
    );
    let state = format!(
        "state: {{backend: {state}{}}}\n",
        if state == "disk" {
            format!(", dir: \"{}\"", dir.join("tables").display())
        } else {
            String::new()
        }
    );
    let reference = dir.join(format!("hosts-{rows}.jsonl"));
    let input = dir.join(format!("checkpoint-input-{rows}.jsonl"));
    write_reference(rows, &reference)?;
    write_enrich_input(records, rows, &input)?;
    let out = dir.join(format!("checkpoint-out-{rows}.jsonl"));
    let pipeline = |checkpoint: &str| {
        enrich_yaml(
            &format!("{state}{checkpoint}"),
            &[&input],
            Some(reference.as_path()),
            &out,
        )
    };
    let base = measure(|| run_pipeline(&pipeline("checkpoint: {interval: off}\n"), dir, "cp-off"))?;
    let base_peak = LAST_RUN_PEAK_MB.get();
    let expected = sorted_lines(&out)?;
    let mut rows_out = Vec::new();
    let mut failures = 0;
    for interval in ["10s", "1s"] {
        let cp_dir = dir.join(format!("checkpoints-{rows}-{interval}"));
        let _ = std::fs::remove_dir_all(&cp_dir);
        let yaml = pipeline(&format!(
            "checkpoint: {{interval: {interval}, dir: \"{}\", retain: 5}}\n",
            cp_dir.display()
        ));
        let m = measure(|| run_pipeline(&yaml, dir, &format!("cp-{interval}")))?;
        let peak = LAST_RUN_PEAK_MB.get();
        let same = sorted_lines(&out)? == expected;
        failures += usize::from(!same);
        let store = crate::checkpoint::CheckpointStore::at(&cp_dir, usize::MAX)?;
        let manifests: Vec<_> = store
            .list()
            .into_iter()
            .filter_map(|l| l.manifest.ok())
            .collect();
        let periodic: Vec<_> = manifests.iter().filter(|m| !m.finished).collect();
        let median = |mut v: Vec<u64>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let sizes = median(periodic.iter().map(|m| m.state_bytes()).collect());
        let written = median(periodic.iter().map(|m| m.written_bytes()).collect());
        let durations = median(periodic.iter().map(|m| m.duration_ms as u64).collect());
        let last = manifests.iter().find(|m| m.finished);
        // Epochs are consecutive and the last one ends the run: the periodic ones before it.
        let taken = last.map_or(periodic.len() as u64, |m| m.epoch.saturating_sub(1));
        // A restart restores the last checkpoint (the end of the input: nothing is left).
        let path = dir
            .join(format!("cp-{interval}.yaml"))
            .display()
            .to_string();
        let t0 = Instant::now();
        let text = watershed(&["run", "--log", "error", "--metrics-addr", "off", &path])?;
        let restart_s = t0.elapsed().as_secs_f64();
        let restore_ms: Option<u64> = text
            .lines()
            .find_map(|l| l.split(") in ").nth(1)?.strip_suffix(" ms")?.parse().ok());
        rows_out.push(format!(
            "| every {interval} | {:.0} | {:+.1}% | {peak:.0} MB | {} | {:.1} MB | {:.1} MB | {} ms | {:.1} MB | {} ms ({restart_s:.2} s whole restart) | {} |",
            records as f64 / m.cpu.max(1e-9),
            100.0 * (m.cpu / base.cpu.max(1e-9) - 1.0),
            taken,
            sizes as f64 / 1e6,
            written as f64 / 1e6,
            durations,
            last.map_or(0.0, |m| m.state_bytes() as f64 / 1e6),
            restore_ms.map_or("?".into(), |r| r.to_string()),
            if same { "yes" } else { "NO" }
        ));
        let _ = std::fs::remove_dir_all(&cp_dir);
    }
    for f in [&input, &reference, &out] {
        let _ = std::fs::remove_file(f);
    }
    println!(
        "\n## checkpoint: the enrich case ({rows}-row table, {records} events, parallelism 1, {}) with checkpoints",
        state.trim_end()
    );
    println!(
        "| checkpoints | events/CPU-s | CPU over none | peak RSS | periodic checkpoints | median size | median written (not shared) | median barrier → last ack | last checkpoint | restore | output equals the run without |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| none | {:.0} | — | {base_peak:.0} MB | — | — | — | — | — | — | — |",
        records as f64 / base.cpu.max(1e-9)
    );
    for r in rows_out {
        println!("{r}");
    }
    Ok(failures)
}

/// Lookups in a reference table of `rows` rows (the enrich case's rows and key spread), one
/// by one (`get`) and 32 at a time (`locate_many`, as the join does), in ns per lookup.
fn lookup_case(rows: u64) {
    use crate::state::VersionedTable;
    let mut table: VersionedTable<u64> = VersionedTable::new(None);
    for i in 0..rows {
        let (host, owner, criticality, site) = reference_row(i);
        let row = [
            Value::from(host.as_str()),
            Value::from(owner.as_str()),
            Value::Int(criticality),
            Value::from(site.as_str()),
        ];
        table.apply(&row[..1], 1, 0, Some(&row));
    }
    let probes: Vec<Value> = (0..3_000_000u64)
        .map(|i| {
            let h = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % (rows + rows / 10);
            Value::from(host_name(h).as_str())
        })
        .collect();
    let t0 = Instant::now();
    let single = probes
        .iter()
        .filter(|p| table.get(std::slice::from_ref(*p)).is_some())
        .count();
    let single_ns = t0.elapsed().as_nanos() as f64 / probes.len() as f64;
    let t0 = Instant::now();
    let mut located = Vec::new();
    let mut batched = 0;
    for chunk in probes.chunks(32) {
        table.locate_many(chunk.iter().map(std::slice::from_ref), &mut located);
        batched += located
            .iter()
            .filter(|at| at.and_then(|at| table.row_at(at)).is_some())
            .count();
    }
    let batched_ns = t0.elapsed().as_nanos() as f64 / probes.len() as f64;
    println!(
        "lookup in {rows} rows ({} probes, {single} found): one by one {single_ns:.0} ns, 32 at a time {batched_ns:.0} ns{}",
        probes.len(),
        if single == batched {
            ""
        } else {
            " — FOUND DIFFERENT ROWS"
        }
    );
}

/// The enrich case for a table of `rows` rows: returns the number of failed checks.
fn enrich_case(records: u64, rows: u64, rounds: usize, dir: &Path) -> anyhow::Result<usize> {
    let reference = dir.join(format!("hosts-{rows}.jsonl"));
    let input = dir.join(format!("enrich-input-{rows}.jsonl"));
    let empty = dir.join("empty.jsonl");
    write_reference(rows, &reference)?;
    write_enrich_input(records, rows, &input)?;
    std::fs::write(&empty, "")?;
    let ceiling_out = dir.join(format!("enrich-ceiling-{rows}.jsonl"));
    let ceiling = measure(|| enrich_ceiling(rows, &input, &ceiling_out))?;
    let expected = sorted_lines(&ceiling_out)?;
    let pipeline = |events: &[&Path], out: &Path, enrich: bool| {
        enrich_yaml("", events, enrich.then_some(reference.as_path()), out)
    };
    let plain_out = dir.join(format!("enrich-plain-{rows}.jsonl"));
    let load_out = dir.join(format!("enrich-load-{rows}.jsonl"));
    let load = measure(|| run_pipeline(&pipeline(&[&empty], &load_out, true), dir, "load"))?;
    let enrich_out = dir.join(format!("enrich-p1-{rows}.jsonl"));
    // The same events twice (a second file): the difference is the cost of `records` events
    // once the table is loaded, without what waiting in the gate during the load costs.
    let copy = dir.join(format!("enrich-input-{rows}-again.jsonl"));
    let _ = std::fs::remove_file(&copy);
    std::fs::hard_link(&input, &copy).or_else(|_| std::fs::copy(&input, &copy).map(|_| ()))?;
    let twice_out = dir.join(format!("enrich-twice-{rows}.jsonl"));
    let mut same = true;
    let mut measured: Vec<(Measure, Measure, Measure)> = Vec::new();
    for _ in 0..rounds {
        let plain =
            measure(|| run_pipeline(&pipeline(&[&input], &plain_out, false), dir, "plain"))?;
        let full =
            measure(|| run_pipeline(&pipeline(&[&input], &enrich_out, true), dir, "enrich"))?;
        same &= sorted_lines(&enrich_out)? == expected;
        let twice = measure(|| {
            run_pipeline(
                &pipeline(&[&input, &copy], &twice_out, true),
                dir,
                "enrich-twice",
            )
        })?;
        measured.push((plain, full, twice));
    }
    // The median round by the enrichment's cost over the plain pipeline.
    measured.sort_by(|a, b| (a.1.cpu / a.0.cpu).total_cmp(&(b.1.cpu / b.0.cpu)));
    let (plain, full, twice) = measured.swap_remove(measured.len() / 2);
    let steady_cpu = (twice.cpu - full.cpu).max(1e-9);
    // The case's files are gigabytes: gone before the next case.
    for f in [
        &input,
        &copy,
        &ceiling_out,
        &plain_out,
        &enrich_out,
        &twice_out,
        &reference,
    ] {
        let _ = std::fs::remove_file(f);
    }
    let (state, raw, json) = reference_state_bytes(rows)?;
    let per_cpu = |n: u64, cpu: f64| n as f64 / cpu.max(1e-9);
    let enrich_cpu = (full.cpu - load.cpu).max(1e-9);
    println!(
        "\n## enrich: file (JSON lines) → lookup in a {rows}-row CDC table → file ({records} events, median of {rounds} rounds)"
    );
    println!("| run | events/CPU-s | CPU s | wall s | output equals ceiling |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| plain loop (ceiling: parse, hash lookup, write) | {:.0} | {:.2} | {:.2} | — |",
        per_cpu(records, ceiling.cpu),
        ceiling.cpu,
        ceiling.wall
    );
    println!(
        "| pipeline file → file, parallelism 1 (no enrichment) | {:.0} | {:.2} | {:.2} | — |",
        per_cpu(records, plain.cpu),
        plain.cpu,
        plain.wall
    );
    println!(
        "| loading the snapshot alone ({rows} rows) | {:.0} rows/CPU-s | {:.2} | {:.2} | — |",
        per_cpu(rows, load.cpu),
        load.cpu,
        load.wall
    );
    println!(
        "| pipeline file → enrich → file, parallelism 1, minus the load | {:.0} | {:.2} | {:.2} | {} |",
        per_cpu(records, enrich_cpu),
        enrich_cpu,
        full.wall - load.wall,
        if same { "yes" } else { "NO" }
    );
    println!(
        "| the same, {records} more events after the load (steady state) | {:.0} | {:.2} | {:.2} | — |",
        per_cpu(records, steady_cpu),
        steady_cpu,
        twice.wall - full.wall
    );
    println!(
        "enrichment costs {:+.0}% CPU over the plain pipeline ({:+.0}% in steady state); state {state:.0} bytes per reference row: {:.1}× its {raw:.0} bytes of values, {:.1}× its {json:.0} bytes as a JSON row",
        100.0 * (enrich_cpu / plain.cpu.max(1e-9) - 1.0),
        100.0 * (steady_cpu / plain.cpu.max(1e-9) - 1.0),
        state / raw.max(1e-9),
        state / json.max(1e-9)
    );
    Ok(usize::from(!same))
}
