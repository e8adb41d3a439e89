//! The `kafka:` block of a sink: the brokers and client `properties`, the `topic`, the
//! `key` columns, the `guarantee` (`at_least_once`, or `exactly_once` with Kafka
//! transactions, which needs `checkpoint.dir`) and the `transactional_id` prefix.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::component::{BuiltSink, SinkConfig, SinkContext};
use crate::config::yaml::S;
use crate::dataflow::{Guarantee, Sink};
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
    /// Prefix of the producers' transactional ids (default `watershed.<pipeline>.<sink>`);
    /// instance `i` uses `<prefix>.<i>`. Keep it stable across restarts.
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
        };
        let exactly_once = guarantee == Guarantee::ExactlyOnce;
        let factory: SinkFactory = Arc::new(move |instance| {
            let mut spec = spec.clone();
            if exactly_once && let Some(root) = &spool_root {
                spec.delivery = Delivery::ExactlyOnce {
                    spool_dir: root.join(instance.to_string()),
                    transactional_id: format!("{prefix}.{instance}"),
                };
            }
            Ok(Box::new(KafkaSink::new(spec)) as Box<dyn Sink>)
        });
        Some(BuiltSink {
            factory,
            target: format!("kafka topic {}", self.topic.value),
            guarantee,
            writes: None,
            writes_json: true,
        })
    }
}
