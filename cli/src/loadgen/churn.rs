//! The connection-churn workload: each client loops connect, send one
//! line, read the reply, close.
//!
//! A ping-pong run over long-lived connections measures what a server pays
//! per message; this measures what it pays per connection — accept, the
//! per-connection setup of its strategy (a thread, a task, a pool slot),
//! teardown — which is what a server in front of short-lived clients (HTTP
//! without keep-alive, health checks, the seed's own client) spends its time
//! on. Latency is per connection: from the start of `connect` to the
//! verified reply.
//!
//! The reply is accepted from an echo server (the line back) and from an
//! upper-casing one like the seed's: churn payloads have no lower-case
//! letters, and a reply may come without its line end, followed by the
//! server closing (the seed's `socketserver` handler does that). Once the
//! reply is in, the client half-closes and reads to the end, so that both
//! sides close in order, as a real client would, rather than with a reset.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use sockserv::addr::Endpoint;
use sockserv::frame::Encoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use super::connections::ConnError;
use super::payloads::{excerpt, mismatch};
use super::plan::Targets;
use super::report::{describe, secs, ErrorKind, MAX_LATENCY_NS};
use super::Ctx;

/// One churn client, `id`, until the run ends, the request budget is spent
/// or (before any connection of its own succeeded) nothing accepts it.
pub(super) async fn client(ctx: &Ctx, targets: &Targets, id: usize) {
    let plan = &*ctx.plan;
    let codec = plan.framing.as_ref().map(|f| f.codec());
    let mut expect = vec![0; plan.size];
    let mut request = Vec::with_capacity(plan.size + 2);
    let mut reply = Vec::with_capacity(plan.size + 2);
    let mut opened_one = false;
    for seq in 0u64.. {
        let started = Instant::now();
        if ctx.end.is_some_and(|end| started >= end) {
            return;
        }
        let measured = started >= ctx.measure_start;
        if measured && !ctx.shared.take_budget() {
            return;
        }
        plan.payloads.fill(&mut expect, id, seq);
        request.clear();
        match &codec {
            // Validated in `Payloads::new`: every payload encodes.
            Some(codec) => {
                let _ = codec.encode(&expect, &mut request);
            }
            None => request.extend_from_slice(&expect),
        }
        // Clients start at different client addresses and each moves on by
        // one per connection, so the addresses are used evenly.
        let from = (!targets.sources.is_empty())
            .then(|| targets.sources[(id + seq as usize) % targets.sources.len()]);

        if measured {
            ctx.stats.borrow_mut().sent += 1;
        }
        ctx.in_flight.set(ctx.in_flight.get() + 1);
        let outcome = exchange(ctx, targets, from, id, seq, &request, &expect, &mut reply).await;
        ctx.answered(1);
        match outcome {
            Ok(answered) => {
                opened_one = true;
                ctx.shared.replies.fetch_add(1, Ordering::Relaxed);
                if measured && ctx.end.is_none_or(|end| answered <= end) {
                    let mut stats = ctx.stats.borrow_mut();
                    let ns = answered.saturating_duration_since(started).as_nanos() as u64;
                    stats.hist.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
                    stats.requests += 1;
                    stats.last_reply = Some(answered);
                    ctx.shared.measured.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(Failed { connected, error }) => {
                opened_one |= connected;
                ctx.stats
                    .borrow_mut()
                    .error(&ctx.shared, error.kind, 1, || error.message);
                // A client that never got a connection through is looking
                // at a server that is not there: one error says it, a loop
                // of refused connects would only repeat it.
                if !opened_one {
                    return;
                }
            }
        }
    }
}

/// A failed exchange, and whether its connection had been opened (and so
/// counted) before it failed.
struct Failed {
    connected: bool,
    error: ConnError,
}

/// Connects (from `from`, when given), sends `request`, and returns when
/// the reply `expect` has arrived, with the time it did; the connection is
/// closed in order before returning.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    ctx: &Ctx,
    targets: &Targets,
    from: Option<IpAddr>,
    id: usize,
    seq: u64,
    request: &[u8],
    expect: &[u8],
    reply: &mut Vec<u8>,
) -> Result<Instant, Failed> {
    let plan = &*ctx.plan;
    let not_connected = |error| Failed {
        connected: false,
        error,
    };
    let connect = tokio::time::timeout(plan.connect_timeout, connect(targets, from));
    let stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(not_connected(connect_error(targets, from, &e))),
        Err(_) => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "timed out");
            return Err(not_connected(connect_error(targets, from, &e)));
        }
    };
    ctx.stats.borrow_mut().opened += 1;
    let converse = async {
        match stream {
            Stream::Tcp(s) => converse(s, id, seq, request, expect, reply).await,
            Stream::Unix(s) => converse(s, id, seq, request, expect, reply).await,
        }
    };
    let result = match tokio::time::timeout(plan.reply_timeout, converse).await {
        Ok(result) => result,
        Err(_) => Err(ConnError {
            kind: ErrorKind::Timeout,
            message: format!(
                "client {id}, connection {seq}: no reply and close within {}",
                secs(plan.reply_timeout)
            ),
        }),
    };
    result.map_err(|error| Failed {
        connected: true,
        error,
    })
}

/// A churn connection of either stream transport.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect(targets: &Targets, from: Option<IpAddr>) -> io::Result<Stream> {
    match &targets.endpoint {
        Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        _ => {
            let mut last = None;
            for &addr in &targets.addrs {
                match connect_tcp(addr, from).await {
                    Ok(s) => return Ok(Stream::Tcp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
        }
    }
}

/// A TCP connection to `addr`, bound first to the client address `from`
/// when given (port chosen by the system).
async fn connect_tcp(addr: SocketAddr, from: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = from.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn connect_error(targets: &Targets, from: Option<IpAddr>, e: &io::Error) -> ConnError {
    let from = from.map(|ip| format!(" from {ip}")).unwrap_or_default();
    ConnError {
        kind: ErrorKind::Connect,
        message: format!(
            "cannot connect to {}{from}: {}",
            targets.endpoint,
            describe(e)
        ),
    }
}

/// Sends the request, reads the reply and closes: half-close once the
/// reply is complete, then read to the end. Returns when the reply was
/// complete. The bytes after the reply may only be its line end.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    id: usize,
    seq: u64,
    request: &[u8],
    expect: &[u8],
    reply: &mut Vec<u8>,
) -> Result<Instant, ConnError> {
    let io_error = |e: io::Error| ConnError {
        kind: ErrorKind::Io,
        message: format!("client {id}, connection {seq}: {}", describe(&e)),
    };
    s.write_all(request).await.map_err(io_error)?;
    reply.clear();
    let mut answered = None;
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.map_err(io_error)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if answered.is_none() {
            let k = reply.len().min(expect.len());
            if reply[..k] != expect[..k] {
                return Err(ConnError {
                    kind: ErrorKind::WrongReply,
                    message: mismatch(id, seq, &expect[..k], &reply[..k]),
                });
            }
            if reply.len() >= expect.len() {
                answered = Some(Instant::now());
                // Done: say so, and the server closes in turn. An error
                // here is the server having closed first, which is fine.
                let _ = s.shutdown().await;
            }
        }
        if reply.len() > expect.len() + 2 {
            break;
        }
    }
    let Some(answered) = answered else {
        return Err(ConnError {
            kind: ErrorKind::Io,
            message: format!(
                "client {id}, connection {seq}: closed by the server after {} of the {} bytes of the reply",
                reply.len(),
                expect.len()
            ),
        });
    };
    let rest = &reply[expect.len()..];
    if !matches!(rest, b"" | b"\n" | b"\r\n") {
        return Err(ConnError {
            kind: ErrorKind::WrongReply,
            message: format!(
                "client {id}, connection {seq}: unexpected bytes after the reply: {}",
                excerpt(rest, 0)
            ),
        });
    }
    Ok(answered)
}
