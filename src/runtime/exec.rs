//! Runs a `Plan`: opens the checkpoint to start from, starts one task per node instance
//! (`task`) connected by bounded channels (backpressure: a slow consumer blocks its
//! producers; memory is bounded by `channel_capacity` batches per input), supervises them on
//! the calling thread until every task has ended, and joins them.
//!
//! The supervisor receives the tasks' reports and hands barrier acknowledgements to the
//! checkpoint coordinator (`coordinator`); it decides when barriers go out (every checkpoint
//! interval, for a savepoint, a bootstrap or a shutdown) and when the run stops (a task
//! failed, a checkpoint the run stops at is complete); it evaluates alert rules and
//! publishes gauges.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::alerts::{AlertEvaluator, AlertKind};
use crate::checkpoint::{Checkpoint, CheckpointStore, Restored, store};
use crate::dataflow::{DEAD_LETTER_PORT, LATE_PORT};
use crate::dataflow::{Rescale, Sink};
use crate::error::RunError;
use crate::metrics as m;
use crate::runtime::coordinator::{CheckpointCoordinator, Purpose};
use crate::runtime::plan::{NodeKind, Plan, PlanNode};
use crate::runtime::route::{EdgeOut, Envelope, Partitioning, Router};
use crate::runtime::task::{
    Control, Discard, Instance, OperatorDriver, OperatorTask, Report, SinkDriver, SinkTask,
    SourceDriver, SourceTask, TaskLink, spawn, tell,
};
use crate::savepoint::{SavepointError, SavepointRequest, SavepointRequests};
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
    /// Start from scratch although the checkpoint directory holds checkpoints (asked for
    /// explicitly: `run --fresh-start`): nothing is restored and every output begins afresh.
    /// Without it, a directory whose checkpoints are all broken stops the run.
    pub fresh_start: bool,
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
            fresh_start: false,
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

/// Runs the plan to completion (every source ended, or `shutdown` set).
pub fn run(plan: Plan, ctx: RunContext) -> Result<RunSummary, RunError> {
    let start_ms = ctx.clock.now_ms();
    let bootstrap = ctx.bootstrap.is_some();
    let store = open_store(&plan, &ctx)?;
    if let Some(dir) = &plan.options.checkpoint_dir
        && store.is_some()
    {
        let id = crate::instance::resolve(dir).map_err(|e| RunError::Checkpoint {
            message: format!("the instance id: {e}"),
            class: crate::error::ErrorClass::Definite,
        })?;
        tracing::info!(instance_id = %id, "this process's instance id");
        ctx.status.set_instance_id(&id);
    }
    let mut restored = if bootstrap {
        None
    } else {
        checkpoint_to_restore(&ctx, store.as_ref())?
    };
    if let Some(r) = &restored {
        check_restorable(&plan, r)?;
        tracing::info!(epoch = r.manifest.epoch, path = %r.path.display(), "restoring from checkpoint");
    }
    // The run's checkpoints go above every one in the directory, so that retention never
    // drops a new one for an older (or broken) one.
    let first_epoch = restored.as_ref().map_or(1, |r| r.manifest.epoch + 1).max(
        store
            .as_ref()
            .and_then(CheckpointStore::highest_epoch)
            .map_or(1, |e| e + 1),
    );

    // Set when the run stops after a savepoint: tasks end without draining, and an input
    // closing under them is not an error.
    let stopping = Arc::new(AtomicBool::new(false));
    // Operators whose task ended, kept (with their state) until the run is over.
    let finished_operators: Arc<Mutex<Vec<OperatorDriver>>> = Arc::default();
    let (report_tx, report_rx) = unbounded::<Report>();
    let instances = Launcher {
        plan: &plan,
        ctx: &ctx,
        restored: restored.as_ref(),
        checkpoints_kept: store.is_some(),
        wiring: Wiring::new(&plan.nodes, plan.options.channel_capacity),
        reports: report_tx,
        failed: Arc::new(AtomicBool::new(false)),
        stopping: stopping.clone(),
        finished_operators: finished_operators.clone(),
    }
    .start_all()?;

    let restore_ms = restored.as_ref().map(|_| ctx.clock.now_ms() - start_ms);
    if let Some(ms) = restore_ms {
        metrics::gauge!(m::RESTORE_MS).set(ms as f64);
        tracing::info!(restore_ms = ms, "state restored");
    }
    // Every task has its state: the checkpoint's copy of it need not stay in memory.
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
        first_epoch,
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

/// The pipeline's checkpoint store, if it keeps checkpoints (a bootstrap keeps none).
fn open_store(plan: &Plan, ctx: &RunContext) -> Result<Option<CheckpointStore>, RunError> {
    let opts = &plan.options;
    match &opts.checkpoint_dir {
        Some(_) if ctx.bootstrap.is_some() => Ok(None),
        Some(dir) => CheckpointStore::open(dir, opts.checkpoint_retain)
            .map(Some)
            .map_err(|e| RunError::Checkpoint {
                message: e.to_string(),
                class: crate::error::ErrorClass::Definite,
            }),
        None => Ok(None),
    }
}

/// The checkpoint a run starts from: the one asked for (it must verify), else the latest
/// complete one in the checkpoint directory, else none (the directory holds no checkpoint,
/// or a fresh start was asked for). A directory whose checkpoints are all broken is an
/// error: starting from scratch would begin every output afresh.
fn checkpoint_to_restore(
    ctx: &RunContext,
    store: Option<&CheckpointStore>,
) -> Result<Option<Restored>, RunError> {
    if let Some(path) = &ctx.restore_from {
        return store::read(path)
            .map(Some)
            .map_err(|e| RunError::restore("checkpoint", e));
    }
    let Some(store) = store else {
        return Ok(None);
    };
    if ctx.fresh_start {
        if let Some(epoch) = store.highest_epoch() {
            tracing::warn!(dir = %store.dir().display(), newest = epoch, "fresh start: the checkpoints here are not restored, every output begins afresh");
        }
        return Ok(None);
    }
    store
        .latest()
        .map_err(|e| RunError::restore("checkpoints", e))
}

/// Checks that a checkpoint fits the plan: every state it holds belongs to a node of the
/// plan, under instance numbers `0..m`. An operator or source taken with another number of
/// instances is restored by redistributing its state (`former_instances`); a sink cannot be
/// (each instance is its own output).
fn check_restorable(plan: &Plan, r: &Restored) -> Result<(), RunError> {
    let labels = r
        .operators
        .keys()
        .chain(r.sinks.keys())
        .chain(r.manifest.sources.keys());
    for label in labels {
        let node = label
            .rsplit_once('#')
            .and_then(|(name, i)| Some((name, i.parse::<usize>().ok()?)))
            .and_then(|(name, _)| plan.nodes.iter().find(|n| n.name == name));
        if node.is_none() {
            return Err(RunError::Restore {
                component: label.clone(),
                message: format!(
                    "checkpoint {} holds state for `{label}`, which this pipeline does not have \
                     (was it taken with another pipeline file?)",
                    r.path.display()
                ),
            });
        }
    }
    for node in &plan.nodes {
        let taken = former_instances(r, node);
        let Some(m) = taken else { continue };
        if m != node.parallelism && matches!(node.kind, NodeKind::Sink { .. }) {
            return Err(RunError::Restore {
                component: node.name.clone(),
                message: format!(
                    "checkpoint {} was taken with {m} instance(s) of sink `{}`, this run has {}; \
                     a sink's instances cannot be merged or split",
                    r.path.display(),
                    node.name,
                    node.parallelism
                ),
            });
        }
        if m != node.parallelism {
            tracing::warn!(node = %node.name, former = m, now = node.parallelism, "restoring into another number of instances: state is redistributed by key group");
        }
    }
    if r.manifest.pipeline != plan.name {
        tracing::warn!(checkpoint = %r.manifest.pipeline, pipeline = %plan.name, "restoring a checkpoint taken by a pipeline of another name");
    }
    Ok(())
}

/// How many instances of `node` the checkpoint holds state for (`None`: none), checked to
/// be numbered `0..m`.
fn former_instances(r: &Restored, node: &PlanNode) -> Option<usize> {
    let prefix = format!("{}#", node.name);
    let mut seen: Vec<usize> = r
        .operators
        .keys()
        .chain(r.sinks.keys())
        .chain(r.manifest.sources.keys())
        .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    let m = seen.last().map(|&last| last + 1)?;
    Some(m)
}

/// The positions and watermark state of every former instance of source `node`, as one:
/// a run with another number of instances matches its partitions in it by name.
fn merged_source_checkpoint(r: &Restored, node: &PlanNode) -> crate::checkpoint::SourceCheckpoint {
    let prefix = format!("{}#", node.name);
    let mut merged = crate::checkpoint::SourceCheckpoint::default();
    for (label, at) in &r.manifest.sources {
        if label
            .strip_prefix(&prefix)
            .is_none_or(|i| i.parse::<usize>().is_err())
        {
            continue;
        }
        merged.positions.extend(at.positions.iter().cloned());
        // Checkpoints of manifest format 2 and older do not name the partitions of their
        // watermark state: without names it cannot be matched, the partitions start without.
        if at.partitions.len() == at.max_event_times.len() {
            merged.partitions.extend(at.partitions.iter().cloned());
            merged
                .max_event_times
                .extend(at.max_event_times.iter().copied());
        }
    }
    merged
}

/// The channels of a run: one bounded inbound channel per instance, whose slots are, per
/// input edge, one per upstream instance; and who consumes each output port.
struct Wiring {
    senders: Vec<Vec<Sender<Envelope>>>,
    receivers: Vec<Vec<Option<Receiver<Envelope>>>>,
    /// Per node, per input edge: its first slot.
    slot_offsets: Vec<Vec<usize>>,
    /// Per node, per slot: its input edge.
    slot_inputs: Vec<Vec<usize>>,
    /// Per node, per slot: the upstream instance's label.
    slot_labels: Vec<Vec<String>>,
    /// Output edges of each (node, port), as (consumer node, edge index).
    consumers: HashMap<(usize, usize), Vec<(usize, usize)>>,
}

impl Wiring {
    fn new(nodes: &[PlanNode], channel_capacity: usize) -> Wiring {
        let mut senders: Vec<Vec<Sender<Envelope>>> = Vec::new();
        let mut receivers: Vec<Vec<Option<Receiver<Envelope>>>> = Vec::new();
        for n in nodes {
            let (s, r): (Vec<_>, Vec<_>) = (0..n.parallelism)
                .map(|_| {
                    let (s, r) = bounded(channel_capacity);
                    (s, Some(r))
                })
                .unzip();
            senders.push(s);
            receivers.push(r);
        }

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

        let mut consumers: HashMap<(usize, usize), Vec<(usize, usize)>> = HashMap::new();
        for (d, n) in nodes.iter().enumerate() {
            for (j, inp) in n.inputs.iter().enumerate() {
                consumers
                    .entry((inp.node, inp.port))
                    .or_default()
                    .push((d, j));
            }
        }
        Wiring {
            senders,
            receivers,
            slot_offsets,
            slot_inputs,
            slot_labels,
            consumers,
        }
    }

    /// The edges instance `inst` of node `ni` sends on, per output port.
    fn ports(&self, nodes: &[PlanNode], ni: usize, inst: usize) -> Vec<Vec<EdgeOut>> {
        (0..nodes[ni].ports.len())
            .map(|p| {
                self.consumers
                    .get(&(ni, p))
                    .map(|cs| {
                        cs.iter()
                            .map(|&(d, j)| {
                                EdgeOut::new(
                                    partitioning(nodes, ni, d, j),
                                    (self.slot_offsets[d][j] + inst) as u32,
                                    self.senders[d].clone(),
                                    inst,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Which output ports of node `ni` have a consumer.
    fn consumed(&self, nodes: &[PlanNode], ni: usize) -> Vec<bool> {
        (0..nodes[ni].ports.len())
            .map(|p| self.consumers.contains_key(&(ni, p)))
            .collect()
    }
}

/// How rows of edge `edge` of node `down` (from node `up`) are spread over its instances.
fn partitioning(nodes: &[PlanNode], up: usize, down: usize, edge: usize) -> Partitioning {
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
}

/// The counters each output port of `node` moves.
fn port_counters(node: &PlanNode) -> Vec<Vec<metrics::Counter>> {
    node.ports
        .iter()
        .map(|p| {
            let p = &p.name;
            let mut c = vec![metrics::counter!(m::RECORDS_OUT, m::LABEL_NODE => node.name.clone(), m::LABEL_PORT => p.clone())];
            if p == LATE_PORT {
                c.push(metrics::counter!(m::LATE_RECORDS, m::LABEL_NODE => node.name.clone()));
            } else if p == DEAD_LETTER_PORT {
                c.push(metrics::counter!(m::DEAD_LETTER_RECORDS, m::LABEL_NODE => node.name.clone()));
            }
            c
        })
        .collect()
}

/// Starts the instances of a plan, each with its channels, its restored state and its
/// thread.
struct Launcher<'a> {
    plan: &'a Plan,
    ctx: &'a RunContext,
    restored: Option<&'a Restored>,
    /// With checkpoints kept, a shutdown stops at a checkpoint instead of ending the input.
    checkpoints_kept: bool,
    wiring: Wiring,
    reports: Sender<Report>,
    failed: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    finished_operators: Arc<Mutex<Vec<OperatorDriver>>>,
}

impl Launcher<'_> {
    /// Starts every instance. A node that cannot be built stops the tasks already started:
    /// they see `failed`, or their channels close, and end.
    fn start_all(mut self) -> Result<Vec<Instance>, RunError> {
        let mut instances: Vec<Instance> = Vec::new();
        for (ni, node) in self.plan.nodes.iter().enumerate() {
            if let NodeKind::Source { watermark, .. } = &node.kind {
                self.ctx.status.expect_source(SourceExpectations {
                    source: node.name.clone(),
                    expected_interval_ms: watermark.expected_interval.map(|d| d.as_millis() as i64),
                    idle_timeout_ms: watermark.idle_timeout.map(|d| d.as_millis() as i64),
                });
            }
            let mut inbound = std::mem::take(&mut self.wiring.receivers[ni]).into_iter();
            for inst in 0..node.parallelism {
                match self.start(ni, inst, inbound.next().flatten()) {
                    Ok(i) => instances.push(i),
                    Err(e) => {
                        self.failed.store(true, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
        }
        // Dropping the launcher leaves the senders to the tasks alone: a consumer sees its
        // inputs close when they stop.
        Ok(instances)
    }

    fn start(
        &self,
        ni: usize,
        inst: usize,
        inbound: Option<Receiver<Envelope>>,
    ) -> Result<Instance, RunError> {
        let (ctx, nodes) = (self.ctx, &self.plan.nodes);
        let node = &nodes[ni];
        let bootstrap = ctx.bootstrap.is_some();
        let label = format!("{}#{}", node.name, inst);
        let port_names: Vec<String> = node.ports.iter().map(|p| p.name.clone()).collect();
        let ports = self.wiring.ports(nodes, ni, inst);
        let counters = port_counters(node);
        let now = ctx.clock.now_ms();
        let link = TaskLink {
            name: label.clone(),
            reports: self.reports.clone(),
            failed: self.failed.clone(),
            stopping: self.stopping.clone(),
            clock: ctx.clock.clone(),
        };
        let panic_link = link.clone();
        let (role, control, handle) = match &node.kind {
            NodeKind::Source { factory, watermark } => {
                let mut source = factory(inst, node.parallelism)?;
                source.connect_ports(&self.wiring.consumed(nodes, ni));
                let status = ctx.status.register(InstanceStatus::new(
                    &node.name,
                    inst,
                    Role::Source,
                    source.partitions(),
                    &port_names,
                    now,
                ));
                let router = Router::new(ports, counters, status.clone());
                let batch_size = self.plan.options.batch_size;
                let mut driver = SourceDriver::new(source, watermark, batch_size, status, now);
                if let Some(r) = self.restored {
                    if former_instances(r, node).is_some_and(|m| m != node.parallelism) {
                        // Partitions are matched by name: each instance finds its own among
                        // those of every former instance.
                        driver.restore(&merged_source_checkpoint(r, node))?;
                    } else {
                        match r.manifest.sources.get(&label) {
                            Some(at) => driver.restore(at)?,
                            None => {
                                tracing::warn!(source = %label, "not in the checkpoint: reads from the start")
                            }
                        }
                    }
                }
                let (ctl_tx, ctl_rx) = unbounded::<Control>();
                let ends_input = (!self.checkpoints_kept).then(|| ctx.shutdown.clone());
                let task = SourceTask::new(driver, router, ctl_rx, link, ends_input, bootstrap);
                (
                    Role::Source,
                    Some(ctl_tx),
                    spawn(&panic_link, move || task.run())?,
                )
            }
            NodeKind::Operator { factory, .. } => {
                let op = factory(inst)?;
                let status = ctx.status.register(InstanceStatus::new(
                    &node.name,
                    inst,
                    Role::Operator,
                    self.wiring.slot_labels[ni].clone(),
                    &port_names,
                    now,
                ));
                let router = Router::new(ports, counters, status.clone());
                let slots = self.wiring.slot_inputs[ni].clone();
                let mut driver = OperatorDriver::new(op, slots, status, now);
                if let Some(r) = self.restored {
                    match former_instances(r, node) {
                        Some(m) if m != node.parallelism => {
                            let empty = crate::state::StateImage::default();
                            let snapshots = (0..m)
                                .map(|j| {
                                    r.operators
                                        .get(&format!("{}#{j}", node.name))
                                        .unwrap_or(&empty)
                                })
                                .collect();
                            let from = Rescale::new(inst, node.parallelism, snapshots);
                            driver
                                .restore_rescaled(&from)
                                .map_err(|e| RunError::restore(label.clone(), e))?;
                        }
                        _ => {
                            if let Some(state) = r.operators.get(&label) {
                                driver.restore(state)?;
                            }
                        }
                    }
                }
                let task = OperatorTask::new(
                    driver,
                    router,
                    inbound.expect("receiver"),
                    link,
                    self.finished_operators.clone(),
                );
                (
                    Role::Operator,
                    None,
                    spawn(&panic_link, move || task.run())?,
                )
            }
            NodeKind::Sink { factory } => {
                let sink: Box<dyn Sink> = if bootstrap {
                    Box::new(Discard)
                } else {
                    factory(inst)?
                };
                let status = ctx.status.register(InstanceStatus::new(
                    &node.name,
                    inst,
                    Role::Sink,
                    self.wiring.slot_labels[ni].clone(),
                    &port_names,
                    now,
                ));
                let slots = self.wiring.slot_inputs[ni].clone();
                let driver = SinkDriver::new(sink, slots, status, now);
                let restored = self.restored.and_then(|r| r.sinks.get(&label).cloned());
                if let Some(r) = self.restored
                    && restored.is_none()
                    && !bootstrap
                {
                    tracing::warn!(sink = %label, checkpoint = %r.path.display(), "not in the checkpoint: a new sink, it gets only what comes after the checkpoint");
                }
                let (ctl_tx, ctl_rx) = unbounded::<Control>();
                let inbound = inbound.expect("receiver");
                let task = SinkTask::new(driver, inbound, ctl_rx, link, restored, bootstrap);
                (
                    Role::Sink,
                    Some(ctl_tx),
                    spawn(&panic_link, move || task.run())?,
                )
            }
        };
        Ok(Instance {
            label,
            role,
            control,
            handle,
        })
    }
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
    first_epoch: Epoch,
    stopping: &AtomicBool,
) -> Result<RunSummary, RunError> {
    let clock = &ctx.clock;
    let opts = &plan.options;
    let mut co = CheckpointCoordinator::new(
        instances,
        &ctx.status,
        store,
        plan.name.clone(),
        first_epoch,
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
    // A source waits for a checkpoint (to hand partitions over): the next barrier comes now.
    let mut checkpoint_wanted = false;
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
                if first_error.as_ref().is_some_and(RunError::is_knock_on) && !e.is_knock_on() {
                    // The cause, reported after a task it stopped: the run's error is the cause.
                    first_error = Some(e);
                } else if first_error.is_none() {
                    first_error = Some(e);
                    // Sinks waiting for their last commit would wait forever, and so would
                    // sources that read to their end and wait for the run's last checkpoint.
                    tell(instances, Role::Sink, Control::Stop);
                    tell(instances, Role::Source, Control::Stop);
                }
            }
            Ok(Report::Ack(label, ack)) => co.ack(label, ack, clock.now_ms()),
            Ok(Report::CheckpointWanted(label)) => {
                tracing::debug!(source = %label, "a checkpoint is wanted now");
                checkpoint_wanted = true;
            }
            Ok(Report::Bootstrapped(label)) => {
                tracing::info!(source = %label, "bootstrap: read what it needs");
                bootstrapped.insert(label, ());
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // A task reports before its thread ends: a thread that ended, with no report
                // left in the queue, died without one (a panic). Waiting for it would never
                // end. (Its thread ended first, so a report it sent is in the queue by now.)
                let silent: Vec<&Instance> = instances
                    .iter()
                    .filter(|i| i.handle.is_finished() && !finished.contains_key(&i.label))
                    .collect();
                if reports.is_empty() {
                    for i in silent {
                        let e = RunError::Stopped {
                            task: i.label.clone(),
                            why: "its thread ended without reporting (it panicked)",
                        };
                        tracing::error!(task = %i.label, error = %e, "task failed");
                        finished.insert(i.label.clone(), ());
                        if first_error.is_none() {
                            first_error = Some(e);
                            tell(instances, Role::Sink, Control::Stop);
                        }
                    }
                }
            }
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
                let _ = req.reply.send(Err(SavepointError::Unavailable(
                    "the pipeline is ending or failing: no savepoint can be taken now".into(),
                )));
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
        let due = next_barrier_ms.is_some_and(|at| now >= at);
        if can_inject && ctx.bootstrap.is_none() && !co.has_pending() && (due || checkpoint_wanted)
        {
            inject(&mut co, Purpose::Periodic);
            checkpoint_wanted = false;
            next_barrier_ms = interval_ms.map(|every| now + every);
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
