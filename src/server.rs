//! The server: one lifecycle for every transport and strategy.
//!
//! ```text
//!   bind ──► serve_forever ──► accept ──► verify_request ──► engine.dispatch
//!                 ▲               │  (EMFILE: back off)          │
//!                 │               ▼                              ▼
//!          service_actions   recv datagram ───────────► handler (stream /
//!                                                          message / datagram)
//!   shutdown(): stop accepting ─► drain (replies written, idle closed)
//!               ─► drain deadline: cut the rest ─► serve_forever returns
//! ```
//!
//! The accept loop runs on the thread that calls [`Server::serve_forever`]
//! and waits in `epoll` on every listener plus a waker, so a shutdown from
//! another thread is seen at once, with no polling interval.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::addr::{Address, Endpoint};
use crate::conn::Connection;
use crate::dgram::{DatagramJob, DgramSocket, MAX_DATAGRAM};
use crate::error::Error;
use crate::frame::Framing;
use crate::handler::{DatagramHandler, Handler, MessageHandler, StreamHandler};
use crate::hooks::{Failure, Hooks};
use crate::shutdown::{Shared, ShutdownHandle};
use crate::socket::{self, Listener, SocketOptions, Stream};
use crate::strategy::{self, Engine, Strategy, Work};

const WAKE: Token = Token(usize::MAX);

/// Datagrams one listener may take per turn of the serve loop before the
/// others get theirs.
const DATAGRAMS_PER_TURN: usize = 256;

/// Timeouts and limits that protect a server from its peers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Close a connection that sends nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Fail a write that cannot make progress for this long (a peer that
    /// never reads).
    pub write_timeout: Option<Duration>,
    /// After the last reply and a half-close, how long to keep reading and
    /// discarding before closing (lingering close).
    pub linger: Duration,
    /// How long a shutdown waits for connections to finish before cutting
    /// them.
    pub drain_timeout: Duration,
    /// Close a connection whose frame has started but not finished for this
    /// long (slow senders, slowloris). Message handlers only.
    pub read_timeout: Option<Duration>,
    /// Most connections open at once; what happens at the limit is
    /// [`over_limit`](Self::over_limit). Threads, tasks and buffers are
    /// bounded by it in every strategy.
    pub max_connections: Option<usize>,
    /// Most connections open at once from one IP address; over it a new
    /// connection is accepted, sent [`limit_message`](Self::limit_message)
    /// if set, and closed.
    pub max_connections_per_ip: Option<usize>,
    /// At the global limit: stop accepting (the kernel backlog holds the
    /// rest) or accept and close.
    pub over_limit: OverLimit,
    /// Sent (best effort) to a connection refused by a limit.
    pub limit_message: Option<Vec<u8>>,
}

/// What the server does with new connections at its connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverLimit {
    /// Stop accepting until a connection finishes; new clients wait in the
    /// kernel's backlog (tcpserver's and socat's behaviour). The default.
    #[default]
    Wait,
    /// Accept, send the limit message if any, and close at once (ncat's and
    /// systemd's behaviour): clients learn at once that the server is full.
    Close,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: None,
            write_timeout: Some(Duration::from_secs(30)),
            linger: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            read_timeout: None,
            max_connections: None,
            max_connections_per_ip: None,
            over_limit: OverLimit::Wait,
            limit_message: None,
        }
    }
}

/// Everything the engines need, shared read-only.
pub(crate) struct Config {
    pub(crate) handler: Handler,
    pub(crate) framing: Framing,
    pub(crate) hooks: Hooks,
    pub(crate) limits: Limits,
    pub(crate) options: SocketOptions,
    pub(crate) shared: Arc<Shared>,
}

/// Configures and binds a [`Server`].
///
/// ```no_run
/// use sockserv::{Server, Strategy, handler::message_fn};
///
/// let server = Server::builder()
///     .listen("tcp://127.0.0.1:9999")
///     .strategy(Strategy::Threads)
///     .message(message_fn(|msg, reply| {
///         reply.send(&msg.to_ascii_uppercase())?;
///         Ok(())
///     }))
///     .bind()?;
/// server.serve_forever()?;
/// # Ok::<(), sockserv::Error>(())
/// ```
#[must_use]
pub struct Builder {
    endpoints: Vec<Result<Endpoint, Error>>,
    handler: Option<Handler>,
    framing: Framing,
    strategy: Strategy,
    options: SocketOptions,
    hooks: Hooks,
    limits: Limits,
    timeout: Option<Duration>,
    service_interval: Option<Duration>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            endpoints: Vec::new(),
            handler: None,
            framing: Framing::raw(),
            strategy: Strategy::Auto,
            options: SocketOptions::default(),
            hooks: Hooks::default(),
            limits: Limits::default(),
            timeout: None,
            service_interval: None,
        }
    }
}

/// Anything that names an endpoint: a string to parse or an [`Endpoint`].
pub trait IntoEndpoint {
    fn into_endpoint(self) -> Result<Endpoint, Error>;
}

impl IntoEndpoint for Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(self)
    }
}

impl IntoEndpoint for &Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(self.clone())
    }
}

impl IntoEndpoint for &str {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(self.parse()?)
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self) -> Result<Endpoint, Error> {
        Ok(self.parse()?)
    }
}

impl Builder {
    /// Adds an address to listen on; call it again for more listeners.
    pub fn listen(mut self, endpoint: impl IntoEndpoint) -> Self {
        self.endpoints.push(endpoint.into_endpoint());
        self
    }

    /// Serves each connection with a stream handler.
    pub fn stream(mut self, handler: impl StreamHandler) -> Self {
        self.handler = Some(Handler::stream(handler));
        self
    }

    /// Serves each message (frame or datagram) with a message handler.
    pub fn message(mut self, handler: impl MessageHandler) -> Self {
        self.handler = Some(Handler::message(handler));
        self
    }

    /// Serves each connection with an async stream handler.
    pub fn async_stream(mut self, handler: impl crate::handler::AsyncStreamHandler) -> Self {
        self.handler = Some(Handler::async_stream(handler));
        self
    }

    /// Serves each datagram with a datagram handler.
    pub fn datagram(mut self, handler: impl DatagramHandler) -> Self {
        self.handler = Some(Handler::datagram(handler));
        self
    }

    /// Sets the handler of any kind.
    pub fn handler(mut self, handler: Handler) -> Self {
        self.handler = Some(handler);
        self
    }

    /// How stream bytes are cut into messages for a message handler
    /// (default: raw, each read is one message).
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Where connections run (default: [`Strategy::Auto`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Socket options for every listener.
    pub fn socket_options(mut self, options: SocketOptions) -> Self {
        self.options = options;
        self
    }

    /// Timeouts and limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// `verify_request`: return false to refuse a peer before any handler
    /// runs (the connection is closed at once).
    pub fn verify_request(mut self, f: impl Fn(&Address) -> bool + Send + Sync + 'static) -> Self {
        self.hooks.verify_request = Some(Arc::new(f));
        self
    }

    /// `handle_error`: called with the peer and what failed whenever a
    /// handler errs or panics, or a peer breaks the framing. The server
    /// keeps serving. The default logs one line.
    pub fn handle_error(mut self, f: impl Fn(&Address, &Failure) + Send + Sync + 'static) -> Self {
        self.hooks.handle_error = Arc::new(f);
        self
    }

    /// `handle_timeout`: called when [`Server::handle_request`] waited
    /// [`timeout`](Self::timeout) and nothing came.
    pub fn handle_timeout(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hooks.handle_timeout = Some(Arc::new(f));
        self
    }

    /// `service_actions`: called once per turn of the serve loop (after
    /// each batch of accepts), and at least every
    /// [`service_interval`](Self::service_interval) if one is set.
    pub fn service_actions(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hooks.service_actions = Some(Arc::new(f));
        self
    }

    /// The longest `service_actions` may wait while nothing happens.
    pub fn service_interval(mut self, every: Duration) -> Self {
        self.service_interval = Some(every);
        self
    }

    /// How long [`Server::handle_request`] waits (Python's `timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Opens every listener and starts the strategy's workers.
    pub fn bind(self) -> Result<Server, Error> {
        let handler = self.handler.ok_or_else(|| {
            Error::config("no handler: call .stream(), .message() or .datagram()")
        })?;
        if self.endpoints.is_empty() {
            return Err(Error::config("no address to listen on: call .listen(ADDR)"));
        }
        let mut endpoints = Vec::new();
        for ep in self.endpoints {
            endpoints.push(ep?);
        }
        for ep in &endpoints {
            let stream = ep.transport().is_stream();
            match (&handler, stream) {
                (Handler::Stream(_) | Handler::AsyncStream(_), false) => {
                    return Err(Error::config(format!(
                        "a stream handler cannot serve the datagram socket {ep}"
                    )))
                }
                (Handler::Datagram(_), true) => {
                    return Err(Error::config(format!(
                        "a datagram handler cannot serve the stream socket {ep}"
                    )))
                }
                _ => {}
            }
        }
        let strategy = self.strategy.resolve_for(&handler);
        match strategy {
            Strategy::Pool { workers: 0, .. }
            | Strategy::Async { workers: 0 }
            | Strategy::AsyncMultiThread { workers: 0 } => {
                return Err(Error::config("a strategy needs at least one worker"))
            }
            Strategy::Pool { queue: 0, .. } => {
                return Err(Error::config("a pool needs a queue of at least one"))
            }
            _ => {}
        }
        let mut listeners = Vec::new();
        for ep in &endpoints {
            listeners.push(socket::bind(ep, &self.options)?);
        }
        let shared = Arc::new(Shared::new(self.limits.drain_timeout)?);
        let config = Arc::new(Config {
            handler,
            framing: self.framing,
            hooks: self.hooks,
            limits: self.limits,
            options: self.options,
            shared: Arc::clone(&shared),
        });
        let poll =
            Poll::new().map_err(|e| Error::socket("cannot create the accept loop's poller", e))?;
        let waker = Arc::new(
            mio::Waker::new(poll.registry(), WAKE)
                .map_err(|e| Error::socket("cannot create the accept loop's waker", e))?,
        );
        let engine = strategy::engine(strategy, &config)
            .map_err(|e| Error::socket(format!("cannot start the {strategy} workers"), e))?;
        let engine: Arc<dyn Engine> = Arc::from(engine);
        {
            let mut wakers = shared.wakers.lock().unwrap_or_else(|p| p.into_inner());
            let w = Arc::clone(&waker);
            wakers.push(Box::new(move || {
                let _ = w.wake();
            }));
            let e = Arc::clone(&engine);
            wakers.push(Box::new(move || e.wake()));
        }
        let mut sources = Vec::new();
        let mut bound = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            bound.push(l.local_endpoint()?);
            let source = Source::new(l)?;
            let adopted = match &source {
                Source::Dgram(s, _) => engine.adopt_datagram_socket(s),
                _ => false,
            };
            if !adopted {
                poll.registry().register(
                    &mut SourceFd(&source.raw_fd()),
                    Token(i),
                    Interest::READABLE,
                )?;
            }
            sources.push(ListenerState {
                source,
                retry_at: None,
                error_burst: 0,
                backoff: Duration::ZERO,
                adopted,
                at_limit: false,
            });
        }
        Ok(Server {
            waker,
            dgram_buf: vec![0u8; MAX_DATAGRAM],
            drained: false,
            sources,
            bound,
            config,
            engine,
            shared,
            poll,
            strategy,
            timeout: self.timeout,
            service_interval: self.service_interval,
        })
    }
}

/// A listening socket as the accept loop holds it.
enum Source {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, socket::PathGuard),
    /// The path guard removes a Unix datagram socket's file on close.
    Dgram(
        Arc<DgramSocket>,
        #[allow(dead_code)] Option<socket::PathGuard>,
    ),
}

impl Source {
    fn new(l: Listener) -> io::Result<Source> {
        Ok(match l {
            Listener::Tcp(t) => {
                t.set_nonblocking(true)?;
                Source::Tcp(t)
            }
            Listener::Unix(u, g) => {
                u.set_nonblocking(true)?;
                Source::Unix(u, g)
            }
            Listener::Udp(u) => {
                let s = DgramSocket::Udp(u);
                s.set_nonblocking(true)?;
                Source::Dgram(Arc::new(s), None)
            }
            Listener::UnixDgram(u, g) => {
                let s = DgramSocket::Unix(u);
                s.set_nonblocking(true)?;
                Source::Dgram(Arc::new(s), Some(g))
            }
        })
    }

    fn raw_fd(&self) -> i32 {
        match self {
            Source::Tcp(t) => t.as_raw_fd(),
            Source::Unix(u, _) => u.as_raw_fd(),
            Source::Dgram(s, _) => s.as_raw_fd(),
        }
    }
}

struct ListenerState {
    source: Source,
    /// Set after a resource error (EMFILE, ...): retry accepting then.
    retry_at: Option<Instant>,
    error_burst: u64,
    backoff: Duration,
    adopted: bool,
    /// Accepting is paused at the connection limit.
    at_limit: bool,
}

/// What [`Server::handle_request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// One connection or datagram was dispatched.
    Request,
    /// The timeout passed first; `handle_timeout` was called.
    Timeout,
    /// The server is shutting down.
    Shutdown,
}

/// A bound server, ready to serve.
pub struct Server {
    waker: Arc<mio::Waker>,
    /// Receive buffer for datagrams (one datagram is copied out per job).
    dgram_buf: Vec<u8>,
    /// Set once the drain has run (by `serve_forever` or by drop).
    drained: bool,
    sources: Vec<ListenerState>,
    bound: Vec<Endpoint>,
    config: Arc<Config>,
    engine: Arc<dyn Engine>,
    shared: Arc<Shared>,
    poll: Poll,
    strategy: Strategy,
    timeout: Option<Duration>,
    service_interval: Option<Duration>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoints", &self.bound)
            .field("strategy", &self.strategy)
            .finish()
    }
}

/// Accept errors that concern one connection only: skip it, keep going.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED)
            | Some(libc::ECONNRESET)
            | Some(libc::EPROTO)
            | Some(libc::EPERM)
            | Some(libc::EINTR)
    )
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The endpoints actually bound, in the order given (port 0 resolved).
    pub fn local_endpoints(&self) -> &[Endpoint] {
        &self.bound
    }

    /// The first bound endpoint.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.bound[0]
    }

    /// The strategy in use (with `Auto` resolved).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// A handle that stops this server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until a shutdown is requested, then drains: stops accepting,
    /// lets connections write the replies to everything they have read,
    /// closes idle ones, and after the drain timeout cuts the rest. Returns
    /// once that is done.
    pub fn serve_forever(mut self) -> Result<(), Error> {
        let _serving = self.shared.enter_serving();
        let mut events = Events::with_capacity(256);
        let result = loop {
            if self.shared.stop.is_triggered() {
                break Ok(());
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(Error::Io(e));
            }
            let mut ready: Vec<usize> = events
                .iter()
                .filter(|e| e.token() != WAKE)
                .map(|e| e.token().0)
                .collect();
            let now = Instant::now();
            for (i, l) in self.sources.iter().enumerate() {
                if (l.at_limit || l.retry_at.is_some_and(|t| t <= now)) && !ready.contains(&i) {
                    ready.push(i);
                }
            }
            for i in ready {
                self.drain_listener(i, usize::MAX);
            }
            if let Some(f) = &self.config.hooks.service_actions {
                f();
            }
        };
        self.finish_drain();
        result
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let retry = self
            .sources
            .iter()
            .filter_map(|l| l.retry_at)
            .min()
            .map(|t| t.saturating_duration_since(now));
        match (retry, self.service_interval) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles at most one request: waits up to the builder's `timeout` for
    /// a connection or datagram, dispatches it to the strategy and returns.
    /// Calls `handle_timeout` if nothing came (Python's `handle_request`).
    pub fn handle_request(&mut self) -> Result<Handled, Error> {
        if self.sources.iter().any(|l| l.adopted) {
            return Err(Error::config(
                "handle_request cannot take single datagrams from a socket the async strategy \
                 serves itself; use serve_forever, or a blocking strategy",
            ));
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut events = Events::with_capacity(16);
        loop {
            if self.shared.stop.is_triggered() {
                return Ok(Handled::Shutdown);
            }
            // Try every listener first: epoll here is edge-triggered, so a
            // connection left over from an earlier call has no new edge.
            for i in 0..self.sources.len() {
                if self.drain_listener(i, 1) > 0 {
                    return Ok(Handled::Request);
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                if let Some(f) = &self.config.hooks.handle_timeout {
                    f();
                }
                return Ok(Handled::Timeout);
            }
            match self.poll.poll(&mut events, left) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Accepts (or receives) from listener `i` until it would block or
    /// `max` requests were taken. Returns how many were dispatched.
    fn drain_listener(&mut self, i: usize, max: usize) -> usize {
        let mut taken = 0;
        let is_stream = matches!(self.sources[i].source, Source::Tcp(_) | Source::Unix(..));
        while taken < max && !self.shared.stop.is_triggered() {
            if self.sources[i].adopted {
                return 0;
            }
            if !is_stream && taken >= DATAGRAMS_PER_TURN {
                // Let the other listeners and service_actions have a turn;
                // come back at once (epoll here is edge-triggered).
                self.sources[i].retry_at = Some(Instant::now());
                break;
            }
            let limit_hit = if is_stream {
                self.at_limit()
            } else {
                // Datagram jobs in flight count against the same limit, so
                // a flood cannot start unbounded threads; the excess waits
                // in the socket buffer (and the kernel drops what overflows).
                self.config
                    .limits
                    .max_connections
                    .is_some_and(|max| self.shared.tracker.active() >= max)
            };
            if limit_hit {
                match self.config.limits.over_limit {
                    OverLimit::Close if is_stream => match self.refuse_one(i) {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) if is_connection_error(&e) => continue,
                        Err(e) => {
                            self.accept_failed(i, &e);
                            break;
                        }
                    },
                    _ => {
                        // Leave the connections in the kernel's backlog; the
                        // next connection to finish wakes this loop.
                        let waker = Arc::clone(&self.waker);
                        self.shared.tracker.pause_until_free(|| {
                            Box::new(move || {
                                let _ = waker.wake();
                            })
                        });
                        if self.at_limit() || !is_stream {
                            self.sources[i].at_limit = true;
                            break;
                        }
                    }
                }
            }
            self.sources[i].at_limit = false;
            let work = match self.take_one(i) {
                Ok(Some(work)) => work,
                // Set up failed for this connection only; it is closed.
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.sources[i].retry_at = None;
                    break;
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    self.accept_failed(i, &e);
                    break;
                }
            };
            let st = &mut self.sources[i];
            if st.error_burst > 0 {
                tracing::info!("accepting again after {} failed attempts", st.error_burst);
            }
            st.retry_at = None;
            st.error_burst = 0;
            st.backoff = Duration::ZERO;
            let verified = match &work {
                Work::Conn(c) => self.config.hooks.verify(c.peer_addr()),
                Work::Datagram(d) => self.config.hooks.verify(&d.peer),
            };
            taken += 1;
            if verified {
                self.engine.dispatch(work);
            } else {
                tracing::debug!("verify_request refused a peer");
            }
        }
        taken
    }

    /// Accepts one connection (or receives one datagram) from listener `i`.
    /// `Err` is the listener's error (would block, EMFILE, ...); `Ok(None)`
    /// means one accepted connection could not be set up and was closed,
    /// which concerns that connection only.
    fn take_one(&mut self, i: usize) -> io::Result<Option<Work>> {
        match &self.sources[i].source {
            Source::Tcp(l) => {
                let (s, peer) = l.accept()?;
                let setup = (|| {
                    if self.config.options.nodelay {
                        s.set_nodelay(true)?;
                    }
                    s.local_addr()
                })();
                match setup {
                    Ok(local) => Ok(self
                        .admit(Stream::Tcp(s), Address::Inet(peer), Address::Inet(local))
                        .ok()),
                    Err(e) => {
                        tracing::debug!(%peer, "cannot set up an accepted connection: {e}");
                        Ok(None)
                    }
                }
            }
            Source::Unix(l, g) => {
                let (s, peer) = l.accept()?;
                let local = Address::Unix(Some(g.path().to_path_buf()));
                Ok(self
                    .admit(Stream::Unix(s), Address::from_unix(&peer), local)
                    .ok())
            }
            Source::Dgram(sock, _) => {
                let sock = Arc::clone(sock);
                let (n, peer) = sock.try_recv(&mut self.dgram_buf)?;
                Ok(Some(Work::Datagram(DatagramJob {
                    data: self.dgram_buf[..n].to_vec(),
                    peer,
                    socket: sock,
                    _guard: self.shared.tracker.enter(None, None),
                })))
            }
        }
    }

    /// EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued
    /// in the kernel. Back off (5 ms doubling to 1 s, as Go does), log once
    /// per burst, keep serving the connections already open.
    fn accept_failed(&mut self, i: usize, e: &io::Error) {
        let st = &mut self.sources[i];
        if st.error_burst == 0 {
            tracing::error!(
                "cannot accept on {}: {}; backing off",
                self.bound[i],
                crate::error::describe(e)
            );
        }
        st.error_burst += 1;
        st.backoff = if st.backoff.is_zero() {
            Duration::from_millis(5)
        } else {
            (st.backoff * 2).min(Duration::from_secs(1))
        };
        st.retry_at = Some(Instant::now() + st.backoff);
    }

    fn at_limit(&self) -> bool {
        self.config
            .limits
            .max_connections
            .is_some_and(|max| self.shared.tracker.connections() >= max)
    }

    /// Accepts one waiting connection only to refuse it (global limit,
    /// close mode). `Ok(false)`: nobody was waiting.
    fn refuse_one(&self, i: usize) -> io::Result<bool> {
        let accepted = match &self.sources[i].source {
            Source::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Source::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Source::Dgram(..) => return Ok(false),
        };
        match accepted {
            Ok(stream) => {
                tracing::info!(
                    "refused a connection: at the limit of {} connections",
                    self.config.limits.max_connections.unwrap_or(0)
                );
                self.send_refusal(&stream);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn send_refusal(&self, stream: &Stream) {
        use std::io::Write;
        if let Some(msg) = &self.config.limits.limit_message {
            let _ = stream.set_nonblocking(true);
            let _ = (&*stream).write(msg);
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }

    /// Registers an accepted connection, or refuses it at the per-IP limit
    /// (`Err`: the connection was closed).
    fn admit(&self, stream: Stream, peer: Address, local: Address) -> io::Result<Work> {
        if let (Some(max), Some(ip)) = (self.config.limits.max_connections_per_ip, peer.ip()) {
            let open = self.shared.tracker.connections_from(ip);
            if open >= max {
                tracing::info!(%peer, "refused: {open} connections from this address (limit {max})");
                self.send_refusal(&stream);
                return Err(io::Error::from_raw_os_error(libc::ECONNABORTED));
            }
        }
        Connection::new(stream, peer, local, Arc::clone(&self.shared)).map(Work::Conn)
    }

    /// The drain: stop accepting (the listeners close when `self` drops),
    /// wait for connections up to the drain timeout (or a forced stop), cut
    /// the rest, stop the engine.
    fn finish_drain(&mut self) {
        if self.drained {
            return;
        }
        self.drained = true;
        self.shared.begin_stop();
        self.engine.wake();
        // Close listeners now so new clients are refused rather than queued.
        for st in self.sources.drain(..) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&st.source.raw_fd()));
            drop(st);
        }
        let deadline = Instant::now() + self.config.limits.drain_timeout;
        let tracker = &self.shared.tracker;
        loop {
            let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
            if tracker.wait_idle(Some(step)) {
                break;
            }
            if self.shared.force.is_triggered() || Instant::now() >= deadline {
                break;
            }
        }
        if tracker.active() > 0 {
            self.shared.begin_force();
            self.engine.wake();
            let cut = tracker.cut_all();
            // Give the cut handlers a moment to notice and return.
            tracker.wait_idle(Some(Instant::now() + Duration::from_millis(500)));
            let left = tracker.active();
            if cut > 0 || left > 0 {
                tracing::warn!(
                    "drain timeout: cut {cut} connection(s); {left} handler(s) still running were left behind"
                );
            }
        }
        self.engine
            .stop(Instant::now() + Duration::from_millis(500));
        // The wakers hold the engine, which holds the config, which holds
        // the shared state: break the cycle so everything is freed.
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Dropping a server is Python's `server_close()`: the listeners close and,
/// if `serve_forever` did not already do it, the connections in flight are
/// drained (up to the drain timeout) and the engine's threads stop.
impl Drop for Server {
    fn drop(&mut self) {
        self.finish_drain();
    }
}
