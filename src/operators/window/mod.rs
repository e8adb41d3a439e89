//! The event-time window operator: groups rows by a key and by tumbling, sliding or session
//! windows, aggregates them (`count`, `sum`, `min`, `max`, `avg`, `count_distinct`), fires each
//! window when the watermark passes it, keeps fired windows for `allowed_lateness` to apply
//! late rows as revisions, and sends rows too late for every window to the `late` port.
//! It owns its window state and its snapshot format; it reads no clock and does no I/O.
//!
//! # Time
//! Event times are milliseconds (`batch.event_time(i)`; no field is read for time). Windows are
//! half-open `[start, end)` and aligned to the Unix epoch: a tumbling or sliding window starts
//! at a multiple of its slide (a tumbling window's slide is its size). With `W` the last
//! watermark the operator received (it ignores watermarks that do not advance):
//! - a window is **due** once `end - 1 <= W`: on the watermark that makes it due, one row per
//!   (key, window) is emitted on `main` with revision 0 (see `fired_count`);
//! - a window is **expired** once `end - 1 + allowed_lateness <= W`: its state is dropped;
//! - a row goes into each of its windows that is not expired. A row that lands in a window
//!   that is already due updates it, and at the end of that `process` call each (key, window)
//!   so updated is emitted once more with the next revision (revision 0 if the row created the
//!   key in that window). A row that goes into no window is sent unchanged, with its event
//!   time, to `late`, and `late_count` moves. Rows are never dropped silently.
//!
//! # Sessions
//! Per key, a row at `t` opens `[t, t + gap)`; sessions that overlap or touch (`end == start`)
//! merge. A session accepts a late row while it is not expired; a row that would open a new
//! session that is already expired goes to `late`. A session whose state was dropped is gone:
//! a later row that would have touched it starts a new session.
//!
//! # Output and retractions
//! `main` has the key fields, `window_start` and `window_end` (timestamps, microseconds), one
//! column per aggregate, then `revision`; a row's event time is `end - 1`. The identity of a
//! result is (key, `window_start`, `window_end`); revision `r >= 0` replaces revision `r - 1`
//! of the same identity. A late row can extend or merge session windows that already fired:
//! the result for the old bounds no longer exists, so a **retraction** is emitted for it — a
//! row with the old key and bounds, `revision = -1` and every aggregate column null — and the
//! new, larger session is a new identity that is emitted with revision 0 once it is due (at
//! once if it already is). A consumer that upserts by (key, `window_start`, `window_end`)
//! deletes on revision -1. Tumbling and sliding windows never retract.
//!
//! Rows emitted by one call are ordered by `window_end`, then `window_start`, then key (by
//! `Value::total_cmp`), so output is reproducible; a `process` call that both retracts and
//! updates emits all its retractions first, then its updates, each group in that order.
//!
//! # Aggregates
//! Nulls are ignored by every aggregate except `count` without a field, which counts rows;
//! `count` of a field counts its non-null values. Empty `sum`, `min`, `max` and `avg` are null.
//! `sum` keeps the field's type: an int sum is kept as `i128` and saturates to the `i64` range
//! when emitted (never wraps); a decimal sum saturates at the decimal range; a float sum is a
//! plain `f64` sum in arrival order. `avg` is always a float. `min`/`max` use
//! `Value::total_cmp`. `count_distinct` is exact: it keeps the set of distinct non-null values.
//! A value whose type does not match the schema (decoders never produce one) counts as null.
//!
//! # State and snapshots
//! Tumbling/sliding: `BTreeMap<window start, HashMap<key, accumulators>>`; a row costs one
//! B-tree lookup and one hash lookup per window, by a borrowed view of the row's key columns,
//! and allocates nothing when its (key, window) exists. Sessions: keys are interned to ids,
//! each key holds its sorted, disjoint sessions, and a `BTreeSet<(end, id)>` finds the
//! sessions to fire or drop. A snapshot (postcard) holds the spec it was taken with, the
//! watermark, the counters and every window with its accumulators (distinct sets included)
//! and last emitted revision; restoring it into an operator built from the same spec
//! continues exactly as the uninterrupted operator would. A snapshot taken with another key,
//! window kind or aggregate list is refused (`allowed_lateness` may change). Snapshot bytes are
//! not canonical: equal states may encode in a different hash-map order.
//! Window arithmetic assumes event times well inside the `i64` range (it saturates at the
//! ends rather than panicking).
//!
//! # Files
//! This file has the spec, the operator and its output rows; `assign` the window kinds and
//! the state of tumbling and sliding windows, `session` the state of session windows and
//! their merging, `aggregate` the functions and their accumulators, `key` the group keys,
//! and `image` the snapshot format.

mod aggregate;
mod assign;
pub mod config;
mod image;
mod key;
#[cfg(test)]
mod proptests;
mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataflow::{LATE_PORT, MAIN_PORT, Operator, Output, PortSpec};
use crate::error::{SpecError, StateError};
use crate::state::StateImage;
use crate::types::{Batch, DataType, EventTime, Field, Schema, SchemaRef, Value};

pub use aggregate::{AggregateFn, AggregateSpec};
pub use assign::WindowKind;

use aggregate::{Acc, AggPlan};
use assign::FixedState;
use session::SessionState;

/// The output column holding a window's start (timestamp, microseconds).
pub const WINDOW_START: &str = "window_start";
/// The output column holding a window's exclusive end (timestamp, microseconds).
pub const WINDOW_END: &str = "window_end";
/// The output column holding a result's revision; -1 retracts a session result.
pub const REVISION: &str = "revision";
/// The revision of a retraction row.
pub const RETRACTED: i64 = -1;

const MAIN: usize = 0;
const LATE: usize = 1;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// What to window and aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Grouping fields; empty means one global group. A null is a key value like any other.
    pub key: Vec<String>,
    pub kind: WindowKind,
    /// How long after firing a window still accepts late rows (and re-emits).
    pub allowed_lateness: Duration,
    pub aggregates: Vec<AggregateSpec>,
}

/// What the state code needs to know about the spec, apart from the window shape.
#[derive(Debug)]
struct Layout {
    key_columns: Box<[usize]>,
    plans: Box<[AggPlan]>,
    lateness: i64,
}

/// Event-time windowed aggregation; see the module documentation.
#[derive(Debug)]
pub struct WindowOperator {
    name: String,
    spec: WindowSpec,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    layout: Layout,
    /// The last watermark received; part of the snapshot.
    watermark: Option<EventTime>,
    late_count: u64,
    fired_count: u64,
    state: WindowState,
}

impl WindowOperator {
    /// The input columns the windows compute with: the key and the aggregates' fields.
    pub fn columns_read(&self) -> Vec<usize> {
        let mut read = self.layout.key_columns.to_vec();
        read.extend(self.layout.plans.iter().filter_map(|p| p.field));
        read
    }

    /// Validates `spec` against `input_schema` and builds the operator.
    pub fn new(
        name: &str,
        spec: WindowSpec,
        input_schema: SchemaRef,
    ) -> Result<WindowOperator, SpecError> {
        let reserved = [WINDOW_START, WINDOW_END, REVISION];
        let field_names = || {
            input_schema
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unknown = |path: String, name: &str| {
            SpecError::new(
                path,
                format!("unknown field `{name}`; the input has: {}", field_names()),
            )
        };

        let mut key_columns = Vec::with_capacity(spec.key.len());
        let mut out_fields = Vec::new();
        for (i, name) in spec.key.iter().enumerate() {
            let path = format!("key[{i}]");
            let col = input_schema
                .index_of(name)
                .ok_or_else(|| unknown(path.clone(), name))?;
            if key_columns.contains(&col) {
                return Err(SpecError::new(
                    path,
                    format!("field `{name}` is already part of the key"),
                ));
            }
            if reserved.contains(&name.as_str()) {
                return Err(SpecError::new(
                    path,
                    format!(
                        "`{name}` is an output column of the window; rename the field upstream"
                    ),
                ));
            }
            key_columns.push(col);
            out_fields.push(input_schema.field(col).clone());
        }

        let lateness = millis(spec.allowed_lateness, "allowed_lateness", true)?;
        let state = match spec.kind {
            WindowKind::Tumbling { size } => {
                let size = millis(size, "kind.size", false)?;
                WindowState::Fixed(FixedState::new(size, size))
            }
            WindowKind::Sliding { size, slide } => {
                let size = millis(size, "kind.size", false)?;
                let slide = millis(slide, "kind.slide", false)?;
                if slide > size {
                    return Err(SpecError::new(
                        "kind.slide",
                        format!(
                            "slide ({slide}ms) must not exceed size ({size}ms): rows between windows would be lost"
                        ),
                    ));
                }
                WindowState::Fixed(FixedState::new(size, slide))
            }
            WindowKind::Session { gap } => {
                WindowState::Session(SessionState::new(millis(gap, "kind.gap", false)?))
            }
        };
        out_fields.push(Field::new(WINDOW_START, DataType::Timestamp));
        out_fields.push(Field::new(WINDOW_END, DataType::Timestamp));

        let mut plans = Vec::with_capacity(spec.aggregates.len());
        for (i, agg) in spec.aggregates.iter().enumerate() {
            let name = &agg.name;
            if name.is_empty() {
                return Err(SpecError::new(
                    format!("aggregates[{i}].name"),
                    "an aggregate needs a name",
                ));
            }
            if reserved.contains(&name.as_str()) || spec.key.contains(name) {
                return Err(SpecError::new(
                    format!("aggregates[{i}].name"),
                    format!(
                        "`{name}` is already an output column (a key field or a window column)"
                    ),
                ));
            }
            if spec.aggregates[..i].iter().any(|a| a.name == *name) {
                return Err(SpecError::new(
                    format!("aggregates[{i}].name"),
                    format!("`{name}` is used by an earlier aggregate"),
                ));
            }
            let path = format!("aggregates[{i}].field");
            let (field, input) = match &agg.field {
                None if agg.function == AggregateFn::Count => (None, DataType::Null),
                None => {
                    return Err(SpecError::new(
                        path,
                        format!("`{}` needs a field", agg.function.name()),
                    ));
                }
                Some(f) => {
                    let col = input_schema
                        .index_of(f)
                        .ok_or_else(|| unknown(path.clone(), f))?;
                    (Some(col), input_schema.field(col).data_type)
                }
            };
            if matches!(agg.function, AggregateFn::Sum | AggregateFn::Avg)
                && !matches!(input, DataType::Int | DataType::Float | DataType::Decimal)
            {
                return Err(SpecError::new(
                    path,
                    format!(
                        "`{}` needs an int, float or decimal field, not {input}",
                        agg.function.name()
                    ),
                ));
            }
            let out_type = agg.function.output_type(field.map(|_| input));
            out_fields.push(Field::new(name, out_type));
            plans.push(AggPlan {
                function: agg.function,
                field,
                input,
            });
        }
        out_fields.push(Field::new(REVISION, DataType::Int));

        Ok(WindowOperator {
            name: name.to_string(),
            spec,
            input_schema,
            output_schema: Arc::new(Schema::new(out_fields)),
            layout: Layout {
                key_columns: key_columns.into(),
                plans: plans.into(),
                lateness,
            },
            watermark: None,
            late_count: 0,
            fired_count: 0,
            state,
        })
    }

    /// Rows sent to `late` so far.
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// (key, window) results emitted for the first time (revision-0 rows) so far.
    pub fn fired_count(&self) -> u64 {
        self.fired_count
    }

    /// The last watermark the operator received.
    pub fn watermark(&self) -> Option<EventTime> {
        self.watermark
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }
}

/// A duration as whole milliseconds, as event times are.
fn millis(d: Duration, field: &str, zero_ok: bool) -> Result<i64, SpecError> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(SpecError::new(
            field,
            format!("{d:?} is not a whole number of milliseconds (event times are milliseconds)"),
        ));
    }
    let ms = i64::try_from(d.as_millis())
        .map_err(|_| SpecError::new(field, format!("{d:?} is too long")))?;
    if ms == 0 && !zero_ok {
        return Err(SpecError::new(field, "must be greater than zero"));
    }
    Ok(ms)
}

/// `end - 1 <= w`: the window's results are due.
fn is_due(end: EventTime, w: Option<EventTime>) -> bool {
    w.is_some_and(|w| end as i128 - 1 <= w as i128)
}

/// `end - 1 + lateness <= w`: the window no longer accepts rows and its state is dropped.
fn is_expired(end: EventTime, w: Option<EventTime>, lateness: i64) -> bool {
    w.is_some_and(|w| end as i128 - 1 + lateness as i128 <= w as i128)
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Appends one result row to `main`. `accs: None` writes a retraction (null aggregates).
fn emit_row(
    out: &mut Output,
    plans: &[AggPlan],
    key: &[Value],
    start: EventTime,
    end: EventTime,
    accs: Option<&[Acc]>,
    revision: i64,
) {
    let batch = out.port(MAIN);
    for v in key {
        batch.push_value(v.clone());
    }
    batch.push_value(Value::Timestamp(start.saturating_mul(1000)));
    batch.push_value(Value::Timestamp(end.saturating_mul(1000)));
    match accs {
        Some(accs) => {
            for (acc, plan) in accs.iter().zip(plans) {
                batch.push_value(acc.finish(plan.function));
            }
        }
        None => {
            for _ in plans {
                batch.push_value(Value::Null);
            }
        }
    }
    batch.push_value(Value::Int(revision));
    batch.finish_row(end.saturating_sub(1));
}

#[derive(Debug)]
enum WindowState {
    Fixed(FixedState),
    Session(SessionState),
}

impl Operator for WindowOperator {
    fn ports(&self) -> Vec<PortSpec> {
        vec![
            PortSpec {
                name: MAIN_PORT.to_string(),
                schema: self.output_schema.clone(),
            },
            PortSpec {
                name: LATE_PORT.to_string(),
                schema: self.input_schema.clone(),
            },
        ]
    }

    fn process(&mut self, _input: usize, batch: Batch, out: &mut Output) {
        debug_assert_eq!(
            batch.width(),
            self.input_schema.len(),
            "input schema mismatch"
        );
        let w = self.watermark;
        for ((row, t), lateness_ref) in batch.rows().zip(batch.lateness_ref_per_row()) {
            let accepted = match &mut self.state {
                WindowState::Fixed(st) => st.add(&self.layout, w, lateness_ref, row, t),
                WindowState::Session(st) => {
                    // Too late for even a session of its own by its reference: late
                    // whenever it arrives.
                    let own_end = t.saturating_add(st.gap);
                    if is_expired(own_end, lateness_ref, self.layout.lateness) {
                        false
                    } else if let Some(r) = lateness_ref.filter(|&r| w.is_none_or(|w| w <= r)) {
                        // Behind its partition: goes in when the watermark passes its
                        // reference, whenever (and beside whichever rows) it arrived.
                        st.defer(r, row, t);
                        true
                    } else {
                        st.add(&self.layout, w, row, t)
                    }
                }
            };
            if !accepted {
                self.late_count += 1;
                out.port(LATE).push_row_from(row, t);
            }
        }
        if let WindowState::Session(st) = &mut self.state {
            self.fired_count += st.flush(&self.layout, out);
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) {
        let prev = self.watermark;
        if prev.is_some_and(|p| watermark <= p) {
            return;
        }
        self.fired_count += match &mut self.state {
            WindowState::Fixed(st) => st.advance(&self.layout, prev, watermark, out),
            WindowState::Session(st) => st.advance_to(&self.layout, prev, watermark, out),
        };
        self.watermark = Some(watermark);
    }

    fn snapshot(&mut self) -> Result<StateImage, StateError> {
        self.encode_image()
    }

    fn restore(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
        self.decode_image(snapshot)
    }

    fn restore_rescaled(&mut self, from: &crate::dataflow::Rescale<'_>) -> Result<(), StateError> {
        self.decode_rescaled(from)
    }
}
