//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;

/// Callhome: a self-hosted device manager for cellular modems that never listen.
#[derive(Debug, Parser)]
#[command(name = "callhome", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform: HTTP API, CA, and (as they are enabled) modem gateway and tunnel.
    Serve {
        /// Server settings.
        #[command(flatten)]
        settings: Overrides,
    },
    /// Manage users directly in the database (works while the server is stopped or running).
    User {
        /// Server settings (where the database is).
        #[command(flatten)]
        settings: Overrides,
        /// What to do with users.
        #[command(subcommand)]
        action: UserAction,
    },
    /// The certificate authority in the data directory: show it, bring a utility's own
    /// issuing CA, retire the old one (run while the server is stopped; it takes effect at
    /// the next start).
    Ca {
        /// Server settings (where the data directory is).
        #[command(flatten)]
        settings: Overrides,
        /// What to do.
        #[command(subcommand)]
        action: CaAction,
    },
    /// Print the OpenAPI document the server serves.
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Compare with this file and fail if they differ (the CI drift check).
        #[arg(long, conflicts_with = "output")]
        check: Option<PathBuf>,
    },
    /// Run a fleet of simulated MTX modems against the platform (or a reference broker).
    Sim(Box<crate::commands::sim::SimArgs>),
    /// Expose a device's meter as a local TCP port through rendezvous sessions, for reading
    /// software that dials a TCP address.
    Connect(Box<crate::commands::connect::ConnectArgs>),
    /// Log in to a Callhome server: saves an access token for the commands below.
    Login(crate::commands::login::LoginArgs),
    /// Forget the token saved by `callhome login`.
    Logout,
    /// The device registry (through the REST API).
    Devices {
        /// Server and credential.
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: crate::commands::devices::DevicesAction,
    },
    /// One device's Config.txt: show, change, compare with the modem, apply (through the
    /// REST API).
    Config {
        /// Server and credential.
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: crate::commands::device_config::ConfigAction,
    },
    /// Bulk operations on the fleet: create, follow, pause, resume, cancel (through the
    /// REST API).
    Jobs {
        /// Server and credential.
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: crate::commands::jobs::JobsAction,
    },
    /// The firmware repository: upload, list, show, delete, distribution.
    Firmware {
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        #[command(subcommand)]
        action: crate::commands::firmware::FirmwareAction,
    },
    /// Device certificates across the fleet: expiring soonest first, audit checks (through
    /// the REST API).
    Certs {
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        #[command(subcommand)]
        action: crate::commands::certs::CertsAction,
    },
    /// Claim provisioning: batch claim certificates with their policy (through the REST
    /// API; admin).
    Claims {
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        #[command(subcommand)]
        action: crate::commands::claims::ClaimsAction,
    },
    /// The approval queue of enrolments made with claims (through the REST API).
    Enrollments {
        #[command(flatten)]
        api: crate::commands::api::ApiArgs,
        #[command(subcommand)]
        action: crate::commands::claims::EnrollmentsAction,
    },
}

/// `callhome ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Show the issuing CA, its chain up to the root, and the retired CAs still trusted.
    Show,
    /// Make a key for a new issuing CA and print a CSR for the utility's root to sign (as
    /// a CA, path length 0). The key waits in the CA directory for `ca import --cert`.
    Csr {
        /// Subject CN of the new issuing CA.
        #[arg(long)]
        common_name: String,
        /// Subject O.
        #[arg(long)]
        organization: Option<String>,
        /// Write the CSR here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Install a utility's issuing CA: its certificate, its key (or the key made by
    /// `ca csr`), and the chain above it up to their root. The current issuing CA is
    /// retired: still trusted until `ca remove-retired`.
    Import {
        /// The issuing CA's certificate, PEM (one certificate).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key, PKCS#8 PEM; omit to use the key `ca csr` made.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The certificates above it, its issuer first and the root last, PEM; omit when
        /// the certificate is itself a root.
        #[arg(long)]
        chain: Option<PathBuf>,
    },
    /// Stop trusting a retired issuing CA (its devices can no longer connect); it is
    /// moved to the CA directory's archive, never deleted.
    RemoveRetired {
        /// SHA-256 fingerprint of the retired CA, or at least 8 hex digits of it.
        fingerprint: String,
    },
}

/// `callhome user ...`.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user. The password is read from standard input with --password-stdin,
    /// otherwise one is generated and printed.
    Add {
        /// Login name.
        username: String,
        /// admin, operator or reader.
        #[arg(long, default_value = "operator")]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: it can no longer log in and its tokens stop working.
    Disable {
        /// Login name.
        username: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Login name.
        username: String,
    },
    /// Set a new password (read from standard input with --password-stdin, else generated).
    Passwd {
        /// Login name.
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
}
