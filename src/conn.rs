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
use crate::shutdown::{wait_fd, Shared, TrackGuard, Wake};
use crate::socket::Stream;

/// The most a lingering close reads and discards before it gives up: enough
/// to absorb requests in flight, not enough to let a peer that keeps
/// sending (an oversized frame, say) hold the connection open.
pub(crate) const LINGER_BUDGET: usize = 256 * 1024;

/// How long a lingering close waits once the server is shutting down.
pub(crate) const DRAIN_LINGER: Duration = Duration::from_millis(100);

/// One accepted stream connection (TCP or Unix).
pub struct Connection {
    // Fields drop in declaration order: the guard unregisters the socket
    // before `stream` closes it, so a forced stop can never shut down a
    // descriptor number that has been reused.
    guard: TrackGuard,
    stream: Stream,
    peer: Address,
    local: Address,
    shared: Arc<Shared>,
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
    pub(crate) fn new(
        stream: Stream,
        peer: Address,
        local: Address,
        shared: Arc<Shared>,
    ) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        let guard = shared.tracker.enter(Some(stream.as_raw_fd()), peer.ip());
        Ok(Connection {
            stream,
            peer,
            local,
            shared,
            read_timeout: None,
            write_timeout: None,
            guard,
        })
    }

    /// The client's address (`client_address` in Python).
    pub fn peer_addr(&self) -> &Address {
        &self.peer
    }

    /// The server's address this connection arrived on.
    pub fn local_addr(&self) -> &Address {
        &self.local
    }

    /// Fails reads that wait longer than `timeout` with `TimedOut`.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Fails writes that wait longer than `timeout` with `TimedOut`.
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
        self.shared.stop.is_triggered()
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

    /// Splits the connection for an engine that drives the socket itself.
    /// The guard must be dropped before the stream is closed.
    pub(crate) fn into_parts(self) -> (TrackGuard, Stream, Address) {
        (self.guard, self.stream, self.peer)
    }

    /// Reads, waiting for data like a blocking socket; a server shutdown
    /// ends the wait with `Ok(None)` (as opposed to `Ok(Some(0))`, the
    /// peer's end of stream). Data already received is returned first.
    pub(crate) fn read_event(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match (&self.stream).read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let signal = Some(&self.shared.stop);
            match wait_fd(
                self.stream.as_raw_fd(),
                libc::POLLIN,
                signal,
                self.read_timeout,
            )? {
                Wake::Ready => continue,
                Wake::Signal => return Ok(None),
                Wake::Timeout => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
                }
            }
        }
    }

    /// Reads; a server shutdown reads as end of stream (the stream
    /// handler's drain policy).
    fn read_inner(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_event(buf).map(|n| n.unwrap_or(0))
    }

    fn write_inner(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&self.stream).write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            match wait_fd(
                self.stream.as_raw_fd(),
                libc::POLLOUT,
                Some(&self.shared.force),
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

    /// Lingering close: after our last reply and a half-close, read and
    /// discard until the client closes, `linger` passes or
    /// [`LINGER_BUDGET`] bytes were discarded, so a client that is merely
    /// slow to close never gets a reset that could destroy replies it has
    /// not read yet.
    pub(crate) fn linger_close(self, linger: Duration) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut deadline = std::time::Instant::now() + linger;
        let mut sink = [0u8; 4096];
        let mut budget = LINGER_BUDGET;
        loop {
            match (&self.stream).read(&mut sink) {
                Ok(0) => break,
                Ok(n) if n >= budget => break,
                Ok(n) => {
                    budget -= n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            // While the server drains, a client that neither reads nor
            // closes must not hold the shutdown for the whole linger time:
            // it gets a short grace once the stop signal is up.
            let stopping = self.shared.stop.is_triggered();
            if stopping {
                deadline = deadline.min(std::time::Instant::now() + DRAIN_LINGER);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let signal = if stopping {
                &self.shared.force
            } else {
                &self.shared.stop
            };
            match wait_fd(
                self.stream.as_raw_fd(),
                libc::POLLIN,
                Some(signal),
                Some(left),
            ) {
                Ok(Wake::Ready) | Ok(Wake::Signal) if !self.shared.force.is_triggered() => continue,
                _ => break,
            }
        }
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
