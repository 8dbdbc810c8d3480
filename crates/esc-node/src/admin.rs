//! The admin socket `$ESC_HOME/escd.sock` used by `escadm`: one JSON request
//! per line, one JSON response per line. The socket file is mode 0600, so
//! only the daemon's user (root in production) may drive the node.
//! Translation only: requests go to the owner task.

use crate::logging::ADMIN;
use crate::node::{Event, Shared};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Socket file name inside the node home.
pub const SOCKET_FILE: &str = "escd.sock";
/// Longest accepted request line.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Deadline for the node to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A command from `escadm`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    Status {
        verbose: bool,
    },
    Health,
    Reload,
    /// Set the replicated operation mode; with `ipt_check`, entering
    /// maintenance is refused while transactions are in progress.
    OpModeSet {
        mode: esc_store::OpMode,
        ipt_check: bool,
    },
    OpModeShow,
    /// Northbound transactions in progress.
    IpTrans,
    /// Promote; refused when it could lose writes or make two primaries,
    /// unless `force` (the operator takes that risk knowingly).
    Promote {
        reason: String,
        #[serde(default)]
        force: bool,
    },
    Demote {
        reason: String,
    },
    /// Planned handover to the in-sync standby (failback is the same command).
    Switchover,
    /// Lab only (`[debug] allow_fault_injection`): the service task stops
    /// answering for `seconds` while the HA agent lives.
    Hang {
        seconds: u64,
    },
    /// Lab only: the northbound API dies (stops listening, closes its
    /// connections) while the HA agent and the replication core live.
    KillApi,
}

/// The node's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminResponse {
    pub ok: bool,
    pub message: String,
    pub status: Option<serde_json::Value>,
}

impl AdminResponse {
    pub fn ok(message: &str, status: Option<serde_json::Value>) -> AdminResponse {
        AdminResponse {
            ok: true,
            message: message.into(),
            status,
        }
    }

    pub fn err(message: String) -> AdminResponse {
        AdminResponse {
            ok: false,
            message,
            status: None,
        }
    }
}

/// The socket path of a node home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(home: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(home);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another escd is already running with home {} (its admin socket answers)",
                home.display()
            );
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes the socket file at shutdown.
pub fn cleanup(home: &Path) {
    let _ = std::fs::remove_file(socket_path(home));
}

/// Serves admin requests until the task is aborted.
pub async fn serve(listener: UnixListener, shared: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, shared).await {
                warn!(target: ADMIN, "admin connection: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, shared: Shared) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(REQUEST_BYTES_MAX as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => AdminResponse::err(format!("bad admin request: {e}")),
            Ok(AdminRequest::Health) => {
                let peer = crate::health::peer_in_sync(&shared).await;
                let report = crate::health::report(&shared, shared.api_addr, peer).await;
                AdminResponse {
                    ok: true,
                    message: report.message.clone(),
                    status: serde_json::to_value(&report).ok(),
                }
            }
            Ok(AdminRequest::OpModeShow) => match shared.store.op_mode() {
                Ok(m) => AdminResponse::ok(&format!("Operation Mode = {}", m.word()), None),
                Err(e) => AdminResponse::err(e.to_string()),
            },
            Ok(AdminRequest::IpTrans) => {
                let list = shared
                    .inflight
                    .lock()
                    .map(|m| m.clone())
                    .unwrap_or_default();
                AdminResponse {
                    ok: true,
                    message: format!("{} transaction(s) in progress", list.len()),
                    status: serde_json::to_value(&list).ok(),
                }
            }
            Ok(
                req @ (AdminRequest::Switchover
                | AdminRequest::Promote { .. }
                | AdminRequest::Demote { .. }),
            ) if shared.agent.get().is_some_and(|a| a.pair) => {
                info!(target: ADMIN, request = %line, "admin request");
                to_agent(&shared, req).await
            }
            Ok(AdminRequest::Switchover) => {
                AdminResponse::err("no peer configured: there is nothing to switch over to".into())
            }
            Ok(AdminRequest::OpModeSet { mode, ipt_check }) => {
                info!(target: ADMIN, ?mode, ipt_check, "escadm op_mode set");
                set_op_mode(&shared, mode, ipt_check).await
            }
            Ok(req) => {
                let verbose = matches!(req, AdminRequest::Status { verbose: true });
                if !matches!(req, AdminRequest::Status { .. }) {
                    info!(target: ADMIN, request = %line, "admin request");
                }
                let (tx, rx) = oneshot::channel();
                if shared
                    .events
                    .send(Event::Admin { req, reply: tx })
                    .await
                    .is_err()
                {
                    AdminResponse::err("node stopping".into())
                } else {
                    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                        Ok(Ok(mut r)) => {
                            if verbose {
                                add_digest(&shared, &mut r).await;
                            }
                            r
                        }
                        _ => AdminResponse::err("the node did not answer in time".into()),
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
        if resp.ok && resp.message.starts_with("reloading") {
            // The operator has the answer; now the node may restart.
            wr.flush().await?;
            let _ = shared.events.send(Event::ReloadNow).await;
        }
    }
    Ok(())
}

/// Role commands in a pair go to the role authority (architecture section 2:
/// roles are decided in one place).
async fn to_agent(shared: &Shared, req: AdminRequest) -> AdminResponse {
    use crate::agent::AgentCmd;
    let Some(link) = shared.agent.get() else {
        return AdminResponse::err("the HA agent is not running".into());
    };
    let (tx, rx) = oneshot::channel();
    let cmd = match req {
        AdminRequest::Switchover => AgentCmd::Switchover { reply: tx },
        AdminRequest::Promote { force, .. } => AgentCmd::Promote { force, reply: tx },
        AdminRequest::Demote { .. } => AgentCmd::Demote { reply: tx },
        _ => return AdminResponse::err("not a role command".into()),
    };
    if link.cmds.send(cmd).await.is_err() {
        return AdminResponse::err("the HA agent is not running".into());
    }
    match tokio::time::timeout(link.switchover_timeout + ANSWER_TIMEOUT, rx).await {
        Ok(Ok(Ok(message))) => AdminResponse::ok(&message, None),
        Ok(Ok(Err(e))) => AdminResponse::err(e),
        _ => AdminResponse::err("the HA agent did not answer in time".into()),
    }
}

/// Proposes the mode change through the replicated log, like a write, so
/// it survives a switchover.
async fn set_op_mode(shared: &Shared, mode: esc_store::OpMode, ipt_check: bool) -> AdminResponse {
    if shared.role.borrow().role != esc_repl::Role::Primary {
        return AdminResponse::err(
            "this node is standby: set the operation mode on the primary (it is replicated)".into(),
        );
    }
    if ipt_check && mode == esc_store::OpMode::Maintenance {
        let busy = shared.inflight.lock().map(|m| m.len()).unwrap_or(0);
        if busy > 0 {
            return AdminResponse::err(format!(
                "{busy} transaction(s) in progress (escadm ip_trans): maintenance refused by --ipt_check"
            ));
        }
    }
    let tid = uuid::Uuid::new_v4().to_string();
    let cmd = esc_store::Command {
        tid: tid.clone(),
        idempotency_key: None,
        fingerprint: String::new(),
        at_ms: crate::node::unix_ms(),
        op: esc_store::Op::SetOpMode { mode },
    };
    let (tx, rx) = oneshot::channel();
    let payload = serde_json::to_vec(&cmd).expect("command to JSON");
    if shared
        .events
        .send(Event::Propose { payload, reply: tx })
        .await
        .is_err()
    {
        return AdminResponse::err("node stopping".into());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(Ok(_))) => AdminResponse::ok(&format!("Operation Mode = {}", mode.word()), None),
        _ => AdminResponse::err(format!(
            "the mode change (tid {tid}) did not commit in time: check `escadm op_mode show`"
        )),
    }
}

/// Adds the state digest and size, computed off the owner task.
async fn add_digest(shared: &Shared, r: &mut AdminResponse) {
    let store = shared.store.clone();
    let res = tokio::task::spawn_blocking(move || {
        let (applied, digest) = store.digest()?;
        let count = store.deployment_count()?;
        Ok::<_, esc_store::StoreError>((applied, digest, count))
    })
    .await;
    if let (Ok(Ok((applied, digest, count))), Some(serde_json::Value::Object(m))) =
        (res, r.status.as_mut())
    {
        m.insert(
            "state".into(),
            serde_json::json!({"applied_index": applied, "digest": digest, "deployments": count}),
        );
    }
}

/// Client side, used by `escadm`: one request, one answer.
pub async fn request(home: &Path, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
    let path = socket_path(home);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach escd at {}: {e} (is escd running with this --home? are you root?)",
            path.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    let mut lines = BufReader::new(rd).lines();
    let answer = tokio::time::timeout(ANSWER_TIMEOUT + Duration::from_secs(2), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("escd did not answer in time"))??
        .ok_or_else(|| anyhow::anyhow!("escd closed the admin connection"))?;
    Ok(serde_json::from_str(&answer)?)
}
