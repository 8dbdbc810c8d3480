//! A small key-value `StateMachine` for the store's own tests: the store is
//! tested against the `esc_state` contract, not against the domain (which
//! `esc-domain` tests, store included). Commands are JSON; each carries its
//! sequence number, so every payload is unique and a lost entry that comes
//! back is told apart.

#![allow(dead_code)]

use esc_state::{ApplyError, State, StateMachine, StateRead};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kv {
    Put {
        seq: u64,
        key: String,
        value: String,
    },
    Del {
        seq: u64,
        key: String,
    },
    /// Read-modify-write: the counter at `key` goes up by one.
    Bump {
        seq: u64,
        key: String,
    },
}

/// What a command answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOutcome {
    Put { replaced: bool },
    Del { found: bool },
    Bump { now: u64 },
}

#[derive(Debug, Clone, Copy, Default)]
pub struct KvMachine;

impl StateMachine for KvMachine {
    type Outcome = KvOutcome;

    fn apply(
        &self,
        _index: u64,
        payload: &[u8],
        state: &mut dyn State,
    ) -> Result<KvOutcome, ApplyError> {
        let cmd: Kv =
            serde_json::from_slice(payload).map_err(|e| ApplyError::Undecodable(Box::new(e)))?;
        Ok(match cmd {
            Kv::Put { key, value, .. } => {
                let replaced = state.get(&key)?.is_some();
                state.put(&key, value.as_bytes())?;
                KvOutcome::Put { replaced }
            }
            Kv::Del { key, .. } => KvOutcome::Del {
                found: state.delete(&key)?,
            },
            Kv::Bump { key, .. } => {
                let now = state
                    .get(&key)?
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                state.put(&key, now.to_string().as_bytes())?;
                KvOutcome::Bump { now }
            }
        })
    }
}

pub fn encode(cmd: &Kv) -> Vec<u8> {
    serde_json::to_vec(cmd).expect("a command serializes")
}

/// Every key of a state, for "is it empty" checks.
pub fn keys(state: &dyn StateRead) -> Vec<String> {
    let mut out = Vec::new();
    state
        .scan("", None, usize::MAX, &mut |k, _| {
            out.push(k.to_string());
            true
        })
        .expect("scan");
    out
}
