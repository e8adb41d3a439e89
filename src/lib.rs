//! Watershed: CDC-driven stateful stream enrichment in one binary.
//!
//! Sources (async or threaded I/O) feed synchronous, deterministic operators through bounded
//! channels carrying `Data`, `Watermark` and `Barrier` messages; results fan out to sinks by
//! named port. See `ARCHITECTURE.md` in the repository for the design.

pub mod error;
pub mod operators;
pub mod testing;
pub mod time;
pub mod types;
