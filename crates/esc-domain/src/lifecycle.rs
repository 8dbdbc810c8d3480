//! The replicated side of lifecycle operations (issue 11, item 2): starting
//! an operation on a service, and applying each step the primary's runner
//! proposes, with the notifications they produce. Deterministic like the
//! rest of `apply`: every node holds the same records and the same events.

use crate::codec::{add_count, read, write};
use crate::command::Command;
use crate::keys;
use crate::model::{
    Callback, LcmControl, OperationKind, OperationRecord, OperationState, Recovery, RecoveryMode,
    ServiceRecord, ServiceState, Step, Tenant, VmAction, VmRecord, VmState,
};
use crate::outcome::{EventKind, Outcome, Refused};
use esc_state::{State, StateError};

fn refused(r: Refused) -> (Outcome, Vec<EventKind>) {
    (Outcome::Refused { refused: r }, Vec::new())
}

fn esc_event(
    event: &str,
    service: &ServiceRecord,
    vm: Option<(&str, &str)>,
    status: &str,
    message: String,
) -> EventKind {
    EventKind::Esc {
        event: event.into(),
        depname: service.spec.name.clone(),
        tenant: service.spec.tenant.clone(),
        vm_group: vm.map(|(g, _)| g.to_string()),
        vm_target: vm.map(|(_, t)| t.to_string()),
        status: status.into(),
        message,
    }
}

/// The word of a service's state, as the API shows it.
fn state_word(state: ServiceState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The notification of an operation accepted (or retried).
fn accepted_event(kind: &OperationKind) -> &'static str {
    match kind {
        OperationKind::Deploy { .. } => "SERVICE_DEPLOYING",
        OperationKind::Undeploy => "SERVICE_UNDEPLOYING",
        OperationKind::Update { .. } => "SERVICE_UPDATING",
        OperationKind::VmAction { action, .. } => match action {
            VmAction::Reboot => "VM_REBOOTING",
            VmAction::Stop => "VM_STOPPING",
            VmAction::Start => "VM_STARTING",
        },
        OperationKind::ServiceAction { action } => match action {
            VmAction::Reboot => "SERVICE_REBOOTING",
            VmAction::Stop => "SERVICE_STOPPING",
            VmAction::Start => "SERVICE_STARTING",
        },
        OperationKind::Recover { .. } => "VM_RECOVERY_INIT",
        OperationKind::Scale { out: true, .. } => "VM_SCALE_OUT_INIT",
        OperationKind::Scale { out: false, .. } => "VM_SCALE_IN_INIT",
    }
}

/// The VM an operation is about, for its notifications (a manual action's).
fn target_vm(record: &OperationRecord) -> Option<(&str, String)> {
    match record.kind {
        OperationKind::VmAction { .. } | OperationKind::Recover { .. } => record
            .vms
            .first()
            .map(|v| (v.key.group.as_str(), v.key.server_name())),
        // The VM a scale adds or removes.
        OperationKind::Scale { out, .. } => {
            let moving = if out {
                VmState::Deploying
            } else {
                VmState::Undeploying
            };
            record
                .vms
                .iter()
                .find(|v| v.state == moving)
                .map(|v| (v.key.group.as_str(), v.key.server_name()))
        }
        _ => None,
    }
}

/// The service an update or a scale changes: it must exist and be active
/// (else the refusal, `what` saying why).
fn active(
    existing: Option<ServiceRecord>,
    deployment: &str,
    what: &str,
) -> Result<ServiceRecord, (Outcome, Vec<EventKind>)> {
    let Some(s) = existing else {
        return Err(refused(Refused::NoSuchDeployment {
            name: deployment.into(),
        }));
    };
    if s.state != ServiceState::Active {
        return Err(refused(Refused::WrongState {
            deployment: deployment.into(),
            state: state_word(s.state),
            what: what.into(),
        }));
    }
    Ok(s)
}

/// The service a VM or service action (or a recovery) acts on: it must
/// exist and be active or in error (a reboot may be what mends it).
fn actionable(
    existing: Option<ServiceRecord>,
    deployment: &str,
    what: &str,
) -> Result<ServiceRecord, (Outcome, Vec<EventKind>)> {
    let Some(s) = existing else {
        return Err(refused(Refused::NoSuchDeployment {
            name: deployment.into(),
        }));
    };
    if !matches!(s.state, ServiceState::Active | ServiceState::Error) {
        return Err(refused(Refused::WrongState {
            deployment: deployment.into(),
            state: state_word(s.state),
            what: format!("{what} needs an active deployment (or one in error)"),
        }));
    }
    Ok(s)
}

/// `StartOperation`: a deploy creates the service (its tenant must exist,
/// the name be free); an undeploy needs the service and no operation in
/// progress on it; an update and a VM action need an active service (a VM
/// action also one in error: a reboot may be what mends it). An operation
/// with no VM to touch (a deployment of no VM group) settles here, in the
/// same entry: nothing is left for the runner.
pub fn start(
    index: u64,
    cmd: &Command,
    op_id: &str,
    deployment: &str,
    kind: &OperationKind,
    callback: Option<&str>,
    state: &mut dyn State,
) -> Result<(Outcome, Vec<EventKind>), StateError> {
    if read::<OperationRecord>(state, &keys::operation(op_id))?.is_some() {
        return Ok(refused(Refused::Invalid(format!(
            "operation id {op_id} is already used"
        ))));
    }
    let sk = keys::service(deployment);
    let existing: Option<ServiceRecord> = read(state, &sk)?;
    if let Some(op) = existing.as_ref().and_then(|s| s.current_op.clone()) {
        return Ok(refused(Refused::OperationInProgress {
            deployment: deployment.into(),
            op_id: op,
        }));
    }
    let (service, event) = match kind {
        OperationKind::Deploy { spec } => {
            if existing.is_some() {
                return Ok(refused(Refused::DeploymentExists {
                    name: deployment.into(),
                }));
            }
            if read::<Tenant>(state, &keys::tenant(&spec.tenant))?.is_none() {
                return Ok(refused(Refused::NoSuchTenant {
                    name: spec.tenant.clone(),
                }));
            }
            add_count(state, keys::DEPLOYMENT_COUNT, 1)?;
            let s = ServiceRecord {
                spec: spec.clone(),
                state: ServiceState::Deploying,
                current_op: Some(op_id.into()),
                vms: Vec::new(),
                created_at_ms: cmd.at_ms,
                last_op: None,
                scaling: Default::default(),
                monitor_disabled: false,
            };
            (s, "SERVICE_DEPLOYING")
        }
        OperationKind::Undeploy => {
            let Some(mut s) = existing else {
                return Ok(refused(Refused::NoSuchDeployment {
                    name: deployment.into(),
                }));
            };
            s.state = ServiceState::Undeploying;
            s.current_op = Some(op_id.into());
            (s, "SERVICE_UNDEPLOYING")
        }
        OperationKind::Update { spec } => {
            let mut s = match active(
                existing,
                deployment,
                "only an active deployment can be updated (retry or fail its last operation, or undeploy it)",
            ) {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            if let Err(e) = spec.check_update_of(&s.spec) {
                return Ok(refused(Refused::Invalid(e.to_string())));
            }
            s.state = ServiceState::Updating;
            s.current_op = Some(op_id.into());
            (s, "SERVICE_UPDATING")
        }
        OperationKind::VmAction { vm, .. } | OperationKind::Recover { vm, .. } => {
            let mut s = match actionable(existing, deployment, "a VM action") {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            if !s
                .vms
                .iter()
                .any(|v| v.key.server_name() == *vm && v.server_id.is_some())
            {
                return Ok(refused(Refused::NoSuchVm {
                    deployment: deployment.into(),
                    vm: vm.clone(),
                }));
            }
            s.current_op = Some(op_id.into());
            (s, accepted_event(kind))
        }
        OperationKind::ServiceAction { .. } => {
            let mut s = match actionable(existing, deployment, "a service action") {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            if s.vms.is_empty() || s.vms.iter().any(|v| v.server_id.is_none()) {
                return Ok(refused(Refused::Invalid(format!(
                    "deployment {deployment} has no server for every VM: act on each VM"
                ))));
            }
            s.current_op = Some(op_id.into());
            (s, accepted_event(kind))
        }
        OperationKind::Scale { group, out, .. } => {
            let mut s = match active(existing, deployment, "only an active deployment is scaled") {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            let Some(g) = s.spec.vm_groups.iter().find(|g| g.name == *group) else {
                return Ok(refused(Refused::Invalid(format!(
                    "deployment {deployment} has no VM group {group:?}"
                ))));
            };
            let have = s.vms.iter().filter(|v| v.key.group == *group).count() as u32;
            let bound = if *out {
                (have >= g.scaling.max_active).then_some("max_active")
            } else {
                (have <= g.scaling.min_active).then_some("min_active")
            };
            if let Some(b) = bound {
                return Ok(refused(Refused::WrongState {
                    deployment: deployment.into(),
                    state: state_word(s.state),
                    what: format!("group {group} has {have} VM(s), its {b}"),
                }));
            }
            s.scaling.entry(group.clone()).or_default().started += 1;
            s.current_op = Some(op_id.into());
            (s, accepted_event(kind))
        }
    };
    let mut record = OperationRecord::new(op_id.into(), deployment.into(), kind.clone());
    record.tid.clone_from(&cmd.tid);
    record.callback = callback.map(str::to_string);
    record.started_at_ms = cmd.at_ms;
    match kind {
        // What the last deploy left is what the undeploy removes (and the
        // VIM is listed for leftovers).
        OperationKind::Undeploy => record.vms = service.vms.clone(),
        OperationKind::Update { spec } => record.vms = spec.update_vms(deployment, &service.vms),
        OperationKind::VmAction { vm, action } => {
            record.vms = service
                .vms
                .iter()
                .filter(|v| v.key.server_name() == *vm)
                .map(|v| VmRecord {
                    state: action.running_state(),
                    error: None,
                    action_mark: None,
                    up_at_ms: None,
                    ..v.clone()
                })
                .collect();
        }
        OperationKind::Recover { vm, .. } => {
            let Some(v) = service.vms.iter().find(|v| v.key.server_name() == *vm) else {
                unreachable!("checked above");
            };
            let Some(group) = service
                .spec
                .vm_groups
                .iter()
                .find(|g| g.name == v.key.group)
            else {
                return Ok(refused(Refused::Invalid(format!(
                    "VM {vm} is of no group of the deployment"
                ))));
            };
            let recovery = Recovery {
                attempt: 1,
                attempts: group.recovery_policy.max_retries.max(1),
                action: group.recovery_policy.action,
                group: group.clone(),
            };
            let mut v = v.clone();
            v.begin(recovery.mode(), &mut record.cleanup);
            record.vms = vec![v];
            record.recovery = Some(recovery);
        }
        OperationKind::ServiceAction { action } => {
            record.vms = service
                .vms
                .iter()
                .map(|v| VmRecord {
                    state: action.running_state(),
                    error: None,
                    action_mark: None,
                    up_at_ms: None,
                    ..v.clone()
                })
                .collect();
        }
        OperationKind::Scale { group, out, .. } => {
            record.vms = service
                .spec
                .scale_vms(deployment, &service.vms, group, *out);
            record.group = service
                .spec
                .vm_groups
                .iter()
                .find(|g| g.name == *group)
                .cloned();
        }
        OperationKind::Deploy { .. } => {}
    }
    let vm = target_vm(&record);
    let message = match kind {
        OperationKind::Recover { reason, .. } => format!("operation {op_id}: {reason}"),
        _ => format!("operation {op_id} accepted"),
    };
    let mut events = vec![esc_event(
        event,
        &service,
        vm.as_ref().map(|(g, t)| (*g, t.as_str())),
        "SUCCESS",
        message,
    )];
    if let Some(e) = attempt_event(&record, &service) {
        events.push(e);
    }
    // No VM group ever: no server can exist, nothing to ask the VIM.
    if service.spec.vm_groups.is_empty()
        && record.vms.is_empty()
        && kind.spec().is_none_or(|s| s.vm_groups.is_empty())
    {
        record.state = OperationState::Completed;
        settle(index, cmd, &record, service, state, &mut events)?;
    } else {
        write(state, &keys::active_operation(op_id), &index)?;
        put_service(index, state, &service)?;
    }
    write(state, &keys::operation(op_id), &record)?;
    Ok((
        Outcome::OperationStarted {
            op_id: op_id.into(),
            deployment: deployment.into(),
            state: record.state,
        },
        events,
    ))
}

/// What an operation's settlement does to its service (one place for both
/// an operation settled by its last step and one settled at its start):
/// the service's state, its removal after an undeploy, the runner's index,
/// the notification and the callback owed to the client.
fn settle(
    index: u64,
    cmd: &Command,
    record: &OperationRecord,
    mut service: ServiceRecord,
    state: &mut dyn State,
    events: &mut Vec<EventKind>,
) -> Result<(), StateError> {
    state.delete(&keys::active_operation(&record.id))?;
    let failed = record.state != OperationState::Completed;
    let message = record.error.clone().unwrap_or_else(|| "completed".into());
    let status = if failed { "FAILURE" } else { "SUCCESS" };
    service.current_op = None;
    service.last_op = Some(record.id.clone());
    match &record.kind {
        // A deploy rolled back: every server gone, like an undeploy.
        OperationKind::Deploy { .. } if record.state == OperationState::RolledBack => {
            events.push(esc_event(
                "SERVICE_UNDEPLOYED",
                &service,
                None,
                "SUCCESS",
                format!("operation {} rolled back", record.id),
            ));
            drop_service(index, &service, state)?;
            add_count(state, keys::DEPLOYMENT_COUNT, -1)?;
        }
        OperationKind::Deploy { .. } => {
            service.state = if failed {
                ServiceState::Error
            } else {
                ServiceState::Active
            };
            service.vms = record.vms.clone();
            events.push(esc_event("SERVICE_ALIVE", &service, None, status, message));
            put_service(index, state, &service)?;
        }
        OperationKind::Undeploy => {
            events.push(esc_event(
                "SERVICE_UNDEPLOYED",
                &service,
                None,
                status,
                message,
            ));
            if failed {
                service.state = ServiceState::Error;
                put_service(index, state, &service)?;
            } else {
                drop_service(index, &service, state)?;
                add_count(state, keys::DEPLOYMENT_COUNT, -1)?;
            }
        }
        // The new spec and VMs only once completed; a rollback leaves the
        // old spec and the VMs still there; a failure the old VMs (the
        // operation's record shows what exists), in error.
        OperationKind::Update { spec } => {
            match record.state {
                OperationState::Completed => {
                    for v in &record.vms {
                        let was = service
                            .spec
                            .vm_groups
                            .iter()
                            .find(|g| g.name == v.key.group);
                        let now = spec.vm_groups.iter().find(|g| g.name == v.key.group);
                        let kept = service.vms.iter().any(|o| o.key == v.key);
                        if kept && was != now {
                            events.push(esc_event(
                                "VM_UPDATED",
                                &service,
                                Some((&v.key.group, &v.key.server_name())),
                                "SUCCESS",
                                "its group changed: day-0 changes apply to VMs created from now on"
                                    .into(),
                            ));
                        }
                    }
                    if watched(&service) {
                        // It may watch nothing from now on (no VM group
                        // left): the monitor still learns its VMs went.
                        note_change(index, &service.spec.name, state)?;
                    }
                    service.spec = spec.clone();
                    service.vms = record.vms.clone();
                    service.state = ServiceState::Active;
                }
                OperationState::RolledBack => {
                    service.vms = record.vms.clone();
                    service.state = ServiceState::Active;
                }
                _ => service.state = ServiceState::Error,
            }
            let message = if record.state == OperationState::RolledBack {
                format!("operation {} rolled back", record.id)
            } else {
                message
            };
            events.push(esc_event(
                "SERVICE_UPDATED",
                &service,
                None,
                status,
                message,
            ));
            put_service(index, state, &service)?;
        }
        // The VM as the recovery left it (a redeploy's has a new server and
        // generation), one recovery more; a failed one puts the service in
        // error.
        OperationKind::Recover { .. } => {
            if let Some(v) = record.vms.first() {
                if let Some(sv) = service
                    .vms
                    .iter_mut()
                    .find(|x| x.key.group == v.key.group && x.key.index == v.key.index)
                {
                    let recoveries = sv.recoveries + 1;
                    *sv = VmRecord {
                        state: if failed {
                            VmState::Error
                        } else {
                            VmState::Alive
                        },
                        action_mark: None,
                        recoveries,
                        ..v.clone()
                    };
                }
                if failed {
                    service.state = ServiceState::Error;
                }
                events.push(esc_event(
                    "VM_RECOVERY_COMPLETE",
                    &service,
                    Some((&v.key.group, &v.key.server_name())),
                    status,
                    message,
                ));
            }
            put_service(index, state, &service)?;
        }
        // The group's new VMs once completed (a rollback's: those still
        // there); a failure leaves the service in error; either way the
        // cooldown starts.
        OperationKind::Scale { group, out, .. } => {
            // The VM added, or removed.
            let (from, to) = if *out {
                (&record.vms, &service.vms)
            } else {
                (&service.vms, &record.vms)
            };
            let moved = from
                .iter()
                .find(|v| v.key.group == *group && !to.iter().any(|o| o.key == v.key))
                .map(|v| v.key.server_name());
            match record.state {
                OperationState::Completed | OperationState::RolledBack => {
                    service.vms = record.vms.clone();
                    service.state = ServiceState::Active;
                }
                _ => service.state = ServiceState::Error,
            }
            service
                .scaling
                .entry(group.clone())
                .or_default()
                .settled_at_ms = Some(cmd.at_ms);
            events.push(esc_event(
                if *out {
                    "VM_SCALE_OUT_COMPLETE"
                } else {
                    "VM_SCALE_IN_COMPLETE"
                },
                &service,
                moved.as_deref().map(|m| (group.as_str(), m)),
                status,
                message,
            ));
            put_service(index, state, &service)?;
        }
        // The VMs as the action left them; the service's state is
        // unchanged. A VM action's notification names its VM; a service
        // action's one names the deployment (an entry's events are
        // bounded, its VMs are not).
        OperationKind::VmAction { action, .. } | OperationKind::ServiceAction { action } => {
            for v in &record.vms {
                if let Some(sv) = service.vms.iter_mut().find(|x| x.key == v.key) {
                    sv.state = if failed { VmState::Error } else { v.state };
                    sv.error.clone_from(&v.error);
                    sv.action_mark = None;
                }
            }
            let whole = matches!(record.kind, OperationKind::ServiceAction { .. });
            let event = match (action, whole) {
                (VmAction::Reboot, false) => "VM_REBOOTED",
                (VmAction::Stop, false) => "VM_STOPPED",
                (VmAction::Start, false) => "VM_STARTED",
                (VmAction::Reboot, true) => "SERVICE_REBOOTED",
                (VmAction::Stop, true) => "SERVICE_STOPPED",
                (VmAction::Start, true) => "SERVICE_STARTED",
            };
            let vm = record
                .vms
                .first()
                .filter(|_| !whole)
                .map(|v| (v.key.group.clone(), v.key.server_name()));
            events.push(esc_event(
                event,
                &service,
                vm.as_ref().map(|(g, t)| (g.as_str(), t.as_str())),
                status,
                message,
            ));
            put_service(index, state, &service)?;
        }
    }
    owe_callback(cmd, record, state)
}

/// `SetMonitoring`: ESC's `DISABLE_MONITOR` / `ENABLE_MONITOR` of a
/// deployment (any state: an operator may silence a deployment in error),
/// with `VM_MONITOR_UNSET` / `VM_MONITOR_SET`.
pub fn set_monitoring(
    index: u64,
    deployment: &str,
    enabled: bool,
    state: &mut dyn State,
) -> Result<(Outcome, Vec<EventKind>), StateError> {
    let Some(mut service) = read::<ServiceRecord>(state, &keys::service(deployment))? else {
        return Ok(refused(Refused::NoSuchDeployment {
            name: deployment.into(),
        }));
    };
    service.monitor_disabled = !enabled;
    put_service(index, state, &service)?;
    let event = esc_event(
        if enabled {
            "VM_MONITOR_SET"
        } else {
            "VM_MONITOR_UNSET"
        },
        &service,
        None,
        "SUCCESS",
        format!(
            "monitoring {}",
            if enabled { "enabled" } else { "disabled" }
        ),
    );
    Ok((
        Outcome::MonitoringSet {
            deployment: deployment.into(),
            enabled,
        },
        vec![event],
    ))
}

/// Writes a service record and notes the change in the services' change
/// feed (what the monitor follows).
fn put_service(
    index: u64,
    state: &mut dyn State,
    service: &ServiceRecord,
) -> Result<(), StateError> {
    write(state, &keys::service(&service.spec.name), service)?;
    if watched(service) {
        note_change(index, &service.spec.name, state)?;
    }
    Ok(())
}

/// A service that never has a VM (no VM group: the lab's workload, the
/// write benchmark) is of no interest to the monitor: its writes are not
/// in the feed and cost nothing more.
fn watched(service: &ServiceRecord) -> bool {
    !service.spec.vm_groups.is_empty() || !service.vms.is_empty()
}

/// Removes a service record, noting the change as [`put_service`] does.
fn drop_service(
    index: u64,
    service: &ServiceRecord,
    state: &mut dyn State,
) -> Result<(), StateError> {
    state.delete(&keys::service(&service.spec.name))?;
    if watched(service) {
        note_change(index, &service.spec.name, state)?;
        note_gone(index, &service.spec.name, state)?;
    }
    Ok(())
}

/// Deployment names remembered as removed ([`note_gone`]): a server of one
/// lands within minutes of its removal if ever, long before this many
/// other deployments are removed.
pub const GONE_MAX: u64 = 10_000;

/// Remembers that deployment `name` went at `index` (`keys::GONE`), the
/// oldest forgotten past [`GONE_MAX`]. One name, one entry: a name removed
/// again moves to the end.
fn note_gone(index: u64, name: &str, state: &mut dyn State) -> Result<(), StateError> {
    match read::<u64>(state, &keys::gone(name))? {
        Some(before) => {
            state.delete(&keys::gone_order(before, name))?;
        }
        None => {
            add_count(state, keys::GONE_COUNT, 1)?;
        }
    }
    write(state, &keys::gone(name), &index)?;
    write(state, &keys::gone_order(index, name), &())?;
    if crate::codec::count(state, keys::GONE_COUNT)? > GONE_MAX {
        if let Some(k) = first_key(state, keys::GONE_ORDER)? {
            if let Some(old) = k
                .strip_prefix(keys::GONE_ORDER)
                .and_then(|rest| rest.split_once('/'))
                .map(|(_, n)| n.to_string())
            {
                state.delete(&keys::gone(&old))?;
            }
            state.delete(&k)?;
            add_count(state, keys::GONE_COUNT, -1)?;
        }
    }
    Ok(())
}

/// Services changed by entry `index`, under `svcchg/<index>` (bounded:
/// the oldest go past [`SERVICE_CHANGES_MAX`]; a reader that fell behind
/// them reads every service again).
fn note_change(index: u64, name: &str, state: &mut dyn State) -> Result<(), StateError> {
    let k = keys::service_change(index);
    let mut change: ServiceChange = match read(state, &k)? {
        Some(c) => c,
        None => ServiceChange {
            seq: add_count(state, keys::SERVICE_CHANGE_SEQ, 1)?,
            names: Vec::new(),
        },
    };
    if change.names.iter().any(|n| n == name) {
        return Ok(());
    }
    let fresh = change.names.is_empty();
    change.names.push(name.to_string());
    write(state, &k, &change)?;
    if fresh && add_count(state, keys::SERVICE_CHANGE_COUNT, 1)? > SERVICE_CHANGES_MAX {
        if let Some(k) = first_key(state, keys::SERVICE_CHANGE)? {
            state.delete(&k)?;
            add_count(state, keys::SERVICE_CHANGE_COUNT, -1)?;
        }
    }
    Ok(())
}

/// The first key under `prefix` (the oldest of a log-ordered kind).
fn first_key(state: &dyn esc_state::StateRead, prefix: &str) -> Result<Option<String>, StateError> {
    let mut first = None;
    state.scan(prefix, None, 1, &mut |k, _| {
        first = Some(k.to_string());
        false
    })?;
    Ok(first)
}

/// One entry of the services' change feed: its number (1, 2, 3, ...: a
/// reader that sees one skipped knows it fell behind the bound) and the
/// services the entry changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceChange {
    pub seq: u64,
    pub names: Vec<String>,
}

/// Entries of the services' change feed kept.
pub const SERVICE_CHANGES_MAX: u64 = 10_000;

/// The result owed to the operation's callback URL, if it has one, as it
/// stands now (a later settlement overwrites one not yet delivered).
fn owe_callback(
    cmd: &Command,
    record: &OperationRecord,
    state: &mut dyn State,
) -> Result<(), StateError> {
    if let Some(url) = &record.callback {
        let delivery = Callback {
            op_id: record.id.clone(),
            tid: record.tid.clone(),
            url: url.clone(),
            deployment: record.deployment_id.clone(),
            state: record.state,
            message: record.error.clone(),
            settled_at_ms: cmd.at_ms,
        };
        write(state, &keys::callback(&record.id), &delivery)?;
    }
    Ok(())
}

/// `RecordStep`: applies a committed step to its operation and the
/// service, with its notifications. A settled operation leaves the
/// runner's index; a completed undeploy removes the service.
pub fn record(
    index: u64,
    cmd: &Command,
    step: &Step,
    state: &mut dyn State,
) -> Result<(Outcome, Vec<EventKind>), StateError> {
    let op_id = match step {
        Step::ServerBound { op, .. }
        | Step::VmActive { op, .. }
        | Step::ServerUp { op, .. }
        | Step::VmStopped { op, .. }
        | Step::ActionMarked { op, .. }
        | Step::VmFailed { op, .. }
        | Step::ServerGone { op, .. }
        | Step::Settled { op, .. } => op.clone(),
    };
    let ok = keys::operation(&op_id);
    let Some(mut record) = read::<OperationRecord>(state, &ok)? else {
        return Ok(refused(Refused::NoSuchOperation { op_id }));
    };
    let sk = keys::service(&record.deployment_id);
    let Some(mut service) = read::<ServiceRecord>(state, &sk)? else {
        return Ok(refused(Refused::NoSuchDeployment {
            name: record.deployment_id.clone(),
        }));
    };
    let was = record.clone();
    let service_before = service.clone();
    record.apply(cmd.at_ms, step);
    // A server up whose group has no bootup check is alive at once.
    if let Step::ServerUp { key, .. } = step {
        let spec = record.kind.spec().unwrap_or(&service.spec);
        let checked = spec
            .vm_groups
            .iter()
            .find(|g| g.name == key.group)
            .is_some_and(|g| crate::kpi::bootup_kpi(&g.kpis, &g.rules).is_some());
        if let Some(v) = record.vms.iter_mut().find(|v| &v.key == key) {
            if !checked && matches!(v.state, VmState::Deploying | VmState::Rebooting) {
                v.state = VmState::Alive;
            }
        }
    }
    let mut events = Vec::new();
    let recovering = matches!(record.kind, OperationKind::Recover { .. });
    // A recovery attempt that failed (its reboot or redeploy did not bring
    // the VM back): the next one, while there are attempts left.
    if let (Step::VmFailed { key, error, .. }, Some(r)) = (step, record.recovery.as_mut()) {
        if r.attempt < r.attempts && !record.state.settled() {
            r.attempt += 1;
            let mode = r.mode();
            if let Some(v) = record.vms.iter_mut().find(|v| &v.key == key) {
                v.begin(mode, &mut record.cleanup);
            }
            events.push(esc_event(
                "VM_RECOVERY_INIT",
                &service,
                Some((&key.group, &key.server_name())),
                "FAILURE",
                format!("attempt {} failed: {error}", r.attempt - 1),
            ));
            if let Some(e) = attempt_event(&record, &service) {
                events.push(e);
            }
        }
    }
    if record != was {
        match step {
            Step::ServerBound {
                key,
                server_id,
                adopted,
                ..
            } => events.push(esc_event(
                if recovering {
                    "VM_RECOVERY_DEPLOYED"
                } else if matches!(record.kind, OperationKind::Scale { .. }) {
                    "VM_SCALE_OUT_DEPLOYED"
                } else {
                    "VM_DEPLOYED"
                },
                &service,
                Some((&key.group, &key.server_name())),
                "SUCCESS",
                format!(
                    "server {server_id} {}",
                    if *adopted { "adopted" } else { "created" }
                ),
            )),
            // A manual action's end is told when it settles.
            Step::VmActive { key, .. }
                if !matches!(
                    record.kind,
                    OperationKind::VmAction { .. }
                        | OperationKind::Recover { .. }
                        | OperationKind::ServiceAction { .. }
                ) =>
            {
                events.push(esc_event(
                    "VM_ALIVE",
                    &service,
                    Some((&key.group, &key.server_name())),
                    "SUCCESS",
                    "VM is alive".into(),
                ))
            }
            Step::ServerUp { key, .. }
                if !recovering
                    && vm_of(&record, key).is_some_and(|v| v.state == VmState::Alive) =>
            {
                events.push(esc_event(
                    "VM_ALIVE",
                    &service,
                    Some((&key.group, &key.server_name())),
                    "SUCCESS",
                    "VM is alive (its server runs; no bootup check)".into(),
                ))
            }
            Step::VmActive { .. }
            | Step::ServerUp { .. }
            | Step::VmStopped { .. }
            | Step::ActionMarked { .. } => {}
            Step::VmFailed { key, error, .. } => events.push(esc_event(
                "VM_DEPLOYED",
                &service,
                Some((&key.group, &key.server_name())),
                "FAILURE",
                error.clone(),
            )),
            Step::ServerGone { server_id, .. } => {
                let vm = was
                    .vms
                    .iter()
                    .find(|v| v.server_id.as_deref() == Some(server_id.as_str()))
                    .map(|v| (v.key.group.clone(), v.key.server_name()));
                events.push(esc_event(
                    if recovering {
                        "VM_RECOVERY_UNDEPLOYED"
                    } else {
                        "VM_UNDEPLOYED"
                    },
                    &service,
                    vm.as_ref().map(|(g, t)| (g.as_str(), t.as_str())),
                    "SUCCESS",
                    format!("server {server_id} deleted"),
                ))
            }
            Step::Settled { .. } => {}
        }
    }
    if record.state.settled() && !was.state.settled() {
        record.settled_at_ms = Some(cmd.at_ms);
        settle(index, cmd, &record, service, state, &mut events)?;
    } else if matches!(record.kind, OperationKind::Deploy { .. })
        && record.vms.iter().all(|v| v.state == VmState::Alive)
    {
        // A deploy's VMs show on the service as soon as all are alive (an
        // update's only once it completed: until then they are the old).
        service.vms = record.vms.clone();
        put_service(index, state, &service)?;
    }
    if record != was && !record.state.settled() {
        // The runner reads again only the records whose version moved.
        write(state, &keys::active_operation(&op_id), &index)?;
        // The monitor too (a VM up and booting, say).
        if watched(&service_before) {
            note_change(index, &record.deployment_id, state)?;
        }
    }
    write(state, &ok, &record)?;
    Ok((
        Outcome::StepRecorded {
            op_id,
            state: record.state,
        },
        events,
    ))
}

/// The notification of a recovery attempt starting (a reboot's; a
/// redeploy's are its server's removal and creation).
fn attempt_event(record: &OperationRecord, service: &ServiceRecord) -> Option<EventKind> {
    let r = record.recovery.as_ref()?;
    let v = record.vms.first()?;
    (r.mode() == RecoveryMode::Reboot).then(|| {
        esc_event(
            "VM_RECOVERY_REBOOT",
            service,
            Some((&v.key.group, &v.key.server_name())),
            "SUCCESS",
            format!("attempt {}: hard reboot", r.attempt),
        )
    })
}

fn vm_of<'a>(record: &'a OperationRecord, key: &crate::model::VmKey) -> Option<&'a VmRecord> {
    record.vms.iter().find(|v| &v.key == key)
}

/// `ControlOperation`: `retry` puts a FAILED_TEMP operation back in the
/// runner's hands (its deployment must have no other operation running);
/// `fail` ends it FAILED, with a callback saying so.
pub fn control(
    index: u64,
    cmd: &Command,
    op_id: &str,
    action: LcmControl,
    state: &mut dyn State,
) -> Result<(Outcome, Vec<EventKind>), StateError> {
    let ok = keys::operation(op_id);
    let Some(mut record) = read::<OperationRecord>(state, &ok)? else {
        return Ok(refused(Refused::NoSuchOperation {
            op_id: op_id.into(),
        }));
    };
    if record.state != OperationState::FailedTemp {
        let word = serde_json::to_value(record.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return Ok(refused(Refused::NotFailedTemp {
            op_id: op_id.into(),
            state: word,
        }));
    }
    let sk = keys::service(&record.deployment_id);
    let mut service: Option<ServiceRecord> = read(state, &sk)?;
    let mut events = Vec::new();
    match action {
        LcmControl::Retry => {
            let Some(s) = service.as_mut() else {
                return Ok(refused(Refused::NoSuchDeployment {
                    name: record.deployment_id.clone(),
                }));
            };
            if let Some(other) = s.current_op.clone() {
                return Ok(refused(Refused::OperationInProgress {
                    deployment: record.deployment_id.clone(),
                    op_id: other,
                }));
            }
            record.retry();
            s.current_op = Some(op_id.into());
            s.state = match record.kind {
                OperationKind::Deploy { .. } => ServiceState::Deploying,
                OperationKind::Undeploy => ServiceState::Undeploying,
                OperationKind::Update { .. } => ServiceState::Updating,
                // Before the action: its failure left the state as it was.
                OperationKind::VmAction { .. } | OperationKind::ServiceAction { .. } => s.state,
                OperationKind::Recover { .. } | OperationKind::Scale { .. } => ServiceState::Active,
            };
            let vm = target_vm(&record);
            events.push(esc_event(
                accepted_event(&record.kind),
                s,
                vm.as_ref().map(|(g, t)| (*g, t.as_str())),
                "SUCCESS",
                format!("operation {op_id} retried"),
            ));
            put_service(index, state, s)?;
            write(state, &keys::active_operation(op_id), &index)?;
        }
        LcmControl::Rollback => {
            if !matches!(
                record.kind,
                OperationKind::Deploy { .. }
                    | OperationKind::Update { .. }
                    | OperationKind::Scale { .. }
            ) {
                return Ok(refused(Refused::Invalid(format!(
                    "operation {op_id} is not a deploy, an update or a scale: only those can be rolled back (retry or fail it)"
                ))));
            }
            let Some(s) = service.as_mut() else {
                return Ok(refused(Refused::NoSuchDeployment {
                    name: record.deployment_id.clone(),
                }));
            };
            if let Some(other) = s.current_op.clone() {
                return Ok(refused(Refused::OperationInProgress {
                    deployment: record.deployment_id.clone(),
                    op_id: other,
                }));
            }
            record.state = OperationState::RollingBack;
            record.settled_at_ms = None;
            s.current_op = Some(op_id.into());
            let event = if let OperationKind::Update { .. } | OperationKind::Scale { .. } =
                record.kind
            {
                // Back to the VMs the service had (those still there: a
                // removed one already deleted stays so); every VM the
                // update added is deleted.
                let (kept, added): (Vec<VmRecord>, Vec<VmRecord>) = std::mem::take(&mut record.vms)
                    .into_iter()
                    .partition(|v| s.vms.iter().any(|o| o.key == v.key));
                record.vms = kept
                    .into_iter()
                    .map(|v| VmRecord {
                        state: VmState::Alive,
                        error: None,
                        ..v
                    })
                    .collect();
                record
                    .cleanup
                    .extend(added.into_iter().filter_map(|v| v.server_id));
                s.state = ServiceState::Updating;
                "SERVICE_UPDATING"
            } else {
                s.state = ServiceState::Undeploying;
                "SERVICE_UNDEPLOYING"
            };
            events.push(esc_event(
                event,
                s,
                None,
                "SUCCESS",
                format!("operation {op_id} rolling back"),
            ));
            put_service(index, state, s)?;
            write(state, &keys::active_operation(op_id), &index)?;
        }
        LcmControl::Fail => {
            record.state = OperationState::Failed;
            record.settled_at_ms = Some(cmd.at_ms);
            owe_callback(cmd, &record, state)?;
        }
    }
    write(state, &ok, &record)?;
    Ok((
        Outcome::OperationControlled {
            op_id: op_id.into(),
            state: record.state,
        },
        events,
    ))
}

/// `CallbacksDelivered`: the primary's notifier POSTed these results (or
/// gave up on them); they leave the outbox.
pub fn delivered(op_ids: &[String], state: &mut dyn State) -> Result<Outcome, StateError> {
    let mut removed = 0;
    for id in op_ids {
        if state.delete(&keys::callback(id))? {
            removed += 1;
        }
    }
    Ok(Outcome::CallbacksDelivered { removed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use esc_state::{MemState, StateRead};

    fn gone(s: &MemState, name: &str) -> Option<u64> {
        read(s, &keys::gone(name)).unwrap()
    }

    /// One entry per name, a name removed again moved to the end, the
    /// oldest forgotten past the bound.
    #[test]
    fn removed_deployments_are_remembered_within_a_bound() {
        let mut s = MemState::default();
        note_gone(1, "a", &mut s).unwrap();
        note_gone(2, "b", &mut s).unwrap();
        note_gone(3, "a", &mut s).unwrap();
        assert_eq!(gone(&s, "a"), Some(3));
        assert_eq!(crate::codec::count(&s, keys::GONE_COUNT).unwrap(), 2);
        for i in 0..GONE_MAX {
            note_gone(10 + i, &format!("d{i}"), &mut s).unwrap();
        }
        assert_eq!(crate::codec::count(&s, keys::GONE_COUNT).unwrap(), GONE_MAX);
        assert_eq!(gone(&s, "b"), None, "the oldest");
        assert_eq!(gone(&s, "a"), None);
        assert_eq!(gone(&s, "d0"), Some(10));
        let mut order = 0;
        s.scan(keys::GONE_ORDER, None, usize::MAX, &mut |_, _| {
            order += 1;
            true
        })
        .unwrap();
        assert_eq!(order, GONE_MAX);
    }
}
