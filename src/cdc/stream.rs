//! The change-stream machinery, independent of the change format and of the transport: it
//! takes `Decoded` values (from any `ChangeFormat`: Debezium JSON today, pgoutput later) and
//! writes a change source's ports into `ReadBuffers`:
//! - one port per configured table (`extra`, the source's ports 2..), demultiplexed by
//!   `TableId`, as change rows (`cdc::rows`: `_op`, `_lsn`, …, then the table's columns);
//! - `main` (`records`): every change of every configured table in the normalized form of
//!   `watershed cdc decode` (one JSON object per change), built only when something reads it;
//! - `progress`, from heartbeats.
//!
//! It never sees bytes, files or offsets: the transport (`sources::cdc` for files) decodes
//! each record with its format, sends what does not decode to `dead_letter` itself, hands
//! the rest here, and says when the snapshot part of its input is over.
//!
//! # Progress tracking
//! - A change row's event time is its commit time (`Change::source_ts_ms`, else the
//!   processing time of the read), so the source's watermark follows the replication position.
//! - A heartbeat is progress without a change: it moves the partition's watermark to its
//!   time, so a quiet but healthy database does not hold event time back.
//! - A table's snapshot ends at its `last_in_data_collection` marker, at the `last` marker
//!   (which ends every table's when the transport reads one log; see `separate_logs`), or
//!   when the transport's snapshot input is over (`end_snapshots`: the end of the last
//!   snapshot file, or every topic read to its end after `last`); the stream then emits one
//!   `snapshot_end` row on the table's port, once per table (what a gated enrichment waits
//!   for).
//! - Tombstones (sent after each delete, which already removed the row), transaction
//!   metadata, `m` (logical message) events and changes of tables not configured are skipped
//!   and counted (`watershed_cdc_skipped_records_total`).
//! - While a configured table has received no change, each new table not configured whose
//!   changes arrive is a WARN naming it and the silent tables, and `warnings` (shown in
//!   `/status`) says the same: a schema or table name that does not match is not silent.
//! - A change without a position (`Version::UNKNOWN`) gets the next version in arrival order
//!   within its partition (`ArrivalOrder`, after every snapshot read seen; WARN once per
//!   partition); it is part of the decoder state the transport checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;

use crate::cdc::inspect::normalize;
use crate::cdc::rows::{change_schema, push_change, push_snapshot_end};
use crate::cdc::{Change, Decoded, Op, SnapshotMarker, TableId, Version};
use crate::dataflow::{PortSpec, ReadBuffers};
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

/// How one table's change events are typed, whatever their format.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// Column names and types of the table's rows.
    pub schema: SchemaRef,
    /// Primary key columns, used for the key of a bare envelope (which carries no key).
    pub key_columns: Vec<CompactString>,
    /// Scale of `decimal` columns a format sends as unscaled bytes without their scale
    /// (Debezium records without a schema), by column name.
    pub decimal_scales: Vec<(CompactString, u32)>,
}

impl TableConfig {
    pub fn new(schema: SchemaRef) -> TableConfig {
        TableConfig {
            schema,
            key_columns: Vec::new(),
            decimal_scales: Vec::new(),
        }
    }

    pub fn with_key(mut self, columns: &[&str]) -> TableConfig {
        self.key_columns = columns.iter().map(|c| CompactString::from(*c)).collect();
        self
    }

    pub fn with_decimal_scale(mut self, column: &str, scale: u32) -> TableConfig {
        self.decimal_scales.push((column.into(), scale));
        self
    }
}

/// One configured table: the port it goes to.
#[derive(Clone, Debug)]
pub struct CdcTable {
    /// The port's name (the table's name in the pipeline file).
    pub port: String,
    pub id: TableId,
    /// How the table's rows are typed; the stream reads only `schema` (its port's columns),
    /// the format reads the rest.
    pub config: TableConfig,
}

/// Demultiplexes decoded change records into one port per table; see the module docs.
pub struct ChangeStream {
    tables: Vec<CdcTable>,
    /// Table id -> index in `tables` (and in `ReadBuffers::extra`).
    index: ahash::AHashMap<TableId, usize>,
    snapshot_ended: Vec<bool>,
    main_consumed: bool,
    skipped: metrics::Counter,
    node: String,
    /// Versions handed out in arrival order; see `ArrivalOrder`.
    arrival: ArrivalOrder,
    /// Partitions whose records fell back to arrival order (warned once each).
    warned_arrival: BTreeSet<usize>,
    /// Per table: has it received a change?
    received: Vec<bool>,
    /// Tables not configured whose changes arrived (the first `MAX_SEEN`).
    seen_unconfigured: BTreeSet<String>,
    /// The transport reads each table from a log of its own (a topic per table): the `last`
    /// marker ends only its own table, and the transport ends the others once it has read
    /// every log to its end (`end_snapshots`).
    separate_logs: bool,
    /// The `last` marker has been read.
    last_seen: bool,
}

/// How many tables not configured a stream remembers by name.
const MAX_SEEN: usize = 32;

/// What orders records that carry no position (no `lsn`, `sequence`, binlog file and
/// position, `change_lsn`, `scn` or `ord`): the order they arrive in, within a partition.
/// Part of the stream's checkpointed state, so a restart that replays from the checkpoint
/// hands out the same versions again.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArrivalOrder {
    /// The last version seen or handed out, per partition.
    pub last: BTreeMap<usize, Version>,
    /// The highest version of a snapshot read seen: a partition starts after it, so that
    /// streamed changes order after the snapshot.
    pub snapshot_high: Version,
}

impl ArrivalOrder {
    /// Gives `change` a version if it has none (`Version::UNKNOWN`, except incremental
    /// snapshot reads, which apply only to absent keys); records the version otherwise.
    /// True when it gave one.
    fn order(&mut self, partition: usize, change: &mut Change) -> bool {
        let last = self.last.entry(partition).or_insert(self.snapshot_high);
        let given =
            change.version == Version::UNKNOWN && change.snapshot != SnapshotMarker::Incremental;
        if given {
            change.version = Version {
                commit_lsn: last.commit_lsn,
                ordinal: last.ordinal + 1,
            };
        }
        *last = (*last).max(change.version);
        if change.snapshot.is_snapshot() {
            self.snapshot_high = self.snapshot_high.max(change.version);
        }
        given
    }
}

impl ChangeStream {
    /// A stream of these tables, `tables[i]` on `ReadBuffers::extra[i]`; `node` labels its
    /// metrics.
    pub fn new(node: &str, tables: Vec<CdcTable>) -> ChangeStream {
        let index = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        ChangeStream {
            snapshot_ended: vec![false; tables.len()],
            received: vec![false; tables.len()],
            tables,
            index,
            main_consumed: false,
            node: node.to_string(),
            arrival: ArrivalOrder::default(),
            warned_arrival: BTreeSet::new(),
            seen_unconfigured: BTreeSet::new(),
            separate_logs: false,
            last_seen: false,
            skipped: metrics::counter!(crate::metrics::CDC_SKIPPED_RECORDS, crate::metrics::LABEL_NODE => node.to_string()),
        }
    }

    /// The same stream, its tables read from logs of their own (see `separate_logs`).
    pub fn with_separate_logs(mut self) -> ChangeStream {
        self.separate_logs = true;
        self
    }

    /// Whether the `last` marker was read while some table's snapshot has not ended: the
    /// transport ends them once it has read every log to its end.
    pub fn snapshot_end_pending(&self) -> bool {
        self.last_seen && self.snapshot_ended.iter().any(|e| !e)
    }

    /// Whether the `last` marker has been read (kept across restarts).
    pub fn last_seen(&self) -> bool {
        self.last_seen
    }

    /// Takes up `last_seen` from before a restart.
    pub fn restore_last_seen(&mut self, seen: bool) {
        self.last_seen = seen;
    }

    /// Ports of the tables, in order (a change source's ports 2..).
    pub fn table_ports(tables: &[CdcTable]) -> Vec<PortSpec> {
        tables
            .iter()
            .map(|t| PortSpec {
                name: t.port.clone(),
                schema: change_schema(&t.config.schema),
            })
            .collect()
    }

    /// Ports of this stream's tables.
    pub fn ports(&self) -> Vec<PortSpec> {
        Self::table_ports(&self.tables)
    }

    /// Which ports have consumers (by port index, `main` first): `main` is built only when
    /// read.
    pub fn connect_ports(&mut self, consumed: &[bool]) {
        self.main_consumed = consumed.first().copied().unwrap_or(false);
    }

    /// Applies one decoded record of `partition`, read at processing time `now_ms`.
    pub fn apply(
        &mut self,
        partition: usize,
        mut decoded: Decoded,
        out: &mut ReadBuffers,
        now_ms: i64,
    ) {
        if let Decoded::Change(c) = &mut decoded
            && c.op != Op::Message
            && self.arrival.order(partition, c)
            && self.warned_arrival.insert(partition)
        {
            tracing::warn!(
                node = %self.node,
                partition,
                table = %c.table,
                "change records carry no position (lsn, sequence, binlog file and pos, change_lsn, scn or ord): their versions fall back to arrival order within the partition"
            );
        }
        let decoded = &decoded;
        let change = match decoded {
            Decoded::Change(c) if c.op != Op::Message => c,
            Decoded::Heartbeat { ts_ms } => {
                out.progress = Some(out.progress.map_or(*ts_ms, |p| p.max(*ts_ms)));
                return;
            }
            _ => {
                self.skipped.increment(1);
                return;
            }
        };
        let Some(&t) = self.index.get(&change.table) else {
            self.skipped.increment(1);
            self.saw_unconfigured(&change.table);
            return;
        };
        self.received[t] = true;
        let at = change.source_ts_ms.unwrap_or(now_ms);
        push_change(&mut out.extra[t], change, at);
        if self.main_consumed {
            let mut text = Vec::with_capacity(256);
            normalize(decoded, &mut text);
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
                self.last_seen = true;
                if self.separate_logs {
                    self.end_snapshot(t, out, at);
                } else {
                    for i in 0..self.tables.len() {
                        self.end_snapshot(i, out, at);
                    }
                }
            }
            _ => {}
        }
    }

    /// The transport's snapshot input is over (the last snapshot file ended): ends the
    /// snapshot of every table not ended yet, at the latest event time on its port in `out`
    /// (else 0, the start).
    /// The ports of the tables whose snapshot has ended: what a restart must remember, so
    /// that it does not end them again.
    pub fn ended_snapshots(&self) -> Vec<String> {
        self.tables
            .iter()
            .zip(&self.snapshot_ended)
            .filter(|(_, e)| **e)
            .map(|(t, _)| t.port.clone())
            .collect()
    }

    /// A change of a table not configured: WARN, naming it, when it is new and a configured
    /// table has received nothing yet (a table name or schema that does not match).
    fn saw_unconfigured(&mut self, table: &TableId) {
        if table.table.is_empty() || self.seen_unconfigured.len() >= MAX_SEEN {
            return;
        }
        let name = table.to_string();
        if self.seen_unconfigured.contains(&name) {
            return;
        }
        self.seen_unconfigured.insert(name);
        let silent = self.silent_tables();
        if !silent.is_empty() {
            tracing::warn!(
                node = %self.node,
                seen = %table,
                waiting = %silent.join(", "),
                "configured tables have received no change while changes of a table not configured arrive: check the configured schema and table names"
            );
        }
    }

    /// Configured tables that have received no change.
    fn silent_tables(&self) -> Vec<String> {
        self.tables
            .iter()
            .zip(&self.received)
            .filter(|(_, r)| !**r)
            .map(|(t, _)| t.id.to_string())
            .collect()
    }

    /// What `/status` shows about this stream: when a configured table has received nothing
    /// while changes of tables not configured arrived, one line naming both.
    pub fn warnings(&self) -> Vec<String> {
        if self.seen_unconfigured.is_empty() || self.received.iter().all(|r| *r) {
            return Vec::new();
        }
        let seen: Vec<&str> = self.seen_unconfigured.iter().map(String::as_str).collect();
        vec![format!(
            "configured tables {} have received no change; changes of tables not configured arrived: {}",
            self.silent_tables().join(", "),
            seen.join(", ")
        )]
    }

    /// The ports of the tables that have received a change: what a restart must remember,
    /// so that it does not warn about them.
    pub fn received_tables(&self) -> Vec<String> {
        self.tables
            .iter()
            .zip(&self.received)
            .filter(|(_, r)| **r)
            .map(|(t, _)| t.port.clone())
            .collect()
    }

    /// Takes up `received_tables` from before a restart.
    pub fn restore_received_tables(&mut self, ports: &[String]) {
        for (t, received) in self.tables.iter().zip(self.received.iter_mut()) {
            *received = ports.contains(&t.port);
        }
    }

    /// The arrival order of records without a position: what a restart must remember.
    pub fn arrival_order(&self) -> &ArrivalOrder {
        &self.arrival
    }

    /// Takes up `arrival_order` from before a restart.
    pub fn restore_arrival_order(&mut self, arrival: ArrivalOrder) {
        self.arrival = arrival;
    }

    /// Takes up `ended_snapshots` from before a restart (tables no longer configured are
    /// ignored; a new table's snapshot has not ended).
    pub fn restore_ended_snapshots(&mut self, ports: &[String]) {
        for (t, ended) in self.tables.iter().zip(self.snapshot_ended.iter_mut()) {
            *ended = ports.contains(&t.port);
        }
    }

    pub fn end_snapshots(&mut self, out: &mut ReadBuffers) {
        for i in 0..self.tables.len() {
            let at = out.extra[i].event_times().last().copied().unwrap_or(0);
            self.end_snapshot(i, out, at);
        }
    }

    /// Ends the snapshot of table `table` (by index), once: a transport that reads tables one
    /// after the other says when one is read.
    pub fn end_table_snapshot(&mut self, table: usize, out: &mut ReadBuffers, at: i64) {
        self.end_snapshot(table, out, at);
    }

    fn end_snapshot(&mut self, table: usize, out: &mut ReadBuffers, at: i64) {
        if !self.snapshot_ended[table] {
            self.snapshot_ended[table] = true;
            push_snapshot_end(&mut out.extra[table], at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::rows::{OP, RowOp, row_op};
    use crate::cdc::{Change, TxStatus, Version};
    use crate::types::Batch;

    fn schema(columns: &[&str]) -> SchemaRef {
        Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(c, DataType::Int))
                .collect(),
        ))
    }

    fn tables() -> Vec<CdcTable> {
        ["customers", "orders"]
            .into_iter()
            .map(|name| CdcTable {
                port: name.into(),
                id: TableId::new("public", name),
                config: TableConfig::new(schema(&["id", "n"])).with_key(&["id"]),
            })
            .collect()
    }

    fn buffers(tables: &[CdcTable]) -> ReadBuffers {
        ReadBuffers::for_ports(main_schema(), ChangeStream::table_ports(tables))
    }

    /// A change built by hand, as any format would produce it.
    fn change(table: &str, op: Op, id: i64, snapshot: SnapshotMarker, ts_ms: i64) -> Decoded {
        let row = Some(vec![Value::Int(id), Value::Int(id * 10)]);
        let (before, after) = match op {
            Op::Delete => (row, None),
            _ => (None, row),
        };
        Decoded::Change(Change {
            table: TableId::new("public", table),
            op,
            columns: schema(&["id", "n"]),
            key: vec![("id".into(), Value::Int(id))],
            before,
            after,
            unavailable: Vec::new(),
            version: Version {
                commit_lsn: ts_ms as u64,
                ordinal: ts_ms as u64,
            },
            snapshot,
            tx_id: None,
            source_ts_ms: Some(ts_ms),
        })
    }

    fn ops(batch: &Batch) -> Vec<RowOp> {
        batch.rows().map(|(r, _)| row_op(r)).collect()
    }

    #[test]
    fn decoded_records_of_any_format_become_table_rows_and_progress() {
        use SnapshotMarker::{First, Last, LastInDataCollection};
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut stream =
            metrics::with_local_recorder(&recorder, || ChangeStream::new("ref", tables()));
        let mut out = buffers(&tables());
        for decoded in [
            change("customers", Op::Read, 1, First, 100),
            change("orders", Op::Read, 7, LastInDataCollection, 110),
            change("customers", Op::Read, 2, Last, 120),
            Decoded::Heartbeat { ts_ms: 500 },
            Decoded::Heartbeat { ts_ms: 400 },
            // Skipped: a table not configured, a tombstone, transaction metadata, a message.
            change("other", Op::Create, 3, SnapshotMarker::False, 510),
            Decoded::Tombstone {
                key: vec![("id".into(), Value::Int(2))],
                table: Some(TableId::new("public", "customers")),
            },
            Decoded::Transaction {
                status: TxStatus::Begin,
                id: "1:2".into(),
                event_count: None,
            },
            change("", Op::Message, 0, SnapshotMarker::False, 520),
            change("customers", Op::Update, 1, SnapshotMarker::False, 600),
            change("orders", Op::Delete, 7, SnapshotMarker::False, 610),
            // A second `last` and the end of the snapshot input end nothing again.
            change("orders", Op::Read, 8, Last, 620),
        ] {
            stream.apply(0, decoded, &mut out, 0);
        }
        stream.end_snapshots(&mut out);

        let customers = &out.extra[0];
        assert_eq!(
            ops(customers),
            [
                RowOp::Upsert { snapshot: true },
                RowOp::Upsert { snapshot: true },
                RowOp::SnapshotEnd,
                RowOp::Upsert { snapshot: false },
            ]
        );
        assert_eq!(customers.row(3)[OP], Value::from("u"));
        assert_eq!(customers.event_times(), [100, 120, 120, 600]);
        let orders = &out.extra[1];
        assert_eq!(
            ops(orders),
            [
                RowOp::Upsert { snapshot: true },
                RowOp::SnapshotEnd,
                RowOp::Delete,
                RowOp::Upsert { snapshot: true },
            ]
        );
        assert_eq!(orders.row(2)[OP], Value::from("d"));
        assert_eq!(orders.event_times(), [110, 110, 610, 620]);
        assert_eq!(
            out.progress,
            Some(500),
            "heartbeats move progress forward only"
        );
        assert_eq!(
            out.records.len(),
            0,
            "main is not built when nobody reads it"
        );
        assert!(
            handle
                .render()
                .contains(r#"watershed_cdc_skipped_records_total{node="ref"} 4"#),
            "{}",
            handle.render()
        );
    }

    /// Changes of tables not configured (a misspelt schema) were skipped with no word: the
    /// configured tables stayed empty, the gate opened on them and every lookup missed. The
    /// stream now says so, naming the tables seen, until every configured table has
    /// received a change.
    #[test]
    fn configured_tables_silent_while_other_tables_arrive_is_a_warning_naming_them() {
        let mut stream = ChangeStream::new("ref", tables());
        let mut out = buffers(&tables());
        assert!(stream.warnings().is_empty());
        let mut other = change("customers", Op::Create, 1, SnapshotMarker::False, 100);
        if let Decoded::Change(c) = &mut other {
            c.table = TableId::new("app", "customers");
        }
        stream.apply(0, other.clone(), &mut out, 0);
        stream.apply(0, other, &mut out, 0);
        assert_eq!(
            stream.warnings(),
            [
                "configured tables public.customers, public.orders have received no change; \
              changes of tables not configured arrived: app.customers"
            ]
        );
        stream.apply(
            0,
            change("customers", Op::Create, 1, SnapshotMarker::False, 110),
            &mut out,
            0,
        );
        assert!(stream.warnings()[0].starts_with("configured tables public.orders have"));
        stream.apply(
            0,
            change("orders", Op::Create, 1, SnapshotMarker::False, 120),
            &mut out,
            0,
        );
        assert!(
            stream.warnings().is_empty(),
            "every configured table has data"
        );
    }

    #[test]
    fn end_of_the_snapshot_input_ends_every_table_once_and_main_is_built_when_read() {
        let mut stream = ChangeStream::new("ref", tables());
        stream.connect_ports(&[true, false, true, true]);
        let mut out = buffers(&tables());
        stream.apply(
            0,
            change("customers", Op::Read, 1, SnapshotMarker::True, 100),
            &mut out,
            0,
        );
        stream.end_snapshots(&mut out);
        stream.end_snapshots(&mut out);
        assert_eq!(
            ops(&out.extra[0]),
            [RowOp::Upsert { snapshot: true }, RowOp::SnapshotEnd]
        );
        assert_eq!(out.extra[0].event_times(), [100, 100]);
        // A table with no rows ends at the start.
        assert_eq!(ops(&out.extra[1]), [RowOp::SnapshotEnd]);
        assert_eq!(out.extra[1].event_times(), [0]);
        // Without a commit time, the processing time of the read.
        let mut untimed = change("orders", Op::Create, 9, SnapshotMarker::False, 0);
        if let Decoded::Change(c) = &mut untimed {
            c.source_ts_ms = None;
        }
        stream.apply(0, untimed, &mut out, 777);
        assert_eq!(out.extra[1].event_times(), [0, 777]);
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records.row(0)[0], Value::from("customers"));
        assert_eq!(out.records.row(1)[0], Value::from("orders"));
        assert!(matches!(&out.records.row(1)[1], Value::Json(j) if j.contains("\"op\":\"c\"")));
    }
}
