//! The snapshot's chunk readers: `snapshot_workers` threads, each with its own connection,
//! read chunks of a table at once, while the source hands the chunks on in key order.
//!
//! ```text
//!   source thread                         worker 1 ─ conn ─┐
//!   boundary query (own connection) ──► job (after, upto] ─┤  SELECT … WHERE key > after
//!   in-flight queue, in key order   ◄── rows, key texts ───┘        AND key <= upto
//!                                       worker 2 ─ conn ─ …          ORDER BY key
//! ```
//!
//! - With one worker a job is `key > after ORDER BY key LIMIT chunk_rows` and the next job
//!   starts after its last row (no boundary query). With several, the source first finds each
//!   chunk's last key (`ORDER BY key OFFSET chunk_rows - 1 LIMIT 1`, an index scan) and hands
//!   out `(after, upto]` ranges; the range past the last boundary is the table's last job.
//! - Each job reads the WAL insert position before its query: its rows' version (see
//!   `source`), so chunks read at different moments are each exact against streaming.
//! - Chunks are handed on in key order whatever order they finish in, so the source's
//!   position stays "the key of the last row handed on" and a restore resumes there; chunks
//!   read ahead but not handed on are read again after a crash. At most one chunk per worker
//!   is held besides the one being handed on.
//! - A worker's error (connection lost, a value that does not convert) comes back in place of
//!   its chunk; dropping the reader lets its workers end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use super::checks::Fault;
use super::values::from_text;
use super::wire::{ConnectOptions, Connection, Lsn, QueryEvent, quote_literal};
use crate::types::{SchemaRef, Value};

/// A configured table as the snapshot reads it.
#[derive(Clone, Debug)]
pub struct SnapshotTable {
    /// `schema.table`, for messages.
    pub name: String,
    /// `"schema"."table"`.
    pub relation: String,
    /// The configured columns, quoted, in order.
    pub select: String,
    /// Row column indices of the key, and their quoted names.
    pub key: Vec<usize>,
    pub key_list: String,
    pub schema: SchemaRef,
}

/// Rows of one chunk, converted, in key order.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The WAL insert position read before the chunk's query, and the server's clock then.
    pub low: Lsn,
    pub ts_ms: Option<i64>,
    pub rows: Vec<Vec<Value>>,
    /// The key columns' text of each row (what a position records).
    pub keys: Vec<Vec<String>>,
    /// No row of the table comes after this chunk's.
    pub last_of_table: bool,
}

struct Job {
    table: Arc<SnapshotTable>,
    after: Option<Vec<String>>,
    /// The last key of the chunk (inclusive); `None`: to the end, or `limit` rows.
    upto: Option<Vec<String>>,
    limit: Option<usize>,
}

struct Worker {
    jobs: Sender<Job>,
    results: Receiver<Result<Chunk, Fault>>,
}

/// The workers and the chunks in flight for one table at a time.
pub struct ChunkReader {
    workers: Vec<Worker>,
    chunk_rows: usize,
    /// Workers with a job, in key order of their jobs.
    in_flight: VecDeque<usize>,
    /// The table being handed out and where its next job starts.
    table: Option<usize>,
    next_after: Option<Vec<String>>,
    /// The table's last job is out.
    all_out: bool,
}

impl ChunkReader {
    pub fn new(
        connect: &ConnectOptions,
        workers: usize,
        chunk_rows: usize,
    ) -> Result<ChunkReader, Fault> {
        let workers = (0..workers.max(1))
            .map(|i| {
                let (jobs, job_rx) = channel::<Job>();
                let (result_tx, results) = channel();
                let connect = ConnectOptions {
                    application_name: format!("{} snapshot {i}", connect.application_name),
                    ..connect.clone()
                };
                std::thread::Builder::new()
                    .name(format!("pg-snapshot-{i}"))
                    .spawn(move || work(connect, job_rx, result_tx))
                    .map_err(|e| {
                        Fault::Explained(format!("cannot start a snapshot worker: {e}"))
                    })?;
                Ok(Worker { jobs, results })
            })
            .collect::<Result<Vec<_>, Fault>>()?;
        Ok(ChunkReader {
            workers,
            chunk_rows: chunk_rows.max(1),
            in_flight: VecDeque::new(),
            table: None,
            next_after: None,
            all_out: false,
        })
    }

    /// The next chunk of table `index` after key `after` (where the source's position is),
    /// handing out jobs ahead to every idle worker; `sql` runs the boundary queries. Blocks
    /// until the chunk is read.
    pub fn next(
        &mut self,
        sql: &mut Connection,
        index: usize,
        table: &Arc<SnapshotTable>,
        after: &Option<Vec<String>>,
    ) -> Result<Chunk, Fault> {
        if self.table != Some(index) {
            debug_assert!(self.in_flight.is_empty());
            self.table = Some(index);
            self.next_after = after.clone();
            self.all_out = false;
        }
        let bounded = self.workers.len() > 1;
        while !self.all_out && self.in_flight.len() < self.workers.len() {
            let worker = (0..self.workers.len())
                .find(|w| !self.in_flight.contains(w))
                .expect("an idle worker");
            let after = self.next_after.clone();
            let job = if bounded {
                let upto = boundary(sql, table, &after, self.chunk_rows)?;
                self.all_out = upto.is_none();
                self.next_after = upto.clone();
                Job {
                    table: table.clone(),
                    after,
                    upto,
                    limit: None,
                }
            } else {
                // The next job starts after this one's last row, known when it is back.
                self.all_out = true;
                Job {
                    table: table.clone(),
                    after,
                    upto: None,
                    limit: Some(self.chunk_rows),
                }
            };
            if self.workers[worker].jobs.send(job).is_err() {
                return Err(Fault::Explained("a snapshot worker ended".into()));
            }
            self.in_flight.push_back(worker);
        }
        let worker = self.in_flight.pop_front().expect("a job in flight");
        let chunk = self.workers[worker]
            .results
            .recv()
            .map_err(|_| Fault::Explained("a snapshot worker ended".into()))??;
        if !bounded {
            self.next_after = chunk.keys.last().cloned().or(self.next_after.take());
            self.all_out = chunk.last_of_table;
        }
        if chunk.last_of_table {
            self.table = None;
        }
        Ok(chunk)
    }
}

/// The key of the `chunk_rows`-th row after `after`: the chunk's last key; `None` when fewer
/// rows remain.
fn boundary(
    sql: &mut Connection,
    table: &SnapshotTable,
    after: &Option<Vec<String>>,
    chunk_rows: usize,
) -> Result<Option<Vec<String>>, Fault> {
    let query = format!(
        "SELECT {keys} FROM {relation}{filter} ORDER BY {keys} OFFSET {} LIMIT 1",
        chunk_rows - 1,
        keys = table.key_list,
        relation = table.relation,
        filter = filter(table, after, &None),
    );
    let found = sql.query(&query)?;
    Ok(found
        .first()
        .and_then(|r| r.rows.first())
        .map(|row| row.iter().map(|v| v.clone().unwrap_or_default()).collect()))
}

/// ` WHERE (key) > (after) AND (key) <= (upto)`, as far as given.
fn filter(
    table: &SnapshotTable,
    after: &Option<Vec<String>>,
    upto: &Option<Vec<String>>,
) -> String {
    let literals = |keys: &[String]| {
        keys.iter()
            .map(|k| quote_literal(k))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut conditions = Vec::new();
    if let Some(a) = after {
        conditions.push(format!("({}) > ({})", table.key_list, literals(a)));
    }
    if let Some(u) = upto {
        conditions.push(format!("({}) <= ({})", table.key_list, literals(u)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

fn work(connect: ConnectOptions, jobs: Receiver<Job>, results: Sender<Result<Chunk, Fault>>) {
    let mut conn: Option<Connection> = None;
    // Per table: its columns' user-defined array types (looked up once).
    let mut arrays: HashMap<String, HashSet<u32>> = HashMap::new();
    while let Ok(job) = jobs.recv() {
        let chunk = match conn.as_mut() {
            Some(c) => read_chunk(c, &job, &mut arrays),
            None => match Connection::connect(&connect, false) {
                Ok(c) => read_chunk(conn.insert(c), &job, &mut arrays),
                Err(e) => Err(Fault::Pg(e)),
            },
        };
        if chunk.is_err() {
            conn = None;
        }
        if results.send(chunk).is_err() {
            return;
        }
    }
}

/// The user-defined array types of `table`'s columns (arrays of enums, of domains: their
/// values convert as `text[]`), from the catalog.
fn user_arrays(sql: &mut Connection, table: &SnapshotTable) -> Result<HashSet<u32>, Fault> {
    let found = sql.query(&format!(
        "SELECT a.atttypid::int8::text AS oid FROM pg_attribute a \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = {}::regclass AND a.attnum > 0 AND t.typcategory = 'A' \
         AND a.atttypid >= 16384",
        quote_literal(&table.relation)
    ))?;
    Ok(found[0]
        .rows
        .iter()
        .filter_map(|r| r[0].as_deref()?.parse().ok())
        .collect())
}

/// Reads one job's rows, converted to the table's types.
fn read_chunk(
    sql: &mut Connection,
    job: &Job,
    arrays: &mut HashMap<String, HashSet<u32>>,
) -> Result<Chunk, Fault> {
    let table = &job.table;
    if !arrays.contains_key(&table.relation) {
        let found = user_arrays(sql, table)?;
        arrays.insert(table.relation.clone(), found);
    }
    let user_arrays = &arrays[&table.relation];
    let mark = sql.query(
        "SELECT pg_current_wal_lsn()::text AS lsn, \
         (extract(epoch FROM clock_timestamp()) * 1000)::int8::text AS ms",
    )?;
    let low: Lsn = mark[0]
        .get(0, "lsn")
        .unwrap_or("0/0")
        .parse()
        .map_err(Fault::Pg)?;
    let ts_ms: Option<i64> = mark[0].get(0, "ms").and_then(|m| m.parse().ok());
    let limit = job.limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let query = format!(
        "SELECT {} FROM {}{} ORDER BY {}{limit}",
        table.select,
        table.relation,
        filter(table, &job.after, &job.upto),
        table.key_list
    );
    let mut chunk = Chunk {
        low,
        ts_ms,
        ..Chunk::default()
    };
    let mut failed: Option<String> = None;
    let mut type_oids: Vec<u32> = Vec::new();
    sql.query_each(&query, |event| {
        let values = match event {
            QueryEvent::Row(values) => values,
            QueryEvent::Columns(columns) => {
                type_oids = columns
                    .iter()
                    .map(|c| match user_arrays.contains(&c.type_oid) {
                        true => super::values::oid::TEXT_ARRAY,
                        false => c.type_oid,
                    })
                    .collect();
                return Ok(());
            }
            QueryEvent::Done(_) => return Ok(()),
        };
        let mut row = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let field = table.schema.field(i);
            row.push(match v {
                None => Value::Null,
                Some(text) => {
                    let oid = type_oids.get(i).copied().unwrap_or(0);
                    from_text(text, field.data_type, oid).unwrap_or_else(|e| {
                        failed.get_or_insert(format!("{}.{}: {e}", table.name, field.name));
                        Value::Null
                    })
                }
            });
        }
        chunk.keys.push(
            table
                .key
                .iter()
                .map(|&i| {
                    values
                        .get(i)
                        .copied()
                        .flatten()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect(),
        );
        chunk.rows.push(row);
        Ok(())
    })?;
    if let Some(f) = failed {
        // A snapshot row that does not convert is a configuration mistake (a column's type),
        // not a record to drop: every row of the table would be lost.
        return Err(Fault::Explained(format!(
            "postgres: snapshot of {}: {f}",
            table.name
        )));
    }
    chunk.last_of_table = match (job.limit, &job.upto) {
        (Some(n), _) => chunk.rows.len() < n,
        (None, Some(_)) => false,
        (None, None) => true,
    };
    Ok(chunk)
}
