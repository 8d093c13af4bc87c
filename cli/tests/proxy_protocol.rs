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
    let out = server.read_stdout_until(DEADLINE, |s| s.contains("admin http://"));
    let port = server.listening[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {:?}", server.listening));
    let admin = out
        .lines()
        .find_map(|l| l.strip_prefix("admin "))
        .unwrap_or_else(|| panic!("no admin line in {out:?}"))
        .trim()
        .to_string();
    (server, port, admin)
}

/// A real HAProxy in front of `backend`, sending the PROXY header `send`
/// (`send-proxy` or `send-proxy-v2`). Returns it and its frontend port.
fn haproxy(dir: &TempDir, backend: u16, send: &str) -> (ChildGuard, u16) {
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is not installed (scripts/deps installs it)"
    );
    let front = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
             timeout client 10s\n  timeout server 10s\n\nfrontend fe\n  bind 127.0.0.1:{front}\n  \
             default_backend be\n\nbackend be\n  server s1 127.0.0.1:{backend} {send}\n"
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

fn through_haproxy(version: &str, send: &str, client_ip: &str) {
    let dir = TempDir::new("haproxy");
    let (_server, port, admin) = serve(version);
    let (_proxy, front) = haproxy(&dir, port, send);

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
}

#[test]
fn haproxy_send_proxy_v2_gives_the_client_address() {
    through_haproxy("v2", "send-proxy-v2", "127.0.0.7");
}

#[test]
fn haproxy_send_proxy_v1_gives_the_client_address() {
    through_haproxy("v1", "send-proxy", "127.0.0.9");
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
