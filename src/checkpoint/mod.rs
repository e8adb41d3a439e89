//! Checkpoints: what a completed barrier epoch holds (source positions and watermark state,
//! operator state, sink pre-commits) and how it is kept on disk (`store`), so that a run can
//! restart exactly where the last complete checkpoint left it.
//!
//! A checkpoint is taken by aligned barriers (the runtime injects barrier `n` into every
//! source; an operator with several inputs aligns them; at the barrier each source reports
//! its positions, each operator its state and each sink its pre-commit). It is complete when
//! its manifest is durable; only then are sinks told to commit and sources told that their
//! upstream may be acknowledged.

pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::SourcePosition;
use crate::state::StateImage;
use crate::types::{Epoch, EventTime};

pub use store::{CheckpointStore, Listed, Restored};

/// Where one source instance was at a barrier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    pub positions: Vec<SourcePosition>,
    /// The highest event time seen per partition (the watermark generators' state), in the
    /// order of `partitions`.
    pub max_event_times: Vec<Option<EventTime>>,
    /// The instance's partitions at the barrier (checkpoints of manifest format 2 and older
    /// lack it: their `max_event_times` are in the order of the partitions at the start).
    #[serde(default)]
    pub partitions: Vec<String>,
}

/// Everything one epoch's barrier collected, by instance label (`node#instance`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    pub epoch: Epoch,
    pub sources: BTreeMap<String, SourceCheckpoint>,
    pub operators: BTreeMap<String, StateImage>,
    pub sinks: BTreeMap<String, Vec<u8>>,
    /// Every source had ended: the run is over, nothing is left to read.
    pub finished: bool,
    /// Processing time the barrier was injected, and when every task had acknowledged it.
    pub started_ms: i64,
    pub acknowledged_ms: i64,
    /// The longest time an operator spent aligning its inputs for this barrier.
    pub alignment_ms: i64,
}

impl Checkpoint {
    /// Bytes of operator state (blobs included) and sink pre-commits.
    pub fn state_bytes(&self) -> usize {
        self.operators.values().map(StateImage::len).sum::<usize>()
            + self.sinks.values().map(Vec::len).sum::<usize>()
    }
}

/// A checkpoint that could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is broken: {reason}")]
    Corrupt { path: String, reason: String },
    /// The directory holds checkpoints and none of them can be restored: starting from
    /// scratch would silently begin every output afresh, so it is refused.
    #[error(
        "none of the {} checkpoints in {dir} can be restored:{}",
        broken.len(),
        broken.iter().map(|(path, why)| format!("\n  {path}: {why}")).collect::<String>()
    )]
    NoneRestorable {
        dir: String,
        /// Each checkpoint directory, newest first, with why it cannot be restored.
        broken: Vec<(String, String)>,
    },
}

impl CheckpointError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            context: context.into(),
            source,
        }
    }
}
