//! The device registry: `GET/POST /api/v1/devices`, `GET/PATCH/DELETE /api/v1/devices/{imei}`.

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use callhome_core::DriftState;
use callhome_core::{DeviceName, Imei, Role, Tag, ValidationError};
use callhome_store::{Device, DeviceFilter, DevicePatch, NewDevice};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, double_option};
use crate::routes::paging;
use crate::time_format::{rfc3339, rfc3339_opt};

/// A registered modem.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"imei": "490154203237518", "name": "Substation 4 meter 12", "model": "199801422",
    "tags": ["region:north", "pilot"], "disabled": false,
    "created_at": "2026-11-21T10:00:00Z", "updated_at": "2026-11-21T10:00:00Z"}))]
pub struct DeviceView {
    /// 15-digit IMEI.
    pub imei: String,
    /// Operator-given name.
    pub name: Option<String>,
    /// Modem model, as the modem reported it (status messages), or as an operator set it.
    pub model: Option<String>,
    /// Firmware version, as the modem last reported it (`VERSION` reply or status message).
    pub firmware_version: Option<String>,
    /// RFC 3339: when the reported firmware version or model last changed.
    pub firmware_reported_at: Option<String>,
    /// Tags for grouping and targeting.
    pub tags: Vec<String>,
    /// A disabled device may not connect.
    pub disabled: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Connected to the command channel now.
    pub online: bool,
    /// RFC 3339: when the current (or last) connection was accepted.
    pub connected_at: Option<String>,
    /// RFC 3339: when the last connection ended.
    pub disconnected_at: Option<String>,
    /// RFC 3339: last packet seen (updated at least every 30 s while connected).
    pub last_seen: Option<String>,
    /// Peer address of the current (or last) connection.
    pub remote_addr: Option<String>,
    /// Serial of the client certificate of the current (or last) connection.
    pub cert_serial: Option<String>,
    /// MQTT topics in force and legacy login.
    pub mqtt: MqttView,
}

/// One device with its active certificate (`GET /api/v1/devices/{imei}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// The device.
    #[serde(flatten)]
    pub device: DeviceView,
    /// Its active certificate: the one its live connection uses when known (`cert_serial`),
    /// else the newest active one; `null` when it has none.
    pub certificate: Option<ActiveCertificate>,
}

/// A device's active certificate and how long it has left.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"serial": "5A3F0C9E21B44D7C8E0F1A2B3C4D5E6F", "not_after": "2029-03-01T10:00:00Z", "days_left": 812}))]
pub struct ActiveCertificate {
    /// Serial number, uppercase hex.
    pub serial: String,
    /// RFC 3339: end of validity.
    pub not_after: String,
    /// Whole days left.
    pub days_left: i64,
}

/// A device's MQTT topics (resolved) and legacy login name.
#[derive(Debug, Serialize, ToSchema)]
pub struct MqttView {
    /// The modem subscribes here for AT commands.
    #[schema(example = "490154203237518/AT")]
    pub command_topic: String,
    /// The modem publishes replies here.
    #[schema(example = "490154203237518/ATR")]
    pub reply_topic: String,
    /// The modem publishes status here.
    #[schema(example = "490154203237518/dns")]
    pub status_topic: String,
    /// Legacy MQTT user name, when password login is set up for this device.
    pub username: Option<String>,
    /// `MTX_IDClient`: what the modem sends first on a tunnel.
    #[schema(example = "490154203237518")]
    pub id_client: String,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        let topics = callhome_gateway::topics::Topics::for_device(&d);
        Self {
            imei: d.imei.to_string(),
            name: d.name,
            model: d.model,
            firmware_version: d.firmware_version,
            firmware_reported_at: rfc3339_opt(d.firmware_reported_at),
            tags: d.tags,
            disabled: d.disabled,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            online: d.presence.online,
            connected_at: rfc3339_opt(d.presence.connected_at),
            disconnected_at: rfc3339_opt(d.presence.disconnected_at),
            last_seen: rfc3339_opt(d.presence.last_seen),
            remote_addr: d.presence.remote_addr,
            cert_serial: d.presence.cert_serial,
            mqtt: MqttView {
                command_topic: topics.command,
                reply_topic: topics.reply,
                status_topic: topics.status,
                username: d.mqtt.username,
                id_client: d
                    .mqtt
                    .id_client
                    .as_deref()
                    .unwrap_or(d.imei.as_str())
                    .replace("[IMEI]", d.imei.as_str()),
            },
        }
    }
}

/// A device to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"imei": "490154203237518", "name": "Substation 4 meter 12", "tags": ["region:north"], "model": "199801422"}))]
pub struct CreateDevice {
    /// 15 digits with a valid Luhn check digit.
    pub imei: String,
    /// 1-128 printable characters.
    pub name: Option<String>,
    /// Up to 32 tags of letters, digits and `.` `_` `-` `:` `/` `=`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Modem model (1-64 printable characters).
    pub model: Option<String>,
}

/// Changes to a device: absent members stay as they are, `null` clears `name` or `model`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Substation 4 meter 12b", "tags": ["region:north", "pilot"]}))]
pub struct UpdateDevice {
    /// New name, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// New model, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub model: Option<Option<String>>,
    /// Replacement tag list.
    pub tags: Option<Vec<String>>,
    /// Disable (`true`) or enable (`false`) the device.
    pub disabled: Option<bool>,
    /// Command topic (`MQTT_attopic1`; `[IMEI]` allowed), or `null` for `{IMEI}/AT`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub command_topic: Option<Option<String>>,
    /// Reply topic (`MQTT_atrtopic`), or `null` for `{IMEI}/ATR`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub reply_topic: Option<Option<String>>,
    /// Status topic (`DNS_mqttTopic`), or `null` for `{IMEI}/dns`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub status_topic: Option<Option<String>>,
    /// The modem's `MTX_IDClient` (the bytes it sends first on a tunnel; 1-64 printable
    /// ASCII characters, `[IMEI]` allowed), or `null` for its IMEI.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub id_client: Option<Option<String>>,
}

/// Filters and paging for the device list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Only devices with this tag.
    pub tag: Option<String>,
    /// Case-insensitive text found in the IMEI or the name.
    pub q: Option<String>,
    /// Only devices connected (`true`) or not connected (`false`) to the command channel.
    pub online: Option<bool>,
    /// Only devices in this configuration drift state: `in_sync`, `drifted` or `unknown`
    /// (never read).
    pub drift: Option<String>,
    /// Only devices reporting this firmware version.
    pub firmware: Option<String>,
    /// Only devices of this model (case-insensitive).
    pub model: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One page of devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePage {
    /// Devices in IMEI order.
    pub items: Vec<DeviceView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn check_model(model: &str) -> Result<(), ValidationError> {
    if model.is_empty() || model.chars().count() > 64 || model.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "model",
            "must be 1-64 printable characters",
        ));
    }
    Ok(())
}

/// Parses the `{imei}` path segment, as a 422 naming the field.
pub(crate) fn path_imei(raw: &str) -> Result<Imei, ApiError> {
    Ok(Imei::parse(raw)?)
}

/// Registers a device.
#[utoipa::path(
    post, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    request_body = CreateDevice,
    responses(
        (status = 201, description = "Registered", body = DeviceView),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "IMEI already registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid IMEI, name, tags or model", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_device(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateDevice>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<DeviceView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let imei = Imei::parse(&req.imei)?;
    let name = req.name.as_deref().map(DeviceName::parse).transpose()?;
    let tags = Tag::parse_list(&req.tags)?;
    if let Some(m) = &req.model {
        check_model(m)?;
    }
    let device = state
        .store
        .create_device(&NewDevice {
            imei: imei.clone(),
            name: name.map(String::from),
            model: req.model,
            tags: tags.into_iter().map(String::from).collect(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(imei.to_string())),
        axum::Json(device.into()),
    ))
}

/// Lists devices, filtered, in pages.
#[utoipa::path(
    get, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    params(DeviceQuery),
    responses(
        (status = 200, description = "A page of devices", body = DevicePage),
        (status = 400, description = "Bad cursor or parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_devices(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> Result<axum::Json<DevicePage>, ApiError> {
    p.require(Role::Reader)?;
    let limit = paging::limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c)?),
    };
    let drift = q.drift.as_deref().map(DriftState::parse).transpose()?;
    let page = state
        .store
        .list_devices(&DeviceFilter {
            tag: q.tag,
            text: q.q.filter(|t| !t.is_empty()),
            online: q.online,
            drift,
            firmware: q.firmware.filter(|t| !t.is_empty()),
            model: q.model.filter(|t| !t.is_empty()),
            after,
            limit,
        })
        .await?;
    Ok(axum::Json(DevicePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page
            .next
            .map(|n| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n)),
    }))
}

/// The text of a base64url cursor handed out by a listing (400 if it is not one).
pub(crate) fn decode_cursor(c: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad-query-parameter",
                "cursor: not a cursor returned by this API",
            )
        })
}

/// One device.
#[utoipa::path(
    get, path = "/api/v1/devices/{imei}", tag = "devices", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "The device, with its active certificate", body = DeviceDetail),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid IMEI", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_device(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<DeviceDetail>, ApiError> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    let device = state.store.get_device(&imei).await?;
    let now = time::OffsetDateTime::now_utc();
    let certificate = state
        .store
        .active_certificate(&imei, device.presence.cert_serial.as_deref(), now)
        .await?
        .map(|c| ActiveCertificate {
            days_left: callhome_core::certificates::days_left(c.not_after, now),
            not_after: rfc3339(c.not_after),
            serial: c.serial,
        });
    Ok(axum::Json(DeviceDetail {
        device: device.into(),
        certificate,
    }))
}

/// Changes a device's name, model, tags or disabled flag.
#[utoipa::path(
    patch, path = "/api/v1/devices/{imei}", tag = "devices", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = UpdateDevice,
    responses(
        (status = 200, description = "Updated", body = DeviceView),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid value", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_device(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateDevice>,
) -> Result<axum::Json<DeviceView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let name = match req.name {
        Some(Some(n)) => Some(Some(DeviceName::parse(&n)?.to_string())),
        other => other,
    };
    if let Some(Some(m)) = &req.model {
        check_model(m)?;
    }
    let tags = req
        .tags
        .as_deref()
        .map(Tag::parse_list)
        .transpose()?
        .map(|t| t.into_iter().map(String::from).collect());
    if let Some(Some(id)) = &req.id_client
        && (id.is_empty() || id.len() > 64 || !id.bytes().all(|b| (0x20..0x7f).contains(&b)))
    {
        return Err(
            ValidationError::new("id_client", "must be 1-64 printable ASCII characters").into(),
        );
    }
    for (field, topic) in [
        ("command_topic", &req.command_topic),
        ("reply_topic", &req.reply_topic),
        ("status_topic", &req.status_topic),
    ] {
        if let Some(Some(t)) = topic {
            callhome_gateway::topics::check_topic(field, t)?;
        }
    }
    let device = state
        .store
        .update_device(
            &imei,
            &DevicePatch {
                name,
                model: req.model,
                tags,
                disabled: req.disabled,
                command_topic: req.command_topic,
                reply_topic: req.reply_topic,
                status_topic: req.status_topic,
                mqtt_credentials: None,
                id_client: req.id_client,
            },
        )
        .await?;
    if device.disabled {
        // A disabled device may not stay connected either.
        state.revoke_device_access(&imei).await;
    }
    Ok(axum::Json(device.into()))
}

/// Legacy MQTT login for a modem without a client certificate (`MQTT_login` /
/// `MQTT_password` in its Config.txt).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "jfj1usly8ijhh9hizfr453", "password": "gthhdte67y3ttes33fgg"}))]
pub struct MqttCredentials {
    /// Login name, unique across devices (1-64 characters, no spaces).
    pub username: String,
    /// Password (8-256 characters); stored as an argon2 hash.
    pub password: String,
}

/// Sets legacy MQTT credentials. The modem then connects over server-authenticated TLS
/// with this login and its IMEI as client id (the gateway must allow password logins).
#[utoipa::path(
    put, path = "/api/v1/devices/{imei}/mqtt-credentials", tag = "devices", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body = MqttCredentials,
    responses(
        (status = 200, description = "Set", body = DeviceView),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "User name used by another device", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user name or password", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set_mqtt_credentials(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    ApiJson(req): ApiJson<MqttCredentials>,
) -> Result<axum::Json<DeviceView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let n = req.username.chars().count();
    if n == 0
        || n > 64
        || req
            .username
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(
            ValidationError::new("username", "must be 1-64 characters without spaces").into(),
        );
    }
    let pw = req.password.chars().count();
    if !(8..=256).contains(&pw) {
        return Err(ValidationError::new("password", "must be 8-256 characters").into());
    }
    let hash = crate::auth::hash_password(state.gateway.passwords(), req.password).await?;
    let device = state
        .store
        .update_device(
            &imei,
            &DevicePatch {
                mqtt_credentials: Some(Some((req.username, hash))),
                ..Default::default()
            },
        )
        .await?;
    Ok(axum::Json(device.into()))
}

/// Removes legacy MQTT credentials: the modem must use its client certificate.
#[utoipa::path(
    delete, path = "/api/v1/devices/{imei}/mqtt-credentials", tag = "devices", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 200, description = "Removed", body = DeviceView),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_mqtt_credentials(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<DeviceView>, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let device = state
        .store
        .update_device(
            &imei,
            &DevicePatch {
                mqtt_credentials: Some(None),
                ..Default::default()
            },
        )
        .await?;
    Ok(axum::Json(device.into()))
}

/// Removes a device from the registry. Its certificates stay in the inventory (revoke them
/// first if the modem is being retired).
#[utoipa::path(
    delete, path = "/api/v1/devices/{imei}", tag = "devices", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_device(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    state.store.delete_device(&imei).await?;
    state.revoke_device_access(&imei).await;
    Ok(StatusCode::NO_CONTENT)
}
