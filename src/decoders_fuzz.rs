//! Every decoder of persisted bytes, fed bytes it did not write: each gives `Ok` or an error
//! and never panics (a restart either restores exactly or refuses, saying why). Per decoder
//! the inputs are random bytes, and a valid encoding with bytes flipped or set, cut short,
//! extended, spliced or dropped (of its main part or of one of its blobs, or with a blob
//! missing). Whatever a decoder accepts is then used as a run uses it (looked up, given
//! data and watermarks, snapshotted again), so state that decodes but breaks later fails
//! here too.
//!
//! The decoders, one property each:
//! - `checkpoint::store::read`: a checkpoint's manifest (also re-signed, so that its JSON
//!   and not only its checksum is exercised), its state files and blobs;
//! - `dataflow::Position` and the positions of the file, change-stream and generator
//!   sources (`Source::seek`, the change stream's decoder state included);
//! - the watermark generators' state (`SourceCheckpoint::max_event_times`);
//! - `state::VersionedTable` (its image and arena chunks), `state::DiskTable` (its image
//!   and change log segments), `state::SealedLog`;
//! - the operators' snapshots: `window` (tumbling and session) and `enrich` (its table,
//!   gate segments, waiting and held events); `route` keeps none;
//! - the file sink's pre-commits, transactional and straight through (`stdout` keeps none).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use crate::cdc::rows;
use crate::checkpoint::store::{self, CheckpointStore};
use crate::checkpoint::{Checkpoint, SourceCheckpoint};
use crate::dataflow::{Operator, ReadBuffers, Sink, SourcePosition};
use crate::operators::enrich::{
    EnrichOperator, EnrichSpec, EnrichStrategy, JoinMode, MissPolicy, VersionRangeSpec,
};
use crate::operators::window::{
    AggregateFn, AggregateSpec, WindowKind, WindowOperator, WindowSpec,
};
use crate::sinks::file::JsonLinesSink;
use crate::state::disk::{DiskOptions, DiskTable};
use crate::state::{Blob, Blobs, SealedLog, Shape, StateBackend, StateImage, VersionedTable};
use crate::testing::Harness;
use crate::testing::contract::SourceFixture;
use crate::testing::fixtures::{CdcFileFixture, FileJsonFixture, GeneratorFixture};
use crate::time::PartitionWatermarks;
use crate::types::{Batch, DataType, EventTime, Field, Schema, SchemaRef, Value};

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

/// One change to a valid encoding.
#[derive(Clone, Debug)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Cut(Index),
    Extend(Vec<u8>),
    Splice(Index, Vec<u8>),
    Drop(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Edit::Flip(i, m)),
        3 => (any::<Index>(), byte).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => any::<Index>().prop_map(Edit::Cut),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Edit::Extend),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Splice(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Edit::Drop(i, n)),
    ]
}

fn edited(valid: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = valid.to_vec();
    for e in edits {
        match e {
            Edit::Extend(more) => b.extend_from_slice(more),
            _ if b.is_empty() => {}
            Edit::Flip(i, mask) => {
                let at = i.index(b.len());
                b[at] ^= mask;
            }
            Edit::Set(i, byte) => {
                let at = i.index(b.len());
                b[at] = *byte;
            }
            Edit::Cut(i) => b.truncate(i.index(b.len())),
            Edit::Splice(i, more) => {
                let at = i.index(b.len());
                b.splice(at..at, more.iter().copied());
            }
            Edit::Drop(i, n) => {
                let at = i.index(b.len());
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
        }
    }
    b
}

/// Bytes for a decoder: random, or a valid encoding edited.
#[derive(Clone, Debug)]
enum Input {
    Random(Vec<u8>),
    Edited(Vec<Edit>),
}

impl Input {
    fn apply(&self, valid: &[u8]) -> Vec<u8> {
        match self {
            Input::Random(bytes) => bytes.clone(),
            Input::Edited(edits) => edited(valid, edits),
        }
    }
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Input::Random),
        4 => prop::collection::vec(edit(), 1..4).prop_map(Input::Edited),
    ]
}

/// Which part of a snapshot with blobs to spoil: its own bytes (`None`), or a blob (by
/// index), which may also go missing.
#[derive(Clone, Debug)]
struct Spoil {
    blob: Option<Index>,
    missing: bool,
    input: Input,
}

fn spoil() -> impl Strategy<Value = Spoil> {
    (
        prop::option::weighted(0.4, any::<Index>()),
        prop::bool::weighted(0.15),
        input(),
    )
        .prop_map(|(blob, missing, input)| Spoil {
            blob,
            missing,
            input,
        })
}

impl Spoil {
    /// `image` with the part chosen spoilt; blobs are handed over as bytes.
    fn apply(&self, image: &StateImage) -> StateImage {
        let mut blobs: Blobs = image
            .blobs
            .iter()
            .map(|(id, b)| (id.clone(), Blob::Bytes(b.load().unwrap())))
            .collect();
        let mut bytes = image.bytes.clone();
        match (&self.blob, blobs.is_empty()) {
            (Some(i), false) => {
                let id = blobs.keys().nth(i.index(blobs.len())).unwrap().clone();
                if self.missing {
                    blobs.remove(&id);
                } else {
                    let spoilt = self.input.apply(&blobs[&id].load().unwrap());
                    blobs.insert(id, Blob::Bytes(Arc::from(spoilt)));
                }
            }
            _ => bytes = self.input.apply(&bytes),
        }
        StateImage { bytes, blobs }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Reference tables
// ---------------------------------------------------------------------------------------

fn k(i: i64) -> Vec<Value> {
    vec![Value::Int(i)]
}

/// Changes to a table of keys `k(0..13)` and rows `[key, text]`: inserts, updates with
/// history, deletes; enough bytes for several arena chunks (1 KiB in unit tests).
/// (key, version, valid from, row; `None` deletes).
type Change = (Vec<Value>, u64, EventTime, Option<Vec<Value>>);

fn table_changes() -> Vec<Change> {
    (0..80i64)
        .map(|i| {
            let key = i % 13;
            let row = (i % 7 != 3).then(|| {
                vec![
                    Value::Int(key),
                    Value::from(format!("row {i} of key {key}, some text").as_str()),
                ]
            });
            (k(key), i as u64 + 1, i * 10, row)
        })
        .collect()
}

const TABLE: Shape = Shape { key: 1, row: 2 };

/// What a run does with a restored table: every lookup, a change, an expiry, a snapshot.
fn use_memory_table(mut t: VersionedTable<u64>) {
    for key in t.keys() {
        let _ = t.get(&key).map(|r| (r.values(), r.iter().count()));
        let _ = t.get_as_of(&key, 300).map(|r| r.values());
        let _ = t.version_of(&key);
        let _ = t.export_key(&key);
    }
    for (_, row) in t.rows() {
        let _ = row.values();
    }
    let keys: Vec<Vec<Value>> = (0..15).map(k).collect();
    let mut located = Vec::new();
    t.locate_many(keys.iter().map(|k| &k[..]), &mut located);
    for at in located.into_iter().flatten() {
        let _ = t.row_at(at).map(|r| r.values());
        let _ = t.row_as_of_at(at, 100).map(|r| r.values());
    }
    t.apply(
        &k(3),
        u64::MAX / 2,
        2_000,
        Some(&[Value::Int(3), Value::from("x")]),
    );
    t.expire(1_000);
    t.shrink_to_fit();
    let _ = (
        t.len(),
        t.key_count(),
        t.versions_held(),
        t.estimated_bytes(),
    );
    t.snapshot(&mut Blobs::new()).unwrap();
}

fn memory_table_image() -> &'static StateImage {
    static IMAGE: OnceLock<StateImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut t: VersionedTable<u64> = VersionedTable::new(Some(200));
        for (key, version, at, row) in table_changes() {
            t.apply(&key, version, at, row.as_deref());
        }
        let mut blobs = Blobs::new();
        let bytes = t.snapshot(&mut blobs).unwrap();
        assert!(blobs.len() > 1, "the table spans several chunks");
        StateImage { bytes, blobs }
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn versioned_table_restore_never_panics(spoil in spoil()) {
        let image = spoil.apply(memory_table_image());
        if let Ok(t) = VersionedTable::<u64>::restore(&image.bytes, &image.blobs, TABLE) {
            use_memory_table(t);
        }
    }
}

fn disk_options() -> (tempfile::TempDir, DiskOptions) {
    let dir = tempfile::tempdir().unwrap();
    let opts = DiskOptions {
        dir: Some(dir.path().to_path_buf()),
        cache_rows: 4,
    };
    (dir, opts)
}

fn disk_table_image() -> &'static StateImage {
    static IMAGE: OnceLock<StateImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (_dir, opts) = disk_options();
        let mut t: DiskTable<u64> = DiskTable::new(Some(200), &opts).unwrap();
        let changes = table_changes();
        for (i, (key, version, at, row)) in changes.iter().enumerate() {
            t.apply(key, *version, *at, row.as_deref());
            if i == changes.len() / 2 {
                // Two segments.
                t.snapshot(&mut Blobs::new()).unwrap();
            }
        }
        let mut blobs = Blobs::new();
        let bytes = t.snapshot(&mut blobs).unwrap();
        // Loaded while the table (which owns the segment files) is alive.
        let blobs = blobs
            .into_iter()
            .map(|(id, b)| (id, Blob::Bytes(b.load().unwrap())))
            .collect();
        StateImage { bytes, blobs }
    })
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn disk_table_restore_never_panics(spoil in spoil()) {
        let image = spoil.apply(disk_table_image());
        let (_dir, opts) = disk_options();
        if let Ok(mut t) = DiskTable::<u64>::restore(&image.bytes, &image.blobs, &opts, TABLE) {
            let keys = t.keys();
            t.warm(keys.iter().map(|k| &k[..]));
            for key in &keys {
                let _ = t.get(key).map(|r| r.values());
                let _ = t.get_as_of(key, 300).map(|r| r.values());
            }
            t.for_each_row(|_, _| {});
            t.apply(&k(3), u64::MAX / 2, 2_000, Some(&[Value::Int(3), Value::from("x")]));
            t.expire(1_000);
            let _ = (t.len(), t.key_count());
            let _ = t.snapshot(&mut Blobs::new());
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn sealed_log_restore_never_panics(input in input(), missing in prop::bool::weighted(0.1)) {
        let items: Vec<(u32, String)> = (0..20).map(|i| (i, format!("item {i}"))).collect();
        let bytes = postcard::to_allocvec(&items).unwrap();
        let mut blobs = Blobs::new();
        if !missing {
            blobs.insert("gate-1".into(), Blob::Bytes(Arc::from(input.apply(&bytes))));
        }
        let mut got = 0;
        let _ = SealedLog::<(u32, String)>::restore("gate", &["gate-1".into()], &blobs, |_| got += 1);
    }
}

// ---------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------

fn window_input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::String),
        Field::new("amount", DataType::Int),
    ]))
}

fn window(kind: WindowKind) -> WindowOperator {
    use AggregateFn::*;
    let agg = |name: &str, function, field: Option<&str>| AggregateSpec {
        name: name.into(),
        function,
        field: field.map(Into::into),
    };
    let spec = WindowSpec {
        key: vec!["user".into()],
        kind,
        allowed_lateness: Duration::from_secs(5),
        aggregates: vec![
            agg("rows", Count, None),
            agg("total", Sum, Some("amount")),
            agg("lo", Min, Some("amount")),
            agg("mean", Avg, Some("amount")),
            agg("distinct", CountDistinct, Some("amount")),
        ],
    };
    WindowOperator::new("w", spec, window_input()).unwrap()
}

fn window_rows(from: i64) -> Batch {
    let mut b = Batch::new(window_input());
    for i in from..from + 30 {
        let user = Value::from(format!("u{}", i % 4).as_str());
        b.push_row([user, Value::Int(i * 3 % 17)], i * 700);
    }
    b
}

const KINDS: [WindowKind; 2] = [
    WindowKind::Tumbling {
        size: Duration::from_secs(5),
    },
    WindowKind::Session {
        gap: Duration::from_secs(2),
    },
];

fn window_images() -> &'static [StateImage] {
    static IMAGES: OnceLock<Vec<StateImage>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        KINDS
            .iter()
            .map(|kind| {
                let mut h = Harness::new(window(*kind), 1);
                h.data(0, window_rows(0));
                h.watermark_all(9_000);
                h.data(0, window_rows(5));
                h.barrier()
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn window_restore_never_panics(which in 0usize..2, spoil in spoil(), rescale in any::<bool>()) {
        let image = spoil.apply(&window_images()[which]);
        let mut op = window(KINDS[which]);
        // Restored as one instance, or with a valid image into another number of instances.
        let restored = if rescale {
            let valid = window_images()[which].clone();
            let from = crate::dataflow::Rescale::new(0, 1, vec![&valid, &image]);
            op.restore_rescaled(&from)
        } else {
            op.restore(&image)
        };
        if restored.is_ok() {
            let mut h = Harness::new(op, 1);
            h.data(0, window_rows(20));
            h.watermark_all(18_000);
            h.data(0, window_rows(3));
            h.watermark_all(i64::MAX / 2);
            h.barrier();
        }
    }
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::String),
        Field::new("product", DataType::String),
        Field::new("version", DataType::String),
    ]))
}

fn reference_schema() -> SchemaRef {
    rows::change_schema(&Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("product", DataType::String),
        Field::new("cve", DataType::String),
        Field::new("version", DataType::String),
        Field::new("version_start_including", DataType::String),
        Field::new("version_end_excluding", DataType::String),
    ]))
}

/// The as-of enrichment with a gate and held misses: the state with the most parts.
fn enrich() -> EnrichOperator {
    let spec = EnrichSpec {
        table: "cpe".into(),
        primary_key: vec!["id".into()],
        key: vec![("product".into(), "product".into())],
        columns: Some(vec!["cve".into()]),
        distinct: Vec::new(),
        version_range: Some(VersionRangeSpec {
            version: "version".into(),
            exact: Some("version".into()),
            start_including: Some("version_start_including".into()),
            start_excluding: None,
            end_including: None,
            end_excluding: Some("version_end_excluding".into()),
            update: None,
        }),
        conditions: Vec::new(),
        mode: JoinMode::AsOf {
            retention_ms: Some(60_000),
        },
        miss: MissPolicy::Hold { timeout_ms: 30_000 },
        strategy: EnrichStrategy::Gated { max_buffered: 2 },
        state: StateBackend::Memory,
    };
    EnrichOperator::new("enrich", spec, events_schema(), &reference_schema()).unwrap()
}

/// Reference changes: rows `from..from + n` (products p0..p4), then the end of the
/// snapshot if `end`.
fn changes(from: i64, n: i64, end: bool) -> Batch {
    let mut b = Batch::new(reference_schema());
    for i in from..from + n {
        let s = |v: String| Value::from(v.as_str());
        b.push_row(
            [
                s("r".into()),
                Value::Int(i),
                Value::Int(0),
                s("true".into()),
                Value::Null,
                Value::Int(i % 9),
                s(format!("p{}", i % 5)),
                s(format!("CVE-2026-{i:05} with a longer name")),
                s("*".into()),
                Value::Null,
                s(format!("{}.0", i % 4 + 1)),
            ],
            i * 100,
        );
    }
    if end {
        rows::push_snapshot_end(&mut b, from + n);
    }
    b
}

fn enrich_events(from: i64) -> Batch {
    let mut b = Batch::new(events_schema());
    for i in from..from + 6 {
        let s = |v: String| Value::from(v.as_str());
        b.push_row(
            [
                s(format!("h{i}")),
                s(format!("p{}", i % 7)),
                s("1.5".into()),
            ],
            i * 1_000,
        );
    }
    b
}

fn enrich_images() -> &'static [StateImage] {
    static IMAGES: OnceLock<Vec<StateImage>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        // The gate shut, events behind it (in memory and spilled), rows arriving.
        let mut shut = Harness::new(enrich(), 2);
        shut.data(1, changes(0, 30, false));
        shut.data(0, enrich_events(0));
        shut.data(0, enrich_events(10));
        shut.data(0, enrich_events(20));
        let gated = shut.barrier();
        // The gate open: events waiting for the watermark, misses held.
        shut.data(1, changes(30, 10, true));
        shut.watermark(1, crate::time::Watermark::EventTime(5_000));
        shut.watermark(0, crate::time::Watermark::EventTime(5_000));
        shut.data(0, enrich_events(30));
        let open = shut.barrier();
        vec![gated, open]
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn enrich_restore_never_panics(which in 0usize..2, spoil in spoil(), rescale in any::<bool>()) {
        let image = spoil.apply(&enrich_images()[which]);
        let mut op = enrich();
        // Restored as one instance, or with a valid image into another number of instances.
        let restored = if rescale {
            let valid = enrich_images()[which].clone();
            let from = crate::dataflow::Rescale::new(0, 1, vec![&valid, &image]);
            op.restore_rescaled(&from)
        } else {
            op.restore(&image)
        };
        if restored.is_ok() {
            let mut h = Harness::new(op, 2);
            h.data(0, enrich_events(40));
            h.data(1, changes(50, 5, true));
            h.watermark_all(60_000);
            h.data(0, enrich_events(70));
            h.barrier();
            h.watermark_all(i64::MAX / 2);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoints, positions, watermark state
// ---------------------------------------------------------------------------------------

/// A checkpoint of every kind of part, written once; the tests spoil one part at a time
/// and put it back.
struct Written {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// Every file of the checkpoint (its manifest first, then state files and blobs).
    files: Vec<(std::path::PathBuf, Vec<u8>)>,
}

fn written() -> &'static Written {
    static WRITTEN: OnceLock<Written> = OnceLock::new();
    WRITTEN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        let mut cp = Checkpoint {
            epoch: 7,
            ..Checkpoint::default()
        };
        cp.sources.insert(
            "cdc#0".into(),
            SourceCheckpoint {
                positions: source_positions()[1].clone(),
                max_event_times: vec![Some(1_000), None],
                partitions: vec!["a".into(), "b".into()],
            },
        );
        cp.operators
            .insert("enrich#0".into(), enrich_images()[0].clone());
        cp.operators
            .insert("w#0".into(), window_images()[1].clone());
        cp.sinks
            .insert("out#0".into(), sink_files(true).pre_commit.clone());
        let path = store.write("p", &cp, 0).unwrap();
        let mut files = vec![(path.join("MANIFEST"), Vec::new())];
        for dir in [path.clone(), dir.path().join("shared")] {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                if e.file_name() != "MANIFEST" {
                    files.push((e.path(), Vec::new()));
                }
            }
        }
        for (p, bytes) in &mut files {
            *bytes = std::fs::read(p).unwrap();
        }
        Written {
            _dir: dir,
            path,
            files,
        }
    })
}

/// The manifest's JSON body, spoilt, with a checksum that matches.
fn resigned(manifest: &[u8], input: &Input) -> Vec<u8> {
    let text = String::from_utf8_lossy(manifest);
    let body = text.lines().next().unwrap_or_default();
    let body = input.apply(body.as_bytes());
    let mut out = body.clone();
    out.extend_from_slice(format!("\ncrc32 {:08x}\n", crc32fast::hash(&body)).as_bytes());
    out
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn checkpoint_read_never_panics(
        file in any::<Index>(),
        manifest in prop::bool::weighted(0.5),
        resign in prop::bool::ANY,
        input in input(),
    ) {
        let w = written();
        let (path, valid) = if manifest { &w.files[0] } else { &w.files[file.index(w.files.len())] };
        let spoilt = if manifest && resign { resigned(valid, &input) } else { input.apply(valid) };
        std::fs::write(path, &spoilt).unwrap();
        let read = store::read(&w.path);
        let manifest_only = store::read_manifest(&w.path);
        std::fs::write(path, valid).unwrap();
        if let Ok(r) = read {
            let _ = (r.manifest.state_bytes(), r.manifest.written_bytes());
            for p in r.manifest.sources.values().flat_map(|s| &s.positions) {
                let _ = p.position.to_string();
            }
        }
        let _ = manifest_only;
    }
}

/// Positions of the JSON file, change-stream and generator sources after reading some of
/// their input, as the manifest keeps them (JSON).
fn source_positions() -> &'static [Vec<SourcePosition>] {
    static POSITIONS: OnceLock<Vec<Vec<SourcePosition>>> = OnceLock::new();
    POSITIONS.get_or_init(|| {
        sources()
            .iter()
            .map(|f| {
                let mut s = f.build();
                s.connect_ports(&vec![true; 2 + s.extra_ports().len()]);
                let mut out = ReadBuffers::for_source(s.as_ref());
                for _ in 0..6 {
                    s.read(&mut out, 3, 0).unwrap();
                }
                s.positions()
            })
            .collect()
    })
}

fn sources() -> &'static [Box<dyn SourceFixture + Send + Sync>] {
    static SOURCES: OnceLock<Vec<Box<dyn SourceFixture + Send + Sync>>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        vec![
            Box::new(FileJsonFixture::new()),
            Box::new(CdcFileFixture::new()),
            Box::new(GeneratorFixture::unbounded()),
        ]
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn source_positions_never_panic(which in 0usize..3, input in input()) {
        let valid = serde_json::to_vec(&source_positions()[which]).unwrap();
        let bytes = input.apply(&valid);
        if let Ok(positions) = serde_json::from_slice::<Vec<SourcePosition>>(&bytes) {
            for p in &positions {
                let _ = p.position.to_string();
            }
            let mut s = sources()[which].build();
            s.connect_ports(&vec![true; 2 + s.extra_ports().len()]);
            if s.seek(&positions).is_ok() {
                let mut out = ReadBuffers::for_source(s.as_ref());
                for _ in 0..4 {
                    if s.read(&mut out, 3, 0).is_err() {
                        break;
                    }
                }
                let _ = s.positions();
            }
        }
    }

    #[test]
    fn watermark_state_never_panics(input in input()) {
        let valid = serde_json::to_vec(&SourceCheckpoint {
            positions: Vec::new(),
            max_event_times: vec![Some(1_000), None, Some(i64::MIN)],
            partitions: vec!["a".into(), "b".into(), "c".into()],
        })
        .unwrap();
        if let Ok(cp) = serde_json::from_slice::<SourceCheckpoint>(&input.apply(&valid)) {
            let mut w = PartitionWatermarks::new(2, Duration::from_secs(3), Some(Duration::from_secs(1)), 0);
            w.restore_max_event_times(&cp.max_event_times);
            w.on_event(0, 2_000);
            w.on_caught_up(1, 5_000);
            let _ = (w.poll(10_000), w.partition_watermark(1), w.max_event_times());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------------

fn sink_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]))
}

fn sink_rows(from: i64) -> Batch {
    let mut b = Batch::new(sink_schema());
    for n in from..from + 5 {
        b.push_row([Value::Int(n)], 0);
    }
    b
}

/// A file sink's output (and pending files), as a run leaves it after a commit and a
/// pre-commit it did not commit, with that pre-commit: of a transactional sink (index 0) and
/// of one writing straight through (1).
struct SinkFiles {
    /// Where the files are, each case anew: the pre-commit names its output's path.
    dir: tempfile::TempDir,
    files: Vec<(String, Vec<u8>)>,
    pre_commit: Vec<u8>,
}

impl SinkFiles {
    /// The directory with the files as the run left them, and nothing else.
    fn reset(&self) {
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        for (name, bytes) in &self.files {
            std::fs::write(self.dir.path().join(name), bytes).unwrap();
        }
    }
}

fn sink_files(transactional: bool) -> &'static SinkFiles {
    static FILES: [OnceLock<SinkFiles>; 2] = [OnceLock::new(), OnceLock::new()];
    FILES[usize::from(!transactional)].get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let mut s = JsonLinesSink::create("out", &out, sink_schema(), None, transactional).unwrap();
        s.recover(None).unwrap();
        s.write(&sink_rows(0)).unwrap();
        s.pre_commit(1).unwrap();
        s.commit(1).unwrap();
        s.write(&sink_rows(5)).unwrap();
        let pre_commit = s.pre_commit(2).unwrap();
        s.finish().unwrap();
        let files = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        SinkFiles {
            dir,
            files,
            pre_commit,
        }
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn file_sink_pre_commits_never_panic(transactional in prop::bool::ANY, input in input()) {
        let files = sink_files(transactional);
        files.reset();
        let state = input.apply(&files.pre_commit);
        let out = files.dir.path().join("out.jsonl");
        let mut s = JsonLinesSink::create("out", &out, sink_schema(), None, transactional).unwrap();
        if s.recover(Some(&state)).is_ok() {
            s.write(&sink_rows(10)).unwrap();
            s.pre_commit(3).unwrap();
            s.commit(3).unwrap();
            s.finish().unwrap();
        }
    }
}
