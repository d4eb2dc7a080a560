//! The records Callhome stores, and the filters used to list them.

use callhome_core::{Imei, Role};
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

/// Changes to a user; `None` leaves a field as it is.
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
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only devices carrying this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of IMEI or name.
    pub text: Option<String>,
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
    pub imei: String,
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
    /// `user`, `api_key`, `anonymous` or `system`.
    pub actor_kind: String,
    /// What: method and route, e.g. `POST /api/v1/devices`.
    pub action: String,
    /// The object acted on, e.g. an IMEI or a certificate serial.
    pub target: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
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
    pub actor_kind: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
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
