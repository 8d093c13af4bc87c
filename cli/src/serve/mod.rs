//! `sockserv serve`: run built-in handlers or a program per connection on
//! one or more addresses. The options are here; [`plan`] binds what they
//! ask for, [`life`] serves it until a signal ends it.

mod life;
mod plan;
pub(crate) mod upgrade;

use std::time::Duration;

use std::path::{Path, PathBuf};

use clap::Args;
use sockserv::frame::Framing;
use sockserv::rules::IpNet;
use sockserv::{Endpoint, Rate, Rules, Strategy};

use crate::builtin::Builtin;
use crate::error::CliError;
use crate::util::{parse_duration, parse_positive_duration};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sockserv serve                                   # the seed's server: upper-case on tcp://127.0.0.1:9999
  sockserv serve --handler echo tcp://127.0.0.1:0  # echo on a free port (printed at start)
  sockserv serve --handler echo tcp://[::1]:7000 udp://127.0.0.1:7000 unix:///tmp/echo.sock
  sockserv serve --framing line --max-frame 65536 --mode pool --workers 32 0.0.0.0:9000
  sockserv serve --dual-stack tcp://[::]:9000      # IPv6 and IPv4 on one socket
  sockserv serve --admin 127.0.0.1:9100            # metrics, health and a live status page
  sockserv serve --proxy-protocol v2 --proxy-from 10.0.0.5/32 --framing line 0.0.0.0:7000   # behind HAProxy
  sockserv serve --allow 10.0.0.0/8 --deny 10.99.0.0/16 0.0.0.0:9000  # only 10/8, not 10.99/16
  sockserv serve --rules /etc/sockserv.rules 0.0.0.0:9000  # rules from a file; SIGHUP reloads it
  sockserv serve --max-conn-rate 5/s 0.0.0.0:9000  # at most 5 new connections a second per source IP
  sockserv serve tcp://127.0.0.1:7000 --exec -- sh -c 'echo \"$TCPREMOTEIP\"; exec cat'   # a program per connection

With --exec PROG [ARGS]... (last on the line: everything after it belongs to
the program) each connection runs PROG in a process group of its own, the
socket its stdin and stdout. Its stderr is logged a line at a time with the
client's address; its exit status is logged at -v. At the drain it gets
SIGTERM; at the end of --drain-timeout (or 5 s after SIGTERM), SIGKILL.

Access rules: the most specific matching prefix decides; with any allow rule,
a peer that matches none is refused. A refused peer (by a rule or over
--max-conn-rate) is closed at once without a byte sent; /metrics counts it
(reason=\"rule\" or reason=\"rate\"). A rules file has one rule a line,
`CIDR allow|deny [VAR=value ...]`, # comments and blank lines allowed:
  10.0.0.0/8     allow
  10.99.0.0/16   deny
  2001:db8::/32  allow
Rules apply to TCP and UDP peers, not to Unix-socket peers (they have no IP).

At start it prints one line per listener on stdout, `listening ENDPOINT`, with
the real bound address, then `admin http://HOST:PORT` with --admin. SIGINT or
SIGTERM stops it gracefully (every request already read gets its reply, the
listen backlog is served; exit code 0); a second signal stops at once. With
--shutdown-delay D it first fails readiness (/readyz 503, STATUS=) and serves
on for D, then drains. SIGUSR2 (or `sockserv upgrade --pid PID`, which waits
for the outcome) upgrades without refusing a connection: it starts the binary
now at the path this one was started from, same arguments, the listening
sockets inherited (LISTEN_FDS); once the new process reports ready, this one
stops accepting, drains and exits 0. If it fails, exits or is not ready within
--upgrade-timeout, it is stopped and this one serves on. One upgrade at a
time. With --rules, SIGHUP re-reads the rules file (open connections are kept; a file
that does not parse keeps the rules in force and logs the line at fault);
without it SIGHUP is ignored. SIGHUP never kills the server.

Under systemd: with no ADDR it serves the sockets of its .socket unit
(LISTEN_FDS); with NOTIFY_SOCKET set (Type=notify) it sends READY=1 and a
STATUS= line once serving, WATCHDOG=1 at half of WATCHDOG_USEC,
STOPPING=1 when the drain starts, and MAINPID= of the new process after an
upgrade (NotifyAccess=all). Recipes: docs/DEPLOY.md.")]
pub struct ServeArgs {
    /// Addresses to listen on: tcp://HOST:PORT, udp://HOST:PORT,
    /// unix:///PATH, unix-dgram:///PATH, or HOST:PORT for TCP. Without
    /// one: the sockets passed by a service manager (LISTEN_FDS, systemd
    /// socket activation) if there are any, else tcp://127.0.0.1:9999.
    #[arg(value_name = "ADDR", value_parser = parse_endpoint)]
    addrs: Vec<Endpoint>,

    /// Built-in handler: echo, upper (the seed's: replies upper-cased),
    /// discard, daytime.
    /// (Default: upper.)
    #[arg(long, value_parser = parse_builtin)]
    handler: Option<Builtin>,

    /// Run PROG for each connection, its stdin and stdout the socket,
    /// tcpserver's variables in its environment (PROTO, TCPREMOTEIP,
    /// TCPREMOTEPORT, TCPLOCALIP, TCPLOCALPORT, TCPCONNNUM; for Unix
    /// sockets UNIXREMOTEUID, UNIXREMOTEGID, UNIXREMOTEPID). Everything
    /// after --exec is the program and its arguments (`--exec -- PROG`
    /// works too), so it comes last. Stream addresses only; --handler is
    /// ignored; the mode is threads unless --mode says otherwise.
    #[arg(
        long,
        value_name = "PROG [ARGS]...",
        num_args = 1..,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(std::ffi::OsString)
    )]
    exec: Vec<std::ffi::OsString>,

    /// Concurrency: async (event loops serving many connections each; the
    /// fastest, see docs/BENCHMARKS.md), pool (worker threads run the
    /// handlers, for handlers that block; connections stay on event loops),
    /// threads (one per connection), sequential (one at a time).
    /// (Default: async; threads with --exec.)
    #[arg(long, value_parser = ["async", "threads", "pool", "sequential"])]
    mode: Option<String>,

    /// Event loops (async) or worker threads (pool) (default: pool 16 per
    /// core; async one event loop per core but one, at least one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: Option<u32>,

    /// Connections a pool queues while all workers are busy (default: 4 x
    /// workers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    queue: Option<u32>,

    /// How messages are cut from the stream: raw (each read), line, crlf,
    /// delim:STRING, len:N[:le], fixed:N.
    #[arg(long, default_value = "raw", value_parser = parse_framing)]
    framing: Framing,

    /// Largest frame accepted, in bytes (default: 65536, or N for fixed:N
    /// when N is larger).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=(1u64 << 32)))]
    max_frame: Option<u64>,

    /// What happens to a connection that sends a frame over --max-frame:
    /// close it, or skip the frame and go on.
    #[arg(long, default_value = "close", value_parser = ["close", "skip"])]
    on_oversize: String,

    /// Listen backlog (kernel queue of not-yet-accepted connections).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(i32).range(1..))]
    backlog: i32,

    /// Set SO_REUSEPORT: several servers on one address, each started with
    /// --reuse-port. The only way for UDP servers to share an address.
    #[arg(long)]
    reuse_port: bool,

    /// Set TCP_NODELAY on accepted connections (no Nagle delay).
    #[arg(long)]
    nodelay: bool,

    /// Let an IPv6 listener on [::] accept IPv4 too (IPV6_V6ONLY off).
    #[arg(long)]
    dual_stack: bool,

    /// On shutdown, how long to wait for connections to finish before
    /// cutting them (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// At SIGTERM/SIGINT, first fail readiness (/readyz 503, STATUS=) and
    /// go on accepting and serving for this long, so a load balancer's
    /// health check takes the instance out before anything is refused;
    /// then drain. A second signal during the delay stops at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    shutdown_delay: Duration,

    /// At an upgrade (SIGUSR2), how long the new process may take to
    /// report ready before it is stopped and this one serves on.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    upgrade_timeout: Duration,

    /// Close connections idle for this long (default: never).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    idle_timeout: Option<Duration>,

    /// Close a connection whose frame has started but not finished for
    /// this long (slow senders; default: never).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    read_timeout: Option<Duration>,

    /// Fail a connection whose replies cannot be written for this long
    /// (a peer that never reads).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    write_timeout: Duration,

    /// Most connections open at once, over all the stream addresses
    /// (default: unlimited).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_conns: Option<u64>,

    /// Most connections open at once from one IP address; more are
    /// accepted, sent --limit-message, and closed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_conns_per_ip: Option<u64>,

    /// At --max-conns: wait (stop accepting; clients queue in the kernel
    /// backlog) or close (accept, send --limit-message, close).
    #[arg(long, default_value = "wait", value_parser = ["wait", "close"])]
    over_limit: String,

    /// Text sent to connections refused by a limit (a newline is added).
    #[arg(long, value_name = "TEXT")]
    limit_message: Option<String>,

    /// Serve only this prefix (CIDR, IPv4 or IPv6; repeatable). Any
    /// --allow makes the default deny. Example: --allow 10.0.0.0/8.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    allow: Vec<IpNet>,

    /// Refuse this prefix (CIDR, IPv4 or IPv6; repeatable); the most
    /// specific prefix wins. Example: --deny 192.0.2.0/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    deny: Vec<IpNet>,

    /// Read access rules from FILE, one a line: `CIDR allow|deny
    /// [VAR=value ...]`; SIGHUP re-reads it. Adds to --allow and --deny.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,

    /// New connections from one IP address, at most, as N/s or N/m (bursts
    /// of up to N). Over it a connection is closed without a byte sent;
    /// other addresses are served as before. Example: --max-conn-rate 5/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_conn_rate: Option<Rate>,

    /// Serve the admin endpoint on HOST:PORT: /metrics (Prometheus),
    /// /healthz, /readyz (503 from the moment a drain starts), / (a live
    /// status page of every connection), /api/stats, /api/connections.
    /// Loopback addresses only, unless --admin-public.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,

    /// Let --admin listen on a non-loopback address and answer any Host
    /// header. The page shows clients' addresses: put it behind access
    /// control.
    #[arg(long, requires = "admin")]
    admin_public: bool,

    /// Every connection starts with a PROXY protocol header (HAProxy's
    /// send-proxy / send-proxy-v2): v1, v2 or any. The client address in
    /// it becomes the peer; a connection without one is closed.
    #[arg(long, value_name = "VERSION", value_parser = ["v1", "v2", "any"])]
    proxy_protocol: Option<String>,

    /// With --proxy-protocol: the load balancers allowed to connect
    /// (repeatable CIDR); a connection from any other address is closed
    /// before a byte is read or sent. Default: any address.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "proxy_protocol")]
    proxy_from: Vec<IpNet>,

    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse::<Endpoint>().map_err(|e| e.to_string())
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    sockserv::rules::parse_cidr(s)
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse::<Rate>().map_err(|e| e.to_string())
}

/// The rules of the command line, then those of the file if any.
fn load_rules(
    allow: &[IpNet],
    deny: &[IpNet],
    file: Option<&Path>,
) -> Result<Rules, sockserv::rules::RulesError> {
    let mut rules = Rules::new();
    for net in allow {
        rules = rules.allow(*net);
    }
    for net in deny {
        rules = rules.deny(*net);
    }
    if let Some(path) = file {
        rules.extend(Rules::load(path)?);
    }
    Ok(rules)
}

fn parse_builtin(s: &str) -> Result<Builtin, String> {
    s.parse()
}

pub(crate) fn parse_framing(s: &str) -> Result<Framing, String> {
    s.parse::<Framing>().map_err(|e| e.to_string())
}

/// The framing with `--max-frame` applied. Without the option the framing
/// keeps its default limit: 64 KiB, or the frame size of a larger `fixed:N`
/// (a fixed frame is exactly N bytes, so its limit can be no less). A limit
/// given below what the framing needs is refused, naming both.
pub(crate) fn with_max_frame(
    framing: &Framing,
    max_frame: Option<u64>,
) -> Result<Framing, CliError> {
    let Some(max) = max_frame else {
        return Ok(framing.clone());
    };
    framing.clone().with_max_frame(max as usize).map_err(|e| {
        CliError::usage(format!(
            "--max-frame {max}: {e} (raise --max-frame, or leave it out)"
        ))
    })
}

impl ServeArgs {
    /// The concurrency mode's name: as given, else threads for --exec and
    /// async for the built-in handlers.
    fn mode(&self) -> &str {
        match &self.mode {
            Some(m) => m,
            None if !self.exec.is_empty() => "threads",
            None => "async",
        }
    }

    /// The program and arguments of --exec (a leading `--` dropped).
    fn exec_command(&self) -> Option<(&std::ffi::OsString, &[std::ffi::OsString])> {
        let mut cmd = &self.exec[..];
        if cmd.first().is_some_and(|a| a == "--") {
            cmd = &cmd[1..];
        }
        cmd.split_first()
    }
}

fn strategy(args: &ServeArgs) -> Result<Strategy, CliError> {
    let base: Strategy = args
        .mode()
        .parse()
        .map_err(|e: sockserv::UnknownMode| CliError::usage(e.to_string()))?;
    let workers = args.workers.map(|w| w as usize);
    Ok(match base {
        Strategy::Pool { workers: w, .. } => {
            let workers = workers.unwrap_or(w);
            let queue = args.queue.map_or(workers * 4, |q| q as usize);
            Strategy::Pool { workers, queue }
        }
        Strategy::EventLoops { loops } => Strategy::EventLoops {
            loops: workers.unwrap_or(loops),
        },
        s => s,
    })
}

/// Says which options the chosen mode and addresses make meaningless,
/// rather than drop them silently.
fn warn_ignored(args: &ServeArgs, endpoints: &[Endpoint], strategy: Strategy) {
    if args.workers.is_some() && matches!(strategy, Strategy::Threads | Strategy::Sequential) {
        tracing::warn!("--workers has no effect in {} mode", args.mode());
    }
    if args.queue.is_some() && !matches!(strategy, Strategy::Pool { .. }) {
        tracing::warn!("--queue has no effect outside pool mode");
    }
    if !args.exec.is_empty() {
        if let Some(h) = args.handler {
            tracing::warn!("--handler {h} is ignored: --exec runs a program per connection");
        }
        if !args.framing.is_raw() {
            tracing::warn!("--framing has no effect with --exec: the program reads the stream");
        }
    }
    if !args.framing.is_raw() && endpoints.iter().any(|a| !a.transport().is_stream()) {
        tracing::warn!("--framing does not apply to datagram addresses: a datagram is one message");
    }
}

/// SIGHUP with --rules: the fixed rules and the file's, put in force for
/// the connections accepted from now on; a file that cannot be read or
/// parsed keeps the rules in force.
fn reload_rules(source: &plan::RulesSource, handles: &[sockserv::RulesHandle]) {
    let file = &source.file;
    match load_rules(&source.allow, &source.deny, Some(file)) {
        Ok(rules) => {
            for h in handles {
                h.set(rules.clone());
            }
            tracing::info!(
                "reloaded {}: {} rules in force",
                file.display(),
                rules.len()
            );
        }
        Err(e) => {
            let kept = handles.first().map_or(0, |h| h.get().len());
            tracing::error!("cannot reload the rules: {e}; keeping the {kept} rules in force");
        }
    }
}

/// `sockserv serve`: binds what `args` asks for, then serves it.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    // Kept to the end of `run`: the queued log lines are written out then.
    let _log = crate::logging::init(args.verbose);
    let signals = life::install_signals(args.rules.is_some())?;
    // Before the plan takes the LISTEN_* sockets the handoff comes with.
    let handoff = upgrade::take_handoff()?;
    let options = life::Options {
        shutdown_delay: args.shutdown_delay,
        upgrade: upgrade::Settings {
            program: upgrade::Program::of_this_process(),
            timeout: args.upgrade_timeout,
            drain_timeout: args.drain_timeout,
        },
        handoff,
    };
    let plan = plan::from_args(args)?;
    life::run(signals, plan, options)
}
