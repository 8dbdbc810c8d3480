//! The HA agent and its sockets (architecture sections 1, 2 and 4), on
//! their own OS thread and runtime, apart from the service.
//!
//! - [`agent`]: the role authority's runtime: its inputs (VRRP, the
//!   witness, health probes, the owner's replication view, escadm) and the
//!   execution of its outputs.
//! - [`vrrp`]: the VRRP speaker's raw socket, the VIP (netlink) and
//!   gratuitous ARP.
//! - [`witness`]: `escd --witness`, and the client the agent uses.
//! - [`vip_guard`]: `escd --vip-guard`, the child that removes the VIP
//!   once the node process is gone.
//! - `sys`: the one `unsafe` module (AF_PACKET send for gratuitous ARP).

pub mod agent;
mod sys;
pub mod vip_guard;
pub mod vrrp;
pub mod witness;

pub use agent::{spawn, state_file, AgentHandle};
