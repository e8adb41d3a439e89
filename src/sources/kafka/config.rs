//! The `kafka:` block of a source: the brokers and client `properties`, the `topics` (or a
//! `pattern`, with a `group`), the consumer `group`, where partitions without an offset
//! `start`, and which columns come from the record instead of its value (`metadata`).
//! Values are JSON objects of the source's `schema`.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::component::{BuiltSource, SourceConfig, SourceContext};
use crate::config::yaml::S;
use crate::dataflow::Source;
use crate::format::json::JsonDecoder;
use crate::kafka::Client;
use crate::kafka::{PropertyValue, check_client};
use crate::runtime::plan::SourceFactory;
use crate::sources::cdc::{ChangeDecoder, ChangeTables, change_tables, main_schema};
use crate::sources::kafka::{
    ChangeRecords, JsonRecords, KafkaSource, KafkaSourceSpec, KeyType, MetadataColumns, Start,
    TimeType, Topics,
};
use crate::types::DataType;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port...]`.
    pub brokers: S<String>,
    /// librdkafka settings passed through (TLS, SASL, timeouts); values may be `${VAR}`.
    #[serde(default)]
    pub properties: IndexMap<String, S<PropertyValue>>,
    /// Topic names.
    #[serde(default)]
    pub topics: Vec<S<String>>,
    /// A regular expression over topic names, instead of `topics` (needs `group`).
    pub pattern: Option<S<String>>,
    /// The consumer group: processes started with the same group share the partitions.
    /// Without one, every partition is read, split over the source's instances.
    pub group: Option<S<String>>,
    /// `earliest` (default) or `latest`: where a partition without a checkpointed or
    /// committed offset starts.
    pub start: Option<S<String>>,
    /// Columns filled from the record: `key`, `topic`, `partition`, `offset`, `timestamp`,
    /// `headers`, each naming a column of the schema.
    #[serde(default)]
    pub metadata: IndexMap<String, S<String>>,
    /// How long to wait before asking again when no record is ready (default 10ms).
    pub poll_interval: Option<S<String>>,
    /// `json` (default: rows of the `schema`) or `debezium` (a change stream of the
    /// source's `tables`).
    pub format: Option<S<String>>,
    /// With `format: debezium` and no `topics`: Debezium's `topic.prefix`; the topics are
    /// then `<prefix>.<schema>.<table>` for each table, and the heartbeat topic
    /// `__debezium-heartbeat.<prefix>` when it exists.
    pub topic_prefix: Option<S<String>>,
}

impl SourceConfig for KafkaSourceConfig {
    fn build(&self, cx: &mut SourceContext<'_>) -> Option<BuiltSource> {
        let debezium = match self
            .format
            .as_ref()
            .map(|f| (f.value.as_str(), f.referenced))
        {
            None | Some(("json", _)) => false,
            Some(("debezium", _)) => true,
            Some((other, at)) => {
                cx.issue(
                    &at,
                    "format",
                    format!("unknown format `{other}`; use `json` or `debezium`"),
                );
                cx.skip_unused_checks();
                return None;
            }
        };
        if !debezium && let Some(p) = &self.topic_prefix {
            cx.issue(
                &p.referenced,
                "topic_prefix",
                "names Debezium's topics: set `format: debezium`",
            );
        }
        let client = match check_client(&self.brokers, &self.properties) {
            Ok(c) => Some(c),
            Err(problems) => {
                for (field, at, message) in problems {
                    cx.issue(&at, &field, message);
                }
                None
            }
        };
        let topics = match (&self.pattern, self.topics.is_empty()) {
            (Some(p), true) => {
                if self.group.is_none() {
                    cx.issue(
                        &p.referenced,
                        "pattern",
                        "a topic pattern needs a consumer `group` (without one, list the \
                         `topics`)",
                    );
                }
                Some(Topics::Pattern(p.value.clone()))
            }
            (Some(p), false) => {
                cx.issue(
                    &p.referenced,
                    "pattern",
                    "give `topics` or `pattern`, not both",
                );
                None
            }
            (None, true) if debezium && self.topic_prefix.is_some() => {
                Some(Topics::Names(Vec::new()))
            }
            (None, true) => {
                let at = cx.location;
                let what = if debezium {
                    "list the topics to read (or give Debezium's `topic_prefix`)"
                } else {
                    "list the topics to read (or a `pattern`)"
                };
                cx.issue(&at, "topics", what);
                None
            }
            (None, false) => {
                let mut names = Vec::new();
                for t in &self.topics {
                    if t.value.trim().is_empty() {
                        cx.issue(&t.referenced, "topics", "a topic name cannot be empty");
                    } else if names.contains(&t.value) {
                        cx.warn(
                            &t.referenced,
                            "topics",
                            format!("`{}` is listed twice; it is read once", t.value),
                        );
                    } else {
                        names.push(t.value.clone());
                    }
                }
                Some(Topics::Names(names))
            }
        };
        let start = match self
            .start
            .as_ref()
            .map(|s| (s.value.as_str(), s.referenced))
        {
            None | Some(("earliest", _)) => Start::Earliest,
            Some(("latest", _)) => Start::Latest,
            Some((other, at)) => {
                cx.issue(
                    &at,
                    "start",
                    format!("unknown start `{other}`; use `earliest` or `latest`"),
                );
                Start::Earliest
            }
        };
        if let Some(g) = &self.group
            && g.value.trim().is_empty()
        {
            cx.issue(&g.referenced, "group", "a group name cannot be empty");
        }
        let poll_interval = self
            .poll_interval
            .as_ref()
            .and_then(|d| {
                cx.issues
                    .duration(d, &format!("{}.poll_interval", cx.field))
            })
            .unwrap_or(Duration::from_millis(10));
        if debezium {
            return self.change_stream(cx, client?, topics?, start, poll_interval);
        }
        let schema = cx.rows("a Kafka source needs a `schema` (column: type) of its values")?;
        let event_time = cx.event_time_column(&schema);
        let mut metadata = MetadataColumns::default();
        for (kind, column) in &self.metadata {
            let Some(i) = schema.index_of(&column.value) else {
                cx.issue(
                    &column.referenced,
                    &format!("metadata.{kind}"),
                    format!("`{}` is not a column of the schema", column.value),
                );
                continue;
            };
            let t = schema.field(i).data_type;
            let wrong = |cx: &mut SourceContext<'_>, want: &str| {
                cx.issue(
                    &column.referenced,
                    &format!("metadata.{kind}"),
                    format!(
                        "`{}` is {t}; the record's {kind} needs {want}",
                        column.value
                    ),
                );
            };
            match kind.as_str() {
                "key" => match t {
                    DataType::String => metadata.key = Some((i, KeyType::Text)),
                    DataType::Bytes => metadata.key = Some((i, KeyType::Bytes)),
                    _ => wrong(cx, "a string or bytes column"),
                },
                "topic" if t == DataType::String => metadata.topic = Some(i),
                "topic" => wrong(cx, "a string column"),
                "partition" if t == DataType::Int => metadata.partition = Some(i),
                "partition" => wrong(cx, "an int column"),
                "offset" if t == DataType::Int => metadata.offset = Some(i),
                "offset" => wrong(cx, "an int column"),
                "timestamp" => match t {
                    DataType::Timestamp => metadata.timestamp = Some((i, TimeType::Timestamp)),
                    DataType::Int => metadata.timestamp = Some((i, TimeType::Millis)),
                    _ => wrong(cx, "a timestamp or int (epoch milliseconds) column"),
                },
                "headers" if t == DataType::Json => metadata.headers = Some(i),
                "headers" => wrong(cx, "a json column"),
                other => cx.issue(
                    &column.referenced,
                    "metadata",
                    format!(
                        "unknown metadata `{other}`; use `key`, `topic`, `partition`, \
                         `offset`, `timestamp` or `headers`"
                    ),
                ),
            }
        }
        let (client, topics) = (client?, topics?);
        let node = cx.name.to_string();
        let group = self.group.as_ref().map(|g| g.value.clone());
        let links = group.as_ref().map(|g| {
            cx.kafka_links.register_group(&node, g, client.brokers());
            cx.kafka_links.clone()
        });
        let decoder_schema = schema.clone();
        let unread = cx.unread.clone();
        let factory: SourceFactory = Arc::new(move |instance, parallelism| {
            let decoder = JsonDecoder::new(decoder_schema.clone(), event_time)
                .carrying_raw(|column| unread.contains(column));
            let source = KafkaSource::new(
                KafkaSourceSpec {
                    node: node.clone(),
                    client: client.clone(),
                    topics: topics.clone(),
                    group: group.clone(),
                    start,
                    poll_interval,
                    metadata,
                    instance,
                    parallelism,
                    links: links.clone(),
                },
                JsonRecords(decoder),
            )?;
            Ok(Box::new(source) as Box<dyn Source>)
        });
        Some(BuiltSource {
            schema,
            extra_ports: Vec::new(),
            table_keys: Vec::new(),
            factory,
            dead_letters: true,
            main_is_view: false,
            preflight: None,
            current_tables: None,
            replayable: false,
        })
    }
}

impl KafkaSourceConfig {
    /// Debezium change events of the source's `tables`, read in full by one instance (its
    /// table ports are broadcast to every instance downstream): no consumer group.
    fn change_stream(
        &self,
        cx: &mut SourceContext<'_>,
        client: Client,
        topics: Topics,
        start: Start,
        poll_interval: Duration,
    ) -> Option<BuiltSource> {
        if let Some(g) = &self.group {
            cx.issue(
                &g.referenced,
                "group",
                "a change stream is read in full by every process (reference tables are \
                 broadcast): remove `group`",
            );
        }
        if let Some(p) = &self.pattern {
            cx.issue(
                &p.referenced,
                "pattern",
                "a change stream reads named topics: use `topics` or `topic_prefix`",
            );
        }
        if let Some((_, at)) = self.metadata.first().map(|(k, v)| (k, v.referenced)) {
            cx.issue(
                &at,
                "metadata",
                "a change stream's rows are its tables' columns",
            );
        }
        let ChangeTables {
            tables,
            ports: extra_ports,
            keys: table_keys,
        } = change_tables(cx)?;
        let (topics, optional) = match (topics, &self.topic_prefix) {
            (Topics::Names(names), Some(prefix)) if names.is_empty() => (
                tables
                    .iter()
                    .map(|t| format!("{}.{}", prefix.value, t.id))
                    .collect::<Vec<_>>(),
                vec![format!("__debezium-heartbeat.{}", prefix.value)],
            ),
            (Topics::Names(names), _) => (names, Vec::new()),
            (Topics::Pattern(_), _) => return None,
        };
        let node = cx.name.to_string();
        let factory: SourceFactory = Arc::new(move |instance, _parallelism| {
            // A topic per table (or several tables in one): `last` ends its own topic's
            // tables, and the others once every topic is read to its end.
            let decoder = ChangeDecoder::separate_logs(&node, tables.clone())
                .map_err(|e| crate::error::RunError::build(node.clone(), e.reason))?;
            let spec = KafkaSourceSpec {
                node: node.clone(),
                client: client.clone(),
                topics: Topics::Names(topics.clone()),
                group: None,
                start,
                poll_interval,
                metadata: MetadataColumns::default(),
                // One instance reads every partition, in full.
                instance: 0,
                parallelism: 1,
                links: None,
            };
            let source = if instance == 0 {
                KafkaSource::new_with_optional(spec, ChangeRecords::new(decoder), &optional)?
            } else {
                KafkaSource::idle(spec, ChangeRecords::new(decoder))?
            };
            Ok(Box::new(source) as Box<dyn Source>)
        });
        Some(BuiltSource {
            schema: main_schema(),
            extra_ports,
            table_keys,
            factory,
            dead_letters: true,
            main_is_view: true,
            preflight: None,
            current_tables: None,
            replayable: false,
        })
    }
}
