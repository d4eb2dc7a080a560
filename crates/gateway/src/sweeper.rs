//! Background upkeep: expiring queued commands, resolving commands whose device went away,
//! waking dispatchers for work queued elsewhere, flushing last-seen times, pruning status.

use std::sync::Arc;
use std::time::Duration;

use callhome_store::{CommandOutcome, CommandState};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::Shared;

/// Runs until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        expire(&shared).await;
        orphans(&shared).await;
        if n.is_multiple_of(5) {
            wake_queued(&shared).await;
        }
        if n.is_multiple_of(30) {
            flush_seen(&shared).await;
        }
        if n % 3600 == 1 {
            prune(&shared).await;
        }
    }
    flush_seen(&shared).await;
}

async fn expire(shared: &Shared) {
    match shared
        .store
        .expire_commands(OffsetDateTime::now_utc())
        .await
    {
        Ok(expired) => {
            for c in expired {
                metrics::counter!("callhome_commands_total", "state" => "expired").increment(1);
                shared.events.command_finished(&c);
            }
        }
        Err(e) => warn!(error = %e, "command expiry sweep failed"),
    }
}

/// `sent` commands of devices with no live connection here: once their deadline passes they
/// are re-queued (attempts left) or timed out.
async fn orphans(shared: &Shared) {
    let sent = match shared.store.sent_commands().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "in-flight sweep failed");
            return;
        }
    };
    let now = OffsetDateTime::now_utc();
    for c in sent {
        let imei = c.imei.clone();
        if shared.hub.get(&imei).is_some() {
            continue; // its dispatcher owns it
        }
        let deadline =
            c.sent_at.unwrap_or(c.created_at) + time::Duration::milliseconds(c.timeout_ms);
        if deadline > now {
            continue;
        }
        let error = "no reply: the connection was lost before the modem answered";
        if c.attempts < c.max_attempts {
            if shared.store.requeue_command(c.id, error).await.is_ok() {
                shared
                    .events
                    .command_retrying(&imei, c.id, c.attempts, error);
            }
        } else if let Ok(done) = shared
            .store
            .complete_command(
                c.id,
                &CommandOutcome {
                    state: CommandState::TimedOut,
                    reply: None,
                    result: None,
                    error: Some(error.to_owned()),
                    at: now,
                },
            )
            .await
        {
            metrics::counter!("callhome_commands_total", "state" => "timed_out").increment(1);
            shared.events.command_finished(&done);
        }
    }
}

/// Work may be queued by another node or a missed notification: wake the dispatchers of
/// connected devices that have queued commands.
async fn wake_queued(shared: &Shared) {
    match shared.store.devices_with_queued_commands().await {
        Ok(devices) => {
            for imei in devices {
                if let Some(s) = shared.hub.get(&imei) {
                    s.notify.notify_one();
                }
            }
        }
        Err(e) => warn!(error = %e, "queue poll failed"),
    }
}

async fn flush_seen(shared: &Shared) {
    // Small transactions: a fleet-wide flush must not hold the database's writer for long.
    let seen = shared.hub.drain_seen();
    for chunk in seen.chunks(250) {
        if let Err(e) = shared.store.touch_last_seen(chunk).await {
            warn!(error = %e, devices = chunk.len(), "could not record last-seen times");
        }
    }
}

async fn prune(shared: &Shared) {
    let cutoff = OffsetDateTime::now_utc() - shared.cfg.status_retention;
    match shared.store.prune_status(cutoff).await {
        Ok(0) => {}
        Ok(n) => info!(rows = n, "old status messages pruned"),
        Err(e) => warn!(error = %e, "status pruning failed"),
    }
}
