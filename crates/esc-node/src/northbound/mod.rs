//! The northbound: the REST API on `:8080` and the health API on `:8060`
//! (architecture section 7). Translation only (style principle 7): requests
//! become domain commands for the owner task or typed reads of the state;
//! the domain's outcomes become HTTP answers here and nowhere else.

pub mod api;
pub mod auth;
pub mod conn;
pub mod events;
pub mod openapi;
pub mod tls;

pub use api::{password, serve, serve_health, PASSWORD_FILE, WRITE_TIMEOUT};
