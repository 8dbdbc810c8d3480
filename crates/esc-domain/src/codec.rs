//! JSON values in the state map: reading, writing and the counters (a
//! leaf shared by `apply`, `lifecycle` and `query`).

use esc_state::{State, StateError, StateRead};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: key.to_string(),
        source: Box::new(e),
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("in-memory JSON serialization")
}

pub(crate) fn write<T: Serialize>(
    state: &mut dyn State,
    key: &str,
    v: &T,
) -> Result<(), StateError> {
    state.put(key, &encode(v))
}

pub(crate) fn read<T: DeserializeOwned>(
    state: &dyn StateRead,
    key: &str,
) -> Result<Option<T>, StateError> {
    state.get(key)?.map(|b| decode(key, &b)).transpose()
}

pub(crate) fn count(state: &dyn StateRead, key: &str) -> Result<u64, StateError> {
    Ok(read(state, key)?.unwrap_or(0))
}

pub(crate) fn add_count(state: &mut dyn State, key: &str, delta: i64) -> Result<u64, StateError> {
    let n = count(state, key)?.saturating_add_signed(delta);
    state.put(key, &encode(&n))?;
    Ok(n)
}
