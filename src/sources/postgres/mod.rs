//! The native PostgreSQL change-capture source: logical replication read by Watershed itself,
//! without Kafka Connect. This folder owns the conversation with Postgres; what it reads
//! becomes the same typed change rows as the Debezium decoding path (`crate::cdc`).
//!
//! - `wire`: one connection (startup, TLS, authentication, simple queries, the streaming
//!   replication sub-protocol, LSNs);
//! - `pgoutput`: the logical decoding messages, protocol versions 1 and 2;
//! - `values` and `arrays`: Postgres's text form of a value as the typed value Debezium gives;
//! - `changes`: pgoutput messages as change rows with versions; `checks`: what the source
//!   needs of the server, checked and explained (also read-only, for `validate --connect`);
//! - `source`: slot and publication, the resumable snapshot, streaming, confirmed LSNs at
//!   durable checkpoints; `config`: the `postgres:` settings and the registry entry.

pub mod arrays;
pub mod changes;
pub mod checks;
pub mod config;
pub mod pgoutput;
pub mod snapshot;
pub mod source;
pub mod values;
pub mod wire;
