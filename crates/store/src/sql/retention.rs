//! Retention: deleting old audit rows, finished commands, closed sessions and finished jobs in
//! small batches. A module of `sqlite.rs` and of `postgres.rs`, beside `common`.
//!
//! Each call is one short statement deleting at most `limit` rows picked by an indexed
//! column (`audit_log.at`, `commands.created_at`, `sessions.closed_at`, `jobs.finished_at`),
//! so a prune never holds SQLite's write lock (or PostgreSQL row locks) for long; the caller
//! loops until a call deletes nothing. Rows still in use are never picked: commands that are
//! `queued` or `sent`, sessions that are not closed, jobs that are running or paused.

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::Result;
use crate::Retention;
use crate::conv::ms;

use super::common::SqlStore;

/// A job (`j`) in a final state that finished before `$1`.
macro_rules! finished_job {
    () => {
        "j.state NOT IN ('running', 'paused') AND j.finished_at IS NOT NULL AND j.finished_at < $1"
    };
}

#[async_trait]
impl Retention for SqlStore {
    async fn prune_audit(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_commands(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM commands WHERE id IN \
             (SELECT id FROM commands WHERE created_at < $1 AND state NOT IN ('queued', 'sent') \
              ORDER BY created_at LIMIT $2)",
        )
        .bind(ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_sessions(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE id IN \
             (SELECT id FROM sessions WHERE state = 'closed' AND closed_at IS NOT NULL \
              AND closed_at < $1 ORDER BY closed_at LIMIT $2)",
        )
        .bind(ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_jobs(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        // A job with many devices: its executions first, a batch at a time (deleting the
        // job would cascade to all of them in one statement).
        let executions = sqlx::query(concat!(
            "DELETE FROM job_devices WHERE (job_id, imei) IN \
             (SELECT jd.job_id, jd.imei FROM job_devices jd JOIN jobs j ON j.id = jd.job_id \
              WHERE ",
            finished_job!(),
            " LIMIT $2)"
        ))
        .bind(ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if executions > 0 {
            return Ok(executions);
        }
        let jobs = sqlx::query(concat!(
            "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE ",
            finished_job!(),
            " ORDER BY j.finished_at LIMIT $2)"
        ))
        .bind(ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(jobs)
    }
}
