//! Network namespaces for multi-host tests and benchmarks (the lab's rules: addresses only
//! from 192.0.2.0/24, a unique prefix per run, everything deleted and every
//! process killed by PID on drop, even when the test fails).
//!
//! Topology: a `sw` namespace holding bridge `br0`; each host namespace has
//! `eth0`, a veth whose peer is a port of the bridge.

pub mod cluster;
pub mod flood;
pub mod healing;
pub mod monitor_bench;
pub mod notify;
pub mod scaling;
pub mod scenario;
pub mod secure;
pub mod service;
pub mod service_bench;
pub mod workload;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// One lab at a time per process: timing-sensitive protocols (VRRP at
/// 100 ms) must not compete with a second lab for two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Lab {
    pub prefix: String,
    _serial: std::sync::MutexGuard<'static, ()>,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the lab may run here (root). Without root a test is skipped
/// (said on stderr); in CI (CI set) a missing capability fails instead.
pub fn allowed() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must run the netns tests as root"
    );
    eprintln!("skipped: network namespace tests need root");
    false
}

/// Whether `program` is on the PATH (the lab's optional tools: strace).
pub fn tool_present(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Namespaces this crate creates: a two-letter tag, the PID, `x`, a
/// counter, the host name (`esc-lab down` removes what a crash left).
pub fn is_lab_namespace(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 4
        && b[0].is_ascii_lowercase()
        && b[1].is_ascii_lowercase()
        && b[2].is_ascii_digit()
        && name[2..].split_once('x').is_some_and(|(pid, rest)| {
            pid.chars().all(|c| c.is_ascii_digit())
                && rest.chars().next().is_some_and(|c| c.is_ascii_digit())
                && [
                    "sw", "esc1", "esc2", "witness", "client", "ka", "n1", "n2", "vim", "vm",
                ]
                .iter()
                .any(|h| {
                    rest.trim_start_matches(|c: char| c.is_ascii_digit())
                        .starts_with(h)
                })
        })
}

impl Lab {
    /// A fresh lab, or None (test skipped, said on stderr) when not root.
    /// In CI (CI=true, root) a missing capability fails instead.
    pub fn new() -> Option<Lab> {
        Self::with_prefix("et")
    }

    /// Like [`Lab::new`] with a chosen two-letter prefix (names stay unique per process).
    pub fn with_prefix(tag: &str) -> Option<Lab> {
        if !allowed() {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{tag}{}x{n}", std::process::id() % 100_000);
        let mut lab = Lab {
            prefix,
            _serial: serial,
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        let sw = lab.ns("sw");
        ip(&["netns", "add", &sw]);
        lab.namespaces.push(sw.clone());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        Some(lab)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// Adds host namespace `host` with `eth0` at `addr` (e.g. 192.0.2.11/24).
    pub fn host(&mut self, host: &str, addr: &str) -> String {
        let ns = self.ns(host);
        let sw = self.ns("sw");
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        // Temporary names, unique in the root namespace and within 15 chars.
        let i = self.namespaces.len();
        let tmp = format!("v{}{i}", &self.prefix[2..]);
        let (a, b) = (format!("{tmp}a"), format!("{tmp}b"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &ns]);
        ip(&["-n", &ns, "link", "set", &a, "name", "eth0"]);
        ip(&["link", "set", &b, "netns", &sw]);
        ip(&["-n", &sw, "link", "set", &b, "master", "br0", "up"]);
        ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Sets kernel parameters (`name=value`) inside a host's namespace.
    pub fn sysctl(&self, host: &str, settings: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "sysctl", "-q", "-w"])
            .args(settings)
            .status()
            .expect("run sysctl");
        assert!(
            st.success(),
            "sysctl {} in {host} failed",
            settings.join(" ")
        );
    }

    /// IPv4 addresses on `eth0` of a host.
    pub fn addrs(&self, host: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns(host),
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(|a| a.to_string()))
            .collect()
    }

    /// Whether `eth0` of a host is up (a powered-off host's is not).
    pub fn link_up(&self, host: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(host), "-o", "link", "show", "dev", "eth0"])
            .output();
        out.is_ok_and(|o| {
            let t = String::from_utf8_lossy(&o.stdout);
            t.contains("state UP") || t.contains(",UP")
        })
    }

    pub fn has(&self, host: &str, addr: &str) -> bool {
        self.addrs(host)
            .iter()
            .any(|a| a.starts_with(&format!("{addr}/")))
    }

    /// Starts a command inside a host namespace; killed when the lab drops.
    pub fn spawn(&mut self, host: &str, program: &str, args: &[&str], log: std::fs::File) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn in namespace");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Sends `sig` to a process started by [`Lab::spawn`] and waits until it
    /// is gone (so "killed at" means dead, not "signal sent").
    pub fn signal_and_reap(&mut self, pid: u32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(pos);
            let _ = c.wait();
        }
    }

    /// Every process inside a host namespace (keepalived forks children).
    pub fn pids(&self, host: &str) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns(host)])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Power failure of a host: SIGKILL every process in its namespace, and
    /// wait until they are gone.
    pub fn kill_host(&mut self, host: &str) {
        let victims = self.pids(host);
        for &pid in &victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Reap the ones we started; the rest are reaped by init.
        let mut i = 0;
        while i < self.children.len() {
            if victims.contains(&(self.children[i].id() as i32)) {
                let mut c = self.children.remove(i);
                let _ = c.wait();
            } else {
                i += 1;
            }
        }
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.pids(host).is_empty() {
            assert!(
                std::time::Instant::now() < end,
                "processes of {host} survive SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Power failure of a host: every process killed and its link down at
    /// once, so nothing of it (not even its kernel) answers any more.
    pub fn power_fail(&mut self, host: &str) {
        ip(&["-n", &self.ns(host), "link", "set", "eth0", "down"]);
        self.kill_host(host);
    }

    /// Runs `f` on a thread inside a host namespace.
    pub fn in_ns<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Namespaces others made under our prefix (esc-vim's servers).
        let listed = Command::new("ip").args(["netns", "list"]).output();
        if let Ok(out) = listed {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let ns = line.split_whitespace().next().unwrap_or("").to_string();
                if ns.starts_with(&self.prefix) && !self.namespaces.contains(&ns) {
                    self.namespaces.push(ns);
                }
            }
        }
        // Grandchildren too (keepalived's VRRP process, esc-vim's VNFs):
        // everything left inside our namespaces.
        for ns in &self.namespaces {
            let out = Command::new("ip").args(["netns", "pids", ns]).output();
            if let Ok(out) = out {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
