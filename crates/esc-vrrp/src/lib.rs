//! VRRP for `escd` (RFC 5798 VRRPv3, RFC 3768 VRRPv2 without
//! authentication), sans-IO: the packet codec and the state machine. The
//! runtime (raw socket, VIP, gratuitous ARP) lives in `esc-node`.
//!
//! # Layout
//! - [`fsm`]: the RFC 5798 section 6.4 state machine, time as an input.
//! - [`packet`]: the advertisement codec, v3 and v2.

pub mod fsm;
pub mod packet;
