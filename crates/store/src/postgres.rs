//! The PostgreSQL backend, for production and for several nodes sharing one database.

use std::str::FromStr as _;

use sqlx::Pool;

use crate::{Backend, OpenOptions, Result, StoreError};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

type Db = sqlx::Postgres;
const BACKEND: Backend = Backend::Postgres;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

async fn connect(url: &str, options: &OpenOptions) -> Result<Pool<Db>> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", crate::redact_url(url))))?;
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(opts)
        .await?)
}

/// Write transactions (plain `BEGIN` on PostgreSQL).
const BEGIN_WRITE: &str = "BEGIN";

// The same SQL files are this backend's modules and the other backend's: one text of each
// statement, type-checked against both drivers (hence `duplicate_mod`).
#[path = "sql/bootstrap.rs"]
#[allow(clippy::duplicate_mod)]
mod bootstrap;
#[path = "sql/claims.rs"]
#[allow(clippy::duplicate_mod)]
mod claims;
#[path = "sql/common.rs"]
#[allow(clippy::duplicate_mod)]
#[macro_use]
mod common;
#[path = "sql/certificates.rs"]
#[allow(clippy::duplicate_mod)]
mod certificates;
#[path = "sql/configuration.rs"]
#[allow(clippy::duplicate_mod)]
mod configuration;
#[path = "sql/firmware.rs"]
#[allow(clippy::duplicate_mod)]
mod firmware;
#[path = "sql/gateway.rs"]
#[allow(clippy::duplicate_mod)]
mod gateway;
#[path = "sql/jobs.rs"]
#[allow(clippy::duplicate_mod)]
mod jobs;
#[path = "sql/retention.rs"]
#[allow(clippy::duplicate_mod)]
mod retention;
#[path = "sql/sessions.rs"]
#[allow(clippy::duplicate_mod)]
mod sessions;

pub use common::SqlStore;

impl common::SqlStore {
    /// `LISTEN` on this store's channel with a connection of its own, in a task
    /// that forwards each change until the receiver is dropped. A lost connection is
    /// re-established (by `PgListener`) and reported as a `Resync`. The listener holds one
    /// pooled connection, given back when the receiver is dropped or the store closes.
    pub(crate) async fn listen_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<callhome_core::ClusterChange>>> {
        use callhome_core::ClusterChange;
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            loop {
                if *closing.borrow_and_update() {
                    return;
                }
                let change = tokio::select! {
                    () = tx.closed() => return,
                    _ = closing.changed() => return,
                    got = listener.try_recv() => match got {
                        Ok(Some(n)) => match n.payload().parse::<ClusterChange>() {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "ignored an unknown cluster change");
                                continue;
                            }
                        },
                        Ok(None) => {
                            tracing::warn!("lost the cluster change listener's connection; reconnecting");
                            ClusterChange::Resync
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster change listener failed; retrying in 1 s");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                };
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }
}
