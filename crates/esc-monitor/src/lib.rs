//! The monitoring core (issue 12, item 3; architecture section 8): ESC's
//! MONA as a sans-IO, deterministic state machine
//! (`Monitor::handle(now_ms, Input) -> Vec<Output>`, serde inputs and
//! outputs). It schedules each VM's KPI probes, spread over their period by
//! a phase derived from the VM's name (the same on both nodes, so a new
//! primary keeps the old one's rhythm), counts each KPI's occurrences and
//! fires the group's rules. Its decisions (a VM alive, a bootup check
//! failed, a recovery) become replicated steps and operations through the
//! log; probe counters are soft state, never replicated.
//!
//! ```text
//!   replicated VMs ──Input::Vms──────┐
//!   probe results ──Input::Result────┼─> Monitor ─> Output::Probe (ICMP, TCP, HTTP, with a deadline)
//!   leadership ──Input::Lead / Tick──┘          └> Output::Alive / BootupFailed / Recover / Log / Script
//! ```
//!
//! # Exactly once
//! - A recovery is the VM's `n`th, `n` its replicated recovery count: its
//!   operation id derives from the VM and `n` ([`recovery_op_id`]), so two
//!   primaries deciding the same recovery propose one operation (the
//!   second proposal is refused as a used id).
//! - A VM with an operation in progress is not probed (`Phase::Paused`);
//!   it comes back with fresh counters once the operation settles.
//! - A decision proposed and not seen in the records within
//!   `repropose_ms` is proposed again (the proposals are idempotent).

pub mod core;
pub mod watch;

pub use crate::core::{
    recovery_op_id, scale_op_id, slot_offset, Config, GroupScale, Input, Monitor, Output, Phase,
    Stats, Target, Watched,
};
