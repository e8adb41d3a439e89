//! Error types at module boundaries. Each error says what to do about it: a config error
//! stops and names the file, line and field; a transient error may be retried (restart from
//! the last checkpoint with backoff); a definite error stops with a clear message; an
//! internal error is a bug. Bad records are not errors: they go to `dead_letter`.

use std::fmt;
use std::path::PathBuf;

/// What the caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The pipeline file or command line is wrong: fix it, then run again.
    Config,
    /// An outside service or resource failed for now: retrying may succeed.
    Transient,
    /// Retrying will not help (a missing file, a dropped slot): stop with a clear message.
    Definite,
    /// A bug in Watershed.
    Internal,
}

/// A problem in a pipeline file, located at a line and column and naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `sources.scans.idle_timeout`.
    pub field: String,
    pub message: String,
}

/// One or more problems in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: ",
                self.file.display(),
                issue.line,
                issue.column
            )?;
            if !issue.field.is_empty() {
                write!(f, "field `{}`: ", issue.field)?;
            }
            write!(f, "{}", issue.message)?;
        }
        Ok(())
    }
}

/// Snapshotting or restoring operator state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot encode state of {operator}: {reason}")]
    Encode { operator: String, reason: String },
    #[error("cannot decode state of {operator}: {reason}")]
    Decode { operator: String, reason: String },
}

impl StateError {
    pub fn encode(operator: &str, reason: impl std::fmt::Display) -> StateError {
        StateError::Encode {
            operator: operator.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn decode(operator: &str, reason: impl std::fmt::Display) -> StateError {
        StateError::Decode {
            operator: operator.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Errors that stop a running pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
        class: ErrorClass,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("task {task} failed: {message}")]
    Task { task: String, message: String },
}

impl RunError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> RunError {
        let class = match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ErrorClass::Definite
            }
            _ => ErrorClass::Transient,
        };
        RunError::Io {
            context: context.into(),
            source,
            class,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            RunError::Config(_) => ErrorClass::Config,
            RunError::Io { class, .. } => *class,
            RunError::State(_) => ErrorClass::Internal,
            RunError::Task { .. } => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_file_line_and_field() {
        let e = ConfigError {
            file: "p.yaml".into(),
            issues: vec![ConfigIssue {
                line: 7,
                column: 5,
                field: "sources.scans.idle_timeout".into(),
                message: "invalid duration `3x`".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "p.yaml:7:5: field `sources.scans.idle_timeout`: invalid duration `3x`"
        );
    }
}
