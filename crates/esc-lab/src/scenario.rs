//! One named scenario per failure class (issue 5): bring the pair up with
//! its witness, preload deployments, run the workload, inject the fault on
//! the primary, wait for the takeover, heal, let the old primary rejoin,
//! and check the stores and the client's history.

use crate::cluster::{wait_for, Bins, Cluster, Fault, READY};
use crate::workload::{check, Verdict, Workload};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deployments written before the fault (the managed state's size).
    pub deployments: usize,
    pub witness: bool,
    /// Concurrent client writers.
    pub writers: usize,
    /// Print progress.
    pub verbose: bool,
    /// Where the client's history goes (JSON lines), if anywhere.
    pub history: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            deployments: 10,
            witness: true,
            writers: 4,
            verbose: false,
            history: None,
        }
    }
}

/// What one run found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub fault: Fault,
    pub class: &'static str,
    pub deployments: usize,
    /// From the fault to the new primary holding the VIP, as polled.
    pub takeover_ms: u64,
    pub verdict: Verdict,
    /// The HA log lines of the node the fault hit (role changes and why).
    #[serde(skip)]
    pub faulted_node_events: Vec<String>,
    pub pass: bool,
}

fn say(opts: &Options, msg: &str) {
    if opts.verbose {
        eprintln!("  {msg}");
    }
}

/// Runs `fault` once on a fresh cluster.
pub fn run(tag: &str, bins: &Bins, fault: Fault, opts: &Options) -> anyhow::Result<Outcome> {
    let mut c = Cluster::up(
        tag,
        bins.clone(),
        opts.witness,
        fault.needs_volume().then_some(160),
    )?;
    let r = run_on(&mut c, fault, opts);
    if r.as_ref().map_or(true, |o| !o.pass) {
        eprintln!("{}", c.dump());
    }
    r
}

fn run_on(c: &mut Cluster, fault: Fault, opts: &Options) -> anyhow::Result<Outcome> {
    let p = c.wait_ready()?;
    let s = 1 - p;
    say(opts, &format!("pair ready: esc-{} primary", p + 1));
    if opts.deployments > 0 {
        let pre = Workload::start(c, 16, opts.deployments, "pre");
        anyhow::ensure!(
            pre.wait_acked(opts.deployments, Duration::from_secs(600)),
            "preloading {} deployments did not finish",
            opts.deployments
        );
        let h = pre.finish();
        anyhow::ensure!(h.iter().all(|r| r.outcome == "ok"), "preload failed");
        say(opts, &format!("{} deployments preloaded", opts.deployments));
    }
    let w = Workload::start(c, opts.writers, usize::MAX, "w");
    anyhow::ensure!(w.wait_acked(100, READY), "the workload does not progress");
    let fault_ms = w.now_ms();
    let t0 = Instant::now();
    say(
        opts,
        &format!("injecting {} on esc-{}", fault.name(), p + 1),
    );
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
    let before = w.acked();
    anyhow::ensure!(
        w.wait_acked(before + 100, READY),
        "writes do not resume after the takeover"
    );
    c.heal(fault, p)?;
    let ready = c.wait_ready()?;
    say(
        opts,
        &format!(
            "healed; esc-{} primary, esc-{} standby",
            ready + 1,
            2 - ready
        ),
    );
    let before = w.acked();
    anyhow::ensure!(
        w.wait_acked(before + 50, READY),
        "writes stall after the heal"
    );
    let history = w.finish();
    if opts.verbose {
        for i in 0..2 {
            for l in c.ha_events(i) {
                say(opts, &format!("esc-{}: {l}", i + 1));
            }
        }
    }
    if let Some(path) = &opts.history {
        crate::workload::write_history(path, &history)?;
    }
    let verdict = check(c, &history, fault_ms)?;
    let pass = verdict.pass(false);
    Ok(Outcome {
        fault,
        class: fault.class(),
        deployments: opts.deployments,
        takeover_ms,
        verdict,
        faulted_node_events: c.ha_events(p),
        pass,
    })
}
