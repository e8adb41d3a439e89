//! `watershed reconcile`: what each keyed sink holds, against what its source says it should
//! hold — per table and per key range, the expected rows, the rows found, and those missing,
//! extra, or at another version (stale); rows a ClickHouse table has not merged yet are
//! shown too (readers without `FINAL` see them), but are not drift.
//!
//! Owns the comparison, the report and its metrics. What a sink holds comes from the sink
//! (`SinkHoldings`, built with it: a ClickHouse table under `FINAL`, a Postgres table's live
//! rows); what it should hold comes from the source of its input (`expected`): a change
//! stream's table read to its end and applied, key by key, with the versions the sinks write.
//! A truncate empties the expected table while the sinks keep their rows (they cannot write
//! one), so after a truncate of the source every row left in the sink is reported extra.

pub mod expected;
pub mod rerun;

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The keys a table holds: key (as text, columns joined by `KEY_SEPARATOR`) → version, if
/// known.
pub type KeyVersions = BTreeMap<String, Option<u64>>;

/// Joins the text of a composite key's columns.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// What a keyed sink holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Live keys (not deleted) and their versions.
    pub live: KeyVersions,
    /// Rows beyond one per key that the table has not merged yet (ClickHouse before a merge).
    pub unmerged: u64,
}

/// How to read what a keyed sink holds (built with the sink from its settings).
pub trait SinkHoldings: Send + Sync {
    /// The sink's target, for the report (`clickhouse http://… table default.t`).
    fn target(&self) -> String;

    /// The sink's key columns, in order.
    fn key(&self) -> Vec<String>;

    /// Reads the sink's table.
    fn read(&self) -> Result<Holdings, String>;
}

/// Expected against found, for one key range (or the whole table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub expected: u64,
    pub found: u64,
    pub missing: u64,
    pub extra: u64,
    pub stale: u64,
}

impl Counts {
    pub fn drift(&self) -> bool {
        self.missing + self.extra + self.stale > 0
    }
}

/// One range of keys: its first and last key (as text) and its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub first: String,
    pub last: String,
    pub counts: Counts,
}

/// A sink's reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkReport {
    pub sink: String,
    pub target: String,
    pub total: Counts,
    pub unmerged: u64,
    /// The key ranges (in key order), each about the same number of keys.
    pub ranges: Vec<Range>,
    /// A few keys of each kind of drift, for a person to look at.
    pub examples: Vec<String>,
}

/// Compares `expected` with `found`, over `ranges` key ranges.
pub fn compare(
    sink: &str,
    target: &str,
    expected: &KeyVersions,
    found: &Holdings,
    ranges: usize,
) -> SinkReport {
    let mut keys: Vec<&String> = expected.keys().chain(found.live.keys()).collect();
    keys.sort_by(|a, b| key_order(a, b));
    keys.dedup();
    let per_range = keys.len().div_ceil(ranges.max(1)).max(1);
    let mut total = Counts::default();
    let mut out = Vec::new();
    let mut examples = Vec::new();
    for chunk in keys.chunks(per_range) {
        let mut c = Counts::default();
        for &k in chunk {
            let (want, got) = (expected.get(k), found.live.get(k));
            c.expected += u64::from(want.is_some());
            c.found += u64::from(got.is_some());
            let kind = match (want, got) {
                (Some(_), None) => Some("missing"),
                (None, Some(_)) => Some("extra"),
                (Some(Some(w)), Some(Some(g))) if w != g => Some("stale"),
                _ => None,
            };
            match kind {
                Some("missing") => c.missing += 1,
                Some("extra") => c.extra += 1,
                Some(_) => c.stale += 1,
                None => {}
            }
            if let Some(kind) = kind
                && examples.len() < 10
            {
                examples.push(format!("{kind}: {}", show_key(k)));
            }
        }
        total.expected += c.expected;
        total.found += c.found;
        total.missing += c.missing;
        total.extra += c.extra;
        total.stale += c.stale;
        out.push(Range {
            first: chunk.first().map(|k| show_key(k)).unwrap_or_default(),
            last: chunk.last().map(|k| show_key(k)).unwrap_or_default(),
            counts: c,
        });
    }
    SinkReport {
        sink: sink.to_string(),
        target: target.to_string(),
        total,
        unmerged: found.unmerged,
        ranges: out,
        examples,
    }
}

/// Keys in the order of their values: column by column, integers (as numbers) before other
/// text — a total order whatever mix of keys a column holds.
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    for (x, y) in a.split(KEY_SEPARATOR).zip(b.split(KEY_SEPARATOR)) {
        let o = match (x.parse::<i64>(), y.parse::<i64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            _ => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    a.cmp(b)
}

fn show_key(k: &str) -> String {
    k.replace(KEY_SEPARATOR, "|")
}

/// The report as a table: per sink its totals, then each key range with drift (or every
/// range with `all_ranges`).
pub fn render(reports: &[SinkReport], all_ranges: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<28} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9}",
        "sink", "keys", "expected", "found", "missing", "extra", "stale", "unmerged"
    );
    for r in reports {
        let c = &r.total;
        let _ = writeln!(
            out,
            "{:<24} {:<28} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9}",
            r.sink, "all", c.expected, c.found, c.missing, c.extra, c.stale, r.unmerged
        );
        for range in r.ranges.iter().filter(|g| all_ranges || g.counts.drift()) {
            let c = &range.counts;
            let keys = format!("{} .. {}", range.first, range.last);
            let _ = writeln!(
                out,
                "{:<24} {:<28} {:>10} {:>10} {:>8} {:>8} {:>8}",
                "", keys, c.expected, c.found, c.missing, c.extra, c.stale
            );
        }
        for e in &r.examples {
            let _ = writeln!(out, "{:<24} {e}", "");
        }
        let _ = writeln!(out, "{:<24} ({})", "", r.target);
    }
    out
}

/// The report as Prometheus metrics (a text file for a node exporter's textfile collector,
/// written by a daily job).
pub fn metrics_text(reports: &[SinkReport], at_unix_seconds: u64) -> String {
    let mut out = String::from(
        "# HELP watershed_reconcile_rows Rows of a keyed sink, by kind: expected (from its source), found, missing, extra, stale, unmerged.\n# TYPE watershed_reconcile_rows gauge\n",
    );
    for r in reports {
        let c = &r.total;
        for (kind, n) in [
            ("expected", c.expected),
            ("found", c.found),
            ("missing", c.missing),
            ("extra", c.extra),
            ("stale", c.stale),
            ("unmerged", r.unmerged),
        ] {
            let _ = writeln!(
                out,
                "watershed_reconcile_rows{{sink=\"{}\",kind=\"{kind}\"}} {n}",
                r.sink
            );
        }
    }
    out.push_str("# HELP watershed_reconcile_drift 1 if the sink holds other keys or versions than its source says.\n# TYPE watershed_reconcile_drift gauge\n");
    for r in reports {
        let _ = writeln!(
            out,
            "watershed_reconcile_drift{{sink=\"{}\"}} {}",
            r.sink,
            u8::from(r.total.drift())
        );
    }
    let _ = writeln!(
        out,
        "# HELP watershed_reconcile_timestamp_seconds When the reconciliation ran.\n# TYPE watershed_reconcile_timestamp_seconds gauge\nwatershed_reconcile_timestamp_seconds {at_unix_seconds}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, Option<u64>)]) -> KeyVersions {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn drift_is_counted_per_kind_and_range() {
        let expected = kv(&[
            ("1", Some(10)),
            ("2", Some(20)),
            ("3", Some(30)),
            ("4", None),
        ]);
        let found = Holdings {
            live: kv(&[
                ("1", Some(10)),
                ("2", Some(5)),
                ("4", Some(1)),
                ("9", Some(1)),
            ]),
            unmerged: 2,
        };
        let r = compare("s", "t", &expected, &found, 3);
        assert_eq!(
            r.total,
            Counts {
                expected: 4,
                found: 4,
                missing: 1,
                extra: 1,
                stale: 1,
            }
        );
        assert_eq!(r.ranges.len(), 3);
        assert_eq!(
            (r.ranges[0].first.as_str(), r.ranges[0].last.as_str()),
            ("1", "2")
        );
        assert_eq!(r.ranges[0].counts.stale, 1);
        assert_eq!(r.ranges[1].counts.missing, 1);
        assert_eq!(r.ranges[2].counts.extra, 1);
        assert_eq!(r.examples, ["stale: 2", "missing: 3", "extra: 9"]);
        let mixed = kv(&[
            ("2", None),
            ("10", None),
            ("1a", None),
            ("b", None),
            ("-3", None),
        ]);
        let r3 = compare("s", "t", &mixed, &Holdings::default(), 5);
        let order: Vec<&str> = r3.ranges.iter().map(|g| g.first.as_str()).collect();
        assert_eq!(order, ["-3", "2", "10", "1a", "b"]);
        let wide = kv(&[("10", Some(1)), ("9", Some(1)), ("100", Some(1))]);
        let r2 = compare("s", "t", &wide, &Holdings::default(), 1);
        assert_eq!(
            (r2.ranges[0].first.as_str(), r2.ranges[0].last.as_str()),
            ("9", "100"),
            "integer keys in numeric order"
        );
        let text = render(std::slice::from_ref(&r), false);
        assert!(
            text.contains("1 .. 2") && text.contains("3 .. 4") && text.contains("9 .. 9"),
            "{text}"
        );
        let metrics = metrics_text(&[r], 7);
        assert!(metrics.contains("watershed_reconcile_rows{sink=\"s\",kind=\"missing\"} 1"));
        assert!(metrics.contains("watershed_reconcile_drift{sink=\"s\"} 1"));
    }

    #[test]
    fn equal_holdings_are_no_drift() {
        let expected = kv(&[("a", Some(1))]);
        let found = Holdings {
            live: kv(&[("a", Some(1))]),
            unmerged: 3,
        };
        let r = compare("s", "t", &expected, &found, 8);
        assert!(!r.total.drift());
        assert!(
            !render(&[r], false).contains(".."),
            "no range shown without drift"
        );
    }
}
