//! The layout of the state map (`esc_state::State`): one prefix per kind.
//! Values are JSON. Counters are kept as entries apply, so a count is one
//! read, never a scan.

pub const IDEMPOTENCY: &str = "idem/";
pub const EVENT: &str = "event/";
pub const OP_MODE: &str = "setting/op_mode";
pub const DEPLOYMENT_COUNT: &str = "count/deployments";
pub const TENANT: &str = "tenant/";
/// An API account (`accounts::User`), by name.
pub const USER: &str = "user/";
pub const USER_COUNT: &str = "count/users";
/// A deployment (`model::ServiceRecord`), by name.
pub const SERVICE: &str = "service/";
/// Results owed to callback URLs (`model::Callback`), by operation.
pub const CALLBACK: &str = "callback/";
pub const OPERATION: &str = "op/";
/// Index of the unsettled operations (what the lifecycle runner reads):
/// each holds the log index that last changed its record (its version).
pub const ACTIVE_OPERATION: &str = "opactive/";
/// The services' change feed: the names of the services entry `index`
/// wrote or removed, under `svcchg/<index>` (zero-padded: log order).
pub const SERVICE_CHANGE: &str = "svcchg/";
pub const SERVICE_CHANGE_COUNT: &str = "count/svcchg";
pub const SERVICE_CHANGE_SEQ: &str = "count/svcchg_seq";

/// A deployment with VMs that was removed (undeployed, or a deploy rolled
/// back): the log index it went at, under `gone/<name>`. What lets the VIM
/// sweep tell a late server of this manager's own deployment from one of a
/// deployment it never had. Bounded: the oldest go past `GONE_MAX`.
pub const GONE: &str = "gone/";
/// The same, in removal order: `goneord/<index>/<name>` (zero-padded).
pub const GONE_ORDER: &str = "goneord/";
pub const GONE_COUNT: &str = "count/gone";

pub fn gone(name: &str) -> String {
    format!("{GONE}{name}")
}

pub fn gone_order(index: u64, name: &str) -> String {
    format!("{GONE_ORDER}{index:020}/{name}")
}

pub fn service_change(index: u64) -> String {
    format!("{SERVICE_CHANGE}{index:020}")
}

pub fn tenant(name: &str) -> String {
    format!("{TENANT}{name}")
}

pub fn user(name: &str) -> String {
    format!("{USER}{name}")
}

pub fn service(name: &str) -> String {
    format!("{SERVICE}{name}")
}

pub fn operation(id: &str) -> String {
    format!("{OPERATION}{id}")
}

pub fn active_operation(id: &str) -> String {
    format!("{ACTIVE_OPERATION}{id}")
}
pub const EVENT_COUNT: &str = "count/events";
/// Events ever emitted (the last one's `seq`).
pub const EVENT_SEQ: &str = "count/event_seq";
/// The id of the last event dropped from the outbox: the next oldest is
/// found by a scan from it rather than from the start (the keys before it
/// are deleted, and an apply's overlay of deletions would be walked over).
pub const EVENT_DROPPED: &str = "count/event_dropped";

pub fn callback(op_id: &str) -> String {
    format!("{CALLBACK}{op_id}")
}

pub fn idempotency(key: &str) -> String {
    format!("{IDEMPOTENCY}{key}")
}

/// Zero-padded, so key order is log order.
pub fn event(id: u64) -> String {
    format!("{EVENT}{id:020}")
}
