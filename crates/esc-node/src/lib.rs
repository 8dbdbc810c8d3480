//! The `escd` node runtime: everything that does I/O around the sans-IO
//! cores (architecture section 1).
//!
//! ```text
//!  REST :8080, health :8060 (northbound) ──Event::Propose──┐
//!  admin socket (admin) ──Event::Admin / AgentCmd──────────┤
//!  HA agent thread (ha) ──Event::Ha (authority's Output)───┤      ┌── listener :7789 (net)
//!                                                          v      v── dialer (net)
//!                              ┌────────────────────────────────┐ Send  ┌─────────────┐
//!               Tick ────────> │ owner task (owner): Core        │ ────> │ conn writer │ ─> TCP
//!                              │ one loop, one executor          │ <──── │ conn reader │ <─ TCP
//!                              └────────────────────────────────┘ NetEvent└─────────────┘
//!                     Job (bounded) │   ^ StorageEvent      │ ReplView, Position, LinkRole,
//!                                   v   │                   v peer_in_sync, role watches
//!                              ┌─────────────────────┐   HA agent, link tasks, health
//!                              │ storage worker      │ ── esc_store::Store<esc_domain::Domain>
//!                              └─────────────────────┘
//!  Shared::leading ──> services::supervise ──> primary-only services (start / stop in 100 ms)
//! ```
//! One owner task holds the core and every connection handle; children only
//! send it events (style principle 8). Modules import downwards only: the
//! task modules (`owner`, `storage`, `ha`, `northbound`, `admin`,
//! `services`) share [`shared`] and never import one another's internals
//! but through it (a test checks the module graph has no cycle).
//!
//! # Layout
//! - [`start`]: start-up wiring and teardown.
//! - [`owner`]: the owner task (the loop, the executor of core outputs, the
//!   status document, the translation of the authority's commands).
//! - [`storage`]: the storage worker, recovery files, snapshot streaming.
//! - [`net`]: replication listener, dialer, handshake, connection tasks.
//! - [`ha`]: the HA agent thread: role authority, VRRP speaker, witness
//!   client and server, health probes, `keepalived_state`.
//! - [`northbound`]: the REST API and the health API (translation only).
//! - [`admin`]: the admin socket (`esc_proto`), used by `escadm`.
//! - [`health`]: the local health checks.
//! - [`services`]: primary-only services and their supervisor.
//! - [`lifecycle`]: the lifecycle runner, a primary-only service (VIM calls
//!   through `esc-openstack`, steps through the log).
//! - [`vim`]: the VIM connector of `[vim]` and its watcher (usable or
//!   not: the health `stage`, the status, the deploy refusal).
//! - [`notify`]: the notifier, a primary-only service (callbacks from the
//!   replicated outbox, at least once).
//! - [`shared`]: the handles and messages the tasks share.
//! - [`status`]: the cores' status in `esc_proto`'s words.
//! - [`error`]: why the node could not start or stopped.
//! - [`logging`], [`metrics`]: `escmanager.log`/`escadm.log`, counters.

pub mod admin;
pub mod admission;
pub mod error;
pub mod fds;
pub mod ha;
pub mod health;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod northbound;
pub mod notify;
pub mod owner;
pub mod probe;
pub mod services;
pub mod shared;
pub mod start;
pub mod status;
pub mod storage;
pub mod sweep;
pub mod vim;

pub use error::{Error, Result};
pub use ha::witness;
pub use owner::Exit;
pub use start::{run, NodeOptions};
