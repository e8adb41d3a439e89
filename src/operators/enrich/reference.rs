//! Materializing the reference table: a change row applied to the `ReferenceTable` by its
//! version (stale ones ignored, unchanged-TOAST columns kept, primary-key changes and
//! truncates), the secondary index by join key kept in step (and rebuilt after a restore),
//! held misses released by the row they waited for, and what the table forgets as the
//! watermark moves (tombstones, as-of history past the retention).

use super::join::Projected;
use super::{EnrichOperator, JoinMode, Map, MissPolicy};
use crate::cdc::rows::{self, META_COLUMNS, RowOp};
use crate::dataflow::Output;
use crate::state::{Applied, ReferenceTable};
use crate::types::{EventTime, Value};

/// How long (event time) a latest-only table remembers a delete, so that a replayed older
/// insert of the key stays ignored.
pub(super) const TOMBSTONE_RETENTION_MS: i64 = 3_600_000;
/// How often (event time) those tombstones are swept.
pub(super) const TOMBSTONE_SWEEP_MS: i64 = 600_000;

impl EnrichOperator {
    /// The join key of a stored row.
    fn join_key_of_table_row(&self, row: &[Value]) -> Box<[Value]> {
        self.layout
            .table_key
            .iter()
            .map(|&i| row[i].clone())
            .collect()
    }

    /// Applies one change row (table columns after `META_COLUMNS`).
    pub(super) fn apply_change(&mut self, change: &[Value], time: EventTime, out: &mut Output) {
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
                if self.table.apply(&pk, version, time, None) != Applied::Stale {
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
                if self.table.apply(&pk, version, valid_from, Some(&row)) == Applied::Stale {
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

    /// The table changed from `valid_from` on: memoized matches are stale.
    fn changed(&mut self, valid_from: EventTime) {
        self.memo.clear();
        self.latest_valid_from = self.latest_valid_from.max(valid_from);
    }

    /// Drops what the table no longer needs at `watermark`: history older than the retention
    /// of an as-of table; a latest-only table's tombstones an hour (event time) after their
    /// delete, swept every ten minutes while there are any.
    pub(super) fn expire_reference(&mut self, watermark: EventTime) {
        let cutoff = match self.spec.mode {
            JoinMode::AsOf {
                retention_ms: Some(_),
            } => Some(watermark),
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
    }

    /// Lists every (join key, primary key) of the table anew, and empties the memo (after
    /// the table was restored).
    pub(super) fn rebuild_index(&mut self) {
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
    }
}
