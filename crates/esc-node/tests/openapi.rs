//! The northbound API's OpenAPI document (issue 14, item 4): the committed
//! `docs/openapi.json` is what the code generates (and serves at
//! `GET /v0/openapi.json`), and the document keeps the API's conventions.
//! Regenerate it with
//! `ESC_WRITE_OPENAPI=1 cargo test -p esc-node --test openapi`.

use esc_node::northbound::api::{document, document_json};
use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = document_json();
    if std::env::var_os("ESC_WRITE_OPENAPI").is_some() {
        std::fs::write(committed_path(), &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the document the code generates: run \
         `ESC_WRITE_OPENAPI=1 cargo test -p esc-node --test openapi` and commit it"
    );
}

fn doc() -> serde_json::Value {
    document()
}

fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.clone(), path.clone(), op.clone()));
        }
    }
    ops
}

#[test]
fn every_route_is_described() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut routes: Vec<String> = operations(&doc)
        .iter()
        .map(|(m, p, _)| format!("{} {p}", m.to_uppercase()))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "DELETE /v0/deployments/{name}",
            "DELETE /v0/users/{name}",
            "GET /esc/health",
            "GET /v0/deployments",
            "GET /v0/deployments/{name}",
            "GET /v0/events",
            "GET /v0/openapi.json",
            "GET /v0/operations/{id}",
            "GET /v0/users",
            "POST /v0/deployments",
            "POST /v0/deployments/{name}/actions",
            "POST /v0/deployments/{name}/vms/{vm}",
            "POST /v0/operations/{id}/{task}",
            "POST /v0/tenants",
            "PUT /v0/deployments/{name}",
            "PUT /v0/users/{name}",
        ]
    );
}

#[test]
fn every_error_has_the_one_shape_and_every_route_its_guard() {
    let doc = doc();
    let shared = &doc["components"]["responses"];
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        for (status, r) in responses {
            let code: u16 = status.parse().unwrap();
            // The health report is ESC's, healthy or not.
            if code < 400 || path == "/esc/health" {
                continue;
            }
            // A shared response (by reference) or the route's own.
            let r = match r["$ref"].as_str() {
                Some(rf) => &shared[rf.rsplit('/').next().unwrap()],
                None => r,
            };
            assert_eq!(
                r["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} {status}"
            );
        }
        assert!(responses.contains_key("401"), "{method} {path}: 401");
        assert!(responses.contains_key("429"), "{method} {path}: 429");
        assert!(
            op["description"]
                .as_str()
                .is_some_and(|d| d.contains("Role: ")),
            "{method} {path}: its role"
        );
        if method != "get" {
            assert!(responses.contains_key("403"), "{method} {path}: 403");
            assert!(responses.contains_key("503"), "{method} {path}: 503");
            let params = op["parameters"].as_array().unwrap();
            assert!(
                params.iter().any(|p| p["name"] == "Idempotency-Key"),
                "{method} {path}: Idempotency-Key"
            );
        }
    }
    assert_eq!(doc["security"][0]["basic"], serde_json::json!([]));
}
