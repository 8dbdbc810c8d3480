//! What an OpenStack call can fail with, by who must act.

/// A failed call. [`Error::retryable`] says whether trying again later can
/// help (the service or the network), or whether the request itself is
/// wrong (the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 401: the credentials were refused (a token request), or a fresh
    /// token was refused too.
    #[error("the VIM refused the credentials: {0}")]
    Unauthorized(String),
    /// 403 or 413: not allowed, or over quota.
    #[error("the VIM refused the request: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the VIM refused the request as invalid: {0}")]
    BadRequest(String),
    /// 409: the resource's state does not allow it now.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 5xx: the service failed.
    #[error("the VIM failed (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// The call did not complete (connection refused or reset, timeout).
    #[error("the VIM is unreachable: {0}")]
    Transport(String),
    /// The answer is not what the API reference says.
    #[error("unexpected answer from the VIM: {0}")]
    Protocol(String),
    /// The token's catalog has no endpoint of this type (and region).
    #[error("the VIM's catalog has no {0} endpoint")]
    NoEndpoint(&'static str),
}

impl Error {
    /// Trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Server { .. } | Error::Transport(_))
    }

    /// The error of an HTTP answer with `status` and `body`: the message is
    /// the body's `message` (Nova: `{"badRequest": {"message": ..}}`,
    /// Keystone: `{"error": {"message": ..}}`, Neutron: `{"NeutronError":
    /// {"message": ..}}`), or the body itself.
    pub fn from_answer(status: u16, body: &str) -> Error {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.as_object()?
                    .values()
                    .find_map(|inner| inner.get("message")?.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| body.chars().take(300).collect());
        match status {
            400 => Error::BadRequest(message),
            401 => Error::Unauthorized(message),
            403 | 413 => Error::Forbidden(message),
            404 => Error::NotFound(message),
            409 => Error::Conflict(message),
            500..=599 => Error::Server { status, message },
            _ => Error::Protocol(format!("HTTP {status}: {message}")),
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Error {
        if e.is_decode() {
            Error::Protocol(e.to_string())
        } else {
            Error::Transport(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_each_services_error_shape() {
        let nova = r#"{"badRequest": {"code": 400, "message": "Flavor 9 could not be found."}}"#;
        assert_eq!(
            Error::from_answer(400, nova),
            Error::BadRequest("Flavor 9 could not be found.".into())
        );
        let keystone = r#"{"error": {"code": 401, "title": "Unauthorized", "message": "no"}}"#;
        assert_eq!(
            Error::from_answer(401, keystone),
            Error::Unauthorized("no".into())
        );
        assert!(Error::from_answer(503, "busy").retryable());
        assert!(!Error::from_answer(409, "{}").retryable());
    }
}
