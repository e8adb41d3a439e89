//! The physical plan the runtime executes: nodes (sources, operators, sinks) with their
//! parallelism, output ports and input edges. The pipeline file is compiled into a `Plan`;
//! the library API can also build one directly.

use std::sync::Arc;
use std::time::Duration;

use crate::alerts::AlertRules;
use crate::dataflow::Sink;
use crate::dataflow::Source;
use crate::dataflow::{Operator, PortSpec};
use crate::error::RunError;

/// Builds the source instance `instance` of `parallelism`.
pub type SourceFactory =
    Arc<dyn Fn(usize, usize) -> Result<Box<dyn Source>, RunError> + Send + Sync>;
/// Builds operator instance `instance`.
pub type OperatorFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Operator>, RunError> + Send + Sync>;
/// Builds sink instance `instance`.
pub type SinkFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Sink>, RunError> + Send + Sync>;

/// How a source's watermarks are generated.
#[derive(Clone, Debug, PartialEq)]
pub struct WatermarkSpec {
    pub max_out_of_orderness: Duration,
    /// A record whose event time is further ahead of the clock than this is a dead letter:
    /// one bad timestamp (year 9999) must not move the watermark past everything to come.
    pub max_ahead: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Alert when a partition has had no record for longer than this.
    pub expected_interval: Option<Duration>,
}

pub enum NodeKind {
    Source {
        factory: SourceFactory,
        watermark: WatermarkSpec,
    },
    Operator {
        factory: OperatorFactory,
        /// Columns (of every input) that rows are shuffled by, so equal keys meet.
        key_columns: Option<Vec<usize>>,
        /// Input edges every instance receives in full (a reference table's changes).
        broadcast_inputs: Vec<usize>,
    },
    Sink {
        factory: SinkFactory,
    },
}

/// An input edge: output port `port` of node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputRef {
    pub node: usize,
    pub port: usize,
}

pub struct PlanNode {
    pub name: String,
    pub parallelism: usize,
    pub kind: NodeKind,
    pub inputs: Vec<InputRef>,
    pub ports: Vec<PortSpec>,
}

impl PlanNode {
    pub fn role(&self) -> crate::status::Role {
        match self.kind {
            NodeKind::Source { .. } => crate::status::Role::Source,
            NodeKind::Operator { .. } => crate::status::Role::Operator,
            NodeKind::Sink { .. } => crate::status::Role::Sink,
        }
    }
}

/// Runtime settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeOptions {
    /// Records per batch read by sources.
    pub batch_size: usize,
    /// Batches buffered per task input channel (bounds memory, gives backpressure).
    pub channel_capacity: usize,
    /// Inject a barrier every interval; `None` = no checkpoints.
    pub checkpoint_interval: Option<Duration>,
    /// Where completed checkpoints are written (`None`: they are not kept).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Complete checkpoints kept in `checkpoint_dir`.
    pub checkpoint_retain: usize,
    pub alerts: AlertRules,
    /// How often alert rules and status gauges are evaluated.
    pub monitor_interval: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> RuntimeOptions {
        RuntimeOptions {
            batch_size: 1024,
            channel_capacity: 16,
            checkpoint_interval: Some(Duration::from_secs(10)),
            checkpoint_dir: None,
            checkpoint_retain: 3,
            alerts: AlertRules::default(),
            monitor_interval: Duration::from_secs(1),
        }
    }
}

/// A whole pipeline, ready to run.
pub struct Plan {
    pub name: String,
    pub nodes: Vec<PlanNode>,
    pub options: RuntimeOptions,
}
