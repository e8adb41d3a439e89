//! `watershed explain`: says, for every node of a running pipeline, where its watermark is,
//! whether it is idle, how long since it last advanced, and which input — down to the source
//! partition — holds it back and why.

use std::fmt::Write;

use chrono::{TimeZone, Utc};

use crate::alerts::format_ms;
use crate::status::{InstanceReport, Role, StatusReport};
use crate::types::EventTime;

pub fn format_time(t: EventTime) -> String {
    if t == EventTime::MAX {
        return "end of input".into();
    }
    match Utc.timestamp_millis_opt(t).single() {
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => t.to_string(),
    }
}

/// A watermark this far behind the clock is not live data (or the input has stalled).
const HISTORICAL_LAG_MS: i64 = 24 * 3600 * 1000;

fn watermark_line(r: &StatusReport, i: &InstanceReport) -> String {
    let wm = match (i.watermark, i.idle) {
        (_, true) => "idle (does not hold back consumers)".to_string(),
        (None, false) => "none yet".to_string(),
        (Some(w), false) if w == EventTime::MAX => "end of input".to_string(),
        (Some(w), false) => {
            let lag = r.now_ms.saturating_sub(w);
            format!(
                "{} (lag {}{})",
                format_time(w),
                format_ms(lag),
                if lag >= HISTORICAL_LAG_MS {
                    " behind the clock: historical or replayed data, or a stalled input"
                } else {
                    ""
                }
            )
        }
    };
    let mut s = format!("{}  watermark {wm}", i.label());
    if i.finished {
        s.push_str(", finished");
    } else if !i.idle && i.watermark != Some(EventTime::MAX) {
        let _ = write!(
            s,
            ", last advanced {} ago",
            format_ms(r.now_ms - i.advanced_at_ms)
        );
    }
    s
}

/// Renders the status document as text for people.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline `{}`{} at {}",
        r.pipeline,
        match (r.run_id.is_empty(), &r.instance_id) {
            (true, None) => String::new(),
            (true, Some(id)) => format!(" (instance {id})"),
            (false, None) => format!(" (run {})", r.run_id),
            (false, Some(id)) => format!(" (run {}, instance {id})", r.run_id),
        },
        format_time(r.now_ms)
    );
    for (role, title) in [
        (Role::Source, "sources"),
        (Role::Operator, "operators"),
        (Role::Sink, "sinks"),
    ] {
        let insts: Vec<&InstanceReport> = r.instances.iter().filter(|i| i.role == role).collect();
        if insts.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}:");
        for i in insts {
            let _ = writeln!(out, "  {}", watermark_line(r, i));
            let _ = writeln!(
                out,
                "    records in {}, out {}",
                i.records_in,
                i.records_out
                    .iter()
                    .map(|(p, n)| format!("{p}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if let Some(group) = i.info("group") {
                group_lines(&mut out, i, group);
            }
            for p in &i.partitions {
                let _ = writeln!(
                    out,
                    "    partition {}: watermark {}, last record {} ago{}{}",
                    p.label,
                    p.watermark.map_or("none yet".into(), format_time),
                    format_ms(r.now_ms - p.last_activity_ms),
                    if p.idle { ", IDLE" } else { "" },
                    if p.ended { ", ended" } else { "" },
                );
            }
            if role != Role::Source && !i.idle && !i.finished {
                let chain = r.holder_chain(i);
                if !chain.is_empty() {
                    let mut line = format!("    held by {}", chain.join(" -> "));
                    if let Some((src, p)) = r.root_holder(i) {
                        let idle_timeout = r
                            .sources
                            .iter()
                            .find(|s| s.source == src.node)
                            .and_then(|s| s.idle_timeout_ms);
                        let _ = write!(
                            line,
                            " (source `{}` partition `{}`: last record {} ago, {})",
                            src.node,
                            p.label,
                            format_ms(r.now_ms - p.last_activity_ms),
                            match idle_timeout {
                                Some(t) => format!("becomes idle after {}", format_ms(t)),
                                None =>
                                    "no idle_timeout, so it holds the watermark while quiet".into(),
                            }
                        );
                    }
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
    out
}

/// A consumer group as this member sees it: its identity, the members and what they own, the
/// partitions nobody owns.
fn group_lines(out: &mut String, i: &InstanceReport, group: &str) {
    let _ = writeln!(
        out,
        "    consumer group `{group}`: member {}, generation {}, {} members{}; {} rebalances, {} partitions handed over",
        i.info("group_member_id").unwrap_or("not joined yet"),
        i.stat("group_generation")
            .map_or("unknown".into(), |g| g.to_string()),
        i.stat("group_members")
            .map_or("unknown".into(), |n| n.to_string()),
        i.info("group_state")
            .map_or(String::new(), |s| format!(" ({s})")),
        i.stat("group_rebalances").unwrap_or(0),
        i.stat("group_partitions_handed_over").unwrap_or(0),
    );
    if let Some(members) = i.info("group_members") {
        for m in members.split("; ").filter(|m| !m.is_empty()) {
            let _ = writeln!(out, "      member {m}");
        }
    }
    if let Some(a) = i.info("group_assignments") {
        let _ = writeln!(out, "      assignments: {a}");
    }
    if let Some(unowned) = i.info("group_partitions_unowned") {
        let _ = writeln!(out, "      NO OWNER: {unowned}");
    }
    if let Some(e) = i.info("group_describe_error") {
        let _ = writeln!(out, "      the group could not be described: {e}");
    }
}
