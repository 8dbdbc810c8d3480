//! The lab's client and checker (issue 5): concurrent writers through the
//! VIP with idempotency keys, resending on 503 and connection errors as a
//! client of an HA service must, each write recorded in a history (JSON
//! lines: invoke, outcome, times, the node and epoch that answered); and a
//! checker that reads both stores afterwards.

use crate::cluster::{Cluster, NODE_ADDRS, PASSWORD, VIP};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One write as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Rec {
    pub name: String,
    /// "ok", "fail" (the deadline passed, or a final error) .
    pub outcome: &'static str,
    /// Milliseconds since the workload started.
    pub invoked_ms: u64,
    pub done_ms: u64,
    pub node: String,
    pub epoch: u64,
    pub attempts: u32,
    pub last_error: String,
}

/// Writes a history as JSON lines, one write per line (creating the
/// directory), for a later look or another checker.
pub fn write_history(path: &std::path::Path, history: &[Rec]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in history {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

/// Each write is resent (same Idempotency-Key) until it succeeds or this passes.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// The client gives up on an attempt (connect, or the whole request) after
/// this and resends with the same key: tens of times the normal write
/// latency here, and what a client of an HA service sets so that a request
/// stuck on a dead node does not dominate the interruption it sees; short
/// enough not to quantise a sub-second figure (issue 13: at most 100 ms).
/// Resending is safe at any moment: the key makes it apply once.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

/// Concurrent writers; bounded in count and time.
pub struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    history: Arc<Mutex<Vec<Rec>>>,
    pub start: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workload {
    /// Starts `writers` concurrent writers in the client namespace, at most
    /// `max_writes` writes and five minutes.
    pub fn start(c: &Cluster, writers: usize, max_writes: usize, prefix: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let history: Arc<Mutex<Vec<Rec>>> = Default::default();
        let start = Instant::now();
        let (s, a, h) = (stop.clone(), acked.clone(), history.clone());
        let prefix = prefix.to_string();
        let thread = c.lab.in_ns("client", move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = reqwest::Client::builder()
                    .connect_timeout(ATTEMPT_TIMEOUT)
                    .timeout(ATTEMPT_TIMEOUT)
                    .pool_max_idle_per_host(0)
                    .build()
                else {
                    return;
                };
                ensure_tenant(&client).await;
                let next = Arc::new(AtomicUsize::new(0));
                let end = start + Duration::from_secs(300);
                let mut tasks = Vec::new();
                for _ in 0..writers {
                    let (c, s, a, h, next, prefix) = (
                        client.clone(),
                        s.clone(),
                        a.clone(),
                        h.clone(),
                        next.clone(),
                        prefix.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        while !s.load(Ordering::Relaxed) && Instant::now() < end {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= max_writes {
                                return;
                            }
                            let rec = write_once(&c, &prefix, i, start).await;
                            if rec.outcome == "ok" {
                                a.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Ok(mut h) = h.lock() {
                                h.push(rec);
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Workload {
            stop,
            acked,
            history,
            start,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Milliseconds since the workload started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Waits until `n` writes in total were acknowledged.
    pub fn wait_acked(&self, n: usize, deadline: Duration) -> bool {
        crate::cluster::wait_for(deadline, || self.acked() >= n)
    }

    /// Stops issuing writes; waits for those in flight; returns the history.
    pub fn finish(mut self) -> Vec<Rec> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.history
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

/// The tenant the workload's deployments belong to.
pub const TENANT: &str = "lab";

/// Creates [`TENANT`] (a resend with its key, or a 409 from an earlier
/// workload, is as good), resending like a write until [`WRITE_DEADLINE`].
async fn ensure_tenant(c: &reqwest::Client) {
    let deadline = Instant::now() + WRITE_DEADLINE;
    while Instant::now() < deadline {
        let r = c
            .post(format!("http://{VIP}:8080/v0/tenants"))
            .basic_auth("admin", Some(PASSWORD))
            .header("Idempotency-Key", "lab-tenant")
            .json(&serde_json::json!({ "name": TENANT }))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT {
                return;
            }
        }
        // The client's resend pacing, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One write: a deployment of no VM group (durable on both nodes, applied
/// as a deploy operation that completes in its own log entry: the
/// replicated data path, without the VIM).
async fn write_once(c: &reqwest::Client, prefix: &str, i: usize, start: Instant) -> Rec {
    let name = format!("{prefix}-{i:06}");
    let body = serde_json::json!({
        "name": name, "tenant": TENANT,
        "properties": { "vim": "openstack", "image": "vnf", "flavor": "m1.small" },
    });
    let invoked_ms = start.elapsed().as_millis() as u64;
    let deadline = Instant::now() + WRITE_DEADLINE;
    let mut attempts = 0;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        attempts += 1;
        let r = c
            .post(format!("http://{VIP}:8080/v0/deployments"))
            .basic_auth("admin", Some(PASSWORD))
            .header("Idempotency-Key", format!("{prefix}-k{i}"))
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                let hdr = |n: &str| {
                    r.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                return Rec {
                    name,
                    outcome: "ok",
                    invoked_ms,
                    done_ms: start.elapsed().as_millis() as u64,
                    node: hdr("esc-node"),
                    epoch: hdr("esc-epoch").parse().unwrap_or(0),
                    attempts,
                    last_error,
                };
            }
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                last_error = "503".into();
            }
            Ok(r) => {
                last_error = format!("HTTP {}", r.status());
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
        // The client's resend pacing, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Rec {
        name,
        outcome: "fail",
        invoked_ms,
        done_ms: start.elapsed().as_millis() as u64,
        node: String::new(),
        epoch: 0,
        attempts,
        last_error,
    }
}

/// What the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub acknowledged: usize,
    pub failed: usize,
    /// Acknowledged writes missing on a node (must be 0).
    pub missing: usize,
    /// Writes applied twice (a name acknowledged under two keys; must be 0).
    pub duplicates: usize,
    /// Epochs acknowledged by more than one node (must be 0 with a witness).
    pub two_writer_epochs: usize,
    /// Writes acknowledged in an epoch although the client invoked them
    /// after a newer epoch had acknowledged one: two nodes admitting writes
    /// at the same moment (must be 0). Judged from the client's clock
    /// only where it is certain: invoked after the newer epoch's first
    /// acknowledgement arrived.
    pub stale_epoch_acks: usize,
    pub identical_copies: bool,
    pub vip_holders: Vec<String>,
    pub primary: Option<String>,
    /// Longest time without a successful write after the fault (ms).
    pub interruption_ms: u64,
    pub epochs: BTreeMap<u64, Vec<String>>,
}

impl Verdict {
    pub fn pass(&self, failures_allowed: bool) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.two_writer_epochs == 0
            && self.stale_epoch_acks == 0
            && self.identical_copies
            && self.vip_holders.len() == 1
            && self.primary.is_some()
            && (failures_allowed || self.failed == 0)
    }
}

/// Every deployment name in node `i`'s store (read through its own API).
pub fn deployments(c: &Cluster, i: usize) -> anyhow::Result<HashSet<String>> {
    let url = format!("http://{}:8080", NODE_ADDRS[i]);
    c.lab
        .in_ns("client", move || -> anyhow::Result<HashSet<String>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = reqwest::Client::new();
                let mut out = HashSet::new();
                let mut after: Option<String> = None;
                loop {
                    let mut u = format!("{url}/v0/deployments?limit=1000");
                    if let Some(a) = &after {
                        u.push_str(&format!("&after={a}"));
                    }
                    let r: serde_json::Value = client
                        .get(&u)
                        .basic_auth("admin", Some(PASSWORD))
                        .send()
                        .await?
                        .json()
                        .await?;
                    for d in r["deployments"].as_array().into_iter().flatten() {
                        if let Some(n) = d["name"].as_str() {
                            out.insert(n.to_string());
                        }
                    }
                    match r["next_after"].as_str() {
                        Some(a) => after = Some(a.to_string()),
                        None => return Ok(out),
                    }
                }
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
}

/// Acknowledgements in an epoch of writes invoked after a newer epoch had
/// acknowledged a write (see [`Verdict::stale_epoch_acks`]).
pub fn stale_epoch_acks(acked: &[&Rec]) -> usize {
    // The first acknowledgement of each epoch, then, per epoch, the
    // earliest first acknowledgement among all newer epochs.
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    for r in acked {
        let t = first.entry(r.epoch).or_insert(r.done_ms);
        *t = (*t).min(r.done_ms);
    }
    let mut newer_first: BTreeMap<u64, u64> = BTreeMap::new();
    let mut earliest = u64::MAX;
    for (&e, &t) in first.iter().rev() {
        newer_first.insert(e, earliest);
        earliest = earliest.min(t);
    }
    acked
        .iter()
        .filter(|r| newer_first.get(&r.epoch).is_some_and(|&t| r.invoked_ms > t))
        .count()
}

/// Reads both stores and the history; `fault_ms` is when the fault began
/// (workload clock).
pub fn check(c: &Cluster, history: &[Rec], fault_ms: u64) -> anyhow::Result<Verdict> {
    let acked: Vec<&Rec> = history.iter().filter(|r| r.outcome == "ok").collect();
    let failed = history.len() - acked.len();
    let identical = crate::cluster::wait_for(crate::cluster::READY, || c.identical());
    let mut missing = 0;
    for i in 0..2 {
        let have = deployments(c, i)?;
        missing += acked.iter().filter(|r| !have.contains(&r.name)).count();
    }
    let mut names = HashSet::new();
    let duplicates = acked.iter().filter(|r| !names.insert(&r.name)).count();
    let mut epochs: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in &acked {
        let e = epochs.entry(r.epoch).or_default();
        if !e.contains(&r.node) {
            e.push(r.node.clone());
        }
    }
    let two_writer_epochs = epochs.values().filter(|n| n.len() > 1).count();
    let stale_epoch_acks = stale_epoch_acks(&acked);
    // The longest gap between successful writes from the fault on.
    let mut done: Vec<u64> = acked
        .iter()
        .map(|r| r.done_ms)
        .filter(|t| *t >= fault_ms)
        .collect();
    done.sort_unstable();
    let mut prev = fault_ms;
    let mut interruption_ms = 0;
    for t in done {
        interruption_ms = interruption_ms.max(t - prev);
        prev = t;
    }
    Ok(Verdict {
        acknowledged: acked.len(),
        failed,
        missing,
        duplicates,
        two_writer_epochs,
        stale_epoch_acks,
        identical_copies: identical,
        vip_holders: c
            .vip_holders()
            .into_iter()
            .map(|i| format!("esc-{}", i + 1))
            .collect(),
        primary: {
            // Sampled until ready: a standby may be finishing its catch-up.
            let mut p = None;
            crate::cluster::wait_for(crate::cluster::READY, || {
                p = c.ready();
                p.is_some()
            });
            p.map(|p| format!("esc-{}", p + 1))
        },
        interruption_ms,
        epochs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(invoked_ms: u64, done_ms: u64, node: &str, epoch: u64) -> Rec {
        Rec {
            name: format!("w{invoked_ms}"),
            outcome: "ok",
            invoked_ms,
            done_ms,
            node: node.into(),
            epoch,
            attempts: 1,
            last_error: String::new(),
        }
    }

    #[test]
    fn an_old_epoch_acknowledging_after_a_newer_one_is_two_writers() {
        let clean = [
            ack(0, 5, "esc-1", 1),
            ack(3, 900, "esc-1", 1), // slow answer, invoked before epoch 2
            ack(600, 610, "esc-2", 2),
            ack(700, 705, "esc-2", 2),
        ];
        assert_eq!(stale_epoch_acks(&clean.iter().collect::<Vec<_>>()), 0);
        let split = [
            ack(0, 5, "esc-1", 1),
            ack(600, 610, "esc-2", 2),
            ack(650, 655, "esc-1", 1), // invoked after epoch 2 answered
            ack(700, 705, "esc-2", 3),
            ack(720, 730, "esc-2", 2), // epoch 3 answered at 705
        ];
        assert_eq!(stale_epoch_acks(&split.iter().collect::<Vec<_>>()), 2);
    }
}
