//! `sockserv bench`: load-test an echo server (arguments and output only;
//! the load generator is `crate::loadgen`).

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sockserv::addr::Endpoint;
use sockserv::frame::Framing;

use crate::error::CliError;
use crate::loadgen::{self, BenchConfig, Control, Phase, Progress};
use crate::util::parse_duration;

/// The examples both help texts end with (one copy).
macro_rules! examples {
    () => {
        "Examples (against an echo server: sockserv serve --handler echo tcp://127.0.0.1:9999):
  sockserv bench tcp://127.0.0.1:9999                    # 50 connections, 10 s
  sockserv bench -c 1000 -d 30s --warmup 2 127.0.0.1:9999
  sockserv bench -n 100000 -c 4 --json tcp://127.0.0.1:9999
  sockserv bench -c 100 --pipeline 32 --framing line tcp://127.0.0.1:9999
  sockserv bench --framing line --size 100000 --max-frame 131072 tcp://127.0.0.1:9999   # serve --max-frame 131072 too
  sockserv bench -c 10 --rate 20000 -d 10 tcp://127.0.0.1:9999   # open loop
  sockserv bench -c 8 --size 512 udp://127.0.0.1:9999
  sockserv bench --churn -c 50 -d 10 tcp://127.0.0.1:9999   # a new connection per request
  sockserv bench unix:///tmp/echo.sock"
    };
}

const AFTER_HELP: &str = concat!(
    "\
Every request carries a payload unique to its connection and sequence number,
and every reply is checked against the request it answers (in order). With
the default raw framing a reply is exactly SIZE bytes however TCP splits it;
with --framing the requests are encoded and the replies decoded with that
codec, so the server must echo the same framing.

Closed loop (default): each connection keeps --pipeline requests in flight
and sends the next as soon as a reply arrives. Open loop (--rate): requests
are due on a fixed schedule spread over the connections; a request that has
to wait for a reply to free its slot (at most --pipeline in flight) has its
latency measured from the time it was due, so a stalling server is charged
for the requests it delayed (no coordinated omission).

Connection churn (--churn): each of the -c clients loops connect, send one
--size line, read the reply, close. The report counts connections per second
and the latency from the start of connect to the reply. The payload has no
lower-case letters, so an upper-casing server (the seed's, or serve's
default handler) answers it like an echo; a reply may come without its line
end when the server closes after it. Against 127.0.0.1 the connections are
bound to client addresses 127.0.0.2 to 127.0.0.250 in turn, so that the
client's ephemeral ports in TIME_WAIT do not cap the rate.

Datagram endpoints (udp://, unix-dgram://) use one connected socket per
\"connection\"; a datagram without a reply within --timeout counts as a
timeout error.

At the end of a timed run the connections send no more and have up to 1 s
(at most --timeout) to collect the replies they are owed; requests still
unanswered then are reported as outstanding.

Exit status: 0 when the run completed with no error and at least one reply;
1 when there was any error (connect, I/O, wrong reply, timeout), when no
request was answered, or when nothing could be connected (the reason on one
line on stderr); 2 for a bad command line. The report is printed in every
case where the run took place.

",
    examples!()
);

const SHORT_HELP: &str = concat!(
    "\
Exit status: 0 when the run had no error and answered requests, 1 when it
had an error or no reply (the report is printed either way), 2 for a bad
command line. More with --help.

",
    examples!()
);

/// Load-test an echo server: throughput, latency percentiles, errors.
#[derive(Debug, clap::Args)]
#[command(after_help = SHORT_HELP, after_long_help = AFTER_HELP)]
pub struct BenchArgs {
    /// The echo server: tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH or
    /// unix-dgram:///PATH (a bare HOST:PORT is TCP).
    #[arg(value_name = "ADDR")]
    pub addr: String,

    /// Connections to open and keep busy (sockets, for datagram endpoints).
    #[arg(short = 'c', long, default_value_t = 50, value_name = "N")]
    pub connections: usize,

    /// How long to measure, after the warm-up: 10, 10s, 500ms, 2m.
    /// Default: 10 s, or until --requests replies when that is given.
    #[arg(short = 'd', long, value_parser = parse_duration, value_name = "TIME")]
    pub duration: Option<Duration>,

    /// Stop after this many verified replies (over all connections).
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,

    /// Payload bytes per request (before framing).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,

    /// Requests in flight per connection (1 = ping-pong).
    #[arg(long, default_value_t = 1, value_name = "DEPTH")]
    pub pipeline: usize,

    /// Request framing: raw, line, crlf, delim:STRING, len:N[:le], fixed:N.
    /// The server must use the same framing. Default: raw; line with
    /// --churn.
    #[arg(long, value_name = "FRAMING")]
    pub framing: Option<String>,

    /// Largest frame sent or received, in bytes, as serve's --max-frame
    /// (default: 65536, or N for fixed:N when N is larger). Requests of
    /// --size bytes must fit in it with their framing.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=(1u64 << 32)))]
    pub max_frame: Option<u64>,

    /// Open loop: total requests per second over all connections.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,

    /// Load applied before measuring, not recorded: 2, 2s, 500ms.
    #[arg(long, value_parser = parse_duration, default_value = "0", value_name = "TIME")]
    pub warmup: Duration,

    /// Client threads, each a single-threaded runtime with its share of the
    /// connections.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,

    /// Reply timeout: a datagram without a reply by then is lost (counted,
    /// the run goes on); a stream connection stops. Default: 1 s for
    /// datagrams, 30 s for streams.
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    pub timeout: Option<Duration>,

    /// Connection churn: every request on a new connection (connect, send
    /// one line, read the reply, close), -c clients at a time.
    #[arg(long, conflicts_with_all = ["rate", "pipeline"])]
    pub churn: bool,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// No progress bar (it is drawn on stderr only when stderr is a
    /// terminal, and never with --json).
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs the benchmark, prints the report, and fails (exit 1, with the
/// reason on one line) when the run had errors or answered nothing.
pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let endpoint: Endpoint = args.addr.parse().map_err(CliError::usage)?;
    let default_framing = if args.churn { "line" } else { "raw" };
    let framing: Framing = args
        .framing
        .as_deref()
        .unwrap_or(default_framing)
        .parse()
        .map_err(CliError::usage)?;
    let framing = crate::serve::with_max_frame(&framing, args.max_frame)?;
    let mut config = BenchConfig::new(endpoint);
    config.connections = args.connections;
    config.duration = args.duration;
    config.requests = args.requests;
    config.size = args.size;
    config.pipeline = args.pipeline;
    config.framing = framing;
    config.rate = args.rate;
    config.warmup = args.warmup;
    config.threads = args.threads;
    config.timeout = args.timeout;
    config.churn = args.churn;

    // First Ctrl-C: stop and report what was measured. Second: exit now.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        interrupted.clone(),
    );
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());

    let show = !args.json && !args.no_progress && std::io::stderr().is_terminal();
    let mut bar = LiveBar::new(show, &config);
    let result = loadgen::run(&config, &mut |p| {
        bar.update(p);
        if interrupted.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    });
    bar.finish();
    let report = result.map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => CliError::usage(e),
        _ => CliError::runtime(e),
    })?;

    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    match report.failure() {
        Some(reason) => Err(CliError::runtime(reason)),
        None => Ok(()),
    }
}

/// The live progress bar on stderr: a bar for request-count and duration
/// runs, with the request rate over the last second.
struct LiveBar {
    bar: Option<ProgressBar>,
    by_requests: bool,
    phase: Option<Phase>,
    /// (time, replies) samples over the last second, for the live rate.
    window: VecDeque<(Instant, u64)>,
    connections: usize,
    warmup: Duration,
    total_secs: f64,
    /// "req/s", or "conn/s" for churn (one request per connection).
    unit: &'static str,
}

impl LiveBar {
    fn new(show: bool, config: &BenchConfig) -> LiveBar {
        let by_requests = config.duration.is_none() && config.requests.is_some();
        let bar = show.then(|| {
            let len = if by_requests {
                config.requests.unwrap_or(0)
            } else {
                config.effective_duration().unwrap_or_default().as_millis() as u64
            };
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar
        });
        LiveBar {
            bar,
            by_requests,
            phase: None,
            window: VecDeque::new(),
            connections: config.connections,
            warmup: config.warmup,
            total_secs: config
                .effective_duration()
                .unwrap_or_default()
                .as_secs_f64(),
            unit: if config.churn { "conn/s" } else { "req/s" },
        }
    }

    fn update(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        let now = Instant::now();
        self.window.push_back((now, p.replies));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.window.pop_front();
        }
        let rate = match (self.window.front(), self.window.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => {
                (r1 - r0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        if self.phase != Some(p.phase) {
            self.phase = Some(p.phase);
            if p.phase == Phase::Measuring {
                bar.set_style(bar_style(self.by_requests));
            }
        }
        match p.phase {
            Phase::Connecting => {
                bar.set_message(format!("connecting {}/{}", p.connected, self.connections));
            }
            Phase::Warmup => {
                bar.set_message(format!(
                    "warming up {:.0}/{:.0} s  {:.0} {}",
                    p.elapsed.as_secs_f64(),
                    self.warmup.as_secs_f64(),
                    rate,
                    self.unit
                ));
            }
            Phase::Measuring => {
                let pos = if self.by_requests {
                    p.requests
                } else {
                    p.elapsed.as_millis() as u64
                };
                bar.set_position(pos);
                let clock = if self.by_requests {
                    String::new()
                } else {
                    format!("{:.0}/{:.0} s  ", p.elapsed.as_secs_f64(), self.total_secs)
                };
                bar.set_message(format!(
                    "{clock}{rate:.0} {}  {} errors",
                    self.unit, p.errors
                ));
            }
        }
        bar.tick();
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style(by_requests: bool) -> ProgressStyle {
    let template = if by_requests {
        "{spinner} [{bar:30}] {human_pos}/{human_len} requests  {msg}"
    } else {
        "{spinner} [{bar:30}] {msg}"
    };
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}
