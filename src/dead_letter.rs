//! The `dead_letter` record: what every component emits instead of failing on bad data.
//! A dead letter carries where the record came from, why it was rejected and the record
//! itself, so nothing is lost and the cause can be fixed and the record replayed.

use std::sync::{Arc, OnceLock};

use crate::types::{Batch, DataType, EventTime, Field, Schema, SchemaRef, Value};

/// Schema of every `dead_letter` port: `node, partition, position, reason, raw`.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("node", DataType::String),
                Field::new("partition", DataType::String),
                Field::new("position", DataType::String),
                Field::new("reason", DataType::String),
                Field::new("raw", DataType::String),
            ]))
        })
        .clone()
}

/// Appends one dead letter to `batch` (which must have `schema()`).
pub fn push(
    batch: &mut Batch,
    node: &str,
    partition: &str,
    position: &str,
    reason: &str,
    raw: &[u8],
    at: EventTime,
) {
    batch.push_row(
        [
            Value::from(node),
            Value::from(partition),
            Value::from(position),
            Value::from(reason),
            Value::Str(String::from_utf8_lossy(raw).as_ref().into()),
        ],
        at,
    );
}
