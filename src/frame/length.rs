//! `len:N` framing: each message is preceded by a length field.
//!
//! The framing of most binary protocols. The parameters are those of
//! Netty's `LengthFieldBasedFrameDecoder` and tokio-util's
//! `LengthDelimitedCodec`, with Netty's meaning:
//!
//! ```text
//! | offset bytes | length field (field_len bytes) | rest of the frame ... |
//! |<----------- header = offset + field_len ---->|
//! frame total = offset + field_len + field value + length_adjustment
//! frame handed to the handler = frame[strip..total]
//! ```
//!
//! * `length_field_offset`: header bytes before the length field (a magic
//!   number, a type byte). Default 0.
//! * `length_field_len`: 1, 2, 3, 4 or 8 bytes, read **unsigned** in the
//!   chosen [`Endian`]ness (Netty reads 8 bytes as signed; a value that
//!   large is over any limit anyway). Default 4.
//! * `length_adjustment`: added to the field value. 0 when the field counts
//!   the bytes after it; `-(offset + field_len)` when it counts the whole
//!   frame; positive when more header follows the field. Default 0.
//! * `strip`: bytes removed from the front of each frame before it is
//!   handed on. Default `offset + field_len`, the header, so the handler
//!   sees the payload; 0 keeps the header. At most the header length.
//!
//! # Limits
//!
//! `max_frame` is compared with the **whole frame, header included, after
//! adjustment and before stripping** (Netty's rule; tokio-util compares the
//! raw field value, so a positive adjustment can exceed its limit, tokio
//! #8469). A too-long frame is reported as [`Decoded::TooLong`] once, as
//! soon as its header is seen (fail fast), and then exactly its `total`
//! bytes are discarded, over as many calls as it takes, in bounded memory:
//! while discarding the decoder consumes whatever the caller holds, and it
//! never asks the caller to buffer more than `max_frame` bytes (unlike
//! tokio-util, which reserves the announced length up front, tokio #333).
//! After the discarded frame, decoding carries on: the stream is still in
//! sync.
//!
//! # Corrupt lengths
//!
//! A length that yields a frame shorter than its own header (a negative
//! adjustment larger than the field), or one too large to represent at
//! all, cannot be skipped: nobody knows where the next frame starts. It is
//! reported once as [`Decoded::TooLong`] with a [`FrameError::BadLength`]
//! error, and from then on the decoder consumes and drops **everything** it
//! is shown. The driver should close the connection (it does so under
//! either [`OnOversize`](super::OnOversize) policy if it honours this
//! documentation; at worst the peer's bytes are read and thrown away).
//!
//! # End of stream
//!
//! A partial frame when the peer closes is a truncated message:
//! [`Decoder::decode_eof`] returns `None`.
//!
//! # Encoding
//!
//! [`Encoder::encode`] writes `length_field_offset` zero bytes, the field
//! (`payload.len() - length_adjustment`), then the payload. Decoding that
//! yields `header[strip..] ++ payload`: exactly the payload with the default
//! `strip`. Headers with real content before or after the field need a
//! hand-written encoder.

use super::FramingError;
use super::{Decoded, Decoder, Encoder, FrameError, DEFAULT_MAX_FRAME};

/// Byte order of the length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endian {
    /// Network byte order, most significant byte first: the default, as in
    /// Netty and tokio-util, and what almost every wire protocol uses.
    #[default]
    Big,
    /// Least significant byte first, for protocols born on x86 structs.
    Little,
}

/// Configuration of the length-field framing. See the [module docs](self)
/// for what each field means.
///
/// Built with chained methods named after the fields, then checked by
/// [`LengthField::validate`] or turned into a codec by
/// [`LengthField::build`]; a bad combination is an `Err`, never a panic
/// (tokio-util asserts on some of these).
///
/// ```
/// use sockserv::frame::{Endian, LengthField};
/// // A 2-byte little-endian length that counts the whole frame, header kept.
/// let codec = LengthField::new(2)
///     .endian(Endian::Little)
///     .length_adjustment(-2)
///     .strip(0)
///     .build()
///     .unwrap();
/// # let _ = codec;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthField {
    /// Header bytes before the length field.
    pub length_field_offset: usize,
    /// Size of the length field in bytes: 1, 2, 3, 4 or 8.
    pub length_field_len: usize,
    /// Byte order of the length field.
    pub endian: Endian,
    /// Added to the field value to get the bytes that follow the field.
    pub length_adjustment: i64,
    /// Bytes removed from the front of each frame; `None` means the whole
    /// header (`length_field_offset + length_field_len`).
    pub strip: Option<usize>,
    /// Largest whole frame (header included) accepted or written.
    pub max_frame: usize,
}

impl Default for LengthField {
    /// A 4-byte big-endian length of the payload that follows, header
    /// stripped: the common case and tokio-util's default.
    fn default() -> Self {
        LengthField::new(4)
    }
}

impl LengthField {
    /// A `field_len`-byte big-endian length of the payload that follows it,
    /// no offset, no adjustment, header stripped, 64 KiB limit.
    pub fn new(field_len: usize) -> Self {
        LengthField {
            length_field_offset: 0,
            length_field_len: field_len,
            endian: Endian::Big,
            length_adjustment: 0,
            strip: None,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Sets the number of header bytes before the length field.
    pub fn length_field_offset(mut self, n: usize) -> Self {
        self.length_field_offset = n;
        self
    }

    /// Sets the length field size (1, 2, 3, 4 or 8 bytes).
    pub fn length_field_len(mut self, n: usize) -> Self {
        self.length_field_len = n;
        self
    }

    /// Sets the byte order of the length field.
    pub fn endian(mut self, endian: Endian) -> Self {
        self.endian = endian;
        self
    }

    /// Sets the value added to the length field (Netty's meaning).
    pub fn length_adjustment(mut self, adjustment: i64) -> Self {
        self.length_adjustment = adjustment;
        self
    }

    /// Sets how many bytes to strip from the front of each frame.
    pub fn strip(mut self, n: usize) -> Self {
        self.strip = Some(n);
        self
    }

    /// Sets the limit on the whole frame, header included.
    pub fn max_frame(mut self, n: usize) -> Self {
        self.max_frame = n;
        self
    }

    /// Header length: `length_field_offset + length_field_len` (saturating;
    /// an overflowing sum fails [`validate`](Self::validate)).
    pub fn header_len(&self) -> usize {
        self.length_field_offset
            .saturating_add(self.length_field_len)
    }

    /// The effective strip: the explicit one, or the header length.
    pub fn effective_strip(&self) -> usize {
        self.strip.unwrap_or_else(|| self.header_len())
    }

    /// Checks the configuration. Errors are one-line messages naming the
    /// parameter and what is allowed.
    pub fn validate(&self) -> Result<(), FramingError> {
        let n = self.length_field_len;
        if !matches!(n, 1 | 2 | 3 | 4 | 8) {
            return Err(FramingError::from(format!(
                "length field length must be 1, 2, 3, 4 or 8 bytes, not {n}"
            )));
        }
        if self.max_frame == 0 {
            return Err(FramingError::from(
                "the maximum frame size must be at least 1 byte".to_string(),
            ));
        }
        let header = self
            .length_field_offset
            .checked_add(n)
            .filter(|&h| h <= self.max_frame)
            .ok_or_else(|| {
                format!(
                    "a length field at offset {} of {n} bytes does not fit in the maximum frame size of {} bytes",
                    self.length_field_offset, self.max_frame
                )
            })?;
        if let Some(strip) = self.strip {
            if strip > header {
                return Err(FramingError::from(format!(
                    "strip of {strip} bytes exceeds the {header}-byte header (offset + field length)"
                )));
            }
        }
        Ok(())
    }

    /// Validates and makes a codec with fresh state.
    pub fn build(&self) -> Result<LengthCodec, FramingError> {
        self.validate()?;
        Ok(LengthCodec {
            offset: self.length_field_offset,
            field_len: self.length_field_len,
            header: self.header_len(),
            endian: self.endian,
            adjustment: self.length_adjustment,
            strip: self.effective_strip(),
            max_frame: self.max_frame,
            state: State::Header,
        })
    }
}

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary (or inside a frame that fits the limit).
    Header,
    /// Dropping the rest of an oversized frame: this many bytes to go.
    Discard(u64),
    /// A corrupt length was seen: drop everything.
    Corrupt,
}

/// Codec for the `len:N` framing, made by [`LengthField::build`]. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LengthCodec {
    offset: usize,
    field_len: usize,
    header: usize,
    endian: Endian,
    adjustment: i64,
    strip: usize,
    max_frame: usize,
    state: State,
}

impl LengthCodec {
    /// True while an oversized (or corrupt) frame is being dropped.
    pub(crate) fn is_discarding(&self) -> bool {
        !matches!(self.state, State::Header)
    }

    /// The configuration this codec was built from (explicit strip).
    pub fn config(&self) -> LengthField {
        LengthField {
            length_field_offset: self.offset,
            length_field_len: self.field_len,
            endian: self.endian,
            length_adjustment: self.adjustment,
            strip: Some(self.strip),
            max_frame: self.max_frame,
        }
    }

    /// The limit on the whole frame, header included.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The most bytes the caller holds after an `Incomplete` verdict: less
    /// than one frame of `max_frame` bytes.
    pub fn max_buffered(&self) -> usize {
        self.max_frame.saturating_sub(1)
    }

    /// Reads the length field from the header bytes.
    #[inline]
    fn read_field(&self, field: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        let n = field.len().min(8);
        match self.endian {
            Endian::Big => {
                if let (Some(dst), Some(src)) = (bytes.get_mut(8 - n..), field.get(..n)) {
                    dst.copy_from_slice(src);
                }
                u64::from_be_bytes(bytes)
            }
            Endian::Little => {
                if let (Some(dst), Some(src)) = (bytes.get_mut(..n), field.get(..n)) {
                    dst.copy_from_slice(src);
                }
                u64::from_le_bytes(bytes)
            }
        }
    }

    /// Enter the corrupt state and report it.
    #[cold]
    fn corrupt(&mut self, consumed: usize, msg: String) -> Decoded {
        self.state = State::Corrupt;
        Decoded::TooLong {
            consumed,
            error: FrameError::BadLength(msg),
        }
    }

    /// Decode one frame at the start of `rest`, in the `Header` state.
    #[inline]
    fn decode_frame(&mut self, rest: &[u8]) -> Decoded {
        let Some(field) = rest.get(self.offset..self.header) else {
            return Decoded::Incomplete { consumed: 0 };
        };
        let value = self.read_field(field);
        let total = self.header as i128 + i128::from(value) + i128::from(self.adjustment);
        if total < self.header as i128 {
            let msg = format!(
                "length {value} with adjustment {} gives a frame of {total} bytes, shorter than its {}-byte header",
                self.adjustment, self.header
            );
            return self.corrupt(rest.len(), msg);
        }
        if total > self.max_frame as i128 {
            let Ok(len) = u64::try_from(total) else {
                let msg = format!(
                    "length {value} with adjustment {} gives a frame too large to represent",
                    self.adjustment
                );
                return self.corrupt(rest.len(), msg);
            };
            let held = rest.len() as u64;
            let consumed = if len > held {
                self.state = State::Discard(len - held);
                rest.len()
            } else {
                // len <= held <= usize::MAX
                len as usize
            };
            return Decoded::TooLong {
                consumed,
                error: FrameError::TooLong {
                    len: Some(len),
                    max: self.max_frame,
                },
            };
        }
        // header <= total <= max_frame: fits in usize.
        let total = total as usize;
        if rest.len() < total {
            return Decoded::Incomplete { consumed: 0 };
        }
        Decoded::Frame {
            start: self.strip,
            end: total,
            consumed: total,
        }
    }
}

impl Decoder for LengthCodec {
    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Decoded {
        let mut skip = 0;
        match self.state {
            State::Header => {}
            State::Corrupt => {
                return Decoded::Incomplete {
                    consumed: buf.len(),
                }
            }
            State::Discard(remaining) => {
                let held = buf.len() as u64;
                if remaining > held {
                    self.state = State::Discard(remaining - held);
                    return Decoded::Incomplete {
                        consumed: buf.len(),
                    };
                }
                self.state = State::Header;
                // remaining <= held <= usize::MAX
                skip = remaining as usize;
            }
        }
        let rest = buf.get(skip..).unwrap_or_default();
        self.decode_frame(rest).shifted(skip)
    }
}

impl Encoder for LengthCodec {
    /// Writes `length_field_offset` zero bytes, the length field, then the
    /// payload. Refused when the whole frame would exceed `max_frame`, or
    /// when `payload.len() - length_adjustment` is negative or does not fit
    /// in the field (tokio-util used to truncate it silently, tokio #5080).
    #[inline]
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let total = self.header.saturating_add(frame.len());
        if total > self.max_frame {
            return Err(FrameError::TooLong {
                len: Some(total as u64),
                max: self.max_frame,
            });
        }
        let value = frame.len() as i128 - i128::from(self.adjustment);
        let limit: i128 = 1i128 << (8 * self.field_len);
        if value < 0 || value >= limit {
            return Err(FrameError::BadLength(format!(
                "a {}-byte frame with length adjustment {} needs a length of {value}, \
                 outside what a {}-byte field holds",
                frame.len(),
                self.adjustment,
                self.field_len
            )));
        }
        // 0 <= value < 2^64
        let value = value as u64;
        out.reserve(total);
        out.resize(out.len() + self.offset, 0);
        let n = self.field_len;
        match self.endian {
            Endian::Big => {
                out.extend_from_slice(value.to_be_bytes().get(8 - n..).unwrap_or_default())
            }
            Endian::Little => {
                out.extend_from_slice(value.to_le_bytes().get(..n).unwrap_or_default())
            }
        }
        out.extend_from_slice(frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testutil::drive;

    fn one(field: LengthField, input: &[u8]) -> Vec<u8> {
        let mut c = field.build().unwrap();
        let o = drive(&mut c, &[input], false);
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        assert_eq!(o.frames.len(), 1);
        o.frames.into_iter().next().unwrap()
    }

    // The layouts from Netty's LengthFieldBasedFrameDecoder javadoc.
    #[test]
    fn netty_examples() {
        let hello = b"HELLO, WORLD";
        let with = |h: &[u8]| [h, &hello[..]].concat();
        // 2-byte length, header kept.
        let input = with(b"\x00\x0C");
        assert_eq!(one(LengthField::new(2).strip(0), &input), input);
        // 2-byte length, header stripped (the default).
        assert_eq!(one(LengthField::new(2), &input), hello);
        // Length counts the whole message.
        let input = with(b"\x00\x0E");
        assert_eq!(
            one(LengthField::new(2).length_adjustment(-2).strip(0), &input),
            input
        );
        // 3-byte length after a 2-byte header.
        let input = with(b"\xCA\xFE\x00\x00\x0C");
        assert_eq!(
            one(LengthField::new(3).length_field_offset(2).strip(0), &input),
            input
        );
        // 3-byte length, then a 2-byte header it does not count.
        let input = with(b"\x00\x00\x0C\xCA\xFE");
        assert_eq!(
            one(LengthField::new(3).length_adjustment(2).strip(0), &input),
            input
        );
        // HDR1, LEN, HDR2: strip HDR1 and LEN.
        let input = with(b"\xCA\x00\x0C\xFE");
        assert_eq!(
            one(
                LengthField::new(2)
                    .length_field_offset(1)
                    .length_adjustment(1)
                    .strip(3),
                &input
            ),
            [&b"\xFE"[..], hello].concat()
        );
        // Same, the length counting the whole message.
        let input = with(b"\xCA\x00\x10\xFE");
        assert_eq!(
            one(
                LengthField::new(2)
                    .length_field_offset(1)
                    .length_adjustment(-3)
                    .strip(3),
                &input
            ),
            [&b"\xFE"[..], hello].concat()
        );
    }

    #[test]
    fn little_endian_and_wide_fields() {
        assert_eq!(
            one(
                LengthField::new(3).endian(Endian::Little),
                b"\x02\x00\x00hi"
            ),
            b"hi"
        );
        assert_eq!(one(LengthField::new(8), b"\0\0\0\0\0\0\0\x02hi"), b"hi");
    }

    #[test]
    fn config_errors() {
        for n in [0, 5, 6, 7, 9, 16] {
            assert!(LengthField::new(n).validate().is_err(), "{n}");
        }
        assert!(LengthField::new(4).strip(5).validate().is_err());
        assert!(LengthField::new(4).max_frame(3).validate().is_err());
        assert!(LengthField::new(4).max_frame(0).validate().is_err());
        assert!(LengthField::new(4)
            .length_field_offset(usize::MAX)
            .validate()
            .is_err());
        assert!(LengthField::new(4).strip(4).max_frame(4).validate().is_ok());
    }

    #[test]
    fn oversize_is_reported_once_and_discarded_exactly() {
        let mut c = LengthField::new(2).max_frame(6).build().unwrap();
        // A 2+8 byte frame (too long), then a 2+1 byte frame.
        let input = b"\x00\x08abcdefgh\x00\x01z";
        let chunks: Vec<&[u8]> = input.chunks(3).collect();
        let o = drive(&mut c, &chunks, false);
        assert_eq!(
            o.errors,
            vec![FrameError::TooLong {
                len: Some(10),
                max: 6
            }]
        );
        assert_eq!(o.frames, vec![b"z".to_vec()]);
        assert!(o.max_held < 6);
    }

    #[test]
    fn huge_length_is_bounded() {
        let mut c = LengthField::new(4).build().unwrap();
        assert_eq!(
            c.decode(b"\xff\xff\xff\xffabc"),
            Decoded::TooLong {
                consumed: 7,
                error: FrameError::TooLong {
                    len: Some(4 + 0xffff_ffff),
                    max: DEFAULT_MAX_FRAME
                }
            }
        );
        assert_eq!(c.decode(b"more"), Decoded::Incomplete { consumed: 4 });
        // A total past u64::MAX cannot be skipped: corrupt.
        let mut c = LengthField::new(8).build().unwrap();
        assert!(matches!(
            c.decode(b"\xff\xff\xff\xff\xff\xff\xff\xff"),
            Decoded::TooLong {
                consumed: 8,
                error: FrameError::BadLength(_),
            }
        ));
        assert_eq!(c.decode(b"more"), Decoded::Incomplete { consumed: 4 });
    }

    #[test]
    fn corrupt_length_discards_everything() {
        let mut c = LengthField::new(2).length_adjustment(-4).build().unwrap();
        let d = c.decode(b"\x00\x01abc");
        assert!(
            matches!(
                d,
                Decoded::TooLong {
                    consumed: 5,
                    error: FrameError::BadLength(_)
                }
            ),
            "{d:?}"
        );
        assert_eq!(c.decode(b"\x00\x04ok"), Decoded::Incomplete { consumed: 4 });
    }

    #[test]
    fn discard_end_and_next_frame_in_one_buffer() {
        let mut c = LengthField::new(1).max_frame(3).build().unwrap();
        assert!(matches!(
            c.decode(b"\x05ab"),
            Decoded::TooLong { consumed: 3, .. }
        ));
        assert_eq!(
            c.decode(b"cde\x01z"),
            Decoded::Frame {
                start: 4,
                end: 5,
                consumed: 5
            }
        );
        assert_eq!(c.decode_eof(b"\x01"), None);
    }

    #[test]
    fn encode() {
        let c = LengthField::new(2)
            .length_field_offset(1)
            .endian(Endian::Little)
            .build()
            .unwrap();
        let mut out = Vec::new();
        c.encode(b"abc", &mut out).unwrap();
        assert_eq!(out, b"\x00\x03\x00abc");
        let c = LengthField::new(1).max_frame(1000).build().unwrap();
        assert!(matches!(
            c.encode(&[0; 256], &mut out),
            Err(FrameError::BadLength(_))
        ));
        let c = LengthField::new(1).length_adjustment(5).build().unwrap();
        assert!(matches!(
            c.encode(b"abc", &mut out),
            Err(FrameError::BadLength(_))
        ));
        let c = LengthField::new(4).max_frame(6).build().unwrap();
        assert!(matches!(
            c.encode(b"abc", &mut out),
            Err(FrameError::TooLong {
                len: Some(7),
                max: 6
            })
        ));
    }
}
