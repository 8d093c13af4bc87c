//! Fuzzes `FixedCodec`.
//! Input: [size, slack, seed_lo, seed_hi, data...]
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockserv::frame::{Codec, FixedCodec};
use sockserv_fuzz::{check, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = usize::from(input.byte());
    let max_frame = size + usize::from(input.byte() % 4);
    let seed = input.u16();
    let data = input.rest();
    let Ok(proto) = FixedCodec::new(size, max_frame) else {
        return;
    };
    check(|| Codec::Fixed(proto), max_frame, seed, data);
});
