//! The `callhome` binary's library half: settings, wiring and the CLI subcommands, so that
//! integration tests start the very server `callhome serve` runs, in-process, on port 0.
//!
//! Owns: settings resolution ([`config`]), process wiring and first-start initialisation
//! ([`server`]), the retention prune task ([`retention`]), the long-lived tasks and their one shutdown (`supervisor`), command-line
//! parsing ([`cli`]) and the subcommands ([`commands`]).
//!
//! Must not know: protocol details (the gateway, tunnel and API crates own those). This is
//! the only crate that uses `anyhow`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod permissions;
pub mod retention;
pub mod server;
mod supervisor;
