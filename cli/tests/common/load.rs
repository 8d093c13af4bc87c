//! The deploy tests' client load against a line-framed `upper` server:
//! churning clients (connect, one line, the reply, close — in a loop) and
//! kept-alive clients ping-ponging one line at a time. Every reply is
//! checked against the request it answers; everything that can go wrong
//! is counted, nothing is retried silently.
//!
//! What a kept-alive client accepts: each reply, or a clean end of stream
//! in place of a reply — the server's drain answers what it has read and
//! then half-closes, so a request sent after that was never taken; the
//! client reconnects and sends it again (counted as `resent`). A reset, a
//! refused or failed connect, a wrong reply or no reply within the timeout
//! is an error. A churning client's one request is sent with the connect,
//! so an end of stream before its reply is an error too.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a client waits for a connect or a reply before it counts an
/// error (a stall is an error too, and bounds every loop).
const WAIT: Duration = Duration::from_secs(5);

/// Counters of a run, shared by its clients.
#[derive(Default, Debug)]
pub struct Counts {
    pub connections: AtomicU64,
    pub replies: AtomicU64,
    pub resent: AtomicU64,
    pub refused: AtomicU64,
    pub resets: AtomicU64,
    pub wrong: AtomicU64,
    /// End of stream before the reply to a request sent with the connect.
    pub lost: AtomicU64,
    /// Connect or reply timeouts, and other I/O errors.
    pub other: AtomicU64,
    /// The first few errors, for the failure message.
    pub samples: Mutex<Vec<String>>,
}

impl Counts {
    pub fn errors(&self) -> u64 {
        [
            &self.refused,
            &self.resets,
            &self.wrong,
            &self.lost,
            &self.other,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn error(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        if s.len() < 10 {
            s.push(what);
        }
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "connections={} replies={} resent_after_clean_eof={} refused={} resets={} wrong={} lost={} other={}",
            g(&self.connections),
            g(&self.replies),
            g(&self.resent),
            g(&self.refused),
            g(&self.resets),
            g(&self.wrong),
            g(&self.lost),
            g(&self.other)
        )
    }
}

/// Running clients; [`Load::stop`] ends them and returns the counts.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counts: Arc<Counts>,
}

impl Load {
    /// Starts `churn` churning and `keep` kept-alive clients against
    /// `addr`, and waits (bounded) until they have had 2,000 replies.
    pub fn start(addr: SocketAddr, churn: usize, keep: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        for id in 0..churn + keep {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            let kept = id >= churn;
            threads.push(
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        if kept {
                            ping_pong(addr, id, &stop, &counts)
                        } else {
                            churn_loop(addr, id, &stop, &counts)
                        }
                    })
                    .expect("spawn a client"),
            );
        }
        let load = Load {
            stop,
            threads,
            counts,
        };
        assert!(
            load.wait_replies(2_000, super::DEADLINE),
            "the load did not get going: {}",
            load.counts.summary()
        );
        load
    }

    /// Waits (bounded) until the clients have had `replies` more replies.
    pub fn wait_replies(&self, more: u64, limit: Duration) -> bool {
        let start = self.counts.replies.load(Ordering::Relaxed);
        super::wait_until(limit, || {
            self.counts.replies.load(Ordering::Relaxed) >= start + more || self.counts.errors() > 0
        })
    }

    /// Stops every client (each finishes its exchange in progress,
    /// bounded by the reply timeout), prints `what` with the counts (the
    /// figures docs/DEPLOY.md quotes) and asserts that nothing went wrong.
    pub fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let counts = self.counts;
        println!("{what}: {}", counts.summary());
        assert_eq!(
            counts.errors(),
            0,
            "{what}: {}; first errors: {:?}",
            counts.summary(),
            counts.samples.lock().unwrap()
        );
    }
}

fn connect(addr: SocketAddr, counts: &Counts) -> Option<TcpStream> {
    match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(s) => {
            s.set_read_timeout(Some(WAIT)).ok()?;
            s.set_write_timeout(Some(WAIT)).ok()?;
            counts.connections.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            counts.error(&counts.refused, format!("connect: {e}"));
            None
        }
        Err(e) => {
            counts.error(&counts.other, format!("connect: {e}"));
            None
        }
    }
}

/// What reading one reply gave.
enum Got {
    Reply,
    /// A clean end of stream where the reply would be.
    Eof,
    Failed,
}

/// Sends `request` and reads its reply, counting what went wrong.
fn exchange(reader: &mut BufReader<TcpStream>, request: &str, counts: &Counts) -> Got {
    let classify = |e: std::io::Error, when: &str| {
        let what = format!("{when} {request:?}: {e}");
        match e.kind() {
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                counts.error(&counts.resets, what)
            }
            _ => counts.error(&counts.other, what),
        }
        Got::Failed
    };
    if let Err(e) = reader
        .get_mut()
        .write_all(format!("{request}\n").as_bytes())
    {
        return classify(e, "write");
    }
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Got::Eof,
        Ok(_) if line.trim_end() == request.to_ascii_uppercase() => {
            counts.replies.fetch_add(1, Ordering::Relaxed);
            Got::Reply
        }
        Ok(_) => {
            counts.error(&counts.wrong, format!("{request:?} got {line:?}"));
            Got::Failed
        }
        Err(e) => classify(e, "read"),
    }
}

fn churn_loop(addr: SocketAddr, id: usize, stop: &AtomicBool, counts: &Counts) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = connect(addr, counts) else {
            // Counted; do not spin on a dead server.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let request = format!("churn-{id}-{seq}");
        seq += 1;
        if let Got::Eof = exchange(&mut BufReader::new(s), &request, counts) {
            counts.error(
                &counts.lost,
                format!("{request:?}: end of stream, no reply"),
            );
        }
    }
}

fn ping_pong(addr: SocketAddr, id: usize, stop: &AtomicBool, counts: &Counts) {
    let mut seq = 0u64;
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let reader = match conn.as_mut() {
            Some(r) => r,
            None => match connect(addr, counts) {
                Some(s) => conn.insert(BufReader::new(s)),
                None => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let request = format!("keep-{id}-{seq}");
        match exchange(reader, &request, counts) {
            Got::Reply => seq += 1,
            Got::Eof => {
                // The drain's clean end: this request was not taken.
                counts.resent.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Got::Failed => conn = None,
        }
        // Pace the kept-alive clients (a request a millisecond each at
        // most): unpaced, 100 of them against a thread per connection
        // starve everything else on a small machine, the processes under
        // test included.
        std::thread::sleep(Duration::from_millis(1));
    }
}
