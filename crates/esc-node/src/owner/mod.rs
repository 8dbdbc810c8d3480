//! The owner task: the one loop that holds the replication core
//! ([`esc_repl::Core`]) and the connection handles, feeds the core every
//! input, and executes its outputs in one place ([`Owner::exec`]); every
//! other task only sends it events (style principle 8).
//!
//! ```text
//!   client writes, admin ─Event──┐
//!   HA agent ─Event::Ha (authority's Output, unbounded)──┤
//!   replication links ─NetEvent──┼─> Owner::input ─> Core::handle ─> Owner::exec
//!   storage worker ─StorageEvent─┤                                 │
//!   tick ────────────────────────┘    Job (bounded) ─> storage  <──┤
//!                                     Send ─> conn writers      <──┤
//!                                     RoleChanged ─> role watches <┘
//!   ReplView ─> HA agent;  Position, LinkRole ─> link tasks;  peer_in_sync ─> health
//! ```

use crate::logging::{ADMIN, HA};
use crate::metrics::Counters;
use crate::net::{self, ConnId, NetEvent};
use crate::shared::{unix_ms, AgentCmd, Event, OwnerRequest, RoleInfo, WriteResult};
use crate::storage::{self, Job, StorageEvent};
use esc_config::Config;
use esc_proto::status::{HaStatus, NodeStatus, Transition};
use esc_proto::AdminResponse;
use esc_repl::{Core, Input, Output, Role, Token};
use esc_wire::Message;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

/// Why the owner's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down (signal).
    Stopped,
    /// `escadm reload`: the new esc.toml is valid; start again with it.
    Reload,
}

struct ConnHandle {
    /// Frames for the writer; `tx.close()` ends the link (see `disconnect`).
    tx: net::ConnTx,
    reader: AbortHandle,
    peer_name: String,
}

/// The queues the owner's loop reads.
pub struct Inbox {
    pub events: mpsc::Receiver<Event>,
    /// The HA agent's commands (never full: see `Shared::ha_events`).
    pub ha: mpsc::UnboundedReceiver<Event>,
    pub net: mpsc::Receiver<NetEvent>,
    pub storage: mpsc::UnboundedReceiver<StorageEvent>,
}

/// What the owner publishes to the other tasks.
pub struct Outlets {
    pub role: watch::Sender<RoleInfo>,
    pub link_role: watch::Sender<net::LinkRole>,
    pub position: watch::Sender<net::Position>,
    pub peer_in_sync: watch::Sender<Option<bool>>,
    pub agent_cmds: mpsc::Sender<AgentCmd>,
    pub agent_status: watch::Receiver<HaStatus>,
}

pub struct Owner {
    core: Core,
    store: Arc<crate::shared::NodeStore>,
    jobs: storage::Jobs,
    conns: HashMap<ConnId, ConnHandle>,
    responders: HashMap<Token, oneshot::Sender<WriteResult>>,
    next_token: Token,
    /// The link a snapshot is being received on (its chunks are staged).
    snapshot_conn: Option<ConnId>,
    /// Snapshot streams running, by link (one at a time per link).
    snapshot_streams: HashMap<ConnId, Arc<std::sync::atomic::AtomicBool>>,
    /// How long a snapshot stream may wait for the follower to take a
    /// chunk before it gives up (it pins a read transaction meanwhile).
    snapshot_stall_max: Duration,
    out: Outlets,
    counters: Arc<Counters>,
    start: Instant,
    last_transition: Option<Transition>,
    node_name: String,
    home: PathBuf,
    peer_addr: Option<std::net::SocketAddr>,
    /// The last view sent to the role authority (sent again on change only).
    last_view: Option<esc_authority::ReplView>,
    pair: bool,
    allow_fault_injection: bool,
    api_dead: Arc<watch::Sender<bool>>,
    /// The store failed: this process neither persists nor follows again
    /// (a restart recovers the store at open).
    store_failed: bool,
    /// Standby: the link that carried the primary's `Append`s was ended by
    /// the primary's kernel (end of stream or reset), not by a timeout, and
    /// no link has carried them since (`ReplView::peer_closed`).
    upstream_closed: bool,
}

/// What the owner is built from.
pub struct OwnerParts {
    pub core: Core,
    pub store: Arc<crate::shared::NodeStore>,
    pub jobs: storage::Jobs,
    pub out: Outlets,
    pub counters: Arc<Counters>,
    pub cfg: Config,
    pub home: PathBuf,
    pub api_dead: Arc<watch::Sender<bool>>,
}

/// What the role authority needs to know of the replication core.
/// `peer_closed` is `Owner::upstream_closed`, which `report_view` keeps
/// to a standby without a link.
fn repl_view(core: &Core, peer_closed: bool) -> esc_authority::ReplView {
    let (last_epoch, last_index) = core.durable_position();
    esc_authority::ReplView {
        primary: core.role() == Role::Primary,
        epoch: core.epoch(),
        last_epoch,
        last_index,
        linked: core.linked(),
        peer_closed,
        in_sync: core.in_sync(),
        blocker: core.promotion_blocker(),
        drained: core.drained(),
        commit_alone: core.commit_alone(),
        commit_alone_seq: core.commit_alone_seq(),
        promotions_refused: core.promotions_refused(),
        handover: core.handed_over(),
    }
}

impl Owner {
    pub fn new(p: OwnerParts) -> Owner {
        Owner {
            core: p.core,
            store: p.store,
            jobs: p.jobs,
            conns: HashMap::new(),
            responders: HashMap::new(),
            next_token: 0,
            snapshot_conn: None,
            snapshot_streams: HashMap::new(),
            snapshot_stall_max: Duration::from_millis(p.cfg.replication.peer_timeout_ms)
                .max(Duration::from_secs(5)),
            out: p.out,
            counters: p.counters,
            start: Instant::now(),
            last_transition: None,
            node_name: p.cfg.node_name.clone(),
            home: p.home,
            peer_addr: p.cfg.replication.peer,
            last_view: None,
            pair: p.cfg.replication.peer.is_some(),
            allow_fault_injection: p.cfg.debug.allow_fault_injection,
            api_dead: p.api_dead,
            store_failed: false,
            upstream_closed: false,
        }
    }

    /// Starts the core; a fresh standalone node told to be primary promotes.
    pub fn start(&mut self, promote_standalone: bool) {
        let first = self.core.start(self.now_ms());
        self.exec(first);
        if promote_standalone {
            // A standalone node has no authority to ask.
            self.input(Input::Promote {
                reason: "initial_role = \"primary\" in esc.toml (fresh store)".into(),
            });
        }
        self.report_view();
    }

    /// The loop: until `shutdown` (then a bounded graceful handover), a
    /// reload, or a fatal error.
    pub async fn run(
        mut self,
        mut inbox: Inbox,
        tick: Duration,
        stop_grace: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> crate::Result<Exit> {
        let mut tick = tokio::time::interval(tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // A graceful stop lets the agent hand over first (a primary drains
        // and passes its role to the in-sync standby), bounded in time.
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        loop {
            let deadline = stop_deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            // Owner events come from two queues: the agent's role commands
            // and everything else (client writes, admin); one handler.
            let event = tokio::select! {
                _ = &mut shutdown, if stop_deadline.is_none() => {
                    info!(target: HA, "stop requested: handing over first if primary");
                    stop_deadline = Some(tokio::time::Instant::now() + stop_grace);
                    let _ = self.out.agent_cmds.try_send(AgentCmd::Stop);
                    None
                }
                _ = tokio::time::sleep_until(deadline), if stop_deadline.is_some() => {
                    warn!(target: HA, "handover did not finish in time; stopping anyway");
                    return Ok(Exit::Stopped);
                }
                _ = tick.tick() => {
                    self.input(Input::Tick);
                    None
                }
                Some(ev) = inbox.storage.recv() => {
                    self.on_storage(ev)?;
                    None
                }
                Some(ev) = inbox.net.recv() => {
                    self.on_net(ev);
                    None
                }
                Some(ev) = inbox.ha.recv() => Some(ev),
                Some(ev) = inbox.events.recv() => Some(ev),
            };
            if let Some(ev) = event {
                if let Some(exit) = self.on_event(ev)? {
                    return Ok(exit);
                }
            }
        }
    }

    /// Why a fault-injection command is refused, if it is.
    fn fault_injection_refusal(&self) -> Option<AdminResponse> {
        (!self.allow_fault_injection).then(|| {
            AdminResponse::refused(
                "fault injection is off: set [debug] allow_fault_injection = true (lab only)",
            )
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn input(&mut self, input: Input) {
        let now = self.now_ms();
        let out = self.core.handle(now, input);
        self.exec(out);
        let link = net::LinkRole {
            role: self.core.role(),
            taking_over: self.core.handed_over(),
        };
        self.out
            .link_role
            .send_if_modified(|r| std::mem::replace(r, link) != link);
        self.report_view();
    }

    /// Tells the role authority, the link tasks and the health checks what
    /// the replication core looks like now, when it changed.
    fn report_view(&mut self) {
        if !self.pair {
            return;
        }
        let in_sync = Some(self.core.status().peer.in_sync && self.core.linked());
        self.out
            .peer_in_sync
            .send_if_modified(|p| std::mem::replace(p, in_sync) != in_sync);
        let (last_epoch, last_index) = self.core.durable_position();
        let pos = net::Position {
            epoch: self.core.epoch(),
            last_index,
            last_epoch,
            applied_index: self.core.commit_index(),
        };
        self.out
            .position
            .send_if_modified(|p| std::mem::replace(p, pos) != pos);
        // Only a standby's lost upstream counts; a promotion, a link
        // carrying Appends again, or a role of any other kind clears it.
        if self.core.linked() || self.core.role() != Role::Standby {
            self.upstream_closed = false;
        }
        let v = repl_view(&self.core, self.upstream_closed);
        if self.last_view.as_ref() != Some(&v) {
            // A full queue drops the view; the next change sends a fresh one.
            if self
                .out
                .agent_cmds
                .try_send(AgentCmd::Repl(v.clone()))
                .is_ok()
            {
                self.last_view = Some(v);
            }
        }
    }

    fn job(&self, job: Job) {
        // Bounded: waits for the worker when it is JOBS_MAX behind (it
        // never waits on this task). It only stops when the node does.
        self.jobs.send(job);
    }

    /// The one executor of the replication core's outputs.
    fn exec(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Persist {
                    truncate_after,
                    entries,
                    epoch,
                } => self.job(Job::Persist {
                    truncate_after,
                    entries,
                    epoch,
                }),
                Output::Apply { up_to, replies } => {
                    let replies = replies
                        .into_iter()
                        .filter_map(|(i, t)| self.responders.remove(&t).map(|r| (i, r)))
                        .collect();
                    self.job(Job::Apply { up_to, replies })
                }
                Output::Compact { up_to } => self.job(Job::Compact { up_to }),
                Output::SaveRecovery { from } => self.job(Job::SaveRecovery { from }),
                Output::InstallSnapshot {
                    conn,
                    index,
                    index_epoch,
                } => {
                    if self.snapshot_conn == Some(conn) {
                        self.snapshot_conn = None;
                        info!(target: HA, index, "installing the snapshot received from the primary");
                        self.job(Job::Install { index, index_epoch });
                    } else {
                        // The core waits for an install that cannot come
                        // (nothing was staged for this link): start over.
                        self.disconnect(
                            conn,
                            "a snapshot to install was not staged on this link".into(),
                        );
                    }
                }
                Output::Send { conn, msg } => {
                    if let Some(c) = self.conns.get(&conn) {
                        if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(msg) {
                            self.disconnect(conn, "peer too slow: send queue full".into());
                        }
                    }
                }
                Output::SendEntries {
                    conn,
                    epoch,
                    prev_index,
                    prev_epoch,
                    commit_index,
                    from,
                    to,
                } => {
                    if let Some(c) = self.conns.get(&conn) {
                        self.job(Job::SendEntries {
                            tx: c.tx.clone(),
                            msg: Message::Append {
                                epoch,
                                prev_index,
                                prev_epoch,
                                commit_index,
                                entries: Vec::new(),
                            },
                            from,
                            to,
                        });
                    }
                }
                Output::SendSnapshot { conn, epoch } => {
                    if let Some(c) = self.conns.get(&conn) {
                        // One stream per link: a second one would restart the
                        // follower's staging in the middle of the first.
                        let running = self.snapshot_streams.entry(conn).or_default().clone();
                        if running.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            warn!(target: HA, peer = %c.peer_name, "a snapshot is already streaming on this link; not starting another");
                            continue;
                        }
                        info!(target: HA, peer = %c.peer_name, "follower needs a snapshot; streaming it");
                        let tx = c.tx.clone();
                        let store = self.store.clone();
                        let stall_max = self.snapshot_stall_max;
                        tokio::task::spawn_blocking(move || {
                            storage::send_snapshot(&store, epoch, &tx, stall_max);
                            running.store(false, std::sync::atomic::Ordering::SeqCst);
                        });
                    }
                }
                Output::Disconnect { conn, reason } => self.disconnect(conn, reason),
                Output::Refuse { token, refusal } => {
                    Counters::bump(&self.counters.writes_refused);
                    if let Some(r) = self.responders.remove(&token) {
                        let _ = r.send(Err(refusal));
                    }
                }
                Output::RoleChanged {
                    role,
                    epoch,
                    reason,
                } => {
                    info!(target: HA, ?role, epoch, %reason, "role change");
                    self.last_transition = Some(Transition {
                        at_unix_ms: unix_ms(),
                        role: crate::status::repl_role(role),
                        epoch,
                        reason,
                    });
                    let _ = self.out.role.send(RoleInfo { role, epoch });
                }
            }
        }
    }

    /// A snapshot being received will not be installed: empty the staging
    /// slot (staging from nothing again is what `StageBegin` does).
    fn drop_stage(&mut self) {
        self.snapshot_conn = None;
        self.job(Job::StageBegin);
    }

    fn disconnect(&mut self, conn: ConnId, reason: String) {
        if let Some(c) = self.conns.remove(&conn) {
            info!(target: HA, conn, peer = %c.peer_name, %reason, "closing replication link");
            c.reader.abort();
            // Dropping our sender is not enough: a snapshot stream or a
            // catch-up job may hold clones. Closing ends the writer whoever
            // holds one, after it sent what is already queued (at most
            // net::CLOSE_DRAIN): a `Handover` sent right before a demote
            // that disconnects still reaches the peer.
            c.tx.close();
            self.snapshot_streams.remove(&conn);
            if self.snapshot_conn == Some(conn) {
                self.drop_stage();
            }
            self.input(Input::PeerDown { conn });
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Up { tx, reader, .. } if self.store_failed => {
                // A node that cannot persist must not follow: an in-sync
                // standby that never acknowledges would stall every commit
                // of the primary (it commits alone once the link is gone).
                reader.abort();
                tx.close();
            }
            NetEvent::Up {
                conn,
                tx,
                reader,
                peer_name,
                ..
            } => {
                self.conns.insert(
                    conn,
                    ConnHandle {
                        tx,
                        reader,
                        peer_name,
                    },
                );
                self.input(Input::PeerUp { conn });
            }
            NetEvent::Received {
                conn,
                msg:
                    Message::Status {
                        last_epoch,
                        last_index,
                        ..
                    },
            } if self.core.role() == Role::Standby => {
                // A standby peer answered our Status with its own (cold start).
                if let Some(name) = self.conns.get(&conn).map(|c| c.peer_name.clone()) {
                    self.peer_position(&name, last_epoch, last_index);
                }
            }
            NetEvent::Received { conn, msg } => {
                if self.conns.contains_key(&conn) {
                    let end = matches!(msg, Message::SnapshotEnd { .. });
                    if let Message::SnapshotBegin { .. } = msg {
                        // Staged as it arrives, in order with the other
                        // jobs: never held whole in memory.
                        self.snapshot_conn = Some(conn);
                        self.job(Job::StageBegin);
                    }
                    self.input(Input::Received { conn, msg });
                    if end && self.snapshot_conn == Some(conn) {
                        // The core kept its own state: drop the staged copy
                        // (it would hold a second copy of the state on disk).
                        self.drop_stage();
                    }
                }
            }
            NetEvent::SnapshotChunk {
                conn,
                items,
                window,
            } => {
                if self.snapshot_conn == Some(conn) && self.conns.contains_key(&conn) {
                    self.job(Job::StageChunk { items, window });
                    // The stream is liveness: a snapshot longer than the
                    // peer timeout must not time the primary out.
                    self.input(Input::Received {
                        conn,
                        msg: Message::SnapshotChunk { items: Vec::new() },
                    });
                } else {
                    Counters::bump(&self.counters.frames_unexpected);
                }
            }
            NetEvent::PeerPosition {
                peer_name,
                last_epoch,
                last_index,
            } => {
                self.peer_position(&peer_name, last_epoch, last_index);
            }
            NetEvent::Down {
                conn,
                reason,
                by_peer,
            } => {
                if let Some(c) = self.conns.remove(&conn) {
                    info!(target: HA, conn, peer = %c.peer_name, %reason, by_peer, "replication link down");
                    // Set before the core hears of it, so the view that
                    // reports the link gone carries it; a close of another
                    // link than the upstream leaves the core linked, and
                    // `report_view` clears it again.
                    if by_peer && self.core.role() == Role::Standby && self.core.linked() {
                        self.upstream_closed = true;
                    }
                    self.snapshot_streams.remove(&conn);
                    if self.snapshot_conn == Some(conn) {
                        self.drop_stage();
                    }
                    self.input(Input::PeerDown { conn });
                }
            }
        }
    }

    /// Cold start: a standby peer's log position. On equal logs the node
    /// with the lower name leads, so both never contend at once.
    fn peer_position(&mut self, peer_name: &str, last_epoch: u64, last_index: u64) {
        info!(target: HA, peer = %peer_name, last_epoch, last_index, "standby peer's log position");
        self.input(Input::PeerPosition {
            last_epoch,
            last_index,
            tie_goes_to_peer: peer_name < self.node_name.as_str(),
        });
    }

    fn on_storage(&mut self, ev: StorageEvent) -> crate::Result<()> {
        match ev {
            StorageEvent::Persisted { last_index } => self.input(Input::Persisted { last_index }),
            StorageEvent::SnapshotInstalled { index, index_epoch } => {
                info!(target: HA, index, "snapshot installed");
                self.input(Input::SnapshotInstalled { index, index_epoch });
            }
            StorageEvent::Failed { error } => {
                Counters::bump(&self.counters.store_errors);
                self.store_failed = true;
                if self.pair {
                    // In a pair the node stays up as FAULT (it says why in
                    // `escadm status`) and the standby takes over. The agent
                    // hears why before it sees the core demoted.
                    error!(target: HA, %error, "store failed; this node goes FAULT");
                    let _ = self
                        .out
                        .agent_cmds
                        .try_send(AgentCmd::StoreFailed(error.clone()));
                }
                self.input(Input::Demote {
                    reason: format!("store failure: {error}"),
                });
                if !self.pair {
                    error!(target: HA, %error, "store failed; stopping");
                    return Err(crate::Error::StoreFailed(error));
                }
                // Only once demoted: a primary losing its standby would ask
                // the witness to mark it outdated, barring the takeover.
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    self.disconnect(conn, format!("the store failed: {error}"));
                }
            }
        }
        Ok(())
    }

    /// Handles one event; `Some(exit)` ends the node's loop.
    fn on_event(&mut self, ev: Event) -> crate::Result<Option<Exit>> {
        match ev {
            Event::Propose { payload, reply } => {
                self.next_token += 1;
                let token = self.next_token;
                self.responders.insert(token, reply);
                self.input(Input::Propose { token, payload });
            }
            Event::Ping { reply } => {
                let _ = reply.send(());
            }
            Event::Ha(cmd) => self.on_ha(cmd),
            Event::HaReadyToStop => return Ok(Some(Exit::Stopped)),
            Event::Admin { req, reply } => self.on_admin(req, reply),
            // Sent by the admin task once the operator has its answer.
            Event::ReloadNow => return Ok(Some(Exit::Reload)),
        }
        Ok(None)
    }

    /// Carries out the role authority's commands on the replication core:
    /// the one translation of `esc_authority::Output` into core inputs.
    fn on_ha(&mut self, cmd: esc_authority::Output) {
        use esc_authority::Output as A;
        let input = match cmd {
            A::Promote {
                epoch: Some(epoch),
                reason,
                ..
            } => Input::PromoteInEpoch { epoch, reason },
            A::Promote {
                epoch: None,
                checked: true,
                reason,
            } => Input::PromoteIfSafe { reason },
            A::Promote {
                epoch: None,
                checked: false,
                reason,
            } => Input::Promote { reason },
            A::Demote { reason } => Input::Demote { reason },
            A::CommitAlone { on, seq } => Input::CommitAlone { on, seq },
            A::Handover => Input::Handover,
            // The agent carries out the rest itself.
            _ => return,
        };
        self.input(input);
    }

    /// Answers an admin request (a lab fault may then hang this task).
    fn on_admin(&mut self, req: OwnerRequest, reply: oneshot::Sender<AdminResponse>) {
        let mut hang = None;
        let resp = match req {
            OwnerRequest::Hang { seconds } => match self.fault_injection_refusal() {
                Some(refusal) => refusal,
                None => {
                    let seconds = seconds.clamp(1, 60);
                    warn!(target: ADMIN, seconds, "fault injection: the service hangs");
                    hang = Some(Duration::from_secs(seconds));
                    AdminResponse::done(format!("the service hangs for {seconds} s"))
                }
            },
            OwnerRequest::Status => AdminResponse::Status {
                status: Box::new(self.status()),
            },
            OwnerRequest::KillApi => match self.fault_injection_refusal() {
                Some(refusal) => refusal,
                None => {
                    warn!(target: ADMIN, "fault injection: the northbound API dies");
                    // The HA agent's API check fails from now on; the node
                    // goes FAULT and hands over until it is restarted.
                    self.api_dead.send_replace(true);
                    AdminResponse::done("the northbound API died: restart escd to bring it back")
                }
            },
            OwnerRequest::Reload => {
                // Only a valid configuration is applied; otherwise nothing changes.
                let checked = Config::load(&self.home)
                    .map_err(|e| e.to_string())
                    .and_then(|c| match &c.vrrp {
                        Some(v) => v.check_host().map_err(|(f, m)| format!("{f}: {m}")),
                        None => Ok(()),
                    });
                match checked {
                    Ok(()) => {
                        info!(target: ADMIN, "escadm reload: restarting with the new esc.toml");
                        AdminResponse::Reloading {
                            message: "reloading: escd restarts with the new configuration".into(),
                        }
                    }
                    Err(e) => {
                        warn!(target: ADMIN, error = %e, "escadm reload refused");
                        AdminResponse::refused(format!(
                            "the configuration is not valid, nothing changed: {e}"
                        ))
                    }
                }
            }
            OwnerRequest::Promote { reason, force } => self.promote(reason, force),
            OwnerRequest::Demote { reason } => {
                info!(target: ADMIN, %reason, "escadm ha demote");
                if self.core.role() == Role::Standby {
                    AdminResponse::done("already standby")
                } else {
                    self.input(Input::Demote {
                        reason: format!("operator: {reason}"),
                    });
                    AdminResponse::done("demoted to standby")
                }
            }
        };
        let _ = reply.send(resp);
        if let Some(d) = hang {
            // The fault itself: this task stops answering (the HA agent, on
            // its own thread, sees it as a failed probe).
            std::thread::sleep(d);
        }
    }

    /// `escadm ha promote` on a node without a peer (in a pair the role
    /// authority answers it).
    fn promote(&mut self, reason: String, force: bool) -> AdminResponse {
        info!(target: ADMIN, %reason, force, "escadm ha promote");
        if self.core.role() == Role::Primary {
            return AdminResponse::done("already primary");
        }
        if let Some(why) = self.core.promotion_blocker() {
            if !force {
                warn!(target: ADMIN, %why, "promotion refused");
                return AdminResponse::refused(format!(
                    "promotion refused: {why}. Check `escadm status --v`; `--force` promotes anyway"
                ));
            }
            warn!(target: ADMIN, %why, "promotion forced by the operator");
        }
        self.input(Input::Promote {
            reason: format!("operator: {reason}"),
        });
        AdminResponse::done("promoted to primary")
    }

    /// The node's status, O(1) in the managed state: every part is a field
    /// the cores keep, or a counter.
    fn status(&self) -> NodeStatus {
        NodeStatus {
            node_name: self.node_name.clone(),
            role: crate::status::repl_role(self.core.role()),
            epoch: self.core.epoch(),
            peer_address: self.peer_addr,
            replication: crate::status::replication(&self.core.status()),
            store: crate::status::store(&self.store.meta()),
            state: None,
            counters: self.counters.snapshot(),
            last_transition: self.last_transition.clone(),
            recovery_note: self.store.recovery_note.clone(),
            ha: self.out.agent_status.borrow().clone(),
            health: None,
            vim: None,
            monitor: None,
            sweep: None,
        }
    }
}
