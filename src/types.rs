//! The data model every operator works on: schemas, typed values, batches of rows with their
//! event times, and the small domain types shared across modules (`EventTime`, `Epoch`).
//!
//! Rows are stored row-major in one `Vec<Value>` per batch; short strings (≤ 24 bytes) live
//! inline in the value, so decoding a typical record allocates nothing per field.
//! This module owns no I/O and no time: it is plain data.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Event time in milliseconds since the Unix epoch (UTC).
pub type EventTime = i64;

/// A checkpoint epoch: barriers carry it, checkpoints are named by it.
pub type Epoch = u64;

/// The type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    String,
    Int,
    Float,
    Bool,
    Decimal,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Days since the Unix epoch.
    Date,
    Bytes,
    /// Any JSON value, kept as its compact text.
    Json,
    Null,
}

impl DataType {
    pub fn name(self) -> &'static str {
        match self {
            DataType::String => "string",
            DataType::Int => "int",
            DataType::Float => "float",
            DataType::Bool => "bool",
            DataType::Decimal => "decimal",
            DataType::Timestamp => "timestamp",
            DataType::Date => "date",
            DataType::Bytes => "bytes",
            DataType::Json => "json",
            DataType::Null => "null",
        }
    }

    /// All type names, for error messages and `--help`.
    pub const NAMES: &'static [&'static str] = &[
        "string",
        "int",
        "float",
        "bool",
        "decimal",
        "timestamp",
        "date",
        "bytes",
        "json",
        "null",
    ];

    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "string" => DataType::String,
            "int" => DataType::Int,
            "float" => DataType::Float,
            "bool" => DataType::Bool,
            "decimal" => DataType::Decimal,
            "timestamp" => DataType::Timestamp,
            "date" => DataType::Date,
            "bytes" => DataType::Bytes,
            "json" => DataType::Json,
            "null" => DataType::Null,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column of a schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: CompactString,
    pub data_type: DataType,
}

impl Field {
    pub fn new(name: &str, data_type: DataType) -> Field {
        Field {
            name: name.into(),
            data_type,
        }
    }
}

/// The columns of a batch, in order. Every column is nullable.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    pub fields: Vec<Field>,
}

pub type SchemaRef = Arc<Schema>;

impl Schema {
    pub fn new(fields: Vec<Field>) -> Schema {
        Schema { fields }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn field(&self, i: usize) -> &Field {
        &self.fields[i]
    }
}

/// One typed value. Strings up to 24 bytes are stored inline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(CompactString),
    Decimal(Decimal),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    Bytes(Box<[u8]>),
    /// Compact JSON text.
    Json(Box<str>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn data_type(&self) -> DataType {
        match self {
            Value::Null => DataType::Null,
            Value::Bool(_) => DataType::Bool,
            Value::Int(_) => DataType::Int,
            Value::Float(_) => DataType::Float,
            Value::Str(_) => DataType::String,
            Value::Decimal(_) => DataType::Decimal,
            Value::Timestamp(_) => DataType::Timestamp,
            Value::Date(_) => DataType::Date,
            Value::Bytes(_) => DataType::Bytes,
            Value::Json(_) => DataType::Json,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A total order across all values: first by type (in declaration order), then by value;
    /// floats use IEEE total order. Used by `min`/`max` and for deterministic output order.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Str(a), Str(b)) => a.cmp(b),
            (Decimal(a), Decimal(b)) => a.cmp(b),
            (Timestamp(a), Timestamp(b)) => a.cmp(b),
            (Date(a), Date(b)) => a.cmp(b),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Json(a), Json(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Str(_) => 4,
            Value::Decimal(_) => 5,
            Value::Timestamp(_) => 6,
            Value::Date(_) => 7,
            Value::Bytes(_) => 8,
            Value::Json(_) => 9,
        }
    }
}

/// Equality is structural; floats compare by bit pattern so that `Value` can be a hash key
/// (a key of `NaN` equals itself, `0.0` and `-0.0` differ).
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Str(a), Str(b)) => a == b,
            (Decimal(a), Decimal(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Json(a), Json(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.rank());
        match self {
            Value::Null => {}
            Value::Bool(v) => v.hash(state),
            Value::Int(v) => v.hash(state),
            Value::Float(v) => v.to_bits().hash(state),
            Value::Str(v) => v.as_str().hash(state),
            Value::Decimal(v) => v.hash(state),
            Value::Timestamp(v) => v.hash(state),
            Value::Date(v) => v.hash(state),
            Value::Bytes(v) => v.hash(state),
            Value::Json(v) => v.hash(state),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.into())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

/// A batch of rows sharing one schema, each with its event time.
///
/// Rows are row-major: row `i` is `values[i * width .. (i + 1) * width]`.
///
/// A row read *behind* its source partition's watermark (its event time below the watermark
/// of the rows before it in the partition) carries that watermark as its **lateness
/// reference**: downstream operators decide whether it is late against it, not against their
/// own watermark at the moment it happens to arrive, so what is late depends only on the
/// data (see `crate::time`). Such rows are rare; the references are kept sparsely, as (row
/// index, watermark) pairs in row order, and cost nothing when there are none.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    schema: SchemaRef,
    values: Vec<Value>,
    event_times: Vec<EventTime>,
    lateness_refs: Vec<(u32, EventTime)>,
    /// Applied to every row finished while set (`set_lateness_ref`).
    current_ref: Option<EventTime>,
}

impl Batch {
    pub fn new(schema: SchemaRef) -> Batch {
        Batch {
            schema,
            values: Vec::new(),
            event_times: Vec::new(),
            lateness_refs: Vec::new(),
            current_ref: None,
        }
    }

    pub fn with_capacity(schema: SchemaRef, rows: usize) -> Batch {
        let width = schema.len();
        Batch {
            schema,
            values: Vec::with_capacity(rows * width),
            event_times: Vec::with_capacity(rows),
            lateness_refs: Vec::new(),
            current_ref: None,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn width(&self) -> usize {
        self.schema.len()
    }

    pub fn len(&self) -> usize {
        self.event_times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.event_times.is_empty()
    }

    pub fn row(&self, i: usize) -> &[Value] {
        let w = self.width();
        &self.values[i * w..(i + 1) * w]
    }

    pub fn event_time(&self, i: usize) -> EventTime {
        self.event_times[i]
    }

    pub fn event_times(&self) -> &[EventTime] {
        &self.event_times
    }

    pub fn rows(&self) -> impl ExactSizeIterator<Item = (&[Value], EventTime)> {
        let w = self.width().max(1);
        // A zero-width schema still has rows (one event time each); give each an empty slice.
        (0..self.len()).map(move |i| {
            let row = if self.schema.is_empty() {
                &self.values[0..0]
            } else {
                &self.values[i * w..(i + 1) * w]
            };
            (row, self.event_times[i])
        })
    }

    /// The rows' values (row after row, `width` each) to change in place, and their event
    /// times: for an operator that moves values out of a batch it owns.
    pub fn values_mut(&mut self) -> (&mut [Value], &[EventTime]) {
        (&mut self.values, &self.event_times)
    }

    /// Appends a row. Panics if `row` does not have the schema's width (a programming error,
    /// never a data error: decoders always produce full rows).
    pub fn push_row(&mut self, row: impl IntoIterator<Item = Value>, event_time: EventTime) {
        let before = self.values.len();
        self.values.extend(row);
        assert_eq!(
            self.values.len() - before,
            self.width(),
            "row width does not match schema"
        );
        self.push_time(event_time);
    }

    /// Appends a row by cloning values from a slice of the same width.
    pub fn push_row_from(&mut self, row: &[Value], event_time: EventTime) {
        assert_eq!(row.len(), self.width(), "row width does not match schema");
        self.values.extend_from_slice(row);
        self.push_time(event_time);
    }

    fn push_time(&mut self, event_time: EventTime) {
        if let Some(l) = self.current_ref {
            self.lateness_refs.push((self.event_times.len() as u32, l));
        }
        self.event_times.push(event_time);
    }

    /// The lateness references of the rows that have one, as (row index, watermark) in row
    /// order (see the type's documentation).
    pub fn lateness_refs(&self) -> &[(u32, EventTime)] {
        &self.lateness_refs
    }

    /// Gives row `i` (already in the batch) the lateness reference `watermark`. Rows must be
    /// marked in row order.
    pub fn mark_behind(&mut self, i: usize, watermark: EventTime) {
        debug_assert!(
            self.lateness_refs
                .last()
                .is_none_or(|&(j, _)| (j as usize) < i)
        );
        self.lateness_refs.push((i as u32, watermark));
    }

    /// Rows finished from now on carry `watermark` as their lateness reference (`None`: no
    /// reference). Operators that emit rows derived from an input row set it to the input
    /// row's reference while they emit them.
    pub fn set_lateness_ref(&mut self, watermark: Option<EventTime>) {
        self.current_ref = watermark;
    }

    /// The reference `set_lateness_ref` set, if any.
    pub fn lateness_ref_in_effect(&self) -> Option<EventTime> {
        self.current_ref
    }

    /// The lateness reference of each row, in row order (`None` for rows without one).
    pub fn lateness_ref_per_row(&self) -> impl Iterator<Item = Option<EventTime>> + '_ {
        let mut refs = self.lateness_refs.iter().peekable();
        (0..self.len()).map(move |i| refs.next_if(|&&(j, _)| j as usize == i).map(|&(_, l)| l))
    }

    /// Appends every row of `other` (same schema), with their lateness references.
    pub fn append(&mut self, other: &Batch) {
        let offset = self.event_times.len() as u32;
        self.values.extend_from_slice(&other.values);
        self.event_times.extend_from_slice(&other.event_times);
        self.lateness_refs
            .extend(other.lateness_refs.iter().map(|&(i, l)| (i + offset, l)));
    }

    /// Starts a row in place: the caller writes exactly `width` values with `push_value` and
    /// then calls `finish_row`; `abandon_row` undoes a partial row (used by decoders on errors).
    pub fn begin_row(&mut self) -> usize {
        self.values.len()
    }

    pub fn push_value(&mut self, v: Value) {
        self.values.push(v);
    }

    pub fn finish_row(&mut self, event_time: EventTime) {
        debug_assert_eq!(self.values.len() % self.width().max(1), 0);
        self.push_time(event_time);
    }

    pub fn abandon_row(&mut self, mark: usize) {
        self.values.truncate(mark);
    }

    /// Mutable access to the values of the row being built (since `begin_row`).
    pub fn pending_row_mut(&mut self, mark: usize) -> &mut [Value] {
        &mut self.values[mark..]
    }

    pub fn clear(&mut self) {
        self.values.clear();
        self.event_times.clear();
        self.lateness_refs.clear();
    }

    /// Splits the batch into `parts` batches, moving (not cloning) each row into the part
    /// `part_of(row)` names; parts keep the row order. Used by keyed shuffles.
    pub fn split_by(self, parts: usize, mut part_of: impl FnMut(&[Value]) -> usize) -> Vec<Batch> {
        let w = self.width();
        let owners: Vec<usize> = if w == 0 {
            vec![0; self.len()]
        } else {
            self.values.chunks_exact(w).map(&mut part_of).collect()
        };
        let mut out: Vec<Batch> = (0..parts)
            .map(|_| Batch::with_capacity(self.schema.clone(), self.len() / parts + 1))
            .collect();
        let mut values = self.values.into_iter();
        let mut refs = self.lateness_refs.iter().peekable();
        for (i, (owner, t)) in owners.into_iter().zip(self.event_times).enumerate() {
            let b = &mut out[owner];
            b.values.extend(values.by_ref().take(w));
            if let Some(&(_, l)) = refs.next_if(|&&(j, _)| j as usize == i) {
                b.lateness_refs.push((b.event_times.len() as u32, l));
            }
            b.event_times.push(t);
        }
        out
    }

    /// Takes the rows out, leaving an empty batch with the same schema and capacity hint (and
    /// the same lateness reference for rows to come).
    pub fn take(&mut self) -> Batch {
        let cap = self.len();
        let mut fresh = Batch::with_capacity(self.schema.clone(), cap);
        fresh.current_ref = self.current_ref;
        std::mem::replace(self, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("host", DataType::String),
            Field::new("n", DataType::Int),
        ]))
    }

    #[test]
    fn batch_rows_round_trip() {
        let mut b = Batch::new(schema());
        b.push_row([Value::from("a"), Value::Int(1)], 10);
        b.push_row([Value::from("b"), Value::Int(2)], 20);
        assert_eq!(b.len(), 2);
        assert_eq!(b.row(1), &[Value::from("b"), Value::Int(2)]);
        let times: Vec<_> = b.rows().map(|(_, t)| t).collect();
        assert_eq!(times, vec![10, 20]);
    }

    #[test]
    fn split_by_moves_rows_in_order() {
        let mut b = Batch::new(schema());
        for i in 0..5 {
            b.push_row([Value::from("h"), Value::Int(i)], i);
        }
        let parts = b.split_by(2, |r| (r[1].as_i64().unwrap() % 2) as usize);
        assert_eq!(parts[0].event_times(), &[0, 2, 4]);
        assert_eq!(parts[1].row(1), &[Value::from("h"), Value::Int(3)]);
    }

    #[test]
    fn lateness_references_follow_their_rows() {
        let mut b = Batch::new(schema());
        for i in 0..4 {
            b.push_row([Value::from("h"), Value::Int(i)], i);
        }
        b.mark_behind(1, 100);
        b.set_lateness_ref(Some(200));
        b.push_row([Value::from("h"), Value::Int(4)], 4);
        b.set_lateness_ref(None);
        assert_eq!(b.lateness_refs(), &[(1, 100), (4, 200)]);
        let mut joined = b.clone();
        joined.append(&b);
        assert_eq!(
            joined.lateness_refs(),
            &[(1, 100), (4, 200), (6, 100), (9, 200)]
        );
        let parts = b.split_by(2, |r| (r[1].as_i64().unwrap() % 2) as usize);
        // Part 0 has rows 0, 2, 4; part 1 rows 1, 3.
        assert_eq!(parts[0].lateness_refs(), &[(2, 200)]);
        assert_eq!(parts[1].lateness_refs(), &[(0, 100)]);
        let per_row: Vec<_> = parts[1].lateness_ref_per_row().collect();
        assert_eq!(per_row, vec![Some(100), None]);
    }

    #[test]
    fn abandoned_row_leaves_batch_unchanged() {
        let mut b = Batch::new(schema());
        let mark = b.begin_row();
        b.push_value(Value::from("x"));
        b.abandon_row(mark);
        assert!(b.is_empty());
        b.push_row([Value::from("a"), Value::Int(1)], 1);
        assert_eq!(b.row(0)[0], Value::from("a"));
    }

    #[test]
    fn float_values_hash_and_order_totally() {
        use std::collections::HashSet;
        let mut set = HashSet::new();
        set.insert(Value::Float(f64::NAN));
        assert!(set.contains(&Value::Float(f64::NAN)));
        assert_eq!(
            Value::Int(2).total_cmp(&Value::Float(1.5)),
            Ordering::Greater
        );
        assert_eq!(Value::Null.total_cmp(&Value::Int(0)), Ordering::Less);
    }

    #[test]
    fn short_strings_are_inline() {
        let v = Value::from("openssl-1.0.2k");
        match v {
            Value::Str(s) => assert!(!s.is_heap_allocated()),
            _ => unreachable!(),
        }
        assert!(std::mem::size_of::<Value>() <= 32);
    }
}
