//! `sockserv serve --inetd`: the connection is already open on fd 0 (inetd,
//! xinetd `wait = no`, systemd `Accept=yes`). One process serves exactly
//! it, through the normal pipeline, and exits 0 when it ends; SIGTERM
//! drains it. Tested under the real `systemd-socket-activate --inetd -a`
//! and with sockets handed over directly as stdin.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use common::{cli_bin, free_port, signal, wait_deadline, wait_until, ChildGuard, DEADLINE};

/// Connects to `addr` (retrying until the service manager listens), sends
/// `line`, half-closes and reads everything until the server closes.
fn exchange(addr: &str, line: &str) -> String {
    let mut conn = None;
    assert!(
        wait_until(DEADLINE, || {
            conn = TcpStream::connect(addr).ok();
            conn.is_some()
        }),
        "nothing listens on {addr}"
    );
    let mut s = conn.unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got)
        .unwrap_or_else(|e| panic!("no clean end of the reply: {e}"));
    got
}

/// `systemd-socket-activate --inetd -a -l ADDR sockserv serve --inetd ARGS`.
fn activate(addr: &str, args: &[&str]) -> ChildGuard {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["--inetd", "-a", "-l", addr, cli_bin(), "serve", "--inetd"])
        .args(args);
    ChildGuard::spawn(&mut cmd)
}

#[test]
fn each_connection_is_served_by_a_process_of_its_own() {
    let addr = format!("127.0.0.1:{}", free_port());
    let _manager = activate(&addr, &["--handler", "upper", "--framing", "line"]);
    // The connection closes when it is served: the process has ended.
    assert_eq!(exchange(&addr, "first\n"), "FIRST\n");
    assert_eq!(exchange(&addr, "second\nthird\n"), "SECOND\nTHIRD\n");
}

#[test]
fn a_program_per_connection_each_in_a_new_server_process() {
    let addr = format!("127.0.0.1:{}", free_port());
    // $PPID of the program is the sockserv process that serves it.
    let _manager = activate(
        &addr,
        &["--exec", "sh", "-c", "echo \"$PPID $TCPREMOTEIP\""],
    );
    let one = exchange(&addr, "");
    let two = exchange(&addr, "");
    let (pid1, ip1) = one.trim().split_once(' ').expect("pid and ip");
    let (pid2, _) = two.trim().split_once(' ').expect("pid and ip");
    assert_eq!(ip1, "127.0.0.1", "tcpserver's variables: {one}");
    assert_ne!(pid1, pid2, "two connections, two processes");
}

/// `sockserv serve --inetd ARGS` with `stdin` as its fd 0.
fn serve_on(stdin: OwnedFd, args: &[&str]) -> Child {
    Command::new(cli_bin())
        .args(["serve", "--inetd"])
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sockserv")
}

/// Waits for `child` to exit (bounded) and returns its code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let status = wait_deadline(&mut child, DEADLINE);
    let mut err = String::new();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = status.unwrap_or_else(|| panic!("did not exit in time; stderr: {err}"));
    (status.code(), err)
}

/// `serve --inetd` upper-casing lines on a socketpair, after its first
/// answer.
fn upper_on_a_socketpair() -> (UnixStream, Child) {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let child = serve_on(theirs.into(), &["--handler", "upper", "--framing", "line"]);
    ours.set_read_timeout(Some(DEADLINE)).unwrap();
    ours.write_all(b"abc\n").unwrap();
    let mut buf = [0u8; 4];
    ours.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ABC\n");
    (ours, child)
}

#[test]
fn a_unix_socketpair_as_stdin_is_served_until_the_peer_closes() {
    let (mut ours, child) = upper_on_a_socketpair();
    ours.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing more: {rest:?}");
    let (code, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn sigterm_drains_the_connection_and_exits_0() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let child = serve_on(
        accepted.into(),
        &["--handler", "echo", "--framing", "line", "-v"],
    );
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(b"kept\n").unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"kept\n");
    // An idle connection at the drain is closed cleanly (end of stream,
    // not a reset), and the process exits 0.
    signal(&child, libc::SIGTERM);
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("a clean end of stream, not a reset");
    assert!(rest.is_empty(), "{rest:?}");
    let (code, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("shutting down"),
        "the drain was the signal's: {err}"
    );
}

#[test]
fn stdin_that_is_not_a_connection_is_refused_in_one_line() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let (code, err) = finish(serve_on(file.into(), &[]));
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "sockserv: cannot serve the connection on fd 0: not a socket (inetd passes the connection as stdin)"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = finish(serve_on(listener.into(), &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a listening socket, not a connection"),
        "{err}"
    );
}

#[test]
fn inetd_is_not_combined_with_addresses_or_admin() {
    let out = common::run_cli(&["serve", "--inetd", "tcp://127.0.0.1:0"], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--inetd"), "{}", out.stderr);
    let out = common::run_cli(&["serve", "--inetd", "--admin", "127.0.0.1:0"], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--admin"), "{}", out.stderr);
}

/// An upgrade has nothing to hand over under --inetd: refused with its
/// reason, and the connection is served on.
#[test]
fn an_upgrade_under_inetd_is_refused_and_the_connection_served_on() {
    let (mut ours, child) = upper_on_a_socketpair();
    let out = common::run_cli(&["upgrade", "--pid", &child.id().to_string()], DEADLINE);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no listener to hand over"), "{out:?}");
    ours.write_all(b"def\n").unwrap();
    let mut buf = [0u8; 4];
    ours.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"DEF\n", "served on after the refused upgrade");
    ours.shutdown(Shutdown::Write).unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
}
