//! The `generator:` block of a source: its settings, their checks and how instances are
//! built (each instance generates its share of the partitions).

use std::sync::Arc;

use serde::Deserialize;

use crate::config::component::{BuiltSource, SourceConfig, SourceContext};
use crate::config::yaml::S;
use crate::dataflow::Source;
use crate::runtime::plan::SourceFactory;
use crate::sources::generator::{GeneratorSource, GeneratorSpec, QuietPeriod, schema_for};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    pub count: Option<u64>,
    pub rate: Option<S<f64>>,
    pub interval: Option<S<String>>,
    pub hosts: Option<S<u32>>,
    pub skew: Option<S<f64>>,
    pub jitter: Option<S<String>>,
    /// RFC 3339 event time of the first record.
    pub start: Option<S<String>>,
    #[serde(default)]
    pub quiet: Vec<S<QuietYaml>>,
    pub partitions: Option<S<u32>>,
    pub seed: Option<u64>,
    /// CSV `vendor,product,version,port,weight` of what hosts run (adds a `vendor` column,
    /// and an `observation_id` column that identifies each record).
    pub vocabulary: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietYaml {
    pub at: S<String>,
    #[serde(rename = "for")]
    pub duration: S<String>,
}

impl SourceConfig for GeneratorConfig {
    fn build(&self, cx: &mut SourceContext<'_>) -> Option<BuiltSource> {
        if cx.has_schema() {
            let at = cx.location;
            let field = format!("{}.schema", cx.field_prefix());
            cx.issues.at(
                &at,
                field,
                "a generator has a fixed schema (ts, host, port, product, version, bytes); \
                 remove `schema`",
            );
        }
        if let Some(f) = cx.event_time_field
            && f.value != "ts"
        {
            let field = format!("{}.event_time.field", cx.field_prefix());
            cx.issues.at(
                &f.referenced,
                field,
                "a generator's event time is its `ts` column",
            );
        }
        let spec = self.spec(cx);
        let schema = schema_for(&spec);
        // Counted, and its times from `start`, not from the clock: a rerun gives the same rows.
        let replayable = self.count.is_some() && self.start.is_some();
        let node = cx.name.to_string();
        let factory: SourceFactory = Arc::new(move |inst, par| {
            Ok(Box::new(GeneratorSource::new(&node, spec.clone(), inst, par)) as Box<dyn Source>)
        });
        Some(BuiltSource {
            schema,
            extra_ports: Vec::new(),
            table_keys: Vec::new(),
            factory,
            dead_letters: false,
            main_is_view: false,
            preflight: None,
            current_tables: None,
            replayable,
        })
    }
}

impl GeneratorConfig {
    fn spec(&self, cx: &mut SourceContext<'_>) -> GeneratorSpec {
        let field = cx.field.clone();
        let issues = &mut *cx.issues;
        let mut spec = GeneratorSpec {
            count: self.count,
            seed: self.seed.unwrap_or(1),
            ..GeneratorSpec::default()
        };
        if let Some(r) = &self.rate {
            issues.positive(r, &format!("{field}.rate"));
            spec.rate = Some(r.value);
        }
        if let Some(i) = &self.interval {
            spec.interval = issues.duration(i, &format!("{field}.interval"));
        }
        if let Some(h) = &self.hosts {
            spec.hosts = issues.at_least_one(h, &format!("{field}.hosts"));
        }
        if let Some(s) = &self.skew {
            if !(s.value.is_finite() && s.value >= 0.0) {
                issues.at(
                    &s.referenced,
                    format!("{field}.skew"),
                    "must be a number, 0 or more",
                );
            }
            spec.skew = if s.value.is_finite() {
                s.value.max(0.0)
            } else {
                0.0
            };
        }
        if let Some(j) = &self.jitter {
            spec.jitter = issues
                .duration(j, &format!("{field}.jitter"))
                .unwrap_or_default();
        }
        if let Some(s) = &self.start {
            match chrono::DateTime::parse_from_rfc3339(s.value.trim()) {
                Ok(t) => spec.start_ms = Some(t.timestamp_millis()),
                Err(e) => issues.at(
                    &s.referenced,
                    format!("{field}.start"),
                    format!("invalid RFC 3339 time `{}`: {e}", s.value),
                ),
            }
        }
        if let Some(p) = &self.partitions {
            spec.partitions = issues.at_least_one(p, &format!("{field}.partitions"));
        }
        for (i, q) in self.quiet.iter().enumerate() {
            let at = issues.duration(&q.value.at, &format!("{field}.quiet[{i}].at"));
            let d = issues.duration(&q.value.duration, &format!("{field}.quiet[{i}].for"));
            if let (Some(at), Some(duration)) = (at, d) {
                spec.quiet.push(QuietPeriod { at, duration });
            }
        }
        spec.quiet.sort_by_key(|q| q.at);
        if let Some(v) = &self.vocabulary {
            match crate::sources::generator::load_vocabulary(&cx.base_dir.join(&v.value)) {
                Ok(entries) => spec.vocabulary = Some(entries.into()),
                Err(e) => cx
                    .issues
                    .at(&v.referenced, format!("{field}.vocabulary"), e),
            }
        }
        spec
    }
}
