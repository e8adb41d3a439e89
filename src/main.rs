//! The `watershed` command line: run, validate and explain pipelines, take savepoints of
//! running ones, and benchmark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};

use watershed::config::{self, Overrides};
use watershed::http::client::ClientError;
use watershed::runtime::{self, RunContext, RunSummary};
use watershed::status::{Role, StatusRegistry, StatusReport};
use watershed::time::SystemClock;

#[derive(Parser)]
#[command(
    name = "watershed",
    version,
    about = "CDC-driven stateful stream enrichment in one binary",
    long_about = "Runs dataflow pipelines described in a YAML file: sources with per-partition \
                  event time and idleness, windows with allowed lateness and a `late` port, \
                  fan-out to sinks, Prometheus metrics and built-in alerts."
)]
struct Cli {
    /// Log filter (e.g. `info`, `warn`, `watershed=debug`; default `info`, `warn` for
    /// `demo`); `RUST_LOG` also works.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CVE enrichment pipeline on shipped real data (NVD, CISA KEV, vendor
    /// recommendations as Debezium change events; generated observations), with progress
    /// and a summary. Its pipeline file is `examples/demo.yaml`.
    Demo {
        /// Where the outputs go.
        #[arg(long, default_value = "watershed-out")]
        out: PathBuf,
        /// Another pipeline file to run the same way.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Instances per operator (default: the file's `parallelism`).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Serve `/metrics` and `/status` here while it runs (`off` to disable).
        #[arg(long, default_value = "off")]
        metrics_addr: String,
        /// Serve the endpoint on an address other machines can reach (not loopback).
        #[arg(long)]
        allow_remote_endpoints: bool,
    },
    /// Run a pipeline until its sources end (or forever, for followed files and unbounded
    /// generators).
    Run {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Instances per operator (default: the file's `parallelism`, else the CPU cores).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Serve `/metrics`, `/status` and `POST /savepoint` here (`off` to disable; default:
        /// the file's `metrics.addr`, else 127.0.0.1:9464). An address in use is an error.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Serve the endpoint on an address other machines can reach (not loopback): anyone
        /// who reaches it can read `/metrics` and `/status` (savepoints still need the token).
        #[arg(long)]
        allow_remote_endpoints: bool,
        /// Also accept savepoints asked for over HTTP under this directory (besides
        /// `checkpoint.dir/savepoints/`); may be repeated.
        #[arg(long, value_name = "DIR")]
        savepoint_root: Vec<PathBuf>,
        /// Keep checkpoints here (replaces the file's `checkpoint.dir`); the run restarts
        /// from the latest complete one and file sinks become transactional.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Start from this checkpoint directory (`<checkpoint dir>/chk-<epoch>`) instead of
        /// the latest one.
        #[arg(long, conflicts_with = "from_savepoint")]
        from_checkpoint: Option<PathBuf>,
        /// Start from this savepoint directory.
        #[arg(long)]
        from_savepoint: Option<PathBuf>,
        /// Start from scratch although the checkpoint directory holds checkpoints: nothing
        /// is restored and every output begins afresh. Without it, a directory whose
        /// checkpoints are all broken stops the run (listing why each is) instead.
        #[arg(long, conflicts_with_all = ["from_checkpoint", "from_savepoint"])]
        fresh_start: bool,
    },
    /// Take a savepoint of a running pipeline (through its `/savepoint` endpoint) and stop
    /// it there, without draining; `run --from-savepoint DIR` continues exactly there. The
    /// pipeline answering must be the one in PIPELINE; the request carries the run's token,
    /// read from the file the run wrote (`<checkpoint.dir>/run.token`).
    Savepoint {
        /// The pipeline file (YAML) of the running pipeline.
        pipeline: PathBuf,
        /// Where to write the savepoint: a directory that does not exist yet, under
        /// `checkpoint.dir/savepoints/` (a relative one is taken there) or under a
        /// `--savepoint-root` of the run (default: `checkpoint.dir/savepoints/savepoint-<time>`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where the running pipeline serves its endpoint (default: the file's
        /// `metrics.addr`, else 127.0.0.1:9464).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// The run's `--checkpoint-dir`, if it was given one: its token file is there.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Read the run's token from this file instead.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Keep the pipeline running after the savepoint.
        #[arg(long)]
        keep_running: bool,
    },
    /// Read only the reference data of a pipeline (its change streams' snapshots), as fast
    /// as it can, into the pipeline's state and write it as a savepoint, then stop: `run
    /// --from-savepoint DIR` then starts live with complete reference tables.
    Bootstrap {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Where to write the savepoint: a directory that does not exist yet.
        #[arg(long)]
        savepoint: PathBuf,
        /// Instances per operator (default: the file's `parallelism`, else the CPU cores).
        #[arg(long)]
        parallelism: Option<usize>,
    },
    /// Show the checkpoints of a checkpoint directory, or one checkpoint in detail.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Check a pipeline file: syntax, unknown fields, types, durations, references. Exits
    /// with 2 if anything is wrong, naming the file, line and field.
    Validate {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Also connect to the systems the sources read (a Postgres source: wal_level, the
        /// tables, publication, REPLICATION role, slot) and the sinks write (ClickHouse and
        /// Postgres: the server, the table and its columns) and say what is not ready,
        /// changing nothing there. Exits with 1 if something is not.
        #[arg(long)]
        connect: bool,
    },
    /// Compare what each keyed sink (ClickHouse, Postgres) holds with what its source says it
    /// should hold: per sink and key range, expected, found, missing, extra and stale rows.
    /// Exits with 1 on drift, so it can run as a daily job.
    Reconcile {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Key ranges per sink (default 8).
        #[arg(long, default_value_t = 8)]
        ranges: usize,
        /// Show every key range, not only those with drift.
        #[arg(long)]
        all_ranges: bool,
        /// Also write the results as Prometheus metrics into this file (for a node
        /// exporter's textfile collector), replacing it.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
    },
    /// Explain a pipeline: its plan and, if it is running, where each node's watermark is and
    /// which source partition holds it back.
    Explain {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Where the running pipeline serves `/status` (default: the file's `metrics.addr`,
        /// else 127.0.0.1:9464).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Measure throughput against the plain-loop ceiling (see BENCHMARKS.md).
    Bench(watershed::cli::bench::BenchArgs),
    /// Tools for change-data-capture streams.
    #[command(subcommand)]
    Cdc(CdcCommand),
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// Every checkpoint in DIR, newest first: epoch, time, size, whether it verifies.
    List { dir: PathBuf },
    /// One checkpoint (a `chk-<epoch>` or savepoint directory): source positions,
    /// watermark state, and the state size of every operator and sink.
    Inspect { path: PathBuf },
}

#[derive(Subcommand)]
enum CdcCommand {
    /// Decode a file of Debezium records (JSON lines or pretty-printed, with or without the
    /// schema envelope, bare values or `{key, value}` records) and print one normalized change
    /// per line: table, op, key, before, after, version, snapshot. Undecodable records go to
    /// stderr with their line number; the exit code is 1 if there were any.
    Decode {
        /// The file to read (`-` for standard input).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    let log = cli.log.as_deref().unwrap_or(default_log);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<watershed::error::ConfigError>() {
                eprintln!("{ce}");
                return ExitCode::from(2);
            }
            match e.downcast_ref::<watershed::error::RunError>() {
                Some(re) => eprintln!("error: {re} ({})", re.hint()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::from(1)
        }
    }
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Demo {
            out,
            pipeline,
            parallelism,
            metrics_addr,
            allow_remote_endpoints,
        } => {
            // The shipped pipeline and data are in the binary: written to a directory of the
            // run's own, removed when it ends.
            let (path, shipped) = match pipeline {
                Some(p) => (p, None),
                None => {
                    let files = watershed::cli::demo_files::DemoFiles::unpack().map_err(|e| {
                        anyhow::anyhow!(
                            "cannot write the demo's files to a temporary directory: {e}"
                        )
                    })?;
                    (files.pipeline(), Some(files))
                }
            };
            demo(
                &path,
                shipped.is_some(),
                &out,
                parallelism,
                &metrics_addr,
                allow_remote_endpoints,
            )
        }
        Command::Run {
            pipeline,
            parallelism,
            metrics_addr,
            allow_remote_endpoints,
            savepoint_root,
            checkpoint_dir,
            from_checkpoint,
            from_savepoint,
            fresh_start,
        } => run(
            &pipeline,
            Overrides {
                parallelism,
                metrics_addr,
                output_dir: None,
                checkpoint_dir,
            },
            EndpointOptions {
                default_addr: Some(watershed::http::DEFAULT_ADDR),
                allow_remote: allow_remote_endpoints,
                savepoint_roots: savepoint_root,
            },
            Start {
                restore_from: from_checkpoint.or(from_savepoint),
                fresh: fresh_start,
            },
        ),
        Command::Savepoint {
            pipeline,
            dir,
            addr,
            checkpoint_dir,
            token_file,
            keep_running,
        } => savepoint(
            &pipeline,
            SavepointArgs {
                dir,
                addr,
                checkpoint_dir,
                token_file,
                stop: !keep_running,
            },
        ),
        Command::Bootstrap {
            pipeline,
            savepoint,
            parallelism,
        } => bootstrap(&pipeline, &savepoint, parallelism),
        Command::Checkpoints(CheckpointsCommand::List { dir }) => checkpoints_list(&dir),
        Command::Checkpoints(CheckpointsCommand::Inspect { path }) => checkpoints_inspect(&path),
        Command::Validate { pipeline, connect } => validate(&pipeline, connect),
        Command::Explain { pipeline, addr } => explain(&pipeline, addr),
        Command::Reconcile {
            pipeline,
            ranges,
            all_ranges,
            metrics_file,
        } => reconcile(&pipeline, ranges, all_ranges, metrics_file.as_deref()),
        Command::Bench(args) => {
            watershed::cli::bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cdc(CdcCommand::Decode { file }) => cdc_decode(&file),
    }
}

fn cdc_decode(file: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    let mut input = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut input)?;
    } else {
        input = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    let decoder = watershed::cdc::DebeziumDecoder::new([])?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let counts =
        watershed::cdc::inspect::decode_all(&input, &decoder, &mut out, &mut std::io::stderr())?;
    std::io::Write::flush(&mut out)?;
    if counts.failed > 0 {
        eprintln!(
            "{} records decoded, {} could not be decoded",
            counts.decoded, counts.failed
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &Path, connect: bool) -> anyhow::Result<ExitCode> {
    let compiled = config::load_and_compile(path, &Overrides::default())?;
    for w in &compiled.warnings {
        eprintln!("warning: {w}");
    }
    let plan = &compiled.plan;
    println!(
        "{}: ok — pipeline `{}`: {} nodes",
        path.display(),
        plan.name,
        plan.nodes.len()
    );
    if !connect {
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    for (component, preflight) in &compiled.preflights {
        for check in preflight() {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            failed += usize::from(!check.ok);
            println!("  {mark} {component}: {}", check.line);
        }
    }
    if compiled.preflights.is_empty() {
        println!("  no source or sink connects to a system `validate --connect` checks");
    }
    Ok(if failed > 0 {
        println!("{failed} check(s) failed");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn reconcile(
    path: &Path,
    ranges: usize,
    all_ranges: bool,
    metrics_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use watershed::reconcile;
    let compiled = config::load_and_compile(path, &Overrides::default())?;
    if compiled.holdings.is_empty() {
        println!("no keyed sink (clickhouse, postgres) to reconcile");
        return Ok(ExitCode::SUCCESS);
    }
    let mut reports = Vec::new();
    let mut failed = 0;
    let mut rerun = Vec::new();
    for (sink, holdings) in &compiled.holdings {
        if reconcile::expected::needs_rerun(&compiled.plan, sink) {
            rerun.push(reconcile::rerun::Target {
                sink: sink.clone(),
                key: holdings.key(),
            });
            continue;
        }
        let result = reconcile::expected::expected(
            &compiled.plan,
            sink,
            &holdings.key(),
            &compiled.current_tables,
        )
        .and_then(|expected| Ok((expected, holdings.read()?)));
        match result {
            Ok((expected, found)) => reports.push(reconcile::compare(
                sink,
                &holdings.target(),
                &expected,
                &found,
                ranges,
            )),
            Err(e) => {
                failed += 1;
                eprintln!("sink {sink}: cannot reconcile: {e}");
            }
        }
    }
    if !rerun.is_empty() {
        let names: Vec<&str> = rerun.iter().map(|t| t.sink.as_str()).collect();
        eprintln!(
            "running the pipeline again for the sinks of derived rows ({})",
            names.join(", ")
        );
        match reconcile::rerun::expected_by_rerun(compiled.plan, &compiled.replayable, &rerun) {
            Ok(mut expected) => {
                for (sink, holdings) in &compiled.holdings {
                    let Some(want) = expected.remove(sink) else {
                        continue;
                    };
                    match holdings.read() {
                        Ok(mut found) => {
                            // The rerun knows no versions: compare keys only.
                            found.live.values_mut().for_each(|v| *v = None);
                            reports.push(reconcile::compare(
                                sink,
                                &holdings.target(),
                                &want,
                                &found,
                                ranges,
                            ));
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("sink {sink}: cannot reconcile: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                failed += rerun.len();
                eprintln!("sinks {}: cannot reconcile: {e}", names.join(", "));
            }
        }
    }
    print!("{}", reconcile::render(&reports, all_ranges));
    if let Some(file) = metrics_file {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, reconcile::metrics_text(&reports, now))
            .and_then(|()| std::fs::rename(&tmp, file))
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    let drift = reports.iter().filter(|r| r.total.drift()).count();
    if drift > 0 {
        println!("{drift} sink(s) drifted from their source");
    }
    Ok(if drift > 0 || failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(path: &Path, addr: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let compiled = config::load_and_compile(path, &Overrides::default())?;
    // What `validate` warns of (a keyed operator behind a consumer group, say) belongs
    // beside the plan too.
    for w in &compiled.warnings {
        eprintln!("warning: {w}");
    }
    let plan = &compiled.plan;
    println!("plan of `{}`:", plan.name);
    for n in &plan.nodes {
        let broadcast: &[usize] = match &n.kind {
            runtime::NodeKind::Operator {
                broadcast_inputs, ..
            } => broadcast_inputs,
            _ => &[],
        };
        let inputs: Vec<String> = n
            .inputs
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let up = &plan.nodes[r.node];
                let whole = if broadcast.contains(&j) && n.parallelism > 1 {
                    " (broadcast)"
                } else {
                    ""
                };
                format!("{}.{}{whole}", up.name, up.ports[r.port].name)
            })
            .collect();
        let role = match n.role() {
            Role::Source => "source",
            Role::Operator => "operator",
            Role::Sink => "sink",
        };
        let mut line = format!("  {role} {} x{}", n.name, n.parallelism);
        if !inputs.is_empty() {
            line.push_str(&format!(" <- {}", inputs.join(", ")));
        }
        if let runtime::NodeKind::Source { watermark, .. } = &n.kind {
            line.push_str(&format!(
                "; watermark: max_out_of_orderness {}, idle_timeout {}",
                humantime::format_duration(watermark.max_out_of_orderness),
                watermark
                    .idle_timeout
                    .map_or("none".into(), |d| humantime::format_duration(d).to_string())
            ));
        }
        println!("{line}");
    }
    for (source, group, carrier) in compiled.kafka_links.describe() {
        println!(
            "  scale-out: source {source} reads in consumer group `{group}`: the processes \
             started with this file share its partitions (a revoked one is handed over at a \
             checkpoint); {}",
            match carrier {
                Some(sink) => format!(
                    "its offsets commit in the transactions of sink {sink}, with what each \
                     epoch wrote"
                ),
                None => "its offsets commit once the checkpoint holding them is durable".into(),
            }
        );
    }
    let addr = client_addr(addr, &compiled);
    match watershed::http::client::status_of(addr, &plan.name) {
        Ok(report) => {
            println!();
            print!("{}", watershed::cli::explain::render(&report));
        }
        Err(e @ ClientError::Unreachable { .. }) => println!("\n{e}; showing the plan only"),
        Err(e @ ClientError::OtherPipeline { .. }) => {
            anyhow::bail!(
                "{e} ({}): not showing its status under this plan",
                path.display()
            )
        }
        Err(e) => anyhow::bail!(e),
    }
    Ok(ExitCode::SUCCESS)
}

/// The address a command talks to: `--addr`, else the file's `metrics.addr`, else the default.
fn client_addr(addr: Option<SocketAddr>, compiled: &config::Compiled) -> SocketAddr {
    addr.or(compiled.metrics_addr.or(None))
        .unwrap_or(watershed::http::DEFAULT_ADDR)
}

/// Where a run starts: from a checkpoint or savepoint asked for, from scratch although
/// checkpoints exist (`fresh`), or else from the checkpoint directory's latest.
#[derive(Default)]
struct Start {
    restore_from: Option<PathBuf>,
    fresh: bool,
}

fn run(
    path: &Path,
    overrides: Overrides,
    endpoint: EndpointOptions,
    from: Start,
) -> anyhow::Result<ExitCode> {
    let compiled = config::load_and_compile(path, &overrides)?;
    for w in &compiled.warnings {
        tracing::warn!("{w}");
    }
    let outputs = compiled.outputs.clone();
    let summary = start(compiled, (path, &overrides), &endpoint, from, |_, _| {})?;
    print_summary(&summary, &outputs);
    Ok(ExitCode::SUCCESS)
}

/// `watershed savepoint`'s options.
struct SavepointArgs {
    dir: Option<PathBuf>,
    addr: Option<SocketAddr>,
    checkpoint_dir: Option<PathBuf>,
    token_file: Option<PathBuf>,
    stop: bool,
}

fn savepoint(path: &Path, args: SavepointArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        checkpoint_dir: args.checkpoint_dir,
        ..Overrides::default()
    };
    let compiled = config::load_and_compile(path, &overrides)?;
    let name = &compiled.plan.name;
    let addr = client_addr(args.addr, &compiled);
    let report = watershed::http::client::status_of(addr, name).map_err(|e| match e {
        ClientError::OtherPipeline { .. } => {
            anyhow::anyhow!("{e} ({}): no savepoint taken", path.display())
        }
        e => anyhow::anyhow!("{e}: no savepoint taken"),
    })?;
    let token_file = args.token_file.unwrap_or_else(|| {
        watershed::http::token::file_for(
            compiled.plan.options.checkpoint_dir.as_deref(),
            name,
            addr.port(),
        )
    });
    let token = watershed::http::token::read(&token_file).with_context(|| {
        format!(
            "cannot read the token of the pipeline at {addr} (run {}) from {}; give the run's `--checkpoint-dir`, or `--token-file`",
            report.run_id,
            token_file.display()
        )
    })?;
    // A relative directory is the caller's, not the pipeline's working directory's.
    let dir = args.dir.map(std::path::absolute).transpose()?;
    let answer =
        watershed::http::client::request_savepoint(addr, &token, dir.as_deref(), args.stop)
            .context("no savepoint taken")?;
    println!("savepoint written to {answer}");
    if args.stop {
        println!(
            "the pipeline stops; continue it with `watershed run {} --from-savepoint {answer}`",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bootstrap(path: &Path, dir: &Path, parallelism: Option<usize>) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        parallelism,
        metrics_addr: None,
        output_dir: None,
        checkpoint_dir: None,
    };
    let compiled = config::load_and_compile(path, &overrides)?;
    if std::fs::symlink_metadata(dir).is_ok() {
        anyhow::bail!(
            "{} exists: a savepoint goes only into a new directory, and nothing there is replaced",
            dir.display()
        );
    }
    let clock = SystemClock::shared();
    let status = StatusRegistry::new(&compiled.plan.name);
    let mut ctx = RunContext::new(clock, status);
    ctx.bootstrap = Some(std::path::absolute(dir)?);
    let summary = runtime::run(compiled.plan, ctx)?;
    let Some(written) = summary.savepoints.first() else {
        anyhow::bail!("the bootstrap ended without a savepoint (did a source fail?)");
    };
    let rows: u64 = summary
        .report
        .instances
        .iter()
        .filter(|i| i.role == Role::Source)
        .map(|i| i.records_in)
        .sum();
    eprintln!(
        "bootstrap: {rows} reference records read in {:.2}s; savepoint written to {}{}",
        summary.elapsed_ms as f64 / 1000.0,
        written.display(),
        peak_resident_mb().map_or(String::new(), |mb| format!(
            "; peak resident memory {mb} MB"
        ))
    );
    eprintln!(
        "start live with `watershed run {} --from-savepoint {}`",
        path.display(),
        written.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn checkpoints_list(dir: &Path) -> anyhow::Result<ExitCode> {
    let store = watershed::checkpoint::CheckpointStore::existing(dir)?;
    let listed = store.list();
    if listed.is_empty() {
        println!("no checkpoints in {}", dir.display());
    }
    for l in listed {
        match l.manifest {
            Ok(m) => println!(
                "epoch {:>6}  {}  {:>12} bytes ({} written)  {} sources, {} operators, {} sinks{}  {}",
                m.epoch,
                watershed::cli::explain::format_time(m.created_at_ms),
                m.state_bytes(),
                m.written_bytes(),
                m.sources.len(),
                m.operators.len(),
                m.sinks.len(),
                if m.finished { "  (end of input)" } else { "" },
                l.path.display()
            ),
            Err(e) => println!("epoch {:>6}  BROKEN: {e}", l.epoch),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoints_inspect(path: &Path) -> anyhow::Result<ExitCode> {
    let r = watershed::checkpoint::store::read(path)?;
    let m = &r.manifest;
    println!("checkpoint {} of pipeline `{}`", path.display(), m.pipeline);
    println!(
        "epoch {}, written {}, barrier to last acknowledgement {} ms, alignment {} ms{}",
        m.epoch,
        watershed::cli::explain::format_time(m.created_at_ms),
        m.duration_ms,
        m.alignment_ms,
        if m.finished {
            ", taken at the end of the input"
        } else {
            ""
        }
    );
    println!("sources:");
    for (label, s) in &m.sources {
        println!("  {label}");
        for (i, p) in s.positions.iter().enumerate() {
            let max = s.max_event_times.get(i).copied().flatten();
            println!(
                "    {}: {}, highest event time {}",
                p.partition,
                p.position,
                max.map_or("none".into(), watershed::cli::explain::format_time)
            );
        }
    }
    println!("operator state:");
    for (label, f) in &m.operators {
        println!("  {label}: {} bytes ({})", f.total_bytes(), f.file);
        if !f.blobs.is_empty() {
            let new: Vec<_> = f.blobs.iter().filter(|b| b.new).collect();
            println!(
                "    {} blobs, {} of them ({} bytes) written by this checkpoint, the rest shared with earlier ones",
                f.blobs.len(),
                new.len(),
                new.iter().map(|b| b.bytes).sum::<u64>()
            );
        }
    }
    println!("sink pre-commits:");
    for (label, f) in &m.sinks {
        println!("  {label}: {} bytes ({})", f.bytes, f.file);
    }
    Ok(ExitCode::SUCCESS)
}

fn demo(
    path: &Path,
    shipped: bool,
    out: &Path,
    parallelism: Option<usize>,
    metrics_addr: &str,
    allow_remote: bool,
) -> anyhow::Result<ExitCode> {
    // Outputs go under `--out` as the caller sees it, wherever the pipeline file is.
    let out = &std::path::absolute(out)?;
    let overrides = Overrides {
        parallelism,
        metrics_addr: Some(metrics_addr.to_string()),
        output_dir: Some(out.to_path_buf()),
        checkpoint_dir: None,
    };
    let endpoint = EndpointOptions {
        default_addr: None,
        allow_remote,
        savepoint_roots: Vec::new(),
    };
    let compiled = config::load_and_compile(path, &overrides)?;
    let outputs = compiled.outputs.clone();
    eprintln!(
        "demo: pipeline `{}` ({}), outputs under {}",
        compiled.plan.name,
        if shipped {
            "examples/demo.yaml, shipped in the binary".to_string()
        } else {
            path.display().to_string()
        },
        out.display()
    );
    let summary = start(
        compiled,
        (path, &overrides),
        &endpoint,
        Start::default(),
        |report, elapsed_ms| {
            let totals = watershed::cli::demo::DemoTotals::from_report(report);
            eprintln!(
                "{}",
                watershed::cli::demo::progress_line(&totals, elapsed_ms)
            );
        },
    )?;
    let mut totals = watershed::cli::demo::DemoTotals::from_report(&summary.report);
    totals.kev_events = outputs
        .iter()
        .find(|(name, _)| name == "kev_flags")
        .and_then(|(_, target)| watershed::cli::demo::kev_observations(Path::new(target)));
    // The summary is the command's answer (stdout); progress went to stderr.
    print!(
        "{}",
        watershed::cli::demo::summary(&totals, summary.elapsed_ms, &outputs)
    );
    Ok(ExitCode::SUCCESS)
}

/// How a command serves the HTTP endpoint.
struct EndpointOptions {
    /// Where, when neither `--metrics-addr` nor the file says (`None`: not at all).
    default_addr: Option<SocketAddr>,
    /// `--allow-remote-endpoints`.
    allow_remote: bool,
    /// `--savepoint-root`.
    savepoint_roots: Vec<PathBuf>,
}

/// Runs a compiled pipeline to its end: HTTP endpoint, Ctrl-C draining, and `progress`
/// called about once a second with the live status. After a transient failure the pipeline
/// file (`source`) is compiled again and the run restarts from its latest checkpoint.
fn start(
    compiled: config::Compiled,
    source: (&Path, &Overrides),
    endpoint: &EndpointOptions,
    from: Start,
    mut progress: impl FnMut(&StatusReport, i64),
) -> anyhow::Result<RunSummary> {
    let clock = SystemClock::shared();
    let status = StatusRegistry::new(&compiled.plan.name);
    let savepoints = Arc::new(watershed::savepoint::SavepointRequests::default());
    let checkpoint_dir = compiled.plan.options.checkpoint_dir.clone();
    let targets = watershed::savepoint::SavepointTargets::new(
        checkpoint_dir.as_deref(),
        &endpoint.savepoint_roots,
    )
    .context("cannot resolve the savepoint directories")?;
    let served = match compiled.metrics_addr.or(endpoint.default_addr) {
        Some(addr) => {
            let settings = watershed::http::Settings {
                addr,
                allow_remote: endpoint.allow_remote,
                limits: compiled.endpoint_limits,
                checkpoint_dir: checkpoint_dir.clone(),
            };
            let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok();
            watershed::metrics::describe_all();
            let services = watershed::http::Services {
                prometheus,
                status: status.clone(),
                clock: clock.clone(),
                savepoints: savepoints.clone(),
                targets: targets.clone(),
            };
            let served = watershed::http::start(&settings, services)?;
            if addr.ip().to_canonical().is_loopback() {
                tracing::info!(bound = %served.addr, token = %served.token_file.display(), "serving /metrics, /status and POST /savepoint");
            } else {
                tracing::warn!(bound = %served.addr, token = %served.token_file.display(), "serving /metrics, /status and POST /savepoint to the network (--allow-remote-endpoints)");
            }
            Some(served)
        }
        None => None,
    };
    // Ctrl-C / SIGTERM: with checkpoints kept, stop at a last checkpoint; otherwise sources
    // end their input, windows fire, sinks flush, then exit.
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("second interrupt: exiting at once");
            std::process::exit(130);
        }
        eprintln!("stopping (interrupt again to exit at once)");
    })
    .context("cannot install the interrupt handler")?;
    watershed::savepoint::on_signal(savepoints.clone(), targets);
    tracing::info!(pipeline = %compiled.plan.name, "starting");
    let ctx = RunContext {
        clock: clock.clone(),
        status: status.clone(),
        shutdown,
        restore_from: from.restore_from,
        savepoints,
        bootstrap: None,
        fresh_start: from.fresh,
    };
    let started = clock.now_ms();
    let mut first = Some(compiled.plan);
    let (path, overrides) = (source.0.to_path_buf(), source.1.clone());
    let make_plan = move || match first.take() {
        Some(plan) => Ok(plan),
        None => Ok(config::load_and_compile(&path, &overrides)?.plan),
    };
    let backoff = watershed::runtime::retry::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let runner = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || runtime::run_restarting(make_plan, ctx, backoff))
        .context("cannot start the pipeline")?;
    let mut next = started + 1000;
    while !runner.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = clock.now_ms();
        if now >= next {
            next = now + 1000;
            progress(&status.snapshot(now), now - started);
        }
    }
    let summary = runner
        .join()
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    drop(served);
    Ok(summary)
}

fn print_summary(s: &RunSummary, outputs: &[(String, String)]) {
    let r = &s.report;
    let secs = (s.elapsed_ms.max(1)) as f64 / 1000.0;
    let read: u64 = r
        .instances
        .iter()
        .filter(|i| i.role == Role::Source)
        .map(|i| i.records_in)
        .sum();
    let port_total = |port: &str| -> u64 {
        r.instances
            .iter()
            .flat_map(|i| i.records_out.iter())
            .filter(|(p, _)| p == port)
            .map(|(_, n)| *n)
            .sum()
    };
    eprintln!(
        "done in {secs:.2}s: {read} records read ({:.0}/s), {} late, {} dead letters, {} checkpoints, {} alerts",
        read as f64 / secs,
        port_total("late"),
        port_total("dead_letter"),
        s.checkpoints_completed,
        s.alerts_fired.len()
    );
    if let Some((epoch, path)) = &s.restored_from {
        eprintln!(
            "  restored from checkpoint {epoch} ({}) in {} ms",
            path.display(),
            s.restore_ms.unwrap_or(0)
        );
    }
    for p in &s.savepoints {
        eprintln!("  savepoint written to {}", p.display());
    }
    if s.stopped_at_savepoint {
        eprintln!("  stopped at its last checkpoint, input not drained: a restart continues there");
    }
    if s.checkpoint_failures > 0 {
        eprintln!("  {} checkpoints failed", s.checkpoint_failures);
    }
    if let Some(mb) = peak_resident_mb() {
        eprintln!("  peak resident memory {mb} MB");
    }
    // Totals per node over its instances, in plan order.
    struct Totals<'a> {
        node: &'a str,
        input: u64,
        ports: Vec<(String, u64)>,
    }
    let mut nodes: Vec<Totals> = Vec::new();
    for i in &r.instances {
        match nodes.iter_mut().find(|t| t.node == i.node) {
            Some(t) => {
                t.input += i.records_in;
                for (p, n) in &i.records_out {
                    if let Some(x) = t.ports.iter_mut().find(|(q, _)| q == p) {
                        x.1 += n;
                    }
                }
            }
            None => nodes.push(Totals {
                node: &i.node,
                input: i.records_in,
                ports: i.records_out.clone(),
            }),
        }
    }
    for t in nodes {
        let outs: Vec<String> = t.ports.iter().map(|(p, n)| format!("{p}={n}")).collect();
        eprintln!(
            "  {}: in {}{}{}",
            t.node,
            t.input,
            if outs.is_empty() { "" } else { ", out " },
            outs.join(" ")
        );
    }
    for (name, target) in outputs {
        eprintln!("  output {name} -> {target}");
    }
}

/// This process's peak resident memory (`VmHWM`: of its own address space, unlike
/// `getrusage`, which also counts the parent's it was started from).
fn peak_resident_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}
