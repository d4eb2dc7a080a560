//! Device certificates and the CA's public material:
//! `POST /api/v1/devices/{imei}/certificate`, `GET /api/v1/devices/{imei}/certificates`,
//! `GET /api/v1/certificates/{serial}`, `POST /api/v1/certificates/{serial}/revoke`,
//! `GET /api/v1/ca/certificate`, `GET /api/v1/ca/chain`, `GET /api/v1/ca/crl`; across the
//! fleet, `GET /api/v1/certificates` (expiry watch listing) and
//! `GET /api/v1/certificates/audit`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use callhome_ca::RevocationReason;
use callhome_core::certificates::{AuditCheck, MAX_EXPIRY_DAYS, Severity};
use callhome_core::{CertificateState, Imei, Role, ValidationError};
use callhome_store::{CertificateFilter, CertificateRecord};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::time_format::{rfc3339, rfc3339_opt};

/// A certificate signing request for a device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIBDzCBtgIBADBUMRgwFgYDVQQDDA80OTAxNTQyMDMyMzc1MTg...\n-----END CERTIFICATE REQUEST-----\n"}))]
pub struct SignRequest {
    /// PEM-encoded PKCS#10 CSR. Only its public key is used; the CA sets the subject
    /// (CN = the IMEI), extensions, serial and validity. A subject CN, if present, must be
    /// the IMEI.
    pub csr: String,
    /// Validity in days (1-3650); the CA's default when absent.
    pub validity_days: Option<u32>,
}

/// A newly issued device certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedCertificate {
    /// The device certificate, PEM.
    pub certificate: String,
    /// The CA chain, issuing CA first and root last, PEM: present the certificate with
    /// the issuing CA, and trust the root.
    pub ca_chain: String,
    /// Serial number, uppercase hex.
    #[schema(example = "5A3F0C9E21B44D7C8E0F1A2B3C4D5E6F")]
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, hex.
    pub fingerprint_sha256: String,
}

/// A certificate in the inventory.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    /// Serial number, uppercase hex.
    pub serial: String,
    /// Device it was issued to.
    pub imei: String,
    /// Subject CN.
    pub common_name: String,
    /// `active` (not revoked, not expired), `revoked` or `expired`.
    pub status: CertificateState,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, hex.
    pub fingerprint_sha256: String,
    /// Who requested it.
    pub issued_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, if revoked.
    pub revoked_at: Option<String>,
    /// Revocation reason, if revoked.
    pub revocation_reason: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// The certificate, PEM.
    pub certificate: String,
}

impl From<CertificateRecord> for CertificateView {
    fn from(c: CertificateRecord) -> Self {
        let status = CertificateState::at(
            c.revocation.is_some(),
            c.not_after,
            OffsetDateTime::now_utc(),
        );
        Self {
            serial: c.serial,
            imei: c.imei.to_string(),
            common_name: c.common_name,
            status,
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            fingerprint_sha256: c.fingerprint_sha256,
            issued_by: c.issued_by,
            created_at: rfc3339(c.created_at),
            revoked_at: rfc3339_opt(c.revocation.as_ref().map(|r| r.at)),
            revocation_reason: c.revocation.as_ref().and_then(|r| r.reason.clone()),
            revoked_by: c.revocation.map(|r| r.by),
            certificate: c.certificate_pem,
        }
    }
}

/// Filters and paging of `GET /api/v1/certificates`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CertificateQuery {
    /// Only certificates expiring within this many days from now (0-3650), not already
    /// expired.
    #[param(minimum = 0, maximum = 3650)]
    pub expiring_within_days: Option<u32>,
    /// Only certificates in this state now: `active`, `revoked` or `expired`.
    #[param(value_type = Option<CertificateState>)]
    pub state: Option<String>,
    /// Only this device's certificates (15-digit IMEI).
    pub imei: Option<String>,
    /// Same as `imei`.
    pub device: Option<String>,
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of certificates, expiring soonest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificatePage {
    /// The certificates, by `not_after` then serial.
    pub items: Vec<CertificateView>,
    /// Cursor of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Certificates across the fleet, filtered, expiring soonest first (`not_after` then
/// serial), in pages.
#[utoipa::path(
    get, path = "/api/v1/certificates", tag = "certificates", security(("bearer" = [])),
    params(CertificateQuery),
    responses(
        (status = 200, description = "A page of certificates", body = CertificatePage),
        (status = 400, description = "Bad cursor or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid days, state or IMEI, or both imei and device given", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_certificates(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<CertificateQuery>,
) -> Result<axum::Json<CertificatePage>, ApiError> {
    p.require(Role::Reader)?;
    let limit = crate::routes::paging::limit(q.limit)?;
    let now = OffsetDateTime::now_utc();
    let expiring_before = match q.expiring_within_days {
        None => None,
        Some(d) if d <= MAX_EXPIRY_DAYS => Some(now + time::Duration::days(i64::from(d))),
        Some(_) => {
            return Err(ValidationError::new(
                "expiring_within_days",
                format!("must be between 0 and {MAX_EXPIRY_DAYS}"),
            )
            .into());
        }
    };
    let cert_state = q
        .state
        .as_deref()
        .map(CertificateState::parse)
        .transpose()?;
    let imei = match (q.imei.as_deref(), q.device.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(
                ValidationError::new("device", "give imei or its alias device, not both").into(),
            );
        }
        (Some(i), None) => {
            Some(Imei::parse(i).map_err(|e| ValidationError::new("imei", e.reason))?)
        }
        (None, Some(i)) => {
            Some(Imei::parse(i).map_err(|e| ValidationError::new("device", e.reason))?)
        }
        (None, None) => None,
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            callhome_store::parse_certificate_cursor(&crate::routes::devices::decode_cursor(c)?)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad-query-parameter",
                        "cursor: not a cursor returned by this API",
                    )
                })?,
        ),
    };
    let page = state
        .store
        .list_all_certificates(&CertificateFilter {
            now,
            expiring_before,
            state: cert_state,
            imei,
            after,
            limit,
        })
        .await?;
    Ok(axum::Json(CertificatePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page
            .next
            .map(|n| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n)),
    }))
}

/// One finding of the certificate audit.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"check": "shared_key", "severity": "critical",
    "imeis": ["490154203237518", "356938035643809"], "serials": ["5A3F0C9E21B44D7C", "1B2C3D4E5F607182"],
    "detail": "one public key (SHA-256 9f86d0...) is certified for 2 devices: whoever holds the key can act as each of them"}))]
pub struct AuditFindingView {
    /// Which check found it: `shared_key`, `multiple_active` or `revoked_connected`.
    pub check: AuditCheck,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: Severity,
    /// The devices concerned.
    pub imeis: Vec<String>,
    /// The certificates concerned (serials).
    pub serials: Vec<String>,
    /// What is wrong, in words.
    pub detail: String,
}

/// The result of a certificate audit.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditReport {
    /// RFC 3339: when the checks ran.
    pub checked_at: String,
    /// The checks that ran.
    pub checks: Vec<AuditCheck>,
    /// What they found (empty: nothing wrong).
    pub findings: Vec<AuditFindingView>,
}

/// Runs the certificate audit checks now, as AWS IoT Device Defender does:
/// `shared_key` (one public key certified for several devices), `multiple_active` (a device
/// with more than one active certificate for longer than `certificates.rotation_overlap_days`),
/// `revoked_connected` (a revoked or expired certificate on a live connection). Reports only:
/// it changes nothing and publishes nothing.
#[utoipa::path(
    get, path = "/api/v1/certificates/audit", tag = "certificates", security(("bearer" = [])),
    responses(
        (status = 200, description = "The findings", body = AuditReport),
    )
)]
pub async fn audit_certificates(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<AuditReport>, ApiError> {
    p.require(Role::Reader)?;
    let now = OffsetDateTime::now_utc();
    let findings = state.cert_watch.audit(now).await?;
    Ok(axum::Json(AuditReport {
        checked_at: rfc3339(now),
        checks: AuditCheck::ALL.to_vec(),
        findings: findings
            .into_iter()
            .map(|f| AuditFindingView {
                check: f.check,
                severity: f.severity,
                imeis: f.imeis.iter().map(ToString::to_string).collect(),
                serials: f.serials,
                detail: f.detail,
            })
            .collect(),
    }))
}

/// What one expiry check published.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExpiryCheckReport {
    /// RFC 3339: when the check ran.
    pub checked_at: String,
    /// The `certificate.expiring` events this check published (notices already recorded,
    /// by this node or another, are not repeated).
    pub published: Vec<ExpiringView>,
}

/// The payload of one `certificate.expiring` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExpiringView {
    /// Serial, uppercase hex.
    pub serial: String,
    /// The device.
    pub imei: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days left.
    pub days_left: i64,
    /// The threshold crossed, days.
    pub threshold_days: u32,
}

/// Runs the expiry check now (it also runs at start and every
/// `certificates.expiry_check_interval_s`) and refreshes the certificate gauges.
#[utoipa::path(
    post, path = "/api/v1/certificates/expiry-check", tag = "certificates", security(("bearer" = [])),
    responses(
        (status = 200, description = "The notices published by this check", body = ExpiryCheckReport),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn run_expiry_check(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<ExpiryCheckReport>, ApiError> {
    p.require(Role::Operator)?;
    let now = OffsetDateTime::now_utc();
    let published = state.cert_watch.check_expiry(now).await?;
    state.cert_watch.update_gauges(now).await?;
    Ok(axum::Json(ExpiryCheckReport {
        checked_at: rfc3339(now),
        published: published
            .into_iter()
            .map(|e| ExpiringView {
                serial: e.serial,
                imei: e.imei.to_string(),
                not_after: rfc3339(e.not_after),
                days_left: e.days_left,
                threshold_days: e.threshold_days,
            })
            .collect(),
    }))
}

/// Why a certificate is revoked.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "key_compromise"}))]
pub struct RevokeRequest {
    /// RFC 5280 reason: `unspecified`, `key_compromise`, `affiliation_changed`,
    /// `superseded`, `cessation_of_operation`.
    pub reason: Option<String>,
}

/// CRL encoding.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CrlQuery {
    /// `pem` (default) or `der`.
    pub format: Option<String>,
}

/// Normalises a serial given by a client: hex digits, any case, colons allowed.
fn normalise_serial(raw: &str) -> Result<String, ApiError> {
    let s: String = raw
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_uppercase();
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ValidationError::new("serial", "must be a hexadecimal serial number").into());
    }
    Ok(s)
}

/// Signs a device's CSR with the Callhome CA. The device must be registered.
#[utoipa::path(
    post, path = "/api/v1/devices/{imei}/certificate", tag = "certificates", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = SignRequest,
    responses(
        (status = 201, description = "Issued", body = SignedCertificate),
        (status = 400, description = "The CSR is malformed, wrongly signed, or names another subject", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid IMEI or validity", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sign_csr(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<SignRequest>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<SignedCertificate>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    if let Some(days) = req.validity_days
        && !(1..=3650).contains(&days)
    {
        return Err(ValidationError::new("validity_days", "must be between 1 and 3650").into());
    }
    state.store.get_device(&imei).await?;
    let record = state
        .certs
        .sign_device_csr(&imei, &req.csr, req.validity_days, &p.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(format!("{imei} serial {}", record.serial))),
        axum::Json(SignedCertificate {
            ca_chain: state.certs.ca_chain_pem(),
            serial: record.serial,
            not_before: rfc3339(record.not_before),
            not_after: rfc3339(record.not_after),
            fingerprint_sha256: record.fingerprint_sha256,
            certificate: record.certificate_pem,
        }),
    ))
}

/// Every certificate issued to a device, newest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{imei}/certificates", tag = "certificates", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "The device's certificates", body = [CertificateView]),
        (status = 422, description = "Not a valid IMEI", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_device_certificates(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<Vec<CertificateView>>, ApiError> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    let certs = state.store.list_certificates(&imei).await?;
    Ok(axum::Json(certs.into_iter().map(Into::into).collect()))
}

/// One certificate by serial.
#[utoipa::path(
    get, path = "/api/v1/certificates/{serial}", tag = "certificates", security(("bearer" = [])),
    params(("serial" = String, Path, description = "Serial number, hex (colons allowed)")),
    responses(
        (status = 200, description = "The certificate", body = CertificateView),
        (status = 404, description = "Unknown serial", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_certificate(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(serial): ApiPath<String>,
) -> Result<axum::Json<CertificateView>, ApiError> {
    p.require(Role::Reader)?;
    let serial = normalise_serial(&serial)?;
    Ok(axum::Json(
        state.store.get_certificate(&serial).await?.into(),
    ))
}

/// Revokes a certificate. The CRL is regenerated at once.
#[utoipa::path(
    post, path = "/api/v1/certificates/{serial}/revoke", tag = "certificates", security(("bearer" = [])),
    params(("serial" = String, Path, description = "Serial number, hex (colons allowed)")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Revoked", body = CertificateView),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown serial", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown reason", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_certificate(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(serial): ApiPath<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<axum::Json<CertificateView>, ApiError> {
    p.require(Role::Operator)?;
    let serial = normalise_serial(&serial)?;
    let reason = req
        .reason
        .as_deref()
        .map(|r| {
            r.parse::<RevocationReason>()
                .map_err(|e| ValidationError::new("reason", e.to_string()))
        })
        .transpose()?;
    let record = state.certs.revoke(&serial, reason, &p.name).await?;
    Ok(axum::Json(record.into()))
}

fn pem_response(body: String, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The trust bundle (PEM): the root of the CA, and during a CA rollover the roots of
/// the retired issuing CAs too. The trust anchor for modems and reading platforms to
/// verify Callhome's servers. No authentication.
#[utoipa::path(get, path = "/api/v1/ca/certificate", tag = "certificates",
    responses((status = 200, description = "Root certificate(s), PEM, the current one first", body = String, content_type = "application/x-pem-file")))]
pub async fn ca_certificate(State(state): State<AppState>) -> Response {
    pem_response(state.certs.trust_bundle_pem(), "application/x-pem-file")
}

/// The CA chain (PEM): the issuing CA that signs device certificates first, the root
/// last. What a device presents after its own certificate. No authentication.
#[utoipa::path(get, path = "/api/v1/ca/chain", tag = "certificates",
    responses((status = 200, description = "Issuing CA, then the certificates above it up to the root, PEM", body = String, content_type = "application/x-pem-file")))]
pub async fn ca_chain(State(state): State<AppState>) -> Response {
    pem_response(state.certs.ca_chain_pem(), "application/x-pem-file")
}

/// The current issuing CA's certificate revocation list (without distribution-point
/// scope; the device-facing listener publishes each issuing CA's CRL at the URL device
/// certificates name). No authentication.
#[utoipa::path(get, path = "/api/v1/ca/crl", tag = "certificates",
    params(CrlQuery),
    responses(
        (status = 200, description = "CRL, PEM (or DER with format=der)", body = String, content_type = "application/x-pem-file"),
        (status = 422, description = "Unknown format", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ca_crl(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<CrlQuery>,
) -> Result<Response, ApiError> {
    let crls = state.certs.crl();
    let crl = &crls.current;
    match q.format.as_deref() {
        None | Some("pem") => Ok(pem_response(crl.pem.clone(), "application/x-pem-file")),
        Some("der") => {
            let mut resp = crl.der.to_vec().into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pkix-crl"),
            );
            Ok(resp)
        }
        Some(_) => Err(ValidationError::new("format", "must be pem or der").into()),
    }
}
