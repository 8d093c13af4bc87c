//! Telling a service manager how the server is doing: the `sd_notify`
//! protocol (systemd's `Type=notify`), without depending on systemd.
//!
//! A state is a datagram of `KEY=VALUE` lines sent to the Unix socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Without the variable every call does nothing and reports `Ok(false)`, so
//! a server can always call them.
//!
//! ```no_run
//! // After the listeners are open:
//! sockserv::notify::notify("READY=1\nSTATUS=serving tcp://127.0.0.1:7000")?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`, `"STATUS=serving"`, `"STOPPING=1"`,
/// `"WATCHDOG=1"`; several lines at once are allowed) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is not set.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = std::path::PathBuf::from(path);
    let bytes = path.as_os_str().as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` (the manager's
/// deadline), or `None` when no watchdog is asked for (the variable is
/// absent, zero, or `$WATCHDOG_PID` names another process).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
