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

    /// Every version held, key by key and oldest first within a key: the key, the version,
    /// the time it is valid from and its row (`None`: a delete).
    pub fn for_each_version(
        &self,
        f: impl FnMut(&[Value], V, EventTime, Option<&[Value]>),
    ) -> Result<(), StateError> {
        match self {
            ReferenceTable::Memory(t) => {
                t.for_each_version(f);
                Ok(())
            }
            ReferenceTable::Disk(t) => t.for_each_version(f),
        }
    }

    /// A new table, kept where `backend` says, with every version of this one (key, version,
    /// validity and what `expire` was given unchanged) and each row rewritten by `map`: how
    /// state written with other columns is brought to the columns of now.
    pub fn map_rows(
        &self,
        backend: &StateBackend,
        mut map: impl FnMut(&[Value]) -> Vec<Value>,
    ) -> Result<ReferenceTable<V>, StateError> {
        let (retention_ms, expired_at) = match self {
            ReferenceTable::Memory(t) => (t.retention_ms(), t.expired_at()),
            ReferenceTable::Disk(t) => (t.retention_ms(), t.expired_at()),
        };
        let mut mapped = ReferenceTable::new(retention_ms, backend)?;
        self.for_each_version(|key, version, valid_from, row| {
            let row = row.map(&mut map);
            mapped.apply(key, version, valid_from, row.as_deref());
        })?;
        match &mut mapped {
            ReferenceTable::Memory(t) => t.set_expired_at(expired_at),
            ReferenceTable::Disk(t) => t.set_expired_at(expired_at),
        }
        mapped.shrink_to_fit();
        Ok(mapped)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<StateBackend> {
        vec![
            StateBackend::Memory,
            StateBackend::Disk(DiskOptions {
                dir: None,
                cache_rows: 2,
            }),
        ]
    }

    /// (key, version, valid from, row) of every version of a table.
    type Version = (Vec<Value>, u64, EventTime, Option<Vec<Value>>);

    fn versions(t: &ReferenceTable<u64>) -> Vec<Version> {
        let mut out = Vec::new();
        t.for_each_version(|k, v, from, row| {
            out.push((k.to_vec(), v, from, row.map(<[Value]>::to_vec)))
        })
        .unwrap();
        out.sort_by_key(|(k, v, ..)| (format!("{k:?}"), *v));
        out
    }

    /// Rows rewritten (here: the two columns swapped, a null one added) keep their keys,
    /// versions, validity and deletes, in memory and on disk.
    #[test]
    fn mapped_rows_keep_every_version_and_its_validity() {
        for backend in backends() {
            for retention in [None, Some(10_000)] {
                let mut t: ReferenceTable<u64> = ReferenceTable::new(retention, &backend).unwrap();
                let r = |a: i64, b: &str| Some(vec![Value::Int(a), Value::from(b)]);
                for (key, version, from, row) in [
                    (1, 1, EventTime::MIN, r(1, "a")),
                    (2, 2, EventTime::MIN, r(2, "b")),
                    (3, 3, EventTime::MIN, r(3, "c")),
                    (1, 4, 100, r(1, "a2")),
                    (3, 5, 200, None),
                    (4, 6, 300, None),
                ] {
                    t.apply(&[Value::Int(key)], version, from, row.as_deref());
                }
                t.expire(50);
                let swap = |row: &[Value]| vec![row[1].clone(), row[0].clone(), Value::Null];
                let mapped = t.map_rows(&backend, swap).unwrap();
                let expected: Vec<_> = versions(&t)
                    .into_iter()
                    .map(|(k, v, from, row)| (k, v, from, row.map(|r| swap(&r))))
                    .collect();
                assert_eq!(versions(&mapped), expected, "{backend:?} {retention:?}");
                assert_eq!((mapped.len(), mapped.key_count()), (t.len(), t.key_count()));
                let mut mapped = mapped;
                let key = [Value::Int(1)];
                mapped.warm(std::iter::once(&key[..]));
                let at = |t: EventTime| mapped.get_as_of(&key, t).map(|r| r.values()[0].clone());
                assert_eq!(at(150), Some(Value::from("a2")));
                let before = retention.map(|_| Value::from("a"));
                assert_eq!(at(50), before, "{backend:?} {retention:?}");
            }
        }
    }
}
