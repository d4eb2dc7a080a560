//! The subcommands.

pub mod api;
mod ca;
pub mod certs;
pub mod claims;
pub mod connect;
pub mod credentials;
pub mod device_config;
pub mod devices;
pub mod firmware;
pub mod jobs;
pub mod login;
mod openapi;
mod serve;
pub mod sim;
mod user;

use std::io::BufRead as _;

use anyhow::Context as _;

use crate::cli::{Cli, Command};
use crate::config::{LogFormat, Settings};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS provider for every subcommand (server, simulator, clients): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Openapi { output, check } => openapi::run(output, check),
        Command::Serve { settings } => {
            let settings = Settings::resolve(&settings)?;
            init_tracing(&settings);
            serve::run(&settings).await
        }
        Command::Sim(args) => {
            init_sim_tracing();
            sim::run(*args).await
        }
        Command::Connect(args) => {
            init_sim_tracing();
            connect::run(*args).await
        }
        Command::Login(args) => login::login(args).await,
        Command::Logout => login::logout(),
        Command::Devices { api, action } => devices::run(&api, action).await,
        Command::Config { api, action } => device_config::run(&api, action).await,
        Command::Jobs { api, action } => jobs::run(&api, action).await,
        Command::Firmware { api, action } => firmware::run(&api, action).await,
        Command::Ca { settings, action } => {
            let settings = Settings::resolve(&settings)?;
            init_tracing(&settings);
            ca::run(&settings, action)
        }
        Command::Certs { api, action } => certs::run(&api, action).await,
        Command::Claims { api, action } => claims::run_claims(&api, action).await,
        Command::Enrollments { api, action } => claims::run_enrollments(&api, action).await,
        Command::User { settings, action } => {
            let settings = Settings::resolve(&settings)?;
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

/// The first line of standard input, without its line end (`what` names it in errors).
pub(crate) fn read_stdin_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading {what} from standard input"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
