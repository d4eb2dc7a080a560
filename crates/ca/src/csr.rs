//! Certificate signing requests: strict parsing of untrusted input, and generation
//! of key + CSR pairs for the simulator and tests.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::CaError;
use crate::inspect::{common_names, parse_pem_blocks};

/// Largest CSR (PEM text, in bytes) that [`crate::Authority::sign_csr`] will look at.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// Smallest RSA modulus accepted in a CSR, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted in a CSR, in bits (what ring can verify).
const MAX_RSA_BITS: usize = 8192;

/// What the CA takes from a CSR after checking it: the public key and the requested
/// common names. Nothing else of the request is used.
#[derive(Debug)]
pub(crate) struct ValidatedCsr {
    pub(crate) public_key: rcgen::SubjectPublicKeyInfo,
    pub(crate) common_names: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex.
    pub(crate) public_key_sha256: String,
}

/// A CSR checked as the CA checks it before signing (see [`check_csr`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The subject's common names.
    pub common_names: Vec<String>,
    /// SHA-256 of its SubjectPublicKeyInfo DER, lowercase hex.
    pub public_key_sha256: String,
}

/// Checks an untrusted PEM CSR exactly as signing would (size, framing, DER,
/// self-signature, key type and size) without signing it: for requests that are kept to
/// be signed later (an enrolment held for approval).
pub fn check_csr(csr_pem: &str) -> Result<CheckedCsr, CaError> {
    let v = validate_csr(csr_pem)?;
    Ok(CheckedCsr {
        common_names: v.common_names,
        public_key_sha256: v.public_key_sha256,
    })
}

fn invalid(msg: impl Into<String>) -> CaError {
    CaError::InvalidCsr(msg.into())
}

/// Parses and checks an untrusted PEM CSR: size, PEM framing and label, DER,
/// self-signature, key type and size.
pub(crate) fn validate_csr(csr_pem: &str) -> Result<ValidatedCsr, CaError> {
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(invalid(format!(
            "CSR is {} bytes, more than the limit of {MAX_CSR_PEM_LEN} bytes",
            csr_pem.len()
        )));
    }
    let blocks = parse_pem_blocks(csr_pem)
        .map_err(|e| invalid(format!("not a PEM CERTIFICATE REQUEST: {e}")))?;
    let [block] = blocks.as_slice() else {
        return Err(invalid(format!(
            "expected exactly one PEM block, found {}",
            blocks.len()
        )));
    };
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(invalid(format!(
            "not a PEM CERTIFICATE REQUEST (found a PEM {})",
            block.tag()
        )));
    }
    let der = block.contents();
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| invalid(format!("CSR is not valid DER: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing data after the CSR"));
    }

    let sig_alg = &csr.signature_algorithm.algorithm;
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(invalid("CSR is signed with SHA-1, which is not accepted"));
    }

    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = modulus_bits(rsa.modulus);
            if bits < MIN_RSA_BITS {
                return Err(invalid(format!(
                    "RSA key of {bits} bits is too small ({MIN_RSA_BITS} bits minimum)"
                )));
            }
            if bits > MAX_RSA_BITS {
                return Err(invalid(format!(
                    "RSA key of {bits} bits is too large ({MAX_RSA_BITS} bits maximum)"
                )));
            }
        }
        Ok(PublicKey::EC(_)) => {}
        Ok(PublicKey::Unknown(_)) => {} // e.g. Ed25519; decided below
        Ok(_) => return Err(unsupported_key()),
        Err(e) => return Err(invalid(format!("CSR public key cannot be parsed: {e}"))),
    }

    match csr.verify_signature() {
        Ok(()) => {}
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            return Err(invalid(format!(
                "CSR signature algorithm {sig_alg} is not supported (use ECDSA with SHA-256/384, RSA PKCS#1 v1.5 or PSS with SHA-256/384/512, or Ed25519)"
            )));
        }
        Err(_) => return Err(invalid("CSR signature does not verify")),
    }

    let public_key =
        rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| unsupported_key())?;

    let common_names = common_names(&csr.certification_request_info.subject)
        .map_err(|()| invalid("CSR subject common name is not a readable string"))?;

    let public_key_sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(spki.raw))
    };
    Ok(ValidatedCsr {
        public_key,
        common_names,
        public_key_sha256,
    })
}

fn unsupported_key() -> CaError {
    invalid(
        "unsupported public key type (supported: ECDSA P-256 or P-384, RSA 2048 to 8192 bits, Ed25519)",
    )
}

/// Bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn modulus_bits(modulus: &[u8]) -> usize {
    let start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    match modulus.get(start) {
        Some(first) => (modulus.len() - start) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Generates a new ECDSA P-256 key and a CSR for `common_name` signed with it.
///
/// Returns `(private key PEM (PKCS#8, "PRIVATE KEY"), CSR PEM)`. Used by the modem
/// simulator and by tests; real modems make their own.
pub fn generate_key_and_csr(common_name: &str) -> Result<(String, String), CaError> {
    crate::authority::check_common_name(common_name)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::crypto("generating a P-256 key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CaError::crypto("building a CSR", e))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| CaError::crypto("encoding a CSR", e))?;
    Ok((key.serialize_pem(), csr_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_significant_bits() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[0x01]), 1);
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        let mut m = vec![0u8; 257];
        m[1] = 0xc1;
        assert_eq!(modulus_bits(&m), 2048);
    }

    #[test]
    fn generated_csr_validates_and_carries_cn() {
        let (key_pem, csr_pem) = generate_key_and_csr("356938035643809").unwrap();
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        let v = validate_csr(&csr_pem).unwrap();
        assert_eq!(v.common_names, vec!["356938035643809".to_string()]);
    }

    #[test]
    fn accepts_surrounding_whitespace_and_legacy_label() {
        let (_, csr_pem) = generate_key_and_csr("a").unwrap();
        assert!(validate_csr(&format!("\n\n  {csr_pem}\n\t\n")).is_ok());
        let legacy = csr_pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert!(validate_csr(&legacy).is_ok());
    }

    #[test]
    fn rejects_two_blocks_and_text_around() {
        let (_, csr_pem) = generate_key_and_csr("a").unwrap();
        let two = format!("{csr_pem}{csr_pem}");
        let err = validate_csr(&two).unwrap_err().to_string();
        assert!(err.contains("exactly one PEM block"), "{err}");
        let prefixed = format!("hello\n{csr_pem}");
        let err = validate_csr(&prefixed).unwrap_err().to_string();
        assert!(err.contains("not a PEM CERTIFICATE REQUEST"), "{err}");
    }
}
