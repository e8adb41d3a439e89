//! The Kafka sink: one record per row to one topic, the value the row as a JSON object (the
//! sink's `columns`), the key from `key` columns (one column: its text; several: a JSON
//! object of them; none: no key), partitioned by key with the Java client's murmur2
//! partitioner, so Watershed and Kafka Streams put a key in the same partition. The producer
//! is always idempotent (no duplicates from its own retries).
//!
//! **at_least_once**: records are sent as they come; a barrier's pre-commit waits until
//! every record sent before it is acknowledged, so a checkpoint never covers a record the
//! broker does not have; a restart from it sends what came after again.
//!
//! **exactly_once** (needs `checkpoint.dir`): Kafka transactions, committed only once the
//! checkpoint that covers them is durable. Between two barriers the encoded records go to a
//! spool file of this sink instance (`<checkpoint.dir>/kafka-sinks/<sink>.<instance>/`); the
//! pre-commit fsyncs it and numbers it (`seq`). The commit sends the spool in one
//! transaction and, in the same transaction, commits offset `seq` of a marker group (named
//! after the transactional id) on the topic's partition 0: the broker makes the records and
//! the marker visible together or not at all. The transactional id is stable across
//! restarts and unique to the process (`<transactional_id>.<instance id>.<instance>`,
//! `crate::instance`), so a restarted instance fences the one that died
//! (`init_transactions` aborts what it left open) and the processes of one consumer group
//! never fence each other. The sink that carries a consumer group's offsets
//! (`crate::kafka::offsets`) adds the epoch's offsets to the same transaction. Recovery reads the marker: spools the
//! checkpoint covers and the marker does not are sent again (the transaction that carried
//! them was aborted or never began), spools the marker covers are removed, spools after the
//! checkpoint are dropped (they are replayed). So every record reaches `read_committed`
//! readers exactly once. A run without a checkpoint sets the marker back to 0.
//!
//! Records become visible at the commit, after each checkpoint: visibility is bounded by the
//! checkpoint interval, as for the transactional file sink.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::dataflow::{Guarantee, Sink};
use crate::error::{ErrorClass, RunError};
use crate::format::json::{JsonEncoder, write_value};
use crate::kafka::offsets::Links;
use crate::kafka::{Client, LogContext, run_error};
use crate::types::{Batch, Epoch, SchemaRef, Value};

pub mod config;
pub mod debezium;
pub use config::KafkaSinkConfig;
pub use debezium::DebeziumEvents;

/// How long flushes and transaction steps may take before they fail (transient: the run
/// restarts from its checkpoint).
const BROKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends between two polls of the producer's delivery reports.
const POLL_EVERY: usize = 1024;

/// Where the key comes from.
#[derive(Clone, Debug)]
pub enum KeySpec {
    None,
    /// One column: its text (a string as is, anything else as JSON).
    Column(usize),
    /// Several columns: a JSON object of them.
    Object(Vec<usize>),
}

/// How the sink delivers.
#[derive(Clone, Debug)]
pub enum Delivery {
    AtLeastOnce,
    /// Transactions; spools under `spool_dir`; the producer's `transactional_id`.
    ExactlyOnce {
        spool_dir: PathBuf,
        transactional_id: String,
    },
}

/// Everything a Kafka sink instance needs.
#[derive(Clone, Debug)]
pub struct KafkaSinkSpec {
    pub node: String,
    pub client: Client,
    pub topic: String,
    pub schema: SchemaRef,
    pub columns: Option<Vec<usize>>,
    pub key: KeySpec,
    pub delivery: Delivery,
    /// `Some`: the input is a table port's change rows, written as Debezium events.
    pub debezium: Option<DebeziumEvents>,
    /// Exactly-once: the consumer-group sources whose offsets this instance commits in its
    /// transactions (`crate::kafka::offsets`).
    pub carries: Option<Arc<Links>>,
}

/// The producer's context: logs, and counts records the broker refused for good.
struct SinkContext {
    log: LogContext,
    failed: AtomicU64,
    first_failure: Mutex<Option<KafkaError>>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason)
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.clone());
        }
    }
}

/// What a pre-commit records: the spool it numbered (exactly-once) or nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PreCommit {
    /// Format of this record.
    v: u32,
    /// The spool of this barrier (exactly-once; 0 for at-least-once).
    seq: u64,
    /// The producer's transactional id, so a checkpoint of another sink is recognised.
    transactional_id: Option<String>,
}

/// A sink instance.
pub struct KafkaSink {
    spec: KafkaSinkSpec,
    producer: Option<BaseProducer<SinkContext>>,
    encoder: JsonEncoder,
    key_encoder: Option<JsonEncoder>,
    value: Vec<u8>,
    key: Vec<u8>,
    since_poll: usize,
    tx: Option<Transactions>,
}

/// Exactly-once state.
struct Transactions {
    dir: PathBuf,
    transactional_id: String,
    /// Reads and writes the marker's offset.
    marker: BaseConsumer<LogContext>,
    /// The spool being written (`seq` = last numbered + 1).
    open: Option<BufWriter<File>>,
    /// The last spool numbered by a pre-commit.
    seq: u64,
    /// Numbered spools waiting for their checkpoint, with the epoch of their barrier.
    waiting: VecDeque<(Epoch, u64)>,
}

impl KafkaSink {
    pub fn new(spec: KafkaSinkSpec) -> KafkaSink {
        let encoder = JsonEncoder::with_columns(spec.schema.clone(), spec.columns.clone());
        let key_encoder = match &spec.key {
            KeySpec::Object(cols) => Some(JsonEncoder::with_columns(
                spec.schema.clone(),
                Some(cols.clone()),
            )),
            _ => None,
        };
        KafkaSink {
            spec,
            producer: None,
            encoder,
            key_encoder,
            value: Vec::with_capacity(1024),
            key: Vec::with_capacity(64),
            since_poll: 0,
            tx: None,
        }
    }

    fn node(&self) -> &str {
        &self.spec.node
    }

    fn producer(&self) -> Result<&BaseProducer<SinkContext>, RunError> {
        self.producer.as_ref().ok_or_else(|| RunError::Stopped {
            task: self.spec.node.clone(),
            why: "the sink was used before `recover`",
        })
    }

    /// The key of `row` into `key`; false: the record has no key.
    fn encode_key(&self, row: &[Value], key: &mut Vec<u8>) -> bool {
        key.clear();
        match &self.spec.key {
            KeySpec::None => false,
            KeySpec::Column(c) => {
                match &row[*c] {
                    Value::Str(s) => key.extend_from_slice(s.as_bytes()),
                    // A string carried as its JSON literal (a column no operator reads).
                    Value::Json(raw) => match serde_json::from_str::<String>(raw) {
                        Ok(s) => key.extend_from_slice(s.as_bytes()),
                        Err(_) => key.extend_from_slice(raw.as_bytes()),
                    },
                    Value::Null => return false,
                    other => write_value(other, key),
                }
                true
            }
            KeySpec::Object(_) => {
                if let Some(k) = &self.key_encoder {
                    k.encode_row(row, key);
                }
                true
            }
        }
    }

    /// Sends the record in `self.key`/`self.value`, waiting while the producer's queue is
    /// full.
    fn send(
        producer: &BaseProducer<SinkContext>,
        node: &str,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), RunError> {
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(v) = value {
                record = record.payload(v);
            }
            if let Some(k) = key {
                record = record.key(k);
            }
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(run_error(node, "sending a record", &e)),
            }
        }
    }

    /// Waits for every record sent to be acknowledged; a record refused for good is an
    /// error (the run restarts from its checkpoint, which does not cover it).
    fn flush_producer(&self) -> Result<(), RunError> {
        let producer = self.producer()?;
        producer
            .flush(BROKER_TIMEOUT)
            .map_err(|e| run_error(self.node(), "waiting for acknowledgements", &e))?;
        let context = producer.context();
        if context.failed.swap(0, Ordering::Relaxed) > 0 {
            let e = context
                .first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return Err(match e {
                Some(e) => run_error(self.node(), "delivering records", &e),
                None => RunError::External {
                    component: self.spec.node.clone(),
                    message: "kafka: records were not delivered".into(),
                    class: ErrorClass::Transient,
                },
            });
        }
        producer.context().log.recovered();
        Ok(())
    }

    /// Encodes and delivers every row of `batch` (`key`, `value`: scratch buffers).
    fn write_rows(
        &mut self,
        batch: &Batch,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<(), RunError> {
        if let Some(events) = self.spec.debezium.clone() {
            for i in 0..batch.len() {
                events.encode(batch, i, key, value, |e| self.deliver(e.key, e.value))?;
            }
            return Ok(());
        }
        for (row, _) in batch.rows() {
            let keyed = self.encode_key(row, key);
            value.clear();
            self.encoder.encode_row(row, value);
            self.deliver(keyed.then_some(key.as_slice()), Some(value))?;
        }
        Ok(())
    }

    /// One record: into the epoch's spool (exactly-once) or to the producer.
    fn deliver(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), RunError> {
        if let Some(tx) = &mut self.tx {
            let spool = match &mut tx.open {
                Some(w) => w,
                None => {
                    let path = spool_path(&tx.dir, tx.seq + 1);
                    let f = File::create(&path).map_err(|e| {
                        RunError::io(
                            format!("{}: creating {}", self.spec.node, path.display()),
                            e,
                        )
                    })?;
                    tx.open.insert(BufWriter::with_capacity(1 << 16, f))
                }
            };
            return write_spooled(spool, key, value)
                .map_err(|e| RunError::io(format!("{}: writing its spool", self.spec.node), e));
        }
        let producer = self.producer.as_ref().ok_or_else(|| RunError::Stopped {
            task: self.spec.node.clone(),
            why: "the sink was used before `recover`",
        })?;
        KafkaSink::send(producer, &self.spec.node, &self.spec.topic, key, value)?;
        self.since_poll += 1;
        if self.since_poll >= POLL_EVERY {
            producer.poll(Duration::ZERO);
            self.since_poll = 0;
        }
        Ok(())
    }

    fn io(&self, doing: &str, e: std::io::Error) -> RunError {
        RunError::io(format!("{}: {doing}", self.spec.node), e)
    }
}

impl Sink for KafkaSink {
    fn guarantee(&self) -> Guarantee {
        match self.spec.delivery {
            Delivery::AtLeastOnce => Guarantee::AtLeastOnce,
            Delivery::ExactlyOnce { .. } => Guarantee::ExactlyOnce,
        }
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        let (mut key, mut value) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.value),
        );
        let result = self.write_rows(batch, &mut key, &mut value);
        (self.key, self.value) = (key, value);
        result
    }

    fn pre_commit(&mut self, epoch: Epoch) -> Result<Vec<u8>, RunError> {
        let Some(tx) = &mut self.tx else {
            self.flush_producer()?;
            return Ok(encode_pre_commit(&PreCommit {
                v: 1,
                seq: 0,
                transactional_id: None,
            }));
        };
        let seq = tx.seq + 1;
        match tx.open.take() {
            Some(w) => {
                let f = w.into_inner().map_err(|e| {
                    RunError::io(
                        format!("{}: writing its spool", self.spec.node),
                        e.into_error(),
                    )
                })?;
                f.sync_all().map_err(|e| {
                    RunError::io(format!("{}: syncing its spool", self.spec.node), e)
                })?;
            }
            None => {
                // Nothing written since the last barrier: an empty spool keeps the numbering.
                let path = spool_path(&tx.dir, seq);
                File::create(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| {
                        RunError::io(
                            format!("{}: creating {}", self.spec.node, path.display()),
                            e,
                        )
                    })?;
            }
        }
        sync_dir(&tx.dir).map_err(|e| {
            RunError::io(
                format!("{}: syncing its spool directory", self.spec.node),
                e,
            )
        })?;
        tx.seq = seq;
        tx.waiting.push_back((epoch, seq));
        Ok(encode_pre_commit(&PreCommit {
            v: 1,
            seq,
            transactional_id: Some(tx.transactional_id.clone()),
        }))
    }

    fn commit(&mut self, epoch: Epoch) -> Result<(), RunError> {
        if self.tx.is_none() {
            return Ok(());
        }
        loop {
            let next = {
                let tx = self.tx.as_mut().expect("transactions");
                match tx.waiting.front() {
                    Some(&(e, seq)) if e <= epoch => {
                        tx.waiting.pop_front();
                        (e, seq)
                    }
                    _ => return Ok(()),
                }
            };
            // Each spool with the offsets of its own barrier: a later epoch's offsets never
            // commit before that epoch's records do.
            self.send_spool(next.1, Some(next.0))?;
        }
    }

    fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError> {
        let state = match state {
            Some(bytes) => Some(decode_pre_commit(bytes).map_err(|why| {
                RunError::restore(&self.spec.node, format!("its pre-commit {why}"))
            })?),
            None => None,
        };
        let node = self.spec.node.clone();
        let mut owned: Vec<(&str, &str)> = vec![
            ("enable.idempotence", "true"),
            ("partitioner", "murmur2_random"),
        ];
        let tid = match &self.spec.delivery {
            Delivery::ExactlyOnce {
                transactional_id, ..
            } => Some(transactional_id.clone()),
            Delivery::AtLeastOnce => None,
        };
        if let Some(t) = &tid {
            owned.push(("transactional.id", t));
        }
        let context = SinkContext {
            log: LogContext::new(&node),
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        };
        let producer: BaseProducer<SinkContext> = self
            .spec
            .client
            .config(&owned)
            .create_with_context(context)
            .map_err(|e| run_error(&node, "creating the producer", &e))?;
        let Delivery::ExactlyOnce { spool_dir, .. } = &self.spec.delivery else {
            self.producer = Some(producer);
            return Ok(());
        };
        let spool_dir = &spool_dir.clone();
        let tid = tid.expect("exactly-once has a transactional id");
        // Fences an earlier producer with this id and aborts what it left open.
        producer
            .init_transactions(BROKER_TIMEOUT)
            .map_err(|e| run_error(&node, "starting transactions", &e))?;
        std::fs::create_dir_all(spool_dir)
            .map_err(|e| RunError::io(format!("{node}: creating {}", spool_dir.display()), e))?;
        let marker: BaseConsumer<LogContext> = self
            .spec
            .client
            .config(&[
                ("group.id", tid.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ])
            .create_with_context(LogContext::new(&node))
            .map_err(|e| run_error(&node, "creating the marker's client", &e))?;
        self.producer = Some(producer);
        self.tx = Some(Transactions {
            dir: spool_dir.clone(),
            transactional_id: tid.clone(),
            marker,
            open: None,
            seq: 0,
            waiting: VecDeque::new(),
        });
        let committed = self.marker_offset()?;
        let restored_seq = match &state {
            None => 0,
            Some(p) => {
                if p.transactional_id.as_deref() != Some(tid.as_str()) {
                    tracing::warn!(node = %node, "the checkpoint holds another sink's pre-commit (its transactional id differs): the sink starts as a new one, with only what comes after the checkpoint");
                    0
                } else {
                    p.seq
                }
            }
        };
        let spools = list_spools(spool_dir).map_err(|e| self.io("listing its spools", e))?;
        for &seq in &spools {
            if seq > restored_seq {
                // Written after the checkpoint: replayed from it.
                remove(&spool_path(spool_dir, seq)).map_err(|e| self.io("removing a spool", e))?;
            }
        }
        self.tx.as_mut().expect("transactions").seq = restored_seq;
        let mut marker = committed;
        for seq in spools.into_iter().filter(|&s| s <= restored_seq) {
            if marker.is_some_and(|m| m >= seq) {
                // Delivered; the crash came before its spool was removed.
                remove(&spool_path(spool_dir, seq)).map_err(|e| self.io("removing a spool", e))?;
            } else {
                // Covered by the checkpoint, its transaction aborted or never begun.
                self.send_spool(seq, None)?;
                marker = Some(seq);
            }
        }
        // The marker says where this run's numbering stands: at the checkpoint's spool
        // (back to 0 without a checkpoint, or from a later run's when an older checkpoint
        // is restored).
        if marker != Some(restored_seq) {
            self.set_marker(restored_seq)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), RunError> {
        if self.tx.is_none() && self.producer.is_some() {
            self.flush_producer()?;
        }
        Ok(())
    }
}

impl KafkaSink {
    /// The marker's committed offset: the last spool delivered (`None`: never committed).
    fn marker_offset(&self) -> Result<Option<u64>, RunError> {
        let tx = self.tx.as_ref().expect("transactions");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.spec.topic, 0);
        let got = tx
            .marker
            .committed_offsets(tpl, BROKER_TIMEOUT)
            .map_err(|e| run_error(self.node(), "reading the commit marker", &e))?;
        let offset = got.find_partition(&self.spec.topic, 0).map(|e| e.offset());
        Ok(match offset {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            _ => None,
        })
    }

    /// One transaction holding spool `seq` and the marker `seq` (and, committing `epoch`,
    /// the carried groups' offsets); the spool is removed after.
    fn send_spool(&mut self, seq: u64, epoch: Option<Epoch>) -> Result<(), RunError> {
        let node = self.spec.node.clone();
        let path = spool_path(&self.tx.as_ref().expect("transactions").dir, seq);
        let producer = self.producer()?;
        producer
            .begin_transaction()
            .map_err(|e| run_error(&node, "beginning a transaction", &e))?;
        let file = File::open(&path)
            .map_err(|e| RunError::io(format!("{node}: opening {}", path.display()), e))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut sent = 0usize;
        loop {
            match read_spooled(&mut reader, &mut key, &mut value) {
                Ok(None) => break,
                Ok(Some(Spooled { keyed, valued })) => {
                    let k = keyed.then_some(key.as_slice());
                    let v = valued.then_some(value.as_slice());
                    KafkaSink::send(producer, &node, &self.spec.topic, k, v)?;
                    sent += 1;
                    if sent.is_multiple_of(POLL_EVERY) {
                        producer.poll(Duration::ZERO);
                    }
                }
                Err(why) => {
                    let _ = producer.abort_transaction(BROKER_TIMEOUT);
                    return Err(RunError::restore(
                        &node,
                        format!("its spool {} is damaged: {why}", path.display()),
                    ));
                }
            }
        }
        self.commit_with_marker(seq, epoch)?;
        remove(&path).map_err(|e| self.io("removing a delivered spool", e))?;
        Ok(())
    }

    /// A transaction holding only the marker (no records): sets it to `seq`.
    fn set_marker(&mut self, seq: u64) -> Result<(), RunError> {
        let node = self.spec.node.clone();
        self.producer()?
            .begin_transaction()
            .map_err(|e| run_error(&node, "beginning a transaction", &e))?;
        self.commit_with_marker(seq, None)
    }

    /// Adds marker `seq` (and, for `epoch`, the carried groups' offsets) to the open
    /// transaction and commits it; on failure aborts it.
    fn commit_with_marker(&mut self, seq: u64, epoch: Option<Epoch>) -> Result<(), RunError> {
        let node = self.spec.node.clone();
        let producer = self.producer()?;
        let tx = self.tx.as_ref().expect("transactions");
        let metadata = tx
            .marker
            .group_metadata()
            .ok_or_else(|| RunError::External {
                component: node.clone(),
                message: "kafka: the marker's client has no group metadata".into(),
                class: ErrorClass::Internal,
            })?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.spec.topic, 0, Offset::Offset(seq as i64))
            .map_err(|e| run_error(&node, "recording the commit marker", &e))?;
        let carried = match (&self.spec.carries, epoch) {
            (Some(links), Some(e)) => links.carried_by(&node, e),
            _ => Vec::new(),
        };
        let mut result = producer.send_offsets_to_transaction(&tpl, &metadata, BROKER_TIMEOUT);
        for c in &carried {
            // What the epoch read, committed with what it wrote; a member fenced since (an
            // older generation) fails the transaction, and nothing of it is visible.
            let mut offsets = TopicPartitionList::new();
            for (t, p, o) in &c.offsets {
                offsets
                    .add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| run_error(&node, "recording the consumed offsets", &e))?;
            }
            if offsets.count() > 0 {
                result = result.and_then(|()| {
                    producer.send_offsets_to_transaction(&offsets, &c.metadata, BROKER_TIMEOUT)
                });
            }
        }
        let result = result.and_then(|()| producer.commit_transaction(BROKER_TIMEOUT));
        if let Err(e) = result {
            let _ = producer.abort_transaction(BROKER_TIMEOUT);
            return Err(run_error(&node, "committing a transaction", &e));
        }
        if let (Some(links), Some(e)) = (&self.spec.carries, epoch) {
            links.mark_committed(&node, e);
        }
        let failed = producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(RunError::External {
                component: node,
                message: format!("kafka: {failed} records of a committed transaction were refused"),
                class: ErrorClass::Definite,
            });
        }
        producer.context().log.recovered();
        Ok(())
    }
}

fn encode_pre_commit(p: &PreCommit) -> Vec<u8> {
    serde_json::to_vec(p).expect("a pre-commit encodes")
}

fn decode_pre_commit(bytes: &[u8]) -> Result<PreCommit, String> {
    let p: PreCommit =
        serde_json::from_slice(bytes).map_err(|e| format!("does not decode: {e}"))?;
    if p.v != 1 {
        return Err(format!("has format {}, this build reads 1", p.v));
    }
    Ok(p)
}

fn spool_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.spool"))
}

/// The numbers of the spool files in `dir` (only files named as this sink names them).
fn list_spools(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_suffix(".spool")
            && n.len() == 20
            && let Ok(seq) = n.parse::<u64>()
        {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    OpenOptions::new().read(true).open(dir)?.sync_all()
}

/// No key: this length.
const NO_KEY: u32 = u32::MAX;

/// The most a spooled key or value may claim to hold (a damaged length is not allocated).
const MAX_SPOOLED: u32 = 1 << 30;

/// One record into a spool: key length (`NO_KEY` for none), key, value length (`NO_KEY`
/// for a tombstone), value.
fn write_spooled(
    w: &mut impl Write,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> std::io::Result<()> {
    for part in [key, value] {
        match part {
            Some(b) => {
                w.write_all(&(b.len() as u32).to_le_bytes())?;
                w.write_all(b)?;
            }
            None => w.write_all(&NO_KEY.to_le_bytes())?,
        }
    }
    Ok(())
}

/// Whether a spooled record has a key and a value.
#[derive(Debug, PartialEq, Eq)]
struct Spooled {
    keyed: bool,
    valued: bool,
}

/// The next record of a spool: `Ok(None)` at its end, else what it holds with the key and
/// value filled; a cut or impossible record is an error.
fn read_spooled(
    r: &mut impl Read,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) -> Result<Option<Spooled>, String> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    r.read_exact(&mut len[1..])
        .map_err(|_| "a record's key length is cut off".to_string())?;
    let klen = u32::from_le_bytes(len);
    let keyed = klen != NO_KEY;
    key.clear();
    if keyed {
        if klen > MAX_SPOOLED {
            return Err(format!("a key claims {klen} bytes"));
        }
        key.resize(klen as usize, 0);
        r.read_exact(key)
            .map_err(|_| "a record's key is cut off".to_string())?;
    }
    r.read_exact(&mut len)
        .map_err(|_| "a record's value length is cut off".to_string())?;
    let vlen = u32::from_le_bytes(len);
    let valued = vlen != NO_KEY;
    value.clear();
    if valued {
        if vlen > MAX_SPOOLED {
            return Err(format!("a value claims {vlen} bytes"));
        }
        value.resize(vlen as usize, 0);
        r.read_exact(value)
            .map_err(|_| "a record's value is cut off".to_string())?;
    }
    Ok(Some(Spooled { keyed, valued }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_records_read_back_and_damage_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        write_spooled(&mut buf, Some(b"k1"), Some(b"{\"a\":1}")).unwrap();
        write_spooled(&mut buf, None, Some(b"")).unwrap();
        write_spooled(&mut buf, Some(b"k2"), None).unwrap();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut r = buf.as_slice();
        let spooled = |keyed, valued| Ok(Some(Spooled { keyed, valued }));
        assert_eq!(read_spooled(&mut r, &mut k, &mut v), spooled(true, true));
        assert_eq!(
            (k.as_slice(), v.as_slice()),
            (&b"k1"[..], &b"{\"a\":1}"[..])
        );
        assert_eq!(read_spooled(&mut r, &mut k, &mut v), spooled(false, true));
        assert_eq!(read_spooled(&mut r, &mut k, &mut v), spooled(true, false));
        assert_eq!(k.as_slice(), b"k2");
        assert_eq!(read_spooled(&mut r, &mut k, &mut v), Ok(None));
        for cut in 1..buf.len() {
            let mut r = &buf[..cut];
            let mut result = Ok(Some(Spooled {
                keyed: true,
                valued: true,
            }));
            while let Ok(Some(_)) = result {
                result = read_spooled(&mut r, &mut k, &mut v);
            }
            // Either a clean end exactly between records, or an error.
            if cut != 17 && cut != 25 {
                assert!(result.is_err(), "cut at {cut}: {result:?}");
            }
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_SPOOLED + 1).to_le_bytes());
        assert!(read_spooled(&mut huge.as_slice(), &mut k, &mut v).is_err());
    }

    #[test]
    fn a_pre_commit_of_another_format_or_garbage_is_refused() {
        let p = PreCommit {
            v: 1,
            seq: 7,
            transactional_id: Some("t".into()),
        };
        assert_eq!(decode_pre_commit(&encode_pre_commit(&p)), Ok(p));
        assert!(decode_pre_commit(b"{\"v\":2,\"seq\":1,\"transactional_id\":null}").is_err());
        assert!(decode_pre_commit(b"\xff\x00").is_err());
        assert!(decode_pre_commit(b"{\"v\":1,\"seq\":-1}").is_err());
    }
}
