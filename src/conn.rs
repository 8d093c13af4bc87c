//! The connection a stream handler talks to.
//!
//! A [`Connection`] reads and writes like a blocking socket (it implements
//! [`Read`] and [`Write`], and `&Connection` does too, so a buffered reader
//! and a buffered writer can be used side by side, like Python's
//! `rfile`/`wfile`). Underneath, the socket is non-blocking and every wait
//! is a `poll` on the socket *and* the server's shutdown signal. That is what
//! lets a server stop without killing handlers mid-reply:
//!
//! * when the server shuts down, a read that would have to wait returns
//!   end-of-stream (`Ok(0)`), as if the client had closed its side; bytes the
//!   client already sent are still delivered first;
//! * reads and writes honour the connection's timeouts;
//! * at the drain deadline the server cuts the socket, so even a handler that
//!   keeps writing gets an error and returns.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::Address;
use crate::pipeline::Settings;
use crate::shutdown::{wait_fd, Shared, StopLevel, Wake};
use crate::socket::Stream;
use crate::tracker::{Admitted, TrackGuard};

/// One accepted stream connection (TCP or Unix).
pub struct Connection {
    // Fields drop in declaration order: the guard unregisters the socket
    // before `stream` closes it, so a forced stop can never shut down a
    // descriptor number that has been reused.
    guard: TrackGuard,
    stream: Stream,
    peer: Address,
    local: Address,
    proxy: Option<Arc<crate::proxy::ProxyInfo>>,
    /// The `VAR=value` pairs of the access rule that admitted the peer.
    env: crate::rules::Env,
    shared: Arc<Shared>,
    /// The server's connection settings (timeouts, linger).
    settings: Settings,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(admitted: Admitted, shared: Arc<Shared>, settings: Settings) -> Connection {
        let Admitted {
            guard,
            stream,
            peer,
            local,
            proxy,
            env,
            ..
        } = admitted;
        Connection {
            guard,
            stream,
            peer,
            local,
            proxy,
            env,
            read_timeout: settings.idle,
            write_timeout: settings.write,
            shared,
            settings,
        }
    }

    /// The client's address (`client_address` in Python). Behind a proxy
    /// speaking the PROXY protocol, the client the header named.
    pub fn peer_addr(&self) -> &Address {
        &self.peer
    }

    /// The server's address this connection arrived on. Behind a proxy
    /// speaking the PROXY protocol, the address the client connected to
    /// on the proxy, when the header names it.
    pub fn local_addr(&self) -> &Address {
        &self.local
    }

    /// What the PROXY header said (the proxy's own address, the
    /// destination, v2 TLVs such as the authority, ALPN and unique id), on
    /// a listener that takes the PROXY protocol; `None` otherwise.
    pub fn proxy(&self) -> Option<&crate::proxy::ProxyInfo> {
        self.proxy.as_deref()
    }

    /// The `VAR=value` pairs of the access rule that admitted the peer.
    pub(crate) fn rule_env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Fails reads that wait longer than `timeout` with `TimedOut`
    /// (default: the server's idle timeout).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Fails writes that wait longer than `timeout` with `TimedOut`
    /// (default: the server's write timeout).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Half-close: sends end-of-stream to the client but keeps reading (the
    /// first half of TCP's four-way close). Writes after this fail.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// True once the server is shutting down; long-running handlers can
    /// check it between units of work.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.stop.is_stopping()
    }

    /// True once the drain deadline has passed and the server cut (or is
    /// cutting) every connection.
    pub(crate) fn is_forced(&self) -> bool {
        self.shared.stop.is_forced()
    }

    /// The descriptor that becomes readable once the stop reaches `at`.
    pub(crate) fn stop_fd(&self, at: StopLevel) -> std::os::fd::RawFd {
        self.shared.stop.fd(at)
    }

    /// Open connections from this connection's peer IP, this one included
    /// (0 for peers without an IP).
    pub(crate) fn connections_from_peer(&self) -> usize {
        self.peer
            .ip()
            .map_or(0, |ip| self.shared.tracker.connections_from(ip))
    }

    /// A buffered reader over this connection (Python's `rfile`).
    pub fn reader(&self) -> BufReader<&Connection> {
        BufReader::new(self)
    }

    /// A buffered writer over this connection (Python's `wfile`); flush it,
    /// or drop it, to send.
    pub fn writer(&self) -> BufWriter<&Connection> {
        BufWriter::new(self)
    }

    /// The underlying socket, for options this type does not wrap.
    pub fn socket(&self) -> socket2::SockRef<'_> {
        match &self.stream {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
        }
    }

    /// Reads, waiting for data like a blocking socket; a server shutdown
    /// ends the wait as end of stream (`Ok(0)`), as if the client had
    /// closed its side. Data already received is returned first.
    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.stream).read(buf) {
                Ok(n) => {
                    if let Some(m) = self.guard.meter() {
                        m.add_bytes(n as u64, 0);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let signal = self.shared.stop.signal(StopLevel::Draining);
            match wait_fd(
                self.stream.as_raw_fd(),
                libc::POLLIN,
                Some(signal),
                self.read_timeout,
            )? {
                Wake::Ready => continue,
                Wake::Signal => return Ok(0),
                Wake::Timeout => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
                }
            }
        }
    }

    fn write_inner(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&self.stream).write(buf) {
                Ok(n) => {
                    if let Some(m) = self.guard.meter() {
                        m.add_bytes(0, n as u64);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let signal = self.shared.stop.signal(StopLevel::Forced);
            match wait_fd(
                self.stream.as_raw_fd(),
                libc::POLLOUT,
                Some(signal),
                self.write_timeout,
            )? {
                Wake::Ready => continue,
                Wake::Signal => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "server stopped before the write finished",
                    ))
                }
                Wake::Timeout => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
                }
            }
        }
    }

    /// The polite close (half-close, lingering read), by the same pipeline
    /// as every framed connection; then the guard, then the socket.
    pub(crate) fn linger_close(self) {
        crate::driver::blocking::linger_close(&self.stream, self.settings, &self.shared);
    }
}

impl Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf)
    }
}

impl Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_inner(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_inner(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
