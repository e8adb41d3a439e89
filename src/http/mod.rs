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
//!   403: a browser's cross-site request, whatever page made it.
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
    let app = router(services, token.clone());
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

fn router(services: Services, token: Token) -> Router {
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
        .with_state(state)
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
