//! What a running server can tell about itself: counters per listener, the
//! open connections, the recently closed ones and how each ended.
//!
//! These are plain values — a [`Snapshot`] is a copy taken at one moment,
//! with no lock or reference into the server. The engine fills them in; the
//! admin endpoint (`sockserv::admin`, feature `admin`) renders them as
//! Prometheus metrics, JSON and a status page; a program can read them
//! directly.
//!
//! The structs are `#[non_exhaustive]` so that fields can be added: outside
//! this crate, start from `Default::default()` and set fields:
//!
//! ```
//! use sockserv::stats::{ConnectionInfo, ConnState, Snapshot};
//!
//! let mut conn = ConnectionInfo::default();
//! conn.peer = "127.0.0.1:50000".into();
//! conn.state = ConnState::PeerHalfClosed;
//! let mut snap = Snapshot::default();
//! snap.connections.push(conn);
//! snap.open_connections = 1;
//! assert_eq!(snap.connections[0].state.label(), "peer half-closed (FIN received)");
//! ```

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime};

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ServeState {
    /// Accepting new connections and serving.
    #[default]
    Running,
    /// A graceful stop began: no new connections; open ones finish.
    Draining,
    /// The drain deadline passed (or a forced stop): open connections are cut.
    Forced,
}

impl ServeState {
    /// A short lower-case name: `running`, `draining`, `forced`.
    pub fn name(self) -> &'static str {
        match self {
            ServeState::Running => "running",
            ServeState::Draining => "draining",
            ServeState::Forced => "forced",
        }
    }

    /// The value of the `sockserv_drain_state` gauge: 0, 1, 2.
    pub fn gauge(self) -> u8 {
        match self {
            ServeState::Running => 0,
            ServeState::Draining => 1,
            ServeState::Forced => 2,
        }
    }

    /// True while new connections are accepted (what `/readyz` reports).
    pub fn is_accepting(self) -> bool {
        self == ServeState::Running
    }
}

/// One moment of a server: its state, its listeners with their counters,
/// its open connections and the last ones that closed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// Running, draining or forced.
    pub state: ServeState,
    /// Time since the server started serving.
    pub uptime: Duration,
    /// One entry per listening socket, in the order they were configured.
    pub listeners: Vec<ListenerStats>,
    /// Open connections. May be a subset (see `open_connections`).
    pub connections: Vec<ConnectionInfo>,
    /// How many connections are open: the true count, even when
    /// `connections` holds fewer entries.
    pub open_connections: usize,
    /// The most recently closed connections, most recent first.
    pub closed: Vec<ClosedConnection>,
}

impl Snapshot {
    /// The counters of every listener added up.
    pub fn totals(&self) -> Counters {
        let mut total = Counters::default();
        for l in &self.listeners {
            total.add(&l.counters);
        }
        total
    }

    /// The endpoint text of listener `index`, or `""` if there is none.
    pub fn listener_endpoint(&self, index: usize) -> &str {
        self.listeners
            .get(index)
            .map(|l| l.endpoint.as_str())
            .unwrap_or("")
    }
}

/// A listening socket and what passed through it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListenerStats {
    /// The endpoint as printed in the `listening` line, e.g.
    /// `tcp://127.0.0.1:9999` (port 0 resolved).
    pub endpoint: String,
    /// The transport's scheme: `tcp`, `udp`, `unix`, `unix-dgram`.
    pub transport: &'static str,
    /// Its counters (for a datagram listener the connection counters stay 0).
    pub counters: Counters,
}

/// Why a connection was refused before a handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The server-wide connection limit was reached.
    Limit,
    /// The per-source-IP connection limit was reached.
    PerIp,
    /// `verify_request` said no.
    Verify,
    /// An access rule denied the source.
    Rule,
    /// The source connected faster than the rate limit allows.
    Rate,
}

impl RefuseReason {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [RefuseReason; 5] = [
        RefuseReason::Limit,
        RefuseReason::PerIp,
        RefuseReason::Verify,
        RefuseReason::Rule,
        RefuseReason::Rate,
    ];

    /// The `reason` label: `limit`, `per_ip`, `verify`, `rule`, `rate`.
    pub fn name(self) -> &'static str {
        match self {
            RefuseReason::Limit => "limit",
            RefuseReason::PerIp => "per_ip",
            RefuseReason::Verify => "verify",
            RefuseReason::Rule => "rule",
            RefuseReason::Rate => "rate",
        }
    }

    /// What a person reads: `connection limit`, `per-IP limit`, ...
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::Limit => "connection limit",
            RefuseReason::PerIp => "per-IP limit",
            RefuseReason::Verify => "verify_request",
            RefuseReason::Rule => "access rule",
            RefuseReason::Rate => "rate limit",
        }
    }
}

/// Refused connections, one counter per [`RefuseReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RefusedCounts {
    /// Over the server-wide connection limit.
    pub limit: u64,
    /// Over the per-source-IP limit.
    pub per_ip: u64,
    /// Refused by `verify_request`.
    pub verify: u64,
    /// Denied by an access rule.
    pub rule: u64,
    /// Over the connection rate limit.
    pub rate: u64,
}

impl RefusedCounts {
    /// The counter for `reason`.
    pub fn get(&self, reason: RefuseReason) -> u64 {
        match reason {
            RefuseReason::Limit => self.limit,
            RefuseReason::PerIp => self.per_ip,
            RefuseReason::Verify => self.verify,
            RefuseReason::Rule => self.rule,
            RefuseReason::Rate => self.rate,
        }
    }

    /// The counter for `reason`, to change.
    pub fn get_mut(&mut self, reason: RefuseReason) -> &mut u64 {
        match reason {
            RefuseReason::Limit => &mut self.limit,
            RefuseReason::PerIp => &mut self.per_ip,
            RefuseReason::Verify => &mut self.verify,
            RefuseReason::Rule => &mut self.rule,
            RefuseReason::Rate => &mut self.rate,
        }
    }

    /// All reasons added up.
    pub fn total(&self) -> u64 {
        RefuseReason::ALL.iter().map(|&r| self.get(r)).sum()
    }
}

/// The errno names every accept-error series starts with (at 0): the
/// resource exhaustions an accept loop backs off from.
pub const ACCEPT_ERRNOS: [&str; 4] = ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"];

/// The name of an errno value as the metrics label it: `EMFILE`, `ENFILE`,
/// ... and `E<number>` for one not listed here.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPERM => "EPERM",
        libc::EPROTO => "EPROTO",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::ENONET => "ENONET",
        _ => return format!("E{code}"),
    };
    name.to_string()
}

/// The bucket upper bounds of the handler-duration histogram, in seconds:
/// 50 µs to 10 s. Fixed, so that every worker's shard and every scrape use
/// the same buckets.
pub const HANDLER_DURATION_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A histogram with fixed buckets.
///
/// `counts[i]` is the number of observations in bucket `i` alone (not
/// cumulative): at most `bounds[i]` and above `bounds[i - 1]`; the last entry
/// (`counts[bounds.len()]`) counts those above every bound (`+Inf`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Histogram {
    /// Upper bounds, ascending, in seconds.
    pub bounds: &'static [f64],
    /// Per-bucket counts, `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    /// The sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// The number of observations.
    pub count: u64,
}

impl Default for Histogram {
    /// An empty histogram with the [`HANDLER_DURATION_BOUNDS`].
    fn default() -> Self {
        Histogram::new(HANDLER_DURATION_BOUNDS)
    }
}

impl Histogram {
    /// An empty histogram with these bounds (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }

    /// The index of the bucket `seconds` falls in.
    pub fn bucket(&self, seconds: f64) -> usize {
        self.bounds.partition_point(|&b| b < seconds)
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bucket(s);
        if self.counts.len() <= self.bounds.len() {
            self.counts.resize(self.bounds.len() + 1, 0);
        }
        self.counts[i] += 1;
        self.sum_seconds += s;
        self.count += 1;
    }

    /// Adds `other` to this histogram, bucket by bucket. Histograms with
    /// other bounds add only their sum and count (their buckets cannot be
    /// mapped), which keeps `_count` true; the bounds are fixed, so this
    /// does not happen between shards of one server.
    pub fn add(&mut self, other: &Histogram) {
        if self.counts.len() < self.bounds.len() + 1 {
            self.counts.resize(self.bounds.len() + 1, 0);
        }
        if self.bounds == other.bounds {
            for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
                *mine += theirs;
            }
        } else {
            // Put them in +Inf so the buckets still add up to the count.
            let last = self.counts.len() - 1;
            self.counts[last] += other.count;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// The cumulative counts, one per bound then `+Inf` (what Prometheus
    /// calls `_bucket{le=...}`).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0u64;
        (0..=self.bounds.len())
            .map(|i| {
                acc += self.counts.get(i).copied().unwrap_or(0);
                acc
            })
            .collect()
    }
}

/// What passed through a listener (or a worker's share of it; shards add
/// up with [`Counters::add`]).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Connections accepted (refused ones included: they were accepted,
    /// then closed).
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections refused, by reason.
    pub refused: RefusedCounts,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// Frames (messages) decoded from peers.
    pub frames_in: u64,
    /// Replies sent.
    pub replies_out: u64,
    /// Frames over the size limit.
    pub oversize: u64,
    /// Handler calls that returned an error.
    pub handler_errors: u64,
    /// Handler calls that panicked.
    pub handler_panics: u64,
    /// Failed `accept` calls by errno name (`EMFILE`, ...), each name once.
    pub accept_errors: Vec<(String, u64)>,
    /// How long handler calls took.
    pub handler_duration: Histogram,
}

impl Counters {
    /// Adds `other` to these counters, field by field (accept errors are
    /// matched by name).
    pub fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.open += other.open;
        for r in RefuseReason::ALL {
            *self.refused.get_mut(r) += other.refused.get(r);
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.replies_out += other.replies_out;
        self.oversize += other.oversize;
        self.handler_errors += other.handler_errors;
        self.handler_panics += other.handler_panics;
        for (name, n) in &other.accept_errors {
            self.add_accept_errors(name, *n);
        }
        self.handler_duration.add(&other.handler_duration);
    }

    /// Adds `n` failed accepts with errno `name`.
    pub fn add_accept_errors(&mut self, name: &str, n: u64) {
        match self.accept_errors.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v += n,
            None => self.accept_errors.push((name.to_string(), n)),
        }
    }

    /// The accept-error counts to report: [`ACCEPT_ERRNOS`] first (0 when
    /// none happened), then any other names, sorted.
    pub fn accept_errors_reported(&self) -> Vec<(String, u64)> {
        let count = |name: &str| {
            self.accept_errors
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| *v)
                .sum::<u64>()
        };
        let mut out: Vec<(String, u64)> = ACCEPT_ERRNOS
            .iter()
            .map(|&name| (name.to_string(), count(name)))
            .collect();
        let mut others: Vec<&str> = self
            .accept_errors
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !ACCEPT_ERRNOS.contains(k))
            .collect();
        others.sort_unstable();
        others.dedup();
        out.extend(others.into_iter().map(|k| (k.to_string(), count(k))));
        out
    }
}

/// Where an open connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ConnState {
    /// Both directions open.
    #[default]
    Established,
    /// The peer sent its FIN; we may still write.
    PeerHalfClosed,
    /// We sent our FIN (shut down writing); the peer may still send.
    WeHalfClosed,
    /// The server is draining: this connection finishes its work, then closes.
    Draining,
    /// Our side is done; reading and discarding until the peer closes, so
    /// that our last reply is not lost to a reset.
    Lingering,
}

impl ConnState {
    /// A short lower-case name: `established`, `peer_half_closed`, ...
    pub fn name(self) -> &'static str {
        match self {
            ConnState::Established => "established",
            ConnState::PeerHalfClosed => "peer_half_closed",
            ConnState::WeHalfClosed => "we_half_closed",
            ConnState::Draining => "draining",
            ConnState::Lingering => "lingering",
        }
    }

    /// What a person reads: `established`, `peer half-closed (FIN
    /// received)`, `we half-closed`, `draining`, `lingering`.
    pub fn label(self) -> &'static str {
        match self {
            ConnState::Established => "established",
            ConnState::PeerHalfClosed => "peer half-closed (FIN received)",
            ConnState::WeHalfClosed => "we half-closed",
            ConnState::Draining => "draining",
            ConnState::Lingering => "lingering",
        }
    }
}

/// The kernel's view of a TCP connection (`getsockopt(TCP_INFO)`), the
/// fields `ss -ti` shows. Times are in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TcpInfo {
    /// The TCP state (`TCP_ESTABLISHED` = 1, ... as in `<netinet/tcp.h>`).
    pub state: u8,
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// Round-trip time variation, µs.
    pub rttvar_us: u32,
    /// Retransmission timeout, µs.
    pub rto_us: u32,
    /// Sender maximum segment size, bytes.
    pub snd_mss: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Slow-start threshold, segments.
    pub snd_ssthresh: u32,
    /// Unrecovered retransmission timeouts now (the current back-off).
    pub retransmits: u32,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Segments considered lost.
    pub lost: u32,
    /// The lowest RTT seen, µs (Linux 4.6+; `None` on older kernels).
    pub min_rtt_us: Option<u32>,
    /// Delivery rate estimate, bytes per second (Linux 4.9+).
    pub delivery_rate: Option<u64>,
    /// Bytes acknowledged by the peer (Linux 4.1+).
    pub bytes_acked: Option<u64>,
    /// Bytes received from the peer (Linux 4.1+).
    pub bytes_received: Option<u64>,
}

/// Reads `TCP_INFO` of the TCP socket `fd`.
///
/// Older kernels return a shorter `struct tcp_info`: any length is
/// accepted, and a field the kernel did not fill is 0 (or `None` for the
/// fields marked as newer). Fails for a socket that is not TCP (`EOPNOTSUPP`
/// / `ENOPROTOOPT`) or a bad descriptor; on systems other than Linux it
/// fails with `Unsupported`.
#[cfg(target_os = "linux")]
pub fn tcp_info(fd: RawFd) -> io::Result<TcpInfo> {
    use std::mem::{size_of, MaybeUninit};

    let mut raw = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `raw`, which is
    // that large and zero-initialised; `len` is updated to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            raw.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: every bit pattern is a valid tcp_info (integers only) and the
    // buffer started zeroed.
    let raw = unsafe { raw.assume_init() };
    Ok(decode_tcp_info(&raw, len as usize))
}

/// The fields of `raw` that the first `len` bytes cover (what the kernel
/// wrote); the others are 0 or `None`.
#[cfg(target_os = "linux")]
fn decode_tcp_info(raw: &libc::tcp_info, len: usize) -> TcpInfo {
    use std::mem::{offset_of, size_of_val};
    macro_rules! field {
        ($name:ident) => {
            if offset_of!(libc::tcp_info, $name) + size_of_val(&raw.$name) <= len {
                Some(raw.$name)
            } else {
                None
            }
        };
    }
    TcpInfo {
        state: field!(tcpi_state).unwrap_or(0),
        rtt_us: field!(tcpi_rtt).unwrap_or(0),
        rttvar_us: field!(tcpi_rttvar).unwrap_or(0),
        rto_us: field!(tcpi_rto).unwrap_or(0),
        snd_mss: field!(tcpi_snd_mss).unwrap_or(0),
        snd_cwnd: field!(tcpi_snd_cwnd).unwrap_or(0),
        snd_ssthresh: field!(tcpi_snd_ssthresh).unwrap_or(0),
        retransmits: u32::from(field!(tcpi_retransmits).unwrap_or(0)),
        total_retrans: field!(tcpi_total_retrans).unwrap_or(0),
        unacked: field!(tcpi_unacked).unwrap_or(0),
        lost: field!(tcpi_lost).unwrap_or(0),
        min_rtt_us: field!(tcpi_min_rtt),
        delivery_rate: field!(tcpi_delivery_rate),
        bytes_acked: field!(tcpi_bytes_acked),
        bytes_received: field!(tcpi_bytes_received),
    }
}

/// Reads `TCP_INFO`: not available on this system.
#[cfg(not(target_os = "linux"))]
pub fn tcp_info(_fd: RawFd) -> io::Result<TcpInfo> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO is read on Linux only",
    ))
}

/// An open connection.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// A number unique among this server's connections (increasing).
    pub id: u64,
    /// Index of its listener in [`Snapshot::listeners`].
    pub listener: usize,
    /// The peer's address (`127.0.0.1:50000`; for Unix sockets the path or
    /// an empty string).
    pub peer: String,
    /// Our address of this connection.
    pub local: String,
    /// Time since it was accepted.
    pub age: Duration,
    /// Time since it last read or wrote a byte.
    pub idle: Duration,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
    /// Frames decoded from the peer.
    pub frames_in: u64,
    /// Replies (frames) sent to the peer.
    pub frames_out: u64,
    /// Established, half-closed, draining, lingering.
    pub state: ConnState,
    /// The kernel's TCP figures, for TCP connections when they were read.
    pub tcp: Option<TcpInfo>,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum End {
    /// The client closed its side first; we finished and closed.
    #[default]
    ClientClosed,
    /// We closed first (the handler finished, or a protocol error).
    ServerClosed,
    /// The peer reset the connection.
    Reset,
    /// Nothing read or written for the idle timeout.
    IdleTimeout,
    /// A read did not complete within the read timeout.
    ReadTimeout,
    /// A write did not complete within the write timeout.
    WriteTimeout,
    /// Refused before a handler saw it.
    Refused(RefuseReason),
    /// Still open at the drain deadline, and cut.
    DrainCut,
    /// An I/O error other than a reset.
    Error,
}

impl End {
    /// A short lower-case name: `client_closed`, `server_closed`, `reset`,
    /// `idle_timeout`, `read_timeout`, `write_timeout`, `refused_limit`
    /// (and the other `refused_` reasons), `drain_cut`, `error`.
    pub fn name(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ServerClosed => "server_closed",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::ReadTimeout => "read_timeout",
            End::WriteTimeout => "write_timeout",
            End::Refused(RefuseReason::Limit) => "refused_limit",
            End::Refused(RefuseReason::PerIp) => "refused_per_ip",
            End::Refused(RefuseReason::Verify) => "refused_verify",
            End::Refused(RefuseReason::Rule) => "refused_rule",
            End::Refused(RefuseReason::Rate) => "refused_rate",
            End::DrainCut => "drain_cut",
            End::Error => "error",
        }
    }

    /// What a person reads: `client closed first`, `server closed first`,
    /// `reset by peer`, `idle timeout`, ..., `refused: connection limit`,
    /// `cut at the drain deadline`, `error`.
    pub fn label(self) -> &'static str {
        match self {
            End::ClientClosed => "client closed first",
            End::ServerClosed => "server closed first",
            End::Reset => "reset by peer",
            End::IdleTimeout => "idle timeout",
            End::ReadTimeout => "read timeout",
            End::WriteTimeout => "write timeout",
            End::Refused(RefuseReason::Limit) => "refused: connection limit",
            End::Refused(RefuseReason::PerIp) => "refused: per-IP limit",
            End::Refused(RefuseReason::Verify) => "refused: verify_request",
            End::Refused(RefuseReason::Rule) => "refused: access rule",
            End::Refused(RefuseReason::Rate) => "refused: rate limit",
            End::DrainCut => "cut at the drain deadline",
            End::Error => "error",
        }
    }
}

/// A connection that has closed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClosedConnection {
    /// Its id (as it had in [`ConnectionInfo::id`]).
    pub id: u64,
    /// Index of its listener in [`Snapshot::listeners`].
    pub listener: usize,
    /// The peer's address.
    pub peer: String,
    /// Our address of this connection.
    pub local: String,
    /// From accept to close.
    pub lifetime: Duration,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
    /// Frames decoded from the peer.
    pub frames_in: u64,
    /// Replies sent to the peer.
    pub frames_out: u64,
    /// How it ended.
    pub ended: End,
    /// When it closed (wall clock).
    pub closed_at: SystemTime,
}

impl Default for ClosedConnection {
    fn default() -> Self {
        ClosedConnection {
            id: 0,
            listener: 0,
            peer: String::new(),
            local: String::new(),
            lifetime: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            frames_in: 0,
            frames_out: 0,
            ended: End::default(),
            closed_at: SystemTime::UNIX_EPOCH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::default();
        assert_eq!(h.counts.len(), HANDLER_DURATION_BOUNDS.len() + 1);
        h.observe(Duration::from_micros(50)); // exactly the first bound
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(11)); // +Inf
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[HANDLER_DURATION_BOUNDS.len()], 1);
        assert_eq!(h.count, 3);
        let cum = h.cumulative();
        assert_eq!(cum.len(), HANDLER_DURATION_BOUNDS.len() + 1);
        assert_eq!(cum[0], 1);
        assert_eq!(cum[1], 2);
        assert_eq!(*cum.last().unwrap(), 3);
        assert!((h.sum_seconds - 11.000_101).abs() < 1e-9);
    }

    #[test]
    fn counters_add_sums_every_field_and_merges_errnos() {
        let mut a = Counters {
            accepted: 1,
            open: 1,
            bytes_in: 10,
            accept_errors: vec![("EMFILE".into(), 2)],
            ..Counters::default()
        };
        a.refused.per_ip = 1;
        a.handler_duration.observe(Duration::from_millis(1));
        let mut b = Counters {
            accepted: 2,
            bytes_out: 5,
            frames_in: 3,
            replies_out: 3,
            oversize: 1,
            handler_errors: 1,
            handler_panics: 1,
            accept_errors: vec![("EMFILE".into(), 1), ("ECONNABORTED".into(), 4)],
            ..Counters::default()
        };
        b.refused.per_ip = 2;
        b.refused.rate = 7;
        b.handler_duration.observe(Duration::from_secs(1));
        a.add(&b);
        assert_eq!(a.accepted, 3);
        assert_eq!(a.open, 1);
        assert_eq!(a.refused.per_ip, 3);
        assert_eq!(a.refused.rate, 7);
        assert_eq!(a.refused.total(), 10);
        assert_eq!((a.bytes_in, a.bytes_out), (10, 5));
        assert_eq!((a.frames_in, a.replies_out, a.oversize), (3, 3, 1));
        assert_eq!((a.handler_errors, a.handler_panics), (1, 1));
        assert_eq!(a.handler_duration.count, 2);
        assert_eq!(a.handler_duration.cumulative().last(), Some(&2));
        let reported = a.accept_errors_reported();
        assert_eq!(
            reported,
            vec![
                ("EMFILE".to_string(), 3),
                ("ENFILE".to_string(), 0),
                ("ENOBUFS".to_string(), 0),
                ("ENOMEM".to_string(), 0),
                ("ECONNABORTED".to_string(), 4),
            ]
        );
    }

    #[test]
    fn histograms_with_other_bounds_keep_the_count_true() {
        static OTHER: &[f64] = &[1.0];
        let mut a = Histogram::default();
        let mut b = Histogram::new(OTHER);
        b.observe(Duration::from_millis(1));
        a.add(&b);
        assert_eq!(a.count, 1);
        assert_eq!(a.cumulative().last(), Some(&1));
    }

    #[test]
    fn snapshot_totals_add_the_listeners() {
        let mut s = Snapshot::default();
        for n in [3, 4] {
            let mut l = ListenerStats::default();
            l.counters.accepted = n;
            s.listeners.push(l);
        }
        assert_eq!(s.totals().accepted, 7);
        assert_eq!(s.listener_endpoint(5), "");
    }

    #[test]
    fn labels() {
        assert_eq!(End::ClientClosed.label(), "client closed first");
        assert_eq!(End::DrainCut.label(), "cut at the drain deadline");
        assert_eq!(
            End::Refused(RefuseReason::Limit).label(),
            "refused: connection limit"
        );
        assert_eq!(End::Refused(RefuseReason::PerIp).name(), "refused_per_ip");
        assert_eq!(ConnState::WeHalfClosed.label(), "we half-closed");
        assert_eq!(ServeState::Draining.gauge(), 1);
        assert!(!ServeState::Forced.is_accepting());
        assert_eq!(errno_name(libc::EMFILE), "EMFILE");
        assert_eq!(errno_name(9999), "E9999");
    }

    #[test]
    fn a_shorter_tcp_info_from_an_older_kernel() {
        use std::mem::offset_of;
        // SAFETY: tcp_info is integers only; all-zero is valid.
        let mut raw: libc::tcp_info = unsafe { std::mem::zeroed() };
        raw.tcpi_state = 1;
        raw.tcpi_rtt = 120;
        raw.tcpi_total_retrans = 3;
        raw.tcpi_min_rtt = 90;
        raw.tcpi_delivery_rate = 1000;
        // Linux 2.6's struct ends after tcpi_total_retrans (104 bytes).
        let old = offset_of!(libc::tcp_info, tcpi_total_retrans) + 4;
        assert_eq!(old, 104);
        let info = decode_tcp_info(&raw, old);
        assert_eq!((info.state, info.rtt_us, info.total_retrans), (1, 120, 3));
        assert_eq!(info.min_rtt_us, None);
        assert_eq!(info.delivery_rate, None);
        assert_eq!(info.bytes_acked, None);
        // Cut inside tcpi_rtt: that field and those after it are 0.
        let cut = offset_of!(libc::tcp_info, tcpi_rtt) + 2;
        let info = decode_tcp_info(&raw, cut);
        assert_eq!((info.state, info.rtt_us, info.total_retrans), (1, 0, 0));
        // Nothing written at all.
        assert_eq!(decode_tcp_info(&raw, 0), TcpInfo::default());
        // The whole struct.
        let info = decode_tcp_info(&raw, std::mem::size_of::<libc::tcp_info>());
        assert_eq!(info.min_rtt_us, Some(90));
        assert_eq!(info.delivery_rate, Some(1000));
    }

    #[test]
    fn tcp_info_of_a_loopback_connection() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let info = tcp_info(c.as_raw_fd()).unwrap();
        assert_eq!(info.state, 1, "TCP_ESTABLISHED");
        assert!(info.snd_mss > 0);
        assert!(info.snd_cwnd > 0);
        // Not a TCP socket: an error, not garbage.
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(tcp_info(u.as_raw_fd()).is_err());
    }
}
