//! The library's error type: every failure a user can cause, as a value with
//! a one-line message (never a panic).

use std::fmt;
use std::io;

use crate::addr::ParseEndpointError;

/// Errors from building, binding and running a server or a client.
#[derive(Debug)]
pub enum Error {
    /// An address string could not be parsed.
    Address(ParseEndpointError),
    /// A socket could not be opened, bound or connected.
    Socket {
        /// What was being done, e.g. `cannot listen on tcp://127.0.0.1:9999`.
        action: String,
        source: io::Error,
    },
    /// The server was configured in a way that cannot work (a stream handler
    /// on a datagram socket, zero workers, ...).
    Config(String),
    /// Any other I/O error while serving.
    Io(io::Error),
}

impl Error {
    pub(crate) fn socket(action: impl Into<String>, source: io::Error) -> Error {
        Error::Socket {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn config(msg: impl Into<String>) -> Error {
        Error::Config(msg.into())
    }

    /// True for errors the user can fix by changing the configuration or the
    /// command line (the CLI exits 2 for these, 1 for the rest).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Address(_) | Error::Config(_))
    }
}

/// Describes an I/O error the way a person reads it: the kernel's wording
/// without the "(os error N)" suffix, lower-case.
pub(crate) fn describe(e: &io::Error) -> String {
    let text = match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_string(),
        io::ErrorKind::ConnectionRefused => "connection refused (is a server listening?)".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        io::ErrorKind::NotFound if e.raw_os_error().is_some() => "no such file or directory".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Address(e) => write!(f, "{e}"),
            Error::Socket { action, source } => write!(f, "{action}: {}", describe(source)),
            Error::Config(msg) => f.write_str(msg),
            Error::Io(e) => f.write_str(&describe(e)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Address(e) => Some(e),
            Error::Socket { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Config(_) => None,
        }
    }
}

impl From<ParseEndpointError> for Error {
    fn from(e: ParseEndpointError) -> Self {
        Error::Address(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
