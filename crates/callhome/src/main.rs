//! `callhome`: one binary for the server, the simulator and the operator CLI.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = callhome::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callhome: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(callhome::commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callhome: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
