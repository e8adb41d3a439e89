//! Sinks: where results leave a pipeline. A sink writes batches, pre-commits what it wrote at
//! each barrier, commits it when the checkpoint is durable, and finishes cleanly at the end
//! of the stream. Sinks declare the delivery guarantee they give.

pub mod clickhouse;
pub mod file;
pub mod kafka;
pub mod keyed;
pub mod postgres;
pub mod stdout;
