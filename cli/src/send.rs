//! `sockserv send`: the seed's client as a tool.

use std::io::{Read, Write};
use std::time::Duration;

use clap::Args;
use sockserv::frame::Framing;
use sockserv::{Client, Endpoint};

use crate::error::CliError;
use crate::serve::parse_framing;
use crate::util::parse_duration;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sockserv send 127.0.0.1:9999 hello              # sends \"hello\\n\", prints the reply
  echo hello | sockserv send tcp://[::1]:7000     # sends standard input
  sockserv send udp://127.0.0.1:7000 ping         # one datagram, one reply
  sockserv send --framing len:4 127.0.0.1:9000 hello
  sockserv send --framing line 127.0.0.1:9000 'a' 'b'   # two frames, two replies

With raw framing it writes the data, half-closes its side, and prints every
byte that comes back until the server closes. With a framing, each DATA
argument (or each line of standard input) is one frame, and each reply frame
is printed on its own line. Exit code 0 on success, 1 when nothing listens or
no reply comes within --timeout, 2 for a bad address or option.")]
pub struct SendArgs {
    /// Server address: tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH,
    /// unix-dgram:///PATH, or HOST:PORT for TCP.
    #[arg(value_name = "ADDR", value_parser = |s: &str| s.parse::<Endpoint>().map_err(|e| e.to_string()))]
    addr: Endpoint,

    /// Data to send (a newline is added unless -n); standard input if none.
    #[arg(value_name = "DATA")]
    data: Vec<String>,

    /// Do not add a newline after DATA (raw framing).
    #[arg(short = 'n', long)]
    no_newline: bool,

    /// Framing of requests and replies: raw, line, crlf, delim:STRING,
    /// len:N[:le], fixed:N.
    #[arg(long, default_value = "raw", value_parser = parse_framing)]
    framing: Framing,

    /// How long to wait for a reply.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn run(args: SendArgs) -> Result<(), CliError> {
    let mut client = Client::connect(&args.addr, args.framing.clone()).map_err(|e| {
        if e.is_usage() {
            CliError::usage(e)
        } else {
            CliError::runtime(e)
        }
    })?;
    client
        .set_timeout(Some(args.timeout))
        .map_err(CliError::runtime)?;
    let raw = args.framing.is_raw();
    let datagram = !args.addr.transport().is_stream();

    // What to send: DATA arguments, or standard input.
    let mut messages: Vec<Vec<u8>> = Vec::new();
    if args.data.is_empty() {
        let mut input = Vec::new();
        std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| CliError::runtime(format!("cannot read standard input: {e}")))?;
        if raw || datagram {
            messages.push(input);
        } else {
            messages.extend(
                input
                    .split(|&b| b == b'\n')
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()),
            );
            if input.ends_with(b"\n") {
                messages.pop();
            }
        }
    } else if raw || datagram {
        let mut joined = args.data.join(" ").into_bytes();
        if !args.no_newline && !datagram {
            joined.push(b'\n');
        }
        messages.push(joined);
    } else {
        messages.extend(args.data.iter().map(|d| d.as_bytes().to_vec()));
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io_err = |e: std::io::Error| -> CliError {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            CliError::runtime(format!(
                "no reply from {} within {:?}",
                args.addr, args.timeout
            ))
        } else {
            CliError::runtime(format!("{}: {}", args.addr, sockserv::Error::from(e)))
        }
    };

    if datagram {
        for m in &messages {
            let reply = client.request(m).map_err(io_err)?;
            out.write_all(&reply).map_err(CliError::runtime)?;
            if !reply.ends_with(b"\n") {
                let _ = out.write_all(b"\n");
            }
        }
        return Ok(());
    }

    if raw {
        // Write from another thread while this one prints what comes back,
        // then half-close: an echo of a large input cannot deadlock.
        let data = messages.concat();
        let writer = match client.raw_writer().map_err(io_err)? {
            Some(mut w) => std::thread::spawn(move || -> std::io::Result<()> {
                w.write_all(&data)?;
                w.shutdown_write()
            }),
            None => return Err(CliError::runtime("raw sending needs a stream endpoint")),
        };
        let mut got_any = false;
        loop {
            match client.recv() {
                Ok(Some(chunk)) => {
                    got_any = true;
                    out.write_all(&chunk).map_err(CliError::runtime)?;
                    let _ = out.flush();
                }
                Ok(None) => break,
                Err(e) if got_any && is_timeout(&e) => break,
                Err(e) => return Err(io_err(e)),
            }
        }
        return match writer.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if got_any => {
                // The server closed while we were still writing (e.g. the
                // seed's server answers one read and hangs up).
                tracing::debug!("write ended early: {e}");
                Ok(())
            }
            Ok(Err(e)) => Err(io_err(e)),
            Err(_) => Err(CliError::runtime("the writing thread failed")),
        };
    }

    // One frame, then its reply: a server that answers every frame never
    // waits on a client that is still writing (no deadlock on big input).
    for m in &messages {
        if let Err(e) = client.send(m) {
            return Err(if e.kind() == std::io::ErrorKind::InvalidInput {
                // The framing cannot carry this message (too long, contains
                // the delimiter, wrong size): the user's input.
                CliError::usage(format!("cannot send this as {}: {e}", args.framing))
            } else {
                io_err(e)
            });
        }
        match client.recv().map_err(io_err)? {
            Some(reply) => {
                out.write_all(&reply).map_err(CliError::runtime)?;
                out.write_all(b"\n").map_err(CliError::runtime)?;
            }
            None => {
                return Err(CliError::runtime(format!(
                    "{} closed the connection before every reply came",
                    args.addr
                )))
            }
        }
    }
    let _ = client.shutdown_write();
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
