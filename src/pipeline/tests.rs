//! The pipeline driven by a fake socket and a fake clock: byte slices in,
//! byte slices out, time moved by hand. Every property here holds for both
//! real drivers because they only move bytes and time for [`Conn`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::addr::Address;
use crate::frame::{Framing, OnOversize};
use crate::hooks::Hooks;
use crate::message::{message_fn, MessageHandler};

fn settings() -> Settings {
    Settings {
        idle: None,
        read: None,
        write: Some(Duration::from_secs(30)),
        linger: Duration::from_secs(2),
        max_backlog: 64 * 1024,
    }
}

fn peer() -> Address {
    Address::Inet("127.0.0.1:4000".parse().unwrap())
}

fn echo() -> Arc<dyn MessageHandler> {
    Arc::new(message_fn(|m, r| {
        r.send(m)?;
        Ok(())
    }))
}

/// A peer on the other end of a fake socket.
struct Fake {
    conn: Conn,
    handler: Arc<dyn MessageHandler>,
    hooks: Hooks,
    now: Instant,
    /// Chunks the peer sends, in order; `None` is its FIN.
    input: VecDeque<Option<Vec<u8>>>,
    /// How many bytes the socket accepts per write (None: all).
    write_room: Option<usize>,
    received: Vec<u8>,
    shut: bool,
    closed: bool,
    steps: usize,
    /// What the fake kernel says is unacknowledged while lingering.
    unacked: usize,
}

impl Fake {
    fn new(framing: &Framing, settings: Settings) -> Fake {
        Fake::with(framing, settings, echo())
    }

    fn with(framing: &Framing, settings: Settings, handler: Arc<dyn MessageHandler>) -> Fake {
        let now = Instant::now();
        Fake {
            conn: Conn::new(
                Session::new(framing, peer()),
                Vec::new(),
                settings,
                now,
                false,
            ),
            handler,
            hooks: Hooks::default(),
            now,
            input: VecDeque::new(),
            write_room: None,
            received: Vec::new(),
            shut: false,
            closed: false,
            steps: 0,
            unacked: 0,
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.input.push_back(Some(data.to_vec()));
    }

    fn fin(&mut self) {
        self.input.push_back(None);
    }

    /// Drives the connection until it would have to wait (nothing to read,
    /// no room to write) or closes. Returns what it was waiting for.
    fn run(&mut self) -> Next {
        let handler = Arc::clone(&self.handler);
        let ctx = Ctx {
            handler: &*handler,
            hooks: &self.hooks,
        };
        loop {
            self.steps += 1;
            assert!(self.steps < 1_000_000, "the pipeline does not settle");
            let next = self.conn.next();
            match next {
                Next::Write => {
                    let out = self.conn.output();
                    let n = self.write_room.map_or(out.len(), |r| r.min(out.len()));
                    if n == 0 {
                        return next;
                    }
                    self.received.extend_from_slice(&out[..n]);
                    if let Some(r) = self.write_room.as_mut() {
                        *r -= n;
                    }
                    self.conn.wrote(n, self.now);
                }
                Next::Read => match self.input.pop_front() {
                    Some(Some(chunk)) => self.conn.received(&chunk, self.now, &ctx),
                    Some(None) => self.conn.eof(self.now, &ctx),
                    None => {
                        if self.conn.is_lingering() {
                            self.conn.unacked(self.unacked);
                            if self.conn.next() == Next::Close {
                                continue;
                            }
                        }
                        if self.conn.deadline().is_some_and(|d| d <= self.now) {
                            self.conn.timeout(self.now, &ctx);
                            continue;
                        }
                        return next;
                    }
                },
                Next::Resume => self.conn.resume(self.now, &ctx),
                Next::ShutdownWrite => {
                    self.shut = true;
                    self.conn.shut_down(self.now);
                }
                Next::Busy | Next::Admit => return next,
                Next::Close => {
                    self.closed = true;
                    return next;
                }
            }
        }
    }

    /// Moves the fake clock and lets a passed deadline fire.
    fn advance(&mut self, by: Duration) -> Next {
        self.now += by;
        let handler = Arc::clone(&self.handler);
        let ctx = Ctx {
            handler: &*handler,
            hooks: &self.hooks,
        };
        if self.conn.deadline().is_some_and(|d| d <= self.now) {
            self.conn.timeout(self.now, &ctx);
        }
        self.run()
    }
}

fn lines(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(f);
        out.push(b'\n');
    }
    out
}

fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        if p > last {
            chunks.push(data[last..p].to_vec());
            last = p;
        }
    }
    if last < data.len() {
        chunks.push(data[last..].to_vec());
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the segmentation of the input and however little the
    /// socket takes per write, every frame is answered once, in order, and
    /// the connection ends cleanly after the peer's FIN.
    #[test]
    fn every_frame_answered_in_order(
        frames in prop::collection::vec(prop::collection::vec(b'a'..=b'z', 0..40), 0..60),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
        room in prop::option::of(1usize..64),
    ) {
        let mut fake = Fake::new(&Framing::line(), settings());
        let wire = lines(&frames);
        for chunk in split(&wire, &cuts) {
            fake.send(&chunk);
        }
        fake.fin();
        let mut turns = 0;
        loop {
            fake.write_room = room;
            if fake.run() == Next::Close {
                break;
            }
            turns += 1;
            prop_assert!(turns < 100_000);
        }
        prop_assert_eq!(&fake.received, &wire);
        prop_assert_eq!(fake.conn.end(), Some(End::ClientClosed));
        prop_assert!(fake.shut, "half-closed before closing");
        prop_assert_eq!(fake.conn.frames(), frames.len() as u64);
    }

    /// A peer that sends without reading: the replies held for it never
    /// pass the backlog limit by more than one reply, and reading stops.
    #[test]
    fn backlog_is_bounded(
        count in 1usize..2_000,
        reply in 1usize..5_000,
        limit in 1usize..20_000,
    ) {
        let big = Arc::new(message_fn(move |_m, r| {
            r.send(&vec![b'x'; reply])?;
            Ok(())
        }));
        let mut s = settings();
        s.max_backlog = limit;
        let mut fake = Fake::with(&Framing::line(), s, big);
        let wire = vec![b'\n'; count];
        for chunk in wire.chunks(4096) {
            fake.send(chunk);
        }
        fake.write_room = Some(0);
        let next = fake.run();
        prop_assert_eq!(next, Next::Write);
        prop_assert!(fake.conn.output().len() <= limit + reply + 1);
        // Once the peer reads everything, every frame is answered.
        fake.write_room = None;
        fake.fin();
        prop_assert_eq!(fake.run(), Next::Close);
        prop_assert_eq!(fake.received.len(), count * (reply + 1));
    }

    /// The read timeout runs from the start of a frame, kept or being
    /// discarded, whatever the trickle.
    #[test]
    fn read_timeout_cuts_a_trickled_frame(
        skip in any::<bool>(),
        step_ms in 1u64..900,
        oversize in any::<bool>(),
    ) {
        let framing = Framing::line()
            .with_max_frame(if oversize { 16 } else { 1 << 20 })
            .unwrap()
            .with_on_oversize(if skip { OnOversize::Skip } else { OnOversize::Close });
        let mut s = settings();
        s.read = Some(Duration::from_secs(5));
        let mut fake = Fake::new(&framing, s);
        let start = fake.now;
        if oversize {
            fake.send(&[b'a'; 40]);
        } else {
            fake.send(b"abc");
        }
        let mut next = fake.run();
        let mut steps = 0;
        while next != Next::Close {
            fake.send(b"b");
            next = fake.advance(Duration::from_millis(step_ms));
            steps += 1;
            prop_assert!(steps < 100_000);
        }
        let lived = fake.now - start;
        if oversize && !skip {
            // Fail-fast closes at once.
            prop_assert_eq!(fake.conn.end(), Some(End::ServerClosed));
        } else {
            prop_assert_eq!(fake.conn.end(), Some(End::ReadTimeout));
            prop_assert!(lived >= Duration::from_secs(5));
            // The lingering close adds at most its own limit.
            prop_assert!(lived <= Duration::from_secs(5) + Duration::from_millis(2 * step_ms) + s.linger);
        }
    }
}

#[test]
fn idle_timeout_between_frames_only() {
    let mut s = settings();
    s.idle = Some(Duration::from_secs(3));
    let mut fake = Fake::new(&Framing::line(), s);
    fake.send(b"one\n");
    assert_eq!(fake.run(), Next::Read);
    assert_eq!(fake.received, b"one\n");
    assert_eq!(fake.advance(Duration::from_secs(2)), Next::Read);
    fake.send(b"two\n");
    assert_eq!(fake.run(), Next::Read);
    // Three seconds after the last byte, not after the first.
    assert_eq!(fake.advance(Duration::from_millis(2_900)), Next::Read);
    assert_eq!(fake.advance(Duration::from_millis(200)), Next::Read);
    assert_eq!(fake.conn.end(), Some(End::IdleTimeout));
    assert!(fake.shut);
    assert!(matches!(fake.conn.phase(), Phase::Lingering { .. }));
    // The peer closes during the linger: done.
    fake.fin();
    assert_eq!(fake.run(), Next::Close);
}

#[test]
fn drain_answers_what_arrived_then_closes() {
    let mut fake = Fake::new(&Framing::line(), settings());
    fake.send(b"first\n");
    assert_eq!(fake.run(), Next::Read);
    // The stop arrives while a request is already in the socket.
    fake.send(b"second\nthird\n");
    fake.conn.stop(false, fake.now);
    let next = fake.run();
    assert_eq!(fake.received, b"first\nsecond\nthird\n");
    assert!(fake.shut, "half-closed after answering");
    assert_eq!(fake.conn.end(), Some(End::ServerClosed));
    // Every reply is acknowledged (the fake kernel says so): while the
    // server drains, nothing is left to linger for.
    assert_eq!(next, Next::Close);
}

#[test]
fn drain_gives_a_fresh_connection_a_grace() {
    let now = Instant::now();
    let handler = echo();
    let hooks = Hooks::default();
    let ctx = Ctx {
        handler: &*handler,
        hooks: &hooks,
    };
    let mut conn = Conn::new(
        Session::new(&Framing::line(), peer()),
        Vec::new(),
        settings(),
        now,
        true,
    );
    assert_eq!(conn.next(), Next::Read);
    assert_eq!(conn.deadline(), Some(now + DRAIN_GRACE));
    conn.received(b"late\n", now + Duration::from_millis(20), &ctx);
    assert_eq!(conn.next(), Next::Write);
    assert_eq!(conn.output(), b"late\n");
}

#[test]
fn a_draining_peer_that_never_stops_is_cut_after_the_budget() {
    let mut fake = Fake::new(&Framing::line(), settings());
    fake.conn.stop(false, fake.now);
    for _ in 0..(LINGER_BUDGET / 1000 + 2) {
        fake.send(&[b'a'; 999]);
        fake.send(b"\n");
    }
    fake.run();
    assert!(fake.shut);
    assert!(fake.received.len() <= LINGER_BUDGET + 1000);
}

#[test]
fn forced_stop_closes_at_once() {
    let mut fake = Fake::new(&Framing::line(), settings());
    fake.send(b"partial");
    assert_eq!(fake.run(), Next::Read);
    fake.conn.stop(true, fake.now);
    assert_eq!(fake.run(), Next::Close);
    assert_eq!(fake.conn.end(), Some(End::DrainCut));
}

#[test]
fn write_timeout_when_the_peer_never_reads() {
    let mut s = settings();
    s.write = Some(Duration::from_secs(4));
    let mut fake = Fake::new(&Framing::line(), s);
    fake.write_room = Some(3);
    fake.send(b"hello\n");
    assert_eq!(fake.run(), Next::Write);
    assert_eq!(fake.received, b"hel");
    // No progress for four seconds: cut, no linger (nothing can be sent).
    assert_eq!(fake.advance(Duration::from_secs(3)), Next::Write);
    assert_eq!(fake.advance(Duration::from_secs(1)), Next::Close);
    assert_eq!(fake.conn.end(), Some(End::WriteTimeout));
}

#[test]
fn handler_close_flushes_then_half_closes() {
    let h = Arc::new(message_fn(|m, r| {
        r.send(m)?;
        if m == b"bye" {
            r.close();
        }
        Ok(())
    }));
    let mut fake = Fake::with(&Framing::line(), settings(), h);
    fake.send(b"a\nbye\nnever\n");
    assert_eq!(fake.run(), Next::Read);
    assert_eq!(fake.received, b"a\nbye\n");
    assert_eq!(fake.conn.end(), Some(End::ServerClosed));
    assert!(fake.shut);
    // Lingering discards what the peer still sends.
    fake.send(b"more\n");
    fake.fin();
    assert_eq!(fake.run(), Next::Close);
    assert_eq!(fake.received, b"a\nbye\n");
}

#[test]
fn an_unterminated_last_line_counts_at_eof() {
    let mut fake = Fake::new(&Framing::line(), settings());
    fake.send(b"tail");
    fake.fin();
    assert_eq!(fake.run(), Next::Close);
    assert_eq!(fake.received, b"tail\n");
}

#[test]
fn io_error_closes_without_linger() {
    let mut fake = Fake::new(&Framing::line(), settings());
    let handler = echo();
    let hooks = Hooks::default();
    let ctx = Ctx {
        handler: &*handler,
        hooks: &hooks,
    };
    fake.conn
        .failed(std::io::ErrorKind::ConnectionReset.into(), &ctx);
    assert_eq!(fake.conn.next(), Next::Close);
    assert_eq!(fake.conn.end(), Some(End::Reset));
}

#[test]
fn offload_round_trip_keeps_order() {
    let now = Instant::now();
    let handler = echo();
    let hooks = Hooks::default();
    let ctx = Ctx {
        handler: &*handler,
        hooks: &hooks,
    };
    let mut conn = Conn::new(
        Session::new(&Framing::line(), peer()),
        Vec::new(),
        settings(),
        now,
        false,
    );
    let mut work = conn.offload(b"a\nb\nc", now, &ctx).unwrap();
    assert_eq!(conn.next(), Next::Busy);
    work.run(&ctx);
    conn.offload_done(work, now, &ctx);
    assert_eq!(conn.next(), Next::Write);
    assert_eq!(conn.output(), b"a\nb\n");
}

/// A layer that upper-cases what comes in and tags what goes out: shows
/// the stack is applied both ways and can be dropped once transparent.
#[derive(Debug)]
struct Tag {
    left: usize,
    uses: Arc<AtomicUsize>,
}

impl Layer for Tag {
    fn input(&mut self, wire: &[u8], io: &mut LayerIo<'_>) -> Result<(), layer::LayerError> {
        self.uses.fetch_add(1, Ordering::Relaxed);
        io.up.extend(wire.iter().map(u8::to_ascii_uppercase));
        self.left = self.left.saturating_sub(1);
        Ok(())
    }

    fn output(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<(), layer::LayerError> {
        wire.push(b'>');
        wire.extend_from_slice(plain);
        Ok(())
    }

    fn is_transparent(&self) -> bool {
        self.left == 0
    }
}

#[test]
fn layers_apply_both_ways_and_drop_out() {
    let uses = Arc::new(AtomicUsize::new(0));
    let now = Instant::now();
    let mut fake = Fake::new(&Framing::line(), settings());
    fake.conn = Conn::new(
        Session::new(&Framing::line(), peer()),
        vec![Box::new(Tag {
            left: 1,
            uses: Arc::clone(&uses),
        })],
        settings(),
        now,
        false,
    );
    fake.send(b"ab\n");
    fake.run();
    fake.send(b"cd\n");
    fake.fin();
    assert_eq!(fake.run(), Next::Close);
    // The first read went through the layer; after it became transparent
    // the second did not.
    assert_eq!(uses.load(Ordering::Relaxed), 1);
    assert_eq!(fake.received, b"AB\ncd\n".as_slice());
}

#[test]
fn a_linger_waits_for_unacknowledged_replies() {
    let mut fake = Fake::new(&Framing::line(), settings());
    fake.unacked = 5;
    fake.send(b"bye\n");
    fake.conn.stop(false, fake.now);
    assert_eq!(fake.run(), Next::Read, "lingering");
    assert_eq!(fake.received, b"bye\n");
    // Well past the drain's short linger, replies are still
    // unacknowledged: closing now would reset them away.
    for _ in 0..30 {
        assert_eq!(fake.advance(Duration::from_millis(10)), Next::Read);
    }
    // Once the peer has them all, the draining connection closes.
    fake.unacked = 0;
    assert_eq!(fake.advance(Duration::from_millis(10)), Next::Close);
}

/// A connection behind a proxy: the header in front of the first request.
fn behind_proxy(handler: Arc<dyn MessageHandler>) -> Fake {
    let mut fake = Fake::with(&Framing::line(), settings(), handler);
    let layer = crate::proxy::ProxyLayer::new(crate::proxy::Versions::Both, fake.now);
    fake.conn = Conn::new(
        Session::new(&Framing::line(), peer()),
        vec![Box::new(layer)],
        settings(),
        fake.now,
        false,
    );
    fake
}

/// A handler that counts its calls and echoes the peer it was told.
fn peer_echo(calls: Arc<AtomicUsize>) -> Arc<dyn MessageHandler> {
    Arc::new(message_fn(move |_m, r| {
        calls.fetch_add(1, Ordering::SeqCst);
        let text = format!("{}", r.peer());
        let via = r.proxy().map(|p| p.proxy().to_string()).unwrap_or_default();
        r.send(format!("{text} via {via}").as_bytes())?;
        Ok(())
    }))
}

#[test]
fn a_proxy_header_waits_for_the_gate_before_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let header = b"PROXY TCP4 192.0.2.9 192.0.2.1 40000 7000\r\n";
    // The header split in two, the second part with two requests.
    let mut fake = behind_proxy(peer_echo(Arc::clone(&calls)));
    fake.send(&header[..10]);
    fake.send(&[&header[10..], &b"a\nb\n"[..]].concat());
    assert_eq!(fake.run(), Next::Admit);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the handler ran before the gate"
    );
    assert!(fake.received.is_empty());
    let h = fake.conn.take_header().expect("the header");
    let info = crate::proxy::ProxyInfo::new(h, peer());
    assert_eq!(fake.conn.peer(), Some(&peer()), "the proxy until admitted");
    let client = info.client().clone();
    fake.conn
        .admit(Admission::Client(client, Arc::new(info)), fake.now);
    assert_eq!(fake.run(), Next::Read);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        fake.received,
        b"192.0.2.9:40000 via 127.0.0.1:4000\n192.0.2.9:40000 via 127.0.0.1:4000\n"
    );
}

#[test]
fn a_refused_client_gets_no_handler_and_no_byte_or_the_limit_message() {
    for message in [None, Some(b"busy\n".to_vec())] {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut fake = behind_proxy(peer_echo(Arc::clone(&calls)));
        fake.send(b"PROXY TCP4 192.0.2.9 192.0.2.1 40000 7000\r\nhello\n");
        assert_eq!(fake.run(), Next::Admit);
        assert!(fake.conn.take_header().is_some());
        let reason = crate::stats::RefuseReason::PerIp;
        fake.conn
            .admit(Admission::Refused(reason, message.clone()), fake.now);
        fake.fin();
        let next = fake.run();
        assert!(matches!(next, Next::Close | Next::Read), "{next:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(fake.received, message.clone().unwrap_or_default());
        assert_eq!(fake.conn.end(), Some(End::Refused(reason)));
    }
}
