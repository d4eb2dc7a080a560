//! The firmware repository: `POST /api/v1/firmware` (a streamed multipart upload),
//! `GET /api/v1/firmware`, `GET|DELETE /api/v1/firmware/{id}`,
//! `GET /api/v1/firmware/{id}/blob`, `GET /api/v1/firmware/distribution`, and a device's
//! firmware history `GET /api/v1/devices/{imei}/firmware-history`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use callhome_core::firmware::{FirmwareKind, Version, check_model};
use callhome_core::otap::Jad;
use callhome_core::{Role, ValidationError};
use callhome_firmware::{BlobStore, BlobWriter, Committed, Digest, FirmwareError, SigningKeys};
use callhome_store::FirmwareRecord;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::routes::paging;
use crate::time_format::rfc3339;

/// Largest `metadata` or `jad` part.
const MAX_SMALL_PART: usize = 64 * 1024;
/// Longest release notes.
const MAX_NOTES: usize = 4096;

/// The firmware repository as the API serves it.
#[derive(Clone)]
pub struct FirmwareRepo {
    /// Where the files are.
    pub blobs: Arc<dyn BlobStore>,
    /// Keys that may sign firmware.
    pub keys: Arc<SigningKeys>,
    /// Refuse uploads without a signature that one of `keys` verifies.
    pub require_signature: bool,
    /// Largest file accepted, bytes.
    pub max_upload_bytes: u64,
    /// Models accepted besides the ones devices report.
    pub models: Arc<Vec<String>>,
}

impl std::fmt::Debug for FirmwareRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareRepo")
            .field("blobs", &self.blobs)
            .field("keys", &self.keys.len())
            .field("require_signature", &self.require_signature)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .finish_non_exhaustive()
    }
}

impl From<FirmwareError> for ApiError {
    fn from(e: FirmwareError) -> Self {
        match e {
            e @ FirmwareError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            e @ (FirmwareError::BadSignature { .. } | FirmwareError::NoSigningKeys) => {
                ApiError::Validation(ValidationError::new("signature", e.to_string()))
            }
            e @ (FirmwareError::BadJar(_)
            | FirmwareError::Jad(_)
            | FirmwareError::JadMismatch { .. }) => {
                ApiError::Validation(ValidationError::new("jad", e.to_string()))
            }
            e @ FirmwareError::NotFound(_) => ApiError::NotFound(e.to_string()),
            e @ FirmwareError::InvalidDigest(_) => {
                ApiError::bad_request("invalid-digest", e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The `metadata` part of an upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": "11.1.0", "models": ["EHS6", "TC65i"], "kind": "image",
    "notes": "fixes the DNS period", "min_version": "11.0.0"}))]
pub struct UploadMetadata {
    /// The version the firmware installs (what `VERSION` reports after it).
    pub version: String,
    /// The models it is for (as the modems report them).
    pub models: Vec<String>,
    /// `image` (a whole firmware image) or `midlet` (a Java ME JAR installed by OTAP).
    pub kind: FirmwareKind,
    /// Release notes (at most 4096 characters).
    #[serde(default)]
    pub notes: Option<String>,
    /// Devices below this version may not take it.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Detached signature, base64: Ed25519 or ECDSA P-256 (DER or r||s) over the 32 raw
    /// bytes of the file's SHA-256.
    #[serde(default)]
    pub signature: Option<String>,
}

/// The multipart form of an upload (for the OpenAPI document).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// JSON [`UploadMetadata`].
    metadata: UploadMetadata,
    /// The image or JAR (streamed to disk, never held in memory).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// A MIDlet's JAD (optional; made from the JAR's manifest when absent).
    #[schema(value_type = Option<String>, format = Binary)]
    jad: Option<Vec<u8>>,
}

/// A firmware in the repository.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwareView {
    /// Id.
    pub id: Uuid,
    /// The version it installs.
    pub version: String,
    /// The models it is for.
    pub models: Vec<String>,
    /// `image` or `midlet`.
    pub kind: FirmwareKind,
    /// SHA-256 of the file, hex (also its download `ETag`).
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Release notes.
    pub notes: Option<String>,
    /// Minimum version a device must run.
    pub min_version: Option<String>,
    /// The signing key whose signature verified (absent: not signed).
    pub signed_by: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Who uploaded it.
    pub created_by: String,
}

impl From<FirmwareRecord> for FirmwareView {
    fn from(f: FirmwareRecord) -> Self {
        Self {
            id: f.id,
            version: f.version,
            models: f.models,
            kind: f.kind,
            sha256: f.sha256,
            size: f.size,
            notes: f.notes,
            min_version: f.min_version,
            signed_by: f.signed_by,
            created_at: rfc3339(f.created_at),
            created_by: f.created_by,
        }
    }
}

/// One page of firmware.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwarePage {
    /// Newest first.
    pub items: Vec<FirmwareView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FirmwareQuery {
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// How many devices report one model and version.
#[derive(Debug, Serialize, ToSchema)]
pub struct DistributionEntry {
    /// Model (absent: not reported yet).
    pub model: Option<String>,
    /// Firmware version (absent: not reported yet).
    pub version: Option<String>,
    /// Devices.
    pub devices: i64,
}

/// Devices per model and version.
#[derive(Debug, Serialize, ToSchema)]
pub struct Distribution {
    /// Most devices first.
    pub items: Vec<DistributionEntry>,
    /// Every device counted.
    pub total: i64,
}

/// One change in what a device reported.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwareHistoryView {
    /// RFC 3339.
    pub at: String,
    /// Model reported.
    pub model: Option<String>,
    /// Version reported.
    pub version: Option<String>,
    /// `version` (a VERSION reply) or `status` (a status message).
    pub source: String,
}

fn firmware_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ValidationError::new("id", "not a firmware id (UUID)").into())
}

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("the upload is too large: {}", e.body_text()))
    } else {
        ApiError::bad_request(
            "invalid-multipart",
            format!("malformed multipart body: {}", e.body_text()),
        )
    }
}

async fn small_part(mut field: Field<'_>, name: &str) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
        if out.len() + chunk.len() > MAX_SMALL_PART {
            return Err(ApiError::PayloadTooLarge(format!(
                "the {name} part is larger than {MAX_SMALL_PART} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Streams the `file` part into a new blob; the writer is returned uncommitted.
async fn file_part(
    repo: &FirmwareRepo,
    mut field: Field<'_>,
) -> Result<Box<dyn BlobWriter>, ApiError> {
    let mut w = repo.blobs.begin(repo.max_upload_bytes).await?;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if let Err(e) = w.write(&chunk).await {
                    return Err(e.into());
                }
            }
            Ok(None) => return Ok(w),
            Err(e) => {
                w.abort().await;
                return Err(multipart_error(&e));
            }
        }
    }
}

/// Checks the metadata; the models must be known (reported by some device, or listed in
/// the settings).
async fn check_metadata(
    state: &AppState,
    m: &UploadMetadata,
) -> Result<(Version, Option<Version>), ApiError> {
    let mut errors = Vec::new();
    let version = Version::parse(&m.version).map_err(|e| errors.push(e)).ok();
    let min = m
        .min_version
        .as_deref()
        .map(|v| Version::parse(v).map_err(|e| e.at("min_version")))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    if m.notes
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NOTES)
    {
        errors.push(ValidationError::new(
            "notes",
            format!("at most {MAX_NOTES} characters"),
        ));
    }
    if m.models.is_empty() {
        errors.push(ValidationError::new("models", "name at least one model"));
    }
    if m.models.len() > callhome_core::firmware::MAX_MODELS {
        errors.push(ValidationError::new(
            "models",
            format!("at most {} models", callhome_core::firmware::MAX_MODELS),
        ));
    }
    let mut bad_models = false;
    for (i, model) in m.models.iter().enumerate() {
        if let Err(e) = check_model(model) {
            errors.push(e.at(format!("models[{i}]")));
            bad_models = true;
        }
    }
    if !bad_models && !m.models.is_empty() {
        let reported = state.store.firmware_distribution().await?;
        let known = |model: &str| {
            state
                .firmware
                .models
                .iter()
                .any(|k| k.eq_ignore_ascii_case(model))
                || reported.iter().any(|r| {
                    r.model
                        .as_deref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(model))
                })
        };
        for (i, model) in m.models.iter().enumerate() {
            if !known(model) {
                errors.push(ValidationError::new(
                    format!("models[{i}]"),
                    format!(
                        "unknown model {model:?}: no device reports it and it is not in the firmware.models setting"
                    ),
                ));
            }
        }
    }
    match version {
        Some(v) if errors.is_empty() => Ok((v, min)),
        _ => Err(ApiError::ValidationMany(errors)),
    }
}

/// The JAD to keep for a MIDlet: the uploaded one checked against the JAR, or one made
/// from the JAR's manifest. Reads the JAR with blocking zip code on a blocking thread.
async fn midlet_descriptor(
    repo: &FirmwareRepo,
    c: &Committed,
    version: &Version,
    jad: Option<Vec<u8>>,
) -> Result<String, ApiError> {
    let path = repo.blobs.local_path(&c.digest).ok_or_else(|| {
        ApiError::Internal("the blob store has no local file to read the JAR from".into())
    })?;
    let manifest = tokio::task::spawn_blocking(move || callhome_firmware::check_jar(&path))
        .await
        .map_err(|e| ApiError::Internal(format!("JAR check task: {e}")))??;
    let jad = match jad {
        Some(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| ValidationError::new("jad", "is not UTF-8 text"))?;
            let jad = Jad::parse(&text).map_err(|e| ValidationError::new("jad", e.to_string()))?;
            callhome_firmware::check_jad_matches(&jad, &manifest, c.size)?;
            jad
        }
        None => {
            let get = |name: &str| manifest.get(name).unwrap_or_default().to_owned();
            Jad::for_release(
                &get("MIDlet-Name"),
                &get("MIDlet-Vendor"),
                &get("MIDlet-Version"),
                "firmware.jar",
                c.size,
                "notify",
            )
            .map_err(|e| ValidationError::new("file", format!("the JAR's manifest: {e}")))?
        }
    };
    if jad.get("MIDlet-Version") != Some(version.as_str()) {
        return Err(ValidationError::new(
            "version",
            format!(
                "the MIDlet's version is {:?}, the metadata says {version}",
                jad.get("MIDlet-Version").unwrap_or("")
            ),
        )
        .into());
    }
    Ok(jad.render())
}

/// Adds a firmware: `multipart/form-data` with a `metadata` part (JSON) and a `file` part
/// (streamed to disk while its SHA-256 is computed; a MIDlet may add a `jad` part). The
/// file's signature, if any, is checked against the configured keys (required when
/// `firmware.require_signature` is on). The same file twice is a conflict naming the
/// firmware that has it. A refused upload leaves nothing behind.
#[utoipa::path(post, path = "/api/v1/firmware", tag = "firmware", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Added", body = FirmwareView),
        (status = 400, description = "Malformed multipart body, a part missing, twice or unknown", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This file is already in the repository", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than firmware.max_upload_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad metadata, unknown model, bad or missing signature, JAD that does not match its JAR", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn upload_firmware(
    State(state): State<AppState>,
    p: Principal,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<FirmwareView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::UnsupportedMediaType(format!("expected multipart/form-data: {}", e.body_text()))
    })?;
    let repo = state.firmware.clone();
    let mut metadata: Option<Vec<u8>> = None;
    let mut jad: Option<Vec<u8>> = None;
    let mut file: Option<Box<dyn BlobWriter>> = None;
    let outcome: Result<(), ApiError> = async {
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(&e))?
        {
            let name = field.name().unwrap_or("").to_owned();
            let twice = || {
                ApiError::bad_request(
                    "invalid-multipart",
                    format!("the {name} part is given twice"),
                )
            };
            match name.as_str() {
                "metadata" if metadata.is_some() => return Err(twice()),
                "metadata" => metadata = Some(small_part(field, "metadata").await?),
                "jad" if jad.is_some() => return Err(twice()),
                "jad" => jad = Some(small_part(field, "jad").await?),
                "file" if file.is_some() => return Err(twice()),
                "file" => file = Some(file_part(&repo, field).await?),
                other => {
                    return Err(ApiError::bad_request(
                        "invalid-multipart",
                        format!(
                            "unknown part {other:?}: expected metadata, file and (for a MIDlet) jad"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        if let Some(w) = file {
            w.abort().await;
        }
        return Err(e);
    }
    let (Some(metadata), Some(writer)) = (metadata, file) else {
        return Err(ApiError::bad_request(
            "invalid-multipart",
            "the upload needs a metadata part and a file part",
        ));
    };
    let meta: UploadMetadata = match serde_json::from_slice(&metadata) {
        Ok(m) => m,
        Err(e) => {
            writer.abort().await;
            return Err(
                ValidationError::new("metadata", format!("not valid metadata JSON: {e}")).into(),
            );
        }
    };
    let checked = check_metadata(&state, &meta).await;
    let (version, min_version) = match checked {
        Ok(v) => v,
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    };
    if jad.is_some() && meta.kind != FirmwareKind::Midlet {
        writer.abort().await;
        return Err(ValidationError::new("jad", "only a midlet firmware has a JAD").into());
    }
    let signature = match meta
        .signature
        .as_deref()
        .map(|s| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s.trim()))
    {
        None => None,
        Some(Ok(sig)) => Some(sig),
        Some(Err(_)) => {
            writer.abort().await;
            return Err(ValidationError::new("signature", "is not base64").into());
        }
    };
    if signature.is_none() && repo.require_signature {
        writer.abort().await;
        return Err(ValidationError::new(
            "signature",
            "firmware.require_signature is on: the upload must carry a signature",
        )
        .into());
    }
    let committed = writer.commit().await?;
    let digest = committed.digest;
    // From here a failure removes the blob, unless it was there before this upload.
    let result = finish_upload(
        &state,
        &repo,
        &p,
        committed,
        meta,
        version,
        min_version,
        signature,
        jad,
    )
    .await;
    if result.is_err() && !committed.existed {
        let used = state
            .store
            .firmware_by_sha256(&digest.to_hex())
            .await
            .ok()
            .flatten();
        if used.is_none()
            && let Err(e) = repo.blobs.delete(&digest).await
        {
            tracing::warn!(error = %e, %digest, "could not remove a refused upload's file");
        }
    }
    let fw = result?;
    state.gateway.events().publish(
        None,
        callhome_core::events::EventPayload::FirmwareUploaded(callhome_core::events::FirmwareRef {
            id: fw.id,
            version: fw.version.clone(),
        }),
    );
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(format!("firmware {}", fw.id))),
        axum::Json(fw.into()),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn finish_upload(
    state: &AppState,
    repo: &FirmwareRepo,
    p: &Principal,
    c: Committed,
    meta: UploadMetadata,
    version: Version,
    min_version: Option<Version>,
    signature: Option<Vec<u8>>,
    jad: Option<Vec<u8>>,
) -> Result<FirmwareRecord, ApiError> {
    if c.size == 0 {
        return Err(ValidationError::new("file", "is empty").into());
    }
    if let Some(existing) = state.store.firmware_by_sha256(&c.digest.to_hex()).await? {
        return Err(ApiError::Conflict(format!(
            "this file is already in the repository as firmware {} (version {})",
            existing.id, existing.version
        )));
    }
    let signed_by = match &signature {
        Some(sig) => Some(repo.keys.verify(&c.digest, sig)?.name().to_owned()),
        None => None,
    };
    let jad = match meta.kind {
        FirmwareKind::Midlet => Some(midlet_descriptor(repo, &c, &version, jad).await?),
        FirmwareKind::Image => None,
    };
    let record = FirmwareRecord {
        id: Uuid::now_v7(),
        version: version.to_string(),
        models: meta.models,
        kind: meta.kind,
        notes: meta.notes,
        min_version: min_version.map(String::from),
        sha256: c.digest.to_hex(),
        size: i64::try_from(c.size).unwrap_or(i64::MAX),
        signed_by,
        jad,
        created_at: OffsetDateTime::now_utc(),
        created_by: p.name.clone(),
    };
    Ok(state.store.create_firmware(&record).await?)
}

/// The repository, newest first.
#[utoipa::path(get, path = "/api/v1/firmware", tag = "firmware", security(("bearer" = [])),
    params(FirmwareQuery),
    responses(
        (status = 200, description = "A page of firmware", body = FirmwarePage),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_firmware(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<FirmwareQuery>,
) -> Result<axum::Json<FirmwarePage>, ApiError> {
    p.require(Role::Operator)?;
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            Uuid::parse_str(c)
                .map_err(|_| ValidationError::new("cursor", "not a cursor from this list"))?,
        ),
    };
    let page = state
        .store
        .list_firmware(before, paging::limit(q.limit)?)
        .await?;
    Ok(axum::Json(FirmwarePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}

/// One firmware.
#[utoipa::path(get, path = "/api/v1/firmware/{id}", tag = "firmware", security(("bearer" = [])),
    params(("id" = String, Path, description = "Firmware id")),
    responses(
        (status = 200, description = "The firmware", body = FirmwareView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such firmware", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_firmware(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<FirmwareView>, ApiError> {
    p.require(Role::Operator)?;
    Ok(axum::Json(
        state.store.get_firmware(firmware_id(&id)?).await?.into(),
    ))
}

/// Removes a firmware and its file; refused while a running or paused campaign uses it.
#[utoipa::path(delete, path = "/api/v1/firmware/{id}", tag = "firmware", security(("bearer" = [])),
    params(("id" = String, Path, description = "Firmware id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such firmware", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A campaign uses it", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_firmware(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, axum::extract::Extension<AuditTarget>), ApiError> {
    p.require(Role::Operator)?;
    let id = firmware_id(&id)?;
    let fw = state.store.delete_firmware(id).await?;
    let digest: Digest = fw.sha256.parse()?;
    if let Err(e) = state.firmware.blobs.delete(&digest).await {
        tracing::warn!(error = %e, %digest, "could not remove a deleted firmware's file");
    }
    state.gateway.events().publish(
        None,
        callhome_core::events::EventPayload::FirmwareDeleted(callhome_core::events::FirmwareRef {
            id,
            version: fw.version,
        }),
    );
    Ok((
        StatusCode::NO_CONTENT,
        axum::extract::Extension(AuditTarget(format!("firmware {id}"))),
    ))
}

/// A firmware's file (`Range` requests are honoured).
#[utoipa::path(get, path = "/api/v1/firmware/{id}/blob", tag = "firmware", security(("bearer" = [])),
    params(("id" = String, Path, description = "Firmware id")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "Part of the file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such firmware", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Range past the end", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_firmware_blob(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    p.require(Role::Operator)?;
    let fw = state.store.get_firmware(firmware_id(&id)?).await?;
    let served = crate::device::serve_file(&state.firmware.blobs, &fw, &headers, None).await?;
    Ok(served.response)
}

/// Devices per reported model and firmware version.
#[utoipa::path(get, path = "/api/v1/firmware/distribution", tag = "firmware", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts", body = Distribution),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn distribution(
    State(state): State<AppState>,
    p: Principal,
) -> Result<axum::Json<Distribution>, ApiError> {
    p.require(Role::Reader)?;
    let rows = state.store.firmware_distribution().await?;
    let total = rows.iter().map(|r| r.devices).sum();
    Ok(axum::Json(Distribution {
        items: rows
            .into_iter()
            .map(|r| DistributionEntry {
                model: r.model,
                version: r.version,
                devices: r.devices,
            })
            .collect(),
        total,
    }))
}

/// What a device reported of its model and firmware over time, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{imei}/firmware-history", tag = "firmware", security(("bearer" = [])),
    params(("imei" = String, Path, description = "Device IMEI")),
    responses(
        (status = 200, description = "Changes, newest first (at most 100)", body = Vec<FirmwareHistoryView>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad IMEI", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn device_history(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
) -> Result<axum::Json<Vec<FirmwareHistoryView>>, ApiError> {
    p.require(Role::Reader)?;
    let imei = path_imei(&imei)?;
    state.store.get_device(&imei).await?;
    let rows = state.store.device_firmware_history(&imei, 100).await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|h| FirmwareHistoryView {
                at: rfc3339(h.at),
                model: h.model,
                version: h.version,
                source: h.source,
            })
            .collect(),
    ))
}
