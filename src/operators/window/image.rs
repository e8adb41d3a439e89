//! The window operator's snapshot format (postcard): written from borrowed state, read into
//! owned state, with the same field order. It holds the key, kind and aggregates the
//! snapshot was taken with (a restore into another spec is refused) and the input's columns
//! (rows kept aside are mapped to the columns of now by name), the watermark, the
//! counters and every window with its accumulators, last emitted revision and whether late
//! rows changed it since, and the late rows kept aside for windows not yet due. A restore
//! into another number of instances keeps what belongs to the keys it owns
//! (`decode_rescaled`).

use std::collections::BTreeMap;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use super::assign::{Deferred, FixedState, Groups};
use super::session::{KeySessions, SessionDeferred, SessionState};
use super::{AggregateSpec, WindowKind, WindowOperator, WindowState};
use crate::dataflow::Rescale;
use crate::error::StateError;
use crate::state::StateImage;
use crate::types::{EventTime, Value};

const SNAPSHOT_VERSION: u8 = 3;

#[derive(Serialize)]
struct ImageOut<'a> {
    version: u8,
    /// The input's columns (name, type) the rows kept aside were written with.
    input_columns: Vec<(String, String)>,
    key: &'a [String],
    kind: WindowKind,
    aggregates: &'a [AggregateSpec],
    watermark: Option<EventTime>,
    late_count: u64,
    fired_count: u64,
    state: StateOut<'a>,
}

#[derive(Serialize)]
enum StateOut<'a> {
    Fixed(&'a BTreeMap<EventTime, Groups>, &'a Deferred),
    Session(LiveKeys<'a>, &'a SessionDeferred),
}

/// The live keys of the session slab, written as a sequence.
struct LiveKeys<'a>(&'a [Option<KeySessions>]);

impl Serialize for LiveKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // postcard needs the length up front.
        let mut seq = serializer.serialize_seq(Some(self.0.iter().flatten().count()))?;
        for ks in self.0.iter().flatten() {
            seq.serialize_element(ks)?;
        }
        seq.end()
    }
}

#[derive(Deserialize)]
struct ImageIn {
    version: u8,
    input_columns: Vec<(String, String)>,
    key: Vec<String>,
    kind: WindowKind,
    aggregates: Vec<AggregateSpec>,
    watermark: Option<EventTime>,
    late_count: u64,
    fired_count: u64,
    state: StateIn,
}

#[derive(Deserialize)]
enum StateIn {
    Fixed(BTreeMap<EventTime, Groups>, Deferred),
    Session(Vec<KeySessions>, SessionDeferred),
}

impl WindowOperator {
    /// The operator's snapshot: its spec, watermark, counters and windows.
    pub(super) fn encode_image(&self) -> Result<StateImage, StateError> {
        let image = ImageOut {
            version: SNAPSHOT_VERSION,
            input_columns: self.input_columns(),
            key: &self.spec.key,
            kind: self.spec.kind,
            aggregates: &self.spec.aggregates,
            watermark: self.watermark,
            late_count: self.late_count,
            fired_count: self.fired_count,
            state: match &self.state {
                WindowState::Fixed(st) => StateOut::Fixed(&st.panes, &st.deferred),
                WindowState::Session(st) => StateOut::Session(LiveKeys(&st.keys), &st.deferred),
            },
        };
        postcard::to_stdvec(&image)
            .map(StateImage::inline)
            .map_err(|e| StateError::encode(&self.name, e))
    }

    /// Replaces the operator's state with a snapshot `encode_image` took with the same key,
    /// kind and aggregates.
    pub(super) fn decode_image(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
        let image = self.parse_image(snapshot)?;
        let fail = |reason: String| StateError::decode(&self.name, reason);
        self.state = match (image.state, &self.state) {
            (StateIn::Fixed(panes, deferred), WindowState::Fixed(st)) => {
                let mut fresh = FixedState::new(st.size, st.slide);
                fresh.panes = panes;
                fresh.deferred = deferred;
                WindowState::Fixed(fresh)
            }
            (StateIn::Session(keys, deferred), WindowState::Session(st)) => {
                WindowState::Session(SessionState::from_keys(st.gap, keys, deferred))
            }
            _ => return Err(fail("the snapshot holds another kind of window".into())),
        };
        self.watermark = image.watermark;
        self.late_count = image.late_count;
        self.fired_count = image.fired_count;
        Ok(())
    }

    /// Restores from the snapshots of another number of instances: the windows, sessions
    /// and rows kept aside of the keys this instance owns now, the counters of the former
    /// instances it takes, and the highest former watermark (each former instance's was at
    /// most the sources' at the barrier, so no row still to come is behind it).
    pub(super) fn decode_rescaled(&mut self, from: &Rescale<'_>) -> Result<(), StateError> {
        let key_columns = self.layout.key_columns.clone();
        let (mut watermark, mut late_count, mut fired_count) = (None, 0, 0);
        let mut panes: BTreeMap<EventTime, Groups> = BTreeMap::new();
        let mut deferred = Deferred::new();
        let mut sessions: Vec<KeySessions> = Vec::new();
        let mut session_deferred = SessionDeferred::new();
        for (j, snapshot) in from.snapshots.iter().enumerate() {
            if snapshot.is_empty() {
                continue;
            }
            let image = self.parse_image(snapshot)?;
            watermark = watermark.max(image.watermark);
            if from.takes(j) {
                late_count += image.late_count;
                fired_count += image.fired_count;
            }
            match image.state {
                StateIn::Fixed(former_panes, former_deferred) => {
                    for (start, groups) in former_panes {
                        let owned: Vec<_> = groups
                            .into_iter()
                            .filter(|(key, _)| from.owns_key(key.0.iter()))
                            .collect();
                        if !owned.is_empty() {
                            panes.entry(start).or_default().extend(owned);
                        }
                    }
                    for (start, rows) in former_deferred {
                        let owned: Vec<_> = rows
                            .into_iter()
                            .filter(|row| from.owns_row(row, &key_columns))
                            .collect();
                        if !owned.is_empty() {
                            deferred.entry(start).or_default().extend(owned);
                        }
                    }
                }
                StateIn::Session(keys, former_deferred) => {
                    sessions.extend(
                        keys.into_iter()
                            .filter(|ks| from.owns_key(ks.key().0.iter())),
                    );
                    for (reference, rows) in former_deferred {
                        let owned: Vec<_> = rows
                            .into_iter()
                            .filter(|(row, _)| from.owns_row(row, &key_columns))
                            .collect();
                        if !owned.is_empty() {
                            session_deferred.entry(reference).or_default().extend(owned);
                        }
                    }
                }
            }
        }
        self.state = match &self.state {
            WindowState::Fixed(st) => {
                let mut fresh = FixedState::new(st.size, st.slide);
                fresh.panes = panes;
                fresh.deferred = deferred;
                WindowState::Fixed(fresh)
            }
            WindowState::Session(st) => {
                WindowState::Session(SessionState::from_keys(st.gap, sessions, session_deferred))
            }
        };
        self.watermark = watermark;
        self.late_count = late_count;
        self.fired_count = fired_count;
        Ok(())
    }

    /// Decodes and checks a snapshot taken with this operator's key, kind and aggregates.
    fn parse_image(&self, snapshot: &StateImage) -> Result<ImageIn, StateError> {
        let snapshot = &snapshot.bytes[..];
        let fail = |reason: String| StateError::decode(&self.name, reason);
        let version = snapshot.first().copied();
        if version != Some(SNAPSHOT_VERSION) {
            return Err(fail(format!(
                "unknown snapshot version {version:?} (this build reads {SNAPSHOT_VERSION})"
            )));
        }
        let image: ImageIn = postcard::from_bytes(snapshot).map_err(|e| fail(e.to_string()))?;
        if image.key != self.spec.key
            || image.kind != self.spec.kind
            || image.aggregates != self.spec.aggregates
        {
            return Err(fail(
                "the snapshot was taken with a different window key, kind or aggregates".into(),
            ));
        }
        let mut image = image;
        self.map_kept_rows(&mut image).map_err(fail)?;
        self.check(&image)
            .map_err(|e| fail(format!("the snapshot is malformed: {e}")))?;
        let kind_matches = matches!(
            (&image.state, &self.state),
            (StateIn::Fixed(..), WindowState::Fixed(_))
                | (StateIn::Session(..), WindowState::Session(_))
        );
        if !kind_matches {
            return Err(fail("the snapshot holds another kind of window".into()));
        }
        debug_assert_eq!(image.version, SNAPSHOT_VERSION);
        Ok(image)
    }

    /// The input's columns as (name, type).
    fn input_columns(&self) -> Vec<(String, String)> {
        self.input_schema
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.data_type.to_string()))
            .collect()
    }

    /// Maps the rows kept aside in `image` (whole input rows) by name onto the input's
    /// columns of now when they changed: a column gone is dropped, a new one is null; a
    /// column whose type changed is refused, naming it.
    fn map_kept_rows(&self, image: &mut ImageIn) -> Result<(), String> {
        let now = self.input_columns();
        let then = &image.input_columns;
        if *then == now {
            return Ok(());
        }
        let mut from = Vec::with_capacity(now.len());
        for (name, ty) in &now {
            let at = then.iter().position(|(n, _)| n == name);
            if let Some(i) = at
                && then[i].1 != *ty
            {
                return Err(format!(
                    "the input's column `{name}` was {} when the state was written and is {ty} \
                     now: rows kept for windows cannot be restored; give it its type back, or \
                     start afresh (`run --fresh-start`)",
                    then[i].1
                ));
            }
            from.push(at);
        }
        let width = then.len();
        let rows: Vec<&mut Box<[Value]>> = match &mut image.state {
            StateIn::Fixed(_, deferred) => deferred.values_mut().flatten().collect(),
            StateIn::Session(_, deferred) => deferred
                .values_mut()
                .flatten()
                .map(|(row, _)| row)
                .collect(),
        };
        for row in rows {
            if row.len() != width {
                return Err(format!(
                    "the snapshot is malformed: a row kept for a window has {} values, the \
                     input had {width} columns",
                    row.len()
                ));
            }
            *row = from
                .iter()
                .map(|at| at.and_then(|i| row.get(i)).cloned().unwrap_or(Value::Null))
                .collect();
        }
        Ok(())
    }

    /// Checks what the operator relies on in a decoded snapshot: keys of the window's key
    /// columns, accumulators of its aggregates, sessions in order, counts a run reaches.
    fn check(&self, image: &ImageIn) -> Result<(), String> {
        let (key_width, plans) = (self.layout.key_columns.len(), &self.layout.plans[..]);
        if image.late_count.max(image.fired_count) >= MAX_COUNT {
            return Err("its counters are beyond any a run reaches".into());
        }
        match &image.state {
            StateIn::Fixed(panes, deferred) => {
                let width = self.input_schema.len();
                if deferred.values().flatten().any(|row| row.len() != width) {
                    return Err(format!(
                        "a row kept for a window does not have the input's {width} columns"
                    ));
                }
                for (key, slot) in panes.values().flatten() {
                    if key.0.len() != key_width {
                        return Err(format!(
                            "a key has {} values, the window's key {key_width}",
                            key.0.len()
                        ));
                    }
                    slot.check(plans)?;
                }
            }
            StateIn::Session(keys, deferred) => {
                KeySessions::check_all(keys, key_width, plans)?;
                let width = self.input_schema.len();
                if deferred
                    .values()
                    .flatten()
                    .any(|(row, _)| row.len() != width)
                {
                    return Err(format!(
                        "a row kept for a session does not have the input's {width} columns"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// No run counts this far; a snapshot that does was not written by one.
const MAX_COUNT: u64 = 1 << 62;
