//! Framing: turning a byte stream into messages and messages back into bytes.
//!
//! TCP and Unix stream sockets carry bytes, not messages. One `write` on the
//! client can arrive as several reads on the server, and several writes can
//! arrive as one read (the "sticky packet" problem, made likelier by Nagle's
//! algorithm and by MTU splitting). This module solves it once for every
//! engine: a [`Decoder`] is a pure push parser with **no I/O in it**. The
//! connection driver (blocking or async) owns the input buffer, hands the
//! decoder the bytes it has, and the decoder answers with a [`Decoded`]
//! verdict that names byte ranges inside that buffer. Because no codec ever
//! touches a socket, each is property-tested on byte slices.
//!
//! Every decoder has a maximum frame size. An oversized frame is reported
//! once, as soon as it is detected, and then discarded in bounded memory: the
//! decoder never asks the driver to buffer more than the limit. Whether the
//! connection then closes or skips to the next frame boundary is the driver's
//! choice ([`OnOversize`]).
//!
//! Codecs live one per file: [`line`](mod@line) (and CRLF), [`delimiter`],
//! [`length`] (length field), [`fixed`] and [`raw`]. [`Framing`] is the
//! value users pick (also parsed from the CLI's `--framing` text by
//! [`spec`]); [`Codec`] is one instance of it for one connection.

pub mod delimiter;
pub mod fixed;
pub mod length;
pub mod line;
pub mod raw;
pub mod spec;

use std::fmt;

pub use delimiter::DelimiterCodec;
pub use fixed::FixedCodec;
pub use length::{Endian, LengthCodec, LengthField};
pub use line::LineCodec;
pub use raw::RawCodec;
pub use spec::Framing;

/// A framing that cannot be built: a bad specification (`"len:5"`), an
/// empty delimiter, a limit below the frame size. One line, naming the
/// problem and, for a parsed string, the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub(crate) String);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FramingError {}

impl From<String> for FramingError {
    fn from(s: String) -> Self {
        FramingError(s)
    }
}

impl From<&str> for FramingError {
    fn from(s: &str) -> Self {
        FramingError(s.to_string())
    }
}

/// The default maximum frame size: 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// A decoder's verdict on the bytes it was shown.
///
/// All positions are offsets into the slice passed to [`Decoder::decode`].
/// After acting on the verdict the caller removes `consumed` bytes from the
/// front of its buffer; the decoder's internal state already assumes that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame: its payload is `buf[start..end]`; then drop `consumed`
    /// bytes (payload plus any header, delimiter or trailing bytes).
    Frame {
        start: usize,
        end: usize,
        consumed: usize,
    },
    /// No whole frame yet. Drop `consumed` bytes (non-zero only while an
    /// oversized frame is being discarded) and call again with more input.
    Incomplete { consumed: usize },
    /// An oversized frame was detected. It is reported once; the decoder is
    /// now discarding it. Drop `consumed` bytes and carry on (skip) or close
    /// the connection (fail fast).
    TooLong { consumed: usize, error: FrameError },
}

impl Decoded {
    /// Re-express a verdict computed on `buf[skip..]` as one on `buf`,
    /// folding the `skip` bytes in front (the end of a frame being
    /// discarded) into `consumed`. Lets a decoder finish discarding and
    /// report the next frame in the same verdict, so a driver that waits for
    /// input after `Incomplete` never stalls on bytes it already holds.
    #[inline]
    pub(crate) fn shifted(self, skip: usize) -> Decoded {
        if skip == 0 {
            return self;
        }
        match self {
            Decoded::Frame {
                start,
                end,
                consumed,
            } => Decoded::Frame {
                start: start + skip,
                end: end + skip,
                consumed: consumed + skip,
            },
            Decoded::Incomplete { consumed } => Decoded::Incomplete {
                consumed: consumed + skip,
            },
            Decoded::TooLong { consumed, error } => Decoded::TooLong {
                consumed: consumed + skip,
                error,
            },
        }
    }
}

/// Pulls frames out of a byte buffer. Implementations hold only small
/// bookkeeping state (how far they have scanned, how much is left to
/// discard), never the bytes themselves.
pub trait Decoder {
    /// Look at `buf` (everything received and not yet consumed) and say what
    /// it holds. Must make progress: a `Frame` or `TooLong` always consumes
    /// at least one byte unless the frame is empty and the codec allows empty
    /// frames with zero-byte encodings (only `raw` on an empty read, which
    /// drivers never produce).
    fn decode(&mut self, buf: &[u8]) -> Decoded;

    /// The peer closed its write side with `buf` still unconsumed. Returns
    /// the last frame if the codec accepts an unterminated tail (line
    /// codecs do, like tokio-util's `decode_eof`), `None` otherwise.
    fn decode_eof(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        let _ = buf;
        None
    }
}

/// Writes frames in a codec's wire format.
pub trait Encoder {
    /// Append the wire form of `frame` to `out`. Fails when the frame cannot
    /// be represented (too long for the length field, a delimiter inside a
    /// delimited frame, the wrong size for a fixed codec, over the maximum).
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError>;
}

/// What a driver does when a peer sends a frame over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOversize {
    /// Report it and close the connection at once (after flushing replies
    /// to the frames before it). The default: a peer that breaks the limit
    /// is usually broken or hostile.
    #[default]
    Close,
    /// Report it, discard the frame in bounded memory, and carry on with the
    /// next frame.
    Skip,
}

/// Errors a codec reports. Each message names the problem and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame is longer than the configured maximum.
    TooLong { len: Option<u64>, max: usize },
    /// A frame to encode contains the delimiter that would end it.
    DelimiterInFrame,
    /// A frame to encode does not have the fixed codec's size.
    WrongSize { len: usize, expected: usize },
    /// A length that cannot be represented in the length field, or a decoded
    /// length that is invalid after adjustment. When decoding, the stream
    /// cannot be resynchronised after it: the length codec drops all further
    /// input, so a driver should close the connection whatever its
    /// [`OnOversize`] policy.
    BadLength(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong {
                len: Some(len),
                max,
            } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the maximum frame size of {max} bytes"
                )
            }
            FrameError::TooLong { len: None, max } => {
                write!(f, "frame exceeds the maximum frame size of {max} bytes")
            }
            FrameError::DelimiterInFrame => write!(f, "frame contains its own delimiter"),
            FrameError::WrongSize { len, expected } => {
                write!(
                    f,
                    "frame of {len} bytes does not match the fixed size of {expected} bytes"
                )
            }
            FrameError::BadLength(msg) => write!(f, "invalid length field: {msg}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// One codec instance: a [`Framing`] made concrete for one connection.
///
/// An enum rather than a trait object so the per-frame path is a `match`,
/// not a virtual call; every engine uses this same type.
#[derive(Debug, Clone)]
pub enum Codec {
    Raw(RawCodec),
    Line(LineCodec),
    Delimiter(DelimiterCodec),
    Length(LengthCodec),
    Fixed(FixedCodec),
}

impl Codec {
    /// The most bytes a driver can be left holding after an `Incomplete`
    /// verdict (the frame limit plus at most a partial delimiter). A read
    /// buffer of this size plus one read's worth never has to grow, and a
    /// peer cannot make the server hold more per connection.
    pub fn max_buffered(&self) -> usize {
        match self {
            Codec::Raw(_) => 0,
            Codec::Line(c) => c.max_buffered(),
            Codec::Delimiter(c) => c.max_buffered(),
            Codec::Length(c) => c.max_buffered(),
            Codec::Fixed(c) => c.size() - 1,
        }
    }

    /// True while the codec is dropping the rest of an oversized frame: the
    /// frame has started even though no byte of it is kept, so the read
    /// timeout must run.
    pub(crate) fn is_discarding(&self) -> bool {
        match self {
            Codec::Line(c) => c.is_discarding(),
            Codec::Delimiter(c) => c.is_discarding(),
            Codec::Length(c) => c.is_discarding(),
            Codec::Raw(_) | Codec::Fixed(_) => false,
        }
    }
}

impl Decoder for Codec {
    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Decoded {
        match self {
            Codec::Raw(c) => c.decode(buf),
            Codec::Line(c) => c.decode(buf),
            Codec::Delimiter(c) => c.decode(buf),
            Codec::Length(c) => c.decode(buf),
            Codec::Fixed(c) => c.decode(buf),
        }
    }

    fn decode_eof(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        match self {
            Codec::Raw(c) => c.decode_eof(buf),
            Codec::Line(c) => c.decode_eof(buf),
            Codec::Delimiter(c) => c.decode_eof(buf),
            Codec::Length(c) => c.decode_eof(buf),
            Codec::Fixed(c) => c.decode_eof(buf),
        }
    }
}

impl Encoder for Codec {
    #[inline]
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            Codec::Raw(c) => c.encode(frame, out),
            Codec::Line(c) => c.encode(frame, out),
            Codec::Delimiter(c) => c.encode(frame, out),
            Codec::Length(c) => c.encode(frame, out),
            Codec::Fixed(c) => c.encode(frame, out),
        }
    }
}

/// A reference driver for the codec unit tests: feeds chunks into a `Vec`,
/// applies every verdict and checks the `Decoded` contract on the way.
#[cfg(test)]
pub(crate) mod testutil {
    use super::{Decoded, Decoder, FrameError};

    #[derive(Debug, Default)]
    pub(crate) struct Outcome {
        pub frames: Vec<Vec<u8>>,
        pub errors: Vec<FrameError>,
        /// The largest buffer held right after an `Incomplete` verdict.
        pub max_held: usize,
    }

    pub(crate) fn drive<D: Decoder>(dec: &mut D, chunks: &[&[u8]], eof: bool) -> Outcome {
        let mut out = Outcome::default();
        let mut buf: Vec<u8> = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&buf) {
                    Decoded::Frame {
                        start,
                        end,
                        consumed,
                    } => {
                        assert!(start <= end && end <= consumed && consumed <= buf.len());
                        assert!(consumed > 0, "a frame must make progress");
                        out.frames.push(buf[start..end].to_vec());
                        buf.drain(..consumed);
                    }
                    Decoded::TooLong { consumed, error } => {
                        assert!(consumed > 0 && consumed <= buf.len());
                        out.errors.push(error);
                        buf.drain(..consumed);
                    }
                    Decoded::Incomplete { consumed } => {
                        assert!(consumed <= buf.len());
                        buf.drain(..consumed);
                        out.max_held = out.max_held.max(buf.len());
                        break;
                    }
                }
            }
        }
        if eof {
            if let Some((start, end)) = dec.decode_eof(&buf) {
                assert!(start <= end && end <= buf.len());
                out.frames.push(buf[start..end].to_vec());
            }
        }
        out
    }
}
