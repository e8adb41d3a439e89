//! Savepoint requests: how a running pipeline is asked, from outside (`POST /savepoint`, sent
//! by `watershed savepoint`), to take a savepoint — a checkpoint written to a directory of
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
