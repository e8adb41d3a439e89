//! The checkpoint directory: one directory per complete checkpoint, `chk-<epoch>`, holding a
//! `MANIFEST` (JSON: epoch, pipeline, source positions and watermark state, and for each
//! operator and sink the file of its state with its length and CRC-32) and the state files.
//!
//! Writing is atomic: everything goes into `.chk-<epoch>.tmp`, each file is fsynced, the
//! manifest last (its own CRC-32 on its last line), then the directory is renamed to
//! `chk-<epoch>` and the parent fsynced. A checkpoint directory therefore exists only whole;
//! reading still checks every checksum, and a broken checkpoint is skipped for the previous
//! complete one with a warning naming what is wrong, never restored; a directory holding
//! checkpoints none of which verifies is an error (`latest`), never taken for an empty one.
//! The newest `retain` checkpoints are kept.
//!
//! Blobs (immutable parts of operator state, such as a reference table's frozen chunks) are
//! files in `shared/`, named by their id and listed (length, CRC-32) in the manifest of every
//! checkpoint that uses them: a blob is written once, by the first checkpoint that needs it,
//! and removed when no kept checkpoint names it any more. This is what makes checkpoints of
//! a large table incremental. A savepoint is self-contained: its blobs go into its own
//! `shared/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError, SourceCheckpoint};
use crate::failpoint;
use crate::state::{Blob, Blobs, StateImage};
use crate::types::Epoch;

/// Version of the manifest layout (3: positions tagged with their connector kind and
/// version; 2: blobs; 1 and 2 are read too).
const MANIFEST_FORMAT: u32 = 3;
const MANIFEST: &str = "MANIFEST";
const PREFIX: &str = "chk-";
const SHARED: &str = "shared";
const BLOB_SUFFIX: &str = ".blob";
/// No run reaches this epoch (2^48 checkpoints); a manifest or directory claiming one is not
/// a checkpoint a run wrote, and the epochs after it stay far from `FINAL_EPOCH`.
const MAX_EPOCH: Epoch = 1 << 48;

/// A state file named by a manifest, with the blobs its state refers to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<BlobFile>,
}

impl StateFile {
    /// Bytes of the file and its blobs.
    pub fn total_bytes(&self) -> u64 {
        self.bytes + self.blobs.iter().map(|b| b.bytes).sum::<u64>()
    }
}

/// A blob named by a manifest; `file` is relative to the checkpoint's directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlobFile {
    pub id: String,
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
    /// Written by this checkpoint (not shared from an earlier one).
    #[serde(default)]
    pub new: bool,
}

/// What `MANIFEST` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub pipeline: String,
    pub epoch: Epoch,
    /// Processing time the manifest was written (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// Every source had ended when it was taken.
    pub finished: bool,
    /// From the barrier's injection to every task's acknowledgement.
    pub duration_ms: i64,
    pub alignment_ms: i64,
    pub sources: BTreeMap<String, SourceCheckpoint>,
    pub operators: BTreeMap<String, StateFile>,
    pub sinks: BTreeMap<String, StateFile>,
}

impl Manifest {
    /// Bytes of the state files and their blobs.
    pub fn state_bytes(&self) -> u64 {
        self.operators
            .values()
            .chain(self.sinks.values())
            .map(StateFile::total_bytes)
            .sum()
    }

    /// Bytes this checkpoint wrote (its state files and the blobs it did not share).
    pub fn written_bytes(&self) -> u64 {
        self.operators
            .values()
            .chain(self.sinks.values())
            .map(|f| {
                f.bytes
                    + f.blobs
                        .iter()
                        .filter(|b| b.new)
                        .map(|b| b.bytes)
                        .sum::<u64>()
            })
            .sum()
    }

    fn blob_ids(&self) -> impl Iterator<Item = &str> {
        self.operators
            .values()
            .flat_map(|f| f.blobs.iter().map(|b| b.id.as_str()))
    }
}

/// A checkpoint read back and verified.
#[derive(Clone, Debug)]
pub struct Restored {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub operators: BTreeMap<String, StateImage>,
    pub sinks: BTreeMap<String, Vec<u8>>,
}

/// One checkpoint directory as `list` found it.
#[derive(Debug)]
pub struct Listed {
    pub path: PathBuf,
    pub epoch: Epoch,
    /// The verified manifest, or why the checkpoint cannot be used.
    pub manifest: Result<Manifest, String>,
}

/// Where a checkpoint's blobs go, and those known to be there, verified, by id.
struct BlobDir {
    dir: PathBuf,
    /// `dir` as the manifest names it, relative to the checkpoint's directory.
    relative: &'static str,
    known: BTreeMap<String, BlobFile>,
}

impl BlobDir {
    fn new(dir: PathBuf, relative: &'static str) -> BlobDir {
        BlobDir {
            dir,
            relative,
            known: BTreeMap::new(),
        }
    }

    /// Writes `blob` as blob `id` unless it is there already. A sealed file is linked
    /// (copied where it cannot be: another file system).
    fn put(&mut self, id: &str, blob: &Blob) -> Result<BlobFile, CheckpointError> {
        if let Some(known) = self.known.get(id) {
            return Ok(BlobFile {
                new: false,
                ..known.clone()
            });
        }
        let name = blob_name(id);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let crc32 = match blob {
            Blob::Bytes(bytes) => {
                write_synced(&tmp, bytes)?;
                crc32fast::hash(bytes)
            }
            Blob::File { path, crc32, .. } => {
                if std::fs::hard_link(path, &tmp).is_err() {
                    std::fs::copy(path, &tmp)
                        .and_then(|_| File::open(&tmp)?.sync_all())
                        .map_err(|e| {
                            CheckpointError::io(format!("cannot copy {}", path.display()), e)
                        })?;
                }
                *crc32
            }
        };
        let path = self.dir.join(&name);
        std::fs::rename(&tmp, &path).map_err(|e| {
            CheckpointError::io(format!("cannot rename {} into place", tmp.display()), e)
        })?;
        let blob = BlobFile {
            id: id.to_string(),
            file: format!("{}/{name}", self.relative),
            bytes: blob.len(),
            crc32,
            new: true,
        };
        self.known.insert(id.to_string(), blob.clone());
        Ok(blob)
    }
}

fn blob_name(id: &str) -> String {
    format!("{}{BLOB_SUFFIX}", file_safe(id))
}

/// A checkpoint directory with its retention.
pub struct CheckpointStore {
    dir: PathBuf,
    retain: usize,
    blobs: Mutex<BlobDir>,
}

impl CheckpointStore {
    /// Opens (creating) `dir` for a run, keeping the newest `retain` checkpoints. Leftovers
    /// of a write that did not finish are removed: unfinished checkpoint directories, and
    /// blobs no checkpoint names.
    pub fn open(dir: &Path, retain: usize) -> Result<CheckpointStore, CheckpointError> {
        let store = CheckpointStore::at(dir, retain)?;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| CheckpointError::io(format!("cannot read {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".chk-") && name.ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        store.remove_unnamed_blobs();
        Ok(store)
    }

    /// The existing store in `dir`, to look at: nothing is created or removed.
    pub fn existing(dir: &Path) -> Result<CheckpointStore, CheckpointError> {
        if !dir.is_dir() {
            return Err(CheckpointError::io(
                format!("no checkpoint directory at {}", dir.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            retain: usize::MAX,
            blobs: Mutex::new(BlobDir::new(dir.join(SHARED), "../shared")),
        })
    }

    /// The store in `dir` (created), to read: nothing is removed.
    pub fn at(dir: &Path, retain: usize) -> Result<CheckpointStore, CheckpointError> {
        let shared = dir.join(SHARED);
        std::fs::create_dir_all(&shared)
            .map_err(|e| CheckpointError::io(format!("cannot create {}", shared.display()), e))?;
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            retain: retain.max(1),
            blobs: Mutex::new(BlobDir::new(shared, "../shared")),
        })
    }

    /// Removes the blobs (and unfinished blob writes) that no kept checkpoint names, and
    /// forgets them.
    fn remove_unnamed_blobs(&self) {
        let mut named: BTreeSet<String> = BTreeSet::new();
        for (_, path) in self.epochs() {
            match read_manifest(&path) {
                Ok(m) => named.extend(m.blob_ids().map(blob_name)),
                Err(e) => {
                    // What it names is unknown: nothing is removed while it is kept.
                    tracing::warn!(error = %e, "not removing unused blobs: a kept checkpoint's manifest cannot be read");
                    return;
                }
            }
        }
        let mut blobs = self.blobs.lock().expect("blob directory lock");
        let Ok(entries) = std::fs::read_dir(&blobs.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !named.contains(&name)
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an unused blob");
            }
        }
        blobs.known.retain(|id, _| named.contains(&blob_name(id)));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `cp` durably as `chk-<epoch>`, then drops checkpoints beyond the retention.
    /// Returns the checkpoint's directory.
    pub fn write(
        &self,
        pipeline: &str,
        cp: &Checkpoint,
        now_ms: i64,
    ) -> Result<PathBuf, CheckpointError> {
        let target = self.dir.join(format!("{PREFIX}{:012}", cp.epoch));
        let tmp = self.dir.join(format!(".{PREFIX}{:012}.tmp", cp.epoch));
        if tmp.exists() {
            // Left by a write of this checkpoint directory that did not finish.
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| CheckpointError::io(format!("cannot remove {}", tmp.display()), e))?;
        }
        std::fs::create_dir(&tmp)
            .map_err(|e| CheckpointError::io(format!("cannot create {}", tmp.display()), e))?;
        {
            let mut blobs = self.blobs.lock().expect("blob directory lock");
            write_into(&tmp, &mut blobs, pipeline, cp, now_ms)?;
        }
        failpoint::hit("checkpoint-before-rename");
        if target.exists() {
            // A broken checkpoint of the same epoch, skipped at restore: replaced.
            tracing::warn!(path = %target.display(), "replacing a checkpoint of the same epoch that could not be restored");
            std::fs::remove_dir_all(&target).map_err(|e| {
                CheckpointError::io(format!("cannot remove {}", target.display()), e)
            })?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| {
            CheckpointError::io(
                format!("cannot rename {} to {}", tmp.display(), target.display()),
                e,
            )
        })?;
        sync_dir(&self.dir)?;
        self.prune();
        Ok(target)
    }

    /// Drops all but the newest `retain` checkpoints, and the blobs only they named.
    fn prune(&self) {
        let epochs = self.epochs();
        for (_, path) in epochs.into_iter().skip(self.retain) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old checkpoint");
            }
        }
        self.remove_unnamed_blobs();
    }

    /// The checkpoint directories, newest first.
    fn epochs(&self) -> Vec<(Epoch, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut epochs: Vec<(Epoch, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let epoch: Epoch = name.strip_prefix(PREFIX)?.parse().ok()?;
                (epoch < MAX_EPOCH).then(|| (epoch, e.path()))
            })
            .collect();
        epochs.sort_by_key(|e| std::cmp::Reverse(e.0));
        epochs
    }

    /// Every checkpoint, newest first, each verified.
    pub fn list(&self) -> Vec<Listed> {
        let epochs = self.epochs();
        epochs
            .into_iter()
            .map(|(epoch, path)| Listed {
                manifest: read(&path).map(|r| r.manifest).map_err(|e| e.to_string()),
                epoch,
                path,
            })
            .collect()
    }

    /// The newest checkpoint that verifies; each newer broken one is skipped with a warning
    /// saying why. `None` when the directory holds no checkpoint; an error listing why each
    /// is broken when it holds some and none verifies. Its blobs, verified, need not be
    /// written again.
    pub fn latest(&self) -> Result<Option<Restored>, CheckpointError> {
        let mut broken: Vec<(String, String)> = Vec::new();
        for (epoch, path) in self.epochs() {
            let verified = read(&path).and_then(|r| {
                if r.manifest.epoch == epoch {
                    Ok(r)
                } else {
                    Err(CheckpointError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!(
                            "its manifest is of epoch {}, its directory's name says {epoch}",
                            r.manifest.epoch
                        ),
                    })
                }
            });
            match verified {
                Ok(r) => {
                    let mut blobs = self.blobs.lock().expect("blob directory lock");
                    for b in r.manifest.operators.values().flat_map(|f| &f.blobs) {
                        blobs.known.insert(b.id.clone(), b.clone());
                    }
                    return Ok(Some(r));
                }
                Err(e) => {
                    tracing::warn!(checkpoint = %path.display(), error = %e, "skipping a broken checkpoint for an older one");
                    broken.push((path.display().to_string(), broken_reason(e)));
                }
            }
        }
        if broken.is_empty() {
            return Ok(None);
        }
        Err(CheckpointError::NoneRestorable {
            dir: self.dir.display().to_string(),
            broken,
        })
    }

    /// The highest epoch of a checkpoint directory here, broken or not (a run's next
    /// checkpoint goes above it, so that retention never drops it for an older one).
    pub fn highest_epoch(&self) -> Option<Epoch> {
        self.epochs().first().map(|(e, _)| *e)
    }
}

/// Why a checkpoint is broken, without the path the listing already shows.
fn broken_reason(e: CheckpointError) -> String {
    match e {
        CheckpointError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Writes a self-contained checkpoint (a savepoint) into `dir`, its blobs into `dir/shared`,
/// every file fsynced and the manifest last. `dir` must not exist: it is created here
/// (exclusively; its parents as needed), so nothing that was there is ever replaced; if the
/// write fails, what it wrote is removed. An `AlreadyExists` I/O error when it exists.
pub fn write_dir(
    dir: &Path,
    pipeline: &str,
    cp: &Checkpoint,
    now_ms: i64,
) -> Result<(), CheckpointError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| CheckpointError::io(format!("cannot create {}", parent.display()), e))?;
    }
    std::fs::create_dir(dir).map_err(|e| {
        let context = if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists: a savepoint goes only into a new directory",
                dir.display()
            )
        } else {
            format!("cannot create {}", dir.display())
        };
        CheckpointError::io(context, e)
    })?;
    let mut blobs = BlobDir::new(dir.join(SHARED), SHARED);
    let written = write_into(dir, &mut blobs, pipeline, cp, now_ms);
    if written.is_err() {
        // Created above by this call: nobody else's.
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

/// Writes a checkpoint into the empty directory `dir` and the blobs `blobs` lacks into its
/// directory; every file fsynced and the manifest last.
fn write_into(
    dir: &Path,
    blobs: &mut BlobDir,
    pipeline: &str,
    cp: &Checkpoint,
    now_ms: i64,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(&blobs.dir)
        .map_err(|e| CheckpointError::io(format!("cannot create {}", blobs.dir.display()), e))?;
    let file = |name: String, bytes: &[u8]| {
        write_synced(&dir.join(&name), bytes)?;
        Ok::<_, CheckpointError>(StateFile {
            file: name,
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
            blobs: Vec::new(),
        })
    };
    let mut operators = BTreeMap::new();
    for (i, (label, image)) in cp.operators.iter().enumerate() {
        let name = format!("operator-{i:03}-{}.state", file_safe(label));
        let mut f = file(name, &image.bytes)?;
        for (id, bytes) in &image.blobs {
            f.blobs.push(blobs.put(id, bytes)?);
        }
        operators.insert(label.clone(), f);
    }
    if cp.operators.values().any(|i| !i.blobs.is_empty()) {
        sync_dir(&blobs.dir)?;
    }
    let mut sinks = BTreeMap::new();
    for (i, (label, bytes)) in cp.sinks.iter().enumerate() {
        let name = format!("sink-{i:03}-{}.state", file_safe(label));
        sinks.insert(label.clone(), file(name, bytes)?);
    }
    failpoint::hit("checkpoint-before-manifest");
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        pipeline: pipeline.to_string(),
        epoch: cp.epoch,
        created_at_ms: now_ms,
        finished: cp.finished,
        duration_ms: (cp.acknowledged_ms - cp.started_ms).max(0),
        alignment_ms: cp.alignment_ms,
        sources: cp.sources.clone(),
        operators,
        sinks,
    };
    let body = serde_json::to_string(&manifest).expect("a manifest encodes");
    let content = format!("{body}\ncrc32 {:08x}\n", crc32fast::hash(body.as_bytes()));
    write_synced(&dir.join(MANIFEST), content.as_bytes())?;
    sync_dir(dir)
}

/// Reads and verifies the manifest of the checkpoint in `dir` (not its state files).
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: dir.display().to_string(),
        reason,
    };
    let path = dir.join(MANIFEST);
    let content = std::fs::read_to_string(&path)
        .map_err(|e| corrupt(format!("cannot read {MANIFEST}: {e}")))?;
    let (body, trailer) = content
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or_else(|| corrupt(format!("{MANIFEST} has no checksum line (cut short?)")))?;
    let want = trailer
        .strip_prefix("crc32 ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt(format!("{MANIFEST}'s last line is not `crc32 <hex>`")))?;
    let got = crc32fast::hash(body.as_bytes());
    if got != want {
        return Err(corrupt(format!(
            "{MANIFEST} checksum mismatch (stored {want:08x}, computed {got:08x})"
        )));
    }
    let manifest: Manifest = serde_json::from_str(body)
        .map_err(|e| corrupt(format!("{MANIFEST} does not decode: {e}")))?;
    if !(1..=MANIFEST_FORMAT).contains(&manifest.format) {
        return Err(corrupt(format!(
            "manifest format {} (this build reads 1 to {MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    if manifest.epoch >= MAX_EPOCH {
        return Err(corrupt(format!(
            "{MANIFEST} names epoch {}, beyond any a run reaches",
            manifest.epoch
        )));
    }
    for (label, f) in manifest.operators.iter().chain(&manifest.sinks) {
        if !is_state_file_name(&f.file) {
            return Err(corrupt(format!(
                "{MANIFEST} names `{}` as the state file of {label}: not a file of the checkpoint",
                f.file
            )));
        }
        if let Some(b) = f.blobs.iter().find(|b| !is_blob_path(&b.file)) {
            return Err(corrupt(format!(
                "{MANIFEST} names `{}` as a blob of {label}: not a file of a `{SHARED}` directory",
                b.file
            )));
        }
    }
    Ok(manifest)
}

/// A state file is named by its file name alone, inside the checkpoint's directory.
fn is_state_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none()
}

/// A blob is `shared/<file>` (a savepoint's) or `../shared/<file>` (a checkpoint's, in the
/// checkpoint directory's `shared/`).
fn is_blob_path(path: &str) -> bool {
    use std::path::Component;
    let parts: Vec<Component> = Path::new(path).components().collect();
    let rest = match parts.as_slice() {
        [Component::ParentDir, rest @ ..] => rest,
        rest => rest,
    };
    matches!(rest, [Component::Normal(dir), Component::Normal(_)] if *dir == SHARED)
}

/// Reads and verifies the checkpoint (or savepoint) in `dir`: its manifest, state files and
/// blobs.
pub fn read(dir: &Path) -> Result<Restored, CheckpointError> {
    read_loading(dir, LOAD_UP_TO)
}

/// Blobs up to this size are loaded; larger ones (a disk table's change log) are checked by
/// streaming them and left on disk for their operator to read.
const LOAD_UP_TO: u64 = 64 << 20;

/// `read`, loading blobs of at most `load_up_to` bytes.
fn read_loading(dir: &Path, load_up_to: u64) -> Result<Restored, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: dir.display().to_string(),
        reason,
    };
    let manifest = read_manifest(dir)?;
    let load = |label: &str, file: &str, want_len: u64, want_crc: u32| {
        let bytes = std::fs::read(dir.join(file))
            .map_err(|e| corrupt(format!("cannot read {file} ({label}): {e}")))?;
        if bytes.len() as u64 != want_len {
            return Err(corrupt(format!(
                "{file} ({label}) has {} bytes, the manifest says {want_len}",
                bytes.len(),
            )));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != want_crc {
            return Err(corrupt(format!(
                "{file} ({label}) checksum mismatch (stored {want_crc:08x}, computed {crc:08x})"
            )));
        }
        Ok(bytes)
    };
    let check = |label: &str, b: &BlobFile| {
        let path = dir.join(&b.file);
        let fail = |reason: String| corrupt(format!("{} ({label}): {reason}", b.file));
        let mut f = File::open(&path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let (mut hasher, mut len, mut buf) = (crc32fast::Hasher::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)
                .map_err(|e| fail(format!("cannot read it: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        let crc = hasher.finalize();
        if len != b.bytes || crc != b.crc32 {
            return Err(fail(format!(
                "{len} bytes with checksum {crc:08x}, the manifest says {} bytes with {:08x}",
                b.bytes, b.crc32
            )));
        }
        Ok(Blob::File {
            path,
            bytes: len,
            crc32: crc,
        })
    };
    let mut operators = BTreeMap::new();
    for (label, f) in &manifest.operators {
        let mut blobs = Blobs::new();
        for b in &f.blobs {
            let blob = if b.bytes <= load_up_to {
                Blob::Bytes(Arc::from(load(label, &b.file, b.bytes, b.crc32)?))
            } else {
                check(label, b)?
            };
            blobs.insert(b.id.clone(), blob);
        }
        let bytes = load(label, &f.file, f.bytes, f.crc32)?;
        operators.insert(label.clone(), StateImage { bytes, blobs });
    }
    let mut sinks = BTreeMap::new();
    for (label, f) in &manifest.sinks {
        sinks.insert(label.clone(), load(label, &f.file, f.bytes, f.crc32)?);
    }
    Ok(Restored {
        path: dir.to_path_buf(),
        manifest,
        operators,
        sinks,
    })
}

fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = File::create(path)
        .map_err(|e| CheckpointError::io(format!("cannot create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| CheckpointError::io(format!("cannot write {}", path.display()), e))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::io(format!("cannot sync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::{Position, SourcePosition};
    use crate::sources::file::FilePosition;

    fn checkpoint(epoch: Epoch) -> Checkpoint {
        let mut cp = Checkpoint {
            epoch,
            ..Checkpoint::default()
        };
        cp.sources.insert(
            "obs#0".into(),
            SourceCheckpoint {
                positions: vec![SourcePosition {
                    source: "obs".into(),
                    partition: "a.jsonl".into(),
                    position: Position::of(&FilePosition {
                        offset: 100 * epoch,
                        line: epoch,
                        decoder: None,
                        file: None,
                        split_bytes: None,
                    }),
                }],
                max_event_times: vec![Some(1_000 * epoch as i64)],
                partitions: vec!["a.jsonl".into()],
            },
        );
        cp.operators.insert(
            "enrich#0".into(),
            StateImage::inline(vec![epoch as u8; 1000]),
        );
        cp.sinks.insert("out#0".into(), b"pending".to_vec());
        cp
    }

    #[test]
    fn checkpoints_round_trip_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        assert!(store.latest().unwrap().is_none());
        for e in 1..=4 {
            store.write("p", &checkpoint(e), 0).unwrap();
        }
        let listed: Vec<Epoch> = store.list().iter().map(|l| l.epoch).collect();
        assert_eq!(listed, vec![4, 3]);
        let r = store.latest().unwrap().unwrap();
        assert_eq!(r.manifest.epoch, 4);
        assert_eq!(r.manifest.sources, checkpoint(4).sources);
        assert_eq!(r.operators, checkpoint(4).operators);
        assert_eq!(r.sinks, checkpoint(4).sinks);
    }

    #[test]
    fn a_broken_checkpoint_is_skipped_for_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        let p1 = store.write("p", &checkpoint(1), 0).unwrap();
        let p2 = store.write("p", &checkpoint(2), 0).unwrap();
        let p3 = store.write("p", &checkpoint(3), 0).unwrap();
        // Epoch 3: one flipped byte in a state file. Epoch 2: the manifest cut short.
        let state = std::fs::read_dir(&p3)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("operator"))
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&state).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&state, bytes).unwrap();
        let manifest = std::fs::read(p2.join(MANIFEST)).unwrap();
        std::fs::write(p2.join(MANIFEST), &manifest[..manifest.len() / 2]).unwrap();
        let listed = store.list();
        assert!(
            listed[0]
                .manifest
                .as_ref()
                .unwrap_err()
                .contains("checksum mismatch")
        );
        assert!(listed[1].manifest.is_err());
        assert_eq!(store.latest().unwrap().unwrap().manifest.epoch, 1);
        assert_eq!(read(&p1).unwrap().manifest.epoch, 1);
        // A new checkpoint of a broken epoch replaces it.
        store.write("p", &checkpoint(3), 0).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().manifest.epoch, 3);
    }

    fn with_blobs(epoch: Epoch, ids: &[&str]) -> Checkpoint {
        let mut cp = checkpoint(epoch);
        let image = cp.operators.get_mut("enrich#0").unwrap();
        for id in ids {
            image.blobs.insert(
                id.to_string(),
                Blob::Bytes(Arc::from(id.repeat(100).into_bytes())),
            );
        }
        cp
    }

    fn blob_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SHARED))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn blobs_are_written_once_shared_and_removed_with_the_last_checkpoint_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        store.write("p", &with_blobs(1, &["a", "b"]), 0).unwrap();
        let a = dir.path().join(SHARED).join("a.blob");
        let written_at = std::fs::metadata(&a).unwrap().modified().unwrap();
        store
            .write("p", &with_blobs(2, &["a", "b", "c"]), 0)
            .unwrap();
        let m = store.latest().unwrap().unwrap().manifest;
        let f = &m.operators["enrich#0"];
        let new: Vec<&str> = f
            .blobs
            .iter()
            .filter(|b| b.new)
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(new, vec!["c"], "a and b are shared with epoch 1");
        assert_eq!(m.written_bytes(), 1000 + 100 + b"pending".len() as u64);
        assert_eq!(
            std::fs::metadata(&a).unwrap().modified().unwrap(),
            written_at
        );
        // Epoch 1 goes (retain 2); a stays, named by epoch 2.
        store.write("p", &with_blobs(3, &["b", "c"]), 0).unwrap();
        assert_eq!(blob_files(dir.path()), vec!["a.blob", "b.blob", "c.blob"]);
        store.write("p", &with_blobs(4, &["c", "d"]), 0).unwrap();
        assert_eq!(blob_files(dir.path()), vec!["b.blob", "c.blob", "d.blob"]);
        let r = store.latest().unwrap().unwrap();
        assert_eq!(r.operators, with_blobs(4, &["c", "d"]).operators);
        // A savepoint carries its own blobs.
        let sp = dir.path().join("savepoint");
        write_dir(&sp, "p", &with_blobs(5, &["c", "d"]), 0).unwrap();
        // It goes only into a new directory: an existing one stays as it is.
        let again = write_dir(&sp, "p", &with_blobs(6, &["c"]), 0).unwrap_err();
        assert!(
            again.to_string().contains("only into a new directory"),
            "{again}"
        );
        assert_eq!(read_manifest(&sp).unwrap().epoch, 5);
        drop(store);
        std::fs::remove_dir_all(dir.path().join(SHARED)).unwrap();
        assert_eq!(
            read(&sp).unwrap().operators,
            with_blobs(5, &["c", "d"]).operators
        );
        // Large blobs are checked and left on disk; they read back the same.
        let r = read_loading(&sp, 0).unwrap();
        assert!(
            r.operators["enrich#0"]
                .blobs
                .values()
                .all(|b| matches!(b, Blob::File { .. }))
        );
        assert_eq!(r.operators, with_blobs(5, &["c", "d"]).operators);
        // A file blob is linked into a store, not copied through memory.
        let again = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(again.path(), 2).unwrap();
        let mut cp = checkpoint(6);
        cp.operators
            .insert("enrich#0".into(), r.operators["enrich#0"].clone());
        store.write("p", &cp, 0).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().operators, cp.operators);
    }

    #[test]
    fn a_broken_blob_is_detected_and_a_reopened_store_removes_unnamed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        store.write("p", &with_blobs(1, &["a"]), 0).unwrap();
        store.write("p", &with_blobs(2, &["a", "b"]), 0).unwrap();
        let b = dir.path().join(SHARED).join("b.blob");
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&b, bytes).unwrap();
        std::fs::write(dir.path().join(SHARED).join("stray.blob"), b"left over").unwrap();
        let listed = store.list();
        let err = listed[0].manifest.as_ref().unwrap_err();
        assert!(err.contains("b.blob") && err.contains("checksum"), "{err}");
        assert_eq!(store.latest().unwrap().unwrap().manifest.epoch, 1);
        drop(store);
        CheckpointStore::open(dir.path(), 5).unwrap();
        assert_eq!(blob_files(dir.path()), vec!["a.blob", "b.blob"]);
    }

    /// Regression: one missing shared blob broke every kept checkpoint, and `latest` said
    /// "none", which a run took for an empty directory and started from scratch.
    #[test]
    fn a_directory_whose_checkpoints_are_all_broken_is_an_error_listing_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        store.write("p", &with_blobs(1, &["a"]), 0).unwrap();
        store.write("p", &with_blobs(2, &["a", "b"]), 0).unwrap();
        std::fs::remove_file(dir.path().join(SHARED).join("a.blob")).unwrap();
        let e = store.latest().unwrap_err();
        let CheckpointError::NoneRestorable { broken, .. } = &e else {
            panic!("{e}");
        };
        let paths: Vec<&str> = broken.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths[0].ends_with("chk-000000000002"), "{paths:?}");
        assert!(paths[1].ends_with("chk-000000000001"), "{paths:?}");
        assert!(broken.iter().all(|(_, why)| why.contains("a.blob")), "{e}");
        assert!(e.to_string().contains("none of the 2 checkpoints"), "{e}");
        assert_eq!(store.highest_epoch(), Some(2));
    }

    /// Rewrites the manifest of the checkpoint in `dir` with `edit`, its checksum made to
    /// match.
    fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        let body = text.lines().next().unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(body).unwrap();
        edit(&mut doc);
        let body = doc.to_string();
        let content = format!("{body}\ncrc32 {:08x}\n", crc32fast::hash(body.as_bytes()));
        std::fs::write(dir.join(MANIFEST), content).unwrap();
    }

    #[test]
    fn a_manifest_naming_files_outside_the_checkpoint_or_another_epoch_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        let p = store.write("p", &with_blobs(1, &["a"]), 0).unwrap();
        let outside = dir.path().join("outside.state");
        std::fs::write(&outside, b"pending").unwrap();
        type Edit<'a> = Box<dyn Fn(&mut serde_json::Value) + 'a>;
        let edits: [(&str, Edit); 4] = [
            (
                "state file",
                Box::new(|m| m["sinks"]["out#0"]["file"] = "../outside.state".into()),
            ),
            (
                "state file",
                Box::new(|m| {
                    m["sinks"]["out#0"]["file"] = outside.display().to_string().into();
                }),
            ),
            (
                "as a blob",
                Box::new(|m| m["operators"]["enrich#0"]["blobs"][0]["file"] = "../../a".into()),
            ),
            ("epoch", Box::new(|m| m["epoch"] = 7.into())),
        ];
        for (want, edit) in edits {
            let saved = std::fs::read(p.join(MANIFEST)).unwrap();
            rewrite_manifest(&p, edit);
            let e = store.latest().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            std::fs::write(p.join(MANIFEST), saved).unwrap();
        }
        assert_eq!(store.latest().unwrap().unwrap().manifest.epoch, 1);
        rewrite_manifest(&p, |m| m["epoch"] = (1u64 << 60).into());
        assert!(read(&p).unwrap_err().to_string().contains("beyond"));
    }

    #[test]
    fn an_unfinished_write_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        store.write("p", &checkpoint(1), 0).unwrap();
        write_dir(
            &dir.path().join(".chk-000000000002.tmp"),
            "p",
            &checkpoint(2),
            0,
        )
        .unwrap();
        assert_eq!(store.latest().unwrap().unwrap().manifest.epoch, 1);
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        assert!(!dir.path().join(".chk-000000000002.tmp").exists());
        assert_eq!(store.list().len(), 1);
    }
}
