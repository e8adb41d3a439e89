//! The connector contract suite: one set of checks that every source and every sink must
//! pass, written once against the `dataflow` contract and run on every connector. A connector
//! takes part by giving a fixture (`SourceFixture` or `SinkFixture`: how to build it over a
//! fixed input or a fresh target, how to read back what it made visible) and one test line:
//! `#[test] fn kafka_source() { check_source(&KafkaFixture::new()) }`. Fixtures build real
//! components over real inputs (temp files today, services started by the harness later).
//!
//! # Source checks (`check_source`)
//! Records are compared per partition and port (`main`, `dead_letter`, every extra port such as
//! a change stream's table ports, and the heartbeat progress), values and event times, in
//! order within a partition; across partitions no order is promised.
//! 1. `seek_round_trip`: after k read calls (0, 1, the middle, all), `positions`, a fresh
//!    instance `seek`ed to them reads exactly the rest of an uninterrupted read (and ends at
//!    the same positions), and `positions` right after `seek` are the ones given. `seek(&[])`
//!    starts every partition over. Run over the input with a malformed record too, so a dead
//!    letter is emitted once across restarts. Why: this is what every restore does; a gap
//!    loses records, an overlap duplicates them downstream of an exactly-once checkpoint.
//! 2. `position_encoding`: positions survive JSON (as checkpoints store `SourcePosition`),
//!    and a position of another connector kind, of a newer format version, or whose value
//!    does not decode makes `seek` fail. Why: a restore must never start over silently from a
//!    checkpoint written by another build or another connector.
//! 3. `crash_mid_epoch`: barrier 1, more reads, checkpoint 1 completes
//!    (`checkpoint_complete(1)`), barrier 2 whose checkpoint never completes, more reads, the
//!    instance is dropped (a crash); a fresh instance seeked to checkpoint 1's positions
//!    re-reads exactly what came after barrier 1. Why: a source that acknowledges upstream
//!    (Kafka offsets, a replication slot's LSN) must acknowledge the positions it is given,
//!    not where it has read to, and restart from the checkpoint, not from what it read last.
//! 4. `checkpoint_complete`: `checkpoint_complete(epoch, positions)` after each barrier's
//!    checkpoint, in order, a second time for the same epoch, and with `FINAL_EPOCH` at the
//!    end: never an error, never a change in what is read. Why: the runtime calls it from
//!    the source's thread between reads; a duplicate notification after a restart is harmless.
//! 5. `dead_letters`: in input with one malformed record, that record goes to `dead_letter`
//!    with the node, the partition it was read from, its position (the fixture says what the
//!    position must name: file and line, offset, ...), a reason and the raw record, and every
//!    other record is read as without it (the clean input has no dead letter). Why: a bad
//!    record is not an error and must not stop or shift what follows. Skipped, with a note,
//!    for a fixture that cannot have a malformed record (the generator).
//! 6. `metrics`: driven by the runtime's `SourceDriver` (as `runtime::exec` drives it, with
//!    an `emit` closure, under a local metrics recorder) the source emits the same records
//!    per port, a barrier's acknowledgement carries its positions, watermarks never go back,
//!    `End` comes once and last, and `watershed_source_idle_transitions_total{node}` is
//!    registered and does not move while nobody reads the source (idleness needs the source
//!    to say a partition has nothing to read, never mere time). Then a whole pipeline
//!    (`runtime::run` on a manual clock, one collecting sink per port, over the malformed
//!    input when there is one) exports `watershed_records_out_total{node,port}` for every
//!    port, `watershed_dead_letter_records_total{node}`, `watershed_records_in_total{node}`,
//!    and per partition `watershed_source_partition_watermark_milliseconds` (the highest event
//!    time read less 1 ms, with no out-of-orderness) and `watershed_source_partition_idle`. The
//!    counters are registered by `runtime::exec` (router counters, status gauges), which
//!    only a whole run reaches. `records_in` counts what `read` returned with `Data`, as the
//!    driver does (rows handed over with `PartitionEnded` are emitted but not counted in).
//!
//! # Sink checks (`check_sink`)
//! Each scenario runs on a fresh target; rows of `sink_schema()` (strings with quotes,
//! backslashes, control characters and non-ASCII, floats, microsecond timestamps, nulls) are
//! compared by value with what the target makes visible, in any order. Exactly-once and
//! idempotent sinks must show exactly the rows up to the last commit; an at-least-once sink
//! must show each of them at least once (duplicates allowed).
//! 1. `guarantee`: the sink declares the guarantee its fixture claims.
//! 2. `commit_idempotent`: `recover(None)`, writes, `pre_commit(1)` (an exactly-once sink
//!    shows nothing of it yet), `commit(1)` twice, epoch 2 likewise, then `pre_commit`,
//!    `commit` (twice) of `FINAL_EPOCH` and `finish`. Why: a commit notification may repeat.
//! 3. `crash_before_commit`: a crash after `pre_commit(2)` (its checkpoint durable) and
//!    before `commit(2)`; a fresh instance `recover(Some(state 2))` finishes the commit, then
//!    the replay from checkpoint 2 ends the run. Why: the checkpoint says epoch 2 is done.
//! 4. `crash_before_pre_commit`: a crash after writes never pre-committed; `recover(Some(state
//!    1))` drops them, the replay writes them again. Why: they are replayed from checkpoint 1.
//! 5. `pre_commit_not_durable`: a crash after `pre_commit(2)` whose checkpoint never became
//!    durable; `recover(Some(state 1))` drops epoch 2. Why: checkpoint 2 does not exist.
//! 6. `recover_twice`: a crash after `commit(2)`, `recover(Some(state 2))` twice (a crash
//!    during recovery): nothing changes, nothing doubles.
//! 7. `rerun`: `recover(None)` over a target a finished run wrote, and the same input again:
//!    a run without a checkpoint starts its output over (no duplicates for exactly-once).
//! 8. `awkward_values`: a batch of values hard to encode (NaN and infinities, extreme
//!    integers and timestamps, empty and control-character strings, nulls everywhere) never
//!    panics; if the sink accepts it, every row is visible and reads back.
//!
//! # Known gaps
//! A fixture lists the checks its connector is known to fail (`known_gaps`, with the reason):
//! they are not run, and a note naming the gap is printed, so the suite stays green while the
//! gap is tracked where the connector is.
//!
//! # Adding a connector
//! Its fixture goes beside the others (`testing::fixtures`): for a source, `build` over a
//! fixed input that is finite (or `limit` for one that never ends, such as a topic) and
//! `corrupt` when a malformed record can exist; for a sink, `target` giving a fresh target
//! whose `visible` reads what a reader would see (the file's lines, `SELECT ... FINAL`). Then
//! one line in `tests/it/contract.rs`. Services a fixture needs are started by the test
//! harness on loopback ports, as for the other integration tests.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dataflow::{
    DEAD_LETTER_PORT, FINAL_EPOCH, Guarantee, MAIN_PORT, PortSpec, ReadBuffers, ReadStatus, Sink,
    Source, SourcePosition,
};
use crate::error::RunError;
use crate::metrics as m;
use crate::runtime::plan::{
    InputRef, NodeKind, Plan, PlanNode, RuntimeOptions, SinkFactory, SourceFactory, WatermarkSpec,
};
use crate::runtime::task::{BarrierAck, Emit, SourceDriver, SourceStep};
use crate::status::{InstanceStatus, Role, StatusRegistry};
use crate::time::{ManualClock, Watermark};
use crate::types::{Batch, DataType, Epoch, EventTime, Field, Schema, SchemaRef, Value};

/// Processing time the checks start at (2026-01-01T00:00:00Z).
pub const T0: i64 = 1_767_225_600_000;

/// The name of the pseudo-port that holds a source's progress (`ReadBuffers::progress`).
const PROGRESS: &str = "<progress>";

/// The node name sources get in the runtime checks.
const NODE: &str = "contract";

/// The idle timeout of the driver check.
const IDLE_MS: i64 = 1_000;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// The source checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceCheck {
    SeekRoundTrip,
    PositionEncoding,
    CrashMidEpoch,
    CheckpointComplete,
    DeadLetters,
    Metrics,
}

impl SourceCheck {
    pub const ALL: [SourceCheck; 6] = [
        SourceCheck::SeekRoundTrip,
        SourceCheck::PositionEncoding,
        SourceCheck::CrashMidEpoch,
        SourceCheck::CheckpointComplete,
        SourceCheck::DeadLetters,
        SourceCheck::Metrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceCheck::SeekRoundTrip => "seek_round_trip",
            SourceCheck::PositionEncoding => "position_encoding",
            SourceCheck::CrashMidEpoch => "crash_mid_epoch",
            SourceCheck::CheckpointComplete => "checkpoint_complete",
            SourceCheck::DeadLetters => "dead_letters",
            SourceCheck::Metrics => "metrics",
        }
    }
}

/// What a source connector gives to be checked.
pub trait SourceFixture {
    /// The connector's name in messages (`file`, `generator`, `kafka`, ...).
    fn name(&self) -> &str;

    /// A fresh instance over the fixture's fixed input: every call reads the same records.
    /// The input must be finite (or `limit` given) and hold records in more than one batch.
    fn build(&self) -> Box<dyn Source>;

    /// The same input with one malformed record added, and what its dead letter's position
    /// must name; partitions keep their names, so every other record reads as without it.
    /// `None`: the connector cannot get a malformed record (the dead-letter check is skipped).
    fn corrupt(&self) -> Option<CorruptInput<'_>> {
        None
    }

    /// For a source that never ends (a Kafka topic, a followed file): how many records make
    /// "the end". `None`: read until the source says `Finished`.
    fn limit(&self) -> Option<usize> {
        None
    }

    /// Records per read call: small, so the input spans several batches.
    fn batch_size(&self) -> usize {
        3
    }

    /// Checks this connector is known to fail, with the reason: not run, reported.
    fn known_gaps(&self) -> Vec<(SourceCheck, &'static str)> {
        Vec::new()
    }
}

/// A source input with one malformed record (see `SourceFixture::corrupt`).
pub struct CorruptInput<'a> {
    /// A fresh instance over that input, as `SourceFixture::build`.
    pub build: Box<dyn Fn() -> Box<dyn Source> + 'a>,
    /// Text the dead letter's position must contain, e.g. `b.jsonl:3`.
    pub position: String,
}

/// The sink checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkCheck {
    Guarantee,
    CommitIdempotent,
    CrashBeforeCommit,
    CrashBeforePreCommit,
    PreCommitNotDurable,
    RecoverTwice,
    Rerun,
    AwkwardValues,
}

impl SinkCheck {
    pub const ALL: [SinkCheck; 8] = [
        SinkCheck::Guarantee,
        SinkCheck::CommitIdempotent,
        SinkCheck::CrashBeforeCommit,
        SinkCheck::CrashBeforePreCommit,
        SinkCheck::PreCommitNotDurable,
        SinkCheck::RecoverTwice,
        SinkCheck::Rerun,
        SinkCheck::AwkwardValues,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SinkCheck::Guarantee => "guarantee",
            SinkCheck::CommitIdempotent => "commit_idempotent",
            SinkCheck::CrashBeforeCommit => "crash_before_commit",
            SinkCheck::CrashBeforePreCommit => "crash_before_pre_commit",
            SinkCheck::PreCommitNotDurable => "pre_commit_not_durable",
            SinkCheck::RecoverTwice => "recover_twice",
            SinkCheck::Rerun => "rerun",
            SinkCheck::AwkwardValues => "awkward_values",
        }
    }
}

/// What a sink connector gives to be checked.
pub trait SinkFixture {
    /// The connector's name in messages.
    fn name(&self) -> &str;

    /// The guarantee the sink claims, and is held to.
    fn guarantee(&self) -> Guarantee;

    /// A fresh, empty target (a file in a new temp dir, a new table).
    fn target(&self) -> Box<dyn SinkTarget>;

    /// Checks this connector is known to fail, with the reason: not run, reported.
    fn known_gaps(&self) -> Vec<(SinkCheck, &'static str)> {
        Vec::new()
    }
}

/// One target a sink writes to; it outlives sink instances, as a file outlives a crash.
pub trait SinkTarget {
    /// A new sink instance writing rows of `schema` to this target (after a crash: the same
    /// target, as a restarted process would open it).
    fn sink(&self, schema: SchemaRef) -> Box<dyn Sink>;

    /// What a reader sees now (the file's lines, `SELECT ... FINAL`), decoded as rows of
    /// `schema`.
    fn visible(&self, schema: &SchemaRef) -> Vec<Vec<Value>>;
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// Which check of which connector is running: the start of every failure message.
struct Ctx {
    role: &'static str,
    connector: String,
    check: &'static str,
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "contract: {} `{}` fails check `{}`",
            self.role, self.connector, self.check
        )
    }
}

impl Ctx {
    fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("{self}: {msg}")
    }

    fn ensure(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(msg())
        }
    }

    fn ok<T, E: fmt::Display>(&self, r: Result<T, E>, what: impl fmt::Display) -> T {
        r.unwrap_or_else(|e| self.fail(format_args!("{what} failed: {e}")))
    }
}

fn show_row(row: &[Value]) -> String {
    let parts: Vec<String> = row
        .iter()
        .map(|v| {
            let s = format!("{v:?}");
            if s.len() > 80 {
                format!("{}…", &s[..s.floor_char_boundary(80)])
            } else {
                s
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// Reading a source
// ---------------------------------------------------------------------------------------

/// One record as read: its values and event time.
type Record = (Vec<Value>, EventTime);

/// What was read, per (partition, port).
#[derive(Clone, Debug, Default)]
struct Reading {
    streams: BTreeMap<(String, String), Vec<Record>>,
    /// `read` calls that returned records or a partition's end.
    batches: usize,
    /// Records on every port (not progress).
    records: usize,
    /// Records returned with `ReadStatus::Data` (what the runtime counts as records in).
    data_records: usize,
    finished: bool,
}

impl Reading {
    /// Records of every partition on `port`.
    fn port(&self, port: &str) -> Vec<Record> {
        self.streams
            .iter()
            .filter(|((_, p), _)| p == port)
            .flat_map(|(_, rs)| rs.iter().cloned())
            .collect()
    }

    /// The highest event time of each partition's records (dead letters aside), as the
    /// runtime's watermark generator sees them.
    fn max_event_times(&self) -> BTreeMap<String, EventTime> {
        let mut out: BTreeMap<String, EventTime> = BTreeMap::new();
        for ((partition, port), rs) in &self.streams {
            if port == DEAD_LETTER_PORT {
                continue;
            }
            for (_, t) in rs {
                let e = out.entry(partition.clone()).or_insert(*t);
                *e = (*e).max(*t);
            }
        }
        out
    }

    /// Records per port name.
    fn port_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for ((_, port), rs) in &self.streams {
            if port != PROGRESS {
                *out.entry(port.clone()).or_insert(0) += rs.len();
            }
        }
        out
    }
}

/// Until when `Reader::read` reads.
#[derive(Clone, Copy)]
enum Until {
    /// The reading holds this many batches (or the source finished, or — for a source read
    /// up to a limit, whose batches need not fall the same way on every read — the reading
    /// holds the limit's records).
    Batches(usize),
    /// The source finished, or the reading holds this many records.
    End(Option<usize>),
}

/// The names of a source's ports: `main`, `dead_letter`, then its extra ports.
fn port_names(source: &dyn Source) -> Vec<String> {
    let mut names = vec![MAIN_PORT.to_string(), DEAD_LETTER_PORT.to_string()];
    names.extend(source.extra_ports().into_iter().map(|p| p.name));
    names
}

/// Drives one source instance by hand, as the runtime would, without threads.
struct Reader<'c> {
    ctx: &'c Ctx,
    source: Box<dyn Source>,
    bufs: ReadBuffers,
    ports: Vec<String>,
    partitions: Vec<String>,
    now_ms: i64,
    batch_size: usize,
    /// The fixture's limit, for a source that never ends.
    limit: Option<usize>,
}

impl<'c> Reader<'c> {
    /// Opens `source` as the runtime does: every port has a consumer.
    fn open(ctx: &'c Ctx, mut source: Box<dyn Source>, batch_size: usize) -> Reader<'c> {
        let ports = port_names(source.as_ref());
        source.connect_ports(&vec![true; ports.len()]);
        let bufs = ReadBuffers::for_source(source.as_ref());
        let partitions = source.partitions();
        Reader {
            ctx,
            source,
            bufs,
            ports,
            partitions,
            now_ms: T0,
            batch_size,
            limit: None,
        }
    }

    fn seek(&mut self, positions: &[SourcePosition]) {
        self.ctx.ok(self.source.seek(positions), "seek")
    }

    /// The source's positions, checked against its partitions.
    fn positions(&self) -> Vec<SourcePosition> {
        let positions = self.source.positions();
        let names: Vec<&str> = positions.iter().map(|p| p.partition.as_str()).collect();
        let partitions = self.source.partitions();
        self.ctx.ensure(names == partitions, || {
            format!(
                "positions() names partitions {names:?}, partitions() gives {partitions:?} \
                 (one position per partition, in the same order)"
            )
        });
        positions
    }

    fn buffered(&self) -> usize {
        self.bufs.records.len()
            + self.bufs.dead_letters.len()
            + self.bufs.extra.iter().map(Batch::len).sum::<usize>()
    }

    /// Moves what the last read returned into `into`, under `partition`.
    fn collect(&mut self, partition: usize, into: &mut Reading) -> usize {
        let name = self.partitions.get(partition).cloned().unwrap_or_else(|| {
            self.ctx.fail(format_args!(
                "read returned partition {partition}, the source has {} ({:?})",
                self.partitions.len(),
                self.partitions
            ))
        });
        let mut n = 0;
        let mut batches: Vec<(usize, Batch)> = vec![
            (0, self.bufs.records.take()),
            (1, self.bufs.dead_letters.take()),
        ];
        for (i, b) in self.bufs.extra.iter_mut().enumerate() {
            batches.push((2 + i, b.take()));
        }
        for (port, batch) in batches {
            if batch.is_empty() {
                continue;
            }
            n += batch.len();
            let rows = into
                .streams
                .entry((name.clone(), self.ports[port].clone()))
                .or_default();
            rows.extend(batch.rows().map(|(r, t)| (r.to_vec(), t)));
        }
        if let Some(t) = self.bufs.progress.take() {
            into.streams
                .entry((name, PROGRESS.to_string()))
                .or_default()
                .push((vec![Value::Int(t)], t));
        }
        into.records += n;
        n
    }

    /// One `read` call; false once the source has finished.
    fn step(&mut self, into: &mut Reading, pending: &mut u32) -> bool {
        let status = self.ctx.ok(
            self.source
                .read(&mut self.bufs, self.batch_size, self.now_ms),
            "read",
        );
        match status {
            ReadStatus::Data { partition } => {
                *pending = 0;
                let n = self.collect(partition, into);
                into.data_records += n;
                into.batches += 1;
            }
            ReadStatus::PartitionEnded { partition } => {
                *pending = 0;
                self.collect(partition, into);
                into.batches += 1;
            }
            ReadStatus::PartitionsChanged => {
                self.partitions = self.source.partitions();
            }
            ReadStatus::Pending { retry_at_ms } => {
                self.ctx.ensure(self.buffered() == 0, || {
                    "records returned with `Pending`: they belong to a `Data` status".into()
                });
                *pending += 1;
                if *pending > 2_000 {
                    let per_port: Vec<String> = into
                        .streams
                        .iter()
                        .map(|((p, port), rs)| format!("{p}/{port}: {}", rs.len()))
                        .collect();
                    self.ctx.fail(format_args!(
                        "pending for 2000 reads in a row before the end of the input, with {} \
                         records read ({}) at positions {:?} (set `limit` for a source that \
                         never ends)",
                        into.records,
                        per_port.join(", "),
                        self.source.positions()
                    ));
                }
                // Time moves on; a source waiting for a service gets real time too.
                std::thread::sleep(Duration::from_millis(1));
                self.now_ms = retry_at_ms.max(self.now_ms + 1);
            }
            ReadStatus::Finished => {
                self.ctx.ensure(self.buffered() == 0, || {
                    "records returned with `Finished`: they belong to a `Data` or \
                     `PartitionEnded` status"
                        .into()
                });
                into.finished = true;
                return false;
            }
        }
        true
    }

    /// Reads into `into` until `until`.
    fn read(&mut self, into: &mut Reading, until: Until) {
        let mut pending = 0;
        for _ in 0..1_000_000 {
            let done = match until {
                Until::Batches(n) => {
                    into.batches >= n || self.limit.is_some_and(|l| into.records >= l)
                }
                Until::End(limit) => limit.is_some_and(|l| into.records >= l),
            };
            if done || !self.step(into, &mut pending) {
                return;
            }
        }
        self.ctx
            .fail("a million reads without reaching the end: does the source ever finish?")
    }
}

/// A source input under check: the clean one or the one with a malformed record.
#[derive(Clone, Copy)]
struct Input<'a> {
    build: &'a dyn Fn() -> Box<dyn Source>,
    batch_size: usize,
    limit: Option<usize>,
    /// Which input, for messages (empty for the clean one).
    what: &'static str,
}

impl Input<'_> {
    fn open<'c>(&self, ctx: &'c Ctx) -> Reader<'c> {
        let mut r = Reader::open(ctx, (self.build)(), self.batch_size);
        r.limit = self.limit;
        r
    }

    /// An uninterrupted read to the end, and the positions there.
    fn read_all(&self, ctx: &Ctx) -> (Reading, Vec<SourcePosition>) {
        let mut r = self.open(ctx);
        let mut all = Reading::default();
        r.read(&mut all, Until::End(self.limit));
        ctx.ensure(all.records > 0, || {
            "the fixture's input has no records".into()
        });
        let at_end = r.positions();
        (all, at_end)
    }

    /// How far a read continuing after a restart goes: to the end, or for a source read up
    /// to a limit, until it holds as many records as the uninterrupted read `reference`.
    fn until_end(&self, reference: &Reading) -> Until {
        Until::End(self.limit.map(|_| reference.records))
    }
}

/// Positions as a checkpoint keeps them: through JSON and back.
fn through_json(ctx: &Ctx, positions: &[SourcePosition]) -> Vec<SourcePosition> {
    let text = ctx.ok(
        serde_json::to_string(positions),
        "encoding positions as JSON",
    );
    let back: Vec<SourcePosition> =
        ctx.ok(serde_json::from_str(&text), "decoding positions from JSON");
    ctx.ensure(back == positions, || {
        format!("positions change through JSON: {positions:?} became {back:?}")
    });
    back
}

/// Compares what was read (`got`) with an uninterrupted read (`want`), per partition and
/// port. `exact`: the same records; otherwise (a source read up to a limit) each stream of
/// one is a prefix of the other's.
fn compare(ctx: &Ctx, what: &str, got: &Reading, want: &Reading, exact: bool) {
    let keys: std::collections::BTreeSet<&(String, String)> =
        got.streams.keys().chain(want.streams.keys()).collect();
    let empty = Vec::new();
    for key in keys {
        let g = got.streams.get(key).unwrap_or(&empty);
        let w = want.streams.get(key).unwrap_or(&empty);
        let common = g.len().min(w.len());
        let first_diff = (0..common).find(|&i| g[i] != w[i]);
        let differs = first_diff.is_some() || (exact && g.len() != w.len());
        if differs {
            let at = first_diff.unwrap_or(common);
            let show = |rs: &Vec<Record>| match rs.get(at) {
                Some((row, t)) => format!("{} @ {t}", show_row(row)),
                None => "nothing".into(),
            };
            ctx.fail(format_args!(
                "{what}: partition `{}` port `{}` differs from an uninterrupted read at \
                 record {at}: got {} records, expected {}; record {at} is {}, expected {}",
                key.0,
                key.1,
                g.len(),
                w.len(),
                show(g),
                show(w)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Source checks
// ---------------------------------------------------------------------------------------

/// Runs every source check on `fixture` (except its known gaps); panics with a message naming
/// the connector and the check at the first failure.
pub fn check_source(fixture: &dyn SourceFixture) {
    let gaps = fixture.known_gaps();
    let build = || fixture.build();
    let clean = Input {
        build: &build,
        batch_size: fixture.batch_size(),
        limit: fixture.limit(),
        what: "",
    };
    let corrupt = fixture.corrupt();
    let malformed = corrupt.as_ref().map(|c| Input {
        build: &*c.build,
        what: " (over the input with a malformed record)",
        ..clean
    });
    for check in SourceCheck::ALL {
        if let Some((_, why)) = gaps.iter().find(|(c, _)| *c == check) {
            eprintln!(
                "contract: source `{}`: check `{}` not run, known gap: {why}",
                fixture.name(),
                check.name()
            );
            continue;
        }
        let ctx = Ctx {
            role: "source",
            connector: fixture.name().to_string(),
            check: check.name(),
        };
        match check {
            SourceCheck::SeekRoundTrip => {
                // Over the malformed input too: a dead letter is emitted once across restarts.
                for input in std::iter::once(&clean).chain(&malformed) {
                    seek_round_trip(&ctx, input);
                }
            }
            SourceCheck::PositionEncoding => position_encoding(&ctx, &clean),
            SourceCheck::CrashMidEpoch => crash_mid_epoch(&ctx, &clean),
            SourceCheck::CheckpointComplete => checkpoint_complete(&ctx, &clean),
            SourceCheck::DeadLetters => match (&corrupt, &malformed) {
                (Some(c), Some(input)) => dead_letters(&ctx, &clean, input, &c.position),
                _ => eprintln!(
                    "contract: source `{}`: check `dead_letters` skipped: the fixture has no \
                     input with a malformed record",
                    fixture.name()
                ),
            },
            SourceCheck::Metrics => {
                // Over the malformed input when there is one, so dead letters are counted.
                let input = malformed.unwrap_or(clean);
                driver_metrics(&ctx, &input);
                pipeline_metrics(&ctx, &input, malformed.is_some());
            }
        }
    }
}

/// Check 1: restarts after k batches read exactly the rest.
fn seek_round_trip(ctx: &Ctx, input: &Input<'_>) {
    let exact = input.limit.is_none();
    let (all, at_end) = input.read_all(ctx);
    let n = all.batches;
    ctx.ensure(n >= 2 || !exact, || {
        format!("the fixture's input is read in {n} batch(es): give it more records")
    });
    let mut ks = vec![0, 1, n / 2, n];
    ks.sort_unstable();
    ks.dedup();
    for k in ks {
        let mut first = input.open(ctx);
        let mut got = Reading::default();
        first.read(&mut got, Until::Batches(k));
        let positions = first.positions();
        drop(first);
        let restored = through_json(ctx, &positions);
        let mut second = input.open(ctx);
        second.seek(&restored);
        let after_seek = second.positions();
        ctx.ensure(after_seek == positions, || {
            format!(
                "right after seek, positions() gives {after_seek:?}, not the positions \
                 seeked to {positions:?}"
            )
        });
        second.read(&mut got, input.until_end(&all));
        compare(
            ctx,
            &format!("a restart after {k} of {n} batches{}", input.what),
            &got,
            &all,
            exact,
        );
        if exact {
            let end = second.positions();
            ctx.ensure(end == at_end, || {
                format!(
                    "a restart after {k} of {n} batches{} ends at {end:?}, an uninterrupted \
                     read at {at_end:?}",
                    input.what
                )
            });
        }
    }
    let mut fresh = input.open(ctx);
    fresh.seek(&[]);
    let mut got = Reading::default();
    fresh.read(&mut got, input.until_end(&all));
    compare(
        ctx,
        &format!(
            "seek(&[]) (no positions: every partition starts over){}",
            input.what
        ),
        &got,
        &all,
        exact,
    );
}

/// Check 2: positions of another kind or a newer version, or that do not decode, are refused.
fn position_encoding(ctx: &Ctx, input: &Input<'_>) {
    let mut r = input.open(ctx);
    let mut got = Reading::default();
    r.read(&mut got, Until::Batches(1));
    let positions = through_json(ctx, &r.positions());
    ctx.ensure(!positions.is_empty(), || {
        "the source has no partition: nothing to check".into()
    });
    type Mutation = fn(&mut SourcePosition);
    let bad: [(&str, Mutation); 3] = [
        ("a position of another connector kind", |p| {
            p.position.kind = format!("{}-other", p.position.kind)
        }),
        ("a position of a newer format version", |p| {
            p.position.version += 1
        }),
        ("a position whose value does not decode", |p| {
            p.position.value = serde_json::json!({"contract": "not a position of this kind"})
        }),
    ];
    for (what, mutate) in bad {
        let mut wrong = positions.clone();
        wrong.iter_mut().for_each(mutate);
        let wrong = through_json(ctx, &wrong);
        let mut fresh = input.open(ctx);
        match fresh.source.seek(&wrong) {
            Ok(()) => ctx.fail(format_args!(
                "seek accepted {what} ({}): it must fail, never start over silently",
                wrong[0].position
            )),
            Err(e) => ctx.ensure(!e.to_string().is_empty(), || {
                format!("seek refused {what} without saying why")
            }),
        }
    }
}

/// Check 3: a crash after an unfinished checkpoint restarts from the last complete one.
fn crash_mid_epoch(ctx: &Ctx, input: &Input<'_>) {
    let exact = input.limit.is_none();
    let (all, _) = input.read_all(ctx);
    let n = all.batches;
    let (j1, j2) = (n / 3, (2 * n / 3).max(n / 3));
    let mut r = input.open(ctx);
    let mut got = Reading::default();
    r.read(&mut got, Until::Batches(j1));
    // Barrier 1.
    let checkpoint1 = through_json(ctx, &r.positions());
    let covered = got.clone();
    r.read(&mut got, Until::Batches(j2));
    // Checkpoint 1 is durable by now (the source read on meanwhile): the source acknowledges
    // it upstream. Then barrier 2, whose checkpoint never completes.
    ctx.ok(
        r.source.checkpoint_complete(1, &checkpoint1),
        "checkpoint_complete(1)",
    );
    let _barrier2 = r.positions();
    r.read(&mut got, Until::Batches(j2 + 1));
    drop(r);
    let mut restarted = input.open(ctx);
    restarted.seek(&checkpoint1);
    let mut resumed = covered;
    restarted.read(&mut resumed, input.until_end(&all));
    compare(
        ctx,
        &format!(
            "a restart from checkpoint 1 (barrier after {j1} of {n} batches, durable after \
             {j2}), after a crash past barrier 2 (after {j2}) whose checkpoint never completed"
        ),
        &resumed,
        &all,
        exact,
    );
}

/// Check 4: checkpoint notifications, repeated and final, change nothing that is read.
fn checkpoint_complete(ctx: &Ctx, input: &Input<'_>) {
    let exact = input.limit.is_none();
    let (all, _) = input.read_all(ctx);
    let mut r = input.open(ctx);
    let mut got = Reading::default();
    let mut epoch: Epoch = 0;
    // The checkpoint of the last barrier, durable one barrier later.
    let mut in_flight: Option<(Epoch, Vec<SourcePosition>)> = None;
    loop {
        epoch += 1;
        let barrier = r.positions();
        if let Some((e, p)) = in_flight.take() {
            for time in ["", " again"] {
                ctx.ok(
                    r.source.checkpoint_complete(e, &p),
                    format_args!("checkpoint_complete({e}){time}"),
                );
            }
        }
        in_flight = Some((epoch, barrier));
        let next = Until::Batches(got.batches + 1);
        let before = got.batches;
        r.read(&mut got, next);
        let limit_reached = input.limit.is_some_and(|l| got.records >= l);
        if got.finished || limit_reached || got.batches == before {
            break;
        }
    }
    if let Some((e, p)) = in_flight {
        ctx.ok(
            r.source.checkpoint_complete(e, &p),
            format_args!("checkpoint_complete({e})"),
        );
    }
    let end = r.positions();
    for time in ["", " again"] {
        ctx.ok(
            r.source.checkpoint_complete(FINAL_EPOCH, &end),
            format_args!("checkpoint_complete(FINAL_EPOCH){time}"),
        );
    }
    compare(
        ctx,
        &format!("reading with checkpoint_complete after each of {epoch} barriers"),
        &got,
        &all,
        exact,
    );
    let after = r.positions();
    ctx.ensure(after == end, || {
        format!("checkpoint_complete(FINAL_EPOCH) moved the positions from {end:?} to {after:?}")
    });
}

/// Check 5: one malformed record is one dead letter, and nothing else changes.
fn dead_letters(ctx: &Ctx, clean: &Input<'_>, corrupt: &Input<'_>, position: &str) {
    let exact = clean.limit.is_none();
    let (good, _) = clean.read_all(ctx);
    let clean_dead = good.port(DEAD_LETTER_PORT);
    ctx.ensure(clean_dead.is_empty(), || {
        format!(
            "the fixture's clean input has dead letters: {}",
            show_row(&clean_dead[0].0)
        )
    });
    let (bad, _) = corrupt.read_all(ctx);
    let dead: Vec<(&String, &Record)> = bad
        .streams
        .iter()
        .filter(|((_, port), _)| port == DEAD_LETTER_PORT)
        .flat_map(|((partition, _), rs)| rs.iter().map(move |r| (partition, r)))
        .collect();
    ctx.ensure(dead.len() == 1, || {
        format!(
            "one malformed record gave {} dead letters: {:?}",
            dead.len(),
            dead.iter().map(|(_, r)| show_row(&r.0)).collect::<Vec<_>>()
        )
    });
    let (partition, (row, _)) = dead[0];
    let schema = crate::dead_letter::schema();
    ctx.ensure(row.len() == schema.len(), || {
        format!(
            "a dead letter has {} columns, the dead_letter schema {}",
            row.len(),
            schema.len()
        )
    });
    let col = |name: &str| -> &str {
        let i = schema.index_of(name).expect("a dead_letter column");
        row[i].as_str().unwrap_or("")
    };
    ctx.ensure(!col("node").is_empty(), || {
        format!("the dead letter names no node: {}", show_row(row))
    });
    ctx.ensure(col("partition") == partition, || {
        format!(
            "the dead letter names partition `{}`; it was read from `{partition}`",
            col("partition")
        )
    });
    ctx.ensure(col("position").contains(position), || {
        format!(
            "the dead letter's position `{}` does not name `{position}`",
            col("position")
        )
    });
    ctx.ensure(!col("reason").is_empty(), || {
        format!("the dead letter gives no reason: {}", show_row(row))
    });
    ctx.ensure(!col("raw").is_empty(), || {
        format!(
            "the dead letter does not carry the record: {}",
            show_row(row)
        )
    });
    let mut without = bad.clone();
    without
        .streams
        .retain(|(_, port), _| port != DEAD_LETTER_PORT);
    compare(
        ctx,
        "the input with a malformed record (its other records)",
        &without,
        &good,
        exact,
    );
}

/// What a `SourceDriver` emitted.
#[derive(Default)]
struct Emitted {
    ports: BTreeMap<usize, Vec<Record>>,
    rows: usize,
    watermarks: Vec<Watermark>,
    ends: usize,
    /// Anything emitted after `End`.
    after_end: usize,
}

impl Emitted {
    fn push(&mut self, e: Emit) {
        if self.ends > 0 {
            self.after_end += 1;
        }
        match e {
            Emit::Port(p, batch) => {
                self.rows += batch.len();
                self.ports
                    .entry(p)
                    .or_default()
                    .extend(batch.rows().map(|(r, t)| (r.to_vec(), t)));
            }
            Emit::Control(crate::dataflow::Message::Watermark(w)) => self.watermarks.push(w),
            Emit::Control(crate::dataflow::Message::End) => self.ends += 1,
            Emit::Control(_) => {}
        }
    }
}

fn cmp_values(a: &[Value], b: &[Value]) -> CmpOrdering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

fn sorted(mut rs: Vec<Record>) -> Vec<Record> {
    rs.sort_by(|a, b| cmp_values(&a.0, &b.0).then(a.1.cmp(&b.1)));
    rs
}

/// Check 6, first half: the runtime's `SourceDriver` over the source, step by step.
fn driver_metrics(ctx: &Ctx, input: &Input<'_>) {
    let exact = input.limit.is_none();
    let (all, _) = input.read_all(ctx);
    let recorder = CaptureRecorder::default();
    let node_label = [(m::LABEL_NODE, NODE)];
    let out = std::cell::RefCell::new(Emitted::default());
    let mut source = (input.build)();
    let ports = port_names(source.as_ref());
    source.connect_ports(&vec![true; ports.len()]);
    let partitions = source.partitions().len();
    let idle_after_quiet = metrics::with_local_recorder(&recorder, || {
        let status = Arc::new(InstanceStatus::new(
            NODE,
            0,
            Role::Source,
            source.partitions(),
            &ports,
            T0 - IDLE_MS,
        ));
        let spec = WatermarkSpec {
            max_ahead: None,
            max_out_of_orderness: Duration::ZERO,
            idle_timeout: Some(Duration::from_millis(IDLE_MS as u64)),
            expected_interval: None,
        };
        // Started one idle timeout before the reads, which happen at `T0` as in the direct
        // reads (dead letters carry the processing time).
        let mut driver = SourceDriver::new(source, &spec, input.batch_size, status, T0 - IDLE_MS);
        let mut emit = |e: Emit| -> Result<(), RunError> {
            out.borrow_mut().push(e);
            Ok(())
        };
        // An idle timeout passes before the first read: no partition goes idle, since the
        // source has not said it has nothing to read (idleness is "caught up", never
        // "slow"); the counter is there all the same.
        let mut now = T0;
        ctx.ok(driver.poll_watermark(now, &mut emit), "poll_watermark");
        let idle_after_quiet = recorder.counter(m::IDLE_TRANSITIONS, &node_label);
        let mut barrier_taken = false;
        let mut waits = 0;
        loop {
            let step = ctx.ok(driver.step(now, &mut emit), "SourceDriver::step");
            let read = out.borrow().rows;
            if !barrier_taken && read * 2 >= all.records {
                barrier_taken = true;
                let expected = driver.positions();
                match ctx.ok(driver.barrier(1, &mut emit), "SourceDriver::barrier") {
                    BarrierAck::Source { epoch, checkpoint } => {
                        ctx.ensure(epoch == 1 && checkpoint.positions == expected, || {
                            format!(
                                "the barrier's acknowledgement carries epoch {epoch} and \
                                 positions {:?}; the source is at {expected:?}",
                                checkpoint.positions
                            )
                        })
                    }
                    other => ctx.fail(format_args!("a source barrier acknowledged {other:?}")),
                }
                ctx.ok(driver.checkpoint_complete(1), "checkpoint_complete(1)");
            }
            match step {
                SourceStep::Continue => waits = 0,
                SourceStep::Finished => break,
                SourceStep::WaitUntil(t) => {
                    waits += 1;
                    if waits > 2_000 {
                        ctx.fail("the driver waited 2000 times in a row before the end");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    now = t.max(now + 1);
                }
            }
            if input.limit.is_some_and(|l| read >= l) {
                break;
            }
        }
        ctx.ok(
            driver.checkpoint_complete(FINAL_EPOCH),
            "checkpoint_complete(FINAL_EPOCH)",
        );
        idle_after_quiet
    });
    let mut out = out.into_inner();
    ctx.ensure(idle_after_quiet == Some(0), || {
        format!(
            "after an idle timeout in which the source was not read, {} is \
             {idle_after_quiet:?}; expected it registered and 0 for the {partitions} \
             partitions (only a partition seen with nothing to read becomes idle)",
            m::IDLE_TRANSITIONS
        )
    });
    let mut last = None;
    for w in &out.watermarks {
        if let Watermark::EventTime(t) = w {
            ctx.ensure(last.is_none_or(|l| *t >= l), || {
                format!("the driver's watermark went back from {last:?} to {t}")
            });
            last = Some(*t);
        }
    }
    if !exact {
        return;
    }
    ctx.ensure(out.ends == 1 && out.after_end == 0, || {
        format!(
            "the driver emitted End {} time(s) and {} message(s) after it; expected once, last",
            out.ends, out.after_end
        )
    });
    for (p, name) in ports.iter().enumerate() {
        let got = sorted(out.ports.remove(&p).unwrap_or_default());
        let want = sorted(all.port(name));
        ctx.ensure(got == want, || {
            format!(
                "driven by the runtime, port `{name}` emitted {} records; read directly, {} \
                 (or their values differ)",
                got.len(),
                want.len()
            )
        });
    }
    ctx.ensure(out.ports.is_empty(), || {
        format!(
            "the driver emitted on ports {:?}, the source has {}",
            out.ports.keys().collect::<Vec<_>>(),
            ports.len()
        )
    });
}

/// A sink that counts what reaches it: the consumer of one port in `pipeline_metrics`.
struct Count(Arc<AtomicUsize>);

impl Sink for Count {
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }
    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        self.0.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(())
    }
    fn pre_commit(&mut self, _: Epoch) -> Result<Vec<u8>, RunError> {
        Ok(Vec::new())
    }
    fn commit(&mut self, _: Epoch) -> Result<(), RunError> {
        Ok(())
    }
    fn recover(&mut self, _: Option<&[u8]>) -> Result<(), RunError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

/// Check 6, second half: a whole pipeline (the source, one counting sink per port) run by
/// `runtime::run` on a manual clock, and the metrics it exported.
fn pipeline_metrics(ctx: &Ctx, input: &Input<'_>, malformed: bool) {
    let exact = input.limit.is_none();
    let (all, _) = input.read_all(ctx);
    let source = (input.build)();
    let partitions = source.partitions();
    let mut ports = vec![
        PortSpec {
            name: MAIN_PORT.into(),
            schema: source.schema(),
        },
        PortSpec {
            name: DEAD_LETTER_PORT.into(),
            schema: crate::dead_letter::schema(),
        },
    ];
    ports.extend(source.extra_ports());
    let slot = Mutex::new(Some(source));
    let factory: SourceFactory = Arc::new(move |_, _| {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| RunError::build(NODE, "the contract pipeline builds its source once"))
    });
    let mut nodes = vec![PlanNode {
        name: NODE.into(),
        parallelism: 1,
        kind: NodeKind::Source {
            factory,
            watermark: WatermarkSpec {
                max_ahead: None,
                max_out_of_orderness: Duration::ZERO,
                idle_timeout: None,
                expected_interval: None,
            },
        },
        inputs: Vec::new(),
        ports: ports.clone(),
    }];
    let counts: Vec<Arc<AtomicUsize>> = ports.iter().map(|_| Arc::default()).collect();
    for (p, port) in ports.iter().enumerate() {
        let count = counts[p].clone();
        let factory: SinkFactory =
            Arc::new(move |_| Ok(Box::new(Count(count.clone())) as Box<dyn Sink>));
        nodes.push(PlanNode {
            name: format!("{NODE}-{}", port.name),
            parallelism: 1,
            kind: NodeKind::Sink { factory },
            inputs: vec![InputRef { node: 0, port: p }],
            ports: Vec::new(),
        });
    }
    let plan = Plan {
        name: NODE.into(),
        nodes,
        options: RuntimeOptions {
            batch_size: input.batch_size,
            checkpoint_interval: Some(Duration::from_millis(100)),
            ..RuntimeOptions::default()
        },
    };
    let clock = ManualClock::new(T0);
    let run_ctx = crate::runtime::RunContext::new(clock.clone(), StatusRegistry::new(NODE));
    let shutdown = run_ctx.shutdown.clone();
    let done = AtomicBool::new(false);
    let limit = input.limit;
    let recorder = CaptureRecorder::default();
    let result = std::thread::scope(|scope| {
        // Simulated time moves (5 ms per real ms) so barriers flow and paced sources read;
        // an endless source is stopped once it has given `limit` records.
        scope.spawn(|| {
            for _ in 0..60_000 {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let total: usize = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
                if limit.is_some_and(|l| total >= l) {
                    shutdown.store(true, Ordering::SeqCst);
                }
                clock.advance(Duration::from_millis(5));
                std::thread::sleep(Duration::from_millis(1));
            }
            shutdown.store(true, Ordering::SeqCst);
        });
        let r = metrics::with_local_recorder(&recorder, || crate::runtime::run(plan, run_ctx));
        done.store(true, Ordering::SeqCst);
        r
    });
    ctx.ok(result, "running the source in a pipeline");
    let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let want = all.port_counts();
    for (p, port) in ports.iter().enumerate() {
        let labels = [(m::LABEL_NODE, NODE), (m::LABEL_PORT, port.name.as_str())];
        let out = recorder.counter(m::RECORDS_OUT, &labels);
        ctx.ensure(out == Some(got[p] as u64), || {
            format!(
                "{}{{port=\"{}\"}} is {out:?}; the port's consumer received {} records \
                 (exported: {})",
                m::RECORDS_OUT,
                port.name,
                got[p],
                recorder.describe()
            )
        });
        let expected = want.get(&port.name).copied().unwrap_or(0);
        ctx.ensure(!exact || got[p] == expected, || {
            format!(
                "in a pipeline, port `{}` gave {} records; read directly, {expected}",
                port.name, got[p]
            )
        });
    }
    let node = [(m::LABEL_NODE, NODE)];
    let dead = recorder.counter(m::DEAD_LETTER_RECORDS, &node);
    ctx.ensure(dead == Some(got[1] as u64), || {
        format!(
            "{} is {dead:?}; {} dead letters were emitted",
            m::DEAD_LETTER_RECORDS,
            got[1]
        )
    });
    ctx.ensure(!malformed || got[1] > 0, || {
        format!(
            "{} did not move over the input with a malformed record",
            m::DEAD_LETTER_RECORDS
        )
    });
    ctx.ensure(
        recorder.counter(m::IDLE_TRANSITIONS, &node).is_some(),
        || format!("{} is not exported", m::IDLE_TRANSITIONS),
    );
    let instance = format!("{NODE}#0");
    let records_in = recorder.counter(m::RECORDS_IN, &[(m::LABEL_NODE, instance.as_str())]);
    ctx.ensure(
        records_in.is_some_and(|n| !exact || n == all.data_records as u64),
        || {
            format!(
                "{}{{node=\"{instance}\"}} is {records_in:?}; the source returned {} records \
                 with `Data`",
                m::RECORDS_IN,
                all.data_records
            )
        },
    );
    let max_times = all.max_event_times();
    for partition in &partitions {
        let labels = [
            (m::LABEL_SOURCE, NODE),
            (m::LABEL_PARTITION, partition.as_str()),
        ];
        ctx.ensure(recorder.gauge(m::PARTITION_IDLE, &labels).is_some(), || {
            format!(
                "{}{{partition=\"{partition}\"}} is not exported (exported: {})",
                m::PARTITION_IDLE,
                recorder.describe()
            )
        });
        let watermark = recorder.gauge(m::PARTITION_WATERMARK, &labels);
        if exact && let Some(&t) = max_times.get(partition) {
            // Bounded out-of-orderness of 0: the highest event time seen, less 1 ms.
            ctx.ensure(watermark == Some((t - 1) as f64), || {
                format!(
                    "{}{{partition=\"{partition}\"}} is {watermark:?}; the highest event \
                     time read from it is {t}, so {} was expected",
                    m::PARTITION_WATERMARK,
                    t - 1
                )
            });
        }
    }
    let any_watermark = partitions.iter().any(|p| {
        let labels = [(m::LABEL_SOURCE, NODE), (m::LABEL_PARTITION, p.as_str())];
        recorder.gauge(m::PARTITION_WATERMARK, &labels).is_some()
    });
    ctx.ensure(any_watermark, || {
        format!(
            "no partition exports {} (exported: {})",
            m::PARTITION_WATERMARK,
            recorder.describe()
        )
    });
}

// ---------------------------------------------------------------------------------------
// A metrics recorder for checks
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MetricKind {
    Counter,
    Gauge,
}

type MetricKey = (MetricKind, String, Vec<(String, String)>);

/// A metrics recorder that keeps every counter and gauge registered through it, for
/// `metrics::with_local_recorder`. Handles registered on the calling thread keep counting on
/// other threads (the runtime's tasks), so a whole run can be observed; histograms are
/// dropped.
#[derive(Debug, Default)]
pub struct CaptureRecorder {
    cells: Mutex<BTreeMap<MetricKey, Arc<AtomicU64>>>,
}

impl CaptureRecorder {
    fn cell(&self, kind: MetricKind, key: &metrics::Key) -> Arc<AtomicU64> {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        labels.sort();
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((kind, key.name().to_string(), labels))
            .or_default()
            .clone()
    }

    fn get(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, name.to_string(), labels))
            .map(|c| c.load(Ordering::SeqCst))
    }

    /// The counter `name` with exactly these labels, if it was registered.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.get(MetricKind::Counter, name, labels)
    }

    /// The gauge `name` with exactly these labels, if it was registered.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.get(MetricKind::Gauge, name, labels)
            .map(f64::from_bits)
    }

    /// Every metric registered, with its labels, for messages.
    pub fn describe(&self) -> String {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = cells
            .keys()
            .map(|(_, name, labels)| {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name}{{{}}}", labels.join(","))
            })
            .collect();
        names.join(" ")
    }
}

impl metrics::Recorder for CaptureRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(MetricKind::Counter, key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(MetricKind::Gauge, key))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

// ---------------------------------------------------------------------------------------
// Sink checks
// ---------------------------------------------------------------------------------------

/// The schema of the rows the sink checks write.
pub fn sink_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("name", DataType::String),
        Field::new("score", DataType::Float),
        Field::new("at", DataType::Timestamp),
        Field::new("flag", DataType::Bool),
    ]))
}

/// Row `n` of the sink checks.
fn sink_row(n: i64) -> Vec<Value> {
    vec![
        Value::Int(n),
        Value::Str(compact_str::format_compact!(
            "row {n}: \"quoted\", back\\slash, tab\t, é ✓"
        )),
        Value::Float(n as f64 * 0.5 - 3.25),
        Value::Timestamp((T0 + n * 1_000) * 1_000 + n),
        match n % 3 {
            0 => Value::Bool(true),
            1 => Value::Bool(false),
            _ => Value::Null,
        },
    ]
}

/// Rows `from..to` as one batch.
fn sink_batch(from: i64, to: i64) -> Batch {
    let mut b = Batch::new(sink_schema());
    for n in from..to {
        b.push_row(sink_row(n), T0 + n);
    }
    b
}

/// Values that are hard to encode, one row each.
fn awkward_batch() -> Batch {
    let long = "x".repeat(10_000);
    let rows = vec![
        vec![
            Value::Int(i64::MIN),
            Value::from(""),
            Value::Float(f64::NAN),
            Value::Timestamp(0),
            Value::Null,
        ],
        vec![
            Value::Int(i64::MAX),
            Value::from("\u{0}\u{1}\u{1f}\u{7f} \"\\/\n\r\t"),
            Value::Float(f64::INFINITY),
            Value::Timestamp(-1),
            Value::Bool(true),
        ],
        vec![
            Value::Int(0),
            Value::from(long.as_str()),
            Value::Float(f64::NEG_INFINITY),
            Value::Timestamp(253_402_300_799_999_999),
            Value::Bool(false),
        ],
        vec![
            Value::Int(-1),
            Value::from("🦀 中文 \u{2028}\u{2029} \u{feff}"),
            Value::Float(-0.0),
            Value::Timestamp(1),
            Value::Null,
        ],
        vec![
            Value::Int(1),
            Value::from("max"),
            Value::Float(f64::MAX),
            Value::Null,
            Value::Null,
        ],
        vec![
            Value::Null,
            Value::Null,
            Value::Float(f64::MIN_POSITIVE / 4.0),
            Value::Null,
            Value::Null,
        ],
    ];
    let mut b = Batch::new(sink_schema());
    for row in rows {
        b.push_row(row, T0);
    }
    b
}

/// Runs every sink check on `fixture` (except its known gaps); panics with a message naming
/// the connector and the check at the first failure.
pub fn check_sink(fixture: &dyn SinkFixture) {
    let gaps = fixture.known_gaps();
    for check in SinkCheck::ALL {
        if let Some((_, why)) = gaps.iter().find(|(c, _)| *c == check) {
            eprintln!(
                "contract: sink `{}`: check `{}` not run, known gap: {why}",
                fixture.name(),
                check.name()
            );
            continue;
        }
        let ctx = Ctx {
            role: "sink",
            connector: fixture.name().to_string(),
            check: check.name(),
        };
        let run = SinkRun {
            ctx: &ctx,
            target: fixture.target(),
            schema: sink_schema(),
            guarantee: fixture.guarantee(),
        };
        match check {
            SinkCheck::Guarantee => {
                let declared = run.open().guarantee();
                ctx.ensure(declared == fixture.guarantee(), || {
                    format!(
                        "the sink declares {}, its fixture claims {}",
                        declared.name(),
                        fixture.guarantee().name()
                    )
                });
            }
            SinkCheck::CommitIdempotent => commit_idempotent(&run),
            SinkCheck::CrashBeforeCommit => crash_before_commit(&run),
            SinkCheck::CrashBeforePreCommit => crash_before_pre_commit(&run),
            SinkCheck::PreCommitNotDurable => pre_commit_not_durable(&run),
            SinkCheck::RecoverTwice => recover_twice(&run),
            SinkCheck::Rerun => rerun(&run),
            SinkCheck::AwkwardValues => awkward_values(&run),
        }
    }
}

/// One sink scenario: a target, and the calls on its sink instances.
struct SinkRun<'c> {
    ctx: &'c Ctx,
    target: Box<dyn SinkTarget>,
    schema: SchemaRef,
    guarantee: Guarantee,
}

impl SinkRun<'_> {
    /// A new sink instance over the target (a first start, or a restart after a crash).
    fn open(&self) -> Box<dyn Sink> {
        self.target.sink(self.schema.clone())
    }

    fn recover(&self, sink: &mut dyn Sink, state: Option<&[u8]>) {
        let what = if state.is_some() {
            "recover(Some(state))"
        } else {
            "recover(None)"
        };
        self.ctx.ok(sink.recover(state), what)
    }

    fn write(&self, sink: &mut dyn Sink, from: i64, to: i64) {
        self.ctx.ok(
            sink.write(&sink_batch(from, to)),
            format_args!("write of rows {from}..{to}"),
        )
    }

    fn pre_commit(&self, sink: &mut dyn Sink, epoch: Epoch) -> Vec<u8> {
        self.ctx
            .ok(sink.pre_commit(epoch), format_args!("pre_commit({epoch})"))
    }

    fn commit(&self, sink: &mut dyn Sink, epoch: Epoch) {
        self.ctx
            .ok(sink.commit(epoch), format_args!("commit({epoch})"))
    }

    /// The end of a run: the last pre-commit, its commit, `finish`.
    fn finish(&self, sink: &mut dyn Sink) {
        self.pre_commit(sink, FINAL_EPOCH);
        self.commit(sink, FINAL_EPOCH);
        self.ctx.ok(sink.finish(), "finish")
    }

    /// A run up to a commit of epoch 1 (rows 0..10): the sink and epoch 1's pre-commit.
    fn first_epoch(&self) -> (Box<dyn Sink>, Vec<u8>) {
        let mut s = self.open();
        self.recover(s.as_mut(), None);
        self.write(s.as_mut(), 0, 10);
        let state1 = self.pre_commit(s.as_mut(), 1);
        self.commit(s.as_mut(), 1);
        (s, state1)
    }

    /// Right after a crash and `recover`, before the replay: what is visible must be rows
    /// `0..to`, except that an idempotent sink may already show rows it wrote after that
    /// checkpoint — it cannot take them back, and the replay writes them again with the same
    /// versions — so it must show rows `0..to`, each once, and otherwise only rows written
    /// before the crash (`0..written`).
    fn expect_after_crash(&self, to: i64, written: i64, when: &str) {
        if self.guarantee != Guarantee::Idempotent {
            return self.expect(to, when);
        }
        let got = self.target.visible(&self.schema);
        let written: Vec<Vec<Value>> = (0..written).map(sink_row).collect();
        for w in &written[..to as usize] {
            let n = got.iter().filter(|r| *r == w).count();
            self.ctx.ensure(n == 1, || {
                format!(
                    "{when}: row {} is visible {n} times, once expected",
                    show_row(w)
                )
            });
        }
        for r in &got {
            self.ctx.ensure(written.contains(r), || {
                format!("{when}: row {} was never written", show_row(r))
            });
        }
        self.ctx.ensure(got.len() <= written.len(), || {
            format!(
                "{when}: {} rows visible, {} written",
                got.len(),
                written.len()
            )
        });
    }

    /// What is visible must be rows `0..to` (at least once each for an at-least-once sink).
    fn expect(&self, to: i64, when: &str) {
        self.expect_rows(&(0..to).map(sink_row).collect::<Vec<_>>(), when)
    }

    fn expect_rows(&self, want: &[Vec<Value>], when: &str) {
        let mut got = self.target.visible(&self.schema);
        let mut want = want.to_vec();
        got.sort_by(|a, b| cmp_values(a, b));
        want.sort_by(|a, b| cmp_values(a, b));
        if self.guarantee == Guarantee::AtLeastOnce {
            // Each expected row at least as often as expected: walk both sorted lists.
            let mut g = got.iter().peekable();
            for w in &want {
                while g.peek().is_some_and(|r| cmp_values(r, w).is_lt()) {
                    g.next();
                }
                match g.next() {
                    Some(r) if r == w => {}
                    _ => self.ctx.fail(format_args!(
                        "{when}: row {} is not visible (at least once expected; {} rows \
                         visible, {} expected)",
                        show_row(w),
                        got.len(),
                        want.len()
                    )),
                }
            }
            return;
        }
        if got != want {
            let extra: Vec<String> = got
                .iter()
                .filter(|r| !want.contains(r))
                .take(3)
                .map(|r| show_row(r))
                .collect();
            let missing: Vec<String> = want
                .iter()
                .filter(|r| !got.contains(r))
                .take(3)
                .map(|r| show_row(r))
                .collect();
            self.ctx.fail(format_args!(
                "{when}: {} rows visible, exactly {} expected ({} guarantee); unexpected: \
                 {extra:?}; missing: {missing:?}",
                got.len(),
                want.len(),
                self.guarantee.name()
            ));
        }
    }
}

/// Sink check 2.
fn commit_idempotent(run: &SinkRun<'_>) {
    let mut s = run.open();
    run.recover(s.as_mut(), None);
    run.write(s.as_mut(), 0, 10);
    run.pre_commit(s.as_mut(), 1);
    if run.guarantee == Guarantee::ExactlyOnce {
        run.expect(0, "after pre_commit(1), before commit(1) (exactly-once)");
    }
    run.commit(s.as_mut(), 1);
    run.expect(10, "after commit(1)");
    run.commit(s.as_mut(), 1);
    run.expect(10, "after commit(1) a second time");
    run.write(s.as_mut(), 10, 20);
    run.pre_commit(s.as_mut(), 2);
    run.commit(s.as_mut(), 2);
    run.commit(s.as_mut(), 2);
    run.expect(20, "after commit(2) twice");
    run.write(s.as_mut(), 20, 25);
    run.pre_commit(s.as_mut(), FINAL_EPOCH);
    run.commit(s.as_mut(), FINAL_EPOCH);
    run.commit(s.as_mut(), FINAL_EPOCH);
    run.ctx.ok(s.finish(), "finish");
    run.expect(25, "after commit(FINAL_EPOCH) twice and finish");
}

/// Sink check 3.
fn crash_before_commit(run: &SinkRun<'_>) {
    let (mut s, _) = run.first_epoch();
    run.write(s.as_mut(), 10, 20);
    let state2 = run.pre_commit(s.as_mut(), 2);
    drop(s);
    let mut s = run.open();
    run.recover(s.as_mut(), Some(&state2));
    run.expect(
        20,
        "after a crash between pre_commit(2) and commit(2), and recover(Some(state 2))",
    );
    run.write(s.as_mut(), 20, 25);
    run.finish(s.as_mut());
    run.expect(25, "after the replay from checkpoint 2 and the end");
}

/// Sink check 4.
fn crash_before_pre_commit(run: &SinkRun<'_>) {
    let (mut s, state1) = run.first_epoch();
    run.write(s.as_mut(), 10, 20);
    drop(s);
    let mut s = run.open();
    run.recover(s.as_mut(), Some(&state1));
    run.expect_after_crash(
        10,
        20,
        "after a crash with writes never pre-committed, and recover(Some(state 1))",
    );
    run.write(s.as_mut(), 10, 20);
    run.finish(s.as_mut());
    run.expect(20, "after the replay from checkpoint 1 and the end");
}

/// Sink check 5.
fn pre_commit_not_durable(run: &SinkRun<'_>) {
    let (mut s, state1) = run.first_epoch();
    run.write(s.as_mut(), 10, 20);
    run.pre_commit(s.as_mut(), 2);
    drop(s);
    let mut s = run.open();
    run.recover(s.as_mut(), Some(&state1));
    run.expect_after_crash(
        10,
        20,
        "after a crash with checkpoint 2 never durable, and recover(Some(state 1))",
    );
    run.write(s.as_mut(), 10, 20);
    run.finish(s.as_mut());
    run.expect(20, "after the replay from checkpoint 1 and the end");
}

/// Sink check 6.
fn recover_twice(run: &SinkRun<'_>) {
    let (mut s, _) = run.first_epoch();
    run.write(s.as_mut(), 10, 20);
    let state2 = run.pre_commit(s.as_mut(), 2);
    run.commit(s.as_mut(), 2);
    drop(s);
    let mut s = run.open();
    run.recover(s.as_mut(), Some(&state2));
    run.expect(
        20,
        "after a crash after commit(2), and recover(Some(state 2))",
    );
    drop(s);
    let mut s = run.open();
    run.recover(s.as_mut(), Some(&state2));
    run.expect(20, "after recover(Some(state 2)) a second time");
    run.write(s.as_mut(), 20, 25);
    run.finish(s.as_mut());
    run.expect(25, "after the replay from checkpoint 2 and the end");
}

/// Sink check 7.
fn rerun(run: &SinkRun<'_>) {
    let (mut s, _) = run.first_epoch();
    run.write(s.as_mut(), 10, 25);
    run.finish(s.as_mut());
    drop(s);
    let mut s = run.open();
    run.recover(s.as_mut(), None);
    run.write(s.as_mut(), 0, 25);
    run.finish(s.as_mut());
    run.expect(
        25,
        "after a finished run and a second run over the same target without a checkpoint",
    );
}

/// Sink check 8.
fn awkward_values(run: &SinkRun<'_>) {
    let batch = awkward_batch();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut s = run.open();
        s.recover(None)?;
        s.write(&batch)?;
        s.pre_commit(FINAL_EPOCH)?;
        s.commit(FINAL_EPOCH)?;
        s.finish()
    }));
    match outcome {
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            run.ctx.fail(format_args!(
                "a batch of awkward values made the sink panic: {msg}"
            ))
        }
        Ok(Err(e)) => eprintln!(
            "contract: {}: the sink refused a batch of awkward values (allowed): {e}",
            run.ctx.connector
        ),
        Ok(Ok(())) => {
            let got = run.target.visible(&run.schema).len();
            let ok = match run.guarantee {
                Guarantee::AtLeastOnce => got >= batch.len(),
                _ => got == batch.len(),
            };
            run.ctx.ensure(ok, || {
                format!(
                    "the sink accepted {} rows of awkward values; {got} are visible",
                    batch.len()
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures::{FileJsonFixture, FileSinkFixture, GeneratorFixture};

    /// The message of the panic `f` ends with.
    fn failure(f: impl FnOnce()) -> String {
        let panic = std::panic::catch_unwind(AssertUnwindSafe(f)).expect_err("the check fails");
        panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| panic.downcast_ref::<&str>().unwrap_or(&"").to_string())
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        /// `seek` does nothing: a restart reads everything again.
        IgnoreSeek,
        /// `seek` swallows its error: a foreign position starts over silently.
        AcceptAnyPosition,
        /// `checkpoint_complete` acknowledges where the source has read to, and `seek`
        /// resumes from what was acknowledged (an auto-committing consumer).
        AcknowledgeReadPosition,
        /// Malformed records vanish.
        DropDeadLetters,
    }

    /// A source with a fault; `upstream` is what it acknowledged, shared by its instances.
    struct Broken {
        inner: Box<dyn Source>,
        fault: Fault,
        upstream: Arc<Mutex<Option<Vec<SourcePosition>>>>,
    }

    impl Source for Broken {
        fn schema(&self) -> SchemaRef {
            self.inner.schema()
        }
        fn partitions(&self) -> Vec<String> {
            self.inner.partitions()
        }
        fn extra_ports(&self) -> Vec<PortSpec> {
            self.inner.extra_ports()
        }
        fn read(
            &mut self,
            out: &mut ReadBuffers,
            max_records: usize,
            now_ms: i64,
        ) -> Result<ReadStatus, RunError> {
            let status = self.inner.read(out, max_records, now_ms);
            if self.fault == Fault::DropDeadLetters {
                out.dead_letters.clear();
            }
            status
        }
        fn positions(&self) -> Vec<SourcePosition> {
            self.inner.positions()
        }
        fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError> {
            match self.fault {
                Fault::IgnoreSeek => Ok(()),
                Fault::AcceptAnyPosition => {
                    let _ = self.inner.seek(positions);
                    Ok(())
                }
                Fault::AcknowledgeReadPosition => {
                    let acknowledged = self.upstream.lock().unwrap().clone();
                    self.inner
                        .seek(acknowledged.as_deref().unwrap_or(positions))
                }
                Fault::DropDeadLetters => self.inner.seek(positions),
            }
        }
        fn checkpoint_complete(
            &mut self,
            epoch: Epoch,
            positions: &[SourcePosition],
        ) -> Result<(), RunError> {
            if self.fault == Fault::AcknowledgeReadPosition {
                *self.upstream.lock().unwrap() = Some(self.inner.positions());
            }
            self.inner.checkpoint_complete(epoch, positions)
        }
    }

    struct BrokenFixture {
        inner: Box<dyn SourceFixture>,
        fault: Fault,
        upstream: Arc<Mutex<Option<Vec<SourcePosition>>>>,
    }

    impl BrokenFixture {
        fn new(inner: impl SourceFixture + 'static, fault: Fault) -> BrokenFixture {
            BrokenFixture {
                inner: Box::new(inner),
                fault,
                upstream: Arc::default(),
            }
        }

        fn wrap(&self, inner: Box<dyn Source>) -> Box<dyn Source> {
            Box::new(Broken {
                inner,
                fault: self.fault,
                upstream: self.upstream.clone(),
            })
        }
    }

    impl SourceFixture for BrokenFixture {
        fn name(&self) -> &str {
            "broken"
        }
        fn build(&self) -> Box<dyn Source> {
            self.wrap(self.inner.build())
        }
        fn corrupt(&self) -> Option<CorruptInput<'_>> {
            let c = self.inner.corrupt()?;
            Some(CorruptInput {
                build: Box::new(move || self.wrap((c.build)())),
                position: c.position,
            })
        }
    }

    fn broken_source(inner: impl SourceFixture + 'static, fault: Fault) -> String {
        failure(|| check_source(&BrokenFixture::new(inner, fault)))
    }

    #[test]
    fn a_source_that_ignores_seek_fails_the_round_trip() {
        let msg = broken_source(GeneratorFixture::new(), Fault::IgnoreSeek);
        assert!(
            msg.contains("source `broken` fails check `seek_round_trip`: right after seek"),
            "{msg}"
        );
    }

    #[test]
    fn a_source_that_starts_over_on_a_foreign_position_fails_position_encoding() {
        let msg = broken_source(GeneratorFixture::new(), Fault::AcceptAnyPosition);
        assert!(msg.contains("fails check `position_encoding`"), "{msg}");
        assert!(msg.contains("another connector kind"), "{msg}");
    }

    #[test]
    fn a_source_that_acknowledges_what_it_read_fails_crash_mid_epoch() {
        let msg = broken_source(GeneratorFixture::new(), Fault::AcknowledgeReadPosition);
        assert!(msg.contains("fails check `crash_mid_epoch`"), "{msg}");
    }

    #[test]
    fn a_source_that_drops_malformed_records_fails_dead_letters() {
        let msg = broken_source(FileJsonFixture::new(), Fault::DropDeadLetters);
        assert!(msg.contains("fails check `dead_letters`"), "{msg}");
        assert!(msg.contains("gave 0 dead letters"), "{msg}");
    }

    /// A sink that claims more than it gives.
    struct Claims(Box<dyn Sink>, Guarantee);

    impl Sink for Claims {
        fn guarantee(&self) -> Guarantee {
            self.1
        }
        fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
            self.0.write(batch)
        }
        fn pre_commit(&mut self, epoch: Epoch) -> Result<Vec<u8>, RunError> {
            self.0.pre_commit(epoch)
        }
        fn commit(&mut self, epoch: Epoch) -> Result<(), RunError> {
            self.0.commit(epoch)
        }
        fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError> {
            self.0.recover(state)
        }
        fn finish(&mut self) -> Result<(), RunError> {
            self.0.finish()
        }
    }

    struct ClaimsTarget(Box<dyn SinkTarget>);

    impl SinkTarget for ClaimsTarget {
        fn sink(&self, schema: SchemaRef) -> Box<dyn Sink> {
            Box::new(Claims(self.0.sink(schema), Guarantee::ExactlyOnce))
        }
        fn visible(&self, schema: &SchemaRef) -> Vec<Vec<Value>> {
            self.0.visible(schema)
        }
    }

    /// The straight-through file sink claiming exactly-once.
    struct Overclaiming;

    impl SinkFixture for Overclaiming {
        fn name(&self) -> &str {
            "overclaiming file"
        }
        fn guarantee(&self) -> Guarantee {
            Guarantee::ExactlyOnce
        }
        fn target(&self) -> Box<dyn SinkTarget> {
            Box::new(ClaimsTarget(FileSinkFixture::direct().target()))
        }
    }

    #[test]
    fn a_sink_that_shows_rows_before_their_commit_is_not_exactly_once() {
        let msg = failure(|| check_sink(&Overclaiming));
        assert!(
            msg.contains("sink `overclaiming file` fails check `commit_idempotent`"),
            "{msg}"
        );
        assert!(msg.contains("before commit(1)"), "{msg}");
    }

    #[test]
    fn the_recorder_sees_handles_registered_here_and_updated_elsewhere() {
        let recorder = CaptureRecorder::default();
        let (counter, gauge) = metrics::with_local_recorder(&recorder, || {
            (
                metrics::counter!("c_total", "node" => "n", "port" => "main"),
                metrics::gauge!("g", "node" => "n"),
            )
        });
        std::thread::spawn(move || {
            counter.increment(3);
            gauge.set(1.5);
        })
        .join()
        .unwrap();
        assert_eq!(
            recorder.counter("c_total", &[("port", "main"), ("node", "n")]),
            Some(3)
        );
        assert_eq!(recorder.gauge("g", &[("node", "n")]), Some(1.5));
        assert_eq!(recorder.counter("c_total", &[("node", "n")]), None);
    }
}
