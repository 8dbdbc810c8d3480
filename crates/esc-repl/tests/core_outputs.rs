//! Exact-output tests of the replication core: one input, the exact outputs
//! (style principle 2). Each names the architecture section it checks.

use esc_repl::{Config, Core, Input, LogView, Mode, Output, Refusal, Role};
use esc_wire::{Entry, Message};

fn cfg(mode: Mode) -> Config {
    Config {
        mode,
        async_lag_entries_max: 2,
        heartbeat_interval_ms: 100,
        peer_timeout_ms: 1_000,
        batch_entries_max: 16,
        group_commit_entries_max: 8,
        snapshot_every_entries: 1_000,
        log_retain_entries: 100,
    }
}

fn log_of(entries: &[(u64, u64)]) -> LogView {
    // (epoch, index) pairs, contiguous from 1.
    let mut l = LogView::default();
    for &(e, i) in entries {
        l.append(e, i, i);
    }
    l
}

/// A primary in epoch 1 with an empty log, promotion already durable.
fn primary(mode: Mode) -> Core {
    let mut c = Core::new(cfg(mode), Role::Standby, 0, LogView::default(), 0);
    c.handle(
        0,
        Input::Promote {
            reason: "test".into(),
        },
    );
    c.handle(0, Input::Persisted { last_index: 0 });
    c
}

/// Connects follower `conn` whose log matches ours, so it is in sync.
fn with_follower(c: &mut Core, conn: u64) {
    c.handle(0, Input::PeerUp { conn });
    let last = c.log().last_index;
    let last_epoch = c.log().last_epoch;
    c.handle(
        0,
        Input::Received {
            conn,
            msg: Message::Status {
                epoch: c.epoch(),
                last_index: last,
                last_epoch,
                applied_index: last,
            },
        },
    );
}

// Section 3: promotion bumps the durable epoch before anything is written.
#[test]
fn promotion_persists_the_next_epoch_first() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 4, log_of(&[(4, 1)]), 1);
    let out = c.handle(
        0,
        Input::Promote {
            reason: "operator".into(),
        },
    );
    assert_eq!(
        out,
        vec![
            Output::Persist {
                truncate_after: None,
                entries: vec![],
                epoch: Some(5),
            },
            Output::RoleChanged {
                role: Role::Primary,
                epoch: 5,
                reason: "operator".into(),
            },
        ]
    );
    // A write proposed before the epoch is durable waits for it.
    let out = c.handle(
        0,
        Input::Propose {
            token: 1,
            payload: b"a".to_vec(),
        },
    );
    assert_eq!(out, vec![]);
    let out = c.handle(0, Input::Persisted { last_index: 1 });
    assert_eq!(
        out,
        vec![Output::Persist {
            truncate_after: None,
            entries: vec![Entry::new(5, 2, b"a".to_vec())],
            epoch: None,
        }]
    );
}

// Section 3, group commit: writes queued during an fsync share the next one.
#[test]
fn writes_during_an_fsync_share_the_next_one() {
    let mut c = primary(Mode::Sync);
    let out = c.handle(
        1,
        Input::Propose {
            token: 1,
            payload: b"a".to_vec(),
        },
    );
    assert_eq!(
        out,
        vec![Output::Persist {
            truncate_after: None,
            entries: vec![Entry::new(1, 1, b"a".to_vec())],
            epoch: None,
        }]
    );
    assert_eq!(
        c.handle(
            1,
            Input::Propose {
                token: 2,
                payload: b"b".to_vec()
            }
        ),
        vec![]
    );
    assert_eq!(
        c.handle(
            1,
            Input::Propose {
                token: 3,
                payload: b"c".to_vec()
            }
        ),
        vec![]
    );
    // No follower: the primary commits alone once durable, and flushes the group.
    let out = c.handle(2, Input::Persisted { last_index: 1 });
    assert_eq!(
        out,
        vec![
            Output::Apply {
                up_to: 1,
                replies: vec![(1, 1)]
            },
            Output::Persist {
                truncate_after: None,
                entries: vec![
                    Entry::new(1, 2, b"b".to_vec()),
                    Entry::new(1, 3, b"c".to_vec())
                ],
                epoch: None,
            },
        ]
    );
}

// Section 3, sync mode: acknowledged only once durable on BOTH nodes.
#[test]
fn sync_commit_waits_for_the_in_sync_follower() {
    let mut c = primary(Mode::Sync);
    with_follower(&mut c, 7);
    let out = c.handle(
        1,
        Input::Propose {
            token: 1,
            payload: b"a".to_vec(),
        },
    );
    let e = Entry::new(1, 1, b"a".to_vec());
    assert_eq!(
        out,
        vec![
            Output::Send {
                conn: 7,
                msg: Message::Append {
                    epoch: 1,
                    prev_index: 0,
                    prev_epoch: 0,
                    commit_index: 0,
                    entries: vec![e.clone()],
                },
            },
            Output::Persist {
                truncate_after: None,
                entries: vec![e],
                epoch: None
            },
        ]
    );
    // Durable here only: no commit yet.
    assert_eq!(c.handle(2, Input::Persisted { last_index: 1 }), vec![]);
    let ack = Message::AppendOk {
        epoch: 1,
        match_index: 1,
    };
    let out = c.handle(3, Input::Received { conn: 7, msg: ack });
    assert_eq!(
        out,
        vec![Output::Apply {
            up_to: 1,
            replies: vec![(1, 1)]
        }]
    );
}

// Section 3, async mode: commit locally, but never more than the lag bound ahead.
#[test]
fn async_commit_is_bounded_by_the_lag() {
    let mut c = primary(Mode::Async);
    with_follower(&mut c, 7);
    for t in 1..=4 {
        c.handle(
            1,
            Input::Propose {
                token: t,
                payload: vec![t as u8],
            },
        );
        c.handle(1, Input::Persisted { last_index: t });
    }
    // Lag bound 2: with the follower at 0, entries 1 and 2 commit, 3 and 4 wait.
    assert_eq!(c.commit_index(), 2);
    let out = c.handle(
        2,
        Input::Received {
            conn: 7,
            msg: Message::AppendOk {
                epoch: 1,
                match_index: 2,
            },
        },
    );
    assert_eq!(
        out,
        vec![Output::Apply {
            up_to: 4,
            replies: vec![(3, 3), (4, 4)]
        }]
    );
}

// Section 3: a follower that goes silent is dropped; waiting writes commit alone.
#[test]
fn silent_follower_is_dropped_and_writes_commit_alone() {
    let mut c = primary(Mode::Sync);
    with_follower(&mut c, 7);
    c.handle(
        10,
        Input::Propose {
            token: 1,
            payload: b"a".to_vec(),
        },
    );
    assert_eq!(c.handle(10, Input::Persisted { last_index: 1 }), vec![]);
    let out = c.handle(1_200, Input::Tick);
    assert_eq!(
        out,
        vec![
            Output::Disconnect {
                conn: 7,
                reason: "follower silent for more than 1000 ms".into()
            },
            Output::Apply {
                up_to: 1,
                replies: vec![(1, 1)]
            },
        ]
    );
}

// Section 3: never accept entries from a lower epoch.
#[test]
fn standby_refuses_a_lower_epoch_primary() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 3, log_of(&[(3, 1)]), 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    let msg = Message::Append {
        epoch: 2,
        prev_index: 1,
        prev_epoch: 3,
        commit_index: 1,
        entries: vec![Entry::new(2, 2, b"x".to_vec())],
    };
    let out = c.handle(1, Input::Received { conn: 1, msg });
    assert_eq!(
        out,
        vec![
            Output::Send {
                conn: 1,
                msg: Message::StaleEpoch { epoch: 3 }
            },
            Output::Disconnect {
                conn: 1,
                reason: "peer's epoch 2 is below ours (3)".into()
            },
        ]
    );
    assert_eq!(c.log().last_index, 1, "nothing appended");
}

// Section 3: a primary meeting a higher epoch steps down; in-flight writes are "unknown".
#[test]
fn primary_steps_down_on_a_higher_epoch() {
    let mut c = primary(Mode::Sync);
    with_follower(&mut c, 7);
    c.handle(
        1,
        Input::Propose {
            token: 9,
            payload: b"a".to_vec(),
        },
    );
    let out = c.handle(
        2,
        Input::Received {
            conn: 7,
            msg: Message::StaleEpoch { epoch: 4 },
        },
    );
    assert_eq!(
        out,
        vec![
            Output::Refuse {
                token: 9,
                refusal: Refusal::Unknown
            },
            Output::Disconnect {
                conn: 7,
                reason: "stepping down".into()
            },
            Output::Persist {
                truncate_after: None,
                entries: vec![],
                epoch: Some(4)
            },
            Output::RoleChanged {
                role: Role::Standby,
                epoch: 4,
                reason: "peer has higher epoch 4 (ours 1)".into(),
            },
            Output::Disconnect {
                conn: 7,
                reason: "higher epoch seen; rejoining as standby".into()
            },
        ]
    );
    assert_eq!(c.role(), Role::Standby);
    let out = c.handle(
        3,
        Input::Propose {
            token: 10,
            payload: b"b".to_vec(),
        },
    );
    assert_eq!(
        out,
        vec![Output::Refuse {
            token: 10,
            refusal: Refusal::NotPrimary
        }]
    );
}

// Section 3: a divergent suffix above what was applied is cut (to the
// recovery file, by the runtime) and replaced by the primary's entries.
#[test]
fn follower_cuts_its_divergent_suffix() {
    let mut c = Core::new(
        cfg(Mode::Sync),
        Role::Standby,
        2,
        log_of(&[(1, 1), (1, 2), (1, 3)]),
        1,
    );
    c.handle(0, Input::PeerUp { conn: 1 });
    let new = vec![
        Entry::new(2, 2, b"B".to_vec()),
        Entry::new(2, 3, b"C".to_vec()),
    ];
    let msg = Message::Append {
        epoch: 2,
        prev_index: 1,
        prev_epoch: 1,
        commit_index: 1,
        entries: new.clone(),
    };
    let out = c.handle(1, Input::Received { conn: 1, msg });
    assert_eq!(
        out,
        vec![Output::Persist {
            truncate_after: Some(1),
            entries: new,
            epoch: None
        }]
    );
    let out = c.handle(2, Input::Persisted { last_index: 3 });
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendOk {
                epoch: 2,
                match_index: 3
            }
        }]
    );
}

// Section 3: the conflict answer skips a whole epoch; inside applied state
// only a snapshot can repair.
#[test]
fn follower_conflict_answers() {
    let log = log_of(&[(1, 1), (1, 2), (2, 3), (2, 4)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 3, log.clone(), 2);
    c.handle(0, Input::PeerUp { conn: 1 });
    let probe = |prev_index, prev_epoch| Message::Append {
        epoch: 3,
        prev_index,
        prev_epoch,
        commit_index: 0,
        entries: vec![],
    };
    let out = c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: probe(4, 3),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendReject {
                epoch: 3,
                last_index: 4,
                conflict_index: 3
            }
        }]
    );
    let out = c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: probe(9, 3),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendReject {
                epoch: 3,
                last_index: 4,
                conflict_index: 5
            }
        }]
    );
    // Applied through 2: a conflict at 2 needs a snapshot.
    let out = c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: probe(2, 3),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::NeedSnapshot { epoch: 3 }
        }]
    );
}

// Section 3: a follower whose needed entries were compacted gets a snapshot.
#[test]
fn primary_sends_a_snapshot_when_the_log_was_truncated() {
    let mut c = Core::new(
        Config {
            snapshot_every_entries: 4,
            log_retain_entries: 1,
            ..cfg(Mode::Sync)
        },
        Role::Standby,
        0,
        LogView::default(),
        0,
    );
    c.handle(0, Input::Promote { reason: "t".into() });
    c.handle(0, Input::Persisted { last_index: 0 });
    for t in 1..=5 {
        c.handle(
            1,
            Input::Propose {
                token: t,
                payload: vec![t as u8],
            },
        );
        c.handle(1, Input::Persisted { last_index: t });
    }
    assert!(c.log().snapshot_index >= 3, "compacted: {:?}", c.log());
    c.handle(2, Input::PeerUp { conn: 4 });
    let status = Message::Status {
        epoch: 0,
        last_index: 1,
        last_epoch: 1,
        applied_index: 1,
    };
    let out = c.handle(
        2,
        Input::Received {
            conn: 4,
            msg: status,
        },
    );
    assert_eq!(out, vec![Output::SendSnapshot { conn: 4, epoch: 1 }]);
}

// Architecture section 2: a standby promotes only if its copy was in sync
// when it lost the primary; never while the primary is connected.
#[test]
fn promotion_blocker_follows_what_the_standby_held() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log_of(&[(1, 1)]), 1);
    assert!(c
        .promotion_blocker()
        .unwrap()
        .contains("not followed a primary"));
    c.handle(0, Input::PeerUp { conn: 1 });
    assert!(c.promotion_blocker().unwrap().contains("still connected"));
    // The primary says 3 is committed; we hold only 1.
    let msg = Message::Append {
        epoch: 1,
        prev_index: 1,
        prev_epoch: 1,
        commit_index: 3,
        entries: vec![],
    };
    c.handle(1, Input::Received { conn: 1, msg });
    c.handle(2, Input::PeerDown { conn: 1 });
    assert!(c
        .promotion_blocker()
        .unwrap()
        .contains("behind the primary"));
    // Reconnect, receive 2 and 3, durable: in sync when the link drops.
    c.handle(3, Input::PeerUp { conn: 2 });
    let e = vec![
        Entry::new(1, 2, b"b".to_vec()),
        Entry::new(1, 3, b"c".to_vec()),
    ];
    let msg = Message::Append {
        epoch: 1,
        prev_index: 1,
        prev_epoch: 1,
        commit_index: 3,
        entries: e,
    };
    c.handle(4, Input::Received { conn: 2, msg });
    c.handle(5, Input::Persisted { last_index: 3 });
    c.handle(6, Input::PeerDown { conn: 2 });
    assert_eq!(c.promotion_blocker(), None);
}
