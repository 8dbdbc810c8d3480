//! The admin socket `$ESC_HOME/escd.sock` used by `escadm`, speaking
//! `esc_proto::admin` (one JSON request per line, one JSON answer per
//! line). The socket file is mode 0600, so only the daemon's user (root in
//! production) may drive the node. Translation only: requests go to the
//! owner task or the HA agent, or are answered from typed reads.

use crate::logging::ADMIN;
use crate::shared::{unix_ms, AgentCmd, Event, OwnerRequest, Shared};
use esc_domain::{query, Command, Op, OpMode, Outcome};
use esc_proto::admin::{socket_path, ANSWER_TIMEOUT, REQUEST_BYTES_MAX};
use esc_proto::status::StateSummary;
use esc_proto::{AdminRequest, AdminResponse};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Admin connections served at once; more are closed at once. escadm
/// opens one per command; only root can connect, but a stuck script
/// looping on `escadm status` must not exhaust descriptors (issue 14).
pub const CONNECTIONS_MAX: usize = 64;
/// How long a connection may stay silent before its next request line.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(home: &Path) -> crate::Result<UnixListener> {
    let path = socket_path(home);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(crate::Error::AlreadyRunning {
                home: home.to_path_buf(),
            });
        }
        std::fs::remove_file(&path)
            .map_err(|e| crate::Error::io(format!("cannot remove {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(&path).map_err(|e| {
        crate::Error::io(
            format!("cannot bind the admin socket {}", path.display()),
            e,
        )
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| crate::Error::io(format!("cannot restrict {}", path.display()), e))?;
    Ok(listener)
}

/// Removes the socket file at shutdown.
pub fn cleanup(home: &Path) {
    let _ = std::fs::remove_file(socket_path(home));
}

/// Serves admin requests until the task is aborted.
pub async fn serve(listener: UnixListener, shared: Shared) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: the error would repeat at once.
                warn!(target: ADMIN, "admin accept failed: {e}");
                tokio::time::sleep(crate::fds::ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(target: ADMIN, "{CONNECTIONS_MAX} admin connections open: one more closed");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_one(stream, shared).await {
                warn!(target: ADMIN, "admin connection: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, shared: Shared) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(REQUEST_BYTES_MAX as u64)).lines();
    while let Some(line) = tokio::time::timeout(IDLE_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??
    {
        let resp = match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => AdminResponse::refused(format!(
                "bad admin request: {e} (is escadm the same version as escd?)"
            )),
            Ok(req) => {
                if req.logged_verbatim() {
                    info!(target: ADMIN, request = %line, "admin request");
                }
                answer(&shared, req).await
            }
        };
        let mut out = serde_json::to_vec(&resp).expect("an answer serializes");
        out.push(b'\n');
        wr.write_all(&out).await?;
        if let AdminResponse::Reloading { .. } = resp {
            // The operator has the answer; now the node may restart.
            wr.flush().await?;
            let _ = shared.events.send(Event::ReloadNow).await;
        }
    }
    Ok(())
}

async fn answer(shared: &Shared, req: AdminRequest) -> AdminResponse {
    let pair = shared.agent.get().is_some_and(|a| a.pair);
    match req {
        AdminRequest::Health => {
            let peer = crate::health::peer_in_sync(shared);
            AdminResponse::Health {
                report: crate::health::report(shared, shared.api_addr, peer).await,
            }
        }
        AdminRequest::OpModeShow => match read(shared, |r| query::op_mode(r)).await {
            Ok(mode) => AdminResponse::OpMode { mode },
            Err(e) => AdminResponse::refused(e),
        },
        AdminRequest::IpTrans => AdminResponse::Transactions {
            transactions: shared.inflight.snapshot(),
        },
        AdminRequest::OpModeSet { mode, ipt_check } => set_op_mode(shared, mode, ipt_check).await,
        req @ (AdminRequest::Switchover
        | AdminRequest::Promote { .. }
        | AdminRequest::Demote { .. })
            if pair =>
        {
            to_agent(shared, req).await
        }
        AdminRequest::Switchover => {
            AdminResponse::refused("no peer configured: there is nothing to switch over to")
        }
        AdminRequest::Status { verbose, health } => {
            let mut resp = to_owner(shared, OwnerRequest::Status).await;
            if let AdminResponse::Status { status } = &mut resp {
                if health {
                    let peer = crate::health::peer_in_sync(shared);
                    status.health =
                        Some(crate::health::report(shared, shared.api_addr, peer).await);
                }
                if verbose {
                    status.state = summary(shared).await;
                }
                status.vim = shared.vim.as_deref().map(crate::vim::status);
                status.monitor = shared.monitor.lock().ok().and_then(|m| m.clone());
                status.sweep = shared
                    .sweep
                    .lock()
                    .ok()
                    .and_then(|s| s.as_ref().map(crate::shared::SweepShown::status));
            }
            resp
        }
        AdminRequest::Reload => match reload_in_place(shared) {
            Some(answer) => answer,
            None => to_owner(shared, OwnerRequest::Reload).await,
        },
        AdminRequest::Promote { reason, force } => {
            to_owner(shared, OwnerRequest::Promote { reason, force }).await
        }
        AdminRequest::Demote { reason } => to_owner(shared, OwnerRequest::Demote { reason }).await,
        AdminRequest::Hang { seconds } => to_owner(shared, OwnerRequest::Hang { seconds }).await,
        AdminRequest::KillApi => to_owner(shared, OwnerRequest::KillApi).await,
        AdminRequest::UserAdd {
            name,
            role,
            password_hash,
        } => {
            let user = esc_domain::accounts::User {
                name,
                role,
                password_hash,
            };
            user_change(
                shared,
                Op::PutUser {
                    user,
                    create_only: true,
                },
            )
            .await
        }
        AdminRequest::UserPasswd {
            name,
            password_hash,
        } => {
            user_change(
                shared,
                Op::SetPassword {
                    name,
                    password_hash,
                },
            )
            .await
        }
        AdminRequest::UserDel { name } => user_change(shared, Op::DeleteUser { name }).await,
        AdminRequest::UserList => match read(shared, |r| query::users(r, None, usize::MAX)).await {
            Ok(users) => AdminResponse::Users {
                users: users.iter().map(|u| u.entry()).collect(),
                bootstrap: shared.api_user.clone(),
            },
            Err(e) => AdminResponse::refused(e),
        },
    }
}

/// `escadm reload` with `esc.toml` unchanged: the TLS certificate and key
/// are reread and swapped in place (new connections get them; no restart,
/// no handover). None: the file changed (or does not load), so the owner
/// checks it and restarts the node with it.
fn reload_in_place(shared: &Shared) -> Option<AdminResponse> {
    let now = esc_config::Config::load(&shared.home).ok()?;
    if now != *shared.running_config {
        return None;
    }
    Some(match &shared.tls {
        Some(t) => match t.reload() {
            Ok(()) => {
                info!(target: ADMIN, "escadm reload: esc.toml unchanged; TLS certificate and key reloaded");
                AdminResponse::done(
                    "esc.toml unchanged: the TLS certificate and key were reloaded (new connections use them)",
                )
            }
            Err(e) => {
                warn!(target: ADMIN, error = %e, "escadm reload: TLS files refused");
                AdminResponse::refused(format!(
                    "the TLS files do not load, the certificate in use stays: {e}"
                ))
            }
        },
        None => AdminResponse::done("esc.toml unchanged: nothing to reload"),
    })
}

/// `escadm user add | passwd | del`: a replicated change of the accounts,
/// on the primary; logged by what it does (never the hash).
async fn user_change(shared: &Shared, op: Op) -> AdminResponse {
    let name = match &op {
        Op::PutUser { user, .. } => &user.name,
        Op::SetPassword { name, .. } | Op::DeleteUser { name } => name,
        _ => return AdminResponse::refused("not an account change"),
    };
    if *name == shared.api_user {
        return AdminResponse::refused(format!(
            "{name:?} is this node's bootstrap account (api.user): its password is api.password in esc.toml, or the generated api_password file"
        ));
    }
    if let Err(e) = op.validate() {
        return AdminResponse::refused(e.to_string());
    }
    info!(target: ADMIN, change = %op.describe(), "escadm user");
    if shared.role.borrow().role != esc_repl::Role::Primary {
        return AdminResponse::refused(
            "this node is standby: manage users on the primary (they are replicated)",
        );
    }
    match commit(shared, op).await {
        Ok(Outcome::UserSet {
            name,
            role,
            created,
        }) => AdminResponse::done(format!(
            "user {name} ({}) {}",
            role.word(),
            if created { "added" } else { "changed" }
        )),
        Ok(Outcome::UserDeleted { name }) => AdminResponse::done(format!("user {name} deleted")),
        Ok(Outcome::Refused { refused }) => AdminResponse::refused(refused.to_string()),
        Ok(other) => AdminResponse::refused(format!("unexpected outcome {other:?}")),
        Err(e) => AdminResponse::refused(e),
    }
}

/// Proposes `op` through the replicated log and waits for its outcome.
async fn commit(shared: &Shared, op: Op) -> Result<Outcome, String> {
    let tid = uuid::Uuid::new_v4().to_string();
    let cmd = Command {
        tid: tid.clone(),
        idempotency_key: None,
        fingerprint: String::new(),
        at_ms: unix_ms(),
        op,
    };
    let (tx, rx) = oneshot::channel();
    if shared
        .events
        .send(Event::Propose {
            payload: cmd.to_payload(),
            reply: tx,
        })
        .await
        .is_err()
    {
        return Err("node stopping".into());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(Ok(answer))) => Ok(answer.outcome),
        _ => Err(format!(
            "the change (tid {tid}) did not commit in time: check the node's status and try again"
        )),
    }
}

/// Requests the owner task answers.
async fn to_owner(shared: &Shared, req: OwnerRequest) -> AdminResponse {
    let (tx, rx) = oneshot::channel();
    if shared
        .events
        .send(Event::Admin { req, reply: tx })
        .await
        .is_err()
    {
        return AdminResponse::refused("node stopping");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        _ => AdminResponse::refused("the node did not answer in time"),
    }
}

/// Typed reads of the state, off the runtime.
async fn read<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&esc_store::StateReader) -> Result<T, esc_state::StateError> + Send + 'static,
) -> Result<T, String> {
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        let r = store.reader().map_err(|e| e.to_string())?;
        f(&r).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The applied state's size and digest: O(1) (the digest is kept as
/// entries apply, the counts are replicated counters).
async fn summary(shared: &Shared) -> Option<StateSummary> {
    let (applied_index, digest) = shared.store.digest();
    let counts = read(shared, |r| {
        Ok((query::deployment_count(r)?, query::event_count(r)?))
    })
    .await;
    counts.ok().map(|(deployments, events)| StateSummary {
        applied_index,
        digest,
        deployments,
        events,
    })
}

/// Role commands in a pair go to the role authority (architecture section 2:
/// roles are decided in one place).
async fn to_agent(shared: &Shared, req: AdminRequest) -> AdminResponse {
    let Some(link) = shared.agent.get() else {
        return AdminResponse::refused("the HA agent is not running");
    };
    let (tx, rx) = oneshot::channel();
    let cmd = match req {
        AdminRequest::Switchover => AgentCmd::Switchover { reply: tx },
        AdminRequest::Promote { force, .. } => AgentCmd::Promote { force, reply: tx },
        AdminRequest::Demote { .. } => AgentCmd::Demote { reply: tx },
        _ => return AdminResponse::refused("not a role command"),
    };
    if link.cmds.send(cmd).await.is_err() {
        return AdminResponse::refused("the HA agent is not running");
    }
    match tokio::time::timeout(link.switchover_timeout + ANSWER_TIMEOUT, rx).await {
        Ok(Ok(Ok(message))) => AdminResponse::done(message),
        Ok(Ok(Err(e))) => AdminResponse::refused(e),
        _ => AdminResponse::refused("the HA agent did not answer in time"),
    }
}

/// Proposes the mode change through the replicated log, like a write, so
/// it survives a switchover.
async fn set_op_mode(shared: &Shared, mode: OpMode, ipt_check: bool) -> AdminResponse {
    info!(target: ADMIN, ?mode, ipt_check, "escadm op_mode set");
    if shared.role.borrow().role != esc_repl::Role::Primary {
        return AdminResponse::refused(
            "this node is standby: set the operation mode on the primary (it is replicated)",
        );
    }
    if ipt_check && mode == OpMode::Maintenance {
        let busy = shared.inflight.len();
        if busy > 0 {
            return AdminResponse::refused(format!(
                "{busy} transaction(s) in progress (escadm ip_trans): maintenance refused by --ipt_check"
            ));
        }
    }
    match commit(shared, Op::SetOpMode { mode }).await {
        Ok(_) => AdminResponse::OpMode { mode },
        Err(e) => AdminResponse::refused(format!("{e} (`escadm op_mode show`)")),
    }
}
