//! The redb tables and the one write path, [`Store::write`].
//!
//! Tables:
//! - `log`: index -> encoded [`Entry`] (with its crc32c).
//! - `epochs`: epoch -> first index written in it (finds where logs diverge).
//! - `meta`: `format`, `epoch`, `applied_index`, `snapshot_index`,
//!   `snapshot_epoch`, the state digest (`digest0`..`digest3`).
//! - `state0`, `state1`: the materialized state, the [`StateMachine`]'s
//!   map, in the slot `meta.state_slot` names; the other slot receives a
//!   snapshot, and installing it flips the slot (no copy, one small
//!   transaction).

use crate::digest::{item_hash, Digest};
use esc_state::{ApplyError, State, StateError, StateMachine, StateRead};
use esc_wire::entry::EntryError;
use esc_wire::{Entry, SnapshotItem};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
};
use serde::Serialize;
use std::ops::Bound;
use std::path::Path;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STATES: [TableDefinition<&str, &[u8]>; 2] = [
    TableDefinition::new("state0"),
    TableDefinition::new("state1"),
];

/// The layout this code reads and writes. 2: one state map behind the
/// `StateMachine` trait (issue 10); 1 (unnumbered) had a table per kind.
pub const FORMAT: u64 = 2;

/// redb's page cache (reads and the write buffer).
pub const CACHE_BYTES: usize = 64 << 20;

const K_FORMAT: &str = "format";
const K_EPOCH: &str = "epoch";
const K_APPLIED: &str = "applied_index";
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

/// Store failures. All of them are fatal for the node's role: the caller
/// steps down (style principle 5), it does not retry blindly.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// redb refused or panicked on a file damaged other than by a crash.
    #[error(
        "the database file is corrupt ({0}); restore it from the peer \
         (move the data directory away and restart as standby)"
    )]
    CorruptFile(String),
    #[error("corrupt log: {0}")]
    Corrupt(#[from] EntryError),
    #[error("log contract violated: {0}")]
    Contract(String),
    #[error("entry {index} does not apply: {source}")]
    Apply {
        index: u64,
        #[source]
        source: ApplyError,
    },
    #[error(
        "the store was written by another escd version (format {found}, this one reads \
         {FORMAT}): move the data directory away and restart; the node rejoins as standby \
         and copies the state from its peer"
    )]
    Format { found: u64 },
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> StateError {
        match e {
            StoreError::State(s) => s,
            other => StateError::Backend(Box::new(other)),
        }
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(redb::Error::from(e)) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

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

/// One atomic change to the store; steps run in field order.
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
    /// Force an fsync even if nothing above requires one.
    pub sync: bool,
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
    /// Cached copy of the durable metadata; writers are serialized by redb.
    /// With the state's digest at its applied index (kept as entries
    /// apply), under one lock so both are read at one point.
    meta: std::sync::Mutex<(LogMeta, Digest)>,
    /// What recovery at open cut from the tail, for the operator.
    pub recovery_note: Option<String>,
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

/// The state map inside a write transaction, keeping the digest as items
/// change (an insert or remove returns the old value: no extra read).
struct TxState<'a, 't> {
    table: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
    digest: &'a mut Digest,
}

fn scan_table(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    visit: &mut dyn FnMut(&str, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let lower = match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    };
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

impl StateRead for TxState<'_, '_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(table_get(&*self.table, key)?)
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StateError> {
        Ok(scan_table(&*self.table, prefix, after, limit, visit)?)
    }
}

impl State for TxState<'_, '_> {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        if let Some(old) = self.table.insert(key, value).map_err(StoreError::from)? {
            self.digest.remove(item_hash(key, old.value()));
        }
        self.digest.add(item_hash(key, value));
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, StateError> {
        match self.table.remove(key).map_err(StoreError::from)? {
            Some(old) => {
                self.digest.remove(item_hash(key, old.value()));
                Ok(true)
            }
            None => Ok(false),
        }
    }
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

/// The machine of the throw-away store that lays out a new file.
struct NoMachine;

impl StateMachine for NoMachine {
    type Outcome = ();
    fn apply(&self, _: u64, _: &[u8], _: &mut dyn State) -> Result<(), ApplyError> {
        Err(ApplyError::Undecodable("no state machine".into()))
    }
}

/// Where a snapshot stands, from the read transaction that streams it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPoint {
    pub index: u64,
    pub index_epoch: u64,
}

impl<M: StateMachine> Store<M> {
    /// Opens (or creates) `dir/esc.redb` and recovers it.
    pub fn open(dir: &Path, machine: M) -> Result<Store<M>, StoreError> {
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
            Self::guard(|| Self::from_db(Self::builder().create(&tmp)?, NoMachine))?;
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
        Self::guard(|| Self::from_db(Self::builder().create(&path)?, machine))
    }

    /// Opens a store on any redb backend (tests use a crash-simulating one).
    pub fn open_backend(backend: impl StorageBackend, machine: M) -> Result<Store<M>, StoreError> {
        Self::guard(|| Self::from_db(Self::builder().create_with_backend(backend)?, machine))
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

    fn from_db<N: StateMachine>(db: Database, machine: N) -> Result<Store<N>, StoreError> {
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            // A file of another layout is refused, never misread.
            let log_empty = tx.open_table(LOG)?.first()?.is_none();
            match meta_get(&meta, K_FORMAT)? {
                FORMAT => {}
                0 if log_empty && meta_get(&meta, K_APPLIED)? == 0 => {
                    meta.insert(K_FORMAT, FORMAT)?;
                }
                found => return Err(StoreError::Format { found }),
            }
            // Create every table so readers never meet a missing one.
            tx.open_table(EPOCHS)?;
            let live = slot(&meta)?;
            tx.open_table(STATES[live])?;
            // A snapshot whose reception a crash interrupted is dropped.
            tx.delete_table(STATES[1 - live])?;
            tx.open_table(STATES[1 - live])?;
        }
        tx.commit()?;
        let mut store = Store {
            db,
            machine,
            meta: std::sync::Mutex::new((LogMeta::default(), Digest::default())),
            recovery_note: None,
        };
        store.set_meta(store.read_meta()?);
        store.set_digest(store.read_digest()?);
        store.recover_tail()?;
        Ok(store)
    }

    fn read_meta(&self) -> Result<LogMeta, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let log = tx.open_table(LOG)?;
        let mut m = LogMeta {
            epoch: meta_get(&meta, K_EPOCH)?,
            applied_index: meta_get(&meta, K_APPLIED)?,
            snapshot_index: meta_get(&meta, K_SNAP_INDEX)?,
            snapshot_epoch: meta_get(&meta, K_SNAP_EPOCH)?,
            ..LogMeta::default()
        };
        m.last_index = m.snapshot_index;
        m.last_epoch = m.snapshot_epoch;
        if let Some((k, v)) = log.last()? {
            m.last_index = k.value();
            m.last_epoch = Entry::from_bytes(v.value()).map(|e| e.epoch).unwrap_or(0);
        }
        Ok(m)
    }

    /// Verifies every entry not yet applied; cuts the tail from the first one
    /// that is corrupt, misplaced or missing (a gap), so it is never applied.
    fn read_digest(&self) -> Result<Digest, StoreError> {
        let tx = self.db.begin_read()?;
        digest_get(&tx.open_table(META)?, K_DIGEST)
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, (LogMeta, Digest)> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_digest(&self, d: Digest) {
        self.cached().1 = d;
    }

    fn set_meta(&self, m: LogMeta) {
        self.cached().0 = m;
    }

    fn recover_tail(&mut self) -> Result<(), StoreError> {
        let m = self.meta();
        if m.applied_index > m.last_index || m.applied_index < m.snapshot_index {
            return Err(StoreError::Contract(format!(
                "applied index {} outside the log ({}..={})",
                m.applied_index, m.snapshot_index, m.last_index
            )));
        }
        let mut cut: Option<(u64, String)> = None;
        {
            let tx = self.db.begin_read()?;
            let log = tx.open_table(LOG)?;
            for (expect, item) in (m.applied_index + 1..).zip(log.range(m.applied_index + 1..)?) {
                let (k, v) = item?;
                let index = k.value();
                let problem = match Entry::from_bytes(v.value()) {
                    _ if index != expect => Some(format!("gap: expected {expect}, found {index}")),
                    Err(e) => Some(e.to_string()),
                    Ok(e) if e.index != index => {
                        Some(format!("entry {} stored at {index}", e.index))
                    }
                    Ok(_) => None,
                };
                if let Some(p) = problem {
                    cut = Some((expect.min(index), p));
                    break;
                }
            }
        }
        if let Some((from, why)) = cut {
            let tx = self.db.begin_write()?;
            let mut n = 0u64;
            {
                let mut log = tx.open_table(LOG)?;
                let doomed: Vec<u64> = log
                    .range(from..)?
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for k in doomed {
                    log.remove(k)?;
                    n += 1;
                }
                let mut epochs = tx.open_table(EPOCHS)?;
                let stale: Vec<u64> = epochs
                    .iter()?
                    .filter_map(|r| r.ok())
                    .filter(|(_, first)| first.value() >= from)
                    .map(|(e, _)| e.value())
                    .collect();
                for e in stale {
                    epochs.remove(e)?;
                }
            }
            tx.commit()?;
            let note = format!("recovery cut {n} log entries from index {from}: {why}");
            tracing::warn!(target: "esc::store", "{note}");
            self.recovery_note = Some(note);
            self.set_meta(self.read_meta()?);
        }
        Ok(())
    }

    /// Where the log stands.
    pub fn meta(&self) -> LogMeta {
        self.cached().0
    }

    /// `(epoch, first index)` of every epoch in the log, ascending.
    pub fn epoch_table(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let tx = self.db.begin_read()?;
        let epochs = tx.open_table(EPOCHS)?;
        let first = self.meta().first_index();
        let mut out: Vec<(u64, u64)> = epochs
            .iter()?
            .map(|r| r.map(|(e, f)| (e.value(), f.value())))
            .collect::<Result<_, _>>()?;
        // An epoch that began before the snapshot point starts at the log's start.
        if let Some(pos) = out.iter().rposition(|(_, f)| *f <= first) {
            out.drain(..pos);
            out[0].1 = out[0].1.max(first);
        }
        if self.meta().last_index < first {
            out.clear();
        }
        Ok(out)
    }

    /// Reads up to `count_max` entries from `from`, stopping before `bytes_max`
    /// (at least one entry). Every entry's checksum is verified.
    pub fn read_entries(
        &self,
        from: u64,
        count_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read()?;
        let log = tx.open_table(LOG)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in log.range(from..)? {
            let (_, v) = item?;
            let e = Entry::from_bytes(v.value())?;
            bytes += e.payload.len();
            if !out.is_empty() && (out.len() >= count_max || bytes > bytes_max) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Visits the entries from `from` to the end of the log, in order, from
    /// one read transaction, without holding them all; `visit` may stop early
    /// by returning `Ok(false)`.
    pub fn visit_entries<E: From<StoreError>>(
        &self,
        from: u64,
        mut visit: impl FnMut(Entry) -> Result<bool, E>,
    ) -> Result<(), E> {
        let tx = self.db.begin_read().map_err(StoreError::from)?;
        let log = tx.open_table(LOG).map_err(StoreError::from)?;
        for item in log.range(from..).map_err(StoreError::from)? {
            let (_, v) = item.map_err(StoreError::from)?;
            let e = Entry::from_bytes(v.value()).map_err(StoreError::from)?;
            if !visit(e)? {
                break;
            }
        }
        Ok(())
    }

    /// Performs one atomic batch; returns once it is durable when it appended,
    /// truncated, changed the epoch, or `sync` was asked.
    pub fn write(&self, batch: Batch) -> Result<BatchResult<M::Outcome>, StoreError> {
        let (mut m, mut digest) = *self.cached();
        let mut result = BatchResult {
            outcomes: Vec::new(),
        };
        let durable = batch.sync
            || batch.truncate_after.is_some()
            || !batch.append.is_empty()
            || batch.epoch.is_some_and(|e| e != m.epoch)
            || batch.compact_up_to.is_some();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut log = tx.open_table(LOG)?;
            let mut epochs = tx.open_table(EPOCHS)?;
            let mut meta = tx.open_table(META)?;
            if let Some(after) = batch.truncate_after {
                if after < m.applied_index {
                    return Err(StoreError::Contract(format!(
                        "truncate after {after} would remove applied entries (applied {})",
                        m.applied_index
                    )));
                }
                let doomed: Vec<u64> = log
                    .range(after + 1..)?
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for k in doomed {
                    log.remove(k)?;
                }
                let stale: Vec<u64> = epochs
                    .iter()?
                    .map(|r| r.map(|(e, first)| (e.value(), first.value())))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .filter(|(_, first)| *first > after)
                    .map(|(e, _)| e)
                    .collect();
                for e in stale {
                    epochs.remove(e)?;
                }
                if after < m.last_index {
                    m.last_index = after;
                    m.last_epoch = if after == m.snapshot_index {
                        m.snapshot_epoch
                    } else {
                        match log.get(after)? {
                            Some(v) => Entry::from_bytes(v.value())?.epoch,
                            None => {
                                return Err(StoreError::Contract(format!(
                                    "no entry at {after} to truncate to"
                                )))
                            }
                        }
                    };
                }
            }
            for e in &batch.append {
                if e.index != m.last_index + 1 {
                    return Err(StoreError::Contract(format!(
                        "append of index {} after last index {}",
                        e.index, m.last_index
                    )));
                }
                if e.epoch < m.last_epoch {
                    return Err(StoreError::Contract(format!(
                        "entry {} of epoch {} after epoch {}",
                        e.index, e.epoch, m.last_epoch
                    )));
                }
                e.verify()?;
                if e.epoch > m.last_epoch || epochs.get(e.epoch)?.is_none() {
                    epochs.insert(e.epoch, e.index)?;
                }
                log.insert(e.index, e.to_bytes().as_slice())?;
                m.last_index = e.index;
                m.last_epoch = e.epoch;
            }
            if let Some(epoch) = batch.epoch {
                if epoch < m.epoch {
                    return Err(StoreError::Contract(format!(
                        "epoch may not go back from {} to {epoch}",
                        m.epoch
                    )));
                }
                m.epoch = epoch;
                meta.insert(K_EPOCH, epoch)?;
            }
            if let Some(up_to) = batch.apply_up_to {
                let up_to = up_to.min(m.last_index);
                if up_to > m.applied_index {
                    let mut table = tx.open_table(STATES[slot(&meta)?])?;
                    let mut state = TxState {
                        table: &mut table,
                        digest: &mut digest,
                    };
                    for item in log.range(m.applied_index + 1..=up_to)? {
                        let (_, v) = item?;
                        let e = Entry::from_bytes(v.value())?;
                        let outcome = self
                            .machine
                            .apply(e.index, &e.payload, &mut state)
                            .map_err(|source| StoreError::Apply {
                                index: e.index,
                                source,
                            })?;
                        result.outcomes.push((e.index, outcome));
                    }
                    m.applied_index = up_to;
                    meta.insert(K_APPLIED, up_to)?;
                    digest_put(&mut meta, K_DIGEST, &digest)?;
                }
            }
            if let Some(up_to) = batch.compact_up_to {
                let up_to = up_to.min(m.applied_index);
                if up_to > m.snapshot_index {
                    let epoch_at = match log.get(up_to)? {
                        Some(v) => Entry::from_bytes(v.value())?.epoch,
                        None => return Err(StoreError::Contract(format!("no entry at {up_to}"))),
                    };
                    let doomed: Vec<u64> = log
                        .range(..=up_to)?
                        .map(|r| r.map(|(k, _)| k.value()))
                        .collect::<Result<_, _>>()?;
                    for k in doomed {
                        log.remove(k)?;
                    }
                    m.snapshot_index = up_to;
                    m.snapshot_epoch = epoch_at;
                    meta.insert(K_SNAP_INDEX, up_to)?;
                    meta.insert(K_SNAP_EPOCH, epoch_at)?;
                }
            }
        }
        tx.commit()?;
        *self.cached() = (m, digest);
        Ok(result)
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
        let log = tx.open_table(LOG)?;
        let epoch = if applied == meta_get(&meta, K_SNAP_INDEX)? {
            meta_get(&meta, K_SNAP_EPOCH)?
        } else {
            match log.get(applied)? {
                Some(v) => Entry::from_bytes(v.value())?.epoch,
                None => return Err(StoreError::Contract(format!("no entry at {applied}"))),
            }
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
    /// copied); the log is emptied (the caller saved what it held past
    /// `index` first) and the old state's table is dropped.
    pub fn install_staged(&self, index: u64, index_epoch: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(LOG)?.retain(|_, _| false)?;
            tx.open_table(EPOCHS)?.retain(|_, _| false)?;
            let mut meta = tx.open_table(META)?;
            let old = slot(&meta)?;
            let digest = digest_get(&meta, K_STAGE_DIGEST)?;
            meta.insert(K_SLOT, (1 - old) as u64)?;
            digest_put(&mut meta, K_DIGEST, &digest)?;
            digest_put(&mut meta, K_STAGE_DIGEST, &Digest::default())?;
            tx.delete_table(STATES[old])?;
            tx.open_table(STATES[old])?;
            meta.insert(K_APPLIED, index)?;
            meta.insert(K_SNAP_INDEX, index)?;
            meta.insert(K_SNAP_EPOCH, index_epoch)?;
            let epoch = self.meta().epoch.max(index_epoch);
            meta.insert(K_EPOCH, epoch)?;
        }
        tx.commit()?;
        let m = self.read_meta()?;
        *self.cached() = (m, self.read_digest()?);
        Ok(())
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
        (c.0.applied_index, c.1.hex())
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
