//! The `sockserv` command as a user runs it: the seed's acceptance check
//! against the seed's Python client and server, echo over every transport
//! in every mode, signals, bad input, help texts, and netcat as a peer.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    free_port, repo_dir, run_cli, run_with_input, wait_until, ChildGuard, TempDir, DEADLINE,
};

const MODES: [&str; 4] = ["sequential", "threads", "pool", "async"];

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint:?}"))
}

fn seed(file: &str) -> String {
    repo_dir()
        .join("tests/seed")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

fn python() -> Command {
    let mut cmd = Command::new("python3");
    // Unbuffered, so the seed server's prints reach us at once.
    cmd.arg("-u");
    cmd
}

/// The seed's acceptance: its Python client against `sockserv serve`.
#[test]
fn seed_client_against_sockserv_upper() {
    let server = ChildGuard::serve(&["--handler", "upper", "tcp://127.0.0.1:0"], 1);
    let ep = &server.listening[0];
    assert!(ep.starts_with("tcp://127.0.0.1:"), "{ep}");
    let port = port_of(ep);
    assert_ne!(port, 0);
    let out = run_with_input(
        python()
            .arg(seed("seed_client.py"))
            .arg("127.0.0.1")
            .arg(port.to_string()),
        None,
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "seed client failed: {}", out.stderr);
    assert!(out.stdout.contains("Sent: hello"), "{}", out.stdout);
    assert!(out.stdout.contains("Received: HELLO"), "{}", out.stdout);
    // The seed client sends its own data too.
    let out = run_with_input(
        python()
            .arg(seed("seed_client.py"))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg("mixed Case 123"),
        None,
        DEADLINE,
    );
    assert!(
        out.stdout.contains("Received: MIXED CASE 123"),
        "{}",
        out.stdout
    );
    assert!(
        server.stderr().is_empty(),
        "server stderr: {}",
        server.stderr()
    );
}

/// `sockserv send` against the seed's Python server.
#[test]
fn sockserv_send_against_seed_server() {
    // The seed server takes a port but cannot report one it picked.
    let port = free_port();
    let mut cmd = python();
    cmd.arg(seed("seed_server.py")).arg(port.to_string());
    let server = ChildGuard::spawn(&mut cmd);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(DEADLINE, || std::net::TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(200)
        )
        .is_ok()),
        "the seed server never listened on {port}; stderr: {}",
        server.stderr()
    );
    let out = run_cli(&["send", &format!("127.0.0.1:{port}"), "hello"], DEADLINE);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "HELLO");
    // The seed server saw the request as its client would send it.
    let seen = server.read_stdout_until(DEADLINE, |s| s.contains("b'hello'"));
    assert!(seen.contains("b'hello'"), "seed server printed {seen:?}");
}

/// Echo through the CLI on six transports at once, in one mode.
fn echo_everywhere(mode: &str) {
    let dir = TempDir::new(mode);
    let unix = format!("unix://{}", dir.join("s.sock").display());
    let unix_dgram = format!("unix-dgram://{}", dir.join("d.sock").display());
    let mut addrs = vec!["tcp://127.0.0.1:0", "udp://127.0.0.1:0"];
    if common::have_ipv6() {
        addrs.extend(["tcp://[::1]:0", "udp://[::1]:0"]);
    } else {
        eprintln!("no IPv6 on this machine: tcp6 and udp6 skipped");
    }
    addrs.extend([unix.as_str(), unix_dgram.as_str()]);
    let mut args = vec!["--handler", "echo", "--mode", mode];
    args.extend(addrs.iter().copied());
    let mut server = ChildGuard::serve(&args, addrs.len());

    for (asked, got) in addrs.iter().zip(&server.listening) {
        let scheme = asked.split(':').next().unwrap();
        assert!(got.starts_with(&format!("{scheme}:")), "{asked} -> {got}");
        if asked.ends_with(":0") {
            assert_ne!(port_of(got), 0, "{got}");
        } else {
            assert_eq!(got, asked);
        }
        let data = format!("hello {mode} over {scheme}");
        let out = run_cli(&["send", got, &data], DEADLINE);
        assert_eq!(out.code(), Some(0), "{mode} {got}: {}", out.stderr);
        assert_eq!(out.stdout, format!("{data}\n"), "{mode} {got}");
        assert!(out.stderr.is_empty(), "{mode} {got}: {}", out.stderr);
    }
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "{mode}: {stderr}");
    assert!(!dir.join("s.sock").exists(), "unix socket file left behind");
    assert!(
        !dir.join("d.sock").exists(),
        "unix-dgram socket file left behind"
    );
}

#[test]
fn echo_all_transports_sequential() {
    echo_everywhere("sequential");
}

#[test]
fn echo_all_transports_threads() {
    echo_everywhere("threads");
}

#[test]
fn echo_all_transports_pool() {
    echo_everywhere("pool");
}

#[test]
fn echo_all_transports_async() {
    echo_everywhere("async");
}

#[test]
fn two_listeners_print_two_lines() {
    let server = ChildGuard::serve(
        &[
            "--handler",
            "echo",
            "tcp://127.0.0.1:0",
            "udp://127.0.0.1:0",
        ],
        2,
    );
    assert_eq!(server.listening.len(), 2);
    assert!(server.listening[0].starts_with("tcp://127.0.0.1:"));
    assert!(server.listening[1].starts_with("udp://127.0.0.1:"));
    assert!(server.listening.iter().all(|e| port_of(e) != 0));
    // Nothing else on stdout (no third line).
    let more = server.read_stdout_until(Duration::from_millis(200), |_| true);
    assert!(more.is_empty(), "extra stdout: {more:?}");
}

fn stops_on(sig: libc::c_int) {
    for mode in MODES {
        let mut server = ChildGuard::serve(
            &["--handler", "echo", "--mode", mode, "tcp://127.0.0.1:0"],
            1,
        );
        // Serve one request first, so the signal hits a server that works.
        let out = run_cli(&["send", &server.listening[0], "ping"], DEADLINE);
        assert_eq!(out.stdout, "ping\n", "{mode}: {}", out.stderr);
        let (status, stderr) = server.terminate_with(sig, DEADLINE);
        assert_eq!(
            status.code(),
            Some(0),
            "{mode} signal {sig}: {status:?} {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn sigterm_exits_0() {
    stops_on(libc::SIGTERM);
}

#[test]
fn sigint_exits_0() {
    stops_on(libc::SIGINT);
}

/// A second signal skips the drain: a client that holds its connection
/// open no longer delays the exit.
#[test]
fn second_sigterm_stops_at_once() {
    let mut server = ChildGuard::serve(&["-v", "--handler", "echo", "tcp://127.0.0.1:0"], 1);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port_of(&server.listening[0])));
    let client = std::net::TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    {
        use std::io::{Read, Write};
        (&client).write_all(b"hold\n").unwrap();
        let mut buf = [0u8; 5];
        (&client).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hold\n");
    }
    common::signal_pid(server.id(), libc::SIGTERM);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("shutting down")),
        "first signal not seen: {}",
        server.stderr()
    );
    let second = std::time::Instant::now();
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    let took = second.elapsed();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        took < Duration::from_secs(1),
        "exit took {took:?} after the second signal"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(client);
}

/// Log lines on a stderr that is not a terminal (a pipe, a file, a
/// journal) should be plain text.
#[test]
fn logs_to_a_pipe_have_no_ansi_escapes() {
    let mut server = ChildGuard::serve(&["-v", "--handler", "echo", "tcp://127.0.0.1:0"], 1);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("serving")),
        "{}",
        server.stderr()
    );
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0));
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in piped logs: {stderr:?}"
    );
}

/// One line on stderr, `sockserv: ...`, naming the problem, the right exit
/// code, no panic or backtrace, nothing on stdout.
fn assert_error(args: &[&str], code: i32, needles: &[&str]) {
    let out = run_cli_env(args);
    assert_eq!(out.code(), Some(code), "{args:?}: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: stderr is not one line: {:?}",
        out.stderr
    );
    assert!(
        lines[0].starts_with("sockserv: "),
        "{args:?}: {:?}",
        lines[0]
    );
    for needle in needles {
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {:?} does not mention {needle:?}",
            lines[0]
        );
    }
    let lower = out.stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "{args:?}: {}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening"),
        "{args:?}: {}",
        out.stdout
    );
}

/// Runs the CLI with backtraces on, so a panic could not hide.
fn run_cli_env(args: &[&str]) -> common::Finished {
    run_with_input(
        Command::new(common::cli_bin())
            .args(args)
            .env("RUST_BACKTRACE", "1"),
        None,
        DEADLINE,
    )
}

#[test]
fn bad_address_is_a_usage_error() {
    assert_error(
        &["serve", "tcp://nope"],
        2,
        &["tcp://nope", "invalid address"],
    );
    assert_error(&["serve", "tcp://127.0.0.1:99999"], 2, &["99999", "port"]);
    assert_error(&["serve", "ftp://127.0.0.1:1"], 2, &["unknown scheme"]);
    assert_error(
        &["send", "garbage", "x"],
        2,
        &["garbage", "invalid address"],
    );
}

#[test]
fn unknown_handler_mode_or_option_is_a_usage_error() {
    assert_error(
        &["serve", "--handler", "nope", "tcp://127.0.0.1:0"],
        2,
        &["unknown handler", "nope"],
    );
    assert_error(
        &["serve", "--mode", "nope", "tcp://127.0.0.1:0"],
        2,
        &["--mode", "nope"],
    );
    assert_error(&["serve", "--bogus", "tcp://127.0.0.1:0"], 2, &["--bogus"]);
    assert_error(&["frobnicate"], 2, &["frobnicate"]);
}

#[test]
fn port_in_use_is_a_runtime_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    assert_error(
        &["serve", &format!("tcp://127.0.0.1:{port}")],
        1,
        &["address already in use", &port.to_string()],
    );
    drop(taken);
}

#[test]
fn existing_unix_path_is_a_runtime_error() {
    let dir = TempDir::new("exists");
    let path = dir.join("taken.sock");
    std::fs::write(&path, b"not a socket").unwrap();
    for scheme in ["unix", "unix-dgram"] {
        let addr = format!("{scheme}://{}", path.display());
        assert_error(
            &["serve", &addr],
            1,
            &["already exists", &path.display().to_string()],
        );
        // And the file was not removed or replaced.
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket", "{scheme}");
    }
}

#[test]
fn nothing_listening_is_a_runtime_error() {
    let port = free_port();
    assert_error(
        &["send", &format!("127.0.0.1:{port}"), "hello"],
        1,
        &["connection refused", &port.to_string()],
    );
    // A datagram to a closed UDP port: the ICMP error surfaces as a refusal.
    assert_error(
        &["send", &format!("udp://127.0.0.1:{port}"), "hello"],
        1,
        &["refused", &port.to_string()],
    );
    let dir = TempDir::new("nolisten");
    let path = dir.join("none.sock");
    assert_error(
        &["send", &format!("unix://{}", path.display()), "hello"],
        1,
        &["no such file"],
    );
}

#[test]
fn help_has_examples() {
    for sub in [
        &["--help"][..],
        &["serve", "--help"],
        &["send", "--help"],
        &["bench", "--help"],
    ] {
        let out = run_cli(sub, DEADLINE);
        assert_eq!(out.code(), Some(0), "{sub:?}: {}", out.stderr);
        assert!(out.stdout.contains("Examples"), "{sub:?}: {}", out.stdout);
        assert!(out.stderr.is_empty(), "{sub:?}: {}", out.stderr);
    }
}

/// netcat-openbsd as the peer: `nc -N` half-closes after stdin, then reads
/// until the server closes.
#[test]
fn netcat_echo() {
    let nc_present = Command::new("nc")
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    assert!(
        nc_present,
        "nc not found: install netcat-openbsd (apt-get install -y netcat-openbsd)"
    );
    let server = ChildGuard::serve(&["--handler", "echo", "tcp://127.0.0.1:0"], 1);
    let port = port_of(&server.listening[0]).to_string();
    let input = b"hello from netcat\nsecond line\n".repeat(100);
    let out = run_with_input(
        Command::new("nc").args(["-N", "-w", "10", "127.0.0.1", &port]),
        Some(&input),
        DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "nc: {}", out.stderr);
    assert_eq!(out.stdout.as_bytes(), &input[..]);
}
