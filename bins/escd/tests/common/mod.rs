//! Test harness: real `escd` processes on loopback addresses, each with its
//! own temporary home; killed (by PID) when dropped, even if a test fails.
//! Every wait is a condition polled against a deadline, never a bare sleep.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use esc_lab as lab;

use esc_proto::admin::{request, ANSWER_TIMEOUT};
use esc_proto::{AdminRequest, AdminResponse};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const PASSWORD: &str = "test-password-123";

/// A free TCP port on `ip` (bound then released), never one this test
/// process was given before: the kernel may hand the same port out twice
/// in a row, and a node's API and replication addresses must differ.
pub fn free_addr(ip: &str) -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind((ip, 0)).expect("bind port 0");
        let a = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&a.port()) {
            given.push(a.port());
            return a;
        }
    }
}

/// Knobs for one node's esc.toml.
#[derive(Clone)]
pub struct NodeSpec {
    pub name: String,
    pub repl: SocketAddr,
    pub api: SocketAddr,
    pub health: SocketAddr,
    pub peer: Option<SocketAddr>,
    pub role: &'static str,
    pub mode: &'static str,
    pub secret: String,
    pub snapshot_every_entries: u64,
    pub log_retain_entries: u64,
    /// `[debug] allow_fault_injection` (off unless a test turns it on).
    pub fault_injection: bool,
    /// More esc.toml, appended (e.g. a `[vim]` section).
    pub extra_toml: String,
    /// More lines of the `[api]` section.
    pub api_extra: String,
}

impl NodeSpec {
    pub fn new(name: &str, ip: &str, role: &'static str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            repl: free_addr(ip),
            api: free_addr(ip),
            health: free_addr(ip),
            peer: None,
            role,
            mode: "sync",
            secret: SECRET.into(),
            snapshot_every_entries: 100_000,
            log_retain_entries: 1_000,
            fault_injection: false,
            extra_toml: String::new(),
            api_extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let peer = self
            .peer
            .map(|p| format!("peer = \"{p}\"\n"))
            .unwrap_or_default();
        format!(
            r#"node_name = "{name}"
[replication]
listen = "{repl}"
{peer}mode = "{mode}"
initial_role = "{role}"
secret = "{secret}"
async_lag_entries_max = 1000
heartbeat_interval_ms = 50
peer_timeout_ms = 1000
batch_entries_max = 512
[store]
data_dir = "data"
snapshot_every_entries = {snap}
log_retain_entries = {retain}
group_commit_entries_max = 1024
[api]
listen = "{api}"
health_listen = "{health}"
user = "admin"
password = "{PASSWORD}"
body_bytes_max = 1048576
concurrency_max = 1024
{api_extra}[debug]
allow_fault_injection = {faults}
{extra}
"#,
            name = self.name,
            repl = self.repl,
            mode = self.mode,
            role = self.role,
            secret = self.secret,
            snap = self.snapshot_every_entries,
            retain = self.log_retain_entries,
            api = self.api,
            health = self.health,
            faults = self.fault_injection,
            extra = self.extra_toml,
            api_extra = self.api_extra,
        )
    }
}

/// One running (or stopped) escd.
pub struct Node {
    pub spec: NodeSpec,
    pub home: PathBuf,
    _dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Node {
    /// Writes the config into a fresh home and starts the daemon.
    pub fn start(spec: NodeSpec) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("esc-test-{}-", spec.name))
            .tempdir()
            .unwrap();
        let home = dir.path().to_path_buf();
        std::fs::write(home.join("esc.toml"), spec.toml()).unwrap();
        let mut n = Node {
            spec,
            home,
            _dir: Some(dir),
            child: None,
        };
        n.restart();
        n
    }

    /// Starts the daemon again on the same home (and data).
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} already running",
            self.spec.name
        );
        let log = std::fs::File::create(self.home.join("stderr.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_escd"))
            .arg("--home")
            .arg(&self.home)
            .arg("--log-dir")
            .arg(self.home.join("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn escd");
        self.child = Some(child);
        let home = self.home.clone();
        wait_until(
            Duration::from_secs(20),
            &format!("{} admin socket", self.spec.name),
            || status_of(&home).is_some(),
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a power failure or crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    pub fn status(&self) -> serde_json::Value {
        status_of(&self.home).unwrap_or_else(|| {
            panic!(
                "{} does not answer on its admin socket; stderr:\n{}",
                self.spec.name,
                std::fs::read_to_string(self.home.join("stderr.log")).unwrap_or_default()
            )
        })
    }

    pub fn admin(&self, req: AdminRequest) -> Reply {
        let timeout = req.timeout(Duration::from_secs(30));
        Reply::from(request(&self.home, &req, timeout).expect("admin request"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.spec.api)
    }

    pub fn log_text(&self, file: &str) -> String {
        std::fs::read_to_string(self.home.join("log").join(file)).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the daemon said last (its home goes).
        if std::thread::panicking() {
            let err = std::fs::read_to_string(self.home.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(30).collect();
            eprintln!(
                "--- {} stderr (last lines) ---\n{}",
                self.spec.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An admin answer as the tests check it: whether the node did it, what it
/// says, and the typed payload as JSON (a status, a report, a list).
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    pub value: Option<serde_json::Value>,
}

impl From<AdminResponse> for Reply {
    fn from(r: AdminResponse) -> Reply {
        let json = |v: &dyn erased::Json| Some(v.json());
        let (ok, message, value) = match &r {
            AdminResponse::Done { message } | AdminResponse::Reloading { message } => {
                (true, message.clone(), None)
            }
            AdminResponse::Refused { message } => (false, message.clone(), None),
            AdminResponse::Status { status } => (true, "status".into(), json(status.as_ref())),
            AdminResponse::Health { report } => (true, report.message.clone(), json(report)),
            AdminResponse::OpMode { mode } => {
                (true, format!("Operation Mode = {}", mode.word()), None)
            }
            AdminResponse::Users { users, .. } => {
                (true, format!("{} user(s)", users.len()), json(users))
            }
            AdminResponse::Transactions { transactions } => (
                true,
                format!("{} transaction(s) in progress", transactions.len()),
                json(transactions),
            ),
        };
        Reply { ok, message, value }
    }
}

mod erased {
    pub trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("to JSON")
        }
    }
}

/// Verbose status over the admin socket (as JSON, for the tests' checks),
/// or None if the node does not answer.
pub fn status_of(home: &Path) -> Option<serde_json::Value> {
    let req = AdminRequest::Status {
        verbose: true,
        health: false,
    };
    match request(home, &req, ANSWER_TIMEOUT).ok()? {
        AdminResponse::Status { status } => serde_json::to_value(*status).ok(),
        _ => None,
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` at the deadline.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A primary and a standby on 127.0.0.1 and 127.0.0.2, connected and in sync.
pub fn pair(tune: impl Fn(&mut NodeSpec)) -> (Node, Node) {
    let mut a = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    let mut b = NodeSpec::new("esc-2", "127.0.0.2", "standby");
    a.peer = Some(b.repl);
    b.peer = Some(a.repl);
    tune(&mut a);
    tune(&mut b);
    let a = Node::start(a);
    let b = Node::start(b);
    wait_until(
        Duration::from_secs(20),
        "standby in sync with primary",
        || {
            let s = a.status();
            s["role"] == "primary" && s["replication"]["peer"]["in_sync"] == true
        },
    );
    create_tenant(&a);
    (a, b)
}

/// The tenant of the tests' deployments ([`create_tenant`] makes it).
pub const TENANT: &str = "t";

/// Creates [`TENANT`] on the primary `n` (201, or 409 if it exists).
pub fn create_tenant(n: &Node) {
    let url = n.url("/v0/tenants");
    let status = rt().block_on(async {
        client()
            .post(&url)
            .basic_auth("admin", Some(PASSWORD))
            .json(&serde_json::json!({ "name": TENANT }))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(
        matches!(status, Ok(201 | 409)),
        "tenant {TENANT} on {url}: {status:?}"
    );
}

/// A deployment of no VM group of [`TENANT`] (it completes in its own
/// log entry), with `properties`.
pub fn deployment(name: &str, properties: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "name": name, "tenant": TENANT, "properties": properties })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// The state digest and applied index of a node.
pub fn digest(n: &Node) -> (u64, String) {
    let s = n.status();
    (
        s["state"]["applied_index"].as_u64().unwrap(),
        s["state"]["digest"].as_str().unwrap().to_string(),
    )
}

pub fn counter(n: &Node, name: &str) -> u64 {
    n.status()["counters"][name].as_u64().unwrap_or(0)
}

/// A hand-driven follower on the replication link (hostile-peer and
/// link-limit tests): plain reads of one frame, and the handshake.
pub mod follower {
    use esc_wire::msg::PROTOCOL_VERSION;
    use esc_wire::{FrameHeader, FrameSeal, Handshake, Message, HEADER_LEN};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// Reads one unauthenticated frame.
    pub fn read_frame(s: &mut TcpStream) -> Message {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).unwrap();
        let h = FrameHeader::parse(&head).unwrap();
        let mut buf = head.to_vec();
        buf.resize(h.frame_len(), 0);
        s.read_exact(&mut buf[HEADER_LEN..]).unwrap();
        esc_wire::decode(&buf, None).unwrap().0
    }

    /// Authenticates as follower `name` with `secret`; returns the stream
    /// and the seal for frames we send.
    pub fn authenticate(addr: SocketAddr, secret: &str, name: &str) -> (TcpStream, FrameSeal) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client_nonce = [7u8; 32];
        let ours = esc_wire::Ephemeral::from_random([11u8; 32]);
        s.write_all(&esc_wire::encode(
            &Message::ClientHello {
                protocol: PROTOCOL_VERSION,
                node_name: name.into(),
                nonce: client_nonce,
                ephemeral: ours.public(),
            },
            None,
        ))
        .unwrap();
        let Message::ServerChallenge {
            nonce, ephemeral, ..
        } = read_frame(&mut s)
        else {
            panic!("expected a challenge")
        };
        let hs = Handshake {
            secret: secret.as_bytes(),
            client_nonce,
            server_nonce: nonce,
            client_ephemeral: ours.public(),
            server_ephemeral: ephemeral,
        };
        s.write_all(&esc_wire::encode(
            &Message::ClientProof {
                proof: hs.client_proof(name),
            },
            None,
        ))
        .unwrap();
        assert_eq!(read_frame(&mut s), Message::AuthOk);
        (s, hs.session(&ours.agree(&ephemeral).unwrap()).0)
    }
}
