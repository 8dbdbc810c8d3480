//! The monitor at scale (issue 12, "Done when" 2): `vms` light servers on
//! `esc-vim`'s `scale-net` (addresses in 127.64.0.0/16), deployed as
//! deployments of ten VMs whose group has one HTTP `VM_ALIVE` KPI (port
//! 18080, `/health`, every `poll_s` seconds, down after two misses, the
//! bootup check too). A responder in each node's namespace answers every
//! such address on loopback (one listener on 0.0.0.0:18080: 127.0.0.0/8
//! is local there) and records when each VM was probed. Measured:
//!
//! - steady state on the primary: probes per second, probe lateness (the
//!   arrival at the responder minus the VM's slot, which both sides derive
//!   from its name: `esc_monitor::slot_offset`), p50, p99 and max, and the
//!   CPU the primary's `escd` used (cores, from `/proc/<pid>/stat`);
//! - then the primary's power is cut, one VM "killed" at the same moment
//!   (the responders answer it 503 until the VIM reboots it): the time
//!   from the new primary's promotion to its first probe, the longest gap
//!   any other VM saw between two probes across the takeover, VMs not
//!   probed again, and the killed VM's detection and healing (its recovery
//!   operation's start and settle, from the fault).
//!
//! `esc-lab bench-monitor` runs it and writes the table and the JSON.

use crate::cluster::{wait_for, Bins, Fault, VIP};
use crate::service::{control, send};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The KPI's port and VMs per deployment.
pub const PORT: u16 = 18080;
const VMS_PER_DEPLOYMENT: usize = 10;
/// Every phase ends by then.
const PHASE: Duration = Duration::from_secs(900);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub vms: usize,
    pub poll_s: u64,
    pub probes_per_s: f64,
    pub lateness_p50_ms: u64,
    pub lateness_p99_ms: u64,
    pub lateness_max_ms: u64,
    /// The primary's escd, over the steady window (1.0 = one core).
    pub escd_cpu_cores: f64,
    pub takeover_ms: u64,
    pub takeover_to_first_probe_ms: Option<u64>,
    pub longest_gap_ms: Option<u64>,
    /// VMs (the killed one aside) the new primary did not probe.
    pub vms_not_probed_again: usize,
    pub killed_detected_ms: Option<u64>,
    pub killed_healed_ms: Option<u64>,
    pub errors: Vec<String>,
    pub pass: bool,
}

/// What a responder saw: each address's probe arrivals (wall clock, ms).
#[derive(Default)]
struct Seen {
    by_addr: HashMap<IpAddr, Vec<u64>>,
    dead: HashSet<IpAddr>,
}

/// The local address a probe reached (the VM's).
#[derive(Clone)]
struct Local(SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Local
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Local {
        Local(
            s.io()
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        )
    }
}

/// The light servers' VNFs, seen from one node's namespace.
struct Responder {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(lab: &crate::Lab, host: &str) -> Responder {
        let seen: Arc<Mutex<Seen>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sn, st) = (seen.clone(), stop.clone());
        let thread = lab.in_ns(host, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // A deep accept queue: a new primary's first probes come
                // in a burst, and a SYN dropped on a full queue is resent
                // a second later (the figure would be the responder's).
                let bound = tokio::net::TcpSocket::new_v4().and_then(|s| {
                    s.set_reuseaddr(true)?;
                    s.bind(SocketAddr::from(([0, 0, 0, 0], PORT)))?;
                    s.listen(16_384)
                });
                let l = match bound {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("responder: cannot listen on :{PORT}: {e}");
                        return;
                    }
                };
                let app = axum::Router::new()
                    .route(
                        "/health",
                        axum::routing::get(
                            |axum::extract::State(seen): axum::extract::State<Arc<Mutex<Seen>>>,
                             axum::extract::ConnectInfo(Local(a)): axum::extract::ConnectInfo<
                                Local,
                            >| async move {
                                let mut s = seen.lock().expect("seen");
                                s.by_addr.entry(a.ip()).or_default().push(wall_ms());
                                if s.dead.contains(&a.ip()) {
                                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                                } else {
                                    axum::http::StatusCode::OK
                                }
                            },
                        ),
                    )
                    .with_state(sn);
                let stop = async move {
                    while !st.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                let _ = axum::serve(l, app.into_make_service_with_connect_info::<Local>())
                    .with_graceful_shutdown(stop)
                    .await;
            });
        });
        Responder {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn set_dead(&self, addr: IpAddr, dead: bool) {
        let mut s = self.seen.lock().expect("seen");
        if dead {
            s.dead.insert(addr);
        } else {
            s.dead.remove(&addr);
        }
    }

    fn arrivals(&self) -> HashMap<IpAddr, Vec<u64>> {
        self.seen.lock().expect("seen").by_addr.clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spec(i: usize, vms: usize, poll_s: u64) -> serde_json::Value {
    serde_json::json!({
        "name": format!("m-{i:05}"), "tenant": "mon",
        "vm_groups": [{
            "name": "g", "image": "vnf-image", "flavor": "m1.tiny",
            "scaling": { "min_active": vms, "max_active": vms },
            "interfaces": [{ "nicid": 0, "network": "scale-net" }],
            "bootup_time": 120,
            "recovery_policy": { "action": "REBOOT_THEN_REDEPLOY", "max_retries": 2 },
            "kpis": [{ "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
                       "metric_occurrences_true": 1, "metric_occurrences_false": 2,
                       "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": poll_s,
                                             "port": PORT, "path": "/health" } }],
            "rules": [{ "event_name": "VM_ALIVE",
                        "actions": ["FALSE recover autohealing", "TRUE esc_vm_alive_notification"] }]
        }]
    })
}

/// A bench client's runtime and HTTP client (5 s attempts).
fn client() -> Result<(tokio::runtime::Runtime, reqwest::Client), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    Ok((rt, c))
}

/// `GET path` through the VIP.
async fn get(c: &reqwest::Client, path: &str) -> Option<serde_json::Value> {
    crate::healing::get_json(c, &format!("http://{VIP}:8080{path}")).await
}

/// Deploys every deployment through the VIP and waits until each is
/// active; every VM's name and address.
fn deploy_all(
    deployments: usize,
    per: usize,
    poll_s: u64,
) -> Result<Vec<(String, IpAddr)>, String> {
    let (rt, c) = client()?;
    rt.block_on(async move {
        let base = format!("http://{VIP}:8080");
        send(
            &c,
            reqwest::Method::POST,
            &format!("{base}/v0/tenants"),
            "mon-tenant",
            "",
            Some(&serde_json::json!({"name": "mon"})),
        )
        .await?;
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (c, next, base) = (c.clone(), next.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= deployments {
                        return Ok::<(), String>(());
                    }
                    let a = send(
                        &c,
                        reqwest::Method::POST,
                        &format!("{base}/v0/deployments"),
                        &format!("mon-{i}"),
                        "",
                        Some(&spec(i, per, poll_s)),
                    )
                    .await?;
                    if a.last().map(|x| x.0) != Some(202) {
                        return Err(format!("deploy {i}: {:?}", a.last()));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        // Every deployment active (its VMs answered their bootup check).
        let mut vms = Vec::new();
        let end = Instant::now() + PHASE;
        for i in 0..deployments {
            loop {
                if Instant::now() > end {
                    return Err(format!("m-{i:05} not active within {PHASE:?}"));
                }
                if let Some(d) = get(&c, &format!("/v0/deployments/m-{i:05}")).await {
                    if d["state"] == "SERVICE_ACTIVE_STATE" && d["current_op"].is_null() {
                        for v in d["vms"].as_array().into_iter().flatten() {
                            let name = format!(
                                "esc-m-{i:05}-g-{}-g{}",
                                v["key"]["index"], v["key"]["generation"]
                            );
                            let addr = v["addresses"]["0"]
                                .as_str()
                                .and_then(|a| a.parse().ok())
                                .ok_or(format!("{name} has no address"))?;
                            vms.push((name, addr));
                        }
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(vms)
    })
}

/// The killed VM's recovery: revived on the responders once the VIM
/// rebooted its server (a reboot restarts a VNF); its operation's start
/// and settle times once the deployment shows it recovered.
fn heal_killed(
    name: String,
    addr: IpAddr,
    responders: [Arc<Mutex<Seen>>; 2],
) -> Result<(u64, u64), String> {
    let (rt, c) = client()?;
    rt.block_on(async move {
        let dep = name
            .strip_prefix("esc-")
            .and_then(|n| n.split("-g-").next())
            .unwrap_or("")
            .to_string();
        let end = Instant::now() + PHASE;
        let mut revived = false;
        while Instant::now() < end {
            if !revived {
                if let Ok(v) = control(&c, reqwest::Method::GET, "/control/v1/history", None).await
                {
                    let rebooted = v["history"].as_array().into_iter().flatten().any(|h| {
                        h["name"] == name.as_str()
                            && matches!(h["what"].as_str(), Some("hard-reboot" | "delete"))
                    });
                    if rebooted {
                        for r in &responders {
                            r.lock().expect("seen").dead.remove(&addr);
                        }
                        revived = true;
                    }
                }
            }
            if let Some(d) = get(&c, &format!("/v0/deployments/{dep}")).await {
                let healed = d["current_op"].is_null()
                    && d["vms"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v["recoveries"] == 1 && v["state"] == "VM_ALIVE_STATE");
                if healed {
                    let op = d["last_op"].as_str().unwrap_or("").to_string();
                    let o = get(&c, &format!("/v0/operations/{op}"))
                        .await
                        .ok_or(format!("operation {op} unreadable"))?;
                    return Ok((
                        o["started_at_ms"].as_u64().unwrap_or(0),
                        o["settled_at_ms"].as_u64().unwrap_or(0),
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{name} not healed within {PHASE:?}"))
    })
}

/// User and system CPU time of `pid`, seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: fields 3.. (utime is 14).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks / hz)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One size.
pub fn run(bins: &Bins, vms: usize, poll_s: u64, verbose: bool) -> anyhow::Result<Row> {
    let per = VMS_PER_DEPLOYMENT.min(vms).max(1);
    let deployments = vms.div_ceil(per);
    let (mut c, _secrets) = crate::service::up("mb", bins, Fault::PowerFailure)?;
    let responders = [
        Responder::start(&c.lab, &c.nodes[0].ns_host),
        Responder::start(&c.lab, &c.nodes[1].ns_host),
    ];
    let p = c.wait_ready()?;
    let s = 1 - p;
    let say = |m: String| {
        if verbose {
            eprintln!("  {m}");
        }
    };
    let t_deploy = Instant::now();
    let list = c
        .lab
        .in_ns("client", move || deploy_all(deployments, per, poll_s))
        .join()
        .map_err(|_| anyhow::anyhow!("the client panicked"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    say(format!(
        "{} VMs active in {:.0} s",
        list.len(),
        t_deploy.elapsed().as_secs_f64()
    ));
    let period = poll_s * 1_000;
    let names: HashMap<IpAddr, String> = list.iter().map(|(n, a)| (*a, n.clone())).collect();
    // Steady state: three periods.
    let pid = c.nodes[p].pid.unwrap_or(0);
    let (t0, cpu0) = (wall_ms(), cpu_s(pid).unwrap_or(0.0));
    // The window observed, not a wait for a condition.
    std::thread::sleep(Duration::from_millis(3 * period));
    let (t1, cpu1) = (wall_ms(), cpu_s(pid).unwrap_or(0.0));
    let steady = responders[p].arrivals();
    let mut late = Vec::new();
    for (addr, times) in &steady {
        let Some(name) = names.get(addr) else {
            continue;
        };
        let offset = esc_monitor::slot_offset(name, 0, period);
        for &t in times.iter().filter(|t| (t0..t1).contains(*t)) {
            // The slot at or before the arrival.
            let mut slot = t - t % period + offset;
            if slot > t {
                slot -= period;
            }
            late.push(t - slot);
        }
    }
    late.sort_unstable();
    let probes_per_s = late.len() as f64 * 1000.0 / (t1 - t0) as f64;
    let escd_cpu_cores = (cpu1 - cpu0) / ((t1 - t0) as f64 / 1000.0);
    say(format!(
        "steady: {probes_per_s:.0} probes/s, lateness p50 {} ms p99 {} ms, escd {escd_cpu_cores:.2} cores",
        percentile(&late, 0.5),
        percentile(&late, 0.99)
    ));
    // The fault: one VM killed, the primary's power cut.
    let (killed, killed_addr) = list[0].clone();
    for r in &responders {
        r.set_dead(killed_addr, true);
    }
    let fault_ms = wall_ms();
    c.inject(Fault::PowerFailure, p)?;
    anyhow::ensure!(
        wait_for(crate::cluster::READY, || c.role(s) == "PRIMARY"
            && c.vip_holders().contains(&s)),
        "esc-{} did not take over",
        s + 1
    );
    let promoted_ms = c
        .status(s)
        .and_then(|st| st.last_transition.map(|t| t.at_unix_ms))
        .unwrap_or(fault_ms);
    say(format!(
        "takeover: promoted {} ms after the fault",
        promoted_ms.saturating_sub(fault_ms)
    ));
    let seen = [responders[0].seen.clone(), responders[1].seen.clone()];
    let (k, ka) = (killed.clone(), killed_addr);
    let healed = c
        .lab
        .in_ns("client", move || heal_killed(k, ka, seen))
        .join()
        .map_err(|_| anyhow::anyhow!("the client panicked"))?;
    // Three periods after the fault, for the gaps.
    let until = fault_ms + 3 * period;
    wait_for(PHASE, || wall_ms() >= until);
    let mut errors = Vec::new();
    let (killed_detected_ms, killed_healed_ms) = match healed {
        Ok((start, settle)) => (
            Some(start.saturating_sub(fault_ms)),
            Some(settle.saturating_sub(fault_ms)),
        ),
        Err(e) => {
            errors.push(e);
            (None, None)
        }
    };
    let before = responders[p].arrivals();
    let after = responders[s].arrivals();
    let first = after.values().flatten().copied().min();
    if verbose {
        // The new primary's first two seconds, per 100 ms.
        let mut hist = [0usize; 20];
        for &t in after.values().flatten() {
            if t >= promoted_ms && t < promoted_ms + 2_000 {
                hist[((t - promoted_ms) / 100) as usize] += 1;
            }
        }
        say(format!("probes per 100 ms after the promotion: {hist:?}"));
    }
    let takeover_to_first_probe_ms = first.map(|f| f.saturating_sub(promoted_ms));
    let window = fault_ms.saturating_sub(2 * period)..until;
    let mut longest: Option<u64> = None;
    let mut not_again = 0;
    for (_, addr) in list.iter().filter(|(n, _)| *n != killed) {
        let mut t: Vec<u64> = before
            .get(addr)
            .into_iter()
            .chain(after.get(addr))
            .flatten()
            .copied()
            .filter(|t| window.contains(t))
            .collect();
        t.sort_unstable();
        if !after
            .get(addr)
            .is_some_and(|a| a.iter().any(|&x| x >= promoted_ms))
        {
            not_again += 1;
        }
        if let Some(g) = t.windows(2).map(|w| w[1] - w[0]).max() {
            longest = Some(longest.map_or(g, |l: u64| l.max(g)));
        }
    }
    let row = Row {
        vms: list.len(),
        poll_s,
        probes_per_s,
        lateness_p50_ms: percentile(&late, 0.5),
        lateness_p99_ms: percentile(&late, 0.99),
        lateness_max_ms: late.last().copied().unwrap_or(0),
        escd_cpu_cores,
        takeover_ms: promoted_ms.saturating_sub(fault_ms),
        takeover_to_first_probe_ms,
        longest_gap_ms: longest,
        vms_not_probed_again: not_again,
        killed_detected_ms,
        killed_healed_ms,
        pass: errors.is_empty() && not_again == 0 && list.len() == vms,
        errors,
    };
    drop(responders);
    Ok(row)
}

/// The rows as the Markdown table of `docs/benchmarks.md`.
pub fn table(rows: &[Row]) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let mut out = String::from(
        "| VMs | poll | probes/s | lateness p50 / p99 / max | escd CPU (primary) | takeover | takeover to first probe | longest gap across it | VMs not probed again | killed VM detected / healed |\n|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} s | {:.0} | {} / {} / {} ms | {:.2} cores | {} ms | {} | {} | {} | {} / {} |\n",
            r.vms,
            r.poll_s,
            r.probes_per_s,
            r.lateness_p50_ms,
            r.lateness_p99_ms,
            r.lateness_max_ms,
            r.escd_cpu_cores,
            r.takeover_ms,
            ms(r.takeover_to_first_probe_ms),
            ms(r.longest_gap_ms),
            r.vms_not_probed_again,
            ms(r.killed_detected_ms),
            ms(r.killed_healed_ms),
        ));
    }
    out
}

/// The JSON of a run.
pub fn json(rows: &[Row], command: &str) -> serde_json::Value {
    let by: BTreeMap<String, &Row> = rows.iter().map(|r| (r.vms.to_string(), r)).collect();
    serde_json::json!({
        "benchmark": "the monitor at scale: light servers probed over HTTP, then the primary's power cut",
        "command": command,
        "rows": by,
    })
}
