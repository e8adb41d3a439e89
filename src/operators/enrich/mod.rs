//! The enrichment join: events (input 0) looked up in a reference table materialized from a
//! change stream (input 1, change rows as `cdc::rows` lays them out, broadcast to every
//! instance). Owns the materialized table (a `ReferenceTable`, in memory or on disk, keyed by
//! the table's primary key), a secondary index by join key, the event buffers of the gate, of
//! as-of waiting and of held misses, and their checkpoints. It does no I/O and reads no clock:
//! the files behind its state (a disk table, the gate's spill file and checkpoint segments)
//! are `crate::state`'s.
//!
//! # Materializing
//! Each change row carries its version (commit LSN, ordinal); a change not newer than the
//! version held for its key is stale and ignored, so replays are harmless and a primary-key
//! change (delete of the old key, insert of the new one at one LSN) lands right. A change is
//! valid from its commit time; snapshot rows (`r`) are valid from the beginning of time (they
//! are the state before streaming began). Unchanged-TOAST columns keep the previous value.
//! Truncate deletes every row. A latest-only table remembers a delete for an hour of event
//! time (so a replayed older insert stays ignored); an as-of table drops history older than
//! its retention behind the watermark.
//!
//! # Joining
//! An event matches every reference row whose join columns equal the event's, that meets
//! the residual conditions (`event column OP table column`) and, with a `version_range`,
//! whose NVD version rule admits the event's version: 1:N, one output row per match, the
//! event's columns then the selected reference columns then `<table>_matched`. With
//! `distinct` columns an event keeps, of its matches, the first (in primary-key order) per
//! distinct value of those columns: e.g. one row per CVE, although several of its CPE rules
//! admit the version (NVD: a CVE applies if any of its rules matches). This is done when a
//! probe's matches are computed, so memoized probes cost nothing more. `lookup`
//! joins the latest rows at once; `as_of` joins the rows valid at the event's time once
//! every change valid then has arrived: at once when the reference input's own watermark
//! has passed the event's time (the usual case: a table whose changes predate the events),
//! else when the merged watermark (the minimum over both inputs) does (a change arriving
//! behind the reference side's watermark, late, counts for later events only). A miss is
//! emitted with null reference columns and `<table>_matched = false` (`emit`), sent to the
//! `miss` port (`port`), counted and dropped (`drop`, an inner join), or held until its join key gets a row or the watermark passes
//! its time plus the timeout (`hold`), then emitted as a miss.
//!
//! # Gating
//! With `gated`, events wait (in arrival order) until the reference table's snapshot is
//! complete (its `snapshot_end` row), so no event is enriched against a half-loaded table.
//! Buffered and held events hold back the watermark the runtime forwards, so they are never
//! late downstream; as-of events waiting for the watermark keep the instance from being
//! forwarded as idle. The gate keeps `max_buffered` events in memory and spills the rest to a
//! local file (`state::SpillQueue`), so memory stays bounded and nothing is dropped or
//! enriched early. If every input ends first, the gate opens on the partial table.
//!
//! # Checkpoints
//! A snapshot holds the table's own image (its large parts as blobs), the events at the
//! gate, waiting for the watermark and held, and the join's counts. The gate's events are
//! sealed into segments (`state::SealedLog`): a snapshot seals only those that arrived since
//! the last one, and later checkpoints share the earlier segments. A restore into an
//! operator built from the same spec continues as the uninterrupted operator would; into
//! one whose table or event columns changed, the state is mapped by column name (`image`).
//!
//! # Hot path
//! Results of a probe (join key + version) are memoized against the latest table and reused
//! until the next reference change, so a stream of repeated products costs one hash lookup
//! per event; the version rule runs only on a memo miss.
//!
//! # Files
//! This file has the operator and its ports, counters and watermark handling; `spec` the
//! configuration and its errors, `layout` the spec resolved against the schemas,
//! `reference` the materializing of changes, `join` lookups, matching and misses, `gate` the
//! gate, as-of waiting and held misses, `image` the snapshot format.

#[cfg(test)]
mod column_changes;
pub mod config;
mod gate;
mod image;
mod join;
mod layout;
#[cfg(test)]
mod proptests;
mod reference;
mod spec;
#[cfg(test)]
mod tests;

use std::hash::BuildHasherDefault;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cdc::Version;
use crate::dataflow::{MAIN_PORT, MISS_PORT, Operator, Output, PortSpec};
use crate::error::{SpecError, StateError};
use crate::state::versioned::Located;
use crate::state::{ReferenceTable, SealedLog, SpillQueue, StateImage};
use crate::types::{Batch, EventTime, Schema, SchemaRef, Value};

pub use spec::{
    CmpOp, Condition, EnrichSpec, EnrichStrategy, JoinMode, MissPolicy, VersionRangeSpec,
};

use gate::{GATE_LOG, GateRows, Pending, TimeSet};
use join::Projected;
use layout::Layout;
use spec::spec_err;

type Map<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<ahash::AHasher>>;

/// The enrichment join; see the module documentation.
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
    /// The reference input's own watermark (`on_input_watermark`): an as-of event at or
    /// behind it finds every change valid at its time already applied, so it is joined at
    /// once instead of waiting for the merged watermark. Not part of snapshots (the inputs
    /// report it again after a restore).
    reference_watermark: Option<EventTime>,
    /// Events waiting for the snapshot: the first `max_buffered` in memory, the rest spilled.
    gate: SpillQueue<GateRows>,
    /// The gate's events already in checkpoint segments (the first `gate_log.sealed()`).
    gate_log: SealedLog<GateRows>,
    /// Events in `gate`.
    gate_events: usize,
    /// The earliest event time in `gate`.
    gate_min: Option<EventTime>,
    /// The lateness reference of the event being handled (`gate::row_ref`).
    row_ref: Option<EventTime>,
    /// As-of events waiting for the watermark.
    waiting: Vec<Pending>,
    /// The earliest time among `waiting`.
    waiting_min: Option<EventTime>,
    /// Held misses by join key.
    held: Map<Box<[Value]>, Vec<Pending>>,
    held_count: usize,
    /// The arrival number of the last held miss (`Pending::seq`).
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
    measured_bytes: u64,
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

impl EnrichOperator {
    /// `reference` is the schema of the change rows on input 1.
    pub fn new(
        name: &str,
        spec: EnrichSpec,
        event_schema: SchemaRef,
        reference: &Schema,
    ) -> Result<EnrichOperator, SpecError> {
        let (layout, fields) = Layout::resolve(&spec, &event_schema, reference)?;
        let retention = match spec.mode {
            JoinMode::Lookup => None,
            JoinMode::AsOf { retention_ms } => Some(retention_ms.unwrap_or(i64::MAX / 4)),
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
            layout,
            gate: gate::queue(spec.strategy),
            spec,
            event_schema,
            out_schema: Arc::new(Schema::new(fields)),
            table,
            index: Map::default(),
            memo: Map::default(),
            latest_valid_from: EventTime::MIN,
            snapshot_done: false,
            watermark: None,
            reference_watermark: None,
            row_ref: None,
            gate_log: SealedLog::new(GATE_LOG),
            gate_events: 0,
            gate_min: None,
            waiting: Vec::new(),
            waiting_min: None,
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
            measured_bytes: 0,
        })
    }

    /// The event columns the join computes with: the join key, the conditions' and the
    /// version rule's columns (every other event column is only copied to the output).
    pub fn event_columns_read(&self) -> Vec<usize> {
        let l = &self.layout;
        let mut read: Vec<usize> = l.event_key.clone();
        read.extend(l.conditions.iter().map(|&(e, _, _)| e));
        read.extend(l.version.iter().map(|&(e, _)| e));
        read
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
    fn measure_state(&mut self) {
        let bytes = self.state_bytes();
        self.measured_bytes = bytes as u64;
        self.counters.state_bytes.set(bytes as f64);
    }

    /// Whether every as-of event of `batch` can be joined now against the latest rows: each
    /// is ready (`as_of_ready`) and no row version is newer than it.
    fn joins_at_latest(&self, batch: &Batch) -> bool {
        let times = batch.event_times();
        let (Some(&min), Some(&max)) = (times.iter().min(), times.iter().max()) else {
            return false;
        };
        min >= self.latest_valid_from && self.as_of_ready(max)
    }

    /// Whether an as-of event of time `time` can be joined now: every change valid at its
    /// time has arrived (the merged or the reference input's watermark is at or past it).
    fn as_of_ready(&self, time: EventTime) -> bool {
        [self.watermark, self.reference_watermark]
            .into_iter()
            .flatten()
            .any(|w| time <= w)
    }

    /// Whether the gate is open (always, for `gradual`).
    pub fn gate_open(&self) -> bool {
        !self.gated_shut()
    }

    fn gated_shut(&self) -> bool {
        matches!(self.spec.strategy, EnrichStrategy::Gated { .. }) && !self.snapshot_done
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
        if !batch.lateness_refs().is_empty() {
            // Rows read behind their partition's watermark: what each produces carries its
            // reference (rare, so one at a time).
            for ((row, t), lateness_ref) in batch.rows().zip(batch.lateness_ref_per_row()) {
                self.row_ref(lateness_ref, out);
                self.admit(row.to_vec(), t, out);
            }
            self.row_ref(None, out);
        } else if self.spec.mode == JoinMode::Lookup || self.joins_at_latest(&batch) {
            let mut batch = batch;
            let (values, times) = batch.values_mut();
            self.join_rows(values, times, out);
        } else {
            for (row, t) in batch.rows() {
                if self.as_of_ready(t) {
                    self.join(row, t, out, false);
                } else {
                    self.admit(row.to_vec(), t, out);
                }
            }
        }
        self.publish_counts();
    }

    fn on_input_watermark(&mut self, input: usize, watermark: EventTime) {
        if input == 1 {
            self.reference_watermark = Some(watermark);
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
        if watermark == crate::time::watermark::END_OF_TIME && self.gated_shut() {
            // Every input has ended: no snapshot end will come any more.
            tracing::warn!(node = %self.name, table = %self.spec.table, buffered = self.gate_events, "input ended before the reference snapshot completed: buffered events are joined against the partial table");
            self.snapshot_done = true;
            self.open_gate(out);
        }
        self.join_waiting(watermark, out);
        self.expire_held(watermark, out);
        if watermark == crate::time::watermark::END_OF_TIME {
            self.measure_state();
        }
        self.publish_counts();
        self.expire_reference(watermark);
        self.counters.rows.set(self.table.len() as f64);
    }

    fn watermark_hold(&self) -> Option<EventTime> {
        // As-of events waiting count too: an instance that still has events to emit must not
        // tell its consumers it is idle (they would move on without it, and the events would
        // then be late), though they never lower the watermark it forwards (they are ahead).
        [self.gate_min, self.held_times.min(), self.waiting_min]
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
            ("reference_bytes", self.measured_bytes),
        ]
    }

    fn snapshot(&mut self) -> Result<StateImage, StateError> {
        self.encode_image()
    }

    fn restore(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
        self.decode_image(snapshot)
    }

    fn restore_rescaled(&mut self, from: &crate::dataflow::Rescale<'_>) -> Result<(), StateError> {
        self.decode_rescaled(from)
    }
}
