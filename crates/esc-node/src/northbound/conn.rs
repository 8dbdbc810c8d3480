//! The northbound listeners' connections (issue 14): who gets one, how long
//! it may stay silent, and the accept loop that serves the REST and health
//! routers over HTTP/1.1.
//!
//! An unauthenticated client must not be able to take the node down or
//! force a failover by opening connections (CVE-2021-1312 was ESC's health
//! API falling to a SYN flood). So, per listener:
//! - **A cap in all and per source address**: past either, a connection is
//!   closed as soon as it is accepted and counted; the caps are set well
//!   under the process's file-descriptor limit ([`fd_budget`]), so the
//!   store, the replication link, the witness, the admin socket and the
//!   monitor's probes always find descriptors.
//! - **A header deadline that is also the idle timeout**: hyper's
//!   `header_read_timeout` runs from the connection's start and again from
//!   each answer (hyper 1.6 and later) until the next request's header is
//!   in, so a silent or slow-header client ("slowloris") loses its slot
//!   within `api.header_timeout_ms`; a request body may pause no longer
//!   than that between its parts (`RequestBodyTimeoutLayer`).
//! - **Accept errors never stop the loop**: out of descriptors (`EMFILE`,
//!   `ENFILE`) it pauses `fds::ACCEPT_ERROR_PAUSE` and goes on; each error
//!   is counted.
//!
//! The HA agent does not judge the API by connecting to it (a flood would
//! then look like a dead API): [`Listening`] says whether the accept loop
//! runs, and the owner's ping says whether the service answers.

use crate::admission::{Admission, Refusal, Slot};
use crate::fds::ACCEPT_ERROR_PAUSE;
use crate::metrics::{ConnCounters, Counters};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::debug;

/// Connections the health API holds at once (operators' monitors and load
/// balancers probe it; nothing there needs more).
pub const HEALTH_CONNECTIONS_MAX: usize = 256;
/// File descriptors kept for everything but the northbound listeners'
/// connections: the store's files, the log's segments, the replication
/// link and its listener, the witness, the admin socket and its clients,
/// VRRP's sockets, the VIM client's pool, log files, and spare.
pub const FD_RESERVED: usize = 512;
/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections_max: usize,
    pub per_source_max: usize,
    pub header_timeout: Duration,
}

impl Limits {
    /// The caps of one API (each listener of it takes from the same).
    pub fn gate(&self) -> Gate {
        Gate {
            admission: Admission::new(self.connections_max, self.per_source_max),
            header_timeout: self.header_timeout,
        }
    }

    /// A listener's limits from `[api]`: at most `connections_max` in all,
    /// the configured share per source (never above that), the header
    /// deadline.
    pub fn of(cfg: &esc_config::ApiConfig, connections_max: usize) -> Limits {
        Limits {
            connections_max,
            per_source_max: cfg.connections_per_source_max.min(connections_max),
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
        }
    }
}

/// How many connections the REST API may hold given the process's
/// descriptor limit `nofile` and the descriptors the monitor's probes and
/// the VIM calls may hold at once (`other_max`): the configured cap, or
/// less when the limit is lower (at least 16). Returns the cap and whether
/// it was lowered.
pub fn fd_budget(configured: usize, nofile: u64, other_max: usize) -> (usize, bool) {
    let spare = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_RESERVED + HEALTH_CONNECTIONS_MAX + other_max);
    let cap = configured.min(spare).max(16);
    (cap, cap < configured)
}

/// One API's connection caps, shared by its listeners (plain, HTTPS), and
/// its header deadline.
#[derive(Debug, Clone)]
pub struct Gate {
    pub admission: Arc<Admission>,
    pub header_timeout: Duration,
}

/// Whether every accept loop of an API runs (what the health check
/// reads): the REST API has one per configured listener (plain, HTTPS).
#[derive(Debug, Default)]
pub struct Listening {
    expected: AtomicUsize,
    running: AtomicUsize,
}

impl Listening {
    pub fn get(&self) -> bool {
        let expected = self.expected.load(Ordering::Relaxed);
        expected > 0 && self.running.load(Ordering::Relaxed) >= expected
    }

    /// How many accept loops the API has (set before they start).
    pub fn expect(&self, loops: usize) {
        self.expected.store(loops, Ordering::Relaxed);
    }

    fn set(&self, on: bool) {
        if on {
            self.running.fetch_add(1, Ordering::Relaxed);
        } else {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether the northbound listeners accept (the health check reads it).
#[derive(Debug, Default)]
pub struct Northbound {
    pub api_listening: Arc<Listening>,
    pub health_listening: Arc<Listening>,
}

/// Which listener's counters a [`serve`] loop keeps.
pub type Which = fn(&Counters) -> &ConnCounters;

/// Serves `app` on `listener` under `gate` until `shutdown` resolves;
/// then stops accepting, lets every request already running finish and
/// closes the connections.
///
/// With `tls`, every connection is a TLS server session first (its
/// handshake under the header deadline) with the certificate `tls` holds
/// when the connection opens.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Gate,
    (all, which): (Arc<Counters>, Which),
    listening: Arc<Listening>,
    tls: Option<Arc<super::tls::Certs>>,
    shutdown: impl Future<Output = ()>,
) {
    let counters = which(&all);
    let Gate {
        admission,
        header_timeout,
    } = gate;
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        header_timeout,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    listening.set(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    Counters::bump(&counters.accept_errors);
                    debug!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(s) => s,
            Err(r) => {
                Counters::bump(match r {
                    Refusal::Full => &counters.refused_full,
                    Refusal::Source => &counters.refused_source,
                });
                // Dropped here: closed before a byte is read.
                drop(stream);
                continue;
            }
        };
        Counters::bump(&counters.accepted);
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            slot,
            app: app.clone(),
            header_timeout,
            counters: (all.clone(), which),
        };
        tokio::spawn(connection(
            stream,
            conn,
            tls.as_ref().map(|t| t.current()),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    listening.set(false);
    let _ = stop_tx.send(true);
}

/// One connection: HTTP/1.1 with keep-alive under the header deadline,
/// until the client closes, a deadline passes or the listener stops.
/// What one connection is served with.
struct Conn {
    peer: SocketAddr,
    /// Its place under the caps, given back when the connection ends.
    slot: Slot,
    app: Router,
    header_timeout: Duration,
    counters: (Arc<Counters>, Which),
}

async fn connection(
    stream: tokio::net::TcpStream,
    conn: Conn,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(cfg) = tls else {
        return http(stream, conn, stop).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
    // The handshake runs under the header deadline: a client that opens
    // and stays silent loses its slot as on plain HTTP.
    let deadline = conn.header_timeout;
    let failed = |why: String| {
        let (all, which) = &conn.counters;
        Counters::bump(&which(all).tls_failures);
        debug!(peer = %conn.peer, "TLS handshake: {why}");
    };
    match tokio::time::timeout(deadline, accept).await {
        Ok(Ok(s)) => http(s, conn, stop).await,
        Ok(Err(e)) => failed(e.to_string()),
        Err(_) => failed("not finished within the header deadline".into()),
    }
}

/// HTTP/1.1 on one connection, plain or TLS.
async fn http<IO>(stream: IO, conn: Conn, mut stop: tokio::sync::watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        slot: _slot,
        app,
        header_timeout,
        counters: (all, which),
    } = conn;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // Handlers may ask who is calling (rate limits, logs).
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopped = async move {
        // The guard `wait_for` returns must not live across an await.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        if e.is_timeout() {
            Counters::bump(&which(&all).header_timeouts);
        }
        debug!(%peer, "connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_room_for_everything_else() {
        assert_eq!(fd_budget(4_096, 20_000, 4_096), (4_096, false));
        let (cap, lowered) = fd_budget(4_096, 1_024, 0);
        assert!(lowered);
        assert_eq!(cap, 1_024 - FD_RESERVED - HEALTH_CONNECTIONS_MAX);
        assert_eq!(fd_budget(4_096, 100, 4_096), (16, true));
    }
}
