//! The lifecycle core and the replicated domain together, against a model
//! VIM, with the primary lost at every point of a deploy and an undeploy:
//! the new primary's core starts from the committed records only, and the
//! VIM ends with exactly one server per VM (none created twice, none
//! leaked), every operation COMPLETED once (issue 11, item 2).

use esc_domain::model::{DeploymentSpec, OperationKind, OperationState, ServiceState, Tenant};
use esc_domain::{query, Command, Domain, Op};
use esc_lifecycle::{Answer, Config, Input, Lifecycle, Output, ServerInfo, VimCall};
use esc_state::{MemState, StateMachine};
use std::collections::{BTreeMap, VecDeque};

/// The VIM: servers by id; a server is ACTIVE the second time it is shown.
#[derive(Default)]
struct Vim {
    servers: BTreeMap<String, (ServerInfo, u32)>,
    created: u32,
    deleted: u32,
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
                };
                self.servers.insert(id.clone(), (info, 0));
                Answer::Created { server_id: id }
            }
            VimCall::Show { server_id } => match self.servers.get_mut(server_id) {
                Some((s, shown)) => {
                    *shown += 1;
                    if *shown >= 2 {
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
