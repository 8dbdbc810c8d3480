//! The durable store of an `escd` node (architecture section 3).
//!
//! Owns the replicated log, as append-only segment files (the durability
//! point: one `fdatasync` per group of appends, issue 13), and one redb
//! file holding the metadata (epoch, applied index, snapshot point, log
//! generation, state digest) and the materialized state: one sorted map of
//! string keys to bytes that an `esc_state::StateMachine` gives meaning to.
//! The store knows nothing of what entries mean; the machine
//! (`esc-domain`) knows nothing of redb. The state and the applied index
//! move together in one redb transaction, committed durably only at
//! checkpoints; after a crash the entries past the last checkpoint are
//! applied again from the log.
//!
//! # Contract
//! - Entries are contiguous: index `n+1` follows `n`; the log starts right
//!   after the snapshot point.
//! - `write_log` (and `write`) with `append` returns only when those
//!   entries are durable.
//! - Only entries durable in the log are applied, so the state never runs
//!   ahead of the log.
//! - Applied state always equals the result of applying the log prefix up to
//!   `applied_index`, in order, exactly once (`esc_state`'s contract).
//! - A record cut short or damaged at the log's tail ends the log there: it
//!   and everything after it are dropped, never applied, and reported; a
//!   log that ends before the applied index is refused at open.
//! - Entries are only removed from the tail by [`Batch::truncate_after`];
//!   the caller saves them first ([`Store::visit_entries`]).
//! - A snapshot is the state map, streamed from one read transaction
//!   ([`Store::stream_snapshot`]) and installed in steps that never hold it
//!   whole ([`Store::stage_begin`], [`Store::stage_chunk`],
//!   [`Store::install_staged`]).
//!
//! # Layout
//! - [`store`]: the redb tables, [`Store`], [`Batch`], recovery at open.
//! - `segment`: the segment files, their recovery and truncation.
//! - [`fs`]: the file operations the log needs ([`OsFs`], [`MemFs`]; the
//!   crash tests bring a disk that loses power).
//! - `overlay`: an apply's changes in memory, written once per key.
//! - `error`: [`StoreError`].
//! - [`digest`]: the state digest kept as items change.

pub mod digest;
mod error;
pub mod fs;
mod overlay;
mod segment;
mod store;

pub use digest::Digest;
pub use fs::{LogFs, MemFs, OsFs};
pub use segment::LogOptions;
pub use store::{
    Batch, BatchResult, LogMeta, SnapshotPoint, StateReader, Store, StoreError, FORMAT,
};
