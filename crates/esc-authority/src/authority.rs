//! The role authority (architecture section 2): the one place that decides
//! this node's role, and the one function, [`Authority::change_role`], that
//! performs every transition and says why.
//!
//! It reacts to reports ([`Input`]) and emits commands ([`Output`]); it
//! never reads a clock or does I/O. The runtime feeds it the VRRP engine's
//! state, a [`ReplView`] of the replication core after every change, health
//! results, witness replies and operator commands, and executes its outputs
//! in order.
//!
//! Decisions, each also stated where it is made:
//! * A standby takes over only when both failure detectors agree: VRRP
//!   declared the primary down (or no VRRP is configured) AND the
//!   replication link to it is gone. A VRRP-only partition therefore never
//!   makes a second primary.
//! * Two-node mode: it promotes only if its copy was in sync when it lost
//!   the primary (the replication core's `promotion_blocker`).
//! * Witness mode: it promotes only with the witness's grant, in the epoch
//!   the witness gives; the primary commits alone only after the witness
//!   marked the standby outdated, and steps down when its lease runs out
//!   without an in-sync standby (architecture section 4).
//! * The VIP and write admission follow the role, not the VRRP election.
//! * The primary advertises [`PRIMARY_PRIORITY`] and preempts; a standby
//!   advertises the configured priority without preemption; a node that
//!   could not safely take over (FAULT, outdated, stopping) does not contend.

use crate::witness::{Reply, Request};
use serde::{Deserialize, Serialize};

/// Priority the primary advertises (below 255, the address owner's).
pub const PRIMARY_PRIORITY: u8 = 254;
/// Longest a handing-over primary keeps the VIP while the new primary
/// takes over (it answers 503 meanwhile; clients resend).
pub const VIP_HOLD_MS: u64 = 1_000;

/// How long a promotion request may wait for the witness's answer before
/// it is sent again (the witness client's reply deadline).
pub const GRANT_ANSWER_MS: u64 = 1_000;
/// A standby handed the role asks the witness again this soon after a
/// refusal: the old primary's lease release may have arrived just after
/// the first request (bounded by the release's round trip, and by
/// `switchover_timeout_ms`; the witness still decides).
pub const HANDOVER_GRANT_RETRY_MS: u64 = 10;
/// Once a standby in witness mode has direct evidence that the primary
/// stopped leading (its kernel closed the replication link, or it
/// advertises a standby's VRRP priority: it stepped down), a refused
/// promotion request is sent again this soon, for `GONE_FAST_MS`: the
/// witness may learn of the end of the lease (the dead process's witness
/// connection closing, the release of a primary stepping down) a moment
/// after the standby's request arrives.
pub const GONE_GRANT_RETRY_MS: u64 = 10;
pub const GONE_FAST_MS: u64 = 100;

/// Two-node mode's timing (docs/architecture.md, "fencing by time"), one
/// formula for the runtime and the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwoNodeTiming {
    /// A standby may promote within this long of last knowing itself in
    /// sync: both detectors (VRRP master down, at most 4 adverts; the
    /// replication timeout) plus a heartbeat and a margin.
    pub in_sync_window_ms: u64,
    /// A primary that hears another node advertise as primary steps down
    /// after this long (VRRP settles a tie in one advert interval).
    pub contest_grace_ms: u64,
    /// A primary commits without its follower only after sending it nothing
    /// for this long: longer than the window plus the contest, so a standby
    /// that took over either had everything or made this primary step down
    /// first.
    pub alone_grace_ms: u64,
}

impl TwoNodeTiming {
    pub fn new(advert_ms: u64, peer_timeout_ms: u64, heartbeat_ms: u64) -> TwoNodeTiming {
        let in_sync_window_ms = (4 * advert_ms).max(peer_timeout_ms) + heartbeat_ms + 250;
        let contest_grace_ms = 2 * advert_ms + 100;
        TwoNodeTiming {
            in_sync_window_ms,
            contest_grace_ms,
            alone_grace_ms: in_sync_window_ms + contest_grace_ms + 500,
        }
    }
}

/// The node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    /// Starting: nothing decided yet.
    Init,
    Standby,
    Primary,
    /// Local health failed: no VIP, no writes, does not contend.
    Fault,
}

/// The words of `$ESC_HOME/keepalived_state`, as operators know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StateWord {
    Master,
    Backup,
    Fault,
    Stop,
}

impl StateWord {
    pub fn as_str(self) -> &'static str {
        match self {
            StateWord::Master => "MASTER",
            StateWord::Backup => "BACKUP",
            StateWord::Fault => "FAULT",
            StateWord::Stop => "STOP",
        }
    }
}

/// Tuning, from `esc.toml`. Serde so a trace's header can carry it
/// ([`crate::trace`]); strict, so a trace from an authority with other
/// knobs is refused rather than replayed with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A witness is configured (architecture section 4).
    pub witness: bool,
    /// A VRRP speaker is configured: it is the fast failure detector.
    pub vrrp: bool,
    /// Take over automatically when the primary is lost. Without VRRP or a
    /// witness there is no failure detector besides the replication link,
    /// so the runtime leaves this off and takeover is `escadm ha promote`.
    pub auto_takeover: bool,
    /// Priority a standby advertises.
    pub priority: u8,
    /// How often the primary renews its lease.
    pub renew_interval_ms: u64,
    /// How often an unanswered witness request is repeated.
    pub witness_retry_ms: u64,
    /// How long a switchover waits for the standby to hold everything.
    pub switchover_timeout_ms: u64,
    /// For this long after its promotion, a primary ignores adverts of
    /// another primary (still in flight from before); later, one makes it
    /// step down at once (two-node mode).
    pub contest_grace_ms: u64,
    /// A fresh store with `initial_role = "primary"`: promote at once
    /// (manual mode) or ask the witness (witness mode).
    pub initial_primary: bool,
}

/// The VRRP engine's state, as far as the authority cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VrrpState {
    Initialize,
    Backup,
    Master,
}

/// What the VRRP engine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpView {
    pub state: VrrpState,
    /// The priority of the master we hear (Backup state).
    pub master_priority: Option<u8>,
    /// Adverts heard from another router with [`PRIMARY_PRIORITY`], ever
    /// (whatever our state: a master discards a lower address's adverts).
    pub primary_adverts: u64,
}

/// What the replication core reports after every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplView {
    pub primary: bool,
    pub epoch: u64,
    /// Where the durable log ends.
    pub last_epoch: u64,
    pub last_index: u64,
    /// Primary: a follower is connected. Standby: the link to the primary is up.
    pub linked: bool,
    /// Standby, link gone: the primary's kernel ended it (end of stream or
    /// a reset), so its process died or closed it; a partition or a
    /// powered-off host only times out. Witness mode asks the witness at
    /// once on it, without waiting for VRRP's Master_Down_Interval.
    #[serde(default)]
    pub peer_closed: bool,
    /// Primary: the follower is in sync (holds every committed entry).
    /// Standby: promoting now would lose no acknowledged write (two-node rule).
    pub in_sync: bool,
    /// Standby: why promotion is unsafe (shown to the operator).
    pub blocker: Option<String>,
    /// Primary: nothing pending and the follower holds every durable entry.
    pub drained: bool,
    /// The core may commit without its follower (witness mode gate).
    pub commit_alone: bool,
    /// The sequence number of the last `CommitAlone` the core carried out.
    pub commit_alone_seq: u64,
    /// How many checked promotions the core refused (it found them unsafe
    /// at the moment it acted).
    pub promotions_refused: u64,
    /// Standby: the primary handed over and this node holds everything.
    pub handover: bool,
}

/// Everything the authority reacts to. Serde (style principle 2): a
/// JSON-lines trace of inputs replays to the same outputs ([`crate::trace`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Tick,
    Vrrp(VrrpView),
    Repl(ReplView),
    /// The periodic local health check (architecture section 2: FAULT).
    Health(Result<(), String>),
    /// The store failed for good: FAULT until restarted.
    StoreFailed(String),
    /// The witness's reply to `request`, sent at `sent_at_ms`.
    Witness {
        request: Request,
        reply: Reply,
        sent_at_ms: u64,
    },
    /// Operator commands; each is answered by `Output::Reply { id, .. }`.
    Switchover {
        id: u64,
    },
    Promote {
        id: u64,
        force: bool,
    },
    Demote {
        id: u64,
    },
    /// Graceful stop: a primary hands over first; answered by `ReadyToStop`.
    Stop,
}

/// Commands, in the order the runtime must perform them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Log the transition to `escadm.log`.
    Transition {
        from: Role,
        to: Role,
        reason: String,
    },
    /// Write `$ESC_HOME/keepalived_state`.
    StateFile(StateWord),
    /// Add (and announce) or remove the VIP.
    Vip(bool),
    /// Keep the VIP but announce it no more (cancel gratuitous ARPs still
    /// pending): a node that handed over holds it only until the new
    /// primary advertises, and an announcement from it would pull clients
    /// back from the new primary.
    VipQuiet,
    /// Admit northbound writes.
    Admission(bool),
    /// Take part in the VRRP election (false: Shutdown, priority 0 if master).
    VrrpContend(bool),
    VrrpPriority(u8),
    VrrpPreempt(bool),
    /// Make the replication core primary, in this epoch (None: next one).
    /// `checked`: the core refuses if its promotion check fails by then.
    Promote {
        epoch: Option<u64>,
        checked: bool,
        reason: String,
    },
    Demote {
        reason: String,
    },
    /// Allow the core to commit without its follower (witness mode); the
    /// core echoes `seq` in its view once it has carried it out.
    CommitAlone {
        on: bool,
        seq: u64,
    },
    /// Tell the follower to take over: it holds every entry (switchover).
    Handover,
    ToWitness(Request),
    Reply {
        id: u64,
        result: Result<String, String>,
    },
    /// The graceful stop may proceed.
    ReadyToStop,
}

/// The outdated mark, as this primary knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mark {
    /// Not known to be set: commits need the follower.
    Clear,
    /// Set at the witness: this primary may commit alone.
    Marked,
}

#[derive(Debug, Clone)]
struct Switching {
    id: Option<u64>,
    since_ms: u64,
    then_stop: bool,
}

/// What `escadm status --v` shows of the authority.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub role: Role,
    pub state_word: StateWord,
    pub reason: String,
    pub since_ms: u64,
    pub mode: &'static str,
    pub health: Result<(), String>,
    pub vip: bool,
    pub admission: bool,
    pub vrrp_priority: Option<u8>,
    pub lease_left_ms: Option<u64>,
    pub standby_marked_outdated: bool,
    pub switchover_in_progress: bool,
}

/// The role authority of one node.
#[derive(Debug)]
pub struct Authority {
    cfg: Config,
    now_ms: u64,
    role: Role,
    reason: String,
    since_ms: u64,
    vrrp: Option<VrrpView>,
    /// Primary adverts heard from another node when this node last checked
    /// (two-node mode).
    primary_adverts_seen: u64,
    repl: Option<ReplView>,
    health: Result<(), String>,
    store_failed: Option<String>,
    /// A Promote/Demote was sent; the ReplView has not caught up yet.
    awaiting_primary: Option<(bool, u64)>,
    /// The epoch this node leads in (from the grant or the core's view):
    /// requests carry it and replies for any other epoch are stale.
    term: Option<u64>,
    /// A promotion request awaits the witness's answer.
    grant_in_flight: bool,
    /// After a handover: keep the VIP until then, or until more primary
    /// adverts than this count were heard.
    vip_hold: Option<(u64, u64)>,
    /// When this node handed its role over (switchover), and its epoch
    /// then: it does not take the role back on its own for
    /// `switchover_timeout_ms` while the peer takes over, unless it has
    /// followed the new primary (linked, in a newer epoch): then the
    /// switchover is over, and losing that primary is an ordinary takeover.
    handed_over: Option<(u64, u64)>,
    /// When the core last refused a checked promotion: automatic attempts
    /// pause for `witness_retry_ms` x 10 after it.
    refused_at_ms: Option<u64>,
    /// Since when this standby has had evidence that the primary stopped
    /// leading (fast grant retries: `GONE_FAST_MS`).
    gone_since_ms: Option<u64>,
    /// The last `CommitAlone` command: (on, seq).
    alone_cmd: (bool, u64),
    // Witness mode.
    lease_until_ms: Option<u64>,
    /// When the latest answer to a renewal (or a grant) arrived.
    witness_heard_ms: Option<u64>,
    renew_sent_ms: Option<u64>,
    mark: Mark,
    mark_sent_ms: Option<u64>,
    /// When the last ClearOutdated was sent: a `Marked` answering a request
    /// sent before it is stale (the witness may have cleared since).
    last_clear_sent_ms: Option<u64>,
    /// The witness may hold a mark this primary wants cleared.
    clear_pending: bool,
    grant_sent_ms: Option<u64>,
    forced_grant: bool,
    switching: Option<Switching>,
    stopping: bool,
    stopped: bool,
    // What was last emitted, so commands are sent on change only.
    vip: bool,
    /// The VIP was last announced (`Vip(true)`), not quieted.
    vip_announced: bool,
    admission: bool,
    contend: Option<bool>,
    priority: Option<u8>,
    preempt: Option<bool>,
}

impl Authority {
    pub fn new(cfg: Config) -> Authority {
        Authority {
            cfg,
            now_ms: 0,
            role: Role::Init,
            reason: "starting".into(),
            since_ms: 0,
            vrrp: None,
            primary_adverts_seen: 0,
            repl: None,
            health: Ok(()),
            store_failed: None,
            awaiting_primary: None,
            term: None,
            grant_in_flight: false,
            refused_at_ms: None,
            gone_since_ms: None,
            handed_over: None,
            vip_hold: None,
            alone_cmd: (false, 0),
            lease_until_ms: None,
            witness_heard_ms: None,
            renew_sent_ms: None,
            mark: Mark::Clear,
            mark_sent_ms: None,
            last_clear_sent_ms: None,
            clear_pending: false,
            grant_sent_ms: None,
            forced_grant: false,
            switching: None,
            stopping: false,
            stopped: false,
            vip: false,
            vip_announced: false,
            admission: false,
            contend: None,
            priority: None,
            preempt: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether northbound writes are admitted.
    /// Until when (this core's clock) the witness's lease is held, while
    /// primary: what fences this node's actions on the outside world (a
    /// process frozen past it must not act on resuming). None: no lease
    /// (two-node mode, or not primary).
    pub fn lease_until_ms(&self) -> Option<u64> {
        self.lease_until_ms.filter(|_| self.role == Role::Primary)
    }

    pub fn admits_writes(&self) -> bool {
        self.admission
    }

    pub fn status(&self) -> Status {
        Status {
            role: self.role,
            state_word: self.word(),
            reason: self.reason.clone(),
            since_ms: self.since_ms,
            mode: if self.cfg.witness {
                "witness"
            } else {
                "two-node"
            },
            health: self.fault_reason().map_or(Ok(()), Err),
            vip: self.vip,
            admission: self.admission,
            vrrp_priority: self.priority,
            lease_left_ms: self
                .lease_until_ms
                .map(|u| u.saturating_sub(self.now_ms))
                .filter(|_| self.role == Role::Primary),
            standby_marked_outdated: self.mark == Mark::Marked,
            switchover_in_progress: self.switching.is_some(),
        }
    }

    /// The one entry point.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Vrrp(v) => self.vrrp = Some(v),
            Input::Repl(r) => {
                if let Some((want, _)) = self.awaiting_primary {
                    if r.primary == want {
                        self.awaiting_primary = None;
                    }
                }
                let refused = self
                    .repl
                    .as_ref()
                    .is_some_and(|old| r.promotions_refused > old.promotions_refused);
                if refused && self.role == Role::Primary && !r.primary {
                    // The core found the promotion unsafe when it acted.
                    self.awaiting_primary = None;
                    self.refused_at_ms = Some(self.now_ms);
                    let why = r.blocker.clone().unwrap_or_default();
                    self.repl = Some(r);
                    self.change_role(
                        Role::Standby,
                        format!("the replication core refused the promotion: {why}"),
                        &mut out,
                    );
                    self.reconcile(&mut out);
                    return out;
                }
                if r.primary && self.role == Role::Primary && self.awaiting_primary.is_none() {
                    self.term = Some(r.epoch);
                }
                self.repl = Some(r);
            }
            Input::Health(h) => self.health = h,
            Input::StoreFailed(e) => self.store_failed = Some(e),
            Input::Witness {
                request,
                reply,
                sent_at_ms,
            } => self.on_witness(request, reply, sent_at_ms, &mut out),
            Input::Switchover { id } => self.on_switchover(id, false, &mut out),
            Input::Promote { id, force } => self.on_admin_promote(id, force, &mut out),
            Input::Demote { id } => {
                if self.role == Role::Primary {
                    self.step_down("operator: escadm ha demote".into(), &mut out);
                    out.push(Output::Reply {
                        id,
                        result: Ok("demoted to standby".into()),
                    });
                } else {
                    out.push(Output::Reply {
                        id,
                        result: Ok("not primary: nothing to do".into()),
                    });
                }
            }
            Input::Stop => {
                self.stopping = true;
                if self.role == Role::Primary && self.follower_in_sync() {
                    self.on_switchover(u64::MAX, true, &mut out);
                }
            }
        }
        self.reconcile(&mut out);
        out
    }

    fn fault_reason(&self) -> Option<String> {
        if let Some(e) = &self.store_failed {
            return Some(format!("store failed: {e}"));
        }
        self.health.clone().err()
    }

    fn follower_in_sync(&self) -> bool {
        self.repl
            .as_ref()
            .is_some_and(|r| r.primary && r.linked && r.in_sync)
    }

    fn word(&self) -> StateWord {
        if self.stopped {
            return StateWord::Stop;
        }
        match self.role {
            Role::Primary => StateWord::Master,
            Role::Standby | Role::Init => StateWord::Backup,
            Role::Fault => StateWord::Fault,
        }
    }

    /// Every role transition goes through here (architecture section 2):
    /// it logs the reason, writes the state file and brings the VIP,
    /// admission and VRRP commands in line with the new role.
    fn change_role(&mut self, to: Role, reason: String, out: &mut Vec<Output>) {
        let from = self.role;
        self.role = to;
        self.reason = reason.clone();
        self.since_ms = self.now_ms;
        if to != Role::Primary {
            self.term = None;
            self.lease_until_ms = None;
            self.witness_heard_ms = None;
            self.renew_sent_ms = None;
            self.mark = Mark::Clear;
            self.mark_sent_ms = None;
            self.clear_pending = false;
        }
        if to != Role::Standby {
            self.vip_hold = None;
            self.grant_sent_ms = None;
            self.forced_grant = false;
        }
        out.push(Output::Transition { from, to, reason });
        out.push(Output::StateFile(self.word()));
        self.sync_commands(out);
    }

    /// Emits the VIP, admission and VRRP commands the role calls for, on
    /// change only.
    fn sync_commands(&mut self, out: &mut Vec<Output>) {
        let primary = self.role == Role::Primary;
        // Admission waits for the core to be primary, and stops while a
        // switchover drains or the node stops.
        let repl_primary = self.repl.as_ref().is_some_and(|r| r.primary);
        let admission = primary && repl_primary && self.switching.is_none() && !self.stopping;
        let vip = (primary || self.holding_vip()) && !self.stopped;
        let contend = !self.stopped
            && match self.role {
                Role::Primary => true,
                Role::Standby => !self.stopping && self.could_take_over(),
                Role::Init | Role::Fault => false,
            };
        let (priority, preempt) = if primary {
            (PRIMARY_PRIORITY, true)
        } else {
            (self.cfg.priority, false)
        };
        if self.cfg.vrrp {
            // Priority first, so an election started by Contend sees it.
            if self.priority != Some(priority) {
                self.priority = Some(priority);
                out.push(Output::VrrpPriority(priority));
            }
            if self.preempt != Some(preempt) {
                self.preempt = Some(preempt);
                out.push(Output::VrrpPreempt(preempt));
            }
        }
        // Removing the VIP goes before anything that lets the peer take it.
        if self.vip && !vip {
            self.vip = false;
            out.push(Output::Vip(false));
        }
        if self.admission != admission {
            self.admission = admission;
            out.push(Output::Admission(admission));
        }
        if self.cfg.vrrp && self.contend != Some(contend) {
            self.contend = Some(contend);
            out.push(Output::VrrpContend(contend));
        }
        if vip && !primary && self.vip_announced {
            // Found by `esc-lab bench --faults switchover`: the repeat of
            // the gratuitous ARPs from this node's own takeover fell inside
            // the hold and took clients back from the new primary (840 to
            // 970 ms without writes).
            self.vip_announced = false;
            out.push(Output::VipQuiet);
        }
        if vip && primary && !(self.vip && self.vip_announced) {
            self.vip = true;
            self.vip_announced = true;
            out.push(Output::Vip(true));
        }
    }

    /// After a handover, the VIP stays until the new primary's first advert
    /// is heard (or `VIP_HOLD_MS` passes).
    fn holding_vip(&self) -> bool {
        self.role == Role::Standby
            && self.vip_hold.is_some_and(|(until, adverts)| {
                self.now_ms < until && self.vrrp.map_or(0, |v| v.primary_adverts) <= adverts
            })
    }

    /// Whether this standby could take over safely if the primary went
    /// away now (it then takes part in the VRRP election).
    fn could_take_over(&self) -> bool {
        if self.fault_reason().is_some() {
            return false;
        }
        if self.cfg.witness {
            // The witness decides; being outdated is its to know.
            return true;
        }
        self.repl.as_ref().is_some_and(|r| r.in_sync)
    }

    fn on_witness(
        &mut self,
        request: Request,
        reply: Reply,
        sent_at_ms: u64,
        out: &mut Vec<Output>,
    ) {
        // Replies about another term than the one this node leads in are
        // stale (the view of the core may lag behind a new grant).
        let epoch_now = self.term.unwrap_or(u64::MAX);
        if matches!(request, Request::Promote { .. }) {
            self.grant_in_flight = false;
        }
        match reply {
            Reply::LeaseOk { epoch, lease_ms }
                if self.role == Role::Primary && epoch == epoch_now =>
            {
                // Counted from when the request left: this node's view of
                // the lease ends before the witness's (architecture 4).
                let until = sent_at_ms + lease_ms;
                self.lease_until_ms = Some(self.lease_until_ms.map_or(until, |u| u.max(until)));
                self.witness_heard_ms = Some(self.now_ms);
            }
            // Only a mark requested after the last clear is in force.
            Reply::Marked { epoch }
                if self.role == Role::Primary
                    && epoch == epoch_now
                    && self.last_clear_sent_ms.is_none_or(|c| sent_at_ms > c) =>
            {
                self.mark = Mark::Marked;
                self.mark_sent_ms = None;
            }
            Reply::Cleared { epoch } if epoch == epoch_now => {
                if self.last_clear_sent_ms.is_some_and(|c| sent_at_ms >= c) {
                    self.clear_pending = false;
                }
                self.mark_sent_ms = None;
            }
            Reply::Released { .. } => {}
            Reply::Granted { epoch, lease_ms } => {
                self.grant_sent_ms = None;
                let forced = std::mem::take(&mut self.forced_grant);
                // A grant whose lease has already run out (a reply delayed
                // past it) is void: the witness may have granted another
                // node since. Within the lease, it cannot have.
                let live = self.now_ms < sent_at_ms.saturating_add(lease_ms);
                if live
                    && self.role == Role::Standby
                    && self.fault_reason().is_none()
                    && !self.stopping
                {
                    self.lease_until_ms = Some(sent_at_ms + lease_ms);
                    let why = if forced {
                        format!("operator forced promotion; witness granted epoch {epoch}")
                    } else {
                        format!("primary lost; witness granted epoch {epoch}")
                    };
                    self.promote(Some(epoch), why, out);
                    // change_role cleared the lease; it is held from the request.
                    self.lease_until_ms = Some(sent_at_ms + lease_ms);
                    self.witness_heard_ms = Some(self.now_ms);
                }
            }
            Reply::Denied { reason } => match request {
                Request::Promote { .. } => {
                    // Retried after `witness_retry_ms` from the request.
                    self.forced_grant = false;
                    if self.role == Role::Standby {
                        self.reason = format!("witness refused promotion: {reason}");
                    }
                }
                Request::Renew { epoch }
                | Request::MarkOutdated { epoch }
                | Request::ClearOutdated { epoch }
                    if self.role == Role::Primary && epoch == epoch_now =>
                {
                    // Another node holds the lease: this one no longer leads.
                    self.step_down(format!("witness: {reason}"), out);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_switchover(&mut self, id: u64, then_stop: bool, out: &mut Vec<Output>) {
        let reply = |out: &mut Vec<Output>, result| {
            if id != u64::MAX {
                out.push(Output::Reply { id, result });
            }
        };
        if self.role != Role::Primary {
            return reply(
                out,
                Err("this node is not primary: run `escadm ha switchover` on the primary".into()),
            );
        }
        if self.switching.is_some() {
            return reply(out, Err("a switchover is already in progress".into()));
        }
        if !self.follower_in_sync() {
            return reply(
                out,
                Err("no in-sync standby to hand over to: check `escadm status --v`".into()),
            );
        }
        self.switching = Some(Switching {
            id: (id != u64::MAX).then_some(id),
            since_ms: self.now_ms,
            then_stop,
        });
    }

    fn on_admin_promote(&mut self, id: u64, force: bool, out: &mut Vec<Output>) {
        let reply = |out: &mut Vec<Output>, result| out.push(Output::Reply { id, result });
        match self.role {
            Role::Primary => return reply(out, Ok("already primary".into())),
            Role::Fault | Role::Init => {
                return reply(
                    out,
                    Err(format!(
                        "this node is {:?}: {}",
                        self.role,
                        self.fault_reason().unwrap_or_else(|| "starting".into())
                    )),
                )
            }
            Role::Standby => {}
        }
        let Some(r) = self.repl.clone() else {
            return reply(out, Err("the replication core has not reported yet".into()));
        };
        if self.cfg.witness {
            // Even a forced promotion goes through the witness, which
            // bumps the epoch and takes the lease from the old primary.
            self.forced_grant = force;
            self.request_grant(&r, force, out);
            return reply(
                out,
                Ok("promotion requested from the witness; see `escadm status`".into()),
            );
        }
        if let Some(why) = &r.blocker {
            if !force {
                return reply(
                    out,
                    Err(format!(
                        "promotion refused: {why}. Check `escadm status --v`; `--force` promotes anyway"
                    )),
                );
            }
        }
        let why = if force {
            "operator: escadm ha promote --force"
        } else {
            "operator: escadm ha promote"
        };
        // A forced promotion is not checked again by the core.
        self.promote_as(None, !force, why.into(), out);
        reply(out, Ok("promoted to primary".into()))
    }

    fn request_grant(&mut self, r: &ReplView, force: bool, out: &mut Vec<Output>) {
        self.grant_sent_ms = Some(self.now_ms);
        self.grant_in_flight = true;
        out.push(Output::ToWitness(Request::Promote {
            epoch: r.epoch,
            last_epoch: r.last_epoch,
            last_index: r.last_index,
            force,
        }));
    }

    fn promote(&mut self, epoch: Option<u64>, reason: String, out: &mut Vec<Output>) {
        self.promote_as(epoch, true, reason, out)
    }

    fn promote_as(
        &mut self,
        epoch: Option<u64>,
        checked: bool,
        reason: String,
        out: &mut Vec<Output>,
    ) {
        self.awaiting_primary = Some((true, self.now_ms));
        self.term = epoch;
        out.push(Output::Promote {
            epoch,
            checked: checked && epoch.is_none(),
            reason: reason.clone(),
        });
        self.change_role(Role::Primary, reason, out);
    }

    /// A primary that gives up also gives its lease up, so the standby's
    /// grant need not wait for it to run out (once per term).
    fn release_lease(&mut self, out: &mut Vec<Output>) {
        if self.cfg.witness {
            if let Some(epoch) = self.term.take() {
                out.push(Output::ToWitness(Request::Release { epoch }));
            }
        }
    }

    fn step_down(&mut self, reason: String, out: &mut Vec<Output>) {
        self.awaiting_primary = Some((false, self.now_ms));
        self.release_lease(out);
        let may_commit_alone =
            self.alone_cmd.0 || self.repl.as_ref().is_some_and(|r| r.commit_alone);
        if self.cfg.witness && may_commit_alone {
            self.command_alone(false, out);
        }
        out.push(Output::Demote {
            reason: reason.clone(),
        });
        self.switching = None;
        let to = if self.fault_reason().is_some() {
            Role::Fault
        } else {
            Role::Standby
        };
        self.change_role(to, reason, out);
    }

    fn command_alone(&mut self, on: bool, out: &mut Vec<Output>) {
        self.alone_cmd = (on, self.alone_cmd.1 + 1);
        out.push(Output::CommitAlone {
            on,
            seq: self.alone_cmd.1,
        });
    }

    /// An answer of the witness arrived within the last three renew
    /// intervals (arrival, not send time: a slow witness still counts as
    /// heard). A primary asks for the outdated mark only then: when the
    /// witness hears it but it does not hear the witness (a one-way
    /// partition), a mark it would never learn of would still bar the
    /// standby from every grant, and no node could lead until the partition
    /// heals. Without the mark it cannot commit alone; it steps down when
    /// its lease runs out, and the standby is granted. Validation keeps
    /// three renew intervals below the replication timeout, so a deaf
    /// primary has stopped hearing the witness for longer than this when it
    /// finds its standby gone.
    fn witness_answers(&self, now: u64) -> bool {
        self.witness_heard_ms
            .is_some_and(|t| now < t + 3 * self.cfg.renew_interval_ms)
    }

    /// Another promotion request may go out: the last one was answered (or
    /// its answer is overdue) and the retry interval passed. One at a time,
    /// since each grant bumps the witness's epoch.
    fn grant_due(&self) -> bool {
        self.grant_due_every(self.cfg.witness_retry_ms)
    }

    fn grant_due_every(&self, retry_ms: u64) -> bool {
        Self::due(self.grant_sent_ms, self.now_ms, retry_ms)
            && (!self.grant_in_flight
                || Self::due(self.grant_sent_ms, self.now_ms, GRANT_ANSWER_MS))
    }

    fn due(sent: Option<u64>, now: u64, every: u64) -> bool {
        sent.is_none_or(|s| now >= s + every)
    }

    /// Brings the role in line with what is known now.
    fn reconcile(&mut self, out: &mut Vec<Output>) {
        let now = self.now_ms;
        if let Some((_, since)) = self.awaiting_primary {
            // A command the core did not carry out (it refused the epoch):
            // stop waiting; the view decides.
            if now >= since + 5_000 {
                self.awaiting_primary = None;
            }
        }
        let Some(r) = self.repl.clone() else {
            return;
        };
        let fault = self.fault_reason();
        match self.role {
            Role::Init => {
                if let Some(f) = fault {
                    self.change_role(Role::Fault, f, out);
                } else if self.cfg.initial_primary
                    && r.epoch == 0
                    && r.last_index == 0
                    && (self.cfg.witness || !self.cfg.auto_takeover)
                {
                    // A fresh store told to start as primary. Two-node mode
                    // with a failure detector ignores it: a node whose disk
                    // was replaced would otherwise lead with nothing; the
                    // cold-start rule (fresher log, then the lower name)
                    // elects the first primary instead.
                    self.change_role(Role::Standby, "started".into(), out);
                    if self.cfg.witness {
                        self.request_grant(&r, false, out);
                    } else {
                        // The operator's explicit word, not checked again.
                        self.promote_as(
                            None,
                            false,
                            "initial_role = \"primary\" in esc.toml (fresh store)".into(),
                            out,
                        );
                    }
                } else {
                    self.change_role(
                        Role::Standby,
                        "started: a node with data comes back as standby".into(),
                        out,
                    );
                }
            }
            Role::Fault => {
                if fault.is_none() {
                    self.change_role(Role::Standby, "health restored".into(), out);
                }
            }
            Role::Standby => {
                if let Some(f) = fault {
                    self.change_role(Role::Fault, f, out);
                } else if r.primary && self.awaiting_primary.is_none() {
                    // Cannot happen unless something bypassed the authority.
                    out.push(Output::Demote {
                        reason: "the role authority holds this node as standby".into(),
                    });
                    self.awaiting_primary = Some((false, now));
                } else if !self.stopping && self.awaiting_primary.is_none() {
                    self.maybe_take_over(&r, out);
                }
            }
            Role::Primary => {
                if let Some(f) = fault {
                    self.step_down(f, out);
                } else if !r.primary && self.awaiting_primary.is_none() {
                    self.change_role(
                        Role::Standby,
                        "the replication core stepped down: a peer has a higher epoch".into(),
                        out,
                    );
                } else if r.primary {
                    self.primary_duties(&r, out);
                }
            }
        }
        if self.stopping && !self.stopped && self.switching.is_none() {
            if self.role == Role::Primary {
                self.step_down("graceful stop".into(), out);
            }
            if self.holding_vip() {
                // Handed over: stop once the new primary advertises (the
                // VIP then moves without a gap), `VIP_HOLD_MS` at most.
                self.sync_commands(out);
                return;
            }
            self.stopped = true;
            out.push(Output::StateFile(StateWord::Stop));
            self.sync_commands(out);
            out.push(Output::ReadyToStop);
            return;
        }
        self.sync_commands(out);
    }

    /// A standby decides whether to take over.
    fn maybe_take_over(&mut self, r: &ReplView, out: &mut Vec<Output>) {
        // Witness mode: direct evidence that the primary stopped leading,
        // which the witness can confirm at once (it grants only a lapsed or
        // released lease, so asking on it is safe):
        // - the primary's kernel closed the link: its process died (its
        //   witness connection closed too, which ends its lease) or it
        //   closed the link itself;
        // - the master we hear advertises a standby's priority: the
        //   primary stepped down (and released its lease), though its
        //   link may still look alive (a one-way partition into it: its
        //   heartbeats still arrive while it hears nothing).
        // A SIGKILL of escd then costs a round trip, not the
        // Master_Down_Interval or the replication timeout. Two-node mode
        // has no arbiter: neither proves the primary stopped writing, so
        // both detectors must agree there.
        let closed = self.cfg.witness && r.peer_closed;
        let stepped_down = self.cfg.witness
            && self.vrrp.is_some_and(|v| {
                v.state == VrrpState::Backup
                    && v.master_priority.is_some_and(|p| p < PRIMARY_PRIORITY)
            });
        let gone = closed || stepped_down;
        self.gone_since_ms = gone.then(|| self.gone_since_ms.unwrap_or(self.now_ms));
        if self
            .handed_over
            .is_some_and(|(_, epoch)| r.linked && r.epoch > epoch)
        {
            // Found by the lab's chaos runs: the new primary died a second
            // after the switchover and this node waited out the timeout.
            self.handed_over = None;
        }
        if self
            .handed_over
            .is_some_and(|(t, _)| self.now_ms < t + self.cfg.switchover_timeout_ms)
            && !r.handover
        {
            return;
        }
        if self
            .refused_at_ms
            .is_some_and(|t| self.now_ms < t + 10 * self.cfg.witness_retry_ms)
        {
            return;
        }
        if r.handover {
            // Planned handover: the primary drained and stepped down.
            if self.cfg.witness {
                if self.grant_due_every(HANDOVER_GRANT_RETRY_MS) {
                    self.request_grant(r, false, out);
                }
            } else if r.blocker.is_none() {
                self.promote(None, "the primary handed over (switchover)".into(), out);
            }
            return;
        }
        if !self.cfg.auto_takeover || (r.linked && !stepped_down) {
            return;
        }
        // Both detectors agree: no replication link (or, in witness mode,
        // a primary that stepped down), and VRRP says the primary is down
        // (or no VRRP is configured): we are VRRP master, or the master we
        // hear advertises a standby's priority (no primary is alive: in
        // witness mode the one the witness favours may be us). Or the
        // primary's kernel closed the link (witness mode, above).
        let vrrp_says_down = !self.cfg.vrrp
            || stepped_down
            || self.vrrp.is_some_and(|v| v.state == VrrpState::Master);
        if !vrrp_says_down && !closed {
            return;
        }
        if self.cfg.witness {
            let fast = self
                .gone_since_ms
                .is_some_and(|t| self.now_ms < t + GONE_FAST_MS);
            let due = if fast {
                self.grant_due_every(GONE_GRANT_RETRY_MS)
            } else {
                self.grant_due()
            };
            if due {
                self.request_grant(r, false, out);
            }
        } else if r.blocker.is_none() {
            self.promote(
                None,
                "primary lost (VRRP master down and replication link gone); this copy was in sync"
                    .into(),
                out,
            );
        }
    }

    /// Lease, outdated mark, switchover and contest checks of a primary.
    fn primary_duties(&mut self, r: &ReplView, out: &mut Vec<Output>) {
        let now = self.now_ms;
        if !self.cfg.witness {
            // Another node advertises as primary (two-node mode: a
            // partition, one-way or healed): it may have been promoted and
            // acknowledged writes this node lacks, so this node stops at
            // once, before its alone-grace could let it commit without its
            // follower. Both may step down; the cold-start rule then picks
            // the fresher log. Adverts in flight from before this node's
            // promotion are ignored for `contest_grace_ms`.
            let heard = self.vrrp.map_or(0, |v| v.primary_adverts);
            if now < self.since_ms + self.cfg.contest_grace_ms {
                self.primary_adverts_seen = heard;
            } else if heard > self.primary_adverts_seen {
                return self.step_down(
                    "another node advertises as primary: stepping down (two-node mode)".into(),
                    out,
                );
            }
        } else {
            let Some(term) = self.term else {
                return; // the core has not reported its epoch yet
            };
            let lease_valid = self.lease_until_ms.is_some_and(|u| now < u);
            if !lease_valid && !r.in_sync {
                return self.step_down(
                    "lease at the witness ran out and no standby is in sync: stepping down".into(),
                    out,
                );
            }
            if Self::due(self.renew_sent_ms, now, self.cfg.renew_interval_ms) {
                self.renew_sent_ms = Some(now);
                out.push(Output::ToWitness(Request::Renew { epoch: term }));
            }
            // Whether the core carried out our last CommitAlone command.
            let confirmed = r.commit_alone_seq == self.alone_cmd.1;
            if r.in_sync {
                // Stop committing alone first, then clear the mark: the
                // mark must never be clear while the core may commit alone,
                // so the clear waits until the core confirmed the stop.
                // From the moment a clear is sent the mark counts as gone
                // (it may take effect at any time), so committing alone
                // again needs a fresh mark requested after it.
                if self.alone_cmd.0 {
                    self.command_alone(false, out);
                } else if confirmed
                    && !r.commit_alone
                    && (self.mark == Mark::Marked || self.clear_pending)
                    && Self::due(self.mark_sent_ms, now, self.cfg.witness_retry_ms)
                {
                    self.mark = Mark::Clear;
                    self.clear_pending = true;
                    self.mark_sent_ms = Some(now);
                    self.last_clear_sent_ms = Some(now);
                    out.push(Output::ToWitness(Request::ClearOutdated { epoch: term }));
                }
            } else if self.mark == Mark::Marked {
                if !self.alone_cmd.0 {
                    self.command_alone(true, out);
                }
            } else if Self::due(self.mark_sent_ms, now, self.cfg.witness_retry_ms)
                && self.witness_answers(now)
            {
                self.mark_sent_ms = Some(now);
                out.push(Output::ToWitness(Request::MarkOutdated { epoch: term }));
            }
        }
        if let Some(s) = self.switching.clone() {
            if r.drained && r.in_sync && r.linked {
                // The release leaves before the Handover: the standby asks
                // for its grant as soon as the Handover reaches it, and a
                // request that beats the release is refused (found by the
                // switchover benchmark: a 100 ms retry in a third of runs).
                // Drained and no longer admitting, this node has nothing
                // left to commit that needs the lease.
                self.release_lease(out);
                out.push(Output::Handover);
                if let Some(id) = s.id {
                    out.push(Output::Reply {
                        id,
                        result: Ok(
                            "handed over: the standby takes over; this node is standby".into()
                        ),
                    });
                }
                // Keep the VIP (answering 503) until the new primary
                // advertises, so no request falls into a gap where nobody
                // holds it (a planned handover loses no time to ARP).
                self.vip_hold = Some((
                    now + VIP_HOLD_MS,
                    self.vrrp.map_or(0, |v| v.primary_adverts),
                ));
                let epoch = r.epoch;
                self.step_down("switchover: handed over to the standby".into(), out);
                self.handed_over = Some((now, epoch));
                if s.then_stop {
                    self.stopping = true;
                }
            } else if now >= s.since_ms + self.cfg.switchover_timeout_ms || !r.linked {
                self.switching = None;
                if s.then_stop {
                    // Stop anyway: the standby takes over as after a failure.
                    return;
                }
                if let Some(id) = s.id {
                    out.push(Output::Reply {
                        id,
                        result: Err(
                            "switchover aborted: the standby did not hold every entry in time; this node stays primary"
                                .into(),
                        ),
                    });
                }
            }
        }
    }
}
