//! The SQLite backend: the embedded default, one file in the data directory, in WAL mode.

use std::str::FromStr as _;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

type Db = sqlx::Sqlite;
const BACKEND: Backend = Backend::Sqlite;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

async fn connect(url: &str, options: &OpenOptions) -> Result<Pool<Db>> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(opts)
        .await?)
}

/// Write transactions take the write lock at once: a deferred one that reads first and
/// then writes can fail with SQLITE_BUSY when another writer got in between.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

include!("sql/common.rs");
include!("sql/gateway.rs");
include!("sql/sessions.rs");
include!("sql/configuration.rs");
include!("sql/jobs.rs");
