//! Postgres's text form of a column value (what pgoutput sends and what a snapshot query
//! returns, under the session settings `wire::Connection` sets: UTC, ISO dates) converted to
//! the `Value` of the column's configured type, giving what the Debezium decoding path gives
//! for the same value:
//! - `int`: int2/int4/int8/oid text; `float`: float4/float8, `NaN` and `±Infinity`
//!   included; `bool`: `t`/`f`; `decimal`: numeric, exactly (`NaN` and beyond 28 digits are
//!   errors, as Debezium's precise mode cannot carry them either);
//! - `timestamp`: timestamp (as UTC) and timestamptz, microseconds; `infinity`/`-infinity`
//!   are the largest and smallest representable times; `date`: days since the epoch,
//!   `infinity` likewise;
//! - `bytes`: bytea's hex form (`\x…`); `json`: json/jsonb text, checked and compacted
//!   (key order kept), or an array as Debezium's JSON array (`arrays`); `int` of a `time`
//!   column: microseconds since midnight;
//! - `string`: the text as Postgres writes it (text, varchar, char, uuid, enums, inet, …).
//!
//! An unconfigured table's column gets a type from its Postgres type (`data_type_of`).
//! Pure: a value that does not convert is an error naming the type, never a panic.

use compact_str::CompactString;

use super::arrays::{array_json, element_of, time_micros};
use crate::format::{parse_date, parse_decimal, parse_timestamp};
use crate::types::{DataType, Value};

/// Postgres type OIDs this module knows by number.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
    /// `text[]`: what a user-defined array type (an enum's, a domain's) converts as, its
    /// elements as strings.
    pub const TEXT_ARRAY: u32 = 1009;
}

/// The type a column of Postgres type `type_oid` gets when its table is not configured.
pub fn data_type_of(type_oid: u32) -> DataType {
    match type_oid {
        oid::BOOL => DataType::Bool,
        oid::BYTEA => DataType::Bytes,
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::TIME => DataType::Int,
        oid::FLOAT4 | oid::FLOAT8 => DataType::Float,
        oid::NUMERIC => DataType::Decimal,
        oid::DATE => DataType::Date,
        oid::TIMESTAMP | oid::TIMESTAMPTZ => DataType::Timestamp,
        oid::JSON | oid::JSONB => DataType::Json,
        _ if element_of(type_oid).is_some() => DataType::Json,
        _ => DataType::String,
    }
}

/// Converts `text`, a value of Postgres type `type_oid`, to a value of type `ty`.
pub fn from_text(text: &str, ty: DataType, type_oid: u32) -> Result<Value, String> {
    let bad = |what: &str| format!("{} is not {what}", quoted(text));
    Ok(match ty {
        DataType::String => Value::Str(CompactString::from(text)),
        DataType::Int if type_oid == oid::TIME => {
            Value::Int(time_micros(text).ok_or_else(|| bad("a time"))?)
        }
        DataType::Int => Value::Int(text.parse().map_err(|_| bad("an integer"))?),
        DataType::Float => Value::Float(match text {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => text.parse().map_err(|_| bad("a float"))?,
        }),
        DataType::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(bad("a bool (t or f)")),
        },
        DataType::Decimal => {
            Value::Decimal(parse_decimal(text).ok_or_else(|| bad("an exact decimal"))?)
        }
        DataType::Timestamp => Value::Timestamp(match text {
            "infinity" => i64::MAX,
            "-infinity" => i64::MIN,
            _ => parse_timestamp(text).ok_or_else(|| bad("a timestamp"))?,
        }),
        DataType::Date => Value::Date(match text {
            "infinity" => i32::MAX,
            "-infinity" => i32::MIN,
            _ => parse_date(text).ok_or_else(|| bad("a date"))?,
        }),
        DataType::Bytes => Value::Bytes(hex_bytea(text).ok_or_else(|| bad("bytea hex"))?),
        DataType::Json => match element_of(type_oid) {
            Some(element) => Value::Json(array_json(text, element)?.into()),
            None => json_text(text)?,
        },
        DataType::Null => Value::Null,
    })
}

/// JSON text (json, jsonb, or a text column holding JSON), checked and compacted.
fn json_text(text: &str) -> Result<Value, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| format!("invalid json text: {e}"))?;
    Ok(Value::Json(crate::format::json::compact_json(text)))
}

/// A value's text for messages: at most 40 characters.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        format!("\"{}…\"", cut.escape_debug())
    } else {
        format!("\"{}\"", cut.escape_debug())
    }
}

/// bytea's hex output form, `\x0aff…`.
fn hex_bytea(text: &str) -> Option<Box<[u8]>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_each_type_as_debezium_would() {
        let t = |text, ty| from_text(text, ty, 0).unwrap();
        assert_eq!(t("-42", DataType::Int), Value::Int(-42));
        assert_eq!(t("t", DataType::Bool), Value::Bool(true));
        assert_eq!(
            t("9.80", DataType::Decimal),
            Value::Decimal("9.80".parse().unwrap())
        );
        assert_eq!(t("2026-01-02", DataType::Date), Value::Date(20_455));
        assert_eq!(
            t("2026-01-01 00:00:04.217+00", DataType::Timestamp),
            Value::Timestamp(1_767_225_604_217_000)
        );
        assert_eq!(
            t("2026-01-01 00:00:04.217", DataType::Timestamp),
            Value::Timestamp(1_767_225_604_217_000)
        );
        assert_eq!(
            t("infinity", DataType::Timestamp),
            Value::Timestamp(i64::MAX)
        );
        assert_eq!(
            t("\\x00ff10", DataType::Bytes),
            Value::Bytes([0, 255, 16].into())
        );
        assert_eq!(
            t("{\"b\": 1, \"a\": [1, 2]}", DataType::Json),
            Value::Json("{\"b\":1,\"a\":[1,2]}".into())
        );
        assert!(matches!(t("NaN", DataType::Float), Value::Float(f) if f.is_nan()));
        assert_eq!(t("1e-07", DataType::Float), Value::Float(1e-7));
        assert_eq!(
            t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", DataType::String),
            Value::from("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
    }

    #[test]
    fn values_that_do_not_convert_are_errors() {
        for (text, ty) in [
            ("x", DataType::Int),
            ("true", DataType::Bool),
            ("NaN", DataType::Decimal),
            ("2026-13-01", DataType::Date),
            ("0044-03-15 BC", DataType::Date),
            ("\\x0", DataType::Bytes),
            ("0a", DataType::Bytes),
            ("\\xzz", DataType::Bytes),
            ("{", DataType::Json),
        ] {
            let e = from_text(text, ty, 0).unwrap_err();
            assert!(e.contains(&text[..1]) || e.contains("json"), "{e}");
        }
        let long = "9".repeat(100);
        assert!(
            from_text(&long, DataType::Int, 0)
                .unwrap_err()
                .contains('…')
        );
        assert!(from_text("{1,x}", DataType::Json, 1007).is_err());
        assert!(from_text("25:00:00", DataType::Int, oid::TIME).is_err());
    }

    #[test]
    fn unconfigured_columns_take_a_type_from_postgres() {
        assert_eq!(data_type_of(oid::NUMERIC), DataType::Decimal);
        assert_eq!(data_type_of(oid::TIMESTAMPTZ), DataType::Timestamp);
        assert_eq!(data_type_of(2950), DataType::String, "uuid");
        assert_eq!(data_type_of(1007), DataType::Json, "int4[]");
        assert_eq!(data_type_of(oid::TIME), DataType::Int);
    }

    #[test]
    fn arrays_and_times_convert_by_their_postgres_type() {
        assert_eq!(
            from_text("{1,NULL}", DataType::Json, 1007).unwrap(),
            Value::Json("[1,null]".into())
        );
        // An enum's array (a user type the caller knows as an array: text[]) and a domain
        // over jsonb (a user type it does not), the empty object included.
        assert_eq!(
            from_text("{calm,\"tense, very\"}", DataType::Json, oid::TEXT_ARRAY).unwrap(),
            Value::Json("[\"calm\",\"tense, very\"]".into())
        );
        assert_eq!(
            from_text("{\"a\": 1}", DataType::Json, 16_401).unwrap(),
            Value::Json("{\"a\":1}".into())
        );
        assert_eq!(
            from_text("{}", DataType::Json, 16_401).unwrap(),
            Value::Json("{}".into())
        );
        assert_eq!(
            from_text("{\"a\": 1}", DataType::Json, oid::JSONB).unwrap(),
            Value::Json("{\"a\":1}".into())
        );
        assert_eq!(
            from_text("10:00:00.5", DataType::Int, oid::TIME).unwrap(),
            Value::Int(36_000_500_000)
        );
    }
}
