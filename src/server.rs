//! The server: one lifecycle for every transport and strategy.
//!
//! ```text
//!   bind ──► serve_forever ──► accept ──► gate (limits, verify) ──► engine
//!                 ▲               │  (EMFILE: back off)                │
//!                 │               ▼                                    ▼
//!          service_actions   datagram ──► checks ─────────► handler (stream /
//!                                                              message / datagram)
//!   shutdown(): stop accepting ─► serve the backlog ─► drain (replies
//!               written, idle closed) ─► at the grace: cut the rest ─► return
//! ```
//!
//! Where accepting happens depends on the engine: the blocking strategies
//! accept on the thread that calls [`Server::serve_forever`] (waiting in
//! epoll on every listener plus a waker, so a shutdown from another thread
//! is seen at once); event loops accept in each loop, where the connection
//! will be served. Both go through the same gate (`crate::accept`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::accept::{Accepted, Acceptor, SharedListener, StreamListener};
use crate::addr::{Address, Endpoint};
use crate::config::DatagramPolicy;
use crate::config::{DrainPolicy, Limits, Timeouts};
use crate::context::Context;
use crate::dgram::{DgramServer, DgramSocket};
use crate::driver::event_loop::EventLoops;
use crate::error::Error;
use crate::frame::Framing;
use crate::handler::{Handler, MessageHandler, StreamHandler};
use crate::hooks::{Failure, Hooks};
use crate::shutdown::{Shared, ShutdownHandle};
use crate::socket::{self, Listener, PathGuard, SocketOptions};
use crate::strategy::{pool::Workers, Engine, Strategy, Work};

const WAKE: Token = Token(usize::MAX);

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
    endpoints: Vec<Pending>,
    handler: Option<Handler>,
    framing: Framing,
    strategy: Strategy,
    options: SocketOptions,
    hooks: Hooks,
    limits: Limits,
    timeouts: Timeouts,
    drain: DrainPolicy,
    datagrams: DatagramPolicy,
    blocking: bool,
    proxy: Option<crate::proxy::Versions>,
    proxy_from: Vec<crate::rules::IpNet>,
    rules: crate::Rules,
    /// Time every handler call (for the handler-duration histogram).
    timing: bool,
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::AdminConfig>,
    timeout: Option<Duration>,
    service_interval: Option<Duration>,
    /// The one connection to serve instead of listeners (inetd).
    connected: Option<Result<crate::connected::Connected, Error>>,
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
            timeouts: Timeouts::default(),
            drain: DrainPolicy::default(),
            datagrams: DatagramPolicy::default(),
            blocking: false,
            proxy: None,
            proxy_from: Vec::new(),
            rules: crate::Rules::new(),
            timing: false,
            #[cfg(feature = "admin")]
            admin: None,
            timeout: None,
            service_interval: None,
            connected: None,
        }
    }
}

/// A listener the builder will have: an address to bind, or a socket
/// already open (inherited), or the error that stopped either.
enum Pending {
    Bind(Result<Endpoint, Error>),
    Open(crate::activation::InheritedSocket),
    Failed(Error),
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
        self.endpoints.push(Pending::Bind(endpoint.into_endpoint()));
        self
    }

    /// Adds every listening socket passed by the service manager
    /// (`LISTEN_FDS`, systemd socket activation), in descriptor order; see
    /// [`activation`](crate::activation). [`bind`](Self::bind) fails if none
    /// was passed to this process, or if one is not a usable listener.
    pub fn listen_inherited(mut self) -> Self {
        match crate::activation::take_listeners() {
            Ok(list) if list.is_empty() => self.endpoints.push(Pending::Failed(Error::config(
                "no inherited sockets: LISTEN_FDS and LISTEN_PID do not pass any to this process",
            ))),
            Ok(list) => self.endpoints.extend(list.into_iter().map(Pending::Open)),
            Err(e) => self.endpoints.push(Pending::Failed(e)),
        }
        self
    }

    /// Adds one listening socket opened elsewhere (a bound, listening
    /// stream socket or a bound datagram socket; checked as inherited
    /// sockets are, and made non-blocking and close-on-exec). A Unix
    /// socket's file is left in place when the server stops.
    pub fn listen_fd(mut self, fd: std::os::fd::OwnedFd) -> Self {
        self.endpoints.push(
            match crate::activation::InheritedSocket::from_fd(fd, None) {
                Ok(s) => Pending::Open(s),
                Err(e) => Pending::Failed(e),
            },
        );
        self
    }

    /// Adds a socket taken with
    /// [`activation::take_listeners`](crate::activation::take_listeners)
    /// (to pick some of them, or to split them between servers).
    pub fn listen_socket(mut self, socket: crate::activation::InheritedSocket) -> Self {
        self.endpoints.push(Pending::Open(socket));
        self
    }

    /// Serves one connection that is already open instead of listening:
    /// the connected stream socket inetd (or systemd's `Accept=yes`) passes
    /// as stdin. [`Server::serve_forever`] serves it on the calling thread,
    /// through the same access checks, pipeline, timeouts and drain as an
    /// accepted connection, and returns when it has ended (the strategy is
    /// always sequential: there is nothing else to serve). No
    /// [`listen`](Self::listen) beside it; [`bind`](Self::bind) fails if
    /// `fd` is not a connected stream socket.
    ///
    /// ```no_run
    /// use std::os::fd::{FromRawFd, OwnedFd};
    /// use sockserv::{handlers, Server};
    /// // SAFETY: under inetd, fd 0 is the connection and nothing else owns it.
    /// let stdin = unsafe { OwnedFd::from_raw_fd(0) };
    /// Server::builder().connected(stdin).message(handlers::Upper).bind()?.serve_forever()?;
    /// # Ok::<(), sockserv::Error>(())
    /// ```
    pub fn connected(mut self, fd: std::os::fd::OwnedFd) -> Self {
        self.connected = Some(crate::connected::Connected::from_fd(fd));
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

    /// Which source addresses are served (see [`rules`](crate::rules));
    /// [`Server::rules_handle`] replaces them while serving.
    pub fn rules(mut self, rules: crate::Rules) -> Self {
        self.rules = rules;
        self
    }

    /// How much the server takes on: connection limits, the per-peer
    /// limit, the reply backlog.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How slow a peer may be: idle, read and write timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// How a stop ends: the drain's grace, the lingering close.
    pub fn drain(mut self, drain: DrainPolicy) -> Self {
        self.drain = drain;
        self
    }

    /// Which datagrams are answered at all (loop and reflection guards).
    pub fn datagram_policy(mut self, policy: DatagramPolicy) -> Self {
        self.datagrams = policy;
        self
    }

    /// Every connection starts with a PROXY protocol header of these
    /// versions (the server sits behind HAProxy or a load balancer): the
    /// client address in it becomes the connection's peer everywhere —
    /// handlers, access rules, rate and per-IP limits, `verify_request`,
    /// a program's environment, logs and meters. A connection without a
    /// valid header is closed without a reply (never guessed: a client
    /// that reaches the server directly cannot pose as the proxy); a
    /// header must arrive within 3 s. Accept checks only the proxy (see
    /// [`proxy_from`](Self::proxy_from)) and the connection limit; the
    /// rest of the gate runs on the client once its header is read.
    /// Every kind of handler: message handlers get what follows the
    /// header from the pipeline, stream handlers and programs a socket
    /// from which exactly the header was read. What the header said is
    /// [`ProxyInfo`](crate::ProxyInfo).
    pub fn proxy_protocol(mut self, versions: crate::ProxyVersions) -> Self {
        self.proxy = Some(versions);
        self
    }

    /// With [`proxy_protocol`](Self::proxy_protocol): only these networks
    /// (the load balancers) may connect at all; a connection from any other
    /// address is closed before a byte is read or sent, and counted as
    /// refused by a rule. Repeatable; without it, any address may send the
    /// header.
    pub fn proxy_from(mut self, net: crate::rules::IpNet) -> Self {
        self.proxy_from.push(net);
        self
    }

    /// Time every handler call, for the handler-duration histogram of
    /// [`Server::snapshot`] (on with the admin endpoint). Costs two clock
    /// reads per message.
    pub fn time_handlers(mut self, on: bool) -> Self {
        self.timing = on;
        self
    }

    /// Serves the admin endpoint (metrics, health, the status page) for
    /// this server; see [`crate::admin`]. Handler calls are timed.
    #[cfg(feature = "admin")]
    pub fn admin(mut self, config: crate::admin::AdminConfig) -> Self {
        self.admin = Some(config);
        self.timing = true;
        self
    }

    /// The message handler blocks (a database call, a slow computation):
    /// under the event-loop strategy, run it on a pool of worker threads
    /// ([`Strategy::pool`]'s size) instead of inside the loops, so one slow
    /// call never stalls the other connections of its loop.
    pub fn blocking(mut self, blocks: bool) -> Self {
        self.blocking = blocks;
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

    /// Opens every listener and starts the strategy's threads. Nothing is
    /// left running if it fails.
    pub fn bind(self) -> Result<Server, Error> {
        let handler = self.handler.ok_or_else(|| {
            Error::config("no handler: call .message(), .stream() or .async_stream()")
        })?;
        let connected = self.connected.transpose()?;
        if self.endpoints.is_empty() && connected.is_none() {
            return Err(Error::config("no address to listen on: call .listen(ADDR)"));
        }
        if !self.endpoints.is_empty() && connected.is_some() {
            return Err(Error::config(
                "a server of one connection (.connected) has no listeners: no .listen() too",
            ));
        }
        let mut endpoints = Vec::new();
        let mut opened = Vec::new();
        let mut names = Vec::new();
        for pending in self.endpoints {
            match pending {
                Pending::Bind(ep) => {
                    endpoints.push(ep?);
                    opened.push(None);
                    names.push(None);
                }
                Pending::Open(s) => {
                    endpoints.push(s.endpoint().clone());
                    names.push(s.name().map(str::to_string));
                    opened.push(Some(s.listener));
                }
                Pending::Failed(e) => return Err(e),
            }
        }
        for ep in &endpoints {
            let stream = ep.transport().is_stream();
            if matches!(handler, Handler::Stream(_) | Handler::AsyncStream(_)) && !stream {
                return Err(Error::config(format!(
                    "a stream handler cannot serve the datagram socket {ep}"
                )));
            }
        }
        let strategy = match connected {
            Some(_) => Strategy::Sequential,
            None => self.strategy.resolve_for(&handler),
        };
        match strategy {
            Strategy::Pool { workers: 0, .. } | Strategy::EventLoops { loops: 0 } => {
                return Err(Error::config("a strategy needs at least one worker"))
            }
            Strategy::Pool { queue: 0, .. } => {
                return Err(Error::config("a pool needs a queue of at least one"))
            }
            _ => {}
        }
        let mut listeners = Vec::new();
        for (ep, open) in endpoints.iter().zip(opened) {
            listeners.push(match open {
                Some(l) => l,
                None => socket::bind(ep, &self.options)?,
            });
        }
        let shared = Arc::new(
            Shared::new(crate::context::bounded(self.drain.grace))
                .map_err(|e| Error::socket("cannot create the stop signal", e))?,
        );
        let access = crate::rules::Access::new(self.rules, self.limits.max_conn_rate);
        let ctx = Arc::new(Context {
            access,
            handler,
            framing: self.framing,
            hooks: self.hooks,
            limits: self.limits,
            timeouts: self.timeouts,
            drain: self.drain,
            datagrams: self.datagrams,
            options: self.options,
            proxy: self.proxy,
            proxy_from: self.proxy_from,
            shared: Arc::clone(&shared),
        });
        let poll =
            Poll::new().map_err(|e| Error::socket("cannot create the accept loop's poller", e))?;
        let waker = Arc::new(
            mio::Waker::new(poll.registry(), WAKE)
                .map_err(|e| Error::socket("cannot create the accept loop's waker", e))?,
        );
        let mut bound = Vec::new();
        let mut listening = Vec::new();
        let mut guards = Vec::new();
        let mut streams = Vec::new();
        let mut dgrams = Vec::new();
        for (l, ep) in listeners.into_iter().zip(&endpoints) {
            bound.push(l.local_endpoint()?);
            let name = bound.last().cloned().unwrap_or_else(|| ep.clone());
            match l {
                Listener::Tcp(t) => {
                    t.set_nonblocking(true)?;
                    let l = Arc::new(SharedListener {
                        listener: StreamListener::Tcp(t),
                        name,
                        index: bound.len() - 1,
                    });
                    listening.push(Listening::Stream(Arc::clone(&l)));
                    streams.push(l);
                }
                Listener::Unix(u, g) => {
                    u.set_nonblocking(true)?;
                    let local = Address::Unix(Some(g.path().to_path_buf()));
                    guards.push(g);
                    let l = Arc::new(SharedListener {
                        listener: StreamListener::Unix(u, local),
                        name,
                        index: bound.len() - 1,
                    });
                    listening.push(Listening::Stream(Arc::clone(&l)));
                    streams.push(l);
                }
                Listener::Udp(u) => {
                    let s = Arc::new(DgramSocket::Udp(u));
                    s.set_nonblocking(true)?;
                    listening.push(Listening::Dgram(Arc::clone(&s)));
                    dgrams.push((s, bound.len() - 1));
                }
                Listener::UnixDgram(u, g) => {
                    guards.push(g);
                    let s = Arc::new(DgramSocket::Unix(u));
                    s.set_nonblocking(true)?;
                    listening.push(Listening::Dgram(Arc::clone(&s)));
                    dgrams.push((s, bound.len() - 1));
                }
            }
        }
        if let Some(c) = &connected {
            bound.push(c.endpoint().clone());
            names.push(None);
        }
        shared.tracker.set_meters(crate::meter::Meters {
            listeners: bound
                .iter()
                .map(|ep| {
                    Arc::new(crate::meter::ListenerMeter::new(
                        ep.to_string(),
                        transport_name(ep),
                    ))
                })
                .collect(),
            closed: Default::default(),
            timing: std::sync::atomic::AtomicBool::new(self.timing),
            started: Some(Instant::now()),
        });
        let threads_err =
            |e: io::Error| Error::socket(format!("cannot start the {strategy} threads"), e);
        // The engine is built last: every fallible step is behind us, and
        // should building it fail, what it started stops when it drops.
        let message_like = matches!(ctx.handler, Handler::Message(_));
        let engine = match (strategy, message_like) {
            (Strategy::Sequential, _) => Engine::Sequential(Default::default()),
            (Strategy::Threads, _) => Engine::Threads(Default::default()),
            (Strategy::Pool { workers, .. }, true) => {
                let w = Workers::start(&ctx, workers, usize::MAX).map_err(threads_err)?;
                let loops =
                    EventLoops::start(&ctx, loops_default(), streams, dgrams, Some(Arc::clone(&w)))
                        .map_err(threads_err)?;
                streams = Vec::new();
                dgrams = Vec::new();
                Engine::Loops {
                    loops,
                    workers: Some(w),
                }
            }
            (Strategy::Pool { workers, queue }, false) => {
                if matches!(ctx.handler, Handler::AsyncStream(_)) {
                    Engine::Tokio(crate::strategy::tokio_engine(workers).map_err(threads_err)?)
                } else {
                    Engine::StreamPool(Workers::start(&ctx, workers, queue).map_err(threads_err)?)
                }
            }
            (Strategy::EventLoops { loops }, true) => {
                let w = if self.blocking {
                    let Strategy::Pool { workers, .. } = Strategy::pool() else {
                        unreachable!("pool() is a pool")
                    };
                    Some(Workers::start(&ctx, workers, usize::MAX).map_err(threads_err)?)
                } else {
                    None
                };
                let loops = EventLoops::start(&ctx, loops, streams, dgrams, w.clone())
                    .map_err(threads_err)?;
                streams = Vec::new();
                dgrams = Vec::new();
                Engine::Loops { loops, workers: w }
            }
            (Strategy::EventLoops { loops }, false) => {
                if matches!(ctx.handler, Handler::AsyncStream(_)) {
                    Engine::Tokio(crate::strategy::tokio_engine(loops).map_err(threads_err)?)
                } else {
                    // Stream handlers block: a thread each.
                    Engine::Threads(Default::default())
                }
            }
            (Strategy::Auto, _) => unreachable!("resolved above"),
        };
        let mut sources = Vec::new();
        for (i, l) in streams.into_iter().enumerate() {
            poll.registry().register(
                &mut SourceFd(&l.listener.raw_fd()),
                Token(i),
                Interest::READABLE,
            )?;
            sources.push(Source::Stream(l, Acceptor::default()));
        }
        let policy = ctx.datagrams;
        for (d, l) in dgrams {
            let token = Token(sources.len());
            poll.registry()
                .register(&mut SourceFd(&d.as_raw_fd()), token, Interest::READABLE)?;
            let meter = shared.tracker.meters().and_then(|m| m.listener(l)).cloned();
            let server = DgramServer::new(d, policy, false).with_meter(meter);
            sources.push(Source::Dgram(Box::new(server), None));
        }
        {
            let w = Arc::clone(&waker);
            shared
                .wakers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Box::new(move || {
                    let _ = w.wake();
                }));
            let w = Arc::clone(&waker);
            shared.tracker.on_free(Box::new(move || {
                let _ = w.wake();
            }));
        }
        let single = connected.is_some();
        let connected = connected.and_then(|c| c.admit(&ctx));
        #[cfg(feature = "admin")]
        let admin = match self.admin {
            Some(config) => Some(crate::admin::start(
                config,
                Arc::new(AdminSource(Arc::clone(&shared))),
            )?),
            None => None,
        };
        Ok(Server {
            #[cfg(feature = "admin")]
            admin,
            drained: false,
            single,
            connected,
            sources,
            guards,
            bound,
            listening,
            names,
            ctx,
            engine,
            shared,
            poll,
            strategy,
            timeout: self.timeout,
            service_interval: self.service_interval,
        })
    }
}

fn transport_name(ep: &Endpoint) -> &'static str {
    match ep {
        Endpoint::Tcp(_) => "tcp",
        Endpoint::Udp(_) => "udp",
        Endpoint::Unix(_) => "unix",
        Endpoint::UnixDgram(_) => "unix-dgram",
    }
}

/// The loops of the pool strategy for message handlers.
fn loops_default() -> usize {
    match Strategy::event_loops() {
        Strategy::EventLoops { loops } => loops,
        _ => 1,
    }
}

/// A listening socket as the server keeps it until its drain, whichever
/// engine serves it, so [`Server::listener_fds`] can lend it out.
enum Listening {
    Stream(Arc<SharedListener>),
    Dgram(Arc<DgramSocket>),
}

/// A socket the serving thread itself accepts or receives from.
enum Source {
    Stream(Arc<SharedListener>, Acceptor),
    /// Datagrams, with a retry time when a turn's budget ran out.
    Dgram(Box<DgramServer>, Option<Instant>),
}

/// What [`Server::handle_request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::AdminHandle>,
    /// Set once the drain has run (by `serve_forever` or by drop).
    drained: bool,
    /// Built with [`Builder::connected`]: it serves one connection, no
    /// listener.
    single: bool,
    /// That connection, until it is served (`None` too if the access
    /// rules refused it).
    connected: Option<crate::tracker::Admitted>,
    sources: Vec<Source>,
    /// Removes the Unix socket files at the end.
    guards: Vec<PathGuard>,
    bound: Vec<Endpoint>,
    /// Every listening socket, in the order of `bound`, open until the
    /// drain lets go of them.
    listening: Vec<Listening>,
    /// Each listener's name (`LISTEN_FDNAMES`), for inherited ones.
    names: Vec<Option<String>>,
    ctx: Arc<Context>,
    engine: Engine,
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

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The endpoints actually bound, in the order given (port 0 resolved).
    pub fn local_endpoints(&self) -> &[Endpoint] {
        &self.bound
    }

    /// Each listener's name, in the order of
    /// [`local_endpoints`](Self::local_endpoints): the `LISTEN_FDNAMES`
    /// name of an inherited socket, `None` for the others.
    pub fn listener_names(&self) -> &[Option<String>] {
        &self.names
    }

    /// Every listening socket with its endpoint and name, in the order of
    /// [`local_endpoints`](Self::local_endpoints): what a process needs to
    /// pass them on — to a successor it starts for a binary upgrade, in the
    /// `LISTEN_FDS` / `LISTEN_FDNAMES` format (see
    /// [`activation`](crate::activation)), after which
    /// [`ShutdownHandle::hand_off`] lets this server drain without
    /// touching them. The sockets stay open as long as the server exists
    /// and has not drained; whoever passes one on duplicates it (the
    /// descriptors are close-on-exec).
    pub fn listener_fds(&self) -> Vec<(BorrowedFd<'_>, &Endpoint, Option<&str>)> {
        self.listening
            .iter()
            .zip(&self.bound)
            .zip(&self.names)
            .map(|((l, ep), name)| {
                let fd = match l {
                    Listening::Stream(l) => l.listener.raw_fd(),
                    Listening::Dgram(d) => d.as_raw_fd(),
                };
                // SAFETY: the socket is owned by an Arc this server holds
                // until its drain, which needs `&mut self`: it outlives the
                // borrow.
                (unsafe { BorrowedFd::borrow_raw(fd) }, ep, name.as_deref())
            })
            .collect()
    }

    /// The first bound endpoint.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.bound[0]
    }

    /// The strategy in use (with `Auto` resolved).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// What the server can tell about itself now: counters per listener,
    /// the open connections (the 500 most recently active) and the last
    /// 100 closed ones. [`ShutdownHandle::snapshot`] does the same from
    /// any thread.
    pub fn snapshot(&self) -> crate::stats::Snapshot {
        self.shutdown_handle().snapshot(500, 100)
    }

    /// The admin endpoint's address (`http://HOST:PORT`), if one is served.
    #[cfg(feature = "admin")]
    pub fn admin_url(&self) -> Option<String> {
        self.admin.as_ref().map(|a| a.url())
    }

    /// A handle that replaces this server's access rules from any thread,
    /// without dropping a connection.
    pub fn rules_handle(&self) -> crate::RulesHandle {
        self.ctx.access.handle()
    }

    /// A handle that stops this server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until a shutdown is requested, then drains: stops accepting,
    /// serves the connections already in the listen backlog, lets every
    /// connection write the replies to what it has read, closes idle ones,
    /// and after the drain's grace cuts the rest. Returns once that is done.
    ///
    /// A [`connected`](Builder::connected) server serves its connection
    /// here, on this thread, and returns once it has closed.
    pub fn serve_forever(mut self) -> Result<(), Error> {
        let _serving = self.shared.enter_serving();
        if self.single {
            if let Some(conn) = self.connected.take() {
                crate::run::run_work(Work::Conn(conn), &self.ctx);
            }
            self.finish_drain();
            return Ok(());
        }
        let mut events = Events::with_capacity(256);
        let result = loop {
            if self.shared.stop.is_stopping() {
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
            for (i, s) in self.sources.iter().enumerate() {
                let due = match s {
                    Source::Stream(_, a) => a.paused || a.retry_at.is_some_and(|t| t <= now),
                    Source::Dgram(_, again) => again.is_some_and(|t| t <= now),
                };
                if due && !ready.contains(&i) {
                    ready.push(i);
                }
            }
            for i in ready {
                self.take_from(i, usize::MAX);
            }
            if let Some(f) = &self.ctx.hooks.service_actions {
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
            .filter_map(|s| match s {
                Source::Stream(_, a) => a.retry_at,
                Source::Dgram(_, again) => *again,
            })
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
        if self.single {
            // The one connection, then nothing more to handle.
            return Ok(match self.connected.take() {
                Some(conn) => {
                    crate::run::run_work(Work::Conn(conn), &self.ctx);
                    Handled::Request
                }
                None => Handled::Shutdown,
            });
        }
        if self.engine.accepts_itself() {
            return Err(Error::config(
                "handle_request needs a strategy whose connections the serving thread accepts \
                 (sequential, threads, or a pool of stream handlers); event loops accept in \
                 their own threads: use serve_forever",
            ));
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut events = Events::with_capacity(16);
        loop {
            if self.shared.stop.is_stopping() {
                return Ok(Handled::Shutdown);
            }
            // Try every listener first: epoll here is edge-triggered, so a
            // connection left over from an earlier call has no new edge.
            for i in 0..self.sources.len() {
                if self.take_from(i, 1) > 0 {
                    return Ok(Handled::Request);
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                if let Some(f) = &self.ctx.hooks.handle_timeout {
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

    /// Accepts (or receives) from source `i` until it would block or `max`
    /// requests were taken. Returns how many were dispatched.
    fn take_from(&mut self, i: usize, max: usize) -> usize {
        let mut taken = 0;
        while taken < max && !self.shared.stop.is_stopping() {
            let work = match &mut self.sources[i] {
                Source::Stream(l, acceptor) => match acceptor.accept(l, &self.ctx) {
                    Accepted::Conn(a) => Work::Conn(a),
                    Accepted::Refused => continue,
                    Accepted::Empty | Accepted::Paused | Accepted::Backoff => break,
                },
                Source::Dgram(d, again) => {
                    if taken >= crate::dgram::DATAGRAMS_PER_TURN {
                        // Let the other sources and service_actions have a
                        // turn; come back at once (epoll is edge-triggered).
                        *again = Some(Instant::now());
                        break;
                    }
                    *again = None;
                    // Datagrams in flight count against the connection
                    // limit, so a flood cannot start unbounded threads; the
                    // excess waits in the socket buffer.
                    if self
                        .ctx
                        .limits
                        .max_connections
                        .is_some_and(|max| self.shared.tracker.active() >= max)
                    {
                        *again = Some(Instant::now() + Duration::from_millis(1));
                        break;
                    }
                    match d.recv_job(&self.ctx) {
                        Ok(Some(job)) => Work::Datagram(job),
                        Ok(None) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // ICMP errors from earlier replies surface here
                            // (ECONNREFUSED); they concern one peer only.
                            tracing::debug!("datagram receive error: {e}");
                            continue;
                        }
                    }
                }
            };
            taken += 1;
            self.engine.dispatch(work, &self.ctx);
        }
        taken
    }

    /// The drain: stop accepting, serve what is in the listen backlogs,
    /// close the listeners, wait for connections until the grace ends (or a
    /// forced stop), cut the rest, stop the engine.
    fn finish_drain(&mut self) {
        if self.drained {
            return;
        }
        self.drained = true;
        self.shared.begin_stop();
        self.engine.wake();
        let deadline = self.shared.drain_deadline();
        // Clients whose connection the kernel completed before the stop are
        // in the backlog: serve them like any draining connection rather
        // than reset them by closing the listener under them.
        for i in 0..self.sources.len() {
            self.sweep(i);
        }
        self.engine
            .wait_swept(deadline.min(Instant::now() + Duration::from_secs(1)));
        for s in self.sources.drain(..) {
            let fd = match &s {
                Source::Stream(l, _) => l.listener.raw_fd(),
                Source::Dgram(d, _) => d.socket.as_raw_fd(),
            };
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        // The last holder of a listener closes it: the serving thread, a
        // loop, or this.
        self.listening.clear();
        if self.shared.handed_off() {
            // The successor serves on at these paths.
            for g in &mut self.guards {
                g.keep();
            }
        }
        let tracker = &self.shared.tracker;
        loop {
            let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
            if tracker.wait_idle(Some(step)) {
                break;
            }
            if self.shared.stop.is_forced() || Instant::now() >= deadline {
                break;
            }
        }
        if tracker.active() > 0 {
            self.shared.begin_force();
            self.engine.wake();
            // Give the cut handlers a moment to notice and return.
            tracker.wait_idle(Some(Instant::now() + Duration::from_millis(500)));
            let left = tracker.active();
            tracing::warn!(
                "drain grace over: cut the remaining connections; {left} handler(s) still running were left behind"
            );
        }
        self.engine
            .stop(Instant::now() + Duration::from_millis(500));
        // The wakers own event-loop and accept-loop handles: let them go.
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.shared.tracker.clear_wakers();
        self.guards.clear();
        #[cfg(feature = "admin")]
        drop(self.admin.take());
    }

    /// At the drain: accept everything waiting on source `i`.
    fn sweep(&mut self, i: usize) {
        let Some(Source::Stream(l, acceptor)) = self.sources.get_mut(i) else {
            return;
        };
        let l = Arc::clone(l);
        // No new handshakes from here; what was queued or under way is
        // served (bounded all the same). Unless a successor shares the
        // listener: then it takes the new handshakes.
        if !self.shared.handed_off() {
            l.listener.stop_handshakes();
        }
        let most = self.shared.last_accepts(self.ctx.options.backlog);
        for _ in 0..most {
            match acceptor.accept(&l, &self.ctx) {
                Accepted::Conn(a) => self.engine.dispatch(Work::Conn(a), &self.ctx),
                Accepted::Refused => {}
                Accepted::Empty | Accepted::Paused | Accepted::Backoff => return,
            }
        }
    }
}

/// Dropping a server is Python's `server_close()`: the listeners close and,
/// if `serve_forever` did not already do it, the connections in flight are
/// drained (up to the drain's grace) and the engine's threads stop.
impl Drop for Server {
    fn drop(&mut self) {
        self.finish_drain();
    }
}

/// The admin endpoint's view of a server.
#[cfg(feature = "admin")]
struct AdminSource(Arc<Shared>);

#[cfg(feature = "admin")]
impl crate::admin::Source for AdminSource {
    fn snapshot(&self, detail: &crate::admin::Detail) -> crate::stats::Snapshot {
        self.0
            .tracker
            .snapshot(self.0.stop.serve_state(), detail.connections, detail.closed)
    }

    fn state(&self) -> crate::stats::ServeState {
        self.0.stop.serve_state()
    }
}
