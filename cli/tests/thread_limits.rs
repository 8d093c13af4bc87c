//! Issue 11, defect 9: values `--workers` accepts must never abort or hang
//! the server. A thread that cannot start (here: a 4 GB address-space
//! limit, which binds root too) is a one-line error and exit code 1,
//! before anything listens.

use std::process::Command;

fn serve_limited(mode_args: &str) -> (Option<i32>, String, String) {
    let bin = env!("CARGO_BIN_EXE_sockserv");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 4000000; exec timeout 60 {bin} serve {mode_args} tcp://127.0.0.1:0"
        ))
        .output()
        .expect("sh runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_failure(mode_args: &str) {
    let (code, stdout, stderr) = serve_limited(mode_args);
    eprintln!("{mode_args}: exit {code:?}, stderr {stderr:?}");
    assert_eq!(code, Some(1), "{mode_args}: exit code (stderr {stderr:?})");
    assert!(
        !stdout.contains("listening"),
        "{mode_args}: it listened before failing: {stdout:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{mode_args}: not one line: {stderr:?}");
    assert!(
        lines[0].starts_with("sockserv: cannot start the ") && lines[0].contains("threads"),
        "{mode_args}: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{mode_args}: {stderr:?}");
}

#[test]
fn too_many_pool_workers_is_a_one_line_error() {
    assert_one_line_failure("--mode pool --workers 100000");
}

#[test]
fn too_many_event_loops_is_a_one_line_error() {
    assert_one_line_failure("--mode async --workers 20000");
}

/// Issue 11, defect 10: in threads mode, connections that find no thread
/// are logged once per burst, not once each, and the server still stops
/// at once on SIGTERM.
#[test]
fn thread_start_failures_are_logged_once_per_burst() {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let bin = env!("CARGO_BIN_EXE_sockserv");
    // 1.5 GB of address space: a few hundred 8 MiB thread stacks.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 1500000; exec {bin} serve --mode threads --handler echo tcp://127.0.0.1:0"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening tcp://")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .to_string();
    // Hold 1,000 connections open: far more than the threads that fit.
    let mut held = Vec::new();
    let start = Instant::now();
    while held.len() < 1_000 && start.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = TcpStream::connect(&addr) {
            held.push(s);
        }
    }
    assert!(held.len() >= 500, "only {} connections", held.len());
    // SIGTERM: the server stops within seconds although its log is busy.
    let t = Instant::now();
    // SAFETY: sends a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(held);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let failures = stderr
        .lines()
        .filter(|l| l.contains("cannot start a thread"))
        .count();
    eprintln!(
        "threads under a 1.5 GB limit: {failures} log line(s) about thread failures; \
         stopped in {:?}",
        t.elapsed()
    );
    assert!(status.is_some(), "the server did not stop within 15 s");
    assert!(
        (1..=5).contains(&failures),
        "{failures} lines about thread failures (once per burst expected): {stderr}"
    );
}
