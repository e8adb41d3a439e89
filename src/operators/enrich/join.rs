//! Joining events with the reference table: the probe (join key, version, condition
//! columns), the matches of a probe (by the index, the residual conditions and the version
//! rule, the first per distinct value of the `distinct` columns, memoized against the
//! latest table), the direct path when the join key is the primary key (lookups done in
//! chunks so their memory reads overlap), the output rows, and what the miss policy does
//! with an event that matched nothing.

use std::sync::Arc;

use super::gate::Pending;
use super::{EnrichOperator, JoinMode, Map, MissPolicy};
use crate::dataflow::Output;
use crate::operators::version_range::VersionRange;
use crate::state::versioned::RowRef;
use crate::types::{EventTime, Value};

/// One matched reference row, projected to the selected columns.
pub(super) type Projected = Box<[Value]>;

/// A match being collected: its primary key, its values of the `distinct` columns (none
/// without `distinct`) and its projected row.
type Found<'a> = (&'a [Value], Box<[Value]>, Projected);

/// Most memoized probes kept; beyond it the memo starts over.
const MEMO_LIMIT: usize = 1 << 18;

/// Events whose lookups `join_rows` does together: enough for their memory reads to overlap,
/// few enough that the prefetched records are still in the cache when they are read.
const LOCATE_CHUNK: usize = 32;

/// Orders keys by their values in turn (`Value::total_cmp`).
fn cmp_values(a: &[Value], b: &[Value]) -> std::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

impl EnrichOperator {
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
            update: text(&cols[5]),
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
        let mut found: Vec<Found<'_>> = Vec::new();
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
                    let distinct = self.layout.distinct.iter().map(|&i| row[i].clone());
                    found.push((pk, distinct.collect(), self.project(row)));
                }
            }
        }
        // In primary-key order, so that output does not depend on arrival or restore order.
        found.sort_by(|a, b| cmp_values(a.0, b.0));
        if found.len() > 1 && !self.layout.distinct.is_empty() {
            // The first match per distinct value, in primary-key order.
            let mut seen: Map<Box<[Value]>, ()> = Map::default();
            found.retain(|(_, d, _)| seen.insert(d.clone(), ()).is_none());
        }
        let found: Arc<[Projected]> = found.into_iter().map(|(_, _, p)| p).collect();
        if memoizable {
            if self.memo.len() >= MEMO_LIMIT {
                self.memo.clear();
            }
            self.memo.insert(self.probe_key[..].into(), found.clone());
        }
        found
    }

    pub(super) fn set_probe_key(&mut self, event: &[Value]) {
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
        self.push_selected(row, time, batch);
    }

    /// `emit_direct` for an event the operator owns and emits once: its values are moved,
    /// not copied (a long string is not allocated and copied again).
    fn emit_direct_taking(
        &self,
        event: &mut [Value],
        row: RowRef<'_>,
        time: EventTime,
        out: &mut Output,
    ) {
        let batch = out.port(0);
        for v in event {
            batch.push_value(std::mem::take(v));
        }
        self.push_selected(row, time, batch);
    }

    /// Appends the selected columns of the stored `row` and `<table>_matched`, and ends the
    /// output row.
    fn push_selected(&self, row: RowRef<'_>, time: EventTime, batch: &mut crate::types::Batch) {
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

    /// Joins events the operator owns (`values`: rows of the event schema, one per time in
    /// `times`) against the latest rows: in `lookup` mode, or in `as_of` mode when the caller
    /// checked that every event is ready and no version is newer than them. On the direct
    /// path with a one-column key, the lookups of up to `LOCATE_CHUNK` events are done
    /// together (`VersionedTable::locate_many`), so that their memory reads overlap, and a
    /// matched event's values are moved into the output; otherwise one event after another.
    pub(super) fn join_rows(
        &mut self,
        values: &mut [Value],
        times: &[EventTime],
        out: &mut Output,
    ) {
        let width = self.event_schema.len();
        let key = match self.layout.event_key[..] {
            [key] if self.layout.direct && width > 0 => key,
            _ => {
                for (row, &t) in values.chunks(width.max(1)).zip(times) {
                    self.join(row, t, out, false);
                }
                return;
            }
        };
        let mut located = std::mem::take(&mut self.located);
        for (chunk, chunk_times) in values
            .chunks_mut(width * LOCATE_CHUNK)
            .zip(times.chunks(LOCATE_CHUNK))
        {
            self.table
                .warm(chunk.chunks(width).map(|r| std::slice::from_ref(&r[key])));
            self.table.locate_many(
                chunk.chunks(width).map(|r| std::slice::from_ref(&r[key])),
                &mut located,
            );
            for ((row, &t), at) in chunk.chunks_mut(width).zip(chunk_times).zip(&located) {
                self.stats.lookups += 1;
                match at.and_then(|at| self.table.row_at(at)) {
                    Some(found) => {
                        self.stats.matched += 1;
                        self.emit_direct_taking(row, found, t, out);
                    }
                    None => self.on_miss(row, t, out, false),
                }
            }
        }
        self.located = located;
    }

    /// Joins one event and emits the result. `final_attempt`: a held miss is not held again.
    pub(super) fn join(
        &mut self,
        event: &[Value],
        time: EventTime,
        out: &mut Output,
        final_attempt: bool,
    ) {
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
    pub(super) fn on_miss(
        &mut self,
        event: &[Value],
        time: EventTime,
        out: &mut Output,
        final_attempt: bool,
    ) {
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
                    lateness_ref: self.row_ref,
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
}
