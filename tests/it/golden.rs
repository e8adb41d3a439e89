//! Golden pipelines: each folder under `tests/pipelines/` holds a `pipeline.yaml`, its inputs
//! and `expected/`, the exact outputs. The pipeline runs through the `watershed` binary in a
//! fresh working directory at several parallelisms; every output file must hold exactly the
//! expected lines (compared as sorted multisets, since instances interleave). The expected
//! files are what `watershed run pipeline.yaml` writes under `out/` in an empty directory;
//! after a deliberate change, rerun it and check the difference line by line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines")
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn run_case(case: &str, parallelism: usize) {
    let dir = pipelines_dir().join(case);
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_watershed"))
        .args(["run", "--metrics-addr", "off", "--parallelism"])
        .arg(parallelism.to_string())
        .arg(dir.join("pipeline.yaml"))
        .current_dir(work.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{case} failed:\n{stderr}");
    let expected_dir = dir.join("expected");
    let mut checked = 0;
    for entry in std::fs::read_dir(&expected_dir).unwrap() {
        let expected = entry.unwrap().path();
        let name = expected.file_name().unwrap();
        let actual = work.path().join("out").join(name);
        assert_eq!(
            sorted_lines(&actual),
            sorted_lines(&expected),
            "{case} (parallelism {parallelism}): {} differs from expected\n{stderr}",
            name.to_string_lossy()
        );
        checked += 1;
    }
    assert!(checked > 0, "no expected outputs for {case}");
}

#[test]
fn golden_pipelines_at_parallelism_1_2_and_4() {
    let mut cases: Vec<String> = std::fs::read_dir(pipelines_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    for case in &cases {
        for p in [1, 2, 4] {
            run_case(case, p);
        }
    }
}
