//! The witness's I/O (architecture section 4): `escd --witness` serving the
//! [`esc_authority::Witness`] core over authenticated frames, and the
//! client a node's HA agent uses to reach it.
//!
//! ```text
//!  node HA agent ──Request──> [client task] ══TCP 7790══> [witness server]
//!        ^                          │                        │ Witness::handle
//!        └──(request, reply, sent)──┘                        │ persist (fsync, rename)
//!                                                            └─> reply
//! ```
//! The witness keeps its durable state in `$ESC_HOME/data/witness.json`
//! and writes it (fsync, then rename) before answering a request that
//! changed it. Requests on one connection are answered in order.

use crate::logging::HA;
use crate::net::{self, LinkError};
use esc_authority::{Witness, WitnessReply, WitnessRequest, WitnessState};
use esc_config::Config;
use esc_wire::{FrameSeal, Message};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Deadline for one witness reply; then the connection is dropped.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Requests queued to the witness client; more are dropped (the authority retries).
const CLIENT_QUEUE: usize = 64;

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("witness.json")
}

fn load_state(data_dir: &Path) -> crate::Result<WitnessState> {
    let path = state_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|source| crate::Error::WitnessState { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WitnessState::default()),
        Err(e) => Err(crate::Error::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// Durably replaces the state file: write aside, fsync, rename, fsync dir.
fn save_state(data_dir: &Path, state: &WitnessState) -> std::io::Result<()> {
    let path = state_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(state)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

struct Server {
    core: Mutex<Witness>,
    start: Instant,
    data_dir: PathBuf,
    secret: Vec<u8>,
    name: String,
}

/// Runs `escd --witness` until `shutdown`.
pub async fn serve(
    home: &Path,
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    let secret = cfg.load_secret(home)?.ok_or(crate::Error::NoSecret)?;
    let data_dir = Config::resolve(home, &cfg.store.data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let state = load_state(&data_dir)?;
    info!(target: HA, epoch = state.epoch, holder = ?state.holder, outdated = state.outdated,
          lease_ms = cfg.witness.lease_ms, "witness starting; no grant for one lease period");
    let listener = TcpListener::bind(cfg.witness.listen)
        .await
        .map_err(|source| crate::Error::Listen {
            what: "the witness",
            addr: cfg.witness.listen,
            source,
        })?;
    let server = Arc::new(Server {
        core: Mutex::new(Witness::new(state, cfg.witness.lease_ms, 0)),
        start: Instant::now(),
        data_dir,
        secret,
        name: cfg.node_name.clone(),
    });
    info!(listen = %cfg.witness.listen, "escd witness running");
    tokio::pin!(shutdown);
    // Unauthenticated connections are bounded as on the replication port
    // (issue 14): a host that opens thousands must not starve the nodes'
    // lease renewals of descriptors or handshake slots.
    let gate = net::HandshakeGate::new();
    crate::fds::raise_nofile();
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => {
                let (stream, addr) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors: the error would repeat at once.
                        debug!(target: HA, "witness accept failed: {e}");
                        tokio::time::sleep(crate::fds::ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let Some(slot) = gate.admit(addr.ip()) else {
                    debug!(target: HA, %addr, "witness: too many handshakes in progress; connection closed");
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(&server, stream, addr, slot).await {
                        if !matches!(e, LinkError::Closed) {
                            warn!(target: HA, %addr, "witness connection: {e}");
                        }
                    }
                });
            }
        }
    }
}

async fn serve_conn(
    server: &Server,
    mut stream: TcpStream,
    addr: SocketAddr,
    slot: crate::admission::Slot,
) -> Result<(), LinkError> {
    let _ = stream.set_nodelay(true);
    let (node, mut recv_mac, mut send_mac) = tokio::time::timeout(
        net::HANDSHAKE_TIMEOUT,
        net::server_auth_within(
            &server.secret,
            &server.name,
            &mut stream,
            Some(net::FIRST_FRAME_TIMEOUT),
        ),
    )
    .await
    .map_err(|_| LinkError::Timeout)??;
    // Authenticated: the slot is for handshakes only.
    drop(slot);
    stream
        .write_all(&esc_wire::encode(&Message::AuthOk, None))
        .await?;
    info!(target: HA, %addr, %node, "witness: node connected");
    let mut buf = Vec::new();
    loop {
        let msg = match net::read_frame(&mut stream, &mut buf, Some(&mut recv_mac)).await {
            Ok(Some(m)) => m,
            other => {
                let now = server.start.elapsed().as_millis() as u64;
                server
                    .core
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .disconnected(now, &node);
                info!(target: HA, %node, "witness: node disconnected");
                return other.map(|_| ());
            }
        };
        let Message::Witness(req) = msg else {
            return Err(LinkError::Protocol(format!(
                "expected a witness request, got {}",
                msg.name()
            )));
        };
        let reply = {
            let now = server.start.elapsed().as_millis() as u64;
            let mut core = server.core.lock().unwrap_or_else(|p| p.into_inner());
            let before = core.state().clone();
            let step = core.handle(now, &node, req.clone());
            if step.persist {
                if let Err(e) = save_state(&server.data_dir, core.state()) {
                    // Not durable: undo and refuse; nothing was promised.
                    warn!(target: HA, "witness: cannot persist its state: {e}");
                    let lease_ms = core.lease_ms();
                    *core = Witness::new(before, lease_ms, now);
                    WitnessReply::Denied {
                        reason: format!("witness cannot persist: {e}"),
                    }
                } else {
                    info!(target: HA, %node, ?req, reply = ?step.reply, state = ?core.state(), "witness decision");
                    step.reply
                }
            } else {
                step.reply
            }
        };
        stream
            .write_all(&esc_wire::encode(
                &Message::WitnessReply(reply),
                Some(&mut send_mac),
            ))
            .await?;
    }
}

/// A reply delivered to the HA agent: the request it answers and when the
/// request left (agent clock, ms).
#[derive(Debug)]
pub struct Delivered {
    pub request: WitnessRequest,
    pub reply: WitnessReply,
    pub sent_at_ms: u64,
}

/// Starts the client task on the current runtime: requests in, replies out.
pub fn client(
    addr: SocketAddr,
    secret: Arc<Vec<u8>>,
    node_name: String,
    start: Instant,
    replies: mpsc::Sender<Delivered>,
) -> mpsc::Sender<WitnessRequest> {
    let (tx, mut rx) = mpsc::channel::<WitnessRequest>(CLIENT_QUEUE);
    tokio::spawn(async move {
        let mut conn: Option<(TcpStream, FrameSeal, FrameSeal)> = None;
        let mut was_up = true;
        while let Some(req) = rx.recv().await {
            if conn.is_none() {
                match connect(addr, &secret, &node_name).await {
                    Ok(c) => {
                        info!(target: HA, %addr, "witness reachable");
                        was_up = true;
                        conn = Some(c);
                    }
                    Err(e) => {
                        if was_up {
                            warn!(target: HA, %addr, "witness unreachable: {e}");
                            was_up = false;
                        }
                        continue; // dropped: the authority retries
                    }
                }
            }
            let Some((stream, send_mac, recv_mac)) = conn.as_mut() else {
                continue;
            };
            let sent_at_ms = start.elapsed().as_millis() as u64;
            let exchange = async {
                stream
                    .write_all(&esc_wire::encode(
                        &Message::Witness(req.clone()),
                        Some(send_mac),
                    ))
                    .await?;
                let mut buf = Vec::new();
                match net::read_frame(stream, &mut buf, Some(recv_mac)).await? {
                    Some(Message::WitnessReply(r)) => Ok(r),
                    Some(m) => Err(LinkError::Protocol(format!(
                        "expected a witness reply, got {}",
                        m.name()
                    ))),
                    None => Err(LinkError::Closed),
                }
            };
            match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
                Ok(Ok(reply)) => {
                    if replies
                        .send(Delivered {
                            request: req,
                            reply,
                            sent_at_ms,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    warn!(target: HA, %addr, "witness link lost: {e}");
                    conn = None;
                }
                Err(_) => {
                    warn!(target: HA, %addr, "witness did not answer within {REPLY_TIMEOUT:?}");
                    conn = None;
                }
            }
        }
    });
    tx
}

async fn connect(
    addr: SocketAddr,
    secret: &[u8],
    node_name: &str,
) -> Result<(TcpStream, FrameSeal, FrameSeal), LinkError> {
    let mut stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| LinkError::Timeout)??;
    let _ = stream.set_nodelay(true);
    let (_, send_mac, recv_mac) = tokio::time::timeout(
        net::HANDSHAKE_TIMEOUT,
        net::client_auth(secret, node_name, &mut stream),
    )
    .await
    .map_err(|_| LinkError::Timeout)??;
    Ok((stream, send_mac, recv_mac))
}
