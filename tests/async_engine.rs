//! The async engine: async stream handlers, and thousands of connections.

use std::time::{Duration, Instant};

use sockserv::handlers::Echo;
use sockserv::{AsyncConnection, AsyncStreamHandler, HandlerResult, Server, Strategy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct AsyncEcho;

impl AsyncStreamHandler for AsyncEcho {
    async fn handle(&self, mut conn: AsyncConnection) -> HandlerResult {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf[..n]).await?;
        }
    }
}

#[test]
fn an_async_stream_handler_runs_under_every_strategy() {
    for strategy in [
        Strategy::EventLoops { loops: 2 },
        Strategy::Threads,
        Strategy::Pool {
            workers: 2,
            queue: 4,
        },
        Strategy::Sequential,
    ] {
        let server = Server::builder()
            .listen("tcp://127.0.0.1:0")
            .strategy(strategy)
            .async_stream(AsyncEcho)
            .bind()
            .unwrap();
        let ep = server.local_endpoint().clone();
        let handle = server.shutdown_handle();
        let serving = std::thread::spawn(move || server.serve_forever());
        for i in 0..3 {
            let mut c = sockserv::Client::connect(&ep, sockserv::frame::Framing::line()).unwrap();
            c.set_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = format!("hello {i} via {strategy}");
            assert_eq!(c.request(msg.as_bytes()).unwrap(), msg.as_bytes());
        }
        let t = Instant::now();
        handle.shutdown();
        assert!(t.elapsed() < Duration::from_secs(5));
        serving.join().unwrap().unwrap();
    }
}

#[test]
fn five_thousand_concurrent_connections_all_get_their_echo() {
    const N: usize = 5_000;
    let server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(Strategy::EventLoops { loops: 2 })
        .message(Echo)
        .bind()
        .unwrap();
    let addr = server.local_endpoint().resolve().unwrap()[0];
    let handle = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve_forever());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(async move {
        // Connect everything first, so all 5,000 are open at once.
        let mut conns = Vec::with_capacity(N);
        for _ in 0..N {
            conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut tasks = Vec::with_capacity(N);
        for (i, mut c) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let msg = format!("message {i:05}");
                c.write_all(msg.as_bytes()).await.unwrap();
                let mut got = vec![0u8; msg.len()];
                c.read_exact(&mut got).await.unwrap();
                got == msg.as_bytes()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a connection got no echo within 60 s")
                .unwrap()
            {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, N);
    handle.shutdown();
    serving.join().unwrap().unwrap();
}

/// Writes a PROXY v1 header naming `client`, then `rest`.
fn proxied(ep: &sockserv::Endpoint, client: &str, rest: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let addr = ep.resolve().unwrap()[0];
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = format!("PROXY TCP4 {client} 127.0.0.1 40000 7000\r\n");
    s.write_all(header.as_bytes()).unwrap();
    s.write_all(rest).unwrap();
    s
}

/// Behind the PROXY protocol an async stream handler sees the client and
/// its first bytes; a client over the per-IP limit gets the limit message
/// (not a reset); at a drain, a connection still without its header is
/// closed at once rather than after the 3 s header timeout.
#[test]
fn an_async_stream_handler_behind_the_proxy_protocol() {
    use std::io::Read;
    struct Peer;
    impl AsyncStreamHandler for Peer {
        async fn handle(&self, mut conn: AsyncConnection) -> HandlerResult {
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).await?;
            let line = format!(
                "{} {}",
                conn.peer_addr(),
                String::from_utf8_lossy(&buf[..n])
            );
            conn.write_all(line.as_bytes()).await?;
            // Held open until the client closes, so the client's place
            // under the per-IP limit stays taken.
            while conn.read(&mut buf).await? > 0 {}
            Ok(())
        }
    }
    let mut limits = sockserv::Limits::new();
    limits.max_connections_per_ip = Some(1);
    limits.limit_message = Some(b"busy\n".to_vec());
    let server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(Strategy::EventLoops { loops: 1 })
        .proxy_protocol(sockserv::ProxyVersions::V1)
        .limits(limits)
        .async_stream(Peer)
        .bind()
        .unwrap();
    let ep = server.local_endpoint().clone();
    let handle = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve_forever());

    let mut first = proxied(&ep, "192.0.2.7", b"hello\n");
    let mut got = [0u8; 64];
    let n = first.read(&mut got).unwrap();
    assert_eq!(&got[..n], b"192.0.2.7:40000 hello\n");

    let mut second = proxied(&ep, "192.0.2.7", b"again\n");
    let mut refused = Vec::new();
    second
        .read_to_end(&mut refused)
        .expect("a clean close, not a reset");
    assert_eq!(refused, b"busy\n");

    // Half a header, then the stop.
    let mut half = {
        use std::io::Write;
        let addr = ep.resolve().unwrap()[0];
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.8").unwrap();
        s
    };
    drop(first);
    let t = Instant::now();
    handle.shutdown();
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing sent to a connection without a header"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the header wait ended with the drain, not its 3 s timeout: {:?}",
        t.elapsed()
    );
    serving.join().unwrap().unwrap();
}
