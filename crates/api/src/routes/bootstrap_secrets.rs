//! Bootstrap secrets for EST enrolment: `POST` and `DELETE
//! /api/v1/devices/{imei}/bootstrap-secret`.
//!
//! A bootstrap secret authenticates a device's first EST `simpleenroll` (or
//! `serverkeygen`) with HTTP Basic, user name = IMEI. It is random (32 base62 characters
//! from the operating system's CSPRNG), shown once, stored only as an argon2 hash with its
//! expiry, one per device (a new one replaces the old), and used up by the enrolment it
//! authenticates.

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::{Role, ValidationError};
use callhome_store::BootstrapSecret;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::devices::path_imei;
use crate::time_format::rfc3339;

/// Lifetime of a bootstrap secret when none is asked for: 7 days.
pub const DEFAULT_EXPIRES_IN_S: u64 = 7 * 86_400;
/// Longest lifetime of a bootstrap secret: 90 days.
pub const MAX_EXPIRES_IN_S: u64 = 90 * 86_400;
/// Characters in a secret (base62: about 190 bits).
pub const SECRET_LEN: usize = 32;

/// A bootstrap secret to make.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"expires_in_s": 86400}))]
pub struct CreateBootstrapSecret {
    /// Seconds until it expires (1 to 7,776,000, i.e. 90 days); 7 days when absent.
    pub expires_in_s: Option<u64>,
}

/// A new bootstrap secret: store it now, it cannot be shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedBootstrapSecret {
    /// The secret: the HTTP Basic password of EST enrolment, with the IMEI as user name.
    #[schema(example = "q7Lr2XkT9mB4vN8cJ0sW5hZ3pF6dG1aY")]
    pub secret: String,
    /// RFC 3339: after this the secret is refused.
    pub expires_at: String,
}

/// Makes a device's bootstrap secret for EST enrolment (replacing any other it has). The
/// response is the only time the secret is shown; it is good for one enrolment.
#[utoipa::path(
    post, path = "/api/v1/devices/{imei}/bootstrap-secret", tag = "certificates", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = CreateBootstrapSecret,
    responses(
        (status = 201, description = "Created; the secret is in `secret`", body = CreatedBootstrapSecret),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid IMEI or lifetime", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Every password-hashing slot stayed busy; retry after the `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn create_bootstrap_secret(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<CreateBootstrapSecret>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<CreatedBootstrapSecret>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let expires_in_s = req.expires_in_s.unwrap_or(DEFAULT_EXPIRES_IN_S);
    if !(1..=MAX_EXPIRES_IN_S).contains(&expires_in_s) {
        return Err(ValidationError::new(
            "expires_in_s",
            format!("must be between 1 and {MAX_EXPIRES_IN_S} (90 days)"),
        )
        .into());
    }
    state.store.get_device(&imei).await?;
    let secret = Zeroizing::new(generate_secret());
    let secret_hash =
        crate::auth::hash_password(state.gateway.passwords(), secret.as_str().to_owned()).await?;
    let now = OffsetDateTime::now_utc();
    let expires_at = now + time::Duration::seconds(i64::try_from(expires_in_s).unwrap_or(0));
    state
        .store
        .put_bootstrap_secret(&BootstrapSecret {
            imei: imei.clone(),
            secret_hash,
            expires_at,
            created_at: now,
            created_by: p.name.clone(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(imei.to_string())),
        axum::Json(CreatedBootstrapSecret {
            secret: secret.as_str().to_owned(),
            expires_at: rfc3339(expires_at),
        }),
    ))
}

/// Withdraws a device's bootstrap secret before it is used.
#[utoipa::path(
    delete, path = "/api/v1/devices/{imei}/bootstrap-secret", tag = "certificates", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The device has no bootstrap secret", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid IMEI", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_bootstrap_secret(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    if state.store.delete_bootstrap_secret(&imei).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "device {imei} has no bootstrap secret"
        )))
    }
}

/// A new secret: [`SECRET_LEN`] base62 characters from the thread's CSPRNG (ChaCha seeded
/// by the operating system).
fn generate_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(SECRET_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_base62_and_differ() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
