//! Counters of refused input and link events, shown by `escadm status --v`.
//! Bad input is counted and dropped, never a panic (style principle 5).

use esc_proto::status::Counters as CountersSnapshot;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters; cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Counters {
    pub frames_truncated: AtomicU64,
    pub frames_checksum: AtomicU64,
    pub frames_mac: AtomicU64,
    pub frames_malformed: AtomicU64,
    pub frames_bad_header: AtomicU64,
    pub frames_too_large: AtomicU64,
    pub frames_unexpected: AtomicU64,
    pub auth_failures: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Connections closed unanswered: too many handshakes in progress (in
    /// all, or from their source address).
    pub handshakes_refused: AtomicU64,
    pub connections_refused_not_primary: AtomicU64,
    /// A peer's dial held while this node, handed over to, promoted.
    pub dials_held_for_takeover: AtomicU64,
    pub peer_connections: AtomicU64,
    pub recovery_entries: AtomicU64,
    pub writes_committed: AtomicU64,
    pub writes_refused: AtomicU64,
    pub store_errors: AtomicU64,
    /// The REST API's listener (`northbound::conn`).
    pub api_conns: ConnCounters,
    /// The health API's listener.
    pub health_conns: ConnCounters,
    /// API requests with wrong credentials (`northbound::auth`).
    pub login_failures: AtomicU64,
    /// Logins held back or refused because their source failed too often.
    pub logins_throttled: AtomicU64,
    /// Writes answered 429: their user spent its budget.
    pub writes_over_budget: AtomicU64,
}

/// One northbound listener's connections (issue 14).
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub accepted: AtomicU64,
    /// Closed at once: the listener held `connections_max`.
    pub refused_full: AtomicU64,
    /// Closed at once: the source address held its share.
    pub refused_source: AtomicU64,
    /// Closed because no request header came within the deadline.
    pub header_timeouts: AtomicU64,
    /// Failed accepts (out of descriptors, aborted connections).
    pub accept_errors: AtomicU64,
    /// TLS handshakes that failed or did not finish within the deadline.
    pub tls_failures: AtomicU64,
}

impl ConnCounters {
    fn snapshot(&self) -> esc_proto::status::ConnCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        esc_proto::status::ConnCounters {
            accepted: g(&self.accepted),
            refused_full: g(&self.refused_full),
            refused_source: g(&self.refused_source),
            header_timeouts: g(&self.header_timeouts),
            accept_errors: g(&self.accept_errors),
            tls_failures: g(&self.tls_failures),
        }
    }
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter for a dropped frame, by [`esc_wire::FrameError::reason`].
    pub fn frame_dropped(&self, reason: &str) {
        let c = match reason {
            "truncated" => &self.frames_truncated,
            "checksum" => &self.frames_checksum,
            "mac" => &self.frames_mac,
            "malformed" => &self.frames_malformed,
            "bad_header" => &self.frames_bad_header,
            "too_large" => &self.frames_too_large,
            _ => &self.frames_unexpected,
        };
        Self::bump(c);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            frames_truncated: g(&self.frames_truncated),
            frames_checksum: g(&self.frames_checksum),
            frames_mac: g(&self.frames_mac),
            frames_malformed: g(&self.frames_malformed),
            frames_bad_header: g(&self.frames_bad_header),
            frames_too_large: g(&self.frames_too_large),
            frames_unexpected: g(&self.frames_unexpected),
            auth_failures: g(&self.auth_failures),
            handshake_failures: g(&self.handshake_failures),
            handshakes_refused: g(&self.handshakes_refused),
            connections_refused_not_primary: g(&self.connections_refused_not_primary),
            dials_held_for_takeover: g(&self.dials_held_for_takeover),
            peer_connections: g(&self.peer_connections),
            recovery_entries: g(&self.recovery_entries),
            writes_committed: g(&self.writes_committed),
            writes_refused: g(&self.writes_refused),
            store_errors: g(&self.store_errors),
            api_connections: self.api_conns.snapshot(),
            health_connections: self.health_conns.snapshot(),
            login_failures: g(&self.login_failures),
            logins_throttled: g(&self.logins_throttled),
            writes_over_budget: g(&self.writes_over_budget),
        }
    }
}
