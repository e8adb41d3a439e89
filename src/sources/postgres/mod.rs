//! The native PostgreSQL change-capture source: logical replication read by Watershed itself,
//! without Kafka Connect. This folder owns the conversation with Postgres; what it reads
//! becomes the same typed change rows as the Debezium decoding path (`crate::cdc`).
//!
//! Built so far: `wire` (one connection: startup, authentication, simple queries, the
//! streaming replication sub-protocol, LSNs) and `pgoutput` (the logical decoding messages,
//! protocol versions 1 and 2). The source itself (slot and publication, the resumable
//! snapshot, streaming into change rows, confirmed LSNs at durable checkpoints) is not
//! registered as a component yet.

pub mod changes;
pub mod config;
pub mod pgoutput;
pub mod source;
pub mod values;
pub mod wire;
