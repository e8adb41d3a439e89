//! The command line as people use it: `validate` errors with file, line and field and exit
//! code 2; `explain` against a running pipeline; `/metrics` while running.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn watershed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_watershed"))
}

fn validate(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let out = watershed().arg("validate").arg(&path).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

const GOOD: &str = "sources:
  s:
    file:
      paths: [in.jsonl]
    schema:
      ts: timestamp
      k: string
    event_time:
      field: ts
operators:
  w:
    inputs: [s]
    window:
      key: [k]
      tumbling: 1m
      aggregates:
        n: count
sinks:
  out:
    input: w
    file: out.jsonl
";

#[test]
fn validate_accepts_a_good_pipeline() {
    let (code, text) = validate(GOOD);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn validate_names_line_and_field_of_an_unknown_field() {
    let (code, text) = validate(&GOOD.replace(
        "      k: string\n",
        "      k: string\n    idle_timout: 30s\n",
    ));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("p.yaml:8:5: field `sources.s.idle_timout`: unknown field `idle_timout`"),
        "{text}"
    );
}

#[test]
fn validate_rejects_bad_durations_types_and_dangling_references() {
    let yaml = GOOD
        .replace("tumbling: 1m", "tumbling: 1 fortnight")
        .replace("k: string", "k: strng");
    let (code, text) = validate(&yaml);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("p.yaml:7:10: field `sources.s.schema.k`: unknown type `strng`"),
        "{text}"
    );
    assert!(
        text.contains(
            "p.yaml:15:17: field `operators.w.window.tumbling`: invalid duration `1 fortnight`"
        ),
        "{text}"
    );
    let (code, text) = validate(&GOOD.replace("input: w", "input: w.lates"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("p.yaml:20:12: field `sinks.out.input[0]`: `w` has no output port `lates`; its ports are main, late"), "{text}");
    let (code, text) = validate(&GOOD.replace("inputs: [s]", "inputs: [nope]"));
    assert_eq!(code, 2);
    assert!(
        text.contains("no source or operator named `nope`"),
        "{text}"
    );
}

#[test]
fn validate_rejects_wrong_value_types() {
    let (code, text) = validate(&format!("parallelism: lots\n{GOOD}"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("p.yaml:1:14: field `parallelism`"), "{text}");
}

#[test]
fn validate_warns_about_unrouted_ports() {
    let (code, text) = validate(GOOD);
    assert_eq!(code, 0);
    assert!(
        text.contains("output `s.dead_letter` is not routed"),
        "{text}"
    );
}

#[test]
fn explain_and_metrics_of_a_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.yaml");
    // A followed file never ends: the pipeline runs until killed.
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":\"2026-01-01T00:00:00Z\",\"k\":\"a\"}\nnot json\n",
    )
    .unwrap();
    std::fs::write(
        &path,
        GOOD.replace("paths: [in.jsonl]", "paths: [in.jsonl]\n      follow: true")
            .replace(
                "sinks:\n",
                "sinks:\n  errors:\n    input: s.dead_letter\n    file: dl.jsonl\n",
            ),
    )
    .unwrap();
    let mut child = watershed()
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .arg(&path)
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let addr = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            child.kill().unwrap();
            panic!("the pipeline did not report its metrics address");
        };
        if let Some(i) = line.find("bound=") {
            break line[i + 6..].split_whitespace().next().unwrap().to_string();
        }
    };
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    // Wait (bounded) until the bad line has been counted.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = watershed::http::get_local(addr, "/metrics").unwrap_or_default();
        // Counters exist (at 0) from the start: wait for the value.
        if metrics.contains("watershed_dead_letter_records_total{node=\"s\"} 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let explain = watershed()
        .args(["explain", "--addr"])
        .arg(addr.to_string())
        .arg(&path)
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for line in [
        "# HELP watershed_dead_letter_records_total ",
        "# TYPE watershed_dead_letter_records_total counter",
        "# HELP watershed_records_out_total ",
    ] {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
    assert!(
        metrics.contains("watershed_dead_letter_records_total{node=\"s\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("watershed_records_out_total{node=\"s\",port=\"main\"} 1"),
        "{metrics}"
    );
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("source s x1"), "{text}");
    assert!(text.contains("w#0  watermark"), "{text}");
    assert!(text.contains("partition "), "{text}");
    assert!(Path::new(&dir.path().join("dl.jsonl")).exists());
}

#[test]
fn readme_pipeline_examples_are_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for d in ["data", "ref"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    for f in ["data/a.jsonl", "ref/snapshot.jsonl", "ref/changes.jsonl"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    std::fs::write(
        dir.path().join("vocabulary.csv"),
        "vendor,product,version,port,weight\nopenbsd,openssh,7.4,22,1\n",
    )
    .unwrap();
    let mut rest = readme.as_str();
    let mut checked = 0;
    while let Some(at) = rest.find("```yaml\n") {
        let block = &rest[at + 8..];
        let end = block.find("```").unwrap();
        let path = dir.path().join(format!("p{checked}.yaml"));
        std::fs::write(&path, &block[..end]).unwrap();
        let out = watershed()
            .arg("validate")
            .arg(&path)
            .env("KAFKA_PASSWORD", "an example")
            .env("PGPASSWORD", "an example")
            .env("CLICKHOUSE_PASSWORD", "an example")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README yaml block {checked}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
        rest = &block[end..];
    }
    assert_eq!(checked, 6, "every README pipeline example is checked");
}

#[test]
fn run_fails_clearly_when_a_sink_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"ts\":1,\"k\":\"a\"}\n").unwrap();
    // The sink's path is a directory.
    std::fs::create_dir(dir.path().join("out.jsonl")).unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = watershed()
        .args(["run", "--metrics-addr", "off"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: cannot create out.jsonl"),
        "{stderr}"
    );
}

#[test]
fn cdc_decode_prints_normalized_changes_of_real_debezium_events() {
    let captured =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/debezium/captured-3.6.3");
    if !captured.exists() {
        eprintln!("skipped: {} is absent", captured.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Real captures (pretty-printed, with and without the schema envelope) one after another,
    // and a broken record between them.
    let mut input = String::new();
    for f in [
        "schema-06-customers-u.json",
        "noschema-10-orders-tombstone.json",
    ] {
        input.push_str(&std::fs::read_to_string(captured.join(f)).unwrap());
        input.push('\n');
    }
    input.push_str("{\"value\": {\"op\": \"c\", \"after\": 3}}\n");
    let path = dir.path().join("changes.json");
    std::fs::write(&path, &input).unwrap();
    let out = watershed()
        .args(["cdc", "decode"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(r#"{"table":"public.customers","op":"u","key":{"id":1},"before":null,"after":{"id":1,"name":"alice","email":"alice@new","#), "{}", lines[0]);
    assert!(lines[0].ends_with(r#""snapshot":"false"}"#), "{}", lines[0]);
    assert_eq!(
        lines[1],
        r#"{"table":"public.orders","op":"tombstone","key":{"id":101},"before":null,"after":null,"version":null,"snapshot":null}"#
    );
    let bad_line = input.lines().count();
    assert!(stderr.contains(&format!("line {bad_line}: ")), "{stderr}");
}

#[test]
fn shipped_demo_pipeline_is_valid() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yaml");
    let out = watershed().arg("validate").arg(&demo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_prints_progress_and_a_summary_and_writes_under_out() {
    let small = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/cve_demo_small");
    // A copy whose sinks write under `watershed-out/`, which `--out` relocates.
    let work = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(small.join("pipeline.yaml"))
        .unwrap()
        .replace("file: out/", "file: watershed-out/")
        .replace("reference/", &format!("{}/reference/", small.display()))
        .replace(
            "vocabulary.csv",
            &format!("{}/vocabulary.csv", small.display()),
        );
    let pipeline = work.path().join("demo.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let out = watershed()
        .args(["demo", "--out", "results", "--pipeline"])
        .arg(&pipeline)
        .current_dir(work.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("demo: pipeline") && !stdout.contains("demo: pipeline"),
        "progress goes to stderr:\n{stderr}"
    );
    // The summary is the answer: on stdout.
    for want in [
        "demo finished",
        "events in        1000",
        "events with CVE  784 (78.4%",
        "2705 distinct (observation, CVE) pairs",
        "KEV              439 events on a CVE in CISA's Known Exploited Vulnerabilities; 634 (observation, KEV CVE) pairs",
        "late records     0",
        "dead letters     0",
    ] {
        assert!(stdout.contains(want), "missing `{want}` in:\n{stdout}");
    }
    let flags = std::fs::read_to_string(work.path().join("results/kev_flags.jsonl")).unwrap();
    assert_eq!(flags.lines().count(), 634);
}

/// A copy of the binary, alone in a directory with no checkout, runs the shipped demo: its
/// pipeline and data are in the binary.
#[test]
fn a_copied_binary_runs_the_demo_from_anywhere() {
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("watershed");
    std::fs::copy(env!("CARGO_BIN_EXE_watershed"), &copy).unwrap();
    let out = Command::new(&copy)
        .args(["demo", "--out", "results", "--metrics-addr", "off"])
        .current_dir(work.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("shipped in the binary"), "{stderr}");
    let rows = std::fs::read_to_string(work.path().join("results/observations.jsonl")).unwrap();
    assert!(rows.lines().count() > 100_000, "the demo's enriched rows");
    // Nothing but the copy and the results is left behind.
    let mut left: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["results", "watershed"]);
}

#[test]
fn validate_names_the_field_of_change_stream_and_enrich_mistakes() {
    let yaml = "sources:
  ref:
    file: {format: debezium, snapshot: [in.jsonl]}
    tables:
      kev:
        key: [cve]
        columns: {cve_id: string, added: dat}
  obs:
    file: {paths: [in.jsonl]}
    schema: {ts: timestamp, cve_id: string}
    event_time: {field: ts}
operators:
  j:
    inputs: [obs, ref.kev]
    enrich: {key: {cve_id: cve_id}, mode: latest, miss: hold}
sinks:
  out: {input: j, file: out.jsonl}
";
    let (code, text) = validate(yaml);
    assert_eq!(code, 2, "{text}");
    for want in [
        ":7:42: field `sources.ref.tables.kev.columns.added`: unknown type `dat`",
        ":6:15: field `sources.ref.tables.kev.key[0]`: `cve` is not one of the table's columns",
        ":15:43: field `operators.j.enrich.mode`: unknown mode `latest`",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert!(!text.contains("has no output port"), "no cascade: {text}");
}

#[test]
fn validate_warns_when_sinks_give_less_than_the_pipeline_asks() {
    let asks = "checkpoint: {guarantee: exactly_once}\n".to_string() + GOOD;
    let (code, text) = validate(&asks);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("asks for exactly_once but sink `out` gives at_least_once")
            && text.contains("without `checkpoint.dir`"),
        "{text}"
    );
    let kept = "checkpoint: {guarantee: exactly_once, dir: cp}\n".to_string() + GOOD;
    let (code, text) = validate(&kept);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("asks for"), "{text}");
    let (code, text) = validate(&("checkpoint: {guarantee: twice}\n".to_string() + GOOD));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("field `checkpoint.guarantee`"), "{text}");
}

#[test]
fn validate_names_line_and_field_of_state_mistakes() {
    let (code, text) = validate(&("state: {backend: disk, cache_rows: 5000}\n".to_string() + GOOD));
    assert_eq!(code, 0, "{text}");
    let (code, text) = validate(&("state:\n  backend: ssd\n".to_string() + GOOD));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(":2:")
            && text.contains("field `state.backend`")
            && text.contains("memory or disk"),
        "{text}"
    );
    let (code, text) = validate(&("state: {cache_rows: 10}\n".to_string() + GOOD));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("field `state.cache_rows`") && text.contains("applies to `backend: disk`"),
        "{text}"
    );
}

/// A broken checkpoint (a flipped byte in a state file) is reported by `checkpoints list`
/// and skipped at restart for the previous complete one, with a message naming what is
/// wrong; the output is the same.
#[test]
fn a_corrupt_checkpoint_is_skipped_for_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..500)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-01-01T00:{:02}:{:02}Z\",\"k\":\"k{}\"}}\n",
                i / 60,
                i % 60,
                i % 7
            )
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
    let yaml = format!(
        "checkpoint: {{dir: \"{}\"}}\n{}",
        dir.path().join("cp").display(),
        GOOD.replace(
            "file: out.jsonl",
            &format!("file: \"{}\"", dir.path().join("out.jsonl").display())
        )
        .replace(
            "paths: [in.jsonl]",
            &format!("paths: [\"{}\"]", dir.path().join("in.jsonl").display())
        )
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = || {
        let out = watershed()
            .args(["run", "--metrics-addr", "off"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    run();
    let first = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(first.lines().count(), 9 * 7, "9 minutes, 7 keys: {first}");
    let second = run();
    assert!(second.contains("restored from checkpoint 1"), "{second}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        first
    );
    // Break checkpoint 2 (the second run's last).
    let chk2 = dir.path().join("cp/chk-000000000002");
    let state = std::fs::read_dir(&chk2)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("operator"))
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[0] ^= 0x55;
    std::fs::write(&state, bytes).unwrap();
    let list = watershed()
        .args(["checkpoints", "list"])
        .arg(dir.path().join("cp"))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("epoch      2  BROKEN") && listed.contains("checksum mismatch"),
        "{listed}"
    );
    let third = run();
    assert!(
        third.contains("skipping a broken checkpoint") && third.contains("checksum mismatch"),
        "{third}"
    );
    assert!(third.contains("restored from checkpoint 1"), "{third}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        first
    );
    let inspect = watershed()
        .args(["checkpoints", "inspect"])
        .arg(dir.path().join("cp/chk-000000000001"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("epoch 1") && text.contains("w#0:") && text.contains("line 500"),
        "{text}"
    );
}

#[test]
fn checkpoints_list_of_a_missing_directory_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/checkpoints");
    let out = watershed()
        .args(["checkpoints", "list"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no checkpoint directory at"), "{stderr}");
    assert!(!dir.path().join("no").exists(), "nothing is created");
}

#[test]
fn a_file_listed_twice_or_matched_by_a_glob_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":1,\"k\":\"a\"}\n{\"ts\":2,\"k\":\"b\"}\n",
    )
    .unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "sources:\n  s:\n    file:\n      paths: [in.jsonl, ./in.jsonl, \"in*.jsonl\"]\n    \
         schema: {ts: int, k: string}\n    event_time: {field: ts}\n\
         sinks:\n  out:\n    input: s\n    file: out.jsonl\n",
    )
    .unwrap();
    let out = watershed()
        .args(["run", "--metrics-addr", "off"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 2, "{written}");
    assert!(
        stderr.contains("sources.s.file.paths: `") && stderr.contains("it is read once"),
        "{stderr}"
    );
}

/// Lines of a running pipeline's standard output, as they come.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    rx
}

/// Waits (bounded) until the lines seen include every one of `keys`; returns every line.
fn wait_for_keys(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    keys: &[&str],
    child: &mut std::process::Child,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let has = |seen: &[String], k: &str| {
        let needle = format!("\"k\":\"{k}\"");
        seen.iter().any(|l| l.contains(&needle))
    };
    while !keys.iter().all(|k| has(seen, k)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                child.kill().unwrap();
                panic!("no {keys:?} in the output: {seen:?}");
            }
        }
    }
}

#[test]
fn a_followed_file_rotated_while_running_is_read_to_its_end_then_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"ts\":1,\"k\":\"a\"}\n").unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "checkpoint: {interval: 100ms}\nsources:\n  s:\n    file: {paths: [in.jsonl], follow: true, \
         poll_interval: 10ms}\n    schema: {ts: int, k: string}\n    event_time: {field: ts}\n\
         sinks:\n  out: {input: s, stdout: true}\n",
    )
    .unwrap();
    let mut child = watershed()
        .args(["run", "--metrics-addr", "off"])
        .arg(&path)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut seen = Vec::new();
    wait_for_keys(&rx, &mut seen, &["a"], &mut child);
    // The writer adds a line, rotates the file away and starts a new one.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"ts\":2,\"k\":\"b\"}\n").unwrap();
    drop(f);
    std::fs::rename(&input, dir.path().join("in.jsonl.1")).unwrap();
    std::fs::write(&input, "{\"ts\":3,\"k\":\"c\"}\n").unwrap();
    wait_for_keys(&rx, &mut seen, &["b", "c"], &mut child);
    // Truncated and rewritten: read from its start.
    std::fs::write(&input, "{\"ts\":4,\"k\":\"d\"}\n").unwrap();
    wait_for_keys(&rx, &mut seen, &["d"], &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let keys: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.split("\"k\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(keys, ["a", "b", "c", "d"], "{seen:?}");
}

/// String columns that no operator reads are written back byte for byte (escapes as they
/// were: `\/`, `\u00e9`), and still checked: a malformed one is a dead letter. A column read
/// by an operator (here `route`'s `k`, also in the branch that does not route) is decoded.
#[test]
fn unread_string_columns_are_copied_as_they_were_and_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        concat!(
            r#"{"ts":1,"k":"\u0061","note":"a\/b \u00e9\r\n"}"#,
            "\n",
            r#"{"ts":2,"k":"b","note":"bad \x escape"}"#,
            "\n",
            r#"{"ts":3,"k":"b","note":5}"#,
            "\n",
        ),
    )
    .unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "sources:\n  s:\n    file: {paths: [in.jsonl]}\n    schema: {ts: int, k: string, note: string}\n    event_time: {field: ts}\n\
         operators:\n  r:\n    inputs: [s]\n    route: {field: k, ports: {a: [a]}}\n\
         sinks:\n  all: {input: s, file: all.jsonl}\n  routed: {input: r.a, file: a.jsonl}\n  bad: {input: s.dead_letter, file: bad.jsonl}\n  rest: {input: r, file: rest.jsonl}\n",
    )
    .unwrap();
    let out = watershed()
        .args(["run", "--metrics-addr", "off"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let copied = r#"{"ts":1,"k":"a","note":"a\/b \u00e9\r\n"}"#;
    assert_eq!(read("all.jsonl"), format!("{copied}\n"));
    assert_eq!(read("a.jsonl"), format!("{copied}\n"));
    let bad = read("bad.jsonl");
    assert_eq!(bad.lines().count(), 2, "{bad}");
    assert!(
        bad.contains("invalid escape")
            && bad.contains("field `note`: expected string, found number"),
        "{bad}"
    );
}
