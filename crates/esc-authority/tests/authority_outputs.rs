//! Exact-output tests of the role authority (architecture sections 2 and 4).

use esc_authority::authority::{
    Config, Input, Output, ReplView, Role, StateWord, VrrpState, VrrpView, PRIMARY_PRIORITY,
    VIP_HOLD_MS,
};
use esc_authority::{Authority, WitnessReply, WitnessRequest};

fn cfg(witness: bool) -> Config {
    Config {
        witness,
        vrrp: true,
        auto_takeover: true,
        priority: 100,
        renew_interval_ms: 100,
        witness_retry_ms: 100,
        switchover_timeout_ms: 2_000,
        contest_grace_ms: 1_000,
        initial_primary: false,
    }
}

fn standby_view() -> ReplView {
    ReplView {
        primary: false,
        epoch: 3,
        last_epoch: 3,
        last_index: 10,
        linked: true,
        peer_closed: false,
        in_sync: true,
        blocker: Some("the primary is still connected".into()),
        drained: false,
        commit_alone: false,
        commit_alone_seq: 0,
        promotions_refused: 0,
        handover: false,
    }
}

fn vrrp(state: VrrpState) -> Input {
    Input::Vrrp(VrrpView {
        state,
        master_priority: None,
        primary_adverts: 0,
    })
}

fn started(witness: bool) -> Authority {
    let mut a = Authority::new(cfg(witness));
    let out = a.handle(0, Input::Repl(standby_view()));
    assert_eq!(a.role(), Role::Standby);
    assert!(
        out.contains(&Output::StateFile(StateWord::Backup)),
        "{out:?}"
    );
    assert!(out.contains(&Output::VrrpContend(true)), "{out:?}");
    a
}

#[test]
fn two_node_standby_takes_over_only_when_both_detectors_agree() {
    let mut a = started(false);
    // VRRP alone (link still up): no takeover (a VRRP-only partition).
    let out = a.handle(10, vrrp(VrrpState::Master));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Promote { .. })),
        "{out:?}"
    );
    assert_eq!(a.role(), Role::Standby);
    // Link lost while in sync: promote, VIP, state file, priority.
    let mut lost = standby_view();
    lost.linked = false;
    lost.blocker = None;
    let out = a.handle(20, Input::Repl(lost));
    assert_eq!(a.role(), Role::Primary);
    assert!(
        matches!(&out[0], Output::Promote { epoch: None, .. }),
        "{out:?}"
    );
    assert!(matches!(
        &out[1],
        Output::Transition {
            from: Role::Standby,
            to: Role::Primary,
            ..
        }
    ));
    assert_eq!(out[2], Output::StateFile(StateWord::Master));
    assert_eq!(out[3], Output::VrrpPriority(PRIMARY_PRIORITY));
    assert_eq!(out[4], Output::VrrpPreempt(true));
    assert_eq!(out[5], Output::Vip(true));
    assert_eq!(out.len(), 6);
}

#[test]
fn two_node_outdated_standby_does_not_contend_or_promote() {
    let mut a = started(false);
    let mut behind = standby_view();
    behind.linked = false;
    behind.in_sync = false;
    behind.blocker = Some("this node was behind the primary".into());
    let out = a.handle(10, Input::Repl(behind));
    assert_eq!(out, vec![Output::VrrpContend(false)]);
    let out = a.handle(20, vrrp(VrrpState::Master));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(a.role(), Role::Standby);
}

#[test]
fn witness_mode_promotes_only_with_a_grant_in_its_epoch() {
    let mut a = started(true);
    let mut lost = standby_view();
    lost.linked = false;
    a.handle(10, Input::Repl(lost.clone()));
    let out = a.handle(20, vrrp(VrrpState::Master));
    let req = WitnessRequest::Promote {
        epoch: 3,
        last_epoch: 3,
        last_index: 10,
        force: false,
    };
    assert_eq!(out, vec![Output::ToWitness(req.clone())]);
    // Not repeated before the retry interval.
    assert!(a.handle(50, Input::Tick).is_empty());
    let out = a.handle(
        60,
        Input::Witness {
            request: req.clone(),
            reply: WitnessReply::Denied {
                reason: "the primary's lease is valid".into(),
            },
            sent_at_ms: 20,
        },
    );
    assert!(out.is_empty(), "{out:?}");
    let out = a.handle(130, Input::Tick);
    assert_eq!(out, vec![Output::ToWitness(req.clone())]);
    let out = a.handle(
        140,
        Input::Witness {
            request: req,
            reply: WitnessReply::Granted {
                epoch: 4,
                lease_ms: 1_000,
            },
            sent_at_ms: 130,
        },
    );
    assert!(
        matches!(&out[0], Output::Promote { epoch: Some(4), .. }),
        "{out:?}"
    );
    assert_eq!(a.role(), Role::Primary);
    assert!(out.contains(&Output::Vip(true)));
}

fn witness_primary() -> Authority {
    let mut a = Authority::new(Config {
        initial_primary: true,
        ..cfg(true)
    });
    let fresh = ReplView {
        epoch: 0,
        last_epoch: 0,
        last_index: 0,
        linked: false,
        peer_closed: false,
        in_sync: false,
        blocker: None,
        ..standby_view()
    };
    let out = a.handle(0, Input::Repl(fresh.clone()));
    let req = WitnessRequest::Promote {
        epoch: 0,
        last_epoch: 0,
        last_index: 0,
        force: false,
    };
    assert!(out.contains(&Output::ToWitness(req.clone())), "{out:?}");
    a.handle(
        5,
        Input::Witness {
            request: req,
            reply: WitnessReply::Granted {
                epoch: 1,
                lease_ms: 1_000,
            },
            sent_at_ms: 0,
        },
    );
    assert_eq!(a.role(), Role::Primary);
    a
}

fn primary_view(in_sync: bool, commit_alone: bool) -> ReplView {
    primary_view_seq(in_sync, commit_alone, 0)
}

fn primary_view_seq(in_sync: bool, commit_alone: bool, commit_alone_seq: u64) -> ReplView {
    ReplView {
        primary: true,
        epoch: 1,
        last_epoch: 1,
        last_index: 0,
        linked: in_sync,
        peer_closed: false,
        in_sync,
        blocker: None,
        drained: in_sync,
        commit_alone,
        commit_alone_seq,
        promotions_refused: 0,
        handover: false,
    }
}

#[test]
fn witness_primary_commits_alone_only_after_the_mark_and_clears_it_after_stopping() {
    let mut a = witness_primary();
    let out = a.handle(10, Input::Repl(primary_view(false, false)));
    assert_eq!(
        out,
        vec![
            Output::ToWitness(WitnessRequest::Renew { epoch: 1 }),
            Output::ToWitness(WitnessRequest::MarkOutdated { epoch: 1 }),
            Output::Admission(true),
        ]
    );
    let out = a.handle(
        20,
        Input::Witness {
            request: WitnessRequest::MarkOutdated { epoch: 1 },
            reply: WitnessReply::Marked { epoch: 1 },
            sent_at_ms: 10,
        },
    );
    assert_eq!(out, vec![Output::CommitAlone { on: true, seq: 1 }]);
    // Said once, not again while the core has not confirmed it.
    assert!(a.handle(25, Input::Tick).is_empty());
    // The standby is back in sync: first stop committing alone ...
    let out = a.handle(30, Input::Repl(primary_view_seq(true, true, 1)));
    assert_eq!(out, vec![Output::CommitAlone { on: false, seq: 2 }]);
    // ... a view from before the core carried that out clears nothing ...
    let out = a.handle(35, Input::Repl(primary_view_seq(true, false, 1)));
    assert!(out.is_empty(), "{out:?}");
    // ... and only once the core confirms it, clear the mark.
    let out = a.handle(40, Input::Repl(primary_view_seq(true, false, 2)));
    assert_eq!(
        out,
        vec![Output::ToWitness(WitnessRequest::ClearOutdated {
            epoch: 1
        })]
    );
    // A `Marked` answering a request sent before that clear is stale.
    let out = a.handle(
        45,
        Input::Witness {
            request: WitnessRequest::MarkOutdated { epoch: 1 },
            reply: WitnessReply::Marked { epoch: 1 },
            sent_at_ms: 10,
        },
    );
    assert!(out.is_empty(), "{out:?}");
    // Out of sync again: a fresh mark, after the retry interval.
    assert!(a
        .handle(50, Input::Repl(primary_view_seq(false, false, 2)))
        .is_empty());
    let out = a.handle(140, Input::Tick);
    assert_eq!(
        out,
        vec![
            Output::ToWitness(WitnessRequest::Renew { epoch: 1 }),
            Output::ToWitness(WitnessRequest::MarkOutdated { epoch: 1 })
        ]
    );
}

#[test]
fn witness_primary_without_lease_or_standby_steps_down_and_drops_the_vip() {
    let mut a = witness_primary();
    a.handle(10, Input::Repl(primary_view(false, false)));
    // Lease from the grant: sent at 0, 1000 ms. No renew answered.
    let out = a.handle(1_000, Input::Tick);
    assert!(
        out.contains(&Output::Demote {
            reason: "lease at the witness ran out and no standby is in sync: stepping down".into()
        }),
        "{out:?}"
    );
    assert!(out.contains(&Output::Vip(false)));
    assert!(out.contains(&Output::Admission(false)));
    assert_eq!(a.role(), Role::Standby);
}

#[test]
fn fault_hands_over_primary_and_recovers_as_standby() {
    let mut a = witness_primary();
    a.handle(10, Input::Repl(primary_view(true, false)));
    let out = a.handle(20, Input::Health(Err("store: disk full".into())));
    assert_eq!(a.role(), Role::Fault);
    let pos = |o: &Output| out.iter().position(|x| x == o).unwrap();
    // Release the lease and stop writing before anything else.
    assert!(
        pos(&Output::ToWitness(WitnessRequest::Release { epoch: 1 }))
            < pos(&Output::StateFile(StateWord::Fault))
    );
    assert!(pos(&Output::Vip(false)) < pos(&Output::VrrpContend(false)));
    assert!(out.contains(&Output::Admission(false)));
    let out = a.handle(30, Input::Repl(standby_view()));
    assert!(out.is_empty(), "{out:?}");
    let out = a.handle(40, Input::Health(Ok(())));
    assert_eq!(a.role(), Role::Standby);
    assert!(out.contains(&Output::StateFile(StateWord::Backup)));
    assert!(out.contains(&Output::VrrpContend(true)));
}

#[test]
fn switchover_drains_then_hands_over_and_answers() {
    let mut a = witness_primary();
    let mut v = primary_view(true, false);
    v.drained = false;
    a.handle(10, Input::Repl(v.clone()));
    let out = a.handle(20, Input::Switchover { id: 7 });
    assert_eq!(out, vec![Output::Admission(false)]);
    v.drained = true;
    let out = a.handle(30, Input::Repl(v));
    // The lease goes before the Handover, so the standby's grant request
    // (sent when the Handover reaches it) finds it released.
    assert_eq!(
        out[0],
        Output::ToWitness(WitnessRequest::Release { epoch: 1 })
    );
    assert_eq!(out[1], Output::Handover);
    assert!(matches!(
        &out[2],
        Output::Reply {
            id: 7,
            result: Ok(_)
        }
    ));
    let releases = out
        .iter()
        .filter(|o| matches!(o, Output::ToWitness(WitnessRequest::Release { .. })))
        .count();
    assert_eq!(releases, 1, "released once: {out:?}");
    assert_eq!(a.role(), Role::Standby);
    // The VIP stays (writes get 503) until the new primary advertises, but
    // this node announces it no more: a gratuitous ARP repeat of its own
    // term would take clients back from the new primary ...
    assert!(!out.contains(&Output::Vip(false)), "{out:?}");
    assert!(out.contains(&Output::VipQuiet), "{out:?}");
    assert!(out.contains(&Output::Admission(false)) || !a.admits_writes());
    let out = a.handle(
        80,
        Input::Vrrp(VrrpView {
            state: VrrpState::Backup,
            master_priority: Some(PRIMARY_PRIORITY),
            primary_adverts: 1,
        }),
    );
    // ... then it goes at once.
    assert!(out.contains(&Output::Vip(false)), "{out:?}");
}

#[test]
fn a_handing_over_primary_drops_the_vip_after_the_hold_at_the_latest() {
    let mut a = witness_primary();
    a.handle(10, Input::Repl(primary_view(true, false)));
    // Drained already: the handover happens at once, at 20.
    let out = a.handle(20, Input::Switchover { id: 1 });
    assert!(out.contains(&Output::Handover), "{out:?}");
    assert!(!out.contains(&Output::Vip(false)), "{out:?}");
    let out = a.handle(20 + VIP_HOLD_MS - 1, Input::Tick);
    assert!(!out.contains(&Output::Vip(false)), "{out:?}");
    let out = a.handle(20 + VIP_HOLD_MS, Input::Tick);
    assert!(out.contains(&Output::Vip(false)), "{out:?}");
}

#[test]
fn switchover_without_an_in_sync_standby_is_refused() {
    let mut a = witness_primary();
    a.handle(10, Input::Repl(primary_view(false, false)));
    let out = a.handle(20, Input::Switchover { id: 1 });
    assert!(
        matches!(
            &out[0],
            Output::Reply {
                id: 1,
                result: Err(_)
            }
        ),
        "{out:?}"
    );
    assert_eq!(a.role(), Role::Primary);
}

#[test]
fn a_grant_arriving_after_its_lease_ran_out_is_void() {
    let mut a = started(true);
    let mut lost = standby_view();
    lost.linked = false;
    a.handle(10, Input::Repl(lost));
    a.handle(20, vrrp(VrrpState::Master));
    // The answer took longer than the lease: the witness may have granted
    // the other node since (architecture section 4).
    let out = a.handle(
        1_500,
        Input::Witness {
            request: WitnessRequest::Promote {
                epoch: 3,
                last_epoch: 3,
                last_index: 10,
                force: false,
            },
            reply: WitnessReply::Granted {
                epoch: 4,
                lease_ms: 1_000,
            },
            sent_at_ms: 20,
        },
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Promote { .. })),
        "{out:?}"
    );
    assert_eq!(a.role(), Role::Standby);
}

#[test]
fn a_primary_that_does_not_hear_the_witness_asks_for_no_mark() {
    // One-way partition: the witness hears this primary, it hears nothing
    // back. A mark it asked for would bar the standby from every grant
    // while it cannot commit alone anyway (it would never learn of it).
    let renewing = || {
        let mut a = witness_primary(); // the grant's answer arrived at 5
        let out = a.handle(150, Input::Repl(primary_view(true, false)));
        assert!(
            out.contains(&Output::ToWitness(WitnessRequest::Renew { epoch: 1 })),
            "{out:?}"
        );
        a.handle(250, Input::Tick); // renewals unanswered
        a
    };
    let mut a = renewing();
    // Up to three renew intervals (300 ms) after the last answer arrived,
    // a lost standby is marked outdated ...
    let mut b = renewing();
    let out = b.handle(304, Input::Repl(primary_view(false, false)));
    assert!(
        out.contains(&Output::ToWitness(WitnessRequest::MarkOutdated {
            epoch: 1
        })),
        "{out:?}"
    );
    // ... from then on, no mark is asked for.
    let out = a.handle(305, Input::Repl(primary_view(false, false)));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::ToWitness(WitnessRequest::MarkOutdated { .. }))),
        "{out:?}"
    );
    // A slow answer (to the renewal of 150, 310 ms on its way) still means
    // the witness hears this node and it hears the witness: mark now.
    let out = a.handle(
        460,
        Input::Witness {
            request: WitnessRequest::Renew { epoch: 1 },
            reply: WitnessReply::LeaseOk {
                epoch: 1,
                lease_ms: 1_000,
            },
            sent_at_ms: 150,
        },
    );
    assert!(
        out.contains(&Output::ToWitness(WitnessRequest::MarkOutdated {
            epoch: 1
        })),
        "{out:?}"
    );
}

/// A node that handed over does not take the role back on its own while
/// the switchover completes; but once it follows the new primary (linked,
/// in a newer epoch) the switchover is over, and losing that primary is an
/// ordinary takeover, not one held back for `switchover_timeout_ms`
/// (found by the lab's chaos runs: a power failure a second after a
/// switchover went unanswered until the dead node came back).
#[test]
fn a_node_that_handed_over_takes_over_as_usual_once_it_followed_the_new_primary() {
    let grant_requested = |out: &[Output]| {
        out.iter()
            .any(|o| matches!(o, Output::ToWitness(WitnessRequest::Promote { .. })))
    };
    for followed in [false, true] {
        let mut a = witness_primary();
        a.handle(10, Input::Repl(primary_view(true, false)));
        let out = a.handle(20, Input::Switchover { id: 1 });
        assert!(out.contains(&Output::Handover), "{out:?}");
        assert_eq!(a.role(), Role::Standby);
        let mut v = standby_view();
        // Following the new primary in epoch 2, or still in epoch 1.
        v.epoch = if followed { 2 } else { 1 };
        a.handle(100, Input::Repl(v.clone()));
        // That primary dies at 300 (well within the 2 s switchover timeout):
        // the link goes, VRRP says master.
        v.linked = false;
        v.blocker = None;
        a.handle(300, Input::Repl(v));
        let out = a.handle(310, vrrp(VrrpState::Master));
        assert_eq!(
            grant_requested(&out),
            followed,
            "followed the new primary: {followed}: {out:?}"
        );
    }
}

// A standby handed the role asks the witness again within
// HANDOVER_GRANT_RETRY_MS of a refusal (the old primary's release may land
// just after its first request), not after witness_retry_ms.
#[test]
fn a_standby_handed_the_role_retries_a_refused_grant_soon() {
    use esc_authority::authority::HANDOVER_GRANT_RETRY_MS;
    let mut a = started(true);
    let handed = ReplView {
        linked: false,
        peer_closed: false,
        blocker: None,
        handover: true,
        ..standby_view()
    };
    let out = a.handle(10, Input::Repl(handed));
    let req = WitnessRequest::Promote {
        epoch: 3,
        last_epoch: 3,
        last_index: 10,
        force: false,
    };
    assert!(out.contains(&Output::ToWitness(req.clone())), "{out:?}");
    let out = a.handle(
        11,
        Input::Witness {
            request: req.clone(),
            reply: WitnessReply::Denied {
                reason: "the lease is held".into(),
            },
            sent_at_ms: 10,
        },
    );
    assert!(!out.contains(&Output::ToWitness(req.clone())), "{out:?}");
    let out = a.handle(10 + HANDOVER_GRANT_RETRY_MS, Input::Tick);
    assert!(out.contains(&Output::ToWitness(req)), "{out:?}");
    assert!(HANDOVER_GRANT_RETRY_MS < cfg(true).witness_retry_ms);
}

#[test]
fn a_link_the_primary_closed_asks_the_witness_at_once_in_witness_mode_only() {
    use esc_authority::authority::{GONE_FAST_MS, GONE_GRANT_RETRY_MS};
    let closed = ReplView {
        linked: false,
        peer_closed: true,
        blocker: None,
        ..standby_view()
    };
    let req = WitnessRequest::Promote {
        epoch: 3,
        last_epoch: 3,
        last_index: 10,
        force: false,
    };
    let denied = |at| Input::Witness {
        request: req.clone(),
        reply: WitnessReply::Denied {
            reason: "the primary's lease is valid for 3 ms more".into(),
        },
        sent_at_ms: at,
    };
    // Witness mode, VRRP still Backup (no Master_Down_Interval has passed).
    let mut a = started(true);
    a.handle(5, vrrp(VrrpState::Backup));
    let out = a.handle(10, Input::Repl(closed.clone()));
    assert_eq!(out, vec![Output::ToWitness(req.clone())]);
    // Refused (the witness had not yet seen the primary's connection close):
    // asked again soon while the close is fresh.
    assert!(a.handle(11, denied(10)).is_empty());
    let out = a.handle(10 + GONE_GRANT_RETRY_MS, Input::Tick);
    assert_eq!(out, vec![Output::ToWitness(req.clone())]);
    let mut sent = 10 + GONE_GRANT_RETRY_MS;
    let fast_until = 10 + GONE_FAST_MS;
    while sent + GONE_GRANT_RETRY_MS < fast_until {
        assert!(a.handle(sent + 1, denied(sent)).is_empty());
        sent += GONE_GRANT_RETRY_MS;
        let out = a.handle(sent, Input::Tick);
        assert_eq!(out, vec![Output::ToWitness(req.clone())], "at {sent}");
    }
    // Past the fast window, at the ordinary retry interval only.
    a.handle(sent + 1, denied(sent));
    let out = a.handle(fast_until + GONE_GRANT_RETRY_MS, Input::Tick);
    assert!(out.is_empty(), "{out:?}");
    let out = a.handle(sent + cfg(true).witness_retry_ms, Input::Tick);
    assert_eq!(out, vec![Output::ToWitness(req.clone())]);
    // A link that only timed out (a partition, a powered-off host) waits
    // for VRRP as before.
    let mut b = started(true);
    b.handle(5, vrrp(VrrpState::Backup));
    let timed_out = ReplView {
        peer_closed: false,
        ..closed.clone()
    };
    assert!(b.handle(10, Input::Repl(timed_out)).is_empty());
    // Two-node mode never promotes on a close alone: nothing arbitrates.
    let mut c = started(false);
    c.handle(5, vrrp(VrrpState::Backup));
    let out = c.handle(10, Input::Repl(closed));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Promote { .. })),
        "{out:?}"
    );
    assert_eq!(c.role(), Role::Standby);
}

#[test]
fn a_linked_standby_asks_the_witness_once_the_primary_advertises_a_standby_priority() {
    let req = WitnessRequest::Promote {
        epoch: 3,
        last_epoch: 3,
        last_index: 10,
        force: false,
    };
    let heard = |priority| {
        Input::Vrrp(VrrpView {
            state: VrrpState::Backup,
            master_priority: Some(priority),
            primary_adverts: 0,
        })
    };
    // The primary advertises as primary: nothing to ask, link up or not.
    let mut a = started(true);
    assert!(a.handle(10, heard(PRIMARY_PRIORITY)).is_empty());
    // It stepped down (a one-way partition into it: its heartbeats still
    // arrive, so the link still looks alive): ask the witness now.
    let out = a.handle(20, heard(100));
    assert_eq!(out, vec![Output::ToWitness(req.clone())]);
    // Two-node mode waits for the link to go as well.
    let mut b = started(false);
    b.handle(10, heard(PRIMARY_PRIORITY));
    let out = b.handle(20, heard(100));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Promote { .. } | Output::ToWitness(_))),
        "{out:?}"
    );
}
