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
