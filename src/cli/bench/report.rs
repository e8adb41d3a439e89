//! Measuring and reporting: CPU time (this process and the runs it waited for), wall time and
//! peak memory, the comparison of a run's output with the ceiling's, and the markdown table.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    u
}

/// CPU time (user + system) so far of this process and of the pipeline runs it waited for,
/// in seconds.
pub(super) fn cpu_seconds() -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            let u = rusage(who);
            tv(u.ru_utime) + tv(u.ru_stime)
        })
        .sum()
}

/// The peak resident memory of this process or of the largest pipeline run, in MB.
pub(super) fn peak_rss_mb() -> f64 {
    let peak = rusage(libc::RUSAGE_SELF)
        .ru_maxrss
        .max(rusage(libc::RUSAGE_CHILDREN).ru_maxrss);
    peak as f64 / 1024.0
}

pub(super) struct Measure {
    pub(super) cpu: f64,
    pub(super) wall: f64,
}

pub(super) fn measure(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Measure> {
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    f()?;
    Ok(Measure {
        cpu: cpu_seconds() - c0,
        wall: t0.elapsed().as_secs_f64(),
    })
}

pub(super) fn sorted_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

pub(super) fn report(name: &str, records: u64, ceiling: &Measure, runs: &[(usize, Measure, bool)]) {
    let per_cpu = |m: &Measure| records as f64 / m.cpu.max(1e-9);
    let per_wall = |m: &Measure| records as f64 / m.wall.max(1e-9);
    println!("\n## {name} ({records} records)");
    println!(
        "| run | events/CPU-s | events/wall-s | CPU s | wall s | vs ceiling (per CPU-s) | output equals ceiling |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| plain loop (ceiling) | {:.0} | {:.0} | {:.2} | {:.2} | 100% | — |",
        per_cpu(ceiling),
        per_wall(ceiling),
        ceiling.cpu,
        ceiling.wall
    );
    for (p, m, same) in runs {
        println!(
            "| pipeline, parallelism {p} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0}% | {} |",
            per_cpu(m),
            per_wall(m),
            m.cpu,
            m.wall,
            100.0 * per_cpu(m) / per_cpu(ceiling),
            if *same { "yes" } else { "NO" }
        );
    }
}
