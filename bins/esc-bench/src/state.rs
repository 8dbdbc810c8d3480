//! Benchmarks of what the managed state's size must not change: the cost
//! of `escadm status --v`, and the memory a snapshot install takes.

use crate::{free_addr, machine, node_status, start_tuned, wait_writable, Tuning, PASSWORD};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `n` deployments with `value_bytes` of payload each, 32 clients.
async fn fill(
    api: SocketAddr,
    n: usize,
    value_bytes: usize,
    tag: &str,
) -> anyhow::Result<Duration> {
    let c = reqwest::Client::new();
    let t = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let payload = std::sync::Arc::new("x".repeat(value_bytes));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (c, next, payload, tag) = (c.clone(), next.clone(), payload.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = serde_json::json!({
                    "name": format!("{tag}-{i}"), "tenant": crate::TENANT,
                    "properties": { "payload": &*payload },
                });
                let r = c
                    .post(format!("http://{api}/v0/deployments"))
                    .basic_auth("admin", Some(PASSWORD))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202, "write {i} failed: {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed())
}

fn stats_ms(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |p: f64| ms(v[((v.len() as f64 - 1.0) * p).round() as usize]);
    (at(0.5), at(0.99), ms(*v.last().unwrap_or(&Duration::ZERO)))
}

#[derive(Serialize)]
struct StatusRow {
    deployments: usize,
    deployments_reported: u64,
    calls: usize,
    request_p50_ms: f64,
    request_p99_ms: f64,
    request_max_ms: f64,
    escadm_p50_ms: f64,
    escadm_p99_ms: f64,
    escadm_max_ms: f64,
}

/// `escadm status --v` at each size: the admin request itself (verbose, as
/// `--v` asks it, with the health checks), and the whole `escadm` process.
pub async fn status(sizes: &[usize], calls: usize, json: &Path) -> anyhow::Result<()> {
    let escadm = crate::escd_path().with_file_name("escadm");
    let mut rows = Vec::new();
    for &n in sizes {
        let api = free_addr("127.0.0.1");
        let node = start_tuned(
            "bench-status",
            free_addr("127.0.0.1"),
            api,
            None,
            "primary",
            "sync",
            Tuning::default(),
        )?;
        wait_writable(&reqwest::Client::new(), api).await?;
        let took = fill(api, n, 100, "s").await?;
        eprintln!("{n} deployments written in {:.1} s", took.as_secs_f64());
        let req = esc_proto::AdminRequest::Status {
            verbose: true,
            health: true,
        };
        let mut request = Vec::new();
        let mut reported = 0;
        for _ in 0..calls {
            let t = Instant::now();
            let r = esc_proto::admin::request(node.home(), &req, esc_proto::admin::ANSWER_TIMEOUT)?;
            request.push(t.elapsed());
            if let esc_proto::AdminResponse::Status { status } = r {
                reported = status.state.map_or(0, |s| s.deployments);
            }
        }
        let mut process = Vec::new();
        for _ in 0..calls.div_ceil(4) {
            let t = Instant::now();
            let out = std::process::Command::new(&escadm)
                .arg("--home")
                .arg(node.home())
                .args(["status", "--v"])
                .output()?;
            process.push(t.elapsed());
            anyhow::ensure!(out.status.success(), "escadm status --v failed");
        }
        let (rp50, rp99, rmax) = stats_ms(request);
        let (ep50, ep99, emax) = stats_ms(process);
        rows.push(StatusRow {
            deployments: n,
            deployments_reported: reported,
            calls,
            request_p50_ms: rp50,
            request_p99_ms: rp99,
            request_max_ms: rmax,
            escadm_p50_ms: ep50,
            escadm_p99_ms: ep99,
            escadm_max_ms: emax,
        });
    }
    println!("| deployments | status --v request p50 / p99 / max ms | escadm status --v process p50 / p99 / max ms |");
    println!("|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
            r.deployments,
            r.request_p50_ms,
            r.request_p99_ms,
            r.request_max_ms,
            r.escadm_p50_ms,
            r.escadm_p99_ms,
            r.escadm_max_ms
        );
    }
    write(
        json,
        serde_json::json!({
            "benchmark": "escadm status --v latency by number of deployments",
            "machine": machine(),
            "results": rows,
        }),
    )
}

/// `VmRSS` and `VmHWM` (peak) of a process, KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[derive(Serialize)]
struct SnapshotRow {
    deployments: usize,
    value_kib: usize,
    state_mib: f64,
    fill_s: f64,
    install_s: f64,
    primary_peak_rss_mib: f64,
    follower_peak_rss_mib: f64,
    primary_peak_rss_while_writing_mib: f64,
    snapshot_index: u64,
}

/// A primary holding `n` deployments of `value_kib` KiB, its log compacted
/// so a new follower needs the whole state as a snapshot; both nodes' peak
/// resident memory while the follower installs it.
pub async fn snapshot_memory(n: usize, value_kib: usize, json: &Path) -> anyhow::Result<()> {
    let (a_repl, a_api) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (b_repl, b_api) = (free_addr("127.0.0.2"), free_addr("127.0.0.2"));
    // Compaction every 1,000 entries keeping 100: the follower cannot
    // catch up from the log.
    let tuning = Tuning {
        snapshot_every_entries: 1_000,
        log_retain_entries: 100,
    };
    let a = start_tuned(
        "bench-a",
        a_repl,
        a_api,
        Some(b_repl),
        "primary",
        "sync",
        tuning,
    )?;
    wait_writable(&reqwest::Client::new(), a_api).await?;
    let fill_took = fill(a_api, n, value_kib * 1024, "m").await?;
    let (_, writing_peak) = rss_kib(a.pid()).unwrap_or_default();
    let snap = node_status(a.home()).map_or(0, |s| s.store.snapshot_index);
    let commit = node_status(a.home()).map_or(0, |s| s.replication.commit_index);
    eprintln!(
        "{n} deployments of {value_kib} KiB written in {:.1} s; snapshot index {snap}, commit {commit}",
        fill_took.as_secs_f64()
    );
    anyhow::ensure!(snap > 0, "the primary's log was not compacted");
    reset_peak(a.pid());
    let t = Instant::now();
    let b = start_tuned(
        "bench-b",
        b_repl,
        b_api,
        Some(a_repl),
        "standby",
        "sync",
        tuning,
    )?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the follower did not catch up");
        if node_status(b.home()).is_some_and(|s| s.store.applied_index >= commit) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let install = t.elapsed();
    let (_, a_peak) = rss_kib(a.pid()).unwrap_or_default();
    let (_, b_peak) = rss_kib(b.pid()).unwrap_or_default();
    let row = SnapshotRow {
        deployments: n,
        value_kib,
        state_mib: (n * value_kib) as f64 / 1024.0,
        fill_s: fill_took.as_secs_f64(),
        install_s: install.as_secs_f64(),
        primary_peak_rss_mib: a_peak as f64 / 1024.0,
        follower_peak_rss_mib: b_peak as f64 / 1024.0,
        primary_peak_rss_while_writing_mib: writing_peak as f64 / 1024.0,
        snapshot_index: snap,
    };
    println!("| deployments | value | state | install | primary peak RSS | follower peak RSS | primary peak while writing |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} KiB | {:.0} MiB | {:.1} s | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
        row.deployments,
        row.value_kib,
        row.state_mib,
        row.install_s,
        row.primary_peak_rss_mib,
        row.follower_peak_rss_mib,
        row.primary_peak_rss_while_writing_mib
    );
    write(
        json,
        serde_json::json!({
            "benchmark": "peak resident memory of both nodes during a snapshot install",
            "machine": machine(),
            "results": [row],
        }),
    )
}

fn write(json: &Path, doc: serde_json::Value) -> anyhow::Result<()> {
    if let Some(d) = json.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(json, serde_json::to_vec_pretty(&doc)?)?;
    eprintln!("JSON written to {}", json.display());
    Ok(())
}
