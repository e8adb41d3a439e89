//! Named points where a crash test can make the process die on purpose, at moments a random
//! kill rarely hits (between writing a checkpoint's state and its manifest, say). Set
//! `WATERSHED_FAILPOINT=<name>:<n>` and the process aborts, like a SIGKILL, the `n`-th time it
//! passes point `<name>`. Unset, a point costs one relaxed atomic load.

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
