//! The validation primitives every command and model shares (a leaf: it
//! imports nothing of this crate): names, idempotency keys, and the error
//! that names the field.

/// Longest name (deployment, tenant, group, ...).
pub const NAME_LEN_MAX: usize = 255;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// A command that must not be proposed; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidCommand {
    pub field: &'static str,
    pub message: String,
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> InvalidCommand {
    InvalidCommand {
        field,
        message: message.into(),
    }
}

/// A deployment name: 1 to [`NAME_LEN_MAX`] letters, digits, `-`, `_`, `.`.
pub fn check_name(name: &str) -> Result<(), InvalidCommand> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err(invalid(
            "name",
            format!("must be 1 to {NAME_LEN_MAX} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(
            "name",
            "may only contain letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

/// An idempotency key: 1 to [`IDEMPOTENCY_KEY_LEN_MAX`] visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), InvalidCommand> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(invalid(
            "Idempotency-Key",
            format!("must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} characters"),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(invalid("Idempotency-Key", "must be visible ASCII"));
    }
    Ok(())
}
