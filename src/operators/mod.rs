//! Operators: synchronous, deterministic transformations between sources and sinks. An
//! operator sees batches and watermarks (already merged over its inputs by the runtime),
//! emits to named output ports, and can snapshot and restore its state. Operators never do
//! I/O and never read the system time.

pub mod enrich;
pub mod route;
pub mod version_range;
pub mod window;

use crate::error::StateError;
use crate::types::{Batch, EventTime, SchemaRef};

/// The main output port's name; it is always port 0.
pub const MAIN_PORT: &str = "main";
/// Records too late even for `allowed_lateness`.
pub const LATE_PORT: &str = "late";
/// Events an enrichment found no reference row for (with `miss: port`).
pub const MISS_PORT: &str = "miss";
/// Records that could not be decoded or processed, with the reason.
pub const DEAD_LETTER_PORT: &str = "dead_letter";

/// An output port: a name and the schema of what is emitted there.
#[derive(Clone, Debug, PartialEq)]
pub struct PortSpec {
    pub name: String,
    pub schema: SchemaRef,
}

/// Where an operator's results go during one call; the runtime routes them to the port's
/// consumers afterwards.
#[derive(Debug)]
pub struct Output {
    ports: Vec<PortSpec>,
    batches: Vec<Batch>,
}

impl Output {
    pub fn new(ports: Vec<PortSpec>) -> Output {
        let batches = ports.iter().map(|p| Batch::new(p.schema.clone())).collect();
        Output { ports, batches }
    }

    pub fn ports(&self) -> &[PortSpec] {
        &self.ports
    }

    /// The batch being built for `port`: append rows to it.
    pub fn port(&mut self, port: usize) -> &mut Batch {
        &mut self.batches[port]
    }

    /// Emits a whole batch on `port` (appended to what is pending there).
    pub fn emit(&mut self, port: usize, batch: Batch) {
        let pending = &mut self.batches[port];
        if pending.is_empty() {
            *pending = batch;
        } else {
            for (row, t) in batch.rows() {
                pending.push_row_from(row, t);
            }
        }
    }

    /// Takes the non-empty pending batches, by port index.
    pub fn drain(&mut self) -> impl Iterator<Item = (usize, Batch)> + '_ {
        self.batches
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, b)| (i, b.take()))
    }
}

/// A stateful or stateless transformation.
pub trait Operator: Send {
    /// Output ports, `main` first.
    fn ports(&self) -> Vec<PortSpec>;

    /// Processes one batch from input `input` (inputs are numbered in the order the pipeline
    /// file lists them).
    fn process(&mut self, input: usize, batch: Batch, out: &mut Output);

    /// The merged watermark of the operator's inputs advanced to `watermark`.
    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output);

    /// Serializes the operator's state (taken at a barrier, after all input before it).
    fn snapshot(&self) -> Result<Vec<u8>, StateError>;

    /// Replaces the operator's state with a snapshot taken by `snapshot`.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), StateError>;

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
