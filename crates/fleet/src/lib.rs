//! Fleet operations: desired versus reported configuration, applying it to modems, and bulk
//! jobs rolled out under rate, wave and abort rules.
//!
//! Owns: the device's desired configuration (profile by tag + overrides, composed with
//! `callhome-core`'s Config.txt model) and its drift state ([`ConfigService`]); reading a
//! modem's configuration and applying a desired one (minimal `SETPARAM`s, restart, read-back,
//! per-key result) through the device's command queue ([`exec`]); the job engine
//! ([`JobEngine`]: persisted jobs, one driver task per active job, executions that resume
//! after a restart without repeating a command, see [`journal`]); and the periodic drift
//! check ([`drift`]).
//!
//! Must not know: HTTP, SQL (it calls `callhome-store` traits), MQTT framing or TLS (it
//! queues commands with `callhome-gateway`; certificates are signed and revoked by
//! `callhome-pki`).
//!
//! Modules: [`ops`] (job operations and targets as the API accepts them), [`config`],
//! [`journal`] (command journal), [`pacing`] (the driver's decisions), [`exec`] (one device's execution), [`firmware`] (one device's firmware update), `rotation` (one device's certificate
//! rotation), [`engine`], [`drift`].

pub mod config;
pub mod drift;
pub mod engine;
pub mod exec;
pub mod firmware;
pub mod journal;
pub mod ops;
pub mod pacing;
mod rotation;

use callhome_core::ValidationError;
use callhome_gateway::GatewayError;
use callhome_store::StoreError;

pub use config::ConfigService;
pub use engine::{EngineSettings, JobEngine};
pub use firmware::FirmwareCampaignSettings;
pub use ops::{DeviceFilterSpec, NewJobRequest, Operation, Target};

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No such device, job or profile.
    #[error("{0} not found")]
    NotFound(String),
    /// Not possible in the current state.
    #[error("{0}")]
    Conflict(String),
    /// One invalid input.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Several invalid inputs (e.g. every bad key of a configuration).
    #[error("invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    /// The modem did not do what was asked (no answer, `ERROR`, unreadable reply).
    #[error("{0}")]
    Device(String),
    /// Stored data could not be read.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The gateway failed.
    #[error(transparent)]
    Gateway(GatewayError),
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(w) => FleetError::NotFound(w),
            StoreError::Conflict { detail: w, .. } => FleetError::Conflict(w),
            other => FleetError::Store(other),
        }
    }
}

impl From<GatewayError> for FleetError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::NotFound(w) => FleetError::NotFound(w),
            GatewayError::Conflict(w) => FleetError::Conflict(w),
            GatewayError::Validation(v) => FleetError::Validation(v),
            other => FleetError::Gateway(other),
        }
    }
}

/// Result of a fleet operation.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;
