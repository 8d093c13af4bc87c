//! The PROXY protocol behind a real HAProxy (`send-proxy` and
//! `send-proxy-v2`): the client's address the header carries becomes the
//! connection's peer — checked on the admin endpoint's connection list —
//! the bytes after the header reach the handler untouched, and a client
//! that reaches the server directly, without a header, is closed without a
//! reply while the server goes on serving.
//!
//! Needs `haproxy` (Debian package haproxy; `scripts/deps` installs it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until, ChildGuard, TempDir, DEADLINE};

/// `sockserv serve` with the PROXY protocol and the admin endpoint; its
/// data port and admin URL.
fn serve(version: &str) -> (ChildGuard, u16, String) {
    serve_with(version, &[])
}

fn serve_with(version: &str, extra: &[&str]) -> (ChildGuard, u16, String) {
    let mut args = vec![
        "--handler",
        "echo",
        "--framing",
        "line",
        "--proxy-protocol",
        version,
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args.push("tcp://127.0.0.1:0");
    let server = ChildGuard::serve(&args, 1);
    let port = server.listening[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {:?}", server.listening));
    let admin = server.admin_url();
    (server, port, admin)
}

/// A real HAProxy in front of `backend`, sending the PROXY header `send`
/// (`send-proxy` or `send-proxy-v2`). Returns it and its frontend port.
fn haproxy(dir: &TempDir, backend: u16, send: &str) -> (ChildGuard, u16) {
    haproxy_with(dir, backend, send)
}

/// The same, with `server` options after the backend address (`send-proxy
/// check ...`); its stats socket is `dir/stats.sock`.
fn haproxy_with(dir: &TempDir, backend: u16, server: &str) -> (ChildGuard, u16) {
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is not installed (scripts/deps installs it)"
    );
    let front = free_port();
    let cfg = dir.join("haproxy.cfg");
    let stats = dir.join("stats.sock");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\n  stats socket {} mode 600 level admin\n\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  \
             timeout client 10s\n  timeout server 10s\n\nfrontend fe\n  bind 127.0.0.1:{front}\n  \
             default_backend be\n\nbackend be\n  server s1 127.0.0.1:{backend} {server}\n",
            stats.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    cmd.stdout(Stdio::null());
    let proxy = ChildGuard::spawn(&mut cmd);
    let addr: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    assert!(
        wait_until(DEADLINE, || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(200)
        )
        .is_ok()),
        "haproxy did not listen on {addr}"
    );
    (proxy, front)
}

/// HAProxy's own view of server `be/s1` from its stats socket (`show
/// stat`): the fields named, by their CSV header.
fn haproxy_server_stat(dir: &TempDir, fields: &[&str]) -> Vec<String> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(dir.join("stats.sock")) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"show stat\n").unwrap();
    let mut csv = String::new();
    let _ = s.read_to_string(&mut csv);
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let Some(row) = lines.find(|l| l.starts_with("be,s1,")) else {
        return Vec::new();
    };
    let cells: Vec<&str> = row.split(',').collect();
    fields
        .iter()
        .map(|f| {
            names
                .iter()
                .position(|n| n == f)
                .and_then(|i| cells.get(i))
                .unwrap_or(&"")
                .to_string()
        })
        .collect()
}

/// A counter's total over its label sets on /metrics.
fn metric(admin: &str, name: &str, label: &str) -> u64 {
    common::http_get(admin, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Connects to `port` from the source address `from`.
fn connect_from(from: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect_timeout(&dst.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// The admin endpoint's connection list, raw JSON.
fn connections(admin: &str) -> String {
    common::http_get(admin, "/api/connections").1
}

#[test]
fn haproxy_send_proxy_v2_gives_the_client_address() {
    through_haproxy("v2", "send-proxy-v2", "127.0.0.7");
}

#[test]
fn haproxy_send_proxy_v1_gives_the_client_address() {
    through_haproxy("v1", "send-proxy", "127.0.0.9");
}

/// Health checks every 100 ms, with the PROXY header (v2: LOCAL).
const CHECKS: &str = "check inter 100ms fall 1 rise 1 check-send-proxy";

fn through_haproxy(version: &str, send: &str, client_ip: &str) {
    let dir = TempDir::new("haproxy");
    let (server, port, admin) = serve_with(version, &["-vv"]);
    let (_proxy, front) = haproxy_with(&dir, port, &format!("{send} {CHECKS}"));

    let mut client = connect_from(client_ip, front);
    client.write_all(b"hello through haproxy\n").unwrap();
    let mut line = String::new();
    BufReader::new(client.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "hello through haproxy\n", "{send}: the echo");

    // While the client is connected, the server names it by the address in
    // the header, with the proxy's own as the way it came.
    let mut seen = String::new();
    let found = wait_until(DEADLINE, || {
        seen = connections(&admin);
        seen.contains(&format!("\"peer\":\"{client_ip}:")) && seen.contains("(via 127.0.0.1:")
    });
    assert!(
        found,
        "{send}: the client {client_ip} is not the peer: {seen}"
    );
    drop(client);

    // The health checks reach the server with their header, and HAProxy
    // keeps it up: at least ten checks, none failed, no header error
    // logged by the server.
    let accepted = || metric(&admin, "sockserv_connections_accepted_total", "listener");
    assert!(
        wait_until(DEADLINE, || accepted() >= 11),
        "{send}: {} connections accepted, the checks do not arrive",
        accepted()
    );
    let stat = haproxy_server_stat(&dir, &["status", "chkfail", "check_status"]);
    assert_eq!(
        stat.first().map(String::as_str),
        Some("UP"),
        "{send}: {stat:?}"
    );
    assert_eq!(
        stat.get(1).map(String::as_str),
        Some("0"),
        "{send}: {stat:?}"
    );
    let log = server.stderr();
    assert!(
        !log.contains("PROXY"),
        "{send}: a header error in the server's log: {log}"
    );
}

#[test]
fn a_client_without_a_header_is_closed_without_a_reply() {
    let (_server, port, _admin) = serve("any");
    let mut direct = connect_from("127.0.0.1", port);
    direct.write_all(b"hello without a header\n").unwrap();
    let mut buf = [0u8; 64];
    let n = direct.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a reply went to a client without a PROXY header");
    // The server goes on: a well-formed v1 header is served.
    let mut ok = connect_from("127.0.0.1", port);
    ok.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 7000\r\nping\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(ok).read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
}

#[test]
fn only_the_balancers_may_connect_with_proxy_from() {
    let dir = TempDir::new("haproxy-from");
    // HAProxy connects to the server from 127.0.0.1; 127.0.0.1 is the only
    // balancer allowed.
    let (_server, port, admin) = serve_with("v2", &["--proxy-from", "127.0.0.1/32"]);
    let (_proxy, front) = haproxy(&dir, port, "send-proxy-v2");
    let mut client = connect_from("127.0.0.7", front);
    client.write_all(b"via the balancer\n").unwrap();
    let mut line = String::new();
    BufReader::new(client.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "via the balancer\n");
    // A direct client from another address — even with a well-formed
    // header — is closed before anything is read or sent.
    let mut direct = connect_from("127.0.0.8", port);
    let _ = direct.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 7000\r\nforged\n");
    let mut buf = [0u8; 64];
    assert_eq!(
        direct.read(&mut buf).unwrap_or(0),
        0,
        "a reply to an untrusted proxy"
    );
    let mut metrics = String::new();
    assert!(
        wait_until(DEADLINE, || {
            metrics = common::http_get(&admin, "/metrics").1;
            metrics.contains("reason=\"rule\"} 1")
        }),
        "the refusal is not counted: {metrics}"
    );
}

/// `sockserv serve` behind a real HAProxy sending `send-proxy-v2` with
/// health checks, with `extra` options; the server, its admin URL and
/// HAProxy's frontend port.
fn behind_haproxy(
    dir: &TempDir,
    send: &str,
    extra: &[&str],
) -> (ChildGuard, ChildGuard, String, u16) {
    let (server, port, admin) = serve_with(if send == "send-proxy" { "v1" } else { "v2" }, extra);
    let (proxy, front) = haproxy_with(dir, port, &format!("{send} {CHECKS}"));
    (server, proxy, admin, front)
}

/// Sends a line and says whether it came back (false: closed without a
/// byte).
fn echoed(s: &mut TcpStream, line: &str) -> bool {
    if s.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        got.is_empty() || got == line.as_bytes(),
        "unexpected bytes {got:?}"
    );
    !got.is_empty()
}

#[test]
fn rules_through_haproxy_apply_to_the_client_not_the_balancer() {
    for send in ["send-proxy", "send-proxy-v2"] {
        let dir = TempDir::new("haproxy-rules");
        let (_server, _proxy, admin, front) =
            behind_haproxy(&dir, send, &["--deny", "127.0.0.9/32"]);
        assert!(
            !echoed(&mut connect_from("127.0.0.9", front), "denied\n"),
            "{send}: 127.0.0.9 was served through the balancer"
        );
        assert!(
            echoed(&mut connect_from("127.0.0.8", front), "served\n"),
            "{send}: 127.0.0.8 was refused"
        );
        assert!(
            wait_until(DEADLINE, || metric(
                &admin,
                "sockserv_connections_refused_total",
                "reason=\"rule\""
            ) == 1),
            "{send}: the refusal is not counted once"
        );
        // Remembered by the client's address, as refused by a rule.
        let closed = connections(&admin);
        assert!(
            closed.contains("\"peer\":\"127.0.0.9:") && closed.contains("refused_rule"),
            "{send}: {closed}"
        );
        // The balancer itself is never refused: its checks keep it up.
        let stat = haproxy_server_stat(&dir, &["status"]);
        assert_eq!(stat, ["UP"], "{send}");
    }
}

#[test]
fn the_per_ip_limit_through_haproxy_counts_clients() {
    let dir = TempDir::new("haproxy-per-ip");
    // The balancer's own health checks (LOCAL) take no client's place.
    let (_server, _proxy, admin, front) = behind_haproxy(
        &dir,
        "send-proxy-v2",
        &["--max-conns-per-ip", "1", "--proxy-from", "127.0.0.1/32"],
    );
    // Every connection comes from the balancer's 127.0.0.1; the limit is
    // on the clients the headers name.
    let mut first = connect_from("127.0.0.9", front);
    assert!(echoed(&mut first, "one\n"));
    let mut other = connect_from("127.0.0.8", front);
    assert!(
        echoed(&mut other, "other client\n"),
        "the limit counted the balancer"
    );
    assert!(
        !echoed(&mut connect_from("127.0.0.9", front), "two\n"),
        "a second connection from 127.0.0.9 was served"
    );
    assert!(echoed(&mut first, "still one\n"));
    assert_eq!(haproxy_server_stat(&dir, &["status"]), ["UP"]);
    assert!(wait_until(DEADLINE, || metric(
        &admin,
        "sockserv_connections_refused_total",
        "reason=\"per_ip\""
    ) == 1));
    drop(first);
    // Its place is free once it closed.
    assert!(wait_until(DEADLINE, || echoed(
        &mut connect_from("127.0.0.9", front),
        "again\n"
    )));
}

#[test]
fn exec_through_haproxy_sees_the_client() {
    for send in ["send-proxy", "send-proxy-v2"] {
        let dir = TempDir::new("haproxy-exec");
        let version = if send == "send-proxy" { "v1" } else { "v2" };
        let server = ChildGuard::serve(
            &[
                "--proxy-protocol",
                version,
                "tcp://127.0.0.1:0",
                "--exec",
                "sh",
                "-c",
                r#"echo "$PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPCONNNUM"; exec cat"#,
            ],
            1,
        );
        let port: u16 = server.listening[0]
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (_proxy, front) = haproxy_with(&dir, port, &format!("{send} {CHECKS}"));
        let client = connect_from("127.0.0.9", front);
        let client_port = client.local_addr().unwrap().port();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("TCP 127.0.0.9 {client_port} 1\n"), "{send}");
        (&client).write_all(b"to cat\n").unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "to cat\n", "{send}: the program has the stream");
        // The checks (a program each) keep the server up.
        assert!(
            wait_until(DEADLINE, || haproxy_server_stat(&dir, &["status"])
                == ["UP"]),
            "{send}: {:?}",
            haproxy_server_stat(&dir, &["status", "check_status"])
        );
    }
}
