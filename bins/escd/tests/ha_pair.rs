//! Issue 4, "Done when": the HA pair as operators run it, with real `escd`
//! processes in network namespaces (the lab's cluster, `esc_lab::cluster`:
//! hosts esc-1, esc-2, a witness and a client on a bridge, configured with
//! `escadm ha set` + `escadm reload`, VRRP on eth0 and the VIP 192.0.2.100).
//!
//! A client in its own namespace writes deployments through the VIP with
//! idempotency keys, resending on 503 and connection errors, and records
//! which node and epoch acknowledged each write (`esc_lab::workload`).
//! After each run the checker reads both stores: every acknowledged write
//! on both, identical copies, no epoch acknowledged by two nodes, the VIP on
//! one host, no failed request.
//!
//! Scenarios: automatic takeover after SIGKILL of the primary; a full
//! partition of the primary with a witness (the old primary steps down,
//! never a second writer); `escadm ha switchover` and back, then a graceful
//! stop (SIGTERM) of the primary; FAULT and handover when the primary's data
//! volume fills up. Timing bounds prove the mechanism with a margin a loaded
//! 2-core machine cannot flake on; the tight figures are benchmarks.

use esc_lab::cluster::{wait_for, Bins, Cluster, Fault, READY};
use esc_lab::workload::{check, Rec, Workload};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

fn bins() -> Bins {
    Bins::beside(Path::new(env!("CARGO_BIN_EXE_escd")))
        .expect("build escadm first: scripts/test.sh does (cargo build --workspace --bins)")
}

/// The lab cluster in witness mode, or None (skipped) without root.
fn cluster(tag: &str, volume_mib: Option<u64>) -> Option<Guard> {
    if !esc_lab::allowed() {
        return None;
    }
    Some(Guard(
        Cluster::up(tag, bins(), true, volume_mib).expect("cluster up"),
    ))
}

/// Prints what each node said and logged when a test fails.
struct Guard(Cluster);

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.dump());
        }
    }
}

fn until(c: &Cluster, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(READY, cond),
        "timed out waiting for: {what}\n{}",
        c.dump()
    );
}

fn acked(w: &Workload, n: usize) {
    assert!(
        w.wait_acked(n, Duration::from_secs(60)),
        "{n} writes not acknowledged in time"
    );
}

/// Waits until node `i` is the ready primary (after a switchover the old
/// state is visible for a moment).
fn primary_is(c: &Cluster, i: usize, what: &str) {
    until(c, what, || c.role(i) == "PRIMARY");
    assert_eq!(c.wait_ready().expect(what), i, "{what}");
}

/// The checker, with no failure allowed.
fn verdict(c: &Cluster, history: &[Rec], fault_ms: u64) {
    let v = check(c, history, fault_ms).expect("checker");
    eprintln!("checker: {v:?}");
    assert!(v.pass(false), "{v:#?}");
}

/// The acknowledgements by `old` all come before the first by `new`
/// (responses travel concurrently: their own jitter is allowed).
fn handover_is_clean(history: &[Rec], old: &str, new: &str) {
    let last_old = history
        .iter()
        .filter(|r| r.outcome == "ok" && r.node == old)
        .map(|r| r.done_ms)
        .max();
    let first_new = history
        .iter()
        .filter(|r| r.outcome == "ok" && r.node == new)
        .map(|r| r.done_ms)
        .min();
    if let (Some(o), Some(n)) = (last_old, first_new) {
        assert!(
            o <= n + 200,
            "{old} acknowledged writes {} ms after {new} began",
            o - n
        );
    }
}

#[test]
fn sigkill_of_the_primary_is_taken_over_automatically() {
    let Some(mut g) = cluster("hk", None) else {
        return;
    };
    let c = &mut g.0;
    let p = c.wait_ready().expect("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(c, 4, 600, "k");
    acked(&w, 100);
    let fault_ms = w.now_ms();
    let killed_at = Instant::now();
    c.stop(p, Signal::SIGKILL);
    // (The dead process's kernel keeps the VIP address until escd starts
    // again and removes it; the survivor's gratuitous ARP redirects clients.)
    until(c, "the standby takes over with the VIP", || {
        c.role(s) == "PRIMARY" && c.vip_holders().contains(&s)
    });
    eprintln!("takeover seen after {:?}", killed_at.elapsed());
    assert_eq!(c.state_file(s), "MASTER");
    acked(&w, w.acked() + 100);
    // The old primary comes back as standby and catches up.
    c.start(p).expect("restart");
    assert_eq!(c.wait_ready().expect("rejoined"), s, "no preemption");
    let history = w.finish();
    verdict(c, &history, fault_ms);
    handover_is_clean(
        &history,
        &format!("esc-{}", p + 1),
        &format!("esc-{}", s + 1),
    );
}

#[test]
fn partition_of_the_primary_with_a_witness_never_makes_a_second_writer() {
    let Some(mut g) = cluster("hp", None) else {
        return;
    };
    let c = &mut g.0;
    let p = c.wait_ready().expect("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(c, 4, usize::MAX, "p");
    acked(&w, 100);
    let fault_ms = w.now_ms();
    c.inject(Fault::Partition, p).expect("partition");
    until(
        c,
        "the standby takes over; the old primary steps down",
        || c.role(s) == "PRIMARY" && c.role(p) != "PRIMARY" && c.vip_holders() == vec![s],
    );
    acked(&w, w.acked() + 100);
    // The isolated node holds no lease: it must not lead while cut off.
    assert_ne!(c.role(p), "PRIMARY", "the isolated node leads again");
    c.heal(Fault::Partition, p).expect("heal");
    c.wait_ready().expect("the old primary rejoins as standby");
    let history = w.finish();
    verdict(c, &history, fault_ms);
    handover_is_clean(
        &history,
        &format!("esc-{}", p + 1),
        &format!("esc-{}", s + 1),
    );
}

#[test]
fn switchover_and_back_and_graceful_stop_with_zero_failed_requests() {
    let Some(mut g) = cluster("hs", None) else {
        return;
    };
    let c = &mut g.0;
    let p = c.wait_ready().expect("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(c, 4, usize::MAX, "s");
    acked(&w, 100);
    // Refused on the standby, with a clear message.
    let e = c.escadm(s, &["ha", "switchover"]).unwrap_err().to_string();
    assert!(e.contains("not primary"), "{e}");
    c.escadm(p, &["ha", "switchover"]).expect("switchover");
    primary_is(c, s, "switched over");
    acked(&w, w.acked() + 100);
    // Failback is the same command on the new primary.
    c.escadm(s, &["ha", "switchover"]).expect("switch back");
    primary_is(c, p, "switched back");
    acked(&w, w.acked() + 100);
    // A graceful stop of the primary (SIGTERM) hands over the same way.
    c.stop(p, Signal::SIGTERM);
    until(c, "the standby takes over at the stop", || {
        c.role(s) == "PRIMARY" && c.vip_holders() == vec![s]
    });
    acked(&w, w.acked() + 100);
    c.start(p).expect("restart");
    primary_is(c, s, "the stopped node rejoins as standby");
    let history = w.finish();
    verdict(c, &history, 0);
}

#[test]
fn a_full_data_volume_on_the_primary_is_fault_and_hands_over() {
    let Some(mut g) = cluster("hf", Some(160)) else {
        return;
    };
    let c = &mut g.0;
    let p = c.wait_ready().expect("a ready pair (witness mode)");
    let s = 1 - p;
    let w = Workload::start(c, 2, usize::MAX, "f");
    acked(&w, 50);
    let fault_ms = w.now_ms();
    c.inject(Fault::DiskFull, p).expect("fill the volume");
    until(
        c,
        "the primary goes FAULT and the standby takes over",
        || c.role(p) == "FAULT" && c.role(s) == "PRIMARY" && c.vip_holders() == vec![s],
    );
    assert_eq!(c.state_file(p), "FAULT");
    let e = c.escadm(p, &["status"]).unwrap_err().to_string();
    assert!(e.contains("Fault"), "escadm status on FAULT: {e}");
    acked(&w, w.acked() + 50);
    // Space back: healthy again, it rejoins as standby.
    c.heal(Fault::DiskFull, p).expect("free the volume");
    until(c, "the faulted node rejoins as standby", || {
        c.role(p) == "STANDBY"
    });
    c.wait_ready().expect("pair ready after the fault");
    let history = w.finish();
    verdict(c, &history, fault_ms);
}
