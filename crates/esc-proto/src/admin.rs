//! The admin socket `$ESC_HOME/escd.sock`: one JSON request per line, one
//! JSON answer per line. The socket file is mode 0600, so only the daemon's
//! user (root in production) may drive the node.

use crate::status::{HealthReport, InFlight, NodeStatus};
use esc_domain::accounts::{UserEntry, UserRole};
use esc_domain::OpMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Socket file name inside the node home.
pub const SOCKET_FILE: &str = "escd.sock";
/// Longest accepted request line.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Longest accepted answer line (a status is a few KiB).
pub const ANSWER_BYTES_MAX: usize = 4 << 20;
/// Deadline for the node to answer most requests.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// What a client waits beyond the node's own deadlines, so that the node's
/// answer (say, "did not commit in time: check ...") arrives before the
/// client gives up. Health checks add up to three check deadlines.
pub const CLIENT_MARGIN: Duration = Duration::from_secs(8);

/// A command from `escadm`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// The node's status; `verbose` adds the state summary, `health` runs
    /// the health checks (a durable probe write: not for tight polling).
    Status {
        verbose: bool,
        #[serde(default)]
        health: bool,
    },
    Health,
    /// Validate esc.toml and restart with it.
    Reload,
    /// Set the replicated operation mode; with `ipt_check`, entering
    /// maintenance is refused while transactions are in progress.
    OpModeSet {
        mode: OpMode,
        ipt_check: bool,
    },
    OpModeShow,
    /// Northbound transactions in progress.
    IpTrans,
    /// Promote; refused when it could lose writes or make two primaries,
    /// unless `force` (the operator takes that risk knowingly).
    Promote {
        reason: String,
        #[serde(default)]
        force: bool,
    },
    Demote {
        reason: String,
    },
    /// Planned handover to the in-sync standby (failback is the same command).
    Switchover,
    /// Lab only (`[debug] allow_fault_injection`): the service task stops
    /// answering for `seconds` while the HA agent lives.
    Hang {
        seconds: u64,
    },
    /// Lab only: the northbound API dies (stops listening, closes its
    /// connections) while the HA agent and the replication core live.
    KillApi,
    /// A new API account (on the primary; replicated). `escadm` hashes
    /// the password: only its Argon2id hash crosses the socket.
    UserAdd {
        name: String,
        role: UserRole,
        password_hash: String,
    },
    /// A new password (its hash) for an account.
    UserPasswd {
        name: String,
        password_hash: String,
    },
    UserDel {
        name: String,
    },
    /// The accounts and their roles (either node).
    UserList,
}

impl AdminRequest {
    /// Whether the node logs the request line as it came (every request
    /// that changes something, but those carrying a password hash: those
    /// are logged by what they do).
    pub fn logged_verbatim(&self) -> bool {
        !matches!(
            self,
            AdminRequest::Status { .. }
                | AdminRequest::Health
                | AdminRequest::OpModeShow
                | AdminRequest::IpTrans
                | AdminRequest::UserList
                | AdminRequest::UserAdd { .. }
                | AdminRequest::UserPasswd { .. }
        )
    }
}

impl AdminRequest {
    /// How long a client waits for the answer: the node's deadline for
    /// this request (a switchover waits for the standby up to
    /// `switchover`, the node's `ha.switchover_timeout_ms`) plus
    /// [`CLIENT_MARGIN`].
    pub fn timeout(&self, switchover: Duration) -> Duration {
        let node = match self {
            AdminRequest::Switchover
            | AdminRequest::Promote { .. }
            | AdminRequest::Demote { .. } => ANSWER_TIMEOUT + switchover,
            _ => ANSWER_TIMEOUT,
        };
        node + CLIENT_MARGIN
    }
}

/// The node's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminResponse {
    /// Done; what to tell the operator.
    Done {
        message: String,
    },
    Status {
        status: Box<NodeStatus>,
    },
    Health {
        report: HealthReport,
    },
    OpMode {
        mode: OpMode,
    },
    Transactions {
        transactions: BTreeMap<String, InFlight>,
    },
    /// The new configuration is valid; the node restarts with it once this
    /// answer is sent.
    Reloading {
        message: String,
    },
    /// The API's replicated accounts, and the node's bootstrap account.
    Users {
        users: Vec<UserEntry>,
        bootstrap: String,
    },
    /// Nothing was done, and why (with what to do).
    Refused {
        message: String,
    },
}

impl AdminResponse {
    pub fn done(message: impl Into<String>) -> AdminResponse {
        AdminResponse::Done {
            message: message.into(),
        }
    }

    pub fn refused(message: impl Into<String>) -> AdminResponse {
        AdminResponse::Refused {
            message: message.into(),
        }
    }
}

/// Why `escadm` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach escd at {path}: {source} (is escd running with this --home? are you root?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("escd did not answer in time ({0:?})")]
    Timeout(Duration),
    #[error("escd closed the admin connection without answering")]
    Closed,
    #[error("admin connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "escd answered something this escadm does not understand ({0}): are both the same version?"
    )]
    Answer(serde_json::Error),
}

/// The socket path of a node home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// One request, one answer (blocking; `escadm` needs no runtime).
pub fn request(
    home: &Path,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse, ClientError> {
    let path = socket_path(home);
    let stream =
        UnixStream::connect(&path).map_err(|source| ClientError::Connect { path, source })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).expect("a request serializes");
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = Vec::new();
    let mut rd = BufReader::new(&stream).take(ANSWER_BYTES_MAX as u64);
    match rd.read_until(b'\n', &mut answer) {
        Ok(0) => Err(ClientError::Closed),
        Ok(_) => serde_json::from_slice(&answer).map_err(ClientError::Answer),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(ClientError::Timeout(timeout))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_and_unknown_fields_are_refused() {
        let reqs = [
            AdminRequest::Status {
                verbose: true,
                health: true,
            },
            AdminRequest::OpModeSet {
                mode: OpMode::Maintenance,
                ipt_check: true,
            },
            AdminRequest::Promote {
                reason: "r".into(),
                force: false,
            },
            AdminRequest::KillApi,
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<AdminRequest>(&line).unwrap(), r);
        }
        assert!(
            serde_json::from_str::<AdminRequest>(r#"{"cmd":"status","verbose":true,"x":1}"#)
                .is_err()
        );
        let a = AdminResponse::Reloading {
            message: "m".into(),
        };
        let line = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<AdminResponse>(&line).unwrap(), a);
    }

    #[test]
    fn a_node_that_is_not_there_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(dir.path(), &AdminRequest::Health, ANSWER_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("cannot reach escd"), "{e}");
    }
}
