//! The plain-loop ceilings: the same records produced or parsed, aggregated or joined the
//! same way and written with the same encoder as the pipelines, with no runtime around them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::input::{generator_spec, reference_row};
use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::format::json::JsonEncoder;
use crate::sources::generator::GeneratorSource;
use crate::types::{DataType, Field, Schema, SchemaRef, Value};

const WINDOW_MS: i64 = 60_000;

fn output_schema(with_bytes: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("host", DataType::String),
        Field::new("window_start", DataType::Timestamp),
        Field::new("window_end", DataType::Timestamp),
        Field::new("events", DataType::Int),
    ];
    if with_bytes {
        fields.push(Field::new("bytes", DataType::Int));
    }
    fields.push(Field::new("revision", DataType::Int));
    Arc::new(Schema::new(fields))
}

/// Writes the aggregated windows the way the window operator does.
fn write_windows(
    path: &Path,
    windows: HashMap<(Value, i64), (i64, i64)>,
    with_bytes: bool,
) -> anyhow::Result<()> {
    let encoder = JsonEncoder::new(output_schema(with_bytes));
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut buf = Vec::new();
    for ((host, start), (count, bytes)) in windows {
        buf.clear();
        let mut row = vec![
            host,
            Value::Timestamp(start * 1000),
            Value::Timestamp((start + WINDOW_MS) * 1000),
            Value::Int(count),
        ];
        if with_bytes {
            row.push(Value::Int(bytes));
        }
        row.push(Value::Int(0));
        encoder.encode_row(&row, &mut buf);
        buf.push(b'\n');
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(())
}

/// The ceiling for the generator case: generate, count per (host, minute), write.
pub(super) fn generator_ceiling(records: u64, out: &Path) -> anyhow::Result<()> {
    let mut g = GeneratorSource::new("obs", generator_spec(records, 1), 0, 1);
    let mut bufs = ReadBuffers::for_source(&g);
    let mut windows: HashMap<(Value, i64), (i64, i64)> = HashMap::new();
    loop {
        match g.read(&mut bufs, 1024, 0)? {
            ReadStatus::Finished => break,
            _ => {
                for (row, t) in bufs.records.rows() {
                    let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
                    windows.entry((row[1].clone(), start)).or_insert((0, 0)).0 += 1;
                }
                bufs.records.clear();
            }
        }
    }
    write_windows(out, windows, false)
}

#[derive(Deserialize)]
struct Line<'a> {
    ts: &'a str,
    host: &'a str,
    #[allow(dead_code)]
    port: i64,
    #[allow(dead_code)]
    product: &'a str,
    bytes: i64,
}

/// The ceiling for the file case: read lines, parse the fields the pipeline reads with
/// serde, count and sum per (host, minute), write.
pub(super) fn file_ceiling(inputs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut line = Vec::new();
    let mut windows: HashMap<(Value, i64), (i64, i64)> = HashMap::new();
    for input in inputs {
        let mut reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(input)?);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let rec: Line = serde_json::from_slice(line.trim_ascii_end())?;
            let t = chrono::DateTime::parse_from_rfc3339(rec.ts)?.timestamp_millis();
            let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
            let w = windows
                .entry((Value::from(rec.host), start))
                .or_insert((0, 0));
            w.0 += 1;
            w.1 += rec.bytes;
        }
    }
    write_windows(out, windows, true)
}

#[derive(Deserialize)]
struct EnrichLine<'a> {
    ts: &'a str,
    host: &'a str,
    port: i64,
    product: &'a str,
    version: &'a str,
    bytes: i64,
}

/// The ceiling of the enrich case: load the table into a hash map, then parse each line,
/// look the host up and write the joined line.
pub(super) fn enrich_ceiling(rows: u64, input: &Path, out: &Path) -> anyhow::Result<()> {
    let mut table: ahash::AHashMap<String, (String, i64, String)> = ahash::AHashMap::new();
    for i in 0..rows {
        let (host, owner, criticality, site) = reference_row(i);
        table.insert(host, (owner, criticality, site));
    }
    let encoder = JsonEncoder::new(enrich_output_schema());
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    let mut reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(input)?);
    let (mut line, mut buf) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let rec: EnrichLine = serde_json::from_slice(line.trim_ascii_end())?;
        let t = chrono::DateTime::parse_from_rfc3339(rec.ts)?.timestamp_millis();
        let found = table.get(rec.host);
        let row = [
            Value::Timestamp(t * 1000),
            Value::from(rec.host),
            Value::Int(rec.port),
            Value::from(rec.product),
            Value::from(rec.version),
            Value::Int(rec.bytes),
            found.map_or(Value::Null, |f| Value::from(f.0.as_str())),
            found.map_or(Value::Null, |f| Value::Int(f.1)),
            found.map_or(Value::Null, |f| Value::from(f.2.as_str())),
            Value::Bool(found.is_some()),
        ];
        buf.clear();
        encoder.encode_row(&row, &mut buf);
        buf.push(b'\n');
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(())
}

/// The observation columns the pipeline reads, then the table's and `hosts_matched`.
fn enrich_output_schema() -> SchemaRef {
    let mut fields = crate::sources::generator::observation_schema()
        .fields
        .clone();
    fields.extend([
        Field::new("owner", DataType::String),
        Field::new("criticality", DataType::Int),
        Field::new("site", DataType::String),
        Field::new("hosts_matched", DataType::Bool),
    ]);
    Arc::new(Schema::new(fields))
}
