//! The change-stream file source's glue: Debezium records (JSON lines, one record per line:
//! bare values or `{key, value}` records) read by the file source (`LineDecoder`), decoded by
//! a `ChangeFormat` (`DebeziumDecoder`) and handed to the change-stream machinery
//! (`cdc::stream::ChangeStream`), which demultiplexes them into one port per configured table
//! and tracks progress: see its header for the rules (commit time as event time, heartbeats,
//! snapshot ends, skipped records). Read with `sequential` files, the snapshot files first:
//! the end of the last snapshot file ends every table's snapshot.
//!
//! This file owns only what is about files: a line that does not decode goes to
//! `dead_letter` (with the file and line, by the file source), and which partitions are
//! snapshot files.

use crate::cdc::stream::ArrivalOrder;
use crate::cdc::{ChangeFormat, ChangeStream, DebeziumDecoder};
use crate::dataflow::{PortSpec, ReadBuffers};
use crate::format::DecodeError;
use crate::sources::file::LineDecoder;
use crate::types::SchemaRef;

pub use crate::cdc::stream::{CdcTable, main_schema};

/// A change stream's `tables:`, checked, with what its source declares of them.
pub struct ChangeTables {
    pub tables: Vec<CdcTable>,
    /// The source's ports 2.., one per table.
    pub ports: Vec<PortSpec>,
    /// The primary key of each table port, by port index.
    pub keys: Vec<(usize, Vec<String>)>,
}

/// The `tables:` of a change-stream source block (of any transport), checked: an
/// `event_time.field` is reported (the commit time is the event time), missing or undecodable
/// tables too (`None`).
pub fn change_tables(cx: &mut crate::config::component::SourceContext<'_>) -> Option<ChangeTables> {
    if let Some(f) = cx.event_time_field {
        let field = format!("{}.event_time.field", cx.field_prefix());
        cx.issues.at(
            &f.referenced,
            field,
            "a change stream's event time is the commit time (`source.ts_ms`); remove `field`",
        );
    }
    change_tables_with_time_column(cx)
}

/// `change_tables` for a transport whose changes can take their event time from a column
/// (`event_time.field`, checked by the caller).
pub fn change_tables_with_time_column(
    cx: &mut crate::config::component::SourceContext<'_>,
) -> Option<ChangeTables> {
    let tables = cx.change_tables(
        "a change stream (`format: debezium`) needs its `tables:` (port: {key, columns})",
    )?;
    if let Err(e) = ChangeDecoder::new(cx.name, tables.clone(), 0) {
        let (at, field) = (cx.location, format!("{}.tables", cx.field_prefix()));
        cx.issues.at(&at, field, e.reason);
        return None;
    }
    let keys = tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                2 + i,
                t.config.key_columns.iter().map(|k| k.to_string()).collect(),
            )
        })
        .collect();
    Some(ChangeTables {
        ports: ChangeDecoder::table_ports(&tables),
        tables,
        keys,
    })
}

/// Decodes lines of change records with a format (Debezium by default) into change rows,
/// one extra port per table.
pub struct ChangeDecoder<F = DebeziumDecoder> {
    format: F,
    stream: ChangeStream,
    /// Partitions before this index are snapshot files.
    snapshot_partitions: usize,
}

impl ChangeDecoder {
    /// Debezium JSON lines of `tables`; the first `snapshot_partitions` files are the snapshot.
    pub fn new(
        node: &str,
        tables: Vec<CdcTable>,
        snapshot_partitions: usize,
    ) -> Result<ChangeDecoder, DecodeError> {
        let format = DebeziumDecoder::new(tables.iter().map(|t| (t.id.clone(), t.config.clone())))?;
        Ok(ChangeDecoder::with_format(
            format,
            ChangeStream::new(node, tables),
            snapshot_partitions,
        ))
    }

    /// Ports of the tables, in order (the source's ports 2..).
    pub fn table_ports(tables: &[CdcTable]) -> Vec<PortSpec> {
        ChangeStream::table_ports(tables)
    }

    /// Debezium records of `tables`, each table from a log of its own (a topic per table):
    /// see `ChangeStream::with_separate_logs`.
    pub fn separate_logs(node: &str, tables: Vec<CdcTable>) -> Result<ChangeDecoder, DecodeError> {
        let format = DebeziumDecoder::new(tables.iter().map(|t| (t.id.clone(), t.config.clone())))?;
        Ok(ChangeDecoder::with_format(
            format,
            ChangeStream::new(node, tables).with_separate_logs(),
            0,
        ))
    }

    /// Whether the `last` marker was read while some table's snapshot has not ended.
    pub fn snapshot_end_pending(&self) -> bool {
        self.stream.snapshot_end_pending()
    }

    /// Ends the snapshot of every table not ended yet (every log has been read to its end
    /// after the `last` marker).
    pub fn end_snapshots(&mut self, out: &mut ReadBuffers) {
        self.stream.end_snapshots(out)
    }
}

impl<F: ChangeFormat> ChangeDecoder<F> {
    /// Lines decoded by `format` into `stream`; the first `snapshot_partitions` files are the
    /// snapshot.
    pub fn with_format(format: F, stream: ChangeStream, snapshot_partitions: usize) -> Self {
        ChangeDecoder {
            format,
            stream,
            snapshot_partitions,
        }
    }
}

impl<F: ChangeFormat> LineDecoder for ChangeDecoder<F> {
    fn schema(&self) -> SchemaRef {
        main_schema()
    }

    fn extra_ports(&self) -> Vec<PortSpec> {
        self.stream.ports()
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        self.stream.connect_ports(consumed);
    }

    fn warnings(&self) -> Vec<String> {
        self.stream.warnings()
    }

    fn decode_line(
        &mut self,
        partition: usize,
        line: &[u8],
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<(), DecodeError> {
        let decoded = self.format.decode(line)?;
        self.stream.apply(partition, decoded, out, now_ms);
        Ok(())
    }

    fn partition_ended(&mut self, partition: usize, out: &mut ReadBuffers) {
        if partition + 1 == self.snapshot_partitions {
            self.stream.end_snapshots(out);
        }
    }

    /// The tables whose snapshot has ended, the tables that have received a change and the
    /// arrival order of records without a position.
    fn state(&self) -> Option<serde_json::Value> {
        let ended = self.stream.ended_snapshots();
        let arrival = self.stream.arrival_order();
        let mut state = serde_json::Map::new();
        if !ended.is_empty() {
            state.insert("snapshot_ended".into(), serde_json::json!(ended));
        }
        let received = self.stream.received_tables();
        if !received.is_empty() {
            state.insert("received".into(), serde_json::json!(received));
        }
        if *arrival != ArrivalOrder::default() {
            state.insert("arrival_order".into(), serde_json::json!(arrival));
        }
        if self.stream.last_seen() {
            state.insert("last_seen".into(), serde_json::json!(true));
        }
        (!state.is_empty()).then_some(serde_json::Value::Object(state))
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let ended: Vec<String> = match state.and_then(|s| s.get("snapshot_ended")) {
            None => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("the change stream's ended snapshots do not decode: {e}"))?,
        };
        self.stream.restore_ended_snapshots(&ended);
        let arrival: ArrivalOrder = match state.and_then(|s| s.get("arrival_order")) {
            None => ArrivalOrder::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("the change stream's arrival order does not decode: {e}"))?,
        };
        self.stream.restore_arrival_order(arrival);
        let received: Vec<String> = match state.and_then(|s| s.get("received")) {
            None => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("the change stream's received tables do not decode: {e}"))?,
        };
        self.stream.restore_received_tables(&received);
        let last_seen = match state.and_then(|s| s.get("last_seen")) {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| "the change stream's `last_seen` is not a boolean".to_string())?,
        };
        self.stream.restore_last_seen(last_seen);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cdc::rows::{RowOp, row_op};
    use crate::cdc::{TableConfig, TableId};
    use crate::dataflow::{ReadStatus, Source};
    use crate::sources::file::{FilePart, FileSource, FileSourceSpec};
    use crate::types::{DataType, Field, Schema};

    fn tables() -> Vec<CdcTable> {
        let customers = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("name", DataType::String),
            Field::new("email", DataType::String),
            Field::new("updated_at", DataType::Timestamp),
        ]));
        vec![CdcTable {
            port: "customers".into(),
            id: TableId::new("public", "customers"),
            config: TableConfig::new(customers).with_key(&["id"]),
        }]
    }

    /// The captured Debezium 3.6.3 events as JSON lines, in capture order.
    fn captured_lines() -> Option<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/debezium/captured-3.6.3");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("noschema-"))
            })
            .collect();
        names.sort();
        let mut text = String::new();
        for p in names {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            text.push_str(&serde_json::to_string(&v).unwrap());
            text.push('\n');
        }
        Some(text)
    }

    #[test]
    fn real_change_stream_is_demultiplexed_into_table_rows() {
        let Some(text) = captured_lines() else {
            eprintln!("shared data not found: skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        std::fs::write(
            &path,
            format!("{text}not json\n{{\"ts_ms\":1795315999000}}\n"),
        )
        .unwrap();
        let decoder = ChangeDecoder::new("ref", tables(), 0).unwrap();
        let mut src = FileSource::new(
            "ref",
            FileSourceSpec {
                files: FilePart::wholes(vec![path]),
                follow: false,
                rate: None,
                poll_interval: Duration::from_millis(10),
                base_dir: None,
                sequential: true,
                paced_from: 0,
                max_line_bytes: crate::sources::file::DEFAULT_MAX_LINE_BYTES,
            },
            decoder,
        );
        src.connect_ports(&[true, true, true]);
        let mut out = ReadBuffers::for_source(&src);
        assert_eq!(
            src.read(&mut out, 1000, 0).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        let customers = &out.extra[0];
        let ops: Vec<RowOp> = customers.rows().map(|(r, _)| row_op(r)).collect();
        // Two snapshot reads, the second marked `last_in_data_collection`: the customers'
        // snapshot ends right after it; then the streamed changes, a delete among them.
        assert_eq!(
            ops[..3],
            [
                RowOp::Upsert { snapshot: true },
                RowOp::Upsert { snapshot: true },
                RowOp::SnapshotEnd
            ]
        );
        assert!(ops[3..].contains(&RowOp::Delete));
        assert!(!ops[3..].contains(&RowOp::SnapshotEnd), "one end per table");
        // Orders are not configured: skipped, as are the tombstones.
        assert!(out.records.len() >= customers.len() - 1);
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.progress, Some(1795315999000));
    }

    #[test]
    fn end_of_the_snapshot_file_ends_every_table_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snapshot.jsonl");
        std::fs::write(
            &snap,
            r#"{"before":null,"after":{"id":1,"name":"a","email":"x","updated_at":null},"source":{"schema":"public","table":"customers","lsn":5,"sequence":"[null,\"5\"]","snapshot":"true","ts_ms":100},"op":"r"}"#
                .to_owned()
                + "\n",
        )
        .unwrap();
        let changes = dir.path().join("changes.jsonl");
        std::fs::write(&changes, "").unwrap();
        let decoder = ChangeDecoder::new("ref", tables(), 1).unwrap();
        let mut src = FileSource::new(
            "ref",
            FileSourceSpec {
                files: FilePart::wholes(vec![snap, changes]),
                follow: false,
                rate: None,
                poll_interval: Duration::from_millis(10),
                base_dir: None,
                sequential: true,
                paced_from: 1,
                max_line_bytes: crate::sources::file::DEFAULT_MAX_LINE_BYTES,
            },
            decoder,
        );
        let mut out = ReadBuffers::for_source(&src);
        assert_eq!(
            src.read(&mut out, 10, 0).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        assert_eq!(out.extra[0].len(), 1);
        assert_eq!(
            out.records.len(),
            0,
            "main is not built when nobody reads it"
        );
        assert_eq!(
            src.read(&mut out, 10, 0).unwrap(),
            ReadStatus::PartitionEnded { partition: 0 }
        );
        assert_eq!(row_op(out.extra[0].row(1)), RowOp::SnapshotEnd);
        assert_eq!(out.extra[0].event_time(1), 100);
    }
}

#[cfg(test)]
mod arrival_order_tests {
    use super::*;
    use crate::cdc::Version;
    use crate::cdc::rows::row_version;
    use crate::dataflow::ReadBuffers;

    fn customers() -> Vec<CdcTable> {
        use crate::cdc::{TableConfig, TableId};
        use crate::types::{DataType, Field, Schema};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("name", DataType::String),
        ]));
        vec![CdcTable {
            port: "customers".into(),
            id: TableId::new("public", "customers"),
            config: TableConfig::new(schema).with_key(&["id"]),
        }]
    }

    fn buffers(decoder: &ChangeDecoder) -> ReadBuffers {
        ReadBuffers::for_ports(main_schema(), decoder.extra_ports())
    }

    fn line(op: &str, id: i64, name: &str, snapshot: &str) -> String {
        format!(
            r#"{{"op":"{op}","before":null,"after":{{"id":{id},"name":"{name}"}},"source":{{"schema":"public","table":"customers","snapshot":"{snapshot}","ts_ms":{id}}}}}"#
        )
    }

    /// Records without `source.lsn`/`sequence` all got version (0, 0): every update or delete
    /// after the snapshot was then dropped as stale. They now get versions in arrival order
    /// within their partition, after the snapshot's, and a restart from the checkpointed
    /// decoder state hands out the same versions again.
    #[test]
    fn records_without_a_position_are_versioned_in_arrival_order_after_the_snapshot() {
        let snapshot = [line("r", 1, "a", "first"), line("r", 2, "b", "last")];
        let changes = [
            line("u", 1, "a2", "false"),
            line("u", 2, "b2", "false"),
            line("u", 1, "a3", "false"),
        ];
        let mut decoder = ChangeDecoder::new("ref", customers(), 1).unwrap();
        let mut out = buffers(&decoder);
        for l in &snapshot {
            decoder.decode_line(0, l.as_bytes(), &mut out, 0).unwrap();
        }
        decoder.partition_ended(0, &mut out);
        decoder
            .decode_line(1, changes[0].as_bytes(), &mut out, 0)
            .unwrap();
        let state = decoder.state();
        for l in &changes[1..] {
            decoder.decode_line(1, l.as_bytes(), &mut out, 0).unwrap();
        }
        let versions: Vec<Version> = out.extra[0]
            .rows()
            .map(|(r, _)| row_version(r))
            .filter(|v| *v != Version::UNKNOWN) // the snapshot end marker
            .collect();
        assert_eq!(versions.len(), 5);
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "arrival order, the snapshot first: {versions:?}"
        );

        // Restored from the state taken after the first change: the same versions follow.
        let mut restored = ChangeDecoder::new("ref", customers(), 1).unwrap();
        restored.restore_state(state.as_ref()).unwrap();
        assert_eq!(restored.stream.received_tables(), ["customers"]);
        let mut again = buffers(&restored);
        for l in &changes[1..] {
            restored
                .decode_line(1, l.as_bytes(), &mut again, 0)
                .unwrap();
        }
        let replayed: Vec<Version> = again.extra[0].rows().map(|(r, _)| row_version(r)).collect();
        assert_eq!(replayed, versions[3..]);
    }
}
