//! Concurrency strategies: *where* a connection's work runs.
//!
//! Python spells each combination of transport and concurrency as a class
//! (`ThreadingTCPServer`, `ForkingUDPServer`, ...). Here the strategy is a
//! value, and any strategy serves any transport: the server's one lifecycle
//! (accept, verify, dispatch, finish, report errors, shut down) hands each
//! connection or datagram to an engine, and the engine only decides where
//! it runs. One small file per strategy; the connection itself is the same
//! pipeline (`crate::pipeline`) under every one of them.

pub(crate) mod pool;
mod sequential;
mod threads;
mod tokio_rt;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use crate::context::Context;
use crate::driver::event_loop::EventLoops;
use crate::handler::Handler;
pub(crate) use crate::run::Work;

/// How a server runs its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// One at a time, on the serving thread (Python's plain `TCPServer`).
    /// A slow client delays every other client.
    Sequential,
    /// A new thread per connection (or per datagram), like Python's
    /// `ThreadingMixIn`. Simple and fair; memory and scheduling cost grows
    /// with the number of clients.
    Threads,
    /// `workers` threads run the handlers. Message and datagram handlers:
    /// connections stay on event loops and each batch of frames is a job
    /// for a worker, so any number of clients is served by `workers`
    /// threads, in order per connection — the strategy for handlers that
    /// block (a database call, a slow computation). Stream handlers hold a
    /// worker per connection; at most `queue` more wait for one, then the
    /// server stops accepting (logged once per burst).
    Pool {
        /// Worker threads (at least 1).
        workers: usize,
        /// Stream connections waiting for a worker (at least 1).
        queue: usize,
    },
    /// `loops` event-loop threads, each serving many connections straight
    /// from epoll readiness and accepting its own: message and datagram
    /// handlers run inside the loop, pipelined. Scales to tens of
    /// thousands of connections. Stream handlers (which block) get a
    /// thread each; async stream handlers run on a tokio runtime with
    /// `loops` threads.
    EventLoops {
        /// Event-loop threads (at least 1).
        loops: usize,
    },
    /// The default: [`Strategy::auto`] made concrete for the handler —
    /// event loops (one per core but one), or threads for a blocking
    /// stream handler.
    #[default]
    Auto,
}

impl Strategy {
    /// A pool sized for blocking handlers: 16 workers per core, a queue of
    /// four times that for stream connections.
    pub fn pool() -> Strategy {
        let workers = cores() * 16;
        Strategy::Pool {
            workers,
            queue: workers * 4,
        }
    }

    /// Event loops, one per core but one (at least one): what `Auto` means
    /// for message and datagram handlers.
    ///
    /// Why not one per core: the kernel's network processing, and on a
    /// benchmark or a small box the clients themselves, need a core too.
    /// `docs/BENCHMARKS.md` has the measurements.
    pub fn event_loops() -> Strategy {
        Strategy::EventLoops {
            loops: cores().saturating_sub(1).max(1),
        }
    }

    /// The default strategy, [`Strategy::Auto`].
    pub fn auto() -> Strategy {
        Strategy::Auto
    }

    /// `Auto` made concrete for a handler.
    pub(crate) fn resolve_for(self, handler: &Handler) -> Strategy {
        match self {
            Strategy::Auto if matches!(handler, Handler::Stream(_)) => Strategy::Threads,
            Strategy::Auto => Strategy::event_loops(),
            s => s,
        }
    }
}

/// The tokio runtime for async stream handlers.
pub(crate) fn tokio_engine(threads: usize) -> std::io::Result<tokio_rt::TokioEngine> {
    tokio_rt::TokioEngine::new(threads)
}

/// The number of CPUs this process may use (2 if unknown).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Sequential => f.write_str("sequential"),
            Strategy::Threads => f.write_str("threads"),
            Strategy::Pool { workers, queue } => {
                write!(f, "pool({workers} workers, queue {queue})")
            }
            Strategy::EventLoops { loops } => write!(f, "async({loops} event loops)"),
            Strategy::Auto => f.write_str("auto"),
        }
    }
}

/// A mode name as the CLI spells it is not one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown mode \"{}\": expected sequential, threads, pool, async or auto",
            self.0
        )
    }
}

impl std::error::Error for UnknownMode {}

/// Parses a mode name as the CLI spells it.
impl FromStr for Strategy {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sequential" => Ok(Strategy::Sequential),
            "threads" => Ok(Strategy::Threads),
            "pool" => Ok(Strategy::pool()),
            "async" => Ok(Strategy::event_loops()),
            "auto" => Ok(Strategy::Auto),
            _ => Err(UnknownMode(s.to_string())),
        }
    }
}

/// Where work runs. The event-loop engine accepts by itself and is
/// handed nothing.
pub(crate) enum Engine {
    Sequential(sequential::Sequential),
    Threads(threads::Threads),
    /// Stream connections on pool workers.
    StreamPool(Arc<pool::Workers>),
    /// Event loops, with workers for the handlers or not.
    Loops {
        loops: EventLoops,
        workers: Option<Arc<pool::Workers>>,
    },
    /// Async stream handlers on a tokio runtime.
    Tokio(tokio_rt::TokioEngine),
}

impl Engine {
    /// Runs `work` (or queues it). May block when the engine is full; that
    /// is the back-pressure that stops the accept loop.
    pub(crate) fn dispatch(&self, work: Work, ctx: &Arc<Context>) {
        match self {
            Engine::Sequential(e) => e.dispatch(work, ctx),
            Engine::Threads(e) => e.dispatch(work, ctx),
            Engine::StreamPool(w) => {
                w.submit_wait(Box::new(move |c| crate::run::run_work(work, c)), ctx)
            }
            Engine::Tokio(e) => e.dispatch(work, ctx),
            // The loops accept themselves; nothing is dispatched to them.
            Engine::Loops { .. } => drop(work),
        }
    }

    /// True when the engine accepts from the listeners itself.
    pub(crate) fn accepts_itself(&self) -> bool {
        matches!(self, Engine::Loops { .. })
    }

    /// At the drain: waits (until `deadline`) for the engine to have taken
    /// the listen backlog (event loops do it themselves).
    pub(crate) fn wait_swept(&self, deadline: Instant) {
        if let Engine::Loops { loops, .. } = self {
            loops.wait_swept(deadline);
        }
    }

    /// The server is stopping: wake anything waiting inside the engine.
    pub(crate) fn wake(&self) {
        if let Engine::StreamPool(w) = self {
            w.wake();
        }
    }

    /// Stops the engine's own threads once the work has drained (or the
    /// deadline passed).
    pub(crate) fn stop(&self, deadline: Instant) {
        match self {
            Engine::StreamPool(w) => w.stop(deadline),
            Engine::Loops { loops, workers } => {
                loops.join(deadline);
                if let Some(w) = workers {
                    w.stop(deadline);
                }
            }
            Engine::Tokio(e) => e.stop(),
            Engine::Sequential(_) | Engine::Threads(_) => {}
        }
    }
}
