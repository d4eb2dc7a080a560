//! The server's one shutdown mechanism: a [`CancellationToken`] that every long-lived task
//! watches, a [`TaskTracker`] that every long-lived task is spawned on, and a first-error slot:
//! the first task that fails (or panics) cancels the token, so the whole server stops, and
//! [`Supervisor::wait`] returns that task's error.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Long-lived tasks stopped together.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    /// Cancelled to stop every task: by the owner, or by the first task that fails.
    shutdown: CancellationToken,
    /// Every supervised task; [`Supervisor::wait`] waits for all of them.
    tasks: TaskTracker,
    /// The first failure, with the name of the task that failed.
    first_error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl Supervisor {
    /// Tasks that stop when `shutdown` is cancelled.
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            tasks: TaskTracker::new(),
            first_error: Arc::new(Mutex::new(None)),
        }
    }

    /// The token every task watches.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` (named `name` in errors and logs) until it ends; it is expected to end only
    /// after the token is cancelled. If it fails or panics, the server stops with its error.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        let shutdown = self.shutdown.clone();
        let first_error = self.first_error.clone();
        self.tasks.spawn(async move {
            let failure = match handle.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.context(name),
                Err(e) => anyhow::Error::new(e).context(format!("{name}: server task panicked")),
            };
            tracing::error!(
                task = name,
                error = format!("{failure:#}"),
                "server task failed; stopping the server"
            );
            first_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(failure);
            shutdown.cancel();
        });
    }

    /// Waits for every task to end (they end once the token is cancelled); returns the first
    /// failure, if any. No task can be spawned afterwards.
    pub(crate) async fn wait(&self) -> anyhow::Result<()> {
        self.tasks.close();
        self.tasks.wait().await;
        match self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e).context("the server stopped because a task failed"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A task that runs until the token is cancelled, then takes a little time to stop.
    async fn until_cancelled(
        token: CancellationToken,
        stopped: Arc<Mutex<bool>>,
    ) -> anyhow::Result<()> {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        *stopped.lock().unwrap() = true;
        Ok(())
    }

    #[tokio::test]
    async fn cancelling_the_token_stops_every_task_and_wait_waits_for_them() {
        let sup = Supervisor::new(CancellationToken::new());
        let stopped: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(false))).collect();
        for s in &stopped {
            sup.spawn("worker", until_cancelled(sup.token().clone(), s.clone()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(stopped.iter().all(|s| !*s.lock().unwrap()));
        sup.token().cancel();
        tokio::time::timeout(LIMIT, sup.wait())
            .await
            .expect("stopped in time")
            .expect("no task failed");
        assert!(stopped.iter().all(|s| *s.lock().unwrap()));
    }

    #[tokio::test]
    async fn the_first_failing_task_stops_the_server_with_its_error() {
        let sup = Supervisor::new(CancellationToken::new());
        let stopped = Arc::new(Mutex::new(false));
        sup.spawn(
            "long-lived",
            until_cancelled(sup.token().clone(), stopped.clone()),
        );
        sup.spawn("broken listener", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            anyhow::bail!("address in use")
        });
        let second = sup.token().clone();
        sup.spawn("late failure", async move {
            second.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            anyhow::bail!("failed while stopping")
        });
        // Nobody cancels the token: the failure does.
        let err = tokio::time::timeout(LIMIT, sup.wait())
            .await
            .expect("the failure stopped the server")
            .expect_err("the failure is returned");
        assert!(sup.token().is_cancelled());
        assert!(*stopped.lock().unwrap(), "the other tasks were stopped");
        let text = format!("{err:#}");
        assert!(text.contains("broken listener: address in use"), "{text}");
        assert!(!text.contains("late failure"), "{text}");
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_server_with_an_error() {
        let sup = Supervisor::new(CancellationToken::new());
        let stopped = Arc::new(Mutex::new(false));
        sup.spawn(
            "steady",
            until_cancelled(sup.token().clone(), stopped.clone()),
        );
        sup.spawn("sweeper", async {
            tokio::task::yield_now().await;
            panic!("bug");
        });
        let err = tokio::time::timeout(LIMIT, sup.wait())
            .await
            .expect("the panic stopped the server")
            .expect_err("the panic is returned");
        assert!(*stopped.lock().unwrap());
        let text = format!("{err:#}");
        assert!(text.contains("sweeper: server task panicked"), "{text}");
    }
}
