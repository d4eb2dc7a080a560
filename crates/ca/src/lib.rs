//! Callhome's certificate authority.
//!
//! This crate owns:
//! - the CA key material on disk (`ca.key.pem`, mode 0600, written atomically, and
//!   `ca.crt.pem`), created once and then always reloaded as it is
//!   ([`Authority::load_or_init`]);
//! - signing device CSRs, which are untrusted input: only the public key is taken from
//!   a CSR, everything else is set by the CA ([`Authority::sign_csr`]);
//! - the server's own TLS certificate, issued by the CA and renewed when needed
//!   ([`Authority::ensure_server_identity`]);
//! - building signed CRLs from a list of revoked serials ([`Authority::build_crl`]);
//! - the rustls server and client configurations built from that material, with
//!   CRL-checked client authentication ([`tls`]);
//! - small helpers: key + CSR generation for the simulator and tests, certificate
//!   inspection, and atomic 0600 secret files ([`write_secret_file`]).
//!
//! It must not know about HTTP, MQTT or the database: the inventory of issued and revoked
//! certificates, and the CRL in force built from it, are `callhome-pki`'s.

#![warn(missing_docs)]

mod authority;
mod crl;
mod csr;
mod error;
mod fs;
mod import;
mod inspect;
mod issuing;
mod server;
pub mod tls;

pub use authority::{Authority, CaParams, IssuedCertificate, IssuingCaSummary, MAX_VALIDITY_DAYS};
pub use crl::{Crl, CrlSet, RevocationReason, RevokedEntry};
pub use csr::{CheckedCsr, MAX_CSR_PEM_LEN, check_csr, generate_key_and_csr};
pub use error::CaError;
pub use fs::write_secret_file;
pub use import::{ARCHIVE_DIR, ImportOutcome, PENDING_KEY_FILE};
pub use inspect::{CertificateInfo, inspect_certificate, inspect_certificate_der};
pub use issuing::{
    CA_CERT_FILE, CA_KEY_FILE, CHAIN_FILE, RETIRED_DIR, ROOT_CERT_FILE, ROOT_KEY_FILE,
};
pub use server::{SERVER_CERT_FILE, SERVER_KEY_FILE, ServerIdentity};

/// Re-exported so callers can name the DER types used in this API without adding the
/// dependency themselves.
pub use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
