//! Frames through the handler: bytes in, replies out, no I/O and no clock.
//!
//! A session keeps only the unfinished tail of a frame (at most the codec's
//! maximum frame plus one read) — nothing at all while the connection is
//! idle between whole frames, which is what keeps an idle connection small.
//! It also stops decoding once the replies waiting to be written pass the
//! backlog limit, keeping the rest of the input until the connection has
//! written them: a peer that sends without reading cannot make the server
//! hold more than one limit of replies (plus one reply) for it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::addr::Address;
use crate::frame::{Codec, Decoded, Decoder, FrameError, Framing, OnOversize};
use crate::hooks::{Failure, Hooks};
use crate::message::{MessageHandler, Reply};
use crate::meter::{Counts, ListenerMeter};

/// What the connection should do after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// Write what is pending, then close (the handler asked, or a frame
    /// broke the limit under fail-fast).
    Close,
}

/// What a session needs from the server to handle a frame.
pub(crate) struct Ctx<'a> {
    pub(crate) handler: &'a dyn MessageHandler,
    pub(crate) hooks: &'a Hooks,
}

/// Per-connection framing state.
#[derive(Debug)]
pub(crate) struct Session {
    codec: Codec,
    on_oversize: OnOversize,
    /// Bytes carried over between reads: an unfinished frame, or input
    /// held back while the backlog of replies was full (`held`).
    pending: Vec<u8>,
    /// `pending` may hold whole frames, not yet decoded because the
    /// replies waiting to be written passed the limit.
    held: bool,
    peer: Address,
    /// What the PROXY header said, once the gate admitted its client.
    proxy: Option<Arc<crate::proxy::ProxyInfo>>,
    counts: Counts,
    /// Times each handler call into this histogram (when the admin
    /// endpoint asks for it).
    timing: Option<Arc<ListenerMeter>>,
}

impl Session {
    pub(crate) fn new(framing: &Framing, peer: Address) -> Session {
        Session {
            codec: framing.codec(),
            on_oversize: framing.on_oversize(),
            pending: Vec::new(),
            held: false,
            peer,
            proxy: None,
            counts: Counts::default(),
            timing: None,
        }
    }

    /// Times every handler call into `meter`'s histogram.
    pub(crate) fn time_into(&mut self, meter: Arc<ListenerMeter>) {
        self.timing = Some(meter);
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn peer(&self) -> &Address {
        &self.peer
    }

    /// The peer's address as a layer below learnt it (the PROXY header).
    pub(crate) fn set_peer(&mut self, peer: Address) {
        self.peer = peer;
    }

    /// What the PROXY header said, for the handler ([`Reply::proxy`]).
    pub(crate) fn set_proxy(&mut self, info: Arc<crate::proxy::ProxyInfo>) {
        self.proxy = Some(info);
    }

    /// Keeps `data` undecoded until [`Session::resume`] (input that
    /// arrived with a PROXY header waits for the gate).
    pub(crate) fn hold(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        self.held = !self.pending.is_empty();
    }

    /// Drops every byte kept: the connection is refused.
    pub(crate) fn discard(&mut self) {
        self.pending = Vec::new();
        self.held = false;
    }

    /// Frames finished so far, handled or dropped as oversized: when this
    /// moves, the frame in progress (if any) is a new one.
    pub(crate) fn frames_ended(&self) -> u64 {
        self.counts.frames + self.counts.oversize
    }

    /// True while a frame has started and not ended: bytes of it are kept,
    /// or the codec is dropping an oversized one. The read timeout runs
    /// exactly while this holds.
    pub(crate) fn in_frame(&self) -> bool {
        (!self.pending.is_empty() && !self.held) || self.codec.is_discarding()
    }

    /// Input is held back until the backlog of replies is written.
    pub(crate) fn has_held(&self) -> bool {
        self.held
    }

    /// Handles every whole frame in `data` (after any carried-over bytes),
    /// appending encoded replies to `out`, until `out` holds `limit` bytes;
    /// the rest of the input is kept for [`Session::resume`].
    #[inline]
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        ctx: &Ctx<'_>,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Flow {
        if self.pending.is_empty() {
            // The common case: decode straight from the read buffer and
            // keep only the unfinished tail.
            let (used, flow) = self.process(data, ctx, out, limit);
            if flow == Flow::Continue && used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
            flow
        } else {
            self.pending.extend_from_slice(data);
            self.resume(ctx, out, limit)
        }
    }

    /// Decodes what was carried over (held-back input) until `out` holds
    /// `limit` bytes.
    pub(crate) fn resume(&mut self, ctx: &Ctx<'_>, out: &mut Vec<u8>, limit: usize) -> Flow {
        let pending = std::mem::take(&mut self.pending);
        let (used, flow) = self.process(&pending, ctx, out, limit);
        self.pending = pending;
        if flow == Flow::Close {
            self.pending = Vec::new();
            self.held = false;
            return flow;
        }
        self.pending.drain(..used);
        if self.pending.is_empty() {
            // Give the memory back while idle.
            self.pending = Vec::new();
            self.held = false;
        }
        flow
    }

    /// The peer closed its side: handle a final unterminated frame if the
    /// codec accepts one (after any held-back frames).
    pub(crate) fn finish(&mut self, ctx: &Ctx<'_>, out: &mut Vec<u8>) -> Flow {
        if self.held && self.resume(ctx, out, usize::MAX) == Flow::Close {
            return Flow::Close;
        }
        if self.pending.is_empty() {
            return Flow::Continue;
        }
        let pending = std::mem::take(&mut self.pending);
        match self.codec.decode_eof(&pending) {
            Some((start, end)) => {
                let frame = &pending[start.min(end)..end.min(pending.len())];
                self.call(frame, ctx, out)
            }
            None => Flow::Continue,
        }
    }

    /// Decodes frames from `buf` and hands each to the handler. Returns how
    /// many bytes were consumed.
    #[inline]
    fn process(
        &mut self,
        buf: &[u8],
        ctx: &Ctx<'_>,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> (usize, Flow) {
        let mut pos = 0;
        self.held = false;
        while pos < buf.len() {
            if out.len() >= limit {
                // The backlog is full: decode the rest once it is written.
                self.held = true;
                break;
            }
            match self.codec.decode(&buf[pos..]) {
                Decoded::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    let frame = &buf[pos + start..pos + end];
                    pos += consumed;
                    if self.call(frame, ctx, out) == Flow::Close {
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
                    self.counts.oversize += 1;
                    // A corrupt length cannot be skipped (nobody knows where
                    // the next frame starts): close under either policy.
                    let corrupt = matches!(error, FrameError::BadLength(_));
                    ctx.hooks.error(&self.peer, Failure::Frame(error));
                    if self.on_oversize == OnOversize::Close || corrupt {
                        return (pos, Flow::Close);
                    }
                }
            }
        }
        (pos.min(buf.len()), Flow::Continue)
    }

    #[inline]
    fn call(&mut self, frame: &[u8], ctx: &Ctx<'_>, out: &mut Vec<u8>) -> Flow {
        self.counts.frames += 1;
        let mark = out.len();
        let mut reply = Reply::framed(out, &self.codec, &self.peer, self.proxy.as_deref());
        let started = self.timing.as_ref().map(|_| Instant::now());
        let result = catch_unwind(AssertUnwindSafe(|| ctx.handler.handle(frame, &mut reply)));
        if let (Some(t), Some(m)) = (started, &self.timing) {
            m.observe(t.elapsed());
        }
        let close = reply.wants_close();
        self.counts.replies += reply.sent();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.counts.errors += 1;
                ctx.hooks.error(&self.peer, Failure::Handler(e))
            }
            Err(payload) => {
                // A half-built reply would corrupt the stream: drop it.
                out.truncate(mark);
                self.counts.panics += 1;
                ctx.hooks.error(&self.peer, Failure::from_panic(payload));
            }
        }
        if close {
            Flow::Close
        } else {
            Flow::Continue
        }
    }
}
