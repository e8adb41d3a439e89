//! The file source: lines from one or many files, each file (or byte-range split of a
//! large file, see `split`) its own partition with its own watermark (or, for a change log,
//! the files read in order as one partition). Reads as fast as possible or at a given
//! `rate`; in `follow` mode it tails
//! files that are still growing (a line counts once its newline arrives). Undecodable lines
//! go to `dead_letter` with the file, line number and reason.
//!
//! What a line becomes is the `LineDecoder`'s business: typed rows of one schema
//! (`JsonDecoder`) or change rows of several tables (`sources::cdc::ChangeDecoder`).
//!
//! Progress: a partition's position is the byte offset of its next line, its line number
//! and the identity of the file the offset is in (`FileIdentity`: device, inode and a CRC
//! of the first 256 bytes, so a reused inode is told apart). A restart seeks there; a replay
//! reads the same lines again.
//!
//! Files change under a reader; a partition follows its path:
//! - rotated (another file now at the path, the old one renamed): the old file is read to
//!   its end, its unterminated last line included, then the new one from its start;
//! - truncated or rewritten (shorter than what was read, or its first bytes changed): read
//!   again from its start, with a WARN;
//! - on restore, a position whose file is no longer at the path: a file with its identity
//!   in the same directory (rotated) is read to its end first; if there is none, the file at
//!   the path is read from its start, with a WARN. A version 1 position (no identity) applies
//!   to the file at the path, from its start if that is shorter than the offset.
//!
//! Followed files are checked when a read finds them at their end and the next read begins,
//! so lines written to a rotated file after the new one was first read are not seen.
//!
//! A line longer than `max_line_bytes` is never held whole: its first KiB is kept, the rest
//! skipped to the newline, and it goes to `dead_letter` with its length.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dataflow::PortSpec;
use crate::dataflow::{ConnectorPosition, Position, SourcePosition};
use crate::dataflow::{ReadBuffers, ReadStatus, Source};
use crate::dead_letter;
use crate::error::RunError;
use crate::format::DecodeError;
use crate::format::json::JsonDecoder;
use crate::types::SchemaRef;

pub mod config;
mod split;
pub use config::FileConfig;
use split::restored_at;
pub use split::{FilePart, FileSplit};

/// Turns one line of a file into records on the source's ports.
pub trait LineDecoder: Send {
    /// Schema of `main`.
    fn schema(&self) -> SchemaRef;

    /// Ports after `main` and `dead_letter`.
    fn extra_ports(&self) -> Vec<PortSpec> {
        Vec::new()
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        let _ = consumed;
    }

    /// Decodes one line of partition `partition` into `out`; an error sends the line to
    /// `dead_letter` with the reason.
    fn decode_line(
        &mut self,
        partition: usize,
        line: &[u8],
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<(), DecodeError>;

    /// Partition `partition` has been read to its end (never called in follow mode).
    fn partition_ended(&mut self, partition: usize, out: &mut ReadBuffers) {
        let _ = (partition, out);
    }

    /// What the decoder must remember across a restart (e.g. which snapshots have ended),
    /// kept in the source's positions; `None`: nothing.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Takes up `state` from a restored position (`None`: start afresh).
    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let _ = state;
        Ok(())
    }

    /// What the source shows in `/status` (`Source::warnings`); usually nothing.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

impl LineDecoder for JsonDecoder {
    fn schema(&self) -> SchemaRef {
        JsonDecoder::schema(self).clone()
    }

    fn decode_line(
        &mut self,
        _partition: usize,
        line: &[u8],
        out: &mut ReadBuffers,
        now_ms: i64,
    ) -> Result<(), DecodeError> {
        self.decode_into(line, &mut out.records, now_ms).map(|_| ())
    }
}

/// How a file source instance reads.
#[derive(Clone, Debug)]
pub struct FileSourceSpec {
    /// Files (or splits of files) this instance reads, already expanded from globs; one
    /// partition each.
    pub files: Vec<FilePart>,
    /// Keep reading as the files grow, never end.
    pub follow: bool,
    /// Records per second across this instance; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// How long to wait before looking again at a file with no new data (follow mode).
    pub poll_interval: Duration,
    /// Partitions are named by their path relative to this directory (the pipeline file's),
    /// so names and dead-letter positions do not depend on where the pipeline is installed.
    pub base_dir: Option<PathBuf>,
    /// Read the files one after another, as segments of one log (a change stream), instead
    /// of round-robin; with `follow`, only the last one is tailed.
    pub sequential: bool,
    /// Partitions before this index are read without the `rate` limit (a change stream's
    /// snapshot files).
    pub paced_from: usize,
    /// The longest line read whole; a longer one goes to `dead_letter` with its length and
    /// its first `LONG_LINE_KEPT` bytes, and is skipped without being held in memory.
    pub max_line_bytes: usize,
}

/// `max_line_bytes` unless configured: 4 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// How much of a line longer than `max_line_bytes` its dead letter keeps (at most
/// `max_line_bytes`).
pub const LONG_LINE_KEPT: usize = 1024;

/// A line longer than `max_line_bytes` being skipped: its length so far and its first bytes.
struct LongLine {
    len: u64,
    head: Vec<u8>,
}

struct Partition {
    path: PathBuf,
    /// The file's name in labels: its path relative to the base directory.
    file_label: String,
    /// `file_label`, and for a split `@` and its first byte.
    label: String,
    /// The byte range read, for a split of the file.
    split: Option<FileSplit>,
    /// A split starting inside a line has not yet skipped to the first line it owns.
    unaligned: bool,
    reader: Option<BufReader<File>>,
    offset: u64,
    line: u64,
    /// Bytes of a line whose newline has not arrived yet (follow mode), at most
    /// `max_line_bytes` and its newline.
    partial: Vec<u8>,
    /// A line longer than `max_line_bytes` being skipped; `offset` stays at its start until
    /// its newline is found.
    long: Option<LongLine>,
    /// The file being read (once open).
    id: Option<FileIdentity>,
    /// The file a restored position was in, to be found when the partition opens.
    expect: Option<FileIdentity>,
    /// The last read reached the end of the file.
    idle: bool,
    /// The file was rotated: read it to its end, then the new file at the path.
    draining: bool,
    ended: bool,
}

impl Partition {
    /// Reads its file, or its split, from the start again.
    fn rewind(&mut self) {
        self.offset = self.split.map_or(0, |s| s.start);
        self.line = 0;
        self.unaligned = self.offset > 0;
    }
}

/// Where a record is, for dead letters: the line of a whole file, the byte of a split.
fn record_position(label: &str, file_label: &str, split: bool, line: u64, offset: u64) -> String {
    if split {
        format!("{file_label} (byte {offset})")
    } else {
        format!("{label}:{line} (byte {offset})")
    }
}

/// Where a file partition is: the byte offset of the next line and the lines before it,
/// and what the line decoder remembers (a change stream's ended snapshots), if anything.
///
/// Version 2 adds the identity of the file the offset is in; a version 1 position (no
/// identity) applies to whatever file is at the path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePosition {
    pub offset: u64,
    pub line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileIdentity>,
    /// The split size of a split's position (its place is in the partition's name); absent
    /// for a whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_bytes: Option<u64>,
}

impl ConnectorPosition for FilePosition {
    const KIND: &'static str = "file";
    const VERSION: u32 = 2;
}

/// Which file a position is in, whatever its name: device and inode, and a fingerprint of
/// its first bytes (up to `FINGERPRINT_BYTES`), so an inode reused by a new file after the
/// old one was deleted is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    /// How many of the first bytes the fingerprint covers (fewer in a short file).
    pub head_len: u64,
    /// CRC-32 of those bytes.
    pub head_crc: u32,
}

/// What became of a partition's file since it was last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileChange {
    Same,
    Rotated,
    Truncated,
}

/// How many first bytes of a file its fingerprint covers once it has them.
pub const FINGERPRINT_BYTES: u64 = 256;

/// The identity of an open file.
fn identify(f: &File) -> io::Result<FileIdentity> {
    let meta = f.metadata()?;
    let head_len = meta.len().min(FINGERPRINT_BYTES);
    let head_crc = head_crc(f, head_len)?.unwrap_or(0);
    Ok(FileIdentity {
        dev: meta.dev(),
        inode: meta.ino(),
        head_len,
        head_crc,
    })
}

/// CRC-32 of the first `len` bytes of `f`, or `None` if it has fewer.
fn head_crc(f: &File, len: u64) -> io::Result<Option<u32>> {
    let mut head = vec![0u8; len.min(FINGERPRINT_BYTES) as usize];
    let mut got = 0;
    while got < head.len() {
        match f.read_at(&mut head[got..], got as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(crc32fast::hash(&head)))
}

/// Whether open file `f` is the file `id` names (an unreadable file is not).
fn is_file(id: &FileIdentity, f: &File) -> bool {
    let Ok(meta) = f.metadata() else {
        return false;
    };
    (meta.dev(), meta.ino()) == (id.dev, id.inode)
        && matches!(head_crc(f, id.head_len), Ok(Some(crc)) if crc == id.head_crc)
}

/// A file named `id` in the directory of `path` under another name (rotated), opened.
fn find_rotated(path: &Path, id: &FileIdentity) -> Option<(PathBuf, File)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() || (meta.dev(), meta.ino()) != (id.dev, id.inode) {
            continue;
        }
        let candidate = entry.path();
        if let Ok(f) = File::open(&candidate)
            && is_file(id, &f)
        {
            return Some((candidate, f));
        }
    }
    None
}

/// A file source instance.
pub struct FileSource<D = JsonDecoder> {
    node: String,
    spec: FileSourceSpec,
    partitions: Vec<Partition>,
    decoder: D,
    next: usize,
    started_at_ms: Option<i64>,
    emitted: u64,
    /// Bootstrapping: read only the unpaced snapshot partitions (those before `paced_from`).
    bootstrap: bool,
}

impl<D: LineDecoder> FileSource<D> {
    pub fn new(node: &str, spec: FileSourceSpec, decoder: D) -> FileSource<D> {
        let partitions = spec
            .files
            .iter()
            .map(|part| {
                let p = &part.path;
                let file_label = spec
                    .base_dir
                    .as_ref()
                    .and_then(|b| p.strip_prefix(b).ok())
                    .unwrap_or(p)
                    .display()
                    .to_string();
                let start = part.split.map_or(0, |s| s.start);
                Partition {
                    path: p.clone(),
                    label: match part.split {
                        Some(s) => format!("{file_label}@{}", s.start),
                        None => file_label.clone(),
                    },
                    file_label,
                    split: part.split,
                    unaligned: start > 0,
                    reader: None,
                    offset: start,
                    line: 0,
                    partial: Vec::new(),
                    long: None,
                    id: None,
                    expect: None,
                    idle: false,
                    draining: false,
                    ended: false,
                }
            })
            .collect();
        FileSource {
            node: node.to_string(),
            spec,
            partitions,
            decoder,
            next: 0,
            started_at_ms: None,
            emitted: 0,
            bootstrap: false,
        }
    }

    /// Opens partition `p`'s file at its offset if it is not open: the file at its path,
    /// unless a restored position names another file (by identity). Then a file with that
    /// identity under another name in the same directory (rotated) is read to its end first;
    /// if there is none, the file at the path is read from its start. A file shorter than
    /// the offset (truncated) is read from its start.
    fn open(node: &str, p: &mut Partition) -> Result<(), RunError> {
        if p.reader.is_some() {
            return Ok(());
        }
        let cannot = |what: &str, path: &Path, e| {
            RunError::io(format!("cannot {what} {}", path.display()), e)
        };
        let at_path = File::open(&p.path);
        let (mut f, id) = match (p.expect.take(), at_path) {
            (None, at_path) => {
                let f = at_path.map_err(|e| cannot("open", &p.path, e))?;
                let id = identify(&f).map_err(|e| cannot("read", &p.path, e))?;
                (f, id)
            }
            (Some(want), Ok(f)) if is_file(&want, &f) => (f, want),
            (Some(want), at_path) => match find_rotated(&p.path, &want) {
                Some((rotated, f)) => {
                    tracing::warn!(source = node, file = %p.path.display(), rotated = %rotated.display(),
                        "the checkpoint's file was rotated: reading it to its end, then the new file");
                    (f, want)
                }
                None => {
                    let f = at_path.map_err(|e| cannot("open", &p.path, e))?;
                    let id = identify(&f).map_err(|e| cannot("read", &p.path, e))?;
                    tracing::warn!(source = node, file = %p.path.display(),
                        "not the file the checkpoint read (replaced or rotated away): reading it from the start");
                    p.rewind();
                    (f, id)
                }
            },
        };
        let size = f.metadata().map_err(|e| cannot("read", &p.path, e))?.len();
        if size < p.offset {
            tracing::warn!(source = node, file = %p.path.display(), offset = p.offset, size,
                "the file is shorter than the checkpoint's offset (truncated): reading it from the start");
            p.rewind();
        }
        // A split that starts inside a line owns the lines from the next newline on: look
        // from the byte before its start, so a line starting exactly there is its own.
        let seek_to = if p.unaligned { p.offset - 1 } else { p.offset };
        if seek_to > 0 {
            f.seek(SeekFrom::Start(seek_to))
                .map_err(|e| cannot("seek", &p.path, e))?;
        }
        let mut reader = BufReader::with_capacity(256 * 1024, f);
        if p.unaligned {
            let (skipped, _) = skip_line(&mut reader).map_err(|e| cannot("read", &p.path, e))?;
            p.offset = seek_to.saturating_add(skipped as u64);
            p.unaligned = false;
        }
        p.id = Some(id);
        p.reader = Some(reader);
        Ok(())
    }

    /// Whether the file at partition `i`'s path is still the one being read: `Rotated`
    /// (another file is at the path), `Truncated` (shorter than what was read, or its first
    /// bytes changed) or `Same`. Nothing at the path (between a rename and the new file) is
    /// `Same`: the open file is read on.
    fn check_file(&mut self, i: usize) -> FileChange {
        let p = &mut self.partitions[i];
        let (Some(id), Some(reader)) = (p.id, p.reader.as_ref()) else {
            return FileChange::Same;
        };
        let Ok(meta) = std::fs::metadata(&p.path) else {
            return FileChange::Same;
        };
        if (meta.dev(), meta.ino()) != (id.dev, id.inode) {
            return FileChange::Rotated;
        }
        let read_to = p
            .offset
            .saturating_add(p.partial.len() as u64)
            .saturating_add(p.long.as_ref().map_or(0, |l| l.len));
        if meta.len() < read_to || !is_file(&id, reader.get_ref()) {
            return FileChange::Truncated;
        }
        if id.head_len < FINGERPRINT_BYTES.min(meta.len()) {
            // The fingerprint covers more of the file as it grows.
            p.id = identify(reader.get_ref()).ok().or(p.id);
        }
        FileChange::Same
    }

    /// Partition `i` reads the file at its path from its start.
    fn restart(&mut self, i: usize) {
        let p = &mut self.partitions[i];
        p.reader = None;
        p.id = None;
        p.expect = None;
        p.rewind();
        p.partial.clear();
        p.long = None;
        p.draining = false;
        p.idle = false;
    }

    /// Reads partition `i`, first (after it was found at its end) making sure its file is
    /// still the one at its path: a truncated file is read again from its start; a rotated
    /// one is read to its end, unterminated last line included, then the new file from its
    /// start.
    fn read_file(
        &mut self,
        i: usize,
        out: &mut ReadBuffers,
        max: usize,
        now_ms: i64,
    ) -> Result<(usize, bool), RunError> {
        let follows = self.follows(i);
        if follows && self.partitions[i].idle && !self.partitions[i].draining {
            match self.check_file(i) {
                FileChange::Same => {}
                FileChange::Rotated => {
                    tracing::info!(source = %self.node, file = %self.partitions[i].path.display(),
                        "file rotated: reading the old file to its end, then the new one");
                    self.partitions[i].draining = true;
                }
                FileChange::Truncated => {
                    tracing::warn!(source = %self.node, file = %self.partitions[i].path.display(),
                        "file truncated or rewritten: reading it from the start");
                    self.restart(i);
                }
            }
        }
        let draining = self.partitions[i].draining;
        let (mut lines, mut at_end) =
            self.read_partition(i, out, max, now_ms, follows && !draining)?;
        self.partitions[i].idle = at_end;
        // A file not followed ends here, unless it was a restored position's rotated file.
        let switch = at_end && (draining || !follows && self.check_file(i) == FileChange::Rotated);
        if switch {
            self.restart(i);
            if lines == 0 {
                (lines, at_end) = self.read_partition(i, out, max, now_ms, follows)?;
                self.partitions[i].idle = at_end;
            } else {
                at_end = false;
            }
        }
        Ok((lines, at_end))
    }

    /// Whether partition `i` is tailed at its end: every file in follow mode, or only the
    /// last one when files are read in sequence (earlier segments of a log are complete).
    fn follows(&self, i: usize) -> bool {
        self.spec.follow && (!self.spec.sequential || i + 1 == self.partitions.len())
    }

    /// How many records the rate limit allows now, or the time to retry.
    fn allowance(&mut self, max: usize, now_ms: i64) -> Result<usize, i64> {
        let Some(rate) = self.spec.rate else {
            return Ok(max);
        };
        let start = *self.started_at_ms.get_or_insert(now_ms);
        let due = (((now_ms - start) as f64 / 1000.0) * rate) as u64 + 1;
        if due > self.emitted {
            Ok(((due - self.emitted) as usize).min(max))
        } else {
            let next_ms = start + ((self.emitted as f64 / rate) * 1000.0).ceil() as i64;
            Err(next_ms.max(now_ms + 1))
        }
    }

    /// Reads up to `max` lines of partition `i`. Returns the number of lines consumed and
    /// whether the end of the file was reached.
    fn read_partition(
        &mut self,
        i: usize,
        out: &mut ReadBuffers,
        max: usize,
        now_ms: i64,
        follows: bool,
    ) -> Result<(usize, bool), RunError> {
        let p = &mut self.partitions[i];
        Self::open(&self.node, p)?;
        let reader = p.reader.as_mut().expect("opened");
        // A split ends once every line starting before its end is read.
        let (split, end) = (p.split.is_some(), p.split.and_then(|s| s.end));
        let mut lines = 0;
        let limit = self.spec.max_line_bytes.max(1);
        while lines < max {
            let read_err = |e| RunError::io(format!("cannot read {}", p.path.display()), e);
            if p.long.is_none() && p.partial.is_empty() && end.is_some_and(|e| p.offset >= e) {
                // Every line starting in the split is read.
                return Ok((lines, true));
            }
            if let Some(long) = &mut p.long {
                let (n, newline) = skip_line(reader).map_err(read_err)?;
                long.len += n as u64;
                if !newline && follows {
                    // The rest of the line has not arrived yet.
                    return Ok((lines, true));
                }
                let long = p.long.take().expect("skipping");
                let record_offset = p.offset;
                p.offset = p.offset.saturating_add(long.len);
                p.line = p.line.saturating_add(1);
                lines += 1;
                let position =
                    record_position(&p.label, &p.file_label, split, p.line, record_offset);
                let reason = format!(
                    "line of {} bytes is longer than max_line_bytes ({limit}); its first {} \
                     bytes are kept",
                    long.len,
                    long.head.len()
                );
                dead_letter::push(
                    &mut out.dead_letters,
                    &self.node,
                    &p.label,
                    &position,
                    &reason,
                    &long.head,
                    now_ms,
                );
                continue;
            }
            let newline = read_bounded(reader, &mut p.partial, limit).map_err(read_err)?;
            if !newline && p.partial.len() > limit {
                // Too long to hold: keep its head and skip to its newline.
                p.long = Some(LongLine {
                    len: p.partial.len() as u64,
                    head: p.partial[..LONG_LINE_KEPT.min(limit)].to_vec(),
                });
                p.partial.clear();
                continue;
            }
            if !newline && (p.partial.is_empty() || follows) {
                // The end of the file, or (followed) a line whose newline has not arrived
                // yet: kept for later.
                return Ok((lines, true));
            }
            // A whole line, or the last one of a file that is not followed.
            let record_offset = p.offset;
            // Saturating: a restored position is not trusted to be one a run reached.
            p.offset = p.offset.saturating_add(p.partial.len() as u64);
            let mut body: &[u8] = &p.partial;
            while let Some((&last, rest)) = body.split_last() {
                if last == b'\n' || last == b'\r' {
                    body = rest;
                } else {
                    break;
                }
            }
            p.line = p.line.saturating_add(1);
            lines += 1;
            if !body.iter().all(|b| b.is_ascii_whitespace())
                && let Err(e) = self.decoder.decode_line(i, body, out, now_ms)
            {
                let position =
                    record_position(&p.label, &p.file_label, split, p.line, record_offset);
                dead_letter::push(
                    &mut out.dead_letters,
                    &self.node,
                    &p.label,
                    &position,
                    &e.to_string(),
                    body,
                    now_ms,
                );
            }
            p.partial.clear();
        }
        Ok((lines, false))
    }
}

/// Appends to `buf` up to and including the next newline, stopping once `buf` holds more
/// than `limit` bytes or at the end of the file. Returns whether the newline was reached.
fn read_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(false);
        }
        let room = (limit + 1).saturating_sub(buf.len()).max(1);
        let take = avail.len().min(room);
        if let Some(i) = memchr::memchr(b'\n', &avail[..take]) {
            buf.extend_from_slice(&avail[..=i]);
            r.consume(i + 1);
            return Ok(true);
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if buf.len() > limit {
            return Ok(false);
        }
    }
}

/// Skips to just after the next newline or to the end of the file, holding nothing. Returns
/// the bytes skipped and whether the newline was reached.
fn skip_line(r: &mut impl BufRead) -> io::Result<(usize, bool)> {
    let mut total = 0;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok((total, false));
        }
        if let Some(i) = memchr::memchr(b'\n', avail) {
            r.consume(i + 1);
            return Ok((total + i + 1, true));
        }
        let n = avail.len();
        r.consume(n);
        total += n;
    }
}

impl<D: LineDecoder> Source for FileSource<D> {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    fn extra_ports(&self) -> Vec<PortSpec> {
        self.decoder.extra_ports()
    }

    fn connect_ports(&mut self, consumed: &[bool]) {
        self.decoder.connect_ports(consumed);
    }

    fn warnings(&self) -> Vec<String> {
        self.decoder.warnings()
    }

    fn partitions(&self) -> Vec<String> {
        self.partitions.iter().map(|p| p.label.clone()).collect()
    }

    fn read(
        &mut self,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<ReadStatus, RunError> {
        let n = self.partitions.len();
        let order: Vec<usize> = if self.spec.sequential {
            self.partitions
                .iter()
                .position(|p| !p.ended)
                .into_iter()
                .collect()
        } else {
            (0..n).map(|k| (self.next + k) % n).collect()
        };
        for i in order {
            if self.partitions[i].ended || self.bootstrap && i >= self.spec.paced_from {
                continue;
            }
            let max = if i < self.spec.paced_from {
                max_records
            } else {
                match self.allowance(max_records, now_ms) {
                    Ok(n) => n,
                    Err(retry_at_ms) => return Ok(ReadStatus::Pending { retry_at_ms }),
                }
            };
            let (lines, at_end) = self.read_file(i, out, max, now_ms)?;
            if lines > 0 {
                if i >= self.spec.paced_from {
                    self.emitted += lines as u64;
                }
                // Round-robin over partitions, so their watermarks advance together.
                self.next = (i + 1) % n;
                return Ok(ReadStatus::Data { partition: i });
            }
            if at_end && self.follows(i) {
                // Followed and read to its end: nothing to read now.
                out.caught_up.push(i);
            }
            if at_end && !self.follows(i) {
                let p = &mut self.partitions[i];
                p.ended = true;
                p.reader = None;
                self.decoder.partition_ended(i, out);
                return Ok(ReadStatus::PartitionEnded { partition: i });
            }
        }
        if self.partitions.iter().all(|p| p.ended) {
            Ok(ReadStatus::Finished)
        } else {
            Ok(ReadStatus::Pending {
                retry_at_ms: now_ms + self.spec.poll_interval.as_millis() as i64,
            })
        }
    }

    fn start_bootstrap(&mut self) -> bool {
        // A change stream's snapshot is its first, unpaced files.
        self.bootstrap = self.spec.sequential && self.spec.paced_from > 0;
        self.bootstrap
    }

    fn bootstrap_done(&self) -> bool {
        self.partitions[..self.spec.paced_from.min(self.partitions.len())]
            .iter()
            .all(|p| p.ended)
    }

    fn positions(&self) -> Vec<SourcePosition> {
        let decoder = self.decoder.state();
        self.partitions
            .iter()
            .map(|p| SourcePosition {
                source: self.node.clone(),
                partition: p.label.clone(),
                position: Position::of(&FilePosition {
                    offset: p.offset,
                    line: p.line,
                    decoder: decoder.clone(),
                    file: p.id.or(p.expect),
                    split_bytes: p.split.map(|s| s.split_bytes),
                }),
            })
            .collect()
    }

    fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError> {
        let mut decoder = None;
        let mut decoded = Vec::new();
        for sp in positions.iter().filter(|sp| sp.source == self.node) {
            let at = sp
                .position
                .decode::<FilePosition>()
                .map_err(|e| RunError::restore(self.node.clone(), e))?;
            decoder = decoder.or(at.decoder.clone());
            decoded.push((sp.partition.as_str(), at));
        }
        for p in &mut self.partitions {
            let (offset, line, file) = match restored_at(p, &decoded)
                .map_err(|e| RunError::restore(self.node.clone(), e))?
            {
                Some(at) => at,
                None => (p.split.map_or(0, |s| s.start), 0, None),
            };
            p.offset = offset;
            p.line = line;
            p.unaligned = p.split.is_some_and(|s| s.start > 0 && offset == s.start);
            p.id = None;
            p.expect = file;
            p.idle = false;
            p.draining = false;
            p.reader = None;
            p.partial.clear();
            p.long = None;
            p.ended = false;
        }
        self.decoder
            .restore_state(decoder.as_ref())
            .map_err(|e| RunError::restore(self.node.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::json::EventTimeSource;
    use crate::types::{DataType, Field, Schema, Value};
    use std::io::Write;
    use std::sync::Arc;

    fn source(paths: Vec<PathBuf>, follow: bool) -> FileSource {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::String),
            Field::new("ts", DataType::Int),
        ]));
        let decoder = JsonDecoder::new(schema, EventTimeSource::Field(1));
        FileSource::new(
            "src",
            FileSourceSpec {
                files: FilePart::wholes(paths),
                follow,
                rate: None,
                poll_interval: Duration::from_millis(50),
                base_dir: None,
                sequential: false,
                paced_from: 0,
                max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            },
            decoder,
        )
    }

    fn buffers(s: &FileSource) -> ReadBuffers {
        ReadBuffers::for_source(s)
    }

    #[test]
    fn reads_lines_and_dead_letters_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(
            &path,
            "{\"k\":\"a\",\"ts\":1}\nnot json\n\n{\"k\":\"b\",\"ts\":2}\r\n{\"k\":\"c\"}",
        )
        .unwrap();
        let mut s = source(vec![path.clone()], false);
        let mut out = buffers(&s);
        assert_eq!(
            s.read(&mut out, 100, 0).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records.row(1)[0], Value::from("b"));
        assert_eq!(out.records.event_time(1), 2);
        // `not json` and the record without its event-time field.
        assert_eq!(out.dead_letters.len(), 2);
        let pos = out.dead_letters.row(0)[2].as_str().unwrap().to_string();
        assert!(pos.ends_with("a.jsonl:2 (byte 17)"), "{pos}");
        assert!(
            out.dead_letters.row(1)[3]
                .as_str()
                .unwrap()
                .contains("event-time"),
        );
        assert_eq!(
            s.read(&mut out, 100, 0).unwrap(),
            ReadStatus::PartitionEnded { partition: 0 }
        );
        assert_eq!(s.read(&mut out, 100, 0).unwrap(), ReadStatus::Finished);
    }

    #[test]
    fn follow_waits_for_complete_lines_and_seek_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "{{\"k\":\"a\",\"ts\":1}}\n{{\"k\":\"b\",").unwrap();
        f.flush().unwrap();
        let mut s = source(vec![path.clone()], true);
        let mut out = buffers(&s);
        assert_eq!(
            s.read(&mut out, 100, 0).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        assert_eq!(out.records.len(), 1);
        assert_eq!(
            s.read(&mut out, 100, 0).unwrap(),
            ReadStatus::Pending { retry_at_ms: 50 }
        );
        writeln!(f, "\"ts\":2}}").unwrap();
        f.flush().unwrap();
        assert_eq!(
            s.read(&mut out, 100, 60).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records.row(1)[0], Value::from("b"));

        // A fresh instance rewound to the first record's end reads only the second.
        let positions = s.positions();
        let mut again = source(vec![path], true);
        let mut first = positions.clone();
        first[0].position = Position::of(&FilePosition {
            offset: 17,
            line: 1,
            decoder: None,
            file: None,
            split_bytes: None,
        });
        again.seek(&first).unwrap();
        let mut out2 = buffers(&again);
        again.read(&mut out2, 100, 0).unwrap();
        assert_eq!(out2.records.len(), 1);
        assert_eq!(out2.records.row(0)[0], Value::from("b"));
        assert_eq!(again.positions(), positions);
    }

    #[test]
    fn sequential_follow_tails_only_the_last_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(&a, "{\"k\":\"a\",\"ts\":1}\n").unwrap();
        std::fs::write(&b, "{\"k\":\"b\",\"ts\":2}\n").unwrap();
        let mut s = source(vec![a, b.clone()], true);
        s.spec.sequential = true;
        let mut out = buffers(&s);
        assert_eq!(
            s.read(&mut out, 10, 0).unwrap(),
            ReadStatus::Data { partition: 0 }
        );
        assert_eq!(
            s.read(&mut out, 10, 0).unwrap(),
            ReadStatus::PartitionEnded { partition: 0 },
            "an earlier segment ends even in follow mode"
        );
        assert_eq!(
            s.read(&mut out, 10, 0).unwrap(),
            ReadStatus::Data { partition: 1 }
        );
        assert!(matches!(
            s.read(&mut out, 10, 0).unwrap(),
            ReadStatus::Pending { .. }
        ));
        std::fs::write(&b, "{\"k\":\"b\",\"ts\":2}\n{\"k\":\"c\",\"ts\":3}\n").unwrap();
        assert_eq!(
            s.read(&mut out, 10, 60).unwrap(),
            ReadStatus::Data { partition: 1 }
        );
        assert_eq!(out.records.len(), 3);
    }

    #[test]
    fn rate_limit_paces_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("{{\"k\":\"a\",\"ts\":{i}}}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let mut s = source(vec![path], false);
        s.spec.rate = Some(10.0);
        let mut out = buffers(&s);
        s.read(&mut out, 1000, 0).unwrap();
        assert_eq!(out.records.len(), 1);
        assert!(matches!(
            s.read(&mut out, 1000, 0).unwrap(),
            ReadStatus::Pending { retry_at_ms: 100 }
        ));
        s.read(&mut out, 1000, 1000).unwrap();
        assert_eq!(out.records.len(), 11);
    }

    #[test]
    fn a_line_longer_than_max_line_bytes_goes_to_dead_letter_truncated_with_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let long = "x".repeat(10_000);
        std::fs::write(
            &path,
            format!("{{\"k\":\"a\",\"ts\":1}}\n{long}\n{{\"k\":\"b\",\"ts\":2}}\n{long}"),
        )
        .unwrap();
        let mut s = source(vec![path], false);
        s.spec.max_line_bytes = 100;
        let mut out = buffers(&s);
        s.read(&mut out, 100, 0).unwrap();
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records.row(1)[0], Value::from("b"));
        // The long line in the middle, and the unterminated last one.
        assert_eq!(out.dead_letters.len(), 2);
        let dl = out.dead_letters.row(0);
        assert!(dl[2].as_str().unwrap().ends_with("a.jsonl:2 (byte 17)"));
        let reason = dl[3].as_str().unwrap();
        assert!(reason.contains("line of 10001 bytes"), "{reason}");
        assert!(reason.contains("max_line_bytes (100)"), "{reason}");
        assert_eq!(dl[4].as_str().unwrap(), &long[..100]);
        let last = out.dead_letters.row(1)[3].as_str().unwrap().to_string();
        assert!(last.contains("line of 10000 bytes"), "{last}");
        // Never held whole.
        assert!(s.partitions[0].partial.capacity() < 1000);
        let at: FilePosition = s.positions()[0].position.decode().unwrap();
        assert_eq!((at.offset, at.line), (17 + 10_001 + 17 + 10_000, 4));
    }

    #[test]
    fn a_followed_long_line_is_skipped_as_it_arrives_and_restarts_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "{}", "y".repeat(500)).unwrap();
        f.flush().unwrap();
        let mut s = source(vec![path.clone()], true);
        s.spec.max_line_bytes = 100;
        let mut out = buffers(&s);
        assert!(matches!(
            s.read(&mut out, 100, 0).unwrap(),
            ReadStatus::Pending { .. }
        ));
        assert_eq!(out.dead_letters.len(), 0);
        // A checkpoint now resumes at the long line's start.
        let mid = s.positions();
        assert_eq!(mid[0].position.decode::<FilePosition>().unwrap().offset, 0);
        writeln!(f, "{}\n{{\"k\":\"c\",\"ts\":3}}", "y".repeat(500)).unwrap();
        f.flush().unwrap();
        s.read(&mut out, 100, 60).unwrap();
        assert_eq!(out.dead_letters.len(), 1);
        let reason = out.dead_letters.row(0)[3].as_str().unwrap().to_string();
        assert!(reason.contains("line of 1001 bytes"), "{reason}");
        assert_eq!(out.records.len(), 1);
        // Restored mid-line: the same dead letter, then the record.
        let mut again = source(vec![path], true);
        again.spec.max_line_bytes = 100;
        again.seek(&mid).unwrap();
        let mut out2 = buffers(&again);
        again.read(&mut out2, 100, 0).unwrap();
        assert_eq!(out2.dead_letters.len(), 1);
        assert_eq!(out2.records.len(), 1);
        assert_eq!(again.positions(), s.positions());
    }

    fn line(k: &str, ts: i64) -> String {
        format!("{{\"k\":\"{k}\",\"ts\":{ts}}}\n")
    }

    /// Keys of the records read until the source has nothing more now.
    fn read_keys(s: &mut FileSource, now_ms: i64) -> Vec<String> {
        let mut out = buffers(s);
        while let ReadStatus::Data { .. } = s.read(&mut out, 100, now_ms).unwrap() {}
        (0..out.records.len())
            .map(|r| out.records.row(r)[0].as_str().unwrap().to_string())
            .collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_followed_file_rotated_is_read_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        append(&path, &line("a", 1));
        let mut s = source(vec![path.clone()], true);
        assert_eq!(read_keys(&mut s, 0), ["a"]);
        // Written before the rotation but not read yet, then an unterminated last line.
        append(&path, &(line("b", 2) + "{\"k\":\"c\",\"ts\":3}"));
        std::fs::rename(&path, dir.path().join("a.jsonl.1")).unwrap();
        append(&path, &line("d", 4));
        assert_eq!(read_keys(&mut s, 10), ["b", "c", "d"]);
        append(&path, &line("e", 5));
        assert_eq!(read_keys(&mut s, 20), ["e"]);
        let at: FilePosition = s.positions()[0].position.decode().unwrap();
        assert_eq!(at.line, 2);
        let new = std::fs::metadata(&path).unwrap();
        assert_eq!(at.file.unwrap().inode, new.ino());
    }

    #[test]
    fn a_followed_file_truncated_or_rewritten_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        append(&path, &(line("a", 1) + &line("b", 2)));
        let mut s = source(vec![path.clone()], true);
        assert_eq!(read_keys(&mut s, 0), ["a", "b"]);
        // Truncated (same inode) and rewritten shorter.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap()
            .write_all(line("c", 3).as_bytes())
            .unwrap();
        assert_eq!(read_keys(&mut s, 10), ["c"]);
        // Rewritten in place, longer than what was read: the first bytes differ.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap()
            .write_all((line("x", 9) + &line("y", 9)).as_bytes())
            .unwrap();
        assert_eq!(read_keys(&mut s, 20), ["x", "y"]);
        let at: FilePosition = s.positions()[0].position.decode().unwrap();
        assert_eq!(at.line, 2);
    }

    #[test]
    fn a_restored_position_finishes_the_rotated_file_then_reads_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        append(&path, &line("a", 1));
        let mut s = source(vec![path.clone()], true);
        assert_eq!(read_keys(&mut s, 0), ["a"]);
        let checkpoint = s.positions();
        append(&path, &line("b", 2));
        std::fs::rename(&path, dir.path().join("a.jsonl.1")).unwrap();
        append(&path, &line("c", 3));
        let mut again = source(vec![path.clone()], true);
        again.seek(&checkpoint).unwrap();
        assert_eq!(read_keys(&mut again, 0), ["b", "c"]);
    }

    #[test]
    fn a_restored_position_whose_file_is_gone_reads_the_new_file_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        append(&path, &(line("a", 1) + &line("b", 2)));
        let mut s = source(vec![path.clone()], false);
        assert_eq!(read_keys(&mut s, 0), ["a", "b"]);
        let checkpoint = s.positions();
        std::fs::remove_file(&path).unwrap();
        // Perhaps under the same inode: the fingerprint tells them apart.
        append(&path, &(line("c", 3) + &line("d", 4) + &line("e", 5)));
        let mut again = source(vec![path.clone()], false);
        again.seek(&checkpoint).unwrap();
        assert_eq!(read_keys(&mut again, 0), ["c", "d", "e"]);
    }

    #[test]
    fn a_version_1_position_applies_to_the_file_at_the_path_unless_it_is_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        append(&path, &(line("a", 1) + &line("b", 2)));
        let label = path.display().to_string();
        let v1 = |offset: u64| {
            let text = format!(r#"{{"kind":"file","offset":{offset},"line":1}}"#);
            vec![SourcePosition {
                source: "src".into(),
                partition: label.clone(),
                position: serde_json::from_str(&text).unwrap(),
            }]
        };
        let mut s = source(vec![path.clone()], false);
        s.seek(&v1(17)).unwrap();
        assert_eq!(read_keys(&mut s, 0), ["b"]);
        let at: FilePosition = s.positions()[0].position.decode().unwrap();
        assert_eq!(at.file.unwrap().head_len, 34);
        // An offset past the end: the file was truncated, read from its start.
        let mut s = source(vec![path], false);
        s.seek(&v1(1000)).unwrap();
        assert_eq!(read_keys(&mut s, 0), ["a", "b"]);
    }

    #[test]
    fn a_restored_identity_of_no_file_reads_the_file_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        append(&path, &(line("a", 1) + &line("b", 2)));
        let meta = std::fs::metadata(&path).unwrap();
        let mut s = source(vec![path.clone()], false);
        let mut positions = s.positions();
        // Bytes from disk: the right inode with an impossible fingerprint, or no such file.
        for file in [
            FileIdentity {
                dev: meta.dev(),
                inode: meta.ino(),
                head_len: u64::MAX,
                head_crc: 0,
            },
            FileIdentity {
                dev: u64::MAX,
                inode: 0,
                head_len: 0,
                head_crc: 0,
            },
        ] {
            positions[0].position = Position::of(&FilePosition {
                offset: 17,
                line: 1,
                decoder: None,
                file: Some(file),
                split_bytes: None,
            });
            s.seek(&positions).unwrap();
            assert_eq!(read_keys(&mut s, 0), ["a", "b"]);
        }
    }
}
