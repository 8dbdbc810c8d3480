//! Cost of one store cycle on this machine: a durable append of a group of
//! 1 KiB deployment commands, then the (non-durable) apply of that group.
//! `cargo run --release -p esc-domain --example commit_cost`

use esc_domain::model::{DeploymentSpec, OperationKind, Tenant};
use esc_domain::{Command, Domain, Op};
use esc_store::{Batch, Store};
use esc_wire::Entry;
use std::time::{Duration, Instant};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Domain).expect("open store");
    // The tenant every deployment names (entry 1), so each deploy applies.
    let tenant = Command {
        tid: "t".into(),
        idempotency_key: None,
        fingerprint: "f".into(),
        at_ms: 0,
        op: Op::CreateTenant {
            tenant: Tenant {
                name: "t".into(),
                description: String::new(),
            },
        },
    };
    store
        .write(Batch {
            append: vec![Entry::new(1, 1, serde_json::to_vec(&tenant).expect("json"))],
            apply_up_to: Some(1),
            sync: true,
            ..Batch::default()
        })
        .expect("tenant");
    let mut index = 1u64;
    println!("| group size | append+fsync | apply | cycles |");
    println!("|---:|---:|---:|---:|");
    for group in [1usize, 20, 100] {
        let cycles = 200u32;
        let (mut append, mut apply) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..cycles {
            let entries: Vec<Entry> = (0..group)
                .map(|_| {
                    index += 1;
                    let cmd = Command {
                        tid: "t".into(),
                        idempotency_key: None,
                        fingerprint: "f".into(),
                        at_ms: 0,
                        op: Op::StartOperation {
                            op_id: format!("op{index}"),
                            deployment: format!("d{index}"),
                            kind: OperationKind::Deploy {
                                spec: DeploymentSpec {
                                    name: format!("d{index}"),
                                    tenant: "t".into(),
                                    vm_groups: Vec::new(),
                                    properties: [("payload".to_string(), "x".repeat(1000))].into(),
                                },
                            },
                            callback: None,
                        },
                    };
                    Entry::new(1, index, serde_json::to_vec(&cmd).expect("json"))
                })
                .collect();
            let t = Instant::now();
            store
                .write(Batch {
                    append: entries,
                    sync: true,
                    ..Batch::default()
                })
                .expect("append");
            append += t.elapsed();
            let t = Instant::now();
            store
                .write(Batch {
                    apply_up_to: Some(index),
                    ..Batch::default()
                })
                .expect("apply");
            apply += t.elapsed();
        }
        println!(
            "| {group} | {:?} | {:?} | {cycles} |",
            append / cycles,
            apply / cycles
        );
    }
}
