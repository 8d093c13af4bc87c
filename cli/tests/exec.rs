//! `sockserv serve --exec PROG [ARGS]...`: a program per connection with
//! tcpserver's environment, against the real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_until, ChildGuard, TempDir, DEADLINE};

const ENV_THEN_CAT: &str = r#"echo "$PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPCONNNUM"; exec cat"#;

fn addr_of(server: &ChildGuard) -> SocketAddr {
    server.listening[0]
        .strip_prefix("tcp://")
        .expect("a tcp listener")
        .parse()
        .expect("a socket address")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn first_line(s: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("first line");
    line
}

/// `(pid, state, ppid, pgrp)` of every process.
fn processes() -> Vec<(u32, char, u32, u32)> {
    let mut all = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let state = f[0].chars().next().unwrap_or('?');
        all.push((
            pid,
            state,
            f[1].parse().unwrap_or(0),
            f[2].parse().unwrap_or(0),
        ));
    }
    all
}

fn children_of(pid: u32) -> Vec<(u32, char)> {
    processes()
        .into_iter()
        .filter(|p| p.2 == pid)
        .map(|p| (p.0, p.1))
        .collect()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn the_program_sees_tcpservers_environment_and_owns_the_stream() {
    let server = ChildGuard::serve(
        &["tcp://127.0.0.1:0", "--exec", "sh", "-c", ENV_THEN_CAT],
        1,
    );
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind 127.0.0.2");
    sock.connect(&addr_of(&server).into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let port = s.local_addr().unwrap().port();
    let mut reader = BufReader::new(&s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("TCP 127.0.0.2 {port} 1\n"));
    (&s).write_all(b"ping\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n", "cat echoes");
}

#[test]
fn double_dash_and_a_missing_program() {
    let server = ChildGuard::serve(
        &[
            "tcp://127.0.0.1:0",
            "--exec",
            "--",
            "sh",
            "-c",
            "echo $PROTO",
        ],
        1,
    );
    assert_eq!(first_line(&connect(addr_of(&server))), "TCP\n");

    let mut missing =
        ChildGuard::serve(&["tcp://127.0.0.1:0", "--exec", "/nonexistent/program"], 1);
    let s = connect(addr_of(&missing));
    let mut buf = Vec::new();
    let _ = (&s).read_to_end(&mut buf);
    assert!(buf.is_empty());
    // The server serves on after the failed spawn.
    let s = connect(addr_of(&missing));
    let _ = (&s).read_to_end(&mut buf);
    let (status, stderr) = missing.terminate_with(libc::SIGTERM, DEADLINE);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot run /nonexistent/program"),
        "{stderr}"
    );
}

#[test]
fn datagram_addresses_are_refused() {
    let out = common::run_cli(&["serve", "udp://127.0.0.1:0", "--exec", "cat"], DEADLINE);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("--exec serves stream addresses only"),
        "{}",
        out.stderr
    );
}

#[test]
fn two_hundred_connections_leave_no_zombie_and_no_descriptor() {
    let server = ChildGuard::serve(
        &["tcp://127.0.0.1:0", "--exec", "sh", "-c", ENV_THEN_CAT],
        1,
    );
    let pid = server.id();
    let addr = addr_of(&server);
    // One connection first, so that what the first one allocates once is
    // in the baseline.
    drop(first_line(&connect(addr)));
    assert!(wait_until(DEADLINE, || children_of(pid).is_empty()));
    let before = fd_count(pid);
    for _ in 0..200 {
        let s = connect(addr);
        assert!(first_line(&s).starts_with("TCP 127.0.0.1 "));
    }
    assert!(
        wait_until(DEADLINE, || children_of(pid).is_empty()),
        "children left: {:?}",
        children_of(pid)
    );
    assert!(
        wait_until(DEADLINE, || fd_count(pid).abs_diff(before) <= 5),
        "descriptors: {before} before, {} after",
        fd_count(pid)
    );
}

#[test]
fn max_conns_holds_with_exec() {
    let server = ChildGuard::serve(
        &[
            "tcp://127.0.0.1:0",
            "--max-conns",
            "5",
            "--exec",
            "sh",
            "-c",
            ENV_THEN_CAT,
        ],
        1,
    );
    let addr = addr_of(&server);
    let held: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    for s in &held {
        assert!(first_line(s).starts_with("TCP "));
    }
    let sixth = connect(addr);
    sixth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    match (&sixth).read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the sixth client was served while five are held: {other:?}"),
    }
    drop(held);
    sixth.set_read_timeout(Some(DEADLINE)).unwrap();
    assert!(first_line(&sixth).starts_with("TCP "));
}

#[test]
fn sigterm_ends_a_program_that_ignores_it_at_the_drain_deadline() {
    let mut server = ChildGuard::serve(
        &[
            "tcp://127.0.0.1:0",
            "--drain-timeout",
            "1s",
            "--exec",
            "sh",
            "-c",
            r#"trap "" TERM; echo hi; sleep 30"#,
        ],
        1,
    );
    let pid = server.id();
    let s = connect(addr_of(&server));
    assert_eq!(first_line(&s), "hi\n");
    let mut kids = Vec::new();
    assert!(wait_until(DEADLINE, || {
        kids = children_of(pid);
        !kids.is_empty()
    }));
    let child = kids[0].0;
    let started = Instant::now();
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    let took = started.elapsed();
    assert!(status.success(), "{stderr}");
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    // Neither the program nor what it started (its process group) lives on.
    assert!(
        wait_until(Duration::from_secs(2), || {
            !processes().iter().any(|p| p.0 == child || p.3 == child)
        }),
        "left: {:?}",
        processes()
            .into_iter()
            .filter(|p| p.0 == child || p.3 == child)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_unix_socket_client_is_named_by_its_credentials() {
    let dir = TempDir::new("exec-unix");
    let path = dir.join("exec.sock");
    let url = format!("unix://{}", path.display());
    let _server = ChildGuard::serve(
        &[
            &url,
            "--exec",
            "sh",
            "-c",
            r#"echo "$PROTO $UNIXREMOTEUID $TCPREMOTEIP"; exec cat"#,
        ],
        1,
    );
    let s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    assert_eq!(line, format!("UNIX {uid} \n"));
}
