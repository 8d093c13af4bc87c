//! The connection an async stream handler talks to: a tokio stream (TCP or
//! Unix) with the peer's address and the server's shutdown signal.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addr::Address;
use crate::shutdown::{Shared, StopLevel, StopWait};
use crate::tracker::TrackGuard;

pub(crate) enum AsyncStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncStream {
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            AsyncStream::Tcp(s) => s.as_raw_fd(),
            AsyncStream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// A system call of our own on the socket, through tokio's readiness
    /// (a "would block" clears it, so the next wait is for a new event).
    pub(crate) fn try_io<R>(
        &self,
        interest: tokio::io::Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            AsyncStream::Tcp(s) => s.try_io(interest, f),
            AsyncStream::Unix(s) => s.try_io(interest, f),
        }
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            AsyncStream::Tcp(s) => s.readable().await,
            AsyncStream::Unix(s) => s.readable().await,
        }
    }
}

/// One accepted connection for an [`AsyncStreamHandler`](crate::AsyncStreamHandler).
/// It implements tokio's `AsyncRead` and `AsyncWrite`, so `AsyncReadExt`,
/// `BufReader` and codecs work on it.
pub struct AsyncConnection {
    // Declared first: unregisters the socket before it closes.
    _guard: TrackGuard,
    stream: AsyncStream,
    peer: Address,
    proxy: Option<Arc<crate::proxy::ProxyInfo>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncConnection")
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncConnection {
    pub(crate) fn new(
        guard: TrackGuard,
        stream: AsyncStream,
        peer: Address,
        proxy: Option<Arc<crate::proxy::ProxyInfo>>,
        shared: Arc<Shared>,
    ) -> Self {
        AsyncConnection {
            _guard: guard,
            stream,
            peer,
            proxy,
            shared,
        }
    }

    /// The client's address (the one a PROXY header named, behind a proxy).
    pub fn peer_addr(&self) -> &Address {
        &self.peer
    }

    /// What the PROXY header said (the proxy's address, the destination,
    /// v2 TLVs), on a listener that takes the PROXY protocol.
    pub fn proxy(&self) -> Option<&crate::proxy::ProxyInfo> {
        self.proxy.as_deref()
    }

    /// Resolves when the server starts shutting down: finish the request
    /// in hand, reply, and return. (The server cuts the connection at the
    /// drain deadline regardless.)
    pub async fn shutdown_requested(&mut self) {
        StopWait::new(Arc::clone(&self.shared), StopLevel::Draining).await;
    }

    /// True once the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.stop.is_stopping()
    }
}

impl AsyncRead for AsyncConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            AsyncStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AsyncStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AsyncConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            AsyncStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AsyncStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            AsyncStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            AsyncStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// Half-close: end-of-stream to the client; reading goes on.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            AsyncStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AsyncStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
