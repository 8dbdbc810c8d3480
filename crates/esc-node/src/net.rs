//! The replication link's sockets: listener (primary side), dialer (standby
//! side), the authenticated handshake, and one reader and one writer task
//! per connection (architecture section 3).
//!
//! ```text
//!  dialer ──connect──> listener
//!     └─ client_handshake   └─ server_handshake (refuses a wrong secret,
//!            │                         or any follower while not primary)
//!            v                         v
//!        spawn_conn: writer task <── mpsc<Message> ── owner
//!                    reader task ──> NetEvent::{Received, SnapshotChunk, Down}
//! ```
//! A frame that fails its checksum, MAC, bounds or parse is counted and the
//! connection is closed: a byte stream cannot be resynchronized safely, and
//! nothing from a bad frame reaches the core.

use crate::logging::HA;
use crate::metrics::Counters;
use esc_repl::Role;
use esc_wire::msg::{NONCE_LEN, PROTOCOL_VERSION};
use esc_wire::{FrameError, FrameHeader, FrameMac, Handshake, Message, SnapshotItem, HEADER_LEN};
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

/// Identifies one connection.
pub type ConnId = u64;
/// Frames queued for one connection before it counts as too slow.
pub const CONN_QUEUE_FRAMES: usize = 4_096;
/// Deadline for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame body accepted before authentication.
pub const HANDSHAKE_BODY_BYTES_MAX: usize = 4 * 1024;
/// Handshakes in progress at once; more connections are closed at once.
pub const HANDSHAKES_MAX: usize = 16;
/// Deadline for a TCP connect to the peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What connection tasks tell the owner.
#[derive(Debug)]
pub enum NetEvent {
    Up {
        conn: ConnId,
        tx: mpsc::Sender<Message>,
        reader: AbortHandle,
        peer_name: String,
        addr: SocketAddr,
    },
    Received {
        conn: ConnId,
        msg: Message,
    },
    SnapshotChunk {
        conn: ConnId,
        items: Vec<SnapshotItem>,
    },
    Down {
        conn: ConnId,
        reason: String,
    },
}

/// What the network tasks share.
#[derive(Clone)]
pub struct NetCtx {
    pub node_name: String,
    pub secret: Arc<Vec<u8>>,
    pub counters: Arc<Counters>,
    pub events: mpsc::Sender<NetEvent>,
    pub role: watch::Receiver<Role>,
    pub next_conn: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

/// Reads one frame. `Ok(None)` is a clean close between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    mac: Option<&mut FrameMac>,
) -> Result<Option<Message>, LinkError> {
    buf.clear();
    buf.resize(HEADER_LEN, 0);
    let n = r.read(&mut buf[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    read_exact_or_truncated(r, &mut buf[1..HEADER_LEN], HEADER_LEN).await?;
    let header = FrameHeader::parse(buf)?;
    // Before authentication a peer gets a few hundred bytes, not the
    // 32 MiB an authenticated follower may send: nobody unauthenticated
    // makes this node allocate.
    if mac.is_none() && header.body_len > HANDSHAKE_BODY_BYTES_MAX {
        return Err(FrameError::TooLarge(header.body_len).into());
    }
    let total = header.frame_len();
    buf.resize(total, 0);
    read_exact_or_truncated(r, &mut buf[HEADER_LEN..], total).await?;
    let (msg, _) = esc_wire::decode(buf, mac)?;
    Ok(Some(msg))
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &mut [u8],
    needed: usize,
) -> Result<(), LinkError> {
    match r.read_exact(out).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(LinkError::Frame(FrameError::Incomplete { needed, have: 0 }))
        }
        Err(e) => Err(e.into()),
    }
}

fn count(ctx: &NetCtx, e: &LinkError) {
    match e {
        LinkError::Frame(f) => ctx.counters.frame_dropped(f.reason()),
        LinkError::Auth(_) => Counters::bump(&ctx.counters.auth_failures),
        LinkError::Protocol(_) | LinkError::Timeout => {
            Counters::bump(&ctx.counters.handshake_failures)
        }
        LinkError::Io(_) | LinkError::Closed => {}
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// Accepts followers; only a primary keeps an authenticated one.
pub async fn listen(ctx: NetCtx, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(target: HA, "replication accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Counters::bump(&ctx.counters.handshake_failures);
            debug!(target: HA, %addr, "too many handshakes in progress; connection closed");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_handshake(&ctx, stream, addr))
                .await
                .unwrap_or(Err(LinkError::Timeout))
            {
                Ok(()) => {}
                Err(LinkError::Closed) => debug!(target: HA, %addr, "peer closed during handshake"),
                Err(e) => {
                    count(&ctx, &e);
                    warn!(target: HA, %addr, "replication connection refused: {e}");
                }
            }
        });
    }
}

async fn server_handshake(
    ctx: &NetCtx,
    mut stream: TcpStream,
    addr: SocketAddr,
) -> Result<(), LinkError> {
    let mut buf = Vec::new();
    let (client_name, client_nonce) = match read_frame(&mut stream, &mut buf, None).await? {
        Some(Message::ClientHello {
            protocol,
            node_name,
            nonce,
        }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(LinkError::Protocol(format!(
                    "peer speaks protocol {protocol}, this node {PROTOCOL_VERSION}"
                )));
            }
            (node_name, nonce)
        }
        Some(m) => {
            return Err(LinkError::Protocol(format!(
                "expected hello, got {}",
                m.name()
            )))
        }
        None => return Err(LinkError::Closed),
    };
    let hs = Handshake {
        secret: &ctx.secret,
        client_nonce,
        server_nonce: nonce(),
    };
    let challenge = Message::ServerChallenge {
        node_name: ctx.node_name.clone(),
        nonce: hs.server_nonce,
        proof: hs.server_proof(&ctx.node_name),
    };
    stream
        .write_all(&esc_wire::encode(&challenge, None))
        .await?;
    match read_frame(&mut stream, &mut buf, None).await? {
        Some(Message::ClientProof { proof }) => {
            if !Handshake::check(&hs.client_proof(&client_name), &proof) {
                return Err(LinkError::Auth(format!(
                    "peer {client_name:?} did not prove the shared secret (wrong secret?)"
                )));
            }
        }
        Some(m) => {
            return Err(LinkError::Protocol(format!(
                "expected proof, got {}",
                m.name()
            )))
        }
        None => return Err(LinkError::Closed),
    }
    if *ctx.role.borrow() != Role::Primary {
        Counters::bump(&ctx.counters.connections_refused_not_primary);
        info!(target: HA, %addr, peer = %client_name, "follower refused: this node is not primary");
        return Ok(());
    }
    stream
        .write_all(&esc_wire::encode(&Message::AuthOk, None))
        .await?;
    let (c2s, s2c) = hs.session();
    spawn_conn(ctx, stream, s2c, c2s, client_name, addr).await;
    Ok(())
}

async fn client_handshake(
    ctx: &NetCtx,
    mut stream: TcpStream,
    addr: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>, LinkError> {
    let mut buf = Vec::new();
    let client_nonce = nonce();
    let hello = Message::ClientHello {
        protocol: PROTOCOL_VERSION,
        node_name: ctx.node_name.clone(),
        nonce: client_nonce,
    };
    stream.write_all(&esc_wire::encode(&hello, None)).await?;
    let (server_name, server_nonce, proof) = match read_frame(&mut stream, &mut buf, None).await? {
        Some(Message::ServerChallenge {
            node_name,
            nonce,
            proof,
        }) => (node_name, nonce, proof),
        Some(m) => {
            return Err(LinkError::Protocol(format!(
                "expected challenge, got {}",
                m.name()
            )))
        }
        None => return Err(LinkError::Closed),
    };
    let hs = Handshake {
        secret: &ctx.secret,
        client_nonce,
        server_nonce,
    };
    // Our proof goes out before we check theirs, so a primary facing a
    // wrong secret sees (counts, logs) the failure too; the proof is an HMAC
    // and reveals nothing of the secret.
    let reply = Message::ClientProof {
        proof: hs.client_proof(&ctx.node_name),
    };
    stream.write_all(&esc_wire::encode(&reply, None)).await?;
    if !Handshake::check(&hs.server_proof(&server_name), &proof) {
        return Err(LinkError::Auth(format!(
            "primary {server_name:?} did not prove the shared secret (wrong secret?)"
        )));
    }
    match read_frame(&mut stream, &mut buf, None).await? {
        Some(Message::AuthOk) => {}
        Some(m) => {
            return Err(LinkError::Protocol(format!(
                "expected auth_ok, got {}",
                m.name()
            )))
        }
        // The peer authenticated us but is not primary (or refused us).
        None => return Err(LinkError::Closed),
    }
    let (c2s, s2c) = hs.session();
    Ok(spawn_conn(ctx, stream, c2s, s2c, server_name, addr).await)
}

/// Starts the writer and reader of an authenticated connection.
async fn spawn_conn(
    ctx: &NetCtx,
    stream: TcpStream,
    mut send_mac: FrameMac,
    mut recv_mac: FrameMac,
    peer_name: String,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    Counters::bump(&ctx.counters.peer_connections);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Message>(CONN_QUEUE_FRAMES);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let frame = esc_wire::encode(&msg, Some(&mut send_mac));
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let events = ctx.events.clone();
    let rctx = ctx.clone();
    let name = peer_name.clone();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        let reason = loop {
            match read_frame(&mut rd, &mut buf, Some(&mut recv_mac)).await {
                Ok(Some(Message::SnapshotChunk { items })) => {
                    if events
                        .send(NetEvent::SnapshotChunk { conn, items })
                        .await
                        .is_err()
                    {
                        break "node stopping".to_string();
                    }
                }
                Ok(Some(msg)) => {
                    if events.send(NetEvent::Received { conn, msg }).await.is_err() {
                        break "node stopping".to_string();
                    }
                }
                Ok(None) => break "closed by peer".to_string(),
                Err(e) => {
                    count(&rctx, &e);
                    warn!(target: HA, peer = %name, %addr, "dropping replication link: {e}");
                    break e.to_string();
                }
            }
        };
        let _ = events.send(NetEvent::Down { conn, reason }).await;
    });
    info!(target: HA, conn, peer = %peer_name, %addr, "replication link up");
    let _ = ctx
        .events
        .send(NetEvent::Up {
            conn,
            tx,
            reader: reader.abort_handle(),
            peer_name,
            addr,
        })
        .await;
    reader
}

/// A standby keeps one authenticated connection to the peer while it is standby.
pub async fn dial(mut ctx: NetCtx, peer: SocketAddr) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Only a standby dials.
        if ctx.role.wait_for(|r| *r == Role::Standby).await.is_err() {
            return;
        }
        let attempt = async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer))
                .await
                .map_err(|_| LinkError::Timeout)??;
            let _ = stream.set_nodelay(true);
            tokio::time::timeout(HANDSHAKE_TIMEOUT, client_handshake(&ctx, stream, peer))
                .await
                .map_err(|_| LinkError::Timeout)?
        };
        match attempt.await {
            Ok(reader) => {
                backoff = Duration::from_millis(50);
                let _ = reader.await;
            }
            Err(LinkError::Closed) => {
                debug!(target: HA, %peer, "peer is not accepting followers (not primary?)")
            }
            Err(LinkError::Io(e)) => debug!(target: HA, %peer, "cannot reach peer: {e}"),
            Err(e) => {
                count(&ctx, &e);
                warn!(target: HA, %peer, "replication link to peer failed: {e}");
            }
        }
        // Bounded exponential backoff between attempts (not synchronization).
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
