//! The job engine: creates jobs (targets resolved once), and runs one task per active job
//! that starts executions within the rollout's limits, records each outcome, applies the
//! abort rule, and moves the job to its final state.
//!
//! Restart safety: jobs and executions are rows; the engine keeps no state it cannot rebuild.
//! At start it takes over every running or paused job; executions left `in_progress` by the
//! previous run resume with their command journal ([`crate::journal`]), so a command the modem
//! already got is not sent again and no device is started twice. A pending device is started
//! only by the conditional `pending -> in_progress` update, which one caller wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callhome_core::Imei;
use callhome_core::events::{
    EventPayload, JobCreated, JobDeviceFinished, JobDeviceStarted, JobStateChanged, JobWave,
};
use callhome_core::jobs::{ExecState, JobState, RestartPolicy, Rollout};
use callhome_gateway::EventBus;
use callhome_store::{
    DeviceFilter, JobDeviceFilter, JobDeviceRecord, JobFilter, JobProgress, JobRecord, NewJob,
    Page, Store, StoreError,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::ConfigService;
use crate::exec::{self, Outcome, Timing};
use crate::firmware::{Execution, FirmwareCampaignSettings};
use crate::journal::Journal;
use crate::ops::{CheckedTarget, NewJobRequest, Operation};
use crate::pacing::{self, Counts, StartWindow};
use crate::{FleetError, Result};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// This node's id: the holder of the leases on the jobs it runs.
    pub node_id: String,
    /// How long a job's lease holds without renewal (a node that dies loses its jobs to
    /// another node after this).
    pub lease: Duration,
    /// How often unfinished jobs nobody runs are looked for.
    pub scan: Duration,
    /// How often a driver looks for devices that came online (and re-reads its job).
    pub tick: Duration,
    /// How long a job's command may wait in the device's queue.
    pub queue_wait: Duration,
    /// How long a modem has to come back after a restart.
    pub restart_wait: Duration,
    /// Firmware campaigns' settings.
    pub firmware: FirmwareCampaignSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            node_id: "node1".to_owned(),
            lease: Duration::from_secs(30),
            scan: Duration::from_secs(10),
            tick: Duration::from_secs(1),
            queue_wait: Duration::from_secs(120),
            restart_wait: Duration::from_secs(600),
            firmware: FirmwareCampaignSettings::default(),
        }
    }
}

struct Inner {
    config: ConfigService,
    events: Arc<EventBus>,
    settings: EngineSettings,
    drivers: Mutex<HashMap<Uuid, mpsc::Sender<()>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn store(&self) -> &Arc<dyn Store> {
        self.config.store()
    }
}

/// Creates and runs jobs.
#[derive(Clone)]
pub struct JobEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JobEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEngine")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// The job as stored, decoded.
#[derive(Debug, Clone)]
pub struct Job {
    /// The record.
    pub record: JobRecord,
    /// Its operation.
    pub operation: Operation,
    /// Its target as asked for.
    pub target: crate::ops::Target,
    /// Its rollout.
    pub rollout: Rollout,
    /// Its restart policy.
    pub restart: RestartPolicy,
}

fn decode(record: JobRecord) -> Result<Job> {
    let corrupt = |what: &str, e: serde_json::Error| {
        FleetError::Corrupt(format!("job {} {what}: {e}", record.id))
    };
    let operation = serde_json::from_str(&record.operation).map_err(|e| corrupt("operation", e))?;
    let target = serde_json::from_str(&record.target).map_err(|e| corrupt("target", e))?;
    let rollout = serde_json::from_str(&record.rollout).map_err(|e| corrupt("rollout", e))?;
    let restart = serde_json::from_value(serde_json::Value::String(record.restart.clone()))
        .map_err(|e| corrupt("restart", e))?;
    Ok(Job {
        record,
        operation,
        target,
        rollout,
        restart,
    })
}

impl JobEngine {
    /// An engine; call [`JobEngine::start`] to take over stored jobs.
    pub fn new(
        config: ConfigService,
        events: Arc<EventBus>,
        settings: EngineSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                events,
                settings,
                drivers: Mutex::new(HashMap::new()),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Takes over every running or paused job whose lease is free (after a restart), and
    /// keeps looking for jobs whose node went away.
    pub async fn start(&self) -> Result<usize> {
        let n = self.adopt().await?;
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = engine.inner.shutdown.cancelled() => return,
                    () = tokio::time::sleep(engine.inner.settings.scan) => {}
                }
                if let Err(e) = engine.adopt().await {
                    tracing::warn!(error = %e, "looking for unfinished jobs failed");
                }
            }
        });
        Ok(n)
    }

    /// Starts a driver for every unfinished job not running here (the driver checks the
    /// lease and stops at once if another node holds it).
    async fn adopt(&self) -> Result<usize> {
        let jobs = self.inner.store().unfinished_jobs().await?;
        let mut n = 0;
        for j in &jobs {
            if self.spawn_driver(j.id) {
                tracing::debug!(job = %j.id, state = j.state.as_str(), "unfinished job looked at");
                n += 1;
            }
        }
        Ok(n)
    }

    /// Waits for every driver to stop (after the shutdown token fired).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Starts a driver for the job unless one runs here; whether one was started.
    fn spawn_driver(&self, id: Uuid) -> bool {
        let (tx, rx) = mpsc::channel(4);
        {
            let mut r = self
                .inner
                .drivers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if r.get(&id).is_some_and(|tx| !tx.is_closed()) {
                return false;
            }
            r.insert(id, tx);
        }
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let span = tracing::info_span!("job", job = %id);
            let drive = async {
                match Driver::claim(inner.clone(), id, rx).await? {
                    Some(driver) => driver.run().await,
                    None => Ok(()),
                }
            };
            if let Err(e) = tracing::Instrument::instrument(drive, span).await {
                tracing::error!(job = %id, error = %e, "job driver stopped on an error; it is taken up again shortly");
            }
            let _ = inner.store().release_job(id, &inner.settings.node_id).await;
            inner.drivers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        });
        true
    }

    fn wake(&self, id: Uuid) {
        let tx = self
            .inner
            .drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        match tx {
            Some(tx) if !tx.is_closed() => {
                let _ = tx.try_send(());
            }
            _ => {
                self.spawn_driver(id);
            }
        }
    }

    /// Validates a job, resolves its targets and starts it.
    pub async fn create(&self, req: NewJobRequest, by: &str) -> Result<Job> {
        let target = req.check().map_err(FleetError::Invalid)?;
        if let Some(id) = req.operation.firmware_id() {
            match self.inner.store().get_firmware(id).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => {
                    return Err(FleetError::Validation(callhome_core::ValidationError::new(
                        "operation.firmware_id",
                        format!("no firmware {id} in the repository"),
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if req.operation.needs_device_listener() && self.inner.settings.firmware.base_url.is_none()
        {
            return Err(FleetError::Conflict(
                "firmware campaigns and trust-anchor installs need the device-facing HTTPS listener (device_http) with a public address".to_owned(),
            ));
        }
        let imeis = self.resolve(&target).await?;
        if imeis.is_empty() {
            return Err(FleetError::Validation(callhome_core::ValidationError::new(
                "target",
                "matches no registered device",
            )));
        }
        let total = imeis.len();
        let devices = imeis
            .into_iter()
            .enumerate()
            .map(|(i, imei)| (imei, req.rollout.wave_of(i, total)))
            .collect();
        let now = OffsetDateTime::now_utc();
        let new = NewJob {
            id: Uuid::now_v7(),
            name: req.name.clone(),
            operation: to_json(&req.operation),
            target: to_json(&req.target),
            rollout: to_json(&req.rollout),
            restart: req.restart.as_str().to_owned(),
            created_by: by.to_owned(),
            created_at: now,
            expires_at: now
                + time::Duration::seconds(
                    i64::try_from(req.rollout.expires_in_s).unwrap_or(i64::MAX / 2_000),
                ),
            devices,
            firmware_id: req.operation.firmware_id(),
        };
        let rec = self.inner.store().create_job(&new).await?;
        metrics::counter!("callhome_jobs_created_total").increment(1);
        self.inner.events.publish(
            None,
            EventPayload::JobCreated(JobCreated {
                id: rec.id,
                name: rec.name.clone(),
                total: rec.total,
                created_by: by.to_owned(),
            }),
        );
        tracing::info!(job = %rec.id, total = rec.total, by, "job created");
        self.spawn_driver(rec.id);
        decode(rec)
    }

    async fn resolve(&self, target: &CheckedTarget) -> Result<Vec<Imei>> {
        let store = self.inner.store();
        match target {
            CheckedTarget::Imeis(list) => {
                let mut missing = Vec::new();
                for (i, imei) in list.iter().enumerate() {
                    match store.get_device(imei).await {
                        Ok(_) => {}
                        Err(StoreError::NotFound(_)) => {
                            missing.push(callhome_core::ValidationError::new(
                                format!("target.imeis[{i}]"),
                                format!("{imei} is not registered"),
                            ))
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if missing.len() >= 20 {
                        break;
                    }
                }
                if missing.is_empty() {
                    Ok(list.clone())
                } else {
                    Err(FleetError::Invalid(missing))
                }
            }
            CheckedTarget::Expr(expr) => {
                let filter = DeviceFilter {
                    tag: expr.required_tag().map(str::to_owned),
                    ..Default::default()
                };
                self.scan(filter, |d| expr.matches(&d.tags)).await
            }
            CheckedTarget::Filter(filter) => self.scan(filter.clone(), |_| true).await,
        }
    }

    async fn scan(
        &self,
        mut filter: DeviceFilter,
        keep: impl Fn(&callhome_store::Device) -> bool,
    ) -> Result<Vec<Imei>> {
        let mut out = Vec::new();
        filter.limit = 1000;
        loop {
            let page = self.inner.store().list_devices(&filter).await?;
            out.extend(
                page.items
                    .iter()
                    .filter(|d| keep(d))
                    .map(|d| d.imei.clone()),
            );
            if out.len() > callhome_core::jobs::MAX_JOB_DEVICES {
                return Err(FleetError::Validation(callhome_core::ValidationError::new(
                    "target",
                    format!(
                        "matches more than {} devices",
                        callhome_core::jobs::MAX_JOB_DEVICES
                    ),
                )));
            }
            match page.next {
                Some(c) => filter.after = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// A job.
    pub async fn get(&self, id: Uuid) -> Result<Job> {
        decode(self.inner.store().get_job(id).await?)
    }

    /// A job's progress.
    pub async fn progress(&self, id: Uuid) -> Result<JobProgress> {
        Ok(self.inner.store().job_progress(id).await?)
    }

    /// Jobs, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Page<Job>> {
        let page = self.inner.store().list_jobs(filter).await?;
        Ok(Page {
            items: page.items.into_iter().map(decode).collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// A job's executions.
    pub async fn devices(&self, filter: &JobDeviceFilter) -> Result<Page<JobDeviceRecord>> {
        self.inner.store().get_job(filter.job_id).await?;
        Ok(self.inner.store().list_job_devices(filter).await?)
    }

    /// Stops starting executions (the ones in flight finish).
    pub async fn pause(&self, id: Uuid, by: &str) -> Result<Job> {
        self.transition(
            id,
            &[JobState::Running],
            JobState::Paused,
            &format!("paused by {by}"),
        )
        .await
    }

    /// Starts executions again.
    pub async fn resume(&self, id: Uuid, by: &str) -> Result<Job> {
        self.transition(
            id,
            &[JobState::Paused],
            JobState::Running,
            &format!("resumed by {by}"),
        )
        .await
    }

    /// Cancels the job: devices not started end `cancelled` (the ones in flight finish).
    pub async fn cancel(&self, id: Uuid, by: &str) -> Result<Job> {
        let job = self
            .transition(
                id,
                &[JobState::Running, JobState::Paused],
                JobState::Cancelled,
                &format!("cancelled by {by}"),
            )
            .await?;
        self.inner
            .store()
            .close_pending_job_devices(id, ExecState::Cancelled, OffsetDateTime::now_utc())
            .await?;
        Ok(job)
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[JobState],
        to: JobState,
        reason: &str,
    ) -> Result<Job> {
        let current = self.inner.store().get_job(id).await?;
        if !from.contains(&current.state) {
            return Err(FleetError::Conflict(format!(
                "job {id} is {}; it cannot be {}",
                current.state.as_str(),
                match to {
                    JobState::Paused => "paused",
                    JobState::Running => "resumed",
                    _ => "cancelled",
                }
            )));
        }
        let rec = self
            .inner
            .store()
            .set_job_state(id, from, to, Some(reason), OffsetDateTime::now_utc())
            .await?;
        if to.is_final() {
            metrics::counter!("callhome_jobs_finished_total", "state" => to.as_str()).increment(1);
        }
        publish_state(&self.inner, &rec);
        self.wake(id);
        decode(rec)
    }
}

fn publish_state(inner: &Inner, rec: &JobRecord) {
    inner.events.publish(
        None,
        EventPayload::job_state(JobStateChanged {
            id: rec.id,
            state: rec.state,
            reason: rec.state_reason.clone(),
        }),
    );
}

/// A job part as stored.
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// How an execution's end was written to the store by its own task.
enum Recorded {
    /// Written.
    Yes,
    /// The execution had already ended (nothing to count).
    AlreadyEnded,
    /// Not written (the driver tries again).
    No(String),
}

/// What an execution's task hands back to its driver.
struct Done {
    /// The device.
    imei: Imei,
    /// The device's wave.
    wave: i64,
    /// How the execution ended.
    outcome: Outcome,
    /// Whether the task wrote that end to the store.
    recorded: Recorded,
}

/// Writes how an execution ended.
async fn write_end(
    store: &dyn Store,
    id: Uuid,
    imei: &Imei,
    outcome: &Outcome,
) -> std::result::Result<JobDeviceRecord, StoreError> {
    let result = (!outcome.result.is_null()).then(|| outcome.result.to_string());
    store
        .finish_job_device(
            id,
            imei,
            &callhome_store::ExecutionEnd {
                state: outcome.state,
                error: outcome.error.as_deref(),
                result: result.as_deref(),
                outcome: outcome.outcome,
                at: OffsetDateTime::now_utc(),
            },
        )
        .await
}

/// Takes or renews the lease on job `id` for this node; whether this node holds it.
async fn take_lease(inner: &Inner, id: Uuid) -> Result<bool> {
    let now = OffsetDateTime::now_utc();
    let until =
        now + time::Duration::try_from(inner.settings.lease).unwrap_or(time::Duration::seconds(30));
    Ok(inner
        .store()
        .claim_job(id, &inner.settings.node_id, now, until)
        .await?)
}

/// The driver of one job on the node holding its lease: the job, what it knows of the
/// job's executions, and the ones it runs. Made by [`Driver::claim`]; [`Driver::run`] is
/// its task.
struct Driver {
    /// The engine's state shared by its drivers (store, events, settings, shutdown).
    inner: Arc<Inner>,
    /// The job's id.
    id: Uuid,
    /// The job, decoded; its record is re-read every turn (an operator on another node may
    /// have paused it).
    job: Job,
    /// What the driver knows of the executions: kept current as they end, re-read from the
    /// store every [`pacing::COUNTS_REFRESH`] and when woken.
    counts: Counts,
    /// The executions running here, each a task that hands back its [`Done`].
    inflight: JoinSet<Done>,
    /// When executions were started in the trailing minute (for the rate).
    starts: StartWindow,
    /// Timing of each execution (from the rollout and the engine's settings).
    timing: Timing,
    /// Woken by pause, resume and cancel (from any node's API through this engine).
    wake: mpsc::Receiver<()>,
    /// When the lease was last taken or renewed.
    renewed: Instant,
    /// When the counts were last read from the store.
    last_refresh: Instant,
}

impl Driver {
    /// Takes the job's lease and reads the job: `None` if another node holds the lease or
    /// the job has ended.
    async fn claim(inner: Arc<Inner>, id: Uuid, wake: mpsc::Receiver<()>) -> Result<Option<Self>> {
        if !take_lease(&inner, id).await? {
            tracing::debug!("another node runs this job");
            return Ok(None);
        }
        let renewed = Instant::now();
        let store = inner.store().clone();
        let job = decode(store.get_job(id).await?)?;
        if job.record.state.is_final() {
            return Ok(None);
        }
        let counts = Counts::from(&store.job_progress(id).await?);
        let timing = Timing {
            command_timeout: Duration::from_secs(u64::from(job.rollout.command_timeout_s)),
            queue_wait: inner.settings.queue_wait,
            restart_wait: inner.settings.restart_wait,
        };
        Ok(Some(Self {
            inner,
            id,
            job,
            counts,
            inflight: JoinSet::new(),
            starts: StartWindow::default(),
            timing,
            wake,
            renewed,
            last_refresh: Instant::now(),
        }))
    }

    /// Drives the job until it ends and its executions here have finished, the lease is
    /// lost, or the engine shuts down.
    async fn run(mut self) -> Result<()> {
        self.resume().await?;
        self.last_refresh = Instant::now();
        loop {
            let now = OffsetDateTime::now_utc();
            if pacing::lease_renewal_due(self.renewed.elapsed(), self.inner.settings.lease)
                && !self.renew_lease().await?
            {
                tracing::warn!("lost the job's lease to another node; stopping here");
                self.inflight.abort_all();
                return Ok(());
            }
            self.refresh().await?;
            if pacing::expired(self.job.record.state, now, self.job.record.expires_at) {
                self.end_job(
                    JobState::Expired,
                    "the job expired before every device was done",
                    ExecState::Expired,
                )
                .await?;
            }
            if self.job.record.state == JobState::Running {
                self.start_more().await?;
                if pacing::may_be_complete(&self.counts, self.inflight.len())
                    && self.complete().await?
                {
                    return Ok(());
                }
            }
            if pacing::driver_done(self.job.record.state, self.inflight.len()) {
                return Ok(());
            }
            if !self.wait().await? {
                return Ok(());
            }
        }
    }

    /// Continues the executions a previous run left in progress, where they were.
    async fn resume(&mut self) -> Result<()> {
        for d in self.inner.store().in_progress_job_devices(self.id).await? {
            let imei = d.imei.clone();
            tracing::info!(%imei, "execution resumed after a restart");
            self.spawn_execution(imei, d.wave, d.attempts);
        }
        Ok(())
    }

    /// Renews the lease; whether this node still holds it.
    async fn renew_lease(&mut self) -> Result<bool> {
        if !take_lease(&self.inner, self.id).await? {
            return Ok(false);
        }
        self.renewed = Instant::now();
        Ok(true)
    }

    /// Re-reads the job's row (each turn: an operator on another node may have paused it)
    /// and, every [`pacing::COUNTS_REFRESH`], the counts (the in-flight executions are in
    /// progress in the store too).
    async fn refresh(&mut self) -> Result<()> {
        let store = self.inner.store();
        self.job.record = store.get_job(self.id).await?;
        if pacing::counts_refresh_due(self.last_refresh.elapsed()) {
            self.counts = Counts::from(&store.job_progress(self.id).await?);
            self.last_refresh = Instant::now();
        }
        Ok(())
    }

    /// Waits for an execution to end (and records it), a wake-up, or the next tick;
    /// `false` when the engine shuts down (the executions in flight stay in progress; the
    /// next start resumes them).
    async fn wait(&mut self) -> Result<bool> {
        let tick = self
            .starts
            .sleep(&self.job.rollout, Instant::now(), self.inner.settings.tick);
        tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => {
                self.inflight.abort_all();
                return Ok(false);
            }
            Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                match done {
                    Ok(done) => self.record(done).await?,
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(error = %e, "an execution task failed"),
                }
                // Record everything else that finished meanwhile before starting more.
                while let Some(done) = self.inflight.try_join_next() {
                    if let Ok(done) = done {
                        self.record(done).await?;
                    }
                }
            }
            w = self.wake.recv() => {
                if w.is_some() {
                    let store = self.inner.store();
                    self.job = decode(store.get_job(self.id).await?)?;
                    self.counts = Counts::from(&store.job_progress(self.id).await?);
                }
            }
            () = tokio::time::sleep(tick) => {}
        }
        Ok(true)
    }

    /// Moves the job to `completed` if the store confirms every execution has ended;
    /// whether it did. If not, the counts are corrected from the store.
    async fn complete(&mut self) -> Result<bool> {
        let store = self.inner.store();
        // Make sure: the store is the truth.
        let p = store.job_progress(self.id).await?;
        if !pacing::complete(&p) {
            self.counts = Counts::from(&p);
            return Ok(false);
        }
        match store
            .set_job_state(
                self.id,
                &[JobState::Running],
                JobState::Completed,
                None,
                OffsetDateTime::now_utc(),
            )
            .await
        {
            Ok(rec) => {
                tracing::info!(succeeded = p.succeeded, failed = p.failed, "job completed");
                metrics::counter!("callhome_jobs_finished_total", "state" => "completed")
                    .increment(1);
                publish_state(&self.inner, &rec);
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the next wave when the current one has finished, then starts as many pending
    /// devices of the open wave as the rollout's limits allow.
    async fn start_more(&mut self) -> Result<()> {
        let id = self.id;
        let store = self.inner.store().clone();
        // Waves: the next one opens when every device of the current one has finished.
        let wave = self.counts.open_wave(
            self.job.record.current_wave,
            i64::from(self.job.rollout.wave_count()),
        );
        if wave != self.job.record.current_wave {
            store.set_job_wave(id, wave).await?;
            self.job.record.current_wave = wave;
            self.inner
                .events
                .publish(None, EventPayload::JobWave(JobWave { id, wave }));
            tracing::info!(wave, "next wave");
        }
        let room = pacing::room(
            &self.job.rollout,
            &self.counts,
            self.inflight.len(),
            self.starts.in_last_minute(Instant::now()),
        );
        if room == 0 {
            return Ok(());
        }
        let next = store
            .next_job_devices(id, wave, u32::try_from(room.min(1000)).unwrap_or(1000))
            .await?;
        // One statement starts them all; the ones taken meanwhile are not returned.
        for d in store
            .start_job_devices(id, &next, OffsetDateTime::now_utc())
            .await?
        {
            let imei = d.imei.clone();
            self.counts.pending -= 1;
            self.starts.started(Instant::now());
            self.inner.events.publish(
                Some(&imei),
                EventPayload::JobDeviceStarted(JobDeviceStarted {
                    id,
                    attempt: d.attempts,
                }),
            );
            self.spawn_execution(imei, d.wave, d.attempts);
        }
        Ok(())
    }

    /// Starts the execution of `imei` (of `wave`, its `attempt`) as a task in `inflight`;
    /// the task writes the execution's end itself.
    fn spawn_execution(&mut self, imei: Imei, wave: i64, attempt: i64) {
        let inner = self.inner.clone();
        let op = self.job.operation.clone();
        let restart = self.job.restart;
        let timing = self.timing;
        let id = self.job.record.id;
        let by = self.job.record.created_by.clone();
        let key = if attempt <= 1 {
            format!("job:{id}")
        } else {
            format!("job:{id}#{attempt}")
        };
        let span = tracing::info_span!("execution", job = %id, imei = %imei);
        self.inflight.spawn(tracing::Instrument::instrument(
            async move {
                let started = Instant::now();
                let gateway = inner.config.gateway().clone();
                let outcome =
                    match Journal::resume(inner.store().as_ref(), gateway, imei.clone(), key).await
                    {
                        Ok(mut journal) => {
                            exec::execute(
                                &inner.config,
                                &inner.settings.firmware,
                                &mut journal,
                                Execution {
                                    job_id: id,
                                    imei: &imei,
                                    attempt,
                                },
                                &op,
                                restart,
                                timing,
                                &by,
                            )
                            .await
                        }
                        Err(e) => Outcome {
                            state: ExecState::Failed,
                            error: Some(format!("could not read the command journal: {e}")),
                            result: serde_json::Value::Null,
                            outcome: op
                                .firmware_id()
                                .map(|_| callhome_core::firmware::UpdateOutcome::Interrupted),
                        },
                    };
                metrics::histogram!("callhome_job_execution_seconds")
                    .record(started.elapsed().as_secs_f64());
                // Each execution writes its own end, so the driver is not a bottleneck.
                let recorded = match write_end(inner.store().as_ref(), id, &imei, &outcome).await {
                    Ok(_) => Recorded::Yes,
                    Err(StoreError::Conflict { .. }) => Recorded::AlreadyEnded,
                    Err(e) => Recorded::No(e.to_string()),
                };
                Done {
                    imei,
                    wave,
                    outcome,
                    recorded,
                }
            },
            span,
        ));
    }

    /// Counts an execution that ended (writing its end if its task could not), publishes
    /// it, and applies the abort rule.
    async fn record(&mut self, done: Done) -> Result<()> {
        let Done {
            imei,
            wave,
            outcome,
            recorded,
        } = done;
        let id = self.id;
        match recorded {
            Recorded::Yes => {}
            Recorded::AlreadyEnded => {
                tracing::warn!(%imei, "execution already ended");
                return Ok(());
            }
            Recorded::No(why) => {
                tracing::warn!(%imei, error = %why, "recording the execution's end failed; trying again");
                match write_end(self.inner.store().as_ref(), id, &imei, &outcome).await {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.counts.finish(wave, outcome.state);
        metrics::counter!("callhome_job_executions_total", "state" => outcome.state.as_str())
            .increment(1);
        let finished = JobDeviceFinished {
            id,
            error: outcome.error.clone(),
            outcome: outcome.outcome,
        };
        if let Some(payload) = EventPayload::job_device_finished(outcome.state, finished) {
            self.inner.events.publish(Some(&imei), payload);
        }
        if outcome.state == ExecState::Failed {
            tracing::info!(%imei, error = outcome.error.as_deref().unwrap_or(""), "execution failed");
        }
        if let Some(reason) =
            pacing::abort_reason(&self.job.rollout, self.job.record.state, &self.counts)
        {
            tracing::warn!("{reason}");
            self.end_job(JobState::Aborted, &reason, ExecState::Cancelled)
                .await?;
        }
        Ok(())
    }

    /// Ends the running or paused job in `to` (expired, aborted) with `reason`; its pending
    /// devices end `rest`. Does nothing if the job ended meanwhile (an operator won the
    /// race) but re-read it.
    async fn end_job(&mut self, to: JobState, reason: &str, rest: ExecState) -> Result<()> {
        let store = self.inner.store();
        let id = self.id;
        let now = OffsetDateTime::now_utc();
        match store
            .set_job_state(
                id,
                &[JobState::Running, JobState::Paused],
                to,
                Some(reason),
                now,
            )
            .await
        {
            Ok(rec) => {
                let n = store.close_pending_job_devices(id, rest, now).await?;
                self.counts.pending = 0;
                tracing::info!(state = to.as_str(), not_started = n, "job ended");
                metrics::counter!("callhome_jobs_finished_total", "state" => to.as_str())
                    .increment(1);
                publish_state(&self.inner, &rec);
                self.job.record = rec;
            }
            Err(StoreError::Conflict { .. }) => self.job.record = store.get_job(id).await?,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}
