//! Zero-downtime binary upgrade, both ends of it.
//!
//! The old process, at SIGUSR2 ([`Upgrader::start`]): starts the binary
//! now on disk at the path it was itself started from ([`Program`],
//! resolved at start-up: `/proc/self/exe` would still name the old file
//! after an in-place deploy) with the same arguments and its listening
//! sockets inherited in the `LISTEN_FDS` / `LISTEN_FDNAMES` format, so the
//! successor takes them through `sockserv::activation` exactly as it takes
//! a service manager's. The environment also carries the versioned
//! handoff, `SOCKSERV_UPGRADE=1:<fd>[:<admin fd>]`: protocol version 1, the
//! write end of a readiness pipe at `<fd>` (right after the listeners) and,
//! with `--admin`, the admin endpoint's socket (so a health check on a
//! fixed port is answered throughout; the old process stops serving it at
//! the handoff). The old
//! process keeps accepting until the successor writes `READY=1\n` on it,
//! then hands off ([`sockserv::ShutdownHandle::hand_off`]: stop accepting,
//! drain, leave the sockets and their queues to the successor) and exits 0
//! once drained. A successor that exits, closes the pipe or is not ready
//! within `--upgrade-timeout` is stopped (SIGTERM, then SIGKILL) and the
//! old process serves on. One upgrade at a time.
//!
//! The successor ([`take_handoff`] at start-up, [`Readiness::ready`] once
//! every listener serves): reads and removes the variable (its own children
//! never see it, nor the `LISTEN_*` ones), then reports readiness.
//!
//! `sockserv upgrade --pid PID` asks with `sigqueue` (so the request carries
//! its sender) and is answered the same way: [`REPLY_DONE`] with the
//! successor's pid, or [`REPLY_FAILED`] with a reason code. A plain
//! `kill -USR2` gets no answer: its sender is usually a shell, which a
//! signal it does not expect would kill.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sockserv::activation::{InheritedSocket, LISTEN_FDS_START};
use sockserv::admin::AdminHandle;
use sockserv::{Endpoint, ShutdownHandle};

use crate::error::CliError;

/// The environment variable of the handoff: `VERSION:FD`.
pub(crate) const HANDOFF_VAR: &str = "SOCKSERV_UPGRADE";
/// The handoff protocol this binary speaks: sockets as `LISTEN_FDS`, and a
/// pipe on which the successor writes [`READY`].
const HANDOFF_VERSION: u32 = 1;
/// What the successor writes once every listener is serving.
const READY: &[u8] = b"READY=1\n";

/// The answer to a `sockserv upgrade` that succeeded; the signal's value
/// is the successor's pid.
pub(crate) const REPLY_DONE: libc::c_int = libc::SIGUSR1;
/// The answer to one that failed; the value is one of the codes below.
pub(crate) const REPLY_FAILED: libc::c_int = libc::SIGUSR2;
/// The successor failed, exited, or was not ready in time.
pub(crate) const FAILED_SUCCESSOR: usize = 1;
/// An upgrade is already in progress.
pub(crate) const FAILED_BUSY: usize = 2;
/// The process is stopping: nothing to hand over.
pub(crate) const FAILED_STOPPING: usize = 3;
/// No listener to hand over (`--inetd`).
pub(crate) const FAILED_NO_LISTENER: usize = 4;

/// Variables of this process that must not reach the successor as they
/// are: the handoff sets its own, and a watchdog pid would name this one.
const NOT_INHERITED: [&str; 5] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    HANDOFF_VAR,
    "WATCHDOG_PID",
];

/// The program an upgrade starts: the path this process was started from,
/// made absolute at start-up, and the same arguments.
pub(crate) struct Program {
    path: PathBuf,
    args: Vec<OsString>,
}

impl Program {
    /// Resolves `argv[0]` now, against the working directory and `PATH`:
    /// later the working directory or `PATH` may differ, and the file
    /// behind `/proc/self/exe` is the old one once a deploy replaced it.
    pub(crate) fn of_this_process() -> Program {
        let mut argv = std::env::args_os();
        let arg0 = argv.next().unwrap_or_default();
        let path = resolve(&arg0).unwrap_or_else(|| {
            // argv[0] names nothing on disk (a launcher set it): the file
            // this process runs from is the best guess left.
            let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| arg0.clone().into());
            tracing::warn!(
                "cannot find {:?} on disk; an upgrade will start {}",
                arg0,
                exe.display()
            );
            exe
        });
        Program {
            path,
            args: argv.collect(),
        }
    }
}

/// `argv[0]` as an absolute path: as given if it has a slash (relative to
/// the working directory), else the first executable file of that name on
/// `PATH`. Symbolic links are kept, not followed: a deploy that swaps a
/// link must be followed at the upgrade, not now.
fn resolve(arg0: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let cwd = std::env::current_dir().ok()?;
    if arg0.as_bytes().contains(&b'/') {
        // `components` drops the `.` of `./sockserv`; `..` is kept (only
        // the file system knows where it leads).
        return Some(cwd.join(arg0).components().collect());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| cwd.join(dir).join(arg0))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What an upgrade needs to know, fixed at start-up.
pub(crate) struct Settings {
    pub(crate) program: Program,
    /// How long the successor may take to report ready.
    pub(crate) timeout: Duration,
    /// How long a successor that is stopped gets to drain before SIGKILL.
    pub(crate) drain_timeout: Duration,
}

/// One listening socket to pass on.
pub(crate) struct Passed {
    /// The descriptor the server holds (open while it serves).
    pub(crate) fd: RawFd,
    pub(crate) name: Option<String>,
}

/// Runs upgrades for one `sockserv serve`, one at a time.
pub(crate) struct Upgrader {
    settings: Settings,
    /// In command-line order: the successor maps them by position.
    listeners: Vec<Passed>,
    servers: Vec<ShutdownHandle>,
    /// Set from the first stop signal on: no upgrade starts, and one under
    /// way is abandoned.
    leaving: Arc<AtomicBool>,
    /// The admin endpoint, if any: its socket is passed on too, and it
    /// stops at the handoff.
    admin: Arc<Mutex<Option<AdminHandle>>>,
    busy: AtomicBool,
    /// The thread that waits for a successor and hands off. The process
    /// must not end under it: a drain with nothing to drain ends at once,
    /// and the handoff's log line and answer would be lost.
    waiter: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Upgrader {
    pub(crate) fn new(
        settings: Settings,
        listeners: Vec<Passed>,
        servers: Vec<ShutdownHandle>,
        leaving: Arc<AtomicBool>,
        admin: Arc<Mutex<Option<AdminHandle>>>,
    ) -> Upgrader {
        Upgrader {
            settings,
            listeners,
            servers,
            leaving,
            admin,
            busy: AtomicBool::new(false),
            waiter: Mutex::new(None),
        }
    }

    fn stopping(&self) -> bool {
        self.leaving.load(Ordering::Acquire) || self.servers.iter().any(|h| h.is_requested())
    }

    /// Waits for an upgrade under way to end (it notices a stop within
    /// 100 ms, then stops its successor): called before the process exits,
    /// so neither a handoff's answer nor a successor to stop is left
    /// behind.
    pub(crate) fn finish(&self) {
        let waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waiter {
            let _ = w.join();
        }
    }

    /// At SIGUSR2, from the signal thread: starts the successor and a
    /// thread that waits for its readiness. `requester` is the pid of a
    /// `sockserv upgrade` to answer.
    pub(crate) fn start(self: &Arc<Self>, requester: Option<libc::pid_t>) {
        if self.stopping() {
            tracing::warn!("upgrade request ignored: this process is shutting down");
            reply(requester, REPLY_FAILED, FAILED_STOPPING);
            return;
        }
        if self.listeners.is_empty() {
            // --inetd: one connection, no listener a successor could take.
            tracing::warn!("upgrade request ignored: no listener to hand over (--inetd)");
            reply(requester, REPLY_FAILED, FAILED_NO_LISTENER);
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            tracing::warn!("upgrade request ignored: an upgrade is already in progress");
            reply(requester, REPLY_FAILED, FAILED_BUSY);
            return;
        }
        let (pid, ready) = match self.spawn() {
            Ok(started) => started,
            Err(e) => {
                tracing::error!(
                    "upgrade failed: cannot start {}: {}; still serving",
                    self.settings.program.path.display(),
                    crate::error::describe(&e)
                );
                self.busy.store(false, Ordering::Release);
                reply(requester, REPLY_FAILED, FAILED_SUCCESSOR);
                return;
            }
        };
        tracing::info!(
            "upgrade: started {} as pid {pid} with {} listener{}; serving until it is ready",
            self.settings.program.path.display(),
            self.listeners.len(),
            if self.listeners.len() == 1 { "" } else { "s" }
        );
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("sockserv-upgrade".into())
            .spawn(move || me.wait_ready(pid, ready, requester));
        if let Ok(waiter) = spawned {
            let mut slot = self.waiter.lock().unwrap_or_else(|p| p.into_inner());
            // A previous upgrade's waiter has ended (`busy` was clear).
            if let Some(done) = slot.replace(waiter) {
                let _ = done.join();
            }
        } else {
            tracing::error!("upgrade failed: no thread to wait for pid {pid}; still serving");
            stop_successor(pid, self.settings.drain_timeout);
            self.busy.store(false, Ordering::Release);
            reply(requester, REPLY_FAILED, FAILED_SUCCESSOR);
        }
    }

    /// Waits for the successor's `READY=1`; then hands off, else stops it.
    fn wait_ready(&self, pid: libc::pid_t, ready: OwnedFd, requester: Option<libc::pid_t>) {
        let outcome = self.await_ready(pid, &ready);
        drop(ready);
        match outcome {
            Ok(()) => {
                // The admin endpoint first: from here only the successor
                // answers on its socket (a health check must not meet this
                // process's 503 of a drain).
                let admin = self.admin.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(a) = admin {
                    a.stop();
                }
                // Every server is asked (no short cut at the first
                // refusal): a stop that raced in has begun on all of them
                // then, and they drain alike.
                let handed: Vec<bool> = self.servers.iter().map(ShutdownHandle::hand_off).collect();
                if handed.contains(&false) {
                    // A stop began between the check and here: the sockets
                    // may be filtered already; the successor cannot have them.
                    tracing::warn!(
                        "upgrade abandoned: this process is shutting down; stopping pid {pid}"
                    );
                    // The answer first: stopping the successor may take
                    // its whole drain, longer than `sockserv upgrade` waits.
                    reply(requester, REPLY_FAILED, FAILED_STOPPING);
                    stop_successor(pid, self.settings.drain_timeout);
                    return;
                }
                tracing::info!(
                    "upgrade: pid {pid} is serving; this process stops accepting, drains and exits"
                );
                super::life::notify(&format!(
                    "MAINPID={pid}\nSTATUS=upgraded: pid {pid} serves; pid {} drains",
                    std::process::id()
                ));
                reply(requester, REPLY_DONE, pid as usize);
                // `busy` stays set: this process hands over only once.
            }
            Err((why, reaped)) => {
                tracing::error!("upgrade failed: pid {pid} {why}; still serving");
                let code = if self.stopping() {
                    FAILED_STOPPING
                } else {
                    FAILED_SUCCESSOR
                };
                // The answer first: stopping the successor may take its
                // whole drain, longer than `sockserv upgrade` waits.
                reply(requester, REPLY_FAILED, code);
                if !reaped {
                    stop_successor(pid, self.settings.drain_timeout);
                }
                self.busy.store(false, Ordering::Release);
            }
        }
    }

    /// `Ok` once the successor wrote [`READY`]; else why not, and whether
    /// it has exited and been reaped already (its pid is then no longer
    /// ours to signal).
    fn await_ready(&self, pid: libc::pid_t, ready: &OwnedFd) -> Result<(), (String, bool)> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut got = Vec::new();
        loop {
            if self.stopping() {
                return Err(("was abandoned: this process is shutting down".into(), false));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err((
                    format!(
                        "was not ready within {:?} (--upgrade-timeout)",
                        self.settings.timeout
                    ),
                    false,
                ));
            }
            // Short waits, so a stop is noticed while waiting.
            let wait = (deadline - now).min(Duration::from_millis(100));
            let mut pfd = libc::pollfd {
                fd: ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
            if n <= 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            // SAFETY: reads into a valid buffer from our own pipe.
            let r = unsafe { libc::read(ready.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err((
                    format!("readiness pipe failed: {}", crate::error::describe(&e)),
                    false,
                ));
            }
            if r == 0 {
                return Err(match exit_status(pid, Duration::from_secs(1)) {
                    Some(status) => (format!("exited before it was ready ({status})"), true),
                    None => (
                        "closed its readiness pipe without reporting ready".into(),
                        false,
                    ),
                });
            }
            got.extend_from_slice(&buf[..r as usize]);
            if got.starts_with(READY) {
                return Ok(());
            }
            if got.len() >= READY.len() || !READY.starts_with(&got) {
                return Err((
                    format!(
                        "reported {:?} instead of READY=1",
                        String::from_utf8_lossy(&got)
                    ),
                    false,
                ));
            }
        }
    }

    /// Starts the successor: fork, then in the child only async-signal-safe
    /// calls (the parent is multithreaded: another thread may hold the
    /// allocator's lock) — everything the child needs is built before.
    fn spawn(&self) -> io::Result<(libc::pid_t, OwnedFd)> {
        let n = self.listeners.len();
        let ready_fd = LISTEN_FDS_START + n as RawFd;
        // Copies above every target descriptor (the listeners, the pipe,
        // the admin socket), so no dup2 in the child overwrites a source
        // it has yet to move.
        let floor = ready_fd + 2;
        let mut copies = Vec::new();
        for l in &self.listeners {
            copies.push(dup_above(l.fd, floor)?);
        }
        let (read_end, write_end) = pipe()?;
        let write_copy = dup_above(write_end.as_raw_fd(), floor)?;
        drop(write_end);
        let mut moves: Vec<(RawFd, RawFd)> = copies
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_raw_fd(), LISTEN_FDS_START + i as RawFd))
            .collect();
        moves.push((write_copy.as_raw_fd(), ready_fd));
        // The admin endpoint's socket, after the pipe.
        let admin_fd = ready_fd + 1;
        let admin_copy = match &*self.admin.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(a) => Some(dup_above(a.listener_fd().as_raw_fd(), floor)?),
            None => None,
        };
        let handoff = match &admin_copy {
            Some(c) => {
                moves.push((c.as_raw_fd(), admin_fd));
                format!("{HANDOFF_VERSION}:{ready_fd}:{admin_fd}")
            }
            None => format!("{HANDOFF_VERSION}:{ready_fd}"),
        };

        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| io::Error::other("an argument or variable holds a NUL"))
        };
        let path = cstr(self.settings.program.path.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for a in &self.settings.program.args {
            argv.push(cstr(a.as_bytes())?);
        }
        let names: Vec<&str> = self
            .listeners
            .iter()
            .map(|l| l.name.as_deref().filter(|n| !n.contains(':')).unwrap_or(""))
            .collect();
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            if NOT_INHERITED.iter().any(|n| k == *n) {
                continue;
            }
            let mut kv = std::os::unix::ffi::OsStringExt::into_vec(k);
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstr(&kv)?);
        }
        env.push(cstr(format!("LISTEN_FDS={n}").as_bytes())?);
        env.push(cstr(
            format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes(),
        )?);
        env.push(cstr(format!("{HANDOFF_VAR}={handoff}").as_bytes())?);
        // LISTEN_PID names the child, known only after the fork: the child
        // writes its pid into this buffer (its own copy of the page).
        const PID_PREFIX: &[u8] = b"LISTEN_PID=";
        let mut pid_entry = PID_PREFIX.to_vec();
        pid_entry.resize(PID_PREFIX.len() + 24, 0);
        let argv_ptrs: Vec<*const libc::c_char> = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(pid_entry.as_ptr().cast());
        envp.push(std::ptr::null());
        let pid_digits = pid_entry[PID_PREFIX.len()..].as_mut_ptr();

        // No signal handler may run in the child before exec (signal-hook's
        // would write into the pipe this process shares with it): block
        // them all around the fork; the child restores defaults first.
        // SAFETY: plain signal-mask calls on valid sigsets.
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            let pid = libc::fork();
            if pid == 0 {
                exec_child(path.as_ptr(), &argv_ptrs, &envp, pid_digits, &moves);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            pid
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // The copies close here: the child has its own.
        drop(copies);
        drop(write_copy);
        drop(admin_copy);
        Ok((pid, read_end))
    }
}

/// The child between fork and exec: async-signal-safe calls only, on data
/// built before the fork.
///
/// # Safety
/// Call only in the child of `fork`; the pointers must be the valid,
/// NULL-terminated arrays built for it.
unsafe fn exec_child(
    path: *const libc::c_char,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_digits: *mut u8,
    moves: &[(RawFd, RawFd)],
) -> ! {
    let mut pid = libc::getpid() as u32;
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for (k, d) in digits[i..].iter().enumerate() {
        *pid_digits.add(k) = *d;
    }
    *pid_digits.add(digits.len() - i) = 0;
    for &(from, to) in moves {
        // dup2 leaves the new descriptor without close-on-exec.
        if libc::dup2(from, to) < 0 {
            libc::_exit(126);
        }
    }
    // A fresh process's dispositions and mask: the default for every
    // signal (this process ignores some, and catches others with handlers
    // exec would reset anyway), none blocked.
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::execve(path, argv.as_ptr(), envp.as_ptr());
    libc::_exit(127);
}

/// A close-on-exec copy of `fd` at `floor` or above.
fn dup_above(fd: RawFd, floor: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor; checked below.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child's exit as a phrase, once it has exited (waiting at most
/// `limit`); `None` if it is still running.
fn exit_status(pid: libc::pid_t, limit: Duration) -> Option<String> {
    let end = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) {
                format!("exit status {}", libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                "stopped".to_string()
            });
        }
        if r < 0 || Instant::now() >= end {
            return None;
        }
        // No wait-for-a-child-with-a-timeout exists: look again shortly.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a successor that will not take over: SIGTERM (it drains whatever
/// it may have accepted), SIGKILL if it is still there after its drain
/// time; always reaped.
fn stop_successor(pid: libc::pid_t, drain: Duration) {
    // SAFETY: signals our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if exit_status(pid, drain + Duration::from_secs(2)).is_none() {
        tracing::warn!("pid {pid} did not stop after SIGTERM: SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: reaps our own child (it is dying: SIGKILL).
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

/// Answers a `sockserv upgrade` (nothing for a plain `kill`).
fn reply(requester: Option<libc::pid_t>, sig: libc::c_int, value: usize) {
    let Some(pid) = requester else { return };
    let val = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    // SAFETY: sigqueue has no memory-safety preconditions.
    if unsafe { libc::sigqueue(pid, sig, val) } < 0 {
        tracing::debug!(
            "cannot answer the upgrade request of pid {pid}: {}",
            io::Error::last_os_error()
        );
    }
}

/// Set when this process was started by an upgrade.
static SUCCESSOR: AtomicBool = AtomicBool::new(false);

/// What a process started by an upgrade was handed besides the sockets
/// of `LISTEN_FDS`.
pub(crate) struct Handoff {
    pub(crate) readiness: Readiness,
    /// The old process's admin endpoint socket, if it had one.
    pub(crate) admin: Option<std::net::TcpListener>,
}

/// The successor's end of the readiness pipe.
pub(crate) struct Readiness(OwnedFd);

impl Readiness {
    /// Tells the old process every listener is serving; it stops
    /// accepting and drains from here.
    pub(crate) fn ready(self) {
        let fd = self.0.as_raw_fd();
        // SAFETY: writes a constant buffer to our own pipe.
        let r = unsafe { libc::write(fd, READY.as_ptr().cast(), READY.len()) };
        if r != READY.len() as isize {
            tracing::warn!(
                "cannot report ready to the process that started this one: {}",
                io::Error::last_os_error()
            );
        } else {
            tracing::info!("upgrade: serving; the process that started this one drains");
        }
    }
}

/// At start-up, before anything reads the environment: the handoff of the
/// process that started this one by an upgrade, if any —
/// `SOCKSERV_UPGRADE=1:READY_FD[:ADMIN_FD]`. The variable is removed either
/// way. An unknown version or a bad descriptor is an error (the old
/// process then serves on).
pub(crate) fn take_handoff() -> Result<Option<Handoff>, CliError> {
    let Some(value) = std::env::var_os(HANDOFF_VAR) else {
        return Ok(None);
    };
    std::env::remove_var(HANDOFF_VAR);
    if sockserv::activation::listen_fds().is_none() {
        // Sockets meant for another process: so is the handoff.
        tracing::warn!("ignoring {HANDOFF_VAR}: LISTEN_PID does not name this process");
        return Ok(None);
    }
    let text = value.to_string_lossy();
    let bad = |why: &str| CliError::runtime(format!("{HANDOFF_VAR}={text}: {why}"));
    let mut fields = text.split(':');
    let version = fields.next().unwrap_or_default();
    if version.parse::<u32>().ok() != Some(HANDOFF_VERSION) {
        return Err(bad(&format!(
            "handoff version {version} is not the one this sockserv speaks ({HANDOFF_VERSION})"
        )));
    }
    let own = |field: Option<&str>, what: &str| -> Result<OwnedFd, CliError> {
        let fd: RawFd = field
            .and_then(|f| f.parse().ok())
            .filter(|&fd| fd > 2)
            .ok_or_else(|| bad(&format!("no {what} descriptor")))?;
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(bad(&format!("the {what} descriptor {fd} is not open")));
        }
        // SAFETY: the handoff gives this process the descriptor; nothing
        // else in it owns it. Close-on-exec, so no program it starts
        // inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let readiness = Readiness(own(fields.next(), "readiness")?);
    let admin = match fields.next() {
        None => None,
        Some(f) => {
            // Checked like any inherited socket: listening, TCP.
            let sock = sockserv::activation::InheritedSocket::from_fd(own(Some(f), "admin")?, None)
                .map_err(|e| bad(&e.to_string()))?;
            if !matches!(sock.endpoint(), Endpoint::Tcp(_)) {
                return Err(bad("the admin socket is not a TCP listener"));
            }
            Some(std::net::TcpListener::from(sock.into_fd()))
        }
    };
    SUCCESSOR.store(true, Ordering::Release);
    Ok(Some(Handoff { readiness, admin }))
}

/// In a successor with ADDRs on its command line: the inherited sockets,
/// one per ADDR in order (by position, never by address: two listeners
/// may share one), each checked against its ADDR. `None` when this process
/// was not started by an upgrade, or has no ADDR (then the inherited
/// sockets are served as socket activation's are).
pub(crate) fn inherited_for(addrs: &[Endpoint]) -> Result<Option<Vec<InheritedSocket>>, CliError> {
    if addrs.is_empty() || !is_successor() {
        return Ok(None);
    }
    let inherited = sockserv::activation::take_listeners().map_err(CliError::runtime)?;
    let mut inherited = in_order(inherited, addrs.iter().map(Some))?;
    // The predecessor bound these addresses itself (it had ADDRs too): a
    // Unix socket's file is this process's to remove at the end now.
    for s in &mut inherited {
        s.own_file();
    }
    Ok(Some(inherited))
}

/// True in a process an upgrade started (its handoff was taken).
pub(crate) fn is_successor() -> bool {
    SUCCESSOR.load(Ordering::Acquire)
}

/// The sockets an upgrade passed, one per listener of this process in its
/// order (by position, never by address: two listeners may share one),
/// each checked against its address where it has one.
pub(crate) fn in_order<'a>(
    inherited: Vec<InheritedSocket>,
    addrs: impl ExactSizeIterator<Item = Option<&'a Endpoint>>,
) -> Result<Vec<InheritedSocket>, CliError> {
    if inherited.len() != addrs.len() {
        return Err(CliError::runtime(format!(
            "the upgrade passed {} sockets for {} listeners",
            inherited.len(),
            addrs.len()
        )));
    }
    for (s, want) in inherited.iter().zip(addrs) {
        if let Some(want) = want.filter(|w| !same_listener(w, s.endpoint())) {
            return Err(CliError::runtime(format!(
                "the upgrade passed {} for {want}",
                s.endpoint()
            )));
        }
    }
    Ok(inherited)
}

/// True if `bound` can be the socket bound for `asked`: same transport,
/// and the same port (any, for port 0) or path.
fn same_listener(asked: &Endpoint, bound: &Endpoint) -> bool {
    match (asked, bound) {
        (Endpoint::Tcp(a), Endpoint::Tcp(b)) | (Endpoint::Udp(a), Endpoint::Udp(b)) => {
            a.port() == 0 || a.port() == b.port()
        }
        (Endpoint::Unix(a), Endpoint::Unix(b))
        | (Endpoint::UnixDgram(a), Endpoint::UnixDgram(b)) => Path::new(a) == Path::new(b),
        _ => false,
    }
}
