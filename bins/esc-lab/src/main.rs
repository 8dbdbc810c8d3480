//! `esc-lab`: the lab on one machine (issue 5). Thin: every piece lives in
//! the `esc-lab` library (topology, faults, workload, checker, scenarios).
//!
//! ```text
//! esc-lab demo                          the README's first command
//! esc-lab scenario <fault|all>          one run per failure class, checked
//! esc-lab chaos --seed N --minutes M    random faults (or none) under load
//! esc-lab bench --runs 20               interruption per class and state size
//! esc-lab flood --seconds 60            floods that must move nothing (issue 14)
//! esc-lab up | down                     keep a cluster up / remove leftovers
//! ```
//! Needs root (network namespaces, raw sockets) and the release build.

use clap::{Parser, Subcommand};
use esc_lab::cluster::{wait_for, Bins, Cluster, Fault, READY};
use esc_lab::scenario::{self, Options, Outcome};
use esc_lab::workload::{check, Workload};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The esc lab: an HA pair with a witness in network namespaces"
)]
struct Args {
    /// Directory holding escd and escadm.
    #[arg(long, default_value = "target/release", global = true)]
    bins: PathBuf,
    /// Where `demo`, `scenario` and `chaos` write the client's history
    /// (JSON lines: one write each, with its outcome, times, attempts and
    /// the node and epoch that acknowledged it).
    #[arg(long, default_value = "target/esc-lab", global = true)]
    history_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A pair with its witness, a client writing, a power failure of the
    /// primary shown live, the checker's verdict; then everything removed.
    Demo,
    /// Runs one failure class (or `all`) and checks the result.
    Scenario {
        /// link-down, partition, one-way-in, one-way-out, power-failure,
        /// dead-vm, switchover, graceful-stop, disk-full, disk-io-error,
        /// service-hang, api-dies, or all.
        fault: String,
        /// Deployments written before the fault.
        #[arg(long, default_value_t = 10)]
        deployments: usize,
        /// Two-node mode (no witness).
        #[arg(long)]
        two_node: bool,
    },
    /// Random faults on a running pair, seeded; prints its seed.
    Chaos {
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// No faults: only load (checks for false takeovers).
        #[arg(long)]
        no_faults: bool,
        /// Busy threads competing for the CPUs during the run.
        #[arg(long, default_value_t = 0)]
        cpu_load: usize,
        /// Threads writing 1 MiB blocks, each followed by an fdatasync, to
        /// a file on the nodes' volume (the temporary directory) during the
        /// run: a disk-heavy neighbour, like `dd oflag=dsync`.
        #[arg(long, default_value_t = 0)]
        disk_load: usize,
    },
    /// Each failure class `runs` times per state size; table and JSON.
    Bench {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        deployments: Vec<usize>,
        /// Comma-separated faults (default: all).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<String>,
        /// Where the JSON goes.
        #[arg(long, default_value = "docs/bench/lab-failover.json")]
        out: PathBuf,
    },
    /// The service at scale: servers deployed in deployments of ten VMs on
    /// esc-vim (each call answered after --vim-delay-ms), the primary's
    /// power cut at half; takeover to the first resumed VIM call, to every
    /// operation completed, and the deploy rate.
    BenchService {
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        servers: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        vim_delay_ms: u64,
        /// Where the JSON goes.
        #[arg(long, default_value = "docs/bench/lab-service.json")]
        out: PathBuf,
    },
    /// The monitor at scale (issue 12): light servers probed over HTTP
    /// every --poll-s seconds; probes per second, lateness and CPU, then the
    /// primary's power cut with one VM killed: takeover to the first probe,
    /// the longest gap across it, the killed VM's detection and healing.
    BenchMonitor {
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        vms: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        poll_s: u64,
        /// Where the JSON goes.
        #[arg(long, default_value = "docs/bench/lab-monitor.json")]
        out: PathBuf,
    },
    /// Floods from an attacker host (issue 14): 50,000 connections, 2,000
    /// slow headers and a SYN flood against the VIP's API and health ports,
    /// then 50,000 connections against the replication and witness ports,
    /// each while the writer runs; checks that nothing moved. Table and JSON.
    Flood {
        /// How long each flood runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Where the JSON goes.
        #[arg(long, default_value = "docs/bench/lab-flood.json")]
        out: PathBuf,
    },
    /// Brings a cluster up and keeps it until Ctrl-C.
    Up {
        #[arg(long)]
        two_node: bool,
    },
    /// Removes what a crashed lab left: namespaces, processes, mounts.
    Down,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match &args.cmd {
        Cmd::Down => down(),
        cmd => Bins::in_dir(&args.bins).and_then(|bins| match cmd {
            Cmd::Demo => demo(&bins, &args.history_dir),
            Cmd::Scenario {
                fault,
                deployments,
                two_node,
            } => scenarios(&bins, fault, *deployments, !two_node, &args.history_dir),
            Cmd::Chaos {
                seed,
                minutes,
                no_faults,
                cpu_load,
                disk_load,
            } => chaos(
                &bins,
                *seed,
                *minutes,
                *no_faults,
                Load {
                    cpu: *cpu_load,
                    disk: *disk_load,
                },
                &args.history_dir,
            ),
            Cmd::Bench {
                runs,
                deployments,
                faults,
                out,
            } => bench(&bins, *runs, deployments, faults, out),
            Cmd::BenchService {
                servers,
                vim_delay_ms,
                out,
            } => bench_service(&bins, servers, *vim_delay_ms, out),
            Cmd::BenchMonitor { vms, poll_s, out } => bench_monitor(&bins, vms, *poll_s, out),
            Cmd::Flood { seconds, out } => flood(&bins, *seconds, out),
            Cmd::Up { two_node } => up(&bins, !two_node),
            Cmd::Down => unreachable!(),
        }),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("esc-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn flood(bins: &Bins, seconds: u64, out: &std::path::Path) -> anyhow::Result<bool> {
    let opts = esc_lab::flood::Options {
        seconds,
        verbose: true,
        ..Default::default()
    };
    let steps = esc_lab::flood::run("fl", bins, &opts)?;
    println!("| flood | targets | attempts | held at most | writes/s unloaded | writes/s flooded | failed writes | role changes | VIP moves | slowest status ms | longest replication stall ms | pass |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for s in &steps {
        let targets: Vec<String> = s.step.targets.iter().map(|t| t.to_string()).collect();
        println!(
            "| {:?} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
            s.step.kind,
            targets.join(" "),
            s.attack.attempts,
            s.attack.held_max,
            s.unloaded_per_s,
            s.flooded_per_s,
            s.failed_writes,
            s.role_changes,
            s.vip_moves,
            s.status_max_ms,
            s.replication_stall_max_ms,
            if s.pass {
                "yes".to_string()
            } else {
                s.why.join("; ")
            }
        );
    }
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    let doc = serde_json::json!({ "benchmark": "floods from an attacker host (issue 14)", "seconds": seconds, "steps": steps });
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)?;
    eprintln!("JSON written to {}", out.display());
    Ok(steps.iter().all(|s| s.pass))
}

fn faults_from(names: &[String]) -> anyhow::Result<Vec<Fault>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(Fault::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Fault::parse(n).ok_or_else(|| {
                let all: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                anyhow::anyhow!("unknown fault {n:?}: use one of {} or all", all.join(", "))
            })
        })
        .collect()
}

fn row(o: &Outcome) -> String {
    format!(
        "{:<14} {:<29} {:>7} {:>10} {:>10} {:>6} {:>6} {:>7} {:>9} {}",
        o.fault.name(),
        o.class,
        o.deployments,
        o.takeover_ms,
        o.verdict.interruption_ms,
        o.verdict.missing,
        o.verdict.duplicates,
        o.verdict.failed,
        o.verdict.identical_copies,
        if o.pass { "PASS" } else { "FAIL" }
    )
}

const HEADER: &str = "fault          class                         deploys takeover_ms interrupt_ms missing dupes failed identical verdict";

fn scenarios(
    bins: &Bins,
    fault: &str,
    deployments: usize,
    witness: bool,
    history_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    let faults = faults_from(&[fault.to_string()])?;
    let opts = Options {
        deployments,
        witness,
        verbose: true,
        ..Options::default()
    };
    let mut all = true;
    let mut rows = Vec::new();
    for f in faults {
        eprintln!("== {} ({})", f.name(), f.class());
        let path = history_dir.join(format!("scenario-{}.jsonl", f.name()));
        let opts = Options {
            history: Some(path.clone()),
            ..opts.clone()
        };
        let o = scenario::run("lb", bins, f, &opts)?;
        eprintln!("history: {}", path.display());
        all &= o.pass;
        rows.push(o);
    }
    println!("{HEADER}");
    for o in &rows {
        println!("{}", row(o));
    }
    println!("{}", serde_json::to_string(&rows)?);
    Ok(all)
}

fn stats(mut v: Vec<u64>) -> (u64, u64, u64, u64) {
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (v[0], at(0.5), at(0.95), v[v.len() - 1])
}

fn bench(
    bins: &Bins,
    runs: usize,
    sizes: &[usize],
    faults: &[String],
    out: &PathBuf,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        runs > 0 && !sizes.is_empty(),
        "--runs and --deployments must not be empty"
    );
    let faults = faults_from(faults)?;
    let mut results = Vec::new();
    let mut table = Vec::new();
    let mut all = true;
    for &size in sizes {
        for &f in &faults {
            let mut ok = Vec::new();
            let mut missing = 0;
            let mut dupes = 0;
            let mut failed = 0;
            let mut passes = 0;
            for r in 0..runs {
                let opts = Options {
                    deployments: size,
                    ..Options::default()
                };
                let o = scenario::run("lb", bins, f, &opts)?;
                eprintln!(
                    "{} deployments={size} run {}/{runs}: {}",
                    f.name(),
                    r + 1,
                    row(&o)
                );
                ok.push(o.verdict.interruption_ms);
                missing += o.verdict.missing;
                dupes += o.verdict.duplicates;
                failed += o.verdict.failed;
                passes += usize::from(o.pass);
                results.push(o);
            }
            all &= passes == runs;
            let (min, med, p95, max) = stats(ok);
            table.push(format!(
                "| {} | {} | {size} | {runs} | {min} | {med} | {p95} | {max} | {missing} | {dupes} | {failed} |",
                f.name(),
                f.class()
            ));
        }
    }
    println!("| fault | class | deployments | runs | min ms | median ms | p95 ms | max ms | missing | duplicates | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for t in &table {
        println!("{t}");
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("raw results: {}", out.display());
    Ok(all)
}

/// Busy threads until `stop` (bounded by the run's own deadline).
fn cpu_load(n: usize, stop: Arc<AtomicBool>, until: Instant) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    for _ in 0..100_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                }
            })
        })
        .collect()
}

/// Blocks of 1 MiB written and made durable one by one until `stop`, by
/// `n` threads, each over its own file of at most 256 MiB (rewritten from
/// the start), removed at the end. Returns the threads; each answers how
/// many blocks it synced.
fn disk_load(
    n: usize,
    stop: Arc<AtomicBool>,
    until: Instant,
) -> anyhow::Result<Vec<std::thread::JoinHandle<u64>>> {
    use std::io::{Seek, Write};
    const BLOCK: usize = 1 << 20;
    const BLOCKS_MAX: u64 = 256;
    let mut threads = Vec::new();
    for i in 0..n {
        let mut f = tempfile::Builder::new()
            .prefix(&format!("esc-lab-disk-load-{i}-"))
            .tempfile()?;
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let block = vec![0x5au8; BLOCK];
            let mut synced = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if synced.is_multiple_of(BLOCKS_MAX) && f.rewind().is_err() {
                    break;
                }
                if f.write_all(&block).is_err() || f.as_file().sync_data().is_err() {
                    break;
                }
                synced += 1;
            }
            synced
        }));
    }
    Ok(threads)
}

/// What competes with the pair during a chaos run.
#[derive(Debug, Clone, Copy)]
struct Load {
    cpu: usize,
    disk: usize,
}

fn chaos(
    bins: &Bins,
    seed: Option<u64>,
    minutes: u64,
    no_faults: bool,
    load: Load,
    history_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    let seed = seed.unwrap_or_else(|| rand::thread_rng().gen());
    println!(
        "chaos: seed {seed} (rerun with --seed {seed}), {minutes} min, faults {}",
        !no_faults
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Every fault but those that need a data volume of the lab's own
    // (disk-full: it never fills the host's disk): over a long run the
    // store outgrows any volume small enough to fill in RAM. The scenarios
    // and the benchmark cover disk-full on a 160 MiB tmpfs.
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| !f.needs_volume())
        .collect();
    let mut c = Cluster::up("lc", bins.clone(), true, None)?;
    let mut p = c.wait_ready()?;
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = cpu_load(load.cpu, stop.clone(), end + Duration::from_secs(60));
    let started = Instant::now();
    let disk = disk_load(load.disk, stop.clone(), end + Duration::from_secs(60))?;
    let w = Workload::start(&c, 4, usize::MAX, "chaos");
    // Role changes are counted from the nodes' HA logs once the pair is
    // settled: in sync replication the first acknowledged writes mean the
    // standby has followed the primary's epoch too.
    anyhow::ensure!(w.wait_acked(100, READY), "the workload does not progress");
    let role_changes = |c: &Cluster| -> Vec<String> {
        (0..2)
            .flat_map(|i| {
                c.ha_events(i)
                    .into_iter()
                    .filter(|l| l.contains("\"role transition\"") || l.contains("\"role change\""))
                    .map(move |l| format!("esc-{}: {l}", i + 1))
            })
            .collect()
    };
    let settled = role_changes(&c);
    let mut injected = 0;
    while Instant::now() < end {
        if no_faults {
            std::thread::sleep(
                Duration::from_secs(1).min(end.saturating_duration_since(Instant::now())),
            );
            continue;
        }
        let f = faults[rng.gen_range(0..faults.len())];
        // A switchover is the primary's command (the standby refuses it).
        let target = if f == Fault::Switchover || rng.gen_bool(0.8) {
            p
        } else {
            1 - p
        };
        // Times on the client's clock (the history's), to find a gap's cause.
        println!(
            "chaos: {:>7} ms  {} on esc-{}",
            w.now_ms(),
            f.name(),
            target + 1
        );
        let step = |c: &mut Cluster, rng: &mut rand::rngs::StdRng| -> anyhow::Result<usize> {
            c.inject(f, target)?;
            // Let the fault act for a random while, then heal.
            let hold = Duration::from_millis(rng.gen_range(500..5_000));
            std::thread::sleep(hold);
            println!("chaos: {:>7} ms  healed", w.now_ms());
            c.heal(f, target)?;
            c.wait_ready()
        };
        injected += 1;
        match step(&mut c, &mut rng) {
            Ok(primary) => p = primary,
            Err(e) => {
                // What the nodes said, before the lab removes them.
                eprintln!("{}", c.dump());
                return Err(e);
            }
        }
        println!("chaos: {:>7} ms  ready, esc-{} primary", w.now_ms(), p + 1);
    }
    let history = w.finish();
    let path = history_dir.join(format!("chaos-seed{seed}.jsonl"));
    esc_lab::workload::write_history(&path, &history)?;
    println!("history: {}", path.display());
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    if load.disk > 0 {
        let blocks: u64 = disk.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "disk load: {} threads, {blocks} blocks of 1 MiB each made durable: {:.1} MiB/s and as many fdatasyncs/s",
            load.disk,
            blocks as f64 / secs
        );
    }
    let v = check(&c, &history, 0)?;
    let false_takeovers = if no_faults {
        let during: Vec<String> = role_changes(&c)
            .into_iter()
            .filter(|l| !settled.contains(l))
            .collect();
        for l in &during {
            println!("role change without a fault: {l}");
        }
        if !during.is_empty() {
            for i in 0..2 {
                println!("esc-{} HA events:", i + 1);
                for l in c.ha_events(i) {
                    println!("  {l}");
                }
            }
        }
        during.len()
    } else {
        0
    };
    println!(
        "chaos verdict: {} faults, {} acknowledged, {} failed, {} missing, {} duplicates, two-writer epochs {}, identical {}, VIP on {:?}, role changes without a fault: {}",
        injected, v.acknowledged, v.failed, v.missing, v.duplicates, v.two_writer_epochs + v.stale_epoch_acks, v.identical_copies, v.vip_holders, false_takeovers
    );
    println!("{}", serde_json::to_string(&v)?);
    Ok(v.pass(false) && false_takeovers == 0)
}

fn bench_service(
    bins: &Bins,
    sizes: &[usize],
    vim_delay_ms: u64,
    out: &std::path::Path,
) -> anyhow::Result<bool> {
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("== {n} servers");
        let r = esc_lab::service_bench::run(bins, n, vim_delay_ms, true)?;
        eprintln!("   {}", serde_json::to_string(&r)?);
        rows.push(r);
    }
    println!("| servers | deployments | VIM delay | servers before the fault | takeover to first resumed VIM call | takeover to all completed | deploy rate before the fault | end to end (takeover included) | one server per VM | a sweep pass (servers listed, strays) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    for r in &rows {
        println!(
            "| {} | {} | {} ms | {} | {} | {} | {:.0} servers/s | {:.0} servers/s | {} ({} creates) | {} ({}, {}) |",
            r.servers,
            r.deployments,
            r.vim_delay_ms,
            r.servers_before_fault,
            ms(r.takeover_to_first_vim_call_ms),
            ms(r.takeover_to_all_completed_ms),
            r.deploy_rate_before_fault,
            r.deploy_rate_end_to_end,
            if r.pass { "yes" } else { "NO" },
            r.creates,
            ms(r.sweep_pass_ms),
            r.sweep_listed,
            r.sweep_strays
        );
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let doc = serde_json::json!({
        "benchmark": "the service at scale: takeover during a deploy on esc-vim",
        "command": format!("esc-lab bench-service --servers {} --vim-delay-ms {vim_delay_ms}", sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")),
        "rows": rows,
    });
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)?;
    Ok(rows.iter().all(|r| r.pass))
}

fn bench_monitor(
    bins: &Bins,
    sizes: &[usize],
    poll_s: u64,
    out: &std::path::Path,
) -> anyhow::Result<bool> {
    anyhow::ensure!((1..=3_600).contains(&poll_s), "--poll-s: 1 to 3600 seconds");
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("== {n} VMs");
        let r = esc_lab::monitor_bench::run(bins, n, poll_s, true)?;
        eprintln!("   {}", serde_json::to_string(&r)?);
        rows.push(r);
    }
    print!("{}", esc_lab::monitor_bench::table(&rows));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let command = format!(
        "esc-lab bench-monitor --vms {} --poll-s {poll_s}",
        sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let doc = esc_lab::monitor_bench::json(&rows, &command);
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)?;
    Ok(rows.iter().all(|r| r.pass))
}

/// The demo's VNFs: deployments of this many VMs each.
const DEMO_VNFS: usize = 4;
const DEMO_VMS: u32 = 2;

/// A runtime and an HTTP client for the demo's calls from the client
/// namespace.
fn demo_client() -> anyhow::Result<(tokio::runtime::Runtime, reqwest::Client)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    Ok((rt, c))
}

/// In the client namespace: the tenant, then the demo's deployments (each
/// resent with its key until answered); their operation ids.
fn demo_deploy() -> anyhow::Result<Vec<(String, String)>> {
    let (rt, c) = demo_client()?;
    rt.block_on(async {
        let base = format!("http://{}:8080", esc_lab::cluster::VIP);
        let tenant = serde_json::json!({"name": "svc"});
        esc_lab::service::send(
            &c,
            reqwest::Method::POST,
            &format!("{base}/v0/tenants"),
            "demo-tenant",
            "",
            Some(&tenant),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        let mut ops = Vec::new();
        for i in 0..DEMO_VNFS {
            let body = esc_lab::service::spec(i, DEMO_VMS);
            let a = esc_lab::service::send(
                &c,
                reqwest::Method::POST,
                &format!("{base}/v0/deployments"),
                &format!("demo-{i}"),
                "",
                Some(&body),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
            let (status, v, _) = a.last().cloned().unwrap_or_default();
            anyhow::ensure!(status == 202, "deploy {i}: HTTP {status} {v}");
            ops.push((
                esc_lab::service::dep_name(i),
                v["operation"].as_str().unwrap_or("").to_string(),
            ));
        }
        Ok(ops)
    })
}

/// In the client namespace: each demo VNF's state and VMs alive, now.
fn demo_states() -> anyhow::Result<Vec<String>> {
    let (rt, c) = demo_client()?;
    rt.block_on(async {
        let base = format!("http://{}:8080", esc_lab::cluster::VIP);
        let mut out = Vec::new();
        for i in 0..DEMO_VNFS {
            let name = esc_lab::service::dep_name(i);
            let d: serde_json::Value = c
                .get(format!("{base}/v0/deployments/{name}"))
                .basic_auth("admin", Some(esc_lab::cluster::PASSWORD))
                .send()
                .await?
                .json()
                .await?;
            let alive = d["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["state"] == "VM_ALIVE_STATE")
                .count();
            out.push(format!(
                "{name} {} ({alive} of {DEMO_VMS} VMs alive)",
                d["state"].as_str().unwrap_or("?")
            ));
        }
        Ok(out)
    })
}

/// In the client namespace: waits for every demo VNF to settle; one line
/// per VNF, the VIM's server names and how many creates it saw.
fn demo_vnfs() -> anyhow::Result<(Vec<String>, Vec<String>, usize)> {
    let (rt, c) = demo_client()?;
    rt.block_on(async {
        let base = format!("http://{}:8080", esc_lab::cluster::VIP);
        let mut lines = Vec::new();
        for i in 0..DEMO_VNFS {
            let name = esc_lab::service::dep_name(i);
            let end = Instant::now() + Duration::from_secs(60);
            let mut d = serde_json::Value::Null;
            while Instant::now() < end {
                if let Ok(r) = c
                    .get(format!("{base}/v0/deployments/{name}"))
                    .basic_auth("admin", Some(esc_lab::cluster::PASSWORD))
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        d = v;
                        if d["current_op"].is_null() && d["state"].is_string() {
                            break;
                        }
                    }
                }
                // Polling pace of a client, not synchronisation.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let vms: Vec<String> = d["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    format!(
                        "{} {}",
                        v["server_id"]
                            .as_str()
                            .unwrap_or("-")
                            .chars()
                            .take(8)
                            .collect::<String>(),
                        v["state"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            lines.push(format!(
                "{name}: {} [{}]",
                d["state"].as_str().unwrap_or("unknown"),
                vms.join(", ")
            ));
        }
        let servers = esc_lab::service::vim_servers()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let history =
            esc_lab::service::control(&c, reqwest::Method::GET, "/control/v1/history", None)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        let creates = history["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["what"] == "create")
            .count();
        Ok((lines, servers, creates))
    })
}

fn demo(bins: &Bins, history_dir: &std::path::Path) -> anyhow::Result<bool> {
    println!("== bringing up esc-1, esc-2 and the witness in network namespaces (escadm ha set + reload), and the lab's VIM (esc-vim)");
    let (mut c, _vim_secrets) = esc_lab::service::up_with("ld", bins, Fault::PowerFailure, true)?;
    let p = c.wait_ready()?;
    let s = 1 - p;
    println!(
        "== ready: esc-{} primary with the VIP {}, esc-{} standby in sync",
        p + 1,
        esc_lab::cluster::VIP,
        s + 1
    );
    let w = Workload::start(&c, 4, usize::MAX, "demo");
    let show = |c: &Cluster, w: &Workload, last: &mut (usize, Instant)| {
        let acked = w.acked();
        let rate = (acked - last.0) as f64 / last.1.elapsed().as_secs_f64().max(0.001);
        *last = (acked, Instant::now());
        let vip: Vec<String> = c
            .vip_holders()
            .iter()
            .map(|i| format!("esc-{}", i + 1))
            .collect();
        println!(
            "  t={:>5.1}s  esc-1 {:<8} esc-2 {:<8} VIP on {:<12} writes acknowledged {:>6}  ({:>6.0}/s)",
            w.start.elapsed().as_secs_f64(),
            c.role(0),
            c.role(1),
            if vip.is_empty() { "nobody".into() } else { vip.join(",") },
            acked,
            rate
        );
    };
    let mut last = (0, Instant::now());
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(500));
        show(&c, &w, &mut last);
    }
    println!(
        "== deploying {DEMO_VNFS} VNFs of {DEMO_VMS} VMs each through the VIP (POST /v0/deployments: 202 once durable on both nodes)"
    );
    let accepted = c.lab.in_ns("client", demo_deploy).join();
    match &accepted {
        Ok(Ok(ops)) => {
            for (name, op) in ops {
                println!("   {name}: accepted, operation {op}");
            }
        }
        Ok(Err(e)) => println!("   deploy failed: {e}"),
        Err(_) => println!("   the deploying client panicked"),
    }
    if let Ok(Ok(states)) = c.lab.in_ns("client", demo_states).join() {
        println!("   just before the failure: {}", states.join(", "));
    }
    let fault_ms = w.now_ms();
    println!(
        "== power failure of esc-{} while the VNFs are being deployed (every process killed, link cut)",
        p + 1
    );
    c.inject(Fault::PowerFailure, p)?;
    let t0 = Instant::now();
    let mut took = None;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(250));
        show(&c, &w, &mut last);
        if took.is_none() && c.role(s) == "PRIMARY" && c.vip_holders().contains(&s) {
            took = Some(t0.elapsed());
            println!(
                "== esc-{} took over after {} ms",
                s + 1,
                t0.elapsed().as_millis()
            );
        }
    }
    println!("== esc-{} powers on again and rejoins as standby", p + 1);
    c.heal(Fault::PowerFailure, p)?;
    let ok = wait_for(READY, || c.ready() == Some(s));
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(500));
        show(&c, &w, &mut last);
    }
    println!(
        "== the VNFs, as the new primary finished them (GET /v0/deployments/NAME through the VIP):"
    );
    let vnfs = c.lab.in_ns("client", demo_vnfs).join();
    let vnfs_ok = match vnfs {
        Ok(Ok((lines, servers, creates))) => {
            for l in &lines {
                println!("   {l}");
            }
            let want = DEMO_VNFS * DEMO_VMS as usize;
            let distinct: std::collections::BTreeSet<&String> = servers.iter().collect();
            println!(
                "   VIM: {} servers for {want} VMs ({} distinct names), {creates} creates: {}",
                servers.len(),
                distinct.len(),
                if servers.len() == want && distinct.len() == want && creates == want {
                    "nothing duplicated, nothing lost"
                } else {
                    "MISMATCH"
                }
            );
            lines.iter().all(|l| l.contains("SERVICE_ACTIVE_STATE"))
                && servers.len() == want
                && distinct.len() == want
                && creates == want
        }
        Ok(Err(e)) => {
            println!("   cannot read the VNFs: {e}");
            false
        }
        Err(_) => false,
    };
    let history = w.finish();
    let path = history_dir.join("demo.jsonl");
    esc_lab::workload::write_history(&path, &history)?;
    let v = check(&c, &history, fault_ms)?;
    println!(
        "== verdict (the checker read both stores and the history, {}):",
        path.display()
    );
    println!("   acknowledged writes      {}", v.acknowledged);
    println!("   missing on a node        {}", v.missing);
    println!("   applied twice            {}", v.duplicates);
    println!("   failed requests          {}", v.failed);
    println!(
        "   two writers at once      {}",
        v.two_writer_epochs + v.stale_epoch_acks
    );
    println!("   identical copies         {}", v.identical_copies);
    println!("   VIP on                   {:?}", v.vip_holders);
    println!(
        "   client-visible interruption {} ms (the original product: 2 to 5 minutes)",
        v.interruption_ms
    );
    let pass = v.pass(false) && ok && took.is_some() && vnfs_ok;
    println!(
        "== {}; removing the lab",
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(pass)
}

fn up(bins: &Bins, witness: bool) -> anyhow::Result<bool> {
    let c = Cluster::up("lu", bins.clone(), witness, None)?;
    let p = c.wait_ready()?;
    println!("up: esc-{} primary; homes:", p + 1);
    for (i, n) in c.nodes.iter().enumerate() {
        println!(
            "  esc-{}: {} (namespace {})",
            i + 1,
            n.home.display(),
            c.lab.ns(&n.ns_host)
        );
    }
    println!("Ctrl-C tears it down.");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.thread_block()?;
    std::thread::spawn(move || {
        let _ = signals.wait();
        s2.store(true, Ordering::Relaxed);
    });
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "  esc-1 {:<8} esc-2 {:<8} VIP on {:?}",
            c.role(0),
            c.role(1),
            c.vip_holders()
        );
    }
    Ok(true)
}

/// Removes namespaces, processes and mounts a crashed lab left behind.
fn down() -> anyhow::Result<bool> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        if !esc_lab::is_lab_namespace(ns) {
            continue;
        }
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", ns])
            .output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .status();
        removed += 1;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for m in mounts.lines().filter(|l| l.starts_with("esc-lab ")) {
        if let Some(path) = m.split_whitespace().nth(1) {
            let _ = std::process::Command::new("umount")
                .args(["-l", path])
                .status();
            removed += 1;
        }
    }
    println!("down: removed {removed} namespace(s)/mount(s)");
    Ok(true)
}
