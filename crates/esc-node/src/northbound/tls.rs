//! HTTPS for the northbound and health APIs (issue 14, item 2): rustls
//! with its safe defaults (TLS 1.3 and 1.2, no renegotiation, no
//! compression), the certificate chain and key read from PEM files, and
//! swapped in place by `escadm reload` when `esc.toml` is unchanged
//! (connections already open keep the certificate they began with).
//!
//! The key file must not be readable by group or others (as ssh insists
//! for its keys): a key another user can read is not a secret.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The files of the node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server configuration in use, replaceable while the node runs.
pub struct Certs {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

/// Reads and checks the chain and key: the error names the file and what
/// to do. Nothing is changed on an error.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&files.key)
        .map_err(|e| format!("api.tls_key_file {}: {e}", files.key.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "api.tls_key_file {}: readable by group or others (mode {:o}): chmod 600 it",
            files.key.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("api.tls_cert_file {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("api.tls_cert_file {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "api.tls_cert_file {}: no PEM certificate in it (BEGIN CERTIFICATE)",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "api.tls_key_file {}: no PEM private key in it ({e})",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "api.tls_cert_file {} and api.tls_key_file {}: {e} (is the key the certificate's?)",
                files.cert.display(),
                files.key.display()
            )
        })?;
    // HTTP/1.1 only, as the plain listener.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Certs {
    /// The TLS files of `[api]`, if set (relative paths under `home`).
    pub fn files(home: &Path, api: &esc_config::ApiConfig) -> Option<TlsFiles> {
        match (&api.tls_cert_file, &api.tls_key_file) {
            (Some(c), Some(k)) => Some(TlsFiles {
                cert: esc_config::Config::resolve(home, c),
                key: esc_config::Config::resolve(home, k),
            }),
            _ => None,
        }
    }

    pub fn open(files: TlsFiles) -> Result<Certs, String> {
        let cfg = load(&files)?;
        Ok(Certs {
            files,
            current: RwLock::new(cfg),
        })
    }

    /// What new connections are served with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rereads the files; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = load(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = cfg;
        Ok(())
    }
}
