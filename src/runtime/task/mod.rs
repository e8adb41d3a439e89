//! The tasks of a run, one thread per node instance, each a deterministic driver next to the
//! thread that runs it: `source` (`SourceDriver`: read, generate watermarks, emit barriers),
//! `operator` (`OperatorDriver`: gate → operator → ports) and `sink` (`SinkDriver`: gate →
//! sink). A driver takes the processing time as an argument (`now_ms`) and says what to send
//! through a callback (`Emit`, `BarrierAck`); its thread only moves messages between the
//! channels, the clock and the driver, so tests can run whole pipelines step by step on a
//! manual clock by calling the drivers themselves.
//!
//! This module also holds what a task thread and the supervisor (`exec`) say to each other:
//!
//! ```text
//!   supervisor ── Control (Barrier, CheckpointDone, Stop) ──► source and sink threads
//!   every task ── Report (Ack, Bootstrapped, Finished, Failed) ──► supervisor
//! ```
//! Operators take no control messages: barriers reach them through their inputs. A task
//! never decides about checkpoints (`coordinator` does) and never reads the system time.

mod operator;
mod sink;
mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::checkpoint::SourceCheckpoint;
use crate::dataflow::Message;
use crate::error::RunError;
use crate::runtime::route::Router;
use crate::state::StateImage;
use crate::status::Role;
use crate::time::ClockRef;
use crate::types::{Batch, Epoch};

pub use operator::OperatorDriver;
pub(crate) use operator::OperatorTask;
pub use sink::SinkDriver;
pub(crate) use sink::{Discard, SinkTask};
pub(crate) use source::SourceTask;
pub use source::{SourceDriver, SourceStep};

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

/// What the supervisor tells a source or sink thread.
#[derive(Clone, Copy)]
pub(crate) enum Control {
    Barrier(Epoch),
    /// The checkpoint of this epoch is durable (`FINAL_EPOCH`: the run's last one).
    CheckpointDone(Epoch),
    /// Stop now, committing nothing more: the run is failing, or stops without draining.
    Stop,
}

/// What a task thread tells the supervisor, each with the task's label.
pub(crate) enum Report {
    Ack(String, BarrierAck),
    /// A source has read what a bootstrap needs.
    Bootstrapped(String),
    /// A source needs a checkpoint soon (a consumer group is waiting for it to hand
    /// partitions over): the next barrier is injected without waiting for the interval.
    CheckpointWanted(String),
    /// A task ended normally; a source gives where it stopped.
    Finished(String, Option<SourceCheckpoint>),
    Failed(String, RunError),
}

/// A started task, as the supervisor holds it.
pub(crate) struct Instance {
    pub label: String,
    pub role: Role,
    /// Sources and sinks take control messages; operators do not.
    pub control: Option<Sender<Control>>,
    pub handle: JoinHandle<()>,
}

/// Sends `c` to every task of `role` that takes control messages (sources and sinks).
pub(crate) fn tell(instances: &[Instance], role: Role, c: Control) {
    for i in instances.iter().filter(|i| i.role == role) {
        if let Some(tx) = &i.control {
            let _ = tx.send(c);
        }
    }
}

/// What a task thread shares with the rest of the run.
#[derive(Clone)]
pub(crate) struct TaskLink {
    /// The task's label (`node#instance`).
    pub name: String,
    pub reports: Sender<Report>,
    /// Set when a task fails: sources stop reading.
    pub failed: Arc<AtomicBool>,
    /// Set when the run stops after a savepoint: tasks end without draining, and an input
    /// closing under them is not an error.
    pub stopping: Arc<AtomicBool>,
    pub clock: ClockRef,
}

impl TaskLink {
    fn ack(&self, ack: BarrierAck) {
        let _ = self.reports.send(Report::Ack(self.name.clone(), ack));
    }

    fn report(&self, report: Report) {
        let _ = self.reports.send(report);
    }

    /// Reports how the task ended; a failure also sets `failed`.
    fn end(&self, result: Result<Option<SourceCheckpoint>, RunError>) {
        match result {
            Ok(at) => self.report(Report::Finished(self.name.clone(), at)),
            Err(e) => {
                self.failed.store(true, Ordering::SeqCst);
                self.report(Report::Failed(self.name.clone(), e));
            }
        }
    }

    fn stopped(&self, why: &'static str) -> RunError {
        RunError::Stopped {
            task: self.name.clone(),
            why,
        }
    }
}

/// Sends what a driver emits through the task's router.
fn route(router: &mut Router, e: Emit) -> Result<(), RunError> {
    match e {
        Emit::Port(p, b) => router.send(p, b),
        Emit::Control(msg) => router.broadcast(&msg),
    }
}

/// Starts a task's thread, named by its label.
pub(crate) fn spawn(
    link: &TaskLink,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, RunError> {
    let label = link.name.clone();
    // A task that panics reports it like any failure, so the run stops naming it (instead
    // of waiting for a report that never comes, or naming a task it stopped).
    let on_panic = link.clone();
    let body = move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            on_panic.end(Err(RunError::Stopped {
                task: on_panic.name.clone(),
                why: "it panicked (a bug: please report it)",
            }));
        }
    };
    std::thread::Builder::new()
        .name(label.clone())
        .spawn(body)
        .map_err(|e| RunError::External {
            component: label,
            message: format!(
                "cannot start a thread ({e}): lower the parallelism or raise the process's \
                 thread limit"
            ),
            class: crate::error::ErrorClass::Definite,
        })
}
