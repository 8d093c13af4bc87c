//! Hostile peers: what one peer can make the server spend, one test per
//! defect of issue 11 that is fixed in the connection pipeline and the
//! datagram code. Each test asserts the figure that failed before its fix
//! and prints it (`cargo test --test hostile -- --nocapture`);
//! docs/RELIABILITY.md ("Hostile peers") records them.
//!
//! * defect 2 — datagram loops: two echo services bouncing one datagram
//!   (the per-source token bucket), a datagram forged from the server's own
//!   address, one from a well-known service port, a Unix client path swapped
//!   for a link to the server's own socket;
//! * defect 3 — the read timeout while an oversized frame is discarded;
//! * defect 4 — reply amplification by a client that never reads;
//! * defect 6 — Unix datagrams over 64 KiB: answered whole, or dropped;
//! * defect 13 — connections in the listen backlog at the stop.
//!
//! Three tests are ignored because they show what is still open (run them
//! with `-- --ignored`): a reflection loop slower than the token bucket,
//! Unix datagrams just under `MAX_UNIX_DATAGRAM`, and the listen backlog at
//! a SIGTERM while clients keep reconnecting. Each says why in its
//! `ignore` reason and its comment.
//!
//! The scenarios take one lock (`support::exclusive`): several at once
//! would make the CPU figures meaningless. CPU of an in-process server is
//! that of its threads (`/proc/self/task`): the serving thread and the
//! `sockserv-*` threads (one round trip first, so they are running and
//! named). Forging a source address and binding a port below 1024 need
//! root; without it those tests say "skipped" and pass. Every wait is bounded; the sleeps are measurement
//! windows and a slow sender's pacing, never synchronisation.

mod common;

#[path = "hardening/support.rs"]
mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockserv::frame::{Framing, LengthField, OnOversize};
use sockserv::handlers::Echo;
use sockserv::{DatagramPolicy, Limits, Server, Strategy, Timeouts, MAX_UNIX_DATAGRAM};

use common::{serve, Running, TempDir};
use support::{exclusive, rss_kib, wait_until, CliServer, Sampler, DEADLINE};

const LOOPS: Strategy = Strategy::EventLoops { loops: 1 };
const SEQUENTIAL: Strategy = Strategy::Sequential;
const THREADS: Strategy = Strategy::Threads;

/// The most of one core an in-process server may use while it is being
/// baited into a loop.
const MAX_CPU: f64 = 0.30;

// ---------------------------------------------------------------------------
// Helpers

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// CPU seconds (user + system) this process's server threads have used:
/// the serving thread of `common::serve` and every `sockserv-*` thread.
/// Panics if it finds none (the measurement would be meaningless).
fn server_cpu_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    let mut threads = 0;
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !(comm.starts_with("test-serve") || comm.starts_with("sockserv")) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 after
        // the command name.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let utime: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let stime: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        total += (utime + stime) / hz;
        threads += 1;
    }
    assert!(threads > 0, "no server thread found in /proc/self/task");
    total
}

fn udp_addr(server: &Running) -> SocketAddr {
    server.endpoint.resolve().expect("resolve")[0]
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One UDP echo round trip from a fresh socket: the server still answers.
fn udp_answers(server: SocketAddr) {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send_to(b"still here", server).unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).expect("the server stopped answering");
    assert_eq!(&buf[..n], b"still here");
}

/// One Unix datagram echo round trip from a fresh socket.
fn unix_answers(dir: &TempDir, server: &Path, name: &str) {
    let c = UnixDatagram::bind(dir.join(name)).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send_to(b"still here", server).unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).expect("the server stopped answering");
    assert_eq!(&buf[..n], b"still here");
}

fn udp_echo(strategy: Strategy, policy: DatagramPolicy) -> Running {
    serve(
        Server::builder()
            .listen("udp://127.0.0.1:0")
            .strategy(strategy)
            .datagram_policy(policy)
            .message(Echo),
    )
}

fn unix_echo(path: &Path, strategy: Strategy, policy: DatagramPolicy) -> Running {
    serve(
        Server::builder()
            .listen(format!("unix-dgram://{}", path.display()))
            .strategy(strategy)
            .datagram_policy(policy)
            .message(Echo),
    )
}

/// Sends one UDP datagram with a forged source address through a raw
/// socket (root only). The kernel fills in the IP checksum and id; the UDP
/// checksum is left out (0), as IPv4 allows.
fn send_forged(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let raw = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )?;
    let total = 20 + 8 + payload.len();
    let udp_len = 8 + payload.len();
    let mut pkt = Vec::with_capacity(total);
    pkt.extend_from_slice(&[0x45, 0]);
    pkt.extend_from_slice(&(total as u16).to_be_bytes());
    pkt.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    pkt.extend_from_slice(&from.ip().octets());
    pkt.extend_from_slice(&to.ip().octets());
    pkt.extend_from_slice(&from.port().to_be_bytes());
    pkt.extend_from_slice(&to.port().to_be_bytes());
    pkt.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pkt.extend_from_slice(&[0, 0]);
    pkt.extend_from_slice(payload);
    let dest = SocketAddr::V4(SocketAddrV4::new(*to.ip(), 0));
    raw.send_to(&pkt, &dest.into())?;
    Ok(())
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("not IPv4: {a}"),
    }
}

// ===========================================================================
// Defect 2: datagram loops

/// The reply budget per source in the reflector test: small, so that the
/// bound is small.
const RATE: u64 = 100;

/// Datagrams the reflector received, after 1 s and after 2 s, and the
/// server threads' share of a core over the 2 s.
struct Bounced {
    after_1s: u64,
    after_2s: u64,
    cpu: f64,
}

/// Server A is a UDP echo; B is a plain socket that sends everything it
/// receives back to its sender, after `delay` (a second echo service,
/// `delay` being the round trip to it). B sends A one datagram; then the
/// two bounce it for as long as A answers.
fn bounce(strategy: Strategy, policy: DatagramPolicy, delay: Duration) -> Bounced {
    let server = udp_echo(strategy, policy);
    let a = udp_addr(&server);
    // Serving (and its threads named, for the CPU reading) before the
    // window opens.
    udp_answers(a);
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let bounced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reflector = {
        let b = b.try_clone().unwrap();
        let (bounced, stop) = (Arc::clone(&bounced), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = b.recv_from(&mut buf) {
                    bounced.fetch_add(1, Ordering::Relaxed);
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    let _ = b.send_to(&buf[..n], from);
                }
            }
        })
    };
    let cpu = server_cpu_seconds();
    let t = Instant::now();
    b.send_to(b"bounce me", a).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let after_1s = bounced.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let after_2s = bounced.load(Ordering::Relaxed);
    let cpu = (server_cpu_seconds() - cpu) / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    reflector.join().unwrap();
    udp_answers(a);
    Bounced {
        after_1s,
        after_2s,
        cpu,
    }
}

/// Two echo services on one host bounce a datagram as fast as they can.
/// A's token bucket (100 replies/s to one source, a burst of 100) runs dry
/// within the first ~100 round trips and drops one of B's datagrams — the
/// only one in flight: the loop ends. Before the fix (no bucket) they
/// bounced it forever: 22,738 datagrams in 2 s, the server at 56 % of a
/// core (CLI, debug build).
fn reflector_loop_is_broken(strategy: Strategy) {
    let _g = exclusive();
    let policy = DatagramPolicy::new().replies_per_source(Some(RATE as u32));
    let b = bounce(strategy, policy, Duration::ZERO);
    eprintln!(
        "reflector ({strategy:?}, {RATE} replies/s per source): B received {} after 1 s, \
         {} after 2 s; server CPU {:.1} % of a core",
        b.after_1s,
        b.after_2s,
        b.cpu * 100.0
    );
    assert!(b.after_2s >= 1, "the server never answered B");
    assert!(
        b.after_2s <= 2 * RATE + RATE,
        "{} datagrams bounced in 2 s: over 2 s of budget plus the burst",
        b.after_2s
    );
    assert_eq!(
        b.after_2s, b.after_1s,
        "the datagram still bounces after a second: the loop is throttled, not broken"
    );
    assert!(
        b.cpu < MAX_CPU,
        "server CPU {:.1} % over 2 s of bouncing",
        b.cpu * 100.0
    );
}

#[test]
fn udp_reflector_loop_is_broken_event_loop() {
    reflector_loop_is_broken(LOOPS);
}

#[test]
fn udp_reflector_loop_is_broken_sequential() {
    reflector_loop_is_broken(SEQUENTIAL);
}

/// The same loop with the default policy (10,000 replies/s per source) and
/// an echo service 1 ms away (B answers after 1 ms): the loop's own pace,
/// under 1,000 round trips a second, never empties the bucket, so nothing
/// is ever dropped and the datagram bounces for as long as both run. The
/// bucket bounds what the loop costs (its pace, at most the rate); only a
/// loop faster than `replies_per_source` is broken.
#[test]
fn udp_reflector_loop_over_a_slow_path_is_broken() {
    let _g = exclusive();
    let b = bounce(LOOPS, DatagramPolicy::new(), Duration::from_millis(1));
    eprintln!(
        "reflector 1 ms away (default policy): B received {} after 1 s, {} after 2 s; \
         server CPU {:.1} % of a core",
        b.after_1s,
        b.after_2s,
        b.cpu * 100.0
    );
    assert_eq!(
        b.after_2s,
        b.after_1s,
        "the datagram still bounces after a second: {} more in the second second",
        b.after_2s - b.after_1s
    );
}

/// A datagram forged with the server's own address as its source: without
/// the check the server answers itself, and the answer is again a datagram
/// from itself, forever, at 100 % of a core (99 % before the fix, CLI).
/// The token bucket is off, so the own-address check alone must stop it.
fn own_address_loop_is_refused(strategy: Strategy) {
    if !is_root() {
        eprintln!("skipped: forging a source address needs a raw socket (root)");
        return;
    }
    let _g = exclusive();
    let server = udp_echo(strategy, DatagramPolicy::new().replies_per_source(None));
    let a = v4(udp_addr(&server));
    udp_answers(SocketAddr::V4(a));
    // Forging works: a plain socket receives the forged datagram with the
    // server's address as its source.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(DEADLINE)).unwrap();
    send_forged(a, v4(probe.local_addr().unwrap()), b"probe").expect("raw socket");
    let mut buf = [0u8; 64];
    let (n, from) = probe.recv_from(&mut buf).expect("the forged datagram");
    assert_eq!((&buf[..n], from), (&b"probe"[..], SocketAddr::V4(a)));

    let cpu = server_cpu_seconds();
    let t = Instant::now();
    send_forged(a, a, b"answer yourself").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let share = (server_cpu_seconds() - cpu) / t.elapsed().as_secs_f64();
    eprintln!(
        "forged own address ({strategy:?}, no token bucket): server CPU {:.1} % of a core over 1 s",
        share * 100.0
    );
    assert!(
        share < MAX_CPU,
        "server CPU {:.1} %: it answers itself",
        share * 100.0
    );
    udp_answers(SocketAddr::V4(a));
}

#[test]
fn udp_datagram_from_the_servers_own_address_is_dropped_event_loop() {
    own_address_loop_is_refused(LOOPS);
}

#[test]
fn udp_datagram_from_the_servers_own_address_is_dropped_sequential() {
    own_address_loop_is_refused(SEQUENTIAL);
}

/// A datagram from a well-known service port (echo 7, discard 9, daytime
/// 13, chargen 19, time 37) gets no reply; from a high port, it does. With
/// `min_source_port(0)` the same socket is answered: the guard is what
/// drops it. Before the fix it was answered.
fn service_port_is_refused(strategy: Strategy) {
    if !is_root() {
        eprintln!("skipped: binding a port below 1024 needs root");
        return;
    }
    let _g = exclusive();
    let Some(low) = [7u16, 9, 13, 19, 37]
        .iter()
        .find_map(|&p| UdpSocket::bind(("127.0.0.1", p)).ok())
    else {
        eprintln!("skipped: UDP ports 7, 9, 13, 19 and 37 are all in use");
        return;
    };
    let port = low.local_addr().unwrap().port();
    let mut buf = [0u8; 64];

    let server = udp_echo(strategy, DatagramPolicy::new());
    let a = udp_addr(&server);
    low.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    low.send_to(b"from a service port", a).unwrap();
    let got = low.recv(&mut buf);
    assert!(
        got.as_ref().is_err_and(timed_out),
        "source port {port}: {got:?} (expected no reply within 300 ms)"
    );
    udp_answers(a);

    let open = udp_echo(strategy, DatagramPolicy::new().min_source_port(0));
    low.set_read_timeout(Some(DEADLINE)).unwrap();
    low.send_to(b"from a service port", udp_addr(&open))
        .unwrap();
    let n = low
        .recv(&mut buf)
        .expect("with min_source_port(0) the same socket is answered");
    assert_eq!(&buf[..n], b"from a service port");
    eprintln!(
        "service port ({strategy:?}): from 127.0.0.1:{port} no reply within 300 ms; \
         from a high port a reply; with the guard off, a reply"
    );
}

#[test]
fn udp_datagram_from_a_service_port_is_dropped_event_loop() {
    service_port_is_refused(LOOPS);
}

#[test]
fn udp_datagram_from_a_service_port_is_dropped_sequential() {
    service_port_is_refused(SEQUENTIAL);
}

/// A Unix datagram client binds its path, then swaps the file at the path
/// for a link to the server's own socket and sends: the reply, addressed to
/// the client's path, would reach the server itself, whose answer to that
/// reaches itself again, forever. The token bucket is off. Before the fix
/// the server spun: 99 % of a core (symlink), 83 % (hard link), CLI.
fn swapped_client_path(strategy: Strategy, hard_link: bool) {
    let _g = exclusive();
    let dir = TempDir::new("swap");
    let spath = dir.join("s.sock");
    let cpath = dir.join("c.sock");
    let _server = unix_echo(
        &spath,
        strategy,
        DatagramPolicy::new().replies_per_source(None),
    );
    let c = UnixDatagram::bind(&cpath).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    c.send_to(b"hello", &spath).unwrap();
    let n = c.recv(&mut buf).expect("a first, normal round trip");
    assert_eq!(&buf[..n], b"hello");

    std::fs::remove_file(&cpath).unwrap();
    if hard_link {
        std::fs::hard_link(&spath, &cpath).unwrap();
    } else {
        std::os::unix::fs::symlink(&spath, &cpath).unwrap();
    }
    let cpu = server_cpu_seconds();
    let t = Instant::now();
    c.send_to(b"answer yourself", &spath).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let share = (server_cpu_seconds() - cpu) / t.elapsed().as_secs_f64();
    let link = if hard_link { "hard link" } else { "symlink" };
    eprintln!(
        "unix-dgram client path swapped for a {link} to the server ({strategy:?}): \
         server CPU {:.1} % of a core over 1 s",
        share * 100.0
    );
    assert!(
        share < MAX_CPU,
        "server CPU {:.1} %: it answers itself",
        share * 100.0
    );
    // Nothing can have reached the client (its path is gone); the server
    // still answers everybody else.
    unix_answers(&dir, &spath, "other.sock");
}

#[test]
fn unix_dgram_client_path_swapped_for_a_symlink_to_the_server_event_loop() {
    swapped_client_path(LOOPS, false);
}

#[test]
fn unix_dgram_client_path_swapped_for_a_symlink_to_the_server_sequential() {
    swapped_client_path(SEQUENTIAL, false);
}

#[test]
fn unix_dgram_client_path_swapped_for_a_hard_link_to_the_server_event_loop() {
    swapped_client_path(LOOPS, true);
}

#[test]
fn unix_dgram_client_path_swapped_for_a_hard_link_to_the_server_sequential() {
    swapped_client_path(SEQUENTIAL, true);
}

// ===========================================================================
// Defect 3: the read timeout while an oversized frame is discarded

const ATTACKERS: usize = 10;
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an attacker keeps trickling if the server never closes it.
const ATTACK_FOR: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy)]
enum Oversize {
    /// `len:4`, a header announcing 0x7fffffff bytes.
    Length,
    /// `line` with a 16-byte maximum, 17 bytes and no newline.
    Line,
}

impl Oversize {
    fn framing(self) -> Framing {
        let f = match self {
            Oversize::Length => Framing::length(LengthField::new(4)).unwrap(),
            Oversize::Line => Framing::line().with_max_frame(16).unwrap(),
        };
        f.with_on_oversize(OnOversize::Skip)
    }

    /// One valid request, and its reply (an echo).
    fn request(self, text: &[u8]) -> Vec<u8> {
        match self {
            Oversize::Length => {
                let mut v = (text.len() as u32).to_be_bytes().to_vec();
                v.extend_from_slice(text);
                v
            }
            Oversize::Line => [text, b"\n"].concat(),
        }
    }

    /// The start of a frame over the limit.
    fn oversized(self) -> Vec<u8> {
        match self {
            Oversize::Length => vec![0x7f, 0xff, 0xff, 0xff],
            Oversize::Line => vec![b'x'; 17],
        }
    }
}

fn round_trip(s: &mut TcpStream, req: &[u8]) -> io::Result<Duration> {
    let t = Instant::now();
    s.write_all(req)?;
    let mut got = vec![0u8; req.len()];
    s.read_exact(&mut got)?;
    assert_eq!(got, req, "not an echo");
    Ok(t.elapsed())
}

/// When an attacker saw the server's end of stream (its half-close) and
/// when the connection was gone (a write or read failed), from the start
/// of its oversized frame.
#[derive(Debug, Default, Clone, Copy)]
struct Cut {
    eof: Option<Duration>,
    gone: Option<Duration>,
}

/// Connects, proves it holds a slot (one valid round trip), then starts an
/// oversized frame and trickles a byte of it every 100 ms — also after the
/// server's half-close, as a hostile peer would — until the connection is
/// gone or `ATTACK_FOR` passed.
fn attacker(addr: SocketAddr, kind: Oversize, ready: mpsc::Sender<()>) -> JoinHandle<Cut> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        round_trip(&mut s, &kind.request(b"hi")).expect("the attacker's first request");
        let _ = ready.send(());
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let t = Instant::now();
        let mut cut = Cut::default();
        if s.write_all(&kind.oversized()).is_err() {
            cut.gone = Some(t.elapsed());
            return cut;
        }
        let mut buf = [0u8; 256];
        while t.elapsed() < ATTACK_FOR {
            if s.write_all(b"x").is_err() {
                cut.gone = Some(t.elapsed());
                break;
            }
            if cut.eof.is_some() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match s.read(&mut buf) {
                Ok(0) => cut.eof = Some(t.elapsed()),
                Ok(_) => {}
                Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    cut.gone = Some(t.elapsed());
                    break;
                }
            }
        }
        cut
    })
}

/// Ten attackers fill `max_connections(10)`, each discarding an oversized
/// frame it never finishes; a legitimate client waits in the backlog. The
/// read timeout (1 s) counts while a frame is discarded, so each attacker
/// is half-closed at ~1 s and closed after the lingering close (2 s by
/// default), and the client is answered. Before the fix the read timeout
/// did not run while a frame was discarded: the attackers held every slot
/// for as long as they trickled, and the client got no answer (none in
/// 5 s, the CLI with the same settings).
fn discard_is_timed(strategy: Strategy, kind: Oversize) {
    let _g = exclusive();
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .framing(kind.framing())
            .limits(Limits::new().max_connections(ATTACKERS))
            .timeouts(Timeouts::new().read(READ_TIMEOUT))
            .message(Echo),
    );
    let addr = server.endpoint.resolve().unwrap()[0];
    let (tx, rx) = mpsc::channel();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| attacker(addr, kind, tx.clone()))
        .collect();
    for _ in 0..ATTACKERS {
        rx.recv_timeout(DEADLINE)
            .expect("an attacker was not served its first request");
    }
    // Every slot is taken: this client waits in the kernel's backlog.
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    c.set_read_timeout(Some(ATTACK_FOR - Duration::from_secs(1)))
        .unwrap();
    let answered = round_trip(&mut c, &kind.request(b"legitimate")).map(|_| t.elapsed());
    let cuts: Vec<Cut> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    let eofs: Vec<f64> = cuts
        .iter()
        .filter_map(|c| c.eof.map(|d| d.as_secs_f64()))
        .collect();
    let gone: Vec<f64> = cuts
        .iter()
        .filter_map(|c| c.gone.map(|d| d.as_secs_f64()))
        .collect();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2} s")
    };
    eprintln!(
        "discard ({kind:?}, {strategy:?}): {}/{ATTACKERS} attackers half-closed at {}, \
         {}/{ATTACKERS} gone at {}; legitimate client answered: {:?}",
        eofs.len(),
        range(&eofs),
        gone.len(),
        range(&gone),
        answered
    );
    let answered = answered.expect("the legitimate client got no answer");
    for (i, cut) in cuts.iter().enumerate() {
        let eof = cut
            .eof
            .unwrap_or_else(|| panic!("attacker {i} was never closed: {cut:?}"));
        assert!(
            eof >= READ_TIMEOUT - Duration::from_millis(100) && eof <= Duration::from_secs(3),
            "attacker {i} half-closed after {eof:?} (read timeout {READ_TIMEOUT:?})"
        );
        assert!(cut.gone.is_some(), "attacker {i} still connected: {cut:?}");
    }
    assert!(
        answered <= Duration::from_secs(4),
        "the legitimate client waited {answered:?}"
    );
}

#[test]
fn read_timeout_while_discarding_length_event_loop() {
    discard_is_timed(LOOPS, Oversize::Length);
}

#[test]
fn read_timeout_while_discarding_length_threads() {
    discard_is_timed(THREADS, Oversize::Length);
}

#[test]
fn read_timeout_while_discarding_line_event_loop() {
    discard_is_timed(LOOPS, Oversize::Line);
}

#[test]
fn read_timeout_while_discarding_line_threads() {
    discard_is_timed(THREADS, Oversize::Line);
}

// ===========================================================================
// Defect 4: reply amplification

/// `delim:<10,000 × A>|\n`: the encoder writes the first delimiter, so
/// each one-byte `\n` is a frame whose echo is 10,000 bytes.
fn amplifying_framing() -> String {
    format!("delim:{}|\\n", "A".repeat(10_000))
}

/// Bytes waiting in a socket's receive queue (FIONREAD).
fn queued(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// `clients` connections each send 64 KiB of `\n` (65,536 requests whose
/// replies total 655 MB) and never read. The server stops decoding a
/// connection's requests once `max_backlog` (1 MiB) of replies wait, so
/// its memory stays within a backlog and a read per connection. Before the
/// fix it decoded everything and held every reply: +1,246 MiB of RSS for
/// one such client, and another client waited 9.5 s for its answer.
fn amplification_is_bounded(clients: usize, bound_mib: u64) {
    let _g = exclusive();
    let server = CliServer::start(
        &["--handler", "echo", "--framing", &amplifying_framing()],
        None,
    );
    let pid = server.pid();
    let before = rss_kib(pid).expect("VmRSS");
    let sampler = Sampler::start(pid, Duration::from_millis(10));
    let requests = vec![b'\n'; 64 * 1024];
    let socks: Vec<TcpStream> = (0..clients)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&server.addr, DEADLINE).unwrap();
            s.set_write_timeout(Some(DEADLINE)).unwrap();
            s.write_all(&requests).expect("send 64 KiB of requests");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Another client is still served meanwhile (its reply is its request
    // and the 10,000-byte delimiter).
    let mut c = TcpStream::connect_timeout(&server.addr, DEADLINE).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let t = Instant::now();
    c.write_all(b"hi\n").unwrap();
    let mut reply = vec![0u8; 2 + 10_000];
    c.read_exact(&mut reply)
        .expect("a reply for another client");
    let other = t.elapsed();
    assert!(reply.starts_with(b"hiAAAA") && reply.ends_with(b"AAAA"));
    let s = sampler.finish();
    let grew_mib = s.max_rss_kib.saturating_sub(before) as f64 / 1024.0;
    let pushed: usize = socks.iter().map(queued).sum();
    eprintln!(
        "amplification ({clients} client(s) × 64 KiB of \\n, never reading): server RSS {:.1} → max {:.1} MiB \
         (+{grew_mib:.1} MiB); {:.1} MiB of replies reached the clients' sockets; \
         another client answered in {:.1} ms",
        before as f64 / 1024.0,
        s.max_rss_kib as f64 / 1024.0,
        pushed as f64 / (1024.0 * 1024.0),
        other.as_secs_f64() * 1000.0
    );
    assert!(
        grew_mib < bound_mib as f64,
        "server RSS grew {grew_mib:.1} MiB (bound {bound_mib} MiB)"
    );
}

#[test]
fn reply_amplification_is_bounded_one_client() {
    amplification_is_bounded(1, 64);
}

#[test]
fn reply_amplification_is_bounded_ten_clients() {
    amplification_is_bounded(10, 128);
}

// ===========================================================================
// Defect 6: Unix datagrams over 64 KiB

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A client socket whose buffers hold the largest datagram of the test.
fn big_unix_client(path: &Path) -> UnixDatagram {
    let c = UnixDatagram::bind(path).unwrap();
    let sock = socket2::SockRef::from(&c);
    sock.set_send_buffer_size(1 << 20).unwrap();
    sock.set_recv_buffer_size(1 << 20).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}

/// Sends `size` bytes; Err if the kernel refuses to send them.
fn unix_round_trip(
    c: &UnixDatagram,
    server: &Path,
    size: usize,
    wait: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let msg = pattern(size);
    let sent = c.send_to(&msg, server)?;
    assert_eq!(sent, size);
    c.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    match c.recv(&mut buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e) if timed_out(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// 100,000 bytes (over UDP's 64 KiB, under `MAX_UNIX_DATAGRAM`) come back
/// whole; 300,000 bytes (over it) are dropped — no reply at all, never a
/// truncated one — and the server goes on. Before the fix the server read
/// every Unix datagram into 64 KiB and answered the first 65,535 bytes.
fn large_unix_datagrams(strategy: Strategy) {
    let _g = exclusive();
    let dir = TempDir::new("big");
    let spath = dir.join("s.sock");
    let _server = unix_echo(&spath, strategy, DatagramPolicy::new());
    let c = big_unix_client(&dir.join("c.sock"));

    let reply = unix_round_trip(&c, &spath, 100_000, DEADLINE)
        .expect("send 100,000 bytes")
        .expect("no reply to 100,000 bytes");
    let whole = reply.len();
    assert_eq!(whole, 100_000, "the reply is not whole");
    assert!(reply == pattern(100_000), "the reply differs");

    let over = 300_000;
    assert!(over > MAX_UNIX_DATAGRAM);
    let dropped = match unix_round_trip(&c, &spath, over, Duration::from_millis(500)) {
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            eprintln!("the kernel refused to send {over} bytes (EMSGSIZE): that part skipped");
            "not sent (EMSGSIZE)".to_string()
        }
        Err(e) => panic!("send {over} bytes: {e}"),
        Ok(Some(r)) => panic!("{over} bytes were answered with {} bytes", r.len()),
        Ok(None) => "no reply within 500 ms".to_string(),
    };
    // The next datagram's reply is the next thing to arrive.
    let reply = unix_round_trip(&c, &spath, 5, DEADLINE)
        .unwrap()
        .expect("the server stopped answering");
    assert_eq!(reply, pattern(5));
    eprintln!(
        "unix-dgram ({strategy:?}): 100,000 bytes answered with {whole} bytes, the same bytes; \
         {over} bytes: {dropped}; then 5 bytes answered"
    );
}

#[test]
fn unix_datagrams_over_64k_answered_whole_or_dropped_event_loop() {
    large_unix_datagrams(LOOPS);
}

#[test]
fn unix_datagrams_over_64k_answered_whole_or_dropped_sequential() {
    large_unix_datagrams(SEQUENTIAL);
}

/// Datagrams up to `MAX_UNIX_DATAGRAM` are received whole, so their echo
/// should come back whole too. From 212,961 bytes on it does not: the
/// server's socket keeps the kernel's default send buffer (212,992 bytes,
/// `net.core.wmem_default`), a Unix datagram may be at most that minus 32,
/// so the reply fails with EMSGSIZE (logged at debug level only) and the
/// client gets nothing.
#[test]
fn unix_datagram_up_to_the_maximum_is_answered_whole() {
    let _g = exclusive();
    let dir = TempDir::new("max");
    let spath = dir.join("s.sock");
    let _server = unix_echo(&spath, LOOPS, DatagramPolicy::new());
    let c = big_unix_client(&dir.join("c.sock"));
    for size in [212_960, 250_000, MAX_UNIX_DATAGRAM] {
        let reply = unix_round_trip(&c, &spath, size, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("send {size} bytes: {e}"));
        eprintln!(
            "unix-dgram {size} bytes: reply {:?} bytes",
            reply.as_ref().map(Vec::len)
        );
        let reply = reply.unwrap_or_else(|| panic!("no reply to {size} bytes"));
        assert!(reply == pattern(size), "the reply to {size} bytes differs");
    }
}

// ===========================================================================
// Defect 13: the listen backlog at a SIGTERM

const CLIENTS: usize = 30;
const RUNS: usize = 5;

/// 30 clients connect and send a line while nothing accepts (the serving
/// thread of a blocking strategy accepts only in `serve_forever`): the
/// kernel has completed every connection and holds it, request and all, in
/// the listen backlog. Then the stop is requested, and only then does
/// `serve_forever` run: at the drain it accepts the backlog and answers
/// every one of them before it closes the listener. Before the fix the
/// listener was closed with them in it, and each was reset.
fn stop_with_a_full_backlog(strategy: Strategy) {
    let _g = exclusive();
    let server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(strategy)
        .framing(Framing::line())
        .message(sockserv::handlers::Upper)
        .bind()
        .expect("bind");
    let addr = server.local_endpoint().resolve().unwrap()[0];
    let handle = server.shutdown_handle();
    let (tx, rx) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                s.write_all(format!("client {i}\n").as_bytes()).unwrap();
                let _ = tx.send(());
                let mut got = Vec::new();
                match s.read_to_end(&mut got) {
                    Ok(_) => String::from_utf8_lossy(&got).into_owned(),
                    Err(e) => format!("error: {e}"),
                }
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        rx.recv_timeout(DEADLINE).expect("a client did not connect");
    }
    handle.request();
    let t = Instant::now();
    let serving = std::thread::spawn(move || server.serve_forever());
    let replies: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(wait_until(DEADLINE, || serving.is_finished()));
    serving.join().unwrap().expect("serve_forever");
    let took = t.elapsed();
    let answered = (0..CLIENTS)
        .filter(|i| replies[*i] == format!("CLIENT {i}\n"))
        .count();
    eprintln!(
        "stop with {CLIENTS} connections in the backlog ({strategy:?}): {answered}/{CLIENTS} \
         answered, serve_forever returned after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &format!("CLIENT {i}\n"), "client {i}");
    }
}

#[test]
fn stop_answers_the_listen_backlog_sequential() {
    stop_with_a_full_backlog(SEQUENTIAL);
}

#[test]
fn stop_answers_the_listen_backlog_threads() {
    stop_with_a_full_backlog(THREADS);
}

/// What one connection of the shutdown test saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Served,
    /// connect() refused: the listener was closed. Not a loss.
    Refused,
    /// Connected (the kernel accepted it), then the request could not be
    /// written.
    LostWrite(io::ErrorKind),
    /// Connected and sent, then end of stream without a reply.
    LostEof,
    /// Connected and sent, then a reset or another error without a reply.
    LostError(io::ErrorKind),
    /// connect() was reset: the kernel completed the connection and the
    /// listener's close reset it before connect() returned. No request was
    /// sent; counted apart.
    ConnectReset,
    /// connect() failed otherwise (a timeout, ...).
    ConnectFailed(io::ErrorKind),
}

fn one_request(addr: SocketAddr) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Outcome::ConnectReset,
        Err(e) => return Outcome::ConnectFailed(e.kind()),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = s.write_all(b"hello\n") {
        return Outcome::LostWrite(e.kind());
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\n") {
        match s.read(&mut buf) {
            Ok(0) => return Outcome::LostEof,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Outcome::LostError(e.kind()),
        }
    }
    assert_eq!(got, b"HELLO\n", "not the upper-cased request");
    Outcome::Served
}

#[derive(Debug, Default)]
struct Tally {
    served: u64,
    /// Served, on a connection begun after the SIGTERM was sent.
    served_after_term: u64,
    refused: u64,
    connect_reset: u64,
    lost: Vec<Outcome>,
    connect_failed: Vec<Outcome>,
    /// The server's most descriptors, sampled from the SIGTERM to its exit.
    max_fds: u64,
}

/// "27 LostError(ConnectionReset), 1 LostEof".
fn summary(outcomes: &[Outcome]) -> String {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for o in outcomes {
        let k = format!("{o:?}");
        match kinds.iter_mut().find(|(s, _)| *s == k) {
            Some((_, n)) => *n += 1,
            None => kinds.push((k, 1)),
        }
    }
    if kinds.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.join(", ")
}

/// 30 clients connect, send a line, read the reply and close, in a loop,
/// for 1 s; then SIGTERM. Each stops at its first refused connect.
fn backlog_run() -> (Tally, Duration) {
    let mut server = CliServer::start(&["--handler", "upper"], None);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let termed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, termed) = (Arc::clone(&stop), Arc::clone(&termed));
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let after = termed.load(Ordering::SeqCst);
                    let o = one_request(addr);
                    outcomes.push((o, after));
                    if o == Outcome::Refused {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let sampler = Sampler::start(server.pid(), Duration::from_millis(5));
    termed.store(true, Ordering::SeqCst);
    let (status, took) = server.signal_and_wait(libc::SIGTERM, DEADLINE);
    let max_fds = sampler.finish().max_fds;
    assert!(status.success(), "exit status {status}");
    // Anyone not refused yet will be at its next connect; bound it anyway.
    wait_until(DEADLINE, || clients.iter().all(|c| c.is_finished()));
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally {
        max_fds,
        ..Tally::default()
    };
    for c in clients {
        for (o, after) in c.join().unwrap() {
            match o {
                Outcome::Served => {
                    tally.served += 1;
                    tally.served_after_term += u64::from(after);
                }
                Outcome::Refused => tally.refused += 1,
                Outcome::ConnectReset => tally.connect_reset += 1,
                Outcome::ConnectFailed(_) => tally.connect_failed.push(o),
                _ => tally.lost.push(o),
            }
        }
    }
    (tally, took)
}

/// At the drain the server accepts what is in its listen backlog and
/// serves it before it closes the listener: a client whose connect()
/// succeeded and whose request was sent gets its reply. Before the fix the
/// listener was closed with the backlog in it, and those clients were
/// reset or closed unanswered: 8 lost over 5 runs here (46 in the review).
///
/// Still failing: with clients that reconnect as soon as they are answered,
/// the drain's accept sweep does not end. It accepts (and answers) the new
/// connections that keep arriving after the SIGTERM — up to 35,000, for up
/// to 2 s — and every socket it accepts stays open until the sweep ends
/// (the loop handles no other event meanwhile), so the server's
/// descriptors climb into the thousands. When the sweep ends on a full
/// descriptor table (EMFILE, at 20,000 here), the listener is closed with
/// its backlog full and every client waiting in it is reset: up to 30 of
/// 30 in one run.
///
/// The bound once that is fixed: at most 1 per run, not 0. The drain
/// accepts until the backlog is empty and then closes the listener; a
/// connection the kernel completes in between (microseconds, while clients
/// connect ~15,000 times a second) is reset by the close — a lone
/// `LostError(ConnectionReset)` in a run, seen in about half the runs.
/// Only a listener that stops completing handshakes before the last accept
/// (a socket filter that drops new SYNs, say) would make it 0.
#[test]
fn sigterm_serves_the_listen_backlog() {
    let _g = exclusive();
    let mut total_lost = 0;
    let mut total_served = 0;
    let mut worst = 0;
    for run in 1..=RUNS {
        let (t, took) = backlog_run();
        eprintln!(
            "SIGTERM run {run}: exit after {:.0} ms; {} served ({} begun after the SIGTERM), \
             {} refused after the close, {} reset in connect(), {} lost ({}), \
             max {} descriptors during the drain",
            took.as_secs_f64() * 1000.0,
            t.served,
            t.served_after_term,
            t.refused,
            t.connect_reset,
            t.lost.len(),
            summary(&t.lost),
            t.max_fds
        );
        assert!(t.served > 0, "run {run}: nothing served");
        assert!(
            t.connect_failed.is_empty(),
            "run {run}: connects failed otherwise than refused: {}",
            summary(&t.connect_failed)
        );
        worst = worst.max(t.lost.len());
        total_lost += t.lost.len();
        total_served += t.served;
    }
    eprintln!(
        "SIGTERM: {total_lost} lost over {RUNS} runs ({total_served} served), at most {worst} in one run"
    );
    assert!(
        worst <= 1,
        "{worst} connections accepted by the kernel and not answered in one run \
         ({total_lost} over {RUNS} runs)"
    );
}
