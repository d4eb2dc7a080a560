//! Retention: the prune task that deletes audit rows, finished commands, closed sessions and
//! finished jobs once they are older than their retention period (settings `[retention]`).
//!
//! [`Pruner::run`] is a long-lived task on the server's supervisor: a first pass shortly
//! after start, then one every `prune_interval_s`. Each pass deletes in batches
//! (`prune_batch` rows per statement, a short pause between batches) through the store's
//! [`callhome_store::Retention`] methods, so it never holds SQLite's write lock for long and
//! never starves the gateway's and the API's writes. A failed batch is logged and counted;
//! the next pass tries again (the server keeps running).

use std::sync::Arc;
use std::time::Duration;

use callhome_store::{Store, StoreError};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Pause between two batches, so other writers get the database in between.
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// Longest wait before the first pass after start.
const FIRST_PASS_DELAY: Duration = Duration::from_secs(60);

/// How long each kind of row is kept (`None`: forever), and how the pruning runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Audit rows.
    pub audit: Option<time::Duration>,
    /// Finished commands (by creation time).
    pub commands: Option<time::Duration>,
    /// Closed sessions (by closing time).
    pub sessions: Option<time::Duration>,
    /// Finished jobs and their executions (by finishing time).
    pub jobs: Option<time::Duration>,
    /// Time between two passes.
    pub interval: Duration,
    /// Rows deleted per statement.
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            audit: Some(time::Duration::days(365)),
            commands: Some(time::Duration::days(90)),
            sessions: Some(time::Duration::days(90)),
            jobs: Some(time::Duration::days(180)),
            interval: Duration::from_secs(3600),
            batch: 1000,
        }
    }
}

/// What one kind of row is, for logs and the `table` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `audit_log`.
    Audit,
    /// `commands`.
    Commands,
    /// `sessions`.
    Sessions,
    /// `jobs` and `job_devices`.
    Jobs,
}

impl Table {
    fn label(self) -> &'static str {
        match self {
            Table::Audit => "audit_log",
            Table::Commands => "commands",
            Table::Sessions => "sessions",
            Table::Jobs => "jobs",
        }
    }
}

/// Rows deleted by one pass, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Audit rows.
    pub audit: u64,
    /// Commands.
    pub commands: u64,
    /// Sessions.
    pub sessions: u64,
    /// Jobs and executions.
    pub jobs: u64,
}

/// The prune task.
pub struct Pruner {
    store: Arc<dyn Store>,
    settings: RetentionSettings,
}

impl Pruner {
    /// A pruner of `store` under `settings`.
    pub fn new(store: Arc<dyn Store>, settings: RetentionSettings) -> Self {
        Self { store, settings }
    }

    /// Prunes once shortly after start, then every interval, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut wait = self.settings.interval.min(FIRST_PASS_DELAY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            let report = self.prune_once(&shutdown).await;
            if report != PruneReport::default() {
                tracing::info!(?report, "retention: old rows deleted");
            }
            wait = self.settings.interval;
        }
    }

    /// One pass over every table with a retention period; stops early at shutdown.
    pub async fn prune_once(&self, shutdown: &CancellationToken) -> PruneReport {
        let now = OffsetDateTime::now_utc();
        let s = &self.settings;
        PruneReport {
            audit: self.prune(Table::Audit, s.audit, now, shutdown).await,
            commands: self.prune(Table::Commands, s.commands, now, shutdown).await,
            sessions: self.prune(Table::Sessions, s.sessions, now, shutdown).await,
            jobs: self.prune(Table::Jobs, s.jobs, now, shutdown).await,
        }
    }

    async fn batch(&self, table: Table, before: OffsetDateTime) -> Result<u64, StoreError> {
        let n = self.settings.batch;
        match table {
            Table::Audit => self.store.prune_audit(before, n).await,
            Table::Commands => self.store.prune_commands(before, n).await,
            Table::Sessions => self.store.prune_sessions(before, n).await,
            Table::Jobs => self.store.prune_jobs(before, n).await,
        }
    }

    async fn prune(
        &self,
        table: Table,
        keep: Option<time::Duration>,
        now: OffsetDateTime,
        shutdown: &CancellationToken,
    ) -> u64 {
        let Some(keep) = keep else { return 0 };
        let before = now - keep;
        let mut total = 0;
        while !shutdown.is_cancelled() {
            match self.batch(table, before).await {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    metrics::counter!("callhome_retention_pruned_total", "table" => table.label())
                        .increment(n);
                    tokio::time::sleep(BATCH_PAUSE).await;
                }
                Err(e) => {
                    metrics::counter!("callhome_retention_failures_total", "table" => table.label())
                        .increment(1);
                    tracing::error!(table = table.label(), error = %e, "retention: pruning failed; trying again next pass");
                    break;
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callhome_core::{ActorKind, AuditOutcome};
    use callhome_store::{AuditFilter, NewAuditEntry, OpenOptions};

    #[tokio::test]
    async fn a_pass_deletes_old_audit_rows_in_batches_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = callhome_store::open(&url, &OpenOptions::default())
            .await
            .unwrap();
        let now = OffsetDateTime::now_utc();
        for i in 0..25 {
            store
                .append_audit(&NewAuditEntry {
                    at: if i < 23 {
                        now - time::Duration::days(400)
                    } else {
                        now
                    },
                    actor: "admin".into(),
                    actor_kind: ActorKind::User,
                    action: "POST /api/v1/devices".into(),
                    target: None,
                    outcome: AuditOutcome::Success,
                    status: Some(201),
                    detail: None,
                    remote_addr: None,
                    request_id: None,
                })
                .await
                .unwrap();
        }
        let pruner = Pruner::new(
            store.clone(),
            RetentionSettings {
                batch: 10,
                ..RetentionSettings::default()
            },
        );
        let report = pruner.prune_once(&CancellationToken::new()).await;
        assert_eq!(
            report,
            PruneReport {
                audit: 23,
                ..Default::default()
            }
        );
        let left = store
            .list_audit(&AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(left.items.len(), 2);
        // Audit kept forever: nothing goes.
        let keep_all = Pruner::new(
            store.clone(),
            RetentionSettings {
                audit: None,
                ..RetentionSettings::default()
            },
        );
        assert_eq!(
            keep_all.prune_once(&CancellationToken::new()).await,
            PruneReport::default()
        );
        store.close().await;
    }
}
