//! The store's error type.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No row matched: `what` names the kind of record and its key.
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness or state rule was violated (duplicate key, already revoked, ...).
    #[error("{0}")]
    Conflict(String),
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
    /// Migrations failed at start-up.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("already exists ({})", db.message()))
            }
            _ => StoreError::Database(e),
        }
    }
}
