//! The API's accounts (issue 14, item 3), on a pair: users made with the
//! real `escadm user` work on either node; a viewer cannot write (403), an
//! operator cannot manage users or tenants (403); a wrong password is
//! refused (401), and from the tenth wrong one within a minute the same
//! address waits; a changed password or a deleted user stops working at
//! once; a user past its write budget gets 429 with `Retry-After`; no
//! password reaches a log or a status.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn escadm() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_escd")).with_file_name("escadm");
    assert!(
        p.exists(),
        "build escadm first: scripts/test.sh does (cargo build --workspace --bins)"
    );
    p
}

/// `escadm user ...` on node `n`, `stdin` fed to it: exit code and output.
fn user_cmd(n: &Node, args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(escadm())
        .arg("--home")
        .arg(&n.home)
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// One request as `user`: status, `Retry-After`, body.
fn call(
    n: &Node,
    method: &str,
    path: &str,
    user: &str,
    password: &str,
    body: Option<serde_json::Value>,
) -> (u16, Option<String>, serde_json::Value) {
    let url = n.url(path);
    rt().block_on(async {
        let c = client();
        let mut req = c
            .request(method.parse().unwrap(), &url)
            .basic_auth(user, Some(password));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, retry, v)
    })
}

const VIEWER_PW: &str = "viewer-password-0123";
const OPERATOR_PW: &str = "operator-password-0123";
const NEW_PW: &str = "operator-new-password-0123";

#[test]
fn roles_wrong_passwords_budgets_and_no_password_in_logs() {
    let (a, b) = pair(|s| s.api_extra = "writes_per_user_per_s = 5\n".into());
    let (code, out) = user_cmd(
        &a,
        &["add", "vera", "--role", "viewer", "--password-stdin"],
        &format!("{VIEWER_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = user_cmd(
        &a,
        &["add", "otto", "--role", "operator", "--password-stdin"],
        &format!("{OPERATOR_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");
    // Bad input changes nothing and says what to do.
    let (code, out) = user_cmd(
        &a,
        &["add", "shorty", "--role", "viewer", "--password-stdin"],
        "short\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("password"), "{out}");
    let (code, out) = user_cmd(
        &a,
        &["add", "otto", "--role", "admin", "--password-stdin"],
        &format!("{OPERATOR_PW}\n"),
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("already exists"), "{out}");
    let (code, out) = user_cmd(
        &a,
        &["passwd", "admin", "--password-stdin"],
        &format!("{NEW_PW}\n"),
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("bootstrap"), "{out}");
    // The standby refuses changes, and lists the replicated accounts.
    let (code, out) = user_cmd(&b, &["del", "vera"], "");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("standby"), "{out}");
    wait_until(Duration::from_secs(10), "the users replicated", || {
        user_cmd(&b, &["list"], "").1.contains("otto")
    });
    let (_, list) = user_cmd(&b, &["list"], "");
    assert!(list.contains("vera") && list.contains("viewer"), "{list}");
    assert!(!list.contains("argon2"), "a hash is listed: {list}");

    // Either node admits the accounts (reads answer on the standby).
    for n in [&a, &b] {
        let (s, _, v) = call(n, "GET", "/v0/deployments", "vera", VIEWER_PW, None);
        assert_eq!(s, 200, "{v}");
        let (s, _, _) = call(n, "GET", "/esc/health", "vera", VIEWER_PW, None);
        assert_eq!(s, 404, "the health API is on its own port");
    }
    // A viewer cannot write; an operator cannot manage users or tenants.
    let dep = deployment("d-viewer", serde_json::json!({}));
    let (s, _, v) = call(&a, "POST", "/v0/deployments", "vera", VIEWER_PW, Some(dep));
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("operator"), "{v}");
    let (s, _, v) = call(&a, "GET", "/v0/users", "otto", OPERATOR_PW, None);
    assert_eq!(s, 403, "{v}");
    let body = serde_json::json!({ "role": "admin", "password": "operator-made-admin-1" });
    let (s, _, v) = call(
        &a,
        "PUT",
        "/v0/users/mallory",
        "otto",
        OPERATOR_PW,
        Some(body),
    );
    assert_eq!(s, 403, "{v}");
    let (s, _, v) = call(
        &a,
        "POST",
        "/v0/tenants",
        "otto",
        OPERATOR_PW,
        Some(serde_json::json!({"name": "t2"})),
    );
    assert_eq!(s, 403, "{v}");
    // An operator runs the lifecycle.
    let dep = deployment("d-operator", serde_json::json!({}));
    let (s, _, v) = call(
        &a,
        "POST",
        "/v0/deployments",
        "otto",
        OPERATOR_PW,
        Some(dep),
    );
    assert_eq!(s, 202, "{v}");
    // The admin manages users over the API too.
    let body = serde_json::json!({ "role": "viewer", "password": "api-made-viewer-01" });
    let (s, _, v) = call(&a, "PUT", "/v0/users/ivy", "admin", PASSWORD, Some(body));
    assert_eq!(s, 201, "{v}");
    let (s, _, v) = call(&a, "GET", "/v0/users", "admin", PASSWORD, None);
    assert_eq!(s, 200, "{v}");
    assert!(
        v.to_string().contains("ivy") && !v.to_string().contains("argon2"),
        "{v}"
    );

    // Past its budget (5 writes a second, as many in reserve), a user gets
    // 429 and when to come back; reads are not counted.
    let mut over = None;
    for i in 0..40 {
        let dep = deployment(&format!("d-budget-{i}"), serde_json::json!({}));
        let (s, retry, v) = call(
            &a,
            "POST",
            "/v0/deployments",
            "otto",
            OPERATOR_PW,
            Some(dep),
        );
        if s == 429 {
            over = Some((retry, v));
            break;
        }
        assert_eq!(s, 202, "{v}");
    }
    let (retry, v) = over.expect("40 writes at once stayed within a budget of 5 per second");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1), "{v}");
    assert!(v["error"].as_str().unwrap().contains("budget"), "{v}");
    assert!(counter(&a, "writes_over_budget") >= 1);

    // A changed password works at once on both nodes, the old one not.
    let (code, out) = user_cmd(
        &a,
        &["passwd", "otto", "--password-stdin"],
        &format!("{NEW_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");
    wait_until(
        Duration::from_secs(10),
        "the new password on the standby",
        || call(&b, "GET", "/v0/deployments", "otto", NEW_PW, None).0 == 200,
    );
    assert_eq!(
        call(&a, "GET", "/v0/deployments", "otto", OPERATOR_PW, None).0,
        401
    );
    // A deleted user is refused.
    let (code, out) = user_cmd(&a, &["del", "ivy"], "");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        call(
            &a,
            "GET",
            "/v0/deployments",
            "ivy",
            "api-made-viewer-01",
            None
        )
        .0,
        401
    );

    // Wrong passwords from one address: refused, and from the tenth within
    // a minute, delayed (auth::LOGIN_DELAY, 3 s). The earlier ones come
    // back at once (an Argon2 check, tens of milliseconds).
    let guesses: Vec<String> = (0..10).map(|i| format!("guess-number-{i:04}")).collect();
    // The earlier wrong ones above (the old password, the deleted user)
    // count too: start from a fresh address.
    let from = "127.0.0.9";
    let timed = |pw: &str| {
        let t = Instant::now();
        let s = call_from(&b, from, "vera", pw);
        (s, t.elapsed())
    };
    for g in &guesses[..9] {
        let (s, took) = timed(g);
        assert_eq!(s, 401);
        assert!(
            took < Duration::from_secs(2),
            "an early wrong password took {took:?}"
        );
    }
    let (s, took) = timed(&guesses[9]);
    assert_eq!(s, 401);
    assert!(
        took >= Duration::from_millis(2_900),
        "the tenth wrong password took only {took:?}"
    );
    // Another address is not held back.
    let t = Instant::now();
    assert_eq!(call_from(&b, "127.0.0.10", "vera", VIEWER_PW), 200);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(counter(&b, "login_failures") >= 10);
    assert!(counter(&b, "logins_throttled") >= 1);

    // No password in any log or status of either node.
    let secrets = [
        VIEWER_PW,
        OPERATOR_PW,
        NEW_PW,
        "api-made-viewer-01",
        PASSWORD,
    ];
    for n in [&a, &b] {
        let status = n.status().to_string();
        let mut logs = String::new();
        for e in std::fs::read_dir(n.home.join("log")).unwrap() {
            logs += &std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        }
        logs += &std::fs::read_to_string(n.home.join("stderr.log")).unwrap_or_default();
        assert!(logs.contains("failed login") || n.spec.name == "esc-1");
        for s in secrets.iter().chain(
            guesses
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .iter(),
        ) {
            assert!(!status.contains(s), "{s} in the status of {}", n.spec.name);
            assert!(!logs.contains(s), "{s} in the logs of {}", n.spec.name);
        }
    }
}

/// `GET /v0/deployments` on `n` from the local address `from` (each 127/8
/// address stands for another host): the status.
fn call_from(n: &Node, from: &str, user: &str, password: &str) -> u16 {
    let url = n.url("/v0/deployments");
    let from: std::net::IpAddr = from.parse().unwrap();
    rt().block_on(async {
        let c = reqwest::Client::builder()
            .local_address(from)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        c.get(&url)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn every_error_is_the_json_shape_and_nothing_is_told_without_credentials() {
    let n = Node::start(NodeSpec::new("esc-solo", "127.0.0.1", "primary"));
    wait_until(Duration::from_secs(20), "node up", || {
        n.status()["role"] == "primary"
    });
    let get = |path: &str, auth: bool| {
        let url = n.url(path);
        rt().block_on(async {
            let mut r = client().get(&url);
            if auth {
                r = r.basic_auth("admin", Some(PASSWORD));
            }
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.ok(),
            )
        })
    };
    // Without credentials, even an unknown path says only 401.
    let (s, v) = get("/no/such/thing", false);
    assert_eq!(s, 401);
    assert!(v.unwrap()["error"].is_string());
    let (s, v) = get("/no/such/thing", true);
    assert_eq!(s, 404);
    assert!(v.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("/no/such/thing"));
    let (s, v) = rt().block_on(async {
        let r = client()
            .patch(n.url("/v0/deployments"))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.ok(),
        )
    });
    assert_eq!(s, 405);
    assert!(v.unwrap()["error"].is_string());
}
