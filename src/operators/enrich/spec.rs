//! What the enrichment operator is told to do (`EnrichSpec` and its parts: `JoinMode`,
//! `MissPolicy`, `EnrichStrategy`, `VersionRangeSpec`, `Condition`) and the error that
//! names a setting of it (`crate::error::SpecError`). The configuration builds these; the operator
//! resolves them against its inputs' schemas (`layout`).

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::state::StateBackend;
use crate::types::Value;

/// Which version of the reference rows an event is joined with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinMode {
    /// The latest rows, at once.
    Lookup,
    /// The rows valid at the event's time, once the watermark has passed it; history older
    /// than `retention_ms` behind the watermark is dropped.
    AsOf { retention_ms: Option<i64> },
}

/// What happens to an event without a matching reference row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MissPolicy {
    /// Emit it with null reference columns and `matched = false`.
    Emit,
    /// Send it to the `miss` port, unchanged.
    Port,
    /// Count it and emit nothing (an inner join, for fan-out tables of matches only).
    Drop,
    /// Wait for a row with its join key until the watermark passes its time plus
    /// `timeout_ms`, then emit it as a miss.
    Hold { timeout_ms: i64 },
}

/// When enrichment starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrichStrategy {
    /// At once, against whatever the table holds.
    Gradual,
    /// After the table's snapshot is complete; at most `max_buffered` events wait.
    Gated { max_buffered: usize },
}

/// The NVD version rule: which columns hold the observed version and the row's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRangeSpec {
    /// Event column with the observed version.
    pub version: String,
    /// Reference columns: the CPE version field and the four bounds (`None`: not present).
    pub exact: Option<String>,
    pub start_including: Option<String>,
    pub start_excluding: Option<String>,
    pub end_including: Option<String>,
    pub end_excluding: Option<String>,
    /// Reference column: the CPE update field, which narrows an exact version.
    pub update: Option<String>,
}

impl VersionRangeSpec {
    /// The columns NVD's `cpe_match` data uses, for an event column `version`.
    pub fn nvd(version: &str) -> VersionRangeSpec {
        VersionRangeSpec {
            version: version.to_string(),
            exact: Some("version".into()),
            start_including: Some("version_start_including".into()),
            start_excluding: Some("version_start_excluding".into()),
            end_including: Some("version_end_including".into()),
            end_excluding: Some("version_end_excluding".into()),
            update: Some("update".into()),
        }
    }
}

/// A comparison of the residual predicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// From its symbol: `= != < <= > >=`.
    pub fn parse(symbol: &str) -> Option<CmpOp> {
        Some(match symbol {
            "=" | "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            _ => return None,
        })
    }

    /// Whether `a op b` holds; a comparison with null never holds (as in SQL).
    pub(super) fn holds(self, a: &Value, b: &Value) -> bool {
        if a.is_null() || b.is_null() {
            return false;
        }
        let o = a.total_cmp(b);
        match self {
            CmpOp::Eq => o.is_eq(),
            CmpOp::Ne => o.is_ne(),
            CmpOp::Lt => o.is_lt(),
            CmpOp::Le => o.is_le(),
            CmpOp::Gt => o.is_gt(),
            CmpOp::Ge => o.is_ge(),
        }
    }
}

/// One condition of the residual predicate: `event column OP table column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub event: String,
    pub op: CmpOp,
    pub table: String,
}

/// What to enrich events with, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct EnrichSpec {
    /// The reference table's name: names `<table>_matched` and the metrics.
    pub table: String,
    /// The reference table's primary key columns.
    pub primary_key: Vec<String>,
    /// Join columns: (event column, reference column).
    pub key: Vec<(String, String)>,
    /// Reference columns added to the output; `None`: all not already in the event.
    pub columns: Option<Vec<String>>,
    /// Table columns of which an event keeps one match per distinct value (the first in
    /// primary-key order); empty: every match.
    pub distinct: Vec<String>,
    pub version_range: Option<VersionRangeSpec>,
    /// More conditions every match must meet, besides the join key.
    pub conditions: Vec<Condition>,
    pub mode: JoinMode,
    pub miss: MissPolicy,
    pub strategy: EnrichStrategy,
    /// Where the materialized table is kept (the pipeline's `state`).
    pub state: StateBackend,
}

pub(super) fn spec_err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::new(field, message)
}
