//! `Builder::connected`: a server of the one connection it is given (what
//! `sockserv serve --inetd` is built on): served through the normal
//! pipeline on the serving thread, checked by the access rules, refused
//! when the descriptor is not a connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sockserv::frame::Framing;
use sockserv::{handlers, Rules, Server};

#[test]
fn serves_its_one_connection_then_returns() {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let server = Server::builder()
        .connected(theirs.into())
        .message(handlers::Upper)
        .framing(Framing::line())
        .bind()
        .unwrap();
    let serving = std::thread::spawn(move || server.serve_forever());
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ours.write_all(b"one\ntwo\n").unwrap();
    ours.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    ours.read_to_string(&mut got).unwrap();
    assert_eq!(got, "ONE\nTWO\n");
    assert!(serving.join().unwrap().is_ok(), "returns once it has ended");
}

#[test]
fn the_access_rules_apply_to_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let server = Server::builder()
        .connected(accepted.into())
        .rules(Rules::new().deny("127.0.0.0/8".parse().unwrap()))
        .message(handlers::Echo)
        .bind()
        .unwrap();
    // Refused: closed without a byte, and serving returns at once.
    server.serve_forever().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = client.write_all(b"x");
    let mut buf = [0u8; 8];
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn a_listener_or_a_listen_beside_it_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Server::builder()
        .connected(listener.into())
        .message(handlers::Echo)
        .bind()
        .unwrap_err();
    assert!(err.to_string().contains("a listening socket"), "{err}");
    let (_, theirs) = UnixStream::pair().unwrap();
    let err = Server::builder()
        .connected(theirs.into())
        .listen("tcp://127.0.0.1:0")
        .message(handlers::Echo)
        .bind()
        .unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("no .listen()"),
        "{err}"
    );
}
