//! Running one unit of work on a blocking thread: a stream connection
//! (setup / handle / finish), a framed message connection, or a datagram.
//! The sequential, threads and pool strategies all call [`run_work`]; only
//! *where* they call it differs.

use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::async_conn::{AsyncConnection, AsyncStream};
use crate::conn::Connection;
use crate::dgram::handle_datagram;
use crate::handler::DynAsyncStreamHandler;
use crate::handler::{Handler, MessageHandler, StreamHandler};
use crate::hooks::Failure;
use crate::server::Config;
use crate::session::{Ctx, Flow, Session};
use crate::socket::Stream;
use crate::strategy::Work;

/// Read buffer of a blocking framed connection.
const READ_BUF: usize = 64 * 1024;

/// Runs one connection or datagram to completion.
pub(crate) fn run_work(work: Work, config: &Config) {
    match work {
        Work::Conn(conn) => match &config.handler {
            Handler::Stream(h) => run_stream(conn, &**h, config),
            Handler::Message(h) => run_framed(conn, &**h, config),
            Handler::AsyncStream(h) => {
                // A blocking strategy: give this thread a small runtime.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let stop = config.shared.level.subscribe();
                        rt.block_on(serve_async_stream(conn, &**h, config, stop));
                    }
                    Err(e) => config.hooks.error(conn.peer_addr(), Failure::Io(e)),
                }
            }
            // Rejected at build time; close the connection if it happens.
            Handler::Datagram(_) => drop(conn),
        },
        Work::Datagram(job) => {
            let mut out = Vec::new();
            let mut ends = Vec::new();
            handle_datagram(
                &config.handler,
                &config.hooks,
                &job.data,
                &job.peer,
                &job.socket,
                &mut out,
                &mut ends,
                true,
            );
        }
    }
}

/// Runs an async stream handler on the current runtime, containing its
/// errors and panics like every other handler's.
pub(crate) async fn serve_async_stream(
    conn: Connection,
    handler: &dyn DynAsyncStreamHandler,
    config: &Config,
    stop: tokio::sync::watch::Receiver<u8>,
) {
    use futures_util::FutureExt;
    let (guard, stream, peer) = conn.into_parts();
    // The conversion closes the socket if it fails: unregister it first so a
    // forced stop cannot touch a closed (and maybe reused) descriptor.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    guard.set_socket(None);
    let converted = stream.set_nonblocking(true).and_then(|()| match stream {
        Stream::Tcp(s) => tokio::net::TcpStream::from_std(s).map(AsyncStream::Tcp),
        Stream::Unix(s) => tokio::net::UnixStream::from_std(s).map(AsyncStream::Unix),
    });
    let stream = match converted {
        Ok(s) => s,
        Err(e) => {
            config.hooks.error(&peer, Failure::Io(e));
            return;
        }
    };
    guard.set_socket(Some(fd));
    let conn = AsyncConnection::new(guard, stream, peer.clone(), stop);
    match AssertUnwindSafe(handler.handle_boxed(conn))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => config.hooks.error(&peer, Failure::Handler(e)),
        Err(p) => config.hooks.error(&peer, Failure::from_panic(p)),
    }
}

/// Calls one handler method, turning an error or a panic into a report.
fn guarded(
    config: &Config,
    conn: &mut Connection,
    step: impl FnOnce(&mut Connection) -> crate::handler::HandlerResult,
) -> bool {
    match catch_unwind(AssertUnwindSafe(|| step(conn))) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            let peer = conn.peer_addr().clone();
            // An I/O error from the socket is the peer's doing, not a bug.
            let failure = match e.downcast::<io::Error>() {
                Ok(io) => Failure::Io(*io),
                Err(e) => Failure::Handler(e),
            };
            config.hooks.error(&peer, failure);
            false
        }
        Err(payload) => {
            let peer = conn.peer_addr().clone();
            config.hooks.error(&peer, Failure::from_panic(payload));
            false
        }
    }
}

/// Python's `BaseRequestHandler` sequence: setup, handle, finish (finish
/// always runs once setup succeeded), then a polite close.
fn run_stream(mut conn: Connection, handler: &dyn StreamHandler, config: &Config) {
    conn.set_read_timeout(config.limits.idle_timeout);
    conn.set_write_timeout(config.limits.write_timeout);
    if guarded(config, &mut conn, |c| handler.setup(c)) {
        guarded(config, &mut conn, |c| handler.handle(c));
        guarded(config, &mut conn, |c| handler.finish(c));
    }
    conn.linger_close(config.limits.linger);
}

/// The framed loop: read, hand every whole frame to the handler, write all
/// replies of that read at once, repeat. On end of input (the client's, or
/// the server's shutdown) the last replies are written before closing.
fn run_framed(mut conn: Connection, handler: &dyn MessageHandler, config: &Config) {
    conn.set_read_timeout(config.limits.idle_timeout);
    conn.set_write_timeout(config.limits.write_timeout);
    let ctx = Ctx {
        handler,
        hooks: &config.hooks,
    };
    let mut session = Session::new(&config.framing, conn.peer_addr().clone());
    let mut buf = vec![0u8; READ_BUF];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let limits = &config.limits;
    loop {
        // A frame that has started must finish within the read timeout
        // (slow senders); between frames only the idle timeout applies.
        conn.set_read_timeout(session.read_wait(limits.idle_timeout, limits.read_timeout));
        // Draining: everything read so far is answered; read no more (a
        // client that never stops sending must not keep the drain busy).
        if conn.is_shutting_down() {
            break;
        }
        let n = match conn.read_event(&mut buf) {
            // The peer closed its side: a last unterminated frame counts.
            Ok(Some(0)) => {
                session.finish(&ctx, &mut out);
                let _ = (&conn).write_all(&out);
                break;
            }
            Ok(Some(n)) => n,
            // The server is stopping: a partial frame is not a request.
            Ok(None) => break,
            Err(e) => {
                config.hooks.error(session.peer(), Failure::Io(e));
                // Still send what was answered, then close.
                let _ = (&conn).write_all(&out);
                break;
            }
        };
        let flow = session.feed(&buf[..n], &ctx, &mut out);
        if !out.is_empty() {
            if let Err(e) = (&conn).write_all(&out) {
                config.hooks.error(session.peer(), Failure::Io(e));
                break;
            }
            out.clear();
            if out.capacity() > READ_BUF * 4 {
                out = Vec::with_capacity(4096);
            }
        }
        if flow == Flow::Close {
            break;
        }
    }
    conn.linger_close(config.limits.linger);
}
