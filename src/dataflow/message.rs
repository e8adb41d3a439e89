//! What flows on a channel between tasks.

use crate::time::Watermark;
use crate::types::{Batch, Epoch};

/// What flows on a channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Data(Batch),
    Watermark(Watermark),
    /// Everything before this belongs to checkpoint `epoch`.
    Barrier(Epoch),
    /// The sender has no more messages: its watermark is the end of time.
    End,
}

/// The epoch of a run's last checkpoint, taken when every input has ended: a sink's last
/// pre-commit is acknowledged under it, and the checkpoint completing the run commits it.
pub const FINAL_EPOCH: Epoch = Epoch::MAX;
