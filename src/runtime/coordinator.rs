//! The checkpoint bookkeeping of a run: the checkpoints on their way (by epoch) and what each
//! task acknowledged for them, completing them in epoch order (the store write, metrics, the
//! status report), telling sources and sinks when one is durable (`CheckpointDone`), writing
//! savepoints, the checkpoint a shutdown stops at, and the run's last checkpoint.
//!
//! ```text
//!   begin(n) ─► (supervisor) Barrier(n) to every source ─► acks from every task
//!     ─► complete_next: manifest written ─► CheckpointDone(n) to sources and sinks
//!                        ─► savepoint copy ─► "stop here"?  (the supervisor stops the run)
//! ```
//! - A checkpoint is complete when every task acknowledged its barrier or had ended its
//!   input before the barrier could reach it: what that task acknowledged at its end stands
//!   for it.
//! - Checkpoints complete in epoch order. One whose write fails is counted as a failure and
//!   nothing is committed for it; later ones still complete.
//! - The run's last checkpoint (`FINAL_EPOCH`) is taken once every source has ended and every
//!   operator and sink has acknowledged the end of its input, with no checkpoint pending; its
//!   `CheckpointDone(FINAL_EPOCH)` lets sinks commit and finish and sources acknowledge where
//!   they ended.
//!
//! It decides neither when barriers go out nor when the run stops: `exec::supervise` does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::checkpoint::{Checkpoint, CheckpointStore, SourceCheckpoint};
use crate::error::RunError;
use crate::metrics as m;
use crate::runtime::task::{BarrierAck, Control, FINAL_EPOCH, Instance, tell};
use crate::savepoint::{self, SavepointError, SavepointRequest};
use crate::status::{CheckpointReport, Role, StatusRegistry};
use crate::types::Epoch;

/// Why a checkpoint is taken.
pub(crate) enum Purpose {
    /// On the checkpoint interval.
    Periodic,
    /// A shutdown with checkpoints kept: the run stops at this checkpoint without draining.
    Stop,
    /// A savepoint: the checkpoint is also written to the request's directory.
    Savepoint(SavepointRequest),
}

/// A checkpoint that was completed (written, or failed to be).
pub(crate) struct Completed {
    /// The run stops here without draining: it was a shutdown's checkpoint, or a savepoint
    /// asked to stop after it was written.
    pub stop: bool,
}

/// What a run's checkpoints came to.
pub(crate) struct Totals {
    pub completed: u64,
    pub failures: u64,
    pub last_checkpoint: Option<Checkpoint>,
    pub savepoints: Vec<PathBuf>,
}

/// A checkpoint whose barrier is on its way.
struct PendingCheckpoint {
    cp: Checkpoint,
    acked: BTreeMap<String, ()>,
}

impl PendingCheckpoint {
    fn new(epoch: Epoch, started_ms: i64) -> PendingCheckpoint {
        PendingCheckpoint {
            cp: Checkpoint {
                epoch,
                started_ms,
                ..Checkpoint::default()
            },
            acked: BTreeMap::new(),
        }
    }
}

pub(crate) struct CheckpointCoordinator<'a> {
    instances: &'a [Instance],
    status: &'a StatusRegistry,
    store: Option<&'a CheckpointStore>,
    pipeline: String,
    report: CheckpointReport,
    next_epoch: Epoch,
    pending: BTreeMap<Epoch, PendingCheckpoint>,
    /// The run's last checkpoint: every operator and sink acknowledged the end of its input.
    last: PendingCheckpoint,
    last_done: bool,
    /// Where finished sources stopped: part of every later checkpoint.
    source_ends: BTreeMap<String, SourceCheckpoint>,
    /// The checkpoint a shutdown stops at.
    stop_after: Option<Epoch>,
    savepoints: BTreeMap<Epoch, SavepointRequest>,
    written_savepoints: Vec<PathBuf>,
    completed: u64,
    failures: u64,
    last_checkpoint: Option<Checkpoint>,
}

impl<'a> CheckpointCoordinator<'a> {
    /// `first_epoch`: the epoch after the restored checkpoint's (1 from the start).
    pub(crate) fn new(
        instances: &'a [Instance],
        status: &'a StatusRegistry,
        store: Option<&'a CheckpointStore>,
        pipeline: String,
        first_epoch: Epoch,
        start_ms: i64,
    ) -> CheckpointCoordinator<'a> {
        let co = CheckpointCoordinator {
            instances,
            status,
            store,
            pipeline,
            report: CheckpointReport {
                since_ms: start_ms,
                ..CheckpointReport::default()
            },
            next_epoch: first_epoch,
            pending: BTreeMap::new(),
            last: PendingCheckpoint::new(0, start_ms),
            last_done: false,
            source_ends: BTreeMap::new(),
            stop_after: None,
            savepoints: BTreeMap::new(),
            written_savepoints: Vec::new(),
            completed: 0,
            failures: 0,
            last_checkpoint: None,
        };
        if store.is_some() {
            status.set_checkpoints(co.report.clone());
        }
        co
    }

    /// Starts a checkpoint; the caller sends its barrier into the sources.
    pub(crate) fn begin(&mut self, purpose: Purpose, now_ms: i64) -> Epoch {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.pending
            .insert(epoch, PendingCheckpoint::new(epoch, now_ms));
        match purpose {
            Purpose::Periodic => {}
            Purpose::Stop => self.stop_after = Some(epoch),
            Purpose::Savepoint(req) => {
                self.savepoints.insert(epoch, req);
            }
        }
        epoch
    }

    /// Whether a checkpoint is on its way.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A source ended (read its input, or stopped) at `at`.
    pub(crate) fn source_finished(&mut self, label: String, at: SourceCheckpoint) {
        self.source_ends.insert(label, at);
    }

    pub(crate) fn source_ended(&self, label: &str) -> bool {
        self.source_ends.contains_key(label)
    }

    /// Whether an operator or sink has acknowledged the end of its input.
    pub(crate) fn input_ended(&self, label: &str) -> bool {
        self.last.acked.contains_key(label)
    }

    pub(crate) fn ack(&mut self, label: String, ack: BarrierAck, now_ms: i64) {
        let epoch = match &ack {
            BarrierAck::Source { epoch, .. }
            | BarrierAck::Operator { epoch, .. }
            | BarrierAck::Sink { epoch, .. } => *epoch,
        };
        let p = if epoch == FINAL_EPOCH {
            &mut self.last
        } else {
            self.pending
                .entry(epoch)
                .or_insert_with(|| PendingCheckpoint::new(epoch, now_ms))
        };
        match ack {
            BarrierAck::Source { checkpoint, .. } => {
                p.cp.sources.insert(label.clone(), checkpoint);
            }
            BarrierAck::Operator {
                state,
                alignment_ms,
                ..
            } => {
                p.cp.operators.insert(label.clone(), state);
                p.cp.alignment_ms = p.cp.alignment_ms.max(alignment_ms);
            }
            BarrierAck::Sink { state, .. } => {
                p.cp.sinks.insert(label.clone(), state);
            }
        }
        p.cp.acknowledged_ms = now_ms;
        p.acked.insert(label, ());
    }

    /// Completes the oldest pending checkpoint if it has everything, and writes the savepoint
    /// asked of it; `None` when it is not complete yet (or none is pending).
    pub(crate) fn complete_next(&mut self, now_ms: i64) -> Option<Completed> {
        let (&epoch, p) = self.pending.first_key_value()?;
        if !self.is_complete(p) {
            return None;
        }
        let p = self.pending.remove(&epoch).expect("pending");
        let done = self.complete(p, now_ms);
        let mut stop = false;
        if self.stop_after == Some(epoch) {
            tracing::info!(
                epoch,
                ok = done,
                "stopping at the checkpoint (input not drained)"
            );
            stop = true;
        }
        if let Some(req) = self.savepoints.remove(&epoch) {
            let written = match (&self.last_checkpoint, done) {
                (Some(cp), true) if cp.epoch == epoch => {
                    savepoint::write(&req.dir, &self.pipeline, cp, now_ms)
                }
                _ => Err(SavepointError::Failed(format!(
                    "checkpoint {epoch} could not be written"
                ))),
            };
            match &written {
                Ok(dir) => {
                    tracing::info!(epoch, dir = %dir.display(), "savepoint written");
                    self.written_savepoints.push(dir.clone());
                }
                Err(e) => tracing::error!(epoch, error = %e, "savepoint failed"),
            }
            let ok = written.is_ok();
            let _ = req.reply.send(written);
            if ok && req.stop {
                tracing::info!(epoch, "stopping after the savepoint");
                stop = true;
            }
        }
        Some(Completed { stop })
    }

    /// Takes the run's last checkpoint once every source has ended and every operator and
    /// sink has acknowledged the end of its input (and no other checkpoint is pending): it
    /// commits everything that is left. An error when it could not be written.
    pub(crate) fn complete_last(&mut self, now_ms: i64) -> Result<(), RunError> {
        if self.last_done || !self.pending.is_empty() || !self.is_complete(&self.last) {
            return Ok(());
        }
        self.last_done = true;
        let mut last = PendingCheckpoint::new(self.next_epoch, self.last.cp.started_ms);
        last.acked = self.last.acked.clone();
        last.cp.operators = self.last.cp.operators.clone();
        last.cp.sinks = self.last.cp.sinks.clone();
        last.cp.acknowledged_ms = self.last.cp.acknowledged_ms;
        last.cp.finished = true;
        self.next_epoch += 1;
        if !self.complete(last, now_ms) {
            return Err(RunError::Checkpoint {
                message:
                    "the run's last checkpoint could not be written: its output is not committed"
                        .into(),
                class: crate::error::ErrorClass::Transient,
            });
        }
        Ok(())
    }

    pub(crate) fn into_totals(self) -> Totals {
        Totals {
            completed: self.completed,
            failures: self.failures,
            last_checkpoint: self.last_checkpoint,
            savepoints: self.written_savepoints,
        }
    }

    /// Whether `p` has everything: each task acknowledged it, or had seen the end of its
    /// input before the barrier could reach it (a source that finished, an operator or sink
    /// all of whose inputs ended): what it acknowledged at its end stands for it.
    fn is_complete(&self, p: &PendingCheckpoint) -> bool {
        self.instances.iter().all(|i| {
            p.acked.contains_key(&i.label)
                || match i.role {
                    Role::Source => self.source_ends.contains_key(&i.label),
                    _ => self.last.acked.contains_key(&i.label),
                }
        })
    }

    /// Makes a complete checkpoint durable (when there is a store) and tells the sinks and
    /// sources; returns whether it was.
    fn complete(&mut self, mut p: PendingCheckpoint, now_ms: i64) -> bool {
        for (label, at) in &self.source_ends {
            if !p.acked.contains_key(label) {
                p.cp.sources.insert(label.clone(), at.clone());
            }
        }
        for (label, state) in &self.last.cp.operators {
            if !p.acked.contains_key(label) {
                p.cp.operators.insert(label.clone(), state.clone());
            }
        }
        for (label, state) in &self.last.cp.sinks {
            if !p.acked.contains_key(label) {
                p.cp.sinks.insert(label.clone(), state.clone());
            }
        }
        let cp = p.cp;
        let epoch = cp.epoch;
        let bytes = cp.state_bytes();
        if let Some(store) = self.store {
            match store.write(&self.pipeline, &cp, now_ms) {
                Ok(path) => {
                    tracing::info!(epoch, state_bytes = bytes, path = %path.display(), finished = cp.finished, "checkpoint completed");
                }
                Err(e) => {
                    self.failures += 1;
                    self.report.failures += 1;
                    self.report.consecutive_failures += 1;
                    self.report.last_error = Some(e.to_string());
                    self.status.set_checkpoints(self.report.clone());
                    metrics::counter!(m::CHECKPOINT_FAILURES).increment(1);
                    tracing::error!(epoch, error = %e, "checkpoint failed: nothing is committed for it");
                    return false;
                }
            }
        } else {
            tracing::debug!(
                epoch,
                state_bytes = bytes,
                "checkpoint completed (not kept: no checkpoint.dir)"
            );
        }
        metrics::counter!(m::BARRIERS_COMPLETED).increment(1);
        metrics::gauge!(m::LAST_EPOCH).set(epoch as f64);
        metrics::gauge!(m::CHECKPOINT_BYTES).set(bytes as f64);
        metrics::gauge!(m::CHECKPOINT_DURATION_MS)
            .set((cp.acknowledged_ms - cp.started_ms).max(0) as f64);
        metrics::gauge!(m::CHECKPOINT_ALIGNMENT_MS).set(cp.alignment_ms as f64);
        self.completed += 1;
        if self.store.is_some() {
            let r = &mut self.report;
            r.last_epoch = Some(epoch);
            r.last_completed_ms = Some(now_ms);
            r.last_duration_ms = Some((cp.acknowledged_ms - cp.started_ms).max(0));
            r.last_alignment_ms = Some(cp.alignment_ms);
            r.last_bytes = Some(bytes as u64);
            r.completed += 1;
            r.consecutive_failures = 0;
            self.status.set_checkpoints(r.clone());
        }
        let done = Control::CheckpointDone(if cp.finished { FINAL_EPOCH } else { epoch });
        tell(self.instances, Role::Source, done);
        tell(self.instances, Role::Sink, done);
        self.last_checkpoint = Some(cp);
        true
    }
}
