//! Persistence for Callhome: repository traits and their SQLite and PostgreSQL implementations.
//!
//! Owns: the schema (migrations in `migrations/{sqlite,postgres}`, run at start-up), the
//! records that are stored ([`model`]), and the repository traits ([`Store`] and its parts).
//! The SQL is written once in `src/sql/` and compiled for each backend ([`sqlite`],
//! [`postgres`]); both store timestamps as Unix epoch milliseconds so the statements are the
//! same text on both. [`open`] picks the backend from the URL scheme.
//!
//! Must not know: HTTP, MQTT, TLS, certificates' cryptography, or who is allowed to do what
//! (callers check roles before they call).
//!
//! Modules: [`model`] (records and filters), [`error`] ([`StoreError`]), `testing` (feature `testing`: fresh
//! databases for tests: a temporary SQLite file, or a private schema on the PostgreSQL named
//! by `TEST_DATABASE_URL`).

mod conv;
pub mod error;
pub mod model;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vault;

use std::sync::Arc;

use async_trait::async_trait;
use callhome_core::Imei;
use callhome_core::firmware::ExecEventKind;
use callhome_core::jobs::{ExecState, JobState};
use time::OffsetDateTime;
use uuid::Uuid;

pub use error::StoreError;
pub use model::*;
pub use vault::{MASTER_KEY_LEN, MasterKey};

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (WAL).
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Users of the API and the CLI.
#[async_trait]
pub trait Users: Send + Sync {
    /// Creates a user; [`StoreError::Conflict`] if the name is taken.
    async fn create_user(&self, user: &NewUser) -> Result<User>;
    /// A user by id.
    async fn get_user(&self, id: Uuid) -> Result<User>;
    /// A user by login name.
    async fn get_user_by_name(&self, username: &str) -> Result<User>;
    /// All users, by name.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Changes role, disabled flag or password hash; a new password hash or disabling raises
    /// the token version.
    async fn update_user(&self, id: Uuid, patch: &UserPatch) -> Result<User>;
    /// Raises the user's token version, so that every token issued before stops working.
    async fn revoke_user_tokens(&self, id: Uuid) -> Result<User>;
}

/// API keys for machine clients (the key itself is never stored, only its hash).
#[async_trait]
pub trait ApiKeys: Send + Sync {
    /// Stores a new key record; [`StoreError::Conflict`] on a prefix collision.
    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey>;
    /// The key whose public prefix is `prefix`.
    async fn get_api_key_by_prefix(&self, prefix: &str) -> Result<ApiKey>;
    /// All keys, newest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>>;
    /// Marks a key revoked; [`StoreError::Conflict`] if it already was.
    async fn revoke_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<ApiKey>;
    /// Records a use of the key.
    async fn touch_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<()>;
}

/// The device registry.
#[async_trait]
pub trait Devices: Send + Sync {
    /// Registers a device; [`StoreError::Conflict`] if the IMEI exists.
    async fn create_device(&self, device: &NewDevice) -> Result<Device>;
    /// A device by IMEI.
    async fn get_device(&self, imei: &Imei) -> Result<Device>;
    /// A page of devices in IMEI order, filtered.
    async fn list_devices(&self, filter: &DeviceFilter) -> Result<Page<Device>>;
    /// Changes name, model, tags or the disabled flag.
    async fn update_device(&self, imei: &Imei, patch: &DevicePatch) -> Result<Device>;
    /// Removes a device; its certificates stay in the inventory.
    async fn delete_device(&self, imei: &Imei) -> Result<()>;
}

/// The inventory of issued certificates.
#[async_trait]
pub trait Certificates: Send + Sync {
    /// Records an issued certificate.
    async fn insert_certificate(&self, cert: &CertificateRecord) -> Result<()>;
    /// A certificate by serial (uppercase hex).
    async fn get_certificate(&self, serial: &str) -> Result<CertificateRecord>;
    /// Every certificate issued to a device, newest first.
    async fn list_certificates(&self, imei: &Imei) -> Result<Vec<CertificateRecord>>;
    /// Marks a certificate revoked; [`StoreError::Conflict`] if it already was.
    async fn revoke_certificate(
        &self,
        serial: &str,
        revocation: &Revocation,
    ) -> Result<CertificateRecord>;
    /// Every revoked certificate that has not expired (the CRL's contents).
    async fn list_revoked_certificates(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>>;
}

/// The certificate inventory seen as a fleet: listing across devices, the expiry watch's
/// notices and counts, the audit checks' set-based queries, and each certificate's public-key
/// hash. "Active" means not revoked and `not_after` after the `now` given.
#[async_trait]
pub trait CertificateWatch: Send + Sync {
    /// A page of certificates, filtered, by `not_after` then serial.
    async fn list_all_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Page<CertificateRecord>>;
    /// Active certificates expiring by `until` that are not renewed (their device has no
    /// active certificate issued after them), with the tightest threshold already noticed,
    /// soonest first.
    async fn expiry_candidates(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<ExpiryCandidate>>;
    /// Records the notice of `serial` crossing `threshold_days` (`published`: whether an
    /// event goes with it); `true` if this call recorded it, `false` if it already was (by
    /// this node or another).
    async fn record_expiry_notice(
        &self,
        serial: &str,
        threshold_days: u32,
        published: bool,
        at: OffsetDateTime,
    ) -> Result<bool>;
    /// The thresholds noticed for `serial`, widest first, and whether each was published.
    async fn expiry_notices(&self, serial: &str) -> Result<Vec<(u32, bool)>>;
    /// Active certificates expiring within each of `days` days of `now`, in `days` order.
    async fn count_expiring(&self, now: OffsetDateTime, days: &[u32]) -> Result<Vec<i64>>;
    /// Certificates per state at `now`.
    async fn count_certificates(&self, now: OffsetDateTime) -> Result<CertificateCounts>;
    /// The device's active certificate: `preferred` (the serial of its live connection) if
    /// that one is active, else the newest active one.
    async fn active_certificate(
        &self,
        imei: &Imei,
        preferred: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<CertificateRef>>;
    /// Up to `limit` certificates whose public-key hash is not computed yet: serial and PEM.
    async fn certificates_without_public_key(&self, limit: u32) -> Result<Vec<(String, String)>>;
    /// Records a certificate's public-key hash (empty: its PEM does not parse; such rows are
    /// never reported as sharing a key).
    async fn set_certificate_public_key(&self, serial: &str, sha256: &str) -> Result<()>;
    /// Active certificates whose public key is also in an active certificate of another
    /// device, by key hash then IMEI.
    async fn shared_key_certificates(&self, now: OffsetDateTime) -> Result<Vec<CertificateRef>>;
    /// The active certificates of each device that has more than one and whose newest was
    /// issued at or before `superseded_before`, by IMEI then newest first.
    async fn multiple_active_certificates(
        &self,
        now: OffsetDateTime,
        superseded_before: OffsetDateTime,
    ) -> Result<Vec<CertificateRef>>;
    /// Revoked or expired certificates that an online device's live connection uses
    /// (`devices.cert_serial`), by IMEI.
    async fn connected_invalid_certificates(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRef>>;
}

/// The audit log: one row per state-changing call.
#[async_trait]
pub trait Audit: Send + Sync {
    /// Appends an entry.
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<()>;
    /// A page of entries, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEntry>>;
}

/// Connection state of devices, written by the gateway.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Records an accepted connection (replacing any earlier session).
    async fn mark_online(&self, imei: &Imei, rec: &OnlineRecord) -> Result<()>;
    /// Records the end of session `session_id`; does nothing (returns `false`) if a newer
    /// session has taken over.
    async fn mark_offline(&self, imei: &Imei, session_id: &str, at: OffsetDateTime)
    -> Result<bool>;
    /// Records last-seen times in bulk.
    async fn touch_last_seen(&self, seen: &[(Imei, OffsetDateTime)]) -> Result<()>;
    /// Marks offline every device whose session id is one of `sessions_prefix*` (this
    /// node's sessions from before a restart). Returns how many.
    async fn mark_node_offline(&self, session_prefix: &str, at: OffsetDateTime) -> Result<u64>;
    /// How many devices are online.
    async fn count_online(&self) -> Result<i64>;
    /// The device whose legacy MQTT user name is `username`.
    async fn get_device_by_mqtt_username(&self, username: &str) -> Result<Device>;
}

/// Status messages received from devices.
#[async_trait]
pub trait StatusLog: Send + Sync {
    /// Stores one.
    async fn append_status(&self, status: &NewStatus) -> Result<StatusRecord>;
    /// The newest for a device.
    async fn latest_status(&self, imei: &Imei) -> Result<Option<StatusRecord>>;
    /// A device's history since `since`, newest first, in pages (`before` = id cursor).
    async fn status_history(
        &self,
        imei: &Imei,
        since: Option<OffsetDateTime>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<StatusRecord>>;
    /// Deletes status received before `cutoff`. Returns how many.
    async fn prune_status(&self, cutoff: OffsetDateTime) -> Result<u64>;
}

/// The persistent per-device AT command queue.
#[async_trait]
pub trait Commands: Send + Sync {
    /// Queues a command.
    async fn enqueue_command(&self, cmd: &NewCommand) -> Result<CommandRecord>;
    /// A command by id.
    async fn get_command(&self, id: Uuid) -> Result<CommandRecord>;
    /// Commands, newest first.
    async fn list_commands(&self, filter: &CommandFilter) -> Result<Page<CommandRecord>>;
    /// The oldest queued, unexpired command of a device (FIFO head).
    async fn next_queued_command(
        &self,
        imei: &Imei,
        now: OffsetDateTime,
    ) -> Result<Option<CommandRecord>>;
    /// The device's command currently `sent`, if any.
    async fn in_flight_command(&self, imei: &Imei) -> Result<Option<CommandRecord>>;
    /// `queued` -> `sent`, counting an attempt. [`StoreError::Conflict`] if not queued any more.
    async fn mark_command_sent(&self, id: Uuid, at: OffsetDateTime) -> Result<CommandRecord>;
    /// `sent` -> final. [`StoreError::Conflict`] if not `sent`.
    async fn complete_command(&self, id: Uuid, outcome: &CommandOutcome) -> Result<CommandRecord>;
    /// `sent` -> `queued` for another attempt, noting why.
    async fn requeue_command(&self, id: Uuid, error: &str) -> Result<CommandRecord>;
    /// `queued` -> `cancelled`. [`StoreError::Conflict`] if not queued.
    async fn cancel_command(&self, id: Uuid, at: OffsetDateTime) -> Result<CommandRecord>;
    /// Records a reply that came after the command had timed out.
    async fn record_late_reply(&self, id: Uuid, reply: &str, at: OffsetDateTime) -> Result<()>;
    /// Queued commands whose expiry has passed -> `expired`. Returns them.
    async fn expire_commands(&self, now: OffsetDateTime) -> Result<Vec<CommandRecord>>;
    /// Every `sent` command (for the timeout sweeper after a restart).
    async fn sent_commands(&self) -> Result<Vec<CommandRecord>>;
    /// Devices with at least one queued command.
    async fn devices_with_queued_commands(&self) -> Result<Vec<Imei>>;
    /// How many commands of a device are `queued` (the per-device queue cap).
    async fn count_queued_commands(&self, imei: &Imei) -> Result<i64>;
}

/// Meter-reading sessions.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Opens a session; [`StoreError::Conflict`] naming the open session's id if the device
    /// has one already.
    async fn create_session(&self, s: &NewSession) -> Result<SessionRecord>;
    /// A session by id.
    async fn get_session(&self, id: Uuid) -> Result<SessionRecord>;
    /// The device's open (not closed) session.
    async fn open_session_of(&self, imei: &Imei) -> Result<Option<SessionRecord>>;
    /// A device's sessions, newest first.
    async fn list_sessions(
        &self,
        imei: &Imei,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<SessionRecord>>;
    /// Applies `update` unless the session is already closed ([`StoreError::Conflict`]).
    /// States only move forward: `modem_connected` / `reader_connected` do not replace a
    /// session that is already past `requested` (the two ends race to attach).
    async fn update_session(&self, id: Uuid, update: &SessionUpdate) -> Result<SessionRecord>;
    /// Marks the reader token used, if it matches and was not used. Returns whether it did.
    async fn consume_session_token(&self, id: Uuid, token_hash: &str) -> Result<bool>;
    /// Closes every open session with `reason` (at start-up: left over by the previous run).
    async fn close_open_sessions(
        &self,
        reason: callhome_core::CloseReason,
        at: OffsetDateTime,
    ) -> Result<u64>;
}

/// The allow-list of direct-session targets (managed by admins).
#[async_trait]
pub trait SessionTargets: Send + Sync {
    /// Adds an entry.
    async fn create_session_target(&self, t: &NewSessionTarget) -> Result<SessionTarget>;
    /// Every entry, oldest first.
    async fn list_session_targets(&self) -> Result<Vec<SessionTarget>>;
    /// Removes an entry; [`StoreError::NotFound`] if there is none with that id.
    async fn delete_session_target(&self, id: Uuid) -> Result<SessionTarget>;
}

/// Fleet configuration: profiles and per-device configuration state.
#[async_trait]
pub trait Configuration: Send + Sync {
    /// Writes a profile: creates it at version 1, or adds the next version.
    async fn put_profile(&self, p: &NewProfileVersion) -> Result<ProfileRecord>;
    /// A profile at `version` (the current one if `None`).
    async fn get_profile(&self, name: &str, version: Option<i64>) -> Result<ProfileRecord>;
    /// Every profile at its current version, by name.
    async fn list_profiles(&self) -> Result<Vec<ProfileRecord>>;
    /// Deletes a profile and its versions.
    async fn delete_profile(&self, name: &str) -> Result<()>;
    /// The profile that applies to a device with `tags` (highest priority, then name).
    async fn profile_for_tags(&self, tags: &[String]) -> Result<Option<ProfileRecord>>;
    /// A device's configuration state (defaults when none was written).
    async fn get_device_config(&self, imei: &Imei) -> Result<DeviceConfigRecord>;
    /// Replaces a device's overrides (JSON object text) and its Config.txt layout
    /// (`None`: it follows its profile's).
    async fn set_overrides(
        &self,
        imei: &Imei,
        overrides: &str,
        document: Option<&str>,
        by: &str,
    ) -> Result<DeviceConfigRecord>;
    /// Records the configuration the modem reported.
    async fn set_reported(&self, imei: &Imei, config: &str, at: OffsetDateTime) -> Result<()>;
    /// Up to `limit` online, enabled devices whose drift was last checked before `before`
    /// (or never), the longest unchecked first.
    async fn devices_due_for_drift_check(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Imei>>;
    /// Records the drift state.
    async fn set_drift(
        &self,
        imei: &Imei,
        drift: callhome_core::DriftState,
        keys: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// Records the drift state computed from the configuration reported at `reported_at`,
    /// unless a newer report came in meanwhile (whose own check then decides); whether it
    /// was recorded.
    async fn set_drift_if_reported(
        &self,
        imei: &Imei,
        drift: callhome_core::DriftState,
        keys: Option<&str>,
        at: OffsetDateTime,
        reported_at: OffsetDateTime,
    ) -> Result<bool>;
}

/// Bulk jobs and their per-device executions.
///
/// State changes are conditional updates (`... WHERE state = <expected>`), so two callers
/// racing (an operator's pause and the engine's completion, or two nodes) cannot both win:
/// the loser gets [`StoreError::Conflict`].
#[async_trait]
pub trait Jobs: Send + Sync {
    /// Creates a job and one pending execution per target device, in one transaction.
    async fn create_job(&self, job: &NewJob) -> Result<JobRecord>;
    /// A job by id.
    async fn get_job(&self, id: Uuid) -> Result<JobRecord>;
    /// Jobs, newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Page<JobRecord>>;
    /// Jobs that are running or paused (to resume after a restart).
    async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>>;
    /// Moves a job from one of `from` to `to` (recording `reason`; `finished_at` when `to`
    /// is final); [`StoreError::Conflict`] naming the current state otherwise.
    async fn set_job_state(
        &self,
        id: Uuid,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<JobRecord>;
    /// Takes or renews the lease on running a job for `node` until `until`: granted when no
    /// node holds it, `node` already does, or the holder's lease ran out before `now`.
    async fn claim_job(
        &self,
        id: Uuid,
        node: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool>;
    /// Gives the lease up (when the runner stops).
    async fn release_job(&self, id: Uuid, node: &str) -> Result<()>;
    /// Records the wave now allowed to start.
    async fn set_job_wave(&self, id: Uuid, wave: i64) -> Result<()>;
    /// Executions by state, and per-wave totals.
    async fn job_progress(&self, id: Uuid) -> Result<JobProgress>;
    /// Up to `limit` pending executions of waves up to `max_wave` whose device is online and
    /// enabled, in rollout order.
    async fn next_job_devices(&self, id: Uuid, max_wave: i64, limit: u32) -> Result<Vec<Imei>>;
    /// Starts several executions at once (one statement): those still `pending` go
    /// `in_progress` with one more attempt and are returned; the others are left alone.
    async fn start_job_devices(
        &self,
        id: Uuid,
        imeis: &[Imei],
        at: OffsetDateTime,
    ) -> Result<Vec<JobDeviceRecord>>;
    /// Ends an execution: `in_progress` -> `end.state` with its error, result (JSON) and
    /// outcome.
    async fn finish_job_device(
        &self,
        id: Uuid,
        imei: &Imei,
        end: &ExecutionEnd<'_>,
    ) -> Result<JobDeviceRecord>;
    /// Executions in progress (to take over after a restart).
    async fn in_progress_job_devices(&self, id: Uuid) -> Result<Vec<JobDeviceRecord>>;
    /// Ends every pending execution as `state` (`cancelled` or `expired`); returns how many.
    async fn close_pending_job_devices(
        &self,
        id: Uuid,
        state: ExecState,
        at: OffsetDateTime,
    ) -> Result<u64>;
    /// Executions of a job, in rollout order.
    async fn list_job_devices(&self, filter: &JobDeviceFilter) -> Result<Page<JobDeviceRecord>>;
    /// One execution.
    async fn get_job_device(&self, id: Uuid, imei: &Imei) -> Result<JobDeviceRecord>;
}

/// Retention: old rows deleted a batch at a time. Each call deletes at most `limit` rows
/// older than `before` in one short statement and returns how many; callers repeat until a
/// call returns 0. Rows in use are never deleted.
#[async_trait]
pub trait Retention: Send + Sync {
    /// Audit rows written before `before`, oldest first.
    async fn prune_audit(&self, before: OffsetDateTime, limit: u32) -> Result<u64>;
    /// Finished commands (neither `queued` nor `sent`) created before `before`.
    async fn prune_commands(&self, before: OffsetDateTime, limit: u32) -> Result<u64>;
    /// Closed sessions closed before `before`.
    async fn prune_sessions(&self, before: OffsetDateTime, limit: u32) -> Result<u64>;
    /// Jobs in a final state that finished before `before`: up to `limit` of their
    /// executions, or, once they have none left, up to `limit` of the jobs themselves.
    async fn prune_jobs(&self, before: OffsetDateTime, limit: u32) -> Result<u64>;
}

/// The firmware repository's records, the firmware each device reports, and the download
/// tokens and event logs of firmware campaigns.
#[async_trait]
pub trait Firmware: Send + Sync {
    /// Adds a firmware; a conflict names the firmware that already has this SHA-256.
    async fn create_firmware(&self, fw: &FirmwareRecord) -> Result<FirmwareRecord>;
    /// One firmware.
    async fn get_firmware(&self, id: Uuid) -> Result<FirmwareRecord>;
    /// The firmware whose file has this SHA-256, if any.
    async fn firmware_by_sha256(&self, sha256: &str) -> Result<Option<FirmwareRecord>>;
    /// Firmware, newest first; `before` is the page cursor (an id).
    async fn list_firmware(&self, before: Option<Uuid>, limit: u32)
    -> Result<Page<FirmwareRecord>>;
    /// Removes a firmware's record; a conflict while a running or paused campaign uses it.
    async fn delete_firmware(&self, id: Uuid) -> Result<FirmwareRecord>;
    /// Devices per reported model and version, most devices first.
    async fn firmware_distribution(&self) -> Result<Vec<DistributionRow>>;
    /// Records what a device reported of its firmware (`None`: not in this report). When
    /// the version or model differs from the stored one, updates the device and appends
    /// to its history; returns the previous version and model when something changed.
    async fn report_device_firmware(
        &self,
        imei: &Imei,
        model: Option<&str>,
        version: Option<&str>,
        source: &str,
        at: OffsetDateTime,
    ) -> Result<Option<(Option<String>, Option<String>)>>;
    /// What a device reported over time, newest first.
    async fn device_firmware_history(
        &self,
        imei: &Imei,
        limit: u32,
    ) -> Result<Vec<FirmwareHistoryEntry>>;
    /// Creates the download token of an execution attempt, or returns the one it already
    /// has (a resumed execution sends the same command again).
    async fn create_download(&self, d: &NewDownload) -> Result<DownloadRecord>;
    /// A download token by the SHA-256 of the token.
    async fn get_download(&self, token_hash: &str) -> Result<DownloadRecord>;
    /// The download token of an execution attempt, if it has one.
    async fn download_of(
        &self,
        job_id: Uuid,
        imei: &Imei,
        attempt: i64,
    ) -> Result<Option<DownloadRecord>>;
    /// Counts one answered download request.
    async fn record_download(
        &self,
        token_hash: &str,
        p: &DownloadProgress,
    ) -> Result<DownloadRecord>;
    /// Records a refused request (why; the token stays as it was otherwise).
    async fn record_download_refusal(&self, token_hash: &str, why: &str) -> Result<()>;
    /// Records the install status the modem posted.
    async fn record_install_notify(
        &self,
        token_hash: &str,
        code: i64,
        message: &str,
        at: OffsetDateTime,
    ) -> Result<DownloadRecord>;
    /// Closes an execution's download tokens (refused from then on).
    async fn close_downloads(&self, job_id: Uuid, imei: &Imei, at: OffsetDateTime) -> Result<()>;
    /// Appends to an execution's event log (`detail`: JSON).
    async fn append_job_event(
        &self,
        job_id: Uuid,
        imei: &Imei,
        kind: ExecEventKind,
        detail: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// An execution's event log, oldest first (at most the last 1000 entries).
    async fn list_job_events(&self, job_id: Uuid, imei: &Imei) -> Result<Vec<ExecEventRecord>>;
}

/// Bootstrap secrets: one per device at most, single use, authenticating a first EST
/// enrolment.
#[async_trait]
pub trait BootstrapSecrets: Send + Sync {
    /// Stores `secret` as the device's only one, replacing any other.
    async fn put_bootstrap_secret(&self, secret: &BootstrapSecret) -> Result<()>;
    /// Stores `secret` only if the device has none now (puts back a secret that a refused
    /// enrolment had consumed); whether it was stored.
    async fn restore_bootstrap_secret(&self, secret: &BootstrapSecret) -> Result<bool>;
    /// The device's secret, expired or not.
    async fn get_bootstrap_secret(&self, imei: &Imei) -> Result<Option<BootstrapSecret>>;
    /// Deletes the device's secret if it is still the one hashed `secret_hash` and has not
    /// expired at `now`; whether it was (of two concurrent callers, only one gets `true`).
    async fn consume_bootstrap_secret(
        &self,
        imei: &Imei,
        secret_hash: &str,
        now: OffsetDateTime,
    ) -> Result<bool>;
    /// Withdraws the device's secret; whether there was one.
    async fn delete_bootstrap_secret(&self, imei: &Imei) -> Result<bool>;
}

/// Claim credentials of production batches and the enrolments made with them.
#[async_trait]
pub trait Claims: Send + Sync {
    /// Stores a new claim (`Conflict` naming it when the name or serial is taken).
    async fn create_claim(&self, claim: &ClaimRecord) -> Result<ClaimRecord>;
    /// One claim.
    async fn get_claim(&self, id: Uuid) -> Result<ClaimRecord>;
    /// The claim whose claim certificate has this serial, if any.
    async fn claim_by_serial(&self, serial: &str) -> Result<Option<ClaimRecord>>;
    /// Claims, newest first, before the cursor `before`.
    async fn list_claims(&self, before: Option<Uuid>, limit: u32) -> Result<Page<ClaimRecord>>;
    /// Revokes a claim (`Conflict` if it already is).
    async fn revoke_claim(&self, id: Uuid, at: OffsetDateTime, by: &str) -> Result<ClaimRecord>;
    /// Claims revoked whose certificate has not expired at `now` (for the CRL).
    async fn revoked_claims(&self, now: OffsetDateTime) -> Result<Vec<ClaimRecord>>;
    /// Records a new enrolment, taking one of its claim's slots in the same transaction:
    /// `None` when the claim is revoked, expired at `now` or has no slot left (of two
    /// concurrent callers for the last slot, only one gets it). `Conflict` when the IMEI
    /// already has a live (not rejected) enrolment under this claim.
    async fn create_enrollment(
        &self,
        enrollment: &EnrollmentRecord,
        now: OffsetDateTime,
    ) -> Result<Option<EnrollmentRecord>>;
    /// One enrolment.
    async fn get_enrollment(&self, id: Uuid) -> Result<EnrollmentRecord>;
    /// The newest enrolment of `imei` under the claim, if any.
    async fn latest_enrollment(
        &self,
        claim_id: Uuid,
        imei: &Imei,
    ) -> Result<Option<EnrollmentRecord>>;
    /// Enrolments, newest first.
    async fn list_enrollments(&self, filter: &EnrollmentFilter) -> Result<Page<EnrollmentRecord>>;
    /// Decides a pending enrolment: `to` is `Approved` or `Rejected` (a rejection gives its
    /// slot back). `Conflict` naming its state when it is not pending (of two concurrent
    /// deciders, only one succeeds).
    async fn decide_enrollment(
        &self,
        id: Uuid,
        to: callhome_core::claims::EnrollmentState,
        by: &str,
        at: OffsetDateTime,
        reason: Option<&str>,
    ) -> Result<EnrollmentRecord>;
    /// Marks an approved enrolment issued with the certificate `serial`.
    async fn finish_enrollment(&self, id: Uuid, serial: &str) -> Result<EnrollmentRecord>;
    /// Undoes an approval whose certificate could not be issued: an automatic one is
    /// deleted (giving its slot back), an operator's goes back to pending.
    async fn undo_approval(&self, id: Uuid) -> Result<()>;
}

/// Everything Callhome stores, behind one handle.
#[async_trait]
pub trait Store:
    Users
    + ApiKeys
    + Devices
    + Certificates
    + CertificateWatch
    + Audit
    + Presence
    + StatusLog
    + Commands
    + Sessions
    + SessionTargets
    + Configuration
    + Jobs
    + Retention
    + Firmware
    + BootstrapSecrets
    + Claims
    + Send
    + Sync
    + 'static
{
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// Checks that the database answers (readiness).
    async fn ping(&self) -> Result<()>;
    /// Closes the pool, waiting for connections to be returned.
    async fn close(&self);
    /// Tells every node sharing this database (this one included) about `change`:
    /// PostgreSQL `NOTIFY` on the channel [`CHANGES_CHANNEL`] (suffixed `_<schema>` when the
    /// connection's schema is not `public`), sent when the statement commits. Nothing on SQLite, where one node owns the database.
    async fn announce(&self, change: &callhome_core::ClusterChange) -> Result<()>;
    /// The changes announced by any node, as they arrive (`LISTEN`), until the receiver is
    /// dropped; `None` on SQLite. When the listening connection is lost and comes back,
    /// [`callhome_core::ClusterChange::Resync`] is delivered: what was announced meanwhile
    /// is lost, so the node re-reads it.
    async fn changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<callhome_core::ClusterChange>>>;
}

/// The PostgreSQL channel of [`Store::announce`].
pub const CHANGES_CHANNEL: &str = "callhome_changes";

/// Options for [`open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a connection from the pool.
    pub acquire_timeout: std::time::Duration,
    /// Key that secret Config.txt values are encrypted with at rest (see [`vault`]). `None`:
    /// they are written as plaintext and read as stored. With a key, opening checks it
    /// against the one the database was first used with and refuses another
    /// ([`StoreError::MasterKey`]).
    pub master_key: Option<MasterKey>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(10),
            master_key: None,
        }
    }
}

/// Opens the database named by `url` (`sqlite://PATH` or `postgres://...`), creating a
/// SQLite file if needed, and runs the migrations.
pub async fn open(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqlStore::open(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::SqlStore::open(url, options).await?))
    } else {
        Err(StoreError::InvalidUrl(format!(
            "unsupported database URL scheme in {:?}; use sqlite://PATH or postgres://...",
            redact_url(url)
        )))
    }
}

/// A database URL with any password replaced by `***`, for logs and errors: the password of
/// the user-info (`postgres://user:secret@host/db`, even when the password holds `/`, `?`,
/// `#` or `@`) and every query parameter whose name ends in `password`, in any case
/// (`?password=`, `sslpassword=`). When in doubt it hides more, never less.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    // The user-info ends at the last `@`: a password may hold characters that end an
    // authority (`/`, `?`, `#`) or an `@` of its own.
    // But an `@` after a `?` with no `:` before it is in the query (`?password=a@b`).
    let in_query = |at: usize| {
        rest.find('?')
            .is_some_and(|q| q < at && !rest[..q].contains(':'))
    };
    let (userinfo, after) = match rest.rfind('@') {
        Some(i) if !in_query(i) => (Some(&rest[..i]), &rest[i + 1..]),
        _ => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(ui) = userinfo {
        match ui.split_once(':') {
            Some((user, _)) if !user.contains(['/', '?', '#']) => {
                out.push_str(user);
                out.push_str(":***@");
            }
            // A `:` after a `/`, `?` or `#`: no telling what is what; hide it all.
            Some(_) => out.push_str("***@"),
            // No `:`: a user name only.
            None => {
                out.push_str(ui);
                out.push('@');
            }
        }
    }
    out.push_str(&redact_query(after));
    out
}

/// `text` with the value of every `?`/`&` parameter named `*password` replaced by `***`.
fn redact_query(text: &str) -> String {
    let Some((base, query)) = text.split_once('?') else {
        return text.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().ends_with("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url(
                "postgres://u@db/x?sslmode=verify-full&password=s3cret&PGSSLPASSWORD=k"
            ),
            "postgres://u@db/x?sslmode=verify-full&password=***&PGSSLPASSWORD=***"
        );
        assert_eq!(
            super::redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(super::redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(
            super::redact_url("sqlite://data/x.db"),
            "sqlite://data/x.db"
        );
        // `?password=` and its relatives, in any case and position.
        for (url, want) in [
            (
                "postgres://db/x?password=s3cret",
                "postgres://db/x?password=***",
            ),
            (
                "postgresql://u@db:5432/x?sslmode=require&Password=s3cret&application_name=ch",
                "postgresql://u@db:5432/x?sslmode=require&Password=***&application_name=ch",
            ),
            (
                "postgres://db/x?user=u&sslpassword=k3y&password=",
                "postgres://db/x?user=u&sslpassword=***&password=***",
            ),
            // Passwords holding characters that end an authority, or an `@`.
            ("postgres://u:pa/ss@db/x", "postgres://u:***@db/x"),
            ("postgres://u:pa?ss@db/x", "postgres://u:***@db/x"),
            ("postgres://u:p@ss#w@db/x", "postgres://u:***@db/x"),
            (
                "postgres://u:pw@db/x?password=also",
                "postgres://u:***@db/x?password=***",
            ),
            (
                "postgres://db/x?password=s3@cret",
                "postgres://db/x?password=***",
            ),
            // An `@` in a query value: nothing secret, nothing hidden.
            (
                "postgres://db/x?application_name=a@b",
                "postgres://db/x?application_name=a@b",
            ),
        ] {
            let got = super::redact_url(url);
            assert_eq!(got, want, "{url}");
            for secret in ["s3cret", "cret", "k3y", "pa/ss", "pa?ss", "p@ss", "also"] {
                assert!(!got.contains(secret), "{url} -> {got}");
            }
        }
    }
}
