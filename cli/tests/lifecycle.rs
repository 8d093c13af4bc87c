//! The server's lifecycle through the library API: many clients at once,
//! one-at-a-time in sequential mode, shutdown with clients still connected,
//! the drain policy for handlers that never return, errors and panics in
//! handlers, the hooks (verify_request, handle_error, handle_timeout,
//! service_actions), handle_request, and the half-close.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{serve, strategies, wait_until, Running, DEADLINE};
use sockserv::frame::Framing;
use sockserv::handler::{message_fn, stream_fn};
use sockserv::handlers::Echo;
use sockserv::{Client, DrainPolicy, Endpoint, Failure, Handled, Server, Strategy};

const POOL: Strategy = Strategy::Pool {
    workers: 8,
    queue: 32,
};
const ASYNC: Strategy = Strategy::EventLoops { loops: 2 };

fn tcp_addr(ep: &Endpoint) -> std::net::SocketAddr {
    ep.resolve().unwrap()[0]
}

fn connect(ep: &Endpoint) -> TcpStream {
    let s = TcpStream::connect_timeout(&tcp_addr(ep), DEADLINE).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads until end of stream; `Ok(bytes)` on a clean close, `Err` on a
/// reset. Panics if the server neither closes nor resets within DEADLINE.
fn read_to_close(s: &TcpStream) -> Result<Vec<u8>, std::io::Error> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&*s).read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server neither closed nor reset the connection within {DEADLINE:?}")
            }
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Many clients at once

fn many_clients(strategy: Strategy) {
    const CLIENTS: usize = 200;
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .framing(Framing::line())
            .message(Echo),
    );
    let ep = server.endpoint.clone();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let ep = ep.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<(), String> {
                barrier.wait();
                let mut c = Client::connect(&ep, Framing::line()).map_err(|e| e.to_string())?;
                c.set_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
                let msg = format!("client {i} of {CLIENTS}: {}", "x".repeat(i % 37));
                let reply = c.request(msg.as_bytes()).map_err(|e| format!("{i}: {e}"))?;
                if reply != msg.as_bytes() {
                    return Err(format!(
                        "{i}: got {:?}, sent {msg:?}",
                        String::from_utf8_lossy(&reply)
                    ));
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{strategy}: {} of {CLIENTS} clients failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    server.stop();
}

#[test]
fn many_concurrent_clients_threads() {
    many_clients(Strategy::Threads);
}

#[test]
fn many_concurrent_clients_pool() {
    many_clients(POOL);
}

#[test]
fn many_concurrent_clients_async() {
    many_clients(ASYNC);
}

// ---------------------------------------------------------------------------
// Sequential means one at a time

#[derive(Default)]
struct Gauge {
    current: AtomicUsize,
    max: AtomicUsize,
}

struct InFlight(Arc<Gauge>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream server whose handler reads one line, echoes it and returns,
/// recording how many handlers run at once.
fn gauged_server(strategy: Strategy) -> (Running, Arc<Gauge>) {
    let gauge = Arc::new(Gauge::default());
    let g = Arc::clone(&gauge);
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .stream(stream_fn(move |conn| {
                let now = g.current.fetch_add(1, Ordering::SeqCst) + 1;
                g.max.fetch_max(now, Ordering::SeqCst);
                let _in_flight = InFlight(Arc::clone(&g));
                let mut line = String::new();
                conn.reader().read_line(&mut line)?;
                conn.write_all(line.as_bytes())?;
                Ok(())
            })),
    );
    (server, gauge)
}

fn round_trip(s: &TcpStream, msg: &str) -> String {
    (&*s).write_all(format!("{msg}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn sequential_serves_one_client_at_a_time() {
    let (server, gauge) = gauged_server(Strategy::Sequential);
    let a = connect(&server.endpoint);
    let b = connect(&server.endpoint);
    let c = connect(&server.endpoint);
    assert!(wait_until(DEADLINE, || gauge
        .current
        .load(Ordering::SeqCst)
        == 1));

    // B speaks first, but A holds the server: B gets nothing yet.
    (&b).write_all(b"from b\n").unwrap();
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = (&b).read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "B was answered while A was being served: {early:?}"
    );
    assert_eq!(round_trip(&a, "from a"), "from a");
    drop(a);

    // Now B's request, sent long ago, is served; then C.
    b.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut line = String::new();
    BufReader::new(&b).read_line(&mut line).unwrap();
    assert_eq!(line, "from b\n");
    drop(b);
    assert_eq!(round_trip(&c, "from c"), "from c");
    drop(c);

    server.stop();
    assert_eq!(
        gauge.max.load(Ordering::SeqCst),
        1,
        "sequential ran handlers concurrently"
    );
}

#[test]
fn threads_serve_clients_concurrently() {
    let (server, gauge) = gauged_server(Strategy::Threads);
    let clients: Vec<TcpStream> = (0..5).map(|_| connect(&server.endpoint)).collect();
    // All five handlers are running (each blocked reading its client).
    assert!(
        wait_until(DEADLINE, || gauge.current.load(Ordering::SeqCst) == 5),
        "only {} handlers running",
        gauge.current.load(Ordering::SeqCst)
    );
    for (i, c) in clients.iter().enumerate().rev() {
        assert_eq!(round_trip(c, &format!("client {i}")), format!("client {i}"));
    }
    drop(clients);
    server.stop();
    assert!(gauge.max.load(Ordering::SeqCst) > 1);
    assert_eq!(gauge.max.load(Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------------------
// Shutdown while clients are connected and idle

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The built-in echo message handler (the server reads for it).
    Message,
    /// A stream handler blocked in `read` on its connection.
    StreamRead,
}

/// How the connected clients behave while the server shuts down.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Peers {
    /// Each client waits in `read` and closes when it sees end of stream
    /// (what a client waiting for the server does).
    Reading,
    /// The clients do nothing at all: they neither send, read nor close.
    Passive,
}

/// Starts a server, connects three clients that each did one round-trip
/// where the strategy allows it (sequential serves only the first), and
/// measures `shutdown()` with all of them still connected and idle.
fn shutdown_with_idle_clients(
    strategy: Strategy,
    kind: Kind,
    peers: Peers,
    drain: DrainPolicy,
) -> Duration {
    let builder = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(strategy)
        .drain(drain);
    let builder = match kind {
        Kind::Message => builder.framing(Framing::line()).message(Echo),
        Kind::StreamRead => builder.stream(stream_fn(|conn| {
            let mut buf = [0u8; 1024];
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                conn.write_all(&buf[..n])?;
            }
        })),
    };
    let mut server = serve(builder);
    let served = if strategy == Strategy::Sequential {
        1
    } else {
        3
    };
    let clients: Vec<TcpStream> = (0..3).map(|_| connect(&server.endpoint)).collect();
    for (i, c) in clients.iter().take(served).enumerate() {
        assert_eq!(round_trip(c, &format!("idle {i}")), format!("idle {i}"));
    }
    assert!(wait_until(DEADLINE, || server.handle.active_connections() == served));

    // Reading clients wait on threads; each reports what it read before
    // the end of the stream.
    let (clients, readers): (Vec<TcpStream>, Vec<_>) = match peers {
        Peers::Passive => (clients, Vec::new()),
        Peers::Reading => (
            Vec::new(),
            clients
                .into_iter()
                .map(|c| std::thread::spawn(move || read_to_close(&c)))
                .collect(),
        ),
    };

    let took = server
        .shutdown_within(DEADLINE)
        .unwrap_or_else(|| panic!("{strategy} {kind:?}: shutdown() did not return"));
    // Every client was closed (or, if never accepted, reset) by the
    // server, with no stray data.
    for r in readers {
        if let Ok(rest) = r.join().unwrap() {
            assert!(rest.is_empty(), "unexpected data after shutdown: {rest:?}");
        }
    }
    for c in clients.iter().take(served) {
        if let Ok(rest) = read_to_close(c) {
            assert!(rest.is_empty(), "unexpected data after shutdown: {rest:?}");
        }
    }
    took
}

macro_rules! idle_shutdown_tests {
    ($($name:ident: $strategy:expr, $kind:expr;)*) => {
        $(
            #[test]
            fn $name() {
                let took = shutdown_with_idle_clients($strategy, $kind, Peers::Reading, DrainPolicy::default());
                assert!(
                    took < Duration::from_secs(1),
                    "{} {:?}: shutdown() took {took:?} with idle clients connected",
                    $strategy, $kind
                );
            }
        )*
    };
}

idle_shutdown_tests! {
    shutdown_idle_sequential_message: Strategy::Sequential, Kind::Message;
    shutdown_idle_threads_message: Strategy::Threads, Kind::Message;
    shutdown_idle_pool_message: POOL, Kind::Message;
    shutdown_idle_async_message: ASYNC, Kind::Message;
    shutdown_idle_sequential_stream_read: Strategy::Sequential, Kind::StreamRead;
    shutdown_idle_threads_stream_read: Strategy::Threads, Kind::StreamRead;
    shutdown_idle_pool_stream_read: POOL, Kind::StreamRead;
    shutdown_idle_async_stream_read: ASYNC, Kind::StreamRead;
}

/// Clients that neither read nor close: with the default limits the
/// lingering close holds every one of them for `DrainPolicy::linger` (2 s)
/// after the shutdown, so `shutdown()` takes 2 s in every mode.
#[test]
fn shutdown_with_passive_idle_clients_within_1s() {
    for strategy in strategies() {
        for kind in [Kind::Message, Kind::StreamRead] {
            let took =
                shutdown_with_idle_clients(strategy, kind, Peers::Passive, DrainPolicy::default());
            assert!(
                took < Duration::from_secs(1),
                "{strategy} {kind:?}: shutdown() took {took:?} with passive idle clients connected"
            );
        }
    }
}

/// The same passive clients with a short linger: the delay above is the
/// lingering close and nothing else.
#[test]
fn shutdown_with_passive_idle_clients_and_short_linger() {
    let limits = DrainPolicy::new().linger(Duration::from_millis(100));
    for strategy in strategies() {
        for kind in [Kind::Message, Kind::StreamRead] {
            let took = shutdown_with_idle_clients(strategy, kind, Peers::Passive, limits);
            assert!(
                took < Duration::from_secs(1),
                "{strategy} {kind:?}: shutdown() took {took:?} with passive idle clients connected"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Handlers that never return: cut at the drain deadline, left behind

/// Sets the flag when dropped, so a stuck handler is released even when
/// the test fails.
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn stuck_handler_is_left_behind(strategy: Strategy) {
    let release = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let (r, e, l) = (
        Arc::clone(&release),
        Arc::clone(&entered),
        Arc::clone(&left),
    );
    let mut server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .drain(
                DrainPolicy::new()
                    .grace(Duration::from_millis(300))
                    .linger(Duration::from_millis(100)),
            )
            .stream(stream_fn(move |_conn| {
                e.fetch_add(1, Ordering::SeqCst);
                // Never touches the socket; bounded by the release flag
                // (and, as a last resort, a minute).
                let end = Instant::now() + Duration::from_secs(60);
                while !r.load(Ordering::SeqCst) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                l.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })),
    );
    // Declared after the server so it drops first: on a failure the
    // handler is released before the server's drop waits for its thread.
    let _release = Release(Arc::clone(&release));
    let client = connect(&server.endpoint);
    (&client).write_all(b"anyone there?\n").unwrap();
    assert!(wait_until(DEADLINE, || entered.load(Ordering::SeqCst) == 1));

    let took = server
        .shutdown_within(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{strategy}: shutdown() did not return within 5 s"));
    assert!(
        took < Duration::from_secs(2),
        "{strategy}: shutdown() took {took:?} with drain_timeout 300 ms"
    );
    assert!(
        took >= Duration::from_millis(250),
        "{strategy}: no drain at all ({took:?})"
    );
    // The handler was left behind, still running; its socket was cut.
    assert_eq!(
        left.load(Ordering::SeqCst),
        0,
        "{strategy}: handler ended early"
    );
    let _ = read_to_close(&client);
    // Released, it finishes.
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(DEADLINE, || left.load(Ordering::SeqCst) == 1));
}

#[test]
fn stuck_handler_left_behind_threads() {
    stuck_handler_is_left_behind(Strategy::Threads);
}

#[test]
fn stuck_handler_left_behind_pool() {
    stuck_handler_is_left_behind(POOL);
}

/// Under the event-loop strategy a stream handler gets a thread of its own
/// (as in threads mode): one that never returns must not hold `shutdown()`.
#[test]
fn stuck_handler_left_behind_async() {
    stuck_handler_is_left_behind(ASYNC);
}

// ---------------------------------------------------------------------------
// Errors and panics in handlers

#[derive(Default)]
struct Failures {
    errors: AtomicUsize,
    panics: AtomicUsize,
    other: AtomicUsize,
}

fn count_failures(f: &Failures, failure: &Failure) {
    match failure {
        Failure::Handler(e) if e.to_string().contains("deliberate error") => {
            f.errors.fetch_add(1, Ordering::SeqCst);
        }
        Failure::Panic(msg) if msg.contains("deliberate panic") => {
            f.panics.fetch_add(1, Ordering::SeqCst);
        }
        _ => {
            f.other.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn message_handler_failures(strategy: Strategy) {
    let failures = Arc::new(Failures::default());
    let f = Arc::clone(&failures);
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .framing(Framing::line())
            .handle_error(move |_peer, failure| count_failures(&f, failure))
            .message(message_fn(|msg, reply| match msg {
                b"error" => Err("deliberate error".into()),
                b"panic" => panic!("deliberate panic"),
                _ => {
                    reply.send(msg)?;
                    Ok(())
                }
            })),
    );
    let ep = server.endpoint.clone();
    {
        let mut c = Client::connect(&ep, Framing::line()).unwrap();
        c.set_timeout(Some(DEADLINE)).unwrap();
        c.send(b"error").unwrap();
        // The connection carries on with the next message.
        assert_eq!(c.request(b"after error").unwrap(), b"after error");
        assert_eq!(failures.errors.load(Ordering::SeqCst), 1, "{strategy}");
        c.send(b"panic").unwrap();
        assert_eq!(c.request(b"after panic").unwrap(), b"after panic");
        assert_eq!(failures.panics.load(Ordering::SeqCst), 1, "{strategy}");
    }
    // And the next client is served.
    let mut c = Client::connect(&ep, Framing::line()).unwrap();
    c.set_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(c.request(b"next client").unwrap(), b"next client");
    drop(c);
    server.stop();
    assert_eq!(failures.other.load(Ordering::SeqCst), 0, "{strategy}");
}

fn stream_handler_failures(strategy: Strategy) {
    let failures = Arc::new(Failures::default());
    let finished = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&failures);
    struct Handler(Arc<AtomicUsize>);
    impl sockserv::StreamHandler for Handler {
        fn handle(&self, conn: &mut sockserv::Connection) -> sockserv::HandlerResult {
            let mut line = String::new();
            conn.reader().read_line(&mut line)?;
            match line.trim_end() {
                "error" => Err("deliberate error".into()),
                "panic" => panic!("deliberate panic"),
                other => {
                    conn.write_all(format!("{other}\n").as_bytes())?;
                    Ok(())
                }
            }
        }
        fn finish(&self, _conn: &mut sockserv::Connection) -> sockserv::HandlerResult {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .handle_error(move |_peer, failure| count_failures(&f, failure))
            .stream(Handler(Arc::clone(&finished))),
    );
    for (word, errors, panics) in [("error", 1, 0), ("panic", 1, 1)] {
        let c = connect(&server.endpoint);
        (&c).write_all(format!("{word}\n").as_bytes()).unwrap();
        if let Ok(data) = read_to_close(&c) {
            assert!(data.is_empty(), "{strategy}: {word} got a reply {data:?}");
        }
        assert!(
            wait_until(DEADLINE, || failures.errors.load(Ordering::SeqCst)
                == errors
                && failures.panics.load(Ordering::SeqCst) == panics),
            "{strategy}: handle_error did not see the {word}"
        );
    }
    let c = connect(&server.endpoint);
    assert_eq!(round_trip(&c, "still serving"), "still serving");
    drop(c);
    server.stop();
    // `finish` runs even when `handle` failed or panicked, as in Python.
    assert_eq!(finished.load(Ordering::SeqCst), 3, "{strategy}");
    assert_eq!(failures.other.load(Ordering::SeqCst), 0, "{strategy}");
}

#[test]
fn handler_errors_and_panics_are_reported_and_serving_continues() {
    for strategy in strategies() {
        message_handler_failures(strategy);
        stream_handler_failures(strategy);
    }
}

// ---------------------------------------------------------------------------
// Hooks

fn verify_request_refuses(strategy: Strategy) {
    let allow = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let (a, n) = (Arc::clone(&allow), Arc::clone(&asked));
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .listen("udp://127.0.0.1:0")
            .strategy(strategy)
            .framing(Framing::line())
            .verify_request(move |peer| {
                assert!(peer.ip().is_some_and(|ip| ip.is_loopback()), "{peer}");
                n.fetch_add(1, Ordering::SeqCst);
                a.load(Ordering::SeqCst)
            })
            .message(Echo),
    );
    let (tcp, udp) = (server.endpoints[0].clone(), server.endpoints[1].clone());

    // Refused: the connection is closed without a byte.
    let c = connect(&tcp);
    if let Ok(data) = read_to_close(&c) {
        assert!(data.is_empty(), "{strategy}: refused peer got {data:?}");
    }
    assert_eq!(asked.load(Ordering::SeqCst), 1, "{strategy}");
    // A refused datagram gets no reply: the first reply is to the one sent
    // after allowing.
    let mut d = Client::connect(&udp, Framing::raw()).unwrap();
    d.set_timeout(Some(DEADLINE)).unwrap();
    d.send(b"refused").unwrap();
    assert!(
        wait_until(DEADLINE, || asked.load(Ordering::SeqCst) == 2),
        "{strategy}"
    );

    allow.store(true, Ordering::SeqCst);
    assert_eq!(d.request(b"allowed").unwrap(), b"allowed", "{strategy}");
    let mut c = Client::connect(&tcp, Framing::line()).unwrap();
    c.set_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(c.request(b"allowed").unwrap(), b"allowed", "{strategy}");
    drop(c);
    server.stop();
    assert_eq!(asked.load(Ordering::SeqCst), 4, "{strategy}");
}

#[test]
fn verify_request_refuses_peers() {
    for strategy in strategies() {
        verify_request_refuses(strategy);
    }
}

fn handle_request_with(strategy: Strategy) {
    let timeouts = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&timeouts);
    let mut server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(strategy)
        .framing(Framing::line())
        .timeout(Duration::from_millis(100))
        .handle_timeout(move || {
            t.fetch_add(1, Ordering::SeqCst);
        })
        .message(Echo)
        .bind()
        .unwrap();
    let ep = server.local_endpoint().clone();

    let started = Instant::now();
    assert_eq!(server.handle_request().unwrap(), Handled::Timeout);
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "{strategy}: returned early"
    );
    assert_eq!(timeouts.load(Ordering::SeqCst), 1, "{strategy}");

    // A client (on its own thread: sequential serves it inside the call).
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(&ep, Framing::line()).unwrap();
        c.set_timeout(Some(DEADLINE)).unwrap();
        c.request(b"one request").unwrap()
    });
    // Connections may take a moment to arrive; every miss is a timeout.
    let mut handled = Handled::Timeout;
    let end = Instant::now() + DEADLINE;
    while handled == Handled::Timeout && Instant::now() < end {
        handled = server.handle_request().unwrap();
    }
    assert_eq!(handled, Handled::Request, "{strategy}");
    assert_eq!(client.join().unwrap(), b"one request");

    let handle = server.shutdown_handle();
    handle.request();
    assert_eq!(server.handle_request().unwrap(), Handled::Shutdown);
    drop(server);
}

#[test]
fn handle_request_times_out_then_serves() {
    handle_request_with(Strategy::Sequential);
    handle_request_with(Strategy::Threads);
}

#[test]
fn service_actions_runs_while_idle() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(Strategy::Threads)
            .service_interval(Duration::from_millis(20))
            .service_actions(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .message(Echo),
    );
    assert!(
        wait_until(DEADLINE, || calls.load(Ordering::SeqCst) >= 3),
        "service_actions called {} times",
        calls.load(Ordering::SeqCst)
    );
    // Also after serving a client.
    let before = calls.load(Ordering::SeqCst);
    let mut client = Client::connect(&server.endpoint, Framing::raw()).unwrap();
    client.set_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(client.request(b"x").unwrap(), b"x");
    drop(client);
    assert!(wait_until(DEADLINE, || calls.load(Ordering::SeqCst) > before));
    server.stop();
    // Not called after serve_forever returned.
    let after = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(calls.load(Ordering::SeqCst), after);
}

/// `shutdown()` called from the serving thread (a sequential handler) only
/// requests the stop instead of deadlocking as Python's does.
#[test]
fn shutdown_from_a_sequential_handler_does_not_deadlock() {
    let handle: Arc<std::sync::OnceLock<sockserv::ShutdownHandle>> = Arc::default();
    let h = Arc::clone(&handle);
    let mut server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(Strategy::Sequential)
            .framing(Framing::line())
            .message(message_fn(move |msg, reply| {
                if msg == b"stop" {
                    h.get().expect("handle set").shutdown();
                    reply.send(b"stopping")?;
                } else {
                    reply.send(msg)?;
                }
                Ok(())
            })),
    );
    handle.set(server.handle.clone()).unwrap();
    let mut c = Client::connect(&server.endpoint, Framing::line()).unwrap();
    c.set_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(c.request(b"hi").unwrap(), b"hi");
    assert_eq!(c.request(b"stop").unwrap(), b"stopping");
    // The stop was requested; the connection ends and serve_forever returns.
    assert!(server.handle.is_requested());
    assert_eq!(c.recv().unwrap(), None);
    drop(c);
    let join = server.join.take().unwrap();
    assert!(
        wait_until(DEADLINE, || join.is_finished()),
        "serve_forever did not return"
    );
    join.join().unwrap().unwrap();
}

// ---------------------------------------------------------------------------
// Half-close

fn half_close(strategy: Strategy) {
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .stream(stream_fn(|conn| {
                let mut all = Vec::new();
                conn.read_to_end(&mut all)?;
                let mut w = conn.writer();
                write!(w, "{} bytes:", all.len())?;
                w.write_all(&all.to_ascii_uppercase())?;
                w.flush()?;
                Ok(())
            })),
    );
    let data: Vec<u8> = (0..100_000u32)
        .map(|i| b"abcdefghij"[i as usize % 10])
        .collect();
    let mut c = Client::connect(&server.endpoint, Framing::raw()).unwrap();
    c.set_timeout(Some(DEADLINE)).unwrap();
    c.send_raw(&data).unwrap();
    c.shutdown_write().unwrap();
    let mut reply = Vec::new();
    let end = Instant::now() + DEADLINE;
    while let Some(chunk) = c.recv().unwrap() {
        reply.extend_from_slice(&chunk);
        assert!(Instant::now() < end, "{strategy}: reply never ended");
    }
    let mut want = b"100000 bytes:".to_vec();
    want.extend_from_slice(&data.to_ascii_uppercase());
    assert_eq!(reply.len(), want.len(), "{strategy}");
    assert!(reply == want, "{strategy}: reply differs");
    drop(c);
    server.stop();
}

#[test]
fn half_close_reads_to_eof_then_replies() {
    for strategy in strategies() {
        half_close(strategy);
    }
}
