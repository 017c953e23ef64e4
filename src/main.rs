//! The `gatehouse` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy allocates and frees many small buffers per request; measured faster
/// than the system allocator in `benches/README.md`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gatehouse: an API gateway and edge reverse proxy.
#[derive(Parser)]
#[command(name = "gatehouse", version, about, long_about = None)]
struct Cli {
    /// Config file (for `run` when no subcommand is given).
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        default_value = "conf/gatehouse.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway (the default). SIGTERM/SIGINT drain in-flight requests within
    /// `server.grace_period`; SIGQUIT hands the sockets to a process started with --upgrade.
    Run {
        /// Take over the listening sockets of the running gatehouse through
        /// `server.upgrade_sock` (zero-downtime binary upgrade), then signal the old one
        /// with SIGQUIT.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate the config file and exit: 0 when valid, 1 with every error and its YAML path
    /// otherwise (like `nginx -t`).
    Check,
}

/// Logs go through `tracing` (Pingora's and gatehouse's `log` records are bridged) to stderr.
/// `RUST_LOG` wins over `server.log_level`.
fn init_logging(config: &std::path::Path) {
    let from_config = gatehouse::config::load_full(config)
        .ok()
        .and_then(|l| l.raw.server.log_level);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or(from_config)
        .unwrap_or_else(|| "info,pingora_core=warn,pingora_proxy=warn".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn check(path: &std::path::Path) -> anyhow::Result<bool> {
    let metrics = gatehouse::metrics::Metrics::new()?;
    let registry = gatehouse_plugins::Registry::with_builtins();
    match gatehouse::app::load(path, &registry, &metrics, None) {
        Ok(s) => {
            println!(
                "{}: ok ({} routes, {} upstreams)",
                path.display(),
                s.routes.len(),
                s.upstreams.len()
            );
            Ok(true)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check => match check(&cli.config) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { upgrade } => {
            init_logging(&cli.config);
            let opts = gatehouse::app::RunOptions {
                config: cli.config,
                upgrade,
            };
            match gatehouse::app::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
