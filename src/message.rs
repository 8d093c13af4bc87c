//! The message handler: one call per frame (or datagram), and the
//! [`Reply`] it answers through. Kept apart from the stream handlers
//! (`crate::handler`) because the connection pipeline calls it: the
//! pipeline depends on this, and nothing here depends on a connection.

use crate::addr::Address;
use crate::frame::{Codec, Encoder, FrameError};
use crate::hooks::BoxError;

/// What handler methods return.
pub type HandlerResult = Result<(), BoxError>;

/// A handler called once per message (frame or datagram).
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message; replies go through `reply`. An error or a panic
    /// is reported to `handle_error` and the connection carries on with the
    /// next message; call [`Reply::close`] to end the connection instead.
    fn handle(&self, msg: &[u8], reply: &mut Reply<'_>) -> HandlerResult;
}

/// Where a message handler's replies go.
///
/// Replies are encoded at once into the connection's outgoing buffer, and
/// the server writes all replies of one read in as few system calls as the
/// socket allows (pipelining). On a datagram socket each `send` is one
/// datagram.
pub struct Reply<'a> {
    out: &'a mut Vec<u8>,
    codec: Option<&'a Codec>,
    /// For datagrams: where each reply ends in `out`.
    ends: Option<&'a mut Vec<usize>>,
    peer: &'a Address,
    proxy: Option<&'a crate::proxy::ProxyInfo>,
    close: bool,
    sent: u64,
}

impl<'a> Reply<'a> {
    pub(crate) fn framed(
        out: &'a mut Vec<u8>,
        codec: &'a Codec,
        peer: &'a Address,
        proxy: Option<&'a crate::proxy::ProxyInfo>,
    ) -> Self {
        Reply {
            out,
            codec: Some(codec),
            ends: None,
            peer,
            proxy,
            close: false,
            sent: 0,
        }
    }

    pub(crate) fn datagrams(
        out: &'a mut Vec<u8>,
        ends: &'a mut Vec<usize>,
        peer: &'a Address,
    ) -> Self {
        Reply {
            out,
            codec: None,
            ends: Some(ends),
            peer,
            proxy: None,
            close: false,
            sent: 0,
        }
    }

    /// Sends one reply message, encoded with the connection's framing.
    /// Fails if the framing cannot carry it (over the maximum frame size,
    /// contains the delimiter, wrong fixed size).
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<(), FrameError> {
        self.sent += 1;
        match self.codec {
            Some(codec) => codec.encode(msg, self.out),
            None => {
                self.out.extend_from_slice(msg);
                if let Some(ends) = self.ends.as_deref_mut() {
                    ends.push(self.out.len());
                }
                Ok(())
            }
        }
    }

    /// Who sent the message.
    pub fn peer(&self) -> &Address {
        self.peer
    }

    /// What the PROXY header said about this connection (the proxy's
    /// address, the destination, v2 TLVs such as the authority, ALPN and
    /// unique id), on a listener that takes the PROXY protocol; `None`
    /// otherwise and for datagrams. [`peer`](Self::peer) is already the
    /// client it names.
    pub fn proxy(&self) -> Option<&crate::proxy::ProxyInfo> {
        self.proxy
    }

    /// Ends the connection once the replies so far are written (no effect
    /// on datagram sockets).
    pub fn close(&mut self) {
        self.close = true;
    }

    pub(crate) fn wants_close(&self) -> bool {
        self.close
    }

    /// Replies sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }
}

/// A message handler from a closure.
///
/// ```
/// use sockserv::handler::message_fn;
/// let upper = message_fn(|msg, reply| {
///     reply.send(&msg.to_ascii_uppercase())?;
///     Ok(())
/// });
/// # let _ = upper;
/// ```
pub fn message_fn<F>(f: F) -> impl MessageHandler
where
    F: Fn(&[u8], &mut Reply<'_>) -> HandlerResult + Send + Sync + 'static,
{
    struct FnMessage<F>(F);
    impl<F> MessageHandler for FnMessage<F>
    where
        F: Fn(&[u8], &mut Reply<'_>) -> HandlerResult + Send + Sync + 'static,
    {
        #[inline]
        fn handle(&self, msg: &[u8], reply: &mut Reply<'_>) -> HandlerResult {
            (self.0)(msg, reply)
        }
    }
    FnMessage(f)
}
