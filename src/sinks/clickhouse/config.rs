//! The `clickhouse:` block of a sink: the server (`url`, `user`, `password` from the
//! environment), the `database` and `table`, the output `key` (the created table's
//! `ORDER BY`), where versions come from (`version`: a column; by default a change stream's
//! commit position, or the row's event time), `create_table`, and batching and retrying
//! (`batch_rows`, `batch_bytes`, `batch_interval`, `retry_for`, `timeout`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::component::{BuiltSink, SinkConfig, SinkContext};
use crate::config::yaml::S;
use crate::dataflow::{Guarantee, Sink};
use crate::runtime::plan::SinkFactory;
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::table::{DELETED_COLUMN, VERSION_COLUMN};
use crate::sinks::clickhouse::{ClickHouseSink, ClickHouseSinkSpec};
use crate::sinks::keyed::{at_least_one, keyed_output};
use crate::sources::postgres::config::Password;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSinkConfig {
    /// `http://host:8123` (or https).
    pub url: S<String>,
    pub user: Option<S<String>>,
    /// From the environment: `${CLICKHOUSE_PASSWORD}`.
    pub password: Option<S<Password>>,
    /// Default `default`.
    pub database: Option<S<String>>,
    pub table: S<String>,
    /// The output's key columns: the created table's `ORDER BY`, one row per key under
    /// `FINAL`.
    #[serde(default)]
    pub key: Vec<S<String>>,
    /// A column (int, or timestamp) whose value only grows for a key; default: a change
    /// stream's commit position, else the row's event time.
    pub version: Option<S<String>>,
    /// Create the table (`ReplacingMergeTree`) if it does not exist.
    #[serde(default)]
    pub create_table: bool,
    /// Insert once this many rows wait (default 10000).
    pub batch_rows: Option<S<u64>>,
    /// Insert once this many bytes wait (default 8 MiB).
    pub batch_bytes: Option<S<u64>>,
    /// Insert once the oldest row waited this long (default 1s); every checkpoint barrier
    /// inserts too.
    pub batch_interval: Option<S<String>>,
    /// How long transient failures are retried before the run fails (default 1m).
    pub retry_for: Option<S<String>>,
    /// The longest a request may take (default 30s).
    pub timeout: Option<S<String>>,
}

impl SinkConfig for ClickHouseSinkConfig {
    fn build(&self, cx: &mut SinkContext<'_>) -> Option<BuiltSink> {
        let url = self.url.value.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            cx.issue(
                &self.url.referenced,
                "url",
                "write the server's HTTP address: `http://host:8123`",
            );
        } else if url.contains('@') {
            cx.issue(
                &self.url.referenced,
                "url",
                "put credentials in `user` and `password` (from the environment), not in the URL",
            );
        }
        if self.table.value.trim().is_empty() {
            cx.issue(&self.table.referenced, "table", "name the table to write");
        }
        let (columns, key, version) = keyed_output(
            cx,
            &self.key,
            &self.version,
            &[VERSION_COLUMN, DELETED_COLUMN],
        );
        if self.create_table && self.key.is_empty() {
            cx.issue(
                &self.table.referenced,
                "key",
                "a created table is ordered by the output's key: `key: [id]`",
            );
        }
        let batch_rows = at_least_one(cx, &self.batch_rows, "batch_rows", 10_000);
        let batch_bytes = at_least_one(cx, &self.batch_bytes, "batch_bytes", 8 << 20);
        let mut duration = |d: &Option<S<String>>, field: &str, default: Duration| {
            d.as_ref()
                .and_then(|d| cx.issues.duration(d, &format!("{}.{field}", cx.field)))
                .unwrap_or(default)
        };
        let batch_interval = duration(
            &self.batch_interval,
            "batch_interval",
            Duration::from_secs(1),
        );
        let retry_for = duration(&self.retry_for, "retry_for", Duration::from_secs(60));
        let timeout = duration(&self.timeout, "timeout", Duration::from_secs(30));
        let client = ClickHouse::new(
            url,
            self.user.as_ref().map(|u| u.value.as_str()),
            self.password.as_ref().map(|p| p.value.0.as_str()),
            timeout,
        );
        let database = self
            .database
            .as_ref()
            .map_or_else(|| "default".to_string(), |d| d.value.clone());
        let spec = ClickHouseSinkSpec {
            node: cx.name.to_string(),
            client,
            database: database.clone(),
            table: self.table.value.clone(),
            schema: cx.schema.clone(),
            columns,
            key,
            version,
            create_table: self.create_table,
            batch_rows,
            batch_bytes,
            batch_interval,
            retry_for,
        };
        let holdings = crate::sinks::clickhouse::holdings::ClickHouseHoldings {
            client: spec.client.clone(),
            database: spec.database.clone(),
            table: spec.table.clone(),
            key: spec
                .key
                .iter()
                .map(|&k| spec.schema.field(k).name.to_string())
                .collect(),
        };
        let checked = spec.clone();
        let factory: SinkFactory =
            Arc::new(move |_| Ok(Box::new(ClickHouseSink::new(spec.clone())) as Box<dyn Sink>));
        Some(BuiltSink {
            factory,
            target: format!("clickhouse {url} table {database}.{}", self.table.value),
            guarantee: Guarantee::Idempotent,
            writes: None,
            writes_json: false,
            holdings: Some(Arc::new(holdings)),
            preflight: Some(Arc::new(move || {
                crate::sinks::clickhouse::preflight(&checked)
            })),
        })
    }
}
