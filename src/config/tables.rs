//! The `tables:` of a change-stream source, whatever carries the stream (Debezium records in
//! files, later a Kafka topic or a replication slot): per port, the database table
//! (`schema.table`), its primary key, its typed columns and the scale of decimals sent
//! without a schema. Checked here once, for every change-stream component.

use indexmap::IndexMap;

use crate::cdc::stream::CdcTable;
use crate::cdc::{TableConfig, TableId};
use crate::config::issues::{Issues, valid_name};
use crate::config::yaml::{S, TableYaml};
use crate::types::DataType;

/// Checks the tables of `sources.NAME.tables` (`field`).
pub fn change_tables(
    issues: &mut Issues,
    field: &str,
    y: &S<IndexMap<String, S<TableYaml>>>,
) -> Vec<CdcTable> {
    if y.value.is_empty() {
        issues.at(
            &y.referenced,
            field,
            "configure at least one table: `NAME: {key: [...], columns: {...}}`",
        );
    }
    let mut tables = Vec::new();
    for (port, t) in &y.value {
        let tf = format!("{field}.{port}");
        if !valid_name(port) {
            issues.at(
                &t.referenced,
                &tf,
                "names may use only letters, digits, `_` and `-`",
            );
        }
        let id = match &t.value.table {
            Some(q) => match q.value.split_once('.') {
                Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {
                    TableId::new(schema, table)
                }
                _ => {
                    issues.at(
                        &q.referenced,
                        format!("{tf}.table"),
                        format!("`{}`: write `schema.table`", q.value),
                    );
                    continue;
                }
            },
            None => TableId::new("public", port),
        };
        let schema = issues.schema(&format!("{tf}.columns"), &t.value.columns);
        if t.value.key.is_empty() {
            issues.at(
                &t.referenced,
                format!("{tf}.key"),
                "name the primary key columns",
            );
        }
        let mut key = Vec::new();
        for (i, k) in t.value.key.iter().enumerate() {
            if schema.index_of(&k.value).is_none() {
                issues.at(
                    &k.referenced,
                    format!("{tf}.key[{i}]"),
                    format!("`{}` is not one of the table's columns", k.value),
                );
                // Left out, so that the table's port still exists for what reads it.
                continue;
            }
            key.push(k.value.clone());
        }
        let mut config = TableConfig::new(schema.clone());
        config.key_columns = key.iter().map(|k| k.as_str().into()).collect();
        for (col, scale) in &t.value.decimal_scales {
            match schema.index_of(col).map(|i| schema.field(i).data_type) {
                Some(DataType::Decimal) if scale.value <= 28 => {
                    config = config.with_decimal_scale(col, scale.value);
                }
                Some(DataType::Decimal) => issues.at(
                    &scale.referenced,
                    format!("{tf}.decimal_scales.{col}"),
                    "a decimal scale is at most 28",
                ),
                _ => issues.at(
                    &scale.referenced,
                    format!("{tf}.decimal_scales.{col}"),
                    format!("`{col}` is not a decimal column of the table"),
                ),
            }
        }
        tables.push(CdcTable {
            port: port.clone(),
            id,
            config,
        });
    }
    tables
}
