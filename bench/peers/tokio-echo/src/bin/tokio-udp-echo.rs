//! A UDP echo server in the style of tokio's `examples/echo-udp.rs`: one
//! `UdpSocket`, a `recv_from` / `send_to` loop on a multi-thread runtime.
//! Prints `listening ADDR` (port 0 resolved) for the benchmark harness.

use std::env;
use std::error::Error;
use std::io::Write;

use tokio::net::UdpSocket;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let socket = UdpSocket::bind(&addr).await?;
    println!("listening {}", socket.local_addr()?);
    std::io::stdout().flush()?;

    let mut buf = vec![0; 65536];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        // A send error (the peer went away) must not end the server.
        let _ = socket.send_to(&buf[..n], peer).await;
    }
}
