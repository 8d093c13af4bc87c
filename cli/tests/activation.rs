//! `sockserv serve` under a service manager: listeners passed by the real
//! `systemd-socket-activate` (LISTEN_FDS / LISTEN_FDNAMES), stray or foreign
//! descriptors refused or ignored, and the sd_notify states (READY, STATUS,
//! WATCHDOG, STOPPING) received on a Unix datagram socket.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cli_bin, free_port, run_with_input, wait_until, ChildGuard, TempDir, DEADLINE};

/// `systemd-socket-activate ARGS... sockserv serve --handler echo`.
fn activate(args: &[&str]) -> ChildGuard {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(args)
        .arg(cli_bin())
        .args(["serve", "--handler", "echo", "-v"]);
    ChildGuard::spawn(&mut cmd)
}

/// Connects to 127.0.0.1:`port` once systemd-socket-activate listens there
/// (the first connection also starts the server), sends a line and reads
/// its echo.
fn echo_tcp(port: u16, child: &ChildGuard) {
    let mut conn = None;
    let ok = wait_until(DEADLINE, || {
        conn = TcpStream::connect(("127.0.0.1", port)).ok();
        conn.is_some()
    });
    assert!(ok, "nothing listens on {port}; stderr: {}", child.stderr());
    let mut conn = conn.unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let line = format!("hello {port}\n");
    conn.write_all(line.as_bytes()).unwrap();
    let mut got = vec![0u8; line.len()];
    conn.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("no echo on {port}: {e}; stderr: {}", child.stderr()));
    assert_eq!(got, line.as_bytes());
}

#[test]
fn serves_an_inherited_tcp_listener() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = activate(&["-l", &listen, "--fdname=web"]);
    echo_tcp(port, &child);
    child.wait_listening(1, DEADLINE);
    assert_eq!(child.listening, [format!("tcp://{listen}")]);
    let (status, stderr) = child.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    // Log lines are written by a thread: all are out once it exited.
    assert!(
        stderr.contains("name=\"web\""),
        "the name is logged: {stderr}"
    );
}

#[test]
fn serves_two_inherited_tcp_listeners() {
    let (a, b) = (free_port(), free_port());
    let (la, lb) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    let mut child = activate(&["-l", &la, "-l", &lb, "--fdname=one:two"]);
    echo_tcp(a, &child);
    echo_tcp(b, &child);
    child.wait_listening(2, DEADLINE);
    let mut got = child.listening.clone();
    got.sort();
    let mut want = vec![format!("tcp://{la}"), format!("tcp://{lb}")];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn serves_an_inherited_udp_socket() {
    let port = {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = activate(&["--datagram", "-l", &listen]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    let end = Instant::now() + DEADLINE;
    let mut got = None;
    // A datagram sent before systemd-socket-activate binds is lost: resend
    // until one is echoed (each wait bounded by the read timeout).
    while got.is_none() && Instant::now() < end {
        let _ = client.send_to(b"ping", &listen);
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            got = Some(buf[..n].to_vec());
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&b"ping"[..]),
        "stderr: {}",
        child.stderr()
    );
    child.wait_listening(1, DEADLINE);
    assert_eq!(child.listening, [format!("udp://{listen}")]);
}

/// `sockserv serve` with `fd` as its descriptor 3 and LISTEN_FDS=1;
/// LISTEN_PID is its own pid unless `pid` names another.
fn with_fd3(fd: i32, pid: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    let set_pid = match pid {
        Some(p) => format!("LISTEN_PID={p}"),
        // `exec` keeps the shell's pid: $$ is the server's.
        None => "LISTEN_PID=$$".to_string(),
    };
    cmd.arg("-c")
        .arg(format!(
            "export LISTEN_FDS=1 {set_pid}; exec \"$0\" serve \"$@\""
        ))
        .arg(cli_bin())
        .args(args);
    // SAFETY: dup2 and fcntl are async-signal-safe; they only touch
    // descriptor 3. dup2(3, 3) would leave close-on-exec set, so a `fd`
    // that already is 3 only has that flag cleared.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_regular_file_at_fd_3_is_refused() {
    let dir = TempDir::new("activation-stray");
    let file = std::fs::File::create(dir.join("stray")).unwrap();
    let done = run_with_input(&mut with_fd3(file.as_raw_fd(), None, &[]), None, DEADLINE);
    assert_eq!(done.code(), Some(1), "stderr: {}", done.stderr);
    let err = done.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("fd 3") && err.contains("not a socket"),
        "{err}"
    );
    assert!(done.stdout.is_empty(), "nothing served: {}", done.stdout);
}

#[test]
fn a_socket_that_does_not_listen_at_fd_3_is_refused() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let done = run_with_input(&mut with_fd3(sock.as_raw_fd(), None, &[]), None, DEADLINE);
    assert_eq!(done.code(), Some(1), "stderr: {}", done.stderr);
    let err = done.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("fd 3") && err.contains("not listening"),
        "{err}"
    );
}

/// A fake service manager's notify socket in `dir`, and a `serve` of the
/// echo handler on a free port that notifies it.
fn notified_echo(dir: &TempDir) -> (UnixDatagram, Command) {
    let path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut cmd = Command::new(cli_bin());
    cmd.args(["serve", "--handler", "echo", "tcp://127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path);
    (notify, cmd)
}

#[test]
fn sd_notify_ready_status_watchdog_stopping() {
    let dir = TempDir::new("activation-notify");
    let (notify, mut cmd) = notified_echo(&dir);
    cmd.env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    let mut child = ChildGuard::spawn(&mut cmd);
    child.wait_listening(1, DEADLINE);
    let endpoint = child.listening[0].clone();

    let mut buf = [0u8; 4096];
    let mut recv = |until: Instant| -> Option<String> {
        while Instant::now() < until {
            if let Ok(n) = notify.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    };
    let ready = recv(Instant::now() + DEADLINE).expect("a first notification");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("a STATUS= line in {ready:?}"));
    assert_eq!(status, format!("serving 1 listener: {endpoint}"));

    // WATCHDOG_USEC=200000: a ping every 100 ms, so at least two in 1 s.
    let end = Instant::now() + Duration::from_secs(1);
    let mut pings = 0;
    while pings < 2 {
        match recv(end) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            Some(m) => panic!("unexpected notification {m:?}"),
            None => break,
        }
    }
    assert!(pings >= 2, "{pings} WATCHDOG=1 within 1 s");

    let (status, stderr) = child.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let end = Instant::now() + DEADLINE;
    let mut stopping = false;
    while let Some(m) = recv(end) {
        if m == "STOPPING=1" {
            stopping = true;
            break;
        }
        assert_eq!(m, "WATCHDOG=1", "unexpected notification");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}

/// An upgrade tells the service manager who the main process is now
/// (`MAINPID=`), after the successor's own `READY=1` reached it.
#[test]
fn sd_notify_mainpid_after_an_upgrade() {
    let dir = TempDir::new("activation-mainpid");
    let (notify, mut cmd) = notified_echo(&dir);
    cmd.env_remove("WATCHDOG_USEC");
    let mut child = ChildGuard::spawn(&mut cmd);
    child.wait_listening(1, DEADLINE);
    let old = child.id();
    let out = common::run_cli(&["upgrade", "--pid", &old.to_string()], DEADLINE * 2);
    let new: u32 = out
        .stdout
        .split("to pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {out:?}"));
    // The successor outlives the test's child: stopped by its pid.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            common::signal_pid(self.0, libc::SIGTERM);
        }
    }
    let _stop = Stop(new);
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    let want = format!("MAINPID={new}");
    while Instant::now() < end && !seen.iter().any(|m: &String| m.contains(&want)) {
        if let Ok(n) = notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let at = seen.iter().position(|m| m.lines().any(|l| l == want));
    let at = at.unwrap_or_else(|| panic!("no {want} in {seen:?}"));
    assert!(
        seen[..at].iter().filter(|m| m.contains("READY=1")).count() >= 2,
        "the old process's and the successor's READY=1 before {want}: {seen:?}"
    );
    // The successor shares the old process's stderr: stopped first, so
    // that the wait for the old one's output ends.
    drop(_stop);
    let (status, stderr) = child.wait_exit(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "the old process drains and exits 0: {stderr}"
    );
}
