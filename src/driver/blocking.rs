//! The blocking driver: runs one connection's pipeline on the calling
//! thread. Every wait is a `poll` on the socket and the stop signal, so a
//! stop reaches a connection blocked in a read at once; the pipeline says
//! what to do with it.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::hooks::Hooks;
use crate::message::{MessageHandler, Reply};
use crate::meter::ConnMeter;
use crate::pipeline::{Conn, Ctx, Next, Settings};
use crate::shutdown::{wait_fd, Shared, Stop, StopLevel, Wake};
use crate::socket::Stream;

/// Read buffer of a blocking framed connection.
const READ_BUF: usize = 64 * 1024;

/// The polite close of a connection a stream handler is done with:
/// half-close, then a lingering read, through the same pipeline as every
/// framed connection.
pub(crate) fn linger_close(stream: &Stream, settings: Settings, shared: &Shared) {
    let mut conn = Conn::closing(settings, Instant::now());
    let hooks = Hooks::default();
    let ctx = Ctx {
        handler: &NoFrames,
        hooks: &hooks,
    };
    drive(&mut conn, stream, &ctx, &shared.stop, None);
}

/// The handler of a connection that is only closing: never called.
struct NoFrames;

impl MessageHandler for NoFrames {
    fn handle(&self, _msg: &[u8], _reply: &mut Reply<'_>) -> crate::HandlerResult {
        Ok(())
    }
}

/// Moves bytes and time for `conn` until it says close.
pub(crate) fn drive(
    conn: &mut Conn,
    stream: &Stream,
    c: &Ctx<'_>,
    stop: &Stop,
    meter: Option<&ConnMeter>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = StopLevel::Running;
    loop {
        if let Some(m) = meter {
            conn.publish(m);
        }
        let now = Instant::now();
        let level = stop.level();
        if level != seen {
            conn.stop(level == StopLevel::Forced, now);
            seen = level;
        }
        let next = conn.next();
        let (events, io) = match next {
            // The gate is the caller's (it holds the connection's guard).
            Next::Close | Next::Busy | Next::Admit => return,
            Next::Resume => {
                conn.resume(now, c);
                continue;
            }
            Next::ShutdownWrite => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                conn.shut_down(now);
                continue;
            }
            Next::Write => (libc::POLLOUT, write_once(stream, conn.output())),
            Next::Read => {
                if buf.is_empty() {
                    buf = vec![0u8; READ_BUF];
                }
                (libc::POLLIN, read_once(stream, &mut buf))
            }
        };
        match io {
            Ok(n) if next == Next::Write => conn.wrote(n, now),
            Ok(0) => conn.eof(now, c),
            Ok(n) => conn.received(&buf[..n], now, c),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.is_lingering() {
                    conn.unacked(super::unacked(stream.as_raw_fd()));
                    if conn.next() == Next::Close {
                        continue;
                    }
                }
                let deadline = conn.deadline();
                if deadline.is_some_and(|d| d <= now) {
                    conn.timeout(now, c);
                    continue;
                }
                // Writes and lingering wait for a forced stop only; a
                // running connection's read also wakes for the drain.
                let signal = if level == StopLevel::Running && next == Next::Read {
                    StopLevel::Draining
                } else {
                    StopLevel::Forced
                };
                let left = deadline.map(|d| d.saturating_duration_since(now));
                match wait_fd(stream.as_raw_fd(), events, Some(stop.signal(signal)), left) {
                    Ok(Wake::Ready) | Ok(Wake::Signal) => {}
                    Ok(Wake::Timeout) => {
                        if conn.is_lingering() {
                            conn.unacked(super::unacked(stream.as_raw_fd()));
                        }
                        conn.timeout(Instant::now(), c)
                    }
                    Err(e) => conn.failed(e, c),
                }
            }
            Err(e) => conn.failed(e, c),
        }
    }
}

fn read_once(stream: &Stream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match (&*stream).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn write_once(stream: &Stream, data: &[u8]) -> io::Result<usize> {
    loop {
        match (&*stream).write(data) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
