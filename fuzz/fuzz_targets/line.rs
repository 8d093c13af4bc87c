//! Fuzzes `LineCodec` (`line` and `crlf`).
//! Input: [flags, max_frame, seed_lo, seed_hi, data...]
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockserv::frame::{Codec, LineCodec};
use sockserv_fuzz::{check, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let crlf = input.byte() & 1 == 1;
    let max_frame = usize::from(input.byte());
    let seed = input.u16();
    let data = input.rest();
    check(
        || Codec::Line(LineCodec::new(max_frame, crlf)),
        max_frame,
        seed,
        data,
    );
});
