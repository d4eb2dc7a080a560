//! `POST /api/v1/auth/token` and `GET /api/v1/auth/whoami`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use callhome_core::{ActorKind, AuditOutcome};
use callhome_store::NewAuditEntry;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Principal, PrincipalKind, authenticate_api_key, issue_token, verify_password};
use crate::context::{AuditActor, SkipAudit, clip};
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::throttle::{Lockout, Subject};

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
///
/// Failed password logins are throttled per user name and per client address: past a few
/// failures each further attempt must wait (exponential back-off), and at the lockout
/// threshold the name or address is locked for a while (audited as `auth.lockout`). A
/// throttled attempt is refused with 429 and `Retry-After` before its password is checked,
/// even when the password is right.
#[utoipa::path(
    post, path = "/api/v1/auth/token", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Token issued", body = TokenResponse),
        (status = 401, description = "Wrong credentials or disabled account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither user name and password nor API key given", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this user name or from this address: backing off or locked; retry after the `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until a login may be tried again"))),
        (status = 503, description = "Every password-hashing slot stayed busy; retry after the `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds after which a retry is worth it"))),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    connect_info: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<ApiJson<TokenRequest>, ApiError>,
) -> Response {
    let addr = connect_info.map(|c| c.0.0.ip());
    let mut throttled = false;
    let (actor, result) = match body {
        Err(e) => ("anonymous".to_owned(), Err(e)),
        Ok(ApiJson(req)) => match (req.username, req.password, req.api_key) {
            (Some(username), Some(password), None) => {
                let now = std::time::Instant::now();
                let r = match state.login_throttle.check(&username, addr, now) {
                    Err(refused) => {
                        throttled = true;
                        metrics::counter!(
                            "callhome_login_throttled_total",
                            "kind" => match refused.subject {
                                Subject::User(_) => "user",
                                Subject::Address(_) => "address",
                            },
                            "locked" => refused.locked.to_string()
                        )
                        .increment(1);
                        Err(ApiError::TooManyRequests {
                            detail: format!(
                                "too many failed logins for this {}: {}; try again in {} s",
                                match refused.subject {
                                    Subject::User(_) => "user name",
                                    Subject::Address(_) => "address",
                                },
                                if refused.locked {
                                    "temporarily locked"
                                } else {
                                    "backing off"
                                },
                                refused.retry_after_s()
                            ),
                            retry_after_s: Some(refused.retry_after_s()),
                        })
                    }
                    Ok(()) => {
                        let r = login(&state, &username, password).await;
                        match &r {
                            Ok(_) => state.login_throttle.succeeded(&username),
                            Err(ApiError::Unauthorized(_)) if !is_disabled(&r) => {
                                let lockouts = state.login_throttle.failed(
                                    &username,
                                    addr,
                                    std::time::Instant::now(),
                                );
                                for l in lockouts {
                                    audit_lockout(&state, &username, addr, &headers, &l).await;
                                }
                            }
                            Err(_) => {}
                        }
                        r
                    }
                };
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
    if throttled {
        // Refused before any check: counted in `callhome_login_throttled_total`, not one
        // audit row each (the lockout itself was audited when it began).
        response
            .extensions_mut()
            .insert(SkipAudit("login_throttled"));
    }
    response
}

const DISABLED: &str = " is disabled";

fn is_disabled(r: &Result<Principal, ApiError>) -> bool {
    matches!(r, Err(ApiError::Unauthorized(m)) if m.ends_with(DISABLED))
}

/// Writes the `auth.lockout` audit row for a lockout that just began.
async fn audit_lockout(
    state: &AppState,
    username: &str,
    addr: Option<IpAddr>,
    headers: &HeaderMap,
    lockout: &Lockout,
) {
    let target = match &lockout.subject {
        Subject::User(u) => format!("user:{u}"),
        Subject::Address(a) => format!("address:{a}"),
    };
    tracing::warn!(%target, failures = lockout.failures, "login locked after failed attempts");
    metrics::counter!("callhome_login_lockouts_total").increment(1);
    let entry = NewAuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: clip(username, crate::context::MAX_ACTOR),
        actor_kind: ActorKind::Anonymous,
        action: "auth.lockout".to_owned(),
        target: Some(clip(&target, crate::context::MAX_TARGET)),
        outcome: AuditOutcome::Failure,
        status: Some(429),
        detail: Some(
            serde_json::json!({
                "failures": lockout.failures,
                "locked_for_s": lockout.duration.as_secs(),
            })
            .to_string(),
        ),
        remote_addr: addr.map(|a| a.to_string()),
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        metrics::counter!("callhome_audit_write_failures_total").increment(1);
        tracing::error!(error = %e, "could not write the lockout audit row");
    }
}

async fn login(state: &AppState, username: &str, password: String) -> Result<Principal, ApiError> {
    let user = match state.store.get_user_by_name(username).await {
        Ok(u) => Some(u),
        Err(callhome_store::StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let ok = verify_password(
        state.gateway.passwords(),
        password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    match user {
        Some(u) if ok && !u.disabled => Ok(Principal {
            id: u.id,
            name: u.username,
            kind: PrincipalKind::User,
            role: u.role,
            token_version: u.token_version,
        }),
        Some(u) if ok => Err(ApiError::Unauthorized(format!(
            "user {}{DISABLED}",
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
