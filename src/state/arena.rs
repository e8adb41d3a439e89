//! `Arena`: the append-only bytes behind a `VersionedTable`, kept in chunks so that a
//! checkpoint copies only what changed.
//!
//! Records are appended to the tail chunk. Once the tail holds `CHUNK_LIMIT` bytes it is
//! frozen: it gets a unique id, becomes an immutable `Arc<[u8]>` and never changes again
//! (compaction writes a new arena instead). A snapshot therefore shares every frozen chunk
//! with the checkpoint by reference (`Blobs`, no copy) and copies only the tail; the
//! checkpoint store writes a chunk to disk once and lets later checkpoints point at the same
//! file. A restored arena keeps its chunks' ids, so a run restarted from a checkpoint does
//! not write them again either.
//!
//! A record's offset is a `u32`: the chunk's number in the high bits and the place in the
//! chunk in the low `chunk_bits` (24: chunks of 16 MiB, up to 256 of them). A record starts
//! below the chunk limit in its chunk; a record larger than that simply makes its chunk
//! longer. `WATERSHED_ARENA_CHUNK_BITS` (8 to 24) sets smaller chunks, so that tests of the
//! whole binary share chunks between checkpoints with small tables; unit tests use 10.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StateError;
use crate::state::{Blob, Blobs};

const CHUNK_BITS: u32 = 24;
/// Unit tests use chunks of 1 KiB, so that small tables span many.
const TEST_CHUNK_BITS: u32 = 10;

/// Bits of an offset that address a record in its chunk (`CHUNK_BITS` unless the environment
/// sets fewer).
fn chunk_bits() -> u32 {
    static BITS: OnceLock<u32> = OnceLock::new();
    *BITS.get_or_init(|| {
        let default = if cfg!(test) {
            TEST_CHUNK_BITS
        } else {
            CHUNK_BITS
        };
        std::env::var("WATERSHED_ARENA_CHUNK_BITS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|b| (8..=CHUNK_BITS).contains(b))
            .unwrap_or(default)
    })
}

struct Chunk {
    id: String,
    bytes: Arc<[u8]>,
}

/// What a snapshot of an arena records: its chunk size, its frozen chunks by id (their bytes
/// travel as blobs) and a copy of the tail.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ArenaImage {
    bits: u32,
    chunks: Vec<String>,
    #[serde(with = "serde_bytes")]
    tail: Vec<u8>,
}

pub struct Arena {
    /// See `chunk_bits`; a chunk is frozen once it holds `1 << bits` bytes.
    bits: u32,
    frozen: Vec<Chunk>,
    /// Bytes of the frozen chunks.
    frozen_len: usize,
    tail: Vec<u8>,
}

/// An id no other chunk or blob of any run has: `prefix`, this process's nonce and a counter.
pub fn unique_id(prefix: &str) -> String {
    static NONCE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 40)
    });
    format!(
        "{prefix}-{nonce:016x}-{:06}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Default for Arena {
    fn default() -> Arena {
        Arena {
            bits: chunk_bits(),
            frozen: Vec::new(),
            frozen_len: 0,
            tail: Vec::new(),
        }
    }
}

impl Arena {
    pub fn new() -> Arena {
        Arena::default()
    }

    /// An empty arena with room for `bytes` in its first chunk.
    pub fn with_capacity(bytes: usize) -> Arena {
        let mut arena = Arena::default();
        arena.tail = Vec::with_capacity(bytes.min(arena.chunk_capacity()));
        arena
    }

    fn limit(&self) -> usize {
        1 << self.bits
    }

    /// Bytes after which a chunk is frozen: every record starts below it in its chunk.
    pub fn chunk_limit(&self) -> usize {
        self.limit()
    }

    /// What a tail is allocated with: the limit and room for the record that crosses it.
    fn chunk_capacity(&self) -> usize {
        self.limit() + self.limit() / 8
    }

    /// The offset the next record gets; call before appending its bytes with `tail`.
    pub fn begin_record(&mut self) -> u32 {
        if self.tail.len() >= self.limit() {
            self.freeze();
        }
        // The last chunk number is never used: its last offset would be `u32::MAX`, which
        // records use for "no previous version".
        assert!(
            self.frozen.len() < (1 << (32 - self.bits)) - 1,
            "a table's arena stays below 4 GiB"
        );
        ((self.frozen.len() as u32) << self.bits) | self.tail.len() as u32
    }

    /// Where the bytes of the record begun last go.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    fn freeze(&mut self) {
        let bytes: Arc<[u8]> = Arc::from(std::mem::take(&mut self.tail));
        self.frozen_len += bytes.len();
        self.frozen.push(Chunk {
            id: unique_id("chunk"),
            bytes,
        });
        self.tail = Vec::with_capacity(self.chunk_capacity());
    }

    /// The chunk holding `offset`, and the record's place in it.
    #[inline]
    pub fn at(&self, offset: u32) -> (&[u8], usize) {
        let chunk = (offset >> self.bits) as usize;
        let within = (offset as usize) & (self.limit() - 1);
        match self.frozen.get(chunk) {
            Some(c) => (&c.bytes, within),
            None => (&self.tail, within),
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.frozen_len + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frozen.is_empty() && self.tail.is_empty()
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.frozen_len + self.tail.capacity()
    }

    pub fn shrink_to_fit(&mut self) {
        self.tail.shrink_to_fit();
    }

    /// Every chunk in order, with the offset of its first byte.
    pub fn chunks(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.frozen
            .iter()
            .map(|c| &c.bytes[..])
            .chain(std::iter::once(&self.tail[..]))
            .enumerate()
            .map(move |(i, bytes)| ((i as u32) << self.bits, bytes))
    }

    /// Shares the frozen chunks into `blobs` and copies the tail.
    pub fn image(&self, blobs: &mut Blobs) -> ArenaImage {
        for c in &self.frozen {
            blobs.insert(c.id.clone(), Blob::Bytes(Arc::clone(&c.bytes)));
        }
        ArenaImage {
            bits: self.bits,
            chunks: self.frozen.iter().map(|c| c.id.clone()).collect(),
            tail: self.tail.clone(),
        }
    }

    /// The arena an image was taken of; its chunks come from `blobs`.
    pub fn from_image(image: ArenaImage, blobs: &Blobs) -> Result<Arena, StateError> {
        let frozen = image
            .chunks
            .into_iter()
            .map(|id| match blobs.get(&id).map(Blob::load) {
                Some(Ok(bytes)) => Ok(Chunk { bytes, id }),
                Some(Err(e)) => Err(StateError::decode(
                    "versioned table",
                    format!("cannot read chunk {id}: {e}"),
                )),
                None => Err(StateError::decode(
                    "versioned table",
                    format!("the checkpoint lacks chunk {id}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(8..=CHUNK_BITS).contains(&image.bits) || frozen.len() >= (1 << (32 - image.bits)) - 1 {
            return Err(StateError::decode(
                "versioned table",
                format!(
                    "{} chunks of 2^{} bytes is not an arena",
                    frozen.len(),
                    image.bits
                ),
            ));
        }
        Ok(Arena {
            bits: image.bits,
            frozen_len: frozen.iter().map(|c| c.bytes.len()).sum(),
            frozen,
            tail: image.tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(a: &mut Arena, bytes: &[u8]) -> u32 {
        let off = a.begin_record();
        a.tail().extend_from_slice(bytes);
        off
    }

    #[test]
    fn full_chunks_freeze_and_offsets_keep_finding_records() {
        let mut a = Arena::new();
        let record = vec![7u8; (1 << TEST_CHUNK_BITS) / 3 + 1];
        let offs: Vec<u32> = (0..7u8)
            .map(|i| {
                let mut r = record.clone();
                r[0] = i;
                append(&mut a, &r)
            })
            .collect();
        // Three records fill a chunk past its limit; the next starts the next chunk.
        assert_eq!(a.frozen.len(), 2);
        for (i, &off) in offs.iter().enumerate() {
            let (bytes, at) = a.at(off);
            assert_eq!(bytes[at], i as u8);
        }
        let mut blobs = Blobs::new();
        let image = a.image(&mut blobs);
        assert_eq!(blobs.len(), 2);
        let b = Arena::from_image(image, &blobs).unwrap();
        assert_eq!(b.len(), a.len());
        // Restored chunks keep their ids: a second image shares the same blobs.
        let mut again = Blobs::new();
        b.image(&mut again);
        assert_eq!(
            again.keys().collect::<Vec<_>>(),
            blobs.keys().collect::<Vec<_>>()
        );
        assert!(Arena::from_image(b.image(&mut Blobs::new()), &Blobs::new()).is_err());
    }

    #[test]
    fn chunk_ids_are_unique() {
        let a = unique_id("chunk");
        let b = unique_id("chunk");
        assert_ne!(a, b);
    }
}
