//! The VRRP decoder must never panic on any bytes, for any addresses in the
//! pseudo-header; what it accepts must encode back to the same bytes.
#![no_main]

use esc_vrrp::packet::{decode, encode};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let src = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    let dst = Ipv4Addr::new(data[4], data[5], data[6], data[7]);
    let bytes = &data[8..];
    if let Ok(p) = decode(bytes, src, dst) {
        assert_eq!(decode(&encode(&p, src, dst), src, dst), Ok(p));
    }
});
