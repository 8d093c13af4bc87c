//! Accepting: one connection from a listener, through the gate every
//! connection passes — the access rules and the rate limit, the connection
//! limits, the per-IP limit, `verify_request` — with the back-off that
//! keeps a server alive when it runs out of descriptors. The serving
//! thread (blocking strategies) and each event loop (which accept where
//! they serve) call the same code.
//!
//! Behind a proxy speaking the PROXY protocol the socket's peer is the
//! proxy: accept then checks only that it is one of the trusted proxies
//! and the connection limit, and the rest of the gate runs on the client
//! the header names, once it is read ([`after_header`]).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::config::OverLimit;
use crate::context::Context;
use crate::hooks::Failure;
use crate::proxy::{ProxyHeader, ProxyInfo};
use crate::rules::Env;
use crate::socket::Stream;
use crate::stats::{ClosedConnection, End, RefuseReason};
pub(crate) use crate::tracker::Admitted;
use crate::tracker::TrackGuard;

/// A listening stream socket.
#[derive(Debug)]
pub(crate) enum StreamListener {
    Tcp(std::net::TcpListener),
    /// With the address connections arrive on (the path).
    Unix(UnixListener, Address),
}

impl StreamListener {
    /// At the drain, before the last accepts: the listener stops starting
    /// handshakes (a socket filter drops new SYNs, so those clients retry
    /// and then find the port closed), while the handshakes already under
    /// way complete into the backlog, which the drain then empties. Without
    /// it, clients that reconnect at once keep refilling the backlog and
    /// the close resets whoever is queued at that moment. TCP only.
    pub(crate) fn stop_handshakes(&self) {
        let StreamListener::Tcp(l) = self else {
            return;
        };
        // ldb [13] (the TCP flags: the filter sees the segment from its
        // TCP header); and #SYN|ACK; jeq #SYN → drop; else accept.
        let mut code = [
            libc::sock_filter {
                code: 0x30,
                jt: 0,
                jf: 0,
                k: 13,
            },
            libc::sock_filter {
                code: 0x54,
                jt: 0,
                jf: 0,
                k: 0x12,
            },
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: 0x02,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: u32::MAX,
            },
        ];
        let prog = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_mut_ptr(),
        };
        // SAFETY: `prog` points at a valid classic BPF program that lives
        // for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            tracing::debug!(
                "cannot stop new handshakes before the drain: {}",
                io::Error::last_os_error()
            );
        }
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        match self {
            StreamListener::Tcp(l) => l.as_raw_fd(),
            StreamListener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<(Stream, Address)> {
        match self {
            StreamListener::Tcp(l) => l
                .accept()
                .map(|(s, peer)| (Stream::Tcp(s), Address::Inet(peer))),
            StreamListener::Unix(l, _) => l
                .accept()
                .map(|(s, peer)| (Stream::Unix(s), Address::from_unix(&peer))),
        }
    }
}

/// A stream listener as the serving thread or the loops hold it.
#[derive(Debug)]
pub(crate) struct SharedListener {
    pub(crate) listener: StreamListener,
    /// What logs call it.
    pub(crate) name: crate::addr::Endpoint,
    /// Its place among the server's listeners (for its counters).
    pub(crate) index: usize,
}

/// What one accept attempt gave.
#[derive(Debug)]
pub(crate) enum Accepted {
    Conn(Admitted),
    /// A connection was accepted and refused (a limit, `verify_request`),
    /// or failed to set up; try again.
    Refused,
    /// Nobody is waiting.
    Empty,
    /// At the connection limit with [`OverLimit::Wait`]: stop accepting
    /// until a connection finishes (the tracker wakes the acceptor).
    Paused,
    /// The listener failed (EMFILE, ...): retry after the back-off.
    Backoff,
}

/// One acceptor's state for one listener: the back-off after resource
/// errors, logged once per burst.
#[derive(Debug, Default)]
pub(crate) struct Acceptor {
    /// Retry accepting then (after EMFILE and the like).
    pub(crate) retry_at: Option<Instant>,
    error_burst: u64,
    backoff: Duration,
    /// Accepting is paused at the connection limit.
    pub(crate) paused: bool,
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

impl Acceptor {
    /// Accepts one connection from `listener` and passes it through the
    /// gate.
    pub(crate) fn accept(&mut self, shared: &SharedListener, ctx: &Context) -> Accepted {
        let (listener, name) = (&shared.listener, &shared.name);
        let meter = ctx
            .shared
            .tracker
            .meters()
            .and_then(|m| m.listener(shared.index));
        let limits = &ctx.limits;
        let tracker = &ctx.shared.tracker;
        let at_limit = limits
            .max_connections
            .is_some_and(|max| tracker.connections() >= max);
        if at_limit && limits.over_limit == OverLimit::Wait {
            // Leave the connections in the kernel's backlog; the next
            // connection to finish wakes this acceptor.
            tracker.pause();
            // It may have finished between the check and the pause.
            if limits
                .max_connections
                .is_some_and(|max| tracker.connections() >= max)
            {
                self.paused = true;
                return Accepted::Paused;
            }
        }
        self.paused = false;
        let (stream, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.retry_at = None;
                return Accepted::Empty;
            }
            Err(e) if is_connection_error(&e) => return Accepted::Refused,
            Err(e) => {
                if let (Some(m), Some(errno)) = (meter, e.raw_os_error()) {
                    m.accept_error(errno);
                }
                self.failed(name, &e);
                return Accepted::Backoff;
            }
        };
        if self.error_burst > 0 {
            tracing::info!(
                "accepting again on {name} after {} failed attempts",
                self.error_burst
            );
        }
        self.retry_at = None;
        self.error_burst = 0;
        self.backoff = Duration::ZERO;
        match admit(stream, peer, at_limit, shared, ctx) {
            Some(a) => Accepted::Conn(a),
            None => Accepted::Refused,
        }
    }

    /// EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued
    /// in the kernel. Back off (5 ms doubling to 1 s, as Go does), log once
    /// per burst, keep serving the connections already open.
    fn failed(&mut self, name: &dyn std::fmt::Display, e: &io::Error) {
        if self.error_burst == 0 {
            tracing::error!(
                "cannot accept on {name}: {}; backing off",
                crate::error::describe(e)
            );
        }
        self.error_burst += 1;
        self.backoff = if self.backoff.is_zero() {
            Duration::from_millis(5)
        } else {
            (self.backoff * 2).min(Duration::from_secs(1))
        };
        self.retry_at = Some(Instant::now() + self.backoff);
    }
}

/// Checks (and may claim) a client IP's place under the per-IP limit
/// (`Some(max)`); Err: how many are open from it.
type PerIp<'a> = dyn FnMut(IpAddr, Option<usize>) -> Result<(), usize> + 'a;

/// The gate's checks on a client, in order: the access rules and the rate
/// limit, the connection limit, the per-IP limit, `verify_request`. Ok:
/// the `VAR=value` pairs of the rule that allowed it.
///
/// One function for the two moments the gate runs. At accept, on the
/// socket's peer. With the PROXY protocol on, the peer is the balancer,
/// whose address says nothing about the client: then the accept checks
/// only the connection limit (`client` is `None`), and the rest runs once
/// the header names the client ([`after_header`]). `client` checks — and
/// after the header also claims — the client IP's place under the per-IP
/// limit.
fn gate(
    ctx: &Context,
    peer: &Address,
    at_limit: bool,
    client: Option<&mut PerIp<'_>>,
) -> Result<Env, RefuseReason> {
    let limits = &ctx.limits;
    let env = match &client {
        Some(_) => ctx.access.check(peer).map_err(|why| match why {
            crate::rules::Refusal::Rule => RefuseReason::Rule,
            crate::rules::Refusal::Rate => RefuseReason::Rate,
        })?,
        None => Env::new(),
    };
    if at_limit {
        tracing::info!(
            "refused a connection: at the limit of {} connections",
            limits.max_connections.unwrap_or(0)
        );
        return Err(RefuseReason::Limit);
    }
    let Some(per_ip) = client else {
        return Ok(env);
    };
    if let Some(ip) = peer.ip() {
        if let Err(open) = per_ip(ip, limits.max_connections_per_ip) {
            let max = limits.max_connections_per_ip.unwrap_or(0);
            tracing::info!(%peer, "refused: {open} connections from this address (limit {max})");
            return Err(RefuseReason::PerIp);
        }
    }
    if !ctx.hooks.verify(peer) {
        tracing::debug!(%peer, "verify_request refused a peer");
        return Err(RefuseReason::Verify);
    }
    Ok(env)
}

/// Refusals that send the limit message (if one is set) before closing;
/// the others close without a byte.
pub(crate) fn sends_message(why: RefuseReason) -> bool {
    matches!(why, RefuseReason::Limit | RefuseReason::PerIp)
}

/// Only the balancers may speak the PROXY protocol to us: anyone else
/// could claim any address in a header.
fn trusted(ctx: &Context, peer: &Address) -> bool {
    let Some(ip) = peer.ip() else {
        // A Unix socket's peer is local: trusted like the socket's mode.
        return true;
    };
    ctx.proxy_from.is_empty()
        || ctx
            .proxy_from
            .iter()
            .any(|n| n.contains(&ip.to_canonical()))
}

/// The verdict on a peer at accept (see [`gate`]): behind the PROXY
/// protocol only the trust in the proxy and the connection limit (the
/// rest waits for the header's client), else the whole gate. The place
/// under the per-IP limit is only looked at: registration takes it.
pub(crate) fn verdict(ctx: &Context, peer: &Address, at_limit: bool) -> Result<Env, RefuseReason> {
    let proxied = ctx.proxy.is_some();
    if proxied && !trusted(ctx, peer) {
        Err(RefuseReason::Rule)
    } else if proxied {
        gate(ctx, peer, at_limit, None)
    } else {
        let tracker = &ctx.shared.tracker;
        let mut room = |ip: IpAddr, max: Option<usize>| {
            // No limit: no look at the tracker (a lock shared by every
            // loop) on this accept.
            let Some(max) = max else { return Ok(()) };
            match tracker.connections_from(ip) {
                open if open >= max => Err(open),
                _ => Ok(()),
            }
        };
        gate(ctx, peer, at_limit, Some(&mut room))
    }
}

/// The gate after accept (see [`verdict`]): a refused peer is closed (after
/// the limit message for the limits), counted and remembered; an admitted
/// one is registered with the tracker.
fn admit(
    stream: Stream,
    peer: Address,
    at_limit: bool,
    shared: &SharedListener,
    ctx: &Context,
) -> Option<Admitted> {
    let listener = &shared.listener;
    let tracker = &ctx.shared.tracker;
    let proxied = ctx.proxy.is_some();
    let verdict = verdict(ctx, &peer, at_limit);
    let env = match verdict {
        Ok(env) => env,
        Err(why) => {
            if sends_message(why) {
                refuse(&stream, ctx);
            }
            // Dropping the stream closes it.
            refused(ctx, shared, why, &peer);
            return None;
        }
    };
    let local = match (&stream, listener) {
        (Stream::Tcp(s), _) => {
            let setup = (|| {
                if ctx.options.nodelay {
                    s.set_nodelay(true)?;
                }
                s.local_addr()
            })();
            match setup {
                Ok(local) => Address::Inet(local),
                Err(e) => {
                    tracing::debug!(%peer, "cannot set up an accepted connection: {e}");
                    return None;
                }
            }
        }
        (Stream::Unix(_), StreamListener::Unix(_, local)) => local.clone(),
        (Stream::Unix(_), _) => Address::Unix(None),
    };
    Admitted::register(tracker, stream, peer, local, shared.index, proxied, env)
}

/// A client a PROXY header named, through the gate.
#[derive(Debug)]
pub(crate) struct Client {
    /// The connection's peer from now on.
    pub(crate) peer: Address,
    /// The address the client connected to on the proxy, if named.
    pub(crate) local: Option<Address>,
    pub(crate) proxy: Arc<ProxyInfo>,
    pub(crate) env: Env,
}

/// With the PROXY protocol on: the second half of the gate, once the header
/// from `proxy` (the socket's peer, already trusted at accept) is read.
/// The client it names — the proxy itself for a header without addresses,
/// or for a LOCAL health check from a proxy not vouched for by
/// `--proxy-from` — goes through the same [`gate`] as any peer at accept,
/// and is counted under its own IP. A LOCAL connection from a proxy
/// `--proxy-from` names is admitted as it is. It becomes the peer the
/// meters show. Refused: counted with its reason and marked so in the
/// meter (which remembers it among the closed connections when the
/// caller drops it); the caller closes it, after the limit message if
/// [`sends_message`].
pub(crate) fn after_header(
    ctx: &Context,
    guard: &mut TrackGuard,
    proxy: &Address,
    header: ProxyHeader,
) -> Result<Client, RefuseReason> {
    let info = ProxyInfo::new(header, proxy.clone());
    let meter = guard.meter().cloned();
    if let (Some(m), true) = (&meter, info.is_relayed()) {
        m.set_proxied(info.client());
    }
    let verdict = if info.is_local() && !ctx.proxy_from.is_empty() {
        // A trusted proxy's own connection (its health check) is no
        // client: the trust check at accept admitted it, and it takes no
        // client's place under the per-IP limit. (Without --proxy-from
        // nobody vouches for the sender: it is gated like anyone.)
        Ok(Env::new())
    } else {
        let mut claim = |ip: IpAddr, max: Option<usize>| guard.claim_ip(ip, max);
        gate(ctx, info.client(), false, Some(&mut claim))
    };
    match verdict {
        Ok(env) => Ok(Client {
            peer: info.client().clone(),
            local: info.destination().cloned(),
            proxy: Arc::new(info),
            env,
        }),
        Err(why) => {
            if let Some(m) = &meter {
                m.set_end(End::Refused(why));
                if let Some(l) = ctx
                    .shared
                    .tracker
                    .meters()
                    .and_then(|ms| ms.listener(m.listener))
                {
                    l.refused(why);
                }
            }
            Err(why)
        }
    }
}

impl Admitted {
    /// Reads the PROXY header off the socket by exact lengths (nothing past
    /// it: the socket is handed on whole) and passes its client through
    /// [`after_header`]; for stream handlers and programs, on a blocking
    /// thread. `None`: the header failed or the client was refused, and
    /// the connection is to be dropped (closed).
    pub(crate) fn read_proxy_header(mut self, ctx: &Context) -> Option<Admitted> {
        let Some(accept) = ctx.proxy else {
            return Some(self);
        };
        let header = crate::driver::header::read_blocking(&self.stream, accept, &ctx.shared.stop);
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                header_failed(ctx, &self.guard, &self.peer, e);
                return None;
            }
        };
        match after_header(ctx, &mut self.guard, &self.peer, header) {
            Ok(client) => {
                self.peer = client.peer;
                if let Some(local) = client.local {
                    self.local = local;
                }
                self.proxy = Some(client.proxy);
                self.env = client.env;
                Some(self)
            }
            Err(why) => {
                if sends_message(why) {
                    refuse(&self.stream, ctx);
                }
                None
            }
        }
    }
}

/// A header that failed (malformed, too long, missing in time): reported
/// like a pipeline's layer error, and how the connection ended is marked.
pub(crate) fn header_failed(
    ctx: &Context,
    guard: &TrackGuard,
    peer: &Address,
    e: crate::driver::header::HeaderError,
) {
    let end = match e {
        crate::driver::header::HeaderError::TimedOut => End::ReadTimeout,
        _ => End::Error,
    };
    if let Some(m) = guard.meter() {
        m.set_end(end);
    }
    ctx.hooks.error(peer, Failure::Io(e.into_io()));
}

/// Counts a refusal and remembers it among the closed connections.
fn refused(ctx: &Context, shared: &SharedListener, why: RefuseReason, peer: &Address) {
    let Some(meters) = ctx.shared.tracker.meters() else {
        return;
    };
    if let Some(m) = meters.listener(shared.index) {
        m.refused(why);
    }
    meters.remember(ClosedConnection {
        listener: shared.index,
        peer: peer.to_string(),
        local: shared.name.to_string(),
        ended: End::Refused(why),
        closed_at: std::time::SystemTime::now(),
        ..ClosedConnection::default()
    });
}

/// Sends the limit message (best effort) before the caller closes.
pub(crate) fn refuse(stream: &Stream, ctx: &Context) {
    refuse_fd(stream.as_raw_fd(), ctx);
}

/// [`refuse`] on a descriptor, whoever owns the socket (a tokio one too):
/// non-blocking calls only, so it never waits for the peer.
pub(crate) fn refuse_fd(fd: std::os::fd::RawFd, ctx: &Context) {
    if let Some(msg) = &ctx.limits.limit_message {
        // SAFETY: sends from a valid buffer on an open socket; MSG_DONTWAIT
        // and MSG_NOSIGNAL: no wait, no SIGPIPE.
        unsafe {
            libc::send(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
    // SAFETY: shutdown on an open socket.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    // Closing with unread input resets the connection, which can destroy
    // the message before the client reads it: take what has arrived.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: receives into a valid buffer; MSG_DONTWAIT: no wait.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
    }
}
