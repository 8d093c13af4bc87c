//! The seed's server (`socketserver.TCPServer` that upper-cases what it
//! receives), written with sockserv. Run it, then the seed's client:
//!
//! ```sh
//! cargo run --example seed_server
//! python3 tests/seed/seed_client.py
//! ```

use sockserv::{handler::message_fn, Server, Strategy};

fn main() -> Result<(), sockserv::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:9999".into());
    let server = Server::builder()
        .listen(addr)
        // Python's TCPServer serves one client at a time; Strategy::Threads
        // would make it ThreadingTCPServer.
        .strategy(Strategy::Sequential)
        .message(message_fn(|data, reply| {
            println!("{} wrote:", reply.peer());
            println!("{:?}", String::from_utf8_lossy(data.trim_ascii()));
            reply.send(&data.trim_ascii().to_ascii_uppercase())?;
            Ok(())
        }))
        .bind()?;
    println!("listening {}", server.local_endpoint());
    server.serve_forever()
}
