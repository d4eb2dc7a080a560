//! Callhome's domain vocabulary: the types and rules every other crate agrees on.
//!
//! Owns: device identity ([`Imei`]), user roles ([`Role`]), names and tags
//! ([`Username`], [`Tag`], [`DeviceName`]), and the validation of AT command text
//! ([`AtCommand`]). Every type here has a `parse` that is the only way in, so a value
//! that exists is a valid value.
//!
//! Must not know: I/O of any kind (no files, sockets, database, clock reads beyond
//! what callers pass in), HTTP, MQTT or TLS.
//!
//! Modules:
//! - [`imei`]: the 15-digit IMEI with its Luhn check digit.
//! - [`identity`]: users, roles, tags and device names.
//! - [`at`]: AT command text as accepted from operators.
//! - [`password`]: argon2id hashing of passwords (pure computation, no I/O).
//! - [`configtxt`]: the MTX-Tunnel Config.txt: lossless parsing and rendering, the schema of
//!   known keys and its validation, placeholders, phone whitelists, diffs.
//! - [`jobs`]: rollout rules of bulk jobs (tag expressions, rates, waves, abort rule,
//!   job and execution states).
//! - [`secrets`]: masking Config.txt secrets in command text and modem replies.
//! - [`command`], [`session`], [`audit`]: the closed vocabularies of commands, meter-reading
//!   sessions and the audit log (states, modes, close reasons, actor kinds), declared with
//!   [`wire_enum!`] ([`wire`]) so each stored or JSON name is spelt once.
//! - [`claims`]: claim provisioning: a batch claim's IMEI policy, approval mode and enrolment
//!   states.
//! - [`certificates`]: certificate states, the certificate audit's checks and severities,
//!   and the expiry watch's thresholds.
//! - [`events`]: the typed platform events published on the event bus and streamed as SSE.
//! - [`targets`]: the allow-list of direct-session targets (networks, ports, principals) and
//!   the reserved address classes refused unless listed explicitly.
//! - [`dialect`]: the modem command dialect: building MTX-Tunnel commands from templates,
//!   parsing them as a modem does, and reading modem replies (final result codes).

#[macro_use]
pub mod wire;
pub mod at;
pub mod audit;
pub mod certificates;
pub mod claims;
pub mod cluster;
pub mod command;
pub mod configtxt;
pub mod dialect;
pub mod events;
pub mod firmware;
pub mod identity;
pub mod imei;
pub mod jobs;
pub mod otap;
pub mod password;
pub mod secrets;
pub mod session;
pub mod targets;

pub use at::AtCommand;
pub use audit::{ActorKind, AuditOutcome};
pub use certificates::CertificateState;
pub use cluster::ClusterChange;
pub use command::CommandState;
pub use configtxt::DriftState;
pub use identity::{DeviceName, Role, Tag, Username};
pub use imei::Imei;
pub use session::{CloseReason, SessionMode, SessionState};

/// A value that failed validation: which field, and why, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The field (JSON member or Config.txt key) that was rejected.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    /// A rejection of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same rejection reported under another field name (e.g. `tags[2]`).
    #[must_use]
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}
