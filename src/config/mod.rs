//! The pipeline file: loading (strict YAML, every value located) and compiling it into a
//! runtime `Plan` (`compile`), each component's block built by the component itself
//! (`component`, `crate::components`). Every problem found is reported with the file, line,
//! column and the dotted path of the field; all problems are collected before failing, so
//! one `validate` run shows them all. Input paths are relative to the pipeline file's directory; output paths to the
//! working directory.

pub mod compile;
pub mod component;
pub mod env;
pub mod issues;
pub mod tables;
pub mod yaml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigIssue};
use crate::runtime::plan::Plan;
use yaml::PipelineFile;

pub use compile::compile;

/// Command-line settings that take precedence over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub parallelism: Option<usize>,
    /// `--metrics-addr`: an address, or `off`.
    pub metrics_addr: Option<String>,
    /// Sink files under `watershed-out/` in the file are written under this directory.
    pub output_dir: Option<PathBuf>,
    /// Replaces the file's `checkpoint.dir`.
    pub checkpoint_dir: Option<PathBuf>,
}

/// The default output directory that `Overrides::output_dir` replaces.
pub const DEFAULT_OUTPUT_DIR: &str = "watershed-out";

pub(crate) fn output_path(path: &str, overrides: &Overrides) -> PathBuf {
    let p = PathBuf::from(path);
    match (&overrides.output_dir, p.strip_prefix(DEFAULT_OUTPUT_DIR)) {
        (Some(dir), Ok(rest)) => dir.join(rest),
        _ => p,
    }
}

/// A compiled pipeline, ready to run.
pub struct Compiled {
    pub plan: Plan,
    pub warnings: Vec<String>,
    /// Where to serve the HTTP endpoint (`--metrics-addr`, else `metrics.addr`).
    pub metrics_addr: MetricsAddr,
    /// How the endpoint treats connections (`metrics.*` in the file).
    pub endpoint_limits: crate::http::Limits,
    /// Sink name and where it writes.
    pub outputs: Vec<(String, String)>,
    /// Read-only checks of the systems the sources read and the sinks write, by component
    /// (`source NAME`, `sink NAME`).
    pub preflights: Vec<(String, component::Preflight)>,
    /// Per keyed sink, how `watershed reconcile` reads what it holds.
    pub holdings: Vec<(String, std::sync::Arc<dyn crate::reconcile::SinkHoldings>)>,
    /// Per source that can read its tables as they are now, how (`watershed reconcile`).
    pub current_tables: Vec<(String, component::CurrentTables)>,
    /// The sources that can be read again without side effects (`BuiltSource::replayable`).
    pub replayable: Vec<String>,
    /// The sources that read in a consumer group, and the sink committing their offsets.
    pub kafka_links: std::sync::Arc<crate::kafka::offsets::Links>,
}

/// Where to serve the HTTP endpoint, as the command line or the file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// Neither says: the command's default.
    Unset,
    /// `off`: no endpoint.
    Off,
    At(SocketAddr),
}

impl MetricsAddr {
    /// The address, `default` when unset; `None` for no endpoint.
    pub fn or(self, default: Option<SocketAddr>) -> Option<SocketAddr> {
        match self {
            MetricsAddr::Unset => default,
            MetricsAddr::Off => None,
            MetricsAddr::At(a) => Some(a),
        }
    }
}

/// Reads and parses a pipeline file (syntax and field names only).
pub fn load(path: &Path) -> Result<PipelineFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        issues: vec![ConfigIssue {
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the pipeline file: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Parses pipeline text; `path` is used in messages.
pub fn parse(path: &Path, text: &str) -> Result<PipelineFile, ConfigError> {
    let (substituted, interpolation) = env::interpolate(text, |name| std::env::var(name).ok())
        .map_err(|issues| ConfigError {
            file: path.to_path_buf(),
            issues: issues
                .into_iter()
                .map(|mut i| {
                    i.field = field_path_at(text, i.line, i.column);
                    i
                })
                .collect(),
        })?;
    let mut file =
        parse_substituted(path, &substituted).map_err(|e| interpolation.restore_error(e))?;
    file.interpolation = interpolation;
    Ok(file)
}

fn parse_substituted(path: &Path, text: &str) -> Result<PipelineFile, ConfigError> {
    serde_saphyr::from_str::<PipelineFile>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map_or((0, 0), |l| (l.line() as usize, l.column() as usize));
        let rendered = e.to_string();
        let first = rendered.lines().next().unwrap_or_default();
        // "error: line 5 column 5: unknown field ..." -> "unknown field ..."
        let message = first
            .split_once(": ")
            .map(|(_, rest)| rest)
            .and_then(|rest| rest.split_once(": ").map(|(_, m)| m))
            .unwrap_or(first)
            .to_string();
        ConfigError {
            file: path.to_path_buf(),
            issues: vec![ConfigIssue {
                line,
                column,
                field: field_path_at(text, line, column),
                message,
            }],
        }
    })
}

/// The dotted path of the YAML key at (or enclosing) `line`:`column`, from indentation.
pub fn field_path_at(text: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return String::new();
    }
    let key_of = |l: &str| -> Option<(usize, String)> {
        let indent = l.len() - l.trim_start().len();
        let t = l.trim_start().trim_start_matches("- ");
        if t.starts_with('#') {
            return None;
        }
        let (k, _) = t.split_once(':')?;
        let k = k.trim().trim_matches('"').trim_matches('\'');
        if k.is_empty() || k.contains(' ') {
            return None;
        }
        Some((indent, k.to_string()))
    };
    let mut path = Vec::new();
    let here = lines[line - 1];
    let mut limit = match key_of(here) {
        Some((indent, k)) if column <= indent + k.len() + 1 => {
            path.push(k);
            indent
        }
        Some((indent, k)) => {
            path.push(k);
            indent
        }
        None => here.len() - here.trim_start().len() + 1,
    };
    for l in lines[..line - 1].iter().rev() {
        if l.trim().is_empty() {
            continue;
        }
        if let Some((indent, k)) = key_of(l)
            && indent < limit
        {
            path.push(k);
            limit = indent;
            if indent == 0 {
                break;
            }
        }
    }
    path.reverse();
    path.join(".")
}

/// Loads and compiles a pipeline file.
pub fn load_and_compile(path: &Path, overrides: &Overrides) -> Result<Compiled, ConfigError> {
    let file = load(path)?;
    compile(path, file, overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_path_from_indentation() {
        let text =
            "name: x\nsources:\n  scans:\n    file:\n      paths: [a]\n    idle_timeout: 3x\n";
        assert_eq!(field_path_at(text, 6, 19), "sources.scans.idle_timeout");
        assert_eq!(field_path_at(text, 5, 7), "sources.scans.file.paths");
    }
}
