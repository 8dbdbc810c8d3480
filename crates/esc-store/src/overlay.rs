//! The state changes of one apply, held in memory and written to the
//! state table once per key when the apply ends ([`Overlay::flush`]).
//!
//! One entry of the service touches the same keys several times (a deploy
//! writes its service record when it starts and again when it settles,
//! every event bumps the outbox's two counters), and a group of entries
//! touches them once per entry. Writing each change through to redb cost
//! a B-tree insert (copy-on-write pages) and two item hashes every time;
//! through the overlay a key costs one insert and two hashes per apply,
//! whatever the number of changes (issue 13: the apply must keep up with
//! the log). Reads during the apply see the overlay first, so an entry
//! reads what the entries before it wrote, exactly as if written through.
//!
//! The digest is a sum over the final items ([`crate::digest`]), so
//! updating it per flushed key gives the same value as per change.

use crate::digest::{item_hash, Digest};
use crate::StoreError;
use esc_state::{State, StateError, StateRead};
use redb::ReadableTable;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Bytes of changed values after which an apply flushes its overlay into
/// the transaction before going on (a long replay at open, a catch-up of
/// many entries), so memory stays bounded whatever the range applied.
pub(crate) const OVERLAY_BYTES_MAX: usize = 8 << 20;

type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// Changed keys: `Some(value)` written, `None` deleted.
#[derive(Default)]
pub(crate) struct Overlay {
    changes: BTreeMap<String, Option<Vec<u8>>>,
    bytes: usize,
}

impl Overlay {
    /// Whether the overlay holds enough to flush before going on.
    pub(crate) fn full(&self) -> bool {
        self.bytes >= OVERLAY_BYTES_MAX
    }

    /// Writes every change into `table`, keeping `digest`, and empties
    /// the overlay.
    pub(crate) fn flush(
        &mut self,
        table: &mut Table<'_>,
        digest: &mut Digest,
    ) -> Result<(), StoreError> {
        for (k, v) in std::mem::take(&mut self.changes) {
            match v {
                Some(v) => {
                    if let Some(old) = table.insert(k.as_str(), v.as_slice())? {
                        digest.remove(item_hash(&k, old.value()));
                    }
                    digest.add(item_hash(&k, &v));
                }
                None => {
                    if let Some(old) = table.remove(k.as_str())? {
                        digest.remove(item_hash(&k, old.value()));
                    }
                }
            }
        }
        self.bytes = 0;
        Ok(())
    }
}

/// The state an apply sees: the overlay over the transaction's table.
pub(crate) struct OverlayState<'a, 't> {
    pub(crate) table: &'a Table<'t>,
    pub(crate) overlay: &'a mut Overlay,
}

fn table_get(t: &Table<'_>, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(key)?.map(|v| v.value().to_vec()))
}

impl StateRead for OverlayState<'_, '_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self.overlay.changes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(table_get(self.table, key)?),
        }
    }

    /// The table's keys and the overlay's, merged in key order; the
    /// overlay's value (or deletion) wins where both have a key.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visit: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let lower = esc_state::scan_start(prefix, after);
        let mut base = self
            .table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(StoreError::from)?
            .peekable();
        let mut over = self
            .overlay
            .changes
            .range::<str, _>((lower, Bound::Unbounded))
            .peekable();
        let mut seen = 0;
        while seen < limit {
            let base_key = match base.peek() {
                Some(Ok((k, _))) => Some(k.value().to_string()),
                Some(Err(_)) => {
                    let Some(Err(e)) = base.next() else {
                        unreachable!("peeked")
                    };
                    return Err(StoreError::from(e).into());
                }
                None => None,
            };
            let over_key = over.peek().map(|(k, _)| k.as_str());
            let take_over = match (&base_key, over_key) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(b), Some(o)) => o <= b.as_str(),
            };
            if take_over {
                let (k, v) = over.next().expect("peeked");
                if base_key.as_deref() == Some(k.as_str()) {
                    base.next();
                }
                if !k.starts_with(prefix) {
                    break;
                }
                let Some(v) = v else { continue };
                seen += 1;
                if !visit(k, v) {
                    break;
                }
            } else {
                let Some(Ok((k, v))) = base.next() else {
                    unreachable!("peeked")
                };
                if !k.value().starts_with(prefix) {
                    break;
                }
                seen += 1;
                if !visit(k.value(), v.value()) {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl State for OverlayState<'_, '_> {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.overlay.bytes += key.len() + value.len();
        self.overlay
            .changes
            .insert(key.to_string(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, StateError> {
        let existed = match self.overlay.changes.get(key) {
            Some(v) => v.is_some(),
            None => self.table.get(key).map_err(StoreError::from)?.is_some(),
        };
        if existed {
            self.overlay.bytes += key.len();
            self.overlay.changes.insert(key.to_string(), None);
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esc_state::MemState;
    use proptest::prelude::*;

    const T: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        Flush,
        Scan {
            prefix: u8,
            after: Option<u8>,
            limit: u8,
            stop_after: u8,
        },
        Get(u8),
    }

    /// Keys share prefixes ("k1", "k12", ...) so that scans cross the
    /// prefix boundary and meet keys on both sides of the merge.
    fn key(k: u8) -> String {
        format!("k{}", k % 24)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => any::<u8>().prop_map(Op::Delete),
            1 => Just(Op::Flush),
            3 => (any::<u8>(), any::<Option<u8>>(), 0u8..8, 0u8..8).prop_map(
                |(prefix, after, limit, stop_after)| Op::Scan { prefix, after, limit, stop_after }
            ),
            1 => any::<u8>().prop_map(Op::Get),
        ]
    }

    fn scan_all(
        s: &dyn StateRead,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        stop_after: usize,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        s.scan(prefix, after, limit, &mut |k, v| {
            out.push((k.to_string(), v.to_vec()));
            out.len() < stop_after.max(1)
        })
        .unwrap();
        out
    }

    proptest! {
        /// The overlay over a table reads, scans and (after a flush)
        /// stores exactly what a plain map given the same changes holds,
        /// and the kept digest is the digest of the items.
        #[test]
        fn the_overlay_behaves_as_the_map_written_through(
            initial in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..20),
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let db = redb::Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .unwrap();
            let mut model = MemState::default();
            let mut digest = Digest::default();
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(T).unwrap();
                let mut overlay = Overlay::default();
                for (k, v) in &initial {
                    OverlayState { table: &table, overlay: &mut overlay }.put(&key(*k), &[*v]).unwrap();
                    model.put(&key(*k), &[*v]).unwrap();
                }
                overlay.flush(&mut table, &mut digest).unwrap();
                for op in ops {
                    let mut st = OverlayState { table: &table, overlay: &mut overlay };
                    match op {
                        Op::Put(k, v) => {
                            st.put(&key(k), &[v]).unwrap();
                            model.put(&key(k), &[v]).unwrap();
                        }
                        Op::Delete(k) => {
                            prop_assert_eq!(st.delete(&key(k)).unwrap(), model.delete(&key(k)).unwrap());
                        }
                        Op::Get(k) => {
                            prop_assert_eq!(st.get(&key(k)).unwrap(), model.get(&key(k)).unwrap());
                        }
                        Op::Scan { prefix, after, limit, stop_after } => {
                            let p = format!("k{}", prefix % 3).replace("k0", "k");
                            let a = after.map(key);
                            prop_assert_eq!(
                                scan_all(&st, &p, a.as_deref(), limit as usize, stop_after as usize),
                                scan_all(&model, &p, a.as_deref(), limit as usize, stop_after as usize)
                            );
                        }
                        Op::Flush => overlay.flush(&mut table, &mut digest).unwrap(),
                    }
                }
                overlay.flush(&mut table, &mut digest).unwrap();
                let stored: Vec<(String, Vec<u8>)> = table
                    .iter()
                    .unwrap()
                    .map(|i| {
                        let (k, v) = i.unwrap();
                        (k.value().to_string(), v.value().to_vec())
                    })
                    .collect();
                let want: Vec<(String, Vec<u8>)> =
                    model.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(&stored, &want);
                let mut fresh = Digest::default();
                for (k, v) in &want {
                    fresh.add(item_hash(k, v));
                }
                prop_assert_eq!(digest, fresh);
            }
        }
    }
}
