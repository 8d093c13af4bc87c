//! From the settings to bound servers: what `sockserv serve` serves, with
//! which handler and settings. Binding happens here, so every listener is
//! open (and its real address known) before the service life in
//! [`super::life`] begins. Three sources, one way to build a server: the
//! command line (one server for the stream addresses, one for the datagram
//! ones), a config file (a server per `[[listener]]`), and the connection
//! inetd passed on fd 0.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use sockserv::frame::{Framing, OnOversize};
use sockserv::rules::IpNet;
use sockserv::{
    Builder, DrainPolicy, Endpoint, Limits, OverLimit, ProxyVersions, Rules, Server, SocketOptions,
    Strategy, Timeouts,
};

use sockserv::activation::InheritedSocket;

use super::config::Config;
use super::settings::Settings;
use super::{load_rules, strategy, warn_ignored, with_max_frame};
use crate::builtin::Builtin;
use crate::error::CliError;

/// Bound servers, ready to serve, and what the service life needs to know
/// about them.
pub(crate) struct Plan {
    pub(crate) servers: Vec<Planned>,
    /// Every listener's bound address, in the order they were given.
    pub(crate) listeners: Vec<Endpoint>,
    /// The admin endpoint to start, if any.
    pub(crate) admin: Option<sockserv::admin::AdminConfig>,
    /// One line for the log: mode, handler, framing.
    pub(crate) summary: String,
}

/// One bound server and where its access rules come from.
pub(crate) struct Planned {
    pub(crate) server: Server,
    /// Re-read on SIGHUP.
    pub(crate) rules: Option<RulesSource>,
}

/// The rules a SIGHUP puts in force: the fixed ones and a file's.
#[derive(Clone, PartialEq)]
pub(crate) struct RulesSource {
    pub(crate) file: PathBuf,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) deny: Vec<IpNet>,
}

/// One listener to serve: an address to bind or a socket passed by the
/// service manager.
enum Listen {
    Addr(Endpoint),
    Socket(sockserv::activation::InheritedSocket),
}

impl Listen {
    fn endpoint(&self) -> &Endpoint {
        match self {
            Listen::Addr(ep) => ep,
            Listen::Socket(s) => s.endpoint(),
        }
    }
}

/// The seed's address, served when no ADDR is given and no sockets are
/// passed by a service manager.
const DEFAULT_ADDR: &str = "tcp://127.0.0.1:9999";

/// What serves the connections: a built-in handler or a program.
enum Serving {
    Builtin(Builtin),
    Exec(sockserv::Exec, String),
}

/// One server's settings, checked and turned into the library's values:
/// everything but its listeners. Building it reads the rules file, so it
/// is also what `sockserv check` checks.
pub(crate) struct Resolved {
    serving: Serving,
    framing: Framing,
    strategy: Strategy,
    options: SocketOptions,
    limits: Limits,
    rules: Rules,
    rules_source: Option<RulesSource>,
    timeouts: Timeouts,
    drain: DrainPolicy,
    proxy: Option<ProxyVersions>,
    proxy_from: Vec<IpNet>,
    /// Handler calls are timed (for the admin endpoint's histogram).
    timed: bool,
}

/// Checks `s` for a server on `endpoints` (those known: a socket to be
/// passed by the service manager has none yet).
pub(crate) fn resolve(s: &Settings, endpoints: &[Endpoint]) -> Result<Resolved, CliError> {
    let on_oversize = match s.on_oversize.as_deref() {
        Some("skip") => OnOversize::Skip,
        _ => OnOversize::Close,
    };
    let framing = with_max_frame(&s.framing_or_raw(), s.max_frame)?.with_on_oversize(on_oversize);
    let options = SocketOptions::default()
        .reuse_port(s.reuse_port.unwrap_or(false))
        .backlog(s.backlog.map_or(1024, |b| b as i32))
        .nodelay(s.nodelay.unwrap_or(false))
        .v6only(Some(!s.dual_stack.unwrap_or(false)));
    let mut limits = Limits::new().over_limit(match s.over_limit.as_deref() {
        Some("close") => OverLimit::Close,
        _ => OverLimit::Wait,
    });
    limits.max_connections = s.max_conns.map(|n| n as usize);
    limits.max_connections_per_ip = s.max_conns_per_ip.map(|n| n as usize);
    limits.max_conn_rate = s.max_conn_rate;
    limits.limit_message = s
        .limit_message
        .as_ref()
        .map(|m| format!("{m}\n").into_bytes());
    let allow = s.allow.clone().unwrap_or_default();
    let deny = s.deny.clone().unwrap_or_default();
    let rules = load_rules(&allow, &deny, s.rules.as_deref()).map_err(CliError::usage)?;
    let rules_source = s
        .rules
        .clone()
        .map(|file| RulesSource { file, allow, deny });
    let mut timeouts = Timeouts::new().write(Some(
        s.write_timeout
            .unwrap_or(std::time::Duration::from_secs(30)),
    ));
    timeouts.idle = s.idle_timeout;
    timeouts.read = s.read_timeout;
    let drain = DrainPolicy::new().grace(s.drain_timeout.unwrap_or(super::DRAIN_TIMEOUT));
    let strategy = strategy(s)?;
    let serving = match &s.exec {
        None => Serving::Builtin(s.handler.unwrap_or(Builtin::Upper)),
        Some(_) => {
            let Some((program, args)) = s.exec_command() else {
                return Err(CliError::usage(
                    "--exec needs a program: --exec PROG [ARGS]...",
                ));
            };
            if let Some(ep) = endpoints.iter().find(|e| !e.transport().is_stream()) {
                return Err(CliError::usage(format!(
                    "--exec serves stream addresses only (tcp://, unix://), not {ep}"
                )));
            }
            Serving::Exec(
                sockserv::Exec::new(program.clone(), args.iter().cloned()),
                program.to_string_lossy().into_owned(),
            )
        }
    };
    if s.proxy_from.is_some() && s.proxy_protocol.is_none() {
        return Err(CliError::usage(
            "proxy_from needs proxy_protocol (the balancers' PROXY header)",
        ));
    }
    warn_ignored(s, endpoints, strategy);
    Ok(Resolved {
        serving,
        framing,
        strategy,
        options,
        limits,
        rules,
        rules_source,
        timeouts,
        drain,
        proxy: s.proxy_protocol.as_deref().map(|v| match v {
            "v1" => ProxyVersions::V1,
            "v2" => ProxyVersions::V2,
            _ => ProxyVersions::Both,
        }),
        proxy_from: s.proxy_from.clone().unwrap_or_default(),
        timed: s.admin.is_some(),
    })
}

impl Resolved {
    /// A builder with these settings and the handler that fits a stream
    /// (or datagram) listener; the listeners are the caller's to add.
    fn builder(&self, stream: bool) -> Builder {
        let mut builder = Server::builder()
            .handler(match &self.serving {
                Serving::Exec(e, _) => sockserv::Handler::stream(e.clone()),
                Serving::Builtin(b) => b.handler(stream),
            })
            .framing(self.framing.clone())
            .strategy(self.strategy)
            .socket_options(self.options.clone())
            .limits(self.limits.clone())
            .rules(self.rules.clone())
            .timeouts(self.timeouts)
            .drain(self.drain)
            .time_handlers(self.timed);
        if let (Some(v), true) = (self.proxy, stream) {
            builder = builder.proxy_protocol(v);
            for net in &self.proxy_from {
                builder = builder.proxy_from(*net);
            }
        }
        builder
    }

    /// The log's line about this server: mode, handler, framing.
    fn summary(&self) -> String {
        let handler = match &self.serving {
            Serving::Builtin(b) => b.to_string(),
            Serving::Exec(_, program) => format!("exec {program}"),
        };
        format!(
            "mode={} handler={handler} framing={}",
            self.strategy, self.framing
        )
    }

    /// Binds `builder` (this server's, with its listeners added) and
    /// remembers where its rules come from.
    fn bind(&self, builder: Builder) -> Result<Planned, CliError> {
        let server = builder.bind().map_err(|e| {
            if e.is_usage() {
                CliError::usage(e)
            } else {
                CliError::runtime(e)
            }
        })?;
        Ok(Planned {
            server,
            rules: self.rules_source.clone(),
        })
    }
}

/// Adds one listener to `builder`.
fn listen(builder: Builder, source: Listen) -> Builder {
    match source {
        Listen::Addr(ep) => builder.listen(ep),
        Listen::Socket(s) => {
            tracing::info!(
                fd = s.fd(),
                name = s.name().unwrap_or("-"),
                "serving the inherited socket {}",
                s.endpoint()
            );
            builder.listen_socket(s)
        }
    }
}

/// The admin endpoint the settings ask for.
fn admin(s: &Settings) -> Option<sockserv::admin::AdminConfig> {
    s.admin.as_ref().map(|addr| {
        let mut config = sockserv::admin::AdminConfig::new(addr.clone());
        config.public = s.admin_public.unwrap_or(false);
        config
    })
}

/// Binds what the command line asks for.
pub(crate) fn from_args(addrs: Vec<Endpoint>, settings: Settings) -> Result<Plan, CliError> {
    // What to serve: the addresses given; without any, the sockets a
    // service manager passed (LISTEN_FDS for this process); else the
    // seed's address.
    // Started by an upgrade: the old process's sockets, one per ADDR.
    let handed = super::upgrade::inherited_for(&addrs)?;
    let mut sources: Vec<Option<Listen>> = if let Some(inherited) = handed {
        inherited
            .into_iter()
            .map(Listen::Socket)
            .map(Some)
            .collect()
    } else if !addrs.is_empty() {
        addrs.into_iter().map(Listen::Addr).map(Some).collect()
    } else if sockserv::activation::listen_fds().is_some() {
        let inherited = sockserv::activation::take_listeners().map_err(CliError::runtime)?;
        if inherited.is_empty() {
            return Err(CliError::runtime(
                "LISTEN_FDS passes no sockets: nothing to serve (give an ADDR)",
            ));
        }
        inherited
            .into_iter()
            .map(Listen::Socket)
            .map(Some)
            .collect()
    } else {
        vec![Some(Listen::Addr(DEFAULT_ADDR.parse().map_err(
            |e: sockserv::addr::ParseEndpointError| CliError::runtime(e),
        )?))]
    };
    let endpoints: Vec<Endpoint> = sources
        .iter()
        .flatten()
        .map(|s| s.endpoint().clone())
        .collect();
    let resolved = resolve(&settings, &endpoints)?;

    // One server for the stream addresses and one for the datagram ones:
    // each gets the handler that fits its transport, the limits count
    // across all the addresses of a server, and all stop together.
    let mut servers = Vec::new();
    let mut order = Vec::new();
    for stream in [true, false] {
        let picked: Vec<(usize, Listen)> = sources
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref()
                    .is_some_and(|s| s.endpoint().transport().is_stream() == stream)
            })
            .filter_map(|(i, s)| s.take().map(|s| (i, s)))
            .collect();
        if picked.is_empty() {
            continue;
        }
        let mut builder = resolved.builder(stream);
        let mut indexes = Vec::new();
        for (index, source) in picked {
            indexes.push(index);
            builder = listen(builder, source);
        }
        let planned = resolved.bind(builder)?;
        for (index, bound) in indexes.iter().zip(planned.server.local_endpoints()) {
            order.push((*index, bound.clone()));
        }
        servers.push(planned);
    }
    order.sort_by_key(|(index, _)| *index);
    Ok(Plan {
        servers,
        listeners: order.into_iter().map(|(_, ep)| ep).collect(),
        admin: admin(&settings),
        summary: resolved.summary(),
    })
}

/// Checks every listener of `config` as [`from_config`] would, without
/// binding anything: values, handler and transport, rules files. Returns
/// how many listeners there are.
pub(crate) fn check(config: &Config) -> Result<usize, CliError> {
    for l in &config.listeners {
        let known: Vec<Endpoint> = l.address.iter().cloned().collect();
        resolve(&l.settings, &known).map_err(|e| config.error_at(l, e))?;
    }
    Ok(config.listeners.len())
}

/// Binds the listeners of a config file, a server each, in file order.
/// Under socket activation each passed socket goes to the listener of its
/// name (a socket no listener names is an error: its clients would wait
/// for ever); a listener no socket is passed for binds its address.
pub(crate) fn from_config(config: Config) -> Result<Plan, CliError> {
    let passed = if sockserv::activation::listen_fds().is_some() {
        sockserv::activation::take_listeners().map_err(CliError::runtime)?
    } else {
        Vec::new()
    };
    let activated = !passed.is_empty();
    // The passed socket each listener serves, if any.
    let assigned: Vec<Option<InheritedSocket>> = if super::upgrade::is_successor() {
        // Started by an upgrade: the old process passes one socket a
        // listener, in file order (unnamed listeners too).
        let addresses = config.listeners.iter().map(|l| l.address.as_ref());
        super::upgrade::in_order(passed, addresses)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        by_name(&config, passed)?
    };
    let mut servers = Vec::new();
    let mut listeners = Vec::new();
    let mut summary = Vec::new();
    for (l, socket) in config.listeners.iter().zip(assigned) {
        let source = match (socket, &l.address) {
            (Some(s), _) => Listen::Socket(s),
            (None, Some(ep)) => {
                if activated {
                    tracing::warn!(
                        "{}: no socket named {} is passed (LISTEN_FDNAMES): binding {ep}",
                        config.label(l),
                        l.name.as_deref().unwrap_or("-")
                    );
                }
                Listen::Addr(ep.clone())
            }
            (None, None) => {
                return Err(config.error_at(
                    l,
                    "no address, and no socket of this name is passed by the service manager \
                     (LISTEN_FDNAMES)",
                ))
            }
        };
        let endpoint = source.endpoint().clone();
        let resolved = resolve(&l.settings, std::slice::from_ref(&endpoint))
            .map_err(|e| config.error_at(l, e))?;
        let stream = endpoint.transport().is_stream();
        let planned = resolved
            .bind(listen(resolved.builder(stream), source))
            .map_err(|e| CliError::prefixed(&config.label(l), e))?;
        listeners.extend(planned.server.local_endpoints().iter().cloned());
        summary.push(format!("{}: {}", config.label(l), resolved.summary()));
        servers.push(planned);
    }
    Ok(Plan {
        servers,
        listeners,
        admin: admin(&config.global),
        summary: summary.join("; "),
    })
}

/// The one connection inetd (or systemd's `Accept=yes`) passed on fd 0,
/// served with `settings`.
pub(crate) fn inetd(settings: Settings) -> Result<Plan, CliError> {
    let mut resolved = resolve(&settings, &[])?;
    // One connection: served on the serving thread, whatever --mode says.
    resolved.strategy = Strategy::Sequential;
    stdin_open()?;
    // SAFETY: fd 0 is open (checked) and, in inetd mode, is the
    // connection: nothing else in this process reads stdin.
    let conn = unsafe { OwnedFd::from_raw_fd(0) };
    detach_stdout(&conn);
    let planned = resolved.bind(resolved.builder(true).connected(conn))?;
    Ok(Plan {
        servers: vec![planned],
        listeners: Vec::new(),
        admin: None,
        summary: format!("inetd {}", resolved.summary()),
    })
}

/// Checks that fd 0 is open.
fn stdin_open() -> Result<(), CliError> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(0, libc::F_GETFD) } < 0 {
        return Err(CliError::usage(
            "--inetd: fd 0 is not open (inetd passes the connection as stdin)",
        ));
    }
    Ok(())
}

/// Under inetd stdout is the connection too: point it at /dev/null, so
/// nothing the command prints reaches the client, and so the connection
/// really closes when the server closes it (not at exit).
fn detach_stdout(conn: &OwnedFd) {
    let same = |a: i32, b: i32| {
        // SAFETY: all-zero `stat`s are valid values for fstat to fill;
        // fstat only reads the descriptors.
        unsafe {
            let (mut x, mut y): (libc::stat, libc::stat) = (std::mem::zeroed(), std::mem::zeroed());
            libc::fstat(a, &mut x) == 0
                && libc::fstat(b, &mut y) == 0
                && (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
        }
    };
    if !same(conn.as_raw_fd(), 1) {
        return;
    }
    match std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 replaces this process's stdout; the
        // `File` keeps its own descriptor, closed when it drops.
        Ok(null) => unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        },
        Err(e) => tracing::warn!("--inetd: cannot detach stdout from the connection: {e}"),
    }
}

/// Socket activation's sockets, each given to the listener of its name
/// (LISTEN_FDNAMES); a socket no listener names is an error (its clients
/// would wait for ever).
fn by_name(
    config: &Config,
    mut passed: Vec<InheritedSocket>,
) -> Result<Vec<Option<InheritedSocket>>, CliError> {
    for s in &passed {
        let named = s.name().is_some_and(|n| {
            config
                .listeners
                .iter()
                .any(|l| l.name.as_deref() == Some(n))
        });
        if !named {
            return Err(CliError::usage(format!(
                "{}: the service manager passes fd {} ({}) named {}, but no [[listener]] has that name",
                config.path.display(),
                s.fd(),
                s.endpoint(),
                s.name().map_or("nothing (no LISTEN_FDNAMES)".to_string(), |n| format!("\"{n}\""))
            )));
        }
    }
    Ok(config
        .listeners
        .iter()
        .map(|l| {
            passed
                .iter()
                .position(|s| s.name().is_some() && s.name() == l.name.as_deref())
                .map(|i| passed.swap_remove(i))
        })
        .collect())
}
