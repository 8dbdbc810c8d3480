//! The log as append-only segment files: the store's durability point
//! (issue 13). An append is one positioned write per segment touched and
//! one `fdatasync` per group, inside files allocated up front, so a commit
//! changes no file size and flushes no metadata (PostgreSQL's WAL segments
//! work the same way).
//!
//! ```text
//! seg-<generation>-<first index, 20 digits>.log, `segment_bytes` each (or one
//! larger entry):
//! +-------------+--------------------------------+-------------+-----+-------+
//! | len (u32 LE)| entry (esc_wire::Entry bytes)  | len | entry | ... | 0 0 0 |
//! +-------------+--------------------------------+-------------+-----+-------+
//! ```
//!
//! A record is valid when its length fits the file, its entry's checksum
//! holds, its index is the next one and its epoch does not go back. The log
//! is every valid record from the first segment on, up to the first zero
//! length, invalid record, or segment that does not start at the next index.
//! What lies past that point was never durable (a write cut short by a
//! crash, or an interrupted truncation): recovery zeroes it before the
//! first append, so a stale record can never line up behind a new one.
//!
//! Truncation first zeroes the length of the first removed record and
//! syncs (one sector: the cut is atomic), then zeroes the rest and removes
//! the later segments. Installing a snapshot starts a new generation: the
//! store commits the new generation with the snapshot point, then removes
//! every segment of the old one; a segment of another generation found at
//! open is a leftover of that step and is removed.

use crate::error::StoreError;
use crate::fs::LogFs;
use esc_wire::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes before each entry: its length.
const RECORD_HEADER: u64 = 4;

/// How the log and its checkpoints are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Size of a segment file (an entry larger than this gets its own).
    pub segment_bytes: u64,
    /// Applied entries after which the state is committed durably (a
    /// checkpoint); until then a crash replays them from the log.
    pub checkpoint_entries: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            // A roll-over every few seconds at full write rate; small enough
            // beside the data volume's health floor.
            segment_bytes: 32 << 20,
            // A checkpoint costs about two fsyncs; every 8,192 entries keeps
            // that under 1 % of the write path and the replay at open short.
            checkpoint_entries: 8_192,
        }
    }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    name: String,
    first: u64,
    size: u64,
    /// Offset of each record, for indices `first..`.
    offsets: Vec<u64>,
    /// Where the next record goes.
    end: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

/// The segment log of one store.
pub struct SegmentLog {
    fs: Arc<dyn LogFs>,
    opts: LogOptions,
    generation: u64,
    segments: Vec<Segment>,
    /// The snapshot point: the log holds the entries after it.
    base: (u64, u64),
    /// Last entry `(index, epoch)`, or the base.
    last: (u64, u64),
    /// `epoch -> first index` of each epoch after the base.
    epochs: BTreeMap<u64, u64>,
    /// Segments written since the last sync.
    unsynced: Vec<String>,
    /// A segment was created or removed since the last sync.
    dir_unsynced: bool,
}

fn name(generation: u64, first: u64) -> String {
    format!("seg-{generation}-{first:020}.log")
}

fn parse(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    let (g, f) = rest.split_once('-')?;
    Some((g.parse().ok()?, f.parse().ok()?))
}

fn io(what: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: what.into(),
        source,
    }
}

/// Files (and the directory) written since the last sync.
#[derive(Debug, Default)]
pub struct Pending {
    files: Vec<String>,
    dir: bool,
}

/// Syncs what [`SegmentLog::take_unsynced`] took out.
pub fn sync_pending(fs: &dyn LogFs, p: &Pending) -> Result<(), StoreError> {
    for n in &p.files {
        fs.sync(n).map_err(io(n))?;
    }
    if p.dir {
        fs.sync_dir().map_err(io("log directory"))?;
    }
    Ok(())
}

/// What the scan of one segment found.
enum ScanEnd {
    /// Zeros (or the end of the file) after the last record.
    Clean,
    /// A record that is not valid, at this offset.
    Invalid(String),
}

impl SegmentLog {
    /// Opens the log of `generation` after the snapshot point `base` and
    /// recovers it (see the module doc). `applied` is the state's applied
    /// index: a log that ends before it lost durable entries, which no crash
    /// can do, and is refused. Returns the log and, when recovery cut a
    /// record that was not valid, what it cut (for the operator).
    pub fn open(
        fs: Box<dyn LogFs>,
        opts: LogOptions,
        generation: u64,
        base: (u64, u64),
        applied: u64,
    ) -> Result<(SegmentLog, Option<String>), StoreError> {
        let mut log = SegmentLog {
            fs: Arc::from(fs),
            opts,
            generation,
            segments: Vec::new(),
            base,
            last: base,
            epochs: BTreeMap::new(),
            unsynced: Vec::new(),
            dir_unsynced: false,
        };
        let mut found: Vec<(u64, String)> = Vec::new();
        for n in log.fs.list().map_err(io("log directory"))? {
            match parse(&n) {
                Some((g, first)) if g == generation => found.push((first, n)),
                // A leftover of an install (older generation) or of a
                // generation whose install never committed.
                Some(_) => {
                    log.fs.remove(&n).map_err(io(&n))?;
                    log.dir_unsynced = true;
                }
                None => {}
            }
        }
        found.sort();
        // Segments whose every entry is folded into the snapshot.
        while found.len() > 1 && found[1].0 <= base.0 + 1 {
            let (_, n) = found.remove(0);
            log.fs.remove(&n).map_err(io(&n))?;
            log.dir_unsynced = true;
        }
        let mut note = None;
        let mut expected = found.first().map_or(base.0 + 1, |(f, _)| *f);
        let mut cut_rest = false;
        if expected > base.0 + 1 {
            cut_rest = true;
        }
        for (first, n) in found {
            if cut_rest || first != expected {
                // Past the end of the log: never durable as a whole.
                cut_rest = true;
                log.fs.remove(&n).map_err(io(&n))?;
                log.dir_unsynced = true;
                continue;
            }
            let data = log.read_all(&n)?;
            let mut seg = Segment {
                name: n.clone(),
                first,
                size: data.len() as u64,
                offsets: Vec::new(),
                end: 0,
            };
            let end = log.scan(&data, &mut seg);
            expected = seg.next_index();
            let tail_dirty = data[seg.end as usize..].iter().any(|b| *b != 0);
            if let ScanEnd::Invalid(why) = &end {
                cut_rest = true;
                note = Some(format!(
                    "the log's tail from index {expected} was incomplete or damaged ({why}, \
                     segment {n} offset {}): dropped; a crash cuts a write short this way, \
                     and the peer resends what was committed",
                    seg.end
                ));
            }
            if cut_rest || tail_dirty {
                // Whatever follows the last valid record is wiped before
                // anything is appended behind it.
                log.fs.zero_from(&n, seg.end).map_err(io(&n))?;
                log.fs.sync(&n).map_err(io(&n))?;
            }
            log.segments.push(seg);
        }
        if log.dir_unsynced {
            log.fs.sync_dir().map_err(io("log directory"))?;
            log.dir_unsynced = false;
        }
        if log.last.0 < applied {
            return Err(StoreError::CorruptFile(format!(
                "the log ends at index {} but the state applied up to {applied}: entries that \
                 were durable are missing or damaged{}",
                log.last.0,
                note.map(|n| format!(" ({n})")).unwrap_or_default()
            )));
        }
        Ok((log, note))
    }

    fn read_all(&self, n: &str) -> Result<Vec<u8>, StoreError> {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = self
                .fs
                .read_at(n, data.len() as u64, &mut buf)
                .map_err(io(n))?;
            data.extend_from_slice(&buf[..k]);
            if k < buf.len() {
                return Ok(data);
            }
        }
    }

    /// Reads the valid records of `seg` (its data `data`), noting each.
    fn scan(&mut self, data: &[u8], seg: &mut Segment) -> ScanEnd {
        let mut pos = 0usize;
        loop {
            if pos + RECORD_HEADER as usize > data.len() {
                return ScanEnd::Clean;
            }
            let mut len = [0u8; 4];
            len.copy_from_slice(&data[pos..pos + 4]);
            let len = u32::from_le_bytes(len) as usize;
            if len == 0 {
                return ScanEnd::Clean;
            }
            let start = pos + RECORD_HEADER as usize;
            if start + len > data.len() {
                return ScanEnd::Invalid(format!("a record of {len} bytes past the file's end"));
            }
            let e = match Entry::from_bytes(&data[start..start + len]) {
                Ok(e) => e,
                Err(e) => return ScanEnd::Invalid(e.to_string()),
            };
            let want = seg.next_index();
            if e.index != want {
                return ScanEnd::Invalid(format!("entry {} where {want} belongs", e.index));
            }
            if e.index > self.base.0 && e.epoch < self.last.1 {
                return ScanEnd::Invalid(format!(
                    "entry {} goes back to epoch {}",
                    e.index, e.epoch
                ));
            }
            seg.offsets.push(pos as u64);
            pos = start + len;
            seg.end = pos as u64;
            if e.index > self.base.0 {
                self.note_appended(e.index, e.epoch);
            }
        }
    }

    fn note_appended(&mut self, index: u64, epoch: u64) {
        if self.last.0 == self.base.0 || epoch != self.last.1 {
            self.epochs.entry(epoch).or_insert(index);
        }
        self.last = (index, epoch);
    }

    /// The last entry `(index, epoch)` (the base when the log is empty).
    pub fn last(&self) -> (u64, u64) {
        self.last
    }

    /// `(epoch, first index)` of every epoch in the log, ascending.
    pub fn epochs(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.epochs.iter().map(|(e, f)| (*e, *f)).collect();
        v.sort_by_key(|(_, f)| *f);
        v
    }

    /// Appends `entries` (the caller checked they follow the last one):
    /// one write per segment touched; durable only after
    /// [`SegmentLog::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut buf: Vec<u8> = Vec::new();
        for e in entries {
            let bytes = e.to_bytes();
            let rec = RECORD_HEADER + bytes.len() as u64;
            let fits = self
                .segments
                .last()
                .is_some_and(|s| s.end + buf.len() as u64 + rec <= s.size);
            if !fits {
                self.flush(&mut buf)?;
                self.roll(e.index, rec)?;
            }
            let seg = self.segments.last_mut().expect("rolled above");
            seg.offsets.push(seg.end + buf.len() as u64);
            buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(&bytes);
            self.note_appended(e.index, e.epoch);
        }
        self.flush(&mut buf)
    }

    /// Writes the pending bytes at the end of the last segment.
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        let seg = self.segments.last_mut().expect("a segment to flush into");
        self.fs
            .write_at(&seg.name, seg.end, buf)
            .map_err(io(&seg.name))?;
        seg.end += buf.len() as u64;
        if !self.unsynced.contains(&seg.name) {
            self.unsynced.push(seg.name.clone());
        }
        buf.clear();
        Ok(())
    }

    /// Starts a new segment at `first`, large enough for a record of `rec`
    /// bytes (an empty last segment, left by a truncation, is replaced).
    fn roll(&mut self, first: u64, rec: u64) -> Result<(), StoreError> {
        let n = name(self.generation, first);
        if self.segments.last().is_some_and(|s| s.offsets.is_empty()) {
            let old = self.segments.pop().expect("checked");
            self.unsynced.retain(|u| *u != old.name);
            if old.name != n {
                self.fs.remove(&old.name).map_err(io(&old.name))?;
            }
        }
        let size = self.opts.segment_bytes.max(rec + RECORD_HEADER);
        self.fs.create(&n, size).map_err(io(&n))?;
        self.dir_unsynced = true;
        // The file's allocation is made durable with its first sync.
        self.unsynced.push(n.clone());
        self.segments.push(Segment {
            name: n,
            first,
            size,
            offsets: Vec::new(),
            end: 0,
        });
        Ok(())
    }

    /// Makes everything appended and truncated so far durable: one
    /// `fdatasync` per segment written (one, unless the group rolled over),
    /// and the directory when a segment was created.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let p = self.take_unsynced();
        sync_pending(&*self.fs, &p).inspect_err(|_| self.restore_unsynced(p))
    }

    /// What [`SegmentLog::sync`] would sync, taken out so that the caller
    /// can sync it without holding the log ([`sync_pending`]); reads and
    /// compaction go on meanwhile (a segment still to sync holds entries
    /// not durable yet, so not applied, so never compacted away).
    pub fn take_unsynced(&mut self) -> Pending {
        Pending {
            files: std::mem::take(&mut self.unsynced),
            dir: std::mem::take(&mut self.dir_unsynced),
        }
    }

    /// A sync of `p` failed: it is still to be done.
    pub fn restore_unsynced(&mut self, p: Pending) {
        for n in p.files {
            if !self.unsynced.contains(&n) && self.segments.iter().any(|s| s.name == n) {
                self.unsynced.push(n);
            }
        }
        self.dir_unsynced |= p.dir;
    }

    /// The file system, for [`sync_pending`] outside the log's lock.
    pub fn sync_handle(&self) -> Arc<dyn LogFs> {
        self.fs.clone()
    }

    /// The snapshot point `(index, epoch)`: the log holds what follows it.
    pub fn base(&self) -> (u64, u64) {
        self.base
    }

    /// Where entry `index` is: the segment's position and the record's offset.
    fn locate(&self, index: u64) -> Option<(usize, u64)> {
        if index <= self.base.0 || index > self.last.0 {
            return None;
        }
        let k = self.segments.partition_point(|s| s.first <= index);
        let s = &self.segments[k.checked_sub(1)?];
        let off = *s.offsets.get((index - s.first) as usize)?;
        Some((k - 1, off))
    }

    /// Entry `index`, verified.
    pub fn read(&self, index: u64) -> Result<Entry, StoreError> {
        let (k, off) = self
            .locate(index)
            .ok_or_else(|| StoreError::Contract(format!("no entry at {index} in the log")))?;
        let s = &self.segments[k];
        let end = s
            .offsets
            .get((index - s.first) as usize + 1)
            .copied()
            .unwrap_or(s.end);
        let mut buf = vec![0u8; (end - off) as usize];
        let n = self
            .fs
            .read_at(&s.name, off, &mut buf)
            .map_err(io(&s.name))?;
        if n < buf.len() || buf.len() < RECORD_HEADER as usize {
            return Err(StoreError::CorruptFile(format!(
                "segment {} is shorter than its entry {index}",
                s.name
            )));
        }
        let e = Entry::from_bytes(&buf[RECORD_HEADER as usize..])?;
        if e.index != index {
            return Err(StoreError::CorruptFile(format!(
                "segment {} holds entry {} where {index} belongs",
                s.name, e.index
            )));
        }
        Ok(e)
    }

    /// Removes the entries after `after` (at least the base), durably.
    pub fn truncate_after(&mut self, after: u64) -> Result<(), StoreError> {
        if after >= self.last.0 {
            return Ok(());
        }
        let last_epoch = if after == self.base.0 {
            self.base.1
        } else {
            self.read(after)?.epoch
        };
        let (k, off) = self
            .locate(after + 1)
            .ok_or_else(|| StoreError::Contract(format!("no entry at {} to cut", after + 1)))?;
        let n = self.segments[k].name.clone();
        // The cut itself: one length field, one sector.
        self.fs.write_at(&n, off, &[0u8; 4]).map_err(io(&n))?;
        self.fs.sync(&n).map_err(io(&n))?;
        self.fs.zero_from(&n, off).map_err(io(&n))?;
        self.fs.sync(&n).map_err(io(&n))?;
        let removed: Vec<Segment> = self.segments.drain(k + 1..).collect();
        for s in &removed {
            self.fs.remove(&s.name).map_err(io(&s.name))?;
            self.unsynced.retain(|u| *u != s.name);
            self.dir_unsynced = true;
        }
        let seg = &mut self.segments[k];
        seg.offsets.truncate((after + 1 - seg.first) as usize);
        seg.end = off;
        self.last = (after, last_epoch);
        self.epochs.retain(|_, first| *first <= after);
        self.sync()
    }

    /// The snapshot point moved to `base` (the caller made the state up to
    /// it durable first): segments wholly before it are removed.
    pub fn compact(&mut self, base: (u64, u64)) -> Result<(), StoreError> {
        if base.0 <= self.base.0 {
            return Ok(());
        }
        let epoch_after = self
            .epochs
            .iter()
            .filter(|(_, f)| **f <= base.0 + 1)
            .max_by_key(|(_, f)| **f)
            .map(|(e, _)| *e);
        self.base = base;
        self.epochs.retain(|_, first| *first > base.0);
        if self.last.0 > base.0 {
            if let Some(e) = epoch_after {
                self.epochs.entry(e).or_insert(base.0 + 1);
            }
        } else {
            self.epochs.clear();
            self.last = base;
        }
        while self.segments.len() > 1 && self.segments[1].first <= base.0 + 1 {
            let s = self.segments.remove(0);
            self.fs.remove(&s.name).map_err(io(&s.name))?;
            self.unsynced.retain(|u| *u != s.name);
            self.dir_unsynced = true;
        }
        Ok(())
    }

    /// A snapshot at `base` replaced the log, and the store committed the
    /// new `generation`: every segment of the old one goes.
    pub fn reset(&mut self, generation: u64, base: (u64, u64)) -> Result<(), StoreError> {
        for s in self.segments.drain(..) {
            self.fs.remove(&s.name).map_err(io(&s.name))?;
        }
        self.generation = generation;
        self.base = base;
        self.last = base;
        self.epochs.clear();
        self.unsynced.clear();
        self.fs.sync_dir().map_err(io("log directory"))?;
        self.dir_unsynced = false;
        Ok(())
    }
}
