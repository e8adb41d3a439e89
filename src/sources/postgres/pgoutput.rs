//! The `pgoutput` logical decoding messages (protocol versions 1 and 2), decoded from the
//! bytes of one XLogData message into borrowed values. Pure and untrusted: a short or
//! malformed message is an error naming what was wrong, never a panic.
//!
//! ```text
//!  Begin(final_lsn, commit_time, xid)
//!    Relation(id, namespace, name, replica identity, columns)   before a table's first change
//!    Type(id, namespace, name)                                  before a user type's first use
//!    Insert(rel, 'N' new) | Update(rel, ['K' key | 'O' old], 'N' new)
//!    Delete(rel, 'K' key | 'O' old) | Truncate(options, rels) | Message(prefix, content)
//!  Commit(flags, commit_lsn, end_lsn, commit_time)
//! ```
//! Version 2 adds streamed in-progress transactions (Stream Start/Stop/Commit/Abort, and a
//! transaction id before the body of every change inside a stream); this client does not ask
//! for streaming, but decodes those messages so a server that sends them is understood.
//! Tuple values are text (`'t'`), binary (`'b'`, only with the `binary` option), null
//! (`'n'`) or an unchanged TOASTed value (`'u'`: not sent, the old value stands).

use super::wire::{Cursor, Lsn, PG_EPOCH_OFFSET_US, PgError};

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key `Update`/`Delete` identify rows by).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A table as pgoutput describes it (sent before its first change, and again after DDL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One value of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TupleValue<'a> {
    Null,
    /// A TOASTed value that did not change: the server did not send it.
    UnchangedToast,
    Text(&'a str),
    Binary(&'a [u8]),
}

/// A decoded pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message<'a> {
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Microseconds since the Unix epoch.
        commit_time_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        /// The end of the commit record: where the next transaction's messages start.
        end_lsn: Lsn,
        commit_time_us: i64,
    },
    Origin {
        lsn: Lsn,
        name: &'a str,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        relation: u32,
        new: Vec<TupleValue<'a>>,
    },
    Update {
        relation: u32,
        /// The old key (`K`, REPLICA IDENTITY DEFAULT/INDEX when the key changed) or the whole
        /// old row (`O`, REPLICA IDENTITY FULL), if sent.
        old: Option<(u8, Vec<TupleValue<'a>>)>,
        new: Vec<TupleValue<'a>>,
    },
    Delete {
        relation: u32,
        old: (u8, Vec<TupleValue<'a>>),
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
    StreamStart {
        xid: u32,
        first: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_us: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// Decodes one message. `in_stream`: between Stream Start and Stream Stop (version 2), where
/// changes carry their transaction id first.
pub fn decode(data: &[u8], in_stream: bool) -> Result<Message<'_>, PgError> {
    let mut c = Cursor::new(data, "pgoutput");
    let tag = c.u8()?;
    let skip_xid = |c: &mut Cursor<'_>| -> Result<(), PgError> {
        if in_stream {
            c.u32()?;
        }
        Ok(())
    };
    let time = |c: &mut Cursor<'_>| -> Result<i64, PgError> {
        Ok(c.i64()?.saturating_add(PG_EPOCH_OFFSET_US))
    };
    let m = match tag {
        b'B' => Message::Begin {
            final_lsn: Lsn(c.u64()?),
            commit_time_us: time(&mut c)?,
            xid: c.u32()?,
        },
        b'C' => {
            c.u8()?;
            Message::Commit {
                commit_lsn: Lsn(c.u64()?),
                end_lsn: Lsn(c.u64()?),
                commit_time_us: time(&mut c)?,
            }
        }
        b'O' => Message::Origin {
            lsn: Lsn(c.u64()?),
            name: c.cstr()?,
        },
        b'R' => {
            skip_xid(&mut c)?;
            let id = c.u32()?;
            let namespace = c.cstr()?.to_string();
            let name = c.cstr()?.to_string();
            let replica_identity = c.u8()?;
            let n = c.i16()?;
            if n < 0 {
                return Err(bad("a relation with a negative column count"));
            }
            let mut columns = Vec::with_capacity((n as usize).min(c.remaining()));
            for _ in 0..n {
                let flags = c.u8()?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name: c.cstr()?.to_string(),
                    type_oid: c.u32()?,
                    type_modifier: c.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => {
            skip_xid(&mut c)?;
            Message::Type {
                id: c.u32()?,
                namespace: c.cstr()?,
                name: c.cstr()?,
            }
        }
        b'I' => {
            skip_xid(&mut c)?;
            let relation = c.u32()?;
            expect(&mut c, b'N', "an insert")?;
            Message::Insert {
                relation,
                new: tuple(&mut c)?,
            }
        }
        b'U' => {
            skip_xid(&mut c)?;
            let relation = c.u32()?;
            let mut kind = c.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some((kind, tuple(&mut c)?));
                kind = c.u8()?;
            }
            if kind != b'N' {
                return Err(bad(&format!(
                    "an update whose new tuple is marked {:?}",
                    kind as char
                )));
            }
            Message::Update {
                relation,
                old,
                new: tuple(&mut c)?,
            }
        }
        b'D' => {
            skip_xid(&mut c)?;
            let relation = c.u32()?;
            let kind = c.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(bad(&format!(
                    "a delete whose old tuple is marked {:?}",
                    kind as char
                )));
            }
            Message::Delete {
                relation,
                old: (kind, tuple(&mut c)?),
            }
        }
        b'T' => {
            skip_xid(&mut c)?;
            let n = c.i32()?;
            if n < 0 {
                return Err(bad("a truncate of a negative number of tables"));
            }
            let options = c.u8()?;
            let mut relations = Vec::with_capacity((n as usize).min(c.remaining() / 4));
            for _ in 0..n {
                relations.push(c.u32()?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            skip_xid(&mut c)?;
            let flags = c.u8()?;
            let lsn = Lsn(c.u64()?);
            let prefix = c.cstr()?;
            let len = c.i32()?;
            if len < 0 {
                return Err(bad("a logical message of negative length"));
            }
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: c.bytes(len as usize)?,
            }
        }
        b'S' => Message::StreamStart {
            xid: c.u32()?,
            first: c.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = c.u32()?;
            c.u8()?;
            Message::StreamCommit {
                xid,
                commit_lsn: Lsn(c.u64()?),
                end_lsn: Lsn(c.u64()?),
                commit_time_us: time(&mut c)?,
            }
        }
        b'A' => Message::StreamAbort {
            xid: c.u32()?,
            subxid: c.u32()?,
        },
        t => {
            return Err(bad(&format!("message type {:?}", t as char)));
        }
    };
    Ok(m)
}

fn bad(what: &str) -> PgError {
    PgError::Protocol(format!("pgoutput: {what}"))
}

fn expect(c: &mut Cursor<'_>, want: u8, what: &str) -> Result<(), PgError> {
    let got = c.u8()?;
    if got == want {
        Ok(())
    } else {
        Err(bad(&format!(
            "{what} whose tuple is marked {:?}, not {:?}",
            got as char, want as char
        )))
    }
}

fn tuple<'a>(c: &mut Cursor<'a>) -> Result<Vec<TupleValue<'a>>, PgError> {
    let n = c.i16()?;
    if n < 0 {
        return Err(bad("a tuple with a negative column count"));
    }
    let mut values = Vec::with_capacity((n as usize).min(c.remaining()));
    for _ in 0..n {
        values.push(match c.u8()? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            kind @ (b't' | b'b') => {
                let len = c.i32()?;
                if len < 0 {
                    return Err(bad("a value of negative length"));
                }
                let raw = c.bytes(len as usize)?;
                if kind == b't' {
                    TupleValue::Text(
                        std::str::from_utf8(raw)
                            .map_err(|_| bad("a text value that is not UTF-8"))?,
                    )
                } else {
                    TupleValue::Binary(raw)
                }
            }
            k => return Err(bad(&format!("a value marked {:?}", k as char))),
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn text(out: &mut Vec<u8>, s: &str) {
        out.push(b't');
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16_384u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "cve");
        m.push(b'd');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        cstr(&mut m, "cve_id");
        m.extend_from_slice(&25u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        cstr(&mut m, "score");
        m.extend_from_slice(&1700u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m
    }

    fn update() -> Vec<u8> {
        let mut m = vec![b'U'];
        m.extend_from_slice(&16_384u32.to_be_bytes());
        m.push(b'K');
        m.extend_from_slice(&2i16.to_be_bytes());
        text(&mut m, "CVE-1");
        m.push(b'n');
        m.push(b'N');
        m.extend_from_slice(&2i16.to_be_bytes());
        text(&mut m, "CVE-2");
        m.push(b'u');
        m
    }

    #[test]
    fn decodes_a_relation_and_an_update_with_its_old_key() {
        let r = relation();
        let Message::Relation(rel) = decode(&r, false).unwrap() else {
            panic!("a relation")
        };
        assert_eq!(
            (rel.id, rel.name.as_str(), rel.replica_identity),
            (16_384, "cve", b'd')
        );
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 1700);
        let u = update();
        assert_eq!(
            decode(&u, false).unwrap(),
            Message::Update {
                relation: 16_384,
                old: Some((b'K', vec![TupleValue::Text("CVE-1"), TupleValue::Null])),
                new: vec![TupleValue::Text("CVE-2"), TupleValue::UnchangedToast],
            }
        );
    }

    #[test]
    fn begin_and_commit_carry_lsns_and_unix_times() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x10_0000_0200u64.to_be_bytes());
        b.extend_from_slice(&1_000_000i64.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&b, false).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x10_0000_0200),
                commit_time_us: PG_EPOCH_OFFSET_US + 1_000_000,
                xid: 7
            }
        );
    }

    /// Every prefix of a valid message and arbitrary bytes are errors or values, never panics.
    #[test]
    fn malformed_messages_are_errors() {
        for m in [relation(), update()] {
            for n in 0..m.len() {
                assert!(decode(&m[..n], false).is_err(), "prefix of {n} bytes");
                let _ = decode(&m[..n], true);
            }
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            if let Some(first) = bytes.first_mut() {
                *first = b"BCORYIUDTMScAE"[(seed % 14) as usize];
            }
            let _ = decode(&bytes, seed & 1 == 1);
        }
        assert!(decode(b"Z", false).is_err());
        let mut neg = vec![b'I', 0, 0, 0, 1, b'N'];
        neg.extend_from_slice(&(-3i16).to_be_bytes());
        assert!(decode(&neg, false).is_err());
    }
}
