//! The tokio echo server as tokio's `examples/echo-tcp.rs` writes it: a
//! multi-thread runtime, `tokio::spawn` per connection, a fixed buffer per
//! connection (4 KiB here), `read` then `write_all` until end of file.
//!
//! Deviations from the example, all for the benchmark harness: the bound
//! address (port 0 resolved) is printed as `listening ADDR` so the harness
//! can find it; TCP_NODELAY is set on each connection, as every server in
//! the comparison does; errors end the connection quietly instead of
//! panicking the task. Like the example, an accept error (EMFILE, ...) ends
//! the server.

use std::env;
use std::error::Error;
use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BUFFER_SIZE: usize = 4096;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    loop {
        let (mut socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0; BUFFER_SIZE];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
