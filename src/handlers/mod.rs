//! Built-in handlers, the classic small services (as inetd and xinetd ship
//! them): `echo`, `upper` (the seed's server), `discard`, `daytime`.
//!
//! `echo`, `upper` and `discard` are message handlers, so they work per
//! frame with any framing, and per datagram on datagram sockets. `daytime`
//! speaks first (RFC 867): on a stream it sends the time and closes; on a
//! datagram socket it answers any datagram with the time.

use crate::conn::Connection;
use crate::handler::{HandlerResult, MessageHandler, Reply, StreamHandler};

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

/// On a datagram socket: each datagram, whatever it holds, is answered with
/// the time.
impl MessageHandler for Daytime {
    fn handle(&self, _datagram: &[u8], reply: &mut Reply<'_>) -> HandlerResult {
        reply.send(format!("{}\r\n", daytime_now()).as_bytes())?;
        Ok(())
    }
}
