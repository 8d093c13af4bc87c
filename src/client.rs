//! A client: connect to any endpoint, send messages, receive replies, with
//! the same framing the server uses (so a client never mistakes two replies
//! glued together, or one reply split in two, for something else).

use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::Endpoint;
use crate::dgram::MAX_DATAGRAM;
use crate::error::Error;
use crate::frame::{Codec, Decoded, Decoder, Encoder, Framing};
use crate::socket::{self, Stream};

enum Conn {
    Stream(Stream),
    Udp(UdpSocket),
    UnixDgram(UnixDatagram, PathBuf),
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

impl Drop for Client {
    fn drop(&mut self) {
        if let Conn::UnixDgram(_, path) = &self.conn {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Client {
    /// Connects to `endpoint`. On datagram endpoints every message is one
    /// datagram and the framing is not applied; a Unix datagram client
    /// binds a temporary path of its own so the server can answer.
    pub fn connect(endpoint: &Endpoint, framing: Framing) -> Result<Client, Error> {
        let action = || format!("cannot connect to {endpoint}");
        let conn = match endpoint {
            Endpoint::Tcp(_) | Endpoint::Unix(_) => {
                Conn::Stream(socket::connect(endpoint, Some(Duration::from_secs(10)))?)
            }
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
                let me = std::env::temp_dir().join(format!(
                    "sockserv-client-{}-{}.sock",
                    std::process::id(),
                    unique()
                ));
                let s = UnixDatagram::bind(&me).map_err(|e| Error::socket(action(), e))?;
                if let Err(e) = s.connect(path) {
                    let _ = std::fs::remove_file(&me);
                    return Err(Error::socket(action(), e));
                }
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
        match &self.conn {
            Conn::Stream(Stream::Tcp(s)) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Conn::Stream(Stream::Unix(s)) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Conn::Udp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Conn::UnixDgram(s, _) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
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

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
