//! What a run found: error counts, the latency histogram, and the report
//! in text and JSON.
//!
//! Each runtime counts into its own [`Stats`] (no locks on the hot path);
//! [`build_report`] merges them once at the end. The JSON is written by
//! hand: the object is small and flat, and a serde dependency for it would
//! weigh more than the code.

use std::fmt::{self, Write as _};
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::plan::{BenchConfig, Plan};
use super::{Shared, ThreadOutcome};

/// The longest latency the histogram records (one hour); longer is clamped.
pub(super) const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

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

    pub(super) fn index(self) -> usize {
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

    pub(super) fn add(&mut self, kind: ErrorKind, n: u64) {
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
    /// Connections asked for (churn: clients).
    pub connections: usize,
    /// Connections that were opened (churn: over the whole run).
    pub connected: usize,
    /// The connection-churn workload: every request on a new connection, so
    /// `requests` and `rps` count connections.
    pub churn: bool,
    /// Churn: how many client addresses the connections were spread over
    /// (0: the one the system chose).
    pub sources: usize,
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
    /// Requests still without a reply when the run ended (for a timed run,
    /// after a grace of up to 1 s to collect the replies in flight). Not an
    /// error by itself, since a reply may simply be slower than the grace;
    /// but a run where nothing at all was answered fails.
    pub outstanding: u64,
    /// The reply timeout that was in force.
    pub reply_timeout: Duration,
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
        j.raw("churn", if self.churn { "true" } else { "false" });
        j.num("sources", self.sources as f64);
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
        j.num("outstanding", self.outstanding as f64);
        j.num("timeout_s", self.reply_timeout.as_secs_f64());
        j.num("rps", round3(self.rps));
        if self.churn {
            j.num("conns_per_s", round3(self.rps));
        } else {
            j.raw("conns_per_s", "null");
        }
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

impl Report {
    /// Why the run failed, in one line, or `None` when it passed: no error
    /// of any kind, not interrupted, and at least one request answered. A
    /// run that answered nothing fails even without an error, because with
    /// a reply timeout longer than the run (30 s for streams by default) a
    /// server that never answers would otherwise pass.
    pub fn failure(&self) -> Option<String> {
        let errors = self.errors.total();
        let timeouts = self.errors.timeout;
        if timeouts > 0 && timeouts == errors {
            return Some(format!(
                "{} request{} had no reply within {} (see the report)",
                group(timeouts),
                plural(timeouts),
                secs(self.reply_timeout)
            ));
        }
        if errors > 0 {
            let of_them = if timeouts > 0 {
                format!(", {} of them reply timeouts", group(timeouts))
            } else {
                String::new()
            };
            return Some(format!(
                "{} error{} during the run{of_them} (see the report)",
                group(errors),
                plural(errors)
            ));
        }
        if self.interrupted {
            return Some("interrupted".to_string());
        }
        if self.requests == 0 {
            return Some(format!(
                "no request was answered in {:.2} s ({} outstanding at the end of the run)",
                self.duration.as_secs_f64(),
                group(self.outstanding)
            ));
        }
        None
    }
}

impl Report {
    /// The first two lines of a run over long-lived connections.
    fn head(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        )
    }

    /// The first two lines of a churn run.
    fn churn_head(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: connection churn, {} client{} ({} connections opened), {} thread{}",
            self.endpoint,
            self.connections,
            plural(self.connections as u64),
            group(self.connected as u64),
            self.threads,
            plural(self.threads as u64),
        )?;
        let sources = if self.sources > 1 {
            format!(", from {} client addresses", self.sources)
        } else {
            String::new()
        };
        writeln!(
            f,
            "  load      connect, one {}-byte line, reply, close{sources}",
            self.size,
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.churn {
            self.churn_head(f)?;
        } else {
            self.head(f)?;
        }
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
        if self.churn {
            writeln!(
                f,
                "  conns     {} in {:.2} s{}{}: {} conn/s",
                group(self.requests),
                self.duration.as_secs_f64(),
                warm,
                stopped,
                group(self.rps.round() as u64),
            )?;
        } else {
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
        }
        match &self.latency {
            Some(l) => writeln!(
                f,
                "  latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}{})",
                us(l.p50_us),
                us(l.p90_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                us(l.mean_us),
                if self.churn { "; connect to reply" } else { "" },
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
        if self.outstanding > 0 {
            writeln!(
                f,
                "  outstanding {} request{} without a reply at the end of the run",
                group(self.outstanding),
                plural(self.outstanding),
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

/// Counters and the histogram of one runtime. Shared by its tasks through an
/// `Rc<RefCell<_>>`: the runtime is single-threaded, so no locks, and
/// aborting a task at the end of the run loses none of what it counted.
pub(super) struct Stats {
    pub(super) hist: Histogram<u64>,
    pub(super) requests: u64,
    pub(super) sent: u64,
    pub(super) late: u64,
    pub(super) errors: ErrorCounts,
    pub(super) samples: [Option<String>; 4],
    pub(super) last_reply: Option<Instant>,
    /// Churn: connections opened (long-lived connections are counted by
    /// the connect phase instead).
    pub(super) opened: u64,
}

impl Stats {
    pub(super) fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
            requests: 0,
            sent: 0,
            late: 0,
            errors: ErrorCounts::default(),
            samples: Default::default(),
            last_reply: None,
            opened: 0,
        }
    }

    pub(super) fn error(
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

/// Merges what every runtime counted into the report. `sources_used` is
/// the number of client addresses churn connections were spread over.
pub(super) fn build_report(
    config: &BenchConfig,
    plan: &Plan,
    outcomes: Vec<ThreadOutcome>,
    interrupted: bool,
    sources_used: usize,
) -> io::Result<Report> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .expect("constant histogram bounds are valid");
    let mut errors = ErrorCounts::default();
    let mut samples: [Option<String>; 4] = Default::default();
    let (mut requests, mut sent, mut late, mut connected, mut outstanding) = (0, 0, 0, 0, 0);
    let mut connect_time = Duration::ZERO;
    let mut window_start: Option<Instant> = None;
    let mut window_end: Option<Instant> = None;
    for o in outcomes {
        let _ = hist.add(&o.stats.hist);
        requests += o.stats.requests;
        sent += o.stats.sent;
        late += o.stats.late;
        outstanding += o.outstanding;
        connected += if plan.churn {
            o.stats.opened as usize
        } else {
            o.connected
        };
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
    // reason (the first connect error says it for all). A churn client
    // whose connections went through may fail a connect later on; that is
    // counted, not fatal.
    if errors.connect as usize >= config.connections && (!plan.churn || connected == 0) {
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
        churn: plan.churn,
        sources: sources_used,
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
        outstanding,
        reply_timeout: plan.reply_timeout,
        errors,
        error_samples,
        rps,
        mb_per_s: rps * plan.size as f64 / 1e6,
        latency,
    })
}

pub(super) use crate::error::describe;

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

pub(super) fn secs(d: Duration) -> String {
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
