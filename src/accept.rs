//! Accepting: one connection from a listener, through the gate every
//! connection passes — the connection limits, the per-IP limit,
//! `verify_request` — with the back-off that keeps a server alive when it
//! runs out of descriptors. The serving thread (blocking strategies) and
//! each event loop (which accept where they serve) call the same code.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::config::OverLimit;
use crate::context::Context;
use crate::socket::Stream;
use crate::stats::{ClosedConnection, End, RefuseReason};
pub(crate) use crate::tracker::Admitted;

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

/// The gate after accept: the access rules and the rate limit (closed at
/// once, not a byte sent), the connection limit and the per-IP limit (sent
/// the limit message), `verify_request`, registration.
fn admit(
    stream: Stream,
    peer: Address,
    at_limit: bool,
    shared: &SharedListener,
    ctx: &Context,
) -> Option<Admitted> {
    let listener = &shared.listener;
    let limits = &ctx.limits;
    if ctx.proxy.is_some() && !ctx.proxy_from.is_empty() {
        // Only the balancers may speak the PROXY protocol to us: anyone
        // else could claim any address in a header.
        let trusted = peer.ip().is_some_and(|ip| {
            ctx.proxy_from
                .iter()
                .any(|n| n.contains(&ip.to_canonical()))
        });
        if !trusted && peer.ip().is_some() {
            refused(ctx, shared, RefuseReason::Rule, &peer);
            return None;
        }
    }
    if let Err(why) = ctx.access.check(&peer) {
        let why = match why {
            crate::rules::Refusal::Rule => RefuseReason::Rule,
            crate::rules::Refusal::Rate => RefuseReason::Rate,
        };
        refused(ctx, shared, why, &peer);
        // Dropping the stream closes it: nothing was written.
        return None;
    }
    if at_limit {
        tracing::info!(
            "refused a connection: at the limit of {} connections",
            limits.max_connections.unwrap_or(0)
        );
        refuse(&stream, ctx);
        refused(ctx, shared, RefuseReason::Limit, &peer);
        return None;
    }
    if let (Some(max), Some(ip)) = (limits.max_connections_per_ip, peer.ip()) {
        let open = ctx.shared.tracker.connections_from(ip);
        if open >= max {
            tracing::info!(%peer, "refused: {open} connections from this address (limit {max})");
            refuse(&stream, ctx);
            refused(ctx, shared, RefuseReason::PerIp, &peer);
            return None;
        }
    }
    if !ctx.hooks.verify(&peer) {
        tracing::debug!(%peer, "verify_request refused a peer");
        refused(ctx, shared, RefuseReason::Verify, &peer);
        return None;
    }
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
    Admitted::register(&ctx.shared.tracker, stream, peer, local, shared.index)
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

/// Sends the limit message (best effort) and closes.
fn refuse(stream: &Stream, ctx: &Context) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    if let Some(msg) = &ctx.limits.limit_message {
        let _ = (&*stream).write(msg);
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Closing with unread input resets the connection, which can destroy
    // the message before the client reads it: take what has arrived.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match std::io::Read::read(&mut &*stream, &mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}
