//! Drivers: the code that moves bytes and time between a socket and the
//! connection pipeline ([`crate::pipeline::Conn`]). They decide nothing
//! about a connection — the pipeline does — so there are exactly two, one
//! per way of waiting:
//!
//! * [`blocking`]: one connection per thread, waiting in `poll` on its
//!   socket and the stop signal (sequential, threads, and the pool's
//!   stream handlers);
//! * [`event_loop`]: many connections per thread, served straight from
//!   epoll readiness events, accepting where they are served (event loops
//!   and the pool's message handlers).

pub(crate) mod blocking;
pub(crate) mod event_loop;
pub(crate) mod header;
pub(crate) mod mailbox;

/// Bytes in a socket's send queue not yet acknowledged by the peer
/// (SIOCOUTQ); 0 if the kernel will not say.
pub(crate) fn unacked(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}
