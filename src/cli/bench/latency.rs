//! Event-to-output latency of the `job` pipeline: the pipeline runs as its own `watershed
//! run` process on a *followed* copy of the events (checkpoints every 10 s, no checkpoint
//! directory: the file sink writes through, at-least-once), while the bench appends the
//! events at a fixed rate and tails the output.
//!
//! The job emits one output line per event, in the order of the events (one source
//! partition, parallelism 1), so the k-th output line is the k-th event's: its latency is
//! the moment the bench saw that line complete in the output minus the moment it wrote the
//! event (the end of the `write` that appended it). The writer appends every millisecond what
//! is due; the reader looks every 0.5 ms. Events are written only once the reference
//! snapshot is loaded (the gate is open), so loading is not measured.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Percentiles of one measured run, milliseconds.
pub(super) struct Latency {
    pub(super) events: usize,
    pub(super) rate: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

/// What to run and where: the pipeline `yaml` follows `live` and writes `out`; its events
/// are the first lines of `events`.
pub(super) struct Setup<'a> {
    pub(super) exe: &'a Path,
    pub(super) yaml: &'a str,
    pub(super) dir: &'a Path,
    pub(super) events: &'a Path,
    pub(super) live: &'a Path,
    pub(super) out: &'a Path,
}

/// Runs the pipeline, appends events to `live` at `rate` per second for `seconds` once its
/// enrichment gate is open, and measures each event's latency.
pub(super) fn measure(s: &Setup<'_>, rate: f64, seconds: f64) -> anyhow::Result<Latency> {
    let Setup {
        exe,
        yaml,
        dir,
        events,
        live,
        out,
    } = *s;
    std::fs::write(live, b"")?;
    let _ = std::fs::remove_file(out);
    let path = dir.join("job-latency.yaml");
    std::fs::write(&path, yaml)?;
    let (mut child, port) = super::process::spawn_serving(exe, &path, std::process::Stdio::null())?;
    // Ready once every enrichment's gate is open (the reference snapshot is loaded).
    let ready = || {
        super::sample::status(port).is_some_and(|doc| {
            let gates: Vec<u64> = doc["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["stats"].as_array())
                .flat_map(|stats| stats.iter())
                .filter(|s| s[0] == "gate_open")
                .filter_map(|s| s[1].as_u64())
                .collect();
            !gates.is_empty() && gates.iter().all(|&g| g == 1)
        })
    };
    let result = drive(events, live, out, rate, seconds, ready);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(live);
    let _ = std::fs::remove_file(out);
    result
}

fn drive(
    events: &Path,
    live: &Path,
    out: &Path,
    rate: f64,
    seconds: f64,
    ready: impl Fn() -> bool,
) -> anyhow::Result<Latency> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        anyhow::ensure!(Instant::now() < deadline, "the pipeline did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read(events)?;
    let lines: Vec<&[u8]> = text
        .split_inclusive(|&b| b == b'\n')
        .take((rate * seconds) as usize)
        .collect();
    let n = lines.len();
    anyhow::ensure!(
        n > 0,
        "no events to send at {rate} a second for {seconds} s"
    );
    let t0 = Instant::now();
    // Written: per event, microseconds after `t0`.
    let writer = {
        let live = live.to_path_buf();
        let lines: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
        std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let mut f = std::fs::OpenOptions::new().append(true).open(&live)?;
            let mut written = Vec::with_capacity(lines.len());
            let mut buf = Vec::with_capacity(1 << 20);
            let mut next = 0usize;
            while next < lines.len() {
                let due = ((t0.elapsed().as_secs_f64() * rate) as usize + 1).min(lines.len());
                if due > next {
                    buf.clear();
                    for l in &lines[next..due] {
                        buf.extend_from_slice(l);
                    }
                    f.write_all(&buf)?;
                    let at = t0.elapsed().as_micros() as u64;
                    written.extend(std::iter::repeat_n(at, due - next));
                    next = due;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(written)
        })
    };
    // Seen: per output line, microseconds after `t0`.
    let mut seen: Vec<u64> = Vec::with_capacity(n);
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let stop_at = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
    while seen.len() < n && Instant::now() < stop_at {
        if let Ok(mut f) = std::fs::File::open(out) {
            f.seek(SeekFrom::Start(pos))?;
            loop {
                let got = f.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                let at = t0.elapsed().as_micros() as u64;
                let complete = buf[..got].iter().filter(|&&b| b == b'\n').count();
                seen.extend(std::iter::repeat_n(at, complete));
                // Up to the last newline: a line is seen once complete.
                let last_nl = buf[..got].iter().rposition(|&b| b == b'\n');
                match last_nl {
                    Some(i) => pos += i as u64 + 1,
                    None => break,
                }
                if last_nl != Some(got - 1) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    anyhow::ensure!(
        seen.len() >= n,
        "{} of {n} events came out within 30 s of the last",
        seen.len()
    );
    let mut lat: Vec<f64> = written
        .iter()
        .zip(&seen)
        .map(|(w, s)| s.saturating_sub(*w) as f64 / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    Ok(Latency {
        events: n,
        rate,
        p50: pct(0.5),
        p99: pct(0.99),
        max: lat[lat.len() - 1],
    })
}
