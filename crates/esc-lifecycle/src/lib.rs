//! The lifecycle core (issue 11, item 2; architecture section 8): from the
//! replicated operation records and what the VIM answers, the next VIM
//! call of every unfinished operation, and the step results to commit.
//! Sans-IO and deterministic (`Lifecycle::handle(now_ms, Input) ->
//! Vec<Output>`, serde inputs and outputs); the runtime executes the calls
//! on the primary only and proposes the steps through the log.
//!
//! ```text
//!   committed OperationRecords ──Input::Records──┐
//!   VIM answers ──Input::Answer──────────────────┼─> Lifecycle ─> Output::Call (VIM, with the epoch)
//!   leadership ──Input::Lead / Tick──────────────┘             └> Output::Propose(Step) ─> the log
//! ```
//!
//! [`delivery`] is the callback outbox's core: which results to POST, when
//! to retry, when to commit them as delivered (at least once).
//!
//! [`sweep`] is the periodic reconciliation with the VIM: it deletes a
//! server this manager made that no record holds (a create that landed
//! after its operation settled), and names, never deletes, one whose
//! deployment it does not know.
//!
//! # Exactly once
//! - A VM's server is created only after a lookup by its name (derived
//!   from deployment, group, index, generation) found none; a server found
//!   that this operation made (its `esc_op` and `esc_deployment` metadata)
//!   is adopted. A primary that died after the create and before the commit
//!   of its result is therefore never followed by a second server.
//! - A step is proposed once per answer and not again until the record
//!   shows it (or the node stops leading): what the core knows of pending
//!   work is soft state, rebuilt from the records by the next primary.
//! - Answers to calls of an earlier term are dropped (`Lead` starts a term).
//!
//! # Failures
//! A retryable VIM error (5xx, unreachable) is retried with a bounded
//! backoff; after `call_retries_max` attempts, or at once for a refusal
//! (4xx), the operation settles in FAILED_TEMP with the reason, for the
//! operator's retry, rollback or fail (SOL 003).

pub mod core;
pub mod delivery;
pub mod sweep;

pub use crate::core::{Answer, Config, Input, Lifecycle, Output, ServerInfo, VimCall};
