//! VRRP advertisement codec: VRRPv3 (RFC 5798 section 5.1) and VRRPv2
//! (RFC 3768 section 5.1, authentication type 0 only), IPv4. Sans-IO: the
//! IPv4 header belongs to the raw socket; the addresses it carries are
//! passed in because the v3 checksum covers a pseudo-header. `decode` never
//! panics and refuses anything RFC 5798 section 7.1 refuses at this layer.
//!
//! The rest of section 7.1 needs what this layer does not see: the caller
//! checks the IPv4 TTL ([`validate_ttl`], it must be 255) and the VRID, and
//! compares the address list with its configuration (a mismatch is logged,
//! the packet still counts).

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// IP protocol number of VRRP, in the v3 pseudo-header.
pub const PROTO: u8 = 112;
/// The only IPv4 TTL a VRRP packet may arrive with (RFC 5798 section 5.1.1.3,
/// checked on receipt in section 7.1): a packet that crossed a router is not
/// from this link.
pub const TTL: u8 = 255;
/// Most addresses accepted in one advertisement (bounds the decode).
pub const MAX_ADDRESSES: usize = 20;
/// Type 1: ADVERTISEMENT, the only type (RFC 5798 section 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;

/// VRRP version on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// RFC 3768: interval in seconds, authentication fields, plain checksum.
    V2,
    /// RFC 5798: interval in centiseconds, checksum with a pseudo-header.
    V3,
}

/// One advertisement, either version.
///
/// VRRPv3 (RFC 5798 section 5.1; fields in section 5.2):
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    IPv4 Fields or IPv6 Fields                 |
/// ...                                                           ...
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |(rsvd) |     Max Adver Int     |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                                                               +
/// |                       IPvX Address(es)                        |
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// |                                                               |
/// +                                                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// Max Adver Int is 12 bits of centiseconds; the 4 reserved bits are sent
/// as zero and ignored on receipt (section 5.2.6).
///
/// VRRPv2 (RFC 3768 section 5.1):
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Auth Type   |   Adver Int   |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         IP Address (1)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                            .                                  |
/// |                            .                                  |
/// |                            .                                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         IP Address (n)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Authentication Data (1)                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Authentication Data (2)                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// Adver Int is one byte of whole seconds. Only Auth Type 0 (none) is
/// accepted; its 8 bytes of Authentication Data are sent as zero and ignored
/// on receipt (RFC 3768 section 5.3.10), but they must be present.
///
/// One struct for both: the interval is kept in centiseconds whatever the
/// version (the state machine's timers are in centiseconds, RFC 5798
/// section 6.1), so a v2 interval is a multiple of 100.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds: v3's 12-bit Max Adver Int
    /// (1..=4095), or v2's Adver Int in seconds times 100 (100..=25500).
    pub adver_int_cs: u16,
    pub addresses: Vec<Ipv4Addr>,
}

/// Why bytes were refused; each is counted by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes: shorter than a VRRP header")]
    Short(usize),
    #[error("unsupported VRRP version {0}")]
    Version(u8),
    #[error("unknown VRRP type {0}")]
    Type(u8),
    #[error("address count {0} above {MAX_ADDRESSES}")]
    TooManyAddresses(usize),
    #[error("length {got} does not match {count} addresses ({want} bytes)")]
    Length {
        got: usize,
        want: usize,
        count: usize,
    },
    #[error("checksum mismatch")]
    Checksum,
    #[error("VRRPv2 authentication type {0} refused (only 0, none)")]
    Auth(u8),
    #[error("advertisement interval of zero")]
    ZeroInterval,
    #[error("IPv4 TTL {0}, not {TTL}: the packet did not come from this link")]
    Ttl(u8),
}

impl DecodeError {
    /// Counter name.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short(_) => "short",
            DecodeError::Version(_) => "version",
            DecodeError::Type(_) => "type",
            DecodeError::TooManyAddresses(_) => "address_count",
            DecodeError::Length { .. } => "length",
            DecodeError::Checksum => "checksum",
            DecodeError::Auth(_) => "auth",
            DecodeError::ZeroInterval => "interval",
            DecodeError::Ttl(_) => "ttl",
        }
    }
}

/// RFC 5798 section 7.1: a packet whose IPv4 TTL is not 255 is discarded.
/// The TTL lives in the IP header, which only the socket layer sees, so the
/// caller checks it before [`decode`]; the error counts like a decode error.
pub fn validate_ttl(ttl: u8) -> Result<(), DecodeError> {
    if ttl == TTL {
        Ok(())
    } else {
        Err(DecodeError::Ttl(ttl))
    }
}

/// RFC 1071 one's-complement sum, not yet folded. The accumulator is 64 bits
/// so no slice a caller can hold overflows it.
fn sum16(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves at most 0xffff.
    !(acc as u16)
}

/// The Internet checksum of `msg` as VRRP computes it. Called on a message
/// whose checksum field is zero it gives the value to put there (encode);
/// called on a received message it gives 0 when the message is intact.
///
/// v2 (RFC 3768 section 5.3.8): over the VRRP message only.
///
/// v3 (RFC 5798 section 5.2.8): over the message preceded by the IPv4
/// pseudo-header (the RFC points at RFC 2460's IPv6 one; for IPv4 this is
/// the TCP/UDP one, which is what keepalived sends, unicast or multicast):
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Source Address (IPv4 src)                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                 Destination Address (IPv4 dst)                |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     zero      | Protocol (112)|     VRRP message length       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// `dst` is the destination the packet was sent to: 224.0.0.18, or the
/// peer's address when unicast. A `msg` longer than an IPv4 payload can be
/// (65535 bytes) cannot be a VRRP message; its length is cut to 16 bits
/// like the field would be, without a panic.
pub fn checksum(version: Version, msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
    let acc = match version {
        Version::V2 => 0,
        Version::V3 => {
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&src.octets());
            pseudo[4..8].copy_from_slice(&dst.octets());
            pseudo[9] = PROTO;
            pseudo[10..12].copy_from_slice(&(msg.len() as u16).to_be_bytes());
            sum16(0, &pseudo)
        }
    };
    fold(sum16(acc, msg))
}

fn wire_len(version: Version, count: usize) -> usize {
    8 + 4 * count + if version == Version::V2 { 8 } else { 0 }
}

/// Encodes an advertisement with its checksum (RFC 5798 section 5.2.8 /
/// RFC 3768 section 5.3.8), for the IPv4 header `src` -> `dst`.
///
/// Never fails and never panics; what the wire cannot carry is bounded, not
/// wrapped (validate the configuration instead of relying on this):
/// addresses beyond [`MAX_ADDRESSES`] are left out, a v3 interval is
/// clamped to 1..=4095 cs, a v2 interval is rounded down to whole seconds
/// and clamped to 1..=255 s.
pub fn encode(p: &Packet, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let count = p.addresses.len().min(MAX_ADDRESSES);
    let mut b = Vec::with_capacity(wire_len(p.version, count));
    let v = match p.version {
        Version::V2 => 2u8,
        Version::V3 => 3u8,
    };
    b.push((v << 4) | TYPE_ADVERTISEMENT);
    b.push(p.vrid);
    b.push(p.priority);
    b.push(count as u8);
    match p.version {
        Version::V2 => {
            // RFC 3768 section 5.3.6: auth type 0, none.
            b.push(0);
            // Section 5.3.7: Adver Int in seconds.
            b.push((p.adver_int_cs / 100).clamp(1, 255) as u8);
        }
        // RFC 5798 sections 5.2.6-5.2.7: reserved bits zero, 12-bit interval.
        Version::V3 => b.extend_from_slice(&p.adver_int_cs.clamp(1, 0x0fff).to_be_bytes()),
    }
    // The checksum field is zero while the checksum is computed.
    b.extend_from_slice(&[0, 0]);
    for a in &p.addresses[..count] {
        b.extend_from_slice(&a.octets());
    }
    if p.version == Version::V2 {
        // RFC 3768 section 5.3.10: authentication data, zero.
        b.extend_from_slice(&[0; 8]);
    }
    let c = checksum(p.version, &b, src, dst);
    b[6..8].copy_from_slice(&c.to_be_bytes());
    b
}

/// Decodes and validates the VRRP message `b` (the IPv4 payload) that came
/// from `src` to `dst`. RFC 5798 section 7.1 at this layer: version (2 or
/// 3), type (advertisement), address count (at most [`MAX_ADDRESSES`]),
/// length (exactly what the count implies, v2's 8 authentication bytes
/// included), checksum; v2: authentication type 0 (RFC 3768 section 5.3.6).
/// A zero interval is refused too: it would make the section 6.1 timers
/// zero. Every refusal is a [`DecodeError`]; no input panics.
pub fn decode(b: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Packet, DecodeError> {
    if b.len() < 8 {
        return Err(DecodeError::Short(b.len()));
    }
    let version = match b[0] >> 4 {
        2 => Version::V2,
        3 => Version::V3,
        v => return Err(DecodeError::Version(v)),
    };
    if b[0] & 0x0f != TYPE_ADVERTISEMENT {
        return Err(DecodeError::Type(b[0] & 0x0f));
    }
    // Bound the count before it sizes anything.
    let count = usize::from(b[3]);
    if count > MAX_ADDRESSES {
        return Err(DecodeError::TooManyAddresses(count));
    }
    let want = wire_len(version, count);
    if b.len() != want {
        return Err(DecodeError::Length {
            got: b.len(),
            want,
            count,
        });
    }
    if checksum(version, b, src, dst) != 0 {
        return Err(DecodeError::Checksum);
    }
    let adver_int_cs = match version {
        Version::V2 => {
            if b[4] != 0 {
                return Err(DecodeError::Auth(b[4]));
            }
            u16::from(b[5]) * 100
        }
        // RFC 5798 section 5.2.6: the reserved bits are ignored on receipt.
        Version::V3 => u16::from_be_bytes([b[4], b[5]]) & 0x0fff,
    };
    if adver_int_cs == 0 {
        return Err(DecodeError::ZeroInterval);
    }
    let addresses = b[8..8 + 4 * count]
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect();
    Ok(Packet {
        version,
        vrid: b[1],
        priority: b[2],
        adver_int_cs,
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const DST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

    fn sample(version: Version) -> Packet {
        Packet {
            version,
            vrid: 51,
            priority: 150,
            adver_int_cs: 100,
            addresses: vec![Ipv4Addr::new(192, 0, 2, 100)],
        }
    }

    #[test]
    fn v3_layout_and_round_trip() {
        let b = encode(&sample(Version::V3), SRC, DST);
        assert_eq!(&b[..6], &[0x31, 51, 150, 1, 0x00, 100]);
        assert_eq!(&b[8..], &[192, 0, 2, 100]);
        assert_eq!(decode(&b, SRC, DST).unwrap(), sample(Version::V3));
        // The pseudo-header is part of the v3 checksum (RFC 5798 5.2.8).
        assert_eq!(
            decode(&b, Ipv4Addr::new(192, 0, 2, 12), DST),
            Err(DecodeError::Checksum)
        );
    }

    #[test]
    fn v2_layout_and_round_trip() {
        let b = encode(&sample(Version::V2), SRC, DST);
        assert_eq!(&b[..6], &[0x21, 51, 150, 1, 0, 1]);
        assert_eq!(b.len(), 20);
        assert_eq!(decode(&b, SRC, DST).unwrap(), sample(Version::V2));
        // v2's checksum does not cover addresses outside the message.
        assert!(decode(&b, Ipv4Addr::new(192, 0, 2, 12), DST).is_ok());
        let mut auth = b.clone();
        auth[4] = 1;
        assert!(decode(&auth, SRC, DST).is_err());
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// One advertisement captured from keepalived: the VRRP message (the
    /// IPv4 payload), the IPv4 addresses it travelled between, and what it
    /// says.
    struct Capture {
        name: &'static str,
        hex: &'static str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        version: Version,
        priority: u8,
    }

    const KEEPALIVED_SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
    const KEEPALIVED_PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 22);

    /// Keepalived v2.2.7 (Debian 12 package), one `vrrp_instance` with
    /// `virtual_router_id 51`, `priority 150`, `advert_int 1`,
    /// `virtual_ipaddress { 192.0.2.100/24 }`, no authentication, on one end
    /// of a veth pair between two network namespaces; `tcpdump -w` on the
    /// other end. Every packet had IPv4 TTL 255, TOS 0xc0, no DF.
    /// - multicast: sender 192.0.2.21 to 224.0.0.18, the capture this test
    ///   was written with (commit 58f6564).
    /// - unicast: `unicast_src_ip 192.0.2.21`, `unicast_peer { 192.0.2.22 }`,
    ///   IPv6 off; the priority-0 packet is the one keepalived sends when it
    ///   is stopped as master (RFC 5798 section 6.4.3).
    const KEEPALIVED: &[Capture] = &[
        Capture {
            name: "v3 multicast",
            hex: "313396010064d35dc0000264",
            src: KEEPALIVED_SRC,
            dst: DST,
            version: Version::V3,
            priority: 150,
        },
        Capture {
            name: "v2 multicast",
            hex: "2133960100018665c00002640000000000000000",
            src: KEEPALIVED_SRC,
            dst: DST,
            version: Version::V2,
            priority: 150,
        },
        Capture {
            name: "v3 unicast",
            hex: "313396010064f159c0000264",
            src: KEEPALIVED_SRC,
            dst: KEEPALIVED_PEER,
            version: Version::V3,
            priority: 150,
        },
        Capture {
            name: "v3 unicast, shutdown",
            hex: "313300010064875ac0000264",
            src: KEEPALIVED_SRC,
            dst: KEEPALIVED_PEER,
            version: Version::V3,
            priority: 0,
        },
        Capture {
            name: "v2 unicast",
            hex: "2133960100018665c00002640000000000000000",
            src: KEEPALIVED_SRC,
            dst: KEEPALIVED_PEER,
            version: Version::V2,
            priority: 150,
        },
        Capture {
            name: "v2 unicast, shutdown",
            hex: "2133000100011c66c00002640000000000000000",
            src: KEEPALIVED_SRC,
            dst: KEEPALIVED_PEER,
            version: Version::V2,
            priority: 0,
        },
    ];

    // Input: each keepalived capture with its IPv4 src/dst. Expected: it
    // decodes to VRID 51, its priority, 100 cs, [192.0.2.100], and encoding
    // that packet gives back exactly the captured bytes, checksum included.
    #[test]
    fn keepalived_captures_round_trip_byte_exact() {
        for c in KEEPALIVED {
            let bytes = unhex(c.hex);
            let expect = Packet {
                version: c.version,
                vrid: 51,
                priority: c.priority,
                adver_int_cs: 100,
                addresses: vec![Ipv4Addr::new(192, 0, 2, 100)],
            };
            assert_eq!(
                decode(&bytes, c.src, c.dst),
                Ok(expect.clone()),
                "{}",
                c.name
            );
            assert_eq!(encode(&expect, c.src, c.dst), bytes, "{}", c.name);
        }
    }

    // Input: keepalived's v3 captures. Expected: their checksum verifies
    // only with the pseudo-header of the addresses they were sent between
    // (RFC 5798 5.2.8): not over the message alone as v2 computes it, and
    // not with the multicast group in place of a unicast peer (what
    // keepalived before 1.3.6 did, its issue #642).
    #[test]
    fn keepalived_v3_checksum_covers_the_real_pseudo_header() {
        for c in KEEPALIVED.iter().filter(|c| c.version == Version::V3) {
            let bytes = unhex(c.hex);
            assert_eq!(checksum(Version::V3, &bytes, c.src, c.dst), 0, "{}", c.name);
            assert_ne!(checksum(Version::V2, &bytes, c.src, c.dst), 0, "{}", c.name);
            if c.dst != DST {
                assert_eq!(
                    decode(&bytes, c.src, DST),
                    Err(DecodeError::Checksum),
                    "{}",
                    c.name
                );
            }
        }
    }

    // RFC 5798 section 7.1: malformed packets are refused.
    #[test]
    fn malformed_packets_are_refused() {
        let b = encode(&sample(Version::V3), SRC, DST);
        assert_eq!(decode(&b[..7], SRC, DST), Err(DecodeError::Short(7)));
        let mut t = b.clone();
        t[0] = 0x32;
        assert_eq!(decode(&t, SRC, DST), Err(DecodeError::Type(2)));
        let mut v = b.clone();
        v[0] = 0x41;
        assert_eq!(decode(&v, SRC, DST), Err(DecodeError::Version(4)));
        let mut n = b.clone();
        n[3] = 200;
        assert_eq!(
            decode(&n, SRC, DST),
            Err(DecodeError::TooManyAddresses(200))
        );
        let mut c = b.clone();
        c[7] ^= 1;
        assert_eq!(decode(&c, SRC, DST), Err(DecodeError::Checksum));
        assert!(matches!(
            decode(&b[..11], SRC, DST),
            Err(DecodeError::Length { .. })
        ));
    }

    /// Sets the checksum of `b` as a sender would, so a test reaches the
    /// checks after it.
    fn with_checksum(mut b: Vec<u8>, version: Version) -> Vec<u8> {
        b[6..8].copy_from_slice(&[0, 0]);
        let c = checksum(version, &b, SRC, DST);
        b[6..8].copy_from_slice(&c.to_be_bytes());
        b
    }

    // Input: v2 messages with a valid checksum but auth type 1 (simple
    // text, removed by RFC 3768), 2 (IP AH) or 255, and one without the 8
    // bytes of authentication data. Expected: `Auth(type)`, and `Length`
    // when the authentication data is missing.
    #[test]
    fn v2_refuses_authentication_and_a_missing_auth_data() {
        let b = encode(&sample(Version::V2), SRC, DST);
        for auth_type in [1u8, 2, 255] {
            let mut a = b.clone();
            a[4] = auth_type;
            let a = with_checksum(a, Version::V2);
            assert_eq!(decode(&a, SRC, DST), Err(DecodeError::Auth(auth_type)));
            assert_eq!(DecodeError::Auth(auth_type).reason(), "auth");
        }
        let cut = with_checksum(b[..12].to_vec(), Version::V2);
        assert_eq!(
            decode(&cut, SRC, DST),
            Err(DecodeError::Length {
                got: 12,
                want: 20,
                count: 1
            })
        );
    }

    // Input: a checksummed advert whose interval field is zero (v3 and v2).
    // Expected: `ZeroInterval`. Input: v3 with the reserved bits set.
    // Expected: ignored (RFC 5798 5.2.6).
    #[test]
    fn interval_field_edges() {
        for version in [Version::V3, Version::V2] {
            let mut z = encode(&sample(version), SRC, DST);
            z[5] = 0;
            if version == Version::V3 {
                z[4] = 0;
            }
            let z = with_checksum(z, version);
            assert_eq!(decode(&z, SRC, DST), Err(DecodeError::ZeroInterval));
        }
        let mut r = encode(&sample(Version::V3), SRC, DST);
        r[4] |= 0xf0;
        let r = with_checksum(r, Version::V3);
        assert_eq!(decode(&r, SRC, DST), Ok(sample(Version::V3)));
    }

    // Input: packets the wire cannot carry. Expected: bounded, not wrapped.
    #[test]
    fn encode_bounds_what_the_wire_cannot_carry() {
        let mut p = sample(Version::V3);
        p.adver_int_cs = 4096; // 13 bits: masking would send 0
        assert_eq!(
            decode(&encode(&p, SRC, DST), SRC, DST)
                .unwrap()
                .adver_int_cs,
            4095
        );
        p.addresses = vec![Ipv4Addr::new(192, 0, 2, 1); MAX_ADDRESSES + 5];
        let d = decode(&encode(&p, SRC, DST), SRC, DST).unwrap();
        assert_eq!(d.addresses.len(), MAX_ADDRESSES);
        let mut v2 = sample(Version::V2);
        v2.adver_int_cs = 150; // 1.5 s: v2 carries whole seconds
        assert_eq!(
            decode(&encode(&v2, SRC, DST), SRC, DST)
                .unwrap()
                .adver_int_cs,
            100
        );
        v2.adver_int_cs = 60_000; // above 255 s
        assert_eq!(
            decode(&encode(&v2, SRC, DST), SRC, DST)
                .unwrap()
                .adver_int_cs,
            25_500
        );
    }

    // RFC 5798 sections 5.1.1.3 and 7.1: only TTL 255 is accepted.
    #[test]
    fn ttl_must_be_255() {
        assert_eq!(validate_ttl(255), Ok(()));
        for ttl in [0u8, 1, 64, 254] {
            assert_eq!(validate_ttl(ttl), Err(DecodeError::Ttl(ttl)));
        }
        assert_eq!(DecodeError::Ttl(1).reason(), "ttl");
    }

    // Every refusal has its own counter name.
    #[test]
    fn reasons_are_distinct() {
        let all = [
            DecodeError::Short(0),
            DecodeError::Version(0),
            DecodeError::Type(0),
            DecodeError::TooManyAddresses(0),
            DecodeError::Length {
                got: 0,
                want: 0,
                count: 0,
            },
            DecodeError::Checksum,
            DecodeError::Auth(0),
            DecodeError::ZeroInterval,
            DecodeError::Ttl(0),
        ];
        let mut reasons: Vec<&str> = all.iter().map(DecodeError::reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
    }

    // The checksum helper takes any slice without overflow or panic.
    #[test]
    fn checksum_of_a_huge_slice_does_not_panic() {
        let big = vec![0xffu8; 1 << 20];
        let _ = checksum(Version::V3, &big, SRC, DST);
        let _ = checksum(Version::V2, &big, SRC, DST);
    }

    fn version_strategy() -> impl Strategy<Value = Version> {
        prop_oneof![Just(Version::V2), Just(Version::V3)]
    }

    /// Any packet the wire can carry, either version.
    fn packet_strategy() -> impl Strategy<Value = Packet> {
        (
            version_strategy(),
            any::<u8>(),
            any::<u8>(),
            1u16..=4095,
            1u16..=255,
            proptest::collection::vec(any::<u32>(), 0..=MAX_ADDRESSES),
        )
            .prop_map(|(version, vrid, priority, cs, s, addrs)| Packet {
                version,
                vrid,
                priority,
                adver_int_cs: if version == Version::V3 { cs } else { s * 100 },
                addresses: addrs.into_iter().map(Ipv4Addr::from).collect(),
            })
    }

    /// `b` as `encode` would send what `decode` read from it: v3 reserved
    /// bits and v2 authentication data zeroed, checksum recomputed.
    fn canonical(b: &[u8], version: Version) -> Vec<u8> {
        let mut c = b.to_vec();
        match version {
            Version::V3 => c[4] &= 0x0f,
            Version::V2 => {
                let n = c.len();
                c[n - 8..].fill(0);
            }
        }
        with_checksum(c, version)
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128),
                               src in any::<u32>(), dst in any::<u32>()) {
            let _ = decode(&bytes, Ipv4Addr::from(src), Ipv4Addr::from(dst));
        }

        // Random bytes rarely get past the version and the checksum; these
        // look like adverts (version 2 or 3 mostly, type 1 mostly, a count
        // near the bound, a length near the one it implies, v2 auth type 0
        // and the checksum set half of the time) so every check is reached.
        // None panics, and what is accepted re-encodes to its canonical form.
        #[test]
        fn near_valid_bytes_never_panic_and_accepted_ones_re_encode(
            ver in prop_oneof![3 => Just(2u8), 3 => Just(3u8), 1 => 0u8..16],
            typ in prop_oneof![4 => Just(1u8), 1 => 0u8..16],
            count in 0u8..=(MAX_ADDRESSES as u8 + 4),
            len_delta in prop_oneof![3 => Just(0i32), 1 => -3i32..=3],
            v2_auth_none in any::<bool>(),
            fix_checksum in any::<bool>(),
            pool in proptest::collection::vec(any::<u8>(), 128),
        ) {
            let version = if ver == 2 { Version::V2 } else { Version::V3 };
            let want = wire_len(version, usize::from(count)) as i32;
            let len = (want + len_delta).clamp(0, pool.len() as i32) as usize;
            let mut b = pool[..len].to_vec();
            if len >= 8 {
                b[0] = (ver << 4) | typ;
                b[3] = count;
                if ver == 2 && v2_auth_none {
                    b[4] = 0;
                }
                if fix_checksum && (ver == 2 || ver == 3) {
                    b = with_checksum(b, version);
                }
            }
            if let Ok(p) = decode(&b, SRC, DST) {
                prop_assert_eq!(encode(&p, SRC, DST), canonical(&b, version));
            }
        }

        #[test]
        fn round_trip(p in packet_strategy(), src in any::<u32>(), dst in any::<u32>()) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let b = encode(&p, src, dst);
            prop_assert_eq!(b.len(), wire_len(p.version, p.addresses.len()));
            prop_assert_eq!(decode(&b, src, dst), Ok(p));
        }

        // A one-bit error anywhere in the message changes the one's-complement
        // sum by 2^k, never by a multiple of 0xffff, so the checksum alone
        // catches it when no earlier check does; v2 auth data included.
        #[test]
        fn any_flipped_bit_is_refused(p in packet_strategy(), bit in any::<prop::sample::Index>()) {
            let mut b = encode(&p, SRC, DST);
            let bit = bit.index(b.len() * 8);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&b, SRC, DST).is_err(), "bit {} accepted", bit);
        }

        // v3 only: a flipped bit in the pseudo-header (the IPv4 addresses)
        // is caught too.
        #[test]
        fn v3_flipped_address_bit_is_refused(p in packet_strategy(), bit in 0u32..64) {
            prop_assume!(p.version == Version::V3);
            let b = encode(&p, SRC, DST);
            let (src, dst) = if bit < 32 {
                (Ipv4Addr::from(u32::from(SRC) ^ (1 << bit)), DST)
            } else {
                (SRC, Ipv4Addr::from(u32::from(DST) ^ (1 << (bit - 32))))
            };
            prop_assert_eq!(decode(&b, src, dst), Err(DecodeError::Checksum));
        }
    }
}
