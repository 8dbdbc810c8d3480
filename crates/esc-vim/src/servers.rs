//! Namespace servers (issue 11, item 4): each server the API creates runs
//! as a network namespace joined to the VIM network's bridge, with
//! `esc-vnf` inside on the server's address (its day-0 files written where
//! it reads them; ICMP answered by the namespace's kernel).
//!
//! ```text
//!   api (create, delete, reboot, stop, start; control: kill, hang, cut, heal)
//!     └─ Cmd ──> one worker thread (owns every child; runs `ip` in order)
//!                  ip netns add <prefix><n>; veth vm<n> (bridge port) <-> eth0
//!                  ip netns exec <ns> esc-vnf --listen <addr>:8080 --day0 <dir>
//!                  └─ ready(id) ──> Cloud: BUILD -> ACTIVE once set up
//! ```
//!
//! One thread owns the children so that `PR_SET_PDEATHSIG` (set on each)
//! fires only when esc-vim itself dies: no VNF outlives its VIM. Light
//! servers (the default) have no runtime at all: the API's records are the
//! whole server, so 10,000 of them fit on the machine.

use base64::Engine;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Where the namespace servers go.
#[derive(Debug, Clone)]
pub struct NetnsConfig {
    /// Namespace name prefix (the server's number follows).
    pub prefix: String,
    /// The namespace holding the VIM network's bridge, and the bridge.
    pub switch_ns: String,
    pub bridge: String,
    /// The VIM network's prefix length (its addresses' mask).
    pub prefix_len: u8,
    /// The `esc-vnf` binary.
    pub vnf: PathBuf,
    /// Where each server's day-0 files are written.
    pub state_dir: PathBuf,
}

/// A failure the lab plays on one server, outside the OpenStack API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The VNF process dies (the VIM still says ACTIVE).
    Kill,
    /// The VNF process stops answering (SIGSTOP).
    Hang,
    /// The server's link goes down.
    Cut,
    /// Undoes the above: resumed, link up, restarted if dead.
    Heal,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "kill" => Fault::Kill,
            "hang" => Fault::Hang,
            "cut" => Fault::Cut,
            "heal" => Fault::Heal,
            _ => return None,
        })
    }
}

enum Cmd {
    Create {
        id: String,
        name: String,
        ip: String,
        user_data: Option<String>,
    },
    Delete {
        id: String,
    },
    /// Reboot or start: the process (re)started.
    Restart {
        id: String,
    },
    Stop {
        id: String,
    },
    Fault {
        id: String,
        fault: Fault,
        reply: mpsc::Sender<Result<(), String>>,
    },
}

/// The handle the API holds.
pub struct Netns {
    tx: mpsc::Sender<Cmd>,
}

struct Proc {
    ns: String,
    name: String,
    ip: String,
    day0: PathBuf,
    child: Option<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Day-0 data as the manager sends it (base64 of a JSON object, path ->
/// content), written under `dir`; anything else is kept as `/user-data`.
fn write_day0(dir: &std::path::Path, user_data: Option<&str>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let Some(ud) = user_data else { return Ok(()) };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(ud)
        .unwrap_or_else(|_| ud.as_bytes().to_vec());
    let files: HashMap<String, String> = match serde_json::from_slice(&raw) {
        Ok(f) => f,
        Err(_) => [(
            "/user-data".to_string(),
            String::from_utf8_lossy(&raw).into_owned(),
        )]
        .into(),
    };
    for (path, data) in files {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|p| p == "..") {
            continue;
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, data).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Worker {
    cfg: NetnsConfig,
    procs: HashMap<String, Proc>,
    next: u64,
}

impl Worker {
    fn spawn(&self, p: &Proc) -> Result<Child, String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &p.ns])
            .arg(&self.cfg.vnf)
            .args(["--listen", &format!("{}:8080", p.ip), "--name", &p.name])
            .arg("--day0")
            .arg(&p.day0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The VNF dies with esc-vim (this thread lives as long as it).
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one system call (prctl), which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start esc-vnf: {e}"))
    }

    fn create(
        &mut self,
        id: String,
        name: String,
        addr: String,
        user_data: Option<String>,
    ) -> Result<(), String> {
        self.next += 1;
        let n = self.next;
        let ns = format!("{}{n}", self.cfg.prefix);
        let port = format!("vm{n}");
        let sw = self.cfg.switch_ns.clone();
        ip(&["netns", "add", &ns])?;
        let setup = (|| {
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &sw,
                "link",
                "set",
                &port,
                "master",
                &self.cfg.bridge,
                "up",
            ])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/{}", self.cfg.prefix_len),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])
        })();
        let day0 = self.cfg.state_dir.join(&id).join("day0");
        let mut p = Proc {
            ns,
            name,
            ip: addr,
            day0,
            child: None,
        };
        let r = setup
            .and_then(|()| write_day0(&p.day0, user_data.as_deref()))
            .and_then(|()| self.spawn(&p));
        match r {
            Ok(child) => {
                p.child = Some(child);
                self.procs.insert(id, p);
                Ok(())
            }
            Err(e) => {
                let _ = ip(&["netns", "del", &p.ns]);
                Err(e)
            }
        }
    }

    fn kill(p: &mut Proc) {
        if let Some(mut c) = p.child.take() {
            // A stopped process dies of SIGKILL as well.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(p: &Proc, s: nix::sys::signal::Signal) -> Result<(), String> {
        let pid = p
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or("the VNF is not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s).map_err(|e| e.to_string())
    }

    fn handle(&mut self, cmd: Cmd, ready: &dyn Fn(String, Result<(), String>)) {
        match cmd {
            Cmd::Create {
                id,
                name,
                ip,
                user_data,
            } => {
                let r = self.create(id.clone(), name, ip, user_data);
                ready(id, r);
            }
            Cmd::Delete { id } => {
                if let Some(mut p) = self.procs.remove(&id) {
                    Self::kill(&mut p);
                    let _ = ip(&["netns", "del", &p.ns]);
                    let _ = std::fs::remove_dir_all(self.cfg.state_dir.join(&id));
                }
            }
            Cmd::Restart { id } => {
                if let Some(mut p) = self.procs.remove(&id) {
                    Self::kill(&mut p);
                    p.child = self.spawn(&p).ok();
                    self.procs.insert(id, p);
                }
            }
            Cmd::Stop { id } => {
                if let Some(p) = self.procs.get_mut(&id) {
                    Self::kill(p);
                }
            }
            Cmd::Fault { id, fault, reply } => {
                let r = match self.procs.get_mut(&id) {
                    None => Err(format!("no namespace server {id}")),
                    Some(p) => match fault {
                        Fault::Kill => {
                            Self::kill(p);
                            Ok(())
                        }
                        Fault::Hang => Self::signal(p, nix::sys::signal::Signal::SIGSTOP),
                        Fault::Cut => ip(&["-n", &p.ns, "link", "set", "eth0", "down"]),
                        Fault::Heal => {
                            let _ = ip(&["-n", &p.ns, "link", "set", "eth0", "up"]);
                            if p.child.is_some() {
                                Self::signal(p, nix::sys::signal::Signal::SIGCONT)
                            } else {
                                let p = self.procs.remove(&id);
                                match p {
                                    Some(mut p) => {
                                        let r = self.spawn(&p).map(|c| p.child = Some(c));
                                        self.procs.insert(id, p);
                                        r
                                    }
                                    None => Ok(()),
                                }
                            }
                        }
                    },
                };
                let _ = reply.send(r);
            }
        }
    }
}

impl Netns {
    /// Starts the worker; `ready` is told when a server is set up (or why
    /// not).
    pub fn start(
        cfg: NetnsConfig,
        ready: impl Fn(String, Result<(), String>) + Send + 'static,
    ) -> std::io::Result<Netns> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        std::thread::Builder::new()
            .name("esc-vim-servers".into())
            .spawn(move || {
                let mut w = Worker {
                    cfg,
                    procs: HashMap::new(),
                    next: 0,
                };
                for cmd in rx {
                    w.handle(cmd, &ready);
                }
                // The API is gone: take every server down.
                let ids: Vec<String> = w.procs.keys().cloned().collect();
                for id in ids {
                    w.handle(Cmd::Delete { id }, &ready);
                }
            })?;
        Ok(Netns { tx })
    }

    pub fn create(&self, id: &str, name: &str, ip: &str, user_data: Option<&str>) {
        let _ = self.tx.send(Cmd::Create {
            id: id.into(),
            name: name.into(),
            ip: ip.into(),
            user_data: user_data.map(str::to_string),
        });
    }

    pub fn delete(&self, id: &str) {
        let _ = self.tx.send(Cmd::Delete { id: id.into() });
    }

    pub fn restart(&self, id: &str) {
        let _ = self.tx.send(Cmd::Restart { id: id.into() });
    }

    pub fn stop(&self, id: &str) {
        let _ = self.tx.send(Cmd::Stop { id: id.into() });
    }

    /// Plays `fault` on server `id` (waits for it to be done).
    pub fn fault(&self, id: &str, fault: Fault) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Cmd::Fault {
                id: id.into(),
                fault,
                reply,
            })
            .map_err(|_| "the server worker is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the server worker is gone".to_string())?
    }
}
