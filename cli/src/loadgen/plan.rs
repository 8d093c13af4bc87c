//! What to send: the user's configuration, checked once and turned into a
//! read-only [`Plan`] every runtime shares, and where the connections go.
//!
//! Everything that can be refused is refused here, before any socket is
//! opened, with a one-line [`io::ErrorKind::InvalidInput`] error: a load
//! generator that fails half-way through a run (or opens 10,000 sockets to
//! find out the descriptor limit is 1,024) wastes the user's time.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sockserv::addr::Endpoint;
use sockserv::frame::Framing;

use super::payloads::Payloads;
use crate::error::describe;

/// The largest UDP payload IPv4 can carry (65,535 − 8 − 20).
pub(super) const MAX_UDP_PAYLOAD: usize = 65_507;

/// The largest request on a stream: big enough for any sensible test, small
/// enough that `connections × pipeline` buffers cannot exhaust memory by a
/// typo.
const MAX_STREAM_PAYLOAD: usize = 16 * 1024 * 1024;

/// What to run: the target, the load shape and the limits.
///
/// Build one with [`BenchConfig::new`] and change the public fields;
/// [`run`](super::run) validates the combination and refuses impossible
/// ones with an [`io::ErrorKind::InvalidInput`] error.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server to load.
    pub endpoint: Endpoint,
    /// Connections (sockets, for datagram endpoints) opened and kept busy.
    pub connections: usize,
    /// How long to measure, after the warm-up. With neither `duration` nor
    /// `requests` the run lasts 10 s.
    pub duration: Option<Duration>,
    /// How many verified replies to collect, over all connections. With
    /// `duration` too, the run ends at whichever limit comes first.
    pub requests: Option<u64>,
    /// Payload bytes per request (before framing).
    pub size: usize,
    /// Requests in flight per connection (1 = strict ping-pong).
    pub pipeline: usize,
    /// How requests are framed on a stream. `raw` (the default) sends the
    /// payload as it is and reads back exactly `size` bytes per reply.
    pub framing: Framing,
    /// Open loop: total requests per second over all connections, sent on a
    /// fixed schedule. `None` is closed loop (as fast as replies come).
    pub rate: Option<f64>,
    /// Load applied before measuring, not recorded (fills caches, lets the
    /// server grow its buffers and thread pools).
    pub warmup: Duration,
    /// Client runtimes (threads), each driving its share of connections.
    pub threads: usize,
    /// How long a reply may take. For datagrams a late reply is a lost one:
    /// it is counted as a timeout and the request is abandoned. On a stream
    /// a timeout stops the connection (it cannot resynchronise). `None`
    /// means 1 s for datagrams and 30 s for streams.
    pub timeout: Option<Duration>,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Connection churn instead of long-lived connections: each of the
    /// `connections` clients loops connect, send one line, read the reply,
    /// close. Measures what a server pays per connection (accept, setup,
    /// teardown), which a ping-pong run over long-lived connections never
    /// shows. Streams only; one request per connection, so no pipeline or
    /// rate; line framing.
    pub churn: bool,
}

impl BenchConfig {
    /// A closed-loop ping-pong configuration: 50 connections, 64-byte raw
    /// requests, one in flight per connection, 10 s, one thread.
    pub fn new(endpoint: Endpoint) -> BenchConfig {
        BenchConfig {
            endpoint,
            connections: 50,
            duration: None,
            requests: None,
            size: 64,
            pipeline: 1,
            framing: Framing::raw(),
            rate: None,
            warmup: Duration::ZERO,
            threads: 1,
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            churn: false,
        }
    }

    /// The reply timeout in force (see [`BenchConfig::timeout`]).
    pub fn reply_timeout(&self) -> Duration {
        self.timeout
            .unwrap_or(if self.endpoint.transport().is_stream() {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(1)
            })
    }

    /// The measuring time limit in force: the configured one, or 10 s when
    /// no request count was given either.
    pub fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        }
    }
}

/// The validated, precomputed form of a [`BenchConfig`], shared read-only by
/// every runtime.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) connections: usize,
    pub(super) threads: usize,
    pub(super) size: usize,
    pub(super) pipeline: usize,
    /// `None` for raw framing: replies are cut into `size`-byte pieces.
    pub(super) framing: Option<Framing>,
    pub(super) stream: bool,
    pub(super) warmup: Duration,
    pub(super) duration: Option<Duration>,
    /// Per-connection interval between scheduled sends (open loop).
    pub(super) interval: Option<Duration>,
    pub(super) reply_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) payloads: Payloads,
    pub(super) endpoint_text: String,
    /// Connection churn (see [`BenchConfig::churn`]).
    pub(super) churn: bool,
}

impl Plan {
    pub(super) fn new(config: &BenchConfig) -> io::Result<Plan> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let transport = config.endpoint.transport();
        if config.connections == 0 {
            return Err(invalid(
                "the number of connections must be at least 1".into(),
            ));
        }
        if config.pipeline == 0 {
            return Err(invalid("the pipeline depth must be at least 1".into()));
        }
        if config.threads == 0 {
            return Err(invalid("the number of threads must be at least 1".into()));
        }
        if config.requests == Some(0) {
            return Err(invalid("the number of requests must be at least 1".into()));
        }
        if config.duration.is_some_and(|d| d.is_zero()) {
            return Err(invalid("the duration must be longer than 0".into()));
        }
        if config.size == 0 {
            return Err(invalid("the request size must be at least 1 byte".into()));
        }
        let max = if transport.is_stream() {
            MAX_STREAM_PAYLOAD
        } else {
            MAX_UDP_PAYLOAD
        };
        if config.size > max {
            return Err(invalid(format!(
                "a request size of {} bytes is over the limit of {max} bytes for {}",
                config.size,
                transport.scheme()
            )));
        }
        let interval = match config.rate {
            None => None,
            Some(r) if !(r.is_finite() && r > 0.0) => {
                return Err(invalid(
                    "the rate must be a positive number of requests per second".into(),
                ))
            }
            Some(r) => {
                let secs = config.connections as f64 / r;
                if secs > 3600.0 {
                    return Err(invalid(format!(
                        "a rate of {r} req/s over {} connections is under one request per hour each",
                        config.connections
                    )));
                }
                Some(Duration::from_secs_f64(secs).max(Duration::from_nanos(1)))
            }
        };
        let raw = config.framing.is_raw();
        if !transport.is_stream() && !raw {
            return Err(invalid(format!(
                "--framing {} needs a stream endpoint: a {} datagram is already one message",
                config.framing,
                transport.scheme()
            )));
        }
        if config.churn {
            if !transport.is_stream() {
                return Err(invalid(format!(
                    "--churn needs a stream endpoint (tcp:// or unix://), not {}",
                    transport.scheme()
                )));
            }
            if config.rate.is_some() || config.pipeline != 1 {
                return Err(invalid(
                    "--churn sends one request per connection as fast as replies come: \
                     --rate and --pipeline do not apply"
                        .into(),
                ));
            }
            if config.framing.to_string() != "line" {
                return Err(invalid(format!(
                    "--churn sends one line per connection: --framing {} does not apply",
                    config.framing
                )));
            }
        }
        let framing = (!raw).then(|| config.framing.clone());
        let payloads = if config.churn {
            Payloads::case_blind(config.size, framing.as_ref())?
        } else {
            Payloads::new(config.size, framing.as_ref())?
        };
        Ok(Plan {
            connections: config.connections,
            threads: config.threads.min(config.connections),
            size: config.size,
            pipeline: config.pipeline,
            framing,
            stream: transport.is_stream(),
            warmup: config.warmup,
            duration: config.effective_duration(),
            interval,
            reply_timeout: config.reply_timeout(),
            connect_timeout: config.connect_timeout,
            payloads,
            endpoint_text: config.endpoint.to_string(),
            churn: config.churn,
        })
    }
}

/// Where each connection goes, resolved once up front.
#[derive(Debug)]
pub(super) struct Targets {
    /// IP addresses to try in order (TCP, UDP).
    pub(super) addrs: Vec<SocketAddr>,
    /// The client's own socket path per connection (Unix datagram only: the
    /// server can only reply to a bound address).
    pub(super) local_paths: Vec<PathBuf>,
    pub(super) endpoint: Endpoint,
    /// Churn against an IPv4 loopback address: the client addresses the
    /// connections are bound to, in turn (empty: the system chooses).
    pub(super) sources: Vec<IpAddr>,
}

/// The client addresses churn spreads its connections over when the server
/// is on IPv4 loopback: 127.0.0.2 to 127.0.0.250.
///
/// Each closed connection leaves its (client address, port) pair in
/// TIME_WAIT for a minute, and one client address has about 28,000
/// ephemeral ports: from one address a churn run would stall at some 470
/// connections a second, a limit of the client machine, not of the server.
/// The whole of 127.0.0.0/8 is local on Linux, so 249 addresses lift it
/// about 249-fold. Empty when binding one of them fails (another system).
fn churn_sources(addrs: &[SocketAddr]) -> Vec<IpAddr> {
    let loopback_v4 = addrs
        .first()
        .is_some_and(|a| matches!(a.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    if !loopback_v4 || std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).is_err() {
        return Vec::new();
    }
    (2..=250)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect()
}

pub(super) fn resolve_targets(
    endpoint: &Endpoint,
    connections: usize,
    churn: bool,
) -> io::Result<Targets> {
    let addrs = endpoint.resolve().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot connect to {endpoint}: {}", describe(&e)),
        )
    })?;
    let local_paths = match endpoint {
        Endpoint::UnixDgram(_) => {
            let dir = std::env::temp_dir();
            let tag = format!(
                "sockserv-bench-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            );
            (0..connections)
                .map(|i| dir.join(format!("{tag}-{i}.sock")))
                .collect()
        }
        _ => Vec::new(),
    };
    let sources = if churn {
        churn_sources(&addrs)
    } else {
        Vec::new()
    };
    Ok(Targets {
        addrs,
        local_paths,
        endpoint: endpoint.clone(),
        sources,
    })
}

/// Removes the client's Unix datagram socket files when the run ends, also
/// on error paths.
pub(super) struct TempPaths(pub(super) Vec<PathBuf>);

impl Drop for TempPaths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so that thousands
/// of connections work without the user running `ulimit -n` first (the
/// default soft limit is often 1024, the hard limit much higher).
pub(super) fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Refuses a connection count the file-descriptor limit cannot hold, rather
/// than failing thousands of connects one by one with EMFILE.
pub(super) fn check_fd_budget(connections: usize) -> io::Result<()> {
    // SAFETY: as above.
    let soft = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        lim.rlim_cur
    };
    let needed = connections as u64 + 32;
    if soft != libc::RLIM_INFINITY && needed > soft {
        return Err(io::Error::other(format!(
            "{connections} connections need about {needed} file descriptors but the limit is {soft} (raise it with ulimit -n)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_framings_are_refused_up_front() {
        let framing: Framing = "fixed:32".parse().unwrap();
        let err = Payloads::new(64, Some(&framing)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("fixed:32"), "{err}");
        let mut config = BenchConfig::new("udp://127.0.0.1:9".parse().unwrap());
        config.framing = "line".parse().unwrap();
        assert_eq!(
            Plan::new(&config).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
