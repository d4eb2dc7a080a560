//! The OpenAPI document's top level: info, tags and the bearer security scheme. Paths and
//! schemas are collected from the handlers by `utoipa-axum` in [`crate::routes::router`].

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Callhome API",
        description = "Device manager for cellular modems that never listen.\n\n\
            Authenticate with `POST /api/v1/auth/token` (user name and password, or an API key) and send \
            the token as `Authorization: Bearer <token>`; an API key can also be sent directly as the bearer \
            credential. Roles: `reader` (reading-centre software: devices read-only, sessions), `operator` \
            (fleet operations), `admin` (users, API keys, audit).\n\n\
            Errors are RFC 9457 `application/problem+json` documents whose `type` is a stable \
            `urn:callhome:problem:<slug>`.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Access tokens"),
        (name = "users", description = "User accounts (admin)"),
        (name = "api-keys", description = "API keys for machine clients (admin)"),
        (name = "devices", description = "The device registry"),
        (name = "certificates", description = "Device certificates, the CA certificate and its CRL"),
        (name = "claims", description = "Claim provisioning: batch claim credentials with their policy, and the approval queue of enrolments"),
        (name = "commands", description = "The per-device AT command queue"),
        (name = "status", description = "Status messages from devices"),
        (name = "events", description = "Server-Sent Events"),
        (name = "configuration", description = "Config.txt profiles, per-device overrides, effective configuration"),
        (name = "jobs", description = "Bulk jobs: one operation over many devices with rollout controls (rate, ramp-up, waves, abort rule), pause/resume/cancel, per-device results"),
        (name = "sessions", description = "Meter-reading sessions (TEMPORALCLIENT), direct or through the rendezvous"),
        (name = "session-targets", description = "Where direct sessions may send modems: the allow-list of reading-platform endpoints (admin)"),
        (name = "firmware", description = "The firmware repository (streamed uploads, signatures), the fleet's reported firmware, and devices' firmware history; campaigns are jobs with the firmware_update operation"),
        (name = "audit", description = "Who changed what (admin)"),
        (name = "system", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key")
                    .description(Some(
                        "An access token from POST /api/v1/auth/token, or an API key (chk_...)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as the running server serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = crate::routes::router().split_for_parts().1;
    doc.merge(crate::routes::upload_router().split_for_parts().1);
    doc.merge(crate::routes::claims_router().split_for_parts().1);
    doc
}
