//! The service life of bound servers: signals (stop, reload, upgrade), the
//! admin endpoint, the service manager's notifications and watchdog, the
//! shutdown delay, and the wait for every server to end.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Sent};
use sockserv::Server;

use super::plan::{Plan, RulesSource};
use super::reload_rules;
use super::upgrade::{Handoff, Passed, Settings, Upgrader};
use crate::error::CliError;

/// The signals `serve` handles, installed before anything is bound or
/// printed: a SIGTERM right after the `listening` line must drain, not
/// kill. With their origin: an upgrade request from `sockserv upgrade` is
/// answered.
pub(crate) struct Signals(signal_hook::iterator::SignalsInfo<WithOrigin>);

/// What the service life needs beyond the plan.
pub(crate) struct Options {
    /// `--shutdown-delay`: how long to serve on, not ready, after SIGTERM.
    pub(crate) shutdown_delay: Duration,
    pub(crate) upgrade: Settings,
    /// Set when an upgrade started this process: told once it serves.
    pub(crate) handoff: Option<Handoff>,
}

/// Installs the handlers: SIGINT and SIGTERM stop; SIGUSR2 upgrades;
/// SIGHUP reloads the rules with `reload`, else it is ignored.
pub(crate) fn install_signals(reload: bool) -> Result<Signals, CliError> {
    let mut caught = vec![
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR2,
    ];
    if reload {
        caught.push(signal_hook::consts::SIGHUP);
    }
    let signals = signal_hook::iterator::SignalsInfo::<WithOrigin>::new(caught)
        .map_err(|e| CliError::runtime(format!("cannot install signal handlers: {e}")))?;
    if !reload {
        // A terminal hang-up (or a reload request from a service manager)
        // must never kill the server without a drain.
        // SAFETY: SIG_IGN is a valid disposition for SIGHUP.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
    Ok(Signals(signals))
}

/// Serves `plan` until a signal stops it (or a server fails, or an
/// upgrade hands it over) and every server has drained.
pub(crate) fn run(signals: Signals, plan: Plan, options: Options) -> Result<(), CliError> {
    let Signals(mut signals) = signals;
    let handles: Vec<_> = plan
        .servers
        .iter()
        .map(|p| p.server.shutdown_handle())
        .collect();
    // Set at the first stop signal: /readyz fails from then on, even while
    // the shutdown delay still serves.
    let leaving = Arc::new(AtomicBool::new(false));
    let (readiness, inherited_admin) = match options.handoff {
        Some(h) => (Some(h.readiness), h.admin),
        None => (None, None),
    };
    let passed = passed_listeners(&plan);
    let admin = match plan.admin {
        Some(config) => {
            let source = Arc::new(crate::admin::Combined::new(
                handles.clone(),
                Arc::clone(&leaving),
            ));
            // An upgrade passes the old process's admin socket: same
            // address, and its queue kept.
            let started = match inherited_admin {
                Some(l) => sockserv::admin::start_on(config, l, source),
                None => sockserv::admin::start(config, source),
            };
            Some(started.map_err(|e| {
                if e.is_usage() {
                    CliError::usage(e)
                } else {
                    CliError::runtime(e)
                }
            })?)
        }
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        for endpoint in &plan.listeners {
            let _ = writeln!(out, "listening {endpoint}");
        }
        if let Some(a) = &admin {
            let _ = writeln!(out, "admin {}", a.url());
        }
        let _ = out.flush();
    }
    // Shared with the upgrade, which stops it at the handoff (the
    // successor answers on the same socket from then on).
    let admin = Arc::new(std::sync::Mutex::new(admin));
    let upgrader = Arc::new(Upgrader::new(
        options.upgrade,
        passed,
        handles.clone(),
        Arc::clone(&leaving),
        Arc::clone(&admin),
    ));
    tracing::info!("serving: {}", plan.summary);

    let stopping = std::sync::Arc::new(std::sync::Once::new());
    let signal_handles = handles.clone();
    // One reload a rules file, whichever servers it serves.
    let mut reloads: Vec<(RulesSource, Vec<sockserv::RulesHandle>)> = Vec::new();
    for p in &plan.servers {
        let Some(source) = &p.rules else { continue };
        match reloads.iter_mut().find(|(s, _)| s == source) {
            Some((_, handles)) => handles.push(p.server.rules_handle()),
            None => reloads.push((source.clone(), vec![p.server.rules_handle()])),
        }
    }
    let signal_stopping = std::sync::Arc::clone(&stopping);
    let delay = options.shutdown_delay;
    let upgrading = Arc::clone(&upgrader);
    std::thread::spawn(move || {
        for origin in signals.forever() {
            let sig = origin.signal;
            if sig == signal_hook::consts::SIGHUP {
                for (source, handles) in &reloads {
                    reload_rules(source, handles);
                }
                continue;
            }
            if sig == signal_hook::consts::SIGUSR2 {
                // Only `sockserv upgrade` queues its request, and waits
                // for the answer.
                let requester = match origin.cause {
                    Cause::Sent(Sent::Queue) => origin.process.map(|p| p.pid),
                    _ => None,
                };
                upgrading.start(requester);
                continue;
            }
            let first = !leaving.swap(true, Ordering::AcqRel);
            let draining = signal_handles.iter().any(|h| h.is_requested());
            if first && draining {
                // Handed over to a successor (or a server failed): the
                // drain is under way; only a second signal cuts it short.
                tracing::info!("signal {sig}: already draining; a second signal stops at once");
                continue;
            }
            if first && !delay.is_zero() {
                tracing::info!(
                    "signal {sig}: not ready; serving {delay:?} more (--shutdown-delay), then draining"
                );
                signal_stopping.call_once(|| {
                    notify(&format!(
                        "STOPPING=1\nSTATUS=not ready: draining in {delay:?}"
                    ))
                });
                let delayed = signal_handles.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    if !delayed.iter().any(|h| h.is_requested()) {
                        tracing::info!("shutdown delay over: shutting down");
                        for h in &delayed {
                            h.request();
                        }
                    }
                });
                continue;
            }
            let in_delay = !first && !draining;
            tracing::info!("signal {sig}: shutting down");
            signal_stopping.call_once(|| notify("STOPPING=1"));
            for h in &signal_handles {
                h.request();
                if in_delay {
                    // A second signal during the delay stops at once, as
                    // a second signal does during a drain.
                    h.force();
                }
            }
        }
    });

    let threads: Vec<_> = plan
        .servers
        .into_iter()
        .map(|p| p.server)
        .map(|s: Server| std::thread::spawn(move || s.serve_forever()))
        .collect();
    // Every listener is open (the kernel queues connections from here) and
    // has its serving thread.
    let summary: Vec<String> = plan.listeners.iter().map(|ep| ep.to_string()).collect();
    notify(&format!(
        "READY=1\nSTATUS=serving {} listener{}: {}",
        summary.len(),
        if summary.len() == 1 { "" } else { "s" },
        summary.join(", ")
    ));
    if let Some(r) = readiness {
        r.ready();
    }
    // The watchdog pings while serving; it ends at the drain (a stop was
    // requested) or when `_watchdog_stop` is dropped at the end of `run`.
    let (_watchdog_stop, watchdog_rx) = std::sync::mpsc::channel::<()>();
    if let Some(every) = sockserv::notify::watchdog_interval() {
        let watched = handles.clone();
        std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog_rx.recv_timeout(every)
            {
                if watched.iter().any(|h| h.is_requested()) {
                    break;
                }
                notify("WATCHDOG=1");
            }
        });
    }
    let mut failure = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One listener failed: stop the others too.
                stopping.call_once(|| notify("STOPPING=1"));
                for h in &handles {
                    h.request();
                }
                failure.get_or_insert(CliError::runtime(e));
            }
            Err(_) => {
                failure.get_or_insert(CliError::runtime("a server thread failed"));
            }
        }
    }
    // A handoff's last words (its log line, the answer to `sockserv
    // upgrade`) before the process ends.
    upgrader.finish();
    // The admin endpoint answers (503 on /readyz) until the drain is over.
    drop(admin.lock().unwrap_or_else(|p| p.into_inner()).take());
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Every listening socket of the plan, in command-line order, to pass to
/// a successor. Matched to the plan's order by bound endpoint, each socket
/// taken once: two listeners on one address (SO_REUSEPORT) stay two.
///
/// The descriptors stay valid while the servers serve: an upgrade starts
/// only while no stop was requested, and the drain is what closes them.
fn passed_listeners(plan: &Plan) -> Vec<Passed> {
    let mut fds: Vec<Option<(&sockserv::Endpoint, Passed)>> = plan
        .servers
        .iter()
        .flat_map(|p| p.server.listener_fds())
        .map(|(fd, ep, name)| {
            use std::os::fd::AsRawFd;
            Some((
                ep,
                Passed {
                    fd: fd.as_raw_fd(),
                    name: name.map(str::to_string),
                },
            ))
        })
        .collect();
    plan.listeners
        .iter()
        .filter_map(|want| {
            fds.iter_mut()
                .find(|f| f.as_ref().is_some_and(|(ep, _)| *ep == want))
                .and_then(Option::take)
                .map(|(_, p)| p)
        })
        .collect()
}

/// Sends a state to the service manager (`NOTIFY_SOCKET`); nothing without
/// one. A failure is logged, never fatal: the server serves on.
pub(crate) fn notify(state: &str) {
    if let Err(e) = sockserv::notify::notify(state) {
        tracing::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}
