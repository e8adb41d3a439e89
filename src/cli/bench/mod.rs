//! `watershed bench`: throughput of real pipelines (compiled from YAML, run by the runtime)
//! next to the raw ceiling measured in the same run — a plain loop that produces or parses
//! the same records, aggregates them the same way and writes the same output, with no
//! runtime around it. Prints events per CPU-second and per wall-second, the ratio to the
//! ceiling, and checks that the pipeline's output equals the loop's. Each pipeline runs as its own
//! `watershed run` process (CPU time from `getrusage` of the waited-for child), as a user runs it.
//!
//! `cases` runs each benchmark and prints its table, `ceiling` holds the plain loops,
//! `input` writes the records the cases read, `process` runs this binary for each pipeline,
//! and `report` measures CPU, wall time and memory and prints the shared table.

mod cases;
mod ceiling;
mod group;
mod input;
mod job;
mod kafka;
mod latency;
mod postgres;
mod process;
mod report;
mod sample;
mod sinks;

use std::path::PathBuf;

use cases::{
    bootstrap_case, checkpoint_case, enrich_case, file_case, generator_case, job_case, lookup_case,
};
use report::peak_rss_mb;

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
    /// enrich case started from a bootstrapped savepoint instead of behind a gate) or `job`
    /// (the enrichment job of BENCHMARKS.md: 594-byte observations, all ten fields declared,
    /// looked up in a Debezium table with updates and deletes, in `lookup` and `as_of` mode,
    /// against the strongest plain loop, whole runs and steady state) or `kafka` (that job
    /// read from and written to a Kafka-protocol broker on loopback, against a plain rdkafka
    /// consume → join → produce loop; `--kafka-records`, the first `--reference-rows`) or
    /// `postgres` (the native Postgres source against real Debezium on one database:
    /// snapshot, streaming, latency; `--pg-rows`, `--pg-changes`) or `sinks` (the demo's
    /// rows into ClickHouse and Postgres at several batch sizes, against a file;
    /// `--sink-observations`) or `group` (the kafka case's job run by `--instances`
    /// processes in one consumer group, the observations on 6 partitions).
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
    /// Observations of the kafka case (held in the broker's memory: about 600 bytes each).
    #[arg(long, default_value_t = 500_000)]
    pub kafka_records: u64,
    /// Rows of the postgres case's table.
    #[arg(long, default_value_t = 1_000_000)]
    pub pg_rows: u64,
    /// Changes the postgres case streams.
    #[arg(long, default_value_t = 200_000)]
    pub pg_changes: u64,
    /// Another `watershed` binary whose pipelines the `job` case runs too, right after this
    /// one's in every round (an earlier build, to compare in one sitting).
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// `job` case: measure latency at this many events per second (default: half the
    /// whole-run rate).
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// Instance counts of the group case.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub instances: Vec<usize>,
    /// Observations of the demo in the sinks case.
    #[arg(long, default_value_t = 60_000)]
    pub sink_observations: u64,
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
        failures += generator_case(args.generator_records, &args.parallelism, &dir)?;
    }
    if args.case == "all" || args.case == "file" {
        failures += file_case(n, &args.parallelism, &dir)?;
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
    if args.case == "job" {
        for &rows in &args.reference_rows {
            failures += job_case(
                n,
                rows,
                &args.parallelism,
                args.rounds.max(1),
                args.against.as_deref(),
                args.latency_rate,
                &dir,
            )?;
        }
    }
    if args.case == "kafka" {
        let rows = args.reference_rows.first().copied().unwrap_or(100_000);
        kafka::kafka_case(args.kafka_records, rows, args.rounds.max(1), &dir)?;
    }
    if args.case == "group" {
        let rows = args.reference_rows.first().copied().unwrap_or(100_000);
        group::group_case(
            args.kafka_records,
            rows,
            &args.instances,
            args.rounds.max(1),
            &dir,
        )?;
    }
    if args.case == "postgres" {
        postgres::postgres_case(args.pg_rows, args.pg_changes)?;
    }
    if args.case == "sinks" {
        failures += sinks::sinks_case(args.sink_observations, &dir)?;
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
