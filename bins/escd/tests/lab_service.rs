//! Issue 11, "Done when": the service under each failure class of the
//! seed, on real processes in network namespaces with the lab's VIM
//! (`esc_lab::service`): 50 deployments of 2 VMs deployed through the VIP
//! while the fault hits the primary, then 25 undeployed. Each run checks
//! that every accepted operation completed once, that the VIM holds
//! exactly the servers that should exist, that every callback arrived with
//! its transaction id, and that the event stream read through the VIP is
//! contiguous across the takeover. One run adds VIM API faults (5 % of
//! calls failing, 1 % stalling past the manager's call timeout).

use esc_lab::cluster::{Bins, Fault};
use esc_lab::service::{run, Options};
use std::path::Path;

fn bins() -> Bins {
    Bins::beside(Path::new(env!("CARGO_BIN_EXE_escd")))
        .expect("build escadm first: scripts/test.sh does (cargo build --workspace --bins)")
}

fn service(fault: Fault, api_faults: Option<serde_json::Value>) {
    if !esc_lab::allowed() {
        return;
    }
    let opts = Options {
        verbose: true,
        api_faults,
        ..Options::default()
    };
    let r = run("sv", &bins(), fault, &opts).unwrap_or_else(|e| panic!("{}: {e:#}", fault.name()));
    eprintln!(
        "{}: takeover {} ms, {} operations completed, {} servers ({} creates), {} events over {} connection(s), API faults {}",
        r.fault, r.takeover_ms, r.completed, r.servers_on_vim, r.creates, r.events_read, r.stream_connections, r.api_fault_counts
    );
    assert!(r.pass, "{}: {r:#?}", fault.name());
}

#[test]
fn deploys_survive_power_failure() {
    service(Fault::PowerFailure, None);
}

#[test]
fn deploys_survive_a_partition_of_the_primary() {
    service(Fault::Partition, None);
}

#[test]
fn deploys_survive_a_dead_vm() {
    service(Fault::DeadVm, None);
}

#[test]
fn deploys_survive_a_service_hang() {
    service(Fault::ServiceHang, None);
}

#[test]
fn deploys_survive_a_failing_disk() {
    service(Fault::DiskIoError, None);
}

#[test]
fn deploys_survive_a_switchover() {
    service(Fault::Switchover, None);
}

#[test]
fn deploys_survive_power_failure_with_vim_api_faults() {
    service(
        Fault::PowerFailure,
        Some(serde_json::json!({
            "fail_rate": 0.05, "stall_rate": 0.01, "stall_ms": 3000, "seed": 11
        })),
    );
}
