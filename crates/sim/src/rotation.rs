//! A simulated modem's client certificate and its rotation over the MQTT channel, as the
//! default dialect's templates order it:
//!
//! - `AT^MTXTUNNEL=CERTREQ,<mode>,<csr_topic>,<cert_topic>`: the modem subscribes to
//!   `<cert_topic>` and publishes on `<csr_topic>` a PEM CSR for a key it makes (`csr`), or
//!   the text `serverkeygen` (`server_keygen`: the platform makes the key). Answered `OK`.
//! - The answer on `<cert_topic>`: the PEM chain (after the PEM key for `server_keygen`),
//!   or `ERROR <reason>`. The modem keeps it aside.
//! - `AT^MTXTUNNEL=CERTINSTALL,<serial>,<sha256>`: `OK` if the certificate kept aside has
//!   that serial and fingerprint (else `ERROR`); the modem then reconnects with it, unless
//!   told `never-confirm` ([`crate::modem::Behaviour::never_confirm`]): it answers `OK` and
//!   goes on with its old certificate. The old key and certificate are kept until the new
//!   ones are in use, so the modem always has a valid certificate.
//!
//! - `AT^MTXTUNNEL=CAINSTALL,<url>,<sha256>`: answered `OK`; the modem then fetches the
//!   PEM bundle at `<url>` over HTTPS (as it downloads firmware), checks its SHA-256, and
//!   trusts those CA certificates for its connections from then on (the next one made).
//!
//! When the modem's credentials come from an enrolment cache, the new ones replace them
//! there ([`CertState::with_cache`]), so a restarted simulator uses them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use callhome_core::certificates::RotationMode;
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

use crate::tls::{Credentials, TlsBase};

/// A certificate received and not yet installed.
struct Received {
    credentials: Credentials,
    serial: String,
    sha256: String,
}

/// The modem's certificate and the rotation in progress.
pub(crate) struct CertState {
    base: TlsBase,
    /// A trust bundle fetched (`CAINSTALL`) and not yet in `base`, with its SHA-256; the
    /// SHA-256 of the one in force is readable through the modem's handle.
    trust: Arc<Mutex<TrustSlot>>,
    current: Credentials,
    /// The current certificate's serial, readable through the modem's handle.
    serial: Arc<Mutex<Option<String>>>,
    /// The key made for the CSR sent (mode `csr`).
    pending_key: Option<Zeroizing<String>>,
    received: Option<Received>,
    /// The topic the answer comes on (from the last request).
    cert_topic: Option<String>,
    /// Where the credentials are cached: (key file, certificate file).
    cache: Option<(PathBuf, PathBuf)>,
}

/// What a `CERTREQ` makes the modem send.
pub(crate) struct Request {
    /// Subscribe here first.
    pub cert_topic: String,
    /// Then publish this here.
    pub csr_topic: String,
    pub payload: Vec<u8>,
}

impl CertState {
    /// The state of a modem presenting `current`.
    pub(crate) fn new(base: TlsBase, current: Credentials) -> Self {
        let serial = serial_of(&current.cert_pem);
        Self {
            base,
            trust: Arc::new(Mutex::new(TrustSlot::default())),
            current,
            serial: Arc::new(Mutex::new(serial)),
            pending_key: None,
            received: None,
            cert_topic: None,
            cache: None,
        }
    }

    /// Writes rotated credentials to `key` (mode 0600) and `cert`.
    pub(crate) fn with_cache(mut self, key: PathBuf, cert: PathBuf) -> Self {
        self.cache = Some((key, cert));
        self
    }

    /// The current serial, shared with the modem's handle.
    pub(crate) fn serial_handle(&self) -> Arc<Mutex<Option<String>>> {
        self.serial.clone()
    }

    /// The trust-anchor slot, shared with the modem's handle and the fetch task.
    pub(crate) fn trust_handle(&self) -> Arc<Mutex<TrustSlot>> {
        self.trust.clone()
    }

    /// The TLS configuration presenting the current certificate (and trusting a bundle
    /// installed since).
    pub(crate) fn config(&mut self) -> Result<Arc<ClientConfig>, crate::SimError> {
        self.take_trust();
        self.base.for_device(&self.current)
    }

    /// Puts a fetched trust bundle in force.
    fn take_trust(&mut self) {
        let mut slot = self
            .trust
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(base) = slot.fetched.take() {
            self.base = base;
        }
    }

    /// `CAINSTALL` arguments: URL and SHA-256.
    pub(crate) fn trust_request(args: &[String]) -> Result<(String, String), String> {
        let [url, sha256] = args else {
            return Err("CAINSTALL takes <url>,<sha256>".into());
        };
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the SHA-256 must be 64 hexadecimal characters".into());
        }
        Ok((url.clone(), sha256.to_ascii_lowercase()))
    }

    /// `CERTREQ` arguments: mode, CSR topic, certificate topic.
    pub(crate) fn request(&mut self, imei: &str, args: &[String]) -> Result<Request, String> {
        let [mode, csr_topic, cert_topic] = args else {
            return Err("CERTREQ takes <mode>,<csr_topic>,<cert_topic>".into());
        };
        let mode = RotationMode::parse(mode).map_err(|e| e.to_string())?;
        let payload = match mode {
            RotationMode::Csr => {
                let (key, csr) =
                    callhome_ca::generate_key_and_csr(imei).map_err(|e| e.to_string())?;
                self.pending_key = Some(Zeroizing::new(key));
                csr.into_bytes()
            }
            RotationMode::ServerKeygen => {
                self.pending_key = None;
                b"serverkeygen".to_vec()
            }
        };
        self.received = None;
        self.cert_topic = Some(cert_topic.clone());
        Ok(Request {
            cert_topic: cert_topic.clone(),
            csr_topic: csr_topic.clone(),
            payload,
        })
    }

    /// Whether `topic` is where the answer to the last request comes.
    pub(crate) fn is_cert_topic(&self, topic: &str) -> bool {
        self.cert_topic.as_deref() == Some(topic)
    }

    /// The platform's answer on the certificate topic.
    pub(crate) fn on_answer(&mut self, imei: &str, payload: &[u8]) {
        match self.read_answer(payload) {
            Ok(r) => {
                tracing::debug!(imei, serial = %r.serial, "new certificate received");
                self.received = Some(r);
            }
            Err(e) => tracing::warn!(imei, error = %e, "certificate answer not usable"),
        }
    }

    fn read_answer(&mut self, payload: &[u8]) -> Result<Received, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "not text".to_owned())?;
        if let Some(reason) = text.strip_prefix("ERROR") {
            return Err(format!("refused:{}", reason.trim_end()));
        }
        let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
        let key = match blocks.iter().find(|b| b.tag() == "PRIVATE KEY") {
            Some(k) => Zeroizing::new(pem::encode(k)),
            None => self
                .pending_key
                .clone()
                .ok_or("a certificate without a key, and no CSR of ours pending")?,
        };
        let certs: Vec<String> = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(pem::encode)
            .collect();
        let leaf = certs.first().ok_or("no certificate")?;
        let info = callhome_ca::inspect_certificate(leaf).map_err(|e| e.to_string())?;
        let credentials = Credentials {
            cert_pem: certs.concat(),
            key_pem: key.to_string(),
        };
        // Key and certificate must belong together before they are worth keeping.
        self.base
            .for_device(&credentials)
            .map_err(|e| e.to_string())?;
        Ok(Received {
            credentials,
            serial: info.serial,
            sha256: info.fingerprint_sha256,
        })
    }

    /// `CERTINSTALL` arguments: serial, SHA-256. The configuration to reconnect with, or
    /// why not.
    pub(crate) fn install(&mut self, args: &[String]) -> Result<Arc<ClientConfig>, String> {
        let [serial, sha256] = args else {
            return Err("CERTINSTALL takes <serial>,<sha256>".into());
        };
        self.take_trust();
        let r = self
            .received
            .as_ref()
            .ok_or("no certificate received to install")?;
        if !r.serial.eq_ignore_ascii_case(serial) || !r.sha256.eq_ignore_ascii_case(sha256) {
            return Err(format!(
                "the certificate received is {} ({}), not {serial}",
                r.serial, r.sha256
            ));
        }
        self.base
            .for_device(&r.credentials)
            .map_err(|e| e.to_string())
    }

    /// Makes the certificate received the current one (after [`CertState::install`]).
    pub(crate) fn switch(&mut self, imei: &str) {
        let Some(r) = self.received.take() else {
            return;
        };
        self.pending_key = None;
        if let Some((key, cert)) = &self.cache {
            let written = crate::enroll::write_file(key, r.credentials.key_pem.as_bytes(), true)
                .and_then(|()| {
                    crate::enroll::write_file(cert, r.credentials.cert_pem.as_bytes(), false)
                });
            if let Err(e) = written {
                tracing::warn!(imei, error = %e, "rotated credentials not cached");
            }
        }
        tracing::info!(imei, serial = %r.serial, "reconnecting with the new certificate");
        *self
            .serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r.serial);
        self.current = r.credentials;
    }
}

/// A trust bundle fetched by `CAINSTALL`.
#[derive(Debug, Default)]
pub(crate) struct TrustSlot {
    /// Fetched and checked, not yet in force.
    fetched: Option<TlsBase>,
    /// The SHA-256 of the last bundle installed.
    pub(crate) sha256: Option<String>,
}

/// Fetches the bundle at `url` as the modem (`ctx`), checks it hashes to `sha256` and
/// holds CA certificates, and leaves it in `slot` for the next connection.
pub(crate) async fn install_trust(
    imei: String,
    ctx: crate::firmware::JobContext,
    url: String,
    sha256: String,
    slot: Arc<Mutex<TrustSlot>>,
) {
    use sha2::Digest as _;
    let result = async {
        let bytes = crate::firmware::fetch(&ctx, &url, 256 * 1024).await?;
        let got = hex::encode(sha2::Sha256::digest(&bytes));
        if got != sha256 {
            return Err(format!("the bundle's SHA-256 is {got}, not {sha256}"));
        }
        let pem = String::from_utf8(bytes).map_err(|_| "the bundle is not PEM text".to_owned())?;
        TlsBase::new(&pem).map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(base) => {
            tracing::info!(%imei, %url, "trust bundle installed");
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slot.fetched = Some(base);
            slot.sha256 = Some(sha256);
        }
        Err(e) => tracing::warn!(%imei, %url, error = %e, "trust bundle not installed"),
    }
}

fn serial_of(cert_pem: &str) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()?
        .ok()?;
    callhome_ca::inspect_certificate_der(der.as_ref())
        .ok()
        .map(|i| i.serial)
}
