//! Contract fixtures of the Kafka source and sink (see `testing::contract`), over a real
//! broker started by `testing::services` on a loopback port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tempfile::TempDir;

use crate::dataflow::{Guarantee, Sink, Source};
use crate::format::EventTimeSource;
use crate::format::json::JsonDecoder;
use crate::kafka::Client;
use crate::sinks::kafka::{Delivery, KafkaSink, KafkaSinkSpec, KeySpec};
use crate::sources::kafka::{
    JsonRecords, KafkaSource, KafkaSourceSpec, KeyType, MetadataColumns, Start, TimeType, Topics,
};
use crate::testing::contract::{CorruptInput, SinkFixture, SinkTarget, SourceFixture};
use crate::testing::services::{Broker, TestRecord};
use crate::types::{Batch, DataType, Field, Schema, SchemaRef, Value};

/// A name no other test of this process uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------------

/// The Kafka source over topic `obs` with two partitions (5 and 4 records: timestamps as
/// RFC 3339 and epoch milliseconds, an out-of-order record, escapes, keys and a record
/// without a key), read without a group; key, partition, offset and record timestamp are
/// metadata columns. The malformed input is the same topic on another broker with a cut-off
/// record after partition 1's last.
pub struct KafkaSourceFixture {
    clean: Broker,
    corrupt: Broker,
}

const SOURCE_TOPIC: &str = "obs";

fn source_records() -> Vec<TestRecord<'static>> {
    vec![
        (
            0,
            Some(b"a"),
            Some(br#"{"ts":"2026-01-01T00:00:00.000Z","host":"10.0.0.1","n":1}"#),
        ),
        (
            0,
            Some(b"b"),
            Some(br#"{"ts":"2026-01-01T00:00:01.500Z","host":"q \" b \\ \u00e9","n":2}"#),
        ),
        (
            0,
            None,
            Some(br#"{"ts":1767225603000,"host":"10.0.0.3","n":3}"#),
        ),
        (
            0,
            Some(b"a"),
            Some(br#"{"ts":"2026-01-01T00:00:02.000Z","host":"late","n":4}"#),
        ),
        (
            0,
            Some(b"c"),
            Some(br#"{"ts":"2026-01-01T00:00:05.000Z","host":null,"n":5}"#),
        ),
        (
            1,
            Some(b"d"),
            Some(br#"{"ts":"2026-01-01T00:00:00.250Z","host":"10.0.1.1","n":6}"#),
        ),
        (
            1,
            Some(b"e"),
            Some(br#"{"ts":"2026-01-01T00:00:03.000Z","host":"10.0.1.2","n":7}"#),
        ),
        (
            1,
            Some(b"d"),
            Some(br#"{"ts":"2026-01-01T00:00:04.000Z","host":"10.0.1.3","n":8}"#),
        ),
        (
            1,
            Some(b"f"),
            Some(br#"{"ts":"2026-01-01T00:00:04.500Z","host":"10.0.1.4","n":9}"#),
        ),
    ]
}

fn source_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp),
        Field::new("host", DataType::String),
        Field::new("n", DataType::Int),
        Field::new("key", DataType::String),
        Field::new("partition", DataType::Int),
        Field::new("offset", DataType::Int),
        Field::new("appended", DataType::Int),
    ]))
}

impl KafkaSourceFixture {
    pub fn new() -> KafkaSourceFixture {
        let clean = Broker::start();
        let corrupt = Broker::start();
        for b in [&clean, &corrupt] {
            b.create_topic(SOURCE_TOPIC, 2);
            b.produce(SOURCE_TOPIC, &source_records());
        }
        corrupt.produce(
            SOURCE_TOPIC,
            &[(1, Some(b"g"), Some(br#"{"ts":"2026-01-01T00:0"#))],
        );
        KafkaSourceFixture { clean, corrupt }
    }

    fn build_on(broker: &Broker) -> Box<dyn Source> {
        let schema = source_schema();
        let spec = KafkaSourceSpec {
            node: "contract".into(),
            client: Client::plain(&broker.addr),
            topics: Topics::Names(vec![SOURCE_TOPIC.into()]),
            group: None,
            start: Start::Earliest,
            poll_interval: Duration::from_millis(5),
            metadata: MetadataColumns {
                key: Some((3, KeyType::Text)),
                partition: Some(4),
                offset: Some(5),
                timestamp: Some((6, TimeType::Millis)),
                ..MetadataColumns::default()
            },
            links: None,
            instance: 0,
            parallelism: 1,
        };
        let decoder = JsonRecords(JsonDecoder::new(schema, EventTimeSource::Field(0)));
        Box::new(KafkaSource::new(spec, decoder).expect("a Kafka source"))
    }
}

impl Default for KafkaSourceFixture {
    fn default() -> Self {
        KafkaSourceFixture::new()
    }
}

impl SourceFixture for KafkaSourceFixture {
    fn name(&self) -> &str {
        "kafka"
    }

    fn build(&self) -> Box<dyn Source> {
        KafkaSourceFixture::build_on(&self.clean)
    }

    fn corrupt(&self) -> Option<CorruptInput<'_>> {
        Some(CorruptInput {
            build: Box::new(|| KafkaSourceFixture::build_on(&self.corrupt)),
            position: "offset 4".into(),
        })
    }

    fn limit(&self) -> Option<usize> {
        Some(source_records().len())
    }
}

// ---------------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------------

/// The Kafka sink, at-least-once or exactly-once, each target a new topic of one partition
/// on the process's shared broker (with its spool directory and transactional id). Its
/// records go one per batch, so the broker's high watermark is exact and `visible` reads
/// to it.
pub struct KafkaSinkFixture {
    exactly_once: bool,
}

impl KafkaSinkFixture {
    pub fn at_least_once() -> KafkaSinkFixture {
        KafkaSinkFixture {
            exactly_once: false,
        }
    }

    pub fn exactly_once() -> KafkaSinkFixture {
        KafkaSinkFixture { exactly_once: true }
    }
}

struct Topic {
    broker: &'static Broker,
    topic: String,
    spool: TempDir,
    transactional_id: String,
    exactly_once: bool,
}

impl SinkTarget for Topic {
    fn sink(&self, schema: SchemaRef) -> Box<dyn Sink> {
        let mut client = Client::plain(&self.broker.addr);
        client.set("linger.ms", "0");
        client.set("batch.num.messages", "1");
        let delivery = if self.exactly_once {
            Delivery::ExactlyOnce {
                spool_dir: self.spool.path().join("0"),
                transactional_id: self.transactional_id.clone(),
            }
        } else {
            Delivery::AtLeastOnce
        };
        Box::new(KafkaSink::new(KafkaSinkSpec {
            node: "rows".into(),
            client,
            topic: self.topic.clone(),
            schema,
            columns: None,
            key: KeySpec::Column(0),
            delivery,
            debezium: None,
            carries: None,
        }))
    }

    fn visible(&self, schema: &SchemaRef) -> Vec<Vec<Value>> {
        read_topic(&self.broker.addr, &self.topic)
            .into_iter()
            .map(|(_, value)| {
                let decoder = JsonDecoder::new(schema.clone(), EventTimeSource::None);
                let mut b = Batch::new(schema.clone());
                decoder
                    .decode_into(&value, &mut b, 0)
                    .unwrap_or_else(|e| panic!("a record of {} does not decode: {e}", self.topic));
                b.row(0).to_vec()
            })
            .collect()
    }
}

impl SinkFixture for KafkaSinkFixture {
    fn name(&self) -> &str {
        if self.exactly_once {
            "kafka (exactly once)"
        } else {
            "kafka (at least once)"
        }
    }

    fn guarantee(&self) -> Guarantee {
        if self.exactly_once {
            Guarantee::ExactlyOnce
        } else {
            Guarantee::AtLeastOnce
        }
    }

    fn target(&self) -> Box<dyn SinkTarget> {
        static BROKER: OnceLock<&'static Broker> = OnceLock::new();
        let broker = *BROKER.get_or_init(Broker::shared);
        let topic = unique("sink");
        broker.create_topic(&topic, 1);
        Box::new(Topic {
            broker,
            transactional_id: unique("tx"),
            topic,
            spool: tempfile::tempdir().expect("a temp dir"),
            exactly_once: self.exactly_once,
        })
    }

    fn known_gaps(&self) -> Vec<(crate::testing::contract::SinkCheck, &'static str)> {
        if self.exactly_once {
            vec![(
                crate::testing::contract::SinkCheck::Rerun,
                "a topic cannot be cut back: a run without a checkpoint appends its output \
                 again (restart from a checkpoint, or write to a new topic)",
            )]
        } else {
            Vec::new()
        }
    }
}

/// Every committed record of `topic` (`read_committed`), partition by partition up to its
/// high watermark: (key, value).
pub fn read_topic(brokers: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_committed")
        .set("group.id", "watershed.tests.reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut out = Vec::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("a partition");
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut reached = false;
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    out.push((
                        m.key().map(<[u8]>::to_vec),
                        m.payload().unwrap_or_default().to_vec(),
                    ));
                    // Not a stop: tansu's high watermark can fall short of a topic
                    // written in batches of several records; read on until quiet.
                    reached |= m.offset() + 1 >= high;
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {
                    // Transaction markers take offsets too: the last record may be before
                    // `high - 1`; stop once nothing more comes.
                    let position = consumer.position().expect("position");
                    let at = position
                        .find_partition(topic, p)
                        .and_then(|e| e.offset().to_raw())
                        .unwrap_or(-1);
                    if reached || at >= high - 1 || Instant::now() > deadline {
                        break;
                    }
                }
            }
        }
    }
    out
}
