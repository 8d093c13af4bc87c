//! What a user configures about connections, one type per concern:
//! [`Limits`] (how much a server takes on), [`Timeouts`] (how slow a peer
//! may be) and [`DrainPolicy`] (how a stop ends). Each word has one
//! meaning: a *timeout* is always a peer being too slow; the drain has a
//! *grace*; a close *lingers*.

use std::time::Duration;

/// How much a server takes on: connections, per-peer connections, and the
/// replies it holds for one peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Most connections open at once; what happens at the limit is
    /// [`over_limit`](Self::over_limit). Threads, tasks and buffers are
    /// bounded by it in every strategy. Datagrams being handled count too.
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
    /// Bytes of replies a connection may have waiting to be written; past
    /// it the server stops decoding that peer's requests (and so stops
    /// reading) until they drain. With one read of input (64 KiB) and the
    /// unfinished frame (at most the maximum frame), this bounds what one
    /// peer can make the server hold. Default 1 MiB.
    pub max_backlog: usize,
    /// New connections from one IP address, at most: a token bucket per
    /// source whose burst is the rate's count. Over it a connection is
    /// closed at once without a byte sent and counted as
    /// [`RefuseReason::Rate`](crate::stats::RefuseReason::Rate); other
    /// sources are served as before. At most 65,536 sources are
    /// remembered (idle ones are forgotten first). Unix-socket peers are
    /// not limited.
    pub max_conn_rate: Option<crate::Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_connections_per_ip: None,
            over_limit: OverLimit::Wait,
            limit_message: None,
            max_backlog: 1024 * 1024,
            max_conn_rate: None,
        }
    }
}

impl Limits {
    /// No limits but the default backlog.
    pub fn new() -> Limits {
        Limits::default()
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// Sets [`max_connections_per_ip`](Self::max_connections_per_ip).
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.max_connections_per_ip = Some(max);
        self
    }

    /// Sets [`over_limit`](Self::over_limit).
    pub fn over_limit(mut self, over: OverLimit) -> Self {
        self.over_limit = over;
        self
    }

    /// Sets [`limit_message`](Self::limit_message).
    pub fn limit_message(mut self, msg: impl Into<Vec<u8>>) -> Self {
        self.limit_message = Some(msg.into());
        self
    }

    /// Sets [`max_conn_rate`](Self::max_conn_rate).
    pub fn max_conn_rate(mut self, rate: crate::Rate) -> Self {
        self.max_conn_rate = Some(rate);
        self
    }

    /// Sets [`max_backlog`](Self::max_backlog).
    pub fn max_backlog(mut self, bytes: usize) -> Self {
        self.max_backlog = bytes;
        self
    }
}

/// What the server does with new connections at its connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverLimit {
    /// Stop accepting until a connection finishes; new clients wait in the
    /// kernel's backlog (tcpserver's and socat's behaviour). The default.
    #[default]
    Wait,
    /// Accept, send the limit message if any, and close at once (ncat's and
    /// systemd's behaviour): clients learn at once that the server is full.
    Close,
}

/// How slow a peer may be before the server closes its connection.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Timeouts {
    /// Close a connection that sends nothing for this long between frames.
    pub idle: Option<Duration>,
    /// Close a connection whose frame has started (kept or being discarded
    /// as oversized) and not ended for this long: slow senders, slowloris.
    /// Message handlers only.
    pub read: Option<Duration>,
    /// Close a connection whose replies make no progress for this long (a
    /// peer that never reads). Default 30 s.
    pub write: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: None,
            read: None,
            write: Some(Duration::from_secs(30)),
        }
    }
}

impl Timeouts {
    /// No idle or read timeout; a 30 s write timeout.
    pub fn new() -> Timeouts {
        Timeouts::default()
    }

    /// Sets [`idle`](Self::idle).
    pub fn idle(mut self, t: Duration) -> Self {
        self.idle = Some(t);
        self
    }

    /// Sets [`read`](Self::read).
    pub fn read(mut self, t: Duration) -> Self {
        self.read = Some(t);
        self
    }

    /// Sets [`write`](Self::write) (`None`: wait forever).
    pub fn write(mut self, t: Option<Duration>) -> Self {
        self.write = t;
        self
    }
}

/// How a stop ends, and how a connection closes.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DrainPolicy {
    /// How long a stop waits for connections to finish what they have read
    /// before cutting them (Python's `block_on_close`, bounded). Default
    /// 10 s.
    pub grace: Duration,
    /// After the last reply and a half-close, how long to keep reading and
    /// discarding before closing (a lingering close: the peer never gets a
    /// reset that could destroy replies it has not read). Default 2 s; at
    /// most 100 ms while draining.
    pub linger: Duration,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            grace: Duration::from_secs(10),
            linger: Duration::from_secs(2),
        }
    }
}

impl DrainPolicy {
    /// 10 s of grace, 2 s of linger.
    pub fn new() -> DrainPolicy {
        DrainPolicy::default()
    }

    /// Sets [`grace`](Self::grace).
    pub fn grace(mut self, t: Duration) -> Self {
        self.grace = t;
        self
    }

    /// Sets [`linger`](Self::linger).
    pub fn linger(mut self, t: Duration) -> Self {
        self.linger = t;
        self
    }
}

/// Which datagrams the server answers at all.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DatagramPolicy {
    /// Replies per second to one source (a token bucket with a burst of
    /// the same size); datagrams over it are dropped before the handler.
    /// `None`: no limit. Default 100,000 (a client in a closed loop on
    /// loopback makes about 40,000; loops between services are broken
    /// first by the reflection check, see the module docs).
    pub replies_per_source: Option<u32>,
    /// Datagrams from UDP source ports below this are dropped (well-known
    /// services that would answer back). 0 turns it off. Default 1024.
    pub min_source_port: u16,
    /// Drop a run of datagrams that are our own last reply coming straight
    /// back (two services answering each other). Default on.
    pub loop_guard: bool,
}

impl Default for DatagramPolicy {
    fn default() -> Self {
        DatagramPolicy {
            replies_per_source: Some(100_000),
            min_source_port: 1024,
            loop_guard: true,
        }
    }
}

impl DatagramPolicy {
    /// The defaults: 100,000 replies/s per source, no source port below 1024.
    pub fn new() -> DatagramPolicy {
        DatagramPolicy::default()
    }

    /// Sets [`replies_per_source`](Self::replies_per_source).
    pub fn replies_per_source(mut self, per_second: Option<u32>) -> Self {
        self.replies_per_source = per_second;
        self
    }

    /// Sets [`loop_guard`](Self::loop_guard).
    pub fn loop_guard(mut self, on: bool) -> Self {
        self.loop_guard = on;
        self
    }

    /// Sets [`min_source_port`](Self::min_source_port).
    pub fn min_source_port(mut self, port: u16) -> Self {
        self.min_source_port = port;
        self
    }
}
