//! The one pattern for network clients (a Kafka consumer, a replication stream, an HTTP
//! API): the client is async and runs on the process's shared I/O runtime; it hands typed
//! batches to the component's synchronous task through a bounded channel.
//!
//! ```text
//!   shared tokio runtime (2 threads)              the source's task thread
//!   ┌──────────────────────────────┐  bounded   ┌──────────────────────────────┐
//!   │ client future                │  channel   │ Source::read                 │
//!   │  connect, read, decode ──────┼──► T ─────►│  feed.poll(): Item | Empty   │
//!   │  sender.send(batch).await    │ (capacity) │               | Ended|Failed │
//!   └──────────────────────────────┘            └──────────────────────────────┘
//! ```
//! - **Backpressure**: `FeedSender::send` waits while the channel is full, so a client never
//!   reads further ahead of the pipeline than `capacity` items (the broker or database keeps
//!   the rest).
//! - **Errors**: the client future's error is delivered after the items it sent before it
//!   (`Poll::Failed`), typed (`RunError`), so the task fails or retries by its class.
//! - **Shutdown**: dropping the `Feed` aborts the client (its connections close); a client
//!   also sees `send` fail once the feed is gone, and should return.
//! - **Time**: the client never decides event time or idleness; it only moves bytes. The
//!   task reads `Poll::Empty` as "nothing to read now" and reports `ReadStatus::Pending`.
//!
//! A sink's async client can instead run one call at a time with `block_on` on the same
//! runtime: its thread only writes, so waiting there is its backpressure.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::RunError;

/// The process's runtime for network I/O, started on first use.
pub fn handle() -> tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("watershed-io")
                .enable_all()
                .build()
                .expect("the I/O runtime starts")
        })
        .handle()
        .clone()
}

/// Runs `f` to its end on the I/O runtime, from a synchronous task.
pub fn block_on<F: Future>(f: F) -> F::Output {
    handle().block_on(f)
}

/// The synchronous side of a client: what it has handed over so far.
pub struct Feed<T> {
    rx: mpsc::Receiver<Result<T, RunError>>,
    task: tokio::task::JoinHandle<()>,
    ended: bool,
}

/// The client's side: hands items to the task.
pub struct FeedSender<T> {
    tx: mpsc::Sender<Result<T, RunError>>,
}

/// The feed is gone (its task stopped): the client should return.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// What `Feed::poll` found.
#[derive(Debug)]
pub enum Poll<T> {
    Item(T),
    /// Nothing now; the client is still running.
    Empty,
    /// The client returned without error and everything it sent has been taken.
    Ended,
    /// The client failed; everything it sent before has been taken.
    Failed(RunError),
}

impl<T: Send + 'static> FeedSender<T> {
    /// Hands one item over, waiting while `capacity` items wait to be taken.
    pub async fn send(&self, item: T) -> Result<(), Closed> {
        self.tx.send(Ok(item)).await.map_err(|_| Closed)
    }

    /// Whether the feed is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<T: Send + 'static> Feed<T> {
    /// Starts `client` on the I/O runtime with a channel of `capacity` items.
    pub fn spawn<F, Fut>(capacity: usize, client: F) -> Feed<T>
    where
        F: FnOnce(FeedSender<T>) -> Fut,
        Fut: Future<Output = Result<(), RunError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let errors = tx.clone();
        let work = client(FeedSender { tx });
        let task = handle().spawn(async move {
            if let Err(e) = work.await {
                // After every item sent before it; nobody to tell if the feed is gone.
                let _ = errors.send(Err(e)).await;
            }
        });
        Feed {
            rx,
            task,
            ended: false,
        }
    }

    /// The next item, without waiting.
    pub fn poll(&mut self) -> Poll<T> {
        if self.ended {
            return Poll::Ended;
        }
        match self.rx.try_recv() {
            Ok(Ok(item)) => Poll::Item(item),
            Ok(Err(e)) => {
                self.ended = true;
                Poll::Failed(e)
            }
            Err(mpsc::error::TryRecvError::Empty) => Poll::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.ended = true;
                Poll::Ended
            }
        }
    }

    /// The next item, waiting at most `timeout` for one.
    pub fn poll_timeout(&mut self, timeout: Duration) -> Poll<T> {
        match self.poll() {
            Poll::Empty => {}
            other => return other,
        }
        let rx = &mut self.rx;
        match block_on(async { tokio::time::timeout(timeout, rx.recv()).await }) {
            Err(_elapsed) => Poll::Empty,
            Ok(Some(Ok(item))) => Poll::Item(item),
            Ok(Some(Err(e))) => {
                self.ended = true;
                Poll::Failed(e)
            }
            Ok(None) => {
                self.ended = true;
                Poll::Ended
            }
        }
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// A line server on a free loopback port: writes `lines` lines, then `tail` (bytes, no
    /// newline), then closes.
    fn serve(lines: usize, tail: &'static str) -> std::net::SocketAddr {
        let listener = block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        handle().spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for i in 0..lines {
                if s.write_all(format!("line {i}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = s.write_all(tail.as_bytes()).await;
        });
        addr
    }

    /// A client reading lines in batches of ten; a line cut short is an error.
    async fn client(
        addr: std::net::SocketAddr,
        out: FeedSender<Vec<String>>,
    ) -> Result<(), RunError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| RunError::io("cannot connect", e))?;
        let mut reader = BufReader::new(stream);
        let mut batch = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| RunError::io("cannot read", e))?;
            if n == 0 {
                break;
            }
            if !line.ends_with('\n') {
                return Err(RunError::External {
                    component: "test".into(),
                    message: format!("line cut short: `{line}`"),
                    class: crate::error::ErrorClass::Transient,
                });
            }
            batch.push(line.trim_end().to_string());
            if batch.len() == 10 && out.send(std::mem::take(&mut batch)).await.is_err() {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            let _ = out.send(batch).await;
        }
        Ok(())
    }

    fn drain(feed: &mut Feed<Vec<String>>) -> (Vec<String>, Poll<Vec<String>>) {
        let mut got = Vec::new();
        loop {
            match feed.poll_timeout(Duration::from_secs(10)) {
                Poll::Item(b) => got.extend(b),
                Poll::Empty => panic!("no progress in 10 s"),
                end => return (got, end),
            }
        }
    }

    #[test]
    fn batches_from_a_real_connection_arrive_in_order_then_the_end() {
        let addr = serve(95, "");
        let mut feed = Feed::spawn(2, move |out| client(addr, out));
        let (got, end) = drain(&mut feed);
        assert_eq!(got.len(), 95);
        assert_eq!(got[94], "line 94");
        assert!(matches!(end, Poll::Ended), "{end:?}");
        assert!(matches!(feed.poll(), Poll::Ended));
    }

    #[test]
    fn the_clients_error_comes_after_what_it_sent() {
        let addr = serve(20, "line 2");
        let mut feed = Feed::spawn(4, move |out| client(addr, out));
        let (got, end) = drain(&mut feed);
        assert_eq!(got.len(), 20);
        match end {
            Poll::Failed(e) => {
                assert!(e.to_string().contains("cut short"), "{e}");
                assert_eq!(e.class(), crate::error::ErrorClass::Transient);
            }
            other => panic!("{other:?}"),
        }
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut feed = Feed::spawn(1, move |out| client(refused, out));
        assert!(matches!(drain(&mut feed).1, Poll::Failed(_)));
    }

    #[test]
    fn a_full_channel_holds_the_client_back() {
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let mut feed: Feed<usize> = Feed::spawn(3, move |out| async move {
            for i in 0..1_000 {
                if out.send(i).await.is_err() {
                    return Ok(());
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        // However long the client runs, it cannot get more than the channel ahead.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            sent.load(Ordering::SeqCst) <= 3,
            "{}",
            sent.load(Ordering::SeqCst)
        );
        let mut taken = Vec::new();
        while let Poll::Item(i) = feed.poll_timeout(Duration::from_secs(10)) {
            taken.push(i);
        }
        assert_eq!(taken, (0..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_the_feed_stops_the_client() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = Flag(stopped.clone());
        let feed: Feed<()> = Feed::spawn(1, move |_out| async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            Ok(())
        });
        drop(feed);
        for _ in 0..1_000 {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the client kept running after its feed was dropped");
    }
}
