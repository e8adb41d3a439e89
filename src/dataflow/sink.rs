//! The `Sink` contract: where results leave a pipeline. See the contract in `dataflow`'s
//! header for the order of calls.

use crate::error::RunError;
use crate::types::{Batch, Epoch};

/// What a sink promises about duplicates and losses across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guarantee {
    AtLeastOnce,
    Idempotent,
    ExactlyOnce,
}

impl Guarantee {
    pub fn parse(name: &str) -> Option<Guarantee> {
        match name {
            "at_least_once" => Some(Guarantee::AtLeastOnce),
            "idempotent" => Some(Guarantee::Idempotent),
            "exactly_once" => Some(Guarantee::ExactlyOnce),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::Idempotent => "idempotent",
            Guarantee::ExactlyOnce => "exactly_once",
        }
    }
}

/// A sink instance. Its life: `recover` once, then `write` batches; at each barrier
/// `pre_commit` (make what was written durable, not yet visible, and say what a restart needs
/// to finish its commit); `commit` when that checkpoint is durable; at the end of the input
/// a last `pre_commit(FINAL_EPOCH)`, its `commit`, then `finish`.
pub trait Sink: Send {
    fn guarantee(&self) -> Guarantee;

    fn write(&mut self, batch: &Batch) -> Result<(), RunError>;

    /// All input before barrier `epoch` has been written: pre-commit it. The bytes returned
    /// go into the checkpoint and come back to `recover`.
    fn pre_commit(&mut self, epoch: Epoch) -> Result<Vec<u8>, RunError>;

    /// The checkpoint of `epoch` is durable: make every pre-commit up to it visible.
    fn commit(&mut self, epoch: Epoch) -> Result<(), RunError>;

    /// Before the first write of a run: `state` is this sink's pre-commit in the checkpoint
    /// the run restarts from (`None`: no checkpoint). Finish that commit if it was cut short
    /// and drop whatever was written after it.
    fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError>;

    /// The last commit is done: close.
    fn finish(&mut self) -> Result<(), RunError>;

    /// Makes what was written so far visible, where the sink's guarantee allows it before
    /// a commit (a straight-through file or stdout flushes its buffer; a transactional sink
    /// shows nothing before its commit and does nothing). The runtime calls it once the
    /// sink's input has nothing more queued, or (under load) once written rows have waited
    /// `FLUSH_INTERVAL`, so they do not wait for the next barrier.
    fn flush(&mut self) -> Result<(), RunError> {
        Ok(())
    }

    /// Whether rows written are still held back after a `flush` (a sink that batches them
    /// for a while, as an insert into a database is costly): the runtime then calls `flush`
    /// again every `FLUSH_INTERVAL` until it holds none.
    fn holds_rows(&self) -> bool {
        false
    }
}

/// How long rows written to a sink that can show them at once (at-least-once, idempotent)
/// may wait in its buffers before the runtime flushes them while more input is queued (an
/// input with nothing queued is flushed at once).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);
