//! What the Kafka source and sink share: the client settings of a `kafka:` block (`brokers`
//! and librdkafka `properties`, where credentials come from `${VAR}`), turning them into a
//! librdkafka configuration without ever showing a value, how librdkafka's errors map to
//! `RunError` classes, and librdkafka's log lines routed to `tracing`.
//!
//! librdkafka is the bundled 2.12 build of the `rdkafka` crate (never the system's 2.0.2,
//! which cannot talk to current brokers). Settings the connectors own (offset commits, the
//! consumer group, transactions) cannot be overridden through `properties`: the block has
//! a field for each of them, or the connector sets them because its guarantees depend on it.

pub mod group;
pub mod offsets;

use std::fmt;

use indexmap::IndexMap;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

use crate::config::yaml::S;
use crate::error::{ErrorClass, RunError};

/// librdkafka settings a connector sets itself: `properties` may not name them.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("group.id", "use `group`"),
    (
        "enable.auto.commit",
        "offsets are committed when a checkpoint is durable",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed when a checkpoint is durable",
    ),
    ("transactional.id", "use `transactional_id`"),
    (
        "enable.idempotence",
        "the sink's producer is always idempotent",
    ),
    (
        "enable.partition.eof",
        "the source learns where a partition ends itself",
    ),
];

/// Property names whose values are secrets in every message (they never appear anyway).
fn is_secret(name: &str) -> bool {
    name.contains("password") || name.contains("secret") || name.contains("key")
}

/// A property's value as YAML gives it: text, a number or a boolean.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Never the value: it may be a credential.
impl fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<value>")
    }
}

impl PropertyValue {
    fn text(&self) -> String {
        match self {
            PropertyValue::Text(s) => s.clone(),
            PropertyValue::Int(v) => v.to_string(),
            PropertyValue::Float(v) => v.to_string(),
            PropertyValue::Bool(v) => v.to_string(),
        }
    }
}

/// Settings checked and ready to configure clients: the pairs to set, in order.
#[derive(Clone)]
pub struct Client {
    pairs: Vec<(String, String)>,
    brokers: String,
}

/// Names only: a value may be a credential.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).collect();
        write!(
            f,
            "Client {{ brokers: {}, properties: {names:?} }}",
            self.brokers
        )
    }
}

/// A `kafka:` block's `properties`: name → value.
pub type Properties = IndexMap<String, S<PropertyValue>>;

/// One problem with a block's client settings: the field (`brokers`, `properties.NAME`),
/// where, and what is wrong (never quoting a value).
pub type ClientProblem = (String, serde_saphyr::Location, String);

/// Checks a block's client settings (`brokers`, `properties`).
pub fn check_client(
    brokers: &S<String>,
    properties: &Properties,
) -> Result<Client, Vec<ClientProblem>> {
    {
        let mut problems = Vec::new();
        if brokers.value.trim().is_empty() {
            problems.push((
                "brokers".to_string(),
                brokers.referenced,
                "name at least one broker: `host:port`".to_string(),
            ));
        }
        let mut pairs = Vec::new();
        for (name, value) in properties {
            if let Some((_, why)) = OWNED.iter().find(|(n, _)| n == name) {
                problems.push((
                    format!("properties.{name}"),
                    value.referenced,
                    format!("is set by Watershed itself: {why}"),
                ));
                continue;
            }
            pairs.push((name.clone(), value.value.text()));
        }
        let client = Client {
            pairs,
            brokers: brokers.value.clone(),
        };
        // librdkafka checks names and values without connecting; its message quotes the
        // value, so only the property's name is reported.
        for (name, value) in &client.pairs {
            let mut one = ClientConfig::new();
            one.set(name, value);
            if let Err(e) = one.create_native_config() {
                let at = properties[name.as_str()].referenced;
                let reason = if e.to_string().contains("No such configuration property") {
                    "librdkafka has no such property".to_string()
                } else if is_secret(name) {
                    "librdkafka refuses this value".to_string()
                } else {
                    format!(
                        "librdkafka refuses this value: {}",
                        scrub(&e.to_string(), value)
                    )
                };
                problems.push((format!("properties.{name}"), at, reason));
            }
        }
        if problems.is_empty() {
            Ok(client)
        } else {
            Err(problems)
        }
    }
}

/// `message` with every occurrence of `value` replaced.
fn scrub(message: &str, value: &str) -> String {
    if value.is_empty() {
        message.to_string()
    } else {
        message.replace(value, "<value>")
    }
}

impl Client {
    /// A client with these brokers and no other settings (tests, tools).
    pub fn plain(brokers: &str) -> Client {
        Client {
            pairs: Vec::new(),
            brokers: brokers.to_string(),
        }
    }

    /// Adds (or replaces) a property, as `properties` would.
    pub fn set(&mut self, name: &str, value: &str) {
        self.pairs.retain(|(k, _)| k != name);
        self.pairs.push((name.to_string(), value.to_string()));
    }

    /// The brokers, for messages.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A librdkafka configuration: the user's properties, then the connector's own `owned`
    /// settings (which win).
    pub fn config(&self, owned: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.pairs {
            c.set(k, v);
        }
        for (k, v) in owned {
            c.set(*k, *v);
        }
        c
    }
}

/// A librdkafka error as a `RunError` of `component`: fatal errors, authentication and
/// authorization failures, unknown topics and invalid settings are definite; the rest
/// (broker down, timeouts, rebalances in progress) transient.
pub fn run_error(component: &str, doing: &str, e: &KafkaError) -> RunError {
    RunError::External {
        component: component.to_string(),
        message: format!("kafka: {doing}: {e}"),
        class: class_of(e),
    }
}

/// Whether retrying can help with `e`.
pub fn class_of(e: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    let Some(code) = e.rdkafka_error_code() else {
        return ErrorClass::Transient;
    };
    match code {
        C::Fatal
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::InvalidConfig
        | C::InvalidArgument
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::InvalidTransactionalState
        | C::MessageSizeTooLarge
        | C::UnsupportedVersion => ErrorClass::Definite,
        _ => ErrorClass::Transient,
    }
}

/// Routes librdkafka's logs and client errors to `tracing` under the node's name. Broker
/// connection errors repeat every few seconds while a broker is down: they go to `debug`
/// after the first (the connector reports the outage itself, once).
pub struct LogContext {
    pub node: String,
    logged_down: std::sync::atomic::AtomicBool,
}

impl LogContext {
    pub fn new(node: &str) -> LogContext {
        LogContext {
            node: node.to_string(),
            logged_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Logs `e` once per outage (the first transport error after a success).
    pub fn transport_error(&self, e: &KafkaError) {
        use std::sync::atomic::Ordering;
        if !self.logged_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(node = %self.node, error = %e, "kafka: broker unreachable for now; librdkafka retries (logged once until it recovers)");
        } else {
            tracing::debug!(node = %self.node, error = %e, "kafka: broker still unreachable");
        }
    }

    /// A call succeeded: the next transport error is a new outage.
    pub fn recovered(&self) {
        use std::sync::atomic::Ordering;
        if self.logged_down.swap(false, Ordering::Relaxed) {
            tracing::info!(node = %self.node, "kafka: broker reachable again");
        }
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::debug!(node = %self.node, facility = fac, "librdkafka: {log_message}")
            }
            _ => tracing::trace!(node = %self.node, facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.transport_error(&error);
        } else {
            tracing::warn!(node = %self.node, error = %error, "kafka: {reason}");
        }
    }
}

/// A consumer that only reads and commits offsets (no rebalance handling of its own).
impl rdkafka::consumer::ConsumerContext for LogContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Block {
        brokers: S<String>,
        #[serde(default)]
        properties: Properties,
    }

    fn check(yaml: &str) -> Result<Client, Vec<ClientProblem>> {
        let b: Block = serde_saphyr::from_str(yaml).expect("yaml");
        check_client(&b.brokers, &b.properties)
    }

    #[test]
    fn owned_and_unknown_properties_are_refused_by_name_without_their_values() {
        let problems = check(
            "brokers: 127.0.0.1:9092\nproperties:\n  group.id: g\n  no.such.thing: 1\n  \
             sasl.password: hunter2\n  session.timeout.ms: notanumber\n",
        )
        .unwrap_err();
        let text = format!("{:?}", problems.iter().map(|p| &p.2).collect::<Vec<_>>());
        assert_eq!(problems.len(), 3, "{text}");
        assert_eq!(problems[0].0, "properties.group.id");
        assert!(problems[0].2.contains("`group`"));
        assert_eq!(problems[1].0, "properties.no.such.thing");
        assert_eq!(problems[2].0, "properties.session.timeout.ms");
        assert!(!text.contains("notanumber"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_client_shows_property_names_but_never_their_values() {
        let c = check("brokers: b:1\nproperties:\n  sasl.password: hunter2\n").expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{c:?}").contains("sasl.password"));
    }

    #[test]
    fn errors_are_classed_by_whether_a_retry_helps() {
        let fatal = KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal);
        assert_eq!(class_of(&fatal), ErrorClass::Definite);
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(class_of(&down), ErrorClass::Transient);
        let unknown = KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(class_of(&unknown), ErrorClass::Definite);
    }
}
