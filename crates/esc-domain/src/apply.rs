//! [`Domain`]: the deterministic application of commands (the
//! `esc_state::StateMachine` of an esc node).
//!
//! An idempotency key makes a command apply at most once: the first answer
//! is stored under the key, replicated with the state, and returned for
//! every resend (esc-facts: "resending is safe"). A later command with the
//! key but another fingerprint (a different request) changes nothing and is
//! refused, decided from the log alone so every node answers the same.

use crate::command::{Command, Op};
use crate::keys;
use crate::outcome::{Answer, Event, EventKind, IdempotencyRecord, Outcome, Refused};
use esc_state::{ApplyError, State, StateError, StateMachine};

/// Events kept in the outbox; older ones are dropped as new ones come (the
/// notifier of a later issue delivers them well within that many).
pub const OUTBOX_EVENTS_MAX: u64 = 10_000;
/// Events one entry may produce (their ids are `index * 16 + n`).
pub const EVENTS_PER_ENTRY_MAX: u64 = 16;

/// The replicated domain; stateless itself (everything is in the state map).
#[derive(Debug, Clone, Copy, Default)]
pub struct Domain;

use crate::codec::{add_count, encode, read};

impl StateMachine for Domain {
    type Outcome = Answer;

    fn apply(
        &self,
        index: u64,
        payload: &[u8],
        state: &mut dyn State,
    ) -> Result<Answer, ApplyError> {
        let cmd =
            Command::from_payload(payload).map_err(|e| ApplyError::Undecodable(Box::new(e)))?;
        Ok(apply(index, &cmd, state)?)
    }
}

/// Applies one decoded command (entry `index`).
pub fn apply(index: u64, cmd: &Command, state: &mut dyn State) -> Result<Answer, StateError> {
    if let Some(key) = &cmd.idempotency_key {
        let k = keys::idempotency(key);
        if let Some(r) = read::<IdempotencyRecord>(state, &k)? {
            if r.fingerprint != cmd.fingerprint {
                return Ok(Answer {
                    tid: cmd.tid.clone(),
                    outcome: Outcome::Refused {
                        refused: Refused::IdempotencyKeyReused,
                    },
                });
            }
            // A resend that reached the log twice: the first answer stands.
            return Ok(r.answer);
        }
    }
    let (outcome, events) = match cmd.validate() {
        Err(e) => (refused(Refused::Invalid(e.to_string())), Vec::new()),
        Ok(()) => change(index, cmd, state)?,
    };
    for (n, kind) in events.into_iter().enumerate() {
        emit(index, n, cmd, kind, state)?;
    }
    let answer = Answer {
        tid: cmd.tid.clone(),
        outcome,
    };
    if let Some(key) = &cmd.idempotency_key {
        let record = IdempotencyRecord {
            fingerprint: cmd.fingerprint.clone(),
            answer: answer.clone(),
        };
        state.put(&keys::idempotency(key), &encode(&record))?;
    }
    Ok(answer)
}

fn refused(refused: Refused) -> Outcome {
    Outcome::Refused { refused }
}

/// The change one valid command makes, and the events it produces.
fn change(
    index: u64,
    cmd: &Command,
    state: &mut dyn State,
) -> Result<(Outcome, Vec<EventKind>), StateError> {
    Ok(match &cmd.op {
        Op::CreateTenant { tenant } => {
            let k = keys::tenant(&tenant.name);
            if state.get(&k)?.is_some() {
                let name = tenant.name.clone();
                (refused(Refused::TenantExists { name }), Vec::new())
            } else {
                state.put(&k, &encode(tenant))?;
                let name = tenant.name.clone();
                (Outcome::TenantCreated { name }, Vec::new())
            }
        }
        Op::StartOperation {
            op_id,
            deployment,
            kind,
            callback,
        } => crate::lifecycle::start(
            index,
            cmd,
            op_id,
            deployment,
            kind,
            callback.as_deref(),
            state,
        )?,
        Op::RecordStep { step } => crate::lifecycle::record(index, cmd, step, state)?,
        Op::ControlOperation { op_id, action } => {
            crate::lifecycle::control(index, cmd, op_id, *action, state)?
        }
        Op::CallbacksDelivered { op_ids } => {
            (crate::lifecycle::delivered(op_ids, state)?, Vec::new())
        }
        Op::SetMonitoring {
            deployment,
            enabled,
        } => crate::lifecycle::set_monitoring(index, deployment, *enabled, state)?,
        Op::PutUser { user, create_only } => (put_user(user, *create_only, state)?, Vec::new()),
        Op::SetPassword {
            name,
            password_hash,
        } => (set_password(name, password_hash, state)?, Vec::new()),
        Op::DeleteUser { name } => (delete_user(name, state)?, Vec::new()),
        Op::SetOpMode { mode } => {
            state.put(keys::OP_MODE, &encode(mode))?;
            (
                Outcome::OpModeSet { mode: *mode },
                vec![EventKind::OpModeChanged { mode: *mode }],
            )
        }
    })
}

/// `Op::PutUser`: creates the user (refused if it exists and `create_only`)
/// or replaces its role and hash.
fn put_user(
    user: &crate::accounts::User,
    create_only: bool,
    state: &mut dyn State,
) -> Result<Outcome, StateError> {
    let k = keys::user(&user.name);
    let existed = state.get(&k)?.is_some();
    if existed && create_only {
        return Ok(refused(Refused::UserExists {
            name: user.name.clone(),
        }));
    }
    if !existed {
        if crate::codec::count(state, keys::USER_COUNT)? >= crate::accounts::USERS_MAX {
            return Ok(refused(Refused::Invalid(format!(
                "at most {} users: delete one first",
                crate::accounts::USERS_MAX
            ))));
        }
        crate::codec::add_count(state, keys::USER_COUNT, 1)?;
    }
    state.put(&k, &encode(user))?;
    Ok(Outcome::UserSet {
        name: user.name.clone(),
        role: user.role,
        created: !existed,
    })
}

/// `Op::SetPassword`: a new hash for an existing user, its role kept.
fn set_password(
    name: &str,
    password_hash: &str,
    state: &mut dyn State,
) -> Result<Outcome, StateError> {
    let k = keys::user(name);
    let Some(mut user) = read::<crate::accounts::User>(state, &k)? else {
        return Ok(refused(Refused::NoSuchUser { name: name.into() }));
    };
    user.password_hash = password_hash.to_string();
    state.put(&k, &encode(&user))?;
    Ok(Outcome::UserSet {
        name: user.name,
        role: user.role,
        created: false,
    })
}

/// `Op::DeleteUser`.
fn delete_user(name: &str, state: &mut dyn State) -> Result<Outcome, StateError> {
    let k = keys::user(name);
    if state.get(&k)?.is_none() {
        return Ok(refused(Refused::NoSuchUser { name: name.into() }));
    }
    state.delete(&k)?;
    crate::codec::add_count(state, keys::USER_COUNT, -1)?;
    Ok(Outcome::UserDeleted { name: name.into() })
}

/// Appends to the outbox, dropping the oldest event past the bound.
///
/// The `n`th event of entry `index` has the id `index * 16 + n` (an entry
/// emits at most [`EVENTS_PER_ENTRY_MAX`]): the same on every node.
fn emit(
    index: u64,
    n: usize,
    cmd: &Command,
    kind: EventKind,
    state: &mut dyn State,
) -> Result<(), StateError> {
    let id = index.saturating_mul(EVENTS_PER_ENTRY_MAX) + (n as u64).min(EVENTS_PER_ENTRY_MAX - 1);
    let event = Event {
        id,
        seq: add_count(state, keys::EVENT_SEQ, 1)?,
        at_ms: cmd.at_ms,
        tid: cmd.tid.clone(),
        kind,
    };
    state.put(&keys::event(id), &encode(&event))?;
    if add_count(state, keys::EVENT_COUNT, 1)? > OUTBOX_EVENTS_MAX {
        // Every event up to the last one dropped is gone: look after it.
        let dropped: Option<u64> = read(state, keys::EVENT_DROPPED)?;
        let from = dropped.map(keys::event);
        let mut oldest = None;
        state.scan(keys::EVENT, from.as_deref(), 1, &mut |k, _| {
            oldest = Some(k.to_string());
            false
        })?;
        if let Some(k) = oldest {
            state.delete(&k)?;
            if let Ok(id) = k[keys::EVENT.len()..].parse::<u64>() {
                state.put(keys::EVENT_DROPPED, &encode(&id))?;
            }
            add_count(state, keys::EVENT_COUNT, -1)?;
        }
    }
    Ok(())
}
