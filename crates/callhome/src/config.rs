//! Settings: typed, layered defaults -> TOML file -> `CALLHOME_*` environment -> flags.
//!
//! The file is read with unknown keys rejected. Environment variables and flags are the
//! same clap arguments (clap reads `CALLHOME_*` when a flag is absent), so a flag always
//! wins over the environment, and both win over the file. Secrets are [`SecretString`]s or
//! redacted in `Debug`, so printing the settings never shows them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde::Deserialize;

/// A database URL. It may hold a password (`postgres://user:secret@host/db` or
/// `?password=`), so its `Debug` shows it redacted; read it with `Deref` (`&*url`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&callhome_store::redact_url(&self.0), f)
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// One numeric setting: its key (as in the settings file), default, and accepted range
/// (inclusive). A value outside the range is rejected naming the key, whether it came from
/// the file, a `CALLHOME_*` variable or a flag; nothing is clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `section.key`.
    pub key: &'static str,
    /// Used when nothing sets it.
    pub default: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
}

/// Every numeric setting: the one table of defaults and ranges (documented in
/// `docs/configuration.md`).
pub const BOUNDS: &[Bounds] = &[
    Bounds {
        key: "mqtt.handshake_timeout_s",
        default: 10,
        min: 1,
        max: 120,
    },
    Bounds {
        key: "mqtt.max_connections",
        default: 200_000,
        min: 1,
        max: 10_000_000,
    },
    Bounds {
        key: "mqtt.max_packet_bytes",
        default: 64 * 1024,
        min: 1024,
        max: 16 * 1024 * 1024,
    },
    Bounds {
        key: "mqtt.status_retention_days",
        default: 30,
        min: 1,
        max: 3650,
    },
    Bounds {
        key: "ca.server_certificate_check_s",
        default: 3600,
        min: 1,
        max: 86_400,
    },
    Bounds {
        key: "tunnel.id_timeout_s",
        default: 5,
        min: 1,
        max: 60,
    },
    Bounds {
        key: "auth.token_ttl_s",
        default: 3600,
        min: 60,
        max: 30 * 86_400,
    },
    Bounds {
        key: "fleet.drift_check_interval_s",
        default: 86_400,
        min: 0,
        max: 366 * 86_400,
    },
    Bounds {
        key: "fleet.drift_check_concurrency",
        default: 8,
        min: 1,
        max: 256,
    },
    Bounds {
        key: "fleet.job_queue_wait_s",
        default: 120,
        min: 5,
        max: 86_400,
    },
    Bounds {
        key: "fleet.restart_wait_s",
        default: 600,
        min: 5,
        max: 86_400,
    },
    // Issue 16, items 1-2: direct-session targets, session ownership.
    Bounds {
        key: "mqtt.max_queued_commands",
        default: 100,
        min: 1,
        max: 100_000,
    },
    Bounds {
        key: "tunnel.max_session_timeout_s",
        default: 600,
        min: 1,
        max: 86_400,
    },
    // --- Listener bounds per peer (issue 16, item 5) ---
    Bounds {
        key: "http.header_read_timeout_s",
        default: 10,
        min: 1,
        max: 300,
    },
    Bounds {
        key: "http.idle_timeout_s",
        default: 120,
        min: 61,
        max: 86_400,
    },
    Bounds {
        key: "http.max_connections",
        default: 10_000,
        min: 1,
        max: 1_000_000,
    },
    Bounds {
        key: "http.max_connections_per_address",
        default: 512,
        min: 1,
        max: 1_000_000,
    },
    Bounds {
        key: "http.max_event_streams_per_principal",
        default: 8,
        min: 1,
        max: 10_000,
    },
    Bounds {
        key: "http.ws_max_message_bytes",
        default: 1024 * 1024,
        min: 1024,
        max: 64 * 1024 * 1024,
    },
    Bounds {
        key: "mqtt.max_connections_per_address",
        default: 4096,
        min: 1,
        max: 10_000_000,
    },
    Bounds {
        key: "mqtt.max_handshakes_per_address",
        default: 128,
        min: 1,
        max: 100_000,
    },
    Bounds {
        key: "mqtt.max_reply_bytes",
        default: 256 * 1024,
        min: 1024,
        max: 16 * 1024 * 1024,
    },
    Bounds {
        key: "mqtt.status_per_minute",
        default: 60,
        min: 1,
        max: 60_000,
    },
    Bounds {
        key: "mqtt.status_burst",
        default: 20,
        min: 1,
        max: 10_000,
    },
    Bounds {
        key: "mqtt.max_denied_filters",
        default: 3,
        min: 0,
        max: 1000,
    },
    Bounds {
        key: "tunnel.max_connections_per_address",
        default: 4096,
        min: 1,
        max: 10_000_000,
    },
    Bounds {
        key: "tunnel.max_handshakes_per_address",
        default: 128,
        min: 1,
        max: 100_000,
    },
    // --- end of listener bounds per peer ---
    // Security hardening (issue 16, items 3 and 4): password hashing, login throttling,
    // retention.
    Bounds {
        key: "auth.password_hash_concurrency",
        default: 0,
        min: 0,
        max: 64,
    },
    Bounds {
        key: "auth.password_hash_wait_ms",
        default: 2000,
        min: 0,
        max: 60_000,
    },
    Bounds {
        key: "auth.login_free_failures",
        default: 3,
        min: 0,
        max: 1000,
    },
    Bounds {
        key: "auth.login_lockout_failures",
        default: 10,
        min: 1,
        max: 10_000,
    },
    Bounds {
        key: "auth.login_address_free_failures",
        default: 20,
        min: 0,
        max: 100_000,
    },
    Bounds {
        key: "auth.login_address_lockout_failures",
        default: 100,
        min: 1,
        max: 1_000_000,
    },
    Bounds {
        key: "auth.login_backoff_base_ms",
        default: 1000,
        min: 1,
        max: 600_000,
    },
    Bounds {
        key: "auth.login_backoff_max_ms",
        default: 60_000,
        min: 1,
        max: 3_600_000,
    },
    Bounds {
        key: "auth.login_lockout_s",
        default: 900,
        min: 1,
        max: 86_400,
    },
    Bounds {
        key: "retention.audit_days",
        default: 365,
        min: 0,
        max: 36_500,
    },
    Bounds {
        key: "retention.commands_days",
        default: 90,
        min: 0,
        max: 36_500,
    },
    Bounds {
        key: "retention.sessions_days",
        default: 90,
        min: 0,
        max: 36_500,
    },
    Bounds {
        key: "retention.jobs_days",
        default: 180,
        min: 0,
        max: 36_500,
    },
    Bounds {
        key: "retention.prune_interval_s",
        default: 3600,
        min: 60,
        max: 86_400,
    },
    Bounds {
        key: "retention.prune_batch",
        default: 1000,
        min: 10,
        max: 100_000,
    },
    // Firmware (issue 10): the device-facing HTTPS listener and the repository.
    Bounds {
        key: "device_http.handshake_timeout_s",
        default: 10,
        min: 1,
        max: 120,
    },
    Bounds {
        key: "device_http.header_read_timeout_s",
        default: 30,
        min: 1,
        max: 300,
    },
    Bounds {
        key: "device_http.idle_timeout_s",
        default: 120,
        min: 5,
        max: 3600,
    },
    Bounds {
        key: "device_http.max_connections",
        default: 20_000,
        min: 1,
        max: 1_000_000,
    },
    Bounds {
        key: "device_http.max_connections_per_address",
        default: 4096,
        min: 1,
        max: 10_000_000,
    },
    Bounds {
        key: "device_http.max_handshakes_per_address",
        default: 128,
        min: 1,
        max: 100_000,
    },
    Bounds {
        key: "device_http.max_concurrent_downloads",
        default: 256,
        min: 1,
        max: 100_000,
    },
    Bounds {
        key: "firmware.max_upload_bytes",
        default: 64 * 1024 * 1024,
        min: 1024,
        max: 4 * 1024 * 1024 * 1024,
    },
    Bounds {
        key: "firmware.token_ttl_s",
        default: 6 * 3600,
        min: 60,
        max: 30 * 86_400,
    },
    Bounds {
        key: "certificates.expiry_check_interval_s",
        default: 86_400,
        min: 60,
        max: 366 * 86_400,
    },
    Bounds {
        key: "certificates.rotation_overlap_days",
        default: 7,
        min: 0,
        max: 3650,
    },
];

/// The value of the numeric setting `key`: `value` if given and within its range (else an
/// error naming the key, the range and the value), or its default.
pub fn bounded(key: &str, value: Option<u64>) -> anyhow::Result<u64> {
    let Some(b) = BOUNDS.iter().find(|b| b.key == key) else {
        bail!("{key} is not a numeric setting");
    };
    match value {
        None => Ok(b.default),
        Some(v) if (b.min..=b.max).contains(&v) => Ok(v),
        Some(v) => bail!("{key} must be between {} and {}, got {v}", b.min, b.max),
    }
}

fn seconds(key: &str, value: Option<u64>) -> anyhow::Result<std::time::Duration> {
    Ok(std::time::Duration::from_secs(bounded(key, value)?))
}

/// `auth.password_hash_concurrency = 0`: half the cores (at least 1, at most 8), so that
/// hashing during a login flood leaves the other half to modems and the API.
pub fn auto_hash_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).clamp(1, 8))
        .unwrap_or(1)
}

fn millis(key: &str, value: Option<u64>) -> anyhow::Result<std::time::Duration> {
    Ok(std::time::Duration::from_millis(bounded(key, value)?))
}

/// The settings file, as written by an operator. Every member is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Where the database, CA and secrets live.
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: Option<DatabaseUrl>,
    /// Host names (or addresses) modems and readers are told to dial.
    pub public_host: Option<Vec<String>>,
    /// HTTP API.
    #[serde(default)]
    pub http: HttpSection,
    /// Modem MQTT/TLS listener.
    #[serde(default)]
    pub mqtt: MqttSection,
    /// Tunnel listener.
    #[serde(default)]
    pub tunnel: TunnelSection,
    /// Certificate authority.
    #[serde(default)]
    pub ca: CaSection,
    /// Authentication.
    #[serde(default)]
    pub auth: AuthSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Configuration drift checks and bulk jobs.
    #[serde(default)]
    pub fleet: FleetSection,
    /// Start-up checks of secret files.
    #[serde(default)]
    pub security: SecuritySection,
    /// How long audit rows, commands, sessions and jobs are kept.
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[device_http]`: the device-facing HTTPS listener (firmware downloads).
    #[serde(default)]
    pub device_http: DeviceHttpSection,
    /// `[firmware]`: the firmware repository and campaigns.
    #[serde(default)]
    pub firmware: FirmwareSection,
    /// `[certificates]`: the expiry watch and the certificate audit.
    #[serde(default)]
    pub certificates: CertificatesSection,
    /// `[dialect]`: the modem command templates (every one defaults to MTX-Tunnel's).
    pub dialect: Option<callhome_core::dialect::Dialect>,
}

/// `[device_http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceHttpSection {
    /// Listen address (default `0.0.0.0:8443`).
    pub listen: Option<SocketAddr>,
    /// Port modems dial, when it differs from the bound one (NAT, load balancer).
    pub public_port: Option<u16>,
    /// TLS handshake deadline, seconds.
    pub handshake_timeout_s: Option<u64>,
    /// Deadline for each request head, seconds.
    pub header_read_timeout_s: Option<u64>,
    /// A connection where no byte moved for this long is closed, seconds (a slow download
    /// that keeps moving is never cut).
    pub idle_timeout_s: Option<u64>,
    /// Connections at once.
    pub max_connections: Option<u64>,
    /// Connections at once from one address.
    pub max_connections_per_address: Option<u64>,
    /// Handshakes in progress at once from one address.
    pub max_handshakes_per_address: Option<u64>,
    /// Firmware downloads served at once; more wait their turn.
    pub max_concurrent_downloads: Option<u64>,
}

/// `[certificates]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesSection {
    /// Days before `not_after` at which `certificate.expiring` is published (default
    /// `[60, 30, 7]`; each 1-3650, no duplicates).
    pub expiry_thresholds_days: Option<Vec<u32>>,
    /// Seconds between two expiry checks (default 86400, at least 60).
    pub expiry_check_interval_s: Option<u64>,
    /// Days a device may hold two active certificates after a rotation before the
    /// `multiple_active` audit check reports it (default 7).
    pub rotation_overlap_days: Option<u64>,
}

/// `[firmware]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSection {
    /// Largest firmware file accepted, bytes.
    pub max_upload_bytes: Option<u64>,
    /// Refuse uploads without a signature one of `signing_keys` verifies.
    pub require_signature: Option<bool>,
    /// Keys that may sign firmware.
    pub signing_keys: Option<Vec<SigningKeyEntry>>,
    /// Models firmware may name besides the ones devices report.
    pub models: Option<Vec<String>>,
    /// Lifetime of a download token, seconds.
    pub token_ttl_s: Option<u64>,
}

/// One firmware signing key: a public key in PEM (`-----BEGIN PUBLIC KEY-----`, Ed25519 or
/// ECDSA P-256), inline or in a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyEntry {
    /// Name recorded as `signed_by`.
    pub name: String,
    /// The PEM text.
    pub public_key: Option<String>,
    /// A file holding the PEM text.
    pub public_key_file: Option<PathBuf>,
}

/// Bounds of the device-facing HTTPS listener.
#[derive(Debug, Clone)]
pub struct DeviceHttpLimits {
    /// TLS handshake deadline.
    pub handshake_timeout: std::time::Duration,
    /// Deadline for each request head.
    pub header_read_timeout: std::time::Duration,
    /// No byte moved for this long: the connection is closed.
    pub idle_timeout: std::time::Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_connections_per_address: usize,
    /// Handshakes in progress at once from one address.
    pub max_handshakes_per_address: usize,
    /// Downloads served at once.
    pub max_concurrent_downloads: usize,
}

/// The firmware repository's settings.
#[derive(Debug, Clone)]
pub struct FirmwareSettings {
    /// Largest file accepted, bytes.
    pub max_upload_bytes: u64,
    /// Refuse unsigned uploads.
    pub require_signature: bool,
    /// Keys that may sign firmware (parsed).
    pub signing_keys: callhome_firmware::SigningKeys,
    /// Models accepted besides the reported ones.
    pub models: Vec<String>,
    /// Download token lifetime.
    pub token_ttl: std::time::Duration,
}

/// `[security]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// Refuse to start when the data directory is not 0700 or a secret file (`jwt.key`,
    /// `master.key`, the CA and server keys, the SQLite files) is readable by group or others;
    /// `false` (the default): warn and tighten the files to 0600.
    pub strict_permissions: Option<bool>,
}

/// `[retention]`: how long rows are kept (days; 0 keeps them forever) and how pruning runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Audit rows (default 365).
    pub audit_days: Option<u64>,
    /// Finished commands (default 90).
    pub commands_days: Option<u64>,
    /// Closed sessions (default 90).
    pub sessions_days: Option<u64>,
    /// Finished jobs and their per-device results (default 180).
    pub jobs_days: Option<u64>,
    /// Seconds between two prune passes (default 3600).
    pub prune_interval_s: Option<u64>,
    /// Rows deleted per statement (default 1000).
    pub prune_batch: Option<u64>,
}

/// `[fleet]`: drift checks and jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// Read each online modem's configuration again once its last check is this old,
    /// seconds (default 86400; 0 turns the periodic check off).
    pub drift_check_interval_s: Option<u64>,
    /// Modems read at once by the drift check (default 8).
    pub drift_check_concurrency: Option<usize>,
    /// How long a job's command may wait in a device's queue, seconds (default 120).
    pub job_queue_wait_s: Option<u64>,
    /// How long a modem has to come back after a restart, seconds (default 600).
    pub restart_wait_s: Option<u64>,
}

/// `[http]`: the API listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address to bind.
    pub listen: Option<SocketAddr>,
    /// Bearer token `GET /metrics` requires (a secret: never shown); unset, it is open.
    pub metrics_token: Option<SecretString>,
    /// A request head must be complete within this many seconds of the connection opening
    /// or of the previous response.
    pub header_read_timeout_s: Option<u64>,
    /// A connection with no byte read or written for this many seconds is closed.
    pub idle_timeout_s: Option<u64>,
    /// Most HTTP connections at once.
    pub max_connections: Option<u64>,
    /// Most HTTP connections at once from one address (IPv6: one /64).
    pub max_connections_per_address: Option<u64>,
    /// Most event streams (`GET /api/v1/events`) one user or API key may hold open.
    pub max_event_streams_per_principal: Option<u64>,
    /// Largest WebSocket frame and message on a session stream, bytes.
    pub ws_max_message_bytes: Option<u64>,
}

/// `[mqtt]`: the modem gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Address to bind.
    pub listen: Option<SocketAddr>,
    /// Accept modems without a client certificate that log in with per-device credentials.
    pub allow_password_auth: Option<bool>,
    /// TLS handshake + CONNECT deadline, seconds.
    pub handshake_timeout_s: Option<u64>,
    /// Most modem connections at once.
    pub max_connections: Option<usize>,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_bytes: Option<usize>,
    /// Days status messages are kept.
    pub status_retention_days: Option<u32>,
    /// Node id (distinct per node when several share a database).
    pub node_id: Option<String>,
    /// Most queued commands per device; one more is refused with 429.
    pub max_queued_commands: Option<usize>,
    /// Most modem connections at once from one address (IPv6: one /64).
    pub max_connections_per_address: Option<u64>,
    /// Most TLS handshakes in progress at once from one address (IPv6: one /64).
    pub max_handshakes_per_address: Option<u64>,
    /// Largest reply accumulated for one command, bytes; over it the command fails.
    pub max_reply_bytes: Option<u64>,
    /// Status messages stored per device per minute (on average); more are dropped.
    pub status_per_minute: Option<u64>,
    /// Status messages a device may send at once before the rate applies.
    pub status_burst: Option<u64>,
    /// Denied SUBSCRIBE filters a connection may send (each audited); one more ends it.
    pub max_denied_filters: Option<u64>,
}

/// `[tunnel]`: the meter-reading rendezvous.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// Address to bind.
    pub listen: Option<SocketAddr>,
    /// Port modems are told to dial, when it differs from the bound one (port forwarding).
    pub public_port: Option<u16>,
    /// Deadline for the modem's ID bytes after the TLS handshake, seconds.
    pub id_timeout_s: Option<u64>,
    /// Largest `timeout_s` a meter-reading session may ask for, seconds.
    pub max_session_timeout_s: Option<u32>,
    /// Most modem connections at once from one address (IPv6: one /64).
    pub max_connections_per_address: Option<u64>,
    /// Most TLS handshakes in progress at once from one address (IPv6: one /64).
    pub max_handshakes_per_address: Option<u64>,
}

/// `[ca]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// Subject CN of the root certificate created on first start.
    pub common_name: Option<String>,
    /// Subject O of the root and of issued certificates.
    pub organization: Option<String>,
    /// Issuing CA validity, days (capped by the root's).
    pub validity_days: Option<u32>,
    /// Root CA validity, days.
    pub root_validity_days: Option<u32>,
    /// Default device certificate validity, days.
    pub device_validity_days: Option<u32>,
    /// Server certificate validity, days.
    pub server_validity_days: Option<u32>,
    /// How often the server certificate is checked and renewed while running, seconds.
    pub server_certificate_check_s: Option<u64>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Access-token lifetime, seconds.
    pub token_ttl_s: Option<u32>,
    /// Password of the `admin` user created on first start.
    pub admin_password: Option<SecretString>,
    /// Most password hashes (argon2, 19 MiB each) at once, API and modem logins together
    /// (0: half the cores, at least 1, at most 8).
    pub password_hash_concurrency: Option<u64>,
    /// How long a login waits for a hashing slot before 503 (API) or CONNACK "server
    /// unavailable" (MQTT), milliseconds.
    pub password_hash_wait_ms: Option<u64>,
    /// Failed logins for one user name before back-off starts.
    pub login_free_failures: Option<u64>,
    /// Failed logins that lock a user name.
    pub login_lockout_failures: Option<u64>,
    /// Failed logins from one address before back-off starts.
    pub login_address_free_failures: Option<u64>,
    /// Failed logins that lock an address.
    pub login_address_lockout_failures: Option<u64>,
    /// First back-off, milliseconds (doubled per further failure).
    pub login_backoff_base_ms: Option<u64>,
    /// Longest back-off, milliseconds.
    pub login_backoff_max_ms: Option<u64>,
    /// How long a lockout lasts (and failures are remembered), seconds.
    pub login_lockout_s: Option<u64>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `tracing` filter, e.g. `info,callhome_api=debug`.
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<LogFormat>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Values given as flags or `CALLHOME_*` variables (clap fills these).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Settings file (TOML).
    #[arg(long, env = "CALLHOME_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory: SQLite database, CA key material, secrets.
    #[arg(long, env = "CALLHOME_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite://PATH` or `postgres://USER@HOST/DB` (default: SQLite in the data directory).
    #[arg(
        long,
        env = "CALLHOME_DATABASE_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<DatabaseUrl>,
    /// HTTP API listen address.
    #[arg(
        long = "http",
        env = "CALLHOME_HTTP",
        value_name = "ADDR",
        global = true
    )]
    pub http: Option<SocketAddr>,
    /// Modem MQTT/TLS listen address.
    #[arg(
        long = "mqtt",
        env = "CALLHOME_MQTT",
        value_name = "ADDR",
        global = true
    )]
    pub mqtt: Option<SocketAddr>,
    /// Device-facing HTTPS listen address (firmware downloads), default `0.0.0.0:8443`.
    #[arg(
        long = "device-http",
        env = "CALLHOME_DEVICE_HTTP",
        value_name = "ADDR",
        global = true
    )]
    pub device_http: Option<SocketAddr>,
    /// Tunnel listen address.
    #[arg(
        long = "tunnel",
        env = "CALLHOME_TUNNEL",
        value_name = "ADDR",
        global = true
    )]
    pub tunnel: Option<SocketAddr>,
    /// Host name modems and readers are told to dial (repeat or comma-separate for several).
    #[arg(
        long = "public-host",
        env = "CALLHOME_PUBLIC_HOST",
        value_name = "HOST",
        value_delimiter = ',',
        global = true
    )]
    pub public_host: Vec<String>,
    /// Node id, distinct per node when several share one database.
    #[arg(
        long = "node-id",
        env = "CALLHOME_NODE_ID",
        value_name = "ID",
        global = true
    )]
    pub node_id: Option<String>,
    /// Seconds between two configuration reads of an online modem by the drift check (0: off).
    #[arg(
        long = "drift-check-interval",
        env = "CALLHOME_DRIFT_CHECK_INTERVAL_S",
        value_name = "SECONDS",
        global = true
    )]
    pub drift_check_interval_s: Option<u64>,
    /// Days before expiry at which `certificate.expiring` is published (comma-separated).
    #[arg(
        long = "cert-expiry-thresholds",
        env = "CALLHOME_CERT_EXPIRY_THRESHOLDS_DAYS",
        value_name = "DAYS",
        value_delimiter = ',',
        global = true
    )]
    pub cert_expiry_thresholds_days: Vec<u32>,
    /// Seconds between two certificate expiry checks.
    #[arg(
        long = "cert-expiry-check-interval",
        env = "CALLHOME_CERT_EXPIRY_CHECK_INTERVAL_S",
        value_name = "SECONDS",
        global = true
    )]
    pub cert_expiry_check_interval_s: Option<u64>,
    /// Log filter (`tracing` syntax).
    #[arg(
        long = "log",
        env = "CALLHOME_LOG",
        value_name = "FILTER",
        global = true
    )]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(
        long = "log-format",
        env = "CALLHOME_LOG_FORMAT",
        value_name = "FORMAT",
        global = true
    )]
    pub log_format: Option<LogFormat>,
}

/// Resolved settings. `Debug` shows no secret: the database URL is redacted and the admin
/// password is a [`SecretString`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL (may hold a password: its `Debug` is redacted).
    pub database_url: DatabaseUrl,
    /// Public host names.
    pub public_hosts: Vec<String>,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// MQTT listen address.
    pub mqtt: SocketAddr,
    /// Tunnel listen address.
    pub tunnel: SocketAddr,
    /// Port modems dial for rendezvous sessions (`None`: the bound tunnel port).
    pub tunnel_public_port: Option<u16>,
    /// Deadline for a modem's ID bytes on the tunnel.
    pub tunnel_id_timeout: std::time::Duration,
    /// How often the server certificate is checked, and renewed before it expires.
    pub server_certificate_check: std::time::Duration,
    /// Largest session `timeout_s`.
    pub tunnel_max_session_timeout_s: u32,
    /// Tunnel connections at once from one address.
    pub tunnel_max_connections_per_address: usize,
    /// Tunnel handshakes in progress at once from one address.
    pub tunnel_max_handshakes_per_address: usize,
    /// Bounds of the HTTP listener.
    pub http_limits: callhome_api::ServeLimits,
    /// Bounds of long-lived HTTP streams (event streams per principal, WebSocket frames).
    pub stream_limits: callhome_api::limits::StreamLimits,
    /// Modem gateway settings (its listen address is `mqtt`).
    pub gateway: callhome_gateway::GatewayConfig,
    /// CA parameters.
    pub ca: callhome_ca::CaParams,
    /// Access-token lifetime.
    pub token_ttl: time::Duration,
    /// First-start admin password, if given.
    pub admin_password: Option<SecretString>,
    /// Periodic drift check (`None`: off).
    pub drift: Option<callhome_fleet::drift::DriftSettings>,
    /// Job engine.
    pub jobs: callhome_fleet::EngineSettings,
    /// Failed-login throttling.
    pub login_throttle: callhome_api::throttle::ThrottleSettings,
    /// Retention of audit rows, commands, sessions and jobs.
    pub retention: crate::retention::RetentionSettings,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    // --- Secrets (issue 16, item 6) ---
    /// Master key for secret Config.txt values at rest, from `CALLHOME_MASTER_KEY` (base64 of
    /// 32 bytes; an environment variable only, never a flag). `None`: `master.key` in the data
    /// directory, created on first start.
    pub master_key: Option<SecretString>,
    /// Bearer token `GET /metrics` requires (`http.metrics_token` or
    /// `CALLHOME_METRICS_TOKEN`); `None`: open.
    pub metrics_token: Option<SecretString>,
    /// `security.strict_permissions`: refuse to start on loose permissions instead of warning.
    pub strict_permissions: bool,
    /// Device-facing HTTPS listen address.
    pub device_http: SocketAddr,
    /// Port modems dial for downloads (`None`: the bound port).
    pub device_http_public_port: Option<u16>,
    /// Bounds of the device-facing listener.
    pub device_http_limits: DeviceHttpLimits,
    /// The firmware repository.
    pub firmware: FirmwareSettings,
    /// The modem command dialect.
    pub dialect: callhome_core::dialect::Dialect,
    /// The certificate expiry watch and audit.
    pub certificates: callhome_pki::WatchSettings,
}

/// Shortest `http.metrics_token` accepted, in characters.
pub const MIN_METRICS_TOKEN_LEN: usize = 16;

impl Settings {
    /// Resolves settings from the optional file named in `o` (or `CALLHOME_CONFIG`), then
    /// `o` itself, over the defaults. `CALLHOME_ADMIN_PASSWORD` is read here.
    pub fn resolve(o: &Overrides) -> anyhow::Result<Self> {
        let file = match &o.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./callhome-data"));
        let database_url = o
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| {
                format!("sqlite://{}", data_dir.join("callhome.db").display()).into()
            });
        let public_hosts = if !o.public_host.is_empty() {
            o.public_host.clone()
        } else {
            file.public_host.unwrap_or_default()
        };
        for h in &public_hosts {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == '/') {
                bail!("public host {h:?} is not a host name or address");
            }
        }
        let defaults = callhome_ca::CaParams::default();
        let ca = callhome_ca::CaParams {
            common_name: file.ca.common_name.unwrap_or(defaults.common_name),
            organization: file.ca.organization.or(defaults.organization),
            validity_days: file.ca.validity_days.unwrap_or(defaults.validity_days),
            root_validity_days: file
                .ca
                .root_validity_days
                .unwrap_or(defaults.root_validity_days),
            device_validity_days: file
                .ca
                .device_validity_days
                .unwrap_or(defaults.device_validity_days),
            server_validity_days: file
                .ca
                .server_validity_days
                .unwrap_or(defaults.server_validity_days),
        };
        let mut gateway = callhome_gateway::GatewayConfig::default();
        if let Some(v) = file.mqtt.allow_password_auth {
            gateway.allow_password_auth = v;
        }
        gateway.handshake_timeout =
            seconds("mqtt.handshake_timeout_s", file.mqtt.handshake_timeout_s)?;
        gateway.max_connections = usize::try_from(bounded(
            "mqtt.max_connections",
            file.mqtt.max_connections.map(|v| v as u64),
        )?)?;
        gateway.max_packet_bytes = usize::try_from(bounded(
            "mqtt.max_packet_bytes",
            file.mqtt.max_packet_bytes.map(|v| v as u64),
        )?)?;
        gateway.status_retention = time::Duration::days(i64::try_from(bounded(
            "mqtt.status_retention_days",
            file.mqtt.status_retention_days.map(u64::from),
        )?)?);
        gateway.max_queued_commands = usize::try_from(bounded(
            "mqtt.max_queued_commands",
            file.mqtt.max_queued_commands.map(|v| v as u64),
        )?)?;
        if let Some(v) = o.node_id.clone().or(file.mqtt.node_id) {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("node id {v:?} must be letters, digits or '_'");
            }
            gateway.node_id = v;
        }
        let token_ttl_s = bounded("auth.token_ttl_s", file.auth.token_ttl_s.map(u64::from))?;
        let drift_interval = bounded(
            "fleet.drift_check_interval_s",
            o.drift_check_interval_s
                .or(file.fleet.drift_check_interval_s),
        )?;
        let drift_concurrency = bounded(
            "fleet.drift_check_concurrency",
            file.fleet.drift_check_concurrency.map(|v| v as u64),
        )?;
        let drift = (drift_interval > 0).then(|| callhome_fleet::drift::DriftSettings {
            interval: std::time::Duration::from_secs(drift_interval),
            concurrency: usize::try_from(drift_concurrency).unwrap_or(256),
            ..Default::default()
        });
        let jobs = callhome_fleet::EngineSettings {
            queue_wait: seconds("fleet.job_queue_wait_s", file.fleet.job_queue_wait_s)?,
            restart_wait: seconds("fleet.restart_wait_s", file.fleet.restart_wait_s)?,
            // The listener's address is known once it is bound (see `server::start`).
            firmware: callhome_fleet::FirmwareCampaignSettings {
                base_url: None,
                token_ttl: seconds("firmware.token_ttl_s", file.firmware.token_ttl_s)?,
            },
            ..Default::default()
        };
        let tunnel_id_timeout = seconds("tunnel.id_timeout_s", file.tunnel.id_timeout_s)?;
        let server_certificate_check = seconds(
            "ca.server_certificate_check_s",
            file.ca.server_certificate_check_s,
        )?;
        let tunnel_max_session_timeout_s = u32::try_from(bounded(
            "tunnel.max_session_timeout_s",
            file.tunnel.max_session_timeout_s.map(u64::from),
        )?)?;
        // --- Listener bounds per peer ---
        let size = |key: &str, v: Option<u64>| -> anyhow::Result<usize> {
            Ok(usize::try_from(bounded(key, v)?)?)
        };
        gateway.max_connections_per_address = size(
            "mqtt.max_connections_per_address",
            file.mqtt.max_connections_per_address,
        )?;
        gateway.max_handshakes_per_address = size(
            "mqtt.max_handshakes_per_address",
            file.mqtt.max_handshakes_per_address,
        )?;
        gateway.max_reply_bytes = size("mqtt.max_reply_bytes", file.mqtt.max_reply_bytes)?;
        gateway.status_per_minute = u32::try_from(bounded(
            "mqtt.status_per_minute",
            file.mqtt.status_per_minute,
        )?)?;
        gateway.status_burst =
            u32::try_from(bounded("mqtt.status_burst", file.mqtt.status_burst)?)?;
        gateway.max_denied_filters = size("mqtt.max_denied_filters", file.mqtt.max_denied_filters)?;
        let tunnel_max_connections_per_address = size(
            "tunnel.max_connections_per_address",
            file.tunnel.max_connections_per_address,
        )?;
        let tunnel_max_handshakes_per_address = size(
            "tunnel.max_handshakes_per_address",
            file.tunnel.max_handshakes_per_address,
        )?;
        let http_limits = callhome_api::ServeLimits {
            header_read_timeout: seconds(
                "http.header_read_timeout_s",
                file.http.header_read_timeout_s,
            )?,
            idle_timeout: seconds("http.idle_timeout_s", file.http.idle_timeout_s)?,
            max_connections: size("http.max_connections", file.http.max_connections)?,
            max_connections_per_address: size(
                "http.max_connections_per_address",
                file.http.max_connections_per_address,
            )?,
        };
        let stream_limits = callhome_api::limits::StreamLimits::new(
            size(
                "http.max_event_streams_per_principal",
                file.http.max_event_streams_per_principal,
            )?,
            size("http.ws_max_message_bytes", file.http.ws_max_message_bytes)?,
        );
        // --- end of listener bounds per peer ---
        let a = &file.auth;
        gateway.password_concurrency = match bounded(
            "auth.password_hash_concurrency",
            a.password_hash_concurrency,
        )? {
            0 => auto_hash_concurrency(),
            n => usize::try_from(n)?,
        };
        gateway.password_wait = millis("auth.password_hash_wait_ms", a.password_hash_wait_ms)?;
        let count = |key: &str, v: Option<u64>| -> anyhow::Result<u32> {
            Ok(u32::try_from(bounded(key, v)?)?)
        };
        let login_throttle = callhome_api::throttle::ThrottleSettings {
            user_free_failures: count("auth.login_free_failures", a.login_free_failures)?,
            user_lockout_failures: count("auth.login_lockout_failures", a.login_lockout_failures)?,
            address_free_failures: count(
                "auth.login_address_free_failures",
                a.login_address_free_failures,
            )?,
            address_lockout_failures: count(
                "auth.login_address_lockout_failures",
                a.login_address_lockout_failures,
            )?,
            base_delay: millis("auth.login_backoff_base_ms", a.login_backoff_base_ms)?,
            max_delay: millis("auth.login_backoff_max_ms", a.login_backoff_max_ms)?,
            lockout: seconds("auth.login_lockout_s", a.login_lockout_s)?,
        };
        let r = &file.retention;
        let days = |key: &str, v: Option<u64>| -> anyhow::Result<Option<time::Duration>> {
            let d = bounded(key, v)?;
            Ok((d > 0).then(|| time::Duration::days(i64::try_from(d).unwrap_or(i64::MAX))))
        };
        let retention = crate::retention::RetentionSettings {
            audit: days("retention.audit_days", r.audit_days)?,
            commands: days("retention.commands_days", r.commands_days)?,
            sessions: days("retention.sessions_days", r.sessions_days)?,
            jobs: days("retention.jobs_days", r.jobs_days)?,
            interval: seconds("retention.prune_interval_s", r.prune_interval_s)?,
            batch: u32::try_from(bounded("retention.prune_batch", r.prune_batch)?)?,
        };
        let admin_password = std::env::var("CALLHOME_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(SecretString::from)
            .or(file.auth.admin_password);
        // --- Secrets (issue 16, item 6) ---
        let master_key = std::env::var("CALLHOME_MASTER_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(SecretString::from);
        let metrics_token = std::env::var("CALLHOME_METRICS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .or(file.http.metrics_token);
        if let Some(t) = &metrics_token {
            use secrecy::ExposeSecret as _;
            let t = t.expose_secret();
            if t.chars().count() < MIN_METRICS_TOKEN_LEN
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                bail!(
                    "http.metrics_token must be at least {MIN_METRICS_TOKEN_LEN} characters, without spaces"
                );
            }
        }
        let strict_permissions = file.security.strict_permissions.unwrap_or(false);
        let d = &file.device_http;
        let device_http_limits = DeviceHttpLimits {
            handshake_timeout: seconds("device_http.handshake_timeout_s", d.handshake_timeout_s)?,
            header_read_timeout: seconds(
                "device_http.header_read_timeout_s",
                d.header_read_timeout_s,
            )?,
            idle_timeout: seconds("device_http.idle_timeout_s", d.idle_timeout_s)?,
            max_connections: size("device_http.max_connections", d.max_connections)?,
            max_connections_per_address: size(
                "device_http.max_connections_per_address",
                d.max_connections_per_address,
            )?,
            max_handshakes_per_address: size(
                "device_http.max_handshakes_per_address",
                d.max_handshakes_per_address,
            )?,
            max_concurrent_downloads: size(
                "device_http.max_concurrent_downloads",
                d.max_concurrent_downloads,
            )?,
        };
        let f = &file.firmware;
        let mut signing_keys = callhome_firmware::SigningKeys::default();
        for (i, k) in f.signing_keys.iter().flatten().enumerate() {
            let pem = match (&k.public_key, &k.public_key_file) {
                (Some(text), None) => text.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "firmware.signing_keys[{i}].public_key_file {}",
                        path.display()
                    )
                })?,
                _ => bail!(
                    "firmware.signing_keys[{i}] ({}): give exactly one of public_key and public_key_file",
                    k.name
                ),
            };
            if k.name.is_empty()
                || k.name.chars().count() > 64
                || k.name.chars().any(char::is_control)
            {
                bail!("firmware.signing_keys[{i}].name must be 1-64 printable characters");
            }
            if signing_keys.iter().any(|x| x.name() == k.name) {
                bail!("firmware.signing_keys: the name {:?} is used twice", k.name);
            }
            signing_keys.push(
                callhome_firmware::SigningKey::from_pem(&k.name, &pem)
                    .with_context(|| format!("firmware.signing_keys[{i}] ({})", k.name))?,
            );
        }
        let require_signature = f.require_signature.unwrap_or(false);
        if require_signature && signing_keys.is_empty() {
            bail!("firmware.require_signature is on but firmware.signing_keys is empty");
        }
        let models = f.models.clone().unwrap_or_default();
        for (i, m) in models.iter().enumerate() {
            callhome_core::firmware::check_model(m)
                .map_err(|e| anyhow::anyhow!("firmware.models[{i}]: {}", e.reason))?;
        }
        let firmware = FirmwareSettings {
            max_upload_bytes: bounded("firmware.max_upload_bytes", f.max_upload_bytes)?,
            require_signature,
            signing_keys,
            models,
            token_ttl: seconds("firmware.token_ttl_s", f.token_ttl_s)?,
        };
        let c = &file.certificates;
        let thresholds = if o.cert_expiry_thresholds_days.is_empty() {
            c.expiry_thresholds_days.clone()
        } else {
            Some(o.cert_expiry_thresholds_days.clone())
        };
        let certificates = callhome_pki::WatchSettings {
            thresholds: match thresholds {
                None => callhome_core::certificates::ExpiryThresholds::default(),
                Some(days) => callhome_core::certificates::ExpiryThresholds::parse(&days)
                    .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.reason))?,
            },
            interval: seconds(
                "certificates.expiry_check_interval_s",
                o.cert_expiry_check_interval_s.or(c.expiry_check_interval_s),
            )?,
            rotation_overlap: time::Duration::days(i64::try_from(bounded(
                "certificates.rotation_overlap_days",
                c.rotation_overlap_days,
            )?)?),
        };
        let dialect = file.dialect.unwrap_or_default();
        dialect
            .validate()
            .map_err(|e| anyhow::anyhow!("dialect.{}: {}", e.field, e.reason))?;
        Ok(Self {
            data_dir,
            database_url,
            public_hosts,
            http: o
                .http
                .or(file.http.listen)
                .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
            mqtt: o
                .mqtt
                .or(file.mqtt.listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 8883).into()),
            tunnel: o
                .tunnel
                .or(file.tunnel.listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 7443).into()),
            gateway,
            tunnel_public_port: file.tunnel.public_port,
            tunnel_id_timeout,
            server_certificate_check,
            tunnel_max_session_timeout_s,
            tunnel_max_connections_per_address,
            tunnel_max_handshakes_per_address,
            http_limits,
            stream_limits,
            ca,
            token_ttl: time::Duration::seconds(i64::try_from(token_ttl_s)?),
            admin_password,
            drift,
            jobs,
            login_throttle,
            retention,
            log_level: o
                .log_level
                .clone()
                .or(file.log.level)
                .unwrap_or_else(|| "info".to_owned()),
            log_format: o.log_format.or(file.log.format).unwrap_or_default(),
            master_key,
            metrics_token,
            strict_permissions,
            device_http: o
                .device_http
                .or(file.device_http.listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 8443).into()),
            device_http_public_port: file.device_http.public_port,
            device_http_limits,
            firmware,
            dialect,
            certificates,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("settings file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<FileSettings>("data_dri = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `data_dri`"), "{err}");
        let err = toml::from_str::<FileSettings>("[http]\nlisten = \"1.2.3.4:80\"\nport = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `port`"), "{err}");
    }

    #[test]
    fn layering_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/ch\"\npublic_host = [\"a.example\"]\n[http]\nlisten = \"0.0.0.0:9000\"\n[auth]\nadmin_password = \"file-secret-123\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path),
            http: Some("127.0.0.1:1".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(&o).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/srv/ch"));
        assert_eq!(s.http, "127.0.0.1:1".parse().unwrap(), "flag beats file");
        assert_eq!(s.public_hosts, vec!["a.example".to_string()]);
        assert_eq!(&*s.database_url, "sqlite:///srv/ch/callhome.db");
        let debug = format!("{s:?}");
        assert!(!debug.contains("file-secret-123"), "{debug}");
        if std::env::var("CALLHOME_ADMIN_PASSWORD").is_err() {
            assert_eq!(s.admin_password.unwrap().expose_secret(), "file-secret-123");
        }
    }

    #[test]
    fn database_password_is_masked() {
        let o = Overrides {
            database_url: Some(
                "postgres://u:hunter2@db/x?password=hunter3"
                    .parse()
                    .unwrap(),
            ),
            ..Default::default()
        };
        let s = Settings::resolve(&o).unwrap();
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("hunter3"),
            "{debug}"
        );
        assert!(
            !format!("{o:?}").contains("hunter2"),
            "the flags' Debug too"
        );
    }

    #[test]
    fn metrics_token_and_strict_permissions_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[http]\nmetrics_token = \"scrape-token-0123456789\"\n[security]\nstrict_permissions = true\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = Settings::resolve(&o).unwrap();
        assert!(s.strict_permissions);
        let debug = format!("{s:?}");
        assert!(!debug.contains("scrape-token-0123456789"), "{debug}");
        if std::env::var("CALLHOME_METRICS_TOKEN").is_err() {
            assert_eq!(
                s.metrics_token.unwrap().expose_secret(),
                "scrape-token-0123456789"
            );
        }
        std::fs::write(&path, "[http]\nmetrics_token = \"short\"\n").unwrap();
        let err = Settings::resolve(&o).unwrap_err().to_string();
        assert!(
            err.contains("http.metrics_token") && !err.contains("short"),
            "{err}"
        );
        assert!(
            !Settings::resolve(&Overrides::default())
                .unwrap()
                .strict_permissions
        );
    }

    #[test]
    fn certificate_settings_from_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[certificates]\nexpiry_thresholds_days = [14, 90]\nexpiry_check_interval_s = 3600\nrotation_overlap_days = 0\n",
        )
        .unwrap();
        let mut o = Overrides {
            config: Some(path),
            ..Default::default()
        };
        let s = Settings::resolve(&o).unwrap();
        assert_eq!(s.certificates.thresholds.days(), &[90, 14], "widest first");
        assert_eq!(
            s.certificates.interval,
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(s.certificates.rotation_overlap, time::Duration::ZERO);
        o.cert_expiry_thresholds_days = vec![1, 2];
        o.cert_expiry_check_interval_s = Some(60);
        let s = Settings::resolve(&o).unwrap();
        assert_eq!(s.certificates.thresholds.days(), &[2, 1], "flags win");
        assert_eq!(s.certificates.interval, std::time::Duration::from_secs(60));
        o.cert_expiry_thresholds_days = vec![5000];
        let err = Settings::resolve(&o).unwrap_err().to_string();
        assert!(
            err.contains("certificates.expiry_thresholds_days") && err.contains("5000"),
            "{err}"
        );
    }

    /// Every numeric setting has one row: default within its range; out-of-range values
    /// from the file or a flag are rejected naming the key, never clamped.
    #[test]
    fn out_of_range_values_are_rejected_naming_the_key() {
        for b in BOUNDS {
            assert!((b.min..=b.max).contains(&b.default), "{b:?}");
            assert_eq!(bounded(b.key, None).unwrap(), b.default);
            assert_eq!(bounded(b.key, Some(b.max)).unwrap(), b.max);
            let err = bounded(b.key, Some(b.max + 1)).unwrap_err().to_string();
            assert!(
                err.contains(b.key) && err.contains(&(b.max + 1).to_string()),
                "{err}"
            );
        }
        let s = Settings::resolve(&Overrides::default()).unwrap();
        assert_eq!(s.gateway.max_connections, 200_000);
        assert_eq!(s.tunnel_id_timeout, std::time::Duration::from_secs(5));
        assert_eq!(s.jobs.restart_wait, std::time::Duration::from_secs(600));
        assert_eq!(s.token_ttl, time::Duration::seconds(3600));
        assert_eq!(
            s.login_throttle,
            callhome_api::throttle::ThrottleSettings::default()
        );
        assert_eq!(s.retention, crate::retention::RetentionSettings::default());
        assert_eq!(s.certificates.thresholds.days(), &[60, 30, 7]);
        assert_eq!(
            s.certificates.interval,
            std::time::Duration::from_secs(86_400)
        );
        assert_eq!(s.certificates.rotation_overlap, time::Duration::days(7));
        assert_eq!(s.gateway.password_concurrency, auto_hash_concurrency());
        assert_eq!(
            s.gateway.password_wait,
            std::time::Duration::from_millis(2000)
        );

        let dir = tempfile::tempdir().unwrap();
        for (toml, key) in [
            ("[mqtt]\nmax_connections = 0\n", "mqtt.max_connections"),
            (
                "[mqtt]\nstatus_retention_days = 0\n",
                "mqtt.status_retention_days",
            ),
            ("[tunnel]\nid_timeout_s = 61\n", "tunnel.id_timeout_s"),
            (
                "[tunnel]\nmax_session_timeout_s = 86401\n",
                "tunnel.max_session_timeout_s",
            ),
            (
                "[mqtt]\nmax_queued_commands = 0\n",
                "mqtt.max_queued_commands",
            ),
            (
                "[fleet]\ndrift_check_concurrency = 1000\n",
                "fleet.drift_check_concurrency",
            ),
            ("[fleet]\njob_queue_wait_s = 1\n", "fleet.job_queue_wait_s"),
            ("[fleet]\nrestart_wait_s = 100000\n", "fleet.restart_wait_s"),
            ("[auth]\ntoken_ttl_s = 10\n", "auth.token_ttl_s"),
            (
                "[http]\nheader_read_timeout_s = 0\n",
                "http.header_read_timeout_s",
            ),
            ("[http]\nidle_timeout_s = 60\n", "http.idle_timeout_s"),
            (
                "[http]\nmax_connections_per_address = 0\n",
                "http.max_connections_per_address",
            ),
            (
                "[http]\nws_max_message_bytes = 100000000\n",
                "http.ws_max_message_bytes",
            ),
            (
                "[mqtt]\nmax_handshakes_per_address = 0\n",
                "mqtt.max_handshakes_per_address",
            ),
            ("[mqtt]\nmax_reply_bytes = 10\n", "mqtt.max_reply_bytes"),
            ("[mqtt]\nstatus_per_minute = 0\n", "mqtt.status_per_minute"),
            (
                "[tunnel]\nmax_connections_per_address = 0\n",
                "tunnel.max_connections_per_address",
            ),
            (
                "[auth]\npassword_hash_concurrency = 65\n",
                "auth.password_hash_concurrency",
            ),
            ("[auth]\nlogin_lockout_s = 0\n", "auth.login_lockout_s"),
            ("[retention]\naudit_days = 40000\n", "retention.audit_days"),
            ("[retention]\nprune_batch = 1\n", "retention.prune_batch"),
            (
                "[certificates]\nexpiry_check_interval_s = 59\n",
                "certificates.expiry_check_interval_s",
            ),
            (
                "[certificates]\nrotation_overlap_days = 3651\n",
                "certificates.rotation_overlap_days",
            ),
            (
                "[certificates]\nexpiry_thresholds_days = []\n",
                "certificates.expiry_thresholds_days",
            ),
            (
                "[certificates]\nexpiry_thresholds_days = [30, 0]\n",
                "certificates.expiry_thresholds_days",
            ),
            (
                "[certificates]\nexpiry_thresholds_days = [7, 30, 7]\n",
                "certificates.expiry_thresholds_days",
            ),
        ] {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, toml).unwrap();
            let o = Overrides {
                config: Some(path),
                ..Default::default()
            };
            let err = Settings::resolve(&o).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let o = Overrides {
            drift_check_interval_s: Some(400 * 86_400),
            ..Default::default()
        };
        let err = Settings::resolve(&o).unwrap_err().to_string();
        assert!(
            err.contains("fleet.drift_check_interval_s"),
            "a flag: {err}"
        );
    }
}
