//! The async engine: one tokio event loop (a current-thread runtime) per
//! worker thread, fed connections by the server's accept loop round-robin —
//! the layout actix-server uses, and the one that avoids work-stealing
//! overhead on a per-message path.
//!
//! Message handlers run inside the loop: a connection owns no read buffer
//! while idle (reads go into one scratch buffer per loop thread, and only an
//! unfinished frame is kept), every frame of a read is handled in order, and
//! all replies of that read leave in one write. Stream handlers block, so
//! they run on the runtime's blocking threads and never stall the loop.
//! Datagram sockets are served by a loop directly.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};

use super::{Engine, Work};
use crate::dgram::{handle_datagram, DgramSocket, MAX_DATAGRAM};
use crate::handler::{Handler, MessageHandler};
use crate::hooks::Failure;
use crate::run;
use crate::server::Config;
use crate::session::{Ctx, Flow, Session};
use crate::shutdown::{StopWait, TrackGuard};
use crate::socket::Stream;

/// Scratch read buffer per loop thread.
const SCRATCH: usize = 64 * 1024;

/// Threads for blocking stream handlers per runtime (tokio's default is
/// 512, which would silently cap a blocking handler's connections).
const MAX_BLOCKING: usize = 10_000;

/// Full reads a connection may make before it lets the other connections
/// of its loop run (fairness toward a client that sends without pause).
const FULL_READS_PER_TURN: u32 = 4;

/// Stop levels sent to every loop.
const RUNNING: u8 = 0;
const FORCE: u8 = 2;

enum Job {
    Work(Work),
    Datagrams(Arc<DgramSocket>),
}

pub(crate) struct AsyncEngine {
    config: Arc<Config>,
    senders: Mutex<Vec<mpsc::UnboundedSender<Job>>>,
    next: AtomicUsize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The work-stealing layout's runtime (none in the loop-per-thread one).
    shared_rt: Mutex<Option<tokio::runtime::Runtime>>,
}

impl AsyncEngine {
    /// The work-stealing layout: one tokio multi-thread runtime with
    /// `workers` threads; connections are spawned onto it and any idle
    /// worker may steal them.
    pub(crate) fn multi_thread(config: Arc<Config>, workers: usize) -> io::Result<AsyncEngine> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .max_blocking_threads(MAX_BLOCKING)
            .thread_name("sockserv-mt")
            .on_thread_start(crate::shutdown::mark_server_thread)
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stop_rx = config.shared.level.subscribe();
        rt.spawn(worker(rx, Arc::clone(&config), stop_rx));
        Ok(AsyncEngine {
            config,
            senders: Mutex::new(vec![tx]),
            next: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            shared_rt: Mutex::new(Some(rt)),
        })
    }

    /// The loop-per-thread layout: `workers` threads, each running its own
    /// current-thread runtime; connections are dealt to them round-robin and
    /// stay on their loop for life (no work stealing, no cross-thread
    /// wake-ups on the per-message path).
    pub(crate) fn new(config: Arc<Config>, workers: usize) -> io::Result<AsyncEngine> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(MAX_BLOCKING)
                .on_thread_start(crate::shutdown::mark_server_thread)
                .enable_all()
                .build()?;
            let config = Arc::clone(&config);
            let stop_rx = config.shared.level.subscribe();
            let t = std::thread::Builder::new()
                .name(format!("sockserv-loop-{i}"))
                .spawn(move || {
                    crate::shutdown::mark_server_thread();
                    rt.block_on(worker(rx, config, stop_rx));
                    // Blocking handlers that ignore their cut sockets must
                    // not hold the server's shutdown: leave them behind.
                    rt.shutdown_background();
                })?;
            senders.push(tx);
            threads.push(t);
        }
        Ok(AsyncEngine {
            config,
            senders: Mutex::new(senders),
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
            shared_rt: Mutex::new(None),
        })
    }

    fn send(&self, job: Job) {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if senders.is_empty() {
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % senders.len();
        let _ = senders[i].send(job);
    }
}

impl Engine for AsyncEngine {
    fn dispatch(&self, work: Work) {
        self.send(Job::Work(work));
    }

    fn stop(&self, deadline: Instant) {
        self.config.shared.level.send_replace(FORCE);
        self.senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Join the loops, but not past the deadline: a message handler that
        // blocks its loop forever must not hold the shutdown. Such a loop
        // is left behind (detached) and reported.
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let mut pending = threads;
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|t| !t.is_finished());
            if !pending.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        if !pending.is_empty() {
            tracing::warn!(
                "{} event loop(s) blocked by a handler were left behind",
                pending.len()
            );
        }
        if let Some(rt) = self
            .shared_rt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }

    fn adopt_datagram_socket(&self, socket: &DgramSocket) -> bool {
        // The lifecycle keeps its own socket (and closes it at shutdown);
        // the loop serves a duplicate of the same descriptor.
        let dup = match socket {
            DgramSocket::Udp(s) => s.try_clone().map(DgramSocket::Udp),
            DgramSocket::Unix(s) => s.try_clone().map(DgramSocket::Unix),
        };
        match dup {
            Ok(d) => {
                self.send(Job::Datagrams(Arc::new(d)));
                true
            }
            Err(_) => false,
        }
    }
}

async fn worker(
    mut rx: mpsc::UnboundedReceiver<Job>,
    config: Arc<Config>,
    mut stop_rx: watch::Receiver<u8>,
) {
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(Job::Work(work)) => spawn_work(work, &config, &stop_rx),
                Some(Job::Datagrams(sock)) => {
                    let config = Arc::clone(&config);
                    let stop = stop_rx.clone();
                    tokio::spawn(async move { serve_datagrams(sock, config, stop).await });
                }
                None => break,
            },
            r = stop_rx.changed() => {
                if r.is_err() || *stop_rx.borrow() == FORCE {
                    break;
                }
            }
        }
    }
}

fn spawn_work(work: Work, config: &Arc<Config>, stop_rx: &watch::Receiver<u8>) {
    match (work, &config.handler) {
        (Work::Conn(conn), Handler::Message(h)) => {
            // Register the socket here, on the loop's thread, so the task
            // holds only what the connection needs for its whole life.
            let (guard, stream, peer) = conn.into_parts();
            let conn = match AsyncConn::new(guard, stream) {
                Ok(c) => c,
                Err(e) => {
                    config.hooks.error(&peer, Failure::Io(e));
                    return;
                }
            };
            let session = Session::new(&config.framing, peer);
            tokio::spawn(serve_framed(
                conn,
                session,
                Arc::clone(h),
                Arc::clone(config),
            ));
        }
        (Work::Conn(conn), Handler::AsyncStream(h)) => {
            let h = Arc::clone(h);
            let config = Arc::clone(config);
            let stop = stop_rx.clone();
            tokio::spawn(async move { run::serve_async_stream(conn, &*h, &config, stop).await });
        }
        (work, _) => {
            // Stream handlers block: run them where blocking is safe.
            let config = Arc::clone(config);
            tokio::task::spawn_blocking(move || {
                crate::shutdown::mark_server_thread();
                run::run_work(work, &config)
            });
        }
    }
}

/// An accepted stream registered with the loop. The guard is declared
/// first so it unregisters the socket before the socket closes.
struct AsyncConn {
    _guard: TrackGuard,
    io: AsyncFd<Stream>,
}

impl AsyncConn {
    fn new(guard: TrackGuard, stream: Stream) -> io::Result<AsyncConn> {
        if let Err(e) = stream.set_nonblocking(true) {
            // Unregister before the socket closes (see TrackGuard).
            drop(guard);
            drop(stream);
            return Err(e);
        }
        // SAFETY: `Stream` owns its descriptor, which stays open and
        // unchanged until the AsyncFd (which owns the Stream) drops.
        match unsafe {
            AsyncFd::register_with_interest(stream, Interest::READABLE | Interest::WRITABLE)
        } {
            Ok(io) => Ok(AsyncConn { _guard: guard, io }),
            Err(e) => {
                let (stream, e) = e.into_parts();
                drop(guard);
                drop(stream);
                Err(e)
            }
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        loop {
            match self.io.get_ref().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        loop {
            match self.io.get_ref().write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Writes all of `data`, waiting for the socket as needed.
    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut g = self.io.writable().await?;
                    g.clear_ready();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Half-close, then read and discard until the client closes or the
    /// linger time passes, so the client never sees a reset.
    async fn linger_close(self, config: &Config) {
        let _ = self.io.get_ref().shutdown(std::net::Shutdown::Write);
        let linger = config.limits.linger;
        let mut stop = config.shared.level.subscribe();
        let drained = async move {
            // While the server drains, a client that neither reads nor
            // closes gets only a short grace (see conn::DRAIN_LINGER).
            while *stop.borrow() == RUNNING {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(crate::conn::DRAIN_LINGER).await;
        };
        let read_until_close = tokio::time::timeout(linger, async {
            let mut sink = vec![0u8; 4096];
            let mut budget = crate::conn::LINGER_BUDGET;
            loop {
                match self.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(n) if n >= budget => return,
                    Ok(n) => budget -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match self.io.readable().await {
                            Ok(mut g) => g.clear_ready(),
                            Err(_) => return,
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        tokio::select! {
            _ = read_until_close => {}
            _ = drained => {}
        }
    }
}

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; SCRATCH]);
    static OUT_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH));
}

enum Step {
    /// Read everything available; keep going.
    Again,
    /// Nothing more to read now.
    Blocked,
    /// End of input (or the handler / codec asked to close).
    Done,
}

/// Reads what is available, handles it, writes the replies. Everything
/// here is synchronous, so the thread-local buffers are never held across
/// an await; replies that do not fit in the socket now are returned in
/// `backlog` and written before the next read (that is the back-pressure:
/// a peer that does not read is not read from).
fn pump(
    conn: &AsyncConn,
    session: &mut Session,
    ctx: &Ctx<'_>,
    backlog: &mut Vec<u8>,
) -> io::Result<Step> {
    SCRATCH_BUF.with(|scratch| {
        OUT_BUF.with(|out| {
            let mut scratch = scratch.borrow_mut();
            let mut out = out.borrow_mut();
            out.clear();
            let mut step = Step::Again;
            let n = match conn.try_read(&mut scratch) {
                Ok(0) => {
                    session.finish(ctx, &mut out);
                    step = Step::Done;
                    0
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) => return Err(e),
            };
            if n > 0 && session.feed(&scratch[..n], ctx, &mut out) == Flow::Close {
                step = Step::Done;
            }
            if n > 0 && n < scratch.len() && matches!(step, Step::Again) {
                // A short read means the socket is drained for now.
                step = Step::Blocked;
            }
            let mut written = 0;
            while written < out.len() {
                match conn.try_write(&out[written..]) {
                    Ok(k) => written += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if written < out.len() {
                backlog.extend_from_slice(&out[written..]);
            }
            if out.capacity() > SCRATCH * 4 {
                *out = Vec::with_capacity(SCRATCH);
            }
            Ok(step)
        })
    })
}

async fn serve_framed(
    conn: AsyncConn,
    mut session: Session,
    handler: Arc<dyn MessageHandler>,
    config: Arc<Config>,
) {
    let config = &*config;
    let mut stop = StopWait::new(&config.shared);
    // This future lives as long as its connection, so its size is most of
    // an idle connection's memory: cold paths (flushing a backlog, timeouts,
    // the lingering close) are boxed so their state is allocated only while
    // they run.
    let ctx = Ctx {
        handler: &*handler,
        hooks: &config.hooks,
    };
    let mut backlog: Vec<u8> = Vec::new();
    let mut draining = config.shared.stop.is_triggered();
    let mut full_reads: u32 = 0;
    loop {
        // Write replies the socket could not take yet before reading more.
        if !backlog.is_empty() {
            let data = std::mem::take(&mut backlog);
            if let Err(e) = Box::pin(flush(&conn, &data, config)).await {
                config.hooks.error(session.peer(), Failure::Io(e));
                return;
            }
        }
        match pump(&conn, &mut session, &ctx, &mut backlog) {
            Ok(Step::Again) => {
                // A full read: more may be waiting. Draining reads no more
                // (a client that never stops sending must not keep the
                // drain busy), and a fast client yields to the others on
                // its loop once its cooperative budget is spent.
                if config.shared.stop.is_triggered() {
                    // Answer what was read, then read no more.
                    if !backlog.is_empty() {
                        let _ = Box::pin(flush(&conn, &backlog, config)).await;
                    }
                    break;
                }
                // A full read of tiny frames is thousands of handler calls,
                // so yield every few reads rather than after tokio's budget
                // of 128.
                full_reads += 1;
                if full_reads % FULL_READS_PER_TURN == 0 {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            Ok(Step::Done) => {
                if !backlog.is_empty() {
                    let _ = Box::pin(flush(&conn, &backlog, config)).await;
                }
                break;
            }
            Ok(Step::Blocked) => {}
            Err(e) => {
                config.hooks.error(session.peer(), Failure::Io(e));
                return;
            }
        }
        if !backlog.is_empty() {
            continue;
        }
        if draining {
            // Everything the client had sent is handled and answered.
            break;
        }
        let wait = session.read_wait(config.limits.idle_timeout, config.limits.read_timeout);
        let event = match wait {
            None => tokio::select! {
                biased;
                r = conn.io.readable() => Event::Readable(r.map(|mut g| g.clear_ready())),
                forced = &mut stop => Event::Stop(forced),
            },
            Some(t) => Box::pin(wait_timed(&conn, &mut stop, t)).await,
        };
        match event {
            Event::Readable(Ok(())) => {}
            Event::Readable(Err(e)) => {
                config.hooks.error(session.peer(), Failure::Io(e));
                return;
            }
            Event::TimedOut => {
                config.hooks.error(
                    session.peer(),
                    Failure::Io(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
                );
                break;
            }
            Event::Stop(true) => return,
            // Drain: take what has arrived, answer it, then close.
            Event::Stop(false) => draining = true,
        }
    }
    Box::pin(conn.linger_close(config)).await;
}

/// What ended a connection's wait.
enum Event {
    Readable(io::Result<()>),
    TimedOut,
    /// The server is stopping; true when forced.
    Stop(bool),
}

/// The wait with a read or idle timeout (boxed by the caller: a timer is
/// large, and most servers set no timeout).
async fn wait_timed(conn: &AsyncConn, stop: &mut StopWait<'_>, t: std::time::Duration) -> Event {
    tokio::select! {
        biased;
        r = tokio::time::timeout(t, conn.io.readable()) => match r {
            Ok(r) => Event::Readable(r.map(|mut g| g.clear_ready())),
            Err(_) => Event::TimedOut,
        },
        forced = stop => Event::Stop(forced),
    }
}

/// Writes a backlog of replies, within the write timeout.
async fn flush(conn: &AsyncConn, data: &[u8], config: &Config) -> io::Result<()> {
    match config.limits.write_timeout {
        Some(t) => tokio::time::timeout(t, conn.write_all(data))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))),
        None => conn.write_all(data).await,
    }
}

/// Receives one batch of UDP datagrams, handles each, sends every reply in
/// batches. True when the socket has no more datagrams waiting.
fn serve_udp_batch(
    batch: &mut crate::mmsg::Batch,
    sock: &DgramSocket,
    config: &Config,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> bool {
    let fd = sock.as_raw_fd();
    let n = match batch.recv(fd) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
        Err(e) => {
            // ICMP errors from earlier replies surface here (ECONNREFUSED);
            // they concern one peer only.
            tracing::debug!("datagram receive error: {e}");
            return false;
        }
    };
    let _busy = config.shared.tracker.enter(None, None);
    for i in 0..n {
        let Some((data, from)) = batch.datagram(i) else {
            continue;
        };
        let peer = crate::addr::Address::Inet(from);
        if !config.hooks.verify(&peer) {
            continue;
        }
        if crate::dgram::call_handler(&config.handler, &config.hooks, data, &peer, out, ends)
            && !ends.is_empty()
        {
            let (o, e) = (std::mem::take(out), std::mem::take(ends));
            batch.queue(&o, &e, from);
            *out = o;
            *ends = e;
        }
    }
    if let Err(e) = batch.flush(fd) {
        tracing::debug!("datagram send error: {e}");
    }
    // A short batch means the socket is drained for now.
    n < crate::mmsg::BATCH
}

/// Serves a datagram socket inside the loop: receive every datagram that
/// is waiting, answer each, then wait again.
async fn serve_datagrams(
    sock: Arc<DgramSocket>,
    config: Arc<Config>,
    mut stop: watch::Receiver<u8>,
) {
    struct Fd(Arc<DgramSocket>);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    // SAFETY: the Arc keeps the socket (and its descriptor) alive for as
    // long as the AsyncFd holds it.
    let afd =
        match unsafe { AsyncFd::register_with_interest(Fd(Arc::clone(&sock)), Interest::READABLE) }
        {
            Ok(a) => a,
            Err(e) => {
                let e: io::Error = e.into();
                tracing::error!("cannot serve datagrams: {e}");
                return;
            }
        };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut batch = match &*sock {
        DgramSocket::Udp(_) => Some(crate::mmsg::Batch::new()),
        DgramSocket::Unix(_) => None,
    };
    loop {
        tokio::select! {
            r = afd.readable() => {
                let mut g = match r { Ok(g) => g, Err(_) => return };
                if let Some(batch) = batch.as_deref_mut() {
                    // UDP: many datagrams per system call each way.
                    if serve_udp_batch(batch, &sock, &config, &mut out, &mut ends) {
                        g.clear_ready();
                    }
                    continue;
                }
                loop {
                    match sock.try_recv(&mut buf) {
                        Ok((n, peer)) => {
                            if !config.hooks.verify(&peer) {
                                continue;
                            }
                            let _busy = config.shared.tracker.enter(None, None);
                            handle_datagram(&config.handler, &config.hooks, &buf[..n], &peer, &sock, &mut out, &mut ends, false);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            g.clear_ready();
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // ICMP errors from earlier replies surface here
                            // (ECONNREFUSED); they concern one peer only.
                            tracing::debug!("datagram receive error: {e}");
                            g.clear_ready();
                            break;
                        }
                    }
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() != RUNNING {
                    return;
                }
            }
        }
    }
}
