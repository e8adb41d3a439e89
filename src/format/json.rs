//! JSON lines: a one-pass, schema-driven decoder (one JSON object → one typed row of a
//! `Batch`) and an allocation-free encoder (one row → one compact JSON object).
//!
//! Owns the JSON mapping of every `DataType`; owns no I/O (sources split lines, sinks write
//! the bytes) and no dead-letter routing (callers get a `DecodeError` and decide).
//!
//! Decoding walks the bytes once with `serde_json`'s streaming deserializer and a custom
//! visitor: each key is matched against the schema, a known field's value is deserialized
//! straight into a `Value`, an unknown field's value is skipped without being built
//! (`IgnoredAny`). Nothing is allocated per record unless a value needs the heap itself
//! (strings over 24 bytes, bytes, json) or a key or string value has escapes (serde_json
//! unescapes into a scratch buffer owned by its per-record deserializer).
//!
//! | type      | JSON accepted                                   | JSON written                  |
//! |-----------|-------------------------------------------------|-------------------------------|
//! | string    | string                                          | string                        |
//! | int       | integer; a float without fraction (`3.0`)       | integer                       |
//! | float     | number (parsed exactly from its text)           | number; non-finite as `null`  |
//! | bool      | `true` / `false`                                | `true` / `false`              |
//! | decimal   | number or numeric string, exact (no f64)        | string with its exact text    |
//! | timestamp | RFC 3339 string (see `format`); integer = epoch **milliseconds** | RFC 3339 UTC string |
//! | date      | `YYYY-MM-DD` string; integer = days since epoch | `YYYY-MM-DD` string           |
//! | bytes     | base64 (standard, padded) string                | base64 string                 |
//! | json      | any JSON value, kept as its text (whitespace removed) | the text as is          |
//! | null      | `null` only                                     | `null`                        |
//!
//! A `string` field that no operator of the pipeline reads can be carried as its JSON text
//! instead (`JsonDecoder::carrying_raw`): the literal, escapes and all, checked once and
//! written back byte for byte, so a long payload is neither unescaped nor escaped again.
//!
//! `null` is accepted for every type and decodes to `Value::Null`; a missing field is
//! `Value::Null` too. So a `json` field holding JSON `null` reads back as `Value::Null`.
//! Duplicate keys: the last one wins.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use compact_str::CompactString;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

pub use super::{DecodeError, EventTimeSource};

use super::{
    micros_to_event_time, parse_date, parse_decimal, parse_timestamp, write_date, write_timestamp,
};
use crate::types::{Batch, DataType, EventTime, SchemaRef, Value};

/// A carried string this short without escapes is held as a `Value::Str` (inline, no
/// allocation): writing it back gives the same bytes.
const INLINE_RAW: usize = 24;

/// Schemas up to this width match keys by a linear scan of byte slices (faster than hashing
/// for a handful of short names); wider ones use a hash map.
const LINEAR_KEY_LIMIT: usize = 16;

#[derive(Clone, Debug)]
struct FieldSpec {
    name: CompactString,
    data_type: DataType,
    /// A string field no operator reads: kept as its JSON text (`JsonDecoder::carrying_raw`).
    raw: bool,
}

/// Key → field index, built once per decoder.
#[derive(Clone, Debug)]
enum KeyIndex {
    Linear(Box<[Box<[u8]>]>),
    Hashed(HashMap<Box<[u8]>, usize, ahash::RandomState>),
}

impl KeyIndex {
    fn new(fields: &[FieldSpec]) -> KeyIndex {
        if fields.len() <= LINEAR_KEY_LIMIT {
            KeyIndex::Linear(fields.iter().map(|f| f.name.as_bytes().into()).collect())
        } else {
            let mut map = HashMap::with_capacity_and_hasher(fields.len(), Default::default());
            for (i, f) in fields.iter().enumerate() {
                // A repeated column name resolves to its first column, like `Schema::index_of`.
                map.entry(f.name.as_bytes().into()).or_insert(i);
            }
            KeyIndex::Hashed(map)
        }
    }

    #[inline]
    fn find(&self, key: &[u8]) -> Option<usize> {
        match self {
            KeyIndex::Linear(names) => names.iter().position(|n| **n == *key),
            KeyIndex::Hashed(map) => map.get(key).copied(),
        }
    }
}

/// Decodes JSON objects into rows of one schema. Cheap to share: immutable after `new`.
#[derive(Clone, Debug)]
pub struct JsonDecoder {
    schema: SchemaRef,
    fields: Box<[FieldSpec]>,
    keys: KeyIndex,
    event_time: EventTimeSource,
}

impl JsonDecoder {
    /// Panics if `event_time` names a field that does not exist or is neither `timestamp`
    /// nor `int` (pipeline validation rejects such configs before a decoder is built).
    pub fn new(schema: SchemaRef, event_time: EventTimeSource) -> JsonDecoder {
        let fields: Box<[FieldSpec]> = schema
            .fields
            .iter()
            .map(|f| FieldSpec {
                name: f.name.clone(),
                data_type: f.data_type,
                raw: false,
            })
            .collect();
        if let EventTimeSource::Field(i) = event_time {
            let field = fields
                .get(i)
                .unwrap_or_else(|| panic!("event-time field index {i} is outside the schema"));
            assert!(
                matches!(field.data_type, DataType::Timestamp | DataType::Int),
                "event-time field `{}` must be a timestamp or int, not {}",
                field.name,
                field.data_type
            );
        }
        let keys = KeyIndex::new(&fields);
        JsonDecoder {
            schema,
            fields,
            keys,
            event_time,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Carries the `string` fields for which `unread` is true (no operator of the pipeline
    /// reads them; its sinks write JSON) as their JSON text: a string literal, escapes
    /// included, checked once here (well-formed, UTF-8) and written back byte for byte as a
    /// `Value::Json`. Nothing is unescaped on the way in nor escaped on the way out. A value
    /// that is not a string (or null) is refused as for a typed string field.
    pub fn carrying_raw(mut self, unread: impl Fn(&str) -> bool) -> JsonDecoder {
        for f in self.fields.iter_mut() {
            f.raw = f.data_type == DataType::String && unread(&f.name);
        }
        self
    }

    /// The fields carried as JSON text (`carrying_raw`).
    pub fn raw_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| f.raw)
            .map(|f| f.name.as_str())
    }

    /// Decodes one JSON object (one line, without its newline; surrounding whitespace is
    /// allowed) straight into a new row of `batch`, whose schema must be the decoder's.
    ///
    /// The row's event time is taken from the event-time field, or is `default_event_time`
    /// with `EventTimeSource::None`; it is stored with the row and returned. On error the
    /// batch is left unchanged.
    pub fn decode_into(
        &self,
        line: &[u8],
        batch: &mut Batch,
        default_event_time: EventTime,
    ) -> Result<EventTime, DecodeError> {
        debug_assert_eq!(
            batch.width(),
            self.fields.len(),
            "batch schema does not match the decoder's"
        );
        if let Some(found) = non_object_start(line) {
            return Err(DecodeError::new(format!(
                "expected a json object, found {found}"
            )));
        }
        let mark = batch.begin_row();
        for _ in 0..self.fields.len() {
            batch.push_value(Value::Null);
        }
        let row = batch.pending_row_mut(mark);
        let result = self
            .decode_row(line, row)
            .and_then(|()| self.event_time_of(row, default_event_time));
        match result {
            Ok(event_time) => {
                batch.finish_row(event_time);
                Ok(event_time)
            }
            Err(e) => {
                batch.abandon_row(mark);
                Err(e)
            }
        }
    }

    fn decode_row(&self, line: &[u8], row: &mut [Value]) -> Result<(), DecodeError> {
        let current = Cell::new(None);
        let mut de = serde_json::Deserializer::from_slice(line);
        let seed = RowSeed {
            decoder: self,
            row,
            current: &current,
        };
        seed.deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| self.decode_error(e, line, current.get()))
    }

    fn event_time_of(
        &self,
        row: &[Value],
        default_event_time: EventTime,
    ) -> Result<EventTime, DecodeError> {
        match self.event_time {
            EventTimeSource::None => Ok(default_event_time),
            EventTimeSource::Field(i) => match row[i] {
                Value::Timestamp(micros) => Ok(micros_to_event_time(micros)),
                Value::Int(millis) => Ok(millis),
                // `new` checked the type, so only null is left.
                _ => Err(DecodeError::new(format!(
                    "missing event-time field `{}`",
                    self.fields[i].name
                ))),
            },
        }
    }

    /// Turns a serde_json error into our message. Errors raised by our visitors (category
    /// `Data`) already name the field; syntax errors get the byte offset, and the field
    /// when they happened inside a known field's value.
    fn decode_error(
        &self,
        err: serde_json::Error,
        line: &[u8],
        field: Option<usize>,
    ) -> DecodeError {
        let text = err.to_string();
        let message = match text.rfind(" at line ") {
            Some(at) if err.line() > 0 => &text[..at],
            _ => &text[..],
        };
        if err.classify() == Category::Data {
            return DecodeError::new(message);
        }
        let message = message.replace("EOF while parsing", "unexpected end of input while parsing");
        let offset = byte_offset(line, err.line(), err.column(), err.is_eof());
        match field {
            Some(i) => DecodeError::new(format!(
                "field `{}`: invalid json at byte {offset}: {message}",
                self.fields[i].name
            )),
            None => DecodeError::new(format!("invalid json at byte {offset}: {message}")),
        }
    }
}

/// serde_json reports a 1-based line and a byte column: the 1-based position of the
/// offending byte, or the count of bytes read at end of input. Turn them into a 0-based byte
/// offset into `input`.
fn byte_offset(input: &[u8], line: usize, column: usize, at_end: bool) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        input
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(input.len(), |(i, _)| i + 1)
    };
    let column = if at_end {
        column
    } else {
        column.saturating_sub(1)
    };
    (line_start + column).min(input.len())
}

/// What a JSON value starting with byte `b` is, for error messages.
fn json_kind(b: u8) -> &'static str {
    match b {
        b'"' => "string",
        b'{' => "object",
        b'[' => "array",
        b't' | b'f' => "bool",
        b'n' => "null",
        _ => "number",
    }
}

/// If the line starts with a JSON value other than an object, its kind. (Anything else,
/// including an empty line or garbage such as `nope`, is left to the parser to report.)
fn non_object_start(line: &[u8]) -> Option<&'static str> {
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    let rest = &line[start..];
    let starts_value = match rest[0] {
        b'"' | b'[' | b'-' | b'0'..=b'9' => true,
        b't' => rest.starts_with(b"true"),
        b'f' => rest.starts_with(b"false"),
        b'n' => rest.starts_with(b"null"),
        _ => false,
    };
    starts_value.then(|| json_kind(rest[0]))
}

/// Walks the top-level object, writing known fields into `row`.
struct RowSeed<'a> {
    decoder: &'a JsonDecoder,
    row: &'a mut [Value],
    /// The field whose value is being decoded, for syntax error messages.
    current: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(&self.decoder.keys))? {
            match key {
                Some(i) => {
                    self.current.set(Some(i));
                    // Duplicate keys: the last one wins (the earlier value is dropped here).
                    self.row[i] = map.next_value_seed(FieldSeed(&self.decoder.fields[i]))?;
                    self.current.set(None);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Resolves an object key to a field index, or `None` for a key the schema does not have.
///
/// The key comes as bytes with its escapes undone by serde_json (borrowed from the input,
/// or from serde_json's reused scratch buffer when it had escapes). Bytes rather than `str`
/// skip a UTF-8 check per key (~10% of decode time here); a key that is not valid UTF-8
/// cannot equal a schema name, so it is simply unknown and skipped, as serde_json skips the
/// contents of any unknown value without checking them.
struct KeySeed<'a>(&'a KeyIndex);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    #[inline]
    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Option<usize>, E> {
        Ok(self.0.find(key))
    }
}

/// Deserializes one field's value into a `Value` of the field's type.
struct FieldSeed<'a>(&'a FieldSpec);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.raw {
            let raw = <&'de RawValue>::deserialize(deserializer)?.get();
            return match raw.as_bytes()[0] {
                // Short and without escapes, the text is its own value, held inline (no
                // allocation) and written back the same; otherwise the literal is kept.
                b'"' if raw.len() <= INLINE_RAW + 2 && !raw.contains('\\') => {
                    Ok(Value::Str(CompactString::from(&raw[1..raw.len() - 1])))
                }
                b'"' => Ok(Value::Json(raw.into())),
                b'n' => Ok(Value::Null),
                first => Err(self.mismatch(json_kind(first))),
            };
        }
        match self.0.data_type {
            // These need the value's exact text: take it as a borrowed slice of the input.
            DataType::Float | DataType::Decimal | DataType::Json => {
                let raw = <&'de RawValue>::deserialize(deserializer)?;
                self.value_from_raw(raw.get())
            }
            _ => deserializer.deserialize_any(self),
        }
    }
}

impl FieldSeed<'_> {
    fn error<E: de::Error>(&self, what: impl fmt::Display) -> E {
        E::custom(format_args!("field `{}`: {what}", self.0.name))
    }

    fn mismatch<E: de::Error>(&self, found: impl fmt::Display) -> E {
        self.error(format_args!("expected {}, found {found}", self.0.data_type))
    }

    fn invalid<E: de::Error>(&self, text: &str) -> E {
        self.error(format_args!(
            "invalid {} \"{}\"",
            self.0.data_type,
            text.escape_debug().take(64).collect::<String>()
        ))
    }

    fn out_of_range<E: de::Error>(&self, number: impl fmt::Display) -> E {
        self.error(format_args!(
            "number {number} is out of range for {}",
            self.0.data_type
        ))
    }

    /// Float, decimal and json fields, from the raw text of a value.
    fn value_from_raw<E: de::Error>(&self, raw: &str) -> Result<Value, E> {
        let first = raw.as_bytes()[0];
        if first == b'n' {
            return Ok(Value::Null);
        }
        match self.0.data_type {
            DataType::Json => Ok(Value::Json(compact_json(raw))),
            DataType::Float => match json_kind(first) {
                "number" => match raw.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(Value::Float(v)),
                    _ => Err(self.out_of_range(raw)),
                },
                kind => Err(self.mismatch(kind)),
            },
            DataType::Decimal => match json_kind(first) {
                "number" => parse_decimal(raw)
                    .map(Value::Decimal)
                    .ok_or_else(|| self.invalid(raw)),
                "string" => {
                    let text: std::borrow::Cow<'_, str> = if raw.contains('\\') {
                        serde_json::from_str::<String>(raw)
                            .map_err(|_| self.invalid(raw))?
                            .into()
                    } else {
                        raw[1..raw.len() - 1].into()
                    };
                    parse_decimal(&text)
                        .map(Value::Decimal)
                        .ok_or_else(|| self.invalid(&text))
                }
                kind => Err(self.mismatch(kind)),
            },
            _ => unreachable!("value_from_raw is only used for float, decimal and json"),
        }
    }

    /// Int, timestamp (epoch millis) and date (days) fields, from an integer.
    fn value_from_int<E: de::Error>(&self, v: i64) -> Result<Value, E> {
        match self.0.data_type {
            DataType::Int => Ok(Value::Int(v)),
            DataType::Timestamp => v
                .checked_mul(1000)
                .map(Value::Timestamp)
                .ok_or_else(|| self.out_of_range(v)),
            DataType::Date => i32::try_from(v)
                .map(Value::Date)
                .map_err(|_| self.out_of_range(v)),
            _ => Err(self.mismatch("number")),
        }
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} value for field `{}`",
            self.0.data_type, self.0.name
        )
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        match self.0.data_type {
            DataType::Bool => Ok(Value::Bool(v)),
            _ => Err(self.mismatch("bool")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.value_from_int(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.value_from_int(v),
            Err(_) if is_integral_type(self.0.data_type) => Err(self.out_of_range(v)),
            Err(_) => Err(self.mismatch("number")),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if !is_integral_type(self.0.data_type) {
            return Err(self.mismatch("number"));
        }
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(self.mismatch(format_args!("number {v}")));
        }
        // -2^63 <= v < 2^63: exactly the floats that convert to i64 without saturating.
        if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v) {
            return Err(self.out_of_range(v));
        }
        self.value_from_int(v as i64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        match self.0.data_type {
            DataType::String => Ok(Value::Str(CompactString::from(v))),
            DataType::Timestamp => parse_timestamp(v)
                .map(Value::Timestamp)
                .ok_or_else(|| self.invalid(v)),
            DataType::Date => parse_date(v)
                .map(Value::Date)
                .ok_or_else(|| self.invalid(v)),
            DataType::Bytes => BASE64
                .decode(v)
                .map(|b| Value::Bytes(b.into_boxed_slice()))
                .map_err(|e| self.error(format_args!("invalid base64: {e}"))),
            _ => Err(self.mismatch("string")),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Value, A::Error> {
        Err(self.mismatch("array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Value, A::Error> {
        Err(self.mismatch("object"))
    }
}

fn is_integral_type(t: DataType) -> bool {
    matches!(t, DataType::Int | DataType::Timestamp | DataType::Date)
}

/// The text of a JSON value without insignificant whitespace (`Value::Json` holds compact
/// text). Whitespace inside strings is kept; input without whitespace is copied as is.
pub(crate) fn compact_json(raw: &str) -> Box<str> {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !raw.as_bytes().iter().any(is_ws) {
        return raw.into();
    }
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii() && is_ws(&(c as u8)) {
            continue;
        }
        out.push(c);
    }
    out.into_boxed_str()
}

/// Encodes rows of one schema as compact JSON objects.
#[derive(Clone, Debug)]
pub struct JsonEncoder {
    schema: SchemaRef,
    /// Per written field, the escaped `"name":` (with a leading `,` after the first field).
    prefixes: Box<[Box<[u8]>]>,
    /// The columns written, in order; `None`: all, in schema order.
    columns: Option<Box<[usize]>>,
}

impl JsonEncoder {
    pub fn new(schema: SchemaRef) -> JsonEncoder {
        JsonEncoder::with_columns(schema, None)
    }

    /// An encoder writing only `columns` (indices into the schema), in that order.
    pub fn with_columns(schema: SchemaRef, columns: Option<Vec<usize>>) -> JsonEncoder {
        let names: Vec<&crate::types::Field> = match &columns {
            Some(cols) => cols.iter().map(|&c| schema.field(c)).collect(),
            None => schema.fields.iter().collect(),
        };
        let prefixes = names
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let mut p = Vec::with_capacity(f.name.len() + 4);
                if i > 0 {
                    p.push(b',');
                }
                write_json_str(&f.name, &mut p);
                p.push(b':');
                p.into_boxed_slice()
            })
            .collect();
        JsonEncoder {
            schema,
            prefixes,
            columns: columns.map(Vec::into_boxed_slice),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends one row as a compact JSON object (fields in schema order, no trailing
    /// newline) to `out`. Values are written by their own variant; nothing is allocated
    /// beyond growing `out`.
    pub fn encode_row(&self, row: &[Value], out: &mut Vec<u8>) {
        debug_assert_eq!(
            row.len(),
            self.schema.len(),
            "row width does not match schema"
        );
        out.push(b'{');
        match &self.columns {
            None => {
                for (prefix, value) in self.prefixes.iter().zip(row) {
                    out.extend_from_slice(prefix);
                    write_value(value, out);
                }
            }
            Some(cols) => {
                for (prefix, &c) in self.prefixes.iter().zip(cols.iter()) {
                    out.extend_from_slice(prefix);
                    write_value(&row[c], out);
                }
            }
        }
        out.push(b'}');
    }
}

/// Writes one value as JSON (see the table at the top).
pub fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(v) => out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
        Value::Float(v) if v.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*v).as_bytes())
        }
        Value::Float(_) => out.extend_from_slice(b"null"),
        Value::Str(s) => write_json_str(s, out),
        Value::Decimal(d) => {
            out.push(b'"');
            out.extend_from_slice(d.array_string().as_ref().as_bytes());
            out.push(b'"');
        }
        Value::Timestamp(micros) => {
            out.push(b'"');
            write_timestamp(*micros, out);
            out.push(b'"');
        }
        Value::Date(days) => {
            out.push(b'"');
            write_date(*days, out);
            out.push(b'"');
        }
        Value::Bytes(bytes) => {
            out.push(b'"');
            let start = out.len();
            let len = base64::encoded_len(bytes.len(), true).expect("base64 length overflows");
            out.resize(start + len, 0);
            let written = BASE64
                .encode_slice(bytes, &mut out[start..])
                .expect("buffer sized by encoded_len");
            debug_assert_eq!(written, len);
            out.push(b'"');
        }
        // An empty text is not JSON; write null rather than break the line.
        Value::Json(text) if text.is_empty() => out.extend_from_slice(b"null"),
        Value::Json(text) => out.extend_from_slice(text.as_bytes()),
    }
}

/// For each byte: 0 = copy, `u` = `\u00XX`, else the character after a backslash.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a JSON string literal.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rust_decimal::Decimal;

    use super::*;
    use crate::types::{Field, Schema};

    const T2026: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in micros

    fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields.iter().map(|(n, t)| Field::new(n, *t)).collect(),
        ))
    }

    fn all_types() -> SchemaRef {
        schema(&[
            ("s", DataType::String),
            ("i", DataType::Int),
            ("f", DataType::Float),
            ("b", DataType::Bool),
            ("d", DataType::Decimal),
            ("ts", DataType::Timestamp),
            ("day", DataType::Date),
            ("raw", DataType::Bytes),
            ("j", DataType::Json),
            ("n", DataType::Null),
        ])
    }

    /// Unread string fields are carried as their text and written back byte for byte;
    /// what a typed string field refuses, a carried one refuses too (a dead letter).
    #[test]
    fn unread_strings_are_carried_as_their_json_text() {
        let s = schema(&[
            ("host", DataType::String),
            ("payload", DataType::String),
            ("n", DataType::Int),
        ]);
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::None)
            .carrying_raw(|name| name == "payload" || name == "n");
        assert_eq!(decoder.raw_fields().collect::<Vec<_>>(), ["payload"]);
        let encoder = JsonEncoder::new(s.clone());
        let roundtrip = |line: &[u8]| -> Result<(Vec<Value>, String), DecodeError> {
            let mut batch = Batch::new(s.clone());
            decoder.decode_into(line, &mut batch, 0)?;
            let mut out = Vec::new();
            encoder.encode_row(batch.row(0), &mut out);
            Ok((batch.row(0).to_vec(), String::from_utf8(out).unwrap()))
        };
        // Escapes the encoder would write otherwise (`\/`, `\u00e9`) come back as they were.
        let line = br#"{"host":"a\u00e9","payload":"x\/y\u00e9\r\n\"q\"","n":1}"#;
        let (row, out) = roundtrip(line).unwrap();
        assert_eq!(row[0], Value::from("aé"), "a read field is typed");
        assert_eq!(row[1], Value::Json(r#""x\/y\u00e9\r\n\"q\"""#.into()));
        assert_eq!(
            out,
            r#"{"host":"aé","payload":"x\/y\u00e9\r\n\"q\"","n":1}"#
        );
        // Short and without escapes: held inline, the same bytes written.
        let (row, out) = roundtrip(r#"{"host":"h","payload":"short é"}"#.as_bytes()).unwrap();
        assert_eq!(row[1], Value::from("short é"));
        assert_eq!(out, r#"{"host":"h","payload":"short é","n":null}"#);
        let (row, out) = roundtrip(br#"{"host":"h","payload":null}"#).unwrap();
        assert_eq!(row[1], Value::Null);
        assert_eq!(out, r#"{"host":"h","payload":null,"n":null}"#);
        let mut invalid_utf8 = br#"{"payload":"ab"}"#.to_vec();
        invalid_utf8[13] = 0xff;
        for (bad, why) in [
            (
                &br#"{"payload":5}"#[..],
                "field `payload`: expected string, found number",
            ),
            (
                br#"{"payload":["a"]}"#,
                "field `payload`: expected string, found array",
            ),
            (br#"{"payload":"bad \x escape"}"#, "invalid escape"),
            (b"{\"payload\":\"tab\tinside\"}", "control character"),
            (br#"{"payload":"unterminated}"#, "end of input"),
            (&invalid_utf8, "unicode"),
        ] {
            let err = roundtrip(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{}: {err}", String::from_utf8_lossy(bad));
        }
    }

    fn decode(schema: &SchemaRef, line: &str) -> Result<Vec<Value>, DecodeError> {
        let decoder = JsonDecoder::new(schema.clone(), EventTimeSource::None);
        let mut batch = Batch::new(schema.clone());
        decoder.decode_into(line.as_bytes(), &mut batch, 7)?;
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.event_time(0), 7);
        Ok(batch.row(0).to_vec())
    }

    fn decode_one(data_type: DataType, json: &str) -> Result<Value, DecodeError> {
        let s = schema(&[("x", data_type)]);
        decode(&s, &format!("{{\"x\":{json}}}")).map(|row| row[0].clone())
    }

    fn err(data_type: DataType, json: &str) -> String {
        decode_one(data_type, json).unwrap_err().reason
    }

    fn encode(schema: &SchemaRef, row: &[Value]) -> String {
        let mut out = Vec::new();
        JsonEncoder::new(schema.clone()).encode_row(row, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn dec(s: &str) -> Value {
        Value::Decimal(Decimal::from_str_exact(s).unwrap())
    }

    #[test]
    fn decodes_every_type() {
        let line = r#"{"s":"héllo","i":-42,"f":1.5,"b":true,"d":"42.50","ts":"2026-01-01T00:00:00.123Z",
            "day":"2026-01-01","raw":"AAEC/w==","j":{"a": [1, "x y"]},"n":null}"#;
        let row = decode(&all_types(), line).unwrap();
        assert_eq!(
            row,
            vec![
                Value::from("héllo"),
                Value::Int(-42),
                Value::Float(1.5),
                Value::Bool(true),
                dec("42.50"),
                Value::Timestamp(T2026 + 123_000),
                Value::Date(20_454),
                Value::Bytes(vec![0, 1, 2, 255].into()),
                Value::Json(r#"{"a":[1,"x y"]}"#.into()),
                Value::Null,
            ]
        );
    }

    #[test]
    fn encodes_every_type() {
        let row = vec![
            Value::from("a\"b\\c\n\u{1}é"),
            Value::Int(-42),
            Value::Float(1.5),
            Value::Bool(false),
            dec("42.50"),
            Value::Timestamp(T2026 + 123_000),
            Value::Date(20_454),
            Value::Bytes(vec![0, 1, 2, 255].into()),
            Value::Json(r#"{"a":[1,"x y"]}"#.into()),
            Value::Null,
        ];
        assert_eq!(
            encode(&all_types(), &row),
            r#"{"s":"a\"b\\c\n\u0001é","i":-42,"f":1.5,"b":false,"d":"42.50","ts":"2026-01-01T00:00:00.123Z","day":"2026-01-01","raw":"AAEC/w==","j":{"a":[1,"x y"]},"n":null}"#
        );
        assert_eq!(
            decode(&all_types(), &encode(&all_types(), &row)).unwrap(),
            row
        );
    }

    #[test]
    fn encodes_edge_values() {
        let s = schema(&[("x", DataType::Float)]);
        assert_eq!(encode(&s, &[Value::Float(f64::NAN)]), r#"{"x":null}"#);
        assert_eq!(encode(&s, &[Value::Float(f64::INFINITY)]), r#"{"x":null}"#);
        assert_eq!(encode(&s, &[Value::Float(1e300)]), r#"{"x":1e300}"#);
        assert_eq!(encode(&s, &[Value::Float(3.0)]), r#"{"x":3.0}"#);
        let s = schema(&[("x", DataType::Timestamp)]);
        assert_eq!(
            encode(&s, &[Value::Timestamp(T2026)]),
            r#"{"x":"2026-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(
            encode(&s, &[Value::Timestamp(T2026 + 1)]),
            r#"{"x":"2026-01-01T00:00:00.000001Z"}"#
        );
        let s = schema(&[("x", DataType::Json)]);
        assert_eq!(encode(&s, &[Value::Json("".into())]), r#"{"x":null}"#);
        assert_eq!(encode(&schema(&[]), &[]), "{}");
        let s = schema(&[("we\"ird\tkey", DataType::Int), ("b", DataType::Bytes)]);
        assert_eq!(
            encode(&s, &[Value::Int(1), Value::Bytes(Box::new([]))]),
            r#"{"we\"ird\tkey":1,"b":""}"#
        );
    }

    #[test]
    fn encoder_appends_to_existing_output() {
        let s = schema(&[("x", DataType::Int)]);
        let encoder = JsonEncoder::new(s);
        let mut out = b"prefix\n".to_vec();
        encoder.encode_row(&[Value::Int(1)], &mut out);
        out.push(b'\n');
        encoder.encode_row(&[Value::Null], &mut out);
        assert_eq!(out, b"prefix\n{\"x\":1}\n{\"x\":null}");
    }

    #[test]
    fn null_is_accepted_for_every_type_and_missing_fields_are_null() {
        for t in all_types().fields.iter().map(|f| f.data_type) {
            assert_eq!(decode_one(t, "null").unwrap(), Value::Null, "{t}");
        }
        let row = decode(&all_types(), r#"{"i":1}"#).unwrap();
        assert_eq!(row[1], Value::Int(1));
        assert!(row.iter().enumerate().all(|(k, v)| k == 1 || v.is_null()));
        assert!(
            decode(&all_types(), "{}")
                .unwrap()
                .iter()
                .all(Value::is_null)
        );
        assert!(
            decode(&all_types(), " \t{ }\r\n")
                .unwrap()
                .iter()
                .all(Value::is_null)
        );
    }

    #[test]
    fn numbers_decode_by_field_type() {
        assert_eq!(decode_one(DataType::Int, "3.0").unwrap(), Value::Int(3));
        assert_eq!(decode_one(DataType::Int, "1e3").unwrap(), Value::Int(1000));
        assert_eq!(decode_one(DataType::Int, "-0").unwrap(), Value::Int(0));
        assert_eq!(
            decode_one(DataType::Int, "9223372036854775807").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode_one(DataType::Int, "-9223372036854775808").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(decode_one(DataType::Float, "3").unwrap(), Value::Float(3.0));
        assert_eq!(
            decode_one(DataType::Float, "-0.0").unwrap(),
            Value::Float(-0.0)
        );
        // Parsed from the text with correct rounding (serde_json's default float parser
        // may be off by one ulp).
        assert_eq!(
            decode_one(DataType::Float, "2.2250738585072011e-308").unwrap(),
            Value::Float("2.2250738585072011e-308".parse().unwrap())
        );
        assert_eq!(
            decode_one(DataType::Timestamp, "1767225600123").unwrap(),
            Value::Timestamp(T2026 + 123_000)
        );
        assert_eq!(decode_one(DataType::Date, "-1").unwrap(), Value::Date(-1));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decode_one(DataType::Decimal, "0.1").unwrap(), dec("0.1"));
        assert_eq!(
            decode_one(DataType::Decimal, "\"0.1\"").unwrap(),
            dec("0.1")
        );
        assert_eq!(
            decode_one(DataType::Decimal, "123456789.123456789").unwrap(),
            dec("123456789.123456789")
        );
        assert_eq!(
            decode_one(DataType::Decimal, "\"123456789.123456789\"").unwrap(),
            dec("123456789.123456789")
        );
        assert_eq!(decode_one(DataType::Decimal, "1e3").unwrap(), dec("1000"));
        assert_eq!(
            decode_one(DataType::Decimal, "1.25E-3").unwrap(),
            dec("0.00125")
        );
        assert_eq!(
            decode_one(DataType::Decimal, "\"-12.5e1\"").unwrap(),
            dec("-125")
        );
        assert_eq!(
            decode_one(DataType::Decimal, "\"\\u0031.5\"").unwrap(),
            dec("1.5")
        );
        assert_eq!(
            decode_one(DataType::Decimal, "0.1234567890123456789012345678").unwrap(),
            dec("0.1234567890123456789012345678")
        );
        // The scale is kept: 42.50 encodes as "42.50".
        let s = schema(&[("x", DataType::Decimal)]);
        let v = decode_one(DataType::Decimal, "42.50").unwrap();
        assert_eq!(encode(&s, &[v]), r#"{"x":"42.50"}"#);
        // Not exactly representable: an error, never a rounded value.
        assert_eq!(
            err(DataType::Decimal, "0.12345678901234567890123456789"),
            "field `x`: invalid decimal \"0.12345678901234567890123456789\""
        );
        assert_eq!(
            err(DataType::Decimal, "1e40"),
            "field `x`: invalid decimal \"1e40\""
        );
        assert_eq!(
            err(DataType::Decimal, "\"abc\""),
            "field `x`: invalid decimal \"abc\""
        );
        assert_eq!(
            err(DataType::Decimal, "true"),
            "field `x`: expected decimal, found bool"
        );
    }

    #[test]
    fn strings_with_escapes_and_long_strings() {
        assert_eq!(
            decode_one(DataType::String, r#""a\"b\\c\n\u00e9\ud83d\ude00""#).unwrap(),
            Value::from("a\"b\\c\né😀")
        );
        let long = "x".repeat(100);
        assert_eq!(
            decode_one(DataType::String, &format!("\"{long}\"")).unwrap(),
            Value::from(long.as_str())
        );
        match decode_one(DataType::String, "\"short\"").unwrap() {
            Value::Str(s) => assert!(!s.is_heap_allocated()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn escaped_keys_match_schema_fields() {
        let s = schema(&[
            ("port", DataType::Int),
            ("a\"b", DataType::Int),
            ("é", DataType::Int),
        ]);
        let row = decode(&s, r#"{"p\u006frt":80,"a\"b":1,"\u00e9":2}"#).unwrap();
        assert_eq!(row, vec![Value::Int(80), Value::Int(1), Value::Int(2)]);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let s = schema(&[("a", DataType::Int), ("z", DataType::String)]);
        let line = r#"{"x":{"a":[1,{"b":null}],"c":"}"},"a":1,"y":[[],[{}],"]"],"q\"":"\"",
            "n":-1.5e7,"t":true,"z":"end"}"#;
        assert_eq!(
            decode(&s, line).unwrap(),
            vec![Value::Int(1), Value::from("end")]
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let s = schema(&[("a", DataType::String)]);
        assert_eq!(
            decode(&s, r#"{"a":"first","a":"second"}"#).unwrap(),
            vec![Value::from("second")]
        );
        assert_eq!(
            decode(&s, r#"{"a":"first","a":null}"#).unwrap(),
            vec![Value::Null]
        );
    }

    #[test]
    fn wide_schemas_use_the_hashed_index() {
        let names: Vec<String> = (0..40).map(|i| format!("field_{i}")).collect();
        let fields: Vec<(&str, DataType)> =
            names.iter().map(|n| (n.as_str(), DataType::Int)).collect();
        let s = schema(&fields);
        let row = decode(&s, r#"{"field_39":39,"field_0":0,"other":1,"field_7":7}"#).unwrap();
        assert_eq!(row[39], Value::Int(39));
        assert_eq!(row[0], Value::Int(0));
        assert_eq!(row[7], Value::Int(7));
        assert_eq!(row.iter().filter(|v| !v.is_null()).count(), 3);
    }

    #[test]
    fn json_values_keep_their_text_without_whitespace() {
        for (input, stored) in [
            ("[1, 2 ,3]", "[1,2,3]"),
            ("{ \"k\" : \"a b\\\" c\" }", r#"{"k":"a b\" c"}"#),
            ("\"text\"", "\"text\""),
            ("1.50", "1.50"),
            ("false", "false"),
            ("{}", "{}"),
        ] {
            assert_eq!(
                decode_one(DataType::Json, input).unwrap(),
                Value::Json(stored.into()),
                "{input}"
            );
        }
    }

    #[test]
    fn type_mismatches_name_the_field_and_what_was_found() {
        let s = schema(&[("port", DataType::Int)]);
        assert_eq!(
            decode(&s, r#"{"port":"80"}"#).unwrap_err().to_string(),
            "field `port`: expected int, found string"
        );
        assert_eq!(
            err(DataType::Int, "3.5"),
            "field `x`: expected int, found number 3.5"
        );
        assert_eq!(
            err(DataType::Int, "9223372036854775808"),
            "field `x`: number 9223372036854775808 is out of range for int"
        );
        assert_eq!(
            err(DataType::Int, "-1e19"),
            "field `x`: number -10000000000000000000 is out of range for int"
        );
        assert_eq!(
            err(DataType::Int, "[1]"),
            "field `x`: expected int, found array"
        );
        assert_eq!(
            err(DataType::String, "{\"a\":1}"),
            "field `x`: expected string, found object"
        );
        assert_eq!(
            err(DataType::String, "12"),
            "field `x`: expected string, found number"
        );
        assert_eq!(
            err(DataType::String, "true"),
            "field `x`: expected string, found bool"
        );
        assert_eq!(
            err(DataType::Float, "\"1.5\""),
            "field `x`: expected float, found string"
        );
        assert_eq!(
            err(DataType::Float, "1e400"),
            "field `x`: number 1e400 is out of range for float"
        );
        assert_eq!(
            err(DataType::Bool, "1"),
            "field `x`: expected bool, found number"
        );
        assert_eq!(
            err(DataType::Null, "1"),
            "field `x`: expected null, found number"
        );
        assert_eq!(
            err(DataType::Null, "\"\""),
            "field `x`: expected null, found string"
        );
        assert_eq!(
            err(DataType::Timestamp, "\"2026-13-01T00:00:00Z\""),
            "field `x`: invalid timestamp \"2026-13-01T00:00:00Z\""
        );
        assert_eq!(
            err(DataType::Timestamp, "1.5"),
            "field `x`: expected timestamp, found number 1.5"
        );
        assert_eq!(
            err(DataType::Timestamp, "9223372036854775807"),
            "field `x`: number 9223372036854775807 is out of range for timestamp"
        );
        assert_eq!(
            err(DataType::Date, "\"2026-02-30\""),
            "field `x`: invalid date \"2026-02-30\""
        );
        assert_eq!(
            err(DataType::Date, "4294967296"),
            "field `x`: number 4294967296 is out of range for date"
        );
        assert!(
            err(DataType::Bytes, "\"not base64!\"").starts_with("field `x`: invalid base64: "),
            "{}",
            err(DataType::Bytes, "\"not base64!\"")
        );
        assert_eq!(
            err(DataType::Bytes, "[]"),
            "field `x`: expected bytes, found array"
        );
    }

    #[test]
    fn malformed_json_reports_the_byte_offset() {
        let s = schema(&[("a", DataType::Int), ("b", DataType::String)]);
        let e = |line: &str| match decode(&s, line) {
            Err(e) => e.reason,
            Ok(row) => panic!("{line:?} decoded to {row:?}"),
        };
        assert_eq!(
            e(r#"{"a" 1}"#),
            "field `a`: invalid json at byte 5: expected `:`"
        );
        assert_eq!(e(r#"{"a":1,}"#), "invalid json at byte 7: trailing comma");
        assert_eq!(
            e(r#"{"a":1"#),
            "invalid json at byte 6: unexpected end of input while parsing an object"
        );
        assert_eq!(
            e(""),
            "invalid json at byte 0: unexpected end of input while parsing a value"
        );
        assert_eq!(
            e("  "),
            "invalid json at byte 2: unexpected end of input while parsing a value"
        );
        assert_eq!(e("x"), "invalid json at byte 0: expected value");
        assert_eq!(e("not json"), "invalid json at byte 1: expected ident");
        assert_eq!(
            e(" fals"),
            "invalid json at byte 5: unexpected end of input while parsing a value"
        );
        assert_eq!(
            e("{\"a\":1}\n{\"x\" 2}"),
            "invalid json at byte 8: trailing characters"
        );
        assert_eq!(
            e(r#"{"b":"ab"#),
            "field `b`: invalid json at byte 8: unexpected end of input while parsing a string"
        );
        assert_eq!(
            e(r#"{"a":01}"#),
            "field `a`: invalid json at byte 6: invalid number"
        );
        assert_eq!(e(r#"{"zz":[1,}"#), "invalid json at byte 9: expected value");
        assert_eq!(
            e("{\"b\":\"a\u{1}\"}"),
            "field `b`: invalid json at byte 7: control character (\\u0000-\\u001F) found while parsing a string"
        );
        assert_eq!(
            e(&format!("{}1{}", "[".repeat(200), "]".repeat(200))),
            "expected a json object, found array"
        );
        // Skipping is iterative: deep nesting in an unknown field costs no stack.
        let deep = format!(
            "{{\"zz\":{}1{},\"a\":1}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(decode(&s, &deep).unwrap()[0], Value::Int(1));
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let s = schema(&[("a", DataType::Int)]);
        assert_eq!(
            decode(&s, r#"{"a":1} x"#).unwrap_err().reason,
            "invalid json at byte 8: trailing characters"
        );
        assert_eq!(
            decode(&s, r#"{"a":1}{}"#).unwrap_err().reason,
            "invalid json at byte 7: trailing characters"
        );
        assert_eq!(decode(&s, "{\"a\":1} \r\n").unwrap(), vec![Value::Int(1)]);
    }

    #[test]
    fn top_level_must_be_an_object() {
        let s = schema(&[("a", DataType::Int)]);
        for (line, found) in [
            ("[1]", "array"),
            (" \"a\"", "string"),
            ("1", "number"),
            ("-1", "number"),
            ("true", "bool"),
            ("null", "null"),
        ] {
            assert_eq!(
                decode(&s, line).unwrap_err().reason,
                format!("expected a json object, found {found}")
            );
        }
    }

    #[test]
    fn errors_leave_the_batch_unchanged() {
        let s = schema(&[("a", DataType::Int), ("b", DataType::String)]);
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::None);
        let mut batch = Batch::new(s);
        decoder
            .decode_into(br#"{"a":1,"b":"x"}"#, &mut batch, 1)
            .unwrap();
        let before = batch.clone();
        for bad in [
            &br#"{"a":2,"b":3}"#[..],
            br#"{"b":"y","a":"#,
            b"[]",
            br#"{"a":1}x"#,
        ] {
            assert!(decoder.decode_into(bad, &mut batch, 2).is_err());
            assert_eq!(batch, before);
        }
        decoder.decode_into(br#"{"b":"z"}"#, &mut batch, 3).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.row(1), &[Value::Null, Value::from("z")]);
        assert_eq!(batch.event_times(), &[1, 3]);
    }

    #[test]
    fn event_time_from_a_timestamp_field() {
        let s = schema(&[("msg", DataType::String), ("ts", DataType::Timestamp)]);
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::Field(1));
        let mut batch = Batch::new(s);
        let t = decoder
            .decode_into(
                br#"{"ts":"2026-01-01T00:00:00.123999Z","msg":"hi"}"#,
                &mut batch,
                5,
            )
            .unwrap();
        assert_eq!(t, 1_767_225_600_123);
        // Before the epoch the millisecond is floored, not truncated toward zero.
        let t = decoder
            .decode_into(br#"{"ts":"1969-12-31T23:59:59.999500Z"}"#, &mut batch, 5)
            .unwrap();
        assert_eq!(t, -1);
        // An integer timestamp is epoch milliseconds.
        let t = decoder
            .decode_into(br#"{"ts":1767225600123}"#, &mut batch, 5)
            .unwrap();
        assert_eq!(t, 1_767_225_600_123);
        assert_eq!(batch.row(2)[1], Value::Timestamp(1_767_225_600_123_000));
        assert_eq!(
            batch.event_times(),
            &[1_767_225_600_123, -1, 1_767_225_600_123]
        );
    }

    #[test]
    fn event_time_from_an_int_field() {
        let s = schema(&[("at", DataType::Int)]);
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::Field(0));
        let mut batch = Batch::new(s);
        assert_eq!(
            decoder
                .decode_into(br#"{"at":1000}"#, &mut batch, 5)
                .unwrap(),
            1000
        );
        assert_eq!(batch.event_times(), &[1000]);
    }

    #[test]
    fn missing_event_time_is_an_error() {
        let s = schema(&[("msg", DataType::String), ("ts", DataType::Timestamp)]);
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::Field(1));
        let mut batch = Batch::new(s);
        for line in [&br#"{"msg":"hi"}"#[..], br#"{"msg":"hi","ts":null}"#] {
            assert_eq!(
                decoder.decode_into(line, &mut batch, 5).unwrap_err().reason,
                "missing event-time field `ts`"
            );
        }
        assert!(batch.is_empty());
    }

    #[test]
    #[should_panic(expected = "event-time field `msg` must be a timestamp or int")]
    fn event_time_field_must_be_a_time() {
        let s = schema(&[("msg", DataType::String)]);
        JsonDecoder::new(s, EventTimeSource::Field(0));
    }

    #[test]
    fn empty_schema_rows_still_count() {
        let s = schema(&[]);
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::None);
        let mut batch = Batch::new(s);
        decoder.decode_into(br#"{"a":1}"#, &mut batch, 9).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.event_times(), &[9]);
    }

    fn arb_json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        // JSON null reads back as Value::Null, so a json value never holds "null".
        value.prop_map(|v| v.to_string())
    }

    fn arb_value(data_type: DataType) -> BoxedStrategy<Value> {
        let value = match data_type {
            DataType::String => any::<String>().prop_map(|s| Value::Str(s.into())).boxed(),
            DataType::Int => any::<i64>().prop_map(Value::Int).boxed(),
            DataType::Float => {
                use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
                (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO)
                    .prop_map(Value::Float)
                    .boxed()
            }
            DataType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            DataType::Decimal => (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
                0u32..=28,
            )
                .prop_map(|(lo, mid, hi, neg, scale)| {
                    Value::Decimal(Decimal::from_parts(lo, mid, hi, neg, scale))
                })
                .boxed(),
            DataType::Timestamp => prop_oneof![
                any::<i64>(),
                (0i64..4_102_444_800_000).prop_map(|ms| ms * 1000),
            ]
            .prop_map(Value::Timestamp)
            .boxed(),
            DataType::Date => any::<i32>().prop_map(Value::Date).boxed(),
            DataType::Bytes => prop::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| Value::Bytes(b.into()))
                .boxed(),
            DataType::Json => arb_json().prop_map(|s| Value::Json(s.into())).boxed(),
            DataType::Null => Just(Value::Null).boxed(),
        };
        prop_oneof![1 => Just(Value::Null), 4 => value].boxed()
    }

    fn arb_type() -> impl Strategy<Value = DataType> {
        prop::sample::select(
            DataType::NAMES
                .iter()
                .map(|n| DataType::parse(n).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn arb_schema_and_rows() -> impl Strategy<Value = (SchemaRef, Vec<Vec<Value>>)> {
        prop::collection::btree_set(".{0,6}", 0..20)
            .prop_flat_map(|names| {
                let n = names.len();
                (Just(names), prop::collection::vec(arb_type(), n))
            })
            .prop_flat_map(|(names, types)| {
                let schema = Arc::new(Schema::new(
                    names
                        .iter()
                        .zip(&types)
                        .map(|(n, t)| Field::new(n, *t))
                        .collect(),
                ));
                let row: Vec<BoxedStrategy<Value>> = types.iter().map(|t| arb_value(*t)).collect();
                (Just(schema), prop::collection::vec(row, 1..4))
            })
    }

    proptest! {
        #[test]
        fn floats_parse_like_std(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            for text in [format!("{v:.16e}"), format!("{v:.20e}"), format!("{v}")] {
                prop_assert_eq!(
                    decode_one(DataType::Float, &text).unwrap(),
                    Value::Float(text.parse().unwrap())
                );
            }
        }

        #[test]
        fn encode_then_decode_round_trips((schema, rows) in arb_schema_and_rows()) {
            let encoder = JsonEncoder::new(schema.clone());
            let decoder = JsonDecoder::new(schema.clone(), EventTimeSource::None);
            let mut batch = Batch::new(schema.clone());
            let mut line = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                line.clear();
                encoder.encode_row(row, &mut line);
                // The encoder's output is valid JSON.
                serde_json::from_slice::<serde_json::Value>(&line).unwrap();
                decoder.decode_into(&line, &mut batch, i as i64).unwrap();
                prop_assert_eq!(batch.row(i), &row[..], "{}", String::from_utf8_lossy(&line));
            }
        }
    }

    /// Ad-hoc throughput check, not a test: `cargo test --release --lib
    /// format::json::tests::decode_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn decode_throughput() {
        let s = schema(&[
            ("ts", DataType::Timestamp),
            ("host", DataType::String),
            ("status", DataType::Int),
            ("latency_ms", DataType::Float),
        ]);
        let line = br#"{"ts":"2026-01-01T12:34:56.789Z","request_id":"6f1c2a9e-4b7d-4e1a-9c3f-2d8b7a6e5f40","host":"web-07.eu-west-1.example.com","path":"/api/v2/catalog/items/1234567?expand=prices,stock&locale=en-GB","status":200,"latency_ms":12.345,"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36","headers":{"accept":"application/json","accept-encoding":"gzip, deflate, br","x-forwarded-for":"203.0.113.7, 198.51.100.23","x-trace":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},"tags":["checkout","mobile","beta"]}"#;
        let decoder = JsonDecoder::new(s.clone(), EventTimeSource::Field(0));
        let encoder = JsonEncoder::new(s.clone());
        let mut batch = Batch::with_capacity(s, 1024);
        // Best of 5 rounds of 1M records each, in M records/s (the machine may be shared).
        let best = |f: &mut dyn FnMut()| {
            (0..5)
                .map(|_| {
                    let start = std::time::Instant::now();
                    f();
                    1.0 / start.elapsed().as_secs_f64()
                })
                .fold(0.0, f64::max)
        };
        let decode = best(&mut || {
            for _ in 0..1000 {
                batch.clear();
                for _ in 0..1000 {
                    decoder.decode_into(line, &mut batch, 0).unwrap();
                }
            }
        });
        // The floor: serde_json skipping the whole line without building anything.
        let skip = best(&mut || {
            for _ in 0..1_000_000 {
                std::hint::black_box(serde_json::from_slice::<IgnoredAny>(line).unwrap());
            }
        });
        let mut out = Vec::with_capacity(1 << 20);
        let encode = best(&mut || {
            for _ in 0..1000 {
                out.clear();
                for row in 0..batch.len() {
                    encoder.encode_row(batch.row(row), &mut out);
                    out.push(b'\n');
                }
            }
        });
        println!(
            "{} bytes/line: decode {decode:.2} M lines/s ({:.0} MB/s), skip-only floor \
             {skip:.2} M lines/s, encode (4 fields) {encode:.2} M rows/s",
            line.len(),
            decode * line.len() as f64
        );
    }
}
