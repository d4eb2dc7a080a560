//! The PostgreSQL backend, for production and for several nodes sharing one database.

use std::str::FromStr as _;

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

include!("sql/common.rs");
include!("sql/gateway.rs");
include!("sql/sessions.rs");
include!("sql/configuration.rs");
include!("sql/jobs.rs");
