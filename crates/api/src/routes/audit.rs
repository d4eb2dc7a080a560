//! `GET /api/v1/audit`: the audit log, newest first. Admins only.

use axum::extract::State;
use callhome_core::Role;
use callhome_core::{ActorKind, AuditOutcome};
use callhome_store::{AuditEntry, AuditFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;
use crate::routes::paging;
use crate::time_format::rfc3339;

/// One audited call.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": 42, "at": "2026-11-21T10:00:00Z", "actor": "ops1", "actor_kind": "user",
    "action": "POST /api/v1/devices", "target": "490154203237518", "outcome": "success", "status": 201,
    "remote_addr": "10.0.0.5", "request_id": "5f0c..."}))]
pub struct AuditView {
    /// Increasing id.
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    /// User name, `apikey:<name>`, or `anonymous`.
    pub actor: String,
    /// What kind of principal acted.
    pub actor_kind: ActorKind,
    /// Method and route.
    pub action: String,
    /// What was acted on.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// HTTP status of the answer.
    pub status: Option<i64>,
    /// Extra detail.
    pub detail: Option<serde_json::Value>,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Request id (also in the `x-request-id` response header and the logs).
    pub request_id: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: rfc3339(e.at),
            actor: e.actor,
            actor_kind: e.actor_kind,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            status: e.status,
            detail: e.detail.and_then(|d| serde_json::from_str(&d).ok()),
            remote_addr: e.remote_addr,
            request_id: e.request_id,
        }
    }
}

/// Filters and paging for the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditView>,
    /// Pass as `cursor` for older entries; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Reads the audit log.
#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditPage),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_audit(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    p.require(Role::Admin)?;
    let limit = paging::limit(q.limit)?;
    let before = paging::cursor::<i64>(q.cursor.as_deref())?;
    let page = state
        .store
        .list_audit(&AuditFilter {
            actor: q.actor,
            target: q.target,
            before,
            limit,
        })
        .await?;
    Ok(axum::Json(AuditPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}
