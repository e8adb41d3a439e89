//! Byte-range splits of a file, so several decoders read one large file: where the cuts
//! fall (every `split_bytes` bytes, whatever the file's size or the number of instances),
//! which lines a split owns (those that start in its range), and how a split resumes from a
//! checkpoint — its own position, or a position of the whole file carried into it. A layout
//! that cannot be resumed exactly (other split sizes, splits now read whole) is refused.

use std::path::PathBuf;

use super::{FileIdentity, FilePosition, Partition};

/// A file, or the part of it one partition reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePart {
    pub path: PathBuf,
    pub split: Option<FileSplit>,
}

/// A byte range of a file read as a partition of its own: the lines that *start* in
/// `[start, end)` (a line crossing `end` is read whole by this split and skipped by the
/// next). Splits are cut every `split_bytes` bytes, so a split's place does not depend on the
/// file's size or the number of instances; the last one (`end` = `None`) reads to the end
/// of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSplit {
    pub start: u64,
    pub end: Option<u64>,
    pub split_bytes: u64,
}

impl FilePart {
    /// Each of `paths`, whole.
    pub fn wholes(paths: impl IntoIterator<Item = PathBuf>) -> Vec<FilePart> {
        paths
            .into_iter()
            .map(|path| FilePart { path, split: None })
            .collect()
    }

    /// `paths` cut into splits of `split_bytes` (`None`: whole files). A file of at most
    /// `split_bytes` bytes (or that cannot be read now) stays whole.
    pub fn layout(paths: &[PathBuf], split_bytes: Option<u64>) -> Vec<FilePart> {
        let mut parts = Vec::new();
        for path in paths {
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            match split_bytes.filter(|&b| b > 0 && size > b) {
                None => parts.push(FilePart {
                    path: path.clone(),
                    split: None,
                }),
                Some(b) => {
                    let n = size.div_ceil(b);
                    parts.extend((0..n).map(|k| FilePart {
                        path: path.clone(),
                        split: Some(FileSplit {
                            start: k * b,
                            end: (k + 1 < n).then(|| (k + 1) * b),
                            split_bytes: b,
                        }),
                    }));
                }
            }
        }
        parts
    }
}

/// Where partition `p` resumes from the restored positions of its source (`None`: from its
/// start): its own position, or — for a split of a file that was read whole — the whole
/// file's offset carried into the split (the lines before it are read). A file read in
/// splits of another size, or read in splits and now whole, cannot be resumed: which of its
/// lines were read is not one offset per partition.
pub(super) fn restored_at(
    p: &Partition,
    positions: &[(&str, FilePosition)],
) -> Result<Option<(u64, u64, Option<FileIdentity>)>, String> {
    let mine = p.split.map(|s| s.split_bytes);
    let of_file = |label: &str| {
        label == p.file_label
            || label
                .strip_prefix(p.file_label.as_str())
                .and_then(|rest| rest.strip_prefix('@'))
                .is_some_and(|n| n.parse::<u64>().is_ok())
    };
    for (label, at) in positions.iter().filter(|(l, _)| of_file(l)) {
        if at.split_bytes != mine && !(at.split_bytes.is_none() && *label == p.file_label) {
            let was = match at.split_bytes {
                Some(b) => format!("in splits of {b} bytes"),
                None => "whole".to_string(),
            };
            let now = match mine {
                Some(b) => format!("in splits of {b} bytes"),
                None => "whole".to_string(),
            };
            let set = match at.split_bytes {
                Some(b) => format!("set `split_bytes: {b}` to resume it"),
                None => "read it whole to resume it".to_string(),
            };
            return Err(format!(
                "the checkpoint read `{}` {was} and this run reads it {now}: {set}",
                p.file_label
            ));
        }
    }
    if let Some((_, at)) = positions.iter().find(|(l, _)| *l == p.label) {
        return Ok(Some((at.offset, at.line, at.file)));
    }
    let Some(split) = p.split else {
        return Ok(None);
    };
    // A file read whole until now: lines before its offset are read.
    let Some((_, whole)) = positions.iter().find(|(l, _)| *l == p.file_label) else {
        return Ok(None);
    };
    if whole.offset > split.start {
        // Past its end: every line starting in the split was read.
        Ok(Some((whole.offset, 0, whole.file)))
    } else {
        Ok(Some((split.start, 0, whole.file)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::dataflow::{Position, ReadBuffers, ReadStatus, Source, SourcePosition};
    use crate::format::json::{EventTimeSource, JsonDecoder};
    use crate::sources::file::{DEFAULT_MAX_LINE_BYTES, FileSource, FileSourceSpec};
    use crate::types::{DataType, Field, Schema};

    fn source(files: Vec<FilePart>) -> FileSource {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::String),
            Field::new("ts", DataType::Int),
        ]));
        FileSource::new(
            "src",
            FileSourceSpec {
                files,
                follow: false,
                rate: None,
                poll_interval: Duration::from_millis(10),
                base_dir: None,
                sequential: false,
                paced_from: 0,
                max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            },
            JsonDecoder::new(schema, EventTimeSource::Field(1)),
        )
    }

    /// Instance `inst` of `par` over `path` cut every `bytes`.
    fn instance(path: &Path, bytes: Option<u64>, inst: usize, par: usize) -> FileSource {
        let mine = FilePart::layout(&[path.to_path_buf()], bytes)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % par == inst)
            .map(|(_, p)| p)
            .collect();
        source(mine)
    }

    /// Reads up to `max_calls` batches of 3 lines (all, if `None`): keys of records, then of
    /// dead letters' positions.
    fn read(s: &mut FileSource, max_calls: Option<usize>) -> (Vec<String>, Vec<String>) {
        let mut out = ReadBuffers::for_source(s);
        let mut calls = 0;
        while max_calls.is_none_or(|m| calls < m) {
            calls += 1;
            match s.read(&mut out, 3, 0).unwrap() {
                ReadStatus::Finished => break,
                ReadStatus::Pending { .. } => panic!("a file not followed never waits"),
                _ => {}
            }
        }
        let keys = (0..out.records.len())
            .map(|i| out.records.row(i)[0].as_str().expect("a key").to_string())
            .collect();
        let dead = (0..out.dead_letters.len())
            .map(|i| format!("{:?}", out.dead_letters.row(i)[2]))
            .collect();
        (keys, dead)
    }

    fn lines_file(dir: &Path, keys: &[String]) -> PathBuf {
        let path = dir.join("a.jsonl");
        let text: String = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{{\"k\":\"{k}\",\"ts\":{i}}}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn cuts_fall_every_split_bytes_and_small_files_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (big, small) = (dir.path().join("big"), dir.path().join("small"));
        std::fs::write(&big, vec![b'x'; 25]).unwrap();
        std::fs::write(&small, vec![b'x'; 10]).unwrap();
        let parts = FilePart::layout(&[big.clone(), small.clone()], Some(10));
        let ranges: Vec<_> = parts
            .iter()
            .map(|p| (p.path.clone(), p.split.map(|s| (s.start, s.end))))
            .collect();
        assert_eq!(
            ranges,
            [
                (big.clone(), Some((0, Some(10)))),
                (big.clone(), Some((10, Some(20)))),
                (big, Some((20, None))),
                (small, None),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the file is cut and the splits shared out, every line is read exactly
        /// once (lines crossing a cut, starting on it, blank, the last without its newline).
        #[test]
        fn every_line_is_read_once_whatever_the_cuts(
            lens in proptest::collection::vec(0usize..40, 1..40),
            bytes in 1u64..200,
            par in 1usize..4,
            last_newline in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<String> = lens.iter().enumerate()
                .map(|(i, n)| format!("{i}-{}", "y".repeat(*n))).collect();
            let path = lines_file(dir.path(), &keys);
            if !last_newline {
                let text = std::fs::read(&path).unwrap();
                std::fs::write(&path, &text[..text.len() - 1]).unwrap();
            }
            let mut got = Vec::new();
            for inst in 0..par {
                got.extend(read(&mut instance(&path, Some(bytes), inst, par), None).0);
            }
            prop_assert_eq!(sorted(got), sorted(keys));
        }

        /// Splits stopped anywhere and restored into fresh instances read the rest once,
        /// including a whole file's position carried into splits.
        #[test]
        fn restored_splits_read_the_rest_once(
            n in 1usize..60,
            bytes in 1u64..300,
            stop_after in 0usize..12,
            from_whole in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<String> = (0..n).map(|i| format!("key{i}")).collect();
            let path = lines_file(dir.path(), &keys);
            let first_bytes = if from_whole { None } else { Some(bytes) };
            let mut first = instance(&path, first_bytes, 0, 1);
            let (mut got, _) = read(&mut first, Some(stop_after));
            let positions = first.positions();
            for inst in 0..2 {
                let mut again = instance(&path, Some(bytes), inst, 2);
                again.seek(&positions).unwrap();
                got.extend(read(&mut again, None).0);
            }
            prop_assert_eq!(sorted(got), sorted(keys));
        }
    }

    #[test]
    fn a_split_position_names_its_split_size_and_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..20).map(|i| format!("key{i}")).collect();
        let path = lines_file(dir.path(), &keys);
        let s = instance(&path, Some(64), 0, 1);
        let labels = s.partitions();
        assert!(labels.len() > 2);
        assert!(labels[1].ends_with("a.jsonl@64"), "{labels:?}");
        let at: FilePosition = s.positions()[1].position.decode().unwrap();
        assert_eq!((at.offset, at.split_bytes), (64, Some(64)));
    }

    #[test]
    fn a_checkpoint_of_other_splits_or_of_splits_now_read_whole_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
        let path = lines_file(dir.path(), &keys);
        let mut first = instance(&path, Some(100), 0, 1);
        read(&mut first, Some(2));
        let positions = first.positions();
        let err = instance(&path, Some(128), 0, 1)
            .seek(&positions)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in splits of 100 bytes")
                && err.contains("in splits of 128 bytes")
                && err.contains("split_bytes: 100"),
            "{err}"
        );
        let err = instance(&path, None, 0, 1)
            .seek(&positions)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reads it whole"), "{err}");
        // Another instance's splits of the same size are not this one's business.
        let mut other = instance(&path, Some(100), 1, 2);
        other.seek(&positions).unwrap();
    }

    #[test]
    fn a_bad_line_in_a_split_is_a_dead_letter_at_its_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let good = "{\"k\":\"a\",\"ts\":1}\n";
        std::fs::write(&path, format!("{good}{good}{good}not json\n{good}")).unwrap();
        let mut got = Vec::new();
        let mut dead = Vec::new();
        for inst in 0..2 {
            let (k, d) = read(&mut instance(&path, Some(20), inst, 2), None);
            got.extend(k);
            dead.extend(d);
        }
        assert_eq!(got.len(), 4);
        let at = 3 * good.len();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].contains(&format!("byte {at}")), "{dead:?}");
    }

    #[test]
    fn positions_round_trip_through_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..30).map(|i| format!("key{i}")).collect();
        let path = lines_file(dir.path(), &keys);
        let mut s = instance(&path, Some(50), 0, 1);
        read(&mut s, Some(4));
        let positions: Vec<SourcePosition> = s.positions();
        let copied: Vec<SourcePosition> = positions
            .iter()
            .map(|p| SourcePosition {
                source: p.source.clone(),
                partition: p.partition.clone(),
                position: Position::of(&p.position.decode::<FilePosition>().unwrap()),
            })
            .collect();
        let mut again = instance(&path, Some(50), 0, 1);
        again.seek(&copied).unwrap();
        assert_eq!(again.positions(), positions);
    }
}
