//! Zero-downtime binary upgrade of `sockserv serve`, black-box: the binary
//! is copied into a temporary directory and started from there, like an
//! installed one, so a test can deploy over it in place (a new file
//! renamed over the old, a new inode) or put a failing script there.
//!
//! The test process makes itself a child subreaper, so every successor is
//! adopted by it once its parent has exited, and every old process's exit
//! status can be read — not only the first one's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::Load;
use common::{cli_bin, wait_until, TempDir, DEADLINE};

/// Every process a test starts, and the successors they start, end up
/// children of the test process when their parent exits.
fn adopt_orphans() {
    // SAFETY: prctl with an integer argument; affects this process only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// How a process ended, once it has (`None`: not within `limit`). Waits
/// for a process the test started or adopted; before its adoption (its
/// parent still draining) waitpid reports ECHILD, and the wait goes on.
fn wait_exit(pid: i32, limit: Duration) -> Option<i32> {
    let mut status = 0;
    let done = wait_until(limit, || {
        // SAFETY: waitpid on one pid, without blocking.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
    });
    done.then_some(status)
}

fn exited_zero(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// A sockserv installed in a directory of its own.
struct Deployed {
    dir: TempDir,
    bin: PathBuf,
}

impl Deployed {
    fn new(tag: &str) -> Deployed {
        let dir = TempDir::new(tag);
        let bin = dir.join("sockserv");
        let d = Deployed { dir, bin };
        d.install(Path::new(cli_bin()));
        d
    }

    /// An in-place deploy: a copy of `from` renamed over the installed
    /// file (the running process keeps the old inode; `/proc/PID/exe`
    /// would name that one). `cp` writes the copy: had this process
    /// written it, a child another test forks at that moment could hold
    /// the file open for writing, and exec it would fail (ETXTBSY).
    fn install(&self, from: &Path) {
        let tmp = self.dir.join("sockserv.new");
        let ok = Command::new("cp")
            .arg(from)
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cp {from:?} {tmp:?}");
        std::fs::rename(&tmp, &self.bin).expect("rename over the installed binary");
    }

    /// Puts a shell script where the binary was.
    fn install_script(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let src = self.dir.join("script");
        std::fs::write(&src, body).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.install(&src);
    }
}

/// A `sockserv serve` and its successors: stdout and stderr are shared by
/// all of them (inherited), `pid` is the one serving now.
struct Service {
    pid: i32,
    port: u16,
    log: Arc<Mutex<String>>,
    _stdout: mpsc::Receiver<String>,
}

impl Service {
    fn start(dep: &Deployed, args: &[&str]) -> Service {
        // Reaped by pid (`wait_exit`), as its successors are: std's wait
        // cannot wait for those.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(&dep.bin)
            .arg("serve")
            .arg("-v")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockserv serve");
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no `listening` line; log: {}", log.lock().unwrap()));
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Service {
            pid: child.id() as i32,
            port,
            log,
            _stdout: rx,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log holds `n` lines containing `needle`.
    fn wait_log(&self, needle: &str, n: usize, limit: Duration) -> bool {
        wait_until(limit, || self.log().matches(needle).count() >= n)
    }

    fn signal(&self, sig: libc::c_int) {
        common::signal_pid(self.pid as u32, sig);
    }

    /// `sockserv upgrade --pid PID` (the cargo-built binary: the installed
    /// file may be a failing script): exit code and output.
    fn upgrade_command(&self) -> common::Finished {
        // The command's default timeout (40 s) outlasts the server's
        // --upgrade-timeout (30 s): a successor that never gets ready is
        // reported by the server, in its log, not as silence.
        common::run_cli(
            &["upgrade", "--pid", &self.pid.to_string()],
            Duration::from_secs(50),
        )
    }

    /// An upgrade by `sockserv upgrade` that must succeed, and the old
    /// process's exit 0 after it.
    fn upgrade_ok(&mut self) {
        let old = self.pid;
        let out = self.upgrade_command();
        assert_eq!(
            out.code(),
            Some(0),
            "{out:?}; log: {}; {}",
            self.log(),
            threads_of(old)
        );
        self.pid = new_pid(&out.stdout);
        let status = wait_exit(old, DEADLINE).expect("the old process exits");
        assert!(exited_zero(status), "status {status:#x}");
    }

    /// One line through the server now.
    fn served(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), DEADLINE) else {
            return false;
        };
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"still here\n").unwrap();
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line == "STILL HERE\n"
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if wait_exit(self.pid, Duration::from_secs(10)).is_none() {
            self.signal(libc::SIGKILL);
            let _ = wait_exit(self.pid, Duration::from_secs(2));
        }
    }
}

/// The seed's server on a free port, line by line.
const UPPER: &[&str] = &[
    "--handler",
    "upper",
    "--framing",
    "line",
    "tcp://127.0.0.1:0",
];

/// What each thread of `pid` is doing (name, state, kernel wait
/// channel), for a failure message about a process that did not answer.
fn threads_of(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("pid {pid} is gone");
    };
    let mut out = format!("threads of pid {pid}:");
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = read("stat")
            .split(") ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?")
            .to_string();
        out.push_str(&format!(
            " [{} {} {}]",
            read("comm").trim(),
            state,
            read("wchan").trim()
        ));
    }
    out
}

/// The new pid from `upgraded: pid OLD handed over to pid NEW, and drains`.
fn new_pid(out: &str) -> i32 {
    out.split("to pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {out:?}"))
}

/// The acceptance test: 50 clients churning and 100 ping-ponging on kept
/// connections while five upgrades run in a row, each a real exec of a
/// freshly deployed file: nothing refused, reset, lost or wrong, and every
/// old process exits 0 after its drain.
#[test]
fn five_upgrades_under_load_refuse_nothing_async() {
    five_upgrades_under_load("async");
}

/// The same with a thread per connection: the serving thread accepts,
/// and its drain is the one that must leave the listener alone.
#[test]
fn five_upgrades_under_load_refuse_nothing_threads() {
    five_upgrades_under_load("threads");
}

fn five_upgrades_under_load(mode: &str) {
    // One load at a time: two would starve each other (and every other
    // test here) on a small machine.
    static ONE_LOAD: Mutex<()> = Mutex::new(());
    let _one = ONE_LOAD.lock().unwrap_or_else(|p| p.into_inner());
    adopt_orphans();
    let dep = Deployed::new("upg-load");
    let mut svc = Service::start(&dep, &[UPPER, &["--mode", mode]].concat());
    let load = Load::start(svc.addr(), 50, 100);
    let began = Instant::now();
    let mut timings = Vec::new();
    for round in 0..5 {
        dep.install(Path::new(cli_bin()));
        let old = svc.pid;
        let t = Instant::now();
        // Alternately the command (which waits for the answer) and a plain
        // SIGUSR2 (then the old process's log says who took over).
        let new = if round % 2 == 0 {
            let out = svc.upgrade_command();
            assert_eq!(
                out.code(),
                Some(0),
                "upgrade {round}: {out:?}; log: {}; {}",
                svc.log(),
                threads_of(old)
            );
            new_pid(&out.stdout)
        } else {
            let before = svc.log().matches(" is serving; this process").count();
            svc.signal(libc::SIGUSR2);
            assert!(
                svc.wait_log(" is serving; this process", before + 1, DEADLINE),
                "upgrade {round}: no handover; log: {}",
                svc.log()
            );
            let log = svc.log();
            let line = log
                .lines()
                .rfind(|l| l.contains(" is serving; this process"))
                .unwrap();
            line.split("upgrade: pid ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {line:?}"))
        };
        let ready = t.elapsed();
        // The file on disk was executed, not the old inode.
        let exe = std::fs::read_link(format!("/proc/{new}/exe")).unwrap();
        assert_eq!(exe, dep.bin, "upgrade {round}: pid {new} runs {exe:?}");
        svc.pid = new;
        let status = wait_exit(old, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("old pid {old} did not exit; log: {}", svc.log()));
        assert!(
            exited_zero(status),
            "old pid {old} ended with status {status:#x}"
        );
        let exited = t.elapsed();
        timings.push((ready, exited));
        assert!(
            load.wait_replies(1_000, DEADLINE),
            "upgrade {round}: the load stalled: {}",
            load.counts.summary()
        );
    }
    load.finish(&format!(
        "{mode}: five upgrades in {:?} under 50 churning + 100 kept-alive clients; \
         per upgrade (successor ready, old process exited 0): {timings:?}",
        began.elapsed()
    ));
    assert!(svc.served());
}

/// A successor that exits at once leaves the old process serving, with
/// the reason in its log and a failure from `sockserv upgrade`; with the
/// real binary back in place the next upgrade works.
#[test]
fn a_successor_that_exits_at_once_leaves_the_old_serving() {
    adopt_orphans();
    let dep = Deployed::new("upg-fail");
    let mut svc = Service::start(&dep, UPPER);
    dep.install_script("#!/bin/sh\nexit 3\n");
    let out = svc.upgrade_command();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("failed"), "{out:?}");
    assert!(
        svc.wait_log(
            "exited before it was ready (exit status 3); still serving",
            1,
            DEADLINE
        ),
        "{}",
        svc.log()
    );
    assert!(svc.served(), "the old process serves on");

    dep.install(Path::new(cli_bin()));
    svc.upgrade_ok();
    assert!(svc.served(), "the new process serves");
}

/// A second SIGUSR2 while an upgrade waits for its successor is ignored
/// with a log line (and `sockserv upgrade` is told so); a successor not
/// ready within --upgrade-timeout is stopped and the old process serves on.
#[test]
fn a_second_upgrade_during_one_is_ignored_and_a_slow_successor_stopped() {
    adopt_orphans();
    let dep = Deployed::new("upg-busy");
    let svc = Service::start(&dep, &[UPPER, &["--upgrade-timeout", "2s"]].concat());
    // Holds the sockets, never reports ready.
    dep.install_script("#!/bin/sh\nexec sleep 30\n");
    svc.signal(libc::SIGUSR2);
    assert!(
        svc.wait_log("upgrade: started", 1, DEADLINE),
        "{}",
        svc.log()
    );
    svc.signal(libc::SIGUSR2);
    assert!(
        svc.wait_log(
            "upgrade request ignored: an upgrade is already in progress",
            1,
            DEADLINE
        ),
        "{}",
        svc.log()
    );
    let out = svc.upgrade_command();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("already in progress"), "{out:?}");
    assert!(svc.served(), "serving while the upgrade waits");
    assert!(
        svc.wait_log(
            "was not ready within 2s (--upgrade-timeout); still serving",
            1,
            DEADLINE
        ),
        "{}",
        svc.log()
    );
    let log = svc.log();
    let slow: i32 = log
        .split("as pid ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("the successor's pid in the log");
    assert!(
        wait_until(DEADLINE, || !Path::new(&format!("/proc/{slow}")).exists()),
        "the slow successor {slow} was stopped and reaped"
    );
    assert!(svc.served(), "the old process serves on");
}

/// The successor takes LISTEN_FDS and the handoff variable and removes
/// them: the programs it runs per connection see none of them.
#[test]
fn the_successors_programs_see_no_handoff_variables() {
    adopt_orphans();
    let dep = Deployed::new("upg-env");
    let mut svc = Service::start(
        &dep,
        &[
            "tcp://127.0.0.1:0",
            "--exec",
            "sh",
            "-c",
            "echo \"${LISTEN_FDS-unset} ${LISTEN_PID-unset} ${LISTEN_FDNAMES-unset} ${SOCKSERV_UPGRADE-unset}\"",
        ],
    );
    svc.upgrade_ok();
    let mut s = TcpStream::connect_timeout(&svc.addr(), DEADLINE).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    assert_eq!(line, "unset unset unset unset\n", "log: {}", svc.log());
}

/// A Unix socket is handed over like a TCP one: its file stays (the old
/// process must not remove what the successor serves on) and the successor
/// serves on it.
#[test]
fn a_unix_socket_is_handed_over_and_its_file_kept_then_removed_at_the_end() {
    adopt_orphans();
    let dep = Deployed::new("upg-unix");
    let path = dep.dir.join("s.sock");
    let unix = format!("unix://{}", path.display());
    let mut svc = Service::start(&dep, &[UPPER, &[unix.as_str()]].concat());
    svc.upgrade_ok();
    assert!(path.exists(), "the socket file is still there");
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect to the new process");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"unix\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_eq!(line, "UNIX\n");
    assert!(svc.served(), "and the TCP listener");
    // The file is the successor's now: removed at its end.
    svc.signal(libc::SIGTERM);
    let status = wait_exit(svc.pid, DEADLINE).expect("the successor exits");
    assert!(exited_zero(status), "status {status:#x}");
    assert!(
        !path.exists(),
        "the successor removes the socket file at its end"
    );
    // Reaped already: nothing left for Drop to stop.
    std::mem::forget(svc);
}

/// `GET /readyz` on `addr`: the status code, or what went wrong.
fn readyz(addr: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

/// With `--admin` on a fixed port the admin socket is handed over too: a
/// health check polling `/readyz` through an upgrade is answered 200 every
/// time — before, during and after — never refused, never 503.
#[test]
fn a_fixed_admin_port_answers_ready_throughout_an_upgrade() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    adopt_orphans();
    let dep = Deployed::new("upg-admin");
    let admin = format!("127.0.0.1:{}", common::free_port());
    let mut svc = Service::start(&dep, &[UPPER, &["--admin", admin.as_str()]].concat());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let poller = {
        let (stop, ok, bad, admin) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&bad),
            admin.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match readyz(&admin) {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => bad
                        .lock()
                        .unwrap()
                        .push(format!("{other:?} at {:?}", std::time::SystemTime::now())),
                }
            }
        })
    };
    assert!(wait_until(DEADLINE, || ok.load(Ordering::Relaxed) >= 20));
    let old = svc.pid;
    svc.upgrade_ok();
    let after = ok.load(Ordering::Relaxed);
    assert!(wait_until(DEADLINE, || ok.load(Ordering::Relaxed) >= after + 20));
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let bad = bad.lock().unwrap();
    println!(
        "admin on {admin} through the upgrade of pid {old}: {} checks answered 200, {} not: {:?}",
        ok.load(Ordering::Relaxed),
        bad.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
    assert!(bad.is_empty(), "{:?}; log: {}", *bad, svc.log());
}

/// A server of a config file is upgraded too: the successor (same
/// arguments: `--config FILE`) takes the sockets one per [[listener]] in
/// file order, named or not, and each listener keeps its own handler.
#[test]
fn a_config_files_listeners_keep_their_handlers_across_an_upgrade() {
    adopt_orphans();
    let dep = Deployed::new("upg-config");
    let config = dep.dir.join("sockserv.toml");
    std::fs::write(
        &config,
        "framing = \"line\"\n\n\
         [[listener]]\nname = \"shout\"\naddress = \"tcp://127.0.0.1:0\"\nhandler = \"upper\"\n\n\
         [[listener]]\naddress = \"tcp://127.0.0.1:0\"\nhandler = \"echo\"\n",
    )
    .unwrap();
    let mut svc = Service::start(&dep, &["--config", config.to_str().unwrap()]);
    let second = svc
        ._stdout
        .recv_timeout(DEADLINE)
        .expect("a second `listening` line");
    let echo_port: u16 = second.rsplit(':').next().unwrap().parse().unwrap();
    let echo = SocketAddr::from(([127, 0, 0, 1], echo_port));
    let ask = |addr: SocketAddr| {
        let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"still here\n").unwrap();
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line
    };
    assert_eq!(ask(echo), "still here\n");
    svc.upgrade_ok();
    assert!(svc.served(), "the first listener answers upper-cased");
    assert_eq!(ask(echo), "still here\n", "the second listener echoes");
    assert!(
        svc.log().contains(" is serving; this process"),
        "{}",
        svc.log()
    );
}

/// `sockserv upgrade` signals only a `sockserv serve`: SIGUSR2 would kill
/// another program, so a wrong pid is refused and nothing is sent.
#[test]
fn the_upgrade_command_signals_no_other_program() {
    let mut other = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let out = common::run_cli(&["upgrade", "--pid", &other.id().to_string()], DEADLINE);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("is not a sockserv serve") && out.stderr.lines().count() == 1,
        "{out:?}"
    );
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other program was not signalled"
    );
    let _ = other.kill();
    let _ = other.wait();
    let gone = common::run_cli(&["upgrade", "--pid", "999999999"], DEADLINE);
    assert_eq!(gone.code(), Some(1), "{gone:?}");
    assert!(gone.stderr.contains("no such process"), "{gone:?}");
}
