//! An operator task. `OperatorDriver` takes each message through the input gate (watermark
//! merge, barrier alignment), calls the operator, sends what it emits on its ports, forwards
//! the watermark (capped by what the operator holds back), snapshots the operator at each
//! aligned barrier and at the end of its input. `OperatorTask` is its thread: it feeds the
//! inbound channel to the driver until every input has ended.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use super::{BarrierAck, Emit, FINAL_EPOCH, TaskLink, route};
use crate::dataflow::Message;
use crate::dataflow::{Operator, Output, PortSpec};
use crate::error::RunError;
use crate::runtime::gate::{GateEvent, InputGate};
use crate::runtime::route::{Envelope, Router};
use crate::state::StateImage;
use crate::status::InstanceStatus;
use crate::time::Watermark;
use crate::types::Batch;

/// Gate → operator → ports.
pub struct OperatorDriver {
    op: Box<dyn Operator>,
    gate: InputGate,
    /// The operator's ports and pending batches (an `Output` between calls).
    out: Option<(Vec<PortSpec>, Vec<Batch>)>,
    status: Arc<InstanceStatus>,
    events: Vec<GateEvent>,
    /// The merged watermark of the inputs as of the last event handled. The gate's own
    /// state can be further on: a barrier alignment that completes replays a backlog whose
    /// watermarks the gate has merged before the driver has handed its records over.
    merged: Option<Watermark>,
    merged_time: Option<crate::types::EventTime>,
    /// The watermark last forwarded downstream, and whether the operator held it back.
    forwarded: Option<Watermark>,
    forwarded_time: Option<crate::types::EventTime>,
    holding: bool,
    /// When the operator's stats are next published (at watermarks; always at barriers and
    /// the end).
    stats_due_ms: i64,
}

/// How often an operator's stats are published at most, in processing time.
const STATS_EVERY_MS: i64 = 250;

impl OperatorDriver {
    pub fn new(
        op: Box<dyn Operator>,
        slot_input: Vec<usize>,
        status: Arc<InstanceStatus>,
        now_ms: i64,
    ) -> OperatorDriver {
        let out = Some(Output::new(op.ports()).into_parts());
        OperatorDriver {
            op,
            gate: InputGate::new(slot_input, now_ms),
            out,
            status,
            events: Vec::new(),
            merged: None,
            merged_time: None,
            forwarded: None,
            forwarded_time: None,
            holding: false,
            stats_due_ms: now_ms,
        }
    }

    pub fn operator(&self) -> &dyn Operator {
        self.op.as_ref()
    }

    pub fn restore(&mut self, state: &StateImage) -> Result<(), RunError> {
        Ok(self.op.restore(state)?)
    }

    /// Restores from the snapshots of another number of instances (`Operator::restore_rescaled`).
    pub fn restore_rescaled(
        &mut self,
        from: &crate::dataflow::Rescale<'_>,
    ) -> Result<(), crate::error::StateError> {
        self.op.restore_rescaled(from)
    }

    pub fn is_finished(&self) -> bool {
        self.gate.is_finished()
    }

    /// Handles one message from `slot`; barrier acks go to `ack`.
    pub fn on_message(
        &mut self,
        slot: usize,
        msg: Message,
        now_ms: i64,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
        ack: &mut impl FnMut(BarrierAck),
    ) -> Result<(), RunError> {
        let control = !matches!(msg, Message::Data(_));
        let mut events = std::mem::take(&mut self.events);
        self.gate.accept(slot, msg, now_ms, &mut |e| events.push(e));
        let result = self.handle(&mut events, now_ms, emit, ack);
        events.clear();
        self.events = events;
        if control {
            // Which input holds the watermark can change without the watermark changing.
            self.publish_watermark();
        }
        result
    }

    fn handle(
        &mut self,
        events: &mut Vec<GateEvent>,
        now_ms: i64,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
        ack: &mut impl FnMut(BarrierAck),
    ) -> Result<(), RunError> {
        for event in events.drain(..) {
            match event {
                GateEvent::Data { input, batch } => {
                    self.status.add_records_in(batch.len() as u64, now_ms);
                    crate::failpoint::slow("operator-process");
                    self.call(emit, |op, out| op.process(input, batch, out))?;
                    self.flush(emit)?;
                    if self.holding {
                        self.forward_watermark(emit)?;
                    }
                }
                GateEvent::InputWatermark { input, watermark } => {
                    self.op.on_input_watermark(input, watermark);
                }
                GateEvent::Watermark(wm) => {
                    self.merged = Some(wm);
                    if let Watermark::EventTime(t) = wm {
                        self.merged_time = Some(t);
                        self.call(emit, |op, out| op.on_watermark(t, out))?;
                        self.flush(emit)?;
                    }
                    self.publish_watermark();
                    self.forward_watermark(emit)?;
                    if now_ms >= self.stats_due_ms {
                        self.stats_due_ms = now_ms + STATS_EVERY_MS;
                        self.status.set_stats(&self.op.stats());
                    }
                }
                GateEvent::Barrier(epoch) => {
                    self.status.set_stats(&self.op.stats());
                    let state = self.op.snapshot()?;
                    ack(BarrierAck::Operator {
                        epoch,
                        state,
                        alignment_ms: self.gate.last_alignment_ms(),
                    });
                    emit(Emit::Control(Message::Barrier(epoch)))?;
                }
                GateEvent::End => {
                    self.status.set_stats(&self.op.stats());
                    self.status.set_finished();
                    emit(Emit::Control(Message::End))?;
                    // The state after the end of the input goes into the run's last
                    // checkpoint: restored, it has nothing left to emit.
                    let state = self.op.snapshot()?;
                    ack(BarrierAck::Operator {
                        epoch: FINAL_EPOCH,
                        state,
                        alignment_ms: 0,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs one operator call whose full batches are sent on as the call goes (bounded memory
    /// for bursts); what is left is sent by `flush` afterwards.
    fn call(
        &mut self,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
        f: impl FnOnce(&mut dyn Operator, &mut Output<'_>),
    ) -> Result<(), RunError> {
        let mut failed: Option<RunError> = None;
        let mut send = |port: usize, batch: Batch| {
            if failed.is_none()
                && let Err(e) = emit(Emit::Port(port, batch))
            {
                failed = Some(e);
            }
        };
        let parts = self
            .out
            .take()
            .expect("parts are put back after every call");
        let mut out = Output::with_flush(parts, &mut send);
        f(self.op.as_mut(), &mut out);
        self.out = Some(out.into_parts());
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Forwards the merged watermark the operator has seen (never the gate's, which may be
    /// ahead of the records handed over so far), capped by what the operator still holds
    /// back; never backwards, and idle only when nothing is held back.
    fn forward_watermark(
        &mut self,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let hold = self.op.watermark_hold();
        self.holding = hold.is_some();
        let next = if self.merged == Some(Watermark::Idle) && hold.is_none() {
            Some(Watermark::Idle)
        } else {
            self.merged_time.map(|t| {
                let capped = hold.map_or(t, |h| t.min(h));
                Watermark::EventTime(self.forwarded_time.map_or(capped, |f| f.max(capped)))
            })
        };
        let Some(next) = next else {
            return Ok(());
        };
        // An unchanged time is forwarded again after idleness: downstream learns the input
        // is active again.
        if Some(next) != self.forwarded {
            self.forwarded = Some(next);
            if let Watermark::EventTime(t) = next {
                self.forwarded_time = Some(t);
            }
            emit(Emit::Control(Message::Watermark(next)))?;
        }
        Ok(())
    }

    fn publish_watermark(&self) {
        let w = self.gate.watermarks();
        self.status
            .set_watermark(w.current(), w.is_idle(), w.holder(), w.advanced_at_ms());
    }

    fn flush(
        &mut self,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let (_, batches) = self
            .out
            .as_mut()
            .expect("parts are put back after every call");
        for (port, batch) in batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                emit(Emit::Port(port, batch.take()))?;
            }
        }
        Ok(())
    }
}

/// An operator's thread.
pub(crate) struct OperatorTask {
    driver: OperatorDriver,
    router: Router,
    inbound: Receiver<Envelope>,
    link: TaskLink,
    /// Where the driver goes when the task ends: its last snapshot may name files it owns (a
    /// disk table's change log), which must outlive the run's last checkpoint.
    kept: Arc<Mutex<Vec<OperatorDriver>>>,
}

impl OperatorTask {
    pub(crate) fn new(
        driver: OperatorDriver,
        router: Router,
        inbound: Receiver<Envelope>,
        link: TaskLink,
        kept: Arc<Mutex<Vec<OperatorDriver>>>,
    ) -> OperatorTask {
        OperatorTask {
            driver,
            router,
            inbound,
            link,
            kept,
        }
    }

    /// The thread's body.
    pub(crate) fn run(mut self) {
        let result = self.process();
        let OperatorTask {
            driver, link, kept, ..
        } = self;
        kept.lock().unwrap_or_else(|e| e.into_inner()).push(driver);
        link.end(result.map(|()| None));
    }

    /// Feeds inbound messages to the driver until every input has ended.
    fn process(&mut self) -> Result<(), RunError> {
        let mut emit = |e: Emit| route(&mut self.router, e);
        let link = &self.link;
        let mut ack = |a: BarrierAck| link.ack(a);
        loop {
            let Ok((slot, msg)) = self.inbound.recv() else {
                if link.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(());
                }
                return Err(link.stopped("an upstream task stopped"));
            };
            self.driver
                .on_message(slot as usize, msg, link.clock.now_ms(), &mut emit, &mut ack)?;
            if self.driver.is_finished() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateImage;
    use crate::status::Role;
    use crate::types::{DataType, EventTime, Field, Schema, SchemaRef, Value};

    /// Sends every row on unchanged.
    struct PassThrough(SchemaRef);

    impl Operator for PassThrough {
        fn ports(&self) -> Vec<PortSpec> {
            vec![PortSpec {
                name: "main".into(),
                schema: self.0.clone(),
            }]
        }
        fn process(&mut self, _input: usize, batch: Batch, out: &mut Output) {
            for (row, t) in batch.rows() {
                out.port(0).push_row_from(row, t);
            }
        }
        fn on_watermark(&mut self, _watermark: EventTime, _out: &mut Output) {}
        fn snapshot(&mut self) -> Result<StateImage, crate::error::StateError> {
            Ok(StateImage::default())
        }
        fn restore(&mut self, _snapshot: &StateImage) -> Result<(), crate::error::StateError> {
            Ok(())
        }
    }

    /// What a driver sends downstream, in order: a row's time or a watermark.
    #[derive(Debug, PartialEq)]
    enum Sent {
        Row(EventTime),
        Watermark(EventTime),
        Barrier,
    }

    /// A barrier alignment that completes replays the early slot's backlog at once; the
    /// watermark forwarded after each part of it is the one that part brought, never the
    /// backlog's last (which would overtake the records still to come: they would be late).
    #[test]
    fn a_replayed_backlog_forwards_each_watermark_after_its_records() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("v", DataType::Int)]));
        let batch = |t: EventTime| {
            let mut b = Batch::new(schema.clone());
            b.push_row([Value::Int(t)], t);
            b
        };
        let status = Arc::new(InstanceStatus::new(
            "op",
            0,
            Role::Operator,
            vec!["a#0".into(), "b#0".into()],
            &["main".to_string()],
            0,
        ));
        let mut driver =
            OperatorDriver::new(Box::new(PassThrough(schema.clone())), vec![0, 0], status, 0);
        let wm = |t| Message::Watermark(Watermark::EventTime(t));
        let mut sent = Vec::new();
        let mut feed = |driver: &mut OperatorDriver, slot: usize, msg: Message| {
            let mut emit = |e: Emit| {
                match e {
                    Emit::Port(_, b) => sent.extend(b.rows().map(|(_, t)| Sent::Row(t))),
                    Emit::Control(Message::Watermark(Watermark::EventTime(t))) => {
                        sent.push(Sent::Watermark(t))
                    }
                    Emit::Control(Message::Barrier(_)) => sent.push(Sent::Barrier),
                    Emit::Control(_) => {}
                }
                Ok(())
            };
            driver
                .on_message(slot, msg, 0, &mut emit, &mut |_| {})
                .unwrap();
        };
        feed(&mut driver, 1, wm(1_000));
        feed(&mut driver, 0, Message::Barrier(1));
        // Slot 0 is blocked by the alignment: its backlog waits.
        for msg in [
            Message::Data(batch(100)),
            wm(200),
            Message::Data(batch(250)),
            wm(400),
            Message::Data(batch(450)),
        ] {
            feed(&mut driver, 0, msg);
        }
        feed(&mut driver, 1, Message::Barrier(1));
        assert_eq!(
            sent,
            vec![
                Sent::Barrier,
                Sent::Row(100),
                Sent::Watermark(200),
                Sent::Row(250),
                Sent::Watermark(400),
                Sent::Row(450),
            ]
        );
    }
}
