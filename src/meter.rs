//! The live counters behind [`crate::stats`]: what the engine keeps while
//! it serves, and how a [`Snapshot`] is made from it.
//!
//! Counting must not cost the data plane, so nothing here is shared on the
//! per-message path: each connection has its own [`ConnMeter`], written
//! only by the thread that serves it (plain relaxed stores of the numbers
//! its pipeline already keeps, once per turn), and folded into its
//! listener's totals when it closes. A scrape sums the listeners' totals
//! and the open connections' meters. Per-listener state is touched once
//! per connection (accepted, refused, closed: atomics, and at the close
//! two short locks, the listener's ended counts and the closed-connection
//! list), never per message; the handler-duration histogram only when
//! timing is on (the admin endpoint asks for it).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::addr::Address;
use crate::stats::{
    errno_name, ClosedConnection, ConnState, ConnectionInfo, Counters, End, Histogram,
    RefuseReason, HANDLER_DURATION_BOUNDS,
};

/// What a session has done so far.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// Frames handed to the handler.
    pub(crate) frames: u64,
    /// Replies the handler sent.
    pub(crate) replies: u64,
    /// Oversized frames reported.
    pub(crate) oversize: u64,
    pub(crate) errors: u64,
    pub(crate) panics: u64,
}

/// Closed connections remembered for the status page.
pub(crate) const CLOSED_KEPT: usize = 1_000;

/// One open connection's numbers.
#[derive(Debug)]
pub(crate) struct ConnMeter {
    pub(crate) id: u64,
    pub(crate) listener: usize,
    pub(crate) peer: String,
    /// The client a PROXY header named (the `peer` is then the proxy).
    proxied: std::sync::OnceLock<String>,
    pub(crate) local: String,
    pub(crate) fd: RawFd,
    pub(crate) tcp: bool,
    pub(crate) started: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    oversize: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    /// Microseconds from `started` to the last byte received.
    last_input_us: AtomicU64,
    state: AtomicU8,
    end: AtomicU8,
}

impl ConnMeter {
    pub(crate) fn new(
        id: u64,
        listener: usize,
        peer: String,
        local: String,
        fd: RawFd,
        tcp: bool,
    ) -> ConnMeter {
        ConnMeter {
            id,
            listener,
            peer,
            proxied: std::sync::OnceLock::new(),
            local,
            fd,
            tcp,
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            oversize: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            last_input_us: AtomicU64::new(0),
            state: AtomicU8::new(0),
            end: AtomicU8::new(END_UNSET),
        }
    }

    /// Stores a connection's numbers (by the thread that serves it: plain
    /// relaxed stores, nobody else writes them).
    #[inline]
    pub(crate) fn store(
        &self,
        bytes: (u64, u64),
        c: Counts,
        last_input: Instant,
        state: ConnState,
        end: Option<End>,
    ) {
        let r = Ordering::Relaxed;
        self.bytes_in.store(bytes.0, r);
        self.bytes_out.store(bytes.1, r);
        self.frames_in.store(c.frames, r);
        self.frames_out.store(c.replies, r);
        self.oversize.store(c.oversize, r);
        self.errors.store(c.errors, r);
        self.panics.store(c.panics, r);
        let since = last_input.saturating_duration_since(self.started);
        self.last_input_us.store(since.as_micros() as u64, r);
        let code = STATES.iter().position(|s| *s == state).unwrap_or(0);
        self.state.store(code as u8, r);
        if let Some(end) = end {
            self.end.store(end_code(end), r);
        }
    }

    /// The client a PROXY header named (set once, by the gate).
    pub(crate) fn set_proxied(&self, client: &Address) {
        let _ = self.proxied.set(client.to_string());
    }

    /// How the connection ended, when that is decided away from its
    /// pipeline (the gate after a PROXY header, a header that never came).
    pub(crate) fn set_end(&self, end: End) {
        self.end.store(end_code(end), Ordering::Relaxed);
    }

    fn shown_peer(&self) -> String {
        match self.proxied.get() {
            Some(p) => format!("{p} (via {})", self.peer),
            None => self.peer.clone(),
        }
    }

    /// Bytes moved by a stream handler's connection.
    pub(crate) fn add_bytes(&self, read: u64, written: u64) {
        let r = Ordering::Relaxed;
        if read > 0 {
            self.bytes_in.fetch_add(read, r);
            let since = self.started.elapsed().as_micros() as u64;
            self.last_input_us.store(since, r);
        }
        if written > 0 {
            self.bytes_out.fetch_add(written, r);
        }
    }

    pub(crate) fn info_counters(&self) -> Counters {
        let r = Ordering::Relaxed;
        Counters {
            bytes_in: self.bytes_in.load(r),
            bytes_out: self.bytes_out.load(r),
            frames_in: self.frames_in.load(r),
            replies_out: self.frames_out.load(r),
            oversize: self.oversize.load(r),
            handler_errors: self.errors.load(r),
            handler_panics: self.panics.load(r),
            ..Counters::default()
        }
    }

    /// The row of the open-connection table.
    pub(crate) fn info(&self, now: Instant) -> ConnectionInfo {
        let r = Ordering::Relaxed;
        let last = self.started + Duration::from_micros(self.last_input_us.load(r));
        ConnectionInfo {
            id: self.id,
            listener: self.listener,
            peer: self.shown_peer(),
            local: self.local.clone(),
            age: now.saturating_duration_since(self.started),
            idle: now.saturating_duration_since(last),
            bytes_in: self.bytes_in.load(r),
            bytes_out: self.bytes_out.load(r),
            frames_in: self.frames_in.load(r),
            frames_out: self.frames_out.load(r),
            state: STATES[usize::from(self.state.load(r)).min(STATES.len() - 1)],
            // The descriptor is open: the meter leaves the registry before
            // the socket closes (see `TrackGuard`).
            tcp: if self.tcp {
                crate::stats::tcp_info(self.fd).ok()
            } else {
                None
            },
        }
    }

    /// The last byte received, for "most recently active first".
    pub(crate) fn last_active(&self) -> Instant {
        self.started + Duration::from_micros(self.last_input_us.load(Ordering::Relaxed))
    }

    pub(crate) fn closed(&self) -> ClosedConnection {
        let r = Ordering::Relaxed;
        ClosedConnection {
            id: self.id,
            listener: self.listener,
            peer: self.shown_peer(),
            local: self.local.clone(),
            lifetime: self.started.elapsed(),
            bytes_in: self.bytes_in.load(r),
            bytes_out: self.bytes_out.load(r),
            frames_in: self.frames_in.load(r),
            frames_out: self.frames_out.load(r),
            ended: end_of(self.end.load(r)),
            closed_at: SystemTime::now(),
        }
    }
}

const STATES: [ConnState; 5] = [
    ConnState::Established,
    ConnState::PeerHalfClosed,
    ConnState::WeHalfClosed,
    ConnState::Draining,
    ConnState::Lingering,
];

const END_UNSET: u8 = u8::MAX;
const ENDS: [End; 13] = [
    End::ClientClosed,
    End::ServerClosed,
    End::Reset,
    End::IdleTimeout,
    End::ReadTimeout,
    End::WriteTimeout,
    End::Refused(RefuseReason::Limit),
    End::Refused(RefuseReason::PerIp),
    End::Refused(RefuseReason::Verify),
    End::Refused(RefuseReason::Rule),
    End::Refused(RefuseReason::Rate),
    End::DrainCut,
    End::Error,
];

fn end_code(end: End) -> u8 {
    ENDS.iter().position(|e| *e == end).unwrap_or(1) as u8
}

fn end_of(code: u8) -> End {
    if code == END_UNSET {
        // Closed without a verdict: the server closed it.
        return End::ServerClosed;
    }
    ENDS.get(usize::from(code))
        .copied()
        .unwrap_or(End::ServerClosed)
}

/// One listener's totals: per-connection events and the folded numbers of
/// the connections that closed.
#[derive(Debug)]
pub(crate) struct ListenerMeter {
    pub(crate) endpoint: String,
    pub(crate) transport: &'static str,
    accepted: AtomicU64,
    refused: [AtomicU64; 5],
    closed: Mutex<Counters>,
    accept_errors: Mutex<Vec<(i32, u64)>>,
    /// Datagrams (no connection to fold): counted here directly.
    dgram_in: AtomicU64,
    dgram_out: AtomicU64,
    dgram_bytes_in: AtomicU64,
    dgram_bytes_out: AtomicU64,
    /// The handler-duration histogram (when timing is on).
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl ListenerMeter {
    pub(crate) fn new(endpoint: String, transport: &'static str) -> ListenerMeter {
        ListenerMeter {
            endpoint,
            transport,
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            closed: Mutex::new(Counters::default()),
            accept_errors: Mutex::new(Vec::new()),
            dgram_in: AtomicU64::new(0),
            dgram_out: AtomicU64::new(0),
            dgram_bytes_in: AtomicU64::new(0),
            dgram_bytes_out: AtomicU64::new(0),
            buckets: (0..=HANDLER_DURATION_BOUNDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, why: RefuseReason) {
        let i = RefuseReason::ALL
            .iter()
            .position(|r| *r == why)
            .unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn accept_error(&self, errno: i32) {
        let mut g = self.accept_errors.lock().unwrap_or_else(|p| p.into_inner());
        match g.iter_mut().find(|(e, _)| *e == errno) {
            Some((_, n)) => *n += 1,
            None => g.push((errno, 1)),
        }
    }

    /// One datagram in, `replies` datagrams (of `out` bytes) out.
    pub(crate) fn datagram(&self, bytes: usize, replies: usize, out: usize) {
        let r = Ordering::Relaxed;
        self.dgram_in.fetch_add(1, r);
        self.dgram_bytes_in.fetch_add(bytes as u64, r);
        if replies > 0 {
            self.dgram_out.fetch_add(replies as u64, r);
            self.dgram_bytes_out.fetch_add(out as u64, r);
        }
    }

    /// One handler call took `d`.
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = HANDLER_DURATION_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(HANDLER_DURATION_BOUNDS.len());
        let r = Ordering::Relaxed;
        self.buckets[i].fetch_add(1, r);
        self.sum_ns.fetch_add(d.as_nanos() as u64, r);
        self.count.fetch_add(1, r);
    }

    fn fold(&self, meter: &ConnMeter) {
        let mut g = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        g.add(&meter.info_counters());
    }

    /// This listener's counters, with the open connections' `live` added.
    pub(crate) fn counters(&self, live: &Counters, open: u64) -> Counters {
        let r = Ordering::Relaxed;
        let mut c = self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        c.add(live);
        c.accepted = self.accepted.load(r);
        c.open = open;
        for (i, reason) in RefuseReason::ALL.iter().enumerate() {
            *c.refused.get_mut(*reason) = self.refused[i].load(r);
        }
        c.frames_in += self.dgram_in.load(r);
        c.replies_out += self.dgram_out.load(r);
        c.bytes_in += self.dgram_bytes_in.load(r);
        c.bytes_out += self.dgram_bytes_out.load(r);
        for (errno, n) in self
            .accept_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            c.add_accept_errors(&errno_name(*errno), *n);
        }
        let mut h = Histogram::new(HANDLER_DURATION_BOUNDS);
        for (i, b) in self.buckets.iter().enumerate() {
            h.counts[i] = b.load(r);
        }
        h.sum_seconds = self.sum_ns.load(r) as f64 / 1e9;
        h.count = self.count.load(r);
        c.handler_duration = h;
        c
    }
}

/// The server-wide registry the tracker keeps: listeners, the recently
/// closed connections, and whether handler calls are timed.
#[derive(Debug, Default)]
pub(crate) struct Meters {
    pub(crate) listeners: Vec<std::sync::Arc<ListenerMeter>>,
    pub(crate) closed: Mutex<VecDeque<ClosedConnection>>,
    pub(crate) timing: AtomicBool,
    pub(crate) started: Option<Instant>,
}

impl Meters {
    pub(crate) fn listener(&self, i: usize) -> Option<&std::sync::Arc<ListenerMeter>> {
        self.listeners.get(i)
    }

    /// A connection closed: fold its numbers, remember how it ended.
    pub(crate) fn close(&self, meter: &ConnMeter) {
        if let Some(l) = self.listeners.get(meter.listener) {
            l.fold(meter);
        }
        self.remember(meter.closed());
    }

    pub(crate) fn remember(&self, c: ClosedConnection) {
        let mut g = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= CLOSED_KEPT {
            g.pop_back();
        }
        g.push_front(c);
    }
}
