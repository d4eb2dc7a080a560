//! Certificate revocation lists: entries, reasons and the signed result.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;

use crate::CaError;

/// Why a certificate was revoked (RFC 5280 §5.3.1 reason codes that apply to a
/// complete CRL of end-entity certificates).
///
/// Parsed from and printed as snake_case strings (`"key_compromise"`, ...), which is
/// how the caller stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given (the CRL entry then carries no reason code, as RFC 5280 asks).
    Unspecified,
    /// The device's private key was, or may have been, compromised.
    KeyCompromise,
    /// The CA's key was compromised.
    CaCompromise,
    /// The subject's affiliation changed (e.g. the modem moved to another customer).
    AffiliationChanged,
    /// The certificate was replaced by a new one.
    Superseded,
    /// The device is out of service.
    CessationOfOperation,
    /// The certificate is on hold (temporarily suspended).
    CertificateHold,
    /// The privileges granted to the subject were withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// All reasons, in RFC 5280 code order.
    pub const ALL: [RevocationReason; 8] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The snake_case name, e.g. `"key_compromise"`; [`FromStr`] accepts it back.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key_compromise",
            RevocationReason::CaCompromise => "ca_compromise",
            RevocationReason::AffiliationChanged => "affiliation_changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation_of_operation",
            RevocationReason::CertificateHold => "certificate_hold",
            RevocationReason::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::CertificateHold => rcgen::RevocationReason::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = CaError;

    /// Accepts the snake_case names, case-insensitively, with `-` or spaces in place
    /// of `_` (`"Key-Compromise"` works), and the camel-case names (`"keyCompromise"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str().replace('_', "") == normalized)
            .ok_or_else(|| CaError::InvalidRevocationReason(s.to_string()))
    }
}

/// One revoked certificate, as the caller's inventory records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial number in hex (as in [`crate::IssuedCertificate::serial`]; colons and
    /// lowercase are accepted too).
    pub serial: String,
    /// When the revocation was recorded.
    pub revoked_at: OffsetDateTime,
    /// Why, if known.
    pub reason: Option<RevocationReason>,
}

/// A signed certificate revocation list.
#[derive(Debug, Clone)]
pub struct Crl {
    /// PEM (`X509 CRL`), for publishing over HTTP.
    pub pem: String,
    /// DER, for [`crate::tls::server_config`].
    pub der: CertificateRevocationListDer<'static>,
    /// The same CRL with an issuing distribution point naming its URL, DER, when a CRL
    /// base URL is set: what the device-facing listener publishes for external brokers
    /// (EMQX refuses CRLs without one). Our own listeners check [`Crl::der`], which has
    /// no distribution-point scope and so covers certificates whatever URL they name.
    pub published_der: Option<CertificateRevocationListDer<'static>>,
    /// Key identifier of the issuing CA that signed it, lowercase hex.
    pub issuer_key_id: String,
    /// The CRL's issue time (whole seconds).
    pub this_update: OffsetDateTime,
    /// When the next CRL is due (whole seconds).
    pub next_update: OffsetDateTime,
    /// The CRL number written into the CRL.
    pub crl_number: u64,
}

/// The CRLs in force: one per issuing CA, the current one first.
#[derive(Debug, Clone)]
pub struct CrlSet {
    /// The current issuing CA's CRL.
    pub current: Crl,
    /// The retired issuing CAs' CRLs.
    pub retired: Vec<Crl>,
}

impl CrlSet {
    /// Every CRL, current first.
    pub fn all(&self) -> impl Iterator<Item = &Crl> {
        std::iter::once(&self.current).chain(&self.retired)
    }

    /// The DER of every CRL (without distribution-point scope), for TLS verifiers.
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.all().map(|c| c.der.clone()).collect()
    }

    /// The CRL of the issuing CA whose key identifier is `key_id_hex` (any case).
    pub fn by_issuer_key_id(&self, key_id_hex: &str) -> Option<&Crl> {
        self.all()
            .find(|c| c.issuer_key_id.eq_ignore_ascii_case(key_id_hex))
    }
}

/// Parses a serial number in hex (optional colons, any case, optional `0x`) into its
/// big-endian magnitude without leading zero bytes.
pub(crate) fn parse_serial(serial: &str) -> Result<Vec<u8>, CaError> {
    let bad = |why: &str| CaError::InvalidInput(format!("serial number {serial:?} {why}"));
    let s = serial.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() {
        return Err(bad("is empty"));
    }
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("is not hexadecimal"));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(&padded).map_err(|_| bad("is not hexadecimal"))?;
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let bytes = bytes[start..].to_vec();
    if bytes.is_empty() {
        return Err(bad("is zero"));
    }
    if bytes.len() > 20 {
        return Err(bad("is longer than 20 bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(
            "Key-Compromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(
            "cessationOfOperation".parse::<RevocationReason>().unwrap(),
            RevocationReason::CessationOfOperation
        );
    }

    #[test]
    fn unknown_reason_is_a_clear_error() {
        for bad in ["", "stolen", "key compromised", "remove_from_crl"] {
            let err = bad.parse::<RevocationReason>().unwrap_err();
            assert!(matches!(err, CaError::InvalidRevocationReason(_)));
            assert!(err.to_string().contains("key_compromise"), "{err}");
        }
    }

    #[test]
    fn serial_parsing() {
        assert_eq!(parse_serial("0A1B").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("0a:1b").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("00:8F").unwrap(), vec![0x8f]);
        assert_eq!(parse_serial("0x123").unwrap(), vec![0x01, 0x23]);
        assert!(parse_serial("").is_err());
        assert!(parse_serial("00").is_err());
        assert!(parse_serial("XYZ").is_err());
        assert!(parse_serial("é1").is_err());
        assert!(parse_serial(&"AB".repeat(21)).is_err());
    }
}
