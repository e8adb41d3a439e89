//! The pipeline file as written: strict serde structures (unknown fields are errors) whose
//! values keep their line and column, so that every later check can point at the YAML.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub name: Option<String>,
    /// Default parallelism of operators (`--parallelism` overrides; default: CPU cores).
    pub parallelism: Option<S<usize>>,
    /// Records per batch read by sources.
    pub batch_size: Option<S<usize>>,
    /// Batches buffered per task input.
    pub channel_capacity: Option<S<usize>>,
    pub checkpoint: Option<CheckpointYaml>,
    /// Defaults for every `enrich` operator.
    pub enrichment: Option<S<EnrichmentYaml>>,
    /// Where materialized reference tables are kept.
    pub state: Option<StateYaml>,
    pub alerts: Option<AlertsYaml>,
    pub metrics: Option<MetricsYaml>,
    #[serde(default)]
    pub sources: IndexMap<String, S<SourceYaml>>,
    #[serde(default)]
    pub operators: IndexMap<String, S<OperatorYaml>>,
    #[serde(default)]
    pub sinks: IndexMap<String, S<SinkYaml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointYaml {
    /// Barrier interval, or `off`.
    pub interval: Option<S<String>>,
    /// Where checkpoints are kept; with it a run restarts from the latest one and file sinks
    /// are transactional.
    pub dir: Option<S<String>>,
    /// How many complete checkpoints to keep.
    pub retain: Option<S<usize>>,
    /// The delivery guarantee the pipeline needs end to end: `exactly_once`, `idempotent`
    /// or `at_least_once`; `validate` warns when its sinks give less.
    pub guarantee: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateYaml {
    /// `memory` (every row in RAM; the default) or `disk` (an embedded LSM store on local
    /// disk behind a cache, for tables larger than memory).
    pub backend: Option<S<String>>,
    /// Where a disk table keeps its working copy (default: the system's temporary directory).
    pub dir: Option<S<String>>,
    /// Keys a disk table keeps in memory.
    pub cache_rows: Option<S<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsYaml {
    /// Alert when a node's watermark is further behind the clock than this (or `off`).
    pub watermark_lag: Option<S<String>>,
    /// Alert when a node's watermark has not advanced for this long while records arrive.
    pub watermark_stall: Option<S<String>>,
    /// Alert when a gated enrichment waits this long for its reference snapshot (or `off`).
    pub enrichment_gate: Option<S<String>>,
    /// Alert when the last complete checkpoint is older than this (or `off`).
    pub checkpoint_age: Option<S<String>>,
    /// How often rules are evaluated.
    pub check_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsYaml {
    /// `host:port` for `/metrics` and `/status`.
    pub addr: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceYaml {
    pub generator: Option<S<GeneratorYaml>>,
    pub file: Option<S<FileYaml>>,
    pub cdc: Option<S<CdcYaml>>,
    /// Column name -> type, in order.
    pub schema: Option<S<IndexMap<String, S<String>>>>,
    pub event_time: Option<S<EventTimeYaml>>,
    pub idle_timeout: Option<S<String>>,
    pub expected_interval: Option<S<String>>,
    pub parallelism: Option<S<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeYaml {
    pub field: Option<S<String>>,
    pub max_out_of_orderness: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorYaml {
    pub count: Option<u64>,
    pub rate: Option<S<f64>>,
    pub interval: Option<S<String>>,
    pub hosts: Option<S<u32>>,
    pub skew: Option<S<f64>>,
    pub jitter: Option<S<String>>,
    /// RFC 3339 event time of the first record.
    pub start: Option<S<String>>,
    #[serde(default)]
    pub quiet: Vec<S<QuietYaml>>,
    pub partitions: Option<S<u32>>,
    pub seed: Option<u64>,
    /// CSV `vendor,product,version,port,weight` of what hosts run (adds a `vendor` column).
    pub vocabulary: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietYaml {
    pub at: S<String>,
    #[serde(rename = "for")]
    pub duration: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileYaml {
    /// Files or glob patterns, relative to the pipeline file's directory.
    pub paths: Vec<S<String>>,
    #[serde(default)]
    pub follow: bool,
    pub rate: Option<S<f64>>,
    pub poll_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorYaml {
    pub inputs: Vec<S<String>>,
    pub parallelism: Option<S<usize>>,
    pub window: Option<S<WindowYaml>>,
    pub route: Option<S<RouteYaml>>,
    pub enrich: Option<S<EnrichYaml>>,
}

/// A change stream in files: Debezium records, one per line; the snapshot files are read
/// first (unpaced), then the change files (paced by `rate`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcYaml {
    #[serde(default)]
    pub format: Option<S<String>>,
    #[serde(default)]
    pub snapshot: Vec<S<String>>,
    #[serde(default)]
    pub changes: Vec<S<String>>,
    /// Change records per second; omit to read as fast as possible.
    pub rate: Option<S<f64>>,
    /// Keep tailing the last change file.
    #[serde(default)]
    pub follow: bool,
    pub poll_interval: Option<S<String>>,
    /// Tables by port name.
    pub tables: S<IndexMap<String, S<CdcTableYaml>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcTableYaml {
    /// `schema.table` in the database (default `public.<name>`).
    pub table: Option<S<String>>,
    /// Primary key columns.
    pub key: Vec<S<String>>,
    /// Column name -> type, in order.
    pub columns: S<IndexMap<String, S<String>>>,
    /// Scale of decimal columns sent as base64 unscaled bytes without a schema.
    #[serde(default)]
    pub decimal_scales: IndexMap<String, S<u32>>,
}

/// Enrichment defaults of the pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentYaml {
    /// `gradual` or `gated`.
    pub strategy: Option<S<String>>,
    /// Events a shut gate keeps in memory; more are spilled to a local file.
    pub max_buffered: Option<S<usize>>,
}

/// An enrichment join: events (first input) with a `cdc` table port (second input).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichYaml {
    /// Event column -> table column.
    pub key: S<IndexMap<String, S<String>>>,
    pub columns: Option<Vec<S<String>>>,
    pub version_range: Option<S<VersionRangeYaml>>,
    /// Residual conditions, each `event_column OP table_column` with OP one of
    /// `= != < <= > >=`.
    #[serde(default, rename = "where")]
    pub conditions: Vec<S<String>>,
    /// `lookup` (latest rows) or `as_of` (rows valid at the event's time).
    pub mode: Option<S<String>>,
    /// `as_of` history kept behind the watermark.
    pub retention: Option<S<String>>,
    /// `emit`, `port`, `drop` or `hold`.
    pub miss: Option<S<String>>,
    pub hold_timeout: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub max_buffered: Option<S<usize>>,
}

/// The NVD version rule; table columns default to NVD's `cpe_match` names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRangeYaml {
    /// Event column with the observed version.
    pub version: S<String>,
    pub exact: Option<S<String>>,
    pub start_including: Option<S<String>>,
    pub start_excluding: Option<S<String>>,
    pub end_including: Option<S<String>>,
    pub end_excluding: Option<S<String>>,
}

/// Side outputs by value: each row goes to the first port listing its `field` value, else to
/// `main`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteYaml {
    pub field: S<String>,
    pub ports: IndexMap<String, S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowYaml {
    #[serde(default)]
    pub key: Vec<S<String>>,
    pub tumbling: Option<S<String>>,
    pub sliding: Option<S<SlidingYaml>>,
    pub session: Option<S<SessionYaml>>,
    pub allowed_lateness: Option<S<String>>,
    /// Output column -> `count`, `count(field)`, `sum(field)`, `min(field)`, `max(field)`,
    /// `avg(field)` or `count_distinct(field)`.
    pub aggregates: S<IndexMap<String, S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingYaml {
    pub size: S<String>,
    pub slide: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionYaml {
    pub gap: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkYaml {
    pub input: Option<S<String>>,
    #[serde(default)]
    pub inputs: Vec<S<String>>,
    /// Path of the JSON-lines file, relative to the working directory.
    pub file: Option<S<String>>,
    pub stdout: Option<S<bool>>,
    /// Columns written, in order (default: all).
    pub columns: Option<Vec<S<String>>>,
}
