//! `sockserv upgrade --pid PID`: asks a running `sockserv serve` for a
//! zero-downtime binary upgrade (what SIGUSR2 does) and waits for the
//! outcome, so a deploy script or `systemctl reload` learns whether the new
//! binary took over.
//!
//! The request is a SIGUSR2 sent with `sigqueue`, so the server knows who
//! asks; the answer comes back the same way (see `serve::upgrade`): SIGUSR1
//! carrying the new process's pid, or SIGUSR2 carrying why not. Both are
//! blocked here before the request goes out and taken with
//! `sigtimedwait`, so neither can kill this process or be missed.

use std::time::{Duration, Instant};

use clap::Args;

use crate::error::CliError;
use crate::serve::upgrade::{
    FAILED_BUSY, FAILED_NO_LISTENER, FAILED_STOPPING, REPLY_DONE, REPLY_FAILED,
};
use crate::util::parse_positive_duration;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sockserv upgrade --pid 1234                      # after replacing the binary on disk
  sockserv upgrade --pid \"$(systemctl show -p MainPID --value sockserv)\"

Prints one line and exits 0 once the new process serves and the old one
drains; exits 1 if the upgrade failed (the old process serves on; its log
says why), was refused (one is already in progress, or the server is
stopping) or no answer came within --timeout.")]
pub struct UpgradeArgs {
    /// The process id of the `sockserv serve` to upgrade.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pid: i32,

    /// How long to wait for the outcome; longer than the server's
    /// --upgrade-timeout (default 30s).
    #[arg(long, value_name = "DURATION", default_value = "40s", value_parser = parse_positive_duration)]
    timeout: Duration,
}

/// What a request queues as its value: nothing the server reads, a mark
/// for whoever traces signals.
const REQUEST: usize = 0x5550_4752; // "UPGR"

/// SIGUSR2 kills a process that does not catch it: a mistyped pid must
/// not take down another program. The target's command line must be a
/// `sockserv ... serve ...` (as /proc shows it).
fn is_sockserv_serve(pid: i32) -> Result<(), CliError> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "no such process".to_string()
        } else {
            crate::error::describe(&e)
        };
        CliError::runtime(format!("cannot signal pid {pid}: {why}"))
    })?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let program = args.first().and_then(|a| a.rsplit(|b| *b == b'/').next());
    let named = program.is_some_and(|p| p.windows(8).any(|w| w == b"sockserv"));
    if named && args.iter().skip(1).any(|a| *a == b"serve") {
        return Ok(());
    }
    let shown: Vec<String> = args
        .iter()
        .filter(|a| !a.is_empty())
        .take(4)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Err(CliError::runtime(format!(
        "pid {pid} is not a sockserv serve (it runs {:?}): not signalled",
        shown.join(" ")
    )))
}

pub fn run(args: UpgradeArgs) -> Result<(), CliError> {
    let pid = args.pid;
    is_sockserv_serve(pid)?;
    // SAFETY: plain signal-set calls on a valid, zeroed sigset; this
    // process is single-threaded here, so the mask covers it whole.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, REPLY_DONE);
        libc::sigaddset(&mut set, REPLY_FAILED);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let val = libc::sigval {
        sival_ptr: REQUEST as *mut libc::c_void,
    };
    // SAFETY: sigqueue has no memory-safety preconditions.
    if unsafe { libc::sigqueue(pid, libc::SIGUSR2, val) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(CliError::runtime(format!(
            "cannot signal pid {pid}: {}",
            crate::error::describe(&e)
        )));
    }
    let deadline = Instant::now() + args.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CliError::runtime(format!(
                "no answer from pid {pid} within {:?}: is it a sockserv serve? (its log says what happened)",
                args.timeout
            )));
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: an all-zero siginfo_t is a valid value for the call to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set, info and timeout.
        let sig = unsafe { libc::sigtimedwait(&set, &mut info, &ts) };
        if sig < 0 {
            continue; // EAGAIN (the deadline, checked above) or EINTR
        }
        // SAFETY: the fields of a queued signal's siginfo.
        let (from, value) = unsafe { (info.si_pid(), info.si_value().sival_ptr as usize) };
        if from != pid || info.si_code != libc::SI_QUEUE {
            continue; // not the answer
        }
        return match (sig, value) {
            (REPLY_DONE, new) => {
                println!("upgraded: pid {pid} handed over to pid {new}, and drains");
                Ok(())
            }
            (_, FAILED_BUSY) => Err(CliError::runtime(format!(
                "pid {pid}: an upgrade is already in progress"
            ))),
            (_, FAILED_STOPPING) => Err(CliError::runtime(format!(
                "pid {pid} is shutting down: no upgrade"
            ))),
            (_, FAILED_NO_LISTENER) => Err(CliError::runtime(format!(
                "pid {pid} serves one connection (--inetd): it has no listener to hand over"
            ))),
            // FAILED_SUCCESSOR, or a code of a newer server.
            _ => Err(CliError::runtime(format!(
                "upgrade of pid {pid} failed: the new process did not become ready; the old one serves on (its log says why)"
            ))),
        };
    }
}
