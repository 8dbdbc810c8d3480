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
        alone_grace_ms: 0,
        in_sync_window_ms: u64::MAX,
        epoch_slot: None,
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
            alone_grace_ms: 0,
            in_sync_window_ms: u64::MAX,
            epoch_slot: None,
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

const BEHIND: &str =
    "this node was behind the primary when the link was lost: it may miss acknowledged writes";

fn heartbeat(epoch: u64, prev_index: u64, prev_epoch: u64, commit_index: u64) -> Message {
    Message::Append {
        epoch,
        prev_index,
        prev_epoch,
        commit_index,
        entries: vec![],
    }
}

// Architecture section 2: a link that carried no `Append` taught the standby
// nothing of the primary's commit, so it never makes it eligible; it keeps
// what the previous loss said (its log did not change), unless a snapshot
// came, which means it was behind.
#[test]
fn a_link_lost_before_any_append_proves_nothing() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log_of(&[(1, 1)]), 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    assert_eq!(c.handle(1, Input::PeerDown { conn: 1 }), vec![]);
    assert!(c
        .promotion_blocker()
        .is_some_and(|b| b.contains("has not followed a primary")));
    // Heard commit 1 and holds it: in sync at this loss.
    c.handle(2, Input::PeerUp { conn: 2 });
    let out = c.handle(
        3,
        Input::Received {
            conn: 2,
            msg: heartbeat(1, 1, 1, 1),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 2,
            msg: Message::AppendOk {
                epoch: 1,
                match_index: 1
            }
        }]
    );
    c.handle(4, Input::PeerDown { conn: 2 });
    assert_eq!(c.promotion_blocker(), None);
    // Reconnected, nothing heard, lost again: the log is the same, so is the answer.
    c.handle(5, Input::PeerUp { conn: 3 });
    c.handle(6, Input::PeerDown { conn: 3 });
    assert_eq!(c.promotion_blocker(), None);
    // Lost in the middle of a snapshot: behind.
    c.handle(7, Input::PeerUp { conn: 4 });
    let begin = Message::SnapshotBegin {
        epoch: 1,
        index: 9,
        index_epoch: 1,
    };
    assert_eq!(
        c.handle(
            8,
            Input::Received {
                conn: 4,
                msg: begin
            }
        ),
        vec![]
    );
    c.handle(9, Input::PeerDown { conn: 4 });
    assert_eq!(c.promotion_blocker(), Some(BEHIND.into()));
}

// Architecture section 2: a snapshot installed on a link that then carried no
// `Append` leaves the standby behind, whatever an earlier loss said.
#[test]
fn a_snapshot_install_without_an_append_is_not_in_sync() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log_of(&[(1, 1)]), 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: heartbeat(1, 1, 1, 1),
        },
    );
    c.handle(2, Input::PeerDown { conn: 1 });
    assert_eq!(c.promotion_blocker(), None);
    c.handle(3, Input::PeerUp { conn: 2 });
    let begin = Message::SnapshotBegin {
        epoch: 1,
        index: 9,
        index_epoch: 1,
    };
    c.handle(
        4,
        Input::Received {
            conn: 2,
            msg: begin,
        },
    );
    let end = Message::SnapshotEnd { epoch: 1, index: 9 };
    assert_eq!(
        c.handle(5, Input::Received { conn: 2, msg: end }),
        vec![Output::InstallSnapshot {
            conn: 2,
            index: 9,
            index_epoch: 1
        }]
    );
    assert_eq!(
        c.handle(
            6,
            Input::SnapshotInstalled {
                index: 9,
                index_epoch: 1
            }
        ),
        vec![Output::Send {
            conn: 2,
            msg: Message::AppendOk {
                epoch: 1,
                match_index: 9
            }
        }]
    );
    c.handle(7, Input::PeerDown { conn: 2 });
    assert_eq!(c.promotion_blocker(), Some(BEHIND.into()));
}

/// A primary in epoch 1 whose log was compacted past index 3.
fn compacted_primary() -> Core {
    let mut c = Core::new(
        Config {
            snapshot_every_entries: 4,
            log_retain_entries: 1,
            alone_grace_ms: 0,
            in_sync_window_ms: u64::MAX,
            epoch_slot: None,
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
    c
}

// Section 3: a follower receiving a snapshot is silent until it has installed
// it; however long that takes, the primary does not drop it for silence.
#[test]
fn primary_does_not_time_out_a_follower_receiving_a_snapshot() {
    let mut c = compacted_primary();
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
    assert_eq!(c.handle(5_000, Input::Tick), vec![]);
    // Installed: from its answer on, silence counts again.
    let index = c.log().snapshot_index;
    c.handle(
        5_000,
        Input::Received {
            conn: 4,
            msg: Message::AppendOk {
                epoch: 1,
                match_index: index,
            },
        },
    );
    assert_eq!(
        c.handle(6_001, Input::Tick),
        vec![Output::Disconnect {
            conn: 4,
            reason: "follower silent for more than 1000 ms".into()
        }]
    );
}

// Section 3: every message of a snapshot stream (chunks too) is liveness;
// while the install runs the standby does not time the primary out, and the
// timeout restarts when the install is done.
#[test]
fn standby_does_not_time_out_a_primary_during_a_snapshot() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log_of(&[(1, 1)]), 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    let begin = Message::SnapshotBegin {
        epoch: 1,
        index: 9,
        index_epoch: 1,
    };
    c.handle(
        0,
        Input::Received {
            conn: 1,
            msg: begin,
        },
    );
    let chunk = Message::SnapshotChunk { items: vec![] };
    assert_eq!(
        c.handle(
            900,
            Input::Received {
                conn: 1,
                msg: chunk
            }
        ),
        vec![]
    );
    assert_eq!(c.handle(1_500, Input::Tick), vec![]);
    let end = Message::SnapshotEnd { epoch: 1, index: 9 };
    assert_eq!(
        c.handle(1_800, Input::Received { conn: 1, msg: end }),
        vec![Output::InstallSnapshot {
            conn: 1,
            index: 9,
            index_epoch: 1
        }]
    );
    // A long install: the primary waits for our answer, silent.
    assert_eq!(c.handle(10_000, Input::Tick), vec![]);
    let out = c.handle(
        10_000,
        Input::SnapshotInstalled {
            index: 9,
            index_epoch: 1,
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendOk {
                epoch: 1,
                match_index: 9
            }
        }]
    );
    assert_eq!(c.handle(10_900, Input::Tick), vec![]);
    assert_eq!(
        c.handle(11_001, Input::Tick),
        vec![Output::Disconnect {
            conn: 1,
            reason: "primary silent for more than 1000 ms".into()
        }]
    );
}

// Section 3: a conflict above what the follower applied is repaired by
// entries, not a snapshot: the answer skips back an epoch, but not into
// applied state.
#[test]
fn follower_rejects_a_conflict_above_what_it_applied() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3), (1, 4)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 2, log, 2);
    c.handle(0, Input::PeerUp { conn: 1 });
    let out = c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: heartbeat(2, 4, 2, 2),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendReject {
                epoch: 2,
                last_index: 4,
                conflict_index: 3
            }
        }]
    );
}

// Section 3, divergence: before a snapshot replaces a diverged follower's
// log, every entry not verified equal to the primary's goes to the recovery
// file, applied ones included.
#[test]
fn diverged_follower_saves_its_applied_entries_before_a_snapshot() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3), (1, 4)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 2, log, 3);
    c.handle(0, Input::PeerUp { conn: 1 });
    // The primary has epoch 2 at index 2, which we applied in epoch 1.
    let out = c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: heartbeat(2, 2, 2, 5),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: 1,
            msg: Message::NeedSnapshot { epoch: 2 }
        }]
    );
    let begin = Message::SnapshotBegin {
        epoch: 2,
        index: 6,
        index_epoch: 2,
    };
    c.handle(
        2,
        Input::Received {
            conn: 1,
            msg: begin,
        },
    );
    let end = Message::SnapshotEnd { epoch: 2, index: 6 };
    assert_eq!(
        c.handle(3, Input::Received { conn: 1, msg: end }),
        vec![
            Output::SaveRecovery { from: 1 },
            Output::InstallSnapshot {
                conn: 1,
                index: 6,
                index_epoch: 2
            },
        ]
    );
}

// Section 3, catch-up: entries the follower already holds are acknowledged up
// to the last one sent, or the primary would resend the same batch forever.
#[test]
fn follower_acknowledges_entries_it_already_held() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log, 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    let msg = Message::Append {
        epoch: 1,
        prev_index: 0,
        prev_epoch: 0,
        commit_index: 3,
        entries: (1..=3).map(|i| Entry::new(1, i, vec![i as u8])).collect(),
    };
    assert_eq!(
        c.handle(1, Input::Received { conn: 1, msg }),
        vec![
            Output::Send {
                conn: 1,
                msg: Message::AppendOk {
                    epoch: 1,
                    match_index: 3
                }
            },
            Output::Apply {
                up_to: 3,
                replies: vec![]
            },
        ]
    );
}

// Section 3: the follower's `Status` claims only durable entries; received
// ones whose `Persist` is still queued could be lost in a crash.
#[test]
fn follower_status_claims_only_durable_entries() {
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 2, log_of(&[(1, 1)]), 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    let new = vec![
        Entry::new(2, 2, b"b".to_vec()),
        Entry::new(2, 3, b"c".to_vec()),
    ];
    // The primary committed 2 and 3 alone (we were not in sync yet).
    let msg = Message::Append {
        epoch: 2,
        prev_index: 1,
        prev_epoch: 1,
        commit_index: 3,
        entries: new.clone(),
    };
    assert_eq!(
        c.handle(1, Input::Received { conn: 1, msg }),
        vec![Output::Persist {
            truncate_after: None,
            entries: new,
            epoch: None
        }]
    );
    // Received but not durable: not in sync, and not claimed.
    let s = c.status();
    assert_eq!((s.peer.in_sync, s.peer.lag_entries), (false, 2));
    c.handle(2, Input::PeerDown { conn: 1 });
    assert_eq!(
        c.handle(3, Input::PeerUp { conn: 2 }),
        vec![Output::Send {
            conn: 2,
            msg: Message::Status {
                epoch: 2,
                last_index: 1,
                last_epoch: 1,
                applied_index: 1
            }
        }]
    );
    // Durable now, but this link has not told us the commit index yet.
    assert_eq!(c.handle(4, Input::Persisted { last_index: 3 }), vec![]);
    assert_eq!(
        c.handle(
            5,
            Input::Received {
                conn: 2,
                msg: heartbeat(2, 3, 2, 3),
            },
        ),
        vec![
            Output::Send {
                conn: 2,
                msg: Message::AppendOk {
                    epoch: 2,
                    match_index: 3
                }
            },
            Output::Apply {
                up_to: 3,
                replies: vec![]
            },
        ]
    );
    let s = c.status();
    assert_eq!(
        (s.peer.in_sync, s.peer.lag_entries, s.durable_index),
        (true, 0, 3)
    );
}

// Section 3: the follower commits only what is durable here: entries that
// replace a cut suffix are not committed before their `Persist` is done, so
// the disk never holds an old entry at a committed index.
#[test]
fn follower_commits_only_what_is_durable() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 2, log, 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    let new = vec![
        Entry::new(2, 2, b"B".to_vec()),
        Entry::new(2, 3, b"C".to_vec()),
    ];
    let msg = Message::Append {
        epoch: 2,
        prev_index: 1,
        prev_epoch: 1,
        commit_index: 3,
        entries: new.clone(),
    };
    assert_eq!(
        c.handle(1, Input::Received { conn: 1, msg }),
        vec![Output::Persist {
            truncate_after: Some(1),
            entries: new,
            epoch: None
        }]
    );
    assert_eq!(c.commit_index(), 1);
    assert_eq!(
        c.handle(2, Input::Persisted { last_index: 3 }),
        vec![
            Output::Send {
                conn: 1,
                msg: Message::AppendOk {
                    epoch: 2,
                    match_index: 3
                }
            },
            Output::Apply {
                up_to: 3,
                replies: vec![]
            },
        ]
    );
}

// Section 3: an `Append` is checked whole before anything changes: a bad one
// closes the link and leaves the follower's log as it was.
#[test]
fn a_bad_append_changes_nothing() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 2, log.clone(), 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    let mut bad = Entry::new(2, 3, b"c".to_vec());
    bad.payload = b"x".to_vec();
    let cases = [
        (
            vec![Entry::new(2, 2, b"b".to_vec()), bad],
            "entry 3 failed validation",
        ),
        (
            vec![
                Entry::new(2, 2, b"b".to_vec()),
                Entry::new(2, 4, b"d".to_vec()),
            ],
            "non-contiguous entries",
        ),
        (
            vec![
                Entry::new(2, 2, b"b".to_vec()),
                Entry::new(1, 3, b"c".to_vec()),
            ],
            "entry 3 goes back to epoch 1",
        ),
    ];
    for (entries, reason) in cases {
        let msg = Message::Append {
            epoch: 2,
            prev_index: 1,
            prev_epoch: 1,
            commit_index: 1,
            entries,
        };
        assert_eq!(
            c.handle(1, Input::Received { conn: 1, msg }),
            vec![Output::Disconnect {
                conn: 1,
                reason: reason.into()
            }]
        );
        assert_eq!(c.log(), &log);
        assert_eq!(c.status().durable_index, 3);
    }
}

// Section 3: the epoch never wraps: with the counter exhausted a promotion is
// refused (and logged) instead of reusing an epoch.
#[test]
fn promotion_is_refused_when_the_epoch_is_exhausted() {
    let mut c = Core::new(
        cfg(Mode::Sync),
        Role::Standby,
        u64::MAX,
        log_of(&[(1, 1)]),
        1,
    );
    let exhausted =
        "the epoch counter is exhausted: no new epoch can be started, so this node cannot lead";
    assert_eq!(c.promotion_blocker(), Some(exhausted.into()));
    let out = c.handle(
        0,
        Input::Promote {
            reason: "operator".into(),
        },
    );
    assert_eq!(
        out,
        vec![Output::RoleChanged {
            role: Role::Standby,
            epoch: u64::MAX,
            reason: format!("promotion refused (operator): {exhausted}"),
        }]
    );
    assert_eq!((c.role(), c.epoch()), (Role::Standby, u64::MAX));
}

// Section 3: an answer to a `Persist` queued before a cut speaks of the old
// log: the follower does not take it as durability of the entries that
// replace the cut suffix (it would acknowledge what a crash would lose).
#[test]
fn an_answer_from_before_a_cut_does_not_make_new_entries_durable() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log, 1);
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
    assert_eq!(
        c.handle(1, Input::Received { conn: 1, msg }),
        vec![
            Output::Persist {
                truncate_after: None,
                entries: vec![],
                epoch: Some(2)
            },
            Output::RoleChanged {
                role: Role::Standby,
                epoch: 2,
                reason: "primary is in epoch 2".into()
            },
            Output::Persist {
                truncate_after: Some(1),
                entries: new,
                epoch: None
            },
        ]
    );
    // The epoch is durable; the disk still ends at 3, with the old entries.
    assert_eq!(c.handle(2, Input::Persisted { last_index: 3 }), vec![]);
    assert_eq!(c.status().durable_index, 1);
    // The cut and the new entries are durable.
    assert_eq!(
        c.handle(3, Input::Persisted { last_index: 3 }),
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendOk {
                epoch: 2,
                match_index: 3
            }
        }]
    );
}

// Section 3: when one answer covered two `Persist`s ending at the same index,
// the cut behind them may look undone; held entries waiting for it get an
// empty `Persist`, whose answer settles it (no acknowledgement waits forever).
#[test]
fn a_merged_answer_before_a_cut_does_not_stall_the_acknowledgement() {
    let log = log_of(&[(1, 1), (1, 2), (1, 3)]);
    let mut c = Core::new(cfg(Mode::Sync), Role::Standby, 1, log, 1);
    c.handle(0, Input::PeerUp { conn: 1 });
    c.handle(
        1,
        Input::Received {
            conn: 1,
            msg: heartbeat(2, 3, 1, 1),
        },
    );
    let new = vec![
        Entry::new(3, 2, b"B".to_vec()),
        Entry::new(3, 3, b"C".to_vec()),
    ];
    let append = Message::Append {
        epoch: 3,
        prev_index: 1,
        prev_epoch: 1,
        commit_index: 1,
        entries: new,
    };
    let out = c.handle(
        2,
        Input::Received {
            conn: 1,
            msg: append.clone(),
        },
    );
    assert_eq!(out.len(), 3, "epoch, role change, cut: {out:?}");
    // One answer for both epoch records, then the cut's own.
    assert_eq!(c.handle(3, Input::Persisted { last_index: 3 }), vec![]);
    assert_eq!(c.handle(4, Input::Persisted { last_index: 3 }), vec![]);
    // The primary resends what we hold.
    assert_eq!(
        c.handle(
            5,
            Input::Received {
                conn: 1,
                msg: append
            }
        ),
        vec![Output::Persist {
            truncate_after: None,
            entries: vec![],
            epoch: None
        }]
    );
    assert_eq!(
        c.handle(6, Input::Persisted { last_index: 3 }),
        vec![Output::Send {
            conn: 1,
            msg: Message::AppendOk {
                epoch: 3,
                match_index: 3
            }
        }]
    );
}
