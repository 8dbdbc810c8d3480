//! The node's status in the protocol's words: conversions from the cores'
//! own status types to `esc_proto::status` (the CLI's stable contract).
//! Pure functions; the owner task assembles the parts.

use esc_proto::status::{
    AuthorityStatus, HaRole, PeerStatus, ReplRole, ReplicationStatus, StoreStatus,
};

pub fn repl_role(r: esc_repl::Role) -> ReplRole {
    match r {
        esc_repl::Role::Primary => ReplRole::Primary,
        esc_repl::Role::Standby => ReplRole::Standby,
    }
}

pub fn replication(s: &esc_repl::ReplStatus) -> ReplicationStatus {
    ReplicationStatus {
        mode: match s.mode {
            esc_repl::Mode::Sync => "sync",
            esc_repl::Mode::Async => "async",
        }
        .into(),
        last_index: s.last_index,
        durable_index: s.durable_index,
        commit_index: s.commit_index,
        snapshot_index: s.snapshot_index,
        pending_writes: s.pending_writes as u64,
        peer: PeerStatus {
            connected: s.peer.connected,
            phase: s.peer.phase.clone(),
            match_index: s.peer.match_index,
            in_sync: s.peer.in_sync,
            lag_entries: s.peer.lag_entries,
        },
        promotion_blocker: s.promotion_blocker.clone(),
    }
}

pub fn store(m: &esc_store::LogMeta) -> StoreStatus {
    StoreStatus {
        epoch: m.epoch,
        last_index: m.last_index,
        last_epoch: m.last_epoch,
        applied_index: m.applied_index,
        snapshot_index: m.snapshot_index,
        snapshot_epoch: m.snapshot_epoch,
    }
}

pub fn authority(s: &esc_authority::authority::Status) -> AuthorityStatus {
    use esc_authority::Role;
    AuthorityStatus {
        role: match s.role {
            Role::Init => HaRole::Init,
            Role::Standby => HaRole::Standby,
            Role::Primary => HaRole::Primary,
            Role::Fault => HaRole::Fault,
        },
        state_word: s.state_word.as_str().into(),
        reason: s.reason.clone(),
        since_ms: s.since_ms,
        mode: s.mode.into(),
        health_error: s.health.clone().err(),
        vip: s.vip,
        admission: s.admission,
        vrrp_priority: s.vrrp_priority,
        lease_left_ms: s.lease_left_ms,
        standby_marked_outdated: s.standby_marked_outdated,
        switchover_in_progress: s.switchover_in_progress,
    }
}
