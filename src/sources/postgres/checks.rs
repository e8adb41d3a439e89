//! What the Postgres source needs of the server, checked and explained: `wal_level`, each
//! table (exists, has a key or replica identity, has the configured columns), the publication, the REPLICATION role and
//! the replication slot. The source runs these checks at start (and then creates what is
//! missing); `preflight` runs them read-only for `watershed validate --connect`, creating
//! nothing, so that an operator learns what to fix before the first run.
//!
//! A check fails either on the conversation (`Fault::Pg`, possibly transient) or with a
//! one-line explanation of what to do (`Fault::Explained`).

use super::source::PostgresSpec;
use super::wire::{Connection, Lsn, PgError, quote_ident, quote_literal};
use crate::cdc::stream::CdcTable;
use crate::config::component::Check;

/// Why a check did not pass.
#[derive(Debug)]
pub enum Fault {
    Pg(PgError),
    Explained(String),
}

impl From<PgError> for Fault {
    fn from(e: PgError) -> Fault {
        Fault::Pg(e)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Pg(e) => write!(f, "postgres: {e}"),
            Fault::Explained(m) => f.write_str(m),
        }
    }
}

fn explained(message: String) -> Fault {
    Fault::Explained(message)
}

/// `wal_level` must be `logical`.
pub fn wal_level(sql: &mut Connection) -> Result<(), Fault> {
    let level = sql
        .query("SHOW wal_level")?
        .first()
        .and_then(|r| r.get(0, "wal_level").map(str::to_string))
        .unwrap_or_default();
    if level != "logical" {
        return Err(explained(format!(
            "postgres: wal_level is `{level}`; logical replication needs `wal_level = logical` \
             in postgresql.conf (and a server restart)"
        )));
    }
    Ok(())
}

/// The table exists and its updates and deletes name their row (a primary key, or a replica
/// identity other than `nothing`).
pub fn table(sql: &mut Connection, t: &CdcTable) -> Result<(), Fault> {
    let found = sql.query(&format!(
        "SELECT c.relreplident::text AS identity, \
         EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS pk \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p')",
        quote_literal(&t.id.schema),
        quote_literal(&t.id.table)
    ))?;
    let r = &found[0];
    if r.rows.is_empty() {
        return Err(explained(format!(
            "postgres: table {} (port `{}`) does not exist",
            t.id, t.port
        )));
    }
    let identity = r.get(0, "identity").unwrap_or("d");
    let pk = r.get(0, "pk") == Some("t");
    if identity == "n" || (identity == "d" && !pk) {
        return Err(explained(format!(
            "postgres: table {} has no primary key and no replica identity, so its updates and \
             deletes cannot be read: add a primary key, or ALTER TABLE {} REPLICA IDENTITY FULL",
            t.id, t.id
        )));
    }
    unique_key(sql, t)
}

/// The configured key names one row: it is the primary key, or the columns of a unique index
/// (no expression, no predicate) that are all NOT NULL. The snapshot reads in key order and
/// resumes after the last key read, and changes are applied by key: a key two rows share
/// would lose rows.
fn unique_key(sql: &mut Connection, t: &CdcTable) -> Result<(), Fault> {
    let mut key: Vec<String> = t.config.key_columns.iter().map(|k| k.to_string()).collect();
    if key.is_empty() {
        return Ok(());
    }
    key.sort();
    let array = format!(
        "ARRAY[{}]::text[]",
        key.iter()
            .map(|k| quote_literal(k))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let relation = quote_literal(&format!(
        "{}.{}",
        quote_ident(&t.id.schema),
        quote_ident(&t.id.table)
    ));
    let found = sql.query(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = {relation}::regclass \
           AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
           AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
                WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = {array} \
           AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid \
                AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull))::text AS unique"
    ))?;
    if found[0].get(0, "unique") != Some("true") {
        return Err(explained(format!(
            "postgres: the key [{}] of table {} (port `{}`) is neither its primary key nor a \
             unique index of NOT NULL columns: rows sharing a key would be lost; name the \
             primary key in `key`, or add such an index",
            t.config.key_columns.join(", "),
            t.id,
            t.port
        )));
    }
    Ok(())
}

/// Every configured column is a column of the table (a run reads one it lacks as null: a
/// misspelt name would go unnoticed).
pub fn columns(sql: &mut Connection, t: &CdcTable) -> Result<(), Fault> {
    let found = sql.query(&format!(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped",
        quote_literal(&t.id.schema),
        quote_literal(&t.id.table)
    ))?;
    let have: Vec<&str> = found[0]
        .rows
        .iter()
        .filter_map(|r| r[0].as_deref())
        .collect();
    let missing: Vec<&str> = t
        .config
        .schema
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .filter(|name| !have.contains(name))
        .collect();
    if !missing.is_empty() {
        return Err(explained(format!(
            "postgres: table {} has no column {} (in `tables.{}.columns`): a run would read it \
             as null; correct the name, or drop it from the columns",
            t.id,
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            t.port
        )));
    }
    Ok(())
}

/// `"schema"."table"` of each table.
pub fn relations(tables: &[CdcTable]) -> Vec<String> {
    tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.id.schema), quote_ident(&t.id.table)))
        .collect()
}

/// Whether the publication exists; when it does, it must publish every table.
pub fn publication_exists(
    sql: &mut Connection,
    publication: &str,
    tables: &[CdcTable],
) -> Result<bool, Fault> {
    let exists = sql.query(&format!(
        "SELECT puballtables::text AS all FROM pg_publication WHERE pubname = {}",
        quote_literal(publication)
    ))?;
    if exists[0].rows.is_empty() {
        return Ok(false);
    }
    if exists[0].get(0, "all") == Some("true") {
        return Ok(true);
    }
    let published = sql.query(&format!(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {}",
        quote_literal(publication)
    ))?;
    let have: Vec<(String, String)> = published[0]
        .rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !have.contains(&(t.id.schema.clone(), t.id.table.clone())))
        .map(|t| t.id.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(explained(format!(
            "postgres: publication `{publication}` does not publish {}: ALTER PUBLICATION \
             {publication} ADD TABLE {}",
            missing.join(", "),
            missing.join(", ")
        )));
    }
    Ok(true)
}

/// The explanation when this user may not create the publication.
pub fn cannot_create_publication(publication: &str, tables: &[CdcTable], why: &str) -> Fault {
    explained(format!(
        "postgres: publication `{publication}` does not exist and this user may not create it \
         ({why}); create it as the tables' owner: CREATE PUBLICATION {publication} FOR TABLE {}",
        relations(tables).join(", ")
    ))
}

/// Whether this user could create the publication: CREATE on the database and ownership of
/// every table (or superuser). Asked of the catalog, creating nothing.
pub fn may_create_publication(
    sql: &mut Connection,
    publication: &str,
    tables: &[CdcTable],
) -> Result<(), Fault> {
    let r = sql.query(
        "SELECT (rolsuper OR has_database_privilege(current_database(), 'CREATE'))::text AS may \
         FROM pg_roles WHERE rolname = current_user",
    )?;
    if r[0].get(0, "may") != Some("true") {
        return Err(cannot_create_publication(
            publication,
            tables,
            "no CREATE privilege on the database",
        ));
    }
    for t in tables {
        let owned = sql.query(&format!(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
             OR pg_has_role(c.relowner, 'USAGE') AS owned \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {}",
            quote_literal(&t.id.schema),
            quote_literal(&t.id.table)
        ))?;
        // A table that does not exist has its own line.
        if !owned[0].rows.is_empty() && owned[0].get(0, "owned") != Some("t") {
            return Err(cannot_create_publication(
                publication,
                tables,
                &format!("not the owner of {}", t.id),
            ));
        }
    }
    Ok(())
}

/// The explanation when the user may not open a replication connection.
pub fn may_not_replicate(user: &str, e: &PgError) -> Fault {
    explained(format!(
        "postgres: user `{user}` may not replicate ({e}): ALTER ROLE {user} REPLICATION (and \
         allow it in pg_hba.conf)"
    ))
}

/// Whether an error of opening a replication connection is the role's or pg_hba's refusal.
pub fn is_refusal(e: &PgError) -> bool {
    matches!(e.code(), Some("42501") | Some("28000"))
}

/// A replication slot as the catalog shows it.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    Missing,
    Present {
        confirmed: Lsn,
        /// The process streaming from it, if any.
        active_pid: Option<i32>,
    },
}

/// The slot of this database named `slot`; one of another plugin is an error.
pub fn slot(sql: &mut Connection, slot: &str) -> Result<Slot, Fault> {
    let found = sql.query(&format!(
        "SELECT plugin, confirmed_flush_lsn::text AS confirmed, active_pid::text AS pid \
         FROM pg_replication_slots WHERE slot_name = {} AND database = current_database()",
        quote_literal(slot)
    ))?;
    let r = &found[0];
    let Some(plugin) = r.get(0, "plugin") else {
        return Ok(Slot::Missing);
    };
    if plugin != "pgoutput" {
        return Err(explained(format!(
            "postgres: replication slot `{slot}` uses the `{plugin}` plugin, not pgoutput: give \
             this source a slot of its own"
        )));
    }
    let confirmed = r
        .get(0, "confirmed")
        .unwrap_or("0/0")
        .parse()
        .map_err(Fault::Pg)?;
    Ok(Slot::Present {
        confirmed,
        active_pid: r.get(0, "pid").and_then(|p| p.parse().ok()),
    })
}

/// Every check, read-only: connects (once as SQL, once for replication) and reads the
/// catalog; creates no publication or slot.
pub fn preflight(spec: &PostgresSpec) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut note = |result: Result<String, Fault>| {
        checks.push(match result {
            Ok(line) => Check { ok: true, line },
            Err(f) => Check {
                ok: false,
                line: f.to_string(),
            },
        })
    };
    let c = &spec.connect;
    let mut sql = match Connection::connect(c, false) {
        Ok(sql) => sql,
        Err(e) => {
            note(Err(Fault::Pg(e)));
            return checks;
        }
    };
    note(Ok(format!(
        "connected to {}:{} database {} as {}",
        c.host, c.port, c.database, c.user
    )));
    note(wal_level(&mut sql).map(|()| "wal_level is logical".into()));
    for t in &spec.tables {
        note(
            table(&mut sql, t)
                .and_then(|()| columns(&mut sql, t))
                .map(|()| format!("table {} can be captured", t.id)),
        );
    }
    let p = &spec.publication;
    note(match publication_exists(&mut sql, p, &spec.tables) {
        Ok(true) => Ok(format!("publication `{p}` publishes every table")),
        Ok(false) => may_create_publication(&mut sql, p, &spec.tables)
            .map(|()| format!("publication `{p}` will be created by the first run")),
        Err(e) => Err(e),
    });
    note(match Connection::connect(c, true) {
        Ok(mut repl) => repl
            .query("IDENTIFY_SYSTEM")
            .map(|_| format!("user {} may replicate", c.user))
            .map_err(Fault::Pg),
        Err(e) if is_refusal(&e) => Err(may_not_replicate(&c.user, &e)),
        Err(e) => Err(Fault::Pg(e)),
    });
    let s = &spec.slot;
    note(match slot(&mut sql, s) {
        Ok(Slot::Present {
            active_pid: Some(pid),
            ..
        }) => Err(explained(format!(
            "postgres: replication slot `{s}` is in use by process {pid} (another pipeline or \
             a running instance of this one?): give this source its own `slot`, or stop the \
             other reader"
        ))),
        Ok(Slot::Present { confirmed, .. }) => Ok(format!(
            "replication slot `{s}` exists (confirmed up to {confirmed}): a run without a \
             checkpoint streams from there"
        )),
        Ok(Slot::Missing) => free_slot(&mut sql)
            .map(|()| format!("replication slot `{s}` will be created by the first run")),
        Err(e) => Err(e),
    });
    checks
}

/// A slot can be created: fewer slots than `max_replication_slots` exist.
fn free_slot(sql: &mut Connection) -> Result<(), Fault> {
    let r = sql.query(
        "SELECT (SELECT count(*) FROM pg_replication_slots)::text AS used, \
         current_setting('max_replication_slots') AS max",
    )?;
    let used: u64 = r[0]
        .get(0, "used")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let max: u64 = r[0].get(0, "max").and_then(|v| v.parse().ok()).unwrap_or(0);
    if used >= max {
        return Err(explained(format!(
            "postgres: all {max} replication slots are taken: raise max_replication_slots (a \
             server restart) or drop a slot nobody reads"
        )));
    }
    Ok(())
}
/// The live keys of table port `port` of `spec`, read from the table itself (for `watershed
/// reconcile`): each key's columns as text, joined as reconcile joins them.
pub fn current_keys(
    spec: &PostgresSpec,
    port: &str,
    key: &[String],
) -> Result<crate::reconcile::KeyVersions, String> {
    let table = spec
        .tables
        .iter()
        .find(|t| t.port == port)
        .ok_or_else(|| format!("the source has no table `{port}`"))?;
    let mut conn = Connection::connect(&spec.connect, false).map_err(|e| e.to_string())?;
    // Keys as `reconcile::expected::key_text` renders them: timestamps in microseconds.
    let schema = &table.config.schema;
    let columns: Vec<String> = key
        .iter()
        .map(|k| {
            let q = quote_ident(k);
            match schema.index_of(k).map(|i| schema.field(i).data_type) {
                Some(crate::types::DataType::Timestamp) => {
                    format!("(extract(epoch from {q}) * 1000000)::bigint::text")
                }
                _ => format!("{q}::text"),
            }
        })
        .collect();
    let result = conn
        .query(&format!(
            "SELECT {} FROM {}.{}",
            columns.join(", "),
            quote_ident(&table.id.schema),
            quote_ident(&table.id.table)
        ))
        .map_err(|e| e.to_string())?;
    let separator = crate::reconcile::KEY_SEPARATOR.to_string();
    Ok(result
        .first()
        .map(|r| {
            r.rows
                .iter()
                .map(|row| {
                    let parts: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("")).collect();
                    (parts.join(&separator), None)
                })
                .collect()
        })
        .unwrap_or_default())
}
