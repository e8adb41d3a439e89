//! The dataflow runtime: a DAG of source, operator and sink instances, each on its own
//! thread, connected by bounded channels that carry `Message`s. Data is batched; watermarks,
//! barriers and `End` follow the data in order on every channel. Keyed edges shuffle rows by
//! a fixed hash of the key columns across the consumer's instances.
//!
//! - `plan`: the physical plan a pipeline compiles to.
//! - `exec`: runs a plan (restore, start the tasks, supervise, join).
//! - `task`: each kind of task, its deterministic driver and its thread.
//! - `coordinator`: checkpoint bookkeeping (acks, completion in epoch order, savepoints).
//! - `gate`: a task's inputs (watermark merge, barrier alignment); `route`: its outputs.
//! - `restart`: runs again from the latest checkpoint after a transient failure; `retry`:
//!   backoff for connectors; `io`: the shared async runtime for network clients.
//!
//! This module never imports `sources` or `sinks` implementations: it runs whatever the plan
//! gives it through the `Source`, `Operator` and `Sink` traits.

mod coordinator;
pub mod exec;
pub mod gate;
pub mod io;
pub mod plan;
pub mod restart;
pub mod retry;
pub mod route;
pub mod task;

pub use exec::{RunContext, RunSummary, run};
pub use plan::{InputRef, NodeKind, Plan, PlanNode, RuntimeOptions, WatermarkSpec};
pub use restart::run_restarting;
