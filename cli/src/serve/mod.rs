//! `sockserv serve`: run built-in handlers or a program per connection on
//! one or more addresses, or on the listeners of a config file, or on the
//! one connection inetd passed. The options are here (those of a server in
//! [`settings`], shared with the config file); [`config`] reads a file;
//! [`plan`] binds what they ask for; [`life`] serves it until a signal
//! ends it.

pub(crate) mod config;
mod life;
pub(crate) mod plan;
mod settings;
pub(crate) mod upgrade;

use std::time::Duration;

use std::path::{Path, PathBuf};

use clap::Args;
use sockserv::frame::Framing;
use sockserv::rules::IpNet;
use sockserv::{Endpoint, Rules, Strategy};

use crate::error::CliError;
pub(crate) use settings::parse_framing;
use settings::{parse_endpoint, Settings};

/// How long a drain may take unless --drain-timeout says otherwise.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
  sockserv serve --config /etc/sockserv.toml      # the listeners of a config file (check it: sockserv check --config FILE)
  sockserv serve --inetd --handler upper           # the one connection on fd 0 (inetd, systemd Accept=yes)

A config file (TOML) sets what the options set, per listener: global
defaults at the top, then a [[listener]] table each with name, address and
any of the keys (the options' names with _ for -: max_conns, exec = [\"prog\",
\"arg\"], ...); a table's key overrides the global one; admin and
admin_public are global only. Each table is a server of its own. --config
is not combined with ADDRs or the options above (only -v, --shutdown-delay
and --upgrade-timeout, which concern the process). Example and key
reference: docs/OPERATING.md, contrib/sockserv.toml.

With --inetd the connection on fd 0 is served through the same pipeline
(framing, timeouts; SIGTERM drains it) and the command exits 0 when it
ends. Nothing is printed on stdout (under inetd it is the socket too).

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
upgrade (NotifyAccess=all). With --config, each passed socket goes to the
[[listener]] whose name is its LISTEN_FDNAMES name (FileDescriptorName=);
a passed socket no table names is an error, and a table no socket is passed
for binds its address. Recipes: docs/DEPLOY.md.")]
pub struct ServeArgs {
    /// Addresses to listen on: tcp://HOST:PORT, udp://HOST:PORT,
    /// unix:///PATH, unix-dgram:///PATH, or HOST:PORT for TCP. Without
    /// one: the sockets passed by a service manager (LISTEN_FDS, systemd
    /// socket activation) if there are any, else tcp://127.0.0.1:9999.
    #[arg(value_name = "ADDR", value_parser = parse_endpoint)]
    addrs: Vec<Endpoint>,

    /// Serve the listeners of a TOML config file (see docs/OPERATING.md,
    /// "Config file"): global defaults, then one [[listener]] table each.
    /// Not combined with ADDRs or the per-listener options (only -v,
    /// --shutdown-delay, --upgrade-timeout).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["addrs", "inetd"])]
    config: Option<PathBuf>,

    /// Serve the one connection already open on fd 0 (inetd, xinetd
    /// wait=no, systemd Accept=yes with StandardInput=socket), then exit.
    #[arg(long, conflicts_with_all = ["addrs", "admin"])]
    inetd: bool,

    /// At SIGTERM/SIGINT, first fail readiness (/readyz 503, STATUS=) and
    /// go on accepting and serving for this long, so a load balancer's
    /// health check takes the instance out before anything is refused;
    /// then drain. A second signal during the delay stops at once.
    /// Allowed with --config (it concerns the process, not a listener).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = crate::util::parse_duration)]
    shutdown_delay: Duration,

    /// At an upgrade (SIGUSR2), how long the new process may take to
    /// report ready before it is stopped and this one serves on. Allowed
    /// with --config.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::util::parse_positive_duration)]
    upgrade_timeout: Duration,

    #[command(flatten)]
    settings: Settings,

    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
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

impl Settings {
    /// The concurrency mode's name: as given, else threads for --exec and
    /// async for the built-in handlers.
    fn mode_name(&self) -> &str {
        match &self.mode {
            Some(m) => m,
            None if self.exec.is_some() => "threads",
            None => "async",
        }
    }

    /// The program and arguments of --exec (a leading `--` dropped).
    fn exec_command(&self) -> Option<(&std::ffi::OsString, &[std::ffi::OsString])> {
        let mut cmd = self.exec.as_deref()?;
        if cmd.first().is_some_and(|a| a == "--") {
            cmd = &cmd[1..];
        }
        cmd.split_first()
    }

    /// The framing asked for (raw unless set).
    fn framing_or_raw(&self) -> Framing {
        self.framing.clone().unwrap_or_else(Framing::raw)
    }
}

fn strategy(settings: &Settings) -> Result<Strategy, CliError> {
    let base: Strategy = settings
        .mode_name()
        .parse()
        .map_err(|e: sockserv::UnknownMode| CliError::usage(e.to_string()))?;
    let workers = settings.workers.map(|w| w as usize);
    Ok(match base {
        Strategy::Pool { workers: w, .. } => {
            let workers = workers.unwrap_or(w);
            let queue = settings.queue.map_or(workers * 4, |q| q as usize);
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
fn warn_ignored(settings: &Settings, endpoints: &[Endpoint], strategy: Strategy) {
    if settings.workers.is_some() && matches!(strategy, Strategy::Threads | Strategy::Sequential) {
        tracing::warn!("--workers has no effect in {} mode", settings.mode_name());
    }
    if settings.queue.is_some() && !matches!(strategy, Strategy::Pool { .. }) {
        tracing::warn!("--queue has no effect outside pool mode");
    }
    let framed = !settings.framing_or_raw().is_raw();
    if settings.exec.is_some() {
        if let Some(h) = settings.handler {
            tracing::warn!("--handler {h} is ignored: --exec runs a program per connection");
        }
        if framed {
            tracing::warn!("--framing has no effect with --exec: the program reads the stream");
        }
    }
    if framed && endpoints.iter().any(|a| !a.transport().is_stream()) {
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

/// With --config, the first option given on the command line that the
/// file would have to override or be overridden by: refused, rather than
/// guess which wins (-v is the one option allowed beside --config).
fn with_config(matches: Option<&clap::ArgMatches>) -> Result<(), CliError> {
    let Some(m) = matches else { return Ok(()) };
    let given = m.ids().map(|id| id.as_str()).find(|id| {
        !matches!(
            *id,
            "config" | "verbose" | "shutdown_delay" | "upgrade_timeout"
        ) && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    });
    match given {
        Some(id) => Err(CliError::usage(format!(
            "--config cannot be combined with --{}: set it in the config file (globally or per [[listener]])",
            id.replace('_', "-")
        ))),
        None => Ok(()),
    }
}

/// `sockserv serve`: binds what `args` asks for, then serves it. `matches`
/// tell which options the command line gave (for --config).
pub fn run(args: ServeArgs, matches: Option<&clap::ArgMatches>) -> Result<(), CliError> {
    // Kept to the end of `run`: the queued log lines are written out then.
    let _log = crate::logging::init(args.verbose);
    // Before the plan takes the LISTEN_* sockets the handoff comes with.
    let handoff = upgrade::take_handoff()?;
    let mut options = life::Options {
        shutdown_delay: args.shutdown_delay,
        upgrade: upgrade::Settings {
            program: upgrade::Program::of_this_process(),
            timeout: args.upgrade_timeout,
            drain_timeout: args.settings.drain_timeout.unwrap_or(DRAIN_TIMEOUT),
        },
        handoff,
    };
    if let Some(path) = &args.config {
        with_config(matches)?;
        // Read and checked before anything is installed or bound.
        let config = config::load(path)?;
        // A failed successor is given the longest drain of its listeners.
        options.upgrade.drain_timeout = config
            .listeners
            .iter()
            .map(|l| l.settings.drain_timeout.unwrap_or(DRAIN_TIMEOUT))
            .max()
            .unwrap_or(DRAIN_TIMEOUT);
        let signals = life::install_signals(config.reloads())?;
        let plan = plan::from_config(config)?;
        return life::run(signals, plan, options);
    }
    let signals = life::install_signals(args.settings.rules.is_some())?;
    let plan = if args.inetd {
        plan::inetd(args.settings)?
    } else {
        plan::from_args(args.addrs, args.settings)?
    };
    life::run(signals, plan, options)
}
