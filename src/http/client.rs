//! The commands' side of the endpoint (`watershed explain`, `watershed savepoint`): plain
//! HTTP/1.0 over TCP, and the check that the pipeline answering is the one the command was
//! given — another pipeline may be serving on the same address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::status::StatusReport;

/// Why a command got nothing, or nothing it may use, from an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no pipeline answers at {addr} ({source})")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("what answers at {addr} is not a Watershed pipeline's status ({reason})")]
    NotStatus { addr: SocketAddr, reason: String },
    #[error("the pipeline at {addr} is `{found}` (run {run_id}), not `{expected}`")]
    OtherPipeline {
        addr: SocketAddr,
        found: String,
        run_id: String,
        expected: String,
    },
    #[error("the pipeline at {addr} refused (HTTP {status}): {message}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
}

/// Fetches `path` from an endpoint (plain HTTP/1.0, enough for `/status`).
pub fn get_local(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let (status, body) = exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
        Duration::from_secs(5),
    )?;
    if status != 200 {
        return Err(std::io::Error::other(format!(
            "unexpected answer: HTTP {status}"
        )));
    }
    Ok(body)
}

/// The status of the pipeline at `addr`, which must be the one named `expected`.
pub fn status_of(addr: SocketAddr, expected: &str) -> Result<StatusReport, ClientError> {
    let body =
        get_local(addr, "/status").map_err(|source| ClientError::Unreachable { addr, source })?;
    let report: StatusReport = serde_json::from_str(&body).map_err(|e| ClientError::NotStatus {
        addr,
        reason: e.to_string(),
    })?;
    if report.pipeline != expected {
        return Err(ClientError::OtherPipeline {
            addr,
            found: report.pipeline,
            run_id: report.run_id,
            expected: expected.to_string(),
        });
    }
    Ok(report)
}

/// Asks the pipeline at `addr` for a savepoint (into `dir`, absolute, or where the pipeline
/// puts them by default), stopping it after with `stop`, and waits for it: returns where it
/// was written.
pub fn request_savepoint(
    addr: SocketAddr,
    token: &str,
    dir: Option<&Path>,
    stop: bool,
) -> Result<String, ClientError> {
    let mut query = format!("stop={stop}");
    if let Some(dir) = dir {
        query.push_str("&dir=");
        query.push_str(&percent_encode(dir.as_os_str().as_encoded_bytes()));
    }
    let request = format!(
        "POST /savepoint?{query} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, body) = exchange(addr, &request, Duration::from_secs(600))
        .map_err(|source| ClientError::Unreachable { addr, source })?;
    if status == 200 {
        Ok(body)
    } else {
        Err(ClientError::Refused {
            addr,
            status,
            message: body,
        })
    }
}

/// Sends `request` and reads the whole answer: its status code and body.
pub(crate) fn exchange(
    addr: SocketAddr,
    request: &str,
    wait: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let buf = String::from_utf8_lossy(&buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .starts_with("HTTP/1.")
        .then(|| head.split_whitespace().nth(1)?.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "not an HTTP answer: {}",
                head.lines().next().unwrap_or_default()
            ))
        })?;
    Ok((status, body.to_string()))
}

/// Percent-encodes everything but unreserved URL characters and `/`.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
