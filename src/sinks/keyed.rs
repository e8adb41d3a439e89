//! What the keyed sinks (ClickHouse, Postgres) share: which input columns a row writes (a
//! change stream's table columns, not its change metadata), the output key, and where each
//! row's version comes from — a version that only grows for a key, so a replay after a crash
//! writes nothing older over something newer and collapses to one row per key.

use crate::cdc::rows::{META_COLUMNS, is_change_schema};
use crate::config::component::SinkContext;
use crate::config::yaml::S;
use crate::types::DataType;

/// Bits of a change's version that hold its ordinal within the transaction.
const ORDINAL_BITS: u32 = 16;

/// A change's version as one number that fits a bigint: the commit LSN above
/// `ORDINAL_BITS` bits of ordinal. An ordinal beyond them is capped (several changes to one
/// key past the 65,535th change of one transaction share a version, and the later written
/// wins, as the sinks resolve equal versions); an LSN of 2⁴⁷ or more is an error.
pub fn change_version(lsn: u64, ordinal: u64) -> Result<u64, String> {
    if lsn >> (64 - ORDINAL_BITS - 1) != 0 {
        return Err(format!(
            "commit LSN {lsn} does not fit a 63-bit version with {ORDINAL_BITS} bits of ordinal"
        ));
    }
    Ok((lsn << ORDINAL_BITS) | ordinal.min((1 << ORDINAL_BITS) - 1))
}

/// Where a row's version comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSource {
    /// A change stream's `_lsn` and `_ordinal`.
    Change,
    /// A column of the row (int, or timestamp in microseconds).
    Column(usize),
    /// The row's event time (milliseconds).
    EventTime,
}

/// A row's version, as its source gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// A change's (`change_version`: below 2⁶³).
    Change(u64),
    /// A column's value or an event time (may be negative).
    Signed(i64),
}

/// What a keyed sink does with a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyedRow {
    /// Nothing: the end of a table's snapshot.
    Skip,
    /// A truncate of the source table, which rows cannot express: counted and logged.
    Truncate,
    /// Write it at `version`; `deleted`: the delete flag, if the table has one.
    Write {
        version: Version,
        deleted: Option<bool>,
    },
}

/// How row `row` (at `event_time`, of `schema`) is written by a sink taking versions from
/// `source`, into a table with a delete flag if `deletes`; an error says why it cannot be.
pub fn keyed_row(
    source: VersionSource,
    row: &[crate::types::Value],
    event_time: crate::types::EventTime,
    schema: &crate::types::Schema,
    deletes: bool,
) -> Result<KeyedRow, String> {
    use crate::cdc::rows::{self as change_rows, RowOp};
    use crate::types::Value;
    Ok(match source {
        VersionSource::Change => {
            let deleted = match change_rows::row_op(row) {
                RowOp::Upsert { .. } => false,
                RowOp::Delete => true,
                RowOp::SnapshotEnd => return Ok(KeyedRow::Skip),
                RowOp::Truncate | RowOp::Unknown => return Ok(KeyedRow::Truncate),
            };
            let v = change_rows::row_version(row);
            KeyedRow::Write {
                version: Version::Change(change_version(v.commit_lsn, v.ordinal)?),
                deleted: Some(deleted),
            }
        }
        VersionSource::Column(c) => {
            let v = match &row[c] {
                Value::Int(n) | Value::Timestamp(n) => *n,
                _ => {
                    return Err(format!(
                        "a row has no version in column `{}`",
                        schema.field(c).name
                    ));
                }
            };
            KeyedRow::Write {
                version: Version::Signed(v),
                deleted: deletes.then_some(false),
            }
        }
        VersionSource::EventTime => KeyedRow::Write {
            version: Version::Signed(event_time),
            deleted: deletes.then_some(false),
        },
    })
}

/// A truncate of the source table, which a keyed sink cannot write as rows: the table keeps
/// its rows. Counted (`watershed_sink_skipped_total`); the first is logged.
pub fn skipped_truncate(sink: &str, seen: &mut u64) {
    *seen += 1;
    if *seen == 1 {
        tracing::warn!(
            sink,
            "a truncate of the source table is not applied: the table keeps its rows (counted in watershed_sink_skipped_total)"
        );
    }
    metrics::counter!("watershed_sink_skipped_total", "sink" => sink.to_string()).increment(1);
}

/// What a keyed sink writes for a row (see `keyed_row`): its version and delete flag
/// (`None` without a delete column), or `None` for a row it leaves out (a truncate is
/// counted, and warned of once, in `truncates_seen`).
pub fn row_to_write(
    sink: &str,
    truncates_seen: &mut u64,
    source: VersionSource,
    row: &[crate::types::Value],
    event_time: crate::types::EventTime,
    schema: &crate::types::Schema,
    deletes: bool,
) -> Result<Option<(Version, Option<bool>)>, String> {
    Ok(match keyed_row(source, row, event_time, schema, deletes)? {
        KeyedRow::Skip => None,
        KeyedRow::Truncate => {
            skipped_truncate(sink, truncates_seen);
            None
        }
        KeyedRow::Write { version, deleted } => Some((version, deleted)),
    })
}

/// The columns, key and version of a keyed sink, from its `key:` and `version:` settings;
/// `own` are the sink's own column names (versions, deletes), which the input must not
/// write. Mistakes are reported on `cx`.
pub fn keyed_output(
    cx: &mut SinkContext<'_>,
    key: &[S<String>],
    version: &Option<S<String>>,
    own: &[&str],
) -> (Vec<usize>, Vec<usize>, VersionSource) {
    let change = is_change_schema(&cx.schema);
    let columns: Vec<usize> = match &cx.columns {
        Some(cols) => cols.clone(),
        None if change => (META_COLUMNS..cx.schema.len()).collect(),
        None => (0..cx.schema.len()).collect(),
    };
    for &c in &columns {
        let name = cx.schema.field(c).name.to_string();
        if own.contains(&name.as_str()) || (change && c < META_COLUMNS) {
            let at = cx.location;
            cx.issue(
                &at,
                "columns",
                format!(
                    "`{name}` is the sink's own column (versions and deletes): leave it out \
                     of `columns`"
                ),
            );
        }
    }
    let mut keys = Vec::new();
    for k in key {
        match cx.schema.index_of(&k.value) {
            Some(i) if columns.contains(&i) => keys.push(i),
            Some(_) => cx.issue(
                &k.referenced,
                "key",
                format!("`{}` is not written: add it to `columns`", k.value),
            ),
            None => cx.issue(
                &k.referenced,
                "key",
                format!("`{}` is not a column of the sink's input", k.value),
            ),
        }
    }
    let version = match version {
        None if change => VersionSource::Change,
        Some(v) if change => {
            cx.issue(
                &v.referenced,
                "version",
                "a change stream's rows are versioned by their commit position (and deletes \
                 are tombstones): remove `version`",
            );
            VersionSource::Change
        }
        None => VersionSource::EventTime,
        Some(v) => match cx.schema.index_of(&v.value) {
            Some(i)
                if matches!(
                    cx.schema.field(i).data_type,
                    DataType::Int | DataType::Timestamp
                ) =>
            {
                VersionSource::Column(i)
            }
            Some(_) => {
                cx.issue(
                    &v.referenced,
                    "version",
                    format!("`{}` must be an int or timestamp column", v.value),
                );
                VersionSource::EventTime
            }
            None => {
                cx.issue(
                    &v.referenced,
                    "version",
                    format!("`{}` is not a column of the sink's input", v.value),
                );
                VersionSource::EventTime
            }
        },
    };
    (columns, keys, version)
}

/// A count setting of at least 1, or `default`.
pub fn at_least_one(
    cx: &mut SinkContext<'_>,
    v: &Option<S<u64>>,
    field: &str,
    default: usize,
) -> usize {
    match v {
        None => default,
        Some(n) if n.value >= 1 => n.value as usize,
        Some(n) => {
            cx.issue(&n.referenced, field, "must be at least 1");
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_versions_grow_with_the_lsn_then_the_ordinal() {
        let a = change_version(100, 7).unwrap();
        let b = change_version(100, 8).unwrap();
        let c = change_version(101, 0).unwrap();
        assert!(a < b && b < c);
        assert_eq!(
            change_version(100, u64::MAX).unwrap(),
            change_version(100, 65_535).unwrap()
        );
        assert!(change_version(1 << 47, 0).is_err());
        let top = change_version((1 << 47) - 1, u64::MAX).unwrap();
        assert!(i64::try_from(top).is_ok(), "fits a bigint");
    }
}
