//! The replication state machine. One `handle(now_ms, input)` entry point;
//! one function, [`Core::change_role`], performs every role transition.

use crate::log::LogView;
use esc_wire::{Entry, Message};
use serde::Serialize;
use std::collections::VecDeque;

/// Most payload bytes in one group commit (and so in one inline `Append`),
/// well under the frame bound `esc_wire::MAX_BODY_BYTES`.
pub const GROUP_BYTES_MAX: usize = 8 << 20;

/// Identifies a client proposal; the runtime maps it to a responder.
pub type Token = u64;
/// Identifies one authenticated connection, chosen by the runtime.
pub type ConnId = u64;

/// Replication mode (architecture section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A write commits once durable on both nodes (DRBD protocol C).
    Sync,
    /// A write commits once durable locally; the standby may lag a bounded amount.
    Async,
}

/// The replication role of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

/// Tuning, validated by `esc-config`.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub async_lag_entries_max: u64,
    pub heartbeat_interval_ms: u64,
    pub peer_timeout_ms: u64,
    pub batch_entries_max: usize,
    pub group_commit_entries_max: usize,
    pub snapshot_every_entries: u64,
    pub log_retain_entries: u64,
}

/// Why a proposal got no commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Refusal {
    /// This node is not primary; nothing was written.
    NotPrimary,
    /// The node stopped being primary while the write was in flight; it may
    /// or may not have committed (a resend with the same idempotency key is safe).
    Unknown,
}

/// Everything the core reacts to.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed (heartbeats, peer timeouts).
    Tick,
    /// A client write; answered by `Apply.replies` or `Refuse`.
    Propose { token: Token, payload: Vec<u8> },
    /// The storage worker made everything up to `last_index` durable.
    Persisted { last_index: u64 },
    /// An authenticated connection to the peer is up.
    PeerUp { conn: ConnId },
    /// A connection is gone.
    PeerDown { conn: ConnId },
    /// A message from an authenticated peer.
    Received { conn: ConnId, msg: Message },
    /// The storage worker installed the snapshot; the log now starts after it.
    SnapshotInstalled { index: u64, index_epoch: u64 },
    /// Operator: become primary (bumps the epoch).
    Promote { reason: String },
    /// Operator: become standby.
    Demote { reason: String },
}

/// Everything the core asks the runtime to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Durably: cut entries after `truncate_after` (to the recovery file),
    /// append `entries`, record `epoch`. Answer with `Persisted`.
    Persist {
        truncate_after: Option<u64>,
        entries: Vec<Entry>,
        epoch: Option<u64>,
    },
    /// Apply committed entries up to `up_to`; answer each token with the
    /// outcome of its index.
    Apply {
        up_to: u64,
        replies: Vec<(u64, Token)>,
    },
    /// Fold applied entries up to `up_to` into the snapshot and drop them.
    Compact { up_to: u64 },
    /// Copy log entries from `from` on into the recovery file: they may
    /// diverge from the primary's log and are about to be replaced.
    SaveRecovery { from: u64 },
    /// Install the snapshot received on `conn`, then answer `SnapshotInstalled`.
    InstallSnapshot {
        conn: ConnId,
        index: u64,
        index_epoch: u64,
    },
    /// Send a message.
    Send { conn: ConnId, msg: Message },
    /// Read entries `from..=to` from the store and send them in one `Append`.
    SendEntries {
        conn: ConnId,
        epoch: u64,
        prev_index: u64,
        prev_epoch: u64,
        commit_index: u64,
        from: u64,
        to: u64,
    },
    /// Stream a snapshot of the applied state to the follower.
    SendSnapshot { conn: ConnId, epoch: u64 },
    /// Close a connection.
    Disconnect { conn: ConnId, reason: String },
    /// A proposal got no commit.
    Refuse { token: Token, refusal: Refusal },
    /// The role or epoch changed (log it; dial or accept accordingly).
    RoleChanged {
        role: Role,
        epoch: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum PeerPhase {
    /// Waiting for the follower's `Status`.
    AwaitStatus,
    /// Searching for the last matching index.
    Probing,
    /// Streaming a snapshot.
    Snapshotting,
    /// Shipping entries.
    Replicating,
}

#[derive(Debug, Clone)]
struct Peer {
    conn: ConnId,
    phase: PeerPhase,
    match_index: u64,
    next_index: u64,
    /// A catch-up `SendEntries` up to this index awaits its ack.
    catchup_to: Option<u64>,
    /// The follower has held every committed entry at some point since it
    /// connected: from then on sync-mode commits wait for it.
    in_sync: bool,
    last_heard_ms: u64,
    last_sent_ms: u64,
}

#[derive(Debug, Clone)]
struct Upstream {
    conn: ConnId,
    last_heard_ms: u64,
    /// Highest index verified equal to the primary's log.
    matched_index: u64,
    /// The next `Persisted` covering this index answers `AppendOk`.
    ack_after_persist: Option<u64>,
    /// A snapshot is being received: `(index, index_epoch)`.
    snapshot: Option<(u64, u64)>,
    /// We asked for a snapshot because our applied state diverged.
    diverged: bool,
    /// The primary's commit index, as last heard.
    primary_commit: u64,
}

/// What `escadm status --v` shows of the peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub connected: bool,
    pub phase: String,
    pub match_index: u64,
    pub in_sync: bool,
    pub lag_entries: u64,
}

/// What `escadm status --v` shows of replication.
#[derive(Debug, Clone, Serialize)]
pub struct ReplStatus {
    pub role: Role,
    pub mode: Mode,
    pub epoch: u64,
    pub last_index: u64,
    pub durable_index: u64,
    pub commit_index: u64,
    pub snapshot_index: u64,
    pub pending_writes: usize,
    /// Primary: the follower. Standby: the link to the primary.
    pub peer: PeerStatus,
    /// Standby: why `escadm ha promote` would be refused (none: safe).
    pub promotion_blocker: Option<String>,
}

/// The replication core of one node.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    role: Role,
    epoch: u64,
    log: LogView,
    durable_index: u64,
    commit_index: u64,
    /// A primary's group-commit `Persist` is outstanding.
    flushing: bool,
    queue: Vec<(Token, Vec<u8>)>,
    waiting: VecDeque<(u64, Token)>,
    peer: Option<Peer>,
    upstream: Option<Upstream>,
    /// A snapshot install is queued on the storage worker (for this
    /// connection): until it is done, the log view is about to be replaced,
    /// so no entry may be accepted against it.
    installing: Option<ConnId>,
    /// Whether this standby held every entry the primary had committed when
    /// it last heard it (None: it has not followed a primary since start).
    in_sync_at_loss: Option<bool>,
    now_ms: u64,
}

impl Core {
    /// A core over a log recovered from the store. Everything applied is
    /// committed; a primary also treats the rest of its own log as committed
    /// (it is the winner's log, architecture section 3).
    pub fn new(cfg: Config, role: Role, epoch: u64, log: LogView, applied_index: u64) -> Core {
        let durable_index = log.last_index;
        Core {
            cfg,
            role,
            epoch,
            log,
            durable_index,
            commit_index: applied_index,
            flushing: false,
            queue: Vec::new(),
            waiting: VecDeque::new(),
            peer: None,
            upstream: None,
            installing: None,
            in_sync_at_loss: None,
            now_ms: 0,
        }
    }

    /// Outputs to run once at start (a primary applies its whole log).
    pub fn start(&mut self, now_ms: u64) -> Vec<Output> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        if self.role == Role::Primary {
            self.advance_commit_to(self.durable_index, &mut out);
        }
        out
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn commit_index(&self) -> u64 {
        self.commit_index
    }

    pub fn log(&self) -> &LogView {
        &self.log
    }

    /// The one entry point.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        match input {
            Input::Tick => self.on_tick(&mut out),
            Input::Propose { token, payload } => {
                if self.role != Role::Primary {
                    out.push(Output::Refuse {
                        token,
                        refusal: Refusal::NotPrimary,
                    });
                } else {
                    self.queue.push((token, payload));
                    self.flush(&mut out);
                }
            }
            Input::Persisted { last_index } => self.on_persisted(last_index, &mut out),
            Input::PeerUp { conn } => self.on_peer_up(conn, &mut out),
            Input::PeerDown { conn } => self.on_peer_down(conn, &mut out),
            Input::Received { conn, msg } => self.on_message(conn, msg, &mut out),
            Input::SnapshotInstalled { index, index_epoch } => {
                self.on_snapshot_installed(index, index_epoch, &mut out)
            }
            Input::Promote { reason } => {
                if self.role != Role::Primary {
                    let epoch = self.epoch.max(self.log.last_epoch) + 1;
                    self.change_role(Role::Primary, epoch, reason, &mut out);
                }
            }
            Input::Demote { reason } => {
                if self.role != Role::Standby {
                    self.change_role(Role::Standby, self.epoch, reason, &mut out);
                }
            }
        }
        out
    }

    /// Every role or epoch change goes through here (style principle 3).
    fn change_role(&mut self, role: Role, epoch: u64, reason: String, out: &mut Vec<Output>) {
        let was = self.role;
        self.role = role;
        let epoch_changed = epoch != self.epoch;
        self.epoch = epoch;
        if was == Role::Primary && role == Role::Standby {
            // In-flight writes may or may not survive on the new primary.
            for (token, _) in self.queue.drain(..) {
                out.push(Output::Refuse {
                    token,
                    refusal: Refusal::Unknown,
                });
            }
            for (_, token) in self.waiting.drain(..) {
                out.push(Output::Refuse {
                    token,
                    refusal: Refusal::Unknown,
                });
            }
            if let Some(p) = self.peer.take() {
                out.push(Output::Disconnect {
                    conn: p.conn,
                    reason: "stepping down".into(),
                });
            }
        }
        if was == Role::Standby && role == Role::Primary {
            if let Some(u) = self.upstream.take() {
                out.push(Output::Disconnect {
                    conn: u.conn,
                    reason: "promoted".into(),
                });
            }
        }
        if epoch_changed {
            // The epoch must be durable before this node leads in it; a
            // primary's writes queue behind this Persist (architecture 3).
            out.push(Output::Persist {
                truncate_after: None,
                entries: Vec::new(),
                epoch: Some(epoch),
            });
            if role == Role::Primary {
                self.flushing = true;
            }
        }
        out.push(Output::RoleChanged {
            role,
            epoch,
            reason,
        });
        if role == Role::Primary && was == Role::Standby {
            // Everything in the winner's log is committed.
            self.advance_commit_to(self.log.last_index.min(self.durable_index), out);
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        let now = self.now_ms;
        let timeout = self.cfg.peer_timeout_ms;
        if let Some(p) = &self.peer {
            if now.saturating_sub(p.last_heard_ms) > timeout {
                let conn = p.conn;
                out.push(Output::Disconnect {
                    conn,
                    reason: format!("follower silent for more than {timeout} ms"),
                });
                self.on_peer_down(conn, out);
                return;
            }
        }
        if let Some(u) = &self.upstream {
            if now.saturating_sub(u.last_heard_ms) > timeout {
                out.push(Output::Disconnect {
                    conn: u.conn,
                    reason: format!("primary silent for more than {timeout} ms"),
                });
                self.lose_upstream();
                return;
            }
        }
        if self.role == Role::Primary {
            let hb = self.cfg.heartbeat_interval_ms;
            if let Some(p) = &self.peer {
                if p.phase == PeerPhase::Replicating
                    && p.catchup_to.is_none()
                    && now.saturating_sub(p.last_sent_ms) >= hb
                {
                    self.send_heartbeat(out);
                }
            }
        }
    }

    fn send_heartbeat(&mut self, out: &mut Vec<Output>) {
        if let Some(prev_index) = self.peer.as_ref().map(|p| p.match_index) {
            self.send_empty_append(prev_index, out);
        }
    }

    /// An `Append` without entries after `prev_index` (heartbeat or probe);
    /// false when that entry is no longer in the log.
    fn send_empty_append(&mut self, prev_index: u64, out: &mut Vec<Output>) -> bool {
        let Some(prev_epoch) = self.log.epoch_at(prev_index) else {
            return false;
        };
        let Some(p) = self.peer.as_mut() else {
            return true;
        };
        p.last_sent_ms = self.now_ms;
        out.push(Output::Send {
            conn: p.conn,
            msg: Message::Append {
                epoch: self.epoch,
                prev_index,
                prev_epoch,
                commit_index: self.commit_index,
                entries: Vec::new(),
            },
        });
        true
    }

    /// Group commit: every queued proposal shares one Persist (one fsync) and
    /// one replication frame; the next group forms while this one is on disk.
    fn flush(&mut self, out: &mut Vec<Output>) {
        if self.role != Role::Primary || self.flushing || self.queue.is_empty() {
            return;
        }
        // Bounded in count and bytes, so one group always fits one frame.
        let mut take = 0;
        let mut bytes = 0;
        for (_, p) in &self.queue {
            if take >= self.cfg.group_commit_entries_max
                || (take > 0 && bytes + p.len() > GROUP_BYTES_MAX)
            {
                break;
            }
            take += 1;
            bytes += p.len();
        }
        let batch: Vec<(Token, Vec<u8>)> = self.queue.drain(..take).collect();
        let prev_index = self.log.last_index;
        let prev_epoch = self.log.last_epoch;
        let first = prev_index + 1;
        let mut entries = Vec::with_capacity(batch.len());
        for (i, (token, payload)) in batch.into_iter().enumerate() {
            let index = first + i as u64;
            entries.push(Entry::new(self.epoch, index, payload));
            self.waiting.push_back((index, token));
        }
        let last = first + entries.len() as u64 - 1;
        self.log.append(self.epoch, first, last);
        self.flushing = true;
        // Pipelined: the follower writes while we write (protocol C needs
        // both durable, not one after the other).
        if let Some(p) = self.peer.as_mut() {
            if p.phase == PeerPhase::Replicating && p.catchup_to.is_none() && p.next_index == first
            {
                p.next_index = last + 1;
                p.last_sent_ms = self.now_ms;
                out.push(Output::Send {
                    conn: p.conn,
                    msg: Message::Append {
                        epoch: self.epoch,
                        prev_index,
                        prev_epoch,
                        commit_index: self.commit_index,
                        entries: entries.clone(),
                    },
                });
            }
        }
        out.push(Output::Persist {
            truncate_after: None,
            entries,
            epoch: None,
        });
    }

    fn on_persisted(&mut self, last_index: u64, out: &mut Vec<Output>) {
        self.durable_index = self.durable_index.max(last_index).min(self.log.last_index);
        match self.role {
            Role::Primary => {
                self.flushing = false;
                self.advance_commit(out);
                self.catch_up(out);
                self.flush(out);
            }
            Role::Standby => {
                let Some(u) = self.upstream.as_mut() else {
                    return;
                };
                if let Some(ack) = u.ack_after_persist {
                    if self.durable_index >= ack {
                        u.ack_after_persist = None;
                        out.push(Output::Send {
                            conn: u.conn,
                            msg: Message::AppendOk {
                                epoch: self.epoch,
                                match_index: ack,
                            },
                        });
                    }
                }
            }
        }
    }

    /// The primary's commit rule (architecture section 3).
    fn advance_commit(&mut self, out: &mut Vec<Output>) {
        let durable = self.durable_index;
        let target = match &self.peer {
            Some(p) if p.in_sync => match self.cfg.mode {
                Mode::Sync => durable.min(p.match_index),
                // Commit locally, at most `async_lag_entries_max` ahead of the follower.
                Mode::Async => durable.min(p.match_index + self.cfg.async_lag_entries_max),
            },
            // No follower in sync: the primary commits alone (degraded; the
            // standby is outdated and `escadm status` says so).
            _ => durable,
        };
        self.advance_commit_to(target, out);
    }

    fn advance_commit_to(&mut self, target: u64, out: &mut Vec<Output>) {
        if target <= self.commit_index {
            return;
        }
        self.commit_index = target;
        let mut replies = Vec::new();
        while let Some(&(index, token)) = self.waiting.front() {
            if index > target {
                break;
            }
            replies.push((index, token));
            self.waiting.pop_front();
        }
        out.push(Output::Apply {
            up_to: target,
            replies,
        });
        if let Some(p) = self.peer.as_mut() {
            if !p.in_sync && p.phase == PeerPhase::Replicating && p.match_index >= target {
                p.in_sync = true;
            }
        }
        self.maybe_compact(out);
    }

    fn maybe_compact(&mut self, out: &mut Vec<Output>) {
        let applied = self.commit_index;
        if applied.saturating_sub(self.log.snapshot_index) < self.cfg.snapshot_every_entries {
            return;
        }
        let up_to = applied - self.cfg.log_retain_entries;
        if up_to > self.log.snapshot_index {
            self.log.compact(up_to);
            out.push(Output::Compact { up_to });
        }
    }

    fn on_peer_up(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        match self.role {
            Role::Primary => {
                if let Some(old) = self.peer.take() {
                    out.push(Output::Disconnect {
                        conn: old.conn,
                        reason: "replaced by a new follower connection".into(),
                    });
                }
                self.peer = Some(Peer {
                    conn,
                    phase: PeerPhase::AwaitStatus,
                    match_index: 0,
                    next_index: self.log.last_index + 1,
                    catchup_to: None,
                    in_sync: false,
                    last_heard_ms: self.now_ms,
                    last_sent_ms: self.now_ms,
                });
            }
            Role::Standby => {
                if let Some(old) = self.upstream.take() {
                    out.push(Output::Disconnect {
                        conn: old.conn,
                        reason: "replaced by a new primary connection".into(),
                    });
                }
                self.upstream = Some(Upstream {
                    conn,
                    last_heard_ms: self.now_ms,
                    matched_index: 0,
                    ack_after_persist: None,
                    snapshot: None,
                    diverged: false,
                    primary_commit: 0,
                });
                out.push(Output::Send {
                    conn,
                    msg: Message::Status {
                        epoch: self.epoch,
                        last_index: self.log.last_index,
                        last_epoch: self.log.last_epoch,
                        applied_index: self.commit_index,
                    },
                });
            }
        }
    }

    fn on_peer_down(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        if self.peer.as_ref().is_some_and(|p| p.conn == conn) {
            self.peer = None;
            // Writes that waited for the follower commit alone now.
            self.advance_commit(out);
        }
        if self.upstream.as_ref().is_some_and(|u| u.conn == conn) {
            self.lose_upstream();
        }
    }

    /// The link to the primary is gone: remember whether we were in sync.
    fn lose_upstream(&mut self) {
        if let Some(u) = self.upstream.take() {
            self.in_sync_at_loss = Some(self.upstream_in_sync(&u));
        }
    }

    fn upstream_in_sync(&self, u: &Upstream) -> bool {
        u.matched_index >= u.primary_commit && self.durable_index >= u.primary_commit
    }

    /// Why promoting this node now could lose acknowledged writes or make a
    /// second primary; `None` when it is safe (architecture section 2:
    /// "a standby promotes only if its copy was in sync").
    pub fn promotion_blocker(&self) -> Option<String> {
        if self.role == Role::Primary {
            return None;
        }
        if let Some(u) = &self.upstream {
            return Some(format!(
                "the primary is still connected (commit index {}): demote it first",
                u.primary_commit
            ));
        }
        match self.in_sync_at_loss {
            Some(true) => None,
            Some(false) => Some(
                "this node was behind the primary when the link was lost: it may miss acknowledged writes"
                    .into(),
            ),
            None => Some(
                "this node has not followed a primary since it started: its copy may be outdated"
                    .into(),
            ),
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: Message, out: &mut Vec<Output>) {
        let sender_epoch = match &msg {
            Message::Status { epoch, .. }
            | Message::Append { epoch, .. }
            | Message::AppendOk { epoch, .. }
            | Message::AppendReject { epoch, .. }
            | Message::NeedSnapshot { epoch }
            | Message::SnapshotBegin { epoch, .. }
            | Message::SnapshotEnd { epoch, .. }
            | Message::StaleEpoch { epoch } => Some(*epoch),
            _ => None,
        };
        // A node never accepts leadership or entries from a lower epoch and
        // steps down when it meets a higher one (architecture section 3).
        if let Some(e) = sender_epoch {
            if e > self.epoch {
                if self.role == Role::Primary {
                    self.change_role(
                        Role::Standby,
                        e,
                        format!("peer has higher epoch {e} (ours {})", self.epoch),
                        out,
                    );
                    out.push(Output::Disconnect {
                        conn,
                        reason: "higher epoch seen; rejoining as standby".into(),
                    });
                    return;
                }
                self.change_role(Role::Standby, e, format!("primary is in epoch {e}"), out);
            } else if e < self.epoch
                && matches!(
                    msg,
                    Message::Append { .. }
                        | Message::SnapshotBegin { .. }
                        | Message::SnapshotEnd { .. }
                )
            {
                // Leadership from a lower epoch is refused, and told so.
                out.push(Output::Send {
                    conn,
                    msg: Message::StaleEpoch { epoch: self.epoch },
                });
                out.push(Output::Disconnect {
                    conn,
                    reason: format!("peer's epoch {e} is below ours ({})", self.epoch),
                });
                return;
            }
        }
        match self.role {
            Role::Primary => self.primary_receive(conn, msg, out),
            Role::Standby => self.standby_receive(conn, msg, out),
        }
    }

    // ----- primary side -------------------------------------------------

    fn primary_receive(&mut self, conn: ConnId, msg: Message, out: &mut Vec<Output>) {
        let now = self.now_ms;
        let Some(p) = self.peer.as_mut().filter(|p| p.conn == conn) else {
            return;
        };
        p.last_heard_ms = now;
        match msg {
            Message::Status {
                last_index,
                last_epoch,
                ..
            } => {
                // A Status (re)starts the search, whatever the phase.
                p.catchup_to = None;
                p.in_sync = false;
                p.match_index = 0;
                // Start the search where the follower's log ends (or ours).
                if last_index <= self.log.last_index
                    && self.log.epoch_at(last_index) == Some(last_epoch)
                {
                    p.match_index = last_index;
                    p.next_index = last_index + 1;
                    p.phase = PeerPhase::Replicating;
                    // Holding every committed entry makes it in sync now, not
                    // at its first acknowledgement.
                    p.in_sync = last_index >= self.commit_index;
                    self.catch_up(out);
                    self.advance_commit(out);
                } else {
                    p.next_index = last_index.min(self.log.last_index) + 1;
                    p.phase = PeerPhase::Probing;
                    self.probe(out);
                }
            }
            Message::AppendOk { match_index, .. } => {
                if match_index > self.log.last_index {
                    return; // cannot match what we never wrote: ignore
                }
                p.match_index = p.match_index.max(match_index);
                if p.catchup_to.take().is_some() {
                    // The runtime may have sent fewer entries than asked
                    // (byte bound): continue right after what arrived.
                    p.next_index = p.match_index + 1;
                }
                if matches!(p.phase, PeerPhase::Probing | PeerPhase::Snapshotting) {
                    p.phase = PeerPhase::Replicating;
                    p.next_index = p.match_index + 1;
                    p.catchup_to = None;
                }
                self.catch_up(out);
                self.advance_commit(out);
                if let Some(p) = self.peer.as_mut() {
                    if !p.in_sync
                        && p.phase == PeerPhase::Replicating
                        && p.match_index >= self.commit_index
                    {
                        p.in_sync = true;
                    }
                }
            }
            Message::AppendReject {
                last_index,
                conflict_index,
                ..
            } => {
                let next = conflict_index
                    .min(last_index + 1)
                    .min(p.next_index.saturating_sub(1))
                    .max(1);
                p.next_index = next;
                p.phase = PeerPhase::Probing;
                p.catchup_to = None;
                p.in_sync = false;
                self.probe(out);
            }
            Message::NeedSnapshot { .. } => self.start_snapshot(out),
            _ => {}
        }
    }

    /// Sends an empty `Append` at `next_index - 1` to test for a match, or a
    /// snapshot when that entry is no longer in the log.
    fn probe(&mut self, out: &mut Vec<Output>) {
        let Some(prev_index) = self.peer.as_ref().map(|p| p.next_index - 1) else {
            return;
        };
        if !self.send_empty_append(prev_index, out) {
            self.start_snapshot(out);
        }
    }

    fn start_snapshot(&mut self, out: &mut Vec<Output>) {
        let Some(p) = self.peer.as_mut() else { return };
        if p.phase == PeerPhase::Snapshotting {
            return;
        }
        p.phase = PeerPhase::Snapshotting;
        p.catchup_to = None;
        p.in_sync = false;
        p.last_sent_ms = self.now_ms;
        out.push(Output::SendSnapshot {
            conn: p.conn,
            epoch: self.epoch,
        });
    }

    /// Ships durable entries the follower lacks, one bounded batch in flight.
    fn catch_up(&mut self, out: &mut Vec<Output>) {
        let Some(p) = self.peer.as_mut() else { return };
        if p.phase != PeerPhase::Replicating || p.catchup_to.is_some() {
            return;
        }
        if p.next_index > self.durable_index {
            return;
        }
        if p.next_index < self.log.first_index() {
            self.start_snapshot(out);
            return;
        }
        let from = p.next_index;
        let to = self
            .durable_index
            .min(from + self.cfg.batch_entries_max as u64 - 1);
        let prev_index = from - 1;
        let Some(prev_epoch) = self.log.epoch_at(prev_index) else {
            self.start_snapshot(out);
            return;
        };
        p.catchup_to = Some(to);
        p.next_index = to + 1;
        p.last_sent_ms = self.now_ms;
        out.push(Output::SendEntries {
            conn: p.conn,
            epoch: self.epoch,
            prev_index,
            prev_epoch,
            commit_index: self.commit_index,
            from,
            to,
        });
    }

    // ----- standby side -------------------------------------------------

    fn standby_receive(&mut self, conn: ConnId, msg: Message, out: &mut Vec<Output>) {
        let now = self.now_ms;
        let installing = self.installing.is_some();
        let Some(u) = self.upstream.as_mut().filter(|u| u.conn == conn) else {
            return;
        };
        u.last_heard_ms = now;
        if installing {
            // Dropped: after the install we send our new position and the
            // primary resends from there.
            return;
        }
        match msg {
            Message::Append {
                prev_index,
                prev_epoch,
                commit_index,
                entries,
                ..
            } => {
                u.primary_commit = u.primary_commit.max(commit_index);
                self.standby_append(conn, prev_index, prev_epoch, commit_index, entries, out)
            }
            Message::SnapshotBegin {
                index, index_epoch, ..
            } => {
                u.snapshot = Some((index, index_epoch));
            }
            Message::SnapshotEnd { index, .. } => {
                let Some((snap_index, index_epoch)) = u.snapshot.take() else {
                    return;
                };
                if snap_index != index {
                    out.push(Output::Disconnect {
                        conn,
                        reason: format!(
                            "snapshot end {index} does not match its begin {snap_index}"
                        ),
                    });
                    return;
                }
                if !u.diverged && index <= self.commit_index {
                    // Our applied state already covers the snapshot and came
                    // from this primary's history: keep it (never go back).
                    u.matched_index = u.matched_index.max(index);
                    out.push(Output::Send {
                        conn,
                        msg: Message::AppendOk {
                            epoch: self.epoch,
                            match_index: index,
                        },
                    });
                    return;
                }
                // Entries we hold beyond what is known to match may diverge:
                // keep them in the recovery file, never drop them silently.
                let keep = u.matched_index.max(self.commit_index);
                if self.log.last_index > keep {
                    out.push(Output::SaveRecovery { from: keep + 1 });
                }
                self.installing = Some(conn);
                out.push(Output::InstallSnapshot {
                    conn,
                    index,
                    index_epoch,
                });
            }
            _ => {}
        }
    }

    fn standby_append(
        &mut self,
        conn: ConnId,
        prev_index: u64,
        prev_epoch: u64,
        leader_commit: u64,
        entries: Vec<Entry>,
        out: &mut Vec<Output>,
    ) {
        let reject = |log: &LogView, conflict_index: u64| Output::Send {
            conn,
            msg: Message::AppendReject {
                epoch: 0,
                last_index: log.last_index,
                conflict_index,
            },
        };
        let epoch = self.epoch;
        let with_epoch = |mut o: Output| {
            if let Output::Send {
                msg: Message::AppendReject { epoch: e, .. },
                ..
            } = &mut o
            {
                *e = epoch;
            }
            o
        };
        if prev_index > self.log.last_index {
            out.push(with_epoch(reject(&self.log, self.log.last_index + 1)));
            return;
        }
        if prev_index < self.log.snapshot_index {
            out.push(with_epoch(reject(&self.log, self.log.snapshot_index + 1)));
            return;
        }
        if self.log.epoch_at(prev_index) != Some(prev_epoch) {
            let conflict = self.log.epoch_start(prev_index);
            if conflict <= self.commit_index {
                // Divergence inside what we applied: only a snapshot repairs it.
                if let Some(u) = self.upstream.as_mut() {
                    u.diverged = true;
                }
                out.push(Output::Send {
                    conn,
                    msg: Message::NeedSnapshot { epoch },
                });
            } else {
                out.push(with_epoch(reject(&self.log, conflict)));
            }
            return;
        }
        // prev matches. Skip entries we already hold; cut at the first conflict.
        let mut truncate_after = None;
        let mut fresh = Vec::new();
        for e in entries {
            if e.verify().is_err() || e.epoch > self.epoch {
                out.push(Output::Disconnect {
                    conn,
                    reason: format!("entry {} failed validation", e.index),
                });
                return;
            }
            if !fresh.is_empty() || e.index > self.log.last_index {
                fresh.push(e);
                continue;
            }
            if self.log.epoch_at(e.index) == Some(e.epoch) {
                continue;
            }
            if e.index <= self.commit_index {
                if let Some(u) = self.upstream.as_mut() {
                    u.diverged = true;
                }
                out.push(Output::Send {
                    conn,
                    msg: Message::NeedSnapshot { epoch },
                });
                return;
            }
            truncate_after = Some(e.index - 1);
            self.log.truncate_after(e.index - 1);
            self.durable_index = self.durable_index.min(e.index - 1);
            fresh.push(e);
        }
        let matched = fresh.last().map(|e| e.index).unwrap_or(prev_index);
        // Contiguity of what the primary sent.
        for (i, e) in fresh.iter().enumerate() {
            let want = fresh[0].index + i as u64;
            if e.index != want || (i == 0 && e.index != self.log.last_index + 1) {
                out.push(Output::Disconnect {
                    conn,
                    reason: "non-contiguous entries".into(),
                });
                return;
            }
        }
        for e in &fresh {
            if e.epoch < self.log.last_epoch {
                out.push(Output::Disconnect {
                    conn,
                    reason: format!("entry {} goes back to epoch {}", e.index, e.epoch),
                });
                return;
            }
        }
        for e in &fresh {
            self.log.append(e.epoch, e.index, e.index);
        }
        let u = self.upstream.as_mut().expect("checked by caller");
        u.matched_index = u.matched_index.max(matched);
        if truncate_after.is_some() || !fresh.is_empty() {
            u.ack_after_persist = Some(matched);
            out.push(Output::Persist {
                truncate_after,
                entries: fresh,
                epoch: None,
            });
        } else if self.durable_index >= matched {
            out.push(Output::Send {
                conn,
                msg: Message::AppendOk {
                    epoch,
                    match_index: matched,
                },
            });
        } else {
            u.ack_after_persist = Some(matched);
        }
        let commit = leader_commit.min(u.matched_index);
        if commit > self.commit_index {
            self.commit_index = commit;
            out.push(Output::Apply {
                up_to: commit,
                replies: Vec::new(),
            });
            self.maybe_compact(out);
        }
    }

    fn on_snapshot_installed(&mut self, index: u64, index_epoch: u64, out: &mut Vec<Output>) {
        self.log = LogView {
            snapshot_index: index,
            snapshot_epoch: index_epoch,
            last_index: index,
            last_epoch: index_epoch,
            epochs: Vec::new(),
        };
        self.durable_index = index;
        self.commit_index = index;
        let for_conn = self.installing.take();
        let (epoch, applied) = (self.epoch, self.commit_index);
        if let Some(u) = self.upstream.as_mut() {
            u.ack_after_persist = None;
            u.diverged = false;
            if Some(u.conn) == for_conn {
                u.matched_index = index;
                out.push(Output::Send {
                    conn: u.conn,
                    msg: Message::AppendOk {
                        epoch,
                        match_index: index,
                    },
                });
            } else {
                // The link changed during the install: start over from our
                // new position.
                u.matched_index = 0;
                out.push(Output::Send {
                    conn: u.conn,
                    msg: Message::Status {
                        epoch,
                        last_index: index,
                        last_epoch: index_epoch,
                        applied_index: applied,
                    },
                });
            }
        }
    }

    /// What `escadm status --v` shows.
    pub fn status(&self) -> ReplStatus {
        let peer = match (&self.peer, &self.upstream) {
            (Some(p), _) => PeerStatus {
                connected: true,
                phase: format!("{:?}", p.phase).to_lowercase(),
                match_index: p.match_index,
                in_sync: p.in_sync,
                lag_entries: self.durable_index.saturating_sub(p.match_index),
            },
            (None, Some(u)) => PeerStatus {
                connected: true,
                phase: if u.snapshot.is_some() {
                    "receiving_snapshot".into()
                } else {
                    "following".into()
                },
                match_index: u.matched_index,
                in_sync: u.matched_index >= self.log.last_index,
                lag_entries: 0,
            },
            (None, None) => PeerStatus {
                connected: false,
                phase: "disconnected".into(),
                match_index: 0,
                in_sync: false,
                lag_entries: 0,
            },
        };
        ReplStatus {
            role: self.role,
            mode: self.cfg.mode,
            epoch: self.epoch,
            last_index: self.log.last_index,
            durable_index: self.durable_index,
            commit_index: self.commit_index,
            snapshot_index: self.log.snapshot_index,
            pending_writes: self.queue.len() + self.waiting.len(),
            peer,
            promotion_blocker: self.promotion_blocker(),
        }
    }
}
