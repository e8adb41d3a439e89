//! Restarting after a transient failure: a run that fails with an error that may go away
//! (a connection refused, a disk that was full) is run again from its latest complete
//! checkpoint after a capped, jittered backoff — the same restore as after a crash, so
//! nothing is lost or doubled (until the run has completed a checkpoint of its own, it starts
//! again as it first did: from the checkpoint asked for, or from scratch after
//! `--fresh-start`). Every restart is counted (`watershed_restarts_total`); a
//! streak of them is logged once. Without a checkpoint directory a restart would read the
//! input again from the start, so the failure stops the run instead; definite, config and
//! internal errors always stop it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use crate::error::{ErrorClass, RunError};
use crate::runtime::exec::{RunContext, RunSummary, run};
use crate::runtime::plan::Plan;
use crate::runtime::retry::{Backoff, Streak};
use crate::types::Epoch;

/// The highest checkpoint epoch in `dir`, if it holds any.
fn highest_epoch(dir: &Path) -> Option<Epoch> {
    CheckpointStore::existing(dir)
        .ok()
        .and_then(|s| s.highest_epoch())
}

/// Runs `make_plan()`'s pipeline, and again after each transient failure (a new plan each
/// time: factories may hold state of the run that failed).
pub fn run_restarting(
    mut make_plan: impl FnMut() -> Result<Plan, RunError>,
    ctx: RunContext,
    mut backoff: Backoff,
) -> Result<RunSummary, RunError> {
    let mut ctx = ctx;
    let mut streak = Streak::new("pipeline");
    let restarts = metrics::counter!(crate::metrics::RESTARTS);
    // The newest checkpoint in the directory before the first run: one above it was
    // completed by this run.
    let mut newest_at_start: Option<Option<Epoch>> = None;
    loop {
        let plan = make_plan()?;
        let dir = plan.options.checkpoint_dir.clone();
        let before = *newest_at_start.get_or_insert_with(|| dir.as_deref().and_then(highest_epoch));
        let error = match run(plan, ctx.clone()) {
            Ok(summary) => {
                streak.succeeded();
                return Ok(summary);
            }
            Err(e) => e,
        };
        let Some(dir) = dir.filter(|_| ctx.bootstrap.is_none()) else {
            return Err(error);
        };
        if error.class() != ErrorClass::Transient || ctx.shutdown.load(Ordering::SeqCst) {
            return Err(error);
        }
        let delay = backoff.next_delay();
        streak.failed(&error, delay);
        restarts.increment(1);
        let deadline = ctx.clock.now_ms() + delay.as_millis() as i64;
        while ctx.clock.now_ms() < deadline {
            if ctx.shutdown.load(Ordering::SeqCst) {
                return Err(error);
            }
            ctx.clock.sleep_until(deadline, Duration::from_millis(50));
        }
        // From the latest checkpoint once one was completed since the start; until then
        // from where the first run started (the checkpoint asked for, or a fresh start).
        if highest_epoch(&dir) > before {
            ctx.restore_from = None;
            ctx.fresh_start = false;
        }
        ctx.status.clear_instances();
        tracing::info!(
            attempt = backoff.attempts(),
            "restarting from the latest checkpoint"
        );
    }
}
