//! The pool: N worker threads that run *handlers*, not connections.
//!
//! For message and datagram handlers the connections stay on event loops
//! (`crate::driver::event_loop`) and each batch of frames read from one
//! connection is a job here: a worker runs the handler and hands the
//! connection back to its loop, which writes the replies in order. So 32
//! workers serve any number of connected clients — what a pool means in
//! Netty, a Java executor or a Python user's mind — and a handler that
//! blocks holds one worker, not a loop full of connections.
//!
//! Stream handlers read their socket themselves, so each connection needs
//! a worker for its whole life: for them the queue holds connections, and
//! when it is full the server stops accepting (the kernel's backlog holds
//! the rest) and says so in the log, once per burst.
//!
//! A handler panic is caught inside the job, so a worker is never lost.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::burst::Burst;
use crate::context::Context;
use crate::dgram::DgramServer;
use crate::driver::mailbox::{Mailbox, Msg};
use crate::pipeline::Offload;

/// One job: runs on a worker with the server's context.
type Job = Box<dyn FnOnce(&Arc<Context>) + Send>;

struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job arrives or the pool closes.
    ready: Condvar,
    /// Signalled when a slot frees up (for waiting stream connections).
    space: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The worker threads and their queue.
pub(crate) struct Workers {
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
    /// Jobs waiting, past which a stream connection waits to be queued.
    capacity: usize,
    full: Burst,
}

/// Datagrams waiting for a worker, per worker, past which new ones are
/// dropped (UDP allows it; memory stays bounded).
const DATAGRAMS_QUEUED_PER_WORKER: usize = 64;

impl Workers {
    /// Starts `workers` threads. A thread that cannot start is an error
    /// here, before the server listens (the threads already started stop).
    pub(crate) fn start(
        ctx: &Arc<Context>,
        workers: usize,
        capacity: usize,
    ) -> io::Result<Arc<Workers>> {
        let pool = Arc::new(Workers {
            queue: Arc::new(Queue {
                state: Mutex::new(QueueState {
                    jobs: VecDeque::new(),
                    closed: false,
                }),
                ready: Condvar::new(),
                space: Condvar::new(),
            }),
            threads: Mutex::new(Vec::new()),
            workers: workers.max(1),
            capacity: capacity.max(1),
            full: Burst::default(),
        });
        for i in 0..pool.workers {
            let queue = Arc::clone(&pool.queue);
            let ctx = Arc::clone(ctx);
            let t = std::thread::Builder::new()
                .name(format!("sockserv-worker-{i}"))
                .spawn(move || {
                    crate::shutdown::mark_server_thread();
                    while let Some(job) = queue.pop() {
                        job(&ctx);
                    }
                });
            match t {
                Ok(t) => pool
                    .threads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t),
                Err(e) => {
                    pool.close();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    fn push(&self, job: Job) {
        let mut st = self.queue.state.lock().unwrap_or_else(|p| p.into_inner());
        st.jobs.push_back(job);
        drop(st);
        self.queue.ready.notify_one();
    }

    /// Runs the handler on a connection's frames; the connection goes back
    /// to its loop through `mailbox`.
    pub(crate) fn submit_frames(
        &self,
        mut work: Offload,
        slot: usize,
        gen: u32,
        mailbox: &Arc<Mailbox>,
    ) {
        let mailbox = Arc::clone(mailbox);
        self.push(Box::new(move |ctx: &Arc<Context>| {
            if let Some(handler) = ctx.message_handler() {
                // The session catches the handler's panics; this catches the
                // rest, so the connection always goes back to its loop.
                let run = std::panic::AssertUnwindSafe(|| work.run(&ctx.ctx(handler)));
                if std::panic::catch_unwind(run).is_err() {
                    work.fail();
                }
            }
            mailbox.send(Msg::Done {
                slot,
                gen,
                work: Box::new(work),
            });
        }));
    }

    /// Receives what is waiting on a datagram socket and queues each
    /// datagram for a worker. True when the socket is drained.
    pub(crate) fn take_datagrams(&self, server: &mut DgramServer, ctx: &Context) -> bool {
        for _ in 0..crate::dgram::DATAGRAMS_PER_TURN {
            let queued = self
                .queue
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .jobs
                .len();
            let job = match server.recv_job(ctx) {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("datagram receive error: {e}");
                    continue;
                }
            };
            if queued >= self.workers * DATAGRAMS_QUEUED_PER_WORKER {
                self.full.hit(|more| {
                    tracing::warn!(
                        "the pool's {} workers are all busy: dropping datagrams ({more} dropped before)",
                        self.workers
                    )
                });
                continue;
            }
            self.push(Box::new(move |ctx: &Arc<Context>| {
                crate::dgram::serve_job(job, ctx)
            }));
        }
        false
    }

    /// Queues a job that holds a worker for a connection's whole life (a
    /// stream handler). Waits while the queue is full — the accept loop
    /// then stops accepting — and says so once per burst.
    pub(crate) fn submit_wait(&self, job: Job, ctx: &Context) {
        let mut st = self.queue.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.jobs.len() >= self.capacity && !ctx.shared.stop.is_stopping() {
            self.full.hit(|more| {
                tracing::warn!(
                    "pool full: {} workers busy and {} connections queued; new clients wait in the \
                     listen backlog (stream handlers hold a worker per connection){}",
                    self.workers,
                    st.jobs.len(),
                    if more > 0 {
                        format!(" ({more} more times)")
                    } else {
                        String::new()
                    }
                )
            });
        }
        while st.jobs.len() >= self.capacity && !ctx.shared.stop.is_stopping() {
            st = self
                .queue
                .space
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // Even when stopping, queue it: the worker drains it gracefully.
        st.jobs.push_back(job);
        drop(st);
        self.queue.ready.notify_one();
    }

    /// Wakes a `submit_wait` blocked on a full queue (the server stops).
    pub(crate) fn wake(&self) {
        let _st = self.queue.state.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.space.notify_all();
    }

    fn close(&self) {
        let mut st = self.queue.state.lock().unwrap_or_else(|p| p.into_inner());
        st.closed = true;
        drop(st);
        self.queue.ready.notify_all();
        self.queue.space.notify_all();
    }

    /// Lets the workers finish the queue and leave; waits for them until
    /// `deadline` (a handler that never returns is left behind).
    pub(crate) fn stop(&self, deadline: Instant) {
        self.close();
        let pending: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        crate::shutdown::join_until(pending, deadline);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.close();
    }
}

impl Queue {
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = st.jobs.pop_front() {
                self.space.notify_one();
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}
