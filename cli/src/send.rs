//! `sockserv send`: the seed's client as a tool.
//!
//! On a stream the input is streamed: a writer thread reads standard input
//! in chunks (raw) or line by line (a framing) and writes it to the socket,
//! while this thread prints the replies as they come. Memory stays bounded
//! whatever the size of the input: one chunk, or one frame of at most
//! `--max-frame` bytes, plus the socket's own buffers.

use std::io::{self, BufRead, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use sockserv::client::RawWriter;
use sockserv::frame::{Encoder, Framing};
use sockserv::{Client, Endpoint};

use crate::error::CliError;
use crate::serve::{parse_framing, with_max_frame};
use crate::util::parse_duration;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sockserv send 127.0.0.1:9999 hello              # sends \"hello\\n\", prints the reply
  echo hello | sockserv send tcp://[::1]:7000     # sends standard input
  sockserv send udp://127.0.0.1:7000 ping         # one datagram, one reply
  sockserv send --framing len:4 127.0.0.1:9000 hello
  sockserv send --framing line 127.0.0.1:9000 'a' 'b'   # two frames, two replies
  seq 1000000 | sockserv send --framing line 127.0.0.1:9000   # streamed, a reply per line
  sockserv send --framing line --max-frame 1048576 127.0.0.1:9000 < big-lines.txt
  sockserv send --timeout 1s 127.0.0.1:9000 ping  # give up after 1 s (connect and reply)

With raw framing it writes the data, half-closes its side, and prints every
byte that comes back until the server closes. With a framing, each DATA
argument (or each line of standard input) is one frame, and each reply frame
is printed on its own line. Standard input is streamed as it is read, with
the replies printed as they come, in bounded memory: `yes | sockserv send`
runs for ever without growing. --max-frame (default 65536, or N for fixed:N
when larger) bounds each frame sent and each reply decoded; a longer line
of input is an error.

--timeout bounds the connect, and the wait for a reply once the server owes
one (after the last byte sent, or the last reply received), and each write.
Exit code 0 on success; 1 when nothing listens, the connect or a reply
takes longer than --timeout, or the server closes the connection without
replying (or, with a framing, before every reply came); 2 for a bad
address or option.")]
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

    /// Largest frame sent or received, in bytes, as serve's --max-frame
    /// (default: 65536, or N for fixed:N when N is larger).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=(1u64 << 32)))]
    max_frame: Option<u64>,

    /// How long to wait for the connection to be accepted, for a reply, or
    /// for a write to go through.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "a timeout of \"{}\" would give up before anything could be sent; give a duration over 0, e.g. 1s or 500ms",
            s.trim()
        ));
    }
    Ok(d)
}

/// How long one wait for the socket lasts before the reader looks at what
/// the writer has done (so it notices the end of the input at once).
const SLICE: Duration = Duration::from_millis(50);

/// Bytes read from standard input at a time with raw framing.
const CHUNK: usize = 64 * 1024;

pub fn run(args: SendArgs) -> Result<(), CliError> {
    let framing = with_max_frame(&args.framing, args.max_frame)?;
    let mut client = Client::connect_timeout(&args.addr, framing.clone(), Some(args.timeout))
        .map_err(|e| {
            if e.is_usage() {
                CliError::usage(e)
            } else if matches!(&e, sockserv::Error::Socket { source, .. } if is_timeout(source)) {
                CliError::runtime(format!("{e} (not accepted within {:?})", args.timeout))
            } else {
                CliError::runtime(e)
            }
        })?;
    client
        .set_timeout(Some(args.timeout))
        .map_err(CliError::runtime)?;
    if args.addr.transport().is_stream() {
        Stream::new(&args, framing).run(client)
    } else {
        datagrams(&args, &mut client)
    }
}

/// What a failed socket operation means to the user.
fn io_error(args: &SendArgs, e: &io::Error) -> CliError {
    if is_timeout(e) {
        CliError::runtime(format!(
            "no reply from {} within {:?}",
            args.addr, args.timeout
        ))
    } else {
        CliError::runtime(format!("{}: {}", args.addr, crate::error::describe(e)))
    }
}

/// Datagram endpoints: each DATA argument joined, or standard input, is one
/// datagram; each gets one reply.
fn datagrams(args: &SendArgs, client: &mut Client) -> Result<(), CliError> {
    let message = if args.data.is_empty() {
        // At most one datagram's worth is read: a larger input could not
        // be sent anyway.
        let cap = sockserv::MAX_UNIX_DATAGRAM.max(sockserv::MAX_DATAGRAM);
        let mut input = Vec::new();
        io::stdin()
            .lock()
            .take(cap as u64 + 1)
            .read_to_end(&mut input)
            .map_err(|e| CliError::runtime(format!("cannot read standard input: {e}")))?;
        if input.len() > cap {
            return Err(CliError::usage(format!(
                "standard input is more than {cap} bytes: too large for one datagram"
            )));
        }
        input
    } else {
        args.data.join(" ").into_bytes()
    };
    let reply = client.request(&message).map_err(|e| io_error(args, &e))?;
    let mut out = io::stdout().lock();
    out.write_all(&reply).map_err(CliError::runtime)?;
    if !reply.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    out.flush().map_err(CliError::runtime)
}

/// What the writer thread has done so far, for the reader.
#[derive(Default)]
struct Progress {
    /// Frames written (framed) so far.
    frames: AtomicU64,
    /// Bytes of input taken so far.
    bytes: AtomicU64,
    /// When the last write finished, in milliseconds since the start.
    last_write_ms: AtomicU64,
    /// No more input will be sent: the input ended, or writing failed.
    done: AtomicBool,
    /// Why writing stopped early.
    failure: Mutex<Option<WriteFailure>>,
}

enum WriteFailure {
    /// The input cannot be sent with this framing (the user's input).
    Input(String),
    /// The socket refused it.
    Io(io::Error),
    /// Standard input could not be read.
    Stdin(io::Error),
}

/// A stream exchange: the writer thread's input and the reader's state.
struct Stream<'a> {
    args: &'a SendArgs,
    framing: Framing,
    raw: bool,
    start: Instant,
    progress: Arc<Progress>,
}

impl<'a> Stream<'a> {
    fn new(args: &'a SendArgs, framing: Framing) -> Self {
        Stream {
            args,
            raw: framing.is_raw(),
            framing,
            start: Instant::now(),
            progress: Arc::new(Progress::default()),
        }
    }

    fn run(self, mut client: Client) -> Result<(), CliError> {
        let writer = client
            .raw_writer()
            .map_err(|e| io_error(self.args, &e))?
            .ok_or_else(|| CliError::runtime("streaming needs a stream endpoint"))?;
        let input = if self.args.data.is_empty() {
            Input::Stdin
        } else if self.raw {
            let mut joined = self.args.data.join(" ").into_bytes();
            if !self.args.no_newline {
                joined.push(b'\n');
            }
            Input::Bytes(joined)
        } else {
            Input::Frames(
                self.args
                    .data
                    .iter()
                    .map(|d| d.as_bytes().to_vec())
                    .collect(),
            )
        };
        let job = WriteJob {
            framing: self.framing.clone(),
            raw: self.raw,
            start: self.start,
            progress: Arc::clone(&self.progress),
        };
        let thread = std::thread::Builder::new()
            .name("send-writer".into())
            .spawn(move || job.run(writer, input))
            .map_err(|e| CliError::runtime(format!("cannot start the writing thread: {e}")))?;
        let read = self.read_replies(&mut client);
        // The writer ends by itself once the input is sent; when reading
        // stopped first (an error), it is not waited for: dropping the
        // connection at exit ends its writes.
        if self.progress.done.load(Ordering::Acquire) {
            let _ = thread.join();
        }
        let failure = self
            .progress
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match (read, failure) {
            // The input cannot be sent this way: that is the error, even if
            // the server then closed on the frames before it.
            (_, Some(WriteFailure::Input(why))) => Err(CliError::usage(why)),
            (_, Some(WriteFailure::Stdin(e))) => Err(CliError::runtime(format!(
                "cannot read standard input: {e}"
            ))),
            (Err(e), _) => Err(e),
            // Raw: a server that answers and hangs up while the rest of the
            // input is still being written (the seed's server) did its job.
            (Ok(Replies { got_any: true }), Some(WriteFailure::Io(e))) if self.raw => {
                tracing::debug!("write ended early: {e}");
                Ok(())
            }
            (Ok(_), Some(WriteFailure::Io(e))) => Err(if is_timeout(&e) {
                CliError::runtime(format!(
                    "{} did not take the data within {:?}",
                    self.args.addr, self.args.timeout
                ))
            } else {
                io_error(self.args, &e)
            }),
            (Ok(_), None) => Ok(()),
        }
    }

    fn since_start_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Prints replies until the exchange is over: the server closed, every
    /// frame sent has its reply (framed), or a reply is overdue.
    fn read_replies(&self, client: &mut Client) -> Result<Replies, CliError> {
        let args = self.args;
        let progress = &*self.progress;
        client
            .set_read_timeout(Some(SLICE.min(args.timeout)))
            .map_err(CliError::runtime)?;
        let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
        let mut got_any = false;
        let mut replies = 0u64;
        let mut last_read_ms = 0u64;
        let closed_early = || {
            CliError::runtime(format!(
                "{} closed the connection before every reply came",
                args.addr
            ))
        };
        loop {
            // Framed: done when every frame sent has had its reply. (The
            // count is final once `done` is set.)
            if !self.raw
                && progress.done.load(Ordering::Acquire)
                && replies >= progress.frames.load(Ordering::Acquire)
            {
                break;
            }
            match client.recv() {
                Ok(Some(reply)) => {
                    got_any = true;
                    last_read_ms = self.since_start_ms();
                    out.write_all(&reply).map_err(CliError::runtime)?;
                    if !self.raw {
                        replies += 1;
                        out.write_all(b"\n").map_err(CliError::runtime)?;
                    }
                    if client.buffered() == 0 {
                        out.flush().map_err(CliError::runtime)?;
                    }
                }
                Ok(None) => {
                    out.flush().map_err(CliError::runtime)?;
                    if !self.raw {
                        // The loop ends above when all replies came.
                        return Err(closed_early());
                    }
                    if !got_any && progress.bytes.load(Ordering::Acquire) > 0 {
                        return Err(CliError::runtime(
                            "the server closed the connection without replying",
                        ));
                    }
                    break;
                }
                Err(e) if is_timeout(&e) => {
                    out.flush().map_err(CliError::runtime)?;
                    let done = progress.done.load(Ordering::Acquire);
                    let owed = if self.raw {
                        // A raw server owes nothing we can count: once the
                        // input is over, a quiet --timeout ends the wait.
                        done
                    } else {
                        replies < progress.frames.load(Ordering::Acquire)
                    };
                    let last = last_read_ms.max(progress.last_write_ms.load(Ordering::Acquire));
                    let quiet = Duration::from_millis(self.since_start_ms().saturating_sub(last));
                    if owed && quiet >= args.timeout {
                        if self.raw && got_any {
                            break;
                        }
                        return Err(io_error(args, &e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let _ = out.flush();
                    return Err(CliError::runtime(format!(
                        "bad reply from {}: {e}",
                        args.addr
                    )));
                }
                Err(e) => {
                    let _ = out.flush();
                    return Err(io_error(args, &e));
                }
            }
        }
        out.flush().map_err(CliError::runtime)?;
        Ok(Replies { got_any })
    }
}

/// How the reading went, when it went well.
struct Replies {
    got_any: bool,
}

/// What the writer thread sends.
enum Input {
    /// Standard input, streamed.
    Stdin,
    /// The DATA arguments joined (raw).
    Bytes(Vec<u8>),
    /// The DATA arguments, one frame each.
    Frames(Vec<Vec<u8>>),
}

/// The writer thread's side.
struct WriteJob {
    framing: Framing,
    raw: bool,
    start: Instant,
    progress: Arc<Progress>,
}

impl WriteJob {
    fn run(self, writer: RawWriter, input: Input) {
        let result = if self.raw {
            self.raw_input(writer, input)
        } else {
            self.frames(writer, input)
        };
        if let Err(failure) = result {
            *self
                .progress
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(failure);
        }
        self.progress.done.store(true, Ordering::Release);
    }

    fn wrote(&self, bytes: usize) {
        self.progress
            .bytes
            .fetch_add(bytes as u64, Ordering::AcqRel);
        self.progress
            .last_write_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Raw: the bytes as they come, then a half-close.
    fn raw_input(&self, mut writer: RawWriter, input: Input) -> Result<(), WriteFailure> {
        match input {
            Input::Bytes(bytes) => {
                writer.write_all(&bytes).map_err(WriteFailure::Io)?;
                self.wrote(bytes.len());
            }
            Input::Frames(_) => unreachable!("raw input is one run of bytes"),
            Input::Stdin => {
                let mut stdin = io::stdin().lock();
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(WriteFailure::Stdin(e)),
                    };
                    writer.write_all(&buf[..n]).map_err(WriteFailure::Io)?;
                    self.wrote(n);
                }
            }
        }
        writer.shutdown_write().map_err(WriteFailure::Io)
    }

    /// Framed: each argument or line encoded, sent in batches (flushed
    /// whenever standard input has nothing more ready, so an interactive
    /// line leaves at once).
    fn frames(&self, writer: RawWriter, input: Input) -> Result<(), WriteFailure> {
        let codec = self.framing.codec();
        let mut sock = BufWriter::with_capacity(64 * 1024, writer);
        let mut encoded = Vec::new();
        let mut send = |frame: &[u8], sock: &mut BufWriter<RawWriter>| {
            encoded.clear();
            codec.encode(frame, &mut encoded).map_err(|e| {
                WriteFailure::Input(format!("cannot send this as {}: {e}", self.framing))
            })?;
            sock.write_all(&encoded).map_err(WriteFailure::Io)?;
            self.progress.frames.fetch_add(1, Ordering::AcqRel);
            self.wrote(frame.len());
            Ok(())
        };
        let flush = |sock: &mut BufWriter<RawWriter>| -> Result<(), WriteFailure> {
            sock.flush().map_err(WriteFailure::Io)?;
            self.wrote(0);
            Ok(())
        };
        match input {
            Input::Frames(frames) => {
                for frame in &frames {
                    send(frame, &mut sock)?;
                }
            }
            Input::Bytes(_) => unreachable!("framed input is a list of frames"),
            Input::Stdin => {
                // A buffer of its own, to see when nothing more is ready.
                let mut stdin = io::BufReader::with_capacity(CHUNK, io::stdin().lock());
                let mut line = Vec::new();
                // A line may end in "\r\n": one byte more than the frame.
                let limit = self.framing.max_frame().saturating_add(1);
                loop {
                    match read_line(&mut stdin, &mut line, limit) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            // What was sent still gets its replies.
                            flush(&mut sock)?;
                            return Err(WriteFailure::Input(format!(
                                "a line of standard input is longer than the maximum frame size of {} bytes (--max-frame)",
                                self.framing.max_frame()
                            )));
                        }
                        Err(e) => return Err(WriteFailure::Stdin(e)),
                    }
                    let frame = line.strip_suffix(b"\r").unwrap_or(&line);
                    send(frame, &mut sock)?;
                    if stdin.buffer().is_empty() {
                        flush(&mut sock)?;
                    }
                }
            }
        }
        // The frame count is final: the reader may stop as soon as the
        // last reply is in, which cannot come before this flush.
        self.progress.done.store(true, Ordering::Release);
        flush(&mut sock)
    }
}

/// Reads one line (without its `\n`) into `line`, holding at most `limit`
/// bytes of it: longer is an `InvalidData` error. `Ok(false)` at the end
/// of the input; a last line without `\n` counts as a line.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    line.clear();
    let mut any = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        let (part, used, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if line.len() + part.len() > limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        line.extend_from_slice(part);
        input.consume(used);
        if end {
            return Ok(true);
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::read_line;

    #[test]
    fn lines_are_read_whole_and_bounded() {
        let mut input: &[u8] = b"ab\r\n\ncd";
        let mut line = Vec::new();
        assert!(read_line(&mut input, &mut line, 10).unwrap());
        assert_eq!(line, b"ab\r");
        assert!(read_line(&mut input, &mut line, 10).unwrap());
        assert_eq!(line, b"");
        assert!(read_line(&mut input, &mut line, 10).unwrap());
        assert_eq!(line, b"cd");
        assert!(!read_line(&mut input, &mut line, 10).unwrap());
        let mut long: &[u8] = b"abcdef\n";
        assert!(read_line(&mut long, &mut line, 5).is_err());
    }
}
