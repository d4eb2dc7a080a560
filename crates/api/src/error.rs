//! The API's one error type, and its RFC 9457 `application/problem+json` rendering.
//!
//! Every handler returns `Result<_, ApiError>`. Library errors ([`StoreError`], [`CaError`],
//! [`ValidationError`]) convert here and nowhere else, so a status code and a problem `type`
//! mean the same thing on every endpoint. Internal errors are logged with the request id and
//! answered with a generic text: nothing internal leaks to the client.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callhome_ca::CaError;
use callhome_core::ValidationError;
use callhome_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem (`urn:callhome:problem:<slug>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// For validation problems: each rejected field and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One rejected field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON member or parameter name.
    pub field: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field failed validation (422).
    #[error("{0}")]
    Validation(#[from] ValidationError),
    /// Several fields failed validation (422), e.g. the keys of a Config.txt.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    ValidationMany(Vec<ValidationError>),
    /// The request is malformed: bad JSON, bad parameter, bad CSR (400).
    #[error("{detail}")]
    BadRequest {
        /// Problem slug.
        slug: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No or bad credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but the role does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The resource existed but is no longer available: an expired or used download token
    /// (410).
    #[error("{0}")]
    Gone(String),
    /// The requested byte range is outside the file (416); the response carries
    /// `Content-Range: bytes */<size>`.
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// The body is larger than allowed (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body has the wrong media type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A limit was reached, or too many attempts were made (429): the detail names the limit;
    /// `retry_after_s`, when known (login throttling), becomes the `Retry-After` header.
    #[error("{detail}")]
    TooManyRequests {
        /// What was refused, naming the limit.
        detail: String,
        /// Seconds until the caller may try again.
        retry_after_s: Option<u64>,
    },
    /// A dependency is not available, or the request took too long (503).
    #[error("{0}")]
    Unavailable(String),
    /// The database is not available (503). The text (the driver's error, which may name
    /// hosts, users or files) is logged; the client gets a generic detail.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// The server is saturated for this kind of work, e.g. every password-hashing slot is
    /// busy (503 with `Retry-After`).
    #[error("{detail}")]
    Overloaded {
        /// What is saturated.
        detail: String,
        /// Seconds after which a retry is worth it (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// A bug or an unexpected failure (500); the detail is logged, not shown.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with the given problem slug.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            slug,
            detail: detail.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Validation(_) | ApiError::ValidationMany(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-error",
                "Invalid request",
            ),
            ApiError::BadRequest { slug, .. } => (StatusCode::BAD_REQUEST, slug, "Bad request"),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone", "Gone"),
            ApiError::RangeNotSatisfiable(_) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                "Range not satisfiable",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            ApiError::Unavailable(_) | ApiError::DatabaseUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Overloaded { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Server busy")
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            ApiError::DatabaseUnavailable(_) => {
                "the database is unavailable; try again later (the cause has been logged)"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Validation(v) => vec![FieldError {
                field: v.field.clone(),
                reason: v.reason.clone(),
            }],
            ApiError::ValidationMany(vs) => vs
                .iter()
                .map(|v| FieldError {
                    field: v.field.clone(),
                    reason: v.reason.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Problem {
            kind: format!("urn:callhome:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, ..) = self.parts();
        if let ApiError::Internal(detail)
        | ApiError::Unavailable(detail)
        | ApiError::DatabaseUnavailable(detail) = &self
        {
            tracing::error!(%status, error = %detail, "request failed");
        }
        let mut resp = (status, Json(self.problem())).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_s, .. } => *retry_after_s,
            ApiError::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl ApiError {
    /// The response with the status and headers of [`IntoResponse`], but the problem's
    /// detail as a plain-text body, and `challenge` as `WWW-Authenticate` on a 401: what the
    /// EST endpoints answer (RFC 7030 section 4.2.3 allows a human-readable text body).
    pub fn into_plain_response(self, challenge: &'static str) -> Response {
        let detail = self.problem().detail;
        let (mut parts, _) = self.into_response().into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        if parts.status == StatusCode::UNAUTHORIZED {
            parts.headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        Response::from_parts(parts, axum::body::Body::from(format!("{detail}\n")))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict { detail: what, .. } => ApiError::Conflict(what),
            StoreError::Unavailable(why) => ApiError::DatabaseUnavailable(why),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<callhome_gateway::PasswordError> for ApiError {
    fn from(e: callhome_gateway::PasswordError) -> Self {
        use callhome_gateway::PasswordError as P;
        match e {
            e @ P::Busy { .. } => ApiError::Overloaded {
                detail: e.to_string(),
                retry_after_s: 1,
            },
            P::Failed(why) => ApiError::Internal(why),
        }
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::InvalidCsr(reason) => {
                ApiError::bad_request("invalid-csr", format!("invalid CSR: {reason}"))
            }
            e @ CaError::SubjectMismatch { .. } => {
                ApiError::bad_request("invalid-csr", e.to_string())
            }
            CaError::NotFound(what) => ApiError::NotFound(what),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<callhome_pki::PkiError> for ApiError {
    fn from(e: callhome_pki::PkiError) -> Self {
        match e {
            callhome_pki::PkiError::Ca(ca) => ca.into(),
            callhome_pki::PkiError::Store(store) => store.into(),
        }
    }
}

impl From<callhome_gateway::GatewayError> for ApiError {
    fn from(e: callhome_gateway::GatewayError) -> Self {
        use callhome_gateway::GatewayError as G;
        match e {
            G::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            G::Conflict(what) => ApiError::Conflict(what),
            G::Validation(v) => ApiError::Validation(v),
            G::Store(s) => s.into(),
            G::Ca(c) => c.into(),
            G::Io(io) => ApiError::Internal(io.to_string()),
            e @ G::QueueFull { .. } => ApiError::TooManyRequests {
                detail: e.to_string(),
                retry_after_s: None,
            },
        }
    }
}

impl From<callhome_fleet::FleetError> for ApiError {
    fn from(e: callhome_fleet::FleetError) -> Self {
        use callhome_fleet::FleetError as F;
        match e {
            F::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            F::Conflict(what) | F::Device(what) => ApiError::Conflict(what),
            F::Validation(v) => ApiError::Validation(v),
            F::Invalid(vs) => ApiError::ValidationMany(vs),
            F::Store(s) => s.into(),
            F::Gateway(g) => g.into(),
            F::Corrupt(what) => ApiError::Internal(what),
        }
    }
}

impl From<callhome_tunnel::TunnelError> for ApiError {
    fn from(e: callhome_tunnel::TunnelError) -> Self {
        use callhome_tunnel::TunnelError as T;
        match e {
            T::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            T::Conflict(what) => ApiError::Conflict(what),
            T::Unauthorized(what) => ApiError::Unauthorized(what),
            T::Forbidden(what) => ApiError::Forbidden(what),
            T::Validation(v) => ApiError::Validation(v),
            T::Store(s) => s.into(),
            T::Gateway(g) => g.into(),
            T::Ca(c) => c.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Validation(ValidationError::new(
                "body",
                e.body_text()
                    .trim_start_matches(
                        "Failed to deserialize the JSON body into the target type: ",
                    )
                    .to_owned(),
            )),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed-json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a body with Content-Type: application/json".to_owned(),
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(e.body_text())
            }
            other => ApiError::bad_request("bad-body", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("bad-path-parameter", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("bad-query-parameter", r.body_text())
    }
}
