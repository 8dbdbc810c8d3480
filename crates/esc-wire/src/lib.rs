//! Wire codecs of `escd`: replication frames and the log entry format.
//!
//! Owns the bytes on the replication link (architecture section 3): framing,
//! bounds, checksums, and the session (challenge/response HMAC-SHA256 over
//! the shared secret with an ephemeral X25519 exchange, then every frame
//! encrypted and authenticated with ChaCha20-Poly1305). Sans-IO: the transport
//! reads a [`HEADER_LEN`]-byte header, asks [`FrameHeader::parse`] how much
//! follows, then hands the whole frame to [`decode`]. Nothing here panics on
//! input; every malformed frame is a [`FrameError`] the caller counts and
//! drops.
//!
//! # Layout
//! - [`entry`]: the replicated log entry `(epoch, index, crc, payload)`.
//! - [`frame`]: frame header, encode/decode, size bounds.
//! - [`auth`]: the handshake proofs, the key agreement, the frame seals.
//! - [`msg`]: the messages carried in frames.
//! - [`witness`]: the requests and replies of the witness protocol.

pub mod auth;
pub mod entry;
pub mod frame;
pub mod msg;
pub mod witness;

pub use auth::{Ephemeral, FrameSeal, Handshake, TAG_LEN};
pub use entry::Entry;
pub use frame::{decode, encode, FrameError, FrameHeader, HEADER_LEN, MAX_BODY_BYTES};
pub use msg::{Message, SnapshotItem};
