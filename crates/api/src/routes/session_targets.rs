//! The direct-session allow-list: `GET/POST /api/v1/session-targets`,
//! `DELETE /api/v1/session-targets/{id}`. Admins only; changes are audited.

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::targets::{Cidr, PortRange};
use callhome_core::{Role, ValidationError};
use callhome_store::{NewSessionTarget, SessionTarget};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::time_format::rfc3339;

/// Most users or API keys one entry may name.
const MAX_PRINCIPALS: usize = 100;
/// Longest note.
const MAX_NOTE: usize = 200;

/// An allowed direct-session target: a network and ports, for everyone who may open sessions
/// or only for the named users and API keys.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0193a5f2-7c1e-7b31-9e4a-3f1d2c4b5a69", "network": "10.20.0.0/16",
    "ports": "2000-2010", "users": [], "api_keys": ["0193a5f2-7c1e-7b31-9e4a-3f1d2c4b5a70"],
    "note": "reading platform A", "created_by": "admin", "created_at": "2026-11-21T10:00:00Z"}))]
pub struct SessionTargetView {
    /// Entry id.
    pub id: Uuid,
    /// Addresses, in CIDR notation.
    pub network: String,
    /// A port (`502`) or an inclusive range (`2000-2010`).
    pub ports: String,
    /// Only these users (by name); with `api_keys` empty too: anyone who may open sessions.
    pub users: Vec<String>,
    /// Only these API keys (by id).
    pub api_keys: Vec<Uuid>,
    /// What the entry is for.
    pub note: Option<String>,
    /// Who added it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<SessionTarget> for SessionTargetView {
    fn from(t: SessionTarget) -> Self {
        Self {
            id: t.id,
            network: t.network.to_string(),
            ports: t.ports.to_string(),
            users: t.users,
            api_keys: t.api_keys,
            note: t.note,
            created_by: t.created_by,
            created_at: rfc3339(t.created_at),
        }
    }
}

/// An entry to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"network": "10.20.0.0/16", "ports": "2000-2010", "users": ["reading-centre"], "note": "reading platform A"}))]
pub struct CreateSessionTarget {
    /// Addresses in CIDR notation (`10.20.0.0/16`, `2001:db8::/48`) or one address. Loopback,
    /// link-local, multicast, unspecified and cloud metadata addresses are allowed only by an
    /// entry whose network lies within their reserved range (`127.0.0.0/8`,
    /// `169.254.169.254/32`, ...): `0.0.0.0/0` does not open them.
    pub network: String,
    /// A port (`"502"`) or an inclusive range (`"2000-2010"`).
    pub ports: String,
    /// Only these users (by name). Default: no restriction by user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Only these API keys (by id). Default: no restriction by key. With `users` empty
    /// too, anyone who may open sessions may use the entry.
    #[serde(default)]
    pub api_keys: Vec<Uuid>,
    /// What the entry is for (at most 200 characters).
    pub note: Option<String>,
}

/// Lists the allowed direct-session targets.
#[utoipa::path(
    get, path = "/api/v1/session-targets", tag = "session-targets", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every entry, oldest first", body = [SessionTargetView]),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_session_targets(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<Vec<SessionTargetView>>, ApiError> {
    p.require(Role::Admin)?;
    let all = state.store.list_session_targets().await?;
    Ok(axum::Json(all.into_iter().map(Into::into).collect()))
}

/// Allows a direct-session target. Direct sessions (`mode: direct`) go only to an address and
/// port an entry allows for the caller; anything else is refused with 403.
#[utoipa::path(
    post, path = "/api/v1/session-targets", tag = "session-targets", security(("bearer" = [])),
    request_body = CreateSessionTarget,
    responses(
        (status = 201, description = "Added", body = SessionTargetView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid network, ports, unknown user or API key, or a note too long", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_session_target(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateSessionTarget>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<SessionTargetView>,
    ),
    ApiError,
> {
    p.require(Role::Admin)?;
    let network = Cidr::parse("network", &req.network)?;
    let ports = PortRange::parse("ports", &req.ports)?;
    if req.users.len() > MAX_PRINCIPALS || req.api_keys.len() > MAX_PRINCIPALS {
        return Err(ValidationError::new(
            "users",
            format!("at most {MAX_PRINCIPALS} users and {MAX_PRINCIPALS} API keys per entry"),
        )
        .into());
    }
    let mut users = Vec::with_capacity(req.users.len());
    for (i, name) in req.users.iter().enumerate() {
        match state.store.get_user_by_name(name).await {
            Ok(u) => users.push(u.username),
            Err(callhome_store::StoreError::NotFound(_)) => {
                return Err(ValidationError::new(
                    format!("users[{i}]"),
                    format!("no user named {name:?}"),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    users.sort();
    users.dedup();
    let known = state.store.list_api_keys().await?;
    let mut api_keys = Vec::with_capacity(req.api_keys.len());
    for (i, id) in req.api_keys.iter().enumerate() {
        if !known.iter().any(|k| k.id == *id) {
            return Err(ValidationError::new(
                format!("api_keys[{i}]"),
                format!("no API key with id {id}"),
            )
            .into());
        }
        api_keys.push(*id);
    }
    api_keys.sort();
    api_keys.dedup();
    let note = req
        .note
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if let Some(n) = &note {
        let len = n.chars().count();
        if len > MAX_NOTE || n.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "note",
                format!("must be at most {MAX_NOTE} characters without control characters"),
            )
            .into());
        }
    }
    let created = state
        .store
        .create_session_target(&NewSessionTarget {
            network,
            ports,
            users,
            api_keys,
            note,
            created_by: p.name.clone(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(format!(
            "session target {} {}:{}",
            created.id, created.network, created.ports
        ))),
        axum::Json(created.into()),
    ))
}

/// Removes an allowed target. Sessions already open stay open.
#[utoipa::path(
    delete, path = "/api/v1/session-targets/{id}", tag = "session-targets", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Entry id")),
    responses(
        (status = 200, description = "Removed", body = SessionTargetView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_session_target(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<
    (
        axum::extract::Extension<AuditTarget>,
        axum::Json<SessionTargetView>,
    ),
    ApiError,
> {
    p.require(Role::Admin)?;
    let removed = state.store.delete_session_target(id).await?;
    Ok((
        axum::extract::Extension(AuditTarget(format!(
            "session target {} {}:{}",
            removed.id, removed.network, removed.ports
        ))),
        axum::Json(removed.into()),
    ))
}
