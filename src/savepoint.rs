//! Savepoint requests: how a running pipeline is asked, from outside (`POST /savepoint`, sent
//! by `watershed savepoint`, or SIGUSR1), to take a savepoint — a checkpoint written to a directory of
//! the caller's choosing and kept until the caller removes it — and, usually, to stop right
//! after it without draining (nothing after the savepoint is committed, so a run started
//! from it with `--from-savepoint` continues exactly there).

use std::path::PathBuf;
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, bounded};

/// One request, with where its answer goes.
pub struct SavepointRequest {
    pub dir: PathBuf,
    /// Stop the pipeline once the savepoint is written.
    pub stop: bool,
    pub reply: Sender<Result<PathBuf, String>>,
}

/// The queue between the HTTP endpoint and the supervisor.
#[derive(Default)]
pub struct SavepointRequests {
    queue: Mutex<Vec<SavepointRequest>>,
}

impl SavepointRequests {
    /// Queues a request and returns where its answer will arrive.
    pub fn request(&self, dir: PathBuf, stop: bool) -> Receiver<Result<PathBuf, String>> {
        let (reply, answer) = bounded(1);
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SavepointRequest { dir, stop, reply });
        answer
    }

    /// Takes the requests queued so far.
    pub fn take(&self) -> Vec<SavepointRequest> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Set by SIGUSR1.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do.
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Takes a savepoint on SIGUSR1 and stops after it: into `savepoints/savepoint-<UTC time>`
/// under `checkpoint_dir` (without one, the signal is refused with a message). A thread waits
/// for the signal and queues the request, as `POST /savepoint` does.
pub fn on_signal(requests: std::sync::Arc<SavepointRequests>, checkpoint_dir: Option<PathBuf>) {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let spawned = std::thread::Builder::new()
        .name("savepoint-signal".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if !SIGNALLED.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Some(base) = &checkpoint_dir else {
                    tracing::error!(
                        "SIGUSR1: no savepoint without `checkpoint.dir`; use `watershed savepoint PIPELINE --dir DIR`"
                    );
                    continue;
                };
                let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
                let dir = base.join("savepoints").join(format!("savepoint-{stamp}"));
                tracing::info!(dir = %dir.display(), "SIGUSR1: taking a savepoint, then stopping");
                let answer = requests.request(dir, true);
                match answer.recv() {
                    Ok(Ok(dir)) => eprintln!(
                        "savepoint written to {}; continue with `--from-savepoint {}`",
                        dir.display(),
                        dir.display()
                    ),
                    Ok(Err(e)) => tracing::error!(error = %e, "SIGUSR1: savepoint failed"),
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot wait for SIGUSR1: savepoints only through POST /savepoint");
    }
}
