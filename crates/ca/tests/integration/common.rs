//! Helpers shared by the integration tests.

use std::path::Path;
use std::sync::Arc;

use callhome_ca::{Authority, CaParams, CertificateDer, CertificateRevocationListDer};
use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tempfile::TempDir;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

pub const IMEI: &str = "356938035643809";

/// A fresh CA in a temporary directory (kept alive by the returned `TempDir`).
pub fn new_ca() -> (TempDir, Authority) {
    new_ca_with(&CaParams::default())
}

pub fn new_ca_with(params: &CaParams) -> (TempDir, Authority) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::load_or_init(&dir.path().join("ca"), params).expect("init CA");
    (dir, ca)
}

/// A second, unrelated CA with a different name.
pub fn other_ca() -> (TempDir, Authority) {
    new_ca_with(&CaParams {
        common_name: "Some Other CA".into(),
        ..CaParams::default()
    })
}

/// PEM with LF line endings (as the CA writes it).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

pub fn ca_dir(tmp: &TempDir) -> std::path::PathBuf {
    tmp.path().join("ca")
}

/// DER of the single (first) PEM block in `pem_text`.
pub fn pem_to_der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("PEM").into_contents()
}

/// Runs `f` on the parsed certificate in `pem_text`.
pub fn with_cert<T>(pem_text: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let der = pem_to_der(pem_text);
    let (rest, cert) = X509Certificate::from_der(&der).expect("certificate DER");
    assert!(rest.is_empty());
    f(&cert)
}

/// Checks with x509-parser that `cert_pem` is signed by `ca`'s key and names it as issuer.
pub fn assert_signed_by(ca: &Authority, cert_pem: &str) {
    let ca_der = ca.ca_certificate_der().to_vec();
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("CA DER");
    with_cert(cert_pem, |cert| {
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("certificate signature verifies with the CA key");
    });
}

/// A webpki client-certificate verifier trusting `ca` (ring provider), with `crls`.
pub fn verifier(
    ca: &Authority,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Arc<dyn ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_certificate_der().clone()).expect("root");
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(crls)
    .only_check_end_entity_revocation()
    .build()
    .expect("verifier")
}

/// Verifies `cert_pem` as a TLS client certificate against `ca` (and `crls`) now.
pub fn webpki_verify(
    ca: &Authority,
    crls: Vec<CertificateRevocationListDer<'static>>,
    cert_pem: &str,
) -> Result<(), rustls::Error> {
    let der = CertificateDer::from(pem_to_der(cert_pem));
    verifier(ca, crls)
        .verify_client_cert(&der, &[], UnixTime::now())
        .map(|_| ())
}

/// Whether the openssl binary the tests may shell out to is present.
pub fn openssl_available() -> bool {
    Path::new("/usr/bin/openssl").exists()
}

/// Reads a fixture file from `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
