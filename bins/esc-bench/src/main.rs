//! `esc-bench`: benchmarks that print a table and write JSON (style
//! principle 12). Thin: starts real `escd` processes from the same build
//! directory on loopback, drives them over the REST API, and measures.
//!
//! `esc-bench writes`: durable writes per second and p50/p99 latency of
//! 1 KiB deployments at several client counts, for a single node, a sync
//! pair and an async pair; with `--postgres`, also runs
//! `bench/pg_sync_rep.sh` (PostgreSQL 15, synchronous streaming
//! replication) and prints both side by side.
//!
//! `esc-bench status`: `escadm status --v` latency at 0 and 100,000
//! deployments (nothing on the status path grows with the state).
//!
//! `esc-bench snapshot-memory`: both nodes' resident memory while a
//! follower installs a snapshot of 10,000 deployments of 64 KiB.
//!
//! `esc-bench vip-outage` (root): in network namespaces, the VIP outage a
//! client probing every 10 ms sees when the master loses power, for escd
//! and for keepalived at the same advertisement intervals.

mod state;

use clap::{Parser, Subcommand};
use serde::Serialize;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-password-0123";
const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable 1 KiB writes: single node, sync pair, async pair (and PostgreSQL).
    Writes {
        /// Seconds of load per client count and setup.
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Client counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench/out/writes.json")]
        json: PathBuf,
        /// Also run bench/pg_sync_rep.sh (installs PostgreSQL 15; needs root).
        #[arg(long)]
        postgres: bool,
    },
    /// `escadm status --v` latency at a given number of deployments.
    Status {
        /// Deployments written before measuring.
        #[arg(long, value_delimiter = ',', default_value = "0,100000")]
        deployments: Vec<usize>,
        /// Status requests timed per size.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        #[arg(long, default_value = "docs/bench/status.json")]
        json: PathBuf,
    },
    /// Resident memory of both nodes while a follower installs a large
    /// snapshot (deployments x value size).
    SnapshotMemory {
        #[arg(long, default_value_t = 10_000)]
        deployments: usize,
        /// Size of each deployment's payload, KiB.
        #[arg(long, default_value_t = 64)]
        value_kib: usize,
        #[arg(long, default_value = "docs/bench/snapshot_memory.json")]
        json: PathBuf,
    },
    /// VIP outage when the master loses power: escd vs keepalived (needs root).
    VipOutage {
        /// Trials per system and interval.
        #[arg(long, default_value_t = 10)]
        trials: usize,
        /// Advertisement intervals to measure, in ms.
        #[arg(long, value_delimiter = ',', default_value = "1000,100")]
        intervals_ms: Vec<u32>,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench/out/vip_outage.json")]
        json: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Row {
    system: String,
    clients: usize,
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    count: u64,
}

fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

struct Daemon {
    child: Child,
    _home: tempfile::TempDir,
}

impl Daemon {
    fn home(&self) -> &Path {
        self._home.path()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The store's compaction settings of a benchmark node.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    snapshot_every_entries: u64,
    log_retain_entries: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            snapshot_every_entries: 100_000,
            log_retain_entries: 10_000,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn escd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("exe dir").join("escd")
}

fn start(
    name: &str,
    repl: SocketAddr,
    api: SocketAddr,
    peer: Option<SocketAddr>,
    role: &str,
    mode: &str,
) -> anyhow::Result<Daemon> {
    start_tuned(name, repl, api, peer, role, mode, Tuning::default())
}

fn start_tuned(
    name: &str,
    repl: SocketAddr,
    api: SocketAddr,
    peer: Option<SocketAddr>,
    role: &str,
    mode: &str,
    tuning: Tuning,
) -> anyhow::Result<Daemon> {
    let home = tempfile::Builder::new().prefix("esc-bench-").tempdir()?;
    let health = free_addr(&api.ip().to_string());
    let peer = peer
        .map(|p| format!("peer = \"{p}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        home.path().join("esc.toml"),
        format!(
            "node_name = \"{name}\"\n[replication]\nlisten = \"{repl}\"\n{peer}mode = \"{mode}\"\n\
             initial_role = \"{role}\"\nsecret = \"{SECRET}\"\nasync_lag_entries_max = 10000\n\
             heartbeat_interval_ms = 100\npeer_timeout_ms = 2000\nbatch_entries_max = 1024\n\
             [store]\ndata_dir = \"data\"\nsnapshot_every_entries = {snap}\nlog_retain_entries = {retain}\n\
             group_commit_entries_max = 1024\n[api]\nlisten = \"{api}\"\nhealth_listen = \"{health}\"\nuser = \"admin\"\n\
             password = \"{PASSWORD}\"\nbody_bytes_max = 1048576\nconcurrency_max = 4096\n\
             writes_per_user_per_s = 1000000\n",
            snap = tuning.snapshot_every_entries,
            retain = tuning.log_retain_entries,
        ),
    )?;
    let child = Command::new(escd_path())
        .arg("--home")
        .arg(home.path())
        .arg("--log-dir")
        .arg(home.path().join("log"))
        .env("ESC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start {}: {e} (build escd first)",
                escd_path().display()
            )
        })?;
    Ok(Daemon { child, _home: home })
}

/// The tenant of every benchmark deployment (created by [`wait_writable`]).
pub(crate) const TENANT: &str = "bench";

async fn wait_writable(c: &reqwest::Client, api: SocketAddr) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        // The first write creates the tenant every benchmark write names.
        let r = c
            .post(format!("http://{api}/v0/tenants"))
            .basic_auth("admin", Some(PASSWORD))
            .json(&serde_json::json!({"name": TENANT}))
            .send()
            .await;
        if matches!(r, Ok(ref r) if r.status() == 201 || r.status() == 409) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("node at {api} never accepted a write")
}

/// Waits until the primary reports its standby in sync (sync/async pairs).
async fn wait_in_sync(home_status: impl Fn() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if home_status() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("standby never got in sync")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn load(
    c: &reqwest::Client,
    api: SocketAddr,
    clients: usize,
    duration: Duration,
    tag: &str,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let filler = "x".repeat(1024 - 150);
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (c, stop, filler, tag) = (c.clone(), stop.clone(), filler.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat_us = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // A deployment of no VM group: applied as a deploy that
                // completes in its own entry (no VIM on this path).
                let body = serde_json::json!({
                    "name": format!("{tag}-{t}-{n}"),
                    "tenant": TENANT,
                    "properties": { "image": "vnf-image", "flavor": "m1.large", "payload": filler },
                });
                let start = Instant::now();
                let r = c
                    .post(format!("http://{api}/v0/deployments"))
                    .basic_auth("admin", Some(PASSWORD))
                    .json(&body)
                    .send()
                    .await?;
                if r.status() != 202 {
                    anyhow::bail!("write failed: {}", r.status());
                }
                lat_us.push(start.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat_us)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok((all.len() as u64, all))
}

/// The node's status over its admin socket (without health checks).
fn node_status(home: &Path) -> Option<esc_proto::NodeStatus> {
    let req = esc_proto::AdminRequest::Status {
        verbose: false,
        health: false,
    };
    match esc_proto::admin::request(home, &req, esc_proto::admin::ANSWER_TIMEOUT).ok()? {
        esc_proto::AdminResponse::Status { status } => Some(*status),
        _ => None,
    }
}

fn status_in_sync(home: &Path) -> bool {
    node_status(home).is_some_and(|s| s.replication.peer.in_sync)
}

async fn writes(
    duration_s: u64,
    clients: &[usize],
    json: &Path,
    postgres: bool,
) -> anyhow::Result<()> {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let duration = Duration::from_secs(duration_s);
    let mut rows = Vec::new();
    for (system, peer_mode) in [
        ("esc single node", None),
        ("esc sync replication", Some("sync")),
        ("esc async replication", Some("async")),
    ] {
        let (a_repl, a_api) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
        let (b_repl, b_api) = (free_addr("127.0.0.2"), free_addr("127.0.0.2"));
        let mode = peer_mode.unwrap_or("sync");
        let a = start(
            "bench-a",
            a_repl,
            a_api,
            peer_mode.map(|_| b_repl),
            "primary",
            mode,
        )?;
        let b = match peer_mode {
            Some(m) => Some(start("bench-b", b_repl, b_api, Some(a_repl), "standby", m)?),
            None => None,
        };
        wait_writable(&c, a_api).await?;
        if b.is_some() {
            let home = a._home.path().to_path_buf();
            wait_in_sync(|| status_in_sync(&home)).await?;
        }
        for &n in clients {
            let tag = format!("c{n}");
            let (count, lat) = load(&c, a_api, n, duration, &tag).await?;
            let row = Row {
                system: system.to_string(),
                clients: n,
                writes_per_sec: count as f64 / duration.as_secs_f64(),
                p50_ms: percentile(&lat, 0.50),
                p99_ms: percentile(&lat, 0.99),
                count,
            };
            eprintln!("{row:?}");
            rows.push(row);
        }
        drop(b);
        drop(a);
    }
    // The pool's connections hold local ports of the ephemeral range: gone
    // before PostgreSQL binds its own.
    drop(c);
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if postgres {
        let out = json.with_file_name("pg_sync_rep.json");
        let status = Command::new("bash")
            .arg("bench/pg_sync_rep.sh")
            .env("DURATION_S", duration_s.to_string())
            .env(
                "CLIENTS",
                clients
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .env("OUT_JSON", &out)
            // Below Linux's ephemeral range (32768-60999): no client socket
            // of this machine can hold them.
            .env("PG_PRIMARY_PORT", "25432")
            .env("PG_STANDBY_PORT", "25433")
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "bench/pg_sync_rep.sh failed");
        let pg: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
        for r in pg["results"].as_array().into_iter().flatten() {
            rows.push(Row {
                system: "postgresql-15 sync replication".into(),
                clients: r["clients"].as_u64().unwrap_or(0) as usize,
                writes_per_sec: r["writes_per_sec"].as_f64().unwrap_or(0.0),
                p50_ms: r["p50_ms"].as_f64().unwrap_or(0.0),
                p99_ms: r["p99_ms"].as_f64().unwrap_or(0.0),
                count: r["count"].as_u64().unwrap_or(0),
            });
        }
    }
    println!("| system | clients | writes/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} |",
            r.system, r.clients, r.writes_per_sec, r.p50_ms, r.p99_ms
        );
    }
    let doc = serde_json::json!({
        "benchmark": "durable 1 KiB deployment writes",
        "duration_s": duration_s,
        "machine": machine(),
        "results": rows,
    });
    std::fs::write(json, serde_json::to_vec_pretty(&doc)?)?;
    eprintln!("JSON written to {}", json.display());
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({ "cpus": cpus, "cpu_model": model })
}

mod vip {
    //! One trial: two VRRP speakers (escd or keepalived) and a client in
    //! namespaces; the master loses power (every process killed, link
    //! down); the outage is the time to the client's first reachable probe.
    use esc_lab::Lab;
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const VIP: &str = "192.0.2.100";

    fn wait(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
        let end = Instant::now() + deadline;
        while !f() {
            anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn start(
        lab: &mut Lab,
        dir: &Path,
        host: &str,
        addr: &str,
        prio: u8,
        interval_ms: u32,
        keepalived: bool,
    ) -> anyhow::Result<()> {
        let d = dir.join(host);
        std::fs::create_dir_all(&d)?;
        let log = std::fs::File::create(d.join("out.log"))?;
        let ds = d.to_str().unwrap_or_default().to_string();
        if keepalived {
            let adv = if interval_ms.is_multiple_of(1000) {
                format!("{}", interval_ms / 1000)
            } else {
                format!("{}", interval_ms as f64 / 1000.0)
            };
            std::fs::write(d.join("k.conf"), format!(
                "global_defs {{\n router_id {host}\n vrrp_version 3\n}}\nvrrp_instance V {{\n state BACKUP\n interface eth0\n \
                 virtual_router_id 100\n priority {prio}\n advert_int {adv}\n nopreempt\n virtual_ipaddress {{\n  {VIP}/24\n }}\n}}\n"))?;
            let args = [
                "--dont-fork".to_string(),
                "--log-console".into(),
                "--vrrp".into(),
                format!("--use-file={ds}/k.conf"),
                format!("--pid={ds}/k.pid"),
                format!("--vrrp_pid={ds}/v.pid"),
            ];
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            lab.spawn(host, "keepalived", &args, log);
        } else {
            std::fs::write(d.join("esc.toml"), format!(
                "node_name = \"{host}\"\n[replication]\nlisten = \"{addr}:7789\"\n[api]\nlisten = \"{addr}:8080\"\n\
                 password = \"bench-password-0123\"\n[vrrp]\ninterface = \"eth0\"\nvip = \"{VIP}/24\"\npriority = {prio}\n\
                 advert_interval_ms = {interval_ms}\n"))?;
            let escd = super::escd_path();
            let logs = format!("{ds}/log");
            lab.spawn(
                host,
                escd.to_str().unwrap_or("escd"),
                &["--home", &ds, "--log-dir", &logs],
                log,
            );
        }
        Ok(())
    }

    /// One outage measurement.
    pub fn trial(interval_ms: u32, keepalived: bool, phase: f64) -> anyhow::Result<Duration> {
        let mut lab =
            Lab::with_prefix("eb").ok_or_else(|| anyhow::anyhow!("vip-outage needs root"))?;
        let dir = tempfile::Builder::new().prefix("esc-vip-").tempdir()?;
        lab.host("n1", "192.0.2.11/24");
        lab.host("n2", "192.0.2.12/24");
        lab.host("client", "192.0.2.50/24");
        let mdi = Duration::from_millis(4 * interval_ms as u64 + 1000);
        start(
            &mut lab,
            dir.path(),
            "n1",
            "192.0.2.11",
            150,
            interval_ms,
            keepalived,
        )?;
        wait("n1 master", mdi * 3, || lab.has("n1", VIP))?;
        start(
            &mut lab,
            dir.path(),
            "n2",
            "192.0.2.12",
            100,
            interval_ms,
            keepalived,
        )?;
        // n2 has heard n1 for a few intervals and stays backup.
        std::thread::sleep(Duration::from_millis(5 * interval_ms as u64));
        anyhow::ensure!(!lab.has("n2", VIP), "n2 took the VIP while n1 was alive");
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Instant>>> = Default::default();
        let (st, se) = (stop.clone(), seen.clone());
        let addr: SocketAddr = format!("{VIP}:9").parse()?;
        let probe = lab.in_ns("client", move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                let t = Instant::now();
                // Any answer, even "refused", means the VIP is served.
                let r = TcpStream::connect_timeout(&addr, Duration::from_millis(20));
                if r.is_ok()
                    || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    se.lock().unwrap_or_else(|p| p.into_inner()).push(t);
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
            }
        });
        let reachable_after = |t: Instant| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|x| *x > t)
        };
        let t0 = Instant::now();
        wait("client reaches the VIP", Duration::from_secs(10), || {
            reachable_after(t0)
        })?;
        // Kill at a random phase of the advertisement cycle.
        std::thread::sleep(Duration::from_millis((phase * interval_ms as f64) as u64));
        lab.power_fail("n1");
        let killed = Instant::now();
        wait(
            "client reaches the new master",
            Duration::from_secs(60),
            || reachable_after(killed),
        )?;
        let first = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .find(|x| *x > killed);
        stop.store(true, Ordering::Relaxed);
        let _ = probe.join();
        Ok(first.map(|f| f - killed).unwrap_or_default())
    }
}

fn vip_outage(trials: usize, intervals: &[u32], json: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!("| advert interval | system | trials | min ms | median ms | max ms |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &interval in intervals {
        for keepalived in [false, true] {
            let system = if keepalived { "keepalived" } else { "escd" };
            let mut ms = Vec::new();
            for t in 0..trials {
                let phase = (t as f64 + 0.5) / trials as f64;
                let d = vip::trial(interval, keepalived, phase)?;
                eprintln!("{system} interval {interval} ms trial {t}: {d:?}");
                ms.push(d.as_secs_f64() * 1000.0);
            }
            ms.sort_by(|a, b| a.total_cmp(b));
            let (min, med, max) = (ms[0], ms[ms.len() / 2], ms[ms.len() - 1]);
            println!("| {interval} ms | {system} | {trials} | {min:.0} | {med:.0} | {max:.0} |");
            rows.push(
                serde_json::json!({"advert_interval_ms": interval, "system": system,
                "trials_ms": ms, "min_ms": min, "median_ms": med, "max_ms": max}),
            );
        }
    }
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = serde_json::json!({"benchmark": "VIP outage seen by a client when the master loses power",
        "probe_interval_ms": 10, "machine": machine(), "results": rows});
    std::fs::write(json, serde_json::to_vec_pretty(&doc)?)?;
    eprintln!("JSON written to {}", json.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.cmd {
        Cmd::Writes {
            duration_s,
            clients,
            json,
            postgres,
        } => rt.block_on(writes(duration_s, &clients, &json, postgres)),
        Cmd::VipOutage {
            trials,
            intervals_ms,
            json,
        } => vip_outage(trials, &intervals_ms, &json),
        Cmd::Status {
            deployments,
            calls,
            json,
        } => rt.block_on(state::status(&deployments, calls, &json)),
        Cmd::SnapshotMemory {
            deployments,
            value_kib,
            json,
        } => rt.block_on(state::snapshot_memory(deployments, value_kib, &json)),
    }
}
