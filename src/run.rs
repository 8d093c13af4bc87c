//! Running one unit of work on a blocking thread: a stream connection
//! (setup / handle / finish), a framed message connection, an async stream
//! handler on a small runtime of its own, or a datagram. The sequential,
//! threads and pool strategies all call [`run_work`]; only *where* they
//! call it differs.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::conn::Connection;
use crate::context::Context;
use crate::dgram::DatagramJob;
use crate::handler::{Handler, StreamHandler};
use crate::hooks::Failure;
use crate::message::MessageHandler;
use crate::tracker::Admitted;

/// Runs one connection or datagram to completion.
pub(crate) fn run_work(work: Work, ctx: &Arc<Context>) {
    match work {
        Work::Conn(conn) => match &ctx.handler {
            Handler::Stream(h) => {
                // Behind a proxy, the header first: nothing past it is
                // read, the handler (or program) gets the rest.
                let Some(conn) = conn.read_proxy_header(ctx) else {
                    return;
                };
                let conn = Connection::new(conn, Arc::clone(&ctx.shared), ctx.settings());
                run_stream(conn, &**h, ctx)
            }
            Handler::Message(h) => serve_framed(conn, &**h, ctx),
            Handler::AsyncStream(h) => {
                // A blocking strategy: give this thread a small runtime.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(serve_async(conn, &**h, ctx)),
                    Err(e) => ctx.hooks.error(&conn.peer, Failure::Io(e)),
                }
            }
        },
        Work::Datagram(job) => crate::dgram::serve_job(job, ctx),
    }
}

/// Calls one handler method, turning an error or a panic into a report.
fn guarded(
    ctx: &Context,
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
            ctx.hooks.error(&peer, failure);
            false
        }
        Err(payload) => {
            let peer = conn.peer_addr().clone();
            ctx.hooks.error(&peer, Failure::from_panic(payload));
            false
        }
    }
}

/// Python's `BaseRequestHandler` sequence: setup, handle, finish (finish
/// always runs once setup succeeded), then a polite close.
fn run_stream(mut conn: Connection, handler: &dyn StreamHandler, ctx: &Context) {
    if guarded(ctx, &mut conn, |c| handler.setup(c)) {
        guarded(ctx, &mut conn, |c| handler.handle(c));
        guarded(ctx, &mut conn, |c| handler.finish(c));
    }
    conn.linger_close();
}

/// One unit of work the serving thread hands to an engine.
pub(crate) enum Work {
    /// An accepted, verified stream connection.
    Conn(Admitted),
    /// One received datagram.
    Datagram(DatagramJob),
}

/// Runs an async stream handler on the current runtime, containing its
/// errors and panics like every other handler's.
pub(crate) async fn serve_async(
    conn: crate::tracker::Admitted,
    handler: &dyn crate::handler::DynAsyncStreamHandler,
    ctx: &crate::context::Context,
) {
    use crate::hooks::Failure;
    use crate::socket::Stream;
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;
    let crate::tracker::Admitted {
        mut guard,
        stream,
        mut peer,
        ..
    } = conn;
    // The conversion closes the socket if it fails: unregister it first so a
    // forced stop cannot touch a closed (and maybe reused) descriptor.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    guard.set_socket(None);
    let converted = match stream {
        Stream::Tcp(s) => {
            tokio::net::TcpStream::from_std(s).map(crate::async_conn::AsyncStream::Tcp)
        }
        Stream::Unix(s) => {
            tokio::net::UnixStream::from_std(s).map(crate::async_conn::AsyncStream::Unix)
        }
    };
    let stream = match converted {
        Ok(s) => s,
        Err(e) => {
            ctx.hooks.error(&peer, Failure::Io(e));
            return;
        }
    };
    guard.set_socket(Some(fd));
    let mut proxy = None;
    if let Some(accept) = ctx.proxy {
        // The header by exact reads, like a blocking stream handler's.
        let header = match crate::driver::header::read_async(&stream, accept, &ctx.shared).await {
            Ok(h) => h,
            Err(e) => return crate::accept::header_failed(ctx, &guard, &peer, e),
        };
        match crate::accept::after_header(ctx, &mut guard, &peer, header) {
            Ok(client) => {
                peer = client.peer;
                proxy = Some(client.proxy);
            }
            Err(why) => {
                if crate::accept::sends_message(why) {
                    crate::accept::refuse_fd(stream.raw_fd(), ctx);
                }
                return;
            }
        }
    }
    let conn = crate::async_conn::AsyncConnection::new(
        guard,
        stream,
        peer.clone(),
        proxy,
        Arc::clone(&ctx.shared),
    );
    match AssertUnwindSafe(handler.handle_boxed(conn))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ctx.hooks.error(&peer, Failure::Handler(e)),
        Err(p) => ctx.hooks.error(&peer, Failure::from_panic(p)),
    }
}

/// Serves a framed connection with a message handler until it closes.
fn serve_framed(admitted: Admitted, handler: &dyn MessageHandler, ctx: &Context) {
    let Admitted {
        mut guard,
        stream,
        peer,
        listener,
        ..
    } = admitted;
    let mut conn = ctx.new_conn(peer, listener, Instant::now());
    let c = ctx.ctx(handler);
    loop {
        let meter = guard.meter().map(|m| &**m);
        crate::driver::blocking::drive(&mut conn, &stream, &c, &ctx.shared.stop, meter);
        if conn.next() != crate::pipeline::Next::Admit {
            break;
        }
        ctx.admit(&mut conn, &mut guard, Instant::now());
    }
    // The guard unregisters the socket before it closes.
    drop(guard);
    drop(stream);
}
