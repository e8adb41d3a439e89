//! What a ClickHouse sink's table holds, for `watershed reconcile`: its live keys under
//! `FINAL` (without deleted ones) with their versions, and the rows beyond one per key that
//! are not merged yet.

use crate::reconcile::{Holdings, KEY_SEPARATOR, SinkHoldings};
use crate::sinks::clickhouse::client::{ClickHouse, quote_ident};
use crate::sinks::clickhouse::table::{self, DELETED_COLUMN, VERSION_COLUMN};

pub struct ClickHouseHoldings {
    pub client: ClickHouse,
    pub database: String,
    pub table: String,
    pub key: Vec<String>,
}

impl SinkHoldings for ClickHouseHoldings {
    fn target(&self) -> String {
        format!(
            "clickhouse {} table {}.{}",
            self.client.url(),
            self.database,
            self.table
        )
    }

    fn key(&self) -> Vec<String> {
        self.key.clone()
    }

    fn read(&self) -> Result<Holdings, String> {
        let columns = table::describe(&self.client, &self.database, &self.table)
            .map_err(|e| e.to_string())?;
        if columns.is_empty() {
            return Err(format!(
                "no table {}.{} at {}",
                self.database,
                self.table,
                self.client.url()
            ));
        }
        let deletes = columns.iter().any(|c| c.name == DELETED_COLUMN);
        let qualified = format!(
            "{}.{}",
            quote_ident(&self.database),
            quote_ident(&self.table)
        );
        // Keys as `reconcile::expected::key_text` renders them: timestamps in microseconds.
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                let q = quote_ident(k);
                match columns
                    .iter()
                    .find(|c| c.name == *k)
                    .map(|c| c.base.as_str())
                {
                    Some(b) if b.starts_with("DateTime64") => {
                        format!("toString(toUnixTimestamp64Micro({q}))")
                    }
                    Some(b) if b.starts_with("DateTime") => {
                        format!("toString(toInt64(toUnixTimestamp({q})) * 1000000)")
                    }
                    _ => format!("toString({q})"),
                }
            })
            .collect();
        // FINAL in a subquery: the filter on `_deleted` must see only each key's newest row
        // (an outer WHERE could be applied before FINAL on some versions).
        let live_filter = if deletes {
            format!(" WHERE {} = 0", quote_ident(DELETED_COLUMN))
        } else {
            String::new()
        };
        let mut inner = self.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>();
        inner.push(quote_ident(VERSION_COLUMN));
        if deletes {
            inner.push(quote_ident(DELETED_COLUMN));
        }
        let text = self
            .client
            .query(&format!(
                "SELECT {}, toString({}) FROM (SELECT {} FROM {qualified} FINAL){live_filter} \
                 FORMAT TabSeparated",
                keys.join(", "),
                quote_ident(VERSION_COLUMN),
                inner.join(", ")
            ))
            .map_err(|e| e.to_string())?;
        let mut live = crate::reconcile::KeyVersions::new();
        for line in text.lines() {
            let fields: Vec<String> = line.split('\t').map(table::unescape_tsv).collect();
            let Some((version, key)) = fields.split_last() else {
                continue;
            };
            let key = key.join(&KEY_SEPARATOR.to_string());
            live.insert(key, version.parse().ok());
        }
        let unmerged = self
            .client
            .query(&format!(
                "SELECT count() - uniqExact({}) FROM {qualified}",
                self.key
                    .iter()
                    .map(|k| quote_ident(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .unwrap_or(0);
        Ok(Holdings { live, unmerged })
    }
}
