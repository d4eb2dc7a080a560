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

    /// The TLS configuration presenting the current certificate.
    pub(crate) fn config(&self) -> Result<Arc<ClientConfig>, crate::SimError> {
        self.base.for_device(&self.current)
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

fn serial_of(cert_pem: &str) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()?
        .ok()?;
    callhome_ca::inspect_certificate_der(der.as_ref())
        .ok()
        .map(|i| i.serial)
}
