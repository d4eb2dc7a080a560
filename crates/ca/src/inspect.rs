//! Reading certificates: serial numbers, names, dates and fingerprints.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::CaError;

/// The facts about a certificate that the rest of Callhome records or shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number: uppercase hex, no colons, no leading `00` bytes.
    pub serial: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The issuer's common name, if it has one.
    pub issuer_cn: Option<String>,
    /// SHA-256 over the DER certificate, lowercase hex without separators.
    pub fingerprint_sha256: String,
}

/// Parses a PEM certificate and returns its serial, names, dates and fingerprint.
///
/// If `pem` holds a chain, the first certificate (the leaf) is inspected.
pub fn inspect_certificate(pem: &str) -> Result<CertificateInfo, CaError> {
    let ders = parse_certificate_pems(pem).map_err(CaError::InvalidCertificate)?;
    let der = ders
        .first()
        .ok_or_else(|| CaError::InvalidCertificate("no certificate found".into()))?;
    let cert = parse_certificate_der(der).map_err(CaError::InvalidCertificate)?;
    Ok(certificate_info(&cert, der))
}

/// Inspects a DER certificate (for example the one a TLS peer presented).
pub fn inspect_certificate_der(der: &[u8]) -> Result<CertificateInfo, CaError> {
    let cert = parse_certificate_der(der).map_err(CaError::InvalidCertificate)?;
    Ok(certificate_info(&cert, der))
}

pub(crate) fn certificate_info(cert: &X509Certificate<'_>, der: &[u8]) -> CertificateInfo {
    CertificateInfo {
        serial: serial_hex(cert.raw_serial()),
        common_name: first_common_name(cert.subject()).ok().flatten(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        issuer_cn: first_common_name(cert.issuer()).ok().flatten(),
        fingerprint_sha256: fingerprint_sha256(der),
    }
}

/// SHA-256 over `der`, lowercase hex.
pub(crate) fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Uppercase hex of a DER INTEGER's content bytes, without leading zero bytes.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = &raw[start..];
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        hex::encode_upper(trimmed)
    }
}

/// All common names of `name`; `Err` if one is not a readable string.
pub(crate) fn common_names(name: &X509Name<'_>) -> Result<Vec<String>, ()> {
    name.iter_common_name()
        .map(|attr| attr.as_str().map(str::to_owned).map_err(|_| ()))
        .collect()
}

fn first_common_name(name: &X509Name<'_>) -> Result<Option<String>, ()> {
    Ok(common_names(name)?.into_iter().next())
}

/// First organization (O) of `name`, if any and readable.
pub(crate) fn first_organization(name: &X509Name<'_>) -> Option<String> {
    name.iter_organization()
        .next()
        .and_then(|attr| attr.as_str().ok())
        .map(str::to_owned)
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_certificate_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing data after the certificate".into());
    }
    Ok(cert)
}

/// Parses PEM text holding one or more `CERTIFICATE` blocks (and nothing else but
/// whitespace) into DER blobs.
pub(crate) fn parse_certificate_pems(input: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = parse_pem_blocks(input)?;
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.tag() != "CERTIFICATE" {
            return Err(format!(
                "expected a PEM CERTIFICATE, found a PEM {}",
                block.tag()
            ));
        }
        out.push(block.into_contents());
    }
    Ok(out)
}

/// Parses text made of PEM blocks only (surrounding whitespace allowed).
pub(crate) fn parse_pem_blocks(input: &str) -> Result<Vec<pem::Pem>, String> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err("input is empty".into());
    }
    if !trimmed.starts_with("-----BEGIN ") || !trimmed.ends_with("-----") {
        return Err(
            "not PEM (expected text between -----BEGIN ...----- and -----END ...----- lines)"
                .into(),
        );
    }
    let blocks = pem::parse_many(trimmed).map_err(|e| format!("malformed PEM: {e}"))?;
    if blocks.is_empty() {
        return Err("no PEM block found".into());
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_strips_leading_zeros() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8A01");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7F00");
        assert_eq!(serial_hex(&[0x00]), "0");
        assert_eq!(serial_hex(&[]), "0");
    }

    #[test]
    fn pem_blocks_reject_non_pem() {
        assert!(parse_pem_blocks("").is_err());
        assert!(parse_pem_blocks("   \n").is_err());
        assert!(parse_pem_blocks("hello").is_err());
        assert!(parse_pem_blocks("-----BEGIN X-----\n!!!\n-----END X-----").is_err());
        assert!(parse_certificate_pems("-----BEGIN X-----\nAAAA\n-----END X-----").is_err());
    }
}
