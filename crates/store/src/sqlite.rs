//! The SQLite backend: the embedded default, one file in the data directory, in WAL mode.

use std::str::FromStr as _;

use sqlx::Pool;

use crate::{Backend, OpenOptions, Result, StoreError};

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
    let file = opts.get_filename().to_path_buf();
    let on_disk = !file.as_os_str().is_empty() && file.as_os_str() != ":memory:";
    if on_disk {
        private_files(&file, true)?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(opts)
        .await?;
    if on_disk {
        // SQLite gives the WAL and shared-memory files the database file's mode; files left
        // by an older version with a looser mode are tightened here.
        private_files(&file, false)?;
    }
    Ok(pool)
}

/// The database holds password hashes and Config.txt secrets: the file and its `-wal` and
/// `-shm` companions are readable by the owner only (0600). With `create`, a missing database
/// file is created empty with that mode before SQLite opens it, so it is never world-readable.
#[cfg(unix)]
fn private_files(db: &std::path::Path, create: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io = |path: &std::path::Path, source: std::io::Error| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    if create && !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .map_err(|e| io(db, e))?;
    }
    let mut names = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        names.push(name.into());
    }
    for path in names {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io(&path, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_files(_db: &std::path::Path, _create: bool) -> Result<()> {
    Ok(())
}

/// Write transactions take the write lock at once: a deferred one that reads first and
/// then writes can fail with SQLITE_BUSY when another writer got in between.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

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
    /// One node owns a SQLite database: nothing to listen to.
    pub(crate) async fn listen_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<callhome_core::ClusterChange>>> {
        Ok(None)
    }
}
