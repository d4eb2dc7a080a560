//! Bringing a utility's own PKI: importing an issuing CA (its certificate and key, or a
//! key we made and a CSR their root signed), retiring the CA it replaces, and finally
//! removing a retired CA from trust.
//!
//! These work on the CA directory while the server is stopped; a running server picks
//! the change up at its next start.

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use time::OffsetDateTime;

use crate::CaError;
use crate::authority::{Authority, check_common_name};
use crate::fs::{ensure_dir, exists, read_text, write_public_file, write_secret_file};
use crate::inspect::parse_certificate_der;
use crate::issuing::{
    CA_CERT_FILE, CA_KEY_FILE, CHAIN_FILE, IssuingCa, RETIRED_DIR, ROOT_CERT_FILE, ROOT_KEY_FILE,
    ca_params, pem_of,
};

/// The key of an issuing CA whose CSR awaits the utility's signature.
pub const PENDING_KEY_FILE: &str = "pending.key.pem";
/// Where retired CAs removed from trust are kept (never loaded).
pub const ARCHIVE_DIR: &str = "archive";

/// What [`Authority::import_issuing_ca`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The new issuing CA: SHA-256 of its certificate, lowercase hex.
    pub fingerprint_sha256: String,
    /// Its subject.
    pub subject: String,
    /// Its end of validity.
    pub not_after: OffsetDateTime,
    /// The root its chain ends with.
    pub root_subject: String,
    /// The issuing CA it replaced, now retired (still trusted), by fingerprint.
    pub retired_fingerprint_sha256: String,
}

impl Authority {
    /// Makes a new ECDSA P-256 key for an issuing CA and returns a PEM CSR for it, to be
    /// signed by the utility's root (as a CA with path length 0). The key waits in
    /// `pending.key.pem` (mode 0600) until [`Authority::import_issuing_ca`] is given the
    /// signed certificate without a key. An earlier pending key is replaced.
    pub fn issuing_ca_csr(
        dir: &Path,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<String, CaError> {
        check_common_name(common_name)?;
        require_ca_dir(dir)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::crypto("generating the issuing CA key", e))?;
        // Only the subject: the utility's root sets the CA extensions, validity and serial.
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = ca_params(
            common_name,
            organization,
            0,
            crate::authority::now_secs(),
            1,
        )?
        .distinguished_name;
        let csr = params
            .serialize_request(&key)
            .map_err(|e| CaError::crypto("making the CSR", e))?
            .pem()
            .map_err(|e| CaError::crypto("encoding the CSR", e))?;
        write_secret_file(&dir.join(PENDING_KEY_FILE), key.serialize_pem().as_bytes())?;
        Ok(csr)
    }

    /// Installs an issuing CA of the utility's in `dir`: `cert_pem` (one CA certificate),
    /// its private key (`key_pem`, or the pending key made by
    /// [`Authority::issuing_ca_csr`] when `None`), and `chain_pem`, the certificates
    /// above it up to the utility's root (none when the certificate is itself a root).
    ///
    /// Everything is checked before anything is written: the key matches the
    /// certificate, the certificate is a CA allowed to sign certificates and valid now,
    /// and the chain verifies link by link up to a self-signed root. The issuing CA it
    /// replaces is retired (moved under `retired/`, with its root key if present): its
    /// devices still connect and its CRL is still signed, until
    /// [`Authority::remove_retired`] removes it from trust.
    pub fn import_issuing_ca(
        dir: &Path,
        cert_pem: &str,
        key_pem: Option<&str>,
        chain_pem: Option<&str>,
    ) -> Result<ImportOutcome, CaError> {
        require_ca_dir(dir)?;
        let pending = dir.join(PENDING_KEY_FILE);
        let key_text = match key_pem {
            Some(k) => k.to_owned(),
            None if exists(&pending)? => read_text(&pending)?,
            None => {
                return Err(CaError::InvalidInput(
                    "no private key: give the CA's key, or make a CSR first so that its key waits in pending.key.pem".into(),
                ));
            }
        };
        let key = KeyPair::from_pem(&key_text).map_err(|e| {
            CaError::InvalidInput(format!("the private key is not a PKCS#8 PEM key: {e}"))
        })?;
        {
            let ders = crate::inspect::parse_certificate_pems(cert_pem)
                .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
            let [der] = ders.as_slice() else {
                return Err(CaError::InvalidCertificate(format!(
                    "expected exactly one CA certificate, found {} (put the ones above it in the chain)",
                    ders.len()
                )));
            };
            let cert = parse_certificate_der(der)
                .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
            crate::issuing::check_ca(&cert).map_err(CaError::InvalidCertificate)?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::InvalidInput(
                    "the private key does not match the CA certificate".into(),
                ));
            }
            let now = OffsetDateTime::now_utc();
            let validity = cert.validity();
            if validity.not_after.to_datetime() <= now {
                return Err(CaError::InvalidCertificate(format!(
                    "the CA certificate expired on {}",
                    validity.not_after.to_datetime()
                )));
            }
            if validity.not_before.to_datetime() > now {
                return Err(CaError::InvalidCertificate(format!(
                    "the CA certificate is not valid before {}",
                    validity.not_before.to_datetime()
                )));
            }
        }
        let label = |what: &str| PathBuf::from(what);
        let new = IssuingCa::from_pems(
            key,
            cert_pem,
            chain_pem,
            &label("the private key"),
            &label("the CA certificate"),
            &label("the chain"),
        )
        .map_err(|e| match e {
            CaError::CorruptFile { path, reason } => {
                CaError::InvalidCertificate(format!("{}: {reason}", path.display()))
            }
            other => other,
        })?;
        let old = IssuingCa::load(dir)?;
        if old.fingerprint() == new.fingerprint() {
            return Err(CaError::InvalidInput(
                "this CA certificate is already the issuing CA".into(),
            ));
        }

        // Keep the old CA first (a copy under retired/), then replace the files: at no
        // moment is the directory without a CA that a restart would replace silently.
        let stamp = OffsetDateTime::now_utc().unix_timestamp();
        let fingerprint = old.fingerprint();
        let retired_dir = dir
            .join(RETIRED_DIR)
            .join(format!("{stamp:012}-{}", &fingerprint[..16]));
        ensure_dir(&dir.join(RETIRED_DIR))?;
        ensure_dir(&retired_dir)?;
        for (name, secret) in [
            (CA_KEY_FILE, true),
            (CA_CERT_FILE, false),
            (CHAIN_FILE, false),
            (ROOT_KEY_FILE, true),
            (ROOT_CERT_FILE, false),
        ] {
            let from = dir.join(name);
            if !exists(&from)? {
                continue;
            }
            let bytes = read_text(&from)?;
            if secret {
                write_secret_file(&retired_dir.join(name), bytes.as_bytes())?;
            } else {
                write_public_file(&retired_dir.join(name), bytes.as_bytes())?;
            }
        }
        write_secret_file(
            &dir.join(CA_KEY_FILE),
            new.issuer.key().serialize_pem().as_bytes(),
        )?;
        match chain_pem {
            Some(_) => {
                let chain: String = new.above.iter().map(|l| pem_of(&l.der)).collect();
                write_public_file(&dir.join(CHAIN_FILE), chain.as_bytes())?;
            }
            None => remove_if_present(&dir.join(CHAIN_FILE))?,
        }
        write_public_file(&dir.join(CA_CERT_FILE), cert_pem.as_bytes())?;
        for name in [ROOT_KEY_FILE, ROOT_CERT_FILE, PENDING_KEY_FILE] {
            remove_if_present(&dir.join(name))?;
        }
        let subject = |der: &[u8]| {
            parse_certificate_der(der)
                .map(|c| c.subject().to_string())
                .unwrap_or_default()
        };
        let outcome = ImportOutcome {
            fingerprint_sha256: new.fingerprint(),
            subject: subject(&new.cert.der),
            not_after: new.not_after,
            root_subject: subject(&new.root().der),
            retired_fingerprint_sha256: fingerprint,
        };
        tracing::warn!(
            new = %outcome.fingerprint_sha256,
            retired = %outcome.retired_fingerprint_sha256,
            "issuing CA imported; the previous one is retired but still trusted"
        );
        Ok(outcome)
    }

    /// Removes a retired issuing CA from trust: its devices can no longer connect. It is
    /// moved to `archive/`, never deleted. `fingerprint` is its SHA-256 fingerprint or an
    /// unambiguous prefix of it (at least 8 hex digits). Returns the full fingerprint.
    pub fn remove_retired(dir: &Path, fingerprint: &str) -> Result<String, CaError> {
        let wanted = fingerprint.trim().to_ascii_lowercase().replace(':', "");
        if wanted.len() < 8 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CaError::InvalidInput(
                "give the retired CA's SHA-256 fingerprint (at least 8 hex digits)".into(),
            ));
        }
        let retired = dir.join(RETIRED_DIR);
        let mut matches = Vec::new();
        if exists(&retired)? {
            for entry in
                std::fs::read_dir(&retired).map_err(|e| CaError::io("read", &retired, e))?
            {
                let path = entry.map_err(|e| CaError::io("read", &retired, e))?.path();
                if !path.is_dir() {
                    continue;
                }
                let ca = IssuingCa::load(&path)?;
                if ca.fingerprint().starts_with(&wanted) {
                    matches.push((path, ca.fingerprint()));
                }
            }
        }
        let (path, full) = match matches.len() {
            0 => {
                return Err(CaError::NotFound(format!(
                    "retired CA with fingerprint {wanted}"
                )));
            }
            1 => matches.remove(0),
            n => {
                return Err(CaError::InvalidInput(format!(
                    "{n} retired CAs start with {wanted}: give more digits"
                )));
            }
        };
        let archive = dir.join(ARCHIVE_DIR);
        ensure_dir(&archive)?;
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let to = archive.join(name);
        std::fs::rename(&path, &to).map_err(|e| CaError::io("move", &path, e))?;
        tracing::warn!(fingerprint = %full, "retired CA removed from trust");
        Ok(full)
    }
}

fn require_ca_dir(dir: &Path) -> Result<(), CaError> {
    if exists(&dir.join(CA_CERT_FILE))? && exists(&dir.join(CA_KEY_FILE))? {
        Ok(())
    } else {
        Err(CaError::NotFound(format!(
            "certificate authority in {} (start the server once first)",
            dir.display()
        )))
    }
}

fn remove_if_present(path: &Path) -> Result<(), CaError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CaError::io("remove", path, e)),
    }
}
