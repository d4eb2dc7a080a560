//! API integration tests: every test starts the real server on port 0 with its own
//! database and talks to it over HTTP. One test binary, modules by area.

mod auth;
mod ca_rollover;
mod certificates;
mod claims;
mod cli;
mod config;
mod devices;
mod est;
mod firmware;
mod gateway;
mod helpers;
mod jobs;
mod modem;
mod rotation;
mod security_auth;
mod security_limits;
mod security_secrets;
mod security_sessions;
mod sessions;
mod sim_sessions;
mod system;
