//! The pipeline file as written: strict serde structures (unknown fields are errors) whose
//! values keep their line and column, so that every later check can point at the YAML. This
//! module holds the pipeline-wide sections and the settings shared by components (event
//! time, a change stream's tables); each component's own block is declared by the component
//! (see `crate::components`).

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// What `${VAR}`s were replaced by (to report problems as the file is written).
    #[serde(skip)]
    pub interpolation: crate::config::env::Interpolation,
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
    pub sources: IndexMap<String, S<crate::components::SourceYaml>>,
    #[serde(default)]
    pub operators: IndexMap<String, S<crate::components::OperatorYaml>>,
    #[serde(default)]
    pub sinks: IndexMap<String, S<crate::components::SinkYaml>>,
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
    /// Alert when a partition of a consumer group's topics has had no owner for this long
    /// (or `off`).
    pub partition_unowned: Option<S<String>>,
    /// How often rules are evaluated.
    pub check_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsYaml {
    /// `host:port` for `/metrics`, `/status` and `POST /savepoint`, or `off`.
    pub addr: Option<S<String>>,
    /// How long a connection has to deliver a request's head.
    pub header_read_timeout: Option<S<String>>,
    /// How long a connection may stall while no request is being answered.
    pub idle_timeout: Option<S<String>>,
    /// Connections served at once.
    pub max_connections: Option<S<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeYaml {
    pub field: Option<S<String>>,
    pub max_out_of_orderness: Option<S<String>>,
    /// Records (and heartbeats) further ahead of the clock than this go to `dead_letter`.
    pub max_ahead: Option<S<String>>,
}

/// One table of a change stream: the port it goes to is its name in `tables:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableYaml {
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
