//! Change rows: how a `Change` of one table travels through the dataflow. A CDC source
//! emits, per table, rows of the table's columns prefixed by five metadata columns:
//!
//! | column         | type   | meaning                                                        |
//! |----------------|--------|----------------------------------------------------------------|
//! | `_op`          | string | `c u d r t`, or `snapshot_end` (see below)                     |
//! | `_lsn`         | int    | `Version::commit_lsn`                                          |
//! | `_ordinal`     | int    | `Version::ordinal`                                             |
//! | `_snapshot`    | string | `source.snapshot` (`first`, `true`, …, `false`)                |
//! | `_unavailable` | json   | names of unchanged-TOAST columns (their value is `null`), or null |
//!
//! For `c`, `u` and `r` the table columns hold the new row (`after`); for `d` the old row
//! (`before`: with default replica identity only the key columns are real); for `t`
//! (truncate) they are null. A row with `_op = snapshot_end` and everything else null says
//! that the table's initial snapshot is complete: every row of it came before. The event
//! time of a change row is the commit time (`source.ts_ms`).
//!
//! Owns only the layout (building and reading rows); no I/O, no state.

use std::sync::Arc;

use crate::cdc::{Change, Op, Version};
use crate::types::{Batch, DataType, EventTime, Field, Schema, SchemaRef, Value};

/// Metadata columns before the table's own columns.
pub const META_COLUMNS: usize = 5;
pub const OP: usize = 0;
pub const LSN: usize = 1;
pub const ORDINAL: usize = 2;
pub const SNAPSHOT: usize = 3;
pub const UNAVAILABLE: usize = 4;

/// `_op` of the row that ends a table's snapshot.
pub const SNAPSHOT_END: &str = "snapshot_end";

/// The schema of change rows for a table with columns `table`.
pub fn change_schema(table: &Schema) -> SchemaRef {
    let mut fields = vec![
        Field::new("_op", DataType::String),
        Field::new("_lsn", DataType::Int),
        Field::new("_ordinal", DataType::Int),
        Field::new("_snapshot", DataType::String),
        Field::new("_unavailable", DataType::Json),
    ];
    fields.extend(table.fields.iter().cloned());
    Arc::new(Schema::new(fields))
}

/// Whether `schema` is a change-row schema (starts with the metadata columns).
pub fn is_change_schema(schema: &Schema) -> bool {
    schema.len() >= META_COLUMNS
        && schema
            .fields
            .iter()
            .zip(["_op", "_lsn", "_ordinal", "_snapshot", "_unavailable"])
            .all(|(f, name)| f.name == name)
}

/// The table's own columns of a change-row schema.
pub fn table_schema(change_schema: &Schema) -> Schema {
    Schema::new(change_schema.fields[META_COLUMNS..].to_vec())
}

/// Appends `change` to `batch` (a change-row batch of its table) at `event_time`.
/// `before` on a delete without one (a connector that sends only the key) is rebuilt from
/// the key by column name.
pub fn push_change(batch: &mut Batch, change: &Change, event_time: EventTime) {
    let width = batch.width() - META_COLUMNS;
    let unavailable = if change.unavailable.is_empty() {
        Value::Null
    } else {
        let names: Vec<&str> = change
            .unavailable
            .iter()
            .map(|&i| change.columns.fields[i].name.as_str())
            .collect();
        Value::Json(
            serde_json::to_string(&names)
                .expect("names serialize")
                .into_boxed_str(),
        )
    };
    batch.push_value(Value::from(change.op.code()));
    batch.push_value(Value::Int(change.version.commit_lsn as i64));
    batch.push_value(Value::Int(change.version.ordinal as i64));
    batch.push_value(Value::from(change.snapshot.as_str()));
    batch.push_value(unavailable);
    let row = match change.op {
        Op::Delete => change.before.as_deref(),
        Op::Truncate | Op::Message => None,
        _ => change.after.as_deref(),
    };
    match row {
        Some(values) => {
            for i in 0..width {
                batch.push_value(values.get(i).cloned().unwrap_or_default());
            }
        }
        None => {
            for f in &change.columns.fields[..width.min(change.columns.len())] {
                let v = change
                    .key
                    .iter()
                    .find(|(k, _)| *k == f.name)
                    .map(|(_, v)| v.clone());
                batch.push_value(v.unwrap_or_default());
            }
            for _ in change.columns.len()..width {
                batch.push_value(Value::Null);
            }
        }
    }
    batch.finish_row(event_time);
}

/// Appends the row that ends a table's snapshot.
pub fn push_snapshot_end(batch: &mut Batch, event_time: EventTime) {
    batch.push_value(Value::from(SNAPSHOT_END));
    for _ in 1..batch.width() {
        batch.push_value(Value::Null);
    }
    batch.finish_row(event_time);
}

/// What a change row asks of a materialized table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOp {
    /// Insert or update (`c`, `u`, `r`): the table columns are the new row.
    Upsert {
        snapshot: bool,
    },
    /// `d`: the key columns name the row to delete.
    Delete,
    Truncate,
    SnapshotEnd,
    /// An op this layout does not know: the row is not a change row.
    Unknown,
}

/// Reads the operation of a change row.
pub fn row_op(row: &[Value]) -> RowOp {
    match row[OP].as_str() {
        Some("c" | "u") => RowOp::Upsert { snapshot: false },
        Some("r") => RowOp::Upsert { snapshot: true },
        Some("d") => RowOp::Delete,
        Some("t") => RowOp::Truncate,
        Some(SNAPSHOT_END) => RowOp::SnapshotEnd,
        _ => RowOp::Unknown,
    }
}

/// Reads the version of a change row.
pub fn row_version(row: &[Value]) -> Version {
    let n = |v: &Value| v.as_i64().unwrap_or(0).max(0) as u64;
    Version {
        commit_lsn: n(&row[LSN]),
        ordinal: n(&row[ORDINAL]),
    }
}

/// Names of the unchanged-TOAST columns of a change row (usually none).
pub fn row_unavailable(row: &[Value]) -> Vec<String> {
    match &row[UNAVAILABLE] {
        Value::Json(text) => serde_json::from_str(text).unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::{SnapshotMarker, TableId};

    #[test]
    fn a_change_round_trips_through_its_row() {
        let table = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("note", DataType::String),
        ]));
        let schema = change_schema(&table);
        assert!(is_change_schema(&schema));
        assert_eq!(table_schema(&schema), *table);
        let mut b = Batch::new(schema);
        let change = Change {
            table: TableId::new("public", "t"),
            op: Op::Update,
            columns: table.clone(),
            key: vec![("id".into(), Value::Int(7))],
            before: None,
            after: Some(vec![Value::Int(7), Value::Null]),
            unavailable: vec![1],
            version: Version {
                commit_lsn: 10,
                ordinal: 12,
            },
            snapshot: SnapshotMarker::False,
            tx_id: None,
            source_ts_ms: Some(5),
        };
        push_change(&mut b, &change, 5);
        let delete = Change {
            op: Op::Delete,
            before: None,
            after: None,
            unavailable: vec![],
            ..change.clone()
        };
        push_change(&mut b, &delete, 6);
        push_snapshot_end(&mut b, 7);
        let r0 = b.row(0);
        assert_eq!(row_op(r0), RowOp::Upsert { snapshot: false });
        assert_eq!(
            row_version(r0),
            Version {
                commit_lsn: 10,
                ordinal: 12
            }
        );
        assert_eq!(row_unavailable(r0), vec!["note".to_string()]);
        assert_eq!(&r0[META_COLUMNS..], &[Value::Int(7), Value::Null]);
        // A delete without `before` keeps its key from the record key.
        assert_eq!(row_op(b.row(1)), RowOp::Delete);
        assert_eq!(&b.row(1)[META_COLUMNS..], &[Value::Int(7), Value::Null]);
        assert_eq!(row_op(b.row(2)), RowOp::SnapshotEnd);
        assert_eq!(b.event_times(), &[5, 6, 7]);
    }
}
