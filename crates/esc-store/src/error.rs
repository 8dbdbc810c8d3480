//! The store's one error type, shared by the redb side and the segment log.

use esc_state::{ApplyError, StateError};
use esc_wire::entry::EntryError;

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
         {reads}): move the data directory away and restart; the node rejoins as standby \
         and copies the state from its peer"
    )]
    Format { found: u64, reads: u64 },
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
