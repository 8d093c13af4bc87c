//! A framed message session: bytes in, frames through the handler, reply
//! bytes out. No I/O here — the blocking and the async engine both feed it
//! what they read and write what it produces, so the message path exists
//! once.
//!
//! Memory stays bounded: a session keeps only the unfinished tail of a frame
//! (at most the codec's maximum frame plus one read), and nothing at all
//! while the connection is idle between whole frames, which is what keeps an
//! idle connection small.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::frame::{Codec, Decoded, Decoder, FrameError, Framing, OnOversize};
use crate::handler::{MessageHandler, Reply};
use crate::hooks::{Failure, Hooks};

/// What the connection should do after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// Write what is pending, then close (the handler asked, or a frame
    /// broke the limit under fail-fast).
    Close,
}

/// Per-connection framing state.
#[derive(Debug)]
pub(crate) struct Session {
    codec: Codec,
    on_oversize: OnOversize,
    /// Bytes of an unfinished frame carried over between reads.
    pending: Vec<u8>,
    /// When the unfinished frame in `pending` began to arrive: the read
    /// timeout counts from here, not from the last byte, so a peer that
    /// trickles one byte at a time (slowloris) is still cut.
    partial_since: Option<Instant>,
    peer: Address,
}

/// What a session needs from the server to handle a frame.
pub(crate) struct Ctx<'a> {
    pub(crate) handler: &'a dyn MessageHandler,
    pub(crate) hooks: &'a Hooks,
}

impl Session {
    pub(crate) fn new(framing: &Framing, peer: Address) -> Session {
        Session {
            codec: framing.codec(),
            on_oversize: framing.on_oversize(),
            pending: Vec::new(),
            partial_since: None,
            peer,
        }
    }

    pub(crate) fn peer(&self) -> &Address {
        &self.peer
    }

    /// How long the next read may wait: the idle timeout between frames;
    /// inside a frame, what is left of the read timeout since the frame
    /// began (or the idle timeout if that is sooner).
    pub(crate) fn read_wait(
        &self,
        idle: Option<Duration>,
        read: Option<Duration>,
    ) -> Option<Duration> {
        match (self.partial_since, read) {
            (Some(since), Some(limit)) => {
                let left = limit.saturating_sub(since.elapsed());
                Some(idle.map_or(left, |i| i.min(left)))
            }
            _ => idle,
        }
    }

    /// Notes when the unfinished tail began, after a feed that consumed
    /// `used` bytes of a buffer that held a partial frame before or not.
    fn track_partial(&mut self, was_partial: bool, used: usize) {
        if self.pending.is_empty() {
            self.partial_since = None;
        } else if !was_partial || used > 0 || self.partial_since.is_none() {
            // A new frame started (or the old one finished and another
            // began) in this read.
            self.partial_since = Some(Instant::now());
        }
    }

    /// Handles every whole frame in `data` (after any carried-over bytes),
    /// appending encoded replies to `out`.
    #[inline]
    pub(crate) fn feed(&mut self, data: &[u8], ctx: &Ctx<'_>, out: &mut Vec<u8>) -> Flow {
        if self.pending.is_empty() {
            // The common case: decode straight from the read buffer and
            // keep only the unfinished tail.
            let (used, flow) = Self::process(
                &mut self.codec,
                self.on_oversize,
                &self.peer,
                data,
                ctx,
                out,
            );
            if flow == Flow::Continue && used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
            self.track_partial(false, used);
            flow
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let (used, flow) = Self::process(
                &mut self.codec,
                self.on_oversize,
                &self.peer,
                &pending,
                ctx,
                out,
            );
            self.pending = pending;
            self.pending.drain(..used);
            if self.pending.is_empty() {
                // Give the memory back while idle.
                self.pending = Vec::new();
            }
            self.track_partial(true, used);
            flow
        }
    }

    /// The peer closed its side: handle a final unterminated frame if the
    /// codec accepts one.
    pub(crate) fn finish(&mut self, ctx: &Ctx<'_>, out: &mut Vec<u8>) -> Flow {
        if self.pending.is_empty() {
            return Flow::Continue;
        }
        let pending = std::mem::take(&mut self.pending);
        match self.codec.decode_eof(&pending) {
            Some((start, end)) => Self::call(
                &self.codec,
                &self.peer,
                &pending[start.min(end)..end.min(pending.len())],
                ctx,
                out,
            ),
            None => Flow::Continue,
        }
    }

    #[inline]
    fn process(
        codec: &mut Codec,
        on_oversize: OnOversize,
        peer: &Address,
        buf: &[u8],
        ctx: &Ctx<'_>,
        out: &mut Vec<u8>,
    ) -> (usize, Flow) {
        let mut pos = 0;
        while pos < buf.len() {
            match codec.decode(&buf[pos..]) {
                Decoded::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    let frame = &buf[pos + start..pos + end];
                    pos += consumed;
                    if Self::call(codec, peer, frame, ctx, out) == Flow::Close {
                        return (pos, Flow::Close);
                    }
                    if consumed == 0 {
                        break;
                    }
                }
                Decoded::Incomplete { consumed } => {
                    pos += consumed;
                    break;
                }
                Decoded::TooLong { consumed, error } => {
                    pos += consumed;
                    // A corrupt length cannot be skipped (nobody knows where
                    // the next frame starts): close under either policy.
                    let corrupt = matches!(error, FrameError::BadLength(_));
                    ctx.hooks.error(peer, Failure::Frame(error));
                    if on_oversize == OnOversize::Close || corrupt {
                        return (pos, Flow::Close);
                    }
                }
            }
        }
        (pos.min(buf.len()), Flow::Continue)
    }

    #[inline]
    fn call(codec: &Codec, peer: &Address, frame: &[u8], ctx: &Ctx<'_>, out: &mut Vec<u8>) -> Flow {
        let mark = out.len();
        let mut reply = Reply::framed(out, codec, peer);
        let result = catch_unwind(AssertUnwindSafe(|| ctx.handler.handle(frame, &mut reply)));
        let close = reply.wants_close();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ctx.hooks.error(peer, Failure::Handler(e)),
            Err(payload) => {
                // A half-built reply would corrupt the stream: drop it.
                out.truncate(mark);
                ctx.hooks.error(peer, Failure::from_panic(payload));
            }
        }
        if close {
            Flow::Close
        } else {
            Flow::Continue
        }
    }
}
