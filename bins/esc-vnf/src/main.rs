//! `esc-vnf`: the small VNF `esc-vim` runs inside each namespace server
//! (issue 11, item 4). It reads its day-0 files, then serves on the
//! server's address:
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | `200` `{"status": "ok", "name", "day0": {path: bytes}, "started_unix_ms"}` |
//! | `GET /metrics` | `200` the metric values as a JSON object |
//! | `PUT /metrics/{name}` with a JSON number | sets it (what a test drives a KPI with) |
//!
//! ICMP is answered by the namespace's kernel. Killed, stopped or cut off
//! by `esc-vim`'s control plane to play a failed VM.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use clap::Parser;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// Most metrics a test may set.
const METRICS_MAX: usize = 256;

#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to serve on (the server's).
    #[arg(long)]
    listen: SocketAddr,
    /// The server's name.
    #[arg(long)]
    name: String,
    /// Directory holding the day-0 files (as the VM would find them).
    #[arg(long)]
    day0: Option<PathBuf>,
}

#[derive(Clone)]
struct Vnf {
    health: Arc<serde_json::Value>,
    metrics: Arc<Mutex<BTreeMap<String, f64>>>,
}

/// The day-0 files under `dir`: relative path -> size.
fn day0_files(dir: &std::path::Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let (Ok(rel), Ok(m)) = (p.strip_prefix(dir), e.metadata()) {
                out.insert(format!("/{}", rel.display()), m.len());
            }
        }
    }
    out
}

async fn health(State(v): State<Vnf>) -> impl IntoResponse {
    Json((*v.health).clone())
}

async fn metrics(State(v): State<Vnf>) -> impl IntoResponse {
    let m = v.metrics.lock().map(|m| m.clone()).unwrap_or_default();
    Json(serde_json::json!(m))
}

async fn set_metric(
    State(v): State<Vnf>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let value: Option<f64> = serde_json::from_slice(&body).ok();
    let Some(value) = value else {
        return (StatusCode::BAD_REQUEST, "the body must be a JSON number").into_response();
    };
    let Ok(mut m) = v.metrics.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if !m.contains_key(&name) && m.len() >= METRICS_MAX {
        return (StatusCode::BAD_REQUEST, "too many metrics").into_response();
    }
    m.insert(name, value);
    StatusCode::NO_CONTENT.into_response()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let day0 = args.day0.as_deref().map(day0_files).unwrap_or_default();
    let vnf = Vnf {
        health: Arc::new(serde_json::json!({
            "status": "ok", "name": args.name, "day0": day0, "started_unix_ms": started,
        })),
        metrics: Default::default(),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/metrics/{name}", put(set_metric))
        .with_state(vnf);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("esc-vnf: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        let l = tokio::net::TcpListener::bind(args.listen).await?;
        axum::serve(l, app).await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esc-vnf: cannot serve on {}: {e}", args.listen);
            ExitCode::FAILURE
        }
    }
}
