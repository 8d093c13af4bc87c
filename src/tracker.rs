//! The connection tracker: counts what is in flight and knows its sockets,
//! so a drain can wait for the last connection and a forced stop can cut
//! them all. Each connection holds a drop guard; dropping it says "done".

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::meter::{ConnMeter, Meters};
use crate::socket::Stream;

/// Wakes one part of a running server (its accept loop, its event loops).
/// A waker must never own the server's configuration (that would be a
/// reference cycle through the shared state).
pub(crate) type Waker = Box<dyn Fn() + Send + Sync>;
use crate::stats::{ServeState, Snapshot};

/// Counts the connections (and datagram jobs) in flight and knows their
/// sockets, so a drain can wait for them and a forced stop can cut them.
#[derive(Default)]
pub(crate) struct Tracker {
    state: Mutex<TrackerState>,
    idle: Condvar,
    next_id: AtomicU64,
    /// Set by the accept loop when it stopped accepting at the connection
    /// limit; the next connection to finish wakes it through `on_free`.
    paused: AtomicBool,
    on_free: Mutex<Vec<Waker>>,
    /// The live counters (set once at bind).
    meters: std::sync::OnceLock<Meters>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("active", &self.active())
            .finish()
    }
}

#[derive(Debug, Default)]
struct TrackerState {
    active: usize,
    sockets: HashMap<u64, RawFd>,
    per_ip: HashMap<IpAddr, usize>,
    /// The open connections' meters.
    live: HashMap<u64, Arc<ConnMeter>>,
}

impl Tracker {
    /// Registers one unit of work; `fd` is its socket if it has its own,
    /// `ip` its peer's address when per-peer limits apply. The socket must
    /// stay open until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, fd: Option<RawFd>, ip: Option<IpAddr>) -> TrackGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.active += 1;
        if let Some(fd) = fd {
            st.sockets.insert(id, fd);
        }
        if let Some(ip) = ip {
            *st.per_ip.entry(ip).or_insert(0) += 1;
        }
        TrackGuard {
            tracker: Arc::clone(self),
            id,
            ip,
            meter: None,
        }
    }

    /// Registers an accepted connection with a meter of its own.
    pub(crate) fn enter_conn(
        self: &Arc<Self>,
        fd: RawFd,
        ip: Option<IpAddr>,
        meter: impl FnOnce(u64) -> ConnMeter,
    ) -> TrackGuard {
        let mut guard = self.enter(Some(fd), ip);
        let m = Arc::new(meter(guard.id));
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .insert(guard.id, Arc::clone(&m));
        guard.meter = Some(m);
        guard
    }

    /// Sets the listeners' meters (once, at bind).
    pub(crate) fn set_meters(&self, meters: Meters) {
        let _ = self.meters.set(meters);
    }

    /// The live counters.
    pub(crate) fn meters(&self) -> Option<&Meters> {
        self.meters.get()
    }

    /// What the server can tell about itself now.
    pub(crate) fn snapshot(
        &self,
        state: ServeState,
        connections: usize,
        closed: usize,
    ) -> Snapshot {
        let now = Instant::now();
        let mut snap = Snapshot {
            state,
            ..Snapshot::default()
        };
        let Some(meters) = self.meters.get() else {
            return snap;
        };
        snap.uptime = meters.started.map_or(Duration::ZERO, |t| now - t);
        let live: Vec<Arc<ConnMeter>> = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .values()
            .cloned()
            .collect();
        snap.open_connections = live.len();
        let n = meters.listeners.len();
        let mut sums = vec![crate::stats::Counters::default(); n];
        let mut open = vec![0u64; n];
        for m in &live {
            if let Some(c) = sums.get_mut(m.listener) {
                c.add(&m.info_counters());
                open[m.listener] += 1;
            }
        }
        for (i, l) in meters.listeners.iter().enumerate() {
            snap.listeners.push(crate::stats::ListenerStats {
                endpoint: l.endpoint.clone(),
                transport: l.transport,
                counters: l.counters(&sums[i], open[i]),
            });
        }
        if connections > 0 {
            let mut live = live;
            live.sort_by_key(|m| std::cmp::Reverse(m.last_active()));
            live.truncate(connections);
            // The rows need each socket open for TCP_INFO: read them under
            // the lock a closing connection takes before its socket closes.
            let _st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            snap.connections = live
                .iter()
                .filter(|m| _st.live.contains_key(&m.id))
                .map(|m| m.info(now))
                .collect();
        }
        if closed > 0 {
            let g = meters.closed.lock().unwrap_or_else(|p| p.into_inner());
            snap.closed = g.iter().take(closed).cloned().collect();
        }
        snap
    }

    /// Open connections (work with a socket of its own).
    pub(crate) fn connections(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sockets
            .len()
    }

    /// Open connections from one peer address.
    pub(crate) fn connections_from(&self, ip: IpAddr) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_ip
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// The accept loop stops at the limit: have the next finished
    /// connection wake it.
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Adds a waker run when a connection finishes while accepting is
    /// paused (one per accepting thread).
    pub(crate) fn on_free(&self, waker: Waker) {
        self.on_free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(waker);
    }

    /// Drops the wakers (they may own event-loop handles).
    pub(crate) fn clear_wakers(&self) {
        self.on_free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How much work is in flight.
    pub(crate) fn active(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).active
    }

    /// Waits until no work is in flight or `deadline` passes; true if idle.
    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.active > 0 {
            match deadline {
                None => st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    st = self
                        .idle
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }

    /// Shuts down both directions of every tracked socket: blocked reads
    /// return end-of-stream and writes fail, so handlers stuck in I/O return.
    /// Holding the lock while doing it means no socket can be closed (and
    /// its descriptor reused) under our feet: guards unregister first.
    pub(crate) fn cut_all(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for fd in st.sockets.values() {
            // SAFETY: the fd is registered, hence still open (see above).
            unsafe {
                libc::shutdown(*fd, libc::SHUT_RDWR);
            }
        }
        st.sockets.len()
    }
}

/// Held by a connection while it runs; dropping it says "done".
#[derive(Debug)]
pub(crate) struct TrackGuard {
    tracker: Arc<Tracker>,
    id: u64,
    ip: Option<IpAddr>,
    meter: Option<Arc<ConnMeter>>,
}

impl TrackGuard {
    /// This connection's meter (accepted connections have one).
    pub(crate) fn meter(&self) -> Option<&Arc<ConnMeter>> {
        self.meter.as_ref()
    }

    /// Counts this connection as one from `ip` — if fewer than `max` are
    /// open from it (checked and counted under one lock, so connections
    /// admitted at the same moment on other threads cannot all slip in).
    /// For the client a PROXY header names, known only after accept: the
    /// connection was registered without an IP (the proxy's says nothing
    /// about the client). Err: how many are open from it.
    pub(crate) fn claim_ip(&mut self, ip: IpAddr, max: Option<usize>) -> Result<(), usize> {
        let mut st = self.tracker.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.ip == Some(ip) {
            return Ok(());
        }
        let open = st.per_ip.get(&ip).copied().unwrap_or(0);
        if max.is_some_and(|max| open >= max) {
            return Err(open);
        }
        if let Some(old) = self.ip.replace(ip) {
            forget_ip(&mut st, old);
        }
        *st.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// Registers (or, with `None`, unregisters) this work's socket, for the
    /// moment a socket changes hands and may be closed on an error path.
    pub(crate) fn set_socket(&self, fd: Option<RawFd>) {
        let mut st = self.tracker.state.lock().unwrap_or_else(|p| p.into_inner());
        match fd {
            Some(fd) => {
                st.sockets.insert(self.id, fd);
            }
            None => {
                st.sockets.remove(&self.id);
            }
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        let mut st = self.tracker.state.lock().unwrap_or_else(|p| p.into_inner());
        st.active -= 1;
        st.sockets.remove(&self.id);
        if self.meter.is_some() {
            st.live.remove(&self.id);
        }
        if let Some(ip) = self.ip {
            forget_ip(&mut st, ip);
        }
        if st.active == 0 {
            self.tracker.idle.notify_all();
        }
        drop(st);
        if let (Some(m), Some(meters)) = (&self.meter, self.tracker.meters.get()) {
            meters.close(m);
        }
        if self.tracker.paused.swap(false, Ordering::SeqCst) {
            for wake in self
                .tracker
                .on_free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                wake();
            }
        }
    }
}

/// One connection from `ip` fewer.
fn forget_ip(st: &mut TrackerState, ip: IpAddr) {
    if let Some(n) = st.per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            st.per_ip.remove(&ip);
        }
    }
}

/// A connection through the gate: registered with the tracker, its socket
/// non-blocking.
#[derive(Debug)]
pub(crate) struct Admitted {
    // The guard is declared first: it must unregister the socket before
    // the socket closes (see `TrackGuard`).
    pub(crate) guard: TrackGuard,
    pub(crate) stream: Stream,
    pub(crate) peer: Address,
    pub(crate) local: Address,
    /// Which of the server's listeners it came from.
    pub(crate) listener: usize,
    /// What its PROXY header said (stream connections, once read).
    pub(crate) proxy: Option<Arc<crate::proxy::ProxyInfo>>,
    /// The `VAR=value` pairs of the access rule that admitted it.
    pub(crate) env: crate::rules::Env,
}

impl Admitted {
    /// Registers a connection that passed the gate, from listener
    /// `listener`: its socket made non-blocking, a guard and a meter with
    /// the tracker, one more accepted on the listener's counters. The
    /// acceptor and a server of one connection (`crate::connected`) both
    /// end here. `None` (the socket closes) if the socket cannot be set up.
    /// `proxied`: the peer is a proxy, and the client's IP is counted once
    /// its PROXY header names it. `env`: the admitting rule's variables.
    pub(crate) fn register(
        tracker: &Arc<Tracker>,
        stream: Stream,
        peer: Address,
        local: Address,
        listener: usize,
        proxied: bool,
        env: crate::rules::Env,
    ) -> Option<Admitted> {
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::debug!(%peer, "cannot set up an accepted connection: {e}");
            return None;
        }
        let tcp = matches!(stream, Stream::Tcp(_));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (p, l) = (peer.to_string(), local.to_string());
        let ip = if proxied { None } else { peer.ip() };
        let guard = tracker.enter_conn(fd, ip, |id| ConnMeter::new(id, listener, p, l, fd, tcp));
        if let Some(m) = tracker.meters().and_then(|m| m.listener(listener)) {
            m.accepted();
        }
        Some(Admitted {
            guard,
            stream,
            peer,
            local,
            listener,
            proxy: None,
            env,
        })
    }
}
