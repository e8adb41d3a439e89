//! The native Postgres source under the connector contract suite, on the test binary's
//! shared Postgres (`services::Postgres::shared`).
//!
//! A database of its own (nothing else writes there, so its WAL holds only the fixture's
//! history) with a template slot created before a scripted history: every `build` drops the
//! fixture's slot and copies it from the template (`pg_copy_logical_replication_slot`), so
//! each instance — fresh or restored — streams the same changes with the same LSNs, however
//! far an earlier instance confirmed. The source streams only (`snapshot: never`: a
//! snapshot's rows carry the WAL position of when they were read, which differs per read).
//! The malformed record is a change of a second table whose value does not convert to the
//! type the corrupt input configures for it; the clean input does not configure that table
//! (its changes are skipped), so both read the same records otherwise.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cdc::TableId;
use crate::cdc::stream::{CdcTable, TableConfig};
use crate::dataflow::Source;
use crate::sources::postgres::source::{PostgresSource, PostgresSpec};
use crate::sources::postgres::wire::{ConnectOptions, Connection, TlsMode};
use crate::testing::contract::{CorruptInput, SourceFixture};
use crate::testing::services::Postgres;
use crate::types::{DataType, Field, Schema};

const DATABASE: &str = "contract";
const TEMPLATE: &str = "contract_template";
const SLOT: &str = "contract_slot";
/// Changes of table `ca` in the history.
const CHANGES: usize = 28;

/// See the module documentation.
pub struct PostgresSourceFixture {
    pg: &'static Postgres,
}

fn options(pg: &Postgres) -> ConnectOptions {
    ConnectOptions {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: "cdc".into(),
        password: None,
        database: DATABASE.into(),
        application_name: "watershed contract".into(),
        connect_timeout: Duration::from_secs(10),
        tls: TlsMode::Prefer,
        ca_file: None,
    }
}

impl PostgresSourceFixture {
    pub fn new() -> PostgresSourceFixture {
        static READY: OnceLock<()> = OnceLock::new();
        let pg = Postgres::shared();
        READY.get_or_init(|| {
            pg.sql("postgres", &format!("CREATE DATABASE {DATABASE} OWNER cdc"));
            pg.sql(
                DATABASE,
                "CREATE TABLE ca (id int PRIMARY KEY, v text, n numeric(6,2));
                 CREATE TABLE cb (id int PRIMARY KEY, v text);
                 ALTER TABLE ca OWNER TO cdc; ALTER TABLE cb OWNER TO cdc;
                 CREATE PUBLICATION contract_pub FOR TABLE ca, cb;",
            );
            pg.sql(
                DATABASE,
                &format!("SELECT pg_create_logical_replication_slot('{TEMPLATE}', 'pgoutput')"),
            );
            // 28 change records of `ca` (a key change is two), one malformed change of `cb` among them.
            let mut script = String::new();
            for i in 0..10 {
                script.push_str(&format!("INSERT INTO ca VALUES ({i}, 'v{i}', {i}.5);\n"));
            }
            script.push_str("INSERT INTO cb VALUES (1, 'not a number');\n");
            script.push_str(
                "BEGIN; UPDATE ca SET v = 'w' || id WHERE id < 4; DELETE FROM ca WHERE id = 9; \
                 COMMIT;\n",
            );
            for i in 10..14 {
                script.push_str(&format!("INSERT INTO ca VALUES ({i}, NULL, -{i});\n"));
            }
            for i in 4..9 {
                script.push_str(&format!("UPDATE ca SET n = n * 2 WHERE id = {i};\n"));
            }
            script.push_str("UPDATE ca SET id = 100 WHERE id = 0;\n");
            script.push_str("DELETE FROM ca WHERE id BETWEEN 10 AND 11;\n");
            // Statements one by one: each its own transaction unless grouped.
            for statement in script.lines() {
                pg.sql(DATABASE, statement);
            }
        });
        PostgresSourceFixture { pg }
    }

    fn tables(corrupt: bool) -> Vec<CdcTable> {
        let mut tables = vec![CdcTable {
            port: "ca".into(),
            id: TableId::new("public", "ca"),
            config: TableConfig::new(Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int),
                Field::new("v", DataType::String),
                Field::new("n", DataType::Decimal),
            ])))
            .with_key(&["id"]),
        }];
        if corrupt {
            tables.push(CdcTable {
                port: "cb".into(),
                id: TableId::new("public", "cb"),
                config: TableConfig::new(Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Int),
                    Field::new("v", DataType::Int),
                ])))
                .with_key(&["id"]),
            });
        }
        tables
    }

    /// The fixture's slot, copied afresh from the template.
    fn reset_slot(&self) {
        let mut c = Connection::connect(&options(self.pg), false).expect("connecting");
        for _ in 0..200 {
            let _ = c.query(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{SLOT}' AND active"
            ));
            match c.query(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{SLOT}'"
            )) {
                Ok(_) => break,
                // Still held by a walsender that is exiting.
                Err(e) if e.code() == Some("55006") => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("dropping the contract slot: {e}"),
            }
        }
        c.query(&format!(
            "SELECT pg_copy_logical_replication_slot('{TEMPLATE}', '{SLOT}')"
        ))
        .expect("copying the template slot");
    }

    fn build_with(&self, corrupt: bool) -> Box<dyn Source> {
        self.reset_slot();
        let source = PostgresSource::new(PostgresSpec {
            publication: "contract_pub".into(),
            snapshot: false,
            chunk_rows: 1000,
            poll_interval: Duration::from_millis(20),
            heartbeat_interval: None,
            ..PostgresSpec::new("contract", options(self.pg), SLOT, Self::tables(corrupt))
        })
        .expect("a Postgres source");
        Box::new(source)
    }
}

impl Default for PostgresSourceFixture {
    fn default() -> Self {
        PostgresSourceFixture::new()
    }
}

impl SourceFixture for PostgresSourceFixture {
    fn name(&self) -> &str {
        "postgres"
    }

    fn build(&self) -> Box<dyn Source> {
        self.build_with(false)
    }

    fn corrupt(&self) -> Option<CorruptInput<'_>> {
        Some(CorruptInput {
            build: Box::new(|| self.build_with(true)),
            position: "lsn ".into(),
        })
    }

    /// Each change is a row on its table's port and one on `main`.
    fn limit(&self) -> Option<usize> {
        Some(2 * CHANGES)
    }
}

/// The Postgres sink writing the contract's rows into a new table (created by the sink,
/// keyed by `id`, versioned by event time) of database `sinks` on the shared server; what is
/// visible is the table's rows.
pub struct PostgresSinkFixture;

/// Options for database `sinks` of `pg`, as `cdc`.
pub fn sink_options(pg: &Postgres) -> ConnectOptions {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        pg.sql("postgres", "CREATE DATABASE sinks OWNER cdc");
    });
    ConnectOptions {
        database: "sinks".into(),
        ..options(pg)
    }
}

impl crate::testing::contract::SinkFixture for PostgresSinkFixture {
    fn name(&self) -> &str {
        "postgres"
    }

    fn guarantee(&self) -> crate::dataflow::Guarantee {
        crate::dataflow::Guarantee::Idempotent
    }

    fn target(&self) -> Box<dyn crate::testing::contract::SinkTarget> {
        let pg = Postgres::shared();
        Box::new(PostgresTarget {
            connect: sink_options(pg),
            table: crate::testing::kafka_fixtures::unique("contract").replace('-', "_"),
        })
    }
}

struct PostgresTarget {
    connect: ConnectOptions,
    table: String,
}

impl crate::testing::contract::SinkTarget for PostgresTarget {
    fn sink(&self, schema: crate::types::SchemaRef) -> Box<dyn crate::dataflow::Sink> {
        use crate::sinks::postgres::{PostgresSink, PostgresSinkSpec};
        let key = vec![schema.index_of("id").expect("an id column")];
        Box::new(PostgresSink::new(PostgresSinkSpec {
            node: "postgres".into(),
            connect: self.connect.clone(),
            schema_name: "public".into(),
            table: self.table.clone(),
            columns: (0..schema.len()).collect(),
            schema,
            key,
            version: crate::sinks::keyed::VersionSource::EventTime,
            create_table: true,
            batch_rows: 7,
            retry_for: Duration::from_secs(5),
        }))
    }

    fn visible(&self, schema: &crate::types::SchemaRef) -> Vec<Vec<crate::types::Value>> {
        use crate::types::Value;
        let mut conn = Connection::connect(&self.connect, false).expect("connect");
        let columns: Vec<String> = schema
            .fields
            .iter()
            .map(|f| {
                let c = crate::sources::postgres::wire::quote_ident(&f.name);
                match f.data_type {
                    DataType::Timestamp => {
                        format!("(extract(epoch from {c}) * 1000000)::bigint")
                    }
                    _ => c,
                }
            })
            .collect();
        let result = conn
            .query(&format!(
                "SELECT {} FROM public.{}",
                columns.join(", "),
                crate::sources::postgres::wire::quote_ident(&self.table)
            ))
            .expect("select");
        result[0]
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&schema.fields)
                    .map(|(v, f)| match (v, f.data_type) {
                        (None, _) => Value::Null,
                        (Some(t), DataType::Int) => t.parse().map_or(Value::Null, Value::Int),
                        (Some(t), DataType::Timestamp) => {
                            t.parse().map_or(Value::Null, Value::Timestamp)
                        }
                        (Some(t), DataType::Bool) => Value::Bool(t == "t"),
                        (Some(t), DataType::Float) => match t.as_str() {
                            "NaN" => Value::Float(f64::NAN),
                            "Infinity" => Value::Float(f64::INFINITY),
                            "-Infinity" => Value::Float(f64::NEG_INFINITY),
                            other => other.parse().map_or(Value::Null, Value::Float),
                        },
                        (Some(t), _) => Value::Str(t.as_str().into()),
                    })
                    .collect()
            })
            .collect()
    }
}
