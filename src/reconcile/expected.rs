//! What a keyed sink should hold, from the source of its input: a change stream's table
//! read to its end (the same source the pipeline runs, built from the same plan, reading its
//! files again — nothing is consumed or moved) and applied key by key — an insert, update
//! or snapshot row makes the key live at the change's version, a delete removes it, a
//! truncate empties the table. Only sources that end (files not followed) can be read so;
//! a source that reads a database (the native Postgres source) gives its table's keys as
//! they are now instead (versions unknown there: stale rows are not told). A sink fed by an
//! operator or by another endless source is reported as such.

use std::time::{Duration, Instant};

use crate::cdc::rows::{self as change_rows, RowOp};
use crate::config::component::CurrentTables;
use crate::dataflow::{ReadBuffers, ReadStatus};
use crate::reconcile::{KEY_SEPARATOR, KeyVersions};
use crate::runtime::plan::{NodeKind, Plan};
use crate::sinks::keyed::change_version;
use crate::types::{Batch, DataType, Value};

/// How long a source may have nothing to read before it is taken not to end.
const QUIET_LIMIT: Duration = Duration::from_secs(5);

/// The key text of `row`'s `key` columns, as the sinks' holdings render them: integers and
/// strings as they are, timestamps as microseconds since the epoch, dates `YYYY-MM-DD`.
pub fn key_text(row: &[Value], key: &[usize]) -> Option<String> {
    let mut out = String::new();
    for (i, &k) in key.iter().enumerate() {
        if i > 0 {
            out.push(KEY_SEPARATOR);
        }
        match &row[k] {
            Value::Int(n) | Value::Timestamp(n) => out.push_str(itoa::Buffer::new().format(*n)),
            Value::Str(s) => out.push_str(s),
            Value::Date(days) => {
                let mut text = Vec::new();
                crate::format::write_date(*days, &mut text);
                out.push_str(&String::from_utf8_lossy(&text));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Whether sink `sink` of `plan` is fed by anything but a change stream's table port (an
/// operator's event-derived rows, a source's rows or dead letters): what it should hold is
/// learnt by running the pipeline again (`rerun`).
pub fn needs_rerun(plan: &Plan, sink: &str) -> bool {
    plan.nodes.iter().find(|n| n.name == sink).is_some_and(|n| {
        n.inputs.iter().any(|i| {
            let up = &plan.nodes[i.node];
            matches!(up.kind, NodeKind::Operator { .. })
                || !change_rows::is_change_schema(&up.ports[i.port].schema)
        })
    })
}

/// The live keys and versions sink `sink` (a node of `plan`) should hold, keyed by the
/// columns named `key`: from the source's system as it is now where the source can read it
/// (`current`, by source name: a database's table; versions unknown), else from its change
/// stream read to its end.
pub fn expected(
    plan: &Plan,
    sink: &str,
    key: &[String],
    current: &[(String, CurrentTables)],
) -> Result<KeyVersions, String> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.name == sink)
        .ok_or_else(|| format!("no sink `{sink}` in the pipeline"))?;
    let [input] = node.inputs.as_slice() else {
        return Err("the sink has several inputs: reconcile compares one change stream".into());
    };
    let source = &plan.nodes[input.node];
    let NodeKind::Source { factory, .. } = &source.kind else {
        return Err(format!(
            "its input `{}` is an operator's output: reconcile compares sinks fed by a change \
             stream's table",
            source.name
        ));
    };
    let port = &source.ports[input.port];
    if !change_rows::is_change_schema(&port.schema) {
        return Err(format!(
            "its input `{}.{}` is not a change stream's table",
            source.name, port.name
        ));
    }
    let key_columns: Vec<usize> =
        key.iter()
            .map(|k| {
                let i = port.schema.index_of(k).ok_or_else(|| {
                    format!("key column `{k}` is not a column of `{}`", port.name)
                })?;
                match port.schema.field(i).data_type {
                    DataType::Int | DataType::String => Ok(i),
                    other => Err(format!(
                        "key column `{k}` is {}: reconcile compares int and string keys",
                        other.name()
                    )),
                }
            })
            .collect::<Result<_, String>>()?;
    if let Some((_, read)) = current.iter().find(|(name, _)| *name == source.name) {
        return read(&port.name, key);
    }
    let mut state = KeyVersions::new();
    for instance in 0..source.parallelism {
        let mut s = factory(instance, source.parallelism).map_err(|e| e.to_string())?;
        let consumed: Vec<bool> = (0..source.ports.len()).map(|p| p == input.port).collect();
        s.connect_ports(&consumed);
        let mut out = ReadBuffers::for_source(s.as_ref());
        let mut quiet_since: Option<Instant> = None;
        // A time that moves on by an hour per read: a `rate` limit lets every read through.
        let mut now_ms: i64 = 0;
        loop {
            now_ms += 3_600_000;
            let status = s.read(&mut out, 4096, now_ms).map_err(|e| e.to_string())?;
            let batch: &Batch = match input.port {
                0 => &out.records,
                1 => &out.dead_letters,
                p => &out.extra[p - 2],
            };
            apply(batch, &key_columns, &mut state)?;
            out.records.clear();
            out.dead_letters.clear();
            for b in &mut out.extra {
                b.clear();
            }
            match status {
                ReadStatus::Finished => break,
                ReadStatus::Pending { .. } => {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > QUIET_LIMIT {
                        return Err(format!(
                            "source `{}` does not end (a followed file or a stream): \
                             reconcile reads change streams that end",
                            source.name
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => quiet_since = None,
            }
        }
    }
    Ok(state)
}

/// Applies change rows to `state`.
pub(crate) fn apply(batch: &Batch, key: &[usize], state: &mut KeyVersions) -> Result<(), String> {
    for (row, _) in batch.rows() {
        let op = change_rows::row_op(row);
        if matches!(op, RowOp::SnapshotEnd | RowOp::Unknown) {
            continue;
        }
        if op == RowOp::Truncate {
            state.clear();
            continue;
        }
        let v = change_rows::row_version(row);
        let version = change_version(v.commit_lsn, v.ordinal)?;
        let Some(k) = key_text(row, key) else {
            continue;
        };
        match op {
            RowOp::Delete => {
                state.remove(&k);
            }
            _ => {
                state.insert(k, Some(version));
            }
        }
    }
    Ok(())
}
