//! Events the enrichment operator holds back: the gate's (`GateRows` in a `SpillQueue`,
//! sealed into checkpoint segments by a `SealedLog`), as-of events waiting for the
//! watermark, and held misses waiting for their row or their timeout (`Pending`), with the
//! event times they hold the watermark at (`TimeSet`). Which of them a snapshot holds and
//! how a restore puts them back is here; the image's layout is in `image`.

use serde::{Deserialize, Serialize};

use super::image::ColumnMap;
use super::{EnrichOperator, EnrichStrategy, JoinMode, MissPolicy};
use crate::dataflow::Output;
use crate::state::sealed_log::SealedLogError;
use crate::state::{Blobs, SealedLog, SpillQueue};
use crate::types::{Batch, EventTime, Value};

/// Names the gate's checkpoint segments (`gate-…`) and their directory.
pub(super) const GATE_LOG: &str = "gate";

/// The gate's queue: `max_buffered` events in memory, the rest spilled (`gradual` never
/// buffers, but a queue keeps at least one item in memory).
pub(super) fn queue(strategy: EnrichStrategy) -> SpillQueue<GateRows> {
    SpillQueue::new(match strategy {
        EnrichStrategy::Gated { max_buffered } => max_buffered,
        EnrichStrategy::Gradual => 1,
    })
}

/// A batch of events waiting at the gate, row-major as in `Batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct GateRows {
    values: Vec<Value>,
    times: Vec<EventTime>,
    /// The rows' lateness references (`Batch::lateness_refs`).
    refs: Vec<(u32, EventTime)>,
}

/// An event waiting somewhere in the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) row: Vec<Value>,
    pub(super) time: EventTime,
    /// Order of arrival where it matters (held misses across join keys).
    pub(super) seq: u64,
    /// Its lateness reference (`types::Batch`), passed on with what it produces.
    pub(super) lateness_ref: Option<EventTime>,
}

/// A multiset of event times with a cheap minimum (what buffered events hold back).
#[derive(Clone, Debug, Default)]
pub(super) struct TimeSet(std::collections::BTreeMap<EventTime, usize>);

impl TimeSet {
    pub(super) fn insert(&mut self, t: EventTime) {
        *self.0.entry(t).or_default() += 1;
    }

    pub(super) fn remove(&mut self, t: EventTime) {
        if let Some(n) = self.0.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&t);
            }
        }
    }

    pub(super) fn min(&self) -> Option<EventTime> {
        self.0.keys().next().copied()
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

impl EnrichOperator {
    /// A row arrived for `join_key`: its held events are joined again (in as-of mode at
    /// their own time, so a row valid only later still leaves them held until the timeout).
    pub(super) fn release_held(&mut self, join_key: &[Value], out: &mut Output) {
        if let Some(list) = self.held.remove(join_key) {
            self.held_count -= list.len();
            for p in &list {
                self.held_times.remove(p.time);
            }
            for p in list {
                self.row_ref(p.lateness_ref, out);
                self.join(&p.row, p.time, out, false);
            }
            self.row_ref(None, out);
        }
    }

    /// Held misses whose timeout the watermark passed are emitted as misses.
    pub(super) fn expire_held(&mut self, watermark: EventTime, out: &mut Output) {
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
            self.row_ref(p.lateness_ref, out);
            self.join(&p.row, p.time, out, true);
        }
        self.row_ref(None, out);
    }

    /// Emits or buffers one event that passed the gate.
    pub(super) fn admit(&mut self, event: Vec<Value>, time: EventTime, out: &mut Output) {
        match self.spec.mode {
            JoinMode::Lookup => self.join(&event, time, out, false),
            JoinMode::AsOf { .. } => {
                if self.as_of_ready(time) {
                    // Everything it can match is known.
                    self.join(&event, time, out, false);
                } else {
                    self.waiting_min = Some(self.waiting_min.map_or(time, |m| m.min(time)));
                    self.waiting.push(Pending {
                        row: event,
                        time,
                        seq: 0,
                        lateness_ref: self.row_ref,
                    });
                }
            }
        }
    }

    /// Lets every event through the gate, in arrival order.
    pub(super) fn open_gate(&mut self, out: &mut Output) {
        self.gate_min = None;
        self.gate_events = 0;
        self.gate_log.clear();
        let waiting = match self.gate.drain() {
            Ok(w) => w,
            Err(e) => {
                // The spill file is gone or corrupt: nothing else can be done with it.
                tracing::error!(node = %self.name, error = %e, "cannot read back the events the gate spilled");
                Vec::new()
            }
        };
        let width = self.event_schema.len();
        for mut rows in waiting {
            if self.spec.mode == JoinMode::Lookup && rows.refs.is_empty() {
                self.join_rows(&mut rows.values, &rows.times, out);
                continue;
            }
            let mut values = rows.values.into_iter();
            let mut refs = rows.refs.iter().peekable();
            for (i, time) in rows.times.into_iter().enumerate() {
                let row: Vec<Value> = values.by_ref().take(width).collect();
                let lateness_ref = refs.next_if(|&&(j, _)| j as usize == i).map(|&(_, l)| l);
                self.row_ref(lateness_ref, out);
                self.admit(row, time, out);
            }
            self.row_ref(None, out);
        }
        self.counters.gate_buffered.set(0.0);
    }

    /// Puts a batch of events behind the shut gate.
    pub(super) fn wait_at_gate(&mut self, batch: Batch) {
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
        let refs = batch.lateness_refs().to_vec();
        self.gate.push(
            GateRows {
                values,
                times,
                refs,
            },
            n,
        );
        self.gate_events += n;
        self.counters.gate_buffered.set(self.gate_events as f64);
    }

    /// Joins the as-of events the watermark has passed, in event-time order (stable:
    /// arrival order among equal times).
    pub(super) fn join_waiting(&mut self, watermark: EventTime, out: &mut Output) {
        if !self.waiting.is_empty() {
            self.waiting.sort_by_key(|p| p.time);
            let n = self.waiting.partition_point(|p| p.time <= watermark);
            let due: Vec<Pending> = self.waiting.drain(..n).collect();
            self.waiting_min = self.waiting.first().map(|p| p.time);
            for p in due {
                self.row_ref(p.lateness_ref, out);
                self.join(&p.row, p.time, out, false);
            }
            self.row_ref(None, out);
        }
    }

    /// The event being handled has lateness reference `lateness_ref`: what it produces
    /// carries it, and so does the event if it waits.
    pub(super) fn row_ref(&mut self, lateness_ref: Option<EventTime>, out: &mut Output) {
        if self.row_ref != lateness_ref {
            self.row_ref = lateness_ref;
            out.set_lateness_ref(lateness_ref);
        }
    }

    /// Seals the gate's events that no segment holds yet, puts every segment into `blobs`
    /// and returns their ids, oldest first.
    pub(super) fn seal_gate(&mut self, blobs: &mut Blobs) -> std::io::Result<Vec<String>> {
        let new = self.gate.to_vec_from(self.gate_log.sealed())?;
        self.gate_log.seal(&new)?;
        Ok(self.gate_log.export(blobs))
    }

    /// Adds the gate's events of another former instance (its segments `ids`) after this
    /// one's: they are sealed into this instance's log at its next snapshot.
    pub(super) fn append_gate(
        &mut self,
        ids: &[String],
        blobs: &Blobs,
        map: Option<&ColumnMap>,
    ) -> Result<(), SealedLogError> {
        let width = map.map_or(self.event_schema.len(), |m| m.width);
        let mut rows = Vec::new();
        SealedLog::restore(GATE_LOG, ids, blobs, |g: GateRows| rows.push(g))?;
        for mut g in rows {
            let n = g.times.len();
            if n.checked_mul(width) != Some(g.values.len()) {
                return Err(SealedLogError::Misshapen(format!(
                    "a batch of {n} events holds {} values, the events had {width} columns",
                    g.values.len()
                )));
            }
            if let Some(m) = map {
                g.values = (0..n)
                    .flat_map(|i| m.row(&g.values[i * width..(i + 1) * width]))
                    .collect();
            }
            self.gate_min = g.times.iter().copied().chain(self.gate_min).min();
            self.gate_events += n;
            self.gate.push(g, n);
        }
        self.counters.gate_buffered.set(self.gate_events as f64);
        Ok(())
    }

    /// Puts back the gate's events from the segments `ids` (a fresh queue and log); each
    /// batch must hold rows of the columns they were written with. With `map` (the events'
    /// columns changed) the rows are mapped to the columns of now, and the log starts empty:
    /// the old segments hold rows of the old columns, so the next snapshot seals them anew.
    pub(super) fn restore_gate(
        &mut self,
        ids: &[String],
        blobs: &Blobs,
        map: Option<&ColumnMap>,
    ) -> Result<(), SealedLogError> {
        let mut gate = queue(self.spec.strategy);
        let (mut gate_min, mut gate_events) = (None, 0);
        let width = map.map_or(self.event_schema.len(), |m| m.width);
        let mut misshapen = None;
        let log = SealedLog::restore(GATE_LOG, ids, blobs, |mut g: GateRows| {
            let n = g.times.len();
            if n.checked_mul(width) != Some(g.values.len()) {
                misshapen.get_or_insert((g.values.len(), n));
                return;
            }
            if let Some(m) = map {
                g.values = (0..n)
                    .flat_map(|i| m.row(&g.values[i * width..(i + 1) * width]))
                    .collect();
            }
            gate_min = g.times.iter().copied().chain(gate_min).min();
            gate_events += n;
            gate.push(g, n);
        })?;
        if let Some((values, rows)) = misshapen {
            return Err(SealedLogError::Misshapen(format!(
                "a batch of {rows} events holds {values} values, the events had {width} columns"
            )));
        }
        self.gate = gate;
        self.gate_min = gate_min;
        self.gate_events = gate_events;
        self.gate_log = if map.is_some() {
            SealedLog::new(GATE_LOG)
        } else {
            log
        };
        Ok(())
    }

    /// The held misses in arrival order (for a snapshot).
    pub(super) fn held_in_order(&self) -> Vec<Pending> {
        let mut held: Vec<Pending> = self.held.values().flatten().cloned().collect();
        held.sort_by_key(|p| p.seq);
        held
    }

    /// Replaces the held misses with `held` (from a snapshot, in arrival order).
    pub(super) fn restore_held(&mut self, held: Vec<Pending>) {
        self.held_times.clear();
        self.held.clear();
        self.held_count = held.len();
        for p in held {
            self.set_probe_key(&p.row);
            let key: Box<[Value]> = self.probe_key[..self.layout.event_key.len()].into();
            self.held_times.insert(p.time);
            self.held.entry(key).or_default().push(p);
        }
    }
}
