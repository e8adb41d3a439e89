//! Change data capture: the typed change record every CDC source produces (`Change`), its
//! ordering key (`Version`), snapshot markers, the formats that decode records into them
//! (`ChangeFormat`: Debezium JSON in `debezium/`), and the change-stream machinery that turns
//! decoded records into a source's ports (`stream.rs`: one port per table, snapshot ends,
//! heartbeats as progress).
//!
//! Owns decoding of change events into typed change rows; it does no I/O (transports hand it
//! bytes and send on the batches it fills) and does not materialize anything (the
//! materializer consumes change rows).
//!
//! # Versions and commit order (Debezium Postgres)
//!
//! A `Version` is `(commit_lsn, ordinal)`, compared lexicographically:
//! - `commit_lsn`: the first element of `source.sequence` when it is not null, else
//!   `source.lsn`. In Debezium 3.6.3 with pgoutput the first element is the end LSN of the
//!   last commit the connector saw before this transaction: it is the same for every change
//!   of one transaction and strictly increases from one transaction to the next in commit
//!   order (pgoutput sends transactions in commit order). It is *not* the LSN of this
//!   transaction's own commit record, which a change event does not carry.
//! - `ordinal`: `source.lsn` of the change (else the second element of `source.sequence`):
//!   WAL order, which is statement order inside one transaction.
//!
//! Caveats, for the materializer:
//! - The first transaction after a connector (re)start has `sequence[0] = null`; it falls
//!   back to its change LSN, which is after every commit that preceded it in serial
//!   workloads but can be *lower* than a concurrent transaction that committed earlier. A
//!   replay right after a restart may therefore compare slightly wrong for that one
//!   transaction; keyed upserts with the version still converge once later changes arrive.
//! - A primary-key change arrives as `d` (old key) and `c` (new key) with the *same* version:
//!   they touch different keys, so per key the version stays unique.
//! - Snapshot (`r`) events all share one version: the snapshot's consistent LSN (every one
//!   has `sequence = [null, lsn]`). They are distinct per key, and every streamed change
//!   after the snapshot has a larger version. The materializer applies an `r` row only when
//!   the key has no row with a version `>=` it (so a replayed snapshot never overwrites newer
//!   streamed state) and treats equal versions for a key as duplicates (at-least-once replay).
//! - Incremental-snapshot reads (`snapshot = incremental`) carry no `lsn`: their ordinal is
//!   0 and, without a `sequence` either, their version is `Version::UNKNOWN` (0, 0); apply
//!   them only when the key is absent.
//! - `m` (logical message) events carry no table: `TableId` is empty there.
//!
//! # Versions of the other Debezium connectors
//!
//! The decoder takes the position each connector gives (whichever fields the `source` block
//! has, in this order), so that the materializer (`state::versioned`, which compares versions
//! per key and drops a change not newer than the key's) sees them in log order. Both parts
//! stay below 2^63 (the `_lsn`/`_ordinal` columns are integers). Per key, log order of the
//! changes is commit order: a second writer of a row waits for the first to commit.
//! - MySQL / MariaDB (`file`, `pos`, `row`): binlog files are `<base>.<NNNNNN>`, numbered in
//!   order; `(file number << 32 | pos, row)`. A record with only a `gtid` has no position.
//! - SQL Server (`commit_lsn`, `change_lsn`, `event_serial_no`; LSNs are hex
//!   `vlf:block:slot`, e.g. `0000002b:00000af0:0002`): the change LSN (else, for snapshot
//!   reads, the commit LSN) as `(vlf << 32 | block, slot << 32 | event_serial_no)`. The
//!   change LSN alone is used rather than the commit LSN first because both do not fit two
//!   63-bit integers, and per key it gives the same order.
//! - Oracle (`scn`, `commit_scn`, decimal strings): `(commit_scn, scn)`; a snapshot read has
//!   only `scn`: `(scn, scn)`.
//! - MongoDB (`ord` within the oplog second `ts_ms`): `(ts_ms, ord)`.
//!
//! A record with none of these (nor `lsn`/`sequence`) decodes with `Version::UNKNOWN`, and
//! the change stream (`stream::ArrivalOrder`) gives it the next version in arrival order
//! within its partition, after every snapshot read seen, with a WARN once per partition;
//! the counter is part of the source's checkpointed decoder state, so a replay after a
//! restart hands out the same versions. Incremental-snapshot reads keep `UNKNOWN`.

pub mod debezium;
pub mod inspect;
pub mod rows;
pub mod stream;

use compact_str::CompactString;

use crate::format::DecodeError;
use crate::types::{SchemaRef, Value};

pub use debezium::{DebeziumDecoder, UNAVAILABLE_VALUE};
pub use stream::{CdcTable, ChangeStream, TableConfig};

/// A change format: how the bytes of one record (a line of a file, a Kafka message, later a
/// replication message) become a `Decoded` value. `DebeziumDecoder` is one; the change-stream
/// machinery (`stream::ChangeStream`) takes what a format returns and knows none of them.
/// `&mut self` so that a format with state fits (pgoutput is sent each relation once, then
/// refers to it by id).
pub trait ChangeFormat: Send {
    /// Decodes one record. Bad input is an error with a lowercase reason (the record then
    /// goes to `dead_letter`); never panics.
    fn decode(&mut self, bytes: &[u8]) -> Result<Decoded, DecodeError>;
}

/// The operation of a change event (`op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A snapshot read.
    Read,
    Truncate,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message,
}

impl Op {
    /// The Debezium code of the operation: `c u d r t m`.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
        }
    }

    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            "m" => Op::Message,
            _ => return None,
        })
    }
}

/// `source.snapshot`: where an event stands in the initial snapshot.
/// `Last` marks the end of the whole snapshot (what a gated pipeline waits for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SnapshotMarker {
    First,
    True,
    FirstInDataCollection,
    LastInDataCollection,
    Last,
    /// Streaming (also when the field is absent or null).
    #[default]
    False,
    Incremental,
}

impl SnapshotMarker {
    /// The marker's text as Debezium writes it in `source.snapshot`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::First => "first",
            SnapshotMarker::True => "true",
            SnapshotMarker::FirstInDataCollection => "first_in_data_collection",
            SnapshotMarker::LastInDataCollection => "last_in_data_collection",
            SnapshotMarker::Last => "last",
            SnapshotMarker::False => "false",
            SnapshotMarker::Incremental => "incremental",
        }
    }

    /// From the marker's text; old connectors wrote a boolean, given here as `true`/`false`.
    pub fn parse(text: &str) -> Option<SnapshotMarker> {
        Some(match text {
            "first" => SnapshotMarker::First,
            "true" => SnapshotMarker::True,
            "first_in_data_collection" => SnapshotMarker::FirstInDataCollection,
            "last_in_data_collection" => SnapshotMarker::LastInDataCollection,
            "last" => SnapshotMarker::Last,
            "false" => SnapshotMarker::False,
            "incremental" => SnapshotMarker::Incremental,
            _ => return None,
        })
    }

    /// True for every marker except `False` (streaming).
    pub fn is_snapshot(self) -> bool {
        self != SnapshotMarker::False
    }
}

/// Orders changes of one Postgres database in commit order; see the module docs.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Version {
    pub commit_lsn: u64,
    pub ordinal: u64,
}

impl Version {
    /// An event that carries no position (incremental snapshot reads).
    pub const UNKNOWN: Version = Version {
        commit_lsn: 0,
        ordinal: 0,
    };
}

/// A table: Postgres schema and table name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub table: String,
}

impl TableId {
    pub fn new(schema: &str, table: &str) -> TableId {
        TableId {
            schema: schema.to_owned(),
            table: table.to_owned(),
        }
    }
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// A primary key: column names and values, in the order of the event's key.
pub type Key = Vec<(CompactString, Value)>;

/// One decoded row change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub table: TableId,
    pub op: Op,
    /// The columns of `before` and `after`: the configured schema of the table, or one
    /// built from the event (schema block or the JSON itself) for tables not configured.
    pub columns: SchemaRef,
    /// The record key; for a bare envelope (no key given) the table's configured key
    /// columns taken from `after` (or `before`), else empty.
    pub key: Key,
    /// The old row: on `u`/`d` with default replica identity only the key columns are real
    /// (Debezium fills NOT NULL columns with `""`/epoch); `None` on `c`/`r` and on `u`
    /// without `REPLICA IDENTITY FULL`.
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
    /// Indices into `after` of columns that arrived as the unchanged-TOAST placeholder
    /// (`__debezium_unavailable_value`): their value in `after` is `Null` and the
    /// materializer must keep the column's previous value. Ascending. (The same placeholder
    /// in `before` is simply `Null`.)
    pub unavailable: Vec<usize>,
    pub version: Version,
    pub snapshot: SnapshotMarker,
    pub tx_id: Option<i64>,
    /// `source.ts_ms`: commit time of the change in the database (event time).
    pub source_ts_ms: Option<i64>,
}

/// `BEGIN` or `END` of a transaction (transaction metadata topic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxStatus {
    Begin,
    End,
}

/// One record read from a change topic or file.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Change(Change),
    /// A key with a null value, sent after each delete. The table comes from the record's
    /// `topic` (`<prefix>.<schema>.<table>`) or the key schema's name, when either is given.
    Tombstone {
        key: Key,
        table: Option<TableId>,
    },
    /// A heartbeat (`{"ts_ms": …}`): the connector is alive at this wall-clock time.
    Heartbeat {
        ts_ms: i64,
    },
    /// Transaction metadata (`provide.transaction.metadata=true`); `id` is `"<txId>:<lsn>"`.
    Transaction {
        status: TxStatus,
        id: String,
        event_count: Option<u64>,
    },
}
