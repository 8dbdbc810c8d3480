//! The VIM manager (issue 11, item 3): the one connector (`esc_openstack`)
//! of this node, built from `[vim]`, shared by the lifecycle runner, the
//! health API and the status; and its watcher, which probes the VIM on
//! every node (primary or standby) so that `stage` and `escadm status --v`
//! say whether the VIM answers before any operation needs it.
//!
//! | what | where it shows |
//! |---|---|
//! | usable (the last call worked) | health `stage`: `INIT` until it is, then `READY`; a deploy of VMs is refused with 503 while it is not |
//! | last error, calls in flight, calls, failures | `escadm status --v` (`vim:` line), `--json` |

use crate::logging::HA;
use esc_openstack::{Client, Connector, Secret};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Probe period while the VIM is not usable, and once it is.
pub const PROBE_UNTIL_USABLE: Duration = Duration::from_secs(1);
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The connector of `[vim]`, if one is configured (the password read from
/// its file; it leaves this process only in the token request).
pub fn client(
    cfg: &esc_config::Config,
    home: &std::path::Path,
) -> crate::Result<Option<Arc<Client>>> {
    let Some(v) = &cfg.vim else {
        return Ok(None);
    };
    let client = Client::new(Connector {
        auth_url: v.auth_url.clone(),
        user: v.user.clone(),
        password: Secret::new(v.load_password(home)?),
        project: v.project.clone(),
        user_domain: v.user_domain.clone(),
        project_domain: v.project_domain.clone(),
        region: v.region.clone(),
        timeout: Duration::from_millis(v.call_timeout_ms),
    })
    .map_err(|e| crate::Error::Invalid {
        field: "vim".into(),
        message: e.to_string(),
    })?;
    Ok(Some(Arc::new(client)))
}

/// Probes the VIM until aborted, logging each change of usability once.
pub async fn watch(client: Arc<Client>) {
    let mut was: Option<bool> = None;
    loop {
        let r = client.probe().await;
        let usable = client.health().usable == Some(true);
        if was != Some(usable) {
            match &r {
                _ if usable => {
                    info!(target: HA, auth_url = %client.connector().auth_url, "the VIM answers")
                }
                Err(e) => {
                    warn!(target: HA, auth_url = %client.connector().auth_url, "the VIM is not usable: {e}")
                }
                Ok(()) => {}
            }
            was = Some(usable);
        }
        tokio::time::sleep(if usable {
            PROBE_EVERY
        } else {
            PROBE_UNTIL_USABLE
        })
        .await;
    }
}

/// The VIM's part of `escadm status`.
pub fn status(client: &Client) -> esc_proto::status::VimStatus {
    let h = client.health();
    let c = client.connector();
    esc_proto::status::VimStatus {
        auth_url: c.auth_url.clone(),
        user: c.user.clone(),
        project: c.project.clone(),
        region: c.region.clone(),
        usable: h.usable,
        last_error: h.last_error,
        calls_in_flight: h.calls_in_flight,
        calls: h.calls,
        failures: h.failures,
    }
}
