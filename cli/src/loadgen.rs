//! A load generator for echo servers: throughput, latency percentiles and
//! verified replies, over TCP, UDP, Unix stream and Unix datagram sockets.
//!
//! This is the engine of `sockserv bench`. It exists because the echo
//! load generators in common use measure the wrong thing or measure it
//! wrongly: rust_echo_bench treats one `read()` as one message (so it fails
//! or under-counts as soon as TCP splits or merges segments), most report
//! throughput only, and none checks that the bytes that came back are the
//! bytes that were sent. Here:
//!
//! - **Every reply is checked** against the exact request it answers. Each
//!   request carries a payload unique to its connection and sequence number,
//!   and replies on a stream are matched in order; a reply that differs is a
//!   *wrong reply* error and stops that connection.
//! - **Framing is done properly.** With `raw` framing (an echo of bytes) a
//!   reply is exactly `size` bytes, however the stream segments them; with
//!   any other [`Framing`] requests are encoded and replies decoded by the
//!   same codec a sockserv server uses.
//! - **Latency goes into an HDR histogram** (nanosecond resolution, three
//!   significant digits), reported as p50/p90/p99/p99.9/max.
//! - **Closed or open loop.** By default each connection keeps `pipeline`
//!   requests in flight and sends a new one as soon as a reply arrives
//!   (closed loop: throughput ≈ connections × pipeline ÷ round-trip time).
//!   With a `rate`, requests are *scheduled* at fixed intervals; a request
//!   that is due while its connection already has `pipeline` requests in
//!   flight waits for a reply, and its latency is measured from the time it
//!   was due, not from when it could be sent, so a server that stalls is
//!   charged for the requests it delayed (no "coordinated omission"). A
//!   request that had a free slot is timed from its actual send, so the
//!   timer's 1 ms granularity is not charged to the server.
//!
//! The client is a single-threaded tokio runtime by default, like the
//! reference client the project's measurements were made with: on a 2-core
//! machine the client and the server share the CPU, and one client thread
//! leaves the other core to the server. `threads` runs several runtimes,
//! each with its share of the connections.
//!

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UdpSocket, UnixDatagram, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use sockserv::addr::Endpoint;
use sockserv::frame::{Codec, Decoded, Decoder, Encoder, Framing};

/// The largest UDP payload IPv4 can carry (65,535 − 8 − 20).
const MAX_UDP_PAYLOAD: usize = 65_507;
/// The largest request on a stream: big enough for any sensible test, small
/// enough that `connections × pipeline` buffers cannot exhaust memory by a
/// typo.
const MAX_STREAM_PAYLOAD: usize = 16 * 1024 * 1024;
/// How many connects one runtime has in progress at once. A server's listen
/// backlog is often 128 (tokio's default); firing thousands of SYNs at once
/// overflows it and costs each dropped one a 1 s retransmission.
const CONNECT_CONCURRENCY: usize = 64;
/// The longest latency the histogram records (one hour); longer is clamped.
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;
/// How often the caller's progress callback runs.
const PROGRESS_TICK: Duration = Duration::from_millis(100);
/// How often a runtime checks whether the caller asked to stop.
const STOP_POLL: Duration = Duration::from_millis(25);
/// Timed-out datagram requests remembered per connection, so that a reply
/// arriving after its timeout is recognised as late rather than wrong.
const LATE_MEMORY: usize = 64;

/// What to run: the target, the load shape and the limits.
///
/// Build one with [`BenchConfig::new`] and change the public fields;
/// [`run_with_progress`] validates the combination and refuses impossible ones with an
/// [`io::ErrorKind::InvalidInput`] error.
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

/// The kinds of error a run counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A connection could not be opened (or, for UDP, the first exchange was
    /// refused).
    Connect,
    /// A socket error or an early close by the server. Stops the connection.
    Io,
    /// A reply that is not the request it answers. Stops the connection.
    WrongReply,
    /// No reply within the timeout.
    Timeout,
}

impl ErrorKind {
    /// All kinds, in report order.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Io,
        ErrorKind::WrongReply,
        ErrorKind::Timeout,
    ];

    /// The key used in JSON and in the human report.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Io => "io",
            ErrorKind::WrongReply => "wrong_reply",
            ErrorKind::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub io: u64,
    pub wrong_reply: u64,
    pub timeout: u64,
}

impl ErrorCounts {
    /// All errors of every kind.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.wrong_reply + self.timeout
    }

    /// The count for one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        match kind {
            ErrorKind::Connect => self.connect,
            ErrorKind::Io => self.io,
            ErrorKind::WrongReply => self.wrong_reply,
            ErrorKind::Timeout => self.timeout,
        }
    }

    fn add(&mut self, kind: ErrorKind, n: u64) {
        match kind {
            ErrorKind::Connect => self.connect += n,
            ErrorKind::Io => self.io += n,
            ErrorKind::WrongReply => self.wrong_reply += n,
            ErrorKind::Timeout => self.timeout += n,
        }
    }
}

/// Latency percentiles of the measured replies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The endpoint as written in canonical form.
    pub endpoint: String,
    /// Connections asked for.
    pub connections: usize,
    /// Connections that were opened.
    pub connected: usize,
    pub threads: usize,
    pub pipeline: usize,
    /// Payload bytes per request.
    pub size: usize,
    /// The framing, as `--framing` would spell it.
    pub framing: String,
    /// The open-loop rate, if any (requests per second over all connections).
    pub rate: Option<f64>,
    pub warmup: Duration,
    /// How long opening the connections took (before any load; a server
    /// with a short listen backlog makes this long).
    pub connect_time: Duration,
    /// The measured window: from the end of the warm-up to the last reply
    /// (request-count runs) or to the end of the duration.
    pub duration: Duration,
    /// The run was stopped early by the caller (Ctrl-C in the CLI).
    pub interrupted: bool,
    /// Requests sent in the measured window.
    pub sent: u64,
    /// Replies received, verified and counted in the measured window.
    pub requests: u64,
    /// Datagram replies that arrived after their request had timed out
    /// (already counted as timeouts; not errors twice).
    pub late: u64,
    pub errors: ErrorCounts,
    /// The first error message of each kind that occurred.
    pub error_samples: Vec<(ErrorKind, String)>,
    /// Verified replies per second.
    pub rps: f64,
    /// Payload megabytes (10^6 bytes) per second echoed, in each direction.
    pub mb_per_s: f64,
    /// `None` when no reply was measured.
    pub latency: Option<Latency>,
}

impl Report {
    /// The report as one JSON object (see the README of `bench/` for the
    /// schema). Written by hand: the crate has no serde dependency and the
    /// object is small and flat.
    pub fn to_json(&self) -> String {
        let mut j = JsonObject::new();
        j.str("endpoint", &self.endpoint);
        j.num("connections", self.connections as f64);
        j.num("connected", self.connected as f64);
        j.num("threads", self.threads as f64);
        j.num("pipeline", self.pipeline as f64);
        j.num("size", self.size as f64);
        j.str("framing", &self.framing);
        match self.rate {
            Some(r) => j.num("rate", r),
            None => j.raw("rate", "null"),
        }
        j.num("warmup_s", self.warmup.as_secs_f64());
        j.num("connect_s", round3(self.connect_time.as_secs_f64()));
        j.num("duration_s", self.duration.as_secs_f64());
        j.raw(
            "interrupted",
            if self.interrupted { "true" } else { "false" },
        );
        j.num("sent", self.sent as f64);
        j.num("requests", self.requests as f64);
        j.num("late", self.late as f64);
        j.num("rps", round3(self.rps));
        j.num("mb_per_s", round3(self.mb_per_s));
        let mut errors = JsonObject::new();
        errors.num("total", self.errors.total() as f64);
        for kind in ErrorKind::ALL {
            errors.num(kind.name(), self.errors.get(kind) as f64);
        }
        j.raw("errors", &errors.finish());
        let mut samples = JsonObject::new();
        for (kind, msg) in &self.error_samples {
            samples.str(kind.name(), msg);
        }
        j.raw("error_samples", &samples.finish());
        match &self.latency {
            Some(l) => {
                let mut lat = JsonObject::new();
                lat.num("min", round3(l.min_us));
                lat.num("mean", round3(l.mean_us));
                lat.num("p50", round3(l.p50_us));
                lat.num("p90", round3(l.p90_us));
                lat.num("p99", round3(l.p99_us));
                lat.num("p99_9", round3(l.p999_us));
                lat.num("max", round3(l.max_us));
                j.raw("latency_us", &lat.finish());
            }
            None => j.raw("latency_us", "null"),
        }
        j.finish()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(r) => format!("open loop at {} req/s", group(r.round() as u64)),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "{}: {}, {} connection{} ({} open in {:.2} s), {} thread{}",
            self.endpoint,
            mode,
            self.connections,
            plural(self.connections as u64),
            self.connected,
            self.connect_time.as_secs_f64(),
            self.threads,
            plural(self.threads as u64),
        )?;
        writeln!(
            f,
            "  load      {}-byte requests, framing {}, pipeline {}",
            self.size, self.framing, self.pipeline,
        )?;
        let warm = if self.warmup.is_zero() {
            String::new()
        } else {
            format!(" after {:.1} s of warm-up", self.warmup.as_secs_f64())
        };
        let stopped = if self.interrupted {
            " (interrupted)"
        } else {
            ""
        };
        writeln!(
            f,
            "  requests  {} in {:.2} s{}{}: {} req/s, {:.2} MB/s each way",
            group(self.requests),
            self.duration.as_secs_f64(),
            warm,
            stopped,
            group(self.rps.round() as u64),
            self.mb_per_s,
        )?;
        match &self.latency {
            Some(l) => writeln!(
                f,
                "  latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
                us(l.p50_us),
                us(l.p90_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                us(l.mean_us),
            )?,
            None => writeln!(f, "  latency   no replies measured")?,
        }
        if self.late > 0 {
            writeln!(
                f,
                "  late      {} replies after their timeout",
                group(self.late)
            )?;
        }
        if self.errors.total() == 0 {
            write!(f, "  errors    none")
        } else {
            write!(
                f,
                "  errors    {} (connect {}, io {}, wrong reply {}, timeout {})",
                group(self.errors.total()),
                group(self.errors.connect),
                group(self.errors.io),
                group(self.errors.wrong_reply),
                group(self.errors.timeout),
            )?;
            for (kind, msg) in &self.error_samples {
                write!(f, "\n  first {:<9} {msg}", kind.name().replace('_', " "))?;
            }
            Ok(())
        }
    }
}

/// Which part of a run is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening connections.
    Connecting,
    /// Loading without recording.
    Warmup,
    /// Loading and recording.
    Measuring,
}

/// A snapshot handed to the progress callback of [`run_with_progress`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    /// Time since the current phase began.
    pub elapsed: Duration,
    /// Connections opened so far.
    pub connected: usize,
    /// Measured (verified) replies so far.
    pub requests: u64,
    /// All replies so far, warm-up included: the basis of a live rate.
    pub replies: u64,
    /// Errors so far.
    pub errors: u64,
}

/// What the progress callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// End the run now and report what was measured (the report says
    /// `interrupted`).
    Stop,
}

/// Runs the benchmark described by `config` and reports on it, calling
/// `progress` about every 100 ms on the calling thread (the load itself
/// runs on `config.threads` threads of its own).
///
/// Fails (without a report) when the configuration is impossible
/// ([`io::ErrorKind::InvalidInput`]), when the endpoint cannot be resolved,
/// or when not a single connection could be opened; the error message is
/// one line, e.g. `cannot connect to tcp://127.0.0.1:1: connection refused`.
/// Anything that goes wrong after that is counted in the report.
pub fn run_with_progress(
    config: &BenchConfig,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> io::Result<Report> {
    let plan = Arc::new(Plan::new(config)?);
    raise_nofile_limit();
    check_fd_budget(config.connections)?;
    let targets = Arc::new(resolve_targets(&config.endpoint, config.connections)?);
    let _cleanup = TempPaths(targets.local_paths.clone());

    let shared = Arc::new(Shared {
        budget: config.requests.map(AtomicU64::new),
        start: OnceLock::new(),
        stop: AtomicBool::new(false),
        connected: AtomicUsize::new(0),
        replies: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        barrier: Barrier::new(plan.threads),
    });

    let (tx, rx) = mpsc::channel::<io::Result<ThreadOutcome>>();
    let mut handles = Vec::with_capacity(plan.threads);
    for thread in 0..plan.threads {
        let (plan, shared, targets, tx) =
            (plan.clone(), shared.clone(), targets.clone(), tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-{thread}"))
            .spawn(move || {
                let result = run_thread(thread, &plan, &shared, &targets);
                let _ = tx.send(result);
            })?;
        handles.push(handle);
    }
    drop(tx);

    let mut outcomes = Vec::with_capacity(plan.threads);
    let mut interrupted = false;
    let phase_start = Instant::now();
    while outcomes.len() < plan.threads {
        match rx.recv_timeout(PROGRESS_TICK) {
            Ok(outcome) => outcomes.push(outcome),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        let snapshot = shared.snapshot(&plan, phase_start);
        if progress(&snapshot) == Control::Stop {
            interrupted = true;
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    if outcomes.len() < plan.threads {
        return Err(io::Error::other("a benchmark thread failed"));
    }
    let outcomes = outcomes.into_iter().collect::<io::Result<Vec<_>>>()?;
    build_report(config, &plan, outcomes, interrupted)
}

// ---------------------------------------------------------------------------
// Planning: everything decided once, before any socket is opened.

/// The validated, precomputed form of a [`BenchConfig`], shared read-only by
/// every runtime.
#[derive(Debug)]
struct Plan {
    connections: usize,
    threads: usize,
    size: usize,
    pipeline: usize,
    /// `None` for raw framing: replies are cut into `size`-byte pieces.
    framing: Option<Framing>,
    stream: bool,
    warmup: Duration,
    duration: Option<Duration>,
    /// Per-connection interval between scheduled sends (open loop).
    interval: Option<Duration>,
    reply_timeout: Duration,
    connect_timeout: Duration,
    payloads: Payloads,
    endpoint_text: String,
}

impl Plan {
    fn new(config: &BenchConfig) -> io::Result<Plan> {
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
        let framing = (!raw).then(|| config.framing.clone());
        let payloads = Payloads::new(config.size, framing.as_ref())?;
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
        })
    }
}

/// Request payloads: printable, unique per (connection, sequence number),
/// cheap to regenerate for checking a reply.
///
/// A payload is a window into a long "tape" of the alphabet repeated, with
/// the connection number written in the first 4 bytes and the sequence
/// number in the last 8 (base-|alphabet| digits), as far as the size allows.
/// Regenerating the expected reply is a `memcpy` plus 12 digit writes, so
/// checking every reply costs next to nothing even for large payloads.
#[derive(Debug)]
struct Payloads {
    alphabet: Vec<u8>,
    tape: Vec<u8>,
    size: usize,
}

impl Payloads {
    /// Printable ASCII (no space, so a line protocol that trims cannot change
    /// a payload), minus every byte of the framing's delimiters (all of
    /// them: `delim:A|B` splits on either) and of whatever the encoder
    /// appends after a payload (`\n`, `\r\n`).
    fn new(size: usize, framing: Option<&Framing>) -> io::Result<Payloads> {
        let mut alphabet: Vec<u8> = (0x21u8..=0x7e).collect();
        if let Some(framing) = framing {
            let codec = framing.codec();
            let mut banned = Vec::new();
            if let Codec::Delimiter(d) = &codec {
                d.delimiters().for_each(|d| banned.extend_from_slice(d));
            }
            let mut probe = Vec::new();
            if codec.encode(b"x", &mut probe).is_ok() && probe.len() > 1 && probe[0] == b'x' {
                banned.extend_from_slice(&probe[1..]);
            }
            alphabet.retain(|b| !banned.contains(b));
        }
        if alphabet.len() < 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the framing's delimiter leaves no printable bytes to build requests from",
            ));
        }
        let a = alphabet.len();
        let tape: Vec<u8> = alphabet.iter().copied().cycle().take(size + a).collect();
        let payloads = Payloads {
            alphabet,
            tape,
            size,
        };
        if let Some(framing) = framing {
            // Every payload has the same length and alphabet, so if one
            // encodes, all do.
            let mut sample = vec![0; size];
            payloads.fill(&mut sample, 0, 0);
            let mut out = Vec::new();
            if let Err(e) = framing.codec().encode(&sample, &mut out) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{size}-byte requests cannot be sent with --framing {framing}: {e}"),
                ));
            }
        }
        Ok(payloads)
    }

    /// Writes the payload of request `seq` on connection `conn` into `out`
    /// (`out.len()` must be `size`).
    fn fill(&self, out: &mut [u8], conn: usize, seq: u64) {
        let a = self.alphabet.len() as u64;
        let offset = ((conn as u64).wrapping_mul(7).wrapping_add(seq) % a) as usize;
        out.copy_from_slice(&self.tape[offset..offset + self.size]);
        let n = out.len();
        // Sequence number in the last (up to) 8 bytes, least significant last.
        let seq_digits = n.min(8);
        let mut s = seq;
        for b in out[n - seq_digits..].iter_mut().rev() {
            *b = self.alphabet[(s % a) as usize];
            s /= a;
        }
        // Connection number in the first 4 bytes, when they do not overlap.
        if n >= 12 {
            let mut c = conn as u64;
            for b in out[..4].iter_mut().rev() {
                *b = self.alphabet[(c % a) as usize];
                c /= a;
            }
        }
    }

    fn append(&self, out: &mut Vec<u8>, conn: usize, seq: u64) {
        let start = out.len();
        out.resize(start + self.size, 0);
        self.fill(&mut out[start..], conn, seq);
    }
}

/// Where each connection goes, resolved once up front.
#[derive(Debug)]
struct Targets {
    /// IP addresses to try in order (TCP, UDP).
    addrs: Vec<SocketAddr>,
    /// The client's own socket path per connection (Unix datagram only: the
    /// server can only reply to a bound address).
    local_paths: Vec<PathBuf>,
    endpoint: Endpoint,
}

fn resolve_targets(endpoint: &Endpoint, connections: usize) -> io::Result<Targets> {
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
    Ok(Targets {
        addrs,
        local_paths,
        endpoint: endpoint.clone(),
    })
}

/// Removes the client's Unix datagram socket files when the run ends, also
/// on error paths.
struct TempPaths(Vec<PathBuf>);

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
pub fn raise_nofile_limit() {
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
fn check_fd_budget(connections: usize) -> io::Result<()> {
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

// ---------------------------------------------------------------------------
// Running: one current-thread runtime per thread.

/// State shared by the caller's thread and every runtime thread.
struct Shared {
    /// Measured requests still to send (request-count runs).
    budget: Option<AtomicU64>,
    /// When the load started (after every runtime connected); set once by
    /// whichever runtime passes the barrier first.
    start: OnceLock<Instant>,
    stop: AtomicBool,
    connected: AtomicUsize,
    replies: AtomicU64,
    measured: AtomicU64,
    errors: AtomicU64,
    barrier: Barrier,
}

impl Shared {
    fn snapshot(&self, plan: &Plan, began: Instant) -> Progress {
        let now = Instant::now();
        let (phase, elapsed) = match self.start.get() {
            None => (Phase::Connecting, now - began),
            Some(&start) if now < start + plan.warmup => (Phase::Warmup, now - start),
            Some(&start) => (
                Phase::Measuring,
                now.saturating_duration_since(start + plan.warmup),
            ),
        };
        Progress {
            phase,
            elapsed,
            connected: self.connected.load(Ordering::Relaxed),
            requests: self.measured.load(Ordering::Relaxed),
            replies: self.replies.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Takes one measured request from the budget; false when it is spent.
    #[inline]
    fn take_budget(&self) -> bool {
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// What one runtime hands back.
struct ThreadOutcome {
    connect_started: Instant,
    stats: Stats,
    connected: usize,
    measure_start: Instant,
    finished: Instant,
}

/// Counters and the histogram of one runtime. Shared by its tasks through an
/// `Rc<RefCell<_>>`: the runtime is single-threaded, so no locks, and
/// aborting a task at the end of the run loses none of what it counted.
struct Stats {
    hist: Histogram<u64>,
    requests: u64,
    sent: u64,
    late: u64,
    errors: ErrorCounts,
    samples: [Option<String>; 4],
    last_reply: Option<Instant>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
            requests: 0,
            sent: 0,
            late: 0,
            errors: ErrorCounts::default(),
            samples: Default::default(),
            last_reply: None,
        }
    }

    fn error(
        &mut self,
        shared: &Shared,
        kind: ErrorKind,
        n: u64,
        message: impl FnOnce() -> String,
    ) {
        self.errors.add(kind, n);
        shared.errors.fetch_add(n, Ordering::Relaxed);
        let slot = &mut self.samples[kind.index()];
        if slot.is_none() {
            *slot = Some(message());
        }
    }
}

/// The per-runtime context every connection task holds.
struct Ctx {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: RefCell<Stats>,
    measure_start: Instant,
    end: Option<Instant>,
}

fn run_thread(
    thread: usize,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    targets: &Arc<Targets>,
) -> io::Result<ThreadOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        drive_thread(thread, plan.clone(), shared.clone(), targets.clone()),
    )
}

/// One runtime's life: connect its share of the connections, wait for every
/// other runtime to do the same, load, and stop at the end of the duration,
/// when the caller asks, or when every connection is done.
async fn drive_thread(
    thread: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    targets: Arc<Targets>,
) -> io::Result<ThreadOutcome> {
    let connect_started = Instant::now();
    let mine: Vec<usize> = (thread..plan.connections).step_by(plan.threads).collect();
    let mut stats = Stats::new();

    // Connect, a bounded number at a time.
    let permits = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = JoinSet::new();
    for &conn in &mine {
        let (permits, targets, plan) = (permits.clone(), targets.clone(), plan.clone());
        connecting.spawn_local(async move {
            let _permit = permits.acquire().await;
            let result = tokio::time::timeout(plan.connect_timeout, open(&targets, conn))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            (conn, result)
        });
    }
    let mut sockets = Vec::with_capacity(mine.len());
    loop {
        // A connect phase against a server that does not accept can take
        // long: a Ctrl-C (the caller's stop) must end it too.
        let joined = tokio::select! {
            j = connecting.join_next() => match j {
                Some(j) => j,
                None => break,
            },
            _ = tokio::time::sleep(STOP_POLL) => {
                if shared.stop.load(Ordering::Relaxed) {
                    connecting.abort_all();
                    break;
                }
                continue;
            }
        };
        let Ok((conn, result)) = joined else { continue };
        match result {
            Ok(sock) => {
                shared.connected.fetch_add(1, Ordering::Relaxed);
                sockets.push((conn, sock));
            }
            Err(e) => {
                if shared.stop.load(Ordering::Relaxed) {
                    continue;
                }
                stats.error(&shared, ErrorKind::Connect, 1, || {
                    format!("cannot connect to {}: {}", targets.endpoint, describe(&e))
                });
            }
        }
    }
    sockets.sort_by_key(|(conn, _)| *conn);
    let connected = sockets.len();

    // Start together: a runtime that connects faster must not load the
    // server alone for a while and skew the measured window.
    let shared2 = shared.clone();
    tokio::task::spawn_blocking(move || {
        shared2.barrier.wait();
    })
    .await
    .map_err(io::Error::other)?;
    let start = *shared.start.get_or_init(Instant::now);
    let measure_start = start + plan.warmup;
    let end = plan.duration.map(|d| measure_start + d);

    let ctx = Rc::new(Ctx {
        plan: plan.clone(),
        shared: shared.clone(),
        stats: RefCell::new(stats),
        measure_start,
        end,
    });

    let mut tasks = JoinSet::new();
    for (conn, sock) in sockets {
        let ctx = ctx.clone();
        // Open loop: spread the connections' first sends over one interval
        // so that the total rate is even, not a burst every interval.
        let first_due = plan
            .interval
            .map(|iv| start + iv.mul_f64(conn as f64 / plan.connections as f64));
        tasks.spawn_local(async move {
            let result = match sock {
                Sock::Tcp(s) => Conn::new(&ctx, conn, s, first_due).run().await,
                Sock::Unix(s) => Conn::new(&ctx, conn, s, first_due).run().await,
                Sock::Udp(s) => Conn::new(&ctx, conn, s, first_due).run().await,
                Sock::UnixDgram(s) => Conn::new(&ctx, conn, s, first_due).run().await,
            };
            if let Err(e) = result {
                ctx.stats
                    .borrow_mut()
                    .error(&ctx.shared, e.kind, 1, || e.message);
            }
        });
    }

    // Supervise: end of duration, caller's stop, or all connections done.
    let mut poll = tokio::time::interval(STOP_POLL);
    let end_sleep = tokio::time::sleep_until(
        end.unwrap_or(start + Duration::from_secs(100 * 365 * 86_400))
            .into(),
    );
    tokio::pin!(end_sleep);
    let mut finished = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = &mut end_sleep => {
                finished = end;
                break;
            }
            _ = poll.tick() => {
                if shared.stop.load(Ordering::Relaxed) {
                    finished = Some(Instant::now());
                    break;
                }
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let finished = finished.unwrap_or_else(|| {
        ctx.stats
            .borrow()
            .last_reply
            .unwrap_or(measure_start)
            .max(measure_start)
    });
    drop(tasks);
    let stats = match Rc::try_unwrap(ctx) {
        Ok(ctx) => ctx.stats.into_inner(),
        Err(ctx) => std::mem::replace(&mut *ctx.stats.borrow_mut(), Stats::new()),
    };
    Ok(ThreadOutcome {
        connect_started,
        stats,
        connected,
        measure_start,
        finished,
    })
}

/// An open connection of any transport.
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
    Udp(UdpSocket),
    UnixDgram(UnixDatagram),
}

async fn open(targets: &Targets, conn: usize) -> io::Result<Sock> {
    match &targets.endpoint {
        Endpoint::Tcp(_) => {
            let mut last = None;
            for addr in &targets.addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Sock::Tcp(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
        }
        Endpoint::Udp(_) => {
            let mut last = None;
            for addr in &targets.addrs {
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let attempt = async {
                    let s = UdpSocket::bind(local).await?;
                    s.connect(addr).await?;
                    Ok::<_, io::Error>(s)
                };
                match attempt.await {
                    Ok(s) => return Ok(Sock::Udp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
        }
        Endpoint::Unix(path) => Ok(Sock::Unix(UnixStream::connect(path).await?)),
        Endpoint::UnixDgram(path) => {
            let local = &targets.local_paths[conn];
            let _ = std::fs::remove_file(local);
            let s = UnixDatagram::bind(local)?;
            s.connect(path)?;
            Ok(Sock::UnixDgram(s))
        }
    }
}

/// The three socket operations a connection needs, over every transport.
/// Readiness-based (`ready` + `try_*`) rather than `AsyncRead`/`AsyncWrite`
/// so one task can wait for "readable, or writable while a write is
/// pending" at once: a client that blocks in `write_all` while the server
/// blocks writing replies nobody reads would deadlock on large pipelines.
trait Io {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>>;
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_send(&self, buf: &[u8]) -> io::Result<usize>;
    /// The pending socket error (SO_ERROR), which `try_recv` cannot see
    /// when the socket is in error without being readable.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

macro_rules! impl_io {
    ($t:ty, $recv:ident, $send:ident) => {
        impl Io for $t {
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> {
                <$t>::ready(self, interest)
            }
            #[inline]
            fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::$recv(self, buf)
            }
            #[inline]
            fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::$send(self, buf)
            }
            fn take_error(&self) -> io::Result<Option<io::Error>> {
                <$t>::take_error(self)
            }
        }
    };
}

impl_io!(TcpStream, try_read, try_write);
impl_io!(UnixStream, try_read, try_write);
impl_io!(UdpSocket, try_recv, try_send);
impl_io!(UnixDatagram, try_recv, try_send);

/// Why a connection stopped early.
struct ConnError {
    kind: ErrorKind,
    message: String,
}

/// A request sent (or scheduled) and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    /// Send time, or (open loop, when the request waited for a free slot)
    /// the time it was due: latency is measured from here.
    stamp: Instant,
    /// Sent after the warm-up, so its reply counts.
    measured: bool,
}

/// One connection's driver: keep `pipeline` requests in flight, check each
/// reply, record its latency.
struct Conn<'a, S: Io> {
    ctx: &'a Ctx,
    plan: &'a Plan,
    id: usize,
    sock: S,
    codec: Option<Codec>,
    inflight: VecDeque<InFlight>,
    next_seq: u64,
    /// Encoded requests not yet written (a stream may take them in parts;
    /// a datagram socket holds at most one unsent datagram here).
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Scratch space for the expected payload of a reply.
    expect: Vec<u8>,
    /// Open loop: when the next request is due.
    next_due: Option<Instant>,
    /// No more requests will be sent (request budget spent or duration over).
    exhausted: bool,
    /// When the pipeline last went from full to having a free slot.
    room_since: Instant,
    replies: u64,
    /// Recently timed-out datagram requests (to recognise late replies).
    lost: VecDeque<u64>,
}

impl<'a, S: Io> Conn<'a, S> {
    fn new(ctx: &'a Ctx, id: usize, sock: S, first_due: Option<Instant>) -> Self {
        let plan = &*ctx.plan;
        let rcap = if plan.stream {
            // Room for a whole pipeline of replies twice over, so one read
            // can take them all; small for 10,000 ping-pong connections.
            (plan.size * plan.pipeline * 2).clamp(1024, 1 << 20)
        } else {
            MAX_UDP_PAYLOAD + 1
        };
        Conn {
            ctx,
            plan,
            id,
            sock,
            codec: plan.framing.as_ref().map(Framing::codec),
            inflight: VecDeque::with_capacity(plan.pipeline),
            next_seq: 0,
            wbuf: Vec::new(),
            wpos: 0,
            rbuf: vec![0; rcap],
            rstart: 0,
            rend: 0,
            expect: vec![0; plan.size],
            next_due: first_due,
            exhausted: false,
            room_since: first_due.unwrap_or_else(Instant::now),
            replies: 0,
            lost: VecDeque::new(),
        }
    }

    async fn run(mut self) -> Result<(), ConnError> {
        // One timer per connection, re-armed only when its deadline must
        // move: re-creating a timeout around every wait would cost a timer
        // insertion per message, a visible share of a client that is
        // itself the bottleneck.
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        let mut armed_at: Option<Instant> = None;
        let slack = (self.plan.reply_timeout / 8).min(Duration::from_secs(1));
        loop {
            let now = Instant::now();
            self.fill(now)?;
            self.flush()?;
            if self.inflight.is_empty() && self.exhausted {
                return Ok(());
            }
            if !self.plan.stream {
                self.expire(now);
            }

            // The wait ends on readiness or at the deadline: the oldest
            // request's timeout, or (open loop, with room in the pipeline)
            // the next scheduled send. A scheduled send must not be late;
            // a timeout may be detected up to `slack` late, so the timer
            // moves only about once per `slack` instead of once per reply.
            let timeout_at = self
                .inflight
                .front()
                .map(|f| f.stamp + self.plan.reply_timeout);
            let due = self
                .next_due
                .filter(|_| self.inflight.len() < self.plan.pipeline && !self.exhausted);
            let (lower, upper) = match (timeout_at, due) {
                (Some(t), Some(d)) => (t.min(d), (t + slack).min(d)),
                (Some(t), None) => (t, t + slack),
                (None, Some(d)) => (d, d),
                (None, None) => (
                    now + Duration::from_secs(3600),
                    now + Duration::from_secs(7200),
                ),
            };
            if armed_at.is_none_or(|a| a < lower || a > upper) {
                timer.as_mut().reset(upper.into());
                armed_at = Some(upper);
            }

            // ERROR too: a UDP socket whose datagram was refused (ICMP port
            // unreachable) reports only EPOLLERR, never readable.
            let interest = if self.wpos < self.wbuf.len() {
                Interest::READABLE | Interest::WRITABLE | Interest::ERROR
            } else {
                Interest::READABLE | Interest::ERROR
            };
            let ready = tokio::select! {
                biased;
                r = self.sock.ready(interest) => Some(r.map_err(|e| self.io_error(&e))?),
                _ = timer.as_mut() => None,
            };
            match ready {
                Some(r) if r.is_readable() || r.is_read_closed() => self.receive()?,
                Some(r) if r.is_error() => {
                    let e = self.sock.take_error().and_then(|e| e.map_or(Ok(()), Err));
                    if let Err(e) = e {
                        return Err(self.io_error(&e));
                    }
                }
                Some(_) => {}
                None => {
                    armed_at = None;
                    let now = Instant::now();
                    if self.plan.stream {
                        if let Some(f) = self.inflight.front() {
                            if now >= f.stamp + self.plan.reply_timeout {
                                return Err(ConnError {
                                    kind: ErrorKind::Timeout,
                                    message: format!(
                                        "connection {}, request {}: no reply within {}",
                                        self.id,
                                        f.seq,
                                        secs(self.plan.reply_timeout)
                                    ),
                                });
                            }
                        }
                    } else {
                        self.expire(now);
                    }
                }
            }
        }
    }

    /// Queues requests until the pipeline is full (closed loop) or no more
    /// are due (open loop).
    fn fill(&mut self, now: Instant) -> Result<(), ConnError> {
        while self.inflight.len() < self.plan.pipeline && !self.exhausted {
            // A datagram socket that refused the last datagram (full send
            // buffer) gets no more until that one is out.
            if !self.plan.stream && !self.wbuf.is_empty() {
                break;
            }
            // Open loop: latency counts from the scheduled time when the
            // request had to wait for a reply to free its slot (the server's
            // delay: no coordinated omission), but from the actual send when
            // a slot was free at the scheduled time, so the timer's 1 ms
            // granularity is not charged to the server.
            let (sched, stamp) = match self.next_due {
                Some(due) if due > now => break,
                Some(due) if self.room_since <= due => (due, now),
                Some(due) => (due, due),
                None => (now, now),
            };
            if self.ctx.end.is_some_and(|end| sched >= end) {
                self.exhausted = true;
                break;
            }
            let measured = sched >= self.ctx.measure_start;
            if measured && !self.ctx.shared.take_budget() {
                self.exhausted = true;
                break;
            }
            if let Some(due) = &mut self.next_due {
                *due += self.plan.interval.unwrap_or_default();
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.encode(seq);
            self.inflight.push_back(InFlight {
                seq,
                stamp,
                measured,
            });
            if measured {
                self.ctx.stats.borrow_mut().sent += 1;
            }
            if !self.plan.stream {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn encode(&mut self, seq: u64) {
        match &self.codec {
            None => self.plan.payloads.append(&mut self.wbuf, self.id, seq),
            Some(codec) => {
                self.plan.payloads.fill(&mut self.expect, self.id, seq);
                // Validated in `Payloads::new`: every payload encodes.
                let _ = codec.encode(&self.expect, &mut self.wbuf);
            }
        }
    }

    /// Writes as much of the pending output as the socket takes now.
    fn flush(&mut self) -> Result<(), ConnError> {
        while self.wpos < self.wbuf.len() {
            match self.sock.try_send(&self.wbuf[self.wpos..]) {
                Ok(n) if self.plan.stream => self.wpos += n,
                // A datagram goes whole or not at all.
                Ok(_) => self.wpos = self.wbuf.len(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(&e)),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }

    /// Reads what has arrived and processes every whole reply in it.
    fn receive(&mut self) -> Result<(), ConnError> {
        if !self.plan.stream {
            return self.receive_datagram();
        }
        if self.rend == self.rbuf.len() {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            } else {
                let grown = self.rbuf.len() * 2;
                self.rbuf.resize(grown, 0);
            }
        }
        let n = match self.sock.try_recv(&mut self.rbuf[self.rend..]) {
            Ok(0) => {
                return Err(ConnError {
                    kind: ErrorKind::Io,
                    message: format!(
                        "connection {}: closed by the server with {} repl{} outstanding",
                        self.id,
                        self.inflight.len(),
                        if self.inflight.len() == 1 { "y" } else { "ies" }
                    ),
                })
            }
            Ok(n) => n,
            Err(e) if not_ready(&e) => return Ok(()),
            Err(e) => return Err(self.io_error(&e)),
        };
        self.rend += n;
        let now = Instant::now();
        loop {
            let avail = &self.rbuf[self.rstart..self.rend];
            let (start, end, consumed) = match &mut self.codec {
                None if avail.len() >= self.plan.size => (0, self.plan.size, self.plan.size),
                None => break,
                Some(codec) => match codec.decode(avail) {
                    Decoded::Frame {
                        start,
                        end,
                        consumed,
                    } => (start, end, consumed),
                    Decoded::Incomplete { consumed } => {
                        self.rstart += consumed;
                        break;
                    }
                    Decoded::TooLong { error, .. } => {
                        return Err(ConnError {
                            kind: ErrorKind::WrongReply,
                            message: format!(
                                "connection {}: reply cannot be decoded: {error}",
                                self.id
                            ),
                        })
                    }
                },
            };
            let (a, b) = (self.rstart + start, self.rstart + end);
            self.rstart += consumed;
            self.check_stream_reply(a, b, now)?;
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        Ok(())
    }

    /// A stream reply answers the oldest request in flight, or it is wrong.
    fn check_stream_reply(&mut self, a: usize, b: usize, now: Instant) -> Result<(), ConnError> {
        let Some(req) = self.inflight.pop_front() else {
            return Err(ConnError {
                kind: ErrorKind::WrongReply,
                message: format!(
                    "connection {}: a reply arrived with no request outstanding: {}",
                    self.id,
                    excerpt(&self.rbuf[a..b], 0)
                ),
            });
        };
        self.plan.payloads.fill(&mut self.expect, self.id, req.seq);
        if self.rbuf[a..b] != self.expect[..] {
            return Err(wrong_reply(
                self.id,
                req.seq,
                &self.expect,
                &self.rbuf[a..b],
            ));
        }
        self.record(req, now);
        Ok(())
    }

    fn receive_datagram(&mut self) -> Result<(), ConnError> {
        loop {
            let n = match self.sock.try_recv(&mut self.rbuf) {
                Ok(n) => n,
                Err(e) if not_ready(&e) => return Ok(()),
                Err(e) => return Err(self.io_error(&e)),
            };
            let now = Instant::now();
            // Replies normally come in order, so the first candidate almost
            // always matches; a match further on means earlier datagrams
            // were lost or reordered, and their timeouts will say which.
            let mut matched = None;
            for (i, req) in self.inflight.iter().enumerate() {
                if n != self.plan.size {
                    break;
                }
                self.plan.payloads.fill(&mut self.expect, self.id, req.seq);
                if self.rbuf[..n] == self.expect[..] {
                    matched = Some(i);
                    break;
                }
            }
            match matched {
                Some(i) => {
                    let req = self.inflight.remove(i).expect("index from iteration");
                    self.record(req, now);
                }
                None => {
                    let late = n == self.plan.size
                        && self.lost.iter().any(|&seq| {
                            self.plan.payloads.fill(&mut self.expect, self.id, seq);
                            self.rbuf[..n] == self.expect[..]
                        });
                    if late {
                        self.ctx.stats.borrow_mut().late += 1;
                        continue;
                    }
                    let expected_seq = self
                        .inflight
                        .front()
                        .map(|f| f.seq)
                        .unwrap_or(self.next_seq);
                    self.plan
                        .payloads
                        .fill(&mut self.expect, self.id, expected_seq);
                    return Err(wrong_reply(
                        self.id,
                        expected_seq,
                        &self.expect,
                        &self.rbuf[..n],
                    ));
                }
            }
        }
    }

    /// Datagram requests past their timeout are lost: count and forget them.
    fn expire(&mut self, now: Instant) {
        let timeout = self.plan.reply_timeout;
        let mut expired = 0;
        let mut first = None;
        self.inflight.retain(|f| {
            if now >= f.stamp + timeout {
                expired += 1;
                first.get_or_insert(f.seq);
                false
            } else {
                true
            }
        });
        if expired == 0 {
            return;
        }
        self.room_since = now;
        let first = first.unwrap_or_default();
        for seq in first..first + expired {
            self.lost.push_back(seq);
        }
        while self.lost.len() > LATE_MEMORY {
            self.lost.pop_front();
        }
        let (id, t) = (self.id, self.plan.reply_timeout);
        self.ctx
            .stats
            .borrow_mut()
            .error(&self.ctx.shared, ErrorKind::Timeout, expired, || {
                format!(
                    "connection {id}, request {first}: no reply within {} (datagram lost?)",
                    secs(t)
                )
            });
    }

    #[inline]
    fn record(&mut self, req: InFlight, now: Instant) {
        if self.inflight.len() + 1 == self.plan.pipeline {
            self.room_since = now;
        }
        self.replies += 1;
        let shared = &self.ctx.shared;
        shared.replies.fetch_add(1, Ordering::Relaxed);
        if !req.measured || self.ctx.end.is_some_and(|end| now > end) {
            return;
        }
        let mut stats = self.ctx.stats.borrow_mut();
        let ns = now.saturating_duration_since(req.stamp).as_nanos() as u64;
        stats.hist.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
        stats.requests += 1;
        stats.last_reply = Some(now);
        shared.measured.fetch_add(1, Ordering::Relaxed);
    }

    /// An I/O error. A refused datagram before any reply means nothing
    /// listens there: that is a failure to connect, not a broken exchange.
    fn io_error(&self, e: &io::Error) -> ConnError {
        if !self.plan.stream && self.replies == 0 && e.kind() == io::ErrorKind::ConnectionRefused {
            return ConnError {
                kind: ErrorKind::Connect,
                message: format!(
                    "cannot connect to {}: {}",
                    self.plan.endpoint_text,
                    describe(e)
                ),
            };
        }
        ConnError {
            kind: ErrorKind::Io,
            message: format!("connection {}: {}", self.id, describe(e)),
        }
    }
}

/// A non-blocking call that simply has nothing to do yet.
fn not_ready(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn wrong_reply(conn: usize, seq: u64, expected: &[u8], got: &[u8]) -> ConnError {
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let message = if expected.len() != got.len() {
        format!(
            "connection {conn}, request {seq}: reply of {} bytes to a {}-byte request (sent {}, got {})",
            got.len(),
            expected.len(),
            excerpt(expected, at),
            excerpt(got, at)
        )
    } else if expected.to_ascii_uppercase() == got {
        format!(
            "connection {conn}, request {seq}: the reply is the request upper-cased: \
             the server runs the upper handler, bench needs an echo server (serve --handler echo)"
        )
    } else {
        format!(
            "connection {conn}, request {seq}: reply differs at byte {at} (sent {}, got {})",
            excerpt(expected, at),
            excerpt(got, at)
        )
    };
    ConnError {
        kind: ErrorKind::WrongReply,
        message,
    }
}

/// Up to 24 bytes around `at`, escaped, for an error message.
fn excerpt(bytes: &[u8], at: usize) -> String {
    let from = at.saturating_sub(8).min(bytes.len());
    let to = (from + 24).min(bytes.len());
    let mut s = String::new();
    if from > 0 {
        s.push_str("...");
    }
    s.push('"');
    let _ = write!(s, "{}", bytes[from..to].escape_ascii());
    s.push('"');
    if to < bytes.len() {
        s.push_str("...");
    }
    s
}

fn build_report(
    config: &BenchConfig,
    plan: &Plan,
    outcomes: Vec<ThreadOutcome>,
    interrupted: bool,
) -> io::Result<Report> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .expect("constant histogram bounds are valid");
    let mut errors = ErrorCounts::default();
    let mut samples: [Option<String>; 4] = Default::default();
    let (mut requests, mut sent, mut late, mut connected) = (0, 0, 0, 0);
    let mut connect_time = Duration::ZERO;
    let mut window_start: Option<Instant> = None;
    let mut window_end: Option<Instant> = None;
    for o in outcomes {
        let _ = hist.add(&o.stats.hist);
        requests += o.stats.requests;
        sent += o.stats.sent;
        late += o.stats.late;
        connected += o.connected;
        for kind in ErrorKind::ALL {
            errors.add(kind, o.stats.errors.get(kind));
        }
        for (slot, sample) in samples.iter_mut().zip(o.stats.samples) {
            if slot.is_none() {
                *slot = sample;
            }
        }
        window_start = Some(window_start.map_or(o.measure_start, |s| s.min(o.measure_start)));
        let load_start = o.measure_start - config.warmup;
        connect_time = connect_time.max(load_start.saturating_duration_since(o.connect_started));
        window_end = Some(window_end.map_or(o.finished, |e| e.max(o.finished)));
    }

    // Not one connection made it: there is no benchmark to report, only the
    // reason (the first connect error says it for all).
    if errors.connect as usize >= config.connections {
        let msg = samples[ErrorKind::Connect.index()]
            .take()
            .unwrap_or_else(|| format!("cannot connect to {}", config.endpoint));
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, msg));
    }

    let duration = match (window_start, window_end) {
        (Some(s), Some(e)) => e.saturating_duration_since(s),
        _ => Duration::ZERO,
    };
    let secs = duration.as_secs_f64();
    let rps = if secs > 0.0 {
        requests as f64 / secs
    } else {
        0.0
    };
    let latency = (!hist.is_empty()).then(|| Latency {
        min_us: hist.min() as f64 / 1000.0,
        mean_us: hist.mean() / 1000.0,
        p50_us: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p90_us: hist.value_at_quantile(0.90) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        p999_us: hist.value_at_quantile(0.999) as f64 / 1000.0,
        max_us: hist.max() as f64 / 1000.0,
    });
    let error_samples = ErrorKind::ALL
        .iter()
        .zip(samples)
        .filter_map(|(k, s)| s.map(|s| (*k, s)))
        .collect();
    Ok(Report {
        endpoint: plan.endpoint_text.clone(),
        connections: config.connections,
        connected,
        threads: plan.threads,
        pipeline: plan.pipeline,
        size: plan.size,
        framing: config.framing.to_string(),
        rate: config.rate,
        warmup: config.warmup,
        connect_time,
        duration,
        interrupted,
        sent,
        requests,
        late,
        errors,
        error_samples,
        rps,
        mb_per_s: rps * plan.size as f64 / 1e6,
        latency,
    })
}

// ---------------------------------------------------------------------------
// Formatting helpers.

/// An I/O error as a short lower-case phrase: "connection refused", not
/// "Connection refused (os error 111)".
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) if chars.clone().next().is_some_and(|n| n.is_lowercase()) => {
            c.to_lowercase().chain(chars).collect()
        }
        _ => text.to_string(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in µs with a unit that keeps it short.
fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A minimal JSON object writer: string, number and pre-rendered values.
struct JsonObject {
    out: String,
    first: bool,
}

impl JsonObject {
    fn new() -> JsonObject {
        JsonObject {
            out: String::from("{"),
            first: true,
        }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push_str(", ");
        }
        self.first = false;
        json_string(&mut self.out, key);
        self.out.push_str(": ");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        json_string(&mut self.out, value);
    }

    fn num(&mut self, key: &str, value: f64) {
        self.key(key);
        if !value.is_finite() {
            self.out.push_str("null");
        } else if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = write!(self.out, "{}", value as i64);
        } else {
            let _ = write!(self.out, "{value}");
        }
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push_str(value);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(size: usize, framing: &str) -> Payloads {
        let framing: Framing = framing.parse().unwrap();
        Payloads::new(size, (!framing.is_raw()).then_some(&framing)).unwrap()
    }

    #[test]
    fn payloads_are_unique_per_connection_and_sequence() {
        let p = payloads(64, "raw");
        let mut seen = std::collections::HashSet::new();
        let mut buf = vec![0; 64];
        for conn in 0..50 {
            for seq in 0..200 {
                p.fill(&mut buf, conn, seq);
                assert!(buf.iter().all(|b| (0x21..=0x7e).contains(b)));
                assert!(
                    seen.insert(buf.clone()),
                    "duplicate payload for {conn}/{seq}"
                );
            }
        }
    }

    #[test]
    fn payloads_avoid_the_delimiter() {
        let p = payloads(300, "delim:ab");
        let mut buf = vec![0; 300];
        for seq in 0..100 {
            p.fill(&mut buf, 3, seq);
            assert!(!buf.contains(&b'a') && !buf.contains(&b'b'));
        }
        let p = payloads(1, "line");
        let mut one = [0u8; 1];
        p.fill(&mut one, 0, 5);
        assert_ne!(one[0], b'\n');
    }

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

    #[test]
    fn json_escapes_and_numbers() {
        let mut j = JsonObject::new();
        j.str("a\"b", "line\nbreak\u{1}");
        j.num("n", 3.0);
        j.num("f", 1.5);
        j.num("nan", f64::NAN);
        assert_eq!(
            j.finish(),
            r#"{"a\"b": "line\nbreak\u0001", "n": 3, "f": 1.5, "nan": null}"#
        );
    }

    #[test]
    fn io_errors_read_as_phrases() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(describe(&e), "connection refused");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(12), "12");
    }
}
