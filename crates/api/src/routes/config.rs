//! Fleet configuration: Config.txt profiles (`/api/v1/profiles`), per-device overrides,
//! the effective configuration and its Config.txt rendering (`/api/v1/devices/{imei}/config...`).
//!
//! Secrets (`GPRS_password`, `MQTT_password`, `MTX_PIN`) are shown as `***` to everyone but
//! admins.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callhome_core::DriftState;
use callhome_core::configtxt::{self, ConfigFile, schema};
use callhome_core::{Imei, Role, ValidationError};
use callhome_store::{NewProfileVersion, ProfileRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use callhome_fleet::config::{Desired, counts_as_drift};
use callhome_fleet::journal::Journal;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::time_format::rfc3339;

/// A warning about a Config.txt (unknown key, risky setting).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigWarning {
    /// The key concerned.
    pub key: String,
    /// What may be wrong.
    pub message: String,
}

impl From<configtxt::validate::Warning> for ConfigWarning {
    fn from(w: configtxt::validate::Warning) -> Self {
        Self {
            key: w.key,
            message: w.message,
        }
    }
}

/// A Config.txt profile (one version).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileView {
    /// Name.
    pub name: String,
    /// Devices carrying this tag get the profile.
    pub tag: Option<String>,
    /// Among several matching profiles the highest priority wins (then the name).
    pub priority: i64,
    /// This version.
    pub version: i64,
    /// The newest version.
    pub current_version: i64,
    /// The Config.txt text (secrets as `***` unless you are an admin).
    pub config: String,
    /// Warnings from validation.
    pub warnings: Vec<ConfigWarning>,
    /// RFC 3339.
    pub created_at: String,
    /// Who wrote this version.
    pub created_by: String,
}

/// A profile to write: a new version each time.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"config": "DNS_enabled: on\nDNS_mode: mqtt\nDNS_period: 600\nCSD_enabled: on\nGPRS_mode: 2g\n", "tag": "region:north", "priority": 0}))]
pub struct PutProfile {
    /// The Config.txt text (`KEY: value` lines; comments and unknown keys are kept).
    pub config: String,
    /// Devices carrying this tag get the profile.
    pub tag: Option<String>,
    /// Priority among matching profiles (default 0).
    pub priority: Option<i64>,
}

/// Which version.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A version number; the current one when absent.
    pub version: Option<i64>,
}

/// A device's configuration: its profile and its own overrides.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceConfigView {
    /// The profile that applies (by tag), if any.
    pub profile: Option<String>,
    /// Its current version.
    pub profile_version: Option<i64>,
    /// Per-device values on top of the profile (`null`: the key is removed).
    #[schema(value_type = Object)]
    pub overrides: BTreeMap<String, Option<String>>,
}

/// New overrides for a device (replacing the old ones).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"overrides": {"DNS_period": "300", "MTX_PIN": "4821"}}))]
pub struct PutDeviceConfig {
    /// Key -> value; `null` removes the key from the profile's configuration.
    #[schema(value_type = Object)]
    pub overrides: BTreeMap<String, Option<String>>,
}

/// The effective desired configuration of a device.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectiveView {
    /// The profile it starts from.
    pub profile: Option<String>,
    /// The profile's version.
    pub profile_version: Option<i64>,
    /// Profile + overrides, placeholders resolved, as Config.txt text (secrets as `***`
    /// unless you are an admin).
    pub config: String,
    /// Validation problems (an effective configuration with errors cannot be applied).
    pub errors: Vec<crate::error::FieldError>,
    /// Validation warnings.
    pub warnings: Vec<ConfigWarning>,
    /// Placeholders nothing could fill, as `KEY: [PLACEHOLDER]`.
    pub unresolved_placeholders: Vec<String>,
}

fn check_profile_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(
            ValidationError::new("name", "must be 1-64 letters, digits, '.', '_' or '-'").into(),
        );
    }
    Ok(())
}

fn shown(config: &ConfigFile, p: &Principal) -> String {
    if p.role.allows(Role::Admin) {
        config.render()
    } else {
        config.redacted().render()
    }
}

/// Parses and validates a Config.txt; errors (all of them) are a 422 naming each key.
fn parse_valid(text: &str) -> Result<(ConfigFile, Vec<ConfigWarning>), ApiError> {
    let config = ConfigFile::parse(text).map_err(|e| ApiError::Validation(e.into()))?;
    let report = config.validate();
    if !report.errors.is_empty() {
        return Err(ApiError::ValidationMany(report.errors));
    }
    let warnings = report
        .warnings
        .into_iter()
        .map(ConfigWarning::from)
        .collect();
    Ok((config, warnings))
}

fn profile_view(p: ProfileRecord, who: &Principal) -> Result<ProfileView, ApiError> {
    let config = ConfigFile::parse(&p.config)
        .map_err(|e| ApiError::Internal(format!("stored profile: {e}")))?;
    let warnings = config
        .validate()
        .warnings
        .into_iter()
        .map(ConfigWarning::from)
        .collect();
    Ok(ProfileView {
        name: p.name,
        tag: p.tag,
        priority: p.priority,
        version: p.version,
        current_version: p.current_version,
        config: shown(&config, who),
        warnings,
        created_at: rfc3339(p.created_at),
        created_by: p.created_by,
    })
}

/// Lists profiles at their current versions.
#[utoipa::path(get, path = "/api/v1/profiles", tag = "configuration", security(("bearer" = [])),
    responses((status = 200, description = "Profiles", body = [ProfileView])))]
pub async fn list_profiles(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<Vec<ProfileView>>, ApiError> {
    p.require(Role::Operator)?;
    let list = state.store.list_profiles().await?;
    Ok(axum::Json(
        list.into_iter()
            .map(|r| profile_view(r, &p))
            .collect::<Result<_, _>>()?,
    ))
}

/// A profile (the current version, or `?version=N`).
#[utoipa::path(get, path = "/api/v1/profiles/{name}", tag = "configuration", security(("bearer" = [])),
    params(("name" = String, Path, description = "Profile name"), VersionQuery),
    responses(
        (status = 200, description = "The profile", body = ProfileView),
        (status = 404, description = "No such profile or version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_profile(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> Result<axum::Json<ProfileView>, ApiError> {
    p.require(Role::Operator)?;
    Ok(axum::Json(profile_view(
        state.store.get_profile(&name, q.version).await?,
        &p,
    )?))
}

/// Writes a profile: the first version, or the next one. The Config.txt is validated; every
/// error names its key.
#[utoipa::path(put, path = "/api/v1/profiles/{name}", tag = "configuration", security(("bearer" = [])),
    params(("name" = String, Path, description = "Profile name")),
    request_body = PutProfile,
    responses(
        (status = 200, description = "Written", body = ProfileView),
        (status = 422, description = "Invalid Config.txt (each key and reason in `errors`), name or tag", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_profile(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PutProfile>,
) -> Result<
    (
        axum::extract::Extension<AuditTarget>,
        axum::Json<ProfileView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    check_profile_name(&name)?;
    if let Some(t) = &req.tag {
        callhome_core::Tag::parse(t).map_err(|e| e.at("tag"))?;
    }
    parse_valid(&req.config)?;
    let rec = state
        .store
        .put_profile(&NewProfileVersion {
            name: name.clone(),
            tag: req.tag,
            priority: req.priority.unwrap_or(0),
            config: req.config,
            by: p.name.clone(),
        })
        .await?;
    if let Some(tag) = rec.tag.clone() {
        // Devices with this tag may now drift (or no longer): re-evaluate against what they
        // last reported, in the background.
        let config = state.config.clone();
        tokio::spawn(async move {
            if let Err(e) = config.recheck_tag(&tag).await {
                tracing::warn!(%tag, error = %e, "drift re-evaluation after a profile change failed");
            }
        });
    }
    let target = format!("profile {name} v{}", rec.version);
    Ok((
        axum::extract::Extension(AuditTarget(target)),
        axum::Json(profile_view(rec, &p)?),
    ))
}

/// Deletes a profile and all its versions.
#[utoipa::path(delete, path = "/api/v1/profiles/{name}", tag = "configuration", security(("bearer" = [])),
    params(("name" = String, Path, description = "Profile name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such profile", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_profile(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Role::Operator)?;
    let tag = state.store.get_profile(&name, None).await?.tag;
    state.store.delete_profile(&name).await?;
    if let Some(tag) = tag {
        let config = state.config.clone();
        tokio::spawn(async move {
            if let Err(e) = config.recheck_tag(&tag).await {
                tracing::warn!(%tag, error = %e, "drift re-evaluation after a profile deletion failed");
            }
        });
    }
    Ok(StatusCode::NO_CONTENT)
}

fn redact_overrides(
    o: &BTreeMap<String, Option<String>>,
    p: &Principal,
) -> BTreeMap<String, Option<String>> {
    o.iter()
        .map(|(k, v)| {
            let v = match v {
                Some(v) if schema::is_secret(k) && !v.is_empty() && !p.role.allows(Role::Admin) => {
                    Some("***".to_owned())
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn config_view(d: &Desired, p: &Principal) -> DeviceConfigView {
    DeviceConfigView {
        profile: d.profile.as_ref().map(|x| x.name.clone()),
        profile_version: d.profile.as_ref().map(|x| x.version),
        overrides: redact_overrides(&d.overrides, p),
    }
}

/// A device's profile and overrides.
#[utoipa::path(get, path = "/api/v1/devices/{imei}/config", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "Profile and overrides", body = DeviceConfigView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_device_config(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<DeviceConfigView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let d = state.config.desired(&imei).await?;
    Ok(axum::Json(config_view(&d, &p)))
}

/// Replaces a device's overrides. The resulting effective configuration must validate;
/// every error names its key.
#[utoipa::path(put, path = "/api/v1/devices/{imei}/config", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = PutDeviceConfig,
    responses(
        (status = 200, description = "Stored", body = DeviceConfigView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The effective configuration would be invalid (each key and reason in `errors`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_device_config(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<PutDeviceConfig>,
) -> Result<axum::Json<DeviceConfigView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let d = state
        .config
        .set_overrides(&imei, req.overrides, &p.name)
        .await?;
    Ok(axum::Json(config_view(&d, &p)))
}

/// The effective desired configuration: profile + overrides, placeholders resolved, with
/// its validation report.
#[utoipa::path(get, path = "/api/v1/devices/{imei}/config/effective", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "The effective configuration", body = EffectiveView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn effective(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<EffectiveView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let d = state.config.desired(&imei).await?;
    let eff = d.compose(&imei)?;
    let report = eff.config.validate();
    Ok(axum::Json(EffectiveView {
        profile: d.profile.as_ref().map(|x| x.name.clone()),
        profile_version: d.profile.as_ref().map(|x| x.version),
        config: shown(&eff.config, &p),
        errors: report
            .errors
            .into_iter()
            .map(|e| crate::error::FieldError {
                field: e.field,
                reason: e.reason,
            })
            .collect(),
        warnings: report
            .warnings
            .into_iter()
            .map(ConfigWarning::from)
            .collect(),
        unresolved_placeholders: eff
            .unresolved
            .iter()
            .map(|u| format!("{}: [{}]", u.key, u.placeholder))
            .collect(),
    }))
}

/// `?resolve=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResolveQuery {
    /// `true`: the effective configuration, placeholders (`[IMEI]`, ...) filled for this
    /// device. Default `false`: the desired configuration with placeholders as written.
    pub resolve: Option<bool>,
}

/// The device's Config.txt (`text/plain`): its desired configuration in the layout it was
/// imported with (key order, key spelling, blank and comment lines byte for byte; keys
/// changed since in place, new keys appended in the order they were set), or in its profile's
/// layout when nothing was imported. Placeholders as written unless `?resolve=true`.
#[utoipa::path(get, path = "/api/v1/devices/{imei}/config.txt", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518"), ResolveQuery),
    responses(
        (status = 200, description = "Config.txt", body = String, content_type = "text/plain"),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_config_txt(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiQuery(q): ApiQuery<ResolveQuery>,
) -> Result<Response, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let desired = state.config.desired(&imei).await?;
    let config = if q.resolve.unwrap_or(false) {
        desired.compose(&imei)?.config
    } else {
        desired.config()?
    };
    let mut resp = shown(&config, &p).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

/// Imports a Config.txt (`text/plain` body) as the device's desired configuration: every
/// key that differs from the profile becomes an override, and the file's layout is kept, so
/// `GET` of the same path gives it back byte for byte. Validated like any other change.
#[utoipa::path(put, path = "/api/v1/devices/{imei}/config.txt", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body(content = String, content_type = "text/plain", description = "A Config.txt"),
    responses(
        (status = 200, description = "Imported", body = DeviceConfigView),
        (status = 422, description = "Invalid Config.txt (each key and reason in `errors`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_config_txt(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    body: String,
) -> Result<axum::Json<DeviceConfigView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let (imported, _) = parse_valid(&body)?;
    let d = state.config.import(&imei, &imported, &p.name).await?;
    Ok(axum::Json(config_view(&d, &p)))
}

/// The configuration the modem last reported.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportedView {
    /// The Config.txt read from the modem (secrets as `***` unless you are an admin).
    pub config: Option<String>,
    /// RFC 3339: when it was read.
    pub read_at: Option<String>,
    /// Whether the modem's configuration matches the desired one (`unknown`: never read).
    pub drift: DriftState,
    /// Keys whose reported value differs from the desired one.
    pub drifted_keys: Vec<String>,
}

/// How long to wait for the modem.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Seconds to wait for the modem's reply (1-60, default 30).
    pub wait_s: Option<u32>,
}

/// One key that differs.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDiffView {
    /// The key.
    pub key: String,
    /// Desired value (`null`: not desired); secrets as `***`.
    pub desired: Option<String>,
    /// Reported value (`null`: not reported); secrets as `***`.
    pub reported: Option<String>,
}

/// Desired versus reported.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiffView {
    /// Whether the modem's configuration matches the desired one (`unknown`: never read).
    pub drift: DriftState,
    /// RFC 3339: when the reported configuration was read.
    pub read_at: Option<String>,
    /// Desired keys the modem reports with another value, or lacks, and caller-whitelist
    /// entries it has but should not (these make it drift).
    pub keys: Vec<KeyDiffView>,
    /// Keys only the modem has: not managed by the platform, so they do not count as drift.
    pub unmanaged: Vec<String>,
}

async fn reported_view(
    state: &AppState,
    p: &Principal,
    imei: &Imei,
) -> Result<ReportedView, ApiError> {
    let rec = state.store.get_device_config(imei).await?;
    let config = rec
        .reported
        .as_ref()
        .map(|text| match ConfigFile::parse(text) {
            Ok(c) => shown(&c, p),
            Err(_) => text.clone(),
        });
    Ok(ReportedView {
        config,
        read_at: rec.reported_at.map(rfc3339),
        drift: rec.drift,
        drifted_keys: rec
            .drift_keys
            .and_then(|k| serde_json::from_str(&k).ok())
            .unwrap_or_default(),
    })
}

/// Reads the configuration from the modem now (`AT^MTXTUNNEL=GETCONFIG` through its command
/// queue), stores it, and records whether it drifted from the desired one.
#[utoipa::path(post, path = "/api/v1/devices/{imei}/config/read", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518"), ReadQuery),
    responses(
        (status = 200, description = "Read", body = ReportedView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The modem did not answer in time, or answered with an error", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The device's command queue is full (the detail names the limit)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn read_config(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<axum::Json<ReportedView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let wait = q.wait_s.unwrap_or(30);
    if !(1..=60).contains(&wait) {
        return Err(ValidationError::new("wait_s", "must be between 1 and 60").into());
    }
    let wait = std::time::Duration::from_secs(u64::from(wait));
    let mut journal = Journal::fresh(state.gateway.clone(), imei.clone(), p.name.clone());
    state
        .config
        .read(&mut journal, &imei, wait, wait, None)
        .await?;
    Ok(axum::Json(reported_view(&state, &p, &imei).await?))
}

/// The configuration the modem last reported, and when.
#[utoipa::path(get, path = "/api/v1/devices/{imei}/config/reported", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "Reported configuration", body = ReportedView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reported(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<ReportedView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    Ok(axum::Json(reported_view(&state, &p, &imei).await?))
}

/// The keys whose reported value differs from the desired one (re-evaluated now against the
/// current profile and overrides).
#[utoipa::path(get, path = "/api/v1/devices/{imei}/config/diff", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "Differences", body = DiffView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn diff(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<DiffView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let diffs = state.config.check_drift(&imei).await?.unwrap_or_default();
    let rec = state.store.get_device_config(&imei).await?;
    Ok(axum::Json(DiffView {
        drift: rec.drift,
        read_at: rec.reported_at.map(rfc3339),
        unmanaged: diffs
            .iter()
            .filter(|k| !counts_as_drift(k))
            .map(|k| k.key.clone())
            .collect(),
        keys: diffs
            .into_iter()
            .filter(counts_as_drift)
            .map(|k| KeyDiffView {
                key: k.key,
                desired: k.desired,
                reported: k.reported,
            })
            .collect(),
    }))
}

/// Caller whitelists: who may make CSD calls to the modem and send it SMS commands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"csd": ["666333444", "666444555"], "sms": ["+34666123456"]}))]
pub struct WhitelistsView {
    /// `CSD_validPhoneN`: numbers allowed to call (E.164 or national digits).
    pub csd: Vec<String>,
    /// `SMS_validPhoneN`: numbers allowed to send SMS commands (setting a list also sets
    /// `SMS_allPhones: off`).
    pub sms: Vec<String>,
}

/// The device's desired caller whitelists (from its effective configuration).
#[utoipa::path(get, path = "/api/v1/devices/{imei}/whitelists", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "Whitelists", body = WhitelistsView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_whitelists(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<WhitelistsView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let w = state
        .config
        .desired(&imei)
        .await?
        .compose(&imei)?
        .config
        .whitelists();
    Ok(axum::Json(WhitelistsView {
        csd: w.csd,
        sms: w.sms,
    }))
}

/// Sets the device's caller whitelists: written as `CSD_validPhoneN` / `SMS_validPhoneN`
/// overrides (and `SMS_allPhones: off`), validated like any configuration change.
#[utoipa::path(put, path = "/api/v1/devices/{imei}/whitelists", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = WhitelistsView,
    responses(
        (status = 200, description = "Set", body = WhitelistsView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or duplicate numbers, too many (each key named)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_whitelists(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<WhitelistsView>,
) -> Result<axum::Json<WhitelistsView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let lists = configtxt::Whitelists {
        csd: req.csd,
        sms: req.sms,
    };
    let (_, after) = state
        .config
        .edit(&imei, &p.name, move |c| c.set_whitelists(&lists))
        .await?;
    let w = after.whitelists();
    Ok(axum::Json(WhitelistsView {
        csd: w.csd,
        sms: w.sms,
    }))
}
