//! A client: connect to any endpoint, send messages, receive replies, with
//! the same framing the server uses (so a client never mistakes two replies
//! glued together, or one reply split in two, for something else).

use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::addr::Endpoint;
use crate::dgram::MAX_DATAGRAM;
use crate::error::Error;
use crate::frame::{Codec, Decoded, Decoder, Encoder, Framing};
use crate::socket::{self, Stream};

enum Conn {
    Stream(Stream),
    Udp(UdpSocket),
    /// The socket, and the directory its path is in (kept for its drop).
    UnixDgram(UnixDatagram, #[allow(dead_code)] PrivateDir),
}

/// The directory a Unix datagram client binds its socket in: made with a
/// random name and mode 0700 (`mkdtemp`), so no other user can have put
/// anything at the socket's path first, and nobody can guess it ahead of
/// time. The socket and the directory are removed on drop.
struct PrivateDir {
    dir: PathBuf,
    socket: PathBuf,
}

impl PrivateDir {
    /// A fresh directory under the system temporary directory (`$TMPDIR`).
    fn new() -> io::Result<PrivateDir> {
        use std::ffi::{CString, OsString};
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let template = std::env::temp_dir().join("sockserv-client-XXXXXX");
        let template = CString::new(template.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in $TMPDIR"))?;
        let raw = template.into_raw();
        // SAFETY: `raw` is a NUL-terminated buffer we own, ending in the six
        // X that mkdtemp(3) replaces in place; it is taken back right after.
        let made = unsafe { libc::mkdtemp(raw) };
        // SAFETY: `raw` came from `CString::into_raw` and was not freed.
        let template = unsafe { CString::from_raw(raw) };
        if made.is_null() {
            return Err(io::Error::last_os_error());
        }
        let dir = PathBuf::from(OsString::from_vec(template.into_bytes()));
        let socket = dir.join("client.sock");
        Ok(PrivateDir { dir, socket })
    }

    fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A connection to a server that sends and receives whole messages.
///
/// ```no_run
/// use sockserv::{Client, frame::Framing};
/// let mut client = Client::connect(&"tcp://127.0.0.1:9999".parse()?, Framing::line())?;
/// let reply = client.request(b"hello")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    conn: Conn,
    codec: Codec,
    framing: Framing,
    inbuf: Vec<u8>,
    filled: usize,
    eof: bool,
}

impl Client {
    /// Connects to `endpoint`, waiting at most 10 s for a stream
    /// connection to be accepted (see [`connect_timeout`](Self::connect_timeout)).
    pub fn connect(endpoint: &Endpoint, framing: Framing) -> Result<Client, Error> {
        Client::connect_timeout(endpoint, framing, Some(Duration::from_secs(10)))
    }

    /// Connects to `endpoint`, giving up after `timeout` (`None`: wait as
    /// long as the kernel does) when a stream server does not take the
    /// connection, e.g. because its accept queue is full.
    ///
    /// On datagram endpoints every message is one datagram and the framing
    /// is not applied. A Unix datagram client binds a socket of its own so
    /// that the server can answer, in a new private directory under the
    /// system temporary directory (random name, mode 0700), removed with
    /// the client.
    pub fn connect_timeout(
        endpoint: &Endpoint,
        framing: Framing,
        timeout: Option<Duration>,
    ) -> Result<Client, Error> {
        let action = || format!("cannot connect to {endpoint}");
        let conn = match endpoint {
            Endpoint::Tcp(_) => Conn::Stream(socket::connect(endpoint, timeout)?),
            Endpoint::Unix(path) => Conn::Stream(Stream::Unix(
                connect_unix(path, timeout).map_err(|e| Error::socket(action(), e))?,
            )),
            Endpoint::Udp(_) => {
                let addrs = endpoint.resolve().map_err(|e| Error::socket(action(), e))?;
                let addr = addrs[0];
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let s = UdpSocket::bind(local).map_err(|e| Error::socket(action(), e))?;
                s.connect(addr).map_err(|e| Error::socket(action(), e))?;
                Conn::Udp(s)
            }
            Endpoint::UnixDgram(path) => {
                let me = PrivateDir::new().map_err(|e| {
                    Error::socket(
                        format!(
                            "cannot make a directory for the client socket in {}",
                            std::env::temp_dir().display()
                        ),
                        e,
                    )
                })?;
                let s = UnixDatagram::bind(me.socket()).map_err(|e| Error::socket(action(), e))?;
                s.connect(path).map_err(|e| Error::socket(action(), e))?;
                Conn::UnixDgram(s, me)
            }
        };
        Ok(Client {
            conn,
            codec: framing.codec(),
            framing,
            inbuf: Vec::new(),
            filled: 0,
            eof: false,
        })
    }

    /// Sets how long a send or a receive may wait (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }

    /// Sets how long a receive may wait (`None`: forever). It ends with an
    /// error of kind `WouldBlock` or `TimedOut`, after which `recv` can be
    /// called again: a frame received in part is kept.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.conn {
            Conn::Stream(Stream::Tcp(s)) => s.set_read_timeout(timeout),
            Conn::Stream(Stream::Unix(s)) => s.set_read_timeout(timeout),
            Conn::Udp(s) => s.set_read_timeout(timeout),
            Conn::UnixDgram(s, _) => s.set_read_timeout(timeout),
        }
    }

    /// Sets how long a send may wait (`None`: forever); it applies to the
    /// [`raw_writer`](Self::raw_writer) handles too (one socket).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.conn {
            Conn::Stream(Stream::Tcp(s)) => s.set_write_timeout(timeout),
            Conn::Stream(Stream::Unix(s)) => s.set_write_timeout(timeout),
            Conn::Udp(s) => s.set_write_timeout(timeout),
            Conn::UnixDgram(s, _) => s.set_write_timeout(timeout),
        }
    }

    /// A second handle on a stream connection for writing raw bytes from
    /// another thread while this one receives (so a large upload to an echo
    /// server cannot deadlock on full socket buffers). `None` for datagram
    /// endpoints.
    pub fn raw_writer(&self) -> io::Result<Option<RawWriter>> {
        Ok(match &self.conn {
            Conn::Stream(Stream::Tcp(s)) => Some(RawWriter(Stream::Tcp(s.try_clone()?))),
            Conn::Stream(Stream::Unix(s)) => Some(RawWriter(Stream::Unix(s.try_clone()?))),
            _ => None,
        })
    }

    /// Sends one message, encoded with the framing.
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match &self.conn {
            Conn::Stream(s) => {
                let mut out = Vec::with_capacity(msg.len() + 8);
                self.codec
                    .encode(msg, &mut out)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                (&*s).write_all(&out)
            }
            Conn::Udp(s) => s.send(msg).map(drop),
            Conn::UnixDgram(s, _) => s.send(msg).map(drop),
        }
    }

    /// Sends raw bytes as they are, without framing.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &self.conn {
            Conn::Stream(s) => (&*s).write_all(bytes),
            Conn::Udp(s) => s.send(bytes).map(drop),
            Conn::UnixDgram(s, _) => s.send(bytes).map(drop),
        }
    }

    /// Receives one message; `None` when the server closed the connection.
    pub fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        let s = match &self.conn {
            Conn::Stream(s) => s,
            Conn::Udp(s) => {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                let n = s.recv(&mut buf)?;
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Conn::UnixDgram(s, _) => {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                let n = s.recv(&mut buf)?;
                buf.truncate(n);
                return Ok(Some(buf));
            }
        };
        loop {
            if self.filled > 0 || self.eof {
                let buf = &self.inbuf[..self.filled];
                let verdict = if self.eof {
                    match self.codec.decode(buf) {
                        Decoded::Incomplete { .. } => {
                            let tail = self.codec.decode_eof(buf);
                            self.filled = 0;
                            return Ok(tail.map(|(a, b)| buf[a..b].to_vec()));
                        }
                        v => v,
                    }
                } else {
                    self.codec.decode(buf)
                };
                match verdict {
                    Decoded::Frame {
                        start,
                        end,
                        consumed,
                    } => {
                        let frame = buf[start..end].to_vec();
                        self.inbuf.drain(..consumed);
                        self.filled -= consumed;
                        return Ok(Some(frame));
                    }
                    Decoded::Incomplete { consumed } => {
                        self.inbuf.drain(..consumed);
                        self.filled -= consumed;
                    }
                    Decoded::TooLong { error, .. } => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                    }
                }
            }
            if self.eof {
                return Ok(None);
            }
            let want = self.filled + 64 * 1024;
            if self.inbuf.len() < want {
                self.inbuf.resize(want, 0);
            }
            let n = (&*s).read(&mut self.inbuf[self.filled..])?;
            self.inbuf.truncate(self.filled + n);
            if n == 0 {
                self.eof = true;
                if self.filled == 0 {
                    return Ok(None);
                }
            }
            self.filled += n;
        }
    }

    /// Bytes received and not yet returned by [`recv`](Self::recv): 0 when
    /// the next `recv` has to wait for the network.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// Sends one message and waits for one reply.
    pub fn request(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.send(msg)?;
        self.recv()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without replying",
            )
        })
    }

    /// Half-close: tells a stream server there is nothing more to send,
    /// while replies can still be received.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match &self.conn {
            Conn::Stream(s) => s.shutdown(std::net::Shutdown::Write),
            _ => Ok(()),
        }
    }

    /// The framing in use.
    pub fn framing(&self) -> &Framing {
        &self.framing
    }
}

/// The writing side of a stream [`Client`], for another thread.
pub struct RawWriter(Stream);

impl RawWriter {
    /// Half-close: tells the server there is nothing more to send.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }
}

impl Write for RawWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Unix stream connection that gives up after `timeout`. A Unix
/// listener whose backlog is full makes a blocking `connect` wait (a
/// non-blocking one fails with `EAGAIN` at once), so it is tried again
/// until the deadline.
fn connect_unix(path: &Path, timeout: Option<Duration>) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let Some(timeout) = timeout else {
        return UnixStream::connect(path);
    };
    let addr = SockAddr::unix(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match socket.connect(&addr) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection timed out (the server's accept queue is full)",
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    socket.set_nonblocking(false)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}
