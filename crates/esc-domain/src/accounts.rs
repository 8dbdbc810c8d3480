//! The API's accounts (issue 14, item 3): users with a role and an Argon2
//! password hash, kept in the replicated state so either node admits them.
//!
//! Only the hash reaches a command (the PHC string of RFC 9106's Argon2id,
//! salted): `escadm` hashes before it sends, the API hashes before it
//! proposes, so no password is ever in the log, the store or a snapshot.
//! The northbound's bootstrap account (`api.user`, its password from
//! `esc.toml` or the generated `api_password` file) is not one of these:
//! it is each node's own, and a user of its name is refused.
//!
//! Applying the account commands is `apply`'s (`put_user` and the rest).

use crate::rules::{check_name, invalid, InvalidCommand};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most users (a bound on the table, as on every list).
pub const USERS_MAX: u64 = 10_000;
/// Longest password hash (an Argon2 PHC string is about 100 characters).
pub const PASSWORD_HASH_LEN_MAX: usize = 512;
/// Shortest password the API and `escadm` accept (as `api.password`).
pub const PASSWORD_LEN_MIN: usize = 12;
/// Longest password (Argon2 takes any length; a bound on the work).
pub const PASSWORD_LEN_MAX: usize = 1_024;

/// What a user may do. Ordered: each role may do what the ones below may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Reads only: deployments, operations, events, health.
    Viewer,
    /// Lifecycle operations besides: deploy, update, undeploy, VM and
    /// deployment actions, operation control.
    Operator,
    /// Everything: tenants and users besides.
    Admin,
}

impl UserRole {
    pub fn word(&self) -> &'static str {
        match self {
            UserRole::Viewer => "viewer",
            UserRole::Operator => "operator",
            UserRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<UserRole> {
        match s {
            "viewer" => Some(UserRole::Viewer),
            "operator" => Some(UserRole::Operator),
            "admin" => Some(UserRole::Admin),
            _ => None,
        }
    }
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: UserRole,
    /// The password's Argon2id hash, a PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
}

/// A user as listed: never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserEntry {
    pub name: String,
    pub role: UserRole,
}

impl User {
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        check_name(&self.name)?;
        check_hash(&self.password_hash)
    }

    pub fn entry(&self) -> UserEntry {
        UserEntry {
            name: self.name.clone(),
            role: self.role,
        }
    }
}

/// The shape of a PHC string of Argon2id; the API and `escadm` make them,
/// this catches a command that carries a password instead of its hash.
pub fn check_hash(hash: &str) -> Result<(), InvalidCommand> {
    if !hash.starts_with("$argon2id$")
        || hash.len() > PASSWORD_HASH_LEN_MAX
        || !hash.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            "password_hash",
            "must be an Argon2id PHC string ($argon2id$v=19$...)",
        ));
    }
    Ok(())
}

/// A password the API or `escadm` will hash: long enough, bounded, and
/// printable (it travels in an HTTP basic header).
pub fn check_password(password: &str) -> Result<(), InvalidCommand> {
    let n = password.chars().count();
    if n < PASSWORD_LEN_MIN || password.len() > PASSWORD_LEN_MAX {
        return Err(invalid(
            "password",
            format!("must be {PASSWORD_LEN_MIN} to {PASSWORD_LEN_MAX} characters"),
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(invalid("password", "may not contain control characters"));
    }
    Ok(())
}

/// The Argon2id hash of `password` with `salt` (16 random bytes from the
/// caller: this crate does no I/O), as a PHC string; Argon2's default
/// parameters (m = 19 MiB, t = 2, p = 1: OWASP's recommendation).
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, InvalidCommand> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(salt).map_err(|e| invalid("salt", e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| invalid("password", e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (false for a hash that
/// does not parse). Takes tens of milliseconds by design.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_their_password_only() {
        let h = hash_password("a-long-enough-password", &[7; 16]).unwrap();
        assert!(check_hash(&h).is_ok(), "{h}");
        assert!(verify_password("a-long-enough-password", &h));
        assert!(!verify_password("a-long-enough-passwore", &h));
        assert!(!verify_password(
            "a-long-enough-password",
            "$argon2id$nonsense"
        ));
        assert_ne!(
            h,
            hash_password("a-long-enough-password", &[8; 16]).unwrap()
        );
        assert!(check_hash("a-long-enough-password").is_err());
    }

    #[test]
    fn passwords_are_checked() {
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password("has a\nnewline in it").is_err());
        assert!(check_password(&"x".repeat(PASSWORD_LEN_MAX + 1)).is_err());
        assert!(UserRole::Admin > UserRole::Operator && UserRole::Operator > UserRole::Viewer);
    }
}
