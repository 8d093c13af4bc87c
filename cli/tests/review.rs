//! Behaviours a first-time user meets at the edges: a stale Unix socket
//! file, a large upload through `sockserv send`, a handler stopping its own
//! server under every strategy, and the listening lines' order.

mod common;

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{run_cli, run_with_input, serve, strategies, wait_until, ChildGuard, TempDir};
use sockserv::handler::message_fn;
use sockserv::{Server, ShutdownHandle};

#[test]
fn a_stale_unix_socket_file_is_replaced_but_a_live_one_is_refused() {
    let dir = TempDir::new("stale");
    let path = dir.join("s.sock");
    // A listener that goes away without removing its file: a crashed server.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let addr = format!("unix://{}", path.display());
    let mut server = ChildGuard::serve(&["--handler", "echo", &addr], 1);
    let reply = run_cli(&["send", &addr, "still here"], Duration::from_secs(10));
    assert_eq!(reply.code(), Some(0), "{}", reply.stderr);
    assert_eq!(reply.stdout, "still here\n");

    // While that server runs, a second one on the same path is refused.
    let second = run_cli(&["serve", &addr], Duration::from_secs(10));
    assert_eq!(second.code(), Some(1));
    assert!(
        second.stderr.contains("in use by a running server"),
        "{}",
        second.stderr
    );
    assert_eq!(second.stderr.lines().count(), 1, "{}", second.stderr);
    let (status, _) = server.terminate_with(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(!path.exists(), "the socket file is removed at exit");
}

#[test]
fn send_streams_a_large_input_through_an_echo_server() {
    let mut server = ChildGuard::serve(&["--handler", "echo", "tcp://127.0.0.1:0"], 1);
    let addr = server.listening[0].clone();
    // 8 MiB: far more than the socket buffers hold, so writing everything
    // before reading would deadlock.
    let input: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut cmd = std::process::Command::new(common::cli_bin());
    cmd.args(["send", &addr]);
    let out = run_with_input(&mut cmd, Some(&input), Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout.as_bytes() == input.as_slice());
    let (status, _) = server.terminate_with(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_handler_can_stop_its_own_server_in_every_strategy() {
    for strategy in strategies() {
        let slot: Arc<Mutex<Option<ShutdownHandle>>> = Arc::new(Mutex::new(None));
        let in_handler = Arc::clone(&slot);
        let builder = Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .message(message_fn(move |msg, reply| {
                if msg == b"stop" {
                    if let Some(h) = in_handler.lock().unwrap().as_ref() {
                        // Must not wait for its own thread to finish.
                        h.shutdown();
                    }
                }
                reply.send(msg)?;
                Ok(())
            }));
        let mut running = serve(builder);
        *slot.lock().unwrap() = Some(running.handle.clone());
        let mut client =
            sockserv::Client::connect(&running.endpoint, sockserv::frame::Framing::raw()).unwrap();
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(client.request(b"stop").unwrap(), b"stop", "{strategy}");
        let join = running.join.take().unwrap();
        assert!(
            wait_until(Duration::from_secs(15), || join.is_finished()),
            "{strategy}: serve_forever did not return after a handler asked it to stop"
        );
        join.join().unwrap().unwrap();
    }
}

#[test]
fn listening_lines_follow_the_order_of_the_addresses() {
    let dir = TempDir::new("order");
    let unix = format!("unix://{}", dir.join("o.sock").display());
    let mut server = ChildGuard::serve(
        &[
            "--handler",
            "echo",
            "udp://127.0.0.1:0",
            "tcp://127.0.0.1:0",
            &unix,
        ],
        3,
    );
    assert!(
        server.listening[0].starts_with("udp://127.0.0.1:"),
        "{:?}",
        server.listening
    );
    assert!(
        server.listening[1].starts_with("tcp://127.0.0.1:"),
        "{:?}",
        server.listening
    );
    assert_eq!(server.listening[2], unix);
    for addr in server.listening.clone() {
        let out = run_cli(&["send", &addr, "ping"], Duration::from_secs(10));
        assert_eq!(out.code(), Some(0), "{addr}: {}", out.stderr);
        assert!(out.stdout.starts_with("ping"), "{addr}: {:?}", out.stdout);
    }
    let (status, _) = server.terminate_with(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}
