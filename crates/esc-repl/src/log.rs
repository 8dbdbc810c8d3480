//! The core's view of the local log: where it starts and ends, and the epoch
//! of every index (from the first index of each epoch), so conflict searches
//! need no disk reads.

use serde::{Deserialize, Serialize};

/// Log positions mirrored from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView {
    pub snapshot_index: u64,
    pub snapshot_epoch: u64,
    pub last_index: u64,
    pub last_epoch: u64,
    /// `(epoch, first index)` of every epoch present in the log, ascending.
    pub epochs: Vec<(u64, u64)>,
}

impl LogView {
    /// First index still in the log.
    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// Epoch of the entry at `index`: known for the snapshot point and the log.
    pub fn epoch_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_epoch);
        }
        if index < self.snapshot_index || index > self.last_index {
            return None;
        }
        self.epochs
            .iter()
            .rev()
            .find(|(_, first)| *first <= index)
            .map(|(e, _)| *e)
    }

    /// First index of the epoch holding `index`, not below the log's start.
    pub fn epoch_start(&self, index: u64) -> u64 {
        self.epochs
            .iter()
            .rev()
            .find(|(_, first)| *first <= index)
            .map(|(_, first)| (*first).max(self.first_index()))
            .unwrap_or(self.first_index())
    }

    /// Records appended entries `from..=to` of `epoch`.
    pub fn append(&mut self, epoch: u64, from: u64, to: u64) {
        debug_assert_eq!(from, self.last_index + 1, "contiguous append");
        if self.epochs.last().is_none_or(|(e, _)| *e != epoch) {
            self.epochs.push((epoch, from));
        }
        self.last_index = to;
        self.last_epoch = epoch;
    }

    /// Cuts every entry after `after`.
    pub fn truncate_after(&mut self, after: u64) {
        if after >= self.last_index {
            return;
        }
        self.epochs.retain(|(_, first)| *first <= after);
        self.last_index = after;
        self.last_epoch = self.epoch_at(after).unwrap_or(self.snapshot_epoch);
    }

    /// Folds entries up to `up_to` into the snapshot point.
    pub fn compact(&mut self, up_to: u64) {
        if up_to <= self.snapshot_index || up_to > self.last_index {
            return;
        }
        let epoch = self.epoch_at(up_to).expect("index inside the log");
        self.snapshot_index = up_to;
        self.snapshot_epoch = epoch;
        // Keep the epoch holding the new first index; drop those wholly before it.
        let first = self.first_index();
        let keep_from = self
            .epochs
            .iter()
            .rposition(|(_, f)| *f <= first)
            .unwrap_or(0);
        self.epochs.drain(..keep_from);
        if self.last_index == self.snapshot_index {
            self.epochs.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_track_appends_truncation_and_compaction() {
        let mut l = LogView::default();
        l.append(1, 1, 5);
        l.append(2, 6, 8);
        l.append(2, 9, 9);
        assert_eq!(l.epochs, vec![(1, 1), (2, 6)]);
        assert_eq!(l.epoch_at(5), Some(1));
        assert_eq!(l.epoch_at(6), Some(2));
        assert_eq!(l.epoch_at(10), None);
        assert_eq!(l.epoch_start(8), 6);
        l.truncate_after(6);
        assert_eq!((l.last_index, l.last_epoch), (6, 2));
        l.truncate_after(4);
        assert_eq!((l.last_index, l.last_epoch), (4, 1));
        assert_eq!(l.epochs, vec![(1, 1)]);
        l.append(3, 5, 7);
        l.compact(6);
        assert_eq!((l.snapshot_index, l.snapshot_epoch), (6, 3));
        assert_eq!(l.epochs, vec![(3, 5)]);
        assert_eq!(l.epoch_at(7), Some(3));
        assert_eq!(l.epoch_start(7), 7);
        assert_eq!(l.epoch_at(5), None);
    }
}
