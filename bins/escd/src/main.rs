//! `escd`: the esc node daemon. Thin: parses flags, loads `esc.toml`, starts
//! logging and hands over to [`esc_node::run`].

use clap::Parser;
use esc_config::{Config, DEFAULT_HOME, DEFAULT_LOG_DIR};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the write path allocates many small
/// buffers on several threads (HTTP, JSON, the apply's records, redb's
/// pages), and glibc's arenas spent about 5 % of both cores there (issue 13,
/// `docs/benchmarks.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The esc node daemon: replicated store, northbound REST API, HA agent.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Node home: holds esc.toml, the data directory and the admin socket.
    #[arg(long, env = "ESC_HOME", default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// Log directory (escmanager.log, escadm.log).
    #[arg(long, env = "ESC_LOG_DIR", default_value = DEFAULT_LOG_DIR)]
    log_dir: PathBuf,
    /// Run as the pair's witness on a third host (architecture section 4):
    /// no data, only the lease, the outdated mark and promotion grants.
    /// Uses `node_name`, `[witness] listen`/`lease_ms`, the replication
    /// secret and `store.data_dir` of esc.toml.
    #[arg(long)]
    witness: bool,
    /// Internal: the VIP guard child (`<interface>=<vip>`) that
    /// removes the VIP once its parent escd is gone.
    #[arg(long, hide = true)]
    vip_guard: Option<String>,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(spec) = &args.vip_guard {
        return ExitCode::from(esc_node::ha::vip_guard::run(spec) as u8);
    }
    if let Ok(exe) = std::env::current_exe() {
        esc_node::ha::vip_guard::set_program(exe);
    }
    let config = match Config::load(&args.home) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("escd: {e}");
            eprintln!("escd: fix the configuration and start again; nothing was started.");
            return ExitCode::from(2);
        }
    };
    let _guard = match esc_node::logging::init(&args.log_dir) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("escd: {e} (set --log-dir or ESC_LOG_DIR)");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("escd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("escd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.witness {
        return match rt.block_on(esc_node::witness::serve(
            &args.home,
            config,
            shutdown_signal(),
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("escd --witness: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = esc_node::NodeOptions {
        home: args.home,
        config,
    };
    match rt.block_on(esc_node::run(opts, shutdown_signal())) {
        Ok(esc_node::Exit::Stopped) => ExitCode::SUCCESS,
        Ok(esc_node::Exit::Reload) => {
            // Same binary, same arguments, same PID: the new esc.toml applies.
            drop(rt);
            drop(_guard);
            use std::os::unix::process::CommandExt;
            let args: Vec<String> = std::env::args().skip(1).collect();
            let err = std::process::Command::new(
                std::env::current_exe().unwrap_or_else(|_| "escd".into()),
            )
            .args(args)
            .exec();
            eprintln!("escd: reload failed: {err}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("escd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
