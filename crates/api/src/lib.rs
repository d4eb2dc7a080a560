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
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod throttle;
mod time_format;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderName;
use callhome_pki::CertificateService;
use callhome_store::Store;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

pub use auth::TokenKeys;
pub use error::ApiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

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
    /// Failed-login throttling per user name and client address.
    pub login_throttle: Arc<throttle::LoginThrottle>,
}

/// The whole HTTP application: API routes, OpenAPI document, Swagger UI at `/docs`.
pub fn app(state: AppState) -> Router {
    let (api, openapi) = routes::router().split_for_parts();
    let request_id = HeaderName::from_static("x-request-id");
    api.merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", openapi))
        .fallback(routes::system::not_found)
        .method_not_allowed_fallback(routes::system::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            context::request_context,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
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

/// Serves `app` on an already-bound listener until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
