//! The service end to end on one node (issue 11, first slice): a tenant, a
//! service of two VMs deployed on the lab's VIM (`esc-vim`, in process) by
//! the primary's lifecycle runner through the OpenStack API, its state
//! through the northbound, then its undeploy; bad input refused with the
//! field named.

mod common;

use common::{client, rt, wait_until, Node, NodeSpec, PASSWORD};
use std::time::Duration;

const VIM_PASSWORD: &str = "vim-password-for-the-test-31";

/// esc-vim on a loopback port, on its own thread; its base URL.
fn start_vim() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let creds = esc_vim::Credentials {
                user: "admin".into(),
                password: VIM_PASSWORD.into(),
                project: "vnf".into(),
                token_ttl: Duration::from_secs(3600),
            };
            let cloud = esc_vim::Cloud::lab(esc_vim::Capacity {
                build_ms: 100,
                ..esc_vim::Capacity::default()
            });
            let _ = esc_vim::serve(listener, cloud, creds, b).await;
        });
    });
    base
}

fn vim_client(base: &str) -> esc_openstack::Client {
    esc_openstack::Client::new(esc_openstack::Connector {
        auth_url: format!("{base}/identity/v3"),
        user: "admin".into(),
        password: esc_openstack::Secret::new(VIM_PASSWORD),
        project: "vnf".into(),
        user_domain: "Default".into(),
        project_domain: "Default".into(),
        region: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn spec(min_active: u32) -> serde_json::Value {
    serde_json::json!({
        "name": "web", "tenant": "t1",
        "vm_groups": [{
            "name": "g1", "image": "vnf-image", "flavor": "m1.small",
            "scaling": { "min_active": min_active, "max_active": 2 },
            "interfaces": [{ "nicid": 0, "network": "vnf-net", "ip_addresses": ["203.0.113.50", "203.0.113.51"] }],
            "config_data": [{ "file": "/etc/vnf.conf", "data": "mode=fast\n" }]
        }]
    })
}

#[test]
fn a_service_is_deployed_on_the_vim_and_undeployed() {
    let vim = start_vim();
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("vim.password");
    std::fs::write(&pw, VIM_PASSWORD).unwrap();
    let mut spec_node = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    spec_node.extra_toml = format!(
        "[vim]\nauth_url = \"{vim}/identity/v3\"\nuser = \"admin\"\npassword_file = \"{}\"\nproject = \"vnf\"\npoll_ms = 50\n",
        pw.display()
    );
    let node = Node::start(spec_node);
    let rt = rt();
    let c = client();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        rt.block_on(async {
            let mut r = c
                .request(method, node.url(path))
                .basic_auth("admin", Some(PASSWORD));
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        })
    };
    use reqwest::Method;
    // Bad input: the field is named; nothing is started.
    let (status, body) = call(Method::POST, "/v0/services", Some(spec(0)));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("vm_groups[0].scaling.min_active"),
        "{body}"
    );
    let (status, body) = call(Method::POST, "/v0/services", Some(spec(2)));
    assert_eq!(status, 404, "no tenant yet: {body}");
    assert_eq!(
        call(
            Method::POST,
            "/v0/tenants",
            Some(serde_json::json!({"name": "t1"}))
        )
        .0,
        201
    );

    let (status, body) = call(Method::POST, "/v0/services", Some(spec(2)));
    assert_eq!(status, 202, "{body}");
    let op = body["operation"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), "the service is active", || {
        call(Method::GET, "/v0/services/web", None).1["state"] == "SERVICE_ACTIVE_STATE"
    });
    let (_, o) = call(Method::GET, &format!("/v0/operations/{op}"), None);
    assert_eq!(o["state"], "COMPLETED", "{o}");
    let vim_c = vim_client(&vim);
    let servers = rt.block_on(vim_c.servers(None)).unwrap();
    let mut names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["esc-web-g1-0-g0", "esc-web-g1-1-g0"],
        "one server per VM"
    );
    let s0 = servers
        .iter()
        .find(|s| s.name == "esc-web-g1-0-g0")
        .unwrap();
    assert_eq!(
        s0.addresses["vnf-net"][0].addr, "203.0.113.50",
        "the fixed address of index 0"
    );
    assert_eq!(s0.metadata["esc_deployment"], "web");

    let (status, _) = call(Method::DELETE, "/v0/services/web", None);
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(30), "the service is gone", || {
        call(Method::GET, "/v0/services/web", None).0 == 404
    });
    assert!(
        rt.block_on(vim_c.servers(None)).unwrap().is_empty(),
        "no server left on the VIM"
    );
}
