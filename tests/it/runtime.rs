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
