//! Callhome's HTTP face: the REST API under `/api/v1`, its OpenAPI document and Swagger UI,
//! health and Prometheus endpoints.
//!
//! Owns: routing, authentication of HTTP callers and role checks ([`auth`]), the audit row
//! written for every state-changing call ([`context`]), the mapping of every library error to
//! RFC 9457 problem documents ([`error`]), request/response schemas and the OpenAPI document
//! ([`openapi`]).
//!
//! Must not know: SQL (it calls `callhome-store` traits), certificate cryptography (it calls
//! `callhome-ca`), or how the process is configured and started (`callhome` does that and
//! hands over an [`AppState`] and a bound listener to [`serve`]).
//!
//! Modules: [`routes`] holds one module per resource; [`extract`] the extractors whose
//! rejections are problem documents; [`metrics`] the Prometheus recorder.

pub mod auth;
pub mod context;
pub mod device;
pub mod error;
pub mod est;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod serve;
pub mod streams;
pub mod throttle;
mod time_format;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderName;
use callhome_pki::CertificateService;
use callhome_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

pub use auth::TokenKeys;
pub use error::ApiError;
pub use serve::{ServeLimits, serve};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest body of `POST /api/v1/claims` (an allow-list of 100,000 IMEIs is about 1.8 MB).
pub const MAX_CLAIM_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The certificate authority with its inventory and CRL.
    pub certs: Arc<CertificateService>,
    /// Access-token keys.
    pub tokens: TokenKeys,
    /// Prometheus registry.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The modem command channel.
    pub gateway: callhome_gateway::Gateway,
    /// Meter-reading sessions.
    pub tunnel: callhome_tunnel::Tunnel,
    /// Desired and reported configuration.
    pub config: callhome_fleet::ConfigService,
    /// Bulk jobs.
    pub jobs: callhome_fleet::JobEngine,
    /// Cancelled at shutdown: long-lived streams end so that the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Open streams by principal: disabling a user or revoking a key ends them.
    pub streams: streams::PrincipalStreams,
    /// Bearer token `GET /metrics` requires (`None`: open).
    pub metrics_token: Option<MetricsToken>,
    /// Bounds of long-lived streams (event streams per principal, WebSocket frames).
    pub stream_limits: limits::StreamLimits,
    /// Failed-login throttling per user name and client address.
    pub login_throttle: Arc<throttle::LoginThrottle>,
    /// The firmware repository.
    pub firmware: routes::firmware::FirmwareRepo,
    /// Device connections on the device-facing listener (downloads, enrolment).
    pub device_connections: Arc<callhome_net::LiveDevices>,
    /// The certificate expiry watch and audit.
    pub cert_watch: Arc<callhome_pki::ExpiryWatch>,
}

impl AppState {
    /// Ends everything `imei` has open, on this node and (announced through the database)
    /// on the others: the device was disabled or deleted.
    pub async fn revoke_device_access(&self, imei: &callhome_core::Imei) {
        self.end_device_access(imei).await;
        let change = callhome_core::ClusterChange::DeviceAccess(imei.clone());
        if let Err(e) = self.store.announce(&change).await {
            tracing::warn!(%imei, error = %e, "could not announce the device's access change to the other nodes");
        }
    }

    /// Ends everything `imei` has open on this node (its MQTT connection, its sessions'
    /// splices, its device-listener connections).
    pub async fn end_device_access(&self, imei: &callhome_core::Imei) {
        self.gateway.disconnect(imei);
        self.tunnel
            .close_for_access(&std::collections::HashSet::new(), Some(imei))
            .await;
        self.device_connections
            .revoke(&std::collections::HashSet::new(), Some(imei.as_str()));
    }
}

/// The bearer token `GET /metrics` requires (`http.metrics_token`). `Debug` never shows it;
/// [`MetricsToken::matches`] compares in constant time.
#[derive(Clone)]
pub struct MetricsToken(Arc<[u8; 32]>);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(***)")
    }
}

impl MetricsToken {
    /// The token (only its SHA-256 digest is kept).
    pub fn new(token: &str) -> Self {
        use sha2::Digest as _;
        Self(Arc::new(sha2::Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether `presented` is the token: the digests are compared in constant time, so
    /// neither the token's content nor its length shows in the timing.
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&*self.0))
    }
}

/// The whole HTTP application: API routes, OpenAPI document, Swagger UI at `/docs`.
pub fn app(state: AppState) -> Router {
    let (api, _) = routes::router().split_for_parts();
    let openapi = openapi::document();
    // The firmware upload streams up to the firmware size limit (plus room for its other
    // parts); every other route keeps the 1 MiB limit.
    let upload_limit = usize::try_from(state.firmware.max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(MAX_BODY_BYTES);
    let (upload, _) = routes::upload_router().split_for_parts();
    let (claims, _) = routes::claims_router().split_for_parts();
    let api = api
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(
            upload
                .layer(RequestBodyLimitLayer::new(upload_limit))
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .merge(
            claims
                .layer(RequestBodyLimitLayer::new(MAX_CLAIM_BODY_BYTES))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_CLAIM_BODY_BYTES)),
        );
    let request_id = HeaderName::from_static("x-request-id");
    api.merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", openapi))
        .fallback(routes::system::not_found)
        .method_not_allowed_fallback(routes::system::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            context::request_context,
        ))
        .layer(CatchPanicLayer::custom(context::panic_response))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
        // Outermost: an unacceptable client request id is dropped before the layers above
        // generate, log, echo or audit it.
        .layer(axum::middleware::map_request(context::sanitize_request_id))
        .with_state(state)
}
