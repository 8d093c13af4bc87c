//! The built-in handlers by the names the command line gives them.

use std::fmt;
use std::str::FromStr;

use sockserv::handlers::{Daytime, Discard, Echo, Upper};
use sockserv::Handler;

/// The built-in handlers by name, as the CLI's `--handler` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Echo,
    Upper,
    Discard,
    Daytime,
}

impl Builtin {
    /// The handler for a socket of the given kind.
    pub fn handler(self, stream: bool) -> Handler {
        match self {
            Builtin::Echo => Handler::message(Echo),
            Builtin::Upper => Handler::message(Upper),
            Builtin::Discard => Handler::message(Discard),
            Builtin::Daytime if stream => Handler::stream(Daytime),
            Builtin::Daytime => Handler::message(Daytime),
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Builtin::Echo => "echo",
            Builtin::Upper => "upper",
            Builtin::Discard => "discard",
            Builtin::Daytime => "daytime",
        })
    }
}

impl FromStr for Builtin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(Builtin::Echo),
            "upper" => Ok(Builtin::Upper),
            "discard" => Ok(Builtin::Discard),
            "daytime" => Ok(Builtin::Daytime),
            _ => Err(format!(
                "unknown handler \"{s}\": expected echo, upper, discard or daytime"
            )),
        }
    }
}
