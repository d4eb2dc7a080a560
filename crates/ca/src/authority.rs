//! The certificate authority: its key and certificate on disk, device certificate
//! issuance from CSRs, and CRL signing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

use crate::CaError;
use crate::crl::{Crl, RevokedEntry, parse_serial};
use crate::csr::validate_csr;
use crate::fs::{
    ensure_dir, exists, read_text, tighten_secret_mode, write_public_file, write_secret_file,
};
use crate::inspect::{
    fingerprint_sha256, first_organization, parse_certificate_der, parse_certificate_pems,
};

/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt.pem";

/// Longest validity accepted for any certificate, in days (100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

/// How far in the past issued certificates start, to tolerate clock skew on modems.
const LEAF_BACKDATE: Duration = Duration::minutes(5);
/// How far in the past the CA certificate starts.
const CA_BACKDATE: Duration = Duration::hours(1);

/// Settings used when the CA is created and when it issues certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// Common name of the CA certificate (used only when the CA is created).
    pub common_name: String,
    /// Organization (O) of the CA certificate (used only when the CA is created).
    /// Issued certificates carry the CA certificate's organization, if any.
    pub organization: Option<String>,
    /// Validity of the CA certificate in days (used only when the CA is created).
    pub validity_days: u32,
    /// Default validity of device (client) certificates, in days.
    pub device_validity_days: u32,
    /// Validity of the server certificate, in days.
    pub server_validity_days: u32,
}

impl Default for CaParams {
    fn default() -> Self {
        CaParams {
            common_name: "Callhome Root CA".to_string(),
            organization: None,
            validity_days: 3650,
            device_validity_days: 825,
            server_validity_days: 397,
        }
    }
}

impl CaParams {
    fn validate(&self) -> Result<(), CaError> {
        check_common_name(&self.common_name)
            .map_err(|e| CaError::InvalidInput(format!("CA common name: {e}")))?;
        if let Some(org) = &self.organization {
            check_dn_value("organization", org)?;
        }
        for (what, days) in [
            ("CA validity", self.validity_days),
            ("device certificate validity", self.device_validity_days),
            ("server certificate validity", self.server_validity_days),
        ] {
            check_validity_days(what, days)?;
        }
        Ok(())
    }
}

/// A certificate issued to a device by [`Authority::sign_csr`].
///
/// The CA does not keep an inventory: the caller records this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Serial number: uppercase hex, no colons, no leading `00`.
    pub serial: String,
    /// The certificate in PEM.
    pub certificate_pem: String,
    /// The subject common name (the device identity, e.g. its IMEI).
    pub common_name: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// SHA-256 over the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,
}

/// What kind of end-entity certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeafKind {
    Client,
    Server,
}

/// The certificate authority: the CA key and certificate, loaded from (or created in)
/// a directory.
///
/// Shareable between threads (`Send + Sync`); all methods take `&self`.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// Subject key identifier of the CA certificate (for CRL authority key identifiers).
    key_id: Vec<u8>,
    organization: Option<String>,
    not_after: OffsetDateTime,
    device_validity_days: u32,
    pub(crate) server_validity_days: u32,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint_sha256", &self.fingerprint_sha256())
            .field("organization", &self.organization)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from `dir`, or creates it there if `dir` holds no CA yet.
    ///
    /// `dir` is created with mode 0700 if missing. The CA key is `ca.key.pem` (PKCS#8,
    /// mode 0600, written atomically) and the certificate `ca.crt.pem`. A new CA gets
    /// an ECDSA P-256 key and a self-signed certificate (CA, path length 0, key usages
    /// keyCertSign, cRLSign, digitalSignature) valid from one hour ago for
    /// `params.validity_days`.
    ///
    /// An existing CA is loaded as it is (the certificate PEM is returned byte for
    /// byte); `params.common_name`, `organization` and `validity_days` then have no
    /// effect. A key file readable by others is restricted to 0600 with a warning.
    /// Corrupt, mismatched or half-present files give an error naming the file: the CA
    /// is never silently replaced.
    pub fn load_or_init(dir: &Path, params: &CaParams) -> Result<Authority, CaError> {
        params.validate()?;
        ensure_dir(dir)?;
        let (key_path, cert_path) = ca_paths(dir);
        match (exists(&key_path)?, exists(&cert_path)?) {
            (true, true) => Self::load_files(&key_path, &cert_path, params),
            (false, false) => Self::create(&key_path, &cert_path, params),
            (true, false) => Err(CaError::IncompleteCa {
                present: key_path,
                missing: cert_path,
            }),
            (false, true) => Err(CaError::IncompleteCa {
                present: cert_path,
                missing: key_path,
            }),
        }
    }

    /// Loads an existing CA from `dir`; never creates one.
    ///
    /// Returns [`CaError::NotFound`] if `dir` holds neither CA file. `params` supplies
    /// the validity of the certificates this CA will issue.
    pub fn load(dir: &Path, params: &CaParams) -> Result<Authority, CaError> {
        params.validate()?;
        let (key_path, cert_path) = ca_paths(dir);
        match (exists(&key_path)?, exists(&cert_path)?) {
            (true, true) => Self::load_files(&key_path, &cert_path, params),
            (false, false) => Err(CaError::NotFound(format!(
                "certificate authority in {}",
                dir.display()
            ))),
            (true, false) => Err(CaError::IncompleteCa {
                present: key_path,
                missing: cert_path,
            }),
            (false, true) => Err(CaError::IncompleteCa {
                present: cert_path,
                missing: key_path,
            }),
        }
    }

    fn create(key_path: &Path, cert_path: &Path, params: &CaParams) -> Result<Authority, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::crypto("generating the CA key", e))?;
        let now = now_secs();
        let mut cp = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, params.common_name.as_str());
        if let Some(org) = &params.organization {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        cp.distinguished_name = dn;
        cp.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cp.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        cp.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        cp.not_before = now - CA_BACKDATE;
        cp.not_after = add_days(now, params.validity_days)?;
        cp.key_identifier_method = KeyIdMethod::Sha256;
        let cert = cp
            .self_signed(&key)
            .map_err(|e| CaError::crypto("self-signing the CA certificate", e))?;
        let cert_pem = cert.pem();

        // Key first: a crash between the two writes leaves a key without certificate,
        // which load_or_init reports instead of silently making a new CA.
        write_secret_file(key_path, key.serialize_pem().as_bytes())?;
        write_public_file(cert_path, cert_pem.as_bytes())?;
        tracing::info!(
            path = %cert_path.display(),
            fingerprint = %fingerprint_sha256(cert.der()),
            "created a new certificate authority"
        );
        Self::from_parts(key, cert_pem, cert_path, params)
    }

    fn load_files(
        key_path: &Path,
        cert_path: &Path,
        params: &CaParams,
    ) -> Result<Authority, CaError> {
        tighten_secret_mode(key_path)?;
        let key_pem = read_text(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            CaError::corrupt(key_path, format!("not a PKCS#8 private key in PEM: {e}"))
        })?;
        let cert_pem = read_text(cert_path)?;
        {
            let ders =
                parse_certificate_pems(&cert_pem).map_err(|e| CaError::corrupt(cert_path, e))?;
            let [der] = ders.as_slice() else {
                return Err(CaError::corrupt(
                    cert_path,
                    format!("expected exactly one certificate, found {}", ders.len()),
                ));
            };
            let cert = parse_certificate_der(der).map_err(|e| CaError::corrupt(cert_path, e))?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::KeyMismatch {
                    key: key_path.to_path_buf(),
                    cert: cert_path.to_path_buf(),
                });
            }
        }
        Self::from_parts(key, cert_pem, cert_path, params)
    }

    /// Builds the authority from a key and its certificate PEM (already matched).
    fn from_parts(
        key: KeyPair,
        cert_pem: String,
        cert_path: &Path,
        params: &CaParams,
    ) -> Result<Authority, CaError> {
        let ders = parse_certificate_pems(&cert_pem).map_err(|e| CaError::corrupt(cert_path, e))?;
        let der = ders
            .into_iter()
            .next()
            .ok_or_else(|| CaError::corrupt(cert_path, "no certificate found"))?;
        let (organization, not_after, key_id) = {
            let cert = parse_certificate_der(&der).map_err(|e| CaError::corrupt(cert_path, e))?;
            let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
            if !is_ca {
                return Err(CaError::corrupt(cert_path, "not a CA certificate"));
            }
            if cert.verify_signature(None).is_err() {
                return Err(CaError::corrupt(
                    cert_path,
                    "the certificate's self-signature does not verify",
                ));
            }
            let key_id = cert
                .iter_extensions()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                    _ => None,
                });
            (
                first_organization(cert.subject()),
                cert.validity().not_after.to_datetime(),
                key_id,
            )
        };
        if not_after <= OffsetDateTime::now_utc() {
            tracing::warn!(
                path = %cert_path.display(),
                %not_after,
                "the CA certificate has expired; devices will reject the server and no certificate can be issued"
            );
        }
        let cert_der = CertificateDer::from(der);
        let key_id = match key_id {
            Some(id) => id,
            None => CertificateParams::default().key_identifier(&key),
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| {
            CaError::corrupt(cert_path, format!("cannot be used as an issuer: {e}"))
        })?;
        Ok(Authority {
            issuer,
            cert_pem,
            cert_der,
            key_id,
            organization,
            not_after,
            device_validity_days: params.device_validity_days,
            server_validity_days: params.server_validity_days,
        })
    }

    /// The CA certificate in PEM, exactly as stored in `ca.crt.pem`.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn ca_certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The chain to present with certificates this CA issues, issuing CA first and the
    /// root last, PEM. Device and server certificates chain to the root through it.
    pub fn chain_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// [`Authority::chain_pem`] in DER, issuing CA first.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// SHA-256 fingerprint of the CA certificate (DER), lowercase hex.
    pub fn fingerprint_sha256(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// End of validity of the CA certificate.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a device (client) certificate for an untrusted PEM CSR.
    ///
    /// The CSR must be at most 16 KiB of PEM (`CERTIFICATE REQUEST`, surrounding
    /// whitespace allowed), valid DER, correctly self-signed, with an ECDSA P-256/P-384,
    /// RSA (2048 to 8192 bits) or Ed25519 key. If its subject has a common name it must
    /// equal `common_name` ([`CaError::SubjectMismatch`] otherwise).
    ///
    /// Only the public key is taken from the CSR. Everything else is set here: subject
    /// CN = `common_name` (plus the CA's organization, if any), extended key usage
    /// clientAuth only, key usage digitalSignature, not a CA, a random positive 16-byte
    /// serial, valid from 5 minutes ago for `validity_days` (default
    /// [`CaParams::device_validity_days`]), but never beyond the CA certificate's end.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        validity_days: Option<u32>,
    ) -> Result<IssuedCertificate, CaError> {
        check_common_name(common_name)?;
        let days = validity_days.unwrap_or(self.device_validity_days);
        check_validity_days("device certificate validity", days)?;
        let csr = validate_csr(csr_pem)?;
        if let Some(found) = csr.common_names.iter().find(|cn| *cn != common_name) {
            return Err(CaError::SubjectMismatch {
                expected: common_name.to_string(),
                found: found.clone(),
            });
        }
        let issued = self.issue_leaf(LeafKind::Client, common_name, &csr.public_key, days, &[])?;
        tracing::info!(
            common_name,
            serial = %issued.serial,
            not_after = %issued.not_after,
            "issued device certificate"
        );
        Ok(issued)
    }

    /// Signs an end-entity certificate for `public_key`, built entirely from our
    /// parameters.
    pub(crate) fn issue_leaf(
        &self,
        kind: LeafKind,
        common_name: &str,
        public_key: &impl PublicKeyData,
        validity_days: u32,
        sans: &[SanType],
    ) -> Result<IssuedCertificate, CaError> {
        let now = now_secs();
        if self.not_after <= now {
            return Err(CaError::Crypto(format!(
                "the CA certificate expired on {}; no certificate can be issued",
                self.not_after
            )));
        }
        let not_before = now - LEAF_BACKDATE;
        let not_after = add_days(now, validity_days)?.min(self.not_after);

        let serial = random_serial();
        let mut cp = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        if let Some(org) = &self.organization {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        cp.distinguished_name = dn;
        cp.is_ca = IsCa::ExplicitNoCa;
        cp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        cp.extended_key_usages = vec![match kind {
            LeafKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
            LeafKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        cp.subject_alt_names = sans.to_vec();
        cp.serial_number = Some(SerialNumber::from_slice(&serial));
        cp.not_before = not_before;
        cp.not_after = not_after;
        cp.use_authority_key_identifier_extension = true;
        cp.key_identifier_method = KeyIdMethod::Sha256;
        let cert = cp
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::crypto("signing the certificate", e))?;
        Ok(IssuedCertificate {
            serial: hex::encode_upper(serial),
            certificate_pem: cert.pem(),
            common_name: common_name.to_string(),
            not_before,
            not_after,
            fingerprint_sha256: fingerprint_sha256(cert.der()),
        })
    }

    /// Builds and signs a complete CRL listing `revoked`.
    ///
    /// `thisUpdate` is now, `nextUpdate` is now + `next_update` (which must be
    /// positive). Serials are hex (colons and any case accepted); an entry listed twice
    /// appears once. An empty list gives a valid CRL with no entries. The CRL has no
    /// issuing distribution point, so it covers every certificate of this CA.
    pub fn build_crl(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        next_update: Duration,
    ) -> Result<Crl, CaError> {
        if !next_update.is_positive() {
            return Err(CaError::InvalidInput(format!(
                "CRL next update interval must be positive, got {next_update}"
            )));
        }
        let this_update = now_secs();
        let next = this_update
            .checked_add(next_update)
            .map(trunc_secs)
            .filter(|n| *n > this_update)
            .ok_or_else(|| {
                CaError::InvalidInput(format!(
                    "CRL next update interval {next_update} is out of range"
                ))
            })?;
        let mut seen = HashSet::new();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for entry in revoked {
            let serial = parse_serial(&entry.serial)?;
            if !seen.insert(serial.clone()) {
                continue;
            }
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: trunc_secs(entry.revoked_at),
                reason_code: entry.reason.map(|r| r.to_rcgen()),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update: next,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_id.clone()),
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CaError::crypto("signing the CRL", e))?;
        let pem = crl
            .pem()
            .map_err(|e| CaError::crypto("encoding the CRL", e))?;
        Ok(Crl {
            pem,
            der: crl.der().clone(),
            this_update,
            next_update: next,
            crl_number,
        })
    }

    /// The CA certificate parsed (for checks against other certificates).
    pub(crate) fn with_parsed_ca<T>(
        &self,
        f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
    ) -> Result<T, CaError> {
        let cert = parse_certificate_der(&self.cert_der).map_err(CaError::InvalidCertificate)?;
        Ok(f(&cert))
    }
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CA_KEY_FILE), dir.join(CA_CERT_FILE))
}

/// 16 random bytes, high bit cleared (positive), first byte non-zero (so the serial
/// has exactly 16 bytes and is never zero).
pub(crate) fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 0x01;
    }
    serial
}

/// `t` without its sub-second part (certificates and CRLs store whole seconds).
pub(crate) fn trunc_secs(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

pub(crate) fn now_secs() -> OffsetDateTime {
    trunc_secs(OffsetDateTime::now_utc())
}

pub(crate) fn add_days(t: OffsetDateTime, days: u32) -> Result<OffsetDateTime, CaError> {
    t.checked_add(Duration::days(i64::from(days)))
        .ok_or_else(|| CaError::InvalidInput(format!("validity of {days} days is out of range")))
}

fn check_validity_days(what: &str, days: u32) -> Result<(), CaError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(CaError::InvalidInput(format!(
            "{what} must be between 1 and {MAX_VALIDITY_DAYS} days, got {days}"
        )));
    }
    Ok(())
}

/// Checks a subject common name given by the caller: 1 to 64 characters, no control
/// characters.
pub(crate) fn check_common_name(cn: &str) -> Result<(), CaError> {
    check_dn_value("common name", cn)
}

fn check_dn_value(what: &str, value: &str) -> Result<(), CaError> {
    let len = value.chars().count();
    if value.trim().is_empty() {
        return Err(CaError::InvalidInput(format!("{what} is empty")));
    }
    if len > 64 {
        return Err(CaError::InvalidInput(format!(
            "{what} is {len} characters long (64 at most)"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(CaError::InvalidInput(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serial_is_positive_and_full_length() {
        for _ in 0..200 {
            let s = random_serial();
            assert!(s[0] & 0x80 == 0 && s[0] != 0);
            assert_eq!(hex::encode_upper(s).len(), 32);
        }
    }

    #[test]
    fn validity_and_names_are_checked() {
        assert!(check_validity_days("x", 0).is_err());
        assert!(check_validity_days("x", MAX_VALIDITY_DAYS + 1).is_err());
        assert!(check_validity_days("x", 1).is_ok());
        assert!(check_common_name("").is_err());
        assert!(check_common_name("  ").is_err());
        assert!(check_common_name("a\nb").is_err());
        assert!(check_common_name(&"x".repeat(65)).is_err());
        assert!(check_common_name("356938035643809").is_ok());
        let bad = CaParams {
            validity_days: 0,
            ..CaParams::default()
        };
        assert!(bad.validate().is_err());
        assert!(CaParams::default().validate().is_ok());
    }

    #[test]
    fn authority_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authority>();
    }
}
