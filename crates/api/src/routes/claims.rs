//! Claim provisioning: `POST/GET /api/v1/claims`, `POST /api/v1/claims/{id}/revoke`, and
//! the approval queue `GET /api/v1/enrollments`, `POST /api/v1/enrollments/{id}/approve`,
//! `POST /api/v1/enrollments/{id}/reject`.
//!
//! A claim is a production batch's credential: a claim certificate issued by our CA (its
//! private key is in the 201 response only, never stored nor logged) with a policy (which
//! IMEIs, until when, how many, approval `auto` or `manual`). Modems enrol with it over EST
//! `simpleenroll` or the MQTT `{IMEI}/csr` topic; enrolments held for approval are decided
//! here. Admins create and revoke claims; operators list them and decide enrolments. Every
//! create, revoke, approve and reject is audited (the API's audit middleware).

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::Role;
use callhome_core::claims::{Approval, ClaimKind, ClaimPolicy, EnrollmentState, ImeiPolicy};
use callhome_pki::ClaimError;
use callhome_store::{ClaimRecord, EnrollmentFilter, EnrollmentRecord};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::paging;
use crate::time_format::{rfc3339, rfc3339_opt};

/// An inclusive range of IMEIs.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImeiRange {
    /// The first IMEI allowed.
    #[schema(example = "350000000000014")]
    pub from: String,
    /// The last IMEI allowed.
    #[schema(example = "350000000009999")]
    pub to: String,
}

/// A claim to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "batch-2026-11", "imei_range": {"from": "350000000000014", "to": "350000000009999"}, "expires_at": "2027-01-31T00:00:00Z", "max_enrollments": 1000, "approval": "manual"}))]
pub struct CreateClaim {
    /// Unique name, 1-58 characters of letters, digits and `-_.` (the claim certificate's
    /// CN is `claim:<name>`).
    pub name: String,
    /// The IMEIs it may enrol (at most 100,000, no duplicates); or give `imei_range`.
    pub imeis: Option<Vec<String>>,
    /// The IMEIs it may enrol, as a range; or give `imeis`.
    pub imei_range: Option<ImeiRange>,
    /// RFC 3339, in the future: after this nothing is enrolled with it (and the claim
    /// certificate expires).
    pub expires_at: String,
    /// How many enrolments it allows in all, 1 to 1,000,000.
    pub max_enrollments: i64,
    /// `auto`: issue at once; `manual`: hold each enrolment for an operator.
    pub approval: Approval,
    /// A manufacturer's claim CA (PEM). Not supported yet: refused with 422.
    pub ca_certificate: Option<String>,
}

/// A claim.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// `issued` (a claim certificate of ours) or `ca` (a manufacturer's claim CA).
    pub kind: ClaimKind,
    /// The claim certificate (PEM).
    pub certificate_pem: String,
    /// SHA-256 of the certificate, hex.
    pub fingerprint_sha256: String,
    /// The claim certificate's serial (hex).
    pub serial: Option<String>,
    /// The allow-list, when the policy is a list.
    pub imeis: Option<Vec<String>>,
    /// The range, when the policy is a range.
    pub imei_range: Option<ImeiRange>,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Enrolment limit.
    pub max_enrollments: i64,
    /// Enrolments holding a slot (pending, approved or issued).
    pub enrollments_used: i64,
    /// `auto` or `manual`.
    pub approval: Approval,
    /// RFC 3339.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

impl From<ClaimRecord> for ClaimView {
    fn from(c: ClaimRecord) -> Self {
        let (imeis, imei_range) = match c.policy.imeis {
            ImeiPolicy::List(list) => (
                Some(list.into_iter().map(|i| i.to_string()).collect()),
                None,
            ),
            ImeiPolicy::Range { from, to } => (
                None,
                Some(ImeiRange {
                    from: from.to_string(),
                    to: to.to_string(),
                }),
            ),
        };
        Self {
            id: c.id,
            name: c.name,
            kind: c.kind,
            certificate_pem: c.certificate_pem,
            fingerprint_sha256: c.fingerprint_sha256,
            serial: c.serial,
            imeis,
            imei_range,
            expires_at: rfc3339(c.policy.expires_at),
            max_enrollments: c.policy.max_enrollments,
            enrollments_used: c.enrollments_used,
            approval: c.policy.approval,
            created_at: rfc3339(c.created_at),
            created_by: c.created_by,
            revoked_at: rfc3339_opt(c.revoked_at),
            revoked_by: c.revoked_by,
        }
    }
}

/// A new claim with its claim certificate's private key: store the key now, it cannot be
/// shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedClaim {
    /// The claim.
    #[serde(flatten)]
    pub claim: ClaimView,
    /// The claim certificate's private key (PKCS#8 PEM). Shown once, never stored.
    pub private_key_pem: String,
    /// The CA chain (issuing CA first), PEM.
    pub ca_chain: String,
}

/// A page of claims.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimPage {
    /// Newest first.
    pub items: Vec<ClaimView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClaimQuery {
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// An enrolment made with a claim.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentView {
    /// Id.
    pub id: Uuid,
    /// The claim.
    pub claim_id: Uuid,
    /// The device.
    pub imei: String,
    /// `pending`, `approved`, `rejected` or `issued`.
    pub state: EnrollmentState,
    /// SHA-256 of the CSR's public key, hex.
    pub public_key_sha256: String,
    /// RFC 3339.
    pub requested_at: String,
    /// The modem's address.
    pub remote_addr: Option<String>,
    /// RFC 3339, when decided.
    pub decided_at: Option<String>,
    /// Who decided (`policy:auto` for an automatic approval).
    pub decided_by: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The device certificate issued.
    pub certificate_serial: Option<String>,
}

impl From<EnrollmentRecord> for EnrollmentView {
    fn from(e: EnrollmentRecord) -> Self {
        Self {
            id: e.id,
            claim_id: e.claim_id,
            imei: e.imei.to_string(),
            state: e.state,
            public_key_sha256: e.public_key_sha256,
            requested_at: rfc3339(e.requested_at),
            remote_addr: e.remote_addr,
            decided_at: rfc3339_opt(e.decided_at),
            decided_by: e.decided_by,
            reason: e.reason,
            certificate_serial: e.certificate_serial,
        }
    }
}

/// A page of enrolments.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentPage {
    /// Newest first.
    pub items: Vec<EnrollmentView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Which enrolments.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EnrollmentQuery {
    /// Only those in this state (`pending`: the approval queue).
    pub state: Option<EnrollmentState>,
    /// Only those of this claim.
    pub claim_id: Option<Uuid>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// An approved enrolment with the certificate issued for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovedEnrollment {
    /// The enrolment (state `issued`).
    pub enrollment: EnrollmentView,
    /// The device certificate (PEM): the modem also gets it when it asks again.
    pub certificate_pem: String,
}

/// Why an enrolment is rejected.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectEnrollment {
    /// Shown to the modem and in the audit log (at most 256 characters).
    pub reason: Option<String>,
}

/// Registers a claim for a production batch and issues its claim certificate. The
/// response is the only time the claim certificate's private key is shown.
#[utoipa::path(
    post, path = "/api/v1/claims", tag = "claims", security(("bearer" = [])),
    request_body = CreateClaim,
    responses(
        (status = 201, description = "Created; the claim certificate's key is in `private_key_pem`", body = CreatedClaim),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A claim with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid policy (names the field), or `ca_certificate` (not supported yet)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_claim(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateClaim>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<CreatedClaim>,
    ),
    ApiError,
> {
    p.require(Role::Admin)?;
    if req.ca_certificate.is_some() {
        return Err(callhome_core::ValidationError::new(
            "ca_certificate",
            "manufacturer claim CAs are not supported yet: omit it to have a claim certificate issued",
        )
        .into());
    }
    callhome_core::claims::check_claim_name(&req.name)?;
    let now = OffsetDateTime::now_utc();
    let expires_at = OffsetDateTime::parse(&req.expires_at, &Rfc3339).map_err(|e| {
        callhome_core::ValidationError::new("expires_at", format!("not an RFC 3339 time: {e}"))
    })?;
    let policy = ClaimPolicy::new(
        req.imeis.as_deref(),
        req.imei_range
            .as_ref()
            .map(|r| (r.from.as_str(), r.to.as_str())),
        expires_at,
        req.max_enrollments,
        req.approval,
        now,
    )?;
    let issued = state
        .certs
        .create_claim(&req.name, policy, &p.name)
        .await
        .map_err(claim_error)?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(format!("claim {}", issued.claim.name))),
        axum::Json(CreatedClaim {
            claim: issued.claim.into(),
            private_key_pem: issued.private_key_pem.as_str().to_owned(),
            ca_chain: state.certs.ca_chain_pem(),
        }),
    ))
}

/// The claims, newest first.
#[utoipa::path(
    get, path = "/api/v1/claims", tag = "claims", security(("bearer" = [])),
    params(ClaimQuery),
    responses(
        (status = 200, description = "A page of claims", body = ClaimPage),
        (status = 400, description = "Bad cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_claims(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<ClaimQuery>,
) -> Result<axum::Json<ClaimPage>, ApiError> {
    p.require(Role::Operator)?;
    let limit = paging::limit(q.limit)?;
    let before = paging::cursor::<Uuid>(q.cursor.as_deref())?;
    let page = state.store.list_claims(before, limit).await?;
    Ok(axum::Json(ClaimPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}

/// Revokes a claim: nothing more is enrolled with it, its certificate is in the CRL at
/// once and modems connected with it are disconnected. Enrolments already issued stay.
#[utoipa::path(
    post, path = "/api/v1/claims/{id}/revoke", tag = "claims", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Claim id")),
    responses(
        (status = 200, description = "Revoked", body = ClaimView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such claim", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_claim(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<(axum::extract::Extension<AuditTarget>, axum::Json<ClaimView>), ApiError> {
    p.require(Role::Admin)?;
    let id = path_id("id", &id)?;
    let claim = state
        .certs
        .revoke_claim(id, &p.name)
        .await
        .map_err(claim_error)?;
    Ok((
        axum::extract::Extension(AuditTarget(format!("claim {}", claim.name))),
        axum::Json(claim.into()),
    ))
}

/// Enrolments made with claims, newest first; `state=pending` is the approval queue.
#[utoipa::path(
    get, path = "/api/v1/enrollments", tag = "claims", security(("bearer" = [])),
    params(EnrollmentQuery),
    responses(
        (status = 200, description = "A page of enrolments", body = EnrollmentPage),
        (status = 400, description = "Bad cursor or state", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_enrollments(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<EnrollmentQuery>,
) -> Result<axum::Json<EnrollmentPage>, ApiError> {
    p.require(Role::Operator)?;
    let filter = EnrollmentFilter {
        state: q.state,
        claim_id: q.claim_id,
        before: paging::cursor::<Uuid>(q.cursor.as_deref())?,
        limit: paging::limit(q.limit)?,
    };
    let page = state.store.list_enrollments(&filter).await?;
    Ok(axum::Json(EnrollmentPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}

/// Approves a pending enrolment: the device certificate is issued now (the device is
/// registered if it is not yet); the modem gets it when it asks again.
#[utoipa::path(
    post, path = "/api/v1/enrollments/{id}/approve", tag = "claims", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Enrolment id")),
    responses(
        (status = 200, description = "Approved and issued", body = ApprovedEnrollment),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such enrolment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already approved or rejected, or its claim is revoked or expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn approve_enrollment(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<
    (
        axum::extract::Extension<AuditTarget>,
        axum::Json<ApprovedEnrollment>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let id = path_id("id", &id)?;
    let (enrollment, certificate) = state
        .certs
        .approve_enrollment(id, &p.name)
        .await
        .map_err(decision_error)?;
    publish(&state, &enrollment, EventKind::Issued).await;
    Ok((
        axum::extract::Extension(AuditTarget(format!(
            "enrolment {id} {} serial {}",
            enrollment.imei, certificate.serial
        ))),
        axum::Json(ApprovedEnrollment {
            enrollment: enrollment.into(),
            certificate_pem: certificate.certificate_pem,
        }),
    ))
}

/// Rejects a pending enrolment: no certificate; the modem is told so when it asks again.
#[utoipa::path(
    post, path = "/api/v1/enrollments/{id}/reject", tag = "claims", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Enrolment id")),
    request_body(content = Option<RejectEnrollment>, description = "An optional reason"),
    responses(
        (status = 200, description = "Rejected", body = EnrollmentView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such enrolment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already approved or rejected", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id or reason", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reject_enrollment(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<
    (
        axum::extract::Extension<AuditTarget>,
        axum::Json<EnrollmentView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let id = path_id("id", &id)?;
    // The body is optional: empty, or a JSON object with a reason.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RejectEnrollment>(&body)
            .map_err(|e| {
                ApiError::bad_request("malformed-json", format!("invalid JSON body: {e}"))
            })?
            .reason
    };
    if let Some(r) = &reason
        && (r.chars().count() > 256 || r.chars().any(char::is_control))
    {
        return Err(callhome_core::ValidationError::new(
            "reason",
            "must be at most 256 characters, without control characters",
        )
        .into());
    }
    let enrollment = state
        .certs
        .reject_enrollment(id, &p.name, reason.as_deref())
        .await
        .map_err(decision_error)?;
    publish(&state, &enrollment, EventKind::Rejected).await;
    Ok((
        axum::extract::Extension(AuditTarget(format!("enrolment {id} {}", enrollment.imei))),
        axum::Json(enrollment.into()),
    ))
}

/// Which `enrollment.*` event a decision publishes.
enum EventKind {
    Issued,
    Rejected,
}

/// Publishes the `enrollment.*` event of a decision (the claim's name is read back; a
/// failure to read it is logged and the event goes out with the claim's id).
async fn publish(state: &AppState, e: &EnrollmentRecord, kind: EventKind) {
    use callhome_core::events::EventPayload;
    let claim = match state.store.get_claim(e.claim_id).await {
        Ok(c) => c.name,
        Err(err) => {
            tracing::warn!(error = %err, "could not read an enrolment's claim for its event");
            e.claim_id.to_string()
        }
    };
    let payload = callhome_pki::enrollment_changed(e, &claim);
    let event = match kind {
        EventKind::Issued => EventPayload::EnrollmentIssued(payload),
        EventKind::Rejected => EventPayload::EnrollmentRejected(payload),
    };
    state.gateway.events().publish(Some(&e.imei), event);
}

/// A path id, or a 422 naming it.
fn path_id(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        callhome_core::ValidationError::new(field, format!("{raw:?} is not an id (a UUID)")).into()
    })
}

/// A claim operation's error as the API reports it.
pub(crate) fn claim_error(e: ClaimError) -> ApiError {
    match e {
        ClaimError::Pki(p) => p.into(),
        ClaimError::Invalid(v) => v.into(),
        ClaimError::InvalidCsr(why) => {
            ApiError::bad_request("invalid-csr", format!("invalid CSR: {why}"))
        }
        ClaimError::AlreadyEnrolled { .. } | ClaimError::AlreadyPending { .. } => {
            ApiError::Conflict(e.to_string())
        }
        other => ApiError::Forbidden(other.to_string()),
    }
}

/// An approval's or rejection's error: a decided enrolment, or one of a revoked or expired
/// claim, is a conflict.
fn decision_error(e: ClaimError) -> ApiError {
    match e {
        ClaimError::Revoked(_) | ClaimError::Expired { .. } => {
            ApiError::Conflict(format!("{e}: its enrolments can no longer be approved"))
        }
        other => claim_error(other),
    }
}
