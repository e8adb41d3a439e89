//! The change-stream source: Debezium records (JSON lines, one record per line: bare values
//! or `{key, value}` records) read by the file source, demultiplexed by `source.schema` /
//! `source.table` into one output port per configured table, as change rows
//! (`cdc::rows`). Read with `sequential` files, the snapshot files first.
//!
//! # Progress tracking
//! - A change row's event time is its commit time (`source.ts_ms`), so the source's
//!   watermark follows the replication position.
//! - A heartbeat (`{"ts_ms": …}`) is progress without a change: it moves the partition's
//!   watermark to its time, so a quiet but healthy database does not hold event time back.
//! - A table's snapshot ends at its `last_in_data_collection` marker, at the `last` marker
//!   (which ends every table's), or at the end of the last snapshot file; the source then
//!   emits a `snapshot_end` row on the table's port (what a gated enrichment waits for).
//!
//! Tombstones (sent after each delete, which already removed the row), transaction metadata
//! and changes of tables not configured are skipped and counted; `m` (logical message)
//! events too. Undecodable records go to `dead_letter`.
//!
//! `main` carries every change of every table in the normalized form of `watershed cdc
//! decode` (one JSON object per change), built only when something reads it.

use std::sync::{Arc, OnceLock};

use crate::cdc::inspect::normalize;
use crate::cdc::rows::{change_schema, push_change, push_snapshot_end};
use crate::cdc::{DebeziumDecoder, Decoded, Op, SnapshotMarker, TableConfig, TableId};
use crate::format::DecodeError;
use crate::operators::PortSpec;
use crate::sources::ReadBuffers;
use crate::sources::file::LineDecoder;
use crate::types::{DataType, Field, Schema, SchemaRef, Value};

/// Schema of a change source's `main` port: the table and the normalized change.
pub fn main_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("table", DataType::String),
                Field::new("change", DataType::Json),
            ]))
        })
        .clone()
}

/// One configured table: the port it goes to.
#[derive(Clone, Debug)]
pub struct CdcTable {
    /// The port's name (the table's name in the pipeline file).
    pub port: String,
    pub id: TableId,
    pub config: TableConfig,
}

/// Decodes Debezium lines into change rows, one extra port per table.
pub struct ChangeDecoder {
    decoder: DebeziumDecoder,
    tables: Vec<CdcTable>,
    /// Table id -> index in `tables` (and extra port).
    index: ahash::AHashMap<TableId, usize>,
    snapshot_ended: Vec<bool>,
    /// Partitions before this index are snapshot files.
    snapshot_partitions: usize,
    main_consumed: bool,
    skipped: metrics::Counter,
}

impl ChangeDecoder {
    pub fn new(
        node: &str,
        tables: Vec<CdcTable>,
        snapshot_partitions: usize,
    ) -> Result<ChangeDecoder, DecodeError> {
        let decoder =
            DebeziumDecoder::new(tables.iter().map(|t| (t.id.clone(), t.config.clone())))?;
        let index = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        Ok(ChangeDecoder {
            decoder,
            snapshot_ended: vec![false; tables.len()],
            tables,
            index,
            snapshot_partitions,
            main_consumed: false,
            skipped: metrics::counter!(crate::metrics::CDC_SKIPPED_RECORDS, crate::metrics::LABEL_NODE => node.to_string()),
        })
    }

    /// Ports of the tables, in order (the source's ports 2..).
    pub fn table_ports(tables: &[CdcTable]) -> Vec<PortSpec> {
        tables
            .iter()
            .map(|t| PortSpec {
                name: t.port.clone(),
                schema: change_schema(&t.config.schema),
            })
            .collect()
    }

    fn end_snapshot(&mut self, table: usize, out: &mut ReadBuffers, at: i64) {
        if !self.snapshot_ended[table] {
            self.snapshot_ended[table] = true;
            push_snapshot_end(&mut out.extra[table], at);
        }
    }
}

impl LineDecoder for ChangeDecoder {
    fn schema(&self) -> SchemaRef {
        main_schema()
    }

    fn extra_ports(&self) -> Vec<PortSpec> {
        Self::table_ports(&self.tables)
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        self.main_consumed = consumed.first().copied().unwrap_or(false);
    }

    fn decode_line(
        &mut self,
        _partition: usize,
        line: &[u8],
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<(), DecodeError> {
        let decoded = self.decoder.decode(line)?;
        let change = match &decoded {
            Decoded::Change(c) if c.op != Op::Message => c,
            Decoded::Heartbeat { ts_ms } => {
                out.progress = Some(out.progress.map_or(*ts_ms, |p| p.max(*ts_ms)));
                return Ok(());
            }
            _ => {
                self.skipped.increment(1);
                return Ok(());
            }
        };
        let Some(&t) = self.index.get(&change.table) else {
            self.skipped.increment(1);
            return Ok(());
        };
        let at = change.source_ts_ms.unwrap_or(now_ms);
        push_change(&mut out.extra[t], change, at);
        if self.main_consumed {
            let mut text = Vec::with_capacity(256);
            normalize(&decoded, &mut text);
            out.records.push_row(
                [
                    Value::from(self.tables[t].port.as_str()),
                    Value::Json(String::from_utf8_lossy(&text).into()),
                ],
                at,
            );
        }
        match change.snapshot {
            SnapshotMarker::LastInDataCollection => self.end_snapshot(t, out, at),
            SnapshotMarker::Last => {
                for i in 0..self.tables.len() {
                    self.end_snapshot(i, out, at);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn partition_ended(&mut self, partition: usize, out: &mut ReadBuffers) {
        if partition + 1 == self.snapshot_partitions {
            // Time of the end: the latest event time seen on the table, else the start.
            for i in 0..self.tables.len() {
                let at = out.extra[i].event_times().last().copied().unwrap_or(0);
                self.end_snapshot(i, out, at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::rows::{RowOp, row_op};
    use crate::sources::file::{FileSource, FileSourceSpec};
    use crate::sources::{ReadStatus, Source};
    use std::time::Duration;

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
