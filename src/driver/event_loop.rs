//! The event-loop driver: one thread serves many connections straight from
//! epoll readiness events — read, run the pipeline, write, in the same turn
//! — with no task, future or waker per connection. Each loop accepts from
//! the listeners itself (one wake-up per new connection, on the thread that
//! will serve it), through the same gate as every strategy
//! ([`crate::accept`]).
//!
//! Handlers run inline on the loop, or — for the pool strategy and for
//! handlers marked blocking — on worker threads: the loop hands a
//! connection's session with the bytes read to a worker, stops reading that
//! connection until the worker hands it back, and so keeps its replies in
//! order while other connections go on.
//!
//! Stop: at the drain each loop accepts what is already in its listeners'
//! backlogs (those clients connected before the stop and are served like
//! any draining connection), lets go of the listeners, tells every
//! connection, and runs until the last one closes; at a forced stop it
//! closes them all.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

pub(crate) use super::mailbox::{Mailbox, Msg};
use crate::accept::{Accepted, Acceptor, SharedListener};
use crate::context::Context;
use crate::dgram::{DgramServer, DgramSocket};
use crate::pipeline::{Conn, Next};
use crate::shutdown::StopLevel;
use crate::socket::Stream;
use crate::strategy::pool::Workers;
use crate::tracker::TrackGuard;

/// Scratch read buffer per loop.
const SCRATCH: usize = 64 * 1024;

/// Reads one connection may make per turn before the others get theirs.
const READS_PER_TURN: u32 = 4;

/// Connections one listener may hand a loop per turn.
const ACCEPTS_PER_TURN: usize = 64;

const WAKER: Token = Token(usize::MAX);
const DRAIN: Token = Token(usize::MAX - 1);
const FORCE: Token = Token(usize::MAX - 2);
/// Listener `i` is `LISTENER_BASE - i`; datagram socket `j` is
/// `DGRAM_BASE - j` (at most `MAX_SOCKETS` of each); connections count up
/// from 0.
const MAX_SOCKETS: usize = 1024;
const LISTENER_BASE: usize = usize::MAX - 16;
const DGRAM_BASE: usize = LISTENER_BASE - MAX_SOCKETS;

/// A set of event loops: the engine of the event-loop and pool strategies.
pub(crate) struct EventLoops {
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Loops that have taken their listeners' backlog at the drain.
    swept: Arc<(Mutex<usize>, std::sync::Condvar)>,
}

impl EventLoops {
    /// Starts `loops` threads serving `listeners` (every loop accepts from
    /// each) and `dgrams` (each served by one loop). Every fallible step
    /// (pollers, registrations, threads) happens here, before the server
    /// listens; if one fails the loops already started are stopped.
    pub(crate) fn start(
        ctx: &Arc<Context>,
        loops: usize,
        listeners: Vec<Arc<SharedListener>>,
        dgrams: Vec<(Arc<DgramSocket>, usize)>,
        workers: Option<Arc<Workers>>,
    ) -> io::Result<EventLoops> {
        let loops = loops.max(1);
        let mut set = EventLoops {
            mailboxes: Vec::new(),
            threads: Mutex::new(Vec::new()),
            swept: Arc::new((Mutex::new(0), std::sync::Condvar::new())),
        };
        let mut prepared = Vec::new();
        for i in 0..loops {
            let poll = Poll::new()?;
            let mailbox = Arc::new(Mailbox {
                items: Mutex::new(Vec::new()),
                waker: mio::Waker::new(poll.registry(), WAKER)?,
            });
            let stop = &ctx.shared.stop;
            poll.registry().register(
                &mut SourceFd(&stop.fd(StopLevel::Draining)),
                DRAIN,
                Interest::READABLE,
            )?;
            poll.registry().register(
                &mut SourceFd(&stop.fd(StopLevel::Forced)),
                FORCE,
                Interest::READABLE,
            )?;
            for (k, l) in listeners.iter().enumerate() {
                register_exclusive(&poll, l.listener.raw_fd(), Token(LISTENER_BASE - k))?;
            }
            let mine: Vec<_> = dgrams
                .iter()
                .enumerate()
                .filter(|(j, _)| j % loops == i)
                .map(|(j, (s, l))| (j, Arc::clone(s), *l))
                .collect();
            for (j, s, _) in &mine {
                s.set_nonblocking(true)?;
                poll.registry().register(
                    &mut SourceFd(&s.as_raw_fd()),
                    Token(DGRAM_BASE - j),
                    Interest::READABLE,
                )?;
            }
            set.mailboxes.push(Arc::clone(&mailbox));
            prepared.push((poll, mailbox, mine));
        }
        for (i, (poll, mailbox, mine)) in prepared.into_iter().enumerate() {
            // A connection that finishes while accepting is paused at the
            // limit wakes the loops (the waker holds no configuration).
            let m = Arc::clone(&mailbox);
            ctx.shared.tracker.on_free(Box::new(move || m.wake()));
            let mut state = Loop::new(
                Arc::clone(ctx),
                poll,
                mailbox,
                listeners.clone(),
                mine,
                workers.clone(),
            );
            state.swept = Some(Arc::clone(&set.swept));
            let spawned = std::thread::Builder::new()
                .name(format!("sockserv-loop-{i}"))
                .spawn(move || {
                    crate::shutdown::mark_server_thread();
                    let mut state = state;
                    state.run();
                });
            match spawned {
                Ok(t) => set
                    .threads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t),
                // Dropping `set` stops the loops already running.
                Err(e) => return Err(e),
            }
        }
        Ok(set)
    }

    /// Waits (until `deadline`) for every loop to have accepted its
    /// listeners' backlog after the stop, so the drain counts those
    /// connections too.
    pub(crate) fn wait_swept(&self, deadline: Instant) {
        let (count, cv) = &*self.swept;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n < self.mailboxes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = cv
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits for the loops to finish (they do once their connections have
    /// closed after a stop), but not past `deadline`: a handler that blocks
    /// its loop forever must not hold the shutdown. Such a loop is left
    /// behind and reported.
    pub(crate) fn join(&self, deadline: Instant) {
        let pending: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        // The loops leave by themselves once their connections are done;
        // only those still running at the deadline are told to quit (which
        // closes what they hold).
        let pending = crate::shutdown::join_until_all(pending, deadline);
        for m in &self.mailboxes {
            m.send(Msg::Quit);
        }
        let left =
            crate::shutdown::join_until(pending, Instant::now() + Duration::from_millis(100));
        if left > 0 {
            tracing::warn!("{left} event loop(s) blocked by a handler were left behind");
        }
    }
}

impl Drop for EventLoops {
    fn drop(&mut self) {
        for m in &self.mailboxes {
            m.send(Msg::Quit);
        }
    }
}

/// Registers a listener in one loop's epoll so that a new connection wakes
/// one loop, not all of them (EPOLLEXCLUSIVE), edge-triggered like every
/// mio registration.
fn register_exclusive(poll: &Poll, fd: i32, token: Token) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
        u64: token.0 as u64,
    };
    // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
    let r = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn deregister_raw(poll: &Poll, fd: i32) {
    // SAFETY: removing a registration; a stale fd only yields an error.
    unsafe {
        libc::epoll_ctl(
            poll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        );
    }
}

/// One connection on a loop.
struct Entry {
    // The guard is declared first: it unregisters the socket before the
    // socket closes.
    guard: TrackGuard,
    sock: Stream,
    conn: Conn,
    gen: u32,
    /// The deadline a timer is queued for, if any.
    timer: Option<Instant>,
    /// Queued to run again next turn (at most once).
    again: bool,
    /// An event reported the peer's close or an error: every read goes on
    /// until it would block (that end of stream makes no new edge).
    closing: bool,
}

/// One loop's state.
struct Loop {
    ctx: Arc<Context>,
    poll: Poll,
    mailbox: Arc<Mailbox>,
    listeners: Vec<Option<(Arc<SharedListener>, Acceptor)>>,
    dgrams: Vec<(usize, DgramServer)>,
    workers: Option<Arc<Workers>>,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    gens: Vec<u32>,
    live: usize,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Connections with work left that need no new event (fairness).
    again: Vec<(usize, u32)>,
    /// Listeners or datagram sockets with work left.
    accept_again: Vec<usize>,
    dgram_again: Vec<usize>,
    scratch: Vec<u8>,
    /// Told once this loop has taken its backlog at the drain.
    swept: Option<Arc<(Mutex<usize>, std::sync::Condvar)>>,
    level: StopLevel,
    now: Instant,
    quit: bool,
}

impl Loop {
    fn new(
        ctx: Arc<Context>,
        poll: Poll,
        mailbox: Arc<Mailbox>,
        listeners: Vec<Arc<SharedListener>>,
        dgrams: Vec<(usize, Arc<DgramSocket>, usize)>,
        workers: Option<Arc<Workers>>,
    ) -> Loop {
        let policy = ctx.datagrams;
        let meters = ctx.shared.tracker.meters();
        let meter = |l: usize| meters.and_then(|m| m.listener(l)).cloned();
        Loop {
            listeners: listeners
                .into_iter()
                .map(|l| Some((l, Acceptor::default())))
                .collect(),
            dgrams: dgrams
                .into_iter()
                .map(|(j, s, l)| (j, DgramServer::new(s, policy, true).with_meter(meter(l))))
                .collect(),
            ctx,
            poll,
            mailbox,
            workers,
            slots: Vec::new(),
            free: Vec::new(),
            gens: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
            again: Vec::new(),
            accept_again: Vec::new(),
            dgram_again: Vec::new(),
            scratch: vec![0u8; SCRATCH],
            swept: None,
            level: StopLevel::Running,
            now: Instant::now(),
            quit: false,
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        // Whatever arrived before the loop started.
        self.accept_again = (0..self.listeners.len()).collect();
        self.dgram_again = (0..self.dgrams.len()).collect();
        loop {
            if self.quit || (self.level != StopLevel::Running && self.live == 0) {
                break;
            }
            let busy = !self.again.is_empty()
                || !self.accept_again.is_empty()
                || !self.dgram_again.is_empty();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.next_timeout()
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("event loop failed: {e}");
                break;
            }
            self.now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.mail(),
                    DRAIN | FORCE => self.stop_changed(),
                    Token(t) if t > DGRAM_BASE - MAX_SOCKETS && t <= DGRAM_BASE => {
                        self.serve_dgram(DGRAM_BASE - t);
                    }
                    Token(t) if t > DGRAM_BASE && t <= LISTENER_BASE => {
                        if self.level == StopLevel::Running {
                            self.accept(LISTENER_BASE - t);
                        }
                    }
                    Token(slot) => {
                        if let Some(gen) = self.gens.get(slot).copied() {
                            if ev.is_read_closed() || ev.is_error() {
                                if let Some(Some(e)) = self.slots.get_mut(slot) {
                                    e.closing = true;
                                }
                            }
                            self.drive(slot, gen);
                        }
                    }
                }
            }
            for (slot, gen) in std::mem::take(&mut self.again) {
                if let Some(Some(e)) = self.slots.get_mut(slot) {
                    e.again = false;
                }
                self.drive(slot, gen);
            }
            if self.level == StopLevel::Running {
                for k in std::mem::take(&mut self.accept_again) {
                    self.accept(k);
                }
                self.retry_accepts();
            }
            for j in std::mem::take(&mut self.dgram_again) {
                self.serve_dgram_index(j);
            }
            self.fire_timers();
        }
        // Quit or done: close what is left (the guards unregister first).
        self.slots.clear();
    }

    fn next_timeout(&self) -> Option<Duration> {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let retry = self
            .listeners
            .iter()
            .flatten()
            .filter_map(|(_, a)| a.retry_at)
            .min();
        let soonest = match (timer, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        soonest.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn mail(&mut self) {
        let items =
            std::mem::take(&mut *self.mailbox.items.lock().unwrap_or_else(|p| p.into_inner()));
        for msg in items {
            match msg {
                Msg::Quit => self.quit = true,
                Msg::Done { slot, gen, work } => {
                    let ctx = Arc::clone(&self.ctx);
                    let Some(handler) = ctx.message_handler() else {
                        continue;
                    };
                    if let Some(Some(e)) = self.slots.get_mut(slot) {
                        if e.gen == gen {
                            e.conn.offload_done(*work, self.now, &ctx.ctx(handler));
                            self.drive(slot, gen);
                        }
                    }
                }
            }
        }
        // A connection finished while accepting was paused at the limit.
        if self.level == StopLevel::Running {
            for k in 0..self.listeners.len() {
                if self.listeners[k].as_ref().is_some_and(|(_, a)| a.paused) {
                    self.accept(k);
                }
            }
        }
    }

    fn retry_accepts(&mut self) {
        let now = self.now;
        for k in 0..self.listeners.len() {
            let due = self.listeners[k]
                .as_ref()
                .is_some_and(|(_, a)| a.retry_at.is_some_and(|t| t <= now));
            if due {
                self.accept(k);
            }
        }
    }

    /// Accepts from listener `k` (at most a turn's worth).
    fn accept(&mut self, k: usize) {
        if self.accept_up_to(k, ACCEPTS_PER_TURN) {
            self.accept_again.push(k);
        }
    }

    /// Accepts from listener `k` until it has nobody waiting (or must
    /// pause) or `most` were taken; true in the second case.
    fn accept_up_to(&mut self, k: usize, most: usize) -> bool {
        for _ in 0..most {
            let Some((l, acceptor)) = self.listeners[k].as_mut() else {
                return false;
            };
            match acceptor.accept(l, &self.ctx) {
                Accepted::Conn(a) => {
                    let conn = self.ctx.new_conn(a.peer, a.listener, self.now);
                    self.insert(a.guard, a.stream, conn);
                }
                Accepted::Refused => {}
                Accepted::Empty | Accepted::Paused | Accepted::Backoff => return false,
            }
        }
        true
    }

    fn insert(&mut self, guard: TrackGuard, sock: Stream, conn: Conn) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                self.slots.len() - 1
            }
        };
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        let gen = self.gens[slot];
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::debug!("cannot serve an accepted connection: {e}");
            self.free.push(slot);
            drop(guard);
            drop(sock);
            return;
        }
        self.slots[slot] = Some(Entry {
            guard,
            sock,
            conn,
            gen,
            timer: None,
            again: false,
            closing: false,
        });
        self.live += 1;
        // Serve at once: the request is often there already.
        self.drive(slot, gen);
    }

    fn remove(&mut self, slot: usize) {
        if let Some(e) = self.slots[slot].take() {
            if let Some(m) = e.guard.meter() {
                e.conn.publish(m);
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&e.sock.as_raw_fd()));
            let Entry { guard, sock, .. } = e;
            drop(guard);
            drop(sock);
            self.free.push(slot);
            self.live -= 1;
        }
    }

    /// Runs one connection until it has to wait, then publishes its
    /// numbers for the status page (a few relaxed stores).
    fn drive(&mut self, slot: usize, gen: u32) {
        self.drive_io(slot, gen);
        if let Some(Some(e)) = self.slots.get(slot) {
            if let Some(m) = e.guard.meter() {
                e.conn.publish(m);
            }
        }
    }

    fn drive_io(&mut self, slot: usize, gen: u32) {
        let now = self.now;
        let ctx = Arc::clone(&self.ctx);
        let Some(handler) = ctx.message_handler() else {
            return;
        };
        let c = ctx.ctx(handler);
        let mut reads = 0;
        // A short read drained the socket: after writing the replies, wait
        // for the next readiness event instead of reading into EAGAIN (one
        // system call per message saved; the next data is a new event).
        let mut drained = false;
        loop {
            let Some(Some(e)) = self.slots.get_mut(slot) else {
                return;
            };
            if e.gen != gen {
                return;
            }
            match e.conn.next() {
                Next::Close => {
                    self.remove(slot);
                    return;
                }
                Next::Busy => return,
                Next::Admit => ctx.admit(&mut e.conn, &mut e.guard, now),
                Next::Resume => match &self.workers {
                    Some(w) => {
                        if let Some(work) = e.conn.offload(&[], now, &c) {
                            w.submit_frames(work, slot, gen, &self.mailbox);
                        }
                    }
                    None => e.conn.resume(now, &c),
                },
                Next::ShutdownWrite => {
                    let _ = e.sock.shutdown(std::net::Shutdown::Write);
                    e.conn.shut_down(now);
                }
                Next::Write => match (&e.sock).write(e.conn.output()) {
                    Ok(n) => e.conn.wrote(n, now),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        self.wait(slot);
                        return;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => e.conn.failed(err, &c),
                },
                Next::Read => {
                    if drained {
                        if e.conn.is_lingering() {
                            e.conn.unacked(super::unacked(e.sock.as_raw_fd()));
                            if e.conn.next() == Next::Close {
                                continue;
                            }
                        }
                        self.wait(slot);
                        return;
                    }
                    if reads >= READS_PER_TURN {
                        // Let the loop's other connections have a turn.
                        if !e.again {
                            e.again = true;
                            self.again.push((slot, gen));
                        }
                        return;
                    }
                    match (&e.sock).read(&mut self.scratch) {
                        Ok(0) => e.conn.eof(now, &c),
                        Ok(n) => {
                            reads += 1;
                            let data = &self.scratch[..n];
                            match &self.workers {
                                Some(w) => {
                                    if let Some(work) = e.conn.offload(data, now, &c) {
                                        w.submit_frames(work, slot, gen, &self.mailbox);
                                    }
                                }
                                None => e.conn.received(data, now, &c),
                            }
                            if n < self.scratch.len() && !e.closing {
                                drained = true;
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            if e.conn.is_lingering() {
                                e.conn.unacked(super::unacked(e.sock.as_raw_fd()));
                                if e.conn.next() == Next::Close {
                                    continue;
                                }
                            }
                            if e.conn.deadline().is_some_and(|d| d <= now) {
                                e.conn.timeout(now, &c);
                                continue;
                            }
                            self.wait(slot);
                            return;
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => e.conn.failed(err, &c),
                    }
                }
            }
        }
    }

    /// The connection waits for its socket: queue a timer for its
    /// deadline unless an earlier one is queued already.
    fn wait(&mut self, slot: usize) {
        let Some(Some(e)) = self.slots.get_mut(slot) else {
            return;
        };
        if let Some(d) = e.conn.deadline() {
            if e.timer.is_none_or(|t| d < t) {
                e.timer = Some(d);
                self.timers.push(Reverse((d, slot, e.gen)));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        // Entries of closed connections are dropped lazily; a peer that
        // churns connections under a long idle timeout must not grow the
        // heap: rebuild it when most of it is stale.
        if self.timers.len() > 2 * self.live + 1024 {
            let slots = &self.slots;
            self.timers.retain(|Reverse((t, slot, gen))| {
                matches!(slots.get(*slot), Some(Some(e)) if e.gen == *gen && e.timer == Some(*t))
            });
        }
        while let Some(Reverse((t, slot, gen))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let ctx = Arc::clone(&self.ctx);
            let Some(handler) = ctx.message_handler() else {
                return;
            };
            let Some(Some(e)) = self.slots.get_mut(slot) else {
                continue;
            };
            if e.gen != gen || e.timer != Some(t) {
                continue;
            }
            e.timer = None;
            if e.conn.is_lingering() {
                e.conn.unacked(super::unacked(e.sock.as_raw_fd()));
            }
            if e.conn.deadline().is_some_and(|d| d <= now) {
                e.conn.timeout(now, &ctx.ctx(handler));
            }
            self.drive(slot, gen);
        }
    }

    fn serve_dgram(&mut self, j: usize) {
        if let Some(i) = self.dgrams.iter().position(|(k, _)| *k == j) {
            self.serve_dgram_index(i);
        }
    }

    fn serve_dgram_index(&mut self, i: usize) {
        if self.level != StopLevel::Running {
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        let Some((_, server)) = self.dgrams.get_mut(i) else {
            return;
        };
        let drained = match &self.workers {
            Some(w) => w.take_datagrams(server, &ctx),
            None => server.serve_ready(&ctx),
        };
        if !drained {
            self.dgram_again.push(i);
        }
    }

    /// The stop state moved on.
    fn stop_changed(&mut self) {
        let level = self.ctx.shared.stop.level();
        if level == self.level {
            return;
        }
        let was = self.level;
        self.level = level;
        if was == StopLevel::Running {
            // Clients whose connection the kernel completed before the
            // stop are in the backlog: serve them like any draining
            // connection, then let go of the listener (the last loop to
            // let go closes it).
            self.level = StopLevel::Running;
            for k in 0..self.listeners.len() {
                self.sweep(k);
            }
            self.level = level;
            for slot in self.listeners.iter_mut() {
                if let Some((l, _)) = slot.take() {
                    deregister_raw(&self.poll, l.listener.raw_fd());
                }
            }
            for (_, d) in self.dgrams.drain(..) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&d.socket.as_raw_fd()));
            }
            if let Some(swept) = &self.swept {
                *swept.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                swept.1.notify_all();
            }
        }
        let forced = level == StopLevel::Forced;
        let now = self.now;
        for slot in 0..self.slots.len() {
            let Some(Some(e)) = self.slots.get_mut(slot) else {
                continue;
            };
            e.conn.stop(forced, now);
            let gen = e.gen;
            self.drive(slot, gen);
        }
    }

    /// Accepts what is waiting on listener `k` at the stop, once the
    /// listener has stopped starting handshakes: the backlog, and the
    /// handshakes that were under way (bounded all the same).
    fn sweep(&mut self, k: usize) {
        // A listener handed to a successor is shared with it: a filter
        // would drop the successor's new connections too.
        if let Some((l, _)) = self.listeners[k].as_ref() {
            if !self.ctx.shared.handed_off() {
                l.listener.stop_handshakes();
            }
        }
        let most = self.ctx.shared.last_accepts(self.ctx.options.backlog);
        self.accept_up_to(k, most);
    }
}
