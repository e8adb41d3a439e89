//! The HTTP endpoint through the real binary, on loopback TCP: an address in use or open to
//! the network stops `run` before it starts; `explain` and `savepoint` refuse a pipeline
//! other than the one named; savepoints go only into new directories under their roots and
//! need the run's token; idle connections never starve the data path of file descriptors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn watershed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_watershed"))
}

/// A pipeline named `name` in `dir`, reading `in.jsonl` (followed: it runs until stopped,
/// or to its end when `follow` is false) into `out.jsonl`, checkpointing every 100 ms into
/// `dir/cp-<name>`.
fn pipeline(dir: &Path, name: &str, follow: bool) -> PathBuf {
    let input = dir.join("in.jsonl");
    if !input.exists() {
        std::fs::write(&input, "{\"ts\":\"2026-01-01T00:00:00Z\",\"k\":\"a\"}\n").unwrap();
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {name}
checkpoint: {{interval: 100ms, dir: \"{cp}\"}}
sources:
  s:
    file:
      paths: [\"{input}\"]
      follow: {follow}
    schema: {{ts: timestamp, k: string}}
    event_time: {{field: ts}}
sinks:
  out: {{input: s, file: \"{out}\"}}
",
            cp = dir.join(format!("cp-{name}")).display(),
            input = input.display(),
            out = dir.join(format!("out-{name}.jsonl")).display(),
        ),
    )
    .unwrap();
    path
}

/// A running pipeline, its endpoint's address and its log lines.
struct Running {
    child: Child,
    addr: SocketAddr,
    log: Receiver<String>,
    /// The lines read before the address.
    seen: Vec<String>,
}

impl Running {
    /// Starts `cmd` (a `run` on `127.0.0.1:0`) and waits for the address it serves on.
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = log.recv_timeout(left) else {
                child.kill().unwrap();
                panic!(
                    "the pipeline did not report its endpoint:\n{}",
                    seen.join("\n")
                );
            };
            seen.push(line.clone());
            if let Some(i) = line.find("bound=") {
                break line[i + 6..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        };
        Running {
            child,
            addr,
            log,
            seen,
        }
    }

    /// Waits (a minute at most) for the process to end; its exit code and log.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("the pipeline did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let code = self.child.wait().unwrap().code();
        // The log's thread ends with the process's stderr.
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.log.iter());
        (code, lines.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_cmd(pipeline: &Path, extra: &[&str]) -> Command {
    let mut cmd = watershed();
    cmd.args(["run", "--metrics-addr", "127.0.0.1:0"])
        .arg(pipeline)
        .args(extra);
    cmd
}

fn output(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let body = watershed::http::get_local(addr, "/status").ok()?;
    serde_json::from_str(&body).ok()
}

#[test]
fn run_on_a_busy_port_fails_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), "orders", false);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, text) = output(watershed().args(["run", "--metrics-addr", &addr]).arg(&p));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&addr) && text.contains("another process"),
        "{text}"
    );
    assert!(text.contains("--metrics-addr"), "the hint: {text}");
    assert!(
        !dir.path().join("out-orders.jsonl").exists(),
        "no output: {text}"
    );
    assert!(
        !dir.path().join("cp-orders").exists(),
        "no checkpoint: {text}"
    );
}

#[test]
fn run_refuses_an_address_open_to_the_network_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), "orders", false);
    let (code, text) = output(
        watershed()
            .args(["run", "--metrics-addr", "0.0.0.0:0"])
            .arg(&p),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not a loopback address"), "{text}");
    assert!(text.contains("--allow-remote-endpoints"), "{text}");
    assert!(!dir.path().join("out-orders.jsonl").exists());
    let (code, text) = output(
        watershed()
            .args([
                "run",
                "--metrics-addr",
                "0.0.0.0:0",
                "--allow-remote-endpoints",
            ])
            .arg(&p),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("to the network"), "{text}");
}

#[test]
fn explain_and_savepoint_refuse_another_pipeline_on_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let orders = pipeline(dir.path(), "orders", true);
    let payments = pipeline(dir.path(), "payments", true);
    let running = Running::start(run_cmd(&orders, &[]));
    let addr = running.addr.to_string();
    let (code, text) = output(
        watershed()
            .args(["explain", "--addr", &addr])
            .arg(&payments),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("is `orders`") && text.contains("not `payments`"),
        "{text}"
    );
    assert!(
        !text.contains("s#0  watermark"),
        "no status under the wrong plan: {text}"
    );
    let (code, text) = output(
        watershed()
            .args(["savepoint", "--addr", &addr])
            .arg(&payments),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("is `orders`") && text.contains("no savepoint taken"),
        "{text}"
    );
    // The right one is explained; nothing was stopped.
    let (code, text) = output(watershed().args(["explain", "--addr", &addr]).arg(&orders));
    assert_eq!(code, Some(0), "{text}");
    let run_id = status(running.addr).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!("pipeline `orders` (run {run_id}, instance ")),
        "{text}"
    );
    assert!(status(running.addr).is_some(), "still running");
}

#[test]
fn savepoints_go_only_into_new_directories_and_need_the_runs_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), "orders", true);
    let cp = dir.path().join("cp-orders");
    let mine = cp.join("savepoints").join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("keep.txt"), "mine").unwrap();
    let roots = dir.path().join("roots");
    std::fs::create_dir(&roots).unwrap();
    let running = Running::start(run_cmd(&p, &["--savepoint-root", roots.to_str().unwrap()]));
    let addr = running.addr.to_string();
    let savepoint = |args: &[&str], cwd: &Path| {
        output(
            watershed()
                .args(["savepoint", "--addr", &addr])
                .arg(&p)
                .args(args)
                .current_dir(cwd),
        )
    };
    // An existing directory is never replaced.
    let (code, text) = savepoint(&["--dir", mine.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("HTTP 409") && text.contains("only into a new directory"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("keep.txt")).unwrap(),
        "mine"
    );
    // Nor does a savepoint go outside its roots.
    let (code, text) = savepoint(&["--dir", "elsewhere"], dir.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("HTTP 403") && text.contains("--savepoint-root"),
        "{text}"
    );
    // Without the run's token: refused.
    let mut s = TcpStream::connect(running.addr).unwrap();
    write!(
        s,
        "POST /savepoint HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 401"), "{answer}");
    let token = cp.join("run.token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let secret = std::fs::read_to_string(&token).unwrap();
    // A relative directory is the caller's: here under the added root.
    let (code, text) = savepoint(&["--dir", "first", "--keep-running"], &roots);
    assert_eq!(code, Some(0), "{text}");
    assert!(roots.join("first").join("MANIFEST").exists(), "{text}");
    // By default, under checkpoint.dir/savepoints; then the run stops.
    let (code, text) = savepoint(&[], dir.path());
    assert_eq!(code, Some(0), "{text}");
    let written: Vec<PathBuf> = std::fs::read_dir(cp.join("savepoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("savepoint-")
        })
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(text.contains(written[0].to_str().unwrap()), "{text}");
    let (code, log) = running.wait();
    assert_eq!(code, Some(0), "{log}");
    assert!(!token.exists(), "the token goes with the run");
    assert!(!log.contains(&secret), "the token is never logged");
}

/// 300 idle connections to a pipeline allowed 128 open files: checkpoints go on, `/status`
/// answers, and nothing fails for want of a file descriptor.
#[test]
fn idle_connections_never_starve_checkpoints_of_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), "orders", true);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 128 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_watershed"))
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .arg(&p);
    let running = Running::start(cmd);
    let completed = |v: &serde_json::Value| v["checkpoints"]["completed"].as_u64().unwrap_or(0);
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&running.addr, Duration::from_secs(5)) {
            idle.push(s);
        }
    }
    let before = status(running.addr).map_or(0, |v| completed(&v));
    let mut report = None;
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(v) = status(running.addr)
            && completed(&v) >= before + 5
        {
            report = Some(v);
            break;
        }
    }
    drop(idle);
    let (_, log) = {
        let mut running = running;
        running.child.kill().unwrap();
        running.wait()
    };
    let report = report.unwrap_or_else(|| panic!("checkpoints stopped completing:\n{log}"));
    assert_eq!(
        report["checkpoints"]["failures"].as_u64(),
        Some(0),
        "{report}\n{log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
}
