//! Typed reads of the state, for the northbound and the admin socket. Each
//! takes any `StateRead` (a read transaction of the store, or a `MemState`).

use crate::codec::{count, decode, read};
use crate::command::OpMode;
use crate::keys;
use crate::model::{Callback, ServiceRecord};
use crate::outcome::{Event, IdempotencyRecord};
use esc_state::{StateError, StateRead};

/// Deployments in name order, after `after`, at most `limit`.
pub fn deployments(
    state: &dyn StateRead,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ServiceRecord>, StateError> {
    let after = after.map(keys::service);
    decoded(state, keys::SERVICE, after.as_deref(), limit)
}

/// Results owed to callback URLs, in operation-id order, at most `limit`.
pub fn callbacks(state: &dyn StateRead, limit: usize) -> Result<Vec<Callback>, StateError> {
    decoded(state, keys::CALLBACK, None, limit)
}

/// The values under `prefix` after the key `after`, decoded, in key order.
fn decoded<T: serde::de::DeserializeOwned>(
    state: &dyn StateRead,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<T>, StateError> {
    let mut out = Vec::new();
    let mut bad = None;
    state.scan(prefix, after, limit, &mut |k, v| {
        match decode(k, v) {
            Ok(d) => out.push(d),
            Err(e) => bad = Some(e),
        }
        bad.is_none()
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

pub fn deployment_count(state: &dyn StateRead) -> Result<u64, StateError> {
    count(state, keys::DEPLOYMENT_COUNT)
}

/// The replicated operation mode (default: operation).
pub fn op_mode(state: &dyn StateRead) -> Result<OpMode, StateError> {
    Ok(read(state, keys::OP_MODE)?.unwrap_or(OpMode::Operation))
}

pub fn idempotency(
    state: &dyn StateRead,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StateError> {
    read(state, &keys::idempotency(key))
}

/// Events of the outbox after id `after`, oldest first, at most `limit`.
pub fn events(state: &dyn StateRead, after: u64, limit: usize) -> Result<Vec<Event>, StateError> {
    decoded(state, keys::EVENT, Some(&keys::event(after)), limit)
}

pub fn event(state: &dyn StateRead, id: u64) -> Result<Option<Event>, StateError> {
    read(state, &keys::event(id))
}

pub fn event_count(state: &dyn StateRead) -> Result<u64, StateError> {
    count(state, keys::EVENT_COUNT)
}

/// The unsettled operations and their versions (the log index that last
/// changed each): one small read per operation in progress, so the
/// runner reads again only the records that moved.
pub fn active_operation_versions(state: &dyn StateRead) -> Result<Vec<(String, u64)>, StateError> {
    let mut out = Vec::new();
    let mut bad = None;
    state.scan(keys::ACTIVE_OPERATION, None, usize::MAX, &mut |k, v| {
        // Written as a JSON number; an empty value is version 0.
        let version = if v.is_empty() {
            Ok(0)
        } else {
            decode::<u64>(k, v)
        };
        match version {
            Ok(n) => out.push((k[keys::ACTIVE_OPERATION.len()..].to_string(), n)),
            Err(e) => bad = Some(e),
        }
        bad.is_none()
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The unsettled lifecycle operations, for the primary's runner (one read
/// per operation in progress, none per settled one).
pub fn active_operations(
    state: &dyn StateRead,
) -> Result<Vec<crate::model::OperationRecord>, StateError> {
    let mut ids = Vec::new();
    state.scan(keys::ACTIVE_OPERATION, None, usize::MAX, &mut |k, _| {
        ids.push(k[keys::ACTIVE_OPERATION.len()..].to_string());
        true
    })?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(r) = read(state, &keys::operation(&id))? {
            out.push(r);
        }
    }
    Ok(out)
}

pub fn operation(
    state: &dyn StateRead,
    id: &str,
) -> Result<Option<crate::model::OperationRecord>, StateError> {
    read(state, &keys::operation(id))
}

pub fn service(state: &dyn StateRead, name: &str) -> Result<Option<ServiceRecord>, StateError> {
    read(state, &keys::service(name))
}

/// The log index at which deployment `name` (one with VMs) was removed, if
/// it was among the last `GONE_MAX` removed (the lifecycle's bound).
pub fn gone(state: &dyn StateRead, name: &str) -> Result<Option<u64>, StateError> {
    read(state, &keys::gone(name))
}

/// The services' change feed after log index `after` (oldest first, at
/// most `limit`): each entry's index and what it changed.
pub fn service_changes(
    state: &dyn StateRead,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, crate::lifecycle::ServiceChange)>, StateError> {
    let mut out = Vec::new();
    let mut bad = None;
    let from = keys::service_change(after);
    state.scan(keys::SERVICE_CHANGE, Some(&from), limit, &mut |k, v| {
        let index = k[keys::SERVICE_CHANGE.len()..].parse().unwrap_or(0);
        match decode(k, v) {
            Ok(c) => out.push((index, c)),
            Err(e) => bad = Some(e),
        }
        bad.is_none()
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// An API account, with its password hash (for the northbound's check).
pub fn user(
    state: &dyn StateRead,
    name: &str,
) -> Result<Option<crate::accounts::User>, StateError> {
    read(state, &keys::user(name))
}

/// API accounts in name order after `after`, at most `limit`.
pub fn users(
    state: &dyn StateRead,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<crate::accounts::User>, StateError> {
    let after = after.map(keys::user);
    decoded(state, keys::USER, after.as_deref(), limit)
}
