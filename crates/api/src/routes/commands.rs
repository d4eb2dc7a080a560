//! The AT command queue: `POST/GET /api/v1/devices/{imei}/commands`,
//! `GET/DELETE /api/v1/commands/{id}`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::{AtCommand, Role, ValidationError};
use callhome_gateway::CommandRequest;
use callhome_store::{CommandFilter, CommandRecord, CommandState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::routes::paging;
use crate::time_format::{rfc3339, rfc3339_opt};

/// An AT command and what became of it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0193a5f2-7c1e-7b31-9e4a-3f1d2c4b5a69", "imei": "490154203237518",
    "command": "AT+CSQ", "state": "succeeded", "created_at": "2026-11-21T10:00:00Z", "created_by": "ops1",
    "timeout_s": 30.0, "expires_at": "2026-11-22T10:00:00Z", "max_attempts": 1, "attempts": 1,
    "sent_at": "2026-11-21T10:00:00Z", "completed_at": "2026-11-21T10:00:01Z",
    "reply": "+CSQ: 20,99\r\n\r\nOK\r\n", "result": "OK"}))]
pub struct CommandView {
    /// Command id.
    pub id: Uuid,
    /// Device.
    pub imei: String,
    /// The AT command.
    pub command: String,
    /// Where the command is in its life.
    pub state: CommandState,
    /// RFC 3339.
    pub created_at: String,
    /// Who queued it.
    pub created_by: String,
    /// Reply timeout per attempt, seconds.
    pub timeout_s: f64,
    /// RFC 3339: a command not delivered by then expires.
    pub expires_at: String,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Times sent (more than 1 means it was re-sent after a timeout).
    pub attempts: i64,
    /// RFC 3339: last sent.
    pub sent_at: Option<String>,
    /// RFC 3339: reached its final state.
    pub completed_at: Option<String>,
    /// The modem's reply text.
    pub reply: Option<String>,
    /// The final result line: `OK`, `ERROR`, `+CME ERROR: 10`, ...
    pub result: Option<String>,
    /// Why it failed, timed out or expired.
    pub error: Option<String>,
    /// A reply that came after the command timed out (never matched to another command).
    pub late_reply: Option<String>,
    /// RFC 3339.
    pub late_reply_at: Option<String>,
}

impl From<CommandRecord> for CommandView {
    fn from(c: CommandRecord) -> Self {
        Self {
            id: c.id,
            imei: c.imei.to_string(),
            command: callhome_core::secrets::redact_command(&c.command).into_owned(),
            state: c.state,
            created_at: rfc3339(c.created_at),
            created_by: c.created_by,
            timeout_s: c.timeout_ms as f64 / 1000.0,
            expires_at: rfc3339(c.expires_at),
            max_attempts: c.max_attempts,
            attempts: c.attempts,
            sent_at: rfc3339_opt(c.sent_at),
            completed_at: rfc3339_opt(c.completed_at),
            reply: c
                .reply
                .map(|r| callhome_core::secrets::redact_reply_for(&c.command, &r).into_owned()),
            result: c.result,
            error: c.error,
            late_reply: c
                .late_reply
                .map(|r| callhome_core::secrets::redact_reply_for(&c.command, &r).into_owned()),
            late_reply_at: rfc3339_opt(c.late_reply_at),
        }
    }
}

/// A command to queue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"command": "AT+CSQ", "timeout_s": 30, "expires_in_s": 86400}))]
pub struct CreateCommand {
    /// The AT command: printable ASCII, starting with `AT`, no CR/LF, at most 512 bytes.
    pub command: String,
    /// Seconds to wait for the reply once sent (1-600, default 30).
    pub timeout_s: Option<u32>,
    /// Seconds the command may wait in the queue, e.g. while the modem is offline
    /// (1-2592000, default 86400).
    pub expires_in_s: Option<u32>,
    /// Times to send it if no reply comes in time (1-5, default 1: never re-sent).
    pub max_attempts: Option<u32>,
}

/// Optional wait for the final state.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this many seconds (0-60) for the command to finish before answering.
    pub wait_s: Option<u32>,
}

/// Filters and paging for a device's commands.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommandQuery {
    /// Only commands in this state.
    pub state: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One page of commands.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandPage {
    /// Newest first.
    pub items: Vec<CommandView>,
    /// Pass as `cursor` for older commands; absent on the last page.
    pub next_cursor: Option<String>,
}

fn range(field: &str, v: Option<u32>, default: u32, lo: u32, hi: u32) -> Result<u32, ApiError> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(ValidationError::new(field, format!("must be between {lo} and {hi}")).into());
    }
    Ok(v)
}

/// Queues an AT command for a device. It is sent when the device is connected and every
/// earlier command of the device has finished. Answers 202 while the command is not
/// finished, 200 when it finished within `wait_s`.
#[utoipa::path(
    post, path = "/api/v1/devices/{imei}/commands", tag = "commands", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518"), WaitQuery),
    request_body = CreateCommand,
    responses(
        (status = 200, description = "Finished within wait_s", body = CommandView),
        (status = 202, description = "Queued or in flight", body = CommandView),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Device disabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid command or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The device's command queue is full (the detail names the limit, setting mqtt.max_queued_commands)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_command(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiQuery(wait): ApiQuery<WaitQuery>,
    ApiJson(req): ApiJson<CreateCommand>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<CommandView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let command = AtCommand::parse(&req.command)?;
    let timeout_s = range("timeout_s", req.timeout_s, 30, 1, 600)?;
    let expires_in_s = range("expires_in_s", req.expires_in_s, 86_400, 1, 2_592_000)?;
    let max_attempts = range("max_attempts", req.max_attempts, 1, 1, 5)?;
    let wait_s = range("wait_s", wait.wait_s, 0, 0, 60)?;
    let rec = state
        .gateway
        .enqueue(CommandRequest {
            imei: imei.clone(),
            command,
            timeout: Duration::from_secs(u64::from(timeout_s)),
            expires_in: Duration::from_secs(u64::from(expires_in_s)),
            max_attempts,
            created_by: p.name.clone(),
        })
        .await?;
    let rec = if wait_s > 0 {
        state
            .gateway
            .wait_final(rec.id, Duration::from_secs(u64::from(wait_s)))
            .await?
    } else {
        rec
    };
    let status = if rec.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        axum::extract::Extension(AuditTarget(format!("{imei} command {}", rec.id))),
        axum::Json(rec.into()),
    ))
}

/// A command by id; `wait_s` waits for its final state.
#[utoipa::path(
    get, path = "/api/v1/commands/{id}", tag = "commands", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Command id"), WaitQuery),
    responses(
        (status = 200, description = "The command", body = CommandView),
        (status = 404, description = "No such command", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_command(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(wait): ApiQuery<WaitQuery>,
) -> Result<axum::Json<CommandView>, ApiError> {
    p.require(Role::Operator)?;
    let wait_s = range("wait_s", wait.wait_s, 0, 0, 60)?;
    let rec = if wait_s > 0 {
        state
            .gateway
            .wait_final(id, Duration::from_secs(u64::from(wait_s)))
            .await?
    } else {
        state.store.get_command(id).await?
    };
    Ok(axum::Json(rec.into()))
}

/// Cancels a queued command (one already sent cannot be called back).
#[utoipa::path(
    delete, path = "/api/v1/commands/{id}", tag = "commands", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Command id")),
    responses(
        (status = 200, description = "Cancelled", body = CommandView),
        (status = 404, description = "No such command", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not queued any more", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_command(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<CommandView>, ApiError> {
    p.require(Role::Operator)?;
    Ok(axum::Json(state.gateway.cancel(id).await?.into()))
}

/// A device's commands, newest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{imei}/commands", tag = "commands", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518"), CommandQuery),
    responses(
        (status = 200, description = "A page of commands", body = CommandPage),
        (status = 422, description = "Invalid IMEI or state", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_device_commands(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
) -> Result<axum::Json<CommandPage>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let limit = paging::limit(q.limit)?;
    let states = match q.state.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => vec![CommandState::parse(s)?],
    };
    let before = paging::cursor::<Uuid>(q.cursor.as_deref())?;
    let page = state
        .store
        .list_commands(&CommandFilter {
            imei: Some(imei.to_string()),
            states,
            before,
            created_by: None,
            limit,
        })
        .await?;
    Ok(axum::Json(CommandPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}
