//! [`NodeStatus`]: what `escadm status` shows, every part typed. The node
//! builds it from its cores' own status types; this crate is the stable
//! contract, so the CLI needs none of the node's crates.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

/// Everything `escadm status [--v] [--json]` shows of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_name: String,
    /// The replication core's role (the role authority's is `ha.authority`).
    pub role: ReplRole,
    pub epoch: u64,
    /// The replication peer, if one is configured.
    pub peer_address: Option<SocketAddr>,
    pub replication: ReplicationStatus,
    pub store: StoreStatus,
    /// With `--v`: the applied state's size and digest.
    pub state: Option<StateSummary>,
    pub counters: Counters,
    pub last_transition: Option<Transition>,
    /// What crash recovery cut from the log at open.
    pub recovery_note: Option<String>,
    pub ha: HaStatus,
    pub health: Option<HealthReport>,
    /// The VIM connector, if one is configured (never its password).
    #[serde(default)]
    pub vim: Option<VimStatus>,
    /// The monitor, if a VIM connector is configured.
    #[serde(default)]
    pub monitor: Option<MonitorStatus>,
    /// The VIM sweeper, while it runs on this node (on the primary).
    #[serde(default)]
    pub sweep: Option<SweepStatus>,
}

/// The periodic reconciliation with the VIM (`vim.sweep_interval_ms`): its
/// last pass, and what it found there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepStatus {
    pub interval_ms: u64,
    pub passes: u64,
    pub last_pass_ago_ms: Option<u64>,
    /// How long the last pass's listing and reads took.
    #[serde(default)]
    pub last_pass_took_ms: Option<u64>,
    /// The last listing: its servers, and how many a VM held, belonged to
    /// a deployment with an operation in progress, were stray (deleted once
    /// held long enough) or orphan (a deployment unknown here: left alone).
    pub listed: u64,
    pub held: u64,
    pub busy: u64,
    pub strays: u64,
    pub orphans: u64,
    /// Some orphans' names, for the operator to look at.
    pub orphan_names: Vec<String>,
    /// Strays deleted while this node led.
    pub removed: u64,
    pub last_error: Option<String>,
}

/// The monitor of this node (it keeps its table on both roles and probes
/// while leading).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    /// Probing now (the node leads and is not in maintenance).
    pub probing: bool,
    /// Why not, when it does not.
    pub paused: Option<String>,
    pub vms_watched: u64,
    /// Probes sent over the last second.
    pub probes_per_s: u64,
    pub probes_sent: u64,
    pub probes_in_flight: u64,
    /// Probes sent more than a second after their slot, and the most late.
    pub probes_late: u64,
    pub lateness_ms_max: u64,
}

/// The VIM manager: where it points and what it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VimStatus {
    pub auth_url: String,
    pub user: String,
    pub project: String,
    pub region: Option<String>,
    /// The last call worked (None: none made yet).
    pub usable: Option<bool>,
    pub last_error: Option<String>,
    pub calls_in_flight: u64,
    pub calls: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplRole {
    Primary,
    Standby,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// `sync` or `async`.
    pub mode: String,
    pub last_index: u64,
    pub durable_index: u64,
    pub commit_index: u64,
    pub snapshot_index: u64,
    pub pending_writes: u64,
    /// Primary: the follower. Standby: the link to the primary.
    pub peer: PeerStatus,
    /// Standby: why `escadm ha promote` would be refused (none: safe).
    pub promotion_blocker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub connected: bool,
    pub phase: String,
    pub match_index: u64,
    pub in_sync: bool,
    pub lag_entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub epoch: u64,
    pub last_index: u64,
    pub last_epoch: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub snapshot_epoch: u64,
}

/// The applied state, summarised in O(1) (the digest is kept as entries
/// apply; the counts are replicated counters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    pub applied_index: u64,
    pub digest: String,
    pub deployments: u64,
    pub events: u64,
}

/// Refused input and link events (style principle 5: counted, not fatal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub frames_truncated: u64,
    pub frames_checksum: u64,
    pub frames_mac: u64,
    pub frames_malformed: u64,
    pub frames_bad_header: u64,
    pub frames_too_large: u64,
    pub frames_unexpected: u64,
    pub auth_failures: u64,
    pub handshake_failures: u64,
    /// Connections closed unanswered: too many handshakes in progress.
    pub handshakes_refused: u64,
    pub connections_refused_not_primary: u64,
    /// A peer's dial held while this node, handed over to, promoted.
    pub dials_held_for_takeover: u64,
    pub peer_connections: u64,
    pub recovery_entries: u64,
    pub writes_committed: u64,
    pub writes_refused: u64,
    pub store_errors: u64,
    /// The REST API's connections (issue 14).
    #[serde(default)]
    pub api_connections: ConnCounters,
    /// The health API's connections.
    #[serde(default)]
    pub health_connections: ConnCounters,
    /// API requests with wrong credentials (never with the password).
    #[serde(default)]
    pub login_failures: u64,
    /// Logins delayed or refused: their source address failed too often.
    #[serde(default)]
    pub logins_throttled: u64,
    /// Writes answered 429: their user was past its budget.
    #[serde(default)]
    pub writes_over_budget: u64,
}

/// One northbound listener's connections: accepted, and closed unanswered
/// because the listener or the source address held its cap, because no
/// header came within the deadline, or because an accept failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnCounters {
    pub accepted: u64,
    pub refused_full: u64,
    pub refused_source: u64,
    pub header_timeouts: u64,
    pub accept_errors: u64,
    #[serde(default)]
    pub tls_failures: u64,
}

/// The last role change of the replication core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_unix_ms: u64,
    pub role: ReplRole,
    pub epoch: u64,
    pub reason: String,
}

/// The HA agent: role authority, VRRP speaker, witness client, health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// None on a node without a peer.
    pub authority: Option<AuthorityStatus>,
    pub vrrp: Option<VrrpStatus>,
    /// The witness's address (none: two-node mode).
    pub witness: Option<String>,
    pub health_failures: u32,
    pub last_health_error: Option<String>,
}

/// The role authority's word on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HaRole {
    Init,
    Standby,
    Primary,
    Fault,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityStatus {
    pub role: HaRole,
    /// The word in `$ESC_HOME/keepalived_state` (MASTER, BACKUP, FAULT, STOP).
    pub state_word: String,
    pub reason: String,
    pub since_ms: u64,
    /// `witness` or `two-node`.
    pub mode: String,
    /// Why local health fails (none: healthy).
    pub health_error: Option<String>,
    pub vip: bool,
    pub admission: bool,
    pub vrrp_priority: Option<u8>,
    pub lease_left_ms: Option<u64>,
    pub standby_marked_outdated: bool,
    pub switchover_in_progress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    /// `Initialize`, `Backup` or `Master` (RFC 5798 section 6.4).
    pub state: String,
    pub vrid: u8,
    pub priority: u8,
    pub version: u8,
    pub vip: String,
    pub interface: String,
    pub master: Option<Ipv4Addr>,
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub dropped: u64,
}

/// One health check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The ESC-style health report (esc-facts "CLI and health").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub status_code: u16,
    pub message: String,
    /// `INIT` (only configuration accepted) or `READY`.
    pub stage: String,
    pub checks: Vec<Check>,
}

impl HealthReport {
    /// The service is provided (a 2000-series code).
    pub fn healthy(&self) -> bool {
        (2000..3000).contains(&self.status_code)
    }
}

/// One northbound transaction in progress (`escadm ip_trans`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub operation: String,
    pub since_unix_ms: u64,
}

/// Transactions in progress, by transaction id.
pub type InFlightMap = BTreeMap<String, InFlight>;

impl NodeStatus {
    /// The role an operator means: the authority's in a pair, else the
    /// replication core's.
    pub fn role_word(&self) -> &'static str {
        match self.ha.authority.as_ref().map(|a| a.role) {
            Some(HaRole::Primary) => "Primary",
            Some(HaRole::Standby) => "Standby",
            Some(HaRole::Fault) => "Fault",
            Some(HaRole::Init) => "Init",
            None => match self.role {
                ReplRole::Primary => "Primary",
                ReplRole::Standby => "Standby",
            },
        }
    }

    /// The node serves its role: not FAULT, and healthy if health is known.
    pub fn healthy(&self) -> bool {
        let fault = self
            .ha
            .authority
            .as_ref()
            .is_some_and(|a| a.role == HaRole::Fault);
        !fault && self.health.as_ref().is_none_or(HealthReport::healthy)
    }

    /// The one-line summary ESC operators know: `0 ESC status=0 ESC Primary
    /// Healthy`, or why not.
    pub fn summary(&self) -> String {
        let word = self.role_word();
        if let Some(a) = self
            .ha
            .authority
            .as_ref()
            .filter(|a| a.role == HaRole::Fault)
        {
            return format!(
                "1 ESC status=1 ESC Fault: {}",
                a.health_error.as_deref().unwrap_or("local health failed")
            );
        }
        match &self.health {
            Some(h) if !h.healthy() => format!(
                "1 ESC status=1 ESC {word} Unhealthy: {} {}",
                h.status_code, h.message
            ),
            _ => format!("0 ESC status=0 ESC {word} Healthy"),
        }
    }
}
