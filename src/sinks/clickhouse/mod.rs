//! The ClickHouse sink: rows into one table over HTTP (JSONEachRow), idempotent by design.
//!
//! - **Versions.** Every row carries `_version` (UInt64) into a `ReplacingMergeTree(_version)`
//!   ordered by the output key, and the version only grows for a key: for a change stream's
//!   rows, the commit LSN and the change's ordinal packed into one number
//!   (`sinks::keyed::change_version`); for other rows, a configured column or the row's event time. A
//!   replay after a crash writes the same rows with the same versions, so under `FINAL`
//!   each key has one row, whatever was written twice. A change stream's deletes are rows
//!   with `_deleted = 1`; the end of a snapshot is not a row; a truncate cannot be one and
//!   is counted and logged.
//! - **Batches.** Rows are encoded as they arrive and inserted when `batch_rows` or
//!   `batch_bytes` is reached, when the oldest waited `batch_interval`, and at every
//!   checkpoint barrier (so a completed checkpoint means its rows are in the table).
//! - **Failures.** A transient failure (connection refused, 5xx, too many parts) is retried
//!   with backoff for up to `retry_for`, then the run fails and restarts from its last
//!   checkpoint; a definite one (unknown table or column, a value the column cannot take)
//!   stops at once with the server's message. At start the table's columns are read and
//!   every written column is checked against its type, so a mismatch names the column
//!   before any row is written.
//!
//! `client` owns the HTTP interface, `table` the column types and `CREATE TABLE`.

pub mod client;
pub mod config;
pub mod holdings;
pub mod table;

pub use config::ClickHouseSinkConfig;

use std::time::{Duration, Instant};

use crate::cdc::rows as change_rows;
use crate::dataflow::{Guarantee, Sink};
use crate::error::{ErrorClass, RunError};
use crate::format::json::write_json_str;
use crate::runtime::retry::Backoff;
use crate::sinks::clickhouse::client::{ChError, ClickHouse, ServerVersion, quote_ident};
use crate::sinks::clickhouse::table::{DELETED_COLUMN, Encoding, VERSION_COLUMN};
use crate::types::{Batch, Epoch, SchemaRef, Value};

use crate::sinks::keyed::{Version, row_to_write};
pub use crate::sinks::keyed::{VersionSource, change_version};

/// What a ClickHouse sink instance writes, and how.
#[derive(Clone, Debug)]
pub struct ClickHouseSinkSpec {
    pub node: String,
    pub client: ClickHouse,
    pub database: String,
    pub table: String,
    /// The input's schema (change rows for a change stream).
    pub schema: SchemaRef,
    /// The input columns written, in order (a change stream's: its table columns).
    pub columns: Vec<usize>,
    /// The output key (the created table's `ORDER BY`).
    pub key: Vec<usize>,
    pub version: VersionSource,
    pub create_table: bool,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub batch_interval: Duration,
    pub retry_for: Duration,
}

/// One written column: its `"name":` prefix, input column and encoding.
struct Written {
    prefix: Box<[u8]>,
    column: usize,
    encoding: Encoding,
    /// The table's column takes null (else ClickHouse would store its default instead).
    nullable: bool,
}

pub struct ClickHouseSink {
    spec: ClickHouseSinkSpec,
    /// `db`.`table`, quoted.
    qualified: String,
    written: Vec<Written>,
    /// Whether the table has `_deleted` to write.
    deletes: bool,
    buffer: Vec<u8>,
    rows: usize,
    oldest: Option<Instant>,
    truncates_seen: u64,
    scratch: Vec<u8>,
}

impl ClickHouseSink {
    pub fn new(spec: ClickHouseSinkSpec) -> ClickHouseSink {
        let qualified = format!(
            "{}.{}",
            quote_ident(&spec.database),
            quote_ident(&spec.table)
        );
        ClickHouseSink {
            spec,
            qualified,
            written: Vec::new(),
            deletes: false,
            buffer: Vec::new(),
            rows: 0,
            oldest: None,
            truncates_seen: 0,
            scratch: Vec::new(),
        }
    }

    fn error(&self, e: ChError) -> RunError {
        let class = if e.is_transient() {
            ErrorClass::Transient
        } else {
            ErrorClass::Definite
        };
        RunError::External {
            component: self.spec.node.clone(),
            message: format!("table {}: {e}", self.qualified),
            class,
        }
    }

    /// Runs `op` until it succeeds, fails definitely, or transient failures have lasted
    /// `retry_for`.
    fn retrying<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&ClickHouse) -> Result<T, ChError>,
    ) -> Result<T, RunError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match op(&self.spec.client) {
                Ok(v) => {
                    if backoff.attempts() > 0 {
                        tracing::info!(sink = %self.spec.node, "ClickHouse answers again: {what} done");
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() && started.elapsed() < self.spec.retry_for => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 {
                        tracing::warn!(sink = %self.spec.node, error = %e, "{what} failed; retrying for up to {:?}", self.spec.retry_for);
                    }
                    metrics::counter!("watershed_sink_retries_total", "sink" => self.spec.node.clone()).increment(1);
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// Reads the table (creating it if asked) and decides how each column is written.
    fn connect(&mut self) -> Result<(), RunError> {
        let server: ServerVersion = self.retrying("connecting", |ch| ch.version())?;
        let spec = &self.spec;
        let change = spec.version == VersionSource::Change;
        if spec.create_table {
            let sql = table::create_table_sql(
                &self.qualified,
                &spec.schema,
                &spec.columns,
                &spec.key,
                change,
                server,
            );
            self.retrying("creating the table", |ch| ch.query(&sql))?;
        }
        let (database, name) = (spec.database.clone(), spec.table.clone());
        let columns = self.retrying("reading the table's columns", |ch| {
            table::describe(ch, &database, &name)
        })?;
        let definite = |message: String| RunError::External {
            component: self.spec.node.clone(),
            message: format!("table {}: {message}", self.qualified),
            class: ErrorClass::Definite,
        };
        if columns.is_empty() {
            return Err(definite(format!(
                "no such table at {} (set `create_table: true` to create it)",
                self.spec.client.url()
            )));
        }
        let find = |name: &str| columns.iter().find(|c| c.name == name);
        match find(VERSION_COLUMN) {
            Some(c) if c.base == "UInt64" => {}
            Some(c) => {
                return Err(definite(format!(
                    "column `{VERSION_COLUMN}` is {}; the sink writes a UInt64 version",
                    c.base
                )));
            }
            None => {
                return Err(definite(format!(
                    "has no `{VERSION_COLUMN}` column: the sink writes a version per row \
                     (`{VERSION_COLUMN} UInt64`, engine ReplacingMergeTree({VERSION_COLUMN}))"
                )));
            }
        }
        self.deletes = find(DELETED_COLUMN).is_some();
        if change && !self.deletes {
            return Err(definite(format!(
                "has no `{DELETED_COLUMN}` column: rows of a change stream carry a delete \
                 flag (`{DELETED_COLUMN} UInt8`)"
            )));
        }
        let mut written = Vec::new();
        for (i, &c) in self.spec.columns.iter().enumerate() {
            let field = self.spec.schema.field(c);
            let Some(target) = find(&field.name) else {
                return Err(definite(format!(
                    "has no column `{}`, which the sink writes",
                    field.name
                )));
            };
            let encoding = table::encoding_for(field.data_type, &target.base)
                .map_err(|m| definite(format!("column `{}`: {m}", field.name)))?;
            let mut prefix = Vec::new();
            if i > 0 {
                prefix.push(b',');
            }
            write_json_str(&field.name, &mut prefix);
            prefix.push(b':');
            written.push(Written {
                prefix: prefix.into_boxed_slice(),
                column: c,
                encoding,
                nullable: target.nullable,
            });
        }
        self.written = written;
        Ok(())
    }

    /// Inserts what is buffered.
    fn insert(&mut self) -> Result<(), RunError> {
        if self.rows == 0 {
            return Ok(());
        }
        let body = std::mem::take(&mut self.buffer);
        let qualified = self.qualified.clone();
        let result = self.retrying("inserting", |ch| ch.insert(&qualified, &body));
        self.buffer = body;
        result?;
        metrics::counter!("watershed_sink_rows_total", "sink" => self.spec.node.clone())
            .increment(self.rows as u64);
        metrics::counter!("watershed_sink_inserts_total", "sink" => self.spec.node.clone())
            .increment(1);
        self.buffer.clear();
        self.rows = 0;
        self.oldest = None;
        Ok(())
    }

    /// Appends row `i` of `batch` to the buffer (or skips it: the end of a snapshot, a
    /// truncate).
    fn definite(&self, message: String) -> RunError {
        RunError::External {
            component: self.spec.node.clone(),
            message: format!("table {}: {message}", self.qualified),
            class: ErrorClass::Definite,
        }
    }

    fn encode(&mut self, batch: &Batch, i: usize) -> Result<(), RunError> {
        let row = batch.row(i);
        let to_write = row_to_write(
            &self.spec.node,
            &mut self.truncates_seen,
            self.spec.version,
            row,
            batch.event_time(i),
            &self.spec.schema,
            self.deletes,
        )
        .map_err(|m| self.definite(m))?;
        let Some((version, deleted)) = to_write else {
            return Ok(());
        };
        // Change versions as they are (reconcile reads them back); others in order whatever
        // their sign.
        let version = match version {
            Version::Change(v) => v,
            Version::Signed(v) => ordered_u64(v),
        };
        let is_delete = deleted == Some(true);
        // Unchanged TOASTed columns of an update have no value in the change: keep the
        // table's (a whole row replaces the older one).
        let unavailable = if self.spec.version == VersionSource::Change && !is_delete {
            change_rows::row_unavailable(row)
        } else {
            Vec::new()
        };
        // A delete carries the row before it, often only its key (default replica
        // identity): the other columns of a tombstone do not matter.
        if let Some(w) = self.written.iter().find(|w| {
            let name = self.spec.schema.field(w.column).name.as_str();
            !w.nullable
                && row[w.column].is_null()
                && (!is_delete || self.spec.key.contains(&w.column))
                && !unavailable.iter().any(|u| u == name)
        }) {
            // ClickHouse would store the type's default in its place, and a key of 0 or ''
            // would replace another row.
            let name = self.spec.schema.field(w.column).name.to_string();
            return Err(self.definite(format!(
                "a row has no value for column `{name}`, which is not Nullable there \
                 (ClickHouse would store a default instead); filter such rows out before the \
                 sink or make the column Nullable"
            )));
        }
        let kept = if unavailable.is_empty() {
            None
        } else {
            Some(self.current_values(row, &unavailable)?)
        };
        let out = &mut self.buffer;
        out.push(b'{');
        for w in &self.written {
            out.extend_from_slice(&w.prefix);
            let name = self.spec.schema.field(w.column).name.as_str();
            match kept.as_ref().and_then(|k| k.get(name)) {
                Some(json) => out.extend_from_slice(json.as_bytes()),
                None => write_encoded(&row[w.column], w.encoding, out, &mut self.scratch),
            }
        }
        if !self.written.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"_version\":");
        out.extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
        if let Some(d) = deleted {
            out.extend_from_slice(if d {
                b",\"_deleted\":1"
            } else {
                b",\"_deleted\":0"
            });
        }
        out.extend_from_slice(b"}\n");
        self.rows += 1;
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// The table's values of `columns` for `row`'s key, as JSON text by column name (none if
    /// the key is not there): what is buffered is inserted first, so the newest is read.
    fn current_values(
        &mut self,
        row: &[Value],
        columns: &[String],
    ) -> Result<ahash::AHashMap<String, String>, RunError> {
        self.insert()?;
        metrics::counter!("watershed_sink_unchanged_lookups_total", "sink" => self.spec.node.clone())
            .increment(1);
        let mut filter = Vec::new();
        for &k in &self.spec.key {
            let encoding = self
                .written
                .iter()
                .find(|w| w.column == k)
                .map_or(Encoding::Plain, |w| w.encoding);
            let name = quote_ident(&self.spec.schema.field(k).name);
            let value = sql_literal(&row[k], encoding, &mut self.scratch);
            filter.push(format!("{name} = {value}"));
        }
        let wanted: Vec<&String> = columns
            .iter()
            .filter(|c| {
                self.written
                    .iter()
                    .any(|w| self.spec.schema.field(w.column).name == **c)
            })
            .collect();
        if wanted.is_empty() {
            return Ok(ahash::AHashMap::new());
        }
        let select: Vec<String> = wanted.iter().map(|c| quote_ident(c)).collect();
        // The key's newest row, unless it is a tombstone (FINAL in a subquery, so the filter
        // on `_deleted` sees only that row).
        let live = if self.deletes {
            format!(" WHERE {} = 0", quote_ident(DELETED_COLUMN))
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT {} FROM (SELECT * FROM {} FINAL WHERE {}){live} FORMAT JSONEachRow",
            select.join(", "),
            self.qualified,
            filter.join(" AND ")
        );
        let text = self.retrying("reading unchanged values", |ch| ch.query(&sql))?;
        let Some(line) = text.lines().next() else {
            return Ok(ahash::AHashMap::new());
        };
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| self.definite(format!("reading unchanged values: {e}")))?;
        Ok(obj.into_iter().map(|(k, v)| (k, v.to_string())).collect())
    }
}

/// An i64 as a UInt64 in the same order (negative event times before positive ones).
fn ordered_u64(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// `value` as an SQL literal of a column taking `encoding`: the text its JSONEachRow
/// encoding gives, numbers as they are, the rest quoted, timestamps converted.
fn sql_literal(value: &Value, encoding: Encoding, scratch: &mut Vec<u8>) -> String {
    let mut json = Vec::new();
    write_encoded(value, encoding, &mut json, scratch);
    let text = String::from_utf8_lossy(&json).into_owned();
    let literal = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Number(_)) => text.clone(),
        Ok(serde_json::Value::String(s)) => client::quote_str(&s),
        _ => client::quote_str(&text),
    };
    match encoding {
        Encoding::DateTime => format!("toDateTime({literal})"),
        Encoding::DateTime64 => format!("toDateTime64({literal}, 6)"),
        _ => literal,
    }
}

/// Writes `value` for a column taking `encoding`.
fn write_encoded(value: &Value, encoding: Encoding, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    use crate::format::json::write_value;
    match (value, encoding) {
        (Value::Null, _) => out.extend_from_slice(b"null"),
        (Value::Bool(b), Encoding::Bool01) => out.push(if *b { b'1' } else { b'0' }),
        (Value::Float(f), _) if f.is_nan() => out.extend_from_slice(b"\"nan\""),
        (Value::Float(f), _) if f.is_infinite() && *f > 0.0 => out.extend_from_slice(b"\"inf\""),
        (Value::Float(f), _) if f.is_infinite() => out.extend_from_slice(b"\"-inf\""),
        (Value::Decimal(d), Encoding::Plain) => {
            // Unquoted: JSONEachRow of 18.16 does not read a quoted Decimal.
            out.extend_from_slice(d.to_string().as_bytes())
        }
        // Seconds since the epoch: read the same whatever the column's or server's time zone.
        (Value::Timestamp(us), Encoding::DateTime) => out.extend_from_slice(
            itoa::Buffer::new()
                .format(us.div_euclid(1_000_000))
                .as_bytes(),
        ),
        (Value::Timestamp(us), Encoding::DateTime64) => {
            if *us < 0 {
                out.push(b'-');
            }
            let a = us.unsigned_abs();
            out.extend_from_slice(itoa::Buffer::new().format(a / 1_000_000).as_bytes());
            out.push(b'.');
            let frac = itoa::Buffer::new().format(a % 1_000_000).to_string();
            out.extend(std::iter::repeat_n(b'0', 6 - frac.len()));
            out.extend_from_slice(frac.as_bytes());
        }
        (Value::Timestamp(us), Encoding::Micros) => {
            out.extend_from_slice(itoa::Buffer::new().format(*us).as_bytes())
        }
        (Value::Date(days), Encoding::Days) => {
            out.extend_from_slice(itoa::Buffer::new().format(*days).as_bytes())
        }
        (Value::Json(text), Encoding::Text) => write_json_str(text, out),
        (Value::Int(_) | Value::Bool(_) | Value::Decimal(_) | Value::Float(_), Encoding::Text) => {
            scratch.clear();
            write_value(value, scratch);
            out.push(b'"');
            out.extend_from_slice(scratch.strip_prefix(b"\"").unwrap_or(scratch));
            if !scratch.ends_with(b"\"") {
                out.push(b'"');
            }
        }
        // Timestamps and dates as text (RFC 3339, ISO), bytes as base64, strings as they are.
        _ => write_value(value, out),
    }
}

/// `validate --connect` of a ClickHouse sink: the server answers, and its table takes every
/// column the sink writes (or does not exist yet and the sink creates it). Creates nothing.
pub fn preflight(spec: &ClickHouseSinkSpec) -> Vec<crate::config::component::Check> {
    use crate::config::component::Check;
    let mut checks = Vec::new();
    match spec.client.version() {
        Ok(v) => checks.push(Check {
            ok: true,
            line: format!(
                "ClickHouse at {} answers (version {}.{})",
                spec.client.url(),
                v.major,
                v.minor
            ),
        }),
        Err(e) => {
            checks.push(Check {
                ok: false,
                line: e.to_string(),
            });
            return checks;
        }
    }
    let mut probe = spec.clone();
    probe.retry_for = Duration::ZERO;
    probe.create_table = false;
    let table = format!("{}.{}", spec.database, spec.table);
    checks.push(match ClickHouseSink::new(probe).connect() {
        Ok(()) => Check {
            ok: true,
            line: format!("table {table} takes every column the sink writes"),
        },
        Err(e) if spec.create_table && e.to_string().contains("no such table") => {
            let database = spec.client.query(&format!(
                "SELECT count() FROM system.databases WHERE name = {}",
                client::quote_str(&spec.database)
            ));
            let readonly = spec
                .client
                .query("SELECT value FROM system.settings WHERE name = 'readonly'");
            match (database, readonly) {
                (Ok(d), _) if d.trim() == "0" => Check {
                    ok: false,
                    line: format!("database {} does not exist", spec.database),
                },
                (_, Ok(r)) if !matches!(r.trim(), "" | "0") => Check {
                    ok: false,
                    line: format!(
                        "table {table} does not exist and this user may not create it \
                         (readonly = {})",
                        r.trim()
                    ),
                },
                (Err(e), _) | (_, Err(e)) => Check {
                    ok: false,
                    line: e.to_string(),
                },
                _ => Check {
                    ok: true,
                    line: format!("table {table} does not exist yet: the sink creates it"),
                },
            }
        }
        Err(e) => Check::failed(e),
    });
    checks
}

impl Sink for ClickHouseSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::Idempotent
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        for i in 0..batch.len() {
            self.encode(batch, i)?;
            if self.rows >= self.spec.batch_rows || self.buffer.len() >= self.spec.batch_bytes {
                self.insert()?;
            }
        }
        Ok(())
    }

    fn pre_commit(&mut self, _epoch: Epoch) -> Result<Vec<u8>, RunError> {
        // Rows before the barrier are in the table once the checkpoint completes; a replay
        // from it writes later rows again, which their versions collapse.
        self.insert()?;
        Ok(Vec::new())
    }

    fn commit(&mut self, _epoch: Epoch) -> Result<(), RunError> {
        Ok(())
    }

    fn recover(&mut self, _state: Option<&[u8]>) -> Result<(), RunError> {
        // Nothing to finish: what a crash cut short is written again by the replay.
        self.buffer.clear();
        self.rows = 0;
        self.oldest = None;
        self.connect()
    }

    fn finish(&mut self) -> Result<(), RunError> {
        self.insert()
    }

    fn flush(&mut self) -> Result<(), RunError> {
        if self
            .oldest
            .is_some_and(|t| t.elapsed() >= self.spec.batch_interval)
        {
            self.insert()?;
        }
        Ok(())
    }

    fn holds_rows(&self) -> bool {
        self.rows > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: Value, e: Encoding) -> String {
        let mut out = Vec::new();
        write_encoded(&v, e, &mut out, &mut Vec::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_written_as_their_column_reads_them() {
        let t = 1_767_225_601_250_001; // 2026-01-01T00:00:01.250001Z
        assert_eq!(
            encoded(Value::Timestamp(t), Encoding::DateTime),
            "1767225601",
            "seconds: no time zone to misread"
        );
        assert_eq!(
            encoded(Value::Timestamp(t), Encoding::DateTime64),
            "1767225601.250001"
        );
        assert_eq!(
            encoded(Value::Timestamp(-1_500_000), Encoding::DateTime64),
            "-1.500000"
        );
        assert_eq!(encoded(Value::Timestamp(-1), Encoding::DateTime), "-1");
        assert_eq!(encoded(Value::Float(1.5), Encoding::Text), "\"1.5\"");
        assert!(ordered_u64(-1) < ordered_u64(0) && ordered_u64(0) < ordered_u64(1));
        assert!(ordered_u64(i64::MIN) < ordered_u64(-1));
        assert_eq!(
            encoded(Value::Timestamp(t), Encoding::Micros),
            t.to_string()
        );
        assert_eq!(encoded(Value::Float(f64::NAN), Encoding::Float), "\"nan\"");
        assert_eq!(
            encoded(Value::Float(f64::NEG_INFINITY), Encoding::Float),
            "\"-inf\""
        );
        assert_eq!(encoded(Value::Bool(true), Encoding::Bool01), "1");
        assert_eq!(
            encoded(Value::Decimal("12.50".parse().unwrap()), Encoding::Plain),
            "12.50"
        );
        assert_eq!(encoded(Value::Int(5), Encoding::Text), "\"5\"");
        assert_eq!(
            encoded(Value::Json("{\"a\":1}".into()), Encoding::Text),
            "\"{\\\"a\\\":1}\""
        );
        assert_eq!(encoded(Value::Null, Encoding::DateTime), "null");
    }
}
