//! The subcommands.

pub mod bench;
pub mod bench_sessions;
pub mod connect;
mod openapi;
mod serve;
pub mod sim;
mod user;

use crate::cli::{Cli, Command};
use crate::config::{LogFormat, Settings};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS provider for every subcommand (server, simulator, clients): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Openapi { output, check } => openapi::run(output, check),
        Command::Serve => {
            let settings = Settings::resolve(&cli.settings)?;
            init_tracing(&settings);
            serve::run(&settings).await
        }
        Command::Sim(args) => {
            init_sim_tracing();
            sim::run(*args, cli.settings.mqtt).await
        }
        Command::Connect(args) => {
            init_sim_tracing();
            connect::run(*args).await
        }
        Command::BenchSessions(args) => {
            init_sim_tracing();
            bench_sessions::run(*args).await
        }
        Command::Bench(args) => {
            init_sim_tracing();
            bench::run(args).await
        }
        Command::User { action } => {
            let settings = Settings::resolve(&cli.settings)?;
            init_tracing(&settings);
            user::run(&settings, action).await
        }
    }
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The simulator logs warnings only (RUST_LOG overrides), so the progress bar stays readable.
fn init_sim_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
