//! Thread per connection (and per datagram), like Python's `ThreadingMixIn`.
//!
//! Join policy: threads are not joined one by one. The server's tracker
//! counts live connections; on shutdown `serve_forever` waits for that count
//! to reach zero, up to the drain timeout, then cuts the sockets of the
//! rest. A handler that ignores its socket and never returns is left running
//! (detached) and reported; it cannot hold the server's shutdown hostage.

use std::sync::Arc;

use super::{Engine, Work};
use crate::run;
use crate::server::Config;

pub(crate) struct Threads {
    config: Arc<Config>,
}

impl Threads {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Threads { config }
    }
}

impl Engine for Threads {
    fn dispatch(&self, work: Work) {
        let config = Arc::clone(&self.config);
        let spawned = std::thread::Builder::new()
            .name("sockserv-conn".into())
            .spawn(move || {
                crate::shutdown::mark_server_thread();
                run::run_work(work, &config)
            });
        if let Err(e) = spawned {
            // Out of threads: the work is dropped (its socket closes), the
            // server keeps going.
            tracing::error!("cannot start a thread for a connection: {e}");
        }
    }
}
