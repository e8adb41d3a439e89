//! The enrichment join: events (input 0) looked up in a reference table materialized from a
//! change stream (input 1, change rows as `cdc::rows` lays them out, broadcast to every
//! instance). Owns the materialized table (a `VersionedTable` keyed by the table's primary
//! key), a secondary index by join key, the event buffers of the gate, of as-of waiting and
//! of held misses, and their checkpoints. No I/O, no clock.
//!
//! # Materializing
//! Each change row carries its version (commit LSN, ordinal); a change not newer than the
//! version held for its key is stale and ignored, so replays are harmless and a primary-key
//! change (delete of the old key, insert of the new one at one LSN) lands right. A change is
//! valid from its commit time; snapshot rows (`r`) are valid from the beginning of time (they
//! are the state before streaming began). Unchanged-TOAST columns keep the previous value.
//! Truncate deletes every row.
//!
//! # Joining
//! An event matches every reference row whose join columns equal the event's, that meets
//! the residual conditions (`event column OP table column`) and, with a `version_range`,
//! whose NVD version rule admits the event's version: 1:N, one output row
//! per match, the event's columns then the selected reference columns then
//! `<table>_matched`. `lookup` joins the latest rows at once; `as_of` waits until the
//! watermark (the minimum over both inputs, so the reference side's progress counts) passes
//! the event's time and joins the rows valid at that time. A miss is emitted with null
//! reference columns and `<table>_matched = false` (`emit`), sent to the `miss` port (`port`),
//! counted and dropped (`drop`, an inner join), or held until its join key gets a row or the watermark passes its time plus the timeout
//! (`hold`), then emitted as a miss.
//!
//! # Gating
//! With `gated`, events wait (in arrival order) until the reference table's snapshot is
//! complete (its `snapshot_end` row), so no event is enriched against a half-loaded table.
//! Buffered and held events hold back the watermark the runtime forwards, so they are never
//! late downstream. The gate keeps `max_buffered` events in memory and spills the rest to a
//! local file (`state::SpillQueue`), so memory stays bounded and nothing is dropped or
//! enriched early.
//!
//! # Hot path
//! Results of a probe (join key + version) are memoized against the latest table and reused
//! until the next reference change, so a stream of repeated products costs one hash lookup
//! per event; the version rule runs only on a memo miss.

use std::hash::BuildHasherDefault;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cdc::Version;
use crate::cdc::rows::{self, META_COLUMNS, RowOp};
use crate::dataflow::{MAIN_PORT, MISS_PORT, Operator, Output, PortSpec};
use crate::error::StateError;
use crate::operators::version_range::VersionRange;
use crate::state::arena::unique_id;
use crate::state::versioned::{Located, RowRef};
use crate::state::{Blob, Blobs, ReferenceTable, SpillQueue, StateBackend, StateImage};
use crate::types::{Batch, DataType, EventTime, Field, Schema, SchemaRef, Value};

pub mod config;

type Map<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<ahash::AHasher>>;

/// Which version of the reference rows an event is joined with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinMode {
    /// The latest rows, at once.
    Lookup,
    /// The rows valid at the event's time, once the watermark has passed it; history older
    /// than `retention_ms` behind the watermark is dropped.
    AsOf { retention_ms: Option<i64> },
}

/// What happens to an event without a matching reference row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MissPolicy {
    /// Emit it with null reference columns and `matched = false`.
    Emit,
    /// Send it to the `miss` port, unchanged.
    Port,
    /// Count it and emit nothing (an inner join, for fan-out tables of matches only).
    Drop,
    /// Wait for a row with its join key until the watermark passes its time plus
    /// `timeout_ms`, then emit it as a miss.
    Hold { timeout_ms: i64 },
}

/// When enrichment starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrichStrategy {
    /// At once, against whatever the table holds.
    Gradual,
    /// After the table's snapshot is complete; at most `max_buffered` events wait.
    Gated { max_buffered: usize },
}

/// The NVD version rule: which columns hold the observed version and the row's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRangeSpec {
    /// Event column with the observed version.
    pub version: String,
    /// Reference columns: the CPE version field and the four bounds (`None`: not present).
    pub exact: Option<String>,
    pub start_including: Option<String>,
    pub start_excluding: Option<String>,
    pub end_including: Option<String>,
    pub end_excluding: Option<String>,
}

impl VersionRangeSpec {
    /// The columns NVD's `cpe_match` data uses, for an event column `version`.
    pub fn nvd(version: &str) -> VersionRangeSpec {
        VersionRangeSpec {
            version: version.to_string(),
            exact: Some("version".into()),
            start_including: Some("version_start_including".into()),
            start_excluding: Some("version_start_excluding".into()),
            end_including: Some("version_end_including".into()),
            end_excluding: Some("version_end_excluding".into()),
        }
    }
}

/// A comparison of the residual predicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// From its symbol: `= != < <= > >=`.
    pub fn parse(symbol: &str) -> Option<CmpOp> {
        Some(match symbol {
            "=" | "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            _ => return None,
        })
    }

    /// Whether `a op b` holds; a comparison with null never holds (as in SQL).
    fn holds(self, a: &Value, b: &Value) -> bool {
        if a.is_null() || b.is_null() {
            return false;
        }
        let o = a.total_cmp(b);
        match self {
            CmpOp::Eq => o.is_eq(),
            CmpOp::Ne => o.is_ne(),
            CmpOp::Lt => o.is_lt(),
            CmpOp::Le => o.is_le(),
            CmpOp::Gt => o.is_gt(),
            CmpOp::Ge => o.is_ge(),
        }
    }
}

/// One condition of the residual predicate: `event column OP table column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub event: String,
    pub op: CmpOp,
    pub table: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EnrichSpec {
    /// The reference table's name: names `<table>_matched` and the metrics.
    pub table: String,
    /// The reference table's primary key columns.
    pub primary_key: Vec<String>,
    /// Join columns: (event column, reference column).
    pub key: Vec<(String, String)>,
    /// Reference columns added to the output; `None`: all not already in the event.
    pub columns: Option<Vec<String>>,
    pub version_range: Option<VersionRangeSpec>,
    /// More conditions every match must meet, besides the join key.
    pub conditions: Vec<Condition>,
    pub mode: JoinMode,
    pub miss: MissPolicy,
    pub strategy: EnrichStrategy,
    /// Where the materialized table is kept (the pipeline's `state`).
    pub state: StateBackend,
}

/// A problem with the spec; `field` is relative (`key`, `columns[1]`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct EnrichError {
    pub field: String,
    pub message: String,
}

fn spec_err(field: impl Into<String>, message: impl Into<String>) -> EnrichError {
    EnrichError {
        field: field.into(),
        message: message.into(),
    }
}

/// Column positions resolved from the spec.
#[derive(Clone, Debug)]
struct Layout {
    /// Event columns of the join key.
    event_key: Vec<usize>,
    /// Table columns (not change-row columns) of the join key.
    table_key: Vec<usize>,
    primary_key: Vec<usize>,
    /// Table columns copied to the output.
    selected: Vec<usize>,
    /// Event column of the observed version, and table columns of the rule.
    version: Option<(usize, [Option<usize>; 5])>,
    table_schema: Schema,
    /// The table's columns the join reads (key, primary key, selected, rule and condition
    /// columns), as indices into the change rows' table columns: only these are stored, and
    /// every other index of the layout points into a stored row.
    stored: Vec<usize>,
    /// Residual conditions: (event column, op, table column).
    conditions: Vec<(usize, CmpOp, usize)>,
    /// The join key is the primary key and there is no version rule nor condition: an
    /// event's match is one table lookup, with no secondary index and no memo.
    direct: bool,
}

/// One matched reference row, projected to the selected columns.
type Projected = Box<[Value]>;

/// A batch of events waiting at the gate, row-major as in `Batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct GateRows {
    values: Vec<Value>,
    times: Vec<EventTime>,
}

/// The gate's events as checkpoints hold them: each snapshot seals the events the gate took
/// since the last one into a segment (a blob), which later checkpoints share, so a gate
/// that fills for minutes while a large table loads is not written again at every barrier.
#[derive(Default)]
struct GateLog {
    segments: Vec<(String, Blob)>,
    /// Gate items the segments hold.
    sealed: usize,
    /// Where segments larger than `GATE_SEGMENT_IN_MEMORY` go (created on first need).
    dir: Option<tempfile::TempDir>,
    /// Directories of segments from before the gate opened: a checkpoint still being written
    /// may name them, so they go with the operator (kept until the run is over).
    retired: Vec<tempfile::TempDir>,
}

/// Gate segments up to this size stay in memory; larger ones go to a file (so the gate's
/// memory stays bounded by its `max_buffered`).
const GATE_SEGMENT_IN_MEMORY: usize = 64 << 10;

impl GateLog {
    /// Seals `items` (the gate's newest, not yet sealed) into a segment.
    fn seal(&mut self, items: &[GateRows]) -> std::io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let bytes = postcard::to_allocvec(items).map_err(std::io::Error::other)?;
        let id = unique_id("gate");
        let blob = if bytes.len() <= GATE_SEGMENT_IN_MEMORY {
            Blob::Bytes(Arc::from(bytes))
        } else {
            if self.dir.is_none() {
                self.dir = Some(
                    tempfile::Builder::new()
                        .prefix("watershed-gate-")
                        .tempdir()?,
                );
            }
            let path = self.dir.as_ref().expect("created").path().join(&id);
            let mut f = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            Blob::File {
                path,
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(&bytes),
            }
        };
        self.segments.push((id, blob));
        self.sealed += items.len();
        Ok(())
    }
}

/// An event waiting somewhere in the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    row: Vec<Value>,
    time: EventTime,
    /// Order of arrival where it matters (held misses across join keys).
    seq: u64,
}

pub struct EnrichOperator {
    name: String,
    spec: EnrichSpec,
    layout: Layout,
    event_schema: SchemaRef,
    out_schema: SchemaRef,
    table: ReferenceTable<Version>,
    /// Join key -> primary keys that have had a row with it.
    index: Map<Box<[Value]>, Vec<Box<[Value]>>>,
    /// (Join key, version) -> matches in the latest table.
    memo: Map<Box<[Value]>, Arc<[Projected]>>,
    /// The latest `valid_from` of any applied change: at or after it, as-of equals latest.
    latest_valid_from: EventTime,
    snapshot_done: bool,
    watermark: Option<EventTime>,
    /// Events waiting for the snapshot: the first `max_buffered` in memory, the rest spilled.
    gate: SpillQueue<GateRows>,
    /// The gate's events already in checkpoint segments (sealed by `snapshot`, which has
    /// `&self`).
    gate_log: std::cell::RefCell<GateLog>,
    /// Events in `gate`.
    gate_events: usize,
    /// The earliest event time in `gate`.
    gate_min: Option<EventTime>,
    /// As-of events waiting for the watermark.
    waiting: Vec<Pending>,
    /// Held misses by join key.
    held: Map<Box<[Value]>, Vec<Pending>>,
    held_count: usize,

    next_seq: u64,
    /// Event times of `held`.
    held_times: TimeSet,
    probe_key: Vec<Value>,
    /// Scratch for `join_rows`: where each key of a chunk is in the table.
    located: Vec<Option<Located>>,
    counters: Counters,
    stats: JoinStats,
    /// The watermark at the last tombstone sweep (latest-only tables).
    last_sweep: Option<EventTime>,
    /// `stats` as last added to the metric counters.
    published: JoinStats,
    /// `state_bytes()` as of the last barrier or the end of input (it walks the table).
    measured_bytes: std::cell::Cell<u64>,
}

/// What the join did, for `/status` (and kept across restores).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct JoinStats {
    lookups: u64,
    matched: u64,
    misses: u64,
}

struct Counters {
    lookups: metrics::Counter,
    matched: metrics::Counter,
    misses: metrics::Counter,
    gate_buffered: metrics::Gauge,
    gate_open: metrics::Gauge,
    rows: metrics::Gauge,
    state_bytes: metrics::Gauge,
}

impl Counters {
    fn new(node: &str) -> Counters {
        use crate::metrics as m;
        let labels = [(m::LABEL_NODE, node.to_string())];
        Counters {
            lookups: metrics::counter!(m::ENRICH_LOOKUPS, &labels),
            matched: metrics::counter!(m::ENRICH_MATCHED, &labels),
            misses: metrics::counter!(m::ENRICH_MISSES, &labels),
            gate_buffered: metrics::gauge!(m::ENRICH_GATE_BUFFERED, &labels),
            gate_open: metrics::gauge!(m::ENRICH_GATE_OPEN, &labels),
            rows: metrics::gauge!(m::REFERENCE_ROWS, &labels),
            state_bytes: metrics::gauge!(m::REFERENCE_STATE_BYTES, &labels),
        }
    }
}

fn cmp_values(a: &[Value], b: &[Value]) -> std::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// A multiset of event times with a cheap minimum (what buffered events hold back).
#[derive(Clone, Debug, Default)]
struct TimeSet(std::collections::BTreeMap<EventTime, usize>);

impl TimeSet {
    fn insert(&mut self, t: EventTime) {
        *self.0.entry(t).or_default() += 1;
    }

    fn remove(&mut self, t: EventTime) {
        if let Some(n) = self.0.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&t);
            }
        }
    }

    fn min(&self) -> Option<EventTime> {
        self.0.keys().next().copied()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// How long (event time) a latest-only table remembers a delete, so that a replayed older
/// insert of the key stays ignored.
const TOMBSTONE_RETENTION_MS: i64 = 3_600_000;
/// How often (event time) those tombstones are swept.
const TOMBSTONE_SWEEP_MS: i64 = 600_000;

/// Most memoized probes kept; beyond it the memo starts over.
const MEMO_LIMIT: usize = 1 << 18;

/// Events whose lookups `join_rows` does together: enough for their memory reads to overlap,
/// few enough that the prefetched records are still in the cache when they are read.
const LOCATE_CHUNK: usize = 32;

impl EnrichOperator {
    /// `reference` is the schema of the change rows on input 1.
    pub fn new(
        name: &str,
        spec: EnrichSpec,
        event_schema: SchemaRef,
        reference: &Schema,
    ) -> Result<EnrichOperator, EnrichError> {
        if !rows::is_change_schema(reference) {
            return Err(spec_err(
                "inputs[1]",
                "the second input must be a table port of a `cdc` source",
            ));
        }
        let table_schema = rows::table_schema(reference);
        let table_col = |field: &str, name: &str| {
            table_schema.index_of(name).ok_or_else(|| {
                spec_err(
                    field,
                    format!("`{name}` is not a column of table `{}`", spec.table),
                )
            })
        };
        let event_col = |field: &str, name: &str| {
            event_schema
                .index_of(name)
                .ok_or_else(|| spec_err(field, format!("`{name}` is not a column of the events")))
        };
        if spec.key.is_empty() {
            return Err(spec_err(
                "key",
                "name at least one join column: `event_column: table_column`",
            ));
        }
        let mut event_key = Vec::new();
        let mut table_key = Vec::new();
        for (e, t) in &spec.key {
            event_key.push(event_col(&format!("key.{e}"), e)?);
            table_key.push(table_col(&format!("key.{e}"), t)?);
        }
        if spec.primary_key.is_empty() {
            return Err(spec_err(
                "inputs[1]",
                format!(
                    "table `{}` has no primary key (`key` in its cdc table)",
                    spec.table
                ),
            ));
        }
        let primary_key = spec
            .primary_key
            .iter()
            .map(|c| table_col("inputs[1]", c))
            .collect::<Result<Vec<_>, _>>()?;
        let selected: Vec<usize> = match &spec.columns {
            Some(cols) => cols
                .iter()
                .enumerate()
                .map(|(i, c)| table_col(&format!("columns[{i}]"), c))
                .collect::<Result<_, _>>()?,
            None => (0..table_schema.len())
                .filter(|&i| event_schema.index_of(&table_schema.field(i).name).is_none())
                .collect(),
        };
        let matched_name = format!("{}_matched", spec.table);
        let mut fields = event_schema.fields.clone();
        for (n, &i) in selected.iter().enumerate() {
            let f = table_schema.field(i);
            if event_schema.index_of(&f.name).is_some() || f.name == matched_name {
                return Err(spec_err(
                    format!("columns[{n}]"),
                    format!(
                        "`{}` is also a column of the events; leave it out of `columns`",
                        f.name
                    ),
                ));
            }
            fields.push(f.clone());
        }
        if event_schema.index_of(&matched_name).is_some() {
            return Err(spec_err(
                "table",
                format!("the events already have a column `{matched_name}`"),
            ));
        }
        fields.push(Field::new(&matched_name, DataType::Bool));
        let version = match &spec.version_range {
            None => None,
            Some(v) => {
                let ev = event_col("version_range.version", &v.version)?;
                let col =
                    |name: &Option<String>, field: &str| -> Result<Option<usize>, EnrichError> {
                        name.as_ref()
                            .map(|n| table_col(&format!("version_range.{field}"), n))
                            .transpose()
                    };
                Some((
                    ev,
                    [
                        col(&v.exact, "exact")?,
                        col(&v.start_including, "start_including")?,
                        col(&v.start_excluding, "start_excluding")?,
                        col(&v.end_including, "end_including")?,
                        col(&v.end_excluding, "end_excluding")?,
                    ],
                ))
            }
        };
        let mut conditions = Vec::new();
        for (n, c) in spec.conditions.iter().enumerate() {
            let field = format!("where[{n}]");
            let e = event_col(&field, &c.event)?;
            let t = table_col(&field, &c.table)?;
            let (et, tt) = (
                event_schema.field(e).data_type,
                table_schema.field(t).data_type,
            );
            let numeric = |d: DataType| matches!(d, DataType::Int | DataType::Float);
            if et != tt && !(numeric(et) && numeric(tt)) {
                return Err(spec_err(
                    field,
                    format!(
                        "`{}` is {et} and `{}` is {tt}: a condition compares values of one type",
                        c.event, c.table
                    ),
                ));
            }
            conditions.push((e, c.op, t));
        }
        // Keep only the columns the join reads, and point the layout into the kept row.
        // The primary key first, so that the table stores the key only once (as the row's
        // start), then the other columns the join reads, in table order.
        let mut rest: Vec<usize> = table_key
            .iter()
            .chain(&selected)
            .chain(version.iter().flat_map(|(_, cols)| cols.iter().flatten()))
            .chain(conditions.iter().map(|(_, _, t)| t))
            .copied()
            .filter(|i| !primary_key.contains(i))
            .collect();
        rest.sort_unstable();
        rest.dedup();
        let mut stored = primary_key.clone();
        stored.dedup();
        stored.extend(rest);
        let at = |i: usize| {
            stored
                .iter()
                .position(|&c| c == i)
                .expect("every used column is stored")
        };
        let table_key: Vec<usize> = table_key.into_iter().map(at).collect();
        let primary_key: Vec<usize> = primary_key.into_iter().map(at).collect();
        let selected: Vec<usize> = selected.into_iter().map(at).collect();
        let version = version.map(|(e, cols)| (e, cols.map(|c| c.map(at))));
        let conditions: Vec<(usize, CmpOp, usize)> = conditions
            .into_iter()
            .map(|(e, op, t)| (e, op, at(t)))
            .collect();
        let table_schema = Schema::new(
            stored
                .iter()
                .map(|&i| table_schema.field(i).clone())
                .collect(),
        );
        let retention = match spec.mode {
            JoinMode::Lookup => None,
            JoinMode::AsOf { retention_ms } => Some(retention_ms.unwrap_or(i64::MAX / 4)),
        };
        let gate_memory = match spec.strategy {
            EnrichStrategy::Gated { max_buffered } => max_buffered,
            EnrichStrategy::Gradual => 1,
        };
        let table = ReferenceTable::new(retention, &spec.state)
            .map_err(|e| spec_err("state", e.to_string()))?;
        let counters = Counters::new(name);
        counters
            .gate_open
            .set(if matches!(spec.strategy, EnrichStrategy::Gated { .. }) {
                0.0
            } else {
                1.0
            });
        Ok(EnrichOperator {
            name: name.to_string(),
            layout: Layout {
                direct: version.is_none() && conditions.is_empty() && table_key == primary_key,
                conditions,
                event_key,
                table_key,
                primary_key,
                selected,
                version,
                table_schema,
                stored,
            },
            spec,
            event_schema,
            out_schema: Arc::new(Schema::new(fields)),
            table,
            index: Map::default(),
            memo: Map::default(),
            latest_valid_from: EventTime::MIN,
            snapshot_done: false,
            watermark: None,
            gate: SpillQueue::new(gate_memory),
            gate_log: Default::default(),
            gate_events: 0,
            gate_min: None,
            waiting: Vec::new(),
            held: Map::default(),
            held_count: 0,
            next_seq: 0,
            held_times: TimeSet::default(),
            probe_key: Vec::new(),
            located: Vec::new(),
            counters,
            stats: JoinStats::default(),
            published: JoinStats::default(),
            last_sweep: None,
            measured_bytes: std::cell::Cell::new(0),
        })
    }

    /// Rows the table holds now.
    pub fn reference_rows(&self) -> usize {
        self.table.len()
    }

    /// Estimated bytes of the materialized table and its index.
    pub fn state_bytes(&self) -> usize {
        let index: usize = self
            .index
            .iter()
            .map(|(k, pks)| {
                std::mem::size_of_val(&**k)
                    + pks
                        .iter()
                        .map(|p| std::mem::size_of::<Box<[Value]>>() + std::mem::size_of_val(&**p))
                        .sum::<usize>()
                    + 48
            })
            .sum();
        self.table.estimated_bytes() + index
    }

    /// Events the shut gate has spilled to a local file (beyond `max_buffered`).
    pub fn spilled(&self) -> usize {
        self.gate.spilled_weight()
    }

    /// Moves the metric counters up to the join's own counts (once per call, not per event).
    fn publish_counts(&mut self) {
        let s = self.stats;
        let p = &mut self.published;
        self.counters.lookups.increment(s.lookups - p.lookups);
        self.counters.matched.increment(s.matched - p.matched);
        self.counters.misses.increment(s.misses - p.misses);
        *p = s;
    }

    /// Measures the state's size for `/status` and the metric (walks the whole table).
    fn measure_state(&self) {
        let bytes = self.state_bytes();
        self.measured_bytes.set(bytes as u64);
        self.counters.state_bytes.set(bytes as f64);
    }

    /// Whether the gate is open (always, for `gradual`).
    pub fn gate_open(&self) -> bool {
        !self.gated_shut()
    }

    fn gated_shut(&self) -> bool {
        matches!(self.spec.strategy, EnrichStrategy::Gated { .. }) && !self.snapshot_done
    }

    fn join_key_of_table_row(&self, row: &[Value]) -> Box<[Value]> {
        self.layout
            .table_key
            .iter()
            .map(|&i| row[i].clone())
            .collect()
    }

    /// Applies one change row (table columns after `META_COLUMNS`).
    fn apply_change(&mut self, change: &[Value], time: EventTime, out: &mut Output) {
        let op = rows::row_op(change);
        let version = rows::row_version(change);
        let all = &change[META_COLUMNS..];
        let kept: Vec<Value> = if matches!(op, RowOp::Upsert { .. } | RowOp::Delete) {
            self.layout.stored.iter().map(|&i| all[i].clone()).collect()
        } else {
            Vec::new()
        };
        let cols = &kept[..];
        match op {
            RowOp::SnapshotEnd => {
                if !self.snapshot_done {
                    self.snapshot_done = true;
                    self.table.shrink_to_fit();
                    self.counters.gate_open.set(1.0);
                    tracing::info!(node = %self.name, table = %self.spec.table, rows = self.table.len(), "reference snapshot complete: gate open");
                }
            }
            RowOp::Unknown => {}
            RowOp::Truncate => {
                for k in self.table.keys() {
                    self.table.apply(&k, version, time, None);
                }
                self.changed(time);
            }
            RowOp::Delete => {
                let pk: Box<[Value]> = self
                    .layout
                    .primary_key
                    .iter()
                    .map(|&i| cols[i].clone())
                    .collect();
                if self.table.apply(&pk, version, time, None) != crate::state::Applied::Stale {
                    self.changed(time);
                }
            }
            RowOp::Upsert { snapshot } => {
                let pk: Box<[Value]> = self
                    .layout
                    .primary_key
                    .iter()
                    .map(|&i| cols[i].clone())
                    .collect();
                let mut row: Vec<Value> = kept;
                self.table.warm(std::iter::once(&pk[..]));
                let unavailable = rows::row_unavailable(change);
                let previous = self.table.get(&pk).map(|r| r.values());
                if !unavailable.is_empty()
                    && let Some(prev) = &previous
                {
                    for name in &unavailable {
                        if let Some(i) = self.layout.table_schema.index_of(name) {
                            row[i] = prev[i].clone();
                        }
                    }
                }
                let old_key = previous.as_deref().map(|p| self.join_key_of_table_row(p));
                let known = self.table.version_of(&pk).is_some();
                let new_key = self.join_key_of_table_row(&row);
                let valid_from = if snapshot { EventTime::MIN } else { time };
                if self.table.apply(&pk, version, valid_from, Some(&row))
                    == crate::state::Applied::Stale
                {
                    return;
                }
                if !self.layout.direct && old_key.as_ref() != Some(&new_key) {
                    // In as-of mode the old association stays: earlier versions still have it.
                    if matches!(self.spec.mode, JoinMode::Lookup)
                        && let Some(old) = &old_key
                        && let Some(pks) = self.index.get_mut(old)
                    {
                        pks.retain(|p| *p != pk);
                    }
                    // A key a memory table does not hold cannot be listed yet (its entries
                    // leave the index when it is forgotten); a disk table forgets lazily.
                    let may_be_listed = known || matches!(self.table, ReferenceTable::Disk(_));
                    let pks = self.index.entry(new_key.clone()).or_default();
                    if !may_be_listed || !pks.contains(&pk) {
                        pks.push(pk);
                    }
                }
                self.changed(valid_from);
                if matches!(self.spec.miss, MissPolicy::Hold { .. }) {
                    self.release_held(&new_key, out);
                }
            }
        }
    }

    fn changed(&mut self, valid_from: EventTime) {
        self.memo.clear();
        self.latest_valid_from = self.latest_valid_from.max(valid_from);
    }

    /// Projects a table row to the selected columns.
    fn project(&self, row: &[Value]) -> Projected {
        self.layout
            .selected
            .iter()
            .map(|&i| row[i].clone())
            .collect()
    }

    fn version_admits(&self, version: &Value, row: &[Value]) -> bool {
        let Some((_, cols)) = &self.layout.version else {
            return true;
        };
        let text = |c: &Option<usize>| -> Option<String> {
            c.and_then(|i| match &row[i] {
                Value::Str(s) => Some(s.to_string()),
                _ => None,
            })
        };
        let range = VersionRange {
            exact: text(&cols[0]),
            start_including: text(&cols[1]),
            start_excluding: text(&cols[2]),
            end_including: text(&cols[3]),
            end_excluding: text(&cols[4]),
        };
        match version {
            Value::Str(v) => range.matches(v),
            Value::Null => range.matches(""),
            Value::Int(n) => range.matches(&n.to_string()),
            _ => false,
        }
    }

    /// The matches of the event whose join key (and version) is in `self.probe_key`, as of
    /// `at` (`None`: latest).
    fn matches(&mut self, at: Option<EventTime>) -> Arc<[Projected]> {
        let memoizable = at.is_none_or(|t| t >= self.latest_valid_from);
        if memoizable && let Some(hit) = self.memo.get(&self.probe_key[..]) {
            return hit.clone();
        }
        let key_len = self.layout.event_key.len();
        let (join_key, rest) = self.probe_key.split_at(key_len);
        let (version, conditions) = rest.split_at(usize::from(self.layout.version.is_some()));
        let mut found: Vec<(&[Value], Projected)> = Vec::new();
        if let Some(pks) = self.index.get(join_key) {
            self.table.warm(pks.iter().map(|p| &p[..]));
            for pk in pks {
                let row = match at {
                    Some(t) if !memoizable => self.table.get_as_of(pk, t),
                    _ => self.table.get(pk),
                };
                let Some(row) = row.map(|r| r.values()) else {
                    continue;
                };
                let row = &row[..];
                let same_key = self
                    .layout
                    .table_key
                    .iter()
                    .zip(join_key)
                    .all(|(&i, v)| row[i] == *v);
                let conditions_hold = self
                    .layout
                    .conditions
                    .iter()
                    .zip(conditions)
                    .all(|((_, op, t), v)| op.holds(v, &row[*t]));
                if same_key
                    && conditions_hold
                    && version.first().is_none_or(|v| self.version_admits(v, row))
                {
                    found.push((pk, self.project(row)));
                }
            }
        }
        // In primary-key order, so that output does not depend on arrival or restore order.
        found.sort_by(|a, b| cmp_values(a.0, b.0));
        let found: Arc<[Projected]> = found.into_iter().map(|(_, p)| p).collect();
        if memoizable {
            if self.memo.len() >= MEMO_LIMIT {
                self.memo.clear();
            }
            self.memo.insert(self.probe_key[..].into(), found.clone());
        }
        found
    }

    fn set_probe_key(&mut self, event: &[Value]) {
        self.probe_key.clear();
        for &i in &self.layout.event_key {
            self.probe_key.push(event[i].clone());
        }
        if let Some((v, _)) = &self.layout.version {
            self.probe_key.push(event[*v].clone());
        }
        for (e, _, _) in &self.layout.conditions {
            self.probe_key.push(event[*e].clone());
        }
    }

    /// The direct path: the probe key is the primary key; emits the match, if any.
    fn join_direct(
        &self,
        event: &[Value],
        time: EventTime,
        at: Option<EventTime>,
        out: &mut Output,
    ) -> bool {
        let key: &[Value] = match self.layout.event_key.as_slice() {
            [one] => std::slice::from_ref(&event[*one]),
            _ => &self.probe_key,
        };
        let row = match at {
            Some(t) if t < self.latest_valid_from => self.table.get_as_of(key, t),
            _ => self.table.get(key),
        };
        let Some(row) = row else {
            return false;
        };
        self.emit_direct(event, row, time, out);
        true
    }

    /// Emits `event` joined with the stored `row` (the direct path's match).
    fn emit_direct(&self, event: &[Value], row: RowRef<'_>, time: EventTime, out: &mut Output) {
        let batch = out.port(0);
        for v in event {
            batch.push_value(v.clone());
        }
        let selected = &self.layout.selected;
        if selected.windows(2).all(|w| w[0] < w[1]) {
            // Decoded straight into the output, in one pass over the stored row.
            let mut next = selected.iter().peekable();
            for (i, v) in row.iter().enumerate() {
                if next.next_if_eq(&&i).is_some() {
                    batch.push_value(v);
                }
                if next.peek().is_none() {
                    break;
                }
            }
        } else {
            let row = row.values();
            for &i in selected {
                batch.push_value(row[i].clone());
            }
        }
        batch.push_value(Value::Bool(true));
        batch.finish_row(time);
    }

    /// Joins events in lookup mode. On the direct path with a one-column key, the lookups of
    /// up to `LOCATE_CHUNK` events are done together (`VersionedTable::locate_many`), so that
    /// their memory reads overlap; otherwise one event after another.
    fn join_rows(&mut self, rows: &[(&[Value], EventTime)], out: &mut Output) {
        let key = match self.layout.event_key[..] {
            [key] if self.layout.direct && self.spec.mode == JoinMode::Lookup => key,
            _ => {
                for &(row, t) in rows {
                    self.join(row, t, out, false);
                }
                return;
            }
        };
        let mut located = std::mem::take(&mut self.located);
        for chunk in rows.chunks(LOCATE_CHUNK) {
            self.table
                .warm(chunk.iter().map(|(r, _)| std::slice::from_ref(&r[key])));
            self.table.locate_many(
                chunk.iter().map(|(r, _)| std::slice::from_ref(&r[key])),
                &mut located,
            );
            for (&(row, t), at) in chunk.iter().zip(&located) {
                self.stats.lookups += 1;
                match at.and_then(|at| self.table.row_at(at)) {
                    Some(found) => {
                        self.stats.matched += 1;
                        self.emit_direct(row, found, t, out);
                    }
                    None => self.on_miss(row, t, out, false),
                }
            }
        }
        self.located = located;
    }

    /// Joins one event and emits the result. `final_attempt`: a held miss is not held again.
    fn join(&mut self, event: &[Value], time: EventTime, out: &mut Output, final_attempt: bool) {
        self.stats.lookups += 1;
        if !(self.layout.direct && self.layout.event_key.len() == 1) {
            self.set_probe_key(event);
        }
        let at = match self.spec.mode {
            JoinMode::Lookup => None,
            JoinMode::AsOf { .. } => Some(time),
        };
        if self.layout.direct {
            match self.layout.event_key.as_slice() {
                [one] => self
                    .table
                    .warm(std::iter::once(std::slice::from_ref(&event[*one]))),
                _ => self.table.warm(std::iter::once(&self.probe_key[..])),
            }
            if self.join_direct(event, time, at, out) {
                self.stats.matched += 1;
                return;
            }
        } else if let found = self.matches(at)
            && !found.is_empty()
        {
            self.stats.matched += 1;
            let batch = out.port(0);
            for m in found.iter() {
                for v in event {
                    batch.push_value(v.clone());
                }
                for v in m.iter() {
                    batch.push_value(v.clone());
                }
                batch.push_value(Value::Bool(true));
                batch.finish_row(time);
            }
            return;
        }
        self.on_miss(event, time, out, final_attempt);
    }

    /// What the miss policy does with an event that matched nothing.
    fn on_miss(&mut self, event: &[Value], time: EventTime, out: &mut Output, final_attempt: bool) {
        let timed_out = |timeout_ms: i64| {
            self.watermark
                .is_some_and(|w| time.saturating_add(timeout_ms) <= w)
        };
        match self.spec.miss {
            MissPolicy::Hold { timeout_ms } if !final_attempt && !timed_out(timeout_ms) => {
                let key: Box<[Value]> = self
                    .layout
                    .event_key
                    .iter()
                    .map(|&i| event[i].clone())
                    .collect();
                self.next_seq += 1;
                self.held.entry(key).or_default().push(Pending {
                    row: event.to_vec(),
                    time,
                    seq: self.next_seq,
                });
                self.held_count += 1;
                self.held_times.insert(time);
            }
            MissPolicy::Port => {
                self.stats.misses += 1;
                out.port(1).push_row_from(event, time);
            }
            MissPolicy::Drop => {
                self.stats.misses += 1;
            }
            _ => {
                self.stats.misses += 1;
                let batch = out.port(0);
                for v in event {
                    batch.push_value(v.clone());
                }
                for _ in &self.layout.selected {
                    batch.push_value(Value::Null);
                }
                batch.push_value(Value::Bool(false));
                batch.finish_row(time);
            }
        }
    }

    /// A row arrived for `join_key`: its held events are joined again (in as-of mode at
    /// their own time, so a row valid only later still leaves them held until the timeout).
    fn release_held(&mut self, join_key: &[Value], out: &mut Output) {
        if let Some(list) = self.held.remove(join_key) {
            self.held_count -= list.len();
            for p in &list {
                self.held_times.remove(p.time);
            }
            for p in list {
                self.join(&p.row, p.time, out, false);
            }
        }
    }

    /// Held misses whose timeout the watermark passed are emitted as misses.
    fn expire_held(&mut self, watermark: EventTime, out: &mut Output) {
        let MissPolicy::Hold { timeout_ms } = self.spec.miss else {
            return;
        };
        if self.held_count == 0 {
            return;
        }
        let mut due: Vec<Pending> = Vec::new();
        self.held.retain(|_, list| {
            list.retain(|p| {
                let expired = p.time.saturating_add(timeout_ms) <= watermark;
                if expired {
                    due.push(p.clone());
                }
                !expired
            });
            !list.is_empty()
        });
        self.held_count -= due.len();
        for p in &due {
            self.held_times.remove(p.time);
        }
        due.sort_by_key(|p| (p.time, p.seq));
        for p in due {
            self.join(&p.row, p.time, out, true);
        }
    }

    /// Emits or buffers one event that passed the gate.
    fn admit(&mut self, event: Vec<Value>, time: EventTime, out: &mut Output) {
        match self.spec.mode {
            JoinMode::Lookup => self.join(&event, time, out, false),
            JoinMode::AsOf { .. } => {
                if self.watermark.is_some_and(|w| time <= w) {
                    // Already behind the watermark: everything it can match is known.
                    self.join(&event, time, out, false);
                } else {
                    self.waiting.push(Pending {
                        row: event,
                        time,
                        seq: 0,
                    });
                }
            }
        }
    }

    fn open_gate(&mut self, out: &mut Output) {
        self.gate_min = None;
        self.gate_events = 0;
        let log = std::mem::take(self.gate_log.get_mut());
        let gate_log = self.gate_log.get_mut();
        gate_log.retired = log.retired;
        gate_log.retired.extend(log.dir);
        let waiting = match self.gate.drain() {
            Ok(w) => w,
            Err(e) => {
                // The spill file is gone or corrupt: nothing else can be done with it.
                tracing::error!(node = %self.name, error = %e, "cannot read back the events the gate spilled");
                Vec::new()
            }
        };
        let width = self.event_schema.len();
        for rows in waiting {
            if self.spec.mode == JoinMode::Lookup {
                let list: Vec<(&[Value], EventTime)> = rows
                    .values
                    .chunks(width.max(1))
                    .zip(rows.times.iter().copied())
                    .collect();
                self.join_rows(&list, out);
                continue;
            }
            let mut values = rows.values.into_iter();
            for time in rows.times {
                let row: Vec<Value> = values.by_ref().take(width).collect();
                self.admit(row, time, out);
            }
        }
        self.counters.gate_buffered.set(0.0);
    }

    /// Puts a batch of events behind the shut gate.
    fn wait_at_gate(&mut self, batch: Batch) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let times = batch.event_times().to_vec();
        if let Some(&min) = times.iter().min() {
            self.gate_min = Some(self.gate_min.map_or(min, |m| m.min(min)));
        }
        let mut values = Vec::with_capacity(n * batch.width());
        for (row, _) in batch.rows() {
            values.extend_from_slice(row);
        }
        self.gate.push(GateRows { values, times }, n);
        self.gate_events += n;
        self.counters.gate_buffered.set(self.gate_events as f64);
    }
}

impl Operator for EnrichOperator {
    fn ports(&self) -> Vec<PortSpec> {
        let mut ports = vec![PortSpec {
            name: MAIN_PORT.into(),
            schema: self.out_schema.clone(),
        }];
        if self.spec.miss == MissPolicy::Port {
            ports.push(PortSpec {
                name: MISS_PORT.into(),
                schema: self.event_schema.clone(),
            });
        }
        ports
    }

    fn process(&mut self, input: usize, batch: Batch, out: &mut Output) {
        if input == 1 {
            for (row, t) in batch.rows() {
                self.apply_change(row, t, out);
            }
            if self.snapshot_done && !self.gate.is_empty() {
                self.open_gate(out);
            }
            return;
        }
        if self.gated_shut() {
            self.wait_at_gate(batch);
            return;
        }
        if self.spec.mode == JoinMode::Lookup {
            let rows: Vec<(&[Value], EventTime)> = batch.rows().collect();
            self.join_rows(&rows, out);
        } else {
            for (row, t) in batch.rows() {
                self.admit(row.to_vec(), t, out);
            }
        }
        self.publish_counts();
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
        if watermark == crate::time::watermark::END_OF_TIME && self.gated_shut() {
            // Every input has ended: no snapshot end will come any more.
            tracing::warn!(node = %self.name, table = %self.spec.table, buffered = self.gate_events, "input ended before the reference snapshot completed: buffered events are joined against the partial table");
            self.snapshot_done = true;
            self.open_gate(out);
        }
        if !self.waiting.is_empty() {
            // In event-time order (stable: arrival order among equal times).
            self.waiting.sort_by_key(|p| p.time);
            let n = self.waiting.partition_point(|p| p.time <= watermark);
            let due: Vec<Pending> = self.waiting.drain(..n).collect();
            for p in due {
                self.join(&p.row, p.time, out, false);
            }
        }
        self.expire_held(watermark, out);
        if watermark == crate::time::watermark::END_OF_TIME {
            self.measure_state();
        }
        self.publish_counts();
        let cutoff = match self.spec.mode {
            JoinMode::AsOf {
                retention_ms: Some(_),
            } => Some(watermark),
            // Latest rows only: forget tombstones an hour (event time) after their delete,
            // sweeping every ten minutes while there are any.
            JoinMode::Lookup
                if self.table.key_count() > self.table.len()
                    && self
                        .last_sweep
                        .is_none_or(|s| watermark.saturating_sub(s) >= TOMBSTONE_SWEEP_MS) =>
            {
                self.last_sweep = Some(watermark);
                Some(watermark.saturating_sub(TOMBSTONE_RETENTION_MS))
            }
            _ => None,
        };
        if let Some(cutoff) = cutoff {
            let before = self.table.key_count();
            self.table.expire(cutoff);
            if self.table.key_count() < before && !self.layout.direct {
                // Forgotten keys leave the index too (a key that comes back is listed anew).
                let table = &self.table;
                self.index.retain(|_, pks| {
                    pks.retain(|pk| table.version_of(pk).is_some());
                    !pks.is_empty()
                });
            }
        }
        self.counters.rows.set(self.table.len() as f64);
    }

    fn watermark_hold(&self) -> Option<EventTime> {
        [self.gate_min, self.held_times.min()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_sub(1))
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("lookups", self.stats.lookups),
            ("matched", self.stats.matched),
            ("misses", self.stats.misses),
            ("gate_open", u64::from(self.gate_open())),
            ("gate_buffered", self.gate_events as u64),
            ("gate_spilled", self.gate.spilled_weight() as u64),
            ("held", self.held_count as u64),
            ("reference_rows", self.table.len() as u64),
            ("reference_bytes", self.measured_bytes.get()),
        ]
    }

    fn snapshot(&mut self) -> Result<StateImage, StateError> {
        self.measure_state();
        let mut blobs = Blobs::new();
        let gate_segments = {
            let mut log = self.gate_log.borrow_mut();
            let fail = |e: std::io::Error| {
                StateError::encode(&self.name, format!("cannot seal the gate's events: {e}"))
            };
            let new = self.gate.to_vec_from(log.sealed).map_err(fail)?;
            log.seal(&new).map_err(fail)?;
            for (id, blob) in &log.segments {
                blobs.insert(id.clone(), blob.clone());
            }
            log.segments.iter().map(|(id, _)| id.clone()).collect()
        };
        let image = Image {
            version: SNAPSHOT_VERSION,
            table: self.table.snapshot(&mut blobs)?,
            latest_valid_from: self.latest_valid_from,
            snapshot_done: self.snapshot_done,
            watermark: self.watermark,
            gate_segments,
            waiting: self.waiting.clone(),
            held: {
                let mut held: Vec<Pending> = self.held.values().flatten().cloned().collect();
                held.sort_by_key(|p| p.seq);
                held
            },
            next_seq: self.next_seq,
            stats: self.stats,
            last_sweep: self.last_sweep,
        };
        let bytes = postcard::to_allocvec(&image).map_err(|e| StateError::encode(&self.name, e))?;
        Ok(StateImage { bytes, blobs })
    }

    fn restore(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
        let fail = |reason: String| StateError::decode(&self.name, reason);
        let (snapshot, blobs) = (&snapshot.bytes[..], &snapshot.blobs);
        if snapshot.first().copied() != Some(SNAPSHOT_VERSION) {
            return Err(fail(format!(
                "unknown snapshot version {:?} (this build reads {SNAPSHOT_VERSION})",
                snapshot.first()
            )));
        }
        let image: Image = postcard::from_bytes(snapshot).map_err(|e| fail(e.to_string()))?;
        self.table = ReferenceTable::restore(&image.table, blobs, &self.spec.state)?;
        self.index.clear();
        self.memo.clear();
        // (join key, primary key) pairs already listed.
        let mut seen: ahash::AHashSet<(Projected, Projected)> = ahash::AHashSet::new();
        let mut index: Map<Box<[Value]>, Vec<Box<[Value]>>> = Map::default();
        if !self.layout.direct {
            let table_key = &self.layout.table_key;
            self.table.for_each_row(|pk, row| {
                let key: Box<[Value]> = table_key.iter().map(|&i| row[i].clone()).collect();
                let pk: Box<[Value]> = pk.into();
                if seen.insert((key.clone(), pk.clone())) {
                    index.entry(key).or_default().push(pk);
                }
            });
        }
        self.index = index;
        self.latest_valid_from = image.latest_valid_from;
        self.snapshot_done = image.snapshot_done;
        self.watermark = image.watermark;
        self.gate = SpillQueue::new(match self.spec.strategy {
            EnrichStrategy::Gated { max_buffered } => max_buffered,
            EnrichStrategy::Gradual => 1,
        });
        self.gate_min = None;
        self.gate_events = 0;
        let mut log = GateLog::default();
        for id in &image.gate_segments {
            let blob = blobs
                .get(id)
                .ok_or_else(|| fail(format!("the checkpoint lacks gate segment {id}")))?;
            let bytes = blob
                .load()
                .map_err(|e| fail(format!("cannot read gate segment {id}: {e}")))?;
            let items: Vec<GateRows> =
                postcard::from_bytes(&bytes).map_err(|e| fail(e.to_string()))?;
            log.sealed += items.len();
            for g in items {
                let n = g.times.len();
                self.gate_min = g.times.iter().copied().chain(self.gate_min).min();
                self.gate_events += n;
                self.gate.push(g, n);
            }
            log.segments.push((id.clone(), blob.clone()));
        }
        *self.gate_log.get_mut() = log;
        self.held_times.clear();
        self.waiting = image.waiting;
        self.held.clear();
        self.held_count = image.held.len();
        for p in image.held {
            self.set_probe_key(&p.row);
            let key: Box<[Value]> = self.probe_key[..self.layout.event_key.len()].into();
            self.held_times.insert(p.time);
            self.held.entry(key).or_default().push(p);
        }
        self.next_seq = image.next_seq;
        self.stats = image.stats;
        self.last_sweep = image.last_sweep;
        self.counters
            .gate_open
            .set(if self.gated_shut() { 0.0 } else { 1.0 });
        Ok(())
    }
}

const SNAPSHOT_VERSION: u8 = 9;

#[derive(Serialize, Deserialize)]
struct Image {
    version: u8,
    #[serde(with = "serde_bytes")]
    table: Vec<u8>,
    latest_valid_from: EventTime,
    snapshot_done: bool,
    watermark: Option<EventTime>,
    /// The gate's events, as segments (blobs), oldest first.
    gate_segments: Vec<String>,
    waiting: Vec<Pending>,
    held: Vec<Pending>,
    next_seq: u64,
    stats: JoinStats,
    last_sweep: Option<EventTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Harness;
    use crate::time::Watermark;
    use proptest::prelude::*;

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    fn events_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("host", DataType::String),
            Field::new("product", DataType::String),
            Field::new("version", DataType::String),
        ]))
    }

    /// cpe_match-like table: id, product, cve, version, start_including, end_excluding.
    fn table_schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("product", DataType::String),
            Field::new("cve", DataType::String),
            Field::new("version", DataType::String),
            Field::new("version_start_including", DataType::String),
            Field::new("version_end_excluding", DataType::String),
        ])
    }

    fn change_schema() -> SchemaRef {
        rows::change_schema(&table_schema())
    }

    fn spec(mode: JoinMode, miss: MissPolicy, strategy: EnrichStrategy) -> EnrichSpec {
        EnrichSpec {
            table: "cpe".into(),
            primary_key: vec!["id".into()],
            key: vec![("product".into(), "product".into())],
            columns: Some(vec!["cve".into()]),
            version_range: Some(VersionRangeSpec {
                version: "version".into(),
                exact: Some("version".into()),
                start_including: Some("version_start_including".into()),
                start_excluding: None,
                end_including: None,
                end_excluding: Some("version_end_excluding".into()),
            }),
            conditions: Vec::new(),
            mode,
            miss,
            strategy,
            state: StateBackend::Memory,
        }
    }

    fn op(spec: EnrichSpec) -> EnrichOperator {
        EnrichOperator::new("enrich", spec, events_schema(), &change_schema()).unwrap()
    }

    fn harness(
        mode: JoinMode,
        miss: MissPolicy,
        strategy: EnrichStrategy,
    ) -> Harness<EnrichOperator> {
        Harness::new(op(spec(mode, miss, strategy)), 2)
    }

    /// One reference change: `(op, lsn, id, product, cve, version, start, end)`.
    type Ch<'a> = (
        &'a str,
        i64,
        i64,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
    );

    fn opt(v: &str) -> Value {
        if v.is_empty() { Value::Null } else { s(v) }
    }

    fn changes(list: &[(Ch<'_>, EventTime)]) -> Batch {
        let mut b = Batch::new(change_schema());
        for ((o, lsn, id, product, cve, version, start, end), t) in list {
            if *o == rows::SNAPSHOT_END {
                rows::push_snapshot_end(&mut b, *t);
                continue;
            }
            b.push_row(
                [
                    s(o),
                    Value::Int(*lsn),
                    Value::Int(0),
                    s(if *o == "r" { "true" } else { "false" }),
                    Value::Null,
                    Value::Int(*id),
                    opt(product),
                    opt(cve),
                    opt(version),
                    opt(start),
                    opt(end),
                ],
                *t,
            );
        }
        b
    }

    fn events(list: &[(&str, &str, &str, EventTime)]) -> Batch {
        let mut b = Batch::new(events_schema());
        for (h, p, v, t) in list {
            b.push_row([s(h), s(p), s(v)], *t);
        }
        b
    }

    fn cves(rows: &[(Vec<Value>, EventTime)]) -> Vec<(String, String, bool)> {
        rows.iter()
            .map(|(r, _)| {
                (
                    r[0].as_str().unwrap().to_string(),
                    r[3].as_str().unwrap_or("-").to_string(),
                    r[4] == Value::Bool(true),
                )
            })
            .collect()
    }

    const END: &str = rows::SNAPSHOT_END;

    #[test]
    fn lookup_finds_every_matching_row_by_key_and_version_range() {
        let mut h = harness(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        h.data(
            1,
            changes(&[
                (("r", 5, 1, "openssl", "CVE-A", "1.0.2k", "", ""), 0),
                (("r", 5, 2, "openssl", "CVE-B", "*", "1.0.0", "1.0.2l"), 0),
                (("r", 5, 3, "openssl", "CVE-C", "*", "1.1.0", "1.1.1"), 0),
                (("r", 5, 4, "openssh", "CVE-D", "7.4", "", ""), 0),
            ]),
        );
        h.data(
            0,
            events(&[
                ("h1", "openssl", "1.0.2k", 10),
                ("h2", "openssl", "1.1.1", 11),
                ("h3", "nginx", "1.0", 12),
            ]),
        );
        let out = cves(&h.take("main"));
        assert_eq!(
            out,
            vec![
                ("h1".into(), "CVE-A".into(), true),
                ("h1".into(), "CVE-B".into(), true),
                ("h2".into(), "-".into(), false),
                ("h3".into(), "-".into(), false),
            ]
        );
        let op = h.operator();
        assert_eq!(op.reference_rows(), 4);
        assert!(op.state_bytes() > 0);
    }

    #[test]
    fn stale_replays_deletes_and_key_changes_are_applied_by_version() {
        let mut h = harness(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        h.data(
            1,
            changes(&[
                (("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 1),
                (("u", 20, 1, "openssl", "CVE-A2", "*", "", ""), 2),
                // A replay of the older version is ignored.
                (("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 3),
                // Primary-key change: delete id 1, create id 9, one LSN.
                (("d", 30, 1, "openssl", "", "", "", ""), 4),
                (("c", 30, 9, "openssh", "CVE-A2", "*", "", ""), 4),
            ]),
        );
        h.data(
            0,
            events(&[("h", "openssl", "1", 5), ("h", "openssh", "1", 5)]),
        );
        assert_eq!(
            cves(&h.take("main")),
            vec![
                ("h".into(), "-".into(), false),
                ("h".into(), "CVE-A2".into(), true)
            ]
        );
    }

    #[test]
    fn tombstones_of_a_latest_only_table_are_kept_for_an_hour_then_forgotten() {
        let mut h = harness(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        h.data(
            1,
            changes(&[
                (("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 1_000),
                (("d", 20, 1, "openssl", "", "", "", ""), 2_000),
            ]),
        );
        h.watermark_all(2_000);
        // A replay of the insert, within the hour: ignored.
        h.data(
            1,
            changes(&[(("c", 10, 1, "openssl", "CVE-A", "*", "", ""), 1_000)]),
        );
        assert_eq!(h.operator().reference_rows(), 0);
        assert_eq!(h.operator().table.key_count(), 1, "the tombstone is kept");
        h.watermark_all(2_000 + TOMBSTONE_RETENTION_MS + TOMBSTONE_SWEEP_MS);
        assert_eq!(
            h.operator().table.key_count(),
            0,
            "and forgotten after the hour"
        );
    }

    #[test]
    fn gated_events_wait_for_the_snapshot_and_hold_the_watermark() {
        let mut h = harness(
            JoinMode::Lookup,
            MissPolicy::Emit,
            EnrichStrategy::Gated { max_buffered: 100 },
        );
        h.data(0, events(&[("h1", "openssl", "1.0.2k", 10)]));
        h.data(
            1,
            changes(&[(("r", 5, 1, "openssl", "CVE-A", "1.0.2k", "", ""), 0)]),
        );
        assert!(h.take("main").is_empty(), "the gate is shut");
        assert_eq!(h.operator().watermark_hold(), Some(9));
        assert!(!h.operator().gate_open());
        h.data(1, changes(&[((END, 0, 0, "", "", "", "", ""), 0)]));
        assert_eq!(
            cves(&h.take("main")),
            vec![("h1".into(), "CVE-A".into(), true)]
        );
        assert_eq!(h.operator().watermark_hold(), None);
    }

    #[test]
    fn a_full_gate_spills_and_input_end_opens_it() {
        let mut h = harness(
            JoinMode::Lookup,
            MissPolicy::Emit,
            EnrichStrategy::Gated { max_buffered: 1 },
        );
        // Batches wait whole: the first fills the memory allowance, the second is spilled.
        h.data(0, events(&[("h1", "openssl", "1", 10)]));
        h.data(0, events(&[("h2", "openssl", "1", 11)]));
        assert!(
            h.take("main").is_empty(),
            "nothing goes through a shut gate"
        );
        assert_eq!(h.operator().spilled(), 1);
        // A checkpoint holds the spilled events too.
        let snap = h.barrier();
        let mut h = Harness::restore(
            op(spec(
                JoinMode::Lookup,
                MissPolicy::Emit,
                EnrichStrategy::Gated { max_buffered: 1 },
            )),
            &snap,
            2,
        );
        assert_eq!(h.operator().watermark_hold(), Some(9));
        h.data(
            1,
            changes(&[(("r", 5, 1, "openssl", "CVE-A", "*", "", ""), 0)]),
        );
        h.watermark_all(crate::time::watermark::END_OF_TIME);
        assert_eq!(
            cves(&h.take("main")),
            vec![
                ("h1".into(), "CVE-A".into(), true),
                ("h2".into(), "CVE-A".into(), true)
            ]
        );
    }

    #[test]
    fn as_of_joins_the_version_valid_at_the_event_time() {
        let mut h = harness(
            JoinMode::AsOf { retention_ms: None },
            MissPolicy::Emit,
            EnrichStrategy::Gradual,
        );
        h.data(
            1,
            changes(&[
                (("r", 5, 1, "openssl", "CVE-OLD", "*", "", ""), 1_000),
                (("u", 10, 1, "openssl", "CVE-NEW", "*", "", ""), 100),
            ]),
        );
        h.data(
            0,
            events(&[("early", "openssl", "1", 50), ("late", "openssl", "1", 150)]),
        );
        assert!(h.take("main").is_empty(), "as-of waits for the watermark");
        h.watermark(0, Watermark::EventTime(200));
        assert!(
            h.take("main").is_empty(),
            "the reference side has not passed"
        );
        h.watermark(1, Watermark::EventTime(200));
        assert_eq!(
            cves(&h.take("main")),
            vec![
                ("early".into(), "CVE-OLD".into(), true),
                ("late".into(), "CVE-NEW".into(), true)
            ]
        );
    }

    #[test]
    fn misses_go_to_the_miss_port_or_are_held_until_the_row_or_the_timeout() {
        let mut h = harness(JoinMode::Lookup, MissPolicy::Port, EnrichStrategy::Gradual);
        h.data(0, events(&[("h", "nginx", "1", 5)]));
        assert!(h.take("main").is_empty());
        assert_eq!(h.take("miss").len(), 1);

        let mut h = harness(
            JoinMode::Lookup,
            MissPolicy::Hold { timeout_ms: 100 },
            EnrichStrategy::Gradual,
        );
        h.data(0, events(&[("a", "nginx", "1", 5), ("b", "redis", "1", 6)]));
        assert!(h.take("main").is_empty());
        assert_eq!(h.operator().watermark_hold(), Some(4));
        h.data(
            1,
            changes(&[(("c", 9, 1, "nginx", "CVE-N", "*", "", ""), 50)]),
        );
        assert_eq!(
            cves(&h.take("main")),
            vec![("a".into(), "CVE-N".into(), true)]
        );
        h.watermark_all(105);
        assert!(h.take("main").is_empty());
        h.watermark_all(106);
        assert_eq!(cves(&h.take("main")), vec![("b".into(), "-".into(), false)]);
        assert_eq!(h.operator().watermark_hold(), None);
    }

    #[test]
    fn residual_conditions_filter_matches_and_key_the_memo() {
        let mut spec = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        spec.version_range = None;
        // Only rows whose `version` column is above the event's `version`.
        spec.conditions = vec![Condition {
            event: "version".into(),
            op: CmpOp::Lt,
            table: "version".into(),
        }];
        let mut h = Harness::new(op(spec), 2);
        h.data(
            1,
            changes(&[
                (("r", 5, 1, "openssl", "CVE-A", "2", "", ""), 0),
                (("r", 5, 2, "openssl", "CVE-B", "5", "", ""), 0),
            ]),
        );
        h.data(
            0,
            events(&[
                ("h1", "openssl", "1", 10),
                ("h2", "openssl", "3", 11),
                ("h3", "openssl", "1", 12),
                ("h4", "openssl", "9", 13),
            ]),
        );
        assert_eq!(
            cves(&h.take("main")),
            vec![
                ("h1".into(), "CVE-A".into(), true),
                ("h1".into(), "CVE-B".into(), true),
                ("h2".into(), "CVE-B".into(), true),
                ("h3".into(), "CVE-A".into(), true),
                ("h3".into(), "CVE-B".into(), true),
                ("h4".into(), "-".into(), false),
            ]
        );
        let mut bad = spec_for_conditions();
        bad.conditions[0].table = "id".into();
        let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
            .err()
            .unwrap();
        assert_eq!(e.field, "where[0]");
        assert!(e.message.contains("one type"), "{}", e.message);
    }

    fn spec_for_conditions() -> EnrichSpec {
        let mut s = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        s.conditions = vec![Condition {
            event: "version".into(),
            op: CmpOp::Lt,
            table: "version".into(),
        }];
        s
    }

    #[test]
    fn held_misses_on_a_primary_key_join_are_released_by_their_row() {
        // Joined by the primary key: the direct path, with no probe key built.
        let mut spec = spec(
            JoinMode::Lookup,
            MissPolicy::Hold { timeout_ms: 100 },
            EnrichStrategy::Gradual,
        );
        spec.key = vec![("version".into(), "cve".into())];
        spec.primary_key = vec!["cve".into()];
        spec.columns = Some(vec!["product".into()]);
        spec.version_range = None;
        let events = Arc::new(Schema::new(vec![
            Field::new("host", DataType::String),
            Field::new("version", DataType::String),
        ]));
        let op = EnrichOperator::new("e", spec, events.clone(), &change_schema()).unwrap();
        assert!(op.layout.direct);
        // Only the columns the join reads are stored, the primary key first: cve and
        // product, of six.
        assert_eq!(op.layout.stored, vec![2, 1]);
        let mut h = Harness::new(op, 2);
        let mut b = Batch::new(events);
        b.push_row([s("h1"), s("CVE-1")], 5);
        h.data(0, b);
        assert!(h.take("main").is_empty());
        h.data(
            1,
            changes(&[(("c", 9, 1, "openssl", "CVE-1", "", "", ""), 6)]),
        );
        let out = h.take("main");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0[2], s("openssl"));
        assert_eq!(h.operator().watermark_hold(), None);
    }

    #[test]
    fn spec_errors_name_the_field() {
        let mut bad = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        bad.key = vec![("product".into(), "nope".into())];
        let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
            .err()
            .unwrap();
        assert_eq!(e.field, "key.product");
        let mut bad = spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual);
        bad.columns = Some(vec!["version".into()]);
        let e = EnrichOperator::new("e", bad, events_schema(), &change_schema())
            .err()
            .unwrap();
        assert_eq!(e.field, "columns[0]");
        let e = EnrichOperator::new(
            "e",
            spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gradual),
            events_schema(),
            &events_schema(),
        )
        .err()
        .unwrap();
        assert_eq!(e.field, "inputs[1]");
    }

    /// A random script: reference changes (ids 0..4, products p0..p2, increasing LSNs with
    /// replays), events (products p0..p3), watermarks.
    #[derive(Clone, Debug)]
    enum Step {
        Change {
            id: i64,
            product: u8,
            cve: u8,
            delete: bool,
            lsn_back: u8,
            t: i64,
        },
        Event {
            product: u8,
            t: i64,
        },
        Watermark(i64),
        SnapshotEnd,
    }

    fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            3 => (0i64..4, 0u8..3, 0u8..5, prop::bool::weighted(0.2), prop_oneof![4 => Just(0u8), 1 => 1u8..4], 0i64..100)
                .prop_map(|(id, product, cve, delete, lsn_back, t)| Step::Change { id, product, cve, delete, lsn_back, t }),
            4 => (0u8..4, 0i64..100).prop_map(|(product, t)| Step::Event { product, t }),
            1 => (0i64..100).prop_map(Step::Watermark),
            1 => Just(Step::SnapshotEnd),
        ];
        prop::collection::vec(step, 1..60)
    }

    /// The steps with every reference change after the watermark (as a source's watermark
    /// promises); events may still be late.
    fn lawful(steps: &[Step]) -> Vec<Step> {
        let mut wm = i64::MIN;
        steps
            .iter()
            .map(|st| match st {
                Step::Watermark(t) => {
                    wm = wm.max(*t);
                    st.clone()
                }
                Step::Change {
                    id,
                    product,
                    cve,
                    delete,
                    lsn_back,
                    t,
                } => Step::Change {
                    id: *id,
                    product: *product,
                    cve: *cve,
                    delete: *delete,
                    lsn_back: *lsn_back,
                    t: (*t).max(wm.saturating_add(1)),
                },
                _ => st.clone(),
            })
            .collect()
    }

    /// Turns steps into batches: changes get increasing LSNs (or replay an earlier one).
    fn script(steps: &[Step]) -> Vec<(usize, Option<Batch>, Option<i64>)> {
        let mut lsn = 0i64;
        let mut out = Vec::new();
        let mut wm = 0;
        for st in steps {
            match st {
                Step::Change {
                    id,
                    product,
                    cve,
                    delete,
                    lsn_back,
                    t,
                } => {
                    lsn += 1;
                    let l = (lsn - *lsn_back as i64).max(1);
                    let p = format!("p{product}");
                    let c = format!("CVE-{cve}");
                    let o = if *delete { "d" } else { "u" };
                    out.push((
                        1,
                        Some(changes(&[((o, l, *id, &p, &c, "*", "", ""), *t)])),
                        None,
                    ));
                }
                Step::Event { product, t } => {
                    let p = format!("p{product}");
                    out.push((0, Some(events(&[("h", &p, "1", *t)])), None));
                }
                Step::Watermark(t) => {
                    wm = wm.max(*t);
                    out.push((0, None, Some(wm)));
                }
                Step::SnapshotEnd => out.push((
                    1,
                    Some(changes(&[((END, 0, 0, "", "", "", "", ""), 0)])),
                    None,
                )),
            }
        }
        out
    }

    fn drive(
        spec: &EnrichSpec,
        steps: &[(usize, Option<Batch>, Option<i64>)],
        restore_after: Option<usize>,
    ) -> Vec<(Vec<Value>, EventTime)> {
        let mut h = Harness::new(op(spec.clone()), 2);
        let mut all = Vec::new();
        for (n, (input, batch, wm)) in steps.iter().enumerate() {
            if let Some(b) = batch {
                h.data(*input, b.clone());
            }
            if let Some(w) = wm {
                h.watermark_all(*w);
            }
            all.extend(h.take("main"));
            if restore_after == Some(n) {
                let snap = h.barrier();
                h = Harness::restore(op(spec.clone()), &snap, 2);
                if let Some(w) = steps[..=n].iter().filter_map(|s| s.2).max() {
                    h.watermark_all(w);
                    all.extend(h.take("main"));
                }
            }
        }
        h.watermark_all(crate::time::watermark::END_OF_TIME);
        all.extend(h.take("main"));
        all
    }

    /// One database operation of the materialization oracle.
    #[derive(Clone, Debug)]
    enum DbOp {
        Upsert {
            id: i64,
            product: u8,
        },
        Delete {
            id: i64,
        },
        /// A primary-key change: the row moves from `id` to `to`.
        Rekey {
            id: i64,
            to: i64,
        },
    }

    fn arb_history() -> impl Strategy<Value = Vec<Vec<DbOp>>> {
        let op = prop_oneof![
            4 => (0i64..6, 0u8..4).prop_map(|(id, product)| DbOp::Upsert { id, product }),
            1 => (0i64..6).prop_map(|id| DbOp::Delete { id }),
            1 => (0i64..6, 0i64..6).prop_map(|(id, to)| DbOp::Rekey { id, to }),
        ];
        prop::collection::vec(prop::collection::vec(op, 1..4), 1..25)
    }

    /// A change row of the oracle's table (`id`, `product`) at `(lsn, ordinal)`.
    fn oracle_change(
        b: &mut Batch,
        op: &str,
        lsn: i64,
        ordinal: i64,
        id: i64,
        product: Option<String>,
    ) {
        b.push_row(
            [
                s(op),
                Value::Int(lsn),
                Value::Int(ordinal),
                s(if op == "r" { "true" } else { "false" }),
                Value::Null,
                Value::Int(id),
                product.map_or(Value::Null, |p| s(&p)),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            lsn,
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Oracle: a random database history (upserts, deletes, primary-key changes), seen as a
        /// snapshot at a random point whose rows arrive shuffled and interleaved with the
        /// streaming changes after it, with streaming changes replayed at random (at-least-once
        /// delivery), materializes into exactly the final database state, in memory and on
        /// disk (a cache of two keys).
        #[test]
        fn materialized_table_equals_the_final_database_state(
            history in arb_history(),
            snapshot_after in 0usize..25,
            shuffle in prop::collection::vec(0usize..1000, 0..40),
            replays in prop::collection::vec((0usize..1000, 0usize..1000), 0..15),
            on_disk in any::<bool>(),
        ) {
            use std::collections::BTreeMap;
            let mut db: BTreeMap<i64, String> = BTreeMap::new();
            // Streaming change rows after the snapshot, as (op, lsn, ordinal, id, product).
            type Row = (&'static str, i64, i64, i64, Option<String>);
            let mut streamed: Vec<Row> = Vec::new();
            let snapshot_after = snapshot_after % (history.len() + 1);
            let mut snapshot: Vec<Row> = Vec::new();
            for (tx, ops) in history.iter().enumerate() {
                if tx == snapshot_after {
                    let lsn = tx as i64 * 100 + 50;
                    snapshot = db.iter().map(|(id, p)| ("r", lsn, 0, *id, Some(p.clone()))).collect();
                }
                let commit = tx as i64 * 100 + 100;
                let mut changes: Vec<Row> = Vec::new();
                for op in ops {
                    let ordinal = changes.len() as i64 + 1;
                    match op {
                        DbOp::Upsert { id, product } => {
                            let o = if db.contains_key(id) { "u" } else { "c" };
                            let p = format!("p{product}");
                            db.insert(*id, p.clone());
                            changes.push((o, commit, ordinal, *id, Some(p)));
                        }
                        DbOp::Delete { id } => {
                            if db.remove(id).is_some() {
                                changes.push(("d", commit, ordinal, *id, None));
                            }
                        }
                        DbOp::Rekey { id, to } => {
                            if id != to && db.contains_key(id) && !db.contains_key(to) {
                                let p = db.remove(id).expect("present");
                                db.insert(*to, p.clone());
                                changes.push(("d", commit, ordinal, *id, None));
                                changes.push(("c", commit, ordinal + 1, *to, Some(p)));
                            }
                        }
                    }
                }
                if tx >= snapshot_after {
                    streamed.extend(changes);
                }
            }
            if snapshot_after == history.len() {
                let lsn = history.len() as i64 * 100 + 50;
                snapshot = db.iter().map(|(id, p)| ("r", lsn, 0, *id, Some(p.clone()))).collect();
            }
            // Shuffle the snapshot rows, then interleave them with the streamed changes.
            for (k, j) in shuffle.iter().enumerate() {
                if !snapshot.is_empty() {
                    let a = k % snapshot.len();
                    let b = j % snapshot.len();
                    snapshot.swap(a, b);
                }
            }
            let mut delivery: Vec<Row> = Vec::new();
            let mut si = snapshot.into_iter();
            for (n, c) in streamed.iter().enumerate() {
                if shuffle.get(n).is_some_and(|x| x % 2 == 0)
                    && let Some(r) = si.next()
                {
                    delivery.push(r);
                }
                delivery.push(c.clone());
                for (at, which) in &replays {
                    if at % (streamed.len().max(1)) == n {
                        delivery.push(streamed[which % (n + 1)].clone());
                    }
                }
            }
            delivery.extend(si);

            let spec = EnrichSpec {
                table: "t".into(),
                primary_key: vec!["id".into()],
                key: vec![("id".into(), "id".into())],
                columns: Some(vec!["product".into()]),
                version_range: None,
                conditions: Vec::new(),
                mode: JoinMode::Lookup,
                miss: MissPolicy::Emit,
                strategy: EnrichStrategy::Gradual,
                state: if on_disk {
                    StateBackend::Disk(crate::state::disk::DiskOptions { dir: None, cache_rows: 2 })
                } else {
                    StateBackend::Memory
                },
            };
            let events = Arc::new(Schema::new(vec![Field::new("id", DataType::Int)]));
            let op = EnrichOperator::new("oracle", spec, events.clone(), &change_schema()).unwrap();
            let mut h = Harness::new(op, 2);
            let mut b = Batch::new(change_schema());
            for (o, lsn, ordinal, id, p) in &delivery {
                oracle_change(&mut b, o, *lsn, *ordinal, *id, p.clone());
            }
            h.data(1, b);
            let mut probe = Batch::new(events);
            for id in 0..6 {
                probe.push_row([Value::Int(id)], 0);
            }
            h.data(0, probe);
            let got: BTreeMap<i64, String> = h
                .take("main")
                .into_iter()
                .filter_map(|(r, _)| Some((r[0].as_i64()?, r[1].as_str()?.to_string())))
                .collect();
            prop_assert_eq!(got, db);
            prop_assert_eq!(h.operator().reference_rows(), h.operator().table.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Oracle: as-of enrichment equals a nested loop over the reference history, per
        /// event: the rows whose latest version (by LSN, replays ignored) with a
        /// `valid_from <= t` is live and has the event's product.
        #[test]
        fn as_of_join_equals_a_nested_loop_over_the_history(steps in arb_steps()) {
            let steps = lawful(&steps);
            let spec = spec(JoinMode::AsOf { retention_ms: None }, MissPolicy::Emit, EnrichStrategy::Gradual);
            let got = drive(&spec, &script(&steps), None);
            // The history as the materializer sees it: per id, versions in LSN order.
            let mut lsn = 0i64;
            // (id, lsn, valid_from, live row as (product, cve)).
            type Version = (i64, i64, i64, Option<(String, String)>);
            let mut history: Vec<Version> = Vec::new();
            let mut expected = Vec::new();
            for st in &steps {
                match st {
                    Step::Change { id, product, cve, delete, lsn_back, t } => {
                        lsn += 1;
                        let l = (lsn - *lsn_back as i64).max(1);
                        let newest = history.iter().filter(|h| h.0 == *id).map(|h| h.1).max();
                        if newest.is_none_or(|n| l > n) {
                            history.push((*id, l, *t, (!delete).then(|| (format!("p{product}"), format!("CVE-{cve}")))));
                        }
                    }
                    Step::Event { product, t } => expected.push((format!("p{product}"), *t)),
                    _ => {}
                }
            }
            // Every event is joined at end of input at the latest; against the full history.
            let mut want: Vec<(i64, String, String)> = Vec::new();
            for (p, t) in &expected {
                let mut matches = Vec::new();
                for id in 0..4 {
                    let v = history.iter().filter(|h| h.0 == id && h.2 <= *t).max_by_key(|h| h.1);
                    if let Some((_, _, _, Some((prod, cve)))) = v && prod == p {
                        matches.push(cve.clone());
                    }
                }
                if matches.is_empty() {
                    want.push((*t, p.clone(), "-".into()));
                }
                for c in matches {
                    want.push((*t, p.clone(), c));
                }
            }
            let mut got: Vec<(i64, String, String)> = got
                .iter()
                .map(|(r, t)| (*t, r[1].as_str().unwrap().to_string(), r[3].as_str().unwrap_or("-").to_string()))
                .collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }

        /// Checkpoint after any step, restore into a fresh instance, continue: the same
        /// output as an uninterrupted run, for every mode, miss policy and strategy.
        #[test]
        /// With the table on disk (a cache of two keys), the same output as in memory.
        #[test]
        fn restore_anywhere_matches_uninterrupted(steps in arb_steps(), cut in 0usize..60, which in 0usize..8) {
            let mut spec = match which % 4 {
                0 => spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gated { max_buffered: 5 }),
                1 => spec(JoinMode::AsOf { retention_ms: Some(30) }, MissPolicy::Emit, EnrichStrategy::Gradual),
                2 => spec(JoinMode::Lookup, MissPolicy::Hold { timeout_ms: 20 }, EnrichStrategy::Gradual),
                _ => spec(JoinMode::AsOf { retention_ms: None }, MissPolicy::Hold { timeout_ms: 20 }, EnrichStrategy::Gated { max_buffered: 100 }),
            };
            let s = script(&lawful(&steps));
            let in_memory = drive(&spec, &s, None);
            if which >= 4 {
                spec.state = StateBackend::Disk(crate::state::disk::DiskOptions { dir: None, cache_rows: 2 });
            }
            let straight = drive(&spec, &s, None);
            let restored = drive(&spec, &s, Some(cut % s.len()));
            prop_assert_eq!(&straight, &in_memory);
            prop_assert_eq!(straight, restored);
        }
    }
}
