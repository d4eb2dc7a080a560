//! The simulator's error type.

use std::path::PathBuf;

/// What went wrong while enrolling or starting simulated modems.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The REST API answered with an unexpected status.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// Status code.
        status: u16,
        /// Response body (a problem document), shortened.
        body: String,
    },
    /// The request could not be made or its answer read.
    #[error("{0}: {1}")]
    Http(String, #[source] reqwest::Error),
    /// A cache file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Key generation or certificate handling failed.
    #[error(transparent)]
    Ca(#[from] callhome_ca::CaError),
    /// TLS material is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting or argument is invalid.
    #[error("{0}")]
    Invalid(String),
}
