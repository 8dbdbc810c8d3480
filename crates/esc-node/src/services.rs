//! Services that run only on the primary and stop when it stops leading
//! (architecture section 8: the lifecycle runner, the monitor and healer,
//! the notifier of the next issues).
//!
//! ```text
//!   Shared::leading (set by the HA agent) ──> supervise
//!        true:  start every registered service with its own stop switch
//!        false: flip the switches; a service still running after
//!               STOP_WITHIN is aborted (and the overrun logged)
//! ```
//! A service reads the replicated state and proposes commands; it never
//! keeps anything it cannot rebuild from the state, so the next primary
//! starts it afresh (soft state stays soft).

use crate::logging::HA;
use crate::shared::Shared;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How soon every primary-only service has stopped once the node stops
/// leading (architecture section 8: "stops issuing them within 100 ms").
pub const STOP_WITHIN: Duration = Duration::from_millis(100);

/// A service of the primary.
pub trait PrimaryService: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Runs until `stop` turns true, and returns promptly then.
    fn run(&self, shared: Shared, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()>;
}

/// The services this node runs while primary (none yet: the lifecycle
/// manager and the monitoring engine of the next issues register here).
pub fn registered() -> Vec<Arc<dyn PrimaryService>> {
    Vec::new()
}

/// Starts `services` whenever the node leads and stops them when it no
/// longer does; runs until aborted.
pub async fn supervise(shared: Shared, services: Vec<Arc<dyn PrimaryService>>) {
    let mut leading = shared.leading.subscribe();
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut running = JoinSet::new();
        for s in &services {
            info!(target: HA, service = s.name(), "primary-only service starting");
            let name = s.name();
            let fut = s.run(shared.clone(), stop_rx.clone());
            running.spawn(async move {
                fut.await;
                name
            });
        }
        if leading.wait_for(|l| !*l).await.is_err() {
            running.abort_all();
            return;
        }
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + STOP_WITHIN;
        while !running.is_empty() {
            match tokio::time::timeout_at(deadline, running.join_next()).await {
                Ok(Some(Ok(name))) => {
                    info!(target: HA, service = name, "primary-only service stopped")
                }
                Ok(Some(Err(_))) | Ok(None) => {}
                Err(_) => {
                    warn!(target: HA, left = running.len(),
                          "primary-only services still running {STOP_WITHIN:?} after the node stopped leading: aborted");
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                }
            }
        }
    }
}
