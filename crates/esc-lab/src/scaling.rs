//! Scaling across switchovers (issue 12, "Done when" 3): one deployment of
//! a group of 1 to 2 VMs on the lab VIM's namespace servers, scaled by a
//! load its first VNF reports on `/metrics` (an HTTP KPI reading the JSON
//! metric `load`: out above 80, in below 20). The client sets the load
//! through the VNF's metrics endpoint; as soon as each scale operation is
//! announced (`VM_SCALE_OUT_INIT`, `VM_SCALE_IN_INIT`) the load goes back
//! to neutral and the pair switches over, so the operation finishes on the
//! other node (the VIM answers every call a second late while a scale
//! runs, so the switchover lands inside it). The checker verifies:
//!
//! - the notifications of each scale, once and in order
//!   (`VM_SCALE_OUT_INIT`, `VM_SCALE_OUT_DEPLOYED`, `VM_SCALE_OUT_COMPLETE`,
//!   `VM_SCALE_IN_INIT`, `VM_SCALE_IN_COMPLETE`), each completed after its
//!   switchover began;
//! - the VIM created one server for the scale out and deleted that one
//!   for the scale in (none twice), and the deployment ends with its one
//!   VM alive;
//! - the scale count the cooldown and the next id derive from is 2.

use crate::cluster::{wait_for, Bins, Cluster, Fault, READY, VIP};
use crate::healing::{alive_and_idle, get_json, unix_ms, vm0, wait_deployment};
use crate::service::{control, control_list, send};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEPLOYMENT: &str = "scale-web";
/// How late the VIM answers while a scale runs.
const VIM_DELAY_MS: u64 = 1_000;
/// Each wait of the client ends by then.
const PHASE: Duration = Duration::from_secs(120);

/// The scale notifications, in order.
pub const EXPECTED: [&str; 5] = [
    "VM_SCALE_OUT_INIT",
    "VM_SCALE_OUT_DEPLOYED",
    "VM_SCALE_OUT_COMPLETE",
    "VM_SCALE_IN_INIT",
    "VM_SCALE_IN_COMPLETE",
];

pub fn spec() -> serde_json::Value {
    let load = |event: &str, cond: &str, value: u32| {
        serde_json::json!({
            "event_name": event, "metric_value": value, "metric_cond": cond,
            "metric_occurrences_true": 2, "metric_occurrences_false": 2,
            "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": 1,
                                  "polling_unit": "seconds", "port": 8080, "path": "/metrics",
                                  "metric": "load" }
        })
    };
    serde_json::json!({
        "name": DEPLOYMENT, "tenant": "svc",
        "vm_groups": [{
            "name": "g", "image": "vnf-image", "flavor": "m1.tiny",
            "scaling": { "min_active": 1, "max_active": 2, "cooldown": 3 },
            "interfaces": [{ "nicid": 0, "network": "vnf-net" }],
            "bootup_time": 60,
            "kpis": [
                { "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
                  "metric_occurrences_true": 1, "metric_occurrences_false": 3,
                  "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": 1,
                                        "port": 8080, "path": "/health" } },
                load("VM_OVERLOADED", "GT", 80),
                load("VM_UNDERLOADED", "LT", 20)
            ],
            "rules": [
                { "event_name": "VM_ALIVE",
                  "actions": ["FALSE recover autohealing", "TRUE esc_vm_alive_notification"] },
                { "event_name": "VM_OVERLOADED", "actions": ["TRUE scale_out"] },
                { "event_name": "VM_UNDERLOADED", "actions": ["TRUE scale_in"] }
            ]
        }]
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scale notifications read, in order: event, the VM it names, and
    /// its time (wall clock, ms).
    pub events: Vec<(String, String, u64)>,
    /// When each switchover began (wall clock, ms).
    pub switchovers_ms: Vec<u64>,
    /// Every notification read (event, VM, status, message, time).
    pub all_events: Vec<String>,
    pub creates: usize,
    pub deletes: usize,
    pub vms_at_end: usize,
    pub scales_started: u64,
    pub errors: Vec<String>,
    pub pass: bool,
}

/// Between the client and the driver: switchovers asked for and done.
#[derive(Default)]
struct Progress {
    asked: AtomicUsize,
    done: AtomicUsize,
    /// When the last one began.
    began_ms: AtomicU64,
}

struct ClientReport {
    events: Vec<crate::notify::SseRecord>,
    history: Vec<serde_json::Value>,
    end: Option<serde_json::Value>,
    switchovers_ms: Vec<u64>,
    errors: Vec<String>,
}

async fn set_load(c: &reqwest::Client, addr: &str, load: f64) -> Result<(), String> {
    let r = c
        .put(format!("http://{addr}:8080/metrics/load"))
        .json(&load)
        .send()
        .await
        .map_err(|e| format!("setting the load on {addr}: {e}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("setting the load on {addr}: HTTP {}", r.status()))
    }
}

fn client_script(progress: Arc<Progress>) -> ClientReport {
    let mut errors = Vec::new();
    let (reader, rt, c) = crate::healing::vip_client();
    let mut switchovers_ms = Vec::new();
    let (history, end) = rt.block_on(async {
        let base = format!("http://{VIP}:8080");
        for (path, key, body) in [
            (
                "/v0/tenants",
                "scale-tenant",
                serde_json::json!({"name": "svc"}),
            ),
            ("/v0/deployments", "scale-deploy", spec()),
        ] {
            match send(
                &c,
                reqwest::Method::POST,
                &format!("{base}{path}"),
                key,
                "",
                Some(&body),
            )
            .await
            {
                Ok(a) if a.last().is_some_and(|x| matches!(x.0, 201 | 202)) => {}
                other => errors.push(format!("{path}: {other:?}")),
            }
        }
        let Some(d) = wait_deployment(&c, DEPLOYMENT, |d| {
            alive_and_idle(d) && d["state"] == "SERVICE_ACTIVE_STATE"
        })
        .await
        else {
            errors.push("never active".into());
            return (Vec::new(), None);
        };
        let addr = vm0(&d)["addresses"]["0"].as_str().unwrap_or("").to_string();
        // Out, then in: each driven by the load, switched over in the
        // middle.
        for (load, init, complete, vms) in [
            (90.0, "VM_SCALE_OUT_INIT", "VM_SCALE_OUT_COMPLETE", 2),
            (10.0, "VM_SCALE_IN_INIT", "VM_SCALE_IN_COMPLETE", 1),
        ] {
            // The VIM answers each call a second late meanwhile, so that
            // the switchover lands inside the operation (a delete alone
            // takes milliseconds).
            let slow = serde_json::json!({ "delay_ms": VIM_DELAY_MS });
            if let Err(e) =
                control(&c, reqwest::Method::PUT, "/control/v1/faults", Some(&slow)).await
            {
                errors.push(format!("slowing the VIM: {e}"));
            }
            if let Err(e) = set_load(&c, &addr, load).await {
                errors.push(e);
                break;
            }
            let seen = |name: &str| {
                let name = name.to_string();
                move |e: &[crate::notify::SseRecord]| e.iter().any(|r| r.event == name)
            };
            if !reader.wait_for(PHASE, seen(init)) {
                errors.push(format!("no {init} within {PHASE:?}"));
                break;
            }
            if let Err(e) = set_load(&c, &addr, 50.0).await {
                errors.push(e);
            }
            let n = progress.asked.fetch_add(1, Ordering::Relaxed) + 1;
            let end = Instant::now() + PHASE;
            while progress.done.load(Ordering::Relaxed) < n && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            switchovers_ms.push(progress.began_ms.load(Ordering::Relaxed));
            if !reader.wait_for(PHASE, seen(complete)) {
                errors.push(format!("no {complete} within {PHASE:?}"));
                break;
            }
            let none = serde_json::json!({});
            if let Err(e) =
                control(&c, reqwest::Method::PUT, "/control/v1/faults", Some(&none)).await
            {
                errors.push(format!("clearing the VIM's delay: {e}"));
            }
            let grown = wait_deployment(&c, DEPLOYMENT, |d| {
                alive_and_idle(d) && d["vms"].as_array().is_some_and(|v| v.len() == vms)
            })
            .await;
            if grown.is_none() {
                errors.push(format!("{DEPLOYMENT} never had {vms} VM(s) alive"));
            }
        }
        // Nothing more happens for a few polls (the load is neutral): a
        // window observed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let end = get_json(&c, &format!("{base}/v0/deployments/{DEPLOYMENT}")).await;
        let history = control_list(&c, "/control/v1/history", "history", &mut errors).await;
        (history, end)
    });
    ClientReport {
        events: reader.finish(),
        history,
        end,
        switchovers_ms,
        errors,
    }
}

/// Runs the scaling scenario on a fresh cluster.
pub fn run(tag: &str, bins: &Bins, verbose: bool) -> anyhow::Result<Report> {
    let (mut c, secrets) = crate::service::up_with(tag, bins, Fault::Switchover, true)?;
    let r = run_on(&mut c, verbose);
    if r.as_ref().map_or(true, |o| !o.pass) {
        crate::service::dump(&c, secrets.path());
    }
    r
}

fn run_on(c: &mut Cluster, verbose: bool) -> anyhow::Result<Report> {
    crate::healing::join_vim_network(c);
    c.wait_ready()?;
    let progress = Arc::new(Progress::default());
    let pr = progress.clone();
    let client = c.lab.in_ns("client", move || client_script(pr));
    for n in 1..=2 {
        // Asked for by the client, or it gave up (then it ends on its own).
        if !wait_for(PHASE * 2, || {
            progress.asked.load(Ordering::Relaxed) >= n || client.is_finished()
        }) || client.is_finished()
        {
            break;
        }
        let p = c.wait_ready()?;
        let s = 1 - p;
        if verbose {
            eprintln!("  switchover {n}: esc-{} to esc-{}", p + 1, s + 1);
        }
        progress.began_ms.store(unix_ms(), Ordering::Relaxed);
        c.inject(Fault::Switchover, p)?;
        let took_over = wait_for(READY, || {
            c.role(s) == "PRIMARY" && c.vip_holders().contains(&s)
        });
        anyhow::ensure!(took_over, "esc-{} did not take over", s + 1);
        c.heal(Fault::Switchover, p)?;
        c.wait_ready()?;
        progress.done.store(n, Ordering::Relaxed);
    }
    let r = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    Ok(check(r))
}

fn check(r: ClientReport) -> Report {
    let mut errors = r.errors;
    let events: Vec<(String, String, u64)> = r
        .events
        .iter()
        .filter(|e| e.event.starts_with("VM_SCALE"))
        .map(|e| {
            (
                e.event.clone(),
                e.data["kind"]["vm_target"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e.data["at_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    if names != EXPECTED {
        errors.push(format!(
            "scale notifications {names:?}, expected {EXPECTED:?}"
        ));
    }
    let added = format!("esc-{DEPLOYMENT}-g-1-g0");
    if events.iter().any(|e| e.1 != added) {
        errors.push(format!(
            "a scale notification names another VM than {added}"
        ));
    }
    // Each scale completed after its switchover began.
    for (complete, n) in [("VM_SCALE_OUT_COMPLETE", 0), ("VM_SCALE_IN_COMPLETE", 1)] {
        let at = events.iter().find(|e| e.0 == complete).map(|e| e.2);
        let began = r.switchovers_ms.get(n).copied();
        if !matches!((at, began), (Some(a), Some(b)) if a > b) {
            errors.push(format!(
                "{complete} at {at:?}, its switchover began at {began:?}: not in the middle"
            ));
        }
    }
    let count = |what: &str| r.history.iter().filter(|h| h["what"] == what).count();
    let (creates, deletes) = (count("create"), count("delete"));
    let added_deleted = r
        .history
        .iter()
        .any(|h| h["what"] == "delete" && h["name"] == added.as_str());
    if (creates, deletes) != (2, 1) || !added_deleted {
        errors.push(format!(
            "the VIM saw {creates} create(s) and {deletes} delete(s); expected 2 (the first VM, the scale out's) and 1 (the scale out's VM)"
        ));
    }
    let end = r.end.unwrap_or_default();
    let vms_at_end = end["vms"].as_array().map_or(0, Vec::len);
    let scales_started = end["scaling"]["g"]["started"].as_u64().unwrap_or(0);
    if vms_at_end != 1 || !alive_and_idle(&end) {
        errors.push(format!("ends with {vms_at_end} VM(s): {end}"));
    }
    if scales_started != 2 {
        errors.push(format!("scale count {scales_started}, expected 2"));
    }
    let all_events = r
        .events
        .iter()
        .map(|e| {
            let k = &e.data["kind"];
            format!(
                "{} {} {} {} ({})",
                e.event, k["vm_target"], k["status"], k["message"], e.data["at_ms"]
            )
        })
        .collect();
    Report {
        events,
        switchovers_ms: r.switchovers_ms,
        all_events,
        creates,
        deletes,
        vms_at_end,
        scales_started,
        pass: errors.is_empty(),
        errors,
    }
}
