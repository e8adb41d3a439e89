//! pgoutput messages turned into the typed change records of `crate::cdc` (`Decoded`), as
//! the Debezium decoding path gives them for the same history, so the change-stream machinery
//! (`cdc::stream`) takes them unchanged. Stateful: pgoutput describes a table once
//! (`Relation`) and refers to it by id after, and a change's commit position and time come
//! from its transaction's `Begin`.
//!
//! Per message:
//! - `Insert` → `c` with `after`; `Update` → `u` with `after`, and `before` when the server
//!   sent the old row (REPLICA IDENTITY FULL) — an update that changes the key (the server
//!   sends the old key) becomes `d` of the old key then `c` of the new one, as Debezium does;
//!   `Delete` → `d` with `before` (the key columns, or the whole row with FULL);
//!   `Truncate` → one `t` per table; a logical message → `m` (the stream skips it), or a
//!   heartbeat when its prefix is `HEARTBEAT_PREFIX`.
//! - An unchanged TOASTed value is `Null` in `after` and listed in `unavailable` (the
//!   materializer keeps the previous value), as Debezium's placeholder is.
//! - The old row of an update or delete under REPLICA IDENTITY DEFAULT has its key columns
//!   and nulls (Debezium puts placeholder values in NOT NULL columns there; only the key is
//!   read from it). `tests/it/debezium.rs` checks the records equal Debezium 3.6.3's.
//! - Version: `(commit LSN of the transaction, LSN of the change)`: the same for every change
//!   of a transaction, strictly increasing from one transaction to the next in commit order,
//!   and in WAL (statement) order inside one. Event time: the commit time, or a column of the
//!   row (`stamp_event_times`).
//! - A configured table's rows have its configured columns (matched by name; a column the
//!   table no longer has is null) and key; another table's rows have its columns with types
//!   from Postgres (`values::data_type_of`) and the replica identity as key.

use std::sync::Arc;

use compact_str::CompactString;

use super::pgoutput::{self, Message, Relation, TupleValue};
use super::values::{data_type_of, from_text};
use super::wire::Lsn;
use crate::cdc::stream::TableConfig;
use crate::cdc::{Change, Decoded, Key, Op, SnapshotMarker, TableId, Version};
use crate::format::DecodeError;
use crate::types::{Field, Schema, SchemaRef, Value};

/// The prefix of the logical messages the source emits as heartbeats; their content is the
/// database's clock (`now()` as text).
pub const HEARTBEAT_PREFIX: &str = "watershed.heartbeat";

/// With `event_time.field`: each change's event time is read from `column` of its row — the
/// new row of an insert or update, the old row of a delete (which carries it only under
/// REPLICA IDENTITY FULL), the new row for both halves of a key change — and a truncate's is
/// `latest`, the latest event time stamped before it (0 before any). `latest` moves with each.
/// A change of a configured table whose column is null or missing is an error saying why
/// (the message goes to `dead_letter`); other tables' changes keep their commit time.
pub fn stamp_event_times(
    decoded: &mut [Decoded],
    column: &str,
    latest: &mut Option<i64>,
) -> Result<(), String> {
    let time_of = |c: &Change, row: Option<&Vec<Value>>| -> Result<Option<i64>, String> {
        let Some(i) = c.columns.index_of(column) else {
            return Ok(None);
        };
        match row.map(|r| &r[i]) {
            Some(Value::Timestamp(us)) => Ok(Some(us.div_euclid(1000))),
            _ => Err(format!(
                "{}: `{column}` (event_time.field) is null in the {} row of a change{}",
                c.table,
                if c.op == Op::Delete { "old" } else { "new" },
                if c.op == Op::Delete {
                    ": a delete's old row carries it only under REPLICA IDENTITY FULL"
                } else {
                    ""
                }
            )),
        }
    };
    let mut i = 0;
    while i < decoded.len() {
        let Decoded::Change(c) = &decoded[i] else {
            i += 1;
            continue;
        };
        let (at, halves) = match c.op {
            Op::Message => (None, 1),
            Op::Truncate => (Some(latest.unwrap_or(0)), 1),
            Op::Delete => match decoded.get(i + 1) {
                // A key change: both halves at the new row's time.
                Some(Decoded::Change(next))
                    if next.op == Op::Create && next.version == c.version =>
                {
                    (time_of(next, next.after.as_ref())?, 2)
                }
                _ => (time_of(c, c.before.as_ref())?, 1),
            },
            _ => (time_of(c, c.after.as_ref())?, 1),
        };
        if let Some(at) = at {
            for d in &mut decoded[i..i + halves] {
                if let Decoded::Change(c) = d {
                    c.source_ts_ms = Some(at);
                }
            }
            *latest = Some(latest.map_or(at, |l| l.max(at)));
        }
        i += halves;
    }
    Ok(())
}

/// How one relation's tuples become rows.
#[derive(Clone, Debug)]
struct RelationPlan {
    table: TableId,
    columns: SchemaRef,
    /// For each row column, the relation column it comes from.
    source: Vec<Option<usize>>,
    /// For each row column, its Postgres type (0 when the relation lacks the column).
    type_oids: Vec<u32>,
    /// Row columns of the key.
    key: Vec<usize>,
}

/// The transaction being read.
#[derive(Clone, Copy, Debug)]
struct Transaction {
    commit_lsn: Lsn,
    commit_time_ms: i64,
    xid: u32,
}

/// pgoutput → `Decoded`; see the module documentation.
pub struct ChangeDecoder {
    configured: ahash::AHashMap<TableId, TableConfig>,
    /// Commit time of the last transaction committed (ms).
    last_commit_ms: Option<i64>,
    relations: ahash::AHashMap<u32, RelationPlan>,
    tx: Option<Transaction>,
    in_stream: bool,
    /// User-defined array types (arrays of enums, domains, composites) the server described
    /// (`Type` messages): their values are arrays.
    user_arrays: ahash::AHashSet<u32>,
}

impl ChangeDecoder {
    pub fn new(configured: impl IntoIterator<Item = (TableId, TableConfig)>) -> ChangeDecoder {
        ChangeDecoder {
            configured: configured.into_iter().collect(),
            last_commit_ms: None,
            relations: ahash::AHashMap::new(),
            tx: None,
            in_stream: false,
            user_arrays: ahash::AHashSet::new(),
        }
    }

    /// Decodes the pgoutput message `data` that starts at WAL position `start`, pushing what
    /// it yields onto `out` (nothing for the messages that only describe: Begin, Commit,
    /// Relation, Type, Origin). Returns the commit's end LSN at a `Commit`.
    pub fn decode(
        &mut self,
        start: Lsn,
        data: &[u8],
        out: &mut Vec<Decoded>,
    ) -> Result<Option<Lsn>, DecodeError> {
        let msg =
            pgoutput::decode(data, self.in_stream).map_err(|e| DecodeError::new(e.to_string()))?;
        match msg {
            Message::Begin {
                final_lsn,
                commit_time_us,
                xid,
            } => {
                self.tx = Some(Transaction {
                    commit_lsn: final_lsn,
                    commit_time_ms: commit_time_us.div_euclid(1000),
                    xid,
                });
            }
            Message::Commit {
                end_lsn,
                commit_time_us,
                ..
            } => {
                self.tx = None;
                self.last_commit_ms = Some(commit_time_us.div_euclid(1000));
                return Ok(Some(end_lsn));
            }
            Message::Relation(r) => {
                let plan = self.plan(&r);
                self.relations.insert(r.id, plan);
            }
            Message::Type { id, name, .. } => {
                // Array types are named after their element with a leading `_`.
                if name.starts_with('_') {
                    self.user_arrays.insert(id);
                }
            }
            Message::Origin { .. } => {}
            Message::Insert { relation, new } => {
                let plan = self.relation(relation)?;
                let (after, unavailable) = row(plan, &new)?;
                out.push(self.change(plan, Op::Create, None, Some(after), unavailable, start)?);
            }
            Message::Update { relation, old, new } => {
                let plan = self.relation(relation)?;
                let (after, unavailable) = row(plan, &new)?;
                match old {
                    Some((b'K', old)) => {
                        // The key changed: the old key goes, the new one comes.
                        let (before, _) = row(plan, &old)?;
                        out.push(self.change(
                            plan,
                            Op::Delete,
                            Some(before),
                            None,
                            Vec::new(),
                            start,
                        )?);
                        out.push(self.change(
                            plan,
                            Op::Create,
                            None,
                            Some(after),
                            unavailable,
                            start,
                        )?);
                    }
                    Some((_, old)) => {
                        let (before, _) = row(plan, &old)?;
                        out.push(self.change(
                            plan,
                            Op::Update,
                            Some(before),
                            Some(after),
                            unavailable,
                            start,
                        )?);
                    }
                    None => out.push(self.change(
                        plan,
                        Op::Update,
                        None,
                        Some(after),
                        unavailable,
                        start,
                    )?),
                }
            }
            Message::Delete {
                relation,
                old: (_, old),
            } => {
                let plan = self.relation(relation)?;
                let (before, _) = row(plan, &old)?;
                out.push(self.change(plan, Op::Delete, Some(before), None, Vec::new(), start)?);
            }
            Message::Truncate { relations, .. } => {
                for id in relations {
                    let plan = self.relation(id)?;
                    out.push(self.change(plan, Op::Truncate, None, None, Vec::new(), start)?);
                }
            }
            Message::LogicalMessage {
                prefix, content, ..
            } => {
                if prefix == HEARTBEAT_PREFIX {
                    let text = std::str::from_utf8(content)
                        .map_err(|_| DecodeError::new("a heartbeat that is not text"))?;
                    let ts = crate::format::parse_timestamp(text).ok_or_else(|| {
                        DecodeError::new(format!("a heartbeat whose time is {text:?}"))
                    })?;
                    out.push(Decoded::Heartbeat {
                        ts_ms: ts.div_euclid(1000),
                    });
                } else {
                    let (commit_lsn, ts, xid) = self.position(start);
                    out.push(Decoded::Change(Change {
                        table: TableId::new("", ""),
                        op: Op::Message,
                        columns: Arc::new(Schema::new(Vec::new())),
                        key: Vec::new(),
                        before: None,
                        after: None,
                        unavailable: Vec::new(),
                        version: Version {
                            commit_lsn: commit_lsn.0,
                            ordinal: start.0,
                        },
                        snapshot: SnapshotMarker::False,
                        tx_id: xid,
                        source_ts_ms: ts,
                    }));
                }
            }
            Message::StreamStart { .. } => self.in_stream = true,
            Message::StreamStop => self.in_stream = false,
            Message::StreamCommit { .. } | Message::StreamAbort { .. } => {
                return Err(DecodeError::new(
                    "the server streams transactions in progress, which this source does not \
                     ask for",
                ));
            }
        }
        Ok(None)
    }

    /// The commit time (ms) of the transaction being decoded, if inside one.
    pub fn current_commit_ms(&self) -> Option<i64> {
        self.tx.map(|t| t.commit_time_ms)
    }

    /// The commit time (ms) of the last transaction whose `Commit` was decoded.
    pub fn last_commit_ms(&self) -> Option<i64> {
        self.last_commit_ms
    }

    fn relation(&self, id: u32) -> Result<&RelationPlan, DecodeError> {
        self.relations.get(&id).ok_or_else(|| {
            DecodeError::new(format!(
                "a change of relation {id}, which the server has not described"
            ))
        })
    }

    /// The commit position, commit time and transaction of a change at `start`: its
    /// transaction's, or its own position for a change outside one.
    fn position(&self, start: Lsn) -> (Lsn, Option<i64>, Option<i64>) {
        match self.tx {
            Some(t) => (t.commit_lsn, Some(t.commit_time_ms), Some(i64::from(t.xid))),
            None => (start, None, None),
        }
    }

    fn change(
        &self,
        plan: &RelationPlan,
        op: Op,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
        unavailable: Vec<usize>,
        start: Lsn,
    ) -> Result<Decoded, DecodeError> {
        let (commit_lsn, source_ts_ms, tx_id) = self.position(start);
        let key: Key = match after.as_ref().or(before.as_ref()) {
            Some(values) => plan
                .key
                .iter()
                .map(|&i| {
                    (
                        CompactString::from(plan.columns.field(i).name.as_str()),
                        values[i].clone(),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(Decoded::Change(Change {
            table: plan.table.clone(),
            op,
            columns: plan.columns.clone(),
            key,
            before,
            after,
            unavailable,
            version: Version {
                commit_lsn: commit_lsn.0,
                ordinal: start.0,
            },
            snapshot: SnapshotMarker::False,
            tx_id,
            source_ts_ms,
        }))
    }

    /// The type a column's values convert as: a user-defined array type as an array of text
    /// (`values::TEXT_ARRAY`), any other as itself.
    fn value_type(&self, type_oid: u32) -> u32 {
        if self.user_arrays.contains(&type_oid) {
            super::values::oid::TEXT_ARRAY
        } else {
            type_oid
        }
    }

    fn plan(&self, r: &Relation) -> RelationPlan {
        let table = TableId::new(&r.namespace, &r.name);
        let by_name = |name: &str| r.columns.iter().position(|c| c.name == name);
        match self.configured.get(&table) {
            Some(config) => {
                let columns = config.schema.clone();
                let source: Vec<Option<usize>> =
                    columns.fields.iter().map(|f| by_name(&f.name)).collect();
                let type_oids = source
                    .iter()
                    .map(|s| s.map_or(0, |s| self.value_type(r.columns[s].type_oid)))
                    .collect();
                let key = config
                    .key_columns
                    .iter()
                    .filter_map(|k| columns.index_of(k))
                    .collect::<Vec<_>>();
                let key = if key.is_empty() {
                    relation_key(r, |name| columns.index_of(name))
                } else {
                    key
                };
                RelationPlan {
                    table,
                    columns,
                    source,
                    type_oids,
                    key,
                }
            }
            None => {
                let columns = Arc::new(Schema::new(
                    r.columns
                        .iter()
                        .map(|c| Field::new(&c.name, data_type_of(self.value_type(c.type_oid))))
                        .collect(),
                ));
                RelationPlan {
                    table,
                    source: (0..r.columns.len()).map(Some).collect(),
                    type_oids: r
                        .columns
                        .iter()
                        .map(|c| self.value_type(c.type_oid))
                        .collect(),
                    key: relation_key(r, |name| by_name(name)),
                    columns,
                }
            }
        }
    }
}

/// The row columns of the relation's replica identity.
fn relation_key(r: &Relation, index: impl Fn(&str) -> Option<usize>) -> Vec<usize> {
    r.columns
        .iter()
        .filter(|c| c.key)
        .filter_map(|c| index(&c.name))
        .collect()
}

/// A tuple as a row of the plan's columns, and the columns whose value is unchanged TOAST.
fn row(
    plan: &RelationPlan,
    tuple: &[TupleValue<'_>],
) -> Result<(Vec<Value>, Vec<usize>), DecodeError> {
    if field_count_mismatch(plan, tuple) {
        return Err(DecodeError::new(format!(
            "{}: a tuple of {} values for a relation of more columns",
            plan.table,
            tuple.len()
        )));
    }
    let mut values = Vec::with_capacity(plan.source.len());
    let mut unavailable = Vec::new();
    for (i, source) in plan.source.iter().enumerate() {
        let field = plan.columns.field(i);
        let v = match source.and_then(|s| tuple.get(s)) {
            None | Some(TupleValue::Null) => Value::Null,
            Some(TupleValue::UnchangedToast) => {
                unavailable.push(i);
                Value::Null
            }
            Some(TupleValue::Text(text)) => from_text(text, field.data_type, plan.type_oids[i])
                .map_err(|e| DecodeError::new(format!("{}.{}: {e}", plan.table, field.name)))?,
            Some(TupleValue::Binary(_)) => {
                return Err(DecodeError::new(format!(
                    "{}.{}: a binary value (the source asks for text)",
                    plan.table, field.name
                )));
            }
        };
        values.push(v);
    }
    Ok((values, unavailable))
}

/// A tuple shorter than a column it should have (the server describes the relation anew
/// after DDL, so this means bytes that do not fit the description).
fn field_count_mismatch(plan: &RelationPlan, tuple: &[TupleValue<'_>]) -> bool {
    plan.source.iter().flatten().any(|&s| s >= tuple.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DataType;

    /// pgoutput bytes, built the way the server lays them out.
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn new(tag: u8) -> Bytes {
            Bytes(vec![tag])
        }
        fn u8(mut self, v: u8) -> Bytes {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Bytes {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Bytes {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Bytes {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn cstr(mut self, s: &str) -> Bytes {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        /// A tuple: `None` null, `Some("\u{0}")` unchanged TOAST, else text.
        fn tuple(mut self, kind: u8, values: &[Option<&str>]) -> Bytes {
            self = self.u8(kind).i16(values.len() as i16);
            for v in values {
                self = match v {
                    None => self.u8(b'n'),
                    Some("\u{0}") => self.u8(b'u'),
                    Some(t) => {
                        let mut b = self.u8(b't').u32(t.len() as u32);
                        b.0.extend_from_slice(t.as_bytes());
                        b
                    }
                };
            }
            self
        }
    }

    fn relation(id: u32, name: &str) -> Vec<u8> {
        Bytes::new(b'R')
            .u32(id)
            .cstr("public")
            .cstr(name)
            .u8(b'd')
            .i16(3)
            .u8(1)
            .cstr("cve_id")
            .u32(25)
            .u32(u32::MAX)
            .u8(0)
            .cstr("score")
            .u32(1700)
            .u32(u32::MAX)
            .u8(0)
            .cstr("note")
            .u32(25)
            .u32(u32::MAX)
            .0
    }

    fn decoder() -> ChangeDecoder {
        let schema = Arc::new(Schema::new(vec![
            Field::new("cve_id", DataType::String),
            Field::new("score", DataType::Decimal),
            Field::new("note", DataType::String),
            Field::new("added_later", DataType::Int),
        ]));
        ChangeDecoder::new([(
            TableId::new("public", "cve"),
            TableConfig::new(schema).with_key(&["cve_id"]),
        )])
    }

    fn changes(d: &mut ChangeDecoder, at: u64, msg: Vec<u8>) -> Vec<Change> {
        let mut out = Vec::new();
        d.decode(Lsn(at), &msg, &mut out).unwrap();
        out.into_iter()
            .map(|x| match x {
                Decoded::Change(c) => c,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_transaction_becomes_changes_with_its_commit_position_and_time() {
        let mut d = decoder();
        assert!(changes(&mut d, 90, relation(7, "cve")).is_empty());
        let begin = Bytes::new(b'B').u64(500).u64(1_000_000).u32(42).0;
        assert!(changes(&mut d, 100, begin).is_empty());
        let insert = Bytes::new(b'I')
            .u32(7)
            .tuple(b'N', &[Some("CVE-1"), Some("9.8"), None])
            .0;
        let c = &changes(&mut d, 110, insert)[0];
        assert_eq!(c.op, Op::Create);
        assert_eq!(c.table, TableId::new("public", "cve"));
        assert_eq!(
            c.after,
            Some(vec![
                Value::from("CVE-1"),
                Value::Decimal("9.8".parse().unwrap()),
                Value::Null,
                Value::Null
            ])
        );
        assert_eq!(c.key, vec![("cve_id".into(), Value::from("CVE-1"))]);
        assert_eq!(
            c.version,
            Version {
                commit_lsn: 500,
                ordinal: 110
            }
        );
        assert_eq!(c.source_ts_ms, Some(946_684_801_000));
        assert_eq!(c.tx_id, Some(42));

        // An unchanged TOASTed note is unavailable, not null.
        let update = Bytes::new(b'U')
            .u32(7)
            .tuple(b'N', &[Some("CVE-1"), Some("6.1"), Some("\u{0}")])
            .0;
        let c = &changes(&mut d, 120, update)[0];
        assert_eq!((c.op, c.before.is_none()), (Op::Update, true));
        assert_eq!(c.unavailable, vec![2]);

        // A key change: the old key is deleted, the new one created, at one version.
        let rekey = Bytes::new(b'U')
            .u32(7)
            .tuple(b'K', &[Some("CVE-1"), None, None])
            .tuple(b'N', &[Some("CVE-2"), Some("6.1"), Some("n")])
            .0;
        let cs = changes(&mut d, 130, rekey);
        assert_eq!(
            cs.iter()
                .map(|c| (c.op, c.key[0].1.clone()))
                .collect::<Vec<_>>(),
            vec![
                (Op::Delete, Value::from("CVE-1")),
                (Op::Create, Value::from("CVE-2"))
            ]
        );
        assert_eq!(cs[0].version, cs[1].version);
        let mut out = Vec::new();
        let commit = Bytes::new(b'C').u8(0).u64(500).u64(540).u64(1_000_000).0;
        assert_eq!(
            d.decode(Lsn(540), &commit, &mut out).unwrap(),
            Some(Lsn(540))
        );

        let truncate = Bytes::new(b'T').u32(1).u8(0).u32(7).0;
        let t = &changes(&mut d, 600, truncate)[0];
        assert_eq!((t.op, t.key.is_empty()), (Op::Truncate, true));
    }

    #[test]
    fn heartbeats_and_unconfigured_tables() {
        let mut d = decoder();
        let hb = Bytes::new(b'M')
            .u8(0)
            .u64(10)
            .cstr(HEARTBEAT_PREFIX)
            .u32(22)
            .0;
        let mut hb = hb;
        hb.extend_from_slice(b"2026-01-01 00:00:01+00");
        let mut out = Vec::new();
        d.decode(Lsn(10), &hb, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Decoded::Heartbeat {
                ts_ms: 1_767_225_601_000
            }]
        );
        // Another table: its own columns, typed from Postgres, keyed by its replica identity.
        changes(&mut d, 20, relation(8, "other"));
        let insert = Bytes::new(b'I')
            .u32(8)
            .tuple(b'N', &[Some("x"), Some("1.50"), None])
            .0;
        let c = &changes(&mut d, 30, insert)[0];
        assert_eq!(c.table.table, "other");
        assert_eq!(c.columns.field(1).data_type, DataType::Decimal);
        assert_eq!(c.key, vec![("cve_id".into(), Value::from("x"))]);
    }

    #[test]
    fn what_does_not_fit_is_an_error_naming_the_column() {
        let mut d = decoder();
        let mut out = Vec::new();
        let insert = Bytes::new(b'I').u32(7).tuple(b'N', &[Some("CVE-1")]).0;
        let e = d.decode(Lsn(1), &insert, &mut out).unwrap_err();
        assert!(e.reason.contains("not described"), "{}", e.reason);
        changes(&mut d, 2, relation(7, "cve"));
        let e = d.decode(Lsn(3), &insert, &mut out).unwrap_err();
        assert!(e.reason.contains("tuple of 1 values"), "{}", e.reason);
        let bad = Bytes::new(b'I')
            .u32(7)
            .tuple(b'N', &[Some("CVE-1"), Some("lots"), None])
            .0;
        let e = d.decode(Lsn(4), &bad, &mut out).unwrap_err();
        assert_eq!(
            e.reason,
            "public.cve.score: \"lots\" is not an exact decimal"
        );
        assert!(out.is_empty());
    }

    /// A change of table `t (id int, at timestamp)` at WAL position `lsn`.
    fn timed(op: Op, lsn: u64, before: Option<i64>, after: Option<i64>) -> Decoded {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", crate::types::DataType::Int),
            Field::new("at", crate::types::DataType::Timestamp),
        ]));
        let row = |at: Option<i64>| {
            vec![
                Value::Int(1),
                at.map_or(Value::Null, |ms| Value::Timestamp(ms * 1000)),
            ]
        };
        Decoded::Change(Change {
            table: TableId::new("public", "t"),
            op,
            columns: schema,
            key: Vec::new(),
            before: (op == Op::Delete).then(|| row(before)),
            after: matches!(op, Op::Create | Op::Update).then(|| row(after)),
            unavailable: Vec::new(),
            version: Version {
                commit_lsn: 100,
                ordinal: lsn,
            },
            snapshot: SnapshotMarker::False,
            tx_id: None,
            source_ts_ms: Some(9_999_999),
        })
    }

    fn times(decoded: &[Decoded]) -> Vec<Option<i64>> {
        decoded
            .iter()
            .map(|d| match d {
                Decoded::Change(c) => c.source_ts_ms,
                _ => None,
            })
            .collect()
    }

    #[test]
    fn event_times_come_from_the_column_of_the_row() {
        let mut latest = None;
        let mut decoded = vec![
            timed(Op::Create, 1, None, Some(500)),
            timed(Op::Update, 2, None, Some(400)),
            // A key change: both halves at the new row's time.
            timed(Op::Delete, 3, Some(100), None),
            timed(Op::Create, 3, None, Some(700)),
            // A delete under FULL: the old row's time.
            timed(Op::Delete, 4, Some(650), None),
            timed(Op::Truncate, 5, None, None),
        ];
        stamp_event_times(&mut decoded, "at", &mut latest).unwrap();
        assert_eq!(
            times(&decoded),
            [
                Some(500),
                Some(400),
                Some(700),
                Some(700),
                Some(650),
                Some(700)
            ]
        );
        assert_eq!(latest, Some(700));
        // A truncate before any: 0; a column the table lacks: the commit time stays.
        let mut latest = None;
        let mut decoded = vec![timed(Op::Truncate, 1, None, None)];
        stamp_event_times(&mut decoded, "at", &mut latest).unwrap();
        assert_eq!(times(&decoded), [Some(0)]);
        let mut decoded = vec![timed(Op::Create, 1, None, Some(5))];
        stamp_event_times(&mut decoded, "other", &mut latest).unwrap();
        assert_eq!(times(&decoded), [Some(9_999_999)]);
    }

    #[test]
    fn a_change_without_its_event_time_is_an_error_saying_why() {
        let mut latest = Some(10);
        let e = stamp_event_times(&mut [timed(Op::Delete, 1, None, None)], "at", &mut latest)
            .unwrap_err();
        assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
        let e = stamp_event_times(&mut [timed(Op::Update, 1, None, None)], "at", &mut latest)
            .unwrap_err();
        assert!(
            e.contains("`at` (event_time.field) is null in the new row"),
            "{e}"
        );
        assert_eq!(latest, Some(10), "nothing stamped");
    }
}
