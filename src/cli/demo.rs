//! `watershed demo`: what it prints while the shipped CVE pipeline (`examples/demo.yaml`)
//! runs and when it ends. Its counts come from the status document the runtime publishes, so
//! the same numbers are what `/status` shows, except the observations on a KEV CVE, which
//! are counted in the `kev_flags` output once the run has ended; runs nothing itself (the
//! CLI runs the pipeline).
//!
//! What is counted is named for what it is: events (observations) in, events that matched
//! at least one CVE, distinct (observation, CVE) pairs (the first join's rows less its misses,
//! one per CVE with `distinct: [cve_id]`), rows written by all sinks together; and for KEV,
//! observations on a KEV CVE and (observation, KEV CVE) pairs.

use std::fmt::Write;

use crate::status::{Role, StatusReport};

/// Totals the demo reports, from one status snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DemoTotals {
    /// Records read by sources that are not change streams (the events).
    pub events_in: u64,
    /// Change records read by change-stream sources.
    pub changes_in: u64,
    /// Rows the first enrichment stage emitted: one per (event, match), and one per miss.
    pub enriched_out: u64,
    /// Rows written by every sink.
    pub rows_written: u64,
    /// Per enrichment node: (node, lookups, matched, gate open on every instance,
    /// buffered behind the gate, reference rows).
    pub joins: Vec<JoinTotals>,
    /// Times a source partition went idle and stopped holding the watermark.
    pub idle_releases: u64,
    pub late: u64,
    pub dead_letters: u64,
    /// Rows into the sink named `kev_flags`, if there is one: (observation, KEV CVE) pairs.
    pub kev_pairs: Option<u64>,
    /// Distinct observations in the `kev_flags` output (`kev_observations`), once known.
    pub kev_events: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinTotals {
    pub node: String,
    pub lookups: u64,
    pub matched: u64,
    pub misses: u64,
    pub gate_open: bool,
    pub gate_buffered: u64,
    pub reference_rows: u64,
    /// Bytes of one instance's copy of the table (the largest).
    pub reference_bytes: u64,
}

impl DemoTotals {
    pub fn from_report(r: &StatusReport) -> DemoTotals {
        let mut t = DemoTotals::default();
        let mut nodes: Vec<&str> = Vec::new();
        for i in &r.instances {
            if !nodes.contains(&i.node.as_str()) {
                nodes.push(&i.node);
            }
            let port = |name: &str| {
                i.records_out
                    .iter()
                    .filter(|(p, _)| p == name)
                    .map(|(_, n)| *n)
                    .sum::<u64>()
            };
            t.late += port("late");
            t.dead_letters += port("dead_letter");
            if i.role == Role::Source {
                // A change source has table ports besides main and dead_letter.
                if i.records_out.len() > 2 {
                    t.changes_in += i.records_in;
                } else {
                    t.events_in += i.records_in;
                }
                t.idle_releases += i.stat("idle_transitions").unwrap_or(0);
            }
            if i.role == Role::Sink {
                t.rows_written += i.records_in;
                if i.node == "kev_flags" {
                    *t.kev_pairs.get_or_insert(0) += i.records_in;
                }
            }
        }
        for node in nodes {
            let instances: Vec<_> = r.instances.iter().filter(|i| i.node == node).collect();
            if instances.iter().all(|i| i.stat("lookups").is_none()) {
                continue;
            }
            let sum = |name: &str| instances.iter().filter_map(|i| i.stat(name)).sum::<u64>();
            t.joins.push(JoinTotals {
                node: node.to_string(),
                lookups: sum("lookups"),
                matched: sum("matched"),
                misses: sum("misses"),
                gate_open: instances.iter().all(|i| i.stat("gate_open") != Some(0)),
                gate_buffered: sum("gate_buffered"),
                // Every instance holds the whole (broadcast) table.
                reference_rows: instances
                    .iter()
                    .filter_map(|i| i.stat("reference_rows"))
                    .max()
                    .unwrap_or(0),
                reference_bytes: instances
                    .iter()
                    .filter_map(|i| i.stat("reference_bytes"))
                    .max()
                    .unwrap_or(0),
            });
        }
        // The first enrichment in plan order: events times their matches.
        if let Some(last) = t.joins.first() {
            t.enriched_out = r
                .instances
                .iter()
                .filter(|i| i.node == last.node)
                .flat_map(|i| i.records_out.iter())
                .filter(|(p, _)| p == "main")
                .map(|(_, n)| *n)
                .sum();
        }
        t
    }

    /// Events the first join matched with at least one reference row.
    pub fn events_matched(&self) -> Option<u64> {
        self.joins.first().map(|j| j.matched)
    }

    /// The first join's rows that are matches (not misses): with `distinct: [cve_id]`, the
    /// distinct (observation, CVE) pairs.
    pub fn pairs(&self) -> Option<u64> {
        self.joins
            .first()
            .map(|j| self.enriched_out.saturating_sub(j.misses))
    }

    /// The first join's share of events that found at least one reference row.
    pub fn hit_rate(&self) -> Option<f64> {
        self.joins
            .first()
            .filter(|j| j.lookups > 0)
            .map(|j| j.matched as f64 / j.lookups as f64)
    }
}

/// One progress line.
pub fn progress_line(t: &DemoTotals, elapsed_ms: i64) -> String {
    let secs = elapsed_ms.max(1) as f64 / 1000.0;
    let mut line = format!(
        "{secs:>5.1}s  events {} ({:.0}/s)  changes {}  enriched rows {}",
        t.events_in,
        t.events_in as f64 / secs,
        t.changes_in,
        t.enriched_out
    );
    let shut: Vec<&JoinTotals> = t.joins.iter().filter(|j| !j.gate_open).collect();
    if shut.is_empty() {
        line.push_str("  gates open");
    } else {
        let buffered: u64 = shut.iter().map(|j| j.gate_buffered).sum();
        let _ = write!(line, "  gates shut: {} ({buffered} waiting)", shut.len());
    }
    line
}

/// The closing summary.
pub fn summary(t: &DemoTotals, elapsed_ms: i64, outputs: &[(String, String)]) -> String {
    let secs = elapsed_ms.max(1) as f64 / 1000.0;
    let mut s = String::new();
    let _ = writeln!(s, "demo finished in {secs:.1}s");
    let _ = writeln!(
        s,
        "  events in        {} ({:.0} events/s); change records in {}",
        t.events_in,
        t.events_in as f64 / secs,
        t.changes_in
    );
    if let (Some(matched), Some(rate)) = (t.events_matched(), t.hit_rate()) {
        let _ = writeln!(
            s,
            "  events with CVE  {matched} ({:.1}% of events matched at least one CVE)",
            rate * 100.0
        );
    }
    if let Some(pairs) = t.pairs() {
        let _ = writeln!(
            s,
            "  CVE pairs        {pairs} distinct (observation, CVE) pairs"
        );
    }
    let _ = writeln!(
        s,
        "  rows written     {} (all outputs together)",
        t.rows_written
    );
    for j in &t.joins {
        let _ = writeln!(
            s,
            "    {:<14} {} lookups, {} matched, {} reference rows ({} bytes each)",
            j.node,
            j.lookups,
            j.matched,
            j.reference_rows,
            j.reference_bytes / j.reference_rows.max(1)
        );
    }
    if let Some(pairs) = t.kev_pairs {
        let events = t
            .kev_events
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        let _ = writeln!(
            s,
            "  KEV              {events} events on a CVE in CISA's Known Exploited \
             Vulnerabilities; {pairs} (observation, KEV CVE) pairs"
        );
    }
    let _ = writeln!(
        s,
        "  idleness         {} times a quiet partition stopped holding the watermark",
        t.idle_releases
    );
    let _ = writeln!(s, "  late records     {} (see the `late` output)", t.late);
    let _ = writeln!(s, "  dead letters     {}", t.dead_letters);
    for (name, target) in outputs {
        let _ = writeln!(s, "  output {name:<24} {target}");
    }
    s
}

/// The distinct `observation_id`s in a JSON-lines output (`None`: unreadable, or a line
/// without one).
pub fn kev_observations(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut ids = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).ok()?;
        ids.insert(row.get("observation_id")?.as_i64()?);
    }
    Some(ids.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::InstanceReport;

    fn instance(
        node: &str,
        role: Role,
        ports: &[(&str, u64)],
        stats: &[(&str, u64)],
    ) -> InstanceReport {
        InstanceReport {
            node: node.into(),
            instance: 0,
            role,
            watermark: None,
            idle: false,
            advanced_at_ms: 0,
            holder: None,
            records_in: 100,
            last_record_ms: None,
            records_out: ports.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            partitions: Vec::new(),
            finished: true,
            stats: stats.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            warnings: Vec::new(),
            info: Vec::new(),
        }
    }

    #[test]
    fn kev_observations_count_distinct_observations_not_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kev.jsonl");
        std::fs::write(
            &path,
            "{\"observation_id\":1,\"cve_id\":\"A\"}\n{\"observation_id\":1,\"cve_id\":\"B\"}\n{\"observation_id\":7,\"cve_id\":\"A\"}\n",
        )
        .unwrap();
        assert_eq!(kev_observations(&path), Some(2));
        assert_eq!(kev_observations(&dir.path().join("none.jsonl")), None);
    }

    #[test]
    fn totals_come_from_the_status_document() {
        let report = StatusReport {
            pipeline: "demo".into(),
            run_id: String::new(),
            instance_id: None,
            now_ms: 0,
            instances: vec![
                instance(
                    "vulndb",
                    Role::Source,
                    &[("main", 0), ("dead_letter", 1), ("kev", 9)],
                    &[("idle_transitions", 2)],
                ),
                instance(
                    "obs",
                    Role::Source,
                    &[("main", 100), ("dead_letter", 0)],
                    &[],
                ),
                instance(
                    "cves",
                    Role::Operator,
                    &[("main", 240)],
                    &[
                        ("lookups", 100),
                        ("matched", 75),
                        ("misses", 25),
                        ("gate_open", 1),
                        ("reference_rows", 9),
                    ],
                ),
                instance("win", Role::Operator, &[("main", 3), ("late", 4)], &[]),
                instance("kev_flags", Role::Sink, &[], &[]),
            ],
            sources: Vec::new(),
            checkpoints: None,
        };
        let t = DemoTotals::from_report(&report);
        assert_eq!(t.events_in, 100);
        assert_eq!(t.changes_in, 100);
        assert_eq!(t.enriched_out, 240);
        assert_eq!(t.hit_rate(), Some(0.75));
        assert_eq!((t.late, t.dead_letters, t.idle_releases), (4, 1, 2));
        assert_eq!(t.kev_pairs, Some(100));
        assert_eq!(t.rows_written, 100);
        assert_eq!((t.events_matched(), t.pairs()), (Some(75), Some(215)));
        let mut t = t;
        t.kev_events = Some(60);
        let text = summary(&t, 2_000, &[("kev_flags".into(), "out/kev.jsonl".into())]);
        assert!(text.contains("events with CVE  75 (75.0%"), "{text}");
        assert!(
            text.contains("215 distinct (observation, CVE) pairs"),
            "{text}"
        );
        assert!(
            text.contains("60 events on a CVE in CISA's Known Exploited Vulnerabilities; 100 (observation, KEV CVE) pairs"),
            "{text}"
        );
        assert!(text.contains("out/kev.jsonl"));
        assert!(progress_line(&t, 1_000).contains("gates open"));
    }
}
