//! One connection's life: opening it over any transport, and the loop that
//! keeps its requests in flight, checks each reply and records its latency.
//!
//! The loop waits on socket readiness rather than on `AsyncRead` /
//! `AsyncWrite` futures so that one task can wait for "readable, or
//! writable while a write is pending" at once (see [`Io`]), and it keeps one
//! timer per connection (see [`Conn::run`]): at hundreds of thousands of
//! messages a second the client must not be the bottleneck it measures.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sockserv::addr::Endpoint;
use sockserv::frame::{Codec, Decoded, Decoder, Encoder, Framing};
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UdpSocket, UnixDatagram, UnixStream};
use tokio::time::Sleep;

use super::payloads::{excerpt, mismatch};
use super::plan::{Plan, Targets, MAX_UDP_PAYLOAD};
use super::report::{describe, secs, ErrorKind, MAX_LATENCY_NS};
use super::Ctx;

/// Timed-out datagram requests remembered per connection, so that a reply
/// arriving after its timeout is recognised as late rather than wrong.
const LATE_MEMORY: usize = 64;

/// An open connection of any transport.
pub(super) enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
    Udp(UdpSocket),
    UnixDgram(UnixDatagram),
}

pub(super) async fn open(targets: &Targets, conn: usize) -> io::Result<Sock> {
    match &targets.endpoint {
        Endpoint::Tcp(_) => {
            let mut last = None;
            for addr in &targets.addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Sock::Tcp(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
        }
        Endpoint::Udp(_) => {
            let mut last = None;
            for addr in &targets.addrs {
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let attempt = async {
                    let s = UdpSocket::bind(local).await?;
                    s.connect(addr).await?;
                    Ok::<_, io::Error>(s)
                };
                match attempt.await {
                    Ok(s) => return Ok(Sock::Udp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
        }
        Endpoint::Unix(path) => Ok(Sock::Unix(UnixStream::connect(path).await?)),
        Endpoint::UnixDgram(path) => {
            let local = &targets.local_paths[conn];
            let _ = std::fs::remove_file(local);
            let s = UnixDatagram::bind(local)?;
            s.connect(path)?;
            Ok(Sock::UnixDgram(s))
        }
    }
}

/// The three socket operations a connection needs, over every transport.
/// Readiness-based (`ready` + `try_*`) rather than `AsyncRead`/`AsyncWrite`
/// so one task can wait for "readable, or writable while a write is
/// pending" at once: a client that blocks in `write_all` while the server
/// blocks writing replies nobody reads would deadlock on large pipelines.
pub(super) trait Io {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>>;
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_send(&self, buf: &[u8]) -> io::Result<usize>;
    /// The pending socket error (SO_ERROR), which `try_recv` cannot see
    /// when the socket is in error without being readable.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

macro_rules! impl_io {
    ($t:ty, $recv:ident, $send:ident) => {
        impl Io for $t {
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> {
                <$t>::ready(self, interest)
            }
            #[inline]
            fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::$recv(self, buf)
            }
            #[inline]
            fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::$send(self, buf)
            }
            fn take_error(&self) -> io::Result<Option<io::Error>> {
                <$t>::take_error(self)
            }
        }
    };
}

impl_io!(TcpStream, try_read, try_write);
impl_io!(UnixStream, try_read, try_write);
impl_io!(UdpSocket, try_recv, try_send);
impl_io!(UnixDatagram, try_recv, try_send);

/// Why a connection stopped early.
pub(super) struct ConnError {
    pub(super) kind: ErrorKind,
    pub(super) message: String,
}

/// A request sent (or scheduled) and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    /// Send time, or (open loop, when the request waited for a free slot)
    /// the time it was due: latency is measured from here.
    stamp: Instant,
    /// Sent after the warm-up, so its reply counts.
    measured: bool,
}

/// One connection's driver: keep `pipeline` requests in flight, check each
/// reply, record its latency.
pub(super) struct Conn<'a, S: Io> {
    ctx: &'a Ctx,
    plan: &'a Plan,
    id: usize,
    sock: S,
    codec: Option<Codec>,
    inflight: VecDeque<InFlight>,
    next_seq: u64,
    /// Encoded requests not yet written (a stream may take them in parts;
    /// a datagram socket holds at most one unsent datagram here).
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Scratch space for the expected payload of a reply.
    expect: Vec<u8>,
    /// Open loop: when the next request is due.
    next_due: Option<Instant>,
    /// No more requests will be sent (request budget spent or duration over).
    exhausted: bool,
    /// When the pipeline last went from full to having a free slot.
    room_since: Instant,
    replies: u64,
    /// Recently timed-out datagram requests (to recognise late replies).
    lost: VecDeque<u64>,
}

impl<'a, S: Io> Conn<'a, S> {
    pub(super) fn new(ctx: &'a Ctx, id: usize, sock: S, first_due: Option<Instant>) -> Self {
        let plan = &*ctx.plan;
        let rcap = if plan.stream {
            // Room for a whole pipeline of replies twice over, so one read
            // can take them all; small for 10,000 ping-pong connections.
            (plan.size * plan.pipeline * 2).clamp(1024, 1 << 20)
        } else {
            MAX_UDP_PAYLOAD + 1
        };
        Conn {
            ctx,
            plan,
            id,
            sock,
            codec: plan.framing.as_ref().map(Framing::codec),
            inflight: VecDeque::with_capacity(plan.pipeline),
            next_seq: 0,
            wbuf: Vec::new(),
            wpos: 0,
            rbuf: vec![0; rcap],
            rstart: 0,
            rend: 0,
            expect: vec![0; plan.size],
            next_due: first_due,
            exhausted: false,
            room_since: first_due.unwrap_or_else(Instant::now),
            replies: 0,
            lost: VecDeque::new(),
        }
    }

    /// Runs the connection until it has nothing more to send or receive, or
    /// fails. A failed connection's requests in flight go with it: the
    /// error accounts for them, so they are not counted as outstanding.
    pub(super) async fn run(mut self) -> Result<(), ConnError> {
        let result = self.exchange().await;
        if result.is_err() {
            self.ctx.answered(self.inflight.len() as u64);
        }
        result
    }

    async fn exchange(&mut self) -> Result<(), ConnError> {
        // One timer per connection, re-armed only when its deadline must
        // move: re-creating a timeout around every wait would cost a timer
        // insertion per message, a visible share of a client that is
        // itself the bottleneck.
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        let mut armed_at: Option<Instant> = None;
        let slack = (self.plan.reply_timeout / 8).min(Duration::from_secs(1));
        loop {
            let now = Instant::now();
            self.fill(now)?;
            self.flush()?;
            if self.inflight.is_empty() && self.exhausted {
                return Ok(());
            }
            if !self.plan.stream {
                self.expire(now);
            }

            // The wait ends on readiness or at the deadline: the oldest
            // request's timeout, or (open loop, with room in the pipeline)
            // the next scheduled send. A scheduled send must not be late;
            // a timeout may be detected up to `slack` late, so the timer
            // moves only about once per `slack` instead of once per reply.
            let timeout_at = self
                .inflight
                .front()
                .map(|f| f.stamp + self.plan.reply_timeout);
            let due = self
                .next_due
                .filter(|_| self.inflight.len() < self.plan.pipeline && !self.exhausted);
            let (lower, upper) = match (timeout_at, due) {
                (Some(t), Some(d)) => (t.min(d), (t + slack).min(d)),
                (Some(t), None) => (t, t + slack),
                (None, Some(d)) => (d, d),
                (None, None) => (
                    now + Duration::from_secs(3600),
                    now + Duration::from_secs(7200),
                ),
            };
            if armed_at.is_none_or(|a| a < lower || a > upper) {
                timer.as_mut().reset(upper.into());
                armed_at = Some(upper);
            }

            // ERROR too: a UDP socket whose datagram was refused (ICMP port
            // unreachable) reports only EPOLLERR, never readable.
            let interest = if self.wpos < self.wbuf.len() {
                Interest::READABLE | Interest::WRITABLE | Interest::ERROR
            } else {
                Interest::READABLE | Interest::ERROR
            };
            let ready = tokio::select! {
                biased;
                r = self.sock.ready(interest) => Some(r.map_err(|e| self.io_error(&e))?),
                _ = timer.as_mut() => None,
            };
            match ready {
                Some(r) if r.is_readable() || r.is_read_closed() => self.receive()?,
                Some(r) if r.is_error() => {
                    let e = self.sock.take_error().and_then(|e| e.map_or(Ok(()), Err));
                    if let Err(e) = e {
                        return Err(self.io_error(&e));
                    }
                }
                Some(_) => {}
                None => {
                    armed_at = None;
                    let now = Instant::now();
                    if self.plan.stream {
                        if let Some(f) = self.inflight.front() {
                            if now >= f.stamp + self.plan.reply_timeout {
                                return Err(ConnError {
                                    kind: ErrorKind::Timeout,
                                    message: format!(
                                        "connection {}, request {}: no reply within {}",
                                        self.id,
                                        f.seq,
                                        secs(self.plan.reply_timeout)
                                    ),
                                });
                            }
                        }
                    } else {
                        self.expire(now);
                    }
                }
            }
        }
    }

    /// Queues requests until the pipeline is full (closed loop) or no more
    /// are due (open loop).
    fn fill(&mut self, now: Instant) -> Result<(), ConnError> {
        while self.inflight.len() < self.plan.pipeline && !self.exhausted {
            // A datagram socket that refused the last datagram (full send
            // buffer) gets no more until that one is out.
            if !self.plan.stream && !self.wbuf.is_empty() {
                break;
            }
            // Open loop: latency counts from the scheduled time when the
            // request had to wait for a reply to free its slot (the server's
            // delay: no coordinated omission), but from the actual send when
            // a slot was free at the scheduled time, so the timer's 1 ms
            // granularity is not charged to the server.
            let (sched, stamp) = match self.next_due {
                Some(due) if due > now => break,
                Some(due) if self.room_since <= due => (due, now),
                Some(due) => (due, due),
                None => (now, now),
            };
            if self.ctx.end.is_some_and(|end| sched >= end) {
                self.exhausted = true;
                break;
            }
            let measured = sched >= self.ctx.measure_start;
            if measured && !self.ctx.shared.take_budget() {
                self.exhausted = true;
                break;
            }
            if let Some(due) = &mut self.next_due {
                *due += self.plan.interval.unwrap_or_default();
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.encode(seq);
            self.inflight.push_back(InFlight {
                seq,
                stamp,
                measured,
            });
            self.ctx.in_flight.set(self.ctx.in_flight.get() + 1);
            if measured {
                self.ctx.stats.borrow_mut().sent += 1;
            }
            if !self.plan.stream {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn encode(&mut self, seq: u64) {
        match &self.codec {
            None => self.plan.payloads.append(&mut self.wbuf, self.id, seq),
            Some(codec) => {
                self.plan.payloads.fill(&mut self.expect, self.id, seq);
                // Validated in `Payloads::new`: every payload encodes.
                let _ = codec.encode(&self.expect, &mut self.wbuf);
            }
        }
    }

    /// Writes as much of the pending output as the socket takes now.
    fn flush(&mut self) -> Result<(), ConnError> {
        while self.wpos < self.wbuf.len() {
            match self.sock.try_send(&self.wbuf[self.wpos..]) {
                Ok(n) if self.plan.stream => self.wpos += n,
                // A datagram goes whole or not at all.
                Ok(_) => self.wpos = self.wbuf.len(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(&e)),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }

    /// Reads what has arrived and processes every whole reply in it.
    fn receive(&mut self) -> Result<(), ConnError> {
        if !self.plan.stream {
            return self.receive_datagram();
        }
        if self.rend == self.rbuf.len() {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            } else {
                let grown = self.rbuf.len() * 2;
                self.rbuf.resize(grown, 0);
            }
        }
        let n = match self.sock.try_recv(&mut self.rbuf[self.rend..]) {
            Ok(0) => {
                return Err(ConnError {
                    kind: ErrorKind::Io,
                    message: format!(
                        "connection {}: closed by the server with {} repl{} outstanding",
                        self.id,
                        self.inflight.len(),
                        if self.inflight.len() == 1 { "y" } else { "ies" }
                    ),
                })
            }
            Ok(n) => n,
            Err(e) if not_ready(&e) => return Ok(()),
            Err(e) => return Err(self.io_error(&e)),
        };
        self.rend += n;
        let now = Instant::now();
        loop {
            let avail = &self.rbuf[self.rstart..self.rend];
            let (start, end, consumed) = match &mut self.codec {
                None if avail.len() >= self.plan.size => (0, self.plan.size, self.plan.size),
                None => break,
                Some(codec) => match codec.decode(avail) {
                    Decoded::Frame {
                        start,
                        end,
                        consumed,
                    } => (start, end, consumed),
                    Decoded::Incomplete { consumed } => {
                        self.rstart += consumed;
                        break;
                    }
                    Decoded::TooLong { error, .. } => {
                        return Err(ConnError {
                            kind: ErrorKind::WrongReply,
                            message: format!(
                                "connection {}: reply cannot be decoded: {error}",
                                self.id
                            ),
                        })
                    }
                },
            };
            let (a, b) = (self.rstart + start, self.rstart + end);
            self.rstart += consumed;
            self.check_stream_reply(a, b, now)?;
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        Ok(())
    }

    /// A stream reply answers the oldest request in flight, or it is wrong.
    fn check_stream_reply(&mut self, a: usize, b: usize, now: Instant) -> Result<(), ConnError> {
        let Some(req) = self.inflight.pop_front() else {
            return Err(ConnError {
                kind: ErrorKind::WrongReply,
                message: format!(
                    "connection {}: a reply arrived with no request outstanding: {}",
                    self.id,
                    excerpt(&self.rbuf[a..b], 0)
                ),
            });
        };
        self.plan.payloads.fill(&mut self.expect, self.id, req.seq);
        if self.rbuf[a..b] != self.expect[..] {
            return Err(wrong_reply(
                self.id,
                req.seq,
                &self.expect,
                &self.rbuf[a..b],
            ));
        }
        self.record(req, now);
        Ok(())
    }

    fn receive_datagram(&mut self) -> Result<(), ConnError> {
        loop {
            let n = match self.sock.try_recv(&mut self.rbuf) {
                Ok(n) => n,
                Err(e) if not_ready(&e) => return Ok(()),
                Err(e) => return Err(self.io_error(&e)),
            };
            let now = Instant::now();
            // Replies normally come in order, so the first candidate almost
            // always matches; a match further on means earlier datagrams
            // were lost or reordered, and their timeouts will say which.
            let mut matched = None;
            for (i, req) in self.inflight.iter().enumerate() {
                if n != self.plan.size {
                    break;
                }
                self.plan.payloads.fill(&mut self.expect, self.id, req.seq);
                if self.rbuf[..n] == self.expect[..] {
                    matched = Some(i);
                    break;
                }
            }
            match matched {
                Some(i) => {
                    let req = self.inflight.remove(i).expect("index from iteration");
                    self.record(req, now);
                }
                None => {
                    let late = n == self.plan.size
                        && self.lost.iter().any(|&seq| {
                            self.plan.payloads.fill(&mut self.expect, self.id, seq);
                            self.rbuf[..n] == self.expect[..]
                        });
                    if late {
                        self.ctx.stats.borrow_mut().late += 1;
                        continue;
                    }
                    let expected_seq = self
                        .inflight
                        .front()
                        .map(|f| f.seq)
                        .unwrap_or(self.next_seq);
                    self.plan
                        .payloads
                        .fill(&mut self.expect, self.id, expected_seq);
                    return Err(wrong_reply(
                        self.id,
                        expected_seq,
                        &self.expect,
                        &self.rbuf[..n],
                    ));
                }
            }
        }
    }

    /// Datagram requests past their timeout are lost: count and forget them.
    fn expire(&mut self, now: Instant) {
        let timeout = self.plan.reply_timeout;
        let mut expired = 0;
        let mut first = None;
        self.inflight.retain(|f| {
            if now >= f.stamp + timeout {
                expired += 1;
                first.get_or_insert(f.seq);
                false
            } else {
                true
            }
        });
        if expired == 0 {
            return;
        }
        self.ctx.answered(expired);
        self.room_since = now;
        let first = first.unwrap_or_default();
        for seq in first..first + expired {
            self.lost.push_back(seq);
        }
        while self.lost.len() > LATE_MEMORY {
            self.lost.pop_front();
        }
        let (id, t) = (self.id, self.plan.reply_timeout);
        self.ctx
            .stats
            .borrow_mut()
            .error(&self.ctx.shared, ErrorKind::Timeout, expired, || {
                format!(
                    "connection {id}, request {first}: no reply within {} (datagram lost?)",
                    secs(t)
                )
            });
    }

    #[inline]
    fn record(&mut self, req: InFlight, now: Instant) {
        self.ctx.answered(1);
        if self.inflight.len() + 1 == self.plan.pipeline {
            self.room_since = now;
        }
        self.replies += 1;
        let shared = &self.ctx.shared;
        shared.replies.fetch_add(1, Ordering::Relaxed);
        if !req.measured || self.ctx.end.is_some_and(|end| now > end) {
            return;
        }
        let mut stats = self.ctx.stats.borrow_mut();
        let ns = now.saturating_duration_since(req.stamp).as_nanos() as u64;
        stats.hist.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
        stats.requests += 1;
        stats.last_reply = Some(now);
        shared.measured.fetch_add(1, Ordering::Relaxed);
    }

    /// An I/O error. A refused datagram before any reply means nothing
    /// listens there: that is a failure to connect, not a broken exchange.
    fn io_error(&self, e: &io::Error) -> ConnError {
        if !self.plan.stream && self.replies == 0 && e.kind() == io::ErrorKind::ConnectionRefused {
            return ConnError {
                kind: ErrorKind::Connect,
                message: format!(
                    "cannot connect to {}: {}",
                    self.plan.endpoint_text,
                    describe(e)
                ),
            };
        }
        ConnError {
            kind: ErrorKind::Io,
            message: format!("connection {}: {}", self.id, describe(e)),
        }
    }
}

/// A non-blocking call that simply has nothing to do yet.
pub(super) fn not_ready(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A reply that is not the request it answers: it stops the connection (a
/// stream cannot resynchronise).
fn wrong_reply(conn: usize, seq: u64, expected: &[u8], got: &[u8]) -> ConnError {
    ConnError {
        kind: ErrorKind::WrongReply,
        message: mismatch(conn, seq, expected, got),
    }
}
