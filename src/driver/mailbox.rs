//! How other threads reach an event loop: a list of messages and the
//! loop's waker. Workers hand finished connections back through it.

use std::sync::Mutex;

use crate::pipeline::Offload;

/// Messages to a loop from other threads.
pub(crate) enum Msg {
    /// A worker finished with a connection's session.
    Done {
        slot: usize,
        gen: u32,
        work: Box<Offload>,
    },
    /// Leave now (the engine is dropped).
    Quit,
}

/// How other threads reach one loop.
pub(crate) struct Mailbox {
    pub(super) items: Mutex<Vec<Msg>>,
    pub(super) waker: mio::Waker,
}

impl Mailbox {
    pub(crate) fn send(&self, msg: Msg) {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
        let _ = self.waker.wake();
    }

    pub(super) fn wake(&self) {
        let _ = self.waker.wake();
    }
}
