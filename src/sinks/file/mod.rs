//! The file sink: JSON lines, one object per row, in schema order.
//!
//! A file sink of a pipeline with a checkpoint directory is **transactional** (exactly-once):
//! what arrives between two barriers goes to a pending file beside the output
//! (`.<name>.<seq>.pending`), fsynced at the barrier (the pre-commit); when that checkpoint is
//! durable the pending file is appended to the output, the output fsynced, and the pending
//! file removed (the commit). The pre-commit in the checkpoint is the output's committed
//! length before its pending files and their sizes, so a restart finishes a commit that was
//! cut short (re-appending a pending file that still exists is idempotent: the output is cut
//! back to where it goes first), cuts off whatever was appended after the checkpoint, and
//! removes pending files the checkpoint does not know. A restarted run thus never duplicates
//! or loses a line. Readers see lines only once their checkpoint is durable.
//!
//! Without a checkpoint directory the sink writes straight through and flushes at barriers:
//! at-least-once. Its pre-commit is the output's length at the barrier; restored from a
//! checkpoint or savepoint (`--from-savepoint`) it keeps that much and writes on after it
//! (an output shorter than that is refused, never padded); started without one it begins
//! the file afresh.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataflow::{Guarantee, Sink};
use crate::error::RunError;
use crate::failpoint;
use crate::format::json::JsonEncoder;
use crate::types::{Batch, Epoch, SchemaRef};

pub mod config;
pub use config::FileSinkConfig;

/// Writes JSON lines to a file or to standard output.
pub struct JsonLinesSink {
    target: String,
    encoder: JsonEncoder,
    buf: Vec<u8>,
    out: Target,
}

enum Target {
    /// Straight through, flushed at barriers.
    Direct(Direct),
    Transactional(Transactions),
}

/// A straight-through file: `len` bytes written so far (what a pre-commit records).
struct Direct {
    writer: BufWriter<File>,
    len: u64,
}

/// A straight-through sink's pre-commit: the output's length at the barrier.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct DirectPreCommit {
    len: u64,
}

impl Direct {
    /// Keeps the first `len` bytes of the output (`None`: none, a fresh start) and writes
    /// on after them.
    fn recover(&mut self, len: Option<u64>, target: &str) -> Result<(), RunError> {
        let io = |e| RunError::io(format!("cannot recover {target}"), e);
        self.writer.flush().map_err(io)?;
        let file = self.writer.get_mut();
        let keep = len.unwrap_or(0);
        let has = file.metadata().map_err(io)?.len();
        if has < keep {
            return Err(RunError::restore(
                target,
                format!(
                    "the output has {has} bytes but {keep} were written before the checkpoint: \
                     it was changed or removed since; move it away to start it afresh"
                ),
            ));
        }
        file.set_len(keep).map_err(io)?;
        file.seek(SeekFrom::Start(keep)).map_err(io)?;
        self.len = keep;
        Ok(())
    }
}

/// The pending files of a transactional file sink.
struct Transactions {
    path: PathBuf,
    output: File,
    /// Length of the output after the last commit.
    committed_len: u64,
    /// The pending file being written since the last pre-commit.
    open: Option<OpenPending>,
    next_seq: u64,
    /// Pre-committed pending files waiting for their checkpoint, oldest first.
    waiting: VecDeque<(Epoch, Pending)>,
}

struct OpenPending {
    seq: u64,
    writer: BufWriter<File>,
    bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    seq: u64,
    bytes: u64,
}

/// A transactional sink's pre-commit, as the checkpoint keeps it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PreCommit {
    /// Length of the output before the pending files.
    base: u64,
    /// Pending files to append, in order.
    pending: Vec<Pending>,
    next_seq: u64,
}

impl JsonLinesSink {
    /// A sink writing to `path` (parent directories are created), only `columns` (indices
    /// into the schema) when given. `transactional`: per-epoch pending files committed at
    /// checkpoints; otherwise the file is truncated and written straight through.
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        columns: Option<Vec<usize>>,
        transactional: bool,
    ) -> Result<JsonLinesSink, RunError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| RunError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let target = path.display().to_string();
        let out = if transactional {
            // Not truncated here: `recover` decides what of it stays.
            let output = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| RunError::io(format!("cannot open {target}"), e))?;
            Target::Transactional(Transactions {
                path: path.to_path_buf(),
                output,
                committed_len: 0,
                open: None,
                next_seq: 0,
                waiting: VecDeque::new(),
            })
        } else {
            // Not truncated here: `recover` keeps what a restored checkpoint had written.
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| RunError::io(format!("cannot create {target}"), e))?;
            Target::Direct(Direct {
                writer: BufWriter::with_capacity(1 << 20, f),
                len: 0,
            })
        };
        Ok(JsonLinesSink {
            target,
            encoder: JsonEncoder::with_columns(schema, columns),
            buf: Vec::with_capacity(1 << 16),
            out,
        })
    }

    fn io(&self, what: &str, e: std::io::Error) -> RunError {
        RunError::io(format!("{what} {}", self.target), e)
    }
}

impl Transactions {
    /// Pending files are named `.<output name>.<seq>.pending`: this is their prefix.
    fn pending_prefix(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(".{name}.")
    }

    fn pending_path(&self, seq: u64) -> PathBuf {
        self.path
            .with_file_name(format!("{}{seq:012}.pending", self.pending_prefix()))
    }

    /// Pending files of this output on disk, by sequence number.
    fn pending_on_disk(&self) -> Vec<u64> {
        let prefix = self.pending_prefix();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix(&prefix)?
                    .strip_suffix(".pending")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Appends pending file `p` to the output at `at` (cutting the output there first) and
    /// removes it; a pending file already removed was appended before.
    fn apply(&mut self, p: &Pending, at: u64) -> std::io::Result<()> {
        let path = self.pending_path(p.seq);
        let mut pending = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        failpoint::hit("sink-commit-before-append");
        self.output.set_len(at)?;
        self.output.seek(SeekFrom::Start(at))?;
        let copied = std::io::copy(&mut pending, &mut self.output)?;
        if copied != p.bytes {
            return Err(std::io::Error::other(format!(
                "{} has {copied} bytes, its pre-commit says {}",
                path.display(),
                p.bytes
            )));
        }
        self.output.sync_data()?;
        failpoint::hit("sink-commit-before-remove");
        std::fs::remove_file(&path)
    }

    fn recover(&mut self, state: Option<PreCommit>) -> std::io::Result<()> {
        let state = state.unwrap_or(PreCommit {
            base: 0,
            pending: Vec::new(),
            next_seq: 0,
        });
        let mut at = state.base;
        for p in &state.pending {
            self.apply(p, at)?;
            at += p.bytes;
        }
        // Whatever was appended after the checkpoint goes; replay writes it again.
        self.output.set_len(at)?;
        self.output.sync_data()?;
        for seq in self.pending_on_disk() {
            if !state.pending.iter().any(|p| p.seq == seq) {
                std::fs::remove_file(self.pending_path(seq))?;
            }
        }
        self.committed_len = at;
        self.next_seq = state.next_seq;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.open.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let f = File::create(self.pending_path(seq))?;
            self.open = Some(OpenPending {
                seq,
                writer: BufWriter::with_capacity(1 << 20, f),
                bytes: 0,
            });
        }
        let open = self.open.as_mut().expect("opened above");
        open.writer.write_all(bytes)?;
        open.bytes += bytes.len() as u64;
        Ok(())
    }

    fn pre_commit(&mut self, epoch: Epoch) -> std::io::Result<PreCommit> {
        if let Some(mut open) = self.open.take() {
            open.writer.flush()?;
            open.writer.get_ref().sync_data()?;
            self.waiting.push_back((
                epoch,
                Pending {
                    seq: open.seq,
                    bytes: open.bytes,
                },
            ));
        }
        Ok(PreCommit {
            base: self.committed_len,
            pending: self.waiting.iter().map(|(_, p)| p.clone()).collect(),
            next_seq: self.next_seq,
        })
    }

    fn commit(&mut self, epoch: Epoch) -> std::io::Result<()> {
        while let Some((e, p)) = self.waiting.front().cloned()
            && e <= epoch
        {
            self.apply(&p, self.committed_len)?;
            self.committed_len += p.bytes;
            self.waiting.pop_front();
        }
        Ok(())
    }
}

impl Sink for JsonLinesSink {
    fn guarantee(&self) -> Guarantee {
        match self.out {
            Target::Direct(_) => Guarantee::AtLeastOnce,
            Target::Transactional(_) => Guarantee::ExactlyOnce,
        }
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        self.buf.clear();
        for (row, _) in batch.rows() {
            self.encoder.encode_row(row, &mut self.buf);
            self.buf.push(b'\n');
        }
        let r = match &mut self.out {
            Target::Direct(d) => d.writer.write_all(&self.buf).map(|()| {
                d.len += self.buf.len() as u64;
            }),
            Target::Transactional(t) => t.write(&self.buf),
        };
        r.map_err(|e| self.io("cannot write", e))
    }

    fn pre_commit(&mut self, epoch: Epoch) -> Result<Vec<u8>, RunError> {
        let r = match &mut self.out {
            Target::Direct(d) => d.writer.flush().map(|()| {
                serde_json::to_vec(&DirectPreCommit { len: d.len }).expect("a pre-commit encodes")
            }),
            Target::Transactional(t) => t
                .pre_commit(epoch)
                .map(|p| serde_json::to_vec(&p).expect("a pre-commit encodes")),
        };
        r.map_err(|e| self.io("cannot pre-commit", e))
    }

    fn commit(&mut self, epoch: Epoch) -> Result<(), RunError> {
        let r = match &mut self.out {
            Target::Direct(_) => Ok(()),
            Target::Transactional(t) => t.commit(epoch),
        };
        r.map_err(|e| self.io("cannot commit", e))
    }

    fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError> {
        let t = match &mut self.out {
            Target::Transactional(t) => t,
            Target::Direct(d) => {
                // Checkpoints of older builds hold an empty pre-commit: start afresh.
                let len = match state.filter(|s| !s.is_empty()) {
                    Some(bytes) => Some(
                        serde_json::from_slice::<DirectPreCommit>(bytes)
                            .map_err(|e| {
                                RunError::restore(
                                    &self.target,
                                    format!("the checkpoint's pre-commit does not decode: {e}"),
                                )
                            })?
                            .len,
                    ),
                    None => None,
                };
                return d.recover(len, &self.target);
            }
        };
        let state =
            match state.filter(|s| !s.is_empty()) {
                Some(bytes) => Some(serde_json::from_slice::<PreCommit>(bytes).map_err(|e| {
                    RunError::Restore {
                        component: self.target.clone(),
                        message: format!(
                            "the checkpoint's pre-commit of this sink does not decode: {e}"
                        ),
                    }
                })?),
                None => None,
            };
        t.recover(state)
            .map_err(|e| RunError::io(format!("cannot recover {}", self.target), e))
    }

    fn finish(&mut self) -> Result<(), RunError> {
        let r = match &mut self.out {
            Target::Direct(d) => d.writer.flush(),
            Target::Transactional(_) => Ok(()),
        };
        r.map_err(|e| self.io("cannot write", e))
    }
}

/// Where a file sink writes, for messages.
pub fn describe(path: Option<&PathBuf>) -> String {
    path.map_or_else(|| "stdout".to_string(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straight_through_output_shorter_than_its_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]));
        let mut sink = JsonLinesSink::create(&path, schema.clone(), None, false).unwrap();
        sink.recover(None).unwrap();
        let mut b = Batch::new(schema.clone());
        b.push_row([Value::Int(1)], 0);
        sink.write(&b).unwrap();
        let state = sink.pre_commit(1).unwrap();
        sink.write(&b).unwrap();
        sink.finish().unwrap();
        // Restored: what came after the checkpoint is cut, the rest stays.
        let mut again = JsonLinesSink::create(&path, schema.clone(), None, false).unwrap();
        again.recover(Some(&state)).unwrap();
        again.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
        // The output lost lines since: refused, not padded.
        std::fs::write(&path, "").unwrap();
        let mut gone = JsonLinesSink::create(&path, schema, None, false).unwrap();
        let e = gone.recover(Some(&state)).unwrap_err();
        assert!(e.to_string().contains("changed or removed"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
    use crate::types::{DataType, Field, Schema, Value};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]))
    }

    fn batch(from: i64, to: i64) -> Batch {
        let mut b = Batch::new(schema());
        for n in from..to {
            b.push_row([Value::Int(n)], 0);
        }
        b
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn numbers(from: i64, to: i64) -> Vec<String> {
        (from..to).map(|n| format!("{{\"n\":{n}}}")).collect()
    }

    fn sink(path: &Path) -> JsonLinesSink {
        JsonLinesSink::create(path, schema(), None, true).unwrap()
    }

    #[test]
    fn lines_become_visible_at_commit_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut s = sink(&path);
        s.recover(None).unwrap();
        s.write(&batch(0, 3)).unwrap();
        s.pre_commit(1).unwrap();
        s.write(&batch(3, 5)).unwrap();
        s.pre_commit(2).unwrap();
        assert!(lines(&path).is_empty());
        s.commit(1).unwrap();
        assert_eq!(lines(&path), numbers(0, 3));
        s.commit(2).unwrap();
        assert_eq!(lines(&path), numbers(0, 5));
        assert_eq!(s.guarantee(), Guarantee::ExactlyOnce);
    }

    /// A crash at every step, then recovery from the last checkpoint's pre-commit and a
    /// replay of what came after it: the output is the same as without the crash.
    #[test]
    fn recovery_neither_loses_nor_duplicates() {
        for crash_after in 0..6 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("out.jsonl");
            let mut durable: Option<Vec<u8>> = None;
            let mut resume_from = 0;
            {
                let mut s = sink(&path);
                s.recover(None).unwrap();
                // Steps: write 0..10, pre-commit 1, (checkpoint 1 durable), commit 1,
                // write 10..20, pre-commit 2, (durable), commit 2.
                let mut step = 0;
                let mut go = |s: &mut JsonLinesSink, f: &mut dyn FnMut(&mut JsonLinesSink)| {
                    if step < crash_after {
                        f(s);
                    }
                    step += 1;
                };
                go(&mut s, &mut |s| s.write(&batch(0, 10)).unwrap());
                go(&mut s, &mut |s| {
                    durable = Some(s.pre_commit(1).unwrap());
                    resume_from = 10;
                });
                go(&mut s, &mut |s| s.commit(1).unwrap());
                go(&mut s, &mut |s| s.write(&batch(10, 20)).unwrap());
                go(&mut s, &mut |s| {
                    durable = Some(s.pre_commit(2).unwrap());
                    resume_from = 20;
                });
                go(&mut s, &mut |s| s.commit(2).unwrap());
            }
            // Restart: recover, replay from the checkpoint's position, finish.
            let mut s = sink(&path);
            s.recover(durable.as_deref()).unwrap();
            s.write(&batch(resume_from, 20)).unwrap();
            s.pre_commit(FINAL).unwrap();
            s.commit(FINAL).unwrap();
            s.finish().unwrap();
            assert_eq!(
                lines(&path),
                numbers(0, 20),
                "crash after step {crash_after}"
            );
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pending"))
                .collect();
            assert!(leftovers.is_empty(), "pending files left: {leftovers:?}");
        }
    }

    const FINAL: Epoch = Epoch::MAX;

    #[test]
    fn an_append_cut_short_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut s = sink(&path);
        s.recover(None).unwrap();
        s.write(&batch(0, 4)).unwrap();
        let state = s.pre_commit(1).unwrap();
        drop(s);
        // The commit died halfway through its append.
        std::fs::write(&path, "{\"n\":0}\n{\"n\":").unwrap();
        let mut s = sink(&path);
        s.recover(Some(&state)).unwrap();
        assert_eq!(lines(&path), numbers(0, 4));
    }
}
