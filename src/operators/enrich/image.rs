//! The enrichment operator's snapshot format (postcard, version `SNAPSHOT_VERSION`): the
//! table's own image (its large parts as blobs), the ids of the gate's segments (blobs
//! too), the as-of events waiting and the held misses, and the join's counts. Written by
//! `snapshot`, read by `restore` into an operator built from the same spec.

use serde::{Deserialize, Serialize};

use super::gate::Pending;
use super::{EnrichOperator, JoinStats};
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
        let fail = |reason: String| StateError::decode(&self.name, reason);
        let (snapshot, blobs) = (&snapshot.bytes[..], &snapshot.blobs);
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
