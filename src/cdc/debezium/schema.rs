//! Column typing: the JsonConverter `schema` block (`SchemaBlock`, parsed into a small DOM
//! only when needed), how one column's JSON value is read (`Kind`, with the time `Unit`),
//! and a table's column plan (`Plan`: names and kinds, from a `TableConfig`, from a schema
//! block, or inferred as rows name columns).
//!
//! Owns the mapping from Connect types and logical names to `Value` types; reading the values
//! themselves is `values.rs`'s.

use std::sync::Arc;

use compact_str::CompactString;
use serde_json::value::RawValue;

use super::json::{err, json_error};
use crate::format::DecodeError;
use crate::types::{DataType, Field, Schema, SchemaRef, Value};

/// The `schema` block of a JsonConverter record, as a small DOM (only built when needed).
pub(super) struct SchemaBlock(serde_json::Value);

impl SchemaBlock {
    pub(super) fn parse(raw: &RawValue) -> Result<SchemaBlock, DecodeError> {
        serde_json::from_str(raw.get())
            .map(SchemaBlock)
            .map_err(|e| err(format!("schema: {}", json_error(e))))
    }

    /// The fields of a struct schema (a key schema).
    pub(super) fn struct_fields(&self) -> Result<Vec<serde_json::Value>, DecodeError> {
        self.0
            .get("fields")
            .and_then(|f| f.as_array())
            .cloned()
            .ok_or_else(|| err("schema: struct has no fields"))
    }

    /// The fields of the envelope's `after` (or `before`) struct.
    pub(super) fn row_fields(&self) -> Result<Vec<serde_json::Value>, DecodeError> {
        let fields = self.struct_fields()?;
        ["after", "before"]
            .iter()
            .find_map(|want| {
                fields
                    .iter()
                    .find(|f| f.get("field").and_then(|n| n.as_str()) == Some(want))
                    .and_then(|f| f.get("fields"))
                    .and_then(|f| f.as_array())
                    .cloned()
            })
            .ok_or_else(|| err("schema: envelope has no before/after struct"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    Millis,
    Micros,
    Nanos,
}

impl Unit {
    pub(super) fn to_micros(self, v: i64) -> Option<i64> {
        match self {
            Unit::Millis => v.checked_mul(1000),
            Unit::Micros => Some(v),
            Unit::Nanos => Some(v.div_euclid(1000)),
        }
    }
}

/// How one column's JSON value becomes a `Value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// From the JSON itself: string, int, float, bool, nested -> json.
    Infer,
    Null,
    Int,
    Float,
    Bool,
    Str,
    Bytes,
    /// JSON text in a string (`io.debezium.data.Json`), or any JSON value.
    Json,
    /// `Some(scale)`: base64 big-endian unscaled bytes; `None`: decimal text. Numbers and
    /// `{scale, value}` objects are read either way.
    Decimal(Option<u32>),
    /// `io.debezium.data.VariableScaleDecimal`: `{"scale": s, "value": "<base64>"}`.
    VarDecimal,
    Date,
    Timestamp(Unit),
    /// Time of day, as `Int` microseconds since midnight.
    Time(Unit),
}

impl Kind {
    pub(super) fn from_data_type(t: DataType, scale: Option<u32>) -> Kind {
        match t {
            DataType::String => Kind::Str,
            DataType::Int => Kind::Int,
            DataType::Float => Kind::Float,
            DataType::Bool => Kind::Bool,
            DataType::Decimal => Kind::Decimal(scale),
            DataType::Timestamp => Kind::Timestamp(Unit::Micros),
            DataType::Date => Kind::Date,
            DataType::Bytes => Kind::Bytes,
            DataType::Json => Kind::Json,
            DataType::Null => Kind::Null,
        }
    }

    /// From a Connect schema field: its logical `name` first, then its `type`.
    fn from_connect(field: &serde_json::Value) -> Result<Kind, DecodeError> {
        let ty = field.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let name = field.get("name").and_then(|n| n.as_str()).unwrap_or("");
        Ok(match name {
            "org.apache.kafka.connect.data.Decimal" => {
                let scale = field
                    .get("parameters")
                    .and_then(|p| p.get("scale"))
                    .and_then(|s| match s {
                        serde_json::Value::String(s) => s.parse::<u32>().ok(),
                        other => other.as_u64().and_then(|v| u32::try_from(v).ok()),
                    })
                    .filter(|s| *s <= 28)
                    .ok_or_else(|| err("schema: decimal field without a valid scale"))?;
                if ty == "bytes" {
                    Kind::Decimal(Some(scale))
                } else {
                    Kind::Decimal(None)
                }
            }
            "io.debezium.data.VariableScaleDecimal" => Kind::VarDecimal,
            "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => Kind::Date,
            "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => {
                Kind::Time(Unit::Millis)
            }
            "io.debezium.time.MicroTime" => Kind::Time(Unit::Micros),
            "io.debezium.time.NanoTime" => Kind::Time(Unit::Nanos),
            "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
                Kind::Timestamp(Unit::Millis)
            }
            "io.debezium.time.MicroTimestamp" => Kind::Timestamp(Unit::Micros),
            "io.debezium.time.NanoTimestamp" => Kind::Timestamp(Unit::Nanos),
            "io.debezium.time.ZonedTimestamp" => Kind::Timestamp(Unit::Micros),
            "io.debezium.data.Json" => Kind::Json,
            _ => match ty {
                "int8" | "int16" | "int32" | "int64" => Kind::Int,
                "float32" | "float64" => Kind::Float,
                "boolean" => Kind::Bool,
                "string" => Kind::Str,
                "bytes" => Kind::Bytes,
                "array" | "map" | "struct" => Kind::Json,
                _ => Kind::Infer,
            },
        })
    }

    fn data_type(self) -> Option<DataType> {
        Some(match self {
            Kind::Infer => return None,
            Kind::Null => DataType::Null,
            Kind::Int | Kind::Time(_) => DataType::Int,
            Kind::Float => DataType::Float,
            Kind::Bool => DataType::Bool,
            Kind::Str => DataType::String,
            Kind::Bytes => DataType::Bytes,
            Kind::Json => DataType::Json,
            Kind::Decimal(_) | Kind::VarDecimal => DataType::Decimal,
            Kind::Date => DataType::Date,
            Kind::Timestamp(_) => DataType::Timestamp,
        })
    }
}

/// The columns of one table's rows and how each is decoded.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub(super) names: Vec<CompactString>,
    pub(super) kinds: Vec<Kind>,
    /// The row schema, when known up front (configured, or from a schema block).
    pub(super) schema: Option<SchemaRef>,
    /// Columns are added as the rows name them.
    pub(super) infer: bool,
}

impl Plan {
    pub(super) fn inferred() -> Plan {
        Plan {
            names: Vec::new(),
            kinds: Vec::new(),
            schema: None,
            infer: true,
        }
    }

    pub(super) fn from_connect(fields: &[serde_json::Value]) -> Result<Plan, DecodeError> {
        let mut names = Vec::with_capacity(fields.len());
        let mut kinds = Vec::with_capacity(fields.len());
        let mut schema_fields = Vec::with_capacity(fields.len());
        for f in fields {
            let name = f
                .get("field")
                .and_then(|n| n.as_str())
                .ok_or_else(|| err("schema: field without a name"))?;
            let kind = Kind::from_connect(f)?;
            let data_type = kind.data_type().unwrap_or(DataType::Json);
            names.push(CompactString::from(name));
            kinds.push(kind);
            schema_fields.push(Field::new(name, data_type));
        }
        Ok(Plan {
            names,
            kinds,
            schema: Some(Arc::new(Schema::new(schema_fields))),
            infer: false,
        })
    }

    /// Configured decimal columns without a scale take it from the schema block.
    pub(super) fn fill_scales(&mut self, fields: &[serde_json::Value]) {
        for f in fields {
            let Some(name) = f.get("field").and_then(|n| n.as_str()) else {
                continue;
            };
            if let (Some(i), Ok(kind)) = (self.find(name), Kind::from_connect(f))
                && self.kinds[i] == Kind::Decimal(None)
                && matches!(kind, Kind::Decimal(Some(_)) | Kind::VarDecimal)
            {
                self.kinds[i] = kind;
            }
        }
    }

    pub(super) fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The schema of inferred columns: each column's type is that of its value in `row`
    /// (`null` when the row has none).
    pub(super) fn infer_schema(&self, row: Option<&[Value]>) -> SchemaRef {
        let fields = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let t = row
                    .and_then(|r| r.get(i))
                    .map_or(DataType::Null, Value::data_type);
                Field::new(name, t)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use crate::cdc::debezium::tests::{captured, change, dec, file, orders_schema};
    use crate::cdc::debezium::{DebeziumDecoder, TableConfig};
    use crate::cdc::{TableId, Version};
    use crate::format::parse_timestamp;
    use crate::types::{DataType, Value};

    #[test]
    fn configured_decimal_without_scale_takes_it_from_the_schema_block() {
        let Some(files) = captured() else { return };
        let decoder = DebeziumDecoder::new([(
            TableId::new("public", "orders"),
            TableConfig::new(orders_schema()),
        )])
        .unwrap();
        let c = change(
            decoder
                .decode(file(&files, "schema-07-orders-c.json"))
                .unwrap(),
        );
        assert_eq!(c.after.unwrap()[2], dec("42.50"));
        assert!(
            decoder
                .decode(file(&files, "noschema-07-orders-c.json"))
                .is_err()
        );
    }

    #[test]
    fn logical_types_from_the_schema_block() {
        let field = |ty: &str, name: &str, f: &str| {
            if name.is_empty() {
                format!(r#"{{"type":"{ty}","optional":true,"field":"{f}"}}"#)
            } else {
                format!(r#"{{"type":"{ty}","optional":true,"name":"{name}","field":"{f}"}}"#)
            }
        };
        let fields = [
            field("int64", "", "id"),
            field("struct", "io.debezium.data.VariableScaleDecimal", "vsd"),
            field("int64", "io.debezium.time.MicroTimestamp", "mts"),
            field("int64", "io.debezium.time.Timestamp", "ts"),
            field("int64", "io.debezium.time.NanoTimestamp", "nts"),
            field("string", "io.debezium.time.ZonedTimestamp", "zts"),
            field("int32", "io.debezium.time.Date", "d"),
            field("int64", "io.debezium.time.MicroTime", "t"),
            field("int32", "io.debezium.time.Time", "tms"),
            field("string", "io.debezium.data.Json", "j"),
            field("string", "io.debezium.data.Uuid", "u"),
            field("bytes", "", "b"),
            field("array", "", "arr"),
            field("boolean", "", "flag"),
            field("float64", "", "f"),
        ]
        .join(",");
        let event = format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":[{fields}],"optional":true,"field":"after"}}],"name":"x.Envelope"}},
               "payload":{{"before":null,"after":{{"id":1,"vsd":{{"scale":3,"value":"EJo="}},"mts":1000001,"ts":1500,"nts":1000000999,
                 "zts":"2026-01-01T01:00:00+01:00","d":-1,"t":3600000000,"tms":1000,"j":"{{ \"a\": [1, 2] }}",
                 "u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","b":"AQI=","arr":[1, 2],"flag":true,"f":1.5}},
                 "source":{{"schema":"s","table":"t","lsn":5}},"op":"c"}}}}"#
        );
        let c = change(DebeziumDecoder::default().decode(event.as_bytes()).unwrap());
        let after = c.after.unwrap();
        let expected = vec![
            Value::Int(1),
            dec("4.250"),
            Value::Timestamp(1000001),
            Value::Timestamp(1500000),
            Value::Timestamp(1000000),
            Value::Timestamp(parse_timestamp("2026-01-01T00:00:00Z").unwrap()),
            Value::Date(-1),
            Value::Int(3600000000),
            Value::Int(1000000),
            Value::Json(r#"{"a":[1,2]}"#.into()),
            Value::Str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Value::Bytes(vec![1, 2].into_boxed_slice()),
            Value::Json("[1,2]".into()),
            Value::Bool(true),
            Value::Float(1.5),
        ];
        assert_eq!(after, expected);
        assert_eq!(c.columns.field(1).data_type, DataType::Decimal);
        assert_eq!(c.columns.field(2).data_type, DataType::Timestamp);
        assert_eq!(c.columns.field(7).data_type, DataType::Int);
        // No LSN in a sequence-less source: commit key falls back to the LSN.
        assert_eq!(
            c.version,
            Version {
                commit_lsn: 5,
                ordinal: 5
            }
        );
    }
}
