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

/// A component's spec does not fit its inputs (a column that does not exist, a value of the
/// wrong type). `field` is the path of the setting relative to the component's block
/// (`key[0]`, `ports.tls`, `columns[1]`), so the configuration can point at its line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Snapshotting or restoring operator state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot encode state of {operator}: {reason}")]
    Encode { operator: String, reason: String },
    #[error("cannot decode state of {operator}: {reason}")]
    Decode { operator: String, reason: String },
    #[error("cannot restore into another number of instances: {reason}")]
    Rescale { reason: String },
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

/// Errors that stop a running pipeline. Each says which component it is about and what
/// kind it is (`class`): a transient error restarts the run from its latest checkpoint after
/// a backoff (`runtime::restart`); any other stops it with a one-line message (`Display`)
/// and what to do about it (`hint`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or device could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
        class: ErrorClass,
    },
    #[error(transparent)]
    State(#[from] StateError),
    /// A component could not be built from settings that validated.
    #[error("{component}: cannot start: {message}")]
    Build { component: String, message: String },
    /// What a checkpoint holds for a component (a position, a pre-commit) cannot be used by
    /// it: restoring would not be exact.
    #[error("{component}: cannot restore from the checkpoint: {message}")]
    Restore { component: String, message: String },
    /// Writing, completing or reading checkpoints failed.
    #[error("checkpoints: {message}")]
    Checkpoint { message: String, class: ErrorClass },
    /// An outside service (a broker, a database) failed or refused.
    #[error("{component}: {message}")]
    External {
        component: String,
        message: String,
        class: ErrorClass,
    },
    /// The HTTP endpoint cannot be served at the address asked for (taken by another
    /// process, or not a loopback address without `--allow-remote-endpoints`).
    #[error("the endpoint at {addr}: {message}")]
    Endpoint {
        addr: std::net::SocketAddr,
        message: String,
    },
    /// The task stopped because another one did (never the first cause of a failure).
    #[error("{task}: stopped because {why}")]
    Stopped { task: String, why: &'static str },
}

impl RunError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> RunError {
        let class = match source.kind() {
            std::io::ErrorKind::NotFound
            | std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::Unsupported => ErrorClass::Definite,
            _ => ErrorClass::Transient,
        };
        RunError::Io {
            context: context.into(),
            source,
            class,
        }
    }

    pub fn build(component: impl Into<String>, message: impl std::fmt::Display) -> RunError {
        RunError::Build {
            component: component.into(),
            message: message.to_string(),
        }
    }

    pub fn restore(component: impl Into<String>, message: impl std::fmt::Display) -> RunError {
        RunError::Restore {
            component: component.into(),
            message: message.to_string(),
        }
    }

    /// A task stopped because another did (its input closed, its output closed, the run
    /// stopped): not the cause of a failure, which another task reports.
    pub fn is_knock_on(&self) -> bool {
        matches!(
            self,
            RunError::Stopped {
                why: "an upstream task stopped"
                    | "a downstream task stopped"
                    | "the run stopped before its last commit",
                ..
            }
        )
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            RunError::Config(_) => ErrorClass::Config,
            RunError::Io { class, .. }
            | RunError::Checkpoint { class, .. }
            | RunError::External { class, .. } => *class,
            RunError::State(_) | RunError::Build { .. } | RunError::Restore { .. } => {
                ErrorClass::Definite
            }
            RunError::Endpoint { .. } => ErrorClass::Config,
            RunError::Stopped { .. } => ErrorClass::Internal,
        }
    }

    /// What to do about it, in a few words.
    pub fn hint(&self) -> &'static str {
        match self {
            RunError::Config(_) => "fix the pipeline file, then run again",
            RunError::Restore { .. } | RunError::State(_) => {
                "restore an older checkpoint (`watershed checkpoints list`, then `run --from-checkpoint`), or start from scratch with `run --fresh-start` (every output begins afresh)"
            }
            RunError::Stopped { .. } => "see the error of the task that stopped first",
            RunError::Endpoint { .. } => {
                "serve it elsewhere with `--metrics-addr` (`127.0.0.1:0` picks a free port), or not at all with `--metrics-addr off`"
            }
            _ => match self.class() {
                ErrorClass::Transient => {
                    "retried from the latest checkpoint; without `checkpoint.dir` run again"
                }
                ErrorClass::Internal => "this is a bug in Watershed: please report it",
                _ => "fix the cause named above, then run again (it restarts from its checkpoint)",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_a_retry_can_help() {
        let refused = RunError::io(
            "cannot connect",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(refused.class(), ErrorClass::Transient);
        let missing = RunError::io(
            "cannot open x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(missing.class(), ErrorClass::Definite);
        let position = RunError::restore("scans", "position file {} cannot be read");
        assert_eq!(position.class(), ErrorClass::Definite);
        assert_eq!(
            position.to_string(),
            "scans: cannot restore from the checkpoint: position file {} cannot be read"
        );
        assert!(position.hint().contains("older checkpoint"));
    }

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
