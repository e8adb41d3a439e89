//! The state of session windows (`SessionState`): per key, sorted disjoint sessions that a
//! row opens, extends or merges; which fire when the watermark moves, which are dropped, and
//! the retractions a late row causes when it changes the bounds of a session that fired.
//!
//! A row behind its partition's watermark (its lateness reference) that arrives while the
//! operator's watermark has not passed that reference is kept aside and applied when the
//! watermark passes the reference, as if it had arrived right then: sessions due by the
//! reference fire first, then every row of that reference goes in, in a fixed order (all of
//! them have arrived by then: a row is read before its partition's watermark moves past its
//! reference). How early such a row reaches the operator, and next to which others, thus
//! changes nothing in the output.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::aggregate::{Acc, AggPlan, check_accs, new_accs, update_accs};
use super::key::{GroupKey, KeyLike, RowKey, cmp_keys};
use super::{FastMap, Layout, RETRACTED, emit_row, is_due, is_expired};
use crate::dataflow::Output;
use crate::types::{EventTime, Value};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    start: EventTime,
    end: EventTime,
    accs: Box<[Acc]>,
    /// Revision of the last row emitted for exactly these bounds, `None` before the first.
    emitted: Option<u32>,
    /// Updated in the current `process` call while due: emit at its end.
    #[serde(skip)]
    dirty: bool,
}

/// The sessions of one key: sorted by start, disjoint and not touching.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct KeySessions {
    key: GroupKey,
    sessions: Vec<Session>,
    #[serde(skip)]
    dirty: bool,
}

impl KeySessions {
    /// The group key these sessions are of.
    pub(super) fn key(&self) -> &GroupKey {
        &self.key
    }

    /// Checks every key's restored sessions (`check`), and that no key is listed twice.
    pub(super) fn check_all(
        keys: &[KeySessions],
        key_width: usize,
        plans: &[AggPlan],
    ) -> Result<(), String> {
        if keys.len() >= u32::MAX as usize {
            return Err(format!("{} session keys", keys.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for ks in keys {
            ks.check(key_width, plans)?;
            if !seen.insert(&ks.key) {
                return Err("a key is listed twice".into());
            }
        }
        Ok(())
    }

    /// Checks restored sessions of a key of `key_width` values: at least one, each of the
    /// aggregates (`check_accs`) with a next revision, sorted, disjoint and not touching.
    pub(super) fn check(&self, key_width: usize, plans: &[AggPlan]) -> Result<(), String> {
        if self.key.0.len() != key_width {
            return Err(format!(
                "a key has {} values, the window's key {key_width}",
                self.key.0.len()
            ));
        }
        if self.sessions.is_empty() {
            return Err("a key without sessions".into());
        }
        for (i, s) in self.sessions.iter().enumerate() {
            if s.start > s.end {
                return Err(format!(
                    "a session ends ({}) before it starts ({})",
                    s.end, s.start
                ));
            }
            if i > 0 && self.sessions[i - 1].end >= s.start {
                return Err("a key's sessions overlap or are out of order".into());
            }
            check_accs(&s.accs, plans)?;
            if s.emitted == Some(u32::MAX) {
                return Err("a session's last revision is the highest there is".into());
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(super) struct SessionState {
    pub(super) gap: i64,
    ids: FastMap<GroupKey, u32>,
    /// By key id; `None` for a free id.
    pub(super) keys: Vec<Option<KeySessions>>,
    free: Vec<u32>,
    /// Every session, by end: what to fire and what to drop as the watermark moves.
    by_end: BTreeSet<(EventTime, u32)>,
    /// Keys with a dirty session in the current `process` call.
    dirty: Vec<u32>,
    /// (start, end, key id) of emitted sessions that vanished in the current `process` call.
    retracted: Vec<(EventTime, EventTime, u32)>,
    /// Rows behind their lateness reference, kept aside until the watermark reaches it: by
    /// reference, as (row, event time).
    pub(super) deferred: SessionDeferred,
}

/// Rows kept aside by lateness reference (see the module documentation).
pub(super) type SessionDeferred = BTreeMap<EventTime, Vec<(Box<[Value]>, EventTime)>>;

impl SessionState {
    pub(super) fn new(gap: i64) -> SessionState {
        SessionState {
            gap,
            ids: FastMap::default(),
            keys: Vec::new(),
            free: Vec::new(),
            by_end: BTreeSet::new(),
            dirty: Vec::new(),
            retracted: Vec::new(),
            deferred: SessionDeferred::new(),
        }
    }

    pub(super) fn from_keys(
        gap: i64,
        keys: Vec<KeySessions>,
        deferred: SessionDeferred,
    ) -> SessionState {
        let mut st = SessionState::new(gap);
        st.deferred = deferred;
        for ks in keys {
            let id = st.keys.len() as u32;
            st.ids.insert(ks.key.clone(), id);
            st.by_end.extend(ks.sessions.iter().map(|s| (s.end, id)));
            st.keys.push(Some(ks));
        }
        st
    }

    fn key(&self, id: u32) -> &KeySessions {
        self.keys[id as usize].as_ref().expect("live key id")
    }

    fn new_key(&mut self, key: GroupKey) -> u32 {
        let ks = KeySessions {
            key: key.clone(),
            sessions: Vec::new(),
            dirty: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = Some(ks);
                id
            }
            None => {
                self.keys.push(Some(ks));
                u32::try_from(self.keys.len() - 1).expect("fewer than 2^32 live session keys")
            }
        };
        self.ids.insert(key, id);
        id
    }

    /// Adds a row to its key's sessions; false if it would open a session already expired.
    pub(super) fn add(
        &mut self,
        layout: &Layout,
        w: Option<EventTime>,
        row: &[Value],
        t: EventTime,
    ) -> bool {
        let end = t.saturating_add(self.gap);
        let key = RowKey {
            row,
            columns: &layout.key_columns,
        };
        let id = match self.ids.get(&key as &dyn KeyLike) {
            Some(&id) => id,
            None => {
                if is_expired(end, w, layout.lateness) {
                    return false;
                }
                self.new_key(GroupKey::of(&key))
            }
        };
        let ks = self.keys[id as usize].as_mut().expect("live key id");
        let sessions = &mut ks.sessions;
        // Sessions touching [t, end): s.end >= t and s.start <= end.
        let lo = sessions.partition_point(|s| s.end < t);
        let hi = lo + sessions[lo..].partition_point(|s| s.start <= end);
        if lo == hi {
            if is_expired(end, w, layout.lateness) {
                return false;
            }
            sessions.insert(
                lo,
                Session {
                    start: t,
                    end,
                    accs: new_accs(&layout.plans),
                    emitted: None,
                    dirty: false,
                },
            );
            self.by_end.insert((end, id));
        } else if hi > lo + 1 || t < sessions[lo].start || end > sessions[lo].end {
            // The bounds change: what was emitted for the old bounds is retracted.
            let start = t.min(sessions[lo].start);
            let new_end = end.max(sessions[hi - 1].end);
            for s in &sessions[lo..hi] {
                self.by_end.remove(&(s.end, id));
                if s.emitted.is_some() {
                    self.retracted.push((s.start, s.end, id));
                }
            }
            if hi > lo + 1 {
                let rest: Vec<Session> = sessions.drain(lo + 1..hi).collect();
                for s in rest {
                    for (a, b) in sessions[lo].accs.iter_mut().zip(s.accs) {
                        a.merge(b);
                    }
                }
            }
            let s = &mut sessions[lo];
            s.start = start;
            s.end = new_end;
            s.emitted = None;
            s.dirty = false;
            self.by_end.insert((new_end, id));
        }
        let s = &mut sessions[lo];
        update_accs(&mut s.accs, &layout.plans, row);
        if !s.dirty && is_due(s.end, w) {
            s.dirty = true;
            if !ks.dirty {
                ks.dirty = true;
                self.dirty.push(id);
            }
        }
        true
    }

    /// Sorts (end, start, key id) by end, start, key.
    fn sort(&self, rows: &mut [(EventTime, EventTime, u32)]) {
        rows.sort_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| cmp_keys(&self.key(a.2).key.0, &self.key(b.2).key.0))
        });
    }

    /// Emits the session of key `id` ending at `end` with its next revision.
    fn emit(&mut self, layout: &Layout, id: u32, end: EventTime, out: &mut Output) -> u64 {
        let ks = self.keys[id as usize].as_mut().expect("live key id");
        let i = ks
            .sessions
            .binary_search_by(|s| s.end.cmp(&end))
            .expect("indexed session exists");
        let s = &mut ks.sessions[i];
        let revision = s.emitted.map_or(0, |r| r + 1);
        emit_row(
            out,
            &layout.plans,
            &ks.key.0,
            s.start,
            s.end,
            Some(&s.accs),
            revision.into(),
        );
        s.emitted = Some(revision);
        s.dirty = false;
        u64::from(revision == 0)
    }

    /// Emits the retractions and the due sessions updated by the current `process` call.
    pub(super) fn flush(&mut self, layout: &Layout, out: &mut Output) -> u64 {
        if self.dirty.is_empty() && self.retracted.is_empty() {
            return 0;
        }
        // (end, start, id, is a retraction)
        let mut rows: Vec<(EventTime, EventTime, u32, bool)> = Vec::new();
        rows.extend(self.retracted.drain(..).map(|(s, e, id)| (e, s, id, true)));
        for id in std::mem::take(&mut self.dirty) {
            let ks = self.keys[id as usize].as_mut().expect("live key id");
            ks.dirty = false;
            rows.extend(
                ks.sessions
                    .iter()
                    .filter(|s| s.dirty)
                    .map(|s| (s.end, s.start, id, false)),
            );
        }
        // Retractions first, then updates; each by end, start, key.
        rows.sort_by(|a, b| {
            b.3.cmp(&a.3)
                .then_with(|| (a.0, a.1).cmp(&(b.0, b.1)))
                .then_with(|| cmp_keys(&self.key(a.2).key.0, &self.key(b.2).key.0))
        });
        let mut fired = 0;
        for (end, start, id, retraction) in rows {
            if retraction {
                let key = &self.key(id).key.0;
                emit_row(out, &layout.plans, key, start, end, None, RETRACTED);
            } else {
                fired += self.emit(layout, id, end, out);
            }
        }
        fired
    }

    /// Keeps aside a row behind its lateness reference `reference` (above the watermark).
    pub(super) fn defer(&mut self, reference: EventTime, row: &[Value], t: EventTime) {
        self.deferred
            .entry(reference)
            .or_default()
            .push((row.into(), t));
    }

    /// Moves the watermark from `prev` to `w`: in order of event time, the rows kept aside
    /// whose reference it passes (is above) go in once the sessions due by their reference
    /// fired; then
    /// the sessions due at `w` fire and expired ones are dropped.
    pub(super) fn advance_to(
        &mut self,
        layout: &Layout,
        prev: Option<EventTime>,
        w: EventTime,
        out: &mut Output,
    ) -> u64 {
        let mut fired = 0;
        let mut at = prev;
        while let Some(entry) = self.deferred.first_entry() {
            // Rows of a reference keep arriving until the watermark is past it.
            let reference = *entry.key();
            if reference >= w {
                break;
            }
            let mut rows = entry.remove();
            if at.is_none_or(|a| reference > a) {
                fired += self.advance(layout, at, reference, out);
                at = Some(reference);
            }
            rows.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| cmp_keys(&a.0, &b.0)));
            for (row, t) in rows {
                self.add(layout, at, &row, t);
            }
            fired += self.flush(layout, out);
        }
        fired + self.advance(layout, at, w, out)
    }

    /// Fires the sessions that became due between `prev` and `w`, then drops expired ones.
    fn advance(
        &mut self,
        layout: &Layout,
        prev: Option<EventTime>,
        w: EventTime,
        out: &mut Output,
    ) -> u64 {
        // Due at `w`: end <= w + 1; already due at `prev`: end <= prev + 1.
        let hi = w.saturating_add(1);
        let lo = match prev {
            Some(p) if p.saturating_add(1) >= hi => None,
            Some(p) => Some(Bound::Excluded((p.saturating_add(1), u32::MAX))),
            None => Some(Bound::Unbounded),
        };
        let mut fired = 0;
        if let Some(lo) = lo {
            let mut due: Vec<(EventTime, EventTime, u32)> = self
                .by_end
                .range((lo, Bound::Included((hi, u32::MAX))))
                .map(|&(end, id)| (end, 0, id))
                .collect();
            for row in &mut due {
                let ks = self.key(row.2);
                let i = ks
                    .sessions
                    .binary_search_by(|s| s.end.cmp(&row.0))
                    .expect("indexed session exists");
                row.1 = ks.sessions[i].start;
            }
            self.sort(&mut due);
            for (end, _, id) in due {
                fired += self.emit(layout, id, end, out);
            }
        }
        while let Some(&(end, id)) = self.by_end.first() {
            if !is_expired(end, Some(w), layout.lateness) {
                break;
            }
            self.by_end.pop_first();
            let ks = self.keys[id as usize].as_mut().expect("live key id");
            let i = ks
                .sessions
                .binary_search_by(|s| s.end.cmp(&end))
                .expect("indexed session exists");
            ks.sessions.remove(i);
            if ks.sessions.is_empty() {
                let ks = self.keys[id as usize].take().expect("live key id");
                self.ids.remove(&ks.key);
                self.free.push(id);
            }
        }
        fired
    }
}
