//! The deployment recipes of docs/DEPLOY.md, black-box: a drain a load
//! balancer can follow (`--shutdown-delay`: not ready at once, serving on
//! for the delay, then the drain) and a rolling restart of three instances
//! behind a real HAProxy (PROXY v2, health checks on each instance's
//! `/readyz`) under load, with no client error end to end.
//!
//! Needs `haproxy` (Debian package haproxy; `scripts/deps` installs it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::load::Load;
use common::{cli_bin, free_port, http_get, wait_until, ChildGuard, TempDir, DEADLINE};

/// `--shutdown-delay 1s --admin`: after SIGTERM /readyz is 503 at once and
/// STATUS= says so, while new connections are still accepted and served
/// and a kept-alive one goes on; after the delay the drain ends the kept
/// connection cleanly and the process exits 0.
#[test]
fn shutdown_delay_fails_readiness_first_and_serves_on() {
    let dir = TempDir::new("delay");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut cmd = Command::new(cli_bin());
    cmd.args([
        "serve",
        "--handler",
        "upper",
        "--framing",
        "line",
        "--admin",
        "127.0.0.1:0",
        "--shutdown-delay",
        "1s",
        "tcp://127.0.0.1:0",
    ])
    .env("NOTIFY_SOCKET", &notify_path);
    let mut server = ChildGuard::spawn(&mut cmd);
    server.wait_listening(1, DEADLINE);
    let admin = server.admin_url();
    let addr: SocketAddr = server.listening[0]
        .trim_start_matches("tcp://")
        .parse()
        .unwrap();
    assert_eq!(http_get(&admin, "/readyz").0, 200);
    let ask = |s: &mut TcpStream, reader: &mut BufReader<TcpStream>, what: &str| {
        s.write_all(format!("{what}\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut kept_reader = BufReader::new(kept.try_clone().unwrap());
    assert_eq!(ask(&mut kept, &mut kept_reader, "before"), "BEFORE\n");

    common::signal_pid(server.id(), libc::SIGTERM);
    let signalled = Instant::now();
    assert!(
        wait_until(Duration::from_millis(300), || http_get(&admin, "/readyz").0
            == 503),
        "/readyz not 503 within 300 ms of SIGTERM"
    );
    let not_ready_after = signalled.elapsed();
    let mut status = String::new();
    let got_status = wait_until(DEADLINE, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            status.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        status.contains("STATUS=not ready")
    });
    assert!(got_status, "no STATUS=not ready: {status:?}");
    // New connections during the delay: accepted and served.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(700) && served < 1_000 {
        let mut s = TcpStream::connect(addr).expect("connect during the delay");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(ask(&mut s, &mut r, "during"), "DURING\n");
        served += 1;
    }
    assert!(served > 0, "no connection served during the delay");
    assert_eq!(ask(&mut kept, &mut kept_reader, "kept"), "KEPT\n");
    assert_eq!(http_get(&admin, "/readyz").0, 503, "still not ready");

    let (exit, stderr) = server.wait_exit(DEADLINE);
    let took = signalled.elapsed();
    assert!(exit.success(), "exit {exit:?}; stderr: {stderr}");
    assert!(
        took >= Duration::from_secs(1),
        "exited after {took:?}, inside the 1 s delay"
    );
    // The drain ended the kept connection with a clean end of stream.
    let mut rest = Vec::new();
    let end = kept_reader.read_to_end(&mut rest);
    assert!(
        end.is_ok() && rest.is_empty(),
        "kept connection: {end:?} {rest:?}"
    );
    println!(
        "shutdown delay 1 s: /readyz 503 after {not_ready_after:?}; {served} new connections served \
         during the delay; exit 0 after {took:?}"
    );
}

/// One instance behind HAProxy: PROXY v2 from the balancer only, its
/// `/readyz` on a fixed admin port for the health check.
fn instance(port: u16, admin: u16) -> ChildGuard {
    ChildGuard::serve(
        &[
            "--handler",
            "upper",
            "--framing",
            "line",
            "--proxy-protocol",
            "v2",
            "--proxy-from",
            "127.0.0.1/32",
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--shutdown-delay",
            "500ms",
            "--drain-timeout",
            "5s",
            &format!("tcp://127.0.0.1:{port}"),
        ],
        1,
    )
}

/// HAProxy's view of server `name` of backend `be` (`UP`, `DOWN`, ...),
/// from `show stat` on its stats socket.
fn haproxy_status(sock: &std::path::Path, name: &str) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"show stat\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = header.iter().position(|h| *h == "status")?;
    lines.find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.first() == Some(&"be") && f.get(1) == Some(&name))
            .then(|| f.get(col).map(|s| s.to_string()))?
    })
}

/// Three instances behind a real HAProxy (PROXY v2, `/readyz` checks every
/// 100 ms, down at the first failure), 50 churning and 100 kept-alive
/// clients through HAProxy, while each instance in turn gets SIGTERM,
/// fails its check during the 500 ms shutdown delay, drains, exits 0 and
/// is started again on the same port once it has exited: 0 client errors.
/// HAProxy is told not to retry (`retries 0`): a connection it sent to an
/// instance that refused would reach the client as an error, so the test
/// sees what the delay spares the clients (without it, and with retries
/// off, the churning clients lose replies).
#[test]
fn rolling_restart_behind_haproxy_loses_nothing() {
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is not installed (scripts/deps installs it)"
    );
    let dir = TempDir::new("roll");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut instances: Vec<ChildGuard> = ports.iter().map(|&(p, a)| instance(p, a)).collect();
    let front = free_port();
    let stats = dir.join("haproxy.sock");
    let mut cfg = format!(
        "global\n  maxconn 4000\n  stats socket {} mode 600 level admin\n\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
         retries 0\n\n\
         frontend fe\n  bind 127.0.0.1:{front}\n  default_backend be\n\n\
         backend be\n  balance roundrobin\n  option httpchk\n  \
         http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost\n  \
         http-check expect status 200\n  \
         default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1\n",
        stats.display()
    );
    for (i, (p, a)) in ports.iter().enumerate() {
        cfg.push_str(&format!(
            "  server s{i} 127.0.0.1:{p} send-proxy-v2 check port {a}\n"
        ));
    }
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null());
    let proxy = ChildGuard::spawn(&mut cmd);
    let up = |i: usize| haproxy_status(&stats, &format!("s{i}")).is_some_and(|s| s == "UP");
    assert!(
        wait_until(DEADLINE, || (0..3).all(up)),
        "HAProxy did not see the three instances up; its stderr: {}",
        proxy.stderr()
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], front));
    let load = Load::start(addr, 50, 100);
    let began = Instant::now();
    let mut timings = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        common::signal_pid(instances[i].id(), libc::SIGTERM);
        assert!(
            wait_until(DEADLINE, || !up(i)),
            "HAProxy did not take s{i} out"
        );
        let out_after = t.elapsed();
        let (status, stderr) = instances[i].wait_exit(Duration::from_secs(15));
        assert!(status.success(), "s{i} exit {status:?}; stderr: {stderr}");
        let exited = t.elapsed();
        let (p, a) = ports[i];
        instances[i] = instance(p, a);
        assert!(
            wait_until(DEADLINE, || up(i)),
            "HAProxy did not see s{i} up again"
        );
        timings.push((out_after, exited, t.elapsed()));
        assert!(
            load.wait_replies(1_000, DEADLINE),
            "the load stalled after s{i}: {}",
            load.counts.summary()
        );
    }
    load.finish(&format!(
        "rolling restart of 3 instances behind HAProxy in {:?} under 50 churning + 100 kept-alive \
         clients; per instance (out of HAProxy, exited 0, up again): {timings:?}",
        began.elapsed()
    ));
}

/// Several instances on one host with SO_REUSEPORT: two instances share a
/// port; under the same load, each in turn gets SIGTERM, drains, exits 0
/// and is started again on the port while the other serves. A plain drain
/// is what makes this safe: it first makes its socket drop new SYNs (those
/// clients retransmit and the kernel picks the other socket), then serves
/// its backlog, so its queue is empty when it closes.
#[test]
fn reuse_port_instances_restart_in_turn_losing_nothing() {
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let start = || {
        ChildGuard::serve(
            &[
                "--handler",
                "upper",
                "--framing",
                "line",
                "--reuse-port",
                &addr,
            ],
            1,
        )
    };
    let mut instances = [start(), start()];
    let load = Load::start(SocketAddr::from(([127, 0, 0, 1], port)), 50, 100);
    let began = Instant::now();
    let mut timings = Vec::new();
    for (i, instance) in instances.iter_mut().enumerate() {
        let t = Instant::now();
        let (status, stderr) = instance.terminate_with(libc::SIGTERM, Duration::from_secs(15));
        assert!(status.success(), "instance {i}: {status:?}; {stderr}");
        let exited = t.elapsed();
        *instance = start();
        timings.push((exited, t.elapsed()));
        assert!(
            load.wait_replies(1_000, DEADLINE),
            "the load stalled after instance {i}: {}",
            load.counts.summary()
        );
    }
    load.finish(&format!(
        "two SO_REUSEPORT instances restarted in turn in {:?} under 50 churning + 100 kept-alive \
         clients; per instance (exited 0, started again): {timings:?}",
        began.elapsed()
    ));
}
