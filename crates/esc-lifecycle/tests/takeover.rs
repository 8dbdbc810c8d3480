//! The lifecycle core and the replicated domain together, against a model
//! VIM, with the primary lost at every point of a deploy, an update, manual
//! VM actions and an undeploy: the new primary's core starts from the
//! committed records only, and the VIM ends with exactly one server per VM
//! (none created twice, none leaked) and each action carried out once,
//! every operation COMPLETED once (issue 11, item 2).

use esc_domain::model::{
    DeploymentSpec, OperationKind, OperationState, ServiceState, Tenant, VmAction, VmState,
};
use esc_domain::{query, Command, Domain, Op};
use esc_lifecycle::{Answer, Config, Input, Lifecycle, Output, ServerInfo, VimCall};
use esc_state::{MemState, StateMachine};
use std::collections::{BTreeMap, VecDeque};

/// The VIM: servers by id; a server is ACTIVE the second time it is shown
/// (and after a reboot); each server's instance actions, newest last.
#[derive(Default)]
struct Vim {
    servers: BTreeMap<String, (ServerInfo, u32)>,
    created: u32,
    deleted: u32,
    actions: BTreeMap<String, Vec<String>>,
    /// Every action carried out: (server, action).
    acted: Vec<(String, VmAction)>,
}

impl Vim {
    fn call(&mut self, vim: &VimCall) -> Answer {
        match vim {
            VimCall::Find { name } => Answer::Found(
                self.servers
                    .values()
                    .filter(|(s, _)| &s.name == name)
                    .map(|(s, _)| s.clone())
                    .collect(),
            ),
            VimCall::Create { name, .. } => {
                self.created += 1;
                let id = format!("srv{}", self.created);
                let info = ServerInfo {
                    id: id.clone(),
                    name: name.clone(),
                    status: "BUILD".into(),
                    fault: None,
                    addresses: Default::default(),
                    op: None,
                    deployment: None,
                };
                self.servers.insert(id.clone(), (info, 0));
                self.actions.insert(id.clone(), vec!["req-create".into()]);
                Answer::Created { server_id: id }
            }
            VimCall::Show { server_id } => match self.servers.get_mut(server_id) {
                Some((s, shown)) => {
                    *shown += 1;
                    if *shown >= 2 && s.status != "SHUTOFF" {
                        s.status = "ACTIVE".into();
                    }
                    Answer::Shown(s.clone())
                }
                None => Answer::NotFound,
            },
            VimCall::Delete { server_id } => match self.servers.remove(server_id) {
                Some(_) => {
                    self.deleted += 1;
                    Answer::Deleted
                }
                None => Answer::NotFound,
            },
            VimCall::Actions { server_id } => match self.actions.get(server_id) {
                Some(a) if self.servers.contains_key(server_id) => {
                    Answer::Actions(a.iter().rev().cloned().collect())
                }
                _ => Answer::NotFound,
            },
            VimCall::Act {
                server_id, action, ..
            } => {
                let Some((s, shown)) = self.servers.get_mut(server_id) else {
                    return Answer::NotFound;
                };
                // Nova's: the status moves as the action is accepted.
                s.status = match action {
                    VmAction::Reboot => {
                        *shown = 0;
                        "REBOOT".into()
                    }
                    VmAction::Stop => "SHUTOFF".into(),
                    VmAction::Start => "ACTIVE".into(),
                };
                let log = self.actions.entry(server_id.clone()).or_default();
                log.push(format!("req-{}", log.len()));
                self.acted.push((server_id.clone(), *action));
                Answer::Acted
            }
            VimCall::ListDeployment { deployment_id } => {
                let prefix = format!("esc-{deployment_id}-");
                Answer::Found(
                    self.servers
                        .values()
                        .filter(|(s, _)| s.name.starts_with(&prefix))
                        .map(|(s, _)| s.clone())
                        .collect(),
                )
            }
        }
    }
}

struct Pair {
    state: MemState,
    index: u64,
    core: Lifecycle,
    epoch: u64,
    vim: Vim,
}

impl Pair {
    fn commit(&mut self, op: Op) {
        self.index += 1;
        let cmd = Command {
            tid: format!("t{}", self.index),
            idempotency_key: None,
            fingerprint: String::new(),
            at_ms: self.index,
            op,
        };
        Domain
            .apply(self.index, &cmd.to_payload(), &mut self.state)
            .unwrap();
    }

    fn records(&self) -> Input {
        Input::Records(query::active_operations(&self.state).unwrap())
    }

    /// A new primary: a fresh core, a new term, the committed records.
    fn take_over(&mut self) -> Vec<Output> {
        self.epoch += 1;
        self.core = Lifecycle::new(Config {
            poll_ms: 0,
            ..Config::default()
        });
        self.core.handle(0, Input::Lead { epoch: self.epoch });
        let r = self.records();
        self.core.handle(0, r)
    }

    /// Carries out the outputs, and what follows, for `calls` VIM calls;
    /// then the primary stops (what is in flight is lost).
    fn run_calls(&mut self, out: Vec<Output>, calls: u32) {
        let mut queue: VecDeque<Output> = out.into();
        let mut n = 0;
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Call { call, vim, .. } => {
                    if n == calls {
                        return;
                    }
                    n += 1;
                    let answer = self.vim.call(&vim);
                    queue.extend(self.core.handle(0, Input::Answer { call, answer }));
                }
                Output::Propose(step) => {
                    self.commit(Op::RecordStep { step });
                    let r = self.records();
                    queue.extend(self.core.handle(0, r));
                }
            }
        }
    }

    /// Runs until no work is left; the primary is lost right after the
    /// VIM carried out call number `crash_at` (its answer never arrives).
    fn run(&mut self, mut out: Vec<Output>, crash_at: Option<u32>) {
        let mut queue: VecDeque<Output> = out.drain(..).collect();
        let mut calls = 0u32;
        let mut now = 0;
        for _ in 0..10_000 {
            let Some(o) = queue.pop_front() else {
                now += 1;
                let more = self.core.handle(now, Input::Tick);
                if more.is_empty() {
                    return;
                }
                queue.extend(more);
                continue;
            };
            match o {
                Output::Call {
                    call, epoch, vim, ..
                } => {
                    assert_eq!(epoch, self.epoch, "a call of the current term");
                    let answer = self.vim.call(&vim);
                    calls += 1;
                    if crash_at == Some(calls) {
                        queue.clear();
                        queue.extend(self.take_over());
                        continue;
                    }
                    queue.extend(self.core.handle(now, Input::Answer { call, answer }));
                }
                Output::Propose(step) => {
                    self.commit(Op::RecordStep { step });
                    let r = self.records();
                    queue.extend(self.core.handle(now, r));
                }
            }
        }
        panic!("the operation never ended");
    }
}

fn spec() -> DeploymentSpec {
    DeploymentSpec::from_json(
        serde_json::json!({
            "name": "web", "tenant": "t1",
            "vm_groups": [
                { "name": "a", "image": "i", "flavor": "f", "scaling": { "min_active": 2, "max_active": 2 },
                  "interfaces": [{ "nicid": 0, "network": "n" }] },
                { "name": "b", "image": "i", "flavor": "f", "scaling": { "min_active": 1, "max_active": 1 },
                  "interfaces": [{ "nicid": 0, "network": "n" }] }
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

/// A pair whose deployment `web` of `spec` is deployed (no crash).
fn deployed(spec: DeploymentSpec) -> Pair {
    let mut p = pair();
    p.commit(Op::StartOperation {
        op_id: "op1".into(),
        deployment: "web".into(),
        kind: OperationKind::Deploy { spec },
        callback: None,
    });
    let out = p.take_over();
    p.run(out, None);
    p
}

fn pair() -> Pair {
    let mut p = Pair {
        state: MemState::default(),
        index: 0,
        core: Lifecycle::new(Config::default()),
        epoch: 0,
        vim: Vim::default(),
    };
    p.commit(Op::CreateTenant {
        tenant: Tenant {
            name: "t1".into(),
            description: String::new(),
        },
    });
    p
}

#[test]
fn a_deploy_and_an_undeploy_survive_a_takeover_at_every_call() {
    // 3 VMs: 3 lookups, 3 creates, 6 shows; crash after each in turn.
    for crash_at in (1..=14).map(Some).chain([None]) {
        let mut p = pair();
        p.commit(Op::StartOperation {
            op_id: "op1".into(),
            deployment: "web".into(),
            kind: OperationKind::Deploy { spec: spec() },
            callback: None,
        });
        let out = p.take_over();
        p.run(out, crash_at);
        let service = query::service(&p.state, "web").unwrap().unwrap();
        assert_eq!(service.state, ServiceState::Active, "crash at {crash_at:?}");
        assert_eq!(
            p.vim.created, 3,
            "crash at {crash_at:?}: one server per VM, none twice"
        );
        assert_eq!(p.vim.servers.len(), 3);
        let op = query::operation(&p.state, "op1").unwrap().unwrap();
        assert_eq!(op.state, OperationState::Completed);

        p.commit(Op::StartOperation {
            op_id: "op2".into(),
            deployment: "web".into(),
            kind: OperationKind::Undeploy,
            callback: None,
        });
        let out = p.take_over();
        p.run(out, crash_at.map(|c| c % 4 + 1));
        assert!(
            p.vim.servers.is_empty(),
            "crash at {crash_at:?}: no server leaked"
        );
        assert!(query::service(&p.state, "web").unwrap().is_none());
        assert_eq!(p.vim.deleted, 3);
    }
}

fn updated() -> DeploymentSpec {
    // Group a grows to 3, b is removed, c is new.
    let mut spec = spec();
    spec.vm_groups[0].scaling.min_active = 3;
    spec.vm_groups[0].scaling.max_active = 3;
    let mut c = spec.vm_groups.remove(1);
    c.name = "c".into();
    spec.vm_groups.push(c);
    spec
}

fn names(p: &Pair) -> Vec<String> {
    let mut n: Vec<String> = p
        .vim
        .servers
        .values()
        .map(|(s, _)| s.name.clone())
        .collect();
    n.sort();
    n
}

#[test]
fn an_update_and_vm_actions_survive_a_takeover_at_every_call() {
    // The update: 2 lookups, 2 creates, 4 shows, 1 delete, 1 listing;
    // then stop, start and reboot of one VM (marks, looks, the actions).
    for crash_at in (1..=12).map(Some).chain([None]) {
        let mut p = deployed(spec());
        p.commit(Op::StartOperation {
            op_id: "up".into(),
            deployment: "web".into(),
            kind: OperationKind::Update { spec: updated() },
            callback: None,
        });
        let out = p.take_over();
        p.run(out, crash_at);
        let op = query::operation(&p.state, "up").unwrap().unwrap();
        assert_eq!(op.state, OperationState::Completed, "crash at {crash_at:?}");
        assert_eq!(
            names(&p),
            [
                "esc-web-a-0-g0",
                "esc-web-a-1-g0",
                "esc-web-a-2-g0",
                "esc-web-c-0-g0"
            ],
            "crash at {crash_at:?}"
        );
        assert_eq!(p.vim.created, 5, "crash at {crash_at:?}: none twice");
        assert_eq!(p.vim.deleted, 1);
        let service = query::service(&p.state, "web").unwrap().unwrap();
        assert_eq!(service.spec, updated());
        assert_eq!(service.vms.len(), 4);

        let target = service.vms[0].clone();
        for (n, action) in [VmAction::Stop, VmAction::Start, VmAction::Reboot]
            .into_iter()
            .enumerate()
        {
            let id = format!("act{n}");
            p.commit(Op::StartOperation {
                op_id: id.clone(),
                deployment: "web".into(),
                kind: OperationKind::VmAction {
                    vm: target.key.server_name(),
                    action,
                },
                callback: None,
            });
            let out = p.take_over();
            p.run(out, crash_at.map(|c| c % 6 + 1));
            let op = query::operation(&p.state, &id).unwrap().unwrap();
            assert_eq!(
                op.state,
                OperationState::Completed,
                "{action:?} crash {crash_at:?}"
            );
            let vm = query::service(&p.state, "web").unwrap().unwrap().vms[0].clone();
            assert_eq!(vm.state, action.done_state());
            assert_eq!(vm.action_mark, None);
        }
        let server = target.server_id.clone().unwrap();
        assert_eq!(
            p.vim.acted,
            [
                (server.clone(), VmAction::Stop),
                (server.clone(), VmAction::Start),
                (server, VmAction::Reboot)
            ],
            "crash at {crash_at:?}: each action once"
        );
        assert_eq!(
            query::service(&p.state, "web").unwrap().unwrap().vms[0].state,
            VmState::Alive
        );
    }
}

#[test]
fn a_failed_update_rolled_back_deletes_what_it_added_and_keeps_the_rest() {
    // Before its creates answer, before its shows, and once the removed
    // group's server is deleted (that one is not brought back).
    for calls in [2, 4, 6, 9] {
        let mut p = deployed(spec());
        let before = names(&p);
        p.commit(Op::StartOperation {
            op_id: "up".into(),
            deployment: "web".into(),
            kind: OperationKind::Update { spec: updated() },
            callback: None,
        });
        // Part of the update runs; then it fails (the VIM refused, say).
        let out = p.take_over();
        p.run_calls(out, calls);
        p.commit(Op::RecordStep {
            step: esc_domain::model::Step::Settled {
                op: "up".into(),
                state: OperationState::FailedTemp,
                error: Some("refused".into()),
            },
        });
        let now = names(&p);
        let survivors: Vec<String> = before.into_iter().filter(|n| now.contains(n)).collect();
        let service = query::service(&p.state, "web").unwrap().unwrap();
        assert_eq!(service.state, ServiceState::Error);
        assert_eq!(service.spec, spec(), "the old spec until it completes");
        p.commit(Op::ControlOperation {
            op_id: "up".into(),
            action: esc_domain::model::LcmControl::Rollback,
        });
        let out = p.take_over();
        p.run(out, None);
        let op = query::operation(&p.state, "up").unwrap().unwrap();
        assert_eq!(op.state, OperationState::RolledBack, "after {calls} calls");
        assert_eq!(
            names(&p),
            survivors,
            "after {calls} calls: what it added is gone"
        );
        if calls == 9 {
            assert_eq!(
                survivors.len(),
                2,
                "b's server was deleted before the failure"
            );
        }
        let service = query::service(&p.state, "web").unwrap().unwrap();
        assert_eq!(
            (service.state, service.spec.clone(), service.vms.len()),
            (ServiceState::Active, spec(), survivors.len())
        );
    }
}

/// A scale out then in (issue 12) with the primary lost after each VIM
/// call in turn: one server more, created once, then that one deleted.
#[test]
fn a_scale_out_and_in_survive_a_takeover_at_every_call() {
    // Out: a lookup, a create, two shows; in: a delete, a listing.
    for crash_at in (1..=5).map(Some).chain([None]) {
        let mut grows = spec();
        grows.vm_groups[0].scaling.max_active = 3;
        let mut p = deployed(grows);
        for (n, out) in [true, false].into_iter().enumerate() {
            let id = format!("scl{n}");
            p.commit(Op::StartOperation {
                op_id: id.clone(),
                deployment: "web".into(),
                kind: OperationKind::Scale {
                    group: "a".into(),
                    out,
                    reason: "load".into(),
                },
                callback: None,
            });
            let o = p.take_over();
            p.run(o, crash_at);
            let op = query::operation(&p.state, &id).unwrap().unwrap();
            assert_eq!(op.state, OperationState::Completed, "crash at {crash_at:?}");
            let service = query::service(&p.state, "web").unwrap().unwrap();
            assert_eq!(service.vms.len(), if out { 4 } else { 3 });
            if out {
                assert!(names(&p).contains(&"esc-web-a-2-g0".to_string()));
            }
        }
        assert_eq!(p.vim.created, 4, "crash at {crash_at:?}: none twice");
        assert_eq!(p.vim.deleted, 1, "crash at {crash_at:?}");
        assert_eq!(
            names(&p),
            ["esc-web-a-0-g0", "esc-web-a-1-g0", "esc-web-b-0-g0"]
        );
    }
}

/// ESC's service actions (issue 12): STOP, START, REBOOT of a whole
/// deployment, with the primary lost after each VIM call in turn: every
/// VM's action carried out once.
#[test]
fn service_actions_survive_a_takeover_at_every_call() {
    // Per VM: its actions listed, the action, a look; three VMs.
    for crash_at in (1..=9).map(Some).chain([None]) {
        let mut p = deployed(spec());
        for (n, action) in [VmAction::Stop, VmAction::Start, VmAction::Reboot]
            .into_iter()
            .enumerate()
        {
            let id = format!("svc{n}");
            p.commit(Op::StartOperation {
                op_id: id.clone(),
                deployment: "web".into(),
                kind: OperationKind::ServiceAction { action },
                callback: None,
            });
            let out = p.take_over();
            p.run(out, crash_at);
            let op = query::operation(&p.state, &id).unwrap().unwrap();
            assert_eq!(
                op.state,
                OperationState::Completed,
                "{action:?} crash {crash_at:?}"
            );
            let service = query::service(&p.state, "web").unwrap().unwrap();
            assert!(
                service.vms.iter().all(|v| v.state == action.done_state()),
                "{action:?} crash {crash_at:?}"
            );
        }
        for (server, _) in p.vim.servers.iter() {
            let acted: Vec<VmAction> = p
                .vim
                .acted
                .iter()
                .filter(|(s, _)| s == server)
                .map(|(_, a)| *a)
                .collect();
            assert_eq!(
                acted,
                [VmAction::Stop, VmAction::Start, VmAction::Reboot],
                "crash at {crash_at:?}: each action once on {server}"
            );
        }
    }
}
