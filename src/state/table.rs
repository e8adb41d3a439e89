//! `ReferenceTable`: a materialized reference table kept where the pipeline's `state.backend`
//! says: in memory (`VersionedTable`, the default: every row in RAM, the fastest lookups) or
//! on local disk (`DiskTable`: rows in an embedded LSM store behind a bounded cache, for
//! tables larger than memory).
//!
//! Both answer every lookup the same way. A disk table answers only for keys `warm`ed since
//! its last change of cache, so callers warm the keys of what they are about to look up (a
//! no-op in memory).

use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::state::disk::{DiskOptions, DiskTable};
use crate::state::versioned::{Located, RowRef, Shape};
use crate::state::{Applied, Blobs, VersionedTable};
use crate::types::{EventTime, Value};

/// Where reference tables are kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum StateBackend {
    #[default]
    Memory,
    Disk(DiskOptions),
}

impl StateBackend {
    pub fn name(&self) -> &'static str {
        match self {
            StateBackend::Memory => "memory",
            StateBackend::Disk(_) => "disk",
        }
    }
}

pub enum ReferenceTable<V> {
    Memory(VersionedTable<V>),
    Disk(Box<DiskTable<V>>),
}

/// First byte of a snapshot: which kind of table wrote it.
const MEMORY_TAG: u8 = 1;
const DISK_TAG: u8 = 2;

impl<V> ReferenceTable<V>
where
    V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
{
    pub fn new(
        retention_ms: Option<i64>,
        backend: &StateBackend,
    ) -> Result<ReferenceTable<V>, StateError> {
        Ok(match backend {
            StateBackend::Memory => ReferenceTable::Memory(VersionedTable::new(retention_ms)),
            StateBackend::Disk(opts) => {
                ReferenceTable::Disk(Box::new(DiskTable::new(retention_ms, opts)?))
            }
        })
    }

    /// Makes the next reads of `keys` answer (a disk table loads what its cache lacks).
    pub fn warm<'k>(&mut self, keys: impl ExactSizeIterator<Item = &'k [Value]>) {
        if let ReferenceTable::Disk(t) = self {
            t.warm(keys);
        }
    }

    pub fn apply(
        &mut self,
        key: &[Value],
        version: V,
        valid_from: EventTime,
        row: Option<&[Value]>,
    ) -> Applied {
        match self {
            ReferenceTable::Memory(t) => t.apply(key, version, valid_from, row),
            ReferenceTable::Disk(t) => t.apply(key, version, valid_from, row),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ReferenceTable::Memory(t) => t.len(),
            ReferenceTable::Disk(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn key_count(&self) -> usize {
        match self {
            ReferenceTable::Memory(t) => t.key_count(),
            ReferenceTable::Disk(t) => t.key_count(),
        }
    }

    pub fn get(&self, key: &[Value]) -> Option<RowRef<'_>> {
        match self {
            ReferenceTable::Memory(t) => t.get(key),
            ReferenceTable::Disk(t) => t.get(key),
        }
    }

    pub fn get_as_of(&self, key: &[Value], at: EventTime) -> Option<RowRef<'_>> {
        match self {
            ReferenceTable::Memory(t) => t.get_as_of(key, at),
            ReferenceTable::Disk(t) => t.get_as_of(key, at),
        }
    }

    pub fn version_of(&self, key: &[Value]) -> Option<V> {
        match self {
            ReferenceTable::Memory(t) => t.version_of(key),
            ReferenceTable::Disk(t) => t.version_of(key),
        }
    }

    pub fn locate_many<'k>(
        &self,
        keys: impl Iterator<Item = &'k [Value]>,
        out: &mut Vec<Option<Located>>,
    ) {
        match self {
            ReferenceTable::Memory(t) => t.locate_many(keys, out),
            ReferenceTable::Disk(t) => t.locate_many(keys, out),
        }
    }

    pub fn row_at(&self, at: Located) -> Option<RowRef<'_>> {
        match self {
            ReferenceTable::Memory(t) => t.row_at(at),
            ReferenceTable::Disk(t) => t.row_at(at),
        }
    }

    pub fn expire(&mut self, watermark: EventTime) {
        match self {
            ReferenceTable::Memory(t) => t.expire(watermark),
            ReferenceTable::Disk(t) => t.expire(watermark),
        }
    }

    pub fn shrink_to_fit(&mut self) {
        match self {
            ReferenceTable::Memory(t) => t.shrink_to_fit(),
            ReferenceTable::Disk(t) => t.shrink_to_fit(),
        }
    }

    /// Memory used.
    pub fn estimated_bytes(&self) -> usize {
        match self {
            ReferenceTable::Memory(t) => t.estimated_bytes(),
            ReferenceTable::Disk(t) => t.estimated_bytes(),
        }
    }

    /// Every key held (deleted keys whose tombstone is kept included).
    pub fn keys(&self) -> Vec<Box<[Value]>> {
        match self {
            ReferenceTable::Memory(t) => t.keys(),
            ReferenceTable::Disk(t) => t.keys(),
        }
    }

    /// Every row held, current and historical, with its key.
    pub fn for_each_row(&self, mut f: impl FnMut(&[Value], &[Value])) {
        match self {
            ReferenceTable::Memory(t) => {
                for (key, row) in t.rows() {
                    f(&key, &row.values());
                }
            }
            ReferenceTable::Disk(t) => t.for_each_row(f),
        }
    }

    pub fn snapshot(&self, blobs: &mut Blobs) -> Result<Vec<u8>, StateError> {
        let (tag, mut body) = match self {
            ReferenceTable::Memory(t) => (MEMORY_TAG, t.snapshot(blobs)?),
            ReferenceTable::Disk(t) => (DISK_TAG, t.snapshot(blobs)?),
        };
        body.insert(0, tag);
        Ok(body)
    }

    /// The table a snapshot holds, kept where `backend` says; it must be where the snapshot
    /// was taken, and its keys and rows of `shape`.
    pub fn restore(
        bytes: &[u8],
        blobs: &Blobs,
        backend: &StateBackend,
        shape: Shape,
    ) -> Result<ReferenceTable<V>, StateError> {
        let fail = |reason: String| StateError::decode("reference table", reason);
        let (tag, body) = bytes
            .split_first()
            .ok_or_else(|| fail("the snapshot is empty".into()))?;
        let saved = match *tag {
            MEMORY_TAG => "memory",
            DISK_TAG => "disk",
            other => return Err(fail(format!("unknown table kind {other}"))),
        };
        match backend {
            StateBackend::Memory if *tag == MEMORY_TAG => Ok(ReferenceTable::Memory(
                VersionedTable::restore(body, blobs, shape)?,
            )),
            StateBackend::Disk(opts) if *tag == DISK_TAG => Ok(ReferenceTable::Disk(Box::new(
                DiskTable::restore(body, blobs, opts, shape)?,
            ))),
            _ => Err(fail(format!(
                "the checkpoint keeps this table in {saved}, the pipeline's state.backend is now {}: run with state.backend {saved} to restore it",
                backend.name()
            ))),
        }
    }
}
