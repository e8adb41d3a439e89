//! Rows and column values: a row object decoded along a `Plan` in one serde pass
//! (`decode_row`), and one raw JSON value converted to a `Value` of its `Kind` (`convert`):
//! integers, floats, base64 bytes, exact decimals (unscaled base64 bytes, variable-scale
//! objects, text or numbers), dates, timestamps, times of day, JSON, and the unchanged-TOAST
//! placeholder (`None`).
//!
//! Owns value parsing only; which kind a column has is `schema.rs`'s business.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{CowStr, json_kind, serde_message, unquote};
use super::schema::{Kind, Plan};
use crate::format::json::compact_json;
use crate::format::{parse_date, parse_decimal, parse_timestamp};
use crate::types::Value;

/// The placeholder Debezium writes for an unchanged TOASTed column.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";
/// The placeholder as base64, as it arrives in bytes and precise-decimal columns.
pub(super) const UNAVAILABLE_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// Decodes one row object; returns its values (in plan order) and the indices of
/// unavailable (unchanged TOAST) columns.
pub(super) fn decode_row(
    raw: &RawValue,
    plan: &mut Cow<'_, Plan>,
) -> Result<(Vec<Value>, Vec<usize>), String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    // A column's conversion error names the column; its position inside the row would
    // mislead (it is not the position in the record), so it is cut off.
    let out = RowSeed { plan }.deserialize(&mut de).map_err(|e| {
        let message = serde_message(&e);
        let position = format!(" at line {} column {}", e.line(), e.column());
        match message.strip_suffix(&position) {
            Some(m) if e.is_data() => m.to_owned(),
            _ => message,
        }
    })?;
    Ok(out)
}

struct RowSeed<'p, 'a> {
    plan: &'p mut Cow<'a, Plan>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = (Vec<Value>, Vec<usize>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = (Vec<Value>, Vec<usize>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![Value::Null; self.plan.names.len()];
        let mut unavailable = Vec::new();
        while let Some(CowStr(name)) = map.next_key()? {
            let index = match self.plan.find(&name) {
                Some(i) => Some(i),
                None if self.plan.infer => {
                    let plan = self.plan.to_mut();
                    plan.names.push(CompactString::from(name.as_ref()));
                    plan.kinds.push(Kind::Infer);
                    values.push(Value::Null);
                    Some(plan.names.len() - 1)
                }
                None => None,
            };
            let Some(i) = index else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let raw: &RawValue = map.next_value()?;
            if i >= values.len() {
                values.resize(i + 1, Value::Null);
            }
            match convert(self.plan.kinds[i], raw.get()) {
                Ok(Some(v)) => values[i] = v,
                Ok(None) => {
                    values[i] = Value::Null;
                    unavailable.push(i);
                }
                Err(e) => return Err(de::Error::custom(format_args!("column `{name}`: {e}"))),
            }
        }
        unavailable.sort_unstable();
        unavailable.dedup();
        Ok((values, unavailable))
    }
}

/// One JSON value (raw text) as a `Value` of `kind`; `None` for the TOAST placeholder.
pub(super) fn convert(kind: Kind, raw: &str) -> Result<Option<Value>, String> {
    let kind_name = json_kind(raw);
    if kind_name == "null" {
        return Ok(Some(Value::Null));
    }
    let text = unquote(raw);
    if let Some(s) = &text {
        if s == UNAVAILABLE_VALUE
            || (s == UNAVAILABLE_BASE64
                && matches!(kind, Kind::Bytes | Kind::Decimal(Some(_)) | Kind::Infer))
        {
            return Ok(None);
        }
    } else if raw.starts_with('"') {
        return Err("invalid string".into());
    }
    if kind_name == "array" && raw.contains(UNAVAILABLE_VALUE) {
        let compact = compact_json(raw);
        if compact
            .strip_prefix("[\"")
            .and_then(|r| r.strip_suffix("\"]"))
            == Some(UNAVAILABLE_VALUE)
        {
            return Ok(None); // an unchanged TOASTed array column
        }
    }
    let mismatch = |want: &str| format!("expected {want}, found {kind_name}");
    let value = match kind {
        Kind::Null => Value::Null,
        Kind::Infer => match (kind_name, &text) {
            (_, Some(s)) => Value::Str(CompactString::from(s.as_ref())),
            ("bool", _) => Value::Bool(raw == "true"),
            ("number", _) => match raw.parse::<i64>() {
                Ok(v) => Value::Int(v),
                Err(_) => Value::Float(parse_float(raw)?),
            },
            _ => Value::Json(compact_json(raw)),
        },
        Kind::Int => match kind_name {
            "number" => Value::Int(parse_int(raw)?),
            _ => return Err(mismatch("an integer")),
        },
        Kind::Float => match (kind_name, text.as_deref()) {
            ("number", _) => Value::Float(parse_float(raw)?),
            // JSON has no NaN or infinities: Debezium writes them as strings.
            (_, Some("NaN")) => Value::Float(f64::NAN),
            (_, Some("Infinity")) => Value::Float(f64::INFINITY),
            (_, Some("-Infinity")) => Value::Float(f64::NEG_INFINITY),
            _ => return Err(mismatch("a number")),
        },
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(mismatch("a bool")),
        },
        Kind::Str => match &text {
            Some(s) => Value::Str(CompactString::from(s.as_ref())),
            None => return Err(mismatch("a string")),
        },
        Kind::Bytes => match &text {
            Some(s) => Value::Bytes(base64(s)?.into_boxed_slice()),
            None => return Err(mismatch("a base64 string")),
        },
        Kind::Json => match &text {
            Some(s) => {
                serde_json::from_str::<IgnoredAny>(s)
                    .map_err(|e| format!("invalid json text: {e}"))?;
                Value::Json(compact_json(s))
            }
            None => Value::Json(compact_json(raw)),
        },
        Kind::Decimal(scale) => match (kind_name, &text, scale) {
            ("number", _, _) => {
                Value::Decimal(parse_decimal(raw).ok_or_else(|| format!("invalid decimal {raw}"))?)
            }
            (_, Some(s), Some(scale)) => Value::Decimal(unscaled_decimal(s, scale)?),
            (_, Some(s), None) => Value::Decimal(
                parse_decimal(s)
                    .ok_or_else(|| format!("invalid decimal \"{}\"", s.escape_debug()))?,
            ),
            ("object", _, _) => Value::Decimal(variable_scale_decimal(raw)?),
            _ => return Err(mismatch("a decimal")),
        },
        Kind::VarDecimal => match kind_name {
            "object" => Value::Decimal(variable_scale_decimal(raw)?),
            _ => return Err(mismatch("an object {scale, value}")),
        },
        Kind::Date => match (kind_name, &text) {
            ("number", _) => Value::Date(
                i32::try_from(parse_int(raw)?)
                    .map_err(|_| format!("date {raw} is out of range"))?,
            ),
            (_, Some(s)) => Value::Date(
                parse_date(s).ok_or_else(|| format!("invalid date \"{}\"", s.escape_debug()))?,
            ),
            _ => return Err(mismatch("a date")),
        },
        Kind::Timestamp(unit) => match (kind_name, &text) {
            ("number", _) => Value::Timestamp(
                unit.to_micros(parse_int(raw)?)
                    .ok_or_else(|| format!("timestamp {raw} is out of range"))?,
            ),
            (_, Some(s)) => Value::Timestamp(
                parse_timestamp(s)
                    .ok_or_else(|| format!("invalid timestamp \"{}\"", s.escape_debug()))?,
            ),
            _ => return Err(mismatch("a timestamp")),
        },
        Kind::Time(unit) => match kind_name {
            "number" => Value::Int(
                unit.to_micros(parse_int(raw)?)
                    .ok_or_else(|| format!("time {raw} is out of range"))?,
            ),
            _ => return Err(mismatch("a time")),
        },
    };
    Ok(Some(value))
}

fn parse_int(raw: &str) -> Result<i64, String> {
    raw.parse::<i64>()
        .map_err(|_| format!("expected an integer, found {raw}"))
}

fn parse_float(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("number {raw} is out of range")),
    }
}

fn base64(s: &str) -> Result<Vec<u8>, String> {
    BASE64.decode(s).map_err(|_| {
        let shown: String = s.chars().take(64).collect();
        format!("invalid base64 \"{}\"", shown.escape_debug())
    })
}

/// A decimal from base64 big-endian two's-complement unscaled bytes (Connect `Decimal`).
fn unscaled_decimal(s: &str, scale: u32) -> Result<Decimal, String> {
    // 16 bytes (i128) take 24 base64 characters; decode on the stack.
    if s.len() > 24 {
        return Err("decimal is out of range".into());
    }
    let mut out = [0u8; 18];
    let n = BASE64.decode_slice(s, &mut out).map_err(|_| {
        let shown: String = s.chars().take(64).collect();
        format!("invalid base64 \"{}\"", shown.escape_debug())
    })?;
    let bytes = &out[..n];
    if bytes.is_empty() {
        return Err("empty decimal bytes".into());
    }
    if bytes.len() > 16 {
        return Err("decimal is out of range".into());
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(buf);
    Decimal::try_from_i128_with_scale(unscaled, scale).map_err(|_| "decimal is out of range".into())
}

/// `io.debezium.data.VariableScaleDecimal`: `{"scale": 2, "value": "EJo="}`.
fn variable_scale_decimal(raw: &str) -> Result<Decimal, String> {
    #[derive(Deserialize)]
    struct Var<'a> {
        scale: u32,
        #[serde(borrow)]
        value: Cow<'a, str>,
    }
    let v: Var<'_> =
        serde_json::from_str(raw).map_err(|e| format!("invalid variable scale decimal: {e}"))?;
    if v.scale > 28 {
        return Err(format!("decimal scale {} is above 28", v.scale));
    }
    unscaled_decimal(&v.value, v.scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::debezium::tests::{
        captured, change, configured, dec, file, key_id, orders_event, orders_schema,
    };
    use crate::cdc::debezium::{DebeziumDecoder, TableConfig};
    use crate::cdc::{TableId, Version};

    #[test]
    fn decimals_are_exact() {
        let Some(files) = captured() else { return };
        let decoder = configured();
        let amount = |name: &str| {
            let c = change(decoder.decode(file(&files, name)).unwrap());
            c.after.or(c.before).unwrap()[2].clone()
        };
        assert_eq!(amount("noschema-07-orders-c.json"), dec("42.50"));
        assert_eq!(amount("schema-07-orders-c.json"), dec("42.50"));
        assert_eq!(amount("noschema-08-orders-u.json"), dec("43.00"));
        assert_eq!(amount("noschema-02-orders-r.json"), dec("19.99"));
        assert_eq!(amount("noschema-03-orders-r.json"), dec("5.00"));
        assert_eq!(amount("noschema-13-orders-c.json"), dec("1.00"));
        if let Value::Decimal(d) = amount("noschema-07-orders-c.json") {
            assert_eq!(d.to_string(), "42.50");
        }
        assert_eq!(unscaled_decimal("EJo=", 2).unwrap().to_string(), "42.50");
        assert_eq!(unscaled_decimal("/w==", 2).unwrap().to_string(), "-0.01");
        assert_eq!(unscaled_decimal("/tQ=", 0).unwrap().to_string(), "-300");
        assert_eq!(unscaled_decimal("AA==", 3).unwrap().to_string(), "0.000");
        assert!(unscaled_decimal("", 2).is_err());
        assert!(unscaled_decimal("not base64!", 2).is_err());
        // 12 bytes fit a Decimal's 96-bit mantissa, 13 significant bytes do not.
        assert!(unscaled_decimal(&BASE64.encode([0x7f; 12]), 0).is_ok());
        assert!(unscaled_decimal(&BASE64.encode([0x01; 13]), 0).is_err());
        assert!(unscaled_decimal(&BASE64.encode([0xff; 16]), 0).unwrap() == Decimal::NEGATIVE_ONE);
        // 17 bytes: beyond any Decimal.
        assert!(unscaled_decimal(&BASE64.encode([1u8; 17]), 0).is_err());
        assert_eq!(
            variable_scale_decimal(r#"{"scale":2,"value":"EJo="}"#)
                .unwrap()
                .to_string(),
            "42.50"
        );
        assert!(variable_scale_decimal(r#"{"scale":29,"value":"EJo="}"#).is_err());
    }

    #[test]
    fn decimal_in_string_and_double_mode() {
        let decoder = DebeziumDecoder::new([(
            TableId::new("public", "orders"),
            TableConfig::new(orders_schema()).with_key(&["id"]),
        )])
        .unwrap();
        let after = |amount: &str| {
            change(decoder.decode(orders_event(amount).as_bytes()).unwrap())
                .after
                .unwrap()
        };
        assert_eq!(after(r#""42.50""#)[2], dec("42.50"));
        assert_eq!(after("42.5")[2], dec("42.5"));
        // Without a configured scale the bytes cannot be read: a clear error.
        let e = decoder
            .decode(orders_event(r#""EJo=""#).as_bytes())
            .unwrap_err();
        assert_eq!(e.reason, "after: column `amount`: invalid decimal \"EJo=\"");
        // A bare envelope gets its key from the configured key columns.
        let c = change(decoder.decode(orders_event("1").as_bytes()).unwrap());
        assert_eq!(c.key, key_id(7));
        assert_eq!(c.after.unwrap()[4], Value::Date(19737));
        assert_eq!(
            c.version,
            Version {
                commit_lsn: 9,
                ordinal: 10
            }
        );
    }

    #[test]
    fn unchanged_toast_column_is_listed_as_unavailable() {
        let event = r#"{"before":null,
            "after":{"id":1,"name":"__debezium_unavailable_value","email":"e","updated_at":"__debezium_unavailable_value"},
            "source":{"schema":"public","table":"customers","lsn":20,"sequence":"[\"19\",\"20\"]","txId":9,"ts_ms":1},
            "op":"u"}"#;
        for decoder in [configured(), DebeziumDecoder::default()] {
            let c = change(decoder.decode(event.as_bytes()).unwrap());
            assert_eq!(c.unavailable, vec![1, 3]);
            let after = c.after.unwrap();
            assert_eq!(after[1], Value::Null);
            assert_eq!(after[2], Value::Str("e".into()));
            assert_eq!(after[3], Value::Null);
        }
        // Bytes and precise decimals carry the placeholder as base64.
        let c = change(
            configured()
                .decode(orders_event(&format!("\"{UNAVAILABLE_BASE64}\"")).as_bytes())
                .unwrap(),
        );
        assert_eq!(c.unavailable, vec![2]);
        // In a key it is an error.
        let record = r#"{"key":{"id":"__debezium_unavailable_value"},"value":null}"#;
        assert!(configured().decode(record.as_bytes()).is_err());
    }

    #[test]
    fn unchanged_toast_array_column() {
        let event = r#"{"after":{"id":1,"tags":[ "__debezium_unavailable_value" ],"other":["a"]},
            "source":{"schema":"s","table":"t","lsn":1},"op":"u"}"#;
        let c = change(DebeziumDecoder::default().decode(event.as_bytes()).unwrap());
        assert_eq!(c.unavailable, vec![1]);
        assert_eq!(c.after.unwrap()[2], Value::Json(r#"["a"]"#.into()));
    }
}
