//! Thread per connection (and per datagram), like Python's `ThreadingMixIn`.
//!
//! Join policy: threads are not joined one by one. The server's tracker
//! counts live connections; on shutdown `serve_forever` waits for that count
//! to reach zero, up to the drain grace, then cuts the sockets of the
//! rest. A handler that ignores its socket and never returns is left running
//! (detached) and reported; it cannot hold the server's shutdown hostage.

use std::sync::Arc;

use crate::burst::Burst;
use crate::context::Context;
use crate::run;
use crate::run::Work;

#[derive(Default)]
pub(crate) struct Threads {
    /// Out of threads: logged once per burst, never once per connection.
    failures: Burst,
}

impl Threads {
    pub(crate) fn dispatch(&self, work: Work, ctx: &Arc<Context>) {
        let ctx = Arc::clone(ctx);
        let spawned = std::thread::Builder::new()
            .name("sockserv-conn".into())
            .spawn(move || {
                crate::shutdown::mark_server_thread();
                run::run_work(work, &ctx)
            });
        if let Err(e) = spawned {
            // The work is dropped (its socket closes); the server goes on.
            self.failures.hit(|more| {
                if more > 0 {
                    tracing::error!("cannot start a thread for a connection: {e} ({more} more)");
                } else {
                    tracing::error!("cannot start a thread for a connection: {e}");
                }
            });
        }
    }
}
