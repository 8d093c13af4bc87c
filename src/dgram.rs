//! Datagrams, served once for every strategy: receive, check the source,
//! police it, track it, run the handler, send the replies.
//!
//! A datagram is one message: no framing is needed or applied. A message
//! handler on a datagram socket gets each datagram whole, and each reply it
//! sends leaves as one datagram to the sender.
//!
//! A datagram's source address is whatever the sender wrote in it, so an
//! echo that answers everything is a reflector: one spoofed datagram from
//! the server's own address, or from another echo service, circulates
//! forever. Before any handler runs, a datagram is dropped (and counted)
//! when it comes from the server's own address, from a well-known service
//! port below [`DatagramPolicy::min_source_port`] (echo 7, daytime 13,
//! chargen 19, ... — as inetd's internal services refuse them), when it
//! is our own last reply to that source coming back (two services
//! answering each other: the loop is broken at its second turn), or from a
//! source over its reply budget (a token bucket per source).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::burst::Burst;
use crate::config::DatagramPolicy;
use crate::context::Context;
use crate::handler::Handler;
use crate::hooks::{Failure, Hooks};
use crate::message::Reply;
use crate::meter::ListenerMeter;
use crate::shutdown::wait_fd;
use crate::tracker::TrackGuard;

/// The largest UDP datagram accepted (UDP's maximum payload).
pub const MAX_DATAGRAM: usize = 65_535;

/// The largest Unix datagram accepted: Unix datagrams are bounded by the
/// sender's buffer, not by 64 KiB. Larger ones are detected, counted and
/// dropped, never truncated.
pub const MAX_UNIX_DATAGRAM: usize = 256 * 1024;

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

    /// Receives one datagram without waiting. `Ok((None, _))`: it was
    /// larger than `buf` and was dropped (MSG_TRUNC tells).
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(Option<usize>, Address)> {
        match self {
            DgramSocket::Udp(s) => s.recv_from(buf).map(|(n, a)| (Some(n), Address::Inet(a))),
            DgramSocket::Unix(s) => {
                // SAFETY: an all-zero sockaddr_un is valid; recvfrom writes
                // at most `len` bytes into it and into `buf`.
                let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let n = unsafe {
                    libc::recvfrom(
                        s.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                        (&mut addr as *mut libc::sockaddr_un).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let peer = unix_peer(&addr, len);
                let n = n as usize;
                Ok((if n > buf.len() { None } else { Some(n) }, peer))
            }
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
    fn send_to(&self, data: &[u8], peer: &Address) -> io::Result<()> {
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

fn unix_peer(addr: &libc::sockaddr_un, len: libc::socklen_t) -> Address {
    let header = std::mem::size_of::<libc::sa_family_t>();
    let len = (len as usize)
        .saturating_sub(header)
        .min(addr.sun_path.len());
    if len == 0 || addr.sun_path[0] == 0 {
        // Unnamed, or abstract: no path to answer to.
        return Address::Unix(None);
    }
    let bytes: Vec<u8> = addr.sun_path[..len]
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    use std::os::unix::ffi::OsStringExt;
    Address::Unix(Some(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
}

/// One received datagram on its way to a handler on another thread.
pub(crate) struct DatagramJob {
    pub(crate) data: Vec<u8>,
    pub(crate) peer: Address,
    pub(crate) socket: Arc<DgramSocket>,
    pub(crate) _guard: TrackGuard,
}

/// Runs the handler on a job and sends its replies (may wait briefly for a
/// full send buffer: this runs on a thread of its own).
pub(crate) fn serve_job(job: DatagramJob, ctx: &Context) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    if call_handler(
        &ctx.handler,
        &ctx.hooks,
        &job.data,
        &job.peer,
        &mut out,
        &mut ends,
    ) {
        send_replies(&job.socket, &job.peer, &out, &ends, &ctx.hooks, true);
    }
}

fn send_replies(
    socket: &DgramSocket,
    peer: &Address,
    out: &[u8],
    ends: &[usize],
    hooks: &Hooks,
    may_wait: bool,
) {
    let mut start = 0;
    for &end in ends {
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
fn call_handler(
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

/// Why a datagram was dropped before any handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// `verify_request` refused the source.
    Refused,
    /// From the server's own address (a loop).
    Ourselves,
    /// From a well-known service port (a loop between services).
    ServicePort,
    /// The source is over its reply budget.
    Rate,
    /// Our own last reply to that source, coming back.
    Reflected,
    /// Larger than the largest datagram accepted.
    Truncated,
}

/// Counts of dropped datagrams, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DropCounts {
    pub(crate) refused: u64,
    pub(crate) ourselves: u64,
    pub(crate) service_port: u64,
    pub(crate) rate: u64,
    pub(crate) reflected: u64,
    pub(crate) truncated: u64,
}

/// What the server remembers of each source: its token bucket and a
/// fingerprint of the last reply it was sent. A datagram equal to that
/// reply, arriving within [`REFLECTION_GAP`] of it, is our own answer
/// coming straight back; a run of [`REFLECTION_RUN`] of them is two
/// services answering each other, and the rest of the run is dropped —
/// which ends the loop within a millisecond, whatever the rate. (A client
/// that sends its last reply back at once, 64 times running, looks the
/// same: `DatagramPolicy::loop_guard` turns the check off.)
#[derive(Debug)]
struct Sources {
    rate: Option<f64>,
    guard: bool,
    map: HashMap<Address, Source>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    tokens: f64,
    at: Instant,
    last_reply: u64,
    replied_at: Instant,
    run: u32,
}

/// How soon after our reply an identical datagram counts as a reflection.
const REFLECTION_GAP: Duration = Duration::from_millis(10);
/// Reflections in a row that make a loop.
const REFLECTION_RUN: u32 = 64;

/// Sources remembered at most; past it, idle ones are forgotten.
const MAX_SOURCES: usize = 65_536;

/// A cheap fingerprint of a datagram: its length and first 256 bytes
/// (FNV-1a). A reflected datagram repeats them exactly.
fn fingerprint(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ data.len() as u64;
    for &b in &data[..data.len().min(256)] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

impl Sources {
    fn check(&mut self, peer: &Address, data: &[u8], now: Instant) -> Result<(), Dropped> {
        if self.map.len() >= MAX_SOURCES && !self.map.contains_key(peer) {
            // Forget the sources idle for a second (their bucket is full
            // again; only a reply fingerprint is lost).
            self.map
                .retain(|_, s| now.duration_since(s.at) < Duration::from_secs(1));
            if self.map.len() >= MAX_SOURCES {
                self.map.clear();
            }
        }
        let rate = self.rate;
        let s = self.map.entry(peer.clone()).or_insert(Source {
            tokens: rate.unwrap_or(0.0),
            at: now,
            last_reply: 0,
            replied_at: now,
            run: 0,
        });
        if self.guard
            && s.last_reply != 0
            && now.duration_since(s.replied_at) < REFLECTION_GAP
            && s.last_reply == fingerprint(data)
        {
            s.run += 1;
            if s.run > REFLECTION_RUN {
                return Err(Dropped::Reflected);
            }
        } else {
            s.run = 0;
        }
        if let Some(rate) = rate {
            s.tokens = (s.tokens + now.duration_since(s.at).as_secs_f64() * rate).min(rate);
            s.at = now;
            if s.tokens < 1.0 {
                return Err(Dropped::Rate);
            }
            s.tokens -= 1.0;
        } else {
            s.at = now;
        }
        Ok(())
    }

    /// The last reply sent to `peer`.
    fn replied(&mut self, peer: &Address, reply: &[u8], now: Instant) {
        if self.guard {
            if let Some(s) = self.map.get_mut(peer) {
                s.last_reply = fingerprint(reply);
                s.replied_at = now;
            }
        }
    }
}

/// The server's own addresses, to never answer itself.
#[derive(Debug)]
enum Own {
    Inet {
        port: u16,
        ips: Vec<IpAddr>,
    },
    Unix {
        path: Option<PathBuf>,
        id: Option<(u64, u64)>,
    },
}

/// One datagram socket as a server serves it: the receive buffers and the
/// checks. Owned by whichever thread receives (an event loop, or the
/// serving thread for the blocking strategies).
pub(crate) struct DgramServer {
    pub(crate) socket: Arc<DgramSocket>,
    buf: Vec<u8>,
    batch: Option<Box<crate::mmsg::Batch>>,
    out: Vec<u8>,
    ends: Vec<usize>,
    own: Own,
    sources: Sources,
    policy: DatagramPolicy,
    pub(crate) dropped: DropCounts,
    burst: Burst,
    /// Its listener's counters.
    meter: Option<Arc<ListenerMeter>>,
}

/// Datagrams one socket may take per turn before others get theirs.
pub(crate) const DATAGRAMS_PER_TURN: usize = 256;

impl DgramServer {
    pub(crate) fn new(
        socket: Arc<DgramSocket>,
        policy: DatagramPolicy,
        batched: bool,
    ) -> DgramServer {
        let own = match &*socket {
            DgramSocket::Udp(s) => match s.local_addr() {
                Ok(a) => Own::Inet {
                    port: a.port(),
                    ips: if a.ip().is_unspecified() {
                        local_ips()
                    } else {
                        vec![a.ip()]
                    },
                },
                Err(_) => Own::Inet {
                    port: 0,
                    ips: Vec::new(),
                },
            },
            DgramSocket::Unix(s) => {
                let path = s
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
                let id = path
                    .as_ref()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map(|m| (m.dev(), m.ino()));
                Own::Unix { path, id }
            }
        };
        let unix = matches!(&*socket, DgramSocket::Unix(_));
        if let DgramSocket::Unix(u) = &*socket {
            // Room for the largest datagram we accept, both ways (a reply as
            // large as the request must fit the send buffer, or it fails
            // with EMSGSIZE); the kernel clamps it to its maximum.
            let sock = socket2::SockRef::from(u);
            let _ = sock.set_recv_buffer_size(MAX_UNIX_DATAGRAM * 2);
            let _ = sock.set_send_buffer_size(MAX_UNIX_DATAGRAM * 2);
        }
        DgramServer {
            buf: vec![
                0u8;
                if unix {
                    MAX_UNIX_DATAGRAM
                } else {
                    MAX_DATAGRAM
                }
            ],
            batch: (batched && !unix).then(crate::mmsg::Batch::new),
            socket,
            out: Vec::new(),
            ends: Vec::new(),
            own,
            sources: Sources {
                rate: policy.replies_per_source.map(|r| f64::from(r.max(1))),
                guard: policy.loop_guard,
                map: HashMap::new(),
            },
            policy,
            dropped: DropCounts::default(),
            burst: Burst::default(),
            meter: None,
        }
    }

    /// Counts this socket's datagrams into `meter`.
    pub(crate) fn with_meter(mut self, meter: Option<Arc<ListenerMeter>>) -> Self {
        self.meter = meter;
        self
    }

    /// Remembers the last reply sent to `peer` (see `Sources`).
    fn note_reply(&mut self, peer: &Address, now: Instant) {
        if let Some(&end) = self.ends.last() {
            let start = self.ends.len().checked_sub(2).map_or(0, |k| self.ends[k]);
            self.sources.replied(peer, &self.out[start..end], now);
        }
    }

    fn count_served(&self, len: usize, ends: &[usize]) {
        if let Some(m) = &self.meter {
            m.datagram(len, ends.len(), ends.last().copied().unwrap_or(0));
        }
    }

    /// The checks before any handler runs.
    fn admit(
        &mut self,
        peer: &Address,
        data: &[u8],
        ctx: &Context,
        now: Instant,
    ) -> Result<(), Dropped> {
        if peer.ip().is_some_and(|ip| !ctx.access.allows(ip)) {
            return Err(Dropped::Refused);
        }
        if !ctx.hooks.verify(peer) {
            return Err(Dropped::Refused);
        }
        match (&self.own, peer) {
            (Own::Inet { port, ips }, Address::Inet(a)) => {
                if a.port() == *port && (ips.contains(&a.ip()) || a.ip().is_loopback()) {
                    return Err(Dropped::Ourselves);
                }
                if a.port() < self.policy.min_source_port {
                    return Err(Dropped::ServicePort);
                }
            }
            (Own::Unix { path, id }, Address::Unix(Some(p))) => {
                if path.as_deref() == Some(p.as_path()) {
                    return Err(Dropped::Ourselves);
                }
                // A client path swapped for a symlink (to our own socket,
                // say): a bound socket file is never a symlink.
                match std::fs::symlink_metadata(p) {
                    Ok(m) if m.file_type().is_symlink() => return Err(Dropped::Ourselves),
                    Ok(m) if Some((m.dev(), m.ino())) == *id => return Err(Dropped::Ourselves),
                    _ => {}
                }
            }
            _ => {}
        }
        self.sources.check(peer, data, now)
    }

    fn count(&mut self, why: Dropped, peer: &Address) {
        let c = &mut self.dropped;
        match why {
            Dropped::Refused => c.refused += 1,
            Dropped::Ourselves => c.ourselves += 1,
            Dropped::ServicePort => c.service_port += 1,
            Dropped::Rate => c.rate += 1,
            Dropped::Reflected => c.reflected += 1,
            Dropped::Truncated => c.truncated += 1,
        }
        if why == Dropped::Refused {
            return;
        }
        let what = match why {
            Dropped::Ourselves => "it comes from the server's own address",
            Dropped::ServicePort => "it comes from a well-known service port",
            Dropped::Rate => "its source is over its reply budget",
            Dropped::Reflected => {
                "it is our own last reply coming back (two services answering each other)"
            }
            _ => "it is larger than the largest datagram accepted",
        };
        self.burst.hit(|more| {
            if more > 0 {
                tracing::warn!(%peer, "dropped a datagram: {what} ({more} more dropped before)");
            } else {
                tracing::warn!(%peer, "dropped a datagram: {what}");
            }
        });
    }

    /// Receives one datagram that passes the checks, for a handler on
    /// another thread. `Ok(None)`: one was dropped, try again.
    pub(crate) fn recv_job(&mut self, ctx: &Context) -> io::Result<Option<DatagramJob>> {
        let (n, peer) = self.socket.try_recv(&mut self.buf)?;
        let Some(n) = n else {
            self.count(Dropped::Truncated, &peer);
            return Ok(None);
        };
        let buf = std::mem::take(&mut self.buf);
        let verdict = self.admit(&peer, &buf[..n], ctx, Instant::now());
        self.buf = buf;
        if let Err(why) = verdict {
            self.count(why, &peer);
            return Ok(None);
        }
        if let Some(m) = &self.meter {
            m.datagram(n, 0, 0);
        }
        Ok(Some(DatagramJob {
            data: self.buf[..n].to_vec(),
            peer,
            socket: Arc::clone(&self.socket),
            _guard: ctx.shared.tracker.enter(None, None),
        }))
    }

    /// Serves what is waiting, inline (an event loop): at most
    /// [`DATAGRAMS_PER_TURN`]. True when the socket is drained.
    pub(crate) fn serve_ready(&mut self, ctx: &Context) -> bool {
        let now = Instant::now();
        let _busy = ctx.shared.tracker.enter(None, None);
        if self.batch.is_some() {
            return self.serve_udp_batches(ctx, now);
        }
        for _ in 0..DATAGRAMS_PER_TURN {
            let (n, peer) = match self.socket.try_recv(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier replies surface here; they
                    // concern one peer only.
                    tracing::debug!("datagram receive error: {e}");
                    continue;
                }
            };
            let Some(n) = n else {
                self.count(Dropped::Truncated, &peer);
                continue;
            };
            let data = std::mem::take(&mut self.buf);
            let verdict = self.admit(&peer, &data[..n], ctx, now);
            if let Err(why) = verdict {
                self.buf = data;
                self.count(why, &peer);
                continue;
            }
            let (out, ends) = (&mut self.out, &mut self.ends);
            if call_handler(&ctx.handler, &ctx.hooks, &data[..n], &peer, out, ends) {
                send_replies(&self.socket, &peer, out, ends, &ctx.hooks, false);
                self.note_reply(&peer, now);
            }
            self.buf = data;
            self.count_served(n, &self.ends);
        }
        false
    }

    /// UDP: many datagrams per system call each way.
    fn serve_udp_batches(&mut self, ctx: &Context, now: Instant) -> bool {
        let fd = self.socket.as_raw_fd();
        let mut taken = 0;
        while taken < DATAGRAMS_PER_TURN {
            let Some(batch) = self.batch.as_mut() else {
                return true;
            };
            let n = match batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("datagram receive error: {e}");
                    taken += 1;
                    continue;
                }
            };
            taken += n.max(1);
            // The batch is taken out of `self` while its datagrams are
            // served, so the handler sees each one in place.
            let Some(mut batch) = self.batch.take() else {
                return true;
            };
            for i in 0..n {
                let Some((data, from)) = batch.datagram(i) else {
                    continue;
                };
                let peer = Address::Inet(from);
                if let Err(why) = self.admit(&peer, data, ctx, now) {
                    self.count(why, &peer);
                    continue;
                }
                let (out, ends) = (&mut self.out, &mut self.ends);
                let served = call_handler(&ctx.handler, &ctx.hooks, data, &peer, out, ends);
                let len = data.len();
                if served && !ends.is_empty() {
                    batch.queue(out, ends, from);
                    self.note_reply(&peer, now);
                }
                self.count_served(len, &self.ends);
            }
            self.batch = Some(batch);
            if let Some(batch) = self.batch.as_mut() {
                if let Err(e) = batch.flush(fd) {
                    tracing::debug!("datagram send error: {e}");
                }
            }
            if n < crate::mmsg::BATCH {
                // A short batch means the socket is drained for now.
                return true;
            }
        }
        false
    }
}

/// Every IP address of this host's interfaces (for "is this us?").
fn local_ips() -> Vec<IpAddr> {
    let mut ips = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each
    // ifa_addr is null or points at a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return ips;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        ips.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin = &*(a as *const libc::sockaddr_in6);
                        ips.push(IpAddr::from(sin.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    ips
}

/// For the `SocketAddr` form used by tests and callers.
#[allow(dead_code)]
pub(crate) fn is_service_port(a: &SocketAddr, policy: &DatagramPolicy) -> bool {
    a.port() < policy.min_source_port
}
