//! Bulk jobs (`/api/v1/jobs`): one operation over many devices, rolled out under rate,
//! wave and abort rules; and the one-device apply (`POST /api/v1/devices/{imei}/config/apply`).

use axum::extract::State;
use axum::http::StatusCode;
use callhome_core::Role;
use callhome_core::firmware::{ExecEventKind, UpdateOutcome};
use callhome_core::jobs::{ExecState, JobState, RestartPolicy, Rollout};
use callhome_fleet::engine::Job;
use callhome_fleet::{NewJobRequest, Operation, Target};
use callhome_store::{JobDeviceFilter, JobDeviceRecord, JobFilter, JobProgress};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::context::AuditTarget;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::devices::path_imei;
use crate::routes::paging;
use crate::time_format::{rfc3339, rfc3339_opt};

/// Executions by state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressView {
    /// Every target device.
    pub total: i64,
    /// Not started (offline devices wait here until they connect or the job expires).
    pub pending: i64,
    /// Started.
    pub in_progress: i64,
    /// Done.
    pub succeeded: i64,
    /// Done with an error.
    pub failed: i64,
    /// Never started: the job was cancelled or aborted.
    pub cancelled: i64,
    /// Never started: the job expired first.
    pub expired: i64,
    /// Not run: the device did not qualify (firmware for another model, already at the
    /// target version).
    pub skipped: i64,
}

impl From<JobProgress> for ProgressView {
    fn from(p: JobProgress) -> Self {
        Self {
            total: p.total,
            pending: p.pending,
            in_progress: p.in_progress,
            succeeded: p.succeeded,
            failed: p.failed,
            cancelled: p.cancelled,
            expired: p.expired,
            skipped: p.skipped,
        }
    }
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: Option<String>,
    /// What it does on each device.
    pub operation: Operation,
    /// The target as given (resolved to devices when the job was created).
    pub target: Target,
    /// Rollout rules.
    pub rollout: Rollout,
    /// Restart policy of configuration operations.
    pub restart: RestartPolicy,
    /// `running`, `paused`, `completed`, `aborted`, `cancelled` or `expired`.
    pub state: JobState,
    /// Why it is in that state (abort rule, operator).
    pub state_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339: last state change.
    pub updated_at: String,
    /// RFC 3339: when it reached a final state.
    pub finished_at: Option<String>,
    /// RFC 3339: devices not done by then end `expired`.
    pub expires_at: String,
    /// The wave now allowed to start (1-based).
    pub current_wave: i64,
    /// Executions by state.
    pub progress: ProgressView,
}

/// The operation as shown: values of secret keys (`MTX_PIN`, passwords) as `***` unless the
/// caller is an admin.
fn shown_operation(op: Operation, p: &Principal) -> Operation {
    match op {
        Operation::SetKeys { keys } if !p.role.allows(Role::Admin) => Operation::SetKeys {
            keys: keys
                .into_iter()
                .map(|(k, v)| {
                    let v = v.map(|v| {
                        if !v.is_empty() && callhome_core::configtxt::schema::is_secret(&k) {
                            callhome_core::configtxt::REDACTED.to_owned()
                        } else {
                            v
                        }
                    });
                    (k, v)
                })
                .collect(),
        },
        other => other,
    }
}

fn job_view(job: Job, progress: JobProgress, p: &Principal) -> JobView {
    let r = job.record;
    JobView {
        id: r.id,
        name: r.name,
        operation: shown_operation(job.operation, p),
        target: job.target,
        rollout: job.rollout,
        restart: job.restart,
        state: r.state,
        state_reason: r.state_reason,
        created_at: rfc3339(r.created_at),
        created_by: r.created_by,
        updated_at: rfc3339(r.updated_at),
        finished_at: rfc3339_opt(r.finished_at),
        expires_at: rfc3339(r.expires_at),
        current_wave: r.current_wave,
        progress: progress.into(),
    }
}

async fn view(state: &AppState, job: Job, p: &Principal) -> Result<JobView, ApiError> {
    let progress = state.jobs.progress(job.record.id).await?;
    Ok(job_view(job, progress, p))
}

/// One device's execution of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDeviceView {
    /// The device.
    pub imei: String,
    /// `pending`, `in_progress`, `succeeded`, `failed`, `cancelled`, `expired` or `skipped`.
    pub state: ExecState,
    /// Wave (1-based).
    pub wave: i64,
    /// Executions started: 1, or more for recorded retries.
    pub attempts: i64,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// How a firmware update ended (firmware campaigns only): `updated`, `already_current`,
    /// `incompatible`, `rolled_back`, `timed_out`, `download_failed`, `install_failed` or
    /// `interrupted`.
    pub outcome: Option<UpdateOutcome>,
    /// Detail: for configuration operations `{"keys": [{"key", "desired", "before", "after",
    /// "status": "applied|unchanged|failed|mismatch"}], "unchanged": N, "writes": N,
    /// "restarted": bool}`; for an AT command `{"command_id", "reply"}`; for a reboot
    /// `{"restarted", "version"}`; for a firmware update `{"version_before", "target",
    /// "version_after", "download": {"requests", "resumptions", "bytes_served"}}`.
    /// Secrets as `***`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

impl From<JobDeviceRecord> for JobDeviceView {
    fn from(d: JobDeviceRecord) -> Self {
        Self {
            imei: d.imei.to_string(),
            state: d.state,
            wave: d.wave,
            attempts: d.attempts,
            started_at: rfc3339_opt(d.started_at),
            finished_at: rfc3339_opt(d.finished_at),
            error: d.error,
            outcome: d.outcome,
            result: d.result.and_then(|r| serde_json::from_str(&r).ok()),
        }
    }
}

/// One entry of an execution's event log.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecEventView {
    /// RFC 3339.
    pub at: String,
    /// What happened: `version_before`, `skipped`, `command_acknowledged`,
    /// `download_started`, `download_resumed`, `download_completed`, `download_refused`,
    /// `descriptor_served`, `install_notified`, `reconnected` or `version_seen`.
    pub kind: ExecEventKind,
    /// Detail (range served, status code, version...).
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// One device's execution of a job, with its event log.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDeviceDetail {
    /// The execution.
    #[serde(flatten)]
    pub execution: JobDeviceView,
    /// What happened, oldest first (firmware campaigns record their steps here).
    pub events: Vec<ExecEventView>,
}

/// One page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Jobs, newest first.
    pub items: Vec<JobView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One page of executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDevicePage {
    /// Executions in rollout order.
    pub items: Vec<JobDeviceView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Job list filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// Execution list filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobDeviceQuery {
    /// Only executions in this state (e.g. `failed`).
    pub state: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| callhome_core::ValidationError::new("id", "not a job id (UUID)").into())
}

/// Creates a job. Its targets are resolved now; it starts at once.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", security(("bearer" = [])),
    request_body(content = NewJobRequest, example = json!({
        "name": "DNS period 300 s, north",
        "operation": {"type": "set_keys", "keys": {"DNS_period": "300"}},
        "target": {"tag_expr": "region:north and not pilot"},
        "rollout": {"max_in_flight": 50, "max_per_minute": 600,
                    "ramp": {"base_per_minute": 60, "increment_factor": 2.0, "every_succeeded": 50},
                    "waves": [1, 10, 100], "abort": {"failure_percent": 10.0, "min_executed": 50},
                    "expires_in_s": 86400, "command_timeout_s": 30},
        "restart": "auto"})),
    responses(
        (status = 201, description = "Created and started", body = JobView),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid operation, target or rollout, unknown IMEIs, or no device matches (each field named)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_job(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<NewJobRequest>,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<JobView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let job = state.jobs.create(req, &p.name).await?;
    let target = format!("job {}", job.record.id);
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(target)),
        axum::Json(view(&state, job, &p).await?),
    ))
}

/// Lists jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(JobQuery),
    responses((status = 200, description = "A page of jobs", body = JobPage)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<axum::Json<JobPage>, ApiError> {
    p.require(Role::Operator)?;
    let states = match q.state.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => vec![JobState::parse(s)?],
    };
    let page = state
        .jobs
        .list(&JobFilter {
            states,
            before: paging::cursor(q.cursor.as_deref())?,
            limit: paging::limit(q.limit)?,
        })
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for j in page.items {
        items.push(view(&state, j, &p).await?);
    }
    Ok(axum::Json(JobPage {
        items,
        next_cursor: page.next,
    }))
}

/// A job with its progress.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    p.require(Role::Operator)?;
    let job = state.jobs.get(job_id(&id)?).await?;
    Ok(axum::Json(view(&state, job, &p).await?))
}

/// A job's per-device executions, in rollout order.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/devices", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), JobDeviceQuery),
    responses(
        (status = 200, description = "A page of executions", body = JobDevicePage),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_job_devices(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<JobDeviceQuery>,
) -> Result<axum::Json<JobDevicePage>, ApiError> {
    p.require(Role::Operator)?;
    let state_filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ExecState::parse(s)?),
    };
    let page = state
        .jobs
        .devices(&JobDeviceFilter {
            job_id: job_id(&id)?,
            state: state_filter,
            after_seq: paging::cursor(q.cursor.as_deref())?,
            limit: paging::limit(q.limit)?,
        })
        .await?;
    Ok(axum::Json(JobDevicePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}

/// One device's execution of a job, with its outcome and event log.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/devices/{imei}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), ("imei" = String, Path, description = "Device IMEI")),
    responses(
        (status = 200, description = "The execution", body = JobDeviceDetail),
        (status = 404, description = "No such job, or the device is not one of its targets", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad job id or IMEI", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job_device(
    State(state): State<AppState>,
    p: Principal,
    ApiPath((id, imei)): ApiPath<(String, String)>,
) -> Result<axum::Json<JobDeviceDetail>, ApiError> {
    p.require(Role::Operator)?;
    let id = job_id(&id)?;
    let imei = path_imei(&imei)?;
    let execution = state.store.get_job_device(id, &imei).await?;
    let events = state
        .store
        .list_job_events(id, &imei)
        .await?
        .into_iter()
        .map(|e| ExecEventView {
            at: rfc3339(e.at),
            kind: e.kind,
            detail: e.detail.and_then(|d| serde_json::from_str(&d).ok()),
        })
        .collect();
    Ok(axum::Json(JobDeviceDetail {
        execution: execution.into(),
        events,
    }))
}

macro_rules! control {
    ($fn:ident, $path:literal, $method:ident, $doc:literal, $what:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "jobs", security(("bearer" = [])),
            params(("id" = String, Path, description = "Job id")),
            responses(
                (status = 200, description = "Done", body = JobView),
                (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = $what, body = Problem, content_type = "application/problem+json"),
            ))]
        pub async fn $fn(
            State(state): State<AppState>,
            p: Principal,
            ApiPath(id): ApiPath<String>,
        ) -> Result<(axum::extract::Extension<AuditTarget>, axum::Json<JobView>), ApiError> {
            p.require(Role::Operator)?;
            let id = job_id(&id)?;
            let job = state.jobs.$method(id, &p.name).await?;
            Ok((
                axum::extract::Extension(AuditTarget(format!("job {id}"))),
                axum::Json(view(&state, job, &p).await?),
            ))
        }
    };
}

control!(
    pause_job,
    "/api/v1/jobs/{id}/pause",
    pause,
    "Pauses a running job: no new executions start; the ones in flight finish.",
    "The job is not running"
);
control!(
    resume_job,
    "/api/v1/jobs/{id}/resume",
    resume,
    "Resumes a paused job.",
    "The job is not paused"
);
control!(
    cancel_job,
    "/api/v1/jobs/{id}/cancel",
    cancel,
    "Cancels a running or paused job: devices not started end `cancelled`; the ones in flight finish.",
    "The job already ended"
);

/// Options of a one-device apply.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// When to restart the modem (default `auto`: when a changed key needs it).
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// Applies the device's effective desired configuration: the minimal `SETPARAM`s through
/// its command queue, the restart they need, a read-back and a per-key result. Runs as a
/// one-device job (follow it with `GET /api/v1/jobs/{id}` and `/devices`); an offline device
/// gets it when it connects.
#[utoipa::path(post, path = "/api/v1/devices/{imei}/config/apply", tag = "configuration", security(("bearer" = [])),
    params(("imei" = String, Path, description = "15-digit IMEI", example = "490154203237518")),
    request_body(content = Option<ApplyRequest>, description = "Optional; `{}` for the defaults"),
    responses(
        (status = 201, description = "The apply job", body = JobView),
        (status = 404, description = "Device not registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The effective configuration is invalid", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn apply_config(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(imei): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<
    (
        StatusCode,
        axum::extract::Extension<AuditTarget>,
        axum::Json<JobView>,
    ),
    ApiError,
> {
    p.require(Role::Operator)?;
    let imei = path_imei(&imei)?;
    let req: ApplyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ApplyRequest::default()
    } else {
        serde_json::from_slice::<Option<ApplyRequest>>(&body)
            .map_err(|e| callhome_core::ValidationError::new("body", e.to_string()))?
            .unwrap_or_default()
    };
    // Refuse now what would fail on the device anyway.
    let eff = state.config.desired(&imei).await?.compose(&imei)?;
    let report = eff.config.validate();
    if !report.errors.is_empty() {
        return Err(ApiError::ValidationMany(report.errors));
    }
    let job = state
        .jobs
        .create(
            NewJobRequest {
                name: Some(format!("apply configuration to {imei}")),
                operation: Operation::ApplyConfig,
                target: Target {
                    imeis: Some(vec![imei.to_string()]),
                    ..Target::default()
                },
                rollout: Rollout {
                    max_in_flight: 1,
                    ..Rollout::default()
                },
                restart: req.restart,
            },
            &p.name,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::extract::Extension(AuditTarget(imei.to_string())),
        axum::Json(view(&state, job, &p).await?),
    ))
}
