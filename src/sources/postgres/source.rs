//! `PostgresSource`: the change stream of a Postgres database's tables, read from a logical
//! replication slot (`pgoutput`) after a snapshot of the tables, as one partition named after
//! the slot (instance 0 reads it; other instances read nothing: reference tables are
//! broadcast downstream).
//!
//! # Start
//! A plain connection checks `wal_level`, that every table exists, and the publication
//! (created for the tables if missing; an existing one must publish every table). The slot
//! is created if missing (`pgoutput`, no exported snapshot); the streaming start is its
//! consistent point, or the slot's confirmed LSN when it already existed. A restore reads
//! its position instead (the slot must still exist: one dropped underneath loses changes,
//! which is an error saying so).
//!
//! # Snapshot
//! Table by table, in primary-key order, in chunks of about `chunk_rows` (each chunk its own
//! statement, read by one of `snapshot_workers` connections: `snapshot`), handed on in key
//! order, so a crash resumes after the last row the checkpoint covers instead of starting
//! over. Before each chunk the WAL insert
//! position `L` is read; the chunk's rows are `r` changes with version `(L, 0)`. Why that is
//! exact with streaming started at the slot's consistent point `C <= L`: a change the chunk
//! does not show committed after the chunk's statement began, so its commit record lies
//! after `L` and its version is above `(L, 0)` — the materializer applies it over the row;
//! a change the chunk shows with a commit before `L` has a lower version and is ignored when
//! it streams by; one the chunk shows with a commit after `L` applies again, harmlessly. Each
//! table's snapshot ends (its `snapshot_end` row, which opens a gated enrichment) after its
//! last chunk; streaming starts when every table is read.
//!
//! # Streaming and positions
//! The position is the end LSN of the last transaction wholly emitted plus how many changes
//! of the next one were emitted: a restore starts replication at that LSN (the server sends
//! the next transaction again, whole) and skips those changes, so nothing is doubled. The
//! LSN confirmed to the server (what lets it recycle WAL) is the position of the last
//! *durable* checkpoint (`checkpoint_complete`), sent at once and with every status update.
//! A heartbeat (`pg_logical_emit_message`, every `heartbeat_interval`) makes a quiet database
//! write WAL the slot can move past, and gives event-time progress (`cdc::stream`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::changes::{ChangeDecoder, HEARTBEAT_PREFIX, stamp_event_times};
use super::checks::{self, Fault};
use super::snapshot::{Chunk, ChunkReader, SnapshotTable};
use super::wire::{ConnectOptions, Connection, Lsn, PgError, ReplicationMessage};
use super::wire::{quote_ident, quote_literal};
use crate::cdc::stream::{ArrivalOrder, CdcTable};
use crate::cdc::{Change, ChangeStream, Decoded, Op, SnapshotMarker, Version};
use crate::dataflow::{ConnectorPosition, PortSpec, ReadBuffers, ReadStatus, Source};
use crate::dataflow::{Position, SourcePosition};
use crate::error::{ErrorClass, RunError};
use crate::format::DecodeError;
use crate::types::{Epoch, SchemaRef, Value};

/// How long one read keeps gathering changes that keep arriving.
const GATHER: Duration = Duration::from_millis(5);

/// What a `PostgresSource` is built from.
#[derive(Clone, Debug)]
pub struct PostgresSpec {
    pub node: String,
    pub connect: ConnectOptions,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<CdcTable>,
    /// Read the tables before streaming, when the slot is new (or no checkpoint says the
    /// snapshot was read).
    pub snapshot: bool,
    pub chunk_rows: usize,
    /// Connections reading snapshot chunks at once (`snapshot`).
    pub snapshot_workers: usize,
    /// How long a read waits for the server when nothing is pending.
    pub poll_interval: Duration,
    /// How often the server is told the confirmed LSN without being asked.
    pub status_interval: Duration,
    pub heartbeat_interval: Option<Duration>,
    /// WAL retained for the slot beyond which the source warns (`/status`, a WARN line).
    pub max_retained_wal: u64,
    /// `event_time.field`: changes take their event time from this timestamp column of their
    /// row instead of the commit time (`changes::stamp_event_times`); heartbeats then move
    /// the slot but not event time.
    pub event_time_column: Option<String>,
    /// `until: caught_up`: end once every change committed before the run started is read.
    pub until_caught_up: bool,
    pub instance: usize,
}

impl PostgresSpec {
    /// A spec with the `postgres:` block's defaults: the publication named after the slot, a
    /// snapshot in chunks of 10,000 rows by one worker, a heartbeat every 10 s, commit time
    /// as event time, streaming on; instance 0.
    pub fn new(node: &str, connect: ConnectOptions, slot: &str, tables: Vec<CdcTable>) -> Self {
        PostgresSpec {
            node: node.to_string(),
            connect,
            slot: slot.to_string(),
            publication: slot.to_string(),
            tables,
            snapshot: true,
            chunk_rows: 10_000,
            snapshot_workers: 1,
            poll_interval: Duration::from_millis(10),
            status_interval: Duration::from_secs(10),
            heartbeat_interval: Some(Duration::from_secs(10)),
            max_retained_wal: 1 << 30,
            event_time_column: None,
            until_caught_up: false,
            instance: 0,
        }
    }
}

/// Where the source is; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PgPosition {
    /// The slot read (a restore into another slot is refused).
    pub slot: String,
    /// The end of the last transaction wholly emitted: streaming resumes here.
    pub lsn: u64,
    /// Changes of the transaction after `lsn` already emitted.
    pub skip: u64,
    /// The snapshot still to read: the table (port index) and the key of its last row read.
    pub snapshot: Option<SnapshotPosition>,
    /// Ports whose snapshot has ended.
    pub ended: Vec<String>,
    /// Ports that have received a change (for the silent-table warning).
    pub received: Vec<String>,
    pub arrival: ArrivalOrder,
    /// With `event_time.field`: the latest event time read from the column (a truncate's).
    #[serde(default)]
    pub event_time_ms: Option<i64>,
    /// With `until: caught_up`: the WAL position the run reads up to (the server's when the
    /// first run started streaming).
    #[serde(default)]
    pub until_lsn: Option<u64>,
}

/// A snapshot in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPosition {
    pub table: usize,
    /// The key columns' text of the last row read (`None`: the table's first chunk).
    pub after: Option<Vec<String>>,
}

impl ConnectorPosition for PgPosition {
    const KIND: &'static str = "postgres";
    const VERSION: u32 = 1;
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Not connected yet.
    Start,
    Snapshot(SnapshotPosition),
    Streaming {
        started: bool,
    },
}

/// Replication lag and the WAL the slot retains, as last measured.
#[derive(Clone, Copy, Debug, Default)]
struct Lag {
    bytes: u64,
    ms: u64,
    retained: u64,
    /// The retained WAL was over `max_retained_wal` (warned once per crossing).
    over: bool,
}

pub struct PostgresSource {
    spec: PostgresSpec,
    stream: ChangeStream,
    decoder: ChangeDecoder,
    snapshot_tables: Vec<Arc<SnapshotTable>>,
    /// The snapshot's workers (from the first chunk on), and the chunk being handed on with
    /// the index of its next row.
    chunks: Option<ChunkReader>,
    pending: Option<(Chunk, usize)>,
    sql: Option<Connection>,
    repl: Option<Connection>,
    phase: Phase,
    /// The end of the last transaction wholly emitted.
    lsn: Lsn,
    /// Changes of the current transaction emitted.
    in_tx: u64,
    inside_tx: bool,
    /// Changes of the first transaction to skip after a restore.
    skip: u64,
    /// The position of the last durable checkpoint: what the server may forget.
    confirmed: Lsn,
    /// The highest WAL position received.
    received: Lsn,
    last_status_ms: i64,
    last_heartbeat_ms: i64,
    restored: bool,
    /// Commit time of the last transaction read (database clock, ms).
    last_commit_ms: Option<i64>,
    /// The last read found nothing to read.
    caught_up: bool,
    /// The last measurement of the slot and the lag (`measure`).
    lag: Lag,
    last_measure_ms: i64,
    /// Connected and checked (`start`).
    prepared: bool,
    /// A bootstrap: the snapshot only, no streaming.
    bootstrap: bool,
    decoded: Vec<Decoded>,
    /// With `event_time.field`: the latest event time read from the column.
    latest_event_ms: Option<i64>,
    /// With `until: caught_up`: where reading ends.
    until_lsn: Option<Lsn>,
}

fn external(node: &str, e: PgError) -> RunError {
    let class = if e.is_transient() {
        ErrorClass::Transient
    } else {
        ErrorClass::Definite
    };
    RunError::External {
        component: node.to_string(),
        message: format!("postgres: {e}"),
        class,
    }
}

fn definite(node: &str, message: String) -> RunError {
    RunError::External {
        component: node.to_string(),
        message,
        class: ErrorClass::Definite,
    }
}

impl PostgresSource {
    pub fn new(spec: PostgresSpec) -> Result<PostgresSource, RunError> {
        let snapshot_tables = spec
            .tables
            .iter()
            .map(|t| {
                let schema = t.config.schema.clone();
                let key: Vec<usize> = t
                    .config
                    .key_columns
                    .iter()
                    .filter_map(|k| schema.index_of(k))
                    .collect();
                if key.is_empty() {
                    return Err(RunError::build(
                        &spec.node,
                        format!("table `{}` needs its key (the primary key columns)", t.port),
                    ));
                }
                Ok(Arc::new(SnapshotTable {
                    name: t.id.to_string(),
                    relation: format!("{}.{}", quote_ident(&t.id.schema), quote_ident(&t.id.table)),
                    select: schema
                        .fields
                        .iter()
                        .map(|f| quote_ident(&f.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    key_list: key
                        .iter()
                        .map(|&i| quote_ident(&schema.field(i).name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    key,
                    schema,
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PostgresSource {
            stream: ChangeStream::new(&spec.node, spec.tables.clone()),
            decoder: ChangeDecoder::new(
                spec.tables.iter().map(|t| (t.id.clone(), t.config.clone())),
            ),
            snapshot_tables,
            chunks: None,
            pending: None,
            sql: None,
            repl: None,
            phase: Phase::Start,
            lsn: Lsn(0),
            in_tx: 0,
            inside_tx: false,
            skip: 0,
            confirmed: Lsn(0),
            received: Lsn(0),
            last_status_ms: 0,
            last_heartbeat_ms: 0,
            restored: false,
            last_commit_ms: None,
            caught_up: false,
            lag: Lag::default(),
            last_measure_ms: i64::MIN,
            prepared: false,
            bootstrap: false,
            decoded: Vec::new(),
            latest_event_ms: None,
            until_lsn: None,
            spec,
        })
    }

    fn err(&self, e: PgError) -> RunError {
        external(&self.spec.node, e)
    }

    fn sql(&mut self) -> Result<&mut Connection, RunError> {
        if self.sql.is_none() {
            let c = Connection::connect(&self.spec.connect, false).map_err(|e| self.err(e))?;
            self.sql = Some(c);
        }
        Ok(self.sql.as_mut().expect("connected"))
    }

    /// A check's failure as the run's error.
    fn fault(&self, f: Fault) -> RunError {
        match f {
            Fault::Pg(e) => external(&self.spec.node, e),
            Fault::Explained(m) => definite(&self.spec.node, m),
        }
    }

    /// Connects and prepares: settings, tables, publication, slot; decides where to start.
    fn start(&mut self) -> Result<(), RunError> {
        let tables = self.spec.tables.clone();
        let sql = self.sql()?;
        let checked = checks::wal_level(sql)
            .and_then(|()| tables.iter().try_for_each(|t| checks::table(sql, t)));
        checked.map_err(|f| self.fault(f))?;
        self.ensure_publication()?;
        let slot_lsn = self.ensure_slot()?;
        self.prepared = true;
        if !self.restored {
            self.lsn = slot_lsn;
            self.phase = if self.spec.snapshot && !self.spec.tables.is_empty() {
                Phase::Snapshot(SnapshotPosition {
                    table: 0,
                    after: None,
                })
            } else {
                Phase::Streaming { started: false }
            };
        }
        Ok(())
    }

    fn ensure_publication(&mut self) -> Result<(), RunError> {
        let node = self.spec.node.clone();
        let publication = self.spec.publication.clone();
        let tables = self.spec.tables.clone();
        let sql = self.sql()?;
        let exists = checks::publication_exists(sql, &publication, &tables);
        if exists.map_err(|f| self.fault(f))? {
            return Ok(());
        }
        let sql = self.sql()?;
        let created = sql.query(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(&publication),
            checks::relations(&tables).join(", ")
        ));
        if let Err(e) = created {
            return Err(match e.code() {
                Some("42501") => self.fault(checks::cannot_create_publication(
                    &publication,
                    &tables,
                    &e.to_string(),
                )),
                _ => external(&node, e),
            });
        }
        tracing::info!(source = %node, publication = %publication, "publication created");
        Ok(())
    }

    /// Creates the slot if missing; returns where streaming starts for a run without a
    /// checkpoint (the new slot's consistent point, or an existing slot's confirmed LSN).
    fn ensure_slot(&mut self) -> Result<Lsn, RunError> {
        let node = self.spec.node.clone();
        let slot = self.spec.slot.clone();
        let sql = self.sql()?;
        let found = checks::slot(sql, &slot);
        if let checks::Slot::Present { confirmed, .. } = found.map_err(|f| self.fault(f))? {
            return Ok(confirmed);
        }
        if self.restored {
            return Err(definite(
                &node,
                format!(
                    "postgres: replication slot `{slot}` does not exist any more (dropped?): the \
                     changes after the checkpoint's LSN {} are gone from the server. Start over \
                     without the checkpoint (`--fresh-start`), which takes a new snapshot",
                    self.lsn
                ),
            ));
        }
        let mut repl = match Connection::connect(&self.spec.connect, true) {
            Ok(repl) => repl,
            Err(e) if checks::is_refusal(&e) => {
                return Err(self.fault(checks::may_not_replicate(&self.spec.connect.user, &e)));
            }
            Err(e) => return Err(external(&node, e)),
        };
        let created = repl
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
                quote_ident(&slot)
            ))
            .map_err(|e| external(&node, e))?;
        let point: Lsn = created[0]
            .get(0, "consistent_point")
            .unwrap_or("0/0")
            .parse()
            .map_err(|e| self.err(e))?;
        tracing::info!(source = %node, slot = %slot, lsn = %point, "replication slot created");
        self.repl = Some(repl);
        Ok(point)
    }

    /// Hands on up to `max_records` rows of the table being snapshotted, reading its next
    /// chunk when the last one is all handed on (`snapshot`).
    fn snapshot_rows(
        &mut self,
        at: SnapshotPosition,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<(), RunError> {
        if self.pending.is_none() {
            crate::failpoint::hit("postgres-snapshot-chunk");
            crate::failpoint::slow("postgres-snapshot-chunk");
            let table = self.snapshot_tables[at.table].clone();
            self.sql()?;
            if self.chunks.is_none() {
                let spec = &self.spec;
                let reader =
                    ChunkReader::new(&spec.connect, spec.snapshot_workers, spec.chunk_rows);
                self.chunks = Some(reader.map_err(|f| self.fault(f))?);
            }
            let reader = self.chunks.as_mut().expect("made above");
            let sql = self.sql.as_mut().expect("connected");
            let chunk = reader.next(sql, at.table, &table, &at.after);
            let chunk = chunk.map_err(|f| self.fault(f))?;
            self.pending = Some((chunk, 0));
        }
        let table = self.snapshot_tables[at.table].clone();
        let id = self.spec.tables[at.table].id.clone();
        let (chunk, next) = self.pending.as_mut().expect("a chunk");
        let ts_ms = chunk.ts_ms.unwrap_or(now_ms);
        let end = (*next + max_records.max(1)).min(chunk.rows.len());
        let time_column = self
            .spec
            .event_time_column
            .as_ref()
            .and_then(|c| table.schema.index_of(c));
        for i in *next..end {
            let after = std::mem::take(&mut chunk.rows[i]);
            let at = match time_column.map(|c| &after[c]) {
                None => ts_ms,
                Some(Value::Timestamp(us)) => us.div_euclid(1000),
                Some(_) => {
                    // No event time: the row goes to dead_letter, whole.
                    let column = self.spec.event_time_column.as_deref().unwrap_or("");
                    let mut raw = Vec::new();
                    crate::format::json::JsonEncoder::with_columns(table.schema.clone(), None)
                        .encode_row(&after, &mut raw);
                    crate::dead_letter::push(
                        &mut out.dead_letters,
                        &self.spec.node,
                        &self.spec.slot,
                        &format!("snapshot of {id}, key {:?}", chunk.keys[i]),
                        &format!("`{column}` (event_time.field) is null"),
                        &raw,
                        ts_ms,
                    );
                    continue;
                }
            };
            if time_column.is_some() {
                self.latest_event_ms = Some(self.latest_event_ms.map_or(at, |l| l.max(at)));
            }
            let key = table
                .key
                .iter()
                .map(|&k| (table.schema.field(k).name.as_str().into(), after[k].clone()))
                .collect();
            let change = Change {
                table: id.clone(),
                op: Op::Read,
                columns: table.schema.clone(),
                key,
                before: None,
                after: Some(after),
                unavailable: Vec::new(),
                version: Version {
                    commit_lsn: chunk.low.0,
                    ordinal: 0,
                },
                snapshot: SnapshotMarker::True,
                tx_id: None,
                source_ts_ms: Some(at),
            };
            self.stream.apply(0, Decoded::Change(change), out, now_ms);
        }
        let after = match end.checked_sub(1) {
            Some(last) if end > *next => Some(chunk.keys[last].clone()),
            _ => at.after.clone(),
        };
        *next = end;
        if end < chunk.rows.len() || !chunk.last_of_table {
            if end >= chunk.rows.len() {
                self.pending = None;
            }
            self.phase = Phase::Snapshot(SnapshotPosition {
                table: at.table,
                after,
            });
            return Ok(());
        }
        self.pending = None;
        let end_at = match self.spec.event_time_column {
            Some(_) => self.latest_event_ms.unwrap_or(0),
            None => ts_ms,
        };
        self.stream.end_table_snapshot(at.table, out, end_at);
        tracing::info!(source = %self.spec.node, table = %id, "table snapshot read");
        self.phase = if at.table + 1 < self.spec.tables.len() {
            Phase::Snapshot(SnapshotPosition {
                table: at.table + 1,
                after: None,
            })
        } else {
            // The workers' connections are not needed any more.
            self.chunks = None;
            Phase::Streaming { started: false }
        };
        Ok(())
    }

    fn start_streaming(&mut self) -> Result<(), RunError> {
        let node = self.spec.node.clone();
        if self.spec.until_caught_up && self.until_lsn.is_none() {
            let now = self
                .sql()?
                .query("SELECT pg_current_wal_lsn()::text AS lsn")
                .map_err(|e| external(&node, e))?;
            let lsn: Lsn = now[0]
                .get(0, "lsn")
                .unwrap_or("0/0")
                .parse()
                .map_err(|e| external(&node, e))?;
            tracing::info!(source = %node, lsn = %lsn, "reading up to the WAL position of now (until: caught_up)");
            self.until_lsn = Some(lsn);
        }
        if self.repl.is_none() {
            let c =
                Connection::connect(&self.spec.connect, true).map_err(|e| external(&node, e))?;
            self.repl = Some(c);
        }
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}, \
             messages 'true')",
            quote_ident(&self.spec.slot),
            self.lsn,
            quote_literal(&self.spec.publication)
        );
        let repl = self.repl.as_mut().expect("connected");
        repl.start_replication(&command)
            .map_err(|e| match e.code() {
                Some("55006") => definite(
                    &node,
                    format!(
                        "postgres: replication slot `{}` is in use by another process ({e}); \
                     each pipeline needs a slot of its own",
                        self.spec.slot
                    ),
                ),
                _ => external(&node, e),
            })?;
        self.phase = Phase::Streaming { started: true };
        tracing::info!(source = %node, slot = %self.spec.slot, lsn = %self.lsn, "streaming changes");
        Ok(())
    }

    /// Measures (every status interval) how far behind the server the source is and how
    /// much WAL its slot keeps; publishes the gauges and warns when the slot keeps more
    /// than `max_retained_wal`.
    fn measure(&mut self, now_ms: i64) -> Result<(), RunError> {
        if now_ms.saturating_sub(self.last_measure_ms)
            < self.spec.status_interval.as_millis() as i64
        {
            return Ok(());
        }
        self.last_measure_ms = now_ms;
        let node = self.spec.node.clone();
        // What the server has sent or filtered (a keepalive's end) counts as read.
        let (slot, lsn) = (self.spec.slot.clone(), self.lsn.max(self.received));
        let r = self
            .sql()?
            .query(&format!(
                "SELECT (pg_current_wal_lsn() - '{lsn}'::pg_lsn)::int8::text AS lag, \
                 (pg_current_wal_lsn() - restart_lsn)::int8::text AS retained, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::int8::text AS now \
                 FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(&slot)
            ))
            .map_err(|e| external(&node, e))?;
        let num = |c: &str| r[0].get(0, c).and_then(|v| v.parse::<i64>().ok());
        let (Some(lag), Some(retained), Some(db_now)) = (num("lag"), num("retained"), num("now"))
        else {
            return Ok(());
        };
        let bytes = lag.max(0) as u64;
        let ms = match self.last_commit_ms {
            Some(c) if bytes > 0 && !self.caught_up => (db_now - c).max(0) as u64,
            _ => 0,
        };
        let retained = retained.max(0) as u64;
        let over = retained > self.spec.max_retained_wal;
        if over && !self.lag.over {
            tracing::warn!(
                source = %node,
                slot = %slot,
                retained_mib = retained >> 20,
                "the replication slot retains more WAL than max_retained_wal: the pipeline is \
                 behind or its checkpoints do not complete, and the database's disk fills"
            );
        }
        self.lag = Lag {
            bytes,
            ms,
            retained,
            over,
        };
        let label = [(crate::metrics::LABEL_NODE, node)];
        metrics::gauge!(crate::metrics::CDC_REPLICATION_LAG_BYTES, &label).set(bytes as f64);
        metrics::gauge!(crate::metrics::CDC_REPLICATION_LAG_MS, &label).set(ms as f64);
        metrics::gauge!(crate::metrics::CDC_SLOT_RETAINED_BYTES, &label).set(retained as f64);
        Ok(())
    }

    fn send_status(&mut self, now_ms: i64, reply: bool) -> Result<(), RunError> {
        let (received, confirmed) = (self.received.max(self.confirmed), self.confirmed);
        if let Some(repl) = self
            .repl
            .as_mut()
            .filter(|_| self.phase == Phase::Streaming { started: true })
        {
            repl.send_status(received, confirmed, now_ms.saturating_mul(1000), reply)
                .map_err(|e| external(&self.spec.node, e))?;
            self.last_status_ms = now_ms;
        }
        Ok(())
    }

    /// Reads what the server has sent, up to `max_records` changes.
    fn stream_changes(
        &mut self,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<ReadStatus, RunError> {
        if let Some(every) = self.spec.heartbeat_interval
            && now_ms - self.last_heartbeat_ms >= every.as_millis() as i64
        {
            self.last_heartbeat_ms = now_ms;
            let node = self.spec.node.clone();
            self.sql()?
                .query(&format!(
                    "SELECT pg_logical_emit_message(false, {}, clock_timestamp()::text)",
                    quote_literal(HEARTBEAT_PREFIX)
                ))
                .map_err(|e| external(&node, e))?;
        }
        if now_ms - self.last_status_ms >= self.spec.status_interval.as_millis() as i64 {
            self.send_status(now_ms, false)?;
        }
        self.measure(now_ms)?;
        if let Some(until) = self.until_lsn
            && self.lsn >= until
            && !self.inside_tx
            && self.skip == 0
        {
            tracing::info!(source = %self.spec.node, lsn = %self.lsn, "caught up with the WAL position of the start: the source ends");
            return Ok(ReadStatus::Finished);
        }
        let node = self.spec.node.clone();
        let mut emitted = 0usize;
        let mut waited = false;
        let gathering = std::time::Instant::now();
        let mut reached_end = false;
        while emitted < max_records && !reached_end {
            // Wait for the first message; then gather what arrives for at most
            // `GATHER` (larger batches under load), and after that only what has already
            // arrived, so a steady trickle is handed over within milliseconds instead of
            // being gathered into full batches. (How long a call gathers changes batch
            // boundaries, never what is emitted.)
            let timeout = if emitted == 0 && !waited {
                self.spec.poll_interval
            } else if gathering.elapsed() < GATHER {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
            waited = true;
            let repl = self.repl.as_mut().expect("streaming");
            let Some(msg) = repl
                .recv_replication(timeout)
                .map_err(|e| external(&node, e))?
            else {
                break;
            };
            match msg {
                ReplicationMessage::Keepalive { end, reply, .. } => {
                    // Not event-time progress: the server's clock says nothing the WAL does
                    // not (a commit flushed just after a keepalive can carry an earlier
                    // time); heartbeats written into the WAL are. But between transactions
                    // everything before `end` that concerns this slot has been sent, so the
                    // position moves there: a quiet slot in a busy cluster lets the server
                    // recycle the WAL of others (a transaction still open commits after
                    // `end` and is sent again from a restart there).
                    self.received = self.received.max(end);
                    if !self.inside_tx && self.skip == 0 {
                        self.lsn = self.lsn.max(end);
                    }
                    if reply {
                        self.send_status(now_ms, false)?;
                    }
                }
                ReplicationMessage::XLogData {
                    start, end, data, ..
                } => {
                    self.received = self.received.max(end);
                    if data.first() == Some(&b'B') {
                        self.inside_tx = true;
                        self.in_tx = 0;
                    }
                    let mut decoded = std::mem::take(&mut self.decoded);
                    let mut result = self.decoder.decode(start, &data, &mut decoded);
                    if let (Ok(_), Some(column)) = (&result, &self.spec.event_time_column) {
                        let mut latest = self.latest_event_ms;
                        match stamp_event_times(&mut decoded, column, &mut latest) {
                            Ok(()) => self.latest_event_ms = latest,
                            Err(reason) => result = Err(DecodeError::new(reason)),
                        }
                    }
                    match result {
                        Ok(commit) => {
                            for d in decoded.drain(..) {
                                if matches!(d, Decoded::Heartbeat { .. })
                                    && self.spec.event_time_column.is_some()
                                {
                                    // Event time comes from the rows only.
                                    continue;
                                }
                                let change = matches!(d, Decoded::Change(_));
                                if change && self.inside_tx {
                                    self.in_tx += 1;
                                    if self.skip > 0 {
                                        self.skip -= 1;
                                        continue;
                                    }
                                }
                                self.stream.apply(0, d, out, now_ms);
                                emitted += 1;
                            }
                            if let Some(end) = commit {
                                self.last_commit_ms = self.decoder.last_commit_ms();
                                self.lsn = end;
                                self.inside_tx = false;
                                self.in_tx = 0;
                                self.skip = 0;
                                if self.until_lsn.is_some_and(|u| self.lsn >= u) {
                                    // The end of a bounded run: nothing of the next
                                    // transaction is read.
                                    reached_end = true;
                                }
                            }
                        }
                        Err(e) => {
                            decoded.clear();
                            // At its commit time, like the change it is, when known.
                            let at = self.decoder.current_commit_ms().unwrap_or(now_ms);
                            crate::dead_letter::push(
                                &mut out.dead_letters,
                                &node,
                                &self.spec.slot,
                                &format!("lsn {start}"),
                                &e.reason,
                                &data,
                                at,
                            );
                            emitted += 1;
                        }
                    }
                    self.decoded = decoded;
                }
            }
        }
        self.caught_up = emitted == 0;
        if emitted == 0 && self.until_lsn.is_some() {
            // Ask for a keepalive: its WAL end moves the position past the end between
            // transactions.
            self.send_status(now_ms, true)?;
        }
        if emitted == 0 && out.progress.is_none() {
            out.caught_up.push(0);
            return Ok(ReadStatus::Pending {
                retry_at_ms: now_ms,
            });
        }
        Ok(ReadStatus::Data { partition: 0 })
    }
}

impl Source for PostgresSource {
    fn schema(&self) -> SchemaRef {
        crate::cdc::stream::main_schema()
    }

    fn partitions(&self) -> Vec<String> {
        if self.spec.instance == 0 {
            vec![self.spec.slot.clone()]
        } else {
            Vec::new()
        }
    }

    fn extra_ports(&self) -> Vec<PortSpec> {
        self.stream.ports()
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        self.stream.connect_ports(consumed);
    }

    fn read(
        &mut self,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<ReadStatus, RunError> {
        if self.spec.instance != 0 {
            return Ok(ReadStatus::Finished);
        }
        if !self.prepared {
            self.start()?;
        }
        loop {
            match self.phase.clone() {
                Phase::Start => {
                    return Err(definite(&self.spec.node, "postgres: not started".into()));
                }
                Phase::Snapshot(at) => {
                    self.snapshot_rows(at, out, max_records, now_ms)?;
                    return Ok(ReadStatus::Data { partition: 0 });
                }
                Phase::Streaming { started: false } if self.bootstrap => {
                    // The snapshot is read: a bootstrap ends here (the savepoint's position
                    // starts streaming at the slot's start).
                    return Ok(ReadStatus::Pending {
                        retry_at_ms: now_ms + 100,
                    });
                }
                Phase::Streaming { started: false } => {
                    if !self.spec.snapshot {
                        // No snapshot comes (`snapshot: never`): a gated enrichment waits
                        // for none.
                        self.stream.end_snapshots(out);
                    }
                    self.start_streaming()?;
                    if out.extra.iter().any(|b| !b.is_empty()) {
                        // The snapshots' ends go out with a `Data` status of their own: the
                        // stream may have nothing yet, and a `Pending` carries no records.
                        return Ok(ReadStatus::Data { partition: 0 });
                    }
                }
                Phase::Streaming { started: true } => {
                    return self.stream_changes(out, max_records, now_ms);
                }
            }
        }
    }

    fn positions(&self) -> Vec<SourcePosition> {
        if self.spec.instance != 0 {
            return Vec::new();
        }
        let p = PgPosition {
            slot: self.spec.slot.clone(),
            lsn: self.lsn.0,
            // Inside a transaction, its changes read so far (skipped ones included); between
            // transactions, what a restore still has to skip of the next one.
            skip: if self.inside_tx {
                self.in_tx
            } else {
                self.skip
            },
            snapshot: match &self.phase {
                Phase::Snapshot(at) => Some(at.clone()),
                _ => None,
            },
            ended: self.stream.ended_snapshots(),
            received: self.stream.received_tables(),
            arrival: self.stream.arrival_order().clone(),
            event_time_ms: self.latest_event_ms,
            until_lsn: self.until_lsn.map(|l| l.0),
        };
        vec![SourcePosition {
            source: self.spec.node.clone(),
            partition: self.spec.slot.clone(),
            position: Position::of(&p),
        }]
    }

    fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError> {
        let Some(sp) = positions.iter().find(|p| p.partition == self.spec.slot) else {
            return Ok(());
        };
        let p: PgPosition = sp
            .position
            .decode()
            .map_err(|e| RunError::restore(&self.spec.node, e))?;
        if p.slot != self.spec.slot {
            return Err(RunError::restore(
                &self.spec.node,
                format!("the checkpoint was read from slot `{}`", p.slot),
            ));
        }
        if let Some(s) = &p.snapshot {
            let table = self.snapshot_tables.get(s.table).ok_or_else(|| {
                RunError::restore(
                    &self.spec.node,
                    format!(
                        "the snapshot position names table {}, which is not configured",
                        s.table
                    ),
                )
            })?;
            if s.after.as_ref().is_some_and(|k| k.len() != table.key.len()) {
                return Err(RunError::restore(
                    &self.spec.node,
                    "the snapshot position's key does not match the table's key columns",
                ));
            }
        }
        self.lsn = Lsn(p.lsn);
        self.confirmed = Lsn(p.lsn);
        self.skip = p.skip;
        // Chunks read ahead of the restored position are read again.
        self.chunks = None;
        self.pending = None;
        self.phase = match p.snapshot {
            Some(at) => Phase::Snapshot(at),
            None => Phase::Streaming { started: false },
        };
        self.stream.restore_ended_snapshots(&p.ended);
        self.stream.restore_received_tables(&p.received);
        self.stream.restore_arrival_order(p.arrival);
        self.latest_event_ms = p.event_time_ms;
        // A bounded run's end, while the source is still bounded.
        self.until_lsn = p.until_lsn.filter(|_| self.spec.until_caught_up).map(Lsn);
        // Connecting, the checks and the slot come at the first read.
        self.restored = true;
        Ok(())
    }

    fn checkpoint_complete(
        &mut self,
        _epoch: Epoch,
        positions: &[SourcePosition],
    ) -> Result<(), RunError> {
        for sp in positions {
            if let Ok(p) = sp.position.decode::<PgPosition>()
                && p.slot == self.spec.slot
                && p.snapshot.is_none()
            {
                self.confirmed = self.confirmed.max(Lsn(p.lsn));
            }
        }
        let now = self.last_status_ms;
        self.send_status(now, false)
    }

    /// A bootstrap reads the tables' snapshot (creating the slot first, so the run from the
    /// savepoint streams every change after it).
    fn start_bootstrap(&mut self) -> bool {
        self.bootstrap = self.spec.instance == 0;
        self.bootstrap
    }

    fn bootstrap_done(&self) -> bool {
        matches!(self.phase, Phase::Streaming { .. })
    }

    fn warnings(&self) -> Vec<String> {
        let mut w = self.stream.warnings();
        if self.lag.over {
            w.push(format!(
                "replication slot `{}` retains {} MiB of WAL (max_retained_wal {} MiB): the \
                 pipeline is behind ({} MiB, {} ms) or its checkpoints do not complete",
                self.spec.slot,
                self.lag.retained >> 20,
                self.spec.max_retained_wal >> 20,
                self.lag.bytes >> 20,
                self.lag.ms
            ));
        }
        w
    }
}
