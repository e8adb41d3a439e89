//! What a component's configuration does: it is the YAML block of one kind (`file:`,
//! `generator:`, `window:`, ...), it checks its own settings (every problem located, all of
//! them collected) and builds the factory the runtime calls per instance. `compile` only
//! wires the graph; `crate::components` maps each kind's name to its configuration type.
//!
//! - `SourceConfig::build` gets the settings every source has (`schema` or `tables`, the
//!   event-time field, parallelism) and says which of them it uses; it returns the source's
//!   ports and factory.
//! - `OperatorConfig::build` gets its resolved inputs (schema, port, a table port's primary
//!   key) and returns its ports, factory, the columns rows are shuffled by and which inputs
//!   are broadcast.
//! - `SinkConfig::build` gets its input schema and column selection and returns its factory,
//!   where it writes and the delivery guarantee it gives.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_saphyr::Location;

use crate::cdc::stream::CdcTable;
use crate::config::Overrides;
use crate::config::issues::Issues;
use crate::config::yaml::S;
use crate::dataflow::{Guarantee, PortSpec};
use crate::format::EventTimeSource;
use crate::operators::enrich::EnrichStrategy;
use crate::runtime::plan::{OperatorFactory, SinkFactory, SourceFactory};
use crate::state::StateBackend;
use crate::types::{DataType, SchemaRef};

/// A source kind's block.
pub trait SourceConfig: std::fmt::Debug {
    fn build(&self, cx: &mut SourceContext<'_>) -> Option<BuiltSource>;
}

/// An operator kind's block.
pub trait OperatorConfig: std::fmt::Debug {
    fn build(&self, cx: &mut OperatorContext<'_>) -> Option<BuiltOperator>;
}

/// A sink kind's block.
pub trait SinkConfig: std::fmt::Debug {
    fn build(&self, cx: &mut SinkContext<'_>) -> Option<BuiltSink>;
}

/// What a source's block is built with.
pub struct SourceContext<'a> {
    pub issues: &'a mut Issues,
    /// The node's name.
    pub name: &'a str,
    /// `sources.NAME.KIND`, the prefix of the block's field paths.
    pub field: String,
    /// Where the block starts.
    pub location: Location,
    /// The pipeline file's directory: input paths are relative to it.
    pub base_dir: &'a Path,
    pub parallelism: usize,
    /// The pipeline's links between consumer-group sources and the sink whose transactions
    /// carry their offsets.
    pub kafka_links: Arc<crate::kafka::offsets::Links>,
    /// `schema:` (rows) and `tables:` (a change stream), checked; a component says which
    /// it reads with `rows` / `change_tables`, the other is reported as not applying.
    pub(crate) schema: Option<(SchemaRef, Location)>,
    pub(crate) tables: Option<(Vec<CdcTable>, Location)>,
    pub(crate) schema_used: bool,
    pub(crate) tables_used: bool,
    /// `event_time.field`.
    pub event_time_field: Option<&'a S<String>>,
    /// The pipeline file, to place warnings.
    pub pipeline: &'a Path,
    /// Warnings: settings that work but are probably not what was meant.
    pub warnings: &'a mut Vec<String>,
    /// The columns no operator reads, known once the whole pipeline is built (factories
    /// run after that): a decoder may carry such columns undecoded.
    pub unread: UnreadColumns,
}

/// Which columns no operator of the pipeline reads, known to `compile` once every node is
/// built: it sets the names the operators read (and leaves it unset, so that nothing counts
/// as unread, when a sink needs every value typed). A source of JSON rows carries its
/// string columns that no one reads as their JSON text (`JsonDecoder::carrying_raw`): they
/// are only copied on the way to the sinks. Names, not positions: a column read anywhere
/// under its name is decoded everywhere.
#[derive(Clone, Debug, Default)]
pub struct UnreadColumns(Arc<OnceLock<HashSet<String>>>);

impl UnreadColumns {
    /// Whether no operator reads column `name` (false until `compile` has decided).
    pub fn contains(&self, name: &str) -> bool {
        self.0.get().is_some_and(|read| !read.contains(name))
    }

    pub(crate) fn set_read(&self, read: HashSet<String>) {
        let _ = self.0.set(read);
    }
}

impl SourceContext<'_> {
    /// The `schema:` of a source of rows (`None`, reported, when it is missing).
    pub fn rows(&mut self, why: &str) -> Option<SchemaRef> {
        self.schema_used = true;
        match &self.schema {
            Some((s, _)) => Some(s.clone()),
            None => {
                let field = format!("{}.schema", self.field_prefix());
                self.issues.at(&self.location, field, why);
                None
            }
        }
    }

    /// The `tables:` of a change stream (`None`, reported, when they are missing).
    pub fn change_tables(&mut self, why: &str) -> Option<Vec<CdcTable>> {
        self.tables_used = true;
        match &self.tables {
            Some((t, _)) => Some(t.clone()),
            None => {
                let field = format!("{}.tables", self.field_prefix());
                self.issues.at(&self.location, field, why);
                None
            }
        }
    }

    /// The `event_time.field` column of `schema` (reported when it is missing or neither a
    /// timestamp nor an int); `None` when there is no such field.
    pub fn event_time_column(&mut self, schema: &SchemaRef) -> EventTimeSource {
        let Some(ef) = self.event_time_field else {
            return EventTimeSource::None;
        };
        let field = format!("{}.event_time.field", self.field_prefix());
        match schema.index_of(&ef.value) {
            Some(i)
                if matches!(
                    schema.field(i).data_type,
                    DataType::Timestamp | DataType::Int
                ) =>
            {
                EventTimeSource::Field(i)
            }
            Some(i) => {
                self.issues.at(
                    &ef.referenced,
                    field,
                    format!(
                        "`{}` is {}, an event-time column must be timestamp or int (epoch \
                         milliseconds)",
                        ef.value,
                        schema.field(i).data_type
                    ),
                );
                EventTimeSource::None
            }
            None => {
                self.issues.at(
                    &ef.referenced,
                    field,
                    format!("`{}` is not a column of the schema", ef.value),
                );
                EventTimeSource::None
            }
        }
    }

    /// The block could not say what it reads (its own settings are wrong): `schema` and
    /// `tables` are not reported as unused on top of that.
    pub fn skip_unused_checks(&mut self) {
        self.schema_used = true;
        self.tables_used = true;
    }

    /// Whether `schema:` was given.
    pub fn has_schema(&self) -> bool {
        self.schema.is_some()
    }

    /// Whether `tables:` was given.
    pub fn has_tables(&self) -> bool {
        self.tables.is_some()
    }

    /// `sources.NAME`.
    pub fn field_prefix(&self) -> String {
        format!("sources.{}", self.name)
    }

    /// Reports a problem with the block's field `sub` (e.g. `rate`) at `at`.
    pub fn issue(&mut self, at: &Location, sub: &str, message: impl Into<String>) {
        self.issues.in_block(at, &self.field, sub, message);
    }

    /// Warns about the block's field `sub` at `at` (the pipeline still runs).
    pub fn warn(&mut self, at: &Location, sub: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!(
            "{}:{}: {}.{sub}: {message}",
            self.pipeline.display(),
            at.line(),
            self.field
        ));
    }
}

/// What building a source gives.
pub struct BuiltSource {
    /// Schema of the `main` port.
    pub schema: SchemaRef,
    /// Ports after `main` and `dead_letter` (a change stream's tables).
    pub extra_ports: Vec<PortSpec>,
    /// The primary key of each table port, by port index.
    pub table_keys: Vec<(usize, Vec<String>)>,
    pub factory: SourceFactory,
    /// Whether the source can produce dead letters (a generator cannot): an unread
    /// `dead_letter` port is then worth a warning.
    pub dead_letters: bool,
    /// Whether `main` is only a debugging view (a change stream's): unread, no warning.
    pub main_is_view: bool,
    /// Read-only checks of the system the source reads (`validate --connect`), if it has any.
    pub preflight: Option<Preflight>,
    /// Reads the live keys of a table port from the system the source reads (a database's
    /// table itself), for `watershed reconcile`; `None`: the change stream is read to its end
    /// instead.
    pub current_tables: Option<CurrentTables>,
    /// Reading the source again from its start gives the same records, ends, and changes
    /// nothing outside (files not followed, a generator with a `count`): `watershed
    /// reconcile` may run the pipeline again to learn what its sinks should hold.
    pub replayable: bool,
}

/// The live keys of table port `port`, by the columns `key` (as text, joined as
/// `reconcile::KEY_SEPARATOR` joins them), read from the source's system as it is now:
/// versions are not known there.
pub type CurrentTables =
    Arc<dyn Fn(&str, &[String]) -> Result<crate::reconcile::KeyVersions, String> + Send + Sync>;

/// Checks, creating and changing nothing, that the system a component talks to is ready for
/// it: one line per check, each saying what was checked or what to do.
pub type Preflight = Arc<dyn Fn() -> Vec<Check> + Send + Sync>;

/// One line of `validate --connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub line: String,
}

impl Check {
    /// A failed check saying what `error` says (without the component's name, which the
    /// line already shows).
    pub fn failed(error: crate::error::RunError) -> Check {
        let line = match error {
            crate::error::RunError::External { message, .. } => message,
            other => other.to_string(),
        };
        Check { ok: false, line }
    }
}

/// One resolved input of an operator.
#[derive(Clone, Debug)]
pub struct OperatorInput {
    /// As written: `node` or `node.port`.
    pub reference: String,
    pub location: Location,
    /// The port's name and schema.
    pub port: PortSpec,
    /// The primary key of a change stream's table port.
    pub table_key: Option<Vec<String>>,
}

/// Pipeline-wide enrichment settings (`enrichment:` and `state:`).
#[derive(Clone, Debug)]
pub struct EnrichmentDefaults {
    pub strategy: EnrichStrategy,
    pub state: StateBackend,
}

/// What an operator's block is built with.
pub struct OperatorContext<'a> {
    pub issues: &'a mut Issues,
    pub name: &'a str,
    /// `operators.NAME.KIND`.
    pub field: String,
    pub location: Location,
    /// The inputs that resolved, in the order the file lists them.
    pub inputs: Vec<OperatorInput>,
    pub enrichment: &'a EnrichmentDefaults,
}

impl OperatorContext<'_> {
    /// The one schema every input has (reported otherwise): what windows and routes need.
    pub fn same_schema(&mut self) -> Option<SchemaRef> {
        let first = self.inputs.first()?.port.schema.clone();
        let mut same = true;
        for (i, input) in self.inputs.iter().enumerate().skip(1) {
            if input.port.schema != first {
                same = false;
                self.issues.at(
                    &input.location,
                    format!("operators.{}.inputs[{i}]", self.name),
                    format!(
                        "schema differs from `{}`'s: every input of an operator must have the \
                         same columns",
                        self.inputs[0].reference
                    ),
                );
            }
        }
        same.then_some(first)
    }

    /// Reports a problem with the block's field `sub` at `at`.
    pub fn issue(&mut self, at: &Location, sub: &str, message: impl Into<String>) {
        self.issues.in_block(at, &self.field, sub, message);
    }
}

/// What building an operator gives.
pub struct BuiltOperator {
    /// Output ports, `main` first.
    pub ports: Vec<PortSpec>,
    pub factory: OperatorFactory,
    /// Columns (of every input) rows are shuffled by, so that equal keys meet.
    pub key_columns: Option<Vec<usize>>,
    /// Inputs every instance receives in full (a reference table's changes).
    pub broadcast_inputs: Vec<usize>,
    /// The input columns the operator computes with (compares, hashes, aggregates, parses),
    /// by name; every other column it only copies to its outputs, if at all.
    pub reads: Vec<String>,
}

/// What a sink's block is built with.
pub struct SinkContext<'a> {
    pub issues: &'a mut Issues,
    pub name: &'a str,
    /// `sinks.NAME.KIND`.
    pub field: String,
    pub location: Location,
    /// The input's schema (every input of a sink has the same).
    pub schema: SchemaRef,
    /// `columns:` as indexes into `schema` (`None`: all, in order).
    pub columns: Option<Vec<usize>>,
    /// The pipeline keeps checkpoints (`checkpoint.dir`): sinks can be transactional.
    pub transactional: bool,
    /// The checkpoint directory, where a transactional sink may keep what it has not
    /// committed yet (under a directory of its own).
    pub checkpoint_dir: Option<PathBuf>,
    /// The pipeline's name (`name:`, else the file's stem).
    pub pipeline: &'a str,
    pub overrides: &'a Overrides,
    /// See `SourceContext::kafka_links`.
    pub kafka_links: Arc<crate::kafka::offsets::Links>,
    /// The pipeline file's directory: relative paths in settings are relative to it.
    pub base_dir: &'a Path,
}

impl SinkContext<'_> {
    /// An output path as the file names it, moved under `--out DIR` when it is under the
    /// default output directory.
    pub fn output_path(&self, path: &str) -> PathBuf {
        crate::config::output_path(path, self.overrides)
    }

    /// Reports a problem with the block's field `sub` at `at`.
    pub fn issue(&mut self, at: &Location, sub: &str, message: impl Into<String>) {
        self.issues.in_block(at, &self.field, sub, message);
    }
}

/// What building a sink gives.
pub struct BuiltSink {
    pub factory: SinkFactory,
    /// Where it writes, for people (`out/x.jsonl`, `stdout`).
    pub target: String,
    pub guarantee: Guarantee,
    /// A file only this sink may write (two sinks on one file lose lines).
    pub writes: Option<PathBuf>,
    /// Whether the sink writes JSON, taking a string column carried as its JSON text
    /// (`UnreadColumns`) as it is; `false` when it needs every value typed.
    pub writes_json: bool,
    /// How `watershed reconcile` reads what a keyed sink holds (`None`: not keyed).
    pub holdings: Option<std::sync::Arc<dyn crate::reconcile::SinkHoldings>>,
    /// Read-only checks of the system the sink writes (`validate --connect`), if any.
    pub preflight: Option<Preflight>,
}

/// Declares the kinds of one section of the pipeline file: the section's node struct (the
/// settings every node of the section has, plus one optional block per kind) and a way to
/// list the blocks given. Used once per section, in `crate::components`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        $yaml:ident: $config:ident { $($common:tt)* }
        kinds { $($kind:ident: $ty:ty),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $yaml {
            $($common)*
            $(pub $kind: Option<$crate::config::yaml::S<$ty>>,)*
        }

        impl $yaml {
            /// The kinds this section knows, as the file names them.
            pub const KINDS: &'static [&'static str] = &[$(stringify!($kind)),*];

            /// The kind blocks given: name, location and configuration.
            pub fn blocks(&self) -> Vec<(&'static str, serde_saphyr::Location, &dyn $config)> {
                let mut blocks: Vec<(&'static str, serde_saphyr::Location, &dyn $config)> =
                    Vec::new();
                $(
                    if let Some(b) = &self.$kind {
                        blocks.push((stringify!($kind), b.referenced, &b.value));
                    }
                )*
                blocks
            }
        }
    };
}

pub(crate) use section;

/// `a`, `b` or `c`, for messages.
pub fn one_of(kinds: &[&str]) -> String {
    let quoted: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}
