//! Operators: synchronous, deterministic transformations between sources and sinks. An
//! operator sees batches and watermarks (already merged over its inputs by the runtime),
//! emits to named output ports, and can snapshot and restore its state. Operators never do
//! I/O and never read the system time.

pub mod enrich;
pub mod route;
pub mod version_range;
pub mod window;
