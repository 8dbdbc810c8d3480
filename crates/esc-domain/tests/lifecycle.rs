//! The replicated side of lifecycle operations: starting them, recording
//! their steps, the service's state and the notifications, and every
//! refusal (issue 11, items 1, 2 and 6).

use esc_domain::model::{
    DeploymentSpec, LcmControl, OperationKind, OperationState, ServiceState, Step, Tenant,
    VmAction, VmKey, VmState,
};
use esc_domain::{query, Command, Domain, EventKind, Op, Outcome, Refused};
use esc_state::{MemState, StateMachine};

struct Log {
    state: MemState,
    index: u64,
}

impl Log {
    fn new() -> Log {
        Log {
            state: MemState::default(),
            index: 0,
        }
    }

    fn apply(&mut self, op: Op) -> Outcome {
        self.index += 1;
        let cmd = Command {
            tid: format!("t{}", self.index),
            idempotency_key: None,
            fingerprint: String::new(),
            at_ms: self.index,
            op,
        };
        Domain
            .apply(self.index, &cmd.to_payload(), &mut self.state)
            .unwrap()
            .outcome
    }

    fn esc_events(&self) -> Vec<(String, String)> {
        query::events(&self.state, 0, 1000)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Esc { event, status, .. } => Some((event, status)),
                _ => None,
            })
            .collect()
    }
}

fn spec(vms: u32) -> DeploymentSpec {
    DeploymentSpec::from_json(
        serde_json::json!({
            "name": "web", "tenant": "t1",
            "vm_groups": [{
                "name": "g1", "image": "vnf-image", "flavor": "m1.small",
                "scaling": { "min_active": vms, "max_active": vms },
                "interfaces": [{ "nicid": 0, "network": "vnf-net" }]
            }]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn deploy(op_id: &str, vms: u32) -> Op {
    Op::StartOperation {
        op_id: op_id.into(),
        deployment: "web".into(),
        kind: OperationKind::Deploy { spec: spec(vms) },
        callback: None,
    }
}

fn key(i: u32) -> VmKey {
    VmKey {
        deployment_id: "web".into(),
        group: "g1".into(),
        index: i,
        generation: 0,
    }
}

fn step(s: Step) -> Op {
    Op::RecordStep { step: s }
}

fn tenant(log: &mut Log) {
    let t = Tenant {
        name: "t1".into(),
        description: String::new(),
    };
    assert_eq!(
        log.apply(Op::CreateTenant { tenant: t }),
        Outcome::TenantCreated { name: "t1".into() }
    );
}

#[test]
fn a_deploy_runs_step_by_step_to_an_active_service_with_its_notifications() {
    let mut log = Log::new();
    tenant(&mut log);
    assert!(matches!(
        log.apply(deploy("op1", 2)),
        Outcome::OperationStarted { .. }
    ));
    let active = query::active_operations(&log.state).unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].vms.len(), 2);
    for i in 0..2 {
        log.apply(step(Step::ServerBound {
            op: "op1".into(),
            key: key(i),
            server_id: format!("s{i}"),
            adopted: i == 1,
        }));
        log.apply(step(Step::VmActive {
            op: "op1".into(),
            key: key(i),
        }));
    }
    // A repeated step changes nothing and notifies nothing.
    log.apply(step(Step::VmActive {
        op: "op1".into(),
        key: key(1),
    }));
    let done = log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::Completed,
        error: None,
    }));
    assert_eq!(
        done,
        Outcome::StepRecorded {
            op_id: "op1".into(),
            state: OperationState::Completed
        }
    );
    let service = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!(service.state, ServiceState::Active);
    assert_eq!(service.current_op, None);
    assert_eq!(service.vms.len(), 2);
    assert!(
        query::active_operations(&log.state).unwrap().is_empty(),
        "settled: out of the runner's index"
    );
    let names: Vec<String> = log.esc_events().into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        names,
        [
            "SERVICE_DEPLOYING",
            "VM_DEPLOYED",
            "VM_ALIVE",
            "VM_DEPLOYED",
            "VM_ALIVE",
            "SERVICE_ALIVE"
        ]
    );
}

#[test]
fn what_must_not_start_is_refused_and_changes_nothing() {
    let mut log = Log::new();
    assert_eq!(
        log.apply(deploy("op1", 1)),
        Outcome::Refused {
            refused: Refused::NoSuchTenant { name: "t1".into() }
        }
    );
    tenant(&mut log);
    log.apply(deploy("op1", 1));
    // One operation at a time per service, and one name per service.
    let undeploy = Op::StartOperation {
        op_id: "op2".into(),
        deployment: "web".into(),
        kind: OperationKind::Undeploy,
        callback: None,
    };
    assert!(matches!(
        log.apply(undeploy),
        Outcome::Refused {
            refused: Refused::OperationInProgress { .. }
        }
    ));
    assert!(matches!(
        log.apply(step(Step::VmActive {
            op: "nope".into(),
            key: key(0)
        })),
        Outcome::Refused {
            refused: Refused::NoSuchOperation { .. }
        }
    ));
    let mut bad = spec(1);
    bad.vm_groups[0].scaling.min_active = 0;
    let refused = log.apply(Op::StartOperation {
        op_id: "op3".into(),
        deployment: "web".into(),
        kind: OperationKind::Deploy { spec: bad },
        callback: None,
    });
    assert!(
        matches!(&refused, Outcome::Refused { refused: Refused::Invalid(m) } if m.contains("min_active")),
        "{refused:?}"
    );
    assert_eq!(query::active_operations(&log.state).unwrap().len(), 1);
}

#[test]
fn an_undeploy_removes_the_service_once_its_servers_are_gone() {
    let mut log = Log::new();
    tenant(&mut log);
    log.apply(deploy("op1", 1));
    log.apply(step(Step::ServerBound {
        op: "op1".into(),
        key: key(0),
        server_id: "s0".into(),
        adopted: false,
    }));
    log.apply(step(Step::VmActive {
        op: "op1".into(),
        key: key(0),
    }));
    log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::Completed,
        error: None,
    }));
    let undeploy = Op::StartOperation {
        op_id: "op2".into(),
        deployment: "web".into(),
        kind: OperationKind::Undeploy,
        callback: None,
    };
    assert!(matches!(
        log.apply(undeploy),
        Outcome::OperationStarted { .. }
    ));
    assert_eq!(
        query::service(&log.state, "web").unwrap().unwrap().state,
        ServiceState::Undeploying
    );
    let op = query::operation(&log.state, "op2").unwrap().unwrap();
    assert_eq!(
        op.vms.len(),
        1,
        "the undeploy knows the servers the deploy left"
    );
    log.apply(step(Step::ServerGone {
        op: "op2".into(),
        server_id: "s0".into(),
    }));
    log.apply(step(Step::Settled {
        op: "op2".into(),
        state: OperationState::Completed,
        error: None,
    }));
    assert!(query::service(&log.state, "web").unwrap().is_none());
    let events = log.esc_events();
    assert_eq!(
        events.last().unwrap(),
        &("SERVICE_UNDEPLOYED".to_string(), "SUCCESS".to_string())
    );
}

#[test]
fn a_failed_temp_operation_is_retried_with_new_servers_or_failed() {
    let mut log = Log::new();
    tenant(&mut log);
    log.apply(deploy("op1", 1));
    log.apply(step(Step::ServerBound {
        op: "op1".into(),
        key: key(0),
        server_id: "s0".into(),
        adopted: false,
    }));
    log.apply(step(Step::VmFailed {
        op: "op1".into(),
        key: key(0),
        error: "no valid host".into(),
    }));
    log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::FailedTemp,
        error: Some("VM failed".into()),
    }));
    assert!(query::active_operations(&log.state).unwrap().is_empty());
    let control = |action| Op::ControlOperation {
        op_id: "op1".into(),
        action,
    };
    use esc_domain::model::LcmControl;
    assert_eq!(
        log.apply(control(LcmControl::Retry)),
        Outcome::OperationControlled {
            op_id: "op1".into(),
            state: OperationState::Processing
        }
    );
    let op = query::operation(&log.state, "op1").unwrap().unwrap();
    assert_eq!(op.vms[0].key.generation, 1, "a new server name");
    assert_eq!(op.vms[0].server_id, None);
    assert_eq!(op.cleanup, ["s0"], "the failed server goes");
    assert_eq!(query::active_operations(&log.state).unwrap().len(), 1);
    let service = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!(
        (service.state, service.current_op.as_deref()),
        (ServiceState::Deploying, Some("op1"))
    );
    // Only a FAILED_TEMP operation takes a task.
    assert!(matches!(
        log.apply(control(LcmControl::Fail)),
        Outcome::Refused {
            refused: Refused::NotFailedTemp { .. }
        }
    ));
    log.apply(step(Step::ServerGone {
        op: "op1".into(),
        server_id: "s0".into(),
    }));
    assert!(query::operation(&log.state, "op1")
        .unwrap()
        .unwrap()
        .cleanup
        .is_empty());
    // It fails again; the operator gives up.
    let mut k = key(0);
    k.generation = 1;
    log.apply(step(Step::VmFailed {
        op: "op1".into(),
        key: k,
        error: "no valid host".into(),
    }));
    log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::FailedTemp,
        error: Some("VM failed".into()),
    }));
    assert_eq!(
        log.apply(control(LcmControl::Fail)),
        Outcome::OperationControlled {
            op_id: "op1".into(),
            state: OperationState::Failed
        }
    );
    assert!(matches!(
        log.apply(control(LcmControl::Retry)),
        Outcome::Refused {
            refused: Refused::NotFailedTemp { .. }
        }
    ));
    assert!(matches!(
        log.apply(Op::ControlOperation {
            op_id: "nope".into(),
            action: LcmControl::Retry
        }),
        Outcome::Refused {
            refused: Refused::NoSuchOperation { .. }
        }
    ));
}

#[test]
fn a_failed_temp_deploy_rolls_back_to_nothing() {
    use esc_domain::model::LcmControl;
    let mut log = Log::new();
    tenant(&mut log);
    log.apply(deploy("op1", 1));
    log.apply(step(Step::ServerBound {
        op: "op1".into(),
        key: key(0),
        server_id: "s0".into(),
        adopted: false,
    }));
    log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::FailedTemp,
        error: Some("the VIM kept failing".into()),
    }));
    assert_eq!(query::deployment_count(&log.state).unwrap(), 1);
    assert_eq!(
        log.apply(Op::ControlOperation {
            op_id: "op1".into(),
            action: LcmControl::Rollback
        }),
        Outcome::OperationControlled {
            op_id: "op1".into(),
            state: OperationState::RollingBack
        }
    );
    assert_eq!(query::active_operations(&log.state).unwrap().len(), 1);
    assert_eq!(
        query::service(&log.state, "web").unwrap().unwrap().state,
        ServiceState::Undeploying
    );
    log.apply(step(Step::ServerGone {
        op: "op1".into(),
        server_id: "s0".into(),
    }));
    log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::RolledBack,
        error: None,
    }));
    assert!(query::service(&log.state, "web").unwrap().is_none());
    assert_eq!(query::deployment_count(&log.state).unwrap(), 0);
    assert_eq!(
        query::operation(&log.state, "op1").unwrap().unwrap().state,
        OperationState::RolledBack
    );
    let names: Vec<String> = log.esc_events().into_iter().map(|(e, _)| e).collect();
    assert_eq!(names.last().unwrap(), "SERVICE_UNDEPLOYED");
}

/// A deployment of `vms` alive VMs (servers `s0`, `s1`, ...), each up
/// with an address (no bootup check: alive at once).
fn active(log: &mut Log, vms: u32) {
    tenant(log);
    log.apply(deploy("op1", vms));
    for i in 0..vms {
        log.apply(step(Step::ServerBound {
            op: "op1".into(),
            key: key(i),
            server_id: format!("s{i}"),
            adopted: false,
        }));
        let up = log.apply(step(Step::ServerUp {
            op: "op1".into(),
            key: key(i),
            addresses: vec![(0, format!("203.0.113.{}", i + 10))],
        }));
        assert!(matches!(up, Outcome::StepRecorded { .. }), "{up:?}");
    }
    log.apply(step(Step::Settled {
        op: "op1".into(),
        state: OperationState::Completed,
        error: None,
    }));
}

fn start(op_id: &str, kind: OperationKind) -> Op {
    Op::StartOperation {
        op_id: op_id.into(),
        deployment: "web".into(),
        kind,
        callback: None,
    }
}

#[test]
fn an_update_shows_the_old_service_until_it_completes() {
    let mut log = Log::new();
    active(&mut log, 2);
    // Down to one: index 1 goes.
    let up = OperationKind::Update { spec: spec(1) };
    assert!(matches!(
        log.apply(start("up", up)),
        Outcome::OperationStarted { .. }
    ));
    let s = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!(
        (s.state, s.spec.clone(), s.vms.len()),
        (ServiceState::Updating, spec(2), 2)
    );
    let op = query::operation(&log.state, "up").unwrap().unwrap();
    let states: Vec<VmState> = op.vms.iter().map(|v| v.state).collect();
    assert_eq!(states, [VmState::Alive, VmState::Undeploying]);
    // A second operation waits for this one.
    assert!(matches!(
        log.apply(start("up2", OperationKind::Update { spec: spec(2) })),
        Outcome::Refused {
            refused: Refused::OperationInProgress { .. }
        }
    ));
    log.apply(step(Step::ServerGone {
        op: "up".into(),
        server_id: "s1".into(),
    }));
    log.apply(step(Step::Settled {
        op: "up".into(),
        state: OperationState::Completed,
        error: None,
    }));
    let s = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!(
        (s.state, s.spec.clone(), s.vms.len()),
        (ServiceState::Active, spec(1), 1)
    );
    let events = log.esc_events();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        &names[names.len() - 4..],
        [
            "SERVICE_UPDATING",
            "VM_UNDEPLOYED",
            "VM_UPDATED",
            "SERVICE_UPDATED"
        ]
    );
    let vm_event = query::events(&log.state, 0, 1000)
        .unwrap()
        .into_iter()
        .find_map(|e| match e.kind {
            EventKind::Esc {
                event, vm_target, ..
            } if event == "VM_UNDEPLOYED" => vm_target,
            _ => None,
        });
    assert_eq!(vm_event.as_deref(), Some("esc-web-g1-1-g0"));
}

#[test]
fn updates_and_vm_actions_that_must_not_start_are_refused() {
    let mut log = Log::new();
    let vm = key(0).server_name();
    let stop = |vm: &str| OperationKind::VmAction {
        vm: vm.into(),
        action: VmAction::Stop,
    };
    assert!(matches!(
        log.apply(start("u0", OperationKind::Update { spec: spec(1) })),
        Outcome::Refused {
            refused: Refused::NoSuchDeployment { .. }
        }
    ));
    active(&mut log, 1);
    let mut other = spec(1);
    other.vm_groups[0].image = "another".into();
    match log.apply(start("u1", OperationKind::Update { spec: other })) {
        Outcome::Refused {
            refused: Refused::Invalid(m),
        } => assert!(m.starts_with("vm_groups[0].image: cannot change"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        log.apply(start("a0", stop("esc-web-g1-9-g0"))),
        Outcome::Refused {
            refused: Refused::NoSuchVm { .. }
        }
    ));
    // A failed VM action: FAILED_TEMP, no rollback for it, retried.
    log.apply(start("a1", stop(&vm)));
    let op = query::operation(&log.state, "a1").unwrap().unwrap();
    assert_eq!(op.vms[0].state, VmState::Stopping);
    log.apply(step(Step::ActionMarked {
        op: "a1".into(),
        key: key(0),
        request_id: "req-1".into(),
    }));
    log.apply(step(Step::Settled {
        op: "a1".into(),
        state: OperationState::FailedTemp,
        error: Some("409".into()),
    }));
    assert!(matches!(
        log.apply(Op::ControlOperation {
            op_id: "a1".into(),
            action: LcmControl::Rollback
        }),
        Outcome::Refused {
            refused: Refused::Invalid(_)
        }
    ));
    let s = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!(s.state, ServiceState::Active, "a VM action leaves it");
    log.apply(Op::ControlOperation {
        op_id: "a1".into(),
        action: LcmControl::Retry,
    });
    // Carried on from its mark (a stop the VIM took is not asked again).
    let op = query::operation(&log.state, "a1").unwrap().unwrap();
    assert_eq!(
        (op.state, op.vms[0].state, op.vms[0].action_mark.as_deref()),
        (OperationState::Processing, VmState::Stopping, Some("req-1"))
    );
    log.apply(step(Step::VmStopped {
        op: "a1".into(),
        key: key(0),
    }));
    log.apply(step(Step::Settled {
        op: "a1".into(),
        state: OperationState::Completed,
        error: None,
    }));
    let s = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!(s.vms[0].state, VmState::Shutoff);
    // A failed update leaves the service in error: no update then, with
    // the state said.
    log.apply(start("u2", OperationKind::Update { spec: spec(1) }));
    log.apply(step(Step::Settled {
        op: "u2".into(),
        state: OperationState::FailedTemp,
        error: Some("the VIM kept failing".into()),
    }));
    match log.apply(start("u3", OperationKind::Update { spec: spec(1) })) {
        Outcome::Refused {
            refused: Refused::WrongState { state, .. },
        } => assert_eq!(state, "SERVICE_ERROR_STATE"),
        o => panic!("{o:?}"),
    }
    assert!(log
        .esc_events()
        .contains(&("VM_STOPPED".into(), "SUCCESS".into())));
}

fn ranged(min: u32, max: u32) -> DeploymentSpec {
    let mut s = spec(min);
    s.vm_groups[0].scaling.max_active = max;
    s.validate().unwrap();
    s
}

fn scale(out: bool) -> OperationKind {
    OperationKind::Scale {
        group: "g1".into(),
        out,
        reason: "VM_OVERLOADED TRUE".into(),
    }
}

fn wrong_state(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Refused {
            refused: Refused::WrongState { .. }
        }
    )
}

/// A scale: one VM more at the next index, or the highest one removed,
/// never past the group's bounds; its id used once; the group's scale
/// count and settle time recorded (what the next id and the cooldown
/// derive from); the notifications name the VM.
#[test]
fn a_scale_adds_or_removes_one_vm_within_the_bounds() {
    let mut log = Log::new();
    tenant(&mut log);
    log.apply(start("op1", OperationKind::Deploy { spec: ranged(1, 2) }));
    let bind_up = |log: &mut Log, op: &str, i: u32| {
        log.apply(step(Step::ServerBound {
            op: op.into(),
            key: key(i),
            server_id: format!("s{i}"),
            adopted: false,
        }));
        log.apply(step(Step::ServerUp {
            op: op.into(),
            key: key(i),
            addresses: vec![(0, format!("203.0.113.{}", i + 10))],
        }));
    };
    let settle = |log: &mut Log, op: &str| {
        log.apply(step(Step::Settled {
            op: op.into(),
            state: OperationState::Completed,
            error: None,
        }))
    };
    bind_up(&mut log, "op1", 0);
    settle(&mut log, "op1");
    assert!(wrong_state(&log.apply(start("in0", scale(false)))));
    let o = log.apply(start("out1", scale(true)));
    assert!(matches!(o, Outcome::OperationStarted { .. }), "{o:?}");
    let op = query::operation(&log.state, "out1").unwrap().unwrap();
    let vms: Vec<(u32, VmState)> = op.vms.iter().map(|v| (v.key.index, v.state)).collect();
    assert_eq!(vms, [(0, VmState::Alive), (1, VmState::Deploying)]);
    assert_eq!(op.group.as_ref().map(|g| g.name.as_str()), Some("g1"));
    // The same decision again (another node's): one operation.
    assert!(matches!(
        log.apply(start("out1", scale(true))),
        Outcome::Refused {
            refused: Refused::Invalid(_)
        }
    ));
    bind_up(&mut log, "out1", 1);
    settle(&mut log, "out1");
    let s = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!((s.state, s.vms.len()), (ServiceState::Active, 2));
    let g = &s.scaling["g1"];
    assert_eq!((g.started, g.settled_at_ms), (1, Some(log.index)));
    assert!(wrong_state(&log.apply(start("out2", scale(true)))));
    // In: the highest index goes.
    log.apply(start("in2", scale(false)));
    let op = query::operation(&log.state, "in2").unwrap().unwrap();
    let vms: Vec<(u32, VmState)> = op.vms.iter().map(|v| (v.key.index, v.state)).collect();
    assert_eq!(vms, [(0, VmState::Alive), (1, VmState::Undeploying)]);
    // A late answer to the removed VM's bootup check changes nothing.
    log.apply(step(Step::VmActive {
        op: "in2".into(),
        key: key(1),
    }));
    let op = query::operation(&log.state, "in2").unwrap().unwrap();
    assert_eq!(op.vms[1].state, VmState::Undeploying);
    log.apply(step(Step::ServerGone {
        op: "in2".into(),
        server_id: "s1".into(),
    }));
    settle(&mut log, "in2");
    let s = query::service(&log.state, "web").unwrap().unwrap();
    assert_eq!((s.vms.len(), s.scaling["g1"].started), (1, 2));
    let events: Vec<(String, Option<String>)> = query::events(&log.state, 0, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Esc {
                event, vm_target, ..
            } if event.starts_with("VM_SCALE") || event == "VM_UNDEPLOYED" => {
                Some((event, vm_target))
            }
            _ => None,
        })
        .collect();
    let vm1 = Some(key(1).server_name());
    assert_eq!(
        events,
        [
            ("VM_SCALE_OUT_INIT".to_string(), vm1.clone()),
            ("VM_SCALE_OUT_DEPLOYED".to_string(), vm1.clone()),
            ("VM_SCALE_OUT_COMPLETE".to_string(), vm1.clone()),
            ("VM_SCALE_IN_INIT".to_string(), vm1.clone()),
            ("VM_UNDEPLOYED".to_string(), vm1.clone()),
            ("VM_SCALE_IN_COMPLETE".to_string(), vm1.clone()),
        ]
    );
}
