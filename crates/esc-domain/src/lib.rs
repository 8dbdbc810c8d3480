//! The replicated domain of an esc node: what the log's entries mean.
//!
//! A [`Command`] is the payload of one log entry (JSON). [`Domain`] applies
//! it to the materialized state (the `esc_state::State` map) and answers an
//! [`Answer`]: a typed [`Outcome`], never an HTTP status (the northbound
//! maps outcomes to HTTP). Applying also appends [`Event`]s to a bounded
//! outbox in the same state, so every node holds the same events with the
//! same ids (their log index), ready to be delivered as notifications.
//!
//! A new resource kind is a new [`Op`] variant, its validation, its arm in
//! [`apply`], its keys in [`keys`] and its reads in [`query`]: no new
//! plumbing in the store, the replication or the node.
//!
//! # Layout
//! - [`command`]: commands, operations, their validation and limits.
//! - [`outcome`]: what applying answers, and the records it keeps.
//! - [`apply`]: [`Domain`], the deterministic application (the
//!   `StateMachine`).
//! - [`rules`]: names, keys and the field-naming error (a leaf).
//! - [`query`]: typed reads of the state (the API's and the admin's).
//! - [`lifecycle`]: starting lifecycle operations and recording their
//!   steps (the replicated side of the lifecycle core).
//! - [`keys`]: the layout of the state map.
//! - [`model`]: the service's model (tenants, deployments with VM groups),
//!   its validation naming each field, ESC's and SOL 003's states.
//! - [`kpi`]: a VM group's monitoring: KPIs, rules and their actions.
//! - [`accounts`]: the API's users, their roles and password hashes.

pub mod accounts;
pub mod apply;
mod codec;
pub mod command;
pub mod keys;
pub mod kpi;
pub mod lifecycle;
pub mod model;
pub mod outcome;
pub mod query;
pub mod rules;

pub use apply::Domain;
pub use command::{Command, InvalidCommand, Op, OpMode};
pub use outcome::{Answer, Event, EventKind, IdempotencyRecord, Outcome, Refused};
