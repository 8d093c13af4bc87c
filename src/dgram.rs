//! Datagram sockets (UDP and Unix datagram): receiving, replying, and the
//! job that carries one datagram to an engine.
//!
//! A datagram is one message: no framing is needed or applied. A message
//! handler on a datagram socket gets each datagram whole, and each reply it
//! sends leaves as one datagram to the sender.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::Address;
use crate::handler::{Handler, Reply};
use crate::hooks::{Failure, Hooks};
use crate::shutdown::{wait_fd, TrackGuard};

/// The largest datagram accepted (UDP's maximum payload).
pub const MAX_DATAGRAM: usize = 65_535;

/// A bound datagram socket of either family.
#[derive(Debug)]
pub enum DgramSocket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl AsRawFd for DgramSocket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            DgramSocket::Udp(s) => s.as_raw_fd(),
            DgramSocket::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl DgramSocket {
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            DgramSocket::Udp(s) => s.set_nonblocking(on),
            DgramSocket::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Receives one datagram without waiting.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Address)> {
        match self {
            DgramSocket::Udp(s) => s.recv_from(buf).map(|(n, a)| (n, Address::Inet(a))),
            DgramSocket::Unix(s) => s.recv_from(buf).map(|(n, a)| (n, Address::from_unix(&a))),
        }
    }

    fn try_send(&self, data: &[u8], peer: &Address) -> io::Result<usize> {
        match (self, peer) {
            (DgramSocket::Udp(s), Address::Inet(a)) => s.send_to(data, a),
            (DgramSocket::Unix(s), Address::Unix(Some(p))) => s.send_to(data, p),
            (DgramSocket::Unix(_), Address::Unix(None)) => Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "cannot reply: the client's socket is unnamed (bind it to a path)",
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family does not match the socket",
            )),
        }
    }

    /// Sends one datagram, waiting briefly if the send buffer is full.
    pub(crate) fn send_to(&self, data: &[u8], peer: &Address) -> io::Result<()> {
        for _ in 0..3 {
            match self.try_send(data, peer) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(
                        self.as_raw_fd(),
                        libc::POLLOUT,
                        None,
                        Some(Duration::from_millis(100)),
                    )?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "send buffer full: reply dropped",
        ))
    }
}

/// One received datagram on its way to a handler.
pub(crate) struct DatagramJob {
    pub(crate) data: Vec<u8>,
    pub(crate) peer: Address,
    pub(crate) socket: Arc<DgramSocket>,
    pub(crate) _guard: TrackGuard,
}

/// Runs the handler on one datagram and sends its replies. Shared by every
/// engine, so datagram handling exists once.
///
/// `may_wait`: a blocking engine may wait briefly for a full send buffer; an
/// event loop must not, and drops the reply instead (UDP allows it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn handle_datagram(
    handler: &Handler,
    hooks: &Hooks,
    data: &[u8],
    peer: &Address,
    socket: &DgramSocket,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    may_wait: bool,
) {
    if !call_handler(handler, hooks, data, peer, out, ends) {
        return;
    }
    let mut start = 0;
    for &end in ends.iter() {
        let sent = if may_wait {
            socket.send_to(&out[start..end], peer)
        } else {
            socket.try_send(&out[start..end], peer).map(drop)
        };
        if let Err(e) = sent {
            hooks.error(peer, Failure::Io(e));
            break;
        }
        start = end;
    }
}

/// Runs the handler on one datagram, collecting its replies in `out`
/// (each ending at the next entry of `ends`). False if it panicked.
pub(crate) fn call_handler(
    handler: &Handler,
    hooks: &Hooks,
    data: &[u8],
    peer: &Address,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> bool {
    out.clear();
    ends.clear();
    let mut reply = Reply::datagrams(out, ends, peer);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match handler {
        Handler::Message(h) => h.handle(data, &mut reply),
        Handler::Datagram(h) => h.handle(data, &mut reply),
        Handler::Stream(_) | Handler::AsyncStream(_) => Ok(()),
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => hooks.error(peer, Failure::Handler(e)),
        Err(p) => {
            hooks.error(peer, Failure::from_panic(p));
            return false;
        }
    }
    true
}
