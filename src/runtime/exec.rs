//! Runs a `Plan`: one thread per node instance, connected by bounded channels (backpressure:
//! a slow consumer blocks its producers; memory is bounded by `channel_capacity` batches per
//! input), and a supervisor on the calling thread that receives the tasks' reports, hands
//! barrier acknowledgements to the checkpoint coordinator (`coordinator`), decides when
//! barriers go out (every checkpoint interval, for a savepoint, a bootstrap or a shutdown)
//! and when the run stops, evaluates alert rules, publishes gauges and stops everything if a
//! task fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, never, select, unbounded};

use crate::alerts::{AlertEvaluator, AlertKind};
use crate::checkpoint::{Checkpoint, CheckpointStore, Restored, SourceCheckpoint, store};
use crate::dataflow::Message;
use crate::dataflow::{DEAD_LETTER_PORT, LATE_PORT};
use crate::dataflow::{Guarantee, Sink};
use crate::error::RunError;
use crate::metrics as m;
use crate::runtime::coordinator::{CheckpointCoordinator, Purpose};
use crate::runtime::plan::{NodeKind, Plan};
use crate::runtime::route::{EdgeOut, Envelope, Partitioning, Router};
use crate::runtime::task::{
    BarrierAck, Emit, FINAL_EPOCH, OperatorDriver, SinkDriver, SourceDriver, SourceStep,
};
use crate::savepoint::{SavepointRequest, SavepointRequests};
use crate::status::{InstanceStatus, Role, SourceExpectations, StatusRegistry, StatusReport};
use crate::time::ClockRef;
use crate::types::Epoch;

/// What the caller provides besides the plan.
#[derive(Clone)]
pub struct RunContext {
    pub clock: ClockRef,
    pub status: Arc<StatusRegistry>,
    /// Set to stop. With a checkpoint directory the run stops at a last checkpoint without
    /// draining (a restart continues as if nothing happened); without one, sources end their
    /// input (windows then fire as at the end of a file) and sinks flush.
    pub shutdown: Arc<AtomicBool>,
    /// Start from this checkpoint or savepoint directory instead of the latest checkpoint
    /// in the pipeline's checkpoint directory.
    pub restore_from: Option<std::path::PathBuf>,
    /// Savepoints asked for while the pipeline runs.
    pub savepoints: Arc<SavepointRequests>,
    /// Bootstrap instead of running: read only the change streams' snapshots, write a
    /// savepoint here, stop. Sinks write nothing.
    pub bootstrap: Option<std::path::PathBuf>,
}

impl RunContext {
    pub fn new(clock: ClockRef, status: Arc<StatusRegistry>) -> RunContext {
        RunContext {
            clock,
            status,
            shutdown: Arc::new(AtomicBool::new(false)),
            restore_from: None,
            savepoints: Arc::default(),
            bootstrap: None,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub elapsed_ms: i64,
    pub report: StatusReport,
    pub checkpoints_completed: u64,
    pub checkpoint_failures: u64,
    pub last_checkpoint: Option<Checkpoint>,
    /// The checkpoint the run started from: its epoch and directory.
    pub restored_from: Option<(Epoch, std::path::PathBuf)>,
    /// Processing time from the start to every task having its restored state (reading and
    /// verifying the checkpoint included).
    pub restore_ms: Option<i64>,
    /// Savepoints written during the run.
    pub savepoints: Vec<std::path::PathBuf>,
    /// The run stopped at a savepoint or a last checkpoint, without draining its input.
    pub stopped_at_savepoint: bool,
    pub alerts_fired: Vec<(AlertKind, String, String)>,
}

#[derive(Clone, Copy)]
pub(crate) enum Control {
    Barrier(Epoch),
    /// The checkpoint of this epoch is durable (`FINAL_EPOCH`: the run's last one).
    CheckpointDone(Epoch),
    /// Stop now, committing nothing more: the run is failing, or stops without draining.
    Stop,
}

/// Sends `c` to every task of `role` that takes control messages (sources and sinks).
pub(crate) fn tell(instances: &[Instance], role: Role, c: Control) {
    for i in instances.iter().filter(|i| i.role == role) {
        if let Some(tx) = &i.control {
            let _ = tx.send(c);
        }
    }
}

enum Report {
    Ack(String, BarrierAck),
    /// A source has read what a bootstrap needs.
    Bootstrapped(String),
    /// A task ended normally; a source gives where it stopped.
    Finished(String, Option<SourceCheckpoint>),
    Failed(String, RunError),
}

pub(crate) struct Instance {
    pub label: String,
    pub role: Role,
    pub control: Option<Sender<Control>>,
    pub handle: JoinHandle<()>,
}

/// The checkpoint a run starts from: the one asked for (it must verify), else the latest
/// complete one in the checkpoint directory.
fn checkpoint_to_restore(
    ctx: &RunContext,
    store: Option<&CheckpointStore>,
) -> Result<Option<Restored>, RunError> {
    if let Some(path) = &ctx.restore_from {
        return store::read(path)
            .map(Some)
            .map_err(|e| RunError::restore("checkpoint", e));
    }
    Ok(store.and_then(CheckpointStore::latest))
}

/// Runs the plan to completion (every source ended, or `shutdown` set).
pub fn run(plan: Plan, ctx: RunContext) -> Result<RunSummary, RunError> {
    let clock = ctx.clock.clone();
    let start_ms = clock.now_ms();
    let opts = plan.options.clone();
    let nodes = &plan.nodes;
    let store = match &opts.checkpoint_dir {
        Some(_) if ctx.bootstrap.is_some() => None,
        Some(dir) => Some(
            CheckpointStore::open(dir, opts.checkpoint_retain).map_err(|e| {
                RunError::Checkpoint {
                    message: e.to_string(),
                    class: crate::error::ErrorClass::Definite,
                }
            })?,
        ),
        None => None,
    };
    let restored = if ctx.bootstrap.is_some() {
        None
    } else {
        checkpoint_to_restore(&ctx, store.as_ref())?
    };
    // Set when the run stops after a savepoint: tasks end without draining, and an input
    // closing under them is not an error.
    let stopping = Arc::new(AtomicBool::new(false));
    // Operators whose task ended, kept (with their state) until the run is over.
    let finished_operators: Arc<std::sync::Mutex<Vec<OperatorDriver>>> = Arc::default();
    let bootstrap = ctx.bootstrap.is_some();
    if let Some(r) = &restored {
        check_restorable(&plan, r)?;
        tracing::info!(epoch = r.manifest.epoch, path = %r.path.display(), "restoring from checkpoint");
    }

    // Channels: one bounded inbound channel per instance.
    let mut senders: Vec<Vec<Sender<Envelope>>> = Vec::new();
    let mut receivers: Vec<Vec<Option<Receiver<Envelope>>>> = Vec::new();
    for n in nodes {
        let (s, r): (Vec<_>, Vec<_>) = (0..n.parallelism)
            .map(|_| {
                let (s, r) = bounded(opts.channel_capacity);
                (s, Some(r))
            })
            .unzip();
        senders.push(s);
        receivers.push(r);
    }

    // Slots of each consumer: per input edge, one per upstream instance.
    let mut slot_offsets: Vec<Vec<usize>> = Vec::new();
    let mut slot_inputs: Vec<Vec<usize>> = Vec::new();
    let mut slot_labels: Vec<Vec<String>> = Vec::new();
    for n in nodes {
        let mut offsets = Vec::new();
        let mut inputs = Vec::new();
        let mut labels = Vec::new();
        for (j, inp) in n.inputs.iter().enumerate() {
            offsets.push(inputs.len());
            let up = &nodes[inp.node];
            for u in 0..up.parallelism {
                inputs.push(j);
                labels.push(format!("{}#{}", up.name, u));
            }
        }
        slot_offsets.push(offsets);
        slot_inputs.push(inputs);
        slot_labels.push(labels);
    }

    // Output edges of each (node, port), as (consumer node, edge index).
    let mut consumers: HashMap<(usize, usize), Vec<(usize, usize)>> = HashMap::new();
    for (d, n) in nodes.iter().enumerate() {
        for (j, inp) in n.inputs.iter().enumerate() {
            consumers
                .entry((inp.node, inp.port))
                .or_default()
                .push((d, j));
        }
    }
    let partitioning = |up: usize, down: usize, edge: usize| -> Partitioning {
        let (u, d) = (&nodes[up], &nodes[down]);
        match &d.kind {
            _ if d.parallelism == 1 => Partitioning::Single,
            NodeKind::Operator {
                broadcast_inputs, ..
            } if broadcast_inputs.contains(&edge) => Partitioning::Broadcast,
            NodeKind::Operator {
                key_columns: Some(cols),
                ..
            } => Partitioning::Hash(cols.clone()),
            _ if d.parallelism == u.parallelism => Partitioning::Forward,
            _ => Partitioning::RoundRobin,
        }
    };

    let (report_tx, report_rx) = unbounded::<Report>();
    let mut instances: Vec<Instance> = Vec::new();
    let failed = Arc::new(AtomicBool::new(false));

    // A node that cannot be built stops the tasks already started: they see `failed`, or
    // their channels close, and end.
    let stop_started = |e: RunError| {
        failed.store(true, Ordering::SeqCst);
        e
    };
    for (ni, node) in nodes.iter().enumerate() {
        if let NodeKind::Source { watermark, .. } = &node.kind {
            ctx.status.expect_source(SourceExpectations {
                source: node.name.clone(),
                expected_interval_ms: watermark.expected_interval.map(|d| d.as_millis() as i64),
                idle_timeout_ms: watermark.idle_timeout.map(|d| d.as_millis() as i64),
            });
        }
        let port_names: Vec<String> = node.ports.iter().map(|p| p.name.clone()).collect();
        let mut node_receivers = std::mem::take(&mut receivers[ni]).into_iter();
        for inst in 0..node.parallelism {
            let inbound = node_receivers.next().flatten();
            let label = format!("{}#{}", node.name, inst);
            let mut ports: Vec<Vec<EdgeOut>> = Vec::new();
            for p in 0..node.ports.len() {
                let edges = consumers
                    .get(&(ni, p))
                    .map(|cs| {
                        cs.iter()
                            .map(|&(d, j)| {
                                EdgeOut::new(
                                    partitioning(ni, d, j),
                                    (slot_offsets[d][j] + inst) as u32,
                                    senders[d].clone(),
                                    inst,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ports.push(edges);
            }
            let counters = port_names
                .iter()
                .map(|p| {
                    let mut c = vec![metrics::counter!(m::RECORDS_OUT, m::LABEL_NODE => node.name.clone(), m::LABEL_PORT => p.clone())];
                    if p == LATE_PORT {
                        c.push(metrics::counter!(m::LATE_RECORDS, m::LABEL_NODE => node.name.clone()));
                    } else if p == DEAD_LETTER_PORT {
                        c.push(metrics::counter!(m::DEAD_LETTER_RECORDS, m::LABEL_NODE => node.name.clone()));
                    }
                    c
                })
                .collect();
            let now = clock.now_ms();
            let rtx = report_tx.clone();
            let fail_flag = failed.clone();
            let name = label.clone();
            // How a task's thread reports its end to the supervisor.
            let report_end = move |result: Result<Option<SourceCheckpoint>, RunError>| match result
            {
                Ok(at) => {
                    let _ = rtx.send(Report::Finished(name.clone(), at));
                }
                Err(e) => {
                    fail_flag.store(true, Ordering::SeqCst);
                    let _ = rtx.send(Report::Failed(name.clone(), e));
                }
            };
            let rtx = report_tx.clone();
            let name = label.clone();
            let clock_t = clock.clone();
            match &node.kind {
                NodeKind::Source { factory, watermark } => {
                    let mut source = factory(inst, node.parallelism).map_err(stop_started)?;
                    let consumed: Vec<bool> = (0..node.ports.len())
                        .map(|p| consumers.contains_key(&(ni, p)))
                        .collect();
                    source.connect_ports(&consumed);
                    let status = ctx.status.register(InstanceStatus::new(
                        &node.name,
                        inst,
                        Role::Source,
                        source.partitions(),
                        &port_names,
                        now,
                    ));
                    let mut router = Router::new(ports, counters, status.clone());
                    let mut driver =
                        SourceDriver::new(source, watermark, opts.batch_size, status, now);
                    if let Some(r) = &restored {
                        match r.manifest.sources.get(&label) {
                            Some(at) => driver.restore(at).map_err(stop_started)?,
                            None => {
                                tracing::warn!(source = %label, "not in the checkpoint: reads from the start")
                            }
                        }
                    }
                    let (ctl_tx, ctl_rx) = unbounded::<Control>();
                    // With checkpoints kept, a shutdown stops at a checkpoint instead.
                    let drain_on_shutdown = store.is_none();
                    let shutdown = ctx.shutdown.clone();
                    let failed = failed.clone();
                    // In a bootstrap a source reads only what it needs (a change stream's
                    // snapshot), others nothing; both still pass barriers on.
                    let mut reading = !bootstrap || driver.start_bootstrap();
                    let mut bootstrapped = false;
                    let mut read_to_end = false;
                    let label_t = label.clone();
                    let handle = spawn(&label, move || {
                        let mut emit = |e: Emit| match e {
                            Emit::Port(p, b) => router.send(p, b),
                            Emit::Control(msg) => router.broadcast(&msg),
                        };
                        let result = (|| -> Result<Option<SourceCheckpoint>, RunError> {
                            loop {
                                while let Ok(c) = ctl_rx.try_recv() {
                                    match c {
                                        Control::Barrier(epoch) => {
                                            let ack = driver.barrier(epoch, &mut emit)?;
                                            let _ = rtx.send(Report::Ack(name.clone(), ack));
                                        }
                                        Control::CheckpointDone(epoch) => {
                                            driver.checkpoint_complete(epoch)?;
                                        }
                                        Control::Stop => return Ok(Some(driver.checkpoint())),
                                    }
                                }
                                if failed.load(Ordering::Relaxed) {
                                    return Ok(Some(driver.checkpoint()));
                                }
                                if bootstrap
                                    && !bootstrapped
                                    && (!reading || driver.bootstrap_done())
                                {
                                    bootstrapped = true;
                                    reading = false;
                                    let _ = rtx.send(Report::Bootstrapped(name.clone()));
                                }
                                if !reading {
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                                if drain_on_shutdown && shutdown.load(Ordering::Relaxed) {
                                    emit(Emit::Control(Message::End))?;
                                    return Ok(Some(driver.checkpoint()));
                                }
                                let now = clock_t.now_ms();
                                match driver.step(now, &mut emit)? {
                                    SourceStep::Continue => {}
                                    SourceStep::Finished => {
                                        read_to_end = true;
                                        return Ok(Some(driver.checkpoint()));
                                    }
                                    SourceStep::WaitUntil(t) => {
                                        let now = clock_t.sleep_until(t, Duration::from_millis(50));
                                        driver.poll_watermark(now, &mut emit)?;
                                    }
                                }
                            }
                        })();
                        let ended = read_to_end && result.is_ok();
                        report_end(result);
                        // A source that read its input to the end learns of the run's last
                        // checkpoint too, to acknowledge where it ended upstream.
                        while ended && let Ok(c) = ctl_rx.recv() {
                            match c {
                                Control::CheckpointDone(epoch) => {
                                    if let Err(e) = driver.checkpoint_complete(epoch) {
                                        tracing::warn!(task = %label_t, error = %e, "acknowledging the last checkpoint upstream failed");
                                    }
                                    if epoch == FINAL_EPOCH {
                                        break;
                                    }
                                }
                                Control::Stop => break,
                                Control::Barrier(_) => {}
                            }
                        }
                    });
                    instances.push(Instance {
                        label,
                        role: Role::Source,
                        control: Some(ctl_tx),
                        handle,
                    });
                }
                NodeKind::Operator { factory, .. } => {
                    let op = factory(inst).map_err(stop_started)?;
                    let status = ctx.status.register(InstanceStatus::new(
                        &node.name,
                        inst,
                        Role::Operator,
                        slot_labels[ni].clone(),
                        &port_names,
                        now,
                    ));
                    let mut router = Router::new(ports, counters, status.clone());
                    let mut driver = OperatorDriver::new(op, slot_inputs[ni].clone(), status, now);
                    if let Some(state) = restored.as_ref().and_then(|r| r.operators.get(&label)) {
                        driver.restore(state).map_err(stop_started)?;
                    }
                    let rx = inbound.expect("receiver");
                    let stopping_t = stopping.clone();
                    let kept_t = finished_operators.clone();
                    let handle = spawn(&label, move || {
                        let mut emit = |e: Emit| match e {
                            Emit::Port(p, b) => router.send(p, b),
                            Emit::Control(msg) => router.broadcast(&msg),
                        };
                        let mut ack = |a: BarrierAck| {
                            let _ = rtx.send(Report::Ack(name.clone(), a));
                        };
                        let result = drain_inbound(&name, &rx, &stopping_t, |slot, msg| {
                            driver.on_message(slot, msg, clock_t.now_ms(), &mut emit, &mut ack)?;
                            Ok(driver.is_finished())
                        });
                        // Its last snapshot may name files it owns (a disk table's change log):
                        // they must outlive the run's last checkpoint.
                        kept_t
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(driver);
                        report_end(result.map(|()| None));
                    });
                    instances.push(Instance {
                        label,
                        role: Role::Operator,
                        control: None,
                        handle,
                    });
                }
                NodeKind::Sink { factory } => {
                    let sink: Box<dyn Sink> = if bootstrap {
                        Box::new(Discard)
                    } else {
                        factory(inst).map_err(stop_started)?
                    };
                    let status = ctx.status.register(InstanceStatus::new(
                        &node.name,
                        inst,
                        Role::Sink,
                        slot_labels[ni].clone(),
                        &port_names,
                        now,
                    ));
                    let mut driver = SinkDriver::new(sink, slot_inputs[ni].clone(), status, now);
                    let recover_state =
                        restored.as_ref().and_then(|r| r.sinks.get(&label).cloned());
                    let rx = inbound.expect("receiver");
                    let (ctl_tx, ctl_rx) = unbounded::<Control>();
                    let stopping_t = stopping.clone();
                    let handle = spawn(&label, move || {
                        let mut ack = |a: BarrierAck| {
                            let _ = rtx.send(Report::Ack(name.clone(), a));
                        };
                        let result = (|| -> Result<(), RunError> {
                            if !bootstrap {
                                driver.recover(recover_state.as_deref())?;
                            }
                            let none = never();
                            loop {
                                // Once its input has ended the sink only waits for its
                                // last commit.
                                let inbound = if driver.is_finished() { &none } else { &rx };
                                select! {
                                                                   recv(inbound) -> m => {
                                                                       let Ok((slot, msg)) = m else {
                                                                           if stopping_t.load(Ordering::SeqCst) {
                                                                               // Stopped after a savepoint: its commit
                                                                               // may still be queued.
                                                                               while let Ok(Control::CheckpointDone(e)) = ctl_rx.try_recv() {
                                                                                   driver.commit(e)?;
                                                                               }
                                                                               return Ok(());
                                                                           }
                                                                           return Err(RunError::Stopped {
                                task: name.clone(),
                                why: "an upstream task stopped",
                                });
                                                                       };
                                                                       driver.on_message(slot as usize, msg, clock_t.now_ms(), &mut ack)?;
                                                                   }
                                                                   recv(ctl_rx) -> c => match c {
                                                                       Ok(Control::CheckpointDone(epoch)) => {
                                                                           driver.commit(epoch)?;
                                                                           if epoch == FINAL_EPOCH {
                                                                               return driver.finish();
                                                                           }
                                                                       }
                                                                       Ok(Control::Barrier(_)) => {}
                                                                       Ok(Control::Stop) if stopping_t.load(Ordering::SeqCst) => {
                                                                           // Stopped after a savepoint while waiting for
                                                                           // the last commit, which will not come.
                                                                           return Ok(());
                                                                       }
                                                                       Ok(Control::Stop) | Err(_) => {
                                                                           return Err(RunError::Stopped {
                                task: name.clone(),
                                why: "the run stopped before its last commit",
                                });
                                                                       }
                                                                   },
                                                               }
                            }
                        })();
                        report_end(result.map(|()| None));
                    });
                    instances.push(Instance {
                        label,
                        role: Role::Sink,
                        control: Some(ctl_tx),
                        handle,
                    });
                }
            }
        }
    }
    // Only the tasks hold senders now: a consumer sees its inputs close when they stop.
    drop(senders);
    drop(report_tx);

    let restore_ms = restored.as_ref().map(|_| clock.now_ms() - start_ms);
    // Every task has its state: the checkpoint's copy of it need not stay in memory.
    let mut restored = restored;
    if let Some(r) = &mut restored {
        r.operators.clear();
        r.sinks.clear();
    }
    let summary = supervise(
        &plan,
        &ctx,
        &instances,
        report_rx,
        start_ms,
        store.as_ref(),
        restored.as_ref(),
        &stopping,
    );
    for inst in instances {
        // A source waiting for the last checkpoint's acknowledgement stops waiting.
        drop(inst.control);
        let _ = inst.handle.join();
    }
    drop(finished_operators);
    summary.map(|mut s| {
        s.restore_ms = restore_ms;
        s
    })
}

/// Feeds a task's inbound messages to `step` until it says the task has finished.
fn drain_inbound(
    name: &str,
    rx: &Receiver<Envelope>,
    stopping: &AtomicBool,
    mut step: impl FnMut(usize, Message) -> Result<bool, RunError>,
) -> Result<(), RunError> {
    loop {
        let Ok((slot, msg)) = rx.recv() else {
            if stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            return Err(RunError::Stopped {
                task: name.to_string(),
                why: "an upstream task stopped",
            });
        };
        if step(slot as usize, msg)? {
            return Ok(());
        }
    }
}

/// The sink of a bootstrap run: it receives nothing worth keeping and writes nothing.
struct Discard;

impl Sink for Discard {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    fn write(&mut self, _: &crate::types::Batch) -> Result<(), RunError> {
        Ok(())
    }
    fn pre_commit(&mut self, _: Epoch) -> Result<Vec<u8>, RunError> {
        Ok(Vec::new())
    }
    fn commit(&mut self, _: Epoch) -> Result<(), RunError> {
        Ok(())
    }
    fn recover(&mut self, _: Option<&[u8]>) -> Result<(), RunError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

fn spawn(label: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(label.to_string())
        .spawn(f)
        .expect("cannot spawn a task thread")
}

/// Checks that a checkpoint fits the plan: every operator state it holds has an instance to
/// go to (a different parallelism would lose or misplace keyed state).
fn check_restorable(plan: &Plan, r: &Restored) -> Result<(), RunError> {
    let labels: Vec<String> = plan
        .nodes
        .iter()
        .flat_map(|n| (0..n.parallelism).map(move |i| format!("{}#{i}", n.name)))
        .collect();
    for label in r.operators.keys().chain(r.sinks.keys()) {
        if !labels.contains(label) {
            return Err(RunError::Restore {
                component: label.clone(),
                message: format!(
                    "checkpoint {} holds state for `{label}`, which this pipeline does not have \
                     (was it taken with another parallelism or another pipeline file?)",
                    r.path.display()
                ),
            });
        }
    }
    if r.manifest.pipeline != plan.name {
        tracing::warn!(checkpoint = %r.manifest.pipeline, pipeline = %plan.name, "restoring a checkpoint taken by a pipeline of another name");
    }
    Ok(())
}

/// Receives the tasks' reports until every task has ended, hands barrier acknowledgements to
/// the checkpoint coordinator, decides which barriers go out and when the run stops.
#[allow(clippy::too_many_arguments)]
fn supervise(
    plan: &Plan,
    ctx: &RunContext,
    instances: &[Instance],
    reports: Receiver<Report>,
    start_ms: i64,
    store: Option<&CheckpointStore>,
    restored: Option<&Restored>,
    stopping: &AtomicBool,
) -> Result<RunSummary, RunError> {
    let clock = &ctx.clock;
    let opts = &plan.options;
    let mut co = CheckpointCoordinator::new(
        instances,
        &ctx.status,
        store,
        plan.name.clone(),
        restored.map_or(1, |r| r.manifest.epoch + 1),
        start_ms,
    );
    let mut evaluator = AlertEvaluator::new(opts.alerts.clone());
    let mut alerts_fired = Vec::new();
    let mut finished: BTreeMap<String, ()> = BTreeMap::new();
    let mut first_error: Option<RunError> = None;
    let mut bootstrapped: BTreeMap<String, ()> = BTreeMap::new();
    let mut bootstrap_asked = false;
    // A shutdown with checkpoints kept: the checkpoint the run stops at was asked for.
    let mut shutdown_asked = false;
    let mut stopped_at_savepoint = false;
    let interval_ms = opts.checkpoint_interval.map(|d| d.as_millis() as i64);
    let mut next_barrier_ms = interval_ms.map(|i| start_ms + i);
    let monitor_ms = opts.monitor_interval.as_millis().max(1) as i64;
    let mut next_monitor_ms = start_ms + monitor_ms;

    while finished.len() < instances.len() {
        match reports.recv_timeout(Duration::from_millis(20)) {
            Ok(Report::Finished(label, at)) => {
                if let Some(at) = at {
                    co.source_finished(label.clone(), at);
                }
                finished.insert(label, ());
            }
            Ok(Report::Failed(label, e)) => {
                tracing::error!(task = %label, error = %e, "task failed");
                finished.insert(label, ());
                if first_error.is_none() {
                    first_error = Some(e);
                    // Sinks waiting for their last commit would wait forever.
                    tell(instances, Role::Sink, Control::Stop);
                }
            }
            Ok(Report::Ack(label, ack)) => co.ack(label, ack, clock.now_ms()),
            Ok(Report::Bootstrapped(label)) => {
                tracing::info!(source = %label, "bootstrap: read what it needs");
                bootstrapped.insert(label, ());
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }

        if first_error.is_none() {
            // Complete checkpoints in epoch order.
            while let Some(done) = co.complete_next(clock.now_ms()) {
                if done.stop {
                    // Stop without draining: nothing after this checkpoint commits.
                    stopped_at_savepoint = true;
                    stopping.store(true, Ordering::SeqCst);
                    tell(instances, Role::Source, Control::Stop);
                }
            }
            // Every source has ended and every operator and sink has acknowledged the end:
            // the run's last checkpoint commits everything that is left.
            if let Err(e) = co.complete_last(clock.now_ms()) {
                first_error = Some(e);
                tell(instances, Role::Sink, Control::Stop);
            }
        }

        if stopping.load(Ordering::SeqCst) {
            // Sinks whose input has ended wait for a last commit that will not come.
            for i in instances.iter().filter(|i| i.role == Role::Sink) {
                if co.input_ended(&i.label)
                    && !finished.contains_key(&i.label)
                    && let Some(c) = &i.control
                {
                    let _ = c.send(Control::Stop);
                }
            }
        }
        let now = clock.now_ms();
        let sources_live = instances
            .iter()
            .any(|i| i.role == Role::Source && !co.source_ended(&i.label));
        let can_inject = first_error.is_none() && sources_live && !stopping.load(Ordering::SeqCst);
        let inject = |co: &mut CheckpointCoordinator, purpose: Purpose| {
            let epoch = co.begin(purpose, now);
            tell(instances, Role::Source, Control::Barrier(epoch));
            epoch
        };
        if store.is_some() && !shutdown_asked && can_inject && ctx.shutdown.load(Ordering::Relaxed)
        {
            shutdown_asked = true;
            let epoch = inject(&mut co, Purpose::Stop);
            tracing::info!(epoch, "stopping: taking a last checkpoint");
        }
        for req in ctx.savepoints.take() {
            if can_inject {
                let dir = req.dir.clone();
                let epoch = inject(&mut co, Purpose::Savepoint(req));
                tracing::info!(epoch, dir = %dir.display(), "savepoint requested");
            } else {
                let _ = req.reply.send(Err(
                    "the pipeline is ending or failing: no savepoint can be taken now".into(),
                ));
            }
        }
        if let Some(dir) = &ctx.bootstrap
            && !bootstrap_asked
            && can_inject
            && instances
                .iter()
                .filter(|i| i.role == Role::Source)
                .all(|i| bootstrapped.contains_key(&i.label))
        {
            bootstrap_asked = true;
            let (reply, _) = crossbeam_channel::bounded(1);
            let req = SavepointRequest {
                dir: dir.clone(),
                stop: true,
                reply,
            };
            inject(&mut co, Purpose::Savepoint(req));
        }
        // One periodic checkpoint at a time: when snapshots take longer than the interval,
        // the next barrier waits for the last one instead of piling up behind it.
        if can_inject
            && ctx.bootstrap.is_none()
            && !co.has_pending()
            && let (Some(at), Some(every)) = (next_barrier_ms, interval_ms)
            && now >= at
        {
            inject(&mut co, Purpose::Periodic);
            next_barrier_ms = Some(now + every);
        }
        if now >= next_monitor_ms {
            next_monitor_ms = now + monitor_ms;
            monitor(&ctx.status, &mut evaluator, now, &mut alerts_fired);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let now = clock.now_ms();
    let report = ctx.status.snapshot(now);
    publish_gauges(&report);
    let totals = co.into_totals();
    Ok(RunSummary {
        elapsed_ms: now - start_ms,
        report,
        checkpoints_completed: totals.completed,
        checkpoint_failures: totals.failures,
        last_checkpoint: totals.last_checkpoint,
        restored_from: restored.map(|r| (r.manifest.epoch, r.path.clone())),
        restore_ms: None,
        savepoints: totals.savepoints,
        stopped_at_savepoint,
        alerts_fired,
    })
}

/// Publishes the status as gauges and evaluates the alert rules on it.
fn monitor(
    status: &StatusRegistry,
    evaluator: &mut AlertEvaluator,
    now: i64,
    fired: &mut Vec<(AlertKind, String, String)>,
) {
    let report = status.snapshot(now);
    publish_gauges(&report);
    for ev in evaluator.evaluate(&report) {
        metrics::gauge!(m::ALERT_ACTIVE, m::LABEL_ALERT => ev.kind.name(), m::LABEL_NODE => ev.subject.clone())
            .set(if ev.firing { 1.0 } else { 0.0 });
        if ev.firing {
            metrics::counter!(m::ALERTS_FIRED, m::LABEL_ALERT => ev.kind.name()).increment(1);
            tracing::warn!(alert = ev.kind.name(), subject = %ev.subject, "{}", ev.message);
            fired.push((ev.kind, ev.subject, ev.message));
        } else {
            tracing::info!(alert = ev.kind.name(), subject = %ev.subject, "{}", ev.message);
        }
    }
}

/// Publishes status as Prometheus gauges.
fn publish_gauges(report: &StatusReport) {
    let now = report.now_ms;
    for i in &report.instances {
        let node = format!("{}#{}", i.node, i.instance);
        if let Some(w) = i.watermark {
            metrics::gauge!(m::NODE_WATERMARK, m::LABEL_NODE => node.clone()).set(w as f64);
            metrics::gauge!(m::NODE_WATERMARK_LAG, m::LABEL_NODE => node.clone())
                .set(now.saturating_sub(w) as f64);
        }
        metrics::gauge!(m::NODE_IDLE, m::LABEL_NODE => node.clone()).set(if i.idle {
            1.0
        } else {
            0.0
        });
        metrics::counter!(m::RECORDS_IN, m::LABEL_NODE => node.clone()).absolute(i.records_in);
        for p in &i.partitions {
            let labels = [
                (m::LABEL_SOURCE, i.node.clone()),
                (m::LABEL_PARTITION, p.label.clone()),
            ];
            if let Some(w) = p.watermark {
                metrics::gauge!(m::PARTITION_WATERMARK, &labels).set(w as f64);
            }
            metrics::gauge!(m::PARTITION_IDLE, &labels).set(if p.idle { 1.0 } else { 0.0 });
            metrics::gauge!(m::PARTITION_SILENT, &labels).set((now - p.last_activity_ms) as f64);
        }
    }
}
