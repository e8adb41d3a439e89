//! Named points where a crash test can make the process die on purpose, at moments a random
//! kill rarely hits (between writing a checkpoint's state and its manifest, say). Set
//! `WATERSHED_FAILPOINT=<name>:<n>` and the process aborts, like a SIGKILL, the `n`-th time it
//! passes point `<name>`. Unset, a point costs one relaxed atomic load.
//!
//! Points where a determinism test slows the process down (`slow`): set
//! `WATERSHED_SLOW=<name>:<ms>[,<name>:<ms>…]` and every pass of point `<name>` sleeps that
//! long — a sink behind a slow disk, an operator starved of CPU — to show that how fast a thread
//! runs never changes what the pipeline outputs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    passed: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("WATERSHED_FAILPOINT").ok()?;
            let (name, at) = spec.rsplit_once(':')?;
            Some(Armed {
                name: name.to_string(),
                at: at.parse().ok()?,
                passed: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Passes point `name`: aborts the process if this is the armed point's `n`-th pass.
pub fn hit(name: &str) {
    if let Some(a) = armed()
        && a.name == name
        && a.passed.fetch_add(1, Ordering::Relaxed) + 1 == a.at
    {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

fn slow_points() -> &'static [(String, u64)] {
    static SLOW: OnceLock<Vec<(String, u64)>> = OnceLock::new();
    SLOW.get_or_init(|| {
        std::env::var("WATERSHED_SLOW")
            .ok()
            .map(|spec| {
                spec.split(',')
                    .filter_map(|p| {
                        let (name, ms) = p.rsplit_once(':')?;
                        Some((name.to_string(), ms.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Passes slow point `name`: sleeps as long as `WATERSHED_SLOW` says for it, if at all.
pub fn slow(name: &str) {
    let points = slow_points();
    if points.is_empty() {
        return;
    }
    if let Some((_, ms)) = points.iter().find(|(n, _)| n == name) {
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}
