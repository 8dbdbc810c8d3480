//! `escadm`: the operator CLI. Thin: every command is one request over the
//! local admin socket (`$ESC_HOME/escd.sock`, root-only); the help text is
//! the doc comments below.

use clap::{Parser, Subcommand};
use esc_config::DEFAULT_HOME;
use esc_node::admin::{request, AdminRequest, AdminResponse};
use std::path::PathBuf;
use std::process::ExitCode;

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
    OpMode {
        #[command(subcommand)]
        cmd: OpModeCmd,
    },
    /// Northbound transactions in progress.
    IpTrans,
    /// Apply esc.toml to the running node (after `escadm ha set`); an
    /// invalid file is refused and nothing changes.
    Reload,
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
    KillApi,
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

fn summary(status: &serde_json::Value) -> String {
    // The role authority's word when the node is one of a pair.
    let role = status["ha"]["authority"]["role"]
        .as_str()
        .map(str::to_lowercase)
        .unwrap_or_else(|| status["role"].as_str().unwrap_or("unknown").to_string());
    let word = match role.as_str() {
        "primary" => "Primary",
        "standby" => "Standby",
        "fault" => "Fault",
        "init" => "Init",
        _ => "Unknown",
    };
    if role == "fault" {
        return format!(
            "1 ESC status=1 ESC Fault: {}",
            status["ha"]["authority"]["health"]["Err"]
                .as_str()
                .unwrap_or("local health failed")
        );
    }
    match status["health"]["status_code"].as_u64() {
        Some(code) if !(2000..3000).contains(&code) => format!(
            "1 ESC status=1 ESC {word} Unhealthy: {code} {}",
            status["health"]["message"].as_str().unwrap_or("")
        ),
        _ => format!("0 ESC status=0 ESC {word} Healthy"),
    }
}

/// Whether a status (with its health) says the node serves its role.
fn healthy(status: &serde_json::Value) -> bool {
    if status["ha"]["authority"]["role"] == "FAULT" {
        return false;
    }
    status["health"]["status_code"]
        .as_u64()
        .is_none_or(|c| (2000..3000).contains(&c))
}

fn verbose(status: &serde_json::Value) -> String {
    let r = &status["replication"];
    let p = &r["peer"];
    let mut lines = vec![
        summary(status),
        format!(
            "node:            {}",
            status["node_name"].as_str().unwrap_or("")
        ),
        format!("role:            {}", status["role"].as_str().unwrap_or("")),
        format!("epoch:           {}", status["epoch"]),
        format!(
            "health:          {} {}",
            status["health"]["status_code"],
            status["health"]["message"].as_str().unwrap_or("")
        ),
        format!(
            "replication:     mode={} last_index={} durable={} commit={} snapshot={}",
            r["mode"].as_str().unwrap_or(""),
            r["last_index"],
            r["durable_index"],
            r["commit_index"],
            r["snapshot_index"]
        ),
        format!(
            "peer:            {} connected={} phase={} match={} in_sync={} lag_entries={}",
            status["peer_address"].as_str().unwrap_or("none"),
            p["connected"],
            p["phase"].as_str().unwrap_or(""),
            p["match_index"],
            p["in_sync"],
            p["lag_entries"]
        ),
    ];
    if let Some(s) = status.get("state") {
        lines.push(format!(
            "state:           applied={} deployments={} digest={}",
            s["applied_index"],
            s["deployments"],
            s["digest"].as_str().unwrap_or("")
        ));
    }
    let ha = &status["ha"];
    if let Some(a) = ha.get("authority").filter(|a| !a.is_null()) {
        lines.push(format!(
            "ha:              role={} state_file={} mode={} vip_here={} admitting={} since={} ms: {}",
            a["role"].as_str().unwrap_or(""),
            a["state_word"].as_str().unwrap_or(""),
            a["mode"].as_str().unwrap_or(""),
            a["vip"],
            a["admission"],
            a["since_ms"],
            a["reason"].as_str().unwrap_or("")
        ));
        lines.push(format!(
            "witness:         {} lease_left_ms={} standby_marked_outdated={} switchover={}",
            ha["witness"].as_str().unwrap_or("none (two-node mode)"),
            a["lease_left_ms"],
            a["standby_marked_outdated"],
            a["switchover_in_progress"]
        ));
    }
    if let Some(v) = ha.get("vrrp").filter(|v| !v.is_null()) {
        lines.push(format!(
            "vrrp:            state={} priority={} vrid={} vip={} master={} sent={} received={} dropped={}",
            v["state"].as_str().unwrap_or(""),
            v["priority"],
            v["vrid"],
            v["vip"].as_str().unwrap_or(""),
            v["master"].as_str().unwrap_or("-"),
            v["adverts_sent"],
            v["adverts_received"],
            v["dropped"]
        ));
    }
    if let Some(e) = ha["last_health_error"].as_str() {
        lines.push(format!(
            "health checks:   {} consecutive failure(s); last: {e}",
            ha["health_failures"]
        ));
    }
    if let Some(t) = status.get("last_transition").filter(|t| !t.is_null()) {
        lines.push(format!(
            "last transition: {} epoch {} at {} ms: {}",
            t["role"].as_str().unwrap_or(""),
            t["epoch"],
            t["at_unix_ms"],
            t["reason"].as_str().unwrap_or("")
        ));
    }
    let c = &status["counters"];
    if c["recovery_entries"].as_u64().unwrap_or(0) > 0 {
        lines.push(format!(
            "RECOVERY:        {} divergent entries were moved to the recovery file (data dir/recovery): review them",
            c["recovery_entries"]
        ));
    }
    if let Some(n) = status["recovery_note"].as_str() {
        lines.push(format!("STORE RECOVERY:  {n}"));
    }
    lines.push(format!("counters:        {c}"));
    lines.join("\n")
}

fn print(resp: &AdminResponse, json: bool, verbose_out: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(resp).unwrap_or_default());
        return;
    }
    match &resp.status {
        Some(s) if verbose_out => println!("{}", verbose(s)),
        Some(s) => println!("{}", summary(s)),
        None => println!("{}", resp.message),
    }
}

/// A small runtime for one admin request.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("escadm: {e}");
            ExitCode::FAILURE
        })
}

fn health(home: &std::path::Path, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(request(home, &AdminRequest::Health)) {
        Ok(resp) => {
            let r = resp.status.unwrap_or_default();
            let code = r["status_code"].as_u64().unwrap_or(0);
            let pass = (2000..3000).contains(&code);
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                let verdict = if pass { "PASS" } else { "FAIL" };
                println!(
                    "ESC HEALTH {verdict}: {code} {}",
                    r["message"].as_str().unwrap_or("")
                );
                for c in r["checks"].as_array().into_iter().flatten() {
                    if c["ok"] != true {
                        println!(
                            "  {}: {}",
                            c["name"].as_str().unwrap_or(""),
                            c["detail"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            if pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            println!("ESC HEALTH FAIL: escd does not answer: {e}");
            ExitCode::from(3)
        }
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
    let (req, verbose_out, json) = match args.cmd {
        Cmd::Health { .. }
        | Cmd::Ha {
            cmd: HaCmd::Set { .. },
        } => unreachable!("handled above"),
        Cmd::Reload => (AdminRequest::Reload, false, false),
        Cmd::OpMode {
            cmd: OpModeCmd::Show,
        } => (AdminRequest::OpModeShow, false, false),
        Cmd::OpMode {
            cmd: OpModeCmd::Set { mode, ipt_check },
        } => {
            let mode = if mode == "maintenance" {
                esc_store::OpMode::Maintenance
            } else {
                esc_store::OpMode::Operation
            };
            (AdminRequest::OpModeSet { mode, ipt_check }, false, false)
        }
        Cmd::IpTrans => (AdminRequest::IpTrans, false, true),
        Cmd::Status { verbose, json } => (AdminRequest::Status { verbose }, verbose, json),
        Cmd::Ha {
            cmd: HaCmd::Promote { reason, force },
        } => (AdminRequest::Promote { reason, force }, false, false),
        Cmd::Ha {
            cmd: HaCmd::Demote { reason },
        } => (AdminRequest::Demote { reason }, false, false),
        Cmd::Ha {
            cmd: HaCmd::Switchover,
        } => (AdminRequest::Switchover, false, false),
        Cmd::Debug {
            cmd: DebugCmd::Hang { seconds },
        } => (AdminRequest::Hang { seconds }, false, false),
        Cmd::Debug {
            cmd: DebugCmd::KillApi,
        } => (AdminRequest::KillApi, false, false),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let answer = rt.block_on(async {
        let mut resp = request(&args.home, &req).await?;
        // The status line carries the node's health (one line, one exit code).
        if let AdminRequest::Status { .. } = req {
            if let Ok(h) = request(&args.home, &AdminRequest::Health).await {
                if let (Some(serde_json::Value::Object(m)), Some(report)) =
                    (resp.status.as_mut(), h.status)
                {
                    m.insert("health".into(), report);
                }
            }
        }
        Ok::<_, anyhow::Error>(resp)
    });
    match answer {
        Ok(resp) if resp.ok => {
            if matches!(req, AdminRequest::IpTrans) {
                println!("{}", resp.message);
                if let Some(serde_json::Value::Object(m)) = &resp.status {
                    for (tid, t) in m {
                        println!(
                            "  tid={tid} {} since {} ms",
                            t["operation"].as_str().unwrap_or(""),
                            t["since_unix_ms"]
                        );
                    }
                }
            } else if !matches!(req, AdminRequest::Status { .. }) {
                println!("{}", resp.message);
            } else {
                print(&resp, json, verbose_out);
                if !resp.status.as_ref().is_none_or(healthy) {
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("escadm: {}", resp.message);
            ExitCode::FAILURE
        }
        Err(e) => {
            if matches!(req, AdminRequest::Status { .. }) {
                println!("1 ESC status=1 ESC Down: {e}");
            } else {
                eprintln!("escadm: {e}");
            }
            ExitCode::from(3)
        }
    }
}
