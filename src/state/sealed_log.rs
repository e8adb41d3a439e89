//! `SealedLog`: a growing buffer's items as checkpoints hold them, in immutable segments.
//! Each `seal` writes the items added since the last one as one segment (a `Blob`), which
//! later checkpoints share, so a buffer that fills for minutes (an enrichment gate waiting
//! for a reference snapshot) is not written again at every barrier. The log does not keep
//! the items themselves: its owner does, and seals those from `sealed()` on.
//!
//! A segment is the postcard encoding of a sequence of items, named `<name>-<unique id>`.
//! Segments up to `SEGMENT_IN_MEMORY` bytes stay in memory (`Blob::Bytes`); larger ones are
//! written to a file and synced (`Blob::File`), in a temporary directory
//! (`watershed-<name>-…`) created on first need, so memory stays bounded by what the owner
//! keeps. `clear` forgets the segments once the owner has given its items away; their
//! directory stays until the log is dropped, because a checkpoint still being written may
//! name its files. This is the only file the log touches; it reads nothing but blobs given
//! to `restore`.

use std::io::Write;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::arena::unique_id;
use crate::state::{Blob, Blobs};

/// Segments up to this size stay in memory; larger ones go to a file.
pub const SEGMENT_IN_MEMORY: usize = 64 << 10;

/// Items of type `T` sealed into segments; see the module documentation.
pub struct SealedLog<T> {
    /// Names the segments, their directory and errors (`gate`).
    name: &'static str,
    /// Oldest first.
    segments: Vec<(String, Blob)>,
    /// Items the segments hold.
    sealed: usize,
    /// Where segments larger than `SEGMENT_IN_MEMORY` go (created on first need).
    dir: Option<tempfile::TempDir>,
    /// Directories of segments `clear` forgot, kept until the log is dropped.
    retired: Vec<tempfile::TempDir>,
    _items: PhantomData<fn(T) -> T>,
}

/// A segment `restore` cannot use; the checkpoint holding it cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SealedLogError {
    #[error("the checkpoint lacks {name} segment {id}")]
    Missing { name: &'static str, id: String },
    #[error("cannot read {name} segment {id}: {source}")]
    Unreadable {
        name: &'static str,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(#[from] postcard::Error),
    /// Items that decode but do not fit their owner.
    #[error("{0}")]
    Misshapen(String),
}

impl<T: Serialize + DeserializeOwned> SealedLog<T> {
    /// An empty log; `name` names its segments and their directory.
    pub fn new(name: &'static str) -> SealedLog<T> {
        SealedLog {
            name,
            segments: Vec::new(),
            sealed: 0,
            dir: None,
            retired: Vec::new(),
            _items: PhantomData,
        }
    }

    /// Items the segments hold: the owner's items from this one on are not sealed yet.
    pub fn sealed(&self) -> usize {
        self.sealed
    }

    /// Seals `items` (the owner's newest, not yet sealed) into a segment; nothing if empty.
    pub fn seal(&mut self, items: &[T]) -> std::io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let bytes = postcard::to_allocvec(items).map_err(std::io::Error::other)?;
        let id = unique_id(self.name);
        let blob = if bytes.len() <= SEGMENT_IN_MEMORY {
            Blob::Bytes(Arc::from(bytes))
        } else {
            if self.dir.is_none() {
                self.dir = Some(
                    tempfile::Builder::new()
                        .prefix(&format!("watershed-{}-", self.name))
                        .tempdir()?,
                );
            }
            let path = self.dir.as_ref().expect("created").path().join(&id);
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Blob::File {
                path,
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(&bytes),
            }
        };
        self.segments.push((id, blob));
        self.sealed += items.len();
        Ok(())
    }

    /// Puts every segment into `blobs` and returns their ids, oldest first (what the owner's
    /// image names).
    pub fn export(&self, blobs: &mut Blobs) -> Vec<String> {
        for (id, blob) in &self.segments {
            blobs.insert(id.clone(), blob.clone());
        }
        self.segments.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Forgets every segment (the owner has given its items away); their files stay until
    /// the log is dropped.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.sealed = 0;
        self.retired.extend(self.dir.take());
    }

    /// The log `export` described by `ids`, with its segments from `blobs`; each item is
    /// handed to `each` in order, one segment decoded at a time.
    pub fn restore(
        name: &'static str,
        ids: &[String],
        blobs: &Blobs,
        mut each: impl FnMut(T),
    ) -> Result<SealedLog<T>, SealedLogError> {
        let mut log = SealedLog::new(name);
        for id in ids {
            let blob = blobs.get(id).ok_or_else(|| SealedLogError::Missing {
                name,
                id: id.clone(),
            })?;
            let bytes = blob.load().map_err(|source| SealedLogError::Unreadable {
                name,
                id: id.clone(),
                source,
            })?;
            let items: Vec<T> = postcard::from_bytes(&bytes)?;
            log.sealed += items.len();
            items.into_iter().for_each(&mut each);
            log.segments.push((id.clone(), blob.clone()));
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Item = (u32, String);

    /// Items of about `len` bytes each.
    fn items(from: u32, n: u32, len: usize) -> Vec<Item> {
        (from..from + n).map(|i| (i, "x".repeat(len))).collect()
    }

    fn restored(ids: &[String], blobs: &Blobs) -> (SealedLog<Item>, Vec<Item>) {
        let mut got = Vec::new();
        let log = SealedLog::restore("test", ids, blobs, |item| got.push(item)).unwrap();
        (log, got)
    }

    #[test]
    fn small_segments_stay_in_memory_and_restore_in_order() {
        let mut log: SealedLog<Item> = SealedLog::new("test");
        log.seal(&[]).unwrap();
        assert_eq!(log.sealed(), 0);
        let mut blobs = Blobs::new();
        assert!(
            log.export(&mut blobs).is_empty(),
            "an empty seal adds no segment"
        );
        log.seal(&items(0, 3, 10)).unwrap();
        log.seal(&items(3, 2, 10)).unwrap();
        assert_eq!(log.sealed(), 5);
        let ids = log.export(&mut blobs);
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|id| id.starts_with("test-")));
        assert!(
            blobs.values().all(|b| matches!(b, Blob::Bytes(_))),
            "{blobs:?}"
        );
        assert!(log.dir.is_none(), "no directory without a large segment");
        let (back, got) = restored(&ids, &blobs);
        assert_eq!(got, items(0, 5, 10));
        assert_eq!(back.sealed(), 5);
        let mut again = Blobs::new();
        assert_eq!(
            back.export(&mut again),
            ids,
            "a restored log names the same segments"
        );
        assert_eq!(again, blobs);
    }

    #[test]
    fn large_segments_go_to_synced_files() {
        let mut log: SealedLog<Item> = SealedLog::new("test");
        let big = items(0, 2, SEGMENT_IN_MEMORY);
        log.seal(&big).unwrap();
        log.seal(&items(2, 1, 10)).unwrap();
        let mut blobs = Blobs::new();
        let ids = log.export(&mut blobs);
        let Blob::File { path, bytes, crc32 } = &blobs[&ids[0]] else {
            panic!("a segment over {SEGMENT_IN_MEMORY} bytes is a file");
        };
        let on_disk = std::fs::read(path).unwrap();
        assert_eq!(on_disk.len() as u64, *bytes);
        assert_eq!(crc32fast::hash(&on_disk), *crc32);
        let dir = path.parent().unwrap();
        assert!(
            dir.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("watershed-test-")
        );
        assert!(matches!(blobs[&ids[1]], Blob::Bytes(_)));
        let (_, got) = restored(&ids, &blobs);
        assert_eq!(got[..2], big[..]);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn cleared_segments_keep_their_files_until_the_log_is_dropped() {
        let mut log: SealedLog<Item> = SealedLog::new("test");
        log.seal(&items(0, 2, SEGMENT_IN_MEMORY)).unwrap();
        let mut blobs = Blobs::new();
        let ids = log.export(&mut blobs);
        let Blob::File { path: first, .. } = blobs[&ids[0]].clone() else {
            panic!("a file segment");
        };
        log.clear();
        assert_eq!(log.sealed(), 0);
        assert!(log.export(&mut Blobs::new()).is_empty());
        assert!(
            first.exists(),
            "a checkpoint being written may still name it"
        );
        // Sealing again after a clear starts a new directory.
        log.seal(&items(10, 2, SEGMENT_IN_MEMORY)).unwrap();
        let mut blobs = Blobs::new();
        let ids = log.export(&mut blobs);
        let Blob::File { path: second, .. } = blobs[&ids[0]].clone() else {
            panic!("a file segment");
        };
        assert_ne!(first.parent(), second.parent());
        assert_eq!(log.sealed(), 2);
        drop(log);
        assert!(!first.exists() && !second.exists(), "removed with the log");
    }

    #[test]
    fn restore_names_the_segment_it_cannot_use() {
        let mut log: SealedLog<Item> = SealedLog::new("gate");
        log.seal(&items(0, 1, 1)).unwrap();
        let mut blobs = Blobs::new();
        let mut ids = log.export(&mut blobs);
        let restore = |ids: &[String], blobs: &Blobs| {
            SealedLog::<Item>::restore("gate", ids, blobs, |_| {})
                .err()
                .unwrap()
                .to_string()
        };
        ids.push("gate-missing".into());
        assert_eq!(
            restore(&ids, &blobs),
            "the checkpoint lacks gate segment gate-missing"
        );
        blobs.insert(
            "gate-missing".into(),
            Blob::File {
                path: "/nonexistent/watershed/segment".into(),
                bytes: 1,
                crc32: 0,
            },
        );
        assert!(
            restore(&ids, &blobs).starts_with("cannot read gate segment gate-missing: "),
            "{}",
            restore(&ids, &blobs)
        );
        blobs.insert("gate-missing".into(), Blob::Bytes(Arc::from(vec![9u8])));
        assert!(matches!(
            SealedLog::<Item>::restore("gate", &ids, &blobs, |_| {}),
            Err(SealedLogError::Corrupt(_))
        ));
    }
}
