//! One behaviour, every configuration, the same outcome.
//!
//! The connection's life is decided once, in the pipeline; two drivers
//! move its bytes (the blocking one under sequential and threads, the
//! event loops under event loops and the pool's message handlers). Each
//! test here runs one observable behaviour — the drain, idle clients at
//! the stop, a peer's half-close, a handler's close, a peer's reset, the
//! idle and read timeouts, the write backlog bound — against every entry
//! of [`CONFIGS`], and asserts the same result for each, naming the
//! configuration in every failure. Two more make a peer's end of stream
//! (or reset) arrive in the same readiness event as its last bytes, by
//! keeping the server busy while they are sent.
//!
//! Every wait is bounded by a deadline; the only sleeps pace a client's
//! sends or sit inside polling loops.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{serve, wait_until, Running, DEADLINE};
use sockserv::frame::{Framing, OnOversize};
use sockserv::handler::message_fn;
use sockserv::handlers::Echo;
use sockserv::{Builder, Endpoint, Limits, Server, Strategy, Timeouts};

/// One way of running a server: a strategy, and whether the message
/// handler is marked blocking.
#[derive(Debug, Clone, Copy)]
struct Config {
    name: &'static str,
    strategy: Strategy,
    blocking: bool,
}

/// The configurations every behaviour runs against, with small sizes:
/// both drivers, every engine.
const CONFIGS: [Config; 5] = [
    // The blocking driver on the serving thread.
    Config {
        name: "sequential",
        strategy: Strategy::Sequential,
        blocking: false,
    },
    // The blocking driver, a thread per connection.
    Config {
        name: "threads",
        strategy: Strategy::Threads,
        blocking: false,
    },
    // A message handler on a pool: event loops hand each batch of frames
    // to a worker.
    Config {
        name: "pool(4 workers, queue 16)",
        strategy: Strategy::Pool {
            workers: 4,
            queue: 16,
        },
        blocking: false,
    },
    // Handlers inline in two event loops.
    Config {
        name: "event loops(2)",
        strategy: Strategy::EventLoops { loops: 2 },
        blocking: false,
    },
    // One event loop whose handler runs on worker threads.
    Config {
        name: "event loops(1) + blocking",
        strategy: Strategy::EventLoops { loops: 1 },
        blocking: true,
    },
];

impl Config {
    fn sequential(&self) -> bool {
        self.strategy == Strategy::Sequential
    }

    /// A builder on 127.0.0.1:0 with this configuration.
    fn builder(&self) -> Builder {
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(self.strategy)
            .blocking(self.blocking)
    }
}

/// Runs `test` against every configuration — all of them, even after one
/// fails — then fails naming each configuration that did not behave.
fn each_config(test: impl Fn(&Config)) {
    let failed: Vec<&str> = CONFIGS
        .iter()
        .filter(|cfg| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(cfg))).is_err())
        .map(|cfg| cfg.name)
        .collect();
    assert!(
        failed.is_empty(),
        "the behaviour differs in: {} (the messages above say how)",
        failed.join("; ")
    );
}

/// The write-backlog test measures this process's memory: it runs alone.
/// Every other test shares the lock.
static MEMORY: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MEMORY.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MEMORY.write().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Client helpers

fn connect(ep: &Endpoint) -> TcpStream {
    let addr = ep.resolve().expect("resolve the endpoint")[0];
    let s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the server");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// How a connection ended, as the client saw it.
#[derive(Debug)]
enum Ending {
    /// End of stream (read returned 0), with everything read before it.
    Eof(Vec<u8>),
    /// A reset (or another error), with everything read before it.
    Reset(Vec<u8>, io::Error),
}

/// Reads until the server closes or resets; panics if it does neither
/// within `limit`.
fn read_to_end_of(s: &TcpStream, limit: Duration, what: &str) -> Ending {
    let end = Instant::now() + limit;
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: the server neither closed nor reset the connection within {limit:?} \
             (read so far: {:?})",
            String::from_utf8_lossy(&all)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match (&*s).read(&mut buf) {
            Ok(0) => return Ending::Eof(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Ending::Reset(all, e),
        }
    }
}

/// Reads until the server closes cleanly and returns what came first;
/// panics (naming `what`) on a reset.
fn read_to_eof(s: &TcpStream, what: &str) -> Vec<u8> {
    match read_to_end_of(s, DEADLINE, what) {
        Ending::Eof(data) => data,
        Ending::Reset(data, e) => panic!(
            "{what}: reset ({e}) instead of end-of-stream, after {:?}",
            String::from_utf8_lossy(&data)
        ),
    }
}

/// Reads exactly `n` bytes (bounded by DEADLINE).
fn read_exact(s: &TcpStream, n: usize, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0u8; n];
    (&*s)
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: reading {n} bytes: {e}"));
    buf
}

fn round_trip(s: &TcpStream, msg: &str, what: &str) {
    (&*s)
        .write_all(format!("{msg}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let got = read_exact(s, msg.len() + 1, what);
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("{msg}\n"),
        "{what}: wrong echo"
    );
}

/// Waits for the serving thread to return on its own (a stop was
/// requested already) and checks its result. Unlike `Running::stop` it
/// requests nothing: a second request would force the stop.
fn wait_stopped(mut server: Running, what: &str) {
    let join = server.join.take().expect("the serving thread");
    assert!(
        wait_until(DEADLINE, || join.is_finished()),
        "{what}: serve_forever did not return after the stop"
    );
    join.join()
        .expect("the serving thread panicked")
        .unwrap_or_else(|e| panic!("{what}: serve_forever failed: {e}"));
}

fn line_echo(cfg: &Config) -> Running {
    serve(cfg.builder().framing(Framing::line()).message(Echo))
}

// ---------------------------------------------------------------------------
// 1. The drain answers what has arrived

/// Three requests in one write; the stop is requested once the first
/// reply is back: every reply arrives, then end-of-stream.
fn drain_after_first_reply(cfg: &Config) {
    let what = format!("{}: drain, three requests in one write", cfg.name);
    let server = line_echo(cfg);
    let c = connect(&server.endpoint);
    (&c).write_all(b"1\n2\n3\n").unwrap();
    let first = read_exact(&c, 2, &what);
    assert_eq!(first, b"1\n", "{what}");
    server.handle.request();
    let rest = read_to_eof(&c, &what);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "2\n3\n",
        "{what}: replies after the stop"
    );
    wait_stopped(server, &what);
}

/// One request answered, then two more sent and the stop requested at
/// once: they are in the server's socket (or on their way) when it stops,
/// and both are answered before end-of-stream.
fn drain_requests_in_flight(cfg: &Config) {
    let what = format!("{}: drain, requests in flight", cfg.name);
    let server = line_echo(cfg);
    let c = connect(&server.endpoint);
    round_trip(&c, "1", &what);
    (&c).write_all(b"2\n3\n").unwrap();
    server.handle.request();
    let rest = read_to_eof(&c, &what);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "2\n3\n",
        "{what}: replies to the requests sent before the stop"
    );
    wait_stopped(server, &what);
}

#[test]
fn drain_answers_what_has_arrived() {
    let _lock = shared();
    each_config(|cfg| {
        drain_after_first_reply(cfg);
        drain_requests_in_flight(cfg);
    });
}

// ---------------------------------------------------------------------------
// 2. Idle clients at the stop

fn idle_clients_at_stop(cfg: &Config) {
    let what = format!("{}: idle clients at the stop", cfg.name);
    let mut server = line_echo(cfg);
    let clients: Vec<TcpStream> = (0..3).map(|_| connect(&server.endpoint)).collect();
    // Sequential serves one client at a time: the other two wait in the
    // listen backlog, connected but not accepted.
    let served = if cfg.sequential() { 1 } else { 3 };
    for (i, c) in clients.iter().take(served).enumerate() {
        round_trip(c, &format!("idle {i}"), &what);
    }
    assert!(
        wait_until(DEADLINE, || server.handle.active_connections() == served),
        "{what}: {} connections active, expected {served}",
        server.handle.active_connections()
    );
    let took = server
        .shutdown_within(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{what}: shutdown() did not return within 5 s"));
    assert!(
        took < Duration::from_secs(1),
        "{what}: shutdown() took {took:?}"
    );
    // The served clients are closed cleanly, with nothing more to read.
    for (i, c) in clients.iter().take(served).enumerate() {
        let rest = read_to_eof(c, &format!("{what}, served client {i}"));
        assert!(rest.is_empty(), "{what}: client {i} got {rest:?}");
    }
    // The ones still in the backlog (sequential) were taken in by the
    // drain and closed like any draining connection: end-of-stream, no
    // data.
    for (i, c) in clients.iter().enumerate().skip(served) {
        let rest = read_to_eof(c, &format!("{what}, backlog client {i}"));
        assert!(rest.is_empty(), "{what}: backlog client {i} got {rest:?}");
    }
    eprintln!("{what}: shutdown() took {took:?}");
}

#[test]
fn idle_clients_are_closed_at_the_stop() {
    let _lock = shared();
    each_config(|cfg| {
        idle_clients_at_stop(cfg);
    });
}

// ---------------------------------------------------------------------------
// 3. Peer half-close

#[test]
fn peer_half_close_gets_every_reply_then_eof() {
    let _lock = shared();
    each_config(|cfg| {
        let what = format!("{}: peer half-close", cfg.name);
        let server = line_echo(cfg);
        let c = connect(&server.endpoint);
        (&c).write_all(b"a\nb\nc").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let got = read_to_eof(&c, &what);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "a\nb\nc\n",
            "{what}: the unterminated last line counts at end of stream"
        );
        drop(c);
        server.stop();
    });
}

// ---------------------------------------------------------------------------
// 4. Handler close

#[test]
fn handler_close_ends_the_connection_after_its_reply() {
    let _lock = shared();
    each_config(|cfg| {
        let what = format!("{}: handler close", cfg.name);
        let server = serve(cfg.builder().framing(Framing::line()).message(message_fn(
            |msg, reply| {
                reply.send(msg)?;
                if msg == b"bye" {
                    reply.close();
                }
                Ok(())
            },
        )));
        let c = connect(&server.endpoint);
        (&c).write_all(b"x\nbye\nnever\n").unwrap();
        let got = read_to_eof(&c, &what);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "x\nbye\n",
            "{what}: replies up to the close, none after"
        );
        drop(c);
        // The server goes on serving.
        let next = connect(&server.endpoint);
        round_trip(&next, "next client", &format!("{what}, next client"));
        drop(next);
        server.stop();
    });
}

// ---------------------------------------------------------------------------
// 5. Peer reset

/// Closes with SO_LINGER 0: the kernel sends a reset, not a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

#[test]
fn peer_reset_does_not_disturb_the_server() {
    let _lock = shared();
    // Under the line framing's 64 KiB maximum frame.
    let big = vec![b'z'; 60_000];
    each_config(|cfg| {
        let what = format!("{}: peer reset", cfg.name);
        let big = big.clone();
        let server = serve(cfg.builder().framing(Framing::line()).message(message_fn(
            move |msg, reply| {
                if msg == b"big" {
                    reply.send(&big)?;
                } else {
                    reply.send(msg)?;
                }
                Ok(())
            },
        )));
        // Reset between requests.
        let a = connect(&server.endpoint);
        round_trip(&a, "hello", &what);
        reset(a);
        // Reset while the server is writing 2.4 MB of replies it never
        // reads (past the backlog limit: the server is mid-reply).
        let b = connect(&server.endpoint);
        (&b).write_all(&b"big\n".repeat(40)).unwrap();
        reset(b);
        // The next client is served normally.
        let c = connect(&server.endpoint);
        for i in 0..3 {
            round_trip(&c, &format!("after the resets {i}"), &what);
        }
        drop(c);
        assert!(
            wait_until(DEADLINE, || server.handle.active_connections() == 0),
            "{what}: {} connections still active",
            server.handle.active_connections()
        );
        server.stop();
    });
}

// ---------------------------------------------------------------------------
// 5b. End of stream or a reset in the same readiness event as the last data

/// Keeps a server's handlers busy: clients whose request blocks in the
/// handler until released, enough of them that every event loop of the
/// configuration is inside a handler (one elsewhere, where handlers run on
/// threads of their own; none in sequential, which serves one client at a
/// time anyway).
struct Hold {
    release: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
}

impl Hold {
    fn new() -> Hold {
        Hold {
            release: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The handler: "hold" blocks until released (at most 5 s), the rest
    /// is echoed.
    fn handler(&self) -> impl sockserv::MessageHandler {
        let (release, held) = (Arc::clone(&self.release), Arc::clone(&self.held));
        message_fn(move |msg, reply| {
            if msg == b"hold" {
                held.fetch_add(1, Ordering::SeqCst);
                let end = Instant::now() + Duration::from_secs(5);
                while !release.load(Ordering::SeqCst) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(2));
                }
                held.fetch_sub(1, Ordering::SeqCst);
            }
            reply.send(msg)?;
            Ok(())
        })
    }

    /// Occupies the server's loops; returns the holding clients.
    fn occupy(&self, cfg: &Config, ep: &Endpoint, what: &str) -> Vec<TcpStream> {
        let n = match cfg.strategy {
            Strategy::Sequential => 0,
            Strategy::EventLoops { loops } if !cfg.blocking => loops,
            _ => 1,
        };
        let mut holders = Vec::new();
        for k in 1..=n {
            let h = connect(ep);
            (&h).write_all(b"hold\n").unwrap();
            assert!(
                wait_until(DEADLINE, || self.held.load(Ordering::SeqCst) == k),
                "{what}: {} handlers holding, expected {k}",
                self.held.load(Ordering::SeqCst)
            );
            holders.push(h);
        }
        holders
    }

    fn release(&self, holders: Vec<TcpStream>, what: &str) {
        self.release.store(true, Ordering::SeqCst);
        for h in holders {
            assert_eq!(read_exact(&h, 5, what), b"hold\n", "{what}");
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

/// A peer's last bytes and then its half-close (or its reset) arrive while
/// the server is busy, so that it learns of both from one readiness event.
/// Returns the server and the peer, whose last bytes are sent.
fn last_bytes_while_busy(
    cfg: &Config,
    hold: &Hold,
    last: &[u8],
    what: &str,
) -> (Running, TcpStream, Vec<TcpStream>) {
    let server = serve(
        cfg.builder()
            .framing(Framing::line())
            .message(hold.handler()),
    );
    // Connected and served once, so the server is waiting on it.
    let y = connect(&server.endpoint);
    round_trip(&y, "first", what);
    let holders = hold.occupy(cfg, &server.endpoint, what);
    (&y).write_all(last).unwrap();
    (server, y, holders)
}

/// How long a busy server has, once released, to see a half-close or a
/// reset: far more than it needs on loopback.
const SOON: Duration = Duration::from_secs(3);

/// The half-closed peer's last bytes are an unterminated line, which makes
/// no reply by itself: it still gets the reply to that line, then
/// end-of-stream.
#[test]
fn half_close_arriving_with_the_last_data() {
    let _lock = shared();
    each_config(|cfg| {
        let what = format!("{}: half-close in one event with the last data", cfg.name);
        let hold = Hold::new();
        let (server, y, holders) = last_bytes_while_busy(cfg, &hold, b"last", &what);
        y.shutdown(std::net::Shutdown::Write).unwrap();
        hold.release(holders, &what);
        match read_to_end_of(&y, SOON, &what) {
            Ending::Eof(got) => assert_eq!(String::from_utf8_lossy(&got), "last\n", "{what}"),
            Ending::Reset(got, e) => panic!("{what}: reset ({e}) after {got:?}"),
        }
        server.stop();
    });
}

/// The reset peer's connection is closed, however its last bytes came.
#[test]
fn reset_arriving_with_the_last_data() {
    let _lock = shared();
    each_config(|cfg| {
        let what = format!("{}: reset in one event with the last data", cfg.name);
        let hold = Hold::new();
        let (server, y, holders) = last_bytes_while_busy(cfg, &hold, b"half a fra", &what);
        reset(y);
        hold.release(holders, &what);
        assert!(
            wait_until(SOON, || server.handle.active_connections() == 0),
            "{what}: {} connections still active",
            server.handle.active_connections()
        );
        server.stop();
    });
}

// ---------------------------------------------------------------------------
// 6. Idle timeout

/// Sends `rounds` requests `every` apart on a new connection, reading each
/// reply, and panics (naming `what`) if the server closes it — unless the
/// client was in fact held up for `limit` between two sends (a loaded
/// machine): then the longest gap is the error. The gap between two sends
/// bounds the server's wait between the two requests.
fn talk(
    ep: &Endpoint,
    rounds: usize,
    every: Duration,
    limit: Duration,
    what: &str,
) -> Result<TcpStream, Duration> {
    let c = connect(ep);
    let start = Instant::now();
    let mut last = start;
    let mut longest = Duration::ZERO;
    for i in 0..rounds {
        let at = start + every * (i as u32 + 1);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        let msg = format!("still here {i}\n");
        let mut got = vec![0u8; msg.len()];
        let answered = (&c)
            .write_all(msg.as_bytes())
            .and_then(|()| (&c).read_exact(&mut got));
        if longest >= limit {
            return Err(longest);
        }
        match answered {
            Ok(()) => assert_eq!(got, msg.as_bytes(), "{what}: wrong echo"),
            Err(e) => panic!(
                "{what}: the talking client was closed ({e}) after {:?} though it spoke \
                 every {every:?} (longest gap {longest:?})",
                start.elapsed()
            ),
        }
    }
    Ok(c)
}

#[test]
fn idle_timeout_closes_silent_clients_only() {
    let _lock = shared();
    let idle = Duration::from_millis(300);
    each_config(|cfg| {
        let what = format!("{}: idle timeout", cfg.name);
        let server = serve(
            cfg.builder()
                .framing(Framing::line())
                .timeouts(Timeouts::new().idle(idle))
                .message(Echo),
        );
        // One at a time, so that sequential can take part too.
        let started = Instant::now();
        let silent = connect(&server.endpoint);
        let ending = read_to_end_of(&silent, DEADLINE, &what);
        let took = started.elapsed();
        let (Ending::Eof(data) | Ending::Reset(data, _)) = &ending;
        assert!(data.is_empty(), "{what}: the silent client got {data:?}");
        assert!(
            took >= idle && took <= Duration::from_secs(2),
            "{what}: the silent client was closed after {took:?} (idle timeout {idle:?})"
        );
        drop(silent);

        // A client that speaks every 100 ms stays open well past the
        // timeout. Should this client itself be held up for as long as
        // the timeout (a loaded machine), that round proves nothing: it
        // starts again, a bounded number of times.
        let mut stalls = 0;
        let talker = loop {
            match talk(
                &server.endpoint,
                12,
                Duration::from_millis(100),
                idle,
                &what,
            ) {
                Ok(talker) => break talker,
                Err(gap) if stalls < 3 => {
                    stalls += 1;
                    eprintln!("{what}: the talking client stalled for {gap:?}; again");
                }
                Err(gap) => {
                    panic!("{what}: the talking client stalled for {gap:?}, {stalls} times")
                }
            }
        };
        drop(talker);
        eprintln!("{what}: silent client closed after {took:?}");
        server.stop();
    });
}

// ---------------------------------------------------------------------------
// 7. Read timeout on a trickled frame, one being discarded included

#[test]
fn read_timeout_runs_while_an_oversized_frame_is_discarded() {
    let _lock = shared();
    let read = Duration::from_millis(500);
    each_config(|cfg| {
        let what = format!("{}: read timeout, oversized frame trickled", cfg.name);
        let framing = Framing::line()
            .with_max_frame(16)
            .unwrap()
            .with_on_oversize(OnOversize::Skip);
        let server = serve(
            cfg.builder()
                .framing(framing)
                .timeouts(Timeouts::new().read(read))
                .message(Echo),
        );
        let c = connect(&server.endpoint);
        let started = Instant::now();
        (&c).write_all(&[b'o'; 40]).unwrap();
        // Then one byte every 100 ms (the read's timeout paces it), never
        // a newline, for at most 5 s.
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 256];
        let mut closed = None;
        for _ in 0..50 {
            match (&c).read(&mut buf) {
                Ok(0) => {
                    closed = Some(Ok(()));
                    break;
                }
                Ok(n) => panic!(
                    "{what}: unexpected reply {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    closed = Some(Err(e));
                    break;
                }
            }
            if let Err(e) = (&c).write_all(b"o") {
                // The server has closed; the read tells how.
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ),
                    "{what}: send failed: {e}"
                );
            }
        }
        let took = started.elapsed();
        assert!(
            closed.is_some(),
            "{what}: still open after {took:?} (read timeout {read:?})"
        );
        assert!(
            took >= read && took <= Duration::from_millis(2500),
            "{what}: closed after {took:?} (read timeout {read:?}): {closed:?}"
        );
        eprintln!("{what}: closed after {took:?} ({closed:?})");
        drop(c);
        server.stop();
    });
}

// ---------------------------------------------------------------------------
// 8. The write backlog bound: a peer that never reads

/// This process's resident memory in bytes (/proc/self/statm).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("the resident field of statm");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

const MIB: u64 = 1024 * 1024;

fn backlog_bound(cfg: &Config) {
    let what = format!("{}: write backlog, a peer that never reads", cfg.name);
    const REPLY: usize = 10_000;
    const REQUESTS: usize = 64 * 1024;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let reply = vec![b'r'; REPLY];
    let server = serve(
        cfg.builder()
            .framing(Framing::line())
            .limits(Limits::new().max_backlog(256 * 1024))
            .message(message_fn(move |msg, out| {
                if msg.is_empty() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    out.send(&reply)?;
                } else {
                    out.send(msg)?;
                }
                Ok(())
            })),
    );
    // The server's threads are up; measure from here.
    let before = rss_bytes();
    let hog = connect(&server.endpoint);
    // 64 Ki requests, 10,000 bytes of reply each: 655 MB if the server
    // held every reply. The whole request fits in the socket buffers.
    (&hog).write_all(&vec![b'\n'; REQUESTS]).unwrap();
    // The server makes replies until the socket and the backlog are full,
    // then stops: wait until the handler has not run for 300 ms.
    let mut peak = before;
    let mut last = usize::MAX;
    let mut quiet = 0;
    let settled = wait_until(DEADLINE, || {
        peak = peak.max(rss_bytes());
        let now = calls.load(Ordering::SeqCst);
        if now == last && now > 0 {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(45));
        quiet >= 6
    });
    let made = calls.load(Ordering::SeqCst);
    assert!(
        settled,
        "{what}: the handler never stopped ({made} replies made)"
    );
    // Another client is answered meanwhile (sequential serves one client
    // at a time: its turn comes once the peer that never reads is gone).
    let other = connect(&server.endpoint);
    (&other).write_all(b"meanwhile\n").unwrap();
    let hog = if cfg.sequential() {
        reset(hog);
        None
    } else {
        Some(hog)
    };
    let got = read_exact(&other, "meanwhile\n".len(), &what);
    assert_eq!(got, b"meanwhile\n", "{what}");
    peak = peak.max(rss_bytes());
    if let Some(hog) = hog {
        reset(hog);
    }
    drop(other);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{what}: {made} of {REQUESTS} replies made, RSS {} MiB -> peak {} MiB (growth {:.1} MiB)",
        before / MIB,
        peak / MIB,
        growth as f64 / MIB as f64
    );
    assert!(
        growth < 64 * MIB,
        "{what}: RSS grew by {} MiB ({made} replies made)",
        growth / MIB
    );
    // The reason it stayed small: the server stopped making replies.
    assert!(
        made < REQUESTS / 4,
        "{what}: {made} of {REQUESTS} replies made for a peer that reads nothing"
    );
    server.stop();
}

#[test]
fn write_backlog_is_bounded_for_a_peer_that_never_reads() {
    let _lock = exclusive();
    each_config(|cfg| {
        backlog_bound(cfg);
    });
}
