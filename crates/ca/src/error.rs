//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong in the certificate authority.
///
/// Messages are written for the operator or API user who will read them: they say
/// what was being done, which file or input was at fault and, where it helps, what
/// to do about it. None of them contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading, writing or changing the permissions of a file or directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being attempted ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its contents cannot be used (bad PEM, bad DER, wrong kind of
    /// object, broken signature, ...). The CA never replaces such a file by itself.
    #[error("{} is not usable: {reason}", path.display())]
    CorruptFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The CA private key and the CA certificate on disk do not belong together.
    #[error(
        "the CA key {} does not match the public key of the CA certificate {}; restore the matching pair from backup",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The private key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },

    /// One of the two CA files exists without the other.
    #[error(
        "the CA directory is incomplete: {} exists but {} is missing; restore it from backup (if no certificate was ever issued by this CA, remove {} to start a new one)",
        present.display(),
        missing.display(),
        present.display()
    )]
    IncompleteCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },

    /// Something that was looked up does not exist (for example no CA has been
    /// initialised in the given directory).
    #[error("{0} not found")]
    NotFound(String),

    /// A certificate signing request was rejected; the message says why.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),

    /// The common name inside a CSR is not the one the caller expected.
    #[error("CSR subject common name {found:?} does not match the expected {expected:?}")]
    SubjectMismatch {
        /// The common name the certificate is to be issued for.
        expected: String,
        /// The common name found in the CSR.
        found: String,
    },

    /// A certificate given to inspect or to trust could not be used.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    /// A revocation reason string is not one of the known reasons.
    #[error(
        "unknown revocation reason {0:?}; expected one of: unspecified, key_compromise, ca_compromise, affiliation_changed, superseded, cessation_of_operation, certificate_hold, privilege_withdrawn"
    )]
    InvalidRevocationReason(String),

    /// An argument is out of range or malformed (common name, host name, serial
    /// number, validity, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Generating a key, signing a certificate or building a CRL failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),

    /// Building a TLS configuration failed.
    #[error("TLS configuration error: {0}")]
    Tls(String),
}

impl CaError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CaError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CaError::CorruptFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn crypto(what: &str, err: impl std::fmt::Display) -> Self {
        CaError::Crypto(format!("{what}: {err}"))
    }
}
