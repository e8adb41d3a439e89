//! A change stream whose configured tables receive nothing while changes of other tables
//! arrive: the condition shows in the source's `/status` entry, naming the tables.

use watershed::config::{self, Overrides};
use watershed::runtime::{self, RunContext};
use watershed::status::StatusRegistry;
use watershed::time::ManualClock;

/// Changes of `app.customers` reach a source configured for `public.customers` (a schema
/// that does not match): every row used to be skipped with no word anywhere.
#[test]
fn cdc_unconfigured_tables_seen_are_shown_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let changes = dir.path().join("changes.jsonl");
    let mut text = String::new();
    for id in 1..=3 {
        text.push_str(&format!(
            r#"{{"op":"c","before":null,"after":{{"id":{id},"name":"n{id}"}},"source":{{"schema":"app","table":"customers","lsn":{id},"ts_ms":1767225600000}}}}"#
        ));
        text.push('\n');
    }
    std::fs::write(&changes, text).unwrap();
    let yaml = format!(
        "name: cdc-status
alerts: {{watermark_stall: off}}
sources:
  ref:
    file:
      format: debezium
      paths: [\"{}\"]
    tables:
      customers:
        key: [id]
        columns: {{id: int, name: string}}
sinks:
  out: {{input: ref.customers, file: \"{}\"}}
",
        changes.display(),
        dir.path().join("out.jsonl").display()
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let compiled = config::load_and_compile(&path, &Overrides::default()).unwrap();
    let registry = StatusRegistry::new("cdc-status");
    let ctx = RunContext::new(ManualClock::new(1_767_225_600_000), registry.clone());
    runtime::run(compiled.plan, ctx).unwrap();
    let report = registry.snapshot(0);
    let source = report.instance("ref#0").expect("the source's status");
    assert_eq!(
        source.warnings,
        [
            "configured tables public.customers have received no change; \
          changes of tables not configured arrived: app.customers"
        ]
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"warnings\":["), "{json}");
}
