//! Restarts that cannot continue exactly, through the real binary: checkpoints that are all
//! broken (one missing shared blob), a newer one broken and an older one good, an output file
//! deleted between runs, a sink renamed to another file, a sink added to the pipeline, a
//! reference table's columns reordered, added or retyped. Each either restores exactly the
//! right state or stops saying why; a fresh start happens only when asked for
//! (`run --fresh-start`).
//!
//! The pipeline is the golden `cve_demo_small` case (the demo's reference tables from a
//! change stream, four enrichments, routes, windows, seven file sinks), run with a
//! checkpoint directory in a fresh working directory; reference tables are kept in chunks of
//! 256 bytes, so that its small tables span many, which checkpoints share as blobs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CASE: &str = "tests/pipelines/cve_demo_small";

/// A working directory holding a copy of the case, with its checkpoints under `cp/`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        let case = Path::new(env!("CARGO_MANIFEST_DIR")).join(CASE);
        copy_dir(&case, dir.path());
        Work { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn edit_pipeline(&self, from: &str, to: &str) {
        let path = self.path("pipeline.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "the case no longer has `{from}`");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    /// `watershed run` of the pipeline with the checkpoint directory, and `extra`.
    fn run(&self, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_watershed"))
            .env("WATERSHED_ARENA_CHUNK_BITS", "8")
            .args(["run", "--log", "warn", "--metrics-addr", "off"])
            .arg(self.path("pipeline.yaml"))
            .arg("--checkpoint-dir")
            .arg(self.path("cp"))
            .args(extra)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stderr.
    fn run_ok(&self, extra: &[&str]) -> String {
        let out = self.run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    }

    /// Runs, stops the run with SIGTERM after `ms` (at a last checkpoint) and expects it to
    /// end cleanly; returns stderr.
    fn stop_after(&self, extra: &[&str], ms: u64) -> String {
        let child = Command::new(env!("CARGO_BIN_EXE_watershed"))
            .env("WATERSHED_ARENA_CHUNK_BITS", "8")
            .args(["run", "--log", "warn", "--metrics-addr", "off"])
            .arg(self.path("pipeline.yaml"))
            .arg("--checkpoint-dir")
            .arg(self.path("cp"))
            .args(extra)
            .current_dir(self.dir.path())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        // SAFETY: kill only sends a signal to the child we started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // A signal that came before the run set up its handler ends it like a crash: the
        // next run continues from the checkpoint before.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGTERM),
            "{stderr}"
        );
        stderr
    }

    /// Runs and expects failure; returns stderr.
    fn run_refused(&self, extra: &[&str]) -> String {
        let out = self.run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "the run should have stopped:\n{stderr}"
        );
        stderr
    }

    /// The checkpoint directories, oldest first.
    fn checkpoints(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("cp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("chk-"))
            .collect();
        v.sort();
        v
    }

    /// Every output file with its bytes.
    fn outputs(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.path("out"))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn expected(&self, name: &str) -> Vec<String> {
        sorted_lines(&self.path("expected").join(name))
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Two complete checkpoints sharing blobs: a run to the end, and a second run restored from
/// it (which reads nothing more and writes its own last checkpoint).
fn two_checkpoints(w: &Work) {
    w.run_ok(&[]);
    let again = w.run_ok(&[]);
    assert!(again.contains("restored from checkpoint 1"), "{again}");
    assert!(
        !again.contains("skipping") && !again.contains("new sink"),
        "{again}"
    );
    assert_eq!(w.checkpoints().len(), 2);
    assert_eq!(
        sorted_lines(&w.path("out/observations.jsonl")),
        w.expected("observations.jsonl")
    );
}

/// Regression: one missing shared blob broke every kept checkpoint, and the run silently
/// started from scratch (exit 0), beginning its outputs afresh.
#[test]
fn one_missing_shared_blob_is_an_error_not_a_silent_fresh_start() {
    let w = Work::new();
    two_checkpoints(&w);
    let blobs: Vec<PathBuf> = std::fs::read_dir(w.path("cp/shared"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let shared = w
        .checkpoints()
        .iter()
        .map(|c| std::fs::read_to_string(c.join("MANIFEST")).unwrap())
        .collect::<Vec<_>>();
    let blob = blobs
        .iter()
        .find(|b| {
            let name = b.file_name().unwrap().to_string_lossy().into_owned();
            shared.iter().all(|m| m.contains(&name))
        })
        .expect("a blob both checkpoints name");
    let blob_name = blob.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(blob).unwrap();
    let before = w.outputs();

    let stderr = w.run_refused(&[]);
    assert!(stderr.contains("none of the 2 checkpoints"), "{stderr}");
    for c in w.checkpoints() {
        let line = stderr
            .lines()
            .find(|l| l.contains(&*c.to_string_lossy()) && l.contains(&blob_name))
            .unwrap_or_else(|| {
                panic!("{} is listed with its missing blob:\n{stderr}", c.display())
            });
        assert!(line.contains("cannot read"), "{line}");
    }
    assert!(stderr.contains("--fresh-start"), "{stderr}");
    assert_eq!(w.outputs(), before, "the outputs are left alone");

    // Asked for, a fresh start begins every output afresh; its checkpoints go above the
    // broken ones, and the next run restores them.
    let fresh = w.run_ok(&["--fresh-start"]);
    assert!(fresh.contains("fresh start"), "{fresh}");
    for e in std::fs::read_dir(w.path("expected")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(sorted_lines(&w.path("out").join(&name)), w.expected(&name));
    }
    let newest = w.checkpoints().pop().unwrap();
    assert!(newest.ends_with("chk-000000000003"), "{}", newest.display());
    let after = w.run_ok(&[]);
    assert!(!after.contains("none of"), "{after}");
    assert_eq!(
        sorted_lines(&w.path("out/observations.jsonl")),
        w.expected("observations.jsonl")
    );
}

/// A newer checkpoint broken, an older one good: the older one is restored, and the run
/// says at WARN which one it skipped and why.
#[test]
fn a_broken_newer_checkpoint_is_skipped_with_a_warning_naming_why() {
    let w = Work::new();
    two_checkpoints(&w);
    let newest = w.checkpoints().pop().unwrap();
    let manifest = newest.join("MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&manifest, bytes).unwrap();
    let stderr = w.run_ok(&[]);
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("skipping a broken checkpoint"))
        .unwrap_or_else(|| panic!("no warning about the skipped checkpoint:\n{stderr}"));
    assert!(warning.contains(&*newest.to_string_lossy()), "{warning}");
    assert!(warning.contains("checksum mismatch"), "{warning}");
    assert_eq!(
        sorted_lines(&w.path("out/observations.jsonl")),
        w.expected("observations.jsonl")
    );
}

/// Regression: an output deleted between runs was recreated with the committed length of
/// zero bytes (10 MB of NUL for a 10 MB output), and the run went on.
#[test]
fn a_deleted_output_stops_the_restart_naming_the_sink_and_the_file() {
    let w = Work::new();
    w.run_ok(&[]);
    std::fs::remove_file(w.path("out/observations.jsonl")).unwrap();
    let stderr = w.run_refused(&[]);
    assert!(
        stderr.contains("enriched_observations: cannot restore from the checkpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("out/observations.jsonl does not exist"),
        "{stderr}"
    );
    assert!(
        !w.path("out/observations.jsonl").exists(),
        "no file is made up in its place"
    );
    for (name, bytes) in w.outputs() {
        assert!(!bytes.contains(&0), "{name} holds NUL bytes");
    }
}

/// Regression: a sink whose file was renamed in the pipeline restored the old file's
/// committed length into the new one (padding it with NUL bytes).
#[test]
fn a_sink_renamed_to_another_file_is_a_new_sink() {
    let w = Work::new();
    w.run_ok(&[]);
    let before = std::fs::read(w.path("out/observations.jsonl")).unwrap();
    w.edit_pipeline("file: out/observations.jsonl", "file: out/renamed.jsonl");
    let stderr = w.run_ok(&[]);
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("another output file"))
        .unwrap_or_else(|| panic!("no warning about the renamed sink:\n{stderr}"));
    assert!(warning.contains("sink=enriched_observations"), "{warning}");
    assert!(warning.contains("renamed.jsonl"), "{warning}");
    // The checkpoint was taken at the end of the input: nothing comes after it.
    assert_eq!(std::fs::read(w.path("out/renamed.jsonl")).unwrap(), b"");
    assert_eq!(
        std::fs::read(w.path("out/observations.jsonl")).unwrap(),
        before
    );
}

/// A sink added to a pipeline gets only what comes after the checkpoint; the run says so.
#[test]
fn a_sink_added_to_the_pipeline_is_named_in_a_warning() {
    let w = Work::new();
    w.run_ok(&[]);
    w.edit_pipeline(
        "\nsinks:\n",
        "\nsinks:\n  added: {input: kev, file: out/added.jsonl}\n",
    );
    let stderr = w.run_ok(&[]);
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("not in the checkpoint: a new sink"))
        .unwrap_or_else(|| panic!("no warning about the added sink:\n{stderr}"));
    assert!(warning.contains("sink=added#0"), "{warning}");
    assert_eq!(std::fs::read(w.path("out/added.jsonl")).unwrap(), b"");
}

/// Regression: a checkpoint taken with 2 instances restored with `--parallelism 3` was
/// accepted and misplaced keyed state (30,728 lines lost, 4,461 extra on the demo). Keyed
/// state now moves by key group and the rest whole to one new instance: a run stopped
/// mid-input and continued with every other count (each ordered pair of 1, 2, 3 and 4, and
/// the observations' source going between 1 and 2 instances) ends with exactly the lines of
/// an uninterrupted run.
#[test]
fn restarts_with_another_parallelism_continue_exactly() {
    let w = Work::new();
    // Paced, so that each run stops mid-input.
    w.edit_pipeline(
        "      partitions: 2\n",
        "      partitions: 2\n      rate: 60\n",
    );
    // Every ordered pair of 1..4 once: 1→2→1→3→1→4→2→3→2→4→3→4→1.
    let counts = [1, 2, 1, 3, 1, 4, 2, 3, 2, 4, 3, 4, 1];
    let mut rescaled = 0;
    for (i, &n) in counts.iter().enumerate() {
        let source = if i % 2 == 0 { "1" } else { "2" };
        let text = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
        let text = match text.find("  observations:\n    parallelism:") {
            Some(at) => {
                let line_end = at + text[at..].find("parallelism:").unwrap();
                let eol = line_end + text[line_end..].find('\n').unwrap();
                format!("{}parallelism: {source}{}", &text[..line_end], &text[eol..])
            }
            None => text.replace(
                "  observations:\n",
                &format!("  observations:\n    parallelism: {source}\n"),
            ),
        };
        std::fs::write(w.path("pipeline.yaml"), text).unwrap();
        let last = i + 1 == counts.len();
        let stderr = if last {
            w.run_ok(&["--parallelism", &n.to_string()])
        } else {
            w.stop_after(&["--parallelism", &n.to_string()], 700)
        };
        if stderr.contains("restoring into another number of instances") {
            rescaled += 1;
        }
        assert!(
            !stderr.contains("ERROR") && !stderr.contains("panicked"),
            "run {i} with {n} instances:\n{stderr}"
        );
    }
    assert!(
        rescaled >= 10,
        "only {rescaled} of {} runs restored another count: the runs end too early",
        counts.len() - 1
    );
    for name in [
        "cve_details.jsonl",
        "kev_exposure_per_minute.jsonl",
        "kev_flags.jsonl",
        "observations.jsonl",
        "vendor_recommendations.jsonl",
        "late.jsonl",
        "dead_letter.jsonl",
    ] {
        let got = sorted_lines(&w.path("out").join(name));
        let want = w.expected(name);
        assert!(
            got == want,
            "{name}: {} lines, an uninterrupted run has {}",
            got.len(),
            want.len()
        );
    }
}

/// The case bootstrapped (its reference snapshots only, into a savepoint), then the
/// pipeline edited by `edit`, then run from the savepoint: what the run writes to stderr.
fn bootstrapped_then_edited(w: &Work, edit: impl FnOnce(&Work)) -> String {
    let savepoint = w.path("bootstrap");
    let boot = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .env("WATERSHED_ARENA_CHUNK_BITS", "8")
        .args(["bootstrap", "--log", "warn"])
        .arg(w.path("pipeline.yaml"))
        .arg("--savepoint")
        .arg(&savepoint)
        .current_dir(w.dir.path())
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    edit(w);
    let stderr = w.run_ok(&["--from-savepoint", savepoint.to_str().unwrap()]);
    assert!(stderr.contains("restored from checkpoint"), "{stderr}");
    stderr
}

/// Regression: a change stream's table columns reordered between runs restored the stored
/// rows by position (`severity` showed a CWE). State carries the columns it was written
/// with, and a restore maps its rows by name: a run from a savepoint taken before the
/// reorder writes exactly the lines of an uninterrupted run.
#[test]
fn a_table_whose_columns_were_reordered_is_restored_by_name() {
    let w = Work::new();
    bootstrapped_then_edited(&w, |w| {
        w.edit_pipeline(
            "severity: string, description: string, cwe: string}",
            "cwe: string, description: string, severity: string}",
        )
    });
    for e in std::fs::read_dir(w.path("expected")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(
            sorted_lines(&w.path("out").join(&name)),
            w.expected(&name),
            "{name}"
        );
    }
}

/// A table column added to an enrichment's `columns` (and to a sink's) after the state was
/// written: the rows restored have null there until they change, the run says so at WARN
/// naming the table and the column, and everything else is as in an uninterrupted run.
#[test]
fn a_column_added_to_an_enrichment_is_null_in_restored_rows_with_a_warning() {
    let w = Work::new();
    let stderr = bootstrapped_then_edited(&w, |w| {
        w.edit_pipeline(
            "columns: [cvss3_score, severity, cwe, description]",
            "columns: [cvss3_score, severity, cwe, description, last_modified]",
        );
        w.edit_pipeline(
            "cve_id, cvss3_score, kev_matched]",
            "cve_id, cvss3_score, kev_matched, last_modified]",
        );
    });
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("not in the checkpoint"))
        .unwrap_or_else(|| panic!("no warning about the added column:\n{stderr}"));
    assert!(warning.contains("table=cve"), "{warning}");
    assert!(warning.contains("`last_modified`"), "{warning}");
    assert!(
        warning.contains("null there until they change"),
        "{warning}"
    );

    // Without the new column, the lines are the uninterrupted run's.
    let without = |lines: Vec<String>| {
        let mut v: Vec<String> = lines
            .iter()
            .map(|l| {
                let mut row: serde_json::Value = serde_json::from_str(l).unwrap();
                row.as_object_mut().unwrap().remove("last_modified");
                row.to_string()
            })
            .collect();
        v.sort();
        v
    };
    let got = sorted_lines(&w.path("out/observations.jsonl"));
    assert!(
        got.iter().all(|l| l.contains("\"last_modified\":")),
        "every line has the new column"
    );
    assert!(
        got.iter()
            .any(|l| l.contains("\"last_modified\":\"2026-01-01T00:18:51")),
        "a row changed after the restart has it"
    );
    assert_eq!(without(got), without(w.expected("observations.jsonl")));
    assert_eq!(
        sorted_lines(&w.path("out/cve_details.jsonl")),
        w.expected("cve_details.jsonl")
    );
}

/// A column whose type changed cannot be restored: refused, naming the table, the column
/// and both types.
#[test]
fn a_table_column_whose_type_changed_is_refused_naming_it() {
    let w = Work::new();
    w.run_ok(&[]);
    let before = w.outputs();
    w.edit_pipeline("severity: string,", "severity: int,");
    let stderr = w.run_refused(&[]);
    assert!(
        stderr.contains(
            "table `cve`: column `severity` was string when the state was written and is int now"
        ),
        "{stderr}"
    );
    assert_eq!(w.outputs(), before, "the outputs are left alone");
}
