//! The `enrich:` block of an operator: the events (first input) joined with a change
//! stream's table port (second input, broadcast to every instance) — join key, version rule,
//! residual conditions, columns, distinct matches, mode, miss policy and gating.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Location;

use crate::config::component::{BuiltOperator, OperatorConfig, OperatorContext};
use crate::config::issues::Issues;
use crate::config::yaml::S;
use crate::dataflow::Operator;
use crate::operators::enrich::{
    CmpOp, Condition, EnrichOperator, EnrichSpec, EnrichStrategy, JoinMode, MissPolicy,
    VersionRangeSpec,
};
use crate::runtime::plan::OperatorFactory;
use crate::state::StateBackend;

/// An enrichment join: events (first input) with a change stream's table port (second input).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Event column -> table column.
    pub key: S<IndexMap<String, S<String>>>,
    pub columns: Option<Vec<S<String>>>,
    /// Table columns: an event keeps one match per distinct value of them (the first in
    /// primary-key order), e.g. `[cve_id]`.
    pub distinct: Option<S<Vec<S<String>>>>,
    pub version_range: Option<S<VersionRangeYaml>>,
    /// Residual conditions, each `event_column OP table_column` with OP one of
    /// `= != < <= > >=`.
    #[serde(default, rename = "where")]
    pub conditions: Vec<S<String>>,
    /// `lookup` (latest rows) or `as_of` (rows valid at the event's time).
    pub mode: Option<S<String>>,
    /// `as_of` history kept behind the watermark.
    pub retention: Option<S<String>>,
    /// `emit`, `port`, `drop` or `hold`.
    pub miss: Option<S<String>>,
    pub hold_timeout: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub max_buffered: Option<S<usize>>,
}

/// The NVD version rule; table columns default to NVD's `cpe_match` names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRangeYaml {
    /// Event column with the observed version.
    pub version: S<String>,
    pub exact: Option<S<String>>,
    pub start_including: Option<S<String>>,
    pub start_excluding: Option<S<String>>,
    pub end_including: Option<S<String>>,
    pub end_excluding: Option<S<String>>,
    /// The CPE update field (default `update` where the table has it).
    pub update: Option<S<String>>,
}

impl OperatorConfig for EnrichConfig {
    fn build(&self, cx: &mut OperatorContext<'_>) -> Option<BuiltOperator> {
        if cx.inputs.len() != 2 {
            let (at, field) = (cx.location, format!("operators.{}.inputs", cx.name));
            cx.issues.at(
                &at,
                field,
                "an enrich operator has two inputs: the events, then a change stream's table \
                 port (`source.table`)",
            );
            return None;
        }
        let events = cx.inputs[0].port.schema.clone();
        let reference = cx.inputs[1].port.schema.clone();
        let table = cx.inputs[1].port.name.clone();
        let primary_key = cx.inputs[1].table_key.clone().unwrap_or_default();
        self.join(cx, events, reference, table, primary_key)
    }
}

impl EnrichConfig {
    fn join(
        &self,
        cx: &mut OperatorContext<'_>,
        events: crate::types::SchemaRef,
        reference: crate::types::SchemaRef,
        table: String,
        primary_key: Vec<String>,
    ) -> Option<BuiltOperator> {
        let y = self;
        let f = cx.field.clone();
        let issues = &mut *cx.issues;
        let name = cx.name;
        let mode = match y.mode.as_ref().map(|m| m.value.as_str()) {
            None | Some("lookup") => {
                if let Some(r) = &y.retention {
                    issues.at(
                        &r.referenced,
                        format!("{f}.retention"),
                        "`retention` applies to `mode: as_of`",
                    );
                }
                JoinMode::Lookup
            }
            Some("as_of") => JoinMode::AsOf {
                retention_ms: y
                    .retention
                    .as_ref()
                    .and_then(|r| issues.duration(r, &format!("{f}.retention")))
                    .map(|d| d.as_millis() as i64),
            },
            Some(other) => {
                let m = y.mode.as_ref().expect("some");
                issues.at(
                    &m.referenced,
                    format!("{f}.mode"),
                    format!("unknown mode `{other}`; expected `lookup` or `as_of`"),
                );
                return None;
            }
        };
        let miss = match y.miss.as_ref().map(|m| m.value.as_str()) {
            None | Some("emit") => MissPolicy::Emit,
            Some("port") => MissPolicy::Port,
            Some("drop") => MissPolicy::Drop,
            Some("hold") => match &y.hold_timeout {
                Some(t) => MissPolicy::Hold {
                    timeout_ms: issues
                        .duration(t, &format!("{f}.hold_timeout"))?
                        .as_millis() as i64,
                },
                None => {
                    issues.at(
                        &cx.location,
                        format!("{f}.hold_timeout"),
                        "`miss: hold` needs a `hold_timeout` (event time), e.g. `30s`",
                    );
                    return None;
                }
            },
            Some(other) => {
                let m = y.miss.as_ref().expect("some");
                issues.at(
                    &m.referenced,
                    format!("{f}.miss"),
                    format!(
                        "unknown miss policy `{other}`; expected `emit`, `port`, `drop` or `hold`"
                    ),
                );
                return None;
            }
        };
        if y.hold_timeout.is_some() && !matches!(miss, MissPolicy::Hold { .. }) {
            issues.at(
                &cx.location,
                format!("{f}.hold_timeout"),
                "`hold_timeout` applies to `miss: hold`",
            );
        }
        let strategy = strategy_of(
            issues,
            &f,
            y.strategy.as_ref(),
            y.max_buffered.as_ref(),
            cx.enrichment.strategy,
        );
        let version_range = y.version_range.as_ref().map(|v| {
            let v = &v.value;
            let nvd = VersionRangeSpec::nvd(&v.version.value);
            // NVD's column names are defaults only where the table has them.
            let table_has = |c: &String| reference.index_of(c).is_some();
            let pick = |o: &Option<S<String>>, d: Option<String>| {
                o.as_ref().map(|x| x.value.clone()).or(d.filter(table_has))
            };
            VersionRangeSpec {
                version: v.version.value.clone(),
                exact: pick(&v.exact, nvd.exact),
                start_including: pick(&v.start_including, nvd.start_including),
                start_excluding: pick(&v.start_excluding, nvd.start_excluding),
                end_including: pick(&v.end_including, nvd.end_including),
                end_excluding: pick(&v.end_excluding, nvd.end_excluding),
                update: pick(&v.update, nvd.update),
            }
        });
        let mut conditions = Vec::new();
        for (i, c) in y.conditions.iter().enumerate() {
            match parse_condition(&c.value) {
                Some(cond) => conditions.push(cond),
                None => issues.at(
                    &c.referenced,
                    format!("{f}.where[{i}]"),
                    format!(
                        "`{}`: write `event_column OP table_column` with OP one of = != < <= > >=",
                        c.value
                    ),
                ),
            }
        }
        if let Some(d) = &y.distinct
            && d.value.is_empty()
        {
            issues.at(
                &d.referenced,
                format!("{f}.distinct"),
                "name at least one table column, e.g. `distinct: [cve_id]`, or leave it out",
            );
        }
        let spec = EnrichSpec {
            table,
            primary_key,
            key: y
                .key
                .value
                .iter()
                .map(|(ev, t)| (ev.clone(), t.value.clone()))
                .collect(),
            columns: y
                .columns
                .as_ref()
                .map(|c| c.iter().map(|x| x.value.clone()).collect()),
            distinct: y
                .distinct
                .as_ref()
                .map(|d| d.value.iter().map(|x| x.value.clone()).collect())
                .unwrap_or_default(),
            version_range,
            conditions,
            mode,
            miss,
            strategy,
            state: cx.enrichment.state.clone(),
        };
        // The probe checks the spec only: its table stays in memory (no working copy on disk).
        let probe_spec = EnrichSpec {
            state: StateBackend::Memory,
            ..spec.clone()
        };
        let probe = match EnrichOperator::new(name, probe_spec, events.clone(), &reference) {
            Ok(op) => op,
            Err(err) => {
                let at = locate_enrich_field(y, &err.field).unwrap_or(cx.location);
                issues.at(&at, format!("{f}.{}", err.field), err.message);
                return None;
            }
        };
        let reads: Vec<String> = probe
            .event_columns_read()
            .into_iter()
            .map(|c| events.field(c).name.to_string())
            .collect();
        let node = name.to_string();
        let factory: OperatorFactory = Arc::new(move |_| {
            let op = EnrichOperator::new(&node, spec.clone(), events.clone(), &reference)
                .map_err(|e| crate::error::RunError::build(node.clone(), e.message))?;
            Ok(Box::new(op) as Box<dyn Operator>)
        });
        Some(BuiltOperator {
            ports: probe.ports(),
            factory,
            key_columns: None,
            broadcast_inputs: vec![1],
            reads,
        })
    }
}

const DEFAULT_MAX_BUFFERED: usize = 1_000_000;

pub(crate) fn strategy_of(
    issues: &mut Issues,
    field: &str,
    name: Option<&S<String>>,
    max: Option<&S<usize>>,
    default: EnrichStrategy,
) -> EnrichStrategy {
    let max_buffered = match (max, default) {
        (Some(m), _) => {
            if m.value == 0 {
                issues.at(
                    &m.referenced,
                    format!("{field}.max_buffered"),
                    "must be at least 1",
                );
            }
            m.value.max(1)
        }
        (None, EnrichStrategy::Gated { max_buffered }) => max_buffered,
        (None, EnrichStrategy::Gradual) => DEFAULT_MAX_BUFFERED,
    };
    match name.map(|n| n.value.as_str()) {
        None => match default {
            EnrichStrategy::Gated { .. } => EnrichStrategy::Gated { max_buffered },
            g => g,
        },
        Some("gradual") => EnrichStrategy::Gradual,
        Some("gated") => EnrichStrategy::Gated { max_buffered },
        Some(other) => {
            let n = name.expect("some");
            issues.at(
                &n.referenced,
                format!("{field}.strategy"),
                format!("unknown strategy `{other}`; expected `gradual` or `gated`"),
            );
            default
        }
    }
}

/// `event_column OP table_column`.
fn parse_condition(text: &str) -> Option<Condition> {
    let mut parts = text.split_whitespace();
    let (event, op, table) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(Condition {
        event: event.to_string(),
        op: CmpOp::parse(op)?,
        table: table.to_string(),
    })
}

/// The location of an enrich spec field named like `key.x` or `columns[2]`.
fn locate_enrich_field(y: &EnrichConfig, field: &str) -> Option<Location> {
    if let Some(k) = field.strip_prefix("key.") {
        return y.key.value.get(k).map(|v| v.referenced);
    }
    if let Some(i) = field
        .strip_prefix("columns[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        return y.columns.as_ref()?.get(i).map(|c| c.referenced);
    }
    if let Some(i) = field
        .strip_prefix("distinct[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        return y.distinct.as_ref()?.value.get(i).map(|c| c.referenced);
    }
    if let Some(i) = field
        .strip_prefix("where[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        return y.conditions.get(i).map(|c| c.referenced);
    }
    if field.starts_with("version_range") {
        return y.version_range.as_ref().map(|v| v.referenced);
    }
    None
}
