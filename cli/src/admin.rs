//! The admin endpoint over every server `serve` runs (one for the stream
//! addresses, one for the datagram ones): their snapshots side by side, as
//! if they were one server.

use sockserv::admin::{Detail, Source};
use sockserv::stats::{ServeState, Snapshot};
use sockserv::ShutdownHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The servers of one `sockserv serve`, seen as one.
pub struct Combined {
    servers: Vec<ShutdownHandle>,
    /// Set from the stop signal on, while `--shutdown-delay` still serves:
    /// not ready, so a balancer's health check takes the instance out
    /// before anything is refused.
    leaving: Arc<AtomicBool>,
}

impl Combined {
    pub fn new(servers: Vec<ShutdownHandle>, leaving: Arc<AtomicBool>) -> Combined {
        Combined { servers, leaving }
    }
}

impl Source for Combined {
    fn snapshot(&self, detail: &Detail) -> Snapshot {
        let mut all = Snapshot::default();
        for (n, server) in self.servers.iter().enumerate() {
            let snap = server.snapshot(detail.connections, detail.closed);
            // Listener numbers are per server: shift them past the ones
            // already listed.
            let offset = all.listeners.len();
            if n == 0 {
                all.uptime = snap.uptime;
            }
            all.state = all.state.max_by_severity(snap.state);
            all.open_connections += snap.open_connections;
            all.listeners.extend(snap.listeners);
            all.connections
                .extend(snap.connections.into_iter().map(|mut c| {
                    c.listener += offset;
                    c
                }));
            all.closed.extend(snap.closed.into_iter().map(|mut c| {
                c.listener += offset;
                c
            }));
        }
        all.connections.sort_by_key(|c| c.idle);
        all.connections.truncate(detail.connections);
        all.closed.sort_by_key(|c| std::cmp::Reverse(c.closed_at));
        all.closed.truncate(detail.closed);
        all
    }

    fn state(&self) -> ServeState {
        if self.leaving.load(Ordering::Acquire)
            || self.servers.iter().any(ShutdownHandle::is_requested)
        {
            ServeState::Draining
        } else {
            ServeState::Running
        }
    }
}

/// The more serious of two states (forced > draining > running).
trait Severity {
    fn max_by_severity(self, other: ServeState) -> ServeState;
}

impl Severity for ServeState {
    fn max_by_severity(self, other: ServeState) -> ServeState {
        if self.gauge() >= other.gauge() {
            self
        } else {
            other
        }
    }
}
