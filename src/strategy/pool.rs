//! A bounded pool: N worker threads take work from a queue of bounded
//! length. When the queue is full, `dispatch` waits, so the accept loop
//! stops accepting and new clients wait in the kernel's backlog: threads and
//! memory stay bounded however many clients arrive.
//!
//! A handler panic is caught inside the worker (see `run`), so a worker is
//! never lost; should a worker thread die anyway, the next dispatch starts a
//! replacement.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{Engine, Work};
use crate::run;
use crate::server::Config;

struct Queue {
    items: Mutex<QueueState>,
    /// Signalled when work arrives or the pool stops.
    ready: Condvar,
    /// Signalled when a slot frees up or the server stops accepting.
    space: Condvar,
    capacity: usize,
}

struct QueueState {
    items: VecDeque<Work>,
    closed: bool,
}

pub(crate) struct Pool {
    queue: Arc<Queue>,
    config: Arc<Config>,
    workers: usize,
    alive: Arc<AtomicUsize>,
}

impl Pool {
    pub(crate) fn new(config: Arc<Config>, workers: usize, queue: usize) -> std::io::Result<Pool> {
        let pool = Pool {
            queue: Arc::new(Queue {
                items: Mutex::new(QueueState {
                    items: VecDeque::with_capacity(queue.max(1)),
                    closed: false,
                }),
                ready: Condvar::new(),
                space: Condvar::new(),
                capacity: queue.max(1),
            }),
            config,
            workers: workers.max(1),
            alive: Arc::new(AtomicUsize::new(0)),
        };
        for _ in 0..pool.workers {
            pool.spawn_worker()?;
        }
        Ok(pool)
    }

    fn spawn_worker(&self) -> std::io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let config = Arc::clone(&self.config);
        let alive = Arc::clone(&self.alive);
        alive.fetch_add(1, Ordering::SeqCst);
        let res = std::thread::Builder::new()
            .name("sockserv-worker".into())
            .spawn(move || {
                struct Alive(Arc<AtomicUsize>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _alive = Alive(alive);
                crate::shutdown::mark_server_thread();
                while let Some(work) = queue.pop() {
                    run::run_work(work, &config);
                }
            });
        if res.is_err() {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
        res.map(|_| ())
    }
}

impl Queue {
    fn pop(&self) -> Option<Work> {
        let mut st = self.items.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(w) = st.items.pop_front() {
                self.space.notify_one();
                return Some(w);
            }
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Engine for Pool {
    fn dispatch(&self, work: Work) {
        // Replace workers that died (they should not: panics are caught).
        while self.alive.load(Ordering::SeqCst) < self.workers {
            if self.spawn_worker().is_err() {
                break;
            }
        }
        let mut st = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        while st.items.len() >= self.queue.capacity && !self.config.shared.stop.is_triggered() {
            st = self.queue.space.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        // Even when stopping, queue it: the worker drains it gracefully
        // (its reads see the shutdown and it closes politely).
        st.items.push_back(work);
        self.queue.ready.notify_one();
    }

    fn wake(&self) {
        let _st = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.space.notify_all();
    }

    fn stop(&self, _deadline: Instant) {
        let mut st = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        st.closed = true;
        self.queue.ready.notify_all();
        self.queue.space.notify_all();
    }
}
