//! The pool strategy's acceptance tests (issue 10): many connected clients
//! served by a few worker threads, a connection limit that holds under a
//! flood of connects with a bounded thread count, the throughput of a
//! handler that blocks, and stream handlers that hold a worker each with
//! a bounded queue behind them.
//!
//! The tests of this file run one at a time (they count the process's
//! threads and use thousands of sockets). Every wait is bounded by a
//! deadline; the only sleeps sit inside polling loops or measurement
//! windows.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{serve, wait_until, DEADLINE};
use sockserv::frame::Framing;
use sockserv::handler::{message_fn, stream_fn};
use sockserv::handlers::Echo;
use sockserv::{Endpoint, Limits, Server, Strategy};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn addr(ep: &Endpoint) -> SocketAddr {
    ep.resolve().expect("resolve the endpoint")[0]
}

fn connect(ep: &Endpoint) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr(ep), DEADLINE).expect("connect to the server");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads one `\n`-terminated line (bounded by the socket's timeout).
fn read_line(s: &TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match (&*s).read(&mut byte)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Threads of this process (`Threads:` in /proc/self/status).
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Threads: line")
}

/// Raises the soft descriptor limit to the hard one if it is below `want`;
/// false if it still is (the test is then skipped).
fn descriptors_for(want: u64) -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return false;
        }
        if r.rlim_cur < want as libc::rlim_t {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
    }
    if r.rlim_cur < want as libc::rlim_t {
        eprintln!(
            "skipped: needs {want} descriptors, RLIMIT_NOFILE is {} (hard {})",
            r.rlim_cur, r.rlim_max
        );
        return false;
    }
    true
}

/// The worker count of `Strategy::pool()`.
fn default_workers() -> usize {
    match Strategy::pool() {
        Strategy::Pool { workers, .. } => workers,
        other => panic!("Strategy::pool() is {other}"),
    }
}

// ---------------------------------------------------------------------------
// 1. 300 clients connected at once

#[test]
fn three_hundred_connected_clients_all_get_their_echo() {
    let _lock = exclusive();
    const CLIENTS: usize = 300;
    if !descriptors_for(2 * CLIENTS as u64 + 256) {
        return;
    }
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(Strategy::pool())
            .framing(Framing::line())
            .message(Echo),
    );
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(&server.endpoint)).collect();
    assert!(
        wait_until(DEADLINE, || server.handle.active_connections() == CLIENTS),
        "{} of {CLIENTS} clients connected",
        server.handle.active_connections()
    );
    // All are connected: each sends one line, then each reads its reply.
    for (i, c) in clients.iter().enumerate() {
        (&*c)
            .write_all(format!("client {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("client {i}: send: {e}"));
    }
    let mut wrong = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        match read_line(c) {
            Ok(line) if line == format!("client {i}\n") => {}
            other => wrong.push((i, other)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {CLIENTS} clients got no echo or a wrong one: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    drop(clients);
    server.stop();
}

// ---------------------------------------------------------------------------
// 2. max_connections(500) under 3,000 connects

/// A client socket with a non-blocking connect under way.
struct Pending {
    sock: TcpStream,
    sent: bool,
    got: Vec<u8>,
}

/// Starts a non-blocking connect to `to`.
fn start_connect(to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    s.set_nonblocking(true).unwrap();
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect: {e}"),
    }
    s.into()
}

/// Polls `fds` for `events` for at most `timeout`; the revents of each.
fn poll_all(socks: &[&TcpStream], events: libc::c_short, timeout: Duration) -> Vec<libc::c_short> {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of pollfd structs of that length.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
    assert!(n >= 0, "poll: {}", io::Error::last_os_error());
    fds.iter().map(|p| p.revents).collect()
}

/// True once a non-blocking connect has completed without error.
fn connected(s: &TcpStream) -> bool {
    let writable = poll_all(&[s], libc::POLLOUT, Duration::ZERO)[0] & libc::POLLOUT != 0;
    writable && matches!(s.take_error(), Ok(None))
}

#[test]
fn connection_limit_holds_under_three_thousand_connects() {
    let _lock = exclusive();
    const CLIENTS: usize = 3_000;
    const LIMIT: usize = 500;
    const BATCH: usize = 100;
    if !descriptors_for(CLIENTS as u64 + LIMIT as u64 + 512) {
        return;
    }
    let workers = default_workers();
    // Before the server: the test harness's threads (this one included).
    let baseline = threads();
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(Strategy::pool())
            .limits(Limits::new().max_connections(LIMIT))
            .framing(Framing::line())
            .message(Echo),
    );
    // The test itself started one thread: the one running serve_forever.
    let ours = 1;
    let to = addr(&server.endpoint);
    let mut most_threads = threads();
    let mut most_active = 0;

    // Connect in batches, each given a moment to complete; past the
    // limit and the listen backlog the connects stay pending, and the
    // sockets are held.
    let started = Instant::now();
    let mut clients: Vec<Pending> = Vec::with_capacity(CLIENTS);
    while clients.len() < CLIENTS {
        let batch: Vec<TcpStream> = (0..BATCH).map(|_| start_connect(to)).collect();
        let settle = Instant::now() + Duration::from_millis(20);
        while Instant::now() < settle && !batch.iter().all(connected) {
            std::thread::sleep(Duration::from_millis(1));
        }
        clients.extend(batch.into_iter().map(|sock| Pending {
            sock,
            sent: false,
            got: Vec::new(),
        }));
        most_active = most_active.max(server.handle.active_connections());
    }
    let connect_time = started.elapsed();
    assert!(
        wait_until(DEADLINE, || server.handle.active_connections() == LIMIT),
        "{} connections active, expected the limit of {LIMIT}",
        server.handle.active_connections()
    );
    most_threads = most_threads.max(threads());
    let established = clients.iter().filter(|c| connected(&c.sock)).count();

    // Every client whose connect completed sends a line; for one second,
    // count the clients that get their echo.
    for (i, c) in clients.iter_mut().enumerate() {
        if connected(&c.sock) {
            c.sent = (&c.sock).write_all(format!("{i}\n").as_bytes()).is_ok();
        }
    }
    let window = Instant::now() + Duration::from_secs(1);
    let mut echoed = 0;
    let mut wrong = 0;
    let mut buf = [0u8; 256];
    while Instant::now() < window {
        let waiting: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].sent && !clients[i].got.ends_with(b"\n"))
            .collect();
        let socks: Vec<&TcpStream> = waiting.iter().map(|&i| &clients[i].sock).collect();
        let left = window.saturating_duration_since(Instant::now());
        let ready = poll_all(&socks, libc::POLLIN, left.min(Duration::from_millis(50)));
        for (k, revents) in ready.into_iter().enumerate() {
            if revents == 0 {
                continue;
            }
            let i = waiting[k];
            let c = &mut clients[i];
            if let Ok(n) = (&c.sock).read(&mut buf) {
                c.got.extend_from_slice(&buf[..n]);
                if c.got.ends_with(b"\n") {
                    if c.got == format!("{i}\n").as_bytes() {
                        echoed += 1;
                    } else {
                        wrong += 1;
                    }
                }
            }
        }
        most_threads = most_threads.max(threads());
        most_active = most_active.max(server.handle.active_connections());
    }
    let sent = clients.iter().filter(|c| c.sent).count();
    let server_threads = most_threads - baseline - ours;
    eprintln!(
        "{CLIENTS} connects in {connect_time:?}: {established} established, {sent} sent a \
         line, {echoed} echoed within 1 s, at most {most_active} active; threads: {baseline} \
         before the server, at most {most_threads} ({server_threads} the server's, {workers} \
         workers)"
    );
    assert_eq!(wrong, 0, "wrong echoes");
    assert!(
        (450..=520).contains(&echoed),
        "{echoed} clients were served within 1 s at a limit of {LIMIT}"
    );
    assert!(
        most_active <= LIMIT,
        "{most_active} connections active at a limit of {LIMIT}"
    );
    assert!(
        server_threads <= workers + 16,
        "the server ran {server_threads} threads with {workers} workers"
    );
    drop(clients);
    server.stop();
}

// ---------------------------------------------------------------------------
// 3. Throughput of a handler that blocks

#[test]
fn blocking_handler_throughput_is_workers_over_service_time() {
    let _lock = exclusive();
    const CLIENTS: usize = 1_000;
    const WORKERS: usize = 32;
    const SERVICE: Duration = Duration::from_millis(20);
    const RUN: Duration = Duration::from_secs(3);
    if !descriptors_for(2 * CLIENTS as u64 + 256) {
        return;
    }
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(Strategy::Pool {
                workers: WORKERS,
                queue: 128,
            })
            .framing(Framing::line())
            .message(message_fn(|msg, reply| {
                std::thread::sleep(SERVICE);
                reply.send(msg)?;
                Ok(())
            })),
    );
    let mut poll = mio::Poll::new().unwrap();
    let mut socks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let s = connect(&server.endpoint);
        s.set_nonblocking(true).unwrap();
        let mut s = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut s, mio::Token(i), mio::Interest::READABLE)
            .unwrap();
        socks.push(s);
    }
    assert!(
        wait_until(DEADLINE, || server.handle.active_connections() == CLIENTS),
        "{} of {CLIENTS} clients connected",
        server.handle.active_connections()
    );
    let request = b"request\n";
    let mut sent = vec![0u64; CLIENTS];
    let mut replies = vec![0u64; CLIENTS];
    let mut partial: HashMap<usize, Vec<u8>> = HashMap::new();
    let started = Instant::now();
    let stop_sending = started + RUN;
    for (i, s) in socks.iter_mut().enumerate() {
        s.write_all(request).unwrap();
        sent[i] += 1;
    }
    let mut in_window = 0u64;
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = stop_sending + DEADLINE;
    // Closed loop: each reply is followed by the client's next request
    // until the run ends; then the replies still due are collected.
    while Instant::now() < end {
        let outstanding: u64 = sent.iter().sum::<u64>() - replies.iter().sum::<u64>();
        if Instant::now() >= stop_sending && outstanding == 0 {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => panic!("client {i}: the server closed the connection"),
                    Ok(n) => {
                        let line = partial.entry(i).or_default();
                        line.extend_from_slice(&buf[..n]);
                        while let Some(pos) = line.iter().position(|&b| b == b'\n') {
                            let reply: Vec<u8> = line.drain(..=pos).collect();
                            assert_eq!(reply, request, "client {i}: wrong reply");
                            replies[i] += 1;
                            let now = Instant::now();
                            if now < stop_sending {
                                in_window += 1;
                                socks[i].write_all(request).unwrap();
                                sent[i] += 1;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("client {i}: {e}"),
                }
            }
        }
    }
    let requests: u64 = sent.iter().sum();
    let answered: u64 = replies.iter().sum();
    let rate = in_window as f64 / RUN.as_secs_f64();
    let ideal = WORKERS as f64 / SERVICE.as_secs_f64();
    let starved = replies.iter().filter(|&&r| r == 0).count();
    let fewest = replies.iter().min().copied().unwrap_or(0);
    let most = replies.iter().max().copied().unwrap_or(0);
    eprintln!(
        "{CLIENTS} clients, {WORKERS} workers, {SERVICE:?} per message: {rate:.0} msg/s \
         ({:.0} % of {ideal:.0}); {answered} of {requests} requests answered; replies per \
         client {fewest}..{most}",
        100.0 * rate / ideal
    );
    assert_eq!(answered, requests, "replies lost");
    assert_eq!(starved, 0, "{starved} clients never got a reply");
    assert!(
        rate >= 0.8 * ideal,
        "{rate:.0} msg/s, below 80 % of {ideal:.0} msg/s"
    );
    drop(socks);
    server.stop();
}

// ---------------------------------------------------------------------------
// 4. Stream handlers: a worker each, a bounded queue behind them

#[test]
fn stream_handlers_hold_a_worker_each_and_the_queue_moves_on() {
    let _lock = exclusive();
    const CLIENTS: usize = 10;
    const WORKERS: usize = 2;
    const QUEUE: usize = 2;
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(Strategy::Pool {
                workers: WORKERS,
                queue: QUEUE,
            })
            .stream(stream_fn(|conn| {
                let mut buf = [0u8; 1024];
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    conn.write_all(&buf[..n])?;
                }
            })),
    );
    // Each client connects and sends its line at once.
    let mut clients: Vec<Option<TcpStream>> = (0..CLIENTS)
        .map(|i| {
            let c = connect(&server.endpoint);
            (&c).write_all(format!("client {i}\n").as_bytes()).unwrap();
            Some(c)
        })
        .collect();
    let echo = |c: &TcpStream, i: usize| {
        let line = read_line(c).unwrap_or_else(|e| panic!("client {i}: no echo: {e}"));
        assert_eq!(line, format!("client {i}\n"), "client {i}");
    };
    // The two running are answered.
    for (i, c) in clients.iter().enumerate().take(WORKERS) {
        echo(c.as_ref().unwrap(), i);
    }
    // The rest wait: the two queued for a worker, the others not yet
    // accepted (the accept loop holds the one it cannot queue).
    let waiting: Vec<&TcpStream> = clients[WORKERS..].iter().flatten().collect();
    let ready = poll_all(&waiting, libc::POLLIN, Duration::from_millis(300));
    let early: Vec<usize> = ready
        .iter()
        .enumerate()
        .filter(|(_, &r)| r != 0)
        .map(|(k, _)| k + WORKERS)
        .collect();
    assert!(
        early.is_empty(),
        "clients {early:?} were answered while both workers were busy"
    );
    let taken = server.handle.active_connections();
    eprintln!("{WORKERS} workers, queue {QUEUE}: {taken} of {CLIENTS} connections taken in");
    assert!(
        (WORKERS + QUEUE..=WORKERS + QUEUE + 1).contains(&taken),
        "{taken} connections taken in by {WORKERS} workers and a queue of {QUEUE}"
    );
    // Each close frees a worker for the next client in line, in order.
    for i in 0..CLIENTS {
        drop(clients[i].take());
        let next = i + WORKERS;
        if next < CLIENTS {
            echo(clients[next].as_ref().unwrap(), next);
            let later: Vec<&TcpStream> = clients[next + 1..].iter().flatten().collect();
            let answered = poll_all(&later, libc::POLLIN, Duration::ZERO)
                .iter()
                .filter(|&&r| r != 0)
                .count();
            assert_eq!(
                answered, 0,
                "after client {i} closed, clients past {next} were answered too"
            );
        }
    }
    assert!(
        wait_until(DEADLINE, || server.handle.active_connections() == 0),
        "{} connections still active",
        server.handle.active_connections()
    );
    server.stop();
}
