//! Savepoint requests: how a running pipeline is asked, from outside (`POST /savepoint`, sent
//! by `watershed savepoint`, or SIGUSR1), to take a savepoint — a checkpoint written to a
//! directory and kept until the caller removes it — and, usually, to stop right after it
//! without draining (nothing after the savepoint is committed, so a run started from it with
//! `--from-savepoint` continues exactly there).
//!
//! Where a savepoint may go (`SavepointTargets`): only into a directory that does not exist
//! yet (it is created exclusively; nothing that exists is ever replaced or removed), under
//! `checkpoint.dir/savepoints/` (the default: `savepoint-<UTC time>` there; a relative
//! directory is taken there too) or under a root the command line added
//! (`--savepoint-root`). `..` is refused, and so is a symbolic link on the way down from
//! the root.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::checkpoint::{Checkpoint, CheckpointError, store};

/// Why a savepoint was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SavepointError {
    /// The directory asked for is not one a savepoint may go to.
    #[error("{0}")]
    NotAllowed(String),
    /// The directory exists: a savepoint goes only into a new one.
    #[error("{} exists: a savepoint goes only into a new directory, and nothing there is replaced", .0.display())]
    Exists(PathBuf),
    /// No savepoint can be taken now (the pipeline is ending or failing).
    #[error("{0}")]
    Unavailable(String),
    /// Taking or writing it failed.
    #[error("{0}")]
    Failed(String),
}

/// What a request is answered with: where the savepoint was written.
pub type SavepointAnswer = Result<PathBuf, SavepointError>;

/// Writes checkpoint `cp` as a savepoint into `dir`, which must not exist yet
/// (`checkpoint::store::write_dir`).
pub fn write(dir: &Path, pipeline: &str, cp: &Checkpoint, now_ms: i64) -> SavepointAnswer {
    match store::write_dir(dir, pipeline, cp, now_ms) {
        Ok(()) => Ok(dir.to_path_buf()),
        Err(CheckpointError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Err(SavepointError::Exists(dir.to_path_buf()))
        }
        Err(e) => Err(SavepointError::Failed(e.to_string())),
    }
}

/// One request, with where its answer goes.
pub struct SavepointRequest {
    /// A directory that does not exist yet (see `SavepointTargets::resolve`).
    pub dir: PathBuf,
    /// Stop the pipeline once the savepoint is written.
    pub stop: bool,
    pub reply: Sender<SavepointAnswer>,
}

/// The queue between the HTTP endpoint and the supervisor.
#[derive(Default)]
pub struct SavepointRequests {
    queue: Mutex<Vec<SavepointRequest>>,
}

impl SavepointRequests {
    /// Queues a request and returns where its answer will arrive.
    pub fn request(&self, dir: PathBuf, stop: bool) -> Receiver<SavepointAnswer> {
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

/// Where savepoints asked for from outside may be written: under `checkpoint.dir/savepoints/`
/// and under the roots the command line added.
#[derive(Clone, Debug, Default)]
pub struct SavepointTargets {
    /// `<checkpoint.dir>/savepoints`, absolute.
    default_root: Option<PathBuf>,
    /// Every root, absolute: the default one first.
    roots: Vec<PathBuf>,
}

impl SavepointTargets {
    /// Relative paths are taken against the working directory.
    pub fn new(
        checkpoint_dir: Option<&Path>,
        extra_roots: &[PathBuf],
    ) -> std::io::Result<SavepointTargets> {
        let default_root = checkpoint_dir
            .map(|d| std::path::absolute(d.join("savepoints")).map(|p| normal(&p)))
            .transpose()?;
        let mut roots: Vec<PathBuf> = default_root.iter().cloned().collect();
        for r in extra_roots {
            roots.push(normal(&std::path::absolute(r)?));
        }
        Ok(SavepointTargets {
            default_root,
            roots,
        })
    }

    /// A new directory under `checkpoint.dir/savepoints/` named after the time; `None`
    /// without a checkpoint directory.
    pub fn default_dir(&self) -> Option<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        Some(
            self.default_root
                .as_ref()?
                .join(format!("savepoint-{stamp}")),
        )
    }

    /// The directory a request for `asked` writes to (the default one when it names none),
    /// or why it may not.
    pub fn resolve(&self, asked: Option<&Path>) -> Result<PathBuf, SavepointError> {
        let Some(asked) = asked else {
            return self.default_dir().ok_or_else(|| {
                SavepointError::NotAllowed(
                    "no savepoint directory given, and no `checkpoint.dir` to take one under: give `dir` under a `--savepoint-root` of the pipeline".into(),
                )
            });
        };
        if asked.components().any(|c| c == Component::ParentDir) {
            return Err(SavepointError::NotAllowed(format!(
                "{}: `..` is not allowed in a savepoint directory",
                asked.display()
            )));
        }
        let dir = if asked.is_absolute() {
            normal(asked)
        } else {
            match &self.default_root {
                Some(root) => normal(&root.join(asked)),
                None => {
                    return Err(SavepointError::NotAllowed(format!(
                        "{}: a relative savepoint directory is taken under `checkpoint.dir/savepoints/`, and this pipeline has no `checkpoint.dir`: give an absolute one",
                        asked.display()
                    )));
                }
            }
        };
        let Some(root) = self.roots.iter().find(|r| dir.starts_with(r) && dir != **r) else {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(SavepointError::NotAllowed(format!(
                "{} is not under a savepoint directory of this pipeline ({}): start it with `--savepoint-root DIR` to allow another",
                dir.display(),
                if roots.is_empty() {
                    "it has none: no `checkpoint.dir`".to_string()
                } else {
                    roots.join(", ")
                }
            )));
        };
        // No symbolic link between the root and the savepoint may lead elsewhere.
        let mut at = root.clone();
        for part in dir.strip_prefix(root).unwrap_or(&dir).components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SavepointError::NotAllowed(format!(
                        "{}: {} is a symbolic link: a savepoint goes only into real directories under its root",
                        dir.display(),
                        at.display()
                    )));
                }
                Ok(_) if at == dir => return Err(SavepointError::Exists(dir)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(dir)
    }
}

/// `path` without `.` components (it has no `..`, or they are kept as they are).
fn normal(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// Set by SIGUSR1.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do.
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Takes a savepoint on SIGUSR1 and stops after it: into `savepoints/savepoint-<UTC time>`
/// under `checkpoint.dir` (without one, the signal is refused with a message). A thread waits
/// for the signal and queues the request, as `POST /savepoint` does.
pub fn on_signal(requests: std::sync::Arc<SavepointRequests>, targets: SavepointTargets) {
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
                let Some(dir) = targets.default_dir() else {
                    tracing::error!(
                        "SIGUSR1: no savepoint without `checkpoint.dir`; use `watershed savepoint PIPELINE --dir DIR`"
                    );
                    continue;
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn not_allowed(r: Result<PathBuf, SavepointError>) -> String {
        match r {
            Err(SavepointError::NotAllowed(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn savepoints_go_only_into_new_directories_under_their_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = tmp.path().join("cp");
        let extra = tmp.path().join("extra");
        let t = SavepointTargets::new(Some(&cp), std::slice::from_ref(&extra)).unwrap();
        let root = cp.join("savepoints");
        // The default, and relative directories, go under checkpoint.dir/savepoints.
        let d = t.resolve(None).unwrap();
        assert_eq!(d.parent().unwrap(), root);
        assert!(
            d.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("savepoint-")
        );
        assert_eq!(
            t.resolve(Some(Path::new("a/./b"))).unwrap(),
            root.join("a/b")
        );
        assert_eq!(t.resolve(Some(&root.join("x"))).unwrap(), root.join("x"));
        assert_eq!(t.resolve(Some(&extra.join("y"))).unwrap(), extra.join("y"));
        // Nowhere else: not `..`, not another absolute directory, not the root itself.
        assert!(not_allowed(t.resolve(Some(Path::new("../../etc")))).contains("`..`"));
        assert!(not_allowed(t.resolve(Some(&root.join("a/../../x")))).contains("`..`"));
        let m = not_allowed(t.resolve(Some(&tmp.path().join("elsewhere"))));
        assert!(
            m.contains("--savepoint-root") && m.contains(root.to_str().unwrap()),
            "{m}"
        );
        not_allowed(t.resolve(Some(&root)));
        // An existing directory is never replaced.
        std::fs::create_dir_all(root.join("taken")).unwrap();
        assert_eq!(
            t.resolve(Some(Path::new("taken"))),
            Err(SavepointError::Exists(root.join("taken")))
        );
        // A symbolic link under the root does not lead out of it.
        std::os::unix::fs::symlink(tmp.path(), root.join("link")).unwrap();
        assert!(not_allowed(t.resolve(Some(Path::new("link/x")))).contains("symbolic link"));
    }

    #[test]
    fn without_a_checkpoint_directory_only_absolute_dirs_under_added_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let none = SavepointTargets::new(None, &[]).unwrap();
        assert!(none.default_dir().is_none());
        assert!(not_allowed(none.resolve(None)).contains("--savepoint-root"));
        assert!(not_allowed(none.resolve(Some(&tmp.path().join("s")))).contains("it has none"));
        let some = SavepointTargets::new(None, &[tmp.path().to_path_buf()]).unwrap();
        assert!(not_allowed(some.resolve(Some(Path::new("s")))).contains("absolute"));
        assert_eq!(
            some.resolve(Some(&tmp.path().join("s"))).unwrap(),
            tmp.path().join("s")
        );
    }
}
