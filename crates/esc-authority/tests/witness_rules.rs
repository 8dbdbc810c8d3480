//! The witness's rules (architecture section 4), one request at a time.

use esc_authority::witness::{Reply, Request, Witness, WitnessState};

fn promote(epoch: u64, force: bool) -> Request {
    Request::Promote {
        epoch,
        last_epoch: epoch,
        last_index: 5,
        force,
    }
}

#[test]
fn a_restarted_witness_grants_nothing_for_one_lease_period() {
    let mut w = Witness::new(WitnessState::default(), 1_000, 0);
    let s = w.handle(999, "a", promote(0, false));
    assert!(matches!(s.reply, Reply::Denied { .. }), "{s:?}");
    let s = w.handle(1_000, "a", promote(0, false));
    assert_eq!(
        s.reply,
        Reply::Granted {
            epoch: 1,
            lease_ms: 1_000
        }
    );
    assert!(s.persist);
    assert_eq!(w.state().holder.as_deref(), Some("a"));
}

#[test]
fn an_outdated_standby_is_never_granted_until_cleared() {
    let mut w = Witness::new(WitnessState::default(), 1_000, 0);
    w.handle(1_000, "a", promote(0, false));
    let s = w.handle(1_100, "a", Request::MarkOutdated { epoch: 1 });
    assert_eq!(s.reply, Reply::Marked { epoch: 1 });
    assert!(s.persist);
    // Long after the lease ran out, b is still barred.
    let s = w.handle(60_000, "b", promote(1, false));
    assert!(matches!(s.reply, Reply::Denied { .. }), "{s:?}");
    // Only the holder in its epoch clears it.
    let s = w.handle(60_000, "b", Request::ClearOutdated { epoch: 1 });
    assert!(matches!(s.reply, Reply::Denied { .. }));
    let s = w.handle(60_000, "a", Request::ClearOutdated { epoch: 1 });
    assert_eq!(s.reply, Reply::Cleared { epoch: 1 });
    let s = w.handle(60_000, "b", promote(1, false));
    assert_eq!(
        s.reply,
        Reply::Granted {
            epoch: 2,
            lease_ms: 1_000
        }
    );
    // The old holder can no longer renew, mark or release.
    for r in [
        Request::Renew { epoch: 1 },
        Request::MarkOutdated { epoch: 1 },
        Request::Release { epoch: 1 },
    ] {
        assert!(matches!(
            w.handle(60_001, "a", r).reply,
            Reply::Denied { .. }
        ));
    }
}

#[test]
fn a_valid_lease_blocks_promotion_and_release_unblocks_it() {
    let mut w = Witness::new(WitnessState::default(), 1_000, 0);
    w.handle(1_000, "a", promote(0, false));
    assert_eq!(
        w.handle(1_500, "a", Request::Renew { epoch: 1 }).reply,
        Reply::LeaseOk {
            epoch: 1,
            lease_ms: 1_000
        }
    );
    assert!(matches!(
        w.handle(2_400, "b", promote(1, false)).reply,
        Reply::Denied { .. }
    ));
    assert_eq!(
        w.handle(2_450, "a", Request::Release { epoch: 1 }).reply,
        Reply::Released { epoch: 1 }
    );
    assert_eq!(
        w.handle(2_460, "b", promote(1, false)).reply,
        Reply::Granted {
            epoch: 2,
            lease_ms: 1_000
        }
    );
}

#[test]
fn force_overrides_the_lease_and_the_mark_and_still_bumps_the_epoch() {
    let mut w = Witness::new(WitnessState::default(), 1_000, 0);
    w.handle(1_000, "a", promote(0, false));
    w.handle(1_100, "a", Request::MarkOutdated { epoch: 1 });
    let s = w.handle(1_200, "b", promote(7, true));
    assert_eq!(
        s.reply,
        Reply::Granted {
            epoch: 8,
            lease_ms: 1_000
        }
    );
    assert!(!w.state().outdated);
}
