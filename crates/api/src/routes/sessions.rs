//! Meter-reading sessions: `POST/GET /api/v1/devices/{imei}/sessions`,
//! `GET/DELETE /api/v1/sessions/{id}`, and the reader's WebSocket
//! `GET /api/v1/sessions/{id}/stream`.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callhome_core::{CloseReason, SessionMode, SessionState};
use callhome_core::{Role, ValidationError};
use callhome_store::SessionRecord;
use callhome_tunnel::{Mode, OpenRequest, Opener, SESSION_TOKEN_PREFIX};
use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{MaybePrincipal, Principal};
use crate::context::{AuditActor, AuditTarget};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::routes::paging;
use crate::time_format::{rfc3339, rfc3339_opt};

/// A meter-reading session.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0193a5f2-7c1e-7b31-9e4a-3f1d2c4b5a69", "imei": "490154203237518", "mode": "rendezvous",
    "state": "active", "host": "callhome.example.net", "port": 7443, "timeout_s": 120, "pairing_timeout_s": 60,
    "forward_id": false, "created_by": "reading-centre", "created_at": "2026-11-21T10:00:00Z",
    "bytes_from_modem": 1520, "bytes_to_modem": 64}))]
pub struct SessionView {
    /// Session id.
    pub id: Uuid,
    /// Device.
    pub imei: String,
    /// How the modem reaches the reader.
    pub mode: SessionMode,
    /// Where the session is.
    pub state: SessionState,
    /// Why it closed.
    pub close_reason: Option<CloseReason>,
    /// Detail of a failure.
    pub error: Option<String>,
    /// Where the modem was told to connect (direct: the address a host name resolved to).
    pub host: String,
    /// Direct sessions: the host name as given, when it was resolved to `host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_host: Option<String>,
    /// Port the modem was told to connect to.
    pub port: i64,
    /// Idle timeout, seconds.
    pub timeout_s: i64,
    /// Rendezvous: seconds the modem and the reader have to meet.
    pub pairing_timeout_s: i64,
    /// Whether the modem's ID bytes are passed on to the reader.
    pub forward_id: bool,
    /// The TEMPORALCLIENT command (see `/api/v1/commands/{id}`).
    pub command_id: Option<Uuid>,
    /// Who asked.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub modem_connected_at: Option<String>,
    /// RFC 3339.
    pub reader_connected_at: Option<String>,
    /// RFC 3339.
    pub active_at: Option<String>,
    /// RFC 3339.
    pub closed_at: Option<String>,
    /// The modem's address on the tunnel listener.
    pub modem_addr: Option<String>,
    /// The reader's address.
    pub reader_addr: Option<String>,
    /// Bytes from the meter to the reader (without the ID preamble).
    pub bytes_from_modem: i64,
    /// Bytes from the reader to the meter.
    pub bytes_to_modem: i64,
}

impl From<SessionRecord> for SessionView {
    fn from(s: SessionRecord) -> Self {
        Self {
            id: s.id,
            imei: s.imei.to_string(),
            mode: s.mode,
            state: s.state,
            close_reason: s.close_reason,
            error: s.error,
            host: s.host,
            requested_host: s.requested_host,
            port: s.port,
            timeout_s: s.timeout_s,
            pairing_timeout_s: s.pairing_timeout_s,
            forward_id: s.forward_id,
            command_id: s.command_id,
            created_by: s.created_by,
            created_at: rfc3339(s.created_at),
            modem_connected_at: rfc3339_opt(s.modem_connected_at),
            reader_connected_at: rfc3339_opt(s.reader_connected_at),
            active_at: rfc3339_opt(s.active_at),
            closed_at: rfc3339_opt(s.closed_at),
            modem_addr: s.modem_addr,
            reader_addr: s.reader_addr,
            bytes_from_modem: s.bytes_from_modem,
            bytes_to_modem: s.bytes_to_modem,
        }
    }
}

/// A session to open.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mode": "rendezvous", "timeout_s": 120}))]
pub struct CreateSession {
    /// `direct`: the modem connects to `host:port`, the reading platform's own TLS server
    /// (which must require client certificates from Callhome's CA). `rendezvous`: the modem
    /// connects to Callhome and the reader joins through the stream endpoint.
    pub mode: String,
    /// Direct mode: the reading platform's IP address or host name. A name is resolved when
    /// the session is opened and the modem is sent the address (never the name), so a later
    /// DNS answer cannot redirect it. The address and port must be allowed by a session
    /// target (`/api/v1/session-targets`) for the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Direct mode: its TCP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Idle timeout in seconds (default 120; at most the server's cap, setting
    /// `tunnel.max_session_timeout_s`, default 600): the socket closes after this long without
    /// traffic either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Rendezvous: seconds the modem and the reader have to meet (5-3600, default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairing_timeout_s: Option<u32>,
    /// Rendezvous: pass the modem's `MTX_IDClient` bytes on to the reader first
    /// (default false: they are checked and dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_id: Option<bool>,
}

/// How the reader joins a rendezvous session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReaderAccess {
    /// One-time token: `GET stream_path?token=...` or `Authorization: Bearer <token>`.
    /// Shown once.
    pub token: String,
    /// WebSocket endpoint; binary frames carry the meter's bytes both ways.
    #[schema(example = "/api/v1/sessions/0193a5f2-7c1e-7b31-9e4a-3f1d2c4b5a69/stream")]
    pub stream_path: String,
}

/// A newly opened session.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSession {
    /// The session.
    #[serde(flatten)]
    pub session: SessionView,
    /// Rendezvous only: how the reader connects.
    pub reader: Option<ReaderAccess>,
}

/// Paging for a device's sessions.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// Newest first.
    pub items: Vec<SessionView>,
    /// Pass as `cursor` for older sessions; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The reader's credential for the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The one-time session token (instead of a bearer access token or API key).
    pub token: Option<String>,
}

/// Opens a meter-reading session: Callhome sends `AT^MTXTUNNEL=TEMPORALCLIENT,<host>,<port>,<timeout>`
/// over the device's command channel and the session follows the command. One open session
/// per device. Direct sessions go only to targets an admin allowed
/// (`/api/v1/session-targets`); loopback, link-local, multicast, unspecified and cloud
/// metadata addresses only when an entry lists them explicitly. The session belongs to the
/// caller: only it (or an operator or admin, or the holder of the one-time token) may attach
/// to it or close it.
#[utoipa::path(
    post, path = "/api/v1/devices/{imei}/sessions", tag = "sessions", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = CreateSession,
    responses(
        (status = 201, description = "Requested", body = CreatedSession),
        (status = 403, description = "The direct target is not allowed for the caller (the detail says why); nothing is queued", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device has an open session (its id is in the detail), or is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid mode, host, port or timeout (a timeout over the cap names the cap), or a host name that does not resolve", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The device's command queue is full (the detail names the limit)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_session(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSession>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<CreatedSession>,
    ),
    ApiError,
> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    let mode = match req.mode.as_str() {
        "direct" => {
            let host = req
                .host
                .clone()
                .ok_or_else(|| ValidationError::new("host", "required in direct mode"))?;
            let port = req
                .port
                .ok_or_else(|| ValidationError::new("port", "required in direct mode"))?;
            if port == 0 {
                return Err(ValidationError::new("port", "must be 1-65535").into());
            }
            Mode::Direct { host, port }
        }
        "rendezvous" => {
            if req.host.is_some() || req.port.is_some() {
                return Err(ValidationError::new(
                    "host",
                    "not used in rendezvous mode: the modem connects to Callhome",
                )
                .into());
            }
            Mode::Rendezvous
        }
        other => {
            return Err(ValidationError::new(
                "mode",
                format!("must be direct or rendezvous, got {other:?}"),
            )
            .into());
        }
    };
    let opened = state
        .tunnel
        .open(OpenRequest {
            imei: imei.clone(),
            mode,
            timeout_s: req.timeout_s.unwrap_or(120),
            pairing_timeout_s: req.pairing_timeout_s.unwrap_or(60),
            forward_id: req.forward_id.unwrap_or(false),
            by: Opener {
                id: p.id,
                kind: p.kind.into(),
                name: p.name.clone(),
            },
        })
        .await?;
    let id = opened.session.id;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(format!("{imei} session {id}"))),
        axum::Json(CreatedSession {
            session: opened.session.into(),
            reader: opened.reader_token.map(|token| ReaderAccess {
                token,
                stream_path: format!("/api/v1/sessions/{id}/stream"),
            }),
        }),
    ))
}

/// One session.
#[utoipa::path(
    get, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_session(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<SessionView>, ApiError> {
    p.require(Role::Reader)?;
    Ok(axum::Json(state.store.get_session(id).await?.into()))
}

/// Whether `p` opened session `s` (sessions from before ownership was recorded: by name).
fn opened_by(s: &SessionRecord, p: &Principal) -> bool {
    match s.created_by_id {
        Some(id) => id == p.id,
        None => s.created_by == p.name,
    }
}

/// The one-time token from `?token=` or `Authorization: Bearer chs_...`.
fn session_token(query: Option<String>, headers: &HeaderMap) -> Option<String> {
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .filter(|t| t.starts_with(SESSION_TOKEN_PREFIX))
        .map(str::to_owned);
    query.or(header_token)
}

fn not_yours(s: &SessionRecord) -> ApiError {
    ApiError::Forbidden(format!(
        "session {} was opened by {}; only it, an operator or an admin, or the holder of the session's one-time token may use it",
        s.id, s.created_by
    ))
}

/// Closes a session (reason `cancelled`); an active splice ends at once, and a
/// TEMPORALCLIENT still queued is cancelled (the modem will not dial). Allowed to the
/// principal that opened the session, to operators and admins, and with the session's
/// one-time token (`?token=` or `Authorization: Bearer chs_...`, used or not).
#[utoipa::path(
    delete, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Session id"), StreamQuery),
    responses(
        (status = 200, description = "Closed (or already closed)", body = SessionView),
        (status = 401, description = "No credential, or a wrong session token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The session was opened by another reader", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_session(
    State(state): State<AppState>,
    MaybePrincipal(principal): MaybePrincipal,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = state.store.get_session(id).await?;
    let token = session_token(q.token, &headers);
    let mut actor = None;
    match (&principal, token) {
        (Some(p), _) if opened_by(&session, p) || p.role.allows(Role::Operator) => {
            p.require(Role::Reader)?;
        }
        (_, Some(t)) => {
            if !state.tunnel.token_matches(id, &t).await? {
                return Err(match &principal {
                    Some(_) => not_yours(&session),
                    None => ApiError::Unauthorized(
                        "the session token is not valid for this session".to_owned(),
                    ),
                });
            }
            actor = Some(format!("session-token:{id}"));
        }
        (Some(_), None) => return Err(not_yours(&session)),
        (None, None) => {
            return Err(ApiError::Unauthorized(
                "a bearer token, an API key or the session's one-time token is required".to_owned(),
            ));
        }
    }
    state.tunnel.close(id, CloseReason::Cancelled, None).await;
    // An active splice records its end (with byte counts) as it stops.
    let mut closed = state.store.get_session(id).await?;
    for _ in 0..50 {
        if closed.state == callhome_store::SessionState::Closed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        closed = state.store.get_session(id).await?;
    }
    let target = AuditTarget(format!("{} session {id}", closed.imei));
    let view = axum::Json(SessionView::from(closed));
    Ok(match actor {
        Some(a) => (
            axum::extract::Extension(target),
            axum::extract::Extension(AuditActor(a)),
            view,
        )
            .into_response(),
        None => (axum::extract::Extension(target), view).into_response(),
    })
}

/// A device's sessions, newest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{imei}/sessions", tag = "sessions", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518"), SessionQuery),
    responses(
        (status = 200, description = "A page of sessions", body = SessionPage),
        (status = 422, description = "Invalid IMEI", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiQuery(q): ApiQuery<SessionQuery>,
) -> Result<axum::Json<SessionPage>, ApiError> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    let limit = paging::limit(q.limit)?;
    let before = paging::cursor::<Uuid>(q.cursor.as_deref())?;
    let page = state.store.list_sessions(&imei, before, limit).await?;
    Ok(axum::Json(SessionPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}

/// The reader's end of a rendezvous session, as a WebSocket: binary frames carry the
/// meter's bytes both ways. Authenticate with the session's one-time token (`?token=` or
/// `Authorization: Bearer chs_...`), or as the principal that opened the session (bearer
/// access token or API key); operators and admins may attach to any session, and that is
/// audited. Closing the WebSocket closes the session (`reader_closed`); the session ending
/// closes the WebSocket, and so does disabling the user or revoking the key it belongs to.
#[utoipa::path(
    get, path = "/api/v1/sessions/{id}/stream", tag = "sessions",
    params(("id" = Uuid, Path, description = "Session id"), StreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No, wrong or used token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The session was opened by another reader", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session is not waiting for a reader", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    MaybePrincipal(principal): MaybePrincipal,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Refuse a request that is not a WebSocket upgrade before a one-time token is spent.
    let ws = ws.map_err(|e| {
        ApiError::bad_request(
            "not-a-websocket",
            format!("expected a WebSocket upgrade: {}", e.body_text()),
        )
    })?;
    let session = state.store.get_session(id).await?;
    // Whose stream this is (ended when that user is disabled or that key revoked), and the
    // operator or admin attaching to another principal's session (audited).
    let (owner, privileged) = match (principal, session_token(q.token, &headers)) {
        (Some(p), _) if opened_by(&session, &p) => {
            p.require(Role::Reader)?;
            (Some(p.id), None)
        }
        (Some(p), _) if p.role.allows(Role::Operator) => (Some(p.id), Some(p)),
        (principal, Some(token)) => {
            state.tunnel.consume_token(id, &token).await?;
            (principal.map(|p| p.id).or(session.created_by_id), None)
        }
        (Some(_), None) => return Err(not_yours(&session)),
        (None, None) => {
            return Err(ApiError::Unauthorized(
                "a bearer token, an API key or the session's one-time token is required".to_owned(),
            ));
        }
    };
    let guard = owner.map(|o| state.streams.open(o));
    if let Some(p) = &privileged {
        crate::auth::ensure_active(&state.store, p).await?;
    }
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let addr = remote.to_string();
    state
        .tunnel
        .attach_reader(id, Box::new(ours), addr.clone())
        .await?;
    if let Some(p) = privileged {
        audit_privileged_attach(&state, &p, &session, &headers, remote.ip().to_string()).await;
    }
    // Frames and messages share one limit: a frame over it is refused from its header,
    // before its payload is buffered, and the socket closed with 1009.
    let max = state.stream_limits.ws_max_message_bytes;
    Ok(ws
        .max_frame_size(max)
        .max_message_size(max)
        .on_upgrade(move |socket| pump(socket, theirs, guard, max))
        .into_response())
}

/// Writes the audit row of an operator or admin attaching to another principal's session
/// (the middleware audits only state-changing methods).
async fn audit_privileged_attach(
    state: &AppState,
    p: &Principal,
    session: &SessionRecord,
    headers: &HeaderMap,
    remote: String,
) {
    let entry = callhome_store::NewAuditEntry {
        at: time::OffsetDateTime::now_utc(),
        actor: p.name.clone(),
        actor_kind: p.kind.into(),
        action: "GET /api/v1/sessions/{id}/stream".to_owned(),
        target: Some(format!("{} session {}", session.imei, session.id)),
        outcome: callhome_core::AuditOutcome::Success,
        status: Some(101),
        detail: Some(
            serde_json::json!({
                "attached_to_session_of": session.created_by,
                "as_role": p.role.as_str(),
            })
            .to_string(),
        ),
        remote_addr: Some(remote),
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(64).collect()),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        metrics::counter!("callhome_audit_write_failures_total").increment(1);
        tracing::error!(error = %e, "could not write the audit row of a session attach");
    }
}

/// Moves bytes between the WebSocket and the tunnel's end of the duplex pipe, until either
/// ends or `guard` (the owner's credentials) is cancelled. A frame or message over `max`
/// bytes ends the socket with close code 1009 (message too big).
async fn pump(
    socket: WebSocket,
    pipe: tokio::io::DuplexStream,
    guard: Option<crate::streams::StreamGuard>,
    max: usize,
) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(pipe);
    let end = {
        let to_tunnel = async {
            let mut too_big = None;
            while let Some(msg) = ws_rx.next().await {
                let data = match msg {
                    Ok(Message::Binary(b)) => b,
                    Ok(Message::Text(t)) => t.as_bytes().to_vec().into(),
                    Ok(Message::Close(_)) => break,
                    Err(e) => {
                        too_big = message_too_long(e, max);
                        break;
                    }
                    Ok(_) => continue,
                };
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            too_big
        };
        let from_tunnel = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if ws_tx
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = ws_tx.send(Message::Close(None)).await;
        };
        let revoked = async {
            match &guard {
                Some(g) => g.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            too_big = to_tunnel => too_big.map(|r| (axum::extract::ws::close_code::SIZE, r)),
            () = from_tunnel => None,
            () = revoked => Some((
                axum::extract::ws::close_code::POLICY,
                "credentials disabled or revoked".to_owned(),
            )),
        }
    };
    // A frame over the limit (1009), or the owner disabled or its key revoked (1008): say
    // why, and close. Dropping the pipe ends the session (`reader_closed`).
    if let Some((code, reason)) = end {
        let _ = ws_tx
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
}

/// The close reason for a frame or message over the limit, if `e` is that.
fn message_too_long(e: axum::Error, max: usize) -> Option<String> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    match e.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            metrics::counter!("callhome_http_rejected_total", "reason" => "ws_message_too_big")
                .increment(1);
            tracing::info!(size, limit = max, "WebSocket frame over the limit; closing");
            Some(format!("frame of {size} bytes over the {max}-byte limit"))
        }
        _ => None,
    }
}
