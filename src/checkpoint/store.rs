//! The checkpoint directory: one directory per complete checkpoint, `chk-<epoch>`, holding a
//! `MANIFEST` (JSON: epoch, pipeline, source positions and watermark state, and for each
//! operator and sink the file of its state with its length and CRC-32) and the state files.
//!
//! Writing is atomic: everything goes into `.chk-<epoch>.tmp`, each file is fsynced, the
//! manifest last (its own CRC-32 on its last line), then the directory is renamed to
//! `chk-<epoch>` and the parent fsynced. A checkpoint directory therefore exists only whole;
//! reading still checks every checksum, and a broken checkpoint is skipped for the previous
//! complete one with a message naming what is wrong, never restored. The newest `retain`
//! checkpoints are kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError, SourceCheckpoint};
use crate::failpoint;
use crate::types::Epoch;

/// Version of the manifest layout.
const MANIFEST_FORMAT: u32 = 1;
const MANIFEST: &str = "MANIFEST";
const PREFIX: &str = "chk-";

/// A state file named by a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
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
    /// Bytes of the state files.
    pub fn state_bytes(&self) -> u64 {
        self.operators
            .values()
            .chain(self.sinks.values())
            .map(|f| f.bytes)
            .sum()
    }
}

/// A checkpoint read back and verified.
#[derive(Clone, Debug)]
pub struct Restored {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub operators: BTreeMap<String, Vec<u8>>,
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

/// A checkpoint directory with its retention.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    retain: usize,
}

impl CheckpointStore {
    /// Opens (creating) `dir`, keeping the newest `retain` checkpoints. Leftovers of a write
    /// that did not finish are removed.
    pub fn open(dir: &Path, retain: usize) -> Result<CheckpointStore, CheckpointError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CheckpointError::io(format!("cannot create {}", dir.display()), e))?;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| CheckpointError::io(format!("cannot read {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".chk-") && name.ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            retain: retain.max(1),
        })
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
        write_dir(&tmp, pipeline, cp, now_ms)?;
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

    /// Drops all but the newest `retain` checkpoints.
    fn prune(&self) {
        let epochs = self.epochs();
        for (_, path) in epochs.into_iter().skip(self.retain) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old checkpoint");
            }
        }
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
                let epoch = name.strip_prefix(PREFIX)?.parse().ok()?;
                Some((epoch, e.path()))
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

    /// The newest checkpoint that verifies; each broken one on the way is reported and
    /// skipped. `None` when there is none.
    pub fn latest(&self) -> Option<Restored> {
        let epochs = self.epochs();
        for (_, path) in epochs {
            match read(&path) {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a broken checkpoint for the previous one");
                }
            }
        }
        None
    }
}

/// Writes a checkpoint into `dir` (created; replaced if it exists), every file fsynced and
/// the manifest last. Savepoints are written with this too.
pub fn write_dir(
    dir: &Path,
    pipeline: &str,
    cp: &Checkpoint,
    now_ms: i64,
) -> Result<(), CheckpointError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| CheckpointError::io(format!("cannot remove {}", dir.display()), e))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CheckpointError::io(format!("cannot create {}", dir.display()), e))?;
    let files = |kind: &str, states: &BTreeMap<String, Vec<u8>>| {
        let mut out = BTreeMap::new();
        for (i, (label, bytes)) in states.iter().enumerate() {
            let file = format!("{kind}-{i:03}-{}.state", file_safe(label));
            write_synced(&dir.join(&file), bytes)?;
            out.insert(
                label.clone(),
                StateFile {
                    file,
                    bytes: bytes.len() as u64,
                    crc32: crc32fast::hash(bytes),
                },
            );
        }
        Ok::<_, CheckpointError>(out)
    };
    let operators = files("operator", &cp.operators)?;
    let sinks = files("sink", &cp.sinks)?;
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

/// Reads and verifies the checkpoint (or savepoint) in `dir`.
pub fn read(dir: &Path) -> Result<Restored, CheckpointError> {
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
    if manifest.format != MANIFEST_FORMAT {
        return Err(corrupt(format!(
            "manifest format {} (this build reads {MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    let load = |files: &BTreeMap<String, StateFile>| {
        let mut out = BTreeMap::new();
        for (label, f) in files {
            let bytes = std::fs::read(dir.join(&f.file))
                .map_err(|e| corrupt(format!("cannot read {} ({label}): {e}", f.file)))?;
            if bytes.len() as u64 != f.bytes {
                return Err(corrupt(format!(
                    "{} ({label}) has {} bytes, the manifest says {}",
                    f.file,
                    bytes.len(),
                    f.bytes
                )));
            }
            let crc = crc32fast::hash(&bytes);
            if crc != f.crc32 {
                return Err(corrupt(format!(
                    "{} ({label}) checksum mismatch (stored {:08x}, computed {crc:08x})",
                    f.file, f.crc32
                )));
            }
            out.insert(label.clone(), bytes);
        }
        Ok(out)
    };
    let operators = load(&manifest.operators)?;
    let sinks = load(&manifest.sinks)?;
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
    use crate::types::{Position, SourcePosition};

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
                    position: Position::File {
                        offset: 100 * epoch,
                        line: epoch,
                    },
                }],
                max_event_times: vec![Some(1_000 * epoch as i64)],
            },
        );
        cp.operators
            .insert("enrich#0".into(), vec![epoch as u8; 1000]);
        cp.sinks.insert("out#0".into(), b"pending".to_vec());
        cp
    }

    #[test]
    fn checkpoints_round_trip_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        assert!(store.latest().is_none());
        for e in 1..=4 {
            store.write("p", &checkpoint(e), 0).unwrap();
        }
        let listed: Vec<Epoch> = store.list().iter().map(|l| l.epoch).collect();
        assert_eq!(listed, vec![4, 3]);
        let r = store.latest().unwrap();
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
        assert_eq!(store.latest().unwrap().manifest.epoch, 1);
        assert_eq!(read(&p1).unwrap().manifest.epoch, 1);
        // A new checkpoint of a broken epoch replaces it.
        store.write("p", &checkpoint(3), 0).unwrap();
        assert_eq!(store.latest().unwrap().manifest.epoch, 3);
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
        assert_eq!(store.latest().unwrap().manifest.epoch, 1);
        let store = CheckpointStore::open(dir.path(), 5).unwrap();
        assert!(!dir.path().join(".chk-000000000002.tmp").exists());
        assert_eq!(store.list().len(), 1);
    }
}
