//! Sinks: where results leave a pipeline. A sink writes batches, makes what it wrote durable
//! (or pre-commits it) at each barrier, and finishes cleanly at the end of the stream.
//! Sinks declare the delivery guarantee they give.

pub mod file;

use crate::error::RunError;
use crate::types::{Batch, Epoch};

/// What a sink promises about duplicates and losses across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guarantee {
    AtLeastOnce,
    Idempotent,
    ExactlyOnce,
}

/// A sink instance.
pub trait Sink: Send {
    fn guarantee(&self) -> Guarantee;

    fn write(&mut self, batch: &Batch) -> Result<(), RunError>;

    /// All input before barrier `epoch` has been written: flush (pre-commit) it.
    fn on_barrier(&mut self, epoch: Epoch) -> Result<(), RunError>;

    /// The stream has ended: flush and close.
    fn finish(&mut self) -> Result<(), RunError>;
}
