//! Property tests for the framing codecs.
//!
//! A small driver here plays the part of a connection: it feeds the encoded
//! stream in chunks into a `Vec`, applies every `Decoded` verdict and checks
//! the contract on the way (positions in range, progress, bounded buffer).
//! Every property runs the same stream three ways: in one chunk, one byte at
//! a time, and in random chunk sizes, and all three must agree.

use proptest::collection::vec;
use proptest::prelude::*;
use sockserv::frame::{
    Codec, Decoded, Decoder, DelimiterCodec, Encoder, Endian, FixedCodec, FrameError, Framing,
    LengthField, LineCodec, RawCodec,
};

/// What a connection saw.
#[derive(Debug, Default, PartialEq, Eq)]
struct Run {
    frames: Vec<Vec<u8>>,
    /// Errors reported by `TooLong` verdicts, in order.
    errors: Vec<FrameError>,
    /// The frame returned by `decode_eof`, if any.
    eof_frame: Option<Vec<u8>>,
}

impl Run {
    fn all_frames(&self) -> Vec<Vec<u8>> {
        let mut v = self.frames.clone();
        v.extend(self.eof_frame.clone());
        v
    }
}

/// Feeds `stream` in chunks of the given sizes (cycled) and collects the
/// frames. `limit` is the most the driver may hold before appending a
/// chunk: the decoder promised it never leaves more than that after
/// `Incomplete`.
fn drive(dec: &mut impl Decoder, stream: &[u8], sizes: &[usize], limit: usize) -> Run {
    let mut run = Run::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        assert!(
            buf.len() <= limit,
            "driver holds {} bytes before a read, limit {limit}",
            buf.len()
        );
        buf.extend_from_slice(chunk);
        let mut steps = 0usize;
        let held = buf.len();
        loop {
            steps += 1;
            assert!(steps <= held + 1, "decoder is not making progress");
            match dec.decode(&buf) {
                Decoded::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    assert!(start <= end, "start {start} > end {end}");
                    assert!(end <= consumed, "end {end} > consumed {consumed}");
                    assert!(consumed <= buf.len(), "consumed {consumed} > {}", buf.len());
                    assert!(consumed > 0, "a frame must consume input");
                    run.frames.push(buf[start..end].to_vec());
                    buf.drain(..consumed);
                }
                Decoded::TooLong { consumed, error } => {
                    assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed}");
                    run.errors.push(error);
                    buf.drain(..consumed);
                }
                Decoded::Incomplete { consumed } => {
                    assert!(consumed <= buf.len(), "consumed {consumed}");
                    buf.drain(..consumed);
                    break;
                }
            }
        }
    }
    assert!(
        buf.len() <= limit,
        "driver holds {} bytes at the end",
        buf.len()
    );
    if let Some((start, end)) = dec.decode_eof(&buf) {
        assert!(start <= end && end <= buf.len());
        run.eof_frame = Some(buf[start..end].to_vec());
    }
    run
}

/// Decodes `stream` whole, one byte at a time and in `sizes` chunks with a
/// fresh codec from `make` each time; asserts the three agree on frames and
/// on the number of errors, and returns the whole-stream run.
fn drive_three(make: impl Fn() -> Codec, stream: &[u8], sizes: &[usize]) -> Run {
    let limit = make().max_buffered();
    let whole = drive(&mut make(), stream, &[stream.len().max(1)], limit);
    let ones = drive(&mut make(), stream, &[1], limit);
    let split = drive(&mut make(), stream, sizes, limit);
    for other in [&ones, &split] {
        assert_eq!(other.frames, whole.frames, "frames depend on chunking");
        assert_eq!(
            other.eof_frame, whole.eof_frame,
            "eof frame depends on chunking"
        );
        assert_eq!(
            other.errors.len(),
            whole.errors.len(),
            "error count depends on chunking"
        );
    }
    whole
}

/// Encodes every frame the codec accepts; returns the stream and the
/// accepted frames.
fn encode_all(enc: &impl Encoder, frames: &[Vec<u8>]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut stream = Vec::new();
    let mut accepted = Vec::new();
    for f in frames {
        let before = stream.len();
        match enc.encode(f, &mut stream) {
            Ok(()) => accepted.push(f.clone()),
            Err(_) => assert_eq!(stream.len(), before, "a refused frame wrote bytes"),
        }
    }
    (stream, accepted)
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..48, 1..8)
}

/// Bytes drawn mostly from a small alphabet rich in delimiter bytes, so
/// frames collide with delimiters and partial delimiters often.
fn tricky_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            4 => prop::sample::select(&b"ab\r\n\0-:"[..]),
            1 => any::<u8>(),
        ],
        0..max_len,
    )
}

fn line_codec(max: usize, crlf: bool) -> impl Fn() -> Codec {
    move || Codec::Line(LineCodec::new(max, crlf))
}

fn delim_codec(proto: &DelimiterCodec) -> impl Fn() -> Codec + '_ {
    move || Codec::Delimiter(proto.fresh())
}

/// Delimiter sets over a 3-letter alphabet: many are rejected by the
/// construction rule, the rest overlap in every allowed way.
fn delimiter_set() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        Just(vec![b"\n".to_vec()]),
        Just(vec![b"\r\n".to_vec(), b"\n".to_vec()]),
        Just(vec![b"\0\0".to_vec()]),
        Just(vec![b"--b--".to_vec()]),
        vec(vec(prop::sample::select(&b"abc"[..]), 1..5), 1..4),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn line_round_trip(
        frames in vec(tricky_bytes(40), 0..30),
        crlf in any::<bool>(),
        sizes in chunk_sizes(),
    ) {
        let frames: Vec<Vec<u8>> = frames
            .into_iter()
            .map(|f| f.into_iter().filter(|&b| b != b'\n').collect())
            .collect();
        let (stream, accepted) = encode_all(&LineCodec::new(1 << 20, crlf), &frames);
        prop_assert_eq!(accepted.len(), frames.len());
        let run = drive_three(line_codec(1 << 20, crlf), &stream, &sizes);
        prop_assert!(run.errors.is_empty());
        prop_assert_eq!(run.eof_frame, None);
        prop_assert_eq!(run.frames, frames);
    }

    #[test]
    fn line_tail_at_eof(
        frames in vec(tricky_bytes(20), 0..5),
        tail in tricky_bytes(20),
        crlf in any::<bool>(),
        sizes in chunk_sizes(),
    ) {
        let clean = |f: Vec<u8>| -> Vec<u8> { f.into_iter().filter(|&b| b != b'\n').collect() };
        let frames: Vec<Vec<u8>> = frames.into_iter().map(clean).collect();
        let tail = clean(tail);
        let (mut stream, _) = encode_all(&LineCodec::new(1 << 20, crlf), &frames);
        stream.extend_from_slice(&tail);
        let run = drive_three(line_codec(1 << 20, crlf), &stream, &sizes);
        prop_assert_eq!(run.frames, frames);
        let mut want = tail.as_slice();
        if crlf {
            want = want.strip_suffix(b"\r").unwrap_or(want);
        }
        prop_assert_eq!(run.eof_frame, (!want.is_empty()).then(|| want.to_vec()));
    }

    #[test]
    fn line_oversize_reported_once_and_skipped(
        lens in vec(0usize..24, 0..20),
        max in 0usize..12,
        crlf in any::<bool>(),
        sizes in chunk_sizes(),
    ) {
        let frames: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![b'a' + (i % 26) as u8; n])
            .collect();
        let (stream, _) = encode_all(&LineCodec::new(1 << 20, crlf), &frames);
        let run = drive_three(line_codec(max, crlf), &stream, &sizes);
        let kept: Vec<Vec<u8>> = frames.iter().filter(|f| f.len() <= max).cloned().collect();
        prop_assert_eq!(run.frames, kept);
        prop_assert_eq!(run.errors.len(), frames.len() - frames.iter().filter(|f| f.len() <= max).count());
        for e in &run.errors {
            let is_too_long = matches!(e, FrameError::TooLong { max: m, .. } if *m == max);
            prop_assert!(is_too_long);
        }
        // The buffer bound the driver checked is the documented one.
        prop_assert_eq!(LineCodec::new(max, crlf).max_buffered(), max + usize::from(crlf));
    }

    #[test]
    fn delimiter_round_trip(
        delims in delimiter_set(),
        frames in vec(vec(prop::sample::select(&b"abc-\r\n\0"[..]), 0..12), 0..30),
        sizes in chunk_sizes(),
    ) {
        let Ok(proto) = DelimiterCodec::new(delims, 1 << 20) else {
            return Ok(());
        };
        let (stream, accepted) = encode_all(&proto, &frames);
        let run = drive_three(delim_codec(&proto), &stream, &sizes);
        prop_assert!(run.errors.is_empty());
        prop_assert_eq!(run.eof_frame, None);
        prop_assert_eq!(run.frames, accepted);
    }

    #[test]
    fn delimiter_oversize_reported_once_and_skipped(
        delims in delimiter_set(),
        frames in vec(vec(prop::sample::select(&b"abc-\r\n\0"[..]), 0..24), 0..20),
        max in 0usize..12,
        sizes in chunk_sizes(),
    ) {
        let Ok(big) = DelimiterCodec::new(delims.clone(), 1 << 20) else {
            return Ok(());
        };
        let Ok(small) = DelimiterCodec::new(delims, max) else {
            return Ok(());
        };
        let (stream, accepted) = encode_all(&big, &frames);
        let run = drive_three(delim_codec(&small), &stream, &sizes);
        let kept: Vec<Vec<u8>> = accepted.iter().filter(|f| f.len() <= max).cloned().collect();
        prop_assert_eq!(run.errors.len(), accepted.len() - kept.len());
        prop_assert_eq!(run.frames, kept);
        let longest = small.delimiters().map(<[u8]>::len).max().unwrap_or(1);
        prop_assert_eq!(small.max_buffered(), max + longest - 1);
    }

    #[test]
    fn length_round_trip_whole_parameter_space(
        offset in 0usize..4,
        field_len in prop::sample::select(&[1usize, 2, 3, 4, 8][..]),
        little in any::<bool>(),
        adjustment in -20i64..20,
        strip_pick in any::<prop::sample::Index>(),
        frames in vec(vec(any::<u8>(), 0..300), 0..12),
        sizes in chunk_sizes(),
    ) {
        let header = offset + field_len;
        let strip = strip_pick.index(header + 1);
        let field = LengthField::new(field_len)
            .length_field_offset(offset)
            .endian(if little { Endian::Little } else { Endian::Big })
            .length_adjustment(adjustment)
            .strip(strip);
        let codec = field
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for f in &frames {
            let mut one = Vec::new();
            match codec.encode(f, &mut one) {
                Ok(()) => {
                    prop_assert_eq!(one.len(), header + f.len());
                    prop_assert!(one[..offset].iter().all(|&b| b == 0));
                    // What decoding must give: header[strip..] ++ payload.
                    want.push(one[strip..].to_vec());
                    stream.extend_from_slice(&one);
                }
                Err(FrameError::BadLength(_)) => {
                    // Only when payload - adjustment is negative or too wide.
                    let v = f.len() as i128 - i128::from(adjustment);
                    prop_assert!(v < 0 || v >= 1i128 << (8 * field_len));
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        let run = drive_three(|| Codec::Length(codec.clone()), &stream, &sizes);
        prop_assert!(run.errors.is_empty());
        prop_assert_eq!(run.eof_frame, None);
        prop_assert_eq!(run.frames, want);
    }

    #[test]
    fn length_oversize_reported_once_and_skipped(
        field_len in prop::sample::select(&[1usize, 2, 4][..]),
        lens in vec(0usize..40, 0..20),
        max_payload in 0usize..20,
        sizes in chunk_sizes(),
    ) {
        let frames: Vec<Vec<u8>> = lens.iter().map(|&n| vec![7u8; n]).collect();
        let big = LengthField::new(field_len).max_frame(1 << 20).build().unwrap();
        let max = field_len + max_payload;
        let small = LengthField::new(field_len).max_frame(max).build().unwrap();
        let (stream, accepted) = encode_all(&big, &frames);
        prop_assert_eq!(accepted.len(), frames.len());
        let run = drive_three(|| Codec::Length(small.clone()), &stream, &sizes);
        let kept: Vec<Vec<u8>> = frames.iter().filter(|f| f.len() <= max_payload).cloned().collect();
        prop_assert_eq!(run.frames, kept.clone());
        prop_assert_eq!(run.errors.len(), frames.len() - kept.len());
        for (e, f) in run.errors.iter().zip(frames.iter().filter(|f| f.len() > max_payload)) {
            prop_assert_eq!(e, &FrameError::TooLong { len: Some((field_len + f.len()) as u64), max });
        }
    }

    #[test]
    fn fixed_round_trip(
        size in 1usize..40,
        count in 0usize..30,
        tail in 0usize..40,
        seed in any::<u8>(),
        sizes in chunk_sizes(),
    ) {
        let codec = FixedCodec::new(size, 1 << 20).unwrap();
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|i| (0..size).map(|j| seed.wrapping_add((i * 31 + j) as u8)).collect())
            .collect();
        let (mut stream, accepted) = encode_all(&codec, &frames);
        prop_assert_eq!(accepted.len(), count);
        let mut wrong = Vec::new();
        prop_assert!(codec.encode(&vec![0; size + 1], &mut wrong).is_err());
        stream.extend(std::iter::repeat_n(0u8, tail % size));
        let run = drive_three(|| Codec::Fixed(codec), &stream, &sizes);
        prop_assert!(run.errors.is_empty());
        prop_assert_eq!(run.eof_frame, None);
        prop_assert_eq!(run.frames, frames);
    }

    #[test]
    fn raw_delivers_every_byte_in_capped_chunks(
        stream in vec(any::<u8>(), 0..500),
        max in 1usize..64,
        sizes in chunk_sizes(),
    ) {
        // Raw frames follow the reads, so only the concatenation and the
        // cap are chunking-independent.
        for s in [&[stream.len().max(1)][..], &[1][..], &sizes[..]] {
            let run = drive(&mut RawCodec::new(max), &stream, s, 0);
            prop_assert!(run.errors.is_empty());
            prop_assert!(run.frames.iter().all(|f| !f.is_empty() && f.len() <= max));
            prop_assert_eq!(run.frames.concat(), stream.clone());
        }
    }

    /// Arbitrary input, including garbage and truncated frames: no codec
    /// panics, and what it reports does not depend on how the bytes arrive.
    #[test]
    fn any_input_is_chunking_independent(
        framing in framing(),
        max in 1usize..64,
        stream in tricky_bytes(400),
        sizes in chunk_sizes(),
    ) {
        let Ok(framing) = framing.with_max_frame(max) else {
            return Ok(());
        };
        if framing.is_raw() {
            return Ok(());
        }
        let run = drive_three(|| framing.codec(), &stream, &sizes);
        // A frame never exceeds the limit (for len, the whole frame does not).
        prop_assert!(run.all_frames().iter().all(|f| f.len() <= max));
    }

    #[test]
    fn framing_text_round_trips(framing in framing()) {
        let text = framing.to_string();
        let back: Framing = text
            .parse()
            .map_err(|e: sockserv::frame::FramingError| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &framing);
        prop_assert_eq!(back.to_string(), text);
    }
}

/// Every kind of framing, with random parameters (valid ones only).
fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::raw()),
        Just(Framing::line()),
        Just(Framing::crlf()),
        vec(vec(any::<u8>(), 1..4), 1..4)
            .prop_filter_map("invalid delimiter set", |d| Framing::delimiter(d).ok()),
        delimiter_set().prop_filter_map("invalid delimiter set", |d| Framing::delimiter(d).ok()),
        (
            0usize..4,
            prop::sample::select(&[1usize, 2, 3, 4, 8][..]),
            any::<bool>(),
            -20i64..20,
            prop::option::of(0usize..12),
        )
            .prop_filter_map("invalid length field", |(o, n, le, a, s)| {
                let mut f = LengthField::new(n)
                    .length_field_offset(o)
                    .endian(if le { Endian::Little } else { Endian::Big })
                    .length_adjustment(a);
                if let Some(s) = s {
                    f = f.strip(s);
                }
                Framing::length(f).ok()
            }),
        (1usize..100).prop_filter_map("fixed", |n| Framing::fixed(n).ok()),
    ]
}

#[test]
fn explicit_crlf_split_between_cr_and_lf() {
    let stream = b"abc\r\ndef\r\n";
    for cut in 0..=stream.len() {
        let mut c = Codec::Line(LineCodec::new(3, true));
        let run = drive(&mut c, stream, &[cut.max(1), stream.len()], 4);
        assert_eq!(
            run.frames,
            vec![b"abc".to_vec(), b"def".to_vec()],
            "cut {cut}"
        );
        assert!(run.errors.is_empty());
    }
}
