//! Window kinds (`WindowKind`) and the state of tumbling and sliding windows (`FixedState`):
//! which windows a row goes into, which fire when the watermark moves, which are dropped,
//! and the revisions a late row causes. Session windows are in `session`.

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
    /// Updated in the current `process` call while due: re-emit at its end.
    #[serde(skip)]
    dirty: bool,
}

pub(super) type Groups = FastMap<GroupKey, Slot>;

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
    /// Slots updated by the current `process` call in windows already due.
    dirty: Vec<(EventTime, GroupKey)>,
}

impl FixedState {
    pub(super) fn new(size: i64, slide: i64) -> FixedState {
        FixedState {
            size,
            slide,
            panes: BTreeMap::new(),
            dirty: Vec::new(),
        }
    }

    fn end_of(&self, start: EventTime) -> EventTime {
        start.saturating_add(self.size)
    }

    /// Adds a row to each of its windows that is not expired; false if there is none.
    pub(super) fn add(
        &mut self,
        layout: &Layout,
        w: Option<EventTime>,
        row: &[Value],
        t: EventTime,
    ) -> bool {
        let (size, slide) = (self.size as i128, self.slide as i128);
        let t128 = t as i128;
        // The latest window containing `t` first; earlier windows end earlier, so once one is
        // expired all the rest are.
        let mut start = t128 - t128.rem_euclid(slide);
        let mut accepted = false;
        while start + size > t128 && start >= i64::MIN as i128 {
            let (s, end) = (start as i64, clamp_i64(start + size));
            if is_expired(end, w, layout.lateness) {
                break;
            }
            accepted = true;
            let groups = self.panes.entry(s).or_default();
            let key = RowKey {
                row,
                columns: &layout.key_columns,
            };
            let due = is_due(end, w);
            if let Some(slot) = groups.get_mut(&key as &dyn KeyLike) {
                update_accs(&mut slot.accs, &layout.plans, row);
                if due && !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push((s, GroupKey::of(&key)));
                }
            } else {
                let mut slot = Slot {
                    accs: new_accs(&layout.plans),
                    emitted: None,
                    dirty: due,
                };
                update_accs(&mut slot.accs, &layout.plans, row);
                let gk = GroupKey::of(&key);
                if due {
                    self.dirty.push((s, gk.clone()));
                }
                groups.insert(gk, slot);
            }
            start -= slide;
        }
        accepted
    }

    /// Emits the slots updated while due by the current `process` call.
    pub(super) fn flush(&mut self, layout: &Layout, out: &mut Output) -> u64 {
        if self.dirty.is_empty() {
            return 0;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        // For fixed-size windows the start orders like the end.
        dirty.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| cmp_keys(&a.1.0, &b.1.0)));
        let mut fired = 0;
        for (start, key) in dirty.drain(..) {
            let end = self.end_of(start);
            let slot = self
                .panes
                .get_mut(&start)
                .and_then(|g| g.get_mut(&key))
                .expect("a dirty slot exists until the watermark moves");
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
        self.dirty = dirty;
        fired
    }

    /// Fires the windows that became due between `prev` and `w`, then drops expired ones.
    pub(super) fn advance(
        &mut self,
        layout: &Layout,
        prev: Option<EventTime>,
        w: EventTime,
        out: &mut Output,
    ) -> u64 {
        let size = self.size as i128;
        // Due at `w`: start <= w + 1 - size. Already due at `prev`: start <= prev + 1 - size.
        // The bounds are widened by one and checked exactly below.
        let hi = clamp_i64(w as i128 + 1 - size);
        let lo = match prev {
            Some(p) => {
                let lo = clamp_i64(p as i128 - size);
                if lo >= hi {
                    return 0;
                }
                Bound::Excluded(lo)
            }
            None => Bound::Unbounded,
        };
        let mut fired = 0;
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
        while let Some(entry) = self.panes.first_entry() {
            let end = entry.key().saturating_add(self.size);
            if !is_expired(end, Some(w), layout.lateness) {
                break;
            }
            entry.remove();
        }
        fired
    }
}
