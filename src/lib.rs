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
//! | plain server, `ThreadingMixIn`, `ForkingMixIn` | a [`Strategy`] value: `Sequential`, `Threads`, `Pool`, `Async`, `AsyncMultiThread`, or the default `Auto` |
//! | `ThreadingTCPServer` and the other combinations | not types: any transport × any strategy |
//! | `BaseRequestHandler.setup/handle/finish` | [`StreamHandler`] |
//! | `StreamRequestHandler.rfile/wfile` | [`Connection::reader`] / [`Connection::writer`] |
//! | `DatagramRequestHandler` | [`DatagramHandler`] |
//! | (none) | [`MessageHandler`]: one call per frame, framing by the server ([`frame`]) |
//! | (none) | [`AsyncStreamHandler`]: async code over an [`AsyncConnection`] |
//! | `serve_forever()`, `handle_request()`, `shutdown()`, `server_close()` | [`Server::serve_forever`], [`Server::handle_request`], [`ShutdownHandle::shutdown`], dropping the server |
//! | `timeout`, `handle_timeout()`, `service_actions()` | [`Builder::timeout`], [`Builder::handle_timeout`], [`Builder::service_actions`] |
//! | `verify_request()`, `handle_error()` | [`Builder::verify_request`], [`Builder::handle_error`] |
//! | `allow_reuse_address`, `allow_reuse_port`, `request_queue_size` | [`SocketOptions`] (reuse-address on, backlog 1024) |
//! | `server_address` | [`Server::local_endpoint`] (port 0 resolved) |
//! | `block_on_close`, `daemon_threads` | the drain policy: [`Limits::drain_timeout`] |

pub mod addr;
mod async_conn;
pub mod client;
mod conn;
mod dgram;
pub mod error;
pub mod frame;
pub mod handler;
pub mod handlers;
mod hooks;
mod mmsg;
mod run;
pub mod server;
mod session;
mod shutdown;
pub mod socket;
pub mod strategy;

pub use addr::{Address, Endpoint, Transport};
pub use async_conn::AsyncConnection;
pub use client::Client;
pub use conn::Connection;
pub use dgram::{DgramSocket, MAX_DATAGRAM};
pub use error::Error;
pub use handler::{
    AsyncStreamHandler, DatagramHandler, Handler, HandlerResult, MessageHandler, Reply,
    StreamHandler,
};
pub use hooks::Failure;
pub use server::{Builder, Handled, Limits, OverLimit, Server};
pub use shutdown::ShutdownHandle;
pub use socket::SocketOptions;
pub use strategy::Strategy;

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/FRAMING.md's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/FRAMING.md")]
pub struct FramingDoctests;
