//! The endpoint's connections, kept so that they can never starve the data path of file
//! descriptors or time (hyper's HTTP/1 server under our own accept loop):
//!
//! - **A cap** (`max_connections`): a connection beyond it takes the place of the oldest one
//!   that is not answering a request (that one is closed); when every connection is
//!   answering one, the new connection is closed at once. The process never holds more than
//!   the cap (and the one being let in).
//! - **A header-read timeout**: a connection has `header_read_timeout` to deliver a request's
//!   head, counted from when it opens or, kept alive, from its last answer; so an idle or
//!   half-open connection, or one trickling its head, is closed after it.
//! - **An idle timeout**: a connection on which no byte moves for `idle_timeout` while no
//!   request is being answered (a client that stopped reading its answer) is closed.
//!
//! A request being answered (a savepoint can take a while) is never cut short by these.
//! `watershed_endpoint_connections` is the number open;
//! `watershed_endpoint_connections_closed_total{reason}` counts those closed by the endpoint
//! (`refused`, `evicted`, `header_timeout`, `idle_timeout`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics as m;

/// How the endpoint treats connections (`metrics:` in the pipeline file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time to deliver a request's head, from the connection's start or its last answer.
    pub header_read_timeout: Duration,
    /// Time without a byte moving while no request is being answered.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

/// One open connection.
struct Slot {
    id: u64,
    /// Requests being answered on it now.
    busy: AtomicUsize,
    /// When a byte last moved, or an answer was ready, in ms since `Connections::epoch`.
    last_io_ms: AtomicU64,
    /// Told to close, to make room for a new connection.
    evict: Notify,
}

impl Slot {
    fn touch(&self, epoch: Instant) {
        self.last_io_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The open connections, oldest first.
pub(crate) struct Connections {
    epoch: Instant,
    limits: Limits,
    open: Mutex<(u64, BTreeMap<u64, Arc<Slot>>)>,
}

impl Connections {
    pub(crate) fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            epoch: Instant::now(),
            limits,
            open: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// How many are open.
    pub(crate) fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }

    /// A slot for a new connection, making room by evicting the oldest one that is not
    /// answering a request; `None` when every one is.
    fn admit(&self) -> Option<Arc<Slot>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (next, slots) = &mut *open;
        if slots.len() >= self.limits.max_connections {
            let idle = slots
                .iter()
                .find(|(_, s)| s.busy.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id);
            let Some(evicted) = idle.and_then(|id| slots.remove(&id)) else {
                closed("refused");
                return None;
            };
            evicted.evict.notify_one();
            closed("evicted");
        }
        *next += 1;
        let slot = Arc::new(Slot {
            id: *next,
            busy: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            evict: Notify::new(),
        });
        slot.touch(self.epoch);
        slots.insert(slot.id, slot.clone());
        metrics::gauge!(m::ENDPOINT_CONNECTIONS).set(slots.len() as f64);
        Some(slot)
    }

    fn release(&self, slot: &Slot) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.1.remove(&slot.id);
        metrics::gauge!(m::ENDPOINT_CONNECTIONS).set(open.1.len() as f64);
    }
}

fn closed(reason: &'static str) {
    metrics::counter!(m::ENDPOINT_CONNECTIONS_CLOSED, m::LABEL_REASON => reason).increment(1);
}

/// Accepts connections on `listener` and serves `router` on each, forever.
pub(crate) async fn accept_loop(listener: TcpListener, router: Router, conns: Arc<Connections>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection gone before it was accepted:
                // wait a little instead of spinning.
                tracing::debug!(error = %e, "endpoint: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = conns.admit() else {
            drop(stream);
            continue;
        };
        tokio::spawn(serve(stream, router.clone(), conns.clone(), slot));
        // Lets an evicted connection close before the next one is let in.
        tokio::task::yield_now().await;
    }
}

/// Serves one connection until it closes, times out or is evicted.
async fn serve(stream: TcpStream, router: Router, conns: Arc<Connections>, slot: Arc<Slot>) {
    let epoch = conns.epoch;
    let limits = conns.limits;
    let io = TokioIo::new(Watched {
        inner: stream,
        slot: slot.clone(),
        epoch,
    });
    let service = TowerToHyperService::new(router);
    let answering = slot.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::enter(answering.clone(), epoch);
        let answer = hyper::service::Service::call(&service, req);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let quiet_since =
        |s: &Slot| epoch + Duration::from_millis(s.last_io_ms.load(Ordering::Relaxed));
    let mut check_at = quiet_since(&slot) + limits.idle_timeout;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done
                    && e.is_timeout()
                {
                    closed("header_timeout");
                }
                break;
            }
            () = slot.evict.notified() => {
                // A request that began since it was chosen is answered first.
                if slot.busy.load(Ordering::Relaxed) == 0 {
                    break;
                }
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(check_at) => {
                let now = Instant::now();
                let answering = slot.busy.load(Ordering::Relaxed) > 0;
                let quiet = quiet_since(&slot);
                if !answering && now >= quiet + limits.idle_timeout {
                    closed("idle_timeout");
                    break;
                }
                check_at = if answering {
                    now + limits.idle_timeout
                } else {
                    quiet + limits.idle_timeout
                };
            }
        }
    }
    conns.release(&slot);
}

/// Marks a request as being answered on a connection while it lives.
struct Busy {
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Busy {
    fn enter(slot: Arc<Slot>, epoch: Instant) -> Busy {
        slot.busy.fetch_add(1, Ordering::Relaxed);
        slot.touch(epoch);
        Busy { slot, epoch }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The answer is ready: the idle time counts from here.
        self.slot.touch(self.epoch);
        self.slot.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records when a byte last moved.
struct Watched {
    inner: TcpStream,
    slot: Arc<Slot>,
    epoch: Instant,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.touch(self.epoch);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch(self.epoch);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch(self.epoch);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
