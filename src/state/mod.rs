//! Operator state that outlives a batch: materialized reference tables (`VersionedTable`,
//! over a chunked `Arena`) and buffers that overflow to a local file (`SpillQueue`). State
//! structures serialize themselves for checkpoints (`StateImage`); large immutable parts
//! (an arena's frozen chunks) travel by reference as `Blobs`, so the checkpoint store writes
//! each once and shares it between checkpoints. Only the spill queue touches a file (its own,
//! anonymous).

pub mod arena;
pub mod spill;
pub mod versioned;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use spill::SpillQueue;
pub use versioned::{Applied, VersionedTable};

/// Immutable parts of a snapshot by id. An id always names the same bytes, so a checkpoint
/// store that has written a blob once need not write it again.
pub type Blobs = BTreeMap<String, Arc<[u8]>>;

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
        self.bytes.len() + self.blobs.values().map(|b| b.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
