//! Issue 3: interoperability with real keepalived (the Debian package,
//! installed by .ci/run) in one VRID, VRRPv3 and VRRPv2, in both
//! directions: the lower priority joins as backup, and each takes over
//! when the other dies. Skipped (said on stderr) when keepalived is absent
//! outside CI; in CI its absence fails.

mod common;

use common::lab::Lab;
use common::{status_of, wait_until, PASSWORD};
use std::path::{Path, PathBuf};
use std::time::Duration;

const VIP: &str = "192.0.2.100";

fn keepalived_present() -> bool {
    let found = ["/usr/sbin/keepalived", "/sbin/keepalived"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        assert!(std::env::var("CI").is_err(), "CI must install keepalived");
        eprintln!("skipped: keepalived is not installed");
    }
    found
}

fn vrrp_state(home: &Path) -> String {
    status_of(home)
        .map(|s| s["ha"]["vrrp"]["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

struct Peer {
    dir: tempfile::TempDir,
}

fn start_keepalived(lab: &mut Lab, host: &str, version: u8, priority: u8, advert: &str) -> Peer {
    let dir = tempfile::Builder::new()
        .prefix("esc-ka-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("keepalived.conf"),
        format!(
            "global_defs {{\n  router_id {host}\n  vrrp_version {version}\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 100\n  \
             priority {priority}\n  advert_int {advert}\n  nopreempt\n  \
             virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("keepalived.log")).unwrap();
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    let args = [
        "--dont-fork".to_string(),
        "--log-console".into(),
        "--vrrp".into(),
        format!("--use-file={}", path("keepalived.conf")),
        format!("--pid={}", path("keepalived.pid")),
        format!("--vrrp_pid={}", path("vrrp.pid")),
    ];
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    lab.spawn(host, "keepalived", &args, log);
    Peer { dir }
}

fn start_escd(lab: &mut Lab, host: &str, addr: &str, vrrp: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("esc-lab-")
        .tempdir()
        .unwrap();
    let home = dir.path().to_path_buf();
    std::fs::write(
        home.join("esc.toml"),
        format!(
            "node_name = \"{host}\"\n[replication]\nlisten = \"{addr}:7789\"\n[api]\nlisten = \"0.0.0.0:8080\"\n\
             user = \"admin\"\npassword = \"{PASSWORD}\"\n[vrrp]\ninterface = \"eth0\"\nvip = \"{VIP}/24\"\n{vrrp}"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(home.join("stderr.log")).unwrap();
    let h = home.to_str().unwrap().to_string();
    let logs = format!("{h}/log");
    lab.spawn(
        host,
        env!("CARGO_BIN_EXE_escd"),
        &["--home", &h, "--log-dir", &logs],
        log,
    );
    let hh = home.clone();
    wait_until(Duration::from_secs(20), "escd admin socket", || {
        status_of(&hh).is_some()
    });
    (dir, home)
}

fn interop(version: u8, escd_vrrp: &str, ka_advert: &str) {
    let Some(mut lab) = Lab::new() else { return };
    if !keepalived_present() {
        return;
    }
    lab.host("esc1", "192.0.2.11/24");
    lab.host("ka", "192.0.2.12/24");
    let deadline = Duration::from_secs(20);

    // keepalived (priority 200) first and master; escd (100) joins as backup.
    let ka = start_keepalived(&mut lab, "ka", version, 200, ka_advert);
    wait_until(deadline, "keepalived master (VIP on its host)", || {
        lab.has("ka", VIP)
    });
    let (_d, home) = start_escd(
        &mut lab,
        "esc1",
        "192.0.2.11",
        &format!("priority = 100\n{escd_vrrp}"),
    );
    wait_until(deadline, "escd backup, hearing keepalived", || {
        let s = status_of(&home).unwrap_or_default();
        s["ha"]["vrrp"]["state"] == "Backup"
            && s["ha"]["vrrp"]["adverts_received"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(
        status_of(&home).unwrap()["ha"]["vrrp"]["dropped"],
        0,
        "keepalived's adverts all valid"
    );
    assert!(!lab.has("esc1", VIP));
    // keepalived dies: escd takes over.
    lab.kill_host("ka");
    wait_until(deadline, "escd takes over from keepalived", || {
        vrrp_state(&home) == "Master" && lab.has("esc1", VIP)
    });
    let ka_log = std::fs::read_to_string(ka.dir.path().join("keepalived.log")).unwrap_or_default();
    drop(ka);

    // The other direction: escd (now master) and a keepalived of lower priority.
    let _ = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.ns("ka"),
            "addr",
            "del",
            &format!("{VIP}/24"),
            "dev",
            "eth0",
        ])
        .status();
    let ka2 = start_keepalived(&mut lab, "ka", version, 50, ka_advert);
    wait_until(deadline, "keepalived joins as backup", || {
        let log =
            std::fs::read_to_string(ka2.dir.path().join("keepalived.log")).unwrap_or_default();
        log.contains("Entering BACKUP STATE")
    });
    // escd dies: keepalived takes over.
    lab.kill_host("esc1");
    wait_until(deadline, "keepalived takes over from escd", || {
        let log =
            std::fs::read_to_string(ka2.dir.path().join("keepalived.log")).unwrap_or_default();
        log.contains("Entering MASTER STATE") && lab.has("ka", VIP)
    });
    assert!(
        !ka_log.contains("bad checksum") && !ka_log.contains("invalid"),
        "{ka_log}"
    );
}

#[test]
fn interop_vrrp_v3() {
    interop(3, "advert_interval_ms = 100\n", "0.1");
}

#[test]
fn interop_vrrp_v2() {
    interop(2, "version = 2\nadvert_interval_ms = 1000\n", "1");
}
