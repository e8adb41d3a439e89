//! The `kafka:` block of a sink: the brokers and client `properties`, the `topic`, the
//! `key` columns, the `guarantee` (`at_least_once`, or `exactly_once` with Kafka
//! transactions, which needs `checkpoint.dir`) and the `transactional_id` prefix.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::component::{BuiltSink, SinkConfig, SinkContext};
use crate::config::yaml::S;
use crate::dataflow::{Guarantee, Sink};
use crate::error::RunError;
use crate::kafka::{PropertyValue, check_client};
use crate::runtime::plan::SinkFactory;
use crate::sinks::kafka::{Delivery, KafkaSink, KafkaSinkSpec, KeySpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port...]`.
    pub brokers: S<String>,
    /// librdkafka settings passed through (TLS, SASL, `linger.ms`, `compression.type`...).
    #[serde(default)]
    pub properties: IndexMap<String, S<PropertyValue>>,
    pub topic: S<String>,
    /// Key columns: one gives its text, several a JSON object; none, no key.
    #[serde(default)]
    pub key: Vec<S<String>>,
    /// `at_least_once` (default) or `exactly_once`.
    pub guarantee: Option<S<String>>,
    /// `json` (default: the row as a JSON object) or `debezium` (a table port's change rows as
    /// Debezium change events; needs `table` and the table's `key`).
    pub format: Option<S<String>>,
    /// With `format: debezium`: the table the events name, `schema.table`.
    pub table: Option<S<String>>,
    /// Prefix of the producers' transactional ids (default `watershed.<pipeline>.<sink>`;
    /// sink instance `i` of the process with instance id `id` (`crate::instance`) uses
    /// `<prefix>.<id>.<i>`). Keep it stable across restarts.
    pub transactional_id: Option<S<String>>,
}

impl SinkConfig for KafkaSinkConfig {
    fn build(&self, cx: &mut SinkContext<'_>) -> Option<BuiltSink> {
        let client = match check_client(&self.brokers, &self.properties) {
            Ok(c) => Some(c),
            Err(problems) => {
                for (field, at, message) in problems {
                    cx.issue(&at, &field, message);
                }
                None
            }
        };
        if self.topic.value.trim().is_empty() {
            cx.issue(&self.topic.referenced, "topic", "name the topic to write");
        }
        let mut key_columns = Vec::new();
        for k in &self.key {
            match cx.schema.index_of(&k.value) {
                Some(i) => key_columns.push(i),
                None => cx.issue(
                    &k.referenced,
                    "key",
                    format!("`{}` is not a column of the sink's input", k.value),
                ),
            }
        }
        let debezium = match self
            .format
            .as_ref()
            .map(|f| (f.value.as_str(), f.referenced))
        {
            None | Some(("json", _)) => {
                if let Some(t) = &self.table {
                    cx.issue(
                        &t.referenced,
                        "table",
                        "names the table of `format: debezium`",
                    );
                }
                None
            }
            Some(("debezium", at)) => {
                if !crate::cdc::rows::is_change_schema(&cx.schema) {
                    cx.issue(
                        &at,
                        "format",
                        "Debezium events are written from a table port of a change stream \
                         (`source.table`): this input has no change rows",
                    );
                    None
                } else if key_columns.is_empty() {
                    cx.issue(&at, "key", "name the table's key columns: `key: [id]`");
                    None
                } else if key_columns
                    .iter()
                    .any(|&k| k < crate::cdc::rows::META_COLUMNS)
                {
                    cx.issue(&at, "key", "key columns are the table's own columns");
                    None
                } else if cx.columns.is_some() {
                    cx.issue(
                        &at,
                        "format",
                        "Debezium events carry every column: remove `columns`",
                    );
                    None
                } else {
                    match self
                        .table
                        .as_ref()
                        .map(|t| (t.value.split_once('.'), t.referenced))
                    {
                        Some((Some((schema, table)), _))
                            if !schema.is_empty() && !table.is_empty() =>
                        {
                            Some(crate::sinks::kafka::DebeziumEvents::new(
                                cx.schema.clone(),
                                schema,
                                table,
                                key_columns.clone(),
                                cx.pipeline,
                            ))
                        }
                        Some((_, at)) => {
                            cx.issue(&at, "table", "write it as `schema.table`");
                            None
                        }
                        None => {
                            cx.issue(
                                &at,
                                "table",
                                "name the table the events are of: `table: public.hosts`",
                            );
                            None
                        }
                    }
                }
            }
            Some((other, at)) => {
                cx.issue(
                    &at,
                    "format",
                    format!("unknown format `{other}`; use `json` or `debezium`"),
                );
                None
            }
        };
        let key = match key_columns.as_slice() {
            [] => KeySpec::None,
            [one] => KeySpec::Column(*one),
            _ => KeySpec::Object(key_columns),
        };
        let guarantee = match self
            .guarantee
            .as_ref()
            .map(|g| (g.value.as_str(), g.referenced))
        {
            None | Some(("at_least_once", _)) => Guarantee::AtLeastOnce,
            Some(("exactly_once", at)) => {
                if cx.checkpoint_dir.is_none() {
                    cx.issue(
                        &at,
                        "guarantee",
                        "exactly_once commits a transaction when a checkpoint is durable: set \
                         `checkpoint.dir`",
                    );
                }
                Guarantee::ExactlyOnce
            }
            Some((other, at)) => {
                cx.issue(
                    &at,
                    "guarantee",
                    format!("unknown guarantee `{other}`; use `at_least_once` or `exactly_once`"),
                );
                Guarantee::AtLeastOnce
            }
        };
        if let Some(t) = &self.transactional_id {
            if guarantee != Guarantee::ExactlyOnce {
                cx.issue(
                    &t.referenced,
                    "transactional_id",
                    "only an exactly_once sink uses transactions",
                );
            } else if t.value.trim().is_empty() {
                cx.issue(&t.referenced, "transactional_id", "cannot be empty");
            }
        }
        let client = client?;
        let brokers = client.brokers().to_string();
        let brokers = brokers.as_str();
        let prefix = self
            .transactional_id
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_else(|| format!("watershed.{}.{}", cx.pipeline, cx.name));
        let spool_root = cx
            .checkpoint_dir
            .as_ref()
            .map(|d| d.join("kafka-sinks").join(cx.name));
        let spec = KafkaSinkSpec {
            node: cx.name.to_string(),
            client,
            topic: self.topic.value.clone(),
            schema: cx.schema.clone(),
            columns: cx.columns.clone(),
            key,
            delivery: Delivery::AtLeastOnce,
            debezium,
            carries: None,
        };
        let exactly_once = guarantee == Guarantee::ExactlyOnce;
        // The first exactly-once sink on the brokers a consumer group reads through commits
        // the group's offsets in its transactions (its instance 0 does).
        let carries = (exactly_once && spool_root.is_some())
            .then(|| cx.kafka_links.claim(cx.name, brokers))
            .filter(|claimed| !claimed.is_empty())
            .map(|_| cx.kafka_links.clone());
        let checkpoint_dir = cx.checkpoint_dir.clone();
        let factory: SinkFactory = Arc::new(move |instance| {
            let mut spec = spec.clone();
            if exactly_once && let (Some(root), Some(dir)) = (&spool_root, &checkpoint_dir) {
                // This process's id among the pipeline's instances: two processes in one
                // consumer group never share a transactional id (they would fence each
                // other), and a restarted one has its old id (it fences what it left open).
                let id = crate::instance::resolve(dir).map_err(|e| RunError::Build {
                    component: spec.node.clone(),
                    message: format!("the instance id: {e}"),
                })?;
                spec.delivery = Delivery::ExactlyOnce {
                    spool_dir: root.join(instance.to_string()),
                    transactional_id: format!("{prefix}.{id}.{instance}"),
                };
                if instance == 0 {
                    spec.carries = carries.clone();
                }
            }
            Ok(Box::new(KafkaSink::new(spec)) as Box<dyn Sink>)
        });
        Some(BuiltSink {
            factory,
            target: format!("kafka topic {}", self.topic.value),
            guarantee,
            writes: None,
            writes_json: true,
            holdings: None,
            preflight: None,
        })
    }
}
