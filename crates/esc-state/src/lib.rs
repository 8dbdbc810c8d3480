//! The contract between the store and the replicated domain (style
//! principle 9: storage behind a trait with a written contract).
//!
//! The store (`esc-store`) owns the durable log, snapshots and crash
//! recovery; it knows nothing of what the log's entries mean. A
//! [`StateMachine`] (`esc-domain`) gives them meaning: the store hands it
//! each committed entry's payload together with the materialized state, a
//! sorted map of string keys to bytes ([`State`]), and the machine reads and
//! changes that map. Everything the machine knows lives in that map, so a
//! snapshot is the map itself and installing one replaces it.
//!
//! # Contract
//! - **Deterministic.** `apply` depends on the payload and the state only:
//!   no clock, no randomness, no I/O. Every node that applies the same log
//!   holds the same map and answers the same outcomes.
//! - **Exactly once, in order.** The store applies each committed index once,
//!   in index order, inside the same transaction that records the applied
//!   index; a crash rolls both back together.
//! - **Failures.** A payload the machine cannot decode, or a failing state
//!   access, is an [`ApplyError`]; the store stops (the log is corrupt or
//!   was written by another version), it never skips an entry.
//! - **Snapshot = the map.** Reading every key of the map at an applied
//!   index and installing it elsewhere gives a state that answers every
//!   later entry the same way.
//!
//! [`contract`] checks these properties for any machine on [`MemState`];
//! `esc-domain` runs it, on a `MemState` and on the redb store.

use std::collections::BTreeMap;

pub mod contract;

/// Any error, boxed: what the store's backend or a decoder reported.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A state access failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store's backend (redb) failed.
    #[error("state backend: {0}")]
    Backend(#[source] Source),
    /// A stored value does not decode (written by another version, or
    /// damaged).
    #[error("stored {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: Source,
    },
}

/// Why an entry could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("undecodable command: {0}")]
    Undecodable(#[source] Source),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where a [`StateRead::scan`] starts: strictly after `after` when it lies
/// at or past `prefix`, else at `prefix` (for every implementation).
pub fn scan_start<'a>(prefix: &'a str, after: Option<&'a str>) -> std::ops::Bound<&'a str> {
    match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
        _ => std::ops::Bound::Included(prefix),
    }
}

/// Reads of the materialized state.
pub trait StateRead {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Keys starting with `prefix`, in key order, strictly after `after` if
    /// given; stops after `limit` items or when `visit` returns false.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StateError>;
}

/// Changes to the materialized state, made while applying an entry.
pub trait State: StateRead {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError>;
    /// Removes a key; says whether it was there.
    fn delete(&mut self, key: &str) -> Result<bool, StateError>;
}

/// Gives the log's entries their meaning (see the module's contract).
pub trait StateMachine: Send + Sync + 'static {
    /// What applying one entry produced, answered to whoever proposed it.
    type Outcome: Clone + std::fmt::Debug + Send + 'static;

    /// Applies the payload of the committed entry at `index`.
    fn apply(
        &self,
        index: u64,
        payload: &[u8],
        state: &mut dyn State,
    ) -> Result<Self::Outcome, ApplyError>;
}

/// The materialized state in memory: the reference a store is compared
/// with, and the state of [`contract`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemState(pub BTreeMap<String, Vec<u8>>);

impl StateRead for MemState {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StateError> {
        for (k, v) in self
            .0
            .range::<str, _>((scan_start(prefix, after), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
        {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

impl State for MemState {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.0.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, StateError> {
        Ok(self.0.remove(key).is_some())
    }
}
