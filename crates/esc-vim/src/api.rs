//! The HTTP surface of `esc-vim`: the OpenStack API subset the manager
//! uses, in the shapes of the OpenStack API reference, on one port with a
//! path per service (as devstack lays them out):
//!
//! | path | service | reference |
//! |---|---|---|
//! | `/identity/v3/auth/tokens` | Identity v3: password tokens with a catalog | Identity API v3, "Password authentication with scoped authorization" |
//! | `/compute/v2.1/servers[/detail, /{id}, /{id}/action]`, `/flavors[/detail, /{id}]`, `/limits` | Compute v2.1 (microversion 2.1) | Compute API, "Servers", "Servers - run an action", "Flavors", "Limits" |
//! | `/image/v2/images[/{id}]` | Images v2 | Image Service API v2, "Images" |
//! | `/network/v2.0/networks[/{id}]`, `/ports[/{id}]` | Networking v2.0 | Networking API v2.0, "Networks", "Ports" |
//!
//! Every path's root answers its version document (clients discover
//! versions). Every request but a token request needs a valid
//! `X-Auth-Token`. Errors have Nova's shape (`{"badRequest": {"code": 400,
//! "message": ...}}`).

// Refusals are the finished error responses (as in the northbound of
// esc-node): their size is nothing next to a network round trip.
#![allow(clippy::result_large_err)]

use crate::cloud::{Action, Cloud, NewServer, Server, VimError};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a token is valid by default (Keystone's default is an hour).
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The one account of the VIM (no default: the binary requires them), and
/// how long its tokens live.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub project: String,
    pub token_ttl: Duration,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("project", &self.project)
            .field("token_ttl", &self.token_ttl)
            .finish()
    }
}

const DOMAIN: &str = "default";
const PROJECT_ID: &str = "0e1e5c3f9a7b4d2e8c6a4b2d0f1e3c5a";
const USER_ID: &str = "7a1c3e5f9b2d4f6a8c0e2a4c6e8a0c2e";

struct Inner {
    cloud: Cloud,
    tokens: HashMap<String, Instant>,
    faults: crate::faults::Injector,
    /// The last [`CALLS_KEPT`] API calls, oldest first.
    calls: std::collections::VecDeque<Call>,
}

/// API calls the call log keeps.
pub const CALLS_KEPT: usize = 200_000;

/// One API call as the call log keeps it (for the lab's measurements:
/// which node called, and when).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Call {
    /// Wall clock, milliseconds since the Unix epoch, when it arrived.
    pub at_ms: u64,
    pub from: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// One running VIM: the API and the control plane share it.
#[derive(Clone)]
pub struct Vim {
    /// Where servers run, for namespace servers (`servers`); none: light.
    runtime: Option<Arc<crate::servers::Netns>>,
    inner: Arc<Mutex<Inner>>,
    creds: Arc<Credentials>,
    /// Base URL clients reach this service at (the catalog's endpoints).
    base: Arc<String>,
    start: Instant,
    /// Most servers a listing answers (Nova's `[api] max_limit`).
    page_max: Arc<std::sync::atomic::AtomicUsize>,
}

impl Vim {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now_ms();
        g.cloud.tick(now);
        g
    }
}

impl Vim {
    /// A VIM over `cloud`; `base` is the URL clients reach it at (e.g.
    /// `http://203.0.113.5:5000`).
    pub fn new(cloud: Cloud, creds: Credentials, base: String) -> Vim {
        Vim {
            inner: Arc::new(Mutex::new(Inner {
                cloud,
                tokens: HashMap::new(),
                faults: Default::default(),
                calls: Default::default(),
            })),
            creds: Arc::new(creds),
            base: Arc::new(base.trim_end_matches('/').to_string()),
            start: Instant::now(),
            runtime: None,
            page_max: Arc::new(SERVERS_PAGE_MAX.into()),
        }
    }

    /// Answers at most `n` (at least 1) servers a listing page, as a Nova
    /// with a smaller `max_limit` would: how a test makes a client page.
    pub fn set_page_max(&self, n: usize) {
        self.page_max
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs every server as a network namespace with `esc-vnf` inside
    /// (`servers`); they stay in BUILD until set up.
    pub fn with_namespace_servers(
        mut self,
        cfg: crate::servers::NetnsConfig,
    ) -> std::io::Result<Vim> {
        self.lock().cloud.await_ready = true;
        let v = self.clone();
        let rt = crate::servers::Netns::start(cfg, move |id, r| {
            if let Err(e) = &r {
                tracing::warn!(server = %id, "namespace server not set up: {e}");
            }
            // The clock read under the lock, after its tick.
            let mut g = v.lock();
            let now = v.now_ms();
            g.cloud.server_ready(now, &id, r);
        })?;
        self.runtime = Some(Arc::new(rt));
        Ok(self)
    }

    /// Plays a fault on a namespace server (`control`).
    /// A server not found is the cloud's refusal (404); any other
    /// failure is the message (409).
    pub fn server_fault(
        &self,
        id: &str,
        fault: crate::servers::Fault,
    ) -> Result<Result<(), String>, VimError> {
        self.lock().cloud.server(id)?;
        Ok(match &self.runtime {
            Some(rt) => rt.fault(id, fault),
            None => Err(
                "light servers have no process or link to fail: run esc-vim with --netns-switch"
                    .into(),
            ),
        })
    }

    /// Sets the API faults (`faults`).
    pub fn set_faults(&self, f: crate::faults::ApiFaults) -> Result<(), String> {
        f.check()?;
        self.lock().faults.set(f);
        Ok(())
    }

    /// The API faults in force, and how many calls met each fate.
    pub fn faults(&self) -> (crate::faults::ApiFaults, crate::faults::FaultCounts) {
        let g = self.lock();
        (g.faults.faults().clone(), g.faults.counts)
    }

    /// The calls logged since `since_ms` (wall clock), from `from` if given,
    /// at most `limit`, oldest first.
    pub fn calls(&self, since_ms: u64, from: Option<&str>, limit: usize) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.at_ms >= since_ms && from.is_none_or(|f| c.from == f))
            .take(limit)
            .cloned()
            .collect()
    }

    /// How many servers exist.
    pub fn server_count(&self) -> usize {
        self.lock().cloud.servers().count()
    }

    /// Every change to a server so far.
    /// A server's user data as created (base64), for tests.
    pub fn user_data(&self, id: &str) -> Option<String> {
        self.lock().cloud.server(id).ok()?.user_data.clone()
    }

    pub fn history(&self) -> Vec<crate::cloud::Change> {
        self.lock().cloud.history.clone()
    }
}

/// Serves the VIM on `listener` until the task is aborted; `base` is the
/// URL clients reach it at (e.g. `http://203.0.113.5:5000`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    cloud: Cloud,
    creds: Credentials,
    base: String,
) -> std::io::Result<()> {
    serve_vim(listener, Vim::new(cloud, creds, base)).await
}

/// Serves the OpenStack API of `vim` on `listener`.
pub async fn serve_vim(listener: tokio::net::TcpListener, vim: Vim) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(vim).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await
}

/// What the lab's faults make of one API call (`faults`), outside its
/// token check.
async fn inject(
    State(vim): State<Vim>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::faults::Fate;
    let at_ms = wall_ms();
    let from = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let fate = vim.lock().faults.decide();
    // Carried out to the end even when the caller gives up meanwhile (its
    // timeout, a closed connection), as an API worker of a real cloud
    // would: what makes a stalled create land after its caller moved on.
    let work = async move {
        let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
        let r = match fate {
            Fate::Pass { delay_ms } => {
                if delay_ms > 0 {
                    sleep(delay_ms).await;
                }
                next.run(req).await
            }
            Fate::Fail => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "injected fault: the call failed (nothing was done)",
            ),
            Fate::Lose => {
                let _done = next.run(req).await;
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "injected fault: the call was carried out and its answer lost",
                )
            }
            Fate::Stall { ms } => {
                sleep(ms).await;
                next.run(req).await
            }
        };
        let mut g = vim.lock();
        if g.calls.len() >= CALLS_KEPT {
            g.calls.pop_front();
        }
        g.calls.push_back(Call {
            at_ms,
            from,
            method,
            path,
            status: r.status().as_u16(),
        });
        r
    };
    tokio::spawn(work).await.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the call's task failed: {e}"),
        )
    })
}

fn router(vim: Vim) -> Router {
    // Every API call needs a valid token; version documents and token
    // requests do not (as in OpenStack).
    let api = Router::new()
        .route(
            "/compute/v2.1/servers",
            get(list_servers_brief).post(create_server),
        )
        .route("/compute/v2.1/servers/detail", get(list_servers_detail))
        .route(
            "/compute/v2.1/servers/{id}",
            get(show_server).delete(delete_server),
        )
        .route("/compute/v2.1/servers/{id}/action", post(server_action))
        .route(
            "/compute/v2.1/servers/{id}/os-instance-actions",
            get(list_instance_actions),
        )
        .route("/compute/v2.1/limits", get(show_limits))
        .route("/compute/v2.1/flavors", get(list_flavors))
        .route("/compute/v2.1/flavors/detail", get(list_flavors))
        .route("/compute/v2.1/flavors/{id}", get(show_flavor))
        .route("/image/v2/images", get(list_images))
        .route("/image/v2/images/{id}", get(show_image))
        .route("/network/v2.0/networks", get(list_networks))
        .route("/network/v2.0/networks/{id}", get(show_network))
        .route("/network/v2.0/ports", get(list_ports))
        .route("/network/v2.0/ports/{id}", get(show_port))
        .route_layer(axum::middleware::from_fn_with_state(
            vim.clone(),
            require_token,
        ))
        .route_layer(axum::middleware::from_fn_with_state(vim.clone(), inject));
    Router::new()
        .route("/identity", get(identity_versions))
        .route("/identity/", get(identity_versions))
        .route("/identity/v3", get(identity_version))
        .route("/identity/v3/", get(identity_version))
        .route(
            "/identity/v3/auth/tokens",
            post(issue_token).get(check_token),
        )
        .route("/compute", get(compute_versions))
        .route("/compute/", get(compute_versions))
        .route("/compute/v2.1", get(compute_version))
        .route("/compute/v2.1/", get(compute_version))
        .route("/image", get(image_versions))
        .route("/image/", get(image_versions))
        .route("/network", get(network_versions))
        .route("/network/", get(network_versions))
        .merge(api)
        .with_state(vim)
}

/// The token check of every API call.
async fn require_token(
    State(vim): State<Vim>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authorized(&vim, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------
// Answers.

/// Nova's error shape; Keystone's (`{"error": {code, title, message}}`)
/// for the identity paths.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let key = match status {
        StatusCode::BAD_REQUEST => "badRequest",
        StatusCode::NOT_FOUND => "itemNotFound",
        StatusCode::CONFLICT => "conflictingRequest",
        StatusCode::UNAUTHORIZED => "unauthorized",
        _ => "computeFault",
    };
    (
        status,
        Json(json!({ key: { "code": status.as_u16(), "message": message.into() } })),
    )
        .into_response()
}

fn vim_error(e: VimError) -> Response {
    match e {
        VimError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        VimError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        VimError::Conflict(m) => error(StatusCode::CONFLICT, m),
    }
}

/// ISO 8601 UTC, as the APIs write times (`2026-12-01T21:45:51Z`).
fn iso(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall-clock time of a cloud instant.
fn at(vim: &Vim, cloud_ms: u64) -> String {
    let now = vim.now_ms();
    iso(wall_ms().saturating_sub(now.saturating_sub(cloud_ms)))
}

fn link(href: String) -> Value {
    json!([{ "rel": "self", "href": href }, { "rel": "bookmark", "href": href }])
}

// ---------------------------------------------------------------------------
// Version documents (clients discover versions from a service's root).

fn identity_doc(vim: &Vim) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{ "rel": "self", "href": format!("{}/identity/v3/", vim.base) }],
        "media-types": [{ "base": "application/json", "type": "application/vnd.openstack.identity-v3+json" }],
    })
}

async fn identity_versions(State(vim): State<Vim>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({ "versions": { "values": [identity_doc(&vim)] } })),
    )
        .into_response()
}

async fn identity_version(State(vim): State<Vim>) -> Json<Value> {
    Json(json!({ "version": identity_doc(&vim) }))
}

fn compute_doc(vim: &Vim) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": "2.1",
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{ "rel": "self", "href": format!("{}/compute/v2.1/", vim.base) }],
    })
}

async fn compute_versions(State(vim): State<Vim>) -> Json<Value> {
    Json(json!({ "versions": [compute_doc(&vim)] }))
}

async fn compute_version(State(vim): State<Vim>) -> Json<Value> {
    Json(json!({ "version": compute_doc(&vim) }))
}

async fn image_versions(State(vim): State<Vim>) -> Json<Value> {
    Json(json!({ "versions": [{
        "id": "v2.15", "status": "CURRENT",
        "links": [{ "rel": "self", "href": format!("{}/image/v2/", vim.base) }],
    }] }))
}

async fn network_versions(State(vim): State<Vim>) -> Json<Value> {
    Json(json!({ "versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{ "rel": "self", "href": format!("{}/network/v2.0/", vim.base) }],
    }] }))
}

// ---------------------------------------------------------------------------
// Identity v3.

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// `POST /v3/auth/tokens`, password method, project scope: 201 with the
/// token in `X-Subject-Token` and the catalog in the body.
async fn issue_token(State(vim): State<Vim>, body: Option<Json<Value>>) -> Response {
    let Some(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "the request body must be JSON");
    };
    let user = str_at(&body, &["auth", "identity", "password", "user", "name"]);
    let password = str_at(&body, &["auth", "identity", "password", "user", "password"]);
    let project = str_at(&body, &["auth", "scope", "project", "name"]);
    let ok = |given: Option<&str>, want: &str| {
        given.is_some_and(|g| {
            g.len() == want.len() && g.bytes().zip(want.bytes()).all(|(a, b)| a == b)
        })
    };
    if !(ok(user, &vim.creds.user) && ok(password, &vim.creds.password)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        );
    }
    if !ok(project, &vim.creds.project) {
        return error(
            StatusCode::UNAUTHORIZED,
            "the project scope is not one of this user's",
        );
    }
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
    let token = hex::encode(raw);
    let expires = Instant::now() + vim.creds.token_ttl;
    {
        let mut g = vim.lock();
        // Expired tokens go (bounded by how many a client asks for per hour).
        let now = Instant::now();
        g.tokens.retain(|_, e| *e > now);
        g.tokens.insert(token.clone(), expires);
    }
    let mut r = (StatusCode::CREATED, Json(token_body(&vim))).into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-subject-token", v);
    }
    r
}

fn token_body(vim: &Vim) -> Value {
    let now = wall_ms();
    let endpoint = |kind: &str, name: &str, path: &str| {
        json!({
            "type": kind, "name": name, "id": format!("{kind}-service"),
            "endpoints": [{
                "id": format!("{kind}-public"), "interface": "public",
                "region": "RegionOne", "region_id": "RegionOne",
                "url": format!("{}{path}", vim.base),
            }],
        })
    };
    let domain = json!({ "id": DOMAIN, "name": "Default" });
    json!({ "token": {
        "methods": ["password"],
        "user": { "id": USER_ID, "name": vim.creds.user, "domain": domain, "password_expires_at": null },
        "audit_ids": ["esc-vim"],
        "issued_at": iso(now),
        "expires_at": iso(now + vim.creds.token_ttl.as_millis() as u64),
        "project": { "id": PROJECT_ID, "name": vim.creds.project, "domain": domain },
        "is_domain": false,
        "roles": [{ "id": "admin-role", "name": "admin" }, { "id": "member-role", "name": "member" }],
        "catalog": [
            endpoint("identity", "keystone", "/identity"),
            endpoint("compute", "nova", "/compute/v2.1"),
            endpoint("image", "glance", "/image"),
            endpoint("network", "neutron", "/network"),
        ],
    } })
}

/// `GET /v3/auth/tokens`: validates `X-Subject-Token` (with a valid
/// `X-Auth-Token`).
async fn check_token(State(vim): State<Vim>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&vim, &headers) {
        return r;
    }
    let subject = headers.get("x-subject-token").and_then(|v| v.to_str().ok());
    let valid = subject.is_some_and(|t| {
        vim.lock()
            .tokens
            .get(t)
            .is_some_and(|e| *e > Instant::now())
    });
    if valid {
        Json(token_body(&vim)).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "Could not find token.")
    }
}

/// The control plane's check: HTTP basic with the VIM's account.
pub(crate) fn account(vim: &Vim, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", vim.creds.user, vim.creds.password));
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|got| got.as_bytes() == want.as_bytes())
}

pub(crate) fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    error(status, message)
}

fn authorized(vim: &Vim, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers.get("x-auth-token").and_then(|v| v.to_str().ok());
    let ok = token.is_some_and(|t| {
        vim.lock()
            .tokens
            .get(t)
            .is_some_and(|e| *e > Instant::now())
    });
    if ok {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        ))
    }
}

// ---------------------------------------------------------------------------
// Compute v2.1.

fn server_detail(vim: &Vim, cloud: &Cloud, s: &Server) -> Value {
    let mut addresses = BTreeMap::<String, Vec<Value>>::new();
    for p in &s.ports {
        let net = cloud
            .network(&p.network_id)
            .map_or(p.network_id.clone(), |n| n.name.clone());
        addresses.entry(net).or_default().push(json!({
            "version": 4, "addr": p.ip,
            "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": p.mac,
        }));
    }
    let base = format!("{}/compute/v2.1", vim.base);
    let (vm_state, power) = match s.status.word() {
        "ACTIVE" | "REBOOT" | "HARD_REBOOT" => ("active", 1),
        "SHUTOFF" => ("stopped", 4),
        "ERROR" => ("error", 0),
        _ => ("building", 0),
    };
    let mut v = json!({
        "id": s.id, "name": s.name, "status": s.status.word(),
        "tenant_id": PROJECT_ID, "user_id": USER_ID,
        "metadata": s.metadata, "hostId": if s.ports.is_empty() { "" } else { "esc-vim-host" },
        "image": { "id": s.image_id, "links": [{ "rel": "bookmark", "href": format!("{}/image/v2/images/{}", vim.base, s.image_id) }] },
        "flavor": { "id": s.flavor_id, "links": [{ "rel": "bookmark", "href": format!("{base}/flavors/{}", s.flavor_id) }] },
        "created": at(vim, s.created_ms), "updated": at(vim, s.updated_ms),
        "addresses": addresses, "accessIPv4": "", "accessIPv6": "",
        "links": link(format!("{base}/servers/{}", s.id)),
        "OS-DCF:diskConfig": "MANUAL", "progress": 0,
        "OS-EXT-STS:task_state": null, "OS-EXT-STS:vm_state": vm_state, "OS-EXT-STS:power_state": power,
        "config_drive": "", "key_name": null, "security_groups": [{ "name": "default" }],
    });
    if let Some(f) = &s.fault {
        v["fault"] = json!({ "code": 500, "message": f, "created": at(vim, s.created_ms) });
    }
    v
}

fn nova_headers(mut r: Response) -> Response {
    r.headers_mut().insert(
        "openstack-api-version",
        HeaderValue::from_static("compute 2.1"),
    );
    r.headers_mut().insert(
        "x-openstack-nova-api-version",
        HeaderValue::from_static("2.1"),
    );
    r
}

/// `name` is a regular expression in Nova; a substring here; `status` exact.
fn listed(s: &Server, q: &HashMap<String, String>) -> bool {
    q.get("name").is_none_or(|n| s.name.contains(n.as_str()))
        && q.get("status")
            .is_none_or(|st| st.eq_ignore_ascii_case(s.status.word()))
}

/// Nova's `[api] max_limit` default: a listing answers at most this many
/// servers a page, however many `limit` asks for (`Vim::set_page_max`).
pub const SERVERS_PAGE_MAX: usize = 1_000;

/// One page of the servers `q` filters, as Nova pages them (Compute API
/// reference, "Paginated collections"): at most `limit` (capped at
/// the VIM's page size) after the server `marker`, and a `servers_links`
/// `next` link when the page is full (more may follow). The marker need
/// not exist any more (a server deleted since its page was read).
fn servers_page<'a>(
    vim: &Vim,
    cloud: &'a crate::cloud::Cloud,
    q: &HashMap<String, String>,
    path: &str,
) -> Result<(Vec<&'a Server>, Option<Value>), Response> {
    let max = vim.page_max.load(std::sync::atomic::Ordering::Relaxed);
    let limit = match q.get("limit") {
        None => max,
        Some(l) => match l.parse::<usize>() {
            Ok(n) => n.min(max),
            Err(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("limit: {l:?} is not a non-negative integer"),
                ))
            }
        },
    };
    let mut all = cloud.servers().filter(|s| listed(s, q)).peekable();
    if let Some(m) = q.get("marker") {
        // Servers are kept in id order: the page starts after the marker,
        // which may have been deleted since (Nova finds a marker among its
        // deleted instances too, so a listing survives a concurrent delete).
        while all.next_if(|s| s.id.as_str() <= m.as_str()).is_some() {}
    }
    let page: Vec<&Server> = all.take(limit).collect();
    let next = match page.last() {
        Some(last) if page.len() == limit => {
            let mut query: Vec<(String, String)> = q
                .iter()
                .filter(|(k, _)| k.as_str() != "marker")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            query.sort();
            query.push(("marker".into(), last.id.clone()));
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            Some(json!([{
                "rel": "next",
                "href": format!("{}/compute/v2.1{path}?{query}", vim.base),
            }]))
        }
        _ => None,
    };
    Ok((page, next))
}

fn servers_answer(list: Vec<Value>, next: Option<Value>) -> Response {
    let mut body = json!({ "servers": list });
    if let Some(links) = next {
        body["servers_links"] = links;
    }
    nova_headers(Json(body).into_response())
}

async fn list_servers_detail(
    State(vim): State<Vim>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let g = vim.lock();
    match servers_page(&vim, &g.cloud, &q, "/servers/detail") {
        Ok((page, next)) => servers_answer(
            page.into_iter()
                .map(|s| server_detail(&vim, &g.cloud, s))
                .collect(),
            next,
        ),
        Err(e) => e,
    }
}

async fn list_servers_brief(
    State(vim): State<Vim>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let base = format!("{}/compute/v2.1", vim.base);
    let g = vim.lock();
    match servers_page(&vim, &g.cloud, &q, "/servers") {
        Ok((page, next)) => servers_answer(
            page.into_iter()
                .map(|s| json!({ "id": s.id, "name": s.name, "links": link(format!("{base}/servers/{}", s.id)) }))
                .collect(),
            next,
        ),
        Err(e) => e,
    }
}

async fn show_server(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let g = vim.lock();
    match g.cloud.server(&id) {
        Ok(s) => nova_headers(
            Json(json!({ "server": server_detail(&vim, &g.cloud, s) })).into_response(),
        ),
        Err(e) => vim_error(e),
    }
}

/// The request of "Create Server": `imageRef`, `flavorRef`, `networks`
/// (a list of `{uuid, fixed_ip}`, or `"auto"`/`"none"`), `metadata`,
/// `user_data` (base64, kept as given).
fn new_server(body: &Value) -> Result<NewServer, String> {
    let s = body
        .get("server")
        .ok_or("the body needs a `server` object")?;
    let field = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
    let name = field("name").ok_or("`server.name` is required")?;
    let image = field("imageRef").ok_or("`server.imageRef` is required")?;
    let flavor = field("flavorRef").ok_or("`server.flavorRef` is required")?;
    let networks = match s.get("networks") {
        None | Some(Value::String(_)) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|n| {
                let uuid = n
                    .get("uuid")
                    .and_then(Value::as_str)
                    .ok_or("each of `server.networks` needs a `uuid`")?;
                Ok((
                    uuid.to_string(),
                    n.get("fixed_ip")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                ))
            })
            .collect::<Result<_, &str>>()?,
        Some(_) => return Err("`server.networks` must be a list, \"auto\" or \"none\"".into()),
    };
    let metadata = match s.get("metadata") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_string()))
                    .ok_or("metadata values must be strings")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`server.metadata` must be an object".into()),
    };
    Ok(NewServer {
        name,
        image,
        flavor,
        networks,
        metadata,
        user_data: field("user_data"),
    })
}

async fn create_server(State(vim): State<Vim>, body: Option<Json<Value>>) -> Response {
    let Some(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "the request body must be JSON");
    };
    let req = match new_server(&body) {
        Ok(r) => r,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let now = vim.now_ms();
    let base = format!("{}/compute/v2.1", vim.base);
    let mut g = vim.lock();
    match g.cloud.create_server(now, id, req) {
        Ok(s) => {
            if let (Some(rt), Some(port)) = (&vim.runtime, s.ports.first()) {
                if s.status == crate::cloud::Status::Build {
                    rt.create(&s.id, &s.name, &port.ip, s.user_data.as_deref());
                }
            }
            let body = json!({ "server": {
                "id": s.id, "links": link(format!("{base}/servers/{}", s.id)),
                "OS-DCF:diskConfig": "MANUAL", "security_groups": [{ "name": "default" }],
                "adminPass": "not-used",
            } });
            nova_headers((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Err(e) => vim_error(e),
    }
}

async fn delete_server(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let now = vim.now_ms();
    match vim.lock().cloud.delete_server(now, &id) {
        Ok(()) => {
            if let Some(rt) = &vim.runtime {
                rt.delete(&id);
            }
            nova_headers(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => vim_error(e),
    }
}

async fn server_action(
    State(vim): State<Vim>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "the request body must be JSON");
    };
    let action = if let Some(r) = body.get("reboot") {
        match r.get("type").and_then(Value::as_str) {
            Some("SOFT") => Action::Reboot { hard: false },
            Some("HARD") => Action::Reboot { hard: true },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "`reboot.type` must be SOFT or HARD",
                )
            }
        }
    } else if body.get("os-start").is_some() {
        Action::Start
    } else if body.get("os-stop").is_some() {
        Action::Stop
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "supported actions: reboot, os-start, os-stop",
        );
    };
    let now = vim.now_ms();
    match vim.lock().cloud.action(now, &id, action) {
        Ok(()) => {
            if let Some(rt) = &vim.runtime {
                match action {
                    Action::Stop => rt.stop(&id),
                    Action::Start | Action::Reboot { .. } => rt.restart(&id),
                }
            }
            nova_headers(StatusCode::ACCEPTED.into_response())
        }
        Err(e) => vim_error(e),
    }
}

/// Compute "List Actions For Server" (`os-instance-actions`): every change
/// the server went through, newest first, as Nova lists them (the
/// manager's mark that an action it asked for was carried out).
async fn list_instance_actions(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let g = vim.lock();
    match g.cloud.actions(&id) {
        Ok(list) => {
            let actions: Vec<Value> = list
                .iter()
                .map(|c| {
                    json!({
                        "action": c.nova_action(), "instance_uuid": c.server_id,
                        "request_id": c.request_id, "user_id": USER_ID,
                        "project_id": PROJECT_ID, "start_time": at(&vim, c.at_ms),
                        "message": null,
                    })
                })
                .collect();
            nova_headers(Json(json!({ "instanceActions": actions })).into_response())
        }
        Err(e) => vim_error(e),
    }
}

/// Compute "Show Rate And Absolute Limits": the project's quota is the
/// VIM's capacity here.
async fn show_limits(State(vim): State<Vim>) -> Response {
    let g = vim.lock();
    let (cores, ram, cap) = g.cloud.usage();
    let instances = g.cloud.servers().count();
    Json(json!({ "limits": { "rate": [], "absolute": {
        "maxTotalCores": cap.vcpus, "totalCoresUsed": cores,
        "maxTotalRAMSize": cap.ram_mb, "totalRAMUsed": ram,
        "maxTotalInstances": -1, "totalInstancesUsed": instances,
        "maxServerMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
        "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
        "maxImageMeta": 128, "totalServerGroupsUsed": 0,
    } } }))
    .into_response()
}

fn flavor_json(vim: &Vim, f: &crate::cloud::Flavor) -> Value {
    json!({
        "id": f.id, "name": f.name, "vcpus": f.vcpus, "ram": f.ram_mb, "disk": f.disk_gb,
        "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": false, "swap": "",
        "rxtx_factor": 1.0, "os-flavor-access:is_public": true,
        "links": link(format!("{}/compute/v2.1/flavors/{}", vim.base, f.id)),
    })
}

async fn list_flavors(State(vim): State<Vim>) -> Response {
    let g = vim.lock();
    let list: Vec<Value> = g.cloud.flavors().map(|f| flavor_json(&vim, f)).collect();
    nova_headers(Json(json!({ "flavors": list })).into_response())
}

async fn show_flavor(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let g = vim.lock();
    // By id only, as Nova: clients fall back to listing to find by name.
    let found = g
        .cloud
        .flavors()
        .find(|f| f.id == id)
        .map(|f| flavor_json(&vim, f));
    match found {
        Some(f) => nova_headers(Json(json!({ "flavor": f })).into_response()),
        None => error(
            StatusCode::NOT_FOUND,
            format!("Flavor {id} could not be found."),
        ),
    }
}

// ---------------------------------------------------------------------------
// Images v2 and Networking v2.0.

fn image_json(i: &crate::cloud::Image) -> Value {
    json!({
        "id": i.id, "name": i.name, "status": "active", "visibility": "public",
        "container_format": "bare", "disk_format": "qcow2", "min_disk": 0, "min_ram": 0,
        "size": 0, "protected": false, "tags": [], "owner": PROJECT_ID,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "self": format!("/v2/images/{}", i.id), "file": format!("/v2/images/{}/file", i.id),
        "schema": "/v2/schemas/image",
    })
}

async fn list_images(State(vim): State<Vim>, Query(q): Query<HashMap<String, String>>) -> Response {
    let g = vim.lock();
    let list: Vec<Value> = g
        .cloud
        .images()
        .filter(|i| q.get("name").is_none_or(|n| *n == i.name))
        .map(image_json)
        .collect();
    Json(json!({ "images": list, "first": "/v2/images", "schema": "/v2/schemas/images" }))
        .into_response()
}

async fn show_image(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let g = vim.lock();
    match g.cloud.image(&id) {
        Some(i) => Json(image_json(i)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("No image found with ID {id}"),
        ),
    }
}

fn network_json(n: &crate::cloud::Network) -> Value {
    json!({
        "id": n.id, "name": n.name, "status": "ACTIVE", "admin_state_up": true,
        "subnets": [format!("{}-subnet", n.id)], "shared": false, "mtu": 1500,
        "tenant_id": PROJECT_ID, "project_id": PROJECT_ID, "router:external": false,
    })
}

async fn list_networks(
    State(vim): State<Vim>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let g = vim.lock();
    let list: Vec<Value> = g
        .cloud
        .networks()
        .filter(|n| q.get("name").is_none_or(|name| *name == n.name))
        .filter(|n| q.get("id").is_none_or(|id| *id == n.id))
        .map(network_json)
        .collect();
    Json(json!({ "networks": list })).into_response()
}

async fn show_network(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let g = vim.lock();
    match g.cloud.network(&id) {
        Some(n) => Json(json!({ "network": network_json(n) })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("Network {id} could not be found."),
        ),
    }
}

fn port_json(p: &crate::cloud::Port) -> Value {
    json!({
        "id": p.id, "network_id": p.network_id, "device_id": p.device_id,
        "device_owner": "compute:nova", "mac_address": p.mac, "status": "ACTIVE",
        "admin_state_up": true, "tenant_id": PROJECT_ID, "project_id": PROJECT_ID,
        "fixed_ips": [{ "ip_address": p.ip, "subnet_id": format!("{}-subnet", p.network_id) }],
    })
}

async fn list_ports(State(vim): State<Vim>, Query(q): Query<HashMap<String, String>>) -> Response {
    let g = vim.lock();
    let list: Vec<Value> = g
        .cloud
        .ports()
        .filter(|p| q.get("device_id").is_none_or(|d| *d == p.device_id))
        .filter(|p| q.get("network_id").is_none_or(|n| *n == p.network_id))
        .map(port_json)
        .collect();
    Json(json!({ "ports": list })).into_response()
}

async fn show_port(State(vim): State<Vim>, Path(id): Path<String>) -> Response {
    let g = vim.lock();
    let found = g.cloud.ports().find(|p| p.id == id).map(port_json);
    match found {
        Some(p) => Json(json!({ "port": p })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("Port {id} could not be found."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::iso;

    #[test]
    fn times_are_iso_8601_utc() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso(1_796_161_551_000), "2026-12-01T21:45:51Z");
    }
}
