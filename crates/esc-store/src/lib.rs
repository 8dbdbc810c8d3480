//! The durable store of an `escd` node (architecture section 3).
//!
//! Owns one redb file holding the replicated log, the materialized state
//! (deployments and idempotency keys) and the metadata (epoch, applied index,
//! snapshot point). Every change is one redb transaction, so the state and
//! the applied index move together; appends are fsynced before [`Store::write`]
//! returns, applies of already-durable entries need not be (they are replayed
//! from the log after a crash).
//!
//! # Contract
//! - Entries are contiguous: index `n+1` follows `n`; the log starts right
//!   after the snapshot point.
//! - `write` with `append` returns only when those entries are durable.
//! - Applied state always equals the result of applying the log prefix up to
//!   `applied_index`, in order, exactly once.
//! - A torn commit is rolled back by redb's checksummed commit; an entry whose
//!   own checksum fails is cut from the tail together with everything after
//!   it, never applied, and reported.
//! - Entries are only removed from the tail by [`Batch::truncate_after`],
//!   which returns them so the caller can keep them in the recovery file.
//!
//! # Layout
//! - [`state`]: commands, their deterministic application, outcomes.
//! - [`store`]: the redb tables, [`Store`], [`Batch`], recovery at open.

pub mod state;
mod store;

pub use state::{Command, Deployment, Op, OpMode, Outcome};
pub use store::{Batch, BatchResult, LogMeta, Store, StoreError, SNAPSHOT_TABLES};
