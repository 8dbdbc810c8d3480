//! The control plane of `esc-vim` (issue 11, item 4): what the lab does to
//! the VIM from outside the OpenStack API, on a listener of its own, with
//! HTTP basic authentication by the VIM's account.
//!
//! | request | does |
//! |---|---|
//! | `GET /control/v1/state` | the faults in force and how many calls met each |
//! | `PUT /control/v1/faults` with [`ApiFaults`](crate::faults::ApiFaults) | sets the API faults (`400` naming the field if invalid) |
//! | `GET /control/v1/history` | every change to a server (create, delete, reboot, start, stop), oldest first |
//! | `POST /control/v1/servers/{id}/{kill,hang,cut,heal}` | a namespace server's VNF killed, hung (SIGSTOP), its link cut, or all undone (`409` for light servers) |
//! | `GET /control/v1/calls?since_ms=T&from=IP&limit=N` | the API calls logged (arrival time on the wall clock, caller, method, path, status), oldest first |

// Refusals are the finished error responses (as in `api`).
#![allow(clippy::result_large_err)]

use crate::api::{account, error_response, Vim};
use crate::faults::ApiFaults;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;

/// Serves the control plane of `vim` on `listener`.
pub async fn serve_control(listener: tokio::net::TcpListener, vim: Vim) -> std::io::Result<()> {
    axum::serve(listener, router(vim)).await
}

pub fn router(vim: Vim) -> Router {
    Router::new()
        .route("/control/v1/state", get(state))
        .route("/control/v1/faults", put(set_faults))
        .route("/control/v1/history", get(history))
        .route("/control/v1/calls", get(calls))
        .route(
            "/control/v1/servers/{id}/{fault}",
            axum::routing::post(server_fault),
        )
        .with_state(vim)
}

fn check(vim: &Vim, headers: &HeaderMap) -> Result<(), Response> {
    if account(vim, headers) {
        Ok(())
    } else {
        Err(error_response(
            StatusCode::UNAUTHORIZED,
            "the control plane needs the VIM account (HTTP basic)",
        ))
    }
}

async fn state(State(vim): State<Vim>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&vim, &headers) {
        return r;
    }
    let (faults, counts) = vim.faults();
    Json(json!({ "faults": faults, "counts": counts, "servers": vim.server_count() }))
        .into_response()
}

async fn set_faults(
    State(vim): State<Vim>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check(&vim, &headers) {
        return r;
    }
    let f: ApiFaults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("faults: {e}")),
    };
    match vim.set_faults(f.clone()) {
        Ok(()) => {
            tracing::info!(?f, "API faults set");
            Json(json!({ "faults": f })).into_response()
        }
        Err(e) => error_response(StatusCode::BAD_REQUEST, e),
    }
}

async fn history(State(vim): State<Vim>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&vim, &headers) {
        return r;
    }
    Json(json!({ "history": vim.history() })).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    #[serde(default)]
    since_ms: u64,
    from: Option<String>,
    limit: Option<usize>,
}

async fn calls(
    State(vim): State<Vim>,
    headers: HeaderMap,
    q: Result<axum::extract::Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = check(&vim, &headers) {
        return r;
    }
    let Ok(axum::extract::Query(q)) = q else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "query: since_ms (wall-clock ms), from (an address), limit",
        );
    };
    let limit = q.limit.unwrap_or(1_000).min(crate::api::CALLS_KEPT);
    Json(json!({ "calls": vim.calls(q.since_ms, q.from.as_deref(), limit) })).into_response()
}

async fn server_fault(
    State(vim): State<Vim>,
    headers: HeaderMap,
    axum::extract::Path((id, fault)): axum::extract::Path<(String, String)>,
) -> Response {
    if let Err(r) = check(&vim, &headers) {
        return r;
    }
    let Some(f) = crate::servers::Fault::parse(&fault) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("{fault:?}: the faults are kill, hang, cut and heal"),
        );
    };
    match vim.server_fault(&id, f) {
        Err(e) => error_response(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Ok(())) => {
            tracing::info!(server = %id, fault = %fault, "server fault played");
            Json(json!({ "server": id, "fault": fault })).into_response()
        }
        Ok(Err(e)) => error_response(StatusCode::CONFLICT, e),
    }
}
