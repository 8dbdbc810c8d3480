//! The role authority and the witness: synchronous, deterministic cores
//! (sans-IO, architecture sections 2 and 4).
//!
//! * [`authority::Authority`] is the ONE place that decides whether this node
//!   is `INIT`, `STANDBY`, `PRIMARY` or `FAULT`, from what the VRRP engine,
//!   the replication engine, the local health checks, the witness and the
//!   operator report. Its outputs are commands for the others: promote or
//!   demote the replication core, add or remove the VIP, admit or refuse
//!   northbound writes, the VRRP priority to advertise, the state file
//!   (`MASTER`/`BACKUP`/`FAULT`/`STOP`) and the requests to the witness.
//! * [`witness::Witness`] is the arbiter on a third host: it holds the
//!   primary's lease, the "standby outdated" mark, and grants promotions.
//! * [`trace`] records either core's inputs and outputs as JSON lines and
//!   replays them: a recorded incident runs again, exactly.
//!
//! ```text
//!  VRRP state ─┐                               ┌─> Promote/Demote (esc-repl)
//!  repl view ──┤                               ├─> Vip / Admission
//!  health ─────┼─> Authority::handle(now, in) ─┼─> VrrpContend / VrrpPriority
//!  witness ────┤        change_role()          ├─> StateFile / Transition log
//!  admin ──────┘                               └─> witness requests
//! ```

pub mod authority;
pub mod trace;
pub mod witness;

pub use authority::{
    Authority, Config, Input, Output, ReplView, Role, StateWord, TwoNodeTiming, VrrpView,
};
pub use witness::{Reply as WitnessReply, Request as WitnessRequest, Witness, WitnessState};
