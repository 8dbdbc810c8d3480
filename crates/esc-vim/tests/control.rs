//! The control plane sets API faults the OpenStack API then shows: a
//! failed call does nothing, a lost answer hides a create that happened
//! (the history has it), bad faults are refused with the field, and the
//! control plane needs the VIM's account.

use esc_vim::{Capacity, Cloud, Credentials, Vim};
use serde_json::{json, Value};
use std::time::Duration;

const PASSWORD: &str = "control-test-password-4242";

async fn listen() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[tokio::test]
async fn faults_set_on_the_control_plane_reach_the_api() {
    let (api, base) = listen().await;
    let (control, control_url) = listen().await;
    let creds = Credentials {
        user: "admin".into(),
        password: PASSWORD.into(),
        project: "vnf".into(),
        token_ttl: Duration::from_secs(3600),
    };
    let vim = Vim::new(Cloud::lab(Capacity::default()), creds, base.clone());
    tokio::spawn(esc_vim::serve_vim(api, vim.clone()));
    tokio::spawn(esc_vim::serve_control(control, vim.clone()));
    let c = reqwest::Client::new();
    let token = c
        .post(format!("{base}/identity/v3/auth/tokens"))
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": PASSWORD}}},
            "scope": {"project": {"name": "vnf", "domain": {"name": "Default"}}}}}),
        )
        .send()
        .await
        .unwrap()
        .headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_string();
    let faults = |f: Value| {
        let c = c.clone();
        let url = format!("{control_url}/control/v1/faults");
        async move {
            let r = c
                .put(url)
                .basic_auth("admin", Some(PASSWORD))
                .json(&f)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let create = |name: &str| {
        let c = c.clone();
        let (url, token) = (format!("{base}/compute/v2.1/servers"), token.clone());
        let body = json!({"server": {"name": name, "imageRef": "5b1f6c9e-6a0e-4a8f-9a55-0d3f7c8e2a01", "flavorRef": "1",
            "networks": [{"uuid": "8f0c2f62-2f52-4a53-8f5e-5a3f0c9d1e01"}]}});
        async move {
            c.post(url)
                .header("x-auth-token", token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let names = || {
        vim.history()
            .into_iter()
            .map(|h| (h.name, h.what))
            .collect::<Vec<_>>()
    };

    // Unauthenticated, or bad faults: refused, nothing changed.
    let r = c
        .put(format!("{control_url}/control/v1/faults"))
        .json(&json!({"fail_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, body) = faults(json!({"fail_rate": 2.0})).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("fail_rate"), "{body}");
    assert_eq!(create("s0").await, 202);

    // Every call fails: nothing is created.
    assert_eq!(faults(json!({"fail_rate": 1.0})).await.0, 200);
    assert_eq!(create("s1").await, 503);
    // Every answer is lost: the create happened all the same.
    assert_eq!(faults(json!({"lose_rate": 1.0})).await.0, 200);
    assert_eq!(create("s2").await, 503);
    assert_eq!(
        names(),
        [
            ("s0".to_string(), "create".to_string()),
            ("s2".into(), "create".into())
        ]
    );
    assert_eq!(faults(json!({})).await.0, 200);
    let state: Value = c
        .get(format!("{control_url}/control/v1/state"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["counts"]["failed"], 1, "{state}");
    assert_eq!(state["counts"]["lost"], 1, "{state}");
}
