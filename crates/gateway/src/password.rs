//! Password checks (argon2id, 19 MiB and tens of milliseconds each) behind one bound for the
//! whole process: [`PasswordPool`] runs at most `concurrency` hashes at once, on as many
//! threads of its own (not tokio's blocking pool, whose many threads would each keep an
//! allocator arena holding a 19 MiB block), and a caller waits at most `max_wait` for a turn
//! before it is told the server is busy. Both the modem listener (legacy MQTT passwords) and the HTTP API (user logins,
//! new passwords) use the gateway's pool ([`crate::Gateway::passwords`]), so a flood of
//! logins on either side cannot exhaust memory or CPU.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Work for a pool thread, given the thread's argon2 working memory.
type Job = Box<dyn FnOnce(&mut callhome_core::password::Scratch) + Send>;

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

/// The bounded pool of password hashing (cheap to clone: all clones share the bound and
/// the threads; the threads end when the last clone is dropped).
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    max_wait: Duration,
    jobs: Arc<Mutex<Sender<Job>>>,
}

impl PasswordPool {
    /// At most `concurrency` (at least 1) hashes at once, on `concurrency` threads; a caller
    /// waits at most `max_wait` for a turn.
    pub fn new(concurrency: usize, max_wait: Duration) -> Self {
        let concurrency = concurrency.max(1);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            max_wait,
            jobs: Arc::new(Mutex::new(tx)),
        }
    }

    /// Runs `f` on one of the pool's threads, holding `permit` until it is done (so a caller
    /// that gives up, e.g. a client that disconnects, does not free its slot early).
    async fn run<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        f: impl FnOnce(&mut callhome_core::password::Scratch) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |scratch| {
            let out = f(scratch);
            drop(permit);
            let _ = tx.send(out);
        });
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .map_err(|_| PasswordError::Failed("no password-hashing thread".to_owned()))?;
        rx.await
            .map_err(|_| PasswordError::Failed("password-hashing thread died".to_owned()))
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
        self.run(permit, move |scratch| {
            callhome_core::password::verify_with(&password, hash.as_deref(), scratch)
        })
        .await
    }

    /// An argon2id PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let permit = self.turn("hash").await?;
        self.run(permit, move |_| callhome_core::password::hash(&password))
            .await?
            .map_err(PasswordError::Failed)
    }
}

/// A pool thread: runs jobs until every sender is gone, with one argon2 working memory
/// (allocated once: the pool's memory is `concurrency` times 19 MiB, whatever the load).
fn worker(jobs: &Mutex<Receiver<Job>>) {
    let mut scratch = callhome_core::password::Scratch::new();
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(&mut scratch),
            Err(_) => return,
        }
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
