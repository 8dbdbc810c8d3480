//! HTTPS on the northbound and health APIs (issue 14, item 2), checked
//! with a real client (curl from Debian) against a certificate this test
//! makes (its own CA): plain HTTP turned off, the REST and health APIs
//! answer over TLS, a key readable by others is refused at start with what
//! to do, and `escadm reload` swaps in a new certificate without a restart.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A CA and a certificate it signs for 127.0.0.1 and localhost, as PEM:
/// (CA, server chain, server key).
fn certificates(cn: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{cn} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `curl` over HTTPS trusting only `ca`: exit code and body.
fn curl(ca: &Path, url: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-u", &format!("admin:{PASSWORD}"), url])
        .output()
        .expect("curl (Debian's curl; .ci/run installs it)");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

struct Tls {
    dir: tempfile::TempDir,
    https: std::net::SocketAddr,
    health_https: std::net::SocketAddr,
}

impl Tls {
    fn new() -> Tls {
        Tls {
            dir: tempfile::tempdir().unwrap(),
            https: free_addr("127.0.0.1"),
            health_https: free_addr("127.0.0.1"),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a fresh CA and certificate; returns the CA's file.
    fn issue(&self, cn: &str, key_mode: u32) -> PathBuf {
        let (ca, cert, key) = certificates(cn);
        let ca_file = self.file(&format!("{cn}-ca.pem"));
        std::fs::write(&ca_file, ca).unwrap();
        std::fs::write(self.file("server.pem"), cert).unwrap();
        write_private(&self.file("server.key"), &key, key_mode);
        ca_file
    }

    fn api_extra(&self) -> String {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nhttps_listen = \"{}\"\nhealth_https_listen = \"{}\"\nplain_http = false\n",
            self.file("server.pem").display(),
            self.file("server.key").display(),
            self.https,
            self.health_https,
        )
    }
}

#[test]
fn https_serves_the_api_and_reload_swaps_the_certificate() {
    let tls = Tls::new();
    let ca1 = tls.issue("first", 0o600);
    let mut spec = NodeSpec::new("esc-tls", "127.0.0.1", "primary");
    spec.api_extra = tls.api_extra();
    let plain = spec.api;
    let n = Node::start(spec);
    wait_until(Duration::from_secs(20), "node up and healthy", || {
        let s = n.status();
        s["role"] == "primary"
    });
    let api = format!("https://127.0.0.1:{}/v0/deployments", tls.https.port());
    let health = format!("https://localhost:{}/esc/health", tls.health_https.port());
    let (code, body) = curl(&ca1, &api);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("\"deployments\""), "{body}");
    let (code, body) = curl(&ca1, &health);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("status_code"), "{body}");
    // Plain HTTP is off: nothing listens there.
    assert!(std::net::TcpStream::connect_timeout(&plain, Duration::from_secs(2)).is_err());
    // The health check counts the HTTPS listener as the API.
    let h = n.admin(esc_proto::AdminRequest::Health);
    assert!(
        h.value.as_ref().is_some_and(|v| v["status_code"] == 2000),
        "{h:?}"
    );

    // A new certificate from another CA: `escadm reload` with esc.toml
    // unchanged swaps it in place, the node keeps running.
    let pid = n.pid();
    let ca2 = tls.issue("second", 0o600);
    let r = n.admin(esc_proto::AdminRequest::Reload);
    assert!(r.ok && r.message.contains("reloaded"), "{r:?}");
    let (code, body) = curl(&ca2, &api);
    assert_eq!(code, 0, "{body}");
    let (code, body) = curl(&ca1, &api);
    assert_ne!(code, 0, "the old CA still verifies: {body}");
    assert_eq!(n.pid(), pid);
    assert_eq!(n.status()["role"], "primary");

    // A key others can read is refused, and the certificate in use stays.
    write_private(&tls.file("server.key"), "not a key", 0o644);
    let r = n.admin(esc_proto::AdminRequest::Reload);
    assert!(!r.ok && r.message.contains("chmod 600"), "{r:?}");
    let (code, body) = curl(&ca2, &api);
    assert_eq!(code, 0, "{body}");
    assert!(counter_tls(&n) >= 1, "curl's refused handshake is counted");
}

fn counter_tls(n: &Node) -> u64 {
    n.status()["counters"]["api_connections"]["tls_failures"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_bad_key_or_certificate_stops_the_start_with_what_to_do() {
    for (what, expect) in [("world-readable", "chmod 600"), ("garbage", "no PEM")] {
        let tls = Tls::new();
        tls.issue("bad", 0o600);
        match what {
            "world-readable" => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    tls.file("server.key"),
                    std::fs::Permissions::from_mode(0o644),
                )
                .unwrap();
            }
            _ => std::fs::write(tls.file("server.pem"), "garbage").unwrap(),
        }
        let mut spec = NodeSpec::new("esc-badtls", "127.0.0.1", "primary");
        spec.api_extra = tls.api_extra();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("esc.toml"), spec.toml()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_escd"))
            .arg("--home")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: escd started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{what}: {err}");
    }
}
