//! The HTTP endpoint of a running pipeline: `/metrics` (Prometheus text format) and
//! `/status` (the live status document as JSON, read by `watershed explain`). It runs on its
//! own small thread and never touches the data path.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::status::{StatusRegistry, StatusReport};
use crate::time::ClockRef;

#[derive(Clone)]
struct AppState {
    prometheus: Option<PrometheusHandle>,
    status: Arc<StatusRegistry>,
    clock: ClockRef,
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
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_doc))
        .with_state(AppState {
            prometheus,
            status,
            clock,
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
