//! The replication engine: a synchronous, deterministic core (sans-IO).
//!
//! Implements architecture section 3 (DRBD protocol C semantics over a
//! logical log): the primary ships entries to the standby, commits a write
//! once it is durable on both nodes (sync mode) or locally with a bounded
//! lag (async mode), and tells the runtime what to persist, apply, send and
//! compact. Time is an input; there is no I/O, clock or randomness inside, so
//! a test is "these inputs, exactly these outputs" (style principle 2).
//!
//! ```text
//!          Input                          Output
//!   Propose/Tick/Received  --> Core --> Persist / Apply / Send / SendEntries
//!   Persisted/PeerUp/Down                SendSnapshot / InstallSnapshot / Compact
//!   Promote/Demote/Snapshot              Refuse / Disconnect / RoleChanged
//! ```
//! The runtime executes `Persist`, `Apply`, `Compact`, `SaveRecovery` and
//! `InstallSnapshot` strictly in emission order on one storage worker, and
//! reports back with `Persisted` and `SnapshotInstalled`.
//!
//! [`trace`] records a core's inputs and outputs as JSON lines and replays
//! them: a recorded incident runs again, exactly.

mod core;
mod log;
pub mod trace;

pub use crate::core::{
    Config, Core, Input, Mode, Output, PeerStatus, Refusal, ReplStatus, Role, Token,
};
pub use crate::log::LogView;
