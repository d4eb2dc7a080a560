//! Enrolling simulated modems through the REST API, with an on-disk cache.
//!
//! For each IMEI: `POST /api/v1/devices {"imei"}` (409, already registered, is fine),
//! a new P-256 key and CSR, `POST /api/v1/devices/{imei}/certificate {"csr"}`. The CA
//! certificate comes from `GET /api/v1/ca/certificate`. Cached in a directory:
//! `<imei>.key.pem` (mode 0600), `<imei>.crt.pem` and `ca.pem`, so a restart reuses
//! them; a changed CA certificate (a new platform) discards the cached device
//! certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use callhome_core::Imei;
use futures::StreamExt as _;
use reqwest::StatusCode;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::SimError;
use crate::tls::{Credentials, install_crypto_provider};

/// The cached CA certificate's file name.
pub const CA_FILE: &str = "ca.pem";

/// Enrolls modems through one API base URL with one credential.
#[derive(Debug, Clone)]
pub struct Enroller {
    client: reqwest::Client,
    base: String,
    credential: String,
    cache_dir: PathBuf,
    ca_changed: Arc<AtomicBool>,
}

#[derive(Deserialize)]
struct Signed {
    certificate: String,
    /// The issuing CA first, the root last.
    ca_chain: String,
}

impl Enroller {
    /// `api_base` like `http://127.0.0.1:8080` (no trailing `/api/v1`); `credential` an
    /// access token or an API key (both are sent as `Authorization: Bearer`);
    /// `api_ca_pem` the CA to trust for an `https` API (the system's roots otherwise).
    pub fn new(
        api_base: &str,
        credential: &str,
        cache_dir: &Path,
        api_ca_pem: Option<&str>,
    ) -> Result<Self, SimError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64);
        if let Some(ca) = api_ca_pem {
            let config = callhome_ca::tls::client_config(ca, None, None)?;
            builder = builder.tls_backend_preconfigured((*config).clone());
        }
        let client = builder
            .build()
            .map_err(|e| SimError::Http("building the HTTP client".into(), e))?;
        std::fs::create_dir_all(cache_dir).map_err(|source| SimError::Io {
            path: cache_dir.to_owned(),
            source,
        })?;
        Ok(Self {
            client,
            base: api_base.trim_end_matches('/').to_owned(),
            credential: credential.to_owned(),
            cache_dir: cache_dir.to_owned(),
            ca_changed: Arc::new(AtomicBool::new(false)),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Fetches the CA certificate, compares it with the cached `ca.pem` and stores it.
    /// Call before [`Enroller::enroll`]: a changed CA invalidates cached certificates.
    pub async fn ca_certificate(&self) -> Result<String, SimError> {
        let path = "/api/v1/ca/certificate";
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| SimError::Http(format!("GET {path}"), e))?;
        let ca = expect(resp, "GET", path, StatusCode::OK).await?;
        let file = self.cache_dir.join(CA_FILE);
        let cached = std::fs::read_to_string(&file).ok();
        if cached.as_deref() != Some(ca.as_str()) {
            self.ca_changed.store(cached.is_some(), Ordering::Relaxed);
            write_file(&file, ca.as_bytes(), false)?;
        }
        Ok(ca)
    }

    /// The cached key and certificate of `imei`, if present, matching, and issued by
    /// the current CA.
    pub fn cached(&self, imei: &Imei) -> Option<Credentials> {
        if self.ca_changed.load(Ordering::Relaxed) {
            return None;
        }
        let key_pem = std::fs::read_to_string(self.key_path(imei)).ok()?;
        let cert_pem = std::fs::read_to_string(self.cert_path(imei)).ok()?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).ok()?;
        certified.keys_match().ok()?;
        Some(Credentials { cert_pem, key_pem })
    }

    fn key_path(&self, imei: &Imei) -> PathBuf {
        cache_paths(&self.cache_dir, imei).0
    }

    fn cert_path(&self, imei: &Imei) -> PathBuf {
        cache_paths(&self.cache_dir, imei).1
    }

    /// Registers `imei` (if needed) and gets it a certificate for a new key, or returns
    /// the cached ones. Transient failures (connection errors, 5xx, 429) are retried
    /// three times.
    pub async fn enroll(&self, imei: &Imei) -> Result<Credentials, SimError> {
        if let Some(c) = self.cached(imei) {
            return Ok(c);
        }
        let mut attempt = 0;
        loop {
            match self.enroll_once(imei).await {
                Ok(c) => return Ok(c),
                Err(e) if attempt < 3 && is_transient(&e) => {
                    attempt += 1;
                    tracing::debug!(%imei, error = %e, attempt, "enrollment failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn enroll_once(&self, imei: &Imei) -> Result<Credentials, SimError> {
        let path = "/api/v1/devices";
        let resp = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.credential)
            .json(&serde_json::json!({ "imei": imei.as_str() }))
            .send()
            .await
            .map_err(|e| SimError::Http(format!("POST {path}"), e))?;
        if resp.status() != StatusCode::CONFLICT {
            expect(resp, "POST", path, StatusCode::CREATED).await?;
        }

        let (key_pem, csr_pem) = callhome_ca::generate_key_and_csr(imei.as_str())?;
        let path = format!("/api/v1/devices/{imei}/certificate");
        let resp = self
            .client
            .post(self.url(&path))
            .bearer_auth(&self.credential)
            .json(&serde_json::json!({ "csr": csr_pem }))
            .send()
            .await
            .map_err(|e| SimError::Http(format!("POST {path}"), e))?;
        let body = expect(resp, "POST", &path, StatusCode::CREATED).await?;
        let signed: Signed = serde_json::from_str(&body).map_err(|e| SimError::Api {
            method: "POST",
            path: path.clone(),
            status: 201,
            body: format!("unexpected body: {e}"),
        })?;
        // The modem presents its certificate with the chain up to the root, as a real
        // modem's certificate file should hold it: a reading platform that trusts only the
        // root (direct sessions) can then verify it.
        let cert_pem = format!(
            "{}{}{}",
            signed.certificate,
            if signed.certificate.ends_with('\n') {
                ""
            } else {
                "\n"
            },
            signed.ca_chain
        );
        write_file(&self.key_path(imei), key_pem.as_bytes(), true)?;
        write_file(&self.cert_path(imei), cert_pem.as_bytes(), false)?;
        Ok(Credentials { cert_pem, key_pem })
    }

    /// Enrolls every IMEI, `concurrency` at a time, calling `progress` after each; the
    /// result is in the order of `imeis`. Stops at the first error.
    pub async fn enroll_all(
        &self,
        imeis: &[Imei],
        concurrency: usize,
        progress: impl Fn(&Imei),
    ) -> Result<Vec<Credentials>, SimError> {
        let mut out = Vec::with_capacity(imeis.len());
        let mut stream = futures::stream::iter(imeis.iter().map(|imei| async move {
            let r = self.enroll(imei).await;
            (imei, r)
        }))
        .buffered(concurrency.max(1));
        while let Some((imei, r)) = stream.next().await {
            out.push(r?);
            progress(imei);
        }
        Ok(out)
    }
}

fn is_transient(e: &SimError) -> bool {
    match e {
        SimError::Http(_, e) => e.is_connect() || e.is_timeout() || e.is_request(),
        SimError::Api { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// Reads the body; an error unless the status is `want`.
async fn expect(
    resp: reqwest::Response,
    method: &'static str,
    path: &str,
    want: StatusCode,
) -> Result<String, SimError> {
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| SimError::Http(format!("{method} {path}: reading the body"), e))?;
    if status != want {
        let mut body = body;
        body.truncate(500);
        return Err(SimError::Api {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            body,
        });
    }
    Ok(body)
}

/// The cached key and certificate files of `imei` in `dir`.
pub(crate) fn cache_paths(dir: &Path, imei: &Imei) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{imei}.key.pem")),
        dir.join(format!("{imei}.crt.pem")),
    )
}

pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), SimError> {
    if secret {
        callhome_ca::write_secret_file(path, bytes)?;
        Ok(())
    } else {
        std::fs::write(path, bytes).map_err(|source| SimError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// How [`est_claim_enroll`] waits while the enrolment is held for approval.
#[derive(Debug, Clone, Copy)]
pub struct ClaimWait {
    /// Longest wait between two attempts, whatever `Retry-After` says (a test asks again
    /// sooner than a modem would).
    pub max_interval: Duration,
    /// Give up after waiting this long in all.
    pub give_up_after: Duration,
}

impl Default for ClaimWait {
    fn default() -> Self {
        Self {
            max_interval: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Enrols `imei` over EST as a factory-fresh modem does with its batch's claim certificate:
/// makes a new P-256 key and a CSR with CN = IMEI, POSTs it to `simpleenroll` on the
/// device-facing listener `device_base` (like `https://host:8444`) presenting the claim
/// certificate (`claim_cert_pem`, `claim_key_pem`) as the TLS client certificate and
/// trusting `ca_pem`; while the answer is 202 (held for approval) waits `Retry-After`
/// (capped by `wait`) and asks again with the same CSR. Returns the device's own
/// credentials (its certificate followed by `ca_pem`'s chain, and the new key). A refusal
/// is [`SimError::Api`] with the server's text.
pub async fn est_claim_enroll(
    device_base: &str,
    ca_pem: &str,
    claim_cert_pem: &str,
    claim_key_pem: &str,
    imei: &Imei,
    wait: ClaimWait,
) -> Result<Credentials, SimError> {
    use base64::Engine as _;
    install_crypto_provider();
    let tls = callhome_ca::tls::client_config(ca_pem, Some(claim_cert_pem), Some(claim_key_pem))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(Arc::unwrap_or_clone(tls))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| SimError::Http("building the EST client".into(), e))?;
    let (key_pem, csr_pem) = callhome_ca::generate_key_and_csr(imei.as_str())?;
    let csr_der = pem::parse(csr_pem.as_bytes())
        .map_err(|e| SimError::Tls(format!("generated CSR: {e}")))?
        .into_contents();
    let body = base64::engine::general_purpose::STANDARD.encode(&csr_der);
    let path = "/.well-known/est/simpleenroll";
    let url = format!("{}{path}", device_base.trim_end_matches('/'));
    let started = std::time::Instant::now();
    loop {
        let resp = client
            .post(&url)
            .header("content-type", "application/pkcs10")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| SimError::Http(format!("POST {path}"), e))?;
        let status = resp.status();
        if status == StatusCode::ACCEPTED {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(60);
            let pause = Duration::from_secs(retry_after).min(wait.max_interval);
            if started.elapsed() + pause > wait.give_up_after {
                return Err(SimError::Invalid(format!(
                    "the enrolment of {imei} was still held for approval after {:?}",
                    started.elapsed()
                )));
            }
            tracing::debug!(%imei, retry_after, "enrolment held for approval; waiting");
            tokio::time::sleep(pause).await;
            continue;
        }
        let text = resp
            .text()
            .await
            .map_err(|e| SimError::Http(format!("POST {path}"), e))?;
        if status != StatusCode::OK {
            return Err(SimError::Api {
                method: "POST",
                path: path.to_owned(),
                status: status.as_u16(),
                body: text.trim().chars().take(500).collect(),
            });
        }
        let compact: String = text.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| SimError::Tls(format!("simpleenroll answer is not base64: {e}")))?;
        let leaf = first_certificate(&der)?;
        let cert_pem = format!(
            "{}{}",
            pem::encode(&pem::Pem::new("CERTIFICATE", leaf)),
            ca_pem
        );
        return Ok(Credentials { cert_pem, key_pem });
    }
}

/// The first certificate of a certs-only PKCS#7 (CMS SignedData), DER.
fn first_certificate(der: &[u8]) -> Result<Vec<u8>, SimError> {
    use cms::cert::CertificateChoices;
    use der::{Decode as _, Encode as _};
    let bad = |e: der::Error| SimError::Tls(format!("simpleenroll answer is not PKCS#7: {e}"));
    let info = cms::content_info::ContentInfo::from_der(der).map_err(bad)?;
    let signed = info
        .content
        .decode_as::<cms::signed_data::SignedData>()
        .map_err(bad)?;
    let cert = signed
        .certificates
        .and_then(|set| {
            set.0.iter().find_map(|c| match c {
                CertificateChoices::Certificate(c) => Some(c.clone()),
                _ => None,
            })
        })
        .ok_or_else(|| SimError::Tls("simpleenroll answer holds no certificate".into()))?;
    cert.to_der().map_err(bad)
}
