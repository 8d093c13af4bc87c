//! The admin endpoint on a real, serving server (tests/admin.rs checks it
//! on fabricated snapshots): the metrics of real traffic pass `promtool`,
//! `/readyz` turns 503 the moment a drain starts while `/healthz` stays
//! 200, and closed connections say how they ended.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{run_with_input, wait_until, ChildGuard, DEADLINE};
use sockserv::admin::AdminConfig;
use sockserv::frame::Framing;
use sockserv::handler::message_fn;
use sockserv::{DrainPolicy, Server, Strategy};

/// One test at a time: the last one counts this process's threads.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn get(base: &str, path: &str) -> (u16, String) {
    common::http_get(base, path)
}

fn serve_with_admin() -> (ChildGuard, String, String) {
    let server = ChildGuard::serve(
        &[
            "--handler",
            "echo",
            "--framing",
            "line",
            "--admin",
            "127.0.0.1:0",
            "tcp://127.0.0.1:0",
        ],
        1,
    );
    let admin = server.admin_url();
    let endpoint = server.listening[0].clone();
    (server, endpoint, admin)
}

#[test]
fn metrics_of_real_traffic_pass_promtool() {
    let _one = one_at_a_time();
    let (_server, endpoint, admin) = serve_with_admin();
    let addr = endpoint.trim_start_matches("tcp://").to_string();
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"one\ntwo\nthree\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for want in ["one\n", "two\n", "three\n"] {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, want);
    }
    let label = format!("listener=\"{endpoint}\"");
    let mut body = String::new();
    assert!(
        wait_until(DEADLINE, || {
            body = get(&admin, "/metrics").1;
            body.contains(&format!("sockserv_frames_decoded_total{{{label}}} 3"))
        }),
        "three frames not counted: {body}"
    );
    for want in [
        format!("sockserv_connections_accepted_total{{{label}}} 1"),
        format!("sockserv_connections_open{{{label}}} 1"),
        format!("sockserv_replies_sent_total{{{label}}} 3"),
        format!("sockserv_connections_refused_total{{{label},reason=\"limit\"}} 0"),
        "sockserv_drain_state 0".to_string(),
    ] {
        assert!(body.contains(&want), "no {want:?} in {body}");
    }
    let checked = run_with_input(
        Command::new("promtool").args(["check", "metrics"]),
        Some(body.as_bytes()),
        DEADLINE,
    );
    assert!(
        checked.status.success()
            && checked.stdout.trim().is_empty()
            && checked.stderr.trim().is_empty(),
        "promtool: {} {} {}",
        checked.status,
        checked.stdout,
        checked.stderr
    );
    // The open connection's row, with the kernel's view of it.
    let (status, conns) = get(&admin, "/api/connections");
    assert_eq!(status, 200);
    assert!(conns.contains("\"state\":\"established\""), "{conns}");
    assert!(conns.contains("\"rtt_us\""), "no TCP_INFO: {conns}");
    // It closes first: the closed list says so.
    drop(r);
    drop(c);
    let mut closed = String::new();
    assert!(
        wait_until(DEADLINE, || {
            closed = get(&admin, "/api/connections").1;
            closed.contains("\"ended\":\"client_closed\"")
        }),
        "no client_closed entry: {closed}"
    );
}

#[test]
fn readyz_fails_the_moment_the_drain_starts() {
    let _one = one_at_a_time();
    // A handler held mid-request keeps the drain going while we look.
    let release = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&release);
    let server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(Strategy::EventLoops { loops: 1 })
        .blocking(true)
        .framing(Framing::line())
        .drain(DrainPolicy::new().grace(Duration::from_secs(20)))
        .admin(AdminConfig::new("127.0.0.1:0"))
        .message(message_fn(move |m, reply| {
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while !r.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            reply.send(m)?;
            Ok(())
        }))
        .bind()
        .unwrap();
    let admin = server.admin_url().expect("an admin endpoint");
    let addr = server.local_endpoint().to_string();
    let handle = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve_forever());
    assert_eq!(get(&admin, "/readyz").0, 200);
    let mut c = TcpStream::connect(addr.trim_start_matches("tcp://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"held\n").unwrap();
    assert!(wait_until(DEADLINE, || handle.active_connections() == 1));
    handle.request();
    assert!(
        wait_until(DEADLINE, || get(&admin, "/readyz").0 == 503),
        "/readyz did not turn 503 at the drain"
    );
    assert_eq!(get(&admin, "/healthz").0, 200, "still serving: healthy");
    let (_, metrics) = get(&admin, "/metrics");
    assert!(metrics.contains("sockserv_drain_state 1"), "{metrics}");
    // The request in hand is answered, then the drain ends.
    release.store(true, Ordering::Relaxed);
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    assert_eq!(line, "held\n");
    assert!(serving.join().unwrap().is_ok());
}

/// Issue 10: a server whose bind fails after its threads started (here the
/// admin endpoint on an address it refuses) leaves no thread behind.
#[test]
fn a_bind_that_fails_late_leaves_no_thread() {
    let _one = one_at_a_time();
    // The engine's own threads (event loops and pool workers), by name:
    // other tests' helper threads come and go meanwhile.
    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("sockserv-loop") || name.starts_with("sockserv-worke"))
            .count()
    }
    let before = threads();
    let err = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(Strategy::Pool {
            workers: 8,
            queue: 8,
        })
        .admin(AdminConfig::new("192.0.2.1:0"))
        .message(sockserv::handlers::Echo)
        .bind()
        .expect_err("a non-loopback admin address without public is refused");
    assert!(err.to_string().contains("loopback"), "{err}");
    assert!(
        wait_until(DEADLINE, || threads() <= before),
        "threads: {} before, {} after the failed bind",
        before,
        threads()
    );
}
