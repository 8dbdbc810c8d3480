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
    /// High-availability commands.
    Ha {
        #[command(subcommand)]
        cmd: HaCmd,
    },
}

#[derive(Subcommand, Debug)]
enum HaCmd {
    /// Make this node primary now (bumps the epoch). Use only when the other
    /// node is down or standby: two primaries diverge.
    Promote {
        /// Why, for escadm.log.
        #[arg(long, default_value = "escadm ha promote")]
        reason: String,
    },
    /// Make this node standby now; in-flight writes end "outcome unknown".
    Demote {
        /// Why, for escadm.log.
        #[arg(long, default_value = "escadm ha demote")]
        reason: String,
    },
}

fn summary(status: &serde_json::Value) -> String {
    let role = status["role"].as_str().unwrap_or("unknown");
    let word = match role {
        "primary" => "Primary",
        "standby" => "Standby",
        _ => "Unknown",
    };
    format!("0 ESC status=0 ESC {word} Healthy")
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

fn health(home: &std::path::Path, json: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("escadm: {e}");
            return ExitCode::FAILURE;
        }
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

fn main() -> ExitCode {
    let args = Args::parse();
    if let Cmd::Health { json } = args.cmd {
        return health(&args.home, json);
    }
    let (req, verbose_out, json) = match args.cmd {
        Cmd::Health { .. } => unreachable!("handled above"),
        Cmd::Status { verbose, json } => (AdminRequest::Status { verbose }, verbose, json),
        Cmd::Ha {
            cmd: HaCmd::Promote { reason },
        } => (AdminRequest::Promote { reason }, false, false),
        Cmd::Ha {
            cmd: HaCmd::Demote { reason },
        } => (AdminRequest::Demote { reason }, false, false),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("escadm: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(request(&args.home, &req)) {
        Ok(resp) if resp.ok => {
            if !matches!(req, AdminRequest::Status { .. }) {
                println!("{}", resp.message);
            } else {
                print(&resp, json, verbose_out);
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
