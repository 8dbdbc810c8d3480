//! Replays committed traces of the role authority and the witness (style
//! principle 2). `traces/switchover-*.jsonl` were recorded by
//! `esc_authority::trace::Recorder` from the exchange in [`switchover`]
//! (witness mode): esc-1 starts as the initial primary with the witness's
//! grant and, alone, has the standby marked outdated and commits alone;
//! esc-2 follows it, so esc-1 stops committing alone and has the mark
//! cleared; the operator switches over: esc-1 releases its lease and hands
//! over, esc-2 gets the next grant and takes the role, and esc-1 drops the
//! VIP once it hears esc-2 advertise. The replication cores' views are
//! scripted as `esc-node` reports them (each `CommitAlone` carried out at
//! once); the witness's replies are the real witness core's. The replay
//! rebuilds each core from its header and checks every step's outputs.
//!
//! After a deliberate change of the cores' outputs, regenerate them with
//! `cargo test -p esc-authority --test trace_replay -- --ignored regenerate`
//! and review the diff like any other expected output.

use esc_authority::authority::{
    Config, Input, Output, ReplView, Role, VrrpState, VrrpView, PRIMARY_PRIORITY,
};
use esc_authority::trace::{replay, Mismatch, Recorder, WitnessInit, WitnessRecorder};
use esc_authority::{Authority, Witness, WitnessRequest, WitnessState};
use std::collections::VecDeque;

const OLD_PRIMARY: &str = include_str!("traces/switchover-esc-1.jsonl");
const NEW_PRIMARY: &str = include_str!("traces/switchover-esc-2.jsonl");
const WITNESS: &str = include_str!("traces/switchover-witness.jsonl");

type Node = Recorder<Authority, Vec<u8>>;
type WitnessCore = Recorder<Witness, Vec<u8>>;

fn cfg(initial_primary: bool) -> Config {
    Config {
        witness: true,
        vrrp: true,
        auto_takeover: true,
        priority: 100,
        renew_interval_ms: 100,
        witness_retry_ms: 100,
        switchover_timeout_ms: 2_000,
        contest_grace_ms: 1_000,
        initial_primary,
    }
}

/// What the replication core reports: `primary` in `epoch`; the store is
/// fresh in epoch 0, and holds 10 entries from then on.
fn view(primary: bool, epoch: u64, linked: bool) -> ReplView {
    ReplView {
        primary,
        epoch,
        last_epoch: epoch,
        last_index: if epoch == 0 { 0 } else { 10 },
        linked,
        peer_closed: false,
        in_sync: linked,
        blocker: (!primary && linked).then(|| "the primary is still connected".into()),
        drained: primary && linked,
        commit_alone: false,
        commit_alone_seq: 0,
        promotions_refused: 0,
        handover: false,
    }
}

fn vrrp(state: VrrpState, primary_adverts: u64) -> Input {
    Input::Vrrp(VrrpView {
        state,
        master_priority: (state == VrrpState::Backup).then_some(PRIMARY_PRIORITY),
        primary_adverts,
    })
}

/// One node: its authority, and what its replication core last reported.
struct Host {
    name: &'static str,
    auth: Node,
    view: ReplView,
}

impl Host {
    fn new(name: &'static str, initial_primary: bool) -> Host {
        let (auth, _) = Node::start(cfg(initial_primary), T, Some(Vec::new()));
        Host {
            name,
            auth,
            view: view(false, 0, false),
        }
    }

    /// The core reports `v` (with the commit-alone state it carries out).
    fn report(&mut self, w: &mut WitnessCore, now: u64, v: ReplView) -> Vec<Output> {
        self.view = ReplView {
            commit_alone: self.view.commit_alone,
            commit_alone_seq: self.view.commit_alone_seq,
            ..v
        };
        self.act(w, now, Input::Repl(self.view.clone()))
    }

    /// `input` reaches the authority at `now`, then what follows from its
    /// outputs, 1 ms apart, as `esc-node` does it: the witness answers every
    /// request, and the core carries out every `CommitAlone` and reports
    /// its new view. Returns every output.
    fn act(&mut self, w: &mut WitnessCore, now: u64, input: Input) -> Vec<Output> {
        let mut all = Vec::new();
        let mut inputs = VecDeque::from([(now, input)]);
        while let Some((t, input)) = inputs.pop_front() {
            let out = self.auth.handle(t, input);
            for o in &out {
                match o {
                    Output::ToWitness(request) => {
                        let step = w.request(t, self.name, request.clone());
                        let reply = Input::Witness {
                            request: request.clone(),
                            reply: step.reply,
                            sent_at_ms: t,
                        };
                        inputs.push_back((t + 1, reply));
                    }
                    Output::CommitAlone { on, seq } => {
                        self.view.commit_alone = *on;
                        self.view.commit_alone_seq = *seq;
                        inputs.push_back((t + 1, Input::Repl(self.view.clone())));
                    }
                    _ => {}
                }
            }
            all.extend(out);
        }
        all
    }
}

/// The authority told its core to lead in `epoch`.
fn promoted(out: &[Output], epoch: u64) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Promote { epoch: Some(e), .. } if *e == epoch))
}

/// When the nodes start: the witness has run for a lease period by then
/// (a restarted witness grants nothing for one: it cannot know how long
/// ago it renewed a lease).
const T: u64 = 1_000;

/// The scenario, recorded: esc-1's, esc-2's and the witness's traces.
fn switchover() -> (String, String, String) {
    let init = WitnessInit {
        state: WitnessState::default(),
        lease_ms: 1_000,
    };
    let (mut w, _) = WitnessCore::start(init, 0, Some(Vec::new()));
    let w = &mut w;
    let mut a = Host::new("esc-1", true);
    let mut b = Host::new("esc-2", false);

    // esc-1, a fresh initial primary, asks the witness for epoch 1.
    let out = a.report(w, T, view(false, 0, false));
    assert!(promoted(&out, 1), "{out:?}");
    assert_eq!(a.auth.role(), Role::Primary);
    // Its core leads, without a follower yet: it has the standby marked
    // outdated, then lets its core commit alone.
    let out = a.report(w, T + 10, view(true, 1, false));
    assert!(w.state().outdated);
    assert!(a.view.commit_alone, "{out:?}");
    a.act(w, T + 20, vrrp(VrrpState::Master, 0));
    // esc-2 starts as a standby and follows it, in sync: esc-1 stops
    // committing alone and has the mark cleared (esc-2 may take over).
    b.report(w, T + 30, view(false, 0, false));
    b.act(w, T + 31, vrrp(VrrpState::Backup, 1));
    b.report(w, T + 40, view(false, 1, true));
    a.report(w, T + 40, view(true, 1, true));
    assert!(!w.state().outdated && !a.view.commit_alone);
    assert_eq!(b.auth.role(), Role::Standby);
    // The lease is renewed while nothing happens.
    let out = a.act(w, T + 150, Input::Tick);
    assert!(
        out.contains(&Output::ToWitness(WitnessRequest::Renew { epoch: 1 })),
        "{out:?}"
    );

    // The operator switches over: drained, so the lease goes, then the
    // Handover, then the answer.
    let out = a.act(w, T + 200, Input::Switchover { id: 7 });
    let handover = out.iter().position(|o| *o == Output::Handover);
    let release = out
        .iter()
        .position(|o| *o == Output::ToWitness(WitnessRequest::Release { epoch: 1 }));
    assert!(release < handover && handover.is_some(), "{out:?}");
    assert_eq!(a.auth.role(), Role::Standby);
    a.report(w, T + 205, view(false, 1, false));

    // esc-2's core got the Handover holding everything: it asks for the
    // next epoch at once, and takes the role with it.
    let handed = ReplView {
        linked: false,
        peer_closed: false,
        blocker: None,
        handover: true,
        ..view(false, 1, false)
    };
    let out = b.report(w, T + 205, handed);
    assert!(promoted(&out, 2), "{out:?}");
    assert_eq!(b.auth.role(), Role::Primary);
    b.report(w, T + 210, view(true, 2, false));
    b.act(w, T + 220, vrrp(VrrpState::Master, 1));
    // esc-1 follows esc-2 and hears it advertise: the VIP goes.
    b.report(w, T + 230, view(true, 2, true));
    a.report(w, T + 230, view(false, 2, true));
    let out = a.act(w, T + 240, vrrp(VrrpState::Backup, 1));
    assert!(out.contains(&Output::Vip(false)), "{out:?}");
    assert!(!w.state().outdated);

    let text = |r: Node| String::from_utf8(r.finish().unwrap().unwrap()).unwrap();
    let witness = String::from_utf8(w.sink().unwrap().clone()).unwrap();
    (text(a.auth), text(b.auth), witness)
}

#[test]
#[ignore = "writes tests/traces/switchover-*.jsonl; run after a deliberate change of outputs"]
fn regenerate() {
    let (a, b, w) = switchover();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/traces");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/switchover-esc-1.jsonl"), a).unwrap();
    std::fs::write(format!("{dir}/switchover-esc-2.jsonl"), b).unwrap();
    std::fs::write(format!("{dir}/switchover-witness.jsonl"), w).unwrap();
}

// Input: the three committed traces of the switchover.
// Expected: every step gives exactly its recorded outputs.
#[test]
fn committed_traces_replay_to_their_recorded_outputs() {
    let steps = |t: &str| t.lines().count() - 1;
    assert_eq!(replay(OLD_PRIMARY), Ok(steps(OLD_PRIMARY)));
    assert_eq!(replay(NEW_PRIMARY), Ok(steps(NEW_PRIMARY)));
    assert_eq!(replay(WITNESS), Ok(steps(WITNESS)));
    assert!(steps(OLD_PRIMARY) > 5 && steps(WITNESS) > 3);
}

// Input: the scenario, recorded now. Expected: byte for byte the committed
// traces (else the cores' outputs changed: regenerate and review).
#[test]
fn the_recorder_writes_the_committed_traces() {
    let (a, b, w) = switchover();
    assert_eq!(a, OLD_PRIMARY, "regenerate: see the module doc");
    assert_eq!(b, NEW_PRIMARY, "regenerate: see the module doc");
    assert_eq!(w, WITNESS, "regenerate: see the module doc");
}

/// The trace with line `line` (1-based) changed by `edit`.
fn tampered(trace: &str, line: usize, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut lines: Vec<String> = trace.lines().map(str::to_string).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[line - 1]).unwrap();
    edit(&mut v);
    lines[line - 1] = v.to_string();
    lines.join("\n")
}

/// The first line (1-based) whose input mentions `input`.
fn line_of(trace: &str, input: &str) -> usize {
    trace
        .lines()
        .position(|l| l.starts_with("{\"now_ms\"") && l.contains(input))
        .unwrap()
        + 1
}

// Input: esc-1's trace with the Handover of the switchover recorded as a
// Demote. Expected: a mismatch at exactly that line and output.
#[test]
fn a_changed_output_is_reported_at_its_step() {
    let line = line_of(OLD_PRIMARY, "\"Switchover\"");
    let mut index = 0;
    let bad = tampered(OLD_PRIMARY, line, |v| {
        let outs = v["outputs"].as_array_mut().unwrap();
        index = outs.iter().position(|o| o == "Handover").unwrap();
        outs[index] = serde_json::json!({"Demote": {"reason": "tampered"}});
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
            assert!(recorded.contains("tampered"), "{recorded}");
            assert_eq!(replayed, "\"Handover\"");
        }
        other => panic!("expected a mismatch at line {line}: {other:?}"),
    }
}

// Input: the witness's trace with the grant to esc-2 recorded as a denial.
// Expected: a mismatch at the line of that request.
#[test]
fn a_changed_witness_reply_is_reported_at_its_step() {
    let line = line_of(WITNESS, "\"esc-2\"");
    let bad = tampered(WITNESS, line, |v| {
        v["outputs"][0]["reply"] = serde_json::json!({"Denied": {"reason": "tampered"}});
    });
    let err = replay(&bad).unwrap_err();
    assert!(
        matches!(&err, Mismatch::Outputs { line: l, index: 0, replayed, .. }
            if *l == line && replayed.contains("Granted")),
        "{err}"
    );
}

// Input: esc-2's trace with two-node mode in its header, and one with an
// unknown field there. Expected: the first core decides otherwise (no
// witness to ask) and the replay says so; the second is refused: a header
// is the exact construction, not a hint.
#[test]
fn the_header_is_the_exact_construction() {
    let two_node = tampered(NEW_PRIMARY, 1, |v| {
        v["init"]["witness"] = false.into();
    });
    assert!(matches!(
        replay(&two_node),
        Err(Mismatch::Outputs { line, .. }) if line > 1
    ));
    let unknown = tampered(NEW_PRIMARY, 1, |v| {
        v["init"]["lease_ms"] = 1.into();
    });
    assert!(matches!(
        replay(&unknown),
        Err(Mismatch::Malformed { line: 1, .. })
    ));
}

// Input: no lines, a replication core's header, a line that is no call.
// Expected: each is refused, saying why.
#[test]
fn what_is_not_a_trace_of_these_cores_is_refused() {
    assert_eq!(replay("\n\n"), Err(Mismatch::Empty));
    let repl = OLD_PRIMARY.replacen("\"trace\":\"esc-authority\"", "\"trace\":\"esc-repl\"", 1);
    assert!(matches!(
        replay(&repl),
        Err(Mismatch::Foreign { line: 1, found, .. }) if found == "esc-repl"
    ));
    let mut lines: Vec<&str> = WITNESS.lines().collect();
    lines.insert(
        1,
        "{\"now_ms\":1,\"input\":{\"Renew\":{\"epoch\":1}},\"outputs\":[]}",
    );
    assert!(matches!(
        replay(&lines.join("\n")),
        Err(Mismatch::Malformed { line: 2, .. })
    ));
}
