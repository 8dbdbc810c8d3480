//! Healing under failure (issue 12, "Done when" 1): the lab's pair with
//! the lab's VIM and its namespace servers; four deployments of one VM,
//! each watched by an HTTP `VM_ALIVE` KPI on its VNF's `/health` (and an
//! ICMP KPI that only logs). Through the VIM's control plane the client
//! kills one VM's VNF, hangs another's (SIGSTOP) and cuts the third's
//! link; the fourth stays healthy. In a run with `power_failure`, the
//! primary loses power right after. The checker verifies:
//!
//! - each failed VM's recovery started within `poll_frequency x
//!   metric_occurrences_false` plus one poll of its fault (plus the
//!   takeover, when the primary lost power);
//! - it was recovered by its group's policy, exactly once: the VIM's
//!   history shows one hard reboot (`REBOOT_THEN_REDEPLOY`: the killed and
//!   the hung VNF come back on reboot) or one redeploy (`REDEPLOY_ONLY`:
//!   the cut one), and nothing more while the client keeps watching;
//! - its notifications came in order (`VM_RECOVERY_INIT`, then
//!   `VM_RECOVERY_REBOOT` or `VM_RECOVERY_UNDEPLOYED` and
//!   `VM_RECOVERY_DEPLOYED`, then `VM_RECOVERY_COMPLETE`);
//! - the healthy VM was never touched, and every write to the VIM after
//!   the faults came from the node that led then (the new primary after a
//!   power failure).
//!
//! ```text
//!   client ns: deployer + faults (VIM control plane) + EventReader via the VIP
//!   vim ns:    esc-vim, its servers as namespaces on 203.0.113.0/24
//!   esc1/esc2: the pair, each also on 203.0.113.0/24 (the monitor probes there)
//! ```

use crate::cluster::{wait_for, Bins, Cluster, Fault, NODE_ADDRS, PASSWORD, READY, VIP};
use crate::notify::EventReader;
use crate::service::{control, control_list, send};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each wait of the client (deployed, recovered) ends by then.
const PHASE: Duration = Duration::from_secs(120);

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The primary loses power right after the VMs fail.
    pub power_failure: bool,
    /// The KPIs' `poll_frequency` (seconds) and `metric_occurrences_false`.
    pub poll_s: u32,
    pub occurrences_false: u32,
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            power_failure: false,
            poll_s: 2,
            occurrences_false: 2,
            verbose: false,
        }
    }
}

/// The faults played, one per deployment, and the healthy one (`none`).
pub const FAULTS: [&str; 4] = ["kill", "hang", "cut", "none"];

fn dep_name(fault: &str) -> String {
    format!("heal-{fault}")
}

/// The recovery policy of each deployment's group.
fn policy(fault: &str) -> &'static str {
    if fault == "cut" {
        "REDEPLOY_ONLY"
    } else {
        "REBOOT_THEN_REDEPLOY"
    }
}

/// The server name of a deployment's VM in generation `gen`.
fn server_name(fault: &str, gen: u32) -> String {
    format!("esc-{}-g-0-g{gen}", dep_name(fault))
}

/// The notifications a VM's recovery must send, in order.
fn expected_events(fault: &str) -> &'static [&'static str] {
    match fault {
        "kill" | "hang" => &[
            "VM_RECOVERY_INIT",
            "VM_RECOVERY_REBOOT",
            "VM_RECOVERY_COMPLETE",
        ],
        "cut" => &[
            "VM_RECOVERY_INIT",
            "VM_RECOVERY_UNDEPLOYED",
            "VM_RECOVERY_DEPLOYED",
            "VM_RECOVERY_COMPLETE",
        ],
        _ => &[],
    }
}

/// A deployment of one VM watched by its VNF's health endpoint.
pub fn spec(fault: &str, opts: &Options) -> serde_json::Value {
    serde_json::json!({
        "name": dep_name(fault), "tenant": "svc",
        "vm_groups": [{
            "name": "g", "image": "vnf-image", "flavor": "m1.tiny",
            "scaling": { "min_active": 1, "max_active": 1 },
            "interfaces": [{ "nicid": 0, "network": "vnf-net" }],
            "bootup_time": 60,
            "recovery_policy": { "action": policy(fault), "max_retries": 2 },
            "kpis": [
                { "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
                  "metric_occurrences_true": 1, "metric_occurrences_false": opts.occurrences_false,
                  "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": opts.poll_s,
                                        "polling_unit": "seconds", "port": 8080, "path": "/health" } },
                { "event_name": "VM_PING", "metric_value": 1, "metric_cond": "GE",
                  "metric_occurrences_true": 1, "metric_occurrences_false": opts.occurrences_false,
                  "metric_collector": { "type": "ICMPPing", "nicid": 0, "poll_frequency": opts.poll_s,
                                        "polling_unit": "seconds" } }
            ],
            "rules": [
                { "event_name": "VM_ALIVE",
                  "actions": ["FALSE recover autohealing", "TRUE esc_vm_alive_notification"] },
                { "event_name": "VM_PING", "actions": ["FALSE log", "TRUE log"] }
            ]
        }]
    })
}

/// One VM as the checker found it.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub fault: String,
    pub deployment: String,
    /// From the fault to its recovery's start (the recovery event's time).
    pub detected_ms: Option<u64>,
    /// What `detected_ms` must not exceed.
    pub bound_ms: u64,
    /// Its recovery notifications, in the order read.
    pub events: Vec<String>,
    /// The VIM's history of its servers: hard reboots, deletes of the
    /// first server, creates of a later generation.
    pub reboots: usize,
    pub deletes: usize,
    pub redeploys: usize,
    /// As the deployment shows it at the end.
    pub recoveries: u64,
    pub state: String,
    pub generation: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub power_failure: bool,
    pub takeover_ms: Option<u64>,
    pub vms: Vec<VmReport>,
    /// Writes to the VIM after the faults, by caller address.
    pub vim_writers: BTreeMap<String, usize>,
    /// The address every one of them must come from.
    pub leader_addr: String,
    pub errors: Vec<String>,
    pub pass: bool,
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Shared between the client thread and the driver.
#[derive(Default)]
struct Progress {
    /// Wall-clock ms when the last fault was played (0: not yet).
    faults_played_ms: AtomicU64,
    /// The driver is done with the primary (faulted and healed, or none).
    driver_done: AtomicBool,
}

struct ClientReport {
    /// Per fault: when it was played (wall clock, ms).
    played_ms: BTreeMap<String, u64>,
    /// Per deployment, at the end: (recoveries, state, generation).
    finals: BTreeMap<String, (u64, String, u64)>,
    events: Vec<crate::notify::SseRecord>,
    history: Vec<serde_json::Value>,
    calls: Vec<serde_json::Value>,
    errors: Vec<String>,
}

/// What a lab client of issue 12's runs uses: the event stream read
/// through the VIP, a runtime of its own, an HTTP client with 2 s attempts
/// and no idle connections (each attempt finds the VIP's holder anew).
pub(crate) fn vip_client() -> (EventReader, tokio::runtime::Runtime, reqwest::Client) {
    let vip_api: std::net::SocketAddr = format!("{VIP}:8080").parse().expect("address");
    let reader = EventReader::start(vip_api, "admin", PASSWORD, 0, Duration::from_secs(3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    (reader, rt, c)
}

/// `GET url` through the VIP with the lab's credentials: its JSON on 200.
pub(crate) async fn get_json(c: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = c
        .get(url)
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// Waits (through the VIP, across a takeover) until `cond` holds for the
/// deployment's JSON, at most [`PHASE`].
pub(crate) async fn wait_deployment(
    c: &reqwest::Client,
    dep: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let url = format!("http://{VIP}:8080/v0/deployments/{dep}");
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        if let Some(d) = get_json(c, &url).await {
            if cond(&d) {
                return Some(d);
            }
        }
        // The client's polling pace, not synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub(crate) fn vm0(d: &serde_json::Value) -> &serde_json::Value {
    &d["vms"][0]
}

pub(crate) fn alive_and_idle(d: &serde_json::Value) -> bool {
    d["current_op"].is_null() && vm0(d)["state"] == "VM_ALIVE_STATE"
}

fn client_script(opts: Options, progress: Arc<Progress>) -> ClientReport {
    let mut errors = Vec::new();
    let (reader, rt, c) = vip_client();
    let mut played_ms = BTreeMap::new();
    let mut finals = BTreeMap::new();
    let (history, calls) = rt.block_on(async {
        let base = format!("http://{VIP}:8080");
        if let Err(e) = send(
            &c,
            reqwest::Method::POST,
            &format!("{base}/v0/tenants"),
            "heal-tenant",
            "",
            Some(&serde_json::json!({"name": "svc"})),
        )
        .await
        {
            errors.push(format!("tenant: {e}"));
        }
        for f in FAULTS {
            match send(
                &c,
                reqwest::Method::POST,
                &format!("{base}/v0/deployments"),
                &format!("heal-{f}"),
                "",
                Some(&spec(f, &opts)),
            )
            .await
            {
                Ok(a) if a.last().is_some_and(|x| x.0 == 202) => {}
                other => errors.push(format!("deploy {f}: {other:?}")),
            }
        }
        // Deployed and alive (their bootup check answered), with their
        // server ids.
        let mut ids = BTreeMap::new();
        for f in FAULTS {
            match wait_deployment(&c, &dep_name(f), |d| {
                alive_and_idle(d) && d["state"] == "SERVICE_ACTIVE_STATE"
            })
            .await
            {
                Some(d) => {
                    ids.insert(f, vm0(&d)["server_id"].as_str().unwrap_or("").to_string());
                }
                None => errors.push(format!("{}: never active", dep_name(f))),
            }
        }
        if !errors.is_empty() {
            progress
                .faults_played_ms
                .store(unix_ms(), Ordering::Relaxed);
            return (Vec::new(), Vec::new());
        }
        // Every VM watched a while (its counters warm) before the faults.
        tokio::time::sleep(Duration::from_secs(u64::from(opts.poll_s) * 2)).await;
        for f in FAULTS.into_iter().filter(|f| *f != "none") {
            let t = unix_ms();
            let path = format!("/control/v1/servers/{}/{f}", ids[f]);
            if let Err(e) = control(&c, reqwest::Method::POST, &path, None).await {
                errors.push(format!("{f}: {e}"));
            }
            played_ms.insert(f.to_string(), t);
        }
        progress
            .faults_played_ms
            .store(unix_ms(), Ordering::Relaxed);
        // Recovered, each once.
        for f in FAULTS.into_iter().filter(|f| *f != "none") {
            let got = wait_deployment(&c, &dep_name(f), |d| {
                alive_and_idle(d) && vm0(d)["recoveries"].as_u64().unwrap_or(0) >= 1
            })
            .await;
            if got.is_none() {
                errors.push(format!("{}: not recovered within {PHASE:?}", dep_name(f)));
            }
        }
        // The driver is done with the primary; then nothing more happens to
        // any VM for two detection periods (no second recovery, no false
        // one): a window observed, not a wait for a condition.
        let end = Instant::now() + PHASE;
        while !progress.driver_done.load(Ordering::Relaxed) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let window = u64::from(opts.poll_s * (opts.occurrences_false + 1)) * 2;
        tokio::time::sleep(Duration::from_secs(window)).await;
        for f in FAULTS {
            let url = format!("{base}/v0/deployments/{}", dep_name(f));
            match get_json(&c, &url).await {
                Some(d) => {
                    let v = vm0(&d);
                    finals.insert(
                        f.to_string(),
                        (
                            v["recoveries"].as_u64().unwrap_or(0),
                            v["state"].as_str().unwrap_or("").to_string(),
                            v["key"]["generation"].as_u64().unwrap_or(0),
                        ),
                    );
                }
                None => errors.push(format!("{}: cannot be read at the end", dep_name(f))),
            }
        }
        let history = control_list(&c, "/control/v1/history", "history", &mut errors).await;
        let since = played_ms.values().min().copied().unwrap_or(0);
        let path = format!("/control/v1/calls?since_ms={since}&limit=100000");
        let calls = control_list(&c, &path, "calls", &mut errors).await;
        (history, calls)
    });
    ClientReport {
        played_ms,
        finals,
        events: reader.finish(),
        history,
        calls,
        errors,
    }
}

/// Runs the healing scenario on a fresh cluster.
pub fn run(tag: &str, bins: &Bins, opts: &Options) -> anyhow::Result<Report> {
    let (mut c, secrets) = crate::service::up_with(tag, bins, Fault::PowerFailure, true)?;
    let r = run_on(&mut c, opts);
    if r.as_ref().map_or(true, |o| !o.pass) {
        crate::service::dump(&c, secrets.path());
    }
    r
}

/// Puts the nodes on the VIM network (203.0.113.251 and .252): the
/// monitor probes the VNFs there.
pub(crate) fn join_vim_network(c: &Cluster) {
    for (i, n) in c.nodes.iter().enumerate() {
        crate::ip(&[
            "-n",
            &c.lab.ns(&n.ns_host),
            "addr",
            "add",
            &format!("203.0.113.{}/24", 251 + i),
            "dev",
            "eth0",
        ]);
    }
}

fn run_on(c: &mut Cluster, opts: &Options) -> anyhow::Result<Report> {
    join_vim_network(c);
    let p = c.wait_ready()?;
    let say = |m: &str| {
        if opts.verbose {
            eprintln!("  {m}");
        }
    };
    say(&format!("pair ready: esc-{} primary", p + 1));
    let progress = Arc::new(Progress::default());
    let (o, pr) = (opts.clone(), progress.clone());
    let client = c.lab.in_ns("client", move || client_script(o, pr));
    anyhow::ensure!(
        wait_for(PHASE * 2, || progress
            .faults_played_ms
            .load(Ordering::Relaxed)
            > 0),
        "the client never played its faults"
    );
    let mut leader = p;
    let mut takeover_ms = None;
    if opts.power_failure {
        let s = 1 - p;
        say(&format!("VMs failed; power failure of esc-{}", p + 1));
        let t0 = Instant::now();
        c.inject(Fault::PowerFailure, p)?;
        let took_over = wait_for(READY, || {
            c.role(s) == "PRIMARY" && c.vip_holders().contains(&s)
        });
        anyhow::ensure!(took_over, "esc-{} did not take over", s + 1);
        takeover_ms = Some(t0.elapsed().as_millis() as u64);
        say(&format!("esc-{} took over after {takeover_ms:?} ms", s + 1));
        c.heal(Fault::PowerFailure, p)?;
        c.wait_ready()?;
        leader = s;
    }
    progress.driver_done.store(true, Ordering::Relaxed);
    let r = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    Ok(check(opts, r, takeover_ms, leader))
}

fn check(opts: &Options, r: ClientReport, takeover_ms: Option<u64>, leader: usize) -> Report {
    let poll_ms = u64::from(opts.poll_s) * 1_000;
    let bound_ms = poll_ms * u64::from(opts.occurrences_false) + poll_ms + takeover_ms.unwrap_or(0);
    let mut vms = Vec::new();
    for f in FAULTS {
        let dep = dep_name(f);
        let mine: Vec<&crate::notify::SseRecord> = r
            .events
            .iter()
            .filter(|e| e.event.starts_with("VM_RECOVERY") && e.data["kind"]["depname"] == *dep)
            .collect();
        let events: Vec<String> = mine.iter().map(|e| e.event.clone()).collect();
        let detected_ms = match (mine.first(), r.played_ms.get(f)) {
            (Some(e), Some(t)) => e.data["at_ms"].as_u64().map(|a| a.saturating_sub(*t)),
            _ => None,
        };
        let first = server_name(f, 0);
        let hist = |what: &str, name: &dyn Fn(&str) -> bool| {
            r.history
                .iter()
                .filter(|h| h["what"] == what && h["name"].as_str().is_some_and(name))
                .count()
        };
        let reboots = hist("hard-reboot", &|n| n == first) + hist("reboot", &|n| n == first);
        let deletes = hist("delete", &|n| n == first);
        let later = format!("esc-{dep}-g-0-g");
        let redeploys = hist("create", &|n| n.starts_with(&later) && n != first);
        let (recoveries, state, generation) = r.finals.get(f).cloned().unwrap_or_default();
        let mut problems = Vec::new();
        if events != expected_events(f) {
            problems.push(format!(
                "notifications {events:?}, expected {:?}",
                expected_events(f)
            ));
        }
        let (want_reboots, want_redeploys) = match f {
            "kill" | "hang" => (1, 0),
            "cut" => (0, 1),
            _ => (0, 0),
        };
        if (reboots, redeploys, deletes) != (want_reboots, want_redeploys, want_redeploys) {
            problems.push(format!(
                "the VIM saw {reboots} reboot(s), {deletes} delete(s) and {redeploys} redeploy(s); expected {want_reboots}, {want_redeploys}, {want_redeploys}"
            ));
        }
        let want_recoveries = u64::from(f != "none");
        if recoveries != want_recoveries || state != "VM_ALIVE_STATE" {
            problems.push(format!(
                "ends with {recoveries} recoveries, {state}; expected {want_recoveries}, VM_ALIVE_STATE"
            ));
        }
        if generation != want_redeploys as u64 {
            problems.push(format!(
                "ends in generation {generation}, expected {want_redeploys}"
            ));
        }
        if f != "none" && detected_ms.is_none_or(|d| d > bound_ms) {
            problems.push(format!(
                "detected after {detected_ms:?} ms, more than {bound_ms} ms"
            ));
        }
        vms.push(VmReport {
            fault: f.to_string(),
            deployment: dep,
            detected_ms,
            bound_ms: if f == "none" { 0 } else { bound_ms },
            events,
            reboots,
            deletes,
            redeploys,
            recoveries,
            state,
            generation,
            problems,
        });
    }
    let mut vim_writers: BTreeMap<String, usize> = BTreeMap::new();
    for call in &r.calls {
        // Changes to servers (a token request is not one: the standby's
        // health check may ask for one).
        let path = call["path"].as_str().unwrap_or("");
        if call["method"] != "GET" && path.contains("/servers") {
            let from = call["from"].as_str().unwrap_or("?").to_string();
            *vim_writers.entry(from).or_default() += 1;
        }
    }
    let leader_addr = NODE_ADDRS[leader].to_string();
    let writers_ok = vim_writers.keys().all(|a| *a == leader_addr) && !vim_writers.is_empty();
    let pass = r.errors.is_empty() && writers_ok && vms.iter().all(|v| v.problems.is_empty());
    Report {
        power_failure: opts.power_failure,
        takeover_ms,
        vms,
        vim_writers,
        leader_addr,
        errors: r.errors,
        pass,
    }
}
