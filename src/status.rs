//! Live status of a running pipeline: its name and run id (random, one per process; the
//! commands that talk to a running pipeline check the name), per node instance its
//! watermark, idleness, which input holds its watermark and since when, and record counts;
//! per source partition its watermark, idleness and last activity; the warnings a component
//! reports about itself (a change stream whose configured tables receive nothing while
//! changes of tables not configured arrive, naming them). Tasks write it when
//! something changes (atomics, no locks on the per-record path); `/status`, `watershed
//! explain` and the alert rules read snapshots.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::types::EventTime;

const NONE: i64 = i64::MIN;

fn load_opt(a: &AtomicI64) -> Option<i64> {
    match a.load(Ordering::Relaxed) {
        NONE => None,
        v => Some(v),
    }
}

/// The role of a node in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Operator,
    Sink,
}

/// Live status of one source partition.
#[derive(Debug)]
pub struct PartitionStatus {
    pub label: String,
    watermark: AtomicI64,
    idle: AtomicBool,
    ended: AtomicBool,
    last_activity_ms: AtomicI64,
}

impl PartitionStatus {
    fn new(label: &str, now_ms: i64) -> PartitionStatus {
        PartitionStatus {
            label: label.to_string(),
            watermark: AtomicI64::new(NONE),
            idle: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            last_activity_ms: AtomicI64::new(now_ms),
        }
    }

    pub fn set(&self, watermark: Option<EventTime>, idle: bool, ended: bool, last_ms: i64) {
        self.watermark
            .store(watermark.unwrap_or(NONE), Ordering::Relaxed);
        self.idle.store(idle, Ordering::Relaxed);
        self.ended.store(ended, Ordering::Relaxed);
        self.last_activity_ms.store(last_ms, Ordering::Relaxed);
    }
}

/// Live status of one node instance.
#[derive(Debug)]
pub struct InstanceStatus {
    pub node: String,
    pub instance: usize,
    pub role: Role,
    /// Labels of the inputs, `node#instance` (operators, sinks) or partition names (sources).
    pub inputs: Vec<String>,
    watermark: AtomicI64,
    idle: AtomicBool,
    advanced_at_ms: AtomicI64,
    holder: AtomicI64,
    records_in: AtomicU64,
    last_record_ms: AtomicI64,
    ports_out: Vec<(String, AtomicU64)>,
    /// A source's partitions now (a consumer group's assignment can change them).
    partitions: Mutex<Vec<PartitionStatus>>,
    finished: AtomicBool,
    /// Counters and gauges the component reports about itself (an enrichment's lookups and
    /// gate, a source's idleness transitions), by name.
    stats: std::sync::Mutex<Vec<(String, u64)>>,
    /// Conditions the component reports about itself (`Source::warnings`).
    warnings: Mutex<Vec<String>>,
    /// What the component tells about itself by name (`Source::info`: a consumer group's
    /// member id and members).
    info: Mutex<Vec<(String, String)>>,
}

impl InstanceStatus {
    pub fn new(
        node: &str,
        instance: usize,
        role: Role,
        inputs: Vec<String>,
        ports: &[String],
        now_ms: i64,
    ) -> InstanceStatus {
        let partitions = if role == Role::Source {
            inputs
                .iter()
                .map(|l| PartitionStatus::new(l, now_ms))
                .collect()
        } else {
            Vec::new()
        };
        InstanceStatus {
            node: node.to_string(),
            instance,
            role,
            inputs,
            watermark: AtomicI64::new(NONE),
            idle: AtomicBool::new(false),
            advanced_at_ms: AtomicI64::new(now_ms),
            holder: AtomicI64::new(NONE),
            records_in: AtomicU64::new(0),
            last_record_ms: AtomicI64::new(NONE),
            ports_out: ports
                .iter()
                .map(|p| (p.clone(), AtomicU64::new(0)))
                .collect(),
            partitions: Mutex::new(partitions),
            finished: AtomicBool::new(false),
            stats: std::sync::Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            info: Mutex::new(Vec::new()),
        }
    }

    /// Updates source partition `p`'s status.
    pub fn set_partition(
        &self,
        p: usize,
        watermark: Option<EventTime>,
        idle: bool,
        ended: bool,
        last_ms: i64,
    ) {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = partitions.get(p) {
            s.set(watermark, idle, ended, last_ms);
        }
    }

    /// A source's partitions changed: those still listed keep their status, new ones start
    /// without a watermark.
    pub fn set_partitions(&self, labels: &[String], now_ms: i64) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut old: Vec<PartitionStatus> = std::mem::take(&mut *partitions);
        *partitions = labels
            .iter()
            .map(|l| match old.iter().position(|p| &p.label == l) {
                Some(i) => old.swap_remove(i),
                None => PartitionStatus::new(l, now_ms),
            })
            .collect();
    }

    /// Replaces the component's own stats.
    pub fn set_stats(&self, stats: &[(&str, u64)]) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.clear();
        s.extend(stats.iter().map(|(k, v)| (k.to_string(), *v)));
    }

    /// Replaces what the component tells about itself.
    pub fn set_info(&self, info: Vec<(&str, String)>) {
        let mut i = self.info.lock().unwrap_or_else(|e| e.into_inner());
        i.clear();
        i.extend(info.into_iter().map(|(k, v)| (k.to_string(), v)));
    }

    /// Replaces the component's warnings.
    pub fn set_warnings(&self, warnings: Vec<String>) {
        let mut w = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        if *w != warnings {
            *w = warnings;
        }
    }

    pub fn label(&self) -> String {
        format!("{}#{}", self.node, self.instance)
    }

    pub fn set_watermark(
        &self,
        watermark: Option<EventTime>,
        idle: bool,
        holder: Option<usize>,
        advanced_at_ms: i64,
    ) {
        self.watermark
            .store(watermark.unwrap_or(NONE), Ordering::Relaxed);
        self.idle.store(idle, Ordering::Relaxed);
        self.holder
            .store(holder.map_or(NONE, |h| h as i64), Ordering::Relaxed);
        self.advanced_at_ms.store(advanced_at_ms, Ordering::Relaxed);
    }

    pub fn add_records_in(&self, n: u64, now_ms: i64) {
        self.records_in.fetch_add(n, Ordering::Relaxed);
        self.last_record_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn add_records_out(&self, port: usize, n: u64) {
        self.ports_out[port].1.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> InstanceReport {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        InstanceReport {
            node: self.node.clone(),
            instance: self.instance,
            role: self.role,
            watermark: load_opt(&self.watermark),
            idle: self.idle.load(Ordering::Relaxed),
            advanced_at_ms: self.advanced_at_ms.load(Ordering::Relaxed),
            holder: load_opt(&self.holder).and_then(|h| {
                if self.role == Role::Source {
                    partitions.get(h as usize).map(|p| p.label.clone())
                } else {
                    self.inputs.get(h as usize).cloned()
                }
            }),
            records_in: self.records_in.load(Ordering::Relaxed),
            last_record_ms: load_opt(&self.last_record_ms),
            records_out: self
                .ports_out
                .iter()
                .map(|(p, c)| (p.clone(), c.load(Ordering::Relaxed)))
                .collect(),
            partitions: partitions
                .iter()
                .map(|p| PartitionReport {
                    label: p.label.clone(),
                    watermark: load_opt(&p.watermark),
                    idle: p.idle.load(Ordering::Relaxed),
                    ended: p.ended.load(Ordering::Relaxed),
                    last_activity_ms: p.last_activity_ms.load(Ordering::Relaxed),
                })
                .collect(),
            finished: self.finished.load(Ordering::Relaxed),
            stats: self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            warnings: self
                .warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            info: self.info.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Per-source settings the alert rules need.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceExpectations {
    pub source: String,
    /// Alert when a partition has had no record for longer than this.
    pub expected_interval_ms: Option<i64>,
    pub idle_timeout_ms: Option<i64>,
}

/// All instances of a running pipeline.
#[derive(Debug, Default)]
pub struct StatusRegistry {
    pub pipeline: String,
    /// Random, one per process: tells a run from the next one of the same pipeline.
    pub run_id: String,
    /// This process's id among the pipeline's instances (`crate::instance`), once known.
    instance_id: Mutex<Option<String>>,
    instances: Mutex<Vec<Arc<InstanceStatus>>>,
    pub sources: Mutex<Vec<SourceExpectations>>,
    checkpoints: Mutex<Option<CheckpointReport>>,
}

impl StatusRegistry {
    pub fn new(pipeline: &str) -> Arc<StatusRegistry> {
        // Without the system's random bytes, the time and process id still tell runs apart.
        let run_id = crate::random::hex(8).unwrap_or_else(|_| {
            format!(
                "{:x}-{:x}",
                chrono::Utc::now().timestamp_micros(),
                std::process::id()
            )
        });
        Arc::new(StatusRegistry {
            pipeline: pipeline.to_string(),
            run_id,
            ..StatusRegistry::default()
        })
    }

    /// Publishes this process's instance id.
    pub fn set_instance_id(&self, id: &str) {
        *self.instance_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
    }

    /// Publishes how checkpointing goes.
    pub fn set_checkpoints(&self, report: CheckpointReport) {
        *self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// Forgets the instances of a run that ended (a restarted run registers its own).
    pub fn clear_instances(&self) {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn register(&self, status: InstanceStatus) -> Arc<InstanceStatus> {
        let s = Arc::new(status);
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.clone());
        s
    }

    pub fn expect_source(&self, e: SourceExpectations) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }

    pub fn snapshot(&self, now_ms: i64) -> StatusReport {
        let instances = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|i| i.snapshot())
            .collect();
        StatusReport {
            pipeline: self.pipeline.clone(),
            run_id: self.run_id.clone(),
            instance_id: self
                .instance_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            now_ms,
            instances,
            sources: self
                .sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            checkpoints: self
                .checkpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartitionReport {
    pub label: String,
    pub watermark: Option<EventTime>,
    pub idle: bool,
    pub ended: bool,
    pub last_activity_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InstanceReport {
    pub node: String,
    pub instance: usize,
    pub role: Role,
    pub watermark: Option<EventTime>,
    pub idle: bool,
    pub advanced_at_ms: i64,
    /// The input holding this instance's watermark back.
    pub holder: Option<String>,
    pub records_in: u64,
    pub last_record_ms: Option<i64>,
    pub records_out: Vec<(String, u64)>,
    pub partitions: Vec<PartitionReport>,
    pub finished: bool,
    /// The component's own counters and gauges.
    #[serde(default)]
    pub stats: Vec<(String, u64)>,
    /// Conditions the component reports about itself, e.g. a change stream whose configured
    /// tables receive nothing while changes of tables not configured arrive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the component tells about itself by name (a consumer group's member id,
    /// generation's members, partitions no member owns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub info: Vec<(String, String)>,
}

impl InstanceReport {
    pub fn label(&self) -> String {
        format!("{}#{}", self.node, self.instance)
    }

    /// One of the component's own facts (`info`).
    pub fn info(&self, name: &str) -> Option<&str> {
        self.info
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// One of the component's own stats.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

impl StatusReport {
    /// A stat summed over every instance of `node`.
    pub fn node_stat(&self, node: &str, name: &str) -> u64 {
        self.instances
            .iter()
            .filter(|i| i.node == node)
            .filter_map(|i| i.stat(name))
            .sum()
    }
}

/// How checkpointing goes (pipelines with a checkpoint directory).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckpointReport {
    /// When the run started checkpointing (processing time).
    pub since_ms: i64,
    pub last_epoch: Option<u64>,
    pub last_completed_ms: Option<i64>,
    pub last_duration_ms: Option<i64>,
    pub last_alignment_ms: Option<i64>,
    pub last_bytes: Option<u64>,
    pub completed: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
}

/// A point-in-time view of the whole pipeline (the `/status` document).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The pipeline's name (its file's `name`).
    pub pipeline: String,
    /// The run's id (`StatusRegistry::run_id`).
    #[serde(default)]
    pub run_id: String,
    /// This process's id among the pipeline's instances (with a checkpoint directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub now_ms: i64,
    pub instances: Vec<InstanceReport>,
    pub sources: Vec<SourceExpectations>,
    #[serde(default)]
    pub checkpoints: Option<CheckpointReport>,
}

impl StatusReport {
    pub fn instance(&self, label: &str) -> Option<&InstanceReport> {
        self.instances.iter().find(|i| i.label() == label)
    }

    /// Follows the chain of watermark holders from `start` down to a source partition:
    /// each step is `(instance label, holder label)`.
    pub fn holder_chain(&self, start: &InstanceReport) -> Vec<String> {
        let mut chain = Vec::new();
        let mut cur = start;
        for _ in 0..64 {
            let Some(h) = &cur.holder else { break };
            chain.push(h.clone());
            match self.instance(h) {
                Some(next) => cur = next,
                None => break,
            }
        }
        chain
    }

    /// Where the watermark of `inst` is held: the source partition at the end of its chain,
    /// if there is one, as `(source instance, partition)`.
    pub fn root_holder<'a>(
        &'a self,
        inst: &'a InstanceReport,
    ) -> Option<(&'a InstanceReport, &'a PartitionReport)> {
        let chain = self.holder_chain(inst);
        let mut owner = inst;
        for label in &chain {
            if let Some(next) = self.instance(label) {
                owner = next;
            } else {
                return owner
                    .partitions
                    .iter()
                    .find(|p| &p.label == label)
                    .map(|p| (owner, p));
            }
        }
        None
    }
}
