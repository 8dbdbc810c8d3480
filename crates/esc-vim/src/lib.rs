//! `esc-vim`, the lab's VIM (issue 11, item 4): a small service that speaks
//! the subset of the OpenStack APIs the manager uses, so the manager's VIM
//! driver is exercised as it would be against a real OpenStack, and a real
//! OpenStack client (openstacksdk, the `openstack` CLI) can drive it too.
//!
//! ```text
//!   client ──HTTP──> api (axum: routing, tokens, JSON shapes of the API reference)
//!                      │  one lock
//!                      v
//!                    cloud::Cloud (sans-IO: flavors, images, networks, ports,
//!                                  servers, capacity; time is an input)
//! ```
//!
//! # Layout
//! - [`cloud`]: the VIM's state and its rules (capacity as Nova accounts
//!   it, server states and actions, port addresses), deterministic.
//! - [`api`]: the HTTP surface: Identity v3 (password tokens with a
//!   catalog), Compute v2.1, Images v2, Networking v2.0, version documents
//!   for discovery; API faults applied to every call but token requests.
//! - [`faults`]: the API faults (fail, lose the answer, stall, delay at a
//!   rate), seeded.
//! - [`control`]: the control plane outside the OpenStack API (faults,
//!   the servers' history, the call log, a server's kill, hang or cut).
//! - [`servers`]: namespace servers: a network namespace per server on
//!   the VIM network's bridge, `esc-vnf` inside with its day-0 files.
//!   Without it servers are light (records only, for scale runs).

pub mod api;
pub mod cloud;
pub mod control;
pub mod faults;
pub mod servers;

pub use api::{serve, serve_vim, Credentials, Vim};
pub use cloud::{Capacity, Cloud};
pub use control::serve_control;
