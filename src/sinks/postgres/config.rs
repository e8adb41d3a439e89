//! The `postgres:` block of a sink: the server (`host`, `port`, `user`, `password` from the
//! environment, `database`, `tls`, `ca_file`, `connect_timeout`, as the Postgres source
//! takes them), the `table` (`schema.table` or a table of `public`), the output `key` (a
//! primary key or unique index), `version`, `create_table`, `batch_rows` and `retry_for`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::component::{BuiltSink, SinkConfig, SinkContext};
use crate::config::yaml::S;
use crate::dataflow::{Guarantee, Sink};
use crate::runtime::plan::SinkFactory;
use crate::sinks::keyed::{at_least_one, keyed_output};
use crate::sinks::postgres::{DELETED_COLUMN, PostgresSink, PostgresSinkSpec, VERSION_COLUMN};
use crate::sources::postgres::config::{Password, Server, connect_options};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Default `127.0.0.1`.
    pub host: Option<S<String>>,
    /// Default 5432.
    pub port: Option<S<u16>>,
    pub user: S<String>,
    /// From the environment: `${PGPASSWORD}`.
    pub password: Option<S<Password>>,
    pub database: S<String>,
    /// `schema.table`, or a table of `public`.
    pub table: S<String>,
    /// The output's key: the table's primary key or a unique index (`ON CONFLICT`).
    #[serde(default)]
    pub key: Vec<S<String>>,
    /// A column (int, or timestamp) whose value only grows for a key; default: a change
    /// stream's commit position, else the row's event time.
    pub version: Option<S<String>>,
    /// Create the table (the key as its primary key) if it does not exist.
    #[serde(default)]
    pub create_table: bool,
    /// Rows per upsert statement (default 1000).
    pub batch_rows: Option<S<u64>>,
    /// How long connecting is retried at start (default 1m).
    pub retry_for: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    /// As the Postgres source's `tls`.
    pub tls: Option<S<String>>,
    pub ca_file: Option<S<String>>,
}

impl SinkConfig for PostgresSinkConfig {
    fn build(&self, cx: &mut SinkContext<'_>) -> Option<BuiltSink> {
        let (schema_name, table) = match self.table.value.split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => ("public".to_string(), self.table.value.clone()),
        };
        if schema_name.is_empty() || table.is_empty() {
            cx.issue(
                &self.table.referenced,
                "table",
                "write it as `schema.table` or `table`",
            );
        }
        let (columns, key, version) = keyed_output(
            cx,
            &self.key,
            &self.version,
            &[VERSION_COLUMN, DELETED_COLUMN],
        );
        if self.key.is_empty() {
            cx.issue(
                &self.table.referenced,
                "key",
                "upserts are by the output's key: `key: [id]` (the table's primary key)",
            );
        }
        let batch_rows = at_least_one(cx, &self.batch_rows, "batch_rows", 1000);
        let mut duration = |d: &Option<S<String>>, field: &str, default: Duration| {
            d.as_ref()
                .and_then(|d| cx.issues.duration(d, &format!("{}.{field}", cx.field)))
                .unwrap_or(default)
        };
        let retry_for = duration(&self.retry_for, "retry_for", Duration::from_secs(60));
        let connect_timeout = duration(
            &self.connect_timeout,
            "connect_timeout",
            Duration::from_secs(10),
        );
        let base_dir = cx.base_dir.to_path_buf();
        let name = cx.name.to_string();
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
            &name,
            connect_timeout,
            &base_dir,
            &mut |at, f, m| cx.issue(at, f, m),
        );
        let target = format!(
            "postgres {}:{} table {schema_name}.{table}",
            connect.host, connect.port
        );
        let spec = PostgresSinkSpec {
            node: cx.name.to_string(),
            connect,
            schema_name,
            table,
            schema: cx.schema.clone(),
            columns,
            key,
            version,
            create_table: self.create_table,
            batch_rows,
            retry_for,
        };
        let holdings = crate::sinks::postgres::holdings::PostgresHoldings {
            connect: spec.connect.clone(),
            schema_name: spec.schema_name.clone(),
            table: spec.table.clone(),
            key: spec
                .key
                .iter()
                .map(|&k| spec.schema.field(k).name.to_string())
                .collect(),
        };
        let checked = spec.clone();
        let factory: SinkFactory =
            Arc::new(move |_| Ok(Box::new(PostgresSink::new(spec.clone())) as Box<dyn Sink>));
        Some(BuiltSink {
            factory,
            target,
            guarantee: Guarantee::Idempotent,
            writes: None,
            writes_json: false,
            holdings: Some(Arc::new(holdings)),
            preflight: Some(Arc::new(move || {
                crate::sinks::postgres::preflight(&checked)
            })),
        })
    }
}
