//! Structured logs in `$ESC_LOG_DIR` (architecture section 7):
//! `escmanager.log` for the service, `escadm.log` for HA and admin actions
//! (targets under `esc::ha` and `esc::admin`). Lines are JSON objects, one
//! per event, with the span fields (`tid` for northbound requests).

use std::path::Path;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Target of HA events (role changes, replication link, epochs).
pub const HA: &str = "esc::ha";
/// Target of admin actions (escadm commands).
pub const ADMIN: &str = "esc::admin";

fn is_ha(target: &str) -> bool {
    target.starts_with(HA) || target.starts_with(ADMIN)
}

/// Keeps the background log writers alive; drop it last.
pub struct LogGuard {
    _guards: Vec<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber: two files plus human-readable stderr.
pub fn init(log_dir: &Path) -> crate::Result<LogGuard> {
    std::fs::create_dir_all(log_dir).map_err(|e| {
        crate::Error::io(
            format!("cannot create log directory {}", log_dir.display()),
            e,
        )
    })?;
    let (manager, g1) =
        tracing_appender::non_blocking(tracing_appender::rolling::never(log_dir, "escmanager.log"));
    let (adm, g2) =
        tracing_appender::non_blocking(tracing_appender::rolling::never(log_dir, "escadm.log"));
    let level = || EnvFilter::try_from_env("ESC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(manager)
                .with_filter(filter_fn(|m| !is_ha(m.target())))
                .with_filter(level()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(adm)
                .with_filter(filter_fn(|m| is_ha(m.target())))
                .with_filter(level()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(level()),
        )
        .try_init()
        .map_err(|e| crate::Error::Logging(e.to_string()))?;
    Ok(LogGuard {
        _guards: vec![g1, g2],
    })
}
