//! The admin endpoint (feature `admin`): a small HTTP/1.1 server, on its own
//! thread, that shows what a server is doing.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text: counters per listener, refusals by reason, accept errors by errno, the handler-duration histogram, the drain state, build info |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while accepting, 503 from the moment a drain starts |
//! | `GET /` | a self-contained status page (listeners, totals, open and recently closed connections), refreshed every second |
//! | `GET /api/stats` | the listeners and totals as JSON |
//! | `GET /api/connections?limit=N&closed=N` | open connections, most recently active first (`limit` default 500, at most 10,000; the true count beside them) and the last closed ones (default 100), as JSON |
//!
//! It is separate from the data plane: one thread with a tokio
//! current-thread runtime and hyper, at most
//! [`AdminConfig::max_connections`] connections (more are closed at once),
//! a header read timeout and an idle timeout. Unless
//! [`AdminConfig::public`] is set, it listens on loopback only and answers
//! only requests whose `Host` is `localhost`, `127.0.0.1`, `[::1]` or its
//! own address, which defeats DNS rebinding (a web page on an attacker's
//! name that resolves to 127.0.0.1). Only `GET` and `HEAD` are served:
//! nothing here changes the server.
//!
//! ## What the server supplies
//!
//! [`start`] takes a [`Source`]: something that can take a
//! [`Snapshot`] of the server on demand, and report its [`ServeState`]
//! cheaply. The engine implements it; a closure `Fn() -> Snapshot` is a
//! `Source` too (tests use fabricated snapshots that way). A source must:
//!
//! - return quickly, from any thread, without blocking the data plane (read
//!   per-worker atomics or shards and add them up with
//!   [`Counters::add`](crate::stats::Counters::add); never take a lock a
//!   connection holds while it does I/O);
//! - fill [`Snapshot::open_connections`] with the true count, even when it
//!   lists fewer connections than that (it may list at most
//!   [`Detail::connections`], the most recently active ones; the endpoint
//!   sorts and cuts again anyway);
//! - report [`ServeState::Draining`] from the moment a drain starts (then
//!   `/readyz` answers 503), and stop the admin endpoint
//!   ([`AdminHandle::stop`] or drop) when serving ends. The endpoint keeps
//!   no long-lived stream open (the page polls), so stopping takes at most
//!   [`AdminConfig::stop_timeout`] (plus one second of grace for a source
//!   call in progress; a source call that never returns leaves the admin
//!   thread behind rather than hanging the stop).
//!
//! ```no_run
//! use std::sync::Arc;
//! use sockserv::admin::{self, AdminConfig};
//! use sockserv::stats::Snapshot;
//!
//! let handle = admin::start(AdminConfig::new("127.0.0.1:9100"), Arc::new(Snapshot::default))?;
//! println!("admin {}", handle.url());
//! # Ok::<(), sockserv::Error>(())
//! ```

mod http;
mod json;
mod metrics;
mod page;

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::stats::{ServeState, Snapshot};

pub use json::{DEFAULT_CLOSED, DEFAULT_CONNECTIONS, MAX_CLOSED, MAX_CONNECTIONS};
pub use metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;

/// How the admin endpoint listens and what it tolerates.
///
/// Start from [`AdminConfig::new`] and change fields as needed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminConfig {
    /// `HOST:PORT` to listen on (`127.0.0.1:9100`, `[::1]:0`,
    /// `localhost:9100`). Port 0 picks a free port
    /// ([`AdminHandle::local_addr`] tells which).
    pub addr: String,
    /// Allow a non-loopback address, and answer requests with any `Host`.
    /// Off by default: the endpoint shows peers' addresses and traffic.
    pub public: bool,
    /// At most this many admin connections at once; one more is closed as
    /// soon as it is accepted (after a best-effort 503). Default 16.
    pub max_connections: usize,
    /// A request's headers must arrive within this time of the connection
    /// waiting for them, or the connection is closed. Default 10 s.
    pub request_timeout: Duration,
    /// A connection with no byte read or written for this long is closed:
    /// an idle keep-alive connection, or a client that stopped reading a
    /// response. Default 30 s.
    pub idle_timeout: Duration,
    /// [`AdminHandle::stop`] lets responses in progress finish for at most
    /// this long, then closes every admin connection. Default 1 s.
    pub stop_timeout: Duration,
}

impl AdminConfig {
    /// The defaults, listening on `addr`.
    pub fn new(addr: impl Into<String>) -> AdminConfig {
        AdminConfig {
            addr: addr.into(),
            public: false,
            max_connections: 16,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(1),
        }
    }
}

/// How much of a snapshot a request needs; a [`Source`] may leave out what
/// is not asked for (the endpoint never shows more than this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Detail {
    /// At most this many entries in [`Snapshot::connections`], the most
    /// recently active ones (0: none; [`Snapshot::open_connections`] must
    /// still be the true count).
    pub connections: usize,
    /// At most this many entries in [`Snapshot::closed`].
    pub closed: usize,
}

impl Detail {
    /// Counters and state only (for `/metrics` and `/api/stats`).
    pub const COUNTERS: Detail = Detail {
        connections: 0,
        closed: 0,
    };
}

/// Where the admin endpoint gets its data: the server's snapshot and state.
///
/// A closure `Fn() -> Snapshot` is a `Source` (it always gives the whole
/// snapshot; the endpoint cuts it).
pub trait Source: Send + Sync {
    /// A snapshot of the server now, with at least what `detail` asks for.
    fn snapshot(&self, detail: &Detail) -> Snapshot;

    /// The serving state now (what `/readyz` reports). Called on every
    /// `/readyz`, so a source should answer it without building a snapshot;
    /// the default does build one.
    fn state(&self) -> ServeState {
        self.snapshot(&Detail::COUNTERS).state
    }
}

impl<F> Source for F
where
    F: Fn() -> Snapshot + Send + Sync,
{
    fn snapshot(&self, _detail: &Detail) -> Snapshot {
        self()
    }
}

/// The Prometheus text of a snapshot (what `/metrics` serves), for a
/// program that exposes it some other way.
pub fn render_metrics(snap: &Snapshot) -> String {
    metrics::render(snap)
}

/// The JSON of `/api/stats` for a snapshot.
pub fn render_stats_json(snap: &Snapshot) -> String {
    json::stats(snap)
}

/// The JSON of `/api/connections?limit=LIMIT&closed=CLOSED` for a snapshot
/// (no maximum applied here).
pub fn render_connections_json(snap: &Snapshot, limit: usize, closed: usize) -> String {
    json::connections(snap, limit, closed)
}

/// A running admin endpoint. [`stop`](AdminHandle::stop) it, or drop it:
/// either stops it and waits (bounded by [`AdminConfig::stop_timeout`]) for
/// its thread.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    /// A duplicate of the listening socket, for [`AdminHandle::listener_fd`].
    lent: std::os::fd::OwnedFd,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected (or sent to) when the thread is about to end.
    done: mpsc::Receiver<()>,
    /// How long a stop waits for the thread.
    wait: Duration,
}

impl AdminHandle {
    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, to pass to a process that takes over (see
    /// [`start_on`]); it stays open as long as this handle.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.lent.as_fd()
    }

    /// `http://HOST:PORT` (no trailing slash), the form of the CLI's
    /// `admin http://127.0.0.1:9100` line.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening, lets responses in progress finish (bounded), closes
    /// every admin connection and waits for the thread (bounded too).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            match self.done.recv_timeout(self.wait) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = t.join();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                    "the admin endpoint did not stop within {:?} (a status source call does not return); leaving its thread",
                    self.wait
                ),
            }
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds the admin endpoint and serves it on a new thread.
///
/// Fails with a one-line error if the address does not parse or resolve,
/// is not loopback while [`AdminConfig::public`] is off, or cannot be bound.
pub fn start(config: AdminConfig, source: Arc<dyn Source>) -> Result<AdminHandle, Error> {
    let addrs: Vec<SocketAddr> = config
        .addr
        .to_socket_addrs()
        .map_err(|e| {
            Error::config(format!(
                "invalid admin address {:?} (expected HOST:PORT): {}",
                config.addr,
                crate::error::describe(&e)
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::config(format!(
            "admin address {:?} resolves to no address",
            config.addr
        )));
    }
    if !config.public {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(not_loopback(a));
        }
    }
    let mut last_err = None;
    let mut bound = None;
    for a in &addrs {
        match StdListener::bind(a) {
            Ok(l) => {
                bound = Some(l);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let listener = match bound {
        Some(l) => l,
        None => {
            return Err(Error::socket(
                format!("cannot listen on admin address {}", config.addr),
                last_err.unwrap_or_else(|| io::Error::other("no address")),
            ))
        }
    };
    start_on(config, listener, source)
}

fn not_loopback(a: &SocketAddr) -> Error {
    Error::config(format!(
        "admin address {a} is not loopback; the admin endpoint listens on other interfaces only when made public"
    ))
}

/// Serves the admin endpoint on a listening socket opened elsewhere: one a
/// process inherited from the one it replaces (a binary upgrade), so the
/// endpoint keeps its address — a load balancer's health check on a fixed
/// port goes on being answered across the upgrade. `config.addr` is only
/// for messages; the loopback rule applies to the socket's own address.
pub fn start_on(
    config: AdminConfig,
    listener: StdListener,
    source: Arc<dyn Source>,
) -> Result<AdminHandle, Error> {
    if config.max_connections == 0 {
        return Err(Error::config("admin max_connections must be at least 1"));
    }
    let addr = listener
        .local_addr()
        .map_err(|e| Error::socket("cannot read the admin address", e))?;
    if !config.public && !addr.ip().is_loopback() {
        return Err(not_loopback(&addr));
    }
    // Kept for `listener_fd`, whatever becomes of the accept loop's copy.
    let lent = listener
        .try_clone()
        .map_err(|e| Error::socket("cannot duplicate the admin listener", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::socket("cannot set the admin listener non-blocking", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::socket("cannot start the admin runtime", e))?;

    let ctx = Arc::new(http::Ctx {
        source,
        bound: addr,
        any_host: config.public,
    });
    let (tx, rx) = watch::channel(false);
    let (done_tx, done) = mpsc::channel();
    let wait = config.stop_timeout + Duration::from_secs(1);
    let thread = std::thread::Builder::new()
        .name("sockserv-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, ctx, config, rx).await,
                    Err(e) => tracing::error!("admin endpoint: {}", crate::error::describe(&e)),
                }
            });
            // Dropping the runtime cancels connections still open after the
            // stop timeout.
            drop(runtime);
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::socket("cannot start the admin thread", e))?;
    Ok(AdminHandle {
        addr,
        lent: lent.into(),
        stop: Some(tx),
        thread: Some(thread),
        done,
        wait,
    })
}

/// The accept loop: until the stop signal, then a bounded wait for the
/// connections.
async fn serve(
    listener: TcpListener,
    ctx: Arc<http::Ctx>,
    config: AdminConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let config = Arc::new(config);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(10);
                if conns.len() >= config.max_connections {
                    refuse(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(
                    stream,
                    Arc::clone(&ctx),
                    Arc::clone(&config),
                    stop.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and the like: wait, so as not to spin (bounded
                // back-off), and keep serving the connections we have.
                tracing::warn!(
                    "admin endpoint: accept failed: {}",
                    crate::error::describe(&e)
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    let finish = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(config.stop_timeout, finish).await;
    conns.abort_all();
}

/// One connection over the limit: closed at once, after a best-effort 503
/// (what it already sent is read first, so that the close is a FIN the
/// client can read the 503 before, not a reset).
fn refuse(stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 27\r\nconnection: close\r\n\r\ntoo many admin connections\n";
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(BUSY);
    drop(stream);
}

/// Serves one connection until it ends, idles out, or the stop signal
/// (then a graceful close: the response in progress is finished).
async fn connection(
    stream: TcpStream,
    ctx: Arc<http::Ctx>,
    config: Arc<AdminConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        last: Arc::clone(&last),
    });
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(http::respond(&ctx, &req)) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.request_timeout)
        .keep_alive(true)
        .max_buf_size(16 * 1024);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // A connection accepted moments before the stop gets until 100 ms
    // after its accept before the graceful close: its first request may be
    // on its way (a health check meeting the handoff of an upgrade, when
    // the successor answers on the same socket), and closing an idle
    // connection is at once.
    let young_until = started + Duration::from_millis(100);
    let mut stopping = *stop.borrow();
    let mut close_at = stopping.then_some(young_until);
    loop {
        let idle_until =
            started + Duration::from_millis(last.load(Ordering::Relaxed)) + config.idle_timeout;
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(idle_until.into()) => {
                let now_until = started
                    + Duration::from_millis(last.load(Ordering::Relaxed))
                    + config.idle_timeout;
                if Instant::now() >= now_until {
                    return; // dropped: closed
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if Instant::now() < young_until {
                    close_at = Some(young_until);
                } else {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(close_at.unwrap_or(started).into()), if close_at.is_some() => {
                close_at = None;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A stream that notes when it last moved a byte (milliseconds since
/// `started`), for the idle timeout.
struct Tracked {
    inner: TcpStream,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis();
        self.last
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
