//! `callhome-bench`: Callhome's benchmarks, out of the product binary.
//!
//! It owns the measurements and their reports: a simulated fleet against `callhome serve`
//! started as a child process, compared with a reference broker ([`fleet`]); bulk-job
//! throughput against a client-script reference ([`jobs`]); firmware campaign throughput
//! against a plain static HTTPS file server and `curl` ([`firmware`], [`staticfile`]);
//! meter-reading session set-up latency and throughput against an in-process server
//! ([`sessions`]). Shared pieces: one
//! statistics module ([`stats`]), what is read from `/proc` ([`procfs`]), and the server under
//! test ([`sut`]). Benchmarks print figures; they never assert on time.
//!
//! No product crate depends on this one; it uses the product only as a client would (the
//! `callhome` binary, the REST API, MQTT) plus `callhome::server` for the in-process server.

mod firmware;
mod fleet;
mod jobs;
mod procfs;
mod sessions;
mod staticfile;
mod stats;
mod sut;

use clap::Parser as _;

/// Callhome's benchmarks.
#[derive(Debug, clap::Parser)]
#[command(name = "callhome-bench", version)]
enum Cli {
    /// Connect a simulated fleet to a Callhome server started as a child process, send
    /// commands through the API, and compare with a reference broker.
    Fleet(Box<fleet::FleetArgs>),
    /// Bulk-job throughput (completion time, per-device latency) on a simulated fleet, with
    /// a client script driving the same change through the command API as reference.
    Jobs(Box<jobs::JobsArgs>),
    /// Firmware campaign throughput (completion time, per-device latency, server CPU and
    /// memory) on a simulated fleet, with a plain static HTTPS file server and `curl`
    /// serving the same image to as many parallel downloads as reference.
    Firmware(Box<firmware::FirmwareArgs>),
    /// The reference's static HTTPS file server (started by `firmware`).
    #[command(hide = true)]
    ServeStatic(staticfile::StaticArgs),
    /// Meter-reading sessions: set-up latency in rendezvous and direct mode, and bulk
    /// throughput, against an in-process server.
    Sessions(Box<sessions::BenchSessionsArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callhome-bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli {
            Cli::Fleet(a) => fleet::fleet(*a).await,
            Cli::Jobs(a) => jobs::run(*a).await,
            Cli::Firmware(a) => firmware::run(*a).await,
            Cli::ServeStatic(a) => staticfile::run(a).await,
            Cli::Sessions(a) => sessions::run(*a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callhome-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
