//! The storage workers: two OS threads that execute the replication
//! core's storage outputs against the store, each strictly in the order
//! they were emitted (architecture section 3: fsync before acknowledging;
//! issue 13: apply never waits for the next group's fsync).
//!
//! ```text
//!                 ┌─ Persist, SaveRecovery, SendEntries, Install ─> log thread ──> Store::write_log
//!   owner task ───┤   (bounded, in order)                               │   (segments, one fdatasync per group)
//!    (Jobs::send) └─ Apply, Compact, StageBegin/Chunk ─> apply thread ──┼─> Store::write_state (redb)
//!        ^            (bounded, in order)                  │            │
//!        └──StorageEvent (Persisted, SnapshotInstalled, Failed)─────────┘
//!   client writes <── answered straight from the apply thread once applied
//!   replication links <── catch-up batches (log thread), snapshot chunks
//! ```
//!
//! The two never wait on each other on the write path: the core applies
//! only entries it was told are durable, so the apply thread reads only
//! what the log thread already synced, and the log's lock is never held
//! across a sync or a redb transaction. Installing a snapshot replaces
//! both the log and the state: it is a fence ([`Fence`]), run by the log
//! thread once the apply thread has done everything queued before it and
//! stands still until the install is done.
//!
//! Each queue is bounded ([`JOBS_MAX`]): a flood of writes waits in the
//! owner rather than in memory here. The workers never wait on the owner:
//! their events go through an unbounded channel that holds at most one
//! event per job done, and the owner drains it every turn of its loop.
//!
//! Nothing here holds a volume proportional to the state: entries saved to
//! a recovery file, catch-up batches and snapshots are read in bounded
//! pieces.

use crate::logging::HA;
use crate::metrics::Counters;
use crate::net;
use crate::shared::{unix_ms, NodeStore, WriteResult};
use esc_store::{Batch, StoreError};
use esc_wire::msg::SNAPSHOT_CHUNK_ITEMS_MAX;
use esc_wire::{Entry, Message, SnapshotItem};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tracing::{error, info, warn};

/// Jobs queued for the worker before the owner waits.
pub const JOBS_MAX: usize = 4_096;
/// Bytes of snapshot items per chunk frame (well under the frame bound).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Payload bytes of one catch-up frame (the core resumes after what arrived).
pub const SEND_ENTRIES_BYTES_MAX: usize = 8 << 20;

/// Work for the storage workers; [`Jobs::send`] routes each to its thread.
pub enum Job {
    /// Make these log changes durable (the log thread).
    Persist {
        truncate_after: Option<u64>,
        entries: Vec<Entry>,
        epoch: Option<u64>,
    },
    /// Apply the committed entries up to `up_to` (the apply thread).
    Apply {
        up_to: u64,
        /// Clients answered straight from the apply thread once their entry
        /// is applied (one hop less than going back through the owner).
        replies: Vec<(u64, oneshot::Sender<WriteResult>)>,
    },
    /// Fold the entries up to `up_to` into the snapshot point.
    Compact { up_to: u64 },
    /// Save the entries from `from` on to the recovery file (before a
    /// snapshot replaces them).
    SaveRecovery { from: u64 },
    /// A snapshot from the primary begins: empty the staging slot.
    StageBegin,
    /// One chunk of it; the permit frees the link's reader for the next.
    StageChunk {
        items: Vec<SnapshotItem>,
        window: OwnedSemaphorePermit,
    },
    /// The snapshot is complete: save what the log held past `index`, then
    /// make the staged state the state (a fence for both threads).
    Install { index: u64, index_epoch: u64 },
    /// A catch-up batch for a follower.
    SendEntries {
        tx: net::ConnTx,
        msg: Message,
        from: u64,
        to: u64,
    },
}

enum LogJob {
    Persist(Batch),
    SaveRecovery {
        from: u64,
    },
    Install {
        index: u64,
        index_epoch: u64,
        fence: Fence,
    },
    SendEntries {
        tx: net::ConnTx,
        msg: Message,
        from: u64,
        to: u64,
    },
}

enum ApplyJob {
    Apply {
        batch: Batch,
        replies: Vec<(u64, oneshot::Sender<WriteResult>)>,
    },
    StageBegin,
    StageChunk {
        items: Vec<SnapshotItem>,
        window: OwnedSemaphorePermit,
    },
    Fence(FenceArrival),
}

/// The log thread's side of a fence: it waits until the apply thread
/// arrived (everything queued before the fence is applied), does its job,
/// then releases it. A side that is gone (its thread stopped on a store
/// failure) releases the other.
struct Fence {
    arrived: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::SyncSender<()>,
}

/// The apply thread's side.
struct FenceArrival {
    arrived: std::sync::mpsc::SyncSender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

fn fence() -> (Fence, FenceArrival) {
    let (arrived_tx, arrived_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::sync_channel(1);
    (
        Fence {
            arrived: arrived_rx,
            release: release_tx,
        },
        FenceArrival {
            arrived: arrived_tx,
            release: release_rx,
        },
    )
}

/// The owner's sender: routes each job to its thread's queue.
pub struct Jobs {
    log: std::sync::mpsc::SyncSender<LogJob>,
    apply: std::sync::mpsc::SyncSender<ApplyJob>,
}

impl Jobs {
    /// Queues `job`. Bounded: waits for the thread when it is [`JOBS_MAX`]
    /// behind (it never waits on the owner).
    pub fn send(&self, job: Job) {
        // A send fails only when the thread stopped (its `Failed` event
        // says why): the job has nothing left to do.
        let log = |j: LogJob| {
            let _ = self.log.send(j);
        };
        let apply = |j: ApplyJob| {
            let _ = self.apply.send(j);
        };
        match job {
            Job::Persist {
                truncate_after,
                entries,
                epoch,
            } => log(LogJob::Persist(Batch {
                truncate_after,
                append: entries,
                epoch,
                sync: true,
                ..Batch::default()
            })),
            Job::Apply { up_to, replies } => apply(ApplyJob::Apply {
                batch: Batch {
                    apply_up_to: Some(up_to),
                    ..Batch::default()
                },
                replies,
            }),
            Job::Compact { up_to } => apply(ApplyJob::Apply {
                batch: Batch {
                    compact_up_to: Some(up_to),
                    ..Batch::default()
                },
                replies: Vec::new(),
            }),
            Job::StageBegin => apply(ApplyJob::StageBegin),
            Job::StageChunk { items, window } => apply(ApplyJob::StageChunk { items, window }),
            Job::SaveRecovery { from } => log(LogJob::SaveRecovery { from }),
            Job::Install { index, index_epoch } => {
                let (fence, arrival) = fence();
                apply(ApplyJob::Fence(arrival));
                log(LogJob::Install {
                    index,
                    index_epoch,
                    fence,
                });
            }
            Job::SendEntries { tx, msg, from, to } => {
                log(LogJob::SendEntries { tx, msg, from, to })
            }
        }
    }
}

/// What the workers tell the owner.
#[derive(Debug)]
pub enum StorageEvent {
    Persisted {
        last_index: u64,
    },
    SnapshotInstalled {
        index: u64,
        index_epoch: u64,
    },
    /// Sticky: the thread stops (a restart recovers the store at open).
    Failed {
        error: String,
    },
}

/// The owner's handle.
pub struct Storage {
    pub jobs: Jobs,
    pub events: mpsc::UnboundedReceiver<StorageEvent>,
}

/// Starts the two worker threads.
pub fn spawn(
    store: Arc<NodeStore>,
    applied: Arc<watch::Sender<u64>>,
    counters: Arc<Counters>,
    data_dir: PathBuf,
) -> std::io::Result<Storage> {
    let (log_tx, log_rx) = std::sync::mpsc::sync_channel(JOBS_MAX);
    let (apply_tx, apply_rx) = std::sync::mpsc::sync_channel(JOBS_MAX);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let w = Arc::new(Worker {
        store,
        applied,
        counters,
        data_dir,
        events: events_tx,
    });
    let (lw, aw) = (w.clone(), w);
    worker_thread("esc-log", lw.events.clone(), move || lw.run_log(log_rx))?;
    worker_thread("esc-apply", aw.events.clone(), move || {
        aw.run_apply(apply_rx)
    })?;
    Ok(Storage {
        jobs: Jobs {
            log: log_tx,
            apply: apply_tx,
        },
        events: events_rx,
    })
}

/// Runs `work` on a thread called `name`; its error, if it stops on one,
/// goes to the owner as `Failed`.
fn worker_thread(
    name: &str,
    events: mpsc::UnboundedSender<StorageEvent>,
    work: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = work() {
                let _ = events.send(StorageEvent::Failed {
                    error: e.to_string(),
                });
            }
        })
        .map(|_| ())
}

/// Streams the store's state to a follower on its bulk lane, from one read
/// transaction, in chunks; stops when the link closes, or closes it when the
/// follower takes no chunk for `stall_max` (a frozen follower whose kernel
/// still answers would otherwise pin the read transaction, and redb could
/// reuse no page freed after it, for as long as it stays frozen). Runs on a
/// blocking thread of the runtime.
pub fn send_snapshot(
    store: &NodeStore,
    epoch: u64,
    tx: &net::ConnTx,
    stall_max: std::time::Duration,
) {
    let rt = tokio::runtime::Handle::current();
    let send = |m: Message| match rt.block_on(tokio::time::timeout(stall_max, tx.bulk.send(m))) {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            warn!(target: HA, ?stall_max, "the follower took no snapshot chunk in time; closing the link");
            tx.close();
            false
        }
    };
    let mut end = None;
    let r = store.stream_snapshot(
        SNAPSHOT_CHUNK_ITEMS_MAX,
        SNAPSHOT_CHUNK_BYTES_MAX,
        |p| {
            end = Some(p.index);
            send(Message::SnapshotBegin {
                epoch,
                index: p.index,
                index_epoch: p.index_epoch,
            })
        },
        |items| send(Message::SnapshotChunk { items }),
    );
    match (r, end) {
        (Err(e), _) => error!(target: HA, "cannot read a snapshot: {e}"),
        (Ok(()), Some(index)) => {
            send(Message::SnapshotEnd { epoch, index });
        }
        (Ok(()), None) => {}
    }
}

/// The job a merge stopped at, else the next one queued; None once the
/// owner is gone.
fn next_job<T>(next: &mut Option<T>, jobs: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    next.take().or_else(|| jobs.recv().ok())
}

struct Worker {
    store: Arc<NodeStore>,
    /// The applied index, published after every apply (the primary-only
    /// services and the event stream wait on it instead of polling).
    applied: Arc<watch::Sender<u64>>,
    counters: Arc<Counters>,
    data_dir: PathBuf,
    events: mpsc::UnboundedSender<StorageEvent>,
}

impl Worker {
    /// The log thread: runs its jobs until the owner goes away (Ok) or the
    /// store fails (the error, for `StorageEvent::Failed`).
    fn run_log(&self, jobs: std::sync::mpsc::Receiver<LogJob>) -> Result<(), StorageError> {
        let mut next: Option<LogJob> = None;
        while let Some(job) = next_job(&mut next, &jobs) {
            match job {
                LogJob::Persist(batch) => {
                    next = self.persist(batch, &jobs)?;
                }
                LogJob::SaveRecovery { from } => {
                    let n = self.save_recovery(from, "before a snapshot replaces the log")?;
                    if n > 0 {
                        warn!(target: HA, entries = n,
                              "possibly divergent entries saved to the recovery file before a snapshot");
                    }
                }
                LogJob::Install {
                    index,
                    index_epoch,
                    fence,
                } => {
                    // Everything the apply thread had queued before is done,
                    // and it stands still until `release`.
                    let _ = fence.arrived.recv();
                    // Entries beyond the snapshot point are kept before the
                    // log is replaced.
                    self.save_recovery(index + 1, "beyond the snapshot point")?;
                    self.store.install_staged(index, index_epoch)?;
                    self.applied.send_replace(self.store.meta().applied_index);
                    let _ = fence.release.send(());
                    if self
                        .events
                        .send(StorageEvent::SnapshotInstalled { index, index_epoch })
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                LogJob::SendEntries { tx, msg, from, to } => {
                    self.send_entries(tx, msg, from, to)?
                }
            }
        }
        Ok(())
    }

    /// One group of log changes, merged with the groups queued right
    /// behind it (one sync); returns the job that ended the merge.
    fn persist(
        &self,
        mut batch: Batch,
        jobs: &std::sync::mpsc::Receiver<LogJob>,
    ) -> Result<Option<LogJob>, StorageError> {
        let mut next = None;
        while let Ok(j) = jobs.try_recv() {
            match j {
                LogJob::Persist(b) if b.truncate_after.is_none() => {
                    batch.append.extend(b.append);
                    batch.epoch = batch.epoch.max(b.epoch);
                }
                other => {
                    next = Some(other);
                    break;
                }
            }
        }
        if let Some(after) = batch.truncate_after {
            let n = self.save_recovery(after + 1, "divergent")?;
            if n > 0 {
                warn!(target: HA, entries = n, "divergent entries moved to the recovery file");
            }
        }
        self.store.write_log(&batch)?;
        let last_index = self.store.meta().last_index;
        if self
            .events
            .send(StorageEvent::Persisted { last_index })
            .is_err()
        {
            return Ok(None);
        }
        Ok(next)
    }

    /// The apply thread: runs its jobs until the owner goes away (Ok) or
    /// the store fails.
    fn run_apply(&self, jobs: std::sync::mpsc::Receiver<ApplyJob>) -> Result<(), StorageError> {
        let mut next: Option<ApplyJob> = None;
        while let Some(job) = next_job(&mut next, &jobs) {
            match job {
                ApplyJob::Apply { batch, replies } => {
                    next = self.apply(batch, replies, &jobs)?;
                }
                ApplyJob::StageBegin => self.store.stage_begin()?,
                ApplyJob::StageChunk { items, window } => {
                    self.store.stage_chunk(&items)?;
                    drop(window);
                }
                ApplyJob::Fence(f) => {
                    let _ = f.arrived.send(());
                    let _ = f.release.recv();
                }
            }
        }
        Ok(())
    }

    /// One apply (and compaction), merged with those queued right behind
    /// it (one redb transaction); answers the clients whose entries it
    /// applied; returns the job that ended the merge.
    fn apply(
        &self,
        mut batch: Batch,
        mut replies: Vec<(u64, oneshot::Sender<WriteResult>)>,
        jobs: &std::sync::mpsc::Receiver<ApplyJob>,
    ) -> Result<Option<ApplyJob>, StorageError> {
        let mut next = None;
        while let Ok(j) = jobs.try_recv() {
            match j {
                ApplyJob::Apply {
                    batch: b,
                    replies: r,
                } => {
                    batch.apply_up_to = batch.apply_up_to.max(b.apply_up_to);
                    batch.compact_up_to = batch.compact_up_to.max(b.compact_up_to);
                    replies.extend(r);
                }
                other => {
                    next = Some(other);
                    break;
                }
            }
        }
        let result = self.store.write_state(&batch)?;
        if !result.outcomes.is_empty() {
            self.applied.send_replace(self.store.meta().applied_index);
        }
        if !replies.is_empty() {
            let mut by_index: HashMap<u64, _> = result.outcomes.into_iter().collect();
            for (i, reply) in replies {
                if let Some(o) = by_index.remove(&i) {
                    Counters::bump(&self.counters.writes_committed);
                    let _ = reply.send(Ok(o));
                }
            }
        }
        Ok(next)
    }

    /// Writes the log's entries from `from` on to a recovery file, fsynced
    /// before the caller removes them (architecture section 3: never
    /// silently dropped), streamed from the store; how many.
    fn save_recovery(&self, from: u64, why: &str) -> Result<u64, StorageError> {
        let mut file: Option<(std::io::BufWriter<std::fs::File>, PathBuf)> = None;
        let mut n = 0u64;
        let r = self.store.visit_entries(from, |e: Entry| {
            if file.is_none() {
                file = Some(recovery_file(&self.data_dir, &e).map_err(io)?);
            }
            let (f, _) = file.as_mut().expect("opened above");
            let payload: serde_json::Value = serde_json::from_slice(&e.payload)
                .unwrap_or_else(|_| serde_json::Value::String(hex::encode(&e.payload)));
            let line = serde_json::json!({"index": e.index, "epoch": e.epoch, "command": payload});
            writeln!(f, "{line}").map_err(io)?;
            n += 1;
            Ok::<_, StorageError>(true)
        });
        r?;
        if let Some((f, path)) = file {
            let f = f.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all()
                .and_then(|_| std::fs::File::open(path.parent().unwrap_or(Path::new("."))))
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            self.counters
                .recovery_entries
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            info!(target: HA, entries = n, path = %path.display(), %why, "recovery file written");
        }
        Ok(n)
    }

    fn send_entries(
        &self,
        tx: net::ConnTx,
        msg: Message,
        from: u64,
        to: u64,
    ) -> Result<(), StorageError> {
        let count = (to + 1 - from) as usize;
        let entries = self
            .store
            .read_entries(from, count, SEND_ENTRIES_BYTES_MAX)?;
        if let Message::Append {
            epoch,
            prev_index,
            prev_epoch,
            commit_index,
            ..
        } = msg
        {
            let m = Message::Append {
                epoch,
                prev_index,
                prev_epoch,
                commit_index,
                entries,
            };
            // The core has this one catch-up batch in flight and waits for
            // its ack: a batch that cannot be queued must not vanish
            // silently. Waiting for room would stall every write behind this
            // worker, so the link is closed instead: its reader reports
            // `Down` (the core forgets the peer), the follower dials again
            // and catch-up restarts from its log.
            match tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(target: HA, from, to,
                          "peer too slow: send queue full for a catch-up batch; closing the link");
                    tx.close();
                }
                // The link is already closing; its `Down` follows.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        Ok(())
    }
}

/// Why the worker stopped: the node cannot persist any more (sticky until
/// restart).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the recovery file: {0}")]
    Recovery(#[source] std::io::Error),
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::Recovery(e)
}

/// A new recovery file named after the first entry it keeps.
fn recovery_file(
    data_dir: &Path,
    first: &Entry,
) -> std::io::Result<(std::io::BufWriter<std::fs::File>, PathBuf)> {
    let dir = data_dir.join("recovery");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "divergent-epoch{}-from{}-{}.jsonl",
        first.epoch,
        first.index,
        unix_ms()
    ));
    let f = std::fs::File::create(&path)?;
    Ok((std::io::BufWriter::new(f), path))
}
