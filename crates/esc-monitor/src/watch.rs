//! Which VMs the monitor watches, and in which phase, from the replicated
//! records of one service and its operation in progress (pure: the runtime
//! calls it for each service the change feed names).
//!
//! - A group without KPIs is not watched.
//! - A VM of the service with an address and no operation on the service:
//!   `Running` if alive, `Paused` otherwise (in error, stopped: an
//!   operator's or a recovery's business).
//! - While a deploy, an update or an undeploy runs, the service's VMs are
//!   `Paused`. While an operation on some of its VMs runs (a recovery, a
//!   manual action, a scale), the VMs it does not touch stay `Running`:
//!   one VM's recovery does not blind the monitor to the others (their
//!   decisions wait for the operation: one at a time per deployment).
//! - A deployment whose monitoring is disabled (`DISABLE_MONITOR`) has
//!   its VMs `Paused`; a bootup check still decides its operations.
//! - The operation's VMs whose server is up but not yet alive are
//!   `Booting` (their bootup check decides).

use crate::core::{GroupScale, Phase, Watched};
use esc_domain::kpi::bootup_kpi;
use esc_domain::model::{
    OperationKind, OperationRecord, ServiceRecord, VmGroup, VmRecord, VmState,
};
use std::collections::BTreeMap;

/// Every VM of `service` to watch; `op`: its operation in progress, if any.
pub fn of_service(service: &ServiceRecord, op: Option<&OperationRecord>) -> Vec<Watched> {
    let mut out: BTreeMap<String, Watched> = BTreeMap::new();
    let group =
        |name: &str| -> Option<&VmGroup> { service.spec.vm_groups.iter().find(|g| g.name == name) };
    let busy = service.current_op.is_some();
    let scales = scales(service);
    // An operation on some VMs only, and whether it touches `v` (the VM
    // is in its record other than alive).
    let narrow = op.is_some_and(|o| {
        matches!(
            o.kind,
            OperationKind::Recover { .. }
                | OperationKind::VmAction { .. }
                | OperationKind::ServiceAction { .. }
                | OperationKind::Scale { .. }
        )
    });
    let touched = |v: &VmRecord| {
        op.is_some_and(|o| {
            o.vms.iter().any(|x| {
                x.key.group == v.key.group
                    && x.key.index == v.key.index
                    && x.state != VmState::Alive
            })
        })
    };
    for v in &service.vms {
        let Some(g) = group(&v.key.group) else {
            continue;
        };
        if g.kpis.is_empty() || v.addresses.is_empty() || v.server_id.is_none() {
            continue;
        }
        let phase = if !service.monitor_disabled
            && v.state == VmState::Alive
            && (!busy || (narrow && !touched(v)))
        {
            Phase::Running
        } else {
            Phase::Paused
        };
        out.insert(v.key.server_name(), watched(service, g, v, phase, &scales));
    }
    if let Some(op) = op.filter(|o| !o.state.settled()) {
        for v in &op.vms {
            // A recovery's group is its own copy; others are the spec's
            // (an update's new one, or the service's).
            let g = op
                .recovery
                .as_ref()
                .map(|r| &r.group)
                .or_else(|| {
                    op.kind
                        .spec()
                        .and_then(|s| s.vm_groups.iter().find(|g| g.name == v.key.group))
                })
                .or_else(|| group(&v.key.group));
            let Some(g) = g else { continue };
            // Only a VM its operation brings up (a new one, a rebooted
            // one) waits for its bootup check; one an update or a scale in
            // removes keeps its `up_at_ms` and must not be.
            let booting = v.up_at_ms.is_some()
                && matches!(v.state, VmState::Deploying | VmState::Rebooting)
                && bootup_kpi(&g.kpis, &g.rules).is_some();
            if !booting {
                continue;
            }
            let deadline_ms = v
                .up_at_ms
                .unwrap_or(0)
                .saturating_add(g.bootup_time.saturating_mul(1_000));
            let phase = Phase::Booting {
                op: op.id.clone(),
                deadline_ms,
            };
            out.insert(v.key.server_name(), watched(service, g, v, phase, &scales));
        }
    }
    out.into_values().collect()
}

/// Each group's scaling view (its VMs counted once per service).
fn scales(service: &ServiceRecord) -> BTreeMap<&str, GroupScale> {
    let mut out: BTreeMap<&str, GroupScale> = service
        .spec
        .vm_groups
        .iter()
        .map(|g| {
            let scaled = service.scaling.get(&g.name).cloned().unwrap_or_default();
            let s = GroupScale {
                vms: 0,
                min_active: g.scaling.min_active,
                max_active: g.scaling.max_active,
                cooldown_ms: g.scaling.cooldown.saturating_mul(1_000),
                busy: service.current_op.is_some(),
                started: scaled.started,
                settled_at_ms: scaled.settled_at_ms,
            };
            (g.name.as_str(), s)
        })
        .collect();
    for v in &service.vms {
        if let Some(s) = out.get_mut(v.key.group.as_str()) {
            s.vms += 1;
        }
    }
    out
}

fn watched(
    service: &ServiceRecord,
    g: &VmGroup,
    v: &VmRecord,
    phase: Phase,
    scales: &BTreeMap<&str, GroupScale>,
) -> Watched {
    Watched {
        scale: scales.get(g.name.as_str()).cloned().unwrap_or_default(),
        recovery_wait_ms: g.recovery_policy.recovery_wait_time.saturating_mul(1_000),
        key: v.key.clone(),
        deployment: service.spec.name.clone(),
        addresses: v.addresses.clone(),
        kpis: g.kpis.clone(),
        rules: g.rules.clone(),
        phase,
        recoveries: v.recoveries,
    }
}
