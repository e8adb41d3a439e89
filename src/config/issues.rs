//! Located problems in a pipeline file (`Issues`: every problem with its line, column and the
//! dotted path of its field, all collected before failing) and the value checks every
//! component's settings share: durations, schemas (`column: type`), names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Location;

use crate::config::yaml::S;
use crate::error::{ConfigError, ConfigIssue};
use crate::types::{DataType, Field, Schema, SchemaRef};

/// The most instances of one node: each is a thread.
pub const MAX_PARALLELISM: usize = 1024;

/// Collects located problems.
pub struct Issues {
    file: PathBuf,
    list: Vec<ConfigIssue>,
}

impl Issues {
    pub fn new(file: PathBuf) -> Issues {
        Issues {
            file,
            list: Vec::new(),
        }
    }

    /// A problem at `loc` in `field` (a dotted path such as `sources.scans.file.rate`).
    pub fn at(&mut self, loc: &Location, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigIssue {
            line: loc.line() as usize,
            column: loc.column() as usize,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A problem with field `sub` of the block at `block` (`sub` empty: the block itself).
    pub fn in_block(&mut self, loc: &Location, block: &str, sub: &str, message: impl Into<String>) {
        let field = if sub.is_empty() {
            block.to_string()
        } else {
            format!("{block}.{sub}")
        };
        self.at(loc, field, message);
    }

    /// A problem at a line and column.
    pub fn at_line(
        &mut self,
        line: usize,
        column: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.list.push(ConfigIssue {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A problem with no place in the file (a command-line setting).
    pub fn unplaced(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigIssue {
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn duration(&mut self, s: &S<String>, field: &str) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    &s.referenced,
                    field,
                    format!(
                        "invalid duration `{}` ({e}); write e.g. `30s`, `5m`, `1h`",
                        s.value
                    ),
                );
                None
            }
        }
    }

    /// A duration that may also be `off`.
    pub fn duration_or_off(&mut self, s: &S<String>, field: &str) -> Option<Option<Duration>> {
        if s.value.trim() == "off" {
            Some(None)
        } else {
            self.duration(s, field).map(Some)
        }
    }

    /// A positive, finite number (a rate in records per second).
    pub fn positive(&mut self, r: &S<f64>, field: &str) -> Option<f64> {
        if r.value.is_finite() && r.value > 0.0 {
            Some(r.value)
        } else {
            self.at(&r.referenced, field, "must be a positive number");
            None
        }
    }

    /// A number of instances: 1 to `MAX_PARALLELISM` (reported and clamped otherwise).
    pub fn parallelism(&mut self, p: &S<usize>, field: &str) -> usize {
        if (1..=MAX_PARALLELISM).contains(&p.value) {
            p.value
        } else {
            self.at(
                &p.referenced,
                field,
                format!("must be from 1 to {MAX_PARALLELISM}"),
            );
            p.value.clamp(1, MAX_PARALLELISM)
        }
    }

    /// A count that must be at least 1 (reported, and taken as 1, when it is 0).
    pub fn at_least_one<T: Copy + PartialEq + From<u8>>(&mut self, v: &S<T>, field: &str) -> T {
        if v.value == T::from(0) {
            self.at(&v.referenced, field, "must be at least 1");
            T::from(1)
        } else {
            v.value
        }
    }

    /// `column: type` pairs, in order.
    pub fn schema(
        &mut self,
        field: &str,
        sc: &S<indexmap::IndexMap<String, S<String>>>,
    ) -> SchemaRef {
        let mut fields = Vec::new();
        if sc.value.is_empty() {
            self.at(&sc.referenced, field, "a schema needs at least one column");
        }
        for (name, ty) in &sc.value {
            match DataType::parse(ty.value.trim()) {
                Some(t) => fields.push(Field::new(name, t)),
                None => self.at(
                    &ty.referenced,
                    format!("{field}.{name}"),
                    format!(
                        "unknown type `{}`; expected one of {}",
                        ty.value,
                        DataType::NAMES.join(", ")
                    ),
                ),
            }
        }
        Arc::new(Schema::new(fields))
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: self.file,
                issues: self.list,
            })
        }
    }
}

/// Names of nodes, ports and tables: letters, digits, `_` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
