//! Framing end to end: every frame arrives once, whole and in order,
//! whatever the segmentation, in every strategy, over TCP and Unix sockets;
//! an oversized frame costs bounded memory and never stalls other clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::strategies;
use sockserv::frame::Framing;
use sockserv::handlers::Echo;
use sockserv::{Endpoint, Server, SocketOptions, Strategy};

const FRAMES: usize = 10_000;

/// A small deterministic PRNG (xorshift64*): reproducible chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn frame(i: usize, rng: &mut Rng) -> Vec<u8> {
    let pad = rng.below(120) as usize;
    let mut f = format!("frame-{i:05}-").into_bytes();
    f.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, pad));
    f
}

fn unix_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "sockserv-framing-{}-{tag}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(ep: &Endpoint, nodelay: bool) -> Stream {
        match ep {
            Endpoint::Tcp(_) => {
                let addr = ep.resolve().unwrap()[0];
                let s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(nodelay).unwrap();
                Stream::Tcp(s)
            }
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).unwrap()),
            _ => unreachable!(),
        }
    }

    fn split(&self) -> (Box<dyn Write + Send>, Box<dyn Read + Send>) {
        match self {
            Stream::Tcp(s) => (
                Box::new(s.try_clone().unwrap()),
                Box::new(s.try_clone().unwrap()),
            ),
            Stream::Unix(s) => (
                Box::new(s.try_clone().unwrap()),
                Box::new(s.try_clone().unwrap()),
            ),
        }
    }
}

/// Writes 10,000 line frames cut into random chunks (1 byte up to several
/// frames at once) while another thread reads the echoes; every echo must
/// match its frame, in order.
fn run_segmentation(ep: Endpoint, strategy: Strategy, nodelay: bool, seed: u64) {
    let server = Server::builder()
        .listen(ep)
        .strategy(strategy)
        .framing(Framing::line())
        .socket_options(SocketOptions::default().nodelay(nodelay))
        .message(Echo)
        .bind()
        .unwrap();
    let ep = server.local_endpoint().clone();
    let handle = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve_forever());

    let mut rng = Rng(seed);
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(|i| frame(i, &mut rng)).collect();
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend_from_slice(f);
        wire.push(b'\n');
    }
    let stream = Stream::connect(&ep, nodelay);
    let (mut w, r) = stream.split();
    let writer = std::thread::spawn(move || {
        let mut rng = Rng(seed ^ 0xdead_beef);
        let mut pos = 0;
        while pos < wire.len() {
            let n = match rng.below(4) {
                0 => 1,
                1 => 1 + rng.below(16) as usize,
                2 => 1 + rng.below(512) as usize,
                _ => 1 + rng.below(8192) as usize,
            }
            .min(wire.len() - pos);
            w.write_all(&wire[pos..pos + n]).unwrap();
            pos += n;
        }
    });
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).unwrap();
        assert!(
            n > 0,
            "{strategy} nodelay={nodelay}: connection closed after {i} replies"
        );
        assert_eq!(line.pop(), Some(b'\n'));
        assert_eq!(&line, f, "{strategy} nodelay={nodelay}: reply {i} differs");
    }
    writer.join().unwrap();
    handle.shutdown();
    serving.join().unwrap().unwrap();
}

#[test]
fn ten_thousand_line_frames_in_random_chunks_over_tcp() {
    for (k, strategy) in strategies().into_iter().enumerate() {
        for nodelay in [false, true] {
            let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
            run_segmentation(ep, strategy, nodelay, 7 + k as u64 * 2 + nodelay as u64);
        }
    }
}

#[test]
fn ten_thousand_line_frames_in_random_chunks_over_unix() {
    for (k, strategy) in strategies().into_iter().enumerate() {
        let ep = Endpoint::Unix(unix_path("seg"));
        run_segmentation(ep, strategy, false, 101 + k as u64);
    }
}

#[test]
fn length_prefixed_frames_round_trip_in_every_mode() {
    for strategy in strategies() {
        let framing: Framing = "len:2".parse().unwrap();
        let server = Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .framing(framing.clone())
            .message(Echo)
            .bind()
            .unwrap();
        let ep = server.local_endpoint().clone();
        let handle = server.shutdown_handle();
        let serving = std::thread::spawn(move || server.serve_forever());
        let mut client = sockserv::Client::connect(&ep, framing).unwrap();
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        for i in 0..200usize {
            // Binary payloads with newlines and zeros: nothing but the
            // length decides where a frame ends.
            let msg: Vec<u8> = (0..i * 7).map(|j| (j * 31 + i) as u8).collect();
            assert_eq!(client.request(&msg).unwrap(), msg, "{strategy} frame {i}");
        }
        drop(client);
        handle.shutdown();
        serving.join().unwrap().unwrap();
    }
}

// ---- oversized frames, against the real CLI binary -------------------

struct ServerProc {
    child: Child,
    endpoint: Endpoint,
}

impl ServerProc {
    fn start(args: &[&str]) -> ServerProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sockserv"))
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        ServerProc { child, endpoint }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A well-behaved client doing ping-pong until told to stop; returns how
/// many round trips it made and the slowest one.
fn pinger(
    ep: Endpoint,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<(u64, Duration)> {
    std::thread::spawn(move || {
        let mut client = sockserv::Client::connect(&ep, Framing::line()).unwrap();
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let t = Instant::now();
            let msg = format!("ping {n}");
            assert_eq!(client.request(msg.as_bytes()).unwrap(), msg.as_bytes());
            worst = worst.max(t.elapsed());
            n += 1;
            count.store(n, Ordering::Relaxed);
        }
        (n, worst)
    })
}

/// Streams a `total`-byte line without a newline in 64 KiB writes; returns
/// how many bytes the server took before it closed (if it did).
fn send_huge_line(stream: &mut TcpStream, total: usize) -> usize {
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        match stream.write_all(&chunk[..n]) {
            Ok(()) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

fn oversize_case(mode: &str, policy: &str) {
    let server = ServerProc::start(&[
        "--handler",
        "echo",
        "--framing",
        "line",
        "--max-frame",
        "65536",
        "--on-oversize",
        policy,
        "--mode",
        mode,
        "tcp://127.0.0.1:0",
    ]);
    let ep = server.endpoint.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let ping = pinger(ep.clone(), Arc::clone(&stop), Arc::clone(&count));
    // Let the pinger's connection and the server's buffers warm up, then
    // take the baseline.
    let warm = sockserv::Client::connect(&ep, Framing::line())
        .unwrap()
        .request(b"warm")
        .unwrap();
    assert_eq!(warm, b"warm");
    let before = server.rss_kib();

    let addr = ep.resolve().unwrap()[0];
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let total = 100 * 1024 * 1024;
    let sent = send_huge_line(&mut big, total);
    let peak = server.rss_kib();

    match policy {
        "close" => {
            // Fail fast: the server closes the connection; the client can
            // not push the whole 100 MB through.
            assert!(sent < total, "server never closed the oversized connection");
            let mut rest = Vec::new();
            big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = big.read_to_end(&mut rest);
            assert!(rest.is_empty(), "no reply expected for an oversized frame");
        }
        _ => {
            // Skip: the whole line is discarded and the next frame served.
            assert_eq!(sent, total);
            big.write_all(b"\nafter\n").unwrap();
            big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut reader = BufReader::new(big.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "after\n");
        }
    }
    // The other client is still being served after the oversized one.
    let after = count.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::Relaxed) < after + 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let (pings, worst) = ping.join().unwrap();
    let grew_kib = peak.saturating_sub(before);
    assert!(
        grew_kib < 16 * 1024,
        "{mode}/{policy}: server RSS grew by {grew_kib} KiB for a 100 MB line"
    );
    assert!(
        pings >= after + 10,
        "{mode}/{policy}: the other client made only {pings} round trips"
    );
    assert!(
        worst < Duration::from_secs(2),
        "{mode}/{policy}: the other client waited {worst:?}"
    );
}

#[test]
fn a_100_mb_line_is_refused_in_bounded_memory_fail_fast() {
    oversize_case("async", "close");
    oversize_case("threads", "close");
}

#[test]
fn a_100_mb_line_is_skipped_in_bounded_memory() {
    oversize_case("async", "skip");
    oversize_case("threads", "skip");
}
