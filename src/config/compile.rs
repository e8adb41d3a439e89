//! Compiling a parsed pipeline into a runtime `Plan`: the pipeline-wide settings, then the
//! graph — each node's one kind block built by its component (`crate::components`), inputs
//! resolved to ports, ports nobody reads and guarantees the sinks cannot give reported.
//! Components check their own settings; this module only wires.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Location;

use crate::alerts::AlertRules;
use crate::components::{OperatorYaml, SinkYaml, SourceYaml};
use crate::config::component::{
    EnrichmentDefaults, OperatorContext, OperatorInput, SinkContext, SourceContext, UnreadColumns,
    one_of,
};
use crate::config::issues::{Issues, MAX_PARALLELISM, valid_name};
use crate::config::tables;
use crate::config::yaml::{EnrichmentYaml, PipelineFile, S, StateYaml};
use crate::config::{Compiled, MetricsAddr, Overrides};
use crate::dataflow::{DEAD_LETTER_PORT, Guarantee, MAIN_PORT, PortSpec};
use crate::dead_letter;
use crate::error::ConfigError;
use crate::operators::enrich::EnrichStrategy;
use crate::operators::enrich::config::strategy_of;
use crate::runtime::plan::{
    InputRef, NodeKind, Plan, PlanNode, RuntimeOptions, SinkFactory, SourceFactory, WatermarkSpec,
};
use crate::state::StateBackend;
use crate::state::disk::DiskOptions;
use crate::types::{Schema, SchemaRef};

/// The one kind block of a node (reported when there is none or more than one).
fn one_block<'a, C: ?Sized>(
    issues: &mut Issues,
    field: &str,
    loc: &Location,
    section: &str,
    kinds: &[&str],
    blocks: Vec<(&'static str, Location, &'a C)>,
) -> Option<(&'static str, Location, &'a C)> {
    match blocks.len() {
        1 => blocks.into_iter().next(),
        0 => {
            issues.at(
                loc,
                field,
                format!("a {section} needs one kind block: {}", one_of(kinds)),
            );
            None
        }
        _ => {
            let given: Vec<&str> = blocks.iter().map(|b| b.0).collect();
            issues.at(
                loc,
                field,
                format!(
                    "a {section} has exactly one kind block, not {}",
                    one_of(&given).replace(" or ", " and ")
                ),
            );
            None
        }
    }
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

/// Compiles a parsed pipeline into a plan, checking references, types and values.
pub fn compile(
    path: &Path,
    file: PipelineFile,
    overrides: &Overrides,
) -> Result<Compiled, ConfigError> {
    let mut issues = Issues::new(path.to_path_buf());
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut warnings = Vec::new();
    let kafka_links = std::sync::Arc::new(crate::kafka::offsets::Links::default());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let file_parallelism = file
        .parallelism
        .as_ref()
        .map(|p| issues.parallelism(p, "parallelism"));
    let default_parallelism = match overrides.parallelism {
        Some(p) if !(1..=MAX_PARALLELISM).contains(&p) => {
            issues.unplaced(
                "--parallelism",
                format!("must be from 1 to {MAX_PARALLELISM}"),
            );
            p.clamp(1, MAX_PARALLELISM)
        }
        Some(p) => p,
        None => file_parallelism.unwrap_or(cores),
    };

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
    let pipeline_name = file.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut rules = AlertRules::default();
    if let Some(a) = &file.alerts {
        for (name, value, rule) in [
            (
                "watermark_lag",
                &a.watermark_lag,
                &mut rules.watermark_lag_ms,
            ),
            (
                "watermark_stall",
                &a.watermark_stall,
                &mut rules.watermark_stall_ms,
            ),
            (
                "enrichment_gate",
                &a.enrichment_gate,
                &mut rules.enrichment_gate_ms,
            ),
            (
                "checkpoint_age",
                &a.checkpoint_age,
                &mut rules.checkpoint_age_ms,
            ),
            (
                "partition_unowned",
                &a.partition_unowned,
                &mut rules.partition_unowned_ms,
            ),
        ] {
            if let Some(v) = value
                && let Some(d) = issues.duration_or_off(v, &format!("alerts.{name}"))
            {
                *rule = d.map(|d| d.as_millis() as i64);
            }
        }
        if let Some(v) = &a.check_interval
            && let Some(d) = issues.duration(v, "alerts.check_interval")
        {
            options.monitor_interval = d.max(Duration::from_millis(1));
        }
    }
    options.alerts = rules;

    let metrics = file.metrics.as_ref();
    let metrics_addr = match (
        &overrides.metrics_addr,
        metrics.and_then(|m| m.addr.as_ref()),
    ) {
        (Some(a), _) if a.trim() == "off" => MetricsAddr::Off,
        (Some(a), _) => match a.parse::<SocketAddr>() {
            Ok(a) => MetricsAddr::At(a),
            Err(e) => {
                issues.unplaced("--metrics-addr", format!("invalid address `{a}`: {e}"));
                MetricsAddr::Unset
            }
        },
        (None, Some(a)) if a.value.trim() == "off" => MetricsAddr::Off,
        (None, Some(a)) => match a.value.parse::<SocketAddr>() {
            Ok(x) => MetricsAddr::At(x),
            Err(e) => {
                issues.at(
                    &a.referenced,
                    "metrics.addr",
                    format!(
                        "invalid address `{}`: {e}; write e.g. `127.0.0.1:9464`, or `off`",
                        a.value
                    ),
                );
                MetricsAddr::Unset
            }
        },
        (None, None) => MetricsAddr::Unset,
    };
    let mut endpoint_limits = crate::http::Limits::default();
    if let Some(m) = metrics {
        for (value, field, into) in [
            (
                &m.header_read_timeout,
                "metrics.header_read_timeout",
                &mut endpoint_limits.header_read_timeout,
            ),
            (
                &m.idle_timeout,
                "metrics.idle_timeout",
                &mut endpoint_limits.idle_timeout,
            ),
        ] {
            if let Some(v) = value
                && let Some(d) = issues.duration(v, field)
            {
                if d.is_zero() {
                    issues.at(&v.referenced, field, "must be more than 0");
                } else {
                    *into = d;
                }
            }
        }
        if let Some(n) = &m.max_connections {
            endpoint_limits.max_connections = issues.at_least_one(n, "metrics.max_connections");
        }
    }

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
        issues.at_line(1, 1, "sources", "a pipeline needs at least one source");
    }

    let mut nodes: Vec<PlanNode> = Vec::new();
    let mut infos: HashMap<String, NodeInfo> = HashMap::new();
    // Primary keys of change-stream table ports, by (node, port).
    let mut table_keys: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    // Ports left unread without a warning: a generator's dead letters, a change stream's
    // `main` view.
    let mut quiet_ports: HashSet<(usize, usize)> = HashSet::new();
    let mut preflights = Vec::new();
    let mut holdings = Vec::new();
    let mut current_tables = Vec::new();
    let mut replayable = Vec::new();
    let enrichment =
        enrichment_defaults(&mut issues, file.enrichment.as_ref(), file.state.as_ref());

    // Column names operators read, and whether every sink writes JSON: the rest of the
    // sources' string columns can be carried undecoded (`UnreadColumns`).
    let unread = UnreadColumns::default();
    let mut read_columns: HashSet<String> = HashSet::new();
    let mut sinks_write_json = true;

    // Sources.
    let multi_source = file.sources.len() > 1;
    for (name, src) in &file.sources {
        let field = format!("sources.{name}");
        let loc = &src.referenced;
        let s = &src.value;
        let parallelism = s.parallelism.as_ref().map_or(1, |p| {
            issues.parallelism(p, &format!("{field}.parallelism"))
        });
        let et = s.event_time.as_ref().map(|e| &e.value);
        let max_ooo = et
            .and_then(|e| e.max_out_of_orderness.as_ref())
            .and_then(|d| issues.duration(d, &format!("{field}.event_time.max_out_of_orderness")))
            .unwrap_or(Duration::ZERO);
        let max_ahead = et
            .and_then(|e| e.max_ahead.as_ref())
            .and_then(|d| issues.duration(d, &format!("{field}.event_time.max_ahead")));
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
            max_ahead,
            idle_timeout,
            expected_interval,
        };
        let schema = s
            .schema
            .as_ref()
            .map(|sc| (issues.schema(&format!("{field}.schema"), sc), sc.referenced));
        let tables = s.tables.as_ref().map(|t| {
            (
                tables::change_tables(&mut issues, &format!("{field}.tables"), t),
                t.referenced,
            )
        });
        let built = match one_block(
            &mut issues,
            &field,
            loc,
            "source",
            SourceYaml::KINDS,
            s.blocks(),
        ) {
            Some((kind, at, block)) => {
                let mut cx = SourceContext {
                    issues: &mut issues,
                    name,
                    field: format!("{field}.{kind}"),
                    location: at,
                    base_dir: &base_dir,
                    parallelism,
                    kafka_links: kafka_links.clone(),
                    schema,
                    tables,
                    schema_used: false,
                    tables_used: false,
                    event_time_field: et.and_then(|e| e.field.as_ref()),
                    pipeline: path,
                    warnings: &mut warnings,
                    unread: unread.clone(),
                };
                let built = block.build(&mut cx);
                let (schema_unused, tables_unused) = (
                    cx.schema.as_ref().filter(|_| !cx.schema_used).map(|s| s.1),
                    cx.tables.as_ref().filter(|_| !cx.tables_used).map(|t| t.1),
                );
                if let Some(at) = schema_unused {
                    issues.at(
                        &at,
                        format!("{field}.schema"),
                        format!(
                            "a `{kind}` source of this format does not read `schema`; remove it"
                        ),
                    );
                }
                if let Some(at) = tables_unused {
                    issues.at(
                        &at,
                        format!("{field}.tables"),
                        format!(
                            "`tables` describe a change stream; a `{kind}` source of this format \
                             reads none (for Debezium records set `format: debezium`)"
                        ),
                    );
                }
                built
            }
            None => None,
        };
        let mut ports = vec![
            PortSpec {
                name: MAIN_PORT.into(),
                schema: built
                    .as_ref()
                    .map_or_else(|| Arc::new(Schema::default()), |b| b.schema.clone()),
            },
            PortSpec {
                name: DEAD_LETTER_PORT.into(),
                schema: dead_letter::schema(),
            },
        ];
        if let Some(b) = &built {
            for p in &b.extra_ports {
                if ports.iter().any(|q| q.name == p.name) {
                    issues.at(
                        loc,
                        format!("{field}.tables.{}", p.name),
                        format!(
                            "`{}` is the name of a built-in port; name the table otherwise",
                            p.name
                        ),
                    );
                }
                ports.push(p.clone());
            }
            for (port, key) in &b.table_keys {
                table_keys.insert((nodes.len(), *port), key.clone());
            }
            if !b.dead_letters {
                quiet_ports.insert((nodes.len(), 1));
            }
            if b.main_is_view {
                quiet_ports.insert((nodes.len(), 0));
            }
            if let Some(p) = &b.preflight {
                preflights.push((format!("source {name}"), p.clone()));
            }
            if let Some(c) = &b.current_tables {
                current_tables.push((name.clone(), c.clone()));
            }
            if b.replayable {
                replayable.push(name.clone());
            }
        }
        add_node(
            &mut nodes,
            &mut infos,
            *loc,
            PlanNode {
                name: name.clone(),
                parallelism,
                kind: NodeKind::Source {
                    factory: built.map_or_else(
                        || -> SourceFactory {
                            Arc::new(|_, _| unreachable!("invalid plans never run"))
                        },
                        |b| b.factory,
                    ),
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
        let parallelism = o.parallelism.as_ref().map_or(default_parallelism, |p| {
            issues.parallelism(p, &format!("{field}.parallelism"))
        });
        if o.inputs.is_empty() {
            issues.at(
                loc,
                format!("{field}.inputs"),
                "an operator needs at least one input",
            );
        }
        let resolved = resolve_inputs(&mut issues, &infos, &format!("{field}.inputs"), &o.inputs);
        if resolved.len() != o.inputs.len() {
            continue;
        }
        let inputs: Vec<OperatorInput> = resolved
            .iter()
            .zip(&o.inputs)
            .map(|((r, at), written)| OperatorInput {
                reference: written.value.clone(),
                location: *at,
                port: nodes[r.node].ports[r.port].clone(),
                table_key: table_keys.get(&(r.node, r.port)).cloned(),
            })
            .collect();
        let Some((kind, at, block)) = one_block(
            &mut issues,
            &field,
            loc,
            "operator",
            OperatorYaml::KINDS,
            o.blocks(),
        ) else {
            continue;
        };
        let mut cx = OperatorContext {
            issues: &mut issues,
            name: &name,
            field: format!("{field}.{kind}"),
            location: at,
            inputs,
            enrichment: &enrichment,
        };
        let Some(built) = block.build(&mut cx) else {
            continue;
        };
        read_columns.extend(built.reads);
        add_node(
            &mut nodes,
            &mut infos,
            *loc,
            PlanNode {
                name: name.clone(),
                parallelism,
                kind: NodeKind::Operator {
                    factory: built.factory,
                    key_columns: built.key_columns,
                    broadcast_inputs: built.broadcast_inputs,
                },
                inputs: resolved.iter().map(|(r, _)| *r).collect(),
                ports: built.ports,
            },
        );
    }

    // Sinks.
    let mut outputs = Vec::new();
    let mut sink_guarantees: Vec<(String, Guarantee)> = Vec::new();
    // Files written by sinks, and by which.
    let mut written: HashMap<PathBuf, String> = HashMap::new();
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
        let factory: Option<SinkFactory> = match one_block(
            &mut issues,
            &field,
            loc,
            "sink",
            SinkYaml::KINDS,
            s.blocks(),
        ) {
            Some((kind, at, block)) => {
                let mut cx = SinkContext {
                    issues: &mut issues,
                    name,
                    field: format!("{field}.{kind}"),
                    location: at,
                    schema: schema.clone(),
                    columns,
                    transactional,
                    checkpoint_dir: options.checkpoint_dir.clone(),
                    pipeline: &pipeline_name,
                    overrides,
                    base_dir: &base_dir,
                    kafka_links: kafka_links.clone(),
                };
                block.build(&mut cx).map(|b| {
                    if let Some(file) = &b.writes {
                        let key = std::path::absolute(file).unwrap_or_else(|_| file.clone());
                        if let Some(other) = written.insert(key, name.clone()) {
                            issues.at(
                                &at,
                                format!("{field}.{kind}"),
                                format!(
                                    "`{}` is already written by sink `{other}`: two sinks \
                                     writing one file lose each other's lines",
                                    file.display()
                                ),
                            );
                        }
                    }
                    sinks_write_json &= b.writes_json;
                    if let Some(h) = &b.holdings {
                        holdings.push((name.clone(), h.clone()));
                    }
                    if let Some(p) = &b.preflight {
                        preflights.push((format!("sink {name}"), p.clone()));
                    }
                    outputs.push((name.clone(), b.target));
                    sink_guarantees.push((name.clone(), b.guarantee));
                    b.factory
                })
            }
            None => None,
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

    if sinks_write_json {
        unread.set_read(read_columns);
    }

    // Ports nobody reads: data there is counted but not kept.
    let consumed: HashSet<(usize, usize)> = nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(|r| (r.node, r.port)))
        .collect();
    for (name, info) in &infos {
        for (p, port) in info.ports.iter().enumerate() {
            if quiet_ports.contains(&(info.index, p)) {
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
    group_keyed_warnings(
        path,
        &nodes,
        &infos,
        &kafka_links.group_sources(),
        &mut warnings,
    );
    if transactional && options.checkpoint_interval.is_none() {
        warnings.push(format!(
            "{}: checkpoint.interval is off: file sinks commit only when the input ends, and a \
             restart begins from the start",
            path.display()
        ));
    }
    warnings.sort();

    issues
        .finish()
        .map_err(|e| file.interpolation.restore_error(e))?;
    Ok(Compiled {
        plan: Plan {
            name: pipeline_name,
            nodes,
            options,
        },
        warnings,
        metrics_addr,
        endpoint_limits,
        outputs,
        preflights,
        holdings,
        current_tables,
        replayable,
        kafka_links,
    })
}

/// Keys a disk table keeps in memory unless `state.cache_rows` says otherwise.
const DEFAULT_CACHE_ROWS: usize = 100_000;

fn state_backend(issues: &mut Issues, s: Option<&StateYaml>) -> StateBackend {
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

fn enrichment_defaults(
    issues: &mut Issues,
    e: Option<&S<EnrichmentYaml>>,
    state: Option<&StateYaml>,
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

/// Keyed operators fed by a consumer group's source: each process of the group sees only the
/// partitions it owns, so a key's rows meet in one process only if the topic is partitioned
/// by that key. Until Watershed repartitions through Kafka itself, say so.
fn group_keyed_warnings(
    path: &Path,
    nodes: &[PlanNode],
    infos: &HashMap<String, NodeInfo>,
    group_sources: &[String],
    warnings: &mut Vec<String>,
) {
    // Which group source each node's non-broadcast input descends from.
    let mut fed_by: Vec<Option<String>> = nodes
        .iter()
        .map(|n| group_sources.contains(&n.name).then(|| n.name.clone()))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        let broadcast: &[usize] = match &n.kind {
            NodeKind::Operator {
                broadcast_inputs, ..
            } => broadcast_inputs,
            _ => &[],
        };
        if fed_by[i].is_none() {
            fed_by[i] = n
                .inputs
                .iter()
                .enumerate()
                .filter(|(j, _)| !broadcast.contains(j))
                .find_map(|(_, r)| fed_by.get(r.node).cloned().flatten());
        }
        let NodeKind::Operator {
            key_columns: Some(cols),
            ..
        } = &n.kind
        else {
            continue;
        };
        let Some(source) = &fed_by[i] else { continue };
        let key: Vec<String> = n
            .inputs
            .first()
            .and_then(|r| nodes.get(r.node)?.ports.get(r.port))
            .map(|p| {
                cols.iter()
                    .filter(|&&c| c < p.schema.len())
                    .map(|&c| p.schema.field(c).name.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let line = infos.get(&n.name).map_or(0, |i| i.location.line());
        warnings.push(format!(
            "{}:{line}: operator `{}` is keyed by [{}] and reads source `{source}`, which shares \
             its partitions with the other processes of its consumer group: each process sees \
             only the rows of the partitions it owns, so a key's rows meet only if the topic's \
             records are partitioned by that key (Watershed does not repartition through Kafka \
             yet)",
            path.display(),
            n.name,
            key.join(", ")
        ));
    }
}
