//! Commands carried in log entries, and their validation.
//!
//! A command holds everything its application needs (ids, the proposal
//! time), so every node that applies the same log reaches the same state.
//! Validation runs where a command is built (the northbound, the admin
//! socket) and again in `apply`, so a command that reached the log by
//! another path is refused the same way on every node.

use serde::{Deserialize, Serialize};

use crate::rules::invalid;
pub use crate::rules::{
    check_idempotency_key, check_name, InvalidCommand, IDEMPOTENCY_KEY_LEN_MAX, NAME_LEN_MAX,
};

/// One replicated change, the payload of a log entry (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// The operation mode (esc-facts: `escadm op_mode`); replicated, so it
    /// survives a switchover.
    SetOpMode {
        mode: OpMode,
    },
    /// A tenant (the owner of services).
    CreateTenant {
        tenant: crate::model::Tenant,
    },
    /// A lifecycle operation on the service `deployment` (a deploy creates
    /// it): one at a time per service.
    StartOperation {
        op_id: String,
        deployment: String,
        kind: crate::model::OperationKind,
        /// Where the result is POSTed when the operation settles.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback: Option<String>,
    },
    /// A step's result, proposed by the primary's lifecycle runner.
    RecordStep {
        step: crate::model::Step,
    },
    /// `retry` or `fail` of a FAILED_TEMP operation (SOL 003).
    ControlOperation {
        op_id: String,
        action: crate::model::LcmControl,
    },
    /// Callbacks the primary's notifier delivered (or gave up on).
    CallbacksDelivered {
        op_ids: Vec<String>,
    },
    /// ESC's `DISABLE_MONITOR` / `ENABLE_MONITOR` of a deployment: its VMs
    /// are not probed (nor healed, nor scaled) while disabled.
    SetMonitoring {
        deployment: String,
        enabled: bool,
    },
    /// An API account created (`create_only`: refused if it exists) or
    /// replaced; it carries the password's hash, never the password.
    PutUser {
        user: crate::accounts::User,
        create_only: bool,
    },
    /// A new password hash for an existing account.
    SetPassword {
        name: String,
        password_hash: String,
    },
    DeleteUser {
        name: String,
    },
}

/// Most callbacks one `CallbacksDelivered` clears.
pub const CALLBACKS_PER_COMMAND_MAX: usize = 256;
/// Longest reason a monitor gives for a recovery or a scale.
pub const REASON_LEN_MAX: usize = 1_024;

/// Operation mode: in maintenance, northbound writes are refused
/// ("unavailable temporarily") and transactions in progress finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

impl Op {
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            Op::SetOpMode { .. } | Op::RecordStep { .. } => Ok(()),
            Op::SetMonitoring { deployment, .. } => check_name(deployment),
            Op::PutUser { user, .. } => user.validate(),
            Op::SetPassword {
                name,
                password_hash,
            } => {
                check_name(name)?;
                crate::accounts::check_hash(password_hash)
            }
            Op::DeleteUser { name } => check_name(name),
            Op::CreateTenant { tenant } => tenant
                .validate()
                .map_err(|e| invalid("tenant", e.to_string())),
            Op::ControlOperation { op_id, .. } => {
                if op_id.is_empty() || op_id.len() > 64 {
                    return Err(invalid("op_id", "must be 1 to 64 characters"));
                }
                Ok(())
            }
            Op::CallbacksDelivered { op_ids } => {
                if op_ids.len() > CALLBACKS_PER_COMMAND_MAX {
                    return Err(invalid(
                        "op_ids",
                        format!("at most {CALLBACKS_PER_COMMAND_MAX}"),
                    ));
                }
                Ok(())
            }
            Op::StartOperation {
                op_id,
                deployment,
                kind,
                callback,
            } => {
                if op_id.is_empty() || op_id.len() > 64 {
                    return Err(invalid("op_id", "must be 1 to 64 characters"));
                }
                check_name(deployment)?;
                if let Some(url) = callback {
                    crate::model::check_callback(url)
                        .map_err(|e| invalid("callback", e.message))?;
                }
                match kind {
                    crate::model::OperationKind::Deploy { spec }
                    | crate::model::OperationKind::Update { spec } => {
                        if spec.name != *deployment {
                            return Err(invalid("spec.name", "must be the deployment's name"));
                        }
                        spec.validate().map_err(|e| invalid("spec", e.to_string()))
                    }
                    crate::model::OperationKind::VmAction { vm, .. }
                    | crate::model::OperationKind::Recover { vm, .. } => {
                        if vm.is_empty()
                            || vm.len() > crate::model::SERVER_NAME_LEN_MAX
                            || !vm.bytes().all(|b| b.is_ascii_graphic())
                        {
                            return Err(invalid(
                                "vm",
                                format!(
                                    "a VM's server name: 1 to {} visible ASCII characters",
                                    crate::model::SERVER_NAME_LEN_MAX
                                ),
                            ));
                        }
                        Ok(())
                    }
                    crate::model::OperationKind::Scale { group, reason, .. } => {
                        check_name(group).map_err(|e| invalid("group", e.message))?;
                        if reason.len() > REASON_LEN_MAX {
                            return Err(invalid(
                                "reason",
                                format!("at most {REASON_LEN_MAX} bytes"),
                            ));
                        }
                        Ok(())
                    }
                    crate::model::OperationKind::Undeploy
                    | crate::model::OperationKind::ServiceAction { .. } => Ok(()),
                }
            }
        }
    }

    /// One line for `escadm ip_trans` and the logs.
    pub fn describe(&self) -> String {
        match self {
            Op::SetOpMode { mode } => format!("set operation mode {}", mode.word()),
            Op::CreateTenant { tenant } => format!("create tenant {}", tenant.name),
            Op::PutUser { user, create_only } => format!(
                "{} user {} ({})",
                if *create_only { "add" } else { "set" },
                user.name,
                user.role.word()
            ),
            Op::SetPassword { name, .. } => format!("change the password of user {name}"),
            Op::DeleteUser { name } => format!("delete user {name}"),
            Op::SetMonitoring {
                deployment,
                enabled,
            } => format!(
                "{} monitoring of {deployment}",
                if *enabled { "enable" } else { "disable" }
            ),
            Op::StartOperation {
                deployment, kind, ..
            } => match kind {
                crate::model::OperationKind::VmAction { vm, action } => {
                    format!("{} VM {vm} of {deployment}", action.word())
                }
                k => format!("{} {deployment}", k.word()),
            },
            Op::RecordStep { .. } => "record a lifecycle step".into(),
            Op::CallbacksDelivered { op_ids } => format!("{} callback(s) delivered", op_ids.len()),
            Op::ControlOperation { op_id, action } => {
                format!("{action:?} operation {op_id}").to_lowercase()
            }
        }
    }
}

impl Command {
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        if let Some(k) = &self.idempotency_key {
            check_idempotency_key(k)?;
        }
        self.op.validate()
    }

    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command serializes to JSON")
    }

    pub fn from_payload(payload: &[u8]) -> Result<Command, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
