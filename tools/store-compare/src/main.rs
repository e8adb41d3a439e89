//! Measures an embedded key-value store on the workload of a large materialized reference
//! table: N small keys written in batches (a CDC snapshot), random point gets (enrichment
//! misses), updates, a durable snapshot for a checkpoint, and a reopen (recovery).
//!
//! `cargo run --release --features rocksdb -- --store rocksdb --keys 10000000 --dir /tmp/sc`
//! `cargo run --release --features fjall -- --store fjall --keys 10000000 --dir /tmp/sc`

use std::path::{Path, PathBuf};
use std::time::Instant;

const VALUE_LEN: usize = 64;
const BATCH: usize = 1000;

struct Args {
    store: String,
    keys: u64,
    gets: u64,
    updates: u64,
    dir: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        store: String::new(),
        keys: 10_000_000,
        gets: 2_000_000,
        updates: 1_000_000,
        dir: PathBuf::from("/tmp/store-compare"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => args.store = value,
            "--keys" => args.keys = value.parse().expect("--keys"),
            "--gets" => args.gets = value.parse().expect("--gets"),
            "--updates" => args.updates = value.parse().expect("--updates"),
            "--dir" => args.dir = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The i-th key of a pseudo-random permutation of 0..n (an odd multiplier modulo 2^64 is a
/// bijection), written as a 16-byte key.
fn key(i: u64) -> [u8; 16] {
    let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = *b"cve-000000000000";
    let hex = format!("{:012x}", k >> 16);
    out[4..].copy_from_slice(hex.as_bytes());
    out
}

fn value(i: u64, round: u64) -> [u8; VALUE_LEN] {
    let mut v = [b'x'; VALUE_LEN];
    let s = format!(
        "{{\"id\":{i},\"round\":{round},\"score\":{}}}",
        (i * 7 + round) % 100
    );
    v[..s.len()].copy_from_slice(s.as_bytes());
    v
}

/// xorshift, so the get order is random but the same in every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

trait Store {
    fn put_batch(&mut self, items: &[([u8; 16], [u8; VALUE_LEN])]);
    fn get(&self, key: &[u8]) -> Option<usize>;
    /// Makes everything written so far durable.
    fn sync(&mut self);
    /// Writes a durable, self-contained copy of the current state under `dir`.
    fn snapshot(&mut self, dir: &Path);
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

/// Inodes of the files under `path`, with their sizes.
fn inodes(path: &Path, out: &mut Vec<(u64, u64)>) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                inodes(&e.path(), out);
            } else {
                out.push((m.ino(), m.len()));
            }
        }
    }
}

/// Bytes of the files under `path` that are not (hard links of) files under `earlier`.
fn new_bytes(earlier: &Path, path: &Path) -> u64 {
    let (mut before, mut now) = (Vec::new(), Vec::new());
    inodes(earlier, &mut before);
    inodes(path, &mut now);
    let before: std::collections::HashSet<u64> = before.into_iter().map(|(i, _)| i).collect();
    now.into_iter()
        .filter(|(i, _)| !before.contains(i))
        .map(|(_, len)| len)
        .sum()
}

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn cpu_s() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc_rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { getrusage(0, usage.as_mut_ptr()) };
    let u = unsafe { usage.assume_init() };
    (u.utime_s + u.stime_s) as f64 + (u.utime_us + u.stime_us) as f64 / 1e6
}

#[repr(C)]
struct libc_rusage {
    utime_s: i64,
    utime_us: i64,
    stime_s: i64,
    stime_us: i64,
    rest: [i64; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
}

fn phase<T>(name: &str, ops: u64, f: impl FnOnce() -> T) -> T {
    let (wall, cpu) = (Instant::now(), cpu_s());
    let out = f();
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_s() - cpu);
    if ops > 0 {
        println!(
            "{name:<28} {wall:>8.2} s wall {cpu:>8.2} s cpu {:>10.0} ops/s {:>10.0} ops/cpu-s",
            ops as f64 / wall,
            ops as f64 / cpu
        );
    } else {
        println!("{name:<28} {wall:>8.2} s wall {cpu:>8.2} s cpu");
    }
    out
}

fn run(args: &Args, open: &dyn Fn(&Path) -> Box<dyn Store>) {
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).unwrap();
    let db_dir = args.dir.join("db");
    let mut store = open(&db_dir);
    let write =
        |store: &mut Box<dyn Store>, n: u64, round: u64, pick: &mut dyn FnMut(u64) -> u64| {
            let mut batch = Vec::with_capacity(BATCH);
            for i in 0..n {
                let k = pick(i);
                batch.push((key(k), value(k, round)));
                if batch.len() == BATCH {
                    store.put_batch(&batch);
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                store.put_batch(&batch);
            }
        };
    phase("put (batches of 1000)", args.keys, || {
        write(&mut store, args.keys, 0, &mut |i| i)
    });
    phase("sync", 0, || store.sync());
    println!(
        "on disk after load           {:>8} MB",
        du(&db_dir) / 1_000_000
    );
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let hits = phase("random get (hits)", args.gets, || {
        (0..args.gets)
            .filter(|_| store.get(&key(rng.next() % args.keys)).is_some())
            .count()
    });
    assert_eq!(hits as u64, args.gets, "every key written must be found");
    let misses = phase("random get (misses)", args.gets / 2, || {
        (0..args.gets / 2)
            .filter(|_| {
                store
                    .get(&key(args.keys + rng.next() % args.keys))
                    .is_some()
            })
            .count()
    });
    assert_eq!(misses, 0);
    phase("snapshot 1 (full)", 0, || {
        store.snapshot(&args.dir.join("snap-1"))
    });
    println!(
        "snapshot 1 size              {:>8} MB",
        du(&args.dir.join("snap-1")) / 1_000_000
    );
    let mut upd = Rng(0xDEAD_BEEF);
    phase("update (random keys)", args.updates, || {
        write(&mut store, args.updates, 1, &mut |_| upd.next() % args.keys)
    });
    phase("snapshot 2 (after updates)", 0, || {
        store.snapshot(&args.dir.join("snap-2"))
    });
    println!(
        "snapshot 2 new bytes         {:>8} MB",
        new_bytes(&args.dir.join("snap-1"), &args.dir.join("snap-2")) / 1_000_000
    );
    drop(store);
    let store = phase("reopen", 0, || open(&db_dir));
    phase("random get after reopen", args.gets, || {
        (0..args.gets)
            .filter(|_| store.get(&key(rng.next() % args.keys)).is_some())
            .count()
    });
    println!(
        "on disk at end               {:>8} MB",
        du(&db_dir) / 1_000_000
    );
    println!("peak RSS                     {:>8} MB", peak_rss_mb());
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::*;
    use rocksdb::{DB, Options, WriteBatch, checkpoint::Checkpoint};

    pub struct Rocks(DB);

    pub fn open(path: &Path) -> Box<dyn Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        Box::new(Rocks(DB::open(&opts, path).unwrap()))
    }

    impl Store for Rocks {
        fn put_batch(&mut self, items: &[([u8; 16], [u8; VALUE_LEN])]) {
            let mut batch = WriteBatch::default();
            for (k, v) in items {
                batch.put(k, v);
            }
            self.0.write(batch).unwrap();
        }
        fn get(&self, key: &[u8]) -> Option<usize> {
            self.0.get_pinned(key).unwrap().map(|v| v.len())
        }
        fn sync(&mut self) {
            self.0.flush().unwrap();
        }
        fn snapshot(&mut self, dir: &Path) {
            // Flushes the memtable and hard-links the SST files (copies only what cannot be linked).
            Checkpoint::new(&self.0)
                .unwrap()
                .create_checkpoint(dir)
                .unwrap();
        }
    }
}

#[cfg(feature = "fjall")]
mod lsm {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
    use std::io::Write;

    pub struct Fjall {
        db: Database,
        rows: Keyspace,
    }

    pub fn open(path: &Path) -> Box<dyn Store> {
        let db = Database::builder(path).open().unwrap();
        let rows = db.keyspace("rows", KeyspaceCreateOptions::default).unwrap();
        Box::new(Fjall { db, rows })
    }

    impl Store for Fjall {
        fn put_batch(&mut self, items: &[([u8; 16], [u8; VALUE_LEN])]) {
            let mut batch = self.db.batch();
            for (k, v) in items {
                batch.insert(&self.rows, k.as_slice(), v.as_slice());
            }
            batch.commit().unwrap();
        }
        fn get(&self, key: &[u8]) -> Option<usize> {
            self.rows.get(key).unwrap().map(|v| v.len())
        }
        fn sync(&mut self) {
            self.db.persist(PersistMode::SyncAll).unwrap();
        }
        fn snapshot(&mut self, dir: &Path) {
            // fjall has no checkpoint (hard-link) API: the only self-contained copy is an
            // export of a read snapshot, written length-prefixed and fsynced.
            std::fs::create_dir_all(dir).unwrap();
            let file = std::fs::File::create(dir.join("rows")).unwrap();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let snapshot = self.db.snapshot();
            use fjall::Readable;
            for guard in snapshot.iter(&self.rows) {
                let (k, v) = guard.into_inner().unwrap();
                out.write_all(&(k.len() as u32).to_le_bytes()).unwrap();
                out.write_all(&k).unwrap();
                out.write_all(&(v.len() as u32).to_le_bytes()).unwrap();
                out.write_all(&v).unwrap();
            }
            out.into_inner().unwrap().sync_all().unwrap();
        }
    }
}

fn main() {
    let args = parse_args();
    println!(
        "store {} · {} keys of 16 bytes, values of {VALUE_LEN} bytes",
        args.store, args.keys
    );
    match args.store.as_str() {
        #[cfg(feature = "rocksdb")]
        "rocksdb" => run(&args, &rocks::open),
        #[cfg(feature = "fjall")]
        "fjall" => run(&args, &lsm::open),
        other => panic!("store {other} is not built in (features rocksdb, fjall)"),
    }
}
