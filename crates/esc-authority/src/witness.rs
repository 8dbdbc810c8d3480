//! The witness (architecture section 4): a tiny arbiter on a third host,
//! the role of corosync's qdevice or pg_auto_failover's monitor.
//!
//! It keeps three durable facts: the current epoch, which node holds the
//! primary's lease, and whether the *other* node is marked outdated. Rules:
//!
//! * only the holder, in the current epoch, renews its lease, marks the
//!   other node outdated, clears that mark, or releases its lease;
//! * a promotion is granted only when the holder's lease has run out (or
//!   was released), and never to a node marked outdated; the grant bumps the
//!   epoch and makes the requester the holder;
//! * a restarted witness grants nothing for one lease period (it cannot know
//!   how long ago it last renewed a lease).
//!
//! Hence every committed entry is on the standby, or the standby is barred
//! from promotion: the primary commits alone only after the mark is durable.
//! A reply that changes the durable state is sent only after the caller
//! persisted [`Witness::state`] (`persist` in [`Step`]).

use serde::{Deserialize, Serialize};

/// What the witness keeps on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    /// The epoch of the latest grant.
    pub epoch: u64,
    /// The node (by name) holding the primary's lease.
    pub holder: Option<String>,
    /// The node other than the holder is outdated: it must not be promoted.
    pub outdated: bool,
}

pub use esc_wire::witness::{Reply, Request};

/// One request's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub reply: Reply,
    /// The durable state changed: persist it before sending the reply.
    pub persist: bool,
}

/// The witness core.
#[derive(Debug, Clone)]
pub struct Witness {
    state: WitnessState,
    lease_ms: u64,
    /// The holder's lease runs until then (witness clock).
    lease_until_ms: u64,
}

impl Witness {
    /// A witness starting (or restarting) at `now_ms` with its durable
    /// state: whatever lease existed is honoured for one full period.
    pub fn new(state: WitnessState, lease_ms: u64, now_ms: u64) -> Witness {
        Witness {
            state,
            lease_ms,
            lease_until_ms: now_ms + lease_ms,
        }
    }

    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// The node's connection closed. A holder whose process died has its
    /// connection closed by its kernel: the lease ends now, so the standby
    /// need not wait for it to run out (architecture section 4). Safe: a
    /// primary that is in fact alive still cannot commit alone without a
    /// new mark, which it no longer gets once another node holds the lease.
    pub fn disconnected(&mut self, now_ms: u64, node: &str) {
        if self.state.holder.as_deref() == Some(node) {
            self.lease_until_ms = self.lease_until_ms.min(now_ms);
        }
    }

    /// Milliseconds left on the holder's lease.
    pub fn lease_left_ms(&self, now_ms: u64) -> u64 {
        self.lease_until_ms.saturating_sub(now_ms)
    }

    /// The one entry point.
    pub fn handle(&mut self, now_ms: u64, node: &str, req: Request) -> Step {
        let is_holder =
            |s: &WitnessState, epoch: u64| s.holder.as_deref() == Some(node) && s.epoch == epoch;
        let deny = |reason: String| Step {
            reply: Reply::Denied { reason },
            persist: false,
        };
        match req {
            Request::Renew { epoch } => {
                if !is_holder(&self.state, epoch) {
                    return deny(self.not_holder(node, epoch));
                }
                self.lease_until_ms = now_ms + self.lease_ms;
                Step {
                    reply: Reply::LeaseOk {
                        epoch,
                        lease_ms: self.lease_ms,
                    },
                    persist: false,
                }
            }
            Request::MarkOutdated { epoch } => {
                if !is_holder(&self.state, epoch) {
                    return deny(self.not_holder(node, epoch));
                }
                // Marking also renews: the holder is alive and still leads.
                self.lease_until_ms = now_ms + self.lease_ms;
                let persist = !self.state.outdated;
                self.state.outdated = true;
                Step {
                    reply: Reply::Marked { epoch },
                    persist,
                }
            }
            Request::ClearOutdated { epoch } => {
                if !is_holder(&self.state, epoch) {
                    return deny(self.not_holder(node, epoch));
                }
                let persist = self.state.outdated;
                self.state.outdated = false;
                Step {
                    reply: Reply::Cleared { epoch },
                    persist,
                }
            }
            Request::Release { epoch } => {
                if !is_holder(&self.state, epoch) {
                    return deny(self.not_holder(node, epoch));
                }
                self.lease_until_ms = now_ms;
                Step {
                    reply: Reply::Released { epoch },
                    persist: false,
                }
            }
            Request::Promote {
                epoch,
                last_epoch,
                last_index: _,
                force,
            } => {
                let holder = self.state.holder.as_deref() == Some(node);
                if !holder && !force {
                    if now_ms < self.lease_until_ms {
                        return deny(format!(
                            "the primary's lease is valid for {} ms more",
                            self.lease_until_ms - now_ms
                        ));
                    }
                    if self.state.outdated {
                        return deny(
                            "this node is marked outdated: the primary committed without it".into(),
                        );
                    }
                }
                // The holder itself may always lead again: every committed
                // entry is in its own log. The new epoch is above anything
                // either side has seen.
                let Some(new_epoch) = self.state.epoch.max(epoch).max(last_epoch).checked_add(1)
                else {
                    return deny("epoch space exhausted".into());
                };
                if !holder || force {
                    // The old holder is not marked: the new primary marks
                    // it before it commits alone.
                    self.state.outdated = false;
                }
                self.state.epoch = new_epoch;
                self.state.holder = Some(node.to_string());
                self.lease_until_ms = now_ms + self.lease_ms;
                Step {
                    reply: Reply::Granted {
                        epoch: new_epoch,
                        lease_ms: self.lease_ms,
                    },
                    persist: true,
                }
            }
        }
    }

    fn not_holder(&self, node: &str, epoch: u64) -> String {
        format!(
            "{node} in epoch {epoch} does not hold the lease (holder {}, epoch {})",
            self.state.holder.as_deref().unwrap_or("none"),
            self.state.epoch
        )
    }
}
