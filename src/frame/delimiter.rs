//! `delim:...` framing: messages end with one of a set of byte strings.
//!
//! Like Netty's `DelimiterBasedFrameDecoder`, and unlike tokio-util's
//! `AnyDelimiterCodec` (single bytes only), a delimiter may be several bytes
//! long (`\r\n`, `\0\0`, `--boundary`), and several delimiters may be given.
//! The delimiter is never part of the frame.
//!
//! # Which delimiter ends a frame
//!
//! The one that gives the **shortest frame** (the leftmost match in the
//! stream), as in Netty: with `\r\n` and `\n`, `ABC\nDEF\r\n` is `ABC`,
//! `DEF`. To make the answer independent of how the bytes are split across
//! reads, a set in which one delimiter occurs inside another *other than at
//! its end* is rejected when the codec is built: with `\r` and `\r\n`, a
//! read ending in `\r` could not be decided without waiting for the next
//! byte (and at end of stream would never be). `\n` inside `\r\n` is fine
//! (a suffix), and so are delimiters with no overlap. With such a set two
//! delimiters can never match at the same place, so there are no ties.
//!
//! # Limits
//!
//! `max_frame` counts the frame **without** its delimiter. A complete
//! oversized frame is reported as [`Decoded::TooLong`] with its length and
//! consumed together with its delimiter. Once more bytes are buffered than
//! any legal frame plus a partial delimiter could need
//! (`max_frame + longest - 1`), the frame is reported at once (fail fast,
//! `len: None`, Netty's default for this decoder) and the decoder discards
//! input up to and including the next delimiter, keeping only the last
//! `longest - 1` bytes so that a delimiter split across reads is still seen.
//! Each oversized frame is reported exactly once.
//!
//! # Cost
//!
//! One `memchr::memmem::Finder` per delimiter, built once per
//! [`Framing`](super::Framing) and shared by all connections. Each
//! delimiter remembers where its next match is, or how far it has searched
//! without finding one, so no byte is searched twice for the same delimiter
//! (beyond the `len - 1` bytes a match can straddle): decoding is linear in
//! the input even when bytes trickle in and when one delimiter is far rarer
//! than another.
//!
//! # End of stream
//!
//! [`Decoder::decode_eof`] returns an unterminated tail as a last frame if it
//! is non-empty and within the limit (as tokio-util's delimiter codecs do;
//! Netty drops it). A partial delimiter at the end is left in the frame.

use std::sync::Arc;

use memchr::memmem::Finder;

use super::spec::escape;
use super::FramingError;
use super::{Decoded, Decoder, Encoder, FrameError};

/// An immutable, validated set of delimiters with their searchers.
#[derive(Debug)]
struct Delimiters {
    finders: Vec<Finder<'static>>,
    longest: usize,
}

impl Delimiters {
    fn needle(&self, i: usize) -> &[u8] {
        self.finders.get(i).map_or(&[][..], |f| f.needle())
    }
}

/// What a delimiter's searcher knows about the current buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Its first match starts here.
    Hit(usize),
    /// No match starts before here; search on from here.
    From(usize),
}

/// Codec for the `delim:...` framing. See the [module docs](self).
///
/// Cloning it (once per connection) shares the delimiter searchers and
/// copies only the small per-connection scan state.
#[derive(Debug, Clone)]
pub struct DelimiterCodec {
    set: Arc<Delimiters>,
    max_frame: usize,
    slots: Vec<Slot>,
    discarding: bool,
}

impl PartialEq for DelimiterCodec {
    /// Two codecs are equal when they frame the same way (same delimiters in
    /// the same order, same limit), whatever their scan state.
    fn eq(&self, other: &Self) -> bool {
        self.max_frame == other.max_frame && self.delimiters().eq(other.delimiters())
    }
}

impl Eq for DelimiterCodec {}

impl DelimiterCodec {
    /// True while the rest of an oversized frame is being dropped.
    pub(crate) fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// A codec splitting on `delimiters`; the first one is what
    /// [`Encoder::encode`] appends. Duplicates are dropped.
    ///
    /// Fails when the list is empty, a delimiter is empty (it would match
    /// everywhere), or one delimiter occurs inside another other than at its
    /// end (see the [module docs](self) for why).
    pub fn new(delimiters: Vec<Vec<u8>>, max_frame: usize) -> Result<Self, FramingError> {
        let mut unique: Vec<Vec<u8>> = Vec::with_capacity(delimiters.len());
        for d in delimiters {
            if d.is_empty() {
                return Err(FramingError::from(
                    "a delimiter must not be empty".to_string(),
                ));
            }
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        if unique.is_empty() {
            return Err(FramingError::from(
                "at least one delimiter is required".to_string(),
            ));
        }
        for outer in &unique {
            let body = outer.get(..outer.len() - 1).unwrap_or_default();
            for inner in &unique {
                if inner != outer && memchr::memmem::find(body, inner).is_some() {
                    return Err(FramingError::from(format!(
                        "delimiter \"{}\" occurs inside delimiter \"{}\" other than at its end, \
                         so where a frame ends would depend on how the bytes arrive; drop one of them",
                        escape(inner),
                        escape(outer)
                    )));
                }
            }
        }
        let longest = unique.iter().map(Vec::len).max().unwrap_or(1);
        let finders: Vec<Finder<'static>> = unique
            .iter()
            .map(|d| Finder::new(d.as_slice()).into_owned())
            .collect();
        let slots = vec![Slot::From(0); finders.len()];
        Ok(DelimiterCodec {
            set: Arc::new(Delimiters { finders, longest }),
            max_frame,
            slots,
            discarding: false,
        })
    }

    /// A fresh codec with the same configuration and no scan state: what a
    /// new connection gets. Cheaper than [`DelimiterCodec::new`] because the
    /// searchers are shared.
    pub fn fresh(&self) -> Self {
        DelimiterCodec {
            set: Arc::clone(&self.set),
            max_frame: self.max_frame,
            slots: vec![Slot::From(0); self.slots.len()],
            discarding: false,
        }
    }

    /// Changes the limit (used by [`Framing::with_max_frame`](super::Framing::with_max_frame)).
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The delimiters, in the order given (first = the one written by
    /// [`Encoder::encode`]).
    pub fn delimiters(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.set.finders.iter().map(|f| f.needle())
    }

    /// The longest frame accepted, delimiter not counted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The most bytes the caller holds after an `Incomplete` verdict: a
    /// frame of `max_frame` bytes plus all but the last byte of the longest
    /// delimiter.
    pub fn max_buffered(&self) -> usize {
        self.max_frame.saturating_add(self.set.longest - 1)
    }

    /// The leftmost complete delimiter match in `buf`: `(position, length)`.
    #[inline]
    fn find(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (slot, finder) in self.slots.iter_mut().zip(self.set.finders.iter()) {
            let dlen = finder.needle().len();
            let hit = match *slot {
                Slot::Hit(h) if h.saturating_add(dlen) <= buf.len() => Some(h),
                // A stale hit is only possible if the caller broke the
                // contract (a shorter buffer than last time): search again.
                Slot::Hit(_) => continue_search(slot, finder, buf, 0),
                Slot::From(from) => continue_search(slot, finder, buf, from),
            };
            if let Some(h) = hit {
                if best.is_none_or(|(b, _)| h < b) {
                    best = Some((h, dlen));
                }
            }
        }
        best
    }

    /// Forget the first `n` bytes of the buffer: the caller is consuming
    /// them.
    #[inline]
    fn consume(&mut self, n: usize) {
        for slot in &mut self.slots {
            *slot = match *slot {
                Slot::Hit(h) if h >= n => Slot::Hit(h - n),
                // A match overlapping the consumed bytes is gone; nothing
                // else of this delimiter is known beyond them.
                Slot::Hit(_) => Slot::From(0),
                Slot::From(f) => Slot::From(f.saturating_sub(n)),
            };
        }
    }

    #[inline]
    fn decode_frame(&mut self, rest: &[u8]) -> Decoded {
        if let Some((pos, dlen)) = self.find(rest) {
            let consumed = pos + dlen;
            self.consume(consumed);
            if pos > self.max_frame {
                return Decoded::TooLong {
                    consumed,
                    error: FrameError::TooLong {
                        len: Some(pos as u64),
                        max: self.max_frame,
                    },
                };
            }
            return Decoded::Frame {
                start: 0,
                end: pos,
                consumed,
            };
        }
        if rest.len() > self.max_buffered() {
            // Every frame that could still end here is over the limit.
            let consumed = rest.len() - (self.set.longest - 1);
            self.consume(consumed);
            self.discarding = true;
            return Decoded::TooLong {
                consumed,
                error: FrameError::TooLong {
                    len: None,
                    max: self.max_frame,
                },
            };
        }
        Decoded::Incomplete { consumed: 0 }
    }
}

/// Search `buf[from..]` for the slot's delimiter and record the result.
/// Returns the match position, if any.
#[inline]
fn continue_search(slot: &mut Slot, finder: &Finder<'_>, buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    let hay = buf.get(from..).unwrap_or_default();
    match finder.find(hay) {
        Some(i) => {
            *slot = Slot::Hit(from + i);
            Some(from + i)
        }
        None => {
            // A match may still start in the last `len - 1` bytes.
            *slot = Slot::From((buf.len() + 1).saturating_sub(finder.needle().len()));
            None
        }
    }
}

impl Decoder for DelimiterCodec {
    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Decoded {
        let mut skip = 0;
        if self.discarding {
            match self.find(buf) {
                Some((pos, dlen)) => {
                    skip = pos + dlen;
                    self.consume(skip);
                    self.discarding = false;
                }
                None => {
                    let consumed = buf.len().saturating_sub(self.set.longest - 1);
                    self.consume(consumed);
                    return Decoded::Incomplete { consumed };
                }
            }
        }
        let rest = buf.get(skip..).unwrap_or_default();
        self.decode_frame(rest).shifted(skip)
    }

    fn decode_eof(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        self.slots.fill(Slot::From(0));
        if self.discarding {
            self.discarding = false;
            return None;
        }
        (!buf.is_empty() && buf.len() <= self.max_frame).then_some((0, buf.len()))
    }
}

impl Encoder for DelimiterCodec {
    /// Appends the frame and the first delimiter. Refused: a frame over the
    /// limit, a frame containing any delimiter, and a frame whose end forms
    /// a delimiter together with the start of the appended one (with `\n`
    /// and `\r\n`, encoding `a\r` as `a\r\n` would decode as `a`).
    fn encode(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if frame.len() > self.max_frame {
            return Err(FrameError::TooLong {
                len: Some(frame.len() as u64),
                max: self.max_frame,
            });
        }
        let first = self.set.needle(0);
        for finder in &self.set.finders {
            if finder.find(frame).is_some() || straddles(frame, first, finder.needle()) {
                return Err(FrameError::DelimiterInFrame);
            }
        }
        out.reserve(frame.len() + first.len());
        out.extend_from_slice(frame);
        out.extend_from_slice(first);
        Ok(())
    }
}

/// Whether `delim` matches in `frame ++ after` starting inside `frame` and
/// ending inside `after` (at most `delim.len() - 1` positions to check).
fn straddles(frame: &[u8], after: &[u8], delim: &[u8]) -> bool {
    // `a` = bytes of the match taken from the end of `frame`.
    (1..delim.len()).any(|a| {
        let b = delim.len() - a;
        a <= frame.len()
            && b <= after.len()
            && frame.get(frame.len() - a..) == delim.get(..a)
            && after.get(..b) == delim.get(a..)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testutil::drive;

    fn codec(delims: &[&[u8]], max: usize) -> DelimiterCodec {
        DelimiterCodec::new(delims.iter().map(|d| d.to_vec()).collect(), max).unwrap()
    }

    #[test]
    fn construction_checks() {
        assert!(DelimiterCodec::new(vec![], 10).is_err());
        assert!(DelimiterCodec::new(vec![vec![]], 10).is_err());
        let e = DelimiterCodec::new(vec![b"\r".to_vec(), b"\r\n".to_vec()], 10).unwrap_err();
        assert!(
            e.to_string()
                .contains(r#""\r" occurs inside delimiter "\r\n""#),
            "{e}"
        );
        assert!(DelimiterCodec::new(vec![b"bc".to_vec(), b"abcd".to_vec()], 10).is_err());
        // A suffix is fine, and so is a duplicate.
        let c = codec(&[b"\r\n", b"\n", b"\n"], 10);
        assert_eq!(c.delimiters().count(), 2);
    }

    #[test]
    fn shortest_frame_wins() {
        let mut c = codec(&[b"\n", b"\r\n"], 100);
        let o = drive(&mut c, &[b"ABC\nDEF\r\nG\r\n"], false);
        assert_eq!(
            o.frames,
            vec![b"ABC".to_vec(), b"DEF".to_vec(), b"G".to_vec()]
        );
        let mut c = codec(&[b"--", b"::"], 100);
        let o = drive(&mut c, &[b"a::b--c--"], false);
        assert_eq!(o.frames, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn multi_byte_delimiter_split_across_chunks() {
        let mut c = codec(&[b"<END>"], 3);
        let o = drive(
            &mut c,
            &[b"ab<E", b"N", b"D", b">cd<", b"END><EN", b"D>"],
            true,
        );
        assert_eq!(o.frames, vec![b"ab".to_vec(), b"cd".to_vec(), b"".to_vec()]);
        assert!(o.errors.is_empty());
        assert!(o.max_held <= c.max_buffered());
    }

    #[test]
    fn rare_delimiter_is_not_rescanned() {
        let mut c = codec(&[b"\n", b"\0"], 100);
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(b"line\n");
        }
        input.extend_from_slice(b"last\0");
        assert!(c.decode(&input).eq(&Decoded::Frame {
            start: 0,
            end: 4,
            consumed: 5
        }));
        // `\0` was found once, far ahead; its position is kept, not searched
        // for again.
        assert_eq!(c.slots[1], Slot::Hit(input.len() - 6));
        let o = drive(&mut c, &[&input[5..]], false);
        assert_eq!(o.frames.len(), 100);
        assert_eq!(o.frames.last().unwrap(), b"last");
    }

    #[test]
    fn oversize_fails_fast_keeps_partial_delimiter_and_resyncs() {
        let mut c = codec(&[b"\r\n"], 3);
        let o = drive(&mut c, &[b"abcd", b"ef\r", b"\nok\r\n"], false);
        assert_eq!(o.errors, vec![FrameError::TooLong { len: None, max: 3 }]);
        assert_eq!(o.frames, vec![b"ok".to_vec()]);
        let mut c = codec(&[b"\r\n"], 3);
        let o = drive(&mut c, &[b"abcdef\r\nok\r\n"], false);
        assert_eq!(
            o.errors,
            vec![FrameError::TooLong {
                len: Some(6),
                max: 3
            }]
        );
        assert_eq!(o.frames, vec![b"ok".to_vec()]);
    }

    #[test]
    fn decode_eof_returns_tail() {
        let mut c = codec(&[b"\0"], 4);
        let o = drive(&mut c, &[b"a\0bc"], true);
        assert_eq!(o.frames, vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(c.decode_eof(b""), None);
        assert_eq!(c.decode_eof(b"abcde"), None);
    }

    #[test]
    fn encode_checks() {
        let c = codec(&[b"\n", b"\r\n"], 5);
        let mut out = Vec::new();
        c.encode(b"ab", &mut out).unwrap();
        assert_eq!(out, b"ab\n");
        assert_eq!(
            c.encode(b"a\r\nb", &mut out),
            Err(FrameError::DelimiterInFrame)
        );
        assert_eq!(
            c.encode(b"a\r", &mut out),
            Err(FrameError::DelimiterInFrame)
        );
        assert!(matches!(
            c.encode(b"abcdef", &mut out),
            Err(FrameError::TooLong { .. })
        ));
        let c = codec(&[b"ab", b"ba"], 5);
        assert_eq!(c.encode(b"xb", &mut out), Err(FrameError::DelimiterInFrame));
        assert!(straddles(b"xb", b"ab", b"ba"));
        assert!(!straddles(b"xa", b"ab", b"ba"));
    }
}
