//! What a Postgres sink's table holds, for `watershed reconcile`: its live keys (without
//! tombstones) with their versions.

use crate::reconcile::{Holdings, KEY_SEPARATOR, KeyVersions, SinkHoldings};
use crate::sinks::postgres::{DELETED_COLUMN, VERSION_COLUMN, table_columns};
use crate::sources::postgres::wire::{ConnectOptions, Connection, quote_ident};

pub struct PostgresHoldings {
    pub connect: ConnectOptions,
    pub schema_name: String,
    pub table: String,
    pub key: Vec<String>,
}

impl SinkHoldings for PostgresHoldings {
    fn target(&self) -> String {
        format!(
            "postgres {}:{} table {}.{}",
            self.connect.host, self.connect.port, self.schema_name, self.table
        )
    }

    fn key(&self) -> Vec<String> {
        self.key.clone()
    }

    fn read(&self) -> Result<Holdings, String> {
        let mut conn = Connection::connect(&self.connect, false).map_err(|e| e.to_string())?;
        let qualified = format!(
            "{}.{}",
            quote_ident(&self.schema_name),
            quote_ident(&self.table)
        );
        let columns = table_columns(&mut conn, &qualified).map_err(|e| e.to_string())?;
        let has_deleted = columns.iter().any(|(n, _)| n == DELETED_COLUMN);
        let type_of = |k: &str| {
            columns
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t.as_str())
        };
        // Keys as `reconcile::expected::key_text` renders them: timestamps in microseconds.
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                let q = quote_ident(k);
                match type_of(k) {
                    Some(t) if t.starts_with("timestamp") => {
                        format!("(extract(epoch from {q}) * 1000000)::bigint::text")
                    }
                    _ => format!("{q}::text"),
                }
            })
            .collect();
        let filter = if has_deleted {
            format!(" WHERE NOT {}", quote_ident(DELETED_COLUMN))
        } else {
            String::new()
        };
        let result = conn
            .query(&format!(
                "SELECT {}, {} FROM {qualified}{filter}",
                keys.join(", "),
                quote_ident(VERSION_COLUMN)
            ))
            .map_err(|e| e.to_string())?;
        let mut live = KeyVersions::new();
        for row in result
            .first()
            .map(|r| r.rows.as_slice())
            .unwrap_or_default()
        {
            let Some((version, key)) = row.split_last() else {
                continue;
            };
            let key: Vec<&str> = key.iter().map(|v| v.as_deref().unwrap_or("")).collect();
            live.insert(
                key.join(&KEY_SEPARATOR.to_string()),
                version.as_deref().and_then(|v| v.parse().ok()),
            );
        }
        Ok(Holdings { live, unmerged: 0 })
    }
}
