//! Running this binary: every pipeline runs as its own `watershed` process, as a user runs it,
//! and the bench waits for it (so that `getrusage` of the children counts its CPU time).

use std::path::Path;

/// Runs a pipeline the way a user does, as its own `watershed run` process, so that one
/// run's heap and threads do not weigh on the next one's numbers.
pub(super) fn run_pipeline(yaml: &str, dir: &Path, name: &str) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    let p = path.display().to_string();
    watershed(&["run", "--log", "error", "--metrics-addr", "off", &p]).map(|_| ())
}

thread_local! {
    /// The peak resident memory of the last run `watershed` waited for, in MB, as the run's
    /// summary reports it (a child's `getrusage` would count this process's memory too).
    pub(super) static LAST_RUN_PEAK_MB: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Runs this binary with `args` and waits; returns its stderr (the run's summary). Its peak
/// resident memory is in `LAST_RUN_PEAK_MB`.
pub(super) fn watershed(args: &[&str]) -> anyhow::Result<String> {
    let run = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    anyhow::ensure!(
        run.status.success(),
        "`watershed {}` failed ({}): {stderr}",
        args.join(" "),
        run.status
    );
    let peak = stderr.lines().find_map(|l| {
        l.trim()
            .strip_prefix("peak resident memory ")?
            .strip_suffix(" MB")?
            .parse()
            .ok()
    });
    LAST_RUN_PEAK_MB.set(peak.unwrap_or(f64::NAN));
    Ok(stderr)
}

/// Starts `exe run PIPELINE`, quiet but for errors, serving `/status` on a free loopback
/// port (returned with the child); its stderr goes where `stderr` says.
pub(super) fn spawn_serving(
    exe: &Path,
    pipeline: &Path,
    stderr: std::process::Stdio,
) -> anyhow::Result<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(exe)
        .args(["run", "--log", "error", "--metrics-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(pipeline)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()?;
    Ok((child, port))
}
