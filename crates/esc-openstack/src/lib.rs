//! A small typed OpenStack client: what the manager's VIM driver needs of
//! Identity v3, Compute v2.1, Images v2 and Networking v2.0, as the
//! OpenStack API reference describes them (each call names its section in
//! `docs/openstack-api.md`). No well-kept Rust OpenStack client covers
//! token renewal, microversion-2.1 servers and typed errors without pulling
//! far more than this (see `docs/architecture.md`, Decisions).
//!
//! ```text
//!   caller ──> Client ──(token, renewed before expiry; one re-auth on 401)──> Keystone
//!                 └── endpoints from the token's catalog ──> Nova, Glance, Neutron
//! ```
//!
//! The password is a [`Secret`]: it is never printed (`Debug` says
//! `<redacted>`) and only leaves in the token request's body.

pub mod client;
pub mod error;
pub mod model;
mod time;

pub use client::{Client, Connector, Health, Secret};
pub use error::Error;
pub use model::{Address, CreateServer, Flavor, Image, InstanceAction, Limits, Network, Server};
