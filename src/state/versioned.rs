//! `VersionedTable`: the materialized state of one reference table — the latest row per key
//! plus a bounded history of earlier versions per key, for event-time (as-of) lookups.
//!
//! Every change carries a version (for CDC: commit LSN and ordinal in the transaction) and the
//! event time from which it is valid. A change whose version is not newer than the version
//! the table holds for its key is **stale** and ignored, so replays after a restart are
//! harmless. A delete is kept as a tombstone version (the key reads as absent from then on)
//! until retention drops it.
//!
//! Retention (`retention_ms`): `expire(watermark)` drops history entries that no lookup at or
//! after `watermark - retention_ms` can see any more — every version older than the newest
//! one valid at that cutoff — and forgets keys whose only remaining version is an expired
//! tombstone. Without retention only the latest version per key is kept, and `expire(t)`
//! forgets the tombstones of deletes valid from `t` or earlier (after that, a replay of an
//! older insert of the key would apply again: callers pass a cutoff older than any replay).
//!
//! Generic over the version type so that it does not depend on where versions come from.
//!
//! Layout, for lookups that touch as little memory as possible: a single-column key lives in
//! the hash table's slot (no heap box), and so does a key's only version (the common case,
//! and the only case without retention), so a lookup reads the slot and then the row. Rows
//! are stored compactly (postcard: varint integers, length-prefixed strings) and decoded on
//! lookup (`RowRef::values`).

use std::borrow::Borrow;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::types::{EventTime, Value};

type Map<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<ahash::AHasher>>;

/// One version of a key: valid from `valid_from`; `row: None` is a delete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Version<V> {
    version: V,
    valid_from: EventTime,
    /// The row's values, encoded.
    row: Option<Box<[u8]>>,
}

/// The values of a row up to this many columns decode without allocating.
pub type RowValues = SmallVec<[Value; 8]>;

/// A stored row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowRef<'a>(&'a [u8]);

impl RowRef<'_> {
    /// The row's values.
    pub fn values(&self) -> RowValues {
        // Rows are encoded by `apply` from values: they always decode.
        postcard::from_bytes(self.0).expect("a stored row decodes")
    }

    /// Bytes the row takes, encoded.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

fn encode(row: &[Value]) -> Box<[u8]> {
    postcard::to_allocvec(row)
        .expect("values always encode")
        .into_boxed_slice()
}

/// A key: one value inline, or several boxed. Hashes and compares as the slice of its
/// values, so maps keyed by it are probed with a plain `&[Value]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum RowKey {
    One(Value),
    Many(Box<[Value]>),
}

impl RowKey {
    fn of(values: &[Value]) -> RowKey {
        match values {
            [v] => RowKey::One(v.clone()),
            _ => RowKey::Many(values.into()),
        }
    }

    fn as_slice(&self) -> &[Value] {
        match self {
            RowKey::One(v) => std::slice::from_ref(v),
            RowKey::Many(vs) => vs,
        }
    }
}

impl Borrow<[Value]> for RowKey {
    fn borrow(&self) -> &[Value] {
        self.as_slice()
    }
}

impl PartialEq for RowKey {
    fn eq(&self, other: &RowKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for RowKey {}

impl Hash for RowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

/// The versions of one key, oldest first; one of them fits in place.
type Versions<V> = SmallVec<[Version<V>; 1]>;

/// What `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Inserted,
    Updated,
    Deleted,
    /// Not newer than the version held: ignored.
    Stale,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionedTable<V> {
    /// Per key, versions in increasing version order (the last is the latest).
    keys: Map<RowKey, Versions<V>>,
    retention_ms: Option<i64>,
    /// Keys whose latest version is a row (not a delete).
    live: usize,
}

impl<V> VersionedTable<V>
where
    V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
{
    /// A table keeping history for `retention_ms` of event time (`None`: latest only).
    pub fn new(retention_ms: Option<i64>) -> VersionedTable<V> {
        VersionedTable {
            keys: Map::default(),
            retention_ms,
            live: 0,
        }
    }

    /// Rows currently present (deleted keys excluded).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Applies a change: `row: None` deletes the key.
    pub fn apply(
        &mut self,
        key: &[Value],
        version: V,
        valid_from: EventTime,
        row: Option<&[Value]>,
    ) -> Applied {
        let deleting = row.is_none();
        let new = |row: Option<&[Value]>| Version {
            version,
            valid_from,
            row: row.map(encode),
        };
        match self.keys.get_mut(key) {
            None => {
                if deleting {
                    // A delete of an unknown key: remember it, so an older insert replayed
                    // later stays ignored.
                    self.keys
                        .insert(RowKey::of(key), smallvec::smallvec![new(None)]);
                    return Applied::Deleted;
                }
                self.keys
                    .insert(RowKey::of(key), smallvec::smallvec![new(row)]);
                self.live += 1;
                Applied::Inserted
            }
            Some(versions) => {
                let latest = versions.last().expect("a key has at least one version");
                if version <= latest.version {
                    return Applied::Stale;
                }
                let was_live = latest.row.is_some();
                if self.retention_ms.is_none() {
                    versions.clear();
                }
                versions.push(new(row));
                match (was_live, deleting) {
                    (true, true) => {
                        self.live -= 1;
                        Applied::Deleted
                    }
                    (true, false) => Applied::Updated,
                    (false, true) => Applied::Deleted,
                    (false, false) => {
                        self.live += 1;
                        Applied::Inserted
                    }
                }
            }
        }
    }

    /// The latest row of `key`, if present.
    pub fn get(&self, key: &[Value]) -> Option<RowRef<'_>> {
        self.keys.get(key)?.last()?.row.as_deref().map(RowRef)
    }

    /// The latest version held for `key` (also for a deleted key).
    pub fn version_of(&self, key: &[Value]) -> Option<V> {
        self.keys.get(key)?.last().map(|v| v.version)
    }

    /// The row of `key` valid at event time `t`: the newest version with `valid_from <= t`.
    pub fn get_as_of(&self, key: &[Value], t: EventTime) -> Option<RowRef<'_>> {
        let versions = self.keys.get(key)?;
        versions
            .iter()
            .rev()
            .find(|v| v.valid_from <= t)
            .and_then(|v| v.row.as_deref())
            .map(RowRef)
    }

    /// Drops history no lookup at or after `watermark - retention` can see.
    pub fn expire(&mut self, watermark: EventTime) {
        let Some(retention) = self.retention_ms else {
            self.keys.retain(|_, v| {
                v.last()
                    .is_some_and(|x| x.row.is_some() || x.valid_from > watermark)
            });
            return;
        };
        let cutoff = watermark.saturating_sub(retention);
        self.keys.retain(|_, versions| {
            // Keep the newest version valid at the cutoff and everything after it.
            let keep_from = versions
                .iter()
                .rposition(|v| v.valid_from <= cutoff)
                .unwrap_or(0);
            versions.drain(..keep_from);
            !(versions.len() == 1 && versions[0].row.is_none() && versions[0].valid_from <= cutoff)
        });
    }

    /// Keys held, deleted keys whose tombstone is kept included.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Every key held (also deleted keys whose tombstone is kept).
    pub fn keys(&self) -> impl Iterator<Item = &[Value]> {
        self.keys.keys().map(RowKey::as_slice)
    }

    /// Every row held, current and historical, with its key (tombstones excluded).
    pub fn rows(&self) -> impl Iterator<Item = (&[Value], RowRef<'_>)> {
        self.keys.iter().flat_map(|(k, versions)| {
            versions
                .iter()
                .filter_map(move |v| v.row.as_deref().map(|r| (k.as_slice(), RowRef(r))))
        })
    }

    /// Versions held in total (rows and tombstones, current and historical).
    pub fn versions_held(&self) -> usize {
        self.keys.values().map(|v| v.len()).sum()
    }

    /// An estimate of the memory used, in bytes: the hash table's slots (all allocated
    /// ones), boxed keys, spilled version lists, rows and their heap strings.
    pub fn estimated_bytes(&self) -> usize {
        let heap = |v: &Value| match v {
            Value::Str(s) if s.is_heap_allocated() => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Json(j) => j.len(),
            _ => 0,
        };
        let boxed = |vs: &[Value]| -> usize {
            std::mem::size_of_val(vs) + vs.iter().map(heap).sum::<usize>()
        };
        let slots = self.keys.capacity() * (std::mem::size_of::<(RowKey, Versions<V>)>() + 1);
        let contents: usize = self
            .keys
            .iter()
            .map(|(k, versions)| {
                let key = match k {
                    RowKey::One(v) => heap(v),
                    RowKey::Many(vs) => boxed(vs),
                };
                let spilled = if versions.spilled() {
                    versions.capacity() * std::mem::size_of::<Version<V>>()
                } else {
                    0
                };
                key + spilled
                    + versions
                        .iter()
                        .map(|v| v.row.as_deref().map_or(0, <[u8]>::len))
                        .sum::<usize>()
            })
            .sum();
        slots + contents
    }

    pub fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        postcard::to_allocvec(self).map_err(|e| StateError::Encode {
            operator: "versioned table".into(),
            reason: e.to_string(),
        })
    }

    pub fn restore(bytes: &[u8]) -> Result<VersionedTable<V>, StateError> {
        postcard::from_bytes(bytes).map_err(|e| StateError::Decode {
            operator: "versioned table".into(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn k(i: i64) -> Vec<Value> {
        vec![Value::Int(i)]
    }

    fn row(v: i64) -> Option<Vec<Value>> {
        Some(vec![Value::Int(v)])
    }

    fn got(r: Option<RowRef<'_>>) -> Option<Vec<Value>> {
        r.map(|r| r.values().to_vec())
    }

    #[test]
    fn stale_versions_are_ignored_and_deletes_honoured() {
        let mut t: VersionedTable<(u64, u64)> = VersionedTable::new(None);
        assert_eq!(
            t.apply(&k(1), (10, 0), 0, row(1).as_deref()),
            Applied::Inserted
        );
        assert_eq!(
            t.apply(&k(1), (10, 0), 0, row(1).as_deref()),
            Applied::Stale
        );
        assert_eq!(
            t.apply(&k(1), (20, 0), 5, row(2).as_deref()),
            Applied::Updated
        );
        assert_eq!(
            t.apply(&k(1), (15, 0), 3, row(9).as_deref()),
            Applied::Stale
        );
        assert_eq!(got(t.get(&k(1))), Some(vec![Value::Int(2)]));
        // A primary-key change at one LSN: delete old key, insert new key, by ordinal.
        assert_eq!(t.apply(&k(1), (30, 0), 9, None), Applied::Deleted);
        assert_eq!(
            t.apply(&k(2), (30, 1), 9, row(2).as_deref()),
            Applied::Inserted
        );
        assert_eq!(got(t.get(&k(1))), None);
        assert_eq!(t.len(), 1);
        // A replayed older insert of the deleted key stays ignored.
        assert_eq!(
            t.apply(&k(1), (20, 0), 5, row(2).as_deref()),
            Applied::Stale
        );
        t.expire(100);
        assert_eq!(t.version_of(&k(1)), None, "tombstone dropped");
    }

    #[test]
    fn as_of_lookups_follow_validity_and_retention() {
        let mut t: VersionedTable<u64> = VersionedTable::new(Some(1_000));
        t.apply(&k(1), 1, 100, row(1).as_deref());
        t.apply(&k(1), 2, 200, row(2).as_deref());
        t.apply(&k(1), 3, 300, None);
        assert_eq!(got(t.get_as_of(&k(1), 50)), None);
        assert_eq!(got(t.get_as_of(&k(1), 150)), Some(vec![Value::Int(1)]));
        assert_eq!(got(t.get_as_of(&k(1), 250)), Some(vec![Value::Int(2)]));
        assert_eq!(got(t.get_as_of(&k(1), 350)), None);
        // At watermark 1250 the cutoff is 250: the version valid then (2) must stay.
        t.expire(1_250);
        assert_eq!(got(t.get_as_of(&k(1), 250)), Some(vec![Value::Int(2)]));
        assert_eq!(t.versions_held(), 2);
        t.expire(5_000);
        assert_eq!(t.versions_held(), 0, "expired tombstone forgotten");
    }

    #[test]
    fn snapshot_restores_the_same_table() {
        let mut t: VersionedTable<u64> = VersionedTable::new(Some(10));
        for i in 0..100 {
            t.apply(
                &k(i % 7),
                i as u64,
                i,
                if i % 5 == 0 { None } else { row(i) }.as_deref(),
            );
        }
        let r = VersionedTable::<u64>::restore(&t.snapshot().unwrap()).unwrap();
        for key in 0..7 {
            assert_eq!(got(r.get(&k(key))), got(t.get(&k(key))));
            assert_eq!(got(r.get_as_of(&k(key), 50)), got(t.get_as_of(&k(key), 50)));
        }
        assert_eq!(r.len(), t.len());
    }

    proptest! {
        /// Oracle: a random change history delivered in commit order with random replays of
        /// earlier changes gives, per key, the row of its highest version (absent if that is
        /// a delete), and as-of lookups give the newest version valid at the time.
        #[test]
        fn replays_do_not_change_the_table(
            changes in prop::collection::vec((0i64..8, 0i64..100, prop::bool::weighted(0.2)), 1..120),
            replays in prop::collection::vec((0usize..1000, 0usize..120), 0..60),
        ) {
            let history: Vec<(i64, u64, i64, Option<i64>)> = changes
                .iter()
                .enumerate()
                .map(|(i, (key, v, del))| (*key, i as u64 + 1, i as i64 * 10, (!del).then_some(*v)))
                .collect();
            // Delivery: the history in order, with earlier changes re-sent at random points.
            let mut delivery = Vec::new();
            for (i, c) in history.iter().enumerate() {
                delivery.push(*c);
                for (at, which) in &replays {
                    if at % history.len() == i {
                        delivery.push(history[which % (i + 1)]);
                    }
                }
            }
            let mut t: VersionedTable<u64> = VersionedTable::new(Some(i64::MAX / 2));
            for (key, version, valid_from, value) in &delivery {
                t.apply(&k(*key), *version, *valid_from, value.and_then(row).as_deref());
            }
            let mut latest: BTreeMap<i64, Option<i64>> = BTreeMap::new();
            for (key, _, _, value) in &history {
                latest.insert(*key, *value);
            }
            for key in 0..8 {
                let expected = latest.get(&key).copied().flatten().map(|v| vec![Value::Int(v)]);
                prop_assert_eq!(got(t.get(&k(key))), expected);
                for probe in (0..history.len() as i64 * 10).step_by(7) {
                    let want = history
                        .iter()
                        .rev()
                        .find(|(kk, _, from, _)| *kk == key && *from <= probe)
                        .and_then(|(_, _, _, v)| *v)
                        .map(|v| vec![Value::Int(v)]);
                    prop_assert_eq!(got(t.get_as_of(&k(key), probe)), want);
                }
            }
            prop_assert_eq!(t.len(), latest.values().filter(|v| v.is_some()).count());
        }
    }
}
