//! The service life of bound servers: signals (stop, reload), the admin
//! endpoint, the service manager's notifications and watchdog, and the
//! wait for every server to end.

use std::io::Write;

use sockserv::Server;

use super::plan::{Plan, RulesSource};
use super::reload_rules;
use crate::error::CliError;

/// The signals `serve` handles, installed before anything is bound or
/// printed: a SIGTERM right after the `listening` line must drain, not
/// kill.
pub(crate) struct Signals(signal_hook::iterator::Signals);

/// Installs the handlers: SIGINT and SIGTERM stop; SIGHUP reloads the
/// rules with `reload`, else it is ignored.
pub(crate) fn install_signals(reload: bool) -> Result<Signals, CliError> {
    let mut caught = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    if reload {
        caught.push(signal_hook::consts::SIGHUP);
    }
    let signals = signal_hook::iterator::Signals::new(caught)
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

/// Serves `plan` until a signal stops it (or a server fails) and every
/// server has drained.
pub(crate) fn run(signals: Signals, plan: Plan) -> Result<(), CliError> {
    let Signals(mut signals) = signals;
    let handles: Vec<_> = plan
        .servers
        .iter()
        .map(|p| p.server.shutdown_handle())
        .collect();
    let admin = match plan.admin {
        Some(config) => {
            let source = crate::admin::Combined::new(handles.clone());
            Some(
                sockserv::admin::start(config, std::sync::Arc::new(source)).map_err(|e| {
                    if e.is_usage() {
                        CliError::usage(e)
                    } else {
                        CliError::runtime(e)
                    }
                })?,
            )
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
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                for (source, handles) in &reloads {
                    reload_rules(source, handles);
                }
                continue;
            }
            tracing::info!("signal {sig}: shutting down");
            signal_stopping.call_once(|| notify("STOPPING=1"));
            for h in &signal_handles {
                h.request();
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
    // The admin endpoint answers (503 on /readyz) until the drain is over.
    drop(admin);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends a state to the service manager (`NOTIFY_SOCKET`); nothing without
/// one. A failure is logged, never fatal: the server serves on.
fn notify(state: &str) {
    if let Err(e) = sockserv::notify::notify(state) {
        tracing::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}
