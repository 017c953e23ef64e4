//! The command line (`gatehouse run|check`), as a library function so a build with its own
//! plugins has the same CLI: `fn main() { gatehouse::cli::main(registry) }` (see
//! `examples/custom_plugin.rs`). `run` and `check` use the same registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse_plugins::Registry;

use crate::config::{self, Loaded};
use crate::metrics::Metrics;

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
    Check {
        /// Also print the effective config (defaults merged, chains inlined, variables
        /// substituted; secrets redacted) to stdout.
        #[arg(long)]
        print: bool,
    },
}

/// Logs go through `tracing` (Pingora's and gatehouse's `log` records are bridged) to stderr.
/// `RUST_LOG` wins over `server.log_level`.
fn init_logging(from_config: Option<&str>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| from_config.map(str::to_string))
        .unwrap_or_else(|| "info,pingora_core=warn,pingora_proxy=warn".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `gatehouse check`: compiles the file with `registry`; true when it is valid.
fn check(
    path: &Path,
    loaded: Loaded,
    registry: &Registry,
    print: bool,
) -> Result<bool, prometheus::Error> {
    let metrics = Metrics::for_gateway(
        crate::metrics::DURATION_BUCKETS,
        &registry.decision_metrics(),
    )?;
    match config::compile_loaded(path, loaded, registry, &metrics, None) {
        Ok(s) => {
            let ok = format!(
                "{}: ok ({} routes, {} upstreams)",
                path.display(),
                s.routes.len(),
                s.upstreams.len()
            );
            if print {
                // the YAML alone on stdout (to a file or a diff); the verdict on stderr
                let mut tree = s.source.clone();
                crate::admin::redact(&mut tree);
                print!("{}", serde_yaml::to_string(&tree).unwrap_or_default());
                eprintln!("{ok}");
            } else {
                println!("{ok}");
            }
            Ok(true)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(false)
        }
    }
}

/// Parses the command line and runs it with the plugins of `registry` (start from
/// `gatehouse_plugins::builtins()` and register your own). The config file is read once.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config::load_full(&cli.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check { print } => match check(&cli.config, loaded, &registry, print) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { upgrade } => {
            init_logging(loaded.raw.server.log_level.as_deref());
            let opts = crate::app::RunOptions {
                config: cli.config,
                upgrade,
            };
            match crate::app::run(opts, loaded, registry) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
