//! A program per connection, the way `tcpserver` (ucspi-tcp), s6-tcpserver
//! and inetd run one: [`Exec`] is a stream handler that spawns a program
//! for each connection with the socket as its stdin and stdout.
//!
//! The program learns who it talks to from its environment:
//!
//! | variable | value |
//! | --- | --- |
//! | `PROTO` | `TCP`, `TCP6` (an IPv6 peer) or `UNIX` |
//! | `TCPLOCALIP`, `TCPLOCALPORT` | the server's address the connection arrived on |
//! | `TCPREMOTEIP`, `TCPREMOTEPORT` | the client's address |
//! | `TCPCONNNUM` | connections open from that client IP, this one included |
//! | `UNIXREMOTEUID`, `UNIXREMOTEGID`, `UNIXREMOTEPID` | the Unix-socket client's credentials (`SO_PEERCRED`) |
//! | `PROXY_AUTHORITY`, `PROXY_ALPN`, `PROXY_UNIQUE_ID` | the PROXY v2 TLVs 0x02, 0x01, 0x05, when the header has them |
//! | any `VAR` | the `VAR=value` pairs of the access rule that allowed the client |
//!
//! Behind a proxy speaking the PROXY protocol, the client is the one the
//! header names: `TCPREMOTEIP` and `TCPREMOTEPORT` are its address,
//! `TCPLOCALIP` and `TCPLOCALPORT` the address it connected to on the
//! proxy, `TCPCONNNUM` counts its connections, and the rules matched its
//! address. The server reads exactly the header off the socket, so the
//! program's stdin starts with the client's first byte.
//!
//! An IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) is reported
//! as `TCP` with its IPv4 address. Variables of these names inherited from
//! the server are removed, so a program never sees another connection's
//! values. A rule's variables are set first, so they cannot stand in for
//! the server's own; a TLV value with a NUL byte is not exported.
//!
//! What the program writes on stderr is logged a line at a time (warn
//! level) with the client's address; its exit status is logged once (info
//! level). The program runs in a process group of its own. When the server
//! drains, the group gets SIGTERM once; when the drain deadline passes (the
//! server cuts every socket), or 5 s after SIGTERM, it gets SIGKILL. The
//! program is always reaped: a server running programs leaves no zombie.
//!
//! ```no_run
//! use sockserv::{Exec, Server, Strategy};
//!
//! # fn main() -> Result<(), sockserv::Error> {
//! let server = Server::builder()
//!     .listen("tcp://127.0.0.1:7000")
//!     .strategy(Strategy::Threads)
//!     .stream(Exec::new("sh", ["-c", "echo \"hello $TCPREMOTEIP\"; exec cat"]))
//!     .bind()?;
//! server.serve_forever()
//! # }
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::conn::Connection;
use crate::handler::{HandlerResult, StreamHandler};
use crate::shutdown::StopLevel;

/// How long a program may take to exit after SIGTERM before SIGKILL (when
/// the drain deadline has not come first).
const KILL_AFTER: Duration = Duration::from_secs(5);

/// The longest wait between two checks on the program and the server.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Every variable [`Exec`] may set; each one not set for a connection is
/// removed from the program's environment.
const VARS: [&str; 12] = [
    "PROTO",
    "TCPLOCALIP",
    "TCPLOCALPORT",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPCONNNUM",
    "UNIXREMOTEUID",
    "UNIXREMOTEGID",
    "UNIXREMOTEPID",
    "PROXY_AUTHORITY",
    "PROXY_ALPN",
    "PROXY_UNIQUE_ID",
];

/// Runs a program for each connection, its stdin and stdout the socket
/// (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Exec {
    program: OsString,
    args: Vec<OsString>,
}

impl Exec {
    /// The program (looked up in `PATH` when it has no `/`) and its
    /// arguments.
    pub fn new<I, A>(program: impl Into<OsString>, args: I) -> Exec
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        Exec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The program's name as logged.
    fn name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

impl StreamHandler for Exec {
    fn handle(&self, conn: &mut Connection) -> HandlerResult {
        let peer = conn.peer_addr().to_string();
        let stdin: OwnedFd = conn.socket().try_clone()?.into();
        let stdout: OwnedFd = conn.socket().try_clone()?.into();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .process_group(0);
        for var in VARS {
            cmd.env_remove(var);
        }
        for (var, value) in conn.rule_env() {
            cmd.env(var, value);
        }
        for (var, value) in environment(conn) {
            cmd.env(var, value);
        }
        // The program gets a blocking socket, as any program expects of
        // its stdin and stdout. The flag belongs to the open socket, which
        // this connection shares: it is set back when the program is done.
        conn.socket().set_nonblocking(false)?;
        let spawned = cmd.spawn();
        // Closes this process's copies of the descriptors.
        drop(cmd);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                conn.socket().set_nonblocking(true)?;
                tracing::error!(peer = %peer, "cannot run {}: {e}", self.name());
                return Ok(());
            }
        };
        log_stderr(&mut child, &peer);
        let status = supervise(&mut child, conn);
        conn.socket().set_nonblocking(true)?;
        match status {
            Ok(status) => log_status(&self.name(), &peer, status),
            Err(e) => tracing::error!(peer = %peer, "cannot wait for {}: {e}", self.name()),
        }
        Ok(())
    }
}

/// The program's environment for this connection.
fn environment(conn: &Connection) -> Vec<(&'static str, OsString)> {
    let mut env: Vec<(&'static str, OsString)> = Vec::new();
    match conn.peer_addr() {
        Address::Inet(peer) => {
            let ip = peer.ip().to_canonical();
            env.push(("PROTO", if ip.is_ipv6() { "TCP6" } else { "TCP" }.into()));
            if let Address::Inet(local) = conn.local_addr() {
                env.push(("TCPLOCALIP", local.ip().to_canonical().to_string().into()));
                env.push(("TCPLOCALPORT", local.port().to_string().into()));
            }
            env.push(("TCPREMOTEIP", ip.to_string().into()));
            env.push(("TCPREMOTEPORT", peer.port().to_string().into()));
            env.push((
                "TCPCONNNUM",
                conn.connections_from_peer().to_string().into(),
            ));
        }
        Address::Unix(_) => {
            env.push(("PROTO", "UNIX".into()));
            if let Some((pid, uid, gid)) = peer_cred(conn.socket().as_raw_fd()) {
                env.push(("UNIXREMOTEUID", uid.to_string().into()));
                env.push(("UNIXREMOTEGID", gid.to_string().into()));
                env.push(("UNIXREMOTEPID", pid.to_string().into()));
            }
        }
    }
    if let Some(info) = conn.proxy() {
        use std::os::unix::ffi::OsStrExt;
        let tlvs = [
            ("PROXY_AUTHORITY", crate::ProxyInfo::TLV_AUTHORITY),
            ("PROXY_ALPN", crate::ProxyInfo::TLV_ALPN),
            ("PROXY_UNIQUE_ID", crate::ProxyInfo::TLV_UNIQUE_ID),
        ];
        for (var, kind) in tlvs {
            // The bytes as they are: an environment holds any but NUL.
            if let Some(value) = info.tlv(kind).filter(|v| !v.contains(&0)) {
                env.push((var, std::ffi::OsStr::from_bytes(value).to_os_string()));
            }
        }
    }
    env
}

/// The Unix-socket peer's pid, uid and gid.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_cred(fd: RawFd) -> Option<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid ucred and `len` its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some((cred.pid, cred.uid, cred.gid))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_cred(_fd: RawFd) -> Option<(i32, u32, u32)> {
    None
}

/// Logs what the program writes on stderr, a line at a time, from a
/// thread that ends when the last writer closes the pipe.
fn log_stderr(child: &mut Child, peer: &str) {
    let Some(pipe) = child.stderr.take() else {
        return;
    };
    let peer = peer.to_string();
    let spawned = std::thread::Builder::new()
        .name("sockserv-exec-stderr".into())
        .spawn(move || {
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                tracing::warn!(peer = %peer, "{}", line.trim_end_matches('\r'));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a thread for the program's stderr: {e}");
    }
}

/// Waits for the program, passing the server's stop on to it: SIGTERM at
/// the drain, SIGKILL when the connection is cut (or [`KILL_AFTER`] later).
fn supervise(child: &mut Child, conn: &Connection) -> std::io::Result<ExitStatus> {
    let group = child.id() as libc::pid_t;
    let mut termed: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if conn.is_forced() || termed.is_some_and(|t| t.elapsed() >= KILL_AFTER) {
            kill_group(group, libc::SIGKILL);
            return child.wait();
        }
        if termed.is_none() && conn.is_shutting_down() {
            kill_group(group, libc::SIGTERM);
            termed = Some(Instant::now());
        }
        // Wait for the next stop level, at most POLL_EVERY.
        let at = if termed.is_none() {
            StopLevel::Draining
        } else {
            StopLevel::Forced
        };
        let mut fds = [libc::pollfd {
            fd: conn.stop_fd(at),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd.
        unsafe {
            libc::poll(fds.as_mut_ptr(), 1, POLL_EVERY.as_millis() as libc::c_int);
        }
    }
}

/// Signals the program's process group (its children too).
fn kill_group(group: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the group is the
    // child's, which is not yet reaped, so the id cannot have been reused.
    unsafe {
        libc::kill(-group, sig);
    }
}

fn log_status(program: &str, peer: &str, status: ExitStatus) {
    if let Some(code) = status.code() {
        tracing::info!(peer = %peer, "{program} exited with code {code}");
    } else if let Some(sig) = status.signal() {
        tracing::info!(peer = %peer, "{program} killed by signal {sig}");
    }
}
