//! The frame decoder and the entry decoder must never panic on any bytes,
//! with or without a session seal.
#![no_main]

use esc_wire::entry::Entry;
use esc_wire::{decode, FrameSeal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, None);
    let _ = decode(data, Some(&mut FrameSeal::new([7; 32])));
    let _ = Entry::from_bytes(data);
});
