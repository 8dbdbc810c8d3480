//! What the node's tasks share: the handles in [`Shared`], and the messages
//! between tasks ([`Event`] into the owner task, [`AgentCmd`] into the HA
//! agent). A leaf module: it imports no other module of this crate but the
//! counters, so every task can depend on it and none on another task.

use crate::metrics::Counters;
use esc_proto::status::{HaStatus, InFlight, InFlightMap};
use esc_proto::AdminResponse;
use esc_repl::{Refusal, Role};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// The store with the node's state machine.
pub type NodeStore = esc_store::Store<esc_domain::Domain>;

/// What a client write gets back.
pub type WriteResult = Result<esc_domain::Answer, Refusal>;

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The role and epoch, as the API and the network tasks see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleInfo {
    pub role: Role,
    pub epoch: u64,
}

/// Events into the owner task (besides network and storage events).
pub enum Event {
    /// A client write (an encoded `esc_domain::Command`).
    Propose {
        payload: Vec<u8>,
        reply: oneshot::Sender<WriteResult>,
    },
    /// An admin request the owner answers.
    Admin {
        req: OwnerRequest,
        reply: oneshot::Sender<AdminResponse>,
    },
    /// The HA agent's liveness probe of the service: answered at once by a
    /// live owner task.
    Ping { reply: oneshot::Sender<()> },
    /// `escadm reload` was accepted and answered: restart with the new file.
    ReloadNow,
    /// A command of the role authority, as it emitted it (the owner
    /// translates the ones for the replication core, once).
    Ha(esc_authority::authority::Output),
    /// The HA agent finished its part of a graceful stop (handover).
    HaReadyToStop,
}

/// The admin requests the owner task answers (it holds the replication
/// core); the admin socket answers the others itself or asks the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerRequest {
    Status,
    Reload,
    Promote { reason: String, force: bool },
    Demote { reason: String },
    Hang { seconds: u64 },
    KillApi,
}

/// What the owner task and the admin socket send the HA agent.
pub enum AgentCmd {
    Repl(esc_authority::ReplView),
    StoreFailed(String),
    Switchover {
        reply: oneshot::Sender<Result<String, String>>,
    },
    Promote {
        force: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Demote {
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Graceful stop; the agent answers `Event::HaReadyToStop`.
    Stop,
}

/// How the node's tasks reach the HA agent.
pub struct AgentLink {
    pub cmds: mpsc::Sender<AgentCmd>,
    pub status: watch::Receiver<HaStatus>,
    /// A replication peer is configured: the agent arbitrates roles.
    pub pair: bool,
    pub switchover_timeout: Duration,
}

/// Northbound transactions in progress, by transaction id (`escadm
/// ip_trans`); each is registered for the lifetime of its [`InFlightGuard`].
#[derive(Clone, Default)]
pub struct InFlightRegistry(Arc<Mutex<InFlightMap>>);

impl InFlightRegistry {
    pub fn register(&self, tid: &str, operation: String) -> InFlightGuard {
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                tid.to_string(),
                InFlight {
                    operation,
                    since_unix_ms: unix_ms(),
                },
            );
        }
        InFlightGuard {
            registry: self.clone(),
            tid: tid.to_string(),
        }
    }

    pub fn snapshot(&self) -> InFlightMap {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes its transaction from the registry when dropped.
pub struct InFlightGuard {
    registry: InFlightRegistry,
    tid: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.0.lock() {
            m.remove(&self.tid);
        }
    }
}

/// Shared by the API, admin, health and agent tasks.
impl Shared {
    /// Whether this node may act on the outside world now (a VIM call):
    /// it leads, and, with a witness, its lease has not run out by its own
    /// monotonic clock. A process frozen (SIGSTOP, a VM paused) past its
    /// lease, which the standby may have taken over meanwhile, therefore
    /// makes no call on resuming before it has even noticed.
    pub fn may_act(&self) -> bool {
        if !*self.leading.borrow() {
            return false;
        }
        match (self.agent.get().map(|a| a.pair), self.lease_until.read()) {
            (Some(true), Ok(l)) => match *l {
                Some(until) => std::time::Instant::now() < until,
                // A pair without a witness: no lease to hold.
                None => !self.has_witness,
            },
            _ => true,
        }
    }
}

#[derive(Clone)]
pub struct Shared {
    pub node_name: String,
    /// `api.user`: the node's bootstrap account, not a replicated one.
    pub api_user: String,
    /// The HTTPS certificate, if configured (reloaded in place).
    pub tls: Option<Arc<crate::northbound::tls::Certs>>,
    /// The configuration the node runs with (`escadm reload` compares).
    pub running_config: Arc<esc_config::Config>,
    /// The node home (`esc.toml` is there).
    pub home: PathBuf,
    pub store: Arc<NodeStore>,
    pub events: mpsc::Sender<Event>,
    /// The HA agent's commands to the owner task (`Event::Ha`,
    /// `Event::HaReadyToStop`): unbounded, so the agent never waits on a
    /// queue of client writes.
    pub ha_events: mpsc::UnboundedSender<Event>,
    pub role: watch::Receiver<RoleInfo>,
    /// Whether the replication peer is connected and in sync (None: no
    /// peer configured); published by the owner task as it changes.
    pub peer_in_sync: watch::Receiver<Option<bool>>,
    pub counters: Arc<Counters>,
    pub data_dir: PathBuf,
    /// The northbound API's address (the health check names it).
    pub api_addr: std::net::SocketAddr,
    pub inflight: InFlightRegistry,
    /// The role authority admits northbound writes (off while a switchover
    /// drains, while stopping, and on every node that is not primary).
    pub admission: Arc<AtomicBool>,
    /// The role authority holds this node primary. Set by the HA agent, not
    /// the owner task, so a write waiting on a hung or deposed owner is
    /// answered (503, outcome unknown: resend with the same key) soon after
    /// the node stops leading, not at the client's timeout; and the
    /// primary-only services stop on it.
    pub leading: Arc<watch::Sender<bool>>,
    /// The HA agent's command channel and status (set once it runs).
    pub agent: Arc<OnceLock<AgentLink>>,
    /// Set once the northbound API has died (lab fault injection, `escadm
    /// debug kill-api`): it stops listening and closes its connections for
    /// the rest of the process, as a crashed subsystem would.
    pub api_dead: Arc<watch::Sender<bool>>,
    /// The northbound listeners: whether they accept, their connection
    /// counters (`northbound::conn`).
    pub northbound: Arc<crate::northbound::conn::Northbound>,
    /// The store's applied index, published by the storage worker after
    /// every apply: what waits for the state to move subscribes to it.
    pub applied: Arc<watch::Sender<u64>>,
    /// Until when this node holds the witness's lease (set by the HA agent;
    /// None: no lease, in two-node mode or when not primary). See
    /// [`Shared::may_act`].
    pub lease_until: Arc<std::sync::RwLock<Option<std::time::Instant>>>,
    /// The pair has a witness (a lease is then required to act).
    pub has_witness: bool,
    /// The VIM connector of `[vim]` (`vim`), if configured.
    pub vim: Option<Arc<esc_openstack::Client>>,
    /// The monitor's figures while it runs (`monitor`; `escadm status --v`).
    pub monitor: Arc<std::sync::Mutex<Option<esc_proto::status::MonitorStatus>>>,
    /// The VIM sweeper's last figures (`sweep`), once it ran here.
    pub sweep: Arc<std::sync::Mutex<Option<SweepShown>>>,
    /// Each watched VM's last probe on this node (soft: the primary's are
    /// the ones that move), by server name; what `GET` of a deployment
    /// shows.
    pub last_probes: Arc<std::sync::Mutex<std::collections::HashMap<String, LastProbe>>>,
}

/// The VIM sweeper's last figures (`sweep`), as `escadm status` shows them.
#[derive(Debug, Clone)]
pub struct SweepShown {
    pub interval_ms: u64,
    pub report: esc_lifecycle::sweep::SweepReport,
    /// When its last listing came (this node's clock).
    pub last_pass: Option<std::time::Instant>,
}

impl SweepShown {
    pub fn status(&self) -> esc_proto::status::SweepStatus {
        let r = &self.report;
        esc_proto::status::SweepStatus {
            interval_ms: self.interval_ms,
            passes: r.passes,
            last_pass_ago_ms: self.last_pass.map(|t| t.elapsed().as_millis() as u64),
            last_pass_took_ms: r.last_pass_took_ms,
            listed: r.listed,
            held: r.held,
            busy: r.busy,
            strays: r.strays,
            orphans: r.orphans,
            orphan_names: r.orphan_names.clone(),
            removed: r.removed,
            last_error: r.last_error.clone(),
        }
    }
}

/// A VM's last probe (`Shared::last_probes`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LastProbe {
    /// When its answer (or its deadline) came, wall clock, ms.
    pub at_ms: u64,
    /// The KPI it was for.
    pub kpi: String,
    /// What it read (none: no answer by its deadline, or no metric).
    pub value: Option<f64>,
}
