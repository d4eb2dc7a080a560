//! The middleware every request passes: authentication, HTTP metrics, and the audit row for
//! state-changing calls.
//!
//! A handler can enrich the audit row by putting [`AuditTarget`], [`AuditActor`] or
//! [`AuditDetail`] in its response's extensions.

use callhome_core::{ActorKind, AuditOutcome};
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use callhome_store::NewAuditEntry;
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::{Principal, authenticate};
use crate::error::ApiError;

/// The object a call acted on (an IMEI, a serial, a user name), for the audit row.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// Who acted, when the caller was not authenticated yet (the token endpoint's user name).
#[derive(Debug, Clone)]
pub struct AuditActor(pub String);

/// Extra JSON detail for the audit row (never secrets).
#[derive(Debug, Clone)]
pub struct AuditDetail(pub serde_json::Value);

/// Set by a handler whose refusal is counted in a metric instead of one audit row each
/// (e.g. a throttled login); the reason is the `reason` label of
/// `callhome_audit_skipped_total`.
#[derive(Debug, Clone, Copy)]
pub struct SkipAudit(pub &'static str);

/// Longest actor kept in an audit row, in characters.
pub const MAX_ACTOR: usize = 128;
/// Longest target kept in an audit row, in characters.
pub const MAX_TARGET: usize = 256;
/// Longest action (method and route, or path) kept in an audit row, in characters.
pub const MAX_ACTION: usize = 256;
/// Longest client `x-request-id` accepted; a longer one is replaced by a generated id.
pub const MAX_REQUEST_ID: usize = 64;

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) if text.chars().count() > max => format!("{}…", &text[..i]),
        _ => text.to_owned(),
    }
}

/// Whether a client's `x-request-id` is kept: 1 to 64 characters, each a letter, digit or
/// one of `-_.:`. Anything else is replaced by a generated id (also in the echoed header),
/// so a client cannot make the audit log, the logs or responses carry arbitrary text.
pub fn acceptable_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops an unacceptable client `x-request-id` (see [`acceptable_request_id`]) so that the
/// request-id layer generates one instead. Runs before every other layer.
pub async fn sanitize_request_id(mut req: Request) -> Request {
    let bad = req
        .headers()
        .get_all("x-request-id")
        .iter()
        .enumerate()
        .any(|(i, v)| i > 0 || !acceptable_request_id(v.as_bytes()));
    if bad {
        req.headers_mut().remove("x-request-id");
        metrics::counter!("callhome_http_request_ids_replaced_total").increment(1);
    }
    req
}

fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let malformed =
        || ApiError::Unauthorized("the Authorization header must be \"Bearer <token>\"".to_owned());
    let Ok(text) = value.to_str() else {
        return Some(Err(malformed()));
    };
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Some(Ok(token.trim()))
        }
        _ => Some(Err(malformed())),
    }
}

/// Longest a non-streaming request may take (a `wait_s` of up to 60 s fits).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// Streams (SSE, WebSocket) run as long as their client stays.
fn is_stream(path: &str) -> bool {
    path == "/api/v1/events" || path.ends_with("/stream")
}

fn is_state_changing(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Authenticates the caller, runs the handler, records metrics and (for state-changing
/// methods) an audit row, whatever the outcome.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let mut principal: Option<Principal> = None;
    let early: Option<ApiError> = match bearer(req.headers()) {
        None => None,
        // One-time session tokens are checked by the session stream handler itself.
        Some(Ok(credential)) if credential.starts_with(callhome_tunnel::SESSION_TOKEN_PREFIX) => {
            None
        }
        // The metrics token (`http.metrics_token`) is checked by the metrics handler.
        Some(_) if path == "/metrics" => None,
        Some(Err(e)) => Some(e),
        Some(Ok(credential)) => match authenticate(&state.store, &state.tokens, credential).await {
            Ok(p) => {
                principal = Some(p);
                None
            }
            Err(e) => Some(e),
        },
    };
    let response = match early {
        Some(e) => e.into_response(),
        None => {
            if let Some(p) = &principal {
                req.extensions_mut().insert(p.clone());
            }
            if is_stream(&path) {
                next.run(req).await
            } else {
                match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
                    Ok(r) => r,
                    Err(_) => ApiError::Unavailable(format!(
                        "the request took longer than {} s",
                        REQUEST_TIMEOUT.as_secs()
                    ))
                    .into_response(),
                }
            }
        }
    };

    let status = response.status();
    let route_label = route.clone().unwrap_or_else(|| "unmatched".to_owned());
    metrics::counter!(
        "callhome_http_requests_total",
        "method" => method.to_string(),
        "route" => route_label.clone(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!(
        "callhome_http_request_duration_seconds",
        "method" => method.to_string(),
        "route" => route_label
    )
    .record(started.elapsed().as_secs_f64());

    let ext = response.extensions();
    // Anonymous calls are audited only when the handler names the actor (the token
    // endpoint): an unauthenticated request to an unknown route, or one refused for want of
    // credentials, is counted, not written, so anonymous traffic cannot fill the audit log.
    let skip = match (ext.get::<SkipAudit>(), &principal, ext.get::<AuditActor>()) {
        (Some(s), ..) => Some(s.0),
        (None, None, None) if route.is_none() => Some("unmatched_anonymous"),
        (None, None, None) => Some("unauthenticated"),
        _ => None,
    };
    if let (true, Some(reason)) = (is_state_changing(&method), skip) {
        metrics::counter!("callhome_audit_skipped_total", "reason" => reason).increment(1);
    } else if is_state_changing(&method) {
        let (actor, actor_kind) = match (&principal, ext.get::<AuditActor>()) {
            (Some(p), _) => (p.name.clone(), ActorKind::from(p.kind)),
            (None, Some(a)) => (clip(&a.0, MAX_ACTOR), ActorKind::Anonymous),
            (None, None) => ("anonymous".to_owned(), ActorKind::Anonymous),
        };
        let target = ext
            .get::<AuditTarget>()
            .map(|t| t.0.clone())
            .or_else(|| (route.as_deref() != Some(path.as_str())).then(|| path.clone()))
            .map(|t| clip(&t, MAX_TARGET));
        let entry = NewAuditEntry {
            at: OffsetDateTime::now_utc(),
            actor: clip(&actor, MAX_ACTOR),
            actor_kind,
            action: clip(
                &format!("{method} {}", route.as_deref().unwrap_or(&path)),
                MAX_ACTION,
            ),
            target,
            outcome: if status.is_success() || status.is_redirection() {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failure
            },
            status: Some(i64::from(status.as_u16())),
            detail: ext.get::<AuditDetail>().map(|d| d.0.to_string()),
            remote_addr: remote,
            request_id: request_id.map(|r| clip(&r, MAX_REQUEST_ID)),
        };
        if let Err(e) = state.store.append_audit(&entry).await {
            metrics::counter!("callhome_audit_write_failures_total").increment(1);
            tracing::error!(error = %e, action = %entry.action, "could not write audit row");
        }
    }
    response
}

/// The response for a handler that panicked: a 500 problem, never a dropped connection.
pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    metrics::counter!("callhome_http_panics_total").increment(1);
    ApiError::Internal("handler panicked".to_owned()).into_response()
}
