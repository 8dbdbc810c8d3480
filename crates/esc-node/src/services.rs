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
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How soon every primary-only service has stopped once the node stops
/// leading (architecture section 8: "stops issuing them within 100 ms").
pub const STOP_WITHIN: Duration = Duration::from_millis(100);

/// A service of the primary. It holds the handles it needs (built at
/// start, `start::primary_services`).
pub trait PrimaryService: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Runs until `stop` turns true, and returns promptly then.
    fn run(&self, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()>;
}

/// Proposes `op` through the owner like a client write, from a
/// primary-only service, without waiting for it; a refusal is logged as
/// `what` (the service's core proposes again what did not commit).
pub fn propose(shared: &crate::shared::Shared, op: esc_domain::Op, what: &'static str) {
    let events = shared.events.clone();
    tokio::spawn(async move {
        let cmd = esc_domain::Command {
            tid: uuid::Uuid::new_v4().to_string(),
            idempotency_key: None,
            fingerprint: String::new(),
            at_ms: crate::shared::unix_ms(),
            op,
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let payload = cmd.to_payload();
        let sent = events
            .send(crate::shared::Event::Propose { payload, reply })
            .await;
        if sent.is_ok() {
            if let Ok(Err(r)) = rx.await {
                warn!(target: HA, "{what} was not committed: {r:?}");
            }
        }
    });
}

/// Starts `services` whenever `leading` is true and stops them at its next
/// change: a step-down, or a step-down and a new term in quick succession
/// (the watch then reads true again, but each term starts afresh). Runs
/// until aborted (or `leading`'s sender goes).
pub async fn supervise(mut leading: watch::Receiver<bool>, services: Vec<Arc<dyn PrimaryService>>) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        leading.mark_unchanged();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut running = JoinSet::new();
        for s in &services {
            info!(target: HA, service = s.name(), "primary-only service starting");
            let name = s.name();
            let fut = s.run(stop_rx.clone());
            running.spawn(async move {
                fut.await;
                name
            });
        }
        if leading.changed().await.is_err() {
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
                Ok(Some(Err(e))) if e.is_panic() => {
                    warn!(target: HA, "a primary-only service panicked: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts its starts and stops; `obedient: false` ignores the stop.
    struct Probe {
        started: Arc<AtomicU32>,
        stopped: Arc<AtomicU32>,
        obedient: bool,
    }

    impl PrimaryService for Probe {
        fn name(&self) -> &'static str {
            if self.obedient {
                "probe"
            } else {
                "stubborn"
            }
        }

        fn run(&self, mut stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
            let (started, stopped, obedient) =
                (self.started.clone(), self.stopped.clone(), self.obedient);
            Box::pin(async move {
                started.fetch_add(1, Ordering::SeqCst);
                if obedient {
                    let _ = stop.wait_for(|s| *s).await;
                    stopped.fetch_add(1, Ordering::SeqCst);
                } else {
                    std::future::pending::<()>().await;
                }
            })
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    // Architecture section 8: primary-only work starts when the node leads,
    // and has stopped within 100 ms of it no longer leading, a service
    // that ignores its stop switch included (aborted). Each term starts
    // the services afresh.
    #[tokio::test]
    async fn services_run_only_while_leading_and_stop_on_step_down() {
        let counters: Vec<(Arc<AtomicU32>, Arc<AtomicU32>)> =
            (0..2).map(|_| (Arc::default(), Arc::default())).collect();
        let services: Vec<Arc<dyn PrimaryService>> = counters
            .iter()
            .zip([true, false])
            .map(|((started, stopped), obedient)| {
                Arc::new(Probe {
                    started: started.clone(),
                    stopped: stopped.clone(),
                    obedient,
                }) as Arc<dyn PrimaryService>
            })
            .collect();
        let (leading, rx) = watch::channel(false);
        let sup = tokio::spawn(supervise(rx, services));
        tokio::task::yield_now().await;
        assert_eq!(
            counters[0].0.load(Ordering::SeqCst),
            0,
            "not leading: nothing runs"
        );
        for term in 1..=2u32 {
            leading.send_replace(true);
            until("both services started", || {
                counters
                    .iter()
                    .all(|(s, _)| s.load(Ordering::SeqCst) == term)
            })
            .await;
            leading.send_replace(false);
            until("the obedient service stopped", || {
                counters[0].1.load(Ordering::SeqCst) == term
            })
            .await;
        }
        // The stubborn one was aborted each time (it never counts a stop),
        // or the second term could not have started it again cleanly.
        assert_eq!(counters[1].1.load(Ordering::SeqCst), 0);
        sup.abort();
    }

    // A step-down and a new term before the supervisor looks (the watch
    // reads true again): the old term's services still stop and start anew.
    #[tokio::test]
    async fn a_new_term_in_quick_succession_restarts_the_services() {
        let (started, stopped) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let probe: Arc<dyn PrimaryService> = Arc::new(Probe {
            started: started.clone(),
            stopped: stopped.clone(),
            obedient: true,
        });
        let (leading, rx) = watch::channel(true);
        let sup = tokio::spawn(supervise(rx, vec![probe]));
        until("started", || started.load(Ordering::SeqCst) == 1).await;
        leading.send_replace(false);
        leading.send_replace(true);
        until("restarted for the new term", || {
            stopped.load(Ordering::SeqCst) == 1 && started.load(Ordering::SeqCst) == 2
        })
        .await;
        sup.abort();
    }
}
