//! One PostgreSQL connection as change capture needs it: TLS as libpq's `sslmode` offers it
//! (OpenSSL), the startup (optionally in logical replication mode), authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256), simple queries with text results, and the streaming
//! replication sub-protocol. Frontend messages and the
//! SCRAM/MD5 computations come from `postgres-protocol`; backend frames are read here (its
//! parser knows no `CopyBothResponse`). Blocking I/O on a `TcpStream` with timeouts: the
//! source's thread owns the connection.
//!
//! ```text
//!  client                                              server
//!  SSLRequest ──►         ◄── 'S' (TLS handshake follows) | 'N' (plain, or refused by `tls`)
//!  StartupMessage(user, database[, replication=database]) ──►
//!                         ◄── Authentication (SASL | MD5 | cleartext | Ok)
//!                         ◄── ParameterStatus*, BackendKeyData, ReadyForQuery
//!  Query(sql) ──►         ◄── (RowDescription, DataRow*)?, CommandComplete … ReadyForQuery
//!                             (ErrorResponse instead: the query failed, ReadyForQuery follows)
//!  Query(START_REPLICATION SLOT … LOGICAL lsn (options)) ──►
//!                         ◄── CopyBothResponse
//!                         ◄── CopyData('w': XLogData start, end, time, message)
//!                         ◄── CopyData('k': keepalive wal_end, time, reply_requested)
//!  CopyData('r': written, flushed, applied, time, reply) ──►
//! ```
//!
//! Invariants:
//! - Every byte from the server is untrusted: a frame is read whole (length checked against
//!   `MAX_FRAME`) before it is parsed, and a short or malformed body is a `PgError::Protocol`,
//!   never a panic.
//! - A query either returns every result of the statement or an error naming the server's
//!   SQLSTATE and message; the connection is usable after a query error (ReadyForQuery is
//!   awaited), not after an I/O or protocol error.
//! - Once `start_replication` has succeeded, only `recv_replication` and `send_status` are
//!   allowed; the flushed LSN reported is whatever the caller passes (the source passes the
//!   LSN of its last durable checkpoint, so the server keeps the WAL after it).
//! - The password never appears in an error or a `Debug` output.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

/// A log sequence number: a byte position in the WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = PgError;

    /// Parses Postgres's `XXXXXXXX/XXXXXXXX` form.
    fn from_str(s: &str) -> Result<Lsn, PgError> {
        let bad = || PgError::Protocol(format!("{s:?} is not an LSN (expected e.g. 16/B374D848)"));
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The read buffer: one read takes up to this much of what the kernel holds.
const READ_BUFFER: usize = 1 << 20;
/// The least room a read is given at the end of the buffer.
const READ_AT_LEAST: usize = 64 * 1024;

/// The largest frame accepted from the server (a row or a WAL message).
const MAX_FRAME: usize = 1 << 30;

/// What went wrong talking to Postgres.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Io(String),
    /// The server refused: its SQLSTATE, message, and detail/hint if any.
    #[error("{message} (SQLSTATE {code}){}{}", .detail.as_deref().map(|d| format!("; {d}")).unwrap_or_default(), .hint.as_deref().map(|h| format!("; hint: {h}")).unwrap_or_default())]
    Server {
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// The server sent something this client cannot make sense of.
    #[error("unexpected data from the server: {0}")]
    Protocol(String),
    #[error("{0}")]
    Auth(String),
}

impl PgError {
    /// The server's SQLSTATE, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (the connection broke, the server is starting
    /// or shutting down, a slot is busy), rather than a mistake that needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Io(_) => true,
            // 57P01-03: admin shutdown, crash shutdown, cannot connect now; 55006: object
            // in use (a slot another process still holds); 53300: too many connections;
            // 08xxx: connection exceptions; 40001/40P01: serialization failure, deadlock.
            PgError::Server { code, .. } => {
                code.starts_with("08")
                    || matches!(
                        code.as_str(),
                        "57P01" | "57P02" | "57P03" | "55006" | "53300" | "40001" | "40P01"
                    )
            }
            PgError::Protocol(_) | PgError::Auth(_) => false,
        }
    }
}

fn io(context: &str, e: std::io::Error) -> PgError {
    PgError::Io(format!("{context}: {e}"))
}

/// Whether and how the connection is encrypted (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate signed by the trusted authority (`ca_file`, else the
    /// system's).
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl TlsMode {
    pub fn parse(text: &str) -> Option<TlsMode> {
        Some(match text {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }
}

/// The socket, plain or under TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<openssl::ssl::SslStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(t) => t.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(t) => t.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(t) => t.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Asks the server for TLS and sets it up as `opts.tls` says.
fn negotiate(mut tcp: TcpStream, opts: &ConnectOptions) -> Result<Stream, PgError> {
    if opts.tls == TlsMode::Disable {
        return Ok(Stream::Plain(tcp));
    }
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request)
        .map_err(|e| io("asking the server for TLS", e))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .map_err(|e| io("asking the server for TLS", e))?;
    match answer[0] {
        b'N' if opts.tls == TlsMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(PgError::Auth(format!(
            "the server at {}:{} does not accept TLS connections (ssl = off), and `tls` asks              for TLS",
            opts.host, opts.port
        ))),
        b'S' => {
            use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
            let tls = |e: openssl::error::ErrorStack| PgError::Auth(format!("TLS: {e}"));
            let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls)?;
            let verify = matches!(opts.tls, TlsMode::VerifyCa | TlsMode::VerifyFull);
            if verify {
                if let Some(ca) = &opts.ca_file {
                    builder.set_ca_file(ca).map_err(|e| {
                        PgError::Auth(format!("TLS: cannot read ca_file {}: {e}", ca.display()))
                    })?;
                }
                builder.set_verify(SslVerifyMode::PEER);
            } else {
                builder.set_verify(SslVerifyMode::NONE);
            }
            let mut config = builder.build().configure().map_err(tls)?;
            config.set_verify_hostname(opts.tls == TlsMode::VerifyFull);
            let stream = config.connect(&opts.host, tcp).map_err(|e| {
                PgError::Auth(format!(
                    "TLS with {}:{} failed (tls: {:?}): {e}",
                    opts.host, opts.port, opts.tls
                ))
            })?;
            Ok(Stream::Tls(Box::new(stream)))
        }
        other => Err(PgError::Protocol(format!(
            "answer {:?} to the TLS request",
            other as char
        ))),
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    pub tls: TlsMode,
    /// The authority that signs the server's certificate (`verify-ca`, `verify-full`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The rows of one statement, every value as text (`None`: SQL NULL).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag (`SELECT 3`, `CREATE_REPLICATION_SLOT`, …).
    pub tag: String,
}

impl QueryResult {
    /// The value of column `name` in row `row`.
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let c = self.columns.iter().position(|n| n == name)?;
        self.rows.get(row)?.get(c)?.as_deref()
    }
}

/// A message of the replication stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicationMessage {
    /// WAL data: a pgoutput message starting at `start`; the server's WAL ends at `end`.
    XLogData {
        start: Lsn,
        end: Lsn,
        /// The server's clock when it sent this, microseconds since the Unix epoch.
        sent_us: i64,
        data: Vec<u8>,
    },
    /// The server's WAL ends at `end`; `reply`: it wants a status update now.
    Keepalive { end: Lsn, sent_us: i64, reply: bool },
}

/// One backend frame: its tag and body.
struct Frame {
    tag: u8,
    body: Vec<u8>,
}

/// A reader over a frame's body that fails, never panics, when it runs short.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, what }
    }

    fn short(&self) -> PgError {
        PgError::Protocol(format!("a {} message is cut short", self.what))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, PgError> {
        Ok(self.i32()? as u32)
    }

    pub(crate) fn i64(&mut self) -> Result<i64, PgError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, PgError> {
        Ok(self.i64()? as u64)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, PgError> {
        let end = memchr::memchr(0, self.buf).ok_or_else(|| self.short())?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| {
            PgError::Protocol(format!(
                "a {} message has a string that is not UTF-8",
                self.what
            ))
        })?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
fn server_error(body: &[u8]) -> PgError {
    let mut c = Cursor::new(body, "error");
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), None, None);
    while let Ok(field) = c.u8() {
        if field == 0 {
            break;
        }
        let Ok(value) = c.cstr() else { break };
        match field {
            b'C' => code = value.to_string(),
            b'M' => message = value.to_string(),
            b'D' => detail = Some(value.to_string()),
            b'H' => hint = Some(value.to_string()),
            _ => {}
        }
    }
    PgError::Server {
        code,
        message,
        detail,
        hint,
    }
}

/// An open connection.
pub struct Connection {
    stream: Stream,
    /// Bytes read from the server: `rbuf[rpos..rend]` is not parsed yet.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// The socket's read timeout now.
    timeout: Duration,
    wbuf: BytesMut,
    replicating: bool,
    /// The server's parameters (`server_version`, …) from the startup.
    pub parameters: Vec<(String, String)>,
}

impl Connection {
    /// Connects, authenticates and waits until the server is ready for queries; with
    /// `replication`, the connection is a walsender for logical replication on the database.
    pub fn connect(opts: &ConnectOptions, replication: bool) -> Result<Connection, PgError> {
        // Every address the host resolves to, in order (`localhost` may be ::1 first).
        let addrs: Vec<_> = (opts.host.as_str(), opts.port)
            .to_socket_addrs()
            .map_err(|e| io(&format!("cannot resolve {}:{}", opts.host, opts.port), e))?
            .collect();
        let mut last = None;
        let mut connected = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, opts.connect_timeout) {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (connected, last) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                return Err(io(
                    &format!("cannot connect to {}:{}", opts.host, opts.port),
                    e,
                ));
            }
            (None, None) => {
                return Err(PgError::Io(format!("{} resolves to no address", opts.host)));
            }
        };
        stream.set_nodelay(true).ok();
        stream
            .set_read_timeout(Some(opts.connect_timeout))
            .map_err(|e| io("socket", e))?;
        let stream = negotiate(stream, opts)?;
        let mut conn = Connection {
            stream,
            rbuf: vec![0; READ_BUFFER],
            rpos: 0,
            rend: 0,
            timeout: opts.connect_timeout,
            wbuf: BytesMut::with_capacity(4096),
            replicating: false,
            parameters: Vec::new(),
        };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &opts.user),
            ("database", &opts.database),
            ("application_name", &opts.application_name),
            ("client_encoding", "UTF8"),
            // Text values in the forms the value decoders read.
            ("DateStyle", "ISO, YMD"),
            ("IntervalStyle", "iso_8601"),
            ("extra_float_digits", "3"),
            ("TimeZone", "UTC"),
            // `quote_literal` doubles quotes only: backslashes must be plain characters.
            ("standard_conforming_strings", "on"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
            .map_err(|e| PgError::Protocol(format!("startup message: {e}")))?;
        conn.flush()?;
        conn.authenticate(opts)?;
        loop {
            let f = conn.frame()?;
            match f.tag {
                b'S' => {
                    let mut c = Cursor::new(&f.body, "parameter status");
                    let (k, v) = (c.cstr()?.to_string(), c.cstr()?.to_string());
                    conn.parameters.push((k, v));
                }
                b'K' | b'N' => {}
                b'Z' => break,
                b'E' => return Err(server_error(&f.body)),
                t => {
                    return Err(PgError::Protocol(format!(
                        "message {:?} during the startup",
                        t as char
                    )));
                }
            }
        }
        Ok(conn)
    }

    /// The server's `server_version_num`-like major version (e.g. 15), if it said.
    pub fn server_major_version(&self) -> Option<u32> {
        let v = self
            .parameters
            .iter()
            .find(|(k, _)| k == "server_version")?
            .1
            .as_str();
        v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    fn authenticate(&mut self, opts: &ConnectOptions) -> Result<(), PgError> {
        let password = || {
            opts.password.as_deref().ok_or_else(|| {
                PgError::Auth(format!(
                    "the server asks user {:?} for a password and none is set (give it \
                     through an environment variable: password: ${{PGPASSWORD}})",
                    opts.user
                ))
            })
        };
        let wrong = |e: PgError| match e {
            PgError::Server { code, message, .. } if code == "28P01" || code == "28000" => {
                PgError::Auth(format!(
                    "authentication of user {:?} failed: {message}",
                    opts.user
                ))
            }
            e => e,
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.frame().map_err(wrong)?;
            if f.tag != b'R' {
                return Err(match f.tag {
                    b'E' => wrong(server_error(&f.body)),
                    t => {
                        PgError::Protocol(format!("message {:?} during authentication", t as char))
                    }
                });
            }
            let mut c = Cursor::new(&f.body, "authentication");
            match c.i32()? {
                0 => return Ok(()),
                3 => {
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                }
                5 => {
                    let salt = c.bytes(4)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        opts.user.as_bytes(),
                        password()?.as_bytes(),
                        [salt[0], salt[1], salt[2], salt[3]],
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                }
                10 => {
                    let mut offers_scram = false;
                    while let Ok(m) = c.cstr() {
                        if m.is_empty() {
                            break;
                        }
                        offers_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !offers_scram {
                        return Err(PgError::Auth(
                            "the server offers no SASL mechanism this client knows \
                             (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.wbuf,
                    )
                    .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL continue before SASL".into()))?;
                    s.update(c.rest())
                        .map_err(|e| PgError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL final before SASL".into()))?;
                    s.finish(c.rest()).map_err(|e| {
                        PgError::Auth(format!("the server's SCRAM signature is wrong: {e}"))
                    })?;
                }
                n => {
                    return Err(PgError::Auth(format!(
                        "the server asks for an authentication method this client does not \
                         support (code {n}: GSS, SSPI or Kerberos); use scram-sha-256 or md5 \
                         for this user in pg_hba.conf"
                    )));
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), PgError> {
        self.stream
            .write_all(&self.wbuf)
            .map_err(|e| io("writing to the server", e))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads until `rbuf` holds `n` unread bytes; `Ok(false)` on a read timeout (what was
    /// read stays buffered).
    fn fill(&mut self, n: usize) -> Result<bool, PgError> {
        while self.rend - self.rpos < n {
            if self.rpos == self.rend {
                self.rpos = 0;
                self.rend = 0;
            }
            if self.rpos + n > self.rbuf.len() || self.rbuf.len() - self.rend < READ_AT_LEAST {
                // Move the unread bytes to the front (so that one read can take all the
                // kernel holds), and grow if a frame needs it.
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
                if n > self.rbuf.len() {
                    self.rbuf.resize(n.next_power_of_two(), 0);
                }
            }
            match self.stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(PgError::Io("the server closed the connection".into())),
                Ok(k) => self.rend += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("reading from the server", e)),
            }
        }
        Ok(true)
    }

    /// Whether a whole frame is already read from the socket.
    fn frame_buffered(&self) -> bool {
        let unread = &self.rbuf[self.rpos..self.rend];
        unread.len() >= 5
            && unread.len()
                > u32::from_be_bytes([unread[1], unread[2], unread[3], unread[4]]) as usize
    }

    /// The next frame, or `None` if none arrived before the read timeout.
    fn try_frame(&mut self) -> Result<Option<Frame>, PgError> {
        if !self.fill(5)? {
            return Ok(None);
        }
        let head = &self.rbuf[self.rpos..self.rpos + 5];
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=MAX_FRAME).contains(&len) {
            return Err(PgError::Protocol(format!(
                "a frame of {len} bytes (message {:?})",
                tag as char
            )));
        }
        if !self.fill(1 + len)? {
            return Ok(None);
        }
        let body = self.rbuf[self.rpos + 5..self.rpos + 1 + len].to_vec();
        self.rpos += 1 + len;
        Ok(Some(Frame { tag, body }))
    }

    /// The next frame, waiting through read timeouts (used outside replication streaming,
    /// where the server answers promptly or the connection is dead).
    fn frame(&mut self) -> Result<Frame, PgError> {
        let mut waited = 0;
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            waited += 1;
            if waited > 3600 {
                return Err(PgError::Io("the server did not answer".into()));
            }
        }
    }

    /// Runs `sql` with the simple query protocol; every statement's rows as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<QueryResult>, PgError> {
        let mut results = Vec::new();
        let mut current = QueryResult::default();
        self.query_each(sql, |event| {
            match event {
                QueryEvent::Columns(c) => current.columns = c.into_iter().map(|c| c.name).collect(),
                QueryEvent::Row(r) => current.rows.push(
                    r.iter()
                        .map(|v| v.map(|s| s.to_string()))
                        .collect::<Vec<_>>(),
                ),
                QueryEvent::Done(tag) => {
                    let mut done = std::mem::take(&mut current);
                    done.tag = tag.to_string();
                    results.push(done);
                }
            }
            Ok(())
        })?;
        Ok(results)
    }

    /// Runs `sql` and hands each event to `f` as it arrives (rows are not collected: a
    /// snapshot chunk streams through). An error from `f` stops the handing over; the
    /// connection is drained to ReadyForQuery and the error returned.
    pub fn query_each(
        &mut self,
        sql: &str,
        mut f: impl FnMut(QueryEvent<'_>) -> Result<(), PgError>,
    ) -> Result<(), PgError> {
        if self.replicating {
            return Err(PgError::Protocol(
                "a query on a connection that is streaming replication".into(),
            ));
        }
        frontend::query(sql, &mut self.wbuf).map_err(|e| PgError::Protocol(e.to_string()))?;
        self.flush()?;
        let mut failed: Option<PgError> = None;
        loop {
            let frame = self.frame()?;
            match frame.tag {
                b'T' => {
                    let mut c = Cursor::new(&frame.body, "row description");
                    let n = c.i16()?;
                    let mut columns = Vec::with_capacity(n.max(0) as usize);
                    for _ in 0..n {
                        let name = c.cstr()?.to_string();
                        c.bytes(6)?; // table OID, column number
                        let type_oid = c.u32()?;
                        c.bytes(8)?; // type size, modifier, format
                        columns.push(ColumnInfo { name, type_oid });
                    }
                    if failed.is_none() {
                        failed = f(QueryEvent::Columns(columns)).err();
                    }
                }
                b'D' => {
                    if failed.is_some() {
                        continue;
                    }
                    let mut c = Cursor::new(&frame.body, "data row");
                    let n = c.i16()?;
                    let mut values: Vec<Option<&str>> = Vec::with_capacity(n.max(0) as usize);
                    let mut bad = None;
                    for _ in 0..n {
                        let len = c.i32()?;
                        if len < 0 {
                            values.push(None);
                        } else {
                            let raw = c.bytes(len as usize)?;
                            match std::str::from_utf8(raw) {
                                Ok(s) => values.push(Some(s)),
                                Err(_) => {
                                    bad = Some(PgError::Protocol(
                                        "a value that is not UTF-8 text".into(),
                                    ));
                                    break;
                                }
                            }
                        }
                    }
                    failed = match bad {
                        Some(e) => Some(e),
                        None => f(QueryEvent::Row(&values)).err(),
                    };
                }
                b'C' => {
                    let tag = Cursor::new(&frame.body, "command complete").cstr()?;
                    if failed.is_none() {
                        failed = f(QueryEvent::Done(tag)).err();
                    }
                }
                b'E' => {
                    failed.get_or_insert(server_error(&frame.body));
                }
                b'I' | b'N' | b'S' => {}
                b'Z' => break,
                b'W' | b'H' | b'G' => {
                    return Err(PgError::Protocol(
                        "the server started a COPY in a plain query".into(),
                    ));
                }
                t => {
                    return Err(PgError::Protocol(format!(
                        "message {:?} in a query's answer",
                        t as char
                    )));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends `START_REPLICATION …` and waits for the server to start streaming.
    pub fn start_replication(&mut self, command: &str) -> Result<(), PgError> {
        frontend::query(command, &mut self.wbuf).map_err(|e| PgError::Protocol(e.to_string()))?;
        self.flush()?;
        loop {
            let f = self.frame()?;
            match f.tag {
                b'W' => {
                    self.replicating = true;
                    return Ok(());
                }
                b'N' | b'S' => {}
                b'E' => {
                    let e = server_error(&f.body);
                    // The server follows an error with ReadyForQuery.
                    let _ = self.frame();
                    return Err(e);
                }
                t => {
                    return Err(PgError::Protocol(format!(
                        "message {:?} instead of the start of replication",
                        t as char
                    )));
                }
            }
        }
    }

    /// The next replication message, waiting at most `timeout`; `None` if none came. A zero
    /// `timeout` takes only a message already read from the socket (no system call): a
    /// reader that drains what arrived returns as soon as it has, however fast more comes.
    pub fn recv_replication(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ReplicationMessage>, PgError> {
        if timeout.is_zero() && !self.frame_buffered() {
            return Ok(None);
        }
        let timeout = timeout.max(Duration::from_millis(1));
        if timeout != self.timeout {
            self.stream
                .tcp()
                .set_read_timeout(Some(timeout))
                .map_err(|e| io("socket", e))?;
            self.timeout = timeout;
        }
        let Some(f) = self.try_frame()? else {
            return Ok(None);
        };
        match f.tag {
            b'd' => {
                let mut c = Cursor::new(&f.body, "replication");
                match c.u8()? {
                    b'w' => {
                        let (start, end) = (Lsn(c.u64()?), Lsn(c.u64()?));
                        let sent_us = c.i64()?.saturating_add(PG_EPOCH_OFFSET_US);
                        // The message is the frame's tail: the frame's buffer, its header cut
                        // off in place (no second allocation).
                        let header = f.body.len() - c.remaining();
                        let mut data = f.body;
                        data.drain(..header);
                        Ok(Some(ReplicationMessage::XLogData {
                            start,
                            end,
                            sent_us,
                            data,
                        }))
                    }
                    b'k' => Ok(Some(ReplicationMessage::Keepalive {
                        end: Lsn(c.u64()?),
                        sent_us: c.i64()?.saturating_add(PG_EPOCH_OFFSET_US),
                        reply: c.u8()? != 0,
                    })),
                    t => Err(PgError::Protocol(format!(
                        "replication message {:?}",
                        t as char
                    ))),
                }
            }
            b'E' => Err(server_error(&f.body)),
            b'c' => Err(PgError::Io(
                "the server ended the replication stream".into(),
            )),
            b'N' => Ok(None),
            t => Err(PgError::Protocol(format!(
                "message {:?} in the replication stream",
                t as char
            ))),
        }
    }

    /// Sends a standby status update: WAL up to `flushed` may be released by the server.
    pub fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        now_us: i64,
        reply: bool,
    ) -> Result<(), PgError> {
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&written.0.to_be_bytes());
        body.extend_from_slice(&flushed.0.to_be_bytes());
        body.extend_from_slice(&flushed.0.to_be_bytes());
        body.extend_from_slice(&(now_us - PG_EPOCH_OFFSET_US).to_be_bytes());
        body.push(u8::from(reply));
        frontend::CopyData::new(&body[..])
            .map_err(|e| PgError::Protocol(e.to_string()))?
            .write(&mut self.wbuf);
        self.flush()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.stream.write_all(&self.wbuf);
    }
}

/// What a query hands over, in order: the columns, each row, the end of each statement.
pub enum QueryEvent<'a> {
    Columns(Vec<ColumnInfo>),
    Row(&'a [Option<&'a str>]),
    Done(&'a str),
}

/// A result column: its name and Postgres type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
}

/// Quotes an identifier for SQL (`"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (`'it''s'`).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "16", "16/", "/1", "G/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn server_errors_keep_code_message_detail_and_hint() {
        let body = b"SERROR\0C42704\0Mreplication slot \"s\" does not exist\0Hcreate it\0\0";
        let e = server_error(body);
        assert_eq!(e.code(), Some("42704"));
        assert_eq!(
            e.to_string(),
            "replication slot \"s\" does not exist (SQLSTATE 42704); hint: create it"
        );
        // A cut-short body gives what it has, never a panic.
        for n in 0..body.len() {
            let _ = server_error(&body[..n]);
        }
    }

    #[test]
    fn a_cursor_fails_when_short() {
        let mut c = Cursor::new(&[0, 0, 0, 1, b'a'], "test");
        assert_eq!(c.i32().unwrap(), 1);
        assert!(c.cstr().is_err(), "no NUL");
        assert!(c.i64().is_err());
        assert_eq!(c.u8().unwrap(), b'a');
        assert!(c.u8().is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn options_do_not_show_the_password() {
        let o = ConnectOptions {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            password: Some("hunter2".into()),
            database: "d".into(),
            application_name: "a".into(),
            connect_timeout: Duration::from_secs(1),
            tls: TlsMode::Prefer,
            ca_file: None,
        };
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
