//! Client TLS for simulated modems: one shared configuration trusting the CA, and a
//! per-modem copy that differs only by the client certificate it presents.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::SimError;

/// Installs the `ring` crypto provider as the process default, once; later calls (and
/// a provider installed by someone else) are fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A device's key and certificate, PEM.
#[derive(Clone)]
pub struct Credentials {
    /// The device certificate (leaf first, optionally followed by the chain).
    pub cert_pem: String,
    /// The device's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The TLS client configuration shared by a fleet: trusts only the platform's CA
/// (built with [`callhome_ca::tls::client_config`]), TLS 1.3/1.2, `ring`.
#[derive(Debug, Clone)]
pub struct TlsBase {
    config: Arc<ClientConfig>,
}

impl TlsBase {
    /// Trusts the CA certificate(s) in `ca_pem`.
    pub fn new(ca_pem: &str) -> Result<Self, SimError> {
        let config = callhome_ca::tls::client_config(ca_pem, None, None)?;
        Ok(Self { config })
    }

    /// The shared configuration (no client certificate).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// A configuration presenting `credentials`: the shared one with its client
    /// certificate resolver replaced (so the roots and verifier are shared) and session
    /// resumption off (no per-modem cache; every connection is a full mutual-TLS
    /// handshake, the worst case a gateway must carry). Checks that key and certificate
    /// belong together.
    ///
    /// Equivalent, for the handshake, to `callhome_ca::tls::client_config(ca_pem,
    /// Some(cert), Some(key))`.
    pub fn for_device(&self, credentials: &Credentials) -> Result<Arc<ClientConfig>, SimError> {
        let chain = CertificateDer::pem_slice_iter(credentials.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SimError::Tls(format!("device certificate: {e}")))?;
        if chain.is_empty() {
            return Err(SimError::Tls(
                "device certificate: no certificate in PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
            .map_err(|e| SimError::Tls(format!("device key: {e}")))?;
        let certified = CertifiedKey::from_der(chain, key, self.config.crypto_provider())
            .map_err(|e| SimError::Tls(format!("device certificate and key: {e}")))?;
        let mut config = (*self.config).clone();
        config.client_auth_cert_resolver = Arc::new(OneCertificate(Arc::new(certified)));
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// Always presents the same certificate.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
