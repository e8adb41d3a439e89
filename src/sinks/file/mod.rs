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
//! Without a checkpoint directory the sink writes straight through and flushes at barriers,
//! whenever its input has nothing more queued, and under load once written lines have waited
//! `FLUSH_INTERVAL` (5 ms): at-least-once. Its
//! pre-commit is the output's length at the barrier; restored from a checkpoint or savepoint
//! (`--from-savepoint`) it keeps that much and writes on after it; started without one it
//! begins the file afresh.
//!
//! Either way a pre-commit also names the output (its absolute path) and holds a checksum of
//! the last `MARK_BYTES` bytes before the length it records. A restart checks the output
//! against it: an output that is missing, shorter than that length or different in those
//! bytes was removed, cut or rewritten since, and the restore is refused (never padded, never
//! written over); a pre-commit naming another file is another sink's, so the sink starts as
//! a new one (with a warning), with only what comes after the checkpoint.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataflow::{Guarantee, Sink};
use crate::error::RunError;
use crate::failpoint;
use crate::format::json::JsonEncoder;
use crate::types::{Batch, Epoch, SchemaRef};

pub mod config;
pub use config::FileSinkConfig;

/// Bytes before a pre-commit's length that its checksum covers.
const MARK_BYTES: u64 = 4096;

/// No run writes this many pending files; a pre-commit counting beyond is not one a run
/// wrote.
const MAX_SEQ: u64 = 1 << 62;

/// Writes JSON lines to a file.
pub struct JsonLinesSink {
    output: Output,
    encoder: JsonEncoder,
    buf: Vec<u8>,
    out: Target,
}

/// The sink's output file as messages and pre-commits name it.
struct Output {
    /// The sink's name in the pipeline.
    sink: String,
    path: PathBuf,
    /// `path` made absolute: what pre-commits name.
    absolute: String,
    /// This sink created the file (it did not exist): a refused restore removes it again.
    created: bool,
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

/// The output a pre-commit is about: its absolute path, and the CRC-32 of the (up to)
/// `MARK_BYTES` bytes before the length the pre-commit records. Pre-commits of older builds
/// lack it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OutputMark {
    path: String,
    tail_crc32: u32,
}

/// A straight-through sink's pre-commit: the output's length at the barrier.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct DirectPreCommit {
    len: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<OutputMark>,
}

/// The pending files of a transactional file sink.
struct Transactions {
    path: PathBuf,
    output: File,
    /// Length of the output after the last commit.
    committed_len: u64,
    /// The checksum of the bytes before `committed_len` (see `OutputMark`), once computed.
    committed_mark: Option<(u64, u32)>,
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
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct PreCommit {
    /// Length of the output before the pending files.
    base: u64,
    /// Pending files to append, in order.
    pending: Vec<Pending>,
    next_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<OutputMark>,
}

impl PreCommit {
    /// Checks what a restart relies on: pending file numbers distinct and below `next_seq`,
    /// and lengths that add up. Returns the output's length once every pending file is
    /// appended.
    fn committed_end(&self) -> Result<u64, String> {
        if self.next_seq > MAX_SEQ {
            return Err(format!(
                "its next pending file number {} is beyond any a run reaches",
                self.next_seq
            ));
        }
        let mut end = self.base;
        for (i, p) in self.pending.iter().enumerate() {
            if p.seq >= self.next_seq || self.pending[..i].iter().any(|q| q.seq == p.seq) {
                return Err(format!(
                    "pending file {} is listed twice or not below the next number {}",
                    p.seq, self.next_seq
                ));
            }
            end = end
                .checked_add(p.bytes)
                .ok_or_else(|| "its lengths add up beyond any file's".to_string())?;
        }
        Ok(end)
    }
}

/// The CRC-32 of the (up to) `MARK_BYTES` bytes of `file` before `len`.
fn tail_crc32(file: &File, len: u64) -> std::io::Result<u32> {
    let from = len.saturating_sub(MARK_BYTES);
    let mut buf = vec![0u8; (len - from) as usize];
    file.read_exact_at(&mut buf, from)?;
    Ok(crc32fast::hash(&buf))
}

impl Output {
    fn mark(&self, tail_crc32: u32) -> OutputMark {
        OutputMark {
            path: self.absolute.clone(),
            tail_crc32,
        }
    }

    /// Whether a pre-commit's mark is about this output; one naming another file is another
    /// sink's (the path was renamed): the sink starts as a new one.
    fn is_ours(&self, mark: Option<&OutputMark>) -> bool {
        match mark {
            Some(m) if m.path != self.absolute => {
                tracing::warn!(
                    sink = %self.sink,
                    checkpoint_file = %m.path,
                    file = %self.absolute,
                    "the checkpoint's pre-commit is for another output file: a new sink, it gets only what comes after the checkpoint"
                );
                false
            }
            _ => true,
        }
    }

    /// A pre-commit that does not decode or does not add up.
    fn unusable(&self, why: impl std::fmt::Display) -> RunError {
        RunError::restore(
            &self.sink,
            format!(
                "the checkpoint's pre-commit of its output {} {why}",
                self.path.display()
            ),
        )
    }

    fn io(&self, what: &str, e: std::io::Error) -> RunError {
        RunError::io(format!("{what} {}", self.path.display()), e)
    }

    /// Checks that `file` holds what the checkpoint says was committed: at least `len`
    /// bytes, the last of them as `mark` checksummed. Anything else means the output was
    /// removed, cut short or rewritten since, and the restore is refused (an output this sink
    /// created for the occasion is removed again).
    fn check_committed(
        &self,
        file: &File,
        len: u64,
        mark: Option<&OutputMark>,
    ) -> Result<(), RunError> {
        let has = file
            .metadata()
            .map_err(|e| self.io("cannot read the length of", e))?
            .len();
        let problem = if has < len {
            if self.created && has == 0 {
                format!("does not exist, but the checkpoint committed {len} bytes to it")
            } else {
                format!("has {has} bytes, but the checkpoint committed {len}")
            }
        } else {
            let Some(m) = mark else {
                return Ok(());
            };
            if tail_crc32(file, len).map_err(|e| self.io("cannot read", e))? == m.tail_crc32 {
                return Ok(());
            }
            format!("differs from what the checkpoint committed in its last bytes before {len}")
        };
        if self.created && has == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
        Err(RunError::restore(
            &self.sink,
            format!(
                "its output {} {problem}: it was removed, cut short or rewritten since; put \
                 back the file the checkpoint committed",
                self.path.display()
            ),
        ))
    }
}

impl JsonLinesSink {
    /// The sink `sink` writing to `path` (parent directories are created), only `columns`
    /// (indices into the schema) when given. `transactional`: per-epoch pending files
    /// committed at checkpoints; otherwise written straight through. The output is opened,
    /// not truncated: `recover` decides what of it stays.
    pub fn create(
        sink: &str,
        path: &Path,
        schema: SchemaRef,
        columns: Option<Vec<usize>>,
        transactional: bool,
    ) -> Result<JsonLinesSink, RunError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| RunError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let target = path.display();
        let open = |create_new: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if create_new {
                o.create_new(true);
            }
            o.open(path)
        };
        let (file, created) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                open(false).map_err(|e| RunError::io(format!("cannot create {target}"), e))?,
                false,
            ),
            Err(e) => return Err(RunError::io(format!("cannot create {target}"), e)),
        };
        let out = if transactional {
            Target::Transactional(Transactions {
                path: path.to_path_buf(),
                output: file,
                committed_len: 0,
                committed_mark: None,
                open: None,
                next_seq: 0,
                waiting: VecDeque::new(),
            })
        } else {
            Target::Direct(Direct {
                writer: BufWriter::with_capacity(1 << 20, file),
                len: 0,
            })
        };
        Ok(JsonLinesSink {
            output: Output {
                sink: sink.to_string(),
                absolute: std::path::absolute(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
                    .to_string(),
                path: path.to_path_buf(),
                created,
            },
            encoder: JsonEncoder::with_columns(schema, columns),
            buf: Vec::with_capacity(1 << 16),
            out,
        })
    }
}

impl Direct {
    /// Keeps what the pre-commit `state` recorded of the output (`None`: nothing, a fresh
    /// start) and writes on after it.
    fn recover(&mut self, output: &Output, state: Option<&[u8]>) -> Result<(), RunError> {
        // Checkpoints of older builds hold an empty pre-commit: start afresh.
        let state = match state.filter(|s| !s.is_empty()) {
            Some(bytes) => Some(
                serde_json::from_slice::<DirectPreCommit>(bytes)
                    .map_err(|e| output.unusable(format_args!("does not decode: {e}")))?,
            ),
            None => None,
        };
        let state = state.filter(|s| output.is_ours(s.output.as_ref()));
        let io = |e| output.io("cannot recover", e);
        self.writer.flush().map_err(io)?;
        let keep = state.as_ref().map_or(0, |s| s.len);
        let mark = state.as_ref().and_then(|s| s.output.as_ref());
        output.check_committed(self.writer.get_ref(), keep, mark)?;
        let file = self.writer.get_mut();
        file.set_len(keep).map_err(io)?;
        file.seek(SeekFrom::Start(keep)).map_err(io)?;
        self.len = keep;
        Ok(())
    }

    fn pre_commit(&mut self, output: &Output) -> std::io::Result<DirectPreCommit> {
        self.writer.flush()?;
        let tail = tail_crc32(self.writer.get_ref(), self.len)?;
        Ok(DirectPreCommit {
            len: self.len,
            output: Some(output.mark(tail)),
        })
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

    /// Finishes the commit the pre-commit `state` (`None`: none, a fresh start) was waiting
    /// for and drops whatever was appended after it. The output is checked before each
    /// step: it must hold everything the checkpoint committed.
    fn recover(&mut self, output: &Output, state: Option<&[u8]>) -> Result<(), RunError> {
        // Checkpoints of older builds hold an empty pre-commit: start afresh.
        let state = match state.filter(|s| !s.is_empty()) {
            Some(bytes) => Some(
                serde_json::from_slice::<PreCommit>(bytes)
                    .map_err(|e| output.unusable(format_args!("does not decode: {e}")))?,
            ),
            None => None,
        };
        let state = state
            .filter(|s| output.is_ours(s.output.as_ref()))
            .unwrap_or_default();
        let end = state
            .committed_end()
            .map_err(|e| output.unusable(format_args!("is inconsistent: {e}")))?;
        let io = |e| output.io("cannot recover", e);
        output.check_committed(&self.output, state.base, state.output.as_ref())?;
        let mut at = state.base;
        for p in &state.pending {
            // Pending files are appended in order, each durably before it is removed: the
            // output holds everything before the first one still there.
            output.check_committed(&self.output, at, None)?;
            self.apply(p, at).map_err(io)?;
            at += p.bytes;
        }
        output.check_committed(&self.output, end, None)?;
        // Whatever was appended after the checkpoint goes; replay writes it again.
        self.output.set_len(end).map_err(io)?;
        self.output.sync_data().map_err(io)?;
        for seq in self.pending_on_disk() {
            if !state.pending.iter().any(|p| p.seq == seq) {
                std::fs::remove_file(self.pending_path(seq)).map_err(io)?;
            }
        }
        self.committed_len = end;
        self.committed_mark = None;
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

    fn pre_commit(&mut self, output: &Output, epoch: Epoch) -> std::io::Result<PreCommit> {
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
        let tail = match self.committed_mark {
            Some((len, crc)) if len == self.committed_len => crc,
            _ => {
                let crc = tail_crc32(&self.output, self.committed_len)?;
                self.committed_mark = Some((self.committed_len, crc));
                crc
            }
        };
        Ok(PreCommit {
            base: self.committed_len,
            pending: self.waiting.iter().map(|(_, p)| p.clone()).collect(),
            next_seq: self.next_seq,
            output: Some(output.mark(tail)),
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
        r.map_err(|e| self.output.io("cannot write", e))
    }

    fn pre_commit(&mut self, epoch: Epoch) -> Result<Vec<u8>, RunError> {
        let output = &self.output;
        let r = match &mut self.out {
            Target::Direct(d) => d
                .pre_commit(output)
                .map(|p| serde_json::to_vec(&p).expect("a pre-commit encodes")),
            Target::Transactional(t) => t
                .pre_commit(output, epoch)
                .map(|p| serde_json::to_vec(&p).expect("a pre-commit encodes")),
        };
        r.map_err(|e| self.output.io("cannot pre-commit", e))
    }

    fn commit(&mut self, epoch: Epoch) -> Result<(), RunError> {
        let r = match &mut self.out {
            Target::Direct(_) => Ok(()),
            Target::Transactional(t) => t.commit(epoch),
        };
        r.map_err(|e| self.output.io("cannot commit", e))
    }

    fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError> {
        match &mut self.out {
            Target::Direct(d) => d.recover(&self.output, state),
            Target::Transactional(t) => t.recover(&self.output, state),
        }
    }

    fn finish(&mut self) -> Result<(), RunError> {
        self.flush()
    }

    /// A straight-through file shows its lines (without syncing them); a transactional one
    /// shows nothing before its commit.
    fn flush(&mut self) -> Result<(), RunError> {
        let r = match &mut self.out {
            Target::Direct(d) => d.writer.flush(),
            Target::Transactional(_) => Ok(()),
        };
        r.map_err(|e| self.output.io("cannot write", e))
    }
}

/// Where a file sink writes, for messages.
pub fn describe(path: Option<&PathBuf>) -> String {
    path.map_or_else(|| "stdout".to_string(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
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
        JsonLinesSink::create("out", path, schema(), None, true).unwrap()
    }

    fn direct(path: &Path) -> JsonLinesSink {
        JsonLinesSink::create("out", path, schema(), None, false).unwrap()
    }

    /// A transactional sink's output after epochs 1 (lines 0..3, committed) and 2 (3..5,
    /// pre-committed only), and the pre-commit of epoch 2.
    fn committed_then_pending(path: &Path) -> Vec<u8> {
        let mut s = sink(path);
        s.recover(None).unwrap();
        s.write(&batch(0, 3)).unwrap();
        s.pre_commit(1).unwrap();
        s.commit(1).unwrap();
        s.write(&batch(3, 5)).unwrap();
        s.pre_commit(2).unwrap()
    }

    #[test]
    fn a_straight_through_output_shorter_than_its_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = direct(&path);
        sink.recover(None).unwrap();
        sink.write(&batch(1, 2)).unwrap();
        let state = sink.pre_commit(1).unwrap();
        sink.write(&batch(1, 2)).unwrap();
        sink.finish().unwrap();
        // Restored: what came after the checkpoint is cut, the rest stays.
        let mut again = direct(&path);
        again.recover(Some(&state)).unwrap();
        again.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
        // The output lost lines since: refused, not padded.
        std::fs::write(&path, "").unwrap();
        let mut gone = direct(&path);
        let e = gone.recover(Some(&state)).unwrap_err();
        assert!(e.to_string().contains("has 0 bytes"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // Rewritten to the same length: refused too.
        std::fs::write(&path, "{\"n\":7}\n").unwrap();
        let e = direct(&path).recover(Some(&state)).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":7}\n");
    }

    /// Regression: an output deleted between runs was recreated and padded with zeros up to
    /// the committed length, and the committed lines were lost without a word.
    #[test]
    fn a_deleted_output_is_refused_not_padded_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let state = committed_then_pending(&path);
        std::fs::remove_file(&path).unwrap();
        let e = sink(&path).recover(Some(&state)).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("out: cannot restore"), "{text}");
        assert!(text.contains("out.jsonl does not exist"), "{text}");
        assert!(text.contains("put back the file"), "{text}");
        assert!(!path.exists(), "the refused restore leaves no file behind");
        // Also once the pending file of the checkpoint was appended and removed.
        let state = committed_then_pending(&path);
        let mut s = sink(&path);
        s.recover(Some(&state)).unwrap();
        assert_eq!(lines(&path), numbers(0, 5));
        std::fs::remove_file(&path).unwrap();
        assert!(sink(&path).recover(Some(&state)).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn an_output_cut_short_or_rewritten_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let state = committed_then_pending(&path);
        let committed = std::fs::read(&path).unwrap();
        std::fs::write(&path, &committed[..committed.len() - 3]).unwrap();
        let e = sink(&path).recover(Some(&state)).unwrap_err();
        assert!(
            e.to_string().contains("but the checkpoint committed"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            &committed[..committed.len() - 3]
        );
        let mut rewritten = committed.clone();
        rewritten[1] = b'm';
        std::fs::write(&path, &rewritten).unwrap();
        let e = sink(&path).recover(Some(&state)).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), rewritten);
        // Put back as committed, it restores.
        std::fs::write(&path, &committed).unwrap();
        sink(&path).recover(Some(&state)).unwrap();
        assert_eq!(lines(&path), numbers(0, 5));
    }

    /// Regression: a sink whose path was renamed between runs restored the old output's
    /// committed length into the new file (padding it with zeros).
    #[test]
    fn a_renamed_output_path_is_a_new_sink() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.jsonl");
        let state = committed_then_pending(&old);
        let before = std::fs::read(&old).unwrap();
        let new = dir.path().join("new.jsonl");
        let mut s = sink(&new);
        s.recover(Some(&state)).unwrap();
        s.write(&batch(7, 9)).unwrap();
        s.pre_commit(3).unwrap();
        s.commit(3).unwrap();
        assert_eq!(
            lines(&new),
            numbers(7, 9),
            "only what comes after the checkpoint"
        );
        assert_eq!(
            std::fs::read(&old).unwrap(),
            before,
            "the old output is left alone"
        );
        let old_pending = dir.path().join(".old.jsonl.000000000001.pending");
        assert!(old_pending.exists(), "and so are its pending files");
    }

    #[test]
    fn a_pre_commit_that_does_not_add_up_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        for bad in [
            r#"{"base":18446744073709551615,"pending":[{"seq":0,"bytes":2}],"next_seq":1}"#,
            r#"{"base":0,"pending":[{"seq":3,"bytes":2}],"next_seq":1}"#,
            r#"{"base":0,"pending":[{"seq":0,"bytes":2},{"seq":0,"bytes":2}],"next_seq":1}"#,
            r#"{"base":0,"pending":[],"next_seq":18446744073709551615}"#,
            r#"{"base":0,"pending":[]"#,
        ] {
            let e = sink(&path).recover(Some(bad.as_bytes())).unwrap_err();
            assert!(e.to_string().contains("pre-commit"), "{bad}: {e}");
        }
        for bad in [r#"{"len":5}"#, r#"{"len":-1}"#, "[]"] {
            assert!(
                direct(&path).recover(Some(bad.as_bytes())).is_err(),
                "{bad}"
            );
        }
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
