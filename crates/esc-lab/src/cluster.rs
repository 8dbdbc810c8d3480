//! The lab's HA cluster (issue 5): hosts `esc-1`, `esc-2`, `witness` and
//! `client` on one bridge, the nodes configured exactly as an operator
//! would: a minimal `esc.toml`, `escadm ha set --kad_vip=... --kad_vif=eth0
//! --ha_node_list=... --witness=...`, the generated secret copied to the
//! peer and the witness, `escadm reload`. Then the six failure classes of
//! the seed can be injected on any node ([`Fault`]).
//!
//! Every timing is the product default (what the benchmarks' targets are
//! about); the one lab-only setting is `[debug] allow_fault_injection`, for
//! the service-hang fault.

use crate::Lab;
use esc_proto::admin::{request, ANSWER_TIMEOUT};
use esc_proto::{AdminRequest, AdminResponse, NodeStatus};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The virtual IP of the lab pair.
pub const VIP: &str = "192.0.2.100";
/// Node addresses (index 0 = esc-1).
pub const NODE_ADDRS: [&str; 2] = ["192.0.2.11", "192.0.2.12"];
pub const WITNESS_ADDR: &str = "192.0.2.13";
pub const CLIENT_ADDR: &str = "192.0.2.50";
/// The lab's API password (the lab's own, never a product default).
pub const PASSWORD: &str = "lab-password-not-a-default";

/// Where the binaries are (the release build by default).
#[derive(Debug, Clone)]
pub struct Bins {
    pub escd: PathBuf,
    pub escadm: PathBuf,
}

impl Bins {
    /// The binaries next to `exe` (a test's `CARGO_BIN_EXE_escd`).
    pub fn beside(exe: &Path) -> anyhow::Result<Bins> {
        Bins::in_dir(exe.parent().unwrap_or(Path::new(".")))
    }

    /// `dir/escd` and `dir/escadm`, checked to exist.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Bins> {
        let b = Bins {
            escd: dir.join("escd"),
            escadm: dir.join("escadm"),
        };
        for p in [&b.escd, &b.escadm] {
            anyhow::ensure!(
                p.exists(),
                "{} not found: build first (cargo build --release --workspace --bins)",
                p.display()
            );
        }
        Ok(b)
    }
}

/// One escd host of the lab.
pub struct Host {
    pub name: String,
    pub ns_host: String,
    pub home: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub pid: Option<u32>,
}

/// The cluster; everything is removed when it drops (the [`Lab`] does).
pub struct Cluster {
    pub lab: Lab,
    pub bins: Bins,
    pub nodes: Vec<Host>,
    pub witness: Option<Host>,
    /// Mounted data volumes to unmount at drop.
    mounts: Vec<PathBuf>,
    /// The strace process failing node `i`'s store I/O, while it does.
    tracers: [Option<u32>; 2],
}

/// How long the cluster may take to become ready or to take over: the
/// protocol needs about a second; the rest is margin for a loaded machine.
pub const READY: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "{cmd:?} failed: {text}");
    Ok(text)
}

impl Cluster {
    /// Builds the topology and brings the pair up with its witness (or in
    /// two-node mode), as an operator would.
    pub fn up(
        tag: &str,
        bins: Bins,
        witness: bool,
        data_volume_mib: Option<u64>,
    ) -> anyhow::Result<Cluster> {
        Self::up_with(tag, bins, witness, data_volume_mib, |_| {})
    }

    /// [`Cluster::up`], with `tune` applied to both nodes' esc.toml before
    /// the reload that starts the pair (a test of one setting).
    pub fn up_with(
        tag: &str,
        bins: Bins,
        witness: bool,
        data_volume_mib: Option<u64>,
        tune: impl Fn(&mut esc_config::Config),
    ) -> anyhow::Result<Cluster> {
        let mut lab = Lab::with_prefix(tag)
            .ok_or_else(|| anyhow::anyhow!("the lab needs root (network namespaces)"))?;
        for (i, a) in NODE_ADDRS.iter().enumerate() {
            lab.host(&format!("esc{}", i + 1), &format!("{a}/24"));
        }
        lab.host("witness", &format!("{WITNESS_ADDR}/24"));
        lab.host("client", &format!("{CLIENT_ADDR}/24"));
        // The client opens a connection per attempt (none is left stuck on
        // a dead node) and closes it first, so each leaves a TIME_WAIT: at
        // several hundred writes a second the default ephemeral ports
        // towards the one VIP:port run out within a minute and every
        // connect fails at once (a chaos run saw 22 s of that). A load
        // generator's usual settings, in the client's namespace only:
        lab.sysctl(
            "client",
            &[
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=10000 65000",
            ],
        );
        let mut c = Cluster {
            lab,
            bins,
            nodes: Vec::new(),
            witness: None,
            mounts: Vec::new(),
            tracers: [None; 2],
        };
        // 1. Standalone nodes with the minimal file an installer writes.
        for i in 0..2 {
            let name = format!("esc-{}", i + 1);
            let mut h = Self::host(&name, &format!("esc{}", i + 1))?;
            std::fs::write(
                h.home.join("esc.toml"),
                // The lab measures the pair, not one user's write budget.
                format!("node_name = \"{name}\"\n[api]\npassword = \"{PASSWORD}\"\nwrites_per_user_per_s = 1000000\n"),
            )?;
            if let Some(mib) = data_volume_mib {
                let data = h.home.join("data");
                std::fs::create_dir_all(&data)?;
                run(Command::new("mount").args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m"),
                    "esc-lab",
                    data.to_str().unwrap_or_default(),
                ]))?;
                c.mounts.push(data);
            }
            c.spawn(&mut h, false)?;
            c.nodes.push(h);
        }
        for i in 0..2 {
            c.wait_admin(i)?;
        }
        // 2. The seed's line on both nodes; one secret for the pair.
        let list = format!("--ha_node_list={}", NODE_ADDRS[0]);
        for i in 0..2 {
            let mut args = vec![
                "ha".to_string(),
                "set".into(),
                "--kad_vip=".into(),
                VIP.into(),
                "--kad_vif=eth0".into(),
                list.clone(),
                NODE_ADDRS[1].into(),
            ];
            if witness {
                args.push(format!("--witness={WITNESS_ADDR}"));
            }
            if i == 1 {
                std::fs::copy(
                    c.nodes[0].home.join("repl.secret"),
                    c.nodes[1].home.join("repl.secret"),
                )?;
            }
            c.escadm(i, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        // 3. Fault injection on (the lab's only change to the defaults), then reload.
        for i in 0..2 {
            let mut cfg = esc_config::Config::load(&c.nodes[i].home)?;
            cfg.debug.allow_fault_injection = true;
            tune(&mut cfg);
            std::fs::write(
                c.nodes[i].home.join(esc_config::CONFIG_FILE),
                toml::to_string_pretty(&cfg)?,
            )?;
        }
        if witness {
            let mut w = Self::host("witness", "witness")?;
            std::fs::copy(
                c.nodes[0].home.join("repl.secret"),
                w.home.join("repl.secret"),
            )?;
            std::fs::write(
                w.home.join("esc.toml"),
                format!(
                    "node_name = \"witness\"\n[replication]\nsecret_file = \"repl.secret\"\n[witness]\nlisten = \"{WITNESS_ADDR}:7790\"\n"
                ),
            )?;
            c.spawn(&mut w, true)?;
            c.witness = Some(w);
        }
        for i in 0..2 {
            c.escadm(i, &["reload"])?;
        }
        // The reload re-executes escd: wait for the new process to answer.
        for i in 0..2 {
            let home = c.nodes[i].home.clone();
            anyhow::ensure!(
                wait_for(READY, || status_of(&home)
                    .is_some_and(|s| s.peer_address.is_some())),
                "esc-{} did not come back from `escadm reload`",
                i + 1
            );
        }
        Ok(c)
    }

    fn host(name: &str, ns_host: &str) -> anyhow::Result<Host> {
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("esc-lab-{name}-"))
            .tempdir()?;
        // ESC_LAB_KEEP=1 leaves every node home (config, logs, store) behind
        // for a post-mortem.
        if std::env::var_os("ESC_LAB_KEEP").is_some_and(|v| v == "1") {
            dir.disable_cleanup(true);
        }
        Ok(Host {
            name: name.into(),
            ns_host: ns_host.into(),
            home: dir.path().to_path_buf(),
            _dir: Some(dir),
            pid: None,
        })
    }

    fn spawn(&mut self, h: &mut Host, witness: bool) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.home.join("stderr.log"))?;
        let home = h.home.to_string_lossy().to_string();
        let logs = format!("{home}/log");
        let mut args = vec!["--home", home.as_str(), "--log-dir", logs.as_str()];
        if witness {
            args.push("--witness");
        }
        let escd = self.bins.escd.to_string_lossy().to_string();
        h.pid = Some(self.lab.spawn(&h.ns_host, &escd, &args, log));
        Ok(())
    }

    fn wait_admin(&self, i: usize) -> anyhow::Result<()> {
        let home = self.nodes[i].home.clone();
        anyhow::ensure!(
            wait_for(READY, || status_of(&home).is_some()),
            "esc-{} does not answer on its admin socket",
            i + 1
        );
        Ok(())
    }

    /// Starts node `i` again (same home and data) and waits for its admin socket.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let mut h = std::mem::replace(
            &mut self.nodes[i],
            Host {
                name: String::new(),
                ns_host: String::new(),
                home: PathBuf::new(),
                _dir: None,
                pid: None,
            },
        );
        let r = self.spawn(&mut h, false);
        self.nodes[i] = h;
        r?;
        self.wait_admin(i)
    }

    /// Runs `escadm` for node `i` inside its namespace.
    pub fn escadm(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(&self.nodes[i].ns_host)])
            .arg(&self.bins.escadm)
            .arg("--home")
            .arg(&self.nodes[i].home)
            .args(args))
    }

    pub fn status(&self, i: usize) -> Option<NodeStatus> {
        status_of(&self.nodes[i].home)
    }

    /// The role authority's word for node `i` (`PRIMARY`, `STANDBY`, `FAULT`, ...).
    pub fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| {
                s.ha.authority
                    .map(|a| format!("{:?}", a.role).to_uppercase())
            })
            .unwrap_or_else(|| "DOWN".into())
    }

    pub fn state_file(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].home.join("keepalived_state"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Hosts whose eth0 is up and holds the VIP (a powered-off host's
    /// address answers nobody).
    pub fn vip_holders(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| {
                let h = &self.nodes[i].ns_host;
                self.lab.link_up(h) && self.lab.has(h, VIP)
            })
            .collect()
    }

    /// The primary, if the pair is ready: one PRIMARY holding the VIP, the
    /// other STANDBY and in sync, the state files saying so.
    pub fn ready(&self) -> Option<usize> {
        let roles = [self.role(0), self.role(1)];
        let p = roles.iter().position(|r| r == "PRIMARY")?;
        let s = 1 - p;
        let sync = self.status(p).is_some_and(|st| st.replication.peer.in_sync);
        (roles[s] == "STANDBY"
            && sync
            && self.vip_holders() == vec![p]
            && self.state_file(p) == "MASTER"
            && self.state_file(s) == "BACKUP")
            .then_some(p)
    }

    pub fn wait_ready(&self) -> anyhow::Result<usize> {
        let mut p = None;
        anyhow::ensure!(
            wait_for(READY, || {
                p = self.ready();
                p.is_some()
            }),
            "the pair did not become ready: roles {} / {}",
            self.role(0),
            self.role(1)
        );
        Ok(p.unwrap_or_default())
    }

    /// Both nodes' state digests are equal (identical copies).
    pub fn identical(&self) -> bool {
        let d: Vec<String> = (0..2)
            .filter_map(|i| status_at(&self.nodes[i].home, true))
            .filter_map(|s| s.state.map(|st| st.digest))
            .collect();
        d.len() == 2 && d[0] == d[1] && !d[0].is_empty()
    }

    /// nftables rules in node `i`'s namespace.
    pub fn nft(&self, i: usize, script: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let ns = self.lab.ns(&self.nodes[i].ns_host);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
        }
        anyhow::ensure!(child.wait()?.success(), "nft failed:\n{script}");
        Ok(())
    }

    fn signal(&mut self, i: usize, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .pid
            .ok_or_else(|| anyhow::anyhow!("esc-{} is not running", i + 1))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Signals node `i`'s escd and waits until the process is gone.
    pub fn stop(&mut self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.nodes[i].pid.take() {
            self.lab.signal_and_reap(pid, sig);
        }
    }

    /// Prints what each node says and logged (for a failed run).
    /// Node `i`'s HA log lines (role changes, health failures, witness
    /// and VRRP decisions): what explains a role change.
    pub fn ha_events(&self, i: usize) -> Vec<String> {
        const WORDS: [&str; 9] = [
            "fault injection",
            "replication link",
            "witness",
            "role",
            "health check",
            "stepping down",
            "lease",
            "took over",
            "refused",
        ];
        std::fs::read_to_string(self.nodes[i].home.join("log/escadm.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| WORDS.iter().any(|w| l.contains(w)))
            .map(str::to_string)
            .collect()
    }

    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (i, h) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "---- esc-{} status: {}\n",
                i + 1,
                self.status(i)
                    .and_then(|s| serde_json::to_string(&s).ok())
                    .unwrap_or_default()
            ));
            let log = std::fs::read_to_string(h.home.join("log/escadm.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!(
                "---- esc-{} escadm.log, newest first:\n{}\n",
                i + 1,
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// The status of the node at `home` (roles, sync state, the VIP), or None
/// if it does not answer. Without health checks: those make a durable
/// probe write, which a lab polling every few milliseconds during a
/// takeover should not add to the node it measures.
pub fn status_of(home: &Path) -> Option<NodeStatus> {
    status_at(home, false)
}

fn status_at(home: &Path, verbose: bool) -> Option<NodeStatus> {
    let req = AdminRequest::Status {
        verbose,
        health: false,
    };
    match request(home, &req, ANSWER_TIMEOUT).ok()? {
        AdminResponse::Status { status } => Some(*status),
        _ => None,
    }
}

/// The seed's six failure classes (architecture section 5), on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Network failure: the node's link goes down.
    LinkDown,
    /// Network failure: nftables drops all traffic between the node and
    /// its peer and the witness (VRRP multicast included).
    Partition,
    /// Network failure, one way: the node hears neither its peer nor the
    /// witness, while what it sends still reaches them.
    OneWayIn,
    /// Network failure, one way: nothing the node sends reaches its peer
    /// or the witness (VRRP multicast included), while it still hears them.
    OneWayOut,
    /// Power failure: every process of the host killed, its link cut.
    PowerFailure,
    /// Dead VM instance: SIGSTOP of the node, SIGCONT later.
    DeadVm,
    /// Scheduled downtime: `escadm ha switchover`.
    Switchover,
    /// Scheduled downtime: graceful stop (SIGTERM), restart later.
    GracefulStop,
    /// Hardware issue: the data volume fills up.
    DiskFull,
    /// Hardware issue: the disk fails: every write and flush of the store
    /// returns EIO (strace injects the error at the system call).
    DiskIoError,
    /// Internal application failure: the service hangs while the HA agent lives.
    ServiceHang,
    /// Internal application failure: the northbound API dies while the HA
    /// agent and the replication core live.
    ApiDies,
    /// Internal application failure: escd is killed (SIGKILL) on a host
    /// that lives on; restarted later.
    ProcessKill,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::LinkDown,
        Fault::Partition,
        Fault::OneWayIn,
        Fault::OneWayOut,
        Fault::PowerFailure,
        Fault::DeadVm,
        Fault::Switchover,
        Fault::GracefulStop,
        Fault::DiskFull,
        Fault::DiskIoError,
        Fault::ServiceHang,
        Fault::ApiDies,
        Fault::ProcessKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link-down",
            Fault::Partition => "partition",
            Fault::OneWayIn => "one-way-in",
            Fault::OneWayOut => "one-way-out",
            Fault::PowerFailure => "power-failure",
            Fault::DeadVm => "dead-vm",
            Fault::Switchover => "switchover",
            Fault::GracefulStop => "graceful-stop",
            Fault::DiskFull => "disk-full",
            Fault::DiskIoError => "disk-io-error",
            Fault::ServiceHang => "service-hang",
            Fault::ApiDies => "api-dies",
            Fault::ProcessKill => "process-kill",
        }
    }

    /// The seed's class this fault belongs to.
    pub fn class(self) -> &'static str {
        match self {
            Fault::LinkDown | Fault::Partition | Fault::OneWayIn | Fault::OneWayOut => {
                "network failure"
            }
            Fault::PowerFailure => "power failure",
            Fault::DeadVm => "dead VM instance",
            Fault::Switchover | Fault::GracefulStop => "scheduled downtime",
            Fault::DiskFull | Fault::DiskIoError => "hardware issue",
            Fault::ServiceHang | Fault::ApiDies | Fault::ProcessKill => {
                "internal application failure"
            }
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Needs a small data volume (mounted at `up`).
    pub fn needs_volume(self) -> bool {
        matches!(self, Fault::DiskFull)
    }
}

impl Cluster {
    /// Injects `fault` on node `i`.
    pub fn inject(&mut self, fault: Fault, i: usize) -> anyhow::Result<()> {
        let ns = self.lab.ns(&self.nodes[i].ns_host);
        match fault {
            Fault::LinkDown => crate::ip(&["-n", &ns, "link", "set", "eth0", "down"]),
            Fault::Partition => self.partition(i, true, true)?,
            Fault::OneWayIn => self.partition(i, true, false)?,
            Fault::OneWayOut => self.partition(i, false, true)?,
            Fault::PowerFailure => {
                self.lab.power_fail(&self.nodes[i].ns_host.clone());
                self.nodes[i].pid = None;
            }
            Fault::DeadVm => self.signal(i, nix::sys::signal::Signal::SIGSTOP)?,
            Fault::Switchover => {
                self.escadm(i, &["ha", "switchover"])?;
            }
            Fault::GracefulStop => self.stop(i, nix::sys::signal::Signal::SIGTERM),
            Fault::ProcessKill => self.stop(i, nix::sys::signal::Signal::SIGKILL),
            Fault::DiskFull => {
                let data = self.nodes[i].home.join("data");
                // Never fill a disk the lab does not own.
                anyhow::ensure!(
                    self.mounts.contains(&data),
                    "disk-full needs the lab's data volume (Cluster::up with a volume size)"
                );
                // Leave less than the 64 MiB health floor, the store still writable.
                let st = nix::sys::statvfs::statvfs(&data)?;
                let free_mib = st.blocks_available() * st.fragment_size() / (1 << 20);
                let fill = free_mib.saturating_sub(32);
                run(Command::new("dd").args([
                    "if=/dev/zero",
                    &format!("of={}", data.join("lab-fill").display()),
                    "bs=1M",
                    &format!("count={fill}"),
                ]))?;
            }
            Fault::DiskIoError => self.fail_store_io(i)?,
            Fault::ServiceHang => {
                self.escadm(i, &["debug", "hang", "--seconds=8"])?;
            }
            Fault::ApiDies => {
                self.escadm(i, &["debug", "kill-api"])?;
            }
        }
        Ok(())
    }

    /// Makes every positioned write, flush and resize of node `i`'s files
    /// fail with EIO, as a failing disk would: strace attaches to every
    /// thread of escd and injects the error at the system call (the store
    /// is the only part of escd that writes at an offset or syncs; logs and
    /// sockets use plain writes). Returns once every thread is traced.
    fn fail_store_io(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            crate::tool_present("strace"),
            "the failing disk needs strace: apt-get install -y strace"
        );
        let pid = self.nodes[i]
            .pid
            .ok_or_else(|| anyhow::anyhow!("esc-{} is not running", i + 1))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nodes[i].home.join("strace.log"))?;
        const CALLS: &str = "pwrite64,pwritev,pwritev2,fdatasync,fsync,ftruncate,fallocate";
        let tracer = self.lab.spawn(
            &self.nodes[i].ns_host.clone(),
            "strace",
            &[
                "-qq",
                "-f",
                "-p",
                &pid.to_string(),
                "-o",
                "/dev/null",
                "-e",
                &format!("trace={CALLS}"),
                "-e",
                &format!("inject={CALLS}:error=EIO"),
            ],
            log,
        );
        self.tracers[i] = Some(tracer);
        let traced = || -> bool {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("status")).is_ok_and(|st| {
                    st.lines()
                        .any(|l| l.split_whitespace().eq(["TracerPid:", &tracer.to_string()]))
                })
            })
        };
        anyhow::ensure!(
            wait_for(READY, traced),
            "strace did not attach to esc-{} (see strace.log in its home)",
            i + 1
        );
        Ok(())
    }

    /// Drops, on node `i`, what comes in from its peer and the witness
    /// and/or what goes out to them (VRRP multicast included); the client
    /// still reaches it.
    fn partition(&mut self, i: usize, inbound: bool, outbound: bool) -> anyhow::Result<()> {
        let others = format!("{{ {}, {WITNESS_ADDR} }}", NODE_ADDRS[1 - i]);
        let mut rules = String::from("table inet esc_lab_partition {\n");
        if inbound {
            rules += &format!(
                "chain in {{ type filter hook input priority 0; ip saddr {others} drop; }}\n"
            );
        }
        if outbound {
            rules += &format!(
                "chain out {{ type filter hook output priority 0; ip daddr {others} drop; ip daddr 224.0.0.18 drop; }}\n"
            );
        }
        rules += "}\n";
        self.nft(i, &rules)
    }

    /// Undoes `fault` on node `i` (the node comes back and rejoins).
    pub fn heal(&mut self, fault: Fault, i: usize) -> anyhow::Result<()> {
        let ns = self.lab.ns(&self.nodes[i].ns_host);
        match fault {
            Fault::LinkDown => crate::ip(&["-n", &ns, "link", "set", "eth0", "up"]),
            Fault::Partition | Fault::OneWayIn | Fault::OneWayOut => {
                self.nft(i, "delete table inet esc_lab_partition\n")?
            }
            Fault::PowerFailure => {
                // Power comes back as a reboot: the kernel's addresses are
                // gone with its RAM, the VIP too (the namespace kept it;
                // up with the link, it would answer ARP for the VIP).
                if self.lab.has(&self.nodes[i].ns_host, VIP) {
                    crate::ip(&[
                        "-n",
                        &ns,
                        "addr",
                        "del",
                        &format!("{VIP}/24"),
                        "dev",
                        "eth0",
                    ]);
                }
                crate::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
                self.start(i)?;
            }
            Fault::DeadVm => self.signal(i, nix::sys::signal::Signal::SIGCONT)?,
            Fault::Switchover | Fault::ServiceHang => {}
            Fault::GracefulStop | Fault::ProcessKill => self.start(i)?,
            // The disk is replaced, or the subsystem is brought back, by
            // restarting escd (the store recovers at open).
            Fault::DiskIoError | Fault::ApiDies => {
                if let Some(t) = self.tracers[i].take() {
                    self.lab
                        .signal_and_reap(t, nix::sys::signal::Signal::SIGTERM);
                }
                self.stop(i, nix::sys::signal::Signal::SIGTERM);
                self.start(i)?;
            }
            Fault::DiskFull => {
                std::fs::remove_file(self.nodes[i].home.join("data").join("lab-fill"))?;
            }
        }
        Ok(())
    }
}
