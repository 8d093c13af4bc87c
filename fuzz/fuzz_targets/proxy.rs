//! Fuzzes the PROXY protocol header parser (v1 and v2).
//! Input: [flags, data...]. The low 2 bits of `flags` pick the accepted versions;
//! the rest put a start of a header in front of the data (none, `PROXY `,
//! `PROXY TCP4 `, `PROXY TCP6 `, the v2 signature, or the signature and a
//! PROXY or a LOCAL command byte), so the search begins inside each format.
//!
//! The parser sees everything received so far on each call, so feeding a
//! connection's bytes in any split is calling it on longer and longer
//! prefixes. Checked, with every prefix up to the first verdict:
//!
//! * no panic; `Done` consumes at least one byte and at most the buffer;
//! * a verdict (`Done` or an error), once given, stays the same as more
//!   bytes arrive, and `Done` needs no byte past `consumed`;
//! * with `MAX_HEADER_LEN` bytes there is always a verdict;
//! * accepting both versions gives the verdict of the version that is there;
//! * every error's message is one non-empty line;
//! * the exact-read plan a socket reader follows never takes a byte past
//!   the header, never asks for zero bytes, and ends with `parse`'s verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockserv::__fuzz::{
    line_take, next_step, parse, Parsed, ProxyError, Step, Versions, MAX_HEADER_LEN,
};
use sockserv_fuzz::Input;

const PREFIXES: [&[u8]; 7] = [
    b"",
    b"PROXY ",
    b"PROXY TCP4 ",
    b"PROXY TCP6 ",
    b"\r\n\r\n\0\r\nQUIT\n",
    b"\r\n\r\n\0\r\nQUIT\n\x21",
    b"\r\n\r\n\0\r\nQUIT\n\x20",
];

fn check(data: &[u8], accept: Versions) {
    let mut first = None;
    for n in 0..=data.len() {
        let verdict = parse(&data[..n], accept);
        check_verdict(&verdict, n);
        if verdict != Ok(Parsed::Incomplete) {
            first = Some((n, verdict));
            break;
        }
    }
    let Some((at, verdict)) = first else {
        assert!(
            data.len() < MAX_HEADER_LEN,
            "no verdict with {} bytes",
            data.len()
        );
        return;
    };
    for n in [at + 1, data.len()] {
        if n <= data.len() {
            assert_eq!(
                parse(&data[..n], accept),
                verdict,
                "{n} bytes after a verdict at {at}"
            );
        }
    }
    if let Ok(Parsed::Done { consumed, .. }) = &verdict {
        assert_eq!(consumed, &at, "a header is done with its last byte");
    }
}

/// The exact-read plan (`next_step`, `line_take`), as a socket's reader
/// follows it over `data`: it never takes a byte past the header, never
/// asks for zero bytes, and ends with `parse`'s verdict on the whole input.
fn check_plan(data: &[u8], accept: Versions) {
    let mut held = 0usize;
    for _ in 0..=data.len() + 2 {
        match next_step(&data[..held], accept) {
            Ok(Step::Done(header)) => {
                assert_eq!(
                    parse(data, accept),
                    Ok(Parsed::Done {
                        consumed: held,
                        header
                    }),
                    "the plan's header is not parse's"
                );
                return;
            }
            Err(e) => {
                assert_eq!(
                    parse(data, accept),
                    Err(e),
                    "the plan's error is not parse's"
                );
                return;
            }
            Ok(Step::Read(n)) => {
                assert!(n > 0, "a zero-length read");
                held += n.min(data.len() - held);
            }
            Ok(Step::Line(n)) => {
                assert!(n > 0, "a zero-length peek");
                let end = (held + n).min(data.len());
                held += line_take(&data[held..end]);
            }
        }
        if let Ok(Parsed::Done { consumed, .. }) = parse(data, accept) {
            assert!(
                held <= consumed,
                "read {held} bytes of a {consumed}-byte header"
            );
        }
        if held == data.len() && matches!(parse(data, accept), Ok(Parsed::Incomplete)) {
            return;
        }
    }
    panic!("the plan does not settle");
}

fn check_verdict(verdict: &Result<Parsed, ProxyError>, len: usize) {
    match verdict {
        Ok(Parsed::Done { consumed, .. }) => assert!(*consumed > 0 && *consumed <= len),
        Ok(Parsed::Incomplete) => {}
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains(['\n', '\r']), "{text:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let prefix = PREFIXES[usize::from(flags >> 2) % PREFIXES.len()];
    let data = [prefix, input.rest()].concat();
    let accept = match flags & 3 {
        0 => Versions::V1,
        1 => Versions::V2,
        _ => Versions::Both,
    };
    check(&data, accept);
    check_plan(&data, accept);

    // Accepting both versions changes nothing but the refusal of the
    // other version.
    let both = parse(&data, Versions::Both);
    for one in [Versions::V1, Versions::V2] {
        match parse(&data, one) {
            Err(ProxyError::VersionNotAccepted(_)) => {}
            verdict => assert_eq!(verdict, both, "{one:?} and Both disagree"),
        }
    }
});
