//! Concurrency strategies: *where* a connection's work runs.
//!
//! Python spells each combination of transport and concurrency as a class
//! (`ThreadingTCPServer`, `ForkingUDPServer`, ...). Here the strategy is a
//! value, and any strategy serves any transport: the server's one lifecycle
//! (accept, verify, dispatch, finish, report errors, shut down) hands each
//! connection or datagram to an `Engine`, and the engine only decides
//! where it runs. One small file per strategy.

mod pool;
mod runtime;
mod sequential;
mod threads;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use crate::conn::Connection;
use crate::dgram::DatagramJob;
use crate::server::Config;

pub(crate) use runtime::AsyncEngine;

/// How a server runs its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// One at a time, on the serving thread (Python's plain `TCPServer`).
    /// A slow client delays every other client.
    Sequential,
    /// A new thread per connection (or per datagram), like Python's
    /// `ThreadingMixIn`. Simple and fair; memory and scheduling cost grows
    /// with the number of clients.
    Threads,
    /// A fixed set of worker threads fed by a bounded queue: what Python
    /// lacks. When the queue is full the server stops accepting and the
    /// kernel's backlog holds the rest, so threads and memory stay bounded.
    Pool {
        /// Worker threads (at least 1).
        workers: usize,
        /// Connections waiting for a worker (at least 1).
        queue: usize,
    },
    /// An event loop (tokio) per worker thread. Message and datagram
    /// handlers run inside the loop with pipelined batching; stream handlers
    /// (which block) run on the runtime's blocking threads. Scales to tens
    /// of thousands of connections.
    Async {
        /// Event-loop threads (at least 1).
        workers: usize,
    },
    /// Async on one tokio multi-thread (work-stealing) runtime with
    /// `workers` threads: the layout of a hand-written tokio server. Same
    /// handlers and connection code as [`Strategy::Async`]; only the
    /// scheduling differs.
    AsyncMultiThread {
        /// Runtime worker threads (at least 1).
        workers: usize,
    },
    /// The default: [`Strategy::default_for_machine`] (async, one event
    /// loop per core but one), or [`Strategy::Threads`] for a blocking
    /// [`StreamHandler`](crate::StreamHandler).
    #[default]
    Auto,
}

impl Strategy {
    /// A pool sized for blocking handlers: 16 workers per core, a queue of
    /// four times that.
    pub fn pool() -> Strategy {
        let workers = cores() * 16;
        Strategy::Pool {
            workers,
            queue: workers * 4,
        }
    }

    /// Async with one event loop per core.
    pub fn async_per_core() -> Strategy {
        Strategy::Async { workers: cores() }
    }

    /// Async with one event loop per core but one (at least one loop):
    /// the default.
    ///
    /// Why not one per core: the kernel's network processing, and on a
    /// benchmark or a small box the clients themselves, need a core too. On
    /// the 2-core machine of `docs/BENCHMARKS.md`, one loop costs 0.91–0.98×
    /// tokio's CPU per message with the best p99, while two loops cost
    /// 1.02–1.04× and their p99 at 1,000 connections was up to 2× worse.
    pub fn async_default() -> Strategy {
        Strategy::Async {
            workers: cores().saturating_sub(1).max(1),
        }
    }

    /// What [`Strategy::Auto`] means on this machine:
    /// [`Strategy::async_default`].
    pub fn default_for_machine() -> Strategy {
        Strategy::async_default()
    }

    /// `Auto` made concrete for a handler: async, except for blocking
    /// stream handlers, which get a thread each (the async engine could
    /// only run them on blocking threads anyway).
    pub(crate) fn resolve_for(self, handler: &crate::handler::Handler) -> Strategy {
        match self {
            Strategy::Auto if matches!(handler, crate::handler::Handler::Stream(_)) => {
                Strategy::Threads
            }
            s => s.resolve(),
        }
    }

    pub(crate) fn resolve(self) -> Strategy {
        match self {
            Strategy::Auto => Strategy::default_for_machine(),
            s => s,
        }
    }
}

/// The number of CPUs this process may use (2 if unknown).
pub fn cores() -> usize {
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
            Strategy::Async { workers } => write!(f, "async({workers} loops)"),
            Strategy::AsyncMultiThread { workers } => write!(f, "async-mt({workers} threads)"),
            Strategy::Auto => f.write_str("auto"),
        }
    }
}

/// Parses a mode name as the CLI spells it.
impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sequential" => Ok(Strategy::Sequential),
            "threads" => Ok(Strategy::Threads),
            "pool" => Ok(Strategy::pool()),
            "async" => Ok(Strategy::async_default()),
            "async-mt" => Ok(Strategy::AsyncMultiThread { workers: cores() }),
            "auto" => Ok(Strategy::Auto),
            _ => Err(format!(
                "unknown mode \"{s}\": expected sequential, threads, pool, async or async-mt"
            )),
        }
    }
}

/// One unit of work the lifecycle hands to an engine.
pub(crate) enum Work {
    /// An accepted, verified stream connection.
    Conn(Connection),
    /// One received datagram.
    Datagram(DatagramJob),
}

/// Runs work somewhere. Implemented once per strategy.
pub(crate) trait Engine: Send + Sync {
    /// Runs `work` (or queues it). May block when the engine is full; that
    /// is the back-pressure that stops the accept loop.
    fn dispatch(&self, work: Work);

    /// The server is stopping: wake anything waiting inside the engine.
    fn wake(&self) {}

    /// Stops the engine's own threads once the work has drained (or the
    /// deadline passed).
    fn stop(&self, deadline: Instant) {
        let _ = deadline;
    }

    /// Whether this engine serves datagram sockets itself (with its own
    /// event loop and batching) instead of having the lifecycle read them.
    fn adopt_datagram_socket(&self, socket: &crate::dgram::DgramSocket) -> bool {
        let _ = socket;
        false
    }
}

/// Builds the engine for a strategy.
pub(crate) fn engine(strategy: Strategy, config: &Arc<Config>) -> std::io::Result<Box<dyn Engine>> {
    Ok(match strategy.resolve() {
        Strategy::Sequential => Box::new(sequential::Sequential::new(Arc::clone(config))),
        Strategy::Threads => Box::new(threads::Threads::new(Arc::clone(config))),
        Strategy::Pool { workers, queue } => {
            Box::new(pool::Pool::new(Arc::clone(config), workers, queue)?)
        }
        Strategy::Async { workers } => Box::new(AsyncEngine::new(Arc::clone(config), workers)?),
        Strategy::AsyncMultiThread { workers } => {
            Box::new(AsyncEngine::multi_thread(Arc::clone(config), workers)?)
        }
        Strategy::Auto => unreachable!("resolved above"),
    })
}
