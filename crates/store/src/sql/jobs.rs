//! Bulk jobs: a module of `sqlite.rs` and of `postgres.rs`, beside `common`.

use std::str::FromStr as _;

use async_trait::async_trait;
use callhome_core::Imei;
use sqlx::{QueryBuilder, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::conv::{from_ms, ms, opt_from_ms, page, parse_col};
use crate::{Page, Result, StoreError};

use super::common::*;
use super::{BEGIN_WRITE, Db};
use crate::vault::Vault;

use callhome_core::firmware::UpdateOutcome;
use callhome_core::jobs::{ExecState, JobState};

use crate::{
    ExecutionEnd, JobDeviceFilter, JobDeviceRecord, JobFilter, JobProgress, JobRecord, Jobs, NewJob,
};

macro_rules! job_cols {
    () => {
        "id, name, operation, target, rollout, restart, state, state_reason, total, current_wave, \
         created_at, created_by, updated_at, finished_at, expires_at"
    };
}

macro_rules! job_device_cols {
    () => {
        "job_id, imei, seq, wave, state, attempts, started_at, finished_at, error, result, outcome"
    };
}

/// Rows per INSERT when a job's executions are created.
const JOB_DEVICE_CHUNK: usize = 500;

pub(super) fn job_from_row(v: &Vault, r: &DbRow) -> Result<JobRecord> {
    Ok(JobRecord {
        id: parse_col("jobs.id", &r.try_get::<String, _>("id")?, Uuid::from_str)?,
        name: r.try_get("name")?,
        operation: v.open_json(r.try_get("operation")?),
        target: r.try_get("target")?,
        rollout: r.try_get("rollout")?,
        restart: r.try_get("restart")?,
        state: parse_col(
            "jobs.state",
            &r.try_get::<String, _>("state")?,
            JobState::parse,
        )?,
        state_reason: r.try_get("state_reason")?,
        total: r.try_get("total")?,
        current_wave: r.try_get("current_wave")?,
        created_at: from_ms(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
        updated_at: from_ms(r.try_get("updated_at")?),
        finished_at: opt_from_ms(r.try_get("finished_at")?),
        expires_at: from_ms(r.try_get("expires_at")?),
    })
}

pub(super) fn job_device_from_row(v: &Vault, r: &DbRow) -> Result<JobDeviceRecord> {
    Ok(JobDeviceRecord {
        job_id: parse_col(
            "job_devices.job_id",
            &r.try_get::<String, _>("job_id")?,
            Uuid::from_str,
        )?,
        imei: parse_col(
            "job_devices.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        seq: r.try_get("seq")?,
        wave: r.try_get("wave")?,
        state: parse_col(
            "job_devices.state",
            &r.try_get::<String, _>("state")?,
            ExecState::parse,
        )?,
        attempts: r.try_get("attempts")?,
        started_at: opt_from_ms(r.try_get("started_at")?),
        finished_at: opt_from_ms(r.try_get("finished_at")?),
        error: r
            .try_get::<Option<String>, _>("error")?
            .map(|e| v.open_lines(e)),
        result: r.try_get("result")?,
        outcome: r
            .try_get::<Option<String>, _>("outcome")?
            .map(|o| parse_col("job_devices.outcome", &o, UpdateOutcome::parse))
            .transpose()?,
    })
}

#[async_trait]
impl Jobs for SqlStore {
    async fn create_job(&self, job: &NewJob) -> Result<JobRecord> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let at = ms(job.created_at);
        sqlx::query(
            "INSERT INTO jobs (id, name, operation, target, rollout, restart, state, total, current_wave, created_at, created_by, updated_at, expires_at, firmware_id) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, 1, $8, $9, $8, $10, $11)",
        )
        .bind(job.id.to_string())
        .bind(job.name.as_deref())
        .bind(self.vault.seal_json(&job.operation).as_ref())
        .bind(&job.target)
        .bind(&job.rollout)
        .bind(&job.restart)
        .bind(i64::try_from(job.devices.len()).unwrap_or(i64::MAX))
        .bind(at)
        .bind(&job.created_by)
        .bind(ms(job.expires_at))
        .bind(job.firmware_id.map(|f| f.to_string()))
        .execute(&mut *tx)
        .await?;
        let id = job.id.to_string();
        for (chunk_no, chunk) in job.devices.chunks(JOB_DEVICE_CHUNK).enumerate() {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO job_devices (job_id, imei, seq, wave, state) ",
            );
            q.push_values(chunk.iter().enumerate(), |mut b, (i, (imei, wave))| {
                let seq = chunk_no * JOB_DEVICE_CHUNK + i;
                b.push_bind(id.clone())
                    .push_bind(imei.to_string())
                    .push_bind(i64::try_from(seq).unwrap_or(i64::MAX))
                    .push_bind(i64::from(*wave))
                    .push_bind("pending");
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::Conflict { .. } => {
                        StoreError::conflict("a device is listed twice in the job's targets")
                    }
                    other => other,
                })?;
        }
        tx.commit().await?;
        self.get_job(job.id).await
    }

    async fn get_job(&self, id: Uuid) -> Result<JobRecord> {
        let row = sqlx::query(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
        job_from_row(&self.vault, &row)
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Page<JobRecord>> {
        let limit = f.limit.clamp(1, 1000);
        let mut q =
            QueryBuilder::<Db>::new(concat!("SELECT ", job_cols!(), " FROM jobs WHERE 1 = 1"));
        if !f.states.is_empty() {
            q.push(" AND state IN (");
            let mut sep = q.separated(", ");
            for s in &f.states {
                sep.push_bind(s.as_str());
            }
            q.push(")");
        }
        if let Some(before) = f.before {
            q.push(" AND id < ").push_bind(before.to_string());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(|r| job_from_row(&self.vault, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |j| j.id.to_string()))
    }

    async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_cols!(),
            " FROM jobs WHERE state IN ('running', 'paused') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| job_from_row(&self.vault, r)).collect()
    }

    async fn set_job_state(
        &self,
        id: Uuid,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<JobRecord> {
        let mut q = QueryBuilder::<Db>::new("UPDATE jobs SET state = ");
        q.push_bind(to.as_str())
            .push(", state_reason = ")
            .push_bind(reason.map(str::to_owned))
            .push(", updated_at = ")
            .push_bind(ms(at));
        if to.is_final() {
            q.push(", finished_at = ").push_bind(ms(at));
        }
        q.push(" WHERE id = ")
            .push_bind(id.to_string())
            .push(" AND state IN (");
        let mut sep = q.separated(", ");
        for s in from {
            sep.push_bind(s.as_str());
        }
        q.push(")");
        let done = q.build().execute(&self.pool).await?;
        let job = self.get_job(id).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::conflict(format!(
                "job {id} is {}",
                job.state.as_str()
            )));
        }
        Ok(job)
    }

    async fn claim_job(
        &self,
        id: Uuid,
        node: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET runner = $2, lease_until = $4 \
             WHERE id = $1 AND (runner IS NULL OR runner = $2 OR lease_until IS NULL OR lease_until < $3)",
        )
        .bind(id.to_string())
        .bind(node)
        .bind(ms(now))
        .bind(ms(until))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.get_job(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn release_job(&self, id: Uuid, node: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET runner = NULL, lease_until = NULL WHERE id = $1 AND runner = $2",
        )
        .bind(id.to_string())
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_job_wave(&self, id: Uuid, wave: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET current_wave = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(wave)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn job_progress(&self, id: Uuid) -> Result<JobProgress> {
        let rows = sqlx::query("SELECT wave, state, COUNT(*) AS n FROM job_devices WHERE job_id = $1 GROUP BY wave, state")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        let mut p = JobProgress::default();
        for r in &rows {
            let wave: i64 = r.try_get("wave")?;
            let n: i64 = r.try_get("n")?;
            let state = parse_col(
                "job_devices.state",
                &r.try_get::<String, _>("state")?,
                ExecState::parse,
            )?;
            p.total += n;
            match state {
                ExecState::Pending => p.pending += n,
                ExecState::InProgress => p.in_progress += n,
                ExecState::Succeeded => p.succeeded += n,
                ExecState::Failed => p.failed += n,
                ExecState::Cancelled => p.cancelled += n,
                ExecState::Expired => p.expired += n,
                ExecState::Skipped => p.skipped += n,
            }
            let w = usize::try_from(wave.max(1) - 1).unwrap_or(0);
            if p.waves.len() <= w {
                p.waves.resize(w + 1, (0, 0));
            }
            p.waves[w].0 += n;
            if state.is_final() {
                p.waves[w].1 += n;
            }
        }
        Ok(p)
    }

    async fn next_job_devices(&self, id: Uuid, max_wave: i64, limit: u32) -> Result<Vec<Imei>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT jd.imei FROM job_devices jd JOIN devices d ON d.imei = jd.imei \
             WHERE jd.job_id = $1 AND jd.state = 'pending' AND jd.wave <= $2 AND d.online = $3 AND d.disabled = $4 \
             ORDER BY jd.seq LIMIT $5",
        )
        .bind(id.to_string())
        .bind(max_wave)
        .bind(true)
        .bind(false)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|s| parse_col("job_devices.imei", s, Imei::parse))
            .collect()
    }

    async fn start_job_devices(
        &self,
        id: Uuid,
        imeis: &[Imei],
        at: OffsetDateTime,
    ) -> Result<Vec<JobDeviceRecord>> {
        let mut out = Vec::with_capacity(imeis.len());
        for chunk in imeis.chunks(JOB_DEVICE_CHUNK) {
            let mut q = QueryBuilder::<Db>::new(
                "UPDATE job_devices SET state = 'in_progress', attempts = attempts + 1, started_at = ",
            );
            q.push_bind(ms(at))
                .push(" WHERE job_id = ")
                .push_bind(id.to_string())
                .push(" AND state = 'pending' AND imei IN (");
            let mut sep = q.separated(", ");
            for imei in chunk {
                sep.push_bind(imei.to_string());
            }
            q.push(concat!(") RETURNING ", job_device_cols!()));
            let rows = q.build().fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(job_device_from_row(&self.vault, r)?);
            }
        }
        out.sort_by_key(|d| d.seq);
        Ok(out)
    }

    async fn finish_job_device(
        &self,
        id: Uuid,
        imei: &Imei,
        end: &ExecutionEnd<'_>,
    ) -> Result<JobDeviceRecord> {
        let ExecutionEnd {
            state,
            error,
            result,
            outcome,
            at,
        } = *end;
        let done = sqlx::query(
            "UPDATE job_devices SET state = $3, error = $4, result = $5, finished_at = $6, outcome = $7 \
             WHERE job_id = $1 AND imei = $2 AND state = 'in_progress'",
        )
        .bind(id.to_string())
        .bind(imei.as_str())
        .bind(state.as_str())
        .bind(error.map(|e| self.vault.seal_lines(e)).as_deref())
        .bind(result)
        .bind(ms(at))
        .bind(outcome.map(UpdateOutcome::as_str))
        .execute(&self.pool)
        .await?;
        let rec = self.get_job_device(id, imei).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::conflict(format!(
                "execution of job {id} on {imei} is {}",
                rec.state.as_str()
            )));
        }
        Ok(rec)
    }

    async fn in_progress_job_devices(&self, id: Uuid) -> Result<Vec<JobDeviceRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_device_cols!(),
            " FROM job_devices WHERE job_id = $1 AND state = 'in_progress' ORDER BY seq"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| job_device_from_row(&self.vault, r))
            .collect()
    }

    async fn close_pending_job_devices(
        &self,
        id: Uuid,
        state: ExecState,
        at: OffsetDateTime,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE job_devices SET state = $2, finished_at = $3 WHERE job_id = $1 AND state = 'pending'",
        )
        .bind(id.to_string())
        .bind(state.as_str())
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn list_job_devices(&self, f: &JobDeviceFilter) -> Result<Page<JobDeviceRecord>> {
        let limit = f.limit.clamp(1, 1000);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            job_device_cols!(),
            " FROM job_devices WHERE job_id = "
        ));
        q.push_bind(f.job_id.to_string());
        if let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(after) = f.after_seq {
            q.push(" AND seq > ").push_bind(after);
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(|r| job_device_from_row(&self.vault, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |d| d.seq.to_string()))
    }

    async fn get_job_device(&self, id: Uuid, imei: &Imei) -> Result<JobDeviceRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_device_cols!(),
            " FROM job_devices WHERE job_id = $1 AND imei = $2"
        ))
        .bind(id.to_string())
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {imei} in job {id}")))?;
        job_device_from_row(&self.vault, &row)
    }
}
