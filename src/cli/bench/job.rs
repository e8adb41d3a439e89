//! The `job` case's workload and its ceiling: the enrichment job compared with Flink in
//! BENCHMARKS.md. Observation lines of about 594 bytes with ten fields, all declared in the
//! pipeline's schema (a 330–390-character payload with escapes and a JSON `tags` array among
//! them), looked up by host in a reference table that arrives as a Debezium snapshot followed
//! by updates and deletes spread over the events' time span.
//!
//! The ceiling is the strongest plain loop for the same output: one thread, a borrowed parse
//! of each line (`serde` into `&str`/`Cow`/`RawValue` fields: the strings it does not look at
//! are checked and copied as their JSON text, as the pipeline carries unread columns), an
//! `ahash` map, and one output buffer reused for every line, written with the same string
//! and timestamp writers as the pipeline's encoder. It loads the reference files itself (parsing the change events), so
//! whole-run figures compare like with like.
//!
//! What the outputs must agree on: with `as_of`, every event joins the row valid at its time,
//! so the pipeline's lines equal the ceiling's exactly. With `lookup`, an event joins the row
//! that is latest when it is processed, which for a host changed while events flow depends
//! on the interleaving; `check` accepts for those hosts any of the host's versions (or the
//! miss after a delete) and compares every other byte exactly.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use ahash::{AHashMap, AHashSet};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::input::{START_MS, host_name};
use super::report::cpu_seconds;
use crate::format::json::write_json_str;
use crate::format::{parse_timestamp, write_timestamp};

/// Updates and deletes that follow the snapshot, per 100,000 reference rows.
pub(super) const UPDATES_PER_100K: u64 = 10_000;
pub(super) const DELETES_PER_100K: u64 = 1_000;

const PRODUCTS: [(&str, &str, &str); 4] = [
    ("openssl", "1.0.2k", "cpe:/a:openssl:openssl:1.0.2k"),
    ("nginx", "1.18.0", "cpe:/a:nginx:nginx:1.18.0"),
    ("openssh", "7.4p1", "cpe:/a:openbsd:openssh:7.4p1"),
    ("apache httpd", "2.4.6", "cpe:/a:apache:http_server:2.4.6"),
];
const PORTS: [i64; 5] = [22, 80, 443, 8080, 8443];
const OSES: [&str; 3] = ["Linux 3.10 - 4.11", "Linux 5.0 - 5.4", "FreeBSD 11.0"];

/// The pipeline's schema of the observations (all ten fields).
pub(super) const SCHEMA: &str = "{ts: timestamp, host: string, port: int, product: string, version: string, bytes: int, os: string, cpe: string, tags: json, payload: string}";

/// The reference row of host `i` before any change: (owner, criticality, site).
fn snapshot_row(i: u64) -> (String, i64, String) {
    (
        format!("team-{}", i % 97),
        (i % 5) as i64,
        format!("dc-{}", i % 7),
    )
}

/// A change after the snapshot: at `ts_ms`, host `host` gets `row` (`None`: deleted).
struct Change {
    ts_ms: i64,
    host: u64,
    row: Option<(String, i64, String)>,
}

/// The changes that follow a snapshot of `rows` rows, in commit order, spread evenly over
/// the time span of `records` events (one per millisecond from `START_MS`).
fn changes(rows: u64, records: u64) -> Vec<Change> {
    let updates = UPDATES_PER_100K * rows / 100_000;
    let deletes = DELETES_PER_100K * rows / 100_000;
    let total = updates + deletes;
    (0..total)
        .map(|j| {
            let ts_ms = START_MS + ((j + 1) * records / (total + 1)) as i64;
            // Every eleventh change is a delete; the hosts are spread over the table.
            let host = (j.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17) % rows;
            let row = (!j.is_multiple_of(11)).then(|| {
                (
                    format!("team-{}-moved", (host + j) % 89),
                    ((host + j) % 5) as i64,
                    format!("dc-{}", (host + j) % 7),
                )
            });
            Change { ts_ms, host, row }
        })
        .collect()
}

fn row_json(host: u64, row: &(String, i64, String)) -> String {
    format!(
        "{{\"host\":\"{}\",\"owner\":\"{}\",\"criticality\":{},\"site\":\"{}\"}}",
        host_name(host),
        row.0,
        row.1,
        row.2
    )
}

/// Writes the reference table: `snapshot` (a Debezium snapshot of `rows` rows) and `stream`
/// (the updates and deletes that follow it, with their commit LSNs and times).
pub(super) fn write_reference(
    rows: u64,
    records: u64,
    snapshot: &Path,
    stream: &Path,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(snapshot)?);
    for i in 0..rows {
        let marker = match i {
            _ if i + 1 == rows => "last",
            0 => "first",
            _ => "true",
        };
        writeln!(
            out,
            "{{\"before\":null,\"after\":{},\"source\":{{\"version\":\"3.6.3.Final\",\"connector\":\"postgresql\",\"name\":\"bench\",\"ts_ms\":{START_MS},\"snapshot\":\"{marker}\",\"db\":\"bench\",\"sequence\":\"[null,\\\"1000\\\"]\",\"schema\":\"public\",\"table\":\"hosts\",\"txId\":1,\"lsn\":1000,\"xmin\":null}},\"transaction\":null,\"op\":\"r\",\"ts_ms\":{START_MS}}}",
            row_json(i, &snapshot_row(i))
        )?;
    }
    out.flush()?;
    let mut out = BufWriter::new(std::fs::File::create(stream)?);
    let mut current: AHashMap<u64, Option<(String, i64, String)>> = AHashMap::new();
    for (j, c) in changes(rows, records).into_iter().enumerate() {
        let lsn = 2000 + 100 * j as u64;
        let before = current
            .get(&c.host)
            .cloned()
            .unwrap_or_else(|| Some(snapshot_row(c.host)));
        let before_json = before
            .as_ref()
            .map_or("null".to_string(), |r| row_json(c.host, r));
        let after_json = c
            .row
            .as_ref()
            .map_or("null".to_string(), |r| row_json(c.host, r));
        // An update of a deleted host is an insert again.
        let op = match (&before, &c.row) {
            (_, None) => "d",
            (None, Some(_)) => "c",
            (Some(_), Some(_)) => "u",
        };
        writeln!(
            out,
            "{{\"before\":{before_json},\"after\":{after_json},\"source\":{{\"version\":\"3.6.3.Final\",\"connector\":\"postgresql\",\"name\":\"bench\",\"ts_ms\":{ts},\"snapshot\":\"false\",\"db\":\"bench\",\"sequence\":\"[\\\"{lsn}\\\",\\\"{lsn}\\\"]\",\"schema\":\"public\",\"table\":\"hosts\",\"txId\":{tx},\"lsn\":{lsn},\"xmin\":null}},\"transaction\":null,\"op\":\"{op}\",\"ts_ms\":{ts}}}",
            ts = c.ts_ms,
            tx = 2 + j,
        )?;
        current.insert(c.host, c.row);
    }
    out.flush()?;
    Ok(())
}

/// Writes `records` observation lines (about 594 bytes each) whose hosts spread over a table
/// of `rows` rows and one tenth more (those miss).
pub(super) fn write_events(records: u64, rows: u64, path: &Path) -> anyhow::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let filler = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(12);
    let mut ts = Vec::with_capacity(32);
    for i in 0..records {
        // SplitMix-style spread, so consecutive events hit unrelated rows.
        let mix = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = (mix >> 11) % (rows + rows / 10);
        let (product, version, cpe) = PRODUCTS[(mix >> 3) as usize % PRODUCTS.len()];
        ts.clear();
        write_timestamp((START_MS + i as i64) * 1000, &mut ts);
        // 330–390 characters, escapes included (a banner's line breaks and quotes).
        let len = 330 + (mix >> 40) as usize % 61;
        let head = format!(
            "HTTP/1.1 200 OK\\r\\nServer: {product}/{version}\\r\\nX-Scan: \\\"{}\\\"\\r\\n",
            i % 1000
        );
        let payload = format!("{head}{}", &filler[..len - head.len()]);
        writeln!(
            out,
            "{{\"ts\":\"{}\",\"host\":\"{}\",\"port\":{},\"product\":\"{product}\",\"version\":\"{version}\",\"bytes\":{},\"os\":\"{}\",\"cpe\":\"{cpe}\",\"tags\":[\"tcp\",\"open\",\"syn-ack\",\"service\"],\"payload\":\"{payload}\"}}",
            std::str::from_utf8(&ts)?,
            host_name(h),
            PORTS[(mix >> 7) as usize % PORTS.len()],
            (i % 1500) * 7,
            OSES[(mix >> 13) as usize % OSES.len()],
        )?;
    }
    out.flush()?;
    Ok(())
}

/// An observation as the ceiling reads it: the fields it computes with typed, the others
/// kept as their checked JSON text and copied (what the pipeline does with columns no
/// operator reads).
#[derive(Deserialize)]
struct Event<'a> {
    ts: &'a str,
    #[serde(borrow)]
    host: Cow<'a, str>,
    port: i64,
    #[serde(borrow)]
    product: &'a RawValue,
    #[serde(borrow)]
    version: &'a RawValue,
    bytes: i64,
    #[serde(borrow)]
    os: &'a RawValue,
    #[serde(borrow)]
    cpe: &'a RawValue,
    #[serde(borrow)]
    tags: &'a RawValue,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct RefRow<'a> {
    #[serde(borrow)]
    host: Cow<'a, str>,
    #[serde(borrow)]
    owner: Cow<'a, str>,
    criticality: i64,
    #[serde(borrow)]
    site: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RefSource {
    ts_ms: i64,
}

#[derive(Deserialize)]
struct RefEnvelope<'a> {
    #[serde(borrow)]
    before: Option<RefRow<'a>>,
    #[serde(borrow)]
    after: Option<RefRow<'a>>,
    source: RefSource,
    op: &'a str,
}

/// A reference row's joined part as the output writes it: `,"owner":…,"site":…,
/// "hosts_matched":true}` (or the miss's nulls).
fn joined_suffix(row: Option<(&str, i64, &str)>, out: &mut Vec<u8>) {
    match row {
        Some((owner, criticality, site)) => {
            out.extend_from_slice(b",\"owner\":");
            write_json_str(owner, out);
            out.extend_from_slice(b",\"criticality\":");
            out.extend_from_slice(itoa::Buffer::new().format(criticality).as_bytes());
            out.extend_from_slice(b",\"site\":");
            write_json_str(site, out);
            out.extend_from_slice(b",\"hosts_matched\":true}");
        }
        None => out.extend_from_slice(
            b",\"owner\":null,\"criticality\":null,\"site\":null,\"hosts_matched\":false}",
        ),
    }
}

/// How events see the table: the latest rows, or the rows valid at the event's time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Lookup,
    AsOf,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Lookup => "lookup",
            Mode::AsOf => "as_of",
        }
    }
}

/// The versions of one host: (valid from, the row's pre-encoded joined suffix or `None`
/// for deleted), oldest first.
pub(super) type Versions = Vec<(i64, Option<Box<[u8]>>)>;

/// Reads the reference files into host → versions (suffixes encoded once at load, as a
/// plain loop would keep the bytes it writes).
pub(super) fn load_reference(
    snapshot: &Path,
    stream: &Path,
) -> anyhow::Result<AHashMap<Box<str>, Versions>> {
    let mut table: AHashMap<Box<str>, Versions> = AHashMap::with_capacity(1 << 17);
    let mut line = Vec::with_capacity(1024);
    for (path, from_start) in [(snapshot, true), (stream, false)] {
        let mut reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(path)?);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let env: RefEnvelope = serde_json::from_slice(line.trim_ascii_end())?;
            let valid_from = if from_start {
                i64::MIN
            } else {
                env.source.ts_ms
            };
            let (host, suffix) = match (env.op, &env.after, &env.before) {
                ("d", _, Some(before)) => (before.host.as_ref(), None),
                (_, Some(after), _) => {
                    let mut s = Vec::with_capacity(80);
                    joined_suffix(Some((&after.owner, after.criticality, &after.site)), &mut s);
                    (after.host.as_ref(), Some(s.into_boxed_slice()))
                }
                _ => anyhow::bail!("a reference change without its row"),
            };
            table
                .entry(host.into())
                .or_default()
                .push((valid_from, suffix));
        }
    }
    Ok(table)
}

/// The ceiling: loads the reference files, then joins every event line of `events` and
/// writes the joined lines to `out`. Returns the CPU seconds of the events alone (after the
/// load: the loop's steady state).
pub(super) fn ceiling(
    mode: Mode,
    snapshot: &Path,
    stream: &Path,
    events: &Path,
    out: &Path,
) -> anyhow::Result<f64> {
    let table = load_reference(snapshot, stream)?;
    let loaded = cpu_seconds();
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(events)?);
    let (mut line, mut buf) = (Vec::with_capacity(1024), Vec::with_capacity(2048));
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        buf.clear();
        join_line(mode, &table, line.trim_ascii_end(), &mut buf)?;
        buf.push(b'\n');
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(cpu_seconds() - loaded)
}

/// One observation `line` joined with the `table` as the ceiling writes it (without its
/// newline), appended to `buf`.
pub(super) fn join_line(
    mode: Mode,
    table: &AHashMap<Box<str>, Versions>,
    line: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let e: Event = serde_json::from_slice(line)?;
    let micros = parse_timestamp(e.ts).ok_or_else(|| anyhow::anyhow!("bad timestamp {}", e.ts))?;
    let versions = table.get(e.host.as_ref());
    let found = versions.and_then(|v| match mode {
        Mode::Lookup => v.last(),
        Mode::AsOf => {
            let t = micros.div_euclid(1000);
            v.iter().rev().find(|(from, _)| *from <= t)
        }
    });
    buf.extend_from_slice(b"{\"ts\":\"");
    write_timestamp(micros, buf);
    buf.extend_from_slice(b"\",\"host\":");
    write_json_str(&e.host, buf);
    buf.extend_from_slice(b",\"port\":");
    buf.extend_from_slice(itoa::Buffer::new().format(e.port).as_bytes());
    buf.extend_from_slice(b",\"product\":");
    buf.extend_from_slice(e.product.get().as_bytes());
    buf.extend_from_slice(b",\"version\":");
    buf.extend_from_slice(e.version.get().as_bytes());
    buf.extend_from_slice(b",\"bytes\":");
    buf.extend_from_slice(itoa::Buffer::new().format(e.bytes).as_bytes());
    buf.extend_from_slice(b",\"os\":");
    buf.extend_from_slice(e.os.get().as_bytes());
    buf.extend_from_slice(b",\"cpe\":");
    buf.extend_from_slice(e.cpe.get().as_bytes());
    buf.extend_from_slice(b",\"tags\":");
    buf.extend_from_slice(e.tags.get().as_bytes());
    buf.extend_from_slice(b",\"payload\":");
    buf.extend_from_slice(e.payload.get().as_bytes());
    match found.and_then(|(_, s)| s.as_deref()) {
        Some(suffix) => buf.extend_from_slice(suffix),
        None => joined_suffix(None, buf),
    }
    Ok(())
}

/// Hosts whose row changed after the snapshot.
fn changed_hosts(rows: u64, records: u64) -> AHashSet<String> {
    changes(rows, records)
        .into_iter()
        .map(|c| host_name(c.host))
        .collect()
}

/// The line with the joined part of a changed host replaced by a marker, after checking
/// that the part is one the host had (`Err` names the line otherwise).
fn normalized<'l>(
    line: &'l str,
    changed: &AHashSet<String>,
    suffixes: &AHashMap<&str, (AHashSet<&[u8]>, bool)>,
) -> Result<Cow<'l, str>, String> {
    let host = line
        .split_once(",\"host\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(h, _)| h)
        .ok_or_else(|| format!("no host in {line}"))?;
    if !changed.contains(host) {
        return Ok(Cow::Borrowed(line));
    }
    let at = line
        .rfind(",\"owner\":")
        .ok_or_else(|| format!("no joined columns in {line}"))?;
    let allowed = suffixes.get(host).is_some_and(|(rows, deleted)| {
        rows.contains(&line.as_bytes()[at..])
            || (*deleted && line[at..].ends_with("\"hosts_matched\":false}"))
    });
    if !allowed {
        return Err(format!("a version the host never had: {line}"));
    }
    Ok(Cow::Owned(format!(
        "{}<one of the host's versions>",
        &line[..at]
    )))
}

/// Compares a pipeline's output with the ceiling's (see the module docs); `Err` says how
/// they differ.
pub(super) fn check(
    mode: Mode,
    rows: u64,
    records: u64,
    snapshot: &Path,
    stream: &Path,
    ceiling_out: &Path,
    pipeline_out: &Path,
) -> anyhow::Result<Result<(), String>> {
    let read = |p: &Path| -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(p)?;
        Ok(text.lines().map(str::to_string).collect())
    };
    let (want, got) = (read(ceiling_out)?, read(pipeline_out)?);
    if want.len() != got.len() {
        return Ok(Err(format!(
            "{} lines, the ceiling wrote {}",
            got.len(),
            want.len()
        )));
    }
    let (want, got) = match mode {
        Mode::AsOf => (want, got),
        Mode::Lookup => {
            let changed = changed_hosts(rows, records);
            let table = load_reference(snapshot, stream)?;
            // Per host, the joined parts of its versions and whether it was ever deleted.
            let mut suffixes: AHashMap<&str, (AHashSet<&[u8]>, bool)> = AHashMap::new();
            for (host, versions) in &table {
                let (set, deleted) = suffixes.entry(host.as_ref()).or_default();
                set.extend(versions.iter().filter_map(|(_, s)| s.as_deref()));
                *deleted = versions.iter().any(|(_, s)| s.is_none());
            }
            let norm = |lines: Vec<String>| -> Result<Vec<String>, String> {
                lines
                    .iter()
                    .map(|l| normalized(l, &changed, &suffixes).map(Cow::into_owned))
                    .collect()
            };
            match (norm(want), norm(got)) {
                (Ok(w), Ok(g)) => (w, g),
                (Err(e), _) => return Ok(Err(format!("the ceiling's output: {e}"))),
                (_, Err(e)) => return Ok(Err(e)),
            }
        }
    };
    let (mut want, mut got) = (want, got);
    want.sort_unstable();
    got.sort_unstable();
    Ok(match want.iter().zip(&got).find(|(w, g)| w != g) {
        None => Ok(()),
        Some((w, g)) => Err(format!("first difference: {g}\n  the ceiling: {w}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ceiling joins as the module docs say, on a small table: the pipeline's rules
    /// (as-of validity from the commit time, deletes, misses) are what `check` compares.
    #[test]
    fn ceiling_joins_the_versions_valid_at_each_event() {
        let dir = tempfile::tempdir().unwrap();
        let (snap, stream, events) = (
            dir.path().join("s.jsonl"),
            dir.path().join("c.jsonl"),
            dir.path().join("e.jsonl"),
        );
        let (rows, records) = (1000, 5000);
        write_reference(rows, records, &snap, &stream).unwrap();
        write_events(records, rows, &events).unwrap();
        let text = std::fs::read_to_string(&events).unwrap();
        let mean = text.len() as f64 / records as f64;
        assert!((585.0..605.0).contains(&mean), "{mean} bytes per line");
        for mode in [Mode::Lookup, Mode::AsOf] {
            let out = dir.path().join(format!("{}.jsonl", mode.name()));
            ceiling(mode, &snap, &stream, &events, &out).unwrap();
            let lines = std::fs::read_to_string(&out).unwrap();
            assert_eq!(lines.lines().count(), records as usize);
            for l in lines.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
            // Equal to itself, and a changed joined value is caught.
            assert_eq!(
                check(mode, rows, records, &snap, &stream, &out, &out).unwrap(),
                Ok(())
            );
            let broken = dir.path().join("broken.jsonl");
            std::fs::write(
                &broken,
                lines.replacen("\"owner\":\"team-", "\"owner\":\"tea-", 1),
            )
            .unwrap();
            assert!(
                check(mode, rows, records, &snap, &stream, &out, &broken)
                    .unwrap()
                    .is_err()
            );
        }
        // As of their times, some events see changed rows and some see deletes.
        let as_of = std::fs::read_to_string(dir.path().join("as_of.jsonl")).unwrap();
        assert!(as_of.contains("-moved"));
        let lookup = std::fs::read_to_string(dir.path().join("lookup.jsonl")).unwrap();
        assert!(lookup.matches("-moved").count() > as_of.matches("-moved").count());
    }
}
