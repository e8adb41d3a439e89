//! The HTTP endpoint of a running pipeline: `/metrics` (Prometheus text format), `/status`
//! (the live status document as JSON, read by `watershed explain`) and `POST
//! /savepoint?dir=DIR&stop=true|false` (answers once the savepoint is written; sent by
//! `watershed savepoint`). It runs on its own small thread and never touches the data path.

use std::net::SocketAddr;
use std::sync::Arc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::savepoint::SavepointRequests;
use crate::status::{StatusRegistry, StatusReport};
use crate::time::ClockRef;

#[derive(Clone)]
struct AppState {
    prometheus: Option<PrometheusHandle>,
    status: Arc<StatusRegistry>,
    clock: ClockRef,
    savepoints: Arc<SavepointRequests>,
}

async fn savepoint(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let Some(dir) = q.get("dir") else {
        return (StatusCode::BAD_REQUEST, "missing `dir`".into());
    };
    let stop = q.get("stop").is_none_or(|v| v != "false");
    let answer = s.savepoints.request(PathBuf::from(dir), stop);
    let waited = tokio::task::spawn_blocking(move || answer.recv()).await;
    match waited {
        Ok(Ok(Ok(path))) => (StatusCode::OK, path.display().to_string()),
        Ok(Ok(Err(e))) => (StatusCode::CONFLICT, e),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the pipeline ended before answering".into(),
        ),
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

/// Binds `addr` and serves until the process ends; returns the bound address.
pub fn serve(
    addr: SocketAddr,
    prometheus: Option<PrometheusHandle>,
    status: Arc<StatusRegistry>,
    clock: ClockRef,
    savepoints: Arc<SavepointRequests>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_doc))
        .route("/savepoint", post(savepoint))
        .with_state(AppState {
            prometheus,
            status,
            clock,
            savepoints,
        });
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::warn!(error = %e, "metrics endpoint stopped");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics endpoint not started"),
                }
            });
        })?;
    Ok(bound)
}

/// Fetches `path` from a local HTTP endpoint (plain HTTP/1.0, enough for `/status`).
pub fn get_local(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let ok = head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200");
    if !ok {
        return Err(std::io::Error::other(format!(
            "unexpected answer: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_string())
}

/// Asks the pipeline at `addr` for a savepoint in `dir` (stopping it after, with `stop`)
/// and waits for it: returns where it was written.
pub fn request_savepoint(addr: SocketAddr, dir: &Path, stop: bool) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(600)))?;
    let query = format!(
        "dir={}&stop={stop}",
        percent_encode(&dir.display().to_string())
    );
    write!(
        s,
        "POST /savepoint?{query} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    if head.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(std::io::Error::other(body.to_string()))
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
