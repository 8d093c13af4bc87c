//! Log output that never blocks serving.
//!
//! The engine logs from its accept and event-loop threads. Had they written
//! to stderr themselves, a stderr nobody reads (a full pipe) would stop them
//! in `write(2)`: no more accepting, no reaction to SIGTERM. So a log line is
//! only queued (a bounded queue, [`QUEUE_LINES`] lines) and a writer thread
//! of its own writes it out (`tracing-appender`'s non-blocking writer). When
//! the queue is full the line is dropped and counted; the writer thread
//! reports the count in a line of its own, where the gap is, as soon as it
//! can write again.
//!
//! At exit the queue is flushed (bounded by the writer's own one-second
//! wait), unless the writer thread has been stuck in one write for a while:
//! then nothing more can be written and the process does not wait for it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// Log lines the queue holds before new ones are dropped.
pub const QUEUE_LINES: usize = 8192;

/// How long the writer thread may be in one write at exit before the
/// process stops waiting for it.
const STUCK: Duration = Duration::from_millis(100);

/// What the writer thread and the exit share.
struct Shared {
    /// The count of lines dropped at the full queue (set once, right after
    /// the queue is made).
    dropped: OnceLock<ErrorCounter>,
    /// How many of those have been reported.
    reported: AtomicUsize,
    /// When the write in progress began, in milliseconds since `epoch`
    /// plus one; 0 when the writer thread is not writing.
    writing_since: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// True when the writer thread has been in one write for [`STUCK`].
    fn stuck(&self) -> bool {
        let since = self.writing_since.load(Ordering::Acquire);
        since != 0 && self.now_ms().saturating_sub(since) >= STUCK.as_millis() as u64
    }
}

/// The writer thread's end: standard error, with the report of dropped
/// lines put in before the next line that gets through.
struct Stderr {
    shared: Arc<Shared>,
}

impl Stderr {
    fn emit(&self, buf: &[u8]) -> io::Result<()> {
        self.shared
            .writing_since
            .store(self.shared.now_ms(), Ordering::Release);
        let result = io::stderr().lock().write_all(buf);
        self.shared.writing_since.store(0, Ordering::Release);
        result
    }

    fn report_drops(&self) -> io::Result<()> {
        let Some(counter) = self.shared.dropped.get() else {
            return Ok(());
        };
        let dropped = counter.dropped_lines();
        let reported = self.shared.reported.load(Ordering::Acquire);
        if dropped <= reported {
            return Ok(());
        }
        self.shared.reported.store(dropped, Ordering::Release);
        let mut line = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        line.push_str(&format!(
            "  WARN dropped {} log line{}: standard error was not read fast enough\n",
            dropped - reported,
            if dropped - reported == 1 { "" } else { "s" }
        ));
        self.emit(line.as_bytes())
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.report_drops()?;
        self.emit(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Keeps the writer thread for the life of the process; dropping it
/// flushes the queue (see the module docs).
#[must_use = "logging stops when the guard is dropped"]
pub struct LogGuard {
    worker: Option<WorkerGuard>,
    shared: Arc<Shared>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            if self.shared.stuck() {
                // Nobody reads stderr: what is queued cannot be written, and
                // the worker's own shutdown would wait (and complain on
                // stdout) for nothing.
                std::mem::forget(worker);
            } else {
                drop(worker);
            }
        }
    }
}

/// Logs go to stderr; quiet by default (warnings and errors), `-v` for
/// info, `-vv` for debug. `RUST_LOG` overrides.
pub fn init(verbose: u8) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let shared = Arc::new(Shared {
        dropped: OnceLock::new(),
        reported: AtomicUsize::new(0),
        writing_since: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("sockserv-log")
        .finish(Stderr {
            shared: Arc::clone(&shared),
        });
    let _ = shared.dropped.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    LogGuard {
        worker: Some(worker),
        shared,
    }
}
