//! `POST /api/v1/auth/token` and `GET /api/v1/auth/whoami`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Principal, PrincipalKind, authenticate_api_key, issue_token, verify_password};
use crate::context::AuditActor;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;

/// Credentials to exchange for an access token: a user name and password, or an API key.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "admin", "password": "correct horse battery staple"}))]
pub struct TokenRequest {
    /// User name (with `password`).
    pub username: Option<String>,
    /// Password (with `username`).
    pub password: Option<String>,
    /// An API key (`chk_...`), instead of user name and password.
    pub api_key: Option<String>,
}

/// An access token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"access_token": "eyJhbGciOiJIUzI1NiIs...", "token_type": "Bearer", "expires_in": 3600}))]
pub struct TokenResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
}

/// The caller, as the server sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// User name or `apikey:<name>`.
    pub name: String,
    /// `user` or `api_key`.
    pub kind: String,
    /// `admin`, `operator` or `reader`.
    pub role: String,
}

/// Exchange a user name and password, or an API key, for a bearer access token.
#[utoipa::path(
    post, path = "/api/v1/auth/token", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Token issued", body = TokenResponse),
        (status = 401, description = "Wrong credentials or disabled account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither user name and password nor API key given", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    body: Result<ApiJson<TokenRequest>, ApiError>,
) -> Response {
    let (actor, result) = match body {
        Err(e) => ("anonymous".to_owned(), Err(e)),
        Ok(ApiJson(req)) => match (req.username, req.password, req.api_key) {
            (Some(username), Some(password), None) => {
                let r = login(&state, &username, password).await;
                (username, r)
            }
            (None, None, Some(key)) => match authenticate_api_key(&state.store, &key).await {
                Ok(p) => (p.name.clone(), Ok(p)),
                Err(e) => ("apikey:unknown".to_owned(), Err(e)),
            },
            _ => (
                "anonymous".to_owned(),
                Err(callhome_core::ValidationError::new(
                    "body",
                    "give either \"username\" and \"password\", or \"api_key\"",
                )
                .into()),
            ),
        },
    };
    let mut response = match result.and_then(|p| issue_token(&state.tokens, &p)) {
        Ok((access_token, expires_in)) => axum::Json(TokenResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in,
        })
        .into_response(),
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(AuditActor(actor));
    response
}

async fn login(state: &AppState, username: &str, password: String) -> Result<Principal, ApiError> {
    let user = match state.store.get_user_by_name(username).await {
        Ok(u) => Some(u),
        Err(callhome_store::StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let ok = verify_password(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    match user {
        Some(u) if ok && !u.disabled => Ok(Principal {
            id: u.id,
            name: u.username,
            kind: PrincipalKind::User,
            role: u.role,
        }),
        Some(u) if ok => Err(ApiError::Unauthorized(format!(
            "user {} is disabled",
            u.username
        ))),
        _ => Err(ApiError::Unauthorized(
            "wrong user name or password".to_owned(),
        )),
    }
}

/// Who the bearer credential belongs to, and its role.
#[utoipa::path(
    get, path = "/api/v1/auth/whoami", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = WhoAmI),
        (status = 401, description = "No or bad credentials", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn whoami(principal: Principal) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        name: principal.name,
        kind: principal.kind.as_str().to_owned(),
        role: principal.role.as_str().to_owned(),
    })
}
