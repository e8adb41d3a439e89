//! `watershed cdc decode`: reads a file of Debezium records (JSON lines, or pretty-printed
//! records one after another), decodes each with the same decoder the pipeline uses, and
//! prints one normalized line per record: `{"table", "op", "key", "before", "after",
//! "version", "snapshot"}` — decimals as exact strings, timestamps RFC 3339, dates
//! `YYYY-MM-DD`, bytes base64, json nested. Records that do not decode are reported with
//! their line number and reason, and counted.

use std::io::Write;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::cdc::{Change, DebeziumDecoder, Decoded, Key, TxStatus};
use crate::format::json::JsonEncoder;
use crate::types::{Field, Schema, Value};

/// How a decode run went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeCounts {
    pub decoded: usize,
    pub failed: usize,
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn push_row(out: &mut Vec<u8>, names: &[Field], row: Option<&[Value]>) {
    match row {
        None => out.extend_from_slice(b"null"),
        Some(values) => {
            JsonEncoder::new(Arc::new(Schema::new(names.to_vec()))).encode_row(values, out)
        }
    }
}

fn push_key(out: &mut Vec<u8>, key: &Key) {
    let fields: Vec<Field> = key
        .iter()
        .map(|(n, v)| Field::new(n, v.data_type()))
        .collect();
    let values: Vec<Value> = key.iter().map(|(_, v)| v.clone()).collect();
    push_row(out, &fields, Some(&values));
}

/// One normalized line (without the newline) for a decoded record.
pub fn normalize(decoded: &Decoded, out: &mut Vec<u8>) {
    match decoded {
        Decoded::Change(c) => normalize_change(c, out),
        Decoded::Tombstone { key, table } => {
            out.extend_from_slice(b"{\"table\":");
            match table {
                Some(t) => push_json_str(out, &t.to_string()),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"op\":\"tombstone\",\"key\":");
            push_key(out, key);
            out.extend_from_slice(
                b",\"before\":null,\"after\":null,\"version\":null,\"snapshot\":null}",
            );
        }
        Decoded::Heartbeat { ts_ms } => {
            out.extend_from_slice(format!("{{\"op\":\"heartbeat\",\"ts_ms\":{ts_ms}}}").as_bytes());
        }
        Decoded::Transaction {
            status,
            id,
            event_count,
        } => {
            out.extend_from_slice(b"{\"op\":\"transaction\",\"status\":");
            push_json_str(
                out,
                match status {
                    TxStatus::Begin => "BEGIN",
                    TxStatus::End => "END",
                },
            );
            out.extend_from_slice(b",\"id\":");
            push_json_str(out, id);
            out.extend_from_slice(b",\"event_count\":");
            match event_count {
                Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
    }
}

fn normalize_change(c: &Change, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"table\":");
    push_json_str(out, &c.table.to_string());
    out.extend_from_slice(b",\"op\":");
    push_json_str(out, c.op.code());
    out.extend_from_slice(b",\"key\":");
    push_key(out, &c.key);
    out.extend_from_slice(b",\"before\":");
    push_row(out, &c.columns.fields, c.before.as_deref());
    out.extend_from_slice(b",\"after\":");
    push_row(out, &c.columns.fields, c.after.as_deref());
    if !c.unavailable.is_empty() {
        out.extend_from_slice(b",\"unavailable\":[");
        for (i, col) in c.unavailable.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(out, &c.columns.fields[*col].name);
        }
        out.push(b']');
    }
    out.extend_from_slice(
        format!(
            ",\"version\":{{\"commit_lsn\":{},\"ordinal\":{}}},\"snapshot\":",
            c.version.commit_lsn, c.version.ordinal
        )
        .as_bytes(),
    );
    push_json_str(out, c.snapshot.as_str());
    out.push(b'}');
}

fn line_of(input: &[u8], offset: usize) -> usize {
    input[..offset.min(input.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Decodes every record of `input`, writing normalized lines to `out` and one line per
/// failure (`line N: reason`) to `errors`.
pub fn decode_all(
    input: &[u8],
    decoder: &DebeziumDecoder,
    out: &mut impl Write,
    errors: &mut impl Write,
) -> std::io::Result<DecodeCounts> {
    let mut counts = DecodeCounts::default();
    let mut offset = 0;
    let mut line = Vec::with_capacity(1024);
    while offset < input.len() {
        let rest = &input[offset..];
        let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if skip == rest.len() {
            break;
        }
        let start = offset + skip;
        let mut stream =
            serde_json::Deserializer::from_slice(&input[start..]).into_iter::<&RawValue>();
        match stream.next() {
            Some(Ok(raw)) => {
                let end = start + stream.byte_offset();
                match decoder.decode(raw.get().as_bytes()) {
                    Ok(decoded) => {
                        line.clear();
                        normalize(&decoded, &mut line);
                        line.push(b'\n');
                        out.write_all(&line)?;
                        counts.decoded += 1;
                    }
                    Err(e) => {
                        writeln!(errors, "line {}: {e}", line_of(input, start))?;
                        counts.failed += 1;
                    }
                }
                offset = end;
            }
            Some(Err(e)) => {
                writeln!(errors, "line {}: invalid json: {e}", line_of(input, start))?;
                counts.failed += 1;
                // Resume after the line where the bad record starts.
                offset = input[start..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(input.len(), |p| start + p + 1);
            }
            None => break,
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> (String, String, DecodeCounts) {
        let decoder = DebeziumDecoder::new([]).unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let counts = decode_all(input.as_bytes(), &decoder, &mut out, &mut err).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            counts,
        )
    }

    const UPDATE: &str = r#"{"before":null,"after":{"id":1,"name":"alice","price":"42.50"},"source":{"schema":"public","table":"customers","lsn":26417904,"sequence":"[\"26417000\",\"26417904\"]","snapshot":"false","txId":738,"ts_ms":1},"op":"u","ts_ms":2}"#;

    #[test]
    fn json_lines_and_pretty_records_with_errors_in_between() {
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(UPDATE).unwrap(),
        )
        .unwrap();
        let input = format!(
            "{UPDATE}\nnot json at all\n{pretty}\n{{\"key\":{{\"id\":1}},\"value\":null,\"topic\":\"dbz.public.customers\"}}\n"
        );
        let (out, err, counts) = run(&input);
        assert_eq!(
            counts,
            DecodeCounts {
                decoded: 3,
                failed: 1
            }
        );
        assert!(err.starts_with("line 2: invalid json"), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], lines[1],
            "pretty and compact records normalize alike"
        );
        assert_eq!(
            lines[0],
            r#"{"table":"public.customers","op":"u","key":{},"before":null,"after":{"id":1,"name":"alice","price":"42.50"},"version":{"commit_lsn":26417000,"ordinal":26417904},"snapshot":"false"}"#
        );
        assert_eq!(
            lines[2],
            r#"{"table":"public.customers","op":"tombstone","key":{"id":1},"before":null,"after":null,"version":null,"snapshot":null}"#
        );
    }

    #[test]
    fn undecodable_envelope_is_reported_with_its_line() {
        let (_, err, counts) = run("\n\n{\"op\":\"x\",\"after\":{}}\n");
        assert_eq!(counts.failed, 1);
        assert!(err.starts_with("line 3: "), "{err}");
    }
}
