//! The protocol between an `escd` node and its operator CLI, `escadm`: the
//! admin socket's requests and answers ([`admin`]) and the node's status
//! ([`status::NodeStatus`]). Typed on both ends: no decision is made by
//! reading a JSON path or matching a message's words. `escadm status
//! --json` prints [`status::NodeStatus`] as it is.
//!
//! This crate is pure (serde and the domain's types): `escadm` depends on it
//! and on nothing of the node, the store or redb.
//!
//! # Layout
//! - [`admin`]: [`admin::AdminRequest`], [`admin::AdminResponse`], the
//!   framing (one JSON line each way) and a blocking client.
//! - [`status`]: [`status::NodeStatus`] and its parts.

pub mod admin;
pub mod status;

pub use admin::{AdminRequest, AdminResponse};
pub use esc_domain::OpMode;
pub use status::NodeStatus;
