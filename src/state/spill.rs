//! `SpillQueue`: a first-in first-out buffer that keeps its oldest items in memory, up to a
//! limit of their weights (e.g. rows of a batch), and appends the rest to an anonymous local file (removed when the queue is
//! dropped), so an operator that must hold many records (an enrichment gate waiting for a
//! snapshot) stays bounded in memory and loses nothing.
//!
//! Items are written length-prefixed in postcard. The file is only read back by `drain`
//! (and `to_vec`, for checkpoints). An I/O error while spilling keeps the item in memory
//! (logged once): memory grows, but nothing is lost.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct SpillQueue<T> {
    memory_limit: usize,
    memory: VecDeque<T>,
    memory_weight: usize,
    spilled_weight: usize,
    /// The spill file (behind a lock so that a snapshot, which only reads, can flush it).
    file: Option<Mutex<BufWriter<File>>>,
    /// Bytes written to the spill file.
    file_len: u64,
    /// Where each spilled item starts in the file.
    offsets: Vec<u64>,
    spilled: usize,
    /// Items that could not be spilled (kept in memory after the spilled ones).
    overflow: Vec<T>,
    io_error_logged: bool,
}

impl<T: Serialize + DeserializeOwned> SpillQueue<T> {
    /// A queue keeping items of at most `memory_limit` total weight in memory (and always
    /// at least one item).
    pub fn new(memory_limit: usize) -> SpillQueue<T> {
        SpillQueue {
            memory_limit: memory_limit.max(1),
            memory: VecDeque::new(),
            memory_weight: 0,
            spilled_weight: 0,
            file: None,
            file_len: 0,
            offsets: Vec::new(),
            spilled: 0,
            overflow: Vec::new(),
            io_error_logged: false,
        }
    }

    pub fn len(&self) -> usize {
        self.memory.len() + self.spilled + self.overflow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Weight of the items written to the spill file so far.
    pub fn spilled_weight(&self) -> usize {
        self.spilled_weight
    }

    /// Appends an item of `weight` (at least 1).
    pub fn push(&mut self, item: T, weight: usize) {
        let weight = weight.max(1);
        if self.spilled == 0
            && self.overflow.is_empty()
            && (self.memory.is_empty() || self.memory_weight + weight <= self.memory_limit)
        {
            self.memory_weight += weight;
            self.memory.push_back(item);
            return;
        }
        if self.overflow.is_empty() {
            match self.spill(&item) {
                Ok(()) => {
                    self.spilled += 1;
                    self.spilled_weight += weight;
                    return;
                }
                Err(e) => {
                    if !self.io_error_logged {
                        self.io_error_logged = true;
                        tracing::error!(error = %e, "cannot spill to a local file: buffering in memory");
                    }
                }
            }
        }
        self.overflow.push(item);
    }

    fn spill(&mut self, item: &T) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(Mutex::new(BufWriter::with_capacity(
                1 << 20,
                tempfile::tempfile()?,
            )));
        }
        let bytes = postcard::to_allocvec(item).map_err(std::io::Error::other)?;
        let mut w = self
            .file
            .as_ref()
            .expect("created")
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.write_all(&(bytes.len() as u32).to_le_bytes())?;
        w.write_all(&bytes)?;
        self.offsets.push(self.file_len);
        self.file_len += 4 + bytes.len() as u64;
        Ok(())
    }

    /// Reads the spilled items from the `from`-th on back, in order, without moving the
    /// write position.
    fn read_spilled(&self, from: usize) -> std::io::Result<Vec<T>> {
        let Some(file) = &self.file else {
            return Ok(Vec::new());
        };
        let Some(&start) = self.offsets.get(from) else {
            return Ok(Vec::new());
        };
        let mut w = file.lock().unwrap_or_else(|e| e.into_inner());
        w.flush()?;
        let mut bytes = vec![0u8; (self.file_len - start) as usize];
        w.get_ref().read_exact_at(&mut bytes, start)?;
        let mut out = Vec::with_capacity(self.spilled - from);
        let mut rest = &bytes[..];
        for _ in from..self.spilled {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| std::io::Error::other("spill file is truncated"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(std::io::Error::other("spill file is truncated"));
            }
            out.push(postcard::from_bytes(&tail[..len]).map_err(std::io::Error::other)?);
            rest = &tail[len..];
        }
        Ok(out)
    }

    /// Takes every item out, in order, and empties the queue (the spill file is dropped).
    pub fn drain(&mut self) -> std::io::Result<Vec<T>> {
        let spilled = self.read_spilled(0)?;
        let mut all: Vec<T> = self.memory.drain(..).collect();
        all.extend(spilled);
        all.append(&mut self.overflow);
        self.file = None;
        self.file_len = 0;
        self.offsets.clear();
        self.spilled = 0;
        self.spilled_weight = 0;
        self.memory_weight = 0;
        Ok(all)
    }

    /// Every item, in order, leaving the queue as it is (for checkpoints).
    pub fn to_vec(&self) -> std::io::Result<Vec<T>>
    where
        T: Clone,
    {
        self.to_vec_from(0)
    }

    /// The items from the `skip`-th on, in order, leaving the queue as it is (for
    /// checkpoints that already hold the first `skip`).
    pub fn to_vec_from(&self, skip: usize) -> std::io::Result<Vec<T>>
    where
        T: Clone,
    {
        let mut all: Vec<T> = self.memory.iter().skip(skip).cloned().collect();
        let skip = skip.saturating_sub(self.memory.len());
        all.extend(self.read_spilled(skip.min(self.spilled))?);
        let skip = skip.saturating_sub(self.spilled);
        all.extend(self.overflow.iter().skip(skip).cloned());
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_memory_and_file() {
        let mut q: SpillQueue<(u64, String)> = SpillQueue::new(3);
        for i in 0..10 {
            q.push((i, format!("row-{i}")), 1);
        }
        assert_eq!(q.len(), 10);
        assert_eq!(q.spilled_weight(), 7);
        let copy = q.to_vec().unwrap();
        assert_eq!(copy.len(), 10);
        q.push((10, "row-10".into()), 1);
        let all = q.drain().unwrap();
        assert_eq!(
            all.iter().map(|x| x.0).collect::<Vec<_>>(),
            (0..11).collect::<Vec<_>>()
        );
        assert_eq!(copy[..], all[..10]);
        for skip in [0, 2, 3, 5, 10, 11, 12] {
            let mut q: SpillQueue<(u64, String)> = SpillQueue::new(3);
            for i in 0..11 {
                q.push((i, format!("row-{i}")), 1);
            }
            assert_eq!(
                q.to_vec_from(skip).unwrap()[..],
                all[skip.min(11)..],
                "skip {skip}"
            );
        }
        assert!(q.is_empty());
        q.push((1, "again".into()), 5);
        q.push((2, "heavy".into()), 5);
        assert_eq!(q.spilled_weight(), 5, "weights count against the limit");
        assert_eq!(q.drain().unwrap().len(), 2);
    }
}
