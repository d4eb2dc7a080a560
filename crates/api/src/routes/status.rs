//! Device status: `GET /api/v1/devices/{imei}/status` and `.../status/history`.

use axum::extract::State;
use base64::Engine as _;
use callhome_core::{Role, ValidationError};
use callhome_store::StatusRecord;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::routes::paging;
use crate::time_format::rfc3339;

/// A status message from a device.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": 17, "received_at": "2026-11-21T10:00:00Z", "topic": "490154203237518/dns",
    "payload": "{\"ip\":\"10.64.1.7\",\"csq\":20}", "fields": {"ip": "10.64.1.7", "csq": 20}}))]
pub struct StatusView {
    /// Increasing id.
    pub id: i64,
    /// RFC 3339.
    pub received_at: String,
    /// Topic it came on.
    pub topic: String,
    /// The payload as text, when it is UTF-8.
    pub payload: Option<String>,
    /// The payload in base64, when it is not UTF-8.
    pub payload_base64: Option<String>,
    /// Parsed fields, when the payload was JSON or `key=value` text.
    pub fields: Option<serde_json::Value>,
}

impl From<StatusRecord> for StatusView {
    fn from(s: StatusRecord) -> Self {
        let (payload, payload_base64) = match String::from_utf8(s.payload) {
            Ok(t) => (Some(t), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
            ),
        };
        Self {
            id: s.id,
            received_at: rfc3339(s.received_at),
            topic: s.topic,
            payload,
            payload_base64,
            fields: s.parsed.and_then(|p| serde_json::from_str(&p).ok()),
        }
    }
}

/// Filters and paging for status history.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// RFC 3339: only messages received at or after this.
    pub since: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One page of status history.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusPage {
    /// Newest first.
    pub items: Vec<StatusView>,
    /// Pass as `cursor` for older messages; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The latest status message of a device.
#[utoipa::path(
    get, path = "/api/v1/devices/{imei}/status", tag = "status", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "Latest status", body = StatusView),
        (status = 404, description = "Device not registered, or no status received yet", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn latest(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<StatusView>, ApiError> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    state.store.get_device(&imei).await?;
    let s = state
        .store
        .latest_status(&imei)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no status received from {imei} yet")))?;
    Ok(axum::Json(s.into()))
}

/// A device's status history, newest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{imei}/status/history", tag = "status", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518"), HistoryQuery),
    responses(
        (status = 200, description = "A page of status messages", body = StatusPage),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid since or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<axum::Json<StatusPage>, ApiError> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    state.store.get_device(&imei).await?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|e| ValidationError::new("since", format!("not an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let limit = paging::limit(q.limit)?;
    let before = paging::cursor::<i64>(q.cursor.as_deref())?;
    let page = state
        .store
        .status_history(&imei, since, before, limit)
        .await?;
    Ok(axum::Json(StatusPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}
