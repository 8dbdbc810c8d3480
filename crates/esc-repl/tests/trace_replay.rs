//! Replays committed traces of the replication core (style principle 2):
//! `traces/primary.jsonl` and `traces/follower.jsonl` were recorded by
//! `esc_repl::trace::Recorder` from the exchange in [`exchange`] (an
//! operator promotes one fresh node, the other follows, one write is
//! persisted on both, appended, committed and applied on both). The replay
//! rebuilds each core from its header and checks every step's outputs.
//!
//! After a deliberate change of the core's outputs, regenerate them with
//! `cargo test -p esc-repl --test trace_replay -- --ignored regenerate`
//! and review the diff like any other expected output.

use esc_repl::trace::{replay, Init, Mismatch, Recorder};
use esc_repl::{Config, Core, Input, LogView, Mode, Output, Role};
use esc_wire::Message;

const PRIMARY: &str = include_str!("traces/primary.jsonl");
const FOLLOWER: &str = include_str!("traces/follower.jsonl");

fn init() -> Init {
    Init {
        config: Config {
            mode: Mode::Sync,
            async_lag_entries_max: 5,
            heartbeat_interval_ms: 50,
            peer_timeout_ms: 400,
            batch_entries_max: 7,
            group_commit_entries_max: 5,
            snapshot_every_entries: 20,
            log_retain_entries: 5,
            alone_grace_ms: 0,
            in_sync_window_ms: u64::MAX,
            epoch_slot: None,
        },
        role: Role::Standby,
        epoch: 0,
        log: LogView::default(),
        applied_index: 0,
        commit_alone: true,
    }
}

fn sent(out: &[Output]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// The scenario, recorded: returns the primary's and the follower's traces.
/// The asserts say what each step is for.
fn exchange() -> (String, String) {
    type Rec = Recorder<Core, Vec<u8>>;
    let (mut p, out) = Rec::start(init(), 0, Some(Vec::new()));
    assert!(out.is_empty());
    let (mut f, _) = Rec::start(init(), 0, Some(Vec::new()));
    let conn = 1;
    // The operator promotes the first node: the new epoch is persisted first.
    let out = p.handle(
        10,
        Input::Promote {
            reason: "escadm ha promote".into(),
        },
    );
    assert!(
        matches!(out[0], Output::Persist { epoch: Some(1), .. }),
        "{out:?}"
    );
    p.handle(12, Input::Persisted { last_index: 0 });
    // The follower dials: it says where its log ends.
    p.handle(20, Input::PeerUp { conn });
    let out = f.handle(20, Input::PeerUp { conn });
    for msg in sent(&out) {
        p.handle(21, Input::Received { conn, msg });
    }
    // One write: appended to the follower while the primary persists it.
    let out = p.handle(
        30,
        Input::Propose {
            token: 1,
            payload: b"w1".to_vec(),
        },
    );
    let append = sent(&out);
    assert!(matches!(&append[..], [Message::Append { entries, .. }] if entries.len() == 1));
    let out = f.handle(
        31,
        Input::Received {
            conn,
            msg: append[0].clone(),
        },
    );
    // It learns the new epoch from the Append: the epoch, then the entry,
    // are persisted (one answer covers both).
    assert!(
        matches!(&out[..], [Output::Persist { epoch: Some(1), .. }, Output::RoleChanged { .. }, Output::Persist { entries, .. }] if entries.len() == 1),
        "{out:?}"
    );
    let ack = sent(&f.handle(33, Input::Persisted { last_index: 1 }));
    assert!(matches!(
        ack[..],
        [Message::AppendOk { match_index: 1, .. }]
    ));
    // Durable on both: the primary commits and answers the client.
    p.handle(34, Input::Persisted { last_index: 1 });
    let out = p.handle(
        35,
        Input::Received {
            conn,
            msg: ack[0].clone(),
        },
    );
    assert!(
        out.contains(&Output::Apply {
            up_to: 1,
            replies: vec![(1, 1)]
        }),
        "{out:?}"
    );
    // The next heartbeat carries the commit point; the follower applies.
    let beat = sent(&p.handle(85, Input::Tick));
    assert_eq!(beat.len(), 1);
    let out = f.handle(
        86,
        Input::Received {
            conn,
            msg: beat[0].clone(),
        },
    );
    assert!(
        out.contains(&Output::Apply {
            up_to: 1,
            replies: vec![]
        }),
        "{out:?}"
    );
    let text = |r: Rec| String::from_utf8(r.finish().unwrap().unwrap()).unwrap();
    (text(p), text(f))
}

#[test]
#[ignore = "writes tests/traces/*.jsonl; run after a deliberate change of outputs"]
fn regenerate() {
    let (p, f) = exchange();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/traces");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/primary.jsonl"), p).unwrap();
    std::fs::write(format!("{dir}/follower.jsonl"), f).unwrap();
}

// Input: traces/primary.jsonl and traces/follower.jsonl.
// Expected: every step gives exactly its recorded outputs.
#[test]
fn committed_traces_replay_to_their_recorded_outputs() {
    assert_eq!(replay(PRIMARY), Ok(8));
    assert_eq!(replay(FOLLOWER), Ok(4));
}

// Input: the scenario, recorded now. Expected: byte for byte the committed
// traces (else the core's outputs changed: regenerate and review).
#[test]
fn the_recorder_writes_the_committed_traces() {
    let (p, f) = exchange();
    assert_eq!(p, PRIMARY, "regenerate: see the module doc");
    assert_eq!(f, FOLLOWER, "regenerate: see the module doc");
}

/// The trace with line `line` (1-based) changed by `edit`.
fn tampered(trace: &str, line: usize, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut lines: Vec<String> = trace.lines().map(str::to_string).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[line - 1]).unwrap();
    edit(&mut v);
    lines[line - 1] = v.to_string();
    lines.join("\n")
}

/// The line (1-based) and output index of the first output named `variant`.
fn find(trace: &str, variant: &str) -> (usize, usize) {
    trace
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let outs = v["outputs"].as_array()?;
            let k = outs.iter().position(|o| o.get(variant).is_some())?;
            Some((i + 1, k))
        })
        .unwrap()
}

// Input: the follower's trace with its recorded `Apply` changed to another
// index. Expected: a mismatch at exactly that line and output.
#[test]
fn a_changed_output_is_reported_at_its_step() {
    let (line, index) = find(FOLLOWER, "Apply");
    let bad = tampered(FOLLOWER, line, |v| {
        v["outputs"][index]["Apply"]["up_to"] = 2.into();
    });
    match replay(&bad) {
        Err(Mismatch::Outputs {
            line: l,
            index: i,
            recorded,
            replayed,
            ..
        }) => {
            assert_eq!((l, i), (line, index));
            assert!(recorded.contains("\"up_to\":2"), "{recorded}");
            assert!(replayed.contains("\"up_to\":1"), "{replayed}");
        }
        other => panic!("expected a mismatch at line {line}: {other:?}"),
    }
}

// Input: the primary's trace missing the `Persist` of the write.
// Expected: a mismatch at that line: the replay made one output more.
#[test]
fn a_missing_output_is_reported_at_its_step() {
    let line = PRIMARY
        .lines()
        .position(|l| l.contains("\"Propose\""))
        .unwrap()
        + 1;
    let bad = tampered(PRIMARY, line, |v| {
        let outs = v["outputs"].as_array_mut().unwrap();
        let k = outs
            .iter()
            .position(|o| o.get("Persist").is_some())
            .unwrap();
        outs.remove(k);
    });
    let err = replay(&bad).unwrap_err();
    assert!(
        matches!(&err, Mismatch::Outputs { line: l, recorded, .. } if *l == line && recorded == "nothing"),
        "{err}"
    );
}

// Input: the primary's trace with a slower heartbeat in its header.
// Expected: the core built from it sends no heartbeat at 85 ms, and the
// replay says so at the Tick's line.
#[test]
fn the_header_builds_the_core() {
    let bad = tampered(PRIMARY, 1, |v| {
        v["init"]["config"]["heartbeat_interval_ms"] = 1_000.into();
    });
    let tick = PRIMARY
        .lines()
        .position(|l| l.contains("\"Tick\""))
        .unwrap()
        + 1;
    match replay(&bad) {
        Err(Mismatch::Outputs { line, replayed, .. }) => {
            assert_eq!(line, tick);
            assert_eq!(replayed, "nothing");
        }
        other => panic!("expected a mismatch at the tick: {other:?}"),
    }
}

// Input: no lines, garbage, a trace of another core.
// Expected: each is refused, saying why.
#[test]
fn what_is_not_a_trace_of_this_core_is_refused() {
    assert_eq!(replay(""), Err(Mismatch::Empty));
    assert!(matches!(
        replay("{\"now_ms\":0}"),
        Err(Mismatch::Malformed { line: 1, .. })
    ));
    let other = PRIMARY.replacen("\"trace\":\"esc-repl\"", "\"trace\":\"esc-authority\"", 1);
    assert!(matches!(
        replay(&other),
        Err(Mismatch::Foreign { line: 1, found, .. }) if found == "esc-authority"
    ));
    let mut lines: Vec<&str> = PRIMARY.lines().collect();
    lines.insert(2, "{\"now_ms\":11,\"input\":\"Tick\"}");
    assert!(matches!(
        replay(&lines.join("\n")),
        Err(Mismatch::Malformed { line: 3, .. })
    ));
}
