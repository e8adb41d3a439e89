//! Window kinds (`WindowKind`) and the state of tumbling and sliding windows (`FixedState`):
//! which windows a row goes into, which fire when the watermark moves, which are dropped,
//! and the revisions late rows cause (one per window and key, when the window expires). Session windows are in `session`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::aggregate::{Acc, AggPlan, check_accs, new_accs, update_accs};
use super::key::{GroupKey, KeyLike, RowKey, cmp_keys};
use super::{FastMap, Layout, clamp_i64, emit_row, is_due, is_expired};
use crate::dataflow::Output;
use crate::types::{EventTime, Value};

/// The shape of the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowKind {
    /// Consecutive windows of `size`, aligned to the epoch.
    Tumbling { size: Duration },
    /// Windows of `size` starting every `slide` (aligned to the epoch); a row belongs to every
    /// window that contains it. `size` need not be a multiple of `slide`.
    Sliding { size: Duration, slide: Duration },
    /// Per key, activity separated by less than `gap`.
    Session { gap: Duration },
}

/// One (key, window) of a tumbling or sliding window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Slot {
    accs: Box<[Acc]>,
    /// Revision of the last row emitted, `None` before the first.
    emitted: Option<u32>,
    /// Updated by late rows since it fired: emitted once more when the window expires.
    dirty: bool,
}

pub(super) type Groups = FastMap<GroupKey, Slot>;

/// Rows waiting for their window to fire (see `FixedState::add`), by window start.
pub(super) type Deferred = BTreeMap<EventTime, Vec<Box<[Value]>>>;

impl Slot {
    /// Checks a restored slot against the aggregates (`check_accs`) and its revision (the
    /// next one must exist).
    pub(super) fn check(&self, plans: &[AggPlan]) -> Result<(), String> {
        check_accs(&self.accs, plans)?;
        if self.emitted == Some(u32::MAX) {
            return Err("its last revision is the highest there is".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(super) struct FixedState {
    pub(super) size: i64,
    pub(super) slide: i64,
    /// Windows by start (every window is `[start, start + size)`).
    pub(super) panes: BTreeMap<EventTime, Groups>,
    /// Late rows for windows not yet due at the operator's watermark.
    pub(super) deferred: Deferred,
}

impl FixedState {
    pub(super) fn new(size: i64, slide: i64) -> FixedState {
        FixedState {
            size,
            slide,
            panes: BTreeMap::new(),
            deferred: BTreeMap::new(),
        }
    }

    fn end_of(&self, start: EventTime) -> EventTime {
        start.saturating_add(self.size)
    }

    /// Adds a row to each of its windows that is not expired; false if there is none.
    ///
    /// `w` is the operator's watermark, `lateness_ref` the row's own reference (at least
    /// `w`; see `types::Batch`): whether the row is late for a window is decided against the
    /// reference, so it does not depend on when the row arrives. A window the row is late
    /// for but that is not due yet at `w` keeps the row aside until it fires, and applies it
    /// right after, as a late row; a late row marks its slot for one more emission when the
    /// window expires. So a window's first result holds exactly its rows that were on time,
    /// and its last exactly every row accepted, whatever the arrival timing.
    pub(super) fn add(
        &mut self,
        layout: &Layout,
        w: Option<EventTime>,
        lateness_ref: Option<EventTime>,
        row: &[Value],
        t: EventTime,
    ) -> bool {
        let judge = match (w, lateness_ref) {
            (Some(w), Some(l)) => Some(w.max(l)),
            (w, l) => w.or(l),
        };
        let (size, slide) = (self.size as i128, self.slide as i128);
        let t128 = t as i128;
        // The latest window containing `t` first; earlier windows end earlier, so once one is
        // expired all the rest are.
        let mut start = t128 - t128.rem_euclid(slide);
        let mut accepted = false;
        while start + size > t128 && start >= i64::MIN as i128 {
            let (s, end) = (start as i64, clamp_i64(start + size));
            if is_expired(end, judge, layout.lateness) {
                break;
            }
            accepted = true;
            if is_due(end, judge) && !is_due(end, w) {
                self.deferred.entry(s).or_default().push(row.into());
            } else {
                self.apply(layout, s, row, is_due(end, w));
            }
            start -= slide;
        }
        accepted
    }

    /// Adds `row` to its slot in the window starting at `start`; `late`: the window is due.
    fn apply(&mut self, layout: &Layout, start: EventTime, row: &[Value], late: bool) {
        let groups = self.panes.entry(start).or_default();
        let key = RowKey {
            row,
            columns: &layout.key_columns,
        };
        if let Some(slot) = groups.get_mut(&key as &dyn KeyLike) {
            update_accs(&mut slot.accs, &layout.plans, row);
            slot.dirty |= late;
        } else {
            let mut slot = Slot {
                accs: new_accs(&layout.plans),
                emitted: None,
                dirty: late,
            };
            update_accs(&mut slot.accs, &layout.plans, row);
            groups.insert(GroupKey::of(&key), slot);
        }
    }

    /// Emits the window's slots updated by late rows since they were last emitted, by key;
    /// returns how many were emitted for the first time.
    fn emit_revisions(&mut self, layout: &Layout, start: EventTime, out: &mut Output) -> u64 {
        let end = self.end_of(start);
        let Some(groups) = self.panes.get_mut(&start) else {
            return 0;
        };
        let mut slots: Vec<(&GroupKey, &mut Slot)> =
            groups.iter_mut().filter(|(_, s)| s.dirty).collect();
        slots.sort_by(|a, b| cmp_keys(&a.0.0, &b.0.0));
        let mut fired = 0;
        for (key, slot) in slots {
            let revision = slot.emitted.map_or(0, |r| r + 1);
            emit_row(
                out,
                &layout.plans,
                &key.0,
                start,
                end,
                Some(&slot.accs),
                revision.into(),
            );
            slot.emitted = Some(revision);
            slot.dirty = false;
            fired += u64::from(revision == 0);
        }
        fired
    }

    /// Fires the windows that became due between `prev` and `w` (then applies the late rows
    /// kept aside for them), then emits the revisions of the windows that expire and drops
    /// them.
    pub(super) fn advance(
        &mut self,
        layout: &Layout,
        prev: Option<EventTime>,
        w: EventTime,
        out: &mut Output,
    ) -> u64 {
        let size = self.size as i128;
        let mut fired = 0;
        // Due at `w`: start <= w + 1 - size. Already due at `prev`: start <= prev + 1 - size.
        // The bounds are widened by one and checked exactly below.
        let hi = clamp_i64(w as i128 + 1 - size);
        let lo = match prev {
            Some(p) => Bound::Excluded(clamp_i64(p as i128 - size)),
            None => Bound::Unbounded,
        };
        if prev.is_none_or(|p| clamp_i64(p as i128 - size) < hi) {
            for (&start, groups) in self.panes.range_mut((lo, Bound::Included(hi))) {
                let end = start.saturating_add(self.size);
                if !is_due(end, Some(w)) || is_due(end, prev) {
                    continue;
                }
                let mut slots: Vec<(&GroupKey, &mut Slot)> = groups.iter_mut().collect();
                slots.sort_by(|a, b| cmp_keys(&a.0.0, &b.0.0));
                for (key, slot) in slots {
                    emit_row(out, &layout.plans, &key.0, start, end, Some(&slot.accs), 0);
                    slot.emitted = Some(0);
                    fired += 1;
                }
            }
        }
        // Late rows kept aside for windows that are due now (whether or not they had on-time
        // rows).
        let due_deferred: Vec<EventTime> = self
            .deferred
            .range(..=hi)
            .map(|(&s, _)| s)
            .filter(|&s| is_due(self.end_of(s), Some(w)))
            .collect();
        for start in due_deferred {
            for row in self.deferred.remove(&start).unwrap_or_default() {
                self.apply(layout, start, &row, true);
            }
        }
        while let Some((&start, _)) = self.panes.first_key_value() {
            let end = start.saturating_add(self.size);
            if !is_expired(end, Some(w), layout.lateness) {
                break;
            }
            fired += self.emit_revisions(layout, start, out);
            self.panes.remove(&start);
        }
        fired
    }
}
