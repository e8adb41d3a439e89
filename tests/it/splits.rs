//! One large file read in byte-range splits by several instances of its source, through the
//! binary: the same windows and rows as one instance reading it whole, and runs killed with
//! SIGKILL — restarted with another number of instances each time — resume every split
//! where the last checkpoint left it: no line lost, none doubled.
//!
//! The events' times jitter less than the watermark's out-of-orderness bound and no source
//! is released as idle, so no event is late however the splits' reads interleave; outputs
//! are compared as sorted lines.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::crash::sorted_lines;

const LINES: usize = 30_000;

/// `LINES` observations of 40 hosts, 10 ms apart with up to 3 s of jitter.
fn write_events(path: &Path) {
    let mut text = String::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..LINES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let ms = (i as u64 * 10).saturating_sub(state % 3000);
        let (s, ms) = (ms / 1000, ms % 1000);
        text.push_str(&format!(
            "{{\"ts\":\"2026-01-01T{:02}:{:02}:{:02}.{ms:03}Z\",\"host\":\"h{}\",\"bytes\":{},\"note\":\"line {i}\"}}\n",
            s / 3600,
            s / 60 % 60,
            s % 60,
            state % 40,
            state % 1500,
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The pipeline over `dir/events.jsonl` with `parallelism` source (and operator) instances,
/// cut every `split_bytes` (whole files if `None`), checkpointing into `dir/checkpoints` if
/// `checkpoints`, paced at `rate` lines per second if given.
fn pipeline(
    dir: &Path,
    out: &str,
    parallelism: usize,
    split_bytes: Option<u64>,
    checkpoints: bool,
    rate: Option<u64>,
) -> std::path::PathBuf {
    let checkpoint = if checkpoints {
        format!(
            "checkpoint: {{interval: 100ms, dir: \"{}\"}}\n",
            dir.join("checkpoints").display()
        )
    } else {
        String::new()
    };
    let split = split_bytes.map_or(String::new(), |b| format!(", split_bytes: {b}"));
    let rate = rate.map_or(String::new(), |r| format!(", rate: {r}"));
    let text = format!(
        "name: splits\nparallelism: {parallelism}\n{checkpoint}sources:\n  obs:\n    file: {{paths: [\"{events}\"]{split}{rate}}}\n    parallelism: {parallelism}\n    schema: {{ts: timestamp, host: string, bytes: int, note: string}}\n    event_time: {{field: ts, max_out_of_orderness: 5s}}\noperators:\n  counts:\n    inputs: [obs]\n    window: {{key: [host], tumbling: 1m, aggregates: {{events: count, bytes: sum(bytes)}}}}\nsinks:\n  windows: {{input: counts, file: \"{out}/windows.jsonl\"}}\n  rows: {{input: obs, file: \"{out}/rows.jsonl\"}}\n",
        events = dir.join("events.jsonl").display(),
        out = dir.join(out).display(),
    );
    let path = dir.join(format!("pipeline-{parallelism}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(pipeline: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watershed"));
    cmd.args(["run", "--log", "error", "--metrics-addr", "off"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(pipeline: &Path) {
    let out = run(pipeline).output().unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The partitions the latest checkpoint in `dir` holds positions of.
fn checkpointed_partitions(dir: &Path) -> String {
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("chk-"))
        .map(|e| e.path())
        .collect();
    manifests.sort();
    std::fs::read_to_string(manifests.last().unwrap().join("MANIFEST")).unwrap()
}

#[test]
fn one_file_in_splits_over_three_instances_gives_what_one_whole_reader_gives() {
    let tmp = tempfile::tempdir().unwrap();
    write_events(&tmp.path().join("events.jsonl"));
    run_to_end(&pipeline(tmp.path(), "whole", 1, None, false, None));
    run_to_end(&pipeline(tmp.path(), "split", 3, Some(16_384), true, None));
    let (whole, split) = (
        sorted_lines(&tmp.path().join("whole")),
        sorted_lines(&tmp.path().join("split")),
    );
    assert_eq!(whole[0].1.len(), LINES, "rows.jsonl holds every line");
    assert!(whole == split, "the same windows and rows");
    let manifest = checkpointed_partitions(&tmp.path().join("checkpoints"));
    assert!(
        manifest.contains("events.jsonl@16384") && manifest.contains("events.jsonl@32768"),
        "the file was read in splits of 16384 bytes"
    );
}

#[test]
fn killed_runs_in_splits_resume_every_split_with_any_number_of_instances() {
    let tmp = tempfile::tempdir().unwrap();
    write_events(&tmp.path().join("events.jsonl"));
    run_to_end(&pipeline(tmp.path(), "expected", 1, None, false, None));
    let expected = sorted_lines(&tmp.path().join("expected"));

    // Killed mid-run five times, restarted with 2, 3, 1, 3 and 2 instances; then to the end.
    let mut kills = 0;
    for (attempt, parallelism) in [2, 3, 1, 3, 2].into_iter().enumerate() {
        let p = pipeline(
            tmp.path(),
            "out",
            parallelism,
            Some(8_192),
            true,
            Some(6_000),
        );
        let mut child = run(&p).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(400 + 150 * attempt as u64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 3, "only {kills} runs were killed before the end");
    run_to_end(&pipeline(tmp.path(), "out", 2, Some(8_192), true, None));
    let got = sorted_lines(&tmp.path().join("out"));
    for ((name, got), (_, want)) in got.iter().zip(&expected) {
        assert_eq!(got.len(), want.len(), "{name}: lines after {kills} kills");
        assert!(got == want, "{name}: the same lines");
    }
    assert_eq!(got.len(), expected.len(), "the same files");
}

#[test]
fn a_checkpoint_of_splits_restored_by_a_run_reading_whole_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    write_events(&tmp.path().join("events.jsonl"));
    run_to_end(&pipeline(tmp.path(), "out", 2, Some(8_192), true, None));
    // The same pipeline at one instance: no default split, so it would read the file whole.
    let out = run(&pipeline(tmp.path(), "out", 1, None, true, None))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("in splits of 8192 bytes") && err.contains("split_bytes: 8192"),
        "{err}"
    );
}
