//! Crash recovery, savepoints and bootstrap through the real binary. Crashes: the demo pipeline (CDC reference tables → gated
//! as-of enrichment → routes, windows → seven transactional file sinks) is killed with
//! SIGKILL at random moments, at least 20 times, and four times made to die where a random
//! kill rarely lands (failpoints: between a checkpoint's state files and its manifest, before
//! its rename, and inside a sink's commit before and after its append); it is restarted each
//! time from its checkpoint directory. Its final outputs
//! must equal an uninterrupted run's: no line lost, none duplicated.
//!
//! The pipeline is `examples/demo.yaml` with what makes a run's output depend on timing
//! taken out: sources are not released as idle, and the watermark's out-of-orderness bound
//! covers the generator's jitter, so no event is late however the threads interleave (the
//! outputs are compared as sorted lines: their order across instances is not fixed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KILLS: usize = 20;

fn demo_pipeline(out: &Path, checkpoints: Option<&Path>) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut text = std::fs::read_to_string(root.join("demo.yaml")).unwrap();
    let mut replace = |from: &str, to: &str| {
        assert!(
            text.contains(from),
            "examples/demo.yaml no longer has `{from}`"
        );
        text = text.replace(from, to);
    };
    replace("demo/", &format!("{}/demo/", root.display()));
    replace("watershed-out/", &format!("{}/", out.display()));
    match checkpoints {
        Some(dir) => replace(
            "checkpoint: {interval: 5s}",
            &format!(
                "checkpoint: {{interval: 150ms, dir: \"{}\"}}",
                dir.display()
            ),
        ),
        None => replace(
            "checkpoint: {interval: 5s}",
            "checkpoint: {interval: 150ms}",
        ),
    }
    replace("      rate: 14 ", "      # no pacing ");
    replace("    idle_timeout: 1s ", "    # ");
    replace("    idle_timeout: 500ms ", "    # ");
    // Long enough that the kills and failpoints all happen before the end even when a busy
    // machine stretches the delays between them (and short of the pause at 10m).
    replace("count: 60000", "count: 28000");
    replace("rate: 12000 ", "rate: 1500 ");
    replace("max_out_of_orderness: 3s", "max_out_of_orderness: 10s");
    text
}

/// The binary, with reference tables kept in chunks of 4 KiB (instead of 16 MiB), so that
/// the demo's small tables span many and checkpoints share most of them.
fn watershed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watershed"));
    cmd.env("WATERSHED_ARENA_CHUNK_BITS", "12");
    cmd
}

fn start(pipeline: &Path, failpoint: Option<&str>) -> Child {
    let mut cmd = watershed();
    cmd.args(["run", "--log", "error", "--metrics-addr", "off"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(f) = failpoint {
        cmd.env("WATERSHED_FAILPOINT", f);
    }
    cmd.spawn().unwrap()
}

pub(crate) fn sorted_lines(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let mut lines: Vec<String> = std::fs::read_to_string(&f)
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
            lines.sort();
            (name, lines)
        })
        .collect()
}

/// The output of the demo pipeline run once without checkpoints, under `<dir>/expected`.
fn uninterrupted(dir: &Path) -> Vec<(String, Vec<String>)> {
    let out = dir.join("expected");
    let plain = dir.join("plain.yaml");
    std::fs::write(&plain, demo_pipeline(&out, None)).unwrap();
    let status = start(&plain, None).wait().unwrap();
    assert!(status.success(), "uninterrupted run failed: {status}");
    sorted_lines(&out)
}

/// A small deterministic generator of kill delays.
struct Delays(u64);

impl Delays {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// Runs `pipeline` to its end from its checkpoint directory, killing it with SIGKILL `kills`
/// times at random moments and letting it die at each of `failpoints` (by attempt number);
/// returns (kills, failpoint deaths, runs).
fn run_with_crashes(
    pipeline: &Path,
    kills_wanted: usize,
    failpoints: &[(usize, &str)],
    seed: u64,
) -> (usize, usize, usize) {
    let mut delays = Delays(seed);
    let mut kills = 0;
    let mut failpoint_deaths = 0;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 400, "no end after {attempts} attempts");
        let failpoint = failpoints
            .iter()
            .find(|(at, _)| *at == attempts)
            .map(|(_, f)| *f);
        let mut child = start(pipeline, failpoint);
        if failpoint.is_some() {
            let status = child.wait().unwrap();
            if !status.success() {
                failpoint_deaths += 1;
                continue;
            }
            break;
        }
        if kills < kills_wanted {
            std::thread::sleep(Duration::from_millis(delays.next_ms(50, 400)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "restarted run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        break;
    }
    eprintln!("{kills} kills, {failpoint_deaths} failpoint deaths, {attempts} runs");
    assert!(
        kills >= kills_wanted,
        "the run ended after only {kills} kills: make it longer"
    );
    assert_eq!(
        failpoint_deaths,
        failpoints.len(),
        "every failpoint was reached"
    );
    (kills, failpoint_deaths, attempts)
}

/// The output under `out` equals `expected`: the same files, the same lines.
fn assert_same_output(out: &Path, expected: &[(String, Vec<String>)], kills: usize) {
    let got = sorted_lines(out);
    assert_eq!(
        got.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "the same output files (no pending file left over)"
    );
    for ((name, got), (_, want)) in got.iter().zip(expected) {
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: {} lines after {kills} kills, {} without",
            got.len(),
            want.len()
        );
        assert!(got == want, "{name}: the same lines");
    }
}

/// The manifests of the checkpoints kept in `dir`.
fn manifests(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("chk-"))
        .map(|e| std::fs::read_to_string(e.path().join("MANIFEST")).unwrap())
        .collect()
}

#[test]
fn killed_runs_restart_from_checkpoints_without_losing_or_duplicating_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = uninterrupted(tmp.path());
    let rows: usize = expected.iter().map(|(_, l)| l.len()).sum();
    assert!(rows > 100_000, "the demo produced only {rows} lines");

    let out = tmp.path().join("out");
    let checkpoints = tmp.path().join("checkpoints");
    let crashing = tmp.path().join("crashing.yaml");
    std::fs::write(&crashing, demo_pipeline(&out, Some(&checkpoints))).unwrap();
    // Four times, die at a moment a random kill rarely hits: inside a checkpoint write, and
    // inside a sink's commit (before its append, and between the append and the removal of
    // its pending file).
    let failpoints = [
        (4, "checkpoint-before-manifest:2"),
        (9, "checkpoint-before-rename:3"),
        (14, "sink-commit-before-append:9"),
        (19, "sink-commit-before-remove:12"),
    ];
    let (kills, _, _) = run_with_crashes(&crashing, KILLS, &failpoints, 0x9e37_79b9_7f4a_7c15);
    // The reference tables' chunks were shared between checkpoints, not written again.
    assert!(
        manifests(&checkpoints)
            .iter()
            .any(|m| m.contains("\"new\":false")),
        "no checkpoint shares a blob with an earlier one"
    );
    assert_same_output(&out, &expected, kills);
}

/// The same with the reference tables on disk (`state.backend: disk`, a cache of 64 keys):
/// their change logs are linked into checkpoints and replayed at each restart.
#[test]
fn killed_runs_with_tables_on_disk_restart_without_losing_or_duplicating_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = uninterrupted(tmp.path());
    let out = tmp.path().join("out");
    let checkpoints = tmp.path().join("checkpoints");
    let crashing = tmp.path().join("crashing.yaml");
    let work = tmp.path().join("tables");
    let text = with_tables_on_disk(demo_pipeline(&out, Some(&checkpoints)), &work);
    std::fs::write(&crashing, text).unwrap();
    let (kills, _, _) = run_with_crashes(
        &crashing,
        8,
        &[(3, "checkpoint-before-manifest:2")],
        0x2545_f491_4f6c_dd1d,
    );
    assert!(
        manifests(&checkpoints).iter().any(|m| m.contains("log-")),
        "no checkpoint holds a table's change log"
    );
    assert_same_output(&out, &expected, kills);
    // Every run removed its tables' working copies.
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the tables' directory: {left:?}");
}

/// `pipeline` with its reference tables on disk (a cache of 64 keys), working under `work`.
fn with_tables_on_disk(pipeline: String, work: &Path) -> String {
    let text = pipeline.replacen(
        "\nenrichment:",
        &format!(
            "\nstate: {{backend: disk, cache_rows: 64, dir: \"{}\"}}\nenrichment:",
            work.display()
        ),
        1,
    );
    assert!(text.contains("backend: disk"));
    text
}

/// A disk table's last snapshot, taken as its input ends, names change log segments the
/// table owns; with no periodic checkpoint before it, the run's last checkpoint is the first
/// to need them, after the table's task has ended.
#[test]
fn the_last_checkpoint_keeps_the_change_logs_of_tables_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = uninterrupted(tmp.path());
    let out = tmp.path().join("out");
    let checkpoints = tmp.path().join("checkpoints");
    let text = with_tables_on_disk(
        demo_pipeline(&out, Some(&checkpoints)),
        &tmp.path().join("tables"),
    )
    .replace("interval: 150ms", "interval: off");
    let pipeline = tmp.path().join("last.yaml");
    std::fs::write(&pipeline, text).unwrap();
    run_to_end(&pipeline, &[]);
    assert!(sorted_lines(&out) == expected, "the same lines");
    let kept = manifests(&checkpoints);
    assert_eq!(kept.len(), 1, "only the last checkpoint");
    assert!(kept[0].contains("log-") && kept[0].contains("\"new\":true"));
    let again = run_to_end(&pipeline, &[]);
    assert!(again.contains("restored from checkpoint"), "{again}");
    assert!(
        sorted_lines(&out) == expected,
        "nothing more after a restart"
    );
}

/// The demo pipeline writing under `<dir>/<name>`, with its checkpoints in `<dir>/cp-<name>`:
/// the output directory and the pipeline file.
fn checkpointed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(name);
    let pipeline = dir.join(format!("{name}.yaml"));
    let checkpoints = dir.join(format!("cp-{name}"));
    std::fs::write(&pipeline, demo_pipeline(&out, Some(&checkpoints))).unwrap();
    (out, pipeline)
}

fn run_to_end(pipeline: &Path, extra: &[&str]) -> String {
    let out = watershed()
        .args(["run", "--log", "warn", "--metrics-addr", "off"])
        .arg(pipeline)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// `watershed bootstrap` loads only the reference snapshots into a savepoint (writing no
/// output); `watershed savepoint` stops a running pipeline at a savepoint without draining
/// it; SIGTERM stops it at a last checkpoint. A run continuing from any of them ends with the
/// uninterrupted run's lines.
#[test]
fn savepoints_and_bootstrap_continue_exactly_where_they_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = uninterrupted(tmp.path());

    // Bootstrap, then live from its savepoint.
    let (out, pipeline) = checkpointed(tmp.path(), "bootstrapped");
    let savepoint = tmp.path().join("bootstrap-savepoint");
    let boot = watershed()
        .args(["bootstrap", "--log", "warn"])
        .arg(&pipeline)
        .arg("--savepoint")
        .arg(&savepoint)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&boot.stderr);
    assert!(boot.status.success(), "{text}");
    assert!(text.contains("16362 reference records read"), "{text}");
    assert!(!out.exists(), "a bootstrap writes no output");
    let stderr = run_to_end(
        &pipeline,
        &["--from-savepoint", savepoint.to_str().unwrap()],
    );
    assert!(stderr.contains("restored from checkpoint 1"), "{stderr}");
    assert!(
        sorted_lines(&out) == expected,
        "bootstrapped run: the same lines"
    );

    // Stop a running pipeline at a savepoint, then continue from it.
    let (out, pipeline) = checkpointed(tmp.path(), "stopped");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // The savepoint goes outside the checkpoint directory: the run allows it.
    let running = watershed()
        .args(["run", "--log", "warn", "--metrics-addr", &addr])
        .arg("--savepoint-root")
        .arg(tmp.path())
        .arg(&pipeline)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until observations flow (the generator is paced: it runs for seconds).
    let mut seen = 0;
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(body) = get_status(&addr) {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            seen = doc["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["node"] == "observations")
                .map(|i| i["records_in"].as_u64().unwrap())
                .sum();
            if seen > 2000 {
                break;
            }
        }
    }
    assert!(seen > 2000, "observations did not flow");
    let savepoint = tmp.path().join("stop-savepoint");
    let taken = watershed()
        .args(["savepoint", "--log", "warn"])
        .arg(&pipeline)
        .arg("--dir")
        .arg(&savepoint)
        .args(["--addr", &addr])
        .output()
        .unwrap();
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let stopped = running.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "{text}");
    assert!(text.contains("input not drained"), "{text}");
    assert!(
        sorted_lines(&out) != expected,
        "stopped before the end: not all output is there yet"
    );
    run_to_end(
        &pipeline,
        &["--from-savepoint", savepoint.to_str().unwrap()],
    );
    assert!(
        sorted_lines(&out) == expected,
        "continued run: the same lines"
    );

    // SIGTERM with a checkpoint directory: a last checkpoint, no drain; a plain restart
    // continues from it.
    let (out, pipeline) = checkpointed(tmp.path(), "terminated");
    stop_with_signal(&pipeline, libc::SIGTERM);
    assert!(sorted_lines(&out) != expected, "stopped before the end");
    let stderr = run_to_end(&pipeline, &[]);
    assert!(stderr.contains("restored from checkpoint"), "{stderr}");
    assert!(
        sorted_lines(&out) == expected,
        "restarted run: the same lines"
    );

    // SIGUSR1: a savepoint under the checkpoint directory, then a stop without draining.
    let (out, pipeline) = checkpointed(tmp.path(), "signalled");
    let text = stop_with_signal(&pipeline, libc::SIGUSR1);
    assert!(sorted_lines(&out) != expected, "stopped before the end");
    let savepoints: Vec<PathBuf> =
        std::fs::read_dir(tmp.path().join("cp-signalled").join("savepoints"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
    assert_eq!(savepoints.len(), 1, "{savepoints:?}");
    assert!(text.contains(savepoints[0].to_str().unwrap()), "{text}");
    run_to_end(
        &pipeline,
        &["--from-savepoint", savepoints[0].to_str().unwrap()],
    );
    assert!(
        sorted_lines(&out) == expected,
        "run continued from the signalled savepoint: the same lines"
    );
}

/// Starts `pipeline`, sends it `signal` 1.5 s later and waits for it to stop cleanly; returns
/// its stderr.
fn stop_with_signal(pipeline: &Path, signal: libc::c_int) -> String {
    let running = start(pipeline, None);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill only sends a signal to the child we started.
    unsafe { libc::kill(running.id() as libc::pid_t, signal) };
    let stopped = running.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert!(stopped.status.success(), "{text}");
    text
}

fn get_status(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}
