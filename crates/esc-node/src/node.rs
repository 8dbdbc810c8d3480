//! Start-up, the owner task that drives [`esc_repl::Core`], and the storage
//! worker that executes its storage outputs in order.

use crate::admin::{self, AdminRequest, AdminResponse};
use crate::api;
use crate::logging::HA;
use crate::metrics::Counters;
use crate::net::{self, ConnId, NetCtx, NetEvent};
use esc_config::{Config, InitialRole, ReplicationMode};
use esc_repl::{Core, Input, LogView, Output, Refusal, Role, Token};
use esc_store::{Batch, Outcome, Store};
use esc_wire::msg::SNAPSHOT_CHUNK_ITEMS_MAX;
use esc_wire::{Entry, Message, SnapshotItem};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

/// Bytes of snapshot items per chunk frame (well under the frame bound).
const SNAPSHOT_CHUNK_BYTES_MAX: usize = 8 << 20;
/// Payload bytes of one catch-up frame (the core resumes after what arrived).
const SEND_ENTRIES_BYTES_MAX: usize = 8 << 20;
/// Events queued to the owner before senders wait.
const EVENT_QUEUE: usize = 65_536;

/// How to start a node.
pub struct NodeOptions {
    pub home: PathBuf,
    pub config: Config,
}

/// What a client write gets back.
pub type WriteResult = Result<Outcome, Refusal>;

/// Events into the owner task (besides network events).
pub enum Event {
    Propose {
        payload: Vec<u8>,
        reply: oneshot::Sender<WriteResult>,
    },
    Admin {
        req: AdminRequest,
        reply: oneshot::Sender<AdminResponse>,
    },
    Persisted {
        last_index: u64,
    },
    SnapshotInstalled {
        index: u64,
        index_epoch: u64,
    },
    StorageFailed {
        error: String,
    },
    /// `escadm reload` was accepted and answered: restart with the new file.
    ReloadNow,
    /// A command of the role authority (HA agent).
    Ha(crate::agent::HaCommand),
    /// The HA agent finished its part of a graceful stop (handover).
    HaReadyToStop,
}

/// Jobs for the storage worker, executed strictly in order.
enum Job {
    Write {
        batch: Batch,
        /// Clients answered straight from the worker once their entry is
        /// applied (one hop less than going back through the owner).
        replies: Vec<(u64, oneshot::Sender<WriteResult>)>,
    },
    SaveRecovery {
        from: u64,
    },
    Install {
        index: u64,
        index_epoch: u64,
        items: Vec<SnapshotItem>,
    },
    SendEntries {
        tx: net::ConnTx,
        msg: Message,
        from: u64,
        to: u64,
    },
}

/// The role and epoch, as the API and the network tasks see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoleInfo {
    pub role: Role,
    pub epoch: u64,
}

/// The last role transition, for `escadm status --v`.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub at_unix_ms: u64,
    pub role: Role,
    pub epoch: u64,
    pub reason: String,
}

struct ConnHandle {
    /// Frames for the writer; `tx.close()` ends the link (see `disconnect`).
    tx: net::ConnTx,
    reader: AbortHandle,
    peer_name: String,
}

/// Shared by the API and admin tasks.
#[derive(Clone)]
pub struct Shared {
    pub node_name: String,
    pub store: Arc<Store>,
    pub events: mpsc::Sender<Event>,
    /// The HA agent's commands to the owner task (`Event::Ha`,
    /// `Event::HaReadyToStop`): unbounded, so the agent never waits on a
    /// queue of client writes.
    pub ha_events: mpsc::UnboundedSender<Event>,
    pub role: watch::Receiver<RoleInfo>,
    pub counters: Arc<Counters>,
    pub data_dir: PathBuf,
    /// The northbound API's address (the health check connects to it).
    pub api_addr: std::net::SocketAddr,
    /// Northbound transactions in progress, by transaction id (`escadm ip_trans`).
    pub inflight: Arc<std::sync::Mutex<std::collections::BTreeMap<String, InFlight>>>,
    /// The role authority admits northbound writes (off while a switchover
    /// drains, while stopping, and on every node that is not primary).
    pub admission: Arc<std::sync::atomic::AtomicBool>,
    /// The role authority holds this node primary. Set by the HA agent, not
    /// the owner task, so a write waiting on a hung or deposed owner is
    /// answered (503, outcome unknown: resend with the same key) the moment
    /// the node stops leading, not at the client's timeout.
    pub leading: Arc<watch::Sender<bool>>,
    /// The HA agent's command channel and status (set once it runs).
    pub agent: Arc<std::sync::OnceLock<AgentLink>>,
    /// Set once the northbound API has died (lab fault injection, `escadm
    /// debug kill-api`): it stops listening and closes its connections for
    /// the rest of the process, as a crashed subsystem would.
    pub api_dead: Arc<watch::Sender<bool>>,
}

/// How the node's tasks reach the HA agent.
pub struct AgentLink {
    pub cmds: mpsc::Sender<crate::agent::AgentCmd>,
    pub status: watch::Receiver<crate::agent::AgentStatus>,
    /// A replication peer is configured: the agent arbitrates roles.
    pub pair: bool,
    pub switchover_timeout: Duration,
}

/// One northbound transaction in progress.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub operation: String,
    pub since_unix_ms: u64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a node until `shutdown` resolves or a fatal error stops it.
/// Why `run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down (signal).
    Stopped,
    /// `escadm reload`: the new esc.toml is valid; start again with it.
    Reload,
}

pub async fn run(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Exit> {
    let cfg = opts.config;
    let home = opts.home;
    let data_dir = Config::resolve(&home, &cfg.store.data_dir);
    // No default secret: a node without one has no replication link and
    // does not listen for one (it runs standalone).
    let secret = cfg.load_secret(&home)?.map(Arc::new);
    let store = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await?
            .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", data_dir.display()))?
    };
    if let Some(note) = &store.recovery_note {
        warn!(target: HA, "{note}");
    }
    let store = Arc::new(store);
    let meta = store.meta();
    let log = LogView {
        snapshot_index: meta.snapshot_index,
        snapshot_epoch: meta.snapshot_epoch,
        last_index: meta.last_index,
        last_epoch: meta.last_epoch,
        epochs: store.epoch_table()?,
    };
    let r = &cfg.replication;
    // Two-node fencing by time (docs/architecture.md, "Two-node mode"):
    // with VRRP as failure detector and no witness, a standby may promote
    // only within a window after it last knew itself in sync, and the
    // primary commits alone only after a longer grace. The window covers
    // both detectors (VRRP master down, at most 4 adverts; the replication
    // timeout) plus a heartbeat. Witness mode fences with the witness's
    // mark; manual promotion has no time bound (the operator decides).
    let (alone_grace_ms, in_sync_window_ms) = match (&cfg.vrrp, cfg.witness.address) {
        (Some(v), None) if r.peer.is_some() => {
            let t = esc_authority::TwoNodeTiming::new(
                u64::from(v.advert_interval_ms()),
                r.peer_timeout_ms,
                r.heartbeat_interval_ms,
            );
            (t.alone_grace_ms, t.in_sync_window_ms)
        }
        _ => (0, u64::MAX),
    };
    let core_cfg = esc_repl::Config {
        mode: match r.mode {
            ReplicationMode::Sync => esc_repl::Mode::Sync,
            ReplicationMode::Async => esc_repl::Mode::Async,
        },
        async_lag_entries_max: r.async_lag_entries_max,
        heartbeat_interval_ms: r.heartbeat_interval_ms,
        peer_timeout_ms: r.peer_timeout_ms,
        batch_entries_max: r.batch_entries_max,
        group_commit_entries_max: cfg.store.group_commit_entries_max,
        snapshot_every_entries: cfg.store.snapshot_every_entries,
        log_retain_entries: cfg.store.log_retain_entries,
        alone_grace_ms,
        in_sync_window_ms,
        // Two-node mode: the node with the lower replication address takes
        // even epochs, the other odd ones (see esc_repl::Config::epoch_slot).
        epoch_slot: match (r.peer, cfg.witness.address) {
            (Some(peer), None) => Some((2, u64::from(r.listen > peer))),
            _ => None,
        },
    };
    // A node with data always restarts as standby (architecture section 2:
    // a restored node comes back as standby); `initial_role` only applies to
    // a fresh store.
    let mut core = Core::new(core_cfg, Role::Standby, meta.epoch, log, meta.applied_index);
    // Witness mode: a primary commits without its follower only once the
    // witness marked the standby outdated (architecture section 4).
    core.set_commit_alone(cfg.witness.address.is_none() || r.peer.is_none());
    info!(target: HA, epoch = meta.epoch, last_index = meta.last_index,
          applied_index = meta.applied_index, "store opened; starting as standby");

    let counters = Arc::new(Counters::default());
    let (role_tx, role_rx) = watch::channel(RoleInfo {
        role: Role::Standby,
        epoch: meta.epoch,
    });
    let (net_role_tx, net_role_rx) = watch::channel(net::LinkRole::standby());
    let (position_tx, position_rx) = watch::channel(net::Position::default());
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    // The HA agent's commands have a channel of their own, never full: a
    // queue of client writes in front of a hung owner must not block the
    // agent's thread (it still has to drop the VIP and stop advertising).
    // Role commands are few (a handful per role change).
    let (ha_tx, mut ha_rx) = mpsc::unbounded_channel::<Event>();
    let (net_tx, mut net_rx) = mpsc::channel::<NetEvent>(EVENT_QUEUE);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    {
        let store = store.clone();
        let events = events_tx.clone();
        let counters = counters.clone();
        let dir = data_dir.clone();
        std::thread::Builder::new()
            .name("esc-storage".into())
            .spawn(move || storage_worker(store, jobs_rx, events, counters, dir))?;
    }

    let repl_listener =
        match &secret {
            Some(_) => Some(tokio::net::TcpListener::bind(r.listen).await.map_err(|e| {
                anyhow::anyhow!("cannot listen for replication on {}: {e}", r.listen)
            })?),
            None => None,
        };
    let api_listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {}: {e}", cfg.api.listen))?;
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(secret), Some(listener)) = (&secret, repl_listener) {
        let net_ctx = NetCtx {
            node_name: cfg.node_name.clone(),
            secret: secret.clone(),
            counters: counters.clone(),
            events: net_tx.clone(),
            role: net_role_rx,
            position: position_rx,
            next_conn: Arc::new(AtomicU64::new(0)),
        };
        tasks.spawn(net::listen(net_ctx.clone(), listener));
        if let Some(peer) = r.peer {
            tasks.spawn(net::dial(net_ctx.clone(), peer));
        }
    }
    let pair = r.peer.is_some();
    let shared = Shared {
        node_name: cfg.node_name.clone(),
        store: store.clone(),
        events: events_tx.clone(),
        ha_events: ha_tx,
        role: role_rx,
        counters: counters.clone(),
        data_dir: data_dir.clone(),
        api_addr: cfg.api.listen,
        inflight: Default::default(),
        // A standalone node admits writes whenever it is primary; in a pair
        // the role authority decides.
        admission: Arc::new(std::sync::atomic::AtomicBool::new(!pair)),
        leading: Arc::new(watch::Sender::new(!pair)),
        agent: Default::default(),
        api_dead: Arc::new(watch::Sender::new(false)),
    };
    // The HA agent (role authority, VRRP, witness client, health) runs on
    // its own thread; dropping its handle at the end sends priority 0 (if
    // VRRP master) and removes the VIP.
    let agent = crate::agent::spawn(
        &cfg,
        &home,
        shared.clone(),
        secret.clone(),
        shared.admission.clone(),
    )?;
    let _ = shared.agent.set(AgentLink {
        cmds: agent.cmds.clone(),
        status: agent.status.clone(),
        pair,
        switchover_timeout: Duration::from_millis(cfg.ha.switchover_timeout_ms),
    });
    let password = api::password(&home, &cfg.api)?;
    let health_listener = tokio::net::TcpListener::bind(cfg.api.health_listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for the health API on {}: {e}",
                cfg.api.health_listen
            )
        })?;
    tasks.spawn(api::serve_health(
        health_listener,
        shared.clone(),
        cfg.api.clone(),
        password.clone(),
    ));
    tasks.spawn(api::serve(
        api_listener,
        shared.clone(),
        cfg.api.clone(),
        password,
    ));
    let admin_listener = admin::bind(&home)?;
    tasks.spawn(admin::serve(admin_listener, shared.clone()));

    let mut owner = Owner {
        core: std::mem::replace(&mut core, placeholder_core()),
        store: store.clone(),
        jobs: jobs_tx,
        conns: HashMap::new(),
        responders: HashMap::new(),
        next_token: 0,
        snapshot_buf: HashMap::new(),
        role_tx,
        net_role_tx,
        counters: counters.clone(),
        start: Instant::now(),
        last_transition: None,
        node_name: cfg.node_name.clone(),
        home: home.clone(),
        peer_addr: r.peer,
        agent_cmds: agent.cmds.clone(),
        position_tx,
        agent_status: agent.status.clone(),
        last_view: None,
        pair,
        allow_fault_injection: cfg.debug.allow_fault_injection,
        api_dead: shared.api_dead.clone(),
        store_failed: false,
    };
    let first = owner.core.start(owner.now_ms());
    owner.exec(first);
    if !pair && meta.epoch == 0 && r.initial_role == InitialRole::Primary {
        // A standalone node has no authority to ask.
        owner.input(Input::Promote {
            reason: "initial_role = \"primary\" in esc.toml (fresh store)".into(),
        });
    }
    owner.report_view();
    info!(node = %cfg.node_name, api = %cfg.api.listen, replication = %r.listen, "escd running");

    let tick_ms = (r.heartbeat_interval_ms / 2).max(5);
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // A graceful stop lets the agent hand over first (a primary drains and
    // passes its role to the in-sync standby), bounded in time.
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    let stop_grace = Duration::from_millis(cfg.ha.switchover_timeout_ms + 1_000);
    let result = loop {
        let deadline = stop_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // Owner events come from two queues: the agent's role commands and
        // everything else (client writes, admin); one handler serves both.
        let event = tokio::select! {
            _ = &mut shutdown, if stop_deadline.is_none() => {
                info!(target: HA, "stop requested: handing over first if primary");
                stop_deadline = Some(tokio::time::Instant::now() + stop_grace);
                let _ = owner.agent_cmds.try_send(crate::agent::AgentCmd::Stop);
                None
            }
            _ = tokio::time::sleep_until(deadline), if stop_deadline.is_some() => {
                warn!(target: HA, "handover did not finish in time; stopping anyway");
                break Ok(Exit::Stopped);
            }
            _ = tick.tick() => {
                owner.input(Input::Tick);
                None
            }
            Some(ev) = net_rx.recv() => {
                owner.on_net(ev);
                None
            }
            Some(ev) = ha_rx.recv() => Some(ev),
            Some(ev) = events_rx.recv() => Some(ev),
        };
        if let Some(ev) = event {
            match owner.on_event(ev) {
                Err(e) => break Err(e),
                Ok(Some(exit)) => break Ok(exit),
                Ok(None) => {}
            }
        }
    };
    drop(agent);
    tasks.abort_all();
    admin::cleanup(&home);
    info!(target: HA, "escd stopping");
    result
}

/// What the role authority needs to know of the replication core.
fn repl_view(core: &Core) -> esc_authority::ReplView {
    let (last_epoch, last_index) = core.durable_position();
    esc_authority::ReplView {
        primary: core.role() == Role::Primary,
        epoch: core.epoch(),
        last_epoch,
        last_index,
        linked: core.linked(),
        in_sync: core.in_sync(),
        blocker: core.promotion_blocker(),
        drained: core.drained(),
        commit_alone: core.commit_alone(),
        commit_alone_seq: core.commit_alone_seq(),
        promotions_refused: core.promotions_refused(),
        handover: core.handed_over(),
    }
}

/// Only used to move the real core into the owner without cloning.
fn placeholder_core() -> Core {
    Core::new(
        esc_repl::Config {
            mode: esc_repl::Mode::Sync,
            async_lag_entries_max: 1,
            heartbeat_interval_ms: 100,
            peer_timeout_ms: 1000,
            batch_entries_max: 1,
            group_commit_entries_max: 1,
            snapshot_every_entries: 2,
            log_retain_entries: 1,
            alone_grace_ms: 0,
            in_sync_window_ms: u64::MAX,
            epoch_slot: None,
        },
        Role::Standby,
        0,
        LogView::default(),
        0,
    )
}

struct Owner {
    core: Core,
    store: Arc<Store>,
    jobs: std::sync::mpsc::Sender<Job>,
    conns: HashMap<ConnId, ConnHandle>,
    responders: HashMap<Token, oneshot::Sender<WriteResult>>,
    next_token: Token,
    snapshot_buf: HashMap<ConnId, Vec<SnapshotItem>>,
    role_tx: watch::Sender<RoleInfo>,
    net_role_tx: watch::Sender<net::LinkRole>,
    counters: Arc<Counters>,
    start: Instant,
    last_transition: Option<Transition>,
    node_name: String,
    home: PathBuf,
    peer_addr: Option<std::net::SocketAddr>,
    agent_cmds: mpsc::Sender<crate::agent::AgentCmd>,
    position_tx: watch::Sender<net::Position>,
    agent_status: watch::Receiver<crate::agent::AgentStatus>,
    /// The last view sent to the role authority (sent again on change only).
    last_view: Option<esc_authority::ReplView>,
    pair: bool,
    allow_fault_injection: bool,
    api_dead: Arc<watch::Sender<bool>>,
    /// The store failed: this process neither persists nor follows again
    /// (a restart recovers the store at open).
    store_failed: bool,
}

impl Owner {
    /// Why a fault-injection command is refused, if it is.
    fn fault_injection_refusal(&self) -> Option<AdminResponse> {
        (!self.allow_fault_injection).then(|| {
            AdminResponse::err(
                "fault injection is off: set [debug] allow_fault_injection = true (lab only)"
                    .into(),
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
        self.net_role_tx.send_if_modified(|r| std::mem::replace(r, link) != link);
        self.report_view();
    }

    /// Tells the role authority what the replication core looks like now,
    /// when it changed.
    fn report_view(&mut self) {
        if !self.pair {
            return;
        }
        let (last_epoch, last_index) = self.core.durable_position();
        let pos = net::Position {
            epoch: self.core.epoch(),
            last_index,
            last_epoch,
            applied_index: self.core.commit_index(),
        };
        self.position_tx.send_if_modified(|p| {
            let changed = *p != pos;
            *p = pos;
            changed
        });
        let v = repl_view(&self.core);
        if self.last_view.as_ref() != Some(&v) {
            // A full queue drops the view; the next change sends a fresh one.
            if self
                .agent_cmds
                .try_send(crate::agent::AgentCmd::Repl(v.clone()))
                .is_ok()
            {
                self.last_view = Some(v);
            }
        }
    }

    fn job(&self, job: Job) {
        // The worker only stops when the node does.
        let _ = self.jobs.send(job);
    }

    fn exec(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Persist {
                    truncate_after,
                    entries,
                    epoch,
                } => self.job(Job::Write {
                    batch: Batch {
                        truncate_after,
                        append: entries,
                        epoch,
                        sync: true,
                        ..Batch::default()
                    },
                    replies: Vec::new(),
                }),
                Output::Apply { up_to, replies } => {
                    let replies = replies
                        .into_iter()
                        .filter_map(|(i, t)| self.responders.remove(&t).map(|r| (i, r)))
                        .collect();
                    self.job(Job::Write {
                        batch: Batch {
                            apply_up_to: Some(up_to),
                            ..Batch::default()
                        },
                        replies,
                    })
                }
                Output::Compact { up_to } => self.job(Job::Write {
                    batch: Batch {
                        compact_up_to: Some(up_to),
                        ..Batch::default()
                    },
                    replies: Vec::new(),
                }),
                Output::SaveRecovery { from } => self.job(Job::SaveRecovery { from }),
                Output::InstallSnapshot {
                    conn,
                    index,
                    index_epoch,
                } => {
                    let items = self.snapshot_buf.remove(&conn).unwrap_or_default();
                    info!(target: HA, index, items = items.len(), "installing snapshot from primary");
                    self.job(Job::Install {
                        index,
                        index_epoch,
                        items,
                    });
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
                        info!(target: HA, peer = %c.peer_name, "follower needs a snapshot; streaming it");
                        let tx = c.tx.clone();
                        let store = self.store.clone();
                        tokio::task::spawn_blocking(move || send_snapshot(&store, epoch, &tx));
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
                        role,
                        epoch,
                        reason,
                    });
                    let _ = self.role_tx.send(RoleInfo { role, epoch });
                }
            }
        }
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
            self.snapshot_buf.remove(&conn);
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
                    if let Message::SnapshotBegin { .. } = msg {
                        self.snapshot_buf.insert(conn, Vec::new());
                    }
                    self.input(Input::Received { conn, msg });
                }
            }
            NetEvent::SnapshotChunk { conn, items } => {
                if let Some(buf) = self.snapshot_buf.get_mut(&conn) {
                    buf.extend(items);
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
            NetEvent::Down { conn, reason } => {
                if let Some(c) = self.conns.remove(&conn) {
                    info!(target: HA, conn, peer = %c.peer_name, %reason, "replication link down");
                    self.snapshot_buf.remove(&conn);
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

    /// Handles one event; `Ok(Some(exit))` ends the node's loop.
    fn on_event(&mut self, ev: Event) -> anyhow::Result<Option<Exit>> {
        match ev {
            Event::Propose { payload, reply } => {
                self.next_token += 1;
                let token = self.next_token;
                self.responders.insert(token, reply);
                self.input(Input::Propose { token, payload });
            }
            Event::Persisted { last_index } => self.input(Input::Persisted { last_index }),
            Event::SnapshotInstalled { index, index_epoch } => {
                info!(target: HA, index, "snapshot installed");
                self.input(Input::SnapshotInstalled { index, index_epoch });
            }
            Event::StorageFailed { error } => {
                Counters::bump(&self.counters.store_errors);
                self.store_failed = true;
                if self.pair {
                    // In a pair the node stays up as FAULT (it says why in
                    // `escadm status`) and the standby takes over. The agent
                    // hears why before it sees the core demoted.
                    error!(target: HA, %error, "store failed; this node goes FAULT");
                    let _ = self
                        .agent_cmds
                        .try_send(crate::agent::AgentCmd::StoreFailed(error.clone()));
                }
                self.input(Input::Demote {
                    reason: format!("store failure: {error}"),
                });
                if !self.pair {
                    error!(target: HA, %error, "store failed; stopping");
                    return Err(anyhow::anyhow!("store failure: {error}"));
                }
                // Only once demoted: a primary losing its standby would ask
                // the witness to mark it outdated, barring the takeover.
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    self.disconnect(conn, format!("the store failed: {error}"));
                }
            }
            Event::Ha(cmd) => self.on_ha(cmd),
            Event::HaReadyToStop => return Ok(Some(Exit::Stopped)),
            Event::Admin {
                req: AdminRequest::Hang { seconds },
                reply,
            } => {
                if let Some(refusal) = self.fault_injection_refusal() {
                    let _ = reply.send(refusal);
                } else {
                    let seconds = seconds.clamp(1, 60);
                    warn!(target: crate::logging::ADMIN, seconds, "fault injection: the service hangs");
                    let _ = reply.send(AdminResponse::ok(
                        &format!("the service hangs for {seconds} s"),
                        None,
                    ));
                    // The fault itself: this task stops answering (the HA
                    // agent, on its own thread, sees it as a failed probe).
                    std::thread::sleep(Duration::from_secs(seconds));
                }
            }
            Event::Admin {
                req: AdminRequest::KillApi,
                reply,
            } => {
                if let Some(refusal) = self.fault_injection_refusal() {
                    let _ = reply.send(refusal);
                } else {
                    warn!(target: crate::logging::ADMIN, "fault injection: the northbound API dies");
                    // The HA agent's API check fails from now on; the node
                    // goes FAULT and hands over until it is restarted.
                    self.api_dead.send_replace(true);
                    let _ = reply.send(AdminResponse::ok(
                        "the northbound API died: restart escd to bring it back",
                        None,
                    ));
                }
            }
            Event::Admin { req, reply } => {
                let resp = self.on_admin(req);
                let _ = reply.send(resp);
            }
            // Sent by the admin task once the operator has its answer.
            Event::ReloadNow => return Ok(Some(Exit::Reload)),
        }
        Ok(None)
    }

    /// Carries out the role authority's commands on the replication core.
    fn on_ha(&mut self, cmd: crate::agent::HaCommand) {
        use crate::agent::HaCommand;
        match cmd {
            HaCommand::Promote {
                epoch: Some(epoch),
                reason,
                ..
            } => self.input(Input::PromoteInEpoch { epoch, reason }),
            HaCommand::Promote {
                epoch: None,
                checked: true,
                reason,
            } => self.input(Input::PromoteIfSafe { reason }),
            HaCommand::Promote {
                epoch: None,
                checked: false,
                reason,
            } => self.input(Input::Promote { reason }),
            HaCommand::Demote { reason } => self.input(Input::Demote { reason }),
            HaCommand::CommitAlone { on, seq } => self.input(Input::CommitAlone { on, seq }),
            HaCommand::Handover => self.input(Input::Handover),
        }
    }

    fn on_admin(&mut self, req: AdminRequest) -> AdminResponse {
        match req {
            AdminRequest::Status { .. } => AdminResponse::ok("status", Some(self.status())),
            // Answered by the admin task itself (it runs I/O checks).
            AdminRequest::Health
            | AdminRequest::OpModeSet { .. }
            | AdminRequest::OpModeShow
            | AdminRequest::IpTrans
            | AdminRequest::Switchover => AdminResponse::err("answered by the admin task".into()),
            // Fault injection: answered in `on_event`, before this.
            AdminRequest::Hang { .. } | AdminRequest::KillApi => {
                AdminResponse::err("answered by the owner's event loop".into())
            }
            AdminRequest::Reload => {
                // Only a valid configuration is applied; otherwise nothing changes.
                let checked = Config::load(&self.home)
                    .map_err(|e| e.to_string())
                    .and_then(|c| match &c.vrrp {
                        Some(v) => v.check_host().map_err(|(f, m)| format!("{f}: {m}")),
                        None => Ok(()),
                    });
                match checked {
                    Ok(()) => {
                        info!(target: crate::logging::ADMIN, "escadm reload: restarting with the new esc.toml");
                        AdminResponse::ok(
                            "reloading: escd restarts with the new configuration",
                            None,
                        )
                    }
                    Err(e) => {
                        warn!(target: crate::logging::ADMIN, error = %e, "escadm reload refused");
                        AdminResponse::err(format!(
                            "the configuration is not valid, nothing changed: {e}"
                        ))
                    }
                }
            }
            AdminRequest::Promote { reason, force } => {
                info!(target: crate::logging::ADMIN, %reason, force, "escadm ha promote");
                if self.core.role() == Role::Primary {
                    return AdminResponse::ok("already primary", Some(self.status()));
                }
                if let Some(why) = self.core.promotion_blocker() {
                    if !force {
                        warn!(target: crate::logging::ADMIN, %why, "promotion refused");
                        return AdminResponse::err(format!(
                            "promotion refused: {why}. Check `escadm status --v`; `--force` promotes anyway"
                        ));
                    }
                    warn!(target: crate::logging::ADMIN, %why, "promotion forced by the operator");
                }
                self.input(Input::Promote {
                    reason: format!("operator: {reason}"),
                });
                AdminResponse::ok("promoted to primary", Some(self.status()))
            }
            AdminRequest::Demote { reason } => {
                info!(target: crate::logging::ADMIN, %reason, "escadm ha demote");
                if self.core.role() == Role::Standby {
                    return AdminResponse::ok("already standby", Some(self.status()));
                }
                self.input(Input::Demote {
                    reason: format!("operator: {reason}"),
                });
                AdminResponse::ok("demoted to standby", Some(self.status()))
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node_name": self.node_name,
            "role": self.core.role(),
            "epoch": self.core.epoch(),
            "peer_address": self.peer_addr,
            "replication": self.core.status(),
            "store": self.store.meta(),
            "counters": self.counters.snapshot(),
            "last_transition": self.last_transition,
            "recovery_note": self.store.recovery_note,
            "vrrp": self.agent_status.borrow().vrrp.clone(),
            "ha": self.agent_status.borrow().clone(),
        })
    }
}

fn send_snapshot(store: &Store, epoch: u64, tx: &mpsc::Sender<Message>) {
    let (index, index_epoch, items) = match store.snapshot() {
        Ok(s) => s,
        Err(e) => {
            error!(target: HA, "cannot read a snapshot: {e}");
            return;
        }
    };
    let send = |m: Message| tx.blocking_send(m).is_ok();
    if !send(Message::SnapshotBegin {
        epoch,
        index,
        index_epoch,
    }) {
        return;
    }
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for it in items {
        bytes += it.key.len() + it.value.len();
        chunk.push(it);
        if chunk.len() >= SNAPSHOT_CHUNK_ITEMS_MAX || bytes >= SNAPSHOT_CHUNK_BYTES_MAX {
            if !send(Message::SnapshotChunk {
                items: std::mem::take(&mut chunk),
            }) {
                return;
            }
            bytes = 0;
        }
    }
    if !chunk.is_empty() && !send(Message::SnapshotChunk { items: chunk }) {
        return;
    }
    send(Message::SnapshotEnd { epoch, index });
}

/// Writes entries that may diverge from the primary's log to a recovery
/// file, fsynced before the caller removes them (architecture section 3:
/// never silently dropped).
fn save_recovery(data_dir: &Path, entries: &[Entry]) -> std::io::Result<Option<PathBuf>> {
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    let dir = data_dir.join("recovery");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "divergent-epoch{}-from{}-{}.jsonl",
        first.epoch,
        first.index,
        unix_ms()
    ));
    let mut f = std::fs::File::create(&path)?;
    for e in entries {
        let payload: serde_json::Value = serde_json::from_slice(&e.payload)
            .unwrap_or_else(|_| serde_json::Value::String(hex::encode(&e.payload)));
        let line = serde_json::json!({"index": e.index, "epoch": e.epoch, "command": payload});
        writeln!(f, "{line}")?;
    }
    f.sync_all()?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(Some(path))
}

fn storage_worker(
    store: Arc<Store>,
    jobs: std::sync::mpsc::Receiver<Job>,
    events: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    data_dir: PathBuf,
) {
    let fail = |error: String| {
        let _ = events.blocking_send(Event::StorageFailed { error });
    };
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Write {
                mut batch,
                mut replies,
            } => {
                // Merge what queued up behind into the same transaction: one
                // fsync. An apply that answers clients runs on its own (it
                // needs no fsync) so its answers never wait for the next group.
                let answers_clients = !replies.is_empty();
                while let Some(j) = if answers_clients {
                    None
                } else {
                    jobs.try_recv().ok()
                } {
                    match j {
                        Job::Write {
                            batch: b,
                            replies: r,
                        } if b.truncate_after.is_none() && r.is_empty() => {
                            batch.append.extend(b.append);
                            batch.epoch = batch.epoch.max(b.epoch);
                            batch.apply_up_to = batch.apply_up_to.max(b.apply_up_to);
                            batch.compact_up_to = batch.compact_up_to.max(b.compact_up_to);
                            batch.sync |= b.sync;
                            replies.extend(r);
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                let persisted = batch.sync;
                if let Some(after) = batch.truncate_after {
                    match store.read_entries(after + 1, usize::MAX, usize::MAX) {
                        Ok(doomed) => match save_recovery(&data_dir, &doomed) {
                            Ok(Some(path)) => {
                                counters.recovery_entries.fetch_add(
                                    doomed.len() as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                                warn!(target: HA, entries = doomed.len(), path = %path.display(),
                                      "divergent entries moved to the recovery file");
                            }
                            Ok(None) => {}
                            Err(e) => return fail(format!("cannot write the recovery file: {e}")),
                        },
                        Err(e) => return fail(e.to_string()),
                    }
                }
                match store.write(batch) {
                    Ok(result) => {
                        if persisted {
                            let last_index = store.meta().last_index;
                            if events
                                .blocking_send(Event::Persisted { last_index })
                                .is_err()
                            {
                                return;
                            }
                        }
                        if !replies.is_empty() {
                            let mut by_index: HashMap<u64, Outcome> =
                                result.outcomes.into_iter().collect();
                            for (i, reply) in replies {
                                if let Some(o) = by_index.remove(&i) {
                                    Counters::bump(&counters.writes_committed);
                                    let _ = reply.send(Ok(o));
                                }
                            }
                        }
                    }
                    Err(e) => return fail(e.to_string()),
                }
            }
            Job::SaveRecovery { from } => {
                match store
                    .read_entries(from, usize::MAX, usize::MAX)
                    .map_err(|e| e.to_string())
                    .and_then(|d| {
                        save_recovery(&data_dir, &d)
                            .map(|p| (d.len(), p))
                            .map_err(|e| e.to_string())
                    }) {
                    Ok((n, Some(path))) => {
                        counters
                            .recovery_entries
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        warn!(target: HA, entries = n, path = %path.display(),
                              "possibly divergent entries saved to the recovery file before a snapshot");
                    }
                    Ok((_, None)) => {}
                    Err(e) => return fail(e),
                }
            }
            Job::Install {
                index,
                index_epoch,
                items,
            } => {
                // Entries beyond the snapshot point are kept before the log is replaced.
                match store.read_entries(index + 1, usize::MAX, usize::MAX) {
                    Ok(extra) => {
                        if let Err(e) = save_recovery(&data_dir, &extra) {
                            return fail(format!("cannot write the recovery file: {e}"));
                        }
                    }
                    Err(e) => return fail(e.to_string()),
                }
                match store.install_snapshot(index, index_epoch, &items) {
                    Ok(_) => {
                        if events
                            .blocking_send(Event::SnapshotInstalled { index, index_epoch })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => return fail(e.to_string()),
                }
            }
            Job::SendEntries { tx, msg, from, to } => {
                let count = (to + 1 - from) as usize;
                match store.read_entries(from, count, SEND_ENTRIES_BYTES_MAX) {
                    Ok(entries) => {
                        if let Message::Append {
                            epoch,
                            prev_index,
                            prev_epoch,
                            commit_index,
                            ..
                        } = msg
                        {
                            let m = Message::Append {
                                epoch,
                                prev_index,
                                prev_epoch,
                                commit_index,
                                entries,
                            };
                            // The core has this one catch-up batch in flight
                            // and waits for its ack: a batch that cannot be
                            // queued must not vanish silently. Waiting for room
                            // would stall every write behind this worker, so
                            // the link is closed instead: its reader reports
                            // `Down` (the core forgets the peer), the follower
                            // dials again and catch-up restarts from its log.
                            match tx.try_send(m) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    warn!(target: HA, from, to,
                                          "peer too slow: send queue full for a catch-up batch; closing the link");
                                    tx.close();
                                }
                                // The link is already closing; its `Down` follows.
                                Err(mpsc::error::TrySendError::Closed(_)) => {}
                            }
                        }
                    }
                    Err(e) => return fail(e.to_string()),
                }
            }
        }
    }
}
