//! The lifecycle runner (issue 11, item 2): a primary-only service that
//! drives `esc_lifecycle::Lifecycle` with the committed operation records,
//! makes its VIM calls through `esc_openstack`, and proposes its steps
//! through the log like any write.
//!
//! ```text
//!   store (applied index moved) ──active_operations──> Lifecycle::handle(Records)
//!   VIM answers (one task per call) ──────────────────> Lifecycle::handle(Answer)
//!        Output::Call ──> esc_openstack::Client ──> the VIM
//!        Output::Propose(step) ──> Event::Propose(RecordStep) ──> owner ──> the log
//! ```
//! Everything it knows beyond the records is soft: the next primary starts
//! it afresh (`Input::Lead`) from what was committed. Stopped (aborted) by
//! the services supervisor within 100 ms of a step-down.

use crate::logging::HA;
use crate::services::PrimaryService;
use crate::shared::Shared;
use base64::Engine;
use esc_domain::model::{VmAction, VmGroup};
use esc_domain::{query, Op};
use esc_lifecycle::{Answer, Input, Lifecycle, Output, ServerInfo, VimCall};
use esc_openstack::{Client, CreateServer, Error};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How often the runner looks whether the applied state moved.
const LOOK_EVERY: Duration = Duration::from_millis(20);

pub struct Runner {
    shared: Shared,
    client: Arc<Client>,
    cfg: esc_lifecycle::Config,
}

impl Runner {
    pub fn new(shared: Shared, client: Arc<Client>, cfg: esc_lifecycle::Config) -> Runner {
        Runner {
            shared,
            client,
            cfg,
        }
    }
}

impl PrimaryService for Runner {
    fn name(&self) -> &'static str {
        "lifecycle runner"
    }

    fn run(&self, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let (shared, client, cfg) = (self.shared.clone(), self.client.clone(), self.cfg.clone());
        Box::pin(run(shared, client, cfg, stop))
    }
}

fn answer_of(r: Result<Answer, Error>) -> Answer {
    match r {
        Ok(a) => a,
        Err(Error::NotFound(_)) => Answer::NotFound,
        Err(e) => Answer::Failed {
            retryable: e.retryable(),
            unknown: matches!(e, Error::Transport(_)),
            error: e.to_string(),
        },
    }
}

fn info(s: esc_openstack::Server) -> ServerInfo {
    ServerInfo {
        id: s.id,
        name: s.name,
        status: s.status,
        fault: s.fault.map(|f| f.message),
        addresses: s
            .addresses
            .into_iter()
            .map(|(net, l)| (net, l.into_iter().map(|a| a.addr).collect()))
            .collect(),
        op: s.metadata.get("esc_op").cloned(),
        deployment: s.metadata.get("esc_deployment").cloned(),
    }
}

/// Day-0 data: the group's files as JSON, base64 (the API's `user_data`).
fn user_data(group: &VmGroup) -> Option<String> {
    if group.config_data.is_empty() {
        return None;
    }
    let files: BTreeMap<&str, &str> = group
        .config_data
        .iter()
        .map(|f| (f.file.as_str(), f.data.as_str()))
        .collect();
    let json = serde_json::to_vec(&files).unwrap_or_default();
    Some(base64::engine::general_purpose::STANDARD.encode(json))
}

/// How long a name -> id lookup of the VIM's catalogue (image, flavor,
/// network) is reused: a create then costs one call, not four.
const CATALOG_TTL: Duration = Duration::from_secs(60);

/// The ids of the VIM's images, flavors and networks, by name, as looked
/// up lately (soft: a miss asks the VIM).
#[derive(Default)]
struct Catalog(std::sync::Mutex<BTreeMap<CatalogKey, (String, Instant)>>);

/// What was looked up: `image`, `flavor` or `network`, and its name.
type CatalogKey = (&'static str, String);

impl Catalog {
    async fn id<F>(&self, kind: &'static str, name: &str, find: F) -> Result<String, Error>
    where
        F: std::future::Future<Output = Result<String, Error>>,
    {
        let key = (kind, name.to_string());
        if let Some((id, at)) = self.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            if at.elapsed() < CATALOG_TTL {
                return Ok(id);
            }
        }
        let id = find.await?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, (id.clone(), Instant::now()));
        }
        Ok(id)
    }
}

/// A call this node may not make (`Shared::may_act`): nothing was sent.
fn not_leading() -> Answer {
    Answer::Failed {
        error: "this node no longer holds its lease: the call was not made".into(),
        retryable: true,
        unknown: false,
    }
}

/// What changed among the unsettled operations since `known` (their
/// versions): the versions now, the records that are new or moved, and the
/// operations gone (settled). One small read per operation in progress,
/// one record read per change.
fn changed_since(
    store: &crate::shared::NodeStore,
    known: &BTreeMap<String, u64>,
) -> Result<Changes, String> {
    let r = store.reader().map_err(|e| e.to_string())?;
    let now: BTreeMap<String, u64> = query::active_operation_versions(&r)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let mut records = Vec::new();
    for (id, v) in &now {
        if known.get(id) != Some(v) {
            if let Some(rec) = query::operation(&r, id).map_err(|e| e.to_string())? {
                records.push(rec);
            }
        }
    }
    let gone = known
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    Ok(Changes {
        versions: now,
        records,
        gone,
    })
}

/// What [`changed_since`] found.
struct Changes {
    versions: BTreeMap<String, u64>,
    records: Vec<esc_domain::model::OperationRecord>,
    gone: Vec<String>,
}

/// The servers of deployment `id` among `listed`: by the metadata every
/// create sets (`VmKey::metadata`), not by the name alone. Names and groups
/// may hold `-`, so `esc-a-` also begins the servers of a deployment `a-b`
/// (and Nova's `name` filter is a regular expression search): an undeploy
/// of `a` must not see them.
fn of_deployment(listed: Vec<esc_openstack::Server>, id: &str) -> Vec<esc_openstack::Server> {
    listed
        .into_iter()
        .filter(|s| {
            s.metadata.get("esc_managed").map(String::as_str) == Some("true")
                && s.metadata.get("esc_deployment").map(String::as_str) == Some(id)
        })
        .collect()
}

/// One VIM call, as the core asked it; a create checks `may_act` again
/// right before the request that creates (its lookups take time).
async fn execute(
    client: &Client,
    catalog: &Catalog,
    op: &str,
    vim: VimCall,
    shared: &Shared,
) -> Answer {
    match vim {
        VimCall::Find { name } => answer_of(
            client
                .servers(Some(&name))
                .await
                .map(|l| Answer::Found(l.into_iter().map(info).collect())),
        ),
        VimCall::ListDeployment { deployment_id } => {
            let prefix = format!("esc-{deployment_id}-");
            answer_of(client.servers(Some(&prefix)).await.map(|l| {
                Answer::Found(
                    of_deployment(l, &deployment_id)
                        .into_iter()
                        .map(info)
                        .collect(),
                )
            }))
        }
        VimCall::Show { server_id } => answer_of(
            client
                .server(&server_id)
                .await
                .map(|s| Answer::Shown(info(s))),
        ),
        VimCall::Actions { server_id } => answer_of(
            client
                .instance_actions(&server_id)
                .await
                .map(|l| Answer::Actions(l.into_iter().map(|a| a.request_id).collect())),
        ),
        // Checked again right before the request: the mark may have been
        // read long ago by this node.
        VimCall::Act {
            server_id,
            action,
            hard,
        } => {
            if !shared.may_act() {
                return not_leading();
            }
            let done = match action {
                VmAction::Reboot => client.reboot(&server_id, hard).await,
                VmAction::Stop => client.stop(&server_id).await,
                VmAction::Start => client.start(&server_id).await,
            };
            answer_of(done.map(|()| Answer::Acted))
        }
        VimCall::Delete { server_id } => answer_of(
            client
                .delete_server(&server_id)
                .await
                .map(|()| Answer::Deleted),
        ),
        VimCall::Create { key, name, group } => {
            let create = async {
                let image = catalog
                    .id("image", &group.image, async {
                        client.find_image(&group.image).await.map(|i| i.id)
                    })
                    .await?;
                let flavor = catalog
                    .id("flavor", &group.flavor, async {
                        client.find_flavor(&group.flavor).await.map(|f| f.id)
                    })
                    .await?;
                let mut networks = Vec::new();
                for nic in &group.interfaces {
                    let net = catalog
                        .id("network", &nic.network, async {
                            client.find_network(&nic.network).await.map(|n| n.id)
                        })
                        .await?;
                    let ip = nic
                        .ip_addresses
                        .get(key.index as usize)
                        .map(|a| a.to_string());
                    networks.push((net, ip));
                }
                if !shared.may_act() {
                    return Ok(None);
                }
                let req = CreateServer {
                    name,
                    image_id: image,
                    flavor_id: flavor,
                    networks,
                    metadata: key.metadata(op).into_iter().collect(),
                    user_data: user_data(&group),
                };
                client.create_server(&req).await.map(Some)
            };
            match create.await {
                Ok(None) => not_leading(),
                Ok(Some(server_id)) => Answer::Created { server_id },
                Err(e) => answer_of(Err(e)),
            }
        }
    }
}

async fn run(
    shared: Shared,
    client: Arc<Client>,
    cfg: esc_lifecycle::Config,
    mut stop: watch::Receiver<bool>,
) {
    let mut core = Lifecycle::new(cfg);
    let catalog = Arc::new(Catalog::default());
    let start = Instant::now();
    let now = move || start.elapsed().as_millis() as u64;
    let epoch = shared.role.borrow().epoch;
    // At most one answer per call in flight, and the core bounds those
    // (`calls_in_flight_max`).
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<(u64, Answer)>();
    let mut applied = None;
    // The version (log index of the last change) of every unsettled
    // operation the core holds: only records that moved are read again.
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(target: HA, epoch, "lifecycle runner starting");
    let mut out = core.handle(now(), Input::Lead { epoch });
    loop {
        for o in out.drain(..) {
            match o {
                Output::Call { call, vim, op, .. } => {
                    let (client, tx, sh, cat) = (
                        client.clone(),
                        answers_tx.clone(),
                        shared.clone(),
                        catalog.clone(),
                    );
                    tokio::spawn(async move {
                        let a = if sh.may_act() {
                            execute(&client, &cat, &op, vim, &sh).await
                        } else {
                            not_leading()
                        };
                        let _ = tx.send((call, a));
                    });
                }
                // The record's change reaches the core through the store;
                // a step that did not commit is planned again (`repropose_ms`).
                Output::Propose(step) => {
                    crate::services::propose(&shared, Op::RecordStep { step }, "a lifecycle step")
                }
            }
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    info!(target: HA, "lifecycle runner stopping");
                    return;
                }
                out = Vec::new();
            }
            Some((call, answer)) = answers.recv() => {
                out = core.handle(now(), Input::Answer { call, answer });
            }
            _ = look.tick() => {
                let a = shared.store.meta().applied_index;
                if applied != Some(a) {
                    applied = Some(a);
                    let store = shared.store.clone();
                    let known: BTreeMap<String, u64> = versions.clone();
                    let read = tokio::task::spawn_blocking(move || changed_since(&store, &known))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r);
                    out = match read {
                        Ok(c) => {
                            versions = c.versions;
                            core.handle(now(), Input::Changed { records: c.records, gone: c.gone })
                        }
                        Err(e) => {
                            warn!(target: HA, "lifecycle runner cannot read the operations: {e}");
                            // Read again at the next look.
                            applied = None;
                            Vec::new()
                        }
                    };
                } else {
                    out = core.handle(now(), Input::Tick);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, deployment: Option<&str>) -> esc_openstack::Server {
        let mut metadata = BTreeMap::new();
        if let Some(d) = deployment {
            metadata.insert("esc_managed".to_string(), "true".to_string());
            metadata.insert("esc_deployment".to_string(), d.to_string());
        }
        esc_openstack::Server {
            id: format!("id-{name}"),
            name: name.into(),
            status: "ACTIVE".into(),
            metadata,
            addresses: BTreeMap::new(),
            fault: None,
        }
    }

    /// `esc-a-` begins the names of both `a`'s and `a-b`'s servers, and a
    /// server not of this manager may be named anything.
    #[test]
    fn a_deployment_lists_its_own_servers_only() {
        let listed = vec![
            server("esc-a-g-0-g0", Some("a")),
            server("esc-a-b-g-0-g0", Some("a-b")),
            server("esc-a-g-1-g0", None),
        ];
        let names: Vec<String> = of_deployment(listed, "a")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["esc-a-g-0-g0".to_string()]);
    }
}
