//! Fuzzes `DelimiterCodec`: random delimiter sets (often rejected by the
//! construction rule, which must fail cleanly), random limits and data.
//! Input: [count, (len, bytes...)*, max_frame, seed_lo, seed_hi, data...]
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockserv::frame::{Codec, DelimiterCodec};
use sockserv_fuzz::{check, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let count = usize::from(input.byte() % 4);
    let mut delimiters = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(input.byte() % 5);
        delimiters.push(input.take(len).to_vec());
    }
    let max_frame = usize::from(input.byte());
    let seed = input.u16();
    let data = input.rest();
    let Ok(proto) = DelimiterCodec::new(delimiters, max_frame) else {
        return;
    };
    check(|| Codec::Delimiter(proto.fresh()), max_frame, seed, data);
});
