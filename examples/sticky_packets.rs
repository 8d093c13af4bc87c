//! The sticky-packet problem (粘包), shown on a real socket.
//!
//! A client makes two writes, `hello\n` and `world\n`. TCP delivers a byte
//! stream, not messages: if the server reads after both writes have
//! arrived (it was busy, or Nagle's algorithm merged them), one read returns
//! both. Under raw framing — the seed's `recv(1024)` — that is one message,
//! `"hello\nworld\n"`. Under line framing the same bytes are two frames.
//!
//! ```sh
//! cargo run --example sticky_packets
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use sockserv::frame::{Decoded, Decoder, Framing};

fn frames(framing: &Framing, bytes: &[u8]) -> Vec<String> {
    let mut codec = framing.codec();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match codec.decode(&bytes[pos..]) {
            Decoded::Frame {
                start,
                end,
                consumed,
            } => {
                out.push(String::from_utf8_lossy(&bytes[pos + start..pos + end]).into_owned());
                pos += consumed;
            }
            Decoded::Incomplete { .. } | Decoded::TooLong { .. } => break,
        }
    }
    out
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (written_tx, written_rx) = mpsc::channel();

    let client = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"hello\n")?; // first write
        s.write_all(b"world\n")?; // second write
        written_tx.send(()).ok();
        // Keep the connection open until the server has read.
        let mut sink = [0u8; 1];
        let _ = s.read(&mut sink);
        Ok(())
    });

    let (mut conn, _) = listener.accept()?;
    // The server is "busy" until both writes are in its receive buffer.
    written_rx.recv_timeout(Duration::from_secs(5)).ok();
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf)?; // the seed's recv(1024)
    let got = &buf[..n];
    drop(conn);
    client.join().expect("client thread")?;

    println!(
        "two writes, one read of {n} bytes: {:?}",
        String::from_utf8_lossy(got)
    );
    let raw = frames(&Framing::raw(), got);
    let line = frames(&Framing::line(), got);
    println!("raw framing  -> {} message(s): {raw:?}", raw.len());
    println!("line framing -> {} message(s): {line:?}", line.len());
    Ok(())
}
