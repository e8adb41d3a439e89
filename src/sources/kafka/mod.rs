//! The Kafka source: records of one or more topics (or a topic pattern), each Kafka
//! partition its own source partition (`topic/3`) with its own watermark and idleness.
//!
//! Two ways to get partitions:
//! - **a consumer group** (`group`): the group's coordinator spreads the topics' partitions
//!   over the instances of every process started with the same group; a rebalance assigns
//!   and revokes them (`ReadStatus::PartitionsChanged`: a new partition starts without a
//!   watermark and does not move the source's back, a revoked one stops holding it).
//!   Rebalances are incremental (`cooperative-sticky` unless `properties` say otherwise). A
//!   revoked partition is **handed over at a checkpoint**: it is paused at once (nothing more
//!   of it is read or emitted), the source asks for a checkpoint (`wants_checkpoint`), and
//!   when a durable checkpoint covers everything read of it, its offset is committed
//!   synchronously and only then is it released to the group, so its next owner starts
//!   exactly where this instance stopped: nothing is read twice or skipped. Partitions lost
//!   to an expired session cannot be handed over (the next owner starts at the last
//!   committed offset). A partition that comes back after another member owned it starts
//!   at the group's committed offset when that is further than this instance's checkpoint;
//! - **assigned** (no group): every partition of the topics, split over the source's
//!   instances by index (`i % parallelism`), read from the start or from the checkpoint.
//!
//! Positions are offsets: a partition's position is the offset of its next record (`None`
//! until a record was read or a position restored: the partition then starts where `start`
//! says, or at the group's committed offset). Offsets live in checkpoints and a restore
//! seeks there; the group's committed offsets are used only for partitions the checkpoint
//! does not hold. Offsets are committed to the group only when the checkpoint holding them
//! is durable (`checkpoint_complete`), so lag tools are truthful and a crash never skips.
//! When the pipeline's exactly-once Kafka sink carries the group's offsets
//! (`crate::kafka::offsets`), this source commits none: it records them at each barrier, and
//! releases a handed-over partition (or closes) only once the transaction holding them has
//! committed.
//!
//! A partition is caught up when the client's queue holds nothing for it and its position
//! has reached the high watermark librdkafka last saw (no broker call): that, for
//! `idle_timeout`, is what makes it idle — never a slow consumer.
//!
//! Each record's value is decoded by the source's `RecordDecoder` (JSON rows of the
//! `schema`, or Debezium changes); the record's key, topic, partition, offset, timestamp and
//! headers can be columns (`metadata`). Its event time is the event-time field, or else the
//! record's timestamp (create or log-append time, as the topic keeps it). A record that does
//! not decode goes to `dead_letter` with its topic/partition and offset.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, TopicPartitionList as Tpl};
use serde::{Deserialize, Serialize};

use crate::dataflow::{
    ConnectorPosition, PortSpec, Position, ReadBuffers, ReadStatus, Source, SourcePosition,
};
use crate::dead_letter;
use crate::error::RunError;
use crate::format::DecodeError;
use crate::kafka::group;
use crate::kafka::offsets::{GroupLink, Links};
use crate::kafka::{Client, LogContext, run_error};
use crate::types::{Epoch, EventTime, SchemaRef, Value};

pub mod config;
pub use config::KafkaSourceConfig;

/// How long metadata and assignment calls to the broker may take before they fail (and the
/// run is retried).
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing source waits for the sink's transaction that commits its offsets.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// A partition's position: the offset of its next record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOffset {
    pub topic: String,
    pub partition: i32,
    /// `None`: nothing read yet; the partition starts where `start` (or the group) says.
    pub offset: Option<i64>,
    /// What the decoder remembers across a restart (a change stream's ended snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<serde_json::Value>,
}

impl ConnectorPosition for KafkaOffset {
    const KIND: &'static str = "kafka";
    const VERSION: u32 = 1;
}

/// Where a partition without a checkpointed (or committed) offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// Which topics.
#[derive(Clone, Debug)]
pub enum Topics {
    Names(Vec<String>),
    /// A regular expression over topic names (librdkafka's syntax, `^` added).
    Pattern(String),
}

/// Columns filled from the record rather than its value (indexes into the schema).
#[derive(Clone, Copy, Debug, Default)]
pub struct MetadataColumns {
    pub key: Option<(usize, KeyType)>,
    pub topic: Option<usize>,
    pub partition: Option<usize>,
    pub offset: Option<usize>,
    pub timestamp: Option<(usize, TimeType)>,
    pub headers: Option<usize>,
}

/// How a key column holds the key: text (UTF-8 required) or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Text,
    Bytes,
}

/// How a timestamp column holds the record's timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeType {
    Timestamp,
    Millis,
}

/// One Kafka record as a decoder sees it.
pub struct Record<'a> {
    pub value: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    /// The record's timestamp (ms), when it has one.
    pub timestamp: Option<i64>,
}

/// Turns one record into rows on the source's ports.
pub trait RecordDecoder: Send {
    fn schema(&self) -> SchemaRef;

    fn extra_ports(&self) -> Vec<PortSpec> {
        Vec::new()
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        let _ = consumed;
    }

    /// Decodes `record` of partition `partition` (of topic `topic`) into `out`; `Ok(false)`:
    /// no row for the main port (a change stream's rows go to its table ports). An error
    /// sends the record to `dead_letter`.
    fn decode(
        &mut self,
        partition: usize,
        topic: &str,
        record: &Record<'_>,
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<bool, DecodeError>;

    /// What the decoder must remember across a restart, kept in the positions.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Takes up `state` from restored positions (`None`: start afresh).
    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let _ = state;
        Ok(())
    }

    /// Conditions to show in `/status`.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether progress one record gives (a Debezium heartbeat) holds for every partition
    /// of the source, not only the one it was read from: one connector writes them all.
    fn progress_is_shared(&self) -> bool {
        false
    }

    /// Whether the decoder waits for every partition to be read to its end to finish
    /// something (a change stream's snapshot, after its `last` marker).
    fn waits_for_the_end(&self) -> bool {
        false
    }

    /// Every partition has been read to its end while `waits_for_the_end`: finish it.
    fn at_the_end(&mut self, out: &mut ReadBuffers) {
        let _ = out;
    }
}

/// Debezium change events (JSON, with or without the schema envelope), one topic per table
/// (`<prefix>.<schema>.<table>`) or many tables in one topic, tombstones (skipped and
/// counted) and heartbeats (progress): each record is handed to the change-stream machinery
/// as the `{topic, key, value}` record the file source also reads.
pub struct ChangeRecords {
    decoder: crate::sources::cdc::ChangeDecoder,
    record: Vec<u8>,
}

impl ChangeRecords {
    pub fn new(decoder: crate::sources::cdc::ChangeDecoder) -> ChangeRecords {
        ChangeRecords {
            decoder,
            record: Vec::with_capacity(4096),
        }
    }
}

impl RecordDecoder for ChangeRecords {
    fn schema(&self) -> SchemaRef {
        crate::sources::cdc::main_schema()
    }

    fn extra_ports(&self) -> Vec<PortSpec> {
        use crate::sources::file::LineDecoder;
        self.decoder.extra_ports()
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        use crate::sources::file::LineDecoder;
        self.decoder.connect_ports(consumed)
    }

    fn decode(
        &mut self,
        partition: usize,
        topic: &str,
        record: &Record<'_>,
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<bool, DecodeError> {
        use crate::sources::file::LineDecoder;
        let json = |bytes: Option<&[u8]>, what: &str| -> Result<(), DecodeError> {
            match bytes {
                Some(b) if serde_json::from_slice::<serde::de::IgnoredAny>(b).is_err() => {
                    Err(DecodeError::new(format!("the record's {what} is not JSON")))
                }
                _ => Ok(()),
            }
        };
        // Each must be one JSON value, or it could reach into the record around it.
        json(record.key, "key")?;
        json(record.value, "value")?;
        let r = &mut self.record;
        r.clear();
        r.extend_from_slice(b"{\"topic\":");
        crate::format::json::write_json_str(topic, r);
        r.extend_from_slice(b",\"key\":");
        r.extend_from_slice(record.key.unwrap_or(b"null"));
        r.extend_from_slice(b",\"value\":");
        r.extend_from_slice(record.value.unwrap_or(b"null"));
        r.push(b'}');
        let line = std::mem::take(&mut self.record);
        let result = self.decoder.decode_line(partition, &line, out, now_ms);
        self.record = line;
        result.map(|()| false)
    }

    fn state(&self) -> Option<serde_json::Value> {
        use crate::sources::file::LineDecoder;
        self.decoder.state()
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        use crate::sources::file::LineDecoder;
        self.decoder.restore_state(state)
    }

    fn warnings(&self) -> Vec<String> {
        use crate::sources::file::LineDecoder;
        self.decoder.warnings()
    }

    fn progress_is_shared(&self) -> bool {
        true
    }

    fn waits_for_the_end(&self) -> bool {
        self.decoder.snapshot_end_pending()
    }

    /// The `last` marker ended its own table's snapshot; the tables of the other topics end
    /// theirs once every topic has been read to its end (a table with no rows has no marker
    /// of its own).
    fn at_the_end(&mut self, out: &mut ReadBuffers) {
        self.decoder.end_snapshots(out)
    }
}

/// JSON objects of one schema.
pub struct JsonRecords(pub crate::format::json::JsonDecoder);

impl RecordDecoder for JsonRecords {
    fn schema(&self) -> SchemaRef {
        self.0.schema().clone()
    }

    fn decode(
        &mut self,
        _partition: usize,
        _topic: &str,
        record: &Record<'_>,
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<bool, DecodeError> {
        let value = record
            .value
            .ok_or_else(|| DecodeError::new("the record has no value (a tombstone)"))?;
        self.0
            .decode_into(value, &mut out.records, record.timestamp.unwrap_or(now_ms))?;
        Ok(true)
    }
}

/// What the consumer's rebalance callback shares with the source: offsets to start newly
/// assigned partitions at, and whether the assignment changed since the source last looked.
#[derive(Default)]
struct Shared {
    restored: HashMap<(String, i32), i64>,
    changed: bool,
    /// The partitions read so far and where. A partition handed over to another member is
    /// forgotten (its committed offset is the truth from then on); one revoked while
    /// nothing of it was handed over is kept, and a later assignment goes on from there.
    read_to: HashMap<(String, i32), i64>,
    /// Revoked partitions not handed over yet: paused, still assigned, released once a
    /// checkpoint covers what was read of them (`KafkaSource::hand_over`).
    revoking: Vec<(String, i32)>,
    /// The revocation was eager (the whole assignment): release it with `unassign`.
    eager: bool,
    /// Rebalances this member took part in (assignments and revocations).
    rebalances: u64,
    /// Partitions handed over to other members at a checkpoint.
    handed_over: u64,
    /// The source is being dropped: the consumer's close revokes everything, at once.
    closing: bool,
}

/// The consumer's context: logs, and applies restored offsets on assignment.
struct SourceContext {
    log: LogContext,
    shared: Arc<Mutex<Shared>>,
    /// Told the member's generation after every rebalance, when a sink carries the offsets.
    link: Option<Arc<GroupLink>>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason)
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result = match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Start each partition where this run left it (it never handed it over);
                // else where the checkpoint left it, unless another member has committed
                // further since (it owned the partition meanwhile); else at the group's
                // committed offset, else `auto.offset.reset`.
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                let committed = committed_of(consumer, tpl, &shared.restored);
                for mut e in tpl.elements() {
                    let key = (e.topic().to_string(), e.partition());
                    let at = match (shared.read_to.get(&key), shared.restored.get(&key)) {
                        (Some(&o), _) => Some(o),
                        (None, Some(&o)) => Some(o.max(committed.get(&key).copied().unwrap_or(o))),
                        (None, None) => None,
                    };
                    if let Some(o) = at {
                        let _ = e.set_offset(Offset::Offset(o));
                    }
                }
                shared.changed = true;
                shared.rebalances += 1;
                metrics::counter!(crate::metrics::GROUP_REBALANCES, crate::metrics::LABEL_SOURCE => self.log.node.clone()).increment(1);
                // A partition handed over earlier was paused by this consumer, and librdkafka
                // keeps an application's pause across assignments: coming back, it reads.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(node = %self.log.node, error = %e, "kafka: resuming assigned partitions failed");
                }
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                shared.changed = true;
                shared.rebalances += 1;
                metrics::counter!(crate::metrics::GROUP_REBALANCES, crate::metrics::LABEL_SOURCE => self.log.node.clone()).increment(1);
                // Closing (the run stops): what was read is in the last checkpoint, whose
                // offsets are committed, and nothing waits any more. Lost (the session
                // expired): another member may read them already, from the group's committed
                // offsets. Either way they are released at once, with no hand-over.
                let closing = shared.closing || consumer.closed();
                if closing || consumer.assignment_lost() {
                    if !closing {
                        tracing::warn!(node = %self.log.node, partitions = tpl.count(), "kafka: partitions lost (the session expired); another member reads them from the group's committed offsets");
                    }
                    for e in tpl.elements() {
                        let key = (e.topic().to_string(), e.partition());
                        shared.revoking.retain(|k| *k != key);
                        if !closing {
                            shared.read_to.remove(&key);
                            shared.restored.remove(&key);
                        }
                    }
                    if cooperative {
                        consumer.incremental_unassign(tpl)
                    } else {
                        consumer.unassign()
                    }
                } else {
                    // Hand over at a checkpoint: read them no more from now on, and release
                    // them once a checkpoint covers what was read of them and their offsets
                    // are committed, so the next owner starts exactly there. The group
                    // waits for the release (within `max.poll.interval.ms`).
                    for e in tpl.elements() {
                        let key = (e.topic().to_string(), e.partition());
                        if !shared.revoking.contains(&key) {
                            shared.revoking.push(key);
                        }
                    }
                    shared.eager = !cooperative;
                    consumer.pause(tpl)
                }
            }
            other => {
                tracing::warn!(node = %self.log.node, error = ?other, "kafka: rebalance failed; the group retries");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(node = %self.log.node, error = %e, "kafka: applying a rebalance failed");
        }
        if let Some(link) = &self.link {
            link.set_metadata(consumer.group_metadata());
        }
    }
}

/// One partition this instance reads.
struct Part {
    topic: String,
    topic_c: CString,
    partition: i32,
    name: String,
    /// Offset of the next record to return; `None` before the first.
    next: Option<i64>,
    /// The shared progress (heartbeat) this partition was given last.
    given: Option<EventTime>,
    /// Revoked by the group and being handed over: read no more.
    handing_over: bool,
}

/// What decoding needs, apart from the consumer (records borrow the consumer).
struct Reader<D> {
    node: String,
    parts: Vec<Part>,
    decoder: D,
    metadata: MetadataColumns,
}

impl<D: RecordDecoder> Reader<D> {
    /// Decodes one record of partition `i` into `out`.
    fn take(&mut self, i: usize, m: &impl Message, out: &mut ReadBuffers, now_ms: i64) {
        let record = Record {
            value: m.payload(),
            key: m.key(),
            timestamp: m.timestamp().to_millis(),
        };
        let before = out.records.len();
        let key_ok = match (self.metadata.key, record.key) {
            (Some((_, KeyType::Text)), Some(k)) => std::str::from_utf8(k).is_ok(),
            _ => true,
        };
        let decoded = if key_ok {
            self.decoder
                .decode(i, &self.parts[i].topic, &record, out, now_ms)
        } else {
            Err(DecodeError::new(
                "the record's key is not UTF-8 text (declare its column as bytes)",
            ))
        };
        match decoded {
            Ok(true) => {
                if out.records.len() > before {
                    self.fill_metadata(i, m, out);
                }
            }
            Ok(false) => {}
            Err(e) => {
                let at: EventTime = record.timestamp.unwrap_or(now_ms);
                dead_letter::push(
                    &mut out.dead_letters,
                    &self.node,
                    &self.parts[i].name,
                    &format!("offset {}", m.offset()),
                    &e.reason,
                    m.payload().unwrap_or_default(),
                    at,
                );
            }
        }
        self.parts[i].next = Some(m.offset() + 1);
    }

    fn fill_metadata(&self, i: usize, m: &impl Message, out: &mut ReadBuffers) {
        let meta = self.metadata;
        let p = &self.parts[i];
        let width = out.records.width();
        let (values, _) = out.records.values_mut();
        let len = values.len();
        let row = &mut values[len - width..];
        if let Some((c, t)) = meta.key {
            row[c] = match (m.key(), t) {
                (None, _) => Value::Null,
                (Some(k), KeyType::Bytes) => Value::Bytes(k.into()),
                (Some(k), KeyType::Text) => Value::from(String::from_utf8_lossy(k).as_ref()),
            };
        }
        if let Some(c) = meta.topic {
            row[c] = Value::from(p.topic.as_str());
        }
        if let Some(c) = meta.partition {
            row[c] = Value::Int(i64::from(p.partition));
        }
        if let Some(c) = meta.offset {
            row[c] = Value::Int(m.offset());
        }
        if let Some((c, t)) = meta.timestamp {
            row[c] = match (m.timestamp().to_millis(), t) {
                (Some(ms), TimeType::Timestamp) => Value::Timestamp(ms.saturating_mul(1000)),
                (Some(ms), TimeType::Millis) => Value::Int(ms),
                (None, _) => Value::Null,
            };
        }
        if let Some(c) = meta.headers {
            row[c] = headers_json(m);
        }
    }
}

/// How the source gets its partitions.
enum Mode {
    /// A consumer group assigns them.
    Group {
        group: String,
        /// What the source subscribed to (the topics whose partitions should have owners).
        topics: Topics,
        /// What this member sees of its group.
        seen: Box<GroupSeen>,
    },
    /// Fixed at the start: these `(topic, partition)`s.
    Assigned { partitions: Vec<(String, i32)> },
}

/// What a member knows of its group: its own generation (read at rebalances) and the
/// group's latest description (`group::Watcher`, every 10 s and after rebalances).
struct GroupSeen {
    membership: Option<group::Membership>,
    watcher: group::Watcher,
    /// The watcher's description taken up last (`Watcher::newer_than`).
    described: u64,
    view: Option<group::GroupView>,
    /// Since when some partition has had no owner (continuously), processing time.
    unowned_since_ms: Option<i64>,
    /// Why the last description failed.
    error: Option<String>,
}

/// Everything a Kafka source instance needs to start.
pub struct KafkaSourceSpec {
    pub node: String,
    pub client: Client,
    pub topics: Topics,
    pub group: Option<String>,
    pub start: Start,
    pub poll_interval: Duration,
    pub metadata: MetadataColumns,
    pub instance: usize,
    pub parallelism: usize,
    /// Group mode: where the pipeline's exactly-once Kafka sink picks up the offsets it
    /// commits in its transactions (`crate::kafka::offsets`).
    pub links: Option<Arc<Links>>,
}

/// Reads Kafka records into rows.
pub struct KafkaSource<D: RecordDecoder> {
    node: String,
    consumer: BaseConsumer<SourceContext>,
    shared: Arc<Mutex<Shared>>,
    mode: Mode,
    start: Start,
    r: Reader<D>,
    /// Assigned mode: the assignment is made at the first read (after `seek`).
    assigned: bool,
    /// A record of another partition than the one being returned, for the next call.
    carry: Option<OwnedMessage>,
    /// The latest shared progress read (a Debezium heartbeat's time).
    heartbeat: Option<EventTime>,
    /// Shared progress still to hand to partitions, one per call.
    progress_queue: Vec<(usize, EventTime)>,
    poll_interval_ms: i64,
    /// Group mode with an exactly-once Kafka sink: it commits the offsets, in its
    /// transactions; this source commits none.
    link: Option<Arc<GroupLink>>,
    /// Partitions ready to be released once the transaction holding the offsets of this
    /// epoch has committed.
    release_after: Vec<(Epoch, Vec<(String, i32)>)>,
    /// The last checkpoint known durable (`checkpoint_complete`): closing waits for its
    /// transaction (a barrier after it may never complete).
    last_complete: Option<Epoch>,
}

impl<D: RecordDecoder> KafkaSource<D> {
    /// Connects (no records are fetched before the first read). In assigned mode the
    /// topics' partitions are looked up now: a topic that does not exist is an error.
    pub fn new(spec: KafkaSourceSpec, decoder: D) -> Result<KafkaSource<D>, RunError> {
        KafkaSource::open(spec, decoder, &[], true)
    }

    /// As `new`, also reading the topics in `optional` that exist now (a Debezium heartbeat
    /// topic, which exists only when heartbeats are on).
    pub fn new_with_optional(
        spec: KafkaSourceSpec,
        decoder: D,
        optional: &[String],
    ) -> Result<KafkaSource<D>, RunError> {
        KafkaSource::open(spec, decoder, optional, true)
    }

    /// An instance with no partitions (another instance reads them all): it ends at once.
    pub fn idle(spec: KafkaSourceSpec, decoder: D) -> Result<KafkaSource<D>, RunError> {
        KafkaSource::open(spec, decoder, &[], false)
    }

    fn open(
        spec: KafkaSourceSpec,
        decoder: D,
        optional: &[String],
        read: bool,
    ) -> Result<KafkaSource<D>, RunError> {
        let node = spec.node.clone();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let reset = match spec.start {
            Start::Earliest => "earliest",
            Start::Latest => "latest",
        };
        let mut owned = vec![
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", reset),
        ];
        // librdkafka needs a group id even to assign partitions; without `group` it names
        // no group that is ever joined or committed to.
        let unjoined = format!("watershed.{}.unjoined", spec.node);
        owned.push(("group.id", spec.group.as_deref().unwrap_or(&unjoined)));
        let link = match (&spec.group, &spec.links) {
            (Some(_), Some(links)) => Some(links.open(&node)).filter(|l| l.carried),
            _ => None,
        };
        let context = SourceContext {
            log: LogContext::new(&node),
            shared: shared.clone(),
            link: link.clone(),
        };
        let mut config = spec.client.config(&owned);
        if config.get("partition.assignment.strategy").is_none() {
            // Incremental rebalances: a member joining or leaving moves only the partitions
            // that change owner, and only they wait for their hand-over.
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        let consumer: BaseConsumer<SourceContext> = config
            .create_with_context(context)
            .map_err(|e| run_error(&node, "creating the consumer", &e))?;
        let mode = match &spec.group {
            Some(group) => {
                let subscription: Vec<String> = match &spec.topics {
                    Topics::Names(names) => names.clone(),
                    Topics::Pattern(p) => {
                        vec![if p.starts_with('^') {
                            p.clone()
                        } else {
                            format!("^{p}")
                        }]
                    }
                };
                let refs: Vec<&str> = subscription.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&refs)
                    .map_err(|e| run_error(&node, "subscribing", &e))?;
                let watched = match &spec.topics {
                    Topics::Names(names) => names.clone(),
                    Topics::Pattern(_) => Vec::new(),
                };
                Mode::Group {
                    group: group.clone(),
                    topics: spec.topics.clone(),
                    seen: Box::new(GroupSeen {
                        membership: None,
                        watcher: group::Watcher::start(&node, &spec.client, group, watched),
                        described: 0,
                        view: None,
                        unowned_since_ms: None,
                        error: None,
                    }),
                }
            }
            None if !read => Mode::Assigned {
                partitions: Vec::new(),
            },
            None => {
                let all = list_partitions(&consumer, &node, &spec.topics, optional)?;
                let partitions = all
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| i % spec.parallelism.max(1) == spec.instance)
                    .map(|(_, p)| p)
                    .collect();
                Mode::Assigned { partitions }
            }
        };
        let mut source = KafkaSource {
            node,
            consumer,
            shared,
            mode,
            start: spec.start,
            r: Reader {
                node: spec.node.clone(),
                parts: Vec::new(),
                decoder,
                metadata: spec.metadata,
            },
            assigned: false,
            carry: None,
            heartbeat: None,
            progress_queue: Vec::new(),
            poll_interval_ms: spec.poll_interval.as_millis().max(1) as i64,
            link,
            release_after: Vec::new(),
            last_complete: None,
        };
        if let Mode::Assigned { partitions } = &source.mode {
            let list = partitions.clone();
            source.set_parts(list);
        }
        Ok(source)
    }

    fn set_parts(&mut self, list: Vec<(String, i32)>) {
        let old: HashMap<(String, i32), Option<i64>> = self
            .r
            .parts
            .drain(..)
            .map(|p| ((p.topic, p.partition), p.next))
            .collect();
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        self.r.parts = list
            .into_iter()
            .map(|(topic, partition)| {
                let key = (topic.clone(), partition);
                let next = old
                    .get(&key)
                    .copied()
                    .flatten()
                    .or_else(|| shared.read_to.get(&key).copied())
                    .or_else(|| shared.restored.get(&key).copied());
                Part {
                    topic_c: CString::new(topic.as_str()).unwrap_or_default(),
                    name: format!("{topic}/{partition}"),
                    topic,
                    partition,
                    next,
                    given: None,
                    handing_over: shared.revoking.contains(&key),
                }
            })
            .collect();
    }

    /// Assigned mode: assigns the partitions, each from its position or from `start`.
    fn assign(&mut self) -> Result<(), RunError> {
        let mut tpl = Tpl::new();
        for p in &self.r.parts {
            let offset = match (p.next, self.start) {
                (Some(o), _) => Offset::Offset(o),
                (None, Start::Earliest) => Offset::Beginning,
                (None, Start::Latest) => Offset::End,
            };
            tpl.add_partition_offset(&p.topic, p.partition, offset)
                .map_err(|e| run_error(&self.node, "assigning partitions", &e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| run_error(&self.node, "assigning partitions", &e))?;
        self.assigned = true;
        Ok(())
    }

    /// Group mode: the partitions the group assigned now, in a stable order.
    fn group_assignment(&self) -> Result<Vec<(String, i32)>, RunError> {
        let tpl = self
            .consumer
            .assignment()
            .map_err(|e| run_error(&self.node, "reading the assignment", &e))?;
        let mut list: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        list.sort();
        Ok(list)
    }

    /// Whether partition `i` has nothing more to read as far as the client knows: its
    /// position has reached the high watermark last fetched (cached, no broker call).
    fn at_end(&self, i: usize) -> bool {
        let p = &self.r.parts[i];
        if p.handing_over {
            return true;
        }
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: a valid client pointer, a NUL-terminated topic name and two out-parameters;
        // librdkafka only reads its cache.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                p.topic_c.as_ptr(),
                p.partition,
                &mut low,
                &mut high,
            )
        };
        if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
            // Nothing fetched yet: it may hold records.
            return false;
        }
        match p.next {
            Some(next) => next >= high,
            None => high <= low,
        }
    }
}

/// The record's headers as a JSON object (name → text, or base64 when not UTF-8; a
/// repeated name keeps its last value).
fn headers_json(m: &impl Message) -> Value {
    let Some(headers) = m.headers() else {
        return Value::Null;
    };
    let mut map = serde_json::Map::new();
    for h in headers.iter() {
        let v = match h.value {
            None => serde_json::Value::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => serde_json::Value::String(s.to_string()),
                Err(_) => {
                    use base64::Engine as _;
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b))
                }
            },
        };
        map.insert(h.key.to_string(), v);
    }
    Value::Json(serde_json::Value::Object(map).to_string().into())
}

/// The group's committed offsets of the partitions in `tpl` that have a restored position
/// (none asked when none has: a fresh start needs no broker call).
fn committed_of(
    consumer: &BaseConsumer<SourceContext>,
    tpl: &TopicPartitionList,
    restored: &HashMap<(String, i32), i64>,
) -> HashMap<(String, i32), i64> {
    let mut ask = Tpl::new();
    for e in tpl.elements() {
        if restored.contains_key(&(e.topic().to_string(), e.partition())) {
            ask.add_partition(e.topic(), e.partition());
        }
    }
    if ask.count() == 0 {
        return HashMap::new();
    }
    match consumer.committed_offsets(ask, BROKER_TIMEOUT) {
        Ok(got) => got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "kafka: reading the group's committed offsets failed; starting from the checkpoint's");
            HashMap::new()
        }
    }
}

/// Every partition of `topics`, sorted; a named topic that does not exist is an error.
fn list_partitions(
    consumer: &BaseConsumer<SourceContext>,
    node: &str,
    topics: &Topics,
    optional: &[String],
) -> Result<Vec<(String, i32)>, RunError> {
    let metadata = consumer
        .fetch_metadata(None, BROKER_TIMEOUT)
        .map_err(|e| run_error(node, "reading the topics' metadata", &e))?;
    let mut out = Vec::new();
    match topics {
        Topics::Names(names) => {
            for name in names {
                let Some(t) = metadata.topics().iter().find(|t| t.name() == name) else {
                    return Err(RunError::External {
                        component: node.to_string(),
                        message: format!("kafka: topic `{name}` does not exist"),
                        class: crate::error::ErrorClass::Definite,
                    });
                };
                out.extend(t.partitions().iter().map(|p| (name.clone(), p.id())));
            }
        }
        Topics::Pattern(_) => {
            return Err(RunError::build(
                node,
                "a topic pattern needs a consumer group (`group`)",
            ));
        }
    }
    for name in optional {
        match metadata.topics().iter().find(|t| t.name() == name) {
            Some(t) if !t.partitions().is_empty() => {
                out.extend(t.partitions().iter().map(|p| (name.clone(), p.id())));
            }
            _ => {
                tracing::info!(node = %node, topic = %name, "kafka: topic not there (yet); not read")
            }
        }
    }
    out.sort();
    Ok(out)
}

impl<D: RecordDecoder> Source for KafkaSource<D> {
    fn schema(&self) -> SchemaRef {
        self.r.decoder.schema()
    }

    fn partitions(&self) -> Vec<String> {
        self.r.parts.iter().map(|p| p.name.clone()).collect()
    }

    fn extra_ports(&self) -> Vec<PortSpec> {
        self.r.decoder.extra_ports()
    }

    fn read(
        &mut self,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<ReadStatus, RunError> {
        if let Mode::Assigned { partitions } = &self.mode
            && partitions.is_empty()
        {
            return Ok(ReadStatus::Finished);
        }
        if !self.assigned && matches!(self.mode, Mode::Assigned { .. }) {
            self.assign()?;
        }
        self.release_committed();
        self.describe_group(now_ms);
        if self.take_change()? {
            self.progress_queue.clear();
            return Ok(ReadStatus::PartitionsChanged);
        }
        if let Some((i, t)) = self.progress_queue.pop() {
            out.progress = Some(t);
            return Ok(ReadStatus::Data { partition: i });
        }
        let mut current: Option<usize> = None;
        let mut n = 0;
        if let Some(m) = self.carry.take() {
            // A partition revoked since is another instance's now.
            if let Some(i) = self.index_of(&m)
                && !self.r.parts[i].handing_over
            {
                self.r.take(i, &m, out, now_ms);
                current = Some(i);
                n += 1;
            }
        }
        while n < max_records.max(1) {
            let Some(polled) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let m = match polled {
                Ok(m) => m,
                Err(e) => {
                    if crate::kafka::class_of(&e) == crate::error::ErrorClass::Definite {
                        return Err(run_error(&self.node, "reading", &e));
                    }
                    self.consumer.context().log.transport_error(&e);
                    break;
                }
            };
            let Some(i) = self.index_of(&m) else {
                // A partition assigned by a rebalance during this poll: next call.
                self.carry = Some(m.detach());
                break;
            };
            if self.r.parts[i].handing_over {
                // Fetched before the pause: the next owner reads it.
                continue;
            }
            match current {
                None => current = Some(i),
                Some(c) if c != i => {
                    out.ready.push(i);
                    self.carry = Some(m.detach());
                    break;
                }
                Some(_) => {}
            }
            self.r.take(i, &m, out, now_ms);
            n += 1;
        }
        if let Some(i) = current {
            self.consumer.context().log.recovered();
            if let Some(t) = out.progress
                && self.r.decoder.progress_is_shared()
            {
                self.heartbeat = self.heartbeat.max(Some(t));
                self.r.parts[i].given = self.r.parts[i].given.max(Some(t));
                self.share_progress();
            }
            return Ok(ReadStatus::Data { partition: i });
        }
        for i in 0..self.r.parts.len() {
            if self.at_end(i) {
                out.caught_up.push(i);
            }
        }
        if self.r.decoder.waits_for_the_end()
            && !self.r.parts.is_empty()
            && out.caught_up.len() == self.r.parts.len()
        {
            self.r.decoder.at_the_end(out);
            out.caught_up.clear();
            return Ok(ReadStatus::Data { partition: 0 });
        }
        self.share_progress();
        if let Some((i, t)) = self.progress_queue.pop() {
            out.caught_up.clear();
            out.progress = Some(t);
            return Ok(ReadStatus::Data { partition: i });
        }
        Ok(ReadStatus::Pending {
            retry_at_ms: now_ms + self.poll_interval_ms,
        })
    }

    fn positions(&self) -> Vec<SourcePosition> {
        let decoder = self.r.decoder.state();
        self.r
            .parts
            .iter()
            .map(|p| SourcePosition {
                source: self.node.clone(),
                partition: p.name.clone(),
                position: Position::of(&KafkaOffset {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    offset: p.next,
                    decoder: decoder.clone(),
                }),
            })
            .collect()
    }

    fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError> {
        let mut restored = HashMap::new();
        let mut decoder = None;
        for sp in positions {
            let o: KafkaOffset = sp
                .position
                .decode()
                .map_err(|e| RunError::restore(&self.node, e))?;
            if sp.partition != format!("{}/{}", o.topic, o.partition) {
                return Err(RunError::restore(
                    &self.node,
                    format!(
                        "position {} is recorded for partition `{}`",
                        sp.position, sp.partition
                    ),
                ));
            }
            decoder = decoder.or(o.decoder);
            if let Some(off) = o.offset {
                if off < 0 {
                    return Err(RunError::restore(
                        &self.node,
                        format!("position {} has a negative offset", sp.position),
                    ));
                }
                restored.insert((o.topic, o.partition), off);
            }
        }
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.restored = restored.clone();
            shared.read_to.clear();
        }
        for p in &mut self.r.parts {
            p.next = restored.get(&(p.topic.clone(), p.partition)).copied();
        }
        self.r
            .decoder
            .restore_state(decoder.as_ref())
            .map_err(|e| RunError::restore(&self.node, e))?;
        if self.assigned {
            self.assign()?;
        }
        Ok(())
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        self.r.decoder.connect_ports(consumed)
    }

    fn warnings(&self) -> Vec<String> {
        self.r.decoder.warnings()
    }

    fn wants_checkpoint(&self) -> bool {
        self.r.parts.iter().any(|p| p.handing_over)
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let Mode::Group { seen, .. } = &self.mode else {
            return Vec::new();
        };
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let handing = self.r.parts.iter().filter(|p| p.handing_over).count() as u64;
        let mut stats = vec![
            ("group_rebalances", shared.rebalances),
            (
                "group_partitions_owned",
                self.r.parts.len() as u64 - handing,
            ),
            ("group_partitions_handing_over", handing),
            ("group_partitions_handed_over", shared.handed_over),
        ];
        if let Some(m) = &seen.membership {
            stats.push(("group_generation", m.generation.max(0) as u64));
        }
        if let Some(v) = &seen.view {
            stats.push(("group_members", v.members.len() as u64));
            if let Some(u) = &v.unowned {
                stats.push(("group_partitions_unowned", u.len() as u64));
            }
        }
        if let Some(t) = seen.unowned_since_ms {
            stats.push(("group_unowned_since_ms", t.max(0) as u64));
        }
        stats
    }

    fn info(&self) -> Vec<(&'static str, String)> {
        let Mode::Group { group, seen, .. } = &self.mode else {
            return Vec::new();
        };
        let mut info = vec![("group", group.clone())];
        if let Some(m) = &seen.membership {
            info.push(("group_member_id", m.member_id.clone()));
        }
        if let Some(v) = &seen.view {
            info.push(("group_state", v.state.clone()));
            let members: Vec<String> = v
                .members
                .iter()
                .map(|m| format!("{} ({}): {}", m.id, m.host, m.partitions.join(" ")))
                .collect();
            info.push(("group_members", members.join("; ")));
            match &v.unowned {
                Some(u) if !u.is_empty() => info.push(("group_partitions_unowned", u.join(" "))),
                Some(_) => {}
                None => info.push((
                    "group_assignments",
                    "not reported by the broker: who owns what is unknown".into(),
                )),
            }
            if v.undecodable > 0 {
                info.push((
                    "group_assignments_undecodable",
                    format!("{} members' assignments did not decode", v.undecodable),
                ));
            }
        }
        if let Some(e) = &seen.error {
            info.push(("group_describe_error", e.clone()));
        }
        info
    }

    fn barrier(&mut self, epoch: Epoch, positions: &[SourcePosition]) {
        let Some(link) = &self.link else { return };
        // Every partition still assigned, a revoked one waiting for its hand-over included:
        // its offset commits with the epoch that hands it over.
        let offsets = positions
            .iter()
            .filter_map(|sp| sp.position.decode::<KafkaOffset>().ok())
            .filter_map(|o| Some((o.topic, o.partition, o.offset?)))
            .filter(|(t, p, _)| {
                self.r
                    .parts
                    .iter()
                    .any(|part| part.partition == *p && part.topic == *t)
            })
            .collect();
        link.record(epoch, offsets);
    }

    fn checkpoint_complete(
        &mut self,
        epoch: Epoch,
        positions: &[SourcePosition],
    ) -> Result<(), RunError> {
        let Mode::Group { group, .. } = &self.mode else {
            return Ok(());
        };
        let group = group.clone();
        self.last_complete = Some(epoch);
        let handed = self.hand_over(epoch, positions);
        if self.link.is_some() {
            // The exactly-once sink commits the offsets, in the transaction of the epoch.
            return Ok(());
        }
        let mut tpl = Tpl::new();
        for sp in positions {
            let Ok(o) = sp.position.decode::<KafkaOffset>() else {
                continue;
            };
            // Only partitions this instance still holds: a revoked one is another's now.
            let held = self
                .r
                .parts
                .iter()
                .any(|p| p.partition == o.partition && p.topic == o.topic && !p.handing_over)
                && !handed.contains(&(o.topic.clone(), o.partition));
            let (Some(off), true) = (o.offset, held) else {
                continue;
            };
            let _ = tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(off));
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        // Async: a failed commit (a rebalance took the partition) is logged by librdkafka and
        // repaired by the next checkpoint's; the checkpoint, not the group, is the truth.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(node = %self.node, group = %group, error = %e, "kafka: committing offsets failed for now");
        }
        Ok(())
    }
}

impl<D: RecordDecoder> Drop for KafkaSource<D> {
    fn drop(&mut self) {
        // With the offsets in the sink's transactions, the last checkpoint's are committed
        // only when its transaction is: the partitions go to their next owners after that
        // (bounded: a sink that failed commits nothing).
        if let Some(link) = &self.link
            && let Some(last) = self.last_complete
        {
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while !link.is_committed(last) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !link.is_committed(last) {
                tracing::warn!(node = %self.node, epoch = last, "kafka: closing before the transaction holding the last checkpoint's offsets committed; the next owners start at the offsets committed before");
            }
        }
        // The consumer closes after this: its last revocation must not wait for a hand-over
        // (the run stopped at its last checkpoint, whose offsets are committed).
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closing = true;
    }
}

impl<D: RecordDecoder> KafkaSource<D> {
    /// Group mode, at a durable checkpoint: hands over the revoked partitions it covers —
    /// those read no more since before its barrier (their checkpointed offset is where
    /// reading stopped) — by committing their offsets (synchronously: the next owner starts
    /// there) and releasing them to the group. Returns the partitions handed over.
    fn hand_over(&mut self, epoch: Epoch, positions: &[SourcePosition]) -> Vec<(String, i32)> {
        let checkpointed: HashMap<(String, i32), Option<i64>> = positions
            .iter()
            .filter_map(|sp| sp.position.decode::<KafkaOffset>().ok())
            .map(|o| ((o.topic, o.partition), o.offset))
            .collect();
        let mut ready = Vec::new();
        let mut commit = Tpl::new();
        let waiting: Vec<&(String, i32)> = self.release_after.iter().flat_map(|(_, r)| r).collect();
        for p in self.r.parts.iter().filter(|p| p.handing_over) {
            let key = (p.topic.clone(), p.partition);
            if waiting.contains(&&key) {
                continue;
            }
            let covered = match checkpointed.get(&key) {
                Some(at) => *at == p.next,
                None => p.next.is_none(),
            };
            if !covered {
                continue;
            }
            if let Some(o) = p.next {
                let _ = commit.add_partition_offset(&p.topic, p.partition, Offset::Offset(o));
            }
            ready.push(key);
        }
        if ready.is_empty() {
            return ready;
        }
        if let Some(link) = &self.link {
            // The sink's transaction commits their offsets: release them once it has.
            if !link.is_committed(epoch) {
                self.release_after.push((epoch, ready.clone()));
                return ready;
            }
        } else if commit.count() > 0
            && let Err(e) = self.consumer.commit(&commit, CommitMode::Sync)
        {
            tracing::warn!(node = %self.node, epoch, error = %e, "kafka: committing the offsets of partitions handed over failed: their next owner starts at an older offset and reads some records again");
        }
        self.release(epoch, &ready);
        ready
    }

    /// Releases partitions handed over to the group.
    fn release(&mut self, epoch: Epoch, ready: &[(String, i32)]) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.revoking.retain(|k| !ready.contains(k));
        let released = if shared.eager {
            // Eager: the whole assignment was revoked; it goes back at once or not at all.
            if shared.revoking.is_empty() {
                self.consumer.unassign()
            } else {
                Ok(())
            }
        } else {
            let mut tpl = Tpl::new();
            for (t, p) in ready {
                tpl.add_partition(t, *p);
            }
            self.consumer.incremental_unassign(&tpl)
        };
        if let Err(e) = released {
            tracing::warn!(node = %self.node, error = %e, "kafka: releasing partitions to the group failed");
        }
        for k in ready {
            shared.read_to.remove(k);
            shared.restored.remove(k);
        }
        shared.handed_over += ready.len() as u64;
        metrics::counter!(crate::metrics::GROUP_HANDED_OVER, crate::metrics::LABEL_SOURCE => self.node.clone())
            .increment(ready.len() as u64);
        shared.changed = true;
        drop(shared);
        let names: Vec<String> = ready.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        tracing::info!(node = %self.node, epoch, partitions = ?names, "kafka: partitions handed over at a checkpoint");
    }

    /// Releases the partitions waiting for a transaction that has committed since.
    fn release_committed(&mut self) {
        let Some(link) = self.link.clone() else {
            return;
        };
        let waiting = std::mem::take(&mut self.release_after);
        for (epoch, mut ready) in waiting {
            if link.is_committed(epoch) {
                // A partition lost meanwhile (its session expired) was released already.
                {
                    let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                    ready.retain(|k| shared.revoking.contains(k));
                }
                if !ready.is_empty() {
                    self.release(epoch, &ready);
                }
            } else {
                self.release_after.push((epoch, ready));
            }
        }
    }

    /// Queues the latest heartbeat for every partition that has nothing left to read and has
    /// not had it: one connector writes all of a change stream's topics in commit order, so
    /// a heartbeat at `t` says such a partition holds nothing before `t` either. A partition
    /// with records still to read keeps its own watermark until they are read (and gets the
    /// heartbeat then).
    fn share_progress(&mut self) {
        let Some(h) = self.heartbeat else { return };
        for j in 0..self.r.parts.len() {
            if self.r.parts[j].given < Some(h) && self.at_end(j) {
                self.r.parts[j].given = Some(h);
                self.progress_queue.push((j, h));
            }
        }
    }

    /// The index of the partition `m` came from (no allocation: a record's lookup is on the
    /// hot path; partitions are compared by number first).
    fn index_of(&self, m: &impl Message) -> Option<usize> {
        let (topic, partition) = (m.topic(), m.partition());
        self.r
            .parts
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
    }

    /// Group mode: takes up the watcher's latest description of the group when there is a
    /// new one (no broker call here), and notes since when (processing time) some partition
    /// has had no owner.
    fn describe_group(&mut self, now_ms: i64) {
        let Mode::Group { seen, .. } = &mut self.mode else {
            return;
        };
        match seen.watcher.newer_than(&mut seen.described) {
            None => {}
            Some(Ok(view)) => {
                if view.unowned.as_ref().is_none_or(Vec::is_empty) {
                    seen.unowned_since_ms = None;
                } else {
                    seen.unowned_since_ms.get_or_insert(now_ms);
                }
                seen.view = Some(view);
                seen.error = None;
            }
            Some(Err(e)) => seen.error = Some(e),
        }
    }

    /// Group mode: whether a rebalance changed the assignment (the partition list is then
    /// updated, remembering where each partition was read to).
    fn take_change(&mut self) -> Result<bool, RunError> {
        let Mode::Group { .. } = self.mode else {
            return Ok(false);
        };
        // Serve the group (rebalances run inside poll) without taking a record.
        let changed = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            for p in &self.r.parts {
                if let Some(n) = p.next {
                    shared.read_to.insert((p.topic.clone(), p.partition), n);
                }
            }
            std::mem::take(&mut shared.changed)
        };
        if !changed {
            return Ok(false);
        }
        if let Mode::Group { seen, topics, .. } = &mut self.mode {
            // A new generation: learn it, and have the group described again.
            seen.membership = group::membership(&self.consumer);
            seen.watcher.refresh();
            if let Topics::Pattern(_) = topics {
                let mut t: Vec<String> = self.r.parts.iter().map(|p| p.topic.clone()).collect();
                if let Some(v) = &seen.view {
                    t.extend(v.members.iter().flat_map(|m| {
                        m.partitions
                            .iter()
                            .filter_map(|p| p.rsplit_once('/').map(|(t, _)| t.to_string()))
                    }));
                }
                t.sort();
                t.dedup();
                seen.watcher.set_topics(t);
            }
        }
        let list = self.group_assignment()?;
        self.set_parts(list);
        Ok(true)
    }
}
