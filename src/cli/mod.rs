//! What the `watershed` commands do beyond running a pipeline: `bench` (throughput against a
//! plain-loop ceiling), `demo` (the demo's progress and summary) and `explain` (the status
//! document as text for people). The binary calls these; the engine (`runtime`, `dataflow`,
//! `operators`, `sources`, `sinks`, `state`, `checkpoint`, `cdc`, `config`, `time`) never
//! imports this module.

pub mod bench;
pub mod demo;
pub mod demo_files;
pub mod explain;
