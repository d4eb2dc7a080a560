//! `GET /api/v1/events`: platform events as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use callhome_core::{Imei, Role};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;

/// Which events to stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this device (IMEI).
    pub device: Option<String>,
    /// Only events of these types: comma-separated; a type ending in `.` or `.*` is a prefix
    /// (`command.*` = every command transition).
    #[param(example = "device.online,command.*")]
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

fn type_matches(filters: &[String], kind: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            match f
                .strip_suffix('*')
                .or_else(|| f.strip_suffix('.').map(|_| f.as_str()))
            {
                Some(prefix) => kind.starts_with(prefix),
                None => kind == f,
            }
        })
}

/// Streams events as they happen (`text/event-stream`): `device.online`, `device.offline`,
/// `command.queued`, `command.sent`, `command.succeeded`, `command.failed`,
/// `command.timed_out`, `command.retrying`, `command.cancelled`, `command.expired`,
/// `command.late_reply`, `status.received`. Each SSE message has `id`, `event` (the type)
/// and `data` (JSON: `id`, `type`, `imei`, `at`, `data`). A client that falls behind gets an
/// `events.lagged` message saying how many it missed.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    params(EventQuery),
    responses(
        (status = 200, description = "Event stream", content_type = "text/event-stream", body = String),
        (status = 422, description = "Invalid device", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The principal already holds as many event streams as `http.max_event_streams_per_principal` allows (default 8); the detail names the limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    p.require(Role::Reader)?;
    let device = q.device.as_deref().map(Imei::parse).transpose()?;
    let filters: Vec<String> = q
        .kind
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    // Held by the stream: given back when the client goes away.
    let slot = state.stream_limits.open_event_stream(p.id, &p.name)?;
    let revocation = state.streams.open(p.id);
    crate::auth::ensure_active(&state.store, &p).await?;
    let mut rx = state.gateway.events().subscribe();
    let shutdown = state.shutdown.clone();
    let stream = async_stream(move |tx| async move {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                // The user was disabled or the key revoked: the stream ends.
                () = revocation.cancelled() => return,
                r = rx.recv() => r,
            };
            match received {
                Ok(e) => {
                    if device.as_ref().is_some_and(|d| e.imei.as_ref() != Some(d))
                        || !type_matches(&filters, e.kind())
                    {
                        continue;
                    }
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    let ev = SseEvent::default()
                        .id(e.id.to_string())
                        .event(e.kind())
                        .data(data);
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let ev = SseEvent::default()
                        .event("events.lagged")
                        .data(serde_json::json!({"missed": n}).to_string());
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let stream = stream.map(move |item| {
        let _held = &slot;
        item
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream fed by a task through a small bounded channel: a slow client applies
/// backpressure to its own task only.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<SseEvent, Infallible>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_filters() {
        let f = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(super::type_matches(&[], "device.online"));
        assert!(super::type_matches(&f(&["command.*"]), "command.sent"));
        assert!(super::type_matches(&f(&["command."]), "command.sent"));
        assert!(!super::type_matches(&f(&["command.*"]), "device.online"));
        assert!(super::type_matches(
            &f(&["device.online", "status.received"]),
            "status.received"
        ));
        assert!(!super::type_matches(
            &f(&["device.online"]),
            "device.offline"
        ));
    }
}
