//! [`Lifecycle`]: the core. One `plan` decides every call from the records
//! and the soft state; one handler per input.

use esc_domain::model::{
    OperationKind, OperationRecord, OperationState, Step, VmAction, VmGroup, VmKey, VmState,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// VIM calls in flight at once, over every operation.
    pub calls_in_flight_max: usize,
    /// How often a building server is looked at again.
    pub poll_ms: u64,
    /// Backoff after a retryable VIM error: doubles from this...
    pub retry_base_ms: u64,
    /// ...up to this.
    pub retry_max_ms: u64,
    /// Attempts of one call before the operation is FAILED_TEMP.
    pub call_retries_max: u32,
    /// A proposed step not seen in the records after this (refused in a
    /// role change, say) is given up, and its work planned again: steps
    /// are idempotent, so proposing one twice is harmless.
    #[serde(default = "Config::default_repropose_ms")]
    pub repropose_ms: u64,
    /// A create whose outcome is unknown (no answer: a timeout, a lost
    /// connection) may still land: its VM is looked up again only after
    /// this, which must exceed the longest the VIM may hold a request.
    pub create_doubt_ms: u64,
    /// A manual VM action not finished (the server not in the action's end
    /// state) this long after the VIM showed it taken: the VM is in error.
    #[serde(default = "Config::default_action_timeout_ms")]
    pub action_timeout_ms: u64,
}

impl Config {
    fn default_repropose_ms() -> u64 {
        2_000
    }

    fn default_action_timeout_ms() -> u64 {
        300_000
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            calls_in_flight_max: 64,
            poll_ms: 500,
            retry_base_ms: 200,
            retry_max_ms: 5_000,
            call_retries_max: 5,
            repropose_ms: Config::default_repropose_ms(),
            create_doubt_ms: 10_000,
            action_timeout_ms: Config::default_action_timeout_ms(),
        }
    }
}

/// A server as the VIM describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: String,
    pub name: String,
    /// Nova's status word.
    pub status: String,
    pub fault: Option<String>,
    /// Its addresses by network name, in the VIM's order.
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<String>>,
    /// The operation whose create made it (its `esc_op` metadata); None:
    /// made before the metadata existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// Its `esc_deployment` metadata: names are not unique across
    /// deployments (`esc-a-b-c-0-g0` is deployment `a`, group `b-c`, and
    /// deployment `a-b`, group `c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// A VIM call to make (the runtime maps it to `esc-openstack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VimCall {
    /// The servers named exactly `name`.
    Find {
        name: String,
    },
    Create {
        key: VmKey,
        name: String,
        group: Box<VmGroup>,
    },
    Show {
        server_id: String,
    },
    Delete {
        server_id: String,
    },
    /// Every server of the deployment (by its `esc_deployment` metadata;
    /// the runtime narrows the listing by the name prefix first).
    ListDeployment {
        deployment_id: String,
    },
    /// The server's instance actions (Compute "List Actions For Server").
    Actions {
        server_id: String,
    },
    /// Reboot (SOFT, or HARD for a recovery), stop or start the server.
    Act {
        server_id: String,
        action: VmAction,
        #[serde(default)]
        hard: bool,
    },
}

/// What the VIM answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Found(Vec<ServerInfo>),
    Created {
        server_id: String,
    },
    Shown(ServerInfo),
    Deleted,
    /// The request ids of the server's instance actions, newest first.
    Actions(Vec<String>),
    /// The server action was accepted (202).
    Acted,
    /// 404 (a Show or Delete of a server that is gone).
    NotFound,
    Failed {
        error: String,
        retryable: bool,
        /// No answer came (a timeout, a lost connection): the call may
        /// have been carried out.
        #[serde(default)]
        unknown: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// This node leads in `epoch`: start afresh from the records.
    Lead {
        epoch: u64,
    },
    /// This node no longer leads: forget everything, call nothing.
    Unlead,
    /// The committed operation records (every unsettled one), after a change.
    Records(Vec<OperationRecord>),
    /// Only what changed since the last `Records` or `Changed`: these
    /// records (new or moved), and the operations no longer unsettled.
    Changed {
        records: Vec<OperationRecord>,
        gone: Vec<String>,
    },
    Answer {
        call: u64,
        answer: Answer,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Make this VIM call; answer it with `Input::Answer { call, .. }`.
    Call {
        call: u64,
        epoch: u64,
        op: String,
        vim: VimCall,
    },
    /// Commit this step through the log.
    Propose(Step),
}

/// What a call or a proposed step is about, inside one operation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Vm(VmKey),
    Server(String),
    Deployment,
    Settle,
}

type Slot = (String, Target);

#[derive(Debug, Default)]
pub struct Lifecycle {
    cfg: Config,
    epoch: Option<u64>,
    records: BTreeMap<String, OperationRecord>,
    next_call: u64,
    /// Calls in flight: what they are about, and for a Create the key.
    inflight: BTreeMap<u64, (Slot, VimCall)>,
    /// Steps proposed and not yet seen in the records, and when.
    proposed: BTreeMap<Slot, (Step, u64)>,
    /// The time of the input being handled.
    now_ms: u64,
    not_before: BTreeMap<Slot, u64>,
    failures: BTreeMap<Slot, u32>,
    /// Manual actions the VIM shows carried out (the newest instance
    /// action moved past the committed mark): only the result is awaited.
    /// By when it was first seen so (`action_timeout_ms` runs from there).
    issued: BTreeMap<Slot, u64>,
    /// Manual actions the VIM shows not carried out yet (the mark has not
    /// moved): the server is looked at, then the action asked for. Both
    /// sets are soft: a new primary reads the actions again.
    acting: std::collections::BTreeSet<Slot>,
}

impl Lifecycle {
    pub fn new(cfg: Config) -> Lifecycle {
        Lifecycle {
            cfg,
            ..Lifecycle::default()
        }
    }

    pub fn calls_in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.now_ms = now_ms;
        match input {
            Input::Lead { epoch } => {
                self.forget();
                self.epoch = Some(epoch);
            }
            Input::Unlead => {
                self.forget();
                self.epoch = None;
                return out;
            }
            Input::Records(records) => self.on_records(records),
            Input::Changed { records, gone } => self.on_changed(records, gone),
            Input::Answer { call, answer } => self.on_answer(now_ms, call, answer, &mut out),
            Input::Tick => {}
        }
        self.plan(now_ms, &mut out);
        out
    }

    /// Soft state goes; the records stay (they are the truth).
    fn forget(&mut self) {
        self.inflight.clear();
        self.proposed.clear();
        self.not_before.clear();
        self.failures.clear();
        self.issued.clear();
        self.acting.clear();
    }

    fn on_records(&mut self, records: Vec<OperationRecord>) {
        self.records = records
            .into_iter()
            .filter(|r| !r.state.settled())
            .map(|r| (r.id.clone(), r))
            .collect();
        self.reconcile_pending(None);
    }

    fn on_changed(&mut self, records: Vec<OperationRecord>, gone: Vec<String>) {
        let mut touched = std::collections::BTreeSet::new();
        for id in gone {
            self.records.remove(&id);
            touched.insert(id);
        }
        for r in records {
            touched.insert(r.id.clone());
            if r.state.settled() {
                self.records.remove(&r.id);
            } else {
                self.records.insert(r.id.clone(), r);
            }
        }
        self.reconcile_pending(Some(&touched));
    }

    /// Drops what the records now show done (of the operations `only`
    /// names, or all).
    fn reconcile_pending(&mut self, only: Option<&std::collections::BTreeSet<String>>) {
        let records = &self.records;
        let untouched = |op: &String| only.is_some_and(|t| !t.contains(op));
        // A proposed step that the records now show is done; one of an
        // operation that is gone or settled is moot.
        self.proposed.retain(|(op, target), (step, _)| {
            if untouched(op) {
                return true;
            }
            let Some(r) = records.get(op) else {
                return false;
            };
            !match (target, step) {
                (Target::Vm(k), Step::ServerBound { .. }) => {
                    vm(r, k).is_some_and(|v| v.server_id.is_some())
                }
                (Target::Vm(k), Step::VmActive { .. }) => {
                    vm(r, k).is_some_and(|v| v.state == VmState::Alive)
                }
                (Target::Vm(k), Step::VmFailed { .. }) => {
                    vm(r, k).is_some_and(|v| v.state == VmState::Error)
                }
                (Target::Vm(k), Step::ServerUp { .. }) => {
                    vm(r, k).is_some_and(|v| v.up_at_ms.is_some())
                }
                (Target::Vm(k), Step::VmStopped { .. }) => {
                    vm(r, k).is_some_and(|v| v.state == VmState::Shutoff)
                }
                (Target::Vm(k), Step::ActionMarked { .. }) => {
                    vm(r, k).is_some_and(|v| v.action_mark.is_some())
                }
                (Target::Server(id), Step::ServerGone { .. }) => {
                    !r.vms.iter().any(|v| v.server_id.as_deref() == Some(id))
                        && !r.cleanup.contains(id)
                }
                _ => false,
            }
        });
        self.not_before
            .retain(|(op, _), _| untouched(op) || records.contains_key(op));
        self.failures
            .retain(|(op, _), _| untouched(op) || records.contains_key(op));
        self.issued
            .retain(|(op, _), _| untouched(op) || records.contains_key(op));
        self.acting
            .retain(|(op, _)| untouched(op) || records.contains_key(op));
    }

    fn busy(&self, slot: &Slot) -> bool {
        self.proposed.contains_key(slot) || self.inflight.values().any(|(s, _)| s == slot)
    }

    fn waiting(&self, slot: &Slot, now_ms: u64) -> bool {
        self.not_before.get(slot).is_some_and(|t| now_ms < *t)
    }

    fn call(&mut self, slot: Slot, vim: VimCall, out: &mut Vec<Output>) {
        let Some(epoch) = self.epoch else { return };
        self.next_call += 1;
        let call = self.next_call;
        out.push(Output::Call {
            call,
            epoch,
            op: slot.0.clone(),
            vim: vim.clone(),
        });
        self.inflight.insert(call, (slot, vim));
    }

    fn propose(&mut self, slot: Slot, step: Step, out: &mut Vec<Output>) {
        if self.proposed.contains_key(&slot) {
            return;
        }
        out.push(Output::Propose(step.clone()));
        self.proposed.insert(slot, (step, self.now_ms));
    }

    /// Every call and settlement due now, in operation order.
    fn plan(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.epoch.is_none() {
            return;
        }
        let repropose = self.cfg.repropose_ms;
        self.proposed
            .retain(|_, (_, at)| now_ms < at.saturating_add(repropose));
        let ops: Vec<OperationRecord> = self.records.values().cloned().collect();
        for r in ops {
            let settle = (r.id.clone(), Target::Settle);
            match &r.kind {
                // A manual action: its own plan.
                OperationKind::VmAction { action, .. }
                | OperationKind::ServiceAction { action } => {
                    if !self.plan_action(now_ms, &r, *action, out) {
                        return;
                    }
                }
                _ if builds(&r) => {
                    let recovering = matches!(r.kind, OperationKind::Recover { .. });
                    if let Some(failed) = r.vms.iter().find(|v| v.state == VmState::Error) {
                        let error = format!(
                            "VM {} failed: {}",
                            failed.key.server_name(),
                            failed.error.as_deref().unwrap_or("unknown")
                        );
                        self.propose(
                            settle,
                            settled(&r.id, OperationState::FailedTemp, Some(error)),
                            out,
                        );
                        continue;
                    }
                    // The servers of VMs replaced on a retry go first.
                    for id in &r.cleanup {
                        if self.inflight.len() >= self.cfg.calls_in_flight_max {
                            return;
                        }
                        let slot = (r.id.clone(), Target::Server(id.clone()));
                        if !self.busy(&slot) && !self.waiting(&slot, now_ms) {
                            let vim = VimCall::Delete {
                                server_id: id.clone(),
                            };
                            self.call(slot, vim, out);
                        }
                    }
                    // A redeploy's new server only once the old one is
                    // gone (ESC's order: it may take the old one's fixed
                    // address).
                    if recovering && !r.cleanup.is_empty() {
                        continue;
                    }
                    if recovering && r.vms.iter().all(|v| v.state == VmState::Alive) {
                        self.propose(settle, settled(&r.id, OperationState::Completed, None), out);
                        continue;
                    }
                    // A recovery's hard reboot: exactly once, as an action.
                    if recovering && r.vms.iter().any(|v| v.state == VmState::Rebooting) {
                        if !self.plan_action(now_ms, &r, VmAction::Reboot, out) {
                            return;
                        }
                        continue;
                    }
                    // An update's VMs to remove, once no VM is left to
                    // create (new VMs first: the service never shrinks
                    // below what it had while it grows).
                    if !r.vms.iter().any(|v| v.state == VmState::Deploying) {
                        for v in r.vms.iter().filter(|v| v.state == VmState::Undeploying) {
                            let Some(id) = &v.server_id else { continue };
                            if self.inflight.len() >= self.cfg.calls_in_flight_max {
                                return;
                            }
                            let slot = (r.id.clone(), Target::Server(id.clone()));
                            if !self.busy(&slot) && !self.waiting(&slot, now_ms) {
                                let vim = VimCall::Delete {
                                    server_id: id.clone(),
                                };
                                self.call(slot, vim, out);
                            }
                        }
                    }
                    if r.cleanup.is_empty() && r.vms.iter().all(|v| v.state == VmState::Alive) {
                        // Every VM alive: one listing of the deployment
                        // first, to remove a server no VM holds (a create
                        // that landed after its lookup), then COMPLETED.
                        let slot = (r.id.clone(), Target::Deployment);
                        if self.inflight.len() < self.cfg.calls_in_flight_max
                            && !self.busy(&slot)
                            && !self.waiting(&slot, now_ms)
                            && !self.proposed.contains_key(&settle)
                        {
                            let vim = VimCall::ListDeployment {
                                deployment_id: r.deployment_id.clone(),
                            };
                            self.call(slot, vim, out);
                        }
                        continue;
                    }
                    for v in &r.vms {
                        if self.inflight.len() >= self.cfg.calls_in_flight_max {
                            return;
                        }
                        let slot = (r.id.clone(), Target::Vm(v.key.clone()));
                        // Up, and booting: the monitor's bootup check
                        // decides (VmActive, or VmFailed past bootup_time).
                        if v.state != VmState::Deploying
                            || v.up_at_ms.is_some()
                            || self.busy(&slot)
                            || self.waiting(&slot, now_ms)
                        {
                            continue;
                        }
                        let vim = match &v.server_id {
                            None => VimCall::Find {
                                name: v.key.server_name(),
                            },
                            Some(id) => VimCall::Show {
                                server_id: id.clone(),
                            },
                        };
                        self.call(slot, vim, out);
                    }
                }
                // An undeploy, or a deploy rolled back (what it made is
                // removed as an undeploy does).
                _ => {
                    let slot = (r.id.clone(), Target::Deployment);
                    if self.inflight.len() < self.cfg.calls_in_flight_max
                        && !self.busy(&slot)
                        && !self.waiting(&slot, now_ms)
                        && !self.proposed.contains_key(&settle)
                    {
                        let vim = VimCall::ListDeployment {
                            deployment_id: r.deployment_id.clone(),
                        };
                        self.call(slot, vim, out);
                    }
                }
            }
        }
    }

    fn on_answer(&mut self, now_ms: u64, call: u64, answer: Answer, out: &mut Vec<Output>) {
        // Unknown: a call of an earlier term, or of an operation gone.
        let Some((slot, vim)) = self.inflight.remove(&call) else {
            return;
        };
        let Some(r) = self.records.get(&slot.0).cloned() else {
            return;
        };
        let op = slot.0.clone();
        let target = slot.1.clone();
        match (answer, &target, vim) {
            (
                Answer::Failed {
                    error,
                    retryable,
                    unknown,
                },
                _,
                vim,
            ) => {
                // An action whose answer is lost may have been carried
                // out: the actions are read again before another is asked.
                if matches!(vim, VimCall::Act { .. }) {
                    self.acting.remove(&slot);
                }
                let n = self.failures.entry(slot.clone()).or_insert(0);
                *n += 1;
                if retryable && *n < self.cfg.call_retries_max {
                    let mut wait = self
                        .cfg
                        .retry_base_ms
                        .saturating_mul(1 << (*n - 1).min(16))
                        .min(self.cfg.retry_max_ms);
                    if unknown && matches!(vim, VimCall::Create { .. }) {
                        // The server may yet appear: look it up only once
                        // the create can no longer land.
                        wait = wait.max(self.cfg.create_doubt_ms);
                    }
                    self.not_before.insert(slot, now_ms + wait);
                } else {
                    let why = format!("the VIM refused or kept failing ({n} attempt(s)): {error}");
                    self.propose(
                        (op.clone(), Target::Settle),
                        settled(&op, OperationState::FailedTemp, Some(why)),
                        out,
                    );
                }
            }
            (Answer::Found(servers), Target::Vm(key), VimCall::Find { name }) => {
                self.failures.remove(&slot);
                // Only this operation's own create is adopted: a server of
                // the same name made by another (a create of an earlier
                // deploy of this deployment name that landed after its
                // undeploy) has another spec and day-0 data. It is left to
                // the completion listing (no VM holds it) or the sweep.
                let mut named = servers.iter().filter(|s| {
                    s.name == name
                        && s.op.as_deref().is_none_or(|o| o == op)
                        && s.deployment
                            .as_deref()
                            .is_none_or(|d| d == key.deployment_id)
                });
                match named.next() {
                    // Made by an earlier primary whose result was never
                    // committed, or by a create whose answer was lost.
                    Some(s) => {
                        let step = Step::ServerBound {
                            op: op.clone(),
                            key: key.clone(),
                            server_id: s.id.clone(),
                            adopted: true,
                        };
                        self.propose(slot, step, out);
                        // Two of one VM (a create that landed after its
                        // lookup): the one adopted stays.
                        for extra in named {
                            let slot = (op.clone(), Target::Server(extra.id.clone()));
                            if !self.busy(&slot) {
                                let vim = VimCall::Delete {
                                    server_id: extra.id.clone(),
                                };
                                self.call(slot, vim, out);
                            }
                        }
                    }
                    None => {
                        // A deploy's, an update's or a retry's VM: from the
                        // operation's spec (an update's day-0 data).
                        let group = group_of(&r, key).cloned();
                        if let Some(group) = group {
                            let vim = VimCall::Create {
                                key: key.clone(),
                                name,
                                group: Box::new(group),
                            };
                            self.call(slot, vim, out);
                        }
                    }
                }
            }
            (Answer::Created { server_id }, Target::Vm(key), _) => {
                self.failures.remove(&slot);
                let step = Step::ServerBound {
                    op,
                    key: key.clone(),
                    server_id,
                    adopted: false,
                };
                self.propose(slot, step, out);
            }
            (answer, Target::Vm(key), _)
                if matches!(
                    r.kind,
                    OperationKind::VmAction { .. } | OperationKind::ServiceAction { .. }
                ) || vm(&r, key).is_some_and(|v| v.state == VmState::Rebooting) =>
            {
                self.on_action_answer(now_ms, &r, slot.clone(), key, answer, out);
            }
            (Answer::Shown(s), Target::Vm(key), _) => {
                self.failures.remove(&slot);
                match s.status.as_str() {
                    "ACTIVE" => {
                        let addresses = group_of(&r, key)
                            .map(|g| by_nicid(g, &s.addresses).into_iter().collect())
                            .unwrap_or_default();
                        self.propose(
                            slot.clone(),
                            Step::ServerUp {
                                op,
                                key: key.clone(),
                                addresses,
                            },
                            out,
                        )
                    }
                    "ERROR" => {
                        let error = s
                            .fault
                            .unwrap_or_else(|| "the VIM reports the server in ERROR".into());
                        self.propose(
                            slot.clone(),
                            Step::VmFailed {
                                op,
                                key: key.clone(),
                                error,
                            },
                            out,
                        );
                    }
                    _ => {
                        self.not_before.insert(slot, now_ms + self.cfg.poll_ms);
                    }
                }
            }
            (Answer::NotFound, Target::Vm(key), VimCall::Show { .. }) => {
                let error = "the server disappeared from the VIM".to_string();
                self.propose(
                    slot,
                    Step::VmFailed {
                        op,
                        key: key.clone(),
                        error,
                    },
                    out,
                );
            }
            (Answer::Found(servers), Target::Deployment, _) => {
                self.failures.remove(&slot);
                // A deploy keeps the servers its VMs hold; an undeploy or a
                // rollback none.
                let rolling_back = r.state == OperationState::RollingBack;
                let keep: Vec<&str> = if builds(&r) {
                    r.vms
                        .iter()
                        .filter_map(|v| v.server_id.as_deref())
                        .collect()
                } else {
                    Vec::new()
                };
                let done = if rolling_back {
                    OperationState::RolledBack
                } else {
                    OperationState::Completed
                };
                let servers: Vec<ServerInfo> = servers
                    .into_iter()
                    .filter(|s| !keep.contains(&s.id.as_str()))
                    .collect();
                if servers.is_empty() {
                    self.propose((op.clone(), Target::Settle), settled(&op, done, None), out);
                    return;
                }
                // Look again once these deletes had time to take effect.
                self.not_before.insert(slot, now_ms + self.cfg.poll_ms);
                for s in servers {
                    let slot = (op.clone(), Target::Server(s.id.clone()));
                    if self.busy(&slot) || self.inflight.len() >= self.cfg.calls_in_flight_max {
                        continue;
                    }
                    self.call(slot, VimCall::Delete { server_id: s.id }, out);
                }
            }
            (Answer::Deleted | Answer::NotFound, Target::Server(id), _) if builds(&r) => {
                self.failures.remove(&slot);
                // A replaced VM's server, or one an update removes, is
                // gone: committed, so the operation can complete. A
                // duplicate (no VM held it) needs no step.
                let removed = r
                    .vms
                    .iter()
                    .any(|v| v.state == VmState::Undeploying && v.server_id.as_deref() == Some(id));
                if r.cleanup.contains(id) || removed {
                    let step = Step::ServerGone {
                        op,
                        server_id: id.clone(),
                    };
                    self.propose(slot, step, out);
                }
            }
            (Answer::Deleted | Answer::NotFound, Target::Server(id), _) => {
                self.failures.remove(&slot);
                let step = Step::ServerGone {
                    op,
                    server_id: id.clone(),
                };
                // Not kept as pending: the deployment's next listing shows
                // whether it is gone.
                out.push(Output::Propose(step));
            }
            // An answer that does not fit its call: the runtime's bug; the
            // slot is free again and the plan calls anew.
            _ => {}
        }
    }
}

impl Lifecycle {
    /// A manual VM action (`OperationKind::VmAction`), exactly once across
    /// takeovers: the mark (the server's newest instance action) is
    /// committed first; the action is asked for only while the VIM shows
    /// the mark unmoved; then the server is watched to the action's end
    /// state. False: no call may start now (the in-flight bound).
    fn plan_action(
        &mut self,
        now_ms: u64,
        r: &OperationRecord,
        action: VmAction,
        out: &mut Vec<Output>,
    ) -> bool {
        let settle = (r.id.clone(), Target::Settle);
        // Settled once every VM is done (a service action's many, a VM
        // action's one), FAILED_TEMP once one failed.
        if let Some(v) = r.vms.iter().find(|v| v.state == VmState::Error) {
            let error = format!(
                "{} of VM {} failed: {}",
                action.word(),
                v.key.server_name(),
                v.error.as_deref().unwrap_or("unknown")
            );
            self.propose(
                settle,
                settled(&r.id, OperationState::FailedTemp, Some(error)),
                out,
            );
            return true;
        }
        if r.vms.iter().all(|v| v.state == action.done_state()) {
            self.propose(settle, settled(&r.id, OperationState::Completed, None), out);
            return true;
        }
        for v in &r.vms {
            if v.state == action.done_state() {
                continue;
            }
            let slot = (r.id.clone(), Target::Vm(v.key.clone()));
            // Up after a recovery's reboot: the bootup check's turn.
            let booting = matches!(r.kind, OperationKind::Recover { .. }) && v.up_at_ms.is_some();
            if booting || self.busy(&slot) || self.waiting(&slot, now_ms) {
                continue;
            }
            if self.inflight.len() >= self.cfg.calls_in_flight_max {
                return false;
            }
            let Some(id) = v.server_id.clone() else {
                let step = Step::VmFailed {
                    op: r.id.clone(),
                    key: v.key.clone(),
                    error: "the VM has no server".into(),
                };
                self.propose(slot, step, out);
                continue;
            };
            let vim = if v.action_mark.is_some()
                && (self.issued.contains_key(&slot) || self.acting.contains(&slot))
            {
                VimCall::Show { server_id: id }
            } else {
                VimCall::Actions { server_id: id }
            };
            self.call(slot, vim, out);
        }
        true
    }

    fn on_action_answer(
        &mut self,
        now_ms: u64,
        r: &OperationRecord,
        slot: Slot,
        key: &VmKey,
        answer: Answer,
        out: &mut Vec<Output>,
    ) {
        // A recovery's reboot is a hard one, and ends when the server is
        // up (the bootup check follows).
        let (action, recovering) = match r.kind {
            OperationKind::VmAction { action, .. } | OperationKind::ServiceAction { action } => {
                (action, false)
            }
            OperationKind::Recover { .. } => (VmAction::Reboot, true),
            _ => return,
        };
        let Some(v) = vm(r, key) else { return };
        let op = r.id.clone();
        let failed = |error: String| Step::VmFailed {
            op: op.clone(),
            key: key.clone(),
            error,
        };
        match answer {
            Answer::Actions(ids) => {
                self.failures.remove(&slot);
                let newest = ids.first().cloned().unwrap_or_default();
                match &v.action_mark {
                    None => {
                        let step = Step::ActionMarked {
                            op: op.clone(),
                            key: key.clone(),
                            request_id: newest,
                        };
                        self.propose(slot, step, out);
                    }
                    // Moved: this operation's action was taken (by this
                    // node or an earlier primary); only its end is awaited.
                    Some(mark) if *mark != newest => {
                        self.acting.remove(&slot);
                        self.issued.entry(slot).or_insert(now_ms);
                    }
                    Some(_) => {
                        self.acting.insert(slot);
                    }
                }
            }
            Answer::Acted => {
                self.failures.remove(&slot);
                self.acting.remove(&slot);
                self.issued.entry(slot).or_insert(now_ms);
            }
            Answer::Shown(s) => {
                self.failures.remove(&slot);
                let done = action.done_state();
                let reached = match s.status.as_str() {
                    "ACTIVE" => done == VmState::Alive,
                    "SHUTOFF" => done == VmState::Shutoff,
                    _ => false,
                };
                let since = self.issued.get(&slot).copied();
                let issued = since.is_some();
                if reached && recovering && issued {
                    let addresses = group_of(r, key)
                        .map(|g| by_nicid(g, &s.addresses).into_iter().collect())
                        .unwrap_or_default();
                    let step = Step::ServerUp {
                        op: op.clone(),
                        key: key.clone(),
                        addresses,
                    };
                    self.propose(slot, step, out);
                } else if reached && (issued || action != VmAction::Reboot) {
                    // A stop of a stopped server, a start of a running one:
                    // nothing to ask (Nova would refuse it with 409).
                    let step = if done == VmState::Shutoff {
                        Step::VmStopped {
                            op: op.clone(),
                            key: key.clone(),
                        }
                    } else {
                        Step::VmActive {
                            op: op.clone(),
                            key: key.clone(),
                        }
                    };
                    self.propose(slot, step, out);
                } else if s.status == "ERROR" {
                    let why = s
                        .fault
                        .unwrap_or_else(|| "the VIM reports the server in ERROR".into());
                    self.propose(slot, failed(why), out);
                } else if since.is_some_and(|t| now_ms >= t + self.cfg.action_timeout_ms) {
                    let why = format!(
                        "the server did not reach {done:?} within {} ms of the {} (it is {})",
                        self.cfg.action_timeout_ms,
                        action.word(),
                        s.status
                    );
                    self.propose(slot, failed(why), out);
                } else if issued || TRANSITIONS.contains(&s.status.as_str()) {
                    // Under way (REBOOT, a build): look again.
                    self.not_before.insert(slot, now_ms + self.cfg.poll_ms);
                } else if let Some(server_id) = v.server_id.clone() {
                    let vim = VimCall::Act {
                        server_id,
                        action,
                        hard: recovering,
                    };
                    self.call(slot, vim, out);
                }
            }
            Answer::NotFound => {
                let why = "the server disappeared from the VIM".to_string();
                self.propose(slot, failed(why), out);
            }
            // Failures are handled with every call's; others do not fit.
            _ => {}
        }
    }
}

/// Nova's statuses of a server in a transition (Compute API reference,
/// "Server Status"): an action is asked for only once it has ended.
const TRANSITIONS: &[&str] = &[
    "BUILD",
    "REBOOT",
    "HARD_REBOOT",
    "REBUILD",
    "MIGRATING",
    "RESIZE",
    "REVERT_RESIZE",
    "PASSWORD",
];

/// An operation that builds the deployment's VMs (a deploy, an update, or
/// an update rolled back to its kept VMs): the servers its VMs hold stay.
fn builds(r: &OperationRecord) -> bool {
    match r.kind {
        OperationKind::Deploy { .. } => r.state != OperationState::RollingBack,
        OperationKind::Update { .. }
        | OperationKind::Recover { .. }
        | OperationKind::Scale { .. } => true,
        OperationKind::Undeploy
        | OperationKind::VmAction { .. }
        | OperationKind::ServiceAction { .. } => false,
    }
}

/// The group a VM of `r` is created from: the operation's spec (a deploy's,
/// an update's), or a recovery's or a scale's copy.
fn group_of<'a>(r: &'a OperationRecord, key: &VmKey) -> Option<&'a VmGroup> {
    if let Some(g) = r.group.as_ref().filter(|g| g.name == key.group) {
        return Some(g);
    }
    match &r.recovery {
        Some(rec) => Some(&rec.group),
        None => r
            .kind
            .spec()?
            .vm_groups
            .iter()
            .find(|g| g.name == key.group),
    }
}

/// A server's addresses by the group's `nicid`s: the `n`th interface on a
/// network takes that network's `n`th address.
fn by_nicid(group: &VmGroup, addresses: &BTreeMap<String, Vec<String>>) -> BTreeMap<u8, String> {
    let mut used: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for nic in &group.interfaces {
        let n = used.entry(nic.network.as_str()).or_insert(0);
        if let Some(a) = addresses.get(&nic.network).and_then(|l| l.get(*n)) {
            out.insert(nic.nicid, a.clone());
        }
        *n += 1;
    }
    out
}

fn vm<'a>(r: &'a OperationRecord, key: &VmKey) -> Option<&'a esc_domain::model::VmRecord> {
    r.vms.iter().find(|v| &v.key == key)
}

fn settled(op: &str, state: OperationState, error: Option<String>) -> Step {
    Step::Settled {
        op: op.to_string(),
        state,
        error,
    }
}
