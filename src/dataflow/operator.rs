//! The `Operator` contract: synchronous, deterministic transformations between sources and
//! sinks. See the contract in `dataflow`'s header for the order of calls.

use crate::dataflow::key_group::Rescale;
use crate::dataflow::port::{Output, PortSpec};
use crate::error::StateError;
use crate::state::StateImage;
use crate::types::{Batch, EventTime};

/// A stateful or stateless transformation.
pub trait Operator: Send {
    /// Output ports, `main` first.
    fn ports(&self) -> Vec<PortSpec>;

    /// Processes one batch from input `input` (inputs are numbered in the order the pipeline
    /// file lists them).
    fn process(&mut self, input: usize, batch: Batch, out: &mut Output);

    /// The merged watermark of the operator's inputs advanced to `watermark`.
    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output);

    /// The watermark of input `input` alone (the minimum over the instances feeding it,
    /// none of them idle) rose to `watermark`; called only for an operator with several
    /// inputs, in order with their records, before the merged watermark it may move. For
    /// operators whose inputs play different parts: an as-of join needs only its reference
    /// side to have passed an event's time to join it.
    fn on_input_watermark(&mut self, _input: usize, _watermark: EventTime) {}

    /// Serializes the operator's state (taken at a barrier, after all input before it).
    fn snapshot(&mut self) -> Result<StateImage, StateError>;

    /// Replaces the operator's state with a snapshot taken by `snapshot`.
    fn restore(&mut self, snapshot: &StateImage) -> Result<(), StateError>;

    /// Restores this instance from a checkpoint taken with another number of instances of
    /// the operator (`from` holds every former instance's snapshot): it keeps the keyed
    /// state whose key group it owns now (`Rescale::owns_key`) and the unkeyed state of the
    /// former instances it takes (`Rescale::takes`), so that the new instances together hold
    /// exactly what the former ones did. An operator without state need not implement it.
    fn restore_rescaled(&mut self, from: &Rescale<'_>) -> Result<(), StateError> {
        match from.snapshots.iter().find(|s| !s.is_empty()) {
            None => Ok(()),
            Some(_) => Err(StateError::Rescale {
                reason: "this operator's state cannot be spread over another number of \
                         instances"
                    .into(),
            }),
        }
    }

    /// The event time below which the operator may still emit records (it buffers older
    /// ones): the runtime forwards no watermark above it, so buffered records are never late
    /// downstream. `None`: nothing buffered.
    fn watermark_hold(&self) -> Option<EventTime> {
        None
    }

    /// Counters and gauges about the operator's work, shown in `/status` (the runtime reads
    /// them at watermarks, barriers and the end).
    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
