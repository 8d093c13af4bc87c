//! Decode throughput of each framing codec.
//!
//! Each iteration decodes a ~1 MiB buffer holding many frames, the way a
//! driver does once the bytes are in: call `decode` on the unconsumed rest,
//! act on the verdict, repeat until `Incomplete`. The codec is the `Codec`
//! enum from `Framing::codec()`, the exact type the engines use, so the
//! figures include its dispatch. tokio-util's codecs are measured on the
//! same bytes as a reference point (they also copy each frame out of the
//! `BytesMut`, and `LinesCodec` validates UTF-8 and allocates a `String`).
//!
//! Run: `cargo bench --bench codecs -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sockserv::frame::{Codec, Decoded, Decoder, Encoder, Framing};

const TARGET: usize = 1 << 20;

/// A ~1 MiB stream of frames whose payloads are `payload` bytes, encoded by
/// the framing itself.
fn stream(framing: &Framing, payload: usize) -> Vec<u8> {
    let codec = framing.codec();
    let mut out = Vec::with_capacity(TARGET + 4096);
    let mut i = 0u8;
    while out.len() < TARGET {
        // Printable bytes, never a delimiter.
        let frame: Vec<u8> = (0..payload)
            .map(|j| b'a' + (i.wrapping_add(j as u8) % 26))
            .collect();
        codec.encode(&frame, &mut out).expect("encodable frame");
        i = i.wrapping_add(1);
    }
    out
}

/// Decodes every frame in `buf`; returns the frame count.
#[inline(never)]
fn decode_all(codec: &mut Codec, buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut frames = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        match codec.decode(rest) {
            Decoded::Frame {
                start,
                end,
                consumed,
            } => {
                black_box(rest.get(start..end));
                pos += consumed;
                frames += 1;
            }
            Decoded::TooLong { consumed, .. } => pos += consumed,
            Decoded::Incomplete { .. } => return frames,
        }
    }
}

fn bench_codecs(c: &mut Criterion) {
    let cases: Vec<(&str, &str, usize)> = vec![
        ("line", "line", 63),
        ("crlf", "crlf", 62),
        ("delim \\r\\n", "delim:\\r\\n", 62),
        ("delim \\r\\n|\\n", "delim:\\r\\n|\\n", 62),
        ("delim --end--", "delim:--end--", 57),
        ("len:4", "len:4", 60),
        (
            "len:2:le offset/adjust",
            "len:2:le:offset=2:adjust=-4:strip=0",
            60,
        ),
        ("fixed:64", "fixed:64", 64),
        ("raw", "raw", 64),
    ];
    let mut group = c.benchmark_group("decode");
    for (name, spec, payload) in cases {
        let framing: Framing = spec.parse().expect("valid framing");
        let buf = stream(&framing, payload);
        let expect = decode_all(&mut framing.codec(), &buf);
        assert!(expect > 0);
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(format!("{name} ({} B frames)", buf.len() / expect), |b| {
            b.iter(|| {
                let mut codec = framing.codec();
                let n = decode_all(&mut codec, black_box(&buf));
                debug_assert_eq!(n, expect);
                n
            })
        });
    }

    // Reference: tokio-util on the same bytes.
    use tokio_util::codec::{Decoder as _, LengthDelimitedCodec, LinesCodec};
    let line_buf = stream(&Framing::line(), 63);
    group.throughput(Throughput::Bytes(line_buf.len() as u64));
    group.bench_function("tokio-util LinesCodec (64 B frames)", |b| {
        b.iter_batched(
            || BytesMut::from(&line_buf[..]),
            |mut src| {
                let mut codec = LinesCodec::new_with_max_length(64 * 1024);
                let mut n = 0;
                while let Ok(Some(line)) = codec.decode(&mut src) {
                    black_box(line);
                    n += 1;
                }
                n
            },
            BatchSize::LargeInput,
        )
    });
    let len_buf = stream(&"len:4".parse().expect("valid"), 60);
    group.throughput(Throughput::Bytes(len_buf.len() as u64));
    group.bench_function("tokio-util LengthDelimitedCodec (64 B frames)", |b| {
        b.iter_batched(
            || BytesMut::from(&len_buf[..]),
            |mut src| {
                let mut codec = LengthDelimitedCodec::new();
                let mut n = 0;
                while let Ok(Some(frame)) = codec.decode(&mut src) {
                    black_box(frame);
                    n += 1;
                }
                n
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_codecs);
criterion_main!(benches);
