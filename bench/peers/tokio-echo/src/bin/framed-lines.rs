//! A line echo server on tokio-util's codec layer:
//! `Framed<TcpStream, LinesCodec>` with a 64 KiB line limit, one task per
//! connection.
//!
//! This is what a tokio user writes for a line protocol, so it is the
//! baseline for sockserv's `--framing line`. The echo is the idiomatic
//! `sink.send_all(&mut stream)` on the split `Framed`: it feeds every line
//! already decoded and flushes only when the stream has nothing more ready,
//! so one read of N pipelined lines gives one write of N replies (a plain
//! `send` per line would flush, i.e. write, once per line).

use std::env;
use std::error::Error;
use std::io::Write;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LinesCodec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let framed = Framed::new(socket, LinesCodec::new_with_max_length(65536));
            let (mut sink, mut stream) = framed.split();
            // Ends at end of file or on the first error (an over-long line
            // included), like most LinesCodec users.
            let _ = sink.send_all(&mut stream).await;
        });
    }
}
