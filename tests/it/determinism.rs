//! Results do not depend on how busy the machine is: the demo pipeline — a paced, out-of-order
//! observation stream with a scheduled pause (idleness), a slow paced change stream, as-of
//! joins and windows with allowed lateness — run through the binary as it is, with a sink
//! slowed down (every batch written waits, as behind a slow disk: channels fill and the
//! sources block) and with every operator slowed down (as when starved of CPU), gives the same
//! lines in every output, late records included.

use std::path::Path;
use std::process::{Command, Stdio};

fn demo_pipeline(out: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let text = std::fs::read_to_string(root.join("demo.yaml")).unwrap();
    assert!(text.contains("watershed-out/") && text.contains("demo/"));
    text.replace("demo/", &format!("{}/demo/", root.display()))
        .replace("watershed-out/", &format!("{}/", out.display()))
}

/// Runs the demo pipeline with `WATERSHED_SLOW` set to `slow` (if any); its sorted outputs.
fn run(dir: &Path, name: &str, slow: Option<&str>) -> Vec<(String, Vec<String>)> {
    let out = dir.join(name);
    let pipeline = dir.join(format!("{name}.yaml"));
    std::fs::write(&pipeline, demo_pipeline(&out)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watershed"));
    cmd.args(["run", "--log", "error", "--metrics-addr", "off"])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(s) = slow {
        cmd.env("WATERSHED_SLOW", s);
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "{name}: {status}");
    super::crash::sorted_lines(&out)
}

#[test]
fn a_slow_sink_or_slow_operators_change_nothing_in_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = run(tmp.path(), "plain", None);
    let late = plain.iter().find(|(n, _)| n == "late.jsonl").unwrap();
    assert!(!late.1.is_empty(), "the demo has late records");
    let windows = plain
        .iter()
        .find(|(n, _)| n == "kev_exposure_per_minute.jsonl")
        .unwrap();
    assert!(windows.1.len() > 100, "the demo fires windows");
    for (name, slow) in [
        ("slow-sink", "sink-write:3"),
        ("slow-operators", "operator-process:1"),
    ] {
        let slowed = run(tmp.path(), name, Some(slow));
        assert_eq!(plain.len(), slowed.len(), "{name}: the same outputs");
        for ((file, want), (_, got)) in plain.iter().zip(&slowed) {
            assert!(
                want == got,
                "{name}: {file} differs: {} lines, {} with the slowdown",
                want.len(),
                got.len()
            );
        }
    }
}
