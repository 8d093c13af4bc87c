//! The admin endpoint against real peers: `promtool check metrics` on the
//! exposition, headless Chromium on the status page, raw sockets for the
//! limits and the malformed requests. The snapshots are fabricated (the
//! engine is not involved), so every figure the tests look for is known.
//!
//! Needs `promtool` (Debian package prometheus) and `chromium`;
//! `scripts/deps` installs both.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{run_with_input, wait_until, TempDir, DEADLINE};
use sockserv::admin::{self, AdminConfig, AdminHandle};
use sockserv::stats::{
    tcp_info, ClosedConnection, ConnState, ConnectionInfo, End, ListenerStats, RefuseReason,
    ServeState, Snapshot, TcpInfo,
};

/// A snapshot the test can change while the endpoint serves it.
#[derive(Clone)]
struct Fake(Arc<Mutex<Snapshot>>);

impl Fake {
    fn new(snap: Snapshot) -> Fake {
        Fake(Arc::new(Mutex::new(snap)))
    }

    fn set_state(&self, state: ServeState) {
        self.0.lock().unwrap().state = state;
    }

    fn start(&self, config: AdminConfig) -> AdminHandle {
        let snap = Arc::clone(&self.0);
        admin::start(config, Arc::new(move || snap.lock().unwrap().clone()))
            .expect("start the admin endpoint")
    }
}

fn listener(endpoint: &str, transport: &'static str) -> ListenerStats {
    let mut l = ListenerStats::default();
    l.endpoint = endpoint.into();
    l.transport = transport;
    l
}

fn conn(id: u64, peer: &str, state: ConnState, idle_ms: u64) -> ConnectionInfo {
    let mut c = ConnectionInfo::default();
    c.id = id;
    c.listener = 0;
    c.peer = peer.into();
    c.local = "127.0.0.1:9999".into();
    c.age = Duration::from_secs(60 + id);
    c.idle = Duration::from_millis(idle_ms);
    c.bytes_in = 1000 * id;
    c.bytes_out = 2000 * id;
    c.frames_in = id;
    c.frames_out = id;
    c.state = state;
    let mut t = TcpInfo::default();
    t.rtt_us = 150;
    t.rttvar_us = 40;
    t.snd_cwnd = 10;
    t.total_retrans = 2;
    t.unacked = 1;
    c.tcp = Some(t);
    c
}

fn closed(id: u64, peer: &str, ended: End) -> ClosedConnection {
    let mut c = ClosedConnection::default();
    c.id = id;
    c.peer = peer.into();
    c.local = "127.0.0.1:9999".into();
    c.lifetime = Duration::from_millis(1500);
    c.bytes_in = 10;
    c.bytes_out = 10;
    c.frames_in = 1;
    c.frames_out = 1;
    c.ended = ended;
    c.closed_at = SystemTime::now();
    c
}

/// Two listeners, three open connections in different states (one peer
/// with markup in its name), three closed ones.
fn small_snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    s.uptime = Duration::from_secs(3725);
    let mut tcp = listener("tcp://127.0.0.1:9999", "tcp");
    tcp.counters.accepted = 7;
    tcp.counters.open = 3;
    tcp.counters.refused.per_ip = 2;
    tcp.counters.bytes_in = 123_456;
    tcp.counters.frames_in = 42;
    tcp.counters.replies_out = 42;
    tcp.counters
        .handler_duration
        .observe(Duration::from_micros(300));
    tcp.counters.add_accept_errors("EMFILE", 1);
    s.listeners.push(tcp);
    s.listeners
        .push(listener("unix:///run/sockserv/a.sock", "unix"));
    s.connections = vec![
        conn(1, "127.0.0.1:40001", ConnState::Established, 5),
        conn(2, "127.0.0.1:40002", ConnState::PeerHalfClosed, 50),
        conn(3, "/tmp/<b>bold</b>.sock", ConnState::Lingering, 500),
    ];
    s.open_connections = 3;
    s.closed = vec![
        closed(6, "127.0.0.1:40006", End::ClientClosed),
        closed(5, "127.0.0.1:40005", End::Refused(RefuseReason::PerIp)),
        closed(4, "127.0.0.1:40004", End::DrainCut),
    ];
    s
}

/// `n` open connections on one listener (peers named 127.0.x.y).
fn big_snapshot(n: u64) -> Snapshot {
    let mut s = Snapshot::default();
    let mut l = listener("tcp://127.0.0.1:7000", "tcp");
    l.counters.accepted = n;
    l.counters.open = n;
    s.listeners.push(l);
    s.connections = (0..n)
        .map(|i| {
            conn(
                i,
                &format!("127.0.{}.{}:{}", i / 250, i % 250 + 1, 20000 + i % 40000),
                ConnState::Established,
                (i * 7919) % 60_000,
            )
        })
        .collect();
    s.open_connections = n as usize;
    s
}

fn local_config() -> AdminConfig {
    AdminConfig::new("127.0.0.1:0")
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Sends `raw` on a new connection and reads the answer to EOF.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect to the admin endpoint");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the response: {e}"),
    }
    out
}

fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> Resp {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    parse(&exchange(addr, req.as_bytes()))
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    get_with_host(addr, path, &format!("127.0.0.1:{}", addr.port()))
}

/// A peer binary that scripts/deps installs; a clear failure if absent.
fn peer(name: &str, debian_package: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("{name} not found (Debian package {debian_package}): run scripts/deps");
}

fn promtool_check(body: &str) -> (Option<i32>, String) {
    let promtool = peer("promtool", "prometheus");
    let out = run_with_input(
        Command::new(promtool).args(["check", "metrics"]),
        Some(body.as_bytes()),
        Duration::from_secs(60),
    );
    (out.code(), format!("{}{}", out.stdout, out.stderr))
}

/// The DOM of `url` after its scripts ran (headless Chromium, a fresh
/// profile, no network but loopback).
fn rendered_dom(url: &str) -> String {
    let chromium = peer("chromium", "chromium");
    let profile = TempDir::new("chromium");
    let out = run_with_input(
        Command::new(chromium).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ]),
        None,
        Duration::from_secs(120),
    );
    assert_eq!(out.code(), Some(0), "chromium failed: {}", out.stderr);
    out.stdout
}

const FAMILIES: &[(&str, &str)] = &[
    ("sockserv_build_info", "gauge"),
    ("sockserv_drain_state", "gauge"),
    ("sockserv_uptime_seconds", "gauge"),
    ("sockserv_connections_accepted_total", "counter"),
    ("sockserv_connections_open", "gauge"),
    ("sockserv_connections_refused_total", "counter"),
    ("sockserv_received_bytes_total", "counter"),
    ("sockserv_sent_bytes_total", "counter"),
    ("sockserv_frames_decoded_total", "counter"),
    ("sockserv_replies_sent_total", "counter"),
    ("sockserv_oversize_frames_total", "counter"),
    ("sockserv_handler_errors_total", "counter"),
    ("sockserv_handler_panics_total", "counter"),
    ("sockserv_handler_duration_seconds", "histogram"),
    ("sockserv_accept_errors_total", "counter"),
];

#[test]
fn metrics_pass_promtool_with_every_family_at_zero() {
    let mut snap = Snapshot::default();
    snap.listeners.push(listener("tcp://127.0.0.1:9999", "tcp"));
    let fake = Fake::new(snap);
    let admin = fake.start(local_config());
    let r = get(admin.local_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for (name, kind) in FAMILIES {
        assert!(
            r.body.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            r.body.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE {kind} for {name}"
        );
    }
    let l = "listener=\"tcp://127.0.0.1:9999\"";
    for zero in [
        format!("sockserv_connections_accepted_total{{{l}}} 0\n"),
        format!("sockserv_connections_open{{{l}}} 0\n"),
        format!("sockserv_connections_refused_total{{{l},reason=\"limit\"}} 0\n"),
        format!("sockserv_connections_refused_total{{{l},reason=\"per_ip\"}} 0\n"),
        format!("sockserv_connections_refused_total{{{l},reason=\"verify\"}} 0\n"),
        format!("sockserv_connections_refused_total{{{l},reason=\"rule\"}} 0\n"),
        format!("sockserv_connections_refused_total{{{l},reason=\"rate\"}} 0\n"),
        format!("sockserv_accept_errors_total{{{l},errno=\"EMFILE\"}} 0\n"),
        format!("sockserv_handler_duration_seconds_bucket{{{l},le=\"+Inf\"}} 0\n"),
        format!("sockserv_handler_duration_seconds_count{{{l}}} 0\n"),
        "sockserv_drain_state 0\n".to_string(),
    ] {
        assert!(r.body.contains(&zero), "missing {zero:?} in\n{}", r.body);
    }
    let (code, printed) = promtool_check(&r.body);
    assert_eq!(code, Some(0), "promtool: {printed}");
    assert_eq!(printed.trim(), "", "promtool printed lint problems");

    // With figures, with two listeners, and while forced: still clean.
    *fake.0.lock().unwrap() = small_snapshot();
    fake.set_state(ServeState::Forced);
    let r = get(admin.local_addr(), "/metrics");
    assert!(r.body.contains("sockserv_drain_state 2\n"));
    assert!(r.body.contains(
        "sockserv_connections_refused_total{listener=\"tcp://127.0.0.1:9999\",reason=\"per_ip\"} 2\n"
    ));
    assert!(r.body.contains(
        "sockserv_accept_errors_total{listener=\"tcp://127.0.0.1:9999\",errno=\"EMFILE\"} 1\n"
    ));
    assert!(r.body.contains("listener=\"unix:///run/sockserv/a.sock\""));
    let (code, printed) = promtool_check(&r.body);
    assert_eq!(code, Some(0), "promtool: {printed}");
    assert_eq!(printed.trim(), "", "promtool printed lint problems");
}

#[test]
fn health_and_readiness_follow_the_state() {
    let fake = Fake::new(small_snapshot());
    let admin = fake.start(local_config());
    let addr = admin.local_addr();
    assert_eq!(get(addr, "/healthz").status, 200);
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    fake.set_state(ServeState::Draining);
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "not ready: draining\n");
    assert_eq!(get(addr, "/healthz").status, 200, "still serving");
    let r = get(addr, "/metrics");
    assert!(r.body.contains("sockserv_drain_state 1\n"));
}

#[test]
fn hosts_other_than_loopback_names_are_refused() {
    let fake = Fake::new(small_snapshot());
    let admin = fake.start(local_config());
    let addr = admin.local_addr();
    for host in ["localhost", "localhost:1234", "127.0.0.1", "[::1]:9100"] {
        assert_eq!(get_with_host(addr, "/healthz", host).status, 200, "{host}");
    }
    for host in [
        "attacker.example",
        "attacker.example:80",
        "127.0.0.1.nip.io",
    ] {
        let r = get_with_host(addr, "/metrics", host);
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(r.body.lines().count(), 1, "a one-line body: {:?}", r.body);
        assert!(!r.body.contains("sockserv_"));
    }
    // No Host at all (HTTP/1.0 style).
    let r = parse(&exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n"));
    assert_eq!(r.status, 403);
    // An absolute URI naming another host.
    let r = parse(&exchange(
        addr,
        b"GET http://attacker.example/metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(r.status, 403);

    // Public: any Host.
    let mut cfg = local_config();
    cfg.public = true;
    let public = fake.start(cfg);
    assert_eq!(
        get_with_host(public.local_addr(), "/healthz", "admin.example").status,
        200
    );
}

#[test]
fn a_non_loopback_address_needs_public() {
    let fake = Fake::new(Snapshot::default());
    let err = admin::start(
        AdminConfig::new("0.0.0.0:0"),
        Arc::new(move || fake.0.lock().unwrap().clone()),
    )
    .expect_err("0.0.0.0 without public");
    let msg = err.to_string();
    assert!(msg.contains("not loopback"), "{msg}");
    assert_eq!(msg.lines().count(), 1);
    assert!(err.is_usage());
    let err = admin::start(AdminConfig::new("no port"), Arc::new(Snapshot::default))
        .expect_err("no port");
    assert!(err.to_string().contains("invalid admin address"), "{err}");
}

#[test]
fn methods_paths_and_head() {
    let fake = Fake::new(small_snapshot());
    let admin = fake.start(local_config());
    let addr = admin.local_addr();
    assert_eq!(get(addr, "/nope").status, 404);
    let r = parse(&exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    ));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    let r = parse(&exchange(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "", "HEAD has no body");
    let r = get(addr, "/api/connections?limit=lots");
    assert_eq!(r.status, 400);
    assert_eq!(r.body.lines().count(), 1);
}

#[test]
fn garbage_gets_400_and_the_server_keeps_serving() {
    let fake = Fake::new(small_snapshot());
    let admin = fake.start(local_config());
    let addr = admin.local_addr();
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n",
    ] {
        let out = exchange(addr, junk);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400 "), "{junk:?} got {text:?}");
    }
    // Headers too large: 431, not a crash.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let out = exchange(addr, big.as_bytes());
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn slow_connections_beyond_the_limit_are_cut_and_the_endpoint_recovers() {
    let fake = Fake::new(small_snapshot());
    let mut cfg = local_config();
    cfg.request_timeout = Duration::from_secs(2);
    assert_eq!(cfg.max_connections, 16, "the default limit");
    let admin = fake.start(cfg);
    let addr = admin.local_addr();

    // 20 clients that send half a request and stall, each read to its end
    // on its own thread.
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc").unwrap();
            s
        })
        .collect();
    let opened = Instant::now();
    let readers: Vec<_> = slow
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                let mut buf = Vec::new();
                let r = s.read_to_end(&mut buf);
                (opened.elapsed(), r.map_err(|e| e.kind()), buf)
            })
        })
        .collect();

    // The 4 over the limit are closed at once (with a 503 when it fits);
    // the 16 others are cut at the header timeout. Every one ends.
    let mut ended_at = Vec::new();
    let mut busy = 0;
    for reader in readers {
        let (at, r, buf) = reader.join().unwrap();
        assert!(
            matches!(r, Ok(_) | Err(ErrorKind::ConnectionReset)),
            "a slow connection was not closed: {r:?}"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty()
                || text.starts_with("HTTP/1.1 503 ")
                || text.starts_with("HTTP/1.1 408 "),
            "{text:?}"
        );
        ended_at.push(at);
        if text.starts_with("HTTP/1.1 503 ") {
            busy += 1;
        }
    }
    eprintln!("{busy} of the slow connections read the 503");
    let early = Duration::from_millis(1500);
    let cut_by_the_limit = ended_at.iter().filter(|t| **t < early).count();
    assert_eq!(
        cut_by_the_limit, 4,
        "only the connections over the limit close at once: {ended_at:?}"
    );
    assert!(
        ended_at
            .iter()
            .all(|t| *t < Duration::from_secs(2) + DEADLINE),
        "{ended_at:?}"
    );

    // A fresh request is answered.
    let answered = wait_until(DEADLINE, || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ =
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf.starts_with(b"HTTP/1.1 200 ")
    });
    assert!(answered, "the endpoint did not recover");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_and_stop_is_bounded() {
    let fake = Fake::new(small_snapshot());
    let mut cfg = local_config();
    cfg.idle_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_secs(30);
    let admin = fake.start(cfg.clone());
    let addr = admin.local_addr();

    // Keep-alive: two requests on one connection, then silence.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    }
    let quiet = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = quiet.elapsed();
    assert!(rest.is_empty());
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );

    // stop() with a connection open returns within the stop timeout.
    let other = fake.start(cfg);
    let addr = other.local_addr();
    let mut held = TcpStream::connect(addr).unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 512];
    assert!(held.read(&mut buf).unwrap() > 0);
    let t = Instant::now();
    other.stop();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
    drop(admin);
}

#[test]
fn a_source_that_does_not_return_does_not_hang_stop() {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let source = move || {
        let _ = entered_tx.lock().unwrap().send(());
        // Stuck (bounded, so the thread ends when the test releases it).
        let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(60));
        Snapshot::default()
    };
    let mut cfg = local_config();
    cfg.stop_timeout = Duration::from_millis(200);
    let admin = admin::start(cfg, Arc::new(source)).unwrap();
    let addr = admin.local_addr();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    });
    entered
        .recv_timeout(DEADLINE)
        .expect("the request reached the source");
    let t = Instant::now();
    admin.stop();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "stop took {took:?}");
    let _ = release.send(());
    client.join().unwrap();
}

#[test]
fn json_api_shapes_and_limits() {
    let fake = Fake::new(small_snapshot());
    let admin = fake.start(local_config());
    let addr = admin.local_addr();

    let r = get(addr, "/api/stats");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("valid JSON");
    assert_eq!(v["state"], "running");
    assert_eq!(v["open_connections"], 3);
    assert_eq!(v["totals"]["accepted"], 7);
    assert_eq!(v["totals"]["refused"]["per_ip"], 2);
    assert_eq!(v["totals"]["refused"]["total"], 2);
    assert_eq!(v["listeners"][1]["endpoint"], "unix:///run/sockserv/a.sock");
    assert_eq!(v["listeners"][0]["counters"]["accept_errors"]["EMFILE"], 1);
    assert_eq!(
        v["listeners"][0]["counters"]["handler_duration"]["count"],
        1
    );

    let r = get(addr, "/api/connections");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("valid JSON");
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    // Most recently active first.
    let ids: Vec<u64> = conns.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(conns[1]["state_label"], "peer half-closed (FIN received)");
    assert_eq!(conns[2]["peer"], "/tmp/<b>bold</b>.sock");
    assert_eq!(conns[0]["tcp"]["rtt_us"], 150);
    let closed = v["closed"].as_array().unwrap();
    assert_eq!(closed[0]["ended_label"], "client closed first");
    assert_eq!(closed[1]["ended"], "refused_per_ip");
    assert_eq!(closed[2]["ended_label"], "cut at the drain deadline");

    // 10,000 open: the default and the maximum cut the list; the count stays.
    *fake.0.lock().unwrap() = big_snapshot(10_000);
    let r = get(addr, "/api/connections");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["open_connections"], 10_000);
    assert_eq!(v["connections"].as_array().unwrap().len(), 500);
    assert_eq!(v["showing"], 500);
    let idle: Vec<f64> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["idle_seconds"].as_f64().unwrap())
        .collect();
    assert!(idle.windows(2).all(|w| w[0] <= w[1]), "sorted by activity");
    let r = get(addr, "/api/connections?limit=20000");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["connections"].as_array().unwrap().len(), 10_000);
    assert_eq!(v["limit"], 10_000);
    // And a count larger than the list (a source that listed fewer).
    fake.0.lock().unwrap().open_connections = 25_000;
    let r = get(addr, "/api/connections?limit=3");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["connections"].as_array().unwrap().len(), 3);
    assert_eq!(v["open_connections"], 25_000);
}

#[test]
fn chromium_renders_the_status_page_from_the_api() {
    let fake = Fake::new(small_snapshot());
    let admin = fake.start(local_config());
    let url = format!("{}/", admin.url());

    // The page itself: self-contained, with a restrictive CSP.
    let r = get(admin.local_addr(), "/");
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!r.body.contains("127.0.0.1:40001"), "rows come from the JS");

    let dom = rendered_dom(&url);
    for text in [
        "127.0.0.1:40001",
        "127.0.0.1:40002",
        "established",
        "peer half-closed (FIN received)",
        "lingering",
        "showing 3 of 3",
        "tcp://127.0.0.1:9999",
        "unix:///run/sockserv/a.sock",
        "client closed first",
        "refused: per-IP limit",
        "cut at the drain deadline",
        "running",
    ] {
        assert!(
            dom.contains(text),
            "{text:?} not in the rendered page:\n{dom}"
        );
    }
    // The peer name with markup is text, not an element.
    assert!(dom.contains("/tmp/&lt;b&gt;bold&lt;/b&gt;.sock"), "{dom}");
    assert!(!dom.contains("<b>bold</b>"));

    // Draining shows on the page.
    fake.set_state(ServeState::Draining);
    let dom = rendered_dom(&url);
    assert!(dom.contains("draining"), "{dom}");
    assert!(dom.contains("not accepting"), "{dom}");
}

#[test]
fn chromium_shows_the_count_of_10000_connections() {
    let fake = Fake::new(big_snapshot(10_000));
    let admin = fake.start(local_config());
    let dom = rendered_dom(&format!("{}/", admin.url()));
    assert!(dom.contains("showing 200 of 10000"), "{dom:.2000}");
    let rows = dom.matches("<tr class=\"st-established\">").count();
    assert_eq!(rows, 200, "rows in the open-connections table");
}

#[test]
fn tcp_info_of_a_real_loopback_connection() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    s.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    for fd in [c.as_raw_fd(), s.as_raw_fd()] {
        let info = tcp_info(fd).expect("TCP_INFO");
        assert_eq!(info.state, 1, "established");
        assert!(info.rtt_us > 0, "{info:?}");
        assert!(info.snd_cwnd > 0, "{info:?}");
        assert!(info.min_rtt_us.is_some(), "a kernel this old? {info:?}");
    }
}
