//! Contract fixtures of the connectors in this repository (see `testing::contract`): each
//! builds the real component over real files in a temp dir, as the pipeline compiler does.
//! A new connector adds its fixture here and one line to `tests/it/contract.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use crate::cdc::{TableConfig, TableId};
use crate::dataflow::{Guarantee, Sink, Source};
use crate::format::EventTimeSource;
use crate::format::json::JsonDecoder;
use crate::sinks::file::JsonLinesSink;
use crate::sources::cdc::{CdcTable, ChangeDecoder};
use crate::sources::file::{FilePart, FileSource, FileSourceSpec};
use crate::sources::generator::{GeneratorSource, GeneratorSpec};
use crate::testing::contract::{CorruptInput, SinkFixture, SinkTarget, SourceFixture, T0};
use crate::types::{Batch, DataType, Field, Schema, SchemaRef, Value};

/// Writes `files` (name, text) into `dir`.
fn write_files(dir: &Path, files: &[(&str, String)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("writing a fixture file");
    }
}

/// A temp dir holding the clean input and, under `corrupt/`, the one with a malformed record.
fn input_dirs(clean: &[(&str, String)], corrupt: &[(&str, String)]) -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_files(dir.path(), clean);
    let bad = dir.path().join("corrupt");
    std::fs::create_dir(&bad).expect("a temp dir");
    write_files(&bad, corrupt);
    dir
}

// ---------------------------------------------------------------------------------------
// JSON file source
// ---------------------------------------------------------------------------------------

/// The JSON-lines file source over two files (two partitions): timestamps as RFC 3339 and
/// epoch milliseconds, an out-of-order record, escapes, a blank line, a CRLF line and a last
/// line without its newline. The malformed input adds a cut-off line as `b.jsonl` line 3.
pub struct FileJsonFixture {
    dir: TempDir,
}

impl FileJsonFixture {
    const FILES: [&str; 2] = ["a.jsonl", "b.jsonl"];

    pub fn new() -> FileJsonFixture {
        let a = [
            r#"{"ts":"2026-01-01T00:00:00.000Z","host":"10.0.0.1","port":22,"note":"first"}"#,
            r#"{"ts":"2026-01-01T00:00:01.500Z","host":"10.0.0.2","port":443,"note":"quote \" backslash \\ é"}"#,
            "",
            "{\"ts\":1767225603000,\"host\":\"10.0.0.3\",\"port\":80,\"note\":null}\r",
            r#"{"ts":"2026-01-01T00:00:02.000Z","host":"10.0.0.1","port":8080,"note":"out of order"}"#,
            r#"{"ts":"2026-01-01T00:00:04.000Z","host":"10.0.0.4","port":25}"#,
            r#"{"ts":"2026-01-01T00:00:05.250Z","host":"10.0.0.5","port":53,"note":"five"}"#,
            r#"{"ts":"2026-01-01T00:00:06.000Z","host":"10.0.0.1","port":22,"note":"no newline"}"#,
        ];
        let b: Vec<String> = (0..9)
            .map(|i| {
                format!(
                    r#"{{"ts":"2026-01-01T00:00:{:02}.000Z","host":"10.1.0.{i}","port":{},"note":"b{i}"}}"#,
                    i * 2,
                    1000 + i
                )
            })
            .collect();
        let a_text = a.join("\n");
        let b_text = b.join("\n") + "\n";
        let mut b_bad = b.clone();
        b_bad.insert(2, r#"{"ts":"2026-01-01T00:00:03.000Z","host":"#.to_string());
        let dir = input_dirs(
            &[("a.jsonl", a_text.clone()), ("b.jsonl", b_text)],
            &[("a.jsonl", a_text), ("b.jsonl", b_bad.join("\n") + "\n")],
        );
        FileJsonFixture { dir }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp),
            Field::new("host", DataType::String),
            Field::new("port", DataType::Int),
            Field::new("note", DataType::String),
        ]))
    }

    fn source(dir: &Path) -> Box<dyn Source> {
        Box::new(FileSource::new(
            "file-src",
            FileSourceSpec {
                files: FilePart::wholes(Self::FILES.iter().map(|f| dir.join(f))),
                follow: false,
                rate: None,
                poll_interval: Duration::from_millis(10),
                base_dir: Some(dir.to_path_buf()),
                sequential: false,
                paced_from: 0,
                max_line_bytes: crate::sources::file::DEFAULT_MAX_LINE_BYTES,
            },
            JsonDecoder::new(Self::schema(), EventTimeSource::Field(0)),
        ))
    }
}

impl Default for FileJsonFixture {
    fn default() -> FileJsonFixture {
        FileJsonFixture::new()
    }
}

impl SourceFixture for FileJsonFixture {
    fn name(&self) -> &str {
        "file (json lines)"
    }

    fn build(&self) -> Box<dyn Source> {
        Self::source(self.dir.path())
    }

    fn corrupt(&self) -> Option<CorruptInput<'_>> {
        let dir = self.dir.path().join("corrupt");
        Some(CorruptInput {
            build: Box::new(move || Self::source(&dir)),
            position: "b.jsonl:3".into(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Generator source
// ---------------------------------------------------------------------------------------

/// The generator source: two partitions, skewed keys, jittered event times, a quiet period.
/// `unbounded()` generates without end and is read up to a limit, as a Kafka topic would be.
pub struct GeneratorFixture {
    count: Option<u64>,
}

impl GeneratorFixture {
    /// 40 records, then the end.
    pub fn new() -> GeneratorFixture {
        GeneratorFixture { count: Some(40) }
    }

    /// No end: the checks read 40 records.
    pub fn unbounded() -> GeneratorFixture {
        GeneratorFixture { count: None }
    }
}

impl Default for GeneratorFixture {
    fn default() -> GeneratorFixture {
        GeneratorFixture::new()
    }
}

impl SourceFixture for GeneratorFixture {
    fn name(&self) -> &str {
        if self.count.is_some() {
            "generator"
        } else {
            "generator (unbounded)"
        }
    }

    fn build(&self) -> Box<dyn Source> {
        let spec = GeneratorSpec {
            count: self.count,
            interval: Some(Duration::from_millis(250)),
            hosts: 20,
            skew: 1.0,
            jitter: Duration::from_millis(400),
            start_ms: Some(T0),
            quiet: vec![crate::sources::generator::QuietPeriod {
                at: Duration::from_secs(3),
                duration: Duration::from_secs(60),
            }],
            partitions: 2,
            seed: 7,
            ..GeneratorSpec::default()
        };
        Box::new(GeneratorSource::new("generator", spec, 0, 1))
    }

    fn limit(&self) -> Option<usize> {
        self.count.is_none().then_some(40)
    }
}

// ---------------------------------------------------------------------------------------
// Change stream (Debezium) file source
// ---------------------------------------------------------------------------------------

/// The change-stream source: the file source with `ChangeDecoder`, a snapshot file (two
/// tables, ended by `last_in_data_collection` and `last` markers) then a change file (a
/// create, an update, a delete with its tombstone, a change of a table not configured,
/// `{key, value}` and bare records, heartbeats). Table ports are compared with the rest.
/// The malformed input adds a line that is not JSON as `changes.jsonl` line 4.
pub struct CdcFileFixture {
    dir: TempDir,
}

/// One Debezium change record (bare value) of `table` at `lsn`, committed at `ts`.
fn change(
    table: &str,
    op: &str,
    before: &str,
    after: &str,
    lsn: u64,
    ts: i64,
    snapshot: &str,
) -> String {
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"version":"3.6.3.Final","connector":"postgresql","name":"demo","ts_ms":{ts},"snapshot":"{snapshot}","db":"vulndb","sequence":"[null, \"{lsn}\"]","schema":"public","table":"{table}","txId":{},"lsn":{lsn},"xmin":null}},"transaction":null,"op":"{op}","ts_ms":{}}}"#,
        lsn / 1000,
        ts + 5
    )
}

impl CdcFileFixture {
    pub fn new() -> CdcFileFixture {
        let s = T0 - 60_000;
        let cpe = |id: i64, product: &str, cve: &str, version: &str| {
            format!(
                r#"{{"id":{id},"product":"{product}","cve_id":"{cve}","version":"{version}","version_start_including":null,"version_end_excluding":null}}"#
            )
        };
        let kev = |cve: &str, days: i64| format!(r#"{{"cve_id":"{cve}","date_added":{days}}}"#);
        let snapshot = [
            change(
                "cpe_match",
                "r",
                "null",
                &cpe(1, "openssl", "CVE-2016-2108", "*"),
                24_000_000,
                s,
                "first",
            ),
            change(
                "cpe_match",
                "r",
                "null",
                &cpe(2, "openssl", "CVE-2014-0160", "1.0.1f"),
                24_000_000,
                s,
                "true",
            ),
            change(
                "cpe_match",
                "r",
                "null",
                &cpe(3, "openssh", "CVE-2016-6210", "*"),
                24_000_000,
                s,
                "last_in_data_collection",
            ),
            change(
                "kev",
                "r",
                "null",
                &kev("CVE-2014-0160", 16_233),
                24_000_000,
                s,
                "true",
            ),
            change(
                "kev",
                "r",
                "null",
                &kev("CVE-2021-44228", 19_000),
                24_000_000,
                s,
                "last",
            ),
        ];
        let keyed = |topic: &str, key: &str, value: &str| {
            format!(r#"{{"topic":"demo.public.{topic}","key":{key},"value":{value}}}"#)
        };
        let heartbeat = |ts: i64| {
            format!(
                r#"{{"topic":"__debezium-heartbeat.demo","key":{{"serverName":"demo"}},"value":{{"ts_ms":{ts}}}}}"#
            )
        };
        let changes = vec![
            keyed(
                "kev",
                r#"{"cve_id":"CVE-2016-6210"}"#,
                &change(
                    "kev",
                    "c",
                    "null",
                    &kev("CVE-2016-6210", 20_454),
                    24_000_100,
                    T0 + 1_000,
                    "false",
                ),
            ),
            heartbeat(T0 + 2_000),
            change(
                "cpe_match",
                "u",
                &cpe(1, "openssl", "CVE-2016-2108", "*"),
                &cpe(1, "openssl", "CVE-2016-2108", "1.0.2a"),
                24_000_200,
                T0 + 3_000,
                "false",
            ),
            change(
                "orders",
                "c",
                "null",
                r#"{"id":9}"#,
                24_000_250,
                T0 + 3_500,
                "false",
            ),
            keyed(
                "kev",
                r#"{"cve_id":"CVE-2014-0160"}"#,
                &change(
                    "kev",
                    "d",
                    &kev("CVE-2014-0160", 16_233),
                    "null",
                    24_000_300,
                    T0 + 4_000,
                    "false",
                ),
            ),
            keyed("kev", r#"{"cve_id":"CVE-2014-0160"}"#, "null"),
            change(
                "cpe_match",
                "c",
                "null",
                &cpe(4, "nginx", "CVE-2021-23017", "1.20.0"),
                24_000_400,
                T0 + 5_000,
                "false",
            ),
            heartbeat(T0 + 6_000),
            change(
                "cpe_match",
                "c",
                "null",
                &cpe(5, "exim", "CVE-2019-10149", "4.91"),
                24_000_500,
                T0 + 7_000,
                "false",
            ),
        ];
        let snapshot_text = snapshot.join("\n") + "\n";
        let mut bad = changes.clone();
        bad.insert(3, "this is not a change record".to_string());
        let dir = input_dirs(
            &[
                ("snapshot.jsonl", snapshot_text.clone()),
                ("changes.jsonl", changes.join("\n") + "\n"),
            ],
            &[
                ("snapshot.jsonl", snapshot_text),
                ("changes.jsonl", bad.join("\n") + "\n"),
            ],
        );
        CdcFileFixture { dir }
    }

    fn tables() -> Vec<CdcTable> {
        let string = |n: &str| Field::new(n, DataType::String);
        let cpe_match = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            string("product"),
            string("cve_id"),
            string("version"),
            string("version_start_including"),
            string("version_end_excluding"),
        ]));
        let kev = Arc::new(Schema::new(vec![
            string("cve_id"),
            Field::new("date_added", DataType::Date),
        ]));
        vec![
            CdcTable {
                port: "cpe_match".into(),
                id: TableId::new("public", "cpe_match"),
                config: TableConfig::new(cpe_match).with_key(&["id"]),
            },
            CdcTable {
                port: "kev".into(),
                id: TableId::new("public", "kev"),
                config: TableConfig::new(kev).with_key(&["cve_id"]),
            },
        ]
    }

    /// As the `file` source with `format: debezium` is built: the snapshot files first,
    /// unpaced, in sequence.
    fn source(dir: &Path) -> Box<dyn Source> {
        let decoder = ChangeDecoder::new("cdc-src", Self::tables(), 1).expect("the tables decode");
        Box::new(FileSource::new(
            "cdc-src",
            FileSourceSpec {
                files: FilePart::wholes(vec![
                    dir.join("snapshot.jsonl"),
                    dir.join("changes.jsonl"),
                ]),
                follow: false,
                rate: None,
                poll_interval: Duration::from_millis(10),
                base_dir: Some(dir.to_path_buf()),
                sequential: true,
                paced_from: 1,
                max_line_bytes: crate::sources::file::DEFAULT_MAX_LINE_BYTES,
            },
            decoder,
        ))
    }
}

impl Default for CdcFileFixture {
    fn default() -> CdcFileFixture {
        CdcFileFixture::new()
    }
}

impl SourceFixture for CdcFileFixture {
    fn name(&self) -> &str {
        "cdc (debezium files)"
    }

    fn build(&self) -> Box<dyn Source> {
        Self::source(self.dir.path())
    }

    fn corrupt(&self) -> Option<CorruptInput<'_>> {
        let dir = self.dir.path().join("corrupt");
        Some(CorruptInput {
            build: Box::new(move || Self::source(&dir)),
            position: "changes.jsonl:4".into(),
        })
    }
}
// ---------------------------------------------------------------------------------------
// File and stdout sinks
// ---------------------------------------------------------------------------------------

/// Decodes JSON lines as rows of `schema`; a line that does not decode is a failure of the
/// sink that wrote it.
fn decode_lines(text: &str, schema: &SchemaRef, what: &str) -> Vec<Vec<Value>> {
    let decoder = JsonDecoder::new(schema.clone(), EventTimeSource::None);
    let mut batch = Batch::new(schema.clone());
    for (i, line) in text.lines().enumerate() {
        if let Err(e) = decoder.decode_into(line.as_bytes(), &mut batch, 0) {
            panic!("{what}: line {} does not read back: {e}: {line}", i + 1);
        }
    }
    batch.rows().map(|(r, _)| r.to_vec()).collect()
}

/// The JSON-lines file sink: transactional (a pipeline with a checkpoint directory) or
/// written straight through (without one).
pub struct FileSinkFixture {
    transactional: bool,
}

impl FileSinkFixture {
    pub fn transactional() -> FileSinkFixture {
        FileSinkFixture {
            transactional: true,
        }
    }

    pub fn direct() -> FileSinkFixture {
        FileSinkFixture {
            transactional: false,
        }
    }
}

struct FileTarget {
    _dir: TempDir,
    path: PathBuf,
    transactional: bool,
}

impl SinkTarget for FileTarget {
    fn sink(&self, schema: SchemaRef) -> Box<dyn Sink> {
        Box::new(
            JsonLinesSink::create("rows", &self.path, schema, None, self.transactional)
                .expect("opening the file sink"),
        )
    }

    fn visible(&self, schema: &SchemaRef) -> Vec<Vec<Value>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("reading {}: {e}", self.path.display()),
        };
        decode_lines(&text, schema, &self.path.display().to_string())
    }
}

impl SinkFixture for FileSinkFixture {
    fn name(&self) -> &str {
        if self.transactional {
            "file (transactional)"
        } else {
            "file (straight through)"
        }
    }

    fn guarantee(&self) -> Guarantee {
        if self.transactional {
            Guarantee::ExactlyOnce
        } else {
            Guarantee::AtLeastOnce
        }
    }

    fn target(&self) -> Box<dyn SinkTarget> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("out").join("rows.jsonl");
        Box::new(FileTarget {
            _dir: dir,
            path,
            transactional: self.transactional,
        })
    }
}

/// The stdout sink, over a captured stream (`StdoutSink::to_writer`). A restarted process
/// writes on after what the last one wrote.
pub struct StdoutSinkFixture;

/// Bytes written to a shared buffer: the captured stdout.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SinkTarget for Captured {
    fn sink(&self, schema: SchemaRef) -> Box<dyn Sink> {
        Box::new(crate::sinks::stdout::StdoutSink::to_writer(
            schema,
            None,
            Box::new(self.clone()),
        ))
    }

    fn visible(&self, schema: &SchemaRef) -> Vec<Vec<Value>> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        decode_lines(&String::from_utf8_lossy(&bytes), schema, "stdout")
    }
}

impl SinkFixture for StdoutSinkFixture {
    fn name(&self) -> &str {
        "stdout"
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    fn target(&self) -> Box<dyn SinkTarget> {
        Box::new(Captured::default())
    }
}
