//! Black-box tests of `sockserv bench`: the built binary against small echo
//! servers written here with std only, so a bug in sockserv's own server
//! cannot hide a bug in the load generator (or the other way round).
//!
//! Each server counts what it received; a run must report exactly the
//! replies it asked for, and the server must have seen exactly those
//! requests. Every wait has a deadline; servers listen on 127.0.0.1:0 (or a
//! temporary Unix path) only.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{wait_until, DEADLINE};

/// The longest any one bench run may take before the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `sockserv bench ARGS...`, killing it if it outlives the deadline.
fn bench(args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_sockserv"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sockserv");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_DEADLINE) {
        Ok(out) => {
            let out = out.expect("wait for sockserv");
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the child we started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("sockserv bench {args:?} ran longer than {RUN_DEADLINE:?}");
        }
    }
}

/// The number after `"key": ` in the report's JSON (keys are unique in it).
fn json_num(json: &str, key: &str) -> f64 {
    let needle = format!("\"{key}\": ");
    let at = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + needle.len();
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// A TCP echo server, thread per connection, counting the bytes it read.
/// `corrupt` flips one bit of the first byte of every read it echoes.
fn tcp_echo(corrupt: bool) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                    if corrupt {
                        buf[0] ^= 1;
                    }
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// A line echo server: reads `\n`-terminated lines, writes each back, and
/// counts the lines.
fn line_echo() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let lines = Arc::new(AtomicU64::new(0));
    let counter = lines.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let counter = counter.clone();
            thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    assert_eq!(line.last(), Some(&b'\n'), "a request that is not a line");
                    counter.fetch_add(1, Ordering::SeqCst);
                    if writer.write_all(&line).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lines)
}

/// A TCP server that reads every request and never answers one (`half`
/// false), or answers each read with only its first half (`half` true), so
/// that no reply is ever complete. Counts the connections it accepted.
fn unanswering(half: bool) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if half && stream.write_all(&buf[..n / 2]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A UDP echo server counting the datagrams it received.
fn udp_echo() -> (String, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp://{}", socket.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&buf[..n], peer);
        }
    });
    (addr, received)
}

fn temp_path(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("sockserv-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn counts_exactly_the_requests_asked_for() {
    let (addr, received) = tcp_echo(false);
    let run = bench(&["-n", "1000", "-c", "4", "--json", &addr]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let json = run.stdout.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert_eq!(json_num(json, "requests"), 1000.0, "{json}");
    assert_eq!(json_num(json, "sent"), 1000.0, "{json}");
    assert_eq!(json_num(json, "total"), 0.0, "{json}");
    assert_eq!(json_num(json, "connected"), 4.0, "{json}");
    assert_eq!(
        received.load(Ordering::SeqCst) / 64,
        1000,
        "what the server saw"
    );
    assert!(json_num(json, "p50") > 0.0, "{json}");
    assert!(json_num(json, "rps") > 0.0, "{json}");
}

#[test]
fn pipelined_large_requests_survive_any_segmentation() {
    // 8 requests of 20,000 bytes in flight per connection: replies arrive
    // in pieces that straddle request boundaries.
    let (addr, received) = tcp_echo(false);
    let run = bench(&[
        "-n",
        "400",
        "-c",
        "3",
        "--size",
        "20000",
        "--pipeline",
        "8",
        "--json",
        &addr,
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 400.0, "{}", run.stdout);
    assert_eq!(received.load(Ordering::SeqCst), 400 * 20000);
}

#[test]
fn a_server_that_changes_bytes_fails_the_run() {
    let (addr, _) = tcp_echo(true);
    let run = bench(&["-n", "1000", "-c", "4", "--json", &addr]);
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert!(json_num(&run.stdout, "wrong_reply") > 0.0, "{}", run.stdout);
    assert!(
        run.stdout.contains("reply differs at byte 0"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("error"), "{}", run.stderr);

    // The human report says the same.
    let run = bench(&["-n", "100", "-c", "1", &addr]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("wrong reply 1"), "{}", run.stdout);
}

#[test]
fn line_framing_sends_lines_and_decodes_replies() {
    let (addr, lines) = line_echo();
    let run = bench(&[
        "-n",
        "1000",
        "-c",
        "4",
        "--pipeline",
        "8",
        "--framing",
        "line",
        "--json",
        &addr,
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 1000.0, "{}", run.stdout);
    assert_eq!(lines.load(Ordering::SeqCst), 1000);
    assert!(
        run.stdout.contains("\"framing\": \"line\""),
        "{}",
        run.stdout
    );
}

#[test]
fn udp_datagrams_are_matched_to_requests() {
    let (addr, received) = udp_echo();
    let run = bench(&["-n", "500", "-c", "2", "--size", "100", "--json", &addr]);
    assert_eq!(run.code, 0, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 500.0, "{}", run.stdout);
    assert_eq!(received.load(Ordering::SeqCst), 500);
}

#[test]
fn unix_stream_and_datagram_endpoints_work_and_clean_up() {
    let stream_path = temp_path("stream.sock");
    let listener = UnixListener::bind(&stream_path).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
            });
        }
    });
    let run = bench(&[
        "-n",
        "300",
        "-c",
        "2",
        "--json",
        &format!("unix://{}", stream_path.display()),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 300.0, "{}", run.stdout);

    let dgram_path = temp_path("dgram.sock");
    let socket = UnixDatagram::bind(&dgram_path).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if let Some(p) = peer.as_pathname() {
                let _ = socket.send_to(&buf[..n], p);
            }
        }
    });
    let run = bench(&[
        "-n",
        "300",
        "-c",
        "2",
        "--json",
        &format!("unix-dgram://{}", dgram_path.display()),
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 300.0, "{}", run.stdout);
    // The client's own socket files are gone.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sockserv-bench-") && !n.starts_with("sockserv-bench-test-"))
        .filter(|n| n.ends_with(".sock"))
        .collect();
    let mine: Vec<_> = leftovers
        .iter()
        .filter(|n| n.contains(&format!("-{}-", std::process::id())))
        .collect();
    assert!(mine.is_empty(), "{mine:?}");
    let _ = std::fs::remove_file(&stream_path);
    let _ = std::fs::remove_file(&dgram_path);
}

#[test]
fn open_loop_sends_at_the_rate_asked_for() {
    let (addr, received) = tcp_echo(false);
    // 2,000 req/s for 0.5 s: 1,000 requests scheduled.
    let run = bench(&["--rate", "2000", "-c", "4", "-d", "500ms", "--json", &addr]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let requests = json_num(&run.stdout, "requests");
    assert!((500.0..=1000.0).contains(&requests), "{}", run.stdout);
    assert!(received.load(Ordering::SeqCst) / 64 <= 1004);
}

#[test]
fn warmup_is_not_counted() {
    let (addr, received) = tcp_echo(false);
    let run = bench(&["-n", "200", "-c", "2", "--warmup", "200ms", "--json", &addr]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 200.0, "{}", run.stdout);
    assert!(
        received.load(Ordering::SeqCst) / 64 > 200,
        "the warm-up sent nothing"
    );
}

#[test]
fn nothing_listening_is_one_line_and_exit_1() {
    // Bind then drop: a port that was free a moment ago and has no listener.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let run = bench(&["-n", "10", "-c", "3", &addr]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr.trim(),
        format!("sockserv: cannot connect to {addr}: connection refused")
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn bad_arguments_are_one_line_and_exit_2() {
    for args in [
        &["tcp://127.0.0.1"][..],
        &["--framing", "nonsense", "127.0.0.1:9"][..],
        &["--size", "0", "127.0.0.1:9"][..],
        &["--framing", "fixed:10", "--size", "64", "127.0.0.1:9"][..],
        &["--framing", "line", "udp://127.0.0.1:9"][..],
    ] {
        let run = bench(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.starts_with("sockserv: "),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Unparsable values are clap's usage errors: exit 2 as well.
    assert_eq!(bench(&["-d", "soon", "127.0.0.1:9"]).code, 2);
}

#[test]
fn a_server_that_hangs_up_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        // Echo one request per connection, then close.
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 64];
            if stream.read_exact(&mut buf).is_ok() {
                let _ = stream.write_all(&buf);
            }
            drop(stream);
        }
    });
    let run = bench(&["-n", "50", "-c", "2", "--json", &addr]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(json_num(&run.stdout, "io"), 2.0, "{}", run.stdout);
    assert_eq!(json_num(&run.stdout, "requests"), 2.0, "{}", run.stdout);
}

/// Issue 11, defect 7: with the 30 s reply timeout longer than the run, a
/// server that never answered used to pass with `requests 0, errors 0`.
#[test]
fn a_server_that_never_replies_fails_the_run() {
    let (addr, accepted) = unanswering(false);
    let run = bench(&["-c", "4", "-d", "1s", "--json", &addr]);
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 0.0, "{}", run.stdout);
    assert_eq!(json_num(&run.stdout, "outstanding"), 4.0, "{}", run.stdout);
    // No error was counted (the timeout did not pass): the failure is that
    // nothing was answered, and stderr says so on one line.
    assert_eq!(json_num(&run.stdout, "total"), 0.0, "{}", run.stdout);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("no request was answered") && run.stderr.contains("4 outstanding"),
        "{}",
        run.stderr
    );
    assert!(
        wait_until(DEADLINE, || accepted.load(Ordering::SeqCst) == 4),
        "the server accepted {} connections",
        accepted.load(Ordering::SeqCst)
    );

    // The text report says it too.
    let run = bench(&["-c", "2", "-d", "300ms", &addr]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("outstanding 2 requests without a reply"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_server_that_echoes_half_fails_the_run() {
    let (addr, _) = unanswering(true);
    let run = bench(&["-c", "4", "-d", "1s", "--json", &addr]);
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 0.0, "{}", run.stdout);
    assert_eq!(json_num(&run.stdout, "outstanding"), 4.0, "{}", run.stdout);
    assert!(
        run.stderr.contains("no request was answered"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_reply_timeout_fails_the_run_with_its_reason() {
    let (addr, _) = unanswering(false);
    let run = bench(&["-c", "2", "-d", "5s", "--timeout", "300ms", "--json", &addr]);
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_eq!(json_num(&run.stdout, "timeout"), 2.0, "{}", run.stdout);
    // A timed-out connection's request is an error, not outstanding.
    assert_eq!(json_num(&run.stdout, "outstanding"), 0.0, "{}", run.stdout);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("2 requests had no reply within 0.300 s"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_timed_run_collects_the_replies_in_flight_at_its_end() {
    let (addr, _) = tcp_echo(false);
    let run = bench(&["-c", "4", "--pipeline", "8", "-d", "300ms", "--json", &addr]);
    assert_eq!(run.code, 0, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert!(json_num(&run.stdout, "requests") > 0.0, "{}", run.stdout);
    assert_eq!(json_num(&run.stdout, "outstanding"), 0.0, "{}", run.stdout);
}

/// What a churn test server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    lines: AtomicU64,
    peers: Mutex<HashSet<IpAddr>>,
}

/// A TCP line server, thread per connection, counting connections, lines
/// and client addresses. `upper_and_close` answers like the seed's
/// socketserver handler: the first line stripped and upper-cased, without
/// a line end, then it closes; otherwise it echoes lines until the client
/// closes.
fn churn_server(upper_and_close: bool) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let counter = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counter.connections.fetch_add(1, Ordering::SeqCst);
            if let Ok(peer) = stream.peer_addr() {
                counter.peers.lock().unwrap().insert(peer.ip());
            }
            let counter = counter.clone();
            thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    counter.lines.fetch_add(1, Ordering::SeqCst);
                    let reply = if upper_and_close {
                        line.trim_ascii().to_ascii_uppercase()
                    } else {
                        line.clone()
                    };
                    if writer.write_all(&reply).is_err() || upper_and_close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Issue 10: the churn workload opens one connection per request, and the
/// counts on both sides agree.
#[test]
fn churn_opens_a_connection_per_request_and_counts_match() {
    let (addr, seen) = churn_server(false);
    let run = bench(&["--churn", "-c", "4", "-d", "1s", "--json", &addr]);
    assert_eq!(run.code, 0, "stdout: {} stderr: {}", run.stdout, run.stderr);
    let json = run.stdout.trim();
    assert!(json.contains("\"churn\": true"), "{json}");
    assert_eq!(json_num(json, "total"), 0.0, "{json}");
    assert_eq!(json_num(json, "outstanding"), 0.0, "{json}");
    let sent = json_num(json, "sent") as u64;
    let requests = json_num(json, "requests") as u64;
    // Every connection started was opened and answered; those answered
    // after the end of the second are not counted in the window.
    assert_eq!(json_num(json, "connected") as u64, sent, "{json}");
    assert!(
        requests > 0 && requests <= sent && requests + 4 >= sent,
        "{json}"
    );
    assert_eq!(
        json_num(json, "conns_per_s"),
        json_num(json, "rps"),
        "{json}"
    );
    assert!(
        wait_until(DEADLINE, || seen.lines.load(Ordering::SeqCst) == sent),
        "the server saw {} connections and {} lines, the client started {sent}",
        seen.connections.load(Ordering::SeqCst),
        seen.lines.load(Ordering::SeqCst)
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), sent);
    // Against 127.0.0.1 the client addresses are spread over 127.0.0.2-250.
    if json_num(json, "sources") > 0.0 {
        let peers = seen.peers.lock().unwrap().clone();
        assert!(peers.len() > 1, "{peers:?}");
        for ip in &peers {
            let IpAddr::V4(v4) = ip else { panic!("{ip}") };
            let [a, b, c, d] = v4.octets();
            assert!((a, b, c) == (127, 0, 0) && (2..=250).contains(&d), "{ip}");
        }
    }

    // A request-count run: exactly that many connections.
    let (addr, seen) = churn_server(false);
    let run = bench(&["--churn", "-c", "4", "-n", "200", "--json", &addr]);
    assert_eq!(run.code, 0, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_eq!(json_num(&run.stdout, "requests"), 200.0, "{}", run.stdout);
    assert!(
        wait_until(DEADLINE, || seen.lines.load(Ordering::SeqCst) == 200),
        "the server saw {} lines",
        seen.lines.load(Ordering::SeqCst)
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 200);
}

#[test]
fn churn_takes_the_seed_servers_upper_cased_reply() {
    let (addr, seen) = churn_server(true);
    let run = bench(&["--churn", "-c", "2", "-n", "50", &addr]);
    assert_eq!(run.code, 0, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert!(run.stdout.contains("conns     50 in"), "{}", run.stdout);
    assert!(run.stdout.contains("errors    none"), "{}", run.stdout);
    assert!(wait_until(DEADLINE, || seen.lines.load(Ordering::SeqCst) == 50));
}

#[test]
fn churn_refuses_what_does_not_apply() {
    for args in [
        &["--churn", "udp://127.0.0.1:9"][..],
        &["--churn", "--framing", "crlf", "127.0.0.1:9"][..],
        &["--churn", "--rate", "100", "127.0.0.1:9"][..],
        &["--churn", "--pipeline", "4", "127.0.0.1:9"][..],
    ] {
        let run = bench(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
}
