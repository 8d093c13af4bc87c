//! Byte layers: stages between the socket and the framing that transform
//! the byte stream itself — the PROXY protocol header, TLS.
//!
//! A layer is sans-I/O like the codecs: it is shown the bytes that arrived
//! and hands up the bytes for the stage above, and it is shown the bytes
//! the stage above wants sent and hands down what goes on the wire. The
//! connection pipeline stacks any number of them, so each is written once
//! and every driver (blocking or event loop) gets it for free. A layer that
//! has nothing left to do (a PROXY header that has been read) says so and
//! is dropped from the stack, so the steady state costs nothing.

use std::fmt;
use std::time::Instant;

/// What a layer may produce while reading.
pub(crate) struct LayerIo<'a> {
    /// Bytes for the stage above (the next layer, or the framing).
    pub(crate) up: &'a mut Vec<u8>,
    /// Bytes the layer itself must send (a TLS handshake record). The
    /// PROXY header never writes here; TLS will.
    #[allow(dead_code)]
    pub(crate) wire: &'a mut Vec<u8>,
    /// The PROXY header, when the layer has read it: the connection then
    /// waits for the gate to admit the client it names.
    pub(crate) header: &'a mut Option<crate::proxy::ProxyHeader>,
}

/// A layer broke: the connection is closed without a reply.
#[derive(Debug)]
pub(crate) struct LayerError(pub(crate) String);

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayerError {}

/// One byte layer of a connection.
pub(crate) trait Layer: Send + fmt::Debug {
    /// Bytes read from below; append what goes up to `io.up`.
    fn input(&mut self, wire: &[u8], io: &mut LayerIo<'_>) -> Result<(), LayerError>;

    /// Bytes to send from above; append what goes down to `wire`.
    fn output(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<(), LayerError> {
        wire.extend_from_slice(plain);
        Ok(())
    }

    /// True once the layer passes bytes through unchanged both ways: the
    /// pipeline then drops it.
    fn is_transparent(&self) -> bool {
        false
    }

    /// The layer must have finished its part by then (a header or a
    /// handshake that never completes is a slow peer).
    fn deadline(&self) -> Option<Instant> {
        None
    }
}
