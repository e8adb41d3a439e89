//! Output ports and the `Output` an operator emits into during one call: a port is a name and
//! the schema of what goes there; `main` is always port 0, the other built-in names are
//! `late`, `miss` and `dead_letter`.

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

    /// Rows finished from now on, on every port, carry `watermark` as their lateness
    /// reference (see `Batch`): set it to an input row's reference while emitting what that
    /// row produces, and back to `None` after.
    pub fn set_lateness_ref(&mut self, watermark: Option<EventTime>) {
        for b in &mut self.batches {
            b.set_lateness_ref(watermark);
        }
    }

    /// Emits a whole batch on `port` (appended to what is pending there).
    pub fn emit(&mut self, port: usize, batch: Batch) {
        let pending = &mut self.batches[port];
        if pending.is_empty() {
            let current = pending.lateness_ref_in_effect();
            *pending = batch;
            pending.set_lateness_ref(current);
        } else {
            pending.append(&batch);
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
