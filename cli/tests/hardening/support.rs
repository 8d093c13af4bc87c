//! Helpers of the hardening tests: the CLI server as a child process,
//! /proc readings (threads, descriptors, RSS, CPU time), many non-blocking
//! sockets at once, a ping-pong latency probe, and the lock that keeps the
//! heavy scenarios from running at the same time.
//!
//! Every wait here is bounded by a deadline. The only sleeps are inside
//! polling loops and measurement windows, never to synchronise.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The deadline for anything that should happen "at once".
pub const DEADLINE: Duration = Duration::from_secs(10);

static HEAVY: Mutex<()> = Mutex::new(());

/// Every scenario of this binary takes this lock: the libtest harness runs
/// tests in parallel, and thousands of sockets and threads from two
/// scenarios at once would make timings (p99, CPU) meaningless.
pub fn exclusive() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Raises this process's descriptor limit (soft, up to the hard limit) to
/// at least `want`; panics with a clear message if the hard limit is lower.
/// Children started afterwards inherit it.
pub fn raise_nofile(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read a valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < want as libc::rlim_t {
            r.rlim_cur = (want as libc::rlim_t).min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
    }
    assert!(
        r.rlim_cur >= want as libc::rlim_t,
        "this test needs {want} descriptors; RLIMIT_NOFILE is {} (hard {}): raise it (ulimit -Hn)",
        r.rlim_cur,
        r.rlim_max
    );
}

/// Polls a condition with a deadline (shared with the other test files).
pub use crate::common::wait_until;
use crate::common::ChildGuard;

// ---------------------------------------------------------------------------
// The CLI server as a child process

/// The `sockserv` binary to run: `SOCKSERV_BIN` if set (e.g. a release
/// build for heavier local runs), else the one cargo built for the tests.
/// A relative `SOCKSERV_BIN` is taken from the repository root, where the
/// command is typed (`SOCKSERV_BIN=target/release/sockserv cargo test ...`),
/// not from `cli/`, where cargo runs the tests.
pub fn sockserv_bin() -> String {
    match std::env::var("SOCKSERV_BIN") {
        Ok(bin) => crate::common::repo_dir()
            .join(bin)
            .to_string_lossy()
            .into_owned(),
        Err(_) => env!("CARGO_BIN_EXE_sockserv").to_string(),
    }
}

/// `sockserv serve ARGS tcp://127.0.0.1:0` running as a child process
/// (a `ChildGuard` with the address it listens on); killed and reaped on
/// drop.
pub struct CliServer {
    guard: ChildGuard,
    pub addr: SocketAddr,
}

impl CliServer {
    /// Starts the server, optionally with a descriptor limit of its own
    /// (set with setrlimit between fork and exec), and waits for its
    /// `listening` line.
    pub fn start(args: &[&str], nofile: Option<u64>) -> CliServer {
        let mut cmd = Command::new(sockserv_bin());
        cmd.arg("serve").args(args).arg("tcp://127.0.0.1:0");
        if let Some(n) = nofile {
            // SAFETY: only async-signal-safe calls (setrlimit) run between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut guard = ChildGuard::spawn(&mut cmd);
        guard.wait_listening(1, DEADLINE);
        let addr = guard.listening[0]
            .strip_prefix("tcp://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not a TCP address: {:?}", guard.listening));
        CliServer { guard, addr }
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        self.guard.alive()
    }

    pub fn stderr(&self) -> String {
        self.guard.stderr()
    }

    /// Sends `sig`; returns the exit status and how long the exit took.
    /// Panics (after a SIGKILL) if it did not exit within `limit`.
    pub fn signal_and_wait(&mut self, sig: libc::c_int, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let (status, _) = self.guard.terminate_with(sig, limit);
        (status, started.elapsed())
    }
}

impl Drop for CliServer {
    fn drop(&mut self) {
        self.guard.kill();
    }
}

// ---------------------------------------------------------------------------
// /proc

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Threads of a process (`Threads:` in /proc/PID/status).
pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// Resident memory of a process in KiB (`VmRSS:`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Open descriptors of a process (entries of /proc/PID/fd).
pub fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime 14 and stime 15 (1-based) => indexes 11 and 12 here.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

/// Maxima of a process's threads, descriptors and RSS, sampled on a thread
/// every few milliseconds until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<Samples>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Samples {
    pub max_threads: u64,
    pub max_fds: u64,
    pub max_rss_kib: u64,
    pub count: u64,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let join = std::thread::spawn(move || {
            let mut s = Samples::default();
            while !flag.load(Ordering::SeqCst) {
                if let Some(t) = threads(pid) {
                    s.max_threads = s.max_threads.max(t);
                }
                if let Some(n) = fds(pid) {
                    s.max_fds = s.max_fds.max(n);
                }
                if let Some(r) = rss_kib(pid) {
                    s.max_rss_kib = s.max_rss_kib.max(r);
                }
                s.count += 1;
                std::thread::sleep(every);
            }
            s
        });
        Sampler {
            stop,
            join: Some(join),
        }
    }

    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        self.join
            .take()
            .expect("sampler")
            .join()
            .expect("sampler thread")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Clients

/// A connected, line-framed ping-pong client.
pub struct PingPong {
    s: TcpStream,
    buf: Vec<u8>,
    n: u64,
}

impl PingPong {
    pub fn connect(addr: SocketAddr) -> io::Result<PingPong> {
        let s = TcpStream::connect_timeout(&addr, DEADLINE)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(PingPong {
            s,
            buf: Vec::new(),
            n: 0,
        })
    }

    /// One round trip; its latency, or an error describing what failed.
    pub fn once(&mut self) -> Result<Duration, String> {
        self.n += 1;
        let msg = format!("ping {}\n", self.n);
        let t = Instant::now();
        (&self.s)
            .write_all(msg.as_bytes())
            .map_err(|e| format!("ping {}: write: {e}", self.n))?;
        self.buf.clear();
        let mut chunk = [0u8; 256];
        while !self.buf.ends_with(b"\n") {
            match (&self.s).read(&mut chunk) {
                Ok(0) => return Err(format!("ping {}: the server closed", self.n)),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => return Err(format!("ping {}: read: {e}", self.n)),
            }
        }
        let took = t.elapsed();
        if self.buf != msg.as_bytes() {
            return Err(format!(
                "ping {}: got {:?}",
                self.n,
                String::from_utf8_lossy(&self.buf)
            ));
        }
        Ok(took)
    }
}

/// Runs ping-pong round trips on a thread until `stop` is set; returns the
/// latencies (or the first failure).
pub fn ping_pong_thread(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<Duration>, String>> {
    std::thread::spawn(move || {
        let mut c = PingPong::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let mut lat = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            lat.push(c.once()?);
        }
        Ok(lat)
    })
}

/// The `p`-th percentile (0..=100) of some latencies.
pub fn percentile(lat: &[Duration], p: f64) -> Duration {
    let mut v = lat.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts a non-blocking TCP connect to `addr`.
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock.into())
}

/// poll(2) over `fds`; returns how many have events. EINTR counts as none.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> usize {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    n.max(0) as usize
}

pub fn pollfd(s: &TcpStream, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: s.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// What a non-blocking read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// Read everything available; the connection is still open.
    Open,
    /// The peer closed cleanly (end of stream).
    Eof,
    /// The connection failed (reset, ...).
    Failed(io::ErrorKind),
}

/// Reads everything available from a non-blocking socket into `buf`.
pub fn drain_nonblocking(s: &TcpStream, buf: &mut Vec<u8>) -> Drained {
    let mut chunk = [0u8; 4096];
    loop {
        match (&*s).read(&mut chunk) {
            Ok(0) => return Drained::Eof,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Drained::Failed(e.kind()),
        }
    }
}

/// A filter in front of the panic hook that hides panics whose message
/// contains `marker` (the deliberate ones of a test) and passes every other
/// panic (an assertion failing in a parallel test) to the previous hook.
pub fn hide_panics_containing(marker: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.contains(marker) {
                previous(info);
            }
        }));
    });
}
