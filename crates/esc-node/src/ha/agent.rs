//! The HA agent (architecture sections 1 and 2): the role authority, the
//! VRRP speaker, the witness client and the local health checks, on their
//! own OS thread and single-threaded runtime, apart from the service. A
//! saturated or wedged service cannot delay advertisements or lease
//! renewals; the agent sees the service only as an operator would, through
//! health probes (the store accepts a write, the owner task and the API
//! answer within a deadline).
//!
//! ```text
//!   owner task ──ReplView / StoreFailed / admin──┐
//!   VRRP socket + timers ──VrrpView─────────────┤
//!   witness client ──replies────────────────────┼─> Authority::handle
//!   health timer ──probe results────────────────┤        │
//!   tick ───────────────────────────────────────┘        v
//!     Promote / Demote / CommitAlone / Handover ──> owner task (Event::Ha, as emitted)
//!     Vip / VrrpContend / VrrpPriority ──> speaker
//!     ToWitness ──> witness client;  StateFile ──> $ESC_HOME/keepalived_state
//!     Admission ──> the API's gate;  Transition ──> escadm.log
//! ```

use super::vrrp::Speaker;
use super::witness;
use crate::logging::HA;
use crate::shared::{AgentCmd, Event, Shared};
use esc_authority::authority::{Config as AuthConfig, Input, Output};
use esc_authority::{Authority, WitnessRequest};
use esc_config::Config;
use esc_proto::status::HaStatus;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

/// How often the authority gets a `Tick` (lease checks, retries).
const TICK: Duration = Duration::from_millis(20);

/// Handle kept by the node.
pub struct AgentHandle {
    pub cmds: mpsc::Sender<AgentCmd>,
    pub status: watch::Receiver<HaStatus>,
    stop_tx: watch::Sender<bool>,
    done_rx: std::sync::mpsc::Receiver<()>,
}

impl Drop for AgentHandle {
    /// Stops the thread: the speaker sends priority 0 if master and removes
    /// the VIP (bounded wait).
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        let _ = self.done_rx.recv_timeout(Duration::from_secs(3));
    }
}

/// Where the state file lives.
pub fn state_file(home: &Path) -> PathBuf {
    home.join("keepalived_state")
}

/// Starts the agent thread.
pub fn spawn(
    cfg: &Config,
    home: &Path,
    shared: Shared,
    secret: Option<Arc<Vec<u8>>>,
    admission: Arc<AtomicBool>,
) -> crate::Result<AgentHandle> {
    if let Some(v) = &cfg.vrrp {
        super::vrrp::preflight(v)?;
    }
    let pair = cfg.replication.peer.is_some();
    let witness_addr = cfg.witness.address.filter(|_| pair);
    let auth_cfg = AuthConfig {
        witness: witness_addr.is_some(),
        vrrp: cfg.vrrp.is_some() && pair,
        // Without VRRP or a witness, the only failure detector would be
        // the replication link; takeover is then the operator's.
        auto_takeover: pair
            && cfg.ha.auto_takeover
            && (cfg.vrrp.is_some() || witness_addr.is_some()),
        priority: cfg.vrrp.as_ref().map_or(100, |v| v.priority),
        renew_interval_ms: cfg.witness.renew_interval_ms,
        witness_retry_ms: cfg.witness.renew_interval_ms,
        switchover_timeout_ms: cfg.ha.switchover_timeout_ms,
        contest_grace_ms: cfg.vrrp.as_ref().map_or(3_000, |v| {
            esc_authority::TwoNodeTiming::new(
                u64::from(v.advert_interval_ms()),
                cfg.replication.peer_timeout_ms,
                cfg.replication.heartbeat_interval_ms,
            )
            .contest_grace_ms
        }),
        initial_primary: cfg.replication.initial_role == esc_config::InitialRole::Primary,
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(1_024);
    let (status_tx, status_rx) = watch::channel(HaStatus {
        authority: None,
        vrrp: None,
        witness: witness_addr.map(|a| a.to_string()),
        health_failures: 0,
        last_health_error: None,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let ctx = Ctx {
        vrrp: cfg.vrrp.clone(),
        pair,
        witness: witness_addr.zip(secret),
        node_name: cfg.node_name.clone(),
        home: home.to_path_buf(),
        shared,
        admission,
        health_interval: Duration::from_millis(cfg.ha.health_interval_ms),
        health_failures_max: cfg.ha.health_failures_max,
        service_timeout: Duration::from_millis(cfg.ha.service_timeout_ms),
        api: cfg.api.listen,
    };
    let rt_priority = cfg.ha.rt_priority;
    std::thread::Builder::new()
        .name("esc-ha-agent".into())
        .spawn(move || {
            if rt_priority > 0 {
                match super::sys::set_realtime(rt_priority) {
                    Ok(()) => {
                        info!(target: HA, priority = rt_priority, "HA agent at real-time priority (SCHED_RR)")
                    }
                    Err(e) => warn!(target: HA, priority = rt_priority,
                        "cannot run the HA agent at real-time priority: {e}; it runs at normal priority (run as root or raise RLIMIT_RTPRIO)"),
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(target: HA, "HA agent runtime: {e}");
                    return;
                }
            };
            if let Err(e) = rt.block_on(run(ctx, auth_cfg, cmd_rx, status_tx, stop_rx)) {
                warn!(target: HA, "HA agent stopped: {e:#}");
            }
            let _ = done_tx.send(());
        })?;
    Ok(AgentHandle {
        cmds: cmd_tx,
        status: status_rx,
        stop_tx,
        done_rx,
    })
}

struct Ctx {
    vrrp: Option<esc_config::VrrpConfig>,
    pair: bool,
    witness: Option<(std::net::SocketAddr, Arc<Vec<u8>>)>,
    node_name: String,
    home: PathBuf,
    shared: Shared,
    admission: Arc<AtomicBool>,
    health_interval: Duration,
    health_failures_max: u32,
    service_timeout: Duration,
    api: std::net::SocketAddr,
}

struct Agent {
    ctx: Ctx,
    auth: Authority,
    speaker: Option<Speaker>,
    witness_tx: Option<mpsc::Sender<WitnessRequest>>,
    start: Instant,
    replies: Vec<(u64, oneshot::Sender<Result<String, String>>)>,
    next_id: u64,
    health_failures: u32,
    last_health_error: Option<String>,
    /// The VRRP view the authority last heard.
    vrrp_fed: Option<esc_authority::VrrpView>,
}

async fn run(
    ctx: Ctx,
    auth_cfg: AuthConfig,
    mut cmds: mpsc::Receiver<AgentCmd>,
    status: watch::Sender<HaStatus>,
    mut stop: watch::Receiver<bool>,
) -> crate::Result<()> {
    let start = Instant::now();
    let speaker = match &ctx.vrrp {
        Some(v) => Some(Speaker::open(v.clone(), !ctx.pair, start).await?),
        None => None,
    };
    let (wreply_tx, mut wreply_rx) = mpsc::channel(64);
    let witness_tx = ctx.witness.as_ref().map(|(addr, secret)| {
        witness::client(
            *addr,
            secret.clone(),
            ctx.node_name.clone(),
            start,
            wreply_tx.clone(),
        )
    });
    let mut a = Agent {
        auth: Authority::new(auth_cfg),
        ctx,
        speaker,
        witness_tx,
        start,
        replies: Vec::new(),
        next_id: 0,
        health_failures: 0,
        last_health_error: None,
        vrrp_fed: None,
    };
    if let Some(sp) = a.speaker.as_mut() {
        // A pair's speaker waits for the authority's word to contend; a
        // standalone one behaves as keepalived does.
        if !a.ctx.pair {
            sp.input(esc_vrrp::fsm::Input::Startup).await;
        }
    }
    let (health_tx, mut health_rx) = mpsc::channel::<Result<(), ProbeError>>(4);
    let mut health_timer = tokio::time::interval(a.ctx.health_interval);
    health_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_running = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; super::vrrp::RECV_BYTES_MAX];
    loop {
        let _ = status.send(a.status());
        let deadline = a
            .speaker
            .as_ref()
            .and_then(Speaker::deadline)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = stop.changed() => {
                if let Some(sp) = a.speaker.as_mut() {
                    sp.input(esc_vrrp::fsm::Input::Shutdown).await;
                    sp.set_vip(false).await;
                }
                let _ = std::fs::write(state_file(&a.ctx.home), "STOP\n");
                let _ = status.send(a.status());
                return Ok(());
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Some(sp) = a.speaker.as_mut() {
                    sp.input(esc_vrrp::fsm::Input::Tick).await;
                }
                a.vrrp_news().await;
            }
            Some(input) = recv_vrrp(&mut a.speaker, &mut buf) => {
                if let Some(sp) = a.speaker.as_mut() {
                    sp.input(input).await;
                }
                // Compared with what the authority last heard, not with the
                // view before `input`: receiving (validation) already counts
                // primary adverts.
                a.vrrp_news().await;
            }
            Some(cmd) = cmds.recv() => a.on_cmd(cmd).await,
            Some(d) = wreply_rx.recv() => {
                a.feed(Input::Witness { request: d.request, reply: d.reply, sent_at_ms: d.sent_at_ms }).await;
            }
            _ = health_timer.tick(), if a.ctx.pair && !health_running => {
                health_running = true;
                let shared = a.ctx.shared.clone();
                let api = a.ctx.api;
                let service_timeout = a.ctx.service_timeout;
                let tx = health_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(probe(&shared, api, service_timeout).await).await;
                });
            }
            Some(h) = health_rx.recv() => {
                health_running = false;
                a.on_health(h).await;
            }
            _ = tick.tick() => a.feed(Input::Tick).await,
        }
    }
}

async fn recv_vrrp(sp: &mut Option<Speaker>, buf: &mut [u8]) -> Option<esc_vrrp::fsm::Input> {
    match sp.as_mut() {
        Some(s) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

/// A failed health probe.
#[derive(Debug)]
enum ProbeError {
    /// The service did not answer within `service_timeout`: already that
    /// long without an answer, so one miss is a FAULT.
    Unresponsive(String),
    /// A check failed (store, disk, API): counted against
    /// `health_failures_max`, as a flapping check should not move the role.
    Check(String),
}

/// The agent's health probe: what an operator's check would see.
async fn probe(
    shared: &Shared,
    api: std::net::SocketAddr,
    service_timeout: Duration,
) -> Result<(), ProbeError> {
    // The owner task answers (a hung service fails here). Waiting for room
    // in its queue counts against the same deadline: a full queue under a
    // burst of writes is not a hang unless it lasts.
    let answered = tokio::time::timeout(service_timeout, async {
        let (tx, rx) = oneshot::channel();
        shared.events.send(Event::Ping { reply: tx }).await.is_ok() && rx.await.is_ok()
    })
    .await;
    if answered != Ok(true) {
        return Err(ProbeError::Unresponsive(format!(
            "the service does not answer within {service_timeout:?}"
        )));
    }
    let report = crate::health::report(shared, api, None).await;
    if report.healthy() {
        Ok(())
    } else {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        Err(ProbeError::Check(format!(
            "{} ({})",
            report.message,
            failed.join("; ")
        )))
    }
}

impl Agent {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn status(&self) -> HaStatus {
        HaStatus {
            authority: self
                .ctx
                .pair
                .then(|| crate::status::authority(&self.auth.status())),
            vrrp: self.speaker.as_ref().map(Speaker::status),
            witness: self.ctx.witness.as_ref().map(|(a, _)| a.to_string()),
            health_failures: self.health_failures,
            last_health_error: self.last_health_error.clone(),
        }
    }

    /// Tells the authority of a VRRP change it has not heard yet (state,
    /// master priority, primary adverts counted).
    async fn vrrp_news(&mut self) {
        if let Some(v) = self.speaker.as_ref().map(Speaker::view) {
            if self.vrrp_fed != Some(v) {
                self.vrrp_fed = Some(v);
                self.feed(Input::Vrrp(v)).await;
            }
        }
    }

    async fn on_health(&mut self, h: Result<(), ProbeError>) {
        match h {
            Ok(()) => {
                if self.health_failures > 0 {
                    info!(target: HA, "health check passes again");
                }
                self.health_failures = 0;
                self.feed(Input::Health(Ok(()))).await;
            }
            Err(e) => {
                let (e, at_once) = match e {
                    ProbeError::Unresponsive(e) => (e, true),
                    ProbeError::Check(e) => (e, false),
                };
                self.health_failures += 1;
                warn!(target: HA, failures = self.health_failures, error = %e, "health check failed");
                self.last_health_error = Some(e.clone());
                if at_once || self.health_failures >= self.ctx.health_failures_max {
                    self.feed(Input::Health(Err(e))).await;
                }
            }
        }
    }

    async fn on_cmd(&mut self, cmd: AgentCmd) {
        if !self.ctx.pair {
            // A standalone node has no role to arbitrate.
            let refuse = |r: oneshot::Sender<Result<String, String>>| {
                let _ = r.send(Err("no peer configured: nothing to switch over to".into()));
            };
            match cmd {
                AgentCmd::Switchover { reply } => refuse(reply),
                AgentCmd::Promote { reply, .. } | AgentCmd::Demote { reply } => {
                    let _ = reply.send(Err("handled by the node".into()));
                }
                AgentCmd::Stop => {
                    let _ = self.ctx.shared.ha_events.send(Event::HaReadyToStop);
                }
                _ => {}
            }
            return;
        }
        let mut reply_with = |reply| {
            self.next_id += 1;
            self.replies.push((self.next_id, reply));
            self.next_id
        };
        let input = match cmd {
            AgentCmd::Repl(v) => Input::Repl(v),
            AgentCmd::StoreFailed(e) => Input::StoreFailed(e),
            AgentCmd::Switchover { reply } => Input::Switchover {
                id: reply_with(reply),
            },
            AgentCmd::Promote { force, reply } => Input::Promote {
                id: reply_with(reply),
                force,
            },
            AgentCmd::Demote { reply } => Input::Demote {
                id: reply_with(reply),
            },
            AgentCmd::Stop => Input::Stop,
        };
        self.feed(input).await;
    }

    /// Runs the authority and performs its outputs in order.
    async fn feed(&mut self, input: Input) {
        if !self.ctx.pair {
            return;
        }
        let mut input = Some(input);
        // The authority's commands may change the VRRP state (contend,
        // priority): it hears of that at once, not at the next advert.
        for _ in 0..8 {
            let Some(i) = input.take() else { break };
            let now = self.now_ms();
            let outputs = self.auth.handle(now, i);
            let until = self
                .auth
                .lease_until_ms()
                .map(|ms| self.start + std::time::Duration::from_millis(ms));
            if let Ok(mut l) = self.ctx.shared.lease_until.write() {
                *l = until;
            }
            for o in outputs {
                self.perform(o).await;
            }
            if let Some(v) = self.speaker.as_ref().map(Speaker::view) {
                if self.vrrp_fed != Some(v) {
                    self.vrrp_fed = Some(v);
                    input = Some(Input::Vrrp(v));
                }
            }
        }
    }

    async fn perform(&mut self, o: Output) {
        match o {
            Output::Transition { from, to, reason } => {
                info!(target: HA, ?from, ?to, %reason, "role transition");
                // Before any admission output of the same change.
                self.ctx
                    .shared
                    .leading
                    .send_replace(to == esc_authority::Role::Primary);
            }
            Output::StateFile(w) => {
                let path = state_file(&self.ctx.home);
                let tmp = path.with_extension("tmp");
                if let Err(e) = std::fs::write(&tmp, format!("{}\n", w.as_str()))
                    .and_then(|_| std::fs::rename(&tmp, &path))
                {
                    warn!(target: HA, "cannot write {}: {e}", path.display());
                }
            }
            Output::Vip(on) => {
                if let Some(sp) = self.speaker.as_mut() {
                    sp.set_vip(on).await;
                }
            }
            Output::VipQuiet => {
                if let Some(sp) = self.speaker.as_ref() {
                    sp.quiet();
                }
            }
            Output::Admission(on) => self.ctx.admission.store(on, Ordering::SeqCst),
            Output::VrrpContend(on) => {
                if let Some(sp) = self.speaker.as_mut() {
                    let input = if on {
                        esc_vrrp::fsm::Input::Startup
                    } else {
                        esc_vrrp::fsm::Input::Shutdown
                    };
                    sp.input(input).await;
                }
            }
            Output::VrrpPriority(p) => {
                if let Some(sp) = self.speaker.as_mut() {
                    sp.input(esc_vrrp::fsm::Input::SetPriority(p)).await;
                }
            }
            Output::VrrpPreempt(on) => {
                if let Some(sp) = self.speaker.as_mut() {
                    sp.input(esc_vrrp::fsm::Input::SetPreempt(on)).await;
                }
            }
            // The replication core's commands go to the owner task as the
            // authority emitted them; the owner translates them once.
            o @ (Output::Promote { .. }
            | Output::Demote { .. }
            | Output::CommitAlone { .. }
            | Output::Handover) => {
                let _ = self.ctx.shared.ha_events.send(Event::Ha(o));
            }
            Output::ToWitness(req) => {
                if let Some(tx) = &self.witness_tx {
                    // Dropped when the queue is full: the authority retries.
                    let _ = tx.try_send(req);
                }
            }
            Output::Reply { id, result } => {
                if let Some(pos) = self.replies.iter().position(|(i, _)| *i == id) {
                    let (_, r) = self.replies.swap_remove(pos);
                    let _ = r.send(result);
                }
            }
            Output::ReadyToStop => {
                let _ = self.ctx.shared.ha_events.send(Event::HaReadyToStop);
            }
        }
    }
}
