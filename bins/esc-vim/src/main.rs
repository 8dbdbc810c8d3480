//! `esc-vim`: the lab's VIM, an OpenStack-compatible service (see the
//! `esc-vim` library). Thin: parses its arguments, reads the password file,
//! serves.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Serve the OpenStack API subset of the lab's VIM.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// The URL clients reach this VIM at (the catalog's endpoints);
    /// default `http://<listen>`.
    #[arg(long)]
    public_url: Option<String>,
    /// The one account: user name.
    #[arg(long, default_value = "admin")]
    user: String,
    /// File holding the account's password (no default password).
    #[arg(long)]
    password_file: PathBuf,
    /// The project tokens are scoped to.
    #[arg(long, default_value = "vnf")]
    project: String,
    /// vCPUs the VIM can host.
    #[arg(long, default_value_t = 512)]
    vcpus: u32,
    /// RAM the VIM can host, MiB.
    #[arg(long, default_value_t = 1 << 20)]
    ram_mb: u64,
    /// How long a new server stays in BUILD, ms.
    #[arg(long, default_value_t = 200)]
    build_ms: u64,
    /// How long a token is valid, s.
    #[arg(long, default_value_t = 3600)]
    token_ttl_s: u64,
    /// Address of the control plane (API faults, the servers' history),
    /// outside the OpenStack API; none: no control plane.
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Run each server as a network namespace joined to the bridge
    /// (--netns-bridge) of this namespace, with esc-vnf inside; without
    /// it, servers are light (records only).
    #[arg(long)]
    netns_switch: Option<String>,
    #[arg(long, default_value = "br0")]
    netns_bridge: String,
    /// Name prefix of the servers' namespaces.
    #[arg(long, default_value = "escvm")]
    netns_prefix: String,
    /// The esc-vnf binary (default: beside esc-vim).
    #[arg(long)]
    vnf: Option<PathBuf>,
    /// Where the servers' day-0 files go (default: a temporary directory).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let password = match std::fs::read_to_string(&args.password_file) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        Ok(_) => {
            eprintln!(
                "esc-vim: {} is empty: write the account's password into it",
                args.password_file.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("esc-vim: cannot read {}: {e}", args.password_file.display());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("esc-vim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cloud = esc_vim::Cloud::lab(esc_vim::Capacity {
        vcpus: args.vcpus,
        ram_mb: args.ram_mb,
        build_ms: args.build_ms,
        ..esc_vim::Capacity::default()
    });
    let creds = esc_vim::Credentials {
        user: args.user,
        password,
        project: args.project,
        token_ttl: std::time::Duration::from_secs(args.token_ttl_s),
    };
    let base = args
        .public_url
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let mut vim = esc_vim::Vim::new(cloud, creds, base.clone());
    let _state_tmp;
    if let Some(switch_ns) = args.netns_switch {
        let vnf = args.vnf.unwrap_or_else(|| {
            std::env::current_exe()
                .map(|p| p.with_file_name("esc-vnf"))
                .unwrap_or_else(|_| PathBuf::from("esc-vnf"))
        });
        if !vnf.exists() {
            eprintln!(
                "esc-vim: {} not found: build esc-vnf (cargo build -p esc-vnf) or pass --vnf",
                vnf.display()
            );
            return ExitCode::from(2);
        }
        let state_dir = match args.state_dir {
            Some(d) => d,
            None => match tempfile::tempdir() {
                Ok(t) => {
                    let p = t.path().to_path_buf();
                    _state_tmp = t;
                    p
                }
                Err(e) => {
                    eprintln!("esc-vim: no state directory: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let cfg = esc_vim::servers::NetnsConfig {
            prefix: args.netns_prefix,
            switch_ns,
            bridge: args.netns_bridge,
            prefix_len: 24,
            vnf,
            state_dir,
        };
        vim = match vim.with_namespace_servers(cfg) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("esc-vim: cannot run namespace servers: {e}");
                return ExitCode::FAILURE;
            }
        };
    }
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        if let Some(addr) = args.control_listen {
            let control = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("esc-vim: control plane on {addr}");
            let v = vim.clone();
            tokio::spawn(async move {
                if let Err(e) = esc_vim::serve_control(control, v).await {
                    eprintln!("esc-vim: control plane stopped: {e}");
                }
            });
        }
        eprintln!("esc-vim: serving on {} (catalog at {base})", args.listen);
        esc_vim::serve_vim(listener, vim).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esc-vim: cannot serve on {}: {e}", args.listen);
            ExitCode::FAILURE
        }
    }
}
