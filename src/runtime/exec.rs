//! Runs a `Plan`: one thread per node instance, connected by bounded channels (backpressure:
//! a slow consumer blocks its producers; memory is bounded by `channel_capacity` batches per
//! input), and a supervisor on the calling thread that injects barriers every checkpoint
//! interval, collects barrier acknowledgements, evaluates alert rules, publishes gauges and
//! stops everything if a task fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::alerts::{AlertEvaluator, AlertKind};
use crate::error::RunError;
use crate::metrics as m;
use crate::operators::{DEAD_LETTER_PORT, LATE_PORT};
use crate::runtime::Message;
use crate::runtime::plan::{NodeKind, Plan};
use crate::runtime::route::{EdgeOut, Envelope, Partitioning, Router};
use crate::runtime::task::{
    BarrierAck, Emit, OperatorDriver, SinkDriver, SourceDriver, SourceStep,
};
use crate::status::{InstanceStatus, Role, SourceExpectations, StatusRegistry, StatusReport};
use crate::time::ClockRef;
use crate::types::{Epoch, SourcePosition};

/// What the caller provides besides the plan.
#[derive(Clone)]
pub struct RunContext {
    pub clock: ClockRef,
    pub status: Arc<StatusRegistry>,
    /// Set to stop: sources end their input (windows then fire as at the end of a file).
    pub shutdown: Arc<AtomicBool>,
}

/// The last checkpoint every task acknowledged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompletedCheckpoint {
    pub epoch: Epoch,
    pub positions: Vec<SourcePosition>,
    /// Operator state snapshots by instance label.
    pub states: BTreeMap<String, Vec<u8>>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub elapsed_ms: i64,
    pub report: StatusReport,
    pub checkpoints_completed: u64,
    pub last_checkpoint: Option<CompletedCheckpoint>,
    pub alerts_fired: Vec<(AlertKind, String, String)>,
}

enum Control {
    Barrier(Epoch),
    CheckpointDone(Epoch),
}

enum Report {
    Ack(String, BarrierAck),
    /// A task ended normally; a source gives its final positions.
    Finished(String, Vec<SourcePosition>),
    Failed(String, RunError),
}

struct Instance {
    label: String,
    role: Role,
    control: Option<Sender<Control>>,
    handle: JoinHandle<()>,
}

/// Runs the plan to completion (every source ended, or `shutdown` set).
pub fn run(plan: Plan, ctx: RunContext) -> Result<RunSummary, RunError> {
    let clock = ctx.clock.clone();
    let start_ms = clock.now_ms();
    let opts = plan.options.clone();
    let nodes = &plan.nodes;

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
            let report_end = move |result: Result<Vec<SourcePosition>, RunError>| match result {
                Ok(positions) => {
                    let _ = rtx.send(Report::Finished(name.clone(), positions));
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
                    let (ctl_tx, ctl_rx) = unbounded::<Control>();
                    let shutdown = ctx.shutdown.clone();
                    let failed = failed.clone();
                    let handle = spawn(&label, move || {
                        let mut emit = |e: Emit| match e {
                            Emit::Port(p, b) => router.send(p, b),
                            Emit::Control(msg) => router.broadcast(&msg),
                        };
                        let result = (|| -> Result<Vec<SourcePosition>, RunError> {
                            loop {
                                while let Ok(c) = ctl_rx.try_recv() {
                                    match c {
                                        Control::Barrier(epoch) => {
                                            let ack = driver.barrier(epoch, &mut emit)?;
                                            let _ = rtx.send(Report::Ack(name.clone(), ack));
                                        }
                                        Control::CheckpointDone(epoch) => {
                                            // Sources that acknowledge upstream (Kafka
                                            // offsets, Postgres LSNs) do it here.
                                            tracing::debug!(epoch, task = %name, "checkpoint durable");
                                        }
                                    }
                                }
                                if failed.load(Ordering::Relaxed) {
                                    return Ok(driver.positions());
                                }
                                if shutdown.load(Ordering::Relaxed) {
                                    emit(Emit::Control(Message::End))?;
                                    return Ok(driver.positions());
                                }
                                let now = clock_t.now_ms();
                                match driver.step(now, &mut emit)? {
                                    SourceStep::Continue => {}
                                    SourceStep::Finished => return Ok(driver.positions()),
                                    SourceStep::WaitUntil(t) => {
                                        let now = clock_t.sleep_until(t, Duration::from_millis(50));
                                        driver.poll_watermark(now, &mut emit)?;
                                    }
                                }
                            }
                        })();
                        report_end(result);
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
                    let rx = inbound.expect("receiver");
                    let handle = spawn(&label, move || {
                        let mut emit = |e: Emit| match e {
                            Emit::Port(p, b) => router.send(p, b),
                            Emit::Control(msg) => router.broadcast(&msg),
                        };
                        let mut ack = |a: BarrierAck| {
                            let _ = rtx.send(Report::Ack(name.clone(), a));
                        };
                        let result = drain_inbound(&name, &rx, |slot, msg| {
                            driver.on_message(slot, msg, clock_t.now_ms(), &mut emit, &mut ack)?;
                            Ok(driver.is_finished())
                        });
                        report_end(result.map(|()| Vec::new()));
                    });
                    instances.push(Instance {
                        label,
                        role: Role::Operator,
                        control: None,
                        handle,
                    });
                }
                NodeKind::Sink { factory } => {
                    let sink = factory(inst).map_err(stop_started)?;
                    let status = ctx.status.register(InstanceStatus::new(
                        &node.name,
                        inst,
                        Role::Sink,
                        slot_labels[ni].clone(),
                        &port_names,
                        now,
                    ));
                    let mut driver = SinkDriver::new(sink, slot_inputs[ni].clone(), status, now);
                    let rx = inbound.expect("receiver");
                    let handle = spawn(&label, move || {
                        let mut ack = |a: BarrierAck| {
                            let _ = rtx.send(Report::Ack(name.clone(), a));
                        };
                        let result = drain_inbound(&name, &rx, |slot, msg| {
                            driver.on_message(slot, msg, clock_t.now_ms(), &mut ack)?;
                            Ok(driver.is_finished())
                        });
                        report_end(result.map(|()| Vec::new()));
                    });
                    instances.push(Instance {
                        label,
                        role: Role::Sink,
                        control: None,
                        handle,
                    });
                }
            }
        }
    }
    // Only the tasks hold senders now: a consumer sees its inputs close when they stop.
    drop(senders);
    drop(report_tx);

    let summary = supervise(&plan, &ctx, &instances, report_rx, start_ms);
    for inst in instances {
        let _ = inst.handle.join();
    }
    summary
}

/// Feeds a task's inbound messages to `step` until it says the task has finished.
fn drain_inbound(
    name: &str,
    rx: &Receiver<Envelope>,
    mut step: impl FnMut(usize, Message) -> Result<bool, RunError>,
) -> Result<(), RunError> {
    loop {
        let Ok((slot, msg)) = rx.recv() else {
            return Err(RunError::Task {
                task: name.to_string(),
                message: "an upstream task stopped".into(),
            });
        };
        if step(slot as usize, msg)? {
            return Ok(());
        }
    }
}

fn spawn(label: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(label.to_string())
        .spawn(f)
        .expect("cannot spawn a task thread")
}

struct PendingCheckpoint {
    acked: BTreeMap<String, ()>,
    positions: Vec<SourcePosition>,
    states: BTreeMap<String, Vec<u8>>,
}

fn supervise(
    plan: &Plan,
    ctx: &RunContext,
    instances: &[Instance],
    reports: Receiver<Report>,
    start_ms: i64,
) -> Result<RunSummary, RunError> {
    let clock = &ctx.clock;
    let opts = &plan.options;
    let mut evaluator = AlertEvaluator::new(opts.alerts.clone());
    let mut alerts_fired = Vec::new();
    let mut finished: BTreeMap<String, ()> = BTreeMap::new();
    // Where finished sources stopped: part of every later checkpoint.
    let mut final_positions: BTreeMap<String, Vec<SourcePosition>> = BTreeMap::new();
    let mut first_error: Option<RunError> = None;
    let mut pending: BTreeMap<Epoch, PendingCheckpoint> = BTreeMap::new();
    let mut last_checkpoint: Option<CompletedCheckpoint> = None;
    let mut completed = 0u64;
    let mut next_epoch: Epoch = 1;
    let interval_ms = opts.checkpoint_interval.map(|d| d.as_millis() as i64);
    let mut next_barrier_ms = interval_ms.map(|i| start_ms + i);
    let monitor_ms = opts.monitor_interval.as_millis().max(1) as i64;
    let mut next_monitor_ms = start_ms + monitor_ms;

    while finished.len() < instances.len() {
        match reports.recv_timeout(Duration::from_millis(20)) {
            Ok(Report::Finished(label, positions)) => {
                final_positions.insert(label.clone(), positions);
                finished.insert(label, ());
            }
            Ok(Report::Failed(label, e)) => {
                tracing::error!(task = %label, error = %e, "task failed");
                finished.insert(label, ());
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
            Ok(Report::Ack(label, ack)) => {
                let epoch = match &ack {
                    BarrierAck::Source { epoch, .. }
                    | BarrierAck::Operator { epoch, .. }
                    | BarrierAck::Sink { epoch } => *epoch,
                };
                let p = pending.entry(epoch).or_insert_with(|| PendingCheckpoint {
                    acked: BTreeMap::new(),
                    positions: Vec::new(),
                    states: BTreeMap::new(),
                });
                match ack {
                    BarrierAck::Source { positions, .. } => p.positions.extend(positions),
                    BarrierAck::Operator { state, .. } => {
                        p.states.insert(label.clone(), state);
                    }
                    BarrierAck::Sink { .. } => {}
                }
                p.acked.insert(label, ());
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }

        // Complete checkpoints every live task acknowledged.
        let done: Vec<Epoch> = pending
            .iter()
            .filter(|(_, p)| {
                instances
                    .iter()
                    .all(|i| p.acked.contains_key(&i.label) || finished.contains_key(&i.label))
            })
            .map(|(e, _)| *e)
            .collect();
        for epoch in done {
            let mut p = pending.remove(&epoch).expect("pending");
            for (label, positions) in &final_positions {
                if !p.acked.contains_key(label) {
                    p.positions.extend(positions.iter().cloned());
                }
            }
            let bytes: usize = p.states.values().map(Vec::len).sum();
            tracing::info!(epoch, state_bytes = bytes, "checkpoint completed");
            metrics::counter!(m::BARRIERS_COMPLETED).increment(1);
            metrics::gauge!(m::LAST_EPOCH).set(epoch as f64);
            completed += 1;
            for i in instances.iter().filter(|i| i.role == Role::Source) {
                if let Some(c) = &i.control {
                    let _ = c.send(Control::CheckpointDone(epoch));
                }
            }
            last_checkpoint = Some(CompletedCheckpoint {
                epoch,
                positions: p.positions,
                states: p.states,
            });
        }

        let now = clock.now_ms();
        if first_error.is_none()
            && let (Some(at), Some(every)) = (next_barrier_ms, interval_ms)
            && now >= at
        {
            for i in instances.iter().filter(|i| i.role == Role::Source) {
                if let Some(c) = &i.control {
                    let _ = c.send(Control::Barrier(next_epoch));
                }
            }
            next_epoch += 1;
            next_barrier_ms = Some(now + every);
        }
        if now >= next_monitor_ms {
            next_monitor_ms = now + monitor_ms;
            let report = ctx.status.snapshot(now);
            publish_gauges(&report);
            for ev in evaluator.evaluate(&report) {
                metrics::gauge!(m::ALERT_ACTIVE, m::LABEL_ALERT => ev.kind.name(), m::LABEL_NODE => ev.subject.clone())
                    .set(if ev.firing { 1.0 } else { 0.0 });
                if ev.firing {
                    metrics::counter!(m::ALERTS_FIRED, m::LABEL_ALERT => ev.kind.name())
                        .increment(1);
                    tracing::warn!(alert = ev.kind.name(), subject = %ev.subject, "{}", ev.message);
                    alerts_fired.push((ev.kind, ev.subject, ev.message));
                } else {
                    tracing::info!(alert = ev.kind.name(), subject = %ev.subject, "{}", ev.message);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let now = clock.now_ms();
    let report = ctx.status.snapshot(now);
    publish_gauges(&report);
    Ok(RunSummary {
        elapsed_ms: now - start_ms,
        report,
        checkpoints_completed: completed,
        last_checkpoint,
        alerts_fired,
    })
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
