//! EST, Enrolment over Secure Transport (RFC 7030, with RFC 8951's clarifications), on the
//! device-facing HTTPS listener under `/.well-known/est/`:
//!
//! - `GET cacerts`: the CA chain as a certs-only PKCS#7 (CMS SignedData without signers),
//!   `application/pkcs7-mime`, base64;
//! - `GET csrattrs`: what a CSR should be (ECDSA with SHA-256 on P-256), `application/csrattrs`;
//! - `POST simpleenroll`: a base64 DER PKCS#10 (`application/pkcs10`) for a first
//!   certificate, authenticated by HTTP Basic (IMEI and the device's single-use bootstrap
//!   secret), by the device's own client certificate, or by a production batch's claim
//!   certificate (the CSR's CN is the IMEI; the claim's policy decides, see
//!   [`callhome_pki::claims`]; an enrolment held for approval is answered 202 with
//!   `Retry-After`);
//! - `POST simplereenroll`: a new certificate for the device whose current certificate
//!   authenticates the TLS connection, for the same subject;
//! - `POST serverkeygen`: Callhome makes the key too (ECDSA P-256) and answers
//!   `multipart/mixed` with the PKCS#8 key and the certificate. The key is never logged nor
//!   stored, and our copies are wiped.
//!
//! Certificates are signed and recorded by [`callhome_pki::CertificateService`] with
//! `issued_by` = `est:<operation>`. Every enrolment attempt that claims an identity (a
//! Basic user name or a client certificate), issued or refused, is written to the audit log
//! (actor kind `device`); requests with no credentials at all and the two public `GET`s
//! are only counted (`callhome_est_requests_total{op,outcome}`), so anonymous traffic
//! cannot fill the audit log. Refusals are plain text naming the problem (RFC 7030 section
//! 4.2.3); a 401 carries `WWW-Authenticate: Basic realm="callhome-est"`. Failed bootstrap
//! secrets are throttled per IMEI and per client address like API logins (429 with
//! `Retry-After`, counted, not audited one row each).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use callhome_core::{ActorKind, AuditOutcome, Imei};
use callhome_devicehttp::DevicePeer;
use callhome_store::{BootstrapSecret, CertificateRecord, NewAuditEntry, StoreError};
use der::asn1::{ObjectIdentifier, SetOfVec};
use der::{Any, Decode as _, Encode as _};
use rand::Rng as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::context::{MAX_ACTOR, clip};
use crate::device::DeviceState;
use crate::error::ApiError;
use crate::routes::claims::claim_error;
use crate::throttle::Subject;

/// Where the EST operations live (RFC 7030 section 3.2.2).
pub const EST_PREFIX: &str = "/.well-known/est";
/// Largest EST request body (a base64 PKCS#10 is well under 4 KiB even with RSA-4096).
pub const MAX_EST_BODY: usize = 16 * 1024;
/// The `WWW-Authenticate` challenge of every 401.
pub const CHALLENGE: &str = "Basic realm=\"callhome-est\"";
/// The media type of a certificate sent back (RFC 7030 section 4.2.3).
const CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

/// ecdsa-with-SHA256 (RFC 5758).
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// id-ecPublicKey (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 (P-256, RFC 5480).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// id-signedData (RFC 5652).
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-data (RFC 5652).
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

/// The EST routes (merged into the device listener's router).
pub(crate) fn routes() -> Router<DeviceState> {
    Router::new()
        .route(&format!("{EST_PREFIX}/cacerts"), get(cacerts))
        .route(&format!("{EST_PREFIX}/csrattrs"), get(csrattrs))
        .route(&format!("{EST_PREFIX}/simpleenroll"), post(simpleenroll))
        .route(
            &format!("{EST_PREFIX}/simplereenroll"),
            post(simplereenroll),
        )
        .route(&format!("{EST_PREFIX}/serverkeygen"), post(serverkeygen))
}

/// An EST operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstOp {
    /// `GET cacerts`.
    CaCerts,
    /// `GET csrattrs`.
    CsrAttrs,
    /// `POST simpleenroll`.
    SimpleEnroll,
    /// `POST simplereenroll`.
    SimpleReenroll,
    /// `POST serverkeygen`.
    ServerKeygen,
}

impl EstOp {
    /// The operation's path segment (also the metric's `op` label).
    pub fn as_str(self) -> &'static str {
        match self {
            EstOp::CaCerts => "cacerts",
            EstOp::CsrAttrs => "csrattrs",
            EstOp::SimpleEnroll => "simpleenroll",
            EstOp::SimpleReenroll => "simplereenroll",
            EstOp::ServerKeygen => "serverkeygen",
        }
    }

    /// `issued_by` of the certificates it issues.
    pub fn issued_by(self) -> &'static str {
        match self {
            EstOp::SimpleEnroll => "est:simpleenroll",
            EstOp::SimpleReenroll => "est:simplereenroll",
            EstOp::ServerKeygen => "est:serverkeygen",
            EstOp::CaCerts | EstOp::CsrAttrs => "est",
        }
    }

    /// Whether a bootstrap secret (HTTP Basic) may authenticate it.
    fn accepts_bootstrap_secret(self) -> bool {
        matches!(self, EstOp::SimpleEnroll | EstOp::ServerKeygen)
    }
}

/// How an enrolment proved which device it is for.
#[derive(Debug)]
pub enum EstAuth {
    /// HTTP Basic: user name = IMEI, password = the device's bootstrap secret (checked,
    /// not yet consumed: [`issue`] consumes it).
    BootstrapSecret {
        /// The device.
        imei: Imei,
        /// Its stored secret (hash), consumed by the enrolment.
        secret: BootstrapSecret,
    },
    /// The device's own client certificate: active in the inventory, of this IMEI.
    DeviceCertificate {
        /// The device (the certificate's CN).
        imei: Imei,
        /// The certificate's serial.
        serial: String,
    },
    /// A production batch's claim certificate (its serial is a claim's): it may only
    /// enrol (`simpleenroll`) the IMEI of the CSR, as the claim's policy allows.
    ClaimCertificate {
        /// The device asked for (the CSR's CN).
        imei: Imei,
        /// The claim.
        claim: Box<callhome_store::ClaimRecord>,
        /// The CSR, checked.
        csr: Box<callhome_pki::ClaimCsr>,
    },
}

impl EstAuth {
    /// The device the request is for.
    pub fn imei(&self) -> &Imei {
        match self {
            EstAuth::BootstrapSecret { imei, .. }
            | EstAuth::DeviceCertificate { imei, .. }
            | EstAuth::ClaimCertificate { imei, .. } => imei,
        }
    }

    /// The method's name, in audit rows.
    pub fn method(&self) -> &'static str {
        match self {
            EstAuth::BootstrapSecret { .. } => "bootstrap_secret",
            EstAuth::DeviceCertificate { .. } => "client_certificate",
            EstAuth::ClaimCertificate { .. } => "claim_certificate",
        }
    }
}

/// What an audit row says of one request, filled in as the request is handled.
#[derive(Debug, Default)]
struct Attempt {
    /// Who the request claims to be (Basic user name or certificate CN); `None`: nobody,
    /// and the request is only counted.
    actor: Option<String>,
    /// The authentication method tried.
    method: Option<&'static str>,
    /// The issued certificate's serial.
    serial: Option<String>,
    /// The client certificate presented.
    client_serial: Option<String>,
    /// The claim whose certificate authenticated the request.
    claim: Option<String>,
    /// The enrolment made or found with a claim.
    enrollment: Option<String>,
}

/// Answers an enrolment operation: runs it, counts it, audits it, and turns a refusal into
/// a plain-text response.
async fn answer(
    state: &DeviceState,
    peer: &DevicePeer,
    headers: &HeaderMap,
    op: EstOp,
    body: Body,
) -> Response {
    let mut attempt = Attempt {
        client_serial: peer.cert_serial.clone(),
        ..Attempt::default()
    };
    let result = enroll(state, peer, headers, op, body, &mut attempt).await;
    let (response, reason) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            // The client's text: an internal error's cause is logged, not audited.
            let reason = e.problem().detail;
            (e.into_plain_response(CHALLENGE), Some(reason))
        }
    };
    let status = response.status();
    count(op, status);
    // A throttled attempt is counted, not audited (the login throttle's rule): the
    // failures that led to it were.
    if let (Some(actor), false) = (&attempt.actor, status == StatusCode::TOO_MANY_REQUESTS) {
        let mut detail = json!({ "operation": op.as_str() });
        let fields = [
            ("method", attempt.method.map(str::to_owned)),
            ("serial", attempt.serial.clone()),
            ("client_certificate", attempt.client_serial.clone()),
            ("claim", attempt.claim.clone()),
            ("enrollment", attempt.enrollment.clone()),
            ("reason", reason.clone()),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                detail[k] = Value::String(v);
            }
        }
        audit(state, peer, op, actor, status, detail).await;
    }
    match &reason {
        Some(r) => {
            tracing::info!(op = op.as_str(), status = status.as_u16(), actor = attempt.actor.as_deref(), addr = %peer.addr, reason = %r, "EST request refused");
        }
        None => tracing::info!(
            op = op.as_str(),
            actor = attempt.actor.as_deref(),
            serial = attempt.serial.as_deref(),
            "EST enrolment"
        ),
    }
    response
}

/// Counts a request in `callhome_est_requests_total{op,outcome}`.
fn count(op: EstOp, status: StatusCode) {
    let outcome = match status.as_u16() {
        200..=299 => "success",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        429 => "throttled",
        503 => "unavailable",
        _ => "error",
    };
    metrics::counter!("callhome_est_requests_total", "op" => op.as_str(), "outcome" => outcome)
        .increment(1);
}

/// Writes the audit row of an enrolment attempt (a failure to write is logged and counted,
/// as the API's are).
async fn audit(
    state: &DeviceState,
    peer: &DevicePeer,
    op: EstOp,
    actor: &str,
    status: StatusCode,
    detail: Value,
) {
    let entry = NewAuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: clip(actor, MAX_ACTOR),
        actor_kind: ActorKind::Device,
        action: format!("EST {}", op.as_str()),
        target: Some(clip(actor, MAX_ACTOR)),
        outcome: if status.is_success() {
            AuditOutcome::Success
        } else {
            AuditOutcome::Failure
        },
        status: Some(i64::from(status.as_u16())),
        detail: Some(detail.to_string()),
        remote_addr: Some(peer.addr.ip().to_string()),
        request_id: None,
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        metrics::counter!("callhome_audit_write_failures_total").increment(1);
        tracing::error!(error = %e, action = %entry.action, "could not write audit row");
    }
}

async fn cacerts(State(state): State<DeviceState>) -> Response {
    let result = certs_only(
        state
            .certs
            .ca_chain_der()
            .iter()
            .map(|c| c.as_ref().to_vec()),
    );
    let response = match result {
        Ok(der) => base64_response("application/pkcs7-mime", &der),
        Err(e) => e.into_plain_response(CHALLENGE),
    };
    count(EstOp::CaCerts, response.status());
    response
}

async fn csrattrs() -> Response {
    let response = match csr_attributes() {
        Ok(der) => base64_response("application/csrattrs", &der),
        Err(e) => e.into_plain_response(CHALLENGE),
    };
    count(EstOp::CsrAttrs, response.status());
    response
}

async fn simpleenroll(
    State(state): State<DeviceState>,
    axum::Extension(peer): axum::Extension<DevicePeer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&state, &peer, &headers, EstOp::SimpleEnroll, body).await
}

async fn simplereenroll(
    State(state): State<DeviceState>,
    axum::Extension(peer): axum::Extension<DevicePeer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&state, &peer, &headers, EstOp::SimpleReenroll, body).await
}

async fn serverkeygen(
    State(state): State<DeviceState>,
    axum::Extension(peer): axum::Extension<DevicePeer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&state, &peer, &headers, EstOp::ServerKeygen, body).await
}

/// The CSR of a request, checked for form (not yet against a device).
#[derive(Debug)]
struct Csr {
    /// The DER.
    der: Vec<u8>,
    /// Its subject's common names.
    common_names: Vec<String>,
}

/// An enrolment: checks the request, authenticates it, and issues.
async fn enroll(
    state: &DeviceState,
    peer: &DevicePeer,
    headers: &HeaderMap,
    op: EstOp,
    body: Body,
    attempt: &mut Attempt,
) -> Result<Response, ApiError> {
    // Who the request claims to be, for the audit row, before anything can fail.
    let basic = basic_credentials(headers);
    attempt.actor = match (&basic, &peer.imei) {
        (Some(Ok((user, _))), _) if op.accepts_bootstrap_secret() => Some(user.clone()),
        (_, Some(imei)) => Some(imei.to_string()),
        (Some(Ok((user, _))), None) => Some(user.clone()),
        _ => None,
    };
    check_content_type(headers)?;
    let csr = read_csr(headers, body).await?;
    let auth = authenticate(state, peer, op, basic, attempt, &csr).await?;
    let imei = auth.imei().clone();
    attempt.actor = Some(imei.to_string());
    attempt.method = Some(auth.method());
    if let EstAuth::ClaimCertificate { claim, csr, .. } = auth {
        return claim_enroll(state, peer, &claim, &csr, attempt).await;
    }
    match state.store.get_device(&imei).await {
        Ok(d) if d.disabled => {
            return Err(ApiError::Forbidden(format!("device {imei} is disabled")));
        }
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::Forbidden(format!(
                "device {imei} is not registered"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    check_subject(&csr, &auth, op)?;
    let (record, key) = issue(state, op, &auth, &csr).await?;
    attempt.serial = Some(record.serial.clone());
    match key {
        None => Ok(base64_response(
            CERTS_ONLY,
            &certs_only(std::iter::once(certificate_der(&record)?))?,
        )),
        Some(key) => serverkeygen_response(&record, &key),
    }
}

/// 415 unless the body is declared `application/pkcs10`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match declared.as_deref() {
        Some("application/pkcs10") => Ok(()),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "the request must be application/pkcs10 (a base64 DER PKCS#10 CSR), not {other}"
        ))),
        None => Err(ApiError::UnsupportedMediaType(
            "the request must be application/pkcs10 (a base64 DER PKCS#10 CSR); no Content-Type was sent".into(),
        )),
    }
}

/// Reads (at most [`MAX_EST_BODY`] bytes), decodes and parses the request's CSR.
async fn read_csr(headers: &HeaderMap, body: Body) -> Result<Csr, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than {MAX_EST_BODY} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_EST_BODY as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_EST_BODY)
        .await
        .map_err(|_| too_large())?;
    let der = decode_base64(&bytes)?;
    parse_csr(der)
}

/// Decodes a base64 body: line breaks and other white space are ignored, padding optional.
pub fn decode_base64(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-csr",
            "the request body is empty: send a base64 DER PKCS#10 CSR",
        ));
    }
    LENIENT.decode(&compact).map_err(|e| {
        ApiError::bad_request(
            "invalid-csr",
            format!("the request body is not valid base64 ({e}): send a base64 DER PKCS#10 CSR"),
        )
    })
}

/// Parses a DER PKCS#10 CSR for its subject (the CA checks its signature and key when it
/// signs).
fn parse_csr(der: Vec<u8>) -> Result<Csr, ApiError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer as _;
    let invalid = |why: String| ApiError::bad_request("invalid-csr", why);
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("the body is not a DER PKCS#10 CSR: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing data after the PKCS#10 CSR".into()));
    }
    let mut common_names = Vec::new();
    for cn in csr.certification_request_info.subject.iter_common_name() {
        let text = cn
            .as_str()
            .map_err(|_| invalid("the CSR subject CN is not a readable string".into()))?;
        common_names.push(text.to_owned());
    }
    Ok(Csr { der, common_names })
}

/// HTTP Basic credentials, when the request sends an `Authorization: Basic` header
/// (`Err`: malformed).
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, Zeroizing<String>), ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let malformed = || {
        ApiError::Unauthorized(
            "malformed Authorization header: expected Basic with base64 of IMEI:secret".into(),
        )
    };
    let parse = || {
        let text = value.to_str().map_err(|_| malformed())?;
        let (scheme, encoded) = text.trim().split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(ApiError::Unauthorized(format!(
                "the {scheme} authentication scheme is not accepted here: use Basic (IMEI and bootstrap secret) or a device client certificate"
            )));
        }
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| malformed())?,
        );
        let text = std::str::from_utf8(&decoded).map_err(|_| malformed())?;
        let (user, password) = text.split_once(':').ok_or_else(malformed)?;
        Ok((user.to_owned(), Zeroizing::new(password.to_owned())))
    };
    Some(parse())
}

/// Authenticates an enrolment by the methods `op` accepts: a bootstrap secret sent with
/// HTTP Basic (preferred when sent), else the TLS client certificate.
async fn authenticate(
    state: &DeviceState,
    peer: &DevicePeer,
    op: EstOp,
    basic: Option<Result<(String, Zeroizing<String>), ApiError>>,
    attempt: &mut Attempt,
    csr: &Csr,
) -> Result<EstAuth, ApiError> {
    if op.accepts_bootstrap_secret()
        && let Some(credentials) = basic
    {
        attempt.method = Some("bootstrap_secret");
        let (user, secret) = credentials?;
        return bootstrap_secret(state, peer.addr, &user, secret).await;
    }
    attempt.method = Some("client_certificate");
    match (&peer.imei, &peer.cert_serial) {
        (Some(imei), Some(serial)) => device_certificate(state, imei, serial).await,
        (None, Some(serial))
            if let Some(claim) = state
                .certs
                .claim_for_serial(serial)
                .await
                .map_err(claim_error)? =>
        {
            attempt.method = Some("claim_certificate");
            attempt.claim = Some(claim.name.clone());
            if op != EstOp::SimpleEnroll {
                return Err(ApiError::Forbidden(format!(
                    "a claim certificate may only enrol (simpleenroll), not {}",
                    op.as_str()
                )));
            }
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.der.clone()));
            let csr = callhome_pki::ClaimCsr::parse(&pem).map_err(claim_error)?;
            Ok(EstAuth::ClaimCertificate {
                imei: csr.imei.clone(),
                claim: Box::new(claim),
                csr: Box::new(csr),
            })
        }
        (None, Some(_)) => Err(ApiError::Unauthorized(
            "the client certificate is not a device certificate (its CN is not an IMEI)".into(),
        )),
        _ if op.accepts_bootstrap_secret() => Err(ApiError::Unauthorized(format!(
            "{} needs credentials: HTTP Basic with the device's IMEI and bootstrap secret, or the device's client certificate",
            op.as_str()
        ))),
        _ => Err(ApiError::Unauthorized(format!(
            "{} needs the device's current client certificate on the TLS connection",
            op.as_str()
        ))),
    }
}

/// Checks a bootstrap secret in constant time (argon2, within the process-wide bound on
/// password hashing; an unknown IMEI costs the same as a wrong secret), throttling
/// failures per IMEI and per client address. The secret is not consumed here.
async fn bootstrap_secret(
    state: &DeviceState,
    addr: SocketAddr,
    user: &str,
    secret: Zeroizing<String>,
) -> Result<EstAuth, ApiError> {
    let now = std::time::Instant::now();
    if let Err(refused) = state.est_throttle.check(user, Some(addr.ip()), now) {
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "too many failed bootstrap secrets for this {}; try again in {} s",
                match refused.subject {
                    Subject::User(_) => "IMEI",
                    Subject::Address(_) => "address",
                },
                refused.retry_after_s()
            ),
            retry_after_s: Some(refused.retry_after_s()),
        });
    }
    let imei = Imei::parse(user).ok();
    let stored = match &imei {
        Some(imei) => state.store.get_bootstrap_secret(imei).await?,
        None => None,
    };
    let matches = state
        .passwords
        .verify(
            secret.as_str().to_owned(),
            stored.as_ref().map(|s| s.secret_hash.clone()),
        )
        .await?;
    match (imei, stored) {
        (Some(imei), Some(stored)) if matches => {
            if stored.expires_at <= OffsetDateTime::now_utc() {
                return Err(ApiError::Unauthorized(format!(
                    "the bootstrap secret of {imei} has expired; ask an operator for a new one"
                )));
            }
            state.est_throttle.succeeded(user);
            Ok(EstAuth::BootstrapSecret {
                imei,
                secret: stored,
            })
        }
        (imei, _) => {
            state.est_throttle.failed(user, Some(addr.ip()), now);
            Err(ApiError::Unauthorized(match imei {
                Some(_) => "invalid IMEI or bootstrap secret".to_owned(),
                None => "the Basic user name must be the device's 15-digit IMEI".to_owned(),
            }))
        }
    }
}

/// Enrols with a claim certificate: issued now (200, certs-only), or held for approval
/// (202 with `Retry-After`, RFC 7030 section 4.2.3; the same request asked again after the
/// approval gets the certificate).
async fn claim_enroll(
    state: &DeviceState,
    peer: &DevicePeer,
    claim: &callhome_store::ClaimRecord,
    csr: &callhome_pki::ClaimCsr,
    attempt: &mut Attempt,
) -> Result<Response, ApiError> {
    let outcome = state
        .certs
        .enroll_with_claim(claim, csr, Some(peer.addr.ip().to_string()))
        .await
        .map_err(claim_error)?;
    if let Some(event) = outcome.event(&claim.name) {
        state.events.publish(Some(&csr.imei), event);
    }
    match outcome {
        callhome_pki::EnrollOutcome::Issued {
            enrollment,
            certificate,
            ..
        } => {
            attempt.enrollment = Some(enrollment.id.to_string());
            attempt.serial = Some(certificate.serial.clone());
            Ok(base64_response(
                CERTS_ONLY,
                &certs_only(std::iter::once(certificate_der(&certificate)?))?,
            ))
        }
        callhome_pki::EnrollOutcome::Pending { enrollment, .. } => {
            attempt.enrollment = Some(enrollment.id.to_string());
            let retry = callhome_pki::RETRY_AFTER_S;
            let mut response = Response::new(Body::from(format!(
                "enrolment {} of {} awaits an operator's approval; ask again in {retry} s\n",
                enrollment.id, enrollment.imei
            )));
            *response.status_mut() = StatusCode::ACCEPTED;
            let h = response.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(response)
        }
    }
}

/// Checks that the TLS client certificate `serial` is an active certificate of `imei` in
/// the inventory (the TLS layer already refused revoked ones; this catches a revocation
/// made since the CRL in force was built, and certificates we never issued).
async fn device_certificate(
    state: &DeviceState,
    imei: &Imei,
    serial: &str,
) -> Result<EstAuth, ApiError> {
    let record = match state.store.get_certificate(serial).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::Unauthorized(format!(
                "the client certificate {serial} is not in the inventory"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if record.imei != *imei {
        return Err(ApiError::Unauthorized(format!(
            "the client certificate {serial} was not issued to {imei}"
        )));
    }
    if record.revocation.is_some() {
        return Err(ApiError::Unauthorized(format!(
            "the client certificate {serial} is revoked"
        )));
    }
    if record.not_after <= OffsetDateTime::now_utc() {
        return Err(ApiError::Unauthorized(format!(
            "the client certificate {serial} has expired"
        )));
    }
    Ok(EstAuth::DeviceCertificate {
        imei: imei.clone(),
        serial: serial.to_owned(),
    })
}

/// The CSR's subject must be the device's: CN = IMEI (for a re-enrolment, the current
/// certificate's subject, which the CA always makes CN = IMEI).
fn check_subject(csr: &Csr, auth: &EstAuth, op: EstOp) -> Result<(), ApiError> {
    let imei = auth.imei();
    if csr.common_names.len() == 1 && csr.common_names[0] == imei.as_str() {
        return Ok(());
    }
    let found = if csr.common_names.is_empty() {
        "no CN".to_owned()
    } else {
        csr.common_names
            .iter()
            .map(|c| format!("CN={}", clip(c, 64)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted = match (op, auth) {
        (EstOp::SimpleReenroll, _) | (_, EstAuth::DeviceCertificate { .. }) => {
            format!("the current certificate's subject CN={imei}")
        }
        _ => format!("CN={imei}, the device's IMEI"),
    };
    Err(ApiError::bad_request(
        "invalid-csr",
        format!("the CSR subject must be {wanted}; it has {found}"),
    ))
}

/// Issues the certificate (consuming a bootstrap secret first, and putting it back if
/// nothing is issued), with a new key for `serverkeygen`.
async fn issue(
    state: &DeviceState,
    op: EstOp,
    auth: &EstAuth,
    csr: &Csr,
) -> Result<(CertificateRecord, Option<Zeroizing<Vec<u8>>>), ApiError> {
    let imei = auth.imei();
    if let EstAuth::BootstrapSecret { secret, .. } = auth
        && !state
            .store
            .consume_bootstrap_secret(imei, &secret.secret_hash, OffsetDateTime::now_utc())
            .await?
    {
        return Err(ApiError::Unauthorized(format!(
            "the bootstrap secret of {imei} was already used (or replaced, withdrawn or expired)"
        )));
    }
    let issued = sign(state, op, imei, csr).await;
    if issued.is_err()
        && let EstAuth::BootstrapSecret { secret, .. } = auth
        && let Err(e) = state.store.restore_bootstrap_secret(secret).await
    {
        tracing::warn!(error = %e, %imei, "could not put back a bootstrap secret after a failed enrolment");
    }
    issued
}

async fn sign(
    state: &DeviceState,
    op: EstOp,
    imei: &Imei,
    csr: &Csr,
) -> Result<(CertificateRecord, Option<Zeroizing<Vec<u8>>>), ApiError> {
    match op {
        EstOp::ServerKeygen => {
            // The request's key is not used: ours replaces it (RFC 7030 section 4.4.1).
            let (key_pem, csr_pem) = callhome_ca::generate_key_and_csr(imei.as_str())?;
            let key_pem = Zeroizing::new(key_pem);
            let key = pem::parse(key_pem.as_bytes())
                .map_err(|e| ApiError::Internal(format!("reading a generated key: {e}")))?;
            let key = Zeroizing::new(key.into_contents());
            let record = state
                .certs
                .sign_device_csr(imei, &csr_pem, None, op.issued_by())
                .await?;
            Ok((record, Some(key)))
        }
        _ => {
            let csr_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.der.clone()));
            let record = state
                .certs
                .sign_device_csr(imei, &csr_pem, None, op.issued_by())
                .await?;
            Ok((record, None))
        }
    }
}

/// The DER of an issued certificate.
fn certificate_der(record: &CertificateRecord) -> Result<Vec<u8>, ApiError> {
    pem::parse(record.certificate_pem.as_bytes())
        .map(pem::Pem::into_contents)
        .map_err(|e| ApiError::Internal(format!("reading an issued certificate: {e}")))
}

/// A certs-only CMS message (RFC 5652 SignedData with no content and no signers, RFC 7030
/// section 4.1.3): the DER of `ContentInfo`.
pub fn certs_only(certs: impl IntoIterator<Item = Vec<u8>>) -> Result<Vec<u8>, ApiError> {
    use cms::cert::CertificateChoices;
    use cms::content_info::{CmsVersion, ContentInfo};
    use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
    let internal = |what: &str, e: der::Error| ApiError::Internal(format!("{what}: {e}"));
    let mut choices = Vec::new();
    for der in certs {
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| internal("reading a certificate for PKCS#7", e))?;
        choices.push(CertificateChoices::Certificate(cert));
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(
            SetOfVec::try_from(choices).map_err(|e| internal("a certificate set", e))?,
        )),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed).map_err(|e| internal("encoding SignedData", e))?,
    };
    info.to_der()
        .map_err(|e| internal("encoding ContentInfo", e))
}

/// The CSR attributes we ask for (RFC 7030 section 4.5.2): `CsrAttrs ::= SEQUENCE OF
/// AttrOrOID` naming ecdsa-with-SHA256 as the signature algorithm and, as an
/// id-ecPublicKey attribute, the P-256 curve.
pub fn csr_attributes() -> Result<Vec<u8>, ApiError> {
    let internal = |e: der::Error| ApiError::Internal(format!("encoding csrattrs: {e}"));
    let curve = x509_cert::attr::Attribute {
        oid: ID_EC_PUBLIC_KEY,
        values: SetOfVec::try_from(vec![Any::encode_from(&SECP256R1).map_err(internal)?])
            .map_err(internal)?,
    };
    let attrs: Vec<Any> = vec![
        Any::encode_from(&ECDSA_WITH_SHA256).map_err(internal)?,
        Any::encode_from(&curve).map_err(internal)?,
    ];
    attrs.to_der().map_err(internal)
}

/// `der` as base64 in lines of 64 characters, each ending in LF.
fn base64_lines(der: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(flat.len() + flat.len() / 64 + 2);
    for chunk in flat.as_bytes().chunks(64) {
        // Base64 output is ASCII: every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        // LF, not CRLF: coreutils `base64 -d` refuses carriage returns.
        out.push('\n');
    }
    out
}

/// A 200 with `der` base64-encoded as `content_type`.
fn base64_response(content_type: &'static str, der: &[u8]) -> Response {
    let mut response = Response::new(Body::from(base64_lines(der)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "content-transfer-encoding",
        HeaderValue::from_static("base64"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `serverkeygen` answer (RFC 7030 section 4.4.2): `multipart/mixed` with the private
/// key (`application/pkcs8`) and the certificate (certs-only PKCS#7), both base64.
fn serverkeygen_response(
    record: &CertificateRecord,
    key: &Zeroizing<Vec<u8>>,
) -> Result<Response, ApiError> {
    let boundary: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let cert = certs_only(std::iter::once(certificate_der(record)?))?;
    let key_b64 = Zeroizing::new(base64_lines(key));
    let mut body = Zeroizing::new(String::with_capacity(key_b64.len() + cert.len() * 2 + 512));
    body.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ));
    body.push_str(&key_b64);
    // Each delimiter starts with CRLF (RFC 2046 section 5.1.1): it is not part of the
    // base64 text before it.
    body.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: {CERTS_ONLY}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ));
    body.push_str(&base64_lines(&cert));
    body.push_str(&format!("\r\n--{boundary}--\r\n"));
    let content_type = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}"))
        .map_err(|e| ApiError::Internal(format!("multipart content type: {e}")))?;
    // The body leaves our hands here (hyper owns and frees it); our copies are wiped.
    let mut response = Response::new(Body::from(body.as_bytes().to_vec()));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_bodies_may_have_line_breaks_and_no_padding() {
        assert_eq!(decode_base64(b"TWFu\r\nTWE=\n").unwrap(), b"ManMa");
        assert_eq!(decode_base64(b"TWFuTWE").unwrap(), b"ManMa");
        let err = decode_base64(b"not base64!").unwrap_err().to_string();
        assert!(err.contains("not valid base64"), "{err}");
        let err = decode_base64(b" \r\n").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn base64_output_is_in_short_lines() {
        let text = base64_lines(&[7u8; 200]);
        assert!(text.lines().all(|l| l.len() <= 64));
        assert!(!text.contains('\r'), "coreutils base64 -d refuses CR");
        assert_eq!(decode_base64(text.as_bytes()).unwrap(), vec![7u8; 200]);
    }

    #[test]
    fn csrattrs_name_ecdsa_sha256_and_p256() {
        let der = csr_attributes().unwrap();
        let attrs = Vec::<Any>::from_der(&der).unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(
            attrs[0].decode_as::<ObjectIdentifier>().unwrap(),
            ECDSA_WITH_SHA256
        );
        let curve = attrs[1].decode_as::<x509_cert::attr::Attribute>().unwrap();
        assert_eq!(curve.oid, ID_EC_PUBLIC_KEY);
        let values: Vec<ObjectIdentifier> = curve
            .values
            .iter()
            .map(|v| v.decode_as::<ObjectIdentifier>().unwrap())
            .collect();
        assert_eq!(values, vec![SECP256R1]);
    }

    #[test]
    fn a_csr_is_parsed_for_its_subject_and_garbage_is_named() {
        let (_, pem_text) = callhome_ca::generate_key_and_csr("356938035643809").unwrap();
        let der = pem::parse(pem_text).unwrap().into_contents();
        let csr = parse_csr(der).unwrap();
        assert_eq!(csr.common_names, vec!["356938035643809".to_owned()]);
        let err = parse_csr(b"hello".to_vec()).unwrap_err().to_string();
        assert!(err.contains("not a DER PKCS#10"), "{err}");
    }
}
