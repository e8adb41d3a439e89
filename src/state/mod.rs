//! Operator state that outlives a batch: materialized reference tables (`VersionedTable`)
//! and buffers that overflow to a local file (`SpillQueue`). State structures serialize
//! themselves for checkpoints; only the spill queue touches a file (its own, anonymous).

pub mod spill;
pub mod versioned;

pub use spill::SpillQueue;
pub use versioned::{Applied, VersionedTable};
