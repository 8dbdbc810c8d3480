//! Issue 4, "Done when": the HA pair as operators run it, with real `escd`
//! processes in network namespaces the test creates (hosts esc1, esc2, a
//! witness and a client on a bridge; addresses from 192.0.2.0/24), VRRP on
//! eth0 and the VIP 192.0.2.100.
//!
//! A client in its own namespace writes deployments through the VIP with
//! idempotency keys, resending on 503 and connection errors (as a client
//! of an HA service must), and records which node and epoch acknowledged
//! each write. After each run the checker reads both stores: every
//! acknowledged write is on both, the copies are identical, no epoch was
//! acknowledged by two nodes, and the VIP is on one host.
//!
//! Scenarios: automatic takeover after SIGKILL of the primary; a full
//! partition of the primary with a witness (the old primary steps down,
//! never a second writer); `escadm ha switchover` and back, then a graceful
//! stop (SIGTERM) of the primary, with zero failed requests; FAULT and
//! handover when the primary's data volume fills up.
//! Timing bounds prove the mechanism with a margin a loaded 2-core machine
//! cannot flake on; the tight figures are benchmarks.

mod common;

use common::lab::Lab;
use common::{status_of, wait_until, PASSWORD, SECRET};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIP: &str = "192.0.2.100";
const ADDRS: [&str; 2] = ["192.0.2.11", "192.0.2.12"];
const WITNESS_ADDR: &str = "192.0.2.13";
/// Deadline for the pair to take over / hand over: the protocol needs about
/// a second; the rest is margin for a loaded CI machine.
const TAKEOVER: Duration = Duration::from_secs(20);

fn escadm() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_escd")).with_file_name("escadm");
    assert!(
        p.exists(),
        "build escadm first: scripts/test.sh does (cargo build --workspace --bins)"
    );
    p
}

struct Host {
    name: String,
    home: PathBuf,
    _dir: tempfile::TempDir,
    pid: Option<u32>,
}

struct Pair {
    lab: Lab,
    nodes: Vec<Host>,
    witness: Option<Host>,
}

fn node_toml(i: usize, witness: bool) -> String {
    let (me, peer) = (ADDRS[i], ADDRS[1 - i]);
    let w = if witness {
        format!("[witness]\naddress = \"{WITNESS_ADDR}:7790\"\nlease_ms = 1000\nrenew_interval_ms = 200\n")
    } else {
        String::new()
    };
    format!(
        r#"node_name = "esc{n}"
[replication]
listen = "{me}:7789"
peer = "{peer}:7789"
secret = "{SECRET}"
heartbeat_interval_ms = 50
peer_timeout_ms = 500
[api]
listen = "0.0.0.0:8080"
health_listen = "0.0.0.0:8060"
user = "admin"
password = "{PASSWORD}"
[vrrp]
interface = "eth0"
vip = "{VIP}/24"
advert_interval_ms = 100
[ha]
health_interval_ms = 200
health_failures_max = 2
{w}"#,
        n = i + 1
    )
}

fn witness_toml() -> String {
    format!(
        r#"node_name = "witness"
[replication]
secret = "{SECRET}"
[witness]
listen = "{WITNESS_ADDR}:7790"
lease_ms = 1000
renew_interval_ms = 200
"#
    )
}

impl Pair {
    fn new(tag: &str, witness: bool) -> Option<Pair> {
        let mut lab = Lab::with_prefix(tag)?;
        for (i, a) in ADDRS.iter().enumerate() {
            lab.host(&format!("esc{}", i + 1), &format!("{a}/24"));
        }
        lab.host("witness", &format!("{WITNESS_ADDR}/24"));
        lab.host("client", "192.0.2.50/24");
        let mut p = Pair {
            lab,
            nodes: Vec::new(),
            witness: None,
        };
        if witness {
            let mut w = Self::home("witness", &witness_toml());
            p.spawn(&mut w, true);
            p.witness = Some(w);
        }
        for i in 0..2 {
            let mut h = Self::home(&format!("esc{}", i + 1), &node_toml(i, witness));
            p.spawn(&mut h, false);
            let home = h.home.clone();
            wait_until(Duration::from_secs(20), "escd admin socket", || {
                status_of(&home).is_some()
            });
            p.nodes.push(h);
        }
        Some(p)
    }

    fn home(name: &str, toml: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix(&format!("esc-pair-{name}-"))
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("esc.toml"), toml).unwrap();
        Host {
            name: name.into(),
            home: dir.path().to_path_buf(),
            _dir: dir,
            pid: None,
        }
    }

    fn spawn(&mut self, h: &mut Host, witness: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.home.join("stderr.log"))
            .unwrap();
        let home = h.home.to_str().unwrap().to_string();
        let logs = format!("{home}/log");
        let mut args = vec!["--home", home.as_str(), "--log-dir", logs.as_str()];
        if witness {
            args.push("--witness");
        }
        h.pid = Some(
            self.lab
                .spawn(&h.name, env!("CARGO_BIN_EXE_escd"), &args, log),
        );
    }

    fn restart(&mut self, i: usize) {
        let mut h = std::mem::replace(&mut self.nodes[i], Self::home("tmp", ""));
        self.spawn(&mut h, false);
        let home = h.home.clone();
        self.nodes[i] = h;
        wait_until(Duration::from_secs(20), "escd admin socket", || {
            status_of(&home).is_some()
        });
    }

    fn sigkill(&mut self, i: usize) {
        let pid = self.nodes[i].pid.take().expect("running");
        self.lab
            .signal_and_reap(pid, nix::sys::signal::Signal::SIGKILL);
    }

    /// A graceful stop; returns once the process has exited.
    fn sigterm(&mut self, i: usize) {
        let pid = self.nodes[i].pid.take().expect("running");
        self.lab
            .signal_and_reap(pid, nix::sys::signal::Signal::SIGTERM);
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        status_of(&self.nodes[i].home)
    }

    /// The role authority's word for node i (`PRIMARY`, `STANDBY`, ...).
    fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| s["ha"]["authority"]["role"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn state_file(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].home.join("keepalived_state"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn vip_holders(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| self.lab.has(&format!("esc{}", i + 1), VIP))
            .collect()
    }

    /// One PRIMARY holding the VIP and admitting writes, one STANDBY in
    /// sync; returns the primary's index.
    fn wait_ready(&self, what: &str) -> usize {
        let mut primary = 0;
        wait_until(TAKEOVER, what, || {
            let roles = [self.role(0), self.role(1)];
            let Some(p) = roles.iter().position(|r| r == "PRIMARY") else {
                return false;
            };
            let s = 1 - p;
            let sync = self
                .status(p)
                .is_some_and(|st| st["replication"]["peer"]["in_sync"] == true);
            primary = p;
            roles[s] == "STANDBY"
                && sync
                && self.vip_holders() == vec![p]
                && self.state_file(p) == "MASTER"
                && self.state_file(s) == "BACKUP"
        });
        primary
    }

    /// Waits until node `i` is the ready primary (after a switchover the
    /// old state is visible for a moment).
    fn wait_primary(&self, i: usize, what: &str) {
        wait_until(TAKEOVER, what, || self.role(i) == "PRIMARY");
        assert_eq!(self.wait_ready(what), i, "{what}");
    }

    fn escadm(&self, i: usize, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(&format!("esc{}", i + 1))])
            .arg(escadm())
            .arg("--home")
            .arg(&self.nodes[i].home)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Every deployment name in node i's store (read through its own API).
    fn deployments(&self, i: usize) -> HashSet<String> {
        let url = format!("http://{}:8080", ADDRS[i]);
        self.lab
            .in_ns("client", move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let c = reqwest::Client::new();
                    let mut out = HashSet::new();
                    let mut after: Option<String> = None;
                    loop {
                        let mut u = format!("{url}/v0/deployments?limit=1000");
                        if let Some(a) = &after {
                            u.push_str(&format!("&after={a}"));
                        }
                        let r: serde_json::Value = c
                            .get(&u)
                            .basic_auth("admin", Some(PASSWORD))
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        for d in r["deployments"].as_array().unwrap() {
                            out.insert(d["name"].as_str().unwrap().to_string());
                        }
                        match r["next_after"].as_str() {
                            Some(a) => after = Some(a.to_string()),
                            None => return out,
                        }
                    }
                })
            })
            .join()
            .unwrap()
    }

    /// Both stores hold the same state (digest over the applied state).
    fn wait_identical(&self) {
        wait_until(TAKEOVER, "identical copies on both nodes", || {
            let d: Vec<String> = (0..2)
                .filter_map(|i| self.status(i))
                .map(|s| s["state"]["digest"].as_str().unwrap_or("").to_string())
                .collect();
            d.len() == 2 && d[0] == d[1] && !d[0].is_empty()
        });
    }

    /// Drops all traffic between host `i` and the other node and the
    /// witness, both ways, VRRP multicast included (nftables in its
    /// namespace); the client still reaches it.
    fn partition(&self, i: usize) {
        let ns = self.lab.ns(&format!("esc{}", i + 1));
        let others = format!("{{ {}, {WITNESS_ADDR} }}", ADDRS[1 - i]);
        let rules = format!(
            "table inet esc_partition {{\n\
               chain in {{ type filter hook input priority 0; ip saddr {others} drop; }}\n\
               chain out {{ type filter hook output priority 0; ip daddr {others} drop; ip daddr 224.0.0.18 drop; }}\n\
             }}\n"
        );
        nft(&ns, &rules);
    }

    fn heal(&self, i: usize) {
        let ns = self.lab.ns(&format!("esc{}", i + 1));
        nft(&ns, "delete table inet esc_partition\n");
    }
}

impl Drop for Pair {
    /// On a failing test: what each node said and logged.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, h) in self.nodes.iter().enumerate() {
            eprintln!(
                "---- esc{} status: {}",
                i + 1,
                self.status(i).map(|s| s.to_string()).unwrap_or_default()
            );
            let log = std::fs::read_to_string(h.home.join("log/escadm.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "---- esc{} escadm.log (last 40, newest first):\n{}",
                i + 1,
                tail.join("\n")
            );
            eprintln!(
                "---- esc{} stderr:\n{}",
                i + 1,
                std::fs::read_to_string(h.home.join("stderr.log")).unwrap_or_default()
            );
        }
        if let Some(w) = &self.witness {
            let log = std::fs::read_to_string(w.home.join("log/escadm.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("---- witness log (newest first):\n{}", tail.join("\n"));
        }
    }
}

fn nft(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (install the nftables package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed:\n{script}");
}

/// One write as the client saw it.
#[derive(Debug, Clone)]
#[allow(dead_code)] // every field is printed when a check fails
struct Rec {
    name: String,
    ok: bool,
    node: String,
    epoch: u64,
    done: Instant,
    attempts: u32,
    last_error: String,
}

/// Concurrent writers through the VIP; bounded in count and time.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    history: Arc<Mutex<Vec<Rec>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Each write is resent (same Idempotency-Key) until it succeeds or this
/// passes: a client of an HA service retries on 503 and connection errors.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);

impl Workload {
    fn start(lab: &Lab, writers: usize, max_writes: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let history: Arc<Mutex<Vec<Rec>>> = Default::default();
        let (s, a, h) = (stop.clone(), acked.clone(), history.clone());
        let thread = lab.in_ns("client", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = reqwest::Client::builder()
                    .connect_timeout(Duration::from_millis(300))
                    .timeout(Duration::from_secs(3))
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let next = Arc::new(AtomicUsize::new(0));
                let end = Instant::now() + Duration::from_secs(300);
                let mut tasks = Vec::new();
                for _ in 0..writers {
                    let (c, s, a, h, next) =
                        (c.clone(), s.clone(), a.clone(), h.clone(), next.clone());
                    tasks.push(tokio::spawn(async move {
                        while !s.load(Ordering::Relaxed) && Instant::now() < end {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= max_writes {
                                return;
                            }
                            let rec = write_once(&c, i).await;
                            if rec.ok {
                                a.fetch_add(1, Ordering::Relaxed);
                            }
                            h.lock().unwrap().push(rec);
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
            thread: Some(thread),
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops issuing new writes; waits for those in flight.
    fn finish(mut self) -> Vec<Rec> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.history.lock().unwrap())
    }
}

async fn write_once(c: &reqwest::Client, i: usize) -> Rec {
    let name = format!("d-{i:05}");
    let body =
        serde_json::json!({"name": name, "vim": "openstack", "image": "img", "flavor": "m1.small"});
    let deadline = Instant::now() + WRITE_DEADLINE;
    let mut attempts = 0;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        attempts += 1;
        let r = c
            .post(format!("http://{VIP}:8080/v0/deployments"))
            .basic_auth("admin", Some(PASSWORD))
            .header("Idempotency-Key", format!("k-{i}"))
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
                    ok: true,
                    node: hdr("esc-node"),
                    epoch: hdr("esc-epoch").parse().unwrap_or(0),
                    done: Instant::now(),
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
        // Resend pacing (a client's backoff), not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Rec {
        name,
        ok: false,
        node: String::new(),
        epoch: 0,
        done: Instant::now(),
        attempts,
        last_error,
    }
}

/// The checker: every acknowledged write on both nodes, identical copies,
/// one node per acknowledged epoch, and (unless allowed) no failed request.
fn check(pair: &Pair, history: &[Rec], failures_allowed: bool) {
    let failed: Vec<&Rec> = history.iter().filter(|r| !r.ok).collect();
    if !failures_allowed {
        assert!(
            failed.is_empty(),
            "{} failed requests, e.g. {:?}",
            failed.len(),
            failed.first()
        );
    }
    let acked: Vec<&Rec> = history.iter().filter(|r| r.ok).collect();
    assert!(!acked.is_empty(), "the workload acknowledged nothing");
    pair.wait_identical();
    for i in 0..2 {
        let have = pair.deployments(i);
        let missing: Vec<&str> = acked
            .iter()
            .filter(|r| !have.contains(&r.name))
            .map(|r| r.name.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged writes missing on esc{}: {:?}",
            missing.len(),
            i + 1,
            &missing[..missing.len().min(10)]
        );
    }
    // Never two writers: each epoch was acknowledged by one node only.
    let mut by_epoch: BTreeMap<u64, HashSet<&str>> = BTreeMap::new();
    for r in &acked {
        by_epoch.entry(r.epoch).or_default().insert(r.node.as_str());
    }
    for (e, nodes) in &by_epoch {
        assert_eq!(nodes.len(), 1, "epoch {e} acknowledged by {nodes:?}");
    }
    assert_eq!(
        pair.vip_holders().len(),
        1,
        "the VIP is on exactly one host"
    );
    eprintln!(
        "checker: {} acknowledged, {} failed, epochs {:?}, max attempts {}",
        acked.len(),
        failed.len(),
        by_epoch,
        history.iter().map(|r| r.attempts).max().unwrap_or(0)
    );
}

/// The writes acknowledged by each node, in the order the client saw them:
/// the first acknowledgement by `new` comes after the last by `old`.
fn handover_is_clean(history: &[Rec], old: &str, new: &str) {
    let last_old = history
        .iter()
        .filter(|r| r.ok && r.node == old)
        .map(|r| r.done)
        .max();
    let first_new = history
        .iter()
        .filter(|r| r.ok && r.node == new)
        .map(|r| r.done)
        .min();
    if let (Some(o), Some(n)) = (last_old, first_new) {
        // Responses travel concurrently; allow their own jitter only.
        assert!(
            o <= n + Duration::from_millis(200),
            "{old} acknowledged writes {:?} after {new} began",
            o - n
        );
    }
}

fn wait_acked(w: &Workload, n: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} writes acknowledged"),
        || w.acked() >= n,
    );
}

#[test]
fn sigkill_of_the_primary_is_taken_over_automatically() {
    let Some(mut pair) = Pair::new("hk", true) else {
        return;
    };
    let p = pair.wait_ready("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(&pair.lab, 4, 600);
    wait_acked(&w, 100);
    let killed_at = Instant::now();
    pair.sigkill(p);
    // (The dead process's kernel keeps the VIP address until escd starts
    // again and removes it; the survivor's gratuitous ARP redirects clients.)
    wait_until(TAKEOVER, "the standby takes over with the VIP", || {
        pair.role(s) == "PRIMARY" && pair.vip_holders().contains(&s)
    });
    eprintln!("takeover seen after {:?}", killed_at.elapsed());
    assert_eq!(pair.state_file(s), "MASTER");
    let before = w.acked();
    wait_acked(&w, before + 100);
    // The old primary comes back as standby and catches up.
    pair.restart(p);
    let p2 = pair.wait_ready("the old primary rejoins as standby");
    assert_eq!(p2, s, "the survivor stays primary (no preemption)");
    let history = w.finish();
    check(&pair, &history, false);
    handover_is_clean(&history, &format!("esc{}", p + 1), &format!("esc{}", s + 1));
}

#[test]
fn partition_of_the_primary_with_a_witness_never_makes_a_second_writer() {
    let Some(pair) = Pair::new("hp", true) else {
        return;
    };
    let p = pair.wait_ready("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(&pair.lab, 4, 1_000_000);
    wait_acked(&w, 100);
    pair.partition(p);
    wait_until(
        TAKEOVER,
        "the standby takes over; the old primary steps down",
        || pair.role(s) == "PRIMARY" && pair.role(p) != "PRIMARY" && pair.vip_holders() == vec![s],
    );
    // The isolated node holds no lease: it must not be primary again while cut off.
    let before = w.acked();
    wait_acked(&w, before + 100);
    assert_ne!(pair.role(p), "PRIMARY", "the isolated node leads again");
    pair.heal(p);
    pair.wait_ready("the old primary rejoins as standby");
    let history = w.finish();
    check(&pair, &history, false);
    handover_is_clean(&history, &format!("esc{}", p + 1), &format!("esc{}", s + 1));
}

#[test]
fn switchover_and_back_and_graceful_stop_with_zero_failed_requests() {
    let Some(mut pair) = Pair::new("hs", true) else {
        return;
    };
    let p = pair.wait_ready("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(&pair.lab, 4, 1_000_000);
    wait_acked(&w, 100);
    // Refused on the standby, with a clear message.
    let (code, text) = pair.escadm(s, &["ha", "switchover"]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("not primary"), "{text}");
    let (code, text) = pair.escadm(p, &["ha", "switchover"]);
    assert_eq!(code, 0, "{text}");
    pair.wait_primary(s, "switched over");
    let before = w.acked();
    wait_acked(&w, before + 100);
    // Failback is the same command on the new primary.
    let (code, text) = pair.escadm(s, &["ha", "switchover"]);
    assert_eq!(code, 0, "{text}");
    pair.wait_primary(p, "switched back");
    let before = w.acked();
    wait_acked(&w, before + 100);
    // A graceful stop of the primary (SIGTERM) hands over the same way.
    pair.sigterm(p);
    wait_until(TAKEOVER, "the standby takes over at the stop", || {
        pair.role(s) == "PRIMARY" && pair.vip_holders() == vec![s]
    });
    let before = w.acked();
    wait_acked(&w, before + 100);
    pair.restart(p);
    pair.wait_primary(s, "the stopped node rejoins as standby");
    let history = w.finish();
    check(&pair, &history, false);
}

#[test]
fn a_full_data_volume_on_the_primary_is_fault_and_hands_over() {
    let Some(mut pair) = Pair::new("hf", true) else {
        return;
    };
    let p = pair.wait_ready("a ready pair (witness mode)");
    let s = 1 - p;
    // Put the primary's data on a small tmpfs (restart it there), as the
    // health test does; then fill the volume.
    let data = pair.nodes[p].home.join("data");
    pair.sigkill(p);
    let moved = pair.nodes[p].home.join("data.orig");
    std::fs::rename(&data, &moved).unwrap();
    std::fs::create_dir(&data).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=96m",
            "esc-test",
            data.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    for e in std::fs::read_dir(&moved).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
        }
    }
    // Meanwhile the other node took over; the restarted one rejoins.
    pair.restart(p);
    let now_primary = pair.wait_ready("pair ready again");
    if now_primary != p {
        // Make the node on the small volume primary again (switchover).
        let (code, text) = pair.escadm(now_primary, &["ha", "switchover"]);
        assert_eq!(code, 0, "{text}");
        pair.wait_primary(p, "tmpfs node primary");
    }
    let w = Workload::start(&pair.lab, 2, 1_000_000);
    wait_acked(&w, 50);
    // Fill the data volume.
    let fill = data.join("fill");
    let st = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", fill.display()),
            "bs=1M",
            "count=60",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let _ = st; // leaves about 30 MiB: below the 64 MiB health floor, the store still writable
    wait_until(
        TAKEOVER,
        "the primary goes FAULT and the standby takes over",
        || pair.role(p) == "FAULT" && pair.role(s) == "PRIMARY" && pair.vip_holders() == vec![s],
    );
    assert_eq!(pair.state_file(p), "FAULT");
    let (code, text) = pair.escadm(p, &["status"]);
    assert_eq!(code, 1, "escadm status exit code on FAULT: {text}");
    assert!(text.contains("Fault"), "{text}");
    let before = w.acked();
    wait_acked(&w, before + 50);
    // Space back: the node is healthy again and rejoins as standby.
    std::fs::remove_file(&fill).unwrap();
    wait_until(TAKEOVER, "the faulted node rejoins as standby", || {
        pair.role(p) == "STANDBY"
    });
    pair.wait_ready("pair ready after the fault");
    let history = w.finish();
    check(&pair, &history, false);
}
