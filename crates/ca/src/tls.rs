//! rustls configurations built from the CA's material.
//!
//! Everything here uses the `ring` crypto provider explicitly, so nothing depends on a
//! process-wide default provider having been installed.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::CaError;
use crate::inspect::parse_certificate_pems;
use crate::server::ServerIdentity;

/// Whether the server asks TLS clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate chaining to the given roots (and not revoked) is mandatory.
    Required,
    /// A certificate is requested and, if sent, verified like [`ClientAuth::Required`];
    /// clients sending none are let through (legacy modems that log in with a
    /// username and password at the application layer).
    Optional,
    /// No certificate is requested.
    None,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> CaError {
    CaError::Tls(format!("{what}: {e}"))
}

/// Builds a TLS 1.3/1.2 server configuration presenting `identity`.
///
/// With [`ClientAuth::Required`] or [`ClientAuth::Optional`], client certificates are
/// verified against `client_roots` (normally just the CA certificate) and checked
/// against `crls`:
///
/// - Only the end-entity certificate's revocation status is checked (our chains are
///   leaf → root; the root itself is never checked).
/// - A certificate whose revocation status is unknown (no CRL from its issuer among
///   `crls`) is rejected. Our CA always publishes a complete CRL, with no
///   distribution-point scope, so any certificate it issued, including ones issued
///   after that CRL, has a known status: revoked if its serial is listed, good
///   otherwise. Hence: when passing CRLs, pass one for every root in `client_roots`.
/// - An expired CRL (past its nextUpdate) is still used rather than rejecting every
///   client; the caller re-signs the CRL well before it expires.
///
/// With an empty `crls`, no revocation check is done. `client_roots` and `crls` are
/// ignored with [`ClientAuth::None`].
pub fn server_config(
    identity: &ServerIdentity,
    client_roots: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, CaError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| tls_err("protocol versions", e))?;

    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let mut roots = RootCertStore::empty();
            for root in client_roots {
                roots
                    .add(root.clone())
                    .map_err(|e| tls_err("client CA certificate", e))?;
            }
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .only_check_end_entity_revocation();
            if client_auth == ClientAuth::Optional {
                vb = vb.allow_unauthenticated();
            }
            let verifier = vb
                .build()
                .map_err(|e| tls_err("client certificate verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let config = builder
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| tls_err("server certificate and key", e))?;
    Ok(Arc::new(config))
}

/// Builds a TLS client configuration that trusts only the CA(s) in `ca_pem`, optionally
/// presenting a client certificate.
///
/// `client_cert_chain_pem` (leaf first) and `client_key_pem` (PKCS#8, SEC1 or PKCS#1)
/// must be given together or not at all. Used by the modem simulator and by tests.
pub fn client_config(
    ca_pem: &str,
    client_cert_chain_pem: Option<&str>,
    client_key_pem: Option<&str>,
) -> Result<Arc<ClientConfig>, CaError> {
    let mut roots = RootCertStore::empty();
    for der in parse_certificate_pems(ca_pem)
        .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?
    {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| tls_err("protocol versions", e))?
        .with_root_certificates(roots);

    let config = match (client_cert_chain_pem, client_key_pem) {
        (None, None) => builder.with_no_client_auth(),
        (Some(chain_pem), Some(key_pem)) => {
            let chain: Vec<CertificateDer<'static>> = parse_certificate_pems(chain_pem)
                .map_err(|e| CaError::InvalidCertificate(format!("client certificate: {e}")))?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
                CaError::InvalidInput(format!("client private key is not a usable PEM key: {e}"))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err("client certificate and key", e))?
        }
        _ => {
            return Err(CaError::InvalidInput(
                "a client certificate and its private key must be given together".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// A server configuration that can be replaced atomically while connections are being
/// accepted (new CRL, renewed server certificate).
///
/// Build the configuration once per change with [`server_config`] and [`store`] it;
/// each accepted connection [`load`]s the current one.
///
/// [`store`]: SharedServerConfig::store
/// [`load`]: SharedServerConfig::load
pub struct SharedServerConfig(ArcSwap<ServerConfig>);

impl SharedServerConfig {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        SharedServerConfig(ArcSwap::new(config))
    }

    /// The current configuration.
    pub fn load(&self) -> Arc<ServerConfig> {
        self.0.load_full()
    }

    /// Replaces the configuration; connections already accepted keep the old one.
    pub fn store(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }
}

impl std::fmt::Debug for SharedServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedServerConfig").finish_non_exhaustive()
    }
}
