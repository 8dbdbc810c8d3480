//! Which VMs the monitor watches, and in which phase, from the replicated
//! records (`esc_monitor::watch::of_service`).

use esc_domain::model::{
    DeploymentSpec, OperationKind, OperationRecord, ServiceRecord, ServiceState, VmKey, VmRecord,
    VmState,
};
use esc_monitor::watch::of_service;
use esc_monitor::Phase;

fn spec() -> DeploymentSpec {
    DeploymentSpec::from_json(
        serde_json::json!({
            "name": "web", "tenant": "t1",
            "vm_groups": [{
                "name": "g", "image": "i", "flavor": "f",
                "scaling": { "min_active": 1, "max_active": 3, "cooldown": 30 },
                "interfaces": [{ "nicid": 0, "network": "n" }],
                "kpis": [{ "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
                           "metric_occurrences_true": 1, "metric_occurrences_false": 3,
                           "metric_collector": { "type": "ICMPPing", "nicid": 0, "poll_frequency": 5 } }],
                "rules": [{ "event_name": "VM_ALIVE",
                            "actions": ["FALSE recover autohealing", "TRUE esc_vm_alive_notification"] }]
            }]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn alive(i: u32) -> VmRecord {
    let mut v = VmRecord::new(VmKey {
        deployment_id: "web".into(),
        group: "g".into(),
        index: i,
        generation: 0,
    });
    v.state = VmState::Alive;
    v.server_id = Some(format!("s{i}"));
    v.addresses.insert(0, format!("203.0.113.{}", 10 + i));
    v.up_at_ms = Some(1_000);
    v
}

fn service(vms: Vec<VmRecord>, current_op: Option<&str>) -> ServiceRecord {
    ServiceRecord {
        spec: spec(),
        state: ServiceState::Active,
        current_op: current_op.map(str::to_string),
        vms,
        created_at_ms: 0,
        last_op: None,
        scaling: Default::default(),
        monitor_disabled: false,
    }
}

#[test]
fn idle_alive_vms_run_with_their_group_s_scale_view() {
    let mut s = service(vec![alive(0), alive(1)], None);
    s.scaling.entry("g".into()).or_default().started = 7;
    let w = of_service(&s, None);
    assert_eq!(w.len(), 2);
    assert!(w.iter().all(|w| w.phase == Phase::Running));
    let g = &w[0].scale;
    assert_eq!(
        (g.vms, g.min_active, g.max_active, g.cooldown_ms, g.started),
        (2, 1, 3, 30_000, 7)
    );
}

/// A scale in removing a VM that was up: paused, never booting (its
/// answer must not make it alive again); the VM it keeps stays watched.
#[test]
fn a_vm_being_removed_is_paused_not_booting() {
    let s = service(vec![alive(0), alive(1)], Some("in"));
    let mut op = OperationRecord::new(
        "in".into(),
        "web".into(),
        OperationKind::Scale {
            group: "g".into(),
            out: false,
            reason: "load".into(),
        },
    );
    op.vms = s.spec.scale_vms("web", &s.vms, "g", false);
    assert_eq!(op.vms[1].state, VmState::Undeploying);
    let phases: Vec<(u32, Phase)> = of_service(&s, Some(&op))
        .into_iter()
        .map(|w| (w.key.index, w.phase))
        .collect();
    assert_eq!(phases, [(0, Phase::Running), (1, Phase::Paused)]);
    // A scale out's new VM, up: booting on its operation.
    let mut op = OperationRecord::new(
        "out".into(),
        "web".into(),
        OperationKind::Scale {
            group: "g".into(),
            out: true,
            reason: "load".into(),
        },
    );
    op.vms = s.spec.scale_vms("web", &s.vms, "g", true);
    op.vms[2].up_at_ms = Some(2_000);
    op.vms[2].addresses.insert(0, "203.0.113.12".into());
    op.vms[2].server_id = Some("s2".into());
    let w = of_service(&service(vec![alive(0), alive(1)], Some("out")), Some(&op));
    let booting: Vec<u32> = w
        .iter()
        .filter(|w| matches!(w.phase, Phase::Booting { .. }))
        .map(|w| w.key.index)
        .collect();
    assert_eq!(booting, [2]);
}

/// One VM's recovery does not blind the monitor to the others; a deploy,
/// an update or an undeploy pauses them all.
#[test]
fn a_recovery_pauses_its_vm_only() {
    let s = service(vec![alive(0), alive(1)], Some("rec"));
    let mut op = OperationRecord::new(
        "rec".into(),
        "web".into(),
        OperationKind::Recover {
            vm: alive(0).key.server_name(),
            reason: "VM_ALIVE turned FALSE".into(),
        },
    );
    let mut v0 = alive(0);
    v0.state = VmState::Rebooting;
    v0.up_at_ms = None;
    op.vms = vec![v0];
    let phases: Vec<(u32, Phase)> = of_service(&s, Some(&op))
        .into_iter()
        .map(|w| (w.key.index, w.phase))
        .collect();
    assert_eq!(phases, [(0, Phase::Paused), (1, Phase::Running)]);
    assert!(of_service(&s, Some(&op)).iter().all(|w| w.scale.busy));
    let up = OperationRecord::new(
        "rec".into(),
        "web".into(),
        OperationKind::Update { spec: spec() },
    );
    assert!(of_service(&s, Some(&up))
        .iter()
        .all(|w| w.phase == Phase::Paused));
}
