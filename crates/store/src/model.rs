//! The records Callhome stores, and the filters used to list them.

use callhome_core::firmware::{ExecEventKind, FirmwareKind, UpdateOutcome};
use callhome_core::jobs::{ExecState, JobState};
use callhome_core::{ActorKind, AuditOutcome, CloseReason, DriftState, Imei, Role, SessionMode};
pub use callhome_core::{CommandState, SessionState};
use time::OffsetDateTime;
use uuid::Uuid;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Login name (unique).
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// A disabled user cannot log in, and its tokens stop working.
    pub disabled: bool,
    /// Raised by a password change, by disabling the user and by
    /// [`crate::Users::revoke_user_tokens`]; tokens issued with an older version are refused.
    pub token_version: i64,
    /// When created.
    pub created_at: OffsetDateTime,
    /// When last changed.
    pub updated_at: OffsetDateTime,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
}

/// Changes to a user; `None` leaves a field as it is. A new password hash or `disabled:
/// true` also raises the user's token version (its existing tokens stop working).
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// New argon2 PHC string.
    pub password_hash: Option<String>,
}

/// An API key record. The secret part of the key is stored only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Stable id.
    pub id: Uuid,
    /// What the key is for, as its creator described it.
    pub name: String,
    /// The public part of the key, used to find it.
    pub prefix: String,
    /// Hex SHA-256 of the whole key.
    pub key_hash: String,
    /// What the key may do.
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// When created.
    pub created_at: OffsetDateTime,
    /// After this the key no longer works.
    pub expires_at: Option<OffsetDateTime>,
    /// Last successful use.
    pub last_used_at: Option<OffsetDateTime>,
    /// When revoked.
    pub revoked_at: Option<OffsetDateTime>,
}

/// An API key to store.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Description.
    pub name: String,
    /// Public prefix.
    pub prefix: String,
    /// Hex SHA-256 of the whole key.
    pub key_hash: String,
    /// Role.
    pub role: Role,
    /// Creator.
    pub created_by: String,
    /// Optional expiry.
    pub expires_at: Option<OffsetDateTime>,
}

/// A registered modem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device's identity.
    pub imei: Imei,
    /// Operator-given name.
    pub name: Option<String>,
    /// Modem model (e.g. the MTX model number).
    pub model: Option<String>,
    /// Tags, in the order given.
    pub tags: Vec<String>,
    /// A disabled device may not connect.
    pub disabled: bool,
    /// When registered.
    pub created_at: OffsetDateTime,
    /// When last changed.
    pub updated_at: OffsetDateTime,
    /// Connection state, as the gateway last recorded it.
    pub presence: PresenceInfo,
    /// MQTT topics and optional legacy credentials.
    pub mqtt: MqttIdentity,
    /// The firmware version the device last reported (`VERSION` reply or status message).
    pub firmware_version: Option<String>,
    /// When it reported its firmware version or model last changed.
    pub firmware_reported_at: Option<OffsetDateTime>,
}

/// Where a device is on the command channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceInfo {
    /// Connected now.
    pub online: bool,
    /// Gateway session id of the current (or last) connection.
    pub session_id: Option<String>,
    /// When the current (or last) connection was accepted.
    pub connected_at: Option<OffsetDateTime>,
    /// When the last connection ended.
    pub disconnected_at: Option<OffsetDateTime>,
    /// Last packet seen (recorded at connect, status, disconnect, and periodically).
    pub last_seen: Option<OffsetDateTime>,
    /// Peer address of the current (or last) connection.
    pub remote_addr: Option<String>,
    /// Serial of the client certificate it authenticated with (none for password logins).
    pub cert_serial: Option<String>,
}

/// A device's MQTT topics (`None` = the default `{IMEI}/AT`, `{IMEI}/ATR`, `{IMEI}/dns`) and
/// legacy username/password credentials for modems without client certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttIdentity {
    /// Topic the modem subscribes to for AT commands (`MQTT_attopic1`).
    pub command_topic: Option<String>,
    /// Topic the modem publishes replies on (`MQTT_atrtopic`).
    pub reply_topic: Option<String>,
    /// Topic the modem publishes status on (`DNS_mqttTopic`).
    pub status_topic: Option<String>,
    /// Legacy login name (`MQTT_login`), unique across devices.
    pub username: Option<String>,
    /// Argon2 hash of the legacy password (`MQTT_password`).
    pub password_hash: Option<String>,
    /// The modem's `MTX_IDClient`: the bytes it sends first on a tunnel (`None` = its IMEI).
    pub id_client: Option<String>,
}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Identity.
    pub imei: Imei,
    /// Name.
    pub name: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Validated tags.
    pub tags: Vec<String>,
}

/// Changes to a device; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct DevicePatch {
    /// New name or none.
    pub name: Option<Option<String>>,
    /// New model or none.
    pub model: Option<Option<String>>,
    /// Replacement tag list.
    pub tags: Option<Vec<String>>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// New command topic, or back to the default.
    pub command_topic: Option<Option<String>>,
    /// New reply topic, or back to the default.
    pub reply_topic: Option<Option<String>>,
    /// New status topic, or back to the default.
    pub status_topic: Option<Option<String>>,
    /// Legacy credentials: `Some(Some((username, hash)))` sets, `Some(None)` removes.
    pub mqtt_credentials: Option<Option<(String, String)>>,
    /// New `MTX_IDClient`, or back to the IMEI.
    pub id_client: Option<Option<String>>,
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only devices carrying this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of IMEI or name.
    pub text: Option<String>,
    /// Only devices that are (`true`) or are not (`false`) connected.
    pub online: Option<bool>,
    /// Only devices in this drift state.
    pub drift: Option<DriftState>,
    /// Only devices that reported this firmware version.
    pub firmware: Option<String>,
    /// Only devices of this model (case-insensitive).
    pub model: Option<String>,
    /// Only devices with IMEI greater than this (the page cursor).
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Cursor for the next page, if there may be one.
    pub next: Option<String>,
}

/// A certificate issued by our CA, as kept in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Serial number, uppercase hex.
    pub serial: String,
    /// The device it was issued to.
    pub imei: Imei,
    /// Subject CN.
    pub common_name: String,
    /// Hex SHA-256 of the DER.
    pub fingerprint_sha256: String,
    /// The certificate.
    pub certificate_pem: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Who asked for it.
    pub issued_by: String,
    /// When issued.
    pub created_at: OffsetDateTime,
    /// Revocation, if revoked.
    pub revocation: Option<Revocation>,
}

/// Which certificates to list (`GET /api/v1/certificates`), in `not_after` order then serial
/// ("expiring soonest first").
#[derive(Debug, Clone)]
pub struct CertificateFilter {
    /// The instant states and `expiring_within` are judged at.
    pub now: OffsetDateTime,
    /// Only certificates whose `not_after` is after `now` and at most this (expiring within
    /// a window, not already expired).
    pub expiring_before: Option<OffsetDateTime>,
    /// Only certificates in this state at `now`.
    pub state: Option<callhome_core::CertificateState>,
    /// Only this device's.
    pub imei: Option<Imei>,
    /// The page cursor: rows after this `(not_after, serial)`.
    pub after: Option<(OffsetDateTime, String)>,
    /// Page size.
    pub limit: u32,
}

/// The cursor of a certificate page: `not_after` (epoch ms) and serial, as [`Page::next`]
/// carries it.
pub fn certificate_cursor(not_after: OffsetDateTime, serial: &str) -> String {
    format!("{}:{serial}", crate::conv::ms(not_after))
}

/// Parses what [`certificate_cursor`] wrote; `None` for anything else.
pub fn parse_certificate_cursor(s: &str) -> Option<(OffsetDateTime, String)> {
    let (ms, serial) = s.split_once(':')?;
    let ms: i64 = ms.parse().ok()?;
    if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((crate::conv::from_ms(ms), serial.to_owned()))
}

/// A certificate's identity and dates, without its PEM: what the expiry watch, the audit
/// checks and the device view read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRef {
    /// Serial, uppercase hex.
    pub serial: String,
    /// The device it was issued to.
    pub imei: Imei,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// When issued.
    pub created_at: OffsetDateTime,
    /// When revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// Hex SHA-256 of its SubjectPublicKeyInfo, once computed.
    pub public_key_sha256: Option<String>,
}

/// A certificate the expiry check may have to report: active, not renewed, expiring within
/// the widest threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryCandidate {
    /// The certificate.
    pub cert: CertificateRef,
    /// The tightest threshold already recorded for it (days), if any.
    pub tightest_noticed: Option<u32>,
}

/// Certificates per state, for the `callhome_certificates` gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificateCounts {
    /// Not revoked, not expired.
    pub active: i64,
    /// Revoked.
    pub revoked: i64,
    /// Expired without being revoked.
    pub expired: i64,
}

/// When, why and by whom a certificate was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// When.
    pub at: OffsetDateTime,
    /// RFC 5280 reason name, e.g. `key_compromise`.
    pub reason: Option<String>,
    /// Who.
    pub by: String,
}

/// One audit log row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// Who: a user name, `apikey:<name>`, `anonymous` or `system`.
    pub actor: String,
    /// What kind of principal the actor is.
    pub actor_kind: ActorKind,
    /// What: method and route, e.g. `POST /api/v1/devices`.
    pub action: String,
    /// The object acted on, e.g. an IMEI or a certificate serial.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// HTTP status, where there was one.
    pub status: Option<i64>,
    /// More detail (JSON text).
    pub detail: Option<String>,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Request id, to match logs.
    pub request_id: Option<String>,
}

/// An audit entry to append.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// Kind of actor.
    pub actor_kind: ActorKind,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// HTTP status.
    pub status: Option<i64>,
    /// JSON detail.
    pub detail: Option<String>,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
}

/// Which audit rows to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only rows with id below this (the page cursor).
    pub before: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// A connection the gateway accepted.
#[derive(Debug, Clone)]
pub struct OnlineRecord {
    /// Gateway session id (unique per connection).
    pub session_id: String,
    /// When.
    pub at: OffsetDateTime,
    /// Peer address.
    pub remote_addr: String,
    /// Client certificate serial, if any.
    pub cert_serial: Option<String>,
}

/// A status message received from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// Increasing id.
    pub id: i64,
    /// Device.
    pub imei: Imei,
    /// When received.
    pub received_at: OffsetDateTime,
    /// Topic it came on.
    pub topic: String,
    /// Payload as received.
    pub payload: Vec<u8>,
    /// Parsed fields (JSON object text), when the payload was JSON or `key=value` text.
    pub parsed: Option<String>,
}

/// A status message to store.
#[derive(Debug, Clone)]
pub struct NewStatus {
    /// Device.
    pub imei: Imei,
    /// When received.
    pub received_at: OffsetDateTime,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Parsed fields (JSON object text).
    pub parsed: Option<String>,
}

/// An AT command addressed to a device, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// Id (UUIDv7: sorts by creation time).
    pub id: Uuid,
    /// Device.
    pub imei: Imei,
    /// The AT command text.
    pub command: String,
    /// State.
    pub state: CommandState,
    /// When queued.
    pub created_at: OffsetDateTime,
    /// Who queued it.
    pub created_by: String,
    /// How long to wait for the reply after sending, per attempt.
    pub timeout_ms: i64,
    /// After this a queued command is no longer sent.
    pub expires_at: OffsetDateTime,
    /// Attempts allowed (a timed-out attempt is re-sent while attempts remain).
    pub max_attempts: i64,
    /// Times sent so far.
    pub attempts: i64,
    /// When last sent.
    pub sent_at: Option<OffsetDateTime>,
    /// When it reached a final state.
    pub completed_at: Option<OffsetDateTime>,
    /// The modem's reply text.
    pub reply: Option<String>,
    /// The final result line (`OK`, `ERROR`, `+CME ERROR: 10`, ...).
    pub result: Option<String>,
    /// Why it failed, timed out, or expired, in words.
    pub error: Option<String>,
    /// A reply that arrived after the command had timed out (never matched to another).
    pub late_reply: Option<String>,
    /// When the late reply arrived.
    pub late_reply_at: Option<OffsetDateTime>,
}

/// A command to queue.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Device.
    pub imei: Imei,
    /// Validated AT command text.
    pub command: String,
    /// Who.
    pub created_by: String,
    /// Reply timeout per attempt.
    pub timeout_ms: i64,
    /// Expiry of the queued command.
    pub expires_at: OffsetDateTime,
    /// Attempts allowed (1 = never re-sent).
    pub max_attempts: i64,
}

/// How a sent command ended.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// Final state (`Succeeded`, `Failed`, `TimedOut`).
    pub state: CommandState,
    /// Reply text.
    pub reply: Option<String>,
    /// Final result line.
    pub result: Option<String>,
    /// Error in words.
    pub error: Option<String>,
    /// When.
    pub at: OffsetDateTime,
}

/// Which commands to list.
#[derive(Debug, Clone, Default)]
pub struct CommandFilter {
    /// Only this device.
    pub imei: Option<String>,
    /// Only these states.
    pub states: Vec<CommandState>,
    /// Only ids below this (page cursor; ids sort by time).
    pub before: Option<Uuid>,
    /// Only commands queued by this principal (e.g. `job:<id>`).
    pub created_by: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// A meter-reading session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Id.
    pub id: Uuid,
    /// Device.
    pub imei: Imei,
    /// How the modem reaches the reader.
    pub mode: SessionMode,
    /// State.
    pub state: SessionState,
    /// Why it closed.
    pub close_reason: Option<CloseReason>,
    /// Detail of a failure.
    pub error: Option<String>,
    /// Where the modem was told to connect.
    pub host: String,
    /// Port the modem was told to connect to.
    pub port: i64,
    /// Idle timeout, seconds.
    pub timeout_s: i64,
    /// How long the ends may take to meet, seconds.
    pub pairing_timeout_s: i64,
    /// Whether the modem's ID bytes are passed on to the reader.
    pub forward_id: bool,
    /// SHA-256 (hex) of the one-time reader token.
    pub token_hash: Option<String>,
    /// Whether the reader token has been used.
    pub token_used: bool,
    /// The TEMPORALCLIENT command.
    pub command_id: Option<Uuid>,
    /// Who asked.
    pub created_by: String,
    /// Id of the user or API key that asked (`None` for sessions from before ownership).
    pub created_by_id: Option<Uuid>,
    /// The host name the caller gave, when it was resolved to the address in `host`.
    pub requested_host: Option<String>,
    /// When asked.
    pub created_at: OffsetDateTime,
    /// When the modem connected (rendezvous).
    pub modem_connected_at: Option<OffsetDateTime>,
    /// When the reader connected (rendezvous).
    pub reader_connected_at: Option<OffsetDateTime>,
    /// When bytes started to flow.
    pub active_at: Option<OffsetDateTime>,
    /// When it closed.
    pub closed_at: Option<OffsetDateTime>,
    /// The modem's address on the tunnel listener.
    pub modem_addr: Option<String>,
    /// The reader's address.
    pub reader_addr: Option<String>,
    /// Bytes the modem sent to the reader (without the ID preamble).
    pub bytes_from_modem: i64,
    /// Bytes the reader sent to the modem.
    pub bytes_to_modem: i64,
}

/// A session to open.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Device.
    pub imei: Imei,
    /// How the modem reaches the reader.
    pub mode: SessionMode,
    /// Host for TEMPORALCLIENT.
    pub host: String,
    /// Port for TEMPORALCLIENT.
    pub port: i64,
    /// Idle timeout.
    pub timeout_s: i64,
    /// Pairing timeout.
    pub pairing_timeout_s: i64,
    /// Forward the ID bytes.
    pub forward_id: bool,
    /// SHA-256 of the reader token.
    pub token_hash: Option<String>,
    /// Who.
    pub created_by: String,
    /// Id of the user or API key that asked.
    pub created_by_id: Option<Uuid>,
    /// The host name the caller gave, when it was resolved to `host`.
    pub requested_host: Option<String>,
}

/// An entry of the direct-session allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTarget {
    /// Id.
    pub id: Uuid,
    /// Addresses the entry allows.
    pub network: callhome_core::targets::Cidr,
    /// Ports it allows.
    pub ports: callhome_core::targets::PortRange,
    /// Only these users (by name); with `api_keys` empty too: anyone who may open sessions.
    pub users: Vec<String>,
    /// Only these API keys (by id).
    pub api_keys: Vec<Uuid>,
    /// What the entry is for.
    pub note: Option<String>,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: OffsetDateTime,
}

impl SessionTarget {
    /// The entry as a rule to check requests against.
    pub fn rule(&self) -> callhome_core::targets::TargetRule {
        callhome_core::targets::TargetRule {
            network: self.network,
            ports: self.ports,
            users: self.users.clone(),
            api_keys: self.api_keys.clone(),
        }
    }
}

/// An allow-list entry to add.
#[derive(Debug, Clone)]
pub struct NewSessionTarget {
    /// Addresses.
    pub network: callhome_core::targets::Cidr,
    /// Ports.
    pub ports: callhome_core::targets::PortRange,
    /// Only these users (by name).
    pub users: Vec<String>,
    /// Only these API keys (by id).
    pub api_keys: Vec<Uuid>,
    /// What it is for.
    pub note: Option<String>,
    /// Who adds it.
    pub created_by: String,
}

/// A change of session state, written together.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// New state.
    pub state: Option<SessionState>,
    /// Close reason.
    pub close_reason: Option<CloseReason>,
    /// Error detail.
    pub error: Option<String>,
    /// The TEMPORALCLIENT command.
    pub command_id: Option<Uuid>,
    /// Modem connected at.
    pub modem_connected_at: Option<OffsetDateTime>,
    /// Reader connected at.
    pub reader_connected_at: Option<OffsetDateTime>,
    /// Active at.
    pub active_at: Option<OffsetDateTime>,
    /// Closed at.
    pub closed_at: Option<OffsetDateTime>,
    /// Modem address.
    pub modem_addr: Option<String>,
    /// Reader address.
    pub reader_addr: Option<String>,
    /// Byte counts (replace).
    pub bytes: Option<(i64, i64)>,
}

/// A version of a Config.txt profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRecord {
    /// Profile name.
    pub name: String,
    /// Devices carrying this tag get the profile.
    pub tag: Option<String>,
    /// Among several matching profiles, the highest priority wins (then the name).
    pub priority: i64,
    /// This version's number (1, 2, ...).
    pub version: i64,
    /// The newest version's number.
    pub current_version: i64,
    /// The Config.txt text of this version.
    pub config: String,
    /// When this version was written.
    pub created_at: OffsetDateTime,
    /// Who wrote it.
    pub created_by: String,
}

/// A profile to write (a new version if it exists).
#[derive(Debug, Clone)]
pub struct NewProfileVersion {
    /// Name.
    pub name: String,
    /// Assignment tag.
    pub tag: Option<String>,
    /// Priority.
    pub priority: i64,
    /// Config.txt text.
    pub config: String,
    /// Who.
    pub by: String,
}

/// A device's configuration state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceConfigRecord {
    /// Per-device overrides: JSON object of key -> value.
    pub overrides: String,
    /// The device's own Config.txt layout (as imported, values kept current); `None` when it
    /// follows its profile's.
    pub document: Option<String>,
    /// The Config.txt the modem last reported.
    pub reported: Option<String>,
    /// When it was read.
    pub reported_at: Option<OffsetDateTime>,
    /// Whether the reported configuration matches the desired one.
    pub drift: DriftState,
    /// Keys that differ (JSON array), when drifted.
    pub drift_keys: Option<String>,
    /// When drift was last checked.
    pub drift_checked_at: Option<OffsetDateTime>,
}

/// A bulk job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Id (UUID v7).
    pub id: Uuid,
    /// Operator-given name.
    pub name: Option<String>,
    /// The operation, JSON.
    pub operation: String,
    /// The target as asked for, JSON.
    pub target: String,
    /// The rollout rules, JSON.
    pub rollout: String,
    /// Restart policy of configuration operations.
    pub restart: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: OffsetDateTime,
    /// Devices not done by then expire.
    pub expires_at: OffsetDateTime,
    /// The targets in rollout order, each with its wave (1-based).
    pub devices: Vec<(Imei, u32)>,
    /// The firmware a firmware campaign installs.
    pub firmware_id: Option<Uuid>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// Id.
    pub id: Uuid,
    /// Operator-given name.
    pub name: Option<String>,
    /// The operation, JSON.
    pub operation: String,
    /// The target as asked for, JSON.
    pub target: String,
    /// The rollout rules, JSON.
    pub rollout: String,
    /// Restart policy.
    pub restart: String,
    /// Where it is.
    pub state: JobState,
    /// Why it is there (abort rule, operator...).
    pub state_reason: Option<String>,
    /// Number of target devices.
    pub total: i64,
    /// The wave now allowed to start (1-based).
    pub current_wave: i64,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: OffsetDateTime,
    /// Last state change.
    pub updated_at: OffsetDateTime,
    /// When it reached a final state.
    pub finished_at: Option<OffsetDateTime>,
    /// When pending devices expire.
    pub expires_at: OffsetDateTime,
}

/// Executions of a job by state (and the wave counts the engine needs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Every target.
    pub total: i64,
    /// Not started.
    pub pending: i64,
    /// Started.
    pub in_progress: i64,
    /// Done.
    pub succeeded: i64,
    /// Done with an error.
    pub failed: i64,
    /// Not started: cancelled or aborted.
    pub cancelled: i64,
    /// Not started: expired.
    pub expired: i64,
    /// Not run: the device did not qualify.
    pub skipped: i64,
    /// Per wave (1-based index 0 = wave 1): (devices, finished devices).
    pub waves: Vec<(i64, i64)>,
}

/// One device's execution of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDeviceRecord {
    /// The job.
    pub job_id: Uuid,
    /// The device.
    pub imei: Imei,
    /// Position in rollout order.
    pub seq: i64,
    /// Wave (1-based).
    pub wave: i64,
    /// Where it is.
    pub state: ExecState,
    /// Executions started (more than 1 only for recorded retries).
    pub attempts: i64,
    /// When the current attempt started.
    pub started_at: Option<OffsetDateTime>,
    /// When it ended.
    pub finished_at: Option<OffsetDateTime>,
    /// Why it failed.
    pub error: Option<String>,
    /// Result detail, JSON.
    pub result: Option<String>,
    /// How a firmware update ended (firmware campaigns only).
    pub outcome: Option<UpdateOutcome>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only these states.
    pub states: Vec<JobState>,
    /// Only ids below this (page cursor; newest first).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: u32,
}

/// Which executions of a job to list.
#[derive(Debug, Clone)]
pub struct JobDeviceFilter {
    /// The job.
    pub job_id: Uuid,
    /// Only this state.
    pub state: Option<ExecState>,
    /// Only devices after this position (page cursor).
    pub after_seq: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// A firmware in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareRecord {
    /// Id (UUID v7).
    pub id: Uuid,
    /// The version it installs.
    pub version: String,
    /// The models it is for.
    pub models: Vec<String>,
    /// Image or MIDlet.
    pub kind: FirmwareKind,
    /// Release notes.
    pub notes: Option<String>,
    /// Devices below this version may not take it.
    pub min_version: Option<String>,
    /// SHA-256 of the file (64 lowercase hex): its blob's address and its `ETag`.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// The signing key whose signature verified, if it was signed.
    pub signed_by: Option<String>,
    /// The JAD uploaded with a MIDlet (its `MIDlet-Jar-URL` is replaced when served).
    pub jad: Option<String>,
    /// When it was uploaded.
    pub created_at: OffsetDateTime,
    /// Who uploaded it.
    pub created_by: String,
}

/// One change in what a device reported of its firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareHistoryEntry {
    /// When.
    pub at: OffsetDateTime,
    /// Model reported.
    pub model: Option<String>,
    /// Version reported.
    pub version: Option<String>,
    /// Where it was seen: `version` (a `VERSION` reply) or `status` (a status message).
    pub source: String,
}

/// How many devices report one model and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionRow {
    /// Model (`None`: not reported).
    pub model: Option<String>,
    /// Version (`None`: not reported).
    pub version: Option<String>,
    /// Devices.
    pub devices: i64,
}

/// A download token to create for an execution attempt.
#[derive(Debug, Clone)]
pub struct NewDownload {
    /// SHA-256 (hex) of the token: the lookup key.
    pub token_hash: String,
    /// The token itself (sealed at rest when there is a master key).
    pub token: String,
    /// The campaign.
    pub job_id: Uuid,
    /// The device.
    pub imei: Imei,
    /// The execution attempt.
    pub attempt: i64,
    /// The firmware served.
    pub firmware_id: Uuid,
    /// Created at.
    pub at: OffsetDateTime,
    /// Refused after this.
    pub expires_at: OffsetDateTime,
}

/// A download token and what was served under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRecord {
    /// SHA-256 (hex) of the token.
    pub token_hash: String,
    /// The token.
    pub token: String,
    /// The campaign.
    pub job_id: Uuid,
    /// The device.
    pub imei: Imei,
    /// The execution attempt.
    pub attempt: i64,
    /// The firmware served.
    pub firmware_id: Uuid,
    /// Created at.
    pub created_at: OffsetDateTime,
    /// Refused after this.
    pub expires_at: OffsetDateTime,
    /// Download requests answered (JAD requests not counted).
    pub requests: i64,
    /// Requests that resumed a partial download (`Range` from a non-zero offset).
    pub resumptions: i64,
    /// Bytes of the file the modem received, over every request: what was written, less
    /// what a later request shows the modem did not keep (it resumed before the end of
    /// an earlier response, whose tail was lost in buffers when the link broke).
    pub bytes_served: i64,
    /// When the last byte of the file was sent (cleared when a later request shows the
    /// modem did not get it).
    pub completed_at: Option<OffsetDateTime>,
    /// Why the last refused request was refused.
    pub refused: Option<String>,
    /// The JSR-118 status the modem posted, if it did.
    pub notify_code: Option<i64>,
    /// Its message.
    pub notify_message: Option<String>,
    /// When it was posted.
    pub notified_at: Option<OffsetDateTime>,
    /// When the execution ended (the token is refused from then on).
    pub closed_at: Option<OffsetDateTime>,
}

/// What one download request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress {
    /// Offset of its first byte in the file.
    pub start: i64,
    /// Bytes of the file written to the connection.
    pub bytes: i64,
    /// It resumed a partial download.
    pub resumed: bool,
    /// It sent the file's last byte.
    pub completed: bool,
    /// When it ended.
    pub at: OffsetDateTime,
}

/// One entry of an execution's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecEventRecord {
    /// Order.
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// What.
    pub kind: ExecEventKind,
    /// Detail, JSON.
    pub detail: Option<String>,
}

/// How an execution ended, as [`crate::Jobs::finish_job_device`] records it.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionEnd<'a> {
    /// `succeeded`, `failed` or `skipped`.
    pub state: ExecState,
    /// Why it failed or was skipped.
    pub error: Option<&'a str>,
    /// Result detail, JSON.
    pub result: Option<&'a str>,
    /// How a firmware update ended.
    pub outcome: Option<UpdateOutcome>,
    /// When.
    pub at: OffsetDateTime,
}

/// A device's bootstrap secret for EST enrolment, as stored: only its argon2 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSecret {
    /// The device it authenticates (HTTP Basic user name).
    pub imei: Imei,
    /// Argon2id PHC string of the secret.
    pub secret_hash: String,
    /// After this it is refused (and no longer consumed).
    pub expires_at: OffsetDateTime,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
}

/// A claim credential of a production batch with its policy (see
/// [`callhome_core::claims`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// Stable id (UUIDv7: newer ids sort later).
    pub id: Uuid,
    /// Unique name (the claim certificate's CN is `claim:<name>`).
    pub name: String,
    /// A claim certificate issued by us, or a manufacturer's claim CA.
    pub kind: callhome_core::claims::ClaimKind,
    /// The claim certificate (or the claim CA's certificate), PEM. Its key is never stored.
    pub certificate_pem: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// The claim certificate's serial (uppercase hex), for the kind `issued`.
    pub serial: Option<String>,
    /// Which IMEIs, until when, how many, with or without approval.
    pub policy: callhome_core::claims::ClaimPolicy,
    /// Enrolments holding a slot now (pending, approved or issued).
    pub enrollments_used: i64,
    /// When created.
    pub created_at: OffsetDateTime,
    /// Who created it.
    pub created_by: String,
    /// When revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// One enrolment made with a claim credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    /// Stable id (UUIDv7).
    pub id: Uuid,
    /// The claim it was made with.
    pub claim_id: Uuid,
    /// The device it is for (the CSR's CN).
    pub imei: Imei,
    /// Where it is.
    pub state: callhome_core::claims::EnrollmentState,
    /// The CSR, PEM, signed when the enrolment is approved.
    pub csr_pem: String,
    /// SHA-256 of the CSR's SubjectPublicKeyInfo DER, lowercase hex: a retry with the same
    /// key finds this enrolment.
    pub public_key_sha256: String,
    /// When the modem asked.
    pub requested_at: OffsetDateTime,
    /// The modem's address.
    pub remote_addr: Option<String>,
    /// When approved or rejected.
    pub decided_at: Option<OffsetDateTime>,
    /// Who approved or rejected it (`policy:auto` for an automatic approval).
    pub decided_by: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The device certificate issued.
    pub certificate_serial: Option<String>,
}

/// Which enrolments to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct EnrollmentFilter {
    /// Only those in this state.
    pub state: Option<callhome_core::claims::EnrollmentState>,
    /// Only those of this claim.
    pub claim_id: Option<Uuid>,
    /// Cursor: ids before this one.
    pub before: Option<Uuid>,
    /// Page size (1-1000).
    pub limit: u32,
}
