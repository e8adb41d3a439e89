//! The `file:` block of a source: the files (paths and globs relative to the pipeline file),
//! pacing and tailing, and the format of their lines — `json` (rows of the source's
//! `schema`, each file its own partition) or `debezium` (a change stream of the source's
//! `tables`: the snapshot files, then the change files, read in order as one log).
//! Each file is read once however often it is listed or matched (compared by canonical
//! path; a repeat is a warning), and `max_line_bytes` bounds the line held in memory.
//! JSON files not followed are cut into byte-range splits (`split_bytes`, by default when
//! the source has several instances), so one large file is decoded by all of them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use crate::config::component::{BuiltSource, SourceConfig, SourceContext};
use crate::config::issues::Issues;
use crate::config::yaml::S;
use crate::dataflow::Source;
use crate::format::json::JsonDecoder;
use crate::runtime::plan::SourceFactory;
use crate::sources::cdc::{ChangeDecoder, ChangeTables, change_tables, main_schema};
use crate::sources::file::{DEFAULT_MAX_LINE_BYTES, FilePart, FileSource, FileSourceSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Files or glob patterns, relative to the pipeline file's directory. With
    /// `format: debezium`, the change files, read in this order after `snapshot`.
    #[serde(default)]
    pub paths: Vec<S<String>>,
    /// `json` (default) or `debezium`.
    pub format: Option<S<String>>,
    /// With `format: debezium`: files holding the snapshot, read first and unpaced; their
    /// end ends every table's snapshot.
    #[serde(default)]
    pub snapshot: Vec<S<String>>,
    /// Keep tailing (with `debezium`, the last change file).
    #[serde(default)]
    pub follow: bool,
    /// Records per second (with `debezium`, change records); omit to read as fast as
    /// possible.
    pub rate: Option<S<f64>>,
    pub poll_interval: Option<S<String>>,
    /// The longest line (bytes, without its newline) read whole; a longer one goes to
    /// `dead_letter` with its length and its first KiB. Default 4 MiB.
    pub max_line_bytes: Option<S<u64>>,
    /// With `format: json`, files not followed: read a file larger than this in byte ranges
    /// of this size, each its own partition, spread over the source's instances. Default:
    /// `DEFAULT_SPLIT_BYTES` when the source has several instances, otherwise whole files.
    pub split_bytes: Option<S<u64>>,
}

/// `split_bytes` when a source of several instances does not set it: 64 MiB.
pub const DEFAULT_SPLIT_BYTES: u64 = 64 * 1024 * 1024;

/// Bounds of `split_bytes`.
const SPLIT_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(1 << 40);

/// Bounds of `max_line_bytes`: a line must be able to hold a record, and a buffer of the
/// maximum must fit in memory.
const MAX_LINE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 64..=(1 << 30);

/// How the files are read, whatever their format.
struct Reading {
    rate: Option<f64>,
    poll_interval: Duration,
    max_line_bytes: usize,
}

const FORMATS: &str = "`json` or `debezium`";

impl SourceConfig for FileConfig {
    fn build(&self, cx: &mut SourceContext<'_>) -> Option<BuiltSource> {
        let debezium = match self.format.as_ref().map(|f| f.value.as_str()) {
            None | Some("json") => false,
            Some("debezium") => true,
            Some(other) => {
                let at = self.format.as_ref().expect("some").referenced;
                cx.issue(
                    &at,
                    "format",
                    format!("unknown format `{other}`; use {FORMATS}"),
                );
                cx.skip_unused_checks();
                return None;
            }
        };
        let poll_interval = self
            .poll_interval
            .as_ref()
            .and_then(|d| {
                cx.issues
                    .duration(d, &format!("{}.poll_interval", cx.field))
            })
            .unwrap_or(Duration::from_millis(100));
        let rate = self
            .rate
            .as_ref()
            .and_then(|r| cx.issues.positive(r, &format!("{}.rate", cx.field)));
        let max_line_bytes = match &self.max_line_bytes {
            None => DEFAULT_MAX_LINE_BYTES,
            Some(m) if MAX_LINE_BYTES_RANGE.contains(&m.value) => m.value as usize,
            Some(m) => {
                cx.issue(
                    &m.referenced,
                    "max_line_bytes",
                    format!(
                        "must be from {} to {} (bytes)",
                        MAX_LINE_BYTES_RANGE.start(),
                        MAX_LINE_BYTES_RANGE.end()
                    ),
                );
                DEFAULT_MAX_LINE_BYTES
            }
        };
        let reading = Reading {
            rate,
            poll_interval,
            max_line_bytes,
        };
        if debezium {
            self.change_stream(cx, reading)
        } else {
            self.rows(cx, reading)
        }
    }
}

impl FileConfig {
    /// JSON lines of the source's `schema`, one partition per file.
    fn rows(&self, cx: &mut SourceContext<'_>, reading: Reading) -> Option<BuiltSource> {
        let Reading {
            rate,
            poll_interval,
            max_line_bytes,
        } = reading;
        if let Some(first) = self.snapshot.first() {
            cx.issue(
                &first.referenced,
                "snapshot",
                "snapshot files belong to a change stream: set `format: debezium`",
            );
        }
        let schema = cx.rows("a file source of `format: json` needs a `schema` (column: type)");
        let paths = self.expand(
            cx.issues,
            &cx.field,
            "paths",
            &self.paths,
            cx.base_dir,
            &cx.location,
        );
        let paths = read_once(cx, paths);
        let schema = schema?;
        let event_time = cx.event_time_column(&schema);
        let rate = rate.map(|r| r / cx.parallelism as f64);
        let follow = self.follow;
        let split_bytes = self.split_bytes(cx);
        let node = cx.name.to_string();
        let base = cx.base_dir.to_path_buf();
        let decoder_schema = schema.clone();
        let unread = cx.unread.clone();
        // Cut once, when the first instance starts, so every instance shares one layout.
        let layout: Arc<OnceLock<Vec<FilePart>>> = Arc::new(OnceLock::new());
        let factory: SourceFactory = Arc::new(move |inst, par| {
            let mine = layout
                .get_or_init(|| FilePart::layout(&paths, split_bytes))
                .iter()
                .enumerate()
                .filter(|(i, _)| i % par == inst)
                .map(|(_, p)| p.clone())
                .collect();
            let decoder = JsonDecoder::new(decoder_schema.clone(), event_time)
                .carrying_raw(|column| unread.contains(column));
            Ok(Box::new(FileSource::new(
                &node,
                FileSourceSpec {
                    files: mine,
                    follow,
                    rate,
                    poll_interval,
                    base_dir: Some(base.clone()),
                    sequential: false,
                    paced_from: 0,
                    max_line_bytes,
                },
                decoder,
            )) as Box<dyn Source>)
        });
        Some(BuiltSource {
            schema,
            extra_ports: Vec::new(),
            table_keys: Vec::new(),
            factory,
            dead_letters: true,
            main_is_view: false,
            preflight: None,
            current_tables: None,
            replayable: !follow,
        })
    }

    /// The size files are cut at (`None`: read whole): `split_bytes`, or by default
    /// `DEFAULT_SPLIT_BYTES` with several instances; never for followed files, which grow.
    fn split_bytes(&self, cx: &mut SourceContext<'_>) -> Option<u64> {
        let Some(set) = &self.split_bytes else {
            return (cx.parallelism > 1 && !self.follow).then_some(DEFAULT_SPLIT_BYTES);
        };
        if self.follow {
            cx.issue(
                &set.referenced,
                "split_bytes",
                "a followed file grows and is read whole: remove `split_bytes` or `follow`",
            );
            return None;
        }
        if !SPLIT_BYTES_RANGE.contains(&set.value) {
            cx.issue(
                &set.referenced,
                "split_bytes",
                format!(
                    "must be from {} to {} (bytes)",
                    SPLIT_BYTES_RANGE.start(),
                    SPLIT_BYTES_RANGE.end()
                ),
            );
            return None;
        }
        Some(set.value)
    }

    /// Debezium records of the source's `tables`: snapshot files, then change files, as one
    /// log read by one instance.
    fn change_stream(&self, cx: &mut SourceContext<'_>, reading: Reading) -> Option<BuiltSource> {
        if let Some(set) = &self.split_bytes {
            cx.issue(
                &set.referenced,
                "split_bytes",
                "a change stream is one log, read in order: remove `split_bytes`",
            );
        }
        let Reading {
            rate,
            poll_interval,
            max_line_bytes,
        } = reading;
        let tables = change_tables(cx);
        if self.snapshot.is_empty() && self.paths.is_empty() {
            let at = cx.location;
            cx.issue(
                &at,
                "paths",
                "list the change files: `snapshot: [...]` (read first) and/or `paths: [...]`",
            );
            return None;
        }
        let snapshot = self.expand(
            cx.issues,
            &cx.field,
            "snapshot",
            &self.snapshot,
            cx.base_dir,
            &cx.location,
        );
        let changes = self.expand(
            cx.issues,
            &cx.field,
            "paths",
            &self.paths,
            cx.base_dir,
            &cx.location,
        );
        let ChangeTables {
            tables,
            ports: extra_ports,
            keys: table_keys,
        } = tables?;
        let snapshot = read_once(cx, snapshot);
        let changes = read_once_after(cx, &snapshot, changes);
        let snapshot_files = snapshot.len();
        let mut paths = snapshot;
        paths.extend(changes);
        let follow = self.follow;
        let node = cx.name.to_string();
        let base = cx.base_dir.to_path_buf();
        let factory: SourceFactory = Arc::new(move |inst, _par| {
            // A change stream is one log: one instance reads every file, in order.
            let paths = if inst == 0 { paths.clone() } else { Vec::new() };
            let decoder = ChangeDecoder::new(&node, tables.clone(), snapshot_files)
                .map_err(|e| crate::error::RunError::build(node.clone(), e.reason))?;
            Ok(Box::new(FileSource::new(
                &node,
                FileSourceSpec {
                    files: FilePart::wholes(paths.clone()),
                    follow,
                    rate,
                    poll_interval,
                    base_dir: Some(base.clone()),
                    sequential: true,
                    paced_from: snapshot_files,
                    max_line_bytes,
                },
                decoder,
            )) as Box<dyn Source>)
        });
        Some(BuiltSource {
            schema: main_schema(),
            extra_ports,
            table_keys,
            factory,
            dead_letters: true,
            main_is_view: true,
            preflight: None,
            current_tables: None,
            replayable: !follow,
        })
    }

    /// Files and globs, relative to `base`; each must exist (or match) unless followed.
    fn expand(
        &self,
        issues: &mut Issues,
        block: &str,
        what: &str,
        list: &[S<String>],
        base: &Path,
        block_at: &serde_saphyr::Location,
    ) -> Vec<Listed> {
        let field = format!("{block}.{what}");
        let mut out = Vec::new();
        if list.is_empty() && what == "paths" && self.snapshot.is_empty() {
            issues.at(block_at, &field, "list at least one file or pattern");
        }
        for p in list {
            let joined = base.join(&p.value);
            let pattern = joined.to_string_lossy().into_owned();
            let is_glob = p.value.contains(['*', '?', '[']);
            if !is_glob {
                if !joined.exists() && !self.follow {
                    issues.at(
                        &p.referenced,
                        &field,
                        format!("no such file `{}`", joined.display()),
                    );
                }
                out.push(Listed {
                    path: joined,
                    at: p.referenced,
                    what: what.to_string(),
                });
                continue;
            }
            match glob::glob(&pattern) {
                Ok(paths) => {
                    let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                    found.sort();
                    if found.is_empty() {
                        issues.at(
                            &p.referenced,
                            &field,
                            format!("no file matches `{pattern}`"),
                        );
                    }
                    out.extend(found.into_iter().map(|path| Listed {
                        path,
                        at: p.referenced,
                        what: what.to_string(),
                    }));
                }
                Err(e) => issues.at(
                    &p.referenced,
                    &field,
                    format!("invalid pattern `{}`: {e}", p.value),
                ),
            }
        }
        out
    }
}

/// A file as listed (or matched by a glob): where in the pipeline file, and in which list.
struct Listed {
    path: PathBuf,
    at: serde_saphyr::Location,
    what: String,
}

/// The listed files, each once: a file listed twice, matched by two globs, or reached
/// through another path (`./a.jsonl`, a symbolic link) would otherwise be read twice. The
/// first listing wins; each later one is a warning.
fn read_once(cx: &mut SourceContext<'_>, listed: Vec<Listed>) -> Vec<PathBuf> {
    read_once_after(cx, &[], listed)
}

/// `read_once`, also dropping files already in `before` (an earlier list of the block).
fn read_once_after(
    cx: &mut SourceContext<'_>,
    before: &[PathBuf],
    listed: Vec<Listed>,
) -> Vec<PathBuf> {
    let mut seen: Vec<(PathBuf, PathBuf)> = before
        .iter()
        .map(|p| (same_file_key(p), p.clone()))
        .collect();
    let mut out = Vec::new();
    for l in listed {
        let key = same_file_key(&l.path);
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            let message = if *first == l.path {
                format!("`{}` is listed twice; it is read once", l.path.display())
            } else {
                format!(
                    "`{}` is the same file as `{}`; it is read once",
                    l.path.display(),
                    first.display()
                )
            };
            cx.warn(&l.at, &l.what, message);
            continue;
        }
        seen.push((key, l.path.clone()));
        out.push(l.path);
    }
    out
}

/// What identifies a listed file: its canonical path, or (a followed file that does not
/// exist yet) its path without `.` components.
fn same_file_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.components().collect())
}
