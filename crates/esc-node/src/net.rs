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
//! After the handshake every frame is sealed (encrypted and authenticated:
//! `esc_wire::auth`), so what the link carries (entries, snapshots, day-0
//! data) is not readable on the wire.
//! A frame that fails its checksum, seal, bounds or parse is counted and the
//! connection is closed: a byte stream cannot be resynchronized safely, and
//! nothing from a bad frame reaches the core.
//!
//! Before authentication a connection is cheap for anyone to open, so the
//! listener bounds what it may hold: [`HANDSHAKES_MAX`] in all, at most
//! [`HANDSHAKES_PER_IP_MAX`] from one source address, and the hello must
//! arrive within [`FIRST_FRAME_TIMEOUT`]; a host that connects and stays
//! silent cannot keep the real peer out.
//!
//! A connection ends for good through [`ConnTx::close`]: the writer sends
//! what is already queued (bounded by [`CLOSE_DRAIN`]), the reader stops and
//! reports [`NetEvent::Down`], whoever still holds a clone of the sender.

use crate::logging::HA;
use crate::metrics::Counters;
use esc_repl::Role;
use esc_wire::msg::{NONCE_LEN, PROTOCOL_VERSION};
use esc_wire::{
    Ephemeral, FrameError, FrameHeader, FrameSeal, Handshake, Message, SnapshotItem, HEADER_LEN,
};
use rand::RngCore;
use std::net::{IpAddr, SocketAddr};
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
/// Snapshot frames queued for one connection (its bulk lane): a snapshot
/// streamer waits for room, so a primary holds at most this many chunks of
/// a snapshot in memory, whatever the state's size.
pub const BULK_QUEUE_FRAMES: usize = 4;
/// Snapshot chunks a follower holds between its socket and its store; the
/// reader stops reading (TCP pushes back on the primary) while they are
/// taken.
pub const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 8;
/// Deadline for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame body accepted before authentication.
pub const HANDSHAKE_BODY_BYTES_MAX: usize = 4 * 1024;
/// Deadline for the first frame (the hello) of an accepted connection: a
/// peer sends it right after connecting; a silent host loses its slot soon.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(1);
/// Handshakes in progress at once; more connections are closed at once.
pub const HANDSHAKES_MAX: usize = 16;
/// Handshakes in progress at once from one source address (a peer dials one
/// connection at a time); more are closed at once, so one host cannot take
/// every slot of [`HANDSHAKES_MAX`].
pub const HANDSHAKES_PER_IP_MAX: usize = 2;
/// Once a link is closed, how long its writer may still spend sending what
/// was queued before (e.g. a `Handover` right before a demote).
pub const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Deadline for a TCP connect to the peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a standby that the primary handed over to holds a dialing
/// peer's authenticated connection while it promotes, before it falls back
/// to trading log positions (well inside [`HANDSHAKE_TIMEOUT`]).
pub const TAKEOVER_HOLD: Duration = Duration::from_secs(1);
/// The dialer's first and longest wait between attempts.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A link that lasted this long was a real one: the next attempt starts
/// from [`DIAL_BACKOFF_MIN`] again.
pub const LINK_HELD: Duration = Duration::from_secs(2);

/// The sending side of one connection: frames for its writer (through
/// `Deref`, as an `mpsc::Sender`), the bulk lane for snapshot frames, and
/// the switch that closes the link. Clones (a snapshot stream, a catch-up
/// job) do not keep a closed link open: once closed, their sends fail
/// within [`CLOSE_DRAIN`].
#[derive(Debug, Clone)]
pub struct ConnTx {
    tx: mpsc::Sender<Message>,
    /// Snapshot frames, [`BULK_QUEUE_FRAMES`] at most; the writer takes the
    /// main queue first, so heartbeats and answers never wait behind them.
    pub bulk: mpsc::Sender<Message>,
    close: Arc<watch::Sender<bool>>,
}

impl ConnTx {
    /// Closes the link: the writer sends what is already queued and ends,
    /// [`CLOSE_DRAIN`] at the latest (a peer that stopped reading cannot
    /// hold it), after which every send fails; the reader ends at once and
    /// reports [`NetEvent::Down`] (unless it was aborted).
    pub fn close(&self) {
        self.close.send_replace(true);
    }
}

impl std::ops::Deref for ConnTx {
    type Target = mpsc::Sender<Message>;
    fn deref(&self) -> &mpsc::Sender<Message> {
        &self.tx
    }
}

/// What connection tasks tell the owner.
#[derive(Debug)]
pub enum NetEvent {
    Up {
        conn: ConnId,
        tx: ConnTx,
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
        /// One of [`SNAPSHOT_CHUNKS_IN_FLIGHT`], held until the chunk is
        /// staged in the store.
        window: tokio::sync::OwnedSemaphorePermit,
    },
    Down {
        conn: ConnId,
        reason: String,
        /// The peer's kernel ended the link (end of stream or a reset):
        /// its process is gone or closed it, which a timeout does not tell.
        by_peer: bool,
    },
    /// A standby peer told us where its durable log ends (cold start:
    /// architecture section 4, "has seen its peer and holds the fresher log").
    PeerPosition {
        peer_name: String,
        last_epoch: u64,
        last_index: u64,
    },
}

/// Where this node's durable log ends, for a standby peer's question:
/// `Message::Status` fields (epoch, last_index, last_epoch, applied_index).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub last_index: u64,
    pub last_epoch: u64,
    pub applied_index: u64,
}

/// What the link tasks need of this node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkRole {
    pub role: Role,
    /// A standby the primary handed over to (`Core::handed_over`): it
    /// promotes within moments, so the listener holds a dialing peer's
    /// connection until it does rather than closing it.
    pub taking_over: bool,
}

impl LinkRole {
    pub fn standby() -> LinkRole {
        LinkRole {
            role: Role::Standby,
            taking_over: false,
        }
    }
}

/// What the network tasks share.
#[derive(Clone)]
pub struct NetCtx {
    pub node_name: String,
    pub secret: Arc<Vec<u8>>,
    pub counters: Arc<Counters>,
    pub events: mpsc::Sender<NetEvent>,
    pub role: watch::Receiver<LinkRole>,
    pub position: watch::Receiver<Position>,
    pub next_conn: Arc<AtomicU64>,
    /// Snapshot chunks received and not yet staged (see
    /// [`SNAPSHOT_CHUNKS_IN_FLIGHT`]).
    pub snapshot_window: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
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
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    mac: Option<&mut FrameSeal>,
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

impl LinkError {
    /// The peer's kernel ended the stream: a clean end or a reset. A frame
    /// or MAC error, a timeout or a local failure says nothing of whether
    /// the peer's process is alive.
    fn by_peer(&self) -> bool {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
        match self {
            // The stream ended inside a frame: a writer killed mid-frame.
            LinkError::Closed | LinkError::Frame(FrameError::Incomplete { .. }) => true,
            LinkError::Io(e) => matches!(
                e.kind(),
                ConnectionReset | ConnectionAborted | UnexpectedEof
            ),
            _ => false,
        }
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

/// The handshakes in progress on one listener (replication, witness): at
/// most [`HANDSHAKES_MAX`] in all and [`HANDSHAKES_PER_IP_MAX`] per source
/// address, so silent or unauthenticated hosts cannot keep the peer out.
#[derive(Clone)]
pub(crate) struct HandshakeGate(Arc<crate::admission::Admission>);

impl HandshakeGate {
    pub(crate) fn new() -> HandshakeGate {
        HandshakeGate(crate::admission::Admission::new(
            HANDSHAKES_MAX,
            HANDSHAKES_PER_IP_MAX,
        ))
    }

    /// A place for a handshake from `ip` (released when dropped), or None:
    /// close the connection.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<crate::admission::Slot> {
        self.0.admit(ip).ok()
    }
}

/// Accepts followers; only a primary keeps an authenticated one.
pub async fn listen(ctx: NetCtx, listener: TcpListener) {
    let gate = HandshakeGate::new();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(target: HA, "replication accept failed: {e}");
                tokio::time::sleep(crate::fds::ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Closed at once (the stream is dropped) when over a cap.
        let Some(slot) = gate.admit(addr.ip()) else {
            Counters::bump(&ctx.counters.handshakes_refused);
            debug!(target: HA, %addr, "too many handshakes in progress (in all or from this address); connection closed");
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

/// The X25519 agreement with the peer's key; a key of small order (which
/// would make the session key guessable) ends the handshake.
fn agree(ours: &Ephemeral, theirs: &[u8; 32]) -> Result<[u8; 32], LinkError> {
    ours.agree(theirs).ok_or_else(|| {
        LinkError::Auth("the peer's ephemeral key is of small order (refused)".into())
    })
}

/// The server half of the handshake (hello, challenge, proof); returns the
/// client's name and the session MACs (receive, send). `AuthOk` is the
/// caller's to send. The client's hello must come within `hello_within`
/// if given (the caller bounds the whole handshake).
pub(crate) async fn server_auth_within(
    secret: &[u8],
    node_name: &str,
    stream: &mut TcpStream,
    hello_within: Option<Duration>,
) -> Result<(String, FrameSeal, FrameSeal), LinkError> {
    let mut buf = Vec::new();
    let hello = read_frame(stream, &mut buf, None);
    let hello = match hello_within {
        Some(d) => tokio::time::timeout(d, hello)
            .await
            .map_err(|_| LinkError::Timeout)?,
        None => hello.await,
    };
    let (client_name, client_nonce, client_ephemeral) = match hello? {
        Some(Message::ClientHello {
            protocol,
            node_name,
            nonce,
            ephemeral,
        }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(LinkError::Protocol(format!(
                    "peer speaks protocol {protocol}, this node {PROTOCOL_VERSION}"
                )));
            }
            (node_name, nonce, ephemeral)
        }
        Some(m) => {
            return Err(LinkError::Protocol(format!(
                "expected hello, got {}",
                m.name()
            )))
        }
        None => return Err(LinkError::Closed),
    };
    let ours = Ephemeral::from_random(nonce());
    let hs = Handshake {
        secret,
        client_nonce,
        server_nonce: nonce(),
        client_ephemeral,
        server_ephemeral: ours.public(),
    };
    let challenge = Message::ServerChallenge {
        node_name: node_name.to_string(),
        nonce: hs.server_nonce,
        ephemeral: hs.server_ephemeral,
        proof: hs.server_proof(node_name),
    };
    stream
        .write_all(&esc_wire::encode(&challenge, None))
        .await?;
    match read_frame(stream, &mut buf, None).await? {
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
    let dh = agree(&ours, &client_ephemeral)?;
    let (c2s, s2c) = hs.session(&dh);
    Ok((client_name, c2s, s2c))
}

async fn server_handshake(
    ctx: &NetCtx,
    mut stream: TcpStream,
    addr: SocketAddr,
) -> Result<(), LinkError> {
    let (client_name, mut c2s, mut s2c) = server_auth_within(
        &ctx.secret,
        &ctx.node_name,
        &mut stream,
        Some(FIRST_FRAME_TIMEOUT),
    )
    .await?;
    // A switchover: the old primary handed over to us, demoted and dialed
    // at once, a few milliseconds before we hold the witness's grant. Closing
    // now would send it into its backoff while we, promoted, have no
    // standby to commit with; so the connection waits for the promotion
    // (bounded by TAKEOVER_HOLD) and then links as any follower does.
    let mut role = ctx.role.clone();
    if role.borrow().taking_over {
        Counters::bump(&ctx.counters.dials_held_for_takeover);
        let _ = tokio::time::timeout(
            TAKEOVER_HOLD,
            role.wait_for(|r| r.role == Role::Primary || !r.taking_over),
        )
        .await;
    }
    if ctx.role.borrow().role != Role::Primary {
        // Not primary: no follower. Two standbys (cold start) still trade
        // where their logs end, so the fresher one may lead (architecture
        // section 4), then the connection closes.
        Counters::bump(&ctx.counters.connections_refused_not_primary);
        debug!(target: HA, %addr, peer = %client_name, "standby peer: trading log positions");
        stream
            .write_all(&esc_wire::encode(&Message::AuthOk, None))
            .await?;
        let mut buf = Vec::new();
        if let Some(Message::Status {
            last_index,
            last_epoch,
            ..
        }) = read_frame(&mut stream, &mut buf, Some(&mut c2s)).await?
        {
            let _ = ctx
                .events
                .send(NetEvent::PeerPosition {
                    peer_name: client_name,
                    last_epoch,
                    last_index,
                })
                .await;
        }
        let p = *ctx.position.borrow();
        let status = Message::Status {
            epoch: p.epoch,
            last_index: p.last_index,
            last_epoch: p.last_epoch,
            applied_index: p.applied_index,
        };
        stream
            .write_all(&esc_wire::encode(&status, Some(&mut s2c)))
            .await?;
        let _ = stream.shutdown().await;
        return Ok(());
    }
    stream
        .write_all(&esc_wire::encode(&Message::AuthOk, None))
        .await?;
    spawn_conn(ctx, stream, s2c, c2s, client_name, addr).await;
    Ok(())
}

/// The client half of the handshake, up to `AuthOk`; returns the server's
/// name and the session MACs (send, receive).
pub(crate) async fn client_auth(
    secret: &[u8],
    node_name: &str,
    stream: &mut TcpStream,
) -> Result<(String, FrameSeal, FrameSeal), LinkError> {
    let mut buf = Vec::new();
    let client_nonce = nonce();
    let ours = Ephemeral::from_random(nonce());
    let hello = Message::ClientHello {
        protocol: PROTOCOL_VERSION,
        node_name: node_name.to_string(),
        nonce: client_nonce,
        ephemeral: ours.public(),
    };
    stream.write_all(&esc_wire::encode(&hello, None)).await?;
    let (server_name, server_nonce, server_ephemeral, proof) =
        match read_frame(stream, &mut buf, None).await? {
            Some(Message::ServerChallenge {
                node_name,
                nonce,
                ephemeral,
                proof,
            }) => (node_name, nonce, ephemeral, proof),
            Some(m) => {
                return Err(LinkError::Protocol(format!(
                    "expected challenge, got {}",
                    m.name()
                )))
            }
            None => return Err(LinkError::Closed),
        };
    let hs = Handshake {
        secret,
        client_nonce,
        server_nonce,
        client_ephemeral: ours.public(),
        server_ephemeral,
    };
    // Our proof goes out before we check theirs, so a primary facing a
    // wrong secret sees (counts, logs) the failure too; the proof is an HMAC
    // and reveals nothing of the secret.
    let reply = Message::ClientProof {
        proof: hs.client_proof(node_name),
    };
    stream.write_all(&esc_wire::encode(&reply, None)).await?;
    if !Handshake::check(&hs.server_proof(&server_name), &proof) {
        return Err(LinkError::Auth(format!(
            "{server_name:?} did not prove the shared secret (wrong secret?)"
        )));
    }
    match read_frame(stream, &mut buf, None).await? {
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
    let dh = agree(&ours, &server_ephemeral)?;
    let (c2s, s2c) = hs.session(&dh);
    Ok((server_name, c2s, s2c))
}

async fn client_handshake(
    ctx: &NetCtx,
    mut stream: TcpStream,
    addr: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>, LinkError> {
    let (server_name, c2s, s2c) = client_auth(&ctx.secret, &ctx.node_name, &mut stream).await?;
    Ok(spawn_conn(ctx, stream, c2s, s2c, server_name, addr).await)
}

/// Starts the writer and reader of an authenticated connection.
async fn spawn_conn(
    ctx: &NetCtx,
    stream: TcpStream,
    mut send_mac: FrameSeal,
    mut recv_mac: FrameSeal,
    peer_name: String,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    Counters::bump(&ctx.counters.peer_connections);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Message>(CONN_QUEUE_FRAMES);
    let (bulk, mut bulk_rx) = mpsc::channel::<Message>(BULK_QUEUE_FRAMES);
    let (close, closed) = watch::channel(false);
    let close = Arc::new(close);
    let wclose = close.clone();
    let mut wstop = closed.clone();
    let mut wdeadline = closed.clone();
    tokio::spawn(async move {
        let send = async {
            let mut closing = false;
            loop {
                let msg = tokio::select! {
                    biased;
                    // Closed: accept nothing more, send what is queued.
                    _ = wstop.wait_for(|c| *c), if !closing => {
                        rx.close();
                        bulk_rx.close();
                        closing = true;
                        continue;
                    }
                    m = rx.recv() => m,
                    Some(m) = bulk_rx.recv() => Some(m),
                };
                let Some(msg) = msg else { break };
                let frame = esc_wire::encode(&msg, Some(&mut send_mac));
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        // Once the link is closed, the queue gets CLOSE_DRAIN to leave (a
        // peer that stopped reading cannot hold the connection open).
        let deadline = async {
            let _ = wdeadline.wait_for(|c| *c).await;
            tokio::time::sleep(CLOSE_DRAIN).await;
        };
        tokio::select! {
            _ = send => {}
            _ = deadline => {}
        }
        // A link that cannot send is down: the reader stops too.
        wclose.send_replace(true);
    });
    let events = ctx.events.clone();
    let rctx = ctx.clone();
    let name = peer_name.clone();
    let rclose = close.clone();
    let mut rstop = closed;
    let reader = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        let (reason, by_peer) = loop {
            let read = tokio::select! {
                r = read_frame(&mut rd, &mut buf, Some(&mut recv_mac)) => r,
                _ = rstop.wait_for(|c| *c) => break ("link closed by this node".to_string(), false),
            };
            match read {
                Ok(Some(Message::SnapshotChunk { items })) => {
                    // Backpressure: no more chunks off the socket while the
                    // store is behind (the primary's sends then wait too).
                    let window = tokio::select! {
                        w = rctx.snapshot_window.clone().acquire_owned() => w,
                        _ = rstop.wait_for(|c| *c) => break ("link closed by this node".to_string(), false),
                    };
                    let Ok(window) = window else {
                        break ("node stopping".to_string(), false);
                    };
                    if events
                        .send(NetEvent::SnapshotChunk {
                            conn,
                            items,
                            window,
                        })
                        .await
                        .is_err()
                    {
                        break ("node stopping".to_string(), false);
                    }
                }
                Ok(Some(msg)) => {
                    if events.send(NetEvent::Received { conn, msg }).await.is_err() {
                        break ("node stopping".to_string(), false);
                    }
                }
                Ok(None) => break ("closed by peer".to_string(), true),
                Err(e) => {
                    count(&rctx, &e);
                    warn!(target: HA, peer = %name, %addr, "dropping replication link: {e}");
                    break (e.to_string(), e.by_peer());
                }
            }
        };
        // The writer ends too (after sending what is queued).
        rclose.send_replace(true);
        let _ = events
            .send(NetEvent::Down {
                conn,
                reason,
                by_peer,
            })
            .await;
    });
    info!(target: HA, conn, peer = %peer_name, %addr, "replication link up");
    let _ = ctx
        .events
        .send(NetEvent::Up {
            conn,
            tx: ConnTx { tx, bulk, close },
            reader: reader.abort_handle(),
            peer_name,
            addr,
        })
        .await;
    reader
}

/// The dialer's wait between attempts: exponential while the peer does not
/// take us as follower, from the start again once a link held or a new
/// standby term begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: DIAL_BACKOFF_MIN,
        }
    }
}

impl Backoff {
    /// This node became standby again: what the previous term backed off
    /// to says nothing of the peer now (after a switchover it is promoting
    /// and about to take us), so the first retry comes soon.
    pub fn new_term(&mut self) {
        self.next = DIAL_BACKOFF_MIN;
    }

    /// A link that lasted `held` ended (`None`: the attempt failed); the
    /// wait before the next attempt.
    pub fn after(&mut self, held: Option<Duration>) -> Duration {
        if held.is_some_and(|h| h >= LINK_HELD) {
            self.next = DIAL_BACKOFF_MIN;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(DIAL_BACKOFF_MAX);
        wait
    }
}

/// A standby keeps one authenticated connection to the peer while it is standby.
pub async fn dial(mut ctx: NetCtx, peer: SocketAddr) {
    let mut backoff = Backoff::default();
    loop {
        // Only a standby dials.
        if ctx.role.borrow().role != Role::Standby {
            if ctx
                .role
                .wait_for(|r| r.role == Role::Standby)
                .await
                .is_err()
            {
                return;
            }
            // Found by `esc-lab bench --faults switchover`: the backoff a
            // node built up while trading positions at cold start survived
            // its whole term as primary, so after a switchover its one
            // early dial was refused and the next came up to a second
            // later, while the new primary had no standby to commit with.
            backoff.new_term();
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
        let held = match attempt.await {
            Ok(reader) => {
                let since = std::time::Instant::now();
                let _ = reader.await;
                // A link that held is retried at once; one that closed right
                // away (a standby peer trading positions) backs off.
                Some(since.elapsed())
            }
            Err(LinkError::Closed) => {
                debug!(target: HA, %peer, "peer is not accepting followers (not primary?)");
                None
            }
            Err(LinkError::Io(e)) => {
                debug!(target: HA, %peer, "cannot reach peer: {e}");
                None
            }
            Err(e) => {
                count(&ctx, &e);
                warn!(target: HA, %peer, "replication link to peer failed: {e}");
                None
            }
        };
        // Bounded exponential backoff between attempts (not synchronization).
        tokio::time::sleep(backoff.after(held)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authenticated link (server side run by `spawn_conn`) and the
    /// client's socket, with the MAC of the frames the server sends.
    async fn link() -> (mpsc::Receiver<NetEvent>, ConnTx, TcpStream, FrameSeal) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let (events, mut rx) = mpsc::channel(64);
        let ctx = NetCtx {
            node_name: "a".into(),
            secret: Arc::new(vec![1; 32]),
            counters: Arc::default(),
            events,
            role: watch::channel(LinkRole {
                role: Role::Primary,
                taking_over: false,
            })
            .1,
            position: watch::channel(Position::default()).1,
            next_conn: Arc::default(),
            snapshot_window: Arc::new(tokio::sync::Semaphore::new(SNAPSHOT_CHUNKS_IN_FLIGHT)),
        };
        let key = [1u8; 32];
        spawn_conn(
            &ctx,
            server,
            FrameSeal::new(key),
            FrameSeal::new([2; 32]),
            "b".into(),
            peer,
        )
        .await;
        let Some(NetEvent::Up { tx, .. }) = rx.recv().await else {
            panic!("expected Up")
        };
        (rx, tx, client, FrameSeal::new(key))
    }

    fn status(i: u64) -> Message {
        Message::Status {
            epoch: i,
            last_index: i,
            last_epoch: i,
            applied_index: i,
        }
    }

    async fn down(events: &mut mpsc::Receiver<NetEvent>) -> String {
        match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
            Ok(Some(NetEvent::Down { reason, .. })) => reason,
            other => panic!("expected Down, got {other:?}"),
        }
    }

    fn ctx(
        name: &str,
        role: LinkRole,
    ) -> (NetCtx, mpsc::Receiver<NetEvent>, watch::Sender<LinkRole>) {
        let (events, rx) = mpsc::channel(64);
        let (role_tx, role_rx) = watch::channel(role);
        let ctx = NetCtx {
            node_name: name.into(),
            secret: Arc::new(vec![7; 32]),
            counters: Arc::default(),
            events,
            role: role_rx,
            position: watch::channel(Position::default()).1,
            next_conn: Arc::default(),
            snapshot_window: Arc::new(tokio::sync::Semaphore::new(SNAPSHOT_CHUNKS_IN_FLIGHT)),
        };
        (ctx, rx, role_tx)
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Issue 10, item 0: after a switchover the old primary dials the new one
    // before it has promoted. The listener of a standby that was handed the
    // role holds that connection and links it as a follower once promoted,
    // instead of trading positions and closing (which sent the dialer into
    // up to a second of backoff while the new primary had no standby).
    #[tokio::test]
    async fn a_standby_taking_over_links_a_peer_that_dials_before_it_promotes() {
        let taking_over = LinkRole {
            role: Role::Standby,
            taking_over: true,
        };
        let (server, mut server_events, server_role) = ctx("b", taking_over);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(listen(server.clone(), listener));
        let (client, _client_events, _) = ctx("a", LinkRole::standby());
        let dialing = tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            // Keeps the client's side (and its link) alive until joined.
            let reader = client_handshake(&client, stream, addr).await.unwrap();
            (reader, client)
        });
        let counters = server.counters.clone();
        wait_until("the dial to be held", || {
            counters.dials_held_for_takeover.load(Ordering::Relaxed) == 1
        })
        .await;
        server_role.send_replace(LinkRole {
            role: Role::Primary,
            taking_over: false,
        });
        match tokio::time::timeout(Duration::from_secs(5), server_events.recv()).await {
            Ok(Some(NetEvent::Up { peer_name, .. })) => assert_eq!(peer_name, "a"),
            other => panic!("expected the held dial to link as a follower, got {other:?}"),
        }
        assert!(dialing.await.is_ok());
        assert_eq!(
            server
                .counters
                .connections_refused_not_primary
                .load(Ordering::Relaxed),
            0,
            "not treated as a standby peer"
        );
    }

    // A standby that was not handed the role trades positions at once.
    #[tokio::test]
    async fn a_plain_standby_does_not_hold_a_dial() {
        let (server, _server_events, _role) = ctx("b", LinkRole::standby());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(listen(server.clone(), listener));
        let (client, _client_events, _) = ctx("a", LinkRole::standby());
        let stream = TcpStream::connect(addr).await.unwrap();
        client_handshake(&client, stream, addr).await.unwrap();
        let counters = server.counters.clone();
        wait_until("the standby path", || {
            counters
                .connections_refused_not_primary
                .load(Ordering::Relaxed)
                == 1
        })
        .await;
        assert_eq!(counters.dials_held_for_takeover.load(Ordering::Relaxed), 0);
    }

    // Found by the switchover benchmark: a term as primary must not inherit
    // the backoff of the cold start before it.
    #[test]
    fn backoff_grows_to_its_bound_and_starts_over_with_a_term_or_a_held_link() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..7).map(|_| b.after(None).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.after(Some(Duration::from_millis(10))), DIAL_BACKOFF_MAX);
        b.new_term();
        assert_eq!(b.after(None), DIAL_BACKOFF_MIN);
        b.after(None);
        assert_eq!(b.after(Some(LINK_HELD)), DIAL_BACKOFF_MIN);
    }

    #[tokio::test]
    async fn close_sends_what_was_queued_then_ends_the_link() {
        let (mut events, tx, mut client, mut mac) = link().await;
        let clone = tx.clone();
        for i in 0..3 {
            tx.try_send(status(i)).unwrap();
        }
        tx.close();
        let mut buf = Vec::new();
        for i in 0..3 {
            let m = read_frame(&mut client, &mut buf, Some(&mut mac)).await;
            assert_eq!(m.unwrap(), Some(status(i)), "queued before the close");
        }
        assert!(
            read_frame(&mut client, &mut buf, Some(&mut mac))
                .await
                .unwrap()
                .is_none(),
            "then the connection ends"
        );
        assert_eq!(down(&mut events).await, "link closed by this node");
        assert!(clone.try_send(status(9)).is_err(), "a clone sends no more");
    }

    #[tokio::test]
    async fn a_closed_link_ends_even_when_the_peer_stops_reading_and_a_clone_lives() {
        let (mut events, tx, mut client, _) = link().await;
        // Far more than the socket buffers hold: the writer gets stuck.
        let chunk = Message::SnapshotChunk {
            items: vec![SnapshotItem {
                key: "k".into(),
                value: vec![0; 64 * 1024],
            }],
        };
        let frames = 400;
        for _ in 0..frames {
            tx.try_send(chunk.clone()).unwrap();
        }
        let clone = tx.clone();
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.close();
        drop(tx);
        assert_eq!(down(&mut events).await, "link closed by this node");
        // The writer gives up after CLOSE_DRAIN (the peer still does not
        // read): the clone's sends fail, and the peer, reading now, meets
        // the end of the stream long before everything was sent.
        tokio::time::sleep(CLOSE_DRAIN + Duration::from_millis(500)).await;
        assert!(matches!(
            clone.try_send(status(0)),
            Err(mpsc::error::TrySendError::Closed(_))
        ));
        let mut got = 0usize;
        let mut b = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got += n,
                Err(_) => panic!("the connection stays open"),
            }
        }
        assert!(
            got < frames * 64 * 1024,
            "stopped before sending everything ({got} bytes)"
        );
    }
}
