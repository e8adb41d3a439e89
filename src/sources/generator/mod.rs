//! The generator source: synthetic security observations (`host` has `port` open running
//! `product` `version`), at a given rate or as fast as possible, with skewed keys,
//! out-of-order event times and scheduled quiet periods, so that the multi-speed problem can
//! be shown and benchmarked without any external service.
//!
//! Record `i` is a pure function of `(seed, i)`: a restarted generator seeks by count alone.
//! Event-time offsets advance by `interval` per record and skip every quiet period; a record
//! is emitted when the clock reaches its offset (paced) or at once (unpaced).

use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;

use crate::dataflow::{ConnectorPosition, Position, SourcePosition};
use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::error::RunError;
use crate::types::{DataType, Field, Schema, SchemaRef, Value};

pub mod config;
pub use config::GeneratorConfig;

/// No records in `[at, at + duration)` (offsets from the first record's event time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuietPeriod {
    pub at: Duration,
    pub duration: Duration,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSpec {
    /// Records in total (over all partitions); `None` = unbounded.
    pub count: Option<u64>,
    /// Records per second of processing time; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Event-time step between consecutive records (defaults to `1 / rate`, else 1 ms).
    pub interval: Option<Duration>,
    /// Number of distinct hosts (the key space).
    pub hosts: u32,
    /// Zipf exponent of the host distribution: 0 = uniform, 1 = classic Zipf.
    pub skew: f64,
    /// Event times are moved back by a uniform random amount up to this.
    pub jitter: Duration,
    /// Event time of the first record; `None` = the clock at start.
    pub start_ms: Option<i64>,
    pub quiet: Vec<QuietPeriod>,
    pub partitions: u32,
    pub seed: u64,
    /// What hosts run, instead of the built-in list; adds a `vendor` column.
    pub vocabulary: Option<Arc<[VocabularyEntry]>>,
}

/// One product a host can run, with its relative frequency.
#[derive(Clone, Debug, PartialEq)]
pub struct VocabularyEntry {
    pub vendor: CompactString,
    pub product: CompactString,
    pub version: CompactString,
    pub port: i64,
    pub weight: u32,
}

/// Reads a vocabulary CSV with the header `vendor,product,version,port,weight` (no quoting);
/// errors name the line.
pub fn load_vocabulary(path: &std::path::Path) -> Result<Vec<VocabularyEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "vendor,product,version,port,weight" => {}
        _ => {
            return Err(format!(
                "{}:1: the header must be `vendor,product,version,port,weight`",
                path.display()
            ));
        }
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| format!("{}:{}: {what}", path.display(), i + 1);
        if f.len() != 5 {
            return Err(bad("expected 5 fields: vendor,product,version,port,weight"));
        }
        let port = f[3].parse().map_err(|_| bad("port is not an integer"))?;
        let weight: u32 = f[4]
            .parse()
            .map_err(|_| bad("weight is not a non-negative integer"))?;
        out.push(VocabularyEntry {
            vendor: f[0].into(),
            product: f[1].into(),
            version: f[2].into(),
            port,
            weight,
        });
    }
    if out.iter().all(|e| e.weight == 0) {
        return Err(format!(
            "{}: no entry with a positive weight",
            path.display()
        ));
    }
    Ok(out)
}

impl Default for GeneratorSpec {
    fn default() -> GeneratorSpec {
        GeneratorSpec {
            count: None,
            rate: None,
            interval: None,
            hosts: 1000,
            skew: 0.0,
            jitter: Duration::ZERO,
            start_ms: None,
            quiet: Vec::new(),
            partitions: 1,
            seed: 1,
            vocabulary: None,
        }
    }
}

/// Products and versions seen in real scans (nmap service detection and NVD CPE names).
const PRODUCTS: &[(&str, &str, i64)] = &[
    ("openssh", "7.4", 22),
    ("openssh", "5.9p1", 22),
    ("openssl", "1.0.2k", 443),
    ("apache_http_server", "2.4.29", 80),
    ("apache_http_server", "2.2.22", 80),
    ("nginx", "1.14.0", 443),
    ("mysql", "5.7.16", 3306),
    ("postgresql", "9.6.2", 5432),
    ("exim", "4.92", 25),
    ("postfix", "3.3.0", 25),
    ("vsftpd", "2.3.4", 21),
    ("proftpd", "1.3.5", 21),
    ("dnsmasq", "2.78", 53),
    ("bind", "9.11.4", 53),
    ("memcached", "1.4.25", 11211),
    ("redis", "4.0.9", 6379),
    ("tomcat", "8.5.32", 8080),
    ("samba", "4.7.6", 445),
    ("dovecot", "2.2.33", 143),
    ("squid", "3.5.27", 3128),
];

/// The schema every generator produces.
pub fn observation_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp),
        Field::new("host", DataType::String),
        Field::new("port", DataType::Int),
        Field::new("product", DataType::String),
        Field::new("version", DataType::String),
        Field::new("bytes", DataType::Int),
    ]))
}

/// The schema of a generator with a vocabulary: `vendor` after `port`, and last
/// `observation_id`, the record's number in the generator's sequence, which identifies an
/// observation (host, time and port together need not be unique).
pub fn vendor_observation_schema() -> SchemaRef {
    let mut fields = observation_schema().fields.clone();
    fields.insert(3, Field::new("vendor", DataType::String));
    fields.push(Field::new("observation_id", DataType::Int));
    Arc::new(Schema::new(fields))
}

/// The schema a generator with `spec` produces.
pub fn schema_for(spec: &GeneratorSpec) -> SchemaRef {
    if spec.vocabulary.is_some() {
        vendor_observation_schema()
    } else {
        observation_schema()
    }
}

/// SplitMix64: a tiny, well-known mixing function; record `i`'s randomness is `mix(seed, i)`
/// so output is stable across platforms and crate versions.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

struct Partition {
    label: String,
    /// The partition's first record index (its number).
    first: u64,
    /// Next record index of this partition (global numbering).
    next: u64,
}

/// A generator source instance.
/// Where a generator partition is: its next record (the index in the whole sequence) and
/// the event time the sequence started at (taken from the clock when the file sets none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorPosition {
    pub next: u64,
    #[serde(default)]
    pub start_ms: Option<i64>,
}

/// No run generates this many records; a position beyond is not one a run wrote.
const MAX_RECORD: u64 = 1 << 62;

impl ConnectorPosition for GeneratorPosition {
    const KIND: &'static str = "generator";
    const VERSION: u32 = 1;
}

pub struct GeneratorSource {
    node: String,
    spec: GeneratorSpec,
    schema: SchemaRef,
    hosts: Vec<CompactString>,
    /// Cumulative Zipf distribution over hosts.
    cdf: Vec<f64>,
    /// (vendor, product, version, port); vendor only with a vocabulary.
    products: Vec<(Option<CompactString>, CompactString, CompactString, i64)>,
    /// Cumulative weights of `products`.
    product_cdf: Vec<u64>,
    interval_us: f64,
    partitions: Vec<Partition>,
    next_partition: usize,
    start_ms: Option<i64>,
    started_at_ms: Option<i64>,
    /// The record pacing counts from (after a restore, where the run resumed).
    paced_from: u64,
}

impl GeneratorSource {
    /// Instance `instance` of `parallelism` generates the partitions `p` with
    /// `p % parallelism == instance`.
    pub fn new(
        node: &str,
        spec: GeneratorSpec,
        instance: usize,
        parallelism: usize,
    ) -> GeneratorSource {
        let hosts: Vec<CompactString> = (0..spec.hosts.max(1))
            .map(|i| {
                compact_str::format_compact!(
                    "10.{}.{}.{}",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect();
        let weights: Vec<f64> = (1..=hosts.len())
            .map(|r| 1.0 / (r as f64).powf(spec.skew))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let interval_us = match (spec.interval, spec.rate) {
            (Some(d), _) => d.as_micros() as f64,
            (None, Some(r)) if r > 0.0 => 1_000_000.0 / r,
            _ => 1_000.0,
        };
        let partitions = (0..spec.partitions.max(1))
            .filter(|p| *p as usize % parallelism.max(1) == instance)
            .map(|p| Partition {
                label: format!("{node}-{p}"),
                first: u64::from(p),
                next: u64::from(p),
            })
            .collect();
        let (products, weights): (Vec<_>, Vec<u64>) = match &spec.vocabulary {
            Some(vocabulary) => vocabulary
                .iter()
                .map(|e| {
                    (
                        (
                            Some(e.vendor.clone()),
                            e.product.clone(),
                            e.version.clone(),
                            e.port,
                        ),
                        u64::from(e.weight),
                    )
                })
                .unzip(),
            None => PRODUCTS
                .iter()
                .map(|(p, v, port)| ((None, (*p).into(), (*v).into(), *port), 1))
                .unzip(),
        };
        let mut acc = 0u64;
        let product_cdf = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        GeneratorSource {
            node: node.to_string(),
            schema: schema_for(&spec),
            hosts,
            cdf,
            products,
            product_cdf,
            interval_us,
            partitions,
            next_partition: 0,
            start_ms: spec.start_ms,
            started_at_ms: None,
            paced_from: 0,
            spec,
        }
    }

    /// Event-time offset (ms from the first record) of record `i`, skipping quiet periods.
    fn offset_ms(&self, i: u64) -> i64 {
        let mut offset = (i as f64 * self.interval_us / 1000.0) as i64;
        for q in &self.spec.quiet {
            if offset >= q.at.as_millis() as i64 {
                offset = offset.saturating_add(q.duration.as_millis() as i64);
            }
        }
        offset
    }

    /// Processing-time offset (ms from the start) at which record `i` is due when paced:
    /// `rate` records per second, quiet periods scaled by the same factor, so with an
    /// `interval` other than `1 / rate` event time runs faster (or slower) than the clock.
    fn due_offset_ms(&self, i: u64) -> i64 {
        let Some(rate) = self.spec.rate.filter(|r| *r > 0.0) else {
            return self.offset_ms(i);
        };
        let per_record_us = 1_000_000.0 / rate;
        let speed = per_record_us / self.interval_us.max(f64::MIN_POSITIVE);
        (self.offset_ms(i) as f64 * speed) as i64
    }

    fn exhausted(&self, i: u64) -> bool {
        self.spec.count.is_some_and(|c| i >= c)
    }

    fn push_record(&self, i: u64, start_ms: i64, out: &mut ReadBuffers) {
        let r = mix(self.spec.seed ^ mix(i));
        let u = unit(r);
        let host = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.hosts.len() - 1);
        let r2 = mix(r);
        let total = self.product_cdf.last().copied().unwrap_or(1).max(1);
        let pick = r2 % total;
        let (vendor, product, version, port) =
            &self.products[self.product_cdf.partition_point(|&c| c <= pick)];
        let jitter_ms = self.spec.jitter.as_millis() as u64;
        let jitter = if jitter_ms == 0 {
            0
        } else {
            (mix(r2) % (jitter_ms + 1)) as i64
        };
        let event_time = start_ms
            .saturating_add(self.offset_ms(i))
            .saturating_sub(jitter);
        let batch = &mut out.records;
        batch.push_value(Value::Timestamp(event_time.saturating_mul(1000)));
        batch.push_value(Value::Str(self.hosts[host].clone()));
        batch.push_value(Value::Int(*port));
        if let Some(v) = vendor {
            batch.push_value(Value::Str(v.clone()));
        }
        batch.push_value(Value::Str(product.clone()));
        batch.push_value(Value::Str(version.clone()));
        batch.push_value(Value::Int((r2 >> 48) as i64 % 1500 + 40));
        if self.spec.vocabulary.is_some() {
            batch.push_value(Value::Int(i as i64));
        }
        batch.finish_row(event_time);
    }
}

impl Source for GeneratorSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn partitions(&self) -> Vec<String> {
        self.partitions.iter().map(|p| p.label.clone()).collect()
    }

    fn read(
        &mut self,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<ReadStatus, RunError> {
        let start_ms = *self.start_ms.get_or_insert(now_ms);
        let started_at = *self.started_at_ms.get_or_insert(now_ms);
        let stride = u64::from(self.spec.partitions.max(1));
        let mut earliest_due: Option<i64> = None;
        for k in 0..self.partitions.len() {
            let p = (self.next_partition + k) % self.partitions.len();
            let first = self.partitions[p].next;
            if self.exhausted(first) {
                continue;
            }
            let mut i = first;
            let mut n = 0;
            while n < max_records && !self.exhausted(i) {
                if self.spec.rate.is_some() {
                    let due = started_at
                        .saturating_add(self.due_offset_ms(i))
                        .saturating_sub(self.due_offset_ms(self.paced_from));
                    if due > now_ms {
                        earliest_due = Some(earliest_due.map_or(due, |d: i64| d.min(due)));
                        if n == 0 {
                            // Its next record is not due yet (or it is in a quiet period).
                            out.caught_up.push(p);
                        }
                        break;
                    }
                }
                self.push_record(i, start_ms, out);
                i += stride;
                n += 1;
            }
            self.partitions[p].next = i;
            if n > 0 {
                self.next_partition = (p + 1) % self.partitions.len();
                for q in (0..self.partitions.len()).filter(|&q| q != p) {
                    let next = self.partitions[q].next;
                    let due = self.spec.rate.is_none()
                        || started_at + self.due_offset_ms(next)
                            - self.due_offset_ms(self.paced_from)
                            <= now_ms;
                    if !self.exhausted(next) && due {
                        out.ready.push(q);
                    }
                }
                return Ok(ReadStatus::Data { partition: p });
            }
            if self.exhausted(i) {
                return Ok(ReadStatus::PartitionEnded { partition: p });
            }
        }
        match earliest_due {
            Some(retry_at_ms) => Ok(ReadStatus::Pending { retry_at_ms }),
            None => Ok(ReadStatus::Finished),
        }
    }

    fn positions(&self) -> Vec<SourcePosition> {
        self.partitions
            .iter()
            .map(|p| SourcePosition {
                source: self.node.clone(),
                partition: p.label.clone(),
                position: Position::of(&GeneratorPosition {
                    next: p.next,
                    start_ms: self.start_ms,
                }),
            })
            .collect()
    }

    fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError> {
        let stride = u64::from(self.spec.partitions.max(1));
        for p in &mut self.partitions {
            let at = match positions
                .iter()
                .find(|sp| sp.source == self.node && sp.partition == p.label)
            {
                Some(sp) => {
                    let at = sp
                        .position
                        .decode::<GeneratorPosition>()
                        .map_err(|e| RunError::restore(self.node.clone(), e))?;
                    // A partition generates every `stride`-th record from its first.
                    if at.next < p.first
                        || (at.next - p.first) % stride != 0
                        || at.next >= MAX_RECORD
                    {
                        return Err(RunError::restore(
                            self.node.clone(),
                            format!(
                                "position {} of partition {} is not one of its records",
                                sp.position, p.label
                            ),
                        ));
                    }
                    Some((at.next, at.start_ms))
                }
                None => None,
            };
            p.next = at.map_or(p.first, |(next, _)| next);
            if let Some((_, Some(start))) = at {
                // The same event times as before the restart.
                self.start_ms = Some(start);
            }
        }
        // Pacing goes on from here, not from the first record.
        self.paced_from = self.partitions.iter().map(|p| p.next).min().unwrap_or(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::types::Batch;

    fn buffers(s: &GeneratorSource) -> ReadBuffers {
        ReadBuffers::for_source(s)
    }

    fn drain(s: &mut GeneratorSource, now: i64) -> Batch {
        let mut out = buffers(s);
        while let ReadStatus::Data { .. } | ReadStatus::PartitionEnded { .. } =
            s.read(&mut out, 64, now).unwrap()
        {}
        out.records
    }

    #[test]
    fn same_seed_same_records_and_seek_resumes() {
        let spec = GeneratorSpec {
            count: Some(500),
            partitions: 2,
            jitter: Duration::from_millis(50),
            skew: 1.0,
            start_ms: Some(0),
            ..GeneratorSpec::default()
        };
        let mut a = GeneratorSource::new("g", spec.clone(), 0, 1);
        let all = drain(&mut a, 0);
        assert_eq!(all.len(), 500);
        let mut b = GeneratorSource::new("g", spec.clone(), 0, 1);
        assert_eq!(drain(&mut b, 0), all);

        // Read part, note positions, resume in a fresh instance: the union is the same set.
        let mut c = GeneratorSource::new("g", spec.clone(), 0, 1);
        let mut out = buffers(&c);
        c.read(&mut out, 100, 0).unwrap();
        let pos = c.positions();
        let mut d = GeneratorSource::new("g", spec, 0, 1);
        d.seek(&pos).unwrap();
        let rest = drain(&mut d, 0);
        assert_eq!(out.records.len() + rest.len(), 500);
    }

    /// A position that is not one of the partition's records, or whose times run past any
    /// event time, is refused or saturates: it never makes the source fail later.
    #[test]
    fn a_position_that_is_not_one_of_the_partitions_records_is_refused() {
        let spec = GeneratorSpec {
            count: None,
            partitions: 2,
            start_ms: Some(0),
            interval: Some(Duration::from_secs(3600)),
            ..GeneratorSpec::default()
        };
        let mut g = GeneratorSource::new("g", spec.clone(), 0, 1);
        let mut pos = g.positions();
        let at =
            |next: u64, start_ms: Option<i64>| Position::of(&GeneratorPosition { next, start_ms });
        for bad in [3, 1 << 62, u64::MAX] {
            pos[0].position = at(bad, None);
            let e = g.seek(&pos).unwrap_err().to_string();
            assert!(e.contains("not one of its records"), "{bad}: {e}");
        }
        pos[0].position = at(1 << 61, Some(i64::MAX));
        g.seek(&pos).unwrap();
        let mut out = buffers(&g);
        g.read(&mut out, 10, 0).unwrap();
        assert!(!out.records.is_empty());
    }

    #[test]
    fn quiet_period_leaves_a_gap_in_event_time() {
        let spec = GeneratorSpec {
            count: Some(200),
            interval: Some(Duration::from_secs(1)),
            start_ms: Some(0),
            quiet: vec![QuietPeriod {
                at: Duration::from_secs(10),
                duration: Duration::from_secs(120),
            }],
            ..GeneratorSpec::default()
        };
        let mut g = GeneratorSource::new("g", spec, 0, 1);
        let times: Vec<i64> = drain(&mut g, 0).event_times().to_vec();
        assert!(times.iter().all(|&t| !(10_000..130_000).contains(&t)));
        assert_eq!(times[9], 9_000);
        assert_eq!(times[10], 130_000);
    }

    #[test]
    fn paced_generator_waits_for_the_clock() {
        let spec = GeneratorSpec {
            rate: Some(10.0),
            start_ms: Some(0),
            ..GeneratorSpec::default()
        };
        let mut g = GeneratorSource::new("g", spec, 0, 1);
        let mut out = buffers(&g);
        assert_eq!(
            g.read(&mut out, 100, 1_000).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        assert_eq!(out.records.len(), 1);
        assert_eq!(
            g.read(&mut out, 100, 1_000).unwrap(),
            ReadStatus::Pending { retry_at_ms: 1_100 }
        );
        g.read(&mut out, 100, 2_000).unwrap();
        assert_eq!(out.records.len(), 11);
    }

    #[test]
    fn after_a_quiet_period_every_partition_with_records_due_is_reported_ready() {
        // Two partitions, paced at 10 records/s, a pause of 10 s of event time (1 s of wall
        // time) after the 5th record: both are caught up during it, and once it is over the
        // read that returns one partition's records says the other has records due too, so
        // an idle partition holds the watermark again before it is read.
        let spec = GeneratorSpec {
            count: Some(40),
            partitions: 2,
            rate: Some(10.0),
            interval: Some(Duration::from_secs(1)),
            start_ms: Some(0),
            quiet: vec![QuietPeriod {
                at: Duration::from_secs(5),
                duration: Duration::from_secs(10),
            }],
            ..GeneratorSpec::default()
        };
        let mut g = GeneratorSource::new("g", spec, 0, 1);
        let mut out = buffers(&g);
        g.read(&mut out, 100, 0).unwrap();
        while let ReadStatus::Data { .. } = g.read(&mut out, 100, 400).unwrap() {}
        out.caught_up.clear();
        out.ready.clear();
        assert!(matches!(
            g.read(&mut out, 100, 900).unwrap(),
            ReadStatus::Pending { .. }
        ));
        let mut caught_up = out.caught_up.clone();
        caught_up.sort();
        assert_eq!(caught_up, vec![0, 1], "both wait out the pause");
        let mut out = buffers(&g);
        let ReadStatus::Data { partition } = g.read(&mut out, 100, 5_000).unwrap() else {
            panic!("records are due after the pause");
        };
        assert_eq!(out.ready, vec![1 - partition]);
        assert!(out.caught_up.is_empty());
    }

    /// Host, time and port need not identify an observation; `observation_id` does.
    #[test]
    fn vocabulary_records_carry_a_unique_observation_id() {
        let entry = VocabularyEntry {
            vendor: "openbsd".into(),
            product: "openssh".into(),
            version: "5.9p1".into(),
            port: 22,
            weight: 1,
        };
        let spec = GeneratorSpec {
            count: Some(300),
            partitions: 2,
            hosts: 3,
            start_ms: Some(0),
            vocabulary: Some(vec![entry].into()),
            ..GeneratorSpec::default()
        };
        let schema = schema_for(&spec);
        let id = schema.index_of("observation_id").unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for p in 0..2 {
            let mut g = GeneratorSource::new("g", spec.clone(), p, 2);
            for (row, _) in drain(&mut g, 0).rows() {
                assert_eq!(row.len(), schema.len());
                assert!(ids.insert(row[id].as_i64().unwrap()));
            }
        }
        assert_eq!(ids, (0..300).collect());
    }

    #[test]
    fn skew_concentrates_keys() {
        let spec = GeneratorSpec {
            count: Some(10_000),
            hosts: 1000,
            skew: 1.2,
            start_ms: Some(0),
            ..GeneratorSpec::default()
        };
        let mut g = GeneratorSource::new("g", spec, 0, 1);
        let b = drain(&mut g, 0);
        let top = b
            .rows()
            .filter(|(r, _)| r[1] == Value::from("10.0.0.0"))
            .count();
        assert!(top > 1000, "hottest host got {top} of 10000");
    }
}
