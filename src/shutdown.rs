//! Shutdown: a signal every part of a server can wait on, a handle to pull
//! it from any thread, and a tracker that says when the last connection is
//! done.
//!
//! The shape follows tokio's mini-redis: one broadcast-style signal tells
//! everybody to stop, and a drop guard held by each connection tells the
//! server when they all have. The signal is an `eventfd` that becomes
//! readable once and stays readable, so a thread blocked in `poll` on its
//! socket wakes at once, and a thread that starts waiting later never misses
//! it: no polling interval anywhere.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

thread_local! {
    static SERVER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as one of a server's own (a worker, an event
/// loop, a connection's thread), where waiting for the server to stop would
/// wait for itself.
pub(crate) fn mark_server_thread() {
    SERVER_THREAD.with(|c| c.set(true));
}

fn on_server_thread() -> bool {
    SERVER_THREAD.with(|c| c.get())
}

/// A one-shot, level-triggered event: once triggered it stays triggered.
#[derive(Debug)]
pub(crate) struct Signal {
    fd: OwnedFd,
    triggered: AtomicBool,
}

impl Signal {
    pub(crate) fn new() -> io::Result<Signal> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is
        // checked before it is wrapped.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signal {
            fd,
            triggered: AtomicBool::new(false),
        })
    }

    pub(crate) fn trigger(&self) {
        if !self.triggered.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
            unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    #[inline]
    pub(crate) fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What woke a [`wait_fd`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The socket is ready (or has an error or hang-up to report).
    Ready,
    /// The signal fired first.
    Signal,
    /// The timeout passed.
    Timeout,
}

/// Waits until `fd` is ready for `events` (`libc::POLLIN`/`POLLOUT`), the
/// signal fires, or `timeout` passes. The socket wins ties, so data already
/// received is never dropped in favour of a shutdown.
pub(crate) fn wait_fd(
    fd: RawFd,
    events: libc::c_short,
    signal: Option<&Signal>,
    timeout: Option<Duration>,
) -> io::Result<Wake> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: signal.map_or(-1, Signal::raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a 0.5 ms remainder does not spin.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: `fds` is a valid array of two pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Ready);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Signal);
        }
        if n == 0 {
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Ok(Wake::Timeout);
                }
            }
        }
    }
}

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
    on_free: std::sync::OnceLock<Waker>,
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
    pub(crate) fn pause_until_free(&self, waker: impl FnOnce() -> Waker) {
        let _ = self.on_free.set(waker());
        self.paused.store(true, Ordering::SeqCst);
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
            if let Some(wake) = self.tracker.on_free.get() {
                wake();
            }
        }
    }
}

/// Stops a running server from any thread. Cheap to clone.
///
/// [`shutdown`](ShutdownHandle::shutdown) stops accepting at once, lets every
/// connection finish what it has read (see the server's drain policy), and
/// returns once `serve_forever` has returned. It needs no polling interval:
/// the serving thread is woken directly.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(crate) shared: Arc<Shared>,
}

/// Wakes one part of a running server (its accept loop, its workers).
pub(crate) type Waker = Box<dyn Fn() + Send + Sync>;

/// State shared by a server and its handles.
pub(crate) struct Shared {
    /// Fired on the first shutdown request: stop accepting, drain.
    pub(crate) stop: Signal,
    /// Fired on a second request or at the drain deadline: cut everything.
    pub(crate) force: Signal,
    pub(crate) tracker: Arc<Tracker>,
    running: Mutex<Option<std::thread::ThreadId>>,
    stopped: Condvar,
    pub(crate) wakers: Mutex<Vec<Waker>>,
    /// The same state for async code: 0 running, 1 draining, 2 forced.
    pub(crate) level: tokio::sync::watch::Sender<u8>,
    /// Connection tasks waiting for the stop, woken all at once by it.
    pub(crate) stop_waiters: WakeList,
    /// How long a drain may last before everything is cut.
    drain_timeout: Duration,
    /// Set once the drain deadline's watchdog is running.
    watchdog: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stop", &self.stop.is_triggered())
            .field("force", &self.force.is_triggered())
            .field("active", &self.tracker.active())
            .finish()
    }
}

impl Shared {
    pub(crate) fn new(drain_timeout: Duration) -> io::Result<Shared> {
        Ok(Shared {
            drain_timeout,
            watchdog: AtomicBool::new(false),
            stop: Signal::new()?,
            force: Signal::new()?,
            tracker: Arc::new(Tracker::default()),
            running: Mutex::new(None),
            stopped: Condvar::new(),
            wakers: Mutex::new(Vec::new()),
            level: tokio::sync::watch::channel(0).0,
            stop_waiters: WakeList::default(),
        })
    }

    /// Stop accepting and drain.
    pub(crate) fn begin_stop(self: &Arc<Self>) {
        self.stop.trigger();
        self.level.send_if_modified(|l| {
            let changed = *l < 1;
            *l = (*l).max(1);
            changed
        });
        self.stop_waiters.wake_all();
        self.start_watchdog();
    }

    /// The drain deadline is kept by a thread of its own, not by the serving
    /// thread: in sequential mode that thread is busy serving the very
    /// connection that may be holding the drain up.
    fn start_watchdog(self: &Arc<Self>) {
        if self.watchdog.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("sockserv-drain".into())
            .spawn(move || {
                let deadline = Instant::now() + shared.drain_timeout;
                loop {
                    if shared.tracker.wait_idle(Some(
                        deadline.min(Instant::now() + Duration::from_millis(100)),
                    )) || shared.force.is_triggered()
                    {
                        return;
                    }
                    if Instant::now() >= deadline {
                        shared.begin_force();
                        return;
                    }
                }
            });
        if spawned.is_err() {
            self.watchdog.store(false, Ordering::SeqCst);
        }
    }

    /// Cut everything now: every tracked socket is shut down, so blocked
    /// reads and writes end and their handlers return.
    pub(crate) fn begin_force(&self) {
        self.stop.trigger();
        self.force.trigger();
        self.level.send_replace(2);
        self.stop_waiters.wake_all();
        self.tracker.cut_all();
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in self.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            w();
        }
    }

    /// Marks the serving thread as running; the guard marks it stopped.
    pub(crate) fn enter_serving(self: &Arc<Self>) -> ServingGuard {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
        ServingGuard {
            shared: Arc::clone(self),
        }
    }
}

/// Dropped when `serve_forever` returns, however it returns.
pub(crate) struct ServingGuard {
    shared: Arc<Shared>,
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.stopped.notify_all();
    }
}

impl ShutdownHandle {
    /// Asks the server to stop and waits until `serve_forever` has returned.
    ///
    /// Called a second time (from another thread while the first waits), it
    /// skips the rest of the drain and cuts every connection. Called from a
    /// thread of the server itself (a handler, in any strategy), it only
    /// requests the stop and returns at once, rather than deadlock the way
    /// Python's `shutdown()` does there.
    pub fn shutdown(&self) {
        if on_server_thread() {
            // A handler asking its own server to stop: waiting here would
            // wait for this very thread. Request it and return.
            self.request();
            return;
        }
        self.request();
        let mut running = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while let Some(id) = *running {
            if id == std::thread::current().id() {
                return;
            }
            running = self
                .shared
                .stopped
                .wait(running)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Asks the server to stop and returns at once. A second request forces
    /// the stop (no more draining), like a second Ctrl-C.
    pub fn request(&self) {
        if self.shared.stop.is_triggered() {
            self.shared.begin_force();
        } else {
            self.shared.begin_stop();
        }
        self.shared.wake_all();
    }

    /// Skips draining: cuts every connection now.
    pub fn force(&self) {
        self.shared.begin_force();
        self.shared.wake_all();
    }

    /// True once a shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.shared.stop.is_triggered()
    }

    /// Number of connections (and datagram jobs) currently being served.
    pub fn active_connections(&self) -> usize {
        self.shared.tracker.active()
    }
}

/// Wakers of async connection tasks that wait for the stop signal.
///
/// A task registers once for its whole life and the registration is never
/// touched on the per-message path: waiting for "data or stop" costs an
/// atomic load, where a `watch::Receiver::changed()` per wait would take a
/// mutex shared by every connection twice per message.
#[derive(Default)]
pub(crate) struct WakeList {
    slots: Mutex<(Vec<Option<std::task::Waker>>, Vec<usize>)>,
}

impl WakeList {
    fn register(&self, waker: &std::task::Waker) -> usize {
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (slots, free) = &mut *g;
        match free.pop() {
            Some(i) => {
                slots[i] = Some(waker.clone());
                i
            }
            None => {
                slots.push(Some(waker.clone()));
                slots.len() - 1
            }
        }
    }

    fn unregister(&self, key: usize) {
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (slots, free) = &mut *g;
        if let Some(slot) = slots.get_mut(key) {
            *slot = None;
            free.push(key);
        }
    }

    fn wake_all(&self) {
        let wakers: Vec<_> = {
            let g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            g.0.iter().flatten().cloned().collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// Resolves when the server stops (to `true` when the stop is forced).
/// Keep one per connection and poll it by reference: it registers its
/// task's waker on the first poll and unregisters on drop.
pub(crate) struct StopWait<'a> {
    shared: &'a Shared,
    key: Option<usize>,
}

impl<'a> StopWait<'a> {
    pub(crate) fn new(shared: &'a Shared) -> Self {
        StopWait { shared, key: None }
    }

    fn level(&self) -> u8 {
        if self.shared.force.is_triggered() {
            2
        } else if self.shared.stop.is_triggered() {
            1
        } else {
            0
        }
    }
}

impl std::future::Future for StopWait<'_> {
    type Output = bool;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<bool> {
        let level = self.level();
        if level > 0 {
            return std::task::Poll::Ready(level == 2);
        }
        if self.key.is_none() {
            self.key = Some(self.shared.stop_waiters.register(cx.waker()));
            // The stop may have fired between the check and the
            // registration: look again.
            let level = self.level();
            if level > 0 {
                return std::task::Poll::Ready(level == 2);
            }
        }
        std::task::Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.shared.stop_waiters.unregister(key);
        }
    }
}
