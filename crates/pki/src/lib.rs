//! Callhome's public-key infrastructure: the certificate authority joined to the
//! certificate inventory in the store.
//!
//! This crate owns [`CertificateService`]: signing a device CSR records the certificate in
//! the inventory; revoking records the revocation and puts a new CRL in force at once; the
//! CRL is rebuilt periodically (picking up revocations made by other nodes) and each new one
//! is announced to the TLS listeners, whose rustls configurations it keeps current.
//!
//! [`claims`] holds claim provisioning: claim certificates for production batches and
//! enrolment by claim, shared by EST and the MQTT gateway.
//!
//! [`watch`] holds the expiry watch (`certificate.expiring` events, exactly once per
//! certificate and threshold across nodes; the certificate gauges) and the certificate audit
//! checks.
//!
//! The cryptography (keys, CSR checks, CRL building, rustls configurations) is
//! `callhome-ca`'s, which knows no database; this crate is where issued and revoked
//! certificates meet `callhome-store`. It must not know about HTTP or MQTT.

#![warn(missing_docs)]

pub mod claims;
mod service;
pub mod watch;

pub use claims::{
    ClaimCsr, ClaimError, EnrollOutcome, IssuedClaim, RETRY_AFTER_S, enrollment_changed,
};
pub use service::{CRL_VALIDITY, CertificateService, ServerTlsFiles};
pub use watch::{ExpiryWatch, Finding, WatchSettings};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The CA refused the request or its cryptography failed (a bad CSR names the problem).
    #[error(transparent)]
    Ca(#[from] callhome_ca::CaError),
    /// The inventory (database) failed.
    #[error(transparent)]
    Store(#[from] callhome_store::StoreError),
}
