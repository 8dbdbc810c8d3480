//! The domain as a `StateMachine` (the `esc_state::contract` suite) and its
//! own rules: outcomes, idempotency, the outbox.

use esc_domain::apply::OUTBOX_EVENTS_MAX;
use esc_domain::model::{DeploymentSpec, OperationKind, OperationState, Tenant};
use esc_domain::{query, Answer, Command, Domain, EventKind, Op, OpMode, Outcome, Refused};
use esc_state::{contract, MemState, StateMachine};

fn cmd(seq: u64, key: Option<&str>, fingerprint: &str, op: Op) -> Vec<u8> {
    Command {
        tid: format!("t{seq}"),
        idempotency_key: key.map(str::to_string),
        fingerprint: fingerprint.into(),
        at_ms: 1_700_000_000_000 + seq,
        op,
    }
    .to_payload()
}

/// Operation ids, unique over a test's log.
fn op_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("op{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A deployment of no VM group (it completes in its own entry).
fn create(name: &str) -> Op {
    let spec = DeploymentSpec {
        name: name.into(),
        tenant: "t".into(),
        vm_groups: Vec::new(),
        properties: [("note".to_string(), format!("of {name}"))].into(),
    };
    Op::StartOperation {
        op_id: op_id(),
        deployment: name.into(),
        kind: OperationKind::Deploy { spec },
        callback: None,
    }
}

fn delete(name: &str) -> Op {
    Op::StartOperation {
        op_id: op_id(),
        deployment: name.into(),
        kind: OperationKind::Undeploy,
        callback: None,
    }
}

fn tenant() -> Op {
    Op::CreateTenant {
        tenant: Tenant {
            name: "t".into(),
            description: String::new(),
        },
    }
}

/// A state holding the tenant `t` (entry 1).
fn with_tenant() -> MemState {
    let mut s = MemState::default();
    apply(&mut s, 1, &cmd(0, None, "", tenant()));
    s
}

fn started(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::OperationStarted {
            state: OperationState::Completed,
            ..
        }
    )
}

/// A log with collisions: creates and deletes over few names, repeated and
/// reused keys, mode changes, an invalid command.
fn mixed_log() -> Vec<Vec<u8>> {
    let mut log = vec![cmd(100, None, "t", tenant())];
    for seq in 0..60u64 {
        let name = format!("d{}", seq % 5);
        let op = match seq % 7 {
            0..=3 => create(&name),
            4 | 5 => delete(&name),
            _ => Op::SetOpMode {
                mode: if seq % 2 == 0 {
                    OpMode::Maintenance
                } else {
                    OpMode::Operation
                },
            },
        };
        let key = (seq % 3 == 0).then(|| format!("k{}", seq % 4));
        log.push(cmd(seq, key.as_deref(), &format!("f{}", seq % 2), op));
    }
    log.push(cmd(99, None, "f", create("bad name!")));
    log
}

fn apply(state: &mut MemState, index: u64, payload: &[u8]) -> Answer {
    Domain.apply(index, payload, state).unwrap()
}

#[test]
fn the_state_machine_contract_holds() {
    let log = mixed_log();
    contract::deterministic(|| Domain, &log);
    contract::snapshot_is_the_state(&Domain, &log);
    contract::refuses_garbage(
        &Domain,
        &[
            b"",
            b"not json",
            b"{}",
            br#"{"tid":"t","op":{"op":"launch"}}"#,
        ],
    );
}

#[test]
fn create_delete_and_their_refusals_are_typed() {
    let mut s = with_tenant();
    let a = apply(&mut s, 2, &cmd(1, None, "", create("a")));
    assert!(started(&a.outcome), "{a:?}");
    let d = query::service(&s, "a").unwrap().unwrap();
    assert_eq!(d.state, esc_domain::model::ServiceState::Active);
    assert_eq!(d.spec.properties["note"], "of a");
    let again = apply(&mut s, 3, &cmd(2, None, "", create("a")));
    assert_eq!(
        again.outcome,
        Outcome::Refused {
            refused: Refused::DeploymentExists { name: "a".into() }
        }
    );
    assert_eq!(query::deployment_count(&s).unwrap(), 1);
    let gone = apply(&mut s, 4, &cmd(3, None, "", delete("a")));
    assert!(started(&gone.outcome), "{gone:?}");
    assert!(query::service(&s, "a").unwrap().is_none());
    let none = apply(&mut s, 5, &cmd(4, None, "", delete("a")));
    assert_eq!(
        none.outcome,
        Outcome::Refused {
            refused: Refused::NoSuchDeployment { name: "a".into() }
        }
    );
    assert_eq!(query::deployment_count(&s).unwrap(), 0);
    let bad = apply(&mut s, 6, &cmd(5, None, "", create("")));
    assert!(
        matches!(&bad.outcome, Outcome::Refused { refused: Refused::Invalid(m) } if m.contains("name")),
        "{bad:?}"
    );
    let mut s = MemState::default();
    let orphan = apply(&mut s, 1, &cmd(1, None, "", create("a")));
    assert_eq!(
        orphan.outcome,
        Outcome::Refused {
            refused: Refused::NoSuchTenant { name: "t".into() }
        }
    );
    assert_eq!(query::deployment_count(&s).unwrap(), 0);
}

// Two requests with one key but different bodies that both reached the log
// (they raced past the API's check): the second changes nothing and is
// refused the same way on every node; the first answer stays.
#[test]
fn a_key_reused_for_a_different_request_is_refused_when_applied() {
    let mut s = with_tenant();
    let first = apply(&mut s, 2, &cmd(1, Some("k"), "f1", create("a")));
    let other = apply(&mut s, 3, &cmd(2, Some("k"), "f2", create("b")));
    assert_eq!(
        other.outcome,
        Outcome::Refused {
            refused: Refused::IdempotencyKeyReused
        }
    );
    assert!(query::service(&s, "b").unwrap().is_none());
    let resend = apply(&mut s, 4, &cmd(3, Some("k"), "f1", create("a")));
    assert_eq!(
        resend, first,
        "a resend gets the first answer, tid included"
    );
    assert_eq!(query::idempotency(&s, "k").unwrap().unwrap().answer, first);
}

#[test]
fn listing_pages_in_name_order() {
    let mut s = with_tenant();
    for (i, n) in ["c", "a", "b", "d"].iter().enumerate() {
        apply(&mut s, i as u64 + 2, &cmd(i as u64, None, "", create(n)));
    }
    let names = |v: Vec<esc_domain::model::ServiceRecord>| {
        v.into_iter().map(|d| d.spec.name).collect::<Vec<_>>()
    };
    assert_eq!(names(query::deployments(&s, None, 2).unwrap()), ["a", "b"]);
    assert_eq!(
        names(query::deployments(&s, Some("b"), 10).unwrap()),
        ["c", "d"]
    );
}

#[test]
fn the_outbox_holds_events_by_log_index_and_stays_bounded() {
    let mut s = with_tenant();
    apply(&mut s, 2, &cmd(1, None, "", create("a")));
    apply(&mut s, 3, &cmd(2, None, "", create("a"))); // refused: no event
    apply(&mut s, 4, &cmd(3, None, "", delete("a")));
    let ev = query::events(&s, 0, 10).unwrap();
    assert_eq!(
        ev.iter().map(|e| e.id).collect::<Vec<_>>(),
        [32, 33, 64, 65],
        "ids: log index x 16 + the event's position"
    );
    let names: Vec<_> = ev
        .iter()
        .map(|e| match &e.kind {
            EventKind::Esc { event, .. } => event.as_str(),
            _ => "other",
        })
        .collect();
    assert_eq!(
        names,
        [
            "SERVICE_DEPLOYING",
            "SERVICE_ALIVE",
            "SERVICE_UNDEPLOYING",
            "SERVICE_UNDEPLOYED"
        ]
    );
    for i in 5..5 + OUTBOX_EVENTS_MAX {
        let mode = if i % 2 == 0 {
            OpMode::Maintenance
        } else {
            OpMode::Operation
        };
        apply(&mut s, i, &cmd(i, None, "", Op::SetOpMode { mode }));
    }
    assert_eq!(query::event_count(&s).unwrap(), OUTBOX_EVENTS_MAX);
    let first = query::events(&s, 0, 1).unwrap();
    assert_eq!(
        first[0].id,
        5 * 16,
        "the four oldest (of entries 2 and 4) were dropped"
    );
}
