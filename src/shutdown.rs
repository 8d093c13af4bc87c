//! Shutdown: one stop state every part of a server can wait on, and a
//! handle to raise it from any thread.
//!
//! The shape follows tokio's mini-redis: one broadcast-style signal tells
//! everybody to stop, and a drop guard held by each connection
//! (`crate::tracker`) tells the server when they all have. The state has
//! three levels — running, draining, forced — and moves only forward. Each
//! level past running has an `eventfd` that becomes readable once and stays
//! readable, so a thread blocked in `poll` on its socket wakes at once, an
//! event loop sees it as one more event, async code awaits it, and a waiter
//! that starts later never misses it: no polling interval anywhere.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::tracker::Tracker;

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

/// The server's stop state: it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StopLevel {
    /// Serving.
    Running,
    /// Stop accepting; connections answer what they have read and close.
    Draining,
    /// Cut everything now (a second request, or the drain deadline).
    Forced,
}

/// The one stop state, with an fd per level to poll and an async wait.
pub(crate) struct Stop {
    level: AtomicU8,
    drain: Signal,
    force: Signal,
    waiters: WakeList,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stop({:?})", self.level())
    }
}

impl Stop {
    fn new() -> io::Result<Stop> {
        Ok(Stop {
            level: AtomicU8::new(0),
            drain: Signal::new()?,
            force: Signal::new()?,
            waiters: WakeList::default(),
        })
    }

    #[inline]
    pub(crate) fn level(&self) -> StopLevel {
        match self.level.load(Ordering::Acquire) {
            0 => StopLevel::Running,
            1 => StopLevel::Draining,
            _ => StopLevel::Forced,
        }
    }

    /// The state as the status page names it.
    pub(crate) fn serve_state(&self) -> crate::stats::ServeState {
        match self.level() {
            StopLevel::Running => crate::stats::ServeState::Running,
            StopLevel::Draining => crate::stats::ServeState::Draining,
            StopLevel::Forced => crate::stats::ServeState::Forced,
        }
    }

    /// True from the moment a drain starts.
    #[inline]
    pub(crate) fn is_stopping(&self) -> bool {
        self.level.load(Ordering::Acquire) != 0
    }

    #[inline]
    pub(crate) fn is_forced(&self) -> bool {
        self.level.load(Ordering::Acquire) == 2
    }

    /// The descriptor that becomes (and stays) readable once the state
    /// reaches `at` (Draining or Forced).
    pub(crate) fn fd(&self, at: StopLevel) -> RawFd {
        match at {
            StopLevel::Forced => self.force.raw_fd(),
            _ => self.drain.raw_fd(),
        }
    }

    /// The signal for a level, for `wait_fd`.
    pub(crate) fn signal(&self, at: StopLevel) -> &Signal {
        match at {
            StopLevel::Forced => &self.force,
            _ => &self.drain,
        }
    }

    /// Moves the state forward to `to`; false if it was there already.
    fn raise(&self, to: StopLevel) -> bool {
        let want = to as u8;
        let was = self.level.fetch_max(want, Ordering::AcqRel);
        if was >= want {
            return false;
        }
        self.drain.trigger();
        if to == StopLevel::Forced {
            self.force.trigger();
        }
        self.waiters.wake_all();
        true
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

pub(crate) use crate::tracker::Waker;

/// State shared by a server, its engines and its handles.
pub(crate) struct Shared {
    pub(crate) stop: Stop,
    pub(crate) tracker: Arc<Tracker>,
    running: Mutex<Option<std::thread::ThreadId>>,
    stopped: Condvar,
    pub(crate) wakers: Mutex<Vec<Waker>>,
    /// How long a drain may last before everything is cut.
    grace: Duration,
    /// When the drain that has begun must end: set once, at the stop, and
    /// read by everything that waits for it.
    deadline: std::sync::OnceLock<Instant>,
    /// Set once the drain deadline's watchdog is running.
    watchdog: AtomicBool,
    /// The stop is a handoff: another process holds the listening sockets
    /// too (a binary upgrade), so the drain must leave them as they are —
    /// no filter dropping new SYNs (it would be the successor's too), no
    /// Unix socket file removed.
    handoff: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stop", &self.stop.level())
            .field("active", &self.tracker.active())
            .finish()
    }
}

impl Shared {
    pub(crate) fn new(grace: Duration) -> io::Result<Shared> {
        Ok(Shared {
            grace,
            deadline: std::sync::OnceLock::new(),
            watchdog: AtomicBool::new(false),
            handoff: AtomicBool::new(false),
            stop: Stop::new()?,
            tracker: Arc::new(Tracker::default()),
            running: Mutex::new(None),
            stopped: Condvar::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    /// Stop accepting and drain.
    pub(crate) fn begin_stop(self: &Arc<Self>) {
        let _ = self.deadline.set(Instant::now() + self.grace);
        if self.stop.raise(StopLevel::Draining) {
            self.start_watchdog();
        }
        self.wake_all();
    }

    /// True if the stop hands the listening sockets to a successor
    /// ([`ShutdownHandle::hand_off`]): read once per listener at the drain,
    /// never on the accept path.
    pub(crate) fn handed_off(&self) -> bool {
        self.handoff.load(Ordering::Acquire)
    }

    /// How many connections a listener's last accepts at the drain may
    /// take. A plain stop: its backlog twice over (what was queued, and
    /// the handshakes under way when new SYNs began to be dropped). A
    /// handoff: a turn's worth, only so that a wake-up this server took
    /// from the successor (a loop of ours was waiting in epoll when the
    /// connection came) is not left unanswered; with no filter the queue
    /// refills at the rate clients connect, and the successor — woken for
    /// every connection that came while we were not waiting — takes them.
    pub(crate) fn last_accepts(&self, backlog: i32) -> usize {
        if self.handed_off() {
            64
        } else {
            2 * backlog.max(1) as usize
        }
    }

    /// The drain deadline is kept here, once, by a thread of its own — not
    /// by the serving thread: in sequential mode that thread is busy
    /// serving the very connection that may be holding the drain up.
    fn start_watchdog(self: &Arc<Self>) {
        if self.watchdog.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("sockserv-drain".into())
            .spawn(move || {
                let deadline = shared.drain_deadline();
                loop {
                    if shared.tracker.wait_idle(Some(
                        deadline.min(Instant::now() + Duration::from_millis(100)),
                    )) || shared.stop.is_forced()
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
            // No thread for the watchdog: the serving thread's own wait
            // still ends at the deadline (see `Server::finish_drain`).
            self.watchdog.store(false, Ordering::SeqCst);
        }
    }

    /// The drain's one deadline (from the moment the stop began).
    pub(crate) fn drain_deadline(&self) -> Instant {
        *self.deadline.get_or_init(|| Instant::now() + self.grace)
    }

    /// Cut everything now: every tracked socket is shut down, so blocked
    /// reads and writes end and their handlers return.
    pub(crate) fn begin_force(&self) {
        self.stop.raise(StopLevel::Forced);
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
        self.request();
        if on_server_thread() {
            // A handler asking its own server to stop: waiting here would
            // wait for this very thread.
            return;
        }
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
        if self.shared.stop.is_stopping() {
            self.shared.begin_force();
        } else {
            self.shared.begin_stop();
        }
    }

    /// Stops accepting and drains, leaving the listening sockets to a
    /// successor that holds them too (a binary upgrade, the successor
    /// started with the sockets inherited): what is queued in their
    /// backlogs stays for whoever accepts next, no filter is put on them
    /// (it would drop the successor's new connections as well) and no Unix
    /// socket file is removed. Connections in flight drain as with
    /// [`request`](Self::request). Returns at once. Once a plain stop has
    /// begun it is too late to hand off: the sockets may already be closed
    /// or filtered, and this returns false.
    pub fn hand_off(&self) -> bool {
        if self.shared.stop.is_stopping() {
            return false;
        }
        self.shared.handoff.store(true, Ordering::Release);
        self.shared.begin_stop();
        true
    }

    /// Skips draining: cuts every connection now.
    pub fn force(&self) {
        self.shared.begin_force();
    }

    /// True once a shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.shared.stop.is_stopping()
    }

    /// What the server can tell about itself now: counters per listener,
    /// up to `connections` open connections (the most recently active)
    /// and up to `closed` recently closed ones. Costs a pass over the open
    /// connections; nothing on the data path waits for it.
    pub fn snapshot(&self, connections: usize, closed: usize) -> crate::stats::Snapshot {
        self.shared
            .tracker
            .snapshot(self.shared.stop.serve_state(), connections, closed)
    }

    /// Number of connections (and datagram jobs) currently being served.
    pub fn active_connections(&self) -> usize {
        self.shared.tracker.active()
    }
}

/// Wakers of async tasks that wait for the stop, woken all at once by it.
///
/// A task registers once for its whole life and the registration is never
/// touched on its per-message path.
#[derive(Default)]
struct WakeList {
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

/// Resolves once the stop state reaches `at`. Keep one per task and poll it
/// by reference: it registers its task's waker on the first poll and
/// unregisters on drop.
pub(crate) struct StopWait {
    shared: Arc<Shared>,
    at: StopLevel,
    key: Option<usize>,
}

impl StopWait {
    pub(crate) fn new(shared: Arc<Shared>, at: StopLevel) -> Self {
        StopWait {
            shared,
            at,
            key: None,
        }
    }
}

impl std::future::Future for StopWait {
    type Output = StopLevel;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<StopLevel> {
        let level = self.shared.stop.level();
        if level >= self.at {
            return std::task::Poll::Ready(level);
        }
        if self.key.is_none() {
            self.key = Some(self.shared.stop.waiters.register(cx.waker()));
            // The stop may have come between the check and the
            // registration: look again.
            let level = self.shared.stop.level();
            if level >= self.at {
                return std::task::Poll::Ready(level);
            }
        }
        std::task::Poll::Pending
    }
}

impl Drop for StopWait {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.shared.stop.waiters.unregister(key);
        }
    }
}

/// Waits for `threads` to finish, but not past `deadline`: a thread a
/// handler holds forever must not hold the shutdown. Returns how many were
/// left behind (detached).
pub(crate) fn join_until(threads: Vec<std::thread::JoinHandle<()>>, deadline: Instant) -> usize {
    join_until_all(threads, deadline).len()
}

/// [`join_until`], returning the threads still running at the deadline.
pub(crate) fn join_until_all(
    threads: Vec<std::thread::JoinHandle<()>>,
    deadline: Instant,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut pending = threads;
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|t| !t.is_finished());
        if !pending.is_empty() {
            // Threads have no "wait until any finishes with a timeout":
            // look again shortly (bounded by the deadline).
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    pending
}
