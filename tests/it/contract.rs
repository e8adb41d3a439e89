//! The connector contract suite (`watershed::testing::contract`) on every connector: one line
//! each. A new connector adds its fixture to `watershed::testing::fixtures` and a line here.

use watershed::testing::clickhouse_fixtures::ClickHouseSinkFixture;
use watershed::testing::contract::{check_sink, check_source};
use watershed::testing::fixtures::{
    CdcFileFixture, FileJsonFixture, FileSinkFixture, GeneratorFixture, StdoutSinkFixture,
};
use watershed::testing::kafka_fixtures::{KafkaSinkFixture, KafkaSourceFixture};
use watershed::testing::postgres_fixtures::{PostgresSinkFixture, PostgresSourceFixture};

#[test]
fn file_source() {
    check_source(&FileJsonFixture::new())
}

#[test]
fn generator_source() {
    check_source(&GeneratorFixture::new())
}

#[test]
fn generator_source_unbounded() {
    check_source(&GeneratorFixture::unbounded())
}

#[test]
fn cdc_file_source() {
    check_source(&CdcFileFixture::new())
}

#[test]
fn file_sink_transactional() {
    check_sink(&FileSinkFixture::transactional())
}

#[test]
fn file_sink_straight_through() {
    check_sink(&FileSinkFixture::direct())
}

#[test]
fn stdout_sink() {
    check_sink(&StdoutSinkFixture)
}

#[test]
fn kafka_source() {
    check_source(&KafkaSourceFixture::new())
}

#[test]
fn kafka_sink_at_least_once() {
    check_sink(&KafkaSinkFixture::at_least_once())
}

#[test]
fn kafka_sink_exactly_once() {
    check_sink(&KafkaSinkFixture::exactly_once())
}

#[test]
fn postgres_source() {
    check_source(&PostgresSourceFixture::new())
}

#[test]
fn clickhouse_sink() {
    check_sink(&ClickHouseSinkFixture::Debian)
}

/// On the current engine (chDB behind a stand-in HTTP front: the transport is not a real
/// server's, the engine is).
#[test]
fn clickhouse_sink_current() {
    check_sink(&ClickHouseSinkFixture::Current)
}

#[test]
fn postgres_sink() {
    check_sink(&PostgresSinkFixture)
}
