//! The service end to end on one node (issue 11, first slice): a tenant, a
//! service of two VMs deployed on the lab's VIM (`esc-vim`, in process) by
//! the primary's lifecycle runner through the OpenStack API, its state
//! through the northbound, then its undeploy; bad input refused with the
//! field named; each result POSTed to its callback URL (retried, and an
//! unreachable URL holding up no other), and every notification on the
//! event stream, resumable with `Last-Event-ID`.

mod common;

use common::{client, rt, wait_until, Node, NodeSpec, PASSWORD};
use std::path::PathBuf;

fn escadm() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_escd")).with_file_name("escadm");
    assert!(
        p.exists(),
        "build escadm first: scripts/test.sh does (cargo build --workspace --bins)"
    );
    p
}

/// What `escadm status --v` prints for `node`.
fn status_text(node: &Node) -> String {
    let out = std::process::Command::new(escadm())
        .arg("--home")
        .arg(&node.home)
        .args(["status", "--v"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}
use esc_lab::notify::{stream_faults, CallbackSink, EventReader, SseRecord};
use std::time::Duration;

const VIM_PASSWORD: &str = "vim-password-for-the-test-31";

/// esc-vim on a loopback port, on its own thread; its base URL.
fn start_vim() -> String {
    start_vim_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
}

fn start_vim_on(listener: std::net::TcpListener) -> String {
    start_vim_handle(listener).0
}

/// esc-vim on `listener`: its base URL and its handle (API faults).
fn start_vim_handle(listener: std::net::TcpListener) -> (String, esc_vim::Vim) {
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
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
    let vim = esc_vim::Vim::new(cloud, creds, base.clone());
    let v = vim.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = esc_vim::serve_vim(listener, v).await;
        });
    });
    (base, vim)
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

/// One authenticated API call to `node`: its status and JSON body.
fn api(
    rt: &tokio::runtime::Runtime,
    c: &reqwest::Client,
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    rt.block_on(async {
        let mut r = c
            .request(method, node.url(path))
            .basic_auth("admin", Some(PASSWORD));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    })
}

/// A node whose `[vim]` points at `vim` (a base URL); the password file
/// lives in the returned directory.
fn node_with_vim(vim: &str) -> (Node, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("vim.password");
    std::fs::write(&pw, VIM_PASSWORD).unwrap();
    let mut spec_node = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    spec_node.extra_toml = format!(
        "[vim]\nauth_url = \"{vim}/identity/v3\"\nuser = \"admin\"\npassword_file = \"{}\"\nproject = \"vnf\"\npoll_ms = 50\n",
        pw.display()
    );
    (Node::start(spec_node), secrets)
}

/// The VIM manager's health: `stage` INIT and a clear 503 for a deploy
/// of VMs (nothing started) while the VIM does not answer; READY, and
/// the deploy accepted, once it does; the status shows the connector and
/// its last error, never the password.
#[test]
fn the_stage_is_init_and_deploys_get_503_until_the_vim_answers() {
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = spare.local_addr().unwrap();
    drop(spare);
    let (node, _secrets) = node_with_vim(&format!("http://{addr}"));
    let health = || node.admin(esc_proto::AdminRequest::Health).value.unwrap();
    wait_until(Duration::from_secs(10), "the VIM tried", || {
        health()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "vim" && c["ok"] == false && c["detail"] != "")
    });
    let h = health();
    assert_eq!(h["stage"], "INIT", "{h}");
    assert_eq!(
        h["status_code"], 2000,
        "a VIM outage is no node failure: {h}"
    );
    let rt = rt();
    let c = client();
    let post = |path: &str, body: serde_json::Value| {
        api(&rt, &c, &node, reqwest::Method::POST, path, Some(body))
    };
    assert_eq!(
        post("/v0/tenants", serde_json::json!({"name": "t1"})).0,
        201
    );
    let (status, body) = post("/v0/deployments", spec(2));
    assert_eq!(status, 503, "{body}");
    let e = body["error"].as_str().unwrap();
    assert!(
        e.contains(&addr.to_string()) && e.contains("nothing was started"),
        "{e}"
    );
    let got = rt.block_on(async {
        c.get(node.url("/v0/deployments/web"))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(got, 404, "nothing half-done");
    // A deployment of no VM group needs no VIM.
    let (status, _) = post(
        "/v0/deployments",
        serde_json::json!({"name": "bare", "tenant": "t1"}),
    );
    assert_eq!(status, 202);
    let s = node
        .admin(esc_proto::AdminRequest::Status {
            verbose: true,
            health: false,
        })
        .value
        .unwrap();
    let v = &s["vim"];
    assert_eq!(v["usable"], false, "{s}");
    assert!(
        v["last_error"].as_str().unwrap().contains("unreachable"),
        "{v}"
    );
    let text = status_text(&node);
    assert!(
        text.contains("vim:") && text.contains("usable=no"),
        "{text}"
    );
    assert!(!text.contains(VIM_PASSWORD) && !v.to_string().contains(VIM_PASSWORD));

    // The VIM comes up on that address: READY, and the deploy goes ahead.
    start_vim_on(std::net::TcpListener::bind(addr).unwrap());
    wait_until(Duration::from_secs(10), "stage READY", || {
        health()["stage"] == "READY"
    });
    let (status, body) = post("/v0/deployments", spec(2));
    assert_eq!(status, 202, "{body}");
    assert!(!node.log_text("escmanager.log").contains(VIM_PASSWORD));
    assert!(!node.log_text("escadm.log").contains(VIM_PASSWORD));
}

#[test]
fn a_service_is_deployed_on_the_vim_and_undeployed() {
    let vim = start_vim();
    let (node, _secrets) = node_with_vim(&vim);
    let rt = rt();
    let c = client();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        api(&rt, &c, &node, method, path, body)
    };
    use reqwest::Method;
    // Bad input: the field is named; nothing is started.
    let (status, body) = call(Method::POST, "/v0/deployments", Some(spec(0)));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("vm_groups[0].scaling.min_active"),
        "{body}"
    );
    let (status, body) = call(Method::POST, "/v0/deployments", Some(spec(2)));
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

    // What the VIM does not have, or has no room for: refused with the
    // field, nothing started.
    let mut bad = spec(2);
    bad["vm_groups"][0]["image"] = "no-such-image".into();
    let (status, body) = call(Method::POST, "/v0/deployments", Some(bad));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("vm_groups[0].image: image \"no-such-image\""),
        "{body}"
    );
    let mut bad = spec(2);
    bad["vm_groups"][0]["interfaces"][0]["network"] = "no-net".into();
    let (status, body) = call(Method::POST, "/v0/deployments", Some(bad));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("vm_groups[0].interfaces[0].network"),
        "{body}"
    );
    let mut big = spec(2);
    big["vm_groups"][0]["scaling"] = serde_json::json!({"min_active": 600, "max_active": 600});
    big["vm_groups"][0]["interfaces"][0]["ip_addresses"] = serde_json::json!([]);
    let (status, body) = call(Method::POST, "/v0/deployments", Some(big));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the VIM has 512 vCPUs"),
        "{body}"
    );
    let mut missing = spec(2);
    missing["vm_groups"][0]
        .as_object_mut()
        .unwrap()
        .remove("flavor");
    let (status, body) = call(Method::POST, "/v0/deployments", Some(missing));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing field `flavor`"),
        "{body}"
    );
    assert_eq!(
        call(Method::GET, "/v0/deployments/web", None).0,
        404,
        "nothing started"
    );

    // Callbacks (the first POST refused: the notifier retries) and the
    // event stream, from the start of the outbox.
    let sink = CallbackSink::bind("127.0.0.1:0", 1).unwrap();
    let reader = EventReader::start(node.spec.api, "admin", PASSWORD, 0, Duration::from_secs(3));
    let with_callback = |method: Method, path: &str, cb: &str, body: Option<serde_json::Value>| {
        rt.block_on(async {
            let mut r = c
                .request(method, node.url(path))
                .basic_auth("admin", Some(PASSWORD))
                .header("callback", cb);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            let tid = r.headers()["esc-transaction-id"]
                .to_str()
                .unwrap()
                .to_string();
            (
                r.status().as_u16(),
                tid,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        })
    };
    let (status, _, body) =
        with_callback(Method::POST, "/v0/deployments", "ftp://x/", Some(spec(2)));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("callback:"),
        "{body}"
    );
    assert_eq!(
        call(Method::GET, "/v0/deployments/web", None).0,
        404,
        "nothing started"
    );

    let (status, deploy_tid, body) = with_callback(
        Method::POST,
        "/v0/deployments",
        &sink.url("/cb/deploy"),
        Some(spec(2)),
    );
    assert_eq!(status, 202, "{body}");
    let op = body["operation"].as_str().unwrap().to_string();
    assert_eq!(body["href"], format!("/v0/operations/{op}"));
    wait_until(Duration::from_secs(30), "the service is active", || {
        call(Method::GET, "/v0/deployments/web", None).1["state"] == "SERVICE_ACTIVE_STATE"
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

    // The deploy's result reached its callback, with ESC's headers.
    assert!(sink.wait(1, Duration::from_secs(30)), "no callback");
    let got = &sink.received()[0];
    assert_eq!(got.path, "/cb/deploy");
    assert_eq!(got.headers["esc-status-code"], "200");
    assert_eq!(got.headers["esc_transaction_id"], deploy_tid);
    assert_eq!(got.body["operation"]["state"], "COMPLETED");
    assert_eq!(got.body["deployment"]["state"], "SERVICE_ACTIVE_STATE");

    let (status, _, _) = with_callback(
        Method::DELETE,
        "/v0/deployments/web",
        &sink.url("/cb/undeploy"),
        None,
    );
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(30), "the service is gone", || {
        call(Method::GET, "/v0/deployments/web", None).0 == 404
    });
    assert!(
        rt.block_on(vim_c.servers(None)).unwrap().is_empty(),
        "no server left on the VIM"
    );
    assert!(
        sink.wait(2, Duration::from_secs(30)),
        "no undeploy callback"
    );
    assert_eq!(sink.received()[1].path, "/cb/undeploy");

    // An unreachable callback URL holds nothing: the next operation's
    // callback arrives while the first is still being retried.
    assert_eq!(
        call(
            Method::POST,
            "/v0/tenants",
            Some(serde_json::json!({"name": "t2"}))
        )
        .0,
        201
    );
    let empty = |name: &str| serde_json::json!({ "name": name, "tenant": "t2" });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/never", closed.local_addr().unwrap());
    drop(closed);
    let (status, _, body) = with_callback(
        Method::POST,
        "/v0/deployments",
        &dead_url,
        Some(empty("e1")),
    );
    assert_eq!(
        (status, &body["state"]),
        (202, &serde_json::json!("COMPLETED"))
    );
    let (status, _, _) = with_callback(
        Method::POST,
        "/v0/deployments",
        &sink.url("/cb/e2"),
        Some(empty("e2")),
    );
    assert_eq!(status, 202);
    assert!(
        sink.wait(3, Duration::from_secs(30)),
        "e2's callback held up"
    );
    assert_eq!(sink.received()[2].path, "/cb/e2");

    // The event stream: every notification, in order, nothing missing.
    let done = |e: &[SseRecord]| e.iter().filter(|r| r.event == "SERVICE_ALIVE").count() >= 3;
    assert!(
        reader.wait_for(Duration::from_secs(30), done),
        "events: {:?}",
        reader.events()
    );
    let events = reader.finish();
    assert!(
        stream_faults(&events).is_empty(),
        "{:?}",
        stream_faults(&events)
    );
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let count = |n: &str| names.iter().filter(|x| **x == n).count();
    assert_eq!(
        (
            count("VM_DEPLOYED"),
            count("VM_ALIVE"),
            count("VM_UNDEPLOYED"),
            count("SERVICE_UNDEPLOYED")
        ),
        (2, 2, 2, 1),
        "{names:?}"
    );
    // Resuming after an event gives exactly what followed it.
    let alive = events
        .iter()
        .position(|e| e.event == "SERVICE_ALIVE")
        .unwrap();
    let resumed = EventReader::start(
        node.spec.api,
        "admin",
        PASSWORD,
        events[alive].id,
        Duration::from_secs(3),
    );
    let rest = events.len() - alive - 1;
    assert!(resumed.wait_for(Duration::from_secs(10), |e| e.len() >= rest));
    let again: Vec<u64> = resumed.finish().iter().map(|e| e.id).take(rest).collect();
    let want: Vec<u64> = events[alive + 1..].iter().map(|e| e.id).collect();
    assert_eq!(again, want);
}

/// A VIM that fails every call: the deploy ends FAILED_TEMP with the
/// reason (after its bounded retries); once the VIM is back, `retry`
/// carries it to COMPLETED with one server per VM, and a task on an
/// operation that is not FAILED_TEMP is refused.
#[test]
fn a_failed_temp_deploy_is_retried_to_completion() {
    let (vim, handle) = start_vim_handle(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let (node, _secrets) = node_with_vim(&vim);
    let rt = rt();
    let c = client();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        api(&rt, &c, &node, method, path, body)
    };
    use reqwest::Method;
    wait_until(Duration::from_secs(10), "the VIM answers", || {
        node.admin(esc_proto::AdminRequest::Health).value.unwrap()["stage"] == "READY"
    });
    assert_eq!(
        call(
            Method::POST,
            "/v0/tenants",
            Some(serde_json::json!({"name": "t1"}))
        )
        .0,
        201
    );
    // Accepted while the VIM answers, then every call fails.
    let mut s = spec(2);
    s["vm_groups"][0]["interfaces"][0]["ip_addresses"] = serde_json::json!([]);
    let (status, body) = call(Method::POST, "/v0/deployments", Some(s));
    assert_eq!(status, 202, "{body}");
    let op = body["operation"].as_str().unwrap().to_string();
    handle
        .set_faults(esc_vim::faults::ApiFaults {
            fail_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
    let op_url = format!("/v0/operations/{op}");
    wait_until(Duration::from_secs(60), "FAILED_TEMP", || {
        call(Method::GET, &op_url, None).1["state"] == "FAILED_TEMP"
    });
    let o = call(Method::GET, &op_url, None).1;
    assert!(
        o["error"].as_str().unwrap().contains("injected fault"),
        "{o}"
    );
    assert_eq!(
        call(Method::GET, "/v0/deployments/web", None).1["state"],
        "SERVICE_ERROR_STATE"
    );
    // The VIM is back: retry.
    handle
        .set_faults(esc_vim::faults::ApiFaults::default())
        .unwrap();
    let (status, body) = call(Method::POST, &format!("{op_url}/retry"), None);
    assert_eq!(status, 202, "{body}");
    wait_until(Duration::from_secs(60), "COMPLETED", || {
        call(Method::GET, &op_url, None).1["state"] == "COMPLETED"
    });
    assert_eq!(
        call(Method::GET, "/v0/deployments/web", None).1["state"],
        "SERVICE_ACTIVE_STATE"
    );
    let servers = rt.block_on(vim_client(&vim).servers(None)).unwrap();
    assert_eq!(servers.len(), 2, "one server per VM: {servers:?}");
    let (status, body) = call(Method::POST, &format!("{op_url}/fail"), None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only a FAILED_TEMP"),
        "{body}"
    );
    let (status, _) = call(Method::POST, &format!("{op_url}/melt"), None);
    assert_eq!(status, 404);

    // Another deploy fails the same way; this one is rolled back: every
    // server it made is deleted and the deployment is gone.
    let mut s2 = spec(2);
    s2["name"] = "web2".into();
    s2["vm_groups"][0]["interfaces"][0]["ip_addresses"] = serde_json::json!([]);
    let (status, body) = call(Method::POST, "/v0/deployments", Some(s2));
    assert_eq!(status, 202, "{body}");
    let op2 = format!("/v0/operations/{}", body["operation"].as_str().unwrap());
    // Let it make a server first, then fail every call.
    wait_until(Duration::from_secs(30), "a server of web2", || {
        rt.block_on(vim_client(&vim).servers(Some("esc-web2-")))
            .is_ok_and(|l| !l.is_empty())
    });
    handle
        .set_faults(esc_vim::faults::ApiFaults {
            fail_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
    wait_until(Duration::from_secs(60), "web2 FAILED_TEMP", || {
        call(Method::GET, &op2, None).1["state"] == "FAILED_TEMP"
    });
    handle
        .set_faults(esc_vim::faults::ApiFaults::default())
        .unwrap();
    let (status, body) = call(Method::POST, &format!("{op2}/rollback"), None);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "ROLLING_BACK");
    wait_until(Duration::from_secs(60), "ROLLED_BACK", || {
        call(Method::GET, &op2, None).1["state"] == "ROLLED_BACK"
    });
    assert_eq!(call(Method::GET, "/v0/deployments/web2", None).0, 404);
    let left = rt.block_on(vim_client(&vim).servers(None)).unwrap();
    assert!(
        left.iter().all(|s| !s.name.starts_with("esc-web2-")),
        "no server of web2 left: {left:?}"
    );
    assert_eq!(left.len(), 2, "web's servers stay");
    // Only a deploy rolls back; an operation not FAILED_TEMP takes no task.
    let (status, _) = call(Method::POST, &format!("{op_url}/rollback"), None);
    assert_eq!(status, 409);
}

/// An update (PUT) grows a group with the new day-0 data on the new VMs
/// only, then shrinks it (the highest indexes removed, after nothing is
/// left to create); what an update may not change is refused with the
/// field named. Manual VM actions (STOP, START, REBOOT) each reach the
/// VIM exactly once and leave the VM in the action's end state.
#[test]
fn a_service_is_updated_and_its_vms_stopped_started_and_rebooted() {
    let (vim, handle) = start_vim_handle(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let (node, _secrets) = node_with_vim(&vim);
    let rt = rt();
    let c = client();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        api(&rt, &c, &node, method, path, body)
    };
    use reqwest::Method;
    wait_until(Duration::from_secs(10), "the VIM answers", || {
        node.admin(esc_proto::AdminRequest::Health).value.unwrap()["stage"] == "READY"
    });
    let tenant = Some(serde_json::json!({"name": "t1"}));
    assert_eq!(call(Method::POST, "/v0/tenants", tenant).0, 201);
    let settled = |op: &str| -> serde_json::Value {
        let url = format!("/v0/operations/{op}");
        let mut last = serde_json::Value::Null;
        wait_until(Duration::from_secs(60), "the operation settles", || {
            last = call(Method::GET, &url, None).1;
            ["COMPLETED", "FAILED_TEMP", "FAILED"].contains(&last["state"].as_str().unwrap_or(""))
        });
        last
    };
    let accepted = |(status, body): (u16, serde_json::Value)| -> String {
        assert_eq!(status, 202, "{body}");
        body["operation"].as_str().unwrap().to_string()
    };
    let mut s = spec(1);
    s["vm_groups"][0]["scaling"]["max_active"] = 3.into();
    s["vm_groups"][0]["interfaces"][0]["ip_addresses"] = serde_json::json!([]);
    let op = accepted(call(Method::POST, "/v0/deployments", Some(s.clone())));
    assert_eq!(settled(&op)["state"], "COMPLETED");
    let vim_c = vim_client(&vim);
    let names = || -> Vec<String> {
        let mut n: Vec<String> = rt
            .block_on(vim_c.servers(None))
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(), ["esc-web-g1-0-g0"]);

    // What an update may not change, and a body for another deployment.
    let mut bad = s.clone();
    bad["vm_groups"][0]["flavor"] = "m1.large".into();
    let (status, body) = call(Method::PUT, "/v0/deployments/web", Some(bad));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("vm_groups[0].flavor: cannot change"),
        "{body}"
    );
    let (status, body) = call(Method::PUT, "/v0/deployments/other", Some(s.clone()));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("name:"),
        "{body}"
    );

    // Grow to 3 with new day-0 data: two VMs added, the first untouched.
    let mut grow = s.clone();
    grow["vm_groups"][0]["scaling"]["min_active"] = 3.into();
    grow["vm_groups"][0]["config_data"][0]["data"] = "mode=slow\n".into();
    let op = accepted(call(Method::PUT, "/v0/deployments/web", Some(grow)));
    let o = settled(&op);
    assert_eq!(o["state"], "COMPLETED", "{o}");
    assert_eq!(
        names(),
        ["esc-web-g1-0-g0", "esc-web-g1-1-g0", "esc-web-g1-2-g0"]
    );
    let d = call(Method::GET, "/v0/deployments/web", None).1;
    assert_eq!(d["state"], "SERVICE_ACTIVE_STATE");
    assert_eq!(d["spec"]["vm_groups"][0]["scaling"]["min_active"], 3);
    let day0 = |name: &str| -> String {
        let id = rt
            .block_on(vim_c.servers(Some(name)))
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .id;
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(handle.user_data(&id).unwrap())
            .unwrap();
        String::from_utf8(raw).unwrap()
    };
    assert!(day0("esc-web-g1-0-g0").contains("mode=fast"));
    assert!(day0("esc-web-g1-2-g0").contains("mode=slow"));

    // Shrink to 1: the two highest indexes go.
    let mut shrink = s.clone();
    shrink["vm_groups"][0]["scaling"] = serde_json::json!({"min_active": 1, "max_active": 1});
    let op = accepted(call(Method::PUT, "/v0/deployments/web", Some(shrink)));
    assert_eq!(settled(&op)["state"], "COMPLETED");
    assert_eq!(names(), ["esc-web-g1-0-g0"]);
    let d = call(Method::GET, "/v0/deployments/web", None).1;
    assert_eq!(d["vms"].as_array().unwrap().len(), 1, "{d}");

    // VM actions: bad ones refused, each good one carried out once.
    let vm_url = "/v0/deployments/web/vms/esc-web-g1-0-g0";
    let (status, body) = call(
        Method::POST,
        vm_url,
        Some(serde_json::json!({"action": "MELT"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("REBOOT"), "{body}");
    let (status, body) = call(
        Method::POST,
        "/v0/deployments/web/vms/esc-web-g1-7-g0",
        Some(serde_json::json!({"action": "STOP"})),
    );
    assert_eq!(status, 404, "{body}");
    let vm_state = || call(Method::GET, "/v0/deployments/web", None).1["vms"][0]["state"].clone();
    for (action, state) in [
        ("STOP", "VM_SHUTOFF_STATE"),
        ("START", "VM_ALIVE_STATE"),
        ("REBOOT", "VM_ALIVE_STATE"),
    ] {
        let body = serde_json::json!({ "action": action });
        let op = accepted(call(Method::POST, vm_url, Some(body)));
        let o = settled(&op);
        assert_eq!(o["state"], "COMPLETED", "{action}: {o}");
        assert_eq!(vm_state(), state, "{action}");
    }
    let history: Vec<String> = handle
        .history()
        .into_iter()
        .filter(|h| h.name == "esc-web-g1-0-g0")
        .map(|h| h.what)
        .collect();
    assert_eq!(history, ["create", "stop", "start", "reboot"]);
    // A stop of a stopped VM asks the VIM nothing (Nova would refuse it).
    for _ in 0..2 {
        let body = serde_json::json!({ "action": "STOP" });
        let op = accepted(call(Method::POST, vm_url, Some(body)));
        assert_eq!(settled(&op)["state"], "COMPLETED");
    }
    let stops = handle
        .history()
        .into_iter()
        .filter(|h| h.name == "esc-web-g1-0-g0" && h.what == "stop")
        .count();
    assert_eq!(stops, 2, "one more stop, not two");

    // The service actions (ESC's STOP, START, REBOOT of a deployment): on
    // every VM, each once, one operation.
    let acts = "/v0/deployments/web/actions";
    let act = |a: &str| call(Method::POST, acts, Some(serde_json::json!({ "action": a })));
    let (status, body) = act("MELT");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("REBOOT"), "{body}");
    assert_eq!(settled(&accepted(act("START")))["state"], "COMPLETED");
    let mut two = s.clone();
    two["vm_groups"][0]["scaling"] = serde_json::json!({"min_active": 2, "max_active": 2});
    let op = accepted(call(Method::PUT, "/v0/deployments/web", Some(two)));
    assert_eq!(settled(&op)["state"], "COMPLETED");
    let states = || -> Vec<String> {
        call(Method::GET, "/v0/deployments/web", None).1["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["state"].as_str().unwrap().to_string())
            .collect()
    };
    let before = handle.history().len();
    for (action, state) in [
        ("STOP", "VM_SHUTOFF_STATE"),
        ("START", "VM_ALIVE_STATE"),
        ("REBOOT", "VM_ALIVE_STATE"),
    ] {
        let o = settled(&accepted(act(action)));
        assert_eq!(o["state"], "COMPLETED", "{action}: {o}");
        assert_eq!(states(), [state, state], "{action}");
    }
    let mut done: Vec<(String, String)> = handle.history()[before..]
        .iter()
        .map(|h| (h.name.clone(), h.what.clone()))
        .collect();
    done.sort();
    let want: Vec<(String, String)> = ["esc-web-g1-0-g0", "esc-web-g1-1-g0"]
        .iter()
        .flat_map(|n| ["reboot", "start", "stop"].map(|w| (n.to_string(), w.to_string())))
        .collect();
    assert_eq!(done, want, "each action once on each VM");
}

/// A VM's stand-in on its loopback address (scale-net servers are light:
/// the test answers for them): `GET /health` answered 200 until stopped.
struct FakeVnf {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeVnf {
    fn start(addr: &str) -> FakeVnf {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind(format!("{addr}:18080")).unwrap();
        let at = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                // `drop` connects once to wake this accept.
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = c else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        FakeVnf {
            stop,
            addr: at,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeVnf {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Issue 12 end to end on one node: a group with ESC's bootup check (an
/// HTTP KPI here, the VM's stand-in answering on its loopback address) is
/// alive only once it answers; a VM that stops answering is recovered by
/// its policy: a hard reboot first (one, in the VIM's history), and when
/// the rebooted VM does not answer within `bootup_time`, a redeploy (its
/// server deleted, one of the next generation created); the notifications
/// in order.
#[test]
fn a_vm_that_stops_answering_is_rebooted_then_redeployed() {
    let (vim, handle) = start_vim_handle(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let (node, _secrets) = node_with_vim(&vim);
    let rt = rt();
    let c = client();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        api(&rt, &c, &node, method, path, body)
    };
    use reqwest::Method;
    wait_until(Duration::from_secs(10), "the VIM answers", || {
        node.admin(esc_proto::AdminRequest::Health).value.unwrap()["stage"] == "READY"
    });
    let reader = EventReader::start(node.spec.api, "admin", PASSWORD, 0, Duration::from_secs(3));
    assert_eq!(
        call(
            Method::POST,
            "/v0/tenants",
            Some(serde_json::json!({"name": "t1"}))
        )
        .0,
        201
    );
    let spec = serde_json::json!({
        "name": "mon", "tenant": "t1",
        "vm_groups": [{
            "name": "g", "image": "vnf-image", "flavor": "m1.small",
            "scaling": { "min_active": 1, "max_active": 1 },
            "interfaces": [{ "nicid": 0, "network": "scale-net" }],
            "bootup_time": 4,
            "recovery_policy": { "action": "REBOOT_THEN_REDEPLOY", "max_retries": 2 },
            "kpis": [{ "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
                       "metric_occurrences_true": 1, "metric_occurrences_false": 2,
                       "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": 1,
                                             "port": 18080, "path": "/health" } }],
            "rules": [{ "event_name": "VM_ALIVE",
                        "actions": ["FALSE recover autohealing", "TRUE esc_vm_alive_notification"] }]
        }]
    });
    let (status, body) = call(Method::POST, "/v0/deployments", Some(spec));
    assert_eq!(status, 202, "{body}");
    let op = format!("/v0/operations/{}", body["operation"].as_str().unwrap());
    // Up on the VIM, not alive until it answers: its address is in the
    // operation's record.
    let mut addr = String::new();
    wait_until(Duration::from_secs(30), "the server up", || {
        let o = call(Method::GET, &op, None).1;
        addr = o["vms"][0]["addresses"]["0"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !addr.is_empty()
    });
    assert!(addr.starts_with("127.64."), "{addr}");
    assert_eq!(call(Method::GET, &op, None).1["state"], "PROCESSING");
    let vnf = FakeVnf::start(&addr);
    wait_until(Duration::from_secs(30), "alive", || {
        call(Method::GET, &op, None).1["state"] == "COMPLETED"
    });
    let d = call(Method::GET, "/v0/deployments/mon", None).1;
    assert_eq!(d["vms"][0]["state"], "VM_ALIVE_STATE", "{d}");
    let first = d["vms"][0]["key"].clone();
    // The monitor in the status: probing its one VM.
    let monitor = || {
        node.admin(esc_proto::AdminRequest::Status {
            verbose: true,
            health: false,
        })
        .value
        .unwrap()["monitor"]
            .clone()
    };
    wait_until(Duration::from_secs(10), "the monitor probing", || {
        let m = monitor();
        m["probing"] == true && m["vms_watched"] == 1 && m["probes_sent"].as_u64() > Some(0)
    });
    // Each VM's last probe in the deployment: its KPI, what it read, when.
    wait_until(Duration::from_secs(10), "a last probe shown", || {
        let d = call(Method::GET, "/v0/deployments/mon", None).1;
        let p = &d["vms"][0]["last_probe"];
        p["kpi"] == "VM_ALIVE" && p["value"] == 1.0 && p["at_ms"].as_u64() > Some(0)
    });
    // Maintenance pauses it (no probe), operation resumes it.
    let mode = |mode: esc_domain::OpMode| {
        let r = node.admin(esc_proto::AdminRequest::OpModeSet {
            mode,
            ipt_check: false,
        });
        assert!(r.ok, "{}", r.message);
    };
    mode(esc_domain::OpMode::Maintenance);
    wait_until(Duration::from_secs(10), "the monitor paused", || {
        monitor()["paused"] == "maintenance mode"
    });
    let sent = monitor()["probes_sent"].as_u64().unwrap();
    // Three of its 1 s periods, observed: nothing sent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(monitor()["probes_sent"].as_u64().unwrap(), sent);
    mode(esc_domain::OpMode::Operation);
    wait_until(Duration::from_secs(10), "the monitor probing again", || {
        let m = monitor();
        m["probing"] == true && m["probes_sent"].as_u64().unwrap() > sent
    });

    // It stops answering: recovered by a hard reboot...
    drop(vnf);
    let history = |what: &str| {
        handle
            .history()
            .into_iter()
            .filter(|h| h.what == what)
            .count()
    };
    wait_until(Duration::from_secs(30), "a hard reboot", || {
        history("hard-reboot") == 1
    });
    // ...that does not bring it back (nothing answers): redeployed, a
    // server of the next generation, at its own address.
    wait_until(Duration::from_secs(60), "a redeploy", || {
        history("create") == 2
    });
    assert_eq!(history("delete"), 1, "the old server deleted first");
    let mut addr2 = String::new();
    wait_until(Duration::from_secs(30), "the new server up", || {
        let d = call(Method::GET, "/v0/deployments/mon", None).1;
        let cur = d["current_op"].as_str().unwrap_or("").to_string();
        if cur.is_empty() {
            return false;
        }
        let o = call(Method::GET, &format!("/v0/operations/{cur}"), None).1;
        addr2 = o["vms"][0]["addresses"]["0"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !addr2.is_empty()
    });
    let _vnf2 = FakeVnf::start(&addr2);
    wait_until(Duration::from_secs(30), "recovered", || {
        let d = call(Method::GET, "/v0/deployments/mon", None).1;
        d["current_op"].is_null() && d["vms"][0]["state"] == "VM_ALIVE_STATE"
    });
    let d = call(Method::GET, "/v0/deployments/mon", None).1;
    assert_eq!(
        d["vms"][0]["key"]["generation"],
        first["generation"].as_u64().unwrap() + 1
    );
    assert_eq!(d["vms"][0]["recoveries"], 1, "{d}");
    assert_eq!(history("hard-reboot"), 1, "one reboot, one redeploy");
    let names: Vec<String> = reader
        .events()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e.starts_with("VM_RECOVERY"))
        .collect();
    assert_eq!(
        names,
        [
            "VM_RECOVERY_INIT",
            "VM_RECOVERY_REBOOT",
            "VM_RECOVERY_INIT",
            "VM_RECOVERY_UNDEPLOYED",
            "VM_RECOVERY_DEPLOYED",
            "VM_RECOVERY_COMPLETE"
        ]
    );
    // A manual recovery (ESC's): the group's policy, its first attempt a
    // hard reboot; the VM answers again, so it completes.
    let vm = d["vms"][0]["key"].clone();
    let vm = format!("esc-mon-g-0-g{}", vm["generation"]);
    let path = format!("/v0/deployments/mon/vms/{vm}");
    let (status, body) = call(
        Method::POST,
        &path,
        Some(serde_json::json!({"action": "MELT"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("RECOVER"),
        "{body}"
    );
    let (status, body) = call(
        Method::POST,
        &path,
        Some(serde_json::json!({"action": "RECOVER"})),
    );
    assert_eq!(status, 202, "{body}");
    let op = format!("/v0/operations/{}", body["operation"].as_str().unwrap());
    wait_until(Duration::from_secs(30), "the manual recovery", || {
        call(Method::GET, &op, None).1["state"] == "COMPLETED"
    });
    assert_eq!(history("hard-reboot"), 2);
    let d = call(Method::GET, "/v0/deployments/mon", None).1;
    assert_eq!(d["vms"][0]["recoveries"], 2, "{d}");
    // DISABLE_MONITOR: a VM that stops answering is left alone...
    let actions = "/v0/deployments/mon/actions";
    let act = |a: &str| {
        call(
            Method::POST,
            actions,
            Some(serde_json::json!({ "action": a })),
        )
    };
    assert_eq!(act("MELT").0, 400);
    assert_eq!(
        call(
            Method::POST,
            "/v0/deployments/nope/actions",
            Some(serde_json::json!({"action": "DISABLE_MONITOR"}))
        )
        .0,
        404
    );
    let (status, body) = act("DISABLE_MONITOR");
    assert_eq!(
        (status, &body["monitoring"]),
        (200, &serde_json::json!(false)),
        "{body}"
    );
    drop(_vnf2);
    // Three of its periods and more, observed: no recovery.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(history("hard-reboot"), 2);
    // ...and recovered once monitoring is enabled again.
    let (status, body) = act("ENABLE_MONITOR");
    assert_eq!(
        (status, &body["monitoring"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    wait_until(
        Duration::from_secs(30),
        "a recovery after ENABLE_MONITOR",
        || history("hard-reboot") == 3,
    );
    let names: Vec<String> = reader.events().into_iter().map(|e| e.event).collect();
    assert!(
        names.contains(&"VM_MONITOR_UNSET".to_string())
            && names.contains(&"VM_MONITOR_SET".to_string())
    );
    reader.finish();
}

/// A resume after an event of an entry this node has not applied yet (a
/// standby just promoted, its last entries still to commit) waits for it
/// rather than report a gap; once that entry is applied without such an
/// event, the stream says `gap`.
#[test]
fn a_resume_ahead_of_the_applied_state_waits_then_reports_a_gap() {
    use std::io::{BufRead, BufReader, Write};
    let node = Node::start(NodeSpec::new("esc-1", "127.0.0.1", "primary"));
    common::create_tenant(&node);
    let applied = || node.status()["store"]["applied_index"].as_u64().unwrap();
    // Far enough ahead that nothing but this test's writes reaches it.
    let target = applied() + 50;
    let after = target * esc_domain::apply::EVENTS_PER_ENTRY_MAX + 15;
    let mut s = std::net::TcpStream::connect(node.spec.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    };
    write!(
        s,
        "GET /v0/events HTTP/1.0\r\nHost: esc\r\nAuthorization: Basic {auth}\r\nLast-Event-ID: {after}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    // The first thing after the head: a keep-alive comment (the stream
    // waits), not a gap.
    let mut first = None;
    let mut line = String::new();
    while first.is_none() {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
        if line.starts_with(':') || line.starts_with("event:") {
            first = Some(line.trim().to_string());
        }
    }
    assert!(
        first.as_deref().is_some_and(|l| l.starts_with(':')),
        "{first:?}"
    );
    let (rt, c) = (rt(), client());
    let mut n = 0;
    while applied() < target {
        n += 1;
        assert!(n <= 500, "the applied index does not reach {target}");
        let body = common::deployment(&format!("ahead-{n}"), serde_json::json!({}));
        assert_eq!(
            api(
                &rt,
                &c,
                &node,
                reqwest::Method::POST,
                "/v0/deployments",
                Some(body)
            )
            .0,
            202
        );
    }
    // Now the entry is applied and the event is not in it.
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
        if line.starts_with("event:") {
            assert_eq!(line.trim(), "event: gap");
            break;
        }
    }
}

/// The VIM sweep (docs/architecture.md, "Exactly one server per VM"): a
/// server of a known, idle deployment that no VM holds (here a second
/// server of a VM's own name, as a create landing after its deploy
/// completed would leave) is deleted once two passes `create_doubt_ms`
/// apart saw it; the servers the VMs hold, a server of a deployment this
/// node does not know (an orphan: named in the status and the log) and a
/// server without this manager's metadata are left alone. Deployment
/// names that begin with another's (`web`, `web-b`) do not mix: undeploying
/// `web` leaves `web-b`'s server. A server of `web` landing after its
/// undeploy is deleted too (the state remembers what it removed), and a
/// new deploy of `web` never adopts one the earlier `web` made.
#[test]
fn the_sweep_deletes_a_server_no_record_holds_and_nothing_else() {
    let vim = start_vim();
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("vim.password");
    std::fs::write(&pw, VIM_PASSWORD).unwrap();
    let mut spec_node = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    spec_node.extra_toml = format!(
        "[vim]\nauth_url = \"{vim}/identity/v3\"\nuser = \"admin\"\npassword_file = \"{}\"\nproject = \"vnf\"\npoll_ms = 50\ncall_timeout_ms = 1000\ncreate_doubt_ms = 1500\nsweep_interval_ms = 1000\n",
        pw.display()
    );
    let node = Node::start(spec_node);
    let rt = rt();
    let c = client();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        api(&rt, &c, &node, method, path, body)
    };
    use reqwest::Method;
    assert_eq!(
        call(
            Method::POST,
            "/v0/tenants",
            Some(serde_json::json!({"name": "t1"}))
        )
        .0,
        201
    );
    for name in ["web", "web-b"] {
        let mut s = spec(1);
        s["name"] = name.into();
        s["vm_groups"][0]["interfaces"][0]
            .as_object_mut()
            .unwrap()
            .remove("ip_addresses");
        let (status, body) = call(Method::POST, "/v0/deployments", Some(s));
        assert_eq!(status, 202, "{body}");
    }
    for name in ["web", "web-b"] {
        wait_until(Duration::from_secs(30), "the services are active", || {
            call(Method::GET, &format!("/v0/deployments/{name}"), None).1["state"]
                == "SERVICE_ACTIVE_STATE"
        });
    }
    let vim_c = vim_client(&vim);
    let held: Vec<String> = rt
        .block_on(vim_c.servers(None))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(held.len(), 2, "one server per VM");
    let image = rt.block_on(vim_c.find_image("vnf-image")).unwrap().id;
    let flavor = rt.block_on(vim_c.find_flavor("m1.small")).unwrap().id;
    let make_by = |name: &str, deployment: Option<&str>, op: Option<&str>| {
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(d) = deployment {
            metadata.insert("esc_managed".to_string(), "true".to_string());
            metadata.insert("esc_deployment".to_string(), d.to_string());
        }
        if let Some(o) = op {
            metadata.insert("esc_op".to_string(), o.to_string());
        }
        rt.block_on(vim_c.create_server(&esc_openstack::CreateServer {
            name: name.into(),
            image_id: image.clone(),
            flavor_id: flavor.clone(),
            metadata,
            ..Default::default()
        }))
        .unwrap()
    };
    let make = |name: &str, deployment: Option<&str>| make_by(name, deployment, None);
    let stray = make("esc-web-g1-0-g0", Some("web"));
    let orphan = make("esc-old-g1-0-g0", Some("old"));
    let foreign = make("esc-web-g1-7-g0", None);
    let ids = || -> Vec<String> {
        rt.block_on(vim_c.servers(None))
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    wait_until(Duration::from_secs(60), "the stray is deleted", || {
        !ids().contains(&stray)
    });
    let left = ids();
    for id in held.iter().chain([&orphan, &foreign]) {
        assert!(left.contains(id), "{id} must stay: {left:?}");
    }
    // The VM still holds its server; the sweep changed no record.
    let (_, web) = call(Method::GET, "/v0/deployments/web", None);
    assert_eq!(web["state"], "SERVICE_ACTIVE_STATE", "{web}");
    let sweep = node.status()["sweep"].clone();
    assert_eq!(sweep["removed"], 1, "{sweep}");
    assert_eq!(sweep["orphans"], 1, "{sweep}");
    assert_eq!(sweep["orphan_names"][0], "esc-old-g1-0-g0", "{sweep}");
    let text = status_text(&node);
    assert!(
        text.contains("vim sweep:") && text.contains("orphans=1 (esc-old-g1-0-g0) removed=1"),
        "{text}"
    );
    let log = node.log_text("escadm.log");
    assert!(
        log.contains("VIM sweep: deleted server esc-web-g1-0-g0"),
        "{log}"
    );
    assert!(log.contains("deployment old is unknown here"), "{log}");

    // Undeploying `web` leaves `web-b`'s server (and the others).
    assert_eq!(call(Method::DELETE, "/v0/deployments/web", None).0, 202);
    wait_until(Duration::from_secs(30), "web is gone", || {
        call(Method::GET, "/v0/deployments/web", None).0 == 404
    });
    let names: Vec<String> = rt
        .block_on(vim_c.servers(None))
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(
        names.contains(&"esc-web-b-g1-0-g0".to_string()),
        "web-b's server stays: {names:?}"
    );
    assert_eq!(
        names.len(),
        3,
        "web-b's, the orphan, the foreign: {names:?}"
    );
    // A create of `web` landing after its undeploy: the state remembers
    // `web` was this node's, so the server is a stray, not an orphan.
    let late = make("esc-web-g1-0-g0", Some("web"));
    wait_until(
        Duration::from_secs(60),
        "the late server is deleted",
        || !ids().contains(&late),
    );
    assert_eq!(ids().len(), 3);
    assert_eq!(node.status()["sweep"]["removed"], 2);

    // `web` deployed again while a server of the earlier `web` (made by
    // another operation, with its spec) bears its VM's name: the new
    // deploy makes its own server, and the earlier one goes.
    let earlier = make_by(
        "esc-web-g1-0-g0",
        Some("web"),
        Some("op-of-the-earlier-web"),
    );
    let mut s = spec(1);
    s["vm_groups"][0]["interfaces"][0]
        .as_object_mut()
        .unwrap()
        .remove("ip_addresses");
    assert_eq!(call(Method::POST, "/v0/deployments", Some(s)).0, 202);
    wait_until(Duration::from_secs(30), "web is active again", || {
        call(Method::GET, "/v0/deployments/web", None).1["state"] == "SERVICE_ACTIVE_STATE"
    });
    let (_, web) = call(Method::GET, "/v0/deployments/web", None);
    let own = web["vms"][0]["server_id"].as_str().unwrap().to_string();
    assert_ne!(
        own, earlier,
        "the earlier web's server is not adopted: {web}"
    );
    wait_until(
        Duration::from_secs(60),
        "the earlier server is gone",
        || !ids().contains(&earlier),
    );
    assert!(ids().contains(&own));
}
