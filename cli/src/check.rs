//! `sockserv check --config FILE`: reads and checks a config file as
//! `serve --config` would, without serving. Nothing is bound (a port in
//! use is found only by `serve`); the rules files are read and parsed.

use std::path::PathBuf;

use clap::Args;

use crate::error::CliError;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sockserv check --config /etc/sockserv.toml      # prints `/etc/sockserv.toml: ok (3 listeners)`
  sockserv check --config contrib/sockserv.toml && systemctl reload-or-restart sockserv

Checks every key and value (types, addresses, durations, framings, CIDR
prefixes, rates), the rules files (read and parsed), and what no single key
shows: two listeners on one address, two with one name, a listener with both
handler and exec, one with neither address nor name. It binds nothing.
Exit code 0 if the file is fine; else 2, with one line `FILE:LINE: ...` on
stderr.")]
pub struct CheckArgs {
    /// The config file to check (TOML; see `sockserv serve --help`).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// `sockserv check`: one line, `FILE: ok (N listeners)`, or the error.
pub fn run(args: CheckArgs) -> Result<(), CliError> {
    let config = crate::serve::config::load(&args.config)?;
    let n = crate::serve::plan::check(&config)?;
    println!(
        "{}: ok ({n} listener{})",
        args.config.display(),
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}
