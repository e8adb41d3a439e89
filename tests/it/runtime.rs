//! The threaded runtime on a manual clock: paced sources wait for simulated time, barriers
//! are injected by the supervisor every checkpoint interval, and every task acknowledges them.

use std::time::Duration;

use watershed::config::{self, Overrides};
use watershed::runtime::{self, RunContext};
use watershed::status::StatusRegistry;
use watershed::time::ManualClock;

const T0: i64 = 1_767_225_600_000;

#[test]
fn barriers_flow_through_a_running_pipeline_and_checkpoints_complete() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("counts.jsonl");
    let yaml = format!(
        "name: paced
checkpoint: {{interval: 500ms}}
alerts: {{watermark_stall: off}}
sources:
  obs:
    generator: {{rate: 100, count: 300, hosts: 7, start: \"2026-01-01T00:00:00Z\", partitions: 2}}
    parallelism: 2
operators:
  counts:
    inputs: [obs]
    parallelism: 2
    window: {{key: [host], tumbling: 1s, aggregates: {{n: count}}}}
sinks:
  out: {{input: counts, file: \"{}\"}}
",
        out.display()
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let compiled = config::load_and_compile(&path, &Overrides::default()).unwrap();
    let clock = ManualClock::new(T0);
    let ctx = RunContext::new(clock.clone(), StatusRegistry::new("paced"));
    let run = std::thread::spawn(move || runtime::run(compiled.plan, ctx));
    // Move simulated time forward (5 ms per real ms) until the run ends (bounded: 60 s of
    // simulated time). The run needs 3 s of simulated time; barriers are due every 500 ms.
    let mut steps = 0;
    while !run.is_finished() && steps < 12_000 {
        clock.advance(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(1));
        steps += 1;
    }
    let summary = run.join().unwrap().unwrap();
    assert!(
        summary.checkpoints_completed >= 3,
        "{}",
        summary.checkpoints_completed
    );
    let cp = summary.last_checkpoint.unwrap();
    assert!(
        cp.finished,
        "the last checkpoint is the one at the end of the input"
    );
    let positions: Vec<_> = cp.sources.values().flat_map(|s| &s.positions).collect();
    assert_eq!(positions.len(), 2, "one position per generator partition");
    assert!(positions.iter().all(|p| p.position.kind == "generator"));
    assert_eq!(
        cp.operators.len(),
        2,
        "a snapshot from each window instance"
    );
    assert_eq!(cp.sinks.len(), 1, "the sink's pre-commit");

    let text = std::fs::read_to_string(&out).unwrap();
    let total: i64 = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 300, "every generated record is counted exactly once");
}

/// A sink that fails once, with an error that may go away, at its second pre-commit.
struct FlakySink {
    inner: Box<dyn watershed::dataflow::Sink>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pre_commits: u32,
}

impl watershed::dataflow::Sink for FlakySink {
    fn guarantee(&self) -> watershed::dataflow::Guarantee {
        self.inner.guarantee()
    }
    fn write(&mut self, b: &watershed::types::Batch) -> Result<(), watershed::error::RunError> {
        self.inner.write(b)
    }
    fn pre_commit(&mut self, e: u64) -> Result<Vec<u8>, watershed::error::RunError> {
        self.pre_commits += 1;
        if self.pre_commits == 2 && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(watershed::error::RunError::io(
                "cannot write to the sink",
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            ));
        }
        self.inner.pre_commit(e)
    }
    fn commit(&mut self, e: u64) -> Result<(), watershed::error::RunError> {
        self.inner.commit(e)
    }
    fn recover(&mut self, s: Option<&[u8]>) -> Result<(), watershed::error::RunError> {
        self.inner.recover(s)
    }
    fn finish(&mut self) -> Result<(), watershed::error::RunError> {
        self.inner.finish()
    }
}

/// Runs `yaml` to its end on a manual clock, restarting after transient failures; with
/// `flaky`, the sink fails once.
fn run_restarting(
    dir: &std::path::Path,
    yaml: &str,
    flaky: bool,
) -> Result<runtime::RunSummary, watershed::error::RunError> {
    run_restarting_from(dir, yaml, flaky, false)
}

/// `run_restarting`, started from scratch (`run --fresh-start`) when `fresh`.
fn run_restarting_from(
    dir: &std::path::Path,
    yaml: &str,
    flaky: bool,
    fresh: bool,
) -> Result<runtime::RunSummary, watershed::error::RunError> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use watershed::runtime::NodeKind;
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let failed = Arc::new(AtomicBool::new(!flaky));
    let make_plan = move || {
        let mut plan = config::load_and_compile(&path, &Overrides::default())?.plan;
        for node in &mut plan.nodes {
            if let NodeKind::Sink { factory } = &mut node.kind {
                let inner = factory.clone();
                let failed = failed.clone();
                *factory = Arc::new(move |i| {
                    Ok(Box::new(FlakySink {
                        inner: inner(i)?,
                        failed: failed.clone(),
                        pre_commits: 0,
                    }) as Box<dyn watershed::dataflow::Sink>)
                });
            }
        }
        Ok(plan)
    };
    let clock = ManualClock::new(T0);
    let mut ctx = RunContext::new(clock.clone(), StatusRegistry::new("restarts"));
    ctx.fresh_start = fresh;
    let backoff = watershed::runtime::retry::Backoff::with_seed(
        Duration::from_millis(100),
        Duration::from_secs(1),
        1,
    );
    let run = std::thread::spawn(move || runtime::run_restarting(make_plan, ctx, backoff));
    let mut steps = 0;
    while !run.is_finished() && steps < 20_000 {
        clock.advance(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(1));
        steps += 1;
    }
    run.join().unwrap()
}

/// The pipeline of the restart tests, with its checkpoints and output under `dir`.
fn restarts_pipeline(dir: &std::path::Path) -> String {
    format!(
        "name: restarts
checkpoint: {{interval: 300ms, dir: \"{}\"}}
alerts: {{watermark_stall: off}}
sources:
  obs:
    generator: {{rate: 200, count: 600, hosts: 5, start: \"2026-01-01T00:00:00Z\"}}
operators:
  counts:
    inputs: [obs]
    parallelism: 1
    window: {{key: [host], tumbling: 1s, aggregates: {{n: count}}}}
sinks:
  out: {{input: counts, file: \"{}\"}}
",
        dir.join("cp").display(),
        dir.join("out.jsonl").display()
    )
}

/// A run started from scratch over broken checkpoints that then fails transiently restarts
/// from the checkpoint it completed itself (numbered above the broken ones), not from
/// scratch again nor from a broken one.
#[test]
fn a_fresh_start_that_fails_transiently_restarts_from_its_own_checkpoint() {
    let straight = tempfile::tempdir().unwrap();
    run_restarting(straight.path(), &restarts_pipeline(straight.path()), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("cp").join("chk-000000000009");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("MANIFEST"), "not a manifest").unwrap();
    let yaml = restarts_pipeline(dir.path());
    let refused = run_restarting_from(dir.path(), &yaml, false, false).unwrap_err();
    assert!(
        refused.to_string().contains("none of the 1 checkpoints"),
        "{refused}"
    );
    let summary = run_restarting_from(dir.path(), &yaml, true, true).unwrap();
    let (epoch, _) = summary.restored_from.expect("restored after the failure");
    assert!(epoch > 9, "restored epoch {epoch}");
    let read = |d: &std::path::Path| std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    assert!(!read(straight.path()).is_empty());
    assert_eq!(read(dir.path()), read(straight.path()));
}

#[test]
fn a_transient_sink_failure_restarts_from_the_checkpoint_without_losing_or_doubling() {
    let straight = tempfile::tempdir().unwrap();
    run_restarting(straight.path(), &restarts_pipeline(straight.path()), false).unwrap();
    let flaky = tempfile::tempdir().unwrap();
    let summary = run_restarting(flaky.path(), &restarts_pipeline(flaky.path()), true).unwrap();
    assert!(
        summary.restored_from.is_some(),
        "the second run restored a checkpoint"
    );
    let read = |d: &tempfile::TempDir| std::fs::read_to_string(d.path().join("out.jsonl")).unwrap();
    assert!(!read(&straight).is_empty());
    assert_eq!(read(&flaky), read(&straight));
}

#[test]
fn a_transient_failure_without_checkpoints_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: no-restarts
checkpoint: {{interval: 300ms}}
sources:
  obs:
    generator: {{rate: 200, count: 600, hosts: 5, start: \"2026-01-01T00:00:00Z\"}}
sinks:
  out: {{input: obs, file: \"{}\"}}
",
        dir.path().join("out.jsonl").display()
    );
    let error = run_restarting(dir.path(), &yaml, true).unwrap_err();
    assert_eq!(
        error.class(),
        watershed::error::ErrorClass::Transient,
        "{error}"
    );
}

/// A sink that panics on its first batch (a bug in a component).
struct PanickingSink(Box<dyn watershed::dataflow::Sink>);

impl watershed::dataflow::Sink for PanickingSink {
    fn guarantee(&self) -> watershed::dataflow::Guarantee {
        self.0.guarantee()
    }
    fn write(&mut self, _: &watershed::types::Batch) -> Result<(), watershed::error::RunError> {
        panic!("a component's bug");
    }
    fn pre_commit(&mut self, e: u64) -> Result<Vec<u8>, watershed::error::RunError> {
        self.0.pre_commit(e)
    }
    fn commit(&mut self, e: u64) -> Result<(), watershed::error::RunError> {
        self.0.commit(e)
    }
    fn recover(&mut self, s: Option<&[u8]>) -> Result<(), watershed::error::RunError> {
        self.0.recover(s)
    }
    fn finish(&mut self) -> Result<(), watershed::error::RunError> {
        self.0.finish()
    }
}

/// Regression: a task whose thread died without reporting (a panic) left the supervisor
/// waiting for it forever, the run hung. It now stops the run with an error naming the task.
#[test]
fn a_task_that_panics_stops_the_run_instead_of_hanging_it() {
    use std::sync::Arc;
    use watershed::runtime::NodeKind;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, restarts_pipeline(dir.path())).unwrap();
    let mut plan = config::load_and_compile(&path, &Overrides::default())
        .unwrap()
        .plan;
    for node in &mut plan.nodes {
        if let NodeKind::Sink { factory } = &mut node.kind {
            let inner = factory.clone();
            *factory = Arc::new(move |i| {
                Ok(Box::new(PanickingSink(inner(i)?)) as Box<dyn watershed::dataflow::Sink>)
            });
        }
    }
    let clock = ManualClock::new(T0);
    let ctx = RunContext::new(clock.clone(), StatusRegistry::new("restarts"));
    let run = std::thread::spawn(move || runtime::run(plan, ctx));
    let mut steps = 0;
    while !run.is_finished() && steps < 20_000 {
        clock.advance(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(1));
        steps += 1;
    }
    assert!(run.is_finished(), "the run hangs");
    let err = run.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("out#0") && err.contains("panicked"), "{err}");
}

/// An operator that panics on its first batch (a bug in a component).
struct PanickingOperator(Box<dyn watershed::dataflow::Operator>);

impl watershed::dataflow::Operator for PanickingOperator {
    fn ports(&self) -> Vec<watershed::dataflow::PortSpec> {
        self.0.ports()
    }
    fn process(
        &mut self,
        _: usize,
        _: watershed::types::Batch,
        _: &mut watershed::dataflow::Output,
    ) {
        panic!("a component's bug");
    }
    fn on_watermark(
        &mut self,
        w: watershed::types::EventTime,
        out: &mut watershed::dataflow::Output,
    ) {
        self.0.on_watermark(w, out)
    }
    fn snapshot(&mut self) -> Result<watershed::state::StateImage, watershed::error::StateError> {
        self.0.snapshot()
    }
    fn restore(
        &mut self,
        s: &watershed::state::StateImage,
    ) -> Result<(), watershed::error::StateError> {
        self.0.restore(s)
    }
}

/// Regression: a source that read its input to the end kept its channels open while it
/// waited for the run's last checkpoint, so when another input of the same operator failed,
/// that operator waited on the finished source forever and the run hung. A failure now
/// stops the run, with the failing task named, and its knock-on stops do not hide it.
#[test]
fn a_failure_beside_a_source_that_read_to_its_end_stops_the_run() {
    use std::sync::Arc;
    use watershed::runtime::NodeKind;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.jsonl"),
        r#"{"op":"r","before":null,"after":{"host":"host-1","site":"a"},"source":{"schema":"public","table":"hosts","lsn":1,"ts_ms":1767225600000}}
"#,
    )
    .unwrap();
    let yaml = format!(
        "name: failing
checkpoint: {{interval: 300ms, dir: \"{cp}\"}}
alerts: {{watermark_stall: off}}
sources:
  obs:
    generator: {{rate: 200, count: 600, hosts: 5, start: \"2026-01-01T00:00:00Z\"}}
  ref:
    file: {{format: debezium, snapshot: [\"{hosts}\"]}}
    tables:
      hosts: {{key: [host], columns: {{host: string, site: string}}}}
operators:
  counts:
    inputs: [obs]
    window: {{key: [host], tumbling: 1s, aggregates: {{n: count}}}}
  sited:
    inputs: [counts, ref.hosts]
    enrich: {{key: {{host: host}}, columns: [site]}}
sinks:
  out: {{input: sited, file: \"{out}\"}}
",
        cp = dir.path().join("cp").display(),
        hosts = dir.path().join("hosts.jsonl").display(),
        out = dir.path().join("out.jsonl").display(),
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut plan = config::load_and_compile(&path, &Overrides::default())
        .unwrap()
        .plan;
    for node in &mut plan.nodes {
        if node.name == "counts"
            && let NodeKind::Operator { factory, .. } = &mut node.kind
        {
            let inner = factory.clone();
            *factory = Arc::new(move |i| {
                Ok(Box::new(PanickingOperator(inner(i)?))
                    as Box<dyn watershed::dataflow::Operator>)
            });
        }
    }
    let clock = ManualClock::new(T0);
    let ctx = RunContext::new(clock.clone(), StatusRegistry::new("failing"));
    let run = std::thread::spawn(move || runtime::run(plan, ctx));
    let mut steps = 0;
    while !run.is_finished() && steps < 20_000 {
        clock.advance(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(1));
        steps += 1;
    }
    assert!(run.is_finished(), "the run hangs");
    let err = run.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("counts#") && err.contains("panicked"), "{err}");
}
