//! The VRRP decoder must never panic on any bytes, for any addresses in the
//! pseudo-header; what it accepts must encode back to the same bytes, up to
//! what the receiver ignores (RFC 5798 section 5.2.6: v3 reserved bits;
//! RFC 3768 section 5.3.10: v2 authentication data), and decode again to the
//! same packet.
#![no_main]

use esc_vrrp::packet::{checksum, decode, encode, Version};
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
        let mut canonical = bytes.to_vec();
        match p.version {
            Version::V3 => canonical[4] &= 0x0f,
            Version::V2 => {
                let n = canonical.len();
                canonical[n - 8..].fill(0);
            }
        }
        canonical[6..8].fill(0);
        let sum = checksum(p.version, &canonical, src, dst);
        canonical[6..8].copy_from_slice(&sum.to_be_bytes());
        let out = encode(&p, src, dst);
        assert_eq!(out, canonical);
        assert_eq!(decode(&out, src, dst), Ok(p));
    }
});
