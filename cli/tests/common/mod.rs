//! Helpers shared by the integration tests: servers on threads, bounded
//! waits, the CLI binary as a child process, and temporary directories for
//! Unix socket paths.
//!
//! Every wait here is bounded by a deadline; nothing sleeps to synchronise
//! (short sleeps only inside polling loops).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockserv::{Builder, Endpoint, ShutdownHandle, Strategy};

/// The generous deadline for anything that should happen "at once" on a
/// noisy, shared machine.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The strategies every "each mode" test runs, with small explicit sizes.
pub fn strategies() -> [Strategy; 4] {
    [
        Strategy::Sequential,
        Strategy::Threads,
        Strategy::Pool {
            workers: 4,
            queue: 16,
        },
        Strategy::EventLoops { loops: 2 },
    ]
}

/// Polls `condition` until it holds or `deadline` passes; true if it held.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True if this machine can bind an IPv6 loopback socket.
pub fn have_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A server running `serve_forever` on its own thread.
///
/// Dropping it forces a stop (so a failing test does not leave a server
/// behind) and waits a bounded time for the thread.
pub struct Running {
    pub endpoint: Endpoint,
    pub endpoints: Vec<Endpoint>,
    pub handle: ShutdownHandle,
    pub join: Option<JoinHandle<Result<(), sockserv::Error>>>,
}

/// Binds `builder` and runs `serve_forever` on a new thread.
pub fn serve(builder: Builder) -> Running {
    let server = builder.bind().expect("bind the server");
    let endpoint = server.local_endpoint().clone();
    let endpoints = server.local_endpoints().to_vec();
    let handle = server.shutdown_handle();
    let join = std::thread::Builder::new()
        .name("test-serve-forever".into())
        .spawn(move || server.serve_forever())
        .expect("spawn the serving thread");
    Running {
        endpoint,
        endpoints,
        handle,
        join: Some(join),
    }
}

/// The same as [`serve`], as the tuple (endpoint, handle, thread).
pub fn start(
    builder: Builder,
) -> (
    Endpoint,
    ShutdownHandle,
    JoinHandle<Result<(), sockserv::Error>>,
) {
    let mut r = serve(builder);
    let join = r.join.take().expect("fresh server");
    (r.endpoint.clone(), r.handle.clone(), join)
}

impl Running {
    /// Calls `shutdown()` on a helper thread and waits at most `limit` for
    /// it to return. Returns how long it took, or `None` if it did not
    /// return in time (the server is then forced on drop).
    pub fn shutdown_within(&mut self, limit: Duration) -> Option<Duration> {
        let handle = self.handle.clone();
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            handle.shutdown();
            let _ = tx.send(started.elapsed());
        });
        let took = rx.recv_timeout(limit).ok()?;
        let join = self.join.take().expect("server thread");
        assert!(
            wait_until(DEADLINE, || join.is_finished()),
            "serve_forever thread still running after shutdown() returned"
        );
        join.join()
            .expect("the serving thread panicked")
            .expect("serve_forever returned an error");
        Some(took)
    }

    /// Shuts down (bounded by [`DEADLINE`]) and checks serve_forever's result.
    pub fn stop(mut self) -> Duration {
        self.shutdown_within(DEADLINE)
            .expect("shutdown() did not return within the deadline")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(join) = self.join.take() {
            self.handle.force();
            // Bounded: a wedged server thread is left behind rather than
            // hanging the test binary.
            if wait_until(DEADLINE, || join.is_finished()) {
                let _ = join.join();
            }
        }
    }
}

/// A unique, empty directory under the system temp dir, removed on drop.
/// Short enough for Unix socket paths (108 bytes).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("sockserv-t-{}-{}-{}", std::process::id(), n, tag));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The CLI binary built by cargo for the integration tests.
pub fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockserv")
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs the CLI with `args` to completion (killed after `limit`),
/// with stdin empty.
pub fn run_cli(args: &[&str], limit: Duration) -> Finished {
    run_with_input(Command::new(cli_bin()).args(args), None, limit)
}

/// Runs `cmd` to completion, feeding `input` on stdin, killing it if it
/// runs longer than `limit` (then panics).
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Finished {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the command");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.map(<[u8]>::to_vec);
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        if let Some(data) = input {
            let _ = stdin.write_all(&data);
        }
        drop(stdin);
    });
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    let status = wait_deadline(&mut child, limit);
    let _ = feeder.join();
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
    };
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Reads a pipe to its end on a thread.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` to exit, at most `limit`.
pub fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to a child process.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Sends `signal` to a process by id (one we spawned and still hold).
pub fn signal_pid(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// A child process (the CLI server or the seed's Python server) that is
/// terminated on drop: SIGTERM, then SIGKILL after a deadline, then reaped.
pub struct ChildGuard {
    child: Option<Child>,
    stdout_lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    /// The endpoints the server reported as `listening ENDPOINT`.
    pub listening: Vec<String>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr captured (stdin closed).
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the child process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        ChildGuard {
            child: Some(child),
            stdout_lines: rx,
            stderr: Arc::clone(&stderr),
            stderr_thread: Some(stderr_thread),
            listening: Vec::new(),
        }
    }

    /// Starts `sockserv serve ARGS...` and waits (bounded) for `listeners`
    /// lines `listening ENDPOINT` on its stdout.
    pub fn serve(args: &[&str], listeners: usize) -> ChildGuard {
        let mut cmd = Command::new(cli_bin());
        cmd.arg("serve").args(args);
        let mut guard = ChildGuard::spawn(&mut cmd);
        guard.wait_listening(listeners, DEADLINE);
        guard
    }

    /// Reads stdout until `n` `listening ENDPOINT` lines came (panics after
    /// `limit`, with the child's stderr in the message).
    pub fn wait_listening(&mut self, n: usize, limit: Duration) {
        let end = Instant::now() + limit;
        while self.listening.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(ep) = line.strip_prefix("listening ") {
                        self.listening.push(ep.trim().to_string());
                    }
                }
                Err(_) => panic!(
                    "expected {n} `listening` lines within {limit:?}, got {:?}; stderr: {}",
                    self.listening,
                    self.stderr()
                ),
            }
        }
    }

    /// The admin endpoint's URL (`http://HOST:PORT`) from the `admin`
    /// line printed after the `listening` lines (panics after a deadline).
    pub fn admin_url(&self) -> String {
        let out = self.read_stdout_until(DEADLINE, |s| s.contains("admin http://"));
        out.lines()
            .find_map(|l| l.strip_prefix("admin "))
            .unwrap_or_else(|| panic!("no admin line in {out:?}"))
            .trim()
            .to_string()
    }

    /// Everything the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Lines the child printed on stdout after the `listening` lines, as
    /// far as they arrived within `limit`, until `done` says enough.
    pub fn read_stdout_until(&self, limit: Duration, mut done: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        let mut all = String::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    all.push_str(&line);
                    all.push('\n');
                    if done(&all) {
                        return all;
                    }
                }
                Err(_) => return all,
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// True while the process has not exited.
    #[allow(dead_code)]
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills and reaps the child now, without the drain a drop allows.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` and waits (bounded) for the exit; returns the status and
    /// the complete stderr. Panics (after SIGKILL) if it does not exit.
    pub fn terminate_with(&mut self, sig: libc::c_int, limit: Duration) -> (ExitStatus, String) {
        signal(self.child.as_ref().expect("child still running"), sig);
        self.wait_exit(limit)
    }

    /// Waits (bounded) for the exit, with no signal sent; returns the
    /// status and the complete stderr. Panics (after SIGKILL) if it does
    /// not exit.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("child still running");
        let status = wait_deadline(&mut child, limit);
        let status = match status {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the child did not exit within {limit:?}; stderr: {}",
                    self.stderr()
                );
            }
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        (status, self.stderr())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_deadline(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
/// read back, released). Only for servers that cannot report their port.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The root of the repository (the workspace; this crate is its `cli/`).
pub fn repo_dir() -> PathBuf {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
    cli.parent().unwrap_or(cli).to_path_buf()
}

/// GET `path` from an HTTP endpoint at `base` (`http://HOST:PORT`, the
/// admin endpoint): the status code and the body.
#[allow(dead_code)]
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}
