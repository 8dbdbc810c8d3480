//! Local health (issue 4, esc-facts "CLI and health"): what `GET
//! /esc/health` on :8060, `escadm health` and `health.sh` report. Codes in
//! the 2000s mean the service is provided (2010: provided, but the peer is
//! not healthy or not connected); other codes mean it is not.
//!
//! | code | meaning |
//! |---|---|
//! | 2000 | services running |
//! | 2010 | services running; the other node is not healthy or not in sync |
//! | 5010 | the store does not accept writes |
//! | 5020 | the data volume is (almost) full |
//! | 5030 | the northbound API does not answer |
//!
//! `stage` is `INIT` until the node has a role and, with a `[vim]`
//! configured, the VIM has answered (the `vim` check); then `READY`. The
//! VIM never changes the code: its outage is no reason for a takeover.

use crate::shared::{unix_ms, Shared};
use esc_proto::status::{Check, HealthReport};
use esc_repl::Role;
use std::net::SocketAddr;
use std::time::Duration;

/// Free space below which the node reports itself unhealthy.
pub const DISK_FREE_BYTES_MIN: u64 = 64 << 20;
/// Deadline of each check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn store_writable(shared: &Shared) -> Check {
    let store = shared.store.clone();
    let r = tokio::time::timeout(
        CHECK_TIMEOUT,
        tokio::task::spawn_blocking(move || store.probe_write(unix_ms())),
    )
    .await;
    let (ok, detail) = match r {
        Ok(Ok(Ok(()))) => (true, "durable write accepted".to_string()),
        Ok(Ok(Err(e))) => (false, e.to_string()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    Check {
        name: "store".into(),
        ok,
        detail,
    }
}

fn disk_space(shared: &Shared) -> Check {
    match nix::sys::statvfs::statvfs(&shared.data_dir) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            Check {
                name: "disk".into(),
                ok: free >= DISK_FREE_BYTES_MIN,
                detail: format!("{} MiB free on the data volume", free >> 20),
            }
        }
        Err(e) => Check {
            name: "disk".into(),
            ok: false,
            detail: format!("statvfs {}: {e}", shared.data_dir.display()),
        },
    }
}

/// Whether the API's accept loop runs. Not a connection to the API: a
/// client holding every connection the API admits (or a SYN flood filling
/// its backlog) would then make a healthy node look dead and hand the VIP
/// over (issue 14; CVE-2021-1312 was ESC's health API falling to a SYN
/// flood). That the service answers is the owner's ping, checked before.
fn api_listens(shared: &Shared, api: SocketAddr) -> Check {
    // Every configured REST listener (plain, HTTPS) must accept.
    let ok = shared.northbound.api_listening.get();
    Check {
        name: "api".into(),
        ok,
        detail: if ok {
            format!("{api} accepts connections")
        } else {
            format!("{api} does not accept connections")
        },
    }
}

/// Whether the peer is connected and in sync (None: no peer configured),
/// as the owner task last published it.
pub fn peer_in_sync(shared: &Shared) -> Option<bool> {
    *shared.peer_in_sync.borrow()
}

/// Runs every check.
pub async fn report(shared: &Shared, api: SocketAddr, peer_in_sync: Option<bool>) -> HealthReport {
    let mut checks = vec![
        store_writable(shared).await,
        disk_space(shared),
        api_listens(shared, api),
    ];
    // The VIM sets the stage, not the code: a VIM outage is no reason for
    // a takeover (the other node reaches the same VIM).
    let vim_usable = shared.vim.as_ref().map(|c| {
        let h = c.health();
        let ok = h.usable == Some(true);
        checks.push(Check {
            name: "vim".into(),
            ok,
            detail: match (h.usable, h.last_error) {
                (Some(true), _) => format!("{} answers", c.connector().auth_url),
                (None, _) => format!("{} not reached yet", c.connector().auth_url),
                (Some(false), e) => e.unwrap_or_else(|| "not usable".into()),
            },
        });
        ok
    });
    let failed = |n: &str| checks.iter().any(|c| c.name == n && !c.ok);
    let role = shared.role.borrow().role;
    let (status_code, message) = if failed("store") {
        (
            5010,
            "ESC service is not running: the store does not accept writes".to_string(),
        )
    } else if failed("disk") {
        (
            5020,
            "ESC service is not running: the data volume is full".to_string(),
        )
    } else if failed("api") {
        (
            5030,
            "ESC service is not running: the API does not answer".to_string(),
        )
    } else if peer_in_sync == Some(false) {
        (
            2010,
            "ESC services are running. One node in the cluster is not healthy or not in sync"
                .into(),
        )
    } else {
        (2000, "ESC services are running".to_string())
    };
    // esc-facts: INIT until the VIM connector works, then READY.
    let stage = if (role == Role::Primary || role == Role::Standby) && vim_usable != Some(false) {
        "READY"
    } else {
        "INIT"
    };
    HealthReport {
        status_code,
        message,
        stage: stage.into(),
        checks,
    }
}
