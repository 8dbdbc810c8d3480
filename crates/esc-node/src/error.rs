//! Why the node could not start or stopped: one typed error for the
//! library's callers (`escd` prints it; style principle 5: say what was
//! wrong and what to do). A leaf module.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] esc_config::ConfigError),
    #[error("cannot open the store in {}: {source}", dir.display())]
    Store {
        dir: PathBuf,
        #[source]
        source: esc_store::StoreError,
    },
    #[error("the store failed: {0}; the node stopped (a restart recovers the store at open)")]
    StoreFailed(String),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("another escd is already running with home {} (its admin socket answers)", home.display())]
    AlreadyRunning { home: PathBuf },
    /// A file or directory the node needs (the path is in `what`).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call without a better context (socket options, threads).
    #[error("system call: {0}")]
    Os(#[from] std::io::Error),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the [vrrp] section needs a raw socket (run as root / CAP_NET_RAW): {0}")]
    RawSocket(#[source] std::io::Error),
    #[error("interface {0} has no IPv4 address to send VRRP from")]
    NoAddress(String),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("the witness needs the pair's shared secret: set replication.secret or replication.secret_file")]
    NoSecret,
    #[error("{} is not a witness state file: {source}", path.display())]
    WitnessState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("logging already initialised: {0}")]
    Logging(String),
    #[error("a task panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
