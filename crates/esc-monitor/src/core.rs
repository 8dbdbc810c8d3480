//! [`Monitor`]: the core. One handler per input; `tick` issues what is due.

use esc_domain::kpi::{Action, CollectorType, Kpi, Rule, When, ICMP_ECHOES, VM_ALIVE};
use esc_domain::model::VmKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Probes in flight at once, over every VM (the rest wait, late).
    pub probes_in_flight_max: usize,
    /// A probe's deadline: this, or half its KPI's period if shorter.
    pub probe_timeout_ms: u64,
    /// A decision not seen in the records after this is proposed again.
    pub repropose_ms: u64,
    /// On a new term, a probe whose slot fell this recently is sent at
    /// once rather than a period later: the slots the takeover's blackout
    /// swallowed (at most about a second at the product's defaults), so
    /// no VM waits two periods across a takeover.
    pub catch_up_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            probes_in_flight_max: 4_096,
            probe_timeout_ms: 2_000,
            repropose_ms: 5_000,
            catch_up_ms: 2_000,
        }
    }
}

/// Where a watched VM stands, from the replicated records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Its server runs but its bootup check has not answered: operation
    /// `op` waits for it until `deadline_ms` (wall clock, ms).
    Booting { op: String, deadline_ms: u64 },
    /// Alive with no operation on it: every KPI polled, every rule acts.
    Running,
    /// An operation runs on it, or its monitoring is off: not polled.
    Paused,
}

/// One VM to watch (built by the runtime from the replicated records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watched {
    pub key: VmKey,
    pub deployment: String,
    /// By `nicid`.
    pub addresses: BTreeMap<u8, String>,
    pub kpis: Vec<Kpi>,
    pub rules: Vec<Rule>,
    pub phase: Phase,
    /// Recoveries it went through (the next one's id derives from it).
    pub recoveries: u32,
    /// Its group's size, bounds and scale operations (a scale's id and
    /// cooldown derive from them).
    pub scale: GroupScale,
    /// Its group's `recovery_wait_time`, ms: how long a VM whose recovery
    /// rule fired may come back by itself before the recovery starts.
    #[serde(default)]
    pub recovery_wait_ms: u64,
}

/// A watched VM's group, as far as scaling goes (replicated state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupScale {
    pub vms: u32,
    pub min_active: u32,
    pub max_active: u32,
    pub cooldown_ms: u64,
    /// Scale operations of the group started so far.
    pub started: u32,
    /// When the last one settled.
    pub settled_at_ms: Option<u64>,
    /// The deployment has an operation in progress: no scale now.
    pub busy: bool,
}

impl Watched {
    /// The VM's identity: its server name.
    pub fn name(&self) -> String {
        self.key.server_name()
    }
}

/// What a probe reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// `count` echo requests; the value is the number of replies.
    Icmp { addr: String, count: u32 },
    /// The value is 1 if a connection opens, else 0.
    Tcp { addr: String, port: u16 },
    /// The value is the JSON number at `metric` in the body (none: no
    /// sample), or without a metric 1 for `status` and 0 otherwise.
    Http {
        addr: String,
        port: u16,
        path: String,
        status: u16,
        metric: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// This node leads: probe everything from now on.
    Lead {
        epoch: u64,
    },
    /// It no longer does: probe nothing, decide nothing (the VM table
    /// stays, kept current on a standby so a takeover starts at once).
    Unlead,
    /// VMs new or changed (each replaces the one of its name), and VMs
    /// gone (by name).
    Vms {
        upsert: Vec<Watched>,
        gone: Vec<String>,
    },
    /// A probe's outcome: its value, or none (no answer by its deadline,
    /// no metric in the body).
    Result {
        probe: u64,
        value: Option<f64>,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Probe `target` and answer with `Input::Result { probe, .. }` by
    /// `deadline_ms` (wall clock).
    Probe {
        probe: u64,
        vm: String,
        /// The KPI's `event_name`.
        kpi: String,
        target: Target,
        deadline_ms: u64,
    },
    /// The VM answered its bootup check: commit `Step::VmActive`.
    Alive { op: String, key: VmKey },
    /// No answer within `bootup_time`: commit `Step::VmFailed`.
    BootupFailed {
        op: String,
        key: VmKey,
        error: String,
    },
    /// Scale the VM's group by one (an operation of this id).
    Scale {
        op_id: String,
        deployment: String,
        group: String,
        out: bool,
        reason: String,
    },
    /// Start the VM's recovery (an operation of this id).
    Recover {
        op_id: String,
        deployment: String,
        vm: String,
        reason: String,
    },
    /// A rule's `log` action.
    Log {
        vm: String,
        event: String,
        state: bool,
        value: Option<f64>,
    },
    /// A rule's `script` action: run it without a shell, killed after
    /// `timeout_ms`.
    Script {
        vm: String,
        event: String,
        path: String,
        args: Vec<String>,
        timeout_ms: u64,
    },
}

/// What `escadm status --v` shows of the monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub vms_watched: usize,
    pub probes_sent: u64,
    pub probes_in_flight: usize,
    /// Probes sent more than a second after they were due.
    pub probes_late: u64,
    /// Their lateness, ms: sum and most (the runtime keeps percentiles).
    pub lateness_ms_max: u64,
}

/// Over how long a new term's caught-up probes are spread.
const CATCH_UP_SPREAD_MS: u64 = 250;

/// The operation id of `vm`'s recovery number `n`: both nodes derive the
/// same, so one recovery is one operation (FNV-1a of the name; an id is
/// at most 64 characters).
pub fn recovery_op_id(vm: &str, n: u32) -> String {
    format!("rec-{:016x}-{n}", fnv(vm.as_bytes()))
}

/// The operation id of scale number `n` of `group` in `deployment`:
/// derived like a recovery's, so the same step decided by two primaries
/// is one operation.
pub fn scale_op_id(deployment: &str, group: &str, n: u32) -> String {
    format!(
        "scl-{:016x}-{n}",
        fnv(format!("{deployment}/{group}").as_bytes())
    )
}

/// Where in its period KPI `i` of VM `name` is probed: derived from the
/// name, so the same on every node (a new primary keeps the rhythm).
pub fn slot_offset(name: &str, i: usize, period: u64) -> u64 {
    fnv(format!("{name}/{i}").as_bytes()) % period
}

/// The first slot (`offset` in each `period`) after `t`.
fn next_slot(t: u64, period: u64, offset: u64) -> u64 {
    let base = t - t % period + offset;
    if base > t {
        base
    } else {
        base + period
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One KPI's occurrences (soft).
#[derive(Debug, Clone, Default)]
struct Count {
    trues: u32,
    falses: u32,
    /// Its state once it turned (none: not yet).
    state: Option<bool>,
}

#[derive(Debug)]
struct Vm {
    w: Watched,
    counts: Vec<Count>,
    /// A decision proposed (alive, bootup failed, recover) and when: none
    /// other until the records move or `repropose_ms` passes.
    decided: Option<(Output, u64)>,
    /// A recovery waiting out `recovery_wait_ms`: its KPI, and the
    /// decision (dropped if that KPI turns TRUE meanwhile).
    waiting: Option<(usize, Output)>,
    /// Bumped when the VM changes: schedule entries of an older one are
    /// dropped when due (no scan of the schedule per change).
    gen: u64,
}

#[derive(Debug, Default)]
pub struct Monitor {
    cfg: Config,
    leading: bool,
    vms: BTreeMap<String, Vm>,
    /// Due probes: (due_ms, vm, kpi index, the VM's generation).
    due: BTreeSet<(u64, String, usize, u64)>,
    gens: u64,
    /// Booting VMs by deadline.
    bootup: BTreeSet<(u64, String)>,
    /// Recoveries waiting: (when they start, VM, its generation).
    recoveries_due: BTreeSet<(u64, String, u64)>,
    /// VMs with a decision out, by when it is proposed again (checked
    /// against the VM when due: no walk over every VM per tick).
    redecide: BTreeSet<(u64, String)>,
    next_probe: u64,
    /// Probes in flight: vm, kpi index, deadline.
    inflight: BTreeMap<u64, (String, usize, u64)>,
    stats: Stats,
}

impl Monitor {
    pub fn new(cfg: Config) -> Monitor {
        Monitor {
            cfg,
            ..Monitor::default()
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            vms_watched: self.vms.len(),
            probes_in_flight: self.inflight.len(),
            ..self.stats.clone()
        }
    }

    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Lead { .. } => {
                self.leading = true;
                self.restart(now_ms);
            }
            Input::Unlead => {
                self.leading = false;
                self.due.clear();
                self.inflight.clear();
                self.recoveries_due.clear();
                self.redecide.clear();
                for vm in self.vms.values_mut() {
                    vm.counts.iter_mut().for_each(|c| *c = Count::default());
                    vm.decided = None;
                    vm.waiting = None;
                }
                return out;
            }
            Input::Vms { upsert, gone } => {
                for name in gone {
                    self.vms.remove(&name);
                }
                for w in upsert {
                    self.upsert(now_ms, w);
                }
            }
            Input::Result { probe, value } => self.on_result(now_ms, probe, value, &mut out),
            Input::Tick => {}
        }
        if self.leading {
            self.tick(now_ms, &mut out);
        }
        out
    }

    /// Every VM's probes scheduled afresh from `now_ms` (a new term).
    fn restart(&mut self, now_ms: u64) {
        self.due.clear();
        self.inflight.clear();
        self.bootup.clear();
        let names: Vec<String> = self.vms.keys().cloned().collect();
        for name in names {
            self.schedule(now_ms, &name, self.cfg.catch_up_ms);
        }
    }

    /// Puts `name`'s probes (and its bootup deadline) on the schedule: at
    /// their slots, a slot that passed less than `catch_up_ms` ago at once.
    fn schedule(&mut self, now_ms: u64, name: &str, catch_up_ms: u64) {
        let Some(vm) = self.vms.get(name) else { return };
        if let Phase::Booting { deadline_ms, .. } = vm.w.phase {
            self.bootup.insert((deadline_ms, name.to_string()));
        }
        let gen = vm.gen;
        for (i, k) in vm.w.kpis.iter().enumerate() {
            let period = k.metric_collector.period_ms().max(1);
            let offset = slot_offset(name, i, period);
            // The slot at or before now, and the next one.
            let mut last = now_ms - now_ms % period + offset;
            if last > now_ms {
                last = last.saturating_sub(period);
            }
            // Caught-up probes spread over `CATCH_UP_SPREAD_MS` by their
            // slot (10,000 VMs at 10 s: 2,000 of them, not in one tick).
            let late = now_ms - last;
            let due = if late < catch_up_ms.min(period) {
                (now_ms + late % CATCH_UP_SPREAD_MS).min(last + period)
            } else {
                last + period
            };
            self.due.insert((due, name.to_string(), i, gen));
        }
    }

    fn upsert(&mut self, now_ms: u64, w: Watched) {
        let name = w.name();
        let same = self.vms.get(&name).is_some_and(|vm| {
            vm.w.phase == w.phase
                && vm.w.addresses == w.addresses
                && vm.w.kpis == w.kpis
                && vm.w.rules == w.rules
        });
        if same {
            // Nothing the probes depend on moved (the recovery count, the
            // group's size or scale count may): counters kept; a scale
            // decided before the group moved is decided anew (its id and
            // cooldown derive from what moved).
            if let Some(vm) = self.vms.get_mut(&name) {
                if vm.w.scale != w.scale && matches!(vm.decided, Some((Output::Scale { .. }, _))) {
                    vm.decided = None;
                }
                vm.w = w;
            }
            return;
        }
        // A change of phase, address or definitions: fresh counters and
        // schedule (the old entries die by their generation).
        let kpis = w.kpis.len();
        self.gens += 1;
        self.vms.insert(
            name.clone(),
            Vm {
                w,
                counts: vec![Count::default(); kpis],
                decided: None,
                waiting: None,
                gen: self.gens,
            },
        );
        if self.leading {
            // A VM that just came up is asked at once whether it is alive
            // (then at its slots): its bootup check, or its recovery,
            // ends a period sooner.
            let booting = matches!(
                self.vms.get(&name).map(|v| &v.w.phase),
                Some(Phase::Booting { .. })
            );
            self.schedule(now_ms, &name, if booting { u64::MAX } else { 0 });
        }
    }

    /// Issues what is due: bootup deadlines, probes, decisions to propose
    /// again.
    fn tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        // Bootup checks that ran out.
        while let Some((deadline, name)) = self.bootup.first().cloned() {
            if deadline > now_ms {
                break;
            }
            self.bootup.pop_first();
            let Some(vm) = self.vms.get_mut(&name) else {
                continue;
            };
            let Phase::Booting { op, deadline_ms } = vm.w.phase.clone() else {
                continue;
            };
            if deadline_ms != deadline || vm.decided.is_some() {
                continue;
            }
            let secs =
                vm.w.kpis
                    .iter()
                    .find(|k| k.event_name == VM_ALIVE)
                    .map(|_| "its bootup check (VM_ALIVE)")
                    .unwrap_or("its bootup check");
            let d = Output::BootupFailed {
                op,
                key: vm.w.key.clone(),
                error: format!("no answer to {secs} within bootup_time"),
            };
            out.push(d.clone());
            vm.decided = Some((d, now_ms));
            self.redecide
                .insert((now_ms.saturating_add(self.cfg.repropose_ms), name));
        }
        // Recoveries whose wait is over, their VM still failing.
        while let Some((due, name, gen)) = self.recoveries_due.first().cloned() {
            if due > now_ms {
                break;
            }
            self.recoveries_due.pop_first();
            let Some(vm) = self.vms.get_mut(&name).filter(|v| v.gen == gen) else {
                continue;
            };
            if let Some((_, d)) = vm.waiting.take() {
                if vm.decided.is_none() {
                    out.push(d.clone());
                    vm.decided = Some((d, now_ms));
                    self.redecide
                        .insert((now_ms.saturating_add(self.cfg.repropose_ms), name));
                }
            }
        }
        // Lost answers (the runtime always answers; belt and braces).
        let grace = 1_000;
        self.inflight
            .retain(|_, (_, _, deadline)| now_ms <= deadline.saturating_add(grace));
        // Probes due.
        while self.inflight.len() < self.cfg.probes_in_flight_max {
            let Some((due, name, i, gen)) = self.due.first().cloned() else {
                break;
            };
            if due > now_ms {
                break;
            }
            self.due.pop_first();
            let Some(vm) = self.vms.get(&name).filter(|v| v.gen == gen) else {
                continue;
            };
            let Some(kpi) = vm.w.kpis.get(i) else {
                continue;
            };
            let period = kpi.metric_collector.period_ms().max(1);
            // The next one at its slot, in rhythm even if this one was
            // late or a term's catch-up.
            let next = next_slot(due.max(now_ms), period, slot_offset(&name, i, period));
            self.due.insert((next, name.clone(), i, gen));
            let polled = match &vm.w.phase {
                Phase::Running => true,
                Phase::Booting { .. } => kpi.event_name == VM_ALIVE,
                Phase::Paused => false,
            };
            if !polled {
                continue;
            }
            let Some(target) = target(kpi, &vm.w.addresses) else {
                continue;
            };
            let late = now_ms - due;
            if late > 1_000 {
                self.stats.probes_late += 1;
            }
            self.stats.lateness_ms_max = self.stats.lateness_ms_max.max(late);
            self.stats.probes_sent += 1;
            self.next_probe += 1;
            // Half a period at most: a probe that cannot answer (a hung
            // VNF, a cut link) is known failed half a period before the
            // next one, so detection takes `occurrences_false` polls plus
            // at most half of one.
            let deadline_ms = now_ms + self.cfg.probe_timeout_ms.min(period / 2).max(1);
            self.inflight
                .insert(self.next_probe, (name.clone(), i, deadline_ms));
            out.push(Output::Probe {
                probe: self.next_probe,
                vm: name,
                kpi: kpi.event_name.clone(),
                target,
                deadline_ms,
            });
        }
        // Decisions the records did not take up: again.
        let repropose = self.cfg.repropose_ms;
        while let Some((due, name)) = self.redecide.first().cloned() {
            if due > now_ms {
                break;
            }
            self.redecide.pop_first();
            // Gone, replaced (fresh, no decision) or taken up: dropped.
            let Some((d, at)) = self.vms.get_mut(&name).and_then(|v| v.decided.as_mut()) else {
                continue;
            };
            let next = if now_ms >= at.saturating_add(repropose) {
                out.push(d.clone());
                *at = now_ms;
                now_ms.saturating_add(repropose)
            } else {
                at.saturating_add(repropose)
            };
            self.redecide.insert((next, name));
        }
    }

    fn on_result(&mut self, now_ms: u64, probe: u64, value: Option<f64>, out: &mut Vec<Output>) {
        let Some((name, i, _)) = self.inflight.remove(&probe) else {
            return;
        };
        let Some(vm) = self.vms.get_mut(&name) else {
            return;
        };
        let Some(kpi) = vm.w.kpis.get(i).cloned() else {
            return;
        };
        let had_decided = vm.decided.is_some();
        let c = &kpi.metric_collector;
        // A metric read from a body: no body, no sample. Anything else: no
        // answer counts as 0.
        let value = match (c.kind, &c.metric) {
            (CollectorType::HTTPGet, Some(_)) => match value {
                Some(v) => v,
                None => return,
            },
            _ => value.unwrap_or(0.0),
        };
        let holds = kpi.metric_cond.holds(value, kpi.metric_value);
        let count = &mut vm.counts[i];
        let turned = if holds {
            count.trues = count.trues.saturating_add(1);
            count.falses = 0;
            count.trues >= kpi.metric_occurrences_true
                && (count.state != Some(true) || c.continuous_alarm)
        } else {
            count.falses = count.falses.saturating_add(1);
            count.trues = 0;
            count.falses >= kpi.metric_occurrences_false
                && (count.state != Some(false) || c.continuous_alarm)
        };
        if turned {
            count.state = Some(holds);
            // Back by itself within its recovery wait: no recovery.
            if holds && vm.waiting.as_ref().is_some_and(|(k, _)| *k == i) {
                vm.waiting = None;
            }
        }
        let actions: Vec<(When, Action, u64)> =
            vm.w.rules
                .iter()
                .filter(|r| r.event_name == kpi.event_name)
                .flat_map(|r| {
                    r.parsed()
                        .into_iter()
                        .map(move |(w, a)| (w, a, r.script_timeout * 1_000))
                })
                .collect();
        // A scale acts while the KPI stays in its state (level), not only
        // when it turns: a step held back by the cooldown or a running
        // operation is taken once they allow it.
        let level = if holds {
            count.trues >= kpi.metric_occurrences_true
        } else {
            count.falses >= kpi.metric_occurrences_false
        };
        for (when, action, timeout_ms) in actions {
            let edge = if matches!(action, Action::ScaleOut | Action::ScaleIn) {
                level
            } else {
                turned
            };
            let fire = match when {
                When::ALWAYS => true,
                When::TRUE => edge && holds,
                When::FALSE => edge && !holds,
            };
            if fire {
                let wait = vm.w.recovery_wait_ms;
                if action == Action::Recover
                    && wait > 0
                    && vm.decided.is_none()
                    && vm.waiting.is_none()
                    && vm.w.phase == Phase::Running
                {
                    // ESC's recovery_wait_time: the recovery starts only if
                    // the VM has not come back by then.
                    let mut held = Vec::new();
                    act(
                        now_ms, vm, &kpi, action, holds, value, timeout_ms, &mut held,
                    );
                    if let Some(d) = held.pop() {
                        vm.decided = None;
                        vm.waiting = Some((i, d));
                        self.recoveries_due
                            .insert((now_ms + wait, name.clone(), vm.gen));
                    }
                    continue;
                }
                act(now_ms, vm, &kpi, action, holds, value, timeout_ms, out);
            }
        }
        if !had_decided && vm.decided.is_some() {
            self.redecide
                .insert((now_ms.saturating_add(self.cfg.repropose_ms), name));
        }
    }
}

/// One action of a rule on `vm`.
#[allow(clippy::too_many_arguments)]
fn act(
    now_ms: u64,
    vm: &mut Vm,
    kpi: &Kpi,
    action: Action,
    holds: bool,
    value: f64,
    timeout_ms: u64,
    out: &mut Vec<Output>,
) {
    let name = vm.w.name();
    let decision = match (&action, &vm.w.phase) {
        (Action::Log, _) => {
            out.push(Output::Log {
                vm: name,
                event: kpi.event_name.clone(),
                state: holds,
                value: Some(value),
            });
            return;
        }
        (Action::Script { path, args }, Phase::Running) => {
            out.push(Output::Script {
                vm: name,
                event: kpi.event_name.clone(),
                path: path.clone(),
                args: args.clone(),
                timeout_ms,
            });
            return;
        }
        (Action::Alive, Phase::Booting { op, .. }) => Output::Alive {
            op: op.clone(),
            key: vm.w.key.clone(),
        },
        (Action::ScaleOut | Action::ScaleIn, Phase::Running) => {
            let out = action == Action::ScaleOut;
            let g = &vm.w.scale;
            let at_bound = if out {
                g.vms >= g.max_active
            } else {
                g.vms <= g.min_active
            };
            let cooling = g
                .settled_at_ms
                .is_some_and(|at| now_ms < at.saturating_add(g.cooldown_ms));
            if at_bound || cooling || g.busy {
                return;
            }
            Output::Scale {
                op_id: scale_op_id(&vm.w.deployment, &vm.w.key.group, g.started),
                deployment: vm.w.deployment.clone(),
                group: vm.w.key.group.clone(),
                out,
                reason: format!(
                    "{} {} on {name} ({value})",
                    kpi.event_name,
                    if holds { "TRUE" } else { "FALSE" }
                ),
            }
        }
        // A booting VM that does not answer yet is not failing: its
        // bootup deadline decides.
        (Action::Recover, Phase::Running) => Output::Recover {
            op_id: recovery_op_id(&name, vm.w.recoveries),
            deployment: vm.w.deployment.clone(),
            vm: name,
            reason: format!(
                "{} turned {} ({value})",
                kpi.event_name,
                if holds { "TRUE" } else { "FALSE" }
            ),
        },
        _ => return,
    };
    if vm.decided.is_none() {
        out.push(decision.clone());
        vm.decided = Some((decision, now_ms));
    }
}

/// What `kpi` probes on a VM with these addresses (none: no address on
/// its interface yet).
fn target(kpi: &Kpi, addresses: &BTreeMap<u8, String>) -> Option<Target> {
    let c = &kpi.metric_collector;
    let addr = addresses.get(&c.nicid)?.clone();
    Some(match c.kind {
        CollectorType::ICMPPing => Target::Icmp {
            addr,
            count: ICMP_ECHOES,
        },
        CollectorType::TCPConnect => Target::Tcp {
            addr,
            port: c.port.unwrap_or(80),
        },
        CollectorType::HTTPGet => Target::Http {
            addr,
            port: c.port.unwrap_or(80),
            path: c.path.clone().unwrap_or_else(|| "/".into()),
            status: c.status.unwrap_or(200),
            metric: c.metric.clone(),
        },
    })
}
