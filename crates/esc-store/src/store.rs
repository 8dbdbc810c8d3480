//! The redb tables and the one write path, [`Store::write`].
//!
//! Tables:
//! - `log`: index -> encoded [`Entry`] (with its crc32c).
//! - `epochs`: epoch -> first index written in it (finds where logs diverge).
//! - `meta`: `epoch`, `applied_index`, `snapshot_index`, `snapshot_epoch`.
//! - `deployments`: name -> [`Deployment`] JSON.
//! - `idempotency`: key -> [`IdempotencyRecord`] JSON.

use crate::state::{
    Command, Deployment, IdempotencyRecord, Op, OpMode, Outcome, IDEMPOTENCY_KEY_REUSED,
};
use esc_wire::entry::EntryError;
use esc_wire::{Entry, SnapshotItem, Table};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend,
    TableDefinition,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// Key of the operation mode in the settings table.
const K_OP_MODE: &str = "op_mode";

/// The state tables a snapshot carries.
pub const SNAPSHOT_TABLES: [Table; 3] = [Table::Deployments, Table::Idempotency, Table::Settings];

const K_EPOCH: &str = "epoch";
const K_APPLIED: &str = "applied_index";
const K_SNAP_INDEX: &str = "snapshot_index";
const K_SNAP_EPOCH: &str = "snapshot_epoch";

/// Store failures. All of them are fatal for the node's role: the caller
/// steps down (style principle 5), it does not retry blindly.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("corrupt log: {0}")]
    Corrupt(#[from] EntryError),
    #[error("log contract violated: {0}")]
    Contract(String),
    #[error("undecodable command at index {index}: {message}")]
    Command { index: u64, message: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
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
    /// Remove entries after this index (they are returned in `removed`).
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

/// What a write produced.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Outcome of each applied entry, by index.
    pub outcomes: Vec<(u64, Outcome)>,
    /// Entries removed by truncation, for the recovery file.
    pub removed: Vec<Entry>,
}

/// The durable store of one node.
pub struct Store {
    db: Database,
    /// Cached copy of the durable metadata; writers are serialized by redb.
    meta: std::sync::Mutex<LogMeta>,
    /// What recovery at open cut from the tail, for the operator.
    pub recovery_note: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("meta", &self.meta()).finish()
    }
}

fn meta_get(t: &impl ReadableTable<&'static str, u64>, k: &str) -> Result<u64, StoreError> {
    Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0))
}

impl Store {
    /// Opens (or creates) `dir/esc.redb` and recovers it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        let path = dir.join("esc.redb");
        if !path.exists() {
            // A first start interrupted while redb lays out a new file would
            // leave a file it refuses forever: create it aside, sync, rename.
            let tmp = dir.join("esc.redb.tmp");
            let _ = std::fs::remove_file(&tmp);
            Self::guard(|| Self::from_db(Self::builder().create(&tmp)?))?;
            let io = |e: std::io::Error| StoreError::Db(format!("{}: {e}", path.display()));
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Self::guard(|| Self::from_db(Self::builder().create(&path)?))
    }

    /// Opens a store on any redb backend (tests use a crash-simulating one).
    pub fn open_backend(backend: impl StorageBackend) -> Result<Store, StoreError> {
        Self::guard(|| Self::from_db(Self::builder().create_with_backend(backend)?))
    }

    /// Every page's checksum is verified once at open, so corruption that is
    /// not a torn commit (bit rot, a damaged disk) is refused here, as an
    /// error, rather than met later on a read path.
    fn builder() -> redb::Builder {
        let mut b = redb::Builder::new();
        b.set_check_integrity_on_open(true);
        b
    }

    /// redb may panic on a file corrupted other than by a crash (e.g. bit
    /// rot in its allocator state); a corrupt file is an error for the
    /// operator, never a crash of the daemon.
    fn guard(open: impl FnOnce() -> Result<Store, StoreError>) -> Result<Store, StoreError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)).unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(StoreError::Db(format!(
                "the database file is corrupt ({why}); restore it from the peer \
                 (move the data directory away and restart as standby)"
            )))
        })
    }

    fn from_db(db: Database) -> Result<Store, StoreError> {
        let tx = db.begin_write()?;
        {
            // Create every table so readers never meet a missing one.
            tx.open_table(LOG)?;
            tx.open_table(EPOCHS)?;
            tx.open_table(META)?;
            tx.open_table(DEPLOYMENTS)?;
            tx.open_table(IDEMPOTENCY)?;
            tx.open_table(SETTINGS)?;
        }
        tx.commit()?;
        let mut store = Store {
            db,
            meta: std::sync::Mutex::new(LogMeta::default()),
            recovery_note: None,
        };
        store.set_meta(store.read_meta()?);
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
    fn set_meta(&self, m: LogMeta) {
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) = m;
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
        *self.meta.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The epoch of the entry at `index`, if it is in the log or is the snapshot point.
    pub fn entry_epoch(&self, index: u64) -> Result<Option<u64>, StoreError> {
        if index == self.meta().snapshot_index {
            return Ok(Some(self.meta().snapshot_epoch));
        }
        if index < self.meta().snapshot_index || index > self.meta().last_index {
            return Ok(None);
        }
        let tx = self.db.begin_read()?;
        let log = tx.open_table(LOG)?;
        let found = log.get(index)?;
        match found {
            Some(v) => Ok(Some(Entry::from_bytes(v.value())?.epoch)),
            None => Ok(None),
        }
    }

    /// First index of the epoch that the entry at `index` belongs to, not
    /// below the log's first index: where a follower's conflict search jumps.
    pub fn epoch_first_index(&self, index: u64) -> Result<u64, StoreError> {
        let Some(epoch) = self.entry_epoch(index)? else {
            return Ok(self.meta().first_index());
        };
        let tx = self.db.begin_read()?;
        let epochs = tx.open_table(EPOCHS)?;
        let first = epochs.get(epoch)?.map(|v| v.value()).unwrap_or(0);
        Ok(first.max(self.meta().first_index()).min(index))
    }

    /// Last index of the log whose epoch is at most `epoch` (primary side of
    /// the conflict search), or the snapshot point.
    pub fn last_index_at_or_below_epoch(&self, epoch: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let epochs = tx.open_table(EPOCHS)?;
        // The first epoch above `epoch` starts right after the answer.
        if let Some(item) = epochs.range(epoch + 1..)?.next() {
            let (_, first) = item?;
            return Ok(first
                .value()
                .saturating_sub(1)
                .max(self.meta().snapshot_index));
        }
        Ok(self.meta().last_index)
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

    /// Performs one atomic batch; returns once it is durable when it appended,
    /// truncated, changed the epoch, or `sync` was asked.
    pub fn write(&self, batch: Batch) -> Result<BatchResult, StoreError> {
        let mut m = self.meta();
        let mut result = BatchResult::default();
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
                    if let Some(v) = log.remove(k)? {
                        result.removed.push(Entry::from_bytes(v.value())?);
                    }
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
                    let mut deployments = tx.open_table(DEPLOYMENTS)?;
                    let mut idem = tx.open_table(IDEMPOTENCY)?;
                    let mut settings = tx.open_table(SETTINGS)?;
                    for item in log.range(m.applied_index + 1..=up_to)? {
                        let (_, v) = item?;
                        let e = Entry::from_bytes(v.value())?;
                        let cmd: Command = serde_json::from_slice(&e.payload).map_err(|err| {
                            StoreError::Command {
                                index: e.index,
                                message: err.to_string(),
                            }
                        })?;
                        let outcome = apply(&cmd, &mut deployments, &mut idem, &mut settings)?;
                        result.outcomes.push((e.index, outcome));
                    }
                    m.applied_index = up_to;
                    meta.insert(K_APPLIED, up_to)?;
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
        self.set_meta(m);
        Ok(result)
    }

    /// The materialized state and the index it reflects, from one read
    /// transaction (a consistent point in time).
    pub fn snapshot(&self) -> Result<(u64, u64, Vec<SnapshotItem>), StoreError> {
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
        let mut items = Vec::new();
        for (table, def) in [
            (Table::Deployments, DEPLOYMENTS),
            (Table::Idempotency, IDEMPOTENCY),
            (Table::Settings, SETTINGS),
        ] {
            let t = tx.open_table(def)?;
            for item in t.iter()? {
                let (k, v) = item?;
                items.push(SnapshotItem {
                    table,
                    key: k.value().to_string(),
                    value: v.value().to_vec(),
                });
            }
        }
        Ok((applied, epoch, items))
    }

    /// Replaces the whole state with a snapshot at `(index, index_epoch)`.
    /// The log is emptied; entries it held after `index` are returned in
    /// `removed` for the recovery file.
    pub fn install_snapshot(
        &self,
        index: u64,
        index_epoch: u64,
        items: &[SnapshotItem],
    ) -> Result<BatchResult, StoreError> {
        let mut result = BatchResult::default();
        let tx = self.db.begin_write()?;
        {
            let mut log = tx.open_table(LOG)?;
            let all: Vec<(u64, Vec<u8>)> = log
                .iter()?
                .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()?;
            for (k, v) in all {
                log.remove(k)?;
                if k > index {
                    if let Ok(e) = Entry::from_bytes(&v) {
                        result.removed.push(e);
                    }
                }
            }
            tx.open_table(EPOCHS)?.retain(|_, _| false)?;
            let mut deployments = tx.open_table(DEPLOYMENTS)?;
            deployments.retain(|_, _| false)?;
            let mut idem = tx.open_table(IDEMPOTENCY)?;
            idem.retain(|_, _| false)?;
            let mut settings = tx.open_table(SETTINGS)?;
            settings.retain(|_, _| false)?;
            for it in items {
                match it.table {
                    Table::Deployments => {
                        deployments.insert(it.key.as_str(), it.value.as_slice())?
                    }
                    Table::Idempotency => idem.insert(it.key.as_str(), it.value.as_slice())?,
                    Table::Settings => settings.insert(it.key.as_str(), it.value.as_slice())?,
                };
            }
            let mut meta = tx.open_table(META)?;
            meta.insert(K_APPLIED, index)?;
            meta.insert(K_SNAP_INDEX, index)?;
            meta.insert(K_SNAP_EPOCH, index_epoch)?;
            let epoch = self.meta().epoch.max(index_epoch);
            meta.insert(K_EPOCH, epoch)?;
        }
        tx.commit()?;
        self.set_meta(self.read_meta()?);
        Ok(result)
    }

    /// Health probe: a durable write that touches nothing replicated (it
    /// fails when the disk is full or failing, as real writes would).
    pub fn probe_write(&self, now_ms: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert("health_probe_ms", now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// The replicated operation mode (default: operation).
    pub fn op_mode(&self) -> Result<OpMode, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SETTINGS)?;
        let found = t.get(K_OP_MODE)?;
        match found {
            Some(v) => decode_json(v.value()),
            None => Ok(OpMode::Operation),
        }
    }

    /// One deployment by name.
    pub fn deployment(&self, name: &str) -> Result<Option<Deployment>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DEPLOYMENTS)?;
        let found = t.get(name)?;
        match found {
            Some(v) => Ok(Some(decode_json(v.value())?)),
            None => Ok(None),
        }
    }

    /// Deployments in name order, starting after `after`, at most `limit`.
    pub fn deployments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DEPLOYMENTS)?;
        let mut out = Vec::new();
        let iter = match after {
            Some(a) => t.range::<&str>(a..)?,
            None => t.range::<&str>(..)?,
        };
        for item in iter {
            let (k, v) = item?;
            if Some(k.value()) == after {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(decode_json(v.value())?);
        }
        Ok(out)
    }

    /// Number of deployments.
    pub fn deployment_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(DEPLOYMENTS)?.len()?)
    }

    /// The first outcome stored under an idempotency key, with its fingerprint.
    pub fn idempotency(&self, key: &str) -> Result<Option<(String, Outcome)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IDEMPOTENCY)?;
        let found = t.get(key)?;
        match found {
            Some(v) => {
                let r: IdempotencyRecord = decode_json(v.value())?;
                Ok(Some((r.fingerprint, r.outcome)))
            }
            None => Ok(None),
        }
    }

    /// SHA-256 over both state tables in key order, with the applied index:
    /// two nodes with equal digests hold identical state.
    pub fn digest(&self) -> Result<(u64, String), StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let applied = meta_get(&meta, K_APPLIED)?;
        let mut h = Sha256::new();
        for def in [DEPLOYMENTS, IDEMPOTENCY, SETTINGS] {
            let t = tx.open_table(def)?;
            for item in t.iter()? {
                let (k, v) = item?;
                h.update((k.value().len() as u64).to_le_bytes());
                h.update(k.value().as_bytes());
                h.update((v.value().len() as u64).to_le_bytes());
                h.update(v.value());
            }
            h.update(b"|");
        }
        Ok((applied, hex::encode(h.finalize())))
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Db(format!("stored JSON: {e}")))
}

fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("in-memory JSON serialization")
}

/// Applies one command; deterministic (no clock, no randomness).
fn apply(
    cmd: &Command,
    deployments: &mut redb::Table<&str, &[u8]>,
    idem: &mut redb::Table<&str, &[u8]>,
    settings: &mut redb::Table<&str, &[u8]>,
) -> Result<Outcome, StoreError> {
    if let Some(key) = &cmd.idempotency_key {
        let previous = idem.get(key.as_str())?.map(|v| v.value().to_vec());
        if let Some(bytes) = previous {
            let r: IdempotencyRecord = decode_json(&bytes)?;
            if r.fingerprint != cmd.fingerprint {
                // The key of an earlier entry, for a different request (two
                // requests raced past the API's check): this one does
                // nothing, and the record of the first stays. Decided from
                // the log alone, so every node answers the same.
                return Ok(Outcome::error(
                    422,
                    &cmd.tid,
                    IDEMPOTENCY_KEY_REUSED.to_string(),
                ));
            }
            // A resend that reached the log twice: the first outcome stands.
            return Ok(r.outcome);
        }
    }
    let outcome = match &cmd.op {
        Op::CreateDeployment { id, name, spec } => {
            if deployments.get(name.as_str())?.is_some() {
                Outcome::error(409, &cmd.tid, format!("deployment {name:?} already exists"))
            } else {
                let d = Deployment {
                    id: id.clone(),
                    name: name.clone(),
                    created_at_ms: cmd.at_ms,
                    tid: cmd.tid.clone(),
                    spec: spec.clone(),
                };
                deployments.insert(name.as_str(), encode_json(&d).as_slice())?;
                Outcome {
                    status: 201,
                    body: serde_json::to_value(&d).expect("deployment to JSON"),
                    tid: cmd.tid.clone(),
                }
            }
        }
        Op::SetOpMode { mode } => {
            settings.insert(K_OP_MODE, encode_json(mode).as_slice())?;
            Outcome {
                status: 200,
                body: serde_json::json!({ "op_mode": mode }),
                tid: cmd.tid.clone(),
            }
        }
        Op::DeleteDeployment { name } => {
            if deployments.remove(name.as_str())?.is_some() {
                Outcome {
                    status: 200,
                    body: serde_json::json!({ "deleted": name }),
                    tid: cmd.tid.clone(),
                }
            } else {
                Outcome::error(404, &cmd.tid, format!("no deployment {name:?}"))
            }
        }
    };
    if let Some(key) = &cmd.idempotency_key {
        let record = IdempotencyRecord {
            fingerprint: cmd.fingerprint.clone(),
            outcome: outcome.clone(),
        };
        idem.insert(key.as_str(), encode_json(&record).as_slice())?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, tid: &str, key: &str, fingerprint: &str, op: Op) -> Entry {
        let cmd = Command {
            tid: tid.into(),
            idempotency_key: Some(key.into()),
            fingerprint: fingerprint.into(),
            at_ms: 1_700_000_000_000 + index,
            op,
        };
        Entry::new(1, index, serde_json::to_vec(&cmd).unwrap())
    }

    fn create(name: &str) -> Op {
        Op::CreateDeployment {
            id: format!("id-{name}"),
            name: name.into(),
            spec: serde_json::json!({ "name": name }),
        }
    }

    /// Two requests with one key but different bodies that both reached the
    /// log (they raced past the API's check): the second does nothing and
    /// gets 422 on every node, however the log is applied; a true resend
    /// still gets the first outcome.
    #[test]
    fn a_key_reused_for_a_different_request_is_refused_when_applied() {
        let log = vec![
            entry(1, "t1", "k", "fp-a", create("a")),
            entry(2, "t2", "k", "fp-b", create("b")),
            entry(3, "t3", "k", "fp-a", create("a")),
            entry(
                4,
                "t4",
                "k",
                "fp-del",
                Op::DeleteDeployment { name: "a".into() },
            ),
        ];
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let stores: Vec<Store> = dirs
            .iter()
            .map(|d| Store::open(d.path()).unwrap())
            .collect();
        let mut outcomes = Vec::new();
        // One node applies the whole log at once, the other entry by entry.
        let r = stores[0]
            .write(Batch {
                append: log.clone(),
                apply_up_to: Some(4),
                ..Batch::default()
            })
            .unwrap();
        outcomes.push(r.outcomes);
        let mut one_by_one = Vec::new();
        for e in &log {
            let r = stores[1]
                .write(Batch {
                    append: vec![e.clone()],
                    apply_up_to: Some(e.index),
                    ..Batch::default()
                })
                .unwrap();
            one_by_one.extend(r.outcomes);
        }
        outcomes.push(one_by_one);
        assert_eq!(outcomes[0], outcomes[1], "apply is deterministic");
        assert_eq!(stores[0].digest().unwrap(), stores[1].digest().unwrap());

        let o = &outcomes[0];
        assert_eq!((o[0].0, o[0].1.status, o[0].1.tid.as_str()), (1, 201, "t1"));
        for (i, tid) in [(1, "t2"), (3, "t4")] {
            assert_eq!(o[i].1.status, 422, "{:?}", o[i]);
            assert_eq!(o[i].1.tid, tid, "the refusal is the second request's own");
            assert_eq!(o[i].1.body["error"], IDEMPOTENCY_KEY_REUSED);
        }
        assert_eq!(o[2].1, o[0].1, "a resend gets the first outcome");
        for s in &stores {
            assert!(
                s.deployment("a").unwrap().is_some(),
                "the delete did nothing"
            );
            assert!(
                s.deployment("b").unwrap().is_none(),
                "the create did nothing"
            );
            let (fp, first) = s.idempotency("k").unwrap().unwrap();
            assert_eq!((fp.as_str(), first), ("fp-a", o[0].1.clone()));
        }
    }
}
