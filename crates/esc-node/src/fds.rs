//! The process's file descriptors (issue 14): the open-file limit raised at
//! start, and the pause of an accept loop that ran out of descriptors. The
//! budget that keeps the northbound's connections under the limit is
//! `northbound::conn::fd_budget`.

use std::time::Duration;
use tracing::warn;

/// How long an accept loop waits after an error (out of descriptors)
/// before accepting again: the error would repeat at once otherwise.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Raises the soft limit on open files to the hard limit (Linux's default
/// soft limit, 1,024, is far below what the connection caps assume);
/// returns the limit in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            warn!("cannot read the open-file limit: {e}");
            1_024
        }
    }
}
