//! The VIP guard: a small child process that removes the VIP from the
//! interface as soon as the node process is gone, however it went (issue
//! 13: after a SIGKILL the dead node kept the VIP until escd was restarted,
//! so a neighbour that asked ARP again could still reach it), without
//! relying on an init system.
//!
//! ```text
//!   escd ──spawns──> escd --vip-guard eth0=192.0.2.100
//!     │  (the child's stdin is a pipe whose only writer is escd)
//!     └─ dies (any signal, a panic, exit): the kernel closes the pipe,
//!        the guard reads EOF, deletes the address (netlink), exits.
//! ```
//!
//! The guard holds nothing else: no socket, no file of the node. A node
//! that stops cleanly removes the VIP itself first; the guard's delete then
//! finds nothing. It ignores SIGINT and SIGTERM (a terminal's Ctrl-C or a
//! process-group signal reaches it with escd), so it outlives its parent;
//! the speaker starts it again if it ever dies ([`Guard::ensure`]).
//!
//! The program is `escd` itself (a hidden flag); the daemon names it with
//! [`set_program`]. A library user that does not (the in-process tests) has
//! no guard.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use tracing::{info, warn};

use crate::logging::HA;

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Names the program that runs the guard (`escd`, run with `--vip-guard`).
pub fn set_program(path: PathBuf) {
    let _ = PROGRAM.set(path);
}

/// The flag's value: `<interface>=<vip>` (the address is removed by
/// itself, whatever its prefix).
fn spec(interface: &str, vip: Ipv4Addr) -> String {
    format!("{interface}={vip}")
}

fn parse(spec: &str) -> Result<(String, Ipv4Addr), String> {
    let (iface, ip) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?}: expected <interface>=<vip>"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
    if iface.is_empty() {
        return Err("the interface name is empty".into());
    }
    Ok((iface.to_string(), ip))
}

/// The running guard of one VIP.
pub(crate) struct Guard {
    spec: String,
    child: Child,
    /// Never written: its end, at the node's death, is the signal.
    _pipe: ChildStdin,
}

impl Guard {
    /// Starts the guard, if the daemon named its program.
    pub(crate) fn start(interface: &str, vip: Ipv4Addr) -> Option<Guard> {
        let program = PROGRAM.get()?;
        let spec = spec(interface, vip);
        match Self::spawn(program, &spec) {
            Ok(g) => Some(g),
            Err(e) => {
                warn!(target: HA, %spec, "cannot start the VIP guard: {e}; a killed node keeps the VIP until restarted");
                None
            }
        }
    }

    fn spawn(program: &PathBuf, spec: &str) -> std::io::Result<Guard> {
        let mut child = Command::new(program)
            .arg("--vip-guard")
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pipe = child.stdin.take().expect("piped above");
        info!(target: HA, %spec, pid = child.id(), "VIP guard started");
        Ok(Guard {
            spec: spec.to_string(),
            child,
            _pipe: pipe,
        })
    }

    /// Starts the guard again if it died (checked whenever the VIP is added).
    pub(crate) fn ensure(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            warn!(target: HA, spec = %self.spec, %status, "the VIP guard died; starting it again");
            if let Some(program) = PROGRAM.get() {
                match Self::spawn(program, &self.spec) {
                    Ok(g) => *self = g,
                    Err(e) => warn!(target: HA, "cannot start the VIP guard: {e}"),
                }
            }
        }
    }
}

/// `escd --vip-guard <interface>=<vip>`: waits for its stdin to end, then
/// removes the VIP. Returns the process's exit code.
pub fn run(spec: &str) -> i32 {
    let (iface, ip) = match parse(spec) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("escd --vip-guard: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("escd --vip-guard: cannot start: {e}");
            return 1;
        }
    };
    // Signals meant for the node's process group are not for the guard:
    // listening to them keeps them from ending it; it must outlive the
    // node to do its one job.
    let held = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>([
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ])
    });
    if let Err(e) = &held {
        eprintln!("escd --vip-guard: cannot hold the signals: {e}");
    }
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let r = rt.block_on(remove(&iface, ip));
    match r {
        Ok(true) => {
            eprintln!("escd --vip-guard: the node process is gone: VIP {ip} removed from {iface}");
            0
        }
        Ok(false) => 0,
        Err(e) => {
            eprintln!("escd --vip-guard: the node process is gone; cannot remove VIP {ip} from {iface}: {e}");
            1
        }
    }
}

/// Deletes `ip` from `iface` if present; whether it was.
async fn remove(iface: &str, ip: Ipv4Addr) -> Result<bool, String> {
    let (ifindex, _) = super::sys::interface(iface).map_err(|e| e.to_string())?;
    let (conn, h, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    remove_address(&h, ifindex, ip)
        .await
        .map_err(|e| e.to_string())
}

/// Deletes every instance of `ip` on interface `ifindex`; whether there
/// was one (the speaker's removal and the guard's).
pub(crate) async fn remove_address(
    h: &rtnetlink::Handle,
    ifindex: u32,
    ip: Ipv4Addr,
) -> Result<bool, rtnetlink::Error> {
    use futures::TryStreamExt;
    let mut found = h
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .set_address_filter(IpAddr::V4(ip))
        .execute();
    let mut removed = false;
    while let Some(msg) = found.try_next().await? {
        h.address().del(msg).execute().await?;
        removed = true;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_round_trips_and_bad_ones_are_refused() {
        let s = spec("eth0", Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(s, "eth0=192.0.2.100");
        assert_eq!(
            parse(&s).unwrap(),
            ("eth0".to_string(), Ipv4Addr::new(192, 0, 2, 100))
        );
        for bad in ["eth0", "=192.0.2.1", "eth0=x", "eth0=192.0.2.1/24"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
