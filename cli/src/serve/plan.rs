//! From the command line to bound servers: what `sockserv serve` serves,
//! with which handler and settings. Binding happens here, so every
//! listener is open (and its real address known) before the service life
//! in [`super::life`] begins.

use std::path::PathBuf;

use sockserv::rules::IpNet;
use sockserv::{
    DrainPolicy, Endpoint, Limits, OverLimit, ProxyVersions, Server, SocketOptions, Timeouts,
};

use super::{load_rules, strategy, warn_ignored, with_max_frame, ServeArgs};
use crate::builtin::Builtin;
use crate::error::CliError;
use sockserv::frame::OnOversize;

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

/// Binds what the command line asks for.
pub(crate) fn from_args(args: ServeArgs) -> Result<Plan, CliError> {
    let on_oversize = if args.on_oversize == "skip" {
        OnOversize::Skip
    } else {
        OnOversize::Close
    };
    let framing = with_max_frame(&args.framing, args.max_frame)?.with_on_oversize(on_oversize);
    let options = SocketOptions::default()
        .reuse_port(args.reuse_port)
        .backlog(args.backlog)
        .nodelay(args.nodelay)
        .v6only(Some(!args.dual_stack));
    let mut limits = Limits::new().over_limit(if args.over_limit == "close" {
        OverLimit::Close
    } else {
        OverLimit::Wait
    });
    limits.max_connections = args.max_conns.map(|n| n as usize);
    limits.max_connections_per_ip = args.max_conns_per_ip.map(|n| n as usize);
    limits.max_conn_rate = args.max_conn_rate;
    let rules =
        load_rules(&args.allow, &args.deny, args.rules.as_deref()).map_err(CliError::usage)?;
    limits.limit_message = args
        .limit_message
        .as_ref()
        .map(|m| format!("{m}\n").into_bytes());
    let mut timeouts = Timeouts::new().write(Some(args.write_timeout));
    timeouts.idle = args.idle_timeout;
    timeouts.read = args.read_timeout;
    let drain = DrainPolicy::new().grace(args.drain_timeout);
    let strategy = strategy(&args)?;
    // What to serve: the addresses given; without any, the sockets a
    // service manager passed (LISTEN_FDS for this process); else the
    // seed's address.
    // Started by an upgrade: the old process's sockets, one per ADDR.
    let handed = super::upgrade::inherited_for(&args.addrs)?;
    let mut sources: Vec<Option<Listen>> = if let Some(inherited) = handed {
        inherited
            .into_iter()
            .map(Listen::Socket)
            .map(Some)
            .collect()
    } else if !args.addrs.is_empty() {
        args.addrs
            .iter()
            .cloned()
            .map(Listen::Addr)
            .map(Some)
            .collect()
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
    let exec = if args.exec.is_empty() {
        None
    } else {
        let Some((program, prog_args)) = args.exec_command() else {
            return Err(CliError::usage(
                "--exec needs a program: --exec PROG [ARGS]...",
            ));
        };
        if let Some(ep) = endpoints.iter().find(|e| !e.transport().is_stream()) {
            return Err(CliError::usage(format!(
                "--exec serves stream addresses only (tcp://, unix://), not {ep}"
            )));
        }
        Some(sockserv::Exec::new(
            program.clone(),
            prog_args.iter().cloned(),
        ))
    };
    let handler_name = match &exec {
        Some(_) => format!(
            "exec {}",
            args.exec_command()
                .map_or(std::borrow::Cow::Borrowed(""), |(p, _)| p.to_string_lossy())
        ),
        None => args.handler.unwrap_or(Builtin::Upper).to_string(),
    };
    warn_ignored(&args, &endpoints, strategy);
    let proxy = args.proxy_protocol.as_deref().map(|v| match v {
        "v1" => ProxyVersions::V1,
        "v2" => ProxyVersions::V2,
        _ => ProxyVersions::Both,
    });

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
        let mut builder = Server::builder()
            .handler(match &exec {
                Some(e) => sockserv::Handler::stream(e.clone()),
                None => args.handler.unwrap_or(Builtin::Upper).handler(stream),
            })
            .framing(framing.clone())
            .strategy(strategy)
            .socket_options(options.clone())
            .limits(limits.clone())
            .rules(rules.clone())
            .timeouts(timeouts)
            .drain(drain)
            .time_handlers(args.admin.is_some());
        if let Some(v) = proxy {
            if stream {
                builder = builder.proxy_protocol(v);
                for net in &args.proxy_from {
                    builder = builder.proxy_from(*net);
                }
            }
        }
        let mut indexes = Vec::new();
        for (index, source) in picked {
            indexes.push(index);
            builder = match source {
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
            };
        }
        let server = builder.bind().map_err(|e| {
            if e.is_usage() {
                CliError::usage(e)
            } else {
                CliError::runtime(e)
            }
        })?;
        for (index, bound) in indexes.iter().zip(server.local_endpoints()) {
            order.push((*index, bound.clone()));
        }
        servers.push(Planned {
            server,
            rules: args.rules.clone().map(|file| RulesSource {
                file,
                allow: args.allow.clone(),
                deny: args.deny.clone(),
            }),
        });
    }
    order.sort_by_key(|(index, _)| *index);
    let admin = args.admin.as_ref().map(|addr| {
        let mut config = sockserv::admin::AdminConfig::new(addr.clone());
        config.public = args.admin_public;
        config
    });
    Ok(Plan {
        servers,
        listeners: order.into_iter().map(|(_, ep)| ep).collect(),
        admin,
        summary: format!("mode={strategy} handler={handler_name} framing={framing}"),
    })
}
