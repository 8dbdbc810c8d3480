//! The notifier (issue 11, item 6): a primary-only service that delivers
//! the results owed to clients' callback URLs from the replicated outbox
//! (`callback/<op>`), driven by `esc_lifecycle::delivery::Deliveries`.
//!
//! ```text
//!   applied index moved ──query::callbacks──> Deliveries::handle(Pending)
//!   Output::Post ──> one task: POST the result (bounded by POST_TIMEOUT) ──> Input::Sent
//!   Output::Commit ──> Event::Propose(CallbacksDelivered) ──> the log
//! ```
//! The POST is ESC's (esc-facts, "The service itself"): the operation and
//! the deployment as JSON, with `esc-status-code` (200 for COMPLETED, 500
//! otherwise), `esc-status-message` and `ESC_TRANSACTION_ID`. At least
//! once: a primary that dies after a POST and before its commit is followed
//! by a second POST of the same result from the next one.

use crate::logging::HA;
use crate::services::PrimaryService;
use crate::shared::Shared;
use esc_domain::model::{Callback, OperationState};
use esc_domain::{query, Op};
use esc_lifecycle::delivery::{Config, Deliveries, Input, Output};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// One POST to a callback URL, connect included.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often backoffs are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Results read from the outbox at a time.
const PENDING_READ_MAX: usize = 1_024;

pub struct Notifier {
    shared: Shared,
    http: reqwest::Client,
    cfg: Config,
}

impl Notifier {
    pub fn new(shared: Shared, cfg: Config) -> crate::Result<Notifier> {
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(POST_TIMEOUT)
            // A callback URL is the client's: never follow it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::Error::Invalid {
                field: "notifier".into(),
                message: e.to_string(),
            })?;
        Ok(Notifier { shared, http, cfg })
    }
}

impl PrimaryService for Notifier {
    fn name(&self) -> &'static str {
        "notifier"
    }

    fn run(&self, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(run(
            self.shared.clone(),
            self.http.clone(),
            self.cfg.clone(),
            stop,
        ))
    }
}

/// The result as POSTed: the operation and the deployment as they are now.
fn body(shared: &Shared, c: &Callback) -> serde_json::Value {
    let read = shared.store.reader().ok();
    let op = read
        .as_ref()
        .and_then(|r| query::operation(r, &c.op_id).ok().flatten());
    let dep = read
        .as_ref()
        .and_then(|r| query::service(r, &c.deployment).ok().flatten());
    serde_json::json!({
        "transaction_id": c.tid,
        "operation": op,
        "deployment": dep,
        "deployment_name": c.deployment,
        "state": c.state,
        "message": c.message,
    })
}

/// POSTs one result; Ok on a 2xx answer.
async fn post(shared: Shared, http: reqwest::Client, c: Callback) -> Result<(), String> {
    let s = shared.clone();
    let c2 = c.clone();
    let body = tokio::task::spawn_blocking(move || body(&s, &c2))
        .await
        .map_err(|e| e.to_string())?;
    let (code, message) = match c.state {
        OperationState::Completed => ("200", "completed".to_string()),
        _ => (
            "500",
            c.message.clone().unwrap_or_else(|| "failed".to_string()),
        ),
    };
    // A header value is one line of visible characters.
    let message: String = message
        .chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .take(512)
        .collect();
    let r = http
        .post(&c.url)
        .header("esc-status-code", code)
        .header("esc-status-message", message)
        .header("ESC_TRANSACTION_ID", &c.tid)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", r.status()))
    }
}

async fn run(shared: Shared, http: reqwest::Client, cfg: Config, mut stop: watch::Receiver<bool>) {
    let mut core = Deliveries::new(cfg);
    let start = Instant::now();
    let now = move || start.elapsed().as_millis() as u64;
    let mut applied = shared.applied.subscribe();
    applied.mark_changed();
    // At most one answer per POST in flight, and the core bounds those.
    let (sent_tx, mut sent) = mpsc::unbounded_channel::<(String, Result<(), String>)>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(target: HA, "notifier starting");
    let mut out = Vec::new();
    loop {
        for o in out.drain(..) {
            match o {
                Output::Post(c) => {
                    let (shared, http, tx) = (shared.clone(), http.clone(), sent_tx.clone());
                    tokio::spawn(async move {
                        let op = c.op_id.clone();
                        let r = post(shared, http, c).await;
                        let _ = tx.send((op, r));
                    });
                }
                // Not committed: the core proposes it again (`recommit_ms`).
                Output::Commit(op_ids) => crate::services::propose(
                    &shared,
                    Op::CallbacksDelivered { op_ids },
                    "a delivery of callbacks",
                ),
                Output::Abandoned {
                    op_id,
                    url,
                    attempts,
                    error,
                } => {
                    warn!(target: HA, op = %op_id, %url, attempts, "callback abandoned: {error}");
                }
            }
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    info!(target: HA, "notifier stopping");
                    return;
                }
            }
            Some((op_id, r)) = sent.recv() => {
                let (ok, error) = match r {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, e),
                };
                if !ok {
                    info!(target: HA, op = %op_id, "callback not delivered (retrying): {error}");
                }
                out = core.handle(now(), Input::Sent { op_id, ok, error });
            }
            Ok(()) = applied.changed() => {
                let store = shared.store.clone();
                let pending = tokio::task::spawn_blocking(move || {
                    store
                        .reader()
                        .map_err(|e| e.to_string())
                        .and_then(|r| query::callbacks(&r, PENDING_READ_MAX).map_err(|e| e.to_string()))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                out = match pending {
                    Ok(p) => core.handle(now(), Input::Pending(p)),
                    Err(e) => {
                        // Read again at the next apply.
                        warn!(target: HA, "notifier cannot read the outbox: {e}");
                        Vec::new()
                    }
                };
            }
            _ = tick.tick() => {
                out = core.handle(now(), Input::Tick);
            }
        }
    }
}

/// The notifier's part in `start::primary_services`.
pub fn service(shared: &Shared) -> crate::Result<Arc<dyn PrimaryService>> {
    Ok(Arc::new(Notifier::new(shared.clone(), Config::default())?))
}
