//! User accounts: `GET/POST /api/v1/users`, `PATCH /api/v1/users/{username}`,
//! `POST /api/v1/users/{username}/revoke-tokens`. Admins only.

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::{Role, Username};
use callhome_store::{NewUser, User, UserPatch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Principal, check_password_policy, hash_password};
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::time_format::rfc3339;

/// A user account (never its password).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"username": "reading-centre", "role": "reader", "disabled": false,
    "created_at": "2026-11-21T10:00:00Z", "updated_at": "2026-11-21T10:00:00Z"}))]
pub struct UserView {
    /// Login name.
    pub username: String,
    /// `admin`, `operator` or `reader`.
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
    /// A disabled user cannot log in and its tokens stop working.
    pub disabled: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            username: u.username,
            role: u.role,
            disabled: u.disabled,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// A user to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "ops1", "password": "a long passphrase", "role": "operator"}))]
pub struct CreateUser {
    /// Login name: letters, digits, `.`, `_`, `-`, `@`; at most 64.
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    /// `admin`, `operator` or `reader`.
    #[schema(value_type = String, example = "operator")]
    pub role: String,
}

/// Changes to a user; absent members stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"disabled": true}))]
pub struct UpdateUser {
    /// New role.
    pub role: Option<String>,
    /// Disable (`true`) or enable (`false`).
    pub disabled: Option<bool>,
    /// New password (at least 12 characters).
    pub password: Option<String>,
}

/// Lists all users.
#[utoipa::path(
    get, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "All users", body = [UserView]),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_users(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<Vec<UserView>>, ApiError> {
    p.require(Role::Admin)?;
    let users = state.store.list_users().await?;
    Ok(axum::Json(users.into_iter().map(UserView::from).collect()))
}

/// Creates a user.
#[utoipa::path(
    post, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "User name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user name, password or role", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<UserView>,
    ),
    ApiError,
> {
    p.require(Role::Admin)?;
    let username = Username::parse(&req.username)?;
    let role: Role = req.role.parse()?;
    check_password_policy(&req.password)?;
    let password_hash = hash_password(state.gateway.passwords(), req.password).await?;
    let user = state
        .store
        .create_user(&NewUser {
            username: username.to_string(),
            password_hash,
            role,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(user.username.clone())),
        axum::Json(user.into()),
    ))
}

/// Changes a user's role, disables or enables it, or sets a new password. A new password or
/// disabling also revokes every access token issued to the user before; disabling ends its
/// open streams (the SSE event stream, session WebSockets) at once.
#[utoipa::path(
    patch, path = "/api/v1/users/{username}", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path, description = "Login name")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "Updated", body = UserView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would lock out the caller", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid role or password", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_user(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(username): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<axum::Json<UserView>, ApiError> {
    p.require(Role::Admin)?;
    let user = state.store.get_user_by_name(&username).await?;
    let role = req.role.as_deref().map(str::parse::<Role>).transpose()?;
    if user.id == p.id && (req.disabled == Some(true) || role.is_some_and(|r| r != Role::Admin)) {
        return Err(ApiError::Conflict(
            "an admin cannot disable or demote itself; ask another admin".to_owned(),
        ));
    }
    let password_hash = match req.password {
        Some(pw) => {
            check_password_policy(&pw)?;
            Some(hash_password(state.gateway.passwords(), pw).await?)
        }
        None => None,
    };
    let updated = state
        .store
        .update_user(
            user.id,
            &UserPatch {
                role,
                disabled: req.disabled,
                password_hash,
            },
        )
        .await?;
    if updated.disabled {
        // Its open SSE and session streams end now, not when they next authenticate.
        state.streams.end_all(updated.id);
    }
    Ok(axum::Json(updated.into()))
}

/// Revokes every access token issued to a user so far (its token version is raised): they
/// are refused with 401 from the next request on. The user can log in again.
#[utoipa::path(
    post, path = "/api/v1/users/{username}/revoke-tokens", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path, description = "Login name")),
    responses(
        (status = 204, description = "Every token issued before is revoked"),
        (status = 401, description = "No or bad credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(username): ApiPath<String>,
) -> Result<(StatusCode, axum::extract::Extension<AuditTarget>), ApiError> {
    p.require(Role::Admin)?;
    let user = state.store.get_user_by_name(&username).await?;
    let user = state.store.revoke_user_tokens(user.id).await?;
    tracing::info!(user = %user.username, by = %p.name, "access tokens revoked");
    Ok((
        StatusCode::NO_CONTENT,
        axum::extract::Extension(AuditTarget(user.username)),
    ))
}
