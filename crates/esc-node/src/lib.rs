//! The `escd` node runtime: everything that does I/O around the sans-IO
//! replication core (architecture section 1).
//!
//! ```text
//!   REST :8080 (api) ──Propose──┐            ┌── listener :7789 (net, primary side)
//!   admin socket (admin) ───────┤            ├── dialer (net, standby side)
//!                               v            v
//!                        ┌──────────────────────────┐  Send   ┌─────────────┐
//!            Tick ─────> │ owner task (node):       │ ──────> │ conn writer │ ─> TCP
//!                        │ esc_repl::Core           │ <────── │ conn reader │ <─ TCP
//!                        └──────────────────────────┘ Received└─────────────┘
//!                           │ jobs (in order)   ^ Persisted / Applied
//!                           v                   │
//!                        ┌──────────────────────────┐
//!                        │ storage worker thread    │ ── esc_store::Store (redb)
//!                        └──────────────────────────┘
//! ```
//! One owner task holds the core and every connection handle; children only
//! send it events (style principle 8). The storage worker runs jobs strictly
//! in the order the core emitted them, merging consecutive ones into one
//! transaction (one fsync).
//!
//! # Layout
//! - [`node`]: start-up, the owner task, the storage worker.
//! - [`net`]: replication listener, dialer, handshake, connection tasks.
//! - [`api`]: the northbound REST API (translation only).
//! - [`admin`]: the admin socket and its protocol (used by `escadm`).
//! - [`health`]: local health checks behind `/esc/health` and `escadm health`.
//! - [`logging`]: `escmanager.log` and `escadm.log`.
//! - [`metrics`]: counters shown by `escadm status --v`.
//! - [`agent`]: the HA agent thread: role authority, VRRP speaker, witness
//!   client, health probes, `keepalived_state` (architecture sections 1-2).
//! - [`vrrp`]: the VRRP speaker's sockets, VIP and gratuitous ARP.
//! - [`witness`]: `escd --witness` and the client the agent uses.
//! - `sys`: the one `unsafe` module (AF_PACKET send for gratuitous ARP).

pub mod admin;
pub mod agent;
pub mod api;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
mod sys;
pub mod vrrp;
pub mod witness;

pub use node::{run, Exit, NodeOptions};
