//! The [`StateMachine`] contract as checks any machine can be run through
//! (the storage test suite of openraft is the model: one suite, every
//! implementation). Each check panics with what broke.

use crate::{MemState, StateMachine, StateRead};

/// Applies `payloads` from index 1 on a fresh [`MemState`]; the outcomes and
/// the final state.
pub fn run<M: StateMachine>(machine: &M, payloads: &[Vec<u8>]) -> (Vec<M::Outcome>, MemState) {
    let mut state = MemState::default();
    let outcomes = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            machine
                .apply(i as u64 + 1, p, &mut state)
                .unwrap_or_else(|e| panic!("entry {} does not apply: {e}", i + 1))
        })
        .collect();
    (outcomes, state)
}

/// Determinism: two machines applying the same log reach the same state and
/// the same outcomes (compared through `Debug`, which every outcome has).
pub fn deterministic<M: StateMachine>(make: impl Fn() -> M, payloads: &[Vec<u8>]) {
    let (o1, s1) = run(&make(), payloads);
    let (o2, s2) = run(&make(), payloads);
    assert_eq!(s1, s2, "the same log gave two states");
    assert_eq!(
        format!("{o1:?}"),
        format!("{o2:?}"),
        "the same log gave two answers"
    );
}

/// Snapshot = the map: a state copied at every point of the log answers the
/// rest of the log exactly as the state that applied it all.
pub fn snapshot_is_the_state<M: StateMachine>(machine: &M, payloads: &[Vec<u8>]) {
    let (all, end) = run(machine, payloads);
    for cut in 0..=payloads.len() {
        let (_, at_cut) = run(machine, &payloads[..cut]);
        // The copy goes through every key, as a snapshot stream does.
        let mut copy = MemState::default();
        at_cut
            .scan("", None, usize::MAX, &mut |k, v| {
                copy.0.insert(k.to_string(), v.to_vec());
                true
            })
            .expect("scan of a MemState");
        let mut rest = Vec::new();
        for (i, p) in payloads.iter().enumerate().skip(cut) {
            rest.push(
                machine
                    .apply(i as u64 + 1, p, &mut copy)
                    .unwrap_or_else(|e| panic!("entry {} after a snapshot at {cut}: {e}", i + 1)),
            );
        }
        assert_eq!(copy, end, "state after a snapshot at {cut} differs");
        assert_eq!(
            format!("{rest:?}"),
            format!("{:?}", &all[cut..]),
            "answers after a snapshot at {cut} differ"
        );
    }
}

/// A payload the machine cannot decode is an error, never a panic, and
/// leaves the state as it was.
pub fn refuses_garbage<M: StateMachine>(machine: &M, garbage: &[&[u8]]) {
    for g in garbage {
        let mut state = MemState::default();
        assert!(
            machine.apply(1, g, &mut state).is_err(),
            "garbage {g:?} applied"
        );
        assert_eq!(
            state,
            MemState::default(),
            "garbage {g:?} changed the state"
        );
    }
}
