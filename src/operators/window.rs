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

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::dataflow::{LATE_PORT, MAIN_PORT, Operator, Output, PortSpec};
use crate::error::StateError;
use crate::state::StateImage;
use crate::types::{Batch, DataType, EventTime, Field, Schema, SchemaRef, Value};

pub mod config;

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
const SNAPSHOT_VERSION: u8 = 1;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;
type FastSet<T> = HashSet<T, ahash::RandomState>;

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

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregateFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
}

impl AggregateFn {
    /// All function names, for error messages and `--help`.
    pub const NAMES: &'static [&'static str] =
        &["count", "sum", "min", "max", "avg", "count_distinct"];

    pub fn parse(name: &str) -> Option<AggregateFn> {
        Some(match name {
            "count" => AggregateFn::Count,
            "sum" => AggregateFn::Sum,
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            "avg" => AggregateFn::Avg,
            "count_distinct" => AggregateFn::CountDistinct,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            AggregateFn::Count => "count",
            AggregateFn::Sum => "sum",
            AggregateFn::Min => "min",
            AggregateFn::Max => "max",
            AggregateFn::Avg => "avg",
            AggregateFn::CountDistinct => "count_distinct",
        }
    }

    /// The output type for an input field of type `input` (`None`: `count` of rows).
    fn output_type(self, input: Option<DataType>) -> DataType {
        match (self, input) {
            (AggregateFn::Count | AggregateFn::CountDistinct, _) => DataType::Int,
            (AggregateFn::Avg, _) => DataType::Float,
            (_, Some(t)) => t,
            (_, None) => DataType::Null,
        }
    }
}

/// One output aggregate: `name` is its output column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateSpec {
    pub name: String,
    pub function: AggregateFn,
    /// The input field; `None` only for `count`, which then counts rows.
    pub field: Option<String>,
}

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

/// A problem with a `WindowSpec`. `field` is the path of the offending setting relative to the
/// spec (`key[0]`, `kind.slide`, `allowed_lateness`, `aggregates[1].field`), so the caller can
/// point at the line of the pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// How to read and aggregate one output column.
#[derive(Clone, Copy, Debug)]
struct AggPlan {
    function: AggregateFn,
    /// Input column; `None` for `count` of rows.
    field: Option<usize>,
    input: DataType,
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

fn cmp_keys(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

// ---------------------------------------------------------------------------------------------
// Keys: stored as `GroupKey`, looked up by a borrowed view of a row's key columns.

/// The values of the key fields of a group, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct GroupKey(Box<[Value]>);

/// A key that can be hashed and compared without being built: a stored `GroupKey` or a view of
/// a row. Both hash their values in order, so a map of `GroupKey` can be probed with a view.
trait KeyLike {
    fn width(&self) -> usize;
    fn value(&self, i: usize) -> &Value;
}

/// The key columns of a row, borrowed.
struct RowKey<'a> {
    row: &'a [Value],
    columns: &'a [usize],
}

impl KeyLike for RowKey<'_> {
    fn width(&self) -> usize {
        self.columns.len()
    }

    fn value(&self, i: usize) -> &Value {
        &self.row[self.columns[i]]
    }
}

impl KeyLike for GroupKey {
    fn width(&self) -> usize {
        self.0.len()
    }

    fn value(&self, i: usize) -> &Value {
        &self.0[i]
    }
}

impl Hash for dyn KeyLike + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for i in 0..self.width() {
            self.value(i).hash(state);
        }
    }
}

impl PartialEq for dyn KeyLike + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.width() == other.width() && (0..self.width()).all(|i| self.value(i) == other.value(i))
    }
}

impl Eq for dyn KeyLike + '_ {}

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyLike).hash(state);
    }
}

impl<'a> Borrow<dyn KeyLike + 'a> for GroupKey {
    fn borrow(&self) -> &(dyn KeyLike + 'a) {
        self
    }
}

impl GroupKey {
    fn of(key: &RowKey<'_>) -> GroupKey {
        GroupKey(key.columns.iter().map(|&c| key.row[c].clone()).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Accumulators.

/// The running state of one aggregate of one (key, window).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Acc {
    /// `count`: rows, or non-null values of the field.
    Count(i64),
    /// `sum`/`avg` of an int field.
    Int {
        sum: i128,
        n: u64,
    },
    /// `sum`/`avg` of a float field.
    Float {
        sum: f64,
        n: u64,
    },
    /// `sum`/`avg` of a decimal field.
    Decimal {
        sum: Decimal,
        n: u64,
    },
    Min(Value),
    Max(Value),
    Distinct(FastSet<Value>),
}

impl AggPlan {
    fn new_acc(&self) -> Acc {
        match (self.function, self.input) {
            (AggregateFn::Count, _) => Acc::Count(0),
            (AggregateFn::Sum | AggregateFn::Avg, DataType::Float) => Acc::Float { sum: 0.0, n: 0 },
            (AggregateFn::Sum | AggregateFn::Avg, DataType::Decimal) => Acc::Decimal {
                sum: Decimal::ZERO,
                n: 0,
            },
            (AggregateFn::Sum | AggregateFn::Avg, _) => Acc::Int { sum: 0, n: 0 },
            (AggregateFn::Min, _) => Acc::Min(Value::Null),
            (AggregateFn::Max, _) => Acc::Max(Value::Null),
            (AggregateFn::CountDistinct, _) => Acc::Distinct(FastSet::default()),
        }
    }
}

fn new_accs(plans: &[AggPlan]) -> Box<[Acc]> {
    plans.iter().map(AggPlan::new_acc).collect()
}

fn update_accs(accs: &mut [Acc], plans: &[AggPlan], row: &[Value]) {
    for (acc, plan) in accs.iter_mut().zip(plans) {
        acc.update(plan.field.map(|c| &row[c]));
    }
}

impl Acc {
    /// Adds one row's value (`None`: the aggregate reads no field, i.e. `count` of rows).
    #[inline]
    fn update(&mut self, v: Option<&Value>) {
        let Some(v) = v else {
            if let Acc::Count(c) = self {
                *c += 1;
            }
            return;
        };
        if v.is_null() {
            return;
        }
        match self {
            Acc::Count(c) => *c += 1,
            Acc::Int { sum, n } => {
                if let Value::Int(x) = v {
                    *sum = sum.saturating_add(*x as i128);
                    *n += 1;
                }
            }
            Acc::Float { sum, n } => {
                let x = match v {
                    Value::Float(x) => *x,
                    Value::Int(x) => *x as f64,
                    _ => return,
                };
                *sum += x;
                *n += 1;
            }
            Acc::Decimal { sum, n } => {
                let x = match v {
                    Value::Decimal(x) => *x,
                    Value::Int(x) => Decimal::from(*x),
                    _ => return,
                };
                *sum = sum.saturating_add(x);
                *n += 1;
            }
            Acc::Min(m) => {
                if m.is_null() || v.total_cmp(m) == Ordering::Less {
                    *m = v.clone();
                }
            }
            Acc::Max(m) => {
                if m.is_null() || v.total_cmp(m) == Ordering::Greater {
                    *m = v.clone();
                }
            }
            Acc::Distinct(set) => {
                if !set.contains(v) {
                    set.insert(v.clone());
                }
            }
        }
    }

    /// Folds another accumulator of the same aggregate into this one (sessions merging).
    fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Int { sum, n }, Acc::Int { sum: s, n: m }) => {
                *sum = sum.saturating_add(s);
                *n += m;
            }
            (Acc::Float { sum, n }, Acc::Float { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            (Acc::Decimal { sum, n }, Acc::Decimal { sum: s, n: m }) => {
                *sum = sum.saturating_add(s);
                *n += m;
            }
            (Acc::Min(a), Acc::Min(b)) => {
                if !b.is_null() && (a.is_null() || b.total_cmp(a) == Ordering::Less) {
                    *a = b;
                }
            }
            (Acc::Max(a), Acc::Max(b)) => {
                if !b.is_null() && (a.is_null() || b.total_cmp(a) == Ordering::Greater) {
                    *a = b;
                }
            }
            (Acc::Distinct(a), Acc::Distinct(mut b)) => {
                if a.len() < b.len() {
                    std::mem::swap(a, &mut b);
                }
                a.extend(b);
            }
            (a, b) => unreachable!("accumulators of one aggregate differ: {a:?} and {b:?}"),
        }
    }

    /// The aggregate's current value.
    fn finish(&self, function: AggregateFn) -> Value {
        let avg = function == AggregateFn::Avg;
        match self {
            Acc::Count(c) => Value::Int(*c),
            Acc::Int { n: 0, .. } | Acc::Float { n: 0, .. } | Acc::Decimal { n: 0, .. } => {
                Value::Null
            }
            Acc::Int { sum, n } if avg => Value::Float(*sum as f64 / *n as f64),
            Acc::Int { sum, .. } => Value::Int(clamp_i64(*sum)),
            Acc::Float { sum, n } if avg => Value::Float(*sum / *n as f64),
            Acc::Float { sum, .. } => Value::Float(*sum),
            Acc::Decimal { sum, n } if avg => Value::Float(
                sum.checked_div(Decimal::from(*n))
                    .and_then(|q| q.to_f64())
                    .unwrap_or_else(|| sum.to_f64().unwrap_or(f64::NAN) / *n as f64),
            ),
            Acc::Decimal { sum, .. } => Value::Decimal(*sum),
            Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Distinct(set) => Value::Int(set.len() as i64),
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Tumbling and sliding windows.

/// One (key, window) of a tumbling or sliding window.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Slot {
    accs: Box<[Acc]>,
    /// Revision of the last row emitted, `None` before the first.
    emitted: Option<u32>,
    /// Updated in the current `process` call while due: re-emit at its end.
    #[serde(skip)]
    dirty: bool,
}

type Groups = FastMap<GroupKey, Slot>;

#[derive(Debug)]
struct FixedState {
    size: i64,
    slide: i64,
    /// Windows by start (every window is `[start, start + size)`).
    panes: BTreeMap<EventTime, Groups>,
    /// Slots updated by the current `process` call in windows already due.
    dirty: Vec<(EventTime, GroupKey)>,
}

impl FixedState {
    fn new(size: i64, slide: i64) -> FixedState {
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
    fn add(&mut self, layout: &Layout, w: Option<EventTime>, row: &[Value], t: EventTime) -> bool {
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
    fn flush(&mut self, layout: &Layout, out: &mut Output) -> u64 {
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
    fn advance(
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

// ---------------------------------------------------------------------------------------------
// Session windows.

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
struct KeySessions {
    key: GroupKey,
    sessions: Vec<Session>,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug)]
struct SessionState {
    gap: i64,
    ids: FastMap<GroupKey, u32>,
    /// By key id; `None` for a free id.
    keys: Vec<Option<KeySessions>>,
    free: Vec<u32>,
    /// Every session, by end: what to fire and what to drop as the watermark moves.
    by_end: BTreeSet<(EventTime, u32)>,
    /// Keys with a dirty session in the current `process` call.
    dirty: Vec<u32>,
    /// (start, end, key id) of emitted sessions that vanished in the current `process` call.
    retracted: Vec<(EventTime, EventTime, u32)>,
}

impl SessionState {
    fn new(gap: i64) -> SessionState {
        SessionState {
            gap,
            ids: FastMap::default(),
            keys: Vec::new(),
            free: Vec::new(),
            by_end: BTreeSet::new(),
            dirty: Vec::new(),
            retracted: Vec::new(),
        }
    }

    fn from_keys(gap: i64, keys: Vec<KeySessions>) -> SessionState {
        let mut st = SessionState::new(gap);
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
    fn add(&mut self, layout: &Layout, w: Option<EventTime>, row: &[Value], t: EventTime) -> bool {
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
    fn flush(&mut self, layout: &Layout, out: &mut Output) -> u64 {
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

#[derive(Debug)]
enum WindowState {
    Fixed(FixedState),
    Session(SessionState),
}

// ---------------------------------------------------------------------------------------------
// Snapshots: written from borrowed state, read into owned state; same field order.

#[derive(Serialize)]
struct ImageOut<'a> {
    version: u8,
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
    Fixed(&'a BTreeMap<EventTime, Groups>),
    Session(LiveKeys<'a>),
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
    Fixed(BTreeMap<EventTime, Groups>),
    Session(Vec<KeySessions>),
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
        for (row, t) in batch.rows() {
            let accepted = match &mut self.state {
                WindowState::Fixed(st) => st.add(&self.layout, w, row, t),
                WindowState::Session(st) => st.add(&self.layout, w, row, t),
            };
            if !accepted {
                self.late_count += 1;
                out.port(LATE).push_row_from(row, t);
            }
        }
        self.fired_count += match &mut self.state {
            WindowState::Fixed(st) => st.flush(&self.layout, out),
            WindowState::Session(st) => st.flush(&self.layout, out),
        };
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) {
        let prev = self.watermark;
        if prev.is_some_and(|p| watermark <= p) {
            return;
        }
        self.fired_count += match &mut self.state {
            WindowState::Fixed(st) => st.advance(&self.layout, prev, watermark, out),
            WindowState::Session(st) => st.advance(&self.layout, prev, watermark, out),
        };
        self.watermark = Some(watermark);
    }

    fn snapshot(&mut self) -> Result<StateImage, StateError> {
        let image = ImageOut {
            version: SNAPSHOT_VERSION,
            key: &self.spec.key,
            kind: self.spec.kind,
            aggregates: &self.spec.aggregates,
            watermark: self.watermark,
            late_count: self.late_count,
            fired_count: self.fired_count,
            state: match &self.state {
                WindowState::Fixed(st) => StateOut::Fixed(&st.panes),
                WindowState::Session(st) => StateOut::Session(LiveKeys(&st.keys)),
            },
        };
        postcard::to_stdvec(&image)
            .map(StateImage::inline)
            .map_err(|e| StateError::encode(&self.name, e))
    }

    fn restore(&mut self, snapshot: &StateImage) -> Result<(), StateError> {
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
        self.state = match (image.state, &self.state) {
            (StateIn::Fixed(panes), WindowState::Fixed(st)) => {
                let mut fresh = FixedState::new(st.size, st.slide);
                fresh.panes = panes;
                WindowState::Fixed(fresh)
            }
            (StateIn::Session(keys), WindowState::Session(st)) => {
                WindowState::Session(SessionState::from_keys(st.gap, keys))
            }
            _ => return Err(fail("the snapshot holds another kind of window".into())),
        };
        debug_assert_eq!(image.version, SNAPSHOT_VERSION);
        self.watermark = image.watermark;
        self.late_count = image.late_count;
        self.fired_count = image.fired_count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{EmittedRow, Harness};
    use crate::time::watermark::END_OF_TIME;
    use proptest::prelude::*;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user", DataType::String),
            Field::new("amount", DataType::Int),
        ]))
    }

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    fn i(v: i64) -> Value {
        Value::Int(v)
    }

    fn ts(ms: i64) -> Value {
        Value::Timestamp(ms * 1000)
    }

    fn batch(rows: &[(Value, Value, EventTime)]) -> Batch {
        let mut b = Batch::new(input());
        for (user, amount, t) in rows {
            b.push_row([user.clone(), amount.clone()], *t);
        }
        b
    }

    fn agg(name: &str, function: AggregateFn, field: Option<&str>) -> AggregateSpec {
        AggregateSpec {
            name: name.into(),
            function,
            field: field.map(Into::into),
        }
    }

    /// rows, n, total, lo, hi, mean, distinct: every function over `amount`.
    fn all_aggs() -> Vec<AggregateSpec> {
        use AggregateFn::*;
        vec![
            agg("rows", Count, None),
            agg("n", Count, Some("amount")),
            agg("total", Sum, Some("amount")),
            agg("lo", Min, Some("amount")),
            agg("hi", Max, Some("amount")),
            agg("mean", Avg, Some("amount")),
            agg("distinct", CountDistinct, Some("amount")),
        ]
    }

    /// rows and total only.
    fn small_aggs() -> Vec<AggregateSpec> {
        vec![
            agg("rows", AggregateFn::Count, None),
            agg("total", AggregateFn::Sum, Some("amount")),
        ]
    }

    fn spec(kind: WindowKind, lateness_ms: u64, aggregates: Vec<AggregateSpec>) -> WindowSpec {
        WindowSpec {
            key: vec!["user".into()],
            kind,
            allowed_lateness: Duration::from_millis(lateness_ms),
            aggregates,
        }
    }

    fn tumbling(size_ms: u64) -> WindowKind {
        WindowKind::Tumbling {
            size: Duration::from_millis(size_ms),
        }
    }

    fn sliding(size_ms: u64, slide_ms: u64) -> WindowKind {
        WindowKind::Sliding {
            size: Duration::from_millis(size_ms),
            slide: Duration::from_millis(slide_ms),
        }
    }

    fn session(gap_ms: u64) -> WindowKind {
        WindowKind::Session {
            gap: Duration::from_millis(gap_ms),
        }
    }

    fn harness(spec: &WindowSpec) -> Harness<WindowOperator> {
        Harness::new(WindowOperator::new("w", spec.clone(), input()).unwrap(), 1)
    }

    /// An expected `main` row: key, bounds, aggregates, revision; event time `end - 1`.
    fn res(key: Value, start: i64, end: i64, aggs: &[Value], revision: i64) -> EmittedRow {
        let mut row = vec![key, ts(start), ts(end)];
        row.extend_from_slice(aggs);
        row.push(i(revision));
        (row, end - 1)
    }

    fn retraction(key: Value, start: i64, end: i64, n_aggs: usize) -> EmittedRow {
        res(key, start, end, &vec![Value::Null; n_aggs], RETRACTED)
    }

    #[test]
    fn tumbling_computes_every_aggregate() {
        let mut h = harness(&spec(tumbling(10_000), 0, all_aggs()));
        h.data(
            0,
            batch(&[
                (s("a"), i(1), 1000),
                (s("a"), i(5), 2000),
                (s("b"), i(3), 3000),
                (s("a"), Value::Null, 4000),
                (Value::Null, i(2), 5000),
                (s("c"), Value::Null, 6000),
                (s("a"), i(5), 12_000),
                (s("b"), i(7), 15_000),
                (s("a"), i(1), 9999),
            ]),
        );
        h.watermark_all(9998);
        assert!(h.take_all().is_empty(), "nothing is due before end - 1");
        h.watermark_all(9999);
        let null = Value::Null;
        assert_eq!(
            h.take("main"),
            vec![
                // A null key is a group; nulls sort first.
                res(
                    null.clone(),
                    0,
                    10_000,
                    &[i(1), i(1), i(2), i(2), i(2), 2.0.into(), i(1)],
                    0
                ),
                res(
                    s("a"),
                    0,
                    10_000,
                    &[i(4), i(3), i(7), i(1), i(5), (7.0 / 3.0).into(), i(2)],
                    0
                ),
                res(
                    s("b"),
                    0,
                    10_000,
                    &[i(1), i(1), i(3), i(3), i(3), 3.0.into(), i(1)],
                    0
                ),
                // Only nulls: count of rows 1, count of values 0, the rest null.
                res(
                    s("c"),
                    0,
                    10_000,
                    &[
                        i(1),
                        i(0),
                        null.clone(),
                        null.clone(),
                        null.clone(),
                        null,
                        i(0)
                    ],
                    0
                ),
            ]
        );
        h.watermark_all(19_999);
        assert_eq!(
            h.take("main"),
            vec![
                res(
                    s("a"),
                    10_000,
                    20_000,
                    &[i(1), i(1), i(5), i(5), i(5), 5.0.into(), i(1)],
                    0
                ),
                res(
                    s("b"),
                    10_000,
                    20_000,
                    &[i(1), i(1), i(7), i(7), i(7), 7.0.into(), i(1)],
                    0
                ),
            ]
        );
        assert!(h.take("late").is_empty());
        assert_eq!(h.operator().fired_count(), 6);
        assert_eq!(h.operator().late_count(), 0);
    }

    #[test]
    fn sums_keep_the_field_type_and_never_wrap() {
        use AggregateFn::*;
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int),
            Field::new("f", DataType::Float),
            Field::new("d", DataType::Decimal),
            Field::new("s", DataType::String),
        ]));
        let spec = WindowSpec {
            key: vec![],
            kind: tumbling(10),
            allowed_lateness: Duration::ZERO,
            aggregates: vec![
                agg("si", Sum, Some("i")),
                agg("ai", Avg, Some("i")),
                agg("sf", Sum, Some("f")),
                agg("sd", Sum, Some("d")),
                agg("ad", Avg, Some("d")),
                agg("mins", Min, Some("s")),
                agg("maxs", Max, Some("s")),
            ],
        };
        let op = WindowOperator::new("w", spec, schema.clone()).unwrap();
        let types: Vec<_> = op.ports()[0]
            .schema
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.data_type))
            .collect();
        use DataType::*;
        let expected_types = [
            ("window_start", Timestamp),
            ("window_end", Timestamp),
            ("si", Int),
            ("ai", Float),
            ("sf", Float),
            ("sd", Decimal),
            ("ad", Float),
            ("mins", String),
            ("maxs", String),
            ("revision", Int),
        ];
        let expected_types: Vec<_> = expected_types
            .iter()
            .map(|(n, t)| (n.to_string(), *t))
            .collect();
        assert_eq!(types, expected_types);
        assert_eq!(op.ports()[1].schema, schema);

        let mut h = Harness::new(op, 1);
        let mut b = Batch::new(schema);
        let dec = |s: &str| Value::Decimal(s.parse().unwrap());
        b.push_row([i(i64::MAX), 0.5.into(), dec("1.25"), s("pear")], 1);
        b.push_row([i(i64::MAX), 0.25.into(), dec("2.5"), s("apple")], 2);
        b.push_row([Value::Null, Value::Null, Value::Null, Value::Null], 3);
        h.data(0, b);
        h.watermark_all(9);
        let (row, t) = h.take("main").pop().unwrap();
        assert_eq!(t, 9);
        assert_eq!(
            row,
            vec![
                ts(0),
                ts(10),
                i(i64::MAX), // saturated, not wrapped
                Value::Float(i64::MAX as f64),
                0.75.into(),
                dec("3.75"),
                1.875.into(),
                s("apple"),
                s("pear"),
                i(0),
            ]
        );
    }

    #[test]
    fn sliding_windows_overlap() {
        let mut h = harness(&spec(sliding(10_000, 5000), 0, small_aggs()));
        h.data(
            0,
            batch(&[
                (s("a"), i(1), 1000),
                (s("a"), i(2), 6000),
                (s("b"), i(4), 7000),
                (s("a"), i(8), 12_000),
            ]),
        );
        h.watermark_all(4999);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), -5000, 5000, &[i(1), i(1)], 0)]
        );
        h.watermark_all(30_000);
        assert_eq!(
            h.take("main"),
            vec![
                res(s("a"), 0, 10_000, &[i(2), i(3)], 0),
                res(s("b"), 0, 10_000, &[i(1), i(4)], 0),
                res(s("a"), 5000, 15_000, &[i(2), i(10)], 0),
                res(s("b"), 5000, 15_000, &[i(1), i(4)], 0),
                res(s("a"), 10_000, 20_000, &[i(1), i(8)], 0),
            ]
        );
    }

    #[test]
    fn sliding_size_need_not_be_a_multiple_of_slide() {
        let mut h = harness(&spec(sliding(10, 4), 0, small_aggs()));
        h.data(0, batch(&[(s("a"), i(1), 9)]));
        h.watermark_all(END_OF_TIME);
        assert_eq!(
            h.take("main"),
            vec![
                res(s("a"), 0, 10, &[i(1), i(1)], 0),
                res(s("a"), 4, 14, &[i(1), i(1)], 0),
                res(s("a"), 8, 18, &[i(1), i(1)], 0),
            ]
        );
    }

    #[test]
    fn sessions_merge_when_bridged_or_touching() {
        let mut h = harness(&spec(session(5000), 0, small_aggs()));
        h.data(
            0,
            batch(&[
                (s("a"), i(1), 1000),
                (s("b"), i(10), 2000),
                (s("a"), i(2), 10_000),
            ]),
        );
        h.watermark_all(4000);
        assert!(h.take_all().is_empty());
        // [5500, 10500) overlaps [1000, 6000) and [10000, 15000): one session.
        h.data(0, batch(&[(s("a"), i(4), 5500)]));
        assert!(h.take_all().is_empty());
        h.watermark_all(6999);
        assert_eq!(
            h.take("main"),
            vec![res(s("b"), 2000, 7000, &[i(1), i(10)], 0)]
        );
        h.watermark_all(14_999);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 1000, 15_000, &[i(3), i(7)], 0)]
        );
        // Sessions that only touch (end == start) merge too.
        h.data(0, batch(&[(s("a"), i(1), 20_000), (s("a"), i(1), 25_000)]));
        h.watermark_all(40_000);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 20_000, 30_000, &[i(2), i(2)], 0)]
        );
        assert_eq!(h.operator().fired_count(), 3);
    }

    #[test]
    fn late_rows_within_lateness_update_and_beyond_go_late() {
        let mut h = harness(&spec(tumbling(10_000), 5000, small_aggs()));
        h.data(0, batch(&[(s("a"), i(1), 1000)]));
        h.watermark_all(9999);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 0, 10_000, &[i(1), i(1)], 0)]
        );
        // Two late rows per key give one row each; a new key in a fired window starts at 0.
        h.data(
            0,
            batch(&[
                (s("a"), i(2), 2000),
                (s("b"), i(4), 4000),
                (s("a"), i(3), 3000),
                (s("b"), i(1), 4500),
            ]),
        );
        assert_eq!(
            h.take("main"),
            vec![
                res(s("a"), 0, 10_000, &[i(3), i(6)], 1),
                res(s("b"), 0, 10_000, &[i(2), i(5)], 0),
            ]
        );
        h.watermark_all(14_998);
        h.data(0, batch(&[(s("a"), i(5), 5000)]));
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 0, 10_000, &[i(4), i(11)], 2)]
        );
        // end - 1 + lateness = 14999: the window is dropped.
        h.watermark_all(14_999);
        assert!(h.take_all().is_empty());
        h.data(0, batch(&[(s("a"), i(6), 6000), (s("a"), i(7), 16_000)]));
        assert_eq!(h.take("late"), vec![(vec![s("a"), i(6)], 6000)]);
        assert!(h.take("main").is_empty(), "16000's window is not due yet");
        assert_eq!(h.operator().late_count(), 1);
        h.watermark_all(19_999);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 10_000, 20_000, &[i(1), i(7)], 0)]
        );
        assert_eq!(h.operator().fired_count(), 3);
    }

    #[test]
    fn late_rows_retract_sessions_they_change() {
        let mut h = harness(&spec(session(5000), 10_000, small_aggs()));
        h.data(0, batch(&[(s("a"), i(1), 1000), (s("a"), i(2), 7000)]));
        h.watermark_all(12_000);
        assert_eq!(
            h.take("main"),
            vec![
                res(s("a"), 1000, 6000, &[i(1), i(1)], 0),
                res(s("a"), 7000, 12_000, &[i(1), i(2)], 0),
            ]
        );
        // Bridges both fired sessions: both are retracted, the merged one is due at once.
        h.data(0, batch(&[(s("a"), i(4), 5000)]));
        assert_eq!(
            h.take("main"),
            vec![
                retraction(s("a"), 1000, 6000, 2),
                retraction(s("a"), 7000, 12_000, 2),
                res(s("a"), 1000, 12_000, &[i(3), i(7)], 0),
            ]
        );
        // Inside the session, bounds unchanged: a revision.
        h.data(0, batch(&[(s("a"), i(8), 1000)]));
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 1000, 12_000, &[i(4), i(15)], 1)]
        );
        // Extends past the watermark: retracted now, the new session fires when due.
        h.data(0, batch(&[(s("a"), i(16), 11_000)]));
        assert_eq!(h.take("main"), vec![retraction(s("a"), 1000, 12_000, 2)]);
        h.watermark_all(15_999);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 1000, 16_000, &[i(5), i(31)], 0)]
        );
        // Dropped at 15999 + 10000; a row that would have joined it starts a new session.
        h.watermark_all(25_999);
        h.data(0, batch(&[(s("a"), i(32), 14_000), (s("a"), i(64), 2000)]));
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 14_000, 19_000, &[i(1), i(32)], 0)]
        );
        assert_eq!(h.take("late"), vec![(vec![s("a"), i(64)], 2000)]);
        assert_eq!(h.operator().late_count(), 1);
    }

    #[test]
    fn watermark_going_back_is_ignored() {
        // A restarted runtime may re-announce an older watermark; it must not reopen windows.
        let mut op =
            WindowOperator::new("w", spec(tumbling(10), 0, small_aggs()), input()).unwrap();
        let mut out = Output::new(op.ports());
        op.on_watermark(100, &mut out);
        op.on_watermark(50, &mut out);
        assert_eq!(op.watermark(), Some(100));
        op.process(0, batch(&[(s("a"), i(1), 60)]), &mut out);
        let drained: Vec<_> = out.drain().map(|(port, b)| (port, b.len())).collect();
        assert_eq!(drained, vec![(LATE, 1)]);
        assert_eq!(op.late_count(), 1);
    }

    #[test]
    fn spec_errors_name_the_field() {
        use AggregateFn::*;
        let check = |spec: WindowSpec, field: &str, needle: &str| {
            let e = WindowOperator::new("w", spec, input()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(needle), "{e}");
        };
        let base = || spec(tumbling(10), 0, small_aggs());
        check(
            WindowSpec {
                key: vec!["nope".into()],
                ..base()
            },
            "key[0]",
            "unknown field `nope`",
        );
        check(
            WindowSpec {
                key: vec!["user".into(), "user".into()],
                ..base()
            },
            "key[1]",
            "already part of the key",
        );
        check(
            WindowSpec {
                kind: tumbling(0),
                ..base()
            },
            "kind.size",
            "greater than zero",
        );
        check(
            WindowSpec {
                kind: WindowKind::Tumbling {
                    size: Duration::from_micros(1500),
                },
                ..base()
            },
            "kind.size",
            "whole number of milliseconds",
        );
        check(
            WindowSpec {
                kind: sliding(10, 20),
                ..base()
            },
            "kind.slide",
            "must not exceed",
        );
        check(
            WindowSpec {
                kind: session(0),
                ..base()
            },
            "kind.gap",
            "greater than zero",
        );
        let with = |aggs: Vec<AggregateSpec>| WindowSpec {
            aggregates: aggs,
            ..base()
        };
        check(
            with(vec![agg("x", Sum, None)]),
            "aggregates[0].field",
            "needs a field",
        );
        check(
            with(vec![agg("x", Sum, Some("user"))]),
            "aggregates[0].field",
            "not string",
        );
        check(
            with(vec![agg("x", Avg, Some("nope"))]),
            "aggregates[0].field",
            "unknown field",
        );
        check(
            with(vec![agg("x", Count, None), agg("x", Max, Some("user"))]),
            "aggregates[1].name",
            "earlier aggregate",
        );
        for name in ["user", "window_start", "window_end", "revision"] {
            check(
                with(vec![agg(name, Count, None)]),
                "aggregates[0].name",
                "already an output",
            );
        }
        // min/max and count_distinct take any type; count needs no field.
        let ok = with(vec![
            agg("a", Min, Some("user")),
            agg("b", CountDistinct, Some("user")),
            agg("c", Count, None),
        ]);
        assert!(WindowOperator::new("w", ok, input()).is_ok());
        for f in AggregateFn::NAMES {
            assert_eq!(AggregateFn::parse(f).unwrap().name(), *f);
        }
        assert_eq!(AggregateFn::parse("mean"), None);
    }

    #[test]
    fn restore_rejects_a_snapshot_of_another_spec() {
        let mut h = harness(&spec(tumbling(10), 0, small_aggs()));
        h.data(0, batch(&[(s("a"), i(1), 1)]));
        let snap = h.barrier();
        let mut other =
            WindowOperator::new("w", spec(tumbling(20), 0, small_aggs()), input()).unwrap();
        assert!(matches!(
            other.restore(&snap),
            Err(StateError::Decode { .. })
        ));
        let mut same =
            WindowOperator::new("w", spec(tumbling(10), 0, small_aggs()), input()).unwrap();
        same.restore(&snap).unwrap();
        assert!(
            same.restore(&StateImage::inline(
                snap.bytes[..snap.bytes.len() / 2].to_vec()
            ))
            .is_err()
        );
    }

    // -----------------------------------------------------------------------------------------
    // Scripts: driving an operator straight through, or with a checkpoint and restore.

    #[derive(Clone, Debug)]
    enum Step {
        Data(Vec<(Value, Value, EventTime)>),
        Watermark(EventTime),
    }

    #[derive(Debug, PartialEq)]
    struct RunOutput {
        main: Vec<EmittedRow>,
        late: Vec<EmittedRow>,
        late_count: u64,
        fired_count: u64,
    }

    /// Runs `steps`; with `restore_after: Some(i)`, snapshots after step `i` and continues on a
    /// fresh operator restored from it. Checks that no call emits two rows for one result.
    fn run(spec: &WindowSpec, steps: &[Step], restore_after: Option<usize>) -> RunOutput {
        let mut h = harness(spec);
        let (mut main, mut late) = (Vec::new(), Vec::new());
        for (n, step) in steps.iter().enumerate() {
            match step {
                Step::Data(rows) => h.data(0, batch(rows)),
                Step::Watermark(t) => h.watermark_all(*t),
            }
            let rows = h.take("main");
            let ids: HashSet<&[Value]> = rows.iter().map(|(r, _)| &r[..3]).collect();
            assert_eq!(
                ids.len(),
                rows.len(),
                "one row per result per call: {rows:?}"
            );
            main.extend(rows);
            late.extend(h.take("late"));
            if restore_after == Some(n) {
                let snap = h.barrier();
                let fresh = WindowOperator::new("w", spec.clone(), input()).unwrap();
                h = Harness::restore(fresh, &snap, 1);
            }
        }
        RunOutput {
            main,
            late,
            late_count: h.operator().late_count(),
            fired_count: h.operator().fired_count(),
        }
    }

    /// A hand-written script with on-time rows, late rows within lateness, rows beyond it,
    /// merges and several keys.
    fn script() -> Vec<Step> {
        use Step::*;
        vec![
            Data(vec![
                (s("a"), i(1), 1000),
                (s("b"), i(2), 2500),
                (s("a"), i(3), 4000),
            ]),
            Watermark(3000),
            Data(vec![
                (s("a"), i(4), 9000),
                (s("b"), Value::Null, 9500),
                (s("c"), i(5), 11_000),
            ]),
            Watermark(10_000),
            Data(vec![
                (s("a"), i(6), 6000),
                (s("b"), i(7), 3000),
                (s("c"), i(8), 500),
            ]),
            Watermark(16_000),
            Data(vec![
                (s("a"), i(9), 14_500),
                (s("a"), i(10), 21_000),
                (s("b"), i(11), 1000),
            ]),
            Watermark(22_000),
            Data(vec![(s("c"), i(12), 17_000), (s("a"), i(13), 30_000)]),
            Watermark(END_OF_TIME),
        ]
    }

    fn check_restore_everywhere(spec: &WindowSpec) {
        let steps = script();
        let straight = run(spec, &steps, None);
        assert!(straight.late_count > 0, "the script exercises late rows");
        assert!(
            straight.main.iter().any(|(r, _)| r.last() != Some(&i(0))),
            "and revisions"
        );
        for n in 0..steps.len() {
            assert_eq!(
                run(spec, &steps, Some(n)),
                straight,
                "restored after step {n}"
            );
        }
    }

    #[test]
    fn tumbling_restore_continues_exactly() {
        check_restore_everywhere(&spec(tumbling(5000), 3000, all_aggs()));
    }

    #[test]
    fn sliding_restore_continues_exactly() {
        check_restore_everywhere(&spec(sliding(6000, 2000), 3000, all_aggs()));
    }

    #[test]
    fn session_restore_continues_exactly() {
        let spec = spec(session(3000), 8000, all_aggs());
        check_restore_everywhere(&spec);
        let straight = run(&spec, &script(), None);
        assert!(
            straight
                .main
                .iter()
                .any(|(r, _)| r.last() == Some(&i(RETRACTED)))
        );
    }

    // -----------------------------------------------------------------------------------------
    // The oracle: a naive recomputation of the final result of every (key, window).

    /// A result's identity: key, window start, window end (milliseconds).
    type ResultId = (Vec<Value>, EventTime, EventTime);
    type Results = HashMap<ResultId, Vec<Value>>;
    /// An oracle session: start, end, amounts, dropped.
    type OracleSession = (i64, i64, Vec<Value>, bool);

    #[derive(Clone, Copy, Debug)]
    enum Shape {
        Tumbling(i64),
        Sliding(i64, i64),
        Session(i64),
    }

    impl Shape {
        fn kind(self) -> WindowKind {
            let ms = |v: i64| Duration::from_millis(v as u64);
            match self {
                Shape::Tumbling(size) => WindowKind::Tumbling { size: ms(size) },
                Shape::Sliding(size, slide) => WindowKind::Sliding {
                    size: ms(size),
                    slide: ms(slide),
                },
                Shape::Session(gap) => WindowKind::Session { gap: ms(gap) },
            }
        }
    }

    /// The aggregates of `all_aggs` over the `amount` values of a window's rows.
    fn oracle_aggs(values: &[Value]) -> Vec<Value> {
        let ints: Vec<i64> = values.iter().filter_map(Value::as_i64).collect();
        let sum: i64 = ints.iter().sum();
        let distinct: HashSet<i64> = ints.iter().copied().collect();
        let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
        let nonempty = !ints.is_empty();
        vec![
            i(values.len() as i64),
            i(ints.len() as i64),
            or_null(nonempty.then(|| i(sum))),
            or_null(ints.iter().min().map(|&v| i(v))),
            or_null(ints.iter().max().map(|&v| i(v))),
            or_null(nonempty.then(|| Value::Float(sum as f64 / ints.len() as f64))),
            i(distinct.len() as i64),
        ]
    }

    /// What every (key, window) must finally hold, and the rows that must go to `late`.
    fn oracle(shape: Shape, lateness: i64, steps: &[Step]) -> (Results, Vec<EmittedRow>) {
        let mut w: Option<EventTime> = None;
        let expired = |end: i64, w: Option<i64>| w.is_some_and(|w| end - 1 + lateness <= w);
        let mut members: HashMap<ResultId, Vec<Value>> = HashMap::new();
        let mut late = Vec::new();
        // Sessions per key: (start, end, amounts, dropped).
        let mut sessions: HashMap<Value, Vec<OracleSession>> = HashMap::new();
        for step in steps {
            let rows = match step {
                Step::Watermark(t) => {
                    w = Some(*t);
                    for list in sessions.values_mut() {
                        for s in list.iter_mut() {
                            s.3 |= expired(s.1, w);
                        }
                    }
                    continue;
                }
                Step::Data(rows) => rows,
            };
            for (k, v, t) in rows.iter().cloned() {
                let accepted = match shape {
                    Shape::Tumbling(size) | Shape::Sliding(size, _) => {
                        let slide = match shape {
                            Shape::Sliding(_, slide) => slide,
                            _ => size,
                        };
                        let mut any = false;
                        for j in (t - size).div_euclid(slide) - 1..=t.div_euclid(slide) + 1 {
                            let (start, end) = (j * slide, j * slide + size);
                            if start <= t && t < end && !expired(end, w) {
                                members
                                    .entry((vec![k.clone()], start, end))
                                    .or_default()
                                    .push(v.clone());
                                any = true;
                            }
                        }
                        any
                    }
                    Shape::Session(gap) => {
                        let list = sessions.entry(k.clone()).or_default();
                        let mut new = (t, t + gap, vec![v.clone()], false);
                        let touches =
                            |s: &OracleSession, n: &OracleSession| !s.3 && s.0 <= n.1 && n.0 <= s.1;
                        if !list.iter().any(|s| touches(s, &new)) && expired(new.1, w) {
                            false
                        } else {
                            // Merge until nothing live touches the new session.
                            while let Some(pos) = list.iter().position(|s| touches(s, &new)) {
                                let s = list.remove(pos);
                                new.0 = new.0.min(s.0);
                                new.1 = new.1.max(s.1);
                                new.2.extend(s.2);
                            }
                            list.push(new);
                            true
                        }
                    }
                };
                if !accepted {
                    late.push((vec![k, v], t));
                }
            }
        }
        for (k, list) in sessions {
            for (start, end, values, _) in list {
                members.insert((vec![k.clone()], start, end), values);
            }
        }
        let results = members
            .into_iter()
            .map(|(id, values)| (id, oracle_aggs(&values)))
            .collect();
        (results, late)
    }

    /// Folds `main` into the last result per (key, window), checking the revision protocol.
    fn final_results(main: &[EmittedRow]) -> Results {
        let mut results: HashMap<ResultId, (i64, Vec<Value>)> = HashMap::new();
        let ms = |v: &Value| match v {
            Value::Timestamp(us) => us / 1000,
            other => panic!("not a timestamp: {other:?}"),
        };
        for (row, t) in main {
            let (start, end) = (ms(&row[1]), ms(&row[2]));
            assert_eq!(*t, end - 1, "a result's event time is end - 1");
            let id = (row[..1].to_vec(), start, end);
            let aggs = row[3..row.len() - 1].to_vec();
            match row.last().and_then(Value::as_i64).unwrap() {
                RETRACTED => {
                    assert!(aggs.iter().all(Value::is_null));
                    assert!(
                        results.remove(&id).is_some(),
                        "retracted {id:?} was not emitted"
                    );
                }
                0 => assert!(
                    results.insert(id.clone(), (0, aggs)).is_none(),
                    "{id:?} fired twice"
                ),
                r => {
                    let last = results.get_mut(&id).expect("a revision follows a result");
                    assert_eq!(last.0 + 1, r, "revisions of {id:?} go up by one");
                    *last = (r, aggs);
                }
            }
        }
        results
            .into_iter()
            .map(|(id, (_, aggs))| (id, aggs))
            .collect()
    }

    fn check_against_oracle(shape: Shape, lateness: i64, steps: &[Step]) {
        let spec = spec(shape.kind(), lateness as u64, all_aggs());
        let got = run(&spec, steps, None);
        let (expected, expected_late) = oracle(shape, lateness, steps);
        assert_eq!(got.late, expected_late);
        assert_eq!(got.late_count, expected_late.len() as u64);
        assert_eq!(final_results(&got.main), expected);
    }

    /// Rows with few keys (null among them) and nullable amounts, times drifting forward with
    /// random out-of-orderness, in random batches, with watermarks trailing the latest time by
    /// a random lag (monotone, so rows further behind than the lag arrive late), ending with
    /// the end-of-time watermark.
    fn arb_script() -> impl Strategy<Value = Vec<Step>> {
        let event = (
            0..4u8,
            prop::option::of(-5i64..5),
            0i64..8,
            0i64..30,
            0u8..10,
            0i64..15,
        );
        prop::collection::vec(event, 1..60).prop_map(|events| {
            let keys = [s("a"), s("b"), s("c"), Value::Null];
            let (mut steps, mut rows) = (Vec::new(), Vec::new());
            let (mut now, mut wm) = (0i64, None::<i64>);
            for (k, v, advance, jitter, action, lag) in events {
                now += advance;
                rows.push((
                    keys[k as usize].clone(),
                    v.map_or(Value::Null, Value::Int),
                    now - jitter,
                ));
                if action < 5 {
                    steps.push(Step::Data(std::mem::take(&mut rows)));
                }
                if action < 3 && wm.is_none_or(|w| now - lag > w) {
                    wm = Some(now - lag);
                    steps.push(Step::Watermark(now - lag));
                }
            }
            if !rows.is_empty() {
                steps.push(Step::Data(rows));
            }
            steps.push(Step::Watermark(END_OF_TIME));
            steps
        })
    }

    fn arb_shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            (1i64..25).prop_map(Shape::Tumbling),
            (1i64..25)
                .prop_flat_map(|size| (Just(size), 1..=size))
                .prop_map(|(size, slide)| Shape::Sliding(size, slide)),
            (1i64..15).prop_map(Shape::Session),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn tumbling_matches_oracle(size in 1i64..25, lateness in 0i64..20, steps in arb_script()) {
            check_against_oracle(Shape::Tumbling(size), lateness, &steps);
        }

        #[test]
        fn sliding_matches_oracle(
            (size, slide) in (1i64..25).prop_flat_map(|size| (Just(size), 1..=size)),
            lateness in 0i64..20,
            steps in arb_script(),
        ) {
            check_against_oracle(Shape::Sliding(size, slide), lateness, &steps);
        }

        #[test]
        fn sessions_match_oracle(gap in 1i64..15, lateness in 0i64..20, steps in arb_script()) {
            check_against_oracle(Shape::Session(gap), lateness, &steps);
        }

        #[test]
        fn restore_anywhere_matches_uninterrupted(
            shape in arb_shape(),
            lateness in 0i64..20,
            steps in arb_script(),
            cut in any::<prop::sample::Index>(),
        ) {
            let spec = spec(shape.kind(), lateness as u64, all_aggs());
            let straight = run(&spec, &steps, None);
            prop_assert_eq!(run(&spec, &steps, Some(cut.index(steps.len()))), straight);
        }
    }
}
