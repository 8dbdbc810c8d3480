//! The service under failure (issue 11, "Done when"): the lab's pair
//! configured with a VIM connector to `esc-vim` on a host of its own; a
//! client deploys deployments of VMs through the VIP (each with an
//! `Idempotency-Key` and a `callback`), the fault hits the primary while
//! they are being deployed (or, in a run with `fault_in_changes`, while
//! deployments are being updated, one VM more each, and VMs rebooted), then
//! part of them is undeployed; and a checker verifies what the issue asks:
//!
//! - every operation answered `202` reached `COMPLETED`, once (every
//!   resend of a request got the same operation);
//! - the VIM holds exactly the servers of the deployments that remain (no
//!   duplicate, no leak, none missing), and its history shows one reboot
//!   of each VM a client asked to reboot;
//! - every callback arrived with its operation's transaction id;
//! - the event stream read through the VIP across the takeover has no gap
//!   and no event twice, and is the new primary's outbox.
//!
//! ```text
//!   client ns: deployer (HTTP through the VIP) + CallbackSink + EventReader
//!   vim ns:    esc-vim (API :5000, control plane :5001: API faults)
//!   esc1/esc2: the pair with [vim]; the fault on the primary
//! ```

use crate::cluster::{wait_for, Bins, Cluster, Fault, CLIENT_ADDR, PASSWORD, READY, VIP};
use crate::notify::{stream_faults, CallbackSink, EventReader};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The VIM host.
pub const VIM_ADDR: &str = "192.0.2.14";
/// The lab VIM's account password (the lab's own, never a product default).
pub const VIM_PASSWORD: &str = "lab-vim-password-not-a-default";
/// Each phase of the client (deploy, undeploy, deliveries) ends by then.
const PHASE: Duration = Duration::from_secs(180);
/// The client's attempt timeout: it resends with the same key after it.
const ATTEMPT: Duration = Duration::from_secs(2);

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub deployments: usize,
    pub vms_per_deployment: u32,
    /// Undeployed after every deploy completed (the first ones).
    pub undeploy: usize,
    /// Injected after this many deploys were accepted.
    pub fault_after: usize,
    /// API faults of the VIM during the run (the control plane's JSON).
    pub api_faults: Option<serde_json::Value>,
    /// Servers as network namespaces with `esc-vnf` (else light).
    pub namespace_servers: bool,
    /// Deployments updated to one VM more each (those after the
    /// undeployed ones), once every deploy completed...
    pub updates: usize,
    /// ...and deployments whose first VM is rebooted (the next ones).
    pub reboots: usize,
    /// The fault hits after `fault_after` of those changes were accepted
    /// (else after that many deploys).
    pub fault_in_changes: bool,
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            deployments: 50,
            vms_per_deployment: 2,
            undeploy: 25,
            fault_after: 15,
            api_faults: None,
            namespace_servers: true,
            updates: 0,
            reboots: 0,
            fault_in_changes: false,
            verbose: false,
        }
    }
}

/// One operation as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub deployment: String,
    pub kind: &'static str,
    pub op_id: String,
    pub tid: String,
    /// Every answer to a resend named this operation.
    pub resends_agree: bool,
    pub state: String,
    /// The operation's error, if it did not complete.
    pub error: String,
}

impl Op {
    /// An operation just accepted (202): its id from the answer.
    fn accepted(deployment: String, kind: &'static str, v: &serde_json::Value, tid: String) -> Op {
        Op {
            deployment,
            kind,
            op_id: v["operation"].as_str().unwrap_or("").to_string(),
            tid,
            resends_agree: true,
            state: String::new(),
            error: String::new(),
        }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub fault: String,
    pub operations: usize,
    pub completed: usize,
    /// Those that did not complete: kind, deployment, state, error.
    pub unfinished: Vec<String>,
    /// Operations whose resends were answered with another operation.
    pub disagreeing_resends: usize,
    pub servers_expected: usize,
    pub servers_on_vim: usize,
    pub duplicates: Vec<String>,
    pub missing: Vec<String>,
    pub leaked: Vec<String>,
    /// Creates the VIM saw (more than the VMs: duplicates made, then removed).
    pub creates: usize,
    /// Servers the VIM sweep deleted (the nodes' `sweep.removed`, counted
    /// by each node while it led in this process: late creates).
    pub swept: u64,
    /// VMs a client asked to reboot that the VIM did not reboot exactly
    /// once (name: reboots seen).
    pub reboots_not_once: Vec<String>,
    pub callbacks_missing: Vec<String>,
    /// Namespace servers whose VNF did not answer its health check with
    /// its day-0 file (empty with light servers).
    pub vnfs_not_answering: Vec<String>,
    pub events_read: usize,
    pub event_faults: Vec<String>,
    pub stream_is_outbox: bool,
    pub stream_connections: usize,
    /// The VIM's fault counts (calls failed, lost, stalled).
    pub api_fault_counts: serde_json::Value,
    pub takeover_ms: u64,
    pub errors: Vec<String>,
    pub pass: bool,
}

fn say(opts: &Options, msg: &str) {
    if opts.verbose {
        eprintln!("  {msg}");
    }
}

/// The name of deployment `i` and the server names its VMs get.
pub fn dep_name(i: usize) -> String {
    format!("svc-{i:03}")
}

pub fn server_names(i: usize, vms: u32) -> Vec<String> {
    (0..vms)
        .map(|v| format!("esc-{}-g-{v}-g0", dep_name(i)))
        .collect()
}

/// Deployment `i` of tenant `svc`: one group `g` of `vms` VMs on `vnf-net`.
pub fn spec(i: usize, vms: u32) -> serde_json::Value {
    serde_json::json!({
        "name": dep_name(i), "tenant": "svc",
        "vm_groups": [{
            "name": "g", "image": "vnf-image", "flavor": "m1.tiny",
            "scaling": { "min_active": vms, "max_active": vms },
            "interfaces": [{ "nicid": 0, "network": "vnf-net" }],
            "config_data": [{ "file": "/etc/vnf/day0.conf", "data": format!("id={i}\n") }]
        }]
    })
}

/// The client's address on the VIM network (it reaches the VNFs there).
pub const CLIENT_VIM_NET_ADDR: &str = "203.0.113.250";

/// The pair with `[vim]` and `esc-vim` running on its host, its servers
/// light; the temp dir holds the VIM's password file (both nodes read it).
pub fn up(tag: &str, bins: &Bins, fault: Fault) -> anyhow::Result<(Cluster, tempfile::TempDir)> {
    up_with(tag, bins, fault, false)
}

/// [`up`], with every server a network namespace running `esc-vnf` on the
/// VIM network (203.0.113.0/24, on the lab's bridge) when `namespaces`.
pub fn up_with(
    tag: &str,
    bins: &Bins,
    fault: Fault,
    namespaces: bool,
) -> anyhow::Result<(Cluster, tempfile::TempDir)> {
    let secrets = tempfile::tempdir()?;
    let pw = secrets.path().join("vim.password");
    std::fs::write(&pw, VIM_PASSWORD)?;
    let pw2 = pw.clone();
    let mut c = Cluster::up_with(
        tag,
        bins.clone(),
        true,
        fault.needs_volume().then_some(160),
        move |cfg| {
            cfg.vim = Some(esc_config::VimConfig {
                auth_url: format!("http://{VIM_ADDR}:5000/identity/v3"),
                user: "admin".into(),
                password_file: pw2.clone(),
                project: "vnf".into(),
                user_domain: "Default".into(),
                project_domain: "Default".into(),
                region: None,
                call_timeout_ms: 2_000,
                calls_in_flight_max: 64,
                poll_ms: 100,
                // Past the lab's longest API stall (3 s).
                create_doubt_ms: 5_000,
                // Sweeps during every fault, so a server it must not
                // delete would show as a VM lost in the run's checks.
                sweep_interval_ms: 5_000,
            });
        },
    )?;
    c.lab.host("vim", &format!("{VIM_ADDR}/24"));
    let vim = bins.escd.with_file_name("esc-vim");
    anyhow::ensure!(
        vim.exists(),
        "{} not found: build first (cargo build --workspace --bins)",
        vim.display()
    );
    let log = std::fs::File::create(secrets.path().join("esc-vim.log"))?;
    let pw = pw.to_string_lossy().to_string();
    let mut extra: Vec<String> = Vec::new();
    if namespaces {
        let vnf = bins.escd.with_file_name("esc-vnf");
        anyhow::ensure!(
            vnf.exists(),
            "{} not found: build first (cargo build --workspace --bins)",
            vnf.display()
        );
        extra.extend([
            "--netns-switch".to_string(),
            c.lab.ns("sw"),
            "--netns-prefix".into(),
            format!("{}vm", c.lab.prefix),
            "--vnf".into(),
            vnf.to_string_lossy().into_owned(),
            "--state-dir".into(),
            secrets
                .path()
                .join("servers")
                .to_string_lossy()
                .into_owned(),
        ]);
        crate::ip(&[
            "-n",
            &c.lab.ns("client"),
            "addr",
            "add",
            &format!("{CLIENT_VIM_NET_ADDR}/24"),
            "dev",
            "eth0",
        ]);
    }
    let mut args: Vec<String> = [
        "--listen",
        &format!("{VIM_ADDR}:5000"),
        "--control-listen",
        &format!("{VIM_ADDR}:5001"),
        "--password-file",
        &pw,
        "--build-ms",
        "300",
        "--vcpus",
        "100000",
        "--ram-mb",
        "100000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.lab.spawn("vim", &vim.to_string_lossy(), &args, log);
    Ok((c, secrets))
}

/// Shared between the client thread and the driver.
#[derive(Default)]
struct Progress {
    deploys_accepted: AtomicUsize,
    changes_accepted: AtomicUsize,
}

struct ClientReport {
    ops: Vec<Op>,
    received: Vec<crate::notify::Received>,
    events: Vec<crate::notify::SseRecord>,
    outbox_ids: Vec<u64>,
    connections: usize,
    servers: Vec<String>,
    vnfs_not_answering: Vec<String>,
    history: Vec<serde_json::Value>,
    api_fault_counts: serde_json::Value,
    errors: Vec<String>,
}

/// Sends one write until it is answered with something other than 503 or
/// a lost connection (same key every time), at most [`PHASE`].
pub async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    callback: &str,
    body: Option<&serde_json::Value>,
) -> Result<Vec<(u16, serde_json::Value, String)>, String> {
    let end = Instant::now() + PHASE;
    let mut answers = Vec::new();
    while Instant::now() < end {
        let mut r = c
            .request(method.clone(), url)
            .basic_auth("admin", Some(PASSWORD))
            .header("Idempotency-Key", key);
        if !callback.is_empty() {
            r = r.header("callback", callback);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        if let Ok(r) = r.send().await {
            let status = r.status().as_u16();
            let tid = r
                .headers()
                .get("esc-transaction-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if status != 503 {
                answers.push((status, v, tid));
                return Ok(answers);
            }
        }
        // The client's resend pacing, not synchronisation.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{method} {url}: no answer within {PHASE:?}"))
}

/// Polls each operation through the VIP until it settles (or `PHASE`).
async fn settle(c: &reqwest::Client, ops: &mut [Op]) {
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        let mut open = 0;
        for op in ops
            .iter_mut()
            .filter(|o| o.state.is_empty() || o.state == "PROCESSING" || o.state == "STARTING")
        {
            let url = format!("http://{VIP}:8080/v0/operations/{}", op.op_id);
            let r = c.get(&url).basic_auth("admin", Some(PASSWORD)).send().await;
            if let Ok(r) = r {
                if r.status() == 200 {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    op.state = v["state"].as_str().unwrap_or("").to_string();
                    op.error = v["error"].as_str().unwrap_or("").to_string();
                }
            }
            if !matches!(
                op.state.as_str(),
                "COMPLETED" | "FAILED_TEMP" | "FAILED" | "ROLLED_BACK"
            ) {
                open += 1;
            }
        }
        if open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names of every server on the lab's VIM (from a lab namespace).
pub async fn vim_servers() -> Result<Vec<String>, String> {
    Ok(vim_server_list()
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// Every server on the lab's VIM: its name and its address on `vnf-net`.
pub async fn vim_server_list() -> Result<Vec<(String, Option<String>)>, String> {
    let client = esc_openstack::Client::new(esc_openstack::Connector {
        auth_url: format!("http://{VIM_ADDR}:5000/identity/v3"),
        user: "admin".into(),
        password: esc_openstack::Secret::new(VIM_PASSWORD),
        project: "vnf".into(),
        user_domain: "Default".into(),
        project_domain: "Default".into(),
        region: None,
        timeout: Duration::from_secs(10),
    })
    .map_err(|e| e.to_string())?;
    // The API faults are off by now; a retry covers a last stalled call.
    for _ in 0..5 {
        if let Ok(l) = client.servers(None).await {
            return Ok(l
                .into_iter()
                .map(|s| {
                    let addr = s
                        .addresses
                        .get("vnf-net")
                        .and_then(|a| a.first())
                        .map(|a| a.addr.clone());
                    (s.name, addr)
                })
                .collect());
        }
    }
    Err("cannot list the VIM's servers".into())
}

/// What a failed run prints: the cluster's state and the VIM's log tail
/// (`dir`: the run's secrets directory, where esc-vim logs).
pub(crate) fn dump(c: &Cluster, dir: &std::path::Path) {
    eprintln!("{}", c.dump());
    if let Ok(log) = std::fs::read_to_string(dir.join("esc-vim.log")) {
        eprintln!(
            "esc-vim log (last lines):\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
    }
}

/// The array `key` of a control-plane `GET path` (empty, and the error
/// noted in `errors`, if it cannot be read).
pub(crate) async fn control_list(
    c: &reqwest::Client,
    path: &str,
    key: &str,
    errors: &mut Vec<String>,
) -> Vec<serde_json::Value> {
    match control(c, reqwest::Method::GET, path, None).await {
        Ok(v) => v[key].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            errors.push(format!("{path}: {e}"));
            Vec::new()
        }
    }
}

/// A request to the lab VIM's control plane (from a lab namespace).
pub async fn control(
    c: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let mut r = c
        .request(method, format!("http://{VIM_ADDR}:5001{path}"))
        .basic_auth("admin", Some(VIM_PASSWORD));
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.map_err(|e| e.to_string())?;
    answered_200(r.status().as_u16(), path)?;
    r.json().await.map_err(|e| e.to_string())
}

fn answered_200(status: u16, what: &str) -> Result<(), String> {
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {status}"))
    }
}

/// The client's whole script, in the client namespace.
fn client_script(opts: Options, progress: Arc<Progress>) -> ClientReport {
    let mut errors = Vec::new();
    let sink = match CallbackSink::bind(&format!("{CLIENT_ADDR}:0"), 0) {
        Ok(s) => s,
        Err(e) => {
            return ClientReport {
                ops: Vec::new(),
                received: Vec::new(),
                events: Vec::new(),
                outbox_ids: Vec::new(),
                connections: 0,
                servers: Vec::new(),
                vnfs_not_answering: Vec::new(),
                history: Vec::new(),
                api_fault_counts: serde_json::Value::Null,
                errors: vec![format!("callback receiver: {e}")],
            }
        }
    };
    let vip_api: std::net::SocketAddr = format!("{VIP}:8080").parse().expect("address");
    let reader = EventReader::start(vip_api, "admin", PASSWORD, 0, Duration::from_secs(3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (ops, servers, vnfs_not_answering, history, api_fault_counts) = rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(ATTEMPT)
            .connect_timeout(ATTEMPT)
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        if let Some(f) = &opts.api_faults {
            if let Err(e) = control(&c, reqwest::Method::PUT, "/control/v1/faults", Some(f)).await {
                errors.push(format!("setting the API faults: {e}"));
            }
        }
        let tenant = serde_json::json!({"name": "svc"});
        match send(
            &c,
            reqwest::Method::POST,
            &format!("http://{VIP}:8080/v0/tenants"),
            "svc-tenant",
            "",
            Some(&tenant),
        )
        .await
        {
            Ok(a) if matches!(a.last().map(|x| x.0), Some(201 | 409)) => {}
            other => errors.push(format!("tenant: {other:?}")),
        }
        // Deploys, 8 at a time.
        let ops: Arc<Mutex<Vec<Op>>> = Default::default();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, ops, next, progress, cb, opts) = (
                c.clone(),
                ops.clone(),
                next.clone(),
                progress.clone(),
                sink.url("/cb"),
                opts.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut errs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= opts.deployments {
                        return errs;
                    }
                    let body = spec(i, opts.vms_per_deployment);
                    let url = format!("http://{VIP}:8080/v0/deployments");
                    match send(
                        &c,
                        reqwest::Method::POST,
                        &url,
                        &format!("dep-{i}"),
                        &format!("{cb}/deploy/{i}"),
                        Some(&body),
                    )
                    .await
                    {
                        Ok(a) => {
                            let (status, v, tid) = a.last().cloned().unwrap_or_default();
                            if status != 202 {
                                errs.push(format!("deploy {i}: HTTP {status} {v}"));
                                continue;
                            }
                            progress.deploys_accepted.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut o) = ops.lock() {
                                o.push(Op::accepted(dep_name(i), "deploy", &v, tid));
                            }
                        }
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
        let mut ops = ops.lock().map(|o| o.clone()).unwrap_or_default();
        settle(&c, &mut ops).await;
        // A resend of every deploy, with its key: the same operation.
        for op in ops.iter_mut() {
            let i: usize = op.deployment[4..].parse().unwrap_or(0);
            let body = spec(i, opts.vms_per_deployment);
            if let Ok(a) = send(
                &c,
                reqwest::Method::POST,
                &format!("http://{VIP}:8080/v0/deployments"),
                &format!("dep-{i}"),
                &sink.url(&format!("/cb/deploy/{i}")),
                Some(&body),
            )
            .await
            {
                op.resends_agree = a
                    .last()
                    .is_some_and(|x| x.1["operation"] == op.op_id.as_str());
            }
        }
        // Updates (one VM more) and reboots (of the first VM), after the
        // deployments to be undeployed.
        let mut changes = Vec::new();
        for (n, i) in (opts.undeploy..opts.deployments)
            .take(opts.updates + opts.reboots)
            .enumerate()
        {
            let (kind, method, url, body) = if n < opts.updates {
                let url = format!("http://{VIP}:8080/v0/deployments/{}", dep_name(i));
                let body = spec(i, opts.vms_per_deployment + 1);
                ("update", reqwest::Method::PUT, url, body)
            } else {
                let vm = &server_names(i, 1)[0];
                let url = format!("http://{VIP}:8080/v0/deployments/{}/vms/{vm}", dep_name(i));
                let body = serde_json::json!({"action": "REBOOT"});
                ("reboot", reqwest::Method::POST, url, body)
            };
            let cb = sink.url(&format!("/cb/{kind}/{i}"));
            match send(&c, method, &url, &format!("{kind}-{i}"), &cb, Some(&body)).await {
                Ok(a) => {
                    let (status, v, tid) = a.last().cloned().unwrap_or_default();
                    if status != 202 {
                        errors.push(format!("{kind} {i}: HTTP {status} {v}"));
                        continue;
                    }
                    progress.changes_accepted.fetch_add(1, Ordering::Relaxed);
                    changes.push(Op::accepted(dep_name(i), kind, &v, tid));
                }
                Err(e) => errors.push(e),
            }
        }
        settle(&c, &mut changes).await;
        ops.extend(changes);
        // Undeploys of the first ones.
        let mut undeploys = Vec::new();
        for i in 0..opts.undeploy.min(opts.deployments) {
            let url = format!("http://{VIP}:8080/v0/deployments/{}", dep_name(i));
            match send(
                &c,
                reqwest::Method::DELETE,
                &url,
                &format!("undep-{i}"),
                &sink.url(&format!("/cb/undeploy/{i}")),
                None,
            )
            .await
            {
                Ok(a) => {
                    let (status, v, tid) = a.last().cloned().unwrap_or_default();
                    if status != 202 {
                        errors.push(format!("undeploy {i}: HTTP {status} {v}"));
                        continue;
                    }
                    undeploys.push(Op::accepted(dep_name(i), "undeploy", &v, tid));
                }
                Err(e) => errors.push(e),
            }
        }
        settle(&c, &mut undeploys).await;
        ops.extend(undeploys);
        if opts.api_faults.is_some() {
            if let Err(e) = control(
                &c,
                reqwest::Method::PUT,
                "/control/v1/faults",
                Some(&serde_json::json!({})),
            )
            .await
            {
                errors.push(format!("clearing the API faults: {e}"));
            }
        }
        // What the VIM should hold, once a create that landed late (a
        // stall past `create_doubt_ms`) is swept: waited for, bounded by
        // two sweeps past the hold and the longest stall.
        let expected = expected_servers(&opts);
        let converged = Instant::now() + CONVERGE;
        let listed = loop {
            let l = vim_server_list().await;
            let matches = l.as_ref().is_ok_and(|l| {
                let mut names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
                names.sort_unstable();
                names
                    .iter()
                    .copied()
                    .eq(expected.iter().map(String::as_str))
            });
            if matches || Instant::now() >= converged {
                break l.unwrap_or_else(|e| {
                    errors.push(e);
                    Vec::new()
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        // Each namespace server's VNF answers on its address, with the
        // day-0 file its deployment gave it.
        let mut not_answering = Vec::new();
        if opts.namespace_servers {
            for (name, addr) in &listed {
                let ok = match addr {
                    Some(a) => match c.get(format!("http://{a}:8080/health")).send().await {
                        Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| {
                            v["status"] == "ok"
                                && v["name"] == name.as_str()
                                && v["day0"]["/etc/vnf/day0.conf"]
                                    .as_u64()
                                    .is_some_and(|n| n > 0)
                        }),
                        Err(_) => false,
                    },
                    None => false,
                };
                if !ok {
                    not_answering.push(name.clone());
                }
            }
        }
        let servers: Vec<String> = listed.into_iter().map(|(n, _)| n).collect();
        let history = control(&c, reqwest::Method::GET, "/control/v1/history", None)
            .await
            .map(|v| v["history"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        let counts = control(&c, reqwest::Method::GET, "/control/v1/state", None)
            .await
            .map(|v| v["counts"].clone())
            .unwrap_or_default();
        (ops, servers, not_answering, history, counts)
    });
    // Every callback, then the stream caught up with the outbox.
    let tids: BTreeSet<String> = ops.iter().map(|o| o.tid.clone()).collect();
    let have_all = |r: &[crate::notify::Received]| {
        let got: BTreeSet<&str> = r
            .iter()
            .filter_map(|x| x.headers.get("esc_transaction_id").map(String::as_str))
            .collect();
        tids.iter().all(|t| got.contains(t.as_str()))
    };
    crate::cluster::wait_for(PHASE, || have_all(&sink.received()));
    let fresh = EventReader::start(vip_api, "admin", PASSWORD, 0, Duration::from_secs(3));
    let last = |e: &[crate::notify::SseRecord]| e.last().map(|r| r.id);
    crate::cluster::wait_for(Duration::from_secs(30), || {
        let f = fresh.events();
        !f.is_empty() && last(&f) == last(&reader.events())
    });
    let outbox_ids = fresh.finish().iter().map(|e| e.id).collect();
    let connections = reader.connections();
    let events = reader.finish();
    ClientReport {
        ops,
        received: sink.received(),
        events,
        outbox_ids,
        connections,
        servers,
        vnfs_not_answering,
        history,
        api_fault_counts,
        errors,
    }
}

/// Runs the service scenario for `fault` on a fresh cluster.
pub fn run(tag: &str, bins: &Bins, fault: Fault, opts: &Options) -> anyhow::Result<Report> {
    let (mut c, _secrets) = up_with(tag, bins, fault, opts.namespace_servers)?;
    let r = run_on(&mut c, fault, opts);
    if r.as_ref().map_or(true, |o| !o.pass) {
        crate::service::dump(&c, _secrets.path());
    }
    r
}

fn run_on(c: &mut Cluster, fault: Fault, opts: &Options) -> anyhow::Result<Report> {
    let p = c.wait_ready()?;
    let s = 1 - p;
    say(opts, &format!("pair ready: esc-{} primary", p + 1));
    let progress = Arc::new(Progress::default());
    let (o, pr) = (opts.clone(), progress.clone());
    let client = c.lab.in_ns("client", move || client_script(o, pr));
    let accepted = if opts.fault_in_changes {
        &progress.changes_accepted
    } else {
        &progress.deploys_accepted
    };
    anyhow::ensure!(
        wait_for(PHASE, || accepted.load(Ordering::Relaxed)
            >= opts.fault_after),
        "the client's operations do not progress"
    );
    say(
        opts,
        &format!("injecting {} on esc-{}", fault.name(), p + 1),
    );
    let t0 = Instant::now();
    c.inject(fault, p)?;
    let took_over = wait_for(READY, || {
        c.role(s) == "PRIMARY" && c.vip_holders().contains(&s)
    });
    let takeover_ms = t0.elapsed().as_millis() as u64;
    anyhow::ensure!(
        took_over,
        "esc-{} did not take over after {}",
        s + 1,
        fault.name()
    );
    say(
        opts,
        &format!("esc-{} took over after {takeover_ms} ms", s + 1),
    );
    c.heal(fault, p)?;
    c.wait_ready()?;
    let r = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    let mut report = check(fault, opts, r, takeover_ms);
    report.swept = (0..2)
        .filter_map(|i| c.status(i))
        .filter_map(|s| s.sweep)
        .map(|w| w.removed)
        .sum();
    Ok(report)
}

/// How long the client waits, after its last operation, for the VIM to
/// hold exactly the servers it should: the lab's sweep runs every 5 s and
/// deletes a stray seen 5 s apart; a stalled create lands within 10 s.
const CONVERGE: Duration = Duration::from_secs(60);

/// The servers the VIM holds at the end of a run: those of the
/// deployments not undeployed, one VM more for each updated.
fn expected_servers(opts: &Options) -> BTreeSet<String> {
    let first = opts.undeploy.min(opts.deployments);
    let updated = first..first + opts.updates;
    (first..opts.deployments)
        .flat_map(|i| {
            let grown = u32::from(updated.contains(&i));
            server_names(i, opts.vms_per_deployment + grown)
        })
        .collect()
}

fn check(fault: Fault, opts: &Options, r: ClientReport, takeover_ms: u64) -> Report {
    let first = opts.undeploy.min(opts.deployments);
    let rebooted = first + opts.updates..first + opts.updates + opts.reboots;
    let expected = expected_servers(opts);
    let reboots_not_once: Vec<String> = rebooted
        .filter(|&i| i < opts.deployments)
        .map(|i| server_names(i, 1).remove(0))
        .filter_map(|name| {
            let n = r
                .history
                .iter()
                .filter(|h| h["name"] == name.as_str() && h["what"] == "reboot")
                .count();
            (n != 1).then(|| format!("{name}: {n}"))
        })
        .collect();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &r.servers {
        *seen.entry(s.as_str()).or_default() += 1;
    }
    let duplicates: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| s.to_string())
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|s| !seen.contains_key(s.as_str()))
        .cloned()
        .collect();
    let leaked: Vec<String> = seen
        .keys()
        .filter(|s| !expected.contains(**s))
        .map(|s| s.to_string())
        .collect();
    let got_tids: BTreeSet<&str> = r
        .received
        .iter()
        .filter(|x| x.headers.get("esc-status-code").is_some_and(|c| c == "200"))
        .filter_map(|x| x.headers.get("esc_transaction_id").map(String::as_str))
        .collect();
    let callbacks_missing: Vec<String> = r
        .ops
        .iter()
        .filter(|o| !got_tids.contains(o.tid.as_str()))
        .map(|o| format!("{} {} ({})", o.kind, o.deployment, o.tid))
        .collect();
    let event_faults = stream_faults(&r.events);
    let read_ids: Vec<u64> = r.events.iter().filter(|e| e.id > 0).map(|e| e.id).collect();
    let stream_is_outbox = !read_ids.is_empty() && read_ids == r.outbox_ids;
    let completed = r.ops.iter().filter(|o| o.state == "COMPLETED").count();
    let disagreeing = r.ops.iter().filter(|o| !o.resends_agree).count();
    let changes = (opts.updates + opts.reboots).min(opts.deployments - first);
    let want_ops = opts.deployments + first + changes;
    let creates = r.history.iter().filter(|h| h["what"] == "create").count();
    let pass = r.errors.is_empty()
        && r.ops.len() == want_ops
        && completed == want_ops
        && disagreeing == 0
        && duplicates.is_empty()
        && missing.is_empty()
        && leaked.is_empty()
        && reboots_not_once.is_empty()
        && callbacks_missing.is_empty()
        && r.vnfs_not_answering.is_empty()
        && event_faults.is_empty()
        && stream_is_outbox;
    Report {
        fault: fault.name().to_string(),
        operations: r.ops.len(),
        completed,
        unfinished: r
            .ops
            .iter()
            .filter(|o| o.state != "COMPLETED")
            .map(|o| format!("{} {} {}: {}", o.kind, o.deployment, o.state, o.error))
            .collect(),
        disagreeing_resends: disagreeing,
        servers_expected: expected.len(),
        servers_on_vim: r.servers.len(),
        duplicates,
        missing,
        leaked,
        creates,
        swept: 0,
        reboots_not_once,
        callbacks_missing,
        vnfs_not_answering: r.vnfs_not_answering,
        events_read: r.events.len(),
        event_faults,
        stream_is_outbox,
        stream_connections: r.connections,
        api_fault_counts: r.api_fault_counts,
        takeover_ms,
        errors: r.errors,
        pass,
    }
}
