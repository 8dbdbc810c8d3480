//! Typed, strict configuration of an `escd` node: `$ESC_HOME/esc.toml`.
//!
//! Owns the file format, defaults, and validation across fields
//! (architecture section 7, style principle 6). Every field carries its unit
//! in its name; unknown fields are refused; [`Config::validate`] says which
//! field is wrong and what to do, so a node never starts half-configured.

pub mod ha_set;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default node home when neither `--home` nor `$ESC_HOME` is given.
pub const DEFAULT_HOME: &str = "/opt/esc";
/// Default log directory when `$ESC_LOG_DIR` is not set.
pub const DEFAULT_LOG_DIR: &str = "/var/log/esc";
/// The configuration file's name inside the node home.
pub const CONFIG_FILE: &str = "esc.toml";
/// Shortest accepted replication secret: 128 bits of entropy as hex.
pub const SECRET_LEN_MIN: usize = 32;

/// What went wrong while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// The whole `esc.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name, used in logs and by the peer (`esc-1`).
    pub node_name: String,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// VRRP and the virtual IP (absent: no VRRP speaker, no VIP).
    pub vrrp: Option<VrrpConfig>,
    #[serde(default)]
    pub witness: WitnessConfig,
    #[serde(default)]
    pub ha: HaConfig,
    #[serde(default)]
    pub debug: DebugConfig,
    /// The VIM connector (absent: the node manages no VIM; lifecycle
    /// operations wait).
    pub vim: Option<VimConfig>,
}

/// The VIM connector (issue 11): an OpenStack-compatible VIM, configured on
/// both nodes. The password is read from `password_file`, never written
/// here, never logged or shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VimConfig {
    /// Identity v3, e.g. `http://203.0.113.5:5000/identity/v3`.
    pub auth_url: String,
    pub user: String,
    /// A file holding the password (relative paths are under the node home).
    pub password_file: PathBuf,
    pub project: String,
    #[serde(default = "VimConfig::default_domain")]
    pub user_domain: String,
    #[serde(default = "VimConfig::default_domain")]
    pub project_domain: String,
    pub region: Option<String>,
    /// Deadline of each VIM call.
    #[serde(default = "VimConfig::default_timeout_ms")]
    pub call_timeout_ms: u64,
    /// VIM calls in flight at once.
    #[serde(default = "VimConfig::default_calls")]
    pub calls_in_flight_max: usize,
    /// How often a building server is looked at again.
    #[serde(default = "VimConfig::default_poll_ms")]
    pub poll_ms: u64,
    /// A create that got no answer is looked up again only after this: it
    /// must exceed the longest the VIM may hold a request (the lifecycle
    /// core's `create_doubt_ms`).
    #[serde(default = "VimConfig::default_create_doubt_ms")]
    pub create_doubt_ms: u64,
    /// How often the primary lists every server of the project to delete
    /// what this manager made and no record holds (a create that landed
    /// after its operation settled); 0: never. A server is deleted only
    /// once two listings at least `create_doubt_ms` apart both showed it
    /// so; one whose deployment is unknown is reported, never deleted.
    #[serde(default = "VimConfig::default_sweep_interval_ms")]
    pub sweep_interval_ms: u64,
}

impl VimConfig {
    fn default_domain() -> String {
        "Default".into()
    }
    fn default_timeout_ms() -> u64 {
        10_000
    }
    fn default_calls() -> usize {
        64
    }
    fn default_poll_ms() -> u64 {
        500
    }
    fn default_create_doubt_ms() -> u64 {
        30_000
    }
    fn default_sweep_interval_ms() -> u64 {
        60_000
    }

    /// The password, from its file (trimmed); an empty file is an error.
    pub fn load_password(&self, home: &Path) -> Result<String, ConfigError> {
        let path = Config::resolve(home, &self.password_file);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let p = text.trim();
        if p.is_empty() {
            return Err(ConfigError::Invalid {
                path,
                field: "vim.password_file",
                message: "the file is empty: write the VIM user's password into it".into(),
            });
        }
        Ok(p.to_string())
    }
}

/// Test and lab knobs; all off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Allow `escadm debug hang` (the lab's "internal application failure":
    /// the service stops answering while the HA agent lives). Never in
    /// production.
    pub allow_fault_injection: bool,
}

/// The witness (architecture section 4): on a node, where it is; on the
/// witness host (`escd --witness`), where it listens. Same shared secret as
/// replication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WitnessConfig {
    /// The witness's address (TCP, default port 7790); absent: two-node mode.
    pub address: Option<SocketAddr>,
    /// Where `escd --witness` listens.
    pub listen: SocketAddr,
    /// The primary's lease at the witness (the witness's setting counts):
    /// a silent failure of the primary costs about this.
    pub lease_ms: u64,
    /// How often the primary renews it.
    pub renew_interval_ms: u64,
}

impl Default for WitnessConfig {
    fn default() -> Self {
        Self {
            address: None,
            listen: "0.0.0.0:7790".parse().expect("static address"),
            // Six renewals per lease: a primary must miss five in a row
            // (250 ms of silence) before the standby can be granted
            // (issue 13; docs/architecture.md, "Timing at the defaults").
            lease_ms: 300,
            renew_interval_ms: 50,
        }
    }
}

/// The role authority's tuning (architecture section 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Take over automatically when the primary is lost (needs `[vrrp]` or
    /// a witness as failure detector; otherwise takeover is `escadm ha promote`).
    pub auto_takeover: bool,
    /// How often the HA agent checks the service (API, store, disk).
    pub health_interval_ms: u64,
    /// Consecutive failed checks before the node goes FAULT.
    pub health_failures_max: u32,
    /// The service (the task owning the store and replication) must answer
    /// the agent within this; one miss is a FAULT, since it already means
    /// this long without an answer (writes and fsyncs run elsewhere, so a
    /// slow disk does not delay the answer).
    pub service_timeout_ms: u64,
    /// How long `escadm ha switchover` waits for the standby to catch up.
    pub switchover_timeout_ms: u64,
    /// The HA agent's thread (VRRP, witness lease, health checks) runs
    /// under `SCHED_RR` at this priority, 1..=99, where the system allows
    /// it (root or `RLIMIT_RTPRIO`), so a busy or loaded machine cannot
    /// delay an advertisement or a renewal into a false takeover
    /// (keepalived's `vrrp_rt_priority`); 0: normal scheduling.
    pub rt_priority: u8,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            auto_takeover: true,
            health_interval_ms: 200,
            health_failures_max: 2,
            service_timeout_ms: 500,
            switchover_timeout_ms: 5_000,
            rt_priority: 10,
        }
    }
}

/// VRRP speaker and virtual IP (RFC 5798; the seed's `kad_*` options).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// Interface for VRRP and the VIP (`kad_vif`).
    pub interface: String,
    /// The virtual IP with its prefix length, e.g. `192.0.2.100/24` (`kad_vip`).
    pub vip: String,
    /// Virtual router id 1..=255 (`kad_vri`); default: the VIP's last byte.
    #[serde(default)]
    pub vrid: Option<u8>,
    /// Priority 1..=254 (255 is reserved for an address owner).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Advertisement interval: a multiple of 10 ms within 10..=40950 (v3),
    /// a multiple of 1000 ms within 1000..=255000 (v2). Absent: 50 ms for
    /// v3, 1 s for v2 (see [`VrrpConfig::advert_interval_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advert_interval_ms: Option<u32>,
    /// Preempt a lower-priority master (default off: failback is manual).
    #[serde(default)]
    pub preempt: bool,
    /// VRRP version, 3 (RFC 5798) or 2 (RFC 3768, no authentication).
    #[serde(default = "default_vrrp_version")]
    pub version: u8,
    /// Unicast source address (`kad_unicast_src_ip`); default: the
    /// interface's first IPv4 address.
    #[serde(default)]
    pub unicast_src_ip: Option<std::net::Ipv4Addr>,
    /// Unicast peers (`kad_unicast_peer`): when set, adverts go to them
    /// instead of 224.0.0.18, and adverts from anyone else are ignored.
    #[serde(default)]
    pub unicast_peers: Vec<std::net::Ipv4Addr>,
    /// Gratuitous ARPs sent when becoming master.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Spacing between those gratuitous ARPs.
    #[serde(default = "default_garp_interval_ms")]
    pub garp_interval_ms: u64,
    /// The same burst again this long after becoming master, while still
    /// holding the VIP (0: never). Just over Linux's neighbour `locktime`
    /// (1 s), so hosts that saw the VIP move less than a second before
    /// follow this move too (keepalived: `garp_master_delay`, 5 s).
    #[serde(default = "default_garp_repeat_ms")]
    pub garp_repeat_ms: u64,
}

fn default_priority() -> u8 {
    100
}
/// VRRPv3: 50 ms (centiseconds on the wire): Master_Down_Interval is then
/// about 180 ms at priority 100 (RFC 5798 section 6.1), inside the
/// half-second takeover of issue 13; keepalived's 1 s is
/// `advert_interval_ms = 1000`. VRRPv2 counts whole seconds (RFC 3768): 1 s.
fn default_advert_interval_ms(version: u8) -> u32 {
    if version == 2 {
        1_000
    } else {
        50
    }
}
fn default_vrrp_version() -> u8 {
    3
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval_ms() -> u64 {
    100
}
fn default_garp_repeat_ms() -> u64 {
    1_100
}

impl VrrpConfig {
    /// The advertisement interval: configured, or the version's default.
    pub fn advert_interval_ms(&self) -> u32 {
        self.advert_interval_ms
            .unwrap_or_else(|| default_advert_interval_ms(self.version))
    }

    /// Every field at its default, interface and VIP empty (to be set).
    pub fn defaults() -> VrrpConfig {
        VrrpConfig {
            interface: String::new(),
            vip: String::new(),
            vrid: None,
            priority: default_priority(),
            advert_interval_ms: None,
            preempt: false,
            version: default_vrrp_version(),
            unicast_src_ip: None,
            unicast_peers: Vec::new(),
            garp_count: default_garp_count(),
            garp_interval_ms: default_garp_interval_ms(),
            garp_repeat_ms: default_garp_repeat_ms(),
        }
    }

    /// The VIP and its prefix length.
    pub fn vip_net(&self) -> Result<(std::net::Ipv4Addr, u8), String> {
        let (ip, len) = self
            .vip
            .split_once('/')
            .ok_or_else(|| format!("{:?} needs a prefix length, e.g. 192.0.2.100/24", self.vip))?;
        let ip: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|e| format!("{ip:?} is not an IPv4 address: {e}"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("prefix length {len:?} must be 0..=32"))?;
        Ok((ip, len))
    }

    /// The VRID: configured, or the VIP's last byte (the seed's default).
    pub fn vrid(&self) -> u8 {
        self.vrid
            .unwrap_or_else(|| self.vip_net().map(|(ip, _)| ip.octets()[3]).unwrap_or(0))
    }

    /// The advertisement interval in centiseconds.
    pub fn advert_interval_cs(&self) -> u16 {
        (self.advert_interval_ms() / 10) as u16
    }

    /// Checks the rules that need no host access.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            return Err((
                "vrrp.interface",
                "must be an interface name of 1 to 15 characters".into(),
            ));
        }
        let (ip, len) = self.vip_net().map_err(|m| ("vrrp.vip", m))?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
            return Err(("vrrp.vip", format!("{ip} is not a usable host address")));
        }
        if len < 31 {
            let host_bits = u32::from(ip) & (u32::MAX >> len);
            if host_bits == 0 || host_bits == (u32::MAX >> len) {
                return Err((
                    "vrrp.vip",
                    format!(
                        "{ip} is the network or broadcast address of /{len}: use a host address"
                    ),
                ));
            }
        }
        if self.vrid() == 0 {
            return Err((
                "vrrp.vrid",
                "must be 1..=255 (set it: the VIP ends in .0)".into(),
            ));
        }
        if !(1..=254).contains(&self.priority) {
            return Err((
                "vrrp.priority",
                format!("{} is outside 1..=254", self.priority),
            ));
        }
        match self.version {
            3 => {
                if !self.advert_interval_ms().is_multiple_of(10)
                    || !(10..=40_950).contains(&self.advert_interval_ms())
                {
                    return Err((
                        "vrrp.advert_interval_ms",
                        format!(
                            "{}: VRRPv3 needs a multiple of 10 within 10..=40950",
                            self.advert_interval_ms()
                        ),
                    ));
                }
            }
            2 => {
                if !self.advert_interval_ms().is_multiple_of(1000)
                    || !(1_000..=255_000).contains(&self.advert_interval_ms())
                {
                    return Err((
                        "vrrp.advert_interval_ms",
                        format!(
                            "{}: VRRPv2 needs whole seconds within 1000..=255000",
                            self.advert_interval_ms()
                        ),
                    ));
                }
            }
            v => {
                return Err((
                    "vrrp.version",
                    format!("{v}: use 3 (RFC 5798) or 2 (RFC 3768)"),
                ))
            }
        }
        if self.unicast_peers.contains(&ip) || self.unicast_src_ip == Some(ip) {
            return Err((
                "vrrp.unicast_peers",
                "the VIP cannot be a node address".into(),
            ));
        }
        if !(1..=100).contains(&self.garp_count) || !(1..=10_000).contains(&self.garp_interval_ms) {
            return Err((
                "vrrp.garp_count",
                "garp_count must be 1..=100 and garp_interval_ms 1..=10000".into(),
            ));
        }
        if self.garp_repeat_ms > 60_000 {
            return Err((
                "vrrp.garp_repeat_ms",
                "garp_repeat_ms must be 0 (off) to 60000".into(),
            ));
        }
        Ok(())
    }

    /// Checks what needs the host: the interface exists.
    pub fn check_host(&self) -> Result<(), (&'static str, String)> {
        let sys = std::path::Path::new("/sys/class/net").join(&self.interface);
        if !sys.exists() {
            return Err((
                "vrrp.interface",
                format!(
                    "no interface {:?} on this host (see `ip link`)",
                    self.interface
                ),
            ));
        }
        Ok(())
    }
}

/// Replication between the two nodes (architecture section 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Address this node accepts replication connections on (TCP, default port 7789).
    pub listen: SocketAddr,
    /// The peer's replication address; a standby dials it. Empty: standalone node.
    pub peer: Option<SocketAddr>,
    /// `sync` (a write is acknowledged once fsynced on both nodes) or `async`.
    pub mode: ReplicationMode,
    /// Role at start-up until an operator or the role authority changes it.
    pub initial_role: InitialRole,
    /// Shared secret authenticating the link (hex or any string of at least
    /// 32 characters). Either this or `secret_file`.
    pub secret: Option<String>,
    /// File holding the shared secret (relative paths are under the home).
    pub secret_file: Option<PathBuf>,
    /// Async mode: the most entries the standby may lag before writes wait for it.
    pub async_lag_entries_max: u64,
    /// How often the primary sends a heartbeat when idle.
    pub heartbeat_interval_ms: u64,
    /// A peer silent for this long is disconnected (the primary then commits alone).
    pub peer_timeout_ms: u64,
    /// Most entries in one replication frame.
    pub batch_entries_max: usize,
}

/// Sync or async replication.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    Sync,
    Async,
}

/// Role a node takes when it starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitialRole {
    Primary,
    Standby,
}

/// The durable store (architecture section 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Data directory (relative paths are under the home).
    pub data_dir: PathBuf,
    /// Take a snapshot (truncate the log) once it holds this many applied entries.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log after a snapshot, for a peer's catch-up.
    pub log_retain_entries: u64,
    /// Most client writes sharing one fsync (group commit).
    pub group_commit_entries_max: usize,
}

/// The northbound REST API (architecture section 7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// REST listen address (default port 8080).
    pub listen: SocketAddr,
    /// Health API listen address, `GET /esc/health` (default port 8060).
    pub health_listen: SocketAddr,
    /// User name for HTTP basic authentication.
    pub user: String,
    /// Password; when absent one is generated at first start and written to
    /// `$ESC_HOME/api_password` (mode 0600). There is no default password.
    pub password: Option<String>,
    /// Largest accepted request body.
    pub body_bytes_max: usize,
    /// Most concurrent requests served; more wait.
    pub concurrency_max: usize,
    /// Most open connections to the REST API at once (issue 14); more are
    /// closed as soon as they are accepted and counted. Lowered at start to
    /// fit the process's file-descriptor limit with room for the store, the
    /// replication link, the witness and the admin socket.
    pub connections_max: usize,
    /// Most open connections to the REST API and to the health API from one
    /// source address, each; more are closed at once and counted.
    pub connections_per_source_max: usize,
    /// A request's header must arrive within this time of the connection
    /// opening or of the previous answer on it (a header-read deadline and
    /// a keep-alive idle timeout in one), and a request body may pause no
    /// longer than this between its parts.
    pub header_timeout_ms: u64,
    /// Writes (any method but GET) one user may make per second, with as
    /// many in reserve; past it the API answers `429` with `Retry-After`.
    pub writes_per_user_per_s: u32,
    /// How long each login from a source waits before it is checked once
    /// the source failed 9 times within a minute (the tenth waits): a
    /// guesser's pace. 0 turns the delay off (a test's API fuzzer, which
    /// fails logins on purpose).
    pub login_delay_ms: u64,
    /// The server certificate chain (PEM, leaf first) for HTTPS; with
    /// `tls_key_file`, the REST API is also served on `https_listen` and
    /// the health API on `health_https_listen`. Relative paths are under
    /// the node home. Reread by `escadm reload`.
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM; mode 0600 or stricter).
    pub tls_key_file: Option<PathBuf>,
    /// HTTPS REST listen address (ESC's 8443).
    pub https_listen: SocketAddr,
    /// HTTPS health API listen address.
    pub health_https_listen: SocketAddr,
    /// Serve plain HTTP on `listen` and `health_listen` too; `false` needs
    /// the TLS files (HTTPS only).
    pub plain_http: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7789".parse().expect("static address"),
            peer: None,
            mode: ReplicationMode::Sync,
            initial_role: InitialRole::Standby,
            secret: None,
            secret_file: None,
            async_lag_entries_max: 10_000,
            // Half-second takeover (issue 13): five heartbeats per timeout
            // (a busy link counts every Append as one).
            heartbeat_interval_ms: 50,
            peer_timeout_ms: 250,
            batch_entries_max: 1_024,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            snapshot_every_entries: 100_000,
            log_retain_entries: 10_000,
            group_commit_entries_max: 1_024,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("static address"),
            health_listen: "0.0.0.0:8060".parse().expect("static address"),
            user: "admin".into(),
            password: None,
            body_bytes_max: 1 << 20,
            concurrency_max: 1_024,
            connections_max: 4_096,
            connections_per_source_max: 256,
            header_timeout_ms: 10_000,
            // Well above what a VNF manager's clients send (deployments
            // take seconds each), well below the node's capacity.
            writes_per_user_per_s: 1_000,
            login_delay_ms: 3_000,
            tls_cert_file: None,
            tls_key_file: None,
            https_listen: "0.0.0.0:8443".parse().expect("static address"),
            health_https_listen: "0.0.0.0:8061".parse().expect("static address"),
            plain_http: true,
        }
    }
}

impl Config {
    /// Reads and validates `home/esc.toml`.
    pub fn load(home: &Path) -> Result<Config, ConfigError> {
        let path = home.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the rules across fields; the message names the field and the fix.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if let Some(v) = &self.vim {
            if !(v.auth_url.starts_with("http://") || v.auth_url.starts_with("https://")) {
                return Err(bad(
                    "vim.auth_url",
                    "must be an http:// or https:// URL".into(),
                ));
            }
            if v.user.is_empty() || v.project.is_empty() {
                return Err(bad(
                    "vim.user",
                    "vim.user and vim.project must not be empty".into(),
                ));
            }
            if !(100..=120_000).contains(&v.call_timeout_ms) {
                return Err(bad("vim.call_timeout_ms", "must be 100 to 120000".into()));
            }
            if !(1..=1024).contains(&v.calls_in_flight_max) {
                return Err(bad("vim.calls_in_flight_max", "must be 1 to 1024".into()));
            }
            if !(10..=60_000).contains(&v.poll_ms) {
                return Err(bad("vim.poll_ms", "must be 10 to 60000".into()));
            }
            if v.create_doubt_ms < v.call_timeout_ms || v.create_doubt_ms > 3_600_000 {
                return Err(bad(
                    "vim.create_doubt_ms",
                    "must be at least vim.call_timeout_ms and at most 3600000".into(),
                ));
            }
            if v.sweep_interval_ms != 0 && !(1_000..=86_400_000).contains(&v.sweep_interval_ms) {
                return Err(bad(
                    "vim.sweep_interval_ms",
                    "must be 0 (no sweep) or 1000 to 86400000".into(),
                ));
            }
        }
        if self.node_name.is_empty()
            || self.node_name.len() > 64
            || !self
                .node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad(
                "node_name",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let r = &self.replication;
        match (&r.secret, &r.secret_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "replication.secret",
                    "set either `secret` or `secret_file`, not both".into(),
                ))
            }
            (None, None) if r.peer.is_some() => {
                return Err(bad(
                    "replication.secret",
                    "a peer is configured but no shared secret: set `secret` or `secret_file` \
                     (e.g. `openssl rand -hex 32`), the same on both nodes"
                        .into(),
                ))
            }
            (Some(s), None) if s.len() < SECRET_LEN_MIN => {
                return Err(bad(
                    "replication.secret",
                    format!(
                        "too short ({} characters): use at least {SECRET_LEN_MIN}",
                        s.len()
                    ),
                ))
            }
            _ => {}
        }
        if let Some(peer) = r.peer {
            if peer == r.listen {
                return Err(bad(
                    "replication.peer",
                    "is this node's own `listen` address: give the other node's".into(),
                ));
            }
        }
        let w = &self.witness;
        if w.address.is_some() && r.peer.is_none() {
            return Err(bad(
                "witness.address",
                "a witness arbitrates a pair: set `replication.peer` too".into(),
            ));
        }
        if !(100..=60_000).contains(&w.lease_ms)
            || w.renew_interval_ms * 3 > w.lease_ms
            || w.renew_interval_ms == 0
        {
            return Err(bad(
                "witness.lease_ms",
                format!(
                    "lease_ms ({}) must be within 100..=60000 and at least 3 x renew_interval_ms ({})",
                    w.lease_ms, w.renew_interval_ms
                ),
            ));
        }
        if w.address.is_some() && 3 * w.renew_interval_ms >= self.replication.peer_timeout_ms {
            // A primary that stops hearing the witness must know it before
            // it finds its standby gone, or it may ask for an outdated mark
            // it never learns of (architecture, "Witness mode").
            return Err(bad(
                "witness.renew_interval_ms",
                format!(
                    "3 x renew_interval_ms ({}) must stay below replication.peer_timeout_ms ({}): lower the renew interval or raise the timeout",
                    w.renew_interval_ms, self.replication.peer_timeout_ms
                ),
            ));
        }
        let h = &self.ha;
        if !(50..=60_000).contains(&h.health_interval_ms) || h.health_failures_max == 0 {
            return Err(bad(
                "ha.health_interval_ms",
                "health_interval_ms must be within 50..=60000 and health_failures_max at least 1"
                    .into(),
            ));
        }
        if !(100..=60_000).contains(&h.service_timeout_ms) {
            return Err(bad(
                "ha.service_timeout_ms",
                format!(
                    "{} must be within 100..=60000 (default 500)",
                    h.service_timeout_ms
                ),
            ));
        }
        if h.rt_priority > 99 {
            return Err(bad(
                "ha.rt_priority",
                format!(
                    "{} must be within 0..=99 (0: normal scheduling; default 10)",
                    h.rt_priority
                ),
            ));
        }
        if !(100..=600_000).contains(&h.switchover_timeout_ms) {
            return Err(bad(
                "ha.switchover_timeout_ms",
                "must be within 100..=600000".into(),
            ));
        }
        if !(10..=10_000).contains(&r.heartbeat_interval_ms) {
            return Err(bad(
                "replication.heartbeat_interval_ms",
                format!("{} is outside 10..=10000", r.heartbeat_interval_ms),
            ));
        }
        if r.peer_timeout_ms < 3 * r.heartbeat_interval_ms {
            return Err(bad(
                "replication.peer_timeout_ms",
                format!(
                    "{} must be at least 3 x heartbeat_interval_ms ({})",
                    r.peer_timeout_ms,
                    3 * r.heartbeat_interval_ms
                ),
            ));
        }
        if r.async_lag_entries_max == 0 {
            return Err(bad(
                "replication.async_lag_entries_max",
                "must be at least 1".into(),
            ));
        }
        if !(1..=65_536).contains(&r.batch_entries_max) {
            return Err(bad(
                "replication.batch_entries_max",
                "must be within 1..=65536".into(),
            ));
        }
        let s = &self.store;
        if s.snapshot_every_entries < 2 {
            return Err(bad(
                "store.snapshot_every_entries",
                "must be at least 2".into(),
            ));
        }
        if s.log_retain_entries >= s.snapshot_every_entries {
            return Err(bad(
                "store.log_retain_entries",
                format!(
                    "{} must be below store.snapshot_every_entries ({})",
                    s.log_retain_entries, s.snapshot_every_entries
                ),
            ));
        }
        if !(1..=65_536).contains(&s.group_commit_entries_max) {
            return Err(bad(
                "store.group_commit_entries_max",
                "must be within 1..=65536".into(),
            ));
        }
        let a = &self.api;
        if a.user.is_empty() || a.user.contains(':') {
            return Err(bad(
                "api.user",
                "must be non-empty and contain no ':'".into(),
            ));
        }
        if let Some(p) = &a.password {
            if p.len() < 12 {
                return Err(bad(
                    "api.password",
                    "too short: use at least 12 characters, or remove it to have one generated"
                        .into(),
                ));
            }
        }
        match (&a.tls_cert_file, &a.tls_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(bad(
                    "api.tls_cert_file",
                    "and api.tls_key_file go together: set both for HTTPS, or neither".into(),
                ))
            }
            (None, None) if !a.plain_http => {
                return Err(bad(
                    "api.plain_http",
                    "false needs HTTPS: set api.tls_cert_file and api.tls_key_file".into(),
                ))
            }
            _ => {}
        }
        if a.tls_cert_file.is_some() {
            let mut taken = vec![
                ("api.listen", a.listen),
                ("api.health_listen", a.health_listen),
                ("replication.listen", r.listen),
            ];
            for (field, addr) in [
                ("api.https_listen", a.https_listen),
                ("api.health_https_listen", a.health_https_listen),
            ] {
                // The same port on the same or the wildcard address.
                let clash = |t: &SocketAddr| {
                    t.port() == addr.port()
                        && (t.ip() == addr.ip()
                            || t.ip().is_unspecified()
                            || addr.ip().is_unspecified())
                };
                if let Some((other, _)) = taken.iter().find(|(_, t)| clash(t)) {
                    return Err(bad(field, format!("is the same address as {other}")));
                }
                taken.push((field, addr));
            }
        }
        if !(1..=1_000_000).contains(&a.writes_per_user_per_s) {
            return Err(bad(
                "api.writes_per_user_per_s",
                "must be within 1..=1000000".into(),
            ));
        }
        if a.login_delay_ms > 60_000 {
            return Err(bad(
                "api.login_delay_ms",
                "must be at most 60000 (a minute)".into(),
            ));
        }
        if a.health_listen == a.listen || a.health_listen == r.listen {
            return Err(bad(
                "api.health_listen",
                "must differ from api.listen and replication.listen".into(),
            ));
        }
        if a.listen == r.listen {
            return Err(bad(
                "api.listen",
                "is the same address as replication.listen".into(),
            ));
        }
        if !(1024..=(64 << 20)).contains(&a.body_bytes_max) {
            return Err(bad(
                "api.body_bytes_max",
                "must be within 1024..=67108864".into(),
            ));
        }
        if let Some(v) = &self.vrrp {
            v.validate()
                .map_err(|(field, message)| bad(field, message))?;
        }
        if !(1..=100_000).contains(&a.concurrency_max) {
            return Err(bad(
                "api.concurrency_max",
                "must be within 1..=100000".into(),
            ));
        }
        if !(16..=1_000_000).contains(&a.connections_max) {
            return Err(bad(
                "api.connections_max",
                "must be within 16..=1000000".into(),
            ));
        }
        if !(1..=a.connections_max).contains(&a.connections_per_source_max) {
            return Err(bad(
                "api.connections_per_source_max",
                format!(
                    "must be within 1..=api.connections_max ({})",
                    a.connections_max
                ),
            ));
        }
        if !(100..=600_000).contains(&a.header_timeout_ms) {
            return Err(bad(
                "api.header_timeout_ms",
                "must be within 100..=600000 (ms)".into(),
            ));
        }
        Ok(())
    }

    /// Resolves a path from the config against the node home.
    pub fn resolve(home: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            home.join(p)
        }
    }

    /// The replication secret: inline, or read from `secret_file`.
    pub fn load_secret(&self, home: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
        let r = &self.replication;
        if let Some(s) = &r.secret {
            return Ok(Some(s.as_bytes().to_vec()));
        }
        let Some(file) = &r.secret_file else {
            return Ok(None);
        };
        let path = Self::resolve(home, file);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let secret = text.trim().as_bytes().to_vec();
        if secret.len() < SECRET_LEN_MIN {
            return Err(ConfigError::Invalid {
                path,
                field: "replication.secret_file",
                message: format!("secret too short: use at least {SECRET_LEN_MIN} characters"),
            });
        }
        Ok(Some(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_name = "esc-1"
[replication]
listen = "127.0.0.1:7789"
peer = "127.0.0.2:7789"
mode = "sync"
initial_role = "primary"
secret = "0123456789abcdef0123456789abcdef"
async_lag_entries_max = 100
heartbeat_interval_ms = 100
peer_timeout_ms = 1000
batch_entries_max = 512
[api]
listen = "127.0.0.1:8080"
user = "admin"
password = "a-long-enough-password"
body_bytes_max = 65536
concurrency_max = 64
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("esc.toml"))
    }

    #[test]
    fn good_config_parses_with_defaults_for_missing_sections() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.replication.mode, ReplicationMode::Sync);
        assert_eq!(c.store, StoreConfig::default());
    }

    #[test]
    fn unknown_field_is_refused_and_named() {
        let err = parse(&GOOD.replace("mode = \"sync\"", "mod = \"sync\"")).unwrap_err();
        assert!(err.to_string().contains("unknown field `mod`"), "{err}");
    }

    #[test]
    fn peer_without_secret_is_refused() {
        let text = GOOD.replace("secret = \"0123456789abcdef0123456789abcdef\"\n", "");
        let err = parse(&text).unwrap_err();
        assert!(err.to_string().contains("replication.secret"), "{err}");
    }

    #[test]
    fn short_secret_and_password_are_refused() {
        let err = parse(&GOOD.replace("0123456789abcdef0123456789abcdef", "short")).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        let err = parse(&GOOD.replace("a-long-enough-password", "pw")).unwrap_err();
        assert!(err.to_string().contains("api.password"), "{err}");
    }

    #[test]
    fn vrrp_section_is_validated() {
        let vrrp = "[vrrp]\ninterface = \"eth0\"\nvip = \"192.0.2.100/24\"\n";
        let c = parse(&format!("{GOOD}{vrrp}")).unwrap();
        let v = c.vrrp.unwrap();
        assert_eq!(
            (v.vrid(), v.priority, v.advert_interval_cs(), v.preempt),
            (100, 100, 5, false)
        );
        // VRRPv2 counts whole seconds: its default is 1 s.
        let v2 = parse(&format!("{GOOD}{vrrp}version = 2\n")).unwrap();
        assert_eq!(v2.vrrp.unwrap().advert_interval_ms(), 1_000);
        for (extra, field) in [
            ("priority = 255\n", "vrrp.priority"),
            ("advert_interval_ms = 15\n", "vrrp.advert_interval_ms"),
            (
                "version = 2\nadvert_interval_ms = 500\n",
                "vrrp.advert_interval_ms",
            ),
            ("version = 4\n", "vrrp.version"),
        ] {
            let err = parse(&format!("{GOOD}{vrrp}{extra}")).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        for vip in [
            "192.0.2.0/24",
            "192.0.2.255/24",
            "192.0.2.7",
            "224.0.0.18/32",
        ] {
            let text = format!("{GOOD}[vrrp]\ninterface = \"eth0\"\nvip = \"{vip}\"\n");
            let err = parse(&text).unwrap_err();
            assert!(err.to_string().contains("vrrp.vip"), "{vip}: {err}");
        }
    }

    #[test]
    fn connection_bounds_are_checked() {
        let a = parse(GOOD).unwrap().api;
        assert_eq!(
            (
                a.connections_max,
                a.connections_per_source_max,
                a.header_timeout_ms
            ),
            (4_096, 256, 10_000)
        );
        for (extra, field) in [
            ("connections_max = 0\n", "api.connections_max"),
            (
                "connections_max = 100\nconnections_per_source_max = 101\n",
                "api.connections_per_source_max",
            ),
            (
                "connections_per_source_max = 0\n",
                "api.connections_per_source_max",
            ),
            ("header_timeout_ms = 0\n", "api.header_timeout_ms"),
            ("writes_per_user_per_s = 0\n", "api.writes_per_user_per_s"),
            ("login_delay_ms = 60001\n", "api.login_delay_ms"),
            ("tls_cert_file = \"c.pem\"\n", "api.tls_cert_file"),
            ("tls_key_file = \"k.pem\"\n", "api.tls_cert_file"),
            ("plain_http = false\n", "api.plain_http"),
            (
                "tls_cert_file = \"c\"\ntls_key_file = \"k\"\nhttps_listen = \"0.0.0.0:8080\"\n",
                "api.https_listen",
            ),
        ] {
            let err = parse(&format!("{GOOD}{extra}")).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn the_vim_sweep_is_on_by_default_and_bounded() {
        let vim = "[vim]\nauth_url = \"http://192.0.2.5:5000/identity/v3\"\nuser = \"u\"\npassword_file = \"p\"\nproject = \"p\"\n";
        let c = parse(&format!("{GOOD}{vim}")).unwrap();
        assert_eq!(c.vim.unwrap().sweep_interval_ms, 60_000);
        for ok in ["sweep_interval_ms = 0\n", "sweep_interval_ms = 1000\n"] {
            parse(&format!("{GOOD}{vim}{ok}")).unwrap();
        }
        for bad in [
            "sweep_interval_ms = 999\n",
            "sweep_interval_ms = 86400001\n",
        ] {
            let err = parse(&format!("{GOOD}{vim}{bad}")).unwrap_err();
            assert!(
                err.to_string().contains("vim.sweep_interval_ms"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_agent_priority_is_bounded() {
        let c = parse(&format!("{GOOD}[ha]\nrt_priority = 0\n")).unwrap();
        assert_eq!(c.ha.rt_priority, 0);
        assert_eq!(parse(GOOD).unwrap().ha.rt_priority, 10);
        let err = parse(&format!("{GOOD}[ha]\nrt_priority = 100\n")).unwrap_err();
        assert!(err.to_string().contains("ha.rt_priority"), "{err}");
    }

    #[test]
    fn cross_field_rules_name_the_field() {
        let err =
            parse(&GOOD.replace("peer_timeout_ms = 1000", "peer_timeout_ms = 100")).unwrap_err();
        assert!(err.to_string().contains("peer_timeout_ms"), "{err}");
        let err = parse(&GOOD.replace("127.0.0.2:7789", "127.0.0.1:7789")).unwrap_err();
        assert!(err.to_string().contains("replication.peer"), "{err}");
        let err = parse(&GOOD.replace("mode = \"sync\"", "mode = \"fast\"")).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        // With a witness, three renew intervals stay below the replication
        // timeout (1000 ms here): 300 ms renewals are refused, 100 ms pass.
        let witness = "[witness]\naddress = \"127.0.0.3:7790\"\nlease_ms = 1200\n";
        let err = parse(&format!("{GOOD}{witness}renew_interval_ms = 340\n")).unwrap_err();
        assert!(
            err.to_string().contains("witness.renew_interval_ms"),
            "{err}"
        );
        parse(&format!("{GOOD}{witness}renew_interval_ms = 100\n")).unwrap();
    }
}
