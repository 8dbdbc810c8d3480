//! `escadm ha set` exactly as the seed writes it, then `escadm reload`, on
//! two hosts in network namespaces: the pair comes up with one VRRP master
//! holding the VIP. Bad arguments are refused and change nothing.

mod common;

use common::lab::Lab;
use common::{status_of, wait_until, PASSWORD};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn escadm() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_escd")).with_file_name("escadm");
    assert!(
        p.exists(),
        "build escadm first: scripts/test.sh does (cargo build --workspace --bins)"
    );
    p
}

fn run_escadm(lab: &Lab, host: &str, home: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(host)])
        .arg(escadm())
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs its closure if the test panics (diagnostics).
struct OnPanic<F: Fn()>(F);
impl<F: Fn()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

#[test]
fn the_seeds_ha_set_line_then_reload_makes_a_pair() {
    let Some(mut lab) = Lab::new() else { return };
    let mut homes = Vec::new();
    for (host, addr) in [("esc1", "192.0.2.11"), ("esc2", "192.0.2.12")] {
        lab.host(host, &format!("{addr}/24"));
        let dir = tempfile::Builder::new()
            .prefix("esc-haset-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("esc.toml"),
            format!("node_name = \"{host}\"\n[api]\npassword = \"{PASSWORD}\"\n"),
        )
        .unwrap();
        let h = dir.path().to_str().unwrap().to_string();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        lab.spawn(
            host,
            env!("CARGO_BIN_EXE_escd"),
            &["--home", &h, "--log-dir", &format!("{h}/log")],
            log,
        );
        let p = dir.path().to_path_buf();
        wait_until(Duration::from_secs(20), "standalone escd", || {
            status_of(&p).is_some()
        });
        homes.push(dir);
    }
    let (h1, h2) = (homes[0].path(), homes[1].path());

    // Bad arguments: a clear error, exit 2, the file untouched.
    let before = std::fs::read(h1.join("esc.toml")).unwrap();
    for bad in [
        vec![
            "ha",
            "set",
            "--kad_vip=192.0.2.12",
            "--kad_vif=eth0",
            "--ha_node_list=192.0.2.11",
            "192.0.2.12",
        ],
        vec![
            "ha",
            "set",
            "--kad_vip=192.0.2.100",
            "--kad_vif=eth9",
            "--ha_node_list=192.0.2.11",
            "192.0.2.12",
        ],
        vec![
            "ha",
            "set",
            "--kad_vip=192.0.2.100",
            "--kad_vif=eth0",
            "--ha_node_list=192.0.2.13",
            "192.0.2.12",
        ],
        vec![
            "ha",
            "set",
            "--kad_vip=not-an-ip",
            "--kad_vif=eth0",
            "--ha_node_list=192.0.2.11",
            "192.0.2.12",
        ],
    ] {
        let (code, text) = run_escadm(&lab, "esc1", h1, &bad);
        assert_eq!(code, 2, "{bad:?}: {text}");
        assert!(text.contains("nothing was changed"), "{text}");
        assert_eq!(
            std::fs::read(h1.join("esc.toml")).unwrap(),
            before,
            "{bad:?} changed the file"
        );
    }

    // The seed's line, with its space after `=`.
    let (code, text) = run_escadm(
        &lab,
        "esc1",
        h1,
        &[
            "ha",
            "set",
            "--kad_vip=",
            "192.0.2.100",
            "--kad_vif=eth0",
            "--ha_node_list=192.0.2.11",
            "192.0.2.12",
        ],
    );
    assert_eq!(code, 0, "{text}");
    std::fs::copy(h1.join("repl.secret"), h2.join("repl.secret")).unwrap();
    let (code, text) = run_escadm(
        &lab,
        "esc2",
        h2,
        &[
            "ha",
            "set",
            "--kad_vip",
            "192.0.2.100",
            "--kad_vif=eth0",
            "--ha_node_list=192.0.2.11,192.0.2.12",
        ],
    );
    assert_eq!(code, 0, "{text}");
    for (host, home) in [("esc1", h1), ("esc2", h2)] {
        let (code, text) = run_escadm(&lab, host, home, &["reload"]);
        assert_eq!(code, 0, "{text}");
    }
    let vrrp = |h: &Path| {
        status_of(h)
            .map(|s| s["ha"]["vrrp"]["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let dump = |h: &Path| {
        format!(
            "{}\n{}",
            status_of(h).map(|s| s.to_string()).unwrap_or_default(),
            std::fs::read_to_string(h.join("log/escadm.log")).unwrap_or_default()
        )
    };
    let _diag = OnPanic(|| eprintln!("esc1: {}\nesc2: {}", dump(h1), dump(h2)));
    wait_until(
        Duration::from_secs(30),
        "one master, one backup, the VIP on one host",
        || {
            let states = [vrrp(h1), vrrp(h2)];
            let vips = [
                lab.has("esc1", "192.0.2.100"),
                lab.has("esc2", "192.0.2.100"),
            ];
            states.contains(&"Master".to_string())
                && states.contains(&"Backup".to_string())
                && vips.iter().filter(|v| **v).count() == 1
        },
    );
    // Both nodes authenticate each other with the shared secret.
    for h in [h1, h2] {
        assert_eq!(status_of(h).unwrap()["counters"]["auth_failures"], 0);
    }
}
