//! Password checks (argon2id, 19 MiB and tens of milliseconds each) behind one bound for the
//! whole process: [`PasswordPool`] runs at most `concurrency` hashes at once on the blocking
//! pool, and a caller waits at most `max_wait` for a turn before it is told the server is
//! busy. Both the modem listener (legacy MQTT passwords) and the HTTP API (user logins,
//! new passwords) use the gateway's pool ([`crate::Gateway::passwords`]), so a flood of
//! logins on either side cannot exhaust memory or CPU.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a password could not be checked or hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every slot stayed busy for the whole wait.
    #[error("too many password checks in progress; waited {} ms for a turn", .waited.as_millis())]
    Busy {
        /// How long the caller waited.
        waited: Duration,
    },
    /// Hashing failed (or its task died).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The bounded pool of password hashing (cheap to clone: all clones share the bound).
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    max_wait: Duration,
}

impl PasswordPool {
    /// At most `concurrency` (at least 1) hashes at once; a caller waits at most `max_wait`.
    pub fn new(concurrency: usize, max_wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            max_wait,
        }
    }

    async fn turn(&self, kind: &'static str) -> Result<OwnedSemaphorePermit, PasswordError> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                metrics::histogram!("callhome_password_wait_seconds", "kind" => kind)
                    .record(started.elapsed().as_secs_f64());
                Ok(permit)
            }
            Ok(Err(_)) => Err(PasswordError::Failed("password pool closed".to_owned())),
            Err(_) => {
                metrics::counter!("callhome_password_busy_total", "kind" => kind).increment(1);
                Err(PasswordError::Busy {
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// Whether `password` matches `hash` (see [`callhome_core::password::verify`]; `None`,
    /// an unknown account, costs the same and answers `false`).
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let permit = self.turn("verify").await?;
        // The permit moves into the blocking task: a caller that gives up (a client that
        // disconnects) does not free the slot while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let ok = callhome_core::password::verify(&password, hash.as_deref());
            drop(permit);
            ok
        })
        .await
        .map_err(|e| PasswordError::Failed(format!("password task: {e}")))
    }

    /// An argon2id PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let permit = self.turn("hash").await?;
        tokio::task::spawn_blocking(move || {
            let hashed = callhome_core::password::hash(&password);
            drop(permit);
            hashed
        })
        .await
        .map_err(|e| PasswordError::Failed(format!("password task: {e}")))?
        .map_err(PasswordError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_waits_at_most_max_wait_for_a_turn() {
        let pool = PasswordPool::new(1, Duration::from_millis(50));
        let hash = pool.hash("correct horse battery".to_owned()).await.unwrap();
        assert!(
            pool.verify("correct horse battery".to_owned(), Some(hash.clone()))
                .await
                .unwrap()
        );
        // Hold the only slot: the next caller is told the pool is busy after its wait.
        let held = pool.permits.clone().acquire_owned().await.unwrap();
        let started = std::time::Instant::now();
        let err = pool
            .verify("x".to_owned(), Some(hash.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, PasswordError::Busy { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(held);
        assert!(!pool.verify("x".to_owned(), Some(hash)).await.unwrap());
    }
}
