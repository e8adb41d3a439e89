//! The benchmarks: each writes its input, measures its ceiling and its pipeline runs, checks
//! that the outputs agree and prints its table.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::ceiling::{enrich_ceiling, file_ceiling, generator_ceiling};
use super::input::{
    HOSTS, START, START_MS, host_name, input_files, reference_row, write_enrich_input, write_input,
    write_reference,
};
use super::job::{
    self, DELETES_PER_100K as DELETES_PER_100K_SHOWN, UPDATES_PER_100K as UPDATES_PER_100K_SHOWN,
};
use super::process::{LAST_RUN_PEAK_MB, run_pipeline, watershed};
use super::report::{Measure, measure, report, sorted_lines};
use crate::types::{DataType, Field, Schema, Value};

/// The generator case at each parallelism: returns the number of failed checks.
pub(super) fn generator_case(n: u64, parallelism: &[usize], dir: &Path) -> anyhow::Result<usize> {
    let mut failures = 0;
    let ceiling_out = dir.join("generator-ceiling.jsonl");
    let ceiling = measure(|| generator_ceiling(n, &ceiling_out))?;
    let expected = sorted_lines(&ceiling_out)?;
    let mut runs = Vec::new();
    for &p in parallelism {
        let out = dir.join(format!("generator-p{p}.jsonl"));
        let yaml = format!(
            "name: bench-generator\nparallelism: {p}\nsources:\n  obs:\n    generator: {{count: {n}, hosts: {HOSTS}, skew: 0.5, jitter: 2s, start: \"{START}\", interval: 1ms, partitions: {p}}}\n    parallelism: {p}\n    event_time: {{max_out_of_orderness: 5s}}\noperators:\n  counts:\n    inputs: [obs]\n    window: {{key: [host], tumbling: 1m, aggregates: {{events: count}}}}\nsinks:\n  out: {{input: counts, file: \"{}\"}}\n",
            out.display()
        );
        let m = measure(|| run_pipeline(&yaml, dir, &format!("generator-p{p}")))?;
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
    Ok(failures)
}

/// The file case at each parallelism: returns the number of failed checks.
pub(super) fn file_case(n: u64, parallelism: &[usize], dir: &Path) -> anyhow::Result<usize> {
    let mut failures = 0;
    let inputs = input_files(dir);
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
    for &p in parallelism {
        let out = dir.join(format!("file-p{p}.jsonl"));
        let yaml = format!(
            "name: bench-file\nparallelism: {p}\nsources:\n  obs:\n    file: {{paths: [\"{}\"]}}\n    parallelism: {p}\n    schema: {{ts: timestamp, host: string, port: int, product: string, bytes: int}}\n    event_time: {{field: ts, max_out_of_orderness: 5s}}\noperators:\n  counts:\n    inputs: [obs]\n    window: {{key: [host], tumbling: 1m, aggregates: {{events: count, bytes: sum(bytes)}}}}\nsinks:\n  out: {{input: counts, file: \"{}\"}}\n",
            dir.join("observations-*.jsonl").display(),
            out.display()
        );
        let m = measure(|| run_pipeline(&yaml, dir, &format!("file-p{p}")))?;
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
    Ok(failures)
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
        distinct: Vec::new(),
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
pub(super) fn bootstrap_case(records: u64, rows: u64, dir: &Path) -> anyhow::Result<usize> {
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
pub(super) fn checkpoint_case(
    records: u64,
    rows: u64,
    state: &str,
    dir: &Path,
) -> anyhow::Result<usize> {
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
pub(super) fn lookup_case(rows: u64) {
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
pub(super) fn enrich_case(
    records: u64,
    rows: u64,
    rounds: usize,
    dir: &Path,
) -> anyhow::Result<usize> {
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

/// The `job` case's pipeline: the observations (all ten fields declared) looked up in the
/// reference table (snapshot, then its changes), gated, joined in `mode`; the events' file
/// is read by `parallelism` decoders (in splits when there are several).
fn job_yaml(
    mode: job::Mode,
    parallelism: usize,
    events: &Path,
    snapshot: &Path,
    stream: &Path,
    out: &Path,
) -> String {
    format!(
        "name: bench-job\nparallelism: {parallelism}\nenrichment: {{strategy: gated}}\nsources:\n  obs:\n    file: {{paths: [\"{}\"]}}\n    parallelism: {parallelism}\n    schema: {}\n    event_time: {{field: ts, max_out_of_orderness: 5s}}\n  ref:\n    file: {{format: debezium, snapshot: [\"{}\"], paths: [\"{}\"]}}\n    tables:\n      hosts: {{key: [host], columns: {{host: string, owner: string, criticality: int, site: string}}}}\noperators:\n  enrich:\n    inputs: [obs, ref.hosts]\n    enrich: {{key: {{host: host}}, mode: {}}}\nsinks:\n  out: {{input: enrich, file: \"{}\"}}\n",
        events.display(),
        job::SCHEMA,
        snapshot.display(),
        stream.display(),
        mode.name(),
        out.display()
    )
}

/// The enrichment job of BENCHMARKS.md (see `job`): the ceiling and the pipeline in
/// `lookup` mode at each parallelism and in `as_of` mode at parallelism 1, alternating in
/// every round; whole runs (load included) and the steady state inside each run. Returns
/// the number of failed checks.
pub(super) fn job_case(
    records: u64,
    rows: u64,
    parallelism: &[usize],
    rounds: usize,
    against: Option<&Path>,
    latency_rate: Option<f64>,
    dir: &Path,
) -> anyhow::Result<usize> {
    let snapshot = dir.join(format!("job-snapshot-{rows}.jsonl"));
    let stream = dir.join(format!("job-changes-{rows}.jsonl"));
    let events = dir.join(format!("job-events-{records}.jsonl"));
    job::write_reference(rows, records, &snapshot, &stream)?;
    job::write_events(records, rows, &events)?;
    let bytes = std::fs::metadata(&events)?.len();
    // (mode, parallelism, binary): this one, and the other one's right after it.
    let this = std::env::current_exe()?;
    let binaries: Vec<&Path> = std::iter::once(this.as_path()).chain(against).collect();
    let mut runs: Vec<(job::Mode, usize, &Path)> = Vec::new();
    for (mode, p) in parallelism
        .iter()
        .map(|&p| (job::Mode::Lookup, p))
        .chain([(job::Mode::AsOf, 1)])
    {
        runs.extend(binaries.iter().map(|&b| (mode, p, b)));
    }
    // Per run: whole-run measures, steady rates, peak memory, check failures.
    struct Runs {
        whole: Vec<Measure>,
        steady: Vec<f64>,
        peak_mb: f64,
        failed: Option<String>,
    }
    let blank = || Runs {
        whole: Vec::new(),
        steady: Vec::new(),
        peak_mb: 0.0,
        failed: None,
    };
    let mut ceilings = [blank(), blank()];
    let mut pipelines: Vec<Runs> = runs.iter().map(|_| blank()).collect();
    let ceiling_out = |mode: job::Mode| dir.join(format!("job-ceiling-{}.jsonl", mode.name()));
    let out = dir.join("job-out.jsonl");
    for _ in 0..rounds {
        for (m, mode) in [job::Mode::Lookup, job::Mode::AsOf].into_iter().enumerate() {
            let mut loop_cpu = 0.0;
            let whole = measure(|| {
                loop_cpu = job::ceiling(mode, &snapshot, &stream, &events, &ceiling_out(mode))?;
                Ok(())
            })?;
            ceilings[m].steady.push(records as f64 / loop_cpu.max(1e-9));
            ceilings[m].whole.push(whole);
        }
        for (r, &(mode, p, exe)) in runs.iter().enumerate() {
            let yaml = job_yaml(mode, p, &events, &snapshot, &stream, &out);
            let mut sampled = None;
            let whole = measure(|| {
                sampled = Some(super::sample::run_sampled(exe, &yaml, dir, "job", records)?);
                Ok(())
            })?;
            let sampled = sampled.expect("measured");
            let run = &mut pipelines[r];
            run.whole.push(whole);
            run.steady.extend(sampled.steady);
            run.peak_mb = run.peak_mb.max(sampled.peak_mb);
            if run.failed.is_none()
                && let Err(e) = job::check(
                    mode,
                    rows,
                    records,
                    &snapshot,
                    &stream,
                    &ceiling_out(mode),
                    &out,
                )?
            {
                run.failed = Some(e);
            }
        }
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let whole_cpu = |r: &Runs| median(r.whole.iter().map(|m| m.cpu).collect()).unwrap_or(0.0);
    let whole_wall = |r: &Runs| median(r.whole.iter().map(|m| m.wall).collect()).unwrap_or(0.0);
    let per_cpu = |cpu: f64| records as f64 / cpu.max(1e-9);
    // Latency at half the whole-run rate of this binary at parallelism 1 (or the rate
    // asked for), per mode.
    let mut latencies = Vec::new();
    for mode in [job::Mode::Lookup, job::Mode::AsOf] {
        let Some(r) = runs
            .iter()
            .position(|&(m, p, exe)| m == mode && p == 1 && exe == this.as_path())
        else {
            continue;
        };
        let wall = median(pipelines[r].whole.iter().map(|m| m.wall).collect()).unwrap_or(0.0);
        if wall <= 0.0 {
            continue;
        }
        let rate = latency_rate.unwrap_or(records as f64 / wall / 2.0);
        let live = dir.join("job-live.jsonl");
        let live_out = dir.join("job-live-out.jsonl");
        let yaml = format!(
            "checkpoint: {{interval: 10s}}\n{}",
            job_yaml(mode, 1, &live, &snapshot, &stream, &live_out).replace(
                &format!("file: {{paths: [\"{}\"]}}", live.display()),
                &format!(
                    "file: {{paths: [\"{}\"], follow: true, poll_interval: 2ms}}",
                    live.display()
                ),
            )
        );
        let setup = super::latency::Setup {
            exe: &this,
            yaml: &yaml,
            dir,
            events: &events,
            live: &live,
            out: &live_out,
        };
        latencies.push((mode, super::latency::measure(&setup, rate, 10.0)?));
    }
    for f in [&snapshot, &stream, &events, &out] {
        let _ = std::fs::remove_file(f);
    }
    for mode in [job::Mode::Lookup, job::Mode::AsOf] {
        let _ = std::fs::remove_file(ceiling_out(mode));
    }
    println!(
        "\n## job: {records} observations ({:.0} bytes each, ten fields declared) → `enrich` in a {rows}-row Debezium table with {} updates and {} deletes → file (median of {rounds} rounds)",
        bytes as f64 / records as f64,
        UPDATES_PER_100K_SHOWN * rows / 100_000,
        DELETES_PER_100K_SHOWN * rows / 100_000,
    );
    println!(
        "| run | events/CPU-s, whole run | events/CPU-s, steady state (median / best round) | vs ceiling (whole / steady) | CPU s | wall s | peak RSS MB | output equals ceiling |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (m, mode) in [job::Mode::Lookup, job::Mode::AsOf].into_iter().enumerate() {
        let c = &ceilings[m];
        println!(
            "| plain loop, {} (ceiling) | {:.0} | {:.0} / {:.0} | 100% / 100% | {:.2} | {:.2} | — | — |",
            mode.name(),
            per_cpu(whole_cpu(c)),
            median(c.steady.clone()).unwrap_or(0.0),
            best(&c.steady),
            whole_cpu(c),
            whole_wall(c)
        );
    }
    let mut failures = 0;
    for (r, &(mode, p, exe)) in runs.iter().enumerate() {
        let run = &pipelines[r];
        let which = if exe == this.as_path() {
            String::new()
        } else {
            format!(" ({})", exe.display())
        };
        let c = &ceilings[usize::from(mode == job::Mode::AsOf)];
        let steady = median(run.steady.clone());
        let ceiling_steady = median(c.steady.clone()).unwrap_or(f64::NAN);
        println!(
            "| pipeline{which}, `{}`, parallelism {p} | {:.0} | {} | {:.0}% / {} | {:.2} | {:.2} | {:.0} | {} |",
            mode.name(),
            per_cpu(whole_cpu(run)),
            steady.map_or("—".into(), |s| format!(
                "{s:.0} / {:.0}",
                best(&run.steady)
            )),
            100.0 * whole_cpu(c) / whole_cpu(run).max(1e-9),
            steady.map_or("—".into(), |s| format!(
                "{:.0}%",
                100.0 * s / ceiling_steady
            )),
            whole_cpu(run),
            whole_wall(run),
            run.peak_mb,
            if run.failed.is_none() { "yes" } else { "NO" }
        );
        if let Some(e) = &run.failed {
            failures += 1;
            eprintln!("job, {}, parallelism {p}: {e}", mode.name());
        }
    }
    if !latencies.is_empty() {
        println!(
            "\nevent to output, parallelism 1, events appended to a followed file (`poll_interval: 2ms`) at {} for 10 s, checkpoints every 10 s, file sink writing through (at-least-once):\n",
            if latency_rate.is_some() {
                "the rate asked for"
            } else {
                "half the whole-run rate"
            }
        );
        println!("| run | events/s | events | p50 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (mode, l) in &latencies {
            println!(
                "| pipeline, `{}` | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
                mode.name(),
                l.rate,
                l.events,
                l.p50,
                l.p99,
                l.max
            );
        }
    }
    Ok(failures)
}
