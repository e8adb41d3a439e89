//! `validate` names the file, line, column and field of a mistake in the settings of every
//! component kind the registry knows (one test per kind), and collects every mistake.

use watershed::config::{self, Overrides};

/// Compiles `yaml` (with an `in.jsonl` beside it) and returns the rendered errors.
fn errors(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":1,\"host\":\"a\",\"n\":1}\n",
    )
    .unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    match config::load_and_compile(&path, &Overrides::default()) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.to_string().replace(&path.display().to_string(), "p.yaml"),
    }
}

fn expect(yaml: &str, wanted: &[&str]) {
    let text = errors(yaml);
    for w in wanted {
        assert!(text.contains(w), "missing `{w}` in:\n{text}");
    }
}

const ROWS: &str =
    "    schema: {ts: timestamp, host: string, n: int}\n    event_time: {field: ts}\n";

#[test]
fn generator_settings() {
    expect(
        "sources:\n  g:\n    generator: {rate: -1, hosts: 0, jitter: 2x}\n",
        &[
            "p.yaml:3:23: field `sources.g.generator.rate`: must be a positive number",
            "p.yaml:3:34: field `sources.g.generator.hosts`: must be at least 1",
            "p.yaml:3:45: field `sources.g.generator.jitter`: invalid duration `2x`",
        ],
    );
}

#[test]
fn file_source_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [missing.jsonl], format: csv}}\n{ROWS}  h:\n    file: {{paths: [in.jsonl], rate: 0}}\n{ROWS}"
    );
    expect(
        &yaml,
        &[
            "p.yaml:3:44: field `sources.f.file.format`: unknown format `csv`",
            "p.yaml:7:37: field `sources.h.file.rate`: must be a positive number",
        ],
    );
    assert!(
        !errors(&yaml).contains("does not read `schema`"),
        "no cascade from an unknown format"
    );
    expect(
        "sources:\n  f:\n    file: {paths: [in.jsonl]}\n    event_time: {field: ts}\n",
        &[
            "p.yaml:3:11: field `sources.f.schema`: a file source of `format: json` needs a `schema`",
        ],
    );
}

#[test]
fn max_line_bytes_is_bounded() {
    expect(
        &format!("sources:\n  f:\n    file: {{paths: [in.jsonl], max_line_bytes: 3}}\n{ROWS}"),
        &["field `sources.f.file.max_line_bytes`: must be from 64 to 1073741824 (bytes)"],
    );
}

#[test]
fn split_bytes_is_bounded_and_only_for_files_read_to_their_end() {
    expect(
        &format!(
            "sources:\n  f:\n    file: {{paths: [in.jsonl], split_bytes: 10}}\n{ROWS}  g:\n    file: {{paths: [in.jsonl], follow: true, split_bytes: 4096}}\n{ROWS}  c:\n    file: {{format: debezium, snapshot: [in.jsonl], split_bytes: 4096}}\n    tables:\n      t: {{key: [id], columns: {{id: int}}}}\n"
        ),
        &[
            "p.yaml:3:44: field `sources.f.file.split_bytes`: must be from 1024 to 1099511627776 (bytes)",
            "p.yaml:7:58: field `sources.g.file.split_bytes`: a followed file grows and is read whole",
            "field `sources.c.file.split_bytes`: a change stream is one log, read in order",
        ],
    );
}

#[test]
fn change_stream_settings() {
    expect(
        "sources:\n  c:\n    file: {format: debezium, snapshot: [in.jsonl]}\n    tables:\n      t: {key: [x], columns: {id: int}}\n    schema: {id: int}\n",
        &[
            "p.yaml:5:17: field `sources.c.tables.t.key[0]`: `x` is not one of the table's columns",
            "p.yaml:6:13: field `sources.c.schema`: a `file` source of this format does not read `schema`",
        ],
    );
    expect(
        "sources:\n  c:\n    file: {format: debezium, snapshot: [in.jsonl]}\n",
        &[
            "p.yaml:3:11: field `sources.c.tables`: a change stream (`format: debezium`) needs its `tables:`",
        ],
    );
}

#[test]
fn a_source_needs_exactly_one_kind() {
    expect(
        "sources:\n  s:\n    idle_timeout: 1s\n  t:\n    generator: {}\n    file: {paths: [in.jsonl]}\n",
        &[
            "p.yaml:3:5: field `sources.s`: a source needs one kind block: `generator`, `file`, `kafka` or `postgres`",
            "field `sources.t`: a source has exactly one kind block, not `generator` and `file`",
        ],
    );
}

#[test]
fn window_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}operators:\n  w:\n    inputs: [f]\n    window: {{key: [hots], tumbling: 1m, aggregates: {{s: sum(n), m: median(n)}}}}\n"
    );
    expect(
        &yaml,
        &["p.yaml:9:68: field `operators.w.window.aggregates.m`: unknown aggregate `median`"],
    );
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}operators:\n  w:\n    inputs: [f]\n    window: {{key: [hots], tumbling: 1m, aggregates: {{n: count}}}}\n"
    );
    expect(
        &yaml,
        &["p.yaml:9:20: field `operators.w.window.key[0]`: unknown field `hots`"],
    );
}

#[test]
fn route_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}operators:\n  r:\n    inputs: [f]\n    route: {{field: n, ports: {{small: [one]}}}}\n"
    );
    expect(
        &yaml,
        &["p.yaml:9:39: field `operators.r.route.ports.small`: `one` is not a int value"],
    );
}

#[test]
fn enrich_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}  c:\n    file: {{format: debezium, snapshot: [in.jsonl]}}\n    tables:\n      hosts: {{key: [host], columns: {{host: string, owner: string}}}}\noperators:\n  e:\n    inputs: [f, c.hosts]\n    enrich: {{key: {{host: host}}, miss: later, columns: [site]}}\n"
    );
    expect(
        &yaml,
        &["p.yaml:13:39: field `operators.e.enrich.miss`: unknown miss policy `later`"],
    );
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}  c:\n    file: {{format: debezium, snapshot: [in.jsonl]}}\n    tables:\n      hosts: {{key: [host], columns: {{host: string, owner: string}}}}\noperators:\n  e:\n    inputs: [f, c.hosts]\n    enrich: {{key: {{host: host}}, columns: [site]}}\n"
    );
    expect(
        &yaml,
        &[
            "p.yaml:13:43: field `operators.e.enrich.columns[0]`: `site` is not a column of table `hosts`",
        ],
    );
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}  c:\n    file: {{format: debezium, snapshot: [in.jsonl]}}\n    tables:\n      hosts: {{key: [host], columns: {{host: string, owner: string}}}}\noperators:\n  e:\n    inputs: [f, c.hosts]\n    enrich: {{key: {{host: host}}, distinct: [owner, site]}}\n  g:\n    inputs: [f, c.hosts]\n    enrich: {{key: {{host: host}}, distinct: []}}\n"
    );
    expect(
        &yaml,
        &[
            "p.yaml:13:51: field `operators.e.enrich.distinct[1]`: `site` is not a column of table `hosts`",
            "p.yaml:16:43: field `operators.g.enrich.distinct`: name at least one table column",
        ],
    );
}

#[test]
fn file_and_stdout_sink_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}sinks:\n  a: {{input: f, stdout: false}}\n  b: {{input: f, file: \"\"}}\n  c: {{input: f, file: x.jsonl, columns: [nope]}}\n"
    );
    expect(
        &yaml,
        &[
            "p.yaml:7:25: field `sinks.a.stdout`: `stdout: false` writes nowhere",
            "p.yaml:8:23: field `sinks.b.file`: name the output file",
            "p.yaml:9:42: field `sinks.c.columns[0]`: `nope` is not a column of the input",
        ],
    );
}

#[test]
fn two_sinks_writing_one_file_is_an_error() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}sinks:\n  a: {{input: f, file: out.jsonl}}\n  b: {{input: f, file: ./out.jsonl}}\n"
    );
    expect(
        &yaml,
        &["p.yaml:8:23: field `sinks.b.file`: `./out.jsonl` is already written by sink `a`"],
    );
}

#[test]
fn parallelism_rates_and_empty_paths_are_bounded_and_located() {
    let yaml = format!(
        "parallelism: 5000\nsources:\n  f:\n    file: {{paths: [], rate: .nan}}\n{ROWS}    parallelism: 0\n  g:\n    generator: {{rate: .inf, skew: .nan}}\n"
    );
    expect(
        &yaml,
        &[
            "p.yaml:1:14: field `parallelism`: must be from 1 to 1024",
            "p.yaml:4:11: field `sources.f.file.paths`: list at least one file or pattern",
            "p.yaml:4:29: field `sources.f.file.rate`: must be a positive number",
            "p.yaml:7:18: field `sources.f.parallelism`: must be from 1 to 1024",
            "p.yaml:9:23: field `sources.g.generator.rate`: must be a positive number",
            "p.yaml:9:35: field `sources.g.generator.skew`: must be a number, 0 or more",
        ],
    );
}

#[test]
fn environment_variables_fill_the_file_and_never_show_in_messages() {
    // SAFETY: this test binary's tests run in their own processes (nextest).
    unsafe {
        std::env::set_var("WATERSHED_TEST_LATENESS", "hunter22");
        std::env::set_var("WATERSHED_TEST_INPUT", "in.jsonl");
    }
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [\"${{WATERSHED_TEST_INPUT}}\"]}}\n{ROWS}    idle_timeout: ${{WATERSHED_TEST_LATENESS}}\n    expected_interval: ${{WATERSHED_TEST_MISSING}}\n"
    );
    let text = errors(&yaml);
    assert!(
        text.contains(
            "p.yaml:7:24: field `sources.f.expected_interval`: environment variable `WATERSHED_TEST_MISSING` is not set"
        ),
        "{text}"
    );
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [\"${{WATERSHED_TEST_INPUT}}\"]}}\n{ROWS}    idle_timeout: ${{WATERSHED_TEST_LATENESS}}\n"
    );
    let text = errors(&yaml);
    assert!(
        text.contains(
            "p.yaml:6:19: field `sources.f.idle_timeout`: invalid duration `${WATERSHED_TEST_LATENESS}`"
        ),
        "{text}"
    );
    assert!(!text.contains("hunter22"), "{text}");
}

#[test]
fn endpoint_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}sinks:\n  o: {{input: f, stdout: true}}\nmetrics: {{addr: nowhere, header_read_timeout: 0s, idle_timeout: 3x, max_connections: 0}}\n"
    );
    expect(
        &yaml,
        &[
            "field `metrics.addr`: invalid address `nowhere`",
            "field `metrics.header_read_timeout`: must be more than 0",
            "field `metrics.idle_timeout`: invalid duration `3x`",
            "field `metrics.max_connections`: must be at least 1",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        yaml.replace(
            "{addr: nowhere, header_read_timeout: 0s, idle_timeout: 3x, max_connections: 0}",
            "{addr: \"off\", header_read_timeout: 2s, idle_timeout: 5s, max_connections: 3}",
        ),
    )
    .unwrap();
    let c = config::load_and_compile(&path, &Overrides::default()).unwrap();
    assert_eq!(c.metrics_addr, config::MetricsAddr::Off);
    assert_eq!(
        c.endpoint_limits,
        watershed::http::Limits {
            header_read_timeout: std::time::Duration::from_secs(2),
            idle_timeout: std::time::Duration::from_secs(5),
            max_connections: 3,
        }
    );
    // The command line wins over the file.
    let over = Overrides {
        metrics_addr: Some("127.0.0.1:1".into()),
        ..Overrides::default()
    };
    let c = config::load_and_compile(&path, &over).unwrap();
    assert_eq!(
        c.metrics_addr,
        config::MetricsAddr::At("127.0.0.1:1".parse().unwrap())
    );
}

#[test]
fn clickhouse_sink_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}sinks:\n  a:\n    input: f\n    clickhouse: {{url: \"http://u:p@h:8123\", table: t, key: [nope], version: host, batch_rows: 0}}\n  b:\n    input: f\n    clickhouse: {{url: \"h:8123\", table: t, create_table: true}}\n"
    );
    expect(
        &yaml,
        &[
            "field `sinks.a.clickhouse.url`: put credentials in `user` and `password`",
            "field `sinks.a.clickhouse.key`: `nope` is not a column of the sink's input",
            "field `sinks.a.clickhouse.version`: `host` must be an int or timestamp column",
            "field `sinks.a.clickhouse.batch_rows`: must be at least 1",
            "field `sinks.b.clickhouse.url`: write the server's HTTP address",
            "field `sinks.b.clickhouse.key`: a created table is ordered by the output's key",
        ],
    );
    assert!(
        !errors(&yaml).contains("u:p"),
        "credentials in a URL are not repeated"
    );
}

#[test]
fn postgres_sink_settings() {
    let yaml = format!(
        "sources:\n  f:\n    file: {{paths: [in.jsonl]}}\n{ROWS}sinks:\n  a:\n    input: f\n    postgres: {{user: u, database: d, table: \"x.\", tls: maybe, batch_rows: 0}}\n"
    );
    expect(
        &yaml,
        &[
            "field `sinks.a.postgres.table`: write it as `schema.table` or `table`",
            "field `sinks.a.postgres.key`: upserts are by the output's key",
            "field `sinks.a.postgres.tls`: unknown tls mode `maybe`",
            "field `sinks.a.postgres.batch_rows`: must be at least 1",
        ],
    );
}

#[test]
fn a_change_stream_into_a_keyed_sink_takes_no_version_column() {
    expect(
        "sources:\n  c:\n    file: {format: debezium, snapshot: [in.jsonl]}\n    tables:\n      t: {key: [id], columns: {id: int, n: int}}\nsinks:\n  a:\n    input: c.t\n    clickhouse: {url: \"http://h:8123\", table: t, key: [id], version: n}\n",
        &[
            "field `sinks.a.clickhouse.version`: a change stream's rows are versioned by their commit position",
        ],
    );
}
