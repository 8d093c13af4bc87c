//! Issue 11, defect 11: a pool whose workers are all held by stream
//! handlers and whose queue is full says so — once per burst, not once per
//! client — while the clients wait in the listen backlog.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use common::{wait_until, DEADLINE};
use sockserv::handler::stream_fn;
use sockserv::{Server, Strategy};

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_pool_is_logged_once_per_burst() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let server = Server::builder()
        .listen("tcp://127.0.0.1:0")
        .strategy(Strategy::Pool {
            workers: 2,
            queue: 2,
        })
        // Each client holds its worker until it closes.
        .stream(stream_fn(|conn| {
            let mut buf = [0u8; 64];
            while conn.read(&mut buf)? > 0 {}
            Ok(())
        }))
        .bind()
        .unwrap();
    let addr = server.local_endpoint().to_string();
    let handle = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve_forever());
    let clients: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(addr.trim_start_matches("tcp://")).unwrap())
        .collect();
    let text = || String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        wait_until(DEADLINE, || text().contains("pool full")),
        "no warning with every worker busy and the queue full: {}",
        text()
    );
    let warnings = text().matches("pool full").count();
    eprintln!("30 clients on 2 workers and a queue of 2: {warnings} warning(s)");
    assert_eq!(warnings, 1, "{}", text());
    drop(clients);
    handle.shutdown();
    assert!(serving.join().unwrap().is_ok());
}
