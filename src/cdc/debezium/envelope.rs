//! The top level of a Debezium record, read in one serde pass: the `{key, value}` record,
//! the JsonConverter `{schema, payload}` wrapper and the envelope (`Top`, `Inner`), with
//! `before`/`after`/`schema` kept raw; the `source` block (`Source`: table, snapshot marker,
//! `Version` from each connector's position: Postgres `lsn` and `sequence`, MySQL binlog
//! file and position, SQL Server LSNs, Oracle SCNs, MongoDB `ord`); keys (`KeyInput`);
//! heartbeats and transaction metadata (`non_change`); the table named by a topic.
//!
//! Owns the record's shape, not the typing of rows (`schema.rs`, `values.rs`) nor the walk
//! from a record to a `Decoded` (`mod.rs`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{CowStr, err, is_null, json_error, json_kind, serde_message, string_of, unquote};
use crate::cdc::{Decoded, SnapshotMarker, TableId, TxStatus, Version};
use crate::format::DecodeError;

/// A record with no `op`: a heartbeat or transaction metadata.
pub(super) fn non_change(env: &Top<'_>) -> Result<Decoded, DecodeError> {
    if let Some(status) = env.status {
        let status = match string_of(status)
            .map_err(|e| err(format!("status: {e}")))?
            .as_ref()
        {
            "BEGIN" => TxStatus::Begin,
            "END" => TxStatus::End,
            other => {
                return Err(err(format!(
                    "unknown transaction status \"{}\"",
                    other.escape_debug()
                )));
            }
        };
        let id = env
            .id
            .ok_or_else(|| err("transaction record has no id"))
            .and_then(|raw| string_of(raw).map_err(|e| err(format!("id: {e}"))))?
            .into_owned();
        let event_count = match env.event_count {
            Some(raw) if !is_null(raw) => Some(
                raw.get()
                    .parse::<u64>()
                    .map_err(|_| err("event_count: expected a non-negative integer"))?,
            ),
            _ => None,
        };
        return Ok(Decoded::Transaction {
            status,
            id,
            event_count,
        });
    }
    match (env.ts_ms, env.source.is_none(), env.before, env.after) {
        (Some(ts), true, None, None) => {
            let ts_ms = ts
                .get()
                .parse::<i64>()
                .map_err(|_| err("ts_ms: expected an integer"))?;
            Ok(Decoded::Heartbeat { ts_ms })
        }
        _ => Err(err("envelope has no op")),
    }
}

/// The top level of a record: must be an object (serde's derive would also take an array).
pub(super) fn parse_top(bytes: &[u8]) -> Result<Top<'_>, DecodeError> {
    match bytes.trim_ascii_start().first() {
        Some(&b @ (b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')) => Err(err(format!(
            "expected a json object, found {}",
            json_kind(std::str::from_utf8(&[b]).unwrap_or_default())
        ))),
        // Checking UTF-8 once up front is cheaper than serde_json checking each string.
        _ => {
            let text = std::str::from_utf8(bytes).map_err(|_| err("invalid json: not utf-8"))?;
            serde_json::from_str(text).map_err(json_error)
        }
    }
}

/// A key or value given as JSON or as a JSON-encoded string: the JSON text.
pub(super) fn embedded_json(raw: &RawValue) -> Result<Cow<'_, str>, String> {
    match unquote(raw.get()) {
        Some(text) => Ok(text),
        None => Ok(Cow::Borrowed(raw.get())),
    }
}

/// `<prefix>.<schema>.<table>` (a topic, or a key schema name without `.Key`).
pub(super) fn table_from_topic(topic: &str) -> Option<TableId> {
    let mut parts = topic.rsplit('.');
    let table = parts.next()?;
    let schema = parts.next()?;
    parts.next()?;
    (!table.is_empty() && !schema.is_empty()).then(|| TableId::new(schema, table))
}

fn raw_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn inner_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Inner<'de>>, D::Error> {
    Inner::deserialize(d).map(Some)
}

fn source_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Source<'de>>, D::Error> {
    struct SourceObject<'a>(Source<'a>);
    impl<'de> Deserialize<'de> for SourceObject<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = SourceObject<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a source object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    Source::deserialize(de::value::MapAccessDeserializer::new(map))
                        .map(SourceObject)
                }
            }
            d.deserialize_map(V)
        }
    }
    Option::<SourceObject<'de>>::deserialize(d).map(|s| s.map(|s| s.0))
}

/// A nested part of a record (`value`, `payload`): null, an object read in the same pass as
/// its parent, or JSON text given as a string (read afterwards).
pub(super) enum Inner<'a> {
    Null,
    Object(Box<Top<'a>>),
    Text(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Inner<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inner<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object, json text in a string, or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Inner<'de>, E> {
                Ok(Inner::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Inner<'de>, E> {
                Ok(Inner::Null)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Inner<'de>, E> {
                Ok(Inner::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Inner<'de>, E> {
                Ok(Inner::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Inner<'de>, A::Error> {
                Top::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| Inner::Object(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The top level of any accepted record. Parts read later are kept raw (a null is
/// `Some("null")`); `source`, `value` and `payload` are read in the same pass.
#[derive(Deserialize)]
pub(super) struct Top<'a> {
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) before: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) after: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "source_field")]
    pub(super) source: Option<Source<'a>>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) ts_ms: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) schema: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "inner_field")]
    pub(super) payload: Option<Inner<'a>>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "inner_field")]
    pub(super) value: Option<Inner<'a>>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) status: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) event_count: Option<&'a RawValue>,
}

/// The parts of `source` the decoder reads.
#[derive(Deserialize)]
pub(super) struct Source<'a> {
    #[serde(borrow, default)]
    pub(super) schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) table: Option<Cow<'a, str>>,
    /// The database (MySQL's schema).
    #[serde(borrow, default)]
    pub(super) db: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) snapshot: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    pub(super) sequence: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) lsn: Option<u64>,
    #[serde(borrow, default, deserialize_with = "raw_field", rename = "txId")]
    tx_id: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) ts_ms: Option<i64>,
    // MySQL / MariaDB: binlog file, position and row in the event.
    #[serde(borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    pos: Option<u64>,
    #[serde(default)]
    row: Option<u64>,
    // SQL Server: `vlf:block:slot` hex LSNs and the serial of an event within a change LSN.
    #[serde(borrow, default)]
    commit_lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    change_lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    event_serial_no: Option<&'a RawValue>,
    // Oracle: system change numbers, decimal strings.
    #[serde(borrow, default, deserialize_with = "raw_field")]
    scn: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_field")]
    commit_scn: Option<&'a RawValue>,
    // MongoDB: the event's order within its oplog second (`ts_ms`).
    #[serde(default)]
    ord: Option<u64>,
}

impl Source<'_> {
    pub(super) fn snapshot_marker(&self) -> Result<SnapshotMarker, DecodeError> {
        let Some(raw) = self.snapshot else {
            return Ok(SnapshotMarker::False);
        };
        let text = match raw.get() {
            "null" => return Ok(SnapshotMarker::False),
            b @ ("true" | "false") => Cow::Borrowed(b),
            _ => string_of(raw).map_err(|e| err(format!("source.snapshot: {e}")))?,
        };
        SnapshotMarker::parse(&text).ok_or_else(|| {
            err(format!(
                "unknown snapshot marker \"{}\"",
                text.escape_debug()
            ))
        })
    }

    /// `txId`: an integer (Postgres), else `None` (Oracle and SQL Server name transactions
    /// with strings).
    pub(super) fn tx_id(&self) -> Option<i64> {
        let raw = self.tx_id?.get();
        raw.parse().ok().or_else(|| unquote(raw)?.parse().ok())
    }

    /// The version of the change from the position its connector gives, whichever it is:
    /// see "Versions" in the `cdc` module docs. `Version::UNKNOWN` when the record carries
    /// none (the change stream then falls back to arrival order).
    pub(super) fn version(&self) -> Result<Version, DecodeError> {
        if self.lsn.is_some() || self.sequence.is_some_and(|s| !is_null(s)) {
            return self.postgres_version();
        }
        if let (Some(file), Some(pos)) = (&self.file, self.pos) {
            return mysql_version(file, pos, self.row.unwrap_or(0));
        }
        if let Some(lsn) = self.change_lsn.as_ref().or(self.commit_lsn.as_ref()) {
            let (high, slot) = sqlserver_lsn(lsn)?;
            let serial = decimal(self.event_serial_no, "event_serial_no")?.unwrap_or(0);
            if serial > u64::from(u32::MAX) {
                return Err(err(format!(
                    "source.event_serial_no {serial} is out of range"
                )));
            }
            return Ok(Version {
                commit_lsn: high,
                ordinal: (slot << 32) | serial,
            });
        }
        let scn = decimal(self.scn, "scn")?;
        let commit_scn = decimal(self.commit_scn, "commit_scn")?;
        if let Some(at) = scn.or(commit_scn) {
            return Ok(Version {
                commit_lsn: commit_scn.unwrap_or(at),
                ordinal: at,
            });
        }
        if let (Some(ord), Some(ts_ms)) = (self.ord, self.ts_ms) {
            return Ok(Version {
                commit_lsn: u64::try_from(ts_ms)
                    .map_err(|_| err(format!("source.ts_ms {ts_ms} is negative")))?,
                ordinal: ord,
            });
        }
        Ok(Version::UNKNOWN)
    }

    /// Postgres: see the `cdc` module docs.
    fn postgres_version(&self) -> Result<Version, DecodeError> {
        let (last_commit, current) = match self.sequence {
            Some(raw) if !is_null(raw) => match sequence_fast(raw.get()) {
                Some(pair) => pair,
                None => {
                    let text = string_of(raw).map_err(|e| err(format!("source.sequence: {e}")))?;
                    parse_sequence(&text)?
                }
            },
            _ => (None, None),
        };
        let ordinal = self.lsn.or(current);
        let commit_lsn = last_commit.or(ordinal);
        Ok(match (commit_lsn, ordinal) {
            (Some(commit_lsn), Some(ordinal)) => Version {
                commit_lsn,
                ordinal,
            },
            (Some(commit_lsn), None) => Version {
                commit_lsn,
                ordinal: 0,
            },
            _ => Version::UNKNOWN,
        })
    }
}

/// A non-negative integer below 2^63 given as a number or a decimal string; null is `None`.
fn decimal(raw: Option<&RawValue>, name: &str) -> Result<Option<u64>, DecodeError> {
    let Some(raw) = raw.filter(|r| !is_null(r)) else {
        return Ok(None);
    };
    let text = unquote(raw.get()).unwrap_or(Cow::Borrowed(raw.get()));
    match text.parse::<u64>() {
        Ok(n) if n <= i64::MAX as u64 => Ok(Some(n)),
        _ => Err(err(format!(
            "invalid source.{name} \"{}\"",
            text.escape_debug()
        ))),
    }
}

/// MySQL: binlog files are `<base>.<NNNNNN>`, in order of their number; a position within
/// a file is below 2^32 (`max_binlog_size` is at most 1 GiB). Version: (file number << 32 |
/// position, row within the event).
fn mysql_version(file: &str, pos: u64, row: u64) -> Result<Version, DecodeError> {
    let number = file
        .rsplit_once('.')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .filter(|&n| n < 1 << 31)
        .ok_or_else(|| {
            err(format!(
                "source.file \"{}\" is not a binlog file name (<base>.<number>)",
                file.escape_debug()
            ))
        })?;
    if pos > u64::from(u32::MAX) {
        return Err(err(format!("source.pos {pos} is out of range")));
    }
    Ok(Version {
        commit_lsn: (number << 32) | pos,
        ordinal: row,
    })
}

/// A SQL Server LSN, `vlf:block:slot` in hex (`0000002b:00000af0:0002`): (vlf << 32 | block,
/// slot). The virtual log file's sequence number is a positive 4-byte integer.
fn sqlserver_lsn(text: &str) -> Result<(u64, u64), DecodeError> {
    let bad = || {
        err(format!(
            "invalid sql server lsn \"{}\"",
            text.escape_debug()
        ))
    };
    let mut parts = text.split(':');
    let mut part = |max: u64| -> Result<u64, DecodeError> {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 8 {
            return Err(bad());
        }
        u64::from_str_radix(p, 16)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(bad)
    };
    let vlf = part(i32::MAX as u64)?;
    let block = part(u64::from(u32::MAX))?;
    let slot = part(u64::from(u16::MAX))?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(((vlf << 32) | block, slot))
}

/// `source.sequence` read from its raw JSON text (`"[null,\"26413656\"]"`) without
/// allocating; `None` when the text has any other shape (then `parse_sequence` decides).
fn sequence_fast(raw: &str) -> Option<(Option<u64>, Option<u64>)> {
    let inner = raw.strip_prefix("\"[")?.strip_suffix("]\"")?;
    let (a, b) = inner.split_once(',')?;
    let lsn = |item: &str| -> Option<Option<u64>> {
        if item == "null" {
            return Some(None);
        }
        let digits = item.strip_prefix("\\\"")?.strip_suffix("\\\"")?;
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Some)
    };
    Some((lsn(a)?, lsn(b)?))
}

/// `source.sequence`: a JSON array in a string, `["<last commit lsn>","<lsn>"]`, either null.
fn parse_sequence(seq: &str) -> Result<(Option<u64>, Option<u64>), DecodeError> {
    let bad = || {
        err(format!(
            "invalid source.sequence \"{}\"",
            seq.escape_debug()
        ))
    };
    let items: Vec<&RawValue> = serde_json::from_str(seq).map_err(|_| bad())?;
    let lsn = |raw: &RawValue| -> Result<Option<u64>, DecodeError> {
        if is_null(raw) {
            return Ok(None);
        }
        let text = unquote(raw.get()).unwrap_or(Cow::Borrowed(raw.get()));
        text.parse::<u64>().map(Some).map_err(|_| bad())
    };
    match items.as_slice() {
        [a, b] => Ok((lsn(a)?, lsn(b)?)),
        _ => Err(bad()),
    }
}

/// A key object: its fields, raw, in order, and its schema block when wrapped.
pub(super) struct KeyInput<'a> {
    pub(super) fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub(super) schema: Option<&'a RawValue>,
}

impl<'a> KeyInput<'a> {
    pub(super) fn parse(text: &'a str) -> Result<KeyInput<'a>, DecodeError> {
        let fields = parse_object(text).map_err(|e| err(format!("key: {e}")))?;
        if fields.len() == 2 {
            let find = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            if let (Some(schema), Some(payload)) = (find("schema"), find("payload"))
                && schema.get().starts_with('{')
            {
                let fields = parse_object(payload.get()).map_err(|e| err(format!("key: {e}")))?;
                return Ok(KeyInput {
                    fields,
                    schema: Some(schema),
                });
            }
        }
        Ok(KeyInput {
            fields,
            schema: None,
        })
    }

    /// The key schema's name (`<prefix>.<schema>.<table>.Key`), when it has one.
    pub(super) fn schema_name(&self) -> Option<&'a str> {
        #[derive(Deserialize)]
        struct Named<'b> {
            #[serde(borrow)]
            name: Option<&'b str>,
        }
        let named: Named<'a> = serde_json::from_str(self.schema?.get()).ok()?;
        named.name
    }
}

fn parse_object(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, String> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a json object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(CowStr(k)) = map.next_key()? {
                out.push((k, map.next_value::<&RawValue>()?));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let out = de.deserialize_map(Fields).map_err(|e| serde_message(&e))?;
    de.end().map_err(|e| serde_message(&e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::Op;
    use crate::cdc::debezium::DebeziumDecoder;
    use crate::cdc::debezium::tests::{captured, change, configured, dec, file, key_id};
    use crate::types::Value;

    #[test]
    fn versions_follow_commit_order() {
        let Some(files) = captured() else { return };
        let decoder = configured();
        let mut previous: Option<(Version, Option<i64>)> = None;
        let mut snapshot_version = None;
        for (name, bytes) in files.iter().filter(|(n, _)| n.starts_with("noschema-")) {
            let Decoded::Change(c) = decoder.decode(bytes).unwrap() else {
                continue;
            };
            if c.op == Op::Read {
                // All snapshot reads share the snapshot's version.
                assert_eq!(
                    *snapshot_version.get_or_insert(c.version),
                    c.version,
                    "{name}"
                );
            }
            if let Some((v, tx)) = previous {
                assert!(c.version >= v, "{name}: {:?} < {v:?}", c.version);
                if tx != c.tx_id {
                    assert!(c.version > v, "{name}: a new transaction must order after");
                }
            }
            previous = Some((c.version, c.tx_id));
        }
        let snapshot = snapshot_version.unwrap();
        assert_eq!(
            snapshot,
            Version {
                commit_lsn: 26413656,
                ordinal: 26413656
            }
        );
        // Two changes of one transaction (743): same commit key, ordered by their LSNs.
        let a = change(
            decoder
                .decode(file(&files, "noschema-13-orders-c.json"))
                .unwrap(),
        );
        let b = change(
            decoder
                .decode(file(&files, "noschema-14-customers-u.json"))
                .unwrap(),
        );
        assert_eq!((a.tx_id, b.tx_id), (Some(743), Some(743)));
        assert_eq!(a.version.commit_lsn, b.version.commit_lsn);
        assert!(a.version < b.version);
        // A primary-key change (3 -> 30): delete and create share a version, on two keys.
        let d = change(
            decoder
                .decode(file(&files, "noschema-16-customers-d.json"))
                .unwrap(),
        );
        let c = change(
            decoder
                .decode(file(&files, "noschema-18-customers-c.json"))
                .unwrap(),
        );
        assert_eq!(d.version, c.version);
        assert_ne!(d.key, c.key);
        // The first streamed transaction (sequence[0] null) falls back to its LSN.
        let first = change(
            decoder
                .decode(file(&files, "noschema-05-customers-c.json"))
                .unwrap(),
        );
        assert_eq!(first.version.commit_lsn, 26417712);
        assert!(first.version > snapshot);
    }

    /// Records of other connectors than Postgres carry no `lsn` or `sequence`: they all got
    /// version (0, 0), so every update after the first was dropped as stale. Each connector's
    /// own position now orders them.
    #[test]
    fn versions_come_from_each_connectors_position() {
        let d = DebeziumDecoder::default();
        let version = |source: &str| {
            let record = format!(
                r#"{{"op":"u","after":{{"id":1}},"source":{{"db":"inventory","table":"customers",{source}}}}}"#
            );
            change(d.decode(record.as_bytes()).unwrap()).version
        };
        let v = |commit_lsn: u64, ordinal: u64| Version {
            commit_lsn,
            ordinal,
        };
        // MySQL: the real record of the connector's test fixtures, then later positions.
        if let Some(dir) = crate::cdc::debezium::tests::data_dir("test-fixtures") {
            let bytes = std::fs::read(dir.join("serde-update.json")).unwrap();
            let c = change(d.decode(&bytes).unwrap());
            assert_eq!(c.version, v((3 << 32) | 154, 0));
        }
        let mysql = [
            r#""file":"mysql-bin.000003","pos":154,"row":0"#,
            r#""file":"mysql-bin.000003","pos":154,"row":1"#,
            r#""file":"mysql-bin.000003","pos":570,"row":0"#,
            r#""file":"mysql-bin.000004","pos":4,"row":0"#,
            r#""file":"mysql-bin.000010","pos":4,"row":0"#,
        ];
        // SQL Server: the commit LSN orders a snapshot read (no change LSN), then change LSN
        // and event serial order changes (hex `vlf:block:slot`).
        let sqlserver = [
            r#""commit_lsn":"00000025:00000d98:0001","change_lsn":null"#,
            r#""commit_lsn":"00000027:00000758:0005","change_lsn":"00000027:00000758:0003","event_serial_no":"1""#,
            r#""commit_lsn":"00000027:00000758:0005","change_lsn":"00000027:00000758:0003","event_serial_no":2"#,
            r#""commit_lsn":"00000027:00000a10:0002","change_lsn":"00000027:00000a10:0002","event_serial_no":1"#,
            r#""commit_lsn":"0000002b:00000af0:0002","change_lsn":"0000002b:00000af0:0002","event_serial_no":1"#,
        ];
        // Oracle: a snapshot read has only `scn`; changes `scn` and `commit_scn`.
        let oracle = [
            r#""scn":"2122184","commit_scn":null"#,
            r#""scn":"2122185","commit_scn":"2122187""#,
            r#""scn":"2122186","commit_scn":"2122187""#,
            r#""scn":"2122190","commit_scn":"2122200""#,
        ];
        // MongoDB: `ord` within the oplog second `ts_ms`.
        let mongodb = [
            r#""ts_ms":1558965508000,"ord":1"#,
            r#""ts_ms":1558965508000,"ord":2"#,
            r#""ts_ms":1558965509000,"ord":1"#,
        ];
        for positions in [&mysql[..], &sqlserver, &oracle, &mongodb] {
            let versions: Vec<Version> = positions.iter().map(|p| version(p)).collect();
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{positions:?}: {versions:?}"
            );
            assert!(versions.iter().all(|v| v.commit_lsn <= i64::MAX as u64));
            assert!(versions.iter().all(|v| *v != Version::UNKNOWN));
        }
        assert_eq!(version(mysql[3]), v((4 << 32) | 4, 0));
        assert_eq!(
            version(sqlserver[4]),
            v((0x2b << 32) | 0xaf0, (2 << 32) | 1)
        );
        assert_eq!(version(oracle[1]), v(2122187, 2122185));
        // A GTID alone, or nothing: no position (the change stream falls back to arrival).
        assert_eq!(
            version(r#""gtid":"3e11fa47-71ca-11e1-9e33-c80aa9429562:23""#),
            Version::UNKNOWN
        );
        // Positions that cannot be ordered are errors with the reason.
        let d = DebeziumDecoder::default();
        for (source, reason) in [
            (r#""file":"mysql-bin","pos":4"#, "is not a binlog file name"),
            (r#""change_lsn":"27:758""#, "invalid sql server lsn"),
            (r#""change_lsn":"ffffffff:0:0""#, "invalid sql server lsn"),
            (r#""scn":"12x""#, "invalid source.scn"),
        ] {
            let record = format!(
                r#"{{"op":"u","after":{{"id":1}},"source":{{"table":"customers",{source}}}}}"#
            );
            let e = d.decode(record.as_bytes()).unwrap_err();
            assert!(e.reason.contains(reason), "{source}: {}", e.reason);
        }
    }

    #[test]
    fn snapshot_markers_on_read_events() {
        let Some(files) = captured() else { return };
        let expected = [
            ("00-customers-r", SnapshotMarker::First),
            ("01-customers-r", SnapshotMarker::LastInDataCollection),
            ("02-orders-r", SnapshotMarker::FirstInDataCollection),
            ("03-orders-r", SnapshotMarker::LastInDataCollection),
            ("05-customers-c", SnapshotMarker::False),
        ];
        for (variant, decoder) in [
            ("noschema", configured()),
            ("schema", DebeziumDecoder::default()),
        ] {
            for (stem, marker) in expected {
                let bytes = file(&files, &format!("{variant}-{stem}.json"));
                assert_eq!(
                    change(decoder.decode(bytes).unwrap()).snapshot,
                    marker,
                    "{stem}"
                );
            }
        }
        for text in ["true", "last", "incremental", "false"] {
            assert_eq!(
                SnapshotMarker::parse(text).unwrap().is_snapshot(),
                text != "false"
            );
        }
    }

    #[test]
    fn record_key_and_value_as_json_strings() {
        let Some(files) = captured() else { return };
        let decoder = configured();
        for name in [
            "noschema-06-customers-u.json",
            "schema-06-customers-u.json",
            "noschema-10-orders-tombstone.json",
        ] {
            let record: serde_json::Value = serde_json::from_slice(file(&files, name)).unwrap();
            let as_strings = serde_json::json!({
                "key": record["key"].to_string(),
                "value": if record["value"].is_null() { serde_json::Value::Null } else { record["value"].to_string().into() },
                "partition": 0,
            });
            let mut expected = decoder.decode(file(&files, name)).unwrap();
            if let Decoded::Tombstone { table, .. } = &mut expected {
                *table = None; // no topic in this record
            }
            assert_eq!(
                decoder.decode(as_strings.to_string().as_bytes()).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn bare_and_wrapped_envelopes_without_a_record() {
        let Some(files) = captured() else { return };
        let decoder = configured();
        let record: serde_json::Value =
            serde_json::from_slice(file(&files, "schema-08-orders-u.json")).unwrap();
        let wrapped = change(
            decoder
                .decode(record["value"].to_string().as_bytes())
                .unwrap(),
        );
        let bare = change(
            decoder
                .decode(record["value"]["payload"].to_string().as_bytes())
                .unwrap(),
        );
        assert_eq!(wrapped, bare);
        assert_eq!(bare.key, key_id(102)); // from the configured key columns
        assert_eq!(bare.before.unwrap()[2], dec("42.50"));
        assert_eq!(bare.after.unwrap()[3], Value::Str("paid".into()));
        // Not configured and no key: an empty key, types from the schema block.
        let c = change(
            DebeziumDecoder::default()
                .decode(record["value"].to_string().as_bytes())
                .unwrap(),
        );
        assert!(c.key.is_empty());
        assert_eq!(c.after.unwrap()[2], dec("43.00"));
        // A tombstone of the JsonConverter with schemas: {"schema":null,"payload":null}.
        let t = r#"{"topic":"dbz.public.orders","key":{"id":5},"value":{"schema":null,"payload":null}}"#;
        assert!(matches!(
            decoder.decode(t.as_bytes()).unwrap(),
            Decoded::Tombstone { .. }
        ));
    }

    #[test]
    fn heartbeat_and_transaction_metadata() {
        let d = DebeziumDecoder::default();
        assert_eq!(
            d.decode(br#"{"ts_ms":1795315555000}"#).unwrap(),
            Decoded::Heartbeat {
                ts_ms: 1795315555000
            }
        );
        let hb = r#"{"topic":"__debezium-heartbeat.dbz","key":{"serverName":"dbz"},"value":{"ts_ms":5}}"#;
        assert_eq!(
            d.decode(hb.as_bytes()).unwrap(),
            Decoded::Heartbeat { ts_ms: 5 }
        );
        let begin = r#"{"status":"BEGIN","id":"571:53195829","event_count":null,"data_collections":null,"ts_ms":1}"#;
        assert_eq!(
            d.decode(begin.as_bytes()).unwrap(),
            Decoded::Transaction {
                status: TxStatus::Begin,
                id: "571:53195829".into(),
                event_count: None
            }
        );
        let end = r#"{"status":"END","id":"571:53195829","event_count":2,"data_collections":[{"data_collection":"s1.a","event_count":1}],"ts_ms":1}"#;
        assert_eq!(
            d.decode(end.as_bytes()).unwrap(),
            Decoded::Transaction {
                status: TxStatus::End,
                id: "571:53195829".into(),
                event_count: Some(2)
            }
        );
        assert_eq!(
            d.decode(br#"{"status":"MAYBE","id":"1"}"#)
                .unwrap_err()
                .reason,
            "unknown transaction status \"MAYBE\""
        );
    }

    #[test]
    fn truncate_and_message_events() {
        let d = DebeziumDecoder::default();
        let t = r#"{"before":null,"after":null,"source":{"schema":"public","table":"customers","lsn":7,"txId":3,"ts_ms":1},"op":"t","ts_ms":2}"#;
        let c = change(d.decode(t.as_bytes()).unwrap());
        assert_eq!((c.op, c.before, c.after), (Op::Truncate, None, None));
        let m = r#"{"op":"m","ts_ms":2,"source":{"schema":"","table":"","lsn":8,"ts_ms":1},"message":{"prefix":"p","content":"AQ=="}}"#;
        assert_eq!(change(d.decode(m.as_bytes()).unwrap()).op, Op::Message);
    }

    #[test]
    fn sequence_fast_path_agrees_with_the_full_parse() {
        for (raw, expected) in [
            (r#""[null,\"26413656\"]""#, Some((None, Some(26413656)))),
            (
                r#""[\"26418680\",\"26418832\"]""#,
                Some((Some(26418680), Some(26418832))),
            ),
            (r#""[null,null]""#, Some((None, None))),
            (r#""[\"1\", \"2\"]""#, None), // a space: left to the full parse
            (r#""[\"x\",\"2\"]""#, None),
        ] {
            assert_eq!(sequence_fast(raw), expected, "{raw}");
            let text: String = serde_json::from_str(raw).unwrap();
            if let Some(pair) = expected {
                assert_eq!(parse_sequence(&text).unwrap(), pair);
            }
        }
        assert_eq!(parse_sequence(r#"["1", "2"]"#).unwrap(), (Some(1), Some(2)));
        assert!(parse_sequence(r#"["x","2"]"#).is_err());
        assert!(parse_sequence(r#"["1"]"#).is_err());
    }
}
