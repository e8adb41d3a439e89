//! The records the cases read, written once for the ceiling and the pipelines alike:
//! generated observations, the observation files, and the enrich case's reference table (a
//! Debezium snapshot) and events.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::sources::generator::{GeneratorSource, GeneratorSpec};

pub(super) const HOSTS: u32 = 1000;
pub(super) const START: &str = "2026-01-01T00:00:00Z";
pub(super) const START_MS: i64 = 1_767_225_600_000;

pub(super) fn generator_spec(records: u64, partitions: u32) -> GeneratorSpec {
    GeneratorSpec {
        count: Some(records),
        hosts: HOSTS,
        skew: 0.5,
        jitter: std::time::Duration::from_secs(2),
        start_ms: Some(START_MS),
        interval: Some(std::time::Duration::from_millis(1)),
        partitions,
        ..GeneratorSpec::default()
    }
}

/// Input files of the file case: records alternate between them (one partition each).
const FILES: usize = 2;

pub(super) fn input_files(dir: &Path) -> Vec<PathBuf> {
    (0..FILES)
        .map(|i| dir.join(format!("observations-{i}.jsonl")))
        .collect()
}

/// Writes `records` observation lines of about 600 bytes (fields the pipeline does not read
/// included, as in real scan data), alternating between the files.
pub(super) fn write_input(records: u64, paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut g = GeneratorSource::new("obs", generator_spec(records, 1), 0, 1);
    let mut bufs = ReadBuffers::for_source(&g);
    let mut outs = paths
        .iter()
        .map(|p| Ok(BufWriter::new(std::fs::File::create(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let banner = "x".repeat(315);
    let mut next = 0;
    loop {
        match g.read(&mut bufs, 1024, 0)? {
            ReadStatus::Finished => break,
            _ => {
                for (row, t) in bufs.records.rows() {
                    let files = outs.len();
                    let out = &mut outs[next];
                    next = (next + 1) % files;
                    let ts = crate::cli::explain::format_time(t);
                    let host = row[1].as_str().unwrap_or_default();
                    let product = row[3].as_str().unwrap_or_default();
                    let version = row[4].as_str().unwrap_or_default();
                    writeln!(
                        out,
                        "{{\"ts\":\"{ts}\",\"host\":\"{host}\",\"port\":{},\"product\":\"{product}\",\
                         \"version\":\"{version}\",\"bytes\":{},\"os\":\"Linux 3.10 - 4.11\",\
                         \"cpe\":\"cpe:/a:{product}:{product}:{version}\",\"tags\":[\"tcp\",\"open\",\"syn-ack\"],\
                         \"scanner\":{{\"name\":\"nmap\",\"version\":\"7.80\",\"args\":\"-sV -O -T4\"}},\
                         \"banner\":\"{banner}\"}}",
                        row[2].as_i64().unwrap_or_default(),
                        row[5].as_i64().unwrap_or_default(),
                    )?;
                }
                bufs.records.clear();
            }
        }
    }
    for mut out in outs {
        out.flush()?;
    }
    Ok(())
}

/// The reference row of host `i` in the enrich case: (host, owner, criticality, site).
pub(super) fn reference_row(i: u64) -> (String, String, i64, String) {
    (
        host_name(i),
        format!("team-{}", i % 97),
        (i % 5) as i64,
        format!("dc-{}", i % 7),
    )
}

pub(super) fn host_name(i: u64) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Writes the reference table as a Debezium snapshot (bare `r` envelopes, no schema).
pub(super) fn write_reference(rows: u64, path: &Path) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for i in 0..rows {
        let (host, owner, criticality, site) = reference_row(i);
        let marker = if i + 1 == rows {
            "last"
        } else if i == 0 {
            "first"
        } else {
            "true"
        };
        writeln!(
            out,
            "{{\"before\":null,\"after\":{{\"host\":\"{host}\",\"owner\":\"{owner}\",\"criticality\":{criticality},\"site\":\"{site}\"}},\
             \"source\":{{\"version\":\"3.6.3.Final\",\"connector\":\"postgresql\",\"name\":\"bench\",\"ts_ms\":{START_MS},\"snapshot\":\"{marker}\",\
             \"db\":\"bench\",\"sequence\":\"[null,\\\"1000\\\"]\",\"schema\":\"public\",\"table\":\"hosts\",\"txId\":1,\"lsn\":1000,\"xmin\":null}},\
             \"transaction\":null,\"op\":\"r\",\"ts_ms\":{START_MS}}}"
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Writes `records` observation lines whose hosts spread over the whole reference table.
pub(super) fn write_enrich_input(records: u64, hosts: u64, path: &Path) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let banner = "x".repeat(330);
    for i in 0..records {
        // SplitMix-style spread, so consecutive events hit unrelated rows.
        let h = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % (hosts + hosts / 10);
        let ts = crate::cli::explain::format_time(START_MS + i as i64);
        writeln!(
            out,
            "{{\"ts\":\"{ts}\",\"host\":\"{}\",\"port\":443,\"product\":\"openssl\",\"version\":\"1.0.2k\",\"bytes\":{},\
             \"os\":\"Linux 3.10 - 4.11\",\"cpe\":\"cpe:/a:openssl:openssl:1.0.2k\",\"tags\":[\"tcp\",\"open\",\"syn-ack\"],\
             \"scanner\":{{\"name\":\"nmap\",\"version\":\"7.80\",\"args\":\"-sV -O -T4\"}},\"banner\":\"{banner}\"}}",
            host_name(h),
            i % 1500
        )?;
    }
    out.flush()?;
    Ok(())
}
