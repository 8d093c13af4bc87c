//! Sockets against another process on the same machine: a second server on
//! the same UDP address.
//!
//! Self-contained (no shared test helpers).

use std::time::Duration;

use sockserv::frame::Framing;
use sockserv::handlers::Echo;
use sockserv::{Endpoint, Server, SocketOptions, Strategy};

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
    SocketOptions {
        reuse_port: true,
        ..SocketOptions::default()
    }
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
