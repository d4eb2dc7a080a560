//! Certificate requests from a connected modem on `{IMEI}/csr`, for a certificate rotation
//! (issue 11): a PEM PKCS#10 for a key the modem made, or the text `serverkeygen` when the
//! modem cannot make keys and Callhome makes one. The answer goes back on `{IMEI}/cert`,
//! over the same mutually authenticated connection and nowhere else:
//!
//! - a CSR: the device certificate then the CA chain (PEM);
//! - `serverkeygen`: the new PKCS#8 private key (PEM) first, then the certificate and the
//!   chain. The key exists only in this answer: it is neither stored nor logged, and our
//!   own buffers of it are wiped;
//! - a refusal: one line, `ERROR <reason>`.
//!
//! This is EST `simplereenroll` and `serverkeygen` (RFC 7030) over MQTT: the connection's
//! client certificate authenticates the device, the CSR's subject must be its IMEI (the CA
//! checks it), and the certificate is recorded in the inventory with `issued_by`
//! `mqtt:csr` or `mqtt:serverkeygen`. The old certificate stays valid: the job that asked
//! for the rotation revokes it once the modem has connected with the new one.

use std::time::Duration;

use callhome_core::{ActorKind, AuditOutcome, Imei};
use callhome_store::{CertificateRecord, NewAuditEntry};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::Shared;

/// The shortest time between two requests of one connection; sooner ones are refused.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// The payload asking Callhome to make the key.
pub const SERVER_KEYGEN: &str = "serverkeygen";

/// `issued_by` of a certificate signed for a CSR sent on the MQTT channel.
pub const ISSUED_BY_CSR: &str = "mqtt:csr";
/// `issued_by` of a certificate whose key Callhome made for a modem on the MQTT channel.
pub const ISSUED_BY_KEYGEN: &str = "mqtt:serverkeygen";

/// What a modem asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Sign this PEM PKCS#10.
    Csr(String),
    /// Make a key and a certificate for it.
    ServerKeygen,
}

impl Request {
    /// Reads a payload: the text `serverkeygen`, or one PEM `CERTIFICATE REQUEST`.
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| "the request is not UTF-8 text".to_owned())?
            .trim();
        if text.eq_ignore_ascii_case(SERVER_KEYGEN) {
            return Ok(Request::ServerKeygen);
        }
        if text.is_empty() {
            return Err(format!(
                "empty request: send a PEM CERTIFICATE REQUEST or the text {SERVER_KEYGEN}"
            ));
        }
        match pem::parse(text) {
            Ok(p) if p.tag() == "CERTIFICATE REQUEST" || p.tag() == "NEW CERTIFICATE REQUEST" => {
                Ok(Request::Csr(text.to_owned()))
            }
            Ok(p) => Err(format!(
                "a PEM {} is not a certificate request (expected CERTIFICATE REQUEST)",
                p.tag()
            )),
            Err(_) => Err(format!(
                "not PEM: send a PEM CERTIFICATE REQUEST or the text {SERVER_KEYGEN}"
            )),
        }
    }

    fn mode(&self) -> &'static str {
        match self {
            Request::Csr(_) => "csr",
            Request::ServerKeygen => "server_keygen",
        }
    }
}

/// Answers one request of the device `imei`: the payload to publish on its certificate
/// topic. Issued and refused requests are audited (actor: the device).
pub(crate) async fn answer(
    shared: &Shared,
    imei: &Imei,
    client_serial: Option<&str>,
    payload: &[u8],
) -> Zeroizing<Vec<u8>> {
    let request = Request::parse(payload);
    let mode = request.as_ref().map_or("unreadable", Request::mode);
    let issued = match request {
        Ok(request) => issue(shared, imei, request).await,
        Err(e) => Err(e),
    };
    match issued {
        Ok((record, key)) => {
            metrics::counter!("callhome_mqtt_certificates_issued_total", "mode" => mode)
                .increment(1);
            tracing::info!(serial = %record.serial, mode, "certificate issued on the MQTT channel");
            audit(
                shared,
                imei,
                AuditOutcome::Success,
                serde_json::json!({"mode": mode, "serial": record.serial, "client_serial": client_serial}),
            )
            .await;
            let mut out = Zeroizing::new(Vec::with_capacity(4096));
            if let Some(key) = key {
                out.extend_from_slice(key.as_bytes());
                if !key.ends_with('\n') {
                    out.push(b'\n');
                }
            }
            out.extend_from_slice(record.certificate_pem.as_bytes());
            if !record.certificate_pem.ends_with('\n') {
                out.push(b'\n');
            }
            out.extend_from_slice(shared.certs.ca_chain_pem().as_bytes());
            out
        }
        Err(reason) => {
            metrics::counter!("callhome_mqtt_certificate_requests_refused_total").increment(1);
            tracing::warn!(mode, %reason, "certificate request refused");
            audit(
                shared,
                imei,
                AuditOutcome::Failure,
                serde_json::json!({"mode": mode, "error": reason, "client_serial": client_serial}),
            )
            .await;
            Zeroizing::new(format!("ERROR {reason}\n").into_bytes())
        }
    }
}

/// The payload refusing a request made too soon after the previous one.
pub(crate) fn too_soon() -> Zeroizing<Vec<u8>> {
    metrics::counter!("callhome_mqtt_certificate_requests_refused_total").increment(1);
    Zeroizing::new(
        format!(
            "ERROR one certificate request per {} s: try again later\n",
            MIN_INTERVAL.as_secs()
        )
        .into_bytes(),
    )
}

async fn issue(
    shared: &Shared,
    imei: &Imei,
    request: Request,
) -> Result<(CertificateRecord, Option<Zeroizing<String>>), String> {
    match request {
        Request::Csr(pem) => shared
            .certs
            .sign_device_csr(imei, &pem, None, ISSUED_BY_CSR)
            .await
            .map(|r| (r, None))
            .map_err(|e| e.to_string()),
        Request::ServerKeygen => {
            let (key, csr) = callhome_ca::generate_key_and_csr(imei.as_str())
                .map_err(|e| format!("could not make a key: {e}"))?;
            let key = Zeroizing::new(key);
            let record = shared
                .certs
                .sign_device_csr(imei, &csr, None, ISSUED_BY_KEYGEN)
                .await
                .map_err(|e| e.to_string())?;
            Ok((record, Some(key)))
        }
    }
}

async fn audit(shared: &Shared, imei: &Imei, outcome: AuditOutcome, detail: serde_json::Value) {
    let entry = NewAuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: imei.to_string(),
        actor_kind: ActorKind::Device,
        action: "certificate.mqtt_enroll".to_owned(),
        target: Some(imei.to_string()),
        outcome,
        status: None,
        detail: Some(detail.to_string()),
        remote_addr: None,
        request_id: None,
    };
    if let Err(e) = shared.store.append_audit(&entry).await {
        tracing::warn!(error = %e, "could not write audit row");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_and_garbage_is_named() {
        assert_eq!(
            Request::parse(b" serverkeygen\n"),
            Ok(Request::ServerKeygen)
        );
        let (_, csr) = callhome_ca::generate_key_and_csr("490154203237518").unwrap();
        assert_eq!(
            Request::parse(csr.as_bytes()),
            Ok(Request::Csr(csr.trim().to_owned()))
        );
        assert!(Request::parse(b"").unwrap_err().contains("empty"));
        assert!(Request::parse(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(Request::parse(b"hello").unwrap_err().contains("not PEM"));
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(
            Request::parse(cert.as_bytes())
                .unwrap_err()
                .contains("CERTIFICATE is not")
        );
    }
}
