//! Reading a PROXY header off a socket without taking one byte past it,
//! for the connections whose socket is handed on after the header: a
//! stream handler reads the socket itself, and a program run per
//! connection has the socket as its stdin — a byte read too far by the
//! server would be lost to it. (Message handlers get the header through
//! the pipeline's byte layer instead, which keeps whatever follows.)
//!
//! The reads are the exact lengths [`proxy::next_step`] plans with the
//! sans-I/O parser: the 15 bytes no header is shorter than, v2's fixed 16
//! bytes, then exactly its length; for a v1 line, a `MSG_PEEK` and a read
//! of exactly the peeked bytes up to the LF. A peek without an LF takes
//! all it saw, so the next wait is for *new* bytes — a split header never
//! spins the loop and is never rejected for being split (nginx#1400). No
//! read is ever of zero bytes. The whole header must arrive within
//! [`HEADER_TIMEOUT`]; a drain shortens that to a moment.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use crate::proxy::{self, ProxyError, ProxyHeader, Step, Versions, HEADER_TIMEOUT, V1_MAX_LEN};
use crate::shutdown::{wait_fd, Stop, StopLevel, Wake};
use crate::socket::Stream;

/// Why no header came.
#[derive(Debug)]
pub(crate) enum HeaderError {
    Proxy(ProxyError),
    /// End of stream before the header was whole.
    Closed,
    TimedOut,
    Io(io::Error),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Proxy(e) => write!(f, "{e}"),
            HeaderError::Closed => f.write_str("closed before the PROXY header was complete"),
            HeaderError::TimedOut => write!(
                f,
                "no complete PROXY header within {} s",
                HEADER_TIMEOUT.as_secs()
            ),
            HeaderError::Io(e) => write!(f, "reading the PROXY header: {e}"),
        }
    }
}

impl HeaderError {
    /// The error as a handler-error report sees it.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            HeaderError::Io(e) => e,
            HeaderError::TimedOut => io::Error::new(io::ErrorKind::TimedOut, self.to_string()),
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// One header being read: the bytes of it so far, and when it is due.
#[derive(Debug)]
pub(crate) struct HeaderReader {
    accept: Versions,
    held: Vec<u8>,
    deadline: Instant,
}

impl HeaderReader {
    pub(crate) fn new(accept: Versions, now: Instant) -> HeaderReader {
        HeaderReader {
            accept,
            held: Vec::new(),
            deadline: now + HEADER_TIMEOUT,
        }
    }

    /// Reads what the plan allows, through `recv(buf, peek)` (a
    /// non-blocking receive of at most `buf.len()` bytes, a peek if asked),
    /// until the header is whole (`Some`) or nothing more has arrived
    /// (`None`: wait until the socket is readable and call again).
    pub(crate) fn advance(
        &mut self,
        recv: &mut dyn FnMut(&mut [u8], bool) -> io::Result<usize>,
    ) -> Result<Option<ProxyHeader>, HeaderError> {
        loop {
            let step = proxy::next_step(&self.held, self.accept).map_err(HeaderError::Proxy)?;
            let want = match step {
                Step::Done(header) => return Ok(Some(header)),
                Step::Read(n) => n,
                Step::Line(most) => {
                    let mut peek = [0u8; V1_MAX_LEN];
                    let most = most.min(peek.len());
                    match received(recv(&mut peek[..most], true))? {
                        None => return Ok(None),
                        Some(n) => proxy::line_take(&peek[..n]),
                    }
                }
            };
            let start = self.held.len();
            self.held.resize(start + want, 0);
            let got = received(recv(&mut self.held[start..], false));
            let n = match got {
                Ok(Some(n)) => n,
                Ok(None) => 0,
                Err(e) => {
                    self.held.truncate(start);
                    return Err(e);
                }
            };
            self.held.truncate(start + n);
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// A receive's result: `Some(n)` bytes, `None` for "nothing now"; end of
/// stream and errors are the header's failure. Interrupted is nothing now:
/// the caller waits and comes back.
fn received(r: io::Result<usize>) -> Result<Option<usize>, HeaderError> {
    match r {
        Ok(0) => Err(HeaderError::Closed),
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(HeaderError::Io(e)),
    }
}

/// A non-blocking `recv` of at most `buf.len()` bytes (a peek if asked).
pub(crate) fn recv(fd: RawFd, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is valid for `buf.len()` writable bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads the header on the calling thread, waiting in `poll` on the socket
/// and the stop signal.
pub(crate) fn read_blocking(
    stream: &Stream,
    accept: Versions,
    stop: &Stop,
) -> Result<ProxyHeader, HeaderError> {
    let fd = stream.as_raw_fd();
    let mut reader = HeaderReader::new(accept, Instant::now());
    let mut draining = false;
    loop {
        if let Some(header) = reader.advance(&mut |buf, peek| recv(fd, buf, peek))? {
            return Ok(header);
        }
        let now = Instant::now();
        if !draining && stop.level() != StopLevel::Running {
            // A connection taken from the backlog at the drain gets a
            // moment for its header, no more.
            draining = true;
            reader.deadline = reader.deadline.min(now + crate::pipeline::DRAIN_GRACE);
        }
        let left = reader.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(HeaderError::TimedOut);
        }
        let at = if draining {
            StopLevel::Forced
        } else {
            StopLevel::Draining
        };
        match wait_fd(fd, libc::POLLIN, Some(stop.signal(at)), Some(left)) {
            Ok(Wake::Ready) => {}
            Ok(Wake::Signal) if at == StopLevel::Forced => return Err(HeaderError::Closed),
            Ok(Wake::Signal) => {}
            Ok(Wake::Timeout) => return Err(HeaderError::TimedOut),
            Err(e) => return Err(HeaderError::Io(e)),
        }
    }
}

/// Reads the header on a tokio runtime: the same reader, with tokio's
/// readiness (each receive goes through `try_io`, so tokio learns when the
/// socket is drained and the next wait is for new bytes). As in
/// [`read_blocking`], a drain shortens the wait to a moment and a forced
/// stop ends it.
pub(crate) async fn read_async(
    stream: &crate::async_conn::AsyncStream,
    accept: Versions,
    shared: &std::sync::Arc<crate::shutdown::Shared>,
) -> Result<ProxyHeader, HeaderError> {
    let fd = stream.raw_fd();
    let mut reader = HeaderReader::new(accept, Instant::now());
    let mut draining = false;
    loop {
        if let Some(header) = reader.advance(&mut |buf, peek| {
            stream.try_io(tokio::io::Interest::READABLE, || recv(fd, buf, peek))
        })? {
            return Ok(header);
        }
        if !draining && shared.stop.level() != StopLevel::Running {
            draining = true;
            reader.deadline = reader
                .deadline
                .min(Instant::now() + crate::pipeline::DRAIN_GRACE);
        }
        let at = if draining {
            StopLevel::Forced
        } else {
            StopLevel::Draining
        };
        let due = tokio::time::Instant::from_std(reader.deadline);
        tokio::select! {
            ready = tokio::time::timeout_at(due, stream.readable()) => match ready {
                Err(_) => return Err(HeaderError::TimedOut),
                Ok(Err(e)) => return Err(HeaderError::Io(e)),
                Ok(Ok(())) => {}
            },
            _ = crate::shutdown::StopWait::new(std::sync::Arc::clone(shared), at) => {
                if at == StopLevel::Forced {
                    return Err(HeaderError::Closed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A socket that has received `stream`, in `chunks`; `recv` hands out
    /// bytes the way the kernel would (a peek takes nothing), and "would
    /// block" once the arrived bytes are taken.
    struct FakeSocket {
        stream: Vec<u8>,
        arrived: usize,
        taken: usize,
        peeks_without_news: usize,
        last_peek: Option<usize>,
    }

    impl FakeSocket {
        /// A socket with `arrived` of `stream`'s bytes received so far.
        fn new(stream: &[u8], arrived: usize) -> FakeSocket {
            FakeSocket {
                stream: stream.to_vec(),
                arrived,
                taken: 0,
                peeks_without_news: 0,
                last_peek: None,
            }
        }

        fn recv(&mut self, buf: &mut [u8], peek: bool) -> io::Result<usize> {
            assert!(!buf.is_empty(), "a zero-length read");
            let there = &self.stream[self.taken..self.arrived];
            if there.is_empty() {
                return if self.arrived == self.stream.len() {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = there.len().min(buf.len());
            buf[..n].copy_from_slice(&there[..n]);
            if peek {
                if self.last_peek == Some(self.arrived) {
                    self.peeks_without_news += 1;
                }
                self.last_peek = Some(self.arrived);
            } else {
                self.taken += n;
            }
            Ok(n)
        }
    }

    fn header_cases() -> Vec<Vec<u8>> {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[127, 0, 0, 9, 127, 0, 0, 1, 0x9c, 0x40, 0x1b, 0x58]);
        let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x03".to_vec();
        local.extend_from_slice(b"abc");
        vec![
            b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 7000\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY TCP6 ::1 ::2 1 2\r\n".to_vec(),
            v2,
            local,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the segments, the reader takes exactly the header,
        /// never peeks twice at the same bytes, and decodes what `parse`
        /// decodes.
        #[test]
        fn exact_reads_take_the_header_and_nothing_more(
            case in 0usize..5,
            app in proptest::collection::vec(any::<u8>(), 0..40),
            chunks in proptest::collection::vec(1usize..20, 1..12),
        ) {
            let header = &header_cases()[case];
            let stream = [&header[..], &app].concat();
            let mut sock = FakeSocket::new(&stream, 0);
            let mut reader = HeaderReader::new(Versions::Both, Instant::now());
            let mut sizes = chunks.iter().cycle();
            let got = loop {
                match reader.advance(&mut |b, p| sock.recv(b, p)) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {
                        prop_assert!(sock.arrived < sock.stream.len(), "stalled");
                        sock.arrived = (sock.arrived + sizes.next().unwrap()).min(sock.stream.len());
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            };
            prop_assert_eq!(sock.taken, header.len());
            prop_assert_eq!(sock.peeks_without_news, 0);
            let want = proxy::parse(&stream, Versions::Both).unwrap();
            prop_assert_eq!(want, proxy::Parsed::Done { consumed: header.len(), header: got });
        }
    }

    #[test]
    fn garbage_and_an_early_end_are_errors() {
        let mut sock = FakeSocket::new(b"GET / HTTP/1.1\r\n\r\n", 18);
        let mut reader = HeaderReader::new(Versions::Both, Instant::now());
        let e = reader.advance(&mut |b, p| sock.recv(b, p)).unwrap_err();
        assert!(matches!(e, HeaderError::Proxy(ProxyError::NotProxy)), "{e}");
        let mut sock = FakeSocket::new(b"PROXY TCP4 1.2.3.4", 18);
        let mut reader = HeaderReader::new(Versions::Both, Instant::now());
        let e = reader.advance(&mut |b, p| sock.recv(b, p)).unwrap_err();
        assert!(matches!(e, HeaderError::Closed), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
