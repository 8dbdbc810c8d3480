//! What the northbound API says, typed (issue 14, item 4): the bodies its
//! handlers answer, and its OpenAPI 3.1 document.
//!
//! The document is generated, never written by hand: each handler's
//! `#[utoipa::path]` names its path, parameters, body and answers, and
//! `api::routes` registers the handlers with `utoipa_axum::routes!`, the
//! one list from which both the router and the document come (a route
//! cannot be served undescribed). The schemas are the types the handlers
//! parse and serialize (`esc_domain`'s models, the bodies below). What
//! every route shares is added by [`conventions`] from the guard's own
//! rules (`auth::required`): basic authentication, `401`, the role's
//! `403`, `429`, and for writes the `Idempotency-Key` header and the
//! refusals any write may get. Served at `GET /v0/openapi.json`, committed
//! as `docs/openapi.json` (`tests/openapi.rs` keeps the two equal).

use super::auth::required;
use esc_domain::accounts::{UserEntry, UserRole};
use esc_domain::model::{
    DeploymentSpec, OperationState, ScaleState, ServiceRecord, ServiceState, VmRecord,
};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::path::{HttpMethod, Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, HeaderBuilder, OpenApi, Ref, RefOr, Required};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

pub use super::auth::ErrorBody;

/// A lifecycle operation accepted (`202`): durable on both nodes, carried
/// out by the primary; `href` (also `Location`) is where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationAccepted {
    pub operation: String,
    pub deployment: String,
    pub state: OperationState,
    pub href: String,
}

/// A `FAILED_TEMP` operation's task taken: `202` while it runs again or
/// rolls back, `200` once failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationControlled {
    pub operation: String,
    pub state: OperationState,
    pub href: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    pub tenant: String,
}

/// `DISABLE_MONITOR` / `ENABLE_MONITOR` done.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonitoringSet {
    pub deployment: String,
    pub monitoring: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserSet {
    pub user: String,
    pub role: UserRole,
    /// A new account (`201`) or a replaced one (`200`).
    pub created: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDeleted {
    pub user: String,
    pub deleted: bool,
}

/// A page of accounts; `next_after`: the `after` of the next page, if any.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserEntry>,
    pub next_after: Option<String>,
}

/// One line of the deployments' listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentSummary {
    pub name: String,
    pub tenant: String,
    pub state: ServiceState,
    pub current_op: Option<String>,
    pub last_op: Option<String>,
    /// How many VMs it has.
    pub vms: usize,
}

impl From<&ServiceRecord> for DeploymentSummary {
    fn from(d: &ServiceRecord) -> DeploymentSummary {
        DeploymentSummary {
            name: d.spec.name.clone(),
            tenant: d.spec.tenant.clone(),
            state: d.state,
            current_op: d.current_op.clone(),
            last_op: d.last_op.clone(),
            vms: d.vms.len(),
        }
    }
}

/// A page of deployments, in name order.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentSummary>,
    pub next_after: Option<String>,
}

/// `GET /v0/deployments/{name}`: the replicated record, each VM with its
/// last probe on the node that answers (the primary's are current).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    pub spec: DeploymentSpec,
    pub state: ServiceState,
    pub current_op: Option<String>,
    pub vms: Vec<VmView>,
    pub created_at_ms: u64,
    pub last_op: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub scaling: BTreeMap<String, ScaleState>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub monitor_disabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VmView {
    #[serde(flatten)]
    pub vm: VmRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<crate::shared::LastProbe>,
}

impl DeploymentView {
    /// `probe`: a VM's last probe here, by its server name.
    pub fn new(
        d: ServiceRecord,
        probe: impl Fn(&VmRecord) -> Option<crate::shared::LastProbe>,
    ) -> DeploymentView {
        // Destructured, not copied field by field: a field added to the
        // record does not compile here until the view has it too.
        let ServiceRecord {
            spec,
            state,
            current_op,
            vms,
            created_at_ms,
            last_op,
            scaling,
            monitor_disabled,
        } = d;
        DeploymentView {
            spec,
            state,
            current_op,
            vms: vms
                .into_iter()
                .map(|vm| VmView {
                    last_probe: probe(&vm),
                    vm,
                })
                .collect(),
            created_at_ms,
            last_op,
            scaling,
            monitor_disabled,
        }
    }
}

/// One server-sent event of `GET /v0/events`, as an event-stream parser
/// reads it (`events::frame`): `id` the outbox id (`Last-Event-ID` to
/// resume after it), `event` its kind (`gap`: events were dropped from the
/// outbox before the client read them), `data` the event as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamedEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// The document's frame: what it is about; the paths come from
/// `api::routes`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "esc northbound API",
        description = "The VNF manager's REST API (docs/architecture.md, section 7). \
Every request needs HTTP basic authentication (an account of `escadm user`, or the node's \
bootstrap `api.user`); the role a route needs is in its description. Writes are asynchronous \
where they start an operation: `202` once durable on both nodes, with the operation's \
`Location`. A standby answers writes `503` with `Retry-After` and its role: send them to the \
primary (the VIP). Every error, `404` and `405` of unknown routes included, is \
`{\"error\": \"...\"}`. `GET /esc/health` is served on the health port (8060, HTTPS 8061), \
every other path on the API port (8080, HTTPS 8443).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "deployments", description = "Deployments, their VMs and actions"),
        (name = "operations", description = "Lifecycle operation occurrences (ETSI NFV-SOL 003)"),
        (name = "tenants"),
        (name = "events", description = "Notifications as server-sent events"),
        (name = "users", description = "Accounts (admin)"),
        (name = "meta", description = "Health and this document"),
    ),
    components(schemas(ErrorBody))
)]
pub struct Frame;

/// The frame with nothing in it yet (the routes add their paths).
pub fn frame() -> OpenApi {
    Frame::openapi()
}

/// Shared responses, by name in `components.responses`.
const UNAUTHORIZED: &str = "Unauthorized";
const FORBIDDEN: &str = "Forbidden";
const TOO_MANY: &str = "TooManyRequests";
const BAD_REQUEST: &str = "BadRequest";
const NOT_FOUND: &str = "NotFound";
const CONFLICT: &str = "Conflict";
const UNPROCESSABLE: &str = "Unprocessable";
const UNAVAILABLE: &str = "Unavailable";
const TOO_LARGE: &str = "PayloadTooLarge";

/// What every route shares, added to `doc` once its paths are in: the
/// security scheme, the guard's answers, and for writes their header and
/// the refusals any write may get (the domain refuses a command by what
/// the state holds: any write may find its target missing, taken or its
/// key reused). A response a route describes itself is kept.
pub fn conventions(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "basic".into(),
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
    );
    let retry_after = || {
        HeaderBuilder::new()
            .schema(i64::schema())
            .description(Some("Seconds to wait before resending"))
            .build()
    };
    let shared: [(&str, &str, bool); 9] = [
        (UNAUTHORIZED, "No or wrong credentials (`WWW-Authenticate: Basic`); from the 10th failure of a source within a minute, answered after 3 s", false),
        (FORBIDDEN, "The account's role may not do this", false),
        (TOO_MANY, "Past the account's write budget (`api.writes_per_user_per_s`), or too many throttled logins at once", true),
        (BAD_REQUEST, "The request is malformed or invalid; `error` names the field", false),
        (NOT_FOUND, "What the request names does not exist", false),
        (CONFLICT, "The state does not allow it now (it exists already, an operation is in progress, ...)", false),
        (UNPROCESSABLE, "The `Idempotency-Key` was used for another request, or the command is refused", false),
        (UNAVAILABLE, "Not now: this node is standby (`role`), hands over, is in maintenance (`op_mode`), the VIM does not answer, or the outcome is unknown after a role change (resend with the same `Idempotency-Key`)", true),
        (TOO_LARGE, "The body is over `api.body_bytes_max`", false),
    ];
    for (name, description, retry) in shared {
        let mut r = ResponseBuilder::new().description(description).content(
            "application/json",
            Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))),
        );
        if retry {
            r = r.header("Retry-After", retry_after());
        }
        components
            .responses
            .insert(name.into(), RefOr::T(r.build()));
    }
    doc.security = Some(vec![SecurityRequirement::new(
        "basic",
        Vec::<String>::new(),
    )]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Delete, &mut item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                conventions_of(path, method, op);
            }
        }
    }
}

fn conventions_of(path: &str, method: HttpMethod, op: &mut Operation) {
    let http = match method {
        HttpMethod::Get => axum::http::Method::GET,
        HttpMethod::Put => axum::http::Method::PUT,
        HttpMethod::Post => axum::http::Method::POST,
        _ => axum::http::Method::DELETE,
    };
    let role = required(&http, path);
    let write = method != HttpMethod::Get;
    let note = format!("Role: {}.", role.word());
    op.description = Some(match op.description.take() {
        Some(d) => format!("{d}\n\n{note}"),
        None => note,
    });
    let mut add = |status: &str, name: &str| {
        op.responses
            .responses
            .entry(status.into())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    };
    add("401", UNAUTHORIZED);
    if role > UserRole::Viewer {
        add("403", FORBIDDEN);
    }
    add("429", TOO_MANY);
    if write {
        add("400", BAD_REQUEST);
        add("404", NOT_FOUND);
        add("409", CONFLICT);
        add("422", UNPROCESSABLE);
        add("503", UNAVAILABLE);
        if op.request_body.is_some() {
            add("413", TOO_LARGE);
        }
        let key = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "A resend under the same key gets the first outcome, on either node, even after a takeover (1 to 255 visible ASCII characters)",
            ))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .min_length(Some(1))
                    .max_length(Some(esc_domain::command::IDEMPOTENCY_KEY_LEN_MAX))
                    .pattern(Some("^[ -~]+$")),
            ))
            .build();
        op.parameters.get_or_insert_with(Vec::new).push(key);
    }
}

/// Unsigned integers by their range: utoipa names their formats `u-int8`
/// .. `u-int64` (`non_strict_integers`), formats no validator knows; the
/// document says `minimum` and `maximum` instead, so that a client and a
/// fuzzer know, for one, that an event id may exceed `int64`.
pub fn ranges(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            let max = match o.get("format").and_then(|f| f.as_str()) {
                Some("u-int8") => Some(u64::from(u8::MAX)),
                Some("u-int16") => Some(u64::from(u16::MAX)),
                Some("u-int32") => Some(u64::from(u32::MAX)),
                Some("u-int64") => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max {
                o.remove("format");
                o.entry("minimum").or_insert(0.into());
                o.entry("maximum").or_insert(max.into());
            }
            o.values_mut().for_each(ranges);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(ranges),
        _ => {}
    }
}

/// OpenAPI links from each answer that starts an operation to where it
/// and its deployment stand (`GET /v0/operations/{id}`, `GET
/// /v0/deployments/{name}`): a client, and the fuzzer's request sequences,
/// follow them. Added to the JSON: utoipa 5 writes a link's fields in
/// snake case (`operation_id`), not OpenAPI's `operationId`.
pub fn links(doc: &mut serde_json::Value) {
    let accepted = serde_json::json!("#/components/schemas/OperationAccepted");
    let links = serde_json::json!({
        "operation": {
            "operationId": "show_operation",
            "parameters": { "id": "$response.body#/operation" },
            "description": "The operation this request started",
        },
        "deployment": {
            "operationId": "show_deployment",
            "parameters": { "name": "$response.body#/deployment" },
            "description": "The deployment it acts on",
        },
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            // `get_mut`, not indexing: an index would add the keys it misses.
            let Some(r) = op.get_mut("responses").and_then(|r| r.get_mut("202")) else {
                continue;
            };
            if r["content"]["application/json"]["schema"]["$ref"] == accepted {
                r["links"] = links.clone();
            }
        }
    }
}
