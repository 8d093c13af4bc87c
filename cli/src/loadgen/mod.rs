//! A load generator for echo servers: throughput, latency percentiles and
//! verified replies, over TCP, UDP, Unix stream and Unix datagram sockets.
//!
//! This is the engine of `sockserv bench`. It exists because the echo
//! load generators in common use measure the wrong thing or measure it
//! wrongly: rust_echo_bench treats one `read()` as one message (so it fails
//! or under-counts as soon as TCP splits or merges segments), most report
//! throughput only, and none checks that the bytes that came back are the
//! bytes that were sent. Here:
//!
//! - **Every reply is checked** against the exact request it answers. Each
//!   request carries a payload unique to its connection and sequence number,
//!   and replies on a stream are matched in order; a reply that differs is a
//!   *wrong reply* error and stops that connection.
//! - **Framing is done properly.** With `raw` framing (an echo of bytes) a
//!   reply is exactly `size` bytes, however the stream segments them; with
//!   any other [`Framing`] requests are encoded and replies decoded by the
//!   same codec a sockserv server uses.
//! - **Latency goes into an HDR histogram** (nanosecond resolution, three
//!   significant digits), reported as p50/p90/p99/p99.9/max.
//! - **Closed or open loop.** By default each connection keeps `pipeline`
//!   requests in flight and sends a new one as soon as a reply arrives
//!   (closed loop: throughput ≈ connections × pipeline ÷ round-trip time).
//!   With a `rate`, requests are *scheduled* at fixed intervals; a request
//!   that is due while its connection already has `pipeline` requests in
//!   flight waits for a reply, and its latency is measured from the time it
//!   was due, not from when it could be sent, so a server that stalls is
//!   charged for the requests it delayed (no "coordinated omission"). A
//!   request that had a free slot is timed from its actual send, so the
//!   timer's 1 ms granularity is not charged to the server.
//!
//! The client is a single-threaded tokio runtime by default, like the
//! reference client the project's measurements were made with: on a 2-core
//! machine the client and the server share the CPU, and one client thread
//! leaves the other core to the server. `threads` runs several runtimes,
//! each with its share of the connections.
//!
//! The parts, one concept each:
//!
//! - [`plan`]: what to send — the user's [`BenchConfig`], checked and
//!   turned into a read-only plan; where the connections go.
//! - [`payloads`]: what each request carries and how a reply is checked.
//! - [`connections`]: one connection's I/O loop over any transport.
//! - [`churn`]: the connection-churn workload (connect, one line, close).
//! - [`report`]: counters, the latency histogram, the text and JSON report.
//! - this file: the threads and the phases of a run (connect, start
//!   together, load, stop) and the progress callback.

mod churn;
mod connections;
mod payloads;
mod plan;
mod report;

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use connections::{open, Conn, Sock};
use plan::{check_fd_budget, raise_nofile_limit, resolve_targets, Plan, Targets, TempPaths};
use report::{build_report, describe, ErrorKind, Stats};

pub use plan::BenchConfig;
pub use report::Report;

/// How many connects one runtime has in progress at once. A server's listen
/// backlog is often 128 (tokio's default); firing thousands of SYNs at once
/// overflows it and costs each dropped one a 1 s retransmission.
const CONNECT_CONCURRENCY: usize = 64;

/// How often the caller's progress callback runs.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// How often a runtime checks whether the caller asked to stop.
const STOP_POLL: Duration = Duration::from_millis(25);

/// How long connections may go on collecting the replies they are owed
/// after the end of a timed run (at most the reply timeout). A healthy
/// server answers within milliseconds, so this only lengthens a run whose
/// server has stopped answering; what is still unanswered after it is
/// reported as outstanding.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Which part of a run is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening connections.
    Connecting,
    /// Loading without recording.
    Warmup,
    /// Loading and recording.
    Measuring,
}

/// A snapshot handed to the progress callback of [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    /// Time since the current phase began.
    pub elapsed: Duration,
    /// Connections opened so far.
    pub connected: usize,
    /// Measured (verified) replies so far.
    pub requests: u64,
    /// All replies so far, warm-up included: the basis of a live rate.
    pub replies: u64,
    /// Errors so far.
    pub errors: u64,
}

/// What the progress callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// End the run now and report what was measured (the report says
    /// `interrupted`).
    Stop,
}

/// Runs the benchmark described by `config` and reports on it, calling
/// `progress` about every 100 ms on the calling thread (the load itself
/// runs on `config.threads` threads of its own).
///
/// Fails (without a report) when the configuration is impossible
/// ([`io::ErrorKind::InvalidInput`]), when the endpoint cannot be resolved,
/// or when not a single connection could be opened; the error message is
/// one line, e.g. `cannot connect to tcp://127.0.0.1:1: connection refused`.
/// Anything that goes wrong after that is counted in the report.
pub fn run(
    config: &BenchConfig,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> io::Result<Report> {
    let plan = Arc::new(Plan::new(config)?);
    raise_nofile_limit();
    check_fd_budget(config.connections)?;
    let targets = Arc::new(resolve_targets(
        &config.endpoint,
        config.connections,
        config.churn,
    )?);
    let _cleanup = TempPaths(targets.local_paths.clone());

    let shared = Arc::new(Shared {
        budget: config.requests.map(AtomicU64::new),
        start: OnceLock::new(),
        stop: AtomicBool::new(false),
        connected: AtomicUsize::new(0),
        replies: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        barrier: Barrier::new(plan.threads),
    });

    let (tx, rx) = mpsc::channel::<io::Result<ThreadOutcome>>();
    let mut handles = Vec::with_capacity(plan.threads);
    for thread in 0..plan.threads {
        let (plan, shared, targets, tx) =
            (plan.clone(), shared.clone(), targets.clone(), tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-{thread}"))
            .spawn(move || {
                let result = run_thread(thread, &plan, &shared, &targets);
                let _ = tx.send(result);
            })?;
        handles.push(handle);
    }
    drop(tx);

    let mut outcomes = Vec::with_capacity(plan.threads);
    let mut interrupted = false;
    let phase_start = Instant::now();
    while outcomes.len() < plan.threads {
        match rx.recv_timeout(PROGRESS_TICK) {
            Ok(outcome) => outcomes.push(outcome),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        let snapshot = shared.snapshot(&plan, phase_start);
        if progress(&snapshot) == Control::Stop {
            interrupted = true;
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    if outcomes.len() < plan.threads {
        return Err(io::Error::other("a benchmark thread failed"));
    }
    let outcomes = outcomes.into_iter().collect::<io::Result<Vec<_>>>()?;
    build_report(config, &plan, outcomes, interrupted, targets.sources.len())
}

/// State shared by the caller's thread and every runtime thread.
struct Shared {
    /// Measured requests still to send (request-count runs).
    budget: Option<AtomicU64>,
    /// When the load started (after every runtime connected); set once by
    /// whichever runtime passes the barrier first.
    start: OnceLock<Instant>,
    stop: AtomicBool,
    connected: AtomicUsize,
    replies: AtomicU64,
    measured: AtomicU64,
    errors: AtomicU64,
    barrier: Barrier,
}

impl Shared {
    fn snapshot(&self, plan: &Plan, began: Instant) -> Progress {
        let now = Instant::now();
        let (phase, elapsed) = match self.start.get() {
            None => (Phase::Connecting, now - began),
            Some(&start) if now < start + plan.warmup => (Phase::Warmup, now - start),
            Some(&start) => (
                Phase::Measuring,
                now.saturating_duration_since(start + plan.warmup),
            ),
        };
        Progress {
            phase,
            elapsed,
            connected: self.connected.load(Ordering::Relaxed),
            requests: self.measured.load(Ordering::Relaxed),
            replies: self.replies.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Takes one measured request from the budget; false when it is spent.
    #[inline]
    fn take_budget(&self) -> bool {
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// What one runtime hands back.
struct ThreadOutcome {
    connect_started: Instant,
    stats: Stats,
    connected: usize,
    measure_start: Instant,
    finished: Instant,
    /// Requests still without a reply when the run ended.
    outstanding: u64,
}

/// The per-runtime context every connection task holds.
struct Ctx {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: RefCell<Stats>,
    measure_start: Instant,
    end: Option<Instant>,
    /// Requests sent and not yet answered, timed out or given up with their
    /// connection, over all of this runtime's connections. Kept here rather
    /// than read from the connections at the end because the end aborts
    /// their tasks, and with them their queues of requests.
    in_flight: Cell<u64>,
}

impl Ctx {
    /// `n` requests in flight are settled: answered, timed out or lost with
    /// their connection.
    fn answered(&self, n: u64) {
        self.in_flight.set(self.in_flight.get().saturating_sub(n));
    }
}

fn run_thread(
    thread: usize,
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    targets: &Arc<Targets>,
) -> io::Result<ThreadOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        drive_thread(thread, plan.clone(), shared.clone(), targets.clone()),
    )
}

/// One runtime's life: connect its share of the connections, wait for every
/// other runtime to do the same, load, and stop at the end of the duration,
/// when the caller asks, or when every connection is done.
async fn drive_thread(
    thread: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    targets: Arc<Targets>,
) -> io::Result<ThreadOutcome> {
    let connect_started = Instant::now();
    let mine: Vec<usize> = (thread..plan.connections).step_by(plan.threads).collect();
    let mut stats = Stats::new();

    // Connect, a bounded number at a time. (Churn clients open their own
    // connections, one per request, once the load has started.)
    let permits = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = JoinSet::new();
    let long_lived: &[usize] = if plan.churn { &[] } else { &mine };
    for &conn in long_lived {
        let (permits, targets, plan) = (permits.clone(), targets.clone(), plan.clone());
        connecting.spawn_local(async move {
            let _permit = permits.acquire().await;
            let result = tokio::time::timeout(plan.connect_timeout, open(&targets, conn))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            (conn, result)
        });
    }
    let mut sockets = Vec::with_capacity(mine.len());
    loop {
        // A connect phase against a server that does not accept can take
        // long: a Ctrl-C (the caller's stop) must end it too.
        let joined = tokio::select! {
            j = connecting.join_next() => match j {
                Some(j) => j,
                None => break,
            },
            _ = tokio::time::sleep(STOP_POLL) => {
                if shared.stop.load(Ordering::Relaxed) {
                    connecting.abort_all();
                    break;
                }
                continue;
            }
        };
        let Ok((conn, result)) = joined else { continue };
        match result {
            Ok(sock) => {
                shared.connected.fetch_add(1, Ordering::Relaxed);
                sockets.push((conn, sock));
            }
            Err(e) => {
                if shared.stop.load(Ordering::Relaxed) {
                    continue;
                }
                stats.error(&shared, ErrorKind::Connect, 1, || {
                    format!("cannot connect to {}: {}", targets.endpoint, describe(&e))
                });
            }
        }
    }
    sockets.sort_by_key(|(conn, _)| *conn);
    let connected = sockets.len();

    // Start together: a runtime that connects faster must not load the
    // server alone for a while and skew the measured window.
    let shared2 = shared.clone();
    tokio::task::spawn_blocking(move || {
        shared2.barrier.wait();
    })
    .await
    .map_err(io::Error::other)?;
    let start = *shared.start.get_or_init(Instant::now);
    let measure_start = start + plan.warmup;
    let end = plan.duration.map(|d| measure_start + d);

    let ctx = Rc::new(Ctx {
        plan: plan.clone(),
        shared: shared.clone(),
        stats: RefCell::new(stats),
        measure_start,
        end,
        in_flight: Cell::new(0),
    });

    let mut tasks = JoinSet::new();
    if plan.churn {
        for &client in &mine {
            let (ctx, targets) = (ctx.clone(), targets.clone());
            tasks.spawn_local(async move { churn::client(&ctx, &targets, client).await });
        }
    }
    for (conn, sock) in sockets {
        let ctx = ctx.clone();
        // Open loop: spread the connections' first sends over one interval
        // so that the total rate is even, not a burst every interval.
        let first_due = plan
            .interval
            .map(|iv| start + iv.mul_f64(conn as f64 / plan.connections as f64));
        tasks.spawn_local(async move {
            let result = match sock {
                Sock::Tcp(s) => Conn::new(&ctx, conn, s, first_due).run().await,
                Sock::Unix(s) => Conn::new(&ctx, conn, s, first_due).run().await,
                Sock::Udp(s) => Conn::new(&ctx, conn, s, first_due).run().await,
                Sock::UnixDgram(s) => Conn::new(&ctx, conn, s, first_due).run().await,
            };
            if let Err(e) = result {
                ctx.stats
                    .borrow_mut()
                    .error(&ctx.shared, e.kind, 1, || e.message);
            }
        });
    }

    // Supervise: end of duration, caller's stop, or all connections done.
    // At the end of the duration the connections send no more but have
    // `drain` to collect the replies they are owed: without it every run
    // would end with a pipeline's worth of requests per connection in
    // flight, and a server that answers nothing could not be told from one
    // that answers fast.
    let mut poll = tokio::time::interval(STOP_POLL);
    let drain = plan.reply_timeout.min(DRAIN_GRACE);
    let deadline = tokio::time::sleep_until(
        end.unwrap_or(start + Duration::from_secs(100 * 365 * 86_400))
            .into(),
    );
    tokio::pin!(deadline);
    let mut finished = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = &mut deadline => {
                match end {
                    Some(end) if finished.is_none() => {
                        finished = Some(end);
                        deadline.as_mut().reset((end + drain).into());
                    }
                    _ => break,
                }
            }
            _ = poll.tick() => {
                if shared.stop.load(Ordering::Relaxed) {
                    finished.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
    }
    let outstanding = ctx.in_flight.get();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let finished = finished.unwrap_or_else(|| {
        ctx.stats
            .borrow()
            .last_reply
            .unwrap_or(measure_start)
            .max(measure_start)
    });
    drop(tasks);
    let stats = match Rc::try_unwrap(ctx) {
        Ok(ctx) => ctx.stats.into_inner(),
        Err(ctx) => std::mem::replace(&mut *ctx.stats.borrow_mut(), Stats::new()),
    };
    Ok(ThreadOutcome {
        connect_started,
        stats,
        connected,
        measure_start,
        finished,
        outstanding,
    })
}
