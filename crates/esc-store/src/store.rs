//! The store: the segment log ([`crate::segment`]) as the durability
//! point, the materialized state in redb behind it, and the two write
//! steps, [`Store::write_log`] and [`Store::write_state`] (one thread each
//! may run them at once; [`Store::write`] runs both in order).
//!
//! redb tables:
//! - `meta`: `format`, `epoch`, `applied_index`, `applied_epoch`,
//!   `snapshot_index`, `snapshot_epoch` (the log's base), `log_generation`,
//!   the state digest (`digest0`..`digest3`).
//! - `state0`, `state1`: the materialized state, the [`StateMachine`]'s
//!   map, in the slot `meta.state_slot` names; the other slot receives a
//!   snapshot, and installing it flips the slot (no copy, one small
//!   transaction).
//!
//! Applies commit to redb without an fsync; every
//! [`LogOptions::checkpoint_entries`] applied entries (and with every epoch
//! change, compaction or snapshot) the commit is durable: a checkpoint.
//! After a crash the state is the last checkpoint's or later, and the
//! entries after it are applied again from the log: only entries already
//! durable in the log are ever applied, so the state never runs ahead of it.

use crate::digest::{item_hash, Digest};
pub use crate::error::StoreError;
use crate::fs::{LogFs, MemFs, OsFs};
use crate::overlay::{Overlay, OverlayState};
use crate::segment::{LogOptions, SegmentLog};
use esc_state::{StateError, StateMachine, StateRead};
use esc_wire::{Entry, SnapshotItem};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
};
use serde::Serialize;
use std::ops::Bound;
use std::path::Path;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STATES: [TableDefinition<&str, &[u8]>; 2] = [
    TableDefinition::new("state0"),
    TableDefinition::new("state1"),
];

/// The layout this code reads and writes. 3: the log in segment files
/// beside the redb file (issue 13); 2: the log in a redb table, one state
/// map behind the `StateMachine` trait (issue 10); 1 (unnumbered) had a
/// table per kind.
pub const FORMAT: u64 = 3;

/// Entries an apply reads from the log at a time (the log's lock is held
/// for the reads only, not for the apply).
const APPLY_READ_ENTRIES: u64 = 256;

/// redb's page cache (reads and the write buffer).
pub const CACHE_BYTES: usize = 64 << 20;

const K_FORMAT: &str = "format";
const K_EPOCH: &str = "epoch";
const K_APPLIED: &str = "applied_index";
const K_APPLIED_EPOCH: &str = "applied_epoch";
const K_GENERATION: &str = "log_generation";
const K_SNAP_INDEX: &str = "snapshot_index";
const K_SNAP_EPOCH: &str = "snapshot_epoch";
const K_DIGEST: [&str; 4] = ["digest0", "digest1", "digest2", "digest3"];
const K_STAGE_DIGEST: [&str; 4] = [
    "stage_digest0",
    "stage_digest1",
    "stage_digest2",
    "stage_digest3",
];
const K_SLOT: &str = "state_slot";

/// The live state table, as the transaction `meta` belongs to sees it.
fn slot(meta: &impl ReadableTable<&'static str, u64>) -> Result<usize, StoreError> {
    Ok(usize::from(meta_get(meta, K_SLOT)? == 1))
}

/// Where the log stands; cached in memory, persisted by every write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogMeta {
    /// Highest epoch this node has seen (durable; bumped on promotion).
    pub epoch: u64,
    pub last_index: u64,
    pub last_epoch: u64,
    pub applied_index: u64,
    /// The last entry folded into the state and removed from the log.
    pub snapshot_index: u64,
    pub snapshot_epoch: u64,
}

impl LogMeta {
    /// First index still in the log.
    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }
}

/// One atomic change to the store; steps run in field order. A write
/// that fails may have taken effect as a prefix of its steps (truncation,
/// then any prefix of the appended entries, then the epoch, then the
/// applies, then the compaction), each step whole or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    /// Remove entries after this index (the caller saves them first:
    /// [`Store::visit_entries`]).
    pub truncate_after: Option<u64>,
    /// Append these entries (contiguous after the last index, after truncation).
    pub append: Vec<Entry>,
    /// Persist this epoch (never lower than the current one).
    pub epoch: Option<u64>,
    /// Apply committed entries up to this index.
    pub apply_up_to: Option<u64>,
    /// Fold entries up to this index (at most the applied index) into the snapshot.
    pub compact_up_to: Option<u64>,
    /// The log is durable when the write returns even if nothing above
    /// changed it (appends and truncations always are).
    pub sync: bool,
    /// Commit the state durably (a checkpoint) even if none is due.
    pub checkpoint: bool,
}

/// What a write produced: the outcome of each applied entry, by index.
#[derive(Debug)]
pub struct BatchResult<O> {
    pub outcomes: Vec<(u64, O)>,
}

/// The durable store of one node, for the state machine `M`.
pub struct Store<M: StateMachine> {
    db: Database,
    machine: M,
    /// The log; one writer at a time (the storage worker).
    log: std::sync::Mutex<SegmentLog>,
    opts: LogOptions,
    /// Cached copy of the durable metadata, with the state's digest at its
    /// applied index (kept as entries apply) and the applied index of the
    /// last checkpoint, under one lock so they are read at one point.
    meta: std::sync::Mutex<Cached>,
    /// What recovery at open cut from the tail, for the operator.
    pub recovery_note: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cached {
    meta: LogMeta,
    digest: Digest,
    checkpointed: u64,
    generation: u64,
    /// The epoch redb holds (`meta.epoch` may be higher: the log's last
    /// entry's, which the log itself keeps).
    recorded_epoch: u64,
}

impl<M: StateMachine> std::fmt::Debug for Store<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("meta", &self.meta()).finish()
    }
}

fn meta_get(t: &impl ReadableTable<&'static str, u64>, k: &str) -> Result<u64, StoreError> {
    Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0))
}

fn digest_get(
    t: &impl ReadableTable<&'static str, u64>,
    keys: [&str; 4],
) -> Result<Digest, StoreError> {
    let mut d = Digest::default();
    for (w, k) in d.0.iter_mut().zip(keys) {
        *w = meta_get(t, k)?;
    }
    Ok(d)
}

fn digest_put(
    t: &mut redb::Table<&'static str, u64>,
    keys: [&str; 4],
    d: &Digest,
) -> Result<(), StoreError> {
    for (w, k) in d.0.iter().zip(keys) {
        t.insert(k, *w)?;
    }
    Ok(())
}

fn scan_table(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    visit: &mut dyn FnMut(&str, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let lower = esc_state::scan_start(prefix, after);
    for item in t.range::<&str>((lower, Bound::Unbounded))?.take(limit) {
        let (k, v) = item?;
        if !k.value().starts_with(prefix) || !visit(k.value(), v.value()) {
            break;
        }
    }
    Ok(())
}

fn table_get(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(key)?.map(|v| v.value().to_vec()))
}

/// The state map at one point in time (one read transaction): API reads
/// never block commits (MVCC).
pub struct StateReader {
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl StateRead for StateReader {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(table_get(&self.table, key)?)
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StateError> {
        Ok(scan_table(&self.table, prefix, after, limit, visit)?)
    }
}

/// Where a snapshot stands, from the read transaction that streams it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPoint {
    pub index: u64,
    pub index_epoch: u64,
}

impl<M: StateMachine> Store<M> {
    /// Opens (or creates) `dir/esc.redb` and the log in `dir/log/`, and
    /// recovers them.
    pub fn open(dir: &Path, machine: M) -> Result<Store<M>, StoreError> {
        Self::open_with(dir, machine, LogOptions::default())
    }

    /// [`Store::open`] with the log sized by `opts`.
    pub fn open_with(dir: &Path, machine: M, opts: LogOptions) -> Result<Store<M>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("esc.redb");
        if !path.exists() {
            // A first start interrupted while redb lays out a new file would
            // leave a file it refuses forever: create it aside, sync, rename.
            let tmp = dir.join("esc.redb.tmp");
            let _ = std::fs::remove_file(&tmp);
            Self::guard(|| Self::init_db(&Self::builder().create(&tmp)?))?;
            let io = |source: std::io::Error| StoreError::Io {
                path: path.clone(),
                source,
            };
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let log_dir = dir.join("log");
        let fs = OsFs::new(&log_dir).map_err(|source| StoreError::Io {
            path: log_dir.clone(),
            source,
        })?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Self::guard(|| Self::from_db(Self::builder().create(&path)?, Box::new(fs), machine, opts))
    }

    /// Opens a store on any redb backend with the log in memory (tests
    /// and tools that never crash).
    pub fn open_backend(backend: impl StorageBackend, machine: M) -> Result<Store<M>, StoreError> {
        Self::open_parts(
            backend,
            Box::new(MemFs::default()),
            machine,
            LogOptions::default(),
        )
    }

    /// Opens a store on any redb backend and log directory (the crash
    /// tests give both a disk that loses power).
    pub fn open_parts(
        backend: impl StorageBackend,
        fs: Box<dyn LogFs>,
        machine: M,
        opts: LogOptions,
    ) -> Result<Store<M>, StoreError> {
        Self::guard(|| {
            Self::from_db(
                Self::builder().create_with_backend(backend)?,
                fs,
                machine,
                opts,
            )
        })
    }

    /// Every page's checksum is verified once at open, so corruption that is
    /// not a torn commit (bit rot, a damaged disk) is refused here, as an
    /// error, rather than met later on a read path.
    fn builder() -> redb::Builder {
        let mut b = redb::Builder::new();
        b.set_check_integrity_on_open(true);
        // redb's page cache defaults to 1 GiB: a node streaming or
        // receiving a large snapshot would grow to it. Resident memory must
        // not follow the state's size (issue 10, item 5).
        b.set_cache_size(CACHE_BYTES);
        b
    }

    /// redb may panic on a file corrupted other than by a crash (e.g. bit
    /// rot in its allocator state); a corrupt file is an error for the
    /// operator, never a crash of the daemon.
    fn guard<T>(open: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)).unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(StoreError::CorruptFile(why))
        })
    }

    /// Lays out (or checks) the tables; drops a snapshot whose reception a
    /// crash interrupted.
    fn init_db(db: &Database) -> Result<(), StoreError> {
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            // A file of another layout is refused, never misread.
            match meta_get(&meta, K_FORMAT)? {
                FORMAT => {}
                0 if meta_get(&meta, K_APPLIED)? == 0 => {
                    meta.insert(K_FORMAT, FORMAT)?;
                }
                found => {
                    return Err(StoreError::Format {
                        found,
                        reads: FORMAT,
                    })
                }
            }
            // Create every table so readers never meet a missing one.
            let live = slot(&meta)?;
            tx.open_table(STATES[live])?;
            tx.delete_table(STATES[1 - live])?;
            tx.open_table(STATES[1 - live])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn from_db(
        db: Database,
        fs: Box<dyn LogFs>,
        machine: M,
        opts: LogOptions,
    ) -> Result<Store<M>, StoreError> {
        Self::init_db(&db)?;
        let (m, digest, generation) = {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let m = LogMeta {
                epoch: meta_get(&meta, K_EPOCH)?,
                applied_index: meta_get(&meta, K_APPLIED)?,
                snapshot_index: meta_get(&meta, K_SNAP_INDEX)?,
                snapshot_epoch: meta_get(&meta, K_SNAP_EPOCH)?,
                ..LogMeta::default()
            };
            (
                m,
                digest_get(&meta, K_DIGEST)?,
                meta_get(&meta, K_GENERATION)?,
            )
        };
        if m.applied_index < m.snapshot_index {
            return Err(StoreError::Contract(format!(
                "applied index {} before the snapshot point {}",
                m.applied_index, m.snapshot_index
            )));
        }
        let (log, recovery_note) = SegmentLog::open(
            fs,
            opts,
            generation,
            (m.snapshot_index, m.snapshot_epoch),
            m.applied_index,
        )?;
        if let Some(note) = &recovery_note {
            tracing::warn!(target: "esc::store", "recovery: {note}");
        }
        let (last_index, last_epoch) = log.last();
        if last_epoch > m.epoch {
            // Keep it even if that entry is truncated later.
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert(K_EPOCH, last_epoch)?;
            tx.commit()?;
        }
        let meta = LogMeta {
            // An entry of a newer epoch than the one recorded means that
            // epoch was seen (its write reached the log, the epoch's commit
            // did not).
            epoch: m.epoch.max(last_epoch),
            last_index,
            last_epoch,
            ..m
        };
        Ok(Store {
            db,
            machine,
            log: std::sync::Mutex::new(log),
            opts,
            meta: std::sync::Mutex::new(Cached {
                meta,
                digest,
                checkpointed: m.applied_index,
                generation,
                recorded_epoch: m.epoch.max(last_epoch),
            }),
            recovery_note,
        })
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the log stands.
    pub fn meta(&self) -> LogMeta {
        self.cached().meta
    }

    /// The applied index of the last checkpoint: a crash leaves the state
    /// at or after it.
    pub fn checkpointed_index(&self) -> u64 {
        self.cached().checkpointed
    }

    /// `(epoch, first index)` of every epoch in the log, ascending.
    pub fn epoch_table(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(self.log().epochs())
    }

    /// Reads up to `count_max` entries from `from` (or the log's first),
    /// stopping before `bytes_max` (at least one entry). Every entry's
    /// checksum is verified.
    pub fn read_entries(
        &self,
        from: u64,
        count_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let log = self.log();
        let m = self.meta();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for i in from.max(m.first_index())..=m.last_index {
            let e = log.read(i)?;
            bytes += e.payload.len();
            if !out.is_empty() && (out.len() >= count_max || bytes > bytes_max) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Visits the entries from `from` to the end of the log, in order,
    /// without holding them all; `visit` may stop early by returning
    /// `Ok(false)`.
    pub fn visit_entries<E: From<StoreError>>(
        &self,
        from: u64,
        mut visit: impl FnMut(Entry) -> Result<bool, E>,
    ) -> Result<(), E> {
        let log = self.log();
        let m = self.meta();
        for i in from.max(m.first_index())..=m.last_index {
            if !visit(log.read(i)?)? {
                break;
            }
        }
        Ok(())
    }

    /// Performs one batch (see [`Batch`] for what a failure leaves):
    /// [`Store::write_log`], then [`Store::write_state`]; returns once its
    /// log changes are durable.
    pub fn write(&self, batch: Batch) -> Result<BatchResult<M::Outcome>, StoreError> {
        self.write_log(&batch)?;
        self.write_state(&batch)
    }

    /// The log steps of `batch` (truncation, appends, one sync for the
    /// group, then the epoch); its other fields are not looked at. Returns
    /// once they are durable. One caller at a time (the storage's log
    /// thread); [`Store::write_state`] may run meanwhile on another thread:
    /// the `fdatasync` runs without the log's lock, so the apply of a
    /// committed group never waits for the next group's sync (issue 13).
    pub fn write_log(&self, batch: &Batch) -> Result<(), StoreError> {
        let (synced, recorded_epoch) = {
            let mut log = self.log();
            let (m, recorded_epoch) = {
                let c = self.cached();
                (c.meta, c.recorded_epoch)
            };
            // Every check before the first change: a refused batch changes nothing.
            if let Some(after) = batch.truncate_after {
                if after < m.applied_index {
                    return Err(StoreError::Contract(format!(
                        "truncate after {after} would remove applied entries (applied {})",
                        m.applied_index
                    )));
                }
            }
            if let Some(epoch) = batch.epoch {
                if epoch < m.epoch {
                    return Err(StoreError::Contract(format!(
                        "epoch may not go back from {} to {epoch}",
                        m.epoch
                    )));
                }
            }
            let (mut last, mut last_epoch) = log.last();
            if let Some(after) = batch.truncate_after.filter(|a| *a < last) {
                last = after;
                last_epoch = if after == log.base().0 {
                    log.base().1
                } else {
                    log.read(after)?.epoch
                };
            }
            for e in &batch.append {
                if e.index != last + 1 {
                    return Err(StoreError::Contract(format!(
                        "append of index {} after last index {last}",
                        e.index
                    )));
                }
                if e.epoch < last_epoch {
                    return Err(StoreError::Contract(format!(
                        "entry {} of epoch {} after epoch {last_epoch}",
                        e.index, e.epoch
                    )));
                }
                e.verify()?;
                (last, last_epoch) = (e.index, e.epoch);
            }
            // 1. Truncation (durable when it returns), 2. the appends.
            if let Some(after) = batch.truncate_after {
                log.truncate_after(after)?;
                // What the state may apply ends here now.
                let mut c = self.cached();
                (c.meta.last_index, c.meta.last_epoch) = log.last();
            }
            if !batch.append.is_empty() {
                log.append(&batch.append)?;
            }
            let pending = if batch.sync || !batch.append.is_empty() {
                Some(log.take_unsynced())
            } else {
                None
            };
            ((pending, log.last(), log.sync_handle()), recorded_epoch)
        };
        // One sync for the group, outside the lock.
        let (pending, (last_index, last_epoch), fs) = synced;
        if let Some(p) = pending {
            if let Err(e) = crate::segment::sync_pending(&*fs, &p) {
                self.log().restore_unsynced(p);
                return Err(e);
            }
        }
        // 3. The epoch, durably, when it moves past the one recorded.
        let epoch = batch.epoch.filter(|e| *e > recorded_epoch);
        if let Some(e) = epoch {
            let tx = self.db.begin_write()?;
            tx.open_table(META)?.insert(K_EPOCH, e)?;
            tx.commit()?;
        }
        let mut c = self.cached();
        c.meta.last_index = last_index;
        c.meta.last_epoch = last_epoch;
        c.meta.epoch = c.meta.epoch.max(last_epoch).max(batch.epoch.unwrap_or(0));
        if let Some(e) = epoch {
            c.recorded_epoch = e;
        }
        Ok(())
    }

    /// The state steps of `batch` (the applies, then the compaction); its
    /// log fields are not looked at. Only entries durable in the log apply
    /// (those [`Store::write_log`] returned for). One caller at a time (the
    /// storage's apply thread).
    pub fn write_state(&self, batch: &Batch) -> Result<BatchResult<M::Outcome>, StoreError> {
        let Cached {
            meta: m,
            mut digest,
            checkpointed,
            ..
        } = *self.cached();
        let mut result = BatchResult {
            outcomes: Vec::new(),
        };
        let up_to = batch
            .apply_up_to
            .map_or(m.applied_index, |u| u.min(m.last_index))
            .max(m.applied_index);
        let compact_to = batch
            .compact_up_to
            .map_or(m.snapshot_index, |c| c.min(up_to))
            .max(m.snapshot_index);
        let compacts = compact_to > m.snapshot_index;
        let applies = up_to > m.applied_index;
        if !(applies || compacts || batch.checkpoint) {
            return Ok(result);
        }
        // The applies: one redb transaction, durable when it is a checkpoint.
        let checkpoint =
            batch.checkpoint || compacts || up_to - checkpointed >= self.opts.checkpoint_entries;
        let mut snapshot = (m.snapshot_index, m.snapshot_epoch);
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if checkpoint {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut meta = tx.open_table(META)?;
            let mut applied_epoch = meta_get(&meta, K_APPLIED_EPOCH)?;
            if applies {
                let mut table = tx.open_table(STATES[slot(&meta)?])?;
                let mut overlay = Overlay::default();
                let mut next = m.applied_index + 1;
                while next <= up_to {
                    // Read under the log's lock, applied without it.
                    let chunk = self.read_range(next, up_to)?;
                    for e in chunk {
                        let mut state = OverlayState {
                            table: &table,
                            overlay: &mut overlay,
                        };
                        let outcome = self
                            .machine
                            .apply(e.index, &e.payload, &mut state)
                            .map_err(|source| StoreError::Apply {
                                index: e.index,
                                source,
                            })?;
                        applied_epoch = e.epoch;
                        next = e.index + 1;
                        result.outcomes.push((e.index, outcome));
                        if overlay.full() {
                            overlay.flush(&mut table, &mut digest)?;
                        }
                    }
                }
                overlay.flush(&mut table, &mut digest)?;
                meta.insert(K_APPLIED, up_to)?;
                meta.insert(K_APPLIED_EPOCH, applied_epoch)?;
                digest_put(&mut meta, K_DIGEST, &digest)?;
            }
            if compacts {
                let epoch_at = if compact_to == up_to {
                    applied_epoch
                } else {
                    self.log().read(compact_to)?.epoch
                };
                snapshot = (compact_to, epoch_at);
                meta.insert(K_SNAP_INDEX, compact_to)?;
                meta.insert(K_SNAP_EPOCH, epoch_at)?;
            }
        }
        tx.commit()?;
        {
            let mut c = self.cached();
            c.meta.applied_index = up_to;
            (c.meta.snapshot_index, c.meta.snapshot_epoch) = snapshot;
            c.digest = digest;
            if checkpoint {
                c.checkpointed = up_to;
            }
        }
        // Segments wholly before the snapshot point go.
        if compacts {
            self.log().compact(snapshot)?;
        }
        Ok(result)
    }

    /// Entries `from..=to`, at most [`APPLY_READ_ENTRIES`] of them, read
    /// under the log's lock (held only for the reads).
    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, StoreError> {
        let log = self.log();
        let end = to.min(from + APPLY_READ_ENTRIES - 1);
        (from..=end).map(|i| log.read(i)).collect()
    }

    /// Streams the materialized state and the index it reflects from one
    /// read transaction (a consistent point in time), in chunks of at most
    /// `items_max` items or about `bytes_max` bytes, never holding it whole:
    /// `begin` gets the point, `chunk` each chunk; either may stop the
    /// stream by returning false (the link closed).
    pub fn stream_snapshot(
        &self,
        items_max: usize,
        bytes_max: usize,
        begin: impl FnOnce(SnapshotPoint) -> bool,
        mut chunk: impl FnMut(Vec<SnapshotItem>) -> bool,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let applied = meta_get(&meta, K_APPLIED)?;
        let epoch = if applied == meta_get(&meta, K_SNAP_INDEX)? {
            meta_get(&meta, K_SNAP_EPOCH)?
        } else {
            meta_get(&meta, K_APPLIED_EPOCH)?
        };
        if !begin(SnapshotPoint {
            index: applied,
            index_epoch: epoch,
        }) {
            return Ok(());
        }
        let state = tx.open_table(STATES[slot(&meta)?])?;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for item in state.iter()? {
            let (k, v) = item?;
            bytes += k.value().len() + v.value().len();
            items.push(SnapshotItem {
                key: k.value().to_string(),
                value: v.value().to_vec(),
            });
            if items.len() >= items_max || bytes >= bytes_max {
                if !chunk(std::mem::take(&mut items)) {
                    return Ok(());
                }
                bytes = 0;
            }
        }
        if !items.is_empty() {
            chunk(items);
        }
        Ok(())
    }

    /// Receiving a snapshot, step 1: empty the other slot's table.
    pub fn stage_begin(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let other = 1 - slot(&meta)?;
            tx.delete_table(STATES[other])?;
            tx.open_table(STATES[other])?;
            digest_put(&mut meta, K_STAGE_DIGEST, &Digest::default())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Step 2, per chunk as it arrives: write its items into the other
    /// slot, with their digest. Durable, so a large snapshot never piles up
    /// in memory as uncommitted pages; the live state is untouched.
    pub fn stage_chunk(&self, items: &[SnapshotItem]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let mut digest = digest_get(&meta, K_STAGE_DIGEST)?;
            let mut stage = tx.open_table(STATES[1 - slot(&meta)?])?;
            for it in items {
                if let Some(old) = stage.insert(it.key.as_str(), it.value.as_slice())? {
                    digest.remove(item_hash(&it.key, old.value()));
                }
                digest.add(item_hash(&it.key, &it.value));
            }
            digest_put(&mut meta, K_STAGE_DIGEST, &digest)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Step 3: the staged snapshot at `(index, index_epoch)` becomes the
    /// state, in one small durable transaction (the slot flips; nothing is
    /// copied) that also starts a new log generation; then the old log's
    /// segments go (the caller saved what it held past `index` first) and
    /// the old state's table is dropped.
    pub fn install_staged(&self, index: u64, index_epoch: u64) -> Result<(), StoreError> {
        // No lock is held across the redb transaction (the apply path takes
        // the log's lock inside one).
        let c = *self.cached();
        let generation = c.generation + 1;
        let epoch = c.meta.epoch.max(index_epoch);
        let tx = self.db.begin_write()?;
        let digest = {
            let mut meta = tx.open_table(META)?;
            let old = slot(&meta)?;
            let digest = digest_get(&meta, K_STAGE_DIGEST)?;
            meta.insert(K_SLOT, (1 - old) as u64)?;
            digest_put(&mut meta, K_DIGEST, &digest)?;
            digest_put(&mut meta, K_STAGE_DIGEST, &Digest::default())?;
            tx.delete_table(STATES[old])?;
            tx.open_table(STATES[old])?;
            meta.insert(K_APPLIED, index)?;
            meta.insert(K_APPLIED_EPOCH, index_epoch)?;
            meta.insert(K_SNAP_INDEX, index)?;
            meta.insert(K_SNAP_EPOCH, index_epoch)?;
            meta.insert(K_EPOCH, epoch)?;
            meta.insert(K_GENERATION, generation)?;
            digest
        };
        tx.commit()?;
        *self.cached() = Cached {
            meta: LogMeta {
                epoch,
                last_index: index,
                last_epoch: index_epoch,
                applied_index: index,
                snapshot_index: index,
                snapshot_epoch: index_epoch,
            },
            digest,
            checkpointed: index,
            generation,
            recorded_epoch: epoch,
        };
        self.log().reset(generation, (index, index_epoch))
    }

    /// The three steps at once, for callers that hold a whole snapshot
    /// (tests, tools).
    pub fn install_snapshot(
        &self,
        index: u64,
        index_epoch: u64,
        items: &[SnapshotItem],
    ) -> Result<(), StoreError> {
        self.stage_begin()?;
        for c in items.chunks(4096) {
            self.stage_chunk(c)?;
        }
        self.install_staged(index, index_epoch)
    }

    /// Health probe: a durable write that touches nothing replicated (it
    /// fails when the disk is full or failing, as real writes would).
    pub fn probe_write(&self, now_ms: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert("health_probe_ms", now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// The materialized state as of now, for reads (one read transaction).
    pub fn reader(&self) -> Result<StateReader, StoreError> {
        let tx = self.db.begin_read()?;
        let live = slot(&tx.open_table(META)?)?;
        Ok(StateReader {
            table: tx.open_table(STATES[live])?,
        })
    }

    /// The applied index and the state's digest there, kept as entries
    /// apply: two nodes at one applied index with equal digests hold the
    /// same state. O(1).
    pub fn digest(&self) -> (u64, String) {
        let c = self.cached();
        (c.meta.applied_index, c.digest.hex())
    }

    /// The digest computed from every item (tests check the kept one).
    pub fn digest_recomputed(&self) -> Result<(u64, String), StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let applied = meta_get(&meta, K_APPLIED)?;
        let mut d = Digest::default();
        for item in tx.open_table(STATES[slot(&meta)?])?.iter()? {
            let (k, v) = item?;
            d.add(item_hash(k.value(), v.value()));
        }
        Ok((applied, d.hex()))
    }
}
