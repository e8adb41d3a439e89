//! Built-in alert rules, evaluated on status snapshots against the injected clock, so that a
//! stalled watermark or a silent source is announced, never silent:
//! - `watermark_lag`: a node's watermark is further behind the clock than a threshold;
//! - `watermark_stall`: a node keeps receiving records but its watermark has not advanced
//!   for longer than a threshold (the multi-speed stall: a quiet input holds it);
//! - `source_silent`: a source partition has had no record for longer than the source's
//!   `expected_interval`;
//! - `enrichment_gate`: a gated enrichment has been waiting for its reference table's
//!   snapshot for longer than a threshold (events pile up behind it);
//! - `checkpoint`: checkpoints keep failing (3 in a row), or the last complete one is older
//!   than a threshold (a crash would replay that much);
//! - `partition_unowned`: a partition of a consumer group's topics has had no member owning
//!   it for longer than a threshold (instances of the pipeline are missing or stuck).
//!
//! Each alert fires once when it starts (a WARN line naming the source and partition that
//! hold the watermark, and `watershed_alert_active = 1`) and resolves once when it ends.

use std::collections::BTreeMap;

use crate::status::{InstanceReport, Role, StatusReport};

/// Thresholds; `None` disables a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRules {
    pub watermark_lag_ms: Option<i64>,
    pub watermark_stall_ms: Option<i64>,
    pub enrichment_gate_ms: Option<i64>,
    /// Alert when the last complete checkpoint is older than this (checkpoints kept in a
    /// directory only).
    pub checkpoint_age_ms: Option<i64>,
    /// Alert when a partition of a consumer group's topics has had no owner this long.
    pub partition_unowned_ms: Option<i64>,
}

/// Consecutive failed checkpoints that fire the `checkpoint` alert at once.
pub const CHECKPOINT_FAILURES_ALERT: u64 = 3;

impl Default for AlertRules {
    fn default() -> AlertRules {
        AlertRules {
            watermark_lag_ms: None,
            watermark_stall_ms: Some(60_000),
            enrichment_gate_ms: Some(300_000),
            checkpoint_age_ms: Some(600_000),
            partition_unowned_ms: Some(60_000),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertKind {
    WatermarkLag,
    WatermarkStall,
    SourceSilent,
    EnrichmentGate,
    Checkpoint,
    PartitionUnowned,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::WatermarkLag => "watermark_lag",
            AlertKind::WatermarkStall => "watermark_stall",
            AlertKind::SourceSilent => "source_silent",
            AlertKind::EnrichmentGate => "enrichment_gate",
            AlertKind::Checkpoint => "checkpoint",
            AlertKind::PartitionUnowned => "partition_unowned",
        }
    }
}

/// An alert starting (`firing`) or ending.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    pub kind: AlertKind,
    /// The node (or `source/partition`) the alert is about.
    pub subject: String,
    pub firing: bool,
    pub message: String,
}

/// Remembers which alerts are active, to report only starts and ends.
#[derive(Debug, Default)]
pub struct AlertEvaluator {
    rules: AlertRules,
    active: BTreeMap<(AlertKind, String), String>,
    /// Since when each gated instance (by label) has been seen shut.
    gate_shut_since: BTreeMap<String, i64>,
}

/// A duration for people: whole seconds and up, or milliseconds under a second.
pub fn format_ms(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    // Under a second the milliseconds matter (an idle_timeout of 500ms is not "0s").
    let d = if ms < 1000 {
        std::time::Duration::from_millis(ms)
    } else {
        std::time::Duration::from_millis(ms / 1000 * 1000)
    };
    humantime::format_duration(d).to_string()
}

fn describe_holder(report: &StatusReport, inst: &InstanceReport) -> String {
    match report.root_holder(inst) {
        Some((src, p)) => {
            let idle_timeout = report
                .sources
                .iter()
                .find(|s| s.source == src.node)
                .and_then(|s| s.idle_timeout_ms);
            format!(
                "held by source `{}` partition `{}` (last record {} ago, {})",
                src.node,
                p.label,
                format_ms(report.now_ms - p.last_activity_ms),
                match idle_timeout {
                    Some(t) => format!("idle_timeout {}", format_ms(t)),
                    None => "no idle_timeout".to_string(),
                }
            )
        }
        None => match &inst.holder {
            Some(h) => format!("held by input `{h}`"),
            None => "no active input".to_string(),
        },
    }
}

impl AlertEvaluator {
    pub fn new(rules: AlertRules) -> AlertEvaluator {
        AlertEvaluator {
            rules,
            active: BTreeMap::new(),
            gate_shut_since: BTreeMap::new(),
        }
    }

    /// Evaluates every rule on `report` and returns the alerts that started or ended.
    pub fn evaluate(&mut self, report: &StatusReport) -> Vec<AlertEvent> {
        let now = report.now_ms;
        let mut firing: BTreeMap<(AlertKind, String), String> = BTreeMap::new();

        // Per node: the worst instance decides.
        let mut nodes: BTreeMap<&str, Vec<&InstanceReport>> = BTreeMap::new();
        for i in &report.instances {
            if i.role != Role::Source && !i.finished {
                nodes.entry(i.node.as_str()).or_default().push(i);
            }
        }
        for (node, insts) in nodes {
            let active: Vec<&&InstanceReport> = insts.iter().filter(|i| !i.idle).collect();
            if let Some(limit) = self.rules.watermark_lag_ms {
                let worst = active
                    .iter()
                    .filter_map(|i| i.watermark.map(|w| (now.saturating_sub(w), i)))
                    .max_by_key(|(lag, _)| *lag);
                if let Some((lag, inst)) = worst.filter(|(lag, _)| *lag > limit) {
                    firing.insert(
                        (AlertKind::WatermarkLag, node.to_string()),
                        format!(
                            "watermark of node `{node}` lags the clock by {} (threshold {}), {}",
                            format_ms(lag),
                            format_ms(limit),
                            describe_holder(report, inst)
                        ),
                    );
                }
            }
            if let Some(limit) = self.rules.watermark_stall_ms {
                let worst = active
                    .iter()
                    .filter(|i| i.last_record_ms.is_some_and(|r| r > i.advanced_at_ms))
                    .map(|i| (now - i.advanced_at_ms, i))
                    .max_by_key(|(stall, _)| *stall);
                if let Some((stall, inst)) = worst.filter(|(s, _)| *s > limit) {
                    firing.insert(
                        (AlertKind::WatermarkStall, node.to_string()),
                        format!(
                            "watermark of node `{node}` has not advanced for {} while records \
                             keep arriving ({} records in), {}",
                            format_ms(stall),
                            inst.records_in,
                            describe_holder(report, inst)
                        ),
                    );
                }
            }
        }

        for src in &report.sources {
            let Some(limit) = src.expected_interval_ms else {
                continue;
            };
            for inst in report.instances.iter().filter(|i| i.node == src.source) {
                for p in inst.partitions.iter().filter(|p| !p.ended) {
                    let silent = now - p.last_activity_ms;
                    if silent > limit {
                        firing.insert(
                            (
                                AlertKind::SourceSilent,
                                format!("{}/{}", src.source, p.label),
                            ),
                            format!(
                                "source `{}` partition `{}` has been silent for {} \
                                 (expected_interval {}){}",
                                src.source,
                                p.label,
                                format_ms(silent),
                                format_ms(limit),
                                if p.idle {
                                    "; it is idle and no longer holds the watermark"
                                } else {
                                    ""
                                }
                            ),
                        );
                    }
                }
            }
        }

        let mut shut_now = BTreeMap::new();
        for inst in report.instances.iter().filter(|i| !i.finished) {
            if inst.stat("gate_open") != Some(0) {
                continue;
            }
            let label = inst.label();
            let since = self.gate_shut_since.get(&label).copied().unwrap_or(now);
            shut_now.insert(label, since);
            if let Some(limit) = self.rules.enrichment_gate_ms
                && now - since > limit
            {
                firing.insert(
                    (AlertKind::EnrichmentGate, inst.node.clone()),
                    format!(
                        "enrichment `{}` has waited {} for its reference table's snapshot to \
                         complete ({} events buffered); is the change stream's snapshot running?",
                        inst.node,
                        format_ms(now - since),
                        inst.stat("gate_buffered").unwrap_or(0)
                    ),
                );
            }
        }
        self.gate_shut_since = shut_now;

        if let Some(cp) = &report.checkpoints {
            let age = now - cp.last_completed_ms.unwrap_or(cp.since_ms);
            if cp.consecutive_failures >= CHECKPOINT_FAILURES_ALERT {
                firing.insert(
                    (AlertKind::Checkpoint, report.pipeline.clone()),
                    format!(
                        "the last {} checkpoints failed ({}); the last complete one is {} old",
                        cp.consecutive_failures,
                        cp.last_error.as_deref().unwrap_or("no reason given"),
                        format_ms(age)
                    ),
                );
            } else if let Some(limit) = self.rules.checkpoint_age_ms
                && age > limit
            {
                firing.insert(
                    (AlertKind::Checkpoint, report.pipeline.clone()),
                    format!(
                        "no checkpoint has completed for {} (threshold {}): a crash now would \
                         replay that much; is a barrier stuck behind a slow operator?",
                        format_ms(age),
                        format_ms(limit)
                    ),
                );
            }
        }

        if let Some(limit) = self.rules.partition_unowned_ms {
            for inst in report.instances.iter().filter(|i| i.role == Role::Source) {
                let Some(since) = inst.stat("group_unowned_since_ms") else {
                    continue;
                };
                let waited = now.saturating_sub(since as i64);
                if waited > limit {
                    firing.insert(
                        (AlertKind::PartitionUnowned, inst.node.clone()),
                        format!(
                            "partitions {} of consumer group `{}` have had no owner for {} \
                             (threshold {}); the group has {} members: is an instance of \
                             the pipeline missing or stuck?",
                            inst.info("group_partitions_unowned").unwrap_or("?"),
                            inst.info("group").unwrap_or("?"),
                            format_ms(waited),
                            format_ms(limit),
                            inst.stat("group_members").unwrap_or(0)
                        ),
                    );
                }
            }
        }

        let mut events = Vec::new();
        for (key, message) in &firing {
            if !self.active.contains_key(key) {
                events.push(AlertEvent {
                    kind: key.0,
                    subject: key.1.clone(),
                    firing: true,
                    message: message.clone(),
                });
            }
        }
        for key in self.active.keys() {
            if !firing.contains_key(key) {
                events.push(AlertEvent {
                    kind: key.0,
                    subject: key.1.clone(),
                    firing: false,
                    message: format!("{} resolved for `{}`", key.0.name(), key.1),
                });
            }
        }
        self.active = firing;
        events
    }

    pub fn active(&self) -> impl Iterator<Item = (AlertKind, &str)> {
        self.active.keys().map(|(k, s)| (*k, s.as_str()))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn durations_under_a_second_keep_their_milliseconds() {
        assert_eq!(format_ms(500), "500ms");
        assert_eq!(format_ms(0), "0s");
        assert_eq!(format_ms(61_250), "1m 1s");
    }

    use super::*;

    fn gated(now_ms: i64, open: bool) -> StatusReport {
        StatusReport {
            pipeline: "p".into(),
            run_id: String::new(),
            instance_id: None,
            now_ms,
            instances: vec![InstanceReport {
                node: "cves".into(),
                instance: 0,
                role: Role::Operator,
                watermark: None,
                idle: false,
                advanced_at_ms: 0,
                holder: None,
                records_in: 0,
                last_record_ms: None,
                records_out: Vec::new(),
                partitions: Vec::new(),
                finished: false,
                stats: vec![
                    ("gate_open".into(), u64::from(open)),
                    ("gate_buffered".into(), 42),
                ],
                warnings: Vec::new(),
                info: Vec::new(),
            }],
            sources: Vec::new(),
            checkpoints: None,
        }
    }

    fn group_member(now_ms: i64, unowned_since: Option<u64>) -> StatusReport {
        let mut report = gated(now_ms, true);
        let i = &mut report.instances[0];
        i.node = "obs".into();
        i.role = Role::Source;
        i.stats = vec![("group_members".into(), 2)];
        if let Some(t) = unowned_since {
            i.stats.push(("group_unowned_since_ms".into(), t));
            i.info = vec![
                ("group".into(), "enrich".into()),
                ("group_partitions_unowned".into(), "obs/3".into()),
            ];
        }
        report
    }

    #[test]
    fn a_partition_without_an_owner_past_the_threshold_fires_and_resolves() {
        let mut e = AlertEvaluator::new(AlertRules::default());
        assert!(e.evaluate(&group_member(100_000, Some(50_000))).is_empty());
        let fired = e.evaluate(&group_member(110_001, Some(50_000)));
        assert_eq!(fired.len(), 1);
        assert!(fired[0].firing && fired[0].kind == AlertKind::PartitionUnowned);
        assert!(
            fired[0].message.contains("obs/3") && fired[0].message.contains("`enrich`"),
            "{}",
            fired[0].message
        );
        let resolved = e.evaluate(&group_member(120_000, None));
        assert_eq!(resolved.len(), 1);
        assert!(!resolved[0].firing);
    }

    fn checkpointing(now_ms: i64, last_ms: Option<i64>, failures: u64) -> StatusReport {
        StatusReport {
            pipeline: "p".into(),
            run_id: String::new(),
            instance_id: None,
            now_ms,
            instances: Vec::new(),
            sources: Vec::new(),
            checkpoints: Some(crate::status::CheckpointReport {
                since_ms: 0,
                last_completed_ms: last_ms,
                consecutive_failures: failures,
                last_error: (failures > 0).then(|| "disk full".to_string()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn old_or_failing_checkpoints_are_alerted() {
        let mut e = AlertEvaluator::new(AlertRules {
            checkpoint_age_ms: Some(60_000),
            ..AlertRules::default()
        });
        assert!(e.evaluate(&checkpointing(50_000, None, 0)).is_empty());
        let fired = e.evaluate(&checkpointing(61_000, None, 0));
        assert_eq!(fired.len(), 1);
        assert!(fired[0].firing && fired[0].kind == AlertKind::Checkpoint);
        let resolved = e.evaluate(&checkpointing(62_000, Some(61_500), 0));
        assert!(resolved.len() == 1 && !resolved[0].firing);
        assert!(
            e.evaluate(&checkpointing(63_000, Some(61_500), 2))
                .is_empty()
        );
        let fired = e.evaluate(&checkpointing(64_000, Some(61_500), 3));
        assert_eq!(fired.len(), 1);
        assert!(
            fired[0]
                .message
                .contains("3 checkpoints failed (disk full)"),
            "{}",
            fired[0].message
        );
    }

    #[test]
    fn a_gate_shut_too_long_is_alerted_once_and_resolves_when_it_opens() {
        let mut e = AlertEvaluator::new(AlertRules {
            enrichment_gate_ms: Some(60_000),
            ..AlertRules::default()
        });
        assert!(e.evaluate(&gated(0, false)).is_empty());
        assert!(e.evaluate(&gated(60_000, false)).is_empty());
        let fired = e.evaluate(&gated(60_001, false));
        assert_eq!(fired.len(), 1);
        assert!(fired[0].firing && fired[0].kind == AlertKind::EnrichmentGate);
        assert!(
            fired[0].message.contains("42 events buffered"),
            "{}",
            fired[0].message
        );
        assert!(e.evaluate(&gated(70_000, false)).is_empty(), "fires once");
        let resolved = e.evaluate(&gated(80_000, true));
        assert_eq!(resolved.len(), 1);
        assert!(!resolved[0].firing);
        // Shut again: the clock starts over.
        assert!(e.evaluate(&gated(90_000, false)).is_empty());
    }
}
