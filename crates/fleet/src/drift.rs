//! The periodic drift check: reads the configuration of online devices whose last check is
//! older than the interval, a few at a time, and records `in_sync` or `drifted` with the keys.

use std::sync::Arc;
use std::time::Duration;

use callhome_core::Imei;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigService;
use crate::journal::Journal;

/// Drift check settings.
#[derive(Debug, Clone)]
pub struct DriftSettings {
    /// Each online device is read again once its last check is this old.
    pub interval: Duration,
    /// Devices read at once.
    pub concurrency: usize,
    /// Reply timeout of the `GETCONFIG`.
    pub command_timeout: Duration,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(24 * 3600),
            concurrency: 8,
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs until `shutdown`.
pub async fn run(config: ConfigService, settings: DriftSettings, shutdown: CancellationToken) {
    let pause = (settings.interval / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let concurrency = settings.concurrency.max(1);
    let settings = Arc::new(settings);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let Ok(interval) = time::Duration::try_from(settings.interval) else {
            return;
        };
        let due = match config
            .store()
            .devices_due_for_drift_check(OffsetDateTime::now_utc() - interval, 200)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "drift check: could not list devices");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        tracing::debug!(devices = due.len(), "drift check");
        let mut set = JoinSet::new();
        for imei in due {
            while set.len() >= concurrency {
                set.join_next().await;
            }
            let config = config.clone();
            let settings = settings.clone();
            set.spawn(async move { check(&config, &imei, &settings).await });
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { while set.join_next().await.is_some() {} } => {}
        }
    }
}

async fn check(config: &ConfigService, imei: &Imei, settings: &DriftSettings) {
    let mut journal = Journal::fresh(config.gateway().clone(), imei.clone(), "drift-check".into());
    let t = settings.command_timeout;
    match config.read(&mut journal, imei, t, t, None).await {
        Ok(_) => metrics::counter!("callhome_drift_checks_total", "outcome" => "read").increment(1),
        Err(e) => {
            metrics::counter!("callhome_drift_checks_total", "outcome" => "failed").increment(1);
            tracing::info!(%imei, error = %e, "drift check could not read the configuration");
            // Keep the state; note the attempt so the device waits a full interval.
            if let Ok(rec) = config.store().get_device_config(imei).await {
                let _ = config
                    .store()
                    .set_drift(
                        imei,
                        rec.drift,
                        rec.drift_keys.as_deref(),
                        OffsetDateTime::now_utc(),
                    )
                    .await;
            }
        }
    }
}
