//! Operators: synchronous, deterministic transformations between sources and sinks. An
//! operator sees batches and watermarks (already merged over its inputs by the runtime),
//! emits to named output ports, and can snapshot and restore its state. Operators never do
//! I/O and never read the system time.

pub mod enrich;
pub mod route;
pub mod version_range;
pub mod window;

use crate::error::StateError;
use crate::state::StateImage;
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
/// consumers afterwards. With a flush target (the runtime gives one), a port's pending batch
/// is handed on as soon as it holds `FLUSH_ROWS` rows, so a call that emits a burst (a window
/// firing, a join releasing what waited for the watermark) never holds it all in memory.
pub struct Output<'a> {
    ports: Vec<PortSpec>,
    batches: Vec<Batch>,
    flush: Option<&'a mut dyn FnMut(usize, Batch)>,
}

/// Rows after which a pending batch is handed on during a call.
pub const FLUSH_ROWS: usize = 8192;

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("ports", &self.ports)
            .field(
                "pending",
                &self.batches.iter().map(Batch::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Output<'static> {
    pub fn new(ports: Vec<PortSpec>) -> Output<'static> {
        let batches = ports.iter().map(|p| Batch::new(p.schema.clone())).collect();
        Output {
            ports,
            batches,
            flush: None,
        }
    }
}

impl<'a> Output<'a> {
    /// An output over `parts` (ports and their pending batches, as `into_parts` gives them)
    /// that hands full batches to `flush` during the call.
    pub fn with_flush(
        parts: (Vec<PortSpec>, Vec<Batch>),
        flush: &'a mut dyn FnMut(usize, Batch),
    ) -> Output<'a> {
        Output {
            ports: parts.0,
            batches: parts.1,
            flush: Some(flush),
        }
    }

    /// The ports and their pending batches.
    pub fn into_parts(self) -> (Vec<PortSpec>, Vec<Batch>) {
        (self.ports, self.batches)
    }

    pub fn ports(&self) -> &[PortSpec] {
        &self.ports
    }

    /// Hands `port`'s pending batch on if it is full (with a flush target).
    fn flush_full(&mut self, port: usize) {
        if let Some(flush) = self.flush.as_mut()
            && self.batches[port].len() >= FLUSH_ROWS
        {
            flush(port, self.batches[port].take());
        }
    }

    /// The batch being built for `port`: append rows to it.
    pub fn port(&mut self, port: usize) -> &mut Batch {
        self.flush_full(port);
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
        self.flush_full(port);
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
    fn snapshot(&self) -> Result<StateImage, StateError>;

    /// Replaces the operator's state with a snapshot taken by `snapshot`.
    fn restore(&mut self, snapshot: &StateImage) -> Result<(), StateError>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, Field, Schema, Value};
    use std::sync::Arc;

    #[test]
    fn a_burst_is_handed_on_in_full_batches_during_the_call() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]));
        let parts = Output::new(vec![PortSpec {
            name: MAIN_PORT.into(),
            schema,
        }])
        .into_parts();
        let mut sent: Vec<usize> = Vec::new();
        let mut flush = |port: usize, b: Batch| {
            assert_eq!(port, 0);
            sent.push(b.len());
        };
        let mut out = Output::with_flush(parts, &mut flush);
        for i in 0..20_000 {
            out.port(0).push_row([Value::Int(i)], i);
        }
        let rest: Vec<usize> = out.drain().map(|(_, b)| b.len()).collect();
        drop(out);
        assert_eq!(sent, vec![FLUSH_ROWS, FLUSH_ROWS]);
        assert_eq!(rest, vec![20_000 - 2 * FLUSH_ROWS]);
    }
}
