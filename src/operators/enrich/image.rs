//! The enrichment operator's snapshot format (postcard, version `SNAPSHOT_VERSION`): the
//! table's own image (its large parts as blobs), the ids of the gate's segments (blobs
//! too), the as-of events waiting and the held misses, and the join's counts. Written by
//! `snapshot`, read by `restore`, or by `restore_rescaled` from the snapshots of another
//! number of instances.
//!
//! An image carries the table's primary key and the columns (name and type, in order) its
//! rows and its events were written with. A restore reads it in three steps: `read_image`
//! (the bytes, checked), `map_columns` (how rows written then map by name onto the columns
//! of now, or why they cannot), then the state put in place with its rows mapped. Columns
//! as they were restore as they are, with no rewrite; otherwise each row is rewritten by
//! name: a column that is gone is dropped, a new one is null (rows restored from the
//! checkpoint have null there until they change), and a column whose type changed, or a
//! changed primary key, is refused.

use serde::{Deserialize, Serialize};

use super::gate::Pending;
use super::{EnrichOperator, JoinStats};
use crate::cdc::Version;
use crate::dataflow::Rescale;
use crate::error::StateError;
use crate::state::{Blobs, ReferenceTable, Shape, StateImage};
use crate::types::{EventTime, Value};

const SNAPSHOT_VERSION: u8 = 12;

/// No run counts this far; a snapshot that does was not written by one.
const MAX_COUNT: u64 = 1 << 62;

#[derive(Serialize, Deserialize)]
struct Image {
    version: u8,
    /// The table's primary key, its stored columns and the events' columns (name and type,
    /// in order) the state was written with: rows are positional, and a restore maps them
    /// by name to the columns of now (`map_columns`).
    primary_key: Vec<String>,
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

/// Where each column of now is in a row written with other columns.
#[derive(Debug)]
pub(super) struct ColumnMap {
    /// Per column of now, its position then (`None`: new, null in rows written then).
    from: Vec<Option<usize>>,
    /// Values in a row written then.
    pub(super) width: usize,
}

impl ColumnMap {
    /// How rows of `then` map onto `now` by name (`None`: the columns are as they were, and
    /// rows restore as they are); an error naming the column whose type changed. `what`
    /// names the columns' owner in the error (`table `cve``, `the events`).
    fn between(then: &Columns, now: &Columns, what: &str) -> Result<Option<ColumnMap>, String> {
        if then == now {
            return Ok(None);
        }
        let mut from = Vec::with_capacity(now.len());
        for (name, now_type) in now {
            let at = then.iter().position(|(n, _)| n == name);
            if let Some(i) = at
                && then[i].1 != *now_type
            {
                return Err(format!(
                    "{what}: column `{name}` was {} when the state was written and is {now_type} \
                     now: its values cannot be restored as {now_type}; give it its type back, or \
                     start afresh (`run --fresh-start`)",
                    then[i].1
                ));
            }
            from.push(at);
        }
        Ok(Some(ColumnMap {
            from,
            width: then.len(),
        }))
    }

    /// A row written then, with the columns of now (new ones null).
    pub(super) fn row(&self, row: &[Value]) -> Vec<Value> {
        self.from
            .iter()
            .map(|at| at.and_then(|i| row.get(i)).cloned().unwrap_or(Value::Null))
            .collect()
    }

    /// The columns of now that rows written then do not have.
    fn added<'a>(&self, now: &'a Columns) -> Vec<&'a str> {
        self.from
            .iter()
            .zip(now)
            .filter(|(at, _)| at.is_none())
            .map(|(_, (name, _))| name.as_str())
            .collect()
    }

    /// The columns of `then` that are gone now.
    fn removed<'a>(&self, then: &'a Columns) -> Vec<&'a str> {
        then.iter()
            .enumerate()
            .filter(|(i, _)| !self.from.contains(&Some(*i)))
            .map(|(_, (name, _))| name.as_str())
            .collect()
    }
}

/// How an image's state maps onto the operator as it is now (`map_columns`).
struct Mapping {
    /// The table's keys and rows as they were written.
    shape: Shape,
    table: Option<ColumnMap>,
    events: Option<ColumnMap>,
}

impl Mapping {
    /// Events written then (waiting or held), in the event columns of now.
    fn map_events(&self, events: &mut [Pending]) {
        if let Some(m) = &self.events {
            for p in events {
                p.row = m.row(&p.row);
            }
        }
    }
}

/// The operator's columns: the table's primary key, its stored columns and the events'.
struct StateColumns {
    primary_key: Vec<String>,
    table: Columns,
    events: Columns,
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let names: Vec<String> = names
        .into_iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect();
    names.join(", ")
}

impl EnrichOperator {
    /// The table's primary key and stored columns, and the events' columns, as they are now.
    fn state_columns(&self) -> StateColumns {
        let pair = |f: &crate::types::Field| (f.name.to_string(), f.data_type.to_string());
        let table = &self.layout.table_schema;
        StateColumns {
            primary_key: self
                .layout
                .primary_key
                .iter()
                .map(|&i| table.field(i).name.to_string())
                .collect(),
            table: table.fields.iter().map(pair).collect(),
            events: self.event_schema.fields.iter().map(pair).collect(),
        }
    }

    /// The operator's snapshot; the gate's new events are sealed into a segment first.
    pub(super) fn encode_image(&mut self) -> Result<StateImage, StateError> {
        self.measure_state();
        let mut blobs = Blobs::new();
        let gate_segments = self.seal_gate(&mut blobs).map_err(|e| {
            StateError::encode(&self.name, format!("cannot seal the gate's events: {e}"))
        })?;
        let columns = self.state_columns();
        let image = Image {
            version: SNAPSHOT_VERSION,
            primary_key: columns.primary_key,
            table_columns: columns.table,
            event_columns: columns.events,
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

    /// The image in `bytes`, checked: its version, its encoding, its counts, and events of
    /// as many values as the columns it was written with.
    fn read_image(bytes: &[u8]) -> Result<Image, String> {
        if bytes.first().copied() != Some(SNAPSHOT_VERSION) {
            return Err(format!(
                "unknown snapshot version {:?} (this build reads {SNAPSHOT_VERSION})",
                bytes.first()
            ));
        }
        let image: Image = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        let counts = [
            image.next_seq,
            image.stats.lookups,
            image.stats.matched,
            image.stats.misses,
        ];
        if counts.iter().any(|&n| n >= MAX_COUNT) {
            return Err(format!(
                "its counters {counts:?} are beyond any a run reaches"
            ));
        }
        // Events are indexed by column: each must have the columns it was written with.
        let width = image.event_columns.len();
        for (what, list) in [("waiting", &image.waiting), ("held", &image.held)] {
            if let Some(p) = list.iter().find(|p| p.row.len() != width) {
                return Err(format!(
                    "a {what} event has {} values, the events had {width} columns",
                    p.row.len()
                ));
            }
        }
        Ok(image)
    }

    /// How the state in `image` maps onto the operator's columns now: by name, or not at all
    /// when they are as they were. Refused (naming the table or the events, and the column)
    /// when a column's type or the table's primary key changed.
    fn map_columns(&self, image: &Image) -> Result<Mapping, String> {
        let now = self.state_columns();
        let table = format!("table `{}`", self.spec.table);
        if image.primary_key != now.primary_key {
            return Err(format!(
                "{table}: its primary key was {} when the state was written and is {} now: \
                 rows cannot be moved to other keys; give it its key back, or start afresh \
                 (`run --fresh-start`)",
                list(&image.primary_key),
                list(&now.primary_key)
            ));
        }
        Ok(Mapping {
            shape: Shape {
                key: image.primary_key.len(),
                row: image.table_columns.len(),
            },
            table: ColumnMap::between(&image.table_columns, &now.table, &table)?,
            events: ColumnMap::between(&image.event_columns, &now.events, "the events")?,
        })
    }

    /// The table `image` holds, its rows in the columns of now (rewritten once, version by
    /// version, when `mapping` says they changed).
    fn restore_table(
        &self,
        image: &Image,
        blobs: &Blobs,
        mapping: &Mapping,
    ) -> Result<ReferenceTable<Version>, StateError> {
        let table = ReferenceTable::restore(&image.table, blobs, &self.spec.state, mapping.shape)?;
        match &mapping.table {
            None => Ok(table),
            Some(m) => table.map_rows(&self.spec.state, |row| m.row(row)),
        }
    }

    /// Says what a restore that mapped columns did: columns dropped, and the new ones that
    /// restored rows and events have null in.
    fn log_mapping(&self, image: &Image, mapping: &Mapping, events: usize) {
        let now = self.state_columns();
        if let Some(m) = &mapping.table {
            let (added, removed) = (m.added(&now.table), m.removed(&image.table_columns));
            let named = |v: &[&str]| if v.is_empty() { "none".into() } else { list(v) };
            tracing::info!(node = %self.name, table = %self.spec.table, added = %named(&added), removed = %named(&removed), "reference table restored with its columns mapped by name");
            if !added.is_empty() && self.table.key_count() > 0 {
                tracing::warn!(node = %self.name, table = %self.spec.table, columns = %list(&added), "columns not in the checkpoint: rows restored from it have null there until they change (a bootstrap fills them)");
            }
        }
        if let Some(m) = &mapping.events {
            let added = m.added(&now.events);
            if !added.is_empty() && events > 0 {
                tracing::warn!(node = %self.name, table = %self.spec.table, columns = %list(&added), events, "event columns not in the checkpoint: the events restored from it have null there");
            }
        }
    }

    /// Replaces the operator's state with a snapshot `encode_image` took, its rows mapped to
    /// the columns of now when they changed.
    pub(super) fn decode_image(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
        let fail = |reason: String| StateError::decode(&self.name, reason);
        let blobs = &snapshot.blobs;
        let mut image = Self::read_image(&snapshot.bytes).map_err(fail)?;
        let mapping = self.map_columns(&image).map_err(fail)?;
        self.table = self.restore_table(&image, blobs, &mapping)?;
        mapping.map_events(&mut image.waiting);
        mapping.map_events(&mut image.held);
        self.rebuild_index();
        self.latest_valid_from = image.latest_valid_from;
        self.snapshot_done = image.snapshot_done;
        self.watermark = image.watermark;
        self.restore_gate(&image.gate_segments, blobs, mapping.events.as_ref())
            .map_err(|e| StateError::decode(&self.name, e))?;
        let events = self.gate_events + image.waiting.len() + image.held.len();
        self.log_mapping(&image, &mapping, events);
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

    /// Restores from the snapshots of another number of instances. Every instance holds the
    /// whole table (its input is broadcast), so the table comes from one former instance:
    /// the first this instance takes, else instance 0. The events the former instances held
    /// (at the gate, waiting for the watermark, held misses) and their counts go whole to the
    /// one new instance that takes each former one (`Rescale::takes`), in former instance
    /// order, mapped by name like any restore; the watermark is the highest former one (none
    /// was past what the sources had at the barrier).
    pub(super) fn decode_rescaled(&mut self, from: &Rescale<'_>) -> Result<(), StateError> {
        let name = self.name.clone();
        let fail = |reason: String| StateError::decode(&name, reason);
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
            watermark = watermark.max(Self::read_image(&snapshot.bytes).map_err(fail)?.watermark);
        }
        self.decode_image(base)?;
        if taken.is_empty() {
            // The table only: the former instance's events and counts are another's.
            self.restore_gate(&[], &base.blobs, None)
                .map_err(|e| StateError::decode(&self.name, e))?;
            self.waiting.clear();
            self.waiting_min = None;
            self.restore_held(Vec::new());
            self.stats = JoinStats::default();
        }
        for snapshot in taken.iter().skip(1) {
            let mut image = Self::read_image(&snapshot.bytes).map_err(fail)?;
            let mapping = self.map_columns(&image).map_err(fail)?;
            mapping.map_events(&mut image.waiting);
            mapping.map_events(&mut image.held);
            self.merge_pending(image, &snapshot.blobs, mapping.events.as_ref())?;
        }
        self.watermark = watermark;
        Ok(())
    }

    /// Adds the events and counts of another former instance's image (its events already in
    /// the columns of now, its gate's mapped by `map`) to this one's.
    fn merge_pending(
        &mut self,
        image: Image,
        blobs: &Blobs,
        map: Option<&ColumnMap>,
    ) -> Result<(), StateError> {
        if image.snapshot_done != self.snapshot_done {
            // Every instance sees the table's changes in the same order before a barrier.
            return Err(StateError::decode(
                &self.name,
                "the former instances' snapshots disagree on whether the table's snapshot was \
                 complete",
            ));
        }
        self.append_gate(&image.gate_segments, blobs, map)
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
}
