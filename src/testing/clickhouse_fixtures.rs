//! A real ClickHouse server for tests, a current ClickHouse engine behind a stand-in HTTP
//! front, and the ClickHouse sink's contract fixture on both.
//!
//! `ClickHouseServer` is Debian's `clickhouse-server` (18.16, installed by
//! `scripts/test.sh`), started with a config of its own in a temp dir (data, logs and users
//! there), listening on free loopback ports, tied to the test process so it never outlives
//! it. It can be stopped and started again on the same port and data (a server that goes
//! away while the sink writes). Users: `default` (no password) and `writer` (password
//! `w-secret`). Tests share one server per test binary (`shared`) and use tables of their
//! own names.
//!
//! `CurrentClickHouse` is ClickHouse 26 (chDB, `pip install chdb-core`, installed by
//! `scripts/test.sh`) behind `tests/clickhouse/chdb_http.py`, a small HTTP front answering
//! as ClickHouse's HTTP interface does: the transport is a stand-in, the engine (SQL, formats,
//! `ReplacingMergeTree` with `is_deleted`, `DateTime64`) is real. Debian ships no current
//! server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::dataflow::{Guarantee, Sink};
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::{ClickHouseSink, ClickHouseSinkSpec, VersionSource};
use crate::testing::contract::{SinkFixture, SinkTarget};
use crate::testing::kafka_fixtures::unique;
use crate::testing::services::{free_port, spawn_service};
use crate::types::{DataType, SchemaRef, Value};

/// A running (or stopped) ClickHouse server.
pub struct ClickHouseServer {
    pub http_port: u16,
    dir: TempDir,
    child: Mutex<Option<Child>>,
}

/// The password of user `writer`.
pub const WRITER_PASSWORD: &str = "w-secret";

impl ClickHouseServer {
    pub fn start() -> ClickHouseServer {
        let dir = tempfile::tempdir().expect("a temp dir for ClickHouse");
        let http_port = free_port();
        let tcp_port = free_port();
        let d = dir.path();
        for sub in ["data", "tmp", "user_files", "log"] {
            std::fs::create_dir_all(d.join(sub)).expect("ClickHouse dirs");
        }
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n  <logger><level>warning</level><log>{}</log><errorlog>{}</errorlog><console>0</console></logger>\n  <listen_host>127.0.0.1</listen_host>\n  <http_port>{http_port}</http_port>\n  <tcp_port>{tcp_port}</tcp_port>\n  <path>{}/</path>\n  <tmp_path>{}/</tmp_path>\n  <user_files_path>{}/</user_files_path>\n  <users_config>{}</users_config>\n  <default_profile>default</default_profile>\n  <default_database>default</default_database>\n  <timezone>UTC</timezone>\n  <mark_cache_size>104857600</mark_cache_size>\n</yandex>\n",
                p("log/server.log"),
                p("log/error.log"),
                p("data"),
                p("tmp"),
                p("user_files"),
                p("users.xml"),
            ),
        )
        .expect("ClickHouse config");
        std::fs::write(
            d.join("users.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n  <profiles><default></default></profiles>\n  <users>\n    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>\n    <writer><password>{WRITER_PASSWORD}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></writer>\n  </users>\n  <quotas><default></default></quotas>\n</yandex>\n"
            ),
        )
        .expect("ClickHouse users");
        let server = ClickHouseServer {
            http_port,
            dir,
            child: Mutex::new(None),
        };
        server.resume();
        server
    }

    /// One server for every test of a test binary that can share it.
    pub fn shared() -> &'static ClickHouseServer {
        static SHARED: OnceLock<ClickHouseServer> = OnceLock::new();
        SHARED.get_or_init(ClickHouseServer::start)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok()?.as_ref().map(|c| c.id())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn binary() -> PathBuf {
        ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("clickhouse-server is not installed: run scripts/test.sh")
    }

    /// Starts the server (again) on its port and data, and waits until it answers.
    pub fn resume(&self) {
        let mut command = Command::new(Self::binary());
        command
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_service(command).expect("clickhouse-server starts");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = self.client();
        while client.query("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "ClickHouse did not answer within 60 s; its log: {}",
                std::fs::read_to_string(self.dir.path().join("log/error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGKILL) and waits until it is gone.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client as user `default`.
    pub fn client(&self) -> ClickHouse {
        ClickHouse::new(&self.url(), None, None, Duration::from_secs(30))
    }

    /// Runs `sql`; a failure panics with the server's message.
    pub fn sql(&self, sql: &str) -> String {
        self.client()
            .query(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ClickHouse 26 (chDB) behind the stand-in HTTP front of `tests/clickhouse/chdb_http.py`,
/// its data in a temp dir, tied to the test process.
pub struct CurrentClickHouse {
    pub port: u16,
    _dir: TempDir,
    child: Mutex<Child>,
}

impl CurrentClickHouse {
    pub fn start() -> CurrentClickHouse {
        let dir = tempfile::tempdir().expect("a temp dir for chDB");
        let port = free_port();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clickhouse/chdb_http.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_service(command).expect("python3 starts");
        let server = CurrentClickHouse {
            port,
            _dir: dir,
            child: Mutex::new(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.client().query("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "the chDB front did not answer within 60 s (is chdb-core installed? run scripts/test.sh)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// One for every test of a test binary that can share it.
    pub fn shared() -> &'static CurrentClickHouse {
        static SHARED: OnceLock<CurrentClickHouse> = OnceLock::new();
        SHARED.get_or_init(CurrentClickHouse::start)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> ClickHouse {
        ClickHouse::new(&self.url(), None, None, Duration::from_secs(30))
    }

    /// Runs `sql`; a failure panics with the engine's message.
    pub fn sql(&self, sql: &str) -> String {
        self.client()
            .query(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
    }
}

impl Drop for CurrentClickHouse {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The ClickHouse sink writing the contract's rows into a new table, keyed by `id`,
/// versioned by the row's event time; the table is created by the sink. What is visible is
/// `SELECT … FINAL`. On Debian's 18.16 server (`debian`) or on the current engine
/// (`current`).
pub enum ClickHouseSinkFixture {
    Debian,
    Current,
}

impl SinkFixture for ClickHouseSinkFixture {
    fn name(&self) -> &str {
        match self {
            ClickHouseSinkFixture::Debian => "clickhouse 18.16",
            ClickHouseSinkFixture::Current => "clickhouse 26 (chDB)",
        }
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::Idempotent
    }

    fn target(&self) -> Box<dyn SinkTarget> {
        let (url, password) = match self {
            ClickHouseSinkFixture::Debian => {
                (ClickHouseServer::shared().url(), Some(WRITER_PASSWORD))
            }
            ClickHouseSinkFixture::Current => (CurrentClickHouse::shared().url(), None),
        };
        Box::new(ClickHouseTarget {
            client: ClickHouse::new(
                &url,
                password.map(|_| "writer"),
                password,
                Duration::from_secs(30),
            ),
            table: unique("contract").replace('-', "_"),
        })
    }
}

struct ClickHouseTarget {
    client: ClickHouse,
    table: String,
}

impl SinkTarget for ClickHouseTarget {
    fn sink(&self, schema: SchemaRef) -> Box<dyn Sink> {
        let key = vec![schema.index_of("id").expect("an id column")];
        Box::new(ClickHouseSink::new(ClickHouseSinkSpec {
            node: "clickhouse".into(),
            client: self.client.clone(),
            database: "default".into(),
            table: self.table.clone(),
            columns: (0..schema.len()).collect(),
            schema,
            key,
            version: VersionSource::EventTime,
            create_table: true,
            batch_rows: 7,
            batch_bytes: 1 << 20,
            batch_interval: Duration::from_secs(1),
            retry_for: Duration::from_secs(5),
        }))
    }

    fn visible(&self, schema: &SchemaRef) -> Vec<Vec<Value>> {
        let names: Vec<String> = schema
            .fields
            .iter()
            .map(|f| crate::sinks::clickhouse::client::quote_ident(&f.name))
            .collect();
        let sql = format!(
            "SELECT {} FROM default.{} FINAL FORMAT JSONEachRow",
            names.join(", "),
            crate::sinks::clickhouse::client::quote_ident(&self.table)
        );
        let text = self
            .client
            .query(&sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"));
        text.lines()
            .map(|line| {
                let obj: serde_json::Value = serde_json::from_str(line).expect("JSONEachRow");
                schema
                    .fields
                    .iter()
                    .map(|f| read_value(&obj[f.name.as_str()], f.data_type))
                    .collect()
            })
            .collect()
    }
}

/// A value as ClickHouse shows it in JSONEachRow (64-bit integers quoted or not; timestamps
/// of a created table are Int64 microseconds on 18.16 and DateTime64 text on current
/// servers; bools UInt8).
fn read_value(v: &serde_json::Value, ty: DataType) -> Value {
    let int = || match v {
        serde_json::Value::String(s) => s.parse::<i64>().ok(),
        other => other.as_i64(),
    };
    match (v, ty) {
        (serde_json::Value::Null, _) => Value::Null,
        (_, DataType::Int) => int().map_or(Value::Null, Value::Int),
        (serde_json::Value::String(s), DataType::Timestamp) if s.contains(' ') => {
            crate::format::parse_timestamp(s).map_or(Value::Null, Value::Timestamp)
        }
        (_, DataType::Timestamp) => int().map_or(Value::Null, Value::Timestamp),
        (_, DataType::Bool) => int().map_or(Value::Null, |n| Value::Bool(n != 0)),
        (serde_json::Value::String(s), DataType::Float) => match s.as_str() {
            "nan" => Value::Float(f64::NAN),
            "inf" => Value::Float(f64::INFINITY),
            "-inf" => Value::Float(f64::NEG_INFINITY),
            other => other.parse().map_or(Value::Null, Value::Float),
        },
        (_, DataType::Float) => v.as_f64().map_or(Value::Null, Value::Float),
        (serde_json::Value::String(s), _) => Value::Str(s.as_str().into()),
        (other, _) => Value::Str(other.to_string().into()),
    }
}
