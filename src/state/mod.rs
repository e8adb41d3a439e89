//! Operator state that outlives a batch: materialized reference tables (`VersionedTable`).
//! State structures serialize themselves for checkpoints; they do no I/O of their own.

pub mod versioned;

pub use versioned::{Applied, VersionedTable};
