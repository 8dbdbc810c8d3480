//! What applying a command answers, and the records the state keeps.

use crate::command::OpMode;
use serde::{Deserialize, Serialize};

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    OpModeSet {
        mode: OpMode,
    },
    TenantCreated {
        name: String,
    },
    /// A deployment's monitoring turned on or off.
    MonitoringSet {
        deployment: String,
        enabled: bool,
    },
    /// Accepted: the operation runs on the primary, step by step.
    OperationStarted {
        op_id: String,
        deployment: String,
        /// COMPLETED already when there was no VM to touch.
        state: crate::model::OperationState,
    },
    CallbacksDelivered {
        removed: usize,
    },
    /// A FAILED_TEMP operation retried (PROCESSING again) or failed.
    OperationControlled {
        op_id: String,
        state: crate::model::OperationState,
    },
    StepRecorded {
        op_id: String,
        state: crate::model::OperationState,
    },
    /// An API account created or changed.
    UserSet {
        name: String,
        role: crate::accounts::UserRole,
        created: bool,
    },
    UserDeleted {
        name: String,
    },
    /// Nothing changed, and why.
    Refused {
        refused: Refused,
    },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refused {
    #[error("deployment {name:?} already exists")]
    DeploymentExists { name: String },
    #[error("no deployment {name:?}")]
    NoSuchDeployment { name: String },
    #[error("tenant {name:?} already exists")]
    TenantExists { name: String },
    #[error("no tenant {name:?}: create it first")]
    NoSuchTenant { name: String },
    #[error("deployment {deployment:?} has operation {op_id} in progress: wait for it, or retry, roll back or fail it")]
    OperationInProgress { deployment: String, op_id: String },
    #[error("deployment {deployment:?} has no VM {vm:?} (a VM is named by its server name, as `GET /v0/deployments/{deployment}` lists it)")]
    NoSuchVm { deployment: String, vm: String },
    #[error("deployment {deployment:?} is {state}: {what}")]
    WrongState {
        deployment: String,
        state: String,
        what: String,
    },
    #[error("user {name:?} already exists: `escadm user passwd` changes its password")]
    UserExists { name: String },
    #[error("no user {name:?}")]
    NoSuchUser { name: String },
    #[error("no operation {op_id}")]
    NoSuchOperation { op_id: String },
    #[error("operation {op_id} is {state}: only a FAILED_TEMP operation can be retried, rolled back or failed")]
    NotFailedTemp { op_id: String, state: String },
    /// The key of an earlier command, for a different request.
    #[error("Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The command fails its validation (it reached the log by another
    /// path than the API's checks).
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// What the proposer of a command is answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Transaction id of the request that first produced this outcome (a
    /// resend under the same idempotency key gets the first one's).
    pub tid: String,
    pub outcome: Outcome,
}

/// The record kept under an idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub answer: Answer,
}

/// One entry of the event outbox; its id is the log index that produced it,
/// the same on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// 1, 2, 3, ...: every event ever emitted, in order, so a reader sees
    /// a gap (events dropped from the bounded outbox before it read them).
    #[serde(default)]
    pub seq: u64,
    pub at_ms: u64,
    pub tid: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    OpModeChanged {
        mode: OpMode,
    },
    /// An ESC-style notification (`escEvent`): `VM_DEPLOYED`, `VM_ALIVE`,
    /// `SERVICE_ALIVE`, `VM_UNDEPLOYED`, `SERVICE_UNDEPLOYED`, failures.
    Esc {
        event: String,
        depname: String,
        tenant: String,
        vm_group: Option<String>,
        vm_target: Option<String>,
        status: String,
        message: String,
    },
}
