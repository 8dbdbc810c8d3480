//! Commands carried in log entries and their deterministic application.
//!
//! A command holds everything its application needs (ids, timestamps), so
//! every node that applies the same log reaches the same state: nothing here
//! reads a clock or a random source. An idempotency key makes a command apply
//! at most once: the first outcome is stored under the key, replicated with
//! the state, and returned for every resend (esc-facts: "resending is safe").
//! A later command with the key but another fingerprint (a different
//! request) does nothing and gets 422 [`IDEMPOTENCY_KEY_REUSED`].

use serde::{Deserialize, Serialize};

/// Longest deployment name.
pub const NAME_LEN_MAX: usize = 255;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// The error of a request whose idempotency key was already used for a
/// different request (HTTP 422).
pub const IDEMPOTENCY_KEY_REUSED: &str = "Idempotency-Key was already used for a different request";

/// One replicated change, the payload of a log entry (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Transaction id of the request that proposed it.
    pub tid: String,
    /// Client-chosen key; a resend with the same key gets the first outcome.
    pub idempotency_key: Option<String>,
    /// Hash of the request, to refuse a key reused for a different request.
    pub fingerprint: String,
    /// Proposal time on the primary (milliseconds since the Unix epoch).
    pub at_ms: u64,
    pub op: Op,
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateDeployment {
        id: String,
        name: String,
        spec: serde_json::Value,
    },
    DeleteDeployment {
        name: String,
    },
    /// The operation mode (esc-facts: `escadm op_mode`); replicated, so it
    /// survives a switchover.
    SetOpMode {
        mode: OpMode,
    },
}

/// Operation mode: in maintenance, northbound writes are refused
/// ("unavailable temporarily") and transactions in progress finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpMode {
    Operation,
    Maintenance,
}

impl OpMode {
    /// As `escadm op_mode show` prints it.
    pub fn word(&self) -> &'static str {
        match self {
            OpMode::Operation => "OPERATION",
            OpMode::Maintenance => "MAINTENANCE",
        }
    }
}

/// A deployment as stored and as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub name: String,
    pub created_at_ms: u64,
    pub tid: String,
    pub spec: serde_json::Value,
}

/// The result of applying a command: what the client is answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: u16,
    pub body: serde_json::Value,
    /// Transaction id of the request that first produced this outcome.
    pub tid: String,
}

/// The record kept under an idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub outcome: Outcome,
}

impl Outcome {
    pub fn error(status: u16, tid: &str, message: String) -> Outcome {
        Outcome {
            status,
            body: serde_json::json!({ "error": message }),
            tid: tid.to_string(),
        }
    }
}
