//! Messages between a node and the witness (architecture section 4),
//! carried in the same authenticated frames as replication
//! ([`crate::Message::Witness`] and [`crate::Message::WitnessReply`]).
//! The rules that answer them live in `esc-authority`'s witness core.

use serde::{Deserialize, Serialize};

/// Requests from a node (its name comes from the authenticated handshake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The primary renews its lease.
    Renew { epoch: u64 },
    /// The primary lost its in-sync standby and wants to commit alone.
    MarkOutdated { epoch: u64 },
    /// The standby holds every committed entry again.
    ClearOutdated { epoch: u64 },
    /// The primary gives its lease up (switchover, FAULT, shutdown).
    Release { epoch: u64 },
    /// A standby asks to become primary.
    Promote {
        epoch: u64,
        last_epoch: u64,
        last_index: u64,
        /// The operator forces it (`escadm ha promote --force`): granted
        /// even while the lease runs or the node is marked outdated.
        force: bool,
    },
}

/// The witness's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The lease runs `lease_ms` from when the request was sent.
    LeaseOk {
        epoch: u64,
        lease_ms: u64,
    },
    Marked {
        epoch: u64,
    },
    Cleared {
        epoch: u64,
    },
    Released {
        epoch: u64,
    },
    /// Promote, in exactly this epoch; the lease is held from the request.
    Granted {
        epoch: u64,
        lease_ms: u64,
    },
    Denied {
        reason: String,
    },
}
