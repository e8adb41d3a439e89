//! Operator state that outlives a batch: materialized reference tables (`ReferenceTable`: a
//! `VersionedTable` in memory over a chunked `Arena`, or a `DiskTable` in an embedded LSM
//! store), buffers that overflow to a local file (`SpillQueue`), and a buffer's items sealed
//! into checkpoint segments (`SealedLog`). State structures serialize themselves for
//! checkpoints (`StateImage`); large immutable parts (an arena's frozen chunks, a disk
//! table's change log segments, sealed segments) travel by reference as `Blobs`, so the
//! checkpoint store writes each once and shares it between checkpoints. This is where the
//! files of operator state are: the disk table's working copy, the spill queue's anonymous
//! file and the sealed log's large segments, each in its own temporary place; operators do
//! no I/O themselves.

pub mod arena;
pub mod disk;
pub mod sealed_log;
pub mod spill;
pub mod table;
pub mod versioned;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use sealed_log::SealedLog;
pub use spill::SpillQueue;
pub use table::{ReferenceTable, StateBackend};
pub use versioned::{Applied, Shape, VersionedTable};

/// Immutable parts of a snapshot by id. An id always names the same bytes, so a checkpoint
/// store that has written a blob once need not write it again.
pub type Blobs = BTreeMap<String, Blob>;

/// One immutable part of a snapshot: bytes in memory (an arena's frozen chunk, a small sealed
/// log segment), or a sealed file that nothing writes any more (a disk table's change log
/// segment, a large sealed log segment, or a blob read back from a checkpoint, checked but
/// not loaded).
#[derive(Clone, Debug)]
pub enum Blob {
    Bytes(Arc<[u8]>),
    File {
        path: PathBuf,
        bytes: u64,
        crc32: u32,
    },
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Blob::Bytes(b) => b.len() as u64,
            Blob::File { bytes, .. } => *bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blob's bytes in memory (a file is read).
    pub fn load(&self) -> std::io::Result<Arc<[u8]>> {
        match self {
            Blob::Bytes(b) => Ok(Arc::clone(b)),
            Blob::File { path, .. } => Ok(Arc::from(std::fs::read(path)?)),
        }
    }
}

/// Blobs are equal when their bytes are (a test's question).
impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        match (self.load(), other.load()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// An operator's snapshot: its own encoding plus the blobs that encoding refers to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateImage {
    pub bytes: Vec<u8>,
    pub blobs: Blobs,
}

impl StateImage {
    /// A snapshot without blobs.
    pub fn inline(bytes: Vec<u8>) -> StateImage {
        StateImage {
            bytes,
            blobs: Blobs::new(),
        }
    }

    /// Bytes in all, blobs included.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.blobs.values().map(|b| b.len() as usize).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
