//! The `window:` block of an operator: key, one window kind (`tumbling`, `sliding`,
//! `session`), `allowed_lateness` and the aggregates; rows are shuffled by the key.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Location;

use crate::config::component::{BuiltOperator, OperatorConfig, OperatorContext};
use crate::config::issues::Issues;
use crate::config::yaml::S;
use crate::dataflow::Operator;
use crate::operators::window::{
    AggregateFn, AggregateSpec, WindowKind, WindowOperator, WindowSpec,
};
use crate::runtime::plan::OperatorFactory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(default)]
    pub key: Vec<S<String>>,
    pub tumbling: Option<S<String>>,
    pub sliding: Option<S<SlidingYaml>>,
    pub session: Option<S<SessionYaml>>,
    pub allowed_lateness: Option<S<String>>,
    /// Output column -> `count`, `count(field)`, `sum(field)`, `min(field)`, `max(field)`,
    /// `avg(field)` or `count_distinct(field)`.
    pub aggregates: S<IndexMap<String, S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingYaml {
    pub size: S<String>,
    pub slide: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionYaml {
    pub gap: S<String>,
}

impl OperatorConfig for WindowConfig {
    fn build(&self, cx: &mut OperatorContext<'_>) -> Option<BuiltOperator> {
        let schema = cx.same_schema();
        let spec = window_spec(cx.issues, &cx.field, self, &cx.location)?;
        let schema = schema?;
        let key_columns: Vec<usize> = spec.key.iter().filter_map(|k| schema.index_of(k)).collect();
        let probe = match WindowOperator::new(cx.name, spec.clone(), schema.clone()) {
            Ok(op) => op,
            Err(e) => {
                let (at, path) =
                    locate_spec_field(self, &e.field).unwrap_or((cx.location, e.field.clone()));
                cx.issue(&at, &path, e.message);
                return None;
            }
        };
        let reads: Vec<String> = probe
            .columns_read()
            .into_iter()
            .map(|c| schema.field(c).name.to_string())
            .collect();
        let node = cx.name.to_string();
        let factory: OperatorFactory = Arc::new(move |_| {
            let op = WindowOperator::new(&node, spec.clone(), schema.clone())
                .map_err(|e| crate::error::RunError::build(node.clone(), e.message))?;
            Ok(Box::new(op) as Box<dyn Operator>)
        });
        Some(BuiltOperator {
            ports: probe.ports(),
            factory,
            key_columns: Some(key_columns),
            broadcast_inputs: Vec::new(),
            reads,
        })
    }
}

fn window_spec(
    issues: &mut Issues,
    field: &str,
    w: &WindowConfig,
    loc: &Location,
) -> Option<WindowSpec> {
    let kinds = [
        w.tumbling.is_some(),
        w.sliding.is_some(),
        w.session.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        issues.at(loc, field, "a window needs exactly one of `tumbling: SIZE`, `sliding: {size, slide}` or `session: {gap}`");
        return None;
    }
    let kind = if let Some(t) = &w.tumbling {
        WindowKind::Tumbling {
            size: issues.duration(t, &format!("{field}.tumbling"))?,
        }
    } else if let Some(s) = &w.sliding {
        let size = issues.duration(&s.value.size, &format!("{field}.sliding.size"));
        let slide = issues.duration(&s.value.slide, &format!("{field}.sliding.slide"));
        WindowKind::Sliding {
            size: size?,
            slide: slide?,
        }
    } else {
        let s = w.session.as_ref().expect("one kind");
        WindowKind::Session {
            gap: issues.duration(&s.value.gap, &format!("{field}.session.gap"))?,
        }
    };
    let allowed_lateness = match &w.allowed_lateness {
        Some(d) => issues.duration(d, &format!("{field}.allowed_lateness"))?,
        None => Duration::ZERO,
    };
    let mut aggregates = Vec::new();
    if w.aggregates.value.is_empty() {
        issues.at(
            &w.aggregates.referenced,
            format!("{field}.aggregates"),
            "list at least one aggregate, e.g. `events: count`",
        );
    }
    for (name, expr) in &w.aggregates.value {
        match parse_aggregate(&expr.value) {
            Ok((function, arg)) => aggregates.push(AggregateSpec {
                name: name.clone(),
                function,
                field: arg,
            }),
            Err(m) => issues.at(&expr.referenced, format!("{field}.aggregates.{name}"), m),
        }
    }
    Some(WindowSpec {
        key: w.key.iter().map(|k| k.value.clone()).collect(),
        kind,
        allowed_lateness,
        aggregates,
    })
}

/// `count`, `count(f)`, `sum(f)`, `min(f)`, `max(f)`, `avg(f)`, `count_distinct(f)`.
fn parse_aggregate(expr: &str) -> Result<(AggregateFn, Option<String>), String> {
    let e = expr.trim();
    let (func, arg) = match e.split_once('(') {
        Some((f, rest)) => {
            let Some(arg) = rest.strip_suffix(')') else {
                return Err(format!("`{e}`: missing `)`"));
            };
            (f.trim(), Some(arg.trim().to_string()))
        }
        None => (e, None),
    };
    let Some(function) = AggregateFn::parse(func) else {
        return Err(format!(
            "unknown aggregate `{func}`; expected count, sum, min, max, avg or count_distinct"
        ));
    };
    match (&function, &arg) {
        (AggregateFn::Count, _) => Ok((function, arg.filter(|a| !a.is_empty()))),
        (_, Some(a)) if !a.is_empty() => Ok((function, arg)),
        _ => Err(format!("`{func}` needs a column: `{func}(column)`")),
    }
}

/// The location and YAML name of a window spec field named like `key[0]`,
/// `aggregates[1].field` or `kind.size`.
fn locate_spec_field(w: &WindowConfig, field: &str) -> Option<(Location, String)> {
    let index = |prefix: &str| -> Option<usize> {
        field.strip_prefix(prefix)?.split(']').next()?.parse().ok()
    };
    if let Some(i) = index("key[") {
        return w.key.get(i).map(|k| (k.referenced, field.to_string()));
    }
    if let Some(i) = index("aggregates[") {
        return w
            .aggregates
            .value
            .get_index(i)
            .map(|(name, v)| (v.referenced, format!("aggregates.{name}")));
    }
    match field {
        "kind.size" => w
            .tumbling
            .as_ref()
            .map(|t| (t.referenced, "tumbling".to_string()))
            .or_else(|| {
                w.sliding
                    .as_ref()
                    .map(|s| (s.value.size.referenced, "sliding.size".to_string()))
            }),
        "kind.slide" => w
            .sliding
            .as_ref()
            .map(|s| (s.value.slide.referenced, "sliding.slide".to_string())),
        "kind.gap" => w
            .session
            .as_ref()
            .map(|s| (s.value.gap.referenced, "session.gap".to_string())),
        "allowed_lateness" => w
            .allowed_lateness
            .as_ref()
            .map(|a| (a.referenced, field.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_parse() {
        assert_eq!(
            parse_aggregate("count").unwrap(),
            (AggregateFn::Count, None)
        );
        assert_eq!(
            parse_aggregate(" sum( bytes ) ").unwrap(),
            (AggregateFn::Sum, Some("bytes".into()))
        );
        assert!(
            parse_aggregate("median(x)")
                .unwrap_err()
                .contains("unknown aggregate")
        );
        assert!(
            parse_aggregate("sum")
                .unwrap_err()
                .contains("needs a column")
        );
    }
}
