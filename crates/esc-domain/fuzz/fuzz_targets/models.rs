//! Every JSON body the API parses into the domain's models (a deployment,
//! a tenant, a user's role), and every command payload the log may carry,
//! must be refused cleanly or accepted, never a panic: the parse, the
//! validation, an update's checks against itself, and the deterministic
//! apply of a decoded command to an empty and to a seeded state.
#![no_main]

use esc_domain::model::{DeploymentSpec, Tenant};
use esc_domain::{Command, Op};
use esc_state::MemState;
use libfuzzer_sys::fuzz_target;

fn apply(cmd: &Command, state: &mut MemState) {
    if cmd.validate().is_ok() {
        let _ = esc_domain::apply::apply(7, cmd, state);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = DeploymentSpec::from_json(data) {
        let _ = spec.validate();
        let _ = spec.check_update_of(&spec);
        // The deploy it would become, applied after a tenant exists.
        let mut state = MemState::default();
        let tenant = Command {
            tid: "t".into(),
            idempotency_key: None,
            fingerprint: String::new(),
            at_ms: 1,
            op: Op::CreateTenant {
                tenant: Tenant {
                    name: spec.tenant.clone(),
                    description: String::new(),
                },
            },
        };
        apply(&tenant, &mut state);
        let deploy = Command {
            tid: "d".into(),
            idempotency_key: Some("k".into()),
            fingerprint: "f".into(),
            at_ms: 2,
            op: Op::StartOperation {
                op_id: "op".into(),
                deployment: spec.name.clone(),
                kind: esc_domain::model::OperationKind::Deploy { spec },
                callback: None,
            },
        };
        apply(&deploy, &mut state);
    }
    if let Ok(t) = esc_domain::model::parse::<Tenant>(data) {
        let _ = t.validate();
    }
    let _ = serde_json::from_slice::<esc_domain::accounts::UserRole>(data);
    if let Ok(cmd) = Command::from_payload(data) {
        apply(&cmd, &mut MemState::default());
    }
});
