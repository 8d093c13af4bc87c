//! The connection tracker: counts what is in flight and knows its sockets,
//! so a drain can wait for the last connection and a forced stop can cut
//! them all. Each connection holds a drop guard; dropping it says "done".

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::shutdown::Waker;

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
        }
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
}

impl TrackGuard {
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
        if let Some(ip) = self.ip {
            if let Some(n) = st.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    st.per_ip.remove(&ip);
                }
            }
        }
        if st.active == 0 {
            self.tracker.idle.notify_all();
        }
        drop(st);
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
