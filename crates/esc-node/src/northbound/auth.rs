//! Who may call the API, and how often (issue 14, item 3): HTTP basic
//! authentication (RFC 7617) against the node's bootstrap account and the
//! replicated accounts (`esc_domain::accounts`), the role each route needs,
//! failed logins throttled per source address, and a write budget per user.
//!
//! - **The bootstrap account** (`api.user`, its password from `esc.toml` or
//!   the generated `api_password` file) is an admin, checked by comparing
//!   SHA-256 digests in constant time: it is the node's own secret, on its
//!   disk already, and costs nothing per request (the benchmarks' clients
//!   use it).
//! - **Replicated accounts** are checked against their Argon2id hash. A
//!   verification takes tens of milliseconds on purpose, so a success is
//!   remembered: the digest of (a per-process key, the user, the password,
//!   the stored hash) goes into a bounded set, and the next request with the
//!   same credentials costs one store read and one SHA-256. A changed
//!   password or a deleted user changes or removes the stored hash, so a
//!   remembered success no longer matches: revocation is immediate. Fresh
//!   verifications run on the blocking pool, at most [`VERIFY_CONCURRENCY`]
//!   at once; an unknown user is verified against a dummy hash, so the time
//!   of an answer does not tell which names exist.
//! - **Failed logins** (credentials given and wrong) are logged with the
//!   user and the source address, never the password, and counted per
//!   source. From the [`FAILURES_BEFORE_DELAY`]th within
//!   [`FAILURE_WINDOW`], every login from that address waits
//!   `api.login_delay_ms` ([`LOGIN_DELAY`] by default) before it is checked, at most [`THROTTLED_MAX`] of them
//!   at once across all sources (more get `429`): guessing costs the guesser
//!   time, not the node CPU.
//! - **Roles**: a read needs `viewer`, a lifecycle write `operator`, tenants
//!   and users `admin` ([`required`]); short of it, `403`.
//! - **Write budget**: a token bucket per user, `api.writes_per_user_per_s`
//!   refilled per second with as many in reserve; past it, `429` with
//!   `Retry-After`.

use crate::metrics::Counters;
use crate::shared::Shared;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use esc_domain::accounts::UserRole;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{warn, Instrument};

/// Argon2 verifications at once (each holds a core for tens of ms).
pub const VERIFY_CONCURRENCY: usize = 2;
/// Failed logins from one address within [`FAILURE_WINDOW`] after which
/// its logins are delayed: the tenth and later wait.
pub const FAILURES_BEFORE_DELAY: usize = 9;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a throttled source's login waits before it is checked, by
/// default (`api.login_delay_ms`).
pub const LOGIN_DELAY: Duration = Duration::from_secs(3);
/// Throttled logins waiting at once, across all sources.
pub const THROTTLED_MAX: usize = 32;
/// Source addresses whose failures are remembered (the oldest are dropped).
pub const SOURCES_MAX: usize = 16_384;
/// Remembered successful verifications (the set is emptied when full).
pub const VERIFIED_MAX: usize = 4_096;
/// Longest user name in a basic header (as `esc_domain`'s names).
const USER_LEN_MAX: usize = esc_domain::rules::NAME_LEN_MAX;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: UserRole,
}

/// The API's authentication state (one per listener set, shared by the
/// REST and health routers).
pub struct Auth {
    bootstrap_user: String,
    bootstrap_digest: [u8; 32],
    /// Keys the remembered verifications: never leaves the process.
    cache_key: [u8; 32],
    verified: Mutex<HashSet<[u8; 32]>>,
    verifying: Semaphore,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    throttled: Semaphore,
    budgets: Mutex<HashMap<String, Bucket>>,
    writes_per_s: f64,
    login_delay: Duration,
}

/// A user's write budget (a token bucket).
struct Bucket {
    tokens: f64,
    at: Instant,
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A hash no password matches, for unknown users (same cost as a real one).
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let pw: [u8; 16] = rand::random();
        esc_domain::accounts::hash_password(&hex::encode(pw), &rand::random())
            .expect("hashing a fixed-size password")
    })
}

/// `user:password` of a basic `Authorization` header; None when malformed.
pub fn basic_credentials(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Some(None);
    };
    let v = v.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (user, pw) = s.split_once(':')?;
    Some(Some((user.to_string(), pw.to_string())))
}

/// The role a request needs (architecture section 7, "Accounts").
pub fn required(method: &Method, path: &str) -> UserRole {
    if method == Method::GET || method == Method::HEAD {
        if path.starts_with("/v0/users") {
            UserRole::Admin
        } else {
            UserRole::Viewer
        }
    } else if path.starts_with("/v0/users") || path.starts_with("/v0/tenants") {
        UserRole::Admin
    } else {
        UserRole::Operator
    }
}

// Here, with `error`, so that the guard does not import the routes it
// guards (`openapi` re-exports it).
/// Every error the API answers, whatever its status: `error` says what
/// is wrong and what to do; a `503` of a node that cannot take writes
/// says its `role`, one in maintenance its `op_mode`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// `primary` or `standby`: a standby answers writes `503`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^(primary|standby)$")]
    pub role: Option<esc_repl::Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_mode: Option<esc_domain::OpMode>,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: message.into(),
            role: None,
            op_mode: None,
        }
    }
}

/// The API's error shape, `{"error": ...}` (`ErrorBody`).
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    use axum::response::IntoResponse;
    (status, axum::Json(ErrorBody::new(message))).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"esc\", charset=\"UTF-8\""),
    );
    r
}

fn too_many(message: String, retry_after_s: u64) -> Response {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
    r
}

impl Auth {
    /// `writes_per_s`: `api.writes_per_user_per_s`; `login_delay`:
    /// `api.login_delay_ms`.
    pub fn new(
        bootstrap_user: &str,
        bootstrap_password: &str,
        writes_per_s: u32,
        login_delay: Duration,
    ) -> Auth {
        Auth {
            bootstrap_user: bootstrap_user.to_string(),
            bootstrap_digest: sha256(&[bootstrap_password.as_bytes()]),
            cache_key: rand::random(),
            verified: Mutex::new(HashSet::new()),
            verifying: Semaphore::new(VERIFY_CONCURRENCY),
            failures: Mutex::new(HashMap::new()),
            throttled: Semaphore::new(THROTTLED_MAX),
            budgets: Mutex::new(HashMap::new()),
            writes_per_s: f64::from(writes_per_s.max(1)),
            login_delay,
        }
    }

    /// Failed logins from `ip` within the window, as of `now`.
    fn recent_failures(&self, ip: IpAddr, now: Instant) -> usize {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match f.get_mut(&ip) {
            Some(q) => {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
                {
                    q.pop_front();
                }
                q.len()
            }
            None => 0,
        }
    }

    fn record_failure(&self, ip: IpAddr, now: Instant) -> usize {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= SOURCES_MAX && !f.contains_key(&ip) {
            f.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) <= FAILURE_WINDOW)
            });
            if f.len() >= SOURCES_MAX {
                if let Some(k) = f.keys().next().copied() {
                    f.remove(&k);
                }
            }
        }
        let q = f.entry(ip).or_default();
        q.push_back(now);
        // Only the count within the window matters, and it triggers at
        // FAILURES_BEFORE_DELAY: a few more than that is enough to keep.
        while q.len() > FAILURES_BEFORE_DELAY * 2 {
            q.pop_front();
        }
        q.len()
    }

    /// Checks `user`/`password`: the bootstrap account, or a replicated one.
    async fn check(&self, shared: &Shared, user: &str, password: &str) -> Option<UserRole> {
        if user == self.bootstrap_user {
            let ok = same(&sha256(&[password.as_bytes()]), &self.bootstrap_digest);
            return ok.then_some(UserRole::Admin);
        }
        if user.is_empty() || user.len() > USER_LEN_MAX {
            return None;
        }
        let store = shared.store.clone();
        let name = user.to_string();
        let stored = tokio::task::spawn_blocking(move || {
            let r = store.reader().ok()?;
            esc_domain::query::user(&r, &name).ok().flatten()
        })
        .await
        .ok()
        .flatten();
        let (hash, role) = match &stored {
            Some(u) => (u.password_hash.clone(), Some(u.role)),
            None => (dummy_hash().to_string(), None),
        };
        let key = sha256(&[
            &self.cache_key,
            user.as_bytes(),
            password.as_bytes(),
            hash.as_bytes(),
        ]);
        if role.is_some()
            && self
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        {
            return role;
        }
        let _permit = self.verifying.acquire().await.ok()?;
        let pw = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || esc_domain::accounts::verify_password(&pw, &hash))
                .await
                .unwrap_or(false);
        if ok && role.is_some() {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() >= VERIFIED_MAX {
                v.clear();
            }
            v.insert(key);
        }
        role.filter(|_| ok)
    }

    /// Authenticates a request from `peer`: the caller, or the answer.
    pub async fn authenticate(
        &self,
        shared: &Shared,
        counters: &Counters,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Principal, Response> {
        let ip = peer.ip().to_canonical();
        let creds = match basic_credentials(headers) {
            Some(Some(c)) => Some(c),
            Some(None) => return Err(unauthorized("credentials required (HTTP basic)")),
            None => None,
        };
        let _held = if self.recent_failures(ip, Instant::now()) >= FAILURES_BEFORE_DELAY {
            Counters::bump(&counters.logins_throttled);
            let Ok(permit) = self.throttled.try_acquire() else {
                return Err(too_many(
                    format!("too many failed logins from {ip}: wait a minute"),
                    FAILURE_WINDOW.as_secs(),
                ));
            };
            tokio::time::sleep(self.login_delay).await;
            Some(permit)
        } else {
            None
        };
        let (user, role) = match creds {
            Some((user, pw)) => {
                let role = self.check(shared, &user, &pw).await;
                (user, role)
            }
            None => (String::new(), None),
        };
        match role {
            Some(role) => Ok(Principal { name: user, role }),
            None => {
                Counters::bump(&counters.login_failures);
                let n = self.record_failure(ip, Instant::now());
                // The user as given (escaped, bounded), never the password.
                let shown: String = user.chars().take(64).collect();
                warn!(user = ?shown, source = %ip, failures_in_window = n, "failed login");
                Err(unauthorized("wrong user or password"))
            }
        }
    }

    /// Takes one write from `user`'s budget, or says how long to wait.
    pub fn spend_write(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut b = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.writes_per_s;
        let bucket = b.entry(user.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * cap).min(cap);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / cap))
        }
    }
}

/// What the middleware needs.
#[derive(Clone)]
pub struct Guard {
    pub shared: Shared,
    pub auth: Arc<Auth>,
}

/// The header of a write's transaction id (ESC's `ESC-Transaction-Id`).
pub const TID_HEADER: &str = "esc-transaction-id";

/// The middleware in front of every route: authentication, the route's
/// role, the write budget. Runs before any handler reads a body.
///
/// A write gets its transaction id here, so that a refused one answers
/// with it as every write does; the handler finds it in the request's
/// headers (set here, whatever the client sent).
pub async fn guard(
    State(g): State<Guard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let need = required(req.method(), req.uri().path());
    let tid = (need >= UserRole::Operator).then(|| uuid::Uuid::new_v4().to_string());
    let stamp = |mut r: Response| {
        if let Some(v) = tid.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            r.headers_mut().insert(TID_HEADER, v);
        }
        r
    };
    let counters = g.shared.counters.clone();
    let who = match g
        .auth
        .authenticate(&g.shared, &counters, req.headers(), peer)
        .await
    {
        Ok(p) => p,
        Err(r) => return stamp(r),
    };
    if who.role < need {
        return stamp(error(
            StatusCode::FORBIDDEN,
            format!(
                "user {:?} is {} {}: this needs the {} role",
                who.name,
                if who.role == UserRole::Admin {
                    "an"
                } else {
                    "a"
                },
                who.role.word(),
                need.word()
            ),
        ));
    }
    if let Some(t) = &tid {
        if let Err(wait) = g.auth.spend_write(&who.name, Instant::now()) {
            Counters::bump(&counters.writes_over_budget);
            return stamp(too_many(
                format!(
                    "user {:?} is past its write budget ({} per second, api.writes_per_user_per_s): retry later",
                    who.name, g.auth.writes_per_s
                ),
                wait.as_secs_f64().ceil() as u64,
            ));
        }
        if let Ok(v) = HeaderValue::from_str(t) {
            req.headers_mut().insert(TID_HEADER, v);
        }
    } else {
        req.headers_mut().remove(TID_HEADER);
    }
    let span = tracing::info_span!("user", user = %who.name);
    req.extensions_mut().insert(who);
    next.run(req).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_their_roles() {
        assert_eq!(required(&Method::GET, "/v0/deployments"), UserRole::Viewer);
        assert_eq!(required(&Method::GET, "/esc/health"), UserRole::Viewer);
        assert_eq!(
            required(&Method::POST, "/v0/deployments"),
            UserRole::Operator
        );
        assert_eq!(
            required(&Method::DELETE, "/v0/deployments/x"),
            UserRole::Operator
        );
        assert_eq!(required(&Method::GET, "/v0/users"), UserRole::Admin);
        assert_eq!(required(&Method::PUT, "/v0/users/ann"), UserRole::Admin);
        assert_eq!(required(&Method::POST, "/v0/tenants"), UserRole::Admin);
    }

    #[test]
    fn the_write_budget_refills_per_second() {
        let a = Auth::new("admin", "a-long-enough-password", 10, LOGIN_DELAY);
        let t = Instant::now();
        for _ in 0..10 {
            a.spend_write("u", t).unwrap();
        }
        let wait = a.spend_write("u", t).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another user has its own budget.
        a.spend_write("v", t).unwrap();
        a.spend_write("u", t + Duration::from_millis(100)).unwrap();
        assert!(a.spend_write("u", t + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn failures_are_counted_per_source_within_the_window() {
        let a = Auth::new("admin", "a-long-enough-password", 10, LOGIN_DELAY);
        let (x, y): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        for n in 1..=FAILURES_BEFORE_DELAY {
            assert_eq!(a.record_failure(x, t), n);
        }
        assert_eq!(a.recent_failures(x, t), FAILURES_BEFORE_DELAY);
        assert_eq!(a.recent_failures(y, t), 0);
        let later = t + FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(a.recent_failures(x, later), 0);
    }

    #[test]
    fn basic_headers_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_credentials(&h), Some(None));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpiOmM="),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(Some(("a".into(), "b:c".into())))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), None);
    }
}
