//! Issue 14, "Done when", first item: from an attacker host of its own, 50,000
//! connections, then 2,000 slow partial headers, then a SYN flood (hping3)
//! against the VIP's northbound and health ports, 60 s each, while the
//! lab's writer runs; then 50,000 connections against the replication and
//! witness ports. Each step: no role change, the VIP never moved, no
//! failed write and 90 % of the writer's attempts answered as unloaded, the
//! writer's rate at least half its unloaded one (the 90 % figure is
//! `esc-lab flood`'s, in docs/benchmarks.md), `escadm status` answered
//! within 1 s, the standby's applied index never stood still for a second
//! (`esc_lab::flood`).

use esc_lab::cluster::Bins;
use esc_lab::flood::{run, Options};
use std::path::Path;

#[test]
fn floods_move_nothing() {
    if !esc_lab::allowed() {
        return;
    }
    let bins = Bins::beside(Path::new(env!("CARGO_BIN_EXE_escd")))
        .expect("build escadm first: scripts/test.sh does (cargo build --workspace --bins)");
    let seconds = std::env::var("ESC_FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // The writer's rate on this noisy 2-core machine swings by a third
    // from one minute to the next, attacker or not: the test proves the
    // mechanism (no outage, nothing moved, every attempt answered) and
    // gates the rate at half; `esc-lab flood` (release) reports the rate
    // against the 90 % (docs/benchmarks.md).
    let opts = Options {
        seconds,
        rate_share_min: 0.5,
        verbose: true,
        ..Options::default()
    };
    let steps = run("lf", &bins, &opts).expect("flood run");
    for s in &steps {
        eprintln!("{}", serde_json::to_string(s).unwrap_or_default());
    }
    let failed: Vec<_> = steps.iter().filter(|s| !s.pass).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
