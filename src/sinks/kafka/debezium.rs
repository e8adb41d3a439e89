//! The Kafka sink's `format: debezium`: change rows of a table port (`cdc::rows`) written as
//! Debezium change events, so that Watershed can sit between a CDC source and consumers of
//! Debezium's topics. Each change becomes the JSON converter's event without the schema
//! envelope, keyed by the table's key columns as a JSON object:
//!
//! `{"before":…,"after":…,"source":{"version":"watershed","connector":"watershed","name":<pipeline>,
//! "ts_ms":<commit time>,"snapshot":<marker>,"db":"","schema":…,"table":…,"lsn":<_ordinal>,
//! "sequence":"[\"<_lsn>\",\"<_ordinal>\"]"},"op":…,"ts_ms":<commit time>}`
//!
//! - `c`, `u` and `r` carry the row as `after` (`before` null: change rows keep no before
//!   image of an update); `d` carries it as `before` and is followed by a tombstone (the key
//!   with a null value), as Debezium does; `t` (truncate) has neither and no key.
//! - An unchanged TOASTed column (`_unavailable`) is Debezium's placeholder,
//!   `__debezium_unavailable_value` (base64 of it for `bytes`), never a null: a null would
//!   tell consumers the value was cleared.
//! - `lsn` and `sequence` give back the change's version (`_lsn`, `_ordinal`), so a
//!   Debezium reader orders the changes as this pipeline did.
//! - `source.snapshot` is the change's own marker (`_snapshot`); a snapshot read directly
//!   followed in its batch by the table's `snapshot_end` row is marked
//!   `last_in_data_collection` (the end of a snapshot read from files carries no marker of
//!   its own). The `snapshot_end` row itself is not written.

use crate::cdc::debezium::UNAVAILABLE_VALUE;
use crate::cdc::rows::{LSN, META_COLUMNS, OP, ORDINAL, SNAPSHOT, SNAPSHOT_END, UNAVAILABLE};
use crate::format::json::{JsonEncoder, write_json_str};
use crate::types::{Batch, DataType, SchemaRef, Value};

/// How a table port's rows become Debezium events.
#[derive(Clone, Debug)]
pub struct DebeziumEvents {
    columns: SchemaRef,
    schema: String,
    table: String,
    pipeline: String,
    row: JsonEncoder,
    key: JsonEncoder,
}

/// One event to send: key and value (`None`: a tombstone).
pub struct Event<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl DebeziumEvents {
    /// Events of change rows of `schema` (a change-row schema) for table `schema_name.table`,
    /// keyed by `key` (indexes into `schema`, among its table columns).
    pub fn new(
        schema: SchemaRef,
        schema_name: &str,
        table: &str,
        key: Vec<usize>,
        pipeline: &str,
    ) -> DebeziumEvents {
        let columns: Vec<usize> = (META_COLUMNS..schema.len()).collect();
        DebeziumEvents {
            columns: schema.clone(),
            schema: schema_name.to_string(),
            table: table.to_string(),
            pipeline: pipeline.to_string(),
            row: JsonEncoder::with_columns(schema.clone(), Some(columns)),
            key: JsonEncoder::with_columns(schema, Some(key)),
        }
    }

    /// The events of row `i` of `batch`, handed to `emit` in order (none for a
    /// `snapshot_end` row); `key` and `value` are scratch buffers.
    pub fn encode<E>(
        &self,
        batch: &Batch,
        i: usize,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
        mut emit: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let row = batch.row(i);
        let op = row[OP].as_str().unwrap_or("");
        if op == SNAPSHOT_END {
            return Ok(());
        }
        let at = batch.event_time(i);
        let ends_snapshot =
            op == "r" && i + 1 < batch.len() && batch.row(i + 1)[OP].as_str() == Some(SNAPSHOT_END);
        let marker = if ends_snapshot {
            "last_in_data_collection"
        } else {
            row[SNAPSHOT].as_str().unwrap_or("false")
        };
        value.clear();
        value.extend_from_slice(b"{\"before\":");
        match op {
            "d" => self.row.encode_row(row, value),
            _ => value.extend_from_slice(b"null"),
        }
        value.extend_from_slice(b",\"after\":");
        match op {
            "c" | "u" | "r" => match self.with_placeholders(row) {
                Some(row) => self.row.encode_row(&row, value),
                None => self.row.encode_row(row, value),
            },
            _ => value.extend_from_slice(b"null"),
        }
        value.extend_from_slice(
            b",\"source\":{\"version\":\"watershed\",\"connector\":\"watershed\",\"name\":",
        );
        write_json_str(&self.pipeline, value);
        value.extend_from_slice(b",\"ts_ms\":");
        value.extend_from_slice(itoa::Buffer::new().format(at).as_bytes());
        value.extend_from_slice(b",\"snapshot\":");
        write_json_str(marker, value);
        value.extend_from_slice(b",\"db\":\"\",\"schema\":");
        write_json_str(&self.schema, value);
        value.extend_from_slice(b",\"table\":");
        write_json_str(&self.table, value);
        let (lsn, ordinal) = (int(&row[LSN]), int(&row[ORDINAL]));
        value.extend_from_slice(b",\"lsn\":");
        value.extend_from_slice(itoa::Buffer::new().format(ordinal).as_bytes());
        value.extend_from_slice(b",\"sequence\":\"[\\\"");
        value.extend_from_slice(itoa::Buffer::new().format(lsn).as_bytes());
        value.extend_from_slice(b"\\\",\\\"");
        value.extend_from_slice(itoa::Buffer::new().format(ordinal).as_bytes());
        value.extend_from_slice(b"\\\"]\"},\"op\":");
        write_json_str(op, value);
        value.extend_from_slice(b",\"ts_ms\":");
        value.extend_from_slice(itoa::Buffer::new().format(at).as_bytes());
        value.push(b'}');
        if op == "t" {
            return emit(Event {
                key: None,
                value: Some(value),
            });
        }
        key.clear();
        self.key.encode_row(row, key);
        emit(Event {
            key: Some(key),
            value: Some(value),
        })?;
        if op == "d" {
            emit(Event {
                key: Some(key),
                value: None,
            })?;
        }
        Ok(())
    }
}

impl DebeziumEvents {
    /// `row` with its unchanged TOASTed columns (`_unavailable`) set to Debezium's
    /// placeholder; `None` when it has none.
    fn with_placeholders(&self, row: &[Value]) -> Option<Vec<Value>> {
        let Value::Json(names) = &row[UNAVAILABLE] else {
            return None;
        };
        let names: Vec<String> = serde_json::from_str(names).ok()?;
        let mut row = row.to_vec();
        for name in names {
            if let Some(i) = self.columns.index_of(&name).filter(|&i| i >= META_COLUMNS) {
                row[i] = match self.columns.field(i).data_type {
                    DataType::Bytes => Value::Bytes(UNAVAILABLE_VALUE.as_bytes().into()),
                    _ => Value::from(UNAVAILABLE_VALUE),
                };
            }
        }
        Some(row)
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cdc::rows::change_schema;
    use crate::cdc::{DebeziumDecoder, Decoded, TableConfig, TableId};
    use crate::types::{DataType, Field, Schema};

    fn events() -> (DebeziumEvents, Batch, TableConfig) {
        let table = Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("name", DataType::String),
        ]);
        let config = TableConfig::new(Arc::new(table.clone())).with_key(&["id"]);
        let schema = change_schema(&table);
        let mut b = Batch::new(schema.clone());
        let row = |op: &str, lsn: i64, ord: i64, snap: &str, id: i64, name: Option<&str>| {
            vec![
                Value::from(op),
                Value::Int(lsn),
                Value::Int(ord),
                Value::from(snap),
                Value::Null,
                Value::Int(id),
                name.map_or(Value::Null, Value::from),
            ]
        };
        b.push_row(row("r", 10, 10, "true", 1, Some("a \"quoted\"")), 1000);
        b.push_row(row("r", 10, 10, "true", 2, Some("b")), 1000);
        b.push_row(
            vec![
                Value::from(SNAPSHOT_END),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            1000,
        );
        b.push_row(row("u", 20, 21, "false", 1, Some("a2")), 2000);
        b.push_row(row("d", 30, 31, "false", 2, None), 3000);
        let key = vec![META_COLUMNS];
        (
            DebeziumEvents::new(schema, "public", "people", key, "p"),
            b,
            config,
        )
    }

    #[test]
    fn change_rows_become_debezium_events_that_decode_to_the_same_changes() {
        let (enc, batch, config) = events();
        type Record = (Option<Vec<u8>>, Option<Vec<u8>>);
        let mut out: Vec<Record> = Vec::new();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for i in 0..batch.len() {
            enc.encode(&batch, i, &mut k, &mut v, |e| {
                out.push((e.key.map(<[u8]>::to_vec), e.value.map(<[u8]>::to_vec)));
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        // Two reads, an update, a delete and its tombstone; the end row is not written.
        assert_eq!(out.len(), 5);
        assert_eq!(out[4].1, None, "a tombstone follows the delete");
        assert_eq!(out[4].0.as_deref(), Some(&br#"{"id":2}"#[..]));
        let decoder = DebeziumDecoder::new([(TableId::new("public", "people"), config)]).unwrap();
        let changes: Vec<_> = out[..4]
            .iter()
            .map(
                |(_, v)| match decoder.decode(v.as_deref().unwrap()).unwrap() {
                    Decoded::Change(c) => c,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(
            changes[1].snapshot,
            crate::cdc::SnapshotMarker::LastInDataCollection
        );
        assert_eq!(changes[0].snapshot, crate::cdc::SnapshotMarker::True);
        assert_eq!(changes[2].version.commit_lsn, 20);
        assert_eq!(changes[2].version.ordinal, 21);
        assert_eq!(changes[3].op, crate::cdc::Op::Delete);
        assert_eq!(changes[2].source_ts_ms, Some(2000));
        let text = String::from_utf8(out[0].1.clone().unwrap()).unwrap();
        assert!(
            text.contains(r#""after":{"id":1,"name":"a \"quoted\""}"#),
            "{text}"
        );
    }

    #[test]
    fn an_unchanged_toasted_column_is_written_as_debezium_s_placeholder() {
        let table = Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("doc", DataType::String),
            Field::new("blob", DataType::Bytes),
        ]);
        let config = TableConfig::new(Arc::new(table.clone())).with_key(&["id"]);
        let schema = change_schema(&table);
        let mut b = Batch::new(schema.clone());
        b.push_row(
            vec![
                Value::from("u"),
                Value::Int(20),
                Value::Int(21),
                Value::from("false"),
                Value::Json("[\"doc\",\"blob\"]".into()),
                Value::Int(1),
                Value::Null,
                Value::Null,
            ],
            2000,
        );
        let enc = DebeziumEvents::new(schema, "public", "docs", vec![META_COLUMNS], "p");
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut value = Vec::new();
        enc.encode(&b, 0, &mut k, &mut v, |e| {
            value = e.value.unwrap().to_vec();
            Ok::<(), ()>(())
        })
        .unwrap();
        let text = String::from_utf8(value.clone()).unwrap();
        assert!(
            text.contains(
                r#""after":{"id":1,"doc":"__debezium_unavailable_value","blob":"X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="}"#
            ),
            "{text}"
        );
        let decoder = DebeziumDecoder::new([(TableId::new("public", "docs"), config)]).unwrap();
        let Decoded::Change(c) = decoder.decode(&value).unwrap() else {
            panic!("a change")
        };
        assert_eq!(c.unavailable.len(), 2, "{c:?}");
    }
}
