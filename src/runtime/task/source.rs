//! A source task. `SourceDriver` reads its source, generates a watermark per partition from
//! the event times read (merged over the partitions, idleness included), and emits a barrier
//! with the source's positions when told to. `SourceTask` is its thread: it takes control
//! messages, steps the driver on the clock and sends what the driver emits.
//!
//! A source's thread ends when it is told to `Stop`, when the run fails, when a shutdown
//! without checkpoints ends its input, or when it has read its input to the end; then it
//! still waits for the run's last `CheckpointDone(FINAL_EPOCH)` (or `Stop`, or its control
//! channel closing) to acknowledge upstream where it ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::{BarrierAck, Control, Emit, FINAL_EPOCH, Report, TaskLink, route};
use crate::checkpoint::SourceCheckpoint;
use crate::dataflow::Message;
use crate::dataflow::SourcePosition;
use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::error::RunError;
use crate::runtime::plan::WatermarkSpec;
use crate::runtime::route::Router;
use crate::status::InstanceStatus;
use crate::time::{PartitionWatermarks, Watermark};
use crate::types::{Batch, Epoch, EventTime};

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
    /// `event_time.max_ahead`: records further ahead of the clock are dead letters.
    max_ahead_ms: Option<i64>,
    /// The restored checkpoint's highest event times of partitions the source did not list
    /// yet (it learns some only later: a topic found by its prefix, an assignment), taken up
    /// when a partition of that name is assigned.
    restored_times: Vec<(String, crate::types::EventTime)>,
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
            max_ahead_ms: spec
                .max_ahead
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            restored_times: Vec::new(),
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
        // Partitions the source does not list yet keep their times until it does.
        self.restored_times = checkpoint
            .partitions
            .iter()
            .zip(&checkpoint.max_event_times)
            .filter(|(name, _)| !self.names.contains(name))
            .filter_map(|(name, t)| t.map(|t| (name.clone(), t)))
            .collect();
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
        let result = self.source.checkpoint_complete(epoch, &positions);
        self.publish_stats();
        result
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

    /// Publishes the driver's and the source's counters to `/status`.
    fn publish_stats(&self) {
        let mut stats = vec![("idle_transitions", self.idle_transition_count)];
        stats.extend(self.source.stats());
        self.status.set_stats(&stats);
        self.status.set_info(self.source.info());
    }

    /// Whether the source waits for a checkpoint (`Source::wants_checkpoint`).
    pub fn wants_checkpoint(&self) -> bool {
        self.source.wants_checkpoint()
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
        self.source.barrier(epoch, &checkpoint.positions);
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
        self.status.set_warnings(self.source.warnings());
        for p in self.bufs.caught_up.drain(..) {
            if p < self.names.len() {
                self.watermarks.on_caught_up(p, now_ms);
            }
        }
        for p in self.bufs.ready.drain(..) {
            if p < self.names.len() {
                self.watermarks.on_activity(p, now_ms);
            }
        }
        let step = match status {
            ReadStatus::Data { partition } => {
                self.status.add_records_in(self.bufs_len() as u64, now_ms);
                self.watermarks.on_activity(partition, now_ms);
                self.flush(partition, now_ms, emit)?;
                SourceStep::Continue
            }
            ReadStatus::PartitionEnded { partition } => {
                // A source may hand over what it emits at the end (e.g. snapshot markers).
                self.flush(partition, now_ms, emit)?;
                self.watermarks.on_partition_end(partition);
                self.ended[partition] = true;
                SourceStep::Continue
            }
            ReadStatus::Pending { retry_at_ms } => {
                SourceStep::WaitUntil(retry_at_ms.min(now_ms + self.poll_every_ms))
            }
            ReadStatus::PartitionsChanged => {
                self.reassign(now_ms);
                self.publish_stats();
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
        // A new partition the restored checkpoint knew continues from its time there, as it
        // would have had the source listed it at the restore.
        for (i, (n, k)) in names.iter().zip(&keep).enumerate() {
            if k.is_none()
                && let Some(at) = self.restored_times.iter().position(|(r, _)| r == n)
            {
                let (_, t) = self.restored_times.swap_remove(at);
                self.watermarks.restore_partition(i, t);
            }
        }
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
        now_ms: i64,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        if let Some(ahead) = self.max_ahead_ms {
            self.reject_ahead(p, now_ms.saturating_add(ahead));
        }
        let records = &mut self.bufs.records;
        for i in 0..records.len() {
            if let Some(w) = self.watermarks.on_event_behind(p, records.event_time(i)) {
                records.mark_behind(i, w);
            }
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

    /// Moves every record (and a heartbeat) of partition `p` with an event time after `limit`
    /// to the dead letters: `event_time.max_ahead` against the clock.
    fn reject_ahead(&mut self, p: usize, limit: EventTime) {
        let ahead = |t: EventTime| t > limit;
        let bufs = &mut self.bufs;
        let partition = self.names.get(p).map_or("", String::as_str);
        let node = &self.status.node;
        let reason = |t: EventTime| {
            format!(
                "event time {} is more than `event_time.max_ahead` ahead of the clock: it would \
                 move the watermark past every record to come",
                crate::format::display_event_time(t)
            )
        };
        // Which record it was is the source's business; where the partition stands after the
        // read that returned it is known: the record is at or before that position.
        let mut position: Option<String> = None;
        let source = &self.source;
        for batch in std::iter::once(&mut bufs.records).chain(bufs.extra.iter_mut()) {
            if !batch.event_times().iter().any(|&t| ahead(t)) {
                continue;
            }
            let position = position.get_or_insert_with(|| {
                source
                    .positions()
                    .iter()
                    .find(|sp| sp.partition == partition)
                    .map_or_else(String::new, |sp| format!("up to {}", sp.position))
            });
            let encoder = crate::format::json::JsonEncoder::new(batch.schema().clone());
            let mut kept = Batch::new(batch.schema().clone());
            let mut raw = Vec::new();
            for ((row, t), lateness_ref) in batch.rows().zip(batch.lateness_ref_per_row()) {
                if ahead(t) {
                    raw.clear();
                    encoder.encode_row(row, &mut raw);
                    crate::dead_letter::push(
                        &mut bufs.dead_letters,
                        node,
                        partition,
                        position,
                        &reason(t),
                        &raw,
                        t,
                    );
                } else {
                    kept.set_lateness_ref(lateness_ref);
                    kept.push_row_from(row, t);
                }
            }
            kept.set_lateness_ref(None);
            *batch = kept;
        }
        if let Some(t) = bufs.progress.filter(|&t| ahead(t)) {
            bufs.progress = None;
            crate::dead_letter::push(
                &mut bufs.dead_letters,
                node,
                partition,
                "",
                &format!("heartbeat: {}", reason(t)),
                format!("{{\"heartbeat_ms\":{t}}}").as_bytes(),
                t,
            );
        }
    }

    /// Re-evaluates idleness and emits the watermark if it changed.
    pub fn poll_watermark(
        &mut self,
        now_ms: i64,
        emit: &mut impl FnMut(Emit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let changed = self.watermarks.poll(now_ms);
        let transitions = self.idle_transition_count;
        for (p, was_idle) in self.idle.iter_mut().enumerate() {
            let idle = self.watermarks.partition_is_idle(p);
            if idle && !*was_idle {
                self.idle_transitions.increment(1);
                self.idle_transition_count += 1;
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
        if self.idle_transition_count != transitions {
            self.publish_stats();
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

/// A source's thread.
pub(crate) struct SourceTask {
    driver: SourceDriver,
    router: Router,
    control: Receiver<Control>,
    link: TaskLink,
    /// Set when the run shuts down, if that ends the input (no checkpoints kept; with them a
    /// shutdown stops at a checkpoint instead).
    ends_input: Option<Arc<AtomicBool>>,
    bootstrap: bool,
    /// Whether the source reads: in a bootstrap, only until it has what the bootstrap needs.
    reading: bool,
    bootstrapped: bool,
    /// A checkpoint was asked for (`Report::CheckpointWanted`) and has not completed yet.
    checkpoint_asked: bool,
}

/// Why a source stopped reading.
enum ReadEnd {
    /// Every partition has ended.
    InputEnded,
    /// Told to stop, the run failed, or a shutdown ended the input.
    Stopped,
}

impl SourceTask {
    /// In a bootstrap a source reads only what it needs (a change stream's snapshot), others
    /// nothing; both still pass barriers on.
    pub(crate) fn new(
        mut driver: SourceDriver,
        router: Router,
        control: Receiver<Control>,
        link: TaskLink,
        ends_input: Option<Arc<AtomicBool>>,
        bootstrap: bool,
    ) -> SourceTask {
        let reading = !bootstrap || driver.start_bootstrap();
        SourceTask {
            driver,
            router,
            control,
            link,
            ends_input,
            bootstrap,
            reading,
            bootstrapped: false,
            checkpoint_asked: false,
        }
    }

    /// The thread's body.
    pub(crate) fn run(mut self) {
        let result = self.read();
        let ended = matches!(result, Ok(ReadEnd::InputEnded));
        self.link
            .end(result.map(|_| Some(self.driver.checkpoint())));
        if ended {
            // Everything, `End` included, is sent: the channels to the consumers close now.
            // Kept open while waiting, a consumer whose other inputs stopped without an
            // `End` (a failing run) would wait on this one forever, and the run with it.
            let SourceTask {
                mut driver,
                router,
                control,
                link,
                ..
            } = self;
            drop(router);
            await_last_checkpoint(&mut driver, &control, &link);
        }
    }

    fn read(&mut self) -> Result<ReadEnd, RunError> {
        let mut emit = |e: Emit| route(&mut self.router, e);
        loop {
            while let Ok(c) = self.control.try_recv() {
                match c {
                    Control::Barrier(epoch) => {
                        let ack = self.driver.barrier(epoch, &mut emit)?;
                        self.link.ack(ack);
                    }
                    Control::CheckpointDone(epoch) => {
                        self.driver.checkpoint_complete(epoch)?;
                        self.checkpoint_asked = false;
                    }
                    Control::Stop => return Ok(ReadEnd::Stopped),
                }
            }
            if self.link.failed.load(Ordering::Relaxed) {
                return Ok(ReadEnd::Stopped);
            }
            if self.bootstrap
                && !self.bootstrapped
                && (!self.reading || self.driver.bootstrap_done())
            {
                self.bootstrapped = true;
                self.reading = false;
                self.link
                    .report(Report::Bootstrapped(self.link.name.clone()));
            }
            if !self.reading {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if let Some(shutdown) = &self.ends_input
                && shutdown.load(Ordering::Relaxed)
            {
                emit(Emit::Control(Message::End))?;
                return Ok(ReadEnd::Stopped);
            }
            if !self.checkpoint_asked && self.driver.wants_checkpoint() {
                self.checkpoint_asked = true;
                self.link
                    .report(Report::CheckpointWanted(self.link.name.clone()));
            }
            let now = self.link.clock.now_ms();
            match self.driver.step(now, &mut emit)? {
                SourceStep::Continue => {}
                SourceStep::Finished => return Ok(ReadEnd::InputEnded),
                SourceStep::WaitUntil(t) => {
                    let now = self.link.clock.sleep_until(t, Duration::from_millis(50));
                    self.driver.poll_watermark(now, &mut emit)?;
                }
            }
        }
    }
}

/// A source that read its input to the end learns of the run's last checkpoint too, to
/// acknowledge where it ended upstream.
fn await_last_checkpoint(driver: &mut SourceDriver, control: &Receiver<Control>, link: &TaskLink) {
    while let Ok(c) = control.recv() {
        match c {
            Control::CheckpointDone(epoch) => {
                if let Err(e) = driver.checkpoint_complete(epoch) {
                    tracing::warn!(task = %link.name, error = %e, "acknowledging the last checkpoint upstream failed");
                }
                if epoch == FINAL_EPOCH {
                    break;
                }
            }
            Control::Stop => break,
            Control::Barrier(_) => {}
        }
    }
}
