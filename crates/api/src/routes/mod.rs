//! One module per resource; [`router`] assembles them with their OpenAPI paths.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod bootstrap_secrets;
pub mod certificates;
pub mod claims;
pub mod commands;
pub mod config;
pub mod devices;
pub mod events;
pub mod firmware;
pub mod jobs;
pub mod paging;
pub mod session_targets;
pub mod sessions;
pub mod status;
pub mod system;
pub mod users;

use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::openapi::ApiDoc;

/// The firmware upload: its own router, because its body limit is the firmware size
/// limit, not the API's 1 MiB.
pub fn upload_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(firmware::upload_firmware))
}

/// Claims: their own router, because a claim's allow-list (up to 100,000 IMEIs) is larger
/// than the API's 1 MiB body limit.
pub fn claims_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(claims::list_claims, claims::create_claim))
}

/// Every route, with the OpenAPI document they describe.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::token))
        .routes(routes!(auth::whoami))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::update_user))
        .routes(routes!(users::revoke_tokens))
        .routes(routes!(api_keys::list_api_keys, api_keys::create_api_key))
        .routes(routes!(api_keys::revoke_api_key))
        .routes(routes!(devices::list_devices, devices::create_device))
        .routes(routes!(
            devices::get_device,
            devices::update_device,
            devices::delete_device
        ))
        .routes(routes!(
            devices::set_mqtt_credentials,
            devices::delete_mqtt_credentials
        ))
        .routes(routes!(
            commands::create_command,
            commands::list_device_commands
        ))
        .routes(routes!(commands::get_command, commands::cancel_command))
        .routes(routes!(status::latest))
        .routes(routes!(status::history))
        .routes(routes!(events::stream))
        .routes(routes!(config::list_profiles))
        .routes(routes!(
            config::get_profile,
            config::put_profile,
            config::delete_profile
        ))
        .routes(routes!(
            config::get_device_config,
            config::put_device_config
        ))
        .routes(routes!(config::effective))
        .routes(routes!(config::read_config))
        .routes(routes!(config::reported))
        .routes(routes!(config::diff))
        .routes(routes!(jobs::apply_config))
        .routes(routes!(jobs::list_jobs, jobs::create_job))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::list_job_devices))
        .routes(routes!(jobs::get_job_device))
        .routes(routes!(jobs::pause_job))
        .routes(routes!(jobs::resume_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(config::get_whitelists, config::put_whitelists))
        .routes(routes!(config::get_config_txt, config::put_config_txt))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(sessions::stream))
        .routes(routes!(
            session_targets::list_session_targets,
            session_targets::create_session_target
        ))
        .routes(routes!(session_targets::delete_session_target))
        .routes(routes!(certificates::sign_csr))
        .routes(routes!(
            bootstrap_secrets::create_bootstrap_secret,
            bootstrap_secrets::delete_bootstrap_secret
        ))
        .routes(routes!(claims::revoke_claim))
        .routes(routes!(claims::list_enrollments))
        .routes(routes!(claims::approve_enrollment))
        .routes(routes!(claims::reject_enrollment))
        .routes(routes!(certificates::list_device_certificates))
        .routes(routes!(certificates::list_certificates))
        .routes(routes!(certificates::audit_certificates))
        .routes(routes!(certificates::run_expiry_check))
        .routes(routes!(certificates::get_certificate))
        .routes(routes!(certificates::revoke_certificate))
        .routes(routes!(certificates::ca_certificate))
        .routes(routes!(certificates::ca_chain))
        .routes(routes!(certificates::ca_crl))
        .routes(routes!(firmware::list_firmware))
        .routes(routes!(firmware::distribution))
        .routes(routes!(firmware::get_firmware, firmware::delete_firmware))
        .routes(routes!(firmware::get_firmware_blob))
        .routes(routes!(firmware::device_history))
        .routes(routes!(audit::list_audit))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
}
