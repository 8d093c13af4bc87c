//! A connection that is already open when the server starts: inetd (and
//! xinetd with `wait = no`, systemd with `Accept=yes` and
//! `StandardInput=socket`) accepts it and starts the server with it as
//! stdin. The server serves exactly that connection, through the same
//! gate checks, pipeline and blocking driver as any accepted one; this
//! module only checks the descriptor and gives it the shape of an accepted
//! connection ([`Admitted`]).

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use socket2::{Domain, Type};

use crate::addr::{Address, Endpoint, Transport};
use crate::context::Context;
use crate::error::Error;
use crate::socket::Stream;
use crate::tracker::Admitted;

/// A connected stream socket, checked, with both of its addresses.
#[derive(Debug)]
pub(crate) struct Connected {
    stream: Stream,
    peer: Address,
    local: Address,
    /// The local address as an endpoint (the server's one "listener").
    endpoint: Endpoint,
}

impl Connected {
    /// Checks that `fd` is a connected stream socket (not a file, not a
    /// datagram socket, not a listener, which belongs to `LISTEN_FDS`).
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<Connected, Error> {
        let raw: RawFd = fd.as_raw_fd();
        let action = || format!("cannot serve the connection on fd {raw}");
        let fail = |what: &str| Error::socket(action(), io::Error::other(what.to_string()));
        let io_fail = |e: io::Error| Error::socket(action(), e);
        let sock =
            crate::activation::socket_of(fd, "not a socket (inetd passes the connection as stdin)")
                .map_err(io_fail)?;
        if sock.r#type().map_err(io_fail)? != Type::STREAM {
            return Err(fail(
                "not a stream socket (only stream connections are served)",
            ));
        }
        if sock.is_listener().map_err(io_fail)? {
            return Err(fail(
                "a listening socket, not a connection (pass listeners with LISTEN_FDS)",
            ));
        }
        let local = sock.local_addr().map_err(io_fail)?;
        let peer = sock
            .peer_addr()
            .map_err(|_| fail("a socket that is not connected"))?;
        sock.set_cloexec(true).map_err(io_fail)?;
        let family = local.domain();
        if family == Domain::IPV4 || family == Domain::IPV6 {
            let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
                return Err(fail("an inet socket without an inet address"));
            };
            Ok(Connected {
                stream: Stream::Tcp(TcpStream::from(sock)),
                peer: Address::Inet(peer),
                local: Address::Inet(local),
                endpoint: Endpoint::inet(Transport::Tcp, local),
            })
        } else if family == Domain::UNIX {
            let path = local.as_pathname().map(|p| p.to_path_buf());
            Ok(Connected {
                stream: Stream::Unix(UnixStream::from(OwnedFd::from(sock))),
                peer: Address::Unix(peer.as_pathname().map(|p| p.to_path_buf())),
                endpoint: Endpoint::Unix(path.clone().unwrap_or_else(|| PathBuf::from("-"))),
                local: Address::Unix(path),
            })
        } else {
            Err(fail("a socket of a family the server does not serve"))
        }
    }

    /// The local address, as the server reports its listener.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The gate an accepted connection passes, less what counts
    /// connections (one is all there is): the PROXY senders, the access
    /// rules, `verify_request`. `None` if refused (the socket closes).
    pub(crate) fn admit(self, ctx: &Context) -> Option<Admitted> {
        let Connected {
            stream,
            peer,
            local,
            ..
        } = self;
        let Ok(env) = crate::accept::verdict(ctx, &peer, false) else {
            tracing::info!(%peer, "refused the connection passed on stdin");
            return None;
        };
        if let (Stream::Tcp(s), true) = (&stream, ctx.options.nodelay) {
            let _ = s.set_nodelay(true);
        }
        let proxied = ctx.proxy.is_some();
        Admitted::register(&ctx.shared.tracker, stream, peer, local, 0, proxied, env)
    }
}
