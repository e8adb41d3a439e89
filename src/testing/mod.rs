//! The operator test harness: feed an operator data, watermarks and barriers by hand, read
//! what it emitted per port, snapshot it at a barrier and restore the snapshot into a fresh
//! instance (or the snapshots of several instances into another number of them). Used by unit tests, property tests and the golden tests; not used at run time.
//! `contract` holds the checks every source and sink connector must pass, `fixtures` the
//! connectors of this repository set up for them.

pub mod clickhouse_fixtures;
pub mod contract;
pub mod fixtures;
pub mod kafka_fixtures;
pub mod postgres_fixtures;
pub mod services;

use std::collections::BTreeMap;

use crate::dataflow::{Operator, Output, Rescale};
use crate::state::StateImage;
use crate::time::{InputWatermarks, Watermark};
use crate::types::{Batch, EventTime, Value};

/// One row as emitted: its values and event time.
pub type EmittedRow = (Vec<Value>, EventTime);

/// Drives one operator instance as the runtime would, without threads or time.
pub struct Harness<O: Operator> {
    op: O,
    out: Output<'static>,
    watermarks: InputWatermarks,
    /// Per input, the watermark last told to the operator (`Operator::on_input_watermark`).
    input_watermarks: Vec<Option<EventTime>>,
    port_names: Vec<String>,
    emitted: BTreeMap<String, Vec<EmittedRow>>,
}

impl<O: Operator> Harness<O> {
    /// A harness for `op` with `inputs` inputs.
    pub fn new(op: O, inputs: usize) -> Harness<O> {
        let ports = op.ports();
        let port_names = ports.iter().map(|p| p.name.clone()).collect();
        Harness {
            op,
            out: Output::new(ports),
            watermarks: InputWatermarks::new(inputs, 0),
            input_watermarks: vec![None; inputs],
            port_names,
            emitted: BTreeMap::new(),
        }
    }

    pub fn operator(&self) -> &O {
        &self.op
    }

    /// Sends one batch on `input`.
    pub fn data(&mut self, input: usize, batch: Batch) {
        self.op.process(input, batch, &mut self.out);
        self.collect();
    }

    /// Sends a watermark on `input`; with several inputs the operator sees the input's own
    /// watermark rise, and it sees the merged watermark if that advances.
    pub fn watermark(&mut self, input: usize, wm: Watermark) {
        let merged = self.watermarks.update(input, wm, 0);
        if self.input_watermarks.len() > 1
            && !self.watermarks.input_is_idle(input)
            && let Some(w) = self.watermarks.input_watermark(input)
            && self.input_watermarks[input].is_none_or(|last| w > last)
        {
            self.input_watermarks[input] = Some(w);
            self.op.on_input_watermark(input, w);
        }
        if let Some(Watermark::EventTime(t)) = merged {
            self.op.on_watermark(t, &mut self.out);
            self.collect();
        }
    }

    /// Sends the same event-time watermark on every input.
    pub fn watermark_all(&mut self, t: EventTime) {
        for i in 0..self.watermarks.len() {
            self.watermark(i, Watermark::EventTime(t));
        }
    }

    /// A barrier on every input: returns the operator's snapshot.
    pub fn barrier(&mut self) -> StateImage {
        self.op.snapshot().expect("snapshot")
    }

    /// Restores `snapshot` into `fresh` and returns a harness around it with a fresh input
    /// watermark tracker, as after a restart: the operator's own watermark is part of its
    /// snapshot, and the inputs re-establish theirs as they replay from the barrier.
    pub fn restore(fresh: O, snapshot: &StateImage, inputs: usize) -> Harness<O> {
        let mut h = Harness::new(fresh, inputs);
        h.op.restore(snapshot).expect("restore");
        h
    }

    /// Restores instance `instance` of `parallelism` into `fresh` from `snapshots`, one per
    /// instance of a run with another number of instances (`Operator::restore_rescaled`).
    pub fn restore_rescaled(
        fresh: O,
        instance: usize,
        parallelism: usize,
        snapshots: &[StateImage],
        inputs: usize,
    ) -> Harness<O> {
        let mut h = Harness::new(fresh, inputs);
        let from = Rescale::new(instance, parallelism, snapshots.iter().collect());
        h.op.restore_rescaled(&from).expect("restore");
        h
    }

    fn collect(&mut self) {
        for (port, batch) in self.out.drain() {
            let rows = self
                .emitted
                .entry(self.port_names[port].clone())
                .or_default();
            rows.extend(batch.rows().map(|(r, t)| (r.to_vec(), t)));
        }
    }

    /// Everything emitted on `port` since the last call, in emission order.
    pub fn take(&mut self, port: &str) -> Vec<EmittedRow> {
        self.emitted.remove(port).unwrap_or_default()
    }

    /// Everything emitted on every port since the last call.
    pub fn take_all(&mut self) -> BTreeMap<String, Vec<EmittedRow>> {
        std::mem::take(&mut self.emitted)
    }
}
