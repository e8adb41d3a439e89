//! The pipeline file: loading (strict YAML, every value located) and compiling it into a
//! runtime `Plan`. Every problem found is reported with the file, line, column and the dotted
//! path of the field; all problems are collected before failing, so one `validate` run shows
//! them all. Input paths are relative to the pipeline file's directory; output paths to the
//! working directory.

pub mod yaml;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Location;

use crate::alerts::AlertRules;
use crate::cdc::{TableConfig, TableId};
use crate::dataflow::Source;
use crate::dataflow::{DEAD_LETTER_PORT, MAIN_PORT, Operator, PortSpec};
use crate::dataflow::{Guarantee, Sink};
use crate::dead_letter;
use crate::error::{ConfigError, ConfigIssue};
use crate::format::json::{EventTimeSource, JsonDecoder};
use crate::operators::enrich::{
    EnrichOperator, EnrichSpec, EnrichStrategy, JoinMode, MissPolicy, VersionRangeSpec,
};
use crate::operators::route::{RouteOperator, RoutePort};
use crate::operators::window::{
    AggregateFn, AggregateSpec, WindowKind, WindowOperator, WindowSpec,
};
use crate::runtime::plan::{
    InputRef, NodeKind, OperatorFactory, Plan, PlanNode, RuntimeOptions, SinkFactory,
    SourceFactory, WatermarkSpec,
};
use crate::sinks::file::JsonLinesSink;
use crate::sources::cdc::{CdcTable, ChangeDecoder};
use crate::sources::file::{FileSource, FileSourceSpec};
use crate::sources::generator::{GeneratorSource, GeneratorSpec, QuietPeriod};
use crate::state::StateBackend;
use crate::state::disk::DiskOptions;
use crate::types::{DataType, Field, Schema, SchemaRef};
use yaml::{PipelineFile, S};

/// Command-line settings that take precedence over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub parallelism: Option<usize>,
    pub metrics_addr: Option<String>,
    /// Sink files under `watershed-out/` in the file are written under this directory.
    pub output_dir: Option<PathBuf>,
    /// Replaces the file's `checkpoint.dir`.
    pub checkpoint_dir: Option<PathBuf>,
}

/// The default output directory that `Overrides::output_dir` replaces.
pub const DEFAULT_OUTPUT_DIR: &str = "watershed-out";

fn output_path(path: &str, overrides: &Overrides) -> PathBuf {
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
    pub metrics_addr: Option<SocketAddr>,
    /// Sink name and where it writes.
    pub outputs: Vec<(String, String)>,
}

/// Collects located problems.
struct Issues {
    file: PathBuf,
    list: Vec<ConfigIssue>,
}

impl Issues {
    fn at(&mut self, loc: &Location, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigIssue {
            line: loc.line() as usize,
            column: loc.column() as usize,
            field: field.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, s: &S<String>, field: &str) -> Option<Duration> {
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
    fn duration_or_off(&mut self, s: &S<String>, field: &str) -> Option<Option<Duration>> {
        if s.value.trim() == "off" {
            Some(None)
        } else {
            self.duration(s, field).map(Some)
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
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

struct NodeInfo {
    index: usize,
    ports: Vec<PortSpec>,
    location: Location,
}

/// Adds a source or operator to the plan and makes its ports referable by name.
fn add_node(
    nodes: &mut Vec<PlanNode>,
    infos: &mut HashMap<String, NodeInfo>,
    location: Location,
    node: PlanNode,
) {
    infos.insert(
        node.name.clone(),
        NodeInfo {
            index: nodes.len(),
            ports: node.ports.clone(),
            location,
        },
    );
    nodes.push(node);
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Compiles a parsed pipeline into a plan, checking references, types and values.
pub fn compile(
    path: &Path,
    file: PipelineFile,
    overrides: &Overrides,
) -> Result<Compiled, ConfigError> {
    let mut issues = Issues {
        file: path.to_path_buf(),
        list: Vec::new(),
    };
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut warnings = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default_parallelism = overrides
        .parallelism
        .or(file.parallelism.as_ref().map(|p| p.value))
        .unwrap_or(cores);
    if let Some(p) = &file.parallelism
        && p.value == 0
    {
        issues.at(&p.referenced, "parallelism", "must be at least 1");
    }

    let mut options = RuntimeOptions::default();
    if let Some(b) = &file.batch_size {
        if b.value == 0 {
            issues.at(&b.referenced, "batch_size", "must be at least 1");
        }
        options.batch_size = b.value.max(1);
    }
    if let Some(c) = &file.channel_capacity {
        if c.value == 0 {
            issues.at(&c.referenced, "channel_capacity", "must be at least 1");
        }
        options.channel_capacity = c.value.max(1);
    }
    let mut wanted_guarantee: Option<(Guarantee, Location)> = None;
    if let Some(cp) = &file.checkpoint {
        if let Some(i) = &cp.interval
            && let Some(d) = issues.duration_or_off(i, "checkpoint.interval")
        {
            options.checkpoint_interval = d;
        }
        if let Some(d) = &cp.dir {
            options.checkpoint_dir = Some(PathBuf::from(&d.value));
        }
        if let Some(r) = &cp.retain {
            if r.value == 0 {
                issues.at(&r.referenced, "checkpoint.retain", "must be at least 1");
            }
            options.checkpoint_retain = r.value.max(1);
        }
        if let Some(g) = &cp.guarantee {
            match Guarantee::parse(&g.value) {
                Some(want) => wanted_guarantee = Some((want, g.referenced)),
                None => issues.at(
                    &g.referenced,
                    "checkpoint.guarantee",
                    format!(
                        "unknown guarantee `{}`: use exactly_once, idempotent or at_least_once",
                        g.value
                    ),
                ),
            }
        }
    }
    if let Some(d) = &overrides.checkpoint_dir {
        options.checkpoint_dir = Some(d.clone());
    }
    let transactional = options.checkpoint_dir.is_some();
    let mut rules = AlertRules::default();
    if let Some(a) = &file.alerts {
        if let Some(v) = &a.watermark_lag
            && let Some(d) = issues.duration_or_off(v, "alerts.watermark_lag")
        {
            rules.watermark_lag_ms = d.map(|d| d.as_millis() as i64);
        }
        if let Some(v) = &a.watermark_stall
            && let Some(d) = issues.duration_or_off(v, "alerts.watermark_stall")
        {
            rules.watermark_stall_ms = d.map(|d| d.as_millis() as i64);
        }
        if let Some(v) = &a.enrichment_gate
            && let Some(d) = issues.duration_or_off(v, "alerts.enrichment_gate")
        {
            rules.enrichment_gate_ms = d.map(|d| d.as_millis() as i64);
        }
        if let Some(v) = &a.checkpoint_age
            && let Some(d) = issues.duration_or_off(v, "alerts.checkpoint_age")
        {
            rules.checkpoint_age_ms = d.map(|d| d.as_millis() as i64);
        }
        if let Some(v) = &a.check_interval
            && let Some(d) = issues.duration(v, "alerts.check_interval")
        {
            options.monitor_interval = d.max(Duration::from_millis(1));
        }
    }
    options.alerts = rules;

    let metrics_addr = match (
        &overrides.metrics_addr,
        file.metrics.as_ref().and_then(|m| m.addr.as_ref()),
    ) {
        (Some(a), _) => match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                issues.list.push(ConfigIssue {
                    line: 0,
                    column: 0,
                    field: "--metrics-addr".into(),
                    message: format!("invalid address `{a}`: {e}"),
                });
                None
            }
        },
        (None, Some(a)) => match a.value.parse::<SocketAddr>() {
            Ok(x) => Some(x),
            Err(e) => {
                issues.at(
                    &a.referenced,
                    "metrics.addr",
                    format!(
                        "invalid address `{}`: {e}; write e.g. `127.0.0.1:9464`",
                        a.value
                    ),
                );
                None
            }
        },
        (None, None) => None,
    };

    // Names are unique across sources, operators and sinks.
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let all_names = file
        .sources
        .iter()
        .map(|(n, s)| (n, &s.referenced, "sources"))
        .chain(
            file.operators
                .iter()
                .map(|(n, s)| (n, &s.referenced, "operators")),
        )
        .chain(file.sinks.iter().map(|(n, s)| (n, &s.referenced, "sinks")));
    for (name, loc, section) in all_names {
        if !valid_name(name) {
            issues.at(
                loc,
                format!("{section}.{name}"),
                "names may use only letters, digits, `_` and `-`",
            );
        }
        if let Some(first) = seen.insert(name.as_str(), section) {
            issues.at(
                loc,
                format!("{section}.{name}"),
                format!("the name `{name}` is already used in `{first}`"),
            );
        }
    }
    if file.sources.is_empty() {
        issues.list.push(ConfigIssue {
            line: 1,
            column: 1,
            field: "sources".into(),
            message: "a pipeline needs at least one source".into(),
        });
    }

    let mut nodes: Vec<PlanNode> = Vec::new();
    let mut infos: HashMap<String, NodeInfo> = HashMap::new();
    // Primary keys of cdc table ports, by (node, port).
    let mut cdc_keys: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    let enrichment =
        enrichment_defaults(&mut issues, file.enrichment.as_ref(), file.state.as_ref());

    // Sources.
    let multi_source = file.sources.len() > 1;
    for (name, src) in &file.sources {
        let field = format!("sources.{name}");
        let loc = &src.referenced;
        let s = &src.value;
        let parallelism = s.parallelism.as_ref().map_or(1, |p| p.value);
        if let Some(p) = &s.parallelism
            && p.value == 0
        {
            issues.at(
                &p.referenced,
                format!("{field}.parallelism"),
                "must be at least 1",
            );
        }
        let et = s.event_time.as_ref().map(|e| &e.value);
        let max_ooo = et
            .and_then(|e| e.max_out_of_orderness.as_ref())
            .and_then(|d| issues.duration(d, &format!("{field}.event_time.max_out_of_orderness")))
            .unwrap_or(Duration::ZERO);
        let idle_timeout = s
            .idle_timeout
            .as_ref()
            .and_then(|d| issues.duration_or_off(d, &format!("{field}.idle_timeout")))
            .flatten();
        let expected_interval = s
            .expected_interval
            .as_ref()
            .and_then(|d| issues.duration_or_off(d, &format!("{field}.expected_interval")))
            .flatten();
        if multi_source && idle_timeout.is_none() {
            warnings.push(format!(
                "{}:{}: source `{name}` has no idle_timeout: if it goes quiet it holds back the \
                 watermark of everything downstream of it (the stall is alerted, not avoided)",
                path.display(),
                loc.line()
            ));
        }
        let watermark = WatermarkSpec {
            max_out_of_orderness: max_ooo,
            idle_timeout,
            expected_interval,
        };
        let mut extra_ports: Vec<PortSpec> = Vec::new();
        let connectors = [s.generator.is_some(), s.file.is_some(), s.cdc.is_some()]
            .iter()
            .filter(|c| **c)
            .count();
        let (schema, factory): (SchemaRef, Option<SourceFactory>) = match (&s.generator, &s.file) {
            _ if connectors > 1 => {
                issues.at(
                    loc,
                    field.clone(),
                    "a source has exactly one connector block: `generator`, `file` or `cdc`",
                );
                (Arc::new(Schema::default()), None)
            }
            (None, None) if s.cdc.is_some() => {
                let c = s.cdc.as_ref().expect("checked");
                if let Some(sc) = &s.schema {
                    issues.at(
                        &sc.referenced,
                        format!("{field}.schema"),
                        "a cdc source types its tables under `cdc.tables`; remove `schema`",
                    );
                }
                if let Some(f) = et.and_then(|e| e.field.as_ref()) {
                    issues.at(&f.referenced, format!("{field}.event_time.field"), "a cdc source's event time is the commit time (`source.ts_ms`); remove `field`");
                }
                match cdc_source(
                    &mut issues,
                    &field,
                    name,
                    &base_dir,
                    &c.value,
                    &c.referenced,
                ) {
                    Some((factory, tables, keys)) => {
                        extra_ports = ChangeDecoder::table_ports(&tables);
                        for (port, key) in keys {
                            cdc_keys.insert((nodes.len(), port), key);
                        }
                        (crate::sources::cdc::main_schema(), Some(factory))
                    }
                    None => (Arc::new(Schema::default()), None),
                }
            }
            (Some(g), None) => {
                if let Some(sc) = &s.schema {
                    issues.at(&sc.referenced, format!("{field}.schema"), "a generator has a fixed schema (ts, host, port, product, version, bytes); remove `schema`");
                }
                if let Some(f) = et.and_then(|e| e.field.as_ref())
                    && f.value != "ts"
                {
                    issues.at(
                        &f.referenced,
                        format!("{field}.event_time.field"),
                        "a generator's event time is its `ts` column",
                    );
                }
                let spec = generator_spec(&mut issues, &field, &g.value, &base_dir);
                let schema = crate::sources::generator::schema_for(&spec);
                let node = name.clone();
                let f: SourceFactory = Arc::new(move |inst, par| {
                    Ok(
                        Box::new(GeneratorSource::new(&node, spec.clone(), inst, par))
                            as Box<dyn Source>,
                    )
                });
                (schema, Some(f))
            }
            (None, Some(f)) => {
                let schema = match &s.schema {
                    Some(sc) => schema_of(&mut issues, &format!("{field}.schema"), sc),
                    None => {
                        issues.at(
                            loc,
                            format!("{field}.schema"),
                            "a file source needs a `schema` (column: type)",
                        );
                        Arc::new(Schema::default())
                    }
                };
                let event_time = match et.and_then(|e| e.field.as_ref()) {
                    Some(ef) => match schema.index_of(&ef.value) {
                        Some(i)
                            if matches!(
                                schema.field(i).data_type,
                                DataType::Timestamp | DataType::Int
                            ) =>
                        {
                            EventTimeSource::Field(i)
                        }
                        Some(i) => {
                            issues.at(&ef.referenced, format!("{field}.event_time.field"), format!("`{}` is {}, an event-time column must be timestamp or int (epoch milliseconds)", ef.value, schema.field(i).data_type));
                            EventTimeSource::None
                        }
                        None => {
                            issues.at(
                                &ef.referenced,
                                format!("{field}.event_time.field"),
                                format!("`{}` is not a column of the schema", ef.value),
                            );
                            EventTimeSource::None
                        }
                    },
                    None => EventTimeSource::None,
                };
                let paths = expand_paths(
                    &mut issues,
                    &format!("{field}.file.paths"),
                    &base_dir,
                    &f.value,
                );
                let poll_interval = f
                    .value
                    .poll_interval
                    .as_ref()
                    .and_then(|d| issues.duration(d, &format!("{field}.file.poll_interval")))
                    .unwrap_or(Duration::from_millis(100));
                if let Some(r) = &f.value.rate
                    && r.value <= 0.0
                {
                    issues.at(
                        &r.referenced,
                        format!("{field}.file.rate"),
                        "must be positive",
                    );
                }
                let rate = f.value.rate.as_ref().map(|r| r.value / parallelism as f64);
                let follow = f.value.follow;
                let node = name.clone();
                let base = base_dir.clone();
                let schema2 = schema.clone();
                let factory: SourceFactory = Arc::new(move |inst, par| {
                    let mine = paths
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % par == inst)
                        .map(|(_, p)| p.clone())
                        .collect();
                    let decoder = JsonDecoder::new(schema2.clone(), event_time);
                    Ok(Box::new(FileSource::new(
                        &node,
                        FileSourceSpec {
                            paths: mine,
                            follow,
                            rate,
                            poll_interval,
                            base_dir: Some(base.clone()),
                            sequential: false,
                            paced_from: 0,
                        },
                        decoder,
                    )) as Box<dyn Source>)
                });
                (schema, Some(factory))
            }
            (None, None) => {
                issues.at(
                    loc,
                    field.clone(),
                    "a source needs one connector block: `generator`, `file` or `cdc`",
                );
                (Arc::new(Schema::default()), None)
            }
            (Some(_), Some(_)) => unreachable!("more than one connector is reported above"),
        };
        let mut ports = vec![
            PortSpec {
                name: MAIN_PORT.into(),
                schema,
            },
            PortSpec {
                name: DEAD_LETTER_PORT.into(),
                schema: dead_letter::schema(),
            },
        ];
        for p in extra_ports {
            if ports.iter().any(|q| q.name == p.name) {
                issues.at(
                    loc,
                    format!("{field}.cdc.tables.{}", p.name),
                    format!(
                        "`{}` is the name of a built-in port; name the table otherwise",
                        p.name
                    ),
                );
            }
            ports.push(p);
        }
        add_node(
            &mut nodes,
            &mut infos,
            *loc,
            PlanNode {
                name: name.clone(),
                parallelism,
                kind: NodeKind::Source {
                    factory: factory.unwrap_or_else(|| {
                        Arc::new(|_, _| unreachable!("invalid plans never run"))
                    }),
                    watermark,
                },
                inputs: Vec::new(),
                ports,
            },
        );
    }

    // Operators, in dependency order.
    let order = operator_order(&mut issues, &file);
    for name in order {
        let op = &file.operators[&name];
        let field = format!("operators.{name}");
        let loc = &op.referenced;
        let o = &op.value;
        let parallelism = o
            .parallelism
            .as_ref()
            .map_or(default_parallelism, |p| p.value);
        if let Some(p) = &o.parallelism
            && p.value == 0
        {
            issues.at(
                &p.referenced,
                format!("{field}.parallelism"),
                "must be at least 1",
            );
        }
        if o.inputs.is_empty() {
            issues.at(
                loc,
                format!("{field}.inputs"),
                "an operator needs at least one input",
            );
        }
        let inputs = resolve_inputs(&mut issues, &infos, &format!("{field}.inputs"), &o.inputs);
        let input_schemas: Vec<SchemaRef> = inputs
            .iter()
            .map(|(r, _)| nodes[r.node].ports[r.port].schema.clone())
            .collect();
        if let Some(first) = input_schemas.first()
            && o.enrich.is_none()
        {
            for (i, s) in input_schemas.iter().enumerate().skip(1) {
                if s != first {
                    issues.at(&inputs[i].1, format!("{field}.inputs[{i}]"), format!("schema differs from `{}`'s: every input of an operator must have the same columns", o.inputs[0].value));
                }
            }
        }
        let Some(schema) = input_schemas.first().cloned() else {
            continue;
        };
        let kinds = [o.window.is_some(), o.route.is_some(), o.enrich.is_some()]
            .iter()
            .filter(|k| **k)
            .count();
        let mut broadcast_inputs = Vec::new();
        let built = match (&o.window, &o.route, &o.enrich) {
            _ if kinds > 1 => {
                issues.at(
                    loc,
                    field.clone(),
                    "an operator has exactly one kind block: `window`, `route` or `enrich`",
                );
                None
            }
            (Some(w), None, None) => window_operator(&mut issues, &field, &name, w, schema),
            (None, Some(r), None) => route_operator(&mut issues, &field, r, schema),
            (None, None, Some(e)) => {
                broadcast_inputs.push(1);
                let reference = inputs.get(1).map(|(r, _)| {
                    let port = &nodes[r.node].ports[r.port];
                    (
                        port.schema.clone(),
                        port.name.clone(),
                        cdc_keys.get(&(r.node, r.port)).cloned(),
                    )
                });
                if inputs.len() != 2 {
                    issues.at(
                        loc,
                        format!("{field}.inputs"),
                        "an enrich operator has two inputs: the events, then a cdc table port (`source.table`)",
                    );
                    None
                } else {
                    let (reference, table, key) = reference.expect("two inputs");
                    enrich_operator(
                        &mut issues,
                        &field,
                        &name,
                        e,
                        &enrichment,
                        schema,
                        reference,
                        table,
                        key.unwrap_or_default(),
                    )
                }
            }
            _ => {
                issues.at(
                    loc,
                    field.clone(),
                    "an operator needs one kind block: `window`, `route` or `enrich`",
                );
                None
            }
        };
        let Some((ports, factory, key_columns)) = built else {
            continue;
        };
        add_node(
            &mut nodes,
            &mut infos,
            *loc,
            PlanNode {
                name: name.clone(),
                parallelism,
                kind: NodeKind::Operator {
                    factory,
                    key_columns,
                    broadcast_inputs,
                },
                inputs: inputs.iter().map(|(r, _)| *r).collect(),
                ports,
            },
        );
    }

    // Sinks.
    let mut outputs = Vec::new();
    let mut sink_guarantees: Vec<(String, Guarantee)> = Vec::new();
    for (name, sink) in &file.sinks {
        let field = format!("sinks.{name}");
        let loc = &sink.referenced;
        let s = &sink.value;
        let refs: Vec<S<String>> = s
            .input
            .iter()
            .cloned()
            .chain(s.inputs.iter().cloned())
            .collect();
        if refs.is_empty() {
            issues.at(
                loc,
                format!("{field}.input"),
                "a sink needs an `input` (node or node.port)",
            );
        }
        let inputs = resolve_inputs(&mut issues, &infos, &format!("{field}.input"), &refs);
        let schemas: Vec<SchemaRef> = inputs
            .iter()
            .map(|(r, _)| nodes[r.node].ports[r.port].schema.clone())
            .collect();
        if let Some(first) = schemas.first() {
            for (i, sc) in schemas.iter().enumerate().skip(1) {
                if sc != first {
                    issues.at(
                        &inputs[i].1,
                        format!("{field}.inputs[{i}]"),
                        "every input of a sink must have the same columns",
                    );
                }
            }
        }
        let schema = schemas.first().cloned().unwrap_or_default();
        let columns: Option<Vec<usize>> = s.columns.as_ref().map(|cols| {
            cols.iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let found = schema.index_of(&c.value);
                    if found.is_none() && !schemas.is_empty() {
                        issues.at(
                            &c.referenced,
                            format!("{field}.columns[{i}]"),
                            format!("`{}` is not a column of the input", c.value),
                        );
                    }
                    found
                })
                .collect()
        });
        let factory: Option<SinkFactory> = match (&s.file, &s.stdout) {
            (Some(f), None) => {
                let p = output_path(&f.value, overrides);
                outputs.push((name.clone(), p.display().to_string()));
                let schema = schema.clone();
                sink_guarantees.push((
                    name.clone(),
                    if transactional {
                        Guarantee::ExactlyOnce
                    } else {
                        Guarantee::AtLeastOnce
                    },
                ));
                Some(Arc::new(move |_| {
                    Ok(Box::new(JsonLinesSink::create(
                        &p,
                        schema.clone(),
                        columns.clone(),
                        transactional,
                    )?) as Box<dyn Sink>)
                }))
            }
            (None, Some(b)) if b.value => {
                outputs.push((name.clone(), "stdout".into()));
                sink_guarantees.push((name.clone(), Guarantee::AtLeastOnce));
                let schema = schema.clone();
                Some(Arc::new(move |_| {
                    Ok(
                        Box::new(JsonLinesSink::stdout(schema.clone(), columns.clone()))
                            as Box<dyn Sink>,
                    )
                }))
            }
            (None, Some(b)) => {
                issues.at(
                    &b.referenced,
                    format!("{field}.stdout"),
                    "`stdout: false` writes nowhere; use `file: PATH` instead",
                );
                None
            }
            (None, None) => {
                issues.at(
                    loc,
                    field.clone(),
                    "a sink needs one target: `file: PATH` or `stdout: true`",
                );
                None
            }
            (Some(_), Some(_)) => {
                issues.at(
                    loc,
                    field.clone(),
                    "a sink has exactly one target: `file` or `stdout`, not both",
                );
                None
            }
        };
        nodes.push(PlanNode {
            name: name.clone(),
            parallelism: 1,
            kind: NodeKind::Sink {
                factory: factory
                    .unwrap_or_else(|| Arc::new(|_| unreachable!("invalid plans never run"))),
            },
            inputs: inputs.iter().map(|(r, _)| *r).collect(),
            ports: Vec::new(),
        });
    }

    // Ports nobody reads: data there is counted but not kept.
    let consumed: HashSet<(usize, usize)> = nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(|r| (r.node, r.port)))
        .collect();
    for (name, info) in &infos {
        // A generator never produces a record it cannot decode.
        let generated = file
            .sources
            .get(name)
            .is_some_and(|s| s.value.generator.is_some());
        // A change source's `main` is a debugging view of its table ports.
        let changes = file
            .sources
            .get(name)
            .is_some_and(|s| s.value.cdc.is_some());
        for (p, port) in info.ports.iter().enumerate() {
            if generated && port.name == DEAD_LETTER_PORT || changes && port.name == MAIN_PORT {
                continue;
            }
            if !consumed.contains(&(info.index, p)) {
                warnings.push(format!(
                    "{}:{}: output `{name}.{}` is not routed to any sink or operator: its records \
                     are counted ({}) but not kept",
                    path.display(),
                    info.location.line(),
                    port.name,
                    if port.name == DEAD_LETTER_PORT {
                        crate::metrics::DEAD_LETTER_RECORDS
                    } else {
                        crate::metrics::RECORDS_OUT
                    }
                ));
            }
        }
    }
    if let Some((want, loc)) = wanted_guarantee {
        for (sink, has) in &sink_guarantees {
            if *has < want {
                let why = if transactional {
                    "stdout cannot take back what it printed"
                } else {
                    "without `checkpoint.dir` a file sink writes straight through"
                };
                warnings.push(format!(
                    "{}:{}: the pipeline asks for {} but sink `{sink}` gives {} ({why})",
                    path.display(),
                    loc.line(),
                    want.name(),
                    has.name()
                ));
            }
        }
    }
    if transactional && options.checkpoint_interval.is_none() {
        warnings.push(format!(
            "{}: checkpoint.interval is off: file sinks commit only when the input ends, and a \
             restart begins from the start",
            path.display()
        ));
    }
    warnings.sort();

    issues.finish()?;
    Ok(Compiled {
        plan: Plan {
            name: file.name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
            }),
            nodes,
            options,
        },
        warnings,
        metrics_addr,
        outputs,
    })
}

/// What compiling an operator block gives: its ports, its factory and the key columns rows
/// are shuffled by (`None`: no shuffle needed).
type BuiltOperator = (Vec<PortSpec>, OperatorFactory, Option<Vec<usize>>);

fn window_operator(
    issues: &mut Issues,
    field: &str,
    name: &str,
    w: &S<yaml::WindowYaml>,
    schema: SchemaRef,
) -> Option<BuiltOperator> {
    let spec = window_spec(issues, &format!("{field}.window"), &w.value, &w.referenced)?;
    let key_columns: Vec<usize> = spec.key.iter().filter_map(|k| schema.index_of(k)).collect();
    let probe = match WindowOperator::new(name, spec.clone(), schema.clone()) {
        Ok(op) => op,
        Err(e) => {
            let (at, path) =
                locate_spec_field(&w.value, &e.field).unwrap_or((w.referenced, e.field.clone()));
            issues.at(&at, format!("{field}.window.{path}"), e.message);
            return None;
        }
    };
    let node = name.to_string();
    let factory: OperatorFactory = Arc::new(move |_| {
        let op = WindowOperator::new(&node, spec.clone(), schema.clone()).map_err(|e| {
            crate::error::RunError::Task {
                task: node.clone(),
                message: e.message,
            }
        })?;
        Ok(Box::new(op) as Box<dyn Operator>)
    });
    Some((probe.ports(), factory, Some(key_columns)))
}

fn route_operator(
    issues: &mut Issues,
    field: &str,
    r: &S<yaml::RouteYaml>,
    schema: SchemaRef,
) -> Option<BuiltOperator> {
    let column = &r.value.field;
    let Some(ty) = schema
        .index_of(&column.value)
        .map(|i| schema.field(i).data_type)
    else {
        issues.at(
            &column.referenced,
            format!("{field}.route.field"),
            format!("`{}` is not a column of the input", column.value),
        );
        return None;
    };
    let mut ports = Vec::new();
    for (port, values) in &r.value.ports {
        let mut vs = Vec::new();
        for v in &values.value {
            match RouteOperator::value_of(&v.value, ty) {
                Some(x) => vs.push(x),
                None => issues.at(&v.referenced, format!("{field}.route.ports.{port}"), format!("`{}` is not a {ty} value (routing works on string, int, float and bool columns)", v.value)),
            }
        }
        ports.push(RoutePort {
            name: port.clone(),
            values: vs,
        });
    }
    if ports.is_empty() {
        issues.at(
            &r.referenced,
            format!("{field}.route.ports"),
            "list at least one port: `NAME: [value, ...]`",
        );
        return None;
    }
    let probe = match RouteOperator::new(&column.value, ports.clone(), schema.clone()) {
        Ok(op) => op,
        Err(e) => {
            issues.at(
                &r.referenced,
                format!("{field}.route.{}", e.field),
                e.message,
            );
            return None;
        }
    };
    let column = column.value.clone();
    let factory: OperatorFactory = Arc::new(move |_| {
        let op = RouteOperator::new(&column, ports.clone(), schema.clone()).map_err(|e| {
            crate::error::RunError::Task {
                task: "route".into(),
                message: e.message,
            }
        })?;
        Ok(Box::new(op) as Box<dyn Operator>)
    });
    Some((probe.ports(), factory, None))
}

/// What compiling a `cdc` block gives: the factory, the tables (ports 2..) and the primary
/// key of each table port.
type BuiltCdc = (SourceFactory, Vec<CdcTable>, Vec<(usize, Vec<String>)>);

fn cdc_source(
    issues: &mut Issues,
    field: &str,
    name: &str,
    base_dir: &Path,
    c: &yaml::CdcYaml,
    loc: &Location,
) -> Option<BuiltCdc> {
    if let Some(f) = &c.format
        && f.value != "debezium"
    {
        issues.at(
            &f.referenced,
            format!("{field}.cdc.format"),
            format!("unknown format `{}`; the one format is `debezium`", f.value),
        );
    }
    let files = |issues: &mut Issues, list: &[S<String>], what: &str| {
        expand_paths(
            issues,
            &format!("{field}.cdc.{what}"),
            base_dir,
            &yaml::FileYaml {
                paths: list.to_vec(),
                follow: c.follow,
                rate: None,
                poll_interval: None,
            },
        )
    };
    if c.snapshot.is_empty() && c.changes.is_empty() {
        issues.at(
            loc,
            format!("{field}.cdc"),
            "list the change files: `snapshot: [...]` (read first) and/or `changes: [...]`",
        );
        return None;
    }
    let snapshot = if c.snapshot.is_empty() {
        Vec::new()
    } else {
        files(issues, &c.snapshot, "snapshot")
    };
    let changes = if c.changes.is_empty() {
        Vec::new()
    } else {
        files(issues, &c.changes, "changes")
    };
    if let Some(r) = &c.rate
        && r.value <= 0.0
    {
        issues.at(
            &r.referenced,
            format!("{field}.cdc.rate"),
            "must be positive",
        );
    }
    let poll_interval = c
        .poll_interval
        .as_ref()
        .and_then(|d| issues.duration(d, &format!("{field}.cdc.poll_interval")))
        .unwrap_or(Duration::from_millis(100));
    if c.tables.value.is_empty() {
        issues.at(
            &c.tables.referenced,
            format!("{field}.cdc.tables"),
            "configure at least one table: `NAME: {key: [...], columns: {...}}`",
        );
    }
    let mut tables = Vec::new();
    let mut keys = Vec::new();
    for (port, t) in &c.tables.value {
        let tf = format!("{field}.cdc.tables.{port}");
        if !valid_name(port) {
            issues.at(
                &t.referenced,
                &tf,
                "names may use only letters, digits, `_` and `-`",
            );
        }
        let id = match &t.value.table {
            Some(q) => match q.value.split_once('.') {
                Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {
                    TableId::new(schema, table)
                }
                _ => {
                    issues.at(
                        &q.referenced,
                        format!("{tf}.table"),
                        format!("`{}`: write `schema.table`", q.value),
                    );
                    continue;
                }
            },
            None => TableId::new("public", port),
        };
        let schema = schema_of(issues, &format!("{tf}.columns"), &t.value.columns);
        if t.value.key.is_empty() {
            issues.at(
                &t.referenced,
                format!("{tf}.key"),
                "name the primary key columns",
            );
        }
        let mut key = Vec::new();
        for (i, k) in t.value.key.iter().enumerate() {
            if schema.index_of(&k.value).is_none() {
                issues.at(
                    &k.referenced,
                    format!("{tf}.key[{i}]"),
                    format!("`{}` is not one of the table's columns", k.value),
                );
                // Left out, so that the table's port still exists for what reads it.
                continue;
            }
            key.push(k.value.clone());
        }
        let mut config = TableConfig::new(schema.clone());
        config.key_columns = key.iter().map(|k| k.as_str().into()).collect();
        for (col, scale) in &t.value.decimal_scales {
            match schema.index_of(col).map(|i| schema.field(i).data_type) {
                Some(DataType::Decimal) if scale.value <= 28 => {
                    config = config.with_decimal_scale(col, scale.value);
                }
                Some(DataType::Decimal) => issues.at(
                    &scale.referenced,
                    format!("{tf}.decimal_scales.{col}"),
                    "a decimal scale is at most 28",
                ),
                _ => issues.at(
                    &scale.referenced,
                    format!("{tf}.decimal_scales.{col}"),
                    format!("`{col}` is not a decimal column of the table"),
                ),
            }
        }
        keys.push((2 + tables.len(), key));
        tables.push(CdcTable {
            port: port.clone(),
            id,
            config,
        });
    }
    if let Err(e) = ChangeDecoder::new(name, tables.clone(), 0) {
        issues.at(loc, format!("{field}.cdc.tables"), e.reason);
        return None;
    }
    let snapshot_files = snapshot.len();
    let mut paths = snapshot;
    paths.extend(changes);
    let rate = c.rate.as_ref().map(|r| r.value);
    let follow = c.follow;
    let node = name.to_string();
    let base = base_dir.to_path_buf();
    let built_tables = tables.clone();
    let factory: SourceFactory = Arc::new(move |inst, _par| {
        // A change stream is one log: one instance reads every file, in order.
        let paths = if inst == 0 { paths.clone() } else { Vec::new() };
        let decoder =
            ChangeDecoder::new(&node, built_tables.clone(), snapshot_files).map_err(|e| {
                crate::error::RunError::Task {
                    task: node.clone(),
                    message: e.reason,
                }
            })?;
        Ok(Box::new(FileSource::new(
            &node,
            FileSourceSpec {
                paths,
                follow,
                rate,
                poll_interval,
                base_dir: Some(base.clone()),
                sequential: true,
                paced_from: snapshot_files,
            },
            decoder,
        )) as Box<dyn Source>)
    });
    Some((factory, tables, keys))
}

/// Pipeline-wide enrichment settings.
#[derive(Clone, Debug)]
struct EnrichmentDefaults {
    strategy: EnrichStrategy,
    state: StateBackend,
}

/// Keys a disk table keeps in memory unless `state.cache_rows` says otherwise.
const DEFAULT_CACHE_ROWS: usize = 100_000;

fn state_backend(issues: &mut Issues, s: Option<&yaml::StateYaml>) -> StateBackend {
    let Some(s) = s else {
        return StateBackend::Memory;
    };
    let disk = match &s.backend {
        None => false,
        Some(b) => match b.value.as_str() {
            "memory" => false,
            "disk" => true,
            other => {
                issues.at(
                    &b.referenced,
                    "state.backend",
                    format!("unknown backend `{other}`: use memory or disk"),
                );
                false
            }
        },
    };
    if !disk {
        for (field, at) in [
            ("state.dir", s.dir.as_ref().map(|d| d.referenced)),
            (
                "state.cache_rows",
                s.cache_rows.as_ref().map(|c| c.referenced),
            ),
        ] {
            if let Some(at) = at {
                issues.at(&at, field, "applies to `backend: disk`");
            }
        }
        return StateBackend::Memory;
    }
    let cache_rows = match &s.cache_rows {
        Some(c) if c.value == 0 => {
            issues.at(&c.referenced, "state.cache_rows", "must be at least 1");
            1
        }
        Some(c) => c.value,
        None => DEFAULT_CACHE_ROWS,
    };
    StateBackend::Disk(DiskOptions {
        dir: s.dir.as_ref().map(|d| PathBuf::from(&d.value)),
        cache_rows,
    })
}

const DEFAULT_MAX_BUFFERED: usize = 1_000_000;

fn strategy_of(
    issues: &mut Issues,
    field: &str,
    name: Option<&S<String>>,
    max: Option<&S<usize>>,
    default: EnrichStrategy,
) -> EnrichStrategy {
    let max_buffered = match (max, default) {
        (Some(m), _) => {
            if m.value == 0 {
                issues.at(
                    &m.referenced,
                    format!("{field}.max_buffered"),
                    "must be at least 1",
                );
            }
            m.value.max(1)
        }
        (None, EnrichStrategy::Gated { max_buffered }) => max_buffered,
        (None, EnrichStrategy::Gradual) => DEFAULT_MAX_BUFFERED,
    };
    match name.map(|n| n.value.as_str()) {
        None => match default {
            EnrichStrategy::Gated { .. } => EnrichStrategy::Gated { max_buffered },
            g => g,
        },
        Some("gradual") => EnrichStrategy::Gradual,
        Some("gated") => EnrichStrategy::Gated { max_buffered },
        Some(other) => {
            let n = name.expect("some");
            issues.at(
                &n.referenced,
                format!("{field}.strategy"),
                format!("unknown strategy `{other}`; expected `gradual` or `gated`"),
            );
            default
        }
    }
}

fn enrichment_defaults(
    issues: &mut Issues,
    e: Option<&S<yaml::EnrichmentYaml>>,
    state: Option<&yaml::StateYaml>,
) -> EnrichmentDefaults {
    let strategy = match e {
        None => EnrichStrategy::Gradual,
        Some(e) => strategy_of(
            issues,
            "enrichment",
            e.value.strategy.as_ref(),
            e.value.max_buffered.as_ref(),
            EnrichStrategy::Gradual,
        ),
    };
    EnrichmentDefaults {
        strategy,
        state: state_backend(issues, state),
    }
}

#[allow(clippy::too_many_arguments)]
fn enrich_operator(
    issues: &mut Issues,
    field: &str,
    name: &str,
    e: &S<yaml::EnrichYaml>,
    defaults: &EnrichmentDefaults,
    events: SchemaRef,
    reference: SchemaRef,
    table: String,
    primary_key: Vec<String>,
) -> Option<BuiltOperator> {
    let y = &e.value;
    let f = format!("{field}.enrich");
    let mode = match y.mode.as_ref().map(|m| m.value.as_str()) {
        None | Some("lookup") => {
            if let Some(r) = &y.retention {
                issues.at(
                    &r.referenced,
                    format!("{f}.retention"),
                    "`retention` applies to `mode: as_of`",
                );
            }
            JoinMode::Lookup
        }
        Some("as_of") => JoinMode::AsOf {
            retention_ms: y
                .retention
                .as_ref()
                .and_then(|r| issues.duration(r, &format!("{f}.retention")))
                .map(|d| d.as_millis() as i64),
        },
        Some(other) => {
            let m = y.mode.as_ref().expect("some");
            issues.at(
                &m.referenced,
                format!("{f}.mode"),
                format!("unknown mode `{other}`; expected `lookup` or `as_of`"),
            );
            return None;
        }
    };
    let miss = match y.miss.as_ref().map(|m| m.value.as_str()) {
        None | Some("emit") => MissPolicy::Emit,
        Some("port") => MissPolicy::Port,
        Some("drop") => MissPolicy::Drop,
        Some("hold") => match &y.hold_timeout {
            Some(t) => MissPolicy::Hold {
                timeout_ms: issues
                    .duration(t, &format!("{f}.hold_timeout"))?
                    .as_millis() as i64,
            },
            None => {
                issues.at(
                    &e.referenced,
                    format!("{f}.hold_timeout"),
                    "`miss: hold` needs a `hold_timeout` (event time), e.g. `30s`",
                );
                return None;
            }
        },
        Some(other) => {
            let m = y.miss.as_ref().expect("some");
            issues.at(
                &m.referenced,
                format!("{f}.miss"),
                format!("unknown miss policy `{other}`; expected `emit`, `port`, `drop` or `hold`"),
            );
            return None;
        }
    };
    if y.hold_timeout.is_some() && !matches!(miss, MissPolicy::Hold { .. }) {
        issues.at(
            &e.referenced,
            format!("{f}.hold_timeout"),
            "`hold_timeout` applies to `miss: hold`",
        );
    }
    let strategy = strategy_of(
        issues,
        &f,
        y.strategy.as_ref(),
        y.max_buffered.as_ref(),
        defaults.strategy,
    );
    let version_range = y.version_range.as_ref().map(|v| {
        let v = &v.value;
        let nvd = VersionRangeSpec::nvd(&v.version.value);
        // NVD's column names are defaults only where the table has them.
        let table_has = |c: &String| reference.index_of(c).is_some();
        let pick = |o: &Option<S<String>>, d: Option<String>| {
            o.as_ref().map(|x| x.value.clone()).or(d.filter(table_has))
        };
        VersionRangeSpec {
            version: v.version.value.clone(),
            exact: pick(&v.exact, nvd.exact),
            start_including: pick(&v.start_including, nvd.start_including),
            start_excluding: pick(&v.start_excluding, nvd.start_excluding),
            end_including: pick(&v.end_including, nvd.end_including),
            end_excluding: pick(&v.end_excluding, nvd.end_excluding),
        }
    });
    let mut conditions = Vec::new();
    for (i, c) in y.conditions.iter().enumerate() {
        match parse_condition(&c.value) {
            Some(cond) => conditions.push(cond),
            None => issues.at(
                &c.referenced,
                format!("{f}.where[{i}]"),
                format!(
                    "`{}`: write `event_column OP table_column` with OP one of = != < <= > >=",
                    c.value
                ),
            ),
        }
    }
    let spec = EnrichSpec {
        table,
        primary_key,
        key: y
            .key
            .value
            .iter()
            .map(|(ev, t)| (ev.clone(), t.value.clone()))
            .collect(),
        columns: y
            .columns
            .as_ref()
            .map(|c| c.iter().map(|x| x.value.clone()).collect()),
        version_range,
        conditions,
        mode,
        miss,
        strategy,
        state: defaults.state.clone(),
    };
    // The probe checks the spec only: its table stays in memory (no working copy on disk).
    let probe_spec = EnrichSpec {
        state: StateBackend::Memory,
        ..spec.clone()
    };
    let probe = match EnrichOperator::new(name, probe_spec, events.clone(), &reference) {
        Ok(op) => op,
        Err(err) => {
            let at = locate_enrich_field(y, &err.field).unwrap_or(e.referenced);
            issues.at(&at, format!("{f}.{}", err.field), err.message);
            return None;
        }
    };
    let node = name.to_string();
    let factory: OperatorFactory = Arc::new(move |_| {
        let op =
            EnrichOperator::new(&node, spec.clone(), events.clone(), &reference).map_err(|e| {
                crate::error::RunError::Task {
                    task: node.clone(),
                    message: e.message,
                }
            })?;
        Ok(Box::new(op) as Box<dyn Operator>)
    });
    Some((probe.ports(), factory, None))
}

/// `event_column OP table_column`.
fn parse_condition(text: &str) -> Option<crate::operators::enrich::Condition> {
    use crate::operators::enrich::{CmpOp, Condition};
    let mut parts = text.split_whitespace();
    let (event, op, table) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(Condition {
        event: event.to_string(),
        op: CmpOp::parse(op)?,
        table: table.to_string(),
    })
}

/// The location of an enrich spec field named like `key.x` or `columns[2]`.
fn locate_enrich_field(y: &yaml::EnrichYaml, field: &str) -> Option<Location> {
    if let Some(k) = field.strip_prefix("key.") {
        return y.key.value.get(k).map(|v| v.referenced);
    }
    if let Some(i) = field
        .strip_prefix("columns[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        return y.columns.as_ref()?.get(i).map(|c| c.referenced);
    }
    if let Some(i) = field
        .strip_prefix("where[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        return y.conditions.get(i).map(|c| c.referenced);
    }
    if field.starts_with("version_range") {
        return y.version_range.as_ref().map(|v| v.referenced);
    }
    None
}

fn generator_spec(
    issues: &mut Issues,
    field: &str,
    g: &yaml::GeneratorYaml,
    base_dir: &Path,
) -> GeneratorSpec {
    let mut spec = GeneratorSpec {
        count: g.count,
        seed: g.seed.unwrap_or(1),
        ..GeneratorSpec::default()
    };
    if let Some(r) = &g.rate {
        if r.value <= 0.0 {
            issues.at(
                &r.referenced,
                format!("{field}.generator.rate"),
                "must be positive",
            );
        }
        spec.rate = Some(r.value);
    }
    if let Some(i) = &g.interval {
        spec.interval = issues.duration(i, &format!("{field}.generator.interval"));
    }
    if let Some(h) = &g.hosts {
        if h.value == 0 {
            issues.at(
                &h.referenced,
                format!("{field}.generator.hosts"),
                "must be at least 1",
            );
        }
        spec.hosts = h.value.max(1);
    }
    if let Some(s) = &g.skew {
        if s.value < 0.0 {
            issues.at(
                &s.referenced,
                format!("{field}.generator.skew"),
                "must not be negative",
            );
        }
        spec.skew = s.value.max(0.0);
    }
    if let Some(j) = &g.jitter {
        spec.jitter = issues
            .duration(j, &format!("{field}.generator.jitter"))
            .unwrap_or_default();
    }
    if let Some(s) = &g.start {
        match chrono::DateTime::parse_from_rfc3339(s.value.trim()) {
            Ok(t) => spec.start_ms = Some(t.timestamp_millis()),
            Err(e) => issues.at(
                &s.referenced,
                format!("{field}.generator.start"),
                format!("invalid RFC 3339 time `{}`: {e}", s.value),
            ),
        }
    }
    if let Some(p) = &g.partitions {
        if p.value == 0 {
            issues.at(
                &p.referenced,
                format!("{field}.generator.partitions"),
                "must be at least 1",
            );
        }
        spec.partitions = p.value.max(1);
    }
    for (i, q) in g.quiet.iter().enumerate() {
        let at = issues.duration(&q.value.at, &format!("{field}.generator.quiet[{i}].at"));
        let d = issues.duration(
            &q.value.duration,
            &format!("{field}.generator.quiet[{i}].for"),
        );
        if let (Some(at), Some(duration)) = (at, d) {
            spec.quiet.push(QuietPeriod { at, duration });
        }
    }
    spec.quiet.sort_by_key(|q| q.at);
    if let Some(v) = &g.vocabulary {
        match crate::sources::generator::load_vocabulary(&base_dir.join(&v.value)) {
            Ok(entries) => spec.vocabulary = Some(entries.into()),
            Err(e) => issues.at(&v.referenced, format!("{field}.generator.vocabulary"), e),
        }
    }
    spec
}

fn schema_of(
    issues: &mut Issues,
    field: &str,
    sc: &S<indexmap::IndexMap<String, S<String>>>,
) -> SchemaRef {
    let mut fields = Vec::new();
    if sc.value.is_empty() {
        issues.at(&sc.referenced, field, "a schema needs at least one column");
    }
    for (name, ty) in &sc.value {
        match DataType::parse(ty.value.trim()) {
            Some(t) => fields.push(Field::new(name, t)),
            None => issues.at(
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

fn expand_paths(issues: &mut Issues, field: &str, base: &Path, f: &yaml::FileYaml) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if f.paths.is_empty() {
        issues.list.push(ConfigIssue {
            line: 0,
            column: 0,
            field: field.into(),
            message: "list at least one file or pattern".into(),
        });
    }
    for p in &f.paths {
        let joined = base.join(&p.value);
        let pattern = joined.to_string_lossy().into_owned();
        let is_glob = p.value.contains(['*', '?', '[']);
        if !is_glob {
            if !joined.exists() && !f.follow {
                issues.at(
                    &p.referenced,
                    field,
                    format!("no such file `{}`", joined.display()),
                );
            }
            out.push(joined);
            continue;
        }
        match glob::glob(&pattern) {
            Ok(paths) => {
                let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                found.sort();
                if found.is_empty() {
                    issues.at(&p.referenced, field, format!("no file matches `{pattern}`"));
                }
                out.extend(found);
            }
            Err(e) => issues.at(
                &p.referenced,
                field,
                format!("invalid pattern `{}`: {e}", p.value),
            ),
        }
    }
    out
}

/// Resolves `node` / `node.port` references to plan inputs, with each reference's location.
fn resolve_inputs(
    issues: &mut Issues,
    infos: &HashMap<String, NodeInfo>,
    field: &str,
    refs: &[S<String>],
) -> Vec<(InputRef, Location)> {
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let (node, port) = r.value.split_once('.').unwrap_or((&r.value, MAIN_PORT));
        let Some(info) = infos.get(node) else {
            issues.at(
                &r.referenced,
                format!("{field}[{i}]"),
                format!("no source or operator named `{node}`"),
            );
            continue;
        };
        match info.ports.iter().position(|p| p.name == port) {
            Some(p) => out.push((
                InputRef {
                    node: info.index,
                    port: p,
                },
                r.referenced,
            )),
            None => issues.at(
                &r.referenced,
                format!("{field}[{i}]"),
                format!(
                    "`{node}` has no output port `{port}`; its ports are {}",
                    info.ports
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    out
}

/// Operators in an order where each comes after the operators it reads; reports cycles.
fn operator_order(issues: &mut Issues, file: &PipelineFile) -> Vec<String> {
    let mut order = Vec::new();
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 = visiting, 2 = done
    fn visit<'a>(
        name: &'a str,
        file: &'a PipelineFile,
        state: &mut HashMap<&'a str, u8>,
        order: &mut Vec<String>,
        issues: &mut Issues,
    ) {
        match state.get(name) {
            Some(2) => return,
            Some(1) => {
                let op = &file.operators[name];
                issues.at(
                    &op.referenced,
                    format!("operators.{name}.inputs"),
                    format!("`{name}` reads its own output through a cycle of operators"),
                );
                return;
            }
            _ => {}
        }
        state.insert(name, 1);
        for r in &file.operators[name].value.inputs {
            let dep = r.value.split_once('.').map_or(r.value.as_str(), |(n, _)| n);
            if file.operators.contains_key(dep) {
                visit(
                    file.operators.get_key_value(dep).expect("exists").0,
                    file,
                    state,
                    order,
                    issues,
                );
            }
        }
        state.insert(name, 2);
        order.push(name.to_string());
    }
    for name in file.operators.keys() {
        visit(name, file, &mut state, &mut order, issues);
    }
    order
}

fn window_spec(
    issues: &mut Issues,
    field: &str,
    w: &yaml::WindowYaml,
    loc: &Location,
) -> Option<WindowSpec> {
    let kinds = [
        w.tumbling.is_some(),
        w.sliding.is_some(),
        w.session.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        issues.at(loc, field, "a window needs exactly one of `tumbling: SIZE`, `sliding: {size, slide}` or `session: {gap}`");
        return None;
    }
    let kind = if let Some(t) = &w.tumbling {
        WindowKind::Tumbling {
            size: issues.duration(t, &format!("{field}.tumbling"))?,
        }
    } else if let Some(s) = &w.sliding {
        let size = issues.duration(&s.value.size, &format!("{field}.sliding.size"));
        let slide = issues.duration(&s.value.slide, &format!("{field}.sliding.slide"));
        WindowKind::Sliding {
            size: size?,
            slide: slide?,
        }
    } else {
        let s = w.session.as_ref().expect("one kind");
        WindowKind::Session {
            gap: issues.duration(&s.value.gap, &format!("{field}.session.gap"))?,
        }
    };
    let allowed_lateness = match &w.allowed_lateness {
        Some(d) => issues.duration(d, &format!("{field}.allowed_lateness"))?,
        None => Duration::ZERO,
    };
    let mut aggregates = Vec::new();
    if w.aggregates.value.is_empty() {
        issues.at(
            &w.aggregates.referenced,
            format!("{field}.aggregates"),
            "list at least one aggregate, e.g. `events: count`",
        );
    }
    for (name, expr) in &w.aggregates.value {
        match parse_aggregate(&expr.value) {
            Ok((function, arg)) => aggregates.push(AggregateSpec {
                name: name.clone(),
                function,
                field: arg,
            }),
            Err(m) => issues.at(&expr.referenced, format!("{field}.aggregates.{name}"), m),
        }
    }
    Some(WindowSpec {
        key: w.key.iter().map(|k| k.value.clone()).collect(),
        kind,
        allowed_lateness,
        aggregates,
    })
}

/// `count`, `count(f)`, `sum(f)`, `min(f)`, `max(f)`, `avg(f)`, `count_distinct(f)`.
fn parse_aggregate(expr: &str) -> Result<(AggregateFn, Option<String>), String> {
    let e = expr.trim();
    let (func, arg) = match e.split_once('(') {
        Some((f, rest)) => {
            let Some(arg) = rest.strip_suffix(')') else {
                return Err(format!("`{e}`: missing `)`"));
            };
            (f.trim(), Some(arg.trim().to_string()))
        }
        None => (e, None),
    };
    let Some(function) = AggregateFn::parse(func) else {
        return Err(format!(
            "unknown aggregate `{func}`; expected count, sum, min, max, avg or count_distinct"
        ));
    };
    match (&function, &arg) {
        (AggregateFn::Count, _) => Ok((function, arg.filter(|a| !a.is_empty()))),
        (_, Some(a)) if !a.is_empty() => Ok((function, arg)),
        _ => Err(format!("`{func}` needs a column: `{func}(column)`")),
    }
}

/// The location and YAML name of a window spec field named like `key[0]`,
/// `aggregates[1].field` or `kind.size`.
fn locate_spec_field(w: &yaml::WindowYaml, field: &str) -> Option<(Location, String)> {
    let index = |prefix: &str| -> Option<usize> {
        field.strip_prefix(prefix)?.split(']').next()?.parse().ok()
    };
    if let Some(i) = index("key[") {
        return w.key.get(i).map(|k| (k.referenced, field.to_string()));
    }
    if let Some(i) = index("aggregates[") {
        return w
            .aggregates
            .value
            .get_index(i)
            .map(|(name, v)| (v.referenced, format!("aggregates.{name}")));
    }
    match field {
        "kind.size" => w
            .tumbling
            .as_ref()
            .map(|t| (t.referenced, "tumbling".to_string()))
            .or_else(|| {
                w.sliding
                    .as_ref()
                    .map(|s| (s.value.size.referenced, "sliding.size".to_string()))
            }),
        "kind.slide" => w
            .sliding
            .as_ref()
            .map(|s| (s.value.slide.referenced, "sliding.slide".to_string())),
        "kind.gap" => w
            .session
            .as_ref()
            .map(|s| (s.value.gap.referenced, "session.gap".to_string())),
        "allowed_lateness" => w
            .allowed_lateness
            .as_ref()
            .map(|a| (a.referenced, field.to_string())),
        _ => None,
    }
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

    #[test]
    fn aggregates_parse() {
        assert_eq!(
            parse_aggregate("count").unwrap(),
            (AggregateFn::Count, None)
        );
        assert_eq!(
            parse_aggregate(" sum( bytes ) ").unwrap(),
            (AggregateFn::Sum, Some("bytes".into()))
        );
        assert!(
            parse_aggregate("median(x)")
                .unwrap_err()
                .contains("unknown aggregate")
        );
        assert!(
            parse_aggregate("sum")
                .unwrap_err()
                .contains("needs a column")
        );
    }
}
