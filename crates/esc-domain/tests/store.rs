//! The domain on the real store (redb): applying a log through
//! `Store::write` (in batches of any size) gives the state and answers of
//! the in-memory reference (`esc_state::contract::run`), the kept digest
//! matches the state, and a streamed snapshot installed on another store
//! answers the rest of the log the same.

use esc_domain::model::{DeploymentSpec, OperationKind, Tenant};
use esc_domain::{Command, Domain, Op, OpMode};
use esc_state::{contract, StateRead};
use esc_store::{Batch, Store};
use esc_wire::Entry;

fn log() -> Vec<Vec<u8>> {
    (0..300u64)
        .map(|seq| {
            let name = format!("d{}", seq % 17);
            let op = match seq % 5 {
                _ if seq == 0 => Op::CreateTenant {
                    tenant: Tenant {
                        name: "t".into(),
                        description: String::new(),
                    },
                },
                0..=2 => Op::StartOperation {
                    op_id: format!("op{seq}"),
                    deployment: name.clone(),
                    kind: OperationKind::Deploy {
                        spec: DeploymentSpec {
                            name,
                            tenant: "t".into(),
                            vm_groups: Vec::new(),
                            properties: [("pad".to_string(), "x".repeat((seq % 7 * 100) as usize))]
                                .into(),
                        },
                    },
                    callback: None,
                },
                3 => Op::StartOperation {
                    op_id: format!("op{seq}"),
                    deployment: name,
                    kind: OperationKind::Undeploy,
                    callback: None,
                },
                _ => Op::SetOpMode {
                    mode: if seq % 2 == 0 {
                        OpMode::Maintenance
                    } else {
                        OpMode::Operation
                    },
                },
            };
            Command {
                tid: format!("t{seq}"),
                idempotency_key: (seq % 4 == 0).then(|| format!("k{}", seq % 9)),
                fingerprint: format!("f{}", seq % 2),
                at_ms: seq,
                op,
            }
            .to_payload()
        })
        .collect()
}

fn entries(payloads: &[Vec<u8>]) -> Vec<Entry> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Entry::new(1, i as u64 + 1, p.clone()))
        .collect()
}

fn open() -> Store<Domain> {
    Store::open_backend(redb::backends::InMemoryBackend::new(), Domain).unwrap()
}

/// Every key and value of a store's state.
fn items(s: &Store<Domain>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    s.reader()
        .unwrap()
        .scan("", None, usize::MAX, &mut |k, v| {
            out.push((k.to_string(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[test]
fn the_store_applies_as_the_reference_does_and_keeps_its_digest() {
    let payloads = log();
    let (want_answers, want_state) = contract::run(&Domain, &payloads);
    let s = open();
    s.write(Batch {
        append: entries(&payloads),
        ..Batch::default()
    })
    .unwrap();
    let mut answers = Vec::new();
    let mut at = 0u64;
    for step in [1u64, 7, 50, 3, 300] {
        let to = (at + step).min(payloads.len() as u64);
        let r = s
            .write(Batch {
                apply_up_to: Some(to),
                ..Batch::default()
            })
            .unwrap();
        answers.extend(r.outcomes.into_iter().map(|(_, a)| a));
        assert_eq!(s.digest(), s.digest_recomputed().unwrap(), "at {to}");
        at = to;
    }
    assert_eq!(answers, want_answers);
    let got: Vec<(String, Vec<u8>)> = items(&s);
    let want: Vec<(String, Vec<u8>)> = want_state.0.into_iter().collect();
    assert_eq!(got, want);
}

#[test]
fn a_streamed_snapshot_installed_elsewhere_answers_the_rest_the_same() {
    let payloads = log();
    let cut = 180;
    let (primary, follower) = (open(), open());
    primary
        .write(Batch {
            append: entries(&payloads[..cut]),
            apply_up_to: Some(cut as u64),
            ..Batch::default()
        })
        .unwrap();
    // The follower held something else before: it is replaced.
    follower
        .write(Batch {
            append: entries(&payloads[..5]),
            apply_up_to: Some(5),
            ..Batch::default()
        })
        .unwrap();
    follower.stage_begin().unwrap();
    let mut point = None;
    let mut chunks = 0;
    primary
        .stream_snapshot(
            16,
            4096,
            |p| {
                point = Some(p);
                true
            },
            |c| {
                chunks += 1;
                follower.stage_chunk(&c).unwrap();
                true
            },
        )
        .unwrap();
    assert!(chunks > 1, "streamed in bounded chunks");
    let p = point.unwrap();
    assert_eq!((p.index, p.index_epoch), (cut as u64, 1));
    // Until installed, the follower's state is its own.
    assert_eq!(follower.meta().applied_index, 5);
    follower.install_staged(p.index, p.index_epoch).unwrap();
    assert_eq!(items(&follower), items(&primary));
    assert_eq!(follower.digest(), primary.digest());
    assert_eq!(follower.digest(), follower.digest_recomputed().unwrap());
    let rest = entries(&payloads)[cut..].to_vec();
    let apply = |s: &Store<Domain>| {
        s.write(Batch {
            append: rest.clone(),
            apply_up_to: Some(payloads.len() as u64),
            ..Batch::default()
        })
        .unwrap()
        .outcomes
    };
    assert_eq!(apply(&follower), apply(&primary));
    assert_eq!(follower.digest(), primary.digest());
}
