//! `fixed:N` framing: every message is exactly `N` bytes.
//!
//! Common in binary protocols with fixed-size records (sensor readings,
//! market-data ticks, game input packets) and as the simplest benchmark
//! framing. Equivalent to Netty's `FixedLengthFrameDecoder`.
//!
//! # Limits
//!
//! A frame cannot be longer than `N`, so the decoder has no oversize path
//! and never returns [`Decoded::TooLong`]. `N` itself must fit within the
//! configured maximum frame size (checked once, when the codec is built),
//! so the driver never buffers more than `max_frame` bytes.
//!
//! # End of stream
//!
//! Fewer than `N` bytes left when the peer closes is a truncated record,
//! not a message: [`Decoder::decode_eof`] returns `None` and the driver
//! drops them (Netty does the same).

use super::FramingError;
use super::{Decoded, Decoder, Encoder, FrameError};

/// Codec for the `fixed:N` framing. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedCodec {
    size: usize,
}

impl FixedCodec {
    /// A codec for frames of exactly `size` bytes.
    ///
    /// Fails when `size` is 0 (every frame would be empty and the decoder
    /// could never consume input) or larger than `max_frame` (the driver
    /// would have to buffer more than the limit it promised).
    pub fn new(size: usize, max_frame: usize) -> Result<Self, FramingError> {
        if size == 0 {
            return Err(FramingError::from(
                "fixed frame size must be at least 1 byte".to_string(),
            ));
        }
        if size > max_frame {
            return Err(FramingError::from(format!(
                "fixed frame size of {size} bytes exceeds the maximum frame size of {max_frame} bytes"
            )));
        }
        Ok(FixedCodec { size })
    }

    /// The frame size.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Decoder for FixedCodec {
    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Decoded {
        if buf.len() >= self.size {
            Decoded::Frame {
                start: 0,
                end: self.size,
                consumed: self.size,
            }
        } else {
            Decoded::Incomplete { consumed: 0 }
        }
    }
}

impl Encoder for FixedCodec {
    /// Writes the frame unchanged; any other length than the fixed size is
    /// refused, since padding or truncating would silently change the data.
    #[inline]
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if frame.len() != self.size {
            return Err(FrameError::WrongSize {
                len: frame.len(),
                expected: self.size,
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
    fn construction_checks() {
        assert!(FixedCodec::new(0, 10).is_err());
        assert!(FixedCodec::new(11, 10).is_err());
        assert_eq!(FixedCodec::new(10, 10).unwrap().size(), 10);
    }

    #[test]
    fn decodes_whole_frames_only() {
        let mut c = FixedCodec::new(3, 10).unwrap();
        assert_eq!(c.decode(b"ab"), Decoded::Incomplete { consumed: 0 });
        assert_eq!(
            c.decode(b"abcd"),
            Decoded::Frame {
                start: 0,
                end: 3,
                consumed: 3
            }
        );
        assert_eq!(c.decode_eof(b"ab"), None);
    }

    #[test]
    fn encode_checks_size() {
        let c = FixedCodec::new(2, 10).unwrap();
        let mut out = Vec::new();
        c.encode(b"ab", &mut out).unwrap();
        assert_eq!(out, b"ab");
        assert_eq!(
            c.encode(b"abc", &mut out),
            Err(FrameError::WrongSize {
                len: 3,
                expected: 2
            })
        );
    }
}
