//! Sockets against another process on the same machine: a second server on
//! the same UDP address, and files put at a server's Unix socket path.
//!
//! Self-contained (no shared test helpers). Every wait is bounded; nothing
//! sleeps to synchronise.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sockserv::frame::Framing;
use sockserv::handlers::Echo;
use sockserv::{Client, Endpoint, Handled, Server, SocketOptions, Strategy};

const DEADLINE: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockserv-hostile-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An echo server on `listen`, not yet serving; `handle_request` waits at
/// most 100 ms for each request.
fn bind(listen: &str, options: SocketOptions) -> Result<Server, sockserv::Error> {
    Server::builder()
        .listen(listen)
        .strategy(Strategy::Sequential)
        .framing(Framing::line())
        .socket_options(options)
        .timeout(Duration::from_millis(100))
        .message(Echo)
        .bind()
}

fn reuse_port() -> SocketOptions {
    SocketOptions::default().reuse_port(true)
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// One echo round trip through `server`: a client on another thread, the
/// server's `handle_request` here until it has served it.
fn round_trip(server: &mut Server) {
    let ep = server.local_endpoint().clone();
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(&ep, Framing::line()).expect("connect");
        c.set_timeout(Some(DEADLINE)).unwrap();
        c.request(b"still here").expect("a reply")
    });
    let end = Instant::now() + DEADLINE;
    let mut handled = Handled::Timeout;
    while handled == Handled::Timeout && Instant::now() < end {
        handled = server.handle_request().expect("handle_request");
    }
    assert_eq!(handled, Handled::Request, "no request reached the server");
    assert_eq!(client.join().expect("client thread"), b"still here");
}

fn expect_in_use(result: Result<Server, sockserv::Error>, ep: &Endpoint) {
    let err = match result {
        Ok(s) => panic!("a second server bound {ep} (as {})", s.local_endpoint()),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text:?}");
    assert!(text.contains(&ep.to_string()), "no address in {text:?}");
    assert!(text.contains("address already in use"), "{text:?}");
}

// ---- UDP port takeover ----

#[test]
fn second_udp_bind_of_an_address_in_use_fails() {
    let first = bind("udp://127.0.0.1:0", SocketOptions::default()).unwrap();
    let ep = first.local_endpoint().clone();
    expect_in_use(bind(&ep.to_string(), SocketOptions::default()), &ep);
    // One side asking for reuse-port is not enough.
    expect_in_use(bind(&ep.to_string(), reuse_port()), &ep);
}

#[test]
fn udp_sockets_share_an_address_with_reuse_port_on_both() {
    let first = bind("udp://127.0.0.1:0", reuse_port()).unwrap();
    let ep = first.local_endpoint().clone();
    let second = bind(&ep.to_string(), reuse_port()).expect("both asked for reuse-port");
    assert_eq!(second.local_endpoint(), &ep);
    // And a third without it is still refused.
    expect_in_use(bind(&ep.to_string(), SocketOptions::default()), &ep);
}

#[test]
fn second_tcp_listener_on_an_address_in_use_fails() {
    // TCP keeps SO_REUSEADDR, which on Linux skips TIME_WAIT but allows no
    // second live listener.
    let first = bind("tcp://127.0.0.1:0", SocketOptions::default()).unwrap();
    let ep = first.local_endpoint().clone();
    expect_in_use(bind(&ep.to_string(), SocketOptions::default()), &ep);
}

// ---- the socket file removed at exit must still be ours ----

/// A's file is removed, B binds the same path, A exits: B's file stays and
/// B still serves.
fn successor_keeps_its_socket_file(scheme: &str) {
    let dir = TempDir::new("successor");
    let path = dir.join("s.sock");
    let listen = format!("{scheme}://{}", path.display());
    let a = bind(&listen, SocketOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut b = bind(&listen, SocketOptions::default()).expect("the path is free again");
    drop(a);
    assert!(
        is_socket(&path),
        "{listen}: the first server removed the second one's socket file"
    );
    round_trip(&mut b);
    drop(b);
    assert!(
        !path.exists(),
        "{listen}: the second server left its own file behind"
    );
}

#[test]
fn unix_successor_keeps_its_socket_file() {
    successor_keeps_its_socket_file("unix");
}

#[test]
fn unix_dgram_successor_keeps_its_socket_file() {
    successor_keeps_its_socket_file("unix-dgram");
}

/// The socket file is replaced by a regular file: it survives the server.
fn regular_file_at_the_path_survives(scheme: &str) {
    let dir = TempDir::new("regular");
    let path = dir.join("s.sock");
    let listen = format!("{scheme}://{}", path.display());
    let server = bind(&listen, SocketOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's data").unwrap();
    drop(server);
    assert_eq!(
        std::fs::read(&path).expect("the regular file was deleted"),
        b"someone else's data",
        "{listen}"
    );
}

#[test]
fn unix_regular_file_at_the_path_survives() {
    regular_file_at_the_path_survives("unix");
}

#[test]
fn unix_dgram_regular_file_at_the_path_survives() {
    regular_file_at_the_path_survives("unix-dgram");
}

/// The socket file is moved away and a symlink to it put at the path: the
/// symlink is not the file that was bound (lstat, not stat), so it stays.
fn symlink_at_the_path_survives(scheme: &str) {
    let dir = TempDir::new("symlink");
    let path = dir.join("s.sock");
    let moved = dir.join("moved.sock");
    let listen = format!("{scheme}://{}", path.display());
    let server = bind(&listen, SocketOptions::default()).unwrap();
    std::fs::rename(&path, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &path).unwrap();
    drop(server);
    assert!(
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()),
        "{listen}: the symlink was removed"
    );
}

#[test]
fn unix_symlink_at_the_path_survives() {
    symlink_at_the_path_survives("unix");
}

#[test]
fn unix_dgram_symlink_at_the_path_survives() {
    symlink_at_the_path_survives("unix-dgram");
}
