//! Built-in handlers, the classic small services (as inetd and xinetd ship
//! them): `echo`, `upper` (the seed's server), `discard`, `daytime`.
//!
//! `echo`, `upper` and `discard` are message handlers, so they work per
//! frame with any framing, and per datagram on datagram sockets. `daytime`
//! speaks first (RFC 867): on a stream it sends the time and closes; on a
//! datagram socket it answers any datagram with the time.

use std::fmt;
use std::str::FromStr;

use crate::conn::Connection;
use crate::handler::{
    DatagramHandler, Handler, HandlerResult, MessageHandler, Reply, StreamHandler,
};

/// Replies with each message unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl MessageHandler for Echo {
    #[inline]
    fn handle(&self, msg: &[u8], reply: &mut Reply<'_>) -> HandlerResult {
        reply.send(msg)?;
        Ok(())
    }
}

/// Replies with the ASCII upper-case of each message (the seed's server).
#[derive(Debug, Clone, Copy, Default)]
pub struct Upper;

impl MessageHandler for Upper {
    fn handle(&self, msg: &[u8], reply: &mut Reply<'_>) -> HandlerResult {
        if msg.len() <= 256 {
            let mut buf = [0u8; 256];
            let buf = &mut buf[..msg.len()];
            buf.copy_from_slice(msg);
            buf.make_ascii_uppercase();
            reply.send(buf)?;
        } else {
            reply.send(&msg.to_ascii_uppercase())?;
        }
        Ok(())
    }
}

/// Reads and drops everything (RFC 863).
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl MessageHandler for Discard {
    #[inline]
    fn handle(&self, _msg: &[u8], _reply: &mut Reply<'_>) -> HandlerResult {
        Ok(())
    }
}

/// Sends the current date and time, then closes (RFC 867).
#[derive(Debug, Clone, Copy, Default)]
pub struct Daytime;

/// The current time in RFC 867's suggested form, in UTC:
/// `Tuesday, February 22, 1982 17:37:43-UTC`.
pub fn daytime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: gmtime_r and strftime write into buffers we own and size.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&now, &mut tm);
        let mut buf = [0u8; 64];
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%A, %B %d, %Y %H:%M:%S-UTC".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl StreamHandler for Daytime {
    fn handle(&self, conn: &mut Connection) -> HandlerResult {
        use std::io::Write;
        let line = format!("{}\r\n", daytime_now());
        conn.write_all(line.as_bytes())?;
        Ok(())
    }
}

impl DatagramHandler for Daytime {
    fn handle(&self, _datagram: &[u8], reply: &mut Reply<'_>) -> HandlerResult {
        reply.send(format!("{}\r\n", daytime_now()).as_bytes())?;
        Ok(())
    }
}

/// The built-in handlers by name, as the CLI's `--handler` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Echo,
    Upper,
    Discard,
    Daytime,
}

impl Builtin {
    /// Every built-in, for help texts.
    pub const ALL: [Builtin; 4] = [
        Builtin::Echo,
        Builtin::Upper,
        Builtin::Discard,
        Builtin::Daytime,
    ];

    /// The handler for a socket of the given kind.
    pub fn handler(self, stream: bool) -> Handler {
        match self {
            Builtin::Echo => Handler::message(Echo),
            Builtin::Upper => Handler::message(Upper),
            Builtin::Discard => Handler::message(Discard),
            Builtin::Daytime if stream => Handler::stream(Daytime),
            Builtin::Daytime => Handler::datagram(Daytime),
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
