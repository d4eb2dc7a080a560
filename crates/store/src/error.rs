//! The store's error type.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No row matched: `what` names the kind of record and its key.
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness or state rule was violated (duplicate key, already revoked, ...).
    #[error("{detail}")]
    Conflict {
        /// The database constraint that refused the write (a unique or foreign-key
        /// constraint's name), or `None` for a state rule the store checked itself.
        constraint: Option<String>,
        /// What was refused, for people.
        detail: String,
    },
    /// The database cannot be reached or answered with a transport failure (pool timed out
    /// or closed, connection refused or broken): worth retrying later, not a bug.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database URL cannot be used.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored value in {column}: {reason}")]
    Corrupt {
        /// Table and column.
        column: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The database file's permissions could not be checked or set.
    #[error("database file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The master key for secret values is malformed, or is not the key this database's
    /// secret values were encrypted with.
    #[error("master key: {0}")]
    MasterKey(String),
    /// Migrations failed at start-up.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// A state rule the store checked itself (no database constraint involved).
    pub fn conflict(detail: impl Into<String>) -> Self {
        StoreError::Conflict {
            constraint: None,
            detail: detail.into(),
        }
    }
}

/// The one place where database errors are classified: callers see `Conflict`,
/// `Unavailable` or `Database`, never a driver type to inspect.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                constraint: db.constraint().map(str::to_owned),
                detail: format!("already exists ({})", db.message()),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::Conflict {
                constraint: db.constraint().map(str::to_owned),
                detail: format!("refers to a missing record ({})", db.message()),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Database(e),
        }
    }
}
