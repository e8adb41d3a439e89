//! The HTTP endpoint of a running pipeline, on its own small thread; it never touches the
//! data path:
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`: the live status document as JSON, with the pipeline's name and the run's
//!   id (read by `watershed explain` and `watershed savepoint`, which check the name).
//! - `POST /savepoint[?dir=DIR][&stop=true|false]`: takes a savepoint into a new directory
//!   (`savepoint::SavepointTargets` says which ones are allowed; without `dir`,
//!   `checkpoint.dir/savepoints/savepoint-<UTC time>`) and answers, once it is written,
//!   with its path (sent by `watershed savepoint`). 403 for a directory not allowed, 409 for
//!   one that exists, 503 when the pipeline is ending.
//!
//! Who may do what:
//! - State-changing requests (`POST /savepoint`) need the run's token (`token`) as
//!   `Authorization: Bearer <token>`: 401 without it.
//! - A request whose `Origin` is not the endpoint's own (`http://<Host>`) is refused with
//!   403: a browser's cross-site request, whatever page made it. On a loopback endpoint a
//!   request whose `Host` is not a loopback name is refused too (DNS rebinding).
//! - The endpoint binds only loopback addresses unless `--allow-remote-endpoints` says
//!   otherwise: `/metrics` and `/status` answer anyone who can reach them.
//! - An address in use is an error before the run starts, never a run without endpoint.
//!
//! Connections are capped and timed out (`conn`); the commands' side is `client`.

pub mod client;
mod conn;
pub mod token;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

pub use client::get_local;
pub use conn::Limits;
use token::Token;

use crate::error::RunError;
use crate::savepoint::{SavepointError, SavepointRequests, SavepointTargets};
use crate::status::{StatusRegistry, StatusReport};
use crate::time::ClockRef;

/// Where `run` serves the endpoint unless told otherwise.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    /// Serve on an address other machines can reach (`--allow-remote-endpoints`).
    pub allow_remote: bool,
    pub limits: Limits,
    /// The pipeline's checkpoint directory: where the token file goes (see `token`).
    pub checkpoint_dir: Option<PathBuf>,
}

/// What the endpoint answers from.
pub struct Services {
    pub prometheus: Option<PrometheusHandle>,
    pub status: Arc<StatusRegistry>,
    pub clock: ClockRef,
    pub savepoints: Arc<SavepointRequests>,
    pub targets: SavepointTargets,
}

/// A running endpoint. It serves until the process ends; dropping this removes the token
/// file (if it is still this run's), so that nothing can use it once the run is over.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The file holding the run's token.
    pub token_file: PathBuf,
    token: Token,
    connections: Arc<conn::Connections>,
}

impl Endpoint {
    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// The run's token.
    pub fn token(&self) -> &Token {
        &self.token
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.token.remove(&self.token_file);
    }
}

#[derive(Clone)]
struct AppState {
    prometheus: Option<PrometheusHandle>,
    status: Arc<StatusRegistry>,
    clock: ClockRef,
    savepoints: Arc<SavepointRequests>,
    targets: Arc<SavepointTargets>,
}

/// Binds `settings.addr` (a loopback address unless `allow_remote`), writes the run's token
/// file and serves on a thread of its own. Errors name the address: in use, not loopback.
pub fn start(settings: &Settings, services: Services) -> Result<Endpoint, RunError> {
    let addr = settings.addr;
    let refuse = |message: String| RunError::Endpoint { addr, message };
    if !addr.ip().to_canonical().is_loopback() && !settings.allow_remote {
        return Err(refuse(
            "not a loopback address: anyone who can reach it could read `/metrics` and `/status`; \
             pass `--allow-remote-endpoints` to serve there anyway (savepoints still need the run's token)"
                .into(),
        ));
    }
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        refuse(match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "cannot listen: {e}; another process serves there (another pipeline? `watershed explain PIPELINE --addr {addr}` shows which)"
            ),
            _ => format!("cannot listen: {e}"),
        })
    })?;
    let bound = listener
        .local_addr()
        .and_then(|a| listener.set_nonblocking(true).map(|()| a))
        .map_err(|e| refuse(format!("cannot listen: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::io("cannot start the endpoint's runtime", e))?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| refuse(format!("cannot listen: {e}")))?
    };
    let token =
        Token::generate().map_err(|e| RunError::io("cannot make the endpoint's token", e))?;
    let token_file = token::write_for_run(
        &token,
        settings.checkpoint_dir.as_deref(),
        &services.status.pipeline,
        bound.port(),
    )
    .map_err(|e| RunError::io("cannot write the endpoint's token file", e))?;
    let connections = conn::Connections::new(settings.limits);
    let app = router(services, token.clone(), settings.allow_remote);
    let conns = connections.clone();
    let spawned = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(conn::accept_loop(listener, app, conns)));
    if let Err(e) = spawned {
        token.remove(&token_file);
        return Err(RunError::io("cannot start the endpoint's thread", e));
    }
    Ok(Endpoint {
        addr: bound,
        token_file,
        token,
        connections,
    })
}

fn router(services: Services, token: Token, allow_remote: bool) -> Router {
    let state = AppState {
        prometheus: services.prometheus,
        status: services.status,
        clock: services.clock,
        savepoints: services.savepoints,
        targets: Arc::new(services.targets),
    };
    let token = Arc::new(token);
    // Every state-changing route goes here, behind the token.
    let changing = Router::new()
        .route("/savepoint", post(savepoint))
        .route_layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_doc))
        .merge(changing)
        .layer(middleware::from_fn(same_origin))
        .layer(middleware::from_fn_with_state(allow_remote, loopback_host))
        .with_state(state)
}

/// On a loopback endpoint, refuses a request whose `Host` is not a loopback name
/// (`localhost`, `127.x.x.x`, `[::1]`): a page whose own name was made to resolve to
/// 127.0.0.1 (DNS rebinding) passes the `Origin` check, not this one.
async fn loopback_host(State(allow_remote): State<bool>, req: Request, next: Next) -> Response {
    if !allow_remote {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if !host.is_some_and(is_loopback_host) {
            return (
                StatusCode::FORBIDDEN,
                "this endpoint answers only requests addressed to a loopback name \
                 (`Host: localhost`, `127.0.0.1`, `[::1]`)",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Whether a `Host` header names this machine's loopback: `localhost`, an IPv4 loopback
/// address or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Refuses a request whose `Origin` is not the endpoint's own.
async fn same_origin(req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let own = req
            .headers()
            .get(header::HOST)
            .map(|h| [b"http://", h.as_bytes()].concat());
        if own.as_deref() != Some(origin.as_bytes()) {
            return (StatusCode::FORBIDDEN, "cross-origin requests are refused").into_response();
        }
    }
    next.run(req).await
}

/// Refuses a request without the run's token.
async fn require_token(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|h| h.as_bytes());
    if !token.authorizes(presented) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this request needs the run's token as `Authorization: Bearer <token>`; \
             `watershed savepoint` reads it from the token file the run wrote",
        )
            .into_response();
    }
    next.run(req).await
}

async fn savepoint(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    if let Some(other) = q.keys().find(|k| *k != "dir" && *k != "stop") {
        return (
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{other}`: `dir` and `stop` are known"),
        );
    }
    let stop = match q.get("stop").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("`stop` is `true` or `false`, not `{other}`"),
            );
        }
    };
    let dir = match s.targets.resolve(q.get("dir").map(Path::new)) {
        Ok(dir) => dir,
        Err(e) => return (status_of(&e), e.to_string()),
    };
    let answer = s.savepoints.request(dir, stop);
    match tokio::task::spawn_blocking(move || answer.recv()).await {
        Ok(Ok(Ok(path))) => (StatusCode::OK, path.display().to_string()),
        Ok(Ok(Err(e))) => (status_of(&e), e.to_string()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline ended before answering".into(),
        ),
    }
}

fn status_of(e: &SavepointError) -> StatusCode {
    match e {
        SavepointError::NotAllowed(_) => StatusCode::FORBIDDEN,
        SavepointError::Exists(_) => StatusCode::CONFLICT,
        SavepointError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        SavepointError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn metrics(State(s): State<AppState>) -> String {
    s.prometheus
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default()
}

async fn status_doc(State(s): State<AppState>) -> axum::Json<StatusReport> {
    axum::Json(s.status.snapshot(s.clock.now_ms()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::time::SystemClock;

    /// An endpoint on a free loopback port with its checkpoint directory in `cp`, and the
    /// queue its savepoint requests go to.
    fn serve(cp: &Path, limits: Limits) -> (Endpoint, Arc<SavepointRequests>) {
        let savepoints = Arc::new(SavepointRequests::default());
        let settings = Settings {
            addr: "127.0.0.1:0".parse().unwrap(),
            allow_remote: false,
            limits,
            checkpoint_dir: Some(cp.to_path_buf()),
        };
        let services = Services {
            prometheus: None,
            status: StatusRegistry::new("orders"),
            clock: SystemClock::shared(),
            savepoints: savepoints.clone(),
            targets: SavepointTargets::new(Some(cp), &[]).unwrap(),
        };
        (start(&settings, services).unwrap(), savepoints)
    }

    /// Writes every savepoint asked for, as the supervisor does (of an empty checkpoint).
    fn write_savepoints(requests: Arc<SavepointRequests>) {
        std::thread::spawn(move || {
            loop {
                for req in requests.take() {
                    let _ = req.reply.send(crate::savepoint::write(
                        &req.dir,
                        "orders",
                        &Checkpoint::default(),
                        0,
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }

    fn post(e: &Endpoint, query: &str, headers: &str) -> (u16, String) {
        let addr = e.addr;
        client::exchange(
            addr,
            &format!(
                "POST /savepoint{query} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\n\r\n"
            ),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    fn bearer(e: &Endpoint) -> String {
        format!("Authorization: Bearer {}\r\n", e.token().secret())
    }

    /// Whether the server closes `s` (reads it to its end; an answer it sent first, such as
    /// a timeout's, is skipped). `false` if it stays open for a minute.
    fn closed_by_server(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }

    /// Waits (a minute at most) until `e` has `n` connections open or fewer.
    fn open_falls_to(e: &Endpoint, n: usize) -> bool {
        for _ in 0..6000 {
            if e.open_connections() <= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn status_names_the_pipeline_and_the_run() {
        let cp = tempfile::tempdir().unwrap();
        let (e, _) = serve(cp.path(), Limits::default());
        let report = client::status_of(e.addr, "orders").unwrap();
        assert_eq!(report.run_id.len(), 16);
        let (other, _) = serve(cp.path(), Limits::default());
        assert_ne!(
            client::status_of(other.addr, "orders").unwrap().run_id,
            report.run_id
        );
        match client::status_of(e.addr, "payments") {
            Err(err @ client::ClientError::OtherPipeline { .. }) => {
                let m = err.to_string();
                assert!(m.contains("`orders`") && m.contains("`payments`"), "{m}");
                assert!(m.contains(&report.run_id), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loopback_hosts_are_recognized() {
        for ok in [
            "localhost",
            "LOCALHOST:9464",
            "127.0.0.1",
            "127.0.0.1:9464",
            "127.3.4.5:1",
            "[::1]",
            "[::1]:9464",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:9464",
            "localhost.attacker.example",
            "10.0.0.1:9464",
            "[::2]:9464",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    /// Regression: a page whose own name resolves to 127.0.0.1 (DNS rebinding) sends its
    /// own name as `Host` and `Origin`, which agree: only the `Host` check stops it.
    #[test]
    fn a_rebound_name_is_refused_on_a_loopback_endpoint() {
        let cp = tempfile::tempdir().unwrap();
        let (e, _requests) = serve(cp.path(), Limits::default());
        let ask = |host: &str| {
            client::exchange(
                e.addr,
                &format!("GET /status HTTP/1.0\r\nHost: {host}\r\nOrigin: http://{host}\r\n\r\n"),
                Duration::from_secs(60),
            )
            .unwrap()
        };
        let (status, body) = ask("rebound.example:9464");
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("loopback name"), "{body}");
        assert_eq!(ask(&e.addr.to_string()).0, 200);
        assert_eq!(ask(&format!("localhost:{}", e.addr.port())).0, 200);
    }

    #[test]
    fn savepoint_needs_the_runs_token_and_refuses_other_origins() {
        let cp = tempfile::tempdir().unwrap();
        let (e, requests) = serve(cp.path(), Limits::default());
        write_savepoints(requests);
        // The token file is the run's, readable only by its owner.
        assert_eq!(e.token_file, cp.path().join("run.token"));
        assert_eq!(token::read(&e.token_file).unwrap(), e.token().secret());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&e.token_file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let (status, body) = post(&e, "?stop=false", "");
        assert_eq!(status, 401, "{body}");
        let wrong = format!("Authorization: Bearer {}\r\n", "0".repeat(64));
        assert_eq!(post(&e, "?stop=false", &wrong).0, 401);
        // A browser's cross-site request, token or not.
        let foreign = format!("{}Origin: http://attacker.example\r\n", bearer(&e));
        let (status, body) = post(&e, "?stop=false", &foreign);
        assert_eq!(status, 403, "{body}");
        let get = client::exchange(
            e.addr,
            &format!(
                "GET /status HTTP/1.0\r\nHost: {}\r\nOrigin: http://attacker.example\r\n\r\n",
                e.addr
            ),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(get.0, 403);
        assert!(
            std::fs::read_dir(cp.path())
                .unwrap()
                .all(|d| d.unwrap().file_name() != "savepoints"),
            "nothing was written"
        );
        // With the token, from its own origin: written under checkpoint.dir/savepoints.
        let own = format!("{}Origin: http://{}\r\n", bearer(&e), e.addr);
        let (status, body) = post(&e, "?stop=false", &own);
        assert_eq!(status, 200, "{body}");
        assert!(
            Path::new(&body).starts_with(cp.path().join("savepoints")),
            "{body}"
        );
        assert!(Path::new(&body).join("MANIFEST").exists());
        // The token file goes with the run.
        let file = e.token_file.clone();
        drop(e);
        assert!(!file.exists());
    }

    #[test]
    fn savepoint_never_replaces_a_directory_and_stays_under_its_roots() {
        let cp = tempfile::tempdir().unwrap();
        let (e, requests) = serve(cp.path(), Limits::default());
        write_savepoints(requests);
        let auth = bearer(&e);
        let existing = cp.path().join("savepoints").join("mine");
        std::fs::create_dir_all(&existing).unwrap();
        std::fs::write(existing.join("keep.txt"), "mine").unwrap();
        let (status, body) = post(&e, "?dir=mine&stop=false", &auth);
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("only into a new directory"), "{body}");
        assert_eq!(
            std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
            "mine"
        );
        // Outside the savepoint directory, or climbing out of it: refused.
        let elsewhere = tempfile::tempdir().unwrap();
        let query = format!("?dir={}&stop=false", elsewhere.path().join("sp").display());
        let (status, body) = post(&e, &query, &auth);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("--savepoint-root"), "{body}");
        let (status, body) = post(&e, "?dir=../../x&stop=false", &auth);
        assert_eq!(status, 403, "{body}");
        assert_eq!(post(&e, "?dir=a&stop=maybe", &auth).0, 400);
        assert_eq!(post(&e, "?dri=a", &auth).0, 400);
        // A new directory under it, relative or absolute: written.
        let (status, body) = post(&e, "?dir=nested/new&stop=false", &auth);
        assert_eq!(status, 200, "{body}");
        assert_eq!(Path::new(&body), cp.path().join("savepoints/nested/new"));
        assert!(Path::new(&body).join("MANIFEST").exists());
    }

    #[test]
    fn a_non_loopback_address_needs_the_flag() {
        let settings = |allow_remote| Settings {
            addr: "0.0.0.0:0".parse().unwrap(),
            allow_remote,
            limits: Limits::default(),
            checkpoint_dir: None,
        };
        let cp = tempfile::tempdir().unwrap();
        let services = || Services {
            prometheus: None,
            status: StatusRegistry::new("orders"),
            clock: SystemClock::shared(),
            savepoints: Arc::default(),
            targets: SavepointTargets::default(),
        };
        let err = start(&settings(false), services()).err().unwrap();
        assert!(matches!(err, RunError::Endpoint { .. }));
        assert!(
            err.to_string().contains("--allow-remote-endpoints"),
            "{err}"
        );
        let mut allowed = settings(true);
        allowed.checkpoint_dir = Some(cp.path().to_path_buf());
        let e = start(&allowed, services()).unwrap();
        assert!(e.addr.ip().is_unspecified());
    }

    #[test]
    fn a_busy_address_is_an_error_naming_it() {
        let cp = tempfile::tempdir().unwrap();
        let (taken, _) = serve(cp.path(), Limits::default());
        let settings = Settings {
            addr: taken.addr,
            allow_remote: false,
            limits: Limits::default(),
            checkpoint_dir: Some(cp.path().join("other")),
        };
        let services = Services {
            prometheus: None,
            status: StatusRegistry::new("payments"),
            clock: SystemClock::shared(),
            savepoints: Arc::default(),
            targets: SavepointTargets::default(),
        };
        let err = start(&settings, services).err().unwrap();
        let m = err.to_string();
        assert!(
            m.contains(&taken.addr.to_string()) && m.contains("another process"),
            "{m}"
        );
        assert!(err.hint().contains("--metrics-addr"));
        assert!(!cp.path().join("other").exists(), "no token written");
    }

    #[test]
    fn idle_connections_beyond_the_cap_give_way_to_new_ones() {
        let cp = tempfile::tempdir().unwrap();
        // Idle connections would stay for an hour: only the cap can make room.
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 4,
        };
        let (e, _) = serve(cp.path(), limits);
        let mut idle: Vec<TcpStream> = (0..10)
            .map(|_| TcpStream::connect(e.addr).unwrap())
            .collect();
        // Still answers, with never more than the cap open.
        let body = get_local(e.addr, "/status").unwrap();
        assert!(body.contains("\"pipeline\":\"orders\""), "{body}");
        assert!(open_falls_to(&e, 4));
        // The oldest idle connections were closed to make room.
        for s in &mut idle[..6] {
            assert!(closed_by_server(s));
        }
    }

    #[test]
    fn idle_and_slow_connections_are_closed_after_the_header_read_timeout() {
        let cp = tempfile::tempdir().unwrap();
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 64,
        };
        let (e, _) = serve(cp.path(), limits);
        let mut idle: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(e.addr).unwrap())
            .collect();
        // Half a request head, never finished.
        let mut slow = TcpStream::connect(e.addr).unwrap();
        slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        // Kept alive after an answer, then silent.
        let mut kept = TcpStream::connect(e.addr).unwrap();
        write!(kept, "GET /status HTTP/1.1\r\nHost: {}\r\n\r\n", e.addr).unwrap();
        for s in idle.iter_mut().chain([&mut slow, &mut kept]) {
            assert!(closed_by_server(s));
        }
        assert!(open_falls_to(&e, 0));
        assert!(get_local(e.addr, "/status").is_ok());
    }

    #[test]
    fn a_connection_that_stops_reading_its_answers_is_closed() {
        let cp = tempfile::tempdir().unwrap();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_millis(200),
            max_connections: 64,
        };
        let (e, _) = serve(cp.path(), limits);
        // Requests sent one after another without reading an answer: once the buffers are
        // full, nothing moves, and the endpoint closes the connection, which ends the writes.
        let mut s = TcpStream::connect(e.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let requests = format!("GET /status HTTP/1.1\r\nHost: {}\r\n\r\n", e.addr).repeat(1000);
        let ended = loop {
            if let Err(err) = s.write_all(requests.as_bytes()) {
                break err;
            }
        };
        assert!(
            !matches!(
                ended.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{ended}"
        );
        assert!(open_falls_to(&e, 0));
    }

    #[test]
    fn an_answer_being_prepared_is_never_cut_and_new_connections_wait_for_room() {
        let cp = tempfile::tempdir().unwrap();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_millis(50),
            max_connections: 1,
        };
        let (e, requests) = serve(cp.path(), limits);
        let addr = e.addr;
        let auth = bearer(&e);
        // A savepoint request, answered only when the test says so.
        let waiting = std::thread::spawn(move || {
            client::exchange(
                addr,
                &format!(
                    "POST /savepoint?stop=false HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n"
                ),
                Duration::from_secs(60),
            )
            .unwrap()
        });
        let req = loop {
            if let Some(r) = requests.take().pop() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The only place is taken by a request being answered: a new connection is closed.
        let mut refused = TcpStream::connect(addr).unwrap();
        assert!(closed_by_server(&mut refused));
        // Longer than the idle timeout passes; the answer still arrives.
        std::thread::sleep(Duration::from_millis(300));
        let written = crate::savepoint::write(&req.dir, "orders", &Checkpoint::default(), 0);
        let _ = req.reply.send(written);
        let (status, body) = waiting.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(get_local(addr, "/status").is_ok());
    }
}
