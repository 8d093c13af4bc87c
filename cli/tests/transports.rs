//! Echo round-trips over every transport in every mode, through the library
//! API: TCP and UDP over IPv4 and IPv6, Unix stream and Unix datagram
//! sockets; dual stack; port 0 resolved.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{have_ipv6, serve, TempDir, DEADLINE};
use sockserv::frame::Framing;
use sockserv::handlers::Echo;
use sockserv::{Client, Endpoint, Server, SocketOptions, Strategy, Transport};

/// Where a test listens: an IP address, or a Unix path in a temp dir.
enum Addr {
    Inet(&'static str),
    Unix(&'static str),
}

/// Binds an echo server on `addr` with `strategy`, checks that the bound
/// endpoint is real (port 0 resolved), does three round-trips with two
/// clients, shuts down, and checks a Unix socket's file is removed.
fn echo_roundtrip(addr: Addr, strategy: Strategy) {
    let dir = TempDir::new("echo");
    let listen = match addr {
        Addr::Inet(a) => a.to_string(),
        Addr::Unix(scheme) => format!("{scheme}://{}", dir.join("s.sock").display()),
    };
    let requested: Endpoint = listen.parse().unwrap();
    if requested.host_port().is_some_and(|hp| hp.host() == "::1") && !have_ipv6() {
        eprintln!("skipping {listen}: no IPv6 on this machine");
        return;
    }
    let server = serve(
        Server::builder()
            .listen(listen.as_str())
            .strategy(strategy)
            .framing(Framing::line())
            .message(Echo),
    );
    let ep = server.endpoint.clone();
    assert_eq!(ep.transport(), requested.transport(), "{ep}");
    match (&requested, &ep) {
        (Endpoint::Tcp(want), Endpoint::Tcp(got)) | (Endpoint::Udp(want), Endpoint::Udp(got)) => {
            assert_eq!(got.host(), want.host(), "{ep}");
            assert_ne!(got.port(), 0, "port 0 not resolved: {ep}");
        }
        (Endpoint::Unix(want), Endpoint::Unix(got))
        | (Endpoint::UnixDgram(want), Endpoint::UnixDgram(got)) => {
            assert_eq!(got, want);
            assert!(got.exists(), "socket file {} missing", got.display());
        }
        _ => panic!("bound {ep} for {requested}"),
    }

    // Sequential serves one connection at a time: finish each client
    // before starting the next.
    for client_no in 0..2 {
        let mut client = Client::connect(&ep, Framing::line()).unwrap();
        client.set_timeout(Some(DEADLINE)).unwrap();
        for i in 0..3 {
            let msg = format!("hello {client_no}.{i} over {listen} ({strategy})");
            let reply = client.request(msg.as_bytes()).unwrap();
            assert_eq!(String::from_utf8_lossy(&reply), msg, "{ep} {strategy}");
        }
    }

    let path = ep.path().map(|p| p.to_path_buf());
    server.stop();
    if let Some(p) = path {
        assert!(!p.exists(), "{} left behind after shutdown", p.display());
    }
}

macro_rules! echo_tests {
    ($($name:ident: $addr:expr, $strategy:expr;)*) => {
        $(
            #[test]
            fn $name() {
                echo_roundtrip($addr, $strategy);
            }
        )*
    };
}

const POOL: Strategy = Strategy::Pool {
    workers: 4,
    queue: 16,
};
const ASYNC: Strategy = Strategy::EventLoops { loops: 2 };

echo_tests! {
    tcp4_sequential: Addr::Inet("tcp://127.0.0.1:0"), Strategy::Sequential;
    tcp4_threads: Addr::Inet("tcp://127.0.0.1:0"), Strategy::Threads;
    tcp4_pool: Addr::Inet("tcp://127.0.0.1:0"), POOL;
    tcp4_async: Addr::Inet("tcp://127.0.0.1:0"), ASYNC;
    tcp6_sequential: Addr::Inet("tcp://[::1]:0"), Strategy::Sequential;
    tcp6_threads: Addr::Inet("tcp://[::1]:0"), Strategy::Threads;
    tcp6_pool: Addr::Inet("tcp://[::1]:0"), POOL;
    tcp6_async: Addr::Inet("tcp://[::1]:0"), ASYNC;
    udp4_sequential: Addr::Inet("udp://127.0.0.1:0"), Strategy::Sequential;
    udp4_threads: Addr::Inet("udp://127.0.0.1:0"), Strategy::Threads;
    udp4_pool: Addr::Inet("udp://127.0.0.1:0"), POOL;
    udp4_async: Addr::Inet("udp://127.0.0.1:0"), ASYNC;
    udp6_sequential: Addr::Inet("udp://[::1]:0"), Strategy::Sequential;
    udp6_threads: Addr::Inet("udp://[::1]:0"), Strategy::Threads;
    udp6_pool: Addr::Inet("udp://[::1]:0"), POOL;
    udp6_async: Addr::Inet("udp://[::1]:0"), ASYNC;
    unix_stream_sequential: Addr::Unix("unix"), Strategy::Sequential;
    unix_stream_threads: Addr::Unix("unix"), Strategy::Threads;
    unix_stream_pool: Addr::Unix("unix"), POOL;
    unix_stream_async: Addr::Unix("unix"), ASYNC;
    unix_dgram_sequential: Addr::Unix("unix-dgram"), Strategy::Sequential;
    unix_dgram_threads: Addr::Unix("unix-dgram"), Strategy::Threads;
    unix_dgram_pool: Addr::Unix("unix-dgram"), POOL;
    unix_dgram_async: Addr::Unix("unix-dgram"), ASYNC;
}

/// Plain std sockets (not sockserv's client) against the server: the
/// wire format is plain lines for TCP, one datagram per reply for UDP.
#[test]
fn std_sockets_as_peers() {
    let server = serve(
        Server::builder()
            .listen("tcp://127.0.0.1:0")
            .listen("udp://127.0.0.1:0")
            .strategy(Strategy::Threads)
            .framing(Framing::line())
            .message(Echo),
    );
    assert_eq!(server.endpoints.len(), 2);
    let tcp = server.endpoints[0].resolve().unwrap()[0];
    let udp = server.endpoints[1].resolve().unwrap()[0];
    assert_eq!(server.endpoints[0].transport(), Transport::Tcp);
    assert_eq!(server.endpoints[1].transport(), Transport::Udp);

    let stream = std::net::TcpStream::connect(tcp).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    (&stream).write_all(b"one\ntwo\nthree\n").unwrap();
    let mut lines = BufReader::new(&stream).lines();
    for want in ["one", "two", "three"] {
        assert_eq!(lines.next().unwrap().unwrap(), want);
    }
    drop(lines);
    drop(stream);

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.send_to(b"datagram\nwith newline", udp).unwrap();
    let mut buf = [0u8; 1024];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, udp, "the reply comes from the server's address");
    assert_eq!(
        &buf[..n],
        b"datagram\nwith newline",
        "a datagram is one message, unframed"
    );
    server.stop();
}

/// `[::]` with IPV6_V6ONLY off accepts IPv4 clients too.
#[test]
fn dual_stack_accepts_ipv4() {
    if !have_ipv6() {
        eprintln!("skipping dual_stack_accepts_ipv4: no IPv6 on this machine");
        return;
    }
    let server = serve(
        Server::builder()
            .listen("tcp://[::]:0")
            .socket_options(SocketOptions::default().v6only(Some(false)))
            .strategy(Strategy::Threads)
            .framing(Framing::line())
            .message(Echo),
    );
    let hp = server.endpoint.host_port().unwrap().clone();
    assert_eq!(hp.host(), "::");
    assert_ne!(hp.port(), 0);

    for host in ["127.0.0.1", "[::1]"] {
        let ep: Endpoint = format!("tcp://{host}:{}", hp.port()).parse().unwrap();
        let mut client = Client::connect(&ep, Framing::line()).unwrap();
        client.set_timeout(Some(DEADLINE)).unwrap();
        let reply = client.request(format!("via {host}").as_bytes()).unwrap();
        assert_eq!(reply, format!("via {host}").into_bytes());
    }
    server.stop();
}

/// Port 0 is resolved, every listener is reported in order, and the
/// reported ports are the ones that answer.
#[test]
fn bound_ports_are_read_back() {
    let server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .listen("tcp://127.0.0.1:0")
        .listen("udp://127.0.0.1:0")
        .strategy(Strategy::Threads)
        .message(Echo)
        .bind()
        .unwrap();
    let eps = server.local_endpoints().to_vec();
    assert_eq!(eps.len(), 3);
    assert_eq!(server.local_endpoint(), &eps[0]);
    let ports: Vec<u16> = eps.iter().map(|e| e.host_port().unwrap().port()).collect();
    assert!(ports.iter().all(|&p| p != 0), "{eps:?}");
    assert_ne!(ports[0], ports[1], "two TCP listeners on one port: {eps:?}");
    assert_eq!(eps[0].to_string(), format!("tcp://127.0.0.1:{}", ports[0]));
    assert_eq!(eps[2].to_string(), format!("udp://127.0.0.1:{}", ports[2]));
    // The endpoint string parses back to the same endpoint.
    assert_eq!(eps[1].to_string().parse::<Endpoint>().unwrap(), eps[1]);

    // The std socket layer agrees with the reported port.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let stream = std::net::TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    assert_eq!(stream.peer_addr().unwrap().port(), ports[1]);
    drop(stream);

    let r = common::Running {
        endpoint: eps[0].clone(),
        endpoints: eps.clone(),
        handle: server.shutdown_handle(),
        join: Some(std::thread::spawn(move || server.serve_forever())),
    };
    for ep in &eps {
        let mut c = Client::connect(ep, Framing::raw()).unwrap();
        c.set_timeout(Some(DEADLINE)).unwrap();
        let reply = c.request(b"ping").unwrap();
        assert_eq!(reply, b"ping", "{ep}");
    }
    r.stop();
    // After shutdown the ports are released: binding them again works.
    assert!(
        common::wait_until(Duration::from_secs(5), || std::net::TcpListener::bind(addr)
            .is_ok()),
        "port {} still taken after shutdown",
        ports[1]
    );
}
