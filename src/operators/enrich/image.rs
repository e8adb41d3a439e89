//! The enrichment operator's snapshot format (postcard, version `SNAPSHOT_VERSION`): the
//! table's own image (its large parts as blobs), the ids of the gate's segments (blobs
//! too), the as-of events waiting and the held misses, and the join's counts. Written by
//! `snapshot`, read by `restore` into an operator built from the same spec, or by
//! `restore_rescaled` from the snapshots of another number of instances.

use serde::{Deserialize, Serialize};

use super::gate::Pending;
use super::{EnrichOperator, JoinStats};
use crate::dataflow::Rescale;
use crate::error::StateError;
use crate::state::{Blobs, ReferenceTable, Shape, StateImage};
use crate::types::EventTime;

const SNAPSHOT_VERSION: u8 = 11;

/// No run counts this far; a snapshot that does was not written by one.
const MAX_COUNT: u64 = 1 << 62;

#[derive(Serialize, Deserialize)]
struct Image {
    version: u8,
    /// The table's stored columns and the events' columns (name and type, in order) the
    /// state was written with: rows are positional, so a restore into other columns would
    /// put values under the wrong names.
    table_columns: Columns,
    event_columns: Columns,
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

/// Columns as (name, type), in order.
type Columns = Vec<(String, String)>;

fn describe_columns(columns: &[(String, String)]) -> String {
    let list: Vec<String> = columns.iter().map(|(n, t)| format!("{n}: {t}")).collect();
    format!("[{}]", list.join(", "))
}

impl EnrichOperator {
    /// The stored table columns and the event columns, as (name, type).
    fn state_columns(&self) -> (Columns, Columns) {
        let fields = &self.layout.table_schema.fields;
        let table = self
            .layout
            .stored
            .iter()
            .map(|&i| {
                fields.get(i).map_or_else(
                    || (format!("#{i}"), String::new()),
                    |f| (f.name.to_string(), f.data_type.to_string()),
                )
            })
            .collect();
        let events = self
            .event_schema
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.data_type.to_string()))
            .collect();
        (table, events)
    }

    /// The operator's snapshot; the gate's new events are sealed into a segment first.
    pub(super) fn encode_image(&mut self) -> Result<StateImage, StateError> {
        self.measure_state();
        let mut blobs = Blobs::new();
        let gate_segments = self.seal_gate(&mut blobs).map_err(|e| {
            StateError::encode(&self.name, format!("cannot seal the gate's events: {e}"))
        })?;
        let (table_columns, event_columns) = self.state_columns();
        let image = Image {
            version: SNAPSHOT_VERSION,
            table_columns,
            event_columns,
            table: self.table.snapshot(&mut blobs)?,
            latest_valid_from: self.latest_valid_from,
            snapshot_done: self.snapshot_done,
            watermark: self.watermark,
            gate_segments,
            waiting: self.waiting.clone(),
            held: self.held_in_order(),
            next_seq: self.next_seq,
            stats: self.stats,
            last_sweep: self.last_sweep,
        };
        let bytes = postcard::to_allocvec(&image).map_err(|e| StateError::encode(&self.name, e))?;
        Ok(StateImage { bytes, blobs })
    }

    /// Replaces the operator's state with a snapshot `encode_image` took.
    pub(super) fn decode_image(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
        let image = self.parse_image(snapshot)?;
        self.install_image(image, &snapshot.blobs)
    }

    /// Restores from the snapshots of another number of instances. Every instance holds the
    /// whole table (its input is broadcast), so the table comes from one former instance:
    /// the first this instance takes, else instance 0. The events the former instances held
    /// (at the gate, waiting for the watermark, held misses) and their counts go whole to the
    /// one new instance that takes each former one (`Rescale::takes`), in former instance
    /// order; the watermark is the highest former one (none was past what the sources had
    /// at the barrier).
    pub(super) fn decode_rescaled(&mut self, from: &Rescale<'_>) -> Result<(), StateError> {
        let taken: Vec<&StateImage> = from
            .taken()
            .map(|(_, s)| s)
            .filter(|s| !s.is_empty())
            .collect();
        let Some(base) = taken
            .first()
            .copied()
            .or_else(|| from.snapshots.iter().copied().find(|s| !s.is_empty()))
        else {
            return Ok(());
        };
        let mut watermark = None;
        for snapshot in from.snapshots.iter().filter(|s| !s.is_empty()) {
            watermark = watermark.max(self.parse_image(snapshot)?.watermark);
        }
        self.decode_image(base)?;
        if taken.is_empty() {
            // The table only: the former instance's events and counts are another's.
            self.restore_gate(&[], &base.blobs)
                .map_err(|e| StateError::decode(&self.name, e))?;
            self.waiting.clear();
            self.waiting_min = None;
            self.restore_held(Vec::new());
            self.stats = JoinStats::default();
        }
        for snapshot in taken.iter().skip(1) {
            let image = self.parse_image(snapshot)?;
            self.merge_pending(image, &snapshot.blobs)?;
        }
        self.watermark = watermark;
        Ok(())
    }

    /// Adds the events and counts of another former instance's image to this one's.
    fn merge_pending(&mut self, image: Image, blobs: &Blobs) -> Result<(), StateError> {
        if image.snapshot_done != self.snapshot_done {
            // Every instance sees the table's changes in the same order before a barrier.
            return Err(StateError::decode(
                &self.name,
                "the former instances' snapshots disagree on whether the table's snapshot was \
                 complete",
            ));
        }
        self.append_gate(&image.gate_segments, blobs)
            .map_err(|e| StateError::decode(&self.name, e))?;
        self.waiting.extend(image.waiting);
        self.waiting_min = self.waiting.iter().map(|p| p.time).min();
        // Held misses keep their order: the former instance's come after this one's.
        let offset = self.next_seq;
        let mut held = self.held_in_order();
        held.extend(image.held.into_iter().map(|mut p| {
            p.seq += offset;
            p
        }));
        self.restore_held(held);
        self.next_seq += image.next_seq;
        self.stats.lookups += image.stats.lookups;
        self.stats.matched += image.stats.matched;
        self.stats.misses += image.stats.misses;
        Ok(())
    }

    /// Decodes a snapshot and checks it against this operator (its columns, its counts,
    /// the width of the events it holds).
    fn parse_image(&self, snapshot: &StateImage) -> Result<Image, StateError> {
        let fail = |reason: String| StateError::decode(&self.name, reason);
        let snapshot = &snapshot.bytes[..];
        if snapshot.first().copied() != Some(SNAPSHOT_VERSION) {
            return Err(fail(format!(
                "unknown snapshot version {:?} (this build reads {SNAPSHOT_VERSION})",
                snapshot.first()
            )));
        }
        let image: Image = postcard::from_bytes(snapshot).map_err(|e| fail(e.to_string()))?;
        let (table_columns, event_columns) = self.state_columns();
        for (what, then, now) in [
            (
                format!("table `{}`", self.spec.table),
                &image.table_columns,
                &table_columns,
            ),
            (
                "the events".to_string(),
                &image.event_columns,
                &event_columns,
            ),
        ] {
            if then != now {
                return Err(fail(format!(
                    "the state was written for {what} with columns {} and the pipeline now has {}: \
                     columns cannot be mapped by name yet; restore with the columns as they were, \
                     or start afresh (`run --fresh-start`)",
                    describe_columns(then),
                    describe_columns(now)
                )));
            }
        }
        let counts = [
            image.next_seq,
            image.stats.lookups,
            image.stats.matched,
            image.stats.misses,
        ];
        if counts.iter().any(|&n| n >= MAX_COUNT) {
            return Err(fail(format!(
                "its counters {counts:?} are beyond any a run reaches"
            )));
        }
        // Events are indexed by column: each must have the events' columns.
        let width = self.event_schema.len();
        for (what, list) in [("waiting", &image.waiting), ("held", &image.held)] {
            if let Some(p) = list.iter().find(|p| p.row.len() != width) {
                return Err(fail(format!(
                    "a {what} event has {} values, the events have {width} columns",
                    p.row.len()
                )));
            }
        }
        Ok(image)
    }

    /// Replaces the operator's state with a checked image.
    fn install_image(&mut self, image: Image, blobs: &Blobs) -> Result<(), StateError> {
        let shape = Shape {
            key: self.layout.primary_key.len(),
            row: self.layout.stored.len(),
        };
        self.table = ReferenceTable::restore(&image.table, blobs, &self.spec.state, shape)?;
        self.rebuild_index();
        self.latest_valid_from = image.latest_valid_from;
        self.snapshot_done = image.snapshot_done;
        self.watermark = image.watermark;
        self.restore_gate(&image.gate_segments, blobs)
            .map_err(|e| StateError::decode(&self.name, e))?;
        self.waiting = image.waiting;
        self.waiting_min = self.waiting.iter().map(|p| p.time).min();
        self.restore_held(image.held);
        self.next_seq = image.next_seq;
        self.stats = image.stats;
        self.last_sweep = image.last_sweep;
        self.counters
            .gate_open
            .set(if self.gated_shut() { 0.0 } else { 1.0 });
        Ok(())
    }
}
