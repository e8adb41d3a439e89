//! Watershed: CDC-driven stateful stream enrichment in one binary.
//!
//! Sources (async or threaded I/O) feed synchronous, deterministic operators through bounded
//! channels carrying `Data`, `Watermark` and `Barrier` messages; results fan out to sinks by
//! named port. See `ARCHITECTURE.md` in the repository for the design.

pub mod alerts;
pub mod cdc;
pub mod checkpoint;
pub mod cli;
pub mod components;
pub mod config;
pub mod dataflow;
pub mod dead_letter;
#[cfg(test)]
mod decoders_fuzz;
pub mod error;
pub mod failpoint;
pub mod format;
pub mod http;
pub mod instance;
pub mod kafka;
pub mod metrics;
pub mod operators;
pub mod random;
pub mod reconcile;
pub mod runtime;
pub mod savepoint;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod status;
pub mod testing;
pub mod time;
pub mod types;
