//! The `postgres:` block of a source: where the database is and as whom to connect (the
//! password from the environment: `password: ${PGPASSWORD}`), the replication `slot` and the
//! `publication` (one each for all the source's tables), whether to read a `snapshot` first,
//! its `chunk_rows` and `snapshot_workers`, and the `heartbeat_interval`. The tables are the source's `tables:`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::source::{PostgresSource, PostgresSpec};
use super::wire::{ConnectOptions, TlsMode};
use crate::config::component::{BuiltSource, SourceConfig, SourceContext};
use crate::config::yaml::S;
use crate::dataflow::Source;
use crate::runtime::plan::SourceFactory;
use crate::sources::cdc::{ChangeTables, change_tables_with_time_column, main_schema};
use crate::types::DataType;

/// A password, never shown by `Debug`.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Default `127.0.0.1`.
    pub host: Option<S<String>>,
    /// Default 5432.
    pub port: Option<S<u16>>,
    pub user: S<String>,
    /// From the environment: `${PGPASSWORD}`. Not needed for trust authentication.
    pub password: Option<S<Password>>,
    pub database: S<String>,
    /// The logical replication slot (created if missing). Default `watershed_<source>`.
    pub slot: Option<S<String>>,
    /// The publication of the tables (created if missing). Default: the slot's name.
    pub publication: Option<S<String>>,
    /// `initial` (default): read the tables before streaming; `never`: stream only.
    pub snapshot: Option<S<String>>,
    /// Rows per snapshot query (default 10000): what a crash during a snapshot re-reads.
    pub chunk_rows: Option<S<usize>>,
    /// Connections reading snapshot chunks at once (default 1; at most 16): a large table's
    /// snapshot split over several server processes and cores.
    pub snapshot_workers: Option<S<usize>>,
    /// How often to write a heartbeat message into the WAL (default 10s; `off`): keeps the
    /// slot moving and event time advancing when the tables are quiet.
    pub heartbeat_interval: Option<S<String>>,
    /// `caught_up`: read the changes committed before the run started (up to the server's
    /// WAL position then), and end — a bounded run, like a file. Default: stream on.
    pub until: Option<S<String>>,
    /// How long a read waits for the server when nothing is pending (default 10ms).
    pub poll_interval: Option<S<String>>,
    /// How long connecting may take (default 10s).
    pub connect_timeout: Option<S<String>>,
    /// `prefer` (default: TLS if the server offers it), `disable`, `require`, `verify-ca` or
    /// `verify-full`, as libpq's `sslmode`.
    pub tls: Option<S<String>>,
    /// The authority that signs the server's certificate, for `verify-ca`/`verify-full`
    /// (default: the system's).
    pub ca_file: Option<S<String>>,
    /// MiB of WAL the slot may retain before the source warns (default 1024): the pipeline
    /// is behind or its checkpoints do not complete, and the database's disk fills.
    pub max_retained_wal_mb: Option<S<u64>>,
}

/// Whether `name` is a valid replication slot name (lowercase letters, digits, underscore,
/// at most 63).
fn slot_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl SourceConfig for PostgresSourceConfig {
    fn build(&self, cx: &mut SourceContext<'_>) -> Option<BuiltSource> {
        let default_slot = format!(
            "watershed_{}",
            cx.name
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        );
        let slot = self
            .slot
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or(default_slot);
        if !slot_name_ok(&slot) {
            let at = self.slot.as_ref().map_or(cx.location, |s| s.referenced);
            cx.issue(
                &at,
                "slot",
                format!(
                    "`{slot}` is not a replication slot name: lowercase letters, digits and \
                     `_`, at most 63"
                ),
            );
        }
        let publication = self
            .publication
            .as_ref()
            .map(|p| p.value.clone())
            .unwrap_or_else(|| slot.clone());
        let snapshot = match self
            .snapshot
            .as_ref()
            .map(|s| (s.value.as_str(), s.referenced))
        {
            None | Some(("initial", _)) => true,
            Some(("never", _)) => false,
            Some((other, at)) => {
                cx.issue(
                    &at,
                    "snapshot",
                    format!("unknown snapshot mode `{other}`; use `initial` or `never`"),
                );
                true
            }
        };
        let chunk_rows = match &self.chunk_rows {
            Some(c) if c.value == 0 => {
                cx.issue(&c.referenced, "chunk_rows", "must be at least 1");
                1
            }
            Some(c) => c.value,
            None => 10_000,
        };
        let snapshot_workers = match &self.snapshot_workers {
            Some(w) if !(1..=16).contains(&w.value) => {
                cx.issue(&w.referenced, "snapshot_workers", "must be from 1 to 16");
                1
            }
            Some(w) => w.value,
            None => 1,
        };
        let until_caught_up = match &self.until {
            None => false,
            Some(u) if u.value == "caught_up" => true,
            Some(u) => {
                cx.issue(
                    &u.referenced,
                    "until",
                    format!(
                        "unknown `until` `{}`; use `caught_up` (or leave it out)",
                        u.value
                    ),
                );
                false
            }
        };
        let mut duration = |d: &Option<S<String>>, name: &str, default: Duration| {
            d.as_ref()
                .and_then(|d| cx.issues.duration(d, &format!("{}.{name}", cx.field)))
                .unwrap_or(default)
        };
        let heartbeat_interval = match &self.heartbeat_interval {
            Some(h) if h.value == "off" => None,
            h => Some(duration(h, "heartbeat_interval", Duration::from_secs(10))),
        };
        let poll_interval = duration(
            &self.poll_interval,
            "poll_interval",
            Duration::from_millis(10),
        );
        let connect_timeout = duration(
            &self.connect_timeout,
            "connect_timeout",
            Duration::from_secs(10),
        );
        let ChangeTables {
            tables,
            ports: extra_ports,
            keys: table_keys,
        } = change_tables_with_time_column(cx)?;
        // `event_time.field`: a timestamp column of every table.
        let event_time_column = cx.event_time_field.map(|f| (f.value.clone(), f.referenced));
        if let Some((column, at)) = &event_time_column {
            for t in &tables {
                let ok = t
                    .config
                    .schema
                    .index_of(column)
                    .is_some_and(|i| t.config.schema.field(i).data_type == DataType::Timestamp);
                if !ok {
                    let field = format!("{}.event_time.field", cx.field_prefix());
                    cx.issues.at(
                        at,
                        field,
                        format!(
                            "the event time of every table's changes is read from `{column}`: \
                             table `{}` needs it as a `timestamp` column",
                            t.port
                        ),
                    );
                }
            }
        }
        let event_time_column = event_time_column.map(|(c, _)| c);
        for (t, (_, key)) in tables.iter().zip(&table_keys) {
            if key.is_empty() {
                let at = cx.location;
                cx.issue(
                    &at,
                    &format!("tables.{}.key", t.port),
                    "the snapshot reads in key order: list the table's primary key columns",
                );
            }
        }
        let connect = connect_options(
            Server {
                host: &self.host,
                port: &self.port,
                user: &self.user,
                password: &self.password,
                database: &self.database,
                tls: &self.tls,
                ca_file: &self.ca_file,
            },
            cx.name,
            connect_timeout,
            cx.base_dir,
            &mut |at, f, m| cx.issue(at, f, m),
        );
        let max_retained_wal_mb = self.max_retained_wal_mb.as_ref().map_or(1024, |m| m.value);
        let node = cx.name.to_string();
        let spec = move |instance| PostgresSpec {
            node: node.clone(),
            connect: connect.clone(),
            slot: slot.clone(),
            publication: publication.clone(),
            tables: tables.clone(),
            snapshot,
            chunk_rows,
            snapshot_workers,
            poll_interval,
            status_interval: Duration::from_secs(10),
            heartbeat_interval,
            max_retained_wal: max_retained_wal_mb << 20,
            event_time_column: event_time_column.clone(),
            until_caught_up,
            instance,
        };
        let checked = spec(0);
        let current = spec(0);
        let factory: SourceFactory = Arc::new(move |instance, _parallelism| {
            let source = PostgresSource::new(spec(instance))?;
            Ok(Box::new(source) as Box<dyn Source>)
        });
        Some(BuiltSource {
            schema: main_schema(),
            extra_ports,
            table_keys,
            factory,
            dead_letters: true,
            main_is_view: true,
            preflight: Some(Arc::new(move || super::checks::preflight(&checked))),
            current_tables: Some(Arc::new(move |port, key| {
                super::checks::current_keys(&current, port, key)
            })),
            replayable: false,
        })
    }
}

/// The server settings of a Postgres block (source or sink), as written.
pub(crate) struct Server<'a> {
    pub host: &'a Option<S<String>>,
    pub port: &'a Option<S<u16>>,
    pub user: &'a S<String>,
    pub password: &'a Option<S<Password>>,
    pub database: &'a S<String>,
    pub tls: &'a Option<S<String>>,
    pub ca_file: &'a Option<S<String>>,
}

/// How component `node` connects to the server of `server` (host `127.0.0.1` and port 5432
/// unless set); mistakes go to `issue(at, field, message)`.
pub(crate) fn connect_options(
    server: Server<'_>,
    node: &str,
    connect_timeout: Duration,
    base_dir: &std::path::Path,
    issue: &mut dyn FnMut(&serde_saphyr::Location, &str, String),
) -> ConnectOptions {
    let (tls, ca_file) = tls_settings(server.tls, server.ca_file, base_dir, issue);
    ConnectOptions {
        host: server
            .host
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |h| h.value.clone()),
        port: server.port.as_ref().map_or(5432, |p| p.value),
        user: server.user.value.clone(),
        password: server.password.as_ref().map(|p| p.value.0.clone()),
        database: server.database.value.clone(),
        application_name: format!("watershed {node}"),
        connect_timeout,
        tls,
        ca_file,
    }
}

/// `tls` and `ca_file` of a Postgres block (source or sink): the mode, and the authority's
/// file relative to `base_dir`; mistakes go to `issue(at, field, message)`.
fn tls_settings(
    tls: &Option<S<String>>,
    ca_file: &Option<S<String>>,
    base_dir: &std::path::Path,
    issue: &mut dyn FnMut(&serde_saphyr::Location, &str, String),
) -> (TlsMode, Option<std::path::PathBuf>) {
    let mode = match tls {
        None => TlsMode::Prefer,
        Some(t) => TlsMode::parse(&t.value).unwrap_or_else(|| {
            issue(
                &t.referenced,
                "tls",
                format!(
                    "unknown tls mode `{}`; use disable, prefer, require, verify-ca or \
                     verify-full",
                    t.value
                ),
            );
            TlsMode::Prefer
        }),
    };
    let path = ca_file.as_ref().map(|f| base_dir.join(&f.value));
    if let (Some(f), false) = (
        ca_file,
        matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull),
    ) {
        issue(
            &f.referenced,
            "ca_file",
            "the certificate is checked only with `tls: verify-ca` or `verify-full`".to_string(),
        );
    }
    (mode, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(slot_name_ok("watershed_refdb_2"));
        for bad in ["", "Upper", "with-dash", &"a".repeat(64)] {
            assert!(!slot_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn the_password_is_not_shown() {
        assert_eq!(format!("{:?}", Password("hunter2".into())), "<redacted>");
    }
}
