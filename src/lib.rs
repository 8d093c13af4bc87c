//! # sockserv
//!
//! Concurrent socket servers the way Python's `socketserver` does them — a
//! server, a handler, a concurrency choice, `serve_forever()` — in Rust, and
//! with what that module leaves to every user done once in the framework:
//! framing (no sticky packets), graceful shutdown with no lost reply, limits
//! and timeouts.
//!
//! The seed's upper-casing server, written with the library:
//!
//! ```no_run
//! use sockserv::{Server, Strategy, handler::message_fn};
//!
//! fn main() -> Result<(), sockserv::Error> {
//!     let server = Server::builder()
//!         .listen("tcp://127.0.0.1:9999")
//!         .strategy(Strategy::Sequential) // like socketserver.TCPServer
//!         .message(message_fn(|data, reply| {
//!             println!("{} wrote: {:?}", reply.peer(), String::from_utf8_lossy(data));
//!             reply.send(&data.trim_ascii().to_ascii_uppercase())?;
//!             Ok(())
//!         }))
//!         .bind()?;
//!     server.serve_forever()
//! }
//! ```
//!
//! ## Python's names, mapped
//!
//! | Python `socketserver` | sockserv |
//! | --- | --- |
//! | `TCPServer`, `UDPServer`, `UnixStreamServer`, `UnixDatagramServer` | one [`Server`]; the transport comes from the address (`tcp://`, `udp://`, `unix://`, `unix-dgram://`) |
//! | plain server, `ThreadingMixIn` | a [`Strategy`] value: `Sequential`, `Threads`, `Pool` (workers run the handlers), `EventLoops`, or the default [`Strategy::auto`] |
//! | `ForkingMixIn` | a program per connection: [`Exec`] (tcpserver's environment: `PROTO`, `TCPREMOTEIP`, …); [`Strategy::Pool`] isolates blocking handlers |
//! | `ThreadingTCPServer` and the other combinations | not types: any transport × any strategy |
//! | `BaseRequestHandler.setup/handle/finish` | [`StreamHandler`] |
//! | `StreamRequestHandler.rfile/wfile` | [`Connection::reader`] / [`Connection::writer`] |
//! | `DatagramRequestHandler` | [`MessageHandler`]: on a datagram socket each datagram is one message |
//! | (none) | [`MessageHandler`]: one call per frame, framing by the server ([`frame`]) |
//! | (none) | [`AsyncStreamHandler`]: async code over an [`AsyncConnection`] |
//! | `serve_forever()`, `handle_request()`, `shutdown()`, `server_close()` | [`Server::serve_forever`], [`Server::handle_request`], [`ShutdownHandle::shutdown`], dropping the server |
//! | `timeout`, `handle_timeout()`, `service_actions()` | [`Builder::timeout`], [`Builder::handle_timeout`], [`Builder::service_actions`] |
//! | `verify_request()`, `handle_error()` | [`Builder::verify_request`], [`Builder::handle_error`] |
//! | `allow_reuse_address`, `allow_reuse_port`, `request_queue_size` | [`SocketOptions`] (reuse-address on for TCP, never for UDP, as Python's `UDPServer`; backlog 1024) |
//! | `server_address` | [`Server::local_endpoint`] (port 0 resolved) |
//! | `block_on_close`, `daemon_threads` | the drain policy: [`DrainPolicy`] |
//!
//! What a running server can tell about itself — counters per listener,
//! every open connection, the recently closed ones — is [`Server::snapshot`]
//! (see [`stats`]); with the `admin` feature, [`Builder::admin`] serves it
//! as Prometheus metrics, health checks and a live status page.

mod accept;
pub mod activation;
pub mod addr;
#[cfg(feature = "admin")]
pub mod admin;
mod async_conn;
mod burst;
pub mod client;
mod config;
mod conn;
mod connected;
mod context;
mod dgram;
mod driver;
pub mod error;
pub mod exec;
pub mod frame;
pub mod handler;
pub mod handlers;
mod hooks;
mod message;
mod meter;
mod mmsg;
pub mod notify;
mod pipeline;
mod proxy;
mod rate;
pub mod rules;
mod run;
mod server;
mod shutdown;
mod socket;
pub mod stats;
mod strategy;
mod tracker;

pub use addr::{Address, Endpoint, Transport};
pub use async_conn::AsyncConnection;
pub use client::Client;
pub use config::{DatagramPolicy, DrainPolicy, Limits, OverLimit, Timeouts};
pub use conn::Connection;
pub use dgram::{MAX_DATAGRAM, MAX_UNIX_DATAGRAM};
pub use error::Error;
pub use exec::Exec;
pub use handler::{
    AsyncStreamHandler, Handler, HandlerResult, MessageHandler, Reply, StreamHandler,
};
pub use hooks::Failure;
pub use proxy::{ProxyInfo, Versions as ProxyVersions};
pub use rate::{ParseRateError, Rate};
pub use rules::{Rules, RulesHandle};
pub use server::{Builder, Handled, IntoEndpoint, Server};
pub use shutdown::ShutdownHandle;
pub use socket::SocketOptions;
pub use strategy::{Strategy, UnknownMode};

/// Crate-private parsers, reachable from the fuzz targets in `fuzz/`. Not
/// part of the API: hidden from the docs, and free to change.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::proxy::{
        line_take, next_step, parse, Parsed, ProxyError, Step, Versions, MAX_HEADER_LEN,
    };
}

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/FRAMING.md's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/FRAMING.md")]
pub struct FramingDoctests;
