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

use crate::cdc::{ChangeFormat, ChangeStream, DebeziumDecoder};
use crate::dataflow::{PortSpec, ReadBuffers};
use crate::format::DecodeError;
use crate::sources::file::LineDecoder;
use crate::types::SchemaRef;

pub use crate::cdc::stream::{CdcTable, main_schema};

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

    fn decode_line(
        &mut self,
        _partition: usize,
        line: &[u8],
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<(), DecodeError> {
        let decoded = self.format.decode(line)?;
        self.stream.apply(&decoded, out, now_ms);
        Ok(())
    }

    fn partition_ended(&mut self, partition: usize, out: &mut ReadBuffers) {
        if partition + 1 == self.snapshot_partitions {
            self.stream.end_snapshots(out);
        }
    }

    /// The tables whose snapshot has ended.
    fn state(&self) -> Option<serde_json::Value> {
        let ended = self.stream.ended_snapshots();
        (!ended.is_empty()).then(|| serde_json::json!({ "snapshot_ended": ended }))
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let ended: Vec<String> = match state.and_then(|s| s.get("snapshot_ended")) {
            None => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("the change stream's ended snapshots do not decode: {e}"))?,
        };
        self.stream.restore_ended_snapshots(&ended);
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
    use crate::sources::file::{FileSource, FileSourceSpec};
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
                paths: vec![path],
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
                paths: vec![snap, changes],
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
