//! Tests of the whole decoder on captured Debezium 3.6.3 records and the connector's
//! documentation examples, and the fixtures the part files' tests share (the captured files,
//! two configured tables, small constructors).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::*;
use crate::cdc::{SnapshotMarker, Version};
use crate::format::parse_timestamp;
use crate::types::SchemaRef;
use crate::types::{DataType, Field, Schema};

pub(super) fn data_dir(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/debezium")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: {} is absent, test skipped", dir.display());
        None
    }
}

/// The captured files, sorted by name: (name, bytes).
pub(super) fn captured() -> Option<Vec<(String, Vec<u8>)>> {
    let dir = data_dir("captured-3.6.3")?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 30, "expected the captured events");
    Some(files)
}

pub(super) fn file<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files.iter().find(|(n, _)| n == name).unwrap().1
}

pub(super) fn customers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("name", DataType::String),
        Field::new("email", DataType::String),
        Field::new("updated_at", DataType::Timestamp),
    ]))
}

pub(super) fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("customer_id", DataType::Int),
        Field::new("amount", DataType::Decimal),
        Field::new("status", DataType::String),
        Field::new("created", DataType::Date),
    ]))
}

pub(super) fn configured() -> DebeziumDecoder {
    DebeziumDecoder::new([
        (
            TableId::new("public", "customers"),
            TableConfig::new(customers_schema()).with_key(&["id"]),
        ),
        (
            TableId::new("public", "orders"),
            TableConfig::new(orders_schema())
                .with_key(&["id"])
                .with_decimal_scale("amount", 2),
        ),
    ])
    .unwrap()
}

pub(super) fn change(d: Decoded) -> Change {
    match d {
        Decoded::Change(c) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

pub(super) fn dec(s: &str) -> Value {
    Value::Decimal(Decimal::from_str(s).unwrap())
}

pub(super) fn key_id(id: i64) -> Key {
    vec![("id".into(), Value::Int(id))]
}

pub(super) fn orders_event(amount: &str) -> String {
    format!(
        r#"{{"before":null,"after":{{"id":7,"customer_id":1,"amount":{amount},"status":"new","created":19737}},
           "source":{{"schema":"public","table":"orders","lsn":10,"sequence":"[\"9\",\"10\"]","snapshot":"false","txId":5,"ts_ms":1}},
           "op":"c","ts_ms":2}}"#
    )
}

#[test]
fn every_captured_file_decodes() {
    let Some(files) = captured() else { return };
    for decoder in [DebeziumDecoder::default(), configured()] {
        for (name, bytes) in &files {
            let decoded = decoder
                .decode(bytes)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let expected: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let key_json = if name.starts_with("schema-") {
                &expected["key"]["payload"]
            } else {
                &expected["key"]
            };
            let id = key_json["id"].as_i64().unwrap();
            let table = if name.contains("-customers-") {
                TableId::new("public", "customers")
            } else {
                TableId::new("public", "orders")
            };
            let suffix = name.rsplit('-').next().unwrap().trim_end_matches(".json");
            if suffix == "tombstone" {
                assert_eq!(
                    decoded,
                    Decoded::Tombstone {
                        key: key_id(id),
                        table: Some(table)
                    },
                    "{name}"
                );
                continue;
            }
            let c = change(decoded);
            assert_eq!(c.op.code(), suffix, "{name}");
            assert_eq!(c.table, table, "{name}");
            assert_eq!(c.key, key_id(id), "{name}");
            assert_eq!(c.snapshot.is_snapshot(), c.op == Op::Read, "{name}");
            assert!(c.tx_id.is_some() && c.source_ts_ms.is_some(), "{name}");
            assert!(c.unavailable.is_empty(), "{name}");
            match c.op {
                Op::Create | Op::Read => assert!(c.before.is_none() && c.after.is_some()),
                Op::Update => assert!(c.after.is_some()),
                Op::Delete => assert!(c.before.is_some() && c.after.is_none()),
                _ => panic!("{name}: unexpected op"),
            }
            let row = c.after.as_ref().or(c.before.as_ref()).unwrap();
            assert_eq!(row.len(), c.columns.len(), "{name}");
            assert_eq!(row[0], Value::Int(id), "{name}");
        }
    }
}

#[test]
fn schema_and_noschema_variants_decode_to_the_same_change() {
    let Some(files) = captured() else { return };
    let configured = configured();
    let inferred = DebeziumDecoder::default();
    // The two captures come from two runs: positions and commit times differ.
    let without_position = |d: Decoded| match d {
        Decoded::Change(mut c) => {
            c.version = Version::UNKNOWN;
            c.tx_id = None;
            c.source_ts_ms = None;
            Decoded::Change(c)
        }
        other => other,
    };
    let mut pairs = 0;
    for (name, bytes) in &files {
        let Some(rest) = name.strip_prefix("noschema-") else {
            continue;
        };
        let with_schema = file(&files, &format!("schema-{rest}"));
        let a = configured.decode(bytes).unwrap();
        let b = configured.decode(with_schema).unwrap();
        assert_eq!(
            without_position(a.clone()),
            without_position(b.clone()),
            "{rest}"
        );
        // The schema block alone types the rows as the configuration does.
        assert_eq!(inferred.decode(with_schema).unwrap(), b, "{rest}");

        // Exactly the same event with and without its schema block.
        let plain: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let schema: serde_json::Value = serde_json::from_slice(with_schema).unwrap();
        if !plain["value"].is_null() {
            let wrapped = serde_json::json!({
                "key": schema["key"],
                "value": {"schema": schema["value"]["schema"], "payload": plain["value"]},
            });
            let wrapped = wrapped.to_string();
            assert_eq!(configured.decode(wrapped.as_bytes()).unwrap(), a, "{rest}");
            assert_eq!(inferred.decode(wrapped.as_bytes()).unwrap(), a, "{rest}");
        }
        pairs += 1;
    }
    assert_eq!(pairs, 17);
}

#[test]
fn update_of_customer_1_has_the_new_email() {
    let Some(files) = captured() else { return };
    let c = change(
        configured()
            .decode(file(&files, "noschema-06-customers-u.json"))
            .unwrap(),
    );
    assert_eq!(c.op, Op::Update);
    assert_eq!(c.before, None);
    assert_eq!(
        c.after.unwrap(),
        vec![
            Value::Int(1),
            Value::Str("alice".into()),
            Value::Str("alice@new".into()),
            Value::Timestamp(parse_timestamp("2026-11-22T02:45:44.652523Z").unwrap()),
        ]
    );
    assert_eq!(c.tx_id, Some(738));
    assert_eq!(c.source_ts_ms, Some(1795315555160));
    assert_eq!(
        c.version,
        Version {
            commit_lsn: 26417904,
            ordinal: 26417904
        }
    );

    // Types inferred from the JSON when the table is not configured.
    let c = change(
        DebeziumDecoder::default()
            .decode(file(&files, "noschema-06-customers-u.json"))
            .unwrap(),
    );
    assert_eq!(c.after.unwrap()[2], Value::Str("alice@new".into()));
    assert_eq!(c.columns.field(3).data_type, DataType::String);
}

#[test]
fn default_identity_delete_keeps_only_the_key_real() {
    let Some(files) = captured() else { return };
    let c = change(
        configured()
            .decode(file(&files, "noschema-11-customers-d.json"))
            .unwrap(),
    );
    assert_eq!(
        c.before.unwrap(),
        vec![
            Value::Int(2),
            Value::Str("".into()),
            Value::Null,
            Value::Timestamp(0)
        ]
    );
}

#[test]
fn malformed_input_is_an_error_with_a_reason() {
    let d = configured();
    let cases: &[(&str, &str)] = &[
        ("", "invalid json"),
        ("{", "invalid json"),
        ("\u{e9}", "invalid json: expected value"),
        ("\u{0}", "invalid json: expected value"),
        (r#"{"op":"c","source":{},"op":"c"}"#, "duplicate field `op`"),
        (
            r#"{"key":{"id":1},"value":5}"#,
            "expected an object, json text in a string, or null",
        ),
        ("[1]", "expected a json object, found array"),
        ("42", "expected a json object, found number"),
        (
            r#"{"key":{"id":1},"value":"[2]"}"#,
            "expected a json object, found array",
        ),
        (r#"{"op":"c","source":[]}"#, "expected a source object"),
        ("{}", "envelope has no op"),
        (r#"{"op":"x","source":{}}"#, "unknown op \"x\""),
        (r#"{"op":5}"#, "op: expected a string, found number"),
        (
            r#"{"op":"c","after":{"id":1}}"#,
            "envelope has no source block",
        ),
        (
            r#"{"op":"c","source":{"schema":"public","table":"customers","snapshot":"maybe"}}"#,
            "unknown snapshot marker",
        ),
        (
            r#"{"op":"c","source":{"schema":"public","table":"customers","sequence":"[1"}}"#,
            "invalid source.sequence",
        ),
        (
            r#"{"op":"c","source":{"schema":"public","table":"customers","lsn":"x"}}"#,
            "invalid type: string \"x\", expected u64",
        ),
        (
            r#"{"op":"c","after":{"id":"one"},"source":{"schema":"public","table":"customers"}}"#,
            "after: column `id`: expected an integer, found string",
        ),
        (
            r#"{"op":"c","after":[1],"source":{"schema":"public","table":"customers"}}"#,
            "after: invalid type",
        ),
        (
            r#"{"op":"c","after":{"updated_at":"yesterday"},"source":{"schema":"public","table":"customers"}}"#,
            "invalid timestamp \"yesterday\"",
        ),
        (
            r#"{"op":"c","after":{"amount":"!!"},"source":{"schema":"public","table":"orders"}}"#,
            "invalid base64",
        ),
        (
            r#"{"op":"c","after":{"created":1e99},"source":{"schema":"public","table":"orders"}}"#,
            "expected an integer",
        ),
        (
            r#"{"key":null,"value":null}"#,
            "record has neither a key nor a value",
        ),
        (r#"{"key":[1],"value":null}"#, "key: invalid type"),
        (r#"{"key":"{\"id\":1","value":null}"#, "key: end of input"),
        (
            r#"{"schema":{"type":"struct"},"payload":{"op":"c","source":{}}}"#,
            "schema: struct has no fields",
        ),
    ];
    for (input, reason) in cases {
        let e = d.decode(input.as_bytes()).unwrap_err();
        assert!(e.reason.contains(reason), "{input}: {}", e.reason);
        assert_eq!(e.reason, e.reason.to_lowercase(), "{input}");
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    let e = configured().decode(b"{\"op\":\"\xff\"}").unwrap_err();
    assert_eq!(e.reason, "invalid json: not utf-8");
}

#[test]
fn truncated_captured_records_never_panic() {
    let Some(files) = captured() else { return };
    let decoders = [configured(), DebeziumDecoder::default()];
    for (name, bytes) in &files {
        let len = bytes.trim_ascii_end().len();
        for cut in (0..len).step_by(7) {
            for d in &decoders {
                assert!(d.decode(&bytes[..cut]).is_err(), "{name} cut at {cut}");
            }
        }
    }
}

#[test]
fn strict_json_postgres_doc_examples_decode() {
    let Some(dir) = data_dir("doc-snippets") else {
        return;
    };
    let index = std::fs::read_to_string(dir.join("INDEX.tsv")).unwrap();
    let mut events = 0;
    for line in index.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if !cols[0].starts_with("postgresql-") || cols.last() != Some(&"True") {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(cols[0])).unwrap();
        if !text.contains("\"op\"") {
            continue; // e.g. a connector configuration
        }
        let c = change(DebeziumDecoder::default().decode(text.as_bytes()).unwrap());
        events += 1;
        if cols[0] == "postgresql-L763.json.txt" {
            assert_eq!(c.op, Op::Create);
            assert_eq!(c.table, TableId::new("public", "customers"));
            assert_eq!(c.snapshot, SnapshotMarker::True); // a boolean in the docs
            assert_eq!(
                c.version,
                Version {
                    commit_lsn: 24023119,
                    ordinal: 24023128
                }
            );
            assert_eq!(c.after.unwrap()[1], Value::Str("Anne".into()));
            assert_eq!(c.tx_id, Some(555));
        }
    }
    assert_eq!(events, 1);
}

/// Throughput on a real envelope: `cargo test --release --lib decode_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_throughput() {
    let Some(files) = captured() else { return };
    let record: serde_json::Value =
        serde_json::from_slice(file(&files, "noschema-08-orders-u.json")).unwrap();
    let value = record["value"].to_string();
    let whole = record.to_string();
    let configured = configured();
    let inferred = DebeziumDecoder::default();
    let n = 500_000;
    for (label, decoder, value) in [
        ("configured, bare envelope", &configured, &value),
        ("inferred, bare envelope", &inferred, &value),
        ("configured, {topic, key, value}", &configured, &whole),
    ] {
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(decoder.decode(value.as_bytes()).unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label}: {} bytes/event, {:.0} k events/s",
            value.len(),
            n as f64 / secs / 1000.0
        );
    }
}

#[test]
fn config_errors() {
    let bad_key = DebeziumDecoder::new([(
        TableId::new("public", "orders"),
        TableConfig::new(orders_schema()).with_key(&["nope"]),
    )]);
    assert_eq!(
        bad_key.unwrap_err().reason,
        "table public.orders: key column `nope` is not in the schema"
    );
    let bad_scale = DebeziumDecoder::new([(
        TableId::new("public", "orders"),
        TableConfig::new(orders_schema()).with_decimal_scale("amount", 29),
    )]);
    assert!(bad_scale.is_err());
}

/// `op: c` with `after: null`, an `after` without its key column, a `{key, value}` record
/// whose key names another row, a record without `value` and `source.table: null` used to
/// decode into rows of nulls, null keys or the wrong key: each is now an error (a dead letter
/// with the reason).
#[test]
fn records_that_would_become_null_rows_or_wrong_keys_are_dead_letters() {
    let d = configured();
    let src = r#""source":{"schema":"public","table":"customers","lsn":7}"#;
    let cases = [
        (
            format!(r#"{{"op":"c","before":null,"after":null,{src}}}"#),
            "op c without an after row",
        ),
        (
            format!(r#"{{"op":"u","after":null,{src}}}"#),
            "op u without an after row",
        ),
        (
            format!(r#"{{"op":"c","after":{{"name":"a"}},{src}}}"#),
            "after lacks key column `id` of table public.customers",
        ),
        (
            format!(r#"{{"op":"c","after":{{"id":null,"name":"a"}},{src}}}"#),
            "after lacks key column `id`",
        ),
        (
            format!(r#"{{"op":"d","before":{{"name":"a"}},{src}}}"#),
            "before lacks key column `id`",
        ),
        (
            format!(r#"{{"key":{{"id":2}},"value":{{"op":"c","after":{{"id":1}},{src}}}}}"#),
            "record key `id` disagrees with the value's key column `id`",
        ),
        (
            format!(r#"{{"key":{{"other":1}},"value":{{"op":"c","after":{{"id":1}},{src}}}}}"#),
            "record key lacks key column `id` of the value",
        ),
        (
            r#"{"key":{"id":1},"topic":"dbz.public.customers"}"#.to_owned(),
            "record has a key but no value",
        ),
        (
            r#"{"op":"c","after":{"id":1},"source":{"schema":"public","table":null,"lsn":7}}"#
                .to_owned(),
            "op c: source.table is null",
        ),
    ];
    for (input, reason) in &cases {
        let e = d.decode(input.as_bytes()).unwrap_err();
        assert!(e.reason.contains(reason), "{input}: {}", e.reason);
        assert_eq!(e.reason, e.reason.to_lowercase(), "{input}");
    }
    // The same records when they are right still decode.
    let ok = format!(r#"{{"key":{{"id":1}},"value":{{"op":"c","after":{{"id":1}},{src}}}}}"#);
    assert_eq!(change(d.decode(ok.as_bytes()).unwrap()).key, key_id(1));
    let tombstone = r#"{"key":{"id":1},"value":null,"topic":"dbz.public.customers"}"#;
    assert!(matches!(
        d.decode(tombstone.as_bytes()).unwrap(),
        Decoded::Tombstone { .. }
    ));
}

/// Records without `source.schema` (MySQL sends `db` and `table`) matched no configured
/// `schema.table`: every row was skipped and the reference table stayed empty. They now
/// match the configured table of the database, else the only configured table of that name;
/// with several of that name they stay unmatched (skipped by the change stream, counted).
#[test]
fn records_without_source_schema_match_by_database_or_table_name() {
    let Some(dir) = data_dir("test-fixtures") else {
        return;
    };
    let bytes = std::fs::read(dir.join("serde-update.json")).unwrap();
    let customers = |schema: &str| {
        (
            TableId::new(schema, "customers"),
            TableConfig::new(customers_schema()).with_key(&["id"]),
        )
    };
    // The only `customers` configured, in another schema: matched by name.
    let c = change(configured().decode(&bytes).unwrap());
    assert_eq!(c.table, TableId::new("public", "customers"));
    assert_eq!(c.key, key_id(1004));
    assert_eq!(c.after.unwrap()[0], Value::Int(1004));
    // The record's database configured among others of that name: the database wins.
    let d = DebeziumDecoder::new([customers("inventory"), customers("public")]).unwrap();
    let c = change(d.decode(&bytes).unwrap());
    assert_eq!(c.table, TableId::new("inventory", "customers"));
    assert_eq!(c.key, key_id(1004));
    // Two configured tables of that name, neither the database: not matched.
    let d = DebeziumDecoder::new([customers("a"), customers("b")]).unwrap();
    let c = change(d.decode(&bytes).unwrap());
    assert_eq!(c.table, TableId::new("", "customers"));
}

/// JSON has no NaN or infinities: Debezium writes a double column's as strings.
#[test]
fn float_nan_and_infinities_arrive_as_strings() {
    let d = DebeziumDecoder::new([(
        TableId::new("public", "m"),
        TableConfig::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("r", DataType::Float),
        ])))
        .with_key(&["id"]),
    )])
    .unwrap();
    for (text, check) in [
        ("\"NaN\"", f64::is_nan as fn(f64) -> bool),
        ("\"Infinity\"", |f: f64| f == f64::INFINITY),
        ("\"-Infinity\"", |f: f64| f == f64::NEG_INFINITY),
        ("0.5", |f: f64| f == 0.5),
    ] {
        let e = format!(
            r#"{{"before":null,"after":{{"id":1,"r":{text}}},"source":{{"schema":"public","table":"m","lsn":1}},"op":"c"}}"#
        );
        let Decoded::Change(c) = d.decode(e.as_bytes()).unwrap() else {
            panic!("a change")
        };
        let Some(Value::Float(f)) = c.after.unwrap().get(1).cloned() else {
            panic!("a float")
        };
        assert!(check(f), "{text} gave {f}");
    }
    let bad = r#"{"before":null,"after":{"id":1,"r":"lots"},"source":{"schema":"public","table":"m","lsn":1},"op":"c"}"#;
    assert!(d.decode(bad.as_bytes()).is_err());
}
