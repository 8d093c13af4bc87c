//! The connection pipeline: one framed connection's whole life as a state
//! machine with no I/O and no clock of its own.
//!
//! A driver (the blocking one or the event loop, `crate::driver`) owns the
//! socket and the time. It asks [`Conn::next`] what to do — write the
//! pending bytes, read, half-close, close, or wait for a handler running
//! elsewhere — does it, and reports back what happened: bytes read
//! ([`Conn::received`]), end of stream ([`Conn::eof`]), bytes written
//! ([`Conn::wrote`]), the deadline reached ([`Conn::timeout`]), the server
//! stopping ([`Conn::stop`]), an I/O error ([`Conn::failed`]). Everything a
//! connection decides lives here, once, for every driver:
//!
//! * decode → handler → encode, through the [`Session`], and the byte
//!   [`layers`](layer) below it (PROXY header, TLS);
//! * the write backlog and the read pause: replies not yet written stop
//!   reading, and past [`Settings::max_backlog`] stop decoding too;
//! * the timeouts: idle (no byte between frames), read (a frame that has
//!   started — kept or being discarded — must end in time), write (no
//!   progress writing);
//! * the drain: answer what has arrived, then stop reading;
//! * the close: half-close after the last reply, then a lingering read
//!   (bounded in time and bytes) so the peer never gets a reset that would
//!   destroy replies it has not read yet.
//!
//! ```text
//!   Open ──eof──────────────────────► Closing ──flushed──► ShutdownWrite ─┐
//!    │  └─timeout / handler close ──►    ▲                                │
//!    └─stop──► Draining ──nothing more──┘         peer closed? ──yes──► Done
//!                                                       │ no
//!                                                       ▼
//!                                   Lingering (discard until FIN / deadline / budget)
//! ```

pub(crate) mod layer;
pub(crate) mod session;

use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::hooks::Failure;
pub(crate) use crate::meter::Counts;
use crate::stats::ConnState;
pub(crate) use crate::stats::End;
use layer::{Layer, LayerIo};
pub(crate) use session::{Ctx, Flow, Session};

/// The most a lingering close (or a drain) reads and discards before it
/// gives up: enough to absorb requests in flight, not enough to let a peer
/// that keeps sending hold the connection open.
pub(crate) const LINGER_BUDGET: usize = 256 * 1024;

/// How long a lingering close waits once the server is draining, and how
/// long a connection accepted during the drain waits for its first bytes.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// How often a draining linger looks whether our replies are acknowledged.
const LINGER_POLL: Duration = Duration::from_millis(10);

/// The per-connection settings, copied from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle: Option<Duration>,
    pub(crate) read: Option<Duration>,
    pub(crate) write: Option<Duration>,
    pub(crate) linger: Duration,
    /// Replies waiting to be written past which decoding stops.
    pub(crate) max_backlog: usize,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Write [`Conn::output`]; report with [`Conn::wrote`]. If the socket
    /// is full, wait for it until [`Conn::deadline`].
    Write,
    /// Read; report with [`Conn::received`] or [`Conn::eof`]. If nothing is
    /// there, wait until [`Conn::deadline`].
    Read,
    /// Input is held back (the backlog was full and is now written): call
    /// [`Conn::resume`] (or hand the session to a worker).
    Resume,
    /// Half-close the socket (shutdown of the write side), then report
    /// with [`Conn::shut_down`].
    ShutdownWrite,
    /// The handler runs elsewhere (a worker pool): wait for
    /// [`Conn::offload_done`], or the deadline.
    Busy,
    /// A PROXY header has been read: take it ([`Conn::take_header`]), pass
    /// the client it names through the gate, and report the verdict with
    /// [`Conn::admit`]. Nothing after the header reaches the handler
    /// before that: a client the gate refuses gets no handler call.
    Admit,
    /// Close the socket; [`Conn::end`] says why.
    Close,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading and answering.
    Open,
    /// The server drains: read what has arrived (until the deadline, within
    /// the budget), answer it, then close.
    Draining { until: Instant, budget: usize },
    /// The last replies are being written; then half-close.
    Closing,
    /// Our side is closed: discard input until the peer closes, the
    /// deadline passes or the budget is spent.
    Lingering { until: Instant, budget: usize },
    /// Close now.
    Done,
}

/// One framed connection, sans I/O. See the module docs.
#[derive(Debug)]
pub(crate) struct Conn {
    /// None while a worker runs the handler on it (see [`Conn::offload`]).
    session: Option<Session>,
    layers: Vec<Box<dyn Layer>>,
    settings: Settings,
    phase: Phase,
    /// Bytes to write; `out[sent..]` is still pending.
    out: Vec<u8>,
    sent: usize,
    /// The buffer a worker writes replies into, kept between jobs so a
    /// job allocates nothing.
    spare: Vec<u8>,
    peer_closed: bool,
    we_closed: bool,
    /// The server is stopping: lingers are short.
    stopping: bool,
    /// Our bytes the peer has not acknowledged yet (the socket's send
    /// queue, as the driver last saw it while lingering).
    unacked: usize,
    /// A linger waiting for the send queue to drain ends here at the
    /// latest.
    linger_cap: Option<Instant>,
    end: Option<End>,
    created: Instant,
    last_input: Instant,
    /// When the frame in progress began (the read timeout runs from here).
    frame_since: Option<Instant>,
    /// When writing last made progress while bytes were pending.
    write_since: Option<Instant>,
    bytes_in: u64,
    bytes_out: u64,
    /// The session's counts as last seen (while it is away on a worker).
    last_counts: std::cell::Cell<Counts>,
    /// A layer read the PROXY header, and the gate has not yet ruled on
    /// the client it names.
    gating: bool,
    /// That header, until the driver takes it.
    header: Option<crate::proxy::ProxyHeader>,
}

/// The gate's verdict on the client a PROXY header named.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Served, as this peer (and with what the header said).
    Client(Address, std::sync::Arc<crate::proxy::ProxyInfo>),
    /// Refused: closed, after `message` if there is one (the limit
    /// message), else at once without a byte sent.
    Refused(crate::stats::RefuseReason, Option<Vec<u8>>),
}

impl Conn {
    /// A new connection. `draining`: it was accepted while the server
    /// drains (from the listener's backlog), so it gets a short grace for
    /// its request to arrive.
    pub(crate) fn new(
        session: Session,
        layers: Vec<Box<dyn Layer>>,
        settings: Settings,
        now: Instant,
        draining: bool,
    ) -> Conn {
        let mut conn = Conn {
            session: Some(session),
            layers,
            settings,
            phase: Phase::Open,
            out: Vec::new(),
            sent: 0,
            spare: Vec::new(),
            peer_closed: false,
            we_closed: false,
            stopping: false,
            unacked: 0,
            linger_cap: None,
            end: None,
            created: now,
            last_input: now,
            frame_since: None,
            write_since: None,
            bytes_in: 0,
            bytes_out: 0,
            last_counts: std::cell::Cell::new(Counts::default()),
            gating: false,
            header: None,
        };
        if draining {
            conn.begin_drain(now);
        }
        conn
    }

    /// A connection that is only closing: a stream handler is done with
    /// it, so it half-closes and lingers like every other connection.
    pub(crate) fn closing(settings: Settings, now: Instant) -> Conn {
        let mut conn = Conn::new(
            Session::new(&crate::frame::Framing::raw(), Address::Unix(None)),
            Vec::new(),
            settings,
            now,
            false,
        );
        conn.phase = Phase::Closing;
        conn
    }

    /// What to do now.
    pub(crate) fn next(&self) -> Next {
        if self.phase == Phase::Done {
            return Next::Close;
        }
        if self.session.is_none() {
            return Next::Busy;
        }
        if self.gating {
            return Next::Admit;
        }
        if self.sent < self.out.len() {
            return Next::Write;
        }
        match self.phase {
            Phase::Open | Phase::Draining { .. } => {
                if self.session.as_ref().is_some_and(Session::has_held) {
                    Next::Resume
                } else {
                    Next::Read
                }
            }
            Phase::Closing => Next::ShutdownWrite,
            Phase::Lingering { .. } => Next::Read,
            Phase::Done => Next::Close,
        }
    }

    /// When the current wait must end; past it, call [`Conn::timeout`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        if self.sent < self.out.len() {
            return self.write_deadline();
        }
        match self.phase {
            Phase::Open if self.session.is_some() => {
                let layer = self.layers.iter().filter_map(|l| l.deadline()).min();
                min_opt(min_opt(self.read_deadline(), self.idle_deadline()), layer)
            }
            Phase::Draining { until, .. } | Phase::Lingering { until, .. } => Some(until),
            _ => None,
        }
    }

    fn write_deadline(&self) -> Option<Instant> {
        match (self.write_since, self.settings.write) {
            (Some(since), Some(t)) => Some(since + t),
            _ => None,
        }
    }

    fn read_deadline(&self) -> Option<Instant> {
        match (self.frame_since, self.settings.read) {
            (Some(since), Some(t)) => Some(since + t),
            _ => None,
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.settings.idle.map(|t| self.last_input + t)
    }

    /// The bytes waiting to be written.
    pub(crate) fn output(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// `n` bytes of [`Conn::output`] were written.
    pub(crate) fn wrote(&mut self, n: usize, now: Instant) {
        self.sent += n;
        self.bytes_out += n as u64;
        if self.sent >= self.out.len() {
            self.sent = 0;
            self.out.clear();
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
            self.write_since = None;
        } else if n > 0 || self.write_since.is_none() {
            self.write_since = Some(now);
        }
    }

    /// Counts `n` bytes read against the phase's budget; false when they
    /// are not for the handler (discarded while lingering, or too late).
    fn admit_input(&mut self, n: usize, now: Instant) -> bool {
        self.bytes_in += n as u64;
        match &mut self.phase {
            Phase::Lingering { budget, .. } => {
                // While the server drains, the linger is short anyway: keep
                // reading for all of it, so a peer that never stops sending
                // still has the time to read our last replies.
                if n >= *budget && !self.stopping {
                    self.phase = Phase::Done;
                } else {
                    *budget = budget.saturating_sub(n);
                }
                false
            }
            Phase::Draining { budget, until } => {
                // Answer what has arrived, no more: the grace for a first
                // request ends when one arrives.
                *until = (*until).min(now);
                if n >= *budget {
                    // A peer that never stops sending must not keep the
                    // drain busy: answer this, then close.
                    self.phase = Phase::Closing;
                } else {
                    *budget -= n;
                }
                true
            }
            Phase::Open => true,
            Phase::Closing | Phase::Done => false,
        }
    }

    /// Bytes arrived.
    pub(crate) fn received(&mut self, data: &[u8], now: Instant, ctx: &Ctx<'_>) {
        if !self.admit_input(data.len(), now) {
            return;
        }
        self.last_input = now;
        let Some(mut session) = self.session.take() else {
            return;
        };
        let before = Progress::of(&session);
        let flow = if self.layers.is_empty() {
            let limit = self.settings.max_backlog;
            let flow = session.feed(data, ctx, &mut self.out, limit);
            self.out_grew(now);
            flow
        } else {
            self.feed_layers(&mut session, data, now, ctx)
        };
        self.after_feed(session, before, flow, now);
    }

    /// Runs `data` up through the byte layers into the session, and the
    /// session's replies back down.
    fn feed_layers(
        &mut self,
        session: &mut Session,
        data: &[u8],
        now: Instant,
        ctx: &Ctx<'_>,
    ) -> Flow {
        let Some(bytes) = self.up_through_layers(session, data, ctx) else {
            return Flow::Close;
        };
        if self.gating {
            session.hold(&bytes);
            return Flow::Continue;
        }
        let mut plain = Vec::new();
        let flow = session.feed(&bytes, ctx, &mut plain, self.settings.max_backlog);
        self.send_down(&plain, ctx, session.peer(), now);
        flow
    }

    /// Runs `data` up through the byte layers; `None` if one broke (the
    /// connection is then done, without a reply).
    fn up_through_layers(
        &mut self,
        session: &mut Session,
        data: &[u8],
        ctx: &Ctx<'_>,
    ) -> Option<Vec<u8>> {
        let mut bytes = data.to_vec();
        let mut header = None;
        for layer in &mut self.layers {
            let mut up = Vec::new();
            let mut io = LayerIo {
                up: &mut up,
                wire: &mut self.out,
                header: &mut header,
            };
            if let Err(e) = layer.input(&bytes, &mut io) {
                ctx.hooks.error(
                    session.peer(),
                    Failure::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                );
                self.end.get_or_insert(End::Error);
                self.phase = Phase::Done;
                return None;
            }
            bytes = up;
        }
        if header.is_some() {
            self.header = header;
            self.gating = true;
        }
        self.layers.retain(|l| !l.is_transparent());
        Some(bytes)
    }

    /// Encodes replies through the layers (top to bottom) into the output.
    fn send_down(&mut self, plain: &[u8], ctx: &Ctx<'_>, peer: &Address, now: Instant) {
        if plain.is_empty() {
            return;
        }
        let mut bytes = plain.to_vec();
        for layer in self.layers.iter_mut().rev() {
            let mut wire = Vec::new();
            if let Err(e) = layer.output(&bytes, &mut wire) {
                ctx.hooks.error(
                    peer,
                    Failure::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                );
                self.end.get_or_insert(End::Error);
                self.phase = Phase::Done;
                return;
            }
            bytes = wire;
        }
        self.out.extend_from_slice(&bytes);
        self.out_grew(now);
    }

    fn out_grew(&mut self, now: Instant) {
        if self.sent < self.out.len() && self.write_since.is_none() {
            self.write_since = Some(now);
        }
    }

    /// Bookkeeping after the session ran: the read timer, the handler's
    /// verdict.
    fn after_feed(&mut self, session: Session, before: Progress, flow: Flow, now: Instant) {
        let after = Progress::of(&session);
        if !after.in_frame {
            self.frame_since = None;
        } else if !before.in_frame || after.ended != before.ended || self.frame_since.is_none() {
            // A new frame started (or one ended and the next began).
            self.frame_since = Some(now);
        }
        self.session = Some(session);
        if flow == Flow::Close && self.phase != Phase::Done {
            self.end.get_or_insert(End::ServerClosed);
            self.phase = Phase::Closing;
        }
    }

    /// Decodes input that was held back while the backlog was full.
    pub(crate) fn resume(&mut self, now: Instant, ctx: &Ctx<'_>) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        let before = Progress::of(&session);
        let limit = self.settings.max_backlog;
        let flow = if self.layers.is_empty() {
            let flow = session.resume(ctx, &mut self.out, limit);
            self.out_grew(now);
            flow
        } else {
            let mut plain = Vec::new();
            let flow = session.resume(ctx, &mut plain, limit);
            let peer = session.peer().clone();
            self.send_down(&plain, ctx, &peer, now);
            flow
        };
        self.after_feed(session, before, flow, now);
    }

    /// Takes the session (and the input for it, through the byte layers)
    /// to run the handler on a worker thread; the connection is
    /// [`Next::Busy`] until [`Conn::offload_done`].
    pub(crate) fn offload(&mut self, data: &[u8], now: Instant, ctx: &Ctx<'_>) -> Option<Offload> {
        if !self.admit_input(data.len(), now) {
            return None;
        }
        if !data.is_empty() {
            self.last_input = now;
        }
        let mut session = self.session.take()?;
        let input = if self.layers.is_empty() || data.is_empty() {
            data.to_vec()
        } else {
            match self.up_through_layers(&mut session, data, ctx) {
                Some(bytes) if self.gating => {
                    // The gate first; the handler gets these after it.
                    session.hold(&bytes);
                    self.session = Some(session);
                    return None;
                }
                Some(bytes) => bytes,
                None => {
                    self.session = Some(session);
                    return None;
                }
            }
        };
        let before = Progress::of(&session);
        Some(Offload {
            session,
            input,
            out: std::mem::take(&mut self.spare),
            limit: self
                .settings
                .max_backlog
                .saturating_sub(self.out.len() - self.sent),
            before,
            flow: Flow::Continue,
        })
    }

    /// The worker is done with the session.
    pub(crate) fn offload_done(&mut self, work: Offload, now: Instant, ctx: &Ctx<'_>) {
        let Offload {
            session,
            out,
            before,
            flow,
            ..
        } = work;
        let mut out = out;
        if self.layers.is_empty() && self.sent == self.out.len() {
            // Nothing pending: the worker's buffer becomes the output as
            // it is, no copy.
            std::mem::swap(&mut self.out, &mut out);
            self.sent = 0;
            self.out_grew(now);
        } else if self.layers.is_empty() {
            self.out.extend_from_slice(&out);
            self.out_grew(now);
        } else {
            let peer = session.peer().clone();
            self.send_down(&out, ctx, &peer, now);
        }
        out.clear();
        self.spare = out;
        if self.phase == Phase::Done {
            self.session = Some(session);
            return;
        }
        self.after_feed(session, before, flow, now);
    }

    /// The peer closed its side (end of stream).
    pub(crate) fn eof(&mut self, now: Instant, ctx: &Ctx<'_>) {
        self.peer_closed = true;
        match self.phase {
            Phase::Open | Phase::Draining { .. } => {
                if let Some(session) = self.session.as_mut() {
                    // A last unterminated frame counts (line codecs).
                    let mut plain = Vec::new();
                    let to = if self.layers.is_empty() {
                        &mut self.out
                    } else {
                        &mut plain
                    };
                    session.finish(ctx, to);
                    if !plain.is_empty() {
                        let peer = session.peer().clone();
                        self.send_down(&plain, ctx, &peer, now);
                    }
                    self.out_grew(now);
                }
                self.end.get_or_insert(End::ClientClosed);
                if self.phase != Phase::Done {
                    self.phase = Phase::Closing;
                }
            }
            Phase::Lingering { .. } => {
                self.end.get_or_insert(End::ServerClosed);
                self.phase = Phase::Done;
            }
            Phase::Closing | Phase::Done => {}
        }
    }

    /// The write side was shut down (our FIN is on its way).
    pub(crate) fn shut_down(&mut self, now: Instant) {
        self.we_closed = true;
        if self.peer_closed {
            self.phase = Phase::Done;
            return;
        }
        let mut linger = self.settings.linger;
        if self.stopping {
            // While draining the linger ends as soon as our replies are
            // acknowledged: look every 10 ms (see `timeout`).
            linger = linger.min(LINGER_POLL);
        }
        self.end.get_or_insert(End::ServerClosed);
        self.phase = Phase::Lingering {
            until: now + linger,
            budget: LINGER_BUDGET,
        };
        self.unacked = 1;
        self.linger_cap = Some(now + self.settings.write.unwrap_or(Duration::from_secs(30)));
    }

    /// True while lingering: the driver then reports the socket's send
    /// queue with [`Conn::unacked`].
    pub(crate) fn is_lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }

    /// While lingering: `n` bytes we sent are not acknowledged yet. Closing
    /// with input unread resets the connection, and a reset throws away
    /// what is still in our send queue — replies the peer has not
    /// received. So a linger ends only once the queue is empty (or at the
    /// write timeout); while the server drains, it ends as soon as it is.
    pub(crate) fn unacked(&mut self, n: usize) {
        self.unacked = n;
        if n == 0 && self.stopping && self.is_lingering() {
            self.phase = Phase::Done;
        }
    }

    /// The deadline from [`Conn::deadline`] may have passed.
    pub(crate) fn timeout(&mut self, now: Instant, ctx: &Ctx<'_>) {
        if self.sent < self.out.len() {
            if self.write_deadline().is_some_and(|d| d <= now) {
                self.report(ctx, std::io::ErrorKind::TimedOut, "write timed out");
                self.end.get_or_insert(End::WriteTimeout);
                self.phase = Phase::Done;
            }
            return;
        }
        match self.phase {
            Phase::Open if self.session.is_some() => {
                let layer = self.layers.iter().filter_map(|l| l.deadline()).min();
                if self.read_deadline().is_some_and(|d| d <= now) || layer.is_some_and(|d| d <= now)
                {
                    self.report(ctx, std::io::ErrorKind::TimedOut, "read timed out");
                    self.end.get_or_insert(End::ReadTimeout);
                    self.phase = Phase::Closing;
                } else if self.idle_deadline().is_some_and(|d| d <= now) {
                    self.report(ctx, std::io::ErrorKind::TimedOut, "idle timeout");
                    self.end.get_or_insert(End::IdleTimeout);
                    self.phase = Phase::Closing;
                }
            }
            Phase::Draining { until, .. } if until <= now && self.session.is_some() => {
                // Everything that had arrived is answered.
                self.end.get_or_insert(End::ServerClosed);
                self.phase = Phase::Closing;
            }
            Phase::Lingering { until, budget } if until <= now => {
                let capped = self.linger_cap.is_some_and(|cap| cap <= now);
                if self.unacked > 0 && !capped {
                    // Replies are still on their way: look again shortly.
                    self.phase = Phase::Lingering {
                        until: now + LINGER_POLL,
                        budget,
                    };
                } else {
                    self.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    fn report(&self, ctx: &Ctx<'_>, kind: std::io::ErrorKind, what: &'static str) {
        if let Some(session) = &self.session {
            ctx.hooks
                .error(session.peer(), Failure::Io(std::io::Error::new(kind, what)));
        }
    }

    /// The server started draining, or was forced to stop.
    pub(crate) fn stop(&mut self, forced: bool, now: Instant) {
        self.stopping = true;
        if forced {
            self.end.get_or_insert(End::DrainCut);
            self.phase = Phase::Done;
            return;
        }
        match self.phase {
            Phase::Open => self.begin_drain(now),
            Phase::Lingering { until, budget } => {
                self.phase = Phase::Lingering {
                    until: until.min(now + LINGER_POLL),
                    budget,
                }
            }
            _ => {}
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        self.stopping = true;
        // A connection that has sent nothing yet (accepted from the backlog
        // during the drain) gets a moment for its request to arrive; the
        // others answer only what has already arrived.
        let until = if self.bytes_in == 0 {
            (self.created + DRAIN_GRACE).max(now)
        } else {
            now
        };
        self.phase = Phase::Draining {
            until,
            budget: LINGER_BUDGET,
        };
    }

    /// Reading or writing failed: the socket is broken, close it.
    pub(crate) fn failed(&mut self, e: std::io::Error, ctx: &Ctx<'_>) {
        let reset = matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        );
        if self.phase != Phase::Done {
            if let Some(session) = &self.session {
                ctx.hooks.error(session.peer(), Failure::Io(e));
            }
        }
        self.end
            .get_or_insert(if reset { End::Reset } else { End::Error });
        self.phase = Phase::Done;
    }

    /// Why the connection ended (once [`Next::Close`]).
    #[cfg(test)]
    pub(crate) fn end(&self) -> Option<End> {
        self.end
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Frames handled so far.
    #[cfg(test)]
    pub(crate) fn frames(&self) -> u64 {
        self.counts().frames
    }

    /// What the session has done so far (kept while it is on a worker).
    pub(crate) fn counts(&self) -> Counts {
        match &self.session {
            Some(s) => {
                let c = s.counts();
                self.last_counts.set(c);
                c
            }
            None => self.last_counts.get(),
        }
    }

    /// Copies this connection's numbers into its meter (for the status
    /// page and the metrics; a few relaxed stores).
    #[inline]
    pub(crate) fn publish(&self, meter: &crate::meter::ConnMeter) {
        let state = match self.phase {
            Phase::Draining { .. } => ConnState::Draining,
            Phase::Lingering { .. } => ConnState::Lingering,
            _ if self.we_closed => ConnState::WeHalfClosed,
            _ if self.peer_closed => ConnState::PeerHalfClosed,
            _ => ConnState::Established,
        };
        meter.store(
            (self.bytes_in, self.bytes_out),
            self.counts(),
            self.last_input,
            state,
            self.end,
        );
    }

    /// The peer as the socket has it (the proxy's address until the gate
    /// admitted the client a PROXY header named).
    pub(crate) fn peer(&self) -> Option<&Address> {
        self.session.as_ref().map(Session::peer)
    }

    /// The PROXY header read (once, at [`Next::Admit`]).
    pub(crate) fn take_header(&mut self) -> Option<crate::proxy::ProxyHeader> {
        self.header.take()
    }

    /// The gate ruled on the client of the PROXY header.
    pub(crate) fn admit(&mut self, verdict: Admission, now: Instant) {
        self.gating = false;
        match verdict {
            Admission::Client(peer, info) => {
                if let Some(session) = self.session.as_mut() {
                    session.set_peer(peer);
                    session.set_proxy(info);
                }
            }
            Admission::Refused(reason, message) => {
                self.end = Some(End::Refused(reason));
                if let Some(session) = self.session.as_mut() {
                    session.discard();
                }
                match message {
                    Some(msg) if !msg.is_empty() => {
                        self.out.extend_from_slice(&msg);
                        self.out_grew(now);
                        self.phase = Phase::Closing;
                    }
                    _ => self.phase = Phase::Done,
                }
            }
        }
    }
}

/// The session's frame state before a feed, to tell when a frame began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    in_frame: bool,
    ended: u64,
}

impl Progress {
    fn of(session: &Session) -> Progress {
        Progress {
            in_frame: session.in_frame(),
            ended: session.frames_ended(),
        }
    }
}

/// A session away on a worker thread with the input it is to decode.
#[derive(Debug)]
pub(crate) struct Offload {
    session: Session,
    input: Vec<u8>,
    out: Vec<u8>,
    limit: usize,
    before: Progress,
    flow: Flow,
}

impl Offload {
    /// The worker failed outside the handler: the connection closes.
    pub(crate) fn fail(&mut self) {
        self.flow = Flow::Close;
    }

    /// Runs the handler on the input (on the worker's thread).
    pub(crate) fn run(&mut self, ctx: &Ctx<'_>) {
        let input = std::mem::take(&mut self.input);
        self.flow = if input.is_empty() {
            self.session.resume(ctx, &mut self.out, self.limit)
        } else {
            self.session.feed(&input, ctx, &mut self.out, self.limit)
        };
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
