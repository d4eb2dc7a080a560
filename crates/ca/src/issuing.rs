//! One issuing CA: its key and certificate on disk, and the chain above it up to a root.
//!
//! A CA directory holds the issuing CA as `ca.key.pem` + `ca.crt.pem`, and, when the
//! issuing CA is not itself a root, `chain.pem`: the certificates above it, its issuer
//! first and the root last. New installations get a root (`root.crt.pem`, and
//! `root.key.pem`, which may be moved off the machine: it is only needed to sign a new
//! issuing CA) and an issuing CA signed by it. Installations made before the hierarchy
//! existed have a self-signed `ca.crt.pem` and no `chain.pem`, and keep working as they
//! are.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::CaError;
use crate::authority::{CaParams, add_days, now_secs, random_serial};
use crate::fs::{exists, read_text, tighten_secret_mode, write_public_file, write_secret_file};
use crate::inspect::{
    fingerprint_sha256, first_organization, parse_certificate_der, parse_certificate_pems,
};

/// File name of the issuing CA's private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// File name of the issuing CA's certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt.pem";
/// The certificates above the issuing CA (its issuer first, the root last).
pub const CHAIN_FILE: &str = "chain.pem";
/// The root's certificate, in installations whose root Callhome made.
pub const ROOT_CERT_FILE: &str = "root.crt.pem";
/// The root's private key: needed only to sign a new issuing CA; may be kept offline.
pub const ROOT_KEY_FILE: &str = "root.key.pem";

/// How far in the past CA certificates start.
const CA_BACKDATE: Duration = Duration::hours(1);

/// A CA certificate (one link of a chain), PEM and DER.
#[derive(Clone)]
pub(crate) struct ChainLink {
    pub(crate) pem: String,
    pub(crate) der: CertificateDer<'static>,
}

/// An issuing CA: key, certificate, and the chain above it.
pub(crate) struct IssuingCa {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) cert: ChainLink,
    /// Subject key identifier of the certificate (for CRL authority key identifiers and
    /// for naming this CA's CRL).
    pub(crate) key_id: Vec<u8>,
    pub(crate) organization: Option<String>,
    pub(crate) not_after: OffsetDateTime,
    /// Certificates above `cert`: its issuer first, the root last. Empty when `cert` is
    /// itself a root (self-signed).
    pub(crate) above: Vec<ChainLink>,
}

impl IssuingCa {
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub(crate) fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.cert.der)
    }

    /// The key identifier, lowercase hex: the name of this CA's CRL.
    pub(crate) fn key_id_hex(&self) -> String {
        hex::encode(&self.key_id)
    }

    /// The root of this CA's chain (the CA itself when it is self-signed).
    pub(crate) fn root(&self) -> &ChainLink {
        self.above.last().unwrap_or(&self.cert)
    }

    /// Loads the issuing CA in `dir` (`ca.key.pem`, `ca.crt.pem`, optional `chain.pem`).
    pub(crate) fn load(dir: &Path) -> Result<IssuingCa, CaError> {
        let (key_path, cert_path) = (dir.join(CA_KEY_FILE), dir.join(CA_CERT_FILE));
        tighten_secret_mode(&key_path)?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            CaError::corrupt(&key_path, format!("not a PKCS#8 private key in PEM: {e}"))
        })?;
        let cert_pem = read_text(&cert_path)?;
        let chain_path = dir.join(CHAIN_FILE);
        let above_pem = if exists(&chain_path)? {
            Some(read_text(&chain_path)?)
        } else {
            None
        };
        Self::from_pems(
            key,
            &cert_pem,
            above_pem.as_deref(),
            &key_path,
            &cert_path,
            &chain_path,
        )
    }

    /// Checks and assembles an issuing CA from its key, certificate and chain. The paths
    /// only name the material in errors.
    pub(crate) fn from_pems(
        key: KeyPair,
        cert_pem: &str,
        above_pem: Option<&str>,
        key_path: &Path,
        cert_path: &Path,
        chain_path: &Path,
    ) -> Result<IssuingCa, CaError> {
        let ders = parse_certificate_pems(cert_pem).map_err(|e| CaError::corrupt(cert_path, e))?;
        let [der] = ders.as_slice() else {
            return Err(CaError::corrupt(
                cert_path,
                format!("expected exactly one certificate, found {}", ders.len()),
            ));
        };
        let above = match above_pem {
            Some(text) => parse_certificate_pems(text)
                .map_err(|e| CaError::corrupt(chain_path, e))?
                .into_iter()
                .map(|d| ChainLink {
                    pem: pem_of(&d),
                    der: CertificateDer::from(d),
                })
                .collect::<Vec<_>>(),
            None => Vec::new(),
        };
        let (organization, not_after, key_id) = {
            let cert = parse_certificate_der(der).map_err(|e| CaError::corrupt(cert_path, e))?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::KeyMismatch {
                    key: key_path.to_path_buf(),
                    cert: cert_path.to_path_buf(),
                });
            }
            check_ca(&cert).map_err(|e| CaError::corrupt(cert_path, e))?;
            verify_chain(&cert, &above).map_err(|e| CaError::corrupt(chain_path, e))?;
            let key_id = subject_key_id(&cert);
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
        let cert_der = CertificateDer::from(der.clone());
        let key_id = match key_id {
            Some(id) => id,
            None => CertificateParams::default().key_identifier(&key),
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| {
            CaError::corrupt(cert_path, format!("cannot be used as an issuer: {e}"))
        })?;
        Ok(IssuingCa {
            issuer,
            cert: ChainLink {
                pem: cert_pem.to_owned(),
                der: cert_der,
            },
            key_id,
            organization,
            not_after,
            above,
        })
    }

    /// Creates a root and an issuing CA signed by it in `dir`, and loads the issuing CA.
    ///
    /// Written in an order that a crash cannot turn into a silently replaced CA: the root,
    /// then the issuing CA's key and chain, and its certificate last (a key without a
    /// certificate is reported at the next start, as before).
    pub(crate) fn create_hierarchy(dir: &Path, params: &CaParams) -> Result<IssuingCa, CaError> {
        let now = now_secs();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::crypto("generating the root key", e))?;
        let mut root = ca_params(
            &params.common_name,
            params.organization.as_deref(),
            1,
            now,
            params.root_validity_days,
        )?;
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = root
            .self_signed(&root_key)
            .map_err(|e| CaError::crypto("self-signing the root certificate", e))?;
        let root_issuer = Issuer::new(root, root_key);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::crypto("generating the issuing CA key", e))?;
        let mut cp = ca_params(
            &issuing_name(&params.common_name),
            params.organization.as_deref(),
            0,
            now,
            params.validity_days.min(params.root_validity_days),
        )?;
        cp.use_authority_key_identifier_extension = true;
        let cert = cp
            .signed_by(&key, &root_issuer)
            .map_err(|e| CaError::crypto("signing the issuing CA certificate", e))?;

        write_secret_file(
            &dir.join(ROOT_KEY_FILE),
            root_issuer.key().serialize_pem().as_bytes(),
        )?;
        write_public_file(&dir.join(ROOT_CERT_FILE), root_cert.pem().as_bytes())?;
        write_secret_file(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
        write_public_file(&dir.join(CHAIN_FILE), root_cert.pem().as_bytes())?;
        write_public_file(&dir.join(CA_CERT_FILE), cert.pem().as_bytes())?;
        tracing::info!(
            root = %fingerprint_sha256(root_cert.der()),
            issuing = %fingerprint_sha256(cert.der()),
            dir = %dir.display(),
            "created a new certificate authority: an offline-capable root and an online issuing CA"
        );
        Self::load(dir)
    }
}

/// Parameters of a CA certificate.
pub(crate) fn ca_params(
    common_name: &str,
    organization: Option<&str>,
    path_len: u8,
    now: OffsetDateTime,
    validity_days: u32,
) -> Result<CertificateParams, CaError> {
    let mut cp = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    cp.distinguished_name = dn;
    cp.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    cp.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    cp.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    cp.not_before = now - CA_BACKDATE;
    cp.not_after = add_days(now, validity_days)?;
    cp.key_identifier_method = KeyIdMethod::Sha256;
    Ok(cp)
}

/// The issuing CA's name derived from the root's: "X Root CA" gives "X Issuing CA".
pub(crate) fn issuing_name(root_cn: &str) -> String {
    let base = root_cn
        .strip_suffix("Root CA")
        .or_else(|| root_cn.strip_suffix("CA"))
        .unwrap_or(root_cn)
        .trim_end();
    let name = if base.is_empty() {
        "Issuing CA".to_owned()
    } else {
        format!("{base} Issuing CA")
    };
    name.chars().take(64).collect()
}

/// PEM text of one DER certificate, LF line endings.
pub(crate) fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The subject key identifier extension's value, if present.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

/// A CA certificate: basic constraints CA, and keyCertSign when key usage is present.
pub(crate) fn check_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err("not a CA certificate (basic constraints do not say CA)".into());
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err("the CA certificate's key usage does not allow signing certificates".into());
    }
    Ok(())
}

/// Checks that `cert` is signed by `above[0]`, each link by the next, and the last is a
/// self-signed root; with `above` empty, that `cert` is self-signed. Every link must be a
/// CA certificate.
pub(crate) fn verify_chain(cert: &X509Certificate<'_>, above: &[ChainLink]) -> Result<(), String> {
    let parsed = above
        .iter()
        .map(|l| parse_certificate_der(&l.der))
        .collect::<Result<Vec<_>, _>>()?;
    let mut child = cert;
    for (i, parent) in parsed.iter().enumerate() {
        check_ca(parent).map_err(|e| format!("certificate {} of the chain: {e}", i + 1))?;
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(format!(
                "certificate {} of the chain ({}) is not the issuer of {} ({})",
                i + 1,
                parent.subject(),
                if i == 0 {
                    "the CA certificate".to_owned()
                } else {
                    format!("certificate {i}")
                },
                child.issuer()
            ));
        }
        if child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(format!(
                "the signature on {} does not verify with certificate {} of the chain",
                if i == 0 {
                    "the CA certificate".to_owned()
                } else {
                    format!("certificate {i}")
                },
                i + 1
            ));
        }
        child = parent;
    }
    if child.issuer().as_raw() != child.subject().as_raw() || child.verify_signature(None).is_err()
    {
        return Err(if above.is_empty() {
            "the CA certificate is not self-signed and no chain up to its root was given".into()
        } else {
            "the chain does not end with a self-signed root".into()
        });
    }
    Ok(())
}

/// Every retired issuing CA under `dir/retired`, oldest first by directory name.
pub(crate) fn load_retired(dir: &Path) -> Result<Vec<IssuingCa>, CaError> {
    let retired = dir.join(RETIRED_DIR);
    if !exists(&retired)? {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&retired)
        .map_err(|e| CaError::io("read", &retired, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| IssuingCa::load(d)).collect()
}

/// Where retired issuing CAs are kept (still trusted, their CRLs still signed).
pub const RETIRED_DIR: &str = "retired";
