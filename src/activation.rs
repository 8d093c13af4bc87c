//! Listening sockets handed over by a service manager (systemd socket
//! activation, `systemd-socket-activate`, or anything speaking the same
//! `LISTEN_FDS` protocol).
//!
//! The protocol: the manager opens the sockets, puts them at file
//! descriptors 3, 4, ... and starts the server with `LISTEN_FDS=N` (how
//! many), `LISTEN_PID` (the process they are meant for: a child that
//! inherits the environment must not take them too) and, optionally,
//! `LISTEN_FDNAMES=name1:name2:...`.
//!
//! Each descriptor is checked before it is used: it must be a socket
//! (`fstat`), of a family the server knows (`AF_INET`, `AF_INET6`,
//! `AF_UNIX`) and, for a stream socket, listening (`SO_ACCEPTCONN`), so a
//! stray descriptor 3 left open by a parent is refused instead of adopted.
//! It is then made non-blocking (the event loops need that) and
//! close-on-exec (inherited descriptors are not). The `LISTEN_*` variables
//! are removed from the environment once read, so programs the server
//! starts do not see them. A Unix socket's file belongs to whoever created
//! it: the server never removes it.
//!
//! ```no_run
//! use sockserv::{handlers, Server};
//! // Serve whatever the service manager passed.
//! let server = Server::builder()
//!     .listen_inherited()
//!     .message(handlers::Echo)
//!     .bind()?;
//! # Ok::<(), sockserv::Error>(())
//! ```

use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;

use socket2::{Domain, Socket, Type};

use crate::addr::{Endpoint, Transport};
use crate::error::Error;
use crate::socket::{Listener, PathGuard};

/// The first descriptor the `LISTEN_FDS` protocol passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// A listening socket the server did not open itself: passed by a service
/// manager, or given to [`Builder::listen_fd`](crate::Builder::listen_fd).
#[derive(Debug)]
pub struct InheritedSocket {
    pub(crate) listener: Listener,
    endpoint: Endpoint,
    fd: RawFd,
    name: Option<String>,
}

impl InheritedSocket {
    /// Checks `fd` and makes it a listener (see the module documentation
    /// for what is checked). `name` is kept with it (`LISTEN_FDNAMES`).
    pub fn from_fd(fd: OwnedFd, name: Option<String>) -> Result<InheritedSocket, Error> {
        let raw = fd.as_raw_fd();
        let action = || format!("cannot use the inherited fd {raw}");
        let fail = |what: &str| Error::socket(action(), io::Error::other(what.to_string()));
        let io_fail = |e: io::Error| Error::socket(action(), e);
        let sock = socket_of(fd, "not a socket, so not a listener passed by LISTEN_FDS")
            .map_err(io_fail)?;
        let ty = sock.r#type().map_err(io_fail)?;
        let stream = if ty == Type::STREAM {
            true
        } else if ty == Type::DGRAM {
            false
        } else {
            return Err(fail("a socket neither stream nor datagram"));
        };
        if stream && !sock.is_listener().map_err(io_fail)? {
            return Err(fail(
                "a stream socket that is not listening (SO_ACCEPTCONN off), not a listener",
            ));
        }
        let local = sock.local_addr().map_err(io_fail)?;
        sock.set_nonblocking(true).map_err(io_fail)?;
        sock.set_cloexec(true).map_err(io_fail)?;
        let family = local.domain();
        let (listener, endpoint) = if family == Domain::IPV4 || family == Domain::IPV6 {
            let addr = local
                .as_socket()
                .ok_or_else(|| fail("an inet socket without an inet address"))?;
            if stream {
                (
                    Listener::Tcp(TcpListener::from(sock)),
                    Endpoint::inet(Transport::Tcp, addr),
                )
            } else {
                (
                    Listener::Udp(UdpSocket::from(sock)),
                    Endpoint::inet(Transport::Udp, addr),
                )
            }
        } else if family == Domain::UNIX {
            let path = if let Some(p) = local.as_pathname() {
                p.to_path_buf()
            } else if let Some(name) = local.as_abstract_namespace() {
                let mut p = b"@".to_vec();
                p.extend_from_slice(name);
                PathBuf::from(std::ffi::OsStr::from_bytes(&p))
            } else {
                return Err(fail("a Unix socket with no address"));
            };
            let guard = PathGuard::inherited(path.clone());
            if stream {
                (
                    Listener::Unix(UnixListener::from(OwnedFd::from(sock)), guard),
                    Endpoint::Unix(path),
                )
            } else {
                (
                    Listener::UnixDgram(UnixDatagram::from(OwnedFd::from(sock)), guard),
                    Endpoint::UnixDgram(path),
                )
            }
        } else {
            return Err(fail(
                "a socket of a family the server does not serve (not inet, inet6 or unix)",
            ));
        };
        Ok(InheritedSocket {
            listener,
            endpoint,
            fd: raw,
            name,
        })
    }

    /// The address the socket is bound to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The descriptor number it had when it was taken.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Its name from `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Makes the server remove a Unix socket's file when it closes, as it
    /// does for a socket it bound itself — for a socket a predecessor of
    /// the same server bound and handed over (a zero-downtime upgrade),
    /// not one a service manager made. The file's identity is recorded
    /// now, so a file put at the path later is left alone. Nothing for
    /// other sockets, or if the file is gone.
    pub fn own_file(&mut self) {
        if let Listener::Unix(_, guard) | Listener::UnixDgram(_, guard) = &mut self.listener {
            if let Ok(owned) = PathGuard::after_bind(guard.path()) {
                *guard = owned;
            }
        }
    }

    /// The checked socket (non-blocking, close-on-exec) as a plain
    /// descriptor, for a use outside a server — an inherited admin
    /// endpoint's listener, say.
    pub fn into_fd(self) -> OwnedFd {
        match self.listener {
            Listener::Tcp(l) => l.into(),
            Listener::Udp(u) => u.into(),
            Listener::Unix(u, _) => u.into(),
            Listener::UnixDgram(u, _) => u.into(),
        }
    }
}

/// `fd` as a socket, if it is one (`fstat`); else the error `not_socket`.
pub(crate) fn socket_of(fd: OwnedFd, not_socket: &str) -> io::Result<Socket> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor we own; `st` is valid.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other(not_socket.to_string()));
    }
    Ok(Socket::from(fd))
}

/// How many sockets `LISTEN_FDS` passes to this process: `None` if the
/// variables are absent, malformed or meant for another process
/// (`LISTEN_PID` is not ours). Reads only; takes nothing.
pub fn listen_fds() -> Option<usize> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()
}

/// Takes the sockets passed by `LISTEN_FDS`, in descriptor order, each
/// checked (see the module documentation), and removes the `LISTEN_*`
/// variables from the environment. An empty list if none were passed to
/// this process (`LISTEN_PID` names another process: the variables are
/// left alone). A descriptor that is not a usable listener is an error
/// naming it.
///
/// Call it once, early, before other threads read the environment: the
/// descriptors can be owned only once, and the environment is changed.
pub fn take_listeners() -> Result<Vec<InheritedSocket>, Error> {
    let Some(n) = listen_fds() else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let count = RawFd::try_from(n)
        .ok()
        .filter(|&n| n <= 65_536)
        .ok_or_else(|| Error::config(format!("LISTEN_FDS={n}: too many descriptors")))?;
    // Own every descriptor first, so that on an error they are all closed.
    let mut owned = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(Error::socket(
                format!("cannot use the inherited fd {fd}"),
                io::Error::other(format!("not open, though LISTEN_FDS={n}")),
            ));
        }
        // SAFETY: the LISTEN_FDS protocol hands descriptors 3..3+N to this
        // process (LISTEN_PID checked); nothing else in it owns them.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut sockets = Vec::new();
    for (i, fd) in owned.into_iter().enumerate() {
        let name = names.get(i).filter(|s| !s.is_empty()).cloned();
        let sock = InheritedSocket::from_fd(fd, name)?;
        tracing::info!(
            fd = sock.fd,
            name = sock.name().unwrap_or("-"),
            "inherited listener {}",
            sock.endpoint
        );
        sockets.push(sock);
    }
    Ok(sockets)
}

#[cfg(test)]
mod foreign_pid {
    /// Variables meant for another process are neither read nor removed,
    /// and no descriptor is taken. (The command's tests cover the sockets
    /// themselves, with systemd-socket-activate; this case would make the
    /// command fall back to its fixed default address.)
    #[test]
    fn listen_fds_for_another_process_are_ignored() {
        std::env::set_var("LISTEN_PID", "1");
        std::env::set_var("LISTEN_FDS", "1");
        assert_eq!(super::listen_fds(), None);
        assert!(super::take_listeners().unwrap().is_empty());
        assert_eq!(
            std::env::var("LISTEN_FDS").as_deref(),
            Ok("1"),
            "left alone"
        );
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
    }
}
