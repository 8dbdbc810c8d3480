//! The VIM sweeper (docs/architecture.md, "The service": exactly one server
//! per VM): a primary-only service that drives `esc_lifecycle::sweep::
//! Sweeper` every `vim.sweep_interval_ms`, lists every server of the VIM
//! project (all pages), reads the records of the deployments they name,
//! and deletes the strays the core picks.
//!
//! ```text
//!   tick (1 s) ──> Sweeper::handle(Tick) ──List──> Client::servers(None), then one
//!                                                  query::service per deployment named
//!   Input::Listed ──> Output::Delete ──> the record read again, `may_act`, then
//!                                        Client::delete_server ──> Input::Deleted
//!   Output::Notice ──> the log (a stray seen, an orphan named, a server removed)
//! ```
//! The record is read again right before each delete, so an operation that
//! started (or a VM that took the server) since the listing withholds it:
//! the window left is that read's distance to the request. The core's
//! figures are published in `Shared::sweep` (`shared::SweepShown`) for
//! `escadm status --v`.

use crate::logging::HA;
use crate::services::PrimaryService;
use crate::shared::{NodeStore, Shared};
use esc_domain::query;
use esc_lifecycle::sweep::{
    DeleteOutcome, Holding, Input, Notice, Output, SweepConfig, Sweeper, SweptServer,
};
use esc_openstack::{Client, Error};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How often the sweeper asks its core whether a pass is due.
const TICK: Duration = Duration::from_secs(1);

pub struct Service {
    shared: Shared,
    client: Arc<Client>,
    cfg: SweepConfig,
}

impl Service {
    pub fn new(shared: Shared, client: Arc<Client>, cfg: SweepConfig) -> Service {
        Service {
            shared,
            client,
            cfg,
        }
    }
}

impl PrimaryService for Service {
    fn name(&self) -> &'static str {
        "VIM sweeper"
    }

    fn run(&self, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let (shared, client, cfg) = (self.shared.clone(), self.client.clone(), self.cfg.clone());
        Box::pin(run(shared, client, cfg, stop))
    }
}

/// What the listing gives the core: each server's id, name, and its
/// deployment when it carries this manager's metadata.
fn swept(s: esc_openstack::Server) -> SweptServer {
    let ours = s.metadata.get("esc_managed").map(String::as_str) == Some("true");
    SweptServer {
        deployment: ours
            .then(|| s.metadata.get("esc_deployment").cloned())
            .flatten(),
        id: s.id,
        name: s.name,
    }
}

/// What one record says: an operation in progress, and the servers its
/// VMs hold.
///
/// An operation left FAILED_TEMP counts as in progress: its record holds
/// servers the service's does not yet (an update's new VMs, a deploy's
/// late create that a retry would adopt) and waits for the operator's
/// retry, rollback or fail, which settle them.
fn holding(
    r: &dyn esc_state::StateRead,
    rec: &esc_domain::model::ServiceRecord,
) -> Result<Holding, String> {
    let failed_temp = match &rec.last_op {
        Some(op) => query::operation(r, op)
            .map_err(|e| e.to_string())?
            .is_some_and(|o| o.state == esc_domain::model::OperationState::FailedTemp),
        None => false,
    };
    Ok(Holding {
        busy: rec.current_op.is_some() || failed_temp,
        servers: rec.vms.iter().filter_map(|v| v.server_id.clone()).collect(),
    })
}

/// What the state says of deployment `name`: its record's holding; for
/// one removed lately (`query::gone`), idle and holding nothing (a server
/// of it landed after its undeploy); None when this node never had it.
fn holding_of(r: &dyn esc_state::StateRead, name: &str) -> Result<Option<Holding>, String> {
    if let Some(rec) = query::service(r, name).map_err(|e| e.to_string())? {
        return holding(r, &rec).map(Some);
    }
    Ok(query::gone(r, name)
        .map_err(|e| e.to_string())?
        .map(|_| Holding::default()))
}

/// The holdings of `deployments` (those this node never had are left out:
/// orphans).
fn holdings(
    r: &dyn esc_state::StateRead,
    deployments: &BTreeSet<String>,
) -> Result<BTreeMap<String, Holding>, String> {
    let mut out = BTreeMap::new();
    for d in deployments {
        if let Some(h) = holding_of(r, d)? {
            out.insert(d.clone(), h);
        }
    }
    Ok(out)
}

/// `f` over a read transaction of the store, off the async threads.
async fn read<T: Send + 'static>(
    store: Arc<NodeStore>,
    f: impl FnOnce(&dyn esc_state::StateRead) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let r = store.reader().map_err(|e| e.to_string())?;
        f(&r)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
}

/// One pass's listing and the records it names.
async fn list(shared: &Shared, client: &Client) -> Input {
    let servers = match client.servers(None).await {
        Ok(l) => l.into_iter().map(swept).collect::<Vec<_>>(),
        Err(e) => {
            return Input::ListFailed {
                error: e.to_string(),
            }
        }
    };
    // Read after the listing: a server listed belongs to a record read
    // after it was seen, never before (docs: the hold covers the rest).
    let names: BTreeSet<String> = servers
        .iter()
        .filter_map(|s| s.deployment.clone())
        .collect();
    match read(shared.store.clone(), move |r| holdings(r, &names)).await {
        Ok(holdings) => Input::Listed { servers, holdings },
        Err(e) => Input::ListFailed {
            error: format!("reading the records: {e}"),
        },
    }
}

/// One delete, withheld if the record moved since the listing or this
/// node may no longer act.
async fn delete(
    shared: &Shared,
    client: &Client,
    server_id: &str,
    deployment: &str,
) -> DeleteOutcome {
    let dep = deployment.to_string();
    let now = match read(shared.store.clone(), move |r| holding_of(r, &dep)).await {
        Ok(h) => h,
        Err(e) => {
            return DeleteOutcome::Failed {
                error: format!("reading the record: {e}"),
            }
        }
    };
    let withheld = match now {
        None => Some("its deployment is not known here any more".to_string()),
        Some(h) if h.busy => Some("an operation started on its deployment".to_string()),
        Some(h) if h.servers.contains(server_id) => Some("a VM holds it now".to_string()),
        Some(_) => None,
    };
    if let Some(reason) = withheld {
        return DeleteOutcome::Withheld { reason };
    }
    if !shared.may_act() {
        return DeleteOutcome::Withheld {
            reason: "this node no longer holds its lease".into(),
        };
    }
    match client.delete_server(server_id).await {
        Ok(()) => DeleteOutcome::Deleted,
        Err(Error::NotFound(_)) => DeleteOutcome::Gone,
        Err(e) => DeleteOutcome::Failed {
            error: e.to_string(),
        },
    }
}

fn log(n: Notice) {
    match n {
        Notice::Stray {
            server_id,
            name,
            deployment,
        } => info!(target: HA, server_id, name, deployment,
            "VIM sweep: a server of deployment {deployment} no VM holds; deleted if a later pass still finds it so"),
        Notice::Orphan {
            server_id,
            name,
            deployment,
        } => warn!(target: HA, server_id, name, deployment,
            "VIM sweep: server {name} carries this manager's metadata but deployment {deployment} is unknown here; left alone (delete it by hand if it is not another manager's)"),
        Notice::Removed {
            server_id,
            name,
            deployment,
        } => info!(target: HA, server_id, name, deployment,
            "VIM sweep: deleted server {name}, of deployment {deployment}, that no VM held"),
        Notice::DeleteFailed {
            server_id,
            name,
            error,
        } => {
            warn!(target: HA, server_id, name, "VIM sweep: deleting server {name} failed (tried again next pass): {error}")
        }
        Notice::ListFailed { error } => {
            warn!(target: HA, "VIM sweep: listing the servers failed (tried again next pass): {error}")
        }
    }
}

async fn run(
    shared: Shared,
    client: Arc<Client>,
    cfg: SweepConfig,
    mut stop: watch::Receiver<bool>,
) {
    let interval_ms = cfg.interval_ms;
    let mut core = Sweeper::new(cfg);
    let start = Instant::now();
    let now = move || start.elapsed().as_millis() as u64;
    // Unbounded, yet bounded by the core: one listing at a time and at
    // most `deletes_in_flight_max` deletes, each sending one input.
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(target: HA, interval_ms, "VIM sweeper starting");
    let mut out = core.handle(now(), Input::Lead);
    let mut last_pass = None;
    loop {
        for o in out.drain(..) {
            match o {
                Output::List => {
                    let (sh, c, tx) = (shared.clone(), client.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(list(&sh, &c).await);
                    });
                }
                Output::Delete {
                    server_id,
                    deployment,
                    ..
                } => {
                    let (sh, c, tx) = (shared.clone(), client.clone(), tx.clone());
                    tokio::spawn(async move {
                        let outcome = delete(&sh, &c, &server_id, &deployment).await;
                        let _ = tx.send(Input::Deleted { server_id, outcome });
                    });
                }
                Output::Notice(n) => log(n),
            }
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    info!(target: HA, "VIM sweeper stopping");
                    // Its figures are the leader's: a standby shows none.
                    if let Ok(mut s) = shared.sweep.lock() {
                        *s = None;
                    }
                    return;
                }
            }
            Some(input) = rx.recv() => {
                if matches!(input, Input::Listed { .. } | Input::ListFailed { .. }) {
                    last_pass = Some(Instant::now());
                }
                out = core.handle(now(), input);
                if let Ok(mut s) = shared.sweep.lock() {
                    *s = Some(crate::shared::SweepShown {
                        interval_ms,
                        report: core.report().clone(),
                        last_pass,
                    });
                }
            }
            _ = tick.tick() => {
                out = core.handle(now(), Input::Tick);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esc_domain::model::{
        DeploymentSpec, OperationKind, OperationRecord, OperationState, ServiceRecord, ServiceState,
    };
    use esc_state::MemState;

    /// A deployment whose last operation is FAILED_TEMP is as busy as one
    /// with an operation running: that record may hold servers the
    /// deployment's does not (an update's new VMs) until the operator's
    /// retry, rollback or fail.
    #[test]
    fn a_failed_temp_operation_keeps_its_deployment_busy() {
        let spec: DeploymentSpec = serde_json::from_value(DeploymentSpec::example()).unwrap();
        let service = ServiceRecord {
            spec: spec.clone(),
            state: ServiceState::Active,
            current_op: None,
            vms: Vec::new(),
            created_at_ms: 0,
            last_op: Some("op-1".into()),
            scaling: Default::default(),
            monitor_disabled: false,
        };
        for (state, busy) in [
            (OperationState::FailedTemp, true),
            (OperationState::Completed, false),
            (OperationState::Failed, false),
        ] {
            let mut op = OperationRecord::new(
                "op-1".into(),
                spec.name.clone(),
                OperationKind::Update { spec: spec.clone() },
            );
            op.state = state;
            let mut s = MemState::default();
            s.0.insert(
                esc_domain::keys::operation("op-1"),
                serde_json::to_vec(&op).unwrap(),
            );
            assert_eq!(holding(&s, &service).unwrap().busy, busy, "{state:?}");
        }
        let running = ServiceRecord {
            current_op: Some("op-2".into()),
            ..service
        };
        assert!(holding(&MemState::default(), &running).unwrap().busy);
    }
}
