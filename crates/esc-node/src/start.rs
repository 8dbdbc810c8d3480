//! Start-up wiring: opens the store, builds the replication core, starts
//! every task (storage worker, replication listener and dialer, HA agent,
//! northbound, health, admin socket) and runs the owner task's loop until
//! the node stops. Nothing here runs after start but the teardown.

use crate::logging::HA;
use crate::metrics::Counters;
use crate::net::{self, NetCtx, NetEvent};
use crate::owner::{Exit, Inbox, Outlets, Owner, OwnerParts};
use crate::shared::{AgentLink, Event, RoleInfo, Shared};
use crate::{admin, ha, northbound, storage};
use esc_config::{Config, InitialRole, ReplicationMode};
use esc_repl::{Core, LogView, Role};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Events queued to the owner before senders wait.
const EVENT_QUEUE: usize = 65_536;

/// How to start a node.
pub struct NodeOptions {
    pub home: PathBuf,
    pub config: Config,
}

/// The replication core's configuration from esc.toml.
fn core_config(cfg: &Config) -> esc_repl::Config {
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
    esc_repl::Config {
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
    }
}

async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
) -> crate::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Listen { what, addr, source })
}

/// The services this node runs while primary: the notifier, and the
/// lifecycle runner and the VIM sweeper (unless `vim.sweep_interval_ms` is
/// 0) when a VIM connector is configured (the monitor runs on both roles:
/// `crate::monitor::run`).
pub fn primary_services(
    shared: &Shared,
    cfg: &esc_config::Config,
) -> crate::Result<Vec<Arc<dyn crate::services::PrimaryService>>> {
    let mut out: Vec<Arc<dyn crate::services::PrimaryService>> =
        vec![crate::notify::service(shared)?];
    if let (Some(client), Some(v)) = (&shared.vim, &cfg.vim) {
        let core = esc_lifecycle::Config {
            calls_in_flight_max: v.calls_in_flight_max,
            poll_ms: v.poll_ms,
            create_doubt_ms: v.create_doubt_ms,
            ..esc_lifecycle::Config::default()
        };
        out.push(Arc::new(crate::lifecycle::Runner::new(
            shared.clone(),
            client.clone(),
            core,
        )));
        if v.sweep_interval_ms > 0 {
            let sweep = esc_lifecycle::sweep::SweepConfig {
                interval_ms: v.sweep_interval_ms,
                hold_ms: v.create_doubt_ms,
                ..esc_lifecycle::sweep::SweepConfig::default()
            };
            out.push(Arc::new(crate::sweep::Service::new(
                shared.clone(),
                client.clone(),
                sweep,
            )));
        }
    }
    Ok(out)
}

/// Runs a node until `shutdown` resolves, `escadm reload`, or a fatal error.
pub async fn run(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<Exit> {
    let cfg = opts.config;
    let home = opts.home;
    let data_dir = Config::resolve(&home, &cfg.store.data_dir);
    // No default secret: a node without one has no replication link and
    // does not listen for one (it runs standalone).
    let secret = cfg.load_secret(&home)?.map(Arc::new);
    let store = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::shared::NodeStore::open(&dir, esc_domain::Domain)
        })
        .await?
        .map_err(|source| crate::Error::Store {
            dir: data_dir.clone(),
            source,
        })?
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
        epochs: store.epoch_table().map_err(|source| crate::Error::Store {
            dir: data_dir.clone(),
            source,
        })?,
    };
    let r = &cfg.replication;
    let pair = r.peer.is_some();
    // A node with data always restarts as standby (architecture section 2:
    // a restored node comes back as standby); `initial_role` only applies to
    // a fresh store.
    let mut core = Core::new(
        core_config(&cfg),
        Role::Standby,
        meta.epoch,
        log,
        meta.applied_index,
    );
    // Witness mode: a primary commits without its follower only once the
    // witness marked the standby outdated (architecture section 4).
    core.set_commit_alone(cfg.witness.address.is_none() || !pair);
    info!(target: HA, epoch = meta.epoch, last_index = meta.last_index,
          applied_index = meta.applied_index, "store opened; starting as standby");

    let counters = Arc::new(Counters::default());
    let (role_tx, role_rx) = watch::channel(RoleInfo {
        role: Role::Standby,
        epoch: meta.epoch,
    });
    let (link_role_tx, link_role_rx) = watch::channel(net::LinkRole::standby());
    let (position_tx, position_rx) = watch::channel(net::Position::default());
    let (peer_in_sync_tx, peer_in_sync_rx) = watch::channel(pair.then_some(false));
    let (events_tx, events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    // The HA agent's commands have a channel of their own, never full: a
    // queue of client writes in front of a hung owner must not block the
    // agent's thread (it still has to drop the VIP and stop advertising).
    // Role commands are few (a handful per role change).
    let (ha_tx, ha_rx) = mpsc::unbounded_channel::<Event>();
    let (net_tx, net_rx) = mpsc::channel::<NetEvent>(EVENT_QUEUE);
    let applied = Arc::new(watch::Sender::new(store.meta().applied_index));
    let storage = storage::spawn(
        store.clone(),
        applied.clone(),
        counters.clone(),
        data_dir.clone(),
    )
    .map_err(|e| crate::Error::io("cannot start the storage worker", e))?;

    let repl_listener = match &secret {
        Some(_) => Some(bind(r.listen, "replication").await?),
        None => None,
    };
    // HTTPS beside plain HTTP (or instead of it): one certificate for the
    // REST and health listeners, swapped in place by `escadm reload`.
    let tls = match northbound::tls::Certs::files(&home, &cfg.api) {
        Some(files) => Some(std::sync::Arc::new(
            northbound::tls::Certs::open(files).map_err(|message| crate::Error::Invalid {
                field: "api.tls".into(),
                message,
            })?,
        )),
        None => None,
    };
    let mut api_listeners = Vec::new();
    let mut health_listeners = Vec::new();
    if cfg.api.plain_http {
        api_listeners.push((bind(cfg.api.listen, "the API").await?, None));
        health_listeners.push((bind(cfg.api.health_listen, "the health API").await?, None));
    }
    if let Some(t) = &tls {
        api_listeners.push((
            bind(cfg.api.https_listen, "the HTTPS API").await?,
            Some(t.clone()),
        ));
        health_listeners.push((
            bind(cfg.api.health_https_listen, "the HTTPS health API").await?,
            Some(t.clone()),
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(secret), Some(listener)) = (&secret, repl_listener) {
        let net_ctx = NetCtx {
            node_name: cfg.node_name.clone(),
            secret: secret.clone(),
            counters: counters.clone(),
            events: net_tx.clone(),
            role: link_role_rx,
            position: position_rx,
            next_conn: Arc::new(AtomicU64::new(0)),
            snapshot_window: Arc::new(tokio::sync::Semaphore::new(net::SNAPSHOT_CHUNKS_IN_FLIGHT)),
        };
        tasks.spawn(net::listen(net_ctx.clone(), listener));
        if let Some(peer) = r.peer {
            tasks.spawn(net::dial(net_ctx, peer));
        }
    }
    let shared = Shared {
        node_name: cfg.node_name.clone(),
        api_user: cfg.api.user.clone(),
        store: store.clone(),
        events: events_tx,
        ha_events: ha_tx,
        role: role_rx,
        peer_in_sync: peer_in_sync_rx,
        counters: counters.clone(),
        data_dir,
        api_addr: cfg.api.listen,
        inflight: Default::default(),
        // A standalone node admits writes whenever it is primary; in a pair
        // the role authority decides.
        admission: Arc::new(std::sync::atomic::AtomicBool::new(!pair)),
        leading: Arc::new(watch::Sender::new(!pair)),
        agent: Default::default(),
        api_dead: Arc::new(watch::Sender::new(false)),
        northbound: Default::default(),
        tls: tls.clone(),
        running_config: std::sync::Arc::new(cfg.clone()),
        home: home.clone(),
        applied,
        lease_until: Default::default(),
        has_witness: pair && cfg.witness.address.is_some(),
        vim: crate::vim::client(&cfg, &home)?,
        monitor: Default::default(),
        sweep: Default::default(),
        last_probes: Default::default(),
    };
    if let Some(client) = &shared.vim {
        tasks.spawn(crate::vim::watch(client.clone()));
    }
    // The HA agent (role authority, VRRP, witness client, health) runs on
    // its own thread; dropping its handle at the end sends priority 0 (if
    // VRRP master) and removes the VIP.
    let agent = ha::spawn(
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
    let password = northbound::password(&home, &cfg.api)?;
    // One authentication state for both listeners: a source throttled on
    // one is throttled on the other.
    let auth = std::sync::Arc::new(northbound::auth::Auth::new(
        &cfg.api.user,
        &password,
        cfg.api.writes_per_user_per_s,
        Duration::from_millis(cfg.api.login_delay_ms),
    ));
    drop(password);
    shared.northbound.api_listening.expect(api_listeners.len());
    shared
        .northbound
        .health_listening
        .expect(health_listeners.len());
    // The routers are built here, before their tasks: a listener accepts
    // as soon as its task runs, before the admin socket reports the role.
    let health_app = northbound::api::health_app(&shared, &cfg.api, auth.clone());
    let api_app = northbound::api::app(&shared, &cfg.api, auth);
    tasks.spawn(northbound::serve_health(
        health_listeners,
        health_app,
        shared.clone(),
        cfg.api.clone(),
    ));
    // Connections are bounded well under the descriptor limit (issue 14):
    // the monitor's probes and the VIM calls hold descriptors of their own.
    let nofile = crate::fds::raise_nofile();
    let (api_connections, lowered) = northbound::conn::fd_budget(
        cfg.api.connections_max,
        nofile,
        esc_monitor::Config::default().probes_in_flight_max
            + cfg.vim.as_ref().map_or(0, |v| v.calls_in_flight_max),
    );
    if lowered {
        tracing::warn!(
            nofile,
            configured = cfg.api.connections_max,
            api_connections,
            "the open-file limit is low: the API takes fewer connections than api.connections_max (raise the hard limit, e.g. LimitNOFILE=)"
        );
    }
    tasks.spawn(northbound::serve(
        api_listeners,
        api_app,
        shared.clone(),
        cfg.api.clone(),
        api_connections,
    ));
    tasks.spawn(admin::serve(admin::bind(&home)?, shared.clone()));
    if !pair {
        // No role authority: a standalone node leads while its core is
        // primary (a node restarted with data comes back standby).
        let mut role = shared.role.clone();
        let leading = shared.leading.clone();
        tasks.spawn(async move {
            loop {
                let primary = role.borrow_and_update().role == Role::Primary;
                leading.send_if_modified(|l| std::mem::replace(l, primary) != primary);
                if role.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    tasks.spawn(crate::services::supervise(
        shared.leading.subscribe(),
        primary_services(&shared, &cfg)?,
    ));
    if shared.vim.is_some() {
        // What the lifecycle deploys, the monitor watches: its table kept
        // on both roles, its probes on the primary only.
        tasks.spawn(crate::monitor::run(
            shared.clone(),
            esc_monitor::Config::default(),
        ));
    }

    let mut owner = Owner::new(OwnerParts {
        core,
        store,
        jobs: storage.jobs,
        out: Outlets {
            role: role_tx,
            link_role: link_role_tx,
            position: position_tx,
            peer_in_sync: peer_in_sync_tx,
            agent_cmds: agent.cmds.clone(),
            agent_status: agent.status.clone(),
        },
        counters,
        cfg: cfg.clone(),
        home: home.clone(),
        api_dead: shared.api_dead.clone(),
    });
    owner.start(!pair && meta.epoch == 0 && r.initial_role == InitialRole::Primary);
    info!(node = %cfg.node_name, api = %cfg.api.listen, replication = %r.listen, "escd running");
    let result = owner
        .run(
            Inbox {
                events: events_rx,
                ha: ha_rx,
                net: net_rx,
                storage: storage.events,
            },
            Duration::from_millis((r.heartbeat_interval_ms / 2).max(5)),
            Duration::from_millis(cfg.ha.switchover_timeout_ms + 1_000),
            shutdown,
        )
        .await;
    drop(agent);
    tasks.abort_all();
    admin::cleanup(&home);
    info!(target: HA, "escd stopping");
    result
}
