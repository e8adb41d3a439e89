//! Steady state measured inside one run: the pipeline runs as its own `watershed run`
//! process serving `/status` on a free loopback port; every 100 ms the bench reads the
//! records its sinks have taken (the runtime's own counters) and the process's CPU time
//! (`/proc/<pid>/stat`). The steady rate is the records taken between the samples at 20%
//! and 80% of the expected output over the CPU time spent between them: no load, no start,
//! no final flush, and no difference of two noisy runs.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// What one sampled run measured.
pub(super) struct Sampled {
    /// Records per CPU-second between 20% and 80% of the output (`None`: too few samples).
    pub(super) steady: Option<f64>,
    /// The run's peak resident memory (from its summary), MB.
    pub(super) peak_mb: f64,
}

/// CPU time (user + system) of process `pid` so far, in seconds.
pub(super) fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces), from `state` on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_ascii_whitespace();
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// The `/status` document of the pipeline serving it on `port`.
pub(super) fn status(port: u16) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Records taken by the sinks of the pipeline serving `/status` on `port`.
pub(super) fn sink_records(port: u16) -> Option<u64> {
    Some(
        status(port)?
            .get("instances")?
            .as_array()?
            .iter()
            .filter(|i| i.get("role").and_then(|r| r.as_str()) == Some("sink"))
            .filter_map(|i| i.get("records_in")?.as_u64())
            .sum(),
    )
}

/// Runs the pipeline `yaml` (written to `dir/<name>.yaml`) with the `watershed` binary
/// `exe` and samples it; `expected` is the number of records its sinks take in all.
pub(super) fn run_sampled(
    exe: &Path,
    yaml: &str,
    dir: &Path,
    name: &str,
    expected: u64,
) -> anyhow::Result<Sampled> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    let (mut child, port) =
        super::process::spawn_serving(exe, &path, std::process::Stdio::piped())?;
    let mut stderr = child.stderr.take().expect("piped");
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (low, high) = (expected / 5, expected * 4 / 5);
    let mut first: Option<(u64, f64)> = None;
    let mut last: Option<(u64, f64)> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
        let (Some(cpu), Some(n)) = (process_cpu(child.id()), sink_records(port)) else {
            continue;
        };
        if n >= low && n <= high {
            first.get_or_insert((n, cpu));
            last = Some((n, cpu));
        }
    };
    let stderr = drain.join().unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "`watershed run {}` failed ({status}): {stderr}",
        path.display()
    );
    let steady = match (first, last) {
        (Some((n0, c0)), Some((n1, c1))) if n1 > n0 && c1 > c0 => {
            Some((n1 - n0) as f64 / (c1 - c0))
        }
        _ => None,
    };
    let peak_mb = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("peak resident memory ")?
                .strip_suffix(" MB")?
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN);
    Ok(Sampled { steady, peak_mb })
}
