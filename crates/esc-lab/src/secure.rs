//! What the wire shows (issue 14, "Done when", second item): the pair runs
//! with HTTPS on a certificate the lab makes (its own CA, the VIP and both
//! node addresses in the certificate), a client deploys through the VIP
//! over HTTPS with Debian's curl, and tcpdump in each node's namespace
//! records the replication link (7789), the witness link (7790) and the
//! HTTPS port (8443) meanwhile. The deployment's name and its day-0 data
//! must be in neither capture, yet the standby holds the deployment (it
//! crossed the captured link). A control request over plain HTTP (8080),
//! captured too, must show its marker: the captures do hold payloads.

use crate::cluster::{wait_for, Bins, Cluster, NODE_ADDRS, PASSWORD, VIP};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What one run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Findings {
    /// Bytes captured per port, both nodes together.
    pub captured: Vec<(u16, u64)>,
    /// Ports whose capture holds the secret marker (none must).
    pub marker_seen_on: Vec<u16>,
    /// The plain-HTTP control marker was captured (it must be).
    pub control_seen: bool,
    /// The standby holds the deployment.
    pub replicated: bool,
    /// HTTPS answered through the VIP with the lab's CA.
    pub https_ok: bool,
}

impl Findings {
    pub fn pass(&self) -> bool {
        self.marker_seen_on.is_empty()
            && self.control_seen
            && self.replicated
            && self.https_ok
            && self.captured.iter().all(|(_, b)| *b > 0)
    }
}

/// The lab's CA and a server certificate for the VIP and both nodes, as
/// files in `dir`: (CA file, certificate file, key file).
pub fn certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "esc lab CA (this run only)");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["esc.lab".to_string()])?;
    for a in [VIP, NODE_ADDRS[0], NODE_ADDRS[1]] {
        p.subject_alt_names.push(SanType::IpAddress(a.parse()?));
    }
    p.distinguished_name.push(DnType::CommonName, "esc.lab");
    let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
    let (ca_file, cert_file, key_file) = (
        dir.join("lab-ca.pem"),
        dir.join("api.pem"),
        dir.join("api.key"),
    );
    std::fs::write(&ca_file, ca_cert.pem())?;
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    Ok((ca_file, cert_file, key_file))
}

/// curl from the client's namespace: (exit code, body).
fn curl(c: &Cluster, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.lab.ns("client"),
            "curl",
            "-sS",
            "--max-time",
            "10",
        ])
        .args(args)
        .output();
    match out {
        Ok(o) => (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (-1, e.to_string()),
    }
}

/// Whether `needle` occurs in the file's bytes.
fn contains(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// Runs the check on a fresh lab (`tag`: its namespace prefix).
pub fn run(tag: &str, bins: &Bins) -> anyhow::Result<Findings> {
    anyhow::ensure!(
        crate::tool_present("tcpdump") && crate::tool_present("curl"),
        "tcpdump and curl are needed (Debian's packages; .ci/run installs them)"
    );
    let mut dir = tempfile::tempdir()?;
    // ESC_LAB_KEEP=1 leaves the captures and certificates behind.
    if std::env::var_os("ESC_LAB_KEEP").is_some_and(|v| v == "1") {
        dir.disable_cleanup(true);
        eprintln!("captures in {}", dir.path().display());
    }
    let (ca, cert, key) = certificates(dir.path())?;
    let (c2, k2) = (cert.clone(), key.clone());
    let mut c = Cluster::up_with(tag, bins.clone(), true, None, move |cfg| {
        cfg.api.tls_cert_file = Some(c2.clone());
        cfg.api.tls_key_file = Some(k2.clone());
    })?;
    let primary = c.wait_ready()?;
    let standby = 1 - primary;
    // A marker no frame would hold by chance: the deployment's name, a
    // property and a day-0 file carry it.
    let marker = format!("labsecret{}", std::process::id());
    let control = format!("labcontrol{}", std::process::id());
    let mut captures = Vec::new();
    let mut pids = Vec::new();
    for port in [7789u16, 7790, 8443, 8080] {
        for (i, host) in ["esc1", "esc2"].iter().enumerate() {
            let file = dir.path().join(format!("{host}-{port}.pcap"));
            let log = std::fs::File::create(dir.path().join(format!("{host}-{port}.log")))?;
            let f = file.to_string_lossy().to_string();
            let filter = format!("tcp port {port}");
            let pid = c.lab.spawn(
                host,
                "tcpdump",
                // Every packet handed over and written as it comes: the
                // run is short, and a kernel buffer not yet read when
                // tcpdump stops would be lost.
                &[
                    "-i",
                    "eth0",
                    "--immediate-mode",
                    "-U",
                    "-s",
                    "0",
                    "-w",
                    &f,
                    &filter,
                ],
                log,
            );
            pids.push(pid);
            captures.push((port, i, file));
        }
    }
    // tcpdump writes the file header once it listens.
    anyhow::ensure!(
        wait_for(Duration::from_secs(10), || captures
            .iter()
            .all(|(_, _, f)| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))),
        "tcpdump did not start"
    );
    let ca_s = ca.to_string_lossy().to_string();
    let auth = format!("admin:{PASSWORD}");
    let base = format!("https://{VIP}:8443");
    let tenant = r#"{"name": "lab-tls-tenant"}"#;
    let post = |url: String, body: &str| {
        curl(
            &c,
            &[
                "--cacert",
                &ca_s,
                "-u",
                &auth,
                "-H",
                "content-type: application/json",
                "-d",
                body,
                &url,
            ],
        )
    };
    let (_, out) = post(format!("{base}/v0/tenants"), tenant);
    let body = serde_json::json!({
        "name": marker,
        "tenant": "lab-tls-tenant",
        "properties": { "note": format!("{marker}-property") },
    })
    .to_string();
    let (code, out2) = post(format!("{base}/v0/deployments"), &body);
    let https_ok = code == 0 && out2.contains("\"operation\"");
    anyhow::ensure!(https_ok, "deploy over HTTPS: {out} {out2}");
    // The control: a plain-HTTP read that names its marker in the URL.
    let _ = curl(
        &c,
        &[
            "-u",
            &auth,
            &format!("http://{VIP}:8080/v0/deployments/{control}"),
        ],
    );
    // The standby holds it: it crossed the replication link.
    let standby_url = format!(
        "https://{}:8443/v0/deployments/{marker}",
        NODE_ADDRS[standby]
    );
    let replicated = wait_for(Duration::from_secs(20), || {
        curl(&c, &["--cacert", &ca_s, "-u", &auth, &standby_url])
            .1
            .contains(&format!("{marker}-property"))
    });
    // Every port's traffic has reached its capture before it stops (the
    // pcap header alone is 24 bytes a file).
    let size = |port: u16| -> u64 {
        captures
            .iter()
            .filter(|(p, _, _)| *p == port)
            .map(|(_, _, f)| {
                std::fs::metadata(f)
                    .map(|m| m.len())
                    .unwrap_or(0)
                    .saturating_sub(24)
            })
            .sum()
    };
    let _ = wait_for(Duration::from_secs(10), || {
        [7789, 7790, 8443, 8080].iter().all(|p| size(*p) > 0)
    });
    for pid in pids {
        c.lab.signal_and_reap(pid, nix::sys::signal::Signal::SIGINT);
    }
    let mut captured = Vec::new();
    let mut marker_seen_on = Vec::new();
    let mut control_seen = false;
    for port in [7789u16, 7790, 8443, 8080] {
        for (_, _, f) in captures.iter().filter(|(p, _, _)| *p == port) {
            if contains(f, marker.as_bytes()) && !marker_seen_on.contains(&port) {
                marker_seen_on.push(port);
            }
            if port == 8080 && contains(f, control.as_bytes()) {
                control_seen = true;
            }
        }
        captured.push((port, size(port)));
    }
    Ok(Findings {
        captured,
        marker_seen_on,
        control_seen,
        replicated,
        https_ok,
    })
}
