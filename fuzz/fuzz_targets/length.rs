//! Fuzzes `LengthCodec` over its whole parameter space, extreme
//! adjustments included. Invalid configurations must be refused cleanly.
//! Input: [offset, field_len, flags, adjustment, strip, max_lo, max_hi,
//!         seed_lo, seed_hi, data...]
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockserv::frame::{Codec, Endian, LengthField};
use sockserv_fuzz::{check, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let offset = usize::from(input.byte() % 6);
    let field_len = usize::from(input.byte() % 10);
    let flags = input.byte();
    let adjust_byte = input.byte();
    let adjustment = match flags >> 1 & 3 {
        0 => i64::MIN + i64::from(adjust_byte),
        1 => i64::MAX - i64::from(adjust_byte),
        _ => i64::from(adjust_byte as i8),
    };
    let strip_byte = input.byte();
    let max_frame = usize::from(input.u16());
    let seed = input.u16();
    let data = input.rest();
    let mut field = LengthField::new(field_len)
        .length_field_offset(offset)
        .endian(if flags & 1 == 1 {
            Endian::Little
        } else {
            Endian::Big
        })
        .length_adjustment(adjustment)
        .max_frame(max_frame);
    if flags & 8 == 8 {
        field = field.strip(usize::from(strip_byte % 16));
    }
    let Ok(proto) = field.build() else {
        return;
    };
    check(|| Codec::Length(proto.clone()), max_frame, seed, data);
});
