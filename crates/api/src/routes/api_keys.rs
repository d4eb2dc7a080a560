//! API keys for machine clients: `GET/POST /api/v1/api-keys`, `DELETE /api/v1/api-keys/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::{Role, ValidationError};
use callhome_store::{ApiKey, NewApiKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Principal, generate_api_key};
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::time_format::{rfc3339, rfc3339_opt};

/// An API key record (the key itself is shown only once, at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Id, used to revoke it.
    pub id: Uuid,
    /// What the key is for.
    pub name: String,
    /// Public prefix: the key starts with `chk_<prefix>_`.
    pub prefix: String,
    /// `admin`, `operator` or `reader`.
    #[schema(value_type = String, example = "reader")]
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, if the key expires.
    pub expires_at: Option<String>,
    /// RFC 3339, last successful use.
    pub last_used_at: Option<String>,
    /// RFC 3339, if revoked.
    pub revoked_at: Option<String>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            role: k.role,
            created_by: k.created_by,
            created_at: rfc3339(k.created_at),
            expires_at: rfc3339_opt(k.expires_at),
            last_used_at: rfc3339_opt(k.last_used_at),
            revoked_at: rfc3339_opt(k.revoked_at),
        }
    }
}

/// A new API key, with its secret: store it now, it cannot be shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key: send it as `Authorization: Bearer <key>` or exchange it at `/auth/token`.
    #[schema(example = "chk_1a2b3c4d_3q2-7wXkYq9Vb8cHk2Jm0tQe4L5nPzR6sUaB")]
    pub key: String,
    /// The record.
    #[serde(flatten)]
    pub record: ApiKeyView,
}

/// An API key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "reading centre MDM", "role": "reader", "expires_in_days": 365}))]
pub struct CreateApiKey {
    /// What the key is for (1-128 characters).
    pub name: String,
    /// `admin`, `operator` or `reader`.
    pub role: String,
    /// Days until the key expires; none means it does not.
    pub expires_in_days: Option<u32>,
}

/// Lists API keys (without their secrets).
#[utoipa::path(
    get, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses(
        (status = 200, description = "All keys", body = [ApiKeyView]),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<Vec<ApiKeyView>>, ApiError> {
    p.require(Role::Admin)?;
    Ok(axum::Json(
        state
            .store
            .list_api_keys()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Creates an API key; the response is the only time the key is shown.
#[utoipa::path(
    post, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; the key is in `key`", body = CreatedApiKey),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name, role or expiry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateApiKey>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<CreatedApiKey>,
    ),
    ApiError,
> {
    p.require(Role::Admin)?;
    let name = callhome_core::DeviceName::parse(&req.name).map_err(|e| e.at("name"))?;
    let role: Role = req.role.parse()?;
    let expires_at = match req.expires_in_days {
        Some(0) => {
            return Err(ValidationError::new("expires_in_days", "must be at least 1").into());
        }
        Some(d) if d > 3650 => {
            return Err(ValidationError::new("expires_in_days", "must be at most 3650").into());
        }
        Some(d) => Some(OffsetDateTime::now_utc() + time::Duration::days(i64::from(d))),
        None => None,
    };
    let (key, prefix, key_hash) = generate_api_key();
    let record = state
        .store
        .create_api_key(&NewApiKey {
            name: name.to_string(),
            prefix,
            key_hash,
            role,
            created_by: p.name.clone(),
            expires_at,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(format!("apikey:{}", record.name))),
        axum::Json(CreatedApiKey {
            key,
            record: record.into(),
        }),
    ))
}

/// Revokes an API key; it stops working at once, and its open streams (the SSE event
/// stream, session WebSockets) end.
#[utoipa::path(
    delete, path = "/api/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "API key id")),
    responses(
        (status = 200, description = "Revoked", body = ApiKeyView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<ApiKeyView>, ApiError> {
    p.require(Role::Admin)?;
    let revoked = state
        .store
        .revoke_api_key(id, OffsetDateTime::now_utc())
        .await?;
    // Its open SSE and session streams end now.
    state.streams.end_all(revoked.id);
    Ok(axum::Json(revoked.into()))
}
