//! The target table as the sink sees it: which of its columns each written column goes to
//! and how a value is written for the column's type (read from `system.columns` at start,
//! so a mismatch stops the run before any row is written, naming the column), and the
//! `CREATE TABLE` made from the output schema when the sink creates the table.
//!
//! Every table the sink writes is a `ReplacingMergeTree(_version)` ordered by the output
//! key: `_version` (UInt64) grows for a key, so a replay after a crash collapses to one row
//! per key under `FINAL`; rows of a change stream also carry `_deleted` (UInt8, 1 for a
//! delete), which current servers take as the engine's `is_deleted` (deleted keys leave
//! `FINAL`) and readers of 18.16 filter on (`WHERE _deleted = 0`).

use crate::sinks::clickhouse::client::{
    ChError, ClickHouse, ServerVersion, quote_ident, quote_str,
};
use crate::types::{DataType, Schema};

/// The version column every table of the sink has.
pub const VERSION_COLUMN: &str = "_version";
/// The delete flag of tables written from a change stream.
pub const DELETED_COLUMN: &str = "_deleted";

/// How a value of the pipeline is written into a column of the table (JSONEachRow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As JSON (numbers, strings, `Decimal` unquoted).
    Plain,
    /// A bool as 1 or 0 (UInt8).
    Bool01,
    /// A float; NaN and infinities quoted (`"nan"`, `"inf"`, `"-inf"`).
    Float,
    /// A timestamp as seconds since the epoch (DateTime: whole seconds), which no time zone
    /// of the column or the server can shift.
    DateTime,
    /// A timestamp as seconds since the epoch with six decimals (DateTime64).
    DateTime64,
    /// A timestamp as microseconds since the epoch (an integer column).
    Micros,
    /// A date as `YYYY-MM-DD`.
    Date,
    /// A date as days since the epoch (an integer column).
    Days,
    /// A value as its text in a String column (timestamps RFC 3339, JSON as text, bytes as
    /// base64).
    Text,
}

/// A column of the table: its name and type (`Nullable(…)` and `LowCardinality(…)`
/// removed from `base`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    pub base: String,
    pub nullable: bool,
}

/// Parses a ClickHouse type into its base and whether it is `Nullable`.
pub fn parse_type(ty: &str) -> (String, bool) {
    let mut t = ty.trim();
    let mut nullable = false;
    loop {
        if let Some(inner) = t
            .strip_prefix("Nullable(")
            .and_then(|r| r.strip_suffix(')'))
        {
            nullable = true;
            t = inner;
        } else if let Some(inner) = t
            .strip_prefix("LowCardinality(")
            .and_then(|r| r.strip_suffix(')'))
        {
            t = inner;
        } else {
            return (t.to_string(), nullable);
        }
    }
}

/// How a value of `ty` is written into a column of ClickHouse type `base`, or why it
/// cannot be.
pub fn encoding_for(ty: DataType, base: &str) -> Result<Encoding, String> {
    let family = base.split('(').next().unwrap_or(base);
    let int = family.starts_with("Int") || family.starts_with("UInt");
    let float = family.starts_with("Float");
    let string = family == "String" || family == "FixedString";
    let enc = match ty {
        DataType::Null => Some(Encoding::Plain),
        DataType::Int if int || float || family == "Decimal" => Some(Encoding::Plain),
        DataType::Int if family == "DateTime" => Some(Encoding::Plain),
        DataType::Float if float || family == "Decimal" => Some(Encoding::Float),
        DataType::Decimal if float || family.starts_with("Decimal") => Some(Encoding::Plain),
        DataType::Bool if int => Some(Encoding::Bool01),
        DataType::Bool if family == "Bool" => Some(Encoding::Plain),
        DataType::Timestamp if family == "DateTime" => Some(Encoding::DateTime),
        DataType::Timestamp if family == "DateTime64" => Some(Encoding::DateTime64),
        DataType::Timestamp if family == "Int64" || family == "UInt64" => Some(Encoding::Micros),
        DataType::Date if family == "Date" || family == "Date32" => Some(Encoding::Date),
        DataType::Date if int => Some(Encoding::Days),
        DataType::String if string || family.starts_with("Enum") || family == "UUID" => {
            Some(Encoding::Plain)
        }
        _ if string => Some(Encoding::Text),
        _ => None,
    };
    enc.ok_or_else(|| {
        format!(
            "the pipeline writes {} values, the table has {base}",
            ty.name()
        )
    })
}

/// The columns of `table` (`db`.`name`), in order; an unknown table is a definite error.
pub fn describe(ch: &ClickHouse, database: &str, table: &str) -> Result<Vec<TableColumn>, ChError> {
    let text = ch.query(&format!(
        "SELECT name, type FROM system.columns WHERE database = {} AND table = {} \
         FORMAT TabSeparated",
        quote_str(database),
        quote_str(table)
    ))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, ty)| {
            let (base, nullable) = parse_type(&unescape_tsv(ty));
            TableColumn {
                name: unescape_tsv(name),
                base,
                nullable,
            }
        })
        .collect())
}

/// A TabSeparated field's text.
pub(crate) fn unescape_tsv(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('a') => out.push('\u{7}'),
            Some('v') => out.push('\u{b}'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The ClickHouse type a created table gives a column of `ty`.
pub fn column_type(ty: DataType, version: ServerVersion) -> &'static str {
    match ty {
        DataType::String | DataType::Json | DataType::Bytes | DataType::Null => "String",
        DataType::Int => "Int64",
        DataType::Float => "Float64",
        DataType::Bool => "UInt8",
        DataType::Decimal => "Decimal(38, 10)",
        DataType::Timestamp if version.has_datetime64() => "DateTime64(6, 'UTC')",
        // 18.16 has no sub-second DateTime: keep every microsecond as an integer.
        DataType::Timestamp => "Int64",
        DataType::Date => "Date",
    }
}

/// `CREATE TABLE IF NOT EXISTS` for `columns` (name, type) of the output keyed by `key`:
/// key columns are not `Nullable` (they order the table), the others are; `_version` and,
/// for a change stream, `_deleted` follow.
pub fn create_table_sql(
    qualified: &str,
    schema: &Schema,
    columns: &[usize],
    key: &[usize],
    deletes: bool,
    version: ServerVersion,
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|&c| {
            let f = schema.field(c);
            let ty = column_type(f.data_type, version);
            if key.contains(&c) {
                format!("{} {ty}", quote_ident(&f.name))
            } else {
                format!("{} Nullable({ty})", quote_ident(&f.name))
            }
        })
        .collect();
    defs.push(format!("{} UInt64", quote_ident(VERSION_COLUMN)));
    if deletes {
        defs.push(format!("{} UInt8", quote_ident(DELETED_COLUMN)));
    }
    let engine = if deletes && version.has_is_deleted() {
        format!(
            "ReplacingMergeTree({}, {})",
            quote_ident(VERSION_COLUMN),
            quote_ident(DELETED_COLUMN)
        )
    } else {
        format!("ReplacingMergeTree({})", quote_ident(VERSION_COLUMN))
    };
    let order: Vec<String> = key
        .iter()
        .map(|&k| quote_ident(&schema.field(k).name))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified} ({}) ENGINE = {engine} ORDER BY ({})",
        defs.join(", "),
        order.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Field;

    #[test]
    fn tab_separated_escapes_are_undone() {
        assert_eq!(
            unescape_tsv("a\\tb\\\\c\\rd\\be\\0\\'"),
            "a\tb\\c\rd\u{8}e\0'"
        );
    }

    #[test]
    fn types_parse_through_nullable_and_low_cardinality() {
        assert_eq!(
            parse_type("Nullable(DateTime('UTC'))"),
            ("DateTime('UTC')".into(), true)
        );
        assert_eq!(
            parse_type("LowCardinality(Nullable(String))"),
            ("String".into(), true)
        );
        assert_eq!(parse_type("Int64"), ("Int64".into(), false));
    }

    #[test]
    fn values_are_written_as_the_column_takes_them_or_refused() {
        assert_eq!(
            encoding_for(DataType::Timestamp, "DateTime('UTC')"),
            Ok(Encoding::DateTime)
        );
        assert_eq!(
            encoding_for(DataType::Timestamp, "DateTime64(6, 'UTC')"),
            Ok(Encoding::DateTime64)
        );
        assert_eq!(
            encoding_for(DataType::Timestamp, "Int64"),
            Ok(Encoding::Micros)
        );
        assert_eq!(encoding_for(DataType::Bool, "UInt8"), Ok(Encoding::Bool01));
        assert_eq!(encoding_for(DataType::Json, "String"), Ok(Encoding::Text));
        assert_eq!(
            encoding_for(DataType::String, "Int64"),
            Err("the pipeline writes string values, the table has Int64".into())
        );
    }

    #[test]
    fn a_created_table_is_ordered_by_the_key_and_replaces_by_version() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("at", DataType::Timestamp),
        ]);
        let old = ServerVersion {
            major: 18,
            minor: 16,
        };
        let new = ServerVersion {
            major: 26,
            minor: 9,
        };
        assert_eq!(
            create_table_sql("`d`.`t`", &schema, &[0, 1], &[0], true, old),
            "CREATE TABLE IF NOT EXISTS `d`.`t` (`id` Int64, `at` Nullable(Int64), `_version` UInt64, \
             `_deleted` UInt8) ENGINE = ReplacingMergeTree(`_version`) ORDER BY (`id`)"
        );
        assert!(
            create_table_sql("`d`.`t`", &schema, &[0, 1], &[0], true, new).contains(
                "Nullable(DateTime64(6, 'UTC')), `_version` UInt64, `_deleted` UInt8) ENGINE = \
                 ReplacingMergeTree(`_version`, `_deleted`)"
            )
        );
    }
}
