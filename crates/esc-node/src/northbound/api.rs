//! The northbound REST API on `:8080` (architecture section 7, esc-facts
//! "The service itself"). Translation only: a handler checks the request,
//! turns a write into a [`Command`] for the owner task, and renders the
//! outcome; reads go straight to the store.
//!
//! - `POST /v0/deployments` (a `DeploymentSpec`), `PUT` (an update) and
//!   `DELETE /v0/deployments/{name}`, `POST
//!   /v0/deployments/{name}/vms/{vm}` (`{"action": "REBOOT"|"STOP"|"START"}`):
//!   asynchronous as ESC's (esc-facts, "The service itself"): `202` once
//!   durable on both nodes, with the operation's URL (`Location`); a
//!   `callback` header names a URL for the result.
//!   `GET /v0/deployments[/{name}]`, `GET /v0/operations/{id}`: synchronous.
//!   `POST /v0/tenants`.
//! - Every write answers with `ESC-Transaction-Id`; the id is logged as
//!   `tid` on every line the request touches.
//! - `Idempotency-Key`: a resend gets the first outcome, even after a
//!   failover (the key table is replicated state).
//! - A standby answers writes with 503, `Retry-After` and its role.
//! - `GET /v0/users`, `PUT` and `DELETE /v0/users/{name}`: the accounts
//!   (admin only).
//! - HTTP basic authentication and the route's role on every route and
//!   fallback (`auth`); no default password. The credentials are checked
//!   before a request body is read: an unauthenticated client cannot make
//!   the node buffer bodies. Every error, 404 and 405 included, is
//!   `{"error": "..."}`.

// Validation helpers return the finished error response as their `Err`: the
// size of `Response` is irrelevant next to a network round trip.
#![allow(clippy::result_large_err)]

use super::auth::{Auth, ErrorBody};
use super::openapi::{
    DeploymentList, DeploymentSummary, DeploymentView, MonitoringSet, OperationAccepted,
    OperationControlled, TenantCreated, UserDeleted, UserList, UserSet,
};
use super::tls::Certs;
use crate::shared::{unix_ms, Event, Shared};
use axum::body::Bytes;
use axum::extract::{FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use esc_config::ApiConfig;
use esc_domain::command::{check_idempotency_key, check_name};
use esc_domain::{query, Answer, Command, InvalidCommand, Op, OpMode, Outcome, Refused};
use esc_repl::{Refusal, Role};
use rand::Rng;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};
use tracing::{info, info_span, warn, Instrument};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long a write waits for its commit before answering "outcome unknown".
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for its owner's answer once the node has stopped
/// leading: a live owner answers within milliseconds when it demotes; a
/// hung one never does, and the client had better resend elsewhere.
const LOST_LEAD_GRACE: Duration = Duration::from_millis(100);
/// Largest page of a listing.
pub const LIST_LIMIT_MAX: usize = 1_000;
/// Name of the generated password file in the node home.
pub const PASSWORD_FILE: &str = "api_password";

#[derive(Clone)]
struct ApiState {
    shared: Shared,
    /// `api.user`: not one of the replicated accounts.
    bootstrap_user: Arc<str>,
    limit: Arc<Semaphore>,
    /// Open event streams (`GET /v0/events`).
    streams: Arc<Semaphore>,
}

impl ApiState {
    /// At most `concurrency` requests at once.
    fn new(shared: Shared, cfg: &ApiConfig, concurrency: usize) -> ApiState {
        ApiState {
            shared,
            bootstrap_user: cfg.user.as_str().into(),
            limit: Arc::new(Semaphore::new(concurrency)),
            streams: Arc::new(Semaphore::new(super::events::STREAMS_MAX)),
        }
    }
}

/// The API password: from the config, or generated once (0600 file).
pub fn password(home: &Path, cfg: &ApiConfig) -> crate::Result<String> {
    if let Some(p) = &cfg.password {
        return Ok(p.clone());
    }
    let path = home.join(PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(crate::Error::io(
                format!("cannot read {}", path.display()),
                e,
            ))
        }
    }
    let generated: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| crate::Error::io(format!("cannot create {}", path.display()), e))?;
    writeln!(f, "{generated}")?;
    f.sync_all()?;
    warn!(path = %path.display(), user = %cfg.user,
          "no api.password configured: generated one (read it from this file)");
    Ok(generated)
}

/// Serves the API until the task is aborted, at most `connections_max`
/// connections at once (`conn::fd_budget`; the per-source cap and the
/// header deadline come from `cfg`).
///
/// `listeners`: the plain and the HTTPS one (with its certificates), as
/// configured; they share one connection cap.
///
/// `app`: [`app`]'s router, built before the task starts, so that the
/// listeners accept as soon as it runs (the health check wants them).
pub async fn serve(
    listeners: Vec<(tokio::net::TcpListener, Option<Arc<Certs>>)>,
    app: Router,
    shared: Shared,
    cfg: ApiConfig,
    connections_max: usize,
) {
    let dead = shared.api_dead.subscribe();
    let nb = shared.northbound.clone();
    let state_counters = shared.counters.clone();
    let gate = super::conn::Limits::of(&cfg, connections_max).gate();
    let loops = listeners.into_iter().map(|(listener, tls)| {
        // A dead API (lab fault injection) closes its listeners and
        // connections; requests already running still get their answer.
        let mut dead = dead.clone();
        let died = async move {
            let _ = dead.wait_for(|d| *d).await;
        };
        super::conn::serve(
            listener,
            app.clone(),
            gate.clone(),
            (state_counters.clone(), |c| &c.api_conns),
            nb.api_listening.clone(),
            tls,
            died,
        )
    });
    futures::future::join_all(loops).await;
    warn!("the northbound API is down (fault injection)");
}

/// The REST API's router: every route behind the guard (`auth`), with its
/// state; at most `api.concurrency_max` requests at once.
pub fn app(shared: &Shared, cfg: &ApiConfig, auth: Arc<Auth>) -> Router {
    let guard = super::auth::Guard {
        shared: shared.clone(),
        auth,
    };
    let state = ApiState::new(shared.clone(), cfg, cfg.concurrency_max);
    let (app, _) = routes().split_for_parts();
    let app = app.layer(axum::extract::DefaultBodyLimit::max(cfg.body_bytes_max));
    guarded(app, guard).with_state(state)
}

/// The health API's router (`GET /esc/health` behind the guard).
pub fn health_app(shared: &Shared, cfg: &ApiConfig, auth: Arc<Auth>) -> Router {
    let guard = super::auth::Guard {
        shared: shared.clone(),
        auth,
    };
    // Bounded: a flood of probes waits instead of piling up checks.
    let state = ApiState::new(shared.clone(), cfg, 16);
    let (app, _) = health_routes().split_for_parts();
    guarded(app, guard).with_state(state)
}

/// Serves [`health_app`]'s `app` until the task is aborted: 200 with the
/// report when the service is provided, 503 otherwise.
pub async fn serve_health(
    listeners: Vec<(tokio::net::TcpListener, Option<Arc<Certs>>)>,
    app: Router,
    shared: Shared,
    cfg: ApiConfig,
) {
    let nb = shared.northbound.clone();
    let counters = shared.counters.clone();
    let gate = super::conn::Limits::of(&cfg, super::conn::HEALTH_CONNECTIONS_MAX).gate();
    let loops = listeners.into_iter().map(|(listener, tls)| {
        super::conn::serve(
            listener,
            app.clone(),
            gate.clone(),
            (counters.clone(), |c| &c.health_conns),
            nb.health_listening.clone(),
            tls,
            std::future::pending(),
        )
    });
    futures::future::join_all(loops).await;
}

/// The API's routes: the router and its OpenAPI document from one list
/// (`openapi`): every handler here is described by its `#[utoipa::path]`.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(super::openapi::frame())
        .routes(routes!(list, deploy))
        .routes(routes!(show_deployment, update, undeploy))
        .routes(routes!(vm_action))
        .routes(routes!(deployment_action))
        .routes(routes!(show_operation))
        .routes(routes!(control_operation))
        .routes(routes!(create_tenant))
        .routes(routes!(events))
        .routes(routes!(list_users))
        .routes(routes!(put_user, delete_user))
        .routes(routes!(openapi_json))
}

/// The health listener's one route.
fn health_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The API's OpenAPI 3.1 document: both listeners' routes, with what they
/// share (`openapi::conventions`), as JSON (`openapi::ranges`,
/// `openapi::links`).
pub fn document() -> serde_json::Value {
    let (_, mut doc) = routes().split_for_parts();
    doc.merge(health_routes().split_for_parts().1);
    super::openapi::conventions(&mut doc);
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    super::openapi::ranges(&mut doc);
    super::openapi::links(&mut doc);
    doc
}

/// [`document`] as served and committed (`docs/openapi.json`): pretty JSON
/// and a final newline.
pub fn document_json() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

/// `routes` with the API's fallbacks (404 and 405 in its error shape) and
/// `auth::guard` in front of all of them: nothing is read, routed or told
/// to a caller without credentials.
fn guarded(routes: Router<ApiState>, guard: super::auth::Guard) -> Router<ApiState> {
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            super::auth::guard,
        ))
        .layer(axum::middleware::map_response(json_errors))
}

/// Longest text of a plain error that [`json_errors`] carries over.
const PLAIN_ERROR_BYTES_MAX: usize = 4096;

/// Every error in the API's shape, whoever made it: an extractor's
/// rejection that axum answers itself (a path segment that is not UTF-8,
/// ...) is plain text; its text becomes `{"error": ...}`, its status and
/// other headers (`Allow`, `Retry-After`) stay.
async fn json_errors(r: Response) -> Response {
    let status = r.status();
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_BYTES_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = error(status, text);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// Any path the API does not have, in the API's error shape.
async fn no_route(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such route: {}", uri.path()),
    )
}

/// A route asked with a method it does not take.
async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// `GET /esc/health` (health port): ESC's report, `200` while the service
/// is provided.
#[utoipa::path(get, path = "/esc/health", tag = "meta",
    summary = "The node's health (ESC's report)",
    description = "Served on the health port (8060; HTTPS 8061), not the API port. `200` while the service is provided on this node, `503` otherwise, with the code, the message and each check: what a load balancer or the HA agent of a client asks.",
    responses(
        (status = 200, description = "The service is provided (a 2000-series `status_code`)", body = esc_proto::status::HealthReport),
        (status = 503, description = "It is not: `status_code` and `message` say why, `checks` each check", body = esc_proto::status::HealthReport),
    ))]
async fn health(State(state): State<ApiState>) -> Response {
    // Bounded: a flood of probes waits here instead of piling up checks.
    let _permit = state.limit.acquire().await;
    let peer = crate::health::peer_in_sync(&state.shared);
    let report = crate::health::report(&state.shared, state.shared.api_addr, peer).await;
    let code = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &report)
}

/// `GET /v0/openapi.json`: this document.
#[utoipa::path(get, path = "/v0/openapi.json", tag = "meta",
    summary = "This document",
    description = "The API's OpenAPI 3.1 document, generated from the code.",
    responses((status = 200, description = "The API's OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    // Rendered at the first request, not at start: the listeners open
    // without waiting for it.
    static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let doc = DOCUMENT.get_or_init(|| Bytes::from(document_json()));
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

fn json(status: StatusCode, body: impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

pub(super) use super::auth::error;

fn invalid(e: InvalidCommand) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("`{}` {}", e.field, e.message),
    )
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be visible ASCII",
        )
    })?;
    check_idempotency_key(key).map_err(invalid)?;
    Ok(Some(key.to_string()))
}

/// Reads the state (one read transaction) off the async runtime.
async fn read_state<T: Send + 'static>(
    state: &ApiState,
    read: impl FnOnce(&esc_store::StateReader) -> Result<T, esc_state::StateError> + Send + 'static,
) -> Result<T, Response> {
    let store = state.shared.store.clone();
    match tokio::task::spawn_blocking(move || {
        let r = store.reader().map_err(|e| e.to_string())?;
        read(&r).map_err(|e| e.to_string())
    })
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn with_tid(mut r: Response, tid: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(tid) {
        r.headers_mut().insert("esc-transaction-id", v);
    }
    r
}

fn unavailable(role: Role, message: &str) -> Response {
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorBody {
            role: Some(role),
            ..ErrorBody::new(message)
        },
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A typed body as the JSON value `render` answers.
fn value(body: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(body).unwrap_or_default()
}

/// The northbound's one mapping of the domain's outcomes to HTTP (the
/// bodies are `openapi`'s types; the outcomes only the admin socket or the
/// runners see stay ad hoc).
fn render(answer: Answer, replayed: bool) -> Response {
    let (status, body) = match answer.outcome {
        Outcome::OpModeSet { mode } => (StatusCode::OK, serde_json::json!({ "op_mode": mode })),
        Outcome::TenantCreated { name } => {
            (StatusCode::CREATED, value(TenantCreated { tenant: name }))
        }
        Outcome::MonitoringSet {
            deployment,
            enabled,
        } => (
            StatusCode::OK,
            value(MonitoringSet {
                deployment,
                monitoring: enabled,
            }),
        ),
        // Accepted: durable on both nodes, carried out step by step (or
        // completed already, with no VM to touch).
        Outcome::OperationStarted {
            op_id,
            deployment,
            state,
        } => {
            let href = format!("/v0/operations/{op_id}");
            let body = OperationAccepted {
                operation: op_id,
                deployment,
                state,
                href: href.clone(),
            };
            let mut r = with_tid(json(StatusCode::ACCEPTED, body), &answer.tid);
            if let Ok(v) = HeaderValue::from_str(&href) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            if replayed {
                r.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            return r;
        }
        Outcome::CallbacksDelivered { removed } => {
            (StatusCode::OK, serde_json::json!({ "removed": removed }))
        }
        // A retry or a rollback is accepted (carried out by the runner); a
        // fail is done.
        Outcome::OperationControlled { op_id, state } => (
            if matches!(
                state,
                esc_domain::model::OperationState::Processing
                    | esc_domain::model::OperationState::RollingBack
            ) {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            },
            value(OperationControlled {
                href: format!("/v0/operations/{op_id}"),
                operation: op_id,
                state,
            }),
        ),
        Outcome::StepRecorded { op_id, state } => (
            StatusCode::OK,
            serde_json::json!({ "operation": op_id, "state": state }),
        ),
        Outcome::UserSet {
            name,
            role,
            created,
        } => (
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            value(UserSet {
                user: name,
                role,
                created,
            }),
        ),
        Outcome::UserDeleted { name } => (
            StatusCode::OK,
            value(UserDeleted {
                user: name,
                deleted: true,
            }),
        ),
        Outcome::Refused { refused } => {
            let status = match refused {
                Refused::UserExists { .. }
                | Refused::DeploymentExists { .. }
                | Refused::TenantExists { .. }
                | Refused::OperationInProgress { .. }
                | Refused::NotFailedTemp { .. }
                | Refused::WrongState { .. } => StatusCode::CONFLICT,
                Refused::NoSuchDeployment { .. }
                | Refused::NoSuchVm { .. }
                | Refused::NoSuchTenant { .. }
                | Refused::NoSuchOperation { .. }
                | Refused::NoSuchUser { .. } => StatusCode::NOT_FOUND,
                Refused::IdempotencyKeyReused | Refused::Invalid(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            };
            (status, value(ErrorBody::new(refused.to_string())))
        }
    };
    let mut r = with_tid(json(status, body), &answer.tid);
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// Runs one write: idempotency check, proposal, wait for the commit.
async fn write(
    state: &ApiState,
    tid: String,
    key: Option<String>,
    fingerprint: String,
    op: Op,
) -> Response {
    let role = state.shared.role.borrow().role;
    if role != Role::Primary {
        return with_tid(
            unavailable(
                role,
                "this node is standby: send writes to the primary (the VIP)",
            ),
            &tid,
        );
    }
    // The role authority stops admitting writes while a switchover drains
    // or the node stops: the client retries and lands on the new primary.
    if !state
        .shared
        .admission
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return with_tid(
            unavailable(
                role,
                "unavailable temporarily: handing over to the standby; retry",
            ),
            &tid,
        );
    }
    // Maintenance (esc-facts): northbound writes refused, in-progress ones finish.
    if let Ok(OpMode::Maintenance) = read_state(state, |r| query::op_mode(r)).await {
        let mut r = json(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                op_mode: Some(OpMode::Maintenance),
                ..ErrorBody::new("unavailable temporarily: the controller is in maintenance mode")
            },
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return with_tid(r, &tid);
    }
    let _inflight = state.shared.inflight.register(&tid, op.describe());
    if let Some(k) = &key {
        let k2 = k.clone();
        match read_state(state, move |r| query::idempotency(r, &k2)).await {
            Ok(Some(first)) => {
                if first.fingerprint != fingerprint {
                    return with_tid(
                        error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            Refused::IdempotencyKeyReused.to_string(),
                        ),
                        &tid,
                    );
                }
                info!(key = %k, first_tid = %first.answer.tid, "idempotent resend: returning the first outcome");
                return stamp(render(first.answer, true), state);
            }
            Ok(None) => {}
            Err(r) => return with_tid(r, &tid),
        }
    }
    let cmd = Command {
        tid: tid.clone(),
        idempotency_key: key,
        fingerprint,
        at_ms: unix_ms(),
        op,
    };
    if let Err(e) = cmd.validate() {
        return with_tid(invalid(e), &tid);
    }
    let payload = cmd.to_payload();
    let (tx, rx) = oneshot::channel();
    if state
        .shared
        .events
        .send(Event::Propose { payload, reply: tx })
        .await
        .is_err()
    {
        return with_tid(unavailable(role, "node stopping"), &tid);
    }
    // Answered by the owner, or soon after this node stops leading (a
    // FAULT with the owner hung, a step-down): the client resends with its
    // key instead of waiting out its timeout (architecture, "Admission").
    // A live owner answers at once when it demotes (a definite answer also
    // for clients without a key); only a silent one is cut short.
    let mut leading = state.shared.leading.subscribe();
    let lost = async move {
        let _ = leading.wait_for(|l| !*l).await;
        tokio::time::sleep(LOST_LEAD_GRACE).await;
    };
    let answer = tokio::select! {
        biased;
        a = tokio::time::timeout(WRITE_TIMEOUT, rx) => a,
        _ = lost => Ok(Ok(Err(Refusal::Unknown))),
    };
    match answer {
        Ok(Ok(Ok(answer))) => {
            info!(outcome = ?answer.outcome, "write committed");
            let replayed = answer.tid != tid;
            stamp(render(answer, replayed), state)
        }
        Ok(Ok(Err(Refusal::NotPrimary))) => with_tid(
            unavailable(
                Role::Standby,
                "this node is standby: send writes to the primary (the VIP)",
            ),
            &tid,
        ),
        Ok(Ok(Err(Refusal::Unknown))) | Ok(Err(_)) | Err(_) => with_tid(
            unavailable(
                state.shared.role.borrow().role,
                "outcome unknown (role change or timeout): resend with the same Idempotency-Key",
            ),
            &tid,
        ),
    }
}

/// Which node answered a write, in which epoch: a client's history then
/// shows whether two nodes ever acknowledged writes at once.
fn stamp(mut r: Response, state: &ApiState) -> Response {
    let epoch = state.shared.role.borrow().epoch;
    if let Ok(v) = HeaderValue::from_str(&state.shared.node_name) {
        r.headers_mut().insert("esc-node", v);
    }
    r.headers_mut()
        .insert("esc-epoch", HeaderValue::from(epoch));
    r
}

fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

/// The common path of every write: its span under the transaction id
/// `auth::guard` gave it, the concurrency limit, the idempotency key, the
/// body (`body`: the request, when it has one); `build` validates the
/// request and yields its fingerprint and operation.
///
/// The body is read only once the guard checked the credentials, and within the
/// concurrency limit: unauthenticated clients make the node buffer nothing,
/// authenticated ones at most `concurrency_max` bodies of `body_bytes_max`.
async fn write_request<F>(
    state: ApiState,
    headers: HeaderMap,
    method: &'static str,
    body: Option<Request>,
    build: impl FnOnce(Bytes) -> F,
) -> Response
where
    F: std::future::Future<Output = Result<(String, Op), Response>>,
{
    // `auth::guard` gave the write its transaction id (it answers a
    // refused one with it too).
    let tid = headers
        .get(super::auth::TID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = info_span!("nbi", tid = %tid, method);
    async move {
        let _permit = state.limit.acquire().await;
        let key = match idempotency_key(&headers) {
            Ok(k) => k,
            Err(r) => return with_tid(r, &tid),
        };
        // The `Bytes` extractor, run here rather than before the handler:
        // same body limit (`DefaultBodyLimit`) and the same statuses (413
        // over the limit, 400 for a body that stalls or breaks off), in
        // the API's JSON error shape rather than axum's plain text.
        let body = match body {
            Some(req) => match Bytes::from_request(req, &state).await {
                Ok(b) => b,
                Err(rejection) => {
                    return with_tid(error(rejection.status(), rejection.body_text()), &tid)
                }
            },
            None => Bytes::new(),
        };
        match build(body).await {
            Ok((fp, op)) => write(&state, tid.clone(), key, fp, op).await,
            Err(r) => with_tid(r, &tid),
        }
    }
    .instrument(span)
    .await
}

/// A listing's page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// The name after which the page starts (the last page's `next_after`).
    after: Option<String>,
    /// How many, 100 if not given.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A listing's page from its query: after which name, how many (100 by
/// default, at most [`LIST_LIMIT_MAX`]); `400` saying what is allowed.
fn page(
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(Option<String>, usize), Response> {
    let Ok(Query(q)) = query else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "query parameters: `after` (a name) and `limit` (1 to 1000) only",
        ));
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be 1 to {LIST_LIMIT_MAX}"),
        ));
    }
    Ok((q.after, limit))
}

/// A full page's last name (where the next page starts), or None: the
/// listing ends here.
fn next_after<T>(page: &[T], limit: usize, name: impl Fn(&T) -> &String) -> Option<String> {
    (page.len() == limit)
        .then(|| page.last().map(|x| name(x).clone()))
        .flatten()
}

/// `GET /v0/deployments`: a page of deployments, in name order.
#[utoipa::path(get, path = "/v0/deployments", tag = "deployments",
    summary = "List deployments",
    description = "A page of deployments in name order; `next_after` is the `after` of the next page. Reads are answered by either node.", params(ListQuery),
    responses(
        (status = 200, description = "A page of deployments; `next_after` is the next page's `after`, if any", body = DeploymentList),
        (status = 400, description = "A bad query", body = ErrorBody),
    ))]
async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (after, limit) = match page(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match read_state(&state, move |r| {
        query::deployments(r, after.as_deref(), limit)
    })
    .await
    {
        Ok(items) => {
            let next = next_after(&items, limit, |d| &d.spec.name);
            let body = DeploymentList {
                deployments: items.iter().map(DeploymentSummary::from).collect(),
                next_after: next,
            };
            json(StatusCode::OK, body)
        }
        Err(r) => r,
    }
}

/// `POST /v0/tenants`: `{"name", "description"}`.
#[utoipa::path(post, path = "/v0/tenants", tag = "tenants",
    summary = "Create a tenant",
    description = "Creates the owner of deployments, on both nodes (`201`).",
    request_body = esc_domain::model::Tenant,
    responses(
        (status = 201, description = "Created, on both nodes", body = TenantCreated, headers(("ESC-Transaction-Id" = String))),
        (status = 409, description = "The tenant exists", body = ErrorBody),
    ))]
async fn create_tenant(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    write_request(state, headers, "POST", Some(req), |body| async move {
        let tenant: esc_domain::model::Tenant = esc_domain::model::parse(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        tenant
            .validate()
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        info!(name = %tenant.name, "create tenant");
        let fp = fingerprint(&[b"POST /v0/tenants", &body]);
        Ok((fp, Op::CreateTenant { tenant }))
    })
    .await
}

/// The `callback` header (ESC's): where the result is POSTed when the
/// operation settles; an `http(s)` URL or nothing.
fn callback(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(v) = headers.get("callback") else {
        return Ok(None);
    };
    let url = v
        .to_str()
        .map_err(|_| error(StatusCode::BAD_REQUEST, "callback: must be visible ASCII"))?;
    esc_domain::model::check_callback(url)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Some(url.to_string()))
}

/// Every `script` action of the spec's rules must be an executable file on
/// this node (the primary runs it; the operator installs it on both):
/// `400` naming the action otherwise. A file-system fact, so checked here,
/// not in the replicated validation.
fn scripts_runnable(spec: &esc_domain::model::DeploymentSpec) -> Result<(), Response> {
    use std::os::unix::fs::PermissionsExt;
    for (g, group) in spec.vm_groups.iter().enumerate() {
        for (r, a, path) in esc_domain::kpi::scripts(&group.rules) {
            let why = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => continue,
                Ok(m) if !m.is_file() => "is not a file".to_string(),
                Ok(_) => "is not executable".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("vm_groups[{g}].rules[{r}].actions[{a}]: script {path}: {why} (install it, executable, on both nodes)"),
            ));
        }
    }
    Ok(())
}

/// A deploy of VMs needs a VIM that answers now (esc-facts: in `INIT`,
/// only configuration requests): otherwise a 503 that says why, and
/// nothing is started.
fn vim_usable(vim: Option<&esc_openstack::Client>) -> Result<&esc_openstack::Client, Response> {
    let Some(c) = vim else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no VIM connector is configured ([vim] in esc.toml): only deployments of no VM group can be deployed",
        ));
    };
    let h = c.health();
    if h.usable == Some(true) {
        return Ok(c);
    }
    let why = match h.usable {
        None => "has not answered yet".to_string(),
        _ => format!(
            "is not usable: {}",
            h.last_error.unwrap_or_else(|| "no answer".into())
        ),
    };
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the VIM at {} {why}; nothing was started: retry once it answers",
            c.connector().auth_url
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    Err(r)
}

/// What the VIM must have for `spec`, asked before anything is accepted:
/// each group's image, flavor and networks by name (`400` naming the
/// field), and room for every VM to add at its flavor (`400` with what is
/// needed and what is free; `current`: the VMs a group has already, for an
/// update). Best effort (another deploy may take the room meanwhile: the
/// VIM then refuses the server, and the operation says so).
async fn fits_the_vim(
    vim: &esc_openstack::Client,
    spec: &esc_domain::model::DeploymentSpec,
    current: &std::collections::BTreeMap<String, u32>,
) -> Result<(), Response> {
    use esc_openstack::Error;
    let unavailable = |e: Error| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the VIM could not be asked (nothing was started; retry): {e}"),
        )
    };
    let bad = |path: String, what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{path}: {what} does not exist on the VIM"),
        )
    };
    let (mut cores, mut ram) = (0i64, 0i64);
    for (g, group) in spec.vm_groups.iter().enumerate() {
        let p = |f: &str| format!("vm_groups[{g}].{f}");
        match vim.find_image(&group.image).await {
            Ok(_) => {}
            Err(Error::NotFound(_)) => {
                return Err(bad(p("image"), &format!("image {:?}", group.image)))
            }
            Err(e) => return Err(unavailable(e)),
        }
        let flavor = match vim.find_flavor(&group.flavor).await {
            Ok(f) => f,
            Err(Error::NotFound(_)) => {
                return Err(bad(p("flavor"), &format!("flavor {:?}", group.flavor)))
            }
            Err(e) => return Err(unavailable(e)),
        };
        for (i, nic) in group.interfaces.iter().enumerate() {
            match vim.find_network(&nic.network).await {
                Ok(_) => {}
                Err(Error::NotFound(_)) => {
                    return Err(bad(
                        p(&format!("interfaces[{i}].network")),
                        &format!("network {:?}", nic.network),
                    ))
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let have = current.get(&group.name).copied().unwrap_or(0);
        let target = have.clamp(group.scaling.min_active, group.scaling.max_active);
        let n = i64::from(target.saturating_sub(have));
        cores += n * i64::from(flavor.vcpus);
        ram += n * flavor.ram as i64;
    }
    let limits = vim.limits().await.map_err(unavailable)?;
    let (free_cores, free_ram) = limits.free();
    if free_cores.is_some_and(|f| cores > f) || free_ram.is_some_and(|f| ram > f) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "vm_groups: the VMs need {cores} vCPUs and {ram} MiB; the VIM has {} vCPUs and {} MiB free",
                free_cores.map_or("unlimited".into(), |f| f.to_string()),
                free_ram.map_or("unlimited".into(), |f| f.to_string()),
            ),
        ));
    }
    Ok(())
}

/// `POST /v0/deployments`: a deployment (`esc_domain::model::DeploymentSpec`),
/// answered `202` with the operation once it is durable on both nodes,
/// carried out by the primary's lifecycle runner; `callback` names a URL
/// for the result.
#[utoipa::path(post, path = "/v0/deployments", tag = "deployments",
    summary = "Deploy",
    description = "Starts a deploy: `202` once the operation is durable on both nodes, carried out by the primary (and resumed by the standby if it takes over); `Location` is the operation. A deployment of VM groups needs a usable VIM that has each group's image, flavor and networks and room for its VMs: asked before anything is accepted.",
    params(("callback" = Option<String>, Header, description = "An http(s) URL the result is POSTed to when the operation settles")),
    request_body = esc_domain::model::DeploymentSpec,
    responses(
        (status = 202, description = "Accepted: durable on both nodes; `Location` is the operation", body = OperationAccepted, headers(("Location" = String, description = "The operation"), ("ESC-Transaction-Id" = String))),
        (status = 400, description = "Invalid (the field is named), or the VIM has no such image, flavor or network, or no room", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The deployment exists", body = ErrorBody),
    ))]
async fn deploy(State(state): State<ApiState>, headers: HeaderMap, req: Request) -> Response {
    let cb = callback(&headers);
    let vim = state.shared.vim.clone();
    write_request(state, headers, "POST", Some(req), |body| async move {
        let callback = cb?;
        let spec = esc_domain::model::DeploymentSpec::from_json(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        scripts_runnable(&spec)?;
        if !spec.vm_groups.is_empty() {
            let vim = vim_usable(vim.as_deref())?;
            fits_the_vim(vim, &spec, &Default::default()).await?;
        }
        info!(name = %spec.name, "deploy");
        let fp = fingerprint(&[
            b"POST /v0/deployments",
            &body,
            callback.as_deref().unwrap_or("").as_bytes(),
        ]);
        Ok((
            fp,
            Op::StartOperation {
                op_id: uuid::Uuid::new_v4().to_string(),
                deployment: spec.name.clone(),
                kind: esc_domain::model::OperationKind::Deploy { spec },
                callback,
            },
        ))
    })
    .await
}

/// `PUT /v0/deployments/{name}`: update the deployment to the spec in the
/// body (`OperationKind::Update` says what may change), `202` as a deploy.
#[utoipa::path(put, path = "/v0/deployments/{name}", tag = "deployments",
    summary = "Update a deployment",
    description = "Updates the deployment to the spec in the body (VM counts, day-0 data, addresses, recovery policies, KPIs and rules; groups added or removed): `202` as a deploy. The tenant and a kept group's image, flavor and networks cannot change.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The deployment"), ("callback" = Option<String>, Header, description = "An http(s) URL the result is POSTed to when the operation settles")),
    request_body = esc_domain::model::DeploymentSpec,
    responses(
        (status = 202, description = "Accepted: durable on both nodes; `Location` is the operation", body = OperationAccepted, headers(("Location" = String, description = "The operation"), ("ESC-Transaction-Id" = String))),
        (status = 400, description = "Invalid, a change an update cannot make, or the VIM lacks what it needs", body = ErrorBody),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 409, description = "An operation of the deployment is in progress", body = ErrorBody),
    ))]
async fn update(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    req: Request,
) -> Response {
    let cb = callback(&headers);
    let vim = state.shared.vim.clone();
    let st = state.clone();
    write_request(state, headers, "PUT", Some(req), |body| async move {
        let callback = cb?;
        check_name(&name).map_err(invalid)?;
        let spec = esc_domain::model::DeploymentSpec::from_json(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        scripts_runnable(&spec)?;
        if spec.name != name {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "name: {:?} must be the deployment's name in the URL ({name:?})",
                    spec.name
                ),
            ));
        }
        // What the deployment has now: its VMs per group (the VIM needs
        // room only for those added), and whether the VIM is involved.
        let n = name.clone();
        let now = read_state(&st, move |r| query::service(r, &n)).await?;
        // What an update may not change, said before the VIM is asked (the
        // domain checks again against the state the update applies to).
        if let Some(was) = &now {
            spec.check_update_of(&was.spec)
                .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        }
        let mut current = std::collections::BTreeMap::new();
        for v in now.iter().flat_map(|s| &s.vms) {
            *current.entry(v.key.group.clone()).or_insert(0u32) += 1;
        }
        if !spec.vm_groups.is_empty() || !current.is_empty() {
            let vim = vim_usable(vim.as_deref())?;
            fits_the_vim(vim, &spec, &current).await?;
        }
        info!(%name, "update");
        let fp = fingerprint(&[
            b"PUT /v0/deployments/",
            name.as_bytes(),
            &body,
            callback.as_deref().unwrap_or("").as_bytes(),
        ]);
        Ok((
            fp,
            Op::StartOperation {
                op_id: uuid::Uuid::new_v4().to_string(),
                deployment: name,
                kind: esc_domain::model::OperationKind::Update { spec },
                callback,
            },
        ))
    })
    .await
}

/// The body of `POST /v0/deployments/{name}/vms/{vm}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VmActionBody {
    action: VmActionWord,
}

/// A manual action on one VM, or its manual recovery by its group's policy.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum VmActionWord {
    Reboot,
    Stop,
    Start,
    Recover,
}

/// The body of `POST /v0/deployments/{name}/actions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceActionBody {
    action: ServiceActionWord,
}

/// ESC's service actions.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ServiceActionWord {
    Stop,
    Start,
    Reboot,
    DisableMonitor,
    EnableMonitor,
}

/// An action request's body, or `400` naming the field and saying what
/// the body is.
fn action_of<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Response> {
    esc_domain::model::parse(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{e} (the body is {shape})"),
        )
    })
}

const VM_ACTIONS: &str = "{\"action\": \"REBOOT\" | \"STOP\" | \"START\" | \"RECOVER\"}";

/// `POST /v0/deployments/{name}/vms/{vm}` `{"action": "REBOOT" | "STOP" |
/// "START" | "RECOVER"}`: a manual action on one VM (by its server name),
/// or its manual recovery by its group's policy (ESC's manual recovery:
/// the operation the monitor starts, with the notifications), `202`.
#[utoipa::path(post, path = "/v0/deployments/{name}/vms/{vm}", tag = "deployments",
    summary = "Act on one VM",
    description = "`REBOOT`, `STOP` or `START` one VM, or `RECOVER` it by its group's recovery policy (ESC's manual recovery): `202` as a deploy, each action carried out exactly once across a takeover.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The deployment"), ("vm" = String, Path, description = "The VM's server name (`esc-<deployment id>-<group>-<index>-g<generation>`)"), ("callback" = Option<String>, Header, description = "An http(s) URL the result is POSTed to when the operation settles")),
    request_body = VmActionBody,
    responses(
        (status = 202, description = "Accepted: durable on both nodes; `Location` is the operation", body = OperationAccepted, headers(("Location" = String, description = "The operation"), ("ESC-Transaction-Id" = String))),
        (status = 404, description = "No such deployment or VM", body = ErrorBody),
        (status = 409, description = "An operation of the deployment is in progress", body = ErrorBody),
    ))]
async fn vm_action(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath((name, vm)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    let cb = callback(&headers);
    let vim = state.shared.vim.clone();
    write_request(state, headers, "POST", Some(req), |body| async move {
        let callback = cb?;
        check_name(&name).map_err(invalid)?;
        let request: VmActionBody = action_of(&body, VM_ACTIONS)?;
        use esc_domain::model::{OperationKind, VmAction};
        let act = |action| OperationKind::VmAction {
            vm: vm.clone(),
            action,
        };
        let kind = match request.action {
            VmActionWord::Recover => OperationKind::Recover {
                vm: vm.clone(),
                reason: "manual recovery".into(),
            },
            VmActionWord::Reboot => act(VmAction::Reboot),
            VmActionWord::Stop => act(VmAction::Stop),
            VmActionWord::Start => act(VmAction::Start),
        };
        vim_usable(vim.as_deref())?;
        info!(%name, %vm, action = ?request.action, "VM action");
        let fp = fingerprint(&[
            b"POST /v0/deployments/",
            name.as_bytes(),
            vm.as_bytes(),
            &body,
            callback.as_deref().unwrap_or("").as_bytes(),
        ]);
        Ok((
            fp,
            Op::StartOperation {
                op_id: uuid::Uuid::new_v4().to_string(),
                deployment: name,
                kind,
                callback,
            },
        ))
    })
    .await
}

/// `POST /v0/deployments/{name}/actions` `{"action": "STOP" | "START" |
/// "REBOOT" | "DISABLE_MONITOR" | "ENABLE_MONITOR"}`: ESC's service
/// actions. `STOP`, `START`, `REBOOT` act on every VM (each exactly once
/// across a takeover), `202` as an operation; the monitoring ones are a
/// replicated switch, `200` `{"deployment", "monitoring"}`.
#[utoipa::path(post, path = "/v0/deployments/{name}/actions", tag = "deployments",
    summary = "Act on a deployment",
    description = "ESC's service actions: `STOP`, `START` and `REBOOT` act on every VM (`202`, an operation); `DISABLE_MONITOR` and `ENABLE_MONITOR` switch the deployment's monitoring (`200`).",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The deployment"), ("callback" = Option<String>, Header, description = "An http(s) URL the result is POSTed to when the operation settles")),
    request_body = ServiceActionBody,
    responses(
        (status = 200, description = "`DISABLE_MONITOR` / `ENABLE_MONITOR` done, on both nodes", body = MonitoringSet, headers(("ESC-Transaction-Id" = String))),
        (status = 202, description = "Accepted: durable on both nodes; `Location` is the operation", body = OperationAccepted, headers(("Location" = String, description = "The operation"), ("ESC-Transaction-Id" = String))),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 409, description = "An operation of the deployment is in progress", body = ErrorBody),
    ))]
async fn deployment_action(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    req: Request,
) -> Response {
    let cb = callback(&headers);
    let vim = state.shared.vim.clone();
    write_request(state, headers, "POST", Some(req), |body| async move {
        let callback = cb?;
        check_name(&name).map_err(invalid)?;
        let request: ServiceActionBody = action_of(&body, SERVICE_ACTIONS)?;
        let fp = fingerprint(&[
            b"POST /v0/deployments/actions/",
            name.as_bytes(),
            &body,
            callback.as_deref().unwrap_or("").as_bytes(),
        ]);
        use esc_domain::model::VmAction;
        let monitor = |enabled| Op::SetMonitoring {
            deployment: name.clone(),
            enabled,
        };
        let on_every_vm = |action| -> Result<Op, Response> {
            vim_usable(vim.as_deref())?;
            Ok(Op::StartOperation {
                op_id: uuid::Uuid::new_v4().to_string(),
                deployment: name.clone(),
                kind: esc_domain::model::OperationKind::ServiceAction { action },
                callback,
            })
        };
        let op = match request.action {
            ServiceActionWord::DisableMonitor => monitor(false),
            ServiceActionWord::EnableMonitor => monitor(true),
            ServiceActionWord::Stop => on_every_vm(VmAction::Stop)?,
            ServiceActionWord::Start => on_every_vm(VmAction::Start)?,
            ServiceActionWord::Reboot => on_every_vm(VmAction::Reboot)?,
        };
        info!(%name, action = ?request.action, "service action");
        Ok((fp, op))
    })
    .await
}

const SERVICE_ACTIONS: &str =
    "{\"action\": \"STOP\" | \"START\" | \"REBOOT\" | \"DISABLE_MONITOR\" | \"ENABLE_MONITOR\"}";

/// `DELETE /v0/deployments/{name}`: undeploy, `202`.
#[utoipa::path(delete, path = "/v0/deployments/{name}", tag = "deployments",
    summary = "Undeploy",
    description = "Removes every VM of the deployment, then the deployment: `202` as a deploy.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The deployment"), ("callback" = Option<String>, Header, description = "An http(s) URL the result is POSTed to when the operation settles")),
    responses(
        (status = 202, description = "Accepted: durable on both nodes; `Location` is the operation", body = OperationAccepted, headers(("Location" = String, description = "The operation"), ("ESC-Transaction-Id" = String))),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 409, description = "An operation of the deployment is in progress", body = ErrorBody),
    ))]
async fn undeploy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let cb = callback(&headers);
    write_request(state, headers, "DELETE", None, |_| async move {
        let callback = cb?;
        check_name(&name).map_err(invalid)?;
        info!(%name, "undeploy");
        let fp = fingerprint(&[
            b"DELETE /v0/deployments/",
            name.as_bytes(),
            callback.as_deref().unwrap_or("").as_bytes(),
        ]);
        Ok((
            fp,
            Op::StartOperation {
                op_id: uuid::Uuid::new_v4().to_string(),
                deployment: name,
                kind: esc_domain::model::OperationKind::Undeploy,
                callback,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// The stream starts after this event id (`Last-Event-ID` wins).
    after: Option<u64>,
}

/// `GET /v0/events`: the outbox as server-sent events after `Last-Event-ID`
/// (or `?after=`; neither: from the oldest kept), on either node.
#[utoipa::path(get, path = "/v0/events", tag = "events",
    summary = "Follow the notifications",
    description = "The replicated outbox of notifications as server-sent events, after `Last-Event-ID` (or `after`; neither: from the oldest kept), on either node: a client that reconnects to the new primary after a takeover resumes where it stopped.",
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "The last event id received: the stream resumes after it")),
    responses(
        (status = 200, description = "Server-sent events (`id:`, `event:` its kind, `data:` the event as JSON), open until the client leaves", content_type = "text/event-stream", body = super::openapi::StreamedEvent),
        (status = 400, description = "A bad query or `Last-Event-ID`", body = ErrorBody),
        (status = 503, description = "Too many event streams are open", body = ErrorBody, headers(("Retry-After" = i64))),
    ))]
async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: `after` (an event id) only",
        );
    };
    let after = match headers.get("last-event-id") {
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(id) => id,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: must be an event id (a number) from this stream",
                )
            }
        },
        None => q.after.unwrap_or(0),
    };
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open already: retry later",
                super::events::STREAMS_MAX
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    super::events::stream(state.shared.clone(), after, permit)
}

/// A record read from the state: 200 with it, or 404 with `missing`.
async fn show_record<T: serde::Serialize + Send + 'static>(
    state: &ApiState,
    read: impl FnOnce(&esc_store::StateReader) -> Result<Option<T>, esc_state::StateError>
        + Send
        + 'static,
    missing: String,
) -> Response {
    match read_state(state, read).await {
        Ok(Some(v)) => json(StatusCode::OK, serde_json::to_value(v).unwrap_or_default()),
        Ok(None) => error(StatusCode::NOT_FOUND, missing),
        Err(r) => r,
    }
}

/// `GET /v0/deployments/{name}`: its state, VMs and current operation.
#[utoipa::path(get, path = "/v0/deployments/{name}", tag = "deployments",
    summary = "Show a deployment",
    description = "The deployment, its state, every VM (server id, state, error, addresses, recoveries, and its last probe on the node that answers: the primary's are current) and its current operation.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The deployment")),
    responses(
        (status = 200, description = "The deployment; each VM with its last probe on this node", body = DeploymentView),
        (status = 400, description = "Not a deployment name", body = ErrorBody),
        (status = 404, description = "No such deployment", body = ErrorBody),
    ))]
async fn show_deployment(
    State(state): State<ApiState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if let Err(e) = check_name(&name) {
        return invalid(e);
    }
    let n = name.clone();
    let missing = Refused::NoSuchDeployment { name: name.clone() }.to_string();
    match read_state(&state, move |r| query::service(r, &n)).await {
        Ok(Some(d)) => {
            // Each VM's last probe on this node (the primary's move; soft).
            let last = state.shared.last_probes.lock().ok();
            let view =
                DeploymentView::new(d, |vm| last.as_ref()?.get(&vm.key.server_name()).cloned());
            json(StatusCode::OK, view)
        }
        Ok(None) => error(StatusCode::NOT_FOUND, missing),
        Err(r) => r,
    }
}

/// `POST /v0/operations/{id}/retry`, `.../rollback` and `.../fail` (ETSI NFV-SOL 003's
/// tasks of an LCM operation occurrence) for a FAILED_TEMP operation.
#[utoipa::path(post, path = "/v0/operations/{id}/{task}", tag = "operations",
    summary = "Retry, roll back or fail an operation",
    description = "ETSI NFV-SOL 003's tasks of a `FAILED_TEMP` operation: `retry` and `rollback` are carried out by the primary (`202`), `fail` settles it (`200`).",
    params(("id" = String, Path, min_length = 1, max_length = 64, description = "The operation"), ("task" = inline(esc_domain::model::LcmControl), Path, description = "What to do with the FAILED_TEMP operation")),
    responses(
        (status = 200, description = "Failed: the operation is FAILED", body = OperationControlled, headers(("ESC-Transaction-Id" = String))),
        (status = 202, description = "Accepted: the operation runs again (retry) or rolls back", body = OperationControlled, headers(("ESC-Transaction-Id" = String))),
        (status = 404, description = "No such operation, or no such task", body = ErrorBody),
        (status = 409, description = "The operation is not FAILED_TEMP", body = ErrorBody),
    ))]
async fn control_operation(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath((id, task)): UrlPath<(String, String)>,
) -> Response {
    write_request(state, headers, "POST", None, |_| async move {
        let action = match task.as_str() {
            "retry" => esc_domain::model::LcmControl::Retry,
            "fail" => esc_domain::model::LcmControl::Fail,
            "rollback" => esc_domain::model::LcmControl::Rollback,
            _ => {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    format!("{task:?}: an operation's tasks are retry, rollback and fail"),
                ))
            }
        };
        if id.is_empty() || id.len() > 64 {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "an operation id is 1 to 64 characters",
            ));
        }
        info!(op = %id, %task, "operation task");
        let fp = fingerprint(&[b"POST /v0/operations/", id.as_bytes(), task.as_bytes()]);
        Ok((fp, Op::ControlOperation { op_id: id, action }))
    })
    .await
}

/// `GET /v0/operations/{id}`: an operation occurrence and its steps.
#[utoipa::path(get, path = "/v0/operations/{id}", tag = "operations",
    summary = "Show an operation",
    description = "A lifecycle operation occurrence: its kind, state (ETSI NFV-SOL 003's `LcmOperationStateType`), VMs and error.",
    params(("id" = String, Path, min_length = 1, max_length = 64, description = "The operation")),
    responses(
        (status = 200, description = "The operation occurrence", body = esc_domain::model::OperationRecord),
        (status = 400, description = "Not an operation id", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
    ))]
async fn show_operation(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> Response {
    if id.is_empty() || id.len() > 64 {
        return error(
            StatusCode::BAD_REQUEST,
            "an operation id is 1 to 64 characters",
        );
    }
    let i = id.clone();
    let missing = Refused::NoSuchOperation { op_id: id }.to_string();
    show_record(&state, move |r| query::operation(r, &i), missing).await
}

/// `GET /v0/users`: the accounts and their roles (never a hash), in name
/// order, paged as the deployments; admin only (`auth::required`).
#[utoipa::path(get, path = "/v0/users", tag = "users",
    summary = "List accounts",
    description = "A page of accounts and their roles, in name order; never a password or a hash.", params(ListQuery),
    responses(
        (status = 200, description = "A page of accounts (never a hash)", body = UserList),
        (status = 400, description = "A bad query", body = ErrorBody),
    ))]
async fn list_users(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (after, limit) = match page(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match read_state(&state, move |r| query::users(r, after.as_deref(), limit)).await {
        Ok(users) => {
            let next = next_after(&users, limit, |u| &u.name);
            let body = UserList {
                users: users.iter().map(|u| u.entry()).collect(),
                next_after: next,
            };
            json(StatusCode::OK, body)
        }
        Err(r) => r,
    }
}

/// The body of `PUT /v0/users/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserBody {
    role: esc_domain::accounts::UserRole,
    /// 12 to 1024 characters; stored as its Argon2id hash only.
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
}

/// A user name the API may manage: valid, and not the bootstrap account.
fn manageable_user(state: &ApiState, name: &str) -> Result<(), Response> {
    check_name(name).map_err(invalid)?;
    if name == &*state.bootstrap_user {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{name:?} is this node's bootstrap account (api.user): its password is api.password or the api_password file"),
        ));
    }
    Ok(())
}

/// `PUT /v0/users/{name}`: `{"role", "password"}` creates the account
/// (`201`) or replaces its role and password (`200`). The password is
/// hashed here (Argon2id) and only the hash is proposed. A resend under the
/// same `Idempotency-Key` keeps the first answer: the fingerprint covers
/// the name and the role only, so the log holds nothing derived from the
/// password but its salted hash.
#[utoipa::path(put, path = "/v0/users/{name}", tag = "users",
    summary = "Create or replace an account",
    description = "Creates the account (`201`) or replaces its role and password (`200`), on both nodes. The password is stored as its Argon2id hash only.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The account")),
    request_body = UserBody,
    responses(
        (status = 200, description = "The account's role and password replaced, on both nodes", body = UserSet, headers(("ESC-Transaction-Id" = String))),
        (status = 201, description = "The account created, on both nodes", body = UserSet, headers(("ESC-Transaction-Id" = String))),
        (status = 409, description = "The name is this node's bootstrap account (`api.user`)", body = ErrorBody),
    ))]
async fn put_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    req: Request,
) -> Response {
    let st = state.clone();
    write_request(state, headers, "PUT", Some(req), |body| async move {
        manageable_user(&st, &name)?;
        let b: UserBody = serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        esc_domain::accounts::check_password(&b.password).map_err(invalid)?;
        let salt: [u8; 16] = rand::random();
        let password = b.password;
        let hash = tokio::task::spawn_blocking(move || {
            esc_domain::accounts::hash_password(&password, &salt)
        })
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(invalid)?;
        info!(user = %name, role = b.role.word(), "set user");
        let fp = fingerprint(&[b"PUT /v0/users/", name.as_bytes(), b.role.word().as_bytes()]);
        let user = esc_domain::accounts::User {
            name,
            role: b.role,
            password_hash: hash,
        };
        Ok((
            fp,
            Op::PutUser {
                user,
                create_only: false,
            },
        ))
    })
    .await
}

/// `DELETE /v0/users/{name}`: the account is gone on both nodes; its
/// remembered logins no longer match (`auth`).
#[utoipa::path(delete, path = "/v0/users/{name}", tag = "users",
    summary = "Delete an account",
    description = "The account is gone on both nodes; its logins fail at once.",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,255}$", description = "The account")),
    responses(
        (status = 200, description = "The account is gone, on both nodes", body = UserDeleted, headers(("ESC-Transaction-Id" = String))),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The name is this node's bootstrap account (`api.user`)", body = ErrorBody),
    ))]
async fn delete_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let st = state.clone();
    write_request(state, headers, "DELETE", None, |_| async move {
        manageable_user(&st, &name)?;
        info!(user = %name, "delete user");
        let fp = fingerprint(&[b"DELETE /v0/users/", name.as_bytes()]);
        Ok((fp, Op::DeleteUser { name }))
    })
    .await
}
