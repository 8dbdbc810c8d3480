//! The accounts through the domain's apply (issue 14, item 3): added once,
//! changed, deleted once; a command carrying a password in place of a hash
//! changes nothing.

use esc_domain::accounts::{User, UserRole};
use esc_domain::{query, Command, Op, Outcome, Refused};
use esc_state::MemState;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

fn run(state: &mut MemState, op: Op) -> Outcome {
    let cmd = Command {
        tid: "t".into(),
        idempotency_key: None,
        fingerprint: String::new(),
        at_ms: 0,
        op,
    };
    esc_domain::apply::apply(1, &cmd, state).unwrap().outcome
}

fn user(name: &str, role: UserRole) -> User {
    User {
        name: name.into(),
        role,
        password_hash: HASH.into(),
    }
}

#[test]
fn users_are_added_changed_and_deleted_once() {
    let mut s = MemState::default();
    let add = |u| Op::PutUser {
        user: u,
        create_only: true,
    };
    assert!(matches!(
        run(&mut s, add(user("ann", UserRole::Viewer))),
        Outcome::UserSet { created: true, .. }
    ));
    assert!(matches!(
        run(&mut s, add(user("ann", UserRole::Admin))),
        Outcome::Refused {
            refused: Refused::UserExists { .. }
        }
    ));
    let new_hash = HASH.replace("aGFza", "bGFza");
    assert!(matches!(
        run(
            &mut s,
            Op::SetPassword {
                name: "ann".into(),
                password_hash: new_hash.clone()
            }
        ),
        Outcome::UserSet {
            role: UserRole::Viewer,
            created: false,
            ..
        }
    ));
    let got = query::user(&s, "ann").unwrap().unwrap();
    assert_eq!(got.password_hash, new_hash);
    assert_eq!(query::users(&s, None, 10).unwrap().len(), 1);
    assert!(matches!(
        run(&mut s, Op::DeleteUser { name: "ann".into() }),
        Outcome::UserDeleted { .. }
    ));
    assert!(matches!(
        run(&mut s, Op::DeleteUser { name: "ann".into() }),
        Outcome::Refused {
            refused: Refused::NoSuchUser { .. }
        }
    ));
    assert!(query::users(&s, None, 10).unwrap().is_empty());
    // Added again after a delete: the count went back down.
    assert!(matches!(
        run(&mut s, add(user("ann", UserRole::Viewer))),
        Outcome::UserSet { created: true, .. }
    ));
}

#[test]
fn a_password_in_place_of_a_hash_is_refused() {
    let mut s = MemState::default();
    let mut u = user("bob", UserRole::Operator);
    u.password_hash = "a-long-enough-password".into();
    let out = run(
        &mut s,
        Op::PutUser {
            user: u,
            create_only: false,
        },
    );
    assert!(matches!(
        out,
        Outcome::Refused {
            refused: Refused::Invalid(_)
        }
    ));
    assert!(query::user(&s, "bob").unwrap().is_none());
    let out = run(
        &mut s,
        Op::SetPassword {
            name: "bob".into(),
            password_hash: "plain".into(),
        },
    );
    assert!(matches!(
        out,
        Outcome::Refused {
            refused: Refused::Invalid(_)
        }
    ));
}
