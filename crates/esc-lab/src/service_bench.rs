//! The service at scale (issue 11, "Done when"): servers deployed as
//! deployments of ten VMs each on `esc-vim` (light servers on its
//! `scale-net`), every VIM call answered after `vim_delay_ms`, the primary's
//! power cut once half the servers exist. Measured, for each size:
//!
//! - takeover to the first resumed VIM call: from the new primary's
//!   promotion (its `last_transition`, wall clock) to the first API call
//!   the VIM logged from its address after it;
//! - takeover to every operation completed (the latest `settled_at_ms`);
//! - the deploy rate: servers created per second before the fault, and end
//!   to end (first request to last completion, the takeover included).
//!
//! `esc-lab bench-service` runs it and writes the table and the JSON.

use crate::cluster::{wait_for, Bins, Fault, NODE_ADDRS, PASSWORD, VIP};
use crate::service::{control, send};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// VMs per deployment.
pub const VMS_PER_DEPLOYMENT: u32 = 10;
/// Every phase ends by then.
const PHASE: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub servers: usize,
    pub deployments: usize,
    pub vim_delay_ms: u64,
    pub servers_before_fault: usize,
    pub takeover_to_first_vim_call_ms: Option<u64>,
    pub takeover_to_all_completed_ms: Option<u64>,
    pub deploy_rate_before_fault: f64,
    pub deploy_rate_end_to_end: f64,
    pub completed: usize,
    pub servers_on_vim: usize,
    pub creates: usize,
    /// The new primary's VIM sweep over every server once all exist: how
    /// long one pass took (every page of the listing, then the records of
    /// the deployments), the servers it listed, and the strays it found
    /// (none: every server is held).
    pub sweep_pass_ms: Option<u64>,
    pub sweep_listed: u64,
    pub sweep_strays: u64,
    pub pass: bool,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn spec(i: usize, vms: u32) -> serde_json::Value {
    serde_json::json!({
        "name": format!("s-{i:05}"), "tenant": "scale",
        "vm_groups": [{
            "name": "g", "image": "vnf-image", "flavor": "m1.tiny",
            "scaling": { "min_active": vms, "max_active": vms },
            "interfaces": [{ "nicid": 0, "network": "scale-net" }]
        }]
    })
}

struct Shared {
    servers_created: AtomicUsize,
    done: AtomicBool,
}

struct ClientOut {
    first_post_ms: u64,
    settled_max_ms: u64,
    completed: usize,
    servers_on_vim: usize,
    creates: usize,
    errors: Vec<String>,
}

/// Every deployment's operation settled: (completed, latest settle time).
async fn settled(c: &reqwest::Client, ops: &[String]) -> (usize, usize, u64) {
    let (mut completed, mut open, mut latest) = (0, 0, 0);
    for op in ops {
        let r = c
            .get(format!("http://{VIP}:8080/v0/operations/{op}"))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await;
        let v: serde_json::Value = match r {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        match v["state"].as_str() {
            Some("COMPLETED") => {
                completed += 1;
                latest = latest.max(v["settled_at_ms"].as_u64().unwrap_or(0));
            }
            Some("FAILED_TEMP" | "FAILED" | "ROLLED_BACK") => {}
            _ => open += 1,
        }
    }
    (completed, open, latest)
}

fn client(deployments: usize, vms: u32, delay_ms: u64, shared: Arc<Shared>) -> ClientOut {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut errors = Vec::new();
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        if let Err(e) = control(
            &c,
            reqwest::Method::PUT,
            "/control/v1/faults",
            Some(&serde_json::json!({"delay_ms": delay_ms})),
        )
        .await
        {
            errors.push(format!("VIM delay: {e}"));
        }
        let base = format!("http://{VIP}:8080");
        if let Err(e) = send(
            &c,
            reqwest::Method::POST,
            &format!("{base}/v0/tenants"),
            "scale-tenant",
            "",
            Some(&serde_json::json!({"name": "scale"})),
        )
        .await
        {
            errors.push(e);
        }
        // A watcher of the VIM's creates (what the fault waits for).
        let (c2, sh) = (c.clone(), shared.clone());
        let watcher = tokio::spawn(async move {
            while !sh.done.load(Ordering::Relaxed) {
                if let Ok(v) = control(&c2, reqwest::Method::GET, "/control/v1/state", None).await {
                    sh.servers_created.store(
                        v["servers"].as_u64().unwrap_or(0) as usize,
                        Ordering::Relaxed,
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let first_post_ms = wall_ms();
        let next = Arc::new(AtomicUsize::new(0));
        let ops: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (c, next, ops, base) = (c.clone(), next.clone(), ops.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut errs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= deployments {
                        return errs;
                    }
                    match send(
                        &c,
                        reqwest::Method::POST,
                        &format!("{base}/v0/deployments"),
                        &format!("scale-{i}"),
                        "",
                        Some(&spec(i, vms)),
                    )
                    .await
                    {
                        Ok(a) => match a.last() {
                            Some((202, v, _)) => {
                                if let Ok(mut o) = ops.lock() {
                                    o.push(v["operation"].as_str().unwrap_or("").to_string());
                                }
                            }
                            other => errs.push(format!("deploy {i}: {other:?}")),
                        },
                        Err(e) => errs.push(e),
                    }
                }
            }));
        }
        for t in tasks {
            if let Ok(e) = t.await {
                errors.extend(e);
            }
        }
        let ops = ops.lock().map(|o| o.clone()).unwrap_or_default();
        let end = Instant::now() + PHASE;
        let (mut completed, mut latest) = (0, 0);
        while Instant::now() < end {
            let (done, open, l) = settled(&c, &ops).await;
            (completed, latest) = (done, l);
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        shared.done.store(true, Ordering::Relaxed);
        let _ = watcher.await;
        let _ = control(
            &c,
            reqwest::Method::PUT,
            "/control/v1/faults",
            Some(&serde_json::json!({})),
        )
        .await;
        let servers_on_vim = crate::service::vim_servers()
            .await
            .map(|s| s.len())
            .unwrap_or(0);
        let creates = control(&c, reqwest::Method::GET, "/control/v1/history", None)
            .await
            .map(|v| {
                v["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|h| h["what"] == "create")
                    .count()
            })
            .unwrap_or(0);
        ClientOut {
            first_post_ms,
            settled_max_ms: latest,
            completed,
            servers_on_vim,
            creates,
            errors,
        }
    })
}

/// The first API call the VIM logged from `from` at or after `since_ms`.
fn first_call(c: &crate::cluster::Cluster, from: &str, since_ms: u64) -> Option<u64> {
    let from = from.to_string();
    c.lab
        .in_ns("client", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let c = reqwest::Client::new();
                let v = control(
                    &c,
                    reqwest::Method::GET,
                    &format!("/control/v1/calls?since_ms={since_ms}&from={from}&limit=1"),
                    None,
                )
                .await
                .ok()?;
                v["calls"][0]["at_ms"].as_u64()
            })
        })
        .join()
        .ok()
        .flatten()
}

/// One size: `servers` servers, the primary's power cut at half of them.
pub fn run(bins: &Bins, servers: usize, vim_delay_ms: u64, verbose: bool) -> anyhow::Result<Row> {
    let vms = VMS_PER_DEPLOYMENT.min(servers as u32).max(1);
    let deployments = servers.div_ceil(vms as usize);
    let (mut c, _secrets) = crate::service::up("lb", bins, Fault::PowerFailure)?;
    let p = c.wait_ready()?;
    let s = 1 - p;
    let shared = Arc::new(Shared {
        servers_created: AtomicUsize::new(0),
        done: AtomicBool::new(false),
    });
    let sh = shared.clone();
    let client = c
        .lab
        .in_ns("client", move || client(deployments, vms, vim_delay_ms, sh));
    anyhow::ensure!(
        wait_for(PHASE, || shared.servers_created.load(Ordering::Relaxed)
            >= servers / 2),
        "the deploy does not progress"
    );
    let before = shared.servers_created.load(Ordering::Relaxed);
    let fault_ms = wall_ms();
    if verbose {
        eprintln!(
            "  {servers} servers: {before} created, cutting esc-{}'s power",
            p + 1
        );
    }
    c.inject(Fault::PowerFailure, p)?;
    anyhow::ensure!(
        wait_for(crate::cluster::READY, || c.role(s) == "PRIMARY"
            && c.vip_holders().contains(&s)),
        "esc-{} did not take over",
        s + 1
    );
    let takeover_ms = c
        .status(s)
        .and_then(|st| st.last_transition.map(|t| t.at_unix_ms))
        .unwrap_or(fault_ms);
    let out = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client panicked"))?;
    let first = first_call(&c, NODE_ADDRS[s], takeover_ms);
    // A sweep pass that saw every server (the lab's sweeps every 5 s).
    let mut sweep = None;
    wait_for(Duration::from_secs(120), || {
        sweep = c
            .status(s)
            .and_then(|st| st.sweep)
            .filter(|w| w.listed as usize >= servers);
        sweep.is_some()
    });
    let rate = |n: usize, ms: u64| {
        if ms == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / ms as f64
        }
    };
    let row = Row {
        servers,
        deployments,
        vim_delay_ms,
        servers_before_fault: before,
        takeover_to_first_vim_call_ms: first.map(|f| f.saturating_sub(takeover_ms)),
        takeover_to_all_completed_ms: (out.settled_max_ms > 0)
            .then(|| out.settled_max_ms.saturating_sub(takeover_ms)),
        deploy_rate_before_fault: rate(before, fault_ms.saturating_sub(out.first_post_ms)),
        deploy_rate_end_to_end: rate(
            out.servers_on_vim,
            out.settled_max_ms.saturating_sub(out.first_post_ms),
        ),
        completed: out.completed,
        servers_on_vim: out.servers_on_vim,
        creates: out.creates,
        sweep_pass_ms: sweep.as_ref().and_then(|w| w.last_pass_took_ms),
        sweep_listed: sweep.as_ref().map_or(0, |w| w.listed),
        sweep_strays: sweep.as_ref().map_or(0, |w| w.strays + w.orphans),
        pass: out.errors.is_empty()
            && out.completed == deployments
            && out.servers_on_vim == servers
            && out.creates == servers
            && sweep
                .as_ref()
                .is_some_and(|w| w.strays == 0 && w.orphans == 0 && w.removed == 0),
    };
    if !out.errors.is_empty() {
        eprintln!(
            "  errors: {:?}",
            out.errors.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(row)
}
