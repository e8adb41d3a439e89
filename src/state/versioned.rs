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
//! # Layout
//! Versions are records appended to one byte arena; a hash table of 4-byte offsets points at
//! each key's latest record, and a record points at the key's previous one (history). A record
//! is `prev + 1 (0: none), meta length, key length, row length (varints) | meta | key | row`,
//! where meta is `(version, valid_from)` (`None` for the beginning of time, as snapshot rows
//! are), and key and row are postcard-encoded values (a row of length 0 is a delete). A lookup reads a few bytes of the hash table and one record; a row is
//! decoded only when it is read (`RowRef::values`). Superseded records are garbage until the
//! arena is compacted (when they are half of it, and at every `expire`).
//!
//! The arena is trusted by lookups: what `apply` writes is well formed, and `restore` checks
//! every record of a snapshot (lengths, version, key and row of the table's `Shape`, the link
//! to the key's previous version) before the table uses it, so a malformed snapshot is an
//! error at restore, never a panic at a later lookup.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::StateError;
use crate::state::Blobs;
use crate::state::arena::{Arena, ArenaImage};
use crate::types::{EventTime, Value};

/// The values of a row up to this many columns decode without allocating.
pub type RowValues = SmallVec<[Value; 8]>;

/// A stored row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowRef<'a>(&'a [u8]);

impl<'a> RowRef<'a> {
    /// The row's values.
    pub fn values(&self) -> RowValues {
        // Rows are encoded by `apply` from values: they always decode.
        postcard::from_bytes(self.0).expect("a stored row decodes")
    }

    /// The row's values one by one, decoded as they are read.
    pub fn iter(&self) -> RowIter<'a> {
        let mut at = 0;
        let left = get_varint(self.0, &mut at);
        RowIter {
            rest: &self.0[at..],
            left,
        }
    }

    /// Bytes the row takes, encoded.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

/// Where a key's latest record is, as `VersionedTable::locate_many` found it. Valid until the
/// table next changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located(u32);

/// Asks the CPU to start loading `bytes[at..]` into the cache; a hint only.
fn prefetch(bytes: &[u8], at: usize) {
    if at < bytes.len() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing and cannot fault; the pointer is in bounds anyway.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast::<i8>());
        }
    }
}

/// The values of a stored row, from `RowRef::iter`.
pub struct RowIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl Iterator for RowIter<'_> {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Rows are encoded by `apply` from values: they always decode.
        let (v, rest) = postcard::take_from_bytes(self.rest).expect("a stored row decodes");
        self.rest = rest;
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// What `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Inserted,
    Updated,
    Deleted,
    /// Not newer than the version held: ignored.
    Stale,
}

/// No previous record.
const NONE: u32 = u32::MAX;

/// Appends `v` as a LEB128 varint (as postcard writes lengths).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The LEB128 varint at `bytes[*at..]`, moving `at` past it; `None` if it is cut short or
/// does not fit a `usize`.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    let mut shift = 0u32;
    loop {
        let b = *bytes.get(*at)?;
        *at += 1;
        let bits = usize::from(b & 0x7f);
        if shift >= usize::BITS || (bits << shift) >> shift != bits {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

/// The varint at the start of `bytes` and the bytes after it; `None` if it does not decode.
pub(crate) fn take_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut at = 0;
    let v = read_varint(bytes, &mut at)?;
    Some((v, &bytes[at..]))
}

/// `read_varint` of bytes this table wrote or checked (`check_body`).
fn get_varint(bytes: &[u8], at: &mut usize) -> usize {
    read_varint(bytes, at).expect("stored bytes were checked")
}

/// One record, parsed (borrowing the arena).
struct Record<'a> {
    prev: u32,
    /// The record's bytes after `prev`.
    body: &'a [u8],
    meta: &'a [u8],
    /// The key's encoded values (without the count), stored apart or as the row's start.
    key_body: &'a [u8],
    /// Empty for a delete.
    row: &'a [u8],
    /// Bytes the record takes in the arena.
    len: usize,
}

impl Record<'_> {
    /// The key's values.
    fn key_values(&self) -> RowValues {
        let mut out = RowValues::new();
        let mut rest = self.key_body;
        while !rest.is_empty() {
            let (v, tail): (Value, &[u8]) =
                postcard::take_from_bytes(rest).expect("a stored key decodes");
            out.push(v);
            rest = tail;
        }
        out
    }
}

/// Bytes of the varint at the start of `bytes`.
fn varint_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(bytes.len(), |i| i + 1)
}

/// The record at `offset`, which `apply`, `import_key` or `restore` (after `check_body`)
/// put there.
fn record(arena: &Arena, offset: u32) -> Record<'_> {
    let (bytes, start) = arena.at(offset);
    parse_record(bytes, start).expect("stored records were checked")
}

/// The record starting at `bytes[start..]`, if its lengths fit in `bytes`; its contents are
/// not decoded (see `check_record`).
fn parse_record(bytes: &[u8], start: usize) -> Option<Record<'_>> {
    let mut at = start;
    let prev = match read_varint(bytes, &mut at)? {
        0 => NONE,
        p => u32::try_from(p - 1).ok()?,
    };
    let (body, len) = parse_body(bytes, at)?;
    Some(Record {
        prev,
        body: body.bytes,
        meta: body.meta,
        key_body: body.key_body,
        row: body.row,
        len: at - start + len,
    })
}

/// A record's bytes after `prev`, parsed.
struct Body<'a> {
    bytes: &'a [u8],
    meta: &'a [u8],
    /// The key as stored apart (its count and values); empty when it is the row's start.
    key: &'a [u8],
    key_in_row: bool,
    key_body: &'a [u8],
    row: &'a [u8],
}

/// The body starting at `bytes[start..]` and its length, if its lengths fit in `bytes`.
fn parse_body(bytes: &[u8], start: usize) -> Option<(Body<'_>, usize)> {
    let mut at = start;
    let meta_len = read_varint(bytes, &mut at)?;
    // Even: a key stored apart, of this many bytes / 2; odd: the key is the first
    // (this / 2) bytes of the row's values.
    let key_field = read_varint(bytes, &mut at)?;
    let row_len = read_varint(bytes, &mut at)?;
    let (key_len, prefix) = if key_field & 1 == 0 {
        (key_field >> 1, None)
    } else {
        (0, Some(key_field >> 1))
    };
    let meta_end = at.checked_add(meta_len)?;
    let key_end = meta_end.checked_add(key_len)?;
    let end = key_end.checked_add(row_len)?;
    let meta = bytes.get(at..meta_end)?;
    let key = bytes.get(meta_end..key_end)?;
    let row = bytes.get(key_end..end)?;
    let key_body = match prefix {
        None => key.get(varint_len(key)..)?,
        Some(n) => {
            let h = varint_len(row);
            row.get(h..h.checked_add(n)?)?
        }
    };
    Some((
        Body {
            bytes: bytes.get(start..end)?,
            meta,
            key,
            key_in_row: prefix.is_some(),
            key_body,
            row,
        },
        end - start,
    ))
}

/// How many values a table's keys and rows hold: what a restore checks every stored record
/// against, so that what it gives back can be indexed by column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub key: usize,
    pub row: usize,
}

/// Decodes `count` values from `bytes`, which must hold exactly those; returns the bytes
/// the first `split` of them take.
fn check_values(bytes: &[u8], count: usize, split: usize) -> Result<usize, String> {
    let mut rest = bytes;
    let mut split_at = 0;
    for i in 0..count {
        if i == split {
            split_at = bytes.len() - rest.len();
        }
        let (_, tail): (Value, &[u8]) = postcard::take_from_bytes(rest)
            .map_err(|e| format!("value {} of {count} does not decode: {e}", i + 1))?;
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after its {count} values", rest.len()));
    }
    Ok(if split >= count {
        bytes.len()
    } else {
        split_at
    })
}

/// Checks that a record's body decodes: its metadata as a version of type `V` and a time,
/// its key as `shape.key` values, its row (unless a delete) as `shape.row` values (a key
/// stored as the start of its row: the first `shape.key` of them).
fn check_body<V: for<'de> Deserialize<'de>>(b: &Body<'_>, shape: Shape) -> Result<(), String> {
    let (_, rest): ((V, Option<EventTime>), &[u8]) = postcard::take_from_bytes(b.meta)
        .map_err(|e| format!("its version does not decode: {e}"))?;
    if !rest.is_empty() {
        return Err("bytes after its version".into());
    }
    if b.key_in_row {
        if b.row.is_empty() || shape.key > shape.row {
            return Err("its key is not the start of a row".into());
        }
    } else {
        let count = read_varint(b.key, &mut 0).ok_or("its key's length does not decode")?;
        if count != shape.key {
            return Err(format!(
                "its key has {count} values, the table's {}",
                shape.key
            ));
        }
        check_values(b.key_body, count, count).map_err(|e| format!("its key: {e}"))?;
    }
    if !b.row.is_empty() {
        let mut at = 0;
        let count = read_varint(b.row, &mut at).ok_or("its row's length does not decode")?;
        if count != shape.row {
            return Err(format!(
                "its row has {count} values, the table's {}",
                shape.row
            ));
        }
        let key_len =
            check_values(&b.row[at..], count, shape.key).map_err(|e| format!("its row: {e}"))?;
        if b.key_in_row && key_len != b.key_body.len() {
            return Err(format!(
                "its key is not the first {} values of its row",
                shape.key
            ));
        }
    }
    Ok(())
}

/// A key's bytes: postcard, with decimals normalized, so that equal keys (`Value::eq`) have
/// equal bytes and lookups compare bytes.
fn key_bytes<'b>(key: &[Value], buf: &'b mut [u8; 256]) -> KeyBytes<'b> {
    let normalized: Option<Vec<Value>> =
        key.iter().any(|v| matches!(v, Value::Decimal(_))).then(|| {
            key.iter()
                .map(|v| match v {
                    Value::Decimal(d) => Value::Decimal(d.normalize()),
                    other => other.clone(),
                })
                .collect()
        });
    let key = normalized.as_deref().unwrap_or(key);
    match postcard::to_slice(key, buf) {
        Ok(bytes) => KeyBytes::Stack(bytes),
        Err(_) => KeyBytes::Heap(postcard::to_allocvec(key).expect("values always encode")),
    }
}

enum KeyBytes<'a> {
    Stack(&'a mut [u8]),
    Heap(Vec<u8>),
}

impl std::ops::Deref for KeyBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Stack(b) => b,
            KeyBytes::Heap(v) => v,
        }
    }
}

/// The table's hasher: fixed seeds, so snapshots restore into the same layout anywhere.
fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x7665_7273_696f_6e65,
        0x645f_7461_626c_6531,
        0x6b65_7973_5f61_7265,
        0x5f73_6c69_6365_7321,
    )
}

pub struct VersionedTable<V> {
    arena: Arena,
    /// Offset of each key's latest record.
    index: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
    retention_ms: Option<i64>,
    /// Keys whose latest version is a row (not a delete).
    live: usize,
    /// Bytes of records no version chain reaches any more.
    garbage: usize,
    /// The highest watermark `expire` was given (`import_key` keeps what it would have).
    expired_at: Option<EventTime>,
    /// No cutoff below this drops anything (`None`: no cutoff does), so an `expire` that
    /// would drop nothing is skipped instead of rewriting the arena (which would also make
    /// every chunk new to the next checkpoint).
    next_expiry: Option<EventTime>,
    _version: PhantomData<V>,
}

/// What a snapshot holds: the settings, the counts and the arena (its frozen chunks by
/// reference, see `Arena::image`). The index is rebuilt from the arena on restore.
#[derive(Serialize, Deserialize)]
struct Image {
    retention_ms: Option<i64>,
    live: usize,
    garbage: usize,
    expired_at: Option<EventTime>,
    next_expiry: Option<EventTime>,
    arena: ArenaImage,
}

impl<V> VersionedTable<V>
where
    V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
{
    /// A table keeping history for `retention_ms` of event time (`None`: latest only).
    pub fn new(retention_ms: Option<i64>) -> VersionedTable<V> {
        VersionedTable {
            arena: Arena::new(),
            index: hashbrown::HashTable::new(),
            hasher: hasher(),
            retention_ms,
            live: 0,
            garbage: 0,
            expired_at: None,
            next_expiry: None,
            _version: PhantomData,
        }
    }

    /// Rows currently present (deleted keys excluded).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn meta(bytes: &[u8]) -> (V, EventTime) {
        let (v, from): (V, Option<EventTime>) =
            postcard::from_bytes(bytes).expect("stored metadata decodes");
        (v, from.unwrap_or(EventTime::MIN))
    }

    fn encode_meta(version: V, valid_from: EventTime) -> Vec<u8> {
        let from = (valid_from != EventTime::MIN).then_some(valid_from);
        postcard::to_allocvec(&(version, from)).expect("metadata encodes")
    }

    fn put_prev(arena: &mut Vec<u8>, prev: u32) {
        put_varint(arena, if prev == NONE { 0 } else { prev as usize + 1 });
    }

    /// The offset of `key`'s latest record.
    fn find(&self, key: &[Value]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let mut buf = [0u8; 256];
        let probe = key_bytes(key, &mut buf);
        let body = &probe[varint_len(&probe)..];
        let arena = &self.arena;
        self.index
            .find(hash, |&off| record(arena, off).key_body == body)
            .copied()
    }

    /// Appends a record and returns its offset. `key` is the key's encoding; when the row's
    /// encoded values start with the key's, the key is not stored a second time.
    fn append(arena: &mut Arena, prev: u32, meta: &[u8], key: &[u8], row: Option<&[Value]>) -> u32 {
        let offset = arena.begin_record();
        let arena = arena.tail();
        let row = row.map(|r| postcard::to_allocvec(r).expect("values always encode"));
        let row = row.as_deref().unwrap_or(&[]);
        let key_body = &key[varint_len(key)..];
        let in_row = !row.is_empty() && row[varint_len(row)..].starts_with(key_body);
        Self::put_prev(arena, prev);
        put_varint(arena, meta.len());
        if in_row {
            put_varint(arena, (key_body.len() << 1) | 1);
        } else {
            put_varint(arena, key.len() << 1);
        }
        put_varint(arena, row.len());
        arena.extend_from_slice(meta);
        if !in_row {
            arena.extend_from_slice(key);
        }
        arena.extend_from_slice(row);
        offset
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
        let meta = Self::encode_meta(version, valid_from);
        let expiry_candidate = self.next_expiry.map_or(valid_from, |n| n.min(valid_from));
        let hash = self.hasher.hash_one(key);
        let mut buf = [0u8; 256];
        let probe = key_bytes(key, &mut buf);
        let probe_body = &probe[varint_len(&probe)..];
        let Self {
            arena,
            index,
            hasher,
            retention_ms,
            ..
        } = self;
        let found = index.find_mut(hash, |&off| record(arena, off).key_body == probe_body);
        let existed = found.is_some();
        let applied = match found {
            None => {
                // A delete of an unknown key is remembered too, so that an older insert
                // replayed later stays ignored.
                let off = Self::append(arena, NONE, &meta, &probe, row);
                index.insert_unique(hash, off, |&o| {
                    hasher.hash_one(&record(arena, o).key_values()[..])
                });
                if deleting {
                    Applied::Deleted
                } else {
                    self.live += 1;
                    Applied::Inserted
                }
            }
            Some(slot) => {
                let latest = record(arena, *slot);
                let (held, _) = Self::meta(latest.meta);
                if version <= held {
                    return Applied::Stale;
                }
                let was_live = !latest.row.is_empty();
                let latest_len = latest.len;
                let prev = if retention_ms.is_some() {
                    *slot
                } else {
                    self.garbage += latest_len;
                    NONE
                };
                *slot = Self::append(arena, prev, &meta, &probe, row);
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
        };
        // A delete can be forgotten, and with retention a superseded version dropped, once
        // the cutoff reaches the new version's time.
        if applied != Applied::Stale && (deleting || (self.retention_ms.is_some() && existed)) {
            self.next_expiry = Some(expiry_candidate);
        }
        if self.garbage > 1 << 16 && self.garbage * 2 > self.arena.len() {
            self.compact(|_| true);
        }
        applied
    }

    /// The latest row of `key`, if present.
    pub fn get(&self, key: &[Value]) -> Option<RowRef<'_>> {
        self.row_at(Located(self.find(key)?))
    }

    /// Looks up many keys at once: `out` gets, for each key in order, where its latest record
    /// is (`None`: never seen or forgotten). Read the rows with `row_at`/`row_as_of_at`.
    ///
    /// A lookup in a table larger than the cache is mostly waiting for memory: the hash
    /// table's control bytes, its slot, then the record. Done one key after another, each
    /// waits in turn; here the stages run over every key before the next stage (hash all,
    /// probe all and prefetch their records, then compare), so the waits of different keys
    /// overlap.
    pub fn locate_many<'k>(
        &self,
        keys: impl Iterator<Item = &'k [Value]>,
        out: &mut Vec<Option<Located>>,
    ) {
        out.clear();
        let mut hashes: SmallVec<[u64; 64]> = SmallVec::new();
        let mut bodies: Vec<u8> = Vec::new();
        let mut ends: SmallVec<[usize; 64]> = SmallVec::new();
        let mut buf = [0u8; 256];
        for key in keys {
            hashes.push(self.hasher.hash_one(key));
            let probe = key_bytes(key, &mut buf);
            bodies.extend_from_slice(&probe[varint_len(&probe)..]);
            ends.push(bodies.len());
        }
        let arena = &self.arena;
        let mut candidates: SmallVec<[u32; 64]> = SmallVec::with_capacity(hashes.len());
        for &hash in &hashes {
            let c = self.index.iter_hash(hash).next().copied().unwrap_or(NONE);
            if c != NONE {
                let (bytes, at) = arena.at(c);
                prefetch(bytes, at);
            }
            candidates.push(c);
        }
        let mut start = 0;
        for ((&hash, &end), &c) in hashes.iter().zip(&ends).zip(&candidates) {
            let body = &bodies[start..end];
            start = end;
            let found = if c != NONE && record(arena, c).key_body == body {
                Some(c)
            } else if c == NONE {
                None
            } else {
                // Another key with the same hash tag came first: the full probe.
                self.index
                    .find(hash, |&off| record(arena, off).key_body == body)
                    .copied()
            };
            out.push(found.map(Located));
        }
    }

    /// The latest row at a place `locate_many` found (`None`: the key is deleted).
    pub fn row_at(&self, at: Located) -> Option<RowRef<'_>> {
        let r = record(&self.arena, at.0);
        (!r.row.is_empty()).then_some(RowRef(r.row))
    }

    /// The row valid at event time `t` of the key `locate_many` found at `at`.
    pub fn row_as_of_at(&self, at: Located, t: EventTime) -> Option<RowRef<'_>> {
        let mut off = at.0;
        loop {
            let r = record(&self.arena, off);
            if Self::meta(r.meta).1 <= t {
                return (!r.row.is_empty()).then_some(RowRef(r.row));
            }
            if r.prev == NONE {
                return None;
            }
            off = r.prev;
        }
    }

    /// The latest version held for `key` (also for a deleted key).
    pub fn version_of(&self, key: &[Value]) -> Option<V> {
        let r = record(&self.arena, self.find(key)?);
        Some(Self::meta(r.meta).0)
    }

    /// The row of `key` valid at event time `t`: the newest version with `valid_from <= t`.
    pub fn get_as_of(&self, key: &[Value], t: EventTime) -> Option<RowRef<'_>> {
        self.row_as_of_at(Located(self.find(key)?), t)
    }

    /// The offsets of a key's versions, oldest first.
    fn chain(&self, latest: u32) -> SmallVec<[u32; 4]> {
        let mut chain: SmallVec<[u32; 4]> = SmallVec::new();
        let mut off = latest;
        loop {
            chain.push(off);
            let prev = record(&self.arena, off).prev;
            if prev == NONE {
                break;
            }
            off = prev;
        }
        chain.reverse();
        chain
    }

    /// Rewrites the arena with only what each key's chain still needs: `keep` gets a key's
    /// versions (oldest first, as offsets) and returns how many of the newest to keep (0
    /// forgets the key).
    fn compact_with(&mut self, mut keep: impl FnMut(&Arena, &[u32]) -> usize) {
        let mut arena = Arena::with_capacity(self.arena.len() - self.garbage);
        let mut index = hashbrown::HashTable::with_capacity(self.index.len());
        let mut live = 0;
        for &latest in &self.index {
            let chain = self.chain(latest);
            let n = keep(&self.arena, &chain).min(chain.len());
            if n == 0 {
                continue;
            }
            let mut prev = NONE;
            let mut key_hash = 0;
            for (i, &off) in chain[chain.len() - n..].iter().enumerate() {
                let r = record(&self.arena, off);
                if i == 0 {
                    key_hash = self.hasher.hash_one(&r.key_values()[..]);
                }
                let at = arena.begin_record();
                Self::put_prev(arena.tail(), prev);
                arena.tail().extend_from_slice(r.body);
                prev = at;
            }
            if !record(&arena, prev).row.is_empty() {
                live += 1;
            }
            let hasher = &self.hasher;
            let new_arena = &arena;
            index.insert_unique(key_hash, prev, |&o| {
                hasher.hash_one(&record(new_arena, o).key_values()[..])
            });
        }
        self.arena = arena;
        self.index = index;
        self.live = live;
        self.garbage = 0;
    }

    /// Compaction that keeps every version `keep` accepts (by the latest record).
    fn compact(&mut self, keep_key: impl Fn(&Record<'_>) -> bool) {
        self.compact_with(|arena, chain| {
            if keep_key(&record(
                arena,
                *chain.last().expect("a chain has a version"),
            )) {
                chain.len()
            } else {
                0
            }
        });
    }

    /// (valid from, deleted) of a record, from its bytes after `prev`.
    fn body_version(body: &[u8]) -> (EventTime, bool) {
        let mut at = 0;
        let meta_len = get_varint(body, &mut at);
        let _key = get_varint(body, &mut at);
        let row_len = get_varint(body, &mut at);
        (Self::meta(&body[at..at + meta_len]).1, row_len == 0)
    }

    /// How many of a key's newest versions `expire(watermark)` keeps (0: the key is
    /// forgotten); `versions` are (valid from, deleted), oldest first.
    fn kept_after_expire(
        retention: Option<i64>,
        watermark: EventTime,
        versions: &[(EventTime, bool)],
    ) -> usize {
        let Some(retention) = retention else {
            let (from, deleted) = *versions.last().expect("a chain has a version");
            return if !deleted || from > watermark {
                versions.len()
            } else {
                0
            };
        };
        let cutoff = watermark.saturating_sub(retention);
        // Keep the newest version valid at the cutoff and everything after it.
        let from = versions
            .iter()
            .rposition(|&(t, _)| t <= cutoff)
            .unwrap_or(0);
        let kept = versions.len() - from;
        let (t, deleted) = versions[from];
        if kept == 1 && deleted && t <= cutoff {
            0
        } else {
            kept
        }
    }

    /// Drops history no lookup at or after `watermark - retention` can see.
    pub fn expire(&mut self, watermark: EventTime) {
        self.expired_at = Some(self.expired_at.map_or(watermark, |w| w.max(watermark)));
        let retention = self.retention_ms;
        let cutoff = retention.map_or(watermark, |r| watermark.saturating_sub(r));
        if self.next_expiry.is_none_or(|n| n > cutoff) {
            return;
        }
        self.compact_expired(watermark);
    }

    /// `expire`'s compaction, done whether or not it drops anything.
    fn compact_expired(&mut self, watermark: EventTime) {
        let retention = self.retention_ms;
        let mut next: Option<EventTime> = None;
        self.compact_with(|arena, chain| {
            let versions: SmallVec<[(EventTime, bool); 4]> = chain
                .iter()
                .map(|&o| Self::body_version(record(arena, o).body))
                .collect();
            let kept = Self::kept_after_expire(retention, watermark, &versions);
            if let Some(t) = Self::next_expiry_of(retention, &versions[versions.len() - kept..]) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            kept
        });
        self.next_expiry = next;
    }

    /// The smallest cutoff at which `expire` drops something of a chain of these versions
    /// (valid from, deleted; oldest first): a delete is forgotten from its time, and with
    /// retention a version is dropped once a newer one is valid at the cutoff.
    fn next_expiry_of(retention: Option<i64>, versions: &[(EventTime, bool)]) -> Option<EventTime> {
        let forgotten = versions
            .last()
            .filter(|(_, deleted)| *deleted)
            .map(|(t, _)| *t);
        let superseded = retention.and_then(|_| versions.iter().skip(1).map(|(t, _)| *t).min());
        forgotten.into_iter().chain(superseded).min()
    }

    /// The key's encoding as the table stores and compares it (decimals normalized).
    pub fn encode_key(key: &[Value]) -> Vec<u8> {
        let mut buf = [0u8; 256];
        key_bytes(key, &mut buf).to_vec()
    }

    /// The versions held for `key`, oldest first, in the table's record encoding (what
    /// `import_key` takes); `None` when the key is not held.
    pub fn export_key(&self, key: &[Value]) -> Option<Vec<u8>> {
        let latest = self.find(key)?;
        let mut out = Vec::new();
        for off in self.chain(latest) {
            let body = record(&self.arena, off).body;
            put_varint(&mut out, body.len());
            out.extend_from_slice(body);
        }
        Some(out)
    }

    /// Takes in the versions `export_key` gave for a key this table does not hold; `expired`:
    /// as they would be after the table's last `expire` (which came after the export).
    /// Returns whether the key is held now.
    pub fn import_key(&mut self, exported: &[u8], expired: bool) -> bool {
        let mut bodies: SmallVec<[&[u8]; 4]> = SmallVec::new();
        let mut at = 0;
        while at < exported.len() {
            let len = get_varint(exported, &mut at);
            bodies.push(&exported[at..at + len]);
            at += len;
        }
        if bodies.is_empty() {
            return false;
        }
        let kept = match self.expired_at.filter(|_| expired) {
            Some(w) => {
                let versions: SmallVec<[(EventTime, bool); 4]> =
                    bodies.iter().map(|b| Self::body_version(b)).collect();
                Self::kept_after_expire(self.retention_ms, w, &versions)
            }
            None => bodies.len(),
        };
        if kept == 0 {
            return false;
        }
        // Without retention only the latest version is kept.
        let kept = if self.retention_ms.is_some() { kept } else { 1 };
        let versions: SmallVec<[(EventTime, bool); 4]> = bodies[bodies.len() - kept..]
            .iter()
            .map(|b| Self::body_version(b))
            .collect();
        if let Some(t) = Self::next_expiry_of(self.retention_ms, &versions) {
            self.next_expiry = Some(self.next_expiry.map_or(t, |n| n.min(t)));
        }
        let mut prev = NONE;
        for body in &bodies[bodies.len() - kept..] {
            let off = self.arena.begin_record();
            Self::put_prev(self.arena.tail(), prev);
            self.arena.tail().extend_from_slice(body);
            prev = off;
        }
        let r = record(&self.arena, prev);
        if !r.row.is_empty() {
            self.live += 1;
        }
        let hash = self.hasher.hash_one(&r.key_values()[..]);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.index.insert_unique(hash, prev, |&o| {
            hasher.hash_one(&record(arena, o).key_values()[..])
        });
        true
    }

    /// Forgets every key (a cache drops its contents); what `expire` was given stays.
    pub fn clear(&mut self) {
        let expired_at = self.expired_at;
        *self = VersionedTable::new(self.retention_ms);
        self.expired_at = expired_at;
    }

    /// The highest watermark `expire` was given.
    pub fn expired_at(&self) -> Option<EventTime> {
        self.expired_at
    }

    /// Sets what `expire` was given last (a restored cache).
    pub fn set_expired_at(&mut self, at: Option<EventTime>) {
        self.expired_at = at;
    }

    /// Gives back the arena's spare capacity (after a bulk load, such as a snapshot).
    pub fn shrink_to_fit(&mut self) {
        if self.garbage > 0 {
            self.compact(|_| true);
        }
        self.arena.shrink_to_fit();
        let hasher = &self.hasher;
        let arena = &self.arena;
        self.index
            .shrink_to_fit(|&o| hasher.hash_one(&record(arena, o).key_values()[..]));
    }

    /// Keys held, deleted keys whose tombstone is kept included.
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// Every key held (also deleted keys whose tombstone is kept), decoded.
    pub fn keys(&self) -> Vec<Box<[Value]>> {
        self.index
            .iter()
            .map(|&o| {
                record(&self.arena, o)
                    .key_values()
                    .into_vec()
                    .into_boxed_slice()
            })
            .collect()
    }

    /// Every row held, current and historical, with its key (tombstones excluded).
    pub fn rows(&self) -> Vec<(Box<[Value]>, RowRef<'_>)> {
        let mut out = Vec::new();
        for &latest in &self.index {
            let chain = self.chain(latest);
            let key: Box<[Value]> = record(&self.arena, latest)
                .key_values()
                .into_vec()
                .into_boxed_slice();
            for off in chain {
                let r = record(&self.arena, off);
                if !r.row.is_empty() {
                    out.push((key.clone(), RowRef(r.row)));
                }
            }
        }
        out
    }

    /// Every version held, key by key and oldest first within a key: the key, the version,
    /// the time it is valid from and its row (`None`: a delete).
    pub fn for_each_version(&self, mut f: impl FnMut(&[Value], V, EventTime, Option<&[Value]>)) {
        for &latest in &self.index {
            let key = record(&self.arena, latest).key_values();
            for off in self.chain(latest) {
                let r = record(&self.arena, off);
                let (version, valid_from) = Self::meta(r.meta);
                let row = (!r.row.is_empty()).then(|| RowRef(r.row).values());
                f(&key, version, valid_from, row.as_deref());
            }
        }
    }

    /// How long (event time) history is kept (`None`: latest only).
    pub fn retention_ms(&self) -> Option<i64> {
        self.retention_ms
    }

    /// Versions held in total (rows and tombstones, current and historical).
    pub fn versions_held(&self) -> usize {
        self.index.iter().map(|&o| self.chain(o).len()).sum()
    }

    /// The memory used, in bytes: the arena's allocation and the hash table's slots.
    pub fn estimated_bytes(&self) -> usize {
        self.arena.capacity() + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }

    /// Encodes the table; its arena's frozen chunks go into `blobs` by reference (no copy).
    pub fn snapshot(&self, blobs: &mut Blobs) -> Result<Vec<u8>, StateError> {
        postcard::to_allocvec(&Image {
            retention_ms: self.retention_ms,
            live: self.live,
            garbage: self.garbage,
            expired_at: self.expired_at,
            next_expiry: self.next_expiry,
            arena: self.arena.image(blobs),
        })
        .map_err(|e| StateError::encode("versioned table", e))
    }

    /// The table `snapshot` encoded, its chunks taken from `blobs`. Every record is checked
    /// before the table uses it: its lengths, its version, key and row (keys and rows of
    /// `shape`), and its link to the key's previous version; a snapshot that does not pass
    /// is an error naming what is wrong, never a table that fails later.
    pub fn restore(
        bytes: &[u8],
        blobs: &Blobs,
        shape: Shape,
    ) -> Result<VersionedTable<V>, StateError> {
        let fail = |reason: String| StateError::decode("versioned table", reason);
        let image: Image = postcard::from_bytes(bytes).map_err(|e| fail(e.to_string()))?;
        let mut t = VersionedTable::new(image.retention_ms);
        t.arena = Arena::from_image(image.arena, blobs)?;
        if image.garbage > t.arena.len() {
            return Err(fail(format!(
                "{} bytes of garbage in an arena of {}",
                image.garbage,
                t.arena.len()
            )));
        }
        t.garbage = image.garbage;
        t.expired_at = image.expired_at;
        t.next_expiry = image.next_expiry;
        // Records were appended oldest first: the last record of a key is its latest; a
        // record that replaces an index slot is a newer version of that key (older ones are
        // history reached through `prev`, or garbage).
        let VersionedTable {
            arena,
            index,
            hasher,
            ..
        } = &mut t;
        let limit = arena.chunk_limit();
        // Where records start, in order: a record's `prev` must be one of them.
        let mut starts: Vec<u32> = Vec::new();
        for (base, chunk) in arena.chunks() {
            let mut within = 0usize;
            while within < chunk.len() {
                let off = base | within as u32;
                let bad = |why: String| fail(format!("the record at offset {off:#x} {why}"));
                if within >= limit {
                    return Err(bad(format!("starts past its chunk's {limit} bytes")));
                }
                let r = parse_record(chunk, within)
                    .ok_or_else(|| bad("is cut short or its lengths overflow".into()))?;
                let (body, _) = parse_body(r.body, 0).expect("parsed once already");
                check_body::<V>(&body, shape).map_err(bad)?;
                if r.prev != NONE {
                    let linked = starts.binary_search(&r.prev).is_ok()
                        && record(arena, r.prev).key_body == r.key_body;
                    if !linked {
                        return Err(bad(format!(
                            "links to {:#x}, not an earlier version of its key",
                            r.prev
                        )));
                    }
                }
                starts.push(off);
                within += r.len;
                let hash = hasher.hash_one(&r.key_values()[..]);
                match index.find_mut(hash, |&o| record(arena, o).key_body == r.key_body) {
                    Some(slot) => *slot = off,
                    None => {
                        index.insert_unique(hash, off, |&o| {
                            hasher.hash_one(&record(arena, o).key_values()[..])
                        });
                    }
                }
            }
        }
        // Counted from the records rather than taken from the image: they are what lookups
        // answer from.
        t.live = t
            .index
            .iter()
            .filter(|&&o| !record(&t.arena, o).row.is_empty())
            .count();
        Ok(t)
    }

    /// Checks a key's encoding as `encode_key` gives it: `shape.key` values.
    pub fn check_key(key: &[u8], shape: Shape) -> Result<(), String> {
        let mut at = 0;
        let count = read_varint(key, &mut at).ok_or("its length does not decode")?;
        if count != shape.key {
            return Err(format!(
                "it has {count} values, the table's keys {}",
                shape.key
            ));
        }
        check_values(&key[at..], count, count).map(|_| ())
    }

    /// Checks versions `export_key` gave (a key's stored value in a disk table's change log)
    /// before `import_key` takes them in: each a record body that decodes, keys and rows of
    /// `shape`, all of the key whose encoding is `key`.
    pub fn check_exported(exported: &[u8], key: &[u8], shape: Shape) -> Result<(), String> {
        let key_body = key.get(varint_len(key)..).unwrap_or_default();
        let mut at = 0;
        let mut n = 0;
        while at < exported.len() {
            n += 1;
            let len = read_varint(exported, &mut at)
                .ok_or_else(|| format!("the length of version {n} does not decode"))?;
            let end = at
                .checked_add(len)
                .filter(|&e| e <= exported.len())
                .ok_or_else(|| format!("version {n} is cut short"))?;
            let (body, _) = parse_body(&exported[..end], at)
                .filter(|(_, used)| at + used == end)
                .ok_or_else(|| format!("version {n}'s lengths do not add up"))?;
            check_body::<V>(&body, shape).map_err(|e| format!("version {n}: {e}"))?;
            if body.key_body != key_body {
                return Err(format!("version {n} is of another key"));
            }
            at = end;
        }
        Ok(())
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

    impl<V> VersionedTable<V>
    where
        V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
    {
        /// `expire` without its shortcut.
        fn expire_at_once(&mut self, watermark: EventTime) {
            self.expired_at = Some(self.expired_at.map_or(watermark, |w| w.max(watermark)));
            self.compact_expired(watermark);
        }
    }

    fn round_trip<V>(t: &VersionedTable<V>) -> VersionedTable<V>
    where
        V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
    {
        let mut blobs = Blobs::new();
        let bytes = t.snapshot(&mut blobs).unwrap();
        VersionedTable::restore(&bytes, &blobs, shape_of(t)).unwrap()
    }

    /// The shape of a test table's keys and rows (1 and 1 when it holds none).
    fn shape_of<V>(t: &VersionedTable<V>) -> Shape
    where
        V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
    {
        let key = t.keys().first().map_or(1, |k| k.len());
        let row = t.rows().first().map_or(1, |(_, r)| r.values().len());
        Shape { key, row }
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
    fn a_key_at_the_start_of_its_row_is_stored_once() {
        use rust_decimal::Decimal;
        let mut t: VersionedTable<u64> = VersionedTable::new(None);
        let prefix = [Value::Int(1), Value::from("a")];
        let apart = [Value::from("x"), Value::Int(2)];
        t.apply(&k(1), 1, 0, Some(&prefix));
        let one = t.arena.len();
        t.apply(&k(2), 2, 0, Some(&apart));
        assert!(t.arena.len() - one > one, "a key apart takes its own bytes");
        // Decimal keys compare normalized: 1.0 finds 1.00, whatever the row holds.
        let d = |s: &str| Value::Decimal(s.parse::<Decimal>().unwrap());
        t.apply(&[d("1.00")], 3, 0, Some(&[d("1.00"), Value::Int(7)]));
        t.apply(&k(3), 4, 0, None);
        let r = round_trip(&t);
        for table in [&t, &r] {
            assert_eq!(got(table.get(&k(1))), Some(prefix.to_vec()));
            assert_eq!(got(table.get(&k(2))), Some(apart.to_vec()));
            assert_eq!(
                got(table.get(&[d("1.0")])),
                Some(vec![d("1.00"), Value::Int(7)])
            );
            assert_eq!(table.version_of(&k(3)), Some(4));
            let mut keys = table.keys();
            keys.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            assert_eq!(keys.len(), 4);
        }
    }

    #[test]
    fn superseded_versions_are_compacted_away() {
        // Latest only: a million updates of a hundred two-column keys keep the arena small.
        let mut t: VersionedTable<u64> = VersionedTable::new(None);
        let key = |i: u64| vec![Value::from("k"), Value::Int((i % 100) as i64)];
        for i in 0..100_000u64 {
            let row = [
                Value::Int(i as i64),
                Value::from("a longer string value, 40 bytes"),
            ];
            t.apply(&key(i), i + 1, i as i64, Some(&row));
        }
        assert_eq!(t.len(), 100);
        assert!(
            t.estimated_bytes() < 1 << 20,
            "{} bytes",
            t.estimated_bytes()
        );
        assert_eq!(
            got(t.get(&key(99_999))),
            Some(vec![
                Value::Int(99_999),
                Value::from("a longer string value, 40 bytes")
            ])
        );
        let r = round_trip(&t);
        assert_eq!(r.len(), 100);
        assert_eq!(got(r.get(&key(5))), got(t.get(&key(5))));
        assert_eq!(r.version_of(&key(5)), Some(99_906));
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
        let r = round_trip(&t);
        for key in 0..7 {
            assert_eq!(got(r.get(&k(key))), got(t.get(&k(key))));
            assert_eq!(got(r.get_as_of(&k(key), 50)), got(t.get_as_of(&k(key), 50)));
        }
        assert_eq!(r.len(), t.len());
    }

    #[test]
    fn snapshots_share_frozen_chunks_until_a_compaction() {
        use std::sync::Arc;
        // Unit tests freeze a chunk every KiB: this table spans many.
        let mut t: VersionedTable<u64> = VersionedTable::new(Some(1_000));
        let mut version = 0u64;
        let mut change = |t: &mut VersionedTable<u64>, key: i64, deleted: bool| {
            version += 1;
            let r = (!deleted).then(|| vec![Value::Int(key), Value::from("x".repeat(40).as_str())]);
            t.apply(&k(key), version, version as i64, r.as_deref());
        };
        for i in 0..400 {
            change(&mut t, i, false);
        }
        let mut first = Blobs::new();
        let bytes = t.snapshot(&mut first).unwrap();
        assert!(first.len() > 10, "{} chunks", first.len());
        for i in 0..200 {
            change(&mut t, i * 2, i % 3 == 0);
        }
        let mut second = Blobs::new();
        t.snapshot(&mut second).unwrap();
        // Every chunk of the first snapshot is still there, unchanged, in the second.
        for (id, b) in &first {
            let (crate::state::Blob::Bytes(a), crate::state::Blob::Bytes(b)) = (b, &second[id])
            else {
                panic!("chunks are shared as bytes");
            };
            assert!(Arc::ptr_eq(a, b), "chunk {id} was copied");
        }
        assert!(second.len() > first.len());
        let check = |r: &VersionedTable<u64>, t: &VersionedTable<u64>| {
            for key in 0..400 {
                assert_eq!(got(r.get(&k(key))), got(t.get(&k(key))), "key {key}");
                for at in [100, 450, 10_000] {
                    assert_eq!(got(r.get_as_of(&k(key), at)), got(t.get_as_of(&k(key), at)));
                }
            }
            assert_eq!((r.len(), r.key_count()), (t.len(), t.key_count()));
        };
        check(&round_trip(&t), &t);
        // The first snapshot still restores what the table was then.
        let old = VersionedTable::<u64>::restore(&bytes, &first, Shape { key: 1, row: 2 }).unwrap();
        assert_eq!(old.len(), 400);
        // A compaction writes a new arena: nothing is shared any more.
        t.expire(100_000);
        let mut third = Blobs::new();
        t.snapshot(&mut third).unwrap();
        assert!(third.keys().all(|id| !second.contains_key(id)));
        check(&round_trip(&t), &t);
    }

    /// Regression: a snapshot whose checksums were valid but whose records were not (a
    /// length past its chunk) panicked with a slice index out of range on restore.
    #[test]
    fn a_snapshot_with_malformed_records_is_refused_not_a_panic() {
        use std::sync::Arc;
        let mut t: VersionedTable<u64> = VersionedTable::new(None);
        for i in 0..100 {
            let r = vec![Value::Int(i), Value::from("some text to fill chunks")];
            t.apply(&k(i), i as u64, 0, Some(&r));
        }
        let mut blobs = Blobs::new();
        let bytes = t.snapshot(&mut blobs).unwrap();
        let shape = Shape { key: 1, row: 2 };
        let id = blobs.keys().next().unwrap().clone();
        let chunk = blobs[&id].load().unwrap();
        let restore_with = |chunk: Vec<u8>| {
            let mut spoilt = blobs.clone();
            spoilt.insert(id.clone(), crate::state::Blob::Bytes(Arc::from(chunk)));
            VersionedTable::<u64>::restore(&bytes, &spoilt, shape).map(|_| ())
        };
        // The first record's metadata length (after its `prev`) made far too long.
        let mut long = chunk.to_vec();
        long[1..4].copy_from_slice(&[0xff, 0xff, 0x7f]);
        let e = restore_with(long).unwrap_err().to_string();
        assert!(
            e.contains("record at offset 0x0") && e.contains("cut short"),
            "{e}"
        );
        // A row value that does not decode.
        let mut bad = chunk.to_vec();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert!(restore_with(bad).is_err());
        // Rows of another width than the table's.
        let e = VersionedTable::<u64>::restore(&bytes, &blobs, Shape { key: 1, row: 3 })
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("its row has 2 values, the table's 3"), "{e}");
        assert!(VersionedTable::<u64>::restore(&bytes, &blobs, shape).is_ok());
    }

    proptest! {
        /// An `expire` skipped because nothing could expire leaves the table as the
        /// compaction would have: the same answers, the same counts.
        #[test]
        fn skipped_expirations_change_nothing(
            steps in prop::collection::vec((0i64..6, prop::option::weighted(0.7, 0i64..50), 0i64..40, prop::bool::weighted(0.25)), 1..80),
            retention in prop::option::of(0i64..60),
        ) {
            let mut lazy: VersionedTable<u64> = VersionedTable::new(retention);
            let mut eager: VersionedTable<u64> = VersionedTable::new(retention);
            let (mut time, mut watermark) = (0i64, 0i64);
            for (i, (key, value, advance, expire)) in steps.iter().enumerate() {
                time += advance;
                let r = value.and_then(row);
                lazy.apply(&k(*key), i as u64, time, r.as_deref());
                eager.apply(&k(*key), i as u64, time, r.as_deref());
                if *expire {
                    watermark = watermark.max(time - 5);
                    lazy.expire(watermark);
                    eager.expire_at_once(watermark);
                }
                prop_assert_eq!((lazy.len(), lazy.key_count()), (eager.len(), eager.key_count()));
            }
            for key in 0..6 {
                prop_assert_eq!(lazy.version_of(&k(key)), eager.version_of(&k(key)));
                for t in (0..=time + 5).step_by(3) {
                    prop_assert_eq!(got(lazy.get_as_of(&k(key), t)), got(eager.get_as_of(&k(key), t)));
                }
            }
        }
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
            // The batched lookup finds what one-by-one lookups find, absent keys included.
            let keys: Vec<Vec<Value>> = (0..10).map(k).collect();
            let mut located = Vec::new();
            t.locate_many(keys.iter().map(|k| &k[..]), &mut located);
            prop_assert_eq!(located.len(), keys.len());
            for (key, at) in keys.iter().zip(&located) {
                prop_assert_eq!(got(at.and_then(|at| t.row_at(at))), got(t.get(key)));
                let as_of = at.and_then(|at| t.row_as_of_at(at, 35));
                prop_assert_eq!(got(as_of), got(t.get_as_of(key, 35)));
            }
        }
    }

    /// With many keys, first candidates of a hash probe often belong to another key (the
    /// tag is 7 bits): the batched lookup still finds exactly the right rows, and a row's
    /// values read one by one equal its decoded values.
    #[test]
    fn batched_lookups_equal_single_lookups() {
        let mut t: VersionedTable<u64> = VersionedTable::new(None);
        let key = |i: u64| {
            vec![Value::from(
                format!("10.0.{}.{}", i / 256, i % 256).as_str(),
            )]
        };
        for i in 0..20_000u64 {
            let r = vec![
                key(i)[0].clone(),
                Value::from(format!("team-{}", i % 97).as_str()),
                Value::Int(i as i64),
            ];
            t.apply(&key(i), i + 1, 0, Some(&r));
        }
        for i in (0..20_000u64).step_by(3) {
            t.apply(&key(i), 100_000 + i, 0, None);
        }
        let probes: Vec<Vec<Value>> = (0..25_000u64).map(|i| key(i * 7 % 25_000)).collect();
        let mut located = Vec::new();
        for chunk in probes.chunks(32) {
            t.locate_many(chunk.iter().map(|k| &k[..]), &mut located);
            for (k, at) in chunk.iter().zip(&located) {
                let single = t.get(k);
                let batched = at.and_then(|at| t.row_at(at));
                assert_eq!(got(batched), got(single), "key {k:?}");
                if let Some(r) = batched {
                    assert_eq!(r.iter().collect::<Vec<_>>(), r.values().to_vec());
                }
            }
        }
    }
}
