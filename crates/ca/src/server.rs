//! The server's own TLS identity, issued by the CA and kept on disk.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::str::FromStr;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::CaError;
use crate::authority::{Authority, LeafKind, ensure_newline};
use crate::fs::{
    ensure_dir, exists, read_text, tighten_secret_mode, write_public_file, write_secret_file,
};
use crate::inspect::{parse_certificate_der, parse_certificate_pems};

/// File name of the server private key.
pub const SERVER_KEY_FILE: &str = "server.key.pem";
/// File name of the server certificate chain (leaf, then CA).
pub const SERVER_CERT_FILE: &str = "server.crt.pem";

/// A server certificate still valid for less than this is replaced (or for less than a
/// third of its validity, when that is shorter).
const RENEW_BEFORE: Duration = Duration::days(30);

/// The server's TLS certificate chain and key, ready for [`crate::tls::server_config`].
pub struct ServerIdentity {
    /// Leaf certificate then CA certificate, in PEM.
    pub cert_chain_pem: String,
    /// Leaf certificate then CA certificate, in DER.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// End of validity of the leaf certificate.
    pub not_after: OffsetDateTime,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        ServerIdentity {
            cert_chain_pem: self.cert_chain_pem.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            not_after: self.not_after,
        }
    }
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("certificates", &self.cert_chain.len())
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish()
    }
}

/// A subject alternative name we require or find.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl Name {
    fn parse(host: &str) -> Result<Option<Name>, CaError> {
        let h = host.trim();
        if h.is_empty() {
            return Ok(None);
        }
        let unbracketed = h
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(h);
        if let Ok(ip) = IpAddr::from_str(unbracketed) {
            return Ok(Some(Name::Ip(ip)));
        }
        let dns = h.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let labels: Vec<&str> = dns.split('.').collect();
        let valid = dns.len() <= 253
            && match labels.split_first() {
                // A wildcard needs at least two labels after it ("*.example.com").
                Some((&"*", rest)) => rest.len() >= 2 && rest.iter().all(|l| label_ok(l)),
                _ => labels.iter().all(|l| label_ok(l)),
            };
        if !valid {
            return Err(CaError::InvalidInput(format!(
                "{host:?} is neither an IP address nor a valid DNS name"
            )));
        }
        Ok(Some(Name::Dns(dns)))
    }

    fn to_san(&self) -> Result<SanType, CaError> {
        Ok(match self {
            Name::Ip(ip) => SanType::IpAddress(*ip),
            Name::Dns(d) => SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|_| CaError::InvalidInput(format!("{d:?} is not a valid DNS name")))?,
            ),
        })
    }

    fn as_cn(&self) -> String {
        match self {
            Name::Ip(ip) => ip.to_string(),
            Name::Dns(d) => d.clone(),
        }
    }
}

/// The names a server certificate must cover: `hosts` plus the loopback names.
fn required_names(hosts: &[String]) -> Result<Vec<Name>, CaError> {
    let mut names = Vec::new();
    for h in hosts {
        if let Some(n) = Name::parse(h)? {
            names.push(n);
        }
    }
    names.push(Name::Dns("localhost".into()));
    names.push(Name::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    names.push(Name::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

impl Authority {
    /// Returns the server's TLS identity from `server.key.pem` / `server.crt.pem` in
    /// `dir`, issuing a new one when needed.
    ///
    /// The files are reused if the certificate was signed by this CA, is valid for at
    /// least 30 more days, matches the key, and its SANs cover every entry of `hosts`
    /// plus `localhost`, `127.0.0.1` and `::1`. Otherwise (including unreadable or
    /// corrupt files: they hold nothing that cannot be re-made) a new P-256 key and
    /// certificate are issued: SANs = `hosts` (IP addresses or DNS names, detected;
    /// `[::1]` style brackets accepted) and the loopback names, EKU serverAuth, CN =
    /// the first host or `callhome`, validity [`crate::CaParams::server_validity_days`].
    /// The key is written with mode 0600, atomically.
    pub fn ensure_server_identity(
        &self,
        dir: &Path,
        hosts: &[String],
    ) -> Result<ServerIdentity, CaError> {
        let names = required_names(hosts)?;
        ensure_dir(dir)?;
        let key_path = dir.join(SERVER_KEY_FILE);
        let cert_path = dir.join(SERVER_CERT_FILE);
        if exists(&key_path)? && exists(&cert_path)? {
            match self.try_reuse(&key_path, &cert_path, &names) {
                Ok(identity) => return Ok(identity),
                Err(reason) => tracing::info!(
                    path = %cert_path.display(),
                    %reason,
                    "issuing a new server certificate"
                ),
            }
        }

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::crypto("generating the server key", e))?;
        let sans = names
            .iter()
            .map(Name::to_san)
            .collect::<Result<Vec<_>, _>>()?;
        let cn = hosts
            .iter()
            .find_map(|h| Name::parse(h).ok().flatten())
            .map(|n| n.as_cn())
            .filter(|cn| cn.chars().count() <= 64)
            .unwrap_or_else(|| "callhome".to_string());
        let issued = self.issue_leaf(
            LeafKind::Server,
            &cn,
            &key,
            self.server_validity_days,
            &sans,
        )?;
        let chain_pem = format!("{}{}", issued.certificate_pem, self.presented_chain_pem());
        write_secret_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public_file(&cert_path, chain_pem.as_bytes())?;
        tracing::info!(
            path = %cert_path.display(),
            serial = %issued.serial,
            not_after = %issued.not_after,
            "issued server certificate"
        );
        self.identity(&issued.certificate_pem, &key, issued.not_after)
    }

    /// Reuses the files if they are good; `Err` says why not.
    fn try_reuse(
        &self,
        key_path: &Path,
        cert_path: &Path,
        names: &[Name],
    ) -> Result<ServerIdentity, String> {
        tighten_secret_mode(key_path).map_err(|e| e.to_string())?;
        let key_pem = read_text(key_path).map_err(|e| e.to_string())?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| format!("the key cannot be read: {e}"))?;
        let cert_text = read_text(cert_path).map_err(|e| e.to_string())?;
        let ders = parse_certificate_pems(&cert_text)?;
        let leaf_der = ders.first().ok_or("no certificate in the file")?;
        let leaf = parse_certificate_der(leaf_der)?;

        if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err("the certificate does not match the key".into());
        }
        let signed_by_us = self
            .with_parsed_ca(|ca| {
                leaf.issuer().as_raw() == ca.subject().as_raw()
                    && leaf.verify_signature(Some(ca.public_key())).is_ok()
            })
            .map_err(|e| e.to_string())?;
        if !signed_by_us {
            return Err("the certificate was not issued by this CA".into());
        }
        let now = OffsetDateTime::now_utc();
        let not_before = leaf.validity().not_before.to_datetime();
        let not_after = leaf.validity().not_after.to_datetime();
        if not_before > now {
            return Err(format!("the certificate is not valid before {not_before}"));
        }
        let renew_before =
            RENEW_BEFORE.min(Duration::days(i64::from(self.server_validity_days)) / 3);
        if not_after <= now + renew_before {
            return Err(format!("the certificate expires on {not_after}"));
        }
        let server_auth =
            matches!(leaf.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth);
        if !server_auth {
            return Err("the certificate is not for server authentication".into());
        }
        let mut present = HashSet::new();
        if let Ok(Some(san)) = leaf.subject_alternative_name() {
            for gn in &san.value.general_names {
                match gn {
                    GeneralName::DNSName(d) => {
                        present.insert(Name::Dns(d.to_ascii_lowercase()));
                    }
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            present.insert(Name::Ip(ip));
                        }
                    }
                    _ => {}
                }
            }
        }
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !present.contains(*n))
            .map(Name::as_cn)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the certificate does not cover {}",
                missing.join(", ")
            ));
        }
        let leaf_pem = pem::encode_config(
            &pem::Pem::new("CERTIFICATE", leaf_der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        self.identity(&leaf_pem, &key, not_after)
            .map_err(|e| e.to_string())
    }

    fn identity(
        &self,
        leaf_pem: &str,
        key: &KeyPair,
        not_after: OffsetDateTime,
    ) -> Result<ServerIdentity, CaError> {
        let leaf_ders = parse_certificate_pems(leaf_pem).map_err(CaError::InvalidCertificate)?;
        let leaf = leaf_ders
            .into_iter()
            .next()
            .ok_or_else(|| CaError::InvalidCertificate("no server certificate".into()))?;
        Ok(ServerIdentity {
            cert_chain_pem: format!("{}{}", ensure_newline(leaf_pem), self.presented_chain_pem()),
            cert_chain: std::iter::once(CertificateDer::from(leaf))
                .chain(self.presented_chain().into_iter().map(|l| l.der.clone()))
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaParams;

    #[test]
    fn host_parsing() {
        assert_eq!(
            Name::parse("Example.COM.").unwrap(),
            Some(Name::Dns("example.com".into()))
        );
        assert_eq!(
            Name::parse("[::1]").unwrap(),
            Some(Name::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        assert_eq!(
            Name::parse(" 10.0.0.1 ").unwrap(),
            Some(Name::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))))
        );
        assert_eq!(
            Name::parse("*.example.com").unwrap(),
            Some(Name::Dns("*.example.com".into()))
        );
        assert_eq!(Name::parse("  ").unwrap(), None);
        for bad in [
            "exa mple.com",
            "a..b",
            "-a.com",
            "ü.com",
            "a/b",
            "*",
            "a.*.com",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
        let names = required_names(&["localhost".into(), "10.0.0.1".into()]).unwrap();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    /// A server certificate close to expiry is replaced (needs the internal issuer to
    /// fabricate a short-lived certificate).
    #[test]
    fn expiring_server_certificate_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_init(dir.path(), &CaParams::default()).unwrap();
        let hosts = vec!["callhome.example".to_string()];
        let first = ca.ensure_server_identity(dir.path(), &hosts).unwrap();

        // Overwrite with a 10-day certificate for the same key and names.
        let key_pem = std::fs::read_to_string(dir.path().join(SERVER_KEY_FILE)).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        let sans: Vec<SanType> = required_names(&hosts)
            .unwrap()
            .iter()
            .map(|n| n.to_san().unwrap())
            .collect();
        let short = ca
            .issue_leaf(LeafKind::Server, "callhome.example", &key, 10, &sans)
            .unwrap();
        std::fs::write(dir.path().join(SERVER_CERT_FILE), &short.certificate_pem).unwrap();
        let err = ca
            .try_reuse(
                &dir.path().join(SERVER_KEY_FILE),
                &dir.path().join(SERVER_CERT_FILE),
                &required_names(&hosts).unwrap(),
            )
            .unwrap_err();
        assert!(err.contains("expires"), "{err}");

        let renewed = ca.ensure_server_identity(dir.path(), &hosts).unwrap();
        assert_ne!(renewed.cert_chain[0], first.cert_chain[0]);
        assert!(renewed.not_after > OffsetDateTime::now_utc() + Duration::days(300));
    }
}
