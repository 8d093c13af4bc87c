//! Shared harness for the decoder fuzz targets.
//!
//! Each target turns the first input bytes into a codec configuration (see
//! [`Input`]) and hands the rest to [`check`], which feeds it to the decoder
//! three ways (whole, one byte at a time, and in chunk sizes drawn from the
//! input) through a driver that asserts the `Decoded` contract:
//!
//! * every position is inside the buffer (`start <= end <= consumed <= len`);
//! * a `Frame` or `TooLong` verdict consumes at least one byte (progress);
//! * after `Incomplete` the driver holds at most `Codec::max_buffered()`
//!   bytes, so before a read it never holds more than that plus one chunk;
//! * no frame is longer than the limit;
//! * the frames, the `decode_eof` frame and the number of errors do not
//!   depend on how the bytes were split.
//!
//! It then splits the data into candidate frames, encodes the ones the codec
//! accepts, and checks they decode back unchanged.

use sockserv::frame::{Codec, Decoded, Decoder, Encoder};

/// Reads configuration bytes off the front of the fuzz input; past the end
/// it yields zeros, so every input is usable.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Run {
    frames: Vec<Vec<u8>>,
    errors: usize,
    eof: Option<Vec<u8>>,
}

/// Chunk sizes from a seed: a xorshift sequence in `1..=max_chunk`.
struct Chunks {
    state: u32,
    max_chunk: usize,
}

impl Chunks {
    fn next(&mut self) -> usize {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        1 + (x as usize) % self.max_chunk
    }
}

fn drive(codec: &mut Codec, stream: &[u8], mut chunks: Chunks, max_frame: usize) -> Run {
    let limit = codec.max_buffered();
    let mut run = Run::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = chunks.next().min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        assert!(
            buf.len() <= limit,
            "holding {} > {limit} before a read",
            buf.len()
        );
        buf.extend_from_slice(chunk);
        let mut budget = buf.len() + 1;
        loop {
            assert!(budget > 0, "no progress");
            budget -= 1;
            match codec.decode(&buf) {
                Decoded::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    assert!(start <= end && end <= consumed && consumed <= buf.len());
                    assert!(consumed > 0, "frame without progress");
                    assert!(end - start <= max_frame, "frame over the limit");
                    run.frames.push(buf[start..end].to_vec());
                    buf.drain(..consumed);
                }
                Decoded::TooLong { consumed, .. } => {
                    assert!(consumed > 0 && consumed <= buf.len());
                    run.errors += 1;
                    buf.drain(..consumed);
                }
                Decoded::Incomplete { consumed } => {
                    assert!(consumed <= buf.len());
                    buf.drain(..consumed);
                    assert!(
                        buf.len() <= limit,
                        "holding {} > {limit} after Incomplete",
                        buf.len()
                    );
                    break;
                }
            }
        }
    }
    if let Some((start, end)) = codec.decode_eof(&buf) {
        assert!(start <= end && end <= buf.len());
        assert!(end - start <= max_frame);
        run.eof = Some(buf[start..end].to_vec());
    }
    run
}

/// Runs every check on `data` with codecs from `make`. `seed` picks the
/// chunk sizes; `max_frame` is the limit the codec was built with.
pub fn check(make: impl Fn() -> Codec, max_frame: usize, seed: u16, data: &[u8]) {
    let whole = drive(
        &mut make(),
        data,
        Chunks {
            state: 1,
            max_chunk: data.len().max(1),
        },
        max_frame,
    );
    let ones = drive(
        &mut make(),
        data,
        Chunks {
            state: 1,
            max_chunk: 1,
        },
        max_frame,
    );
    let split = drive(
        &mut make(),
        data,
        Chunks {
            state: u32::from(seed) | 0x1_0000,
            max_chunk: usize::from(seed >> 8) + 1,
        },
        max_frame,
    );
    assert_eq!(whole, ones, "one-byte reads decode differently");
    assert_eq!(whole, split, "chunked reads decode differently");

    // Round trip: split the data on a byte chosen by the seed into
    // candidate frames; whatever the encoder accepts must come back intact.
    let sep = (seed & 0xff) as u8;
    let encoder = make();
    let mut stream = Vec::new();
    let mut accepted = Vec::new();
    for frame in data.split(|&b| b == sep) {
        let before = stream.len();
        match encoder.encode(frame, &mut stream) {
            Ok(()) => accepted.push(frame.to_vec()),
            Err(_) => assert_eq!(stream.len(), before, "a refused frame wrote bytes"),
        }
    }
    let run = drive(
        &mut make(),
        &stream,
        Chunks {
            state: u32::from(seed) | 0x2_0000,
            max_chunk: usize::from(seed >> 8) + 1,
        },
        max_frame,
    );
    assert_eq!(run.errors, 0);
    assert_eq!(run.eof, None);
    match &encoder {
        // A length codec yields header[strip..] in front of the payload.
        Codec::Length(c) => {
            let cfg = c.config();
            let kept = cfg.header_len() - cfg.effective_strip();
            assert_eq!(run.frames.len(), accepted.len());
            for (got, want) in run.frames.iter().zip(&accepted) {
                assert_eq!(got.len(), kept + want.len());
                assert!(got.ends_with(want), "payload changed in the round trip");
            }
        }
        _ => assert_eq!(run.frames, accepted, "round trip changed the frames"),
    }
}
