//! The Postgres sink: rows upserted into one table, idempotent by version, in one
//! transaction per checkpoint epoch.
//!
//! - **Upserts.** Rows are written with `INSERT … ON CONFLICT (key) DO UPDATE … WHERE
//!   target._version <= excluded._version`, batched (`batch_rows` per statement, a key once
//!   per statement: its highest version). `_version` (bigint) grows for a key: a change
//!   stream's commit LSN and ordinal (as the ClickHouse sink packs them), a configured
//!   column, or the row's event time; so a replay after a crash writes again only what it
//!   wrote, and an older row never overwrites a newer one. A change stream's delete marks
//!   the key's row `_deleted` at the delete's version (a tombstone, so a replayed older
//!   insert cannot bring it back; the rest of the row is kept, as a delete often carries
//!   only the key), or inserts a tombstone of the key alone if the table does not hold it
//!   (its other columns must then take null or have defaults); read live rows with `WHERE NOT _deleted`. An update whose unchanged
//!   TOASTed columns carry no value leaves the table's values of those columns.
//! - **Transactions.** The statements of one epoch run in one transaction, committed at the
//!   epoch's barrier: readers see whole epochs. A failure inside it fails the run (a
//!   transient one restarts it from the last checkpoint, whose replay writes the epoch
//!   again).
//! - **Checks at start.** The table's columns and types are read from the catalog; a missing
//!   column, a missing `_version`/`_deleted`, or a key without a primary key or unique index
//!   (which `ON CONFLICT` needs) stops the run naming it. `create_table` creates the table
//!   with the key as its primary key.
//!
//! Values are written as quoted literals cast to the column's type without its length limit
//! (`'…'::timestamptz`, `'…'::character varying`, so that a value too long for the column is
//! an error, not cut), over the connection of the Postgres source
//! (`sources::postgres::wire`).

pub mod config;
pub mod holdings;

pub use config::PostgresSinkConfig;

use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::cdc::rows as change_rows;
use crate::dataflow::{Guarantee, Sink};
use crate::error::{ErrorClass, RunError};
use crate::runtime::retry::Backoff;
use crate::sinks::keyed::{Version, VersionSource, row_to_write};
use crate::sources::postgres::wire::{
    ConnectOptions, Connection, PgError, quote_ident, quote_literal,
};
use crate::types::{Batch, DataType, Epoch, SchemaRef, Value};

/// The version column.
pub const VERSION_COLUMN: &str = "_version";
/// The tombstone flag of tables written from a change stream.
pub const DELETED_COLUMN: &str = "_deleted";

/// What a Postgres sink instance writes, and how.
#[derive(Clone, Debug)]
pub struct PostgresSinkSpec {
    pub node: String,
    pub connect: ConnectOptions,
    pub schema_name: String,
    pub table: String,
    /// The input's schema (change rows for a change stream).
    pub schema: SchemaRef,
    /// The input columns written, in order.
    pub columns: Vec<usize>,
    /// The output key: the table's primary key or a unique index.
    pub key: Vec<usize>,
    pub version: VersionSource,
    pub create_table: bool,
    pub batch_rows: usize,
    /// How long connecting is retried at start.
    pub retry_for: Duration,
}

/// One row waiting for its statement: its literal tuple (for a delete: the key's values
/// and the version) and version.
struct Pending {
    tuple: String,
    version: i64,
    delete: bool,
}

pub struct PostgresSink {
    spec: PostgresSinkSpec,
    conn: Option<Connection>,
    /// `"schema"."table"`.
    qualified: String,
    /// Per written column, the type its literals are cast to.
    casts: Vec<String>,
    deletes: bool,
    in_transaction: bool,
    pending: Vec<Pending>,
    /// Key literal → index in `pending`.
    by_key: AHashMap<String, usize>,
    statement_head: String,
    statement_tail: String,
    /// The written columns' names (quoted), `_version` and `_deleted` included.
    column_names: Vec<String>,
    /// The key's names (quoted).
    key_names: Vec<String>,
    truncates_seen: u64,
}

/// The columns of table `qualified` (quoted `schema.table`) and their types without length
/// limits (`character varying`), in order; none if there is no such table.
pub(crate) fn table_columns(
    conn: &mut Connection,
    qualified: &str,
) -> Result<Vec<(String, String)>, PgError> {
    let result = conn.query(&format!(
        "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a \
         WHERE a.attrelid = to_regclass({}) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
        quote_literal(qualified)
    ))?;
    Ok(result
        .first()
        .map(|r| {
            r.rows
                .iter()
                .map(|row| {
                    (
                        row[0].clone().unwrap_or_default(),
                        row[1].clone().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The Postgres type a created table gives a column of `ty`.
pub fn column_type(ty: DataType) -> &'static str {
    match ty {
        DataType::String | DataType::Null => "text",
        DataType::Int => "bigint",
        DataType::Float => "double precision",
        DataType::Bool => "boolean",
        DataType::Decimal => "numeric",
        DataType::Timestamp => "timestamptz",
        DataType::Date => "date",
        DataType::Bytes => "bytea",
        DataType::Json => "jsonb",
    }
}

/// `value` as an SQL literal (without its cast).
fn literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("NULL"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // Numbers quoted: a cast binds tighter than a unary minus (`-5::text` fails).
        Value::Int(n) => {
            out.push('\'');
            out.push_str(itoa::Buffer::new().format(*n));
            out.push('\'');
        }
        Value::Float(f) if f.is_nan() => out.push_str("'NaN'"),
        Value::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 {
            "'Infinity'"
        } else {
            "'-Infinity'"
        }),
        Value::Float(f) => {
            out.push('\'');
            out.push_str(ryu::Buffer::new().format_finite(*f));
            out.push('\'');
        }
        Value::Decimal(d) => {
            out.push('\'');
            out.push_str(&d.to_string());
            out.push('\'');
        }
        Value::Str(s) => out.push_str(&quote_literal(s)),
        Value::Json(text) => out.push_str(&quote_literal(text)),
        Value::Timestamp(_) | Value::Date(_) => {
            let mut text = Vec::new();
            crate::format::json::write_value(value, &mut text);
            // write_value quotes with `"`; SQL wants `'` (the text has neither).
            out.push('\'');
            out.push_str(String::from_utf8_lossy(&text).trim_matches('"'));
            out.push('\'');
        }
        Value::Bytes(b) => {
            out.push_str("'\\x");
            for byte in b.iter() {
                out.push_str(&format!("{byte:02x}"));
            }
            out.push('\'');
        }
    }
}

impl PostgresSink {
    pub fn new(spec: PostgresSinkSpec) -> PostgresSink {
        let qualified = format!(
            "{}.{}",
            quote_ident(&spec.schema_name),
            quote_ident(&spec.table)
        );
        PostgresSink {
            spec,
            conn: None,
            qualified,
            casts: Vec::new(),
            deletes: false,
            in_transaction: false,
            pending: Vec::new(),
            by_key: AHashMap::new(),
            statement_head: String::new(),
            statement_tail: String::new(),
            column_names: Vec::new(),
            key_names: Vec::new(),
            truncates_seen: 0,
        }
    }

    fn error(&self, e: PgError) -> RunError {
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

    fn definite(&self, message: String) -> RunError {
        RunError::External {
            component: self.spec.node.clone(),
            message: format!("table {}: {message}", self.qualified),
            class: ErrorClass::Definite,
        }
    }

    fn run(
        &mut self,
        sql: &str,
    ) -> Result<Vec<crate::sources::postgres::wire::QueryResult>, RunError> {
        let conn = self
            .conn
            .as_mut()
            .expect("connected in recover before any statement");
        match conn.query(sql) {
            Ok(r) => Ok(r),
            Err(e) => {
                // The transaction (if any) is gone with the error: the run restarts.
                self.conn = None;
                self.in_transaction = false;
                Err(self.error(e))
            }
        }
    }

    /// Connects (retrying transient failures for `retry_for`), creates the table if asked,
    /// and checks it.
    fn connect(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let conn = loop {
            match Connection::connect(&self.spec.connect, false) {
                Ok(c) => break c,
                Err(e) if e.is_transient() && started.elapsed() < self.spec.retry_for => {
                    if backoff.attempts() == 0 {
                        tracing::warn!(sink = %self.spec.node, error = %e, "cannot connect to Postgres; retrying for up to {:?}", self.spec.retry_for);
                    }
                    std::thread::sleep(backoff.next_delay());
                }
                Err(e) => return Err(self.error(e)),
            }
        };
        self.conn = Some(conn);
        self.in_transaction = false;
        let change = self.spec.version == VersionSource::Change;
        if self.spec.create_table {
            let sql = self.create_table_sql(change);
            self.run(&sql)?;
        }
        self.check_table(change)
    }

    fn create_table_sql(&self, change: bool) -> String {
        let spec = &self.spec;
        let mut defs: Vec<String> = spec
            .columns
            .iter()
            .map(|&c| {
                let f = spec.schema.field(c);
                let not_null = if spec.key.contains(&c) {
                    " NOT NULL"
                } else {
                    ""
                };
                format!(
                    "{} {}{not_null}",
                    quote_ident(&f.name),
                    column_type(f.data_type)
                )
            })
            .collect();
        defs.push(format!("{} bigint NOT NULL", quote_ident(VERSION_COLUMN)));
        if change {
            defs.push(format!(
                "{} boolean NOT NULL DEFAULT false",
                quote_ident(DELETED_COLUMN)
            ));
        }
        let key: Vec<String> = spec
            .key
            .iter()
            .map(|&k| quote_ident(&spec.schema.field(k).name))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
            self.qualified,
            defs.join(", "),
            key.join(", ")
        )
    }

    /// Reads the table's columns and unique indexes; prepares the statement's parts.
    fn check_table(&mut self, change: bool) -> Result<(), RunError> {
        let relation = quote_literal(&self.qualified);
        let conn = self
            .conn
            .as_mut()
            .expect("connected before the table is checked");
        let columns = match table_columns(conn, &self.qualified) {
            Ok(c) => c,
            Err(e) => {
                self.conn = None;
                return Err(self.error(e));
            }
        };
        if columns.is_empty() {
            return Err(
                self.definite("no such table (set `create_table: true` to create it)".to_string())
            );
        }
        let find = |name: &str| columns.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        match find(VERSION_COLUMN).map(String::as_str) {
            Some("bigint") => {}
            Some(other) => {
                return Err(self.definite(format!(
                    "column `{VERSION_COLUMN}` is {other}; the sink writes a bigint version"
                )));
            }
            None => {
                return Err(self.definite(format!(
                    "has no `{VERSION_COLUMN}` column: the sink writes a version per row \
                     (`{VERSION_COLUMN} bigint NOT NULL`)"
                )));
            }
        }
        self.deletes = find(DELETED_COLUMN).is_some();
        if change && !self.deletes {
            return Err(self.definite(format!(
                "has no `{DELETED_COLUMN}` column: rows of a change stream carry a delete \
                 flag (`{DELETED_COLUMN} boolean NOT NULL DEFAULT false`)"
            )));
        }
        let mut casts = Vec::new();
        for &c in &self.spec.columns {
            let name = &self.spec.schema.field(c).name;
            match find(name) {
                Some(ty) => casts.push(ty.clone()),
                None => {
                    return Err(
                        self.definite(format!("has no column `{name}`, which the sink writes"))
                    );
                }
            }
        }
        self.casts = casts;
        // ON CONFLICT needs a unique index on exactly the key.
        let key_names: Vec<String> = self
            .spec
            .key
            .iter()
            .map(|&k| self.spec.schema.field(k).name.to_string())
            .collect();
        let indexes = self.run(&format!(
            "SELECT array_to_string(ARRAY(SELECT a.attname FROM unnest(i.indkey) k \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k ORDER BY a.attname), ',') \
             FROM pg_index i WHERE i.indrelid = to_regclass({relation}) AND i.indisunique \
             AND i.indimmediate AND i.indpred IS NULL AND NOT (0 = ANY (i.indkey::int2[]))"
        ))?;
        let mut wanted = key_names.clone();
        wanted.sort();
        let wanted = wanted.join(",");
        let unique = indexes
            .first()
            .is_some_and(|r| r.rows.iter().any(|row| row[0].as_deref() == Some(&wanted)));
        if !unique {
            return Err(self.definite(format!(
                "needs a primary key or unique index on ({}) for its upserts",
                key_names.join(", ")
            )));
        }
        let mut names: Vec<String> = self
            .spec
            .columns
            .iter()
            .map(|&c| quote_ident(&self.spec.schema.field(c).name))
            .collect();
        names.push(quote_ident(VERSION_COLUMN));
        if self.deletes {
            names.push(quote_ident(DELETED_COLUMN));
        }
        let key: Vec<String> = key_names.iter().map(|k| quote_ident(k)).collect();
        self.statement_head = format!(
            "INSERT INTO {} AS target ({}) VALUES ",
            self.qualified,
            names.join(", ")
        );
        self.column_names = names;
        self.key_names = key;
        self.statement_tail = self.upsert_tail();
        Ok(())
    }

    /// `ON CONFLICT … DO UPDATE` of every column but the key, when the row's version is not
    /// older than the table's (equal versions: the later write wins, as in ClickHouse).
    fn upsert_tail(&self) -> String {
        let updates: Vec<String> = self
            .column_names
            .iter()
            .filter(|n| !self.key_names.contains(n))
            .map(|n| format!("{n} = EXCLUDED.{n}"))
            .collect();
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {} WHERE target.{v} <= EXCLUDED.{v}",
            self.key_names.join(", "),
            updates.join(", "),
            v = quote_ident(VERSION_COLUMN)
        )
    }

    fn begin(&mut self) -> Result<(), RunError> {
        if !self.in_transaction {
            self.run("BEGIN")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Runs the pending upserts and deletes (in the epoch's transaction); a key is pending
    /// once, so their order does not matter.
    fn execute(&mut self) -> Result<(), RunError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.begin()?;
        let pending = std::mem::take(&mut self.pending);
        self.by_key.clear();
        let rows = pending.len() as u64;
        let (deletes, upserts): (Vec<Pending>, Vec<Pending>) =
            pending.into_iter().partition(|p| p.delete);
        if !upserts.is_empty() {
            let mut sql = self.statement_head.clone();
            for (i, p) in upserts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&p.tuple);
            }
            sql.push_str(&self.statement_tail);
            self.run(&sql)?;
        }
        if !deletes.is_empty() {
            // A delete marks the key's row as a tombstone at its version (the rest of a
            // deleted row is often unknown — only its key travels — so it is kept), or, the
            // key not there (its insert may come later on another path), inserts a tombstone
            // of the key alone, so that an older insert cannot bring it back.
            let names: Vec<&String> = self.key_names.iter().collect();
            let on: Vec<String> = names
                .iter()
                .map(|k| format!("target.{k} = d.{k}"))
                .collect();
            let tuples: Vec<&str> = deletes.iter().map(|p| p.tuple.as_str()).collect();
            let columns = names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let values = format!(
                "(VALUES {}) AS d({columns}, {v})",
                tuples.join(", "),
                v = quote_ident(VERSION_COLUMN)
            );
            let sql = format!(
                "UPDATE {q} AS target SET {del} = true, {v} = d.{v} FROM {values} \
                 WHERE {on} AND target.{v} <= d.{v}; \
                 INSERT INTO {q} ({columns}, {v}, {del}) SELECT {d_columns}, d.{v}, true FROM {values} \
                 WHERE NOT EXISTS (SELECT 1 FROM {q} AS target WHERE {on}) ON CONFLICT DO NOTHING",
                q = self.qualified,
                on = on.join(" AND "),
                d_columns = names
                    .iter()
                    .map(|k| format!("d.{k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                del = quote_ident(DELETED_COLUMN),
                v = quote_ident(VERSION_COLUMN)
            );
            self.run(&sql)?;
        }
        metrics::counter!("watershed_sink_rows_total", "sink" => self.spec.node.clone())
            .increment(rows);
        Ok(())
    }

    /// Upserts `row` keeping the table's values of `keep` (unchanged TOASTed columns, which
    /// the change does not carry): an update of the key's row if it is not newer, else — the
    /// key not there — an insert with those columns null.
    fn upsert_keeping(
        &mut self,
        row: &[Value],
        version: i64,
        keep: &[String],
    ) -> Result<(), RunError> {
        let schema = &self.spec.schema;
        let mut sets = Vec::new();
        let mut values = Vec::new();
        let mut names = Vec::new();
        let mut key = Vec::new();
        for (j, &c) in self.spec.columns.iter().enumerate() {
            let name = &schema.field(c).name;
            let mut lit = String::new();
            literal(&row[c], &mut lit);
            lit.push_str("::");
            lit.push_str(&self.casts[j]);
            let q = quote_ident(name);
            if self.spec.key.contains(&c) {
                key.push(format!("target.{q} = {lit}"));
            } else if !keep.iter().any(|k| k == name.as_str()) {
                sets.push(format!("{q} = {lit}"));
            }
            names.push(q);
            values.push(if keep.iter().any(|k| k == name.as_str()) {
                format!("NULL::{}", self.casts[j])
            } else {
                lit
            });
        }
        let v = quote_ident(VERSION_COLUMN);
        sets.push(format!("{v} = {version}"));
        names.push(v.clone());
        values.push(version.to_string());
        if self.deletes {
            let d = quote_ident(DELETED_COLUMN);
            sets.push(format!("{d} = false"));
            names.push(d);
            values.push("false".into());
        }
        let key = key.join(" AND ");
        self.run(&format!(
            "UPDATE {q} AS target SET {} WHERE {key} AND target.{v} <= {version}",
            sets.join(", "),
            q = self.qualified
        ))?;
        self.run(&format!(
            "INSERT INTO {q} ({}) SELECT {} WHERE NOT EXISTS (SELECT 1 FROM {q} AS target WHERE {key})",
            names.join(", "),
            values.join(", "),
            q = self.qualified
        ))?;
        Ok(())
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
        let version = match version {
            Version::Signed(v) => v,
            Version::Change(v) => i64::try_from(v)
                .map_err(|_| self.definite(format!("version {v} does not fit a bigint")))?,
        };
        let is_delete = deleted == Some(true);
        let mut key = String::new();
        let mut key_values = String::from("(");
        for (j, &k) in self.spec.key.iter().enumerate() {
            if row[k].is_null() {
                return Err(self.definite(format!(
                    "a row has no value for key column `{}`; filter such rows out before the sink",
                    self.spec.schema.field(k).name
                )));
            }
            literal(&row[k], &mut key);
            key.push('\u{1}');
            if j > 0 {
                key_values.push_str(", ");
            }
            literal(&row[k], &mut key_values);
            key_values.push_str("::");
            let at = self.spec.columns.iter().position(|&c| c == k).unwrap_or(0);
            key_values.push_str(&self.casts[at]);
        }
        let tuple = if is_delete {
            format!("{key_values}, {version})")
        } else {
            let mut tuple = String::from("(");
            for (j, &c) in self.spec.columns.iter().enumerate() {
                if j > 0 {
                    tuple.push_str(", ");
                }
                literal(&row[c], &mut tuple);
                tuple.push_str("::");
                tuple.push_str(&self.casts[j]);
            }
            if !self.spec.columns.is_empty() {
                tuple.push_str(", ");
            }
            tuple.push_str(itoa::Buffer::new().format(version));
            if let Some(d) = deleted {
                tuple.push_str(if d { ", true" } else { ", false" });
            }
            tuple.push(')');
            tuple
        };
        // Unchanged TOASTed columns of an update carry no value: the table keeps its own.
        // Such a row is upserted at once, alone, after what is pending (in order).
        let unavailable = if self.spec.version == VersionSource::Change && !is_delete {
            change_rows::row_unavailable(row)
        } else {
            Vec::new()
        };
        if !unavailable.is_empty() {
            self.execute()?;
            self.begin()?;
            self.upsert_keeping(row, version, &unavailable)?;
            metrics::counter!("watershed_sink_rows_total", "sink" => self.spec.node.clone())
                .increment(1);
            return Ok(());
        }
        // A key once per statement (ON CONFLICT cannot touch a row twice): its highest
        // version, the later row among equals.
        let pending = Pending {
            tuple,
            version,
            delete: is_delete,
        };
        match self.by_key.get(&key) {
            Some(&at) if self.pending[at].version > version => {}
            Some(&at) => self.pending[at] = pending,
            None => {
                self.by_key.insert(key, self.pending.len());
                self.pending.push(pending);
            }
        }
        Ok(())
    }
}

/// `validate --connect` of a Postgres sink: the server answers, and its table takes every
/// column the sink writes with a unique index on the key (or does not exist yet, and this
/// user may create it in its schema). Creates nothing.
pub fn preflight(spec: &PostgresSinkSpec) -> Vec<crate::config::component::Check> {
    use crate::config::component::Check;
    let mut checks = Vec::new();
    let where_ = format!(
        "Postgres at {}:{} (database {}, user {})",
        spec.connect.host, spec.connect.port, spec.connect.database, spec.connect.user
    );
    let mut conn = match Connection::connect(&spec.connect, false) {
        Ok(c) => {
            checks.push(Check {
                ok: true,
                line: format!("{where_} answers"),
            });
            c
        }
        Err(e) => {
            checks.push(Check {
                ok: false,
                line: format!("{where_}: {e}"),
            });
            return checks;
        }
    };
    let mut probe = spec.clone();
    probe.retry_for = Duration::ZERO;
    probe.create_table = false;
    let table = format!("{}.{}", spec.schema_name, spec.table);
    let mut sink = PostgresSink::new(probe);
    checks.push(match sink.connect() {
        Ok(()) => Check {
            ok: true,
            line: format!(
                "table {table} takes every column the sink writes, with a unique index on its key"
            ),
        },
        Err(e) if spec.create_table && e.to_string().contains("no such table") => {
            let may = conn
                .query(&format!(
                    "SELECT has_schema_privilege({}, 'CREATE')",
                    quote_literal(&spec.schema_name)
                ))
                .ok()
                .and_then(|r| {
                    r.first()
                        .and_then(|r| r.get(0, "has_schema_privilege").map(|v| v == "t"))
                })
                .unwrap_or(false);
            Check {
                ok: may,
                line: if may {
                    format!("table {table} does not exist yet: the sink creates it")
                } else {
                    format!(
                        "table {table} does not exist and user {} may not create tables in \
                         schema {}: GRANT CREATE ON SCHEMA {} TO {}",
                        spec.connect.user, spec.schema_name, spec.schema_name, spec.connect.user
                    )
                },
            }
        }
        Err(e) => Check::failed(e),
    });
    checks
}

impl Sink for PostgresSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::Idempotent
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        for i in 0..batch.len() {
            self.encode(batch, i)?;
            if self.pending.len() >= self.spec.batch_rows {
                self.execute()?;
            }
        }
        Ok(())
    }

    fn pre_commit(&mut self, _epoch: Epoch) -> Result<Vec<u8>, RunError> {
        self.execute()?;
        if self.in_transaction {
            self.run("COMMIT")?;
            self.in_transaction = false;
        }
        Ok(Vec::new())
    }

    fn commit(&mut self, _epoch: Epoch) -> Result<(), RunError> {
        Ok(())
    }

    fn recover(&mut self, _state: Option<&[u8]>) -> Result<(), RunError> {
        // An epoch cut short was rolled back with its connection; the replay writes it again.
        self.pending.clear();
        self.by_key.clear();
        self.connect()
    }

    fn finish(&mut self) -> Result<(), RunError> {
        self.pre_commit(crate::runtime::task::FINAL_EPOCH)?;
        self.conn = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value) -> String {
        let mut s = String::new();
        literal(&v, &mut s);
        s
    }

    #[test]
    fn values_become_literals_their_casts_read() {
        assert_eq!(lit(Value::from("it's")), "'it''s'");
        assert_eq!(lit(Value::Float(f64::NAN)), "'NaN'");
        assert_eq!(lit(Value::Float(f64::NEG_INFINITY)), "'-Infinity'");
        assert_eq!(
            lit(Value::Timestamp(1_000_001)),
            "'1970-01-01T00:00:01.000001Z'"
        );
        assert_eq!(lit(Value::Date(1)), "'1970-01-02'");
        assert_eq!(lit(Value::Bytes(vec![0, 255].into())), "'\\x00ff'");
        assert_eq!(lit(Value::Null), "NULL");
        assert_eq!(
            lit(Value::Int(-5)),
            "'-5'",
            "a cast binds tighter than a minus"
        );
        assert_eq!(
            lit(Value::Json("{\"a\":\"b'c\"}".into())),
            "'{\"a\":\"b''c\"}'"
        );
    }
}
