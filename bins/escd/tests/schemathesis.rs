//! The API fuzzed against its own document (issue 14, item 4): schemathesis
//! (PyPI, `scripts/install-schemathesis.sh`) reads the OpenAPI document the
//! primary of a live pair serves, generates requests for every operation
//! (valid and invalid bodies, parameters and headers, undocumented
//! methods, missing and wrong credentials, request sequences) and checks
//! every answer: no 5xx but a documented 503, the status, content type,
//! headers and body as documented, invalid input refused, no route served
//! without credentials. Then both nodes still run, in sync, and the served
//! document is the committed `docs/openapi.json`.
//!
//! Bounded here (examples per operation: `ESC_SCHEMATHESIS_EXAMPLES`, 25 by
//! default; a fixed seed, `ESC_SCHEMATHESIS_SEED`); the longer run of the
//! docs is the same test with more examples (docs/benchmarks.md, "API
//! fuzzing").

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A run's deadline: this, and [`DEADLINE_PER_EXAMPLE`] per example of each
/// operation (the schemathesis process is killed past it).
const RUN_DEADLINE: Duration = Duration::from_secs(600);
const DEADLINE_PER_EXAMPLE: Duration = Duration::from_secs(6);

/// The pinned schemathesis: `ESC_SCHEMATHESIS`, the one
/// `scripts/install-schemathesis.sh` installs, or one on `PATH`.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("ESC_SCHEMATHESIS") {
        return p.into();
    }
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/schemathesis/bin/schemathesis");
    if venv.exists() {
        return venv;
    }
    let on_path = Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        on_path,
        "schemathesis is not installed: run scripts/install-schemathesis.sh (.ci/run does)"
    );
    "schemathesis".into()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the checks accept beyond their defaults, and why (schemathesis.toml).
const CONFIG: &str = r#"
[generation]
# The credentials are the run's own (--auth), not generated: a case
# "without Authorization" would be sent with it and counted as invalid
# data accepted. ignored_auth still sends every operation without and with
# wrong credentials.
with-security-parameters = false
# No example database: each run starts from its seed alone.
database = "none"

[checks]
# A documented 503 (a standby, a handover, maintenance, no usable VIM) is
# an answer, not a server error; status_code_conformance still requires
# every 503 to be documented for its operation.
not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
# Invalid input is refused with a 4xx; 413: a body over api.body_bytes_max.
negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "415", "422", "429", "503"]
# Not checked: a request valid by the document may still be refused by
# rules across fields (max_active >= min_active, unique group names) or by
# what the VIM has (an image of that name), which a schema cannot say.
positive_data_acceptance.enabled = false

[[operations]]
# The event stream stays open: read a few events, then move on.
include-path = "/v0/events"
request-timeout = 2
max-stream-events = 3
"#;

/// Runs schemathesis on `schema` against `base`, `args` more; panics with
/// its report's tail unless every check passed.
fn run(dir: &Path, schema: &Path, base: &str, name: &str, args: &[&str]) {
    let n = env_u64("ESC_SCHEMATHESIS_EXAMPLES", 25);
    let deadline = RUN_DEADLINE + DEADLINE_PER_EXAMPLE * n as u32;
    let examples = n.to_string();
    let seed = env_u64("ESC_SCHEMATHESIS_SEED", 14).to_string();
    let out_path = dir.join(format!("{name}.out"));
    let junit = dir.join(format!("{name}.junit.xml"));
    let out = std::fs::File::create(&out_path).unwrap();
    let auth = format!("admin:{PASSWORD}");
    let mut child = Command::new(schemathesis())
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(schema)
        .args(["--url", base, "--auth", &auth])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .args(args)
        .current_dir(dir)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    eprintln!(
        "schemathesis {name}: {:?} in {:.0?}\n{}",
        status,
        started.elapsed(),
        tail(&text, 25)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "schemathesis {name} found problems (or ran past {deadline:?}):\n{}",
        tail(&text, 200)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn the_api_answers_as_its_document_says() {
    let (a, b) = pair(|s| {
        // The fuzzer fails logins on purpose (no or wrong credentials on
        // every operation): no delay for it, the default elsewhere.
        s.api_extra = "login_delay_ms = 0\n".into();
    });
    let dir = tempfile::Builder::new()
        .prefix("esc-schemathesis-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("schemathesis.toml"), CONFIG).unwrap();

    // The document as the primary serves it: the committed one.
    let served = rt().block_on(async {
        client()
            .get(a.url("/v0/openapi.json"))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"),
    )
    .unwrap();
    assert!(
        served == committed,
        "the served document is not docs/openapi.json"
    );
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, &served).unwrap();
    // The tenant of the document's example deployment exists: the examples
    // get as far as a deployment can without a VIM.
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    let tenant = doc["components"]["schemas"]["DeploymentSpec"]["example"]["tenant"]
        .as_str()
        .expect("the document's example deployment names its tenant");
    rt().block_on(async {
        let r = client()
            .post(a.url("/v0/tenants"))
            .basic_auth("admin", Some(PASSWORD))
            .json(&serde_json::json!({ "name": tenant }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "tenant {tenant}");
    });

    let api = format!("http://{}", a.spec.api);
    run(
        dir.path(),
        &schema,
        &api,
        "api",
        &["--exclude-path", "/esc/health"],
    );
    let health = format!("http://{}", a.spec.health);
    run(
        dir.path(),
        &schema,
        &health,
        "health",
        // No request sequences: its one operation links to none.
        &[
            "--include-path",
            "/esc/health",
            "--phases",
            "examples,coverage,fuzzing",
        ],
    );
    // The standby too: its writes are documented 503s, its reads answers.
    let standby = format!("http://{}", b.spec.api);
    run(
        dir.path(),
        &schema,
        &standby,
        "standby",
        &[
            "--exclude-path",
            "/esc/health",
            // No request sequences: a standby creates nothing to follow.
            "--phases",
            "examples,coverage,fuzzing",
        ],
    );

    // Nothing crashed, and the pair is still one.
    let (mut a, mut b) = (a, b);
    assert!(
        a.is_running() && b.is_running(),
        "a node died under the fuzzer"
    );
    wait_until(
        Duration::from_secs(20),
        "the pair in sync after the fuzzer",
        || {
            let s = a.status();
            s["role"] == "primary"
                && s["replication"]["peer"]["in_sync"] == true
                && digest(&a) == digest(&b)
        },
    );
}

/// Every error is `{"error": ...}`, whoever makes it: the guard, a
/// fallback, a handler, the body limit, or an extractor's rejection axum
/// answers itself (a path segment that is not UTF-8); the status and the
/// headers that matter (`Allow`, `WWW-Authenticate`) stay.
#[test]
fn every_error_is_json_whoever_makes_it() {
    let (a, _b) = pair(|_| {});
    let big = "x".repeat(2 << 20);
    /// A request (method, path, body, with credentials) and what it must
    /// get (status, a header it must carry).
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        bool,
        u16,
        Option<&'a str>,
    );
    let cases: [Case; 6] = [
        (
            "GET",
            "/v0/deployments",
            None,
            false,
            401,
            Some("www-authenticate"),
        ),
        ("GET", "/v0/deployments/%FF", None, true, 400, None),
        ("PATCH", "/v0/deployments", None, true, 405, Some("allow")),
        ("GET", "/v0/nothing-here", None, true, 404, None),
        ("POST", "/v0/deployments", Some(&big), true, 413, None),
        (
            "POST",
            "/v0/deployments",
            Some("{\"name\": 1}"),
            true,
            400,
            None,
        ),
    ];
    rt().block_on(async {
        for (method, path, body, auth, status, header) in cases {
            let mut req = client().request(method.parse().unwrap(), a.url(path));
            if auth {
                req = req.basic_auth("admin", Some(PASSWORD));
            }
            if let Some(b) = body {
                req = req.body(b.to_string());
            }
            let r = req.send().await.unwrap();
            let what = format!("{method} {path}");
            assert_eq!(r.status().as_u16(), status, "{what}");
            if let Some(h) = header {
                assert!(r.headers().contains_key(h), "{what}: {h}");
            }
            let ct = r.headers()[reqwest::header::CONTENT_TYPE].clone();
            assert!(
                ct.to_str().unwrap().starts_with("application/json"),
                "{what}: {ct:?}"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {v}"
            );
        }
    });
}
