//! VRRP advertisement codec: VRRPv3 (RFC 5798 section 5.1) and VRRPv2
//! (RFC 3768 section 5.1, authentication type 0 only), IPv4. Sans-IO: the
//! IPv4 header belongs to the raw socket; the addresses it carries are
//! passed in because the v3 checksum covers a pseudo-header. `decode` never
//! panics and refuses anything RFC 5798 section 7.1 refuses at this layer.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// IP protocol number of VRRP, in the v3 pseudo-header.
pub const PROTO: u8 = 112;
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

/// One advertisement.
///
/// VRRPv3 (RFC 5798 section 5.1):
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |(rsvd) |     Max Adver Int     |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       IPvX Address(es)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// VRRPv2 (RFC 3768 section 5.1):
/// ```text
/// |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
/// |   Auth Type   |   Adver Int   |          Checksum             |
/// |                         IP Address(es)                        |
/// |                     Authentication Data (1)                   |
/// |                     Authentication Data (2)                   |
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2 carries whole seconds:
    /// multiples of 100 here).
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
        }
    }
}

/// RFC 1071 one's-complement sum, folded.
fn sum16(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of `msg` (its checksum field zero or not: the caller decides).
pub fn checksum(version: Version, msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
    let acc = match version {
        // RFC 3768 section 5.3.8: over the VRRP message only.
        Version::V2 => 0,
        // RFC 5798 section 5.2.8: with the IPv4 pseudo-header.
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

/// Encodes an advertisement with its checksum.
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
            b.push(0); // auth type: none
            b.push((p.adver_int_cs / 100).clamp(1, 255) as u8);
        }
        Version::V3 => b.extend_from_slice(&(p.adver_int_cs & 0x0fff).to_be_bytes()),
    }
    b.extend_from_slice(&[0, 0]);
    for a in &p.addresses[..count] {
        b.extend_from_slice(&a.octets());
    }
    if p.version == Version::V2 {
        b.extend_from_slice(&[0; 8]);
    }
    let c = checksum(p.version, &b, src, dst);
    b[6..8].copy_from_slice(&c.to_be_bytes());
    b
}

/// Decodes and validates (RFC 5798 section 7.1: version, type, length,
/// address count, checksum; v2: authentication type 0).
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

    /// Advertisements captured from keepalived 2.2 (Debian 12) in a network
    /// namespace (`tcpdump -w` on the peer's veth; VRID 51, priority 150,
    /// `advert_int 1`, VIP 192.0.2.100, sender 192.0.2.21): byte-exact
    /// decode and re-encode, checksums included.
    #[test]
    fn keepalived_captures_round_trip_byte_exact() {
        let src = Ipv4Addr::new(192, 0, 2, 21);
        let expect = |version, adver_int_cs| Packet {
            version,
            vrid: 51,
            priority: 150,
            adver_int_cs,
            addresses: vec![Ipv4Addr::new(192, 0, 2, 100)],
        };
        let v3 = unhex("313396010064d35dc0000264");
        assert_eq!(decode(&v3, src, DST).unwrap(), expect(Version::V3, 100));
        assert_eq!(encode(&expect(Version::V3, 100), src, DST), v3);
        let v2 = unhex("2133960100018665c00002640000000000000000");
        assert_eq!(decode(&v2, src, DST).unwrap(), expect(Version::V2, 100));
        assert_eq!(encode(&expect(Version::V2, 100), src, DST), v2);
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

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes, SRC, DST);
        }

        #[test]
        fn round_trip(v3 in any::<bool>(), vrid in 1u8.., priority in any::<u8>(),
                      secs in 1u16..=255, addrs in proptest::collection::vec(any::<u32>(), 1..=MAX_ADDRESSES)) {
            let p = Packet {
                version: if v3 { Version::V3 } else { Version::V2 },
                vrid,
                priority,
                adver_int_cs: secs * if v3 { 1 } else { 100 },
                addresses: addrs.into_iter().map(Ipv4Addr::from).collect(),
            };
            prop_assert_eq!(decode(&encode(&p, SRC, DST), SRC, DST).unwrap(), p);
        }

        #[test]
        fn any_flipped_bit_is_refused(bit in 0usize..96) {
            let mut b = encode(&sample(Version::V3), SRC, DST);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&b, SRC, DST).map(|p| p != sample(Version::V3)).unwrap_or(true));
        }
    }
}
