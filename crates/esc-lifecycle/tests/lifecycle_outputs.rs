//! Exact-output tests of the lifecycle core (issue 11, item 2): each test
//! feeds inputs and asserts the calls and steps that come out.

use esc_domain::model::{
    DeploymentSpec, OperationKind, OperationRecord, OperationState, Step, VmKey, VmState,
};
use esc_lifecycle::{Answer, Config, Input, Lifecycle, Output, ServerInfo, VimCall};

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

fn deploy(vms: u32) -> OperationRecord {
    OperationRecord::new(
        "op1".into(),
        "d1".into(),
        OperationKind::Deploy { spec: spec(vms) },
    )
}

fn key(i: u32) -> VmKey {
    VmKey {
        deployment_id: "d1".into(),
        group: "g1".into(),
        index: i,
        generation: 0,
    }
}

fn cfg() -> Config {
    Config {
        calls_in_flight_max: 8,
        poll_ms: 100,
        retry_base_ms: 50,
        retry_max_ms: 400,
        call_retries_max: 3,
        repropose_ms: 5_000,
        create_doubt_ms: 1_000,
        action_timeout_ms: 10_000,
    }
}

fn leading() -> Lifecycle {
    let mut l = Lifecycle::new(cfg());
    assert!(l.handle(0, Input::Lead { epoch: 7 }).is_empty());
    l
}

/// The calls of `out`, as (call id, VIM call).
fn calls(out: &[Output]) -> Vec<(u64, VimCall)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Call {
                call, epoch, vim, ..
            } => {
                assert_eq!(*epoch, 7, "calls carry the term's epoch");
                Some((*call, vim.clone()))
            }
            _ => None,
        })
        .collect()
}

fn steps(out: &[Output]) -> Vec<Step> {
    out.iter()
        .filter_map(|o| match o {
            Output::Propose(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn server(id: &str, name: &str, status: &str) -> ServerInfo {
    ServerInfo {
        id: id.into(),
        name: name.into(),
        status: status.into(),
        fault: None,
        addresses: [(
            "vnf-net".to_string(),
            vec![format!("203.0.113.{}", id.len())],
        )]
        .into(),
        op: None,
        deployment: None,
    }
}

/// Applies proposed steps to the record, as the log would, and feeds it back.
fn commit(l: &mut Lifecycle, r: &mut OperationRecord, out: &[Output], now: u64) -> Vec<Output> {
    for s in steps(out) {
        r.apply(now, &s);
        // The domain's rule: up with no bootup check (none here) is alive.
        if let Step::ServerUp { key, .. } = &s {
            if let Some(v) = r.vms.iter_mut().find(|v| &v.key == key) {
                v.state = VmState::Alive;
            }
        }
    }
    l.handle(now, Input::Records(vec![r.clone()]))
}

// A deploy: look each VM up by its name, create what is not there, commit
// the server id, watch it until ACTIVE, commit that, then the operation
// completes.
#[test]
fn a_deploy_looks_up_creates_watches_and_completes() {
    let mut l = leading();
    let mut r = deploy(2);
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    assert_eq!(
        calls(&out),
        vec![
            (
                1,
                VimCall::Find {
                    name: key(0).server_name()
                }
            ),
            (
                2,
                VimCall::Find {
                    name: key(1).server_name()
                }
            ),
        ]
    );
    let out = l.handle(
        1,
        Input::Answer {
            call: 1,
            answer: Answer::Found(vec![]),
        },
    );
    let created = calls(&out);
    assert!(
        matches!(&created[..], [(3, VimCall::Create { key: k, .. })] if *k == key(0)),
        "{created:?}"
    );
    let out = l.handle(
        2,
        Input::Answer {
            call: 3,
            answer: Answer::Created {
                server_id: "s0".into(),
            },
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerBound {
            op: "op1".into(),
            key: key(0),
            server_id: "s0".into(),
            adopted: false
        }]
    );
    // Proposed, not committed yet: no second call for that VM meanwhile.
    assert!(calls(&l.handle(3, Input::Tick)).is_empty());
    let out = commit(&mut l, &mut r, &out, 4);
    assert_eq!(r.state, OperationState::Processing);
    assert_eq!(
        calls(&out),
        vec![(
            4,
            VimCall::Show {
                server_id: "s0".into()
            }
        )]
    );
    // Still building: looked at again after poll_ms, not before.
    let name0 = key(0).server_name();
    assert!(calls(&l.handle(
        5,
        Input::Answer {
            call: 4,
            answer: Answer::Shown(server("s0", &name0, "BUILD"))
        }
    ))
    .is_empty());
    assert!(calls(&l.handle(104, Input::Tick)).is_empty());
    assert_eq!(
        calls(&l.handle(105, Input::Tick)),
        vec![(
            5,
            VimCall::Show {
                server_id: "s0".into()
            }
        )]
    );
    let out = l.handle(
        106,
        Input::Answer {
            call: 5,
            answer: Answer::Shown(server("s0", &name0, "ACTIVE")),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerUp {
            op: "op1".into(),
            key: key(0),
            addresses: vec![(0, "203.0.113.2".to_string())],
        }]
    );
    commit(&mut l, &mut r, &out, 107);
    assert_eq!(r.vms[0].state, VmState::Alive);
    // The second VM: found by name (an earlier primary made it), adopted.
    let out = l.handle(
        108,
        Input::Answer {
            call: 2,
            answer: Answer::Found(vec![server("s1", &key(1).server_name(), "ACTIVE")]),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerBound {
            op: "op1".into(),
            key: key(1),
            server_id: "s1".into(),
            adopted: true
        }]
    );
    let out = commit(&mut l, &mut r, &out, 109);
    let (c, _) = calls(&out)[0].clone();
    let out = l.handle(
        110,
        Input::Answer {
            call: c,
            answer: Answer::Shown(server("s1", &key(1).server_name(), "ACTIVE")),
        },
    );
    // Every VM alive: the deployment is listed once more; a second server
    // of VM 0 (a create that landed after its lookup) is removed.
    let out = commit(&mut l, &mut r, &out, 111);
    let (c, list) = calls(&out)[0].clone();
    assert_eq!(
        list,
        VimCall::ListDeployment {
            deployment_id: "d1".into()
        }
    );
    assert!(steps(&out).is_empty(), "not completed before the listing");
    let out = l.handle(
        112,
        Input::Answer {
            call: c,
            answer: Answer::Found(vec![
                server("s0", &name0, "ACTIVE"),
                server("s1", &key(1).server_name(), "ACTIVE"),
                server("s9", &name0, "BUILD"),
            ]),
        },
    );
    let (del, vim) = calls(&out)[0].clone();
    assert_eq!(
        vim,
        VimCall::Delete {
            server_id: "s9".into()
        }
    );
    assert!(steps(&out).is_empty());
    let out = l.handle(
        113,
        Input::Answer {
            call: del,
            answer: Answer::Deleted,
        },
    );
    assert!(steps(&out).is_empty(), "no step for a duplicate: {out:?}");
    // Listed again after the poll period: only what the VMs hold.
    let (c, _) = calls(&l.handle(113 + 100, Input::Tick))[0].clone();
    let out = l.handle(
        214,
        Input::Answer {
            call: c,
            answer: Answer::Found(vec![
                server("s0", &name0, "ACTIVE"),
                server("s1", &key(1).server_name(), "ACTIVE"),
            ]),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::Settled {
            op: "op1".into(),
            state: OperationState::Completed,
            error: None
        }]
    );
    commit(&mut l, &mut r, &out, 215);
    assert_eq!(r.state, OperationState::Completed);
    assert!(l.handle(113, Input::Tick).is_empty(), "nothing more to do");
}

// The new primary after a takeover: the old one created the server but
// died before its result committed. The lookup by name finds it: adopted,
// never created twice.
#[test]
fn a_new_primary_adopts_a_server_whose_creation_never_committed() {
    let r = deploy(1);
    let mut old = leading();
    let out = old.handle(0, Input::Records(vec![r.clone()]));
    old.handle(
        1,
        Input::Answer {
            call: calls(&out)[0].0,
            answer: Answer::Found(vec![]),
        },
    );
    // ... the old primary's Create went out and succeeded at the VIM; then it lost power.
    let mut new = leading();
    let out = new.handle(10, Input::Records(vec![r.clone()]));
    assert_eq!(
        calls(&out),
        vec![(
            1,
            VimCall::Find {
                name: key(0).server_name()
            }
        )]
    );
    let out = new.handle(
        11,
        Input::Answer {
            call: 1,
            answer: Answer::Found(vec![server("s-old", &key(0).server_name(), "BUILD")]),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerBound {
            op: "op1".into(),
            key: key(0),
            server_id: "s-old".into(),
            adopted: true
        }]
    );
    assert!(calls(&out).is_empty(), "no Create");
}

// A server of the VM's name that another operation made (a create of an
// earlier deploy of this deployment name, landing after its undeploy) is
// not adopted: it has that deploy's spec; nor one of another deployment
// whose name and group happen to give the same server name. This
// operation's own is, as is one made before servers carried their
// operation.
#[test]
fn only_the_operations_own_server_is_adopted() {
    let r = deploy(1);
    let name = key(0).server_name();
    let by = |id: &str, op: Option<&str>| ServerInfo {
        op: op.map(str::to_string),
        ..server(id, &name, "ACTIVE")
    };
    for (found, adopted) in [
        (vec![by("s-other", Some("op0"))], None),
        (
            vec![by("s-other", Some("op0")), by("s-own", Some("op1"))],
            Some("s-own"),
        ),
        (vec![by("s-legacy", None)], Some("s-legacy")),
        (
            vec![ServerInfo {
                deployment: Some("d1-x".into()),
                ..by("s-same-name", None)
            }],
            None,
        ),
    ] {
        let mut l = leading();
        let out = l.handle(0, Input::Records(vec![r.clone()]));
        let out = l.handle(
            1,
            Input::Answer {
                call: calls(&out)[0].0,
                answer: Answer::Found(found.clone()),
            },
        );
        match adopted {
            Some(id) => {
                assert_eq!(
                    steps(&out),
                    vec![Step::ServerBound {
                        op: "op1".into(),
                        key: key(0),
                        server_id: id.into(),
                        adopted: true
                    }],
                    "{found:?}"
                );
                assert!(calls(&out).is_empty(), "{found:?}: nothing deleted here");
            }
            None => {
                assert!(steps(&out).is_empty(), "{found:?}");
                assert!(
                    matches!(calls(&out)[..], [(_, VimCall::Create { .. })]),
                    "{found:?}: a server of its own: {out:?}"
                );
            }
        }
    }
}

// Answers to calls of an earlier term are dropped; a node that stops
// leading calls nothing.
#[test]
fn answers_of_an_earlier_term_are_dropped_and_a_follower_calls_nothing() {
    let r = deploy(1);
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    assert_eq!(calls(&out).len(), 1);
    l.handle(1, Input::Lead { epoch: 7 });
    let out = l.handle(
        2,
        Input::Answer {
            call: 1,
            answer: Answer::Found(vec![]),
        },
    );
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Call {
                vim: VimCall::Create { .. },
                ..
            }
        )),
        "{out:?}"
    );
    assert!(l.handle(3, Input::Unlead).is_empty());
    assert!(l.handle(4, Input::Records(vec![r])).is_empty());
    assert_eq!(l.calls_in_flight(), 0);
}

// A retryable VIM error backs off (doubling, bounded), then the operation
// is FAILED_TEMP with the reason; a refusal is FAILED_TEMP at once.
#[test]
fn vim_errors_back_off_then_fail_temp() {
    let r = deploy(1);
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    let fail = |retryable| Answer::Failed {
        error: "HTTP 503".into(),
        retryable,
        unknown: false,
    };
    assert!(l
        .handle(
            1,
            Input::Answer {
                call: calls(&out)[0].0,
                answer: fail(true)
            }
        )
        .is_empty());
    assert!(
        calls(&l.handle(50, Input::Tick)).is_empty(),
        "not before 50 ms after the failure"
    );
    let out = l.handle(51, Input::Tick);
    assert_eq!(calls(&out).len(), 1);
    assert!(l
        .handle(
            52,
            Input::Answer {
                call: calls(&out)[0].0,
                answer: fail(true)
            }
        )
        .is_empty());
    assert!(calls(&l.handle(151, Input::Tick)).is_empty(), "then 100 ms");
    let out = l.handle(152, Input::Tick);
    let out = l.handle(
        153,
        Input::Answer {
            call: calls(&out)[0].0,
            answer: fail(true),
        },
    );
    match &steps(&out)[..] {
        [Step::Settled {
            state: OperationState::FailedTemp,
            error: Some(e),
            ..
        }] => {
            assert!(e.contains("3 attempt(s)") && e.contains("HTTP 503"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![r]));
    let out = l.handle(
        1,
        Input::Answer {
            call: calls(&out)[0].0,
            answer: fail(false),
        },
    );
    assert!(matches!(
        &steps(&out)[..],
        [Step::Settled {
            state: OperationState::FailedTemp,
            ..
        }]
    ));
}

// A server the VIM puts in ERROR (no valid host) fails its VM, and the
// operation is FAILED_TEMP with the VIM's reason.
#[test]
fn a_server_in_error_fails_the_operation_with_the_vims_reason() {
    let mut r = deploy(1);
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    let out = l.handle(
        1,
        Input::Answer {
            call: calls(&out)[0].0,
            answer: Answer::Found(vec![]),
        },
    );
    let out = l.handle(
        2,
        Input::Answer {
            call: calls(&out)[0].0,
            answer: Answer::Created {
                server_id: "s0".into(),
            },
        },
    );
    let out = commit(&mut l, &mut r, &out, 3);
    let mut s = server("s0", &key(0).server_name(), "ERROR");
    s.fault = Some("No valid host was found.".into());
    let out = l.handle(
        4,
        Input::Answer {
            call: calls(&out)[0].0,
            answer: Answer::Shown(s),
        },
    );
    let out = commit(&mut l, &mut r, &out, 5);
    match &steps(&out)[..] {
        [Step::Settled {
            state: OperationState::FailedTemp,
            error: Some(e),
            ..
        }] => {
            assert!(e.contains("No valid host"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

// An undeploy lists the deployment's servers (leftovers included), deletes
// each (gone already counts), and completes once none is left.
#[test]
fn an_undeploy_deletes_every_server_then_completes() {
    let r = OperationRecord::new("op2".into(), "d1".into(), OperationKind::Undeploy);
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    assert_eq!(
        calls(&out),
        vec![(
            1,
            VimCall::ListDeployment {
                deployment_id: "d1".into()
            }
        )]
    );
    let out = l.handle(
        1,
        Input::Answer {
            call: 1,
            answer: Answer::Found(vec![
                server("a", "esc-d1-g1-0-g0", "ACTIVE"),
                server("b", "esc-d1-g1-1-g0", "ERROR"),
            ]),
        },
    );
    assert_eq!(
        calls(&out),
        vec![
            (
                2,
                VimCall::Delete {
                    server_id: "a".into()
                }
            ),
            (
                3,
                VimCall::Delete {
                    server_id: "b".into()
                }
            ),
        ]
    );
    let out = l.handle(
        2,
        Input::Answer {
            call: 2,
            answer: Answer::Deleted,
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerGone {
            op: "op2".into(),
            server_id: "a".into()
        }]
    );
    let out = l.handle(
        3,
        Input::Answer {
            call: 3,
            answer: Answer::NotFound,
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerGone {
            op: "op2".into(),
            server_id: "b".into()
        }]
    );
    let out = l.handle(101, Input::Tick);
    assert_eq!(
        calls(&out),
        vec![(
            4,
            VimCall::ListDeployment {
                deployment_id: "d1".into()
            }
        )]
    );
    let out = l.handle(
        102,
        Input::Answer {
            call: 4,
            answer: Answer::Found(vec![]),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::Settled {
            op: "op2".into(),
            state: OperationState::Completed,
            error: None
        }]
    );
}

// The calls in flight are bounded over every operation.
#[test]
fn calls_in_flight_are_bounded() {
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![deploy(20)]));
    assert_eq!(calls(&out).len(), cfg().calls_in_flight_max);
    assert_eq!(l.calls_in_flight(), cfg().calls_in_flight_max);
    let out = l.handle(
        1,
        Input::Answer {
            call: 1,
            answer: Answer::Failed {
                error: "x".into(),
                retryable: true,
                unknown: false,
            },
        },
    );
    assert_eq!(calls(&out).len(), 1, "a freed slot is used at once");
}

// A deployment without VMs (the domain settles those itself; a record of
// one reaching the core) completes after one listing shows nothing.
#[test]
fn a_deployment_without_vms_completes_at_once() {
    let spec = DeploymentSpec::from_json(br#"{"name": "empty", "tenant": "t1"}"#).unwrap();
    let r = OperationRecord::new("op3".into(), "d9".into(), OperationKind::Deploy { spec });
    let mut l = leading();
    let out = l.handle(0, Input::Records(vec![r]));
    let (c, _) = calls(&out)[0].clone();
    let out = l.handle(
        1,
        Input::Answer {
            call: c,
            answer: Answer::Found(vec![]),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::Settled {
            op: "op3".into(),
            state: OperationState::Completed,
            error: None
        }]
    );
}

// A create that got no answer may still land: the VM is looked up again
// only after `create_doubt_ms`, not after the usual backoff.
#[test]
fn a_create_without_an_answer_is_looked_up_only_after_the_doubt_period() {
    let mut l = leading();
    let r = deploy(1);
    let out = l.handle(0, Input::Records(vec![r]));
    let (find, _) = calls(&out)[0].clone();
    let out = l.handle(
        1,
        Input::Answer {
            call: find,
            answer: Answer::Found(vec![]),
        },
    );
    let (create, vim) = calls(&out)[0].clone();
    assert!(matches!(vim, VimCall::Create { .. }));
    let timeout = Answer::Failed {
        error: "the VIM is unreachable: timed out".into(),
        retryable: true,
        unknown: true,
    };
    assert!(calls(&l.handle(
        2,
        Input::Answer {
            call: create,
            answer: timeout
        }
    ))
    .is_empty());
    assert!(
        calls(&l.handle(2 + cfg().retry_max_ms, Input::Tick)).is_empty(),
        "not after the backoff"
    );
    let out = l.handle(2 + cfg().create_doubt_ms, Input::Tick);
    assert!(
        matches!(calls(&out)[..], [(_, VimCall::Find { .. })]),
        "a lookup, not a second create: {out:?}"
    );
}

// Changes alone (what the runtime sends): a record that moved replaces its
// copy, one gone stops being worked on, the others stay as they were.
#[test]
fn changes_replace_only_the_records_they_name() {
    let mut l = leading();
    let a = deploy(1);
    let mut b = deploy(1);
    b.id = "op2".into();
    b.deployment_id = "d2".into();
    let out = l.handle(
        0,
        Input::Changed {
            records: vec![a.clone(), b.clone()],
            gone: vec![],
        },
    );
    assert_eq!(calls(&out).len(), 2, "one lookup per VM of each");
    // op1 goes (settled elsewhere): its answer is dropped; op2 unchanged.
    let (c1, _) = calls(&out)[0].clone();
    assert!(l
        .handle(
            1,
            Input::Changed {
                records: vec![],
                gone: vec!["op1".into()]
            }
        )
        .is_empty());
    assert!(calls(&l.handle(
        2,
        Input::Answer {
            call: c1,
            answer: Answer::Found(vec![])
        }
    ))
    .is_empty());
    let (c2, _) = calls(&out)[1].clone();
    let out = l.handle(
        3,
        Input::Answer {
            call: c2,
            answer: Answer::Found(vec![]),
        },
    );
    assert!(
        matches!(calls(&out)[..], [(_, VimCall::Create { .. })]),
        "op2 goes on: {out:?}"
    );
}

// A step proposed and never committed (refused in a role change) frees its
// VM after `repropose_ms`: the work is planned again, and proposed again.
#[test]
fn a_step_never_committed_is_planned_again() {
    let mut l = leading();
    let r = deploy(1);
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    let (find, _) = calls(&out)[0].clone();
    let found = Answer::Found(vec![server("s0", &key(0).server_name(), "ACTIVE")]);
    let out = l.handle(
        1,
        Input::Answer {
            call: find,
            answer: found,
        },
    );
    assert_eq!(steps(&out).len(), 1, "ServerBound proposed");
    // Never committed: nothing while it may still land...
    assert!(l.handle(2, Input::Records(vec![r.clone()])).is_empty());
    assert!(l.handle(4_000, Input::Tick).is_empty());
    // ...then the VM is looked up again.
    let out = l.handle(5_001, Input::Tick);
    assert!(
        matches!(calls(&out)[..], [(_, VimCall::Find { .. })]),
        "{out:?}"
    );
}

// A retried operation first deletes the servers of the VMs it replaced
// (committed one by one), and completes only once they are gone.
#[test]
fn a_retry_deletes_the_replaced_servers_before_completing() {
    let mut l = leading();
    let mut r = deploy(1);
    r.vms[0].server_id = Some("s-new".into());
    r.vms[0].state = VmState::Alive;
    r.cleanup = vec!["s-old".into()];
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    let (del, vim) = calls(&out)[0].clone();
    assert_eq!(
        vim,
        VimCall::Delete {
            server_id: "s-old".into()
        }
    );
    assert!(steps(&out).is_empty(), "not completed while it exists");
    let out = l.handle(
        1,
        Input::Answer {
            call: del,
            answer: Answer::NotFound,
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::ServerGone {
            op: "op1".into(),
            server_id: "s-old".into()
        }]
    );
    let out = commit(&mut l, &mut r, &out, 2);
    assert!(r.cleanup.is_empty());
    let (list, vim) = calls(&out)[0].clone();
    assert!(matches!(vim, VimCall::ListDeployment { .. }));
    let out = l.handle(
        3,
        Input::Answer {
            call: list,
            answer: Answer::Found(vec![server("s-new", &key(0).server_name(), "ACTIVE")]),
        },
    );
    assert!(matches!(
        steps(&out)[..],
        [Step::Settled {
            state: OperationState::Completed,
            ..
        }]
    ));
}

// A rollback of a deploy lists the deployment and deletes every server,
// the ones its VMs hold included, then settles ROLLED_BACK.
#[test]
fn a_rollback_deletes_every_server_then_settles_rolled_back() {
    let mut l = leading();
    let mut r = deploy(1);
    r.vms[0].server_id = Some("s0".into());
    r.state = OperationState::RollingBack;
    let out = l.handle(0, Input::Records(vec![r.clone()]));
    let (list, vim) = calls(&out)[0].clone();
    assert!(matches!(vim, VimCall::ListDeployment { .. }), "{vim:?}");
    let out = l.handle(
        1,
        Input::Answer {
            call: list,
            answer: Answer::Found(vec![server("s0", &key(0).server_name(), "ACTIVE")]),
        },
    );
    let (del, vim) = calls(&out)[0].clone();
    assert_eq!(
        vim,
        VimCall::Delete {
            server_id: "s0".into()
        }
    );
    let out = l.handle(
        2,
        Input::Answer {
            call: del,
            answer: Answer::Deleted,
        },
    );
    let out = commit(&mut l, &mut r, &out, 3);
    assert!(r.vms.is_empty());
    assert!(calls(&out).is_empty());
    let (list, _) = calls(&l.handle(200, Input::Tick))[0].clone();
    let out = l.handle(
        201,
        Input::Answer {
            call: list,
            answer: Answer::Found(vec![]),
        },
    );
    assert_eq!(
        steps(&out),
        vec![Step::Settled {
            op: "op1".into(),
            state: OperationState::RolledBack,
            error: None
        }]
    );
}
