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
            if let Err(e) = tracing::Instrument::instrument(drive(inner.clone(), id, rx), span).await {
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

type Done = (Imei, i64, Outcome, Recorded);

/// Ends a running or paused job in `to` (expired, aborted) with `reason`; its pending devices
/// end `rest`. Does nothing if the job ended meanwhile (an operator won the race).
async fn end_job(
    inner: &Inner,
    job: &mut Job,
    counts: &mut Counts,
    to: JobState,
    reason: &str,
    rest: ExecState,
) -> Result<()> {
    let store = inner.store();
    let id = job.record.id;
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
            counts.pending = 0;
            tracing::info!(state = to.as_str(), not_started = n, "job ended");
            metrics::counter!("callhome_jobs_finished_total", "state" => to.as_str()).increment(1);
            publish_state(inner, &rec);
            job.record = rec;
        }
        Err(StoreError::Conflict { .. }) => job.record = store.get_job(id).await?,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Takes or renews the job's lease for this node.
async fn claim(inner: &Inner, id: Uuid) -> Result<bool> {
    let now = OffsetDateTime::now_utc();
    let until =
        now + time::Duration::try_from(inner.settings.lease).unwrap_or(time::Duration::seconds(30));
    Ok(inner
        .store()
        .claim_job(id, &inner.settings.node_id, now, until)
        .await?)
}

async fn drive(inner: Arc<Inner>, id: Uuid, mut wake: mpsc::Receiver<()>) -> Result<()> {
    let store = inner.store().clone();
    if !claim(&inner, id).await? {
        tracing::debug!("another node runs this job");
        return Ok(());
    }
    let mut renewed = Instant::now();
    let mut job = decode(store.get_job(id).await?)?;
    if job.record.state.is_final() {
        return Ok(());
    }
    let mut counts = Counts::from(&store.job_progress(id).await?);
    let mut inflight: JoinSet<Done> = JoinSet::new();
    let mut starts = StartWindow::default();
    let timing = Timing {
        command_timeout: Duration::from_secs(u64::from(job.rollout.command_timeout_s)),
        queue_wait: inner.settings.queue_wait,
        restart_wait: inner.settings.restart_wait,
    };
    // Executions the previous run left in progress continue where they were.
    for d in store.in_progress_job_devices(id).await? {
        let imei = d.imei.clone();
        tracing::info!(%imei, "execution resumed after a restart");
        spawn_exec(
            &inner,
            &mut inflight,
            &job,
            imei,
            d.wave,
            d.attempts,
            timing,
        );
    }
    let mut last_refresh = Instant::now();
    loop {
        let now = OffsetDateTime::now_utc();
        if renewed.elapsed() >= inner.settings.lease / 3 {
            if !claim(&inner, id).await? {
                tracing::warn!("lost the job's lease to another node; stopping here");
                inflight.abort_all();
                return Ok(());
            }
            renewed = Instant::now();
        }
        // The job's row is re-read each turn (an operator on another node may have paused
        // it); the counts every 10 s (the in-flight ones are in progress in the store too).
        job.record = store.get_job(id).await?;
        if last_refresh.elapsed() >= Duration::from_secs(10) {
            counts = Counts::from(&store.job_progress(id).await?);
            last_refresh = Instant::now();
        }
        if !job.record.state.is_final() && now >= job.record.expires_at {
            end_job(
                &inner,
                &mut job,
                &mut counts,
                JobState::Expired,
                "the job expired before every device was done",
                ExecState::Expired,
            )
            .await?;
        }
        if job.record.state == JobState::Running {
            start_more(
                &inner,
                id,
                &mut job,
                &mut counts,
                &mut inflight,
                &mut starts,
                timing,
            )
            .await?;
            if counts.pending == 0 && inflight.is_empty() {
                // Make sure: the store is the truth.
                let p = store.job_progress(id).await?;
                if p.pending == 0 && p.in_progress == 0 {
                    match store
                        .set_job_state(
                            id,
                            &[JobState::Running],
                            JobState::Completed,
                            None,
                            OffsetDateTime::now_utc(),
                        )
                        .await
                    {
                        Ok(rec) => {
                            tracing::info!(
                                succeeded = p.succeeded,
                                failed = p.failed,
                                "job completed"
                            );
                            metrics::counter!("callhome_jobs_finished_total", "state" => "completed").increment(1);
                            publish_state(&inner, &rec);
                            return Ok(());
                        }
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    counts = Counts::from(&p);
                }
            }
        }
        if job.record.state.is_final() && inflight.is_empty() {
            return Ok(());
        }
        let tick = starts.sleep(&job.rollout, Instant::now(), inner.settings.tick);
        tokio::select! {
            biased;
            () = inner.shutdown.cancelled() => {
                // Executions in flight stay in progress; the next start resumes them.
                inflight.abort_all();
                return Ok(());
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                match done {
                    Ok(done) => record(&inner, id, &mut job, &mut counts, done).await?,
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(error = %e, "an execution task failed"),
                }
                // Record everything else that finished meanwhile before starting more.
                while let Some(done) = inflight.try_join_next() {
                    if let Ok(done) = done {
                        record(&inner, id, &mut job, &mut counts, done).await?;
                    }
                }
            }
            w = wake.recv() => {
                if w.is_some() {
                    job = decode(store.get_job(id).await?)?;
                    counts = Counts::from(&store.job_progress(id).await?);
                }
            }
            () = tokio::time::sleep(tick) => {}
        }
    }
}

async fn start_more(
    inner: &Arc<Inner>,
    id: Uuid,
    job: &mut Job,
    counts: &mut Counts,
    inflight: &mut JoinSet<Done>,
    starts: &mut StartWindow,
    timing: Timing,
) -> Result<()> {
    let store = inner.store();
    // Waves: the next one opens when every device of the current one has finished.
    let wave = counts.open_wave(job.record.current_wave, i64::from(job.rollout.wave_count()));
    if wave != job.record.current_wave {
        store.set_job_wave(id, wave).await?;
        job.record.current_wave = wave;
        inner
            .events
            .publish(None, EventPayload::JobWave(JobWave { id, wave }));
        tracing::info!(wave, "next wave");
    }
    let room = pacing::room(
        &job.rollout,
        counts,
        inflight.len(),
        starts.in_last_minute(Instant::now()),
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
        counts.pending -= 1;
        starts.started(Instant::now());
        inner.events.publish(
            Some(&imei),
            EventPayload::JobDeviceStarted(JobDeviceStarted {
                id,
                attempt: d.attempts,
            }),
        );
        spawn_exec(inner, inflight, job, imei, d.wave, d.attempts, timing);
    }
    Ok(())
}

fn spawn_exec(
    inner: &Arc<Inner>,
    inflight: &mut JoinSet<Done>,
    job: &Job,
    imei: Imei,
    wave: i64,
    attempt: i64,
    timing: Timing,
) {
    let inner = inner.clone();
    let op = job.operation.clone();
    let restart = job.restart;
    let id = job.record.id;
    let by = job.record.created_by.clone();
    let key = if attempt <= 1 {
        format!("job:{id}")
    } else {
        format!("job:{id}#{attempt}")
    };
    let span = tracing::info_span!("execution", job = %id, imei = %imei);
    inflight.spawn(tracing::Instrument::instrument(
        async move {
            let started = Instant::now();
            let gateway = inner.config.gateway().clone();
            let outcome =
                match Journal::resume(inner.store().as_ref(), gateway, imei.clone(), key).await {
                    Ok(mut journal) => {
                        exec::execute(
                            &inner.config,
                            &mut journal,
                            &imei,
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
                    },
                };
            metrics::histogram!("callhome_job_execution_seconds")
                .record(started.elapsed().as_secs_f64());
            // Each execution writes its own end, so the driver is not a bottleneck.
            let result = (!outcome.result.is_null()).then(|| outcome.result.to_string());
            let recorded = match inner
                .store()
                .finish_job_device(
                    id,
                    &imei,
                    outcome.state,
                    outcome.error.as_deref(),
                    result.as_deref(),
                    OffsetDateTime::now_utc(),
                )
                .await
            {
                Ok(_) => Recorded::Yes,
                Err(StoreError::Conflict { .. }) => Recorded::AlreadyEnded,
                Err(e) => Recorded::No(e.to_string()),
            };
            (imei, wave, outcome, recorded)
        },
        span,
    ));
}

async fn record(
    inner: &Arc<Inner>,
    id: Uuid,
    job: &mut Job,
    counts: &mut Counts,
    done: Done,
) -> Result<()> {
    let (imei, wave, outcome, recorded) = done;
    let store = inner.store();
    match recorded {
        Recorded::Yes => {}
        Recorded::AlreadyEnded => {
            tracing::warn!(%imei, "execution already ended");
            return Ok(());
        }
        Recorded::No(why) => {
            tracing::warn!(%imei, error = %why, "recording the execution's end failed; trying again");
            let result = (!outcome.result.is_null()).then(|| outcome.result.to_string());
            match store
                .finish_job_device(
                    id,
                    &imei,
                    outcome.state,
                    outcome.error.as_deref(),
                    result.as_deref(),
                    OffsetDateTime::now_utc(),
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    counts.finish(wave, outcome.state);
    metrics::counter!("callhome_job_executions_total", "state" => outcome.state.as_str())
        .increment(1);
    let finished = JobDeviceFinished {
        id,
        error: outcome.error.clone(),
    };
    if let Some(payload) = EventPayload::job_device_finished(outcome.state, finished) {
        inner.events.publish(Some(&imei), payload);
    }
    if outcome.state == ExecState::Failed {
        tracing::info!(%imei, error = outcome.error.as_deref().unwrap_or(""), "execution failed");
    }
    if let Some(rule) = job.rollout.abort
        && !job.record.state.is_final()
        && let Some(reason) = counts.abort_reason(&rule)
    {
        tracing::warn!("{reason}");
        end_job(
            inner,
            job,
            counts,
            JobState::Aborted,
            &reason,
            ExecState::Cancelled,
        )
        .await?;
    }
    Ok(())
}
