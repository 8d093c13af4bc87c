//! Handlers: the code a user writes, one kind per way of talking:
//!
//! * [`StreamHandler`] — Python's `BaseRequestHandler`: `setup`, `handle`,
//!   `finish` over a [`Connection`] it reads and writes itself. For
//!   protocols that need the raw stream.
//! * [`MessageHandler`] — called once per frame; the server does the
//!   reading, the framing (no sticky packets), the batching of replies and
//!   the writing. The fast path, and the one every engine runs natively.
//!   On a datagram socket one datagram is one message and each reply one
//!   datagram to its sender: this is also Python's `DatagramRequestHandler`.
//! * [`AsyncStreamHandler`] — async code over an [`AsyncConnection`].
//!
//! Handlers are shared by every connection (`&self`), so they are
//! `Send + Sync`; state for one connection lives in locals of `handle`
//! (stream handlers) or behind a lock. Closures work through
//! [`message_fn`] and [`stream_fn`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::async_conn::AsyncConnection;
use crate::conn::Connection;

/// Any error a handler returns; reported through the server's
/// `handle_error` hook.
pub use crate::hooks::BoxError;
pub use crate::message::{message_fn, HandlerResult, MessageHandler, Reply};

/// A handler that owns the byte stream of one connection.
///
/// The server calls [`setup`](Self::setup), then [`handle`](Self::handle),
/// then [`finish`](Self::finish) — `finish` even when `handle` failed, as in
/// Python. When the server shuts down, a read that would wait returns
/// end-of-stream, so `handle` sees the usual end of input and finishes its
/// reply.
pub trait StreamHandler: Send + Sync + 'static {
    /// Runs before `handle`; an error here skips `handle`.
    fn setup(&self, conn: &mut Connection) -> HandlerResult {
        let _ = conn;
        Ok(())
    }

    /// Serves the connection.
    fn handle(&self, conn: &mut Connection) -> HandlerResult;

    /// Runs after `handle`, whatever it returned.
    fn finish(&self, conn: &mut Connection) -> HandlerResult {
        let _ = conn;
        Ok(())
    }
}

/// A stream handler written as async code; it runs on the async engine's
/// event loops (and, under the blocking strategies, on a small runtime of
/// its own thread). It owns the connection for as long as it runs.
///
/// ```
/// use sockserv::{AsyncConnection, AsyncStreamHandler, HandlerResult};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// struct Echo;
///
/// impl AsyncStreamHandler for Echo {
///     async fn handle(&self, mut conn: AsyncConnection) -> HandlerResult {
///         let mut buf = [0u8; 4096];
///         loop {
///             let n = conn.read(&mut buf).await?;
///             if n == 0 {
///                 return Ok(());
///             }
///             conn.write_all(&buf[..n]).await?;
///         }
///     }
/// }
/// ```
pub trait AsyncStreamHandler: Send + Sync + 'static {
    /// Serves one connection.
    fn handle(&self, conn: AsyncConnection) -> impl Future<Output = HandlerResult> + Send;
}

/// The object-safe form the server stores.
pub(crate) trait DynAsyncStreamHandler: Send + Sync + 'static {
    fn handle_boxed(
        &self,
        conn: AsyncConnection,
    ) -> Pin<Box<dyn Future<Output = HandlerResult> + Send + '_>>;
}

impl<T: AsyncStreamHandler> DynAsyncStreamHandler for T {
    fn handle_boxed(
        &self,
        conn: AsyncConnection,
    ) -> Pin<Box<dyn Future<Output = HandlerResult> + Send + '_>> {
        Box::pin(self.handle(conn))
    }
}

/// The handler a server runs, of whichever kind.
#[derive(Clone)]
pub enum Handler {
    Stream(Arc<dyn StreamHandler>),
    Message(Arc<dyn MessageHandler>),
    #[allow(private_interfaces)]
    AsyncStream(Arc<dyn DynAsyncStreamHandler>),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Stream(_) => "Handler::Stream",
            Handler::Message(_) => "Handler::Message",
            Handler::AsyncStream(_) => "Handler::AsyncStream",
        })
    }
}

impl Handler {
    /// Wraps a stream handler.
    pub fn stream(h: impl StreamHandler) -> Handler {
        Handler::Stream(Arc::new(h))
    }

    /// Wraps a message handler.
    pub fn message(h: impl MessageHandler) -> Handler {
        Handler::Message(Arc::new(h))
    }

    /// Wraps an async stream handler.
    pub fn async_stream(h: impl AsyncStreamHandler) -> Handler {
        Handler::AsyncStream(Arc::new(h))
    }

    /// True for handlers that need a connection (a stream socket).
    pub fn is_stream(&self) -> bool {
        matches!(self, Handler::Stream(_) | Handler::AsyncStream(_))
    }
}

/// A stream handler from a closure (the closure is `handle`).
pub fn stream_fn<F>(f: F) -> impl StreamHandler
where
    F: Fn(&mut Connection) -> HandlerResult + Send + Sync + 'static,
{
    struct FnStream<F>(F);
    impl<F> StreamHandler for FnStream<F>
    where
        F: Fn(&mut Connection) -> HandlerResult + Send + Sync + 'static,
    {
        fn handle(&self, conn: &mut Connection) -> HandlerResult {
            (self.0)(conn)
        }
    }
    FnStream(f)
}
