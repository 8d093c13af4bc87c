//! The `sockserv` command: a thin client of the library.
//!
//! Argument definitions live here and in one file per subcommand. `serve`
//! and `send` are the library's `Server` and `Client`, so nothing they do is
//! out of a library user's reach; `bench` drives the load generator in
//! [`loadgen`], which lives in this crate because only the command needs it
//! (and its histogram and progress-bar dependencies).

mod admin;
mod bench;
mod builtin;
mod check;
mod error;
mod loadgen;
mod logging;
mod send;
mod serve;
mod upgrade;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Concurrent socket servers the socketserver way.
#[derive(Debug, Parser)]
#[command(name = "sockserv", version, about, long_about = None)]
#[command(after_help = "Examples:
  sockserv serve                                  # upper-case server on tcp://127.0.0.1:9999
  sockserv serve --handler echo tcp://[::1]:0 udp://127.0.0.1:0
  sockserv send 127.0.0.1:9999 hello
  sockserv serve --handler echo tcp://127.0.0.1:7000 &
  sockserv bench -c 100 -d 5 tcp://127.0.0.1:7000     # needs an echo server
  sockserv check --config /etc/sockserv.toml && sockserv serve --config /etc/sockserv.toml")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server with a built-in handler on one or more addresses.
    Serve(Box<serve::ServeArgs>),
    /// Send data to a server and print the reply (the seed's client).
    Send(send::SendArgs),
    /// Load-test an echo server: throughput, latency percentiles, errors.
    Bench(bench::BenchArgs),
    /// Check a config file (sockserv serve --config FILE) without serving.
    Check(check::CheckArgs),
    /// Upgrade a running `sockserv serve` to the binary now on disk, without
    /// refusing a connection, and report the outcome.
    Upgrade(upgrade::UpgradeArgs),
}

/// Folds clap's multi-line error into one line: the message and the
/// argument it concerns, without the usage block and the help hint.
fn one_line_usage(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more information")
        {
            continue;
        }
        if line.starts_with("tip:") {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
    }
    parts.join(" ")
}

/// A clap error as the command reports it: help and version on stdout,
/// a usage error as one line on stderr with exit code 2.
fn parse_failed(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Help and version go to stdout, as users expect.
        let _ = e.print();
        return ExitCode::from(e.exit_code() as u8);
    }
    eprintln!("sockserv: {}", one_line_usage(&e.render().to_string()));
    ExitCode::from(2)
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // The matches are kept: `serve --config` asks them which options were
    // given on the command line.
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return parse_failed(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return parse_failed(e),
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args, matches.subcommand_matches("serve")),
        Command::Send(args) => send::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Check(args) => check::run(args),
        Command::Upgrade(args) => upgrade::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockserv: {e}");
            ExitCode::from(e.code())
        }
    }
}
