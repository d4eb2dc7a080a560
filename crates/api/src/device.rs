//! Routes of the device-facing HTTPS listener (port 8443; served by
//! `callhome-devicehttp`, which puts the client certificate's IMEI in each request):
//!
//! - `GET /fw/{token}`: a firmware campaign's file for one execution: RFC 9110 `Range` and
//!   `If-Range`, `ETag` (the SHA-256), `Accept-Ranges`, 416 for a range past the end; a cap
//!   on concurrent downloads that queues (never refuses); bytes served, resumptions and
//!   completion recorded per execution.
//! - `GET /fw/{token}/jad`: a MIDlet's descriptor for OTAP, its `MIDlet-Jar-URL` and
//!   `MIDlet-Install-Notify` pointing at this token.
//! - `POST /fw/{token}/notify`: the modem's JSR-118 install status.
//! - `/.well-known/est/...`: EST enrolment (RFC 7030), see [`crate::est`].
//! - `GET /crl/{key id}.crl`: the CRL of the issuing CA with that key identifier (DER, with
//!   its issuing distribution point): the CRL distribution point named in device
//!   certificates, which external brokers fetch.
//!
//! A token is random, per device and per execution attempt, short-lived, and only good
//! for the device it was made for: another device's certificate is refused (403), an
//! expired token or one whose execution has ended is gone (410). Every refusal is
//! problem+json naming the reason.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use callhome_core::firmware::{ExecEventKind, FirmwareKind};
use callhome_core::otap::{InstallStatus, Jad};
use callhome_devicehttp::{Activity, DevicePeer};
use callhome_firmware::{BlobStore, ByteStream, Digest, RangeAnswer};
use callhome_fleet::firmware::{file_url, notify_url, token_hash};
use callhome_store::{DownloadProgress, DownloadRecord, FirmwareRecord, Store, StoreError};
use futures::Stream;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Longest token accepted in a URL (ours are 43 characters).
const MAX_TOKEN_LEN: usize = 128;
/// Largest install-notify body.
const MAX_NOTIFY_BYTES: usize = 4096;

/// What the device routes need.
#[derive(Clone)]
pub struct DeviceState {
    /// The store (tokens, firmware, event logs).
    pub store: Arc<dyn Store>,
    /// The firmware files.
    pub blobs: Arc<dyn BlobStore>,
    /// This listener as modems reach it (`https://host:port`), for the JAD's URLs.
    pub base_url: String,
    /// Downloads served at once; more wait their turn.
    pub downloads: Arc<Semaphore>,
    /// The CA (EST enrolment and `cacerts`).
    pub certs: Arc<callhome_pki::CertificateService>,
    /// The process-wide bound on password hashing (bootstrap secrets are argon2 hashes).
    pub passwords: callhome_gateway::PasswordPool,
    /// Failed bootstrap secrets, throttled per IMEI and per client address.
    pub est_throttle: Arc<crate::throttle::LoginThrottle>,
    /// The event bus (`enrollment.*` events of claim enrolments).
    pub events: Arc<callhome_gateway::events::EventBus>,
}

impl std::fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceState")
            .field("base_url", &self.base_url)
            .field("downloads_free", &self.downloads.available_permits())
            .finish_non_exhaustive()
    }
}

/// The device-facing routes.
pub fn router(state: DeviceState) -> Router {
    Router::new()
        .route("/fw/{token}", get(download))
        .route("/fw/{token}/jad", get(descriptor))
        .route("/fw/{token}/notify", post(notify))
        .route("/crl/{file}", get(crl_file))
        .route(TRUST_BUNDLE_PATH, get(trust_bundle))
        .merge(crate::est::routes())
        .fallback(|| async { ApiError::NotFound("no such resource on the device listener".into()) })
        // EST bodies are read with their own limit (`est::MAX_EST_BODY`).
        .layer(DefaultBodyLimit::max(MAX_NOTIFY_BYTES))
        .with_state(state)
}

/// Where the device listener serves the trust bundle.
pub const TRUST_BUNDLE_PATH: &str = "/ca/trust.pem";

/// `GET /ca/trust.pem`: the root certificates a modem should trust for Callhome's server
/// certificates (two during a CA rollover), PEM; what a rotation's trust-anchor install
/// points modems to. Public, like `cacerts`.
async fn trust_bundle(State(state): State<DeviceState>) -> Response {
    let mut resp = state.certs.trust_bundle_pem().into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /crl/{key id}.crl`: the CRL of one issuing CA, DER, as published (with its
/// issuing distribution point). No client certificate needed: brokers fetch it.
async fn crl_file(State(state): State<DeviceState>, Path(file): Path<String>) -> Response {
    let Some(key_id) = file.strip_suffix(".crl") else {
        return ApiError::NotFound("CRLs are named <key id>.crl".into()).into_response();
    };
    let crls = state.certs.crl();
    let Some(crl) = crls.by_issuer_key_id(key_id) else {
        return ApiError::NotFound(format!("no CRL for the issuing CA {key_id}")).into_response();
    };
    let der = crl.published_der.as_ref().unwrap_or(&crl.der);
    let mut resp = der.to_vec().into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// A response for a file, and the part of it the body carries.
pub(crate) struct Served {
    /// The response (its body streams the bytes).
    pub response: Response<Body>,
    /// What was asked for, as answered.
    pub answer: RangeAnswer,
}

/// Answers a request for `fw`'s file: 200, 206 or 416 according to `Range` and `If-Range`,
/// with `ETag`, `Accept-Ranges` and `Content-Length`. `wrap` turns the byte stream into the
/// body (to count it).
pub(crate) async fn serve_file(
    blobs: &Arc<dyn BlobStore>,
    fw: &FirmwareRecord,
    headers: &HeaderMap,
    wrap: Option<Box<dyn FnOnce(ByteStream, RangeAnswer) -> Body + Send>>,
) -> Result<Served, ApiError> {
    let digest: Digest = fw.sha256.parse()?;
    let size = u64::try_from(fw.size).unwrap_or(0);
    let etag = digest.etag();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let answer =
        callhome_firmware::evaluate(text(header::RANGE), text(header::IF_RANGE), &etag, size);
    let (status, start, end) = match answer {
        RangeAnswer::Unsatisfiable => {
            let mut resp = ApiError::RangeNotSatisfiable(format!(
                "the requested range is outside the file's {size} bytes"
            ))
            .into_response();
            if let Some(v) = answer
                .content_range(size)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(Served {
                response: resp,
                answer,
            });
        }
        RangeAnswer::Full => (StatusCode::OK, 0, size),
        RangeAnswer::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
    };
    let stream = blobs.read(&digest, start, end).await?;
    let body = match wrap {
        Some(w) => w(stream, answer),
        None => Body::from_stream(stream),
    };
    let content_type = match fw.kind {
        FirmwareKind::Midlet => "application/java-archive",
        FirmwareKind::Image => "application/octet-stream",
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "no-store");
    if let Some(cr) = answer.content_range(size) {
        b = b.header(header::CONTENT_RANGE, cr);
    }
    let response = b
        .body(body)
        .map_err(|e| ApiError::Internal(format!("building the response: {e}")))?;
    Ok(Served { response, answer })
}

/// Records an event in the execution's log (a failure is logged, not returned).
async fn event(
    store: &dyn Store,
    d: &DownloadRecord,
    kind: ExecEventKind,
    detail: serde_json::Value,
) {
    if let Err(e) = store
        .append_job_event(
            d.job_id,
            &d.imei,
            kind,
            Some(&detail.to_string()),
            OffsetDateTime::now_utc(),
        )
        .await
    {
        tracing::warn!(error = %e, "could not record a download event");
    }
}

/// Looks the token up and checks that this device may use it now.
async fn authorize(
    state: &DeviceState,
    peer: &DevicePeer,
    token: &str,
) -> Result<(DownloadRecord, FirmwareRecord), ApiError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::NotFound("unknown download token".into()));
    }
    let d = match state.store.get_download(&token_hash(token)).await {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => {
            metrics::counter!("callhome_firmware_requests_refused_total", "reason" => "unknown_token").increment(1);
            return Err(ApiError::NotFound("unknown download token".into()));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(imei) = &peer.imei else {
        metrics::counter!("callhome_firmware_requests_refused_total", "reason" => "no_certificate")
            .increment(1);
        return Err(ApiError::Forbidden(
            "a device client certificate is required for firmware downloads".into(),
        ));
    };
    if *imei != d.imei {
        metrics::counter!("callhome_firmware_requests_refused_total", "reason" => "foreign_certificate").increment(1);
        tracing::warn!(presented = %imei, owner = %d.imei, addr = %peer.addr, "a device used another device's download token");
        return Err(ApiError::Forbidden(
            "this download token belongs to another device".into(),
        ));
    }
    if d.closed_at.is_some() {
        return Err(gone(
            state,
            &d,
            "the update this download token was made for has ended",
        )
        .await);
    }
    if OffsetDateTime::now_utc() > d.expires_at {
        return Err(gone(state, &d, "the download token has expired").await);
    }
    let fw = match state.store.get_firmware(d.firmware_id).await {
        Ok(fw) => fw,
        Err(StoreError::NotFound(_)) => {
            return Err(gone(state, &d, "the firmware was removed from the repository").await);
        }
        Err(e) => return Err(e.into()),
    };
    Ok((d, fw))
}

/// Refuses the token's own device for good (410), recording why: its execution ends
/// `download_failed` instead of waiting for a modem that will not download.
async fn gone(state: &DeviceState, d: &DownloadRecord, why: &str) -> ApiError {
    metrics::counter!("callhome_firmware_requests_refused_total", "reason" => "gone").increment(1);
    if let Err(e) = state
        .store
        .record_download_refusal(&d.token_hash, &format!("410 {why}"))
        .await
    {
        tracing::warn!(error = %e, "could not record a refused download");
    }
    event(
        &*state.store,
        d,
        ExecEventKind::DownloadRefused,
        json!({"status": 410, "reason": why}),
    )
    .await;
    ApiError::Gone(why.to_owned())
}

async fn download(
    State(state): State<DeviceState>,
    axum::Extension(peer): axum::Extension<DevicePeer>,
    activity: Option<axum::Extension<Activity>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let (d, fw) = authorize(&state, &peer, &token).await?;
    // Queue for a slot: a download waits rather than fail, and its connection's idle
    // clock is kept going meanwhile (waiting is not idling).
    let waiting = metrics::gauge!("callhome_firmware_downloads_waiting");
    waiting.increment(1.0);
    let acquire = state.downloads.clone().acquire_owned();
    tokio::pin!(acquire);
    let permit = loop {
        tokio::select! {
            p = &mut acquire => break p,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if let Some(axum::Extension(a)) = &activity {
                    a.touch();
                }
            }
        }
    };
    waiting.decrement(1.0);
    let permit = permit.map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
    let size = u64::try_from(fw.size).unwrap_or(0);
    let store = state.store.clone();
    let record = d.clone();
    let wrap = Box::new(move |stream: ByteStream, answer: RangeAnswer| {
        Body::from_stream(Counted {
            inner: stream,
            sent: 0,
            expected: answer.len(size),
            finish: Some(Finish {
                store,
                download: record,
                answer,
                size,
                _permit: permit,
            }),
        })
    });
    let served = serve_file(&state.blobs, &fw, &headers, Some(wrap)).await?;
    tracing::info!(
        imei = %d.imei,
        job = %d.job_id,
        status = served.response.status().as_u16(),
        range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        content_range = served
            .response
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok()),
        "firmware download"
    );
    match served.answer {
        RangeAnswer::Unsatisfiable => {
            event(
                &*state.store,
                &d,
                ExecEventKind::DownloadRefused,
                json!({
                    "status": 416,
                    "range": headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
                }),
            )
            .await;
        }
        RangeAnswer::Partial { start, end } if start > 0 => {
            event(
                &*state.store,
                &d,
                ExecEventKind::DownloadResumed,
                json!({"from": start, "to": end}),
            )
            .await;
        }
        answer => {
            if d.requests == 0 {
                let detail = match answer {
                    RangeAnswer::Partial { start, end } => json!({"from": start, "to": end}),
                    _ => json!({"size": size}),
                };
                event(&*state.store, &d, ExecEventKind::DownloadStarted, detail).await;
            }
        }
    }
    Ok(served.response)
}

/// What to record once a body has been sent (or abandoned).
struct Finish {
    store: Arc<dyn Store>,
    download: DownloadRecord,
    answer: RangeAnswer,
    size: u64,
    /// The download slot, held until the body is done.
    _permit: OwnedSemaphorePermit,
}

/// A body that counts what it sent and records it when it ends or is dropped (the
/// client went away).
struct Counted {
    inner: ByteStream,
    sent: u64,
    expected: u64,
    finish: Option<Finish>,
}

impl Counted {
    fn record(&mut self) {
        let Some(f) = self.finish.take() else { return };
        let sent = self.sent;
        let complete = sent == self.expected;
        let reaches_end = match f.answer {
            RangeAnswer::Full => true,
            RangeAnswer::Partial { end, .. } => end + 1 == f.size,
            RangeAnswer::Unsatisfiable => false,
        };
        let resumed = matches!(f.answer, RangeAnswer::Partial { start, .. } if start > 0);
        metrics::counter!("callhome_firmware_bytes_served_total").increment(sent);
        metrics::counter!("callhome_firmware_downloads_total", "result" => if complete { "complete" } else { "cut" }).increment(1);
        let start = match f.answer {
            RangeAnswer::Partial { start, .. } => start,
            _ => 0,
        };
        let progress = DownloadProgress {
            start: i64::try_from(start).unwrap_or(i64::MAX),
            bytes: i64::try_from(sent).unwrap_or(i64::MAX),
            resumed,
            completed: complete && reaches_end,
            // Whole milliseconds, as stored: the completion is recognised by its time below.
            at: {
                let now = OffsetDateTime::now_utc();
                now.replace_millisecond(now.millisecond()).unwrap_or(now)
            },
        };
        // Drop cannot wait: the record is written by a task of its own (none when the
        // runtime is already gone, at the very end of a shutdown).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                sent,
                "a download ended after the runtime stopped; not recorded"
            );
            return;
        };
        runtime.spawn(async move {
            let Finish {
                store, download, ..
            } = f;
            match store.record_download(&download.token_hash, &progress).await {
                Ok(after) => {
                    if progress.completed && after.completed_at == Some(progress.at) {
                        event(
                            &*store,
                            &download,
                            ExecEventKind::DownloadCompleted,
                            json!({
                                "requests": after.requests,
                                "resumptions": after.resumptions,
                                "bytes_served": after.bytes_served,
                            }),
                        )
                        .await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not record a download"),
            }
        });
    }
}

impl Stream for Counted {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => self.sent += chunk.len() as u64,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.record(),
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.record();
    }
}

async fn descriptor(
    State(state): State<DeviceState>,
    axum::Extension(peer): axum::Extension<DevicePeer>,
    Path(token): Path<String>,
) -> Result<Response<Body>, ApiError> {
    let (d, fw) = authorize(&state, &peer, &token).await?;
    let Some(text) = fw
        .jad
        .as_deref()
        .filter(|_| fw.kind == FirmwareKind::Midlet)
    else {
        return Err(ApiError::NotFound(
            "this download is a firmware image: it has no JAD".into(),
        ));
    };
    let mut jad = Jad::parse(text).map_err(|e| ApiError::Internal(format!("stored JAD: {e}")))?;
    let set = |jad: &mut Jad, name: &str, value: &str| {
        jad.set(name, value)
            .map_err(|e| ApiError::Internal(format!("JAD attribute {name}: {e}")))
    };
    set(
        &mut jad,
        "MIDlet-Jar-URL",
        &file_url(&state.base_url, &token),
    )?;
    set(&mut jad, "MIDlet-Jar-Size", &fw.size.to_string())?;
    set(&mut jad, "MIDlet-Version", &fw.version)?;
    set(
        &mut jad,
        "MIDlet-Install-Notify",
        &notify_url(&state.base_url, &token),
    )?;
    event(
        &*state.store,
        &d,
        ExecEventKind::DescriptorServed,
        json!({}),
    )
    .await;
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/vnd.sun.j2me.app-descriptor; charset=utf-8",
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(jad.render()))
        .map_err(|e| ApiError::Internal(format!("building the response: {e}")))
}

async fn notify(
    State(state): State<DeviceState>,
    axum::Extension(peer): axum::Extension<DevicePeer>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let (d, _) = authorize(&state, &peer, &token).await?;
    let status = InstallStatus::parse(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid-install-status",
            format!("invalid install status: {e}"),
        )
    })?;
    metrics::counter!("callhome_firmware_install_notifies_total", "code" => status.code().to_string())
        .increment(1);
    state
        .store
        .record_install_notify(
            &d.token_hash,
            i64::from(status.code()),
            status.message(),
            OffsetDateTime::now_utc(),
        )
        .await?;
    event(
        &*state.store,
        &d,
        ExecEventKind::InstallNotified,
        json!({
            "code": status.code(),
            "status": status.to_string(),
        }),
    )
    .await;
    tracing::info!(imei = %d.imei, %status, "install status");
    Ok((StatusCode::OK, "OK\n").into_response())
}
