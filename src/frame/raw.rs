//! `raw` framing: whatever one read returned is one message.
//!
//! This is what Python's `socketserver.BaseRequestHandler` gives you by
//! default, and what an echo server wants: no parsing at all, every byte is
//! passed on as soon as it arrives. It makes **no promise about message
//! boundaries**: TCP may merge two client writes into one read or split one
//! write over several reads, and each read is delivered as it came. Use it
//! for byte-stream protocols (echo, proxies, `cat`-like handlers); use a
//! real framing when the handler needs whole messages.
//!
//! # Limits
//!
//! `max_frame` caps the size of one delivered chunk: a buffer longer than
//! the limit is handed out as several frames of at most `max_frame` bytes,
//! never rejected, because there is no frame to be "too long" in a byte
//! stream. So `decode` never returns [`Decoded::TooLong`].
//!
//! # End of stream
//!
//! `decode` already hands out everything it is shown, so there is never a
//! tail left for [`Decoder::decode_eof`]; it returns `None`.

use super::{Decoded, Decoder, Encoder, FrameError};

/// Codec for the `raw` framing. See the [module docs](self).
///
/// Stateless apart from the limit, so cloning it per connection is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCodec {
    max_frame: usize,
}

impl RawCodec {
    /// A raw codec handing out chunks of at most `max_frame` bytes.
    ///
    /// A `max_frame` of 0 is treated as 1: a zero cap could never make
    /// progress, and rejecting it here would make an infallible framing
    /// fallible for a value [`Framing`](super::Framing) already refuses.
    pub fn new(max_frame: usize) -> Self {
        RawCodec {
            max_frame: max_frame.max(1),
        }
    }

    /// The largest chunk one [`Decoded::Frame`] covers.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Decoder for RawCodec {
    /// Hands out the whole buffer (up to `max_frame` bytes) as one frame.
    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Decoded {
        if buf.is_empty() {
            return Decoded::Incomplete { consumed: 0 };
        }
        let end = buf.len().min(self.max_frame);
        Decoded::Frame {
            start: 0,
            end,
            consumed: end,
        }
    }
}

impl Encoder for RawCodec {
    /// Writes the bytes as they are. Frames over `max_frame` are refused so
    /// that a handler cannot produce, on the raw framing, a reply that the
    /// same configuration would refuse on the way in.
    #[inline]
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if frame.len() > self.max_frame {
            return Err(FrameError::TooLong {
                len: Some(frame.len() as u64),
                max: self.max_frame,
            });
        }
        out.extend_from_slice(frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_buffer_is_incomplete() {
        let mut c = RawCodec::new(4);
        assert_eq!(c.decode(b""), Decoded::Incomplete { consumed: 0 });
    }

    #[test]
    fn whole_buffer_is_one_frame() {
        let mut c = RawCodec::new(16);
        assert_eq!(
            c.decode(b"hello"),
            Decoded::Frame {
                start: 0,
                end: 5,
                consumed: 5
            }
        );
        assert_eq!(c.decode_eof(b""), None);
    }

    #[test]
    fn long_buffer_is_capped() {
        let mut c = RawCodec::new(4);
        assert_eq!(
            c.decode(b"abcdefghij"),
            Decoded::Frame {
                start: 0,
                end: 4,
                consumed: 4
            }
        );
    }

    #[test]
    fn zero_max_is_clamped() {
        let mut c = RawCodec::new(0);
        assert_eq!(c.max_frame(), 1);
        assert!(matches!(
            c.decode(b"ab"),
            Decoded::Frame { consumed: 1, .. }
        ));
    }

    #[test]
    fn encode_checks_max() {
        let c = RawCodec::new(3);
        let mut out = Vec::new();
        c.encode(b"abc", &mut out).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(
            c.encode(b"abcd", &mut out),
            Err(FrameError::TooLong {
                len: Some(4),
                max: 3
            })
        );
    }
}
