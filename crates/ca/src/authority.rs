//! The certificate authority: its key and certificate on disk, device certificate
//! issuance from CSRs, and CRL signing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CrlIssuingDistributionPoint, CrlScope, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyUsagePurpose, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::CaError;
use crate::crl::{Crl, CrlSet, RevokedEntry, parse_serial};
use crate::csr::validate_csr;
use crate::fs::{ensure_dir, exists};
use crate::inspect::{fingerprint_sha256, parse_certificate_der};
use crate::issuing::{CA_CERT_FILE, CA_KEY_FILE, ChainLink, IssuingCa, load_retired};

/// Longest validity accepted for any certificate, in days (100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

/// How far in the past issued certificates start, to tolerate clock skew on modems.
const LEAF_BACKDATE: Duration = Duration::minutes(5);

/// Settings used when the CA is created and when it issues certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// Common name of the CA certificate (used only when the CA is created).
    pub common_name: String,
    /// Organization (O) of the CA certificate (used only when the CA is created).
    /// Issued certificates carry the CA certificate's organization, if any.
    pub organization: Option<String>,
    /// Validity of the issuing CA certificate in days (used only when the CA is created).
    pub validity_days: u32,
    /// Validity of the root certificate in days (used only when the CA is created).
    pub root_validity_days: u32,
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
            root_validity_days: 7300,
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
            ("root CA validity", self.root_validity_days),
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

/// The certificate authority: the issuing CA's key and certificate with the chain above
/// it, and the retired issuing CAs still trusted, loaded from (or created in) a directory.
///
/// Shareable between threads (`Send + Sync`); all methods take `&self`.
pub struct Authority {
    current: IssuingCa,
    /// Issuing CAs replaced by an import, oldest first: devices holding their
    /// certificates still connect (until the CA is retired for good), and each still
    /// signs a CRL for the certificates it issued.
    retired: Vec<IssuingCa>,
    /// Base URL of the CRLs on the device-facing listener (`{base}/{key id}.crl`), written
    /// into device certificates as their CRL distribution point and into CRLs as their
    /// issuing distribution point. Set once, when the listener's address is known.
    crl_base_url: OnceLock<String>,
    device_validity_days: u32,
    pub(crate) server_validity_days: u32,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint_sha256", &self.fingerprint_sha256())
            .field("organization", &self.current.organization)
            .field("not_after", &self.current.not_after)
            .field("chain_len", &(self.current.above.len() + 1))
            .field("retired", &self.retired.len())
            .finish_non_exhaustive()
    }
}

/// One issuing CA as [`Authority::issuing_cas`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuingCaSummary {
    /// SHA-256 of the issuing CA's certificate (DER), lowercase hex.
    pub fingerprint_sha256: String,
    /// Its subject, as text.
    pub subject: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Its key identifier, lowercase hex: its CRL is `{crl base}/{key_id}.crl`.
    pub key_id: String,
    /// The root its chain ends with: SHA-256 of its DER, lowercase hex.
    pub root_fingerprint_sha256: String,
    /// The root's subject.
    pub root_subject: String,
    /// Whether this is the CA that issues new certificates (else a retired one).
    pub current: bool,
}

impl Authority {
    /// Loads the CA from `dir`, or creates it there if `dir` holds no CA yet.
    ///
    /// `dir` is created with mode 0700 if missing. The issuing CA's key is `ca.key.pem`
    /// (PKCS#8, mode 0600, written atomically) and its certificate `ca.crt.pem`; when it
    /// is not a root, `chain.pem` holds the certificates above it up to the root, which
    /// are verified at every load. A new CA is a hierarchy: a root (`root.crt.pem`,
    /// `root.key.pem`; path length 1, valid `params.root_validity_days`) and an issuing
    /// CA signed by it (path length 0, valid `params.validity_days`), both ECDSA P-256.
    /// The root key is not needed to run and may be moved offline. Retired issuing CAs
    /// under `retired/` are loaded too.
    ///
    /// An existing CA is loaded as it is (the certificate PEM is returned byte for
    /// byte); `params.common_name`, `organization` and the CA validities then have no
    /// effect. A key file readable by others is restricted to 0600 with a warning.
    /// Corrupt, mismatched or half-present files give an error naming the file: the CA
    /// is never silently replaced.
    pub fn load_or_init(dir: &Path, params: &CaParams) -> Result<Authority, CaError> {
        params.validate()?;
        ensure_dir(dir)?;
        let current = if has_ca(dir)? {
            IssuingCa::load(dir)?
        } else {
            IssuingCa::create_hierarchy(dir, params)?
        };
        Self::assemble(dir, current, params)
    }

    /// Loads an existing CA from `dir`; never creates one.
    ///
    /// Returns [`CaError::NotFound`] if `dir` holds neither CA file. `params` supplies
    /// the validity of the certificates this CA will issue.
    pub fn load(dir: &Path, params: &CaParams) -> Result<Authority, CaError> {
        params.validate()?;
        if !has_ca(dir)? {
            return Err(CaError::NotFound(format!(
                "certificate authority in {}",
                dir.display()
            )));
        }
        let current = IssuingCa::load(dir)?;
        Self::assemble(dir, current, params)
    }

    fn assemble(dir: &Path, current: IssuingCa, params: &CaParams) -> Result<Authority, CaError> {
        let retired = load_retired(dir)?;
        Ok(Authority {
            current,
            retired,
            crl_base_url: OnceLock::new(),
            device_validity_days: params.device_validity_days,
            server_validity_days: params.server_validity_days,
        })
    }

    /// The issuing CA's certificate in PEM, exactly as stored in `ca.crt.pem`: the CA
    /// that signs device and server certificates and the CRL.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.current.cert.pem
    }

    /// The issuing CA's certificate in DER.
    pub fn ca_certificate_der(&self) -> &CertificateDer<'static> {
        &self.current.cert.der
    }

    /// The chain to present with certificates this CA issues, issuing CA first and the
    /// root last, PEM. Device and server certificates chain to the root through it.
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.current.cert)
            .chain(&self.current.above)
            .map(|l| ensure_newline(&l.pem))
            .collect()
    }

    /// [`Authority::chain_pem`] in DER, issuing CA first.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.current.cert)
            .chain(&self.current.above)
            .map(|l| l.der.clone())
            .collect()
    }

    /// What a server presents after its own certificate: the issuing CA and any
    /// intermediates, without a self-signed root (the peer has it) unless the issuing CA
    /// is itself the root.
    pub(crate) fn presented_chain(&self) -> Vec<&ChainLink> {
        let mut links: Vec<&ChainLink> = std::iter::once(&self.current.cert)
            .chain(&self.current.above)
            .collect();
        if links.len() > 1 {
            links.pop();
        }
        links
    }

    /// [`Authority::presented_chain`] as PEM text.
    pub(crate) fn presented_chain_pem(&self) -> String {
        self.presented_chain()
            .into_iter()
            .map(|l| ensure_newline(&l.pem))
            .collect()
    }

    /// The root of the current chain, PEM.
    pub fn root_pem(&self) -> String {
        ensure_newline(&self.current.root().pem)
    }

    /// The trust bundle for modems and readers: the roots of the current and every
    /// retired issuing CA (the current one first, each once), PEM. A modem trusting it
    /// accepts the server through a CA rollover.
    pub fn trust_bundle_pem(&self) -> String {
        let mut seen = HashSet::new();
        std::iter::once(&self.current)
            .chain(&self.retired)
            .map(IssuingCa::root)
            .filter(|root| seen.insert(root.der.to_vec()))
            .map(|root| ensure_newline(&root.pem))
            .collect()
    }

    /// The anchors client certificates are verified against: every issuing CA, current
    /// and retired. Only the issuing CAs, not their roots: a root that also signs other
    /// CAs (a utility's own PKI) must not make their certificates modem identities.
    pub fn client_trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .map(|ca| ca.cert.der.clone())
            .collect()
    }

    /// The current and retired issuing CAs, current first.
    pub fn issuing_cas(&self) -> Vec<IssuingCaSummary> {
        std::iter::once((&self.current, true))
            .chain(self.retired.iter().map(|r| (r, false)))
            .map(|(ca, current)| {
                let subject = |l: &ChainLink| {
                    parse_certificate_der(&l.der)
                        .map(|c| c.subject().to_string())
                        .unwrap_or_default()
                };
                IssuingCaSummary {
                    fingerprint_sha256: ca.fingerprint(),
                    subject: subject(&ca.cert),
                    not_after: ca.not_after,
                    key_id: ca.key_id_hex(),
                    root_fingerprint_sha256: fingerprint_sha256(&ca.root().der),
                    root_subject: subject(ca.root()),
                    current,
                }
            })
            .collect()
    }

    /// SHA-256 fingerprint of the issuing CA certificate (DER), lowercase hex.
    pub fn fingerprint_sha256(&self) -> String {
        self.current.fingerprint()
    }

    /// End of validity of the issuing CA certificate.
    pub fn not_after(&self) -> OffsetDateTime {
        self.current.not_after
    }

    /// Sets the base URL of the CRLs (`https://host:port/crl`), once: device
    /// certificates issued from now on name `{base}/{key id}.crl` as their CRL
    /// distribution point, and CRLs carry it as their issuing distribution point.
    /// Returns `false` if it was already set (the first value stays).
    pub fn set_crl_base_url(&self, base: &str) -> bool {
        self.crl_base_url
            .set(base.trim_end_matches('/').to_owned())
            .is_ok()
    }

    /// The URL of the CRL of the issuing CA whose key identifier is `key_id_hex`.
    pub fn crl_url(&self, key_id_hex: &str) -> Option<String> {
        self.crl_base_url
            .get()
            .map(|base| format!("{base}/{key_id_hex}.crl"))
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
        let until = add_days(now_secs(), validity_days)?;
        self.issue_leaf_until(kind, common_name, public_key, until, sans)
    }

    /// Issues a claim certificate for a production batch: a new ECDSA P-256 key and a
    /// client certificate with CN `claim:<name>` (never an IMEI, so it can never be taken
    /// for a device identity) valid until `not_after` (the claim's expiry, at most the CA's).
    /// Returns the certificate and the private key in PKCS#8 PEM, which the caller shows
    /// once and never stores.
    pub fn issue_claim_certificate(
        &self,
        name: &str,
        not_after: OffsetDateTime,
    ) -> Result<(IssuedCertificate, zeroize::Zeroizing<String>), CaError> {
        let cn = callhome_core::claims::claim_common_name(name);
        check_common_name(&cn)?;
        if not_after <= now_secs() {
            return Err(CaError::InvalidInput(format!(
                "the claim certificate's end of validity {not_after} is not in the future"
            )));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::crypto("generating a claim key", e))?;
        let issued =
            self.issue_leaf_until(LeafKind::Client, &cn, &key, trunc_secs(not_after), &[])?;
        tracing::info!(common_name = %cn, serial = %issued.serial, not_after = %issued.not_after, "issued claim certificate");
        Ok((issued, zeroize::Zeroizing::new(key.serialize_pem())))
    }

    /// [`Authority::issue_leaf`] with an explicit end of validity (capped at the CA's).
    fn issue_leaf_until(
        &self,
        kind: LeafKind,
        common_name: &str,
        public_key: &impl PublicKeyData,
        until: OffsetDateTime,
        sans: &[SanType],
    ) -> Result<IssuedCertificate, CaError> {
        let now = now_secs();
        let ca = &self.current;
        if ca.not_after <= now {
            return Err(CaError::Crypto(format!(
                "the CA certificate expired on {}; no certificate can be issued",
                ca.not_after
            )));
        }
        let not_before = now - LEAF_BACKDATE;
        let not_after = until.min(ca.not_after);

        let serial = random_serial();
        let mut cp = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        if let Some(org) = &ca.organization {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        cp.distinguished_name = dn;
        cp.is_ca = IsCa::ExplicitNoCa;
        if kind == LeafKind::Client
            && let Some(url) = self.crl_url(&ca.key_id_hex())
        {
            cp.crl_distribution_points = vec![CrlDistributionPoint { uris: vec![url] }];
        }
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
            .signed_by(public_key, &ca.issuer)
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

    /// Builds and signs a complete CRL listing `revoked`, issued by the current issuing
    /// CA (see [`Authority::build_crls`] for every issuing CA).
    ///
    /// `thisUpdate` is now, `nextUpdate` is now + `next_update` (which must be
    /// positive). Serials are hex (colons and any case accepted); an entry listed twice
    /// appears once. An empty list gives a valid CRL with no entries. [`Crl::der`] has no
    /// issuing distribution point, so it covers every certificate of this CA (what our
    /// own listeners check against); when a CRL base URL is set,
    /// [`Crl::published_der`] is the same list with the issuing distribution point that
    /// external brokers require.
    pub fn build_crl(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        next_update: Duration,
    ) -> Result<Crl, CaError> {
        self.build_crl_for(&self.current, revoked, crl_number, next_update)
    }

    /// One CRL per issuing CA, current first then the retired ones, each listing
    /// `revoked` (serials are random 128-bit numbers, so listing another CA's serials
    /// revokes nothing of this one's).
    pub fn build_crls(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        next_update: Duration,
    ) -> Result<CrlSet, CaError> {
        let current = self.build_crl(revoked, crl_number, next_update)?;
        let retired = self
            .retired
            .iter()
            .map(|ca| self.build_crl_for(ca, revoked, crl_number, next_update))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CrlSet { current, retired })
    }

    fn build_crl_for(
        &self,
        ca: &IssuingCa,
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
        let key_id_hex = ca.key_id_hex();
        let sign = |idp: Option<CrlIssuingDistributionPoint>| {
            CertificateRevocationListParams {
                this_update,
                next_update: next,
                crl_number: SerialNumber::from(crl_number),
                issuing_distribution_point: idp,
                revoked_certs: revoked_certs.clone(),
                key_identifier_method: KeyIdMethod::PreSpecified(ca.key_id.clone()),
            }
            .signed_by(&ca.issuer)
            .map_err(|e| CaError::crypto("signing the CRL", e))
        };
        let crl = sign(None)?;
        let pem = crl
            .pem()
            .map_err(|e| CaError::crypto("encoding the CRL", e))?;
        let published_der = match self.crl_url(&key_id_hex) {
            Some(url) => Some(
                sign(Some(CrlIssuingDistributionPoint {
                    distribution_point: CrlDistributionPoint { uris: vec![url] },
                    scope: Some(CrlScope::UserCertsOnly),
                }))?
                .der()
                .clone(),
            ),
            None => None,
        };
        Ok(Crl {
            pem,
            der: crl.der().clone(),
            published_der,
            issuer_key_id: key_id_hex,
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
        let cert =
            parse_certificate_der(&self.current.cert.der).map_err(CaError::InvalidCertificate)?;
        Ok(f(&cert))
    }
}

pub(crate) fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// Whether `dir` holds an issuing CA: both files (`true`), neither (`false`), or one
/// without the other ([`CaError::IncompleteCa`]: never silently replaced).
fn has_ca(dir: &Path) -> Result<bool, CaError> {
    let (key_path, cert_path) = ca_paths(dir);
    match (exists(&key_path)?, exists(&cert_path)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
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
    fn claim_certificates_are_client_certificates_named_claim_until_the_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_init(dir.path(), &CaParams::default()).unwrap();
        let until = now_secs() + Duration::days(10);
        let (issued, key) = ca.issue_claim_certificate("batch-1", until).unwrap();
        assert_eq!(issued.common_name, "claim:batch-1");
        assert_eq!(issued.not_after, until);
        assert!(key.contains("PRIVATE KEY"));
        let info = crate::inspect_certificate(&issued.certificate_pem).unwrap();
        assert_eq!(info.serial, issued.serial);
        assert!(ca.issue_claim_certificate("batch-1", now_secs()).is_err());
    }

    #[test]
    fn authority_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authority>();
    }
}
