//! `line` and `crlf` framing: one message per `\n`-terminated line.
//!
//! The framing of text protocols (Redis inline commands, SMTP, memcached
//! text, chat servers) and of Python's `StreamRequestHandler.rfile.readline`.
//!
//! * `line` splits on `\n` and keeps everything before it, `\r` included.
//! * `crlf` splits on `\n` too, and additionally strips **one** `\r` right
//!   before the `\n`, so it accepts both `\r\n` and a bare `\n` (like Netty's
//!   `LineBasedFrameDecoder` and tokio-util's `LinesCodec`). A protocol that
//!   must reject a bare `\n` should check for it itself; a `\r\n` split
//!   across two reads is handled.
//!
//! The delimiter is never part of the frame.
//!
//! # Limits
//!
//! `max_frame` counts the line **without** its delimiter (`\n`, or `\r\n` in
//! `crlf` mode), as Netty does. Oversized lines are handled in bounded
//! memory:
//!
//! * A whole line over the limit that arrived in one read is reported as
//!   [`Decoded::TooLong`] with its length and consumed with its `\n`.
//! * Once more than `max_frame` bytes (`max_frame + 1` in `crlf` mode when
//!   the last one is a `\r`) are buffered without a `\n`, the line is
//!   reported at once (fail fast, `len: None`), the buffered bytes are
//!   consumed, and the decoder discards everything up to and including the
//!   next `\n`, then decodes normally again.
//!
//! Either way each oversized line is reported exactly once, and after an
//! `Incomplete` verdict the caller never holds more than
//! [`LineCodec::max_buffered`] bytes.
//!
//! # Cost
//!
//! The codec remembers how much of the buffer it has already searched, so a
//! line that trickles in one byte at a time costs O(n) in total, not
//! O(n²); the search itself is `memchr`.
//!
//! # End of stream
//!
//! [`Decoder::decode_eof`] returns an unterminated last line (like
//! tokio-util's `LinesCodec::decode_eof`) if it is non-empty and within the
//! limit; in `crlf` mode one trailing `\r` is stripped from it first. The
//! tail of a line being discarded is never returned.

use memchr::memchr;

use super::{Decoded, Decoder, Encoder, FrameError};

/// Codec for the `line` and `crlf` framings. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineCodec {
    max_frame: usize,
    strip_cr: bool,
    /// Bytes at the front of the buffer already known to hold no `\n`.
    scanned: usize,
    /// An oversized line has been reported; drop bytes up to the next `\n`.
    discarding: bool,
}

impl LineCodec {
    /// True while the rest of an oversized line is being dropped.
    pub(crate) fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// A line codec. With `strip_cr` it is the `crlf` framing: one `\r`
    /// before the `\n` is removed from each frame, and [`Encoder::encode`]
    /// writes `\r\n`.
    pub fn new(max_frame: usize, strip_cr: bool) -> Self {
        LineCodec {
            max_frame,
            strip_cr,
            scanned: 0,
            discarding: false,
        }
    }

    /// The longest line accepted, delimiter not counted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Whether this is the `crlf` framing.
    pub fn strip_cr(&self) -> bool {
        self.strip_cr
    }

    /// The most bytes the caller holds after an `Incomplete` verdict: a line
    /// of `max_frame` bytes, plus its `\r` in `crlf` mode. Lets a driver
    /// size its read buffer once.
    pub fn max_buffered(&self) -> usize {
        self.max_frame.saturating_add(usize::from(self.strip_cr))
    }

    /// Decode `rest` (the buffer after any discarded prefix) in normal mode.
    /// Positions are relative to `rest`; the caller adds the prefix.
    #[inline]
    fn decode_line(&mut self, rest: &[u8]) -> Decoded {
        let from = self.scanned.min(rest.len());
        let tail = rest.get(from..).unwrap_or_default();
        if let Some(i) = memchr(b'\n', tail) {
            let nl = from + i;
            self.scanned = 0;
            let mut end = nl;
            if self.strip_cr && end > 0 && rest.get(end - 1) == Some(&b'\r') {
                end -= 1;
            }
            if end > self.max_frame {
                return Decoded::TooLong {
                    consumed: nl + 1,
                    error: FrameError::TooLong {
                        len: Some(end as u64),
                        max: self.max_frame,
                    },
                };
            }
            return Decoded::Frame {
                start: 0,
                end,
                consumed: nl + 1,
            };
        }
        let len = rest.len();
        // In crlf mode a line of exactly `max_frame` bytes may be followed by
        // its `\r` while the `\n` is still in flight.
        let pending_cr =
            self.strip_cr && len == self.max_frame.wrapping_add(1) && rest.last() == Some(&b'\r');
        if len > self.max_frame && !pending_cr {
            self.scanned = 0;
            self.discarding = true;
            return Decoded::TooLong {
                consumed: len,
                error: FrameError::TooLong {
                    len: None,
                    max: self.max_frame,
                },
            };
        }
        self.scanned = len;
        Decoded::Incomplete { consumed: 0 }
    }
}

impl Decoder for LineCodec {
    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Decoded {
        let mut skip = 0;
        if self.discarding {
            match memchr(b'\n', buf) {
                Some(i) => {
                    skip = i + 1;
                    self.discarding = false;
                    self.scanned = 0;
                }
                None => {
                    return Decoded::Incomplete {
                        consumed: buf.len(),
                    }
                }
            }
        }
        let rest = buf.get(skip..).unwrap_or_default();
        self.decode_line(rest).shifted(skip)
    }

    fn decode_eof(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        self.scanned = 0;
        if self.discarding {
            self.discarding = false;
            return None;
        }
        let mut end = buf.len();
        if self.strip_cr && buf.last() == Some(&b'\r') {
            end -= 1;
        }
        (end > 0 && end <= self.max_frame).then_some((0, end))
    }
}

impl Encoder for LineCodec {
    /// Appends the line and `\n` (`\r\n` in `crlf` mode). A line containing
    /// `\n` is refused: it would arrive as two messages.
    #[inline]
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if frame.len() > self.max_frame {
            return Err(FrameError::TooLong {
                len: Some(frame.len() as u64),
                max: self.max_frame,
            });
        }
        if memchr(b'\n', frame).is_some() {
            return Err(FrameError::DelimiterInFrame);
        }
        out.reserve(frame.len() + 2);
        out.extend_from_slice(frame);
        if self.strip_cr {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(b'\n');
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testutil::{drive, Outcome};

    fn frames(o: &Outcome) -> Vec<&[u8]> {
        o.frames.iter().map(|f| f.as_slice()).collect()
    }

    #[test]
    fn splits_lines_and_keeps_empty_ones() {
        let mut c = LineCodec::new(100, false);
        let o = drive(&mut c, &[b"a\n\nbc\r\n"], false);
        assert_eq!(frames(&o), vec![&b"a"[..], b"", b"bc\r"]);
    }

    #[test]
    fn crlf_strips_one_cr_and_accepts_bare_lf() {
        let mut c = LineCodec::new(100, true);
        let o = drive(&mut c, &[b"a\r\nb\n\r\n\r\r\n"], false);
        assert_eq!(frames(&o), vec![&b"a"[..], b"b", b"", b"\r"]);
    }

    #[test]
    fn crlf_split_across_chunks() {
        let mut c = LineCodec::new(3, true);
        // A line of exactly max_frame bytes whose \r and \n arrive apart.
        let o = drive(&mut c, &[b"abc\r", b"\n", b"de\r", b"\nf"], true);
        assert_eq!(frames(&o), vec![&b"abc"[..], b"de", b"f"]);
        assert!(o.errors.is_empty());
        assert!(o.max_held <= c.max_buffered() + 2);
    }

    #[test]
    fn one_byte_at_a_time_scans_each_byte_once() {
        let mut c = LineCodec::new(1 << 20, false);
        let mut buf = Vec::new();
        for _ in 0..1000 {
            buf.push(b'x');
            assert_eq!(c.decode(&buf), Decoded::Incomplete { consumed: 0 });
            assert_eq!(c.scanned, buf.len());
        }
        buf.push(b'\n');
        assert_eq!(
            c.decode(&buf),
            Decoded::Frame {
                start: 0,
                end: 1000,
                consumed: 1001
            }
        );
        assert_eq!(c.scanned, 0);
    }

    #[test]
    fn oversized_complete_line_reported_with_length() {
        let mut c = LineCodec::new(3, false);
        let o = drive(&mut c, &[b"abcd\nok\n"], false);
        assert_eq!(frames(&o), vec![&b"ok"[..]]);
        assert_eq!(
            o.errors,
            vec![FrameError::TooLong {
                len: Some(4),
                max: 3
            }]
        );
    }

    #[test]
    fn oversized_partial_line_fails_fast_then_resyncs() {
        let mut c = LineCodec::new(3, false);
        let o = drive(&mut c, &[b"ab", b"cd", b"efgh", b"ij\nok", b"\n"], false);
        assert_eq!(frames(&o), vec![&b"ok"[..]]);
        assert_eq!(o.errors, vec![FrameError::TooLong { len: None, max: 3 }]);
        assert!(o.max_held <= 3 + 4);
    }

    #[test]
    fn discard_end_and_next_frame_in_one_buffer() {
        // The verdict after discarding must cover the frame that follows in
        // the same buffer, or a driver waiting for more input would stall.
        let mut c = LineCodec::new(2, false);
        assert!(matches!(
            c.decode(b"abc"),
            Decoded::TooLong { consumed: 3, .. }
        ));
        assert_eq!(
            c.decode(b"d\nok\n"),
            Decoded::Frame {
                start: 2,
                end: 4,
                consumed: 5
            }
        );
    }

    #[test]
    fn crlf_cr_beyond_max_is_oversize() {
        let mut c = LineCodec::new(3, true);
        assert!(matches!(c.decode(b"abcd"), Decoded::TooLong { .. }));
        let mut c = LineCodec::new(3, true);
        assert_eq!(c.decode(b"abc\r"), Decoded::Incomplete { consumed: 0 });
        assert!(matches!(c.decode(b"abc\rx"), Decoded::TooLong { .. }));
    }

    #[test]
    fn decode_eof_returns_tail() {
        let mut c = LineCodec::new(5, true);
        assert_eq!(c.decode(b"quit\r"), Decoded::Incomplete { consumed: 0 });
        assert_eq!(c.decode_eof(b"quit\r"), Some((0, 4)));
        let mut c = LineCodec::new(5, false);
        assert_eq!(c.decode_eof(b""), None);
        assert_eq!(c.decode_eof(b"quit\r"), Some((0, 5)));
        assert_eq!(c.decode_eof(b"toolong"), None);
        // The tail of a line being discarded is not a frame.
        let mut c = LineCodec::new(2, false);
        assert!(matches!(c.decode(b"abc"), Decoded::TooLong { .. }));
        assert_eq!(c.decode_eof(b""), None);
    }

    #[test]
    fn encode() {
        let mut out = Vec::new();
        LineCodec::new(5, false).encode(b"ab", &mut out).unwrap();
        LineCodec::new(5, true).encode(b"cd", &mut out).unwrap();
        assert_eq!(out, b"ab\ncd\r\n");
        assert_eq!(
            LineCodec::new(5, false).encode(b"a\nb", &mut out),
            Err(FrameError::DelimiterInFrame)
        );
        assert!(matches!(
            LineCodec::new(1, false).encode(b"ab", &mut out),
            Err(FrameError::TooLong { .. })
        ));
    }
}
