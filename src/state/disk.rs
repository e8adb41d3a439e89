//! `DiskTable`: a reference table kept in an embedded LSM store (fjall) on local disk, so that
//! a table larger than memory needs memory only for the rows in use.
//!
//! Every key's versions are one value in the store (the `VersionedTable` record encoding,
//! oldest first, after the number of `expire` calls before it was written: versions written
//! before the last `expire` are trimmed as that call would have trimmed them when they are
//! next read). Reads go through a cache, itself a `VersionedTable` of at most `cache_rows`
//! keys (dropped whole when full; the keys in use come back on their next lookup): the
//! caller `warm`s the keys of a batch (loading those the cache lacks from the store), then
//! reads them as from a memory table. A change is applied to the cache (which decides whether
//! it is stale, exactly as a memory table does) and the key's new versions are written to the
//! store.
//!
//! **Checkpoints** come from a change log kept beside the store: every applied change
//! appends (key, versions) to the current segment file. A snapshot seals the segment (fsync)
//! and hands every sealed segment to the checkpoint as a file blob, so a checkpoint writes
//! only the changes since the last one and links the rest. When the log grows past twice the
//! stored data, a snapshot first rewrites it as one segment from the store. A restore
//! replays the segments into a new store, checking each change first (its lengths within the
//! segment, a key and versions of the table's `Shape` that decode), so that what the store
//! holds is trusted afterwards. The store itself is a working copy in a
//! temporary directory (removed when the table is dropped): what survives a crash is the
//! checkpoint. A working copy `watershed-table-<id>/` has a lock file beside it,
//! `watershed-table-<id>.lock`, created (and locked) before the directory and removed after
//! it; a working copy whose lock nobody holds, or that has no lock file, was left by a
//! process that died, and the next table created beside it removes it.
//!
//! An I/O error of the store or the log is kept and fails the next snapshot (the checkpoint
//! then fails, and its alert says why); the table goes on serving what it holds.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::state::arena::unique_id;
use crate::state::versioned::{Located, RowRef, Shape, put_varint, take_varint};
use crate::state::{Applied, Blob, Blobs, VersionedTable};
use crate::types::{EventTime, Value};

/// Where a disk table keeps its working copy, and how many keys its cache holds.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskOptions {
    /// A directory for the working copy (`None`: the system's temporary directory).
    pub dir: Option<PathBuf>,
    pub cache_rows: usize,
}

const WORK_PREFIX: &str = "watershed-table-";
const LOCK_SUFFIX: &str = ".lock";

/// Removes the working copies in `base` that no live table holds (left by a process that
/// was killed): those whose lock file nobody holds, and those without one.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        let Some(work) = name.trim_start_matches('.').strip_suffix(LOCK_SUFFIX) else {
            if name.starts_with(WORK_PREFIX) && !base.join(format!("{name}{LOCK_SUFFIX}")).exists()
            {
                remove_logged(&base.join(name));
            }
            continue;
        };
        if !work.starts_with(WORK_PREFIX) {
            continue;
        }
        let lock = base.join(name);
        // A lock file not yet renamed may be about to be locked by its creator: only an old
        // one is abandoned.
        let settled = !name.starts_with('.')
            || std::fs::metadata(&lock)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
        if settled && File::open(&lock).is_ok_and(|f| f.try_lock().is_ok()) {
            if !name.starts_with('.') {
                remove_logged(&base.join(work));
            }
            let _ = std::fs::remove_file(&lock);
        }
    }
}

fn remove_logged(dir: &Path) {
    if !dir.exists() {
        return;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!(path = %dir.display(), "removed a disk table's working copy left by a process that died")
        }
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove an abandoned working copy")
        }
    }
}

/// Changes written to the store per batch when a log is replayed.
const REPLAY_BATCH: usize = 4096;

struct Segment {
    id: String,
    path: PathBuf,
    bytes: u64,
    crc32: u32,
}

struct OpenSegment {
    id: String,
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    hasher: crc32fast::Hasher,
}

/// The change log: sealed segments (immutable, shared with checkpoints) and the open one.
struct ChangeLog {
    dir: PathBuf,
    sealed: Vec<Segment>,
    open: Option<OpenSegment>,
    /// Bytes of the segment the last rewrite produced.
    base_bytes: u64,
    /// Segments a rewrite replaced, with the number of snapshots since: a checkpoint still
    /// being written may name them, so they are removed `RETIRED_FOR` snapshots later (or
    /// with the table, which the runtime keeps until the run is over).
    retired: Vec<(Segment, u32)>,
}

/// Snapshots a replaced log segment is kept for.
const RETIRED_FOR: u32 = 3;

impl Drop for ChangeLog {
    fn drop(&mut self) {
        for (s, _) in self.retired.drain(..) {
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

impl ChangeLog {
    fn append(&mut self, key: &[u8], versions: &[u8]) -> std::io::Result<()> {
        if self.open.is_none() {
            let id = unique_id("log");
            let path = self.dir.join(&id);
            self.open = Some(OpenSegment {
                out: BufWriter::with_capacity(1 << 20, File::create(&path)?),
                id,
                path,
                bytes: 0,
                hasher: crc32fast::Hasher::new(),
            });
        }
        let seg = self.open.as_mut().expect("opened above");
        let mut head = Vec::with_capacity(10);
        put_varint(&mut head, key.len());
        let mut mid = Vec::with_capacity(10);
        put_varint(&mut mid, versions.len());
        for part in [&head[..], key, &mid[..], versions] {
            seg.out.write_all(part)?;
            seg.hasher.update(part);
            seg.bytes += part.len() as u64;
        }
        Ok(())
    }

    /// Makes the open segment durable and immutable.
    /// Makes the open segment durable and immutable. On an error the segment stays open
    /// (and the table is failed by the caller: its log can no longer be trusted).
    fn seal(&mut self) -> std::io::Result<()> {
        if let Some(seg) = self.open.as_mut() {
            seg.out.flush()?;
            seg.out.get_ref().sync_all()?;
        }
        if let Some(seg) = self.open.take() {
            self.sealed.push(Segment {
                id: seg.id,
                path: seg.path,
                bytes: seg.bytes,
                crc32: seg.hasher.finalize(),
            });
        }
        Ok(())
    }

    fn sealed_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum()
    }
}

pub struct DiskTable<V> {
    db: fjall::Database,
    rows: fjall::Keyspace,
    cache: VersionedTable<V>,
    cache_rows: usize,
    retention_ms: Option<i64>,
    /// Keys whose latest version is a row.
    live: usize,
    /// Keys held, deleted ones whose tombstone is kept included (not lowered by `expire`,
    /// which trims the store lazily).
    keys: usize,
    /// Bytes of keys and versions in the store (what a rewritten log would hold).
    stored_bytes: u64,
    /// `expire` calls so far.
    expirations: u64,
    log: RefCell<ChangeLog>,
    /// The first I/O error, reported by the next snapshot.
    failed: RefCell<Option<String>>,
    _version: PhantomData<V>,
    /// Holds `db/` (the store) and `log/`; removed on drop, after the store is closed (fields
    /// drop in order).
    _work: WorkDir,
}

/// A working directory and its lock file; both removed on drop.
struct WorkDir {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl WorkDir {
    fn create(base: &Path) -> std::io::Result<WorkDir> {
        let name = format!("{WORK_PREFIX}{}", unique_id("t"));
        // Locked under a name no one looks at, then renamed: a lock file is never seen
        // unlocked by its owner's neighbours.
        let tmp = base.join(format!(".{name}{LOCK_SUFFIX}"));
        let lock = File::create(&tmp)?;
        lock.try_lock().map_err(std::io::Error::other)?;
        let lock_path = base.join(format!("{name}{LOCK_SUFFIX}"));
        std::fs::rename(&tmp, &lock_path)?;
        let dir = base.join(&name);
        std::fs::create_dir(&dir)?;
        Ok(WorkDir {
            dir,
            lock_path,
            _lock: lock,
        })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// What a snapshot holds besides the log's segments.
#[derive(Serialize, Deserialize)]
struct Image {
    retention_ms: Option<i64>,
    expired_at: Option<EventTime>,
    live: usize,
    keys: usize,
    stored_bytes: u64,
    expirations: u64,
    base_bytes: u64,
    segments: Vec<String>,
}

fn io_error(context: &str, e: impl std::fmt::Display) -> StateError {
    StateError::encode("disk table", format!("{context}: {e}"))
}

impl<V> DiskTable<V>
where
    V: Ord + Copy + Serialize + for<'de> Deserialize<'de>,
{
    /// An empty table in a new working directory.
    pub fn new(retention_ms: Option<i64>, opts: &DiskOptions) -> Result<DiskTable<V>, StateError> {
        let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)
            .map_err(|e| io_error(&format!("cannot create {}", base.display()), e))?;
        remove_abandoned(&base);
        let work = WorkDir::create(&base).map_err(|e| {
            io_error(
                &format!("cannot create a working directory in {}", base.display()),
                e,
            )
        })?;
        let log_dir = work.dir.join("log");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| io_error(&format!("cannot create {}", log_dir.display()), e))?;
        let db = fjall::Database::builder(work.dir.join("db"))
            .open()
            .map_err(|e| io_error("cannot open the store", e))?;
        let rows = db
            .keyspace("rows", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| io_error("cannot open the store's keyspace", e))?;
        Ok(DiskTable {
            _work: work,
            db,
            rows,
            cache: VersionedTable::new(retention_ms),
            cache_rows: opts.cache_rows.max(1),
            retention_ms,
            live: 0,
            keys: 0,
            stored_bytes: 0,
            expirations: 0,
            log: RefCell::new(ChangeLog {
                dir: log_dir,
                sealed: Vec::new(),
                open: None,
                base_bytes: 0,
                retired: Vec::new(),
            }),
            failed: RefCell::new(None),
            _version: PhantomData,
        })
    }

    fn fail(&self, context: &str, e: impl std::fmt::Display) {
        let mut failed = self.failed.borrow_mut();
        if failed.is_none() {
            tracing::error!(error = %e, "disk table: {context}; the next checkpoint fails");
            *failed = Some(format!("{context}: {e}"));
        }
    }

    /// The stored versions of an encoded key.
    fn stored(&self, key: &[u8]) -> Option<fjall::Slice> {
        match self.rows.get(key) {
            Ok(v) => v,
            Err(e) => {
                self.fail("cannot read the store", e);
                None
            }
        }
    }

    /// Loads `key` into the cache unless it is there (or not in the store).
    fn warm_one(&mut self, key: &[Value], encoded: &[u8]) {
        if self.cache.version_of(key).is_some() {
            return;
        }
        if let Some(v) = self.stored(encoded) {
            let (written_after, versions) = split_checked(&v);
            self.cache
                .import_key(versions, written_after < self.expirations);
        }
    }

    /// A key's versions as the store keeps them: after the `expire` count.
    fn stored_value(&self, versions: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(versions.len() + 4);
        put_varint(&mut v, self.expirations as usize);
        v.extend_from_slice(versions);
        v
    }

    /// Loads the keys of a batch the cache lacks; afterwards every read of them (`get`,
    /// `get_as_of`, `version_of`, `locate_many`) answers as a memory table would. The cache
    /// is emptied first when it could not take them all.
    pub fn warm<'k>(&mut self, keys: impl ExactSizeIterator<Item = &'k [Value]>) {
        if self.cache.key_count() + keys.len() > self.cache_rows {
            self.cache.clear();
        }
        for key in keys {
            let encoded = VersionedTable::<V>::encode_key(key);
            self.warm_one(key, &encoded);
        }
    }

    /// Applies a change (`row: None` deletes the key), as `VersionedTable::apply` does.
    pub fn apply(
        &mut self,
        key: &[Value],
        version: V,
        valid_from: EventTime,
        row: Option<&[Value]>,
    ) -> Applied {
        if self.cache.key_count() >= self.cache_rows {
            self.cache.clear();
        }
        let encoded = VersionedTable::<V>::encode_key(key);
        self.warm_one(key, &encoded);
        let before = self.cache.export_key(key).map(|v| v.len());
        let was_live = self.cache.get(key).is_some();
        let applied = self.cache.apply(key, version, valid_from, row);
        if applied == Applied::Stale {
            return applied;
        }
        let versions = self.stored_value(&self.cache.export_key(key).unwrap_or_default());
        match before {
            // Counts (restored from a snapshot, not trusted to be exact) saturate.
            None => {
                self.keys = self.keys.saturating_add(1);
                self.stored_bytes = self
                    .stored_bytes
                    .saturating_add((encoded.len() + versions.len()) as u64);
            }
            Some(n) => {
                self.stored_bytes = self
                    .stored_bytes
                    .saturating_add(versions.len() as u64)
                    .saturating_sub(n as u64);
            }
        }
        match (was_live, row.is_some()) {
            (false, true) => self.live = self.live.saturating_add(1),
            (true, false) => self.live = self.live.saturating_sub(1),
            _ => {}
        }
        if let Err(e) = self.rows.insert(&encoded, &versions) {
            self.fail("cannot write the store", e);
        }
        if let Err(e) = self.log.borrow_mut().append(&encoded, &versions) {
            self.fail("cannot append to the change log", e);
        }
        applied
    }

    /// Rows present (deleted keys excluded).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Keys held, deleted keys whose tombstone is kept included.
    pub fn key_count(&self) -> usize {
        self.keys
    }

    /// Reads of warmed keys (see `warm`).
    pub fn get(&self, key: &[Value]) -> Option<RowRef<'_>> {
        self.cache.get(key)
    }

    pub fn get_as_of(&self, key: &[Value], t: EventTime) -> Option<RowRef<'_>> {
        self.cache.get_as_of(key, t)
    }

    pub fn version_of(&self, key: &[Value]) -> Option<V> {
        self.cache.version_of(key)
    }

    pub fn locate_many<'k>(
        &self,
        keys: impl Iterator<Item = &'k [Value]>,
        out: &mut Vec<Option<Located>>,
    ) {
        self.cache.locate_many(keys, out);
    }

    pub fn row_at(&self, at: Located) -> Option<RowRef<'_>> {
        self.cache.row_at(at)
    }

    /// Drops history no lookup at or after `watermark - retention` can see: from the cache
    /// now, from stored keys when they are next loaded or the log is rewritten (as the last
    /// call would have: watermarks given never go backwards).
    pub fn expire(&mut self, watermark: EventTime) {
        self.cache.expire(watermark);
        self.expirations = self.expirations.saturating_add(1);
    }

    pub fn shrink_to_fit(&mut self) {
        self.cache.shrink_to_fit();
    }

    /// Memory used: the cache's.
    pub fn estimated_bytes(&self) -> usize {
        self.cache.estimated_bytes()
    }

    /// Every stored key with its versions, as they are after the last `expire`.
    fn for_each_stored(&self, mut f: impl FnMut(&[u8], &VersionedTable<V>, &[Value])) {
        let mut one = VersionedTable::<V>::new(self.retention_ms);
        one.set_expired_at(self.cache.expired_at());
        for guard in self.rows.iter() {
            let (k, v) = match guard.into_inner() {
                Ok(kv) => kv,
                Err(e) => {
                    self.fail("cannot read the store", e);
                    return;
                }
            };
            one.clear();
            let (written_after, versions) = split_checked(&v);
            if !one.import_key(versions, written_after < self.expirations) {
                continue;
            }
            let key: Vec<Value> = match postcard::from_bytes(&k) {
                Ok(key) => key,
                Err(e) => {
                    self.fail("a stored key does not decode", e);
                    continue;
                }
            };
            f(&k, &one, &key);
        }
    }

    /// Every key held (also deleted keys whose tombstone is kept), decoded.
    pub fn keys(&self) -> Vec<Box<[Value]>> {
        let mut out = Vec::new();
        self.for_each_stored(|_, _, key| out.push(key.to_vec().into_boxed_slice()));
        out
    }

    /// Every row held, current and historical, with its key (tombstones excluded).
    pub fn for_each_row(&self, mut f: impl FnMut(&[Value], &[Value])) {
        self.for_each_stored(|_, one, key| {
            for (_, row) in one.rows() {
                f(key, &row.values());
            }
        });
    }

    /// Every version held (as after the last `expire`), key by key and oldest first within
    /// a key, as `VersionedTable::for_each_version` gives them; an error if the store could
    /// not be read whole.
    pub fn for_each_version(
        &self,
        mut f: impl FnMut(&[Value], V, EventTime, Option<&[Value]>),
    ) -> Result<(), StateError> {
        self.for_each_stored(|_, one, key| {
            one.for_each_version(|_, version, valid_from, row| f(key, version, valid_from, row));
        });
        match self.failed.borrow().as_ref() {
            Some(e) => Err(io_error("cannot read the store", e)),
            None => Ok(()),
        }
    }

    /// How long (event time) history is kept (`None`: latest only).
    pub fn retention_ms(&self) -> Option<i64> {
        self.retention_ms
    }

    /// The highest watermark `expire` was given.
    pub fn expired_at(&self) -> Option<EventTime> {
        self.cache.expired_at()
    }

    /// Sets what `expire` was given last (a table rebuilt from another).
    pub fn set_expired_at(&mut self, at: Option<EventTime>) {
        self.cache.set_expired_at(at);
    }

    /// Rewrites the log as one segment holding every stored key (trimmed by the last
    /// `expire`), replacing the sealed segments.
    fn rewrite_log(&self) -> std::io::Result<()> {
        let mut fresh = ChangeLog {
            dir: self.log.borrow().dir.clone(),
            sealed: Vec::new(),
            open: None,
            base_bytes: 0,
            retired: Vec::new(),
        };
        let mut result = Ok(());
        self.for_each_stored(|k, one, key| {
            if result.is_ok()
                && let Some(v) = one.export_key(key)
            {
                result = fresh.append(k, &self.stored_value(&v));
            }
        });
        result?;
        if let Some(e) = self.failed.borrow().as_ref() {
            // The store could not be read whole: the old log stays.
            return Err(std::io::Error::other(e.clone()));
        }
        fresh.seal()?;
        let mut log = self.log.borrow_mut();
        let old: Vec<Segment> = log.sealed.drain(..).collect();
        log.retired.extend(old.into_iter().map(|s| (s, 0)));
        log.base_bytes = fresh.sealed_bytes();
        log.sealed = std::mem::take(&mut fresh.sealed);
        Ok(())
    }

    /// Seals the change log and encodes the table; the log's segments go into `blobs` as
    /// files.
    pub fn snapshot(&self, blobs: &mut Blobs) -> Result<Vec<u8>, StateError> {
        if let Err(e) = self.db.persist(fjall::PersistMode::Buffer) {
            self.fail("cannot flush the store", e);
        }
        if let Some(e) = self.failed.borrow().as_ref() {
            return Err(io_error("the table lost a write", e));
        }
        {
            let mut log = self.log.borrow_mut();
            for (s, age) in &mut log.retired {
                *age += 1;
                if *age > RETIRED_FOR {
                    let _ = std::fs::remove_file(&s.path);
                }
            }
            log.retired.retain(|(_, age)| *age <= RETIRED_FOR);
            if let Err(e) = log.seal() {
                drop(log);
                self.fail("cannot seal the change log", &e);
                return Err(io_error("cannot seal the change log", e));
            }
        }
        let (sealed, base) = {
            let log = self.log.borrow();
            (log.sealed_bytes(), log.base_bytes)
        };
        if self.log.borrow().sealed.len() > 1
            && sealed
                > base
                    .max(self.stored_bytes)
                    .saturating_mul(2)
                    .saturating_add(64 << 20)
        {
            self.rewrite_log()
                .map_err(|e| io_error("cannot rewrite the change log", e))?;
        }
        let log = self.log.borrow();
        for s in &log.sealed {
            blobs.insert(
                s.id.clone(),
                Blob::File {
                    path: s.path.clone(),
                    bytes: s.bytes,
                    crc32: s.crc32,
                },
            );
        }
        postcard::to_allocvec(&Image {
            retention_ms: self.retention_ms,
            expired_at: self.cache.expired_at(),
            live: self.live,
            keys: self.keys,
            stored_bytes: self.stored_bytes,
            expirations: self.expirations,
            base_bytes: log.base_bytes,
            segments: log.sealed.iter().map(|s| s.id.clone()).collect(),
        })
        .map_err(|e| StateError::encode("disk table", e))
    }

    /// The table `snapshot` encoded: its log's segments (from `blobs`) replayed into a new
    /// store.
    pub fn restore(
        bytes: &[u8],
        blobs: &Blobs,
        opts: &DiskOptions,
        shape: Shape,
    ) -> Result<DiskTable<V>, StateError> {
        let fail = |reason: String| StateError::decode("disk table", reason);
        let image: Image = postcard::from_bytes(bytes).map_err(|e| fail(e.to_string()))?;
        let mut t = DiskTable::new(image.retention_ms, opts)?;
        t.cache.set_expired_at(image.expired_at);
        t.live = image.live;
        t.keys = image.keys;
        t.stored_bytes = image.stored_bytes;
        t.expirations = image.expirations;
        let mut sealed = Vec::new();
        for id in &image.segments {
            let blob = blobs
                .get(id)
                .ok_or_else(|| fail(format!("the checkpoint lacks log segment {id}")))?;
            let path = t.log.borrow().dir.join(id);
            let crc32 = match blob {
                Blob::File {
                    path: from, crc32, ..
                } => {
                    if std::fs::hard_link(from, &path).is_err() {
                        std::fs::copy(from, &path)
                            .map_err(|e| fail(format!("cannot copy {}: {e}", from.display())))?;
                    }
                    *crc32
                }
                Blob::Bytes(b) => {
                    std::fs::write(&path, b)
                        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
                    crc32fast::hash(b)
                }
            };
            t.replay(&path, shape)?;
            sealed.push(Segment {
                id: id.clone(),
                path,
                bytes: blob.len(),
                crc32,
            });
        }
        {
            let mut log = t.log.borrow_mut();
            log.sealed = sealed;
            log.base_bytes = image.base_bytes;
        }
        Ok(t)
    }

    /// Writes a segment's changes into the store, in order, each checked first: a key of
    /// `shape`, and versions that decode (what the store holds is trusted afterwards).
    fn replay(&self, path: &Path, shape: Shape) -> Result<(), StateError> {
        let fail = |reason: String| {
            StateError::decode("disk table", format!("{}: {reason}", path.display()))
        };
        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
        // No length in the segment can exceed what is left of it.
        let mut left = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut batch = self.db.batch();
        let mut in_batch = 0;
        let (mut key, mut versions) = (Vec::new(), Vec::new());
        let mut change = 0u64;
        let mut read_part = |input: &mut BufReader<File>, buf: &mut Vec<u8>, n: usize| {
            if n as u64 > left {
                return Err("a length runs past the end of the segment".to_string());
            }
            left -= n as u64;
            buf.resize(n, 0);
            input.read_exact(buf).map_err(|e| e.to_string())
        };
        while let Some(n) = read_varint(&mut input).map_err(|e| fail(e.to_string()))? {
            change += 1;
            let bad = |why: String| fail(format!("change {change}: {why}"));
            read_part(&mut input, &mut key, n).map_err(bad)?;
            let m = read_varint(&mut input)
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad("it is cut short".into()))?;
            read_part(&mut input, &mut versions, m).map_err(bad)?;
            VersionedTable::<V>::check_key(&key, shape)
                .map_err(|e| bad(format!("its key: {e}")))?;
            let (_, exported) = split_stored(&versions)
                .ok_or_else(|| bad("its expiration count does not decode".into()))?;
            VersionedTable::<V>::check_exported(exported, &key, shape).map_err(bad)?;
            batch.insert(&self.rows, &key[..], &versions[..]);
            in_batch += 1;
            if in_batch == REPLAY_BATCH {
                batch.commit().map_err(|e| fail(e.to_string()))?;
                batch = self.db.batch();
                in_batch = 0;
            }
        }
        batch.commit().map_err(|e| fail(e.to_string()))?;
        Ok(())
    }
}

/// (`expire` calls before it was written, versions) of a stored value; `None` if the count
/// does not decode.
fn split_stored(value: &[u8]) -> Option<(u64, &[u8])> {
    take_varint(value).map(|(n, rest)| (n as u64, rest))
}

/// `split_stored` of a value in the store, which `apply` wrote or `replay` checked.
fn split_checked(value: &[u8]) -> (u64, &[u8]) {
    split_stored(value).expect("stored values were checked")
}

/// A varint, or `None` at the end of the input (before its first byte).
fn read_varint(input: &mut impl Read) -> std::io::Result<Option<usize>> {
    let (mut v, mut shift) = (0usize, 0);
    let mut b = [0u8; 1];
    loop {
        if input.read(&mut b)? == 0 {
            return if shift == 0 {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "a length is cut short",
                ))
            };
        }
        if shift > 56 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a length is too long",
            ));
        }
        v |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(i: i64) -> Vec<Value> {
        vec![Value::Int(i)]
    }

    fn got(r: Option<RowRef<'_>>) -> Option<Vec<Value>> {
        r.map(|r| r.values().to_vec())
    }

    #[derive(Clone, Debug)]
    enum Step {
        Apply {
            key: i64,
            version: u64,
            value: Option<i64>,
        },
        Expire(i64),
        Checkpoint,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                8 => (0i64..12, 0u64..200, prop::option::weighted(0.8, 0i64..100))
                    .prop_map(|(key, version, value)| Step::Apply { key, version, value }),
                1 => (0i64..400).prop_map(Step::Expire),
                1 => Just(Step::Checkpoint),
            ],
            1..150,
        )
    }

    /// Every lookup a join makes, on every key, at a few times.
    fn assert_same(disk: &mut DiskTable<u64>, memory: &VersionedTable<u64>) {
        let keys: Vec<Vec<Value>> = (0..14).map(k).collect();
        for key in &keys {
            disk.warm(std::iter::once(&key[..]));
            assert_eq!(got(disk.get(key)), got(memory.get(key)), "key {key:?}");
            assert_eq!(disk.version_of(key), memory.version_of(key), "key {key:?}");
            for t in [0, 500, 1_500, 5_000] {
                assert_eq!(
                    got(disk.get_as_of(key, t)),
                    got(memory.get_as_of(key, t)),
                    "key {key:?} as of {t}"
                );
            }
        }
        disk.warm(keys.iter().map(|k| &k[..]));
        let mut located = Vec::new();
        disk.locate_many(keys.iter().map(|k| &k[..]), &mut located);
        for (key, at) in keys.iter().zip(&located) {
            assert_eq!(got(at.and_then(|at| disk.row_at(at))), got(memory.get(key)));
        }
        assert_eq!(disk.len(), memory.len());
    }

    fn options(dir: &Path, cache_rows: usize) -> DiskOptions {
        DiskOptions {
            dir: Some(dir.to_path_buf()),
            cache_rows,
        }
    }

    /// Regression: a change log segment whose checksum was valid but whose lengths were not
    /// made the replay allocate what a length said (aborting the process), and a stored
    /// value that did not decode panicked at its first lookup.
    #[test]
    fn a_change_log_that_does_not_decode_is_refused_at_restore() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 10);
        let mut t: DiskTable<u64> = DiskTable::new(None, &opts).unwrap();
        for i in 0..5 {
            t.apply(
                &k(i),
                i as u64 + 1,
                0,
                Some(&[Value::Int(i), Value::Int(i)]),
            );
        }
        let mut blobs = Blobs::new();
        let bytes = t.snapshot(&mut blobs).unwrap();
        let (id, blob) = blobs.iter().next().unwrap();
        let segment = blob.load().unwrap().to_vec();
        let shape = Shape { key: 1, row: 2 };
        let restore_with = |segment: Vec<u8>| {
            let mut spoilt = blobs.clone();
            spoilt.insert(id.clone(), Blob::Bytes(segment.into()));
            DiskTable::<u64>::restore(&bytes, &spoilt, &opts, shape).map(|_| ())
        };
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f].to_vec();
        let e = restore_with(huge).unwrap_err().to_string();
        assert!(e.contains("change 1") && e.contains("past the end"), "{e}");
        // The first change's versions, their last byte spoilt.
        let mut bad = segment.clone();
        let key_len = bad[0] as usize;
        let versions_len = bad[1 + key_len] as usize;
        bad[1 + key_len + versions_len] = 0xff;
        let e = restore_with(bad).unwrap_err().to_string();
        assert!(e.contains("change 1"), "{e}");
        let e = DiskTable::<u64>::restore(&bytes, &blobs, &opts, Shape { key: 2, row: 2 })
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("its key"), "{e}");
        assert!(restore_with(segment).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Oracle: a disk table with a tiny cache answers every lookup as a memory table given
        /// the same changes does, also after being restored from any of its snapshots (which
        /// share their earlier log segments).
        #[test]
        fn a_disk_table_answers_as_a_memory_table(steps in steps(), retention in prop::option::of(0i64..1_000)) {
            let dir = tempfile::tempdir().unwrap();
            let opts = options(dir.path(), 3);
            let mut disk: DiskTable<u64> = DiskTable::new(retention, &opts).unwrap();
            let mut memory: VersionedTable<u64> = VersionedTable::new(retention);
            let mut earlier: Option<Blobs> = None;
            // Watermarks never go backwards.
            let mut watermark = 0;
            for (i, step) in steps.iter().enumerate() {
                match step {
                    Step::Apply { key, version, value } => {
                        let row = value.map(|v| vec![Value::Int(*key), Value::Int(v)]);
                        let at = i as i64 * 10;
                        prop_assert_eq!(
                            disk.apply(&k(*key), *version, at, row.as_deref()),
                            memory.apply(&k(*key), *version, at, row.as_deref())
                        );
                    }
                    Step::Expire(advance) => {
                        watermark += advance;
                        disk.expire(watermark);
                        memory.expire(watermark);
                    }
                    Step::Checkpoint => {
                        let mut blobs = Blobs::new();
                        let bytes = disk.snapshot(&mut blobs).unwrap();
                        if let Some(before) = &earlier {
                            for id in before.keys() {
                                prop_assert!(blobs.contains_key(id), "segment {} is shared", id);
                            }
                        }
                        earlier = Some(blobs.clone());
                        disk = DiskTable::restore(&bytes, &blobs, &opts, Shape { key: 1, row: 2 }).unwrap();
                    }
                }
            }
            assert_same(&mut disk, &memory);
        }
    }

    #[test]
    fn working_copies_left_by_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 10);
        let live: DiskTable<u64> = DiskTable::new(None, &opts).unwrap();
        // A process killed after locking (its lock file is free now), and one killed while
        // removing its copy (no lock file left).
        for name in ["watershed-table-dead", "watershed-table-half"] {
            std::fs::create_dir_all(dir.path().join(name).join("db")).unwrap();
        }
        std::fs::write(dir.path().join("watershed-table-dead.lock"), b"").unwrap();
        let other: DiskTable<u64> = DiskTable::new(None, &opts).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| !n.contains("dead") && !n.contains("half"))
        );
        drop((live, other));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_log_is_rewritten_when_it_outgrows_the_table_and_keys_and_rows_list_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 10);
        let mut t: DiskTable<u64> = DiskTable::new(None, &opts).unwrap();
        let payload = Value::from("p".repeat(1000).as_str());
        let mut version = 0;
        // 50 keys rewritten 1,500 times: the log far outgrows the 50 rows it describes.
        let (mut earlier, mut rewrites): (Vec<Blobs>, usize) = (Vec::new(), 0);
        for round in 0..1_500i64 {
            for key in 0..50i64 {
                version += 1;
                let row = [Value::Int(key), Value::Int(round), payload.clone()];
                t.apply(&k(key), version, 0, Some(&row));
            }
            if round % 100 == 99 {
                let mut blobs = Blobs::new();
                t.snapshot(&mut blobs).unwrap();
                // The segments a rewrite replaced outlive it: a checkpoint still being
                // written may name them.
                if let Some(before) = earlier.last()
                    && before.keys().any(|id| !blobs.contains_key(id))
                {
                    rewrites += 1;
                    for b in before.values() {
                        let Blob::File { path, .. } = b else {
                            panic!("log segments are files")
                        };
                        assert!(path.exists(), "{} removed too early", path.display());
                    }
                }
                earlier.push(blobs);
            }
        }
        assert!(rewrites > 0, "the log was never rewritten");
        let mut blobs = Blobs::new();
        let bytes = t.snapshot(&mut blobs).unwrap();

        let logged: u64 = blobs.values().map(Blob::len).sum();
        // 75,000 changes of about 1 KB were logged; a rewrite keeps the 50 rows and what came after.
        assert!(logged < 20_000_000, "{logged} bytes of log for 50 rows");
        let r: DiskTable<u64> =
            DiskTable::restore(&bytes, &blobs, &opts, Shape { key: 1, row: 3 }).unwrap();
        let mut keys = r.keys();
        keys.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(keys.len(), 50);
        let mut rows = 0;
        r.for_each_row(|key, row| {
            assert_eq!(row[0], key[0]);
            assert_eq!(row[1], Value::Int(1_499));
            rows += 1;
        });
        assert_eq!((rows, r.len(), r.key_count()), (50, 50, 50));
    }
}
