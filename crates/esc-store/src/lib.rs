//! The durable store of an `escd` node (architecture section 3).
//!
//! Owns one redb file holding the replicated log, the metadata (epoch,
//! applied index, snapshot point, state digest) and the materialized state:
//! one sorted map of string keys to bytes that an `esc_state::StateMachine`
//! gives meaning to. The store knows nothing of what entries mean; the
//! machine (`esc-domain`) knows nothing of redb. Every change is one redb
//! transaction, so the state and the applied index move together; appends
//! are fsynced before [`Store::write`] returns, applies of already-durable
//! entries need not be (they are replayed from the log after a crash).
//!
//! # Contract
//! - Entries are contiguous: index `n+1` follows `n`; the log starts right
//!   after the snapshot point.
//! - `write` with `append` returns only when those entries are durable.
//! - Applied state always equals the result of applying the log prefix up to
//!   `applied_index`, in order, exactly once (`esc_state`'s contract).
//! - A torn commit is rolled back by redb's checksummed commit; an entry whose
//!   own checksum fails is cut from the tail together with everything after
//!   it, never applied, and reported.
//! - Entries are only removed from the tail by [`Batch::truncate_after`];
//!   the caller saves them first ([`Store::visit_entries`]).
//! - A snapshot is the state map, streamed from one read transaction
//!   ([`Store::stream_snapshot`]) and installed in steps that never hold it
//!   whole ([`Store::stage_begin`], [`Store::stage_chunk`],
//!   [`Store::install_staged`]).
//!
//! # Layout
//! - [`store`]: the redb tables, [`Store`], [`Batch`], recovery at open.
//! - [`digest`]: the state digest kept as items change.

pub mod digest;
mod store;

pub use digest::Digest;
pub use store::{
    Batch, BatchResult, LogMeta, SnapshotPoint, StateReader, Store, StoreError, FORMAT,
};
