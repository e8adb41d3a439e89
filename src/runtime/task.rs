//! What one task instance does with its messages, written as deterministic drivers that take
//! the processing time as an argument: `SourceDriver` (read, generate watermarks, inject
//! barriers), `OperatorDriver` (gate → operator → ports) and `SinkDriver` (gate → sink). The
//! threads in `exec` only move messages between channels and these drivers, so tests can run
//! whole pipelines step by step on a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::checkpoint::SourceCheckpoint;
use crate::dataflow::Message;
use crate::dataflow::Sink;
use crate::dataflow::SourcePosition;
use crate::dataflow::{Operator, Output, PortSpec};
use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::error::RunError;
use crate::runtime::gate::{GateEvent, InputGate};
use crate::runtime::plan::WatermarkSpec;
use crate::state::StateImage;
use crate::status::InstanceStatus;
use crate::time::{PartitionWatermarks, Watermark};
use crate::types::{Batch, Epoch};

/// What a driver asks to be sent downstream.
#[derive(Debug, PartialEq)]
pub enum Emit {
    /// A batch on output port `port`.
    Port(usize, Batch),
    /// A watermark, barrier or end, for every consumer.
    Control(Message),
}

/// What a task reports to the checkpoint coordinator at a barrier.
#[derive(Debug, PartialEq)]
pub enum BarrierAck {
    Source {
        epoch: Epoch,
        checkpoint: SourceCheckpoint,
    },
    Operator {
        epoch: Epoch,
        state: StateImage,
        /// How long the operator waited for this barrier on its other inputs.
        alignment_ms: i64,
    },
    /// A sink's pre-commit of everything before the barrier; at the end of the stream,
    /// `epoch` is `FINAL_EPOCH` and covers everything.
    Sink { epoch: Epoch, state: Vec<u8> },
}

pub use crate::dataflow::FINAL_EPOCH;

/// What a source asks of its thread after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceStep {
    /// Step again at once.
    Continue,
    /// Nothing to read before this processing time.
    WaitUntil(i64),
    /// Every partition has ended; `End` has been emitted.
    Finished,
}

pub struct SourceDriver {
    source: Box<dyn Source>,
    /// The partitions' names, in the source's order.
    names: Vec<String>,
    /// What each barrier recorded, until its checkpoint is durable (or superseded).
    barrier_positions: BTreeMap<Epoch, Vec<SourcePosition>>,
    watermarks: PartitionWatermarks,
    bufs: ReadBuffers,
    batch_size: usize,
    status: Arc<InstanceStatus>,
    idle: Vec<bool>,
    ended: Vec<bool>,
    idle_transitions: metrics::Counter,
    idle_transition_count: u64,
    /// Longest wait between watermark polls, so idleness is noticed in time.
    poll_every_ms: i64,
}

impl SourceDriver {
    pub fn new(
        source: Box<dyn Source>,
        spec: &WatermarkSpec,
        batch_size: usize,
        status: Arc<InstanceStatus>,
        now_ms: i64,
    ) -> SourceDriver {
        let names = source.partitions();
        let n = names.len();
        let poll_every_ms = spec
            .idle_timeout
            .map_or(200, |t| (t.as_millis() as i64 / 4).clamp(1, 200));
        let labels = [(crate::metrics::LABEL_NODE, status.node.clone())];
        SourceDriver {
            watermarks: PartitionWatermarks::new(
                n,
                spec.max_out_of_orderness,
                spec.idle_timeout,
                now_ms,
            ),
            bufs: ReadBuffers::for_source(source.as_ref()),
            names,
            barrier_positions: BTreeMap::new(),
            batch_size,
            idle: vec![false; n],
            ended: vec![false; n],
            idle_transitions: metrics::counter!(crate::metrics::IDLE_TRANSITIONS, &labels),
            idle_transition_count: 0,
            status,
            source,
            poll_every_ms,
        }
    }

    pub fn positions(&self) -> Vec<SourcePosition> {
        self.source.positions()
    }

    pub fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError> {
        self.source.seek(positions)
    }

    /// Continues from a checkpoint: the source rewinds to its positions and the watermark
    /// generators take up their state, by partition name.
    pub fn restore(&mut self, checkpoint: &SourceCheckpoint) -> Result<(), RunError> {
        self.source.seek(&checkpoint.positions)?;
        let times: Vec<Option<crate::types::EventTime>> = if checkpoint.partitions.is_empty() {
            checkpoint.max_event_times.clone()
        } else {
            self.names
                .iter()
                .map(|n| {
                    checkpoint
                        .partitions
                        .iter()
                        .position(|p| p == n)
                        .and_then(|i| checkpoint.max_event_times.get(i).copied().flatten())
                })
                .collect()
        };
        self.watermarks.restore_max_event_times(&times);
        Ok(())
    }

    /// The checkpoint of `epoch` is durable: the source acknowledges what it reported at
    /// that barrier upstream (at `FINAL_EPOCH`, where it ended).
    pub fn checkpoint_complete(&mut self, epoch: Epoch) -> Result<(), RunError> {
        let positions = if epoch == FINAL_EPOCH {
            self.barrier_positions.clear();
            self.source.positions()
        } else {
            let Some(p) = self.barrier_positions.remove(&epoch) else {
                return Ok(());
            };
            self.barrier_positions = self.barrier_positions.split_off(&epoch);
            p
        };
        self.source.checkpoint_complete(epoch, &positions)
    }

    /// Puts the source in bootstrap mode: whether it reads anything (see
    /// `Source::start_bootstrap`).
    pub fn start_bootstrap(&mut self) -> bool {
        self.source.start_bootstrap()
    }

    /// Whether the source has read (and emitted) what a bootstrap needs.
    pub fn bootstrap_done(&self) -> bool {
        self.source.bootstrap_done()
    }

    /// What a checkpoint keeps of this source now.
    pub fn checkpoint(&self) -> SourceCheckpoint {
        SourceCheckpoint {
            positions: self.source.positions(),
            max_event_times: self.watermarks.max_event_times(),
            partitions: self.names.clone(),
        }
    }

    /// Emits a barrier after everything read so far, and returns what it covers.
    pub fn barrier(
        &mut self,
        epoch: Epoch,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<BarrierAck, RunError> {
        let checkpoint = self.checkpoint();
        self.barrier_positions
            .insert(epoch, checkpoint.positions.clone());
        emit(Emit::Control(Message::Barrier(epoch)))?;
        Ok(BarrierAck::Source { epoch, checkpoint })
    }

    /// Reads one batch (or learns there is nothing to read) and emits records, dead letters
    /// and watermark changes.
    pub fn step(
        &mut self,
        now_ms: i64,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<SourceStep, RunError> {
        let status = self.source.read(&mut self.bufs, self.batch_size, now_ms)?;
        let step = match status {
            ReadStatus::Data { partition } => {
                self.status.add_records_in(self.bufs_len() as u64, now_ms);
                self.watermarks.on_activity(partition, now_ms);
                self.flush(partition, emit)?;
                SourceStep::Continue
            }
            ReadStatus::PartitionEnded { partition } => {
                // A source may hand over what it emits at the end (e.g. snapshot markers).
                self.flush(partition, emit)?;
                self.watermarks.on_partition_end(partition);
                self.ended[partition] = true;
                SourceStep::Continue
            }
            ReadStatus::Pending { retry_at_ms } => {
                SourceStep::WaitUntil(retry_at_ms.min(now_ms + self.poll_every_ms))
            }
            ReadStatus::PartitionsChanged => {
                self.reassign(now_ms);
                SourceStep::Continue
            }
            ReadStatus::Finished => {
                for p in 0..self.ended.len() {
                    self.watermarks.on_partition_end(p);
                    self.ended[p] = true;
                }
                SourceStep::Finished
            }
        };
        self.poll_watermark(now_ms, emit)?;
        if step == SourceStep::Finished {
            emit(Emit::Control(Message::End))?;
            self.status.set_finished();
        }
        Ok(step)
    }

    /// The source's partitions changed: match them by name with the ones known.
    fn reassign(&mut self, now_ms: i64) {
        let names = self.source.partitions();
        let keep: Vec<Option<usize>> = names
            .iter()
            .map(|n| self.names.iter().position(|o| o == n))
            .collect();
        for old in self.names.iter().filter(|o| !names.contains(o)) {
            tracing::info!(source = %self.status.node, partition = %old, "partition revoked: no longer holds the watermark");
        }
        for (n, k) in names.iter().zip(&keep) {
            if k.is_none() {
                tracing::info!(source = %self.status.node, partition = %n, "partition assigned");
            }
        }
        let pick = |v: &[bool]| -> Vec<bool> {
            keep.iter()
                .map(|k| k.and_then(|i| v.get(i).copied()).unwrap_or(false))
                .collect()
        };
        self.idle = pick(&self.idle);
        self.ended = pick(&self.ended);
        self.watermarks.remap(&keep, now_ms);
        self.status.set_partitions(&names, now_ms);
        self.names = names;
    }

    fn bufs_len(&self) -> usize {
        self.bufs.records.len()
            + self.bufs.dead_letters.len()
            + self.bufs.extra.iter().map(Batch::len).sum::<usize>()
    }

    /// Moves partition `p`'s watermark by what was read and emits every non-empty buffer on
    /// its port (records, dead letters, extra ports).
    fn flush(
        &mut self,
        p: usize,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        for &t in self.bufs.records.event_times() {
            self.watermarks.on_event(p, t);
        }
        for b in &self.bufs.extra {
            for &t in b.event_times() {
                self.watermarks.on_event(p, t);
            }
        }
        if let Some(t) = self.bufs.progress.take() {
            self.watermarks.on_event(p, t);
        }
        if !self.bufs.records.is_empty() {
            emit(Emit::Port(0, self.bufs.records.take()))?;
        }
        if !self.bufs.dead_letters.is_empty() {
            emit(Emit::Port(1, self.bufs.dead_letters.take()))?;
        }
        for i in 0..self.bufs.extra.len() {
            if !self.bufs.extra[i].is_empty() {
                emit(Emit::Port(2 + i, self.bufs.extra[i].take()))?;
            }
        }
        Ok(())
    }

    /// Re-evaluates idleness and emits the watermark if it changed.
    pub fn poll_watermark(
        &mut self,
        now_ms: i64,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let changed = self.watermarks.poll(now_ms);
        for (p, was_idle) in self.idle.iter_mut().enumerate() {
            let idle = self.watermarks.partition_is_idle(p);
            if idle && !*was_idle {
                self.idle_transitions.increment(1);
                self.idle_transition_count += 1;
                self.status
                    .set_stats(&[("idle_transitions", self.idle_transition_count)]);
                tracing::info!(
                    source = %self.status.node,
                    partition = %self.names[p],
                    "partition idle: no longer holds the watermark"
                );
            } else if !idle && *was_idle {
                tracing::info!(
                    source = %self.status.node,
                    partition = %self.names[p],
                    "partition active again: its watermark counts again"
                );
            }
            *was_idle = idle;
            self.status.set_partition(
                p,
                self.watermarks.partition_watermark(p),
                idle,
                self.ended[p],
                self.watermarks.last_activity_ms(p),
            );
        }
        let emitted = self.watermarks.emitted();
        self.status.set_watermark(
            match emitted {
                Some(Watermark::EventTime(t)) => Some(t),
                _ => None,
            },
            emitted == Some(Watermark::Idle),
            self.watermarks.holder(),
            self.watermarks.advanced_at_ms(),
        );
        if let Some(wm) = changed {
            emit(Emit::Control(Message::Watermark(wm)))?;
        }
        Ok(())
    }
}

/// Gate → operator → ports.
pub struct OperatorDriver {
    op: Box<dyn Operator>,
    gate: InputGate,
    /// The operator's ports and pending batches (an `Output` between calls).
    out: Option<(Vec<PortSpec>, Vec<Batch>)>,
    status: Arc<InstanceStatus>,
    events: Vec<GateEvent>,
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
                    self.call(emit, |op, out| op.process(input, batch, out))?;
                    self.flush(emit)?;
                    if self.holding {
                        self.forward_watermark(emit)?;
                    }
                }
                GateEvent::Watermark(wm) => {
                    if let Watermark::EventTime(t) = wm {
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

    /// Forwards the merged watermark, capped by what the operator still holds back; never
    /// backwards, and idle only when nothing is held back.
    fn forward_watermark(
        &mut self,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let hold = self.op.watermark_hold();
        self.holding = hold.is_some();
        let merged = self.gate.watermarks();
        let next = if merged.is_idle() && hold.is_none() {
            Some(Watermark::Idle)
        } else {
            merged.current().map(|t| {
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

/// Gate → sink.
pub struct SinkDriver {
    sink: Box<dyn Sink>,
    gate: InputGate,
    status: Arc<InstanceStatus>,
    events: Vec<GateEvent>,
}

impl SinkDriver {
    pub fn new(
        sink: Box<dyn Sink>,
        slot_input: Vec<usize>,
        status: Arc<InstanceStatus>,
        now_ms: i64,
    ) -> SinkDriver {
        SinkDriver {
            sink,
            gate: InputGate::new(slot_input, now_ms),
            status,
            events: Vec::new(),
        }
    }

    /// Every input has ended (its final pre-commit is acknowledged; `commit(FINAL_EPOCH)`
    /// then `finish` end it).
    pub fn is_finished(&self) -> bool {
        self.gate.is_finished()
    }

    /// Restarting from a checkpoint (`state`: the sink's pre-commit in it; `None`: from the
    /// beginning).
    pub fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError> {
        self.sink.recover(state)
    }

    /// Checkpoint `epoch` is durable: its output becomes visible.
    pub fn commit(&mut self, epoch: Epoch) -> Result<(), RunError> {
        self.sink.commit(epoch)
    }

    /// The final commit is done: close.
    pub fn finish(&mut self) -> Result<(), RunError> {
        self.status.set_finished();
        self.sink.finish()
    }

    pub fn on_message(
        &mut self,
        slot: usize,
        msg: Message,
        now_ms: i64,
        ack: &mut impl FnMut(BarrierAck),
    ) -> Result<(), RunError> {
        let control = !matches!(msg, Message::Data(_));
        let mut events = std::mem::take(&mut self.events);
        self.gate.accept(slot, msg, now_ms, &mut |e| events.push(e));
        let mut result = Ok(());
        for event in events.drain(..) {
            let r = match event {
                GateEvent::Data { batch, .. } => {
                    self.status.add_records_in(batch.len() as u64, now_ms);
                    self.sink.write(&batch)
                }
                GateEvent::Watermark(_) => Ok(()),
                GateEvent::Barrier(epoch) => self.sink.pre_commit(epoch).map(|state| {
                    ack(BarrierAck::Sink { epoch, state });
                }),
                GateEvent::End => self.sink.pre_commit(FINAL_EPOCH).map(|state| {
                    ack(BarrierAck::Sink {
                        epoch: FINAL_EPOCH,
                        state,
                    });
                }),
            };
            if r.is_err() {
                result = r;
                break;
            }
        }
        events.clear();
        self.events = events;
        if control {
            let w = self.gate.watermarks();
            self.status
                .set_watermark(w.current(), w.is_idle(), w.holder(), w.advanced_at_ms());
        }
        result
    }
}
