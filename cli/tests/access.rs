//! Access rules and per-source rate limits, against the real command.
//! Loopback has all of 127.0.0.0/8: a client socket bound to 127.0.0.2,
//! 127.0.0.3, ... before it connects is a different peer.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{have_ipv6, wait_until, ChildGuard, TempDir, DEADLINE};
use socket2::{Domain, Socket, Type};

/// How the server treated a connection.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The line came back.
    Served,
    /// Closed (end of stream or reset) without a byte sent.
    Refused,
}

fn addr_of(endpoint: &str) -> SocketAddr {
    endpoint
        .trim_start_matches("tcp://")
        .parse()
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
}

/// A connection to `server` from the local address `from`.
fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let src: SocketAddr = SocketAddr::new(from.parse().unwrap(), 0);
    let s = Socket::new(Domain::for_address(src), Type::STREAM, None).unwrap();
    s.bind(&src.into()).unwrap();
    s.connect_timeout(&server.into(), DEADLINE).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends a line on `s` and says how the server answered.
fn exchange(s: &mut TcpStream) -> Outcome {
    if let Err(e) = s.write_all(b"ping\n") {
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{e}"
        );
        return Outcome::Refused;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 5 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer and no close: {e}"),
        }
    }
    match got.as_slice() {
        b"ping\n" => Outcome::Served,
        [] => Outcome::Refused,
        other => panic!("unexpected bytes {other:?}"),
    }
}

fn try_from(from: &str, server: SocketAddr) -> Outcome {
    exchange(&mut connect_from(from, server))
}

fn serve(extra: &[&str], addr: &str) -> (ChildGuard, SocketAddr) {
    let mut args = vec!["--handler", "echo", "--framing", "line", "-v"];
    args.extend_from_slice(extra);
    args.push(addr);
    let server = ChildGuard::serve(&args, 1);
    let at = addr_of(&server.listening[0]);
    (server, at)
}

/// The admin endpoint's URL from the `admin` line.
fn admin_url(server: &ChildGuard) -> String {
    let out = server.read_stdout_until(DEADLINE, |s| s.contains("admin http://"));
    out.lines()
        .find_map(|l| l.strip_prefix("admin http://"))
        .unwrap_or_else(|| panic!("no admin line in {out:?}"))
        .trim()
        .to_string()
}

/// The refusals counted for `reason` on /metrics.
fn refused_on_metrics(admin: &str, reason: &str) -> u64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let key = format!("reason=\"{reason}\"}}");
    text.lines()
        .filter(|l| l.starts_with("sockserv_connections_refused_total{") && l.contains(&key))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn deny_refuses_that_peer_without_a_byte_and_serves_the_others() {
    let (server, at) = serve(
        &["--deny", "127.0.0.3/32", "--admin", "127.0.0.1:0"],
        "tcp://127.0.0.1:0",
    );
    let admin = admin_url(&server);
    assert_eq!(try_from("127.0.0.3", at), Outcome::Refused);
    assert_eq!(try_from("127.0.0.2", at), Outcome::Served);
    assert_eq!(try_from("127.0.0.3", at), Outcome::Refused);
    assert!(
        wait_until(DEADLINE, || refused_on_metrics(&admin, "rule") == 2),
        "rule refusals on /metrics: {}",
        refused_on_metrics(&admin, "rule")
    );
    assert_eq!(refused_on_metrics(&admin, "rate"), 0);
    assert!(
        wait_until(DEADLINE, || server
            .stderr()
            .contains("refused by the access rules")),
        "{}",
        server.stderr()
    );
}

#[test]
fn any_allow_makes_the_default_deny() {
    let (_server, at) = serve(&["--allow", "127.0.0.2/32"], "tcp://127.0.0.1:0");
    assert_eq!(try_from("127.0.0.2", at), Outcome::Served);
    assert_eq!(try_from("127.0.0.3", at), Outcome::Refused);
    assert_eq!(try_from("127.0.0.1", at), Outcome::Refused);
}

#[test]
fn the_most_specific_prefix_wins() {
    let (_server, at) = serve(
        &[
            "--allow",
            "127.0.0.0/8",
            "--deny",
            "127.0.0.4/30",
            "--allow",
            "127.0.0.5/32",
        ],
        "tcp://127.0.0.1:0",
    );
    assert_eq!(try_from("127.0.0.5", at), Outcome::Served);
    assert_eq!(try_from("127.0.0.4", at), Outcome::Refused);
    assert_eq!(try_from("127.0.0.6", at), Outcome::Refused);
    assert_eq!(try_from("127.0.0.2", at), Outcome::Served);
    assert_eq!(try_from("127.0.0.8", at), Outcome::Served);
}

#[test]
fn ipv6_rules() {
    if !have_ipv6() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let (_server, at) = serve(&["--deny", "::1/128"], "tcp://[::1]:0");
    assert_eq!(try_from("::1", at), Outcome::Refused);
    let (_other, at) = serve(&["--deny", "::2/128"], "tcp://[::1]:0");
    assert_eq!(try_from("::1", at), Outcome::Served);
}

#[test]
fn unix_peers_are_not_subject_to_rules() {
    let dir = TempDir::new("access-unix");
    let path = dir.join("s.sock");
    let addr = format!("unix://{}", path.display());
    let mut args = vec!["--handler", "echo", "--framing", "line"];
    args.extend_from_slice(&["--allow", "10.0.0.0/8", &addr]);
    let _server = ChildGuard::serve(&args, 1);
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"ping\n").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping\n");
}

#[test]
fn sighup_reloads_the_rules_file_and_keeps_open_connections() {
    let dir = TempDir::new("access-reload");
    let file = dir.join("rules");
    std::fs::write(&file, "# first\n127.0.0.3/32 deny\n").unwrap();
    let file_arg = file.display().to_string();
    let (mut server, at) = serve(&["--rules", &file_arg], "tcp://127.0.0.1:0");
    assert_eq!(try_from("127.0.0.3", at), Outcome::Refused);
    let mut open = connect_from("127.0.0.2", at);
    assert_eq!(exchange(&mut open), Outcome::Served);

    std::fs::write(
        &file,
        "127.0.0.2/32 deny SITE=lab\n127.0.0.0/8 allow\n::1 deny\n",
    )
    .unwrap();
    common::signal_pid(server.id(), libc::SIGHUP);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("3 rules in force")),
        "no reload line: {}",
        server.stderr()
    );
    // The connection open before the reload is still served.
    let mut line = [0u8; 5];
    open.write_all(b"again").unwrap();
    open.write_all(b"\n").unwrap();
    let mut back = Vec::new();
    while back.len() < 6 {
        let n = open.read(&mut line).unwrap();
        assert!(n > 0, "the open connection was closed by the reload");
        back.extend_from_slice(&line[..n]);
    }
    assert_eq!(back, b"again\n");
    // New connections get the new rules.
    assert_eq!(try_from("127.0.0.2", at), Outcome::Refused);
    assert_eq!(try_from("127.0.0.3", at), Outcome::Served);

    // A broken file keeps the rules in force and names the line.
    std::fs::write(&file, "127.0.0.0/8 allow\n\n127.0.0.300/32 deny\n").unwrap();
    common::signal_pid(server.id(), libc::SIGHUP);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("line 3")),
        "no error line: {}",
        server.stderr()
    );
    let err = server.stderr();
    let line = err.lines().find(|l| l.contains("line 3")).unwrap();
    assert!(line.contains(&file_arg), "{line}");
    assert!(line.contains("127.0.0.300/32"), "{line}");
    assert_eq!(try_from("127.0.0.2", at), Outcome::Refused);
    assert_eq!(try_from("127.0.0.3", at), Outcome::Served);
    assert_eq!(exchange(&mut open), Outcome::Served);

    // SIGHUP never ended it: SIGTERM still drains to a clean exit.
    drop(open);
    let (status, _) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn a_broken_rules_file_at_start_is_a_usage_error() {
    let dir = TempDir::new("access-broken");
    let file = dir.join("rules");
    std::fs::write(&file, "10.0.0.0/8 permit\n").unwrap();
    let file_arg = file.display().to_string();
    let out = common::run_cli(
        &["serve", "--rules", &file_arg, "tcp://127.0.0.1:0"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("line 1"), "{}", out.stderr);
    assert!(out.stderr.contains("permit"), "{}", out.stderr);
}

#[test]
fn the_rate_limit_refuses_one_source_not_the_service() {
    let (server, at) = serve(
        &["--max-conn-rate", "5/s", "--admin", "127.0.0.1:0"],
        "tcp://127.0.0.1:0",
    );
    let admin = admin_url(&server);
    // Twenty connections at once: the burst of five is served, a token
    // comes back every 200 ms.
    let mut conns: Vec<TcpStream> = (0..20).map(|_| connect_from("127.0.0.2", at)).collect();
    let outcomes: Vec<Outcome> = conns.iter_mut().map(exchange).collect();
    let served = outcomes.iter().filter(|o| **o == Outcome::Served).count();
    let refused = outcomes.len() - served;
    assert!((5..=10).contains(&served), "served {served} of 20");
    // Another source is served all the same.
    assert_eq!(try_from("127.0.0.3", at), Outcome::Served);
    assert!(
        wait_until(DEADLINE, || refused_on_metrics(&admin, "rate")
            == refused as u64),
        "rate refusals on /metrics: {} (expected {refused})",
        refused_on_metrics(&admin, "rate")
    );
    assert_eq!(refused_on_metrics(&admin, "rule"), 0);
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["serve", "--allow", "10.0.0.0/33"][..],
        &["serve", "--deny", "nonsense"][..],
        &["serve", "--max-conn-rate", "5/h"][..],
        &["serve", "--max-conn-rate", "0/s"][..],
    ] {
        let out = common::run_cli(args, Duration::from_secs(10));
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
    }
}

/// Connects from `from` every `period` until `until`, one exchange each;
/// (served, refused).
fn paced(
    from: &'static str,
    at: SocketAddr,
    period: Duration,
    until: std::time::Instant,
) -> (usize, usize) {
    let (mut served, mut refused) = (0, 0);
    let mut next = std::time::Instant::now();
    // Bounded in count as well as in time.
    for _ in 0..1000 {
        let now = std::time::Instant::now();
        if now >= until {
            break;
        }
        if next > now {
            // Pacing, not synchronisation: the rate this client connects at.
            std::thread::sleep(next - now);
        }
        next += period;
        match try_from(from, at) {
            Outcome::Served => served += 1,
            Outcome::Refused => refused += 1,
        }
    }
    (served, refused)
}

#[test]
fn over_the_rate_one_source_is_refused_while_a_slow_one_is_served_throughout() {
    let (_server, at) = serve(&["--max-conn-rate", "20/s"], "tcp://127.0.0.1:0");
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let fast = std::thread::spawn(move || paced("127.0.0.2", at, Duration::from_millis(16), until));
    let slow =
        std::thread::spawn(move || paced("127.0.0.3", at, Duration::from_millis(200), until));
    let (fast_served, fast_refused) = fast.join().unwrap();
    let (slow_served, slow_refused) = slow.join().unwrap();
    eprintln!(
        "60/s: {fast_served} served, {fast_refused} refused; 5/s: {slow_served} served, {slow_refused} refused"
    );
    assert_eq!(slow_refused, 0, "the slow source was refused");
    assert!(
        slow_served >= 10,
        "the slow source made {slow_served} connections"
    );
    assert!(
        fast_refused >= 30,
        "the fast source was refused {fast_refused} times"
    );
    // The burst of 20, then 20 a second: about 80 in 3 s, never all.
    assert!(
        (20..=100).contains(&fast_served),
        "the fast source was served {fast_served} times"
    );
}

#[test]
fn sighup_reloads_under_load_drop_no_connection() {
    let dir = TempDir::new("access-reload-load");
    let file = dir.join("rules");
    std::fs::write(&file, "127.0.0.5/32 deny\n").unwrap();
    let file_arg = file.display().to_string();
    let (server, at) = serve(&["--rules", &file_arg], "tcp://127.0.0.1:0");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Eight clients from 127.0.0.2, each exchanging lines all along.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let stop = std::sync::Arc::clone(&stop);
            let mut s = connect_from("127.0.0.2", at);
            std::thread::spawn(move || {
                let mut exchanges = 0u64;
                let mut buf = [0u8; 64];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && exchanges < 1_000_000 {
                    let msg = format!("client {i} message {exchanges}\n");
                    s.write_all(msg.as_bytes())
                        .map_err(|e| format!("write: {e}"))?;
                    let mut got = Vec::new();
                    while got.len() < msg.len() {
                        match s.read(&mut buf) {
                            Ok(0) => return Err(format!("closed after {exchanges} exchanges")),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => return Err(format!("read: {e}")),
                        }
                    }
                    assert_eq!(got, msg.as_bytes());
                    exchanges += 1;
                }
                Ok::<u64, String>(exchanges)
            })
        })
        .collect();
    // Five reloads, each denying another address; each takes effect.
    for n in 0..5 {
        let denied = format!("127.0.0.{}", 10 + n);
        std::fs::write(&file, format!("{denied}/32 deny\n127.0.0.0/8 allow\n")).unwrap();
        common::signal_pid(server.id(), libc::SIGHUP);
        assert!(
            wait_until(DEADLINE, || try_from(&denied, at) == Outcome::Refused),
            "reload {n}: {denied} is still served"
        );
        assert_eq!(try_from("127.0.0.3", at), Outcome::Served);
    }
    // A broken file: the last rules stay, the file's line is logged.
    std::fs::write(&file, "127.0.0.0/8 allow\nbroken line\n").unwrap();
    common::signal_pid(server.id(), libc::SIGHUP);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("line 2")),
        "{}",
        server.stderr()
    );
    let err = server.stderr();
    let logged = err.lines().find(|l| l.contains("line 2")).unwrap();
    assert!(logged.contains(&file_arg), "{logged}");
    assert_eq!(try_from("127.0.0.14", at), Outcome::Refused);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let n = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("an open connection was dropped: {e}"));
        assert!(n > 0);
        total += n;
    }
    eprintln!("{total} exchanges on 8 connections across 6 reloads, none dropped");
}
