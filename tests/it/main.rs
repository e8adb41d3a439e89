//! Integration tests: whole pipelines, driven step by step on a manual clock or run through
//! the `watershed` binary.

mod cdc_status;
mod cli;
mod clickhouse;
mod contract;
mod crash;
mod debezium;
mod determinism;
mod endpoint;
mod golden;
mod kafka;
mod multi_speed;
mod partitions;
mod postgres;
mod postgres_sink;
mod restore;
mod runtime;
mod splits;
mod validate;
