//! `escadm`: the operator CLI. Thin: every command is one request over the
//! local admin socket (`$ESC_HOME/escd.sock`, root-only); the help text is
//! the doc comments below.

use clap::{Parser, Subcommand};
use esc_config::DEFAULT_HOME;
use esc_proto::admin::{request, ClientError};
use esc_proto::status::{HealthReport, NodeStatus};
use esc_proto::{AdminRequest, AdminResponse, OpMode};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Operate the local esc node.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Node home of the escd to talk to.
    #[arg(long, env = "ESC_HOME", default_value = DEFAULT_HOME, global = true)]
    home: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One line with role and health; exit code 0 when the node serves its role.
    Status {
        /// Verbose: every part (role, epoch, replication, peer, store, counters).
        #[arg(long = "v")]
        verbose: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Health of this node: a PASS/FAIL line (exit 0 when the service is
    /// provided, 1 when not, 3 when escd does not answer). `health.sh` calls this.
    Health {
        /// Print the JSON report (status_code, message, stage, checks).
        #[arg(long)]
        json: bool,
    },
    /// Operation mode: maintenance refuses northbound writes (in-progress
    /// ones finish); replicated, so it survives a switchover.
    #[command(name = "op_mode", alias = "op-mode")]
    OpMode {
        #[command(subcommand)]
        cmd: OpModeCmd,
    },
    /// Northbound transactions in progress.
    #[command(name = "ip_trans", alias = "ip-trans")]
    IpTrans,
    /// Apply esc.toml to the running node (after `escadm ha set`); an
    /// invalid file is refused and nothing changes.
    Reload,
    /// The API's accounts (replicated: run on the primary; `list` on
    /// either node). Roles: admin (everything), operator (lifecycle
    /// operations), viewer (reads).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// High-availability commands.
    Ha {
        #[command(subcommand)]
        cmd: HaCmd,
    },
    /// Lab fault injection (needs `[debug] allow_fault_injection = true`).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        cmd: DebugCmd,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// The service stops answering for a while; the HA agent lives.
    Hang {
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=60))]
        seconds: u64,
    },
    /// The northbound API dies (until escd restarts); the HA agent lives.
    #[command(name = "kill-api", alias = "kill_api")]
    KillApi,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add an account. Without --password-stdin a password is generated
    /// and printed once.
    Add {
        name: String,
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an account's password (its role stays). Without
    /// --password-stdin one is generated and printed once.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account.
    Del { name: String },
    /// The accounts and their roles.
    List,
}

#[derive(Subcommand, Debug)]
enum OpModeCmd {
    /// Set the mode (on the primary).
    Set {
        /// `maintenance` or `operation`.
        #[arg(long, value_parser = ["maintenance", "operation"])]
        mode: String,
        /// Refuse maintenance while transactions are in progress.
        #[arg(long = "ipt_check", default_value_t = false, action = clap::ArgAction::Set)]
        ipt_check: bool,
    },
    /// Print `Operation Mode = MAINTENANCE` or `OPERATION`.
    Show,
}

#[derive(Subcommand, Debug)]
enum HaCmd {
    /// Make this node primary now (bumps the epoch). Use only when the other
    /// node is down or standby: two primaries diverge.
    Promote {
        /// Why, for escadm.log.
        #[arg(long, default_value = "escadm ha promote")]
        reason: String,
        /// Promote even if this node may be outdated or the primary is
        /// still connected (can lose acknowledged writes).
        #[arg(long)]
        force: bool,
    },
    /// Planned handover (run on the primary; failback is the same command on
    /// the new primary): writes pause (clients get 503 and retry), the
    /// standby receives every entry, takes over with the VIP, and this node
    /// rejoins as standby. No acknowledged write is lost.
    Switchover,
    /// Make this node standby now; in-flight writes end "outcome unknown".
    Demote {
        /// Why, for escadm.log.
        #[arg(long, default_value = "escadm ha demote")]
        reason: String,
    },
    /// Configure this node as one of the HA pair, as the seed writes it:
    /// `escadm ha set --kad_vip=<VIP> --kad_vif=<IF> --ha_node_list=<IP1> <IP2>`
    /// (also `--kad_vip <VIP>` and `--kad_vip= <VIP>`). Validates, writes
    /// esc.toml, changes nothing on an error; `escadm reload` applies it.
    Set {
        /// The virtual IP: `IP`, `IP/prefix` (default /24), optionally `:interface`.
        #[arg(long = "kad_vip")]
        kad_vip: String,
        /// Interface for VRRP and the VIP.
        #[arg(long = "kad_vif")]
        kad_vif: Option<String>,
        /// The two node addresses (this node's and its peer's), for replication.
        #[arg(long = "ha_node_list", num_args = 1.., value_delimiter = ',', required = true)]
        ha_node_list: Vec<String>,
        /// VRRP router id (default: the VIP's last byte).
        #[arg(long = "kad_vri")]
        kad_vri: Option<u8>,
        /// Unicast VRRP: this node's source address.
        #[arg(long = "kad_unicast_src_ip")]
        kad_unicast_src_ip: Option<String>,
        /// Unicast VRRP: the peer address(es); adverts from others are ignored.
        #[arg(long = "kad_unicast_peer", num_args = 1.., value_delimiter = ',')]
        kad_unicast_peer: Vec<String>,
        /// Witness host (`IP` or `IP:port`, default port 7790) running
        /// `escd --witness`: no split brain, no lost write (recommended).
        /// `--witness=none` returns to two-node mode.
        #[arg(long = "witness")]
        witness: Option<String>,
    },
}

fn verbose(s: &NodeStatus) -> String {
    let r = &s.replication;
    let p = &r.peer;
    let mut lines = vec![
        s.summary(),
        format!("node:            {}", s.node_name),
        format!("role:            {:?}", s.role).to_lowercase(),
        format!("epoch:           {}", s.epoch),
    ];
    if let Some(h) = &s.health {
        lines.push(format!("health:          {} {}", h.status_code, h.message));
    }
    lines.push(format!(
        "replication:     mode={} last_index={} durable={} commit={} snapshot={}",
        r.mode, r.last_index, r.durable_index, r.commit_index, r.snapshot_index
    ));
    lines.push(format!(
        "peer:            {} connected={} phase={} match={} in_sync={} lag_entries={}",
        s.peer_address
            .map_or_else(|| "none".to_string(), |a| a.to_string()),
        p.connected,
        p.phase,
        p.match_index,
        p.in_sync,
        p.lag_entries
    ));
    if let Some(why) = &r.promotion_blocker {
        lines.push(format!("promotion:       refused now: {why}"));
    }
    if let Some(v) = &s.vim {
        let usable = match v.usable {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not yet tried",
        };
        lines.push(format!(
            "vim:             {} user={} project={} usable={usable} calls_in_flight={} calls={} failures={} last_error={}",
            v.auth_url,
            v.user,
            v.project,
            v.calls_in_flight,
            v.calls,
            v.failures,
            v.last_error.as_deref().unwrap_or("none")
        ));
    }
    if let Some(m) = &s.monitor {
        lines.push(format!(
            "monitor:         {} vms_watched={} probes_per_s={} probes_sent={} in_flight={} late={} lateness_max={}ms",
            match &m.paused {
                None => "probing".to_string(),
                Some(why) => format!("paused ({why})"),
            },
            m.vms_watched,
            m.probes_per_s,
            m.probes_sent,
            m.probes_in_flight,
            m.probes_late,
            m.lateness_ms_max
        ));
    }
    if let Some(w) = &s.sweep {
        lines.push(format!(
            "vim sweep:       every {}s passes={} last={} took={} listed={} held={} busy={} strays={} orphans={}{} removed={} last_error={}",
            w.interval_ms / 1000,
            w.passes,
            w.last_pass_ago_ms
                .map_or_else(|| "none yet".to_string(), |ms| format!("{}s ago", ms / 1000)),
            w.last_pass_took_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms}ms")),
            w.listed,
            w.held,
            w.busy,
            w.strays,
            w.orphans,
            if w.orphan_names.is_empty() {
                String::new()
            } else {
                format!(" ({})", w.orphan_names.join(", "))
            },
            w.removed,
            w.last_error.as_deref().unwrap_or("none")
        ));
    }
    if let Some(st) = &s.state {
        lines.push(format!(
            "state:           applied={} deployments={} events={} digest={}",
            st.applied_index, st.deployments, st.events, st.digest
        ));
    }
    if let Some(a) = &s.ha.authority {
        lines.push(format!(
            "ha:              role={} state_file={} mode={} vip_here={} admitting={} since={} ms: {}",
            format!("{:?}", a.role).to_uppercase(),
            a.state_word,
            a.mode,
            a.vip,
            a.admission,
            a.since_ms,
            a.reason
        ));
        lines.push(format!(
            "witness:         {} lease_left_ms={} standby_marked_outdated={} switchover={}",
            s.ha.witness.as_deref().unwrap_or("none (two-node mode)"),
            a.lease_left_ms
                .map_or_else(|| "-".into(), |l| l.to_string()),
            a.standby_marked_outdated,
            a.switchover_in_progress
        ));
    }
    if let Some(v) = &s.ha.vrrp {
        lines.push(format!(
            "vrrp:            state={} priority={} vrid={} vip={} master={} sent={} received={} dropped={}",
            v.state,
            v.priority,
            v.vrid,
            v.vip,
            v.master.map_or_else(|| "-".into(), |m| m.to_string()),
            v.adverts_sent,
            v.adverts_received,
            v.dropped
        ));
    }
    if let Some(e) = &s.ha.last_health_error {
        lines.push(format!(
            "health checks:   {} consecutive failure(s); last: {e}",
            s.ha.health_failures
        ));
    }
    if let Some(t) = &s.last_transition {
        lines.push(format!(
            "last transition: {:?} epoch {} at {} ms: {}",
            t.role, t.epoch, t.at_unix_ms, t.reason
        ));
    }
    let c = &s.counters;
    if c.recovery_entries > 0 {
        lines.push(format!(
            "RECOVERY:        {} divergent entries were moved to the recovery file (data dir/recovery): review them",
            c.recovery_entries
        ));
    }
    if let Some(n) = &s.recovery_note {
        lines.push(format!("STORE RECOVERY:  {n}"));
    }
    lines.push(format!(
        "counters:        {}",
        serde_json::to_string(c).unwrap_or_default()
    ));
    lines.join("\n")
}

/// One admin request; the node's answer or why there is none.
fn ask(home: &Path, req: &AdminRequest) -> Result<AdminResponse, ClientError> {
    // A switchover waits for the standby up to the node's switchover
    // timeout (from its esc.toml; the default when it cannot be read).
    let switchover = esc_config::Config::load(home)
        .map(|c| c.ha.switchover_timeout_ms)
        .unwrap_or(esc_config::HaConfig::default().switchover_timeout_ms);
    request(home, req, req.timeout(Duration::from_millis(switchover)))
}

fn health(home: &Path, json: bool) -> ExitCode {
    let report: HealthReport = match ask(home, &AdminRequest::Health) {
        Ok(AdminResponse::Health { report }) => report,
        Ok(other) => {
            println!("ESC HEALTH FAIL: unexpected answer: {other:?}");
            return ExitCode::from(3);
        }
        Err(e) => {
            println!("ESC HEALTH FAIL: escd does not answer: {e}");
            return ExitCode::from(3);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let verdict = if report.healthy() { "PASS" } else { "FAIL" };
        println!(
            "ESC HEALTH {verdict}: {} {}",
            report.status_code, report.message
        );
        for c in report.checks.iter().filter(|c| !c.ok) {
            println!("  {}: {}", c.name, c.detail);
        }
    }
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The seed writes `--kad_vip= <VIP>`: an option ending in `=` takes the
/// next argument as its value.
/// `--ha_node_list=<IP1> <IP2>` likewise takes the values that follow.
fn seed_args() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut it = std::env::args().peekable();
    while let Some(a) = it.next() {
        let mut a = if a.starts_with("--") && a.ends_with('=') {
            match it.next() {
                Some(v) => format!("{a}{v}"),
                None => a,
            }
        } else {
            a
        };
        let multi = ["--ha_node_list=", "--kad_unicast_peer="];
        if multi.iter().any(|m| a.starts_with(m)) {
            while let Some(next) = it.next_if(|n| !n.starts_with('-')) {
                a = format!("{a},{next}");
            }
        }
        out.push(a);
    }
    out
}

/// This host's IPv4 addresses.
fn local_addresses() -> Vec<std::net::Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|i| i.ip())))
        .collect()
}

fn ha_set(home: &std::path::Path, set: esc_config::ha_set::HaSet) -> Result<String, String> {
    use esc_config::Config;
    let path = home.join(esc_config::CONFIG_FILE);
    let mut config = Config::load(home).map_err(|e| e.to_string())?;
    let mut notes = esc_config::ha_set::apply(&mut config, &set, &local_addresses(), |i| {
        std::path::Path::new("/sys/class/net").join(i).exists()
    })?;
    // The link must be authenticated and there is no default secret: use
    // the node's secret file, or make one to copy to the peer.
    let mut generated = None;
    if config.replication.secret.is_none() && config.replication.secret_file.is_none() {
        let file = home.join("repl.secret");
        if !file.exists() {
            use rand::RngCore;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
            writeln!(f, "{hex}").map_err(|e| e.to_string())?;
            generated = Some(file.clone());
        }
        config.replication.secret_file = Some("repl.secret".into());
    }
    config.validate(&path).map_err(|e| e.to_string())?;
    let text = toml::to_string(&config).map_err(|e| e.to_string())?;
    let tmp = home.join("esc.toml.tmp");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    let _ = std::fs::copy(&path, home.join("esc.toml.bak"));
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    if let Some(f) = generated {
        notes.push(format!(
            "generated the replication secret {}: copy it to the same path on the peer before `escadm reload`",
            f.display()
        ));
    }
    notes.push(format!(
        "wrote {} (previous file kept as esc.toml.bak); apply it with `escadm reload`",
        path.display()
    ));
    Ok(notes.join("\n"))
}

/// Generated passwords: 24 alphanumerics (about 143 bits).
const GENERATED_PASSWORD_LEN: usize = 24;

/// The password for `user add | passwd`: the first line of standard input,
/// or a generated one (printed once the node has taken its hash; the node
/// never sees the password); checked as the API checks it.
fn new_password(from_stdin: bool) -> Result<(String, bool), String> {
    use rand::Rng;
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let pw: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(GENERATED_PASSWORD_LEN)
            .map(char::from)
            .collect();
        pw
    };
    esc_domain::accounts::check_password(&pw).map_err(|e| e.to_string())?;
    Ok((pw, !from_stdin))
}

/// The Argon2id hash of a new password, made here, and the password if
/// it was generated (to print).
fn hashed(from_stdin: bool, generated: &mut Option<String>) -> Result<String, String> {
    let (pw, made) = new_password(from_stdin)?;
    let hash =
        esc_domain::accounts::hash_password(&pw, &rand::random()).map_err(|e| e.to_string())?;
    if made {
        *generated = Some(pw);
    }
    Ok(hash)
}

fn user_request(cmd: UserCmd, generated: &mut Option<String>) -> Result<AdminRequest, String> {
    let name_ok = |n: &str| esc_domain::rules::check_name(n).map_err(|e| format!("{n:?}: {e}"));
    Ok(match cmd {
        UserCmd::Add {
            name,
            role,
            password_stdin,
        } => {
            name_ok(&name)?;
            let role = esc_domain::accounts::UserRole::parse(&role)
                .ok_or_else(|| format!("--role {role}: admin, operator or viewer"))?;
            AdminRequest::UserAdd {
                name,
                role,
                password_hash: hashed(password_stdin, generated)?,
            }
        }
        UserCmd::Passwd {
            name,
            password_stdin,
        } => {
            name_ok(&name)?;
            AdminRequest::UserPasswd {
                name,
                password_hash: hashed(password_stdin, generated)?,
            }
        }
        UserCmd::Del { name } => AdminRequest::UserDel { name },
        UserCmd::List => AdminRequest::UserList,
    })
}

fn main() -> ExitCode {
    let args = Args::parse_from(seed_args());
    if let Cmd::Ha {
        cmd:
            HaCmd::Set {
                kad_vip,
                kad_vif,
                ha_node_list,
                kad_vri,
                kad_unicast_src_ip,
                kad_unicast_peer,
                witness,
            },
    } = args.cmd
    {
        let set = esc_config::ha_set::HaSet {
            kad_vip,
            kad_vif,
            ha_node_list,
            kad_vri,
            kad_unicast_src_ip,
            kad_unicast_peer,
            witness,
        };
        return match ha_set(&args.home, set) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("escadm ha set: {e}\nescadm ha set: nothing was changed.");
                ExitCode::from(2)
            }
        };
    }
    if let Cmd::Health { json } = args.cmd {
        return health(&args.home, json);
    }
    if let Cmd::Status { verbose: v, json } = args.cmd {
        let req = AdminRequest::Status {
            verbose: v,
            health: true,
        };
        return match ask(&args.home, &req) {
            Ok(AdminResponse::Status { status }) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&status).unwrap_or_default()
                    );
                } else if v {
                    println!("{}", verbose(&status));
                } else {
                    println!("{}", status.summary());
                }
                if status.healthy() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Ok(AdminResponse::Refused { message }) => {
                println!("1 ESC status=1 ESC Unhealthy: {message}");
                ExitCode::from(1)
            }
            Ok(other) => {
                println!("1 ESC status=1 ESC Down: unexpected answer {other:?}");
                ExitCode::from(3)
            }
            Err(e) => {
                println!("1 ESC status=1 ESC Down: {e}");
                ExitCode::from(3)
            }
        };
    }
    let mut generated = None;
    let req = match args.cmd {
        Cmd::Health { .. }
        | Cmd::Status { .. }
        | Cmd::Ha {
            cmd: HaCmd::Set { .. },
        } => unreachable!("handled above"),
        Cmd::Reload => AdminRequest::Reload,
        Cmd::User { cmd } => match user_request(cmd, &mut generated) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("escadm user: {e}\nescadm user: nothing was changed.");
                return ExitCode::from(2);
            }
        },
        Cmd::OpMode {
            cmd: OpModeCmd::Show,
        } => AdminRequest::OpModeShow,
        Cmd::OpMode {
            cmd: OpModeCmd::Set { mode, ipt_check },
        } => {
            let mode = if mode == "maintenance" {
                OpMode::Maintenance
            } else {
                OpMode::Operation
            };
            AdminRequest::OpModeSet { mode, ipt_check }
        }
        Cmd::IpTrans => AdminRequest::IpTrans,
        Cmd::Ha {
            cmd: HaCmd::Promote { reason, force },
        } => AdminRequest::Promote { reason, force },
        Cmd::Ha {
            cmd: HaCmd::Demote { reason },
        } => AdminRequest::Demote { reason },
        Cmd::Ha {
            cmd: HaCmd::Switchover,
        } => AdminRequest::Switchover,
        Cmd::Debug {
            cmd: DebugCmd::Hang { seconds },
        } => AdminRequest::Hang { seconds },
        Cmd::Debug {
            cmd: DebugCmd::KillApi,
        } => AdminRequest::KillApi,
    };
    match ask(&args.home, &req) {
        Ok(AdminResponse::Done { message } | AdminResponse::Reloading { message }) => {
            println!("{message}");
            if let Some(pw) = generated {
                println!("password: {pw}");
            }
            ExitCode::SUCCESS
        }
        Ok(AdminResponse::Users { users, bootstrap }) => {
            println!("{:<32} role", "user");
            println!(
                "{:<32} admin (bootstrap: api.user of esc.toml, this node's own)",
                bootstrap
            );
            for u in &users {
                println!("{:<32} {}", u.name, u.role.word());
            }
            ExitCode::SUCCESS
        }
        Ok(AdminResponse::OpMode { mode }) => {
            println!("Operation Mode = {}", mode.word());
            ExitCode::SUCCESS
        }
        Ok(AdminResponse::Transactions { transactions }) => {
            println!("{} transaction(s) in progress", transactions.len());
            for (tid, t) in &transactions {
                println!("  tid={tid} {} since {} ms", t.operation, t.since_unix_ms);
            }
            ExitCode::SUCCESS
        }
        Ok(AdminResponse::Refused { message }) => {
            eprintln!("escadm: {message}");
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("escadm: unexpected answer: {other:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("escadm: {e}");
            ExitCode::from(3)
        }
    }
}
