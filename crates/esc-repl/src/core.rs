//! The replication state machine. One `handle(now_ms, input)` entry point;
//! one function, [`Core::change_role`], performs every role transition.

use crate::log::LogView;
use esc_wire::{Entry, Message};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Most payload bytes in one group commit (and so in one inline `Append`),
/// well under the frame bound `esc_wire::MAX_BODY_BYTES`.
pub const GROUP_BYTES_MAX: usize = 8 << 20;

/// Why a promotion is impossible once the epoch counter is at its maximum.
const EPOCH_EXHAUSTED: &str =
    "the epoch counter is exhausted: no new epoch can be started, so this node cannot lead";

/// Identifies a client proposal; the runtime maps it to a responder.
pub type Token = u64;
/// Identifies one authenticated connection, chosen by the runtime.
pub type ConnId = u64;

/// Replication mode (architecture section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A write commits once durable on both nodes (DRBD protocol C).
    Sync,
    /// A write commits once durable locally; the standby may lag a bounded amount.
    Async,
}

/// The replication role of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

/// Tuning, validated by `esc-config`. Serde so a trace's header can carry
/// it ([`crate::trace`]); strict, so a trace from a core with other knobs
/// is refused rather than replayed with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    pub async_lag_entries_max: u64,
    pub heartbeat_interval_ms: u64,
    pub peer_timeout_ms: u64,
    pub batch_entries_max: usize,
    pub group_commit_entries_max: usize,
    pub snapshot_every_entries: u64,
    pub log_retain_entries: u64,
    /// Two-node fencing by time (architecture section 4, see
    /// `docs/architecture.md`): a primary commits without its follower only
    /// once it has sent the follower nothing for this long, ...
    pub alone_grace_ms: u64,
    /// ... and a standby counts as in sync only within this long of the
    /// last `Append` that found it holding the primary's commit point.
    /// `alone_grace_ms` must exceed it by the largest network delay; then a
    /// standby that promotes in time cannot miss a write its dead primary
    /// committed alone. `u64::MAX` and 0: no time bound (witness mode, where
    /// the witness's outdated mark fences, or manual promotion).
    pub in_sync_window_ms: u64,
    /// `(modulus, residue)`: this node's own promotions use epochs with
    /// this residue (two-node mode; None when a witness grants epochs).
    pub epoch_slot: Option<(u64, u64)>,
}

/// Why a proposal got no commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// This node is not primary; nothing was written.
    NotPrimary,
    /// The node stopped being primary while the write was in flight; it may
    /// or may not have committed (a resend with the same idempotency key is safe).
    Unknown,
}

/// Everything the core reacts to. Serde (style principle 2): a JSON-lines
/// trace of inputs replays to the same outputs ([`crate::trace`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A message from an authenticated peer. Every message from the primary
    /// counts as liveness, `SnapshotChunk` included: a runtime that keeps the
    /// chunk items itself still passes the message on (items may be emptied),
    /// or a snapshot longer than `peer_timeout_ms` times out.
    Received { conn: ConnId, msg: Message },
    /// The storage worker installed the snapshot; the log now starts after it.
    SnapshotInstalled { index: u64, index_epoch: u64 },
    /// Operator: become primary (bumps the epoch).
    Promote { reason: String },
    /// The role authority (two-node mode): become primary only if
    /// `promotion_blocker` still says it is safe now; otherwise refuse
    /// (counted in `promotions_refused`). The authority decided on a view
    /// that may be a moment old; this is the check at the moment it acts.
    PromoteIfSafe { reason: String },
    /// Operator: become standby.
    Demote { reason: String },
    /// The role authority: become primary in exactly this epoch (the
    /// witness's grant); refused unless it is above ours.
    PromoteInEpoch { epoch: u64, reason: String },
    /// The role authority (witness mode): may the primary commit without an
    /// in-sync follower? Only once the witness marked the standby outdated
    /// (architecture section 4). Two-node mode leaves it on.
    CommitAlone { on: bool, seq: u64 },
    /// The role authority (switchover): tell the in-sync follower to take
    /// over; it holds every entry. The authority demotes this node next.
    Handover,
    /// A standby peer's durable log end, learnt at cold start; on equal
    /// logs one side must win, decided by the runtime (node names).
    PeerPosition {
        last_epoch: u64,
        last_index: u64,
        tie_goes_to_peer: bool,
    },
}

/// Everything the core asks the runtime to do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Durably: cut entries after `truncate_after` (to the recovery file),
    /// append `entries`, record `epoch`. Answer with `Persisted`, in order;
    /// one answer may cover several, but a `Persist` with `truncate_after`
    /// is not answered together with an earlier one (an old log and the new
    /// one may end at the same index, see `Core::on_persisted`).
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
    /// The role or epoch changed (log it; dial or accept accordingly). Also
    /// emitted, with the role and epoch unchanged, when a promotion is
    /// refused, so the reason is logged.
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
    /// The primary's commit index, as carried by the `Append`s heard on this
    /// link; None until one arrived. Never assumed 0: a standby that has
    /// heard nothing of the primary's commit cannot claim to hold it all.
    primary_commit: Option<u64>,
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
    /// The primary may commit without an in-sync follower.
    commit_alone: bool,
    /// What `commit_alone` starts as whenever this node becomes primary.
    commit_alone_default: bool,
    /// The sequence number of the last `CommitAlone` command, echoed to the
    /// authority so it knows the view reflects its last command.
    commit_alone_seq: u64,
    /// Standby: the primary handed over to us (switchover) and we held
    /// everything it had; cleared by promotion or a new primary link.
    handover: bool,
    /// When this node, as primary, handed over to its follower.
    handed_away_ms: Option<u64>,
    /// `PromoteIfSafe` inputs refused (for the authority's view).
    promotions_refused: u64,
    /// When the standby peer's position was learnt.
    peer_position_ms: Option<u64>,
    /// Primary: the end of its log when it took over. Every entry up to
    /// it may have been committed (and acknowledged) in an earlier term even
    /// if this node's commit index, recovered from what it had applied,
    /// is lower: a follower is in sync only once it holds them all.
    sync_floor: u64,
    /// Primary: when it last sent the follower an `Append`, entries or a
    /// snapshot (any of which may let it believe it is in sync).
    last_follower_send_ms: Option<u64>,
    /// Standby: when an `Append` last found it holding the primary's commit.
    last_in_sync_ms: Option<u64>,
    /// Where a standby peer's durable log ended when we last traded
    /// positions `(last_epoch, last_index)` (cold start, both standby),
    /// and whether it wins on equal logs.
    peer_position: Option<((u64, u64), bool)>,
    /// `Persist`s emitted and not yet answered, oldest first.
    persisting: VecDeque<Persisting>,
    now_ms: u64,
}

/// One `Persist` the storage worker has not answered yet.
#[derive(Debug, Clone, Copy)]
struct Persisting {
    /// Where the log on disk ends once it is done.
    last_index: u64,
    /// It cuts the log after this index.
    cut: Option<u64>,
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
            commit_alone: true,
            commit_alone_default: true,
            commit_alone_seq: 0,
            handover: false,
            peer_position: None,
            last_follower_send_ms: None,
            last_in_sync_ms: None,
            sync_floor: 0,
            peer_position_ms: None,
            promotions_refused: 0,
            handed_away_ms: None,
            persisting: VecDeque::new(),
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
        let mut out = self.handle_inner(now_ms, input);
        self.note_follower_sends(&mut out);
        out
    }

    /// Records when the primary last told its follower anything that may
    /// make it believe it is in sync (the two-node fence by time).
    fn note_follower_sends(&mut self, out: &mut [Output]) {
        if self.role != Role::Primary {
            return;
        }
        let sent = out.iter().any(|o| {
            matches!(
                o,
                Output::Send {
                    msg: Message::Append { .. },
                    ..
                } | Output::SendEntries { .. }
                    | Output::SendSnapshot { .. }
            )
        });
        if sent {
            self.last_follower_send_ms = Some(self.now_ms);
        }
    }

    fn handle_inner(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
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
                    match self.next_epoch() {
                        Some(epoch) => self.change_role(Role::Primary, epoch, reason, &mut out),
                        // Reusing the last epoch would let two nodes lead in
                        // one epoch (architecture section 3): refuse, and say
                        // why through the role-change log.
                        None => out.push(Output::RoleChanged {
                            role: self.role,
                            epoch: self.epoch,
                            reason: format!("promotion refused ({reason}): {EPOCH_EXHAUSTED}"),
                        }),
                    }
                }
            }
            Input::PromoteIfSafe { reason } => {
                if self.role != Role::Primary {
                    match self.promotion_blocker() {
                        None => return self.handle_inner(now_ms, Input::Promote { reason }),
                        Some(why) => {
                            self.promotions_refused += 1;
                            out.push(Output::RoleChanged {
                                role: self.role,
                                epoch: self.epoch,
                                reason: format!("promotion refused ({reason}): {why}"),
                            });
                        }
                    }
                }
            }
            Input::Demote { reason } => {
                if self.role != Role::Standby {
                    self.change_role(Role::Standby, self.epoch, reason, &mut out);
                }
            }
            Input::PromoteInEpoch { epoch, reason } => {
                if self.role != Role::Primary {
                    if epoch > self.epoch.max(self.log.last_epoch) {
                        self.change_role(Role::Primary, epoch, reason, &mut out);
                    } else {
                        out.push(Output::RoleChanged {
                            role: self.role,
                            epoch: self.epoch,
                            reason: format!(
                                "promotion refused ({reason}): epoch {epoch} is not above ours ({})",
                                self.epoch.max(self.log.last_epoch)
                            ),
                        });
                    }
                }
            }
            Input::CommitAlone { on, seq } => {
                self.commit_alone = on;
                self.commit_alone_seq = seq;
                if on && self.role == Role::Primary {
                    self.advance_commit(&mut out);
                }
            }
            Input::PeerPosition {
                last_epoch,
                last_index,
                tie_goes_to_peer,
            } => {
                // The peer is alive and standby too: whatever we knew from
                // a lost link is moot; the fresher log leads (cold start,
                // architecture section 4), so at most one of us is eligible.
                self.peer_position = Some(((last_epoch, last_index), tie_goes_to_peer));
                // A recent handover stands: the peer handed its role to us.
                if self.upstream.is_none() && !(self.handover && self.in_sync_recent()) {
                    self.in_sync_at_loss = None;
                    self.last_in_sync_ms = None;
                    self.handover = false;
                }
                // Both sides may now judge eligibility from this exchange for
                // `in_sync_window_ms`: like a send to a follower, it holds
                // off commits without the peer for `alone_grace_ms`, should
                // this node become primary meanwhile (two-node fence).
                self.peer_position_ms = Some(self.now_ms);
                self.last_follower_send_ms = Some(self.now_ms);
            }
            Input::Handover => {
                if let Some(p) = self.peer.as_ref().filter(|_| self.role == Role::Primary) {
                    // Having handed over, this node must not take the role
                    // back on its own right away (the peer takes it).
                    self.handed_away_ms = Some(self.now_ms);
                    out.push(Output::Send {
                        conn: p.conn,
                        msg: Message::Handover {
                            epoch: self.epoch,
                            last_index: self.durable_index,
                        },
                    });
                }
            }
        }
        out
    }

    /// Whether the core may commit without its follower (for the authority).
    pub fn commit_alone(&self) -> bool {
        self.commit_alone
    }

    /// How many `PromoteIfSafe` inputs were refused.
    pub fn promotions_refused(&self) -> u64 {
        self.promotions_refused
    }

    /// The sequence number of the last `CommitAlone` command carried out.
    pub fn commit_alone_seq(&self) -> u64 {
        self.commit_alone_seq
    }

    /// Start-up value of the commit-alone gate: off in witness mode until
    /// the witness marked the standby outdated.
    pub fn set_commit_alone(&mut self, on: bool) {
        self.commit_alone = on;
        self.commit_alone_default = on;
    }

    /// Primary: a follower is connected. Standby: the link to the primary
    /// carries its `Append`s.
    pub fn linked(&self) -> bool {
        match self.role {
            Role::Primary => self.peer.is_some(),
            // Only a link that carries the primary's `Append`s: a primary
            // whose service hangs still completes a redialled handshake (its
            // network task answers, its core does not), and that must not
            // count as hearing it, or takeover waits another timeout.
            Role::Standby => self
                .upstream
                .as_ref()
                .is_some_and(|u| u.primary_commit.is_some()),
        }
    }

    /// Primary: the follower is in sync. Standby: promoting now would lose
    /// no acknowledged write (in sync with the linked primary, or was in
    /// sync when the link was lost).
    pub fn in_sync(&self) -> bool {
        match self.role {
            Role::Primary => self.peer.as_ref().is_some_and(|p| p.in_sync),
            Role::Standby => match self
                .upstream
                .as_ref()
                .map(|u| (u, self.upstream_in_sync(u)))
            {
                Some((_, Some(held))) => held,
                // A link that has carried no Append yet (just connected, or
                // a standby peer trading positions) changes nothing.
                _ => self.blocker_without_link().is_none(),
            },
        }
    }

    /// Primary: nothing pending and the follower holds every durable entry
    /// (a switchover may hand over).
    pub fn drained(&self) -> bool {
        self.role == Role::Primary
            && self.queue.is_empty()
            && self.waiting.is_empty()
            && !self.flushing
            && self.commit_index == self.durable_index
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.in_sync && p.match_index >= self.durable_index)
    }

    /// Standby: the primary handed over and this node holds everything.
    pub fn handed_over(&self) -> bool {
        self.role == Role::Standby && self.handover
    }

    /// The durable end of the log: `(epoch, index)`.
    pub fn durable_position(&self) -> (u64, u64) {
        let idx = self.durable_index;
        (self.log.epoch_at(idx).unwrap_or(self.log.last_epoch), idx)
    }

    /// The epoch a promotion would lead in; None when the counter is exhausted.
    fn next_epoch(&self) -> Option<u64> {
        let base = self.epoch.max(self.log.last_epoch).checked_add(1)?;
        // Two-node mode has no one to hand out epochs: each node takes its
        // own residue class (architecture section 3: an epoch has a single
        // leader), so two nodes promoting on their own can never both lead
        // in one epoch and write different entries under it.
        match self.cfg.epoch_slot {
            Some((m, r)) if m > 1 => {
                let add = (r % m + m - base % m) % m;
                base.checked_add(add)
            }
            _ => Some(base),
        }
    }

    /// Every role or epoch change goes through here (style principle 3).
    fn change_role(&mut self, role: Role, epoch: u64, reason: String, out: &mut Vec<Output>) {
        let was = self.role;
        self.role = role;
        self.handover = false;
        if role != was {
            // A new term starts gated as configured (witness mode: closed).
            self.commit_alone = self.commit_alone_default;
        }
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
            self.persist(None, Vec::new(), Some(epoch), out);
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
            self.sync_floor = self.log.last_index;
            // The winner's log is committed under the commit rule like any
            // new write: at once where it may commit alone (two-node mode,
            // or witness mode once the standby is marked outdated), else
            // when the follower holds it. Committing it unconditionally
            // would commit entries the other node lacks without fencing it.
            self.advance_commit(out);
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        if self.role == Role::Primary && self.cfg.alone_grace_ms > 0 {
            // The grace may have run out: commit alone what waits.
            self.advance_commit(out);
        }
        let now = self.now_ms;
        let timeout = self.cfg.peer_timeout_ms;
        if let Some(p) = &self.peer {
            // A follower receiving a snapshot is silent by design until it
            // has received and installed all of it, which may take longer
            // than the timeout; the core does not see when the runtime has
            // finished streaming, so that phase is never timed out. A broken
            // connection still ends it (`PeerDown`), a new connection from
            // the follower replaces it, and no commit waits for it meanwhile
            // (it is not in sync).
            if p.phase != PeerPhase::Snapshotting && now.saturating_sub(p.last_heard_ms) > timeout {
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
            // While our snapshot install runs the primary waits for our
            // answer and sends nothing: that silence is ours, not its. (The
            // snapshot stream itself is liveness: every message refreshes
            // `last_heard_ms`, chunks included, see `Input::Received`.)
            if self.installing.is_none() && now.saturating_sub(u.last_heard_ms) > timeout {
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
                commit_index: self.sync_point(),
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
                        commit_index: self.sync_point(),
                        entries: entries.clone(),
                    },
                });
            }
        }
        self.persist(None, entries, None, out);
    }

    /// Emits a `Persist` whose effect the log view already shows.
    fn persist(
        &mut self,
        truncate_after: Option<u64>,
        entries: Vec<Entry>,
        epoch: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        self.persisting.push_back(Persisting {
            last_index: self.log.last_index,
            cut: truncate_after,
        });
        out.push(Output::Persist {
            truncate_after,
            entries,
            epoch,
        });
    }

    fn on_persisted(&mut self, last_index: u64, out: &mut Vec<Output>) {
        // Which `Persist`s this answer covers: they are answered in order,
        // one answer possibly for several, with where the log on disk ends.
        // After a cut an old log and the new one may end at the same index,
        // so assume the fewest: up to the first pending one that ends there
        // (none matching: assume none is done).
        if let Some(i) = self
            .persisting
            .iter()
            .position(|p| p.last_index == last_index)
        {
            self.persisting.drain(..=i);
        }
        // Until a cut is done, the disk still holds the entries it removes:
        // beyond it, the answer speaks of the old log, not of ours. Taking it
        // as ours would acknowledge entries a crash would lose (section 3).
        let cut = self
            .persisting
            .iter()
            .filter_map(|p| p.cut)
            .min()
            .unwrap_or(u64::MAX);
        self.durable_index = self
            .durable_index
            .max(last_index.min(cut))
            .min(self.log.last_index);
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
                self.follow_commit(out);
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
            // standby is outdated and `escadm status` says so) -- in witness
            // mode only once the witness recorded that (architecture 4).
            _ if self.commit_alone && self.alone_grace_passed() => durable,
            _ => self.commit_index,
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
        let sync_point = self.sync_point();
        if let Some(p) = self.peer.as_mut() {
            if !p.in_sync && p.phase == PeerPhase::Replicating && p.match_index >= sync_point {
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
                    primary_commit: None,
                });
                out.push(self.status_message(conn));
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

    /// The standby's `Status`: where its *durable* log ends. Entries in the
    /// log view whose `Persist` is still queued must not be claimed: the
    /// primary would count them as held by the follower and could commit
    /// (sync mode) what a crash here would lose (architecture section 3).
    fn status_message(&self, conn: ConnId) -> Output {
        let (last_index, last_epoch) = match self.log.epoch_at(self.durable_index) {
            Some(epoch) => (self.durable_index, epoch),
            // Compaction ran ahead of a queued `Persist` (the storage worker
            // runs them in order): the snapshot point is applied, so already
            // committed on the primary; claiming it cannot advance its commit.
            None => (self.log.snapshot_index, self.log.snapshot_epoch),
        };
        Output::Send {
            conn,
            msg: Message::Status {
                epoch: self.epoch,
                last_index,
                last_epoch,
                applied_index: self.commit_index,
            },
        }
    }

    /// The link to the primary is gone: remember whether we were in sync.
    /// A link that carried no `Append` taught us nothing of the primary's
    /// commit and (unless a snapshot came, which counts as behind) did not
    /// change our log: the answer of the previous loss still describes this
    /// log, so it is kept (None stays None, "not followed a primary").
    fn lose_upstream(&mut self) {
        if let Some(u) = self.upstream.take() {
            if let Some(in_sync) = self.upstream_in_sync(&u) {
                self.in_sync_at_loss = Some(in_sync);
            }
        }
    }

    /// What a follower must hold to count as in sync (see `sync_floor`),
    /// and the commit point carried in `Append`: the follower judges its own
    /// eligibility by it, so it must cover everything that may have been
    /// acknowledged, even in an earlier term. Applying up to it is safe:
    /// the follower holds those entries verified equal to ours, so every
    /// later primary (one of the two) has them and commits them.
    fn sync_point(&self) -> u64 {
        self.commit_index.max(self.sync_floor)
    }

    /// The primary may commit without its follower: nothing was sent to
    /// it for `alone_grace_ms` (a standby promoting within its window
    /// cannot then miss an entry committed alone).
    fn alone_grace_passed(&self) -> bool {
        self.cfg.alone_grace_ms == 0
            || self
                .last_follower_send_ms
                .is_none_or(|t| self.now_ms >= t.saturating_add(self.cfg.alone_grace_ms))
    }

    /// The standby's in-sync knowledge is recent enough to promote on.
    fn in_sync_recent(&self) -> bool {
        self.recent(self.last_in_sync_ms)
    }

    /// Within `in_sync_window_ms` of `t` (always, without a window).
    fn recent(&self, t: Option<u64>) -> bool {
        self.cfg.in_sync_window_ms == u64::MAX
            || self.cfg.in_sync_window_ms == 0
            || t.is_some_and(|t| self.now_ms <= t.saturating_add(self.cfg.in_sync_window_ms))
    }

    /// Whether this standby durably holds every entry the primary is known
    /// to have committed (architecture section 2, the two-node promotion
    /// rule); None when no `Append` told us the primary's commit index.
    fn upstream_in_sync(&self, u: &Upstream) -> Option<bool> {
        if u.diverged || u.snapshot.is_some() || self.installing.is_some() {
            // Our applied state differs from the primary's, or a snapshot
            // (sent only to a follower that lacks entries) is replacing it.
            return Some(false);
        }
        let commit = u.primary_commit?;
        Some(u.matched_index >= commit && self.durable_index >= commit)
    }

    /// Why promoting this node now could lose acknowledged writes or make a
    /// second primary; `None` when it is safe (architecture section 2:
    /// "a standby promotes only if its copy was in sync").
    pub fn promotion_blocker(&self) -> Option<String> {
        if self.role == Role::Primary {
            return None;
        }
        if self.next_epoch().is_none() {
            return Some(EPOCH_EXHAUSTED.into());
        }
        if let Some(u) = &self.upstream {
            return Some(match u.primary_commit {
                Some(commit) => format!(
                    "the primary is still connected (commit index {commit}): demote it first"
                ),
                None => "the primary is still connected: demote it first".into(),
            });
        }
        self.blocker_without_link()
    }

    /// The promotion rule once the primary's link is gone.
    fn blocker_without_link(&self) -> Option<String> {
        if self.handed_away_ms.is_some()
            && self.cfg.in_sync_window_ms != u64::MAX
            && self.recent(self.handed_away_ms)
        {
            return Some(
                "this node handed over to its peer moments ago: the peer takes over".into(),
            );
        }
        match self.in_sync_at_loss {
            Some(true) if self.in_sync_recent() => None,
            Some(true) => Some(format!(
                "the link to the primary was lost more than {} ms ago: the primary may have committed alone since",
                self.cfg.in_sync_window_ms
            )),
            Some(false) => Some(
                "this node was behind the primary when the link was lost: it may miss acknowledged writes"
                    .into(),
            ),
            // Cold start (architecture section 4): lead only after seeing
            // the peer and holding the fresher (or as fresh) log.
            None => match self.peer_position {
                Some(_) if !self.recent(self.peer_position_ms) => Some(format!(
                    "the peer's log position was learnt more than {} ms ago: it may have led since",
                    self.cfg.in_sync_window_ms
                )),
                Some((peer, tie_to_peer))
                    if self.durable_position() > peer
                        || (self.durable_position() == peer && !tie_to_peer) =>
                {
                    None
                }
                Some(((e, i), _)) => Some(format!(
                    "the peer's log (epoch {e}, index {i}) is fresher, or as fresh and the peer wins the tie (lower node name): it should lead"
                )),
                None => Some(
                    "this node has not followed a primary or seen its peer since it started: its copy may be outdated"
                        .into(),
                ),
            },
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
        let sync_point = self.sync_point();
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
                    p.in_sync = last_index >= sync_point;
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
                let sync_point = self.sync_point();
                if let Some(p) = self.peer.as_mut() {
                    if !p.in_sync
                        && p.phase == PeerPhase::Replicating
                        && p.match_index >= sync_point
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
            commit_index: self.sync_point(),
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
        // Any message from the primary is liveness, snapshot chunks included.
        u.last_heard_ms = now;
        if installing {
            // Dropped: after the install we send our new position and the
            // primary resends from there.
            return;
        }
        match msg {
            // Switchover: the primary drained and hands over. Taken only if
            // we hold everything it had; the role authority then promotes
            // this node (architecture section 2).
            Message::Handover { last_index, .. }
                if u.matched_index >= last_index && self.durable_index >= last_index =>
            {
                self.upstream = None;
                self.in_sync_at_loss = Some(true);
                self.last_in_sync_ms = Some(self.now_ms);
                self.handover = true;
                out.push(Output::Disconnect {
                    conn,
                    reason: "the primary handed over".into(),
                });
            }
            Message::Append {
                prev_index,
                prev_epoch,
                commit_index,
                entries,
                ..
            } => {
                self.standby_append(conn, prev_index, prev_epoch, commit_index, entries, out);
                // Following a primary: an old standby-to-standby position,
                // or a handover to us, no longer stands. (A mere link to
                // the peer does not say that: two standbys trade positions.)
                self.peer_position = None;
                self.handover = false;
                if self
                    .upstream
                    .as_ref()
                    .is_some_and(|u| self.upstream_in_sync(u) == Some(true))
                {
                    self.last_in_sync_ms = Some(self.now_ms);
                }
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
                if !u.diverged && index <= self.commit_index.max(u.matched_index) {
                    // Our applied state, or our log verified equal to the
                    // primary's, already covers the snapshot: keep it (never
                    // go back, never drop entries we acknowledged).
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
                // Entries about to be replaced that were not verified equal
                // to the primary's log go to the recovery file, never dropped
                // silently (architecture section 3). Verified: up to
                // `matched_index` on this link, and what we applied (a
                // primary committed it) unless we diverged, which means some
                // applied entry differs from this primary's: then only
                // `matched_index` vouches. Compacted entries are no longer in
                // the log to save.
                let verified = if u.diverged {
                    u.matched_index
                } else {
                    u.matched_index.max(self.commit_index)
                };
                let keep = verified.max(self.log.snapshot_index);
                if self.log.last_index > keep {
                    out.push(Output::SaveRecovery { from: keep + 1 });
                }
                self.installing = Some(conn);
                // The log is being replaced: whether we were in sync at an
                // earlier loss of the link no longer describes it.
                self.in_sync_at_loss = Some(false);
                out.push(Output::InstallSnapshot {
                    conn,
                    index,
                    index_epoch,
                });
            }
            _ => {}
        }
    }

    /// The follower side of `Append` (architecture section 3). The whole
    /// message is checked before anything changes, so a bad one leaves the
    /// core as it was.
    fn standby_append(
        &mut self,
        conn: ConnId,
        prev_index: u64,
        prev_epoch: u64,
        leader_commit: u64,
        entries: Vec<Entry>,
        out: &mut Vec<Output>,
    ) {
        let epoch = self.epoch;
        if let Err(reason) = check_append(prev_index, prev_epoch, &entries, epoch) {
            out.push(Output::Disconnect { conn, reason });
            return;
        }
        let Some(u) = self.upstream.as_mut() else {
            return;
        };
        u.primary_commit = Some(
            u.primary_commit
                .map_or(leader_commit, |c| c.max(leader_commit)),
        );
        let reject = |log: &LogView, conflict_index: u64| Output::Send {
            conn,
            msg: Message::AppendReject {
                epoch,
                last_index: log.last_index,
                conflict_index,
            },
        };
        if prev_index > self.log.last_index {
            out.push(reject(&self.log, self.log.last_index + 1));
            return;
        }
        if prev_index < self.log.snapshot_index {
            let matched = self.upstream.as_ref().map_or(0, |u| u.matched_index);
            if matched >= self.log.snapshot_index {
                // A batch resent after we already held it (and compacted
                // it): nothing to do but say how far we hold its log.
                out.push(Output::Send {
                    conn,
                    msg: Message::AppendOk {
                        epoch,
                        match_index: matched,
                    },
                });
                return;
            }
            // The primary probes below what we folded into our snapshot and
            // this link never verified it: its log ends before our applied
            // state, which therefore came from another history (a two-node
            // split brain). Only a snapshot repairs applied state;
            // rejecting would loop.
            self.ask_for_snapshot(conn, out);
            return;
        }
        if self.log.epoch_at(prev_index) != Some(prev_epoch) {
            if prev_index <= self.commit_index {
                // The entry at prev_index is applied and differs from the
                // primary's: only a snapshot repairs applied state.
                self.ask_for_snapshot(conn, out);
            } else {
                // What we applied came from a primary's committed log, so the
                // divergence starts after it: skip back a whole epoch (one
                // round per epoch), but never into applied state, or an
                // applied entry would be probed and a snapshot asked for no
                // reason.
                let conflict = self.log.epoch_start(prev_index).max(self.commit_index + 1);
                out.push(reject(&self.log, conflict));
            }
            return;
        }
        // prev matches at or above what we applied: our log up to prev_index
        // equals the primary's, so our applied state is its history after
        // all. A snapshot asked for on an older probe must not then replace
        // entries we acknowledge from here on (they would be lost).
        if prev_index >= self.commit_index {
            if let Some(u) = self.upstream.as_mut() {
                u.diverged = false;
            }
        }
        // prev matches. Entries we already hold (same index and epoch) are
        // skipped; the first one we hold in another epoch is the cut point.
        let conflict = entries
            .iter()
            .find(|e| e.index <= self.log.last_index && self.log.epoch_at(e.index) != Some(e.epoch))
            .map(|e| e.index);
        if conflict.is_some_and(|c| c <= self.commit_index) {
            self.ask_for_snapshot(conn, out);
            return;
        }
        // Everything up to the last entry sent is now verified equal to the
        // primary's log, held entries included: acknowledging only
        // prev_index would make the primary resend them forever.
        let matched = entries.last().map_or(prev_index, |e| e.index);
        let truncate_after = conflict.map(|c| c - 1);
        if let Some(after) = truncate_after {
            self.log.truncate_after(after);
            self.durable_index = self.durable_index.min(after);
        }
        let fresh: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index > self.log.last_index)
            .collect();
        for e in &fresh {
            self.log.append(e.epoch, e.index, e.index);
        }
        let u = self.upstream.as_mut().expect("checked above");
        u.matched_index = u.matched_index.max(matched);
        if truncate_after.is_some() || !fresh.is_empty() {
            u.ack_after_persist = Some(matched);
            self.persist(truncate_after, fresh, None, out);
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
            if self.persisting.iter().any(|p| p.cut.is_some()) {
                // Held, not yet durable, behind a cut whose answer may have
                // been taken for an earlier `Persist` ending at the same
                // index (`on_persisted` assumes the fewest done): an empty
                // `Persist` is answered after the cut, so the acknowledgement
                // cannot wait forever.
                self.persist(None, Vec::new(), None, out);
            }
        }
        self.follow_commit(out);
    }

    /// The follower applies up to the primary's commit index, no further
    /// than what is verified equal to the primary's log (architecture
    /// section 3) and durable here: an entry whose `Persist` (or whose
    /// replacement's, after a cut) is still queued is not committed on this
    /// node yet, so `commit_index` never names an entry the disk does not
    /// hold, and `Persisted` moves it on.
    fn follow_commit(&mut self, out: &mut Vec<Output>) {
        let Some(u) = &self.upstream else { return };
        let Some(primary_commit) = u.primary_commit else {
            return;
        };
        let commit = primary_commit.min(u.matched_index).min(self.durable_index);
        if commit > self.commit_index {
            self.commit_index = commit;
            out.push(Output::Apply {
                up_to: commit,
                replies: Vec::new(),
            });
            self.maybe_compact(out);
        }
    }

    /// Our applied state diverged from the primary's log: ask for a snapshot.
    fn ask_for_snapshot(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        if let Some(u) = self.upstream.as_mut() {
            u.diverged = true;
        }
        out.push(Output::Send {
            conn,
            msg: Message::NeedSnapshot { epoch: self.epoch },
        });
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
        // Everything queued before the install is done (the worker runs in
        // order); what was queued since makes no cut (nothing is accepted
        // while installing) and ends the log at the snapshot now.
        self.persisting.clear();
        let for_conn = self.installing.take();
        let (epoch, now) = (self.epoch, self.now_ms);
        let Some(u) = self.upstream.as_mut() else {
            return;
        };
        u.ack_after_persist = None;
        u.diverged = false;
        // The primary was silent while we installed (it waits for our
        // answer): the timeout runs from now, not from the snapshot's end.
        u.last_heard_ms = now;
        let conn = u.conn;
        if Some(conn) == for_conn {
            u.matched_index = index;
            out.push(Output::Send {
                conn,
                msg: Message::AppendOk {
                    epoch,
                    match_index: index,
                },
            });
        } else {
            // The link changed during the install: start over from our new
            // position.
            u.matched_index = 0;
            out.push(self.status_message(conn));
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
                // The promotion rule's answer, were the link lost now: held
                // durably up to the primary's commit (not merely received).
                in_sync: self.upstream_in_sync(u) == Some(true),
                lag_entries: u
                    .primary_commit
                    .map_or(0, |c| c.saturating_sub(self.durable_index)),
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

/// Checks an `Append` on its own: every entry intact and not from an epoch
/// above the sender's, contiguous right after `prev_index`, and epochs never
/// going back (from `prev_epoch` on). The reason closes the link.
fn check_append(
    prev_index: u64,
    prev_epoch: u64,
    entries: &[Entry],
    epoch: u64,
) -> Result<(), String> {
    let mut last_epoch = prev_epoch;
    for (i, e) in entries.iter().enumerate() {
        if e.verify().is_err() || e.epoch > epoch {
            return Err(format!("entry {} failed validation", e.index));
        }
        if prev_index.checked_add(i as u64 + 1) != Some(e.index) {
            return Err("non-contiguous entries".into());
        }
        if e.epoch < last_epoch {
            return Err(format!("entry {} goes back to epoch {}", e.index, e.epoch));
        }
        last_epoch = e.epoch;
    }
    Ok(())
}
