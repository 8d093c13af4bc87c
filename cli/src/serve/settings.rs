//! What one server is set up with: the flags of `sockserv serve` and the
//! keys of a config file's tables are ONE list, this struct. clap reads it
//! from the command line (`--max-conns`), serde from a TOML table
//! (`max_conns`), with the same parsers, so a key and its flag can never
//! drift apart. Every field is optional: what is unset takes the file's
//! global value, then the built-in default (applied in [`super::plan`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::Args;
use serde::Deserialize;
use sockserv::frame::Framing;
use sockserv::rules::IpNet;
use sockserv::Rate;

use crate::builtin::Builtin;

/// The values `mode` takes.
pub(crate) const MODES: [&str; 4] = ["async", "threads", "pool", "sequential"];
/// The values `on_oversize` takes.
pub(crate) const ON_OVERSIZE: [&str; 2] = ["close", "skip"];
/// The values `over_limit` takes.
pub(crate) const OVER_LIMIT: [&str; 2] = ["wait", "close"];
/// The values `proxy_protocol` takes.
pub(crate) const PROXY_VERSIONS: [&str; 3] = ["v1", "v2", "any"];

/// Most event loops or pool workers.
const MAX_WORKERS: u64 = 100_000;
/// Most connections a pool queues.
const MAX_QUEUE: u64 = 1_000_000;
/// Largest frame limit (4 GiB).
const MAX_FRAME: u64 = 1 << 32;
/// Largest listen backlog (the kernel takes an int).
const MAX_BACKLOG: u64 = i32::MAX as u64;

/// The settings of one server: a flag each for `serve`, a key each for a
/// config file (global at the top of the file, or in a `[[listener]]`).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Config file only: the listener's name (matched against
    /// LISTEN_FDNAMES under socket activation; used in messages).
    #[arg(skip)]
    #[serde(default)]
    pub(crate) name: Option<toml::Spanned<String>>,

    /// Config file only: the listener's address.
    #[arg(skip)]
    #[serde(default)]
    pub(crate) address: Option<toml::Spanned<Address>>,

    /// Config file only, global: the `[[listener]]` tables.
    #[arg(skip)]
    #[serde(default)]
    pub(crate) listener: Vec<Settings>,

    /// Built-in handler: echo, upper (the seed's: replies upper-cased),
    /// discard, daytime.
    /// (Default: upper.)
    #[arg(long, value_parser = parse_builtin)]
    #[serde(default, deserialize_with = "de::builtin")]
    pub(crate) handler: Option<Builtin>,

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
    #[serde(default, deserialize_with = "de::program")]
    pub(crate) exec: Option<Vec<OsString>>,

    /// Concurrency: async (event loops serving many connections each; the
    /// fastest, see docs/BENCHMARKS.md), pool (worker threads run the
    /// handlers, for handlers that block; connections stay on event loops),
    /// threads (one per connection), sequential (one at a time).
    /// (Default: async; threads with --exec.)
    #[arg(long, value_parser = PossibleValuesParser::new(MODES))]
    #[serde(default, deserialize_with = "de::mode")]
    pub(crate) mode: Option<String>,

    /// Event loops (async) or worker threads (pool) (default: pool 16 per
    /// core; async one event loop per core but one, at least one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS))]
    #[serde(default, deserialize_with = "de::ranged::<_, 1, MAX_WORKERS>")]
    pub(crate) workers: Option<u64>,

    /// Connections a pool queues while all workers are busy (default: 4 x
    /// workers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_QUEUE))]
    #[serde(default, deserialize_with = "de::ranged::<_, 1, MAX_QUEUE>")]
    pub(crate) queue: Option<u64>,

    /// How messages are cut from the stream: raw (each read), line, crlf,
    /// delim:STRING, len:N[:le], fixed:N.
    /// (Default: raw.)
    #[arg(long, value_parser = parse_framing)]
    #[serde(default, deserialize_with = "de::framing")]
    pub(crate) framing: Option<Framing>,

    /// Largest frame accepted, in bytes (default: 65536, or N for fixed:N
    /// when N is larger).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=MAX_FRAME))]
    #[serde(default, deserialize_with = "de::ranged::<_, 1, MAX_FRAME>")]
    pub(crate) max_frame: Option<u64>,

    /// What happens to a connection that sends a frame over --max-frame:
    /// close it, or skip the frame and go on.
    /// (Default: close.)
    #[arg(long, value_parser = PossibleValuesParser::new(ON_OVERSIZE))]
    #[serde(default, deserialize_with = "de::on_oversize")]
    pub(crate) on_oversize: Option<String>,

    /// Listen backlog (kernel queue of not-yet-accepted connections).
    /// (Default: 1024.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_BACKLOG))]
    #[serde(default, deserialize_with = "de::ranged::<_, 1, MAX_BACKLOG>")]
    pub(crate) backlog: Option<u64>,

    /// Set SO_REUSEPORT: several servers on one address, each started with
    /// --reuse-port. The only way for UDP servers to share an address.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    #[serde(default)]
    pub(crate) reuse_port: Option<bool>,

    /// Set TCP_NODELAY on accepted connections (no Nagle delay).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    #[serde(default)]
    pub(crate) nodelay: Option<bool>,

    /// Let an IPv6 listener on [::] accept IPv4 too (IPV6_V6ONLY off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    #[serde(default)]
    pub(crate) dual_stack: Option<bool>,

    /// On shutdown, how long to wait for connections to finish before
    /// cutting them (e.g. 10s, 500ms).
    /// (Default: 10s.)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub(crate) drain_timeout: Option<Duration>,

    /// Close connections idle for this long (default: never).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "de::positive_duration")]
    pub(crate) idle_timeout: Option<Duration>,

    /// Close a connection whose frame has started but not finished for
    /// this long (slow senders; default: never).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "de::positive_duration")]
    pub(crate) read_timeout: Option<Duration>,

    /// Fail a connection whose replies cannot be written for this long
    /// (a peer that never reads).
    /// (Default: 30s.)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "de::positive_duration")]
    pub(crate) write_timeout: Option<Duration>,

    /// Most connections open at once, over all the stream addresses
    /// (default: unlimited).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(default, deserialize_with = "de::ranged::<_, 1, { u64::MAX }>")]
    pub(crate) max_conns: Option<u64>,

    /// Most connections open at once from one IP address; more are
    /// accepted, sent --limit-message, and closed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(default, deserialize_with = "de::ranged::<_, 1, { u64::MAX }>")]
    pub(crate) max_conns_per_ip: Option<u64>,

    /// At --max-conns: wait (stop accepting; clients queue in the kernel
    /// backlog) or close (accept, send --limit-message, close).
    /// (Default: wait.)
    #[arg(long, value_parser = PossibleValuesParser::new(OVER_LIMIT))]
    #[serde(default, deserialize_with = "de::over_limit")]
    pub(crate) over_limit: Option<String>,

    /// Text sent to connections refused by a limit (a newline is added).
    #[arg(long, value_name = "TEXT")]
    #[serde(default)]
    pub(crate) limit_message: Option<String>,

    /// Serve only this prefix (CIDR, IPv4 or IPv6; repeatable). Any
    /// --allow makes the default deny. Example: --allow 10.0.0.0/8.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    #[serde(default, deserialize_with = "de::cidrs")]
    pub(crate) allow: Option<Vec<IpNet>>,

    /// Refuse this prefix (CIDR, IPv4 or IPv6; repeatable); the most
    /// specific prefix wins. Example: --deny 192.0.2.0/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    #[serde(default, deserialize_with = "de::cidrs")]
    pub(crate) deny: Option<Vec<IpNet>>,

    /// Read access rules from FILE, one a line: `CIDR allow|deny
    /// [VAR=value ...]`; SIGHUP re-reads it. Adds to --allow and --deny.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub(crate) rules: Option<PathBuf>,

    /// New connections from one IP address, at most, as N/s or N/m (bursts
    /// of up to N). Over it a connection is closed without a byte sent;
    /// other addresses are served as before. Example: --max-conn-rate 5/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de::rate")]
    pub(crate) max_conn_rate: Option<Rate>,

    /// Serve the admin endpoint on HOST:PORT: /metrics (Prometheus),
    /// /healthz, /readyz (503 from the moment a drain starts), / (a live
    /// status page of every connection), /api/stats, /api/connections.
    /// Loopback addresses only, unless --admin-public.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(default)]
    pub(crate) admin: Option<String>,

    /// Let --admin listen on a non-loopback address and answer any Host
    /// header. The page shows clients' addresses: put it behind access
    /// control.
    #[arg(long, requires = "admin", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    #[serde(default)]
    pub(crate) admin_public: Option<bool>,

    /// Every connection starts with a PROXY protocol header (HAProxy's
    /// send-proxy / send-proxy-v2): v1, v2 or any. The client address in
    /// it becomes the peer; a connection without one is closed.
    #[arg(long, value_name = "VERSION", value_parser = PossibleValuesParser::new(PROXY_VERSIONS))]
    #[serde(default, deserialize_with = "de::proxy_protocol")]
    pub(crate) proxy_protocol: Option<String>,

    /// With --proxy-protocol: the load balancers allowed to connect
    /// (repeatable CIDR); a connection from any other address is closed
    /// before a byte is read or sent. Default: any address.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "proxy_protocol")]
    #[serde(default, deserialize_with = "de::cidrs")]
    pub(crate) proxy_from: Option<Vec<IpNet>>,
}

/// A listener's address in a config file: an [`Endpoint`](sockserv::Endpoint),
/// parsed when the file is read (so a bad one has its line).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Address(pub(crate) sockserv::Endpoint);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_endpoint(&s)
            .map(Address)
            .map_err(serde::de::Error::custom)
    }
}

impl Settings {
    /// These settings over `defaults`: each key set here wins, each unset
    /// one is taken from `defaults`. `handler` and `exec` go together: a
    /// table that names either chooses its handler alone.
    pub(crate) fn over(&self, defaults: &Settings) -> Settings {
        let picks_handler = self.handler.is_some() || self.exec.is_some();
        let (handler, exec) = if picks_handler {
            (self.handler, self.exec.clone())
        } else {
            (defaults.handler, defaults.exec.clone())
        };
        macro_rules! or {
            ($($field:ident),*) => {
                Settings {
                    name: self.name.clone(),
                    address: self.address.clone(),
                    listener: Vec::new(),
                    handler,
                    exec,
                    $($field: self.$field.clone().or_else(|| defaults.$field.clone()),)*
                }
            };
        }
        or!(
            mode,
            workers,
            queue,
            framing,
            max_frame,
            on_oversize,
            backlog,
            reuse_port,
            nodelay,
            dual_stack,
            drain_timeout,
            idle_timeout,
            read_timeout,
            write_timeout,
            max_conns,
            max_conns_per_ip,
            over_limit,
            limit_message,
            allow,
            deny,
            rules,
            max_conn_rate,
            admin,
            admin_public,
            proxy_protocol,
            proxy_from
        )
    }
}

pub(crate) fn parse_endpoint(s: &str) -> Result<sockserv::Endpoint, String> {
    s.parse::<sockserv::Endpoint>().map_err(|e| e.to_string())
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    sockserv::rules::parse_cidr(s)
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse::<Rate>().map_err(|e| e.to_string())
}

fn parse_builtin(s: &str) -> Result<Builtin, String> {
    s.parse()
}

pub(crate) fn parse_framing(s: &str) -> Result<Framing, String> {
    s.parse::<Framing>().map_err(|e| e.to_string())
}

use crate::util::{parse_duration, parse_positive_duration};

/// The serde side of the flags' parsers: each reads a TOML value and hands
/// it to the same function clap calls, so the file and the command line
/// accept exactly the same values; a refusal becomes a serde error, which
/// toml places at the value's line.
mod de {
    use super::*;
    use serde::de::Error;
    use serde::Deserializer;

    /// A string, parsed by `parse`.
    fn parsed<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Some).map_err(D::Error::custom)
    }

    /// A string that must be one of `allowed`.
    fn one_of<'de, D: Deserializer<'de>>(
        d: D,
        allowed: &[&str],
    ) -> Result<Option<String>, D::Error> {
        parsed(d, |s| {
            if allowed.contains(&s) {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "invalid value \"{s}\" (expected one of {})",
                    allowed.join(", ")
                ))
            }
        })
    }

    pub(super) fn builtin<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Builtin>, D::Error> {
        parsed(d, parse_builtin)
    }

    pub(super) fn framing<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Framing>, D::Error> {
        parsed(d, parse_framing)
    }

    pub(super) fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
        parsed(d, parse_rate)
    }

    pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parsed(d, parse_duration)
    }

    pub(super) fn positive_duration<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        parsed(d, parse_positive_duration)
    }

    pub(super) fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        one_of(d, &MODES)
    }

    pub(super) fn on_oversize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        one_of(d, &ON_OVERSIZE)
    }

    pub(super) fn over_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        one_of(d, &OVER_LIMIT)
    }

    pub(super) fn proxy_protocol<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        one_of(d, &PROXY_VERSIONS)
    }

    /// A list of CIDR prefixes (or single addresses).
    pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| parse_cidr(s))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(D::Error::custom)
    }

    /// A program and its arguments: a non-empty array of strings.
    pub(super) fn program<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<OsString>>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.is_empty() {
            return Err(D::Error::custom(
                "an empty program: give [\"PROG\", \"ARG\", ...]",
            ));
        }
        Ok(Some(list.into_iter().map(OsString::from).collect()))
    }

    /// An integer in `LO..=HI`.
    pub(super) fn ranged<'de, D: Deserializer<'de>, const LO: u64, const HI: u64>(
        d: D,
    ) -> Result<Option<u64>, D::Error> {
        let v = u64::deserialize(d)?;
        if (LO..=HI).contains(&v) {
            Ok(Some(v))
        } else {
            Err(D::Error::custom(format!("{v} is not in {LO}..={HI}")))
        }
    }
}
