//! The CLI's error: one line of text and an exit code.

use std::fmt;

/// An error the CLI reports as `sockserv: MESSAGE` on one line.
///
/// Exit codes: 2 for usage errors (a bad argument the user can fix by
/// changing the command line), 1 for runtime errors (nothing listens, the
/// port is taken, the peer misbehaved).
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// A usage error: exit code 2.
    pub fn usage(message: impl fmt::Display) -> CliError {
        CliError {
            code: 2,
            message: one_line(message),
        }
    }

    /// A runtime error: exit code 1.
    pub fn runtime(message: impl fmt::Display) -> CliError {
        CliError {
            code: 1,
            message: one_line(message),
        }
    }

    pub fn code(&self) -> u8 {
        self.code
    }
}

fn one_line(message: impl fmt::Display) -> String {
    message.to_string().replace('\n', " ")
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// An I/O error as a short lower-case phrase: "connection refused", not
/// "Connection refused (os error 111)".
pub(crate) fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) if chars.clone().next().is_some_and(|n| n.is_lowercase()) => {
            c.to_lowercase().chain(chars).collect()
        }
        _ => text.to_string(),
    }
}

impl CliError {
    /// The same error, its message prefixed with `context: ` (which
    /// listener, which file).
    pub fn prefixed(context: &str, e: CliError) -> CliError {
        CliError {
            code: e.code,
            message: format!("{context}: {}", e.message),
        }
    }
}
