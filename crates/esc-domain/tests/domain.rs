//! The domain as a `StateMachine` (the `esc_state::contract` suite) and its
//! own rules: outcomes, idempotency, the outbox.

use esc_domain::apply::OUTBOX_EVENTS_MAX;
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

fn create(name: &str) -> Op {
    Op::CreateDeployment {
        id: format!("id-{name}"),
        name: name.into(),
        spec: serde_json::json!({ "name": name }),
    }
}

fn delete(name: &str) -> Op {
    Op::DeleteDeployment { name: name.into() }
}

/// A log with collisions: creates and deletes over few names, repeated and
/// reused keys, mode changes, an invalid command.
fn mixed_log() -> Vec<Vec<u8>> {
    let mut log = Vec::new();
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
    let mut s = MemState::default();
    let a = apply(&mut s, 1, &cmd(1, None, "", create("a")));
    assert!(
        matches!(a.outcome, Outcome::DeploymentCreated { ref deployment } if deployment.name == "a")
    );
    let again = apply(&mut s, 2, &cmd(2, None, "", create("a")));
    assert_eq!(
        again.outcome,
        Outcome::Refused {
            refused: Refused::DeploymentExists { name: "a".into() }
        }
    );
    assert_eq!(query::deployment_count(&s).unwrap(), 1);
    let gone = apply(&mut s, 3, &cmd(3, None, "", delete("a")));
    assert_eq!(
        gone.outcome,
        Outcome::DeploymentDeleted { name: "a".into() }
    );
    let none = apply(&mut s, 4, &cmd(4, None, "", delete("a")));
    assert_eq!(
        none.outcome,
        Outcome::Refused {
            refused: Refused::NoSuchDeployment { name: "a".into() }
        }
    );
    assert_eq!(query::deployment_count(&s).unwrap(), 0);
    let bad = apply(&mut s, 5, &cmd(5, None, "", create("")));
    assert!(
        matches!(&bad.outcome, Outcome::Refused { refused: Refused::Invalid(m) } if m.contains("name")),
        "{bad:?}"
    );
}

// Two requests with one key but different bodies that both reached the log
// (they raced past the API's check): the second changes nothing and is
// refused the same way on every node; the first answer stays.
#[test]
fn a_key_reused_for_a_different_request_is_refused_when_applied() {
    let mut s = MemState::default();
    let first = apply(&mut s, 1, &cmd(1, Some("k"), "f1", create("a")));
    let other = apply(&mut s, 2, &cmd(2, Some("k"), "f2", create("b")));
    assert_eq!(
        other.outcome,
        Outcome::Refused {
            refused: Refused::IdempotencyKeyReused
        }
    );
    assert!(query::deployment(&s, "b").unwrap().is_none());
    let resend = apply(&mut s, 3, &cmd(3, Some("k"), "f1", create("a")));
    assert_eq!(
        resend, first,
        "a resend gets the first answer, tid included"
    );
    assert_eq!(query::idempotency(&s, "k").unwrap().unwrap().answer, first);
}

#[test]
fn listing_pages_in_name_order() {
    let mut s = MemState::default();
    for (i, n) in ["c", "a", "b", "d"].iter().enumerate() {
        apply(&mut s, i as u64 + 1, &cmd(i as u64, None, "", create(n)));
    }
    let names = |v: Vec<esc_domain::Deployment>| v.into_iter().map(|d| d.name).collect::<Vec<_>>();
    assert_eq!(names(query::deployments(&s, None, 2).unwrap()), ["a", "b"]);
    assert_eq!(
        names(query::deployments(&s, Some("b"), 10).unwrap()),
        ["c", "d"]
    );
}

#[test]
fn the_outbox_holds_events_by_log_index_and_stays_bounded() {
    let mut s = MemState::default();
    apply(&mut s, 1, &cmd(1, None, "", create("a")));
    apply(&mut s, 2, &cmd(2, None, "", create("a"))); // refused: no event
    apply(&mut s, 3, &cmd(3, None, "", delete("a")));
    let ev = query::events(&s, 0, 10).unwrap();
    assert_eq!(
        ev.iter().map(|e| e.id).collect::<Vec<_>>(),
        [16, 48],
        "ids: log index x 16 + the event's position"
    );
    assert_eq!(
        ev[1].kind,
        EventKind::DeploymentDeleted { name: "a".into() }
    );
    for i in 4..4 + OUTBOX_EVENTS_MAX {
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
        4 * 16,
        "the two oldest (of entries 1 and 3) were dropped"
    );
}
