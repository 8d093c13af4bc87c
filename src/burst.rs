//! Logging a failure that can repeat thousands of times a second (an
//! accept error, a refused peer, a thread that cannot start) once per
//! burst, counting the rest: the log is neither flooded nor blocked on.

use std::time::{Duration, Instant};

/// Logs a recurring failure once per burst, counting the rest: a flood of
/// identical errors must neither fill the log nor block on it.
#[derive(Debug, Default)]
pub(crate) struct Burst {
    inner: std::sync::Mutex<(u64, Option<Instant>)>,
}

impl Burst {
    /// Records one failure; logs the first of a burst (a burst ends after
    /// a second without failures).
    pub(crate) fn hit(&self, log: impl FnOnce(u64)) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let fresh =
            g.1.is_none_or(|last| now.duration_since(last) > Duration::from_secs(1));
        if fresh {
            let skipped = g.0;
            g.0 = 0;
            log(skipped);
        } else {
            g.0 += 1;
        }
        g.1 = Some(now);
    }
}
