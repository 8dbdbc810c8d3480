//! The frame decoder and the entry decoder must never panic on any bytes,
//! with or without a session MAC.
#![no_main]

use esc_wire::entry::Entry;
use esc_wire::{decode, FrameMac};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, None);
    let _ = decode(data, Some(&mut FrameMac::new([7; 32])));
    let _ = Entry::from_bytes(data);
});
