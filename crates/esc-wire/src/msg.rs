//! Messages carried in replication frames (architecture section 3).
//!
//! The follower (standby) dials the primary. After the handshake
//! (`ClientHello`, `ServerChallenge`, `ClientProof`, `AuthOk`), the follower
//! sends `Status`; the primary answers with `Append` (entries, or none as a
//! heartbeat) or a snapshot (`SnapshotBegin`, `SnapshotChunk`*,
//! `SnapshotEnd`); the follower acknowledges with `AppendOk` once the entries
//! are durable, or `AppendReject` when its log does not match at
//! `prev_index`. Either side sends `StaleEpoch` to a peer of a lower epoch.

use crate::entry::Entry;
use serde::{Deserialize, Serialize};

/// The replication protocol version in `ClientHello`. 2: snapshot items
/// are keys of one state map (issue 10), no longer per-table. 3: an
/// ephemeral key exchange in the handshake and sealed frames (issue 14).
pub const PROTOCOL_VERSION: u16 = 3;
/// Nonce length of the handshake.
pub const NONCE_LEN: usize = 32;
/// Most items in one snapshot chunk.
pub const SNAPSHOT_CHUNK_ITEMS_MAX: usize = 4_096;

/// One key/value of the materialized state (`esc_state`'s map), in a
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotItem {
    pub key: String,
    pub value: Vec<u8>,
}

/// Every message of the replication protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Follower -> primary: opens the handshake.
    ClientHello {
        protocol: u16,
        node_name: String,
        nonce: [u8; NONCE_LEN],
        /// Its ephemeral X25519 public key (`auth::Ephemeral`).
        ephemeral: [u8; 32],
    },
    /// Primary -> follower: its nonce, ephemeral key and proof that it
    /// knows the secret.
    ServerChallenge {
        node_name: String,
        nonce: [u8; NONCE_LEN],
        ephemeral: [u8; 32],
        proof: [u8; 32],
    },
    /// Follower -> primary: proof that it knows the secret.
    ClientProof { proof: [u8; 32] },
    /// Primary -> follower: authenticated; frames are sealed from the next one.
    AuthOk,
    /// Follower -> primary: where its log ends.
    Status {
        epoch: u64,
        last_index: u64,
        last_epoch: u64,
        applied_index: u64,
    },
    /// Primary -> follower: entries after `prev_index`, and the commit point.
    Append {
        epoch: u64,
        prev_index: u64,
        prev_epoch: u64,
        commit_index: u64,
        entries: Vec<Entry>,
    },
    /// Follower -> primary: everything up to `match_index` is durable here.
    AppendOk { epoch: u64, match_index: u64 },
    /// Follower -> primary: no match at `prev_index`; retry from `conflict_index`.
    AppendReject {
        epoch: u64,
        last_index: u64,
        conflict_index: u64,
    },
    /// Follower -> primary: its log diverged below what it applied; send a snapshot.
    NeedSnapshot { epoch: u64 },
    /// Primary -> follower: a snapshot of the state at `index` follows.
    SnapshotBegin {
        epoch: u64,
        index: u64,
        index_epoch: u64,
    },
    /// Primary -> follower: part of the snapshot.
    SnapshotChunk { items: Vec<SnapshotItem> },
    /// Primary -> follower: the snapshot is complete.
    SnapshotEnd { epoch: u64, index: u64 },
    /// Either way: the sender has a higher epoch; the receiver must not lead.
    StaleEpoch { epoch: u64 },
    /// Primary -> follower (switchover): writes are drained, the follower
    /// holds every entry up to `last_index`; take over.
    Handover { epoch: u64, last_index: u64 },
    /// Node -> witness.
    Witness(crate::witness::Request),
    /// Witness -> node, in request order.
    WitnessReply(crate::witness::Reply),
}

impl Message {
    /// Short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::ClientHello { .. } => "client_hello",
            Message::ServerChallenge { .. } => "server_challenge",
            Message::ClientProof { .. } => "client_proof",
            Message::AuthOk => "auth_ok",
            Message::Status { .. } => "status",
            Message::Append { .. } => "append",
            Message::AppendOk { .. } => "append_ok",
            Message::AppendReject { .. } => "append_reject",
            Message::NeedSnapshot { .. } => "need_snapshot",
            Message::SnapshotBegin { .. } => "snapshot_begin",
            Message::SnapshotChunk { .. } => "snapshot_chunk",
            Message::SnapshotEnd { .. } => "snapshot_end",
            Message::StaleEpoch { .. } => "stale_epoch",
            Message::Handover { .. } => "handover",
            Message::Witness(_) => "witness_request",
            Message::WitnessReply(_) => "witness_reply",
        }
    }
}
