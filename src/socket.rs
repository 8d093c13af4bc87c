//! Opening sockets: listeners for servers, connections for clients.
//!
//! Every listener is built with socket2 so its options are explicit rather
//! than whatever a runtime's `bind` happens to pick (tokio's `bind` listens
//! with a backlog of 128; Python's `request_queue_size` is 5, which makes a
//! `ThreadingTCPServer` reset connections when a few hundred clients arrive
//! at once). The defaults here are a server's defaults: `SO_REUSEADDR` on
//! for TCP (never for UDP, see [`SocketOptions::reuse_address`]), backlog
//! 1024, `IPV6_V6ONLY` on so `[::]` and `0.0.0.0` can be served side by side
//! (turn it off for one dual-stack socket).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::addr::{Endpoint, Transport};
use crate::error::Error;

/// Socket options for listeners (and, where they apply, accepted sockets).
///
/// ```
/// use sockserv::SocketOptions;
/// let options = SocketOptions::default().reuse_port(true).nodelay(true);
/// assert!(options.reuse_port && options.nodelay);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_REUSEADDR` on TCP listeners: rebind a port still in TIME_WAIT
    /// after a restart. On by default, as the seed's server sets
    /// `allow_reuse_address`. On Linux it never lets a second socket listen
    /// on a TCP port in use.
    ///
    /// UDP sockets never get it, whatever this says: on a UDP socket it
    /// lets any other socket that sets it too bind the same address and
    /// receive the server's datagrams (Python's `UDPServer` leaves
    /// `allow_reuse_address` false). Binding a UDP address in use fails
    /// with "address already in use"; to share one on purpose, set
    /// [`reuse_port`](Self::reuse_port) on every socket.
    pub reuse_address: bool,
    /// `SO_REUSEPORT`: let several sockets (processes or threads) bind the
    /// same address, the kernel spreading connections or datagrams between
    /// them. Every socket sharing it must set it, and Linux lets only
    /// sockets of the same user share one. Off by default; the only way
    /// for UDP sockets to share an address.
    pub reuse_port: bool,
    /// Length of the queue of connections the kernel has accepted but the
    /// server has not (capped by `net.core.somaxconn`). Default 1024.
    pub backlog: i32,
    /// `TCP_NODELAY` on accepted TCP connections: disables Nagle's
    /// algorithm, so small replies leave at once instead of waiting to be
    /// merged. Off by default (the kernel's default).
    pub nodelay: bool,
    /// `IPV6_V6ONLY` for IPv6 listeners: `Some(false)` makes `[::]` accept
    /// IPv4 too (dual stack). Default `Some(true)`.
    pub v6only: Option<bool>,
    /// `SO_RCVBUF` in bytes (the kernel doubles it and clamps it).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes.
    pub send_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            reuse_address: true,
            reuse_port: false,
            backlog: 1024,
            nodelay: false,
            v6only: Some(true),
            recv_buffer: None,
            send_buffer: None,
        }
    }
}

impl SocketOptions {
    /// Sets [`reuse_address`](Self::reuse_address).
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = on;
        self
    }

    /// Sets [`reuse_port`](Self::reuse_port).
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Sets [`backlog`](Self::backlog).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets [`nodelay`](Self::nodelay).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Sets [`v6only`](Self::v6only).
    pub fn v6only(mut self, v6only: Option<bool>) -> Self {
        self.v6only = v6only;
        self
    }

    /// Sets [`recv_buffer`](Self::recv_buffer).
    pub fn recv_buffer(mut self, bytes: Option<usize>) -> Self {
        self.recv_buffer = bytes;
        self
    }

    /// Sets [`send_buffer`](Self::send_buffer).
    pub fn send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer = bytes;
        self
    }
}

/// A bound server socket of any transport.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
    /// A Unix stream listener and the path it created (removed on drop).
    Unix(UnixListener, PathGuard),
    /// A Unix datagram socket and the path it created (removed on drop).
    UnixDgram(UnixDatagram, PathGuard),
}

/// Removes a Unix socket file when the socket that created it is dropped,
/// so a restart does not fail with "address already in use".
///
/// Only the file this socket created: its device and inode are recorded
/// right after `bind`, and at drop the path is removed only if it is still
/// a socket with that identity. The check is an `lstat`, so a symlink put
/// at the path is not followed. Whatever else is there by then is left
/// alone: another server's socket bound at the path after this one's file
/// was removed, or a regular file.
#[derive(Debug)]
pub struct PathGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// False for a socket the server inherited (socket activation): its
    /// file belongs to whoever created it and is never removed.
    remove: bool,
}

impl PathGuard {
    /// Records the identity of the socket file just bound at `path`.
    pub(crate) fn after_bind(path: &Path) -> io::Result<PathGuard> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(PathGuard {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            remove: true,
        })
    }

    /// The path of a socket this server did not bind (inherited from a
    /// service manager): kept for its name, never removed.
    pub(crate) fn inherited(path: PathBuf) -> PathGuard {
        PathGuard {
            path,
            dev: 0,
            ino: 0,
            remove: false,
        }
    }

    /// Leaves the file in place at drop: the socket was handed to a
    /// successor that serves on at this path.
    pub(crate) fn keep(&mut self) {
        self.remove = false;
    }

    /// The socket's path, as given to `bind`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the path is still the socket file this guard recorded.
    fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        if !self.remove {
            return;
        }
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        } else {
            tracing::info!(
                "not removing {}: it is no longer the socket this server bound",
                self.path.display()
            );
        }
    }
}

impl Listener {
    /// The endpoint actually bound: port 0 is replaced by the kernel's pick.
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Listener::Tcp(l) => Endpoint::inet(Transport::Tcp, l.local_addr()?),
            Listener::Udp(s) => Endpoint::inet(Transport::Udp, s.local_addr()?),
            Listener::Unix(_, p) => Endpoint::Unix(p.path().to_path_buf()),
            Listener::UnixDgram(_, p) => Endpoint::UnixDgram(p.path().to_path_buf()),
        })
    }
}

fn domain_of(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn apply_common(
    sock: &Socket,
    addr: &SocketAddr,
    transport: Transport,
    opts: &SocketOptions,
) -> io::Result<()> {
    // Never on UDP: there it lets another socket bind the same address and
    // take the datagrams (see `SocketOptions::reuse_address`).
    if transport == Transport::Tcp {
        sock.set_reuse_address(opts.reuse_address)?;
    }
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        if let Some(only) = opts.v6only {
            sock.set_only_v6(only)?;
        }
    }
    if let Some(n) = opts.recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = opts.send_buffer {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

fn bind_inet(endpoint: &Endpoint, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Listener> {
    let transport = endpoint.transport();
    let stream = transport == Transport::Tcp;
    let (ty, proto) = if stream {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let sock = Socket::new(domain_of(&addr), ty, Some(proto))?;
    apply_common(&sock, &addr, transport, opts)?;
    sock.bind(&addr.into())?;
    if stream {
        sock.listen(opts.backlog)?;
        Ok(Listener::Tcp(sock.into()))
    } else {
        Ok(Listener::Udp(sock.into()))
    }
}

/// A Unix socket path may be left behind by a server that crashed (or was
/// killed before it could remove it). A path that is a socket nobody
/// listens on is such a leftover and is removed; a live socket, or a path
/// that is not a socket at all, is an error.
fn check_unix_path(path: &Path, stream: bool) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists and is not a socket", path.display()),
        ));
    }
    let probe = if stream {
        UnixStream::connect(path).map(drop)
    } else {
        UnixDatagram::unbound().and_then(|s| s.connect(path))
    };
    match probe {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!("removing the stale socket {}", path.display());
            std::fs::remove_file(path)
        }
        _ => Err(io::Error::other(format!(
            "{} is in use by a running server",
            path.display()
        ))),
    }
}

/// Opens and binds the server socket for `endpoint`.
///
/// Host names resolve and the first address that binds is used. A Unix path
/// that belongs to a running server, or is not a socket, is an error; a
/// socket file left by a server that died is removed first.
pub fn bind(endpoint: &Endpoint, opts: &SocketOptions) -> Result<Listener, Error> {
    let action = || format!("cannot listen on {endpoint}");
    match endpoint {
        Endpoint::Tcp(_) | Endpoint::Udp(_) => {
            let addrs = endpoint.resolve().map_err(|e| Error::socket(action(), e))?;
            let mut last = None;
            for addr in addrs {
                match bind_inet(endpoint, addr, opts) {
                    Ok(l) => return Ok(l),
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::socket(
                action(),
                last.unwrap_or_else(|| io::Error::other("no address to bind")),
            ))
        }
        Endpoint::Unix(path) => {
            check_unix_path(path, true).map_err(|e| Error::socket(action(), e))?;
            let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
                .map_err(|e| Error::socket(action(), e))?;
            let addr = SockAddr::unix(path).map_err(|e| Error::socket(action(), e))?;
            sock.bind(&addr).map_err(|e| Error::socket(action(), e))?;
            let guard = PathGuard::after_bind(path).map_err(|e| Error::socket(action(), e))?;
            sock.listen(opts.backlog)
                .map_err(|e| Error::socket(action(), e))?;
            Ok(Listener::Unix(sock.into(), guard))
        }
        Endpoint::UnixDgram(path) => {
            check_unix_path(path, false).map_err(|e| Error::socket(action(), e))?;
            let sock = UnixDatagram::bind(path).map_err(|e| Error::socket(action(), e))?;
            let guard = PathGuard::after_bind(path).map_err(|e| Error::socket(action(), e))?;
            Ok(Listener::UnixDgram(sock, guard))
        }
    }
}

/// A connected stream socket of either stream transport.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub(crate) fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl io::Read for &Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl io::Write for &Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to a stream endpoint (TCP or Unix), trying each resolved
/// address in turn, with an optional timeout per attempt.
pub fn connect(endpoint: &Endpoint, timeout: Option<Duration>) -> Result<Stream, Error> {
    let action = || format!("cannot connect to {endpoint}");
    match endpoint {
        Endpoint::Tcp(_) => {
            let addrs = endpoint.resolve().map_err(|e| Error::socket(action(), e))?;
            let mut last = None;
            for addr in addrs {
                let attempt = match timeout {
                    Some(t) => TcpStream::connect_timeout(&addr, t),
                    None => TcpStream::connect(addr),
                };
                match attempt {
                    Ok(s) => return Ok(Stream::Tcp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::socket(
                action(),
                last.unwrap_or_else(|| io::Error::other("no address")),
            ))
        }
        Endpoint::Unix(path) => UnixStream::connect(path)
            .map(Stream::Unix)
            .map_err(|e| Error::socket(action(), e)),
        _ => Err(Error::config(format!(
            "{endpoint} is a datagram endpoint, not a stream"
        ))),
    }
}
